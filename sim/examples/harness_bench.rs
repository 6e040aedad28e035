//! How fast the simulator's network harness runs the load-test workload of
//! `shared/notes/turmoil-at-scale.md`: every host pings 8 random peers every simulated second
//! and answers every ping, all through `sim::driver::drive`.
//!
//! ```text
//! cargo run --release -p sim --example harness_bench -- [HOSTS] [SIM_SECONDS] [SEED]
//! ```
//!
//! Prints wall time, peak RSS (`VmHWM`) and datagram events per wall second to stderr.

#[path = "common/toy.rs"]
mod toy;

use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let hosts: usize = args
        .next()
        .map_or(1_000, |a| a.parse().expect("HOSTS is a number"));
    let secs: u64 = args
        .next()
        .map_or(60, |a| a.parse().expect("SIM_SECONDS is a number"));
    let seed: u64 = args
        .next()
        .map_or(42, |a| a.parse().expect("SEED is a number"));
    assert!(hosts >= 2, "need at least two hosts");

    let started = Instant::now();
    let outcome = toy::run(hosts, secs, seed);
    let wall = started.elapsed();

    let s = outcome.stats;
    eprintln!("hosts {hosts}, {secs} simulated s, seed {seed}");
    eprintln!("wall        {:.2} s", wall.as_secs_f64());
    eprintln!(
        "peak RSS    {}",
        peak_rss().unwrap_or_else(|| "unknown".into())
    );
    eprintln!(
        "datagrams   sent {}, delivered {}, in flight {}, dropped {}",
        s.sent,
        s.delivered,
        s.in_flight,
        s.dropped_by_rule + s.dropped_dead + s.unroutable
    );
    eprintln!(
        "events      {} ({:.0}/s wall), rounds {}",
        outcome.events,
        outcome.events as f64 / wall.as_secs_f64(),
        s.rounds
    );
    eprintln!("trace hash  {:016x}", outcome.trace_hash);
}

/// Peak resident set size, from `/proc/self/status` (Linux).
fn peak_rss() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(format!("{:.1} MiB", kib as f64 / 1024.0))
}
