//! Real NATs: Linux network namespaces with an nftables masquerade per NAT, built by the test.
//!
//! ```text
//!            ns P ("public"): bootstrap node + two relays, forwarding between its links
//!           10.77.1.1 /        \ 10.77.2.1
//!   ns R1 (NAT) 10.77.1.2    ns R2 (NAT) 10.77.2.2        masquerade out of the public link
//!   192.168.71.1 |             | 192.168.72.1
//!   ns H1 192.168.71.2        ns H2 192.168.72.2
//!   service (+ HTTP, echo)    client
//! ```
//!
//! Needs root, `ip` and `nft`. In CI (`CI=true`) their absence fails the test; elsewhere it is
//! skipped with a message.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use beam_e2e::netns::{have_privileges, helper, helper_output, json_field, script, sh};
use beam_e2e::{Beam, TempDir, body_of, sha256};

const T: Duration = Duration::from_secs(60);

/// The namespaces and links; removed when dropped.
struct Topology {
    id: String,
}

impl Topology {
    fn ns(&self, which: &str) -> String {
        format!("{}{which}", self.id)
    }

    fn build() -> Self {
        let id = format!("bm{}", std::process::id() % 100_000);
        let t = Topology { id: id.clone() };
        t.teardown();
        let [p, r1, r2, h1, h2] = ["p", "r1", "r2", "h1", "h2"].map(|w| t.ns(w));
        for ns in [&p, &r1, &r2, &h1, &h2] {
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let link = |a: &str, ns_a: &str, ip_a: &str, b: &str, ns_b: &str, ip_b: &str| {
            let (a, b) = (format!("{id}{a}"), format!("{id}{b}"));
            sh(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b]);
            for (dev, ns, ip) in [(&a, ns_a, ip_a), (&b, ns_b, ip_b)] {
                sh(&["ip", "link", "set", dev, "netns", ns]);
                sh(&["ip", "-n", ns, "addr", "add", ip, "dev", dev]);
                sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
            }
        };
        link("pa", &p, "10.77.1.1/24", "ra", &r1, "10.77.1.2/24");
        link("pb", &p, "10.77.2.1/24", "rb", &r2, "10.77.2.2/24");
        link("ia", &r1, "192.168.71.1/24", "ha", &h1, "192.168.71.2/24");
        link("ib", &r2, "192.168.72.1/24", "hb", &h2, "192.168.72.2/24");
        for ns in [&p, &r1, &r2] {
            sh(&[
                "ip",
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ]);
        }
        sh(&[
            "ip",
            "-n",
            &r1,
            "route",
            "add",
            "default",
            "via",
            "10.77.1.1",
        ]);
        sh(&[
            "ip",
            "-n",
            &r2,
            "route",
            "add",
            "default",
            "via",
            "10.77.2.1",
        ]);
        sh(&[
            "ip",
            "-n",
            &h1,
            "route",
            "add",
            "default",
            "via",
            "192.168.71.1",
        ]);
        sh(&[
            "ip",
            "-n",
            &h2,
            "route",
            "add",
            "default",
            "via",
            "192.168.72.1",
        ]);
        for (ns, out) in [(&r1, "ra"), (&r2, "rb")] {
            // A real masquerading NAT: outgoing connections get the router's address; nothing
            // comes in that the inside did not start, and unsolicited packets are dropped
            // silently (as home routers do), not answered with a reset.
            let rules = r#"
table ip nat {
  chain post {
    type nat hook postrouting priority 100; policy accept;
    oifname "OUT" masquerade
  }
}
table ip filter {
  chain forwarding {
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    oifname "OUT" accept
  }
  chain inbound {
    type filter hook input priority 0; policy accept;
    iifname "OUT" ct state new drop
  }
}
"#
            .replace("OUT", &format!("{id}{out}"));
            let f = std::env::temp_dir().join(format!("{id}-{out}.nft"));
            std::fs::write(&f, rules).expect("write nft rules");
            sh(&[
                "ip",
                "netns",
                "exec",
                ns,
                "nft",
                "-f",
                f.to_str().expect("path"),
            ]);
            let _ = std::fs::remove_file(f);
        }
        t
    }

    fn teardown(&self) {
        for w in ["p", "r1", "r2", "h1", "h2"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(w)])
                .stderr(Stdio::null())
                .status();
        }
    }

    fn exec(&self, ns: &str) -> [String; 4] {
        ["ip".into(), "netns".into(), "exec".into(), self.ns(ns)]
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.teardown();
    }
}

#[test]
fn a_service_behind_a_nat_is_reached_from_behind_another_through_a_relay() {
    if !have_privileges("NAT") {
        return;
    }
    let t = Topology::build();
    let www = TempDir::new("www");
    let body = body_of(8 << 20, 11);
    std::fs::write(www.0.join("body.bin"), &body).expect("write body");
    let want = sha256(&body);
    let _http = helper(&t.ns("h1"), &["serve", www.path(), "8080"]);
    let _echo = helper(&t.ns("h1"), &["echo-server", "7007"]);

    let ex = |ns: &str| t.exec(ns);
    let p = ex("p");
    let p: Vec<&str> = p.iter().map(String::as_str).collect();
    let dirs: Vec<TempDir> = (0..6).map(|i| TempDir::new(&format!("nat{i}"))).collect();
    let mut boot = Beam::start_in(
        &p,
        "boot",
        &[
            "node",
            "--p2p-full",
            "--listen",
            "/ip4/0.0.0.0/tcp/4001",
            "--listen",
            "/ip4/0.0.0.0/udp/4001/quic-v1",
            "--state-dir",
            dirs[0].path(),
        ],
    );
    boot.wait_for("listening /ip4/10.77.1.1/tcp/4001", T);
    let mut relays = vec![];
    for (i, port) in [(1, 4002), (2, 4003)] {
        let mut r = Beam::start_in(
            &p,
            &format!("relay{i}"),
            &[
                "node",
                "--p2p-routing",
                "--listen",
                &format!("/ip4/0.0.0.0/tcp/{port}"),
                "--listen",
                &format!("/ip4/0.0.0.0/udp/{port}/quic-v1"),
                "--bootstrap",
                "/ip4/10.77.1.1/tcp/4001",
                "--state-dir",
                dirs[i].path(),
            ],
        );
        r.wait_for("joined the network", T);
        relays.push(r);
    }
    let h1 = ex("h1");
    let h1: Vec<&str> = h1.iter().map(String::as_str).collect();
    let h2 = ex("h2");
    let h2: Vec<&str> = h2.iter().map(String::as_str).collect();
    let nat_listen = [
        "--listen",
        "/ip4/0.0.0.0/tcp/0",
        "--listen",
        "/ip4/0.0.0.0/udp/0/quic-v1",
    ];
    let mut svc = Beam::start_in(
        &h1,
        "service",
        &[
            &[
                "8080",
                "--name",
                "nat-http",
                "--bootstrap",
                "/ip4/10.77.1.1/tcp/4001",
            ][..],
            &nat_listen,
            &["--state-dir", dirs[3].path()],
        ]
        .concat(),
    );
    svc.wait_for("reachability: private", T);
    svc.wait_for("reserved on relay", T);
    let line = svc.wait_until(
        "published … through relays",
        |l| l.starts_with("published service record") && l.contains("through relays"),
        T,
    );
    let mut echo = Beam::start_in(
        &h1,
        "echo-service",
        &[
            &[
                "7007",
                "--name",
                "nat-echo",
                "--bootstrap",
                "/ip4/10.77.1.1/tcp/4001",
            ][..],
            &nat_listen,
            &["--state-dir", dirs[4].path()],
        ]
        .concat(),
    );
    echo.wait_for("reserved on relay", T);

    // A connection held for 3 minutes through the relay (relay v2's default limit is 2).
    let started = Instant::now();
    let mut echo_client = Beam::start_in(
        &h2,
        "echo-client",
        &[
            &[
                "connect",
                "nat-echo",
                "--port",
                "9001",
                "--wait",
                "60",
                "--bootstrap",
            ][..],
            &["/ip4/10.77.2.1/tcp/4001"],
            &nat_listen,
            &["--state-dir", dirs[5].path()],
        ]
        .concat(),
    );
    echo_client.wait_for("listening on 127.0.0.1:9001", T);
    // BEAM_NAT_HOLD_S shortens the hold for local debugging; CI holds the full 190 s.
    let hold_s = std::env::var("BEAM_NAT_HOLD_S").unwrap_or_else(|_| "190".into());
    let hold_ns = t.ns("h2");
    let hold = std::thread::spawn(move || {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &hold_ns,
                "python3",
                &script(),
                "hold",
                "9001",
                &hold_s,
                "30",
            ])
            .output()
            .expect("run the hold client");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    });

    // The HTTP service, from behind the other NAT.
    let cdir = TempDir::new("natclient");
    let t0 = Instant::now();
    let mut client = Beam::start_in(
        &h2,
        "client",
        &[
            &[
                "connect",
                "nat-http",
                "--port",
                "9000",
                "--wait",
                "60",
                "--bootstrap",
            ][..],
            &["/ip4/10.77.2.1/tcp/4001"],
            &nat_listen,
            &["--state-dir", cdir.path()],
        ]
        .concat(),
    );
    client.wait_for("listening on 127.0.0.1:9000", T);
    let until_fetch = t0.elapsed();
    let first = helper_output(&t.ns("h2"), &["fetch", "9000", "/body.bin", "60"]);
    let ttfb_ms: f64 = json_field(&first, "first_byte_ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    let to_first_byte = until_fetch + Duration::from_secs_f64(ttfb_ms.max(0.0) / 1e3);
    assert_eq!(
        json_field(&first, "sha256"),
        Some(want.as_str()),
        "{first}\n{}",
        client.dump()
    );
    let route = client.wait_for("connection 1:", T);
    assert!(
        route.contains("relayed via") || route.contains("hole-punched"),
        "{route}"
    );
    eprintln!(
        "NAT→NAT: `beam connect` start → first byte {:?} ({route}); fetch {first}; service: {line}",
        to_first_byte
    );
    // Later connections: after DCUtR they go direct, if the punch worked.
    std::thread::sleep(Duration::from_secs(2));
    let second = helper_output(&t.ns("h2"), &["fetch", "9000", "/body.bin", "60"]);
    assert_eq!(
        json_field(&second, "sha256"),
        Some(want.as_str()),
        "{second}"
    );
    let punched = client
        .seen
        .lock()
        .expect("lock")
        .iter()
        .any(|l| l.starts_with("hole punched"));
    let route2 = client.wait_for("connection 2:", T);
    eprintln!("NAT→NAT second connection: {route2}; DCUtR hole punch: {punched}; fetch {second}");

    // `beam network test connectivity` on both sides: private, the service reserved on a
    // relay, and the client's hole-punch count agrees with what it printed.
    let connectivity = |ns: &str, dir: &TempDir| -> serde_json::Value {
        let out = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(beam_e2e::beam_bin())
            .args([
                "--state-dir",
                dir.path(),
                "network",
                "test",
                "connectivity",
                "--json",
            ])
            .output()
            .expect("run beam network test connectivity");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    };
    let sc = connectivity(&t.ns("h1"), &dirs[3]);
    assert_eq!(sc["reachability"], "private", "{sc}");
    assert!(sc["reservations"].as_u64() >= Some(1), "{sc}");
    assert!(
        sc["observed"]
            .as_object()
            .is_some_and(|o| !o.is_empty() && o.keys().all(|a| a.starts_with("/ip4/10.77.1.2/"))),
        "peers see the service at its NAT's public address: {sc}"
    );
    // Masquerade maps each source port to one public port whatever the destination
    // (endpoint-independent): when two peers saw the same port it says so; when the ports it
    // has seen are all different (dials that did not reuse the listen port), it cannot tell.
    // It must never call this NAT symmetric.
    assert!(
        sc["mapping"] == "endpoint-independent" || sc["mapping"] == "unknown",
        "{sc}"
    );
    let cc = connectivity(&t.ns("h2"), &cdir);
    let punches = cc["hole_punches"]["succeeded"].as_u64().unwrap_or(0);
    assert_eq!(punches >= 1, punched, "{cc}");
    eprintln!("connectivity: service {sc}; client {cc}");

    eprintln!("{:.2} waiting for the hold", beam_e2e::since_start());
    let held = hold.join().expect("hold thread");
    assert_eq!(
        json_field(&held, "sent")
            .zip(json_field(&held, "echoed"))
            .map(|(a, b)| a == b),
        Some(true),
        "a connection held through the relay keeps echoing: {held}\n{}",
        echo_client.dump()
    );
    let echo_route = echo_client.wait_for("connection 1:", T);
    eprintln!("held: {held} ({echo_route}), after {:?}", started.elapsed());
    eprintln!("{:.2} test done", beam_e2e::since_start());
    drop(relays);
}
