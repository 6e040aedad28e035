//! sim: beam's deterministic simulator. It runs the very same protocol core (`beam-node`)
//! with one simulated host per peer on turmoil-net, reads a scenario TOML, and writes the
//! scaling table that the network's claims rest on.
//!
//! # Layout
//!
//! - [`scenario`] — the scenario file (the contract in DESIGN.md), with validation.
//! - [`cities`], [`latency`] — real cities per region and the latency model (great-circle
//!   distance × path inflation per corridor + access delay + jitter); [`latency_fit`] fits
//!   the corridors to 1,424 published inter-region RTTs and reports the held-out error.
//! - [`net`] — the harness: turmoil-net hosts on one paused current-thread runtime, with an
//!   event-driven scheduler (min-heap of pending deliveries).
//! - [`driver`] — the thin loop that runs a sans-IO protocol over a datagram socket; the same
//!   loop runs over tokio's real UDP socket.
//! - [`peer`] — one peer: the node core behind the driver, the workload's request/answer, the
//!   adversary.
//! - [`transport`] — connection setup and reuse between peers, as libp2p does it.
//! - [`run`] — one scenario run: placement, joins, workload, churn and faults, measurement.
//! - [`metrics`], [`report`] — what is measured, and the CSV row and chart it becomes.
//! - [`gate`] — the CI gate: the `scenarios/ci` set against `reports/baseline.csv`.
//!
//! # Determinism
//!
//! Every random choice is drawn from a ChaCha stream seeded by the scenario's seed; time is
//! simulated; every `select!` is `biased;`; iteration that reaches output is over ordered
//! maps. The same scenario gives a byte-identical CSV row (wall time goes to stderr).

pub mod cities;
pub mod driver;
pub mod gate;
pub mod latency;
pub mod latency_fit;
pub mod metrics;
pub mod net;
pub mod peer;
pub mod report;
pub mod run;
pub mod scenario;
pub mod seeds;
pub mod transport;
