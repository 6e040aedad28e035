//! Checking, repairing and reporting on a node: `beam network test`, `test-config`,
//! `test connectivity`, `restart`, `reset`, `diagnose` and `report-issue`, on loopback.

use std::io::Write as _;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use beam_e2e::{
    Beam, HttpServer, TempDir, beam_bin, free_port, http_get_retry, json_u64, listen_addr,
    status_json,
};

const T: Duration = Duration::from_secs(30);

fn beam(dir: &TempDir, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(beam_bin())
        .args(["--state-dir", dir.path(), "--allow-private-addrs"])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run beam")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A bootstrap node listening on `ip`.
fn boot(ip: &str) -> (Beam, String, TempDir) {
    let dir = TempDir::new("boot");
    let listen = format!("/ip4/{ip}/tcp/0");
    let mut b = Beam::start(
        "boot",
        &[
            "node",
            "--p2p-full",
            "--listen",
            &listen,
            "--state-dir",
            dir.path(),
        ],
    );
    let addr = listen_addr(&b.wait_for("listening ", T));
    (b, addr, dir)
}

fn wait_json(dir: &TempDir, what: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let s = status_json(dir);
        if ok(&s) || Instant::now() > deadline {
            assert!(ok(&s), "{what}: {s}");
            return s;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn restart_and_reset_rejoin_with_the_same_identity_and_keep_the_service() {
    let (_boot, boot_addr, _bd) = boot("127.0.0.1");
    let web = HttpServer::start(Arc::new(b"served".to_vec()));
    let sd = TempDir::new("svc");
    let port = web.port.to_string();
    let mut svc = Beam::start(
        "svc",
        &[
            &port,
            "--name",
            "repair",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--bootstrap",
            &boot_addr,
            "--state-dir",
            sd.path(),
        ],
    );
    svc.wait_for("published name repair", T);
    let before = status_json(&sd);
    let peer_id = |s: &str| {
        s.split("\"peer_id\":\"")
            .nth(1)
            .expect("peer_id")
            .split('"')
            .next()
            .expect("peer_id")
            .to_string()
    };

    // A tunnel held open (half a request): restart refuses without --force.
    let cd = TempDir::new("client");
    let local = free_port().to_string();
    let mut client = Beam::start(
        "client",
        &[
            "connect",
            "repair",
            "--port",
            &local,
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--bootstrap",
            &boot_addr,
            "--state-dir",
            cd.path(),
        ],
    );
    client.wait_for("listening on 127.0.0.1", T);
    assert_eq!(
        http_get_retry(local.parse().expect("port"), T).body,
        b"served"
    );
    let mut held = std::net::TcpStream::connect(("127.0.0.1", local.parse::<u16>().expect("port")))
        .expect("connect");
    held.write_all(b"GET / HTTP/1.1\r\n").expect("write");
    wait_json(&sd, "the held tunnel is open", T, |s| {
        json_u64(s, "tunnels_open") == Some(1)
    });
    let refused = beam(&sd, &["network", "restart"], &[]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused)
            .contains("1 tunnel connection is open and would be cut; run again with --force"),
        "{}",
        text(&refused)
    );
    drop(held);
    wait_json(&sd, "the held tunnel closed", T, |s| {
        json_u64(s, "tunnels_open") == Some(0)
    });

    // Restart: disconnected, rejoined, same identity, the routing table kept.
    let r = beam(&sd, &["network", "restart"], &[]);
    assert!(r.status.success(), "{}", text(&r));
    let out = text(&r);
    assert!(
        out.contains("joining again from 1 bootstrap peer") && out.contains("rejoined in"),
        "{out}"
    );
    let after = status_json(&sd);
    assert_eq!(peer_id(&after), peer_id(&before));

    // Reset --json: the table forgotten (its entries counted), rejoined.
    let r = beam(&sd, &["network", "reset", "--json"], &[]);
    assert!(r.status.success(), "{}", text(&r));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).expect("json");
    assert!(
        v["reconnected"]["disconnected"].as_u64().expect("number") >= 1,
        "{v}"
    );
    assert!(
        v["reconnected"]["forgotten"]["contacts"]
            .as_u64()
            .expect("number")
            >= 1,
        "{v}"
    );
    assert_eq!(v["rejoined"], true, "{v}");
    assert_eq!(peer_id(&status_json(&sd)), peer_id(&before));

    // The service is found again by a new client, by name, after the reset.
    let cd2 = TempDir::new("client2");
    let local2 = free_port().to_string();
    let mut client2 = Beam::start(
        "client2",
        &[
            "connect",
            "repair",
            "--port",
            &local2,
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--bootstrap",
            &boot_addr,
            "--state-dir",
            cd2.path(),
        ],
    );
    client2.wait_for("listening on 127.0.0.1", T);
    assert_eq!(
        http_get_retry(local2.parse().expect("port"), T).body,
        b"served"
    );
    // The first client's tunnel works again too (its route is planned anew).
    assert_eq!(
        http_get_retry(local.parse().expect("port"), T).body,
        b"served"
    );
    drop(client);
}

#[test]
fn test_config_dials_the_bootstrap_peers_and_refuses_a_bad_file() {
    let (_boot, boot_addr, _bd) = boot("127.0.0.1");
    let dir = TempDir::new("tester");
    let cfg = format!("{}/config.toml", dir.path());
    let env = [("BEAM_CONFIG", cfg.as_str())];
    // No file, the boot node given: both fine.
    let ok = beam(
        &dir,
        &["network", "test-config", "--bootstrap", &boot_addr],
        &env,
    );
    assert!(ok.status.success(), "{}", text(&ok));
    let out = text(&ok);
    assert!(out.contains("does not exist: the defaults apply"), "{out}");
    assert!(
        out.contains(&format!("ok   bootstrap {boot_addr}: answered in")),
        "{out}"
    );
    // The same address under another identity, and a closed port: both fail, exit 1.
    let other = Command::new(beam_bin())
        .args(["--state-dir", dir.path(), "id", "--json"])
        .output()
        .expect("run beam");
    let other: serde_json::Value = serde_json::from_slice(&other.stdout).expect("json");
    let libp2p_id = other["libp2p_id"].as_str().map(str::to_string);
    assert!(libp2p_id.is_some(), "{other}");
    let base = boot_addr.split("/p2p/").next().expect("addr");
    let closed = format!("/ip4/127.0.0.1/tcp/{}", free_port());
    let mut args = vec!["network", "test-config", "--json", "--bootstrap", &closed];
    let wrong;
    if let Some(id) = &libp2p_id {
        wrong = format!("{base}/p2p/{id}");
        args.extend(["--bootstrap", &wrong]);
    }
    let bad = beam(&dir, &args, &env);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    let v: serde_json::Value = serde_json::from_slice(&bad.stdout).expect("json");
    assert_eq!(v["ok"], false);
    let checks = v["checks"].as_array().expect("checks");
    assert_eq!(
        checks.len(),
        1 + args.iter().filter(|a| **a == "--bootstrap").count(),
        "{v}"
    );
    assert!(checks[1..].iter().all(|c| c["ok"] == false), "{v}");
    // A hand-edited file with a bad value: the check says which key and what it takes.
    std::fs::write(&cfg, "[p2p]\nmaxPeers = \"banana\"\n").expect("write");
    let bad = beam(&dir, &["network", "test-config"], &env);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(
        text(&bad).contains("FAIL config file") && text(&bad).contains("maxPeers"),
        "{}",
        text(&bad)
    );
    // `beam network test` with no node running: the running-node check fails.
    std::fs::remove_file(&cfg).expect("remove_file");
    let t = beam(&dir, &["network", "test", "--bootstrap", &boot_addr], &env);
    assert_eq!(t.status.code(), Some(1), "{}", text(&t));
    assert!(
        text(&t).contains("FAIL running node: no beam is running"),
        "{}",
        text(&t)
    );
}

#[test]
fn test_and_test_connectivity_read_the_running_node() {
    let (_boot, boot_addr, _bd) = boot("127.0.0.1");
    let web = HttpServer::start(Arc::new(b"x".to_vec()));
    let sd = TempDir::new("svc");
    let port = web.port.to_string();
    let mut svc = Beam::start(
        "svc",
        &[
            &port,
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
            "--bootstrap",
            &boot_addr,
            "--state-dir",
            sd.path(),
        ],
    );
    svc.wait_for("published service", T);
    // AutoNAT decides within seconds: the boot node dials the service back.
    let deadline = Instant::now() + T;
    let c = loop {
        let o = beam(&sd, &["network", "test", "connectivity", "--json"], &[]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        if v["reachability"] != "unknown" || Instant::now() > deadline {
            assert!(o.status.success(), "{}", text(&o));
            break v;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(c["reachability"], "public", "{c}");
    assert_eq!(c["mapping"], "none", "{c}");
    assert!(
        c["observed"]
            .as_object()
            .expect("observed")
            .keys()
            .any(|a| a.starts_with("/ip4/127.0.0.1/")),
        "{c}"
    );
    let human = beam(&sd, &["network", "test", "connectivity"], &[]);
    assert!(
        text(&human).contains("reachability:  public: peers dialled this node back"),
        "{}",
        text(&human)
    );
    let cfg = format!("{}/none.toml", sd.path());
    let t = beam(
        &sd,
        &["network", "test", "--bootstrap", &boot_addr],
        &[("BEAM_CONFIG", &cfg)],
    );
    assert!(t.status.success(), "{}", text(&t));
    let out = text(&t);
    for check in [
        "ok   running node",
        "ok   peers: 1 connected",
        "ok   DHT",
        "ok   reachability: public",
        "all 6 checks passed",
    ] {
        assert!(out.contains(check), "{check}: {out}");
    }
}

#[test]
fn diagnose_reports_versions_config_status_and_recent_warnings_without_secrets() {
    // The boot node on another loopback address than the service: its address is a peer's,
    // to be scrubbed; the service's own (127.0.0.1) stays.
    let (_boot, boot_addr, _bd) = boot("127.0.0.2");
    let web = HttpServer::start(Arc::new(b"x".to_vec()));
    let sd = TempDir::new("svc");
    let cfg = format!("{}/config.toml", sd.path());
    std::fs::write(&cfg, format!("[p2p]\nbootstrap = [\"{boot_addr}\"]\n")).expect("write");
    // A history database that cannot be opened: a warning the report must carry.
    std::fs::create_dir(format!("{}/history.sqlite", sd.path())).expect("create_dir");
    let port = web.port.to_string();
    let mut svc = Beam::start_env(
        "svc",
        &[
            &port,
            "--auth",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--state-dir",
            sd.path(),
        ],
        &[("BEAM_CONFIG", &cfg)],
    );
    svc.wait_for("published service", T);
    let out_file = format!("{}/report.txt", sd.path());
    let d = beam(
        &sd,
        &["network", "diagnose", "--output", &out_file],
        &[("BEAM_CONFIG", &cfg)],
    );
    assert!(d.status.success(), "{}", text(&d));
    assert!(text(&d).contains("wrote "), "{}", text(&d));
    let report = std::fs::read_to_string(&out_file).expect("read_to_string");
    for want in [
        "beam:            0.1.0",
        "p2p.maxPeers = ",
        "## The running node",
        "\"auth_required\": true",
        "/ip4/127.0.0.1/tcp/",
        "auth-token (",
        "identity.key (",
        "contents not included",
        "no history: cannot open its database",
        "p2p.bootstrap = [\"/ip4/[scrubbed]/tcp/",
    ] {
        assert!(report.contains(want), "{want} missing from\n{report}");
    }
    assert!(
        !report.contains("127.0.0.2"),
        "a peer's address in clear:\n{report}"
    );
    let token =
        std::fs::read_to_string(format!("{}/auth-token", sd.path())).expect("read_to_string");
    assert!(
        !report.contains(token.trim()),
        "the access token is in the report"
    );
    let key = std::fs::read(format!("{}/identity.key", sd.path())).expect("read");
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    assert!(!report.contains(&hex[..16]), "key bytes in the report");

    // report-issue: the text first, the same content after; nothing sent anywhere.
    let issue_file = format!("{}/issue.txt", sd.path());
    let r = beam(
        &sd,
        &[
            "network",
            "report-issue",
            "the tunnel drops after a minute",
            "-o",
            &issue_file,
        ],
        &[("BEAM_CONFIG", &cfg)],
    );
    assert!(r.status.success(), "{}", text(&r));
    assert!(text(&r).contains("nothing was sent"), "{}", text(&r));
    let issue = std::fs::read_to_string(&issue_file).expect("read_to_string");
    assert!(
        issue.contains("## The problem, as reported\n\nthe tunnel drops after a minute"),
        "{issue}"
    );
    assert!(
        issue.contains("no history: cannot open its database"),
        "{issue}"
    );
    let empty = beam(&sd, &["network", "report-issue", " "], &[]);
    assert_eq!(empty.status.code(), Some(1), "{}", text(&empty));

    // With the node gone the report is still written, and says so.
    drop(svc);
    let d = beam(
        &sd,
        &["network", "diagnose", "-o", "-"],
        &[("BEAM_CONFIG", &cfg)],
    );
    assert!(d.status.success(), "{}", text(&d));
    assert!(
        text(&d).contains("no beam is running with the state directory"),
        "{}",
        text(&d)
    );
}

#[test]
fn analyze_adds_up_the_peers_places_and_the_routes_taken() {
    let bd = TempDir::new("boot");
    let mut b = Beam::start(
        "boot",
        &[
            "node",
            "--p2p-full",
            "--location",
            "Frankfurt",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--state-dir",
            bd.path(),
        ],
    );
    let boot_addr = listen_addr(&b.wait_for("listening ", T));
    let mut relays = vec![];
    let mut dirs = vec![];
    for (i, place) in ["Tokyo", "Sao Paulo", ""].iter().enumerate() {
        let d = TempDir::new(&format!("relay{i}"));
        let mut args = vec![
            "node",
            "--p2p-routing",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--bootstrap",
            &boot_addr,
            "--state-dir",
            d.path(),
        ];
        if !place.is_empty() {
            args.extend(["--location", place]);
        }
        let mut r = Beam::start(&format!("relay{i}"), &args);
        r.wait_for("joined the network", T);
        relays.push(r);
        dirs.push(d);
    }
    let web = HttpServer::start(Arc::new(b"far".to_vec()));
    let sd = TempDir::new("svc");
    let port = web.port.to_string();
    let mut svc = Beam::start(
        "svc",
        &[
            &port,
            "--name",
            "far",
            "--location",
            "New York",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--bootstrap",
            &boot_addr,
            "--state-dir",
            sd.path(),
        ],
    );
    svc.wait_for("published name far", T);
    let cd = TempDir::new("client");
    let local = free_port();
    let mut c = Beam::start(
        "client",
        &[
            "connect",
            "far",
            "--strategy",
            "multi-hop",
            "--port",
            &local.to_string(),
            "--location",
            "-33.87,151.21",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--bootstrap",
            &boot_addr,
            "--state-dir",
            cd.path(),
        ],
    );
    c.wait_for("listening on 127.0.0.1", T);
    for _ in 0..3 {
        assert_eq!(http_get_retry(local, T).body, b"far");
    }
    c.wait_for("connection 3:", T);
    let o = beam(&cd, &["network", "analyze", "--json"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let g = &v["geography"];
    let connected = v["peers_connected"].as_u64().expect("peers");
    assert_eq!(
        g["declared"].as_u64().expect("declared") + g["undeclared"].as_u64().expect("undeclared"),
        connected,
        "{v}"
    );
    // The client's places: Sydney; the farthest pair among its peers is at least
    // Frankfurt–Tokyo's ~9,300 km if both are connected, and every region is one of the places.
    assert_eq!(g["here"][0].as_f64(), Some(-33.87), "{v}");
    for r in g["regions"].as_array().expect("regions") {
        assert!(
            ["Europe", "Asia", "South America", "North America"]
                .contains(&r["region"].as_str().expect("region")),
            "{v}"
        );
    }
    let e = &v["routing_efficiency"];
    assert_eq!(e["outgoing_connections"], 3, "{v}");
    assert_eq!(
        e["measured"].as_u64().expect("measured") + e["unmeasured"].as_u64().expect("unmeasured"),
        3,
        "{v}"
    );
    if let Some(m) = e["by_kind"]["multi-hop"]["median"].as_f64() {
        assert!(m.is_finite() && m > 0.0, "{v}");
    }
    let human = beam(&cd, &["network", "analyze"], &[]);
    assert!(
        text(&human).contains("routing efficiency:"),
        "{}",
        text(&human)
    );
    drop(relays);
}

#[test]
fn with_p2p_caching_a_client_keeps_the_records_it_resolved() {
    let (_boot, boot_addr, _bd) = boot("127.0.0.1");
    let web = HttpServer::start(Arc::new(b"cached".to_vec()));
    let sd = TempDir::new("svc");
    let port = web.port.to_string();
    let mut svc = Beam::start(
        "svc",
        &[
            &port,
            "--name",
            "popular",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--bootstrap",
            &boot_addr,
            "--state-dir",
            sd.path(),
        ],
    );
    svc.wait_for("published name popular", T);
    let mut clients = vec![];
    for caching in [true, false] {
        let cd = TempDir::new("client");
        let cfg = format!("{}/config.toml", cd.path());
        std::fs::write(&cfg, format!("[p2p]\ncaching = {caching}\n")).expect("write");
        let local = free_port();
        let mut c = Beam::start_env(
            "client",
            &[
                "connect",
                "popular",
                "--port",
                &local.to_string(),
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--bootstrap",
                &boot_addr,
                "--state-dir",
                cd.path(),
            ],
            &[("BEAM_CONFIG", &cfg)],
        );
        c.wait_for("listening on 127.0.0.1", T);
        assert_eq!(http_get_retry(local, T).body, b"cached");
        let s: serde_json::Value = serde_json::from_str(&status_json(&cd)).expect("json");
        let cache = &s["p2p"]["cache"];
        if caching {
            // The name record and the service record it led to.
            assert_eq!(cache["copies"], 2, "{s}");
            let human = beam(&cd, &["status"], &[]);
            assert!(
                text(&human).contains("cache:         2 records held (p2p.caching)"),
                "{}",
                text(&human)
            );
        } else {
            assert!(cache.is_null(), "{s}");
        }
        clients.push((c, cd));
    }
}

#[test]
fn optimize_ranks_the_routing_table_by_rtt_and_says_what_changed() {
    let (_boot, boot_addr, _bd) = boot("127.0.0.1");
    let mut relays = vec![];
    for i in 0..3 {
        let d = TempDir::new(&format!("relay{i}"));
        let mut r = Beam::start(
            &format!("relay{i}"),
            &[
                "node",
                "--p2p-routing",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--bootstrap",
                &boot_addr,
                "--state-dir",
                d.path(),
            ],
        );
        r.wait_for("joined the network", T);
        relays.push((r, d));
    }
    let nd = TempDir::new("node");
    let mut n = Beam::start(
        "node",
        &[
            "node",
            "--p2p-routing",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--bootstrap",
            &boot_addr,
            "--state-dir",
            nd.path(),
        ],
    );
    n.wait_for("joined the network", T);
    // Pings measure each connection's RTT once it is up.
    wait_json(&nd, "RTTs measured", T, |s| {
        s.contains("\"peer_rtt_p50_ms\":") && !s.contains("\"peer_rtt_p50_ms\":null")
    });
    for geo in [false, true] {
        let cmd = if geo { "optimize-geo" } else { "optimize" };
        let o = beam(&nd, &["network", cmd, "--json"], &[]);
        assert!(o.status.success(), "{}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        let entries = v["entries"].as_u64().expect("entries");
        assert!(entries >= 3, "{v}");
        assert!(v["ranked"].as_u64().expect("ranked") <= entries, "{v}");
        if !geo {
            assert!(
                v["ranked"].as_u64().expect("ranked") >= 1,
                "connected entries have a ping RTT: {v}"
            );
        }
        assert!(v["refreshing"].as_u64().expect("refreshing") >= 1, "{v}");
        for s in v["swaps"].as_array().expect("swaps") {
            let (into, out) = (s["into_ms"].as_f64(), s["out_ms"].as_f64());
            assert!(
                matches!((into, out), (Some(i), Some(o)) if i < o * 0.9),
                "{v}"
            );
        }
        let human = beam(&nd, &["network", cmd], &[]);
        assert!(
            text(&human).contains("routing-table entries by"),
            "{}",
            text(&human)
        );
    }
}
