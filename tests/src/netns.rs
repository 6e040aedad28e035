//! Network-namespace helpers shared by the NAT and LAN tests: the privilege check, running
//! commands, and the python helper (`tests/fixtures/netns.py`) inside a namespace.

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Whether this process may build namespaces (root, `ip`, `nft`). In CI (`CI=true`) their
/// absence fails the test; elsewhere the caller skips with a message naming `what`.
pub fn have_privileges(what: &str) -> bool {
    let ok = |c: &str, a: &[&str]| {
        Command::new(c)
            .args(a)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let ok = root && ok("ip", &["netns", "list"]) && ok("nft", &["--version"]);
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the {what} test needs root, `ip` (iproute2) and `nft` (nftables); .ci/run installs \
             them"
        );
        eprintln!("SKIPPED: the {what} test needs root, `ip` and `nft` (it runs in CI)");
    }
    ok
}

/// Runs a command; panics with its stderr when it fails.
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run a command");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ip netns exec NS`.
pub fn exec(ns: &str) -> [String; 4] {
    ["ip".into(), "netns".into(), "exec".into(), ns.into()]
}

/// A helper process (python) in a namespace, killed when dropped.
pub struct Helper(Child);

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The python helper's path.
pub fn script() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/netns.py")
        .display()
        .to_string()
}

/// Starts `netns.py ARGS` in namespace `ns`.
pub fn helper(ns: &str, args: &[&str]) -> Helper {
    let ex = exec(ns);
    Helper(
        Command::new(&ex[0])
            .args(&ex[1..])
            .arg("python3")
            .arg(script())
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn python3"),
    )
}

/// Runs `netns.py ARGS` in namespace `ns` and returns its stdout.
pub fn helper_output(ns: &str, args: &[&str]) -> String {
    let ex = exec(ns);
    let out = Command::new(&ex[0])
        .args(&ex[1..])
        .arg("python3")
        .arg(script())
        .args(args)
        .output()
        .expect("run python3");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A field of the helper's one-line JSON.
pub fn json_field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let i = json.find(&format!("\"{key}\": "))? + key.len() + 4;
    let rest = &json[i..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"'))
}
