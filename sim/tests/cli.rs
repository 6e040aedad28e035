//! The `sim` command line, run as a user would.

use std::process::Command;

fn sim(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sim"))
        .args(args)
        .output()
        .expect("run sim");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn latency_takes_points_with_a_negative_latitude() {
    // Dublin to Sydney: the second point starts with `-`, which must not be read as a flag.
    let (ok, out, err) = sim(&["latency", "53.3,-6.3", "-33.9,151.2"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("median RTT "), "{out}");
    let (ok, first, err) = sim(&["latency", "-33.9,151.2", "53.3,-6.3"]);
    assert!(ok, "{err}");
    assert_eq!(first, out, "the model is symmetric");
    // Something that is not a point is still refused, with what a point looks like.
    let (ok, _, err) = sim(&["latency", "-x", "Dublin"]);
    assert!(!ok);
    assert!(err.contains("expected LAT,LON"), "{err}");
}
