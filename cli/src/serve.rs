//! `beam <PORT>` and `beam node`: run a peer in the foreground, publish the service, show a
//! live status line. Ctrl-C leaves.
//!
//! What it prints on stdout, one fact a line, so that a person can read it and a script can
//! wait for a line (`published service`, `listening`):
//!
//! ```text
//! beam://…                                  the service's address (same after a restart)
//! forwarding to 127.0.0.1:8000
//! listening /ip4/127.0.0.1/tcp/41234/p2p/12D3Koo…   give this to others as --bootstrap
//! joined the network: 3 peers in the routing table
//! published service record on 3 peers
//! published name demo on 3 peers
//! ```

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use beam_node::record::RecordError;

use crate::p2p::{self, Notice, PublishedWhat};

/// What else `beam <PORT>` and `beam node` were asked.
pub struct Options {
    /// The state directory (control socket, Tor state).
    pub state_dir: PathBuf,
    /// `--tor`: publish an onion service too, bootstrapping Tor within this time.
    pub tor: Option<Duration>,
    /// `--auth`: the token clients must present.
    pub auth: Option<Auth>,
    /// How the node samples its history.
    pub history: crate::history::Settings,
}

/// The access token of `--auth`.
pub struct Auth {
    /// The token.
    pub token: p2p::auth::Token,
    /// The file it is kept in, when it was generated (or read from there).
    pub kept_in: Option<PathBuf>,
}

/// Runs the node until Ctrl-C.
pub async fn run(config: p2p::Config, opts: Options) -> Result<()> {
    let started = Instant::now();
    let service = config.service.clone();
    let peer = config.keypair.peer_id();
    if let Some(s) = &service {
        check_local_port(s.port).await;
    }
    let (handle, mut notices) = p2p::start(config).await?;
    let token = opts
        .auth
        .as_ref()
        .map(|a| std::sync::Arc::new(a.token.clone()));
    p2p::tunnel::spawn_acceptors(
        &handle,
        service.as_ref().map(|s| p2p::tunnel::Local {
            port: s.port,
            token: token.clone(),
        }),
    )?;
    #[cfg(feature = "tor")]
    let tor_side = opts.tor.map(|_| crate::tor::TorSide::new());
    #[cfg(feature = "tor")]
    if let Some(t) = &tor_side {
        let _ = t.stats.inspector.set(handle.connections.clone());
    }
    #[cfg(not(feature = "tor"))]
    if opts.tor.is_some() {
        bail!("this beam was built without Tor (rebuild with the default `tor` feature)");
    }
    crate::control::spawn(
        &opts.state_dir,
        crate::control::Context {
            p2p: handle.clone(),
            port: service.as_ref().map(|s| s.port),
            name: service.as_ref().and_then(|s| s.name.clone()),
            auth_required: token.is_some(),
            #[cfg(feature = "tor")]
            tor: tor_side.clone(),
            started,
            history: Some(opts.history),
        },
    )
    .await?;
    let status = handle.status().await?;
    println!("{peer}");
    match &service {
        Some(s) => println!("forwarding to 127.0.0.1:{}", s.port),
        None => println!("node ({}), exposing nothing", status.participation),
    }
    if let Some(a) = &opts.auth {
        let kept = a
            .kept_in
            .as_ref()
            .map_or(String::new(), |p| format!("; kept in {}", p.display()));
        println!(
            "access token {} (clients connect with --token {}{kept})",
            a.token.as_str(),
            a.token.as_str()
        );
    }
    #[cfg(feature = "tor")]
    if let (Some(side), Some(timeout), Some(s)) = (&tor_side, opts.tor, &service) {
        tokio::spawn(run_tor(
            side.clone(),
            crate::tor::dir(&opts.state_dir),
            timeout,
            s.port,
            handle.clone(),
            started,
        ));
    }
    let tty = std::io::stderr().is_terminal();
    let mut line = tokio::time::interval(Duration::from_secs(2));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            biased;
            _ = &mut ctrl_c => {
                if tty {
                    eprintln!();
                }
                eprintln!("stopping");
                let _ = std::fs::remove_file(crate::control::path(&opts.state_dir));
                return Ok(());
            }
            n = notices.recv() => {
                let Some(n) = n else { bail!("the node stopped") };
                match n {
                    Notice::Listening(a) => {
                        if matches!(a.iter().last(), Some(libp2p::multiaddr::Protocol::P2p(_))) {
                            println!("listening {a}");
                        } else {
                            println!("listening {a}/p2p/{}", status.libp2p_id);
                        }
                    }
                    Notice::Joined { peers, alone: true } => {
                        let _ = peers;
                        println!(
                            "started a new network (no --bootstrap peer): others join through \
                             the addresses above"
                        );
                    }
                    Notice::Joined { peers, alone: false } => {
                        println!("joined the network: {peers} peers in the routing table");
                    }
                    Notice::BootstrapUnreachable { addr, error } => {
                        eprintln!(
                            "warning: cannot reach bootstrap peer {addr}: {error} (retrying every \
                             5 s; check the address and that the peer is running)"
                        );
                    }
                    Notice::Reachability { public: true } => {
                        println!("reachability: public (peers can dial this node)");
                    }
                    Notice::Reachability { public: false } => {
                        println!(
                            "reachability: private (behind a NAT or firewall): reachable through \
                             relays"
                        );
                    }
                    Notice::NoUsableAddress => eprintln!(
                        "warning: this host has no public address, so the service is not \
                         published (nobody outside could dial it). On a LAN or in tests add \
                         --allow-private-addrs; behind a NAT, join a network with --bootstrap \
                         and beam reaches you through relays"
                    ),
                    Notice::Reserved { relay } => println!("reserved on relay {}", relay.short()),
                    Notice::LanPeer { peer, addr } => {
                        println!("found {} on the local network (mDNS) at {addr}", peer.short());
                    }
                    Notice::HolePunched { peer } => {
                        println!("hole punched: direct connection to {}", peer.short());
                    }
                    Notice::Published { what, stored, refused, refusal, relays } => {
                        match (what, refusal) {
                            (PublishedWhat::Name(name), Some(RecordError::NameTaken)) => {
                                bail!(
                                    "the name `{name}` is taken by another key ({refused} peers \
                                     refused it); choose another --name"
                                );
                            }
                            (PublishedWhat::Service, _) if relays.is_empty() => {
                                println!("published service record on {}", holders(stored));
                            }
                            (PublishedWhat::Service, _) => {
                                let via: Vec<String> = relays.iter().map(|r| r.short()).collect();
                                println!(
                                    "published service record on {}, reachable through relays {}",
                                    holders(stored),
                                    via.join(", ")
                                );
                            }
                            (PublishedWhat::Name(name), _) => {
                                println!("published name {name} on {}", holders(stored));
                            }
                        }
                    }
                }
            }
            _ = line.tick(), if tty => {
                if let Ok(s) = handle.status().await {
                    let st = &handle.stats;
                    let est = s
                        .network_size_estimate
                        .map_or("?".to_string(), |e| format!("~{e:.0}"));
                    eprint!(
                        "\rpeers {} · network {} · tunnels {} open / {} total · in {} · out {} · relayed {}   ",
                        s.peers_connected,
                        est,
                        st.tunnels_open.load(Ordering::Relaxed),
                        st.tunnels_total.load(Ordering::Relaxed),
                        bytes(st.bytes_in.load(Ordering::Relaxed)),
                        bytes(st.bytes_out.load(Ordering::Relaxed)),
                        bytes(st.bytes_relayed.load(Ordering::Relaxed)),
                    );
                }
            }
        }
    }
}

/// The Tor side of `beam <PORT> --tor`: bootstrap (progress on stderr), launch the onion
/// service, print its URL, put it in the signed service record, then measure that it is
/// reachable. A failure is reported and leaves the P2P side running.
#[cfg(feature = "tor")]
async fn run_tor(
    side: std::sync::Arc<crate::tor::TorSide>,
    dir: PathBuf,
    timeout: Duration,
    port: u16,
    handle: p2p::Handle,
    started: Instant,
) {
    use crate::tor;
    eprintln!("Tor: bootstrapping (up to {} s)", timeout.as_secs());
    let client = match tor::bootstrap(&dir, timeout, |p| {
        side.progress(p);
        eprintln!("Tor: bootstrap {}%: {}", p.percent, p.text);
    })
    .await
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}. The P2P side keeps running.");
            side.failed(format!("{e:#}"));
            return;
        }
    };
    let onion = match tor::launch(&client, &dir, port, side.stats.clone()) {
        Ok(o) => std::sync::Arc::new(o),
        Err(e) => {
            eprintln!("error: {e:#}. The P2P side keeps running.");
            side.failed(format!("{e:#}"));
            return;
        }
    };
    println!("Tor URL: http://{}", onion.address);
    handle.set_tor_address(Some(onion.address.clone())).await;
    side.running(client, Some(onion.clone()));
    if let Some(n) = onion.restricted {
        println!(
            "Tor: restricted discovery: only the {n} authorized clients can find the onion service \
             (beam tor client list); not self-tested (this node holds no client key)"
        );
        return;
    }
    // Until a visitor's path through the Tor network works, try it as a visitor would.
    let give_up = Instant::now() + Duration::from_secs(600);
    while Instant::now() < give_up {
        let visited = *side
            .stats
            .last_rendezvous
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(at) = visited {
            println!(
                "Tor: onion service reachable (a rendezvous through Tor completed {:.1} s after \
                 start)",
                at.duration_since(started).as_secs_f64()
            );
            return;
        }
        match side.test(Duration::from_secs(30)).await {
            Some(t) if t.reachable => {
                println!(
                    "Tor: onion service reachable (self-test over Tor: rendezvous in {} ms, {:.1} s \
                     after start)",
                    t.took_ms,
                    started.elapsed().as_secs_f64()
                );
                return;
            }
            Some(t) => tracing::debug!(error = ?t.error, "onion self-test failed"),
            None => return,
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    eprintln!(
        "warning: the onion service is not reachable over Tor after 10 minutes (see `beam tor \
         status`)"
    );
}

/// Warns (does not fail) when nothing listens on the local port yet: the service may start
/// after beam; each tunnel says so again when it is refused.
async fn check_local_port(port: u16) {
    if tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        eprintln!(
            "warning: nothing is listening on 127.0.0.1:{port} yet; visitors will be refused \
             until something does"
        );
    }
}

fn holders(stored: usize) -> String {
    if stored == 0 {
        "this node only (no other peer yet)".to_string()
    } else {
        format!("{stored} peers")
    }
}

/// Bytes in human units.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
