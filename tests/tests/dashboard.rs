//! Seeing where the peers are: nodes declare a `--location`, `beam network peers --geo` names
//! each peer's region, and `beam network dashboard` — driven in tmux, 80×24 — draws them on its
//! world map with the route a multi-hop tunnel takes, and quits on `q`.
//!
//! Needs `tmux`; in CI (`CI=true`) a missing tmux fails the test (`.ci/run` installs it).

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use beam_e2e::{Beam, HttpServer, TempDir, beam_bin, free_port, http_get_retry, listen_addr};

const T: Duration = Duration::from_secs(30);
const LOOPBACK: &str = "/ip4/127.0.0.1/tcp/0";

fn have_tmux() -> bool {
    let ok = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "tmux is missing: in CI the dashboard test must run (.ci/run installs tmux)"
        );
        eprintln!("SKIPPED: the dashboard test needs tmux (apt-get install tmux; it runs in CI)");
    }
    ok
}

/// A tmux server of this test's own (its socket name), so nothing else's sessions are touched.
struct Tmux(String);

impl Tmux {
    /// Runs a tmux command on this test's server, which reads no user configuration
    /// (`-f /dev/null`); a command tmux refuses fails the test.
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-f", "/dev/null", "-L"])
            .arg(&self.0)
            .args(args)
            .output()
            .expect("run tmux");
        assert!(
            out.status.success() || args == ["kill-server"],
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "dash"])
    }

    /// Waits until the screen satisfies `ok`; returns it (or the last one, after `timeout`).
    fn wait_screen(&self, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.screen();
            if ok(&s) || Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
}

fn node(label: &str, dir: &TempDir, boot: &str, location: &str) -> Beam {
    let mut b = Beam::start(
        label,
        &[
            "node",
            "--p2p-routing",
            "--listen",
            LOOPBACK,
            "--bootstrap",
            boot,
            "--location",
            location,
            "--state-dir",
            dir.path(),
        ],
    );
    b.wait_for("joined the network", T);
    b
}

#[test]
fn the_dashboard_draws_the_peers_where_they_said_they_are_and_q_quits() {
    if !have_tmux() {
        return;
    }
    // Frankfurt (by city name), Tokyo and Sao Paulo (by coordinates), a service in New York
    // (a negative longitude given as a flag value), and a client that declares nothing.
    let d_boot = TempDir::new("geo-boot");
    let mut boot = Beam::start(
        "boot",
        &[
            "node",
            "--p2p-full",
            "--listen",
            LOOPBACK,
            "--location",
            "Frankfurt",
            "--state-dir",
            d_boot.path(),
        ],
    );
    let boot_addr = listen_addr(&boot.wait_for("listening ", T));
    let (d_r1, d_r2) = (TempDir::new("geo-tokyo"), TempDir::new("geo-saopaulo"));
    let _r1 = node("tokyo", &d_r1, &boot_addr, "35.68,139.69");
    let _r2 = node("saopaulo", &d_r2, &boot_addr, "-23.55,-46.63");
    let origin = HttpServer::start(Arc::new(b"hello from new york".to_vec()));
    let d_svc = TempDir::new("geo-service");
    let port = origin.port.to_string();
    let mut svc = Beam::start(
        "service",
        &[
            port.as_str(),
            "--name",
            "geo",
            "--listen",
            LOOPBACK,
            "--bootstrap",
            &boot_addr,
            "--location",
            "40.71,-74.01",
            "--state-dir",
            d_svc.path(),
        ],
    );
    svc.wait_for("published name geo", T);
    let d_cli = TempDir::new("geo-client");
    let local = free_port();
    let mut client = Beam::start(
        "client",
        &[
            "connect",
            "geo",
            "--port",
            &local.to_string(),
            "--strategy",
            "multi-hop",
            "--bootstrap",
            &boot_addr,
            "--listen",
            LOOPBACK,
            "--state-dir",
            d_cli.path(),
        ],
    );
    client.wait_for("listening on 127.0.0.1", T);
    assert_eq!(http_get_retry(local, T).body, b"hello from new york");

    // `network peers --geo` on the service: every peer that declared a place has its region.
    let deadline = Instant::now() + T;
    let geo = loop {
        let out = Command::new(beam_bin())
            .args(["--state-dir", d_svc.path(), "network", "peers", "--geo"])
            .output()
            .expect("beam network peers --geo");
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let placed = ["near Frankfurt", "near Tokyo", "near Sao Paulo"]
            .iter()
            .all(|r| text.contains(r));
        if placed || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    eprintln!("{geo}");
    for region in [
        "Europe (near Frankfurt)",
        "Asia (near Tokyo)",
        "South America (near Sao Paulo)",
    ] {
        assert!(geo.contains(region), "{region} missing:\n{geo}");
    }
    // The boot node sees the client too, which declared nothing.
    let out = Command::new(beam_bin())
        .args([
            "--state-dir",
            d_boot.path(),
            "network",
            "peers",
            "--geo",
            "--json",
        ])
        .output()
        .expect("beam network peers --geo --json");
    let peers: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let undeclared = peers
        .as_array()
        .expect("a list")
        .iter()
        .filter(|p| p["location"].is_null() && p["region"].is_null())
        .count();
    assert!(undeclared >= 1, "the client declared nothing:\n{peers:#}");
    let status = Command::new(beam_bin())
        .args(["--state-dir", d_svc.path(), "status", "--json"])
        .output()
        .expect("beam status");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json");
    assert_eq!(
        status["p2p"]["region"], "North America (near New York)",
        "{status}"
    );

    // The dashboard of the client, whose tunnel runs through two of the placed relays. A
    // request is held half sent, so the route is live while the screen is read.
    let mut held = std::net::TcpStream::connect(("127.0.0.1", local)).expect("connect");
    std::io::Write::write_all(&mut held, b"GET / HTTP/1.1\r\n").expect("half a request");
    let tmux = Tmux(format!("beam-test-{}", std::process::id()));
    let cmd = format!(
        "{} --state-dir {} network dashboard; echo \"dashboard exited $?\"; sleep 60",
        beam_bin().display(),
        d_cli.path()
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "dash",
        "-x",
        "80",
        "-y",
        "24",
        &cmd,
    ]);
    // No status line: the pane is the whole 80×24 window.
    tmux.run(&["set-option", "-t", "dash", "status", "off"]);
    let size = tmux.run(&[
        "display-message",
        "-p",
        "-t",
        "dash",
        "#{pane_width}x#{pane_height}",
    ]);
    assert_eq!(size.trim(), "80x24", "the pane the dashboard draws in");
    // Three places on the client's map (the client's peers are the boot node and whichever
    // relays it holds connections to; the service is reached through them): wait for the
    // dots the peer list says are placed.
    let screen = tmux.wait_screen(T, |s| s.contains("peers placed") && s.contains("1 open"));
    eprintln!("{screen}");
    let placed: usize = screen
        .split(" of ")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `N of M peers placed` title:\n{screen}"));
    assert!(
        placed >= 2,
        "at least the boot node and a relay are placed:\n{screen}"
    );
    // Each placed peer: a dot on the map and one in the peer list.
    assert!(
        screen.matches('●').count() >= 2 * placed,
        "{placed} peers placed but not all drawn:\n{screen}"
    );
    let braille = screen
        .chars()
        .filter(|c| ('\u{2801}'..='\u{28ff}').contains(c))
        .count();
    assert!(
        braille > 100,
        "no world map drawn ({braille} braille cells):\n{screen}"
    );
    assert!(screen.contains("Frankfurt"), "{screen}");
    assert!(
        screen.contains("multi-hop via") && screen.contains("1 open"),
        "the inspector pane, with the held tunnel open:\n{screen}"
    );

    tmux.run(&["send-keys", "-t", "dash", "q"]);
    let after = tmux.wait_screen(Duration::from_secs(10), |s| s.contains("dashboard exited"));
    assert!(
        after.contains("dashboard exited 0"),
        "q did not quit:\n{after}"
    );
    drop(held);
    boot.kill();
}

/// `beam network stats`: a node sampling every second (history.sampleSeconds = 1) has two
/// points after two samples, with the peers it had; the history outlives the node.
#[test]
fn the_node_keeps_a_history_and_stats_shows_it() {
    let d_boot = TempDir::new("hist-boot");
    let mut boot = Beam::start(
        "boot",
        &[
            "node",
            "--p2p-full",
            "--listen",
            LOOPBACK,
            "--state-dir",
            d_boot.path(),
        ],
    );
    let boot_addr = listen_addr(&boot.wait_for("listening ", T));
    let d = TempDir::new("hist-node");
    let config = d.0.join("config.toml");
    std::fs::write(&config, "[history]\nsampleSeconds = 1\n").expect("write config");
    let config = config.to_str().expect("utf-8").to_string();
    let mut node = Beam::start_env(
        "node",
        &[
            "node",
            "--p2p-routing",
            "--listen",
            LOOPBACK,
            "--bootstrap",
            &boot_addr,
            "--state-dir",
            d.path(),
        ],
        &[("BEAM_CONFIG", &config)],
    );
    node.wait_for("joined the network", T);
    let stats = |json: bool| {
        let mut args = vec![
            "--state-dir",
            d.path(),
            "network",
            "stats",
            "--period",
            "24h",
        ];
        if json {
            args.push("--json");
        }
        let out = Command::new(beam_bin())
            .args(&args)
            .env("BEAM_CONFIG", &config)
            .output()
            .expect("beam network stats");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let deadline = Instant::now() + T;
    let samples = loop {
        let v: serde_json::Value = serde_json::from_str(&stats(true)).expect("json");
        let samples = v["samples"].as_array().cloned().unwrap_or_default();
        if samples.len() >= 2 || Instant::now() > deadline {
            assert_eq!(v["period_s"], 86_400);
            break samples;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    node.kill();
    assert!(samples.len() >= 2, "{samples:?}");
    let (a, b) = (&samples[0], &samples[1]);
    assert!(b["t"].as_i64() > a["t"].as_i64(), "{samples:?}");
    // The first sample may come before the join under load; the last is after it.
    let last = samples.last().expect("two samples");
    assert!(
        last["peers"].as_u64() >= Some(1),
        "the node was connected to boot: {last}"
    );
    // The node is gone; its history is not.
    let text = stats(false);
    eprintln!("{text}");
    let n = text
        .lines()
        .find(|l| l.contains("samples over the last"))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("no summary line:\n{text}"));
    assert!(n >= samples.len(), "{text}");
    let bad = Command::new(beam_bin())
        .args([
            "--state-dir",
            d.path(),
            "network",
            "stats",
            "--period",
            "banana",
        ])
        .env("BEAM_CONFIG", &config)
        .output()
        .expect("beam network stats");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("24h"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    boot.kill();
}
