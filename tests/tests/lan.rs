//! A LAN with no bootstrap peer: two network namespaces on one veth link (10.88.0.0/24). The
//! service starts a network of one; the client, given no `--bootstrap`, finds it by mDNS, joins,
//! resolves the name, and fetches the body through the tunnel.
//!
//! Needs root, `ip` and `nft` (as the NAT test); in CI (`CI=true`) their absence fails it.

use std::time::Duration;

use beam_e2e::netns::{exec, have_privileges, helper, helper_output, json_field, sh};
use beam_e2e::{Beam, TempDir, body_of, sha256};

const T: Duration = Duration::from_secs(60);

/// Two namespaces and their link; removed when dropped.
struct Lan {
    a: String,
    b: String,
}

impl Lan {
    fn build() -> Lan {
        let id = format!("bl{}", std::process::id() % 100_000);
        let lan = Lan {
            a: format!("{id}a"),
            b: format!("{id}b"),
        };
        lan.teardown();
        for ns in [&lan.a, &lan.b] {
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let (va, vb) = (format!("{id}va"), format!("{id}vb"));
        sh(&[
            "ip", "link", "add", &va, "type", "veth", "peer", "name", &vb,
        ]);
        for (dev, ns, ip) in [(&va, &lan.a, "10.88.0.1/24"), (&vb, &lan.b, "10.88.0.2/24")] {
            sh(&["ip", "link", "set", dev, "netns", ns]);
            sh(&["ip", "-n", ns, "addr", "add", ip, "dev", dev]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up", "multicast", "on"]);
            sh(&["ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", dev]);
        }
        lan
    }

    fn teardown(&self) {
        for ns in [&self.a, &self.b] {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        self.teardown();
    }
}

#[test]
fn on_a_lan_a_client_finds_the_service_by_mdns_with_no_bootstrap_peer() {
    if !have_privileges("LAN (mDNS)") {
        return;
    }
    let lan = Lan::build();
    let www = TempDir::new("lan-www");
    let body = body_of(2 << 20, 21);
    std::fs::write(www.0.join("body.bin"), &body).expect("write body");
    let _http = helper(&lan.a, &["serve", www.path(), "8080"]);
    let mdns = [("BEAM_TEST_MDNS", "1")];
    let (ea, eb) = (exec(&lan.a), exec(&lan.b));
    let ea: Vec<&str> = ea.iter().map(String::as_str).collect();
    let eb: Vec<&str> = eb.iter().map(String::as_str).collect();

    let sdir = TempDir::new("lan-svc");
    let mut svc = Beam::start_in_env(
        &ea,
        "service",
        &[
            "8080",
            "--name",
            "lanpage",
            "--listen",
            "/ip4/10.88.0.1/tcp/0",
            "--state-dir",
            sdir.path(),
        ],
        &mdns,
    );
    svc.wait_for("started a new network", T);
    svc.wait_for("published name lanpage", T);

    let cdir = TempDir::new("lan-client");
    let mut client = Beam::start_in_env(
        &eb,
        "client",
        &[
            "connect",
            "lanpage",
            "--port",
            "9000",
            "--listen",
            "/ip4/10.88.0.2/tcp/0",
            "--state-dir",
            cdir.path(),
        ],
        &mdns,
    );
    let found = client.wait_for("found ", T);
    assert!(found.contains("on the local network (mDNS)"), "{found}");
    client.wait_for("listening on 127.0.0.1:9000", T);
    let got = helper_output(&lan.b, &["fetch", "9000", "/body.bin", "60"]);
    assert_eq!(
        json_field(&got, "sha256"),
        Some(sha256(&body).as_str()),
        "the body over the LAN: {got}\n{}",
        client.dump()
    );
    eprintln!("LAN by mDNS, no --bootstrap: `{found}`; fetch {got}");
}
