//! `beam <PORT> --tor` on a private Tor network on loopback (Debian's `tor`: 3 authorities,
//! 5 relays, a C-tor client; see `beam_e2e::tornet`).
//!
//! One network, one test, in order:
//! 1. `beam <PORT> --tor --name …` prints `Tor URL: http://….onion`; a C-tor client fetches it
//!    through its SOCKS port (with retries: a new onion service takes a while to be findable)
//!    and gets the exact body; `beam tor status` measures it reachable.
//! 2. `beam connect <onion> --port X` serves the onion service on a local port (Arti client).
//! 3. Restarted with the same state directory, the service has the same `.onion`.
//! 4. Restricted discovery (step 5 in the code, before the fallback, which needs root): with
//!    a client authorized (`beam tor client add`), its C tor fetches the service and another C
//!    tor cannot find it.
//! 5. Fallback: with new connections to the service's P2P port refused (an nftables rule on
//!    the output hook, so root; skipped outside CI without it), `beam connect NAME` resolves
//!    the signed record over P2P, finds no P2P route, and reaches the service over Tor, saying so.
//!
//! Needs `tor` (and root for step 4). In CI (`CI=true`) a missing tool fails the test.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use beam_e2e::tornet::{self, TorNet};
use beam_e2e::{Beam, Fetched, HttpServer, TempDir, body_of, free_port, http_get, sha256};

/// Fetches `http://onion/` through the C-tor client until the body matches or `timeout` passes.
fn socks_fetch(net: &TorNet, onion: &str, want: &str, timeout: Duration) -> (Fetched, usize) {
    let deadline = Instant::now() + timeout;
    let mut tries = 0;
    loop {
        tries += 1;
        let err = match beam_e2e::socks_get(net.socks_port, onion, Duration::from_secs(30)) {
            Ok(f) if sha256(&f.body) == want => return (f, tries),
            Ok(f) => format!("wrong body ({} bytes)", f.body.len()),
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "no good answer from {onion} over C tor within {timeout:?} ({tries} tries; last: \
             {err})\n{}",
            net.logs()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// GET on a local port until the body matches or `timeout` passes.
fn local_fetch(port: u16, want: &str, timeout: Duration, who: &Beam) -> Fetched {
    let deadline = Instant::now() + timeout;
    loop {
        let err = match http_get(port, Duration::from_secs(60)) {
            Ok(f) if sha256(&f.body) == want => return f,
            Ok(f) => format!("wrong body ({} bytes)", f.body.len()),
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "no good answer on :{port} within {timeout:?} (last: {err})\n{}",
            who.dump()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn beam_output(args: &[&str]) -> (bool, String) {
    let out = Command::new(beam_e2e::beam_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run beam");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// New TCP connections to 127.0.0.1:`port` are refused while this lives (an nftables table of
/// its own, deleted when dropped).
struct Refuse {
    table: String,
}

impl Refuse {
    fn port(port: u16) -> Refuse {
        let table = format!("beam_tor_test_{}", std::process::id());
        let rules = format!(
            "table inet {table} {{\n chain out {{\n  type filter hook output priority 0;\n  \
             ip daddr 127.0.0.1 tcp dport {port} ct state new reject with tcp reset\n }}\n}}\n"
        );
        let file = std::env::temp_dir().join(format!("{table}.nft"));
        std::fs::write(&file, rules).expect("write nft rules");
        let out = Command::new("nft")
            .arg("-f")
            .arg(&file)
            .output()
            .expect("run nft");
        assert!(
            out.status.success(),
            "nft: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_file(file);
        Refuse { table }
    }
}

impl Drop for Refuse {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}

/// With no Tor network reachable, `--tor` gives up within `--tor-timeout` with a clear message,
/// and the P2P side keeps serving; an unreadable `BEAM_ARTI_CONFIG` is said so plainly. Needs no
/// `tor`: the network is one that does not exist.
#[test]
fn tor_unreachable_fails_in_bounded_time_and_p2p_keeps_working() {
    let dir = TempDir::new("tor-nowhere");
    let config = dir.0.join("arti.toml");
    std::fs::write(&config, tornet::unreachable_arti_toml()).expect("write arti.toml");
    let config = config.to_str().expect("utf-8").to_string();
    let body = Arc::new(body_of(20_000, 5));
    let want = sha256(&body);
    let http = HttpServer::start(body);
    let port = http.port.to_string();
    let sdir = TempDir::new("tor-nowhere-svc");
    let listen = format!("/ip4/127.0.0.1/tcp/{}", free_port());
    let started = Instant::now();
    let mut svc = Beam::start_env(
        "service",
        &[
            "--state-dir",
            sdir.path(),
            &port,
            "--tor",
            "--tor-timeout",
            "5",
            "--listen",
            &listen,
        ],
        &[("BEAM_ARTI_CONFIG", config.as_str())],
    );
    let line = svc.wait_stderr("Tor did not bootstrap within 5 s", Duration::from_secs(30));
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "gave up after {took:?}, not ~5 s"
    );
    assert!(line.contains("P2P side keeps running"), "{line}");
    assert!(svc.running(), "beam exited when Tor failed\n{}", svc.dump());
    let (ok, status) = beam_output(&["--state-dir", sdir.path(), "tor", "status"]);
    assert!(ok && status.contains("failed"), "{status}");
    // The P2P side still serves.
    let addr = beam_e2e::listen_addr(&svc.wait_for("listening", Duration::from_secs(10)));
    let id = svc.seen.lock().expect("lock")[0].clone();
    let cdir = TempDir::new("tor-nowhere-client");
    let local = free_port();
    let local_s = local.to_string();
    let client = Beam::start(
        "client",
        &[
            "--state-dir",
            cdir.path(),
            "connect",
            &id,
            "--bootstrap",
            &addr,
            "--port",
            &local_s,
            "--no-tor",
        ],
    );
    let f = local_fetch(local, &want, Duration::from_secs(30), &client);
    assert_eq!(sha256(&f.body), want);
    eprintln!(
        "Tor unreachable: gave up after {:.1} s (--tor-timeout 5); P2P fetch ok",
        took.as_secs_f64()
    );

    // A configuration file that is not one.
    let bad = dir.0.join("bad.toml");
    std::fs::write(&bad, "[tor_network\nthis is not toml").expect("write");
    let sdir2 = TempDir::new("tor-bad-config");
    let mut svc2 = Beam::start_env(
        "service-bad-config",
        &["--state-dir", sdir2.path(), &port, "--tor"],
        &[("BEAM_ARTI_CONFIG", bad.to_str().expect("utf-8"))],
    );
    let line = svc2.wait_stderr("is not an Arti configuration", Duration::from_secs(15));
    assert!(line.contains("bad.toml"), "{line}");
    assert!(svc2.running(), "beam exited on a bad Tor configuration");
}

#[test]
fn onion_service_on_a_private_tor_network() {
    if !tornet::available() {
        return;
    }
    let mut net = TorNet::start();
    let formed = net.wait_client(Duration::from_secs(150));
    eprintln!(
        "private Tor network: C-tor client bootstrapped {:.1} s after start",
        formed.as_secs_f64()
    );
    let arti_config = net.arti_config.to_str().expect("utf-8 path").to_string();
    let env = [("BEAM_ARTI_CONFIG", arti_config.as_str())];
    let body = Arc::new(body_of(300_000, 77));
    let want = sha256(&body);
    let http = HttpServer::start(body.clone());
    let port = http.port.to_string();

    // A bootstrap node for the P2P side.
    let boot_dir = TempDir::new("tor-boot");
    let mut boot = Beam::start(
        "boot",
        &[
            "--state-dir",
            boot_dir.path(),
            "node",
            "--listen",
            &format!("/ip4/127.0.0.1/tcp/{}", free_port()),
        ],
    );
    let boot_addr = beam_e2e::listen_addr(&boot.wait_for("listening", Duration::from_secs(30)));

    // 1. The onion service, fetched by C tor.
    let svc_dir = TempDir::new("tor-svc");
    let p2p_port = free_port();
    let p2p_listen = format!("/ip4/127.0.0.1/tcp/{p2p_port}");
    let svc_args = [
        "--state-dir",
        svc_dir.path(),
        port.as_str(),
        "--tor",
        "--name",
        "onionsvc",
        "--bootstrap",
        boot_addr.as_str(),
        "--listen",
        p2p_listen.as_str(),
    ];
    let started = Instant::now();
    let mut svc = Beam::start_env("service", &svc_args, &env);
    let url = svc.wait_for("Tor URL: http://", Duration::from_secs(90));
    let onion = url
        .trim_start_matches("Tor URL: http://")
        .trim()
        .to_string();
    assert!(
        onion.ends_with(".onion") && onion.len() == 62,
        "not a v3 onion address: {onion}"
    );
    let url_after = started.elapsed();
    let (fetched, tries) = socks_fetch(&net, &onion, &want, Duration::from_secs(120));
    let first_fetch = started.elapsed();
    eprintln!(
        "beam --tor: Tor URL after {:.2} s; first successful fetch by C tor {:.1} s after start \
         ({tries} tries; first byte of the good one {:.0} ms)",
        url_after.as_secs_f64(),
        first_fetch.as_secs_f64(),
        fetched.first_byte.as_secs_f64() * 1e3
    );
    let (ok, status) = beam_output(&["--state-dir", svc_dir.path(), "tor", "status", "--json"]);
    assert!(ok, "beam tor status failed: {status}");
    assert!(
        status.contains("\"reachable\":true,\"reachable_by\"") && status.contains(&onion),
        "beam tor status does not measure the service reachable: {status}"
    );
    assert!(
        status.contains("\"streams_total\":") && !status.contains("\"streams_total\":0"),
        "beam tor status counted no visitor: {status}"
    );
    // The visitor's stream is in the service's connection inspector, over Tor, with the
    // bytes it carried (the page went out).
    let (ok, conns) = beam_output(&[
        "--state-dir",
        svc_dir.path(),
        "status",
        "--connections",
        "--json",
    ]);
    assert!(ok, "beam status --connections failed: {conns}");
    let conns: serde_json::Value =
        serde_json::from_str(conns.lines().next().unwrap_or_default()).expect("json");
    assert!(
        conns
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["kind"] == "tor"
                && c["direction"] == "in"
                && c["bytes_out"].as_u64() >= Some(body.len() as u64))),
        "no Tor visitor in the inspector: {conns}"
    );
    let (ok, human) = beam_output(&["--state-dir", svc_dir.path(), "tor", "status"]);
    assert!(ok && human.contains("reachable:      yes"), "{human}");
    eprintln!("beam tor status:\n{human}");
    // `beam status` carries the Tor side's state too.
    let (ok, node) = beam_output(&["--state-dir", svc_dir.path(), "status", "--json"]);
    assert!(ok, "beam status failed: {node}");
    assert!(
        node.contains("\"tor\":{") && node.contains("\"state\":\"running\""),
        "beam status has no Tor state: {node}"
    );

    // 2. Any onion service, on a local port, through Arti's client.
    let cdir = TempDir::new("tor-onion-client");
    let local = free_port();
    let local_s = local.to_string();
    let mut oc = Beam::start_env(
        "onion-client",
        &[
            "--state-dir",
            cdir.path(),
            "connect",
            &onion,
            "--port",
            &local_s,
        ],
        &env,
    );
    oc.wait_for("listening on", Duration::from_secs(60));
    let t = Instant::now();
    let f = local_fetch(local, &want, Duration::from_secs(120), &oc);
    eprintln!(
        "beam connect <onion>: body ok, {:.1} s to a good answer (first byte {:.0} ms)",
        t.elapsed().as_secs_f64(),
        f.first_byte.as_secs_f64() * 1e3
    );
    drop(oc);

    // 3. Restart: the same .onion.
    svc.kill();
    let mut svc = Beam::start_env("service-again", &svc_args, &env);
    let again = svc.wait_for("Tor URL: http://", Duration::from_secs(90));
    assert_eq!(again, url, "the .onion changed across a restart");
    svc.wait_until(
        "published service record",
        |l| l.starts_with("published service record"),
        Duration::from_secs(60),
    );
    // The record carries the .onion once the onion service runs (a republish).
    std::thread::sleep(Duration::from_secs(2));

    // 5. Restricted discovery: with one client authorized, that client's tor fetches the
    // service and any other tor cannot even find it (extended SOCKS error 0xF4: the descriptor
    // needs client authorization). `--auth` with `--tor` is refused until the onion service is
    // restricted.
    let rdir = TempDir::new("tor-restricted");
    let rport = free_port();
    let rlisten = format!("/ip4/127.0.0.1/tcp/{rport}");
    let rargs = [
        "--state-dir",
        rdir.path(),
        port.as_str(),
        "--tor",
        "--auth",
        "--bootstrap",
        boot_addr.as_str(),
        "--listen",
        rlisten.as_str(),
    ];
    let (ok, said) = beam_output(&rargs);
    assert!(!ok && said.contains("beam tor client add"), "{said}");
    let (ok, added) = beam_output(&["--state-dir", rdir.path(), "tor", "client", "add", "alice"]);
    assert!(ok, "{added}");
    let private = added
        .lines()
        .find_map(|l| l.strip_prefix("private key for alice (give it to them only): "))
        .unwrap_or_else(|| panic!("no private key in {added}"))
        .to_string();
    let (ok, listed) = beam_output(&["--state-dir", rdir.path(), "tor", "client", "list"]);
    assert!(
        ok && listed.starts_with("alice  descriptor:x25519:"),
        "{listed}"
    );
    let t = Instant::now();
    let mut rsvc = Beam::start_env("restricted", &rargs, &env);
    let rurl = rsvc.wait_for("Tor URL: http://", Duration::from_secs(90));
    let ronion = rurl
        .trim_start_matches("Tor URL: http://")
        .trim()
        .to_string();
    rsvc.wait_for(
        "Tor: restricted discovery: only the 1 authorized",
        Duration::from_secs(10),
    );
    let host = ronion.trim_end_matches(".onion");
    std::fs::write(
        net.auth_dir.join("alice.auth_private"),
        format!("{host}:{private}\n"),
    )
    .expect("write the client key");
    net.reload_auth_client();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut tries = 0;
    let authorized = loop {
        tries += 1;
        match beam_e2e::socks_get(net.auth_socks_port, &ronion, Duration::from_secs(30)) {
            Ok(f) if sha256(&f.body) == want => break f,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "the authorized client never fetched {ronion} ({tries} tries; last: \
                     {other:?})\n{}",
                    net.logs()
                );
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    eprintln!(
        "restricted onion service: fetched by the authorized C-tor client {:.1} s after start \
         ({tries} tries; first byte {:.0} ms)",
        t.elapsed().as_secs_f64(),
        authorized.first_byte.as_secs_f64() * 1e3
    );
    // The other client: the descriptor is published (the authorized one just used it), but it
    // cannot read it.
    for _ in 0..2 {
        let err = beam_e2e::socks_get(net.socks_port, &ronion, Duration::from_secs(30))
            .expect_err("an unauthorized client reached a restricted onion service");
        assert!(
            err.to_string().contains("reply code 244"),
            "the unauthorized client failed, but not for lack of client authorization: {err}"
        );
    }
    let (ok, rstatus) = beam_output(&["--state-dir", rdir.path(), "tor", "status", "--json"]);
    assert!(
        ok && rstatus.contains("\"restricted_clients\":1"),
        "{rstatus}"
    );
    drop(rsvc);

    // 4. No P2P route: beam connect NAME falls back to Tor.
    if !beam_e2e::netns::have_privileges("Tor fallback") {
        return;
    }
    let _refuse = Refuse::port(p2p_port);
    let fdir = TempDir::new("tor-fallback-client");
    let local = free_port();
    let local_s = local.to_string();
    let t = Instant::now();
    let mut fc = Beam::start_env(
        "fallback-client",
        &[
            "--state-dir",
            fdir.path(),
            "connect",
            "onionsvc",
            "--bootstrap",
            &boot_addr,
            "--port",
            &local_s,
        ],
        &env,
    );
    let fb = fc.wait_for("fallback:", Duration::from_secs(60));
    assert!(fb.contains(&onion), "{fb}");
    fc.wait_for("listening on", Duration::from_secs(30));
    let f = local_fetch(local, &want, Duration::from_secs(120), &fc);
    let over = fc.wait_for("connection 1: over Tor", Duration::from_secs(5));
    eprintln!(
        "beam connect NAME with no P2P route: body ok over Tor, {:.1} s from start to the good \
         answer; `{over}`; first byte {:.0} ms after the request",
        t.elapsed().as_secs_f64(),
        f.first_byte.as_secs_f64() * 1e3
    );
    assert!(
        fc.seen
            .lock()
            .expect("lock")
            .iter()
            .any(|l| l.starts_with("connection 1: no P2P route")),
        "the client did not say the P2P route failed\n{}",
        fc.dump()
    );
    drop(boot);
}
