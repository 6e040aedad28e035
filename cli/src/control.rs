//! The control socket: how `beam status` and `beam tor status` ask the running `beam`.
//!
//! A Unix socket `<state dir>/control.sock`, mode 0600 (only the owner may ask). One JSON
//! request per line, one JSON answer per line:
//!
//! ```text
//! → {"get":"status"}
//! ← {"ok":true,"status":{…}}
//! → {"get":"tor"}
//! ← {"ok":true,"tor":{…}}         (or {"ok":false,"error":"…"})
//! → {"get":"connections"}
//! ← {"ok":true,"connections":[…]}
//! → {"get":"connectivity"}          {"get":"diagnose"}
//! → {"get":"reconnect","forget":false}
//! ← {"ok":true,"reconnected":{"disconnected":3,…}}
//! → {"get":"probe","target":"beam://…","count":5,"strategy":"direct"}
//! ← {"ok":true,"rounds":[{"lookup_ms":151.2,"found":true,"route_rtt_ms":80.4,…},…]}
//! ```
//!
//! Binding also tells two `beam`s apart: a second one started with the same state directory
//! (the same identity) is refused while the first answers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::p2p::Handle;

/// The socket's file name in the state directory.
pub const SOCKET: &str = "control.sock";
/// Requests longer than this are refused (a request is a few dozen bytes).
const MAX_REQUEST: usize = 4096;
/// A self-test older than this is run again when `beam tor status` asks.
#[cfg(feature = "tor")]
const SELF_TEST_MAX_AGE: Duration = Duration::from_secs(30);

/// The socket's path.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET)
}

/// What can be asked.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "get", rename_all = "kebab-case")]
pub enum Request {
    /// The node: addresses, peers, counters.
    Status,
    /// The Tor side (runs a reachability self-test when the last one is old).
    Tor,
    /// The tunnel connections open now and recently (the connection inspector).
    Connections,
    /// The connected peers.
    Peers,
    /// Reachability, NAT mapping, hole punching.
    Connectivity,
    /// The recent warnings and errors (scrubbed), and the node's status, for `beam diagnose`.
    Diagnose,
    /// Re-rank the routing table by RTT (`geo`: predicted by coordinates) and refresh it.
    Optimize { geo: bool },
    /// Drop every connection and join again (`forget`: forget the routing table first).
    Reconnect { forget: bool },
    /// `count` fresh lookups of `target`, each followed by a tunnel opened on the route
    /// `strategy` (`direct`, `multi-hop`, `geographic`) chooses (`beam network probe`).
    Probe {
        target: String,
        count: u32,
        strategy: String,
    },
}

/// Most rounds one probe runs.
pub const MAX_PROBE_ROUNDS: u32 = 100;

/// What the running node knows about itself, for `beam status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The P2P side.
    pub p2p: serde_json::Value,
    /// The local port published, if any.
    pub forwarding_to: Option<u16>,
    /// The name claimed, if any.
    pub name: Option<String>,
    /// `….onion`, when the onion service runs.
    pub onion_address: Option<String>,
    /// Tunnel connections open / in total; bytes in and out; bytes relayed for others.
    pub tunnels_open: usize,
    pub tunnels_total: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub bytes_relayed: u64,
    /// Circuits relayed for others in total, and the distinct peers they came from.
    #[serde(default)]
    pub circuits_relayed: u64,
    #[serde(default)]
    pub peers_helped: usize,
    /// The per-peer cap on relayed circuits (bytes/s; `None`: no cap), and how often a peer
    /// had to wait for it.
    pub relay_rate: Option<u64>,
    pub relay_throttled: u64,
    /// Whether the service requires an access token (`--auth`), and how many tunnels were
    /// refused for not presenting it.
    #[serde(default)]
    pub auth_required: bool,
    #[serde(default)]
    pub auth_refused: u64,
    /// The bounds on what peers can make this node hold, and how often each was hit.
    #[serde(default)]
    pub limits: serde_json::Value,
    /// With `--tor`: the Tor side's state and circuits in use (`beam tor status` has the rest).
    #[serde(default)]
    pub tor: Option<serde_json::Value>,
    /// Seconds since the node started.
    pub uptime_s: u64,
}

/// What the server answers from.
#[derive(Clone)]
pub struct Context {
    /// The P2P node.
    pub p2p: Handle,
    /// The local port, if a service is published.
    pub port: Option<u16>,
    /// The name, if claimed.
    pub name: Option<String>,
    /// Whether tunnels need an access token.
    pub auth_required: bool,
    /// The Tor side, with `--tor`.
    #[cfg(feature = "tor")]
    pub tor: Option<Arc<crate::tor::TorSide>>,
    /// When the node started.
    pub started: Instant,
    /// Sample the node into the history database (`beam network stats`); `None`: do not.
    pub history: Option<crate::history::Settings>,
}

/// Binds the socket and serves it in the background. Fails when another `beam` answers on it.
pub async fn spawn(state_dir: &Path, ctx: Context) -> Result<()> {
    let path = path(state_dir);
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            bail!(
                "another beam is running with the state directory {} (it answers on {}); stop \
                 it, or give this one its own --state-dir",
                state_dir.display(),
                path.display()
            );
        }
        // Left behind by a beam that did not stop cleanly.
        std::fs::remove_file(&path)
            .with_context(|| format!("cannot remove the stale {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(&path).with_context(|| format!("cannot bind {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    let ctx = Arc::new(ctx);
    if let Some(settings) = ctx.history {
        let c = ctx.clone();
        crate::history::spawn(crate::history::path(state_dir), settings, move || {
            let c = c.clone();
            async move { Ok(serde_json::to_value(node_status(&c).await?)?) }
        });
    }
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let ctx = ctx.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, &ctx).await {
                    tracing::debug!(error = %e, "control request failed");
                }
            });
        }
    });
    Ok(())
}

async fn answer(stream: UnixStream, ctx: &Context) -> Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r.take(MAX_REQUEST as u64)).lines();
    while let Some(line) = lines.next_line().await? {
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(req) => match reply(req, ctx).await {
                Ok(v) => v,
                Err(e) => serde_json::json!({"ok": false, "error": format!("{e:#}")}),
            },
            Err(e) => serde_json::json!({"ok": false, "error": format!("bad request: {e}")}),
        };
        let mut out = serde_json::to_vec(&reply)?;
        out.push(b'\n');
        w.write_all(&out).await?;
    }
    Ok(())
}

use tokio::io::AsyncReadExt as _;

async fn reply(req: Request, ctx: &Context) -> Result<serde_json::Value> {
    match req {
        Request::Status => Ok(serde_json::json!({"ok": true, "status": node_status(ctx).await?})),
        Request::Peers => Ok(serde_json::json!({
            "ok": true,
            "peers": ctx.p2p.peers().await?,
        })),
        Request::Connectivity => Ok(serde_json::json!({
            "ok": true,
            "connectivity": ctx.p2p.connectivity().await?,
        })),
        Request::Diagnose => Ok(serde_json::json!({
            "ok": true,
            "status": node_status(ctx).await?,
            "recent": crate::logs::recent(),
        })),
        Request::Optimize { geo } => Ok(serde_json::json!({
            "ok": true,
            "optimized": ctx.p2p.optimize(geo).await?,
        })),
        Request::Reconnect { forget } => Ok(serde_json::json!({
            "ok": true,
            "reconnected": ctx.p2p.reconnect(forget).await?,
        })),
        Request::Probe {
            target,
            count,
            strategy,
        } => {
            let target: beam_node::app::ServiceRef = target.parse()?;
            if !(1..=MAX_PROBE_ROUNDS).contains(&count) {
                bail!("a probe runs 1 to {MAX_PROBE_ROUNDS} rounds, not {count}");
            }
            let strategy = match strategy.as_str() {
                "direct" => beam_node::routing::Strategy::Direct,
                "multi-hop" => beam_node::routing::Strategy::MultiHop,
                "geographic" => beam_node::routing::Strategy::Geographic,
                other => bail!("unknown strategy `{other}` (direct, multi-hop or geographic)"),
            };
            let rounds = crate::connect::probe(&ctx.p2p, &target, count, strategy).await?;
            Ok(serde_json::json!({"ok": true, "rounds": rounds}))
        }
        Request::Connections => Ok(serde_json::json!({
            "ok": true,
            "connections": ctx.p2p.connections.views(),
        })),
        Request::Tor => {
            #[cfg(feature = "tor")]
            if let Some(tor) = &ctx.tor {
                let s = tor.status();
                if s.state == "running"
                    && s.onion_address.is_some()
                    && s.self_test_age_s
                        .is_none_or(|age| age >= SELF_TEST_MAX_AGE.as_secs())
                {
                    tor.test(Duration::from_secs(30)).await;
                }
                let mut v = serde_json::to_value(tor.status())?;
                v["local_port"] = serde_json::json!(ctx.port);
                return Ok(serde_json::json!({"ok": true, "tor": v}));
            }
            bail!("this beam runs without Tor (start it with --tor)")
        }
    }
}

/// What `beam status --json` shows.
pub async fn node_status(ctx: &Context) -> Result<NodeStatus> {
    let s = ctx.p2p.status().await?;
    let st = &ctx.p2p.stats;
    #[cfg(feature = "tor")]
    let onion_address = ctx.tor.as_ref().and_then(|t| t.onion_address());
    #[cfg(not(feature = "tor"))]
    let onion_address = None;
    #[cfg(feature = "tor")]
    let tor = ctx.tor.as_ref().map(|t| {
        let t = t.status();
        serde_json::json!({
            "state": t.state,
            "bootstrap_percent": t.bootstrap_percent,
            "circuits_in_use": t.circuits_in_use,
            "reachable": t.reachable,
            "streams_open": t.streams_open,
        })
    });
    #[cfg(not(feature = "tor"))]
    let tor = None;
    let status = NodeStatus {
        p2p: serde_json::to_value(&s)?,
        forwarding_to: ctx.port,
        name: ctx.name.clone(),
        onion_address,
        tunnels_open: st.tunnels_open.load(Ordering::Relaxed),
        tunnels_total: st.tunnels_total.load(Ordering::Relaxed),
        bytes_in: st.bytes_in.load(Ordering::Relaxed),
        bytes_out: st.bytes_out.load(Ordering::Relaxed),
        bytes_relayed: st.bytes_relayed.load(Ordering::Relaxed),
        circuits_relayed: st.circuits_relayed.load(Ordering::Relaxed),
        peers_helped: st.helped.lock().unwrap_or_else(|p| p.into_inner()).len(),
        relay_rate: ctx.p2p.limiter.rate(),
        relay_throttled: ctx.p2p.limiter.throttled.load(Ordering::Relaxed),
        auth_required: ctx.auth_required,
        auth_refused: st.auth_refused.load(Ordering::Relaxed),
        limits: {
            let l = &ctx.p2p.streams;
            let (per_peer, total) = l.bounds();
            serde_json::json!({
                "streams_open": l.open(),
                "streams_per_peer": per_peer,
                "streams_total": total,
                "refused_per_peer": l.refused_per_peer.load(Ordering::Relaxed),
                "refused_total": l.refused_total.load(Ordering::Relaxed),
                "idle_timeout_s": ctx.p2p.idle_timeout.map(|d| d.as_secs()),
                "idle_closed": st.idle_closed.load(Ordering::Relaxed),
                "connections_refused": st.connections_refused.load(Ordering::Relaxed),
                "handshakes_refused": st.handshakes_refused.load(Ordering::Relaxed),
                "circuits_refused": s.circuits_refused,
                "open_retries": st.open_retries.load(Ordering::Relaxed),
            })
        },
        tor,
        uptime_s: ctx.started.elapsed().as_secs(),
    };
    Ok(status)
}

/// Sends one request to the `beam` running with `state_dir` and returns its answer's payload.
pub async fn ask(state_dir: &Path, req: &Request, timeout: Duration) -> Result<serde_json::Value> {
    let path = path(state_dir);
    let mut stream = match UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e) => bail!(
            "no beam is running with the state directory {} (cannot open {}: {e}); start one \
             with `beam <PORT>` or `beam node`, or point --state-dir at its directory",
            state_dir.display(),
            path.display()
        ),
    };
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    tokio::time::timeout(timeout, reader.read_line(&mut answer))
        .await
        .context("the running beam did not answer in time")??;
    let v: serde_json::Value =
        serde_json::from_str(&answer).context("the running beam sent an unreadable answer")?;
    if v["ok"] != serde_json::Value::Bool(true) {
        bail!(
            "{}",
            v["error"]
                .as_str()
                .unwrap_or("the running beam refused the request")
        );
    }
    Ok(v)
}
