//! `beam connect`: join through a bootstrap peer, resolve the service (name → name record →
//! service record, every record's signature checked by the core), let the core choose the route,
//! and forward every connection to a local listener over it.
//!
//! Each connection opens its own tunnel. When a route through relays fails, the core learns it
//! (trust) and chooses again without those relays, up to [`MAX_ROUTES`] routes per connection.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use beam_node::app::{ResolveError, ServiceRef};
use beam_node::record::ServiceRecord;
use beam_node::routing::Strategy;
use tokio::net::{TcpListener, TcpStream};

use crate::p2p::auth::Token;
use crate::p2p::inspect::{self, Direction, Info, Kind};
use crate::p2p::tunnel::{self, OpenError, Opened};
use crate::p2p::{self, Handle, Notice, Route};

/// Routes tried for one connection before it is given up.
pub const MAX_ROUTES: usize = 3;

/// What `beam connect` was asked.
pub struct Options {
    /// The service.
    pub target: ServiceRef,
    /// The local port (any free one if `None`).
    pub port: Option<u16>,
    /// The routing strategy.
    pub strategy: Strategy,
    /// How long to look for the service.
    pub wait: Duration,
    /// Fall back to the service's onion service when no P2P route works (`None`: never).
    pub tor: Option<TorFallback>,
    /// The access token to present (`--token`).
    pub token: Option<Token>,
    /// Where the control socket goes (`beam status --connections` asks it).
    pub state_dir: std::path::PathBuf,
}

/// Where and how to start Tor when a connection falls back to it.
#[derive(Clone, Debug)]
#[cfg_attr(not(feature = "tor"), allow(dead_code))]
pub struct TorFallback {
    /// The state directory (Arti keeps its state under it).
    pub dir: std::path::PathBuf,
    /// Give up bootstrapping after this long.
    pub timeout: Duration,
}

/// Tor for the fallback: started on first need, shared by all connections.
#[derive(Clone)]
struct Fallback {
    #[cfg_attr(not(feature = "tor"), allow(dead_code))]
    settings: TorFallback,
    #[cfg(feature = "tor")]
    client: Arc<tokio::sync::OnceCell<std::result::Result<Arc<crate::tor::Client>, String>>>,
}

impl Fallback {
    fn new(settings: TorFallback) -> Self {
        Self {
            settings,
            #[cfg(feature = "tor")]
            client: Arc::default(),
        }
    }

    /// A Tor stream to `onion`'s virtual port.
    #[cfg(feature = "tor")]
    async fn connect(&self, onion: &str) -> Result<arti_client::DataStream> {
        let client = self
            .client
            .get_or_init(|| async {
                eprintln!("Tor: bootstrapping for the fallback");
                crate::tor::bootstrap(
                    &crate::tor::dir(&self.settings.dir),
                    self.settings.timeout,
                    |p| eprintln!("Tor: bootstrap {}%: {}", p.percent, p.text),
                )
                .await
                .map_err(|e| format!("{e:#}"))
            })
            .await
            .clone()
            .map_err(anyhow::Error::msg)?;
        crate::tor::connect(&client, onion, crate::tor::VIRTUAL_PORT).await
    }
}

/// Runs until Ctrl-C.
pub async fn run(config: p2p::Config, opts: Options) -> Result<()> {
    let started = Instant::now();
    let (handle, mut notices) = p2p::start(config).await?;
    p2p::tunnel::spawn_acceptors(&handle, None)?;
    crate::control::spawn(
        &opts.state_dir,
        crate::control::Context {
            p2p: handle.clone(),
            port: None,
            name: None,
            auth_required: false,
            #[cfg(feature = "tor")]
            tor: None,
            started,
            history: None,
        },
    )
    .await?;
    wait_joined(&mut notices, opts.wait).await?;
    tracing::debug!(ms = started.elapsed().as_millis(), "joined");
    let record = resolve(&handle, &opts.target, opts.wait).await?;
    tokio::spawn(async move {
        while let Some(n) = notices.recv().await {
            match n {
                Notice::HolePunched { peer } => {
                    println!("hole punched: direct connection to {}", peer.short());
                }
                Notice::LanPeer { peer, addr } => {
                    println!(
                        "found {} on the local network (mDNS) at {addr}",
                        peer.short()
                    );
                }
                _ => {}
            }
        }
    });
    println!(
        "resolved {} → {} ({} endpoints) in {} ms",
        opts.target,
        record.peer,
        record.endpoints.len(),
        started.elapsed().as_millis()
    );
    let listener = bind(opts.port).await?;
    let local = listener.local_addr()?;
    // The first route, planned and opened now: it shows the user where traffic will go and
    // warms the connections, so the first visitor does not pay for the setup.
    let route = handle.plan(&record, opts.strategy, BTreeSet::new()).await?;
    println!("route {}", describe(&route));
    println!("listening on {local} → {}", opts.target);
    if let Some(onion) = &record.tor_address {
        match (&opts.tor, cfg!(feature = "tor")) {
            (Some(_), true) => println!("fallback: over Tor to {onion} when no P2P route works"),
            (None, _) => println!("fallback: none (--no-tor; the service is also at {onion})"),
            (Some(_), false) => println!(
                "fallback: none (this beam was built without Tor; the service is also at {onion})"
            ),
        }
    }
    let fwd = Arc::new(Forwarder {
        handle,
        record: tokio::sync::RwLock::new(record),
        target: opts.target,
        strategy: opts.strategy,
        fallback: opts.tor.map(Fallback::new),
        token: opts.token,
    });
    serve_local(listener, move |tcp, n| {
        let fwd = fwd.clone();
        async move { fwd.forward(tcp, n).await }
    })
    .await
}

/// What each local connection is forwarded with.
struct Forwarder {
    handle: Handle,
    /// The service's record (replaced when the service moved).
    record: tokio::sync::RwLock<ServiceRecord>,
    target: ServiceRef,
    strategy: Strategy,
    fallback: Option<Fallback>,
    token: Option<Token>,
}

/// Accepts local connections until Ctrl-C; each gets its number (from 1) and its own task.
async fn serve_local<F, Fut>(listener: TcpListener, serve: F) -> Result<()>
where
    F: Fn(TcpStream, u64) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut seq = 0u64;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            biased;
            _ = &mut ctrl_c => {
                eprintln!("stopping");
                return Ok(());
            }
            accepted = listener.accept() => {
                let (tcp, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        eprintln!("warning: accept failed: {e}");
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                seq += 1;
                tokio::spawn(serve(tcp, seq));
            }
        }
    }
}

async fn wait_joined(
    notices: &mut tokio::sync::mpsc::UnboundedReceiver<Notice>,
    wait: Duration,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut last_error = None;
    loop {
        match tokio::time::timeout_at(deadline, notices.recv()).await {
            Ok(Some(Notice::Joined { .. })) => return Ok(()),
            Ok(Some(Notice::BootstrapUnreachable { addr, error })) => {
                last_error = Some(format!("{addr}: {error}"));
            }
            Ok(Some(_)) => {}
            Ok(None) => bail!("the node stopped"),
            Err(_) => bail!(
                "could not join the network within {} s{}; check the --bootstrap address and \
                 that the peer is running",
                wait.as_secs(),
                last_error.map_or(String::new(), |e| format!(" (last error: {e})"))
            ),
        }
    }
}

/// Resolves `target`, retrying while it is not found (a service that just started may still be
/// publishing), until `wait` has passed.
async fn resolve(handle: &Handle, target: &ServiceRef, wait: Duration) -> Result<ServiceRecord> {
    let deadline = Instant::now() + wait;
    loop {
        match handle.resolve(target.clone()).await? {
            Ok(r) => return Ok(r),
            Err(e) if Instant::now() >= deadline => {
                let hint = match &e {
                    ResolveError::NameNotFound(_) => {
                        "check the spelling, and that the service runs `beam <PORT> --name …` on \
                         the same network"
                    }
                    ResolveError::ServiceNotFound(_) => {
                        "the service is offline, or is not on the network this node joined"
                    }
                    ResolveError::Busy(_) => "try again",
                };
                bail!("{e} after {} s; {hint}", wait.as_secs());
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// How a route reads to a person.
pub fn describe(route: &Route) -> String {
    let short = |p: &beam_node::PeerId| p.short();
    match route.relays.len() {
        0 if !route.reachable => format!("hole-punched to {}", short(&route.service)),
        0 => format!("direct to {}", short(&route.service)),
        1 => format!(
            "relayed via {} to {}",
            short(&route.relays[0].0),
            short(&route.service)
        ),
        _ => format!(
            "multi-hop via {} to {}",
            route
                .relays
                .iter()
                .map(|(p, _)| short(p))
                .collect::<Vec<_>>()
                .join(", "),
            short(&route.service)
        ),
    }
}

/// The inspector's record of a tunnel this node opened on `route`, after `failed` routes
/// failed.
pub fn outgoing(
    handle: &Handle,
    route: &Route,
    strategy: Strategy,
    failed: usize,
    setup: Duration,
    route_rtt: Duration,
) -> Info {
    let via: Vec<String> = route.relays.iter().map(|(p, _)| p.short()).collect();
    let (kind, why) = match route.relays.len() {
        0 if !route.reachable => (
            Kind::HolePunched,
            "the service is behind a NAT: a direct connection punched through it".to_string(),
        ),
        0 => (
            Kind::Direct,
            "the service can be dialled and the strategy is direct".to_string(),
        ),
        1 if !route.reachable => (
            Kind::Relayed,
            "the service is behind a NAT: through the relay its record names".to_string(),
        ),
        _ => (
            if route.relays.len() == 1 {
                Kind::Relayed
            } else {
                Kind::MultiHop
            },
            match strategy {
                Strategy::MultiHop => {
                    "--strategy multi-hop: random relays, sealed end to end".to_string()
                }
                Strategy::Geographic => {
                    "--strategy geographic: the relays with the lowest predicted latency, sealed \
                     end to end"
                        .to_string()
                }
                Strategy::Direct => "sealed end to end through relays".to_string(),
            },
        ),
    };
    let why = match failed {
        0 => why,
        1 => format!("{why}; after 1 route failed"),
        n => format!("{why}; after {n} routes failed"),
    };
    let first_hop = route.relays.first().map_or(&route.service, |(p, _)| p);
    Info {
        direction: Direction::Out,
        kind,
        peer: route.service.short(),
        via,
        why,
        setup_ms: inspect::ms(setup),
        first_hop_rtt_ms: handle.rtt(first_hop).map(inspect::ms),
        route_rtt_ms: Some(inspect::ms(route_rtt)),
        predicted_direct_ms: route.predicted_direct.map(inspect::ms),
    }
}

/// Opens a tunnel for one connection, choosing another route when one fails; also says how
/// many routes failed before.
pub async fn open_with_failover(
    handle: &Handle,
    record: &ServiceRecord,
    strategy: Strategy,
    token: Option<&Token>,
) -> Result<(Route, Opened, usize), OpenError> {
    let mut exclude = BTreeSet::new();
    let mut last = None;
    for failed in 0..MAX_ROUTES {
        let route = match handle.plan(record, strategy, exclude.clone()).await {
            Ok(r) => r,
            Err(e) => {
                return Err(OpenError::Unreachable {
                    what: "a route".into(),
                    error: e.to_string(),
                });
            }
        };
        let relays: Vec<beam_node::PeerId> = route.relays.iter().map(|(p, _)| *p).collect();
        match tunnel::open(handle, &route, token).await {
            Ok(o) => {
                handle.outcome(relays, true).await;
                return Ok((route, o, failed));
            }
            // The service answered: another route gets the same answer.
            Err(e) if e.is_the_services_answer() => return Err(e),
            Err(e) => {
                if relays.is_empty() {
                    return Err(e);
                }
                handle.outcome(relays.clone(), false).await;
                exclude.extend(relays);
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or(OpenError::Unreachable {
        what: "the service".into(),
        error: "no route".into(),
    }))
}

impl Forwarder {
    /// Forwards one local connection. When the service cannot be reached with the record held,
    /// the record is looked up again once (a restarted service listens elsewhere and
    /// republishes).
    async fn forward(&self, tcp: TcpStream, n: u64) {
        let started = Instant::now();
        let (handle, token) = (&self.handle, self.token.as_ref());
        let current = self.record.read().await.clone();
        let mut opened = open_with_failover(handle, &current, self.strategy, token).await;
        let unreachable = matches!(&opened, Err(e) if !e.is_the_services_answer());
        if unreachable {
            // A cached copy (p2p.caching) may be the old record: ask the network.
            handle.uncache(self.target.clone(), current.peer).await;
        }
        if unreachable
            && let Ok(Ok(fresh)) = handle.resolve(self.target.clone()).await
            && fresh.seq > current.seq
        {
            println!("connection {n}: the service moved (new record); retrying");
            opened = open_with_failover(handle, &fresh, self.strategy, token).await;
            *self.record.write().await = fresh;
        }
        match opened {
            Ok((route, opened, failed)) => {
                println!(
                    "connection {n}: {}, setup {:.1} ms",
                    describe(&route),
                    opened.setup.as_secs_f64() * 1e3
                );
                let tracked = handle.connections.track(outgoing(
                    handle,
                    &route,
                    self.strategy,
                    failed,
                    started.elapsed(),
                    opened.route_rtt,
                ));
                let next_nonce = u64::from(!route.relays.is_empty());
                tunnel::carry(handle, tcp, opened.tunnel, next_nonce, &tracked.conn).await;
            }
            Err(OpenError::Refused(tunnel::Status::Unauthorized)) => {
                if token.is_some() {
                    eprintln!(
                        "connection {n}: the service refused the access token: check --token \
                         with the service's owner"
                    );
                } else {
                    eprintln!(
                        "connection {n}: the service requires an access token: add --token \
                         TOKEN (the service printed it when it started with --auth)"
                    );
                }
                let _ = tcp.set_zero_linger();
            }
            Err(e) if e.is_the_services_answer() => {
                eprintln!("connection {n}: {e}");
                let _ = tcp.set_zero_linger();
            }
            Err(e) => {
                let onion = self.record.read().await.tor_address.clone();
                match (&self.fallback, onion) {
                    #[cfg(feature = "tor")]
                    (Some(fallback), Some(onion)) => {
                        println!("connection {n}: no P2P route ({e}); falling back to Tor");
                        match fallback.connect(&onion).await {
                            Ok(stream) => {
                                println!(
                                    "connection {n}: over Tor to {onion}, setup {:.1} ms",
                                    started.elapsed().as_secs_f64() * 1e3
                                );
                                let tracked = handle.connections.track(Info {
                                    direction: Direction::Out,
                                    kind: Kind::Tor,
                                    peer: onion.clone(),
                                    via: vec![],
                                    why: format!("no P2P route ({e}): the Tor fallback"),
                                    setup_ms: inspect::ms(started.elapsed()),
                                    first_hop_rtt_ms: None,
                                    route_rtt_ms: None,
                                    predicted_direct_ms: None,
                                });
                                let (down, up) = crate::tor::splice(stream, tcp).await;
                                tracked.conn.set_bytes(down, up);
                            }
                            Err(e) => {
                                eprintln!("connection {n}: {e:#}");
                                let _ = tcp.set_zero_linger();
                            }
                        }
                    }
                    _ => {
                        let _ = started;
                        eprintln!("connection {n}: {e}");
                        let _ = tcp.set_zero_linger();
                    }
                }
            }
        }
    }
}

/// `beam connect X.onion`: any onion service, over Tor, on a local port.
#[cfg(feature = "tor")]
pub async fn run_onion(
    state_dir: &std::path::Path,
    onion: &str,
    onion_port: u16,
    port: Option<u16>,
    timeout: Duration,
) -> Result<()> {
    use crate::tor;
    let onion = onion.to_ascii_lowercase();
    if onion.parse::<tor_hsservice::HsId>().is_err() {
        bail!(
            "`{onion}` is not a valid onion address (a v3 address: 56 characters of a-z and 2-7,              then .onion)"
        );
    }
    let started = Instant::now();
    let listener = bind(port).await?;
    let local = listener.local_addr()?;
    let client = tor::bootstrap(&tor::dir(state_dir), timeout, |p| {
        eprintln!("Tor: bootstrap {}%: {}", p.percent, p.text);
    })
    .await?;
    println!(
        "Tor: bootstrapped in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    println!("listening on {local} → {onion}:{onion_port} (over Tor)");
    let onion = Arc::new(onion);
    serve_local(listener, move |tcp, n| {
        let (client, onion) = (client.clone(), onion.clone());
        async move {
            let t = Instant::now();
            match tor::connect(&client, &onion, onion_port).await {
                Ok(stream) => {
                    println!(
                        "connection {n}: over Tor, setup {:.1} ms",
                        t.elapsed().as_secs_f64() * 1e3
                    );
                    tor::splice(stream, tcp).await;
                }
                Err(e) => {
                    eprintln!("connection {n}: {e:#}");
                    let _ = tcp.set_zero_linger();
                }
            }
        }
    })
    .await
}

/// `beam connect X.onion` without Tor compiled in.
#[cfg(not(feature = "tor"))]
pub async fn run_onion(
    _state_dir: &std::path::Path,
    onion: &str,
    _onion_port: u16,
    _port: Option<u16>,
    _timeout: Duration,
) -> Result<()> {
    bail!(
        "cannot reach {onion}: this beam was built without Tor (rebuild with the default `tor` feature)"
    )
}

async fn bind(port: Option<u16>) -> Result<TcpListener> {
    TcpListener::bind(("127.0.0.1", port.unwrap_or(0)))
        .await
        .with_context(|| {
            format!(
                "cannot listen on 127.0.0.1:{}: is the port in use? Pick another with --port",
                port.unwrap_or(0)
            )
        })
}

/// One round of `beam network probe`.
#[derive(Debug, serde::Serialize)]
pub struct ProbeRound {
    /// The lookup: the node's memory of the record dropped first, so the DHT is asked.
    pub lookup_ms: f64,
    /// Whether the lookup found the service.
    pub found: bool,
    /// The route the strategy chose (`direct to …`, `relayed via … to …`, …).
    pub route: Option<String>,
    /// From asking for a tunnel to the service's answer ([`Opened::setup`]).
    pub setup_ms: Option<f64>,
    /// One round trip of the route once it was up ([`Opened::route_rtt`]).
    pub route_rtt_ms: Option<f64>,
    /// Why the round failed, if it did.
    pub error: Option<String>,
}

/// `beam network probe`: `count` rounds, each a fresh lookup of `target` and a tunnel opened on
/// the route `strategy` chooses (closed at once, nothing carried), one after another.
pub async fn probe(
    handle: &Handle,
    target: &ServiceRef,
    count: u32,
    strategy: Strategy,
) -> Result<Vec<ProbeRound>> {
    // Whose record to forget before each lookup: known for an address; for a name, learnt from
    // a first resolve that is not counted.
    let mut peer = match target {
        ServiceRef::Peer(p) => Some(*p),
        ServiceRef::Name(_) => handle.resolve(target.clone()).await?.ok().map(|r| r.peer),
    };
    let mut rounds = Vec::new();
    for i in 0..count {
        if i > 0 {
            tokio::time::sleep(PROBE_PAUSE).await;
        }
        if let Some(p) = peer {
            handle.uncache(target.clone(), p).await;
        }
        let started = Instant::now();
        let resolved = handle.resolve(target.clone()).await?;
        let lookup_ms = inspect::ms(started.elapsed());
        let record = match resolved {
            Ok(r) => r,
            Err(e) => {
                rounds.push(ProbeRound {
                    lookup_ms,
                    found: false,
                    route: None,
                    setup_ms: None,
                    route_rtt_ms: None,
                    error: Some(e.to_string()),
                });
                continue;
            }
        };
        peer = Some(record.peer);
        let mut round = ProbeRound {
            lookup_ms,
            found: true,
            route: None,
            setup_ms: None,
            route_rtt_ms: None,
            error: None,
        };
        match handle.plan(&record, strategy, BTreeSet::new()).await {
            Err(e) => round.error = Some(format!("no route: {e:#}")),
            Ok(route) => {
                round.route = Some(describe(&route));
                match tunnel::open(handle, &route, None).await {
                    Ok(opened) => {
                        round.setup_ms = Some(inspect::ms(opened.setup));
                        round.route_rtt_ms = Some(inspect::ms(opened.route_rtt));
                    }
                    // Refused (an access token is needed): the round trip still happened.
                    Err(e) => round.error = Some(e.to_string()),
                }
            }
        }
        rounds.push(round);
    }
    Ok(rounds)
}

/// Between two rounds of a probe.
const PROBE_PAUSE: Duration = Duration::from_millis(200);
