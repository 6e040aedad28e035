//! When a driver should next call `handle_timeout`: the one piece of the drive loop that is
//! logic, not I/O, so both drivers (the simulator's datagram loop and the libp2p loop in
//! `cli`) take it from here instead of each writing its own.
//!
//! - **One timer, reset only when the deadline changes**: [`Wakeup::next`] says when the
//!   driver must reset its timer, and to what.
//! - **The stale-deadline guard**: `handle_timeout(now)` must handle everything due at or before
//!   `now`. A protocol that breaks this would spin forever at one (simulated) instant; a deadline
//!   at or before the timeout just handled is deferred by [`STALE_DEFER`] and counted.
//!
//! ```text
//! loop {
//!     if let Some(reset) = wakeup.next(proto.poll_timeout()) { timer.reset(reset) }
//!     select! { ..., _ = timer, if wakeup.armed() => { proto.handle_timeout(now); wakeup.fired(now) } }
//! }
//! ```

use std::time::{Duration, Instant};

/// How far a stale deadline is pushed back.
pub const STALE_DEFER: Duration = Duration::from_millis(1);

/// The state of a driver's one timer.
#[derive(Debug, Default, Clone)]
pub struct Wakeup {
    /// The deadline the timer is set to, if it is armed.
    armed: Option<Instant>,
    /// When the last timeout fired (cleared by the next [`Wakeup::next`]).
    last_fired: Option<Instant>,
    /// Deadlines at or before the timeout just handled (a broken calling contract).
    pub stale: u64,
}

impl Wakeup {
    /// A timer that is not armed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the protocol's `poll_timeout`; returns `Some(deadline)` when the driver must reset
    /// its timer to `deadline` (it changed, or the timer fired), `None` when the timer stands.
    /// When the protocol has no deadline the timer is disarmed ([`Wakeup::armed`] is false).
    pub fn next(&mut self, poll_timeout: Option<Instant>) -> Option<Instant> {
        let mut deadline = poll_timeout;
        if let (Some(d), Some(fired)) = (deadline, self.last_fired)
            && d <= fired
        {
            self.stale += 1;
            deadline = Some(fired + STALE_DEFER);
        }
        self.last_fired = None;
        if deadline == self.armed {
            return None;
        }
        self.armed = deadline;
        deadline
    }

    /// Whether the timer is set (the driver polls it only then).
    pub fn armed(&self) -> bool {
        self.armed.is_some()
    }

    /// The timer fired and `handle_timeout(at)` ran: the next [`Wakeup::next`] re-arms it even
    /// if the deadline looks unchanged, and checks that the deadline moved past `at`.
    pub fn fired(&mut self, at: Instant) {
        self.last_fired = Some(at);
        self.armed = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any instant: the tests only use offsets from it.
    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn the_timer_is_reset_only_when_the_deadline_changes() {
        let t0 = t0();
        let mut w = Wakeup::new();
        assert_eq!(w.next(None), None);
        assert!(!w.armed());
        assert_eq!(
            w.next(Some(t0 + Duration::from_secs(1))),
            Some(t0 + Duration::from_secs(1))
        );
        assert!(w.armed());
        assert_eq!(
            w.next(Some(t0 + Duration::from_secs(1))),
            None,
            "unchanged: no reset"
        );
        assert_eq!(
            w.next(Some(t0 + Duration::from_secs(2))),
            Some(t0 + Duration::from_secs(2))
        );
        assert_eq!(w.next(None), None);
        assert!(!w.armed(), "no deadline: disarmed");
    }

    #[test]
    fn after_firing_the_same_later_deadline_rearms() {
        let t0 = t0();
        let mut w = Wakeup::new();
        let d = t0 + Duration::from_secs(5);
        w.next(Some(d));
        w.fired(t0 + Duration::from_secs(1));
        assert_eq!(w.next(Some(d)), Some(d), "a fired timer is re-armed");
        assert_eq!(w.stale, 0);
    }

    #[test]
    fn a_deadline_that_does_not_move_past_the_timeout_is_deferred_and_counted() {
        let t0 = t0();
        let mut w = Wakeup::new();
        w.next(Some(t0));
        w.fired(t0);
        assert_eq!(w.next(Some(t0)), Some(t0 + STALE_DEFER));
        assert_eq!(w.stale, 1);
        // Only right after a firing: the same deadline later is not stale.
        assert_eq!(w.next(Some(t0 + STALE_DEFER)), None);
        assert_eq!(w.stale, 1);
    }
}
