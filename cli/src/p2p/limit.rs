//! The per-peer bandwidth cap on relayed circuits: a token bucket per previous hop, charged
//! for the bytes of its circuits in both directions. A peer that pushes more than its share
//! waits; the others' circuits do not.
//!
//! [`Bucket`] is pure (time is an argument) and unit-tested; [`RelayLimiter`] holds one per
//! peer and sleeps on the tokio clock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
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

#[cfg(test)]
mod tests {
    use super::*;

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
