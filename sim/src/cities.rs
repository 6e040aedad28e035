//! The built-in table of real cities where simulated peers live: [`beam_node::geo`], shared
//! with the real node (which names a declared location's region after it).

pub use beam_node::geo::{City, Region, find_city, nearest_city};
