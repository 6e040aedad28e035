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

#[test]
fn seeds_run_each_scenario_with_consecutive_seeds_and_summarize_them() {
    let dir = std::env::temp_dir().join(format!("sim-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (rows, summary) = (dir.join("rows.csv"), dir.join("summary.csv"));
    let scenario = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scenarios/ci/100-direct.toml"
    );
    let (ok, _, err) = sim(&[
        scenario,
        "--seeds",
        "2",
        "--out",
        rows.to_str().expect("utf-8"),
        "--summary",
        summary.to_str().expect("utf-8"),
    ]);
    assert!(ok, "{err}");
    let rows = std::fs::read_to_string(&rows).expect("rows");
    let mut lines = rows.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).expect(name);
    let (seed, p50) = (col("seed"), col("latency_p50_ms"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 2, "one row per seed");
    let seeds: Vec<u64> = rows
        .iter()
        .map(|r| r[seed].parse().expect("seed"))
        .collect();
    assert_eq!(seeds[1], seeds[0] + 1, "consecutive seeds");
    let mean: f64 = rows
        .iter()
        .map(|r| r[p50].parse::<f64>().expect("p50"))
        .sum::<f64>()
        / 2.0;
    let summary = std::fs::read_to_string(&summary).expect("summary");
    let mut lines = summary.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let line: Vec<&str> = lines.next().expect("one summary row").split(',').collect();
    let at = |name: &str| line[header.iter().position(|h| *h == name).expect(name)];
    assert_eq!(at("seeds"), "2");
    let got: f64 = at("latency_p50_ms_mean").parse().expect("mean");
    assert!(
        (got - mean).abs() < 0.01,
        "summary mean {got}, rows' mean {mean}"
    );
    let (lo, hi): (f64, f64) = (
        at("latency_p50_ms_lo95").parse().expect("lo"),
        at("latency_p50_ms_hi95").parse().expect("hi"),
    );
    assert!(lo <= got && got <= hi, "{lo} <= {got} <= {hi}");
    assert!(err.contains("over 2 seeds"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
