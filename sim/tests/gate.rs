//! The CI gate catches real regressions, not only edited numbers.

use sim::gate;
use sim::report::Row;
use sim::run;
use sim::scenario::Scenario;

fn small(loss: f64) -> Scenario {
    let text = format!(
        r#"
name = "gate-test"
seed = 3
peers = 60
warmup_s = 30
duration_s = 20
[workload]
services = 10
requests_per_s = 40
strategy = "direct"
[faults]
loss = {loss}
"#
    );
    Scenario::from_toml_str(&text).expect("valid")
}

fn row(sc: &Scenario) -> Row {
    run::run(sc, |_, _| {}).expect("runs").row
}

fn gate_over(sc: &Scenario, baseline: &[Row]) -> Vec<gate::Check> {
    gate::run_gate(
        &[("gate-test.toml".into(), Ok(sc.clone()))],
        baseline,
        |s| Ok(row(s)),
    )
}

#[test]
fn the_true_baseline_passes_and_a_better_one_fails() {
    let sc = small(0.3);
    let truth = row(&sc);
    assert!(truth.routing_success < 0.99, "loss makes success imperfect");
    let checks = gate_over(&sc, std::slice::from_ref(&truth));
    assert!(checks[0].failures.is_empty(), "{}", gate::table(&checks));
    let mut better = truth.clone();
    better.routing_success += 0.01;
    let checks = gate_over(&sc, &[better]);
    assert_eq!(checks[0].failures.len(), 1, "{}", gate::table(&checks));
}

#[test]
fn a_real_regression_in_behaviour_fails_the_gate() {
    // The baseline is the healthy network; the "change" drops 20 % of all messages (5 % is
    // absorbed by the router's retries, as it should be).
    let baseline = row(&small(0.0));
    let checks = gate_over(&small(0.2), &[baseline]);
    assert!(!checks[0].failures.is_empty(), "{}", gate::table(&checks));
    assert!(gate::table(&checks).contains("FAIL"));
}

#[test]
fn a_scenario_that_cannot_run_fails_the_gate() {
    let checks = gate::run_gate(
        &[(
            "broken.toml".into(),
            Err("faults.loss = 2: must be between 0 and 1".into()),
        )],
        &[],
        |s| Ok(row(s)),
    );
    assert!(!checks[0].failures.is_empty());
}
