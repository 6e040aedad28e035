//! `beam connect`: join through a bootstrap peer, resolve the service (name → name record →
//! service record, every record's signature checked by the core), let the core choose the route,
//! and forward every connection to a local listener over it.
//!
//! Each connection opens its own tunnel. When a route through relays fails, the core learns it
//! (trust) and chooses again without those relays, up to [`MAX_ROUTES`] routes per connection.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use beam_node::app::{ResolveError, ServiceRef};
use beam_node::record::ServiceRecord;
use beam_node::routing::Strategy;
use tokio::net::{TcpListener, TcpStream};

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
}

/// Runs until Ctrl-C.
pub async fn run(config: p2p::Config, opts: Options) -> Result<()> {
    let started = Instant::now();
    let (handle, mut notices) = p2p::start(config).await?;
    p2p::tunnel::spawn_acceptors(&handle, None)?;
    wait_joined(&mut notices, opts.wait).await?;
    let record = resolve(&handle, &opts.target, opts.wait).await?;
    tokio::spawn(async move {
        while let Some(n) = notices.recv().await {
            if let Notice::HolePunched { peer } = n {
                println!("hole punched: direct connection to {}", peer.short());
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
    let listener = TcpListener::bind(("127.0.0.1", opts.port.unwrap_or(0)))
        .await
        .with_context(|| {
            format!(
                "cannot listen on 127.0.0.1:{}: is the port in use? Pick another with --port",
                opts.port.unwrap_or(0)
            )
        })?;
    let local = listener.local_addr()?;
    // The first route, planned and opened now: it shows the user where traffic will go and
    // warms the connections, so the first visitor does not pay for the setup.
    let route = handle.plan(&record, opts.strategy, BTreeSet::new()).await?;
    println!("route {}", describe(&route));
    println!("listening on {local} → {}", opts.target);
    let record = Arc::new(tokio::sync::RwLock::new(record));
    let target = Arc::new(opts.target.clone());
    let seq = Arc::new(AtomicU64::new(0));
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
                let (handle, record, seq) = (handle.clone(), record.clone(), seq.clone());
                let (strategy, target) = (opts.strategy, target.clone());
                tokio::spawn(async move {
                    let n = seq.fetch_add(1, Ordering::Relaxed) + 1;
                    forward(&handle, &record, &target, strategy, tcp, n).await;
                });
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

/// Opens a tunnel for one connection, choosing another route when one fails.
pub async fn open_with_failover(
    handle: &Handle,
    record: &ServiceRecord,
    strategy: Strategy,
) -> Result<(Route, Opened), OpenError> {
    let mut exclude = BTreeSet::new();
    let mut last = None;
    for _ in 0..MAX_ROUTES {
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
        match tunnel::open(handle, &route).await {
            Ok(o) => {
                handle.outcome(relays, true).await;
                return Ok((route, o));
            }
            Err(e @ OpenError::Refused(tunnel::Status::LocalRefused)) => return Err(e),
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

/// Forwards one local connection. When the service cannot be reached with the record held, the
/// record is looked up again once (a restarted service listens elsewhere and republishes).
async fn forward(
    handle: &Handle,
    record: &tokio::sync::RwLock<ServiceRecord>,
    target: &ServiceRef,
    strategy: Strategy,
    tcp: TcpStream,
    n: u64,
) {
    let current = record.read().await.clone();
    let mut opened = open_with_failover(handle, &current, strategy).await;
    if let Err(e) = &opened
        && !matches!(e, OpenError::Refused(tunnel::Status::LocalRefused))
        && let Ok(Ok(fresh)) = handle.resolve(target.clone()).await
        && fresh.seq > current.seq
    {
        println!("connection {n}: the service moved (new record); retrying");
        opened = open_with_failover(handle, &fresh, strategy).await;
        *record.write().await = fresh;
    }
    match opened {
        Ok((route, opened)) => {
            println!(
                "connection {n}: {}, setup {:.1} ms",
                describe(&route),
                opened.setup.as_secs_f64() * 1e3
            );
            let next_nonce = u64::from(!route.relays.is_empty());
            tunnel::carry(handle, tcp, opened.tunnel, next_nonce).await;
        }
        Err(e) => {
            eprintln!("connection {n}: {e}");
            let _ = tcp.set_zero_linger();
        }
    }
}
