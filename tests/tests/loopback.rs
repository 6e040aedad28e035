//! Real `beam` processes on 127.0.0.1: a bootstrap node, two relays, a service in front of an
//! HTTP server, and clients — by name, by `beam://` address, direct and multi-hop; a service
//! restart; garbage on a node's port.

use std::sync::Arc;
use std::time::{Duration, Instant};

use beam_e2e::{
    Beam, HttpServer, TempDir, body_of, free_port, http_get_retry, json_u64, latencies,
    listen_addr, percentile, sha256, status_json,
};

const T: Duration = Duration::from_secs(30);
const LOOPBACK: &str = "/ip4/127.0.0.1/tcp/0";

struct Net {
    boot: Beam,
    boot_addr: String,
    relays: Vec<Beam>,
    /// The bootstrap node's, then each relay's state directory (with its `tap.bin`: every byte
    /// it relayed, through `BEAM_RELAY_TAP`).
    dirs: Vec<TempDir>,
}

fn tap_env(d: &TempDir) -> String {
    d.0.join("tap.bin").to_str().expect("utf-8").to_string()
}

fn network(relays: usize) -> Net {
    network_with(relays, &[])
}

/// A network whose nodes all get `extra` arguments too.
fn network_with(relays: usize, extra: &[&str]) -> Net {
    let mut dirs = vec![TempDir::new("boot")];
    let tap = tap_env(&dirs[0]);
    let mut args = vec![
        "node",
        "--p2p-full",
        "--listen",
        LOOPBACK,
        "--state-dir",
        dirs[0].path(),
    ];
    args.extend_from_slice(extra);
    let mut boot = Beam::start_env("boot", &args, &[("BEAM_RELAY_TAP", &tap)]);
    let boot_addr = listen_addr(&boot.wait_for("listening ", T));
    let mut rs = vec![];
    for i in 0..relays {
        let d = TempDir::new(&format!("relay{i}"));
        let tap = tap_env(&d);
        let mut args = vec![
            "node",
            "--p2p-routing",
            "--listen",
            LOOPBACK,
            "--bootstrap",
            &boot_addr,
            "--state-dir",
            d.path(),
        ];
        args.extend_from_slice(extra);
        let mut r = Beam::start_env(&format!("relay{i}"), &args, &[("BEAM_RELAY_TAP", &tap)]);
        r.wait_for("joined the network", T);
        rs.push(r);
        dirs.push(d);
    }
    Net {
        boot,
        boot_addr,
        relays: rs,
        dirs,
    }
}

fn service(net: &Net, port: u16, name: &str, dir: &TempDir) -> (Beam, String) {
    service_with(net, port, name, dir, &[])
}

fn service_with(net: &Net, port: u16, name: &str, dir: &TempDir, extra: &[&str]) -> (Beam, String) {
    let port = port.to_string();
    let mut args = vec![
        port.as_str(),
        "--name",
        name,
        "--listen",
        LOOPBACK,
        "--bootstrap",
        &net.boot_addr,
        "--state-dir",
        dir.path(),
    ];
    args.extend_from_slice(extra);
    let mut s = Beam::start("service", &args);
    let addr = s.wait_for("beam://", T);
    s.wait_for(&format!("published name {name}"), T);
    (s, addr)
}

fn connect(net: &Net, target: &str, strategy: &str, dir: &TempDir) -> (Beam, u16, Instant) {
    let port = free_port();
    let started = Instant::now();
    let mut c = Beam::start(
        "client",
        &[
            "connect",
            target,
            "--port",
            &port.to_string(),
            "--strategy",
            strategy,
            "--bootstrap",
            &net.boot_addr,
            "--listen",
            LOOPBACK,
            "--state-dir",
            dir.path(),
        ],
    );
    c.wait_for("listening on 127.0.0.1", T);
    (c, port, started)
}

/// The index in `net.relays` of a relay process on the route a client's `connection N: … via
/// A, B to S` line names.
fn relay_on_route(net: &mut Net, line: &str) -> usize {
    let used: Vec<String> = line
        .split("via ")
        .nth(1)
        .and_then(|r| r.split(" to ").next())
        .map(|r| r.split(", ").map(str::to_string).collect())
        .unwrap_or_default();
    let ids: Vec<String> = net
        .relays
        .iter_mut()
        .map(|r| r.wait_for("beam://", T))
        .collect();
    ids.iter()
        .position(|id| used.iter().any(|u| id.starts_with(&format!("beam://{u}"))))
        .unwrap_or_else(|| panic!("no relay process on the route of {line:?}"))
}

/// A plaintext marker the body carries every MiB: no relay may ever see it.
const MARKER: &[u8] = b"BEAM-PLAINTEXT-MARKER-a6f1c0de-relays-must-never-see-this";

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn fifty_mib_by_name_and_by_address_direct_and_multi_hop() {
    let mut body = body_of(50 << 20, 7);
    for at in (0..body.len() - MARKER.len()).step_by(1 << 20) {
        body[at..at + MARKER.len()].copy_from_slice(MARKER);
    }
    let body = Arc::new(body);
    let want = sha256(&body);
    let http = HttpServer::start(body.clone());
    let mut net = network(2);
    let sdir = TempDir::new("service");
    let (_svc, addr) = service(&net, http.port, "demo", &sdir);

    // By name, direct.
    let cdir = TempDir::new("client");
    let (mut c, port, started) = connect(&net, "demo", "direct", &cdir);
    let until_get = started.elapsed();
    let f = http_get_retry(port, T);
    eprintln!(
        "direct by name on loopback: `beam connect` start → first byte {:?} (of which the GET \
         through the tunnel {:?})",
        until_get + f.first_byte,
        f.first_byte
    );
    assert_eq!(f.body.len(), body.len(), "direct: whole body");
    assert_eq!(sha256(&f.body), want, "direct: body matches by hash");
    c.wait_for("connection 1: direct to", T);
    drop(c);

    // By beam:// address.
    let cdir2 = TempDir::new("client2");
    let (_c2, port2, _) = connect(&net, &addr, "direct", &cdir2);
    let f = http_get_retry(port2, T);
    assert_eq!(sha256(&f.body), want, "by address: body matches by hash");

    // Multi-hop: through two relays, sealed end to end.
    let cdir3 = TempDir::new("client3");
    let (mut c3, port3, _) = connect(&net, "demo", "multi-hop", &cdir3);
    let route = c3.wait_for("route ", T);
    assert!(route.starts_with("route multi-hop via"), "{route}");
    let f = http_get_retry(port3, T);
    assert_eq!(sha256(&f.body), want, "multi-hop: body matches by hash");

    let line = c3.wait_for("connection 1:", T);
    assert!(line.contains("multi-hop via"), "{line}");
    let hops = line
        .split("via ")
        .nth(1)
        .and_then(|r| r.split(" to ").next())
        .map(|r| r.split(", ").count());
    assert_eq!(hops, Some(2), "two relays: {line}");

    // The two relays on the route carried the whole body (their counters and their taps say so)
    // and never saw the marker: only ciphertext passes them.
    let mut carried = vec![];
    for d in &net.dirs {
        let relayed = json_u64(&status_json(d), "bytes_relayed").expect("bytes_relayed");
        let tapped = std::fs::read(d.0.join("tap.bin")).unwrap_or_default();
        assert!(
            !contains(&tapped, MARKER),
            "a relay saw the plaintext marker ({})",
            d.path()
        );
        assert_eq!(
            relayed,
            tapped.len() as u64,
            "the relay counter and the tap disagree"
        );
        carried.push(relayed);
    }
    let full = carried.iter().filter(|&&n| n >= body.len() as u64).count();
    eprintln!(
        "multi-hop: bytes relayed per node (boot, relays): {carried:?}; body {}",
        body.len()
    );
    assert_eq!(
        full, 2,
        "two relays each carried the whole body: {carried:?}"
    );

    // `beam status --json` against what this test set up.
    let len = body.len() as u64;
    let st: serde_json::Value = serde_json::from_str(&status_json(&sdir)).expect("status JSON");
    let p = &st["p2p"];
    assert_eq!(st["name"], "demo", "{st}");
    assert_eq!(
        st["forwarding_to"].as_u64(),
        Some(u64::from(http.port)),
        "{st}"
    );
    assert_eq!(p["peer_id"].as_str(), Some(addr.as_str()), "{st}");
    assert_eq!(p["participation"], "light", "`beam <PORT>`'s default: {st}");
    // The bootstrap node, two relays, and the clients still running (two).
    let peers = p["peers_connected"].as_u64().unwrap_or(0);
    assert!((3..=5).contains(&peers), "peers connected: {st}");
    assert!(
        p["dht_health"].as_f64() > Some(0.0),
        "DHT health measured: {st}"
    );
    assert!(
        p["peer_rtt_p50_ms"].as_f64() > Some(0.0),
        "peer RTT measured: {st}"
    );
    assert!(
        st["bytes_out"].as_u64() >= Some(3 * len),
        "three bodies out: {st}"
    );
    assert!(
        p["rate_out_bps"].as_f64() > Some(0.0),
        "bandwidth over the last 10 s: {st}"
    );
    // `beam network peers`: the bootstrap node and both relays, each a DHT server in the
    // service's routing table, with a measured RTT.
    let out = std::process::Command::new(beam_e2e::beam_bin())
        .args(["--state-dir", sdir.path(), "network", "peers", "--json"])
        .output()
        .expect("beam network peers");
    let peers: serde_json::Value = serde_json::from_slice(&out.stdout).expect("peers JSON");
    let mut servers = vec![net.boot.wait_for("beam://", T)];
    for r in &mut net.relays {
        servers.push(r.wait_for("beam://", T));
    }
    for id in &servers {
        let p = peers
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["peer"].as_str() == Some(id.trim()))
            .unwrap_or_else(|| panic!("{id} is not among the service's peers: {peers}"));
        assert_eq!(p["in_routing_table"], true, "{p}");
        assert!(
            p["address"]
                .as_str()
                .unwrap_or("")
                .starts_with("/ip4/127.0.0.1/"),
            "{p}"
        );
    }
    let relay: serde_json::Value =
        serde_json::from_str(&status_json(&net.dirs[1])).expect("status JSON");
    assert_eq!(relay["p2p"]["participation"], "routing", "{relay}");
    assert!(relay["name"].is_null(), "{relay}");
    // `beam network my-stats`: the nodes that carried the multi-hop body relayed a circuit for
    // one peer at least; `beam network health`: the service is healthy (exit 0).
    let beam_json = |dir: &TempDir, args: &[&str]| -> (bool, serde_json::Value) {
        let out = std::process::Command::new(beam_e2e::beam_bin())
            .args(["--state-dir", dir.path()])
            .args(args)
            .output()
            .expect("run beam");
        let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.success(), v)
    };
    let mut helpers = 0;
    for (d, carried) in net.dirs.iter().zip(&carried) {
        let (ok, mine) = beam_json(d, &["network", "my-stats", "--json"]);
        assert!(ok, "{mine}");
        if *carried >= len {
            assert!(mine["circuits_relayed"].as_u64() >= Some(1), "{mine}");
            assert!(mine["peers_helped"].as_u64() >= Some(1), "{mine}");
            assert_eq!(mine["bytes_relayed"].as_u64(), Some(*carried), "{mine}");
            helpers += 1;
        }
    }
    assert_eq!(helpers, 2, "two relays say they helped");
    let (ok, health) = beam_json(&sdir, &["network", "health", "--json"]);
    assert!(ok && health["healthy"] == true, "{health}");

    // The connection inspector, on both ends: how each tunnel got there and what it carried.
    let direct = inspected(&cdir2, "out", "direct", len);
    assert_eq!(direct["via"].as_array().map(Vec::len), Some(0), "{direct}");
    let multi = inspected(&cdir3, "out", "multi-hop", len);
    assert_eq!(multi["via"].as_array().map(Vec::len), Some(2), "{multi}");
    assert!(
        multi["why"].as_str().unwrap_or("").contains("multi-hop"),
        "{multi}"
    );
    let served = inspected(&sdir, "in", "direct", 0);
    assert!(served["bytes_out"].as_u64() >= Some(len), "{served}");
    let sealed = inspected(&sdir, "in", "relayed", 0);
    assert!(sealed["bytes_out"].as_u64() >= Some(len), "{sealed}");
    // The service sees the last relay, which is the client's second.
    assert_eq!(sealed["via"][0], multi["via"][1], "{sealed} {multi}");
    let text = std::process::Command::new(beam_e2e::beam_bin())
        .args(["--state-dir", cdir3.path(), "status", "--connections"])
        .output()
        .expect("beam status --connections");
    let text = String::from_utf8_lossy(&text.stdout);
    eprintln!("beam status --connections (the multi-hop client):\n{text}");
    assert!(text.contains("multi-hop via "), "{text}");
    assert!(text.contains("why: --strategy multi-hop"), "{text}");
}

/// The first tunnel connection `beam status --connections --json` lists for the node in `dir`
/// with this direction and kind that carried at least `bytes_in` in.
fn inspected(dir: &TempDir, direction: &str, kind: &str, bytes_in: u64) -> serde_json::Value {
    let out = std::process::Command::new(beam_e2e::beam_bin())
        .args([
            "--state-dir",
            dir.path(),
            "status",
            "--connections",
            "--json",
        ])
        .output()
        .expect("beam status --connections --json");
    let all: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    all.as_array()
        .into_iter()
        .flatten()
        .find(|c| {
            c["direction"] == direction
                && c["kind"] == kind
                && c["bytes_in"].as_u64() >= Some(bytes_in)
        })
        .cloned()
        .unwrap_or_else(|| panic!("no {direction} {kind} connection with {bytes_in} B in: {all}"))
}

#[test]
fn a_restarted_service_keeps_its_address_and_the_client_reconnects() {
    let body = Arc::new(body_of(1 << 20, 3));
    let want = sha256(&body);
    let http = HttpServer::start(body.clone());
    let net = network(0);
    let sdir = TempDir::new("service");
    let (mut svc, addr) = service(&net, http.port, "restart", &sdir);
    let cdir = TempDir::new("client");
    let (_c, port, _) = connect(&net, "restart", "direct", &cdir);
    assert_eq!(sha256(&http_get_retry(port, T).body), want);
    svc.kill();
    let (_svc2, addr2) = service(&net, http.port, "restart", &sdir);
    assert_eq!(addr, addr2, "same beam:// after a restart");
    // The client still holds the old record (the service listens on a new port now): its next
    // connection finds the new one.
    let f = http_get_retry(port, T);
    assert_eq!(sha256(&f.body), want, "after the restart");
}

#[test]
fn garbage_on_a_nodes_port_leaves_it_up() {
    use std::io::Write;
    let body = Arc::new(body_of(64 << 10, 5));
    let http = HttpServer::start(body.clone());
    let mut net = network(0);
    let port: u16 = net
        .boot_addr
        .split("/tcp/")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|p| p.parse().ok())
        .expect("tcp port in the bootstrap address");
    for junk in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0xff; 70_000][..],
        &[0x13, 0x2f, 0x00][..],
    ] {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(junk);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        net.boot.running(),
        "the node survived garbage\n{}",
        net.boot.dump()
    );
    let sdir = TempDir::new("service");
    let (_svc, _) = service(&net, http.port, "after-junk", &sdir);
    let cdir = TempDir::new("client");
    let (_c, p, _) = connect(&net, "after-junk", "direct", &cdir);
    assert_eq!(
        http_get_retry(p, T).body,
        *body,
        "a request after the garbage works"
    );
}

#[test]
fn when_a_relay_in_use_dies_the_next_request_goes_around_it() {
    let body = Arc::new(body_of(4 << 20, 9));
    let want = sha256(&body);
    let http = HttpServer::start(body.clone());
    let mut net = network(3);
    let sdir = TempDir::new("service");
    let (_svc, _) = service(&net, http.port, "relayed", &sdir);
    let cdir = TempDir::new("client");
    let (mut c, port, _) = connect(&net, "relayed", "multi-hop", &cdir);
    assert_eq!(sha256(&http_get_retry(port, T).body), want);
    let line = c.wait_for("connection 1:", T);
    // Kill a relay of that route (the bootstrap node may be one too; it stays).
    let i = relay_on_route(&mut net, &line);
    let victim = &mut net.relays[i];
    victim.kill();
    let t = Instant::now();
    let f = http_get_retry(port, T);
    let took = t.elapsed();
    assert_eq!(
        sha256(&f.body),
        want,
        "after the relay died: not corrupted, not truncated"
    );
    let line2 = c.wait_for("connection 2:", T);
    eprintln!("relay died; next request took {took:?}: {line2} (first: {line})");
    assert!(
        took < Duration::from_secs(5),
        "the next request took {took:?}"
    );
    assert!(net.boot.running());
}

/// Cold starts: a fresh `beam connect` joins and resolves without waiting out a DHT timeout
/// (1 s). libp2p-stream drops an inbound stream that finds its channel of one full, as when the
/// answers of several peers arrive together; before control streams were acknowledged (and
/// rewritten when dropped), about a third of cold starts on loopback took 1,010–1,025 ms.
#[test]
fn cold_starts_never_wait_out_a_dht_timeout() {
    let http = HttpServer::start(Arc::new(b"cold".to_vec()));
    let net = network(2);
    let sdir = TempDir::new("service");
    let (_svc, _) = service(&net, http.port, "cold", &sdir);
    let mut times = vec![];
    for i in 0..30 {
        let cdir = TempDir::new(&format!("client{i}"));
        let (mut c, _, _) = connect(&net, "cold", "direct", &cdir);
        let line = c.wait_for("resolved cold", T);
        let ms: u64 = line
            .rsplit_once(" in ")
            .and_then(|(_, t)| t.trim_end_matches(" ms").parse().ok())
            .unwrap_or_else(|| panic!("no time in {line:?}"));
        times.push(ms);
    }
    eprintln!("cold starts, join + resolve, ms: {times:?}");
    assert!(
        times.iter().all(|ms| *ms < 900),
        "a cold start waited out a DHT timeout: {times:?} ms"
    );
}

/// `--auth`: a client without the token, or with another, is refused before a byte reaches the
/// local port (the origin counts no connection); with it, direct and through relays (the token
/// inside the end-to-end handshake), the body arrives.
#[test]
fn an_auth_service_lets_in_only_clients_with_its_token() {
    let body = Arc::new(body_of(256 << 10, 11));
    let want = sha256(&body);
    let http = HttpServer::start(body.clone());
    let net = network(2);
    let sdir = TempDir::new("service");
    let mut svc = Beam::start(
        "service",
        &[
            &http.port.to_string(),
            "--name",
            "guarded",
            "--auth",
            "--listen",
            LOOPBACK,
            "--bootstrap",
            &net.boot_addr,
            "--state-dir",
            sdir.path(),
        ],
    );
    let line = svc.wait_for("access token ", T);
    let token = line
        .split_whitespace()
        .nth(2)
        .expect("the token on the line")
        .to_string();
    assert_eq!(token.len(), 32, "{line}");
    let kept = std::fs::read_to_string(sdir.0.join("auth-token")).expect("kept");
    assert_eq!(
        kept.trim(),
        token,
        "the generated token is kept in the state directory"
    );
    svc.wait_for("published name guarded", T);
    // `beam <PORT>` checks at start that something listens on the port: one connection.
    let conns = || http.connections.load(std::sync::atomic::Ordering::Relaxed);
    let before = conns();

    let refused = |label: &str, extra: &[&str], why: &str| {
        let cdir = TempDir::new(label);
        let port = free_port();
        let port_s = port.to_string();
        let mut args = vec![
            "connect",
            "guarded",
            "--port",
            &port_s,
            "--bootstrap",
            &net.boot_addr,
            "--listen",
            LOOPBACK,
            "--state-dir",
            cdir.path(),
        ];
        args.extend_from_slice(extra);
        let mut c = Beam::start(label, &args);
        c.wait_for("listening on 127.0.0.1", T);
        let got = beam_e2e::http_get(port, Duration::from_secs(10));
        assert!(
            got.as_ref().map_or(true, |f| f.body.is_empty()),
            "{label}: a client got through: {got:?}"
        );
        let said = c.wait_stderr(why, T);
        eprintln!("{label}: {said}");
    };
    refused("no-token", &[], "requires an access token");
    refused(
        "wrong-token",
        &["--token", "not-the-token-at-all"],
        "refused the access token",
    );
    refused(
        "wrong-token-relayed",
        &["--token", "not-the-token-at-all", "--strategy", "multi-hop"],
        "refused the access token",
    );
    assert_eq!(
        conns() - before,
        0,
        "no refused client reached the local port"
    );

    for strategy in ["direct", "multi-hop"] {
        let cdir = TempDir::new(&format!("ok-{strategy}"));
        let port = free_port();
        let mut c = Beam::start_env(
            "client",
            &[
                "connect",
                "guarded",
                "--port",
                &port.to_string(),
                "--strategy",
                strategy,
                "--bootstrap",
                &net.boot_addr,
                "--listen",
                LOOPBACK,
                "--state-dir",
                cdir.path(),
            ],
            &[("BEAM_TOKEN", &token)],
        );
        c.wait_for("listening on 127.0.0.1", T);
        let f = http_get_retry(port, T);
        assert_eq!(sha256(&f.body), want, "{strategy} with the token");
        let line = c.wait_for("connection 1:", T);
        if strategy == "multi-hop" {
            assert!(line.contains("multi-hop via"), "{line}");
        }
    }
    assert_eq!(
        conns() - before,
        2,
        "each client with the token reached the port once"
    );
    let st = status_json(&sdir);
    assert_eq!(
        json_u64(&st, "auth_refused"),
        Some(3),
        "three refusals counted: {st}"
    );
}

/// A relay killed in the middle of a 50 MiB download (relays capped at 10 MiB/s, so the transfer
/// takes ~5 s and the kill lands ~1 s in): the client's transfer fails loudly (the connection is
/// reset, never closed as if complete) or completes — never a wrong or truncated body — and the
/// next request, over a route around the dead relay, gets the right hash.
#[test]
fn a_relay_killed_mid_download_never_yields_a_wrong_body() {
    let body = Arc::new(body_of(50 << 20, 21));
    let want = sha256(&body);
    let http = HttpServer::start(body.clone());
    let mut net = network_with(3, &["--relay-rate", "10"]);
    let sdir = TempDir::new("service");
    let (_svc, _) = service(&net, http.port, "middie", &sdir);
    let cdir = TempDir::new("client");
    let (mut c, port, _) = connect(&net, "middie", "multi-hop", &cdir);
    let fetch = std::thread::spawn(move || beam_e2e::http_get(port, Duration::from_secs(60)));
    let line = c.wait_for("connection 1:", T);
    let i = relay_on_route(&mut net, &line);
    std::thread::sleep(Duration::from_millis(1000));
    let t = Instant::now();
    net.relays[i].kill();
    let first = fetch.join().expect("the fetch thread");
    match &first {
        Ok(f) => assert_eq!(
            sha256(&f.body),
            want,
            "a transfer that completed has the right body"
        ),
        Err(e) => eprintln!(
            "mid-download kill: the transfer failed loudly after {:?}: {e}",
            t.elapsed()
        ),
    }
    assert!(
        first.is_err(),
        "the kill landed after the transfer ended: make the transfer slower"
    );
    let again = http_get_retry(port, T);
    assert_eq!(sha256(&again.body), want, "the retry over another route");
    let line2 = c.wait_for("connection 2:", T);
    eprintln!("retry: {line2} (first: {line})");
    assert!(net.boot.running());
}

/// One peer opens tunnels to a service as fast as it can and holds them (never sending a
/// request); the service refuses it past `limits.streamsPerPeer` and counts it, and another
/// client's requests keep working, their p99 latency at most doubled. The flooder's processes
/// run niced, standing in for the other host they would be on (un-niced on these two cores, its
/// own CPU use raised the other client's p99 2.2-4.2x).
#[test]
fn a_flooding_peer_is_refused_and_another_clients_latency_holds() {
    let body = Arc::new(body_of(16 << 10, 13));
    let want = sha256(&body);
    let http = HttpServer::start(body.clone());
    let net = network(0);
    let sdir = TempDir::new("service");
    let config = sdir.0.join("config.toml");
    std::fs::write(&config, "[limits]\nstreamsPerPeer = 16\n").expect("write config");
    let config = config.to_str().expect("utf-8").to_string();
    let (svc, _) = service_with(&net, http.port, "flooded", &sdir, &["--config", &config]);
    let vdir = TempDir::new("victim");
    let (victim, vport, _) = connect(&net, "flooded", "direct", &vdir);
    // The flooder runs niced, as the separate host it would be: on this one machine its CPU
    // would otherwise count against the service.
    let fdir = TempDir::new("flooder");
    let fport = free_port();
    let mut flooder = Beam::start_in(
        &["nice", "-n", "19"],
        "flooder",
        &[
            "connect",
            "flooded",
            "--port",
            &fport.to_string(),
            "--bootstrap",
            &net.boot_addr,
            "--listen",
            LOOPBACK,
            "--state-dir",
            fdir.path(),
        ],
    );
    flooder.wait_for("listening on 127.0.0.1", T);
    // Warm both (connections, records), then the baseline.
    http_get_retry(vport, T);
    http_get_retry(fport, T);
    let base = latencies(vport, 200, &want, "baseline", &victim);

    // The flood: connections to the flooder's local port as fast as they open, each held
    // (64 at a time per thread) without a request, so every one is a tunnel held or refused.
    let script = r#"
import socket, sys, time
held, end = [], time.time() + 30
while time.time() < end:
    try:
        held.append(socket.create_connection(("127.0.0.1", int(sys.argv[1]))))
        if len(held) > 256:
            held.pop(0).close()
    except OSError:
        pass
"#;
    let mut flood = std::process::Command::new("nice")
        .args(["-n", "19", "python3", "-c", script, &fport.to_string()])
        .spawn()
        .expect("start the flood (python3)");
    std::thread::sleep(Duration::from_secs(2));
    let flooded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        latencies(vport, 200, &want, "under the flood", &victim)
    }))
    .unwrap_or_else(|_| panic!("service:\n{}", svc.dump()));
    let _ = flood.kill();
    let _ = flood.wait();
    let st = status_json(&sdir);
    let refused = json_u64(&st, "refused_per_peer").expect("refused_per_peer");
    let (p50b, p99b) = (percentile(&base, 0.5), percentile(&base, 0.99));
    let (p50f, p99f) = (percentile(&flooded, 0.5), percentile(&flooded, 0.99));
    eprintln!(
        "flood: {refused} of the flooder's tunnels refused by the service (16 per peer); the \
         other client's GETs p50 {p50b:.1} -> {p50f:.1} ms, p99 {p99b:.1} -> {p99f:.1} ms \
         ({:.2}x)",
        p99f / p99b
    );
    assert!(refused > 0, "the flood never hit the per-peer bound: {st}");
    assert!(
        p99f <= 2.0 * p99b,
        "the other client's p99 rose from {p99b:.1} to {p99f:.1} ms"
    );
}

/// Holds a connection to a client's local port open without a byte either way; returns how long
/// until the tunnel behind it was closed (EOF or reset), or `None` if it was still open after
/// `wait`.
fn idle_close_after(port: u16, wait: Duration) -> Option<Duration> {
    use std::io::Read;
    let started = Instant::now();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(wait)).expect("timeout");
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => Some(started.elapsed()),
        Ok(_) => panic!("a byte arrived on an idle tunnel"),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(_) => Some(started.elapsed()),
    }
}

/// A GET whose request trickles in one header line every `every` for `lasting`: the tunnel is
/// never idle for long, however long it is open.
fn trickled_get(port: u16, every: Duration, lasting: Duration) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Write};
    let started = Instant::now();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(T))?;
    s.write_all(b"GET / HTTP/1.1\r\nhost: test\r\n")?;
    let mut i = 0;
    while started.elapsed() < lasting {
        std::thread::sleep(every);
        s.write_all(format!("x-trickle-{i}: still here\r\n").as_bytes())?;
        i += 1;
    }
    s.write_all(b"\r\n")?;
    let mut all = vec![];
    s.read_to_end(&mut all)?;
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {} bytes", all.len())))?;
    Ok(all[split + 4..].to_vec())
}

/// `limits.idleTimeout`: a tunnel that carries nothing either way is closed by the service after
/// its timeout (direct), or by a relay after the relay's (multi-hop), each counted in that
/// node's `beam status`; a slow request that keeps moving outlives both timeouts and gets its
/// whole answer.
#[test]
fn idle_tunnels_are_closed_and_moving_ones_are_not() {
    let body = Arc::new(body_of(64 << 10, 17));
    let want = sha256(&body);
    let http = HttpServer::start(body.clone());
    let cfg_dir = TempDir::new("configs");
    let write = |name: &str, secs: u32| {
        let p = cfg_dir.0.join(name);
        std::fs::write(&p, format!("[limits]\nidleTimeout = {secs}\n")).expect("write config");
        p.to_str().expect("utf-8").to_string()
    };
    let (relay_cfg, service_cfg) = (write("relay.toml", 2), write("service.toml", 4));
    let net = network_with(2, &["--config", &relay_cfg]);
    let sdir = TempDir::new("service");
    let (_svc, _) = service_with(
        &net,
        http.port,
        "sleepy",
        &sdir,
        &["--config", &service_cfg],
    );
    let ddir = TempDir::new("direct");
    let (_direct, dport, _) = connect(&net, "sleepy", "direct", &ddir);
    let mdir = TempDir::new("multihop");
    let (_multi, mport, _) = connect(&net, "sleepy", "multi-hop", &mdir);
    // Both routes work (and the records and connections are warm).
    assert_eq!(sha256(&http_get_retry(dport, T).body), want);
    assert_eq!(sha256(&http_get_retry(mport, T).body), want);
    let closed_by = |dirs: &[&TempDir]| -> u64 {
        dirs.iter()
            .map(|d| json_u64(&status_json(d), "idle_closed").expect("idle_closed"))
            .sum()
    };
    let relay_dirs: Vec<&TempDir> = net.dirs.iter().collect();

    // Trickling requests on both routes, each lasting past both timeouts.
    let trickle = |port: u16| {
        std::thread::spawn(move || {
            trickled_get(port, Duration::from_millis(500), Duration::from_secs(6))
        })
    };
    let (td, tm) = (trickle(dport), trickle(mport));

    let direct = idle_close_after(dport, Duration::from_secs(20));
    let multi = idle_close_after(mport, Duration::from_secs(20));
    eprintln!(
        "idle: direct closed after {direct:?} (service 4 s), multi-hop after {multi:?} (relays 2 s)"
    );
    let direct = direct.expect("the direct idle tunnel was never closed");
    let multi = multi.expect("the multi-hop idle tunnel was never closed");
    assert!(
        direct >= Duration::from_secs(4),
        "closed before the service's timeout: {direct:?}"
    );
    assert!(
        multi >= Duration::from_secs(2),
        "closed before the relays' timeout: {multi:?}"
    );

    for (route, t) in [("direct", td), ("multi-hop", tm)] {
        let got = t
            .join()
            .expect("trickle thread")
            .unwrap_or_else(|e| panic!("the {route} request that kept moving failed: {e}"));
        assert_eq!(sha256(&got), want, "the {route} trickled request's body");
    }
    assert_eq!(
        closed_by(&[&sdir]),
        1,
        "the service closed the direct idle tunnel only"
    );
    assert!(
        closed_by(&relay_dirs) >= 1,
        "a relay closed the multi-hop idle circuit"
    );
}
