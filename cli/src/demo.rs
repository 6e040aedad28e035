//! `beam demo`: a whole beam network on loopback in one process — a bootstrap peer, two
//! relays, a service in front of a built-in page, a client — and the page fetched through it
//! directly and through relays. Every figure printed is measured in this run.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use beam_node::Keypair;
use beam_node::app::ServiceRef;
use beam_node::record::Participation;
use beam_node::routing::Strategy;
use rand::SeedableRng;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::connect::{describe, open_with_failover};
use crate::p2p::{self, Handle, Notice, PublishedWhat};

const STEP: Duration = Duration::from_secs(20);

/// One fetch's measurements.
#[derive(serde::Serialize)]
struct Fetch {
    strategy: &'static str,
    route: String,
    setup_ms: f64,
    total_ms: f64,
    bytes: usize,
    body_matches: bool,
}

/// Runs the demo and prints what it measured.
pub async fn run(json: bool) -> Result<()> {
    let started = Instant::now();
    let page = page();
    let web = serve_page(page.clone()).await?;
    let say = |s: &str| {
        if !json {
            println!("{s}");
        }
    };
    say(&format!(
        "demo: a built-in page on 127.0.0.1:{web} ({} bytes)",
        page.len()
    ));
    let (boot, mut boot_n) = node(Participation::Full, vec![], None).await?;
    let boot_addr = wait_listening(&mut boot_n, &boot).await?;
    say(&format!(
        "demo: bootstrap peer {} at {boot_addr}",
        boot.peer.short()
    ));
    let mut relays = vec![];
    for _ in 0..2 {
        let (r, mut n) = node(Participation::Routing, vec![boot_addr.clone()], None).await?;
        wait_joined(&mut n).await?;
        say(&format!("demo: relay {}", r.peer.short()));
        relays.push((r, n));
    }
    let spec = p2p::ServiceSpec {
        port: web,
        name: Some("demo".into()),
        seq_file: None,
    };
    let (service, mut service_n) =
        node(Participation::Light, vec![boot_addr.clone()], Some(spec)).await?;
    wait_published(&mut service_n).await?;
    say(&format!(
        "demo: service {} (name `demo`) in front of 127.0.0.1:{web}",
        service.peer
    ));
    let (client, mut client_n) = node(Participation::Light, vec![boot_addr.clone()], None).await?;
    wait_joined(&mut client_n).await?;
    let t = Instant::now();
    let mut tries = 0;
    let record = loop {
        tries += 1;
        match client.resolve(ServiceRef::Name("demo".into())).await? {
            Ok(r) => break r,
            Err(_) if t.elapsed() < STEP => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => bail!("the client could not resolve `demo`: {e}"),
        }
    };
    say(&format!(
        "demo: client resolved `demo` in {:.1} ms ({tries} lookup{})",
        t.elapsed().as_secs_f64() * 1e3,
        if tries == 1 { "" } else { "s" }
    ));
    let want = Sha256::digest(&page);
    let mut fetches = vec![];
    for (label, strategy) in [
        ("direct", Strategy::Direct),
        ("multi-hop", Strategy::MultiHop),
    ] {
        let t = Instant::now();
        let (route, opened, failed) = open_with_failover(&client, &record, strategy, None)
            .await
            .with_context(|| format!("cannot open a {label} tunnel"))?;
        let setup = opened.setup;
        // The client side of a tunnel is a local TCP connection, as under `beam connect`.
        let local = TcpListener::bind("127.0.0.1:0").await?;
        let addr = local.local_addr()?;
        let h = client.clone();
        let sealed = !route.relays.is_empty();
        let info =
            crate::connect::outgoing(&client, &route, strategy, failed, setup, opened.route_rtt);
        tokio::spawn(async move {
            if let Ok((tcp, _)) = local.accept().await {
                let tracked = h.connections.track(info);
                p2p::tunnel::carry(&h, tcp, opened.tunnel, u64::from(sealed), &tracked.conn).await;
            }
        });
        let body = http_get(addr).await?;
        let total = t.elapsed();
        fetches.push(Fetch {
            strategy: label,
            route: describe(&route),
            setup_ms: setup.as_secs_f64() * 1e3,
            total_ms: total.as_secs_f64() * 1e3,
            bytes: body.len(),
            body_matches: Sha256::digest(&body) == want,
        });
    }
    let relayed: u64 = relays
        .iter()
        .map(|(r, _)| r)
        .chain([&boot])
        .map(|r| {
            r.stats
                .bytes_relayed
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "fetches": fetches,
                "bytes_relayed": relayed,
                "wall_ms": started.elapsed().as_secs_f64() * 1e3,
            })
        );
    } else {
        println!();
        println!(
            "{:<10} {:<44} {:>9} {:>9} {:>8}  body",
            "strategy", "route", "setup", "fetch", "bytes"
        );
        for f in &fetches {
            println!(
                "{:<10} {:<44} {:>6.1} ms {:>6.1} ms {:>8}  {}",
                f.strategy,
                f.route,
                f.setup_ms,
                f.total_ms,
                f.bytes,
                if f.body_matches { "ok" } else { "MISMATCH" }
            );
        }
        println!(
            "relays carried {} (ciphertext: they cannot read the page)",
            crate::serve::bytes(relayed)
        );
        println!(
            "demo took {:.1} s; try it for real: `beam 8000` on one machine, `beam connect` on another",
            started.elapsed().as_secs_f64()
        );
    }
    if fetches.iter().any(|f| !f.body_matches) {
        bail!("a fetched page did not match what the service served");
    }
    Ok(())
}

async fn node(
    participation: Participation,
    bootstrap: Vec<libp2p::Multiaddr>,
    service: Option<p2p::ServiceSpec>,
) -> Result<(Handle, UnboundedReceiver<Notice>)> {
    let keypair = Keypair::generate(&mut rand::rngs::StdRng::from_os_rng());
    let port = service.as_ref().map(|s| s.port);
    let (h, n) = p2p::start(p2p::Config {
        keypair,
        participation,
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
        bootstrap,
        policy: p2p::addr::AddrPolicy {
            allow_private: true,
        },
        service,
        relay_rate: None,
        mdns: false,
        caching: false,
        max_peers: crate::config::Settings::default().max_peers,
        limits: p2p::Limits::default(),
        location: None,
    })
    .await?;
    p2p::tunnel::spawn_acceptors(
        &h,
        port.map(|port| p2p::tunnel::Local { port, token: None }),
    )?;
    Ok((h, n))
}

async fn next_notice(n: &mut UnboundedReceiver<Notice>, what: &str) -> Result<Notice> {
    match tokio::time::timeout(STEP, n.recv()).await {
        Ok(Some(x)) => Ok(x),
        Ok(None) => bail!("a demo node stopped while waiting for {what}"),
        Err(_) => bail!("timed out waiting for {what}"),
    }
}

async fn wait_listening(
    n: &mut UnboundedReceiver<Notice>,
    h: &Handle,
) -> Result<libp2p::Multiaddr> {
    loop {
        if let Notice::Listening(a) = next_notice(n, "a listen address").await? {
            let id = h.status().await?.libp2p_id;
            return Ok(format!("{a}/p2p/{id}").parse()?);
        }
    }
}

async fn wait_joined(n: &mut UnboundedReceiver<Notice>) -> Result<()> {
    loop {
        if let Notice::Joined { .. } = next_notice(n, "joining the network").await? {
            return Ok(());
        }
    }
}

async fn wait_published(n: &mut UnboundedReceiver<Notice>) -> Result<()> {
    let (mut service, mut name) = (false, false);
    while !(service && name) {
        if let Notice::Published { what, refusal, .. } =
            next_notice(n, "the service's records").await?
        {
            if let Some(r) = refusal {
                bail!("publishing failed: {r}");
            }
            match what {
                PublishedWhat::Service => service = true,
                PublishedWhat::Name(_) => name = true,
            }
        }
    }
    Ok(())
}

/// The built-in page: some HTML and enough filler to be worth measuring.
fn page() -> Vec<u8> {
    let mut p = b"<!doctype html><title>beam demo</title><h1>Hello through beam</h1>\n".to_vec();
    for i in 0..2000 {
        p.extend_from_slice(format!("<p>line {i}: served over a beam tunnel</p>\n").as_bytes());
    }
    p
}

/// Serves `page` to every HTTP request on a free loopback port; returns the port.
async fn serve_page(page: Vec<u8>) -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let page = page.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = vec![];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") && got.len() < 65536 {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    page.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&page).await;
                let _ = s.shutdown().await;
            });
        }
    });
    Ok(port)
}

/// GET / over `addr`; the body.
async fn http_get(addr: std::net::SocketAddr) -> Result<Vec<u8>> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET / HTTP/1.1\r\nhost: demo\r\nconnection: close\r\n\r\n")
        .await?;
    let mut all = vec![];
    tokio::time::timeout(STEP, s.read_to_end(&mut all))
        .await
        .context("the page did not arrive in time")??;
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("the answer is not HTTP")?;
    Ok(all[split + 4..].to_vec())
}
