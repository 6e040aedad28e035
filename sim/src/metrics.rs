//! What a run measures, and how it becomes a report row.
//!
//! Peers write into one shared [`Metrics`] (the simulation is single-threaded); the runner
//! turns it into a [`Row`] at the end. Only what happens in the measured window counts:
//! requests *sent* in it (followed to their end, up to the 5 s deadline, even past the
//! window), and traffic sent in it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use beam_node::dht::QueryStats;
use hdrhistogram::Histogram;

/// A request is a success when its answer arrives within this long of being issued.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// One workload request, followed from issue to answer.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// When the client was asked to send it.
    pub start: Instant,
    /// Client host index.
    pub client: usize,
    /// Service host index.
    pub service: usize,
    /// A later request of this client to this service (`workload.follow_up_s`), not its
    /// first.
    pub warm: bool,
    /// The service-record lookup finished: (record found, stats).
    pub lookup: Option<(bool, QueryStats)>,
    /// When the answer arrived, the round-trip time of the request itself, and the route's
    /// relays (0: direct, or hole-punched when the service is behind a NAT).
    pub answer: Option<(Instant, Duration, usize)>,
    /// The client left (churn, kill) before the request's deadline: the request is not
    /// counted, as nobody was left to receive the answer.
    pub client_left: bool,
}

/// Everything measured in a run.
#[derive(Debug)]
pub struct Metrics {
    /// Whether the measured window is open (traffic counts only then).
    pub measuring: bool,
    /// Requests by id.
    pub requests: BTreeMap<u64, RequestRecord>,
    /// Messages sent in the window, per host.
    pub msgs: Vec<u64>,
    /// Bytes sent in the window, per host.
    pub bytes: Vec<u64>,
    /// Size estimates collected at the end, per host.
    pub size_estimates: Vec<Option<f64>>,
    /// Network coordinates collected at the end, per host.
    pub coordinates: Vec<Option<beam_node::record::Coordinates>>,
    /// Hole punches started and succeeded, summed over peers at the end.
    pub punches: (u64, u64),
    /// Host of each peer id that ran (for the overlay graph).
    pub host_by_peer: BTreeMap<beam_node::PeerId, u32>,
    /// Routing tables at the end, per host: every entry's host.
    pub tables: Vec<Vec<u32>>,
    /// Per host at the end: the hosts of its table's `k` entries closest to its own key.
    pub own_closest: Vec<Vec<u32>>,
    /// Datagrams that were not a valid frame.
    pub malformed: u64,
    /// Node transmits whose address was not `ip:port` or that did not encode.
    pub unsendable: u64,
}

impl Metrics {
    /// Metrics for `hosts` hosts.
    pub fn new(hosts: usize) -> Self {
        Self {
            measuring: false,
            requests: BTreeMap::new(),
            msgs: vec![0; hosts],
            bytes: vec![0; hosts],
            size_estimates: vec![None; hosts],
            coordinates: vec![None; hosts],
            punches: (0, 0),
            host_by_peer: BTreeMap::new(),
            tables: vec![vec![]; hosts],
            own_closest: vec![vec![]; hosts],
            malformed: 0,
            unsendable: 0,
        }
    }

    /// Host `index` sent a datagram of `len` bytes.
    pub fn sent(&mut self, index: usize, len: usize) {
        if self.measuring {
            self.msgs[index] += 1;
            self.bytes[index] += len as u64;
        }
    }

    /// The service-record lookup of request `id` finished.
    pub fn lookup_done(&mut self, id: u64, found: bool, stats: &QueryStats) {
        if let Some(r) = self.requests.get_mut(&id) {
            r.lookup = Some((found, stats.clone()));
        }
    }

    /// The node refused to start the lookup (too many queries): the request failed.
    pub fn lookup_refused(&mut self, id: u64) {
        if let Some(r) = self.requests.get_mut(&id) {
            r.lookup = Some((false, QueryStats::default()));
        }
    }

    /// Request `id` was answered at `at`, `rtt` after it was sent.
    pub fn response(&mut self, id: u64, at: Instant, rtt: Duration, relays: usize) {
        if let Some(r) = self.requests.get_mut(&id)
            && r.answer.is_none()
        {
            r.answer = Some((at, rtt, relays));
        }
    }
}

/// Summary statistics of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// Mean, median and p99 of `ms` (recorded at 10 µs resolution in an HDR histogram).
pub fn summarize(ms: impl IntoIterator<Item = f64>) -> Summary {
    let Ok(mut h) = Histogram::<u64>::new(3) else {
        return Summary::default();
    };
    let mut n = 0u64;
    let mut sum = 0.0;
    for v in ms {
        // Hundredths of a millisecond.
        let _ = h.record((v * 100.0).round().max(0.0) as u64);
        n += 1;
        sum += v;
    }
    if n == 0 {
        return Summary::default();
    }
    Summary {
        mean: sum / n as f64,
        p50: h.value_at_quantile(0.5) as f64 / 100.0,
        p99: h.value_at_quantile(0.99) as f64 / 100.0,
    }
}

/// Median of `v` (sorted in place); 0 when empty.
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_are_right() {
        let s = summarize((1..=100).map(f64::from));
        assert!((s.mean - 50.5).abs() < 1e-9);
        assert!((s.p50 - 50.0).abs() < 0.1, "{}", s.p50);
        assert!((s.p99 - 99.0).abs() < 0.1, "{}", s.p99);
        assert_eq!(summarize([]), Summary::default());
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
