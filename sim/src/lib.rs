//! sim: placeholder, filled in by the simulator issue.
