//! The CI gate: no change may lower simulated routing success.
//!
//! `sim gate scenarios/ci reports/baseline.csv` runs every scenario in the folder, compares
//! each row with the committed baseline row of the same scenario name, prints a table, and
//! fails when, for any scenario:
//! - `routing_success` or `lookup_success` dropped by more than [`MAX_DROP`] (0.2 percentage
//!   points);
//! - `routing_success` is below the scenario's own floor (`[gate] min_routing_success`);
//! - the scenario failed to run, or has no baseline row.
//!
//! A rise of `latency_p50_ms` over [`LATENCY_WARN`] (10 %) is a warning. `--update-baseline`
//! rewrites the baseline from this run: a deliberate act, whose commit says why.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::report::Row;
use crate::scenario::Scenario;

/// Largest allowed drop of a success rate, as a fraction (0.002 = 0.2 percentage points).
pub const MAX_DROP: f64 = 0.002;
/// Relative latency rise that is warned about.
pub const LATENCY_WARN: f64 = 0.10;

/// One scenario's verdict.
#[derive(Debug, Clone)]
pub struct Check {
    /// Scenario name.
    pub scenario: String,
    /// The baseline row, if any.
    pub baseline: Option<Row>,
    /// This run's row, or why it could not run.
    pub now: Result<Row, String>,
    /// Reasons for failure.
    pub failures: Vec<String>,
    /// Warnings.
    pub warnings: Vec<String>,
}

/// Compares one run with its baseline row and the scenario's floor.
pub fn check(
    scenario: &str,
    floor: Option<f64>,
    baseline: Option<&Row>,
    now: Result<Row, String>,
) -> Check {
    let mut failures = vec![];
    let mut warnings = vec![];
    match (&now, baseline) {
        (Err(e), _) => failures.push(format!("did not run: {e}")),
        (Ok(_), None) => failures.push(
            "no baseline row: run the gate with --update-baseline and commit the result".into(),
        ),
        (Ok(n), Some(b)) => {
            for (what, was, is) in [
                ("routing_success", b.routing_success, n.routing_success),
                ("lookup_success", b.lookup_success, n.lookup_success),
            ] {
                if is < was - MAX_DROP - 1e-12 {
                    failures.push(format!(
                        "{what} fell from {:.3} % to {:.3} % (more than {:.1} points)",
                        was * 100.0,
                        is * 100.0,
                        MAX_DROP * 100.0
                    ));
                }
            }
            if b.latency_p50_ms > 0.0 && n.latency_p50_ms > b.latency_p50_ms * (1.0 + LATENCY_WARN)
            {
                warnings.push(format!(
                    "latency_p50_ms rose from {:.1} to {:.1} ms",
                    b.latency_p50_ms, n.latency_p50_ms
                ));
            }
        }
    }
    if let (Ok(n), Some(floor)) = (&now, floor)
        && n.routing_success < floor
    {
        failures.push(format!(
            "routing_success {:.3} % is below the scenario's floor {:.3} % ([gate] min_routing_success)",
            n.routing_success * 100.0,
            floor * 100.0
        ));
    }
    Check {
        scenario: scenario.to_owned(),
        baseline: baseline.cloned(),
        now,
        failures,
        warnings,
    }
}

/// The scenario files of a gate folder, sorted by name.
pub fn scenario_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Runs the gate over `scenarios` (already loaded) with `run` producing each row.
pub fn run_gate(
    scenarios: &[(PathBuf, Result<Scenario, String>)],
    baseline: &[Row],
    mut run: impl FnMut(&Scenario) -> Result<Row, String>,
) -> Vec<Check> {
    scenarios
        .iter()
        .map(|(path, sc)| {
            let name = sc
                .as_ref()
                .map_or_else(|_| path.display().to_string(), |s| s.name.clone());
            let now = sc.as_ref().map_err(Clone::clone).and_then(&mut run);
            let floor = sc.as_ref().ok().and_then(|s| s.gate.min_routing_success);
            let base = baseline.iter().find(|r| r.scenario == name);
            check(&name, floor, base, now)
        })
        .collect()
}

/// The table printed by the gate.
pub fn table(checks: &[Check]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<28} {:>19} {:>19} {:>15} {:>13}  verdict",
        "scenario", "routing_success %", "lookup_success %", "latency_p50 ms", "stretch_p50"
    );
    let pair = |b: Option<f64>, n: Option<f64>, scale: f64, dec: usize| {
        let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{:.*}", dec, v * scale));
        format!("{}→{}", f(b), f(n))
    };
    for c in checks {
        let b = c.baseline.as_ref();
        let n = c.now.as_ref().ok();
        let verdict = if !c.failures.is_empty() {
            "FAIL"
        } else if !c.warnings.is_empty() {
            "warn"
        } else {
            "ok"
        };
        let _ = writeln!(
            out,
            "{:<28} {:>19} {:>19} {:>15} {:>13}  {verdict}",
            c.scenario,
            pair(
                b.map(|r| r.routing_success),
                n.map(|r| r.routing_success),
                100.0,
                2
            ),
            pair(
                b.map(|r| r.lookup_success),
                n.map(|r| r.lookup_success),
                100.0,
                2
            ),
            pair(
                b.map(|r| r.latency_p50_ms),
                n.map(|r| r.latency_p50_ms),
                1.0,
                0
            ),
            pair(b.map(|r| r.stretch_p50), n.map(|r| r.stretch_p50), 1.0, 2),
        );
        for f in &c.failures {
            let _ = writeln!(out, "  FAIL {}: {f}", c.scenario);
        }
        for w in &c.warnings {
            let _ = writeln!(out, "  warn {}: {w}", c.scenario);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Strategy;

    fn row(name: &str, routing: f64, lookup: f64, p50: f64) -> Row {
        Row {
            scenario: name.into(),
            seed: 1,
            peers: 10,
            strategy: Strategy::Direct,
            sim_s: 10.0,
            requests: 100,
            routing_success: routing,
            latency_mean_ms: p50,
            latency_p50_ms: p50,
            latency_p99_ms: p50,
            direct_rtt_mean_ms: p50,
            stretch_p50: 1.0,
            lookup_success: lookup,
            lookup_hops_mean: 2.0,
            lookup_p50_ms: 100.0,
            lookup_p99_ms: 200.0,
            regions_covered: 6,
            size_estimate_error: 0.1,
            msgs_per_peer_s: 1.0,
            bytes_per_peer_s: 100.0,
            adversary_server_share: 0.0,
            captured_share: 0.0,
            honest_scc_share: 1.0,
            in_degree_honest: 10.0,
            in_degree_adversary: 3.0,
            eclipse_lookup_success: 1.0,
            size_estimate_error_max: 0.2,
            e2e_p50_ms: 420.0,
            e2e_p99_ms: 1200.0,
            e2e_warm_p50_ms: 210.0,
            e2e_warm_p99_ms: 600.0,
            stretch_direct_p50: 1.0,
            stretch_punched_p50: f64::NAN,
            stretch_relayed_p50: 1.2,
            connections_per_peer_s: 0.5,
        }
    }

    #[test]
    fn drops_beyond_the_tolerance_fail_and_within_it_pass() {
        let b = row("a", 0.999, 0.999, 100.0);
        assert!(
            check("a", None, Some(&b), Ok(row("a", 0.997, 0.999, 100.0)))
                .failures
                .is_empty()
        );
        assert_eq!(
            check("a", None, Some(&b), Ok(row("a", 0.996, 0.999, 100.0)))
                .failures
                .len(),
            1
        );
        assert_eq!(
            check("a", None, Some(&b), Ok(row("a", 0.999, 0.99, 100.0)))
                .failures
                .len(),
            1
        );
        let c = check("a", None, Some(&b), Ok(row("a", 1.0, 1.0, 111.0)));
        assert!(c.failures.is_empty());
        assert_eq!(c.warnings.len(), 1);
    }

    #[test]
    fn floors_missing_baselines_and_errors_fail() {
        let b = row("a", 0.9, 0.9, 100.0);
        assert_eq!(
            check("a", Some(0.95), Some(&b), Ok(row("a", 0.9, 0.9, 100.0)))
                .failures
                .len(),
            1
        );
        assert_eq!(
            check("a", None, None, Ok(row("a", 1.0, 1.0, 1.0)))
                .failures
                .len(),
            1
        );
        assert_eq!(
            check("a", None, Some(&b), Err("boom".into()))
                .failures
                .len(),
            1
        );
        let t = table(&[check("a", None, Some(&b), Err("boom".into()))]);
        assert!(t.contains("FAIL a: did not run: boom"), "{t}");
    }
}
