//! sim: placeholder, filled in by the simulator issue.

pub mod driver;
pub mod net;
