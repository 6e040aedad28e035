//! sim: placeholder, filled in by the simulator issue.

pub mod cities;
pub mod latency;
pub mod report;
pub mod scenario;
