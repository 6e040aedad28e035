//! Whole-scenario tests: determinism, the committed scenario files, clear refusals.

use sim::report::{self, Row};
use sim::run;
use sim::scenario::Scenario;

fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn row(sc: &Scenario) -> Row {
    run::run(sc, |_, _| {}).expect("the scenario runs").row
}

#[test]
fn the_same_seed_gives_a_byte_identical_row() {
    let sc = Scenario::load(repo("scenarios/100-peers.toml")).expect("loads");
    let a = report::to_csv_string(&[row(&sc)]);
    let b = report::to_csv_string(&[row(&sc)]);
    assert_eq!(a, b);
    let mut other = sc.clone();
    other.seed += 1;
    assert_ne!(a, report::to_csv_string(&[row(&other)]), "the seed matters");
}

#[test]
fn a_small_network_reaches_its_services() {
    let mut sc = Scenario::load(repo("scenarios/100-peers.toml")).expect("loads");
    sc.duration_s = 30;
    sc.workload.strategy = sim::scenario::Strategy::Direct;
    sc.nat.fraction = 0.0;
    let r = row(&sc);
    assert!(r.requests > 1000, "{} requests", r.requests);
    assert!(r.routing_success >= 0.999, "routing {}", r.routing_success);
    assert!(r.lookup_success >= 0.999, "lookup {}", r.lookup_success);
    // Direct requests travel the modelled path: stretch ≈ 1 (jitter only).
    assert!(
        (0.9..1.1).contains(&r.stretch_p50),
        "stretch {}",
        r.stretch_p50
    );
    assert_eq!(r.regions_covered, 6);
}

#[test]
fn retries_absorb_light_loss_and_heavy_loss_costs_requests() {
    let mut sc = Scenario::load(repo("scenarios/100-peers.toml")).expect("loads");
    sc.duration_s = 30;
    sc.workload.strategy = sim::scenario::Strategy::Direct;
    sc.nat.fraction = 0.0;
    sc.faults.loss = 0.05;
    let light = row(&sc);
    // A request and its answer are two datagrams (~10 % of pairs lose one at 5 % loss); the
    // router's second and third attempts recover nearly all of them.
    assert!(
        light.routing_success >= 0.99,
        "routing {}",
        light.routing_success
    );
    sc.faults.loss = 0.3;
    let heavy = row(&sc);
    assert!(
        heavy.routing_success < 0.95,
        "routing {}",
        heavy.routing_success
    );
}

#[test]
fn relayed_strategies_work_and_geographic_stays_near_the_direct_path() {
    let mut sc = Scenario::load(repo("scenarios/100-peers.toml")).expect("loads");
    sc.duration_s = 20;
    sc.workload.strategy = sim::scenario::Strategy::Geographic;
    let geo = row(&sc);
    assert!(
        geo.routing_success >= 0.999,
        "routing {}",
        geo.routing_success
    );
    sc.workload.strategy = sim::scenario::Strategy::MultiHop;
    let multi = row(&sc);
    assert!(
        multi.routing_success >= 0.999,
        "routing {}",
        multi.routing_success
    );
    // Two random relays cost more than one chosen for the path.
    assert!(
        geo.stretch_p50 < multi.stretch_p50,
        "{} vs {}",
        geo.stretch_p50,
        multi.stretch_p50
    );
}

#[test]
fn services_behind_nat_are_reached_by_hole_punch_or_relay() {
    let mut sc = Scenario::load(repo("scenarios/100-peers.toml")).expect("loads");
    sc.duration_s = 30;
    sc.nat.fraction = 0.5;
    for strategy in sim::scenario::Strategy::ALL {
        sc.workload.strategy = strategy;
        let out = run::run(&sc, |_, _| {}).expect("runs");
        assert!(
            out.row.routing_success >= 0.999,
            "{strategy}: {}",
            out.row.routing_success
        );
        let (tried, worked) = out.punches;
        assert!(tried > 0, "{strategy}: some services are behind a NAT");
        // Between two NATed peers a punch works for 70 % of pairs; from a public client always.
        assert!(
            worked < tried,
            "{strategy}: some punches fail ({worked}/{tried})"
        );
        assert!(
            worked > tried / 2,
            "{strategy}: most punches work ({worked}/{tried})"
        );
    }
}

#[test]
fn every_committed_scenario_parses() {
    for dir in ["scenarios", "scenarios/ci", "scenarios/adversary"] {
        for entry in std::fs::read_dir(repo(dir)).expect("folder") {
            let p = entry.expect("entry").path();
            if p.extension().is_some_and(|x| x == "toml") {
                Scenario::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            }
        }
    }
}
