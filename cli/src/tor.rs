//! Tor, in process, through Arti: the onion service `beam <PORT> --tor` publishes, and the
//! client `beam connect X.onion` (and the Tor fallback of `beam connect NAME`) dials with.
//!
//! - [`bootstrap`] builds a client in `<state dir>/tor` (so the onion service's key, and with it
//!   the `.onion` address, survives restarts) and bootstraps it within a bounded time, reporting
//!   progress as it goes.
//! - [`launch`] starts the onion service and forwards its virtual port 80 to `127.0.0.1:PORT`.
//!   Requests are handled here rather than by `tor-hsrproxy` so that every rendezvous circuit
//!   and stream is counted ([`TorStats`]: what `beam tor status` shows is measured).
//! - [`self_test`] reaches the service's own `.onion` through the Tor network: the only
//!   honest answer to "is my onion service reachable?" (Arti's own state lags reality by
//!   minutes on a fresh network).
//!
//! A test network replaces the default one through the environment variable
//! [`CONFIG_ENV`], which names an Arti TOML file (authorities, fallback caches, path rules,
//! net-param overrides). It is deliberately not a flag: nobody should point beam at another
//! Tor network by accident.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use arti_client::config::{CfgPath, TorClientConfigBuilder};
use arti_client::{DataStream, ErrorKind, HasKind, TorClient};
use futures::StreamExt;
use safelog::DisplayRedacted;
use tor_cell::relaycell::msg::{Connected, End, EndReason};
use tor_hsservice::config::OnionServiceConfigBuilder;
use tor_hsservice::{HsNickname, RendRequest, RunningOnionService, StreamRequest};
use tor_proto::stream::IncomingStreamRequest;
use tor_rtcompat::PreferredRuntime;

pub mod clients;

/// Names an Arti configuration file that replaces the default Tor network (tests).
pub const CONFIG_ENV: &str = "BEAM_ARTI_CONFIG";
/// The onion service's virtual port: `http://X.onion/` reaches the local port.
pub const VIRTUAL_PORT: u16 = 80;
/// The port [`self_test`] asks for: the service refuses it (it only serves
/// [`VIRTUAL_PORT`]), so the probe proves the rendezvous worked without touching the local
/// service.
const PROBE_PORT: u16 = 1;
/// A rendezvous this recent shows the service reachable.
pub const REACHABLE_WINDOW: Duration = Duration::from_secs(600);
/// The onion service's nickname (its keys live under this name in the keystore).
const NICKNAME: &str = "beam";

/// An Arti client on the current tokio runtime.
pub type Client = TorClient<PreferredRuntime>;

/// Counters of the Tor side; every figure `beam tor status` prints comes from here or from Arti.
#[derive(Debug, Default)]
pub struct TorStats {
    /// Introductions received (each asks for a rendezvous circuit).
    pub introductions: AtomicU64,
    /// Rendezvous that failed.
    pub rendezvous_failed: AtomicU64,
    /// Rendezvous circuits open now (visitors connected to the onion service).
    pub service_circuits: AtomicUsize,
    /// Visitor streams forwarded to the local port, open now.
    pub streams_open: AtomicUsize,
    /// Visitor streams forwarded in total.
    pub streams_total: AtomicU64,
    /// Visitor streams refused (another port, or nothing listening locally).
    pub streams_refused: AtomicU64,
    /// Streams to the self-test port (refused by design: see [`self_test`]).
    pub probes: AtomicU64,
    /// Streams this node opened to onion services (`beam connect`), open now.
    pub client_streams: AtomicUsize,
    /// When the latest rendezvous with a visitor completed (any visitor, the self-test too).
    pub last_rendezvous: Mutex<Option<Instant>>,
    /// Bytes from Tor to local sockets.
    pub bytes_in: AtomicU64,
    /// Bytes from local sockets to Tor.
    pub bytes_out: AtomicU64,
    /// The connection inspector visitors' streams are listed in (`beam status --connections`),
    /// once the P2P side is up.
    pub inspector: std::sync::OnceLock<Arc<crate::p2p::inspect::Connections>>,
}

/// Where Arti keeps its state and cache: `<state dir>/tor`.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("tor")
}

/// The client configuration: the default Tor network, or the one [`CONFIG_ENV`] names, with
/// storage in `dir`.
fn config(dir: &Path) -> Result<arti_client::TorClientConfig> {
    let mut builder = match std::env::var_os(CONFIG_ENV) {
        Some(path) => {
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!("cannot read {CONFIG_ENV}={}", Path::new(&path).display())
            })?;
            toml::from_str::<TorClientConfigBuilder>(&text).with_context(|| {
                format!(
                    "{CONFIG_ENV}={} is not an Arti configuration",
                    Path::new(&path).display()
                )
            })?
        }
        None => TorClientConfigBuilder::default(),
    };
    for sub in ["state", "cache"] {
        create_private_dir(&dir.join(sub))?;
    }
    builder
        .storage()
        .state_dir(CfgPath::new_literal(dir.join("state")))
        .cache_dir(CfgPath::new_literal(dir.join("cache")));
    builder
        .build()
        .map_err(|e| anyhow!("invalid Tor configuration: {e}"))
}

/// Arti refuses state directories others can write to; beam's are the owner's alone.
pub(crate) fn create_private_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mut p = std::fs::metadata(path)?.permissions();
        if p.mode() & 0o077 != 0 {
            p.set_mode(0o700);
            std::fs::set_permissions(path, p)
                .with_context(|| format!("cannot make {} private", path.display()))?;
        }
    }
    Ok(())
}

/// Bootstrap progress, for the user interface.
#[derive(Clone, Debug)]
pub struct Progress {
    /// 0–100.
    pub percent: u32,
    /// Arti's description (what it waits for, or what blocks it).
    pub text: String,
}

/// Creates a client in `dir` and bootstraps it, calling `progress` whenever the percentage
/// changes. Fails after `timeout` with the last status Arti reported.
pub async fn bootstrap(
    dir: &Path,
    timeout: Duration,
    mut progress: impl FnMut(&Progress),
) -> Result<Arc<Client>> {
    let config = config(dir)?;
    let client = TorClient::builder()
        .config(config)
        .create_unbootstrapped()
        .map_err(|e| anyhow!("cannot start Tor: {}", report(&e)))?;
    {
        let mut events = client.bootstrap_events();
        let boot = client.bootstrap();
        tokio::pin!(boot);
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut last = Progress {
            percent: 0,
            text: "starting".into(),
        };
        loop {
            tokio::select! {
                r = &mut boot => {
                    r.map_err(|e| anyhow!("Tor bootstrap failed: {}", report(&e)))?;
                    break;
                }
                Some(status) = events.next() => {
                    let now = Progress {
                        percent: (status.as_frac() * 100.0).round() as u32,
                        text: status.to_string(),
                    };
                    if now.percent != last.percent {
                        progress(&now);
                    }
                    last = now;
                }
                _ = &mut deadline => bail!(
                    "Tor did not bootstrap within {} s (last status: {}); is the Tor network \
                     reachable from here? Wait longer with --tor-timeout",
                    timeout.as_secs(),
                    last.text
                ),
            }
        }
    }
    progress(&Progress {
        percent: 100,
        text: "done".into(),
    });
    Ok(client)
}

/// Arti's error with its causes.
fn report(e: &arti_client::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    s
}

/// A running onion service.
pub struct Onion {
    /// `….onion`.
    pub address: String,
    running: Arc<RunningOnionService>,
    /// Restricted discovery: how many clients may find the service (`None`: anyone may).
    pub restricted: Option<usize>,
}

impl Onion {
    /// Arti's view of the service (publication and introduction points), as `(state, problem)`.
    pub fn arti_state(&self) -> (String, Option<String>) {
        let status = self.running.status();
        (
            format!("{:?}", status.state()),
            status.current_problem().map(|p| format!("{p:?}")),
        )
    }
}

/// Launches the onion service and serves its rendezvous requests: virtual port 80 to
/// `127.0.0.1:port`, everything else refused. With authorized clients in `tor_dir`
/// ([`clients`]) only they can find it (restricted discovery).
pub fn launch(client: &Client, tor_dir: &Path, port: u16, stats: Arc<TorStats>) -> Result<Onion> {
    let nickname = HsNickname::new(NICKNAME.to_string()).map_err(|e| anyhow!("{e}"))?;
    let authorized = clients::keys(tor_dir)?;
    let restricted = (!authorized.is_empty()).then_some(authorized.len());
    let mut builder = OnionServiceConfigBuilder::default();
    builder.nickname(nickname);
    if restricted.is_some() {
        let rd = builder.restricted_discovery();
        rd.enabled(true);
        rd.static_keys().access().extend(authorized);
    }
    let config = builder
        .build()
        .map_err(|e| anyhow!("onion service configuration: {e}"))?;
    let (running, requests) = client
        .launch_onion_service(config)
        .map_err(|e| anyhow!("cannot launch the onion service: {}", report(&e)))?
        .context("the onion service is disabled in the configuration")?;
    let address = running
        .onion_address()
        .context("the onion service has no address")?
        .display_unredacted()
        .to_string();
    crate::logs::own(address.clone());
    // Noted for `beam tor client add`, which prints the client's whole key line.
    if let Err(e) = std::fs::write(clients::address_file(tor_dir), format!("{address}\n")) {
        tracing::warn!(error = %e, "cannot note the onion address");
    }
    tokio::spawn(serve(Box::pin(requests), port, stats));
    Ok(Onion {
        address,
        running,
        restricted,
    })
}

/// One task per rendezvous circuit; one per stream on it.
async fn serve(
    mut requests: std::pin::Pin<Box<dyn futures::Stream<Item = RendRequest> + Send>>,
    port: u16,
    stats: Arc<TorStats>,
) {
    while let Some(rend) = requests.next().await {
        stats.introductions.fetch_add(1, Ordering::Relaxed);
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut streams = match rend.accept().await {
                Ok(s) => s,
                Err(e) => {
                    stats.rendezvous_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "rendezvous failed");
                    return;
                }
            };
            stats.service_circuits.fetch_add(1, Ordering::Relaxed);
            *stats
                .last_rendezvous
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            while let Some(request) = streams.next().await {
                tokio::spawn(serve_stream(request, port, stats.clone()));
            }
            stats.service_circuits.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// A visitor's stream: BEGIN to port 80 is forwarded to the local port; anything else gets the
/// END(DONE) that C tor sends, so beam's onion service is not told apart from others.
async fn serve_stream(request: StreamRequest, port: u16, stats: Arc<TorStats>) {
    let arrived = Instant::now();
    let wanted = match request.request() {
        IncomingStreamRequest::Begin(begin) => begin.port(),
        _ => 0,
    };
    let refuse = |request: StreamRequest| async move {
        let _ = request.reject(End::new_with_reason(EndReason::DONE)).await;
    };
    if wanted != VIRTUAL_PORT {
        let counter = if wanted == PROBE_PORT {
            &stats.probes
        } else {
            &stats.streams_refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
        return refuse(request).await;
    }
    let local = match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
        Ok(s) => s,
        Err(e) => {
            stats.streams_refused.fetch_add(1, Ordering::Relaxed);
            eprintln!("tor visitor refused: nothing answers on 127.0.0.1:{port} ({e})");
            return refuse(request).await;
        }
    };
    let _ = local.set_nodelay(true);
    let Ok(tor) = request.accept(Connected::new_empty()).await else {
        return;
    };
    stats.streams_total.fetch_add(1, Ordering::Relaxed);
    stats.streams_open.fetch_add(1, Ordering::Relaxed);
    // Listed in the inspector while it lasts; its bytes are counted when it ends.
    let tracked = stats.inspector.get().map(|c| {
        c.track(crate::p2p::inspect::Info {
            direction: crate::p2p::inspect::Direction::In,
            kind: crate::p2p::inspect::Kind::Tor,
            peer: "onion visitor".into(),
            via: vec![],
            why: "a visitor reached the onion service over Tor (who it is, Tor hides)".into(),
            setup_ms: crate::p2p::inspect::ms(arrived.elapsed()),
            first_hop_rtt_ms: None,
            route_rtt_ms: None,
            predicted_direct_ms: None,
        })
    });
    let (to_local, to_tor) = splice(tor, local).await;
    if let Some(t) = &tracked {
        t.conn.set_bytes(to_local, to_tor);
    }
    stats.bytes_in.fetch_add(to_local, Ordering::Relaxed);
    stats.bytes_out.fetch_add(to_tor, Ordering::Relaxed);
    stats.streams_open.fetch_sub(1, Ordering::Relaxed);
}

/// Copies both ways until both ends are done; returns (bytes Tor → local, local → Tor).
/// An error on one side ends that side; the bytes already carried count.
pub async fn splice(tor: DataStream, local: tokio::net::TcpStream) -> (u64, u64) {
    let (mut tor_r, mut tor_w) = tokio::io::split(tor);
    let (mut local_r, mut local_w) = local.into_split();
    let down = async {
        let n = copy(&mut tor_r, &mut local_w).await;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut local_w).await;
        n
    };
    let up = async {
        let n = copy(&mut local_r, &mut tor_w).await;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut tor_w).await;
        n
    };
    tokio::join!(down, up)
}

/// `tokio::io::copy` that reports the bytes carried even when the copy ends in an error (an
/// Arti stream may end with END(MISC) after all its data instead of a clean close).
async fn copy<R, W>(r: &mut R, w: &mut W) -> u64
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 32 * 1024];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if w.write_all(&buf[..n]).await.is_err() {
            break;
        }
        // Tor cells are small: flush per read so interactive traffic is not held back.
        if w.flush().await.is_err() {
            break;
        }
        total += n as u64;
    }
    total
}

/// Opens a stream to `host:port` (`….onion`) through Tor.
pub async fn connect(client: &Client, host: &str, port: u16) -> Result<DataStream> {
    client
        .connect((host, port))
        .await
        .map_err(|e| anyhow!("cannot reach {host}:{port} over Tor: {}", report(&e)))
}

/// What [`self_test`] found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SelfTest {
    /// Whether a rendezvous with the service completed.
    pub reachable: bool,
    /// How long the attempt took, in milliseconds.
    pub took_ms: u64,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

/// Reaches `onion` through the Tor network as a visitor would (descriptor lookup,
/// introduction, rendezvous), asking for a port the service refuses: a refusal means the
/// rendezvous completed, so the service is reachable.
pub async fn self_test(client: &Client, onion: &str, timeout: Duration) -> SelfTest {
    let start = Instant::now();
    let attempt = tokio::time::timeout(timeout, client.connect((onion, PROBE_PORT))).await;
    let took_ms = start.elapsed().as_millis() as u64;
    match attempt {
        Ok(Ok(_)) => SelfTest {
            reachable: true,
            took_ms,
            error: None,
        },
        Ok(Err(e))
            if matches!(
                e.kind(),
                ErrorKind::RemoteStreamClosed
                    | ErrorKind::RemoteStreamReset
                    | ErrorKind::RemoteStreamError
                    | ErrorKind::RemoteConnectionRefused
            ) =>
        {
            SelfTest {
                reachable: true,
                took_ms,
                error: None,
            }
        }
        Ok(Err(e)) => SelfTest {
            reachable: false,
            took_ms,
            error: Some(report(&e)),
        },
        Err(_) => SelfTest {
            reachable: false,
            took_ms,
            error: Some(format!("no answer within {} s", timeout.as_secs())),
        },
    }
}

/// The Tor side of a running `beam`, as `beam tor status` reads it.
pub struct TorSide {
    started: Instant,
    /// Counters.
    pub stats: Arc<TorStats>,
    inner: Mutex<Phase>,
}

enum Phase {
    Bootstrapping(Progress),
    Failed(String),
    Running {
        client: Arc<Client>,
        onion: Option<Arc<Onion>>,
        bootstrap_ms: u64,
        last_test: Option<(Instant, SelfTest)>,
    },
}

/// `beam tor status --json`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TorStatus {
    /// `bootstrapping`, `running` or `failed`.
    pub state: String,
    /// Bootstrap progress (0–100).
    pub bootstrap_percent: u32,
    /// Arti's last bootstrap status, or why Tor failed.
    pub detail: String,
    /// How long bootstrapping took, once done.
    pub bootstrap_ms: Option<u64>,
    /// `….onion`, when an onion service runs.
    pub onion_address: Option<String>,
    /// Arti's state of the onion service (it can say `Bootstrapping` for minutes while the
    /// service is in fact reachable; `self_test` is the measurement).
    pub service_state: Option<String>,
    /// Arti's current problem with the service, if any.
    pub service_problem: Option<String>,
    /// Whether the onion service is reachable, as measured: a rendezvous completed within
    /// [`REACHABLE_WINDOW`] (a visitor's or the self-test's), or else the latest self-test;
    /// `None` before either says anything.
    pub reachable: Option<bool>,
    /// What `reachable` rests on: `rendezvous` or `self-test`.
    pub reachable_by: Option<String>,
    /// Seconds since the latest completed rendezvous.
    pub last_rendezvous_age_s: Option<u64>,
    /// The latest reachability self-test, and how long ago it ran.
    pub self_test: Option<SelfTest>,
    /// Seconds since `self_test` ran.
    pub self_test_age_s: Option<u64>,
    /// Restricted discovery: the number of authorized clients (`None`: anyone with the address
    /// can find the service).
    pub restricted_clients: Option<usize>,
    /// Circuits carrying beam traffic now: visitors' rendezvous circuits and this node's own
    /// client streams.
    pub circuits_in_use: usize,
    /// Introductions received / rendezvous failed.
    pub introductions: u64,
    pub rendezvous_failed: u64,
    /// Visitor streams open / in total / refused.
    pub streams_open: usize,
    pub streams_total: u64,
    pub streams_refused: u64,
    /// Self-test streams received (this node's own, or anyone asking for the probe port).
    pub probes: u64,
    /// Bytes Tor → local and local → Tor.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Seconds since `--tor` started.
    pub uptime_s: u64,
}

impl TorSide {
    /// A Tor side that is starting.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            stats: Arc::default(),
            inner: Mutex::new(Phase::Bootstrapping(Progress {
                percent: 0,
                text: "starting".into(),
            })),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records bootstrap progress.
    pub fn progress(&self, p: &Progress) {
        let mut g = self.lock();
        if let Phase::Bootstrapping(old) = &mut *g {
            *old = p.clone();
        }
    }

    /// Records that Tor failed.
    pub fn failed(&self, why: String) {
        *self.lock() = Phase::Failed(why);
    }

    /// Records that Tor runs.
    pub fn running(&self, client: Arc<Client>, onion: Option<Arc<Onion>>) {
        *self.lock() = Phase::Running {
            client,
            onion,
            bootstrap_ms: self.started.elapsed().as_millis() as u64,
            last_test: None,
        };
    }

    /// The onion service's address, once it runs.
    pub fn onion_address(&self) -> Option<String> {
        match &*self.lock() {
            Phase::Running { onion: Some(o), .. } => Some(o.address.clone()),
            _ => None,
        }
    }

    /// Runs a reachability self-test now and keeps its result.
    pub async fn test(&self, timeout: Duration) -> Option<SelfTest> {
        let (client, onion) = match &*self.lock() {
            // Restricted discovery: this node holds no client key, so it cannot find its own
            // service either.
            Phase::Running {
                client,
                onion: Some(o),
                ..
            } if o.restricted.is_none() => (client.clone(), o.address.clone()),
            _ => return None,
        };
        let t = self_test(&client, &onion, timeout).await;
        if let Phase::Running { last_test, .. } = &mut *self.lock() {
            *last_test = Some((Instant::now(), t.clone()));
        }
        Some(t)
    }

    /// A snapshot.
    pub fn status(&self) -> TorStatus {
        let s = &self.stats;
        let mut out = TorStatus {
            state: String::new(),
            bootstrap_percent: 0,
            detail: String::new(),
            bootstrap_ms: None,
            onion_address: None,
            service_state: None,
            service_problem: None,
            reachable: None,
            reachable_by: None,
            last_rendezvous_age_s: None,
            self_test: None,
            self_test_age_s: None,
            restricted_clients: None,
            circuits_in_use: s.service_circuits.load(Ordering::Relaxed)
                + s.client_streams.load(Ordering::Relaxed),
            introductions: s.introductions.load(Ordering::Relaxed),
            rendezvous_failed: s.rendezvous_failed.load(Ordering::Relaxed),
            streams_open: s.streams_open.load(Ordering::Relaxed),
            streams_total: s.streams_total.load(Ordering::Relaxed),
            streams_refused: s.streams_refused.load(Ordering::Relaxed),
            probes: s.probes.load(Ordering::Relaxed),
            bytes_in: s.bytes_in.load(Ordering::Relaxed),
            bytes_out: s.bytes_out.load(Ordering::Relaxed),
            uptime_s: self.started.elapsed().as_secs(),
        };
        match &*self.lock() {
            Phase::Bootstrapping(p) => {
                out.state = "bootstrapping".into();
                out.bootstrap_percent = p.percent;
                out.detail = p.text.clone();
            }
            Phase::Failed(why) => {
                out.state = "failed".into();
                out.detail = why.clone();
            }
            Phase::Running {
                client,
                onion,
                bootstrap_ms,
                last_test,
            } => {
                let b = client.bootstrap_status();
                out.state = "running".into();
                out.bootstrap_percent = (b.as_frac() * 100.0).round() as u32;
                out.detail = b.to_string();
                out.bootstrap_ms = Some(*bootstrap_ms);
                if let Some(o) = onion {
                    let (state, problem) = o.arti_state();
                    out.onion_address = Some(o.address.clone());
                    out.restricted_clients = o.restricted;
                    out.service_state = Some(state);
                    out.service_problem = problem;
                }
                if let Some((at, t)) = last_test {
                    out.self_test = Some(t.clone());
                    out.self_test_age_s = Some(at.elapsed().as_secs());
                    out.reachable = Some(t.reachable);
                    out.reachable_by = Some("self-test".into());
                }
                let last = *s.last_rendezvous.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(at) = last {
                    out.last_rendezvous_age_s = Some(at.elapsed().as_secs());
                    if at.elapsed() < REACHABLE_WINDOW {
                        out.reachable = Some(true);
                        out.reachable_by = Some("rendezvous".into());
                    }
                }
            }
        }
        out
    }
}
