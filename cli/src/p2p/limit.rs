//! The bounds on what peers can make this node hold, each counted when hit:
//!
//! - [`RelayLimiter`]: the per-peer bandwidth cap on relayed circuits, a token bucket per
//!   previous hop charged for the bytes of its circuits in both directions. A peer that pushes
//!   more than its share waits; the others' circuits do not.
//! - [`StreamLimits`]: tunnel and circuit streams open at once, per peer and in total. A peer
//!   over its share is refused at once; the others keep theirs.
//! - [`Activity`]: the idle timeout of one tunnel or circuit.
//!
//! [`Bucket`] is pure (time is an argument) and unit-tested; [`RelayLimiter`] holds one per
//! peer and sleeps on the tokio clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Buckets idle this long are forgotten (they would be full again anyway).
const IDLE: Duration = Duration::from_secs(60);
/// More peers than this triggers forgetting idle buckets.
const MAX_PEERS: usize = 4096;

/// A token bucket that may go into debt: [`Bucket::take`] always accepts the bytes and says
/// how long the caller must wait before sending more, so one large chunk is never refused.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket: `rate` bytes per second, up to `burst` bytes at once.
    pub fn new(rate: u64, burst: u64, now: Instant) -> Self {
        Self {
            rate: rate.max(1) as f64,
            burst: burst.max(1) as f64,
            tokens: burst.max(1) as f64,
            last: now,
        }
    }

    /// Takes `n` bytes at `now`; returns how long to wait before the next send.
    pub fn take(&mut self, now: Instant, n: u64) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// One bucket per previous-hop peer.
#[derive(Debug)]
pub struct RelayLimiter {
    /// Bytes per second per peer; `None`: no cap.
    rate: Option<u64>,
    buckets: Mutex<HashMap<libp2p::PeerId, Bucket>>,
    /// Times a peer had to wait (the cap was hit).
    pub throttled: AtomicU64,
}

impl RelayLimiter {
    /// A limiter with `rate` bytes per second per peer (`None` or 0: unlimited).
    pub fn new(rate: Option<u64>) -> Self {
        Self {
            rate: rate.filter(|r| *r > 0),
            buckets: Mutex::default(),
            throttled: AtomicU64::new(0),
        }
    }

    /// The cap in bytes per second per peer, if any.
    pub fn rate(&self) -> Option<u64> {
        self.rate
    }

    /// Charges `n` bytes to `peer` and waits as long as its bucket says.
    pub async fn charge(&self, peer: &libp2p::PeerId, n: usize) {
        let Some(rate) = self.rate else { return };
        let wait = {
            let now = Instant::now();
            let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
            if buckets.len() > MAX_PEERS {
                buckets.retain(|_, b| now.saturating_duration_since(b.last) < IDLE);
            }
            // One second's worth of burst: short transfers are not slowed at all.
            buckets
                .entry(*peer)
                .or_insert_with(|| Bucket::new(rate, rate, now))
                .take(now, n as u64)
        };
        if !wait.is_zero() {
            self.throttled.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(wait).await;
        }
    }
}

/// Streams (tunnels and circuits, inbound) open at once, per peer and in total.
#[derive(Debug)]
pub struct StreamLimits {
    per_peer: usize,
    total: usize,
    open: Mutex<HashMap<libp2p::PeerId, usize>>,
    /// Streams refused because their peer had `per_peer` open.
    pub refused_per_peer: AtomicU64,
    /// Streams refused because `total` were open.
    pub refused_total: AtomicU64,
}

/// Why a stream was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its peer is at its share.
    PerPeer,
    /// The node is at its total.
    Total,
}

/// One open stream's place; given back when dropped.
#[derive(Debug)]
pub struct StreamPermit {
    limits: Arc<StreamLimits>,
    peer: libp2p::PeerId,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

impl StreamLimits {
    /// At most `per_peer` streams from one peer and `total` from all.
    pub fn new(per_peer: usize, total: usize) -> Arc<Self> {
        Arc::new(Self {
            per_peer: per_peer.max(1),
            total: total.max(1),
            open: Mutex::default(),
            refused_per_peer: AtomicU64::new(0),
            refused_total: AtomicU64::new(0),
        })
    }

    /// `(per peer, total)`.
    pub fn bounds(&self) -> (usize, usize) {
        (self.per_peer, self.total)
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.values().sum()
    }

    /// A place for one more stream from `peer`, or why not (counted).
    pub fn try_open(self: &Arc<Self>, peer: libp2p::PeerId) -> Result<StreamPermit, Refused> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mine = open.get(&peer).copied().unwrap_or(0);
        if mine >= self.per_peer {
            self.refused_per_peer.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::PerPeer);
        }
        if open.values().sum::<usize>() >= self.total {
            self.refused_total.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::Total);
        }
        *open.entry(peer).or_insert(0) += 1;
        Ok(StreamPermit {
            limits: self.clone(),
            peer,
        })
    }
}

/// When a tunnel or circuit last carried a byte, either way.
#[derive(Debug)]
pub struct Activity {
    start: tokio::time::Instant,
    last_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            start: tokio::time::Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl Activity {
    /// Bytes moved now.
    pub fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `idle` (never, for `None`).
    pub async fn idle_for(&self, idle: Option<Duration>) {
        let Some(idle) = idle else {
            return std::future::pending().await;
        };
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + idle;
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_peer_gets_its_share_and_the_total_holds() {
        let limits = StreamLimits::new(2, 3);
        let (a, b) = (libp2p::PeerId::random(), libp2p::PeerId::random());
        let a1 = limits.try_open(a).expect("a 1");
        let _a2 = limits.try_open(a).expect("a 2");
        assert_eq!(limits.try_open(a).err(), Some(Refused::PerPeer));
        let _b1 = limits
            .try_open(b)
            .expect("b 1: a's flood does not touch b's share");
        assert_eq!(limits.try_open(b).err(), Some(Refused::Total));
        assert_eq!(limits.open(), 3);
        drop(a1);
        let _b2 = limits
            .try_open(b)
            .expect("a place given back is free again");
        assert_eq!(limits.refused_per_peer.load(Ordering::Relaxed), 1);
        assert_eq!(limits.refused_total.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn idleness_is_measured_from_the_last_byte() {
        let a = Arc::new(Activity::default());
        let t0 = tokio::time::Instant::now();
        let watcher = {
            let a = a.clone();
            tokio::spawn(async move {
                a.idle_for(Some(Duration::from_secs(10))).await;
                tokio::time::Instant::now()
            })
        };
        tokio::time::sleep(Duration::from_secs(6)).await;
        a.touch();
        let fired = watcher.await.expect("join");
        assert_eq!(
            fired - t0,
            Duration::from_secs(16),
            "10 s after the last byte"
        );
        tokio::time::timeout(Duration::from_secs(100), a.idle_for(None))
            .await
            .expect_err("no idle timeout: never fires");
    }

    #[test]
    fn a_bucket_lets_its_burst_through_then_paces_at_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000, 500, t0);
        assert_eq!(b.take(t0, 500), Duration::ZERO, "the burst passes at once");
        // 250 bytes more: 250 bytes of debt at 1000 B/s = 250 ms.
        assert_eq!(b.take(t0, 250), Duration::from_millis(250));
        // After waiting, the debt is paid and the next 100 bytes wait 100 ms.
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!(b.take(t1, 100), Duration::from_millis(100));
        // A long idle refills only up to the burst.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!(b.take(t2, 500), Duration::ZERO);
        assert!(b.take(t2, 1) > Duration::ZERO);
    }

    #[test]
    fn over_time_a_bucket_passes_its_rate_and_no_more() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10_000, 1_000, t0);
        let mut now = t0;
        let mut sent = 0u64;
        while now < t0 + Duration::from_secs(10) {
            now += b.take(now, 1_500);
            sent += 1_500;
        }
        // 10 s at 10 kB/s plus the burst, within one chunk.
        let expected = 10 * 10_000 + 1_000;
        assert!(
            sent.abs_diff(expected) <= 1_500,
            "sent {sent}, expected about {expected}"
        );
    }

    #[test]
    fn a_clock_that_goes_backwards_does_not_mint_tokens() {
        let t0 = Instant::now() + Duration::from_secs(5);
        let mut b = Bucket::new(1000, 1000, t0);
        b.take(t0, 1000);
        let earlier = t0 - Duration::from_secs(5);
        assert_eq!(b.take(earlier, 500), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn peers_are_charged_separately_and_waits_are_counted() {
        let limiter = RelayLimiter::new(Some(1000));
        let (a, b) = (libp2p::PeerId::random(), libp2p::PeerId::random());
        limiter.charge(&a, 1000).await;
        assert_eq!(limiter.throttled.load(Ordering::Relaxed), 0);
        limiter.charge(&a, 500).await;
        assert_eq!(
            limiter.throttled.load(Ordering::Relaxed),
            1,
            "a is over its cap"
        );
        limiter.charge(&b, 1000).await;
        assert_eq!(
            limiter.throttled.load(Ordering::Relaxed),
            1,
            "b has its own bucket"
        );
        let unlimited = RelayLimiter::new(Some(0));
        unlimited.charge(&a, usize::MAX).await;
        assert_eq!(unlimited.rate(), None);
    }
}
