//! A host that opens connections to a service's libp2p port as fast as it can and never
//! finishes a handshake (the cheapest flood there is: no key, no protocol). The flooder is in
//! its own network namespace, as the other host it would be (its closed sockets' TIME-WAIT
//! states stay in its own kernel); the service runs with the common 1,024 open-file limit, hard
//! and soft, so it cannot raise it. Its other clients — one already connected, one arriving
//! during the flood — keep working; the connected one's p99 at most doubles against a control
//! (the same script as fast against a closed port in its own namespace: its CPU, no connections).
//!
//! Needs root, `ip` and `nft` (as the NAT test); in CI (`CI=true`) their absence fails it.

use std::sync::Arc;
use std::time::Duration;

use beam_e2e::netns::{exec, have_privileges, sh};
use beam_e2e::{
    Beam, HttpServer, TempDir, body_of, free_port, http_get_retry, json_u64, latencies,
    listen_addr, percentile, sha256, status_json,
};

const T: Duration = Duration::from_secs(30);
const FLOODER: &str = "10.99.0.2";
const SERVICE_SIDE: &str = "10.99.0.1";

/// The flooder's namespace and its link to this one; removed when dropped.
struct Link {
    ns: String,
    dev: String,
}

impl Link {
    fn build() -> Self {
        let id = std::process::id() % 100_000;
        let l = Link {
            ns: format!("bfl{id}"),
            dev: format!("bfl{id}a"),
        };
        l.teardown();
        let peer = format!("bfl{id}b");
        sh(&["ip", "netns", "add", &l.ns]);
        sh(&["ip", "-n", &l.ns, "link", "set", "lo", "up"]);
        sh(&[
            "ip", "link", "add", &l.dev, "type", "veth", "peer", "name", &peer,
        ]);
        sh(&["ip", "link", "set", &peer, "netns", &l.ns]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{SERVICE_SIDE}/24"),
            "dev",
            &l.dev,
        ]);
        sh(&["ip", "link", "set", &l.dev, "up"]);
        sh(&[
            "ip",
            "-n",
            &l.ns,
            "addr",
            "add",
            &format!("{FLOODER}/24"),
            "dev",
            &peer,
        ]);
        sh(&["ip", "-n", &l.ns, "link", "set", &peer, "up"]);
        l
    }

    fn teardown(&self) {
        let quiet = |a: &[&str]| {
            let _ = std::process::Command::new(a[0])
                .args(&a[1..])
                .stderr(std::process::Stdio::null())
                .status();
        };
        quiet(&["ip", "link", "del", &self.dev]);
        quiet(&["ip", "netns", "del", &self.ns]);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Opens TCP connections to argv[1]:argv[2] for argv[3] seconds as fast as it can, holding the
/// newest 4,000 (never sending a byte); prints how many it opened and how many failed.
const FLOOD: &str = r#"
import socket, sys, time
held, end, opened, failed = [], time.time() + float(sys.argv[3]), 0, 0
while time.time() < end:
    try:
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)
        held.append(s)
        opened += 1
        if len(held) > 4000:
            held.pop(0).close()
    except OSError:
        failed += 1
print(opened, failed, flush=True)
"#;

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn a_flood_of_half_open_connections_leaves_other_clients_working() {
    if !have_privileges("connection flood") {
        return;
    }
    let link = Link::build();
    let body = Arc::new(body_of(16 << 10, 19));
    let want = sha256(&body);
    let http = HttpServer::start(body.clone());

    let bdir = TempDir::new("boot");
    let mut boot = Beam::start(
        "boot",
        &[
            "node",
            "--p2p-full",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--state-dir",
            bdir.path(),
        ],
    );
    let boot_addr = listen_addr(&boot.wait_for("listening ", T));
    let sdir = TempDir::new("service");
    let side = format!("/ip4/{SERVICE_SIDE}/tcp/0");
    let port = http.port.to_string();
    let mut svc = Beam::start_in(
        &["prlimit", "--nofile=1024:1024"],
        "service",
        &[
            &port,
            "--name",
            "besieged",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--listen",
            &side,
            "--bootstrap",
            &boot_addr,
            "--state-dir",
            sdir.path(),
        ],
    );
    svc.wait_for("published name besieged", T);
    let exposed = svc.wait_for(&format!("listening /ip4/{SERVICE_SIDE}/tcp/"), T);
    let svc_port = exposed
        .split("/tcp/")
        .nth(1)
        .and_then(|p| p.split('/').next())
        .expect("a port")
        .to_string();

    let connect = |label: &str, dir: &TempDir| {
        let port = free_port();
        let mut c = Beam::start(
            label,
            &[
                "connect",
                "besieged",
                "--port",
                &port.to_string(),
                "--bootstrap",
                &boot_addr,
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--state-dir",
                dir.path(),
            ],
        );
        c.wait_for("listening on 127.0.0.1", T);
        (c, port)
    };
    let vdir = TempDir::new("victim");
    let (victim, vport) = connect("victim", &vdir);
    http_get_retry(vport, T);
    let idle = latencies(vport, 200, &want, "baseline", &victim);
    let files_before = open_files(svc.pid());
    let ex = exec(&link.ns);
    let flood = |target: &str, port: &str, secs: &str| {
        std::process::Command::new(&ex[0])
            .args(&ex[1..])
            .args([
                "nice", "-n", "19", "python3", "-c", FLOOD, target, port, secs,
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the flood (python3)")
    };
    // The control: the same script, as fast, against a closed port in its own namespace. It
    // costs these two cores what the flood's host would spend, and the service nothing, so the
    // flood is judged by what its connections cost the service, not by its CPU here.
    let mut control = flood(FLOODER, "9", "60");
    std::thread::sleep(Duration::from_secs(2));
    let base = latencies(vport, 200, &want, "control", &victim);
    let _ = control.kill();
    let _ = control.wait();

    let flood = flood(SERVICE_SIDE, &svc_port, "25");
    std::thread::sleep(Duration::from_secs(3));
    let flooded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        latencies(vport, 200, &want, "under the flood", &victim)
    }))
    .unwrap_or_else(|_| panic!("service:\n{}", svc.dump()));
    let files_during = open_files(svc.pid());
    // A client arriving now: a new connection to the flooded service.
    let ndir = TempDir::new("newcomer");
    let started = std::time::Instant::now();
    let (_newcomer, nport) = connect("newcomer", &ndir);
    let got = http_get_retry(nport, T);
    let cold = started.elapsed();
    let st = status_json(&sdir);
    let out = flood.wait_with_output().expect("the flood ended");
    let (p50i, p99i) = (percentile(&idle, 0.5), percentile(&idle, 0.99));
    let (p50b, p99b) = (percentile(&base, 0.5), percentile(&base, 0.99));
    let (p50f, p99f) = (percentile(&flooded, 0.5), percentile(&flooded, 0.99));
    let refused = json_u64(&st, "handshakes_refused").expect("handshakes_refused");
    eprintln!(
        "half-open flood: flooder opened/failed {}; service refused {refused} handshakes, held \
         {files_before} -> {files_during} open files (limit 1024); the connected client's GETs \
         p50 {p50i:.1} idle, {p50b:.1} beside the control, {p50f:.1} ms under the flood; p99 \
         {p99i:.1}, {p99b:.1}, {p99f:.1} ms ({:.2}x the control); a newcomer's first GET {:.2} \
         s after it started",
        String::from_utf8_lossy(&out.stdout).trim(),
        p99f / p99b,
        cold.as_secs_f64()
    );
    assert_eq!(sha256(&got.body), want, "the newcomer's body");
    assert!(refused > 0, "the flood never hit limits.handshakes*: {st}");
    assert!(
        files_during < 512,
        "the flood held {files_during} of the service's 1024 open files"
    );
    assert!(
        p99f <= 2.0 * p99b,
        "the connected client's p99 rose from {p99b:.1} to {p99f:.1} ms"
    );
}
