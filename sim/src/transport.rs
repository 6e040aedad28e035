//! The transport model: what a message to a peer waits for when there is no connection yet.
//!
//! The real driver runs libp2p: before the first message to a peer it dials, and the
//! handshake costs round trips (QUIC one, TCP with Noise two); after that the connection is
//! reused until it has been idle for the idle timeout, or until either end goes away. The
//! simulator's packets are datagrams, so [`Connections`] keeps that state per pair of hosts and
//! tells the latency rule how long each message waits before it leaves: a whole setup on a new
//! connection, the rest of it on one still being set up, nothing on an open one.
//!
//! A host's *epoch* counts its peers (it goes up when one leaves and a replacement takes the
//! host): a connection belongs to the two peers that opened it and dies with either.

use std::collections::HashMap;
use std::time::Duration;

use crate::scenario::Transport;

/// Forget idle connections after this many new ones (keeps the table at the live ones).
const PRUNE_EVERY: u64 = 65_536;

#[derive(Debug, Clone, Copy)]
struct Conn {
    /// The two ends' epochs when it opened (lower host first).
    epochs: (u32, u32),
    /// When the setup is done and messages flow.
    ready: Duration,
    /// The last message on it.
    last: Duration,
}

/// Connections between hosts, as the transport model sees them.
#[derive(Debug)]
pub struct Connections {
    setup_rtts: f64,
    idle: Duration,
    open: HashMap<(u32, u32), Conn>,
    opened: u64,
}

impl Connections {
    /// Connections of `transport`'s kind, none open yet.
    pub fn new(transport: &Transport) -> Self {
        Connections {
            setup_rtts: transport.setup_rtts(),
            idle: Duration::from_secs_f64(transport.idle_timeout_s),
            open: HashMap::new(),
            opened: 0,
        }
    }

    /// Connections set up so far.
    pub fn opened(&self) -> u64 {
        self.opened
    }

    /// How long a message from host `a` (epoch `ea`) to host `b` (epoch `eb`) sent at `now`
    /// waits for its connection: `rtt` is the pair's round trip, asked for only when a new
    /// connection is set up.
    pub fn wait(
        &mut self,
        (a, ea): (u32, u32),
        (b, eb): (u32, u32),
        now: Duration,
        rtt: impl FnOnce() -> Duration,
    ) -> Duration {
        if self.setup_rtts <= 0.0 {
            return Duration::ZERO;
        }
        let (key, epochs) = if a <= b {
            ((a, b), (ea, eb))
        } else {
            ((b, a), (eb, ea))
        };
        if let Some(c) = self.open.get_mut(&key)
            && c.epochs == epochs
            && now.saturating_sub(c.last) < self.idle
        {
            c.last = now;
            return c.ready.saturating_sub(now);
        }
        let setup = rtt().mul_f64(self.setup_rtts);
        self.open.insert(
            key,
            Conn {
                epochs,
                ready: now + setup,
                last: now,
            },
        );
        self.opened += 1;
        if self.opened.is_multiple_of(PRUNE_EVERY) {
            let idle = self.idle;
            self.open.retain(|_, c| now.saturating_sub(c.last) < idle);
        }
        setup
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::TransportKind;

    const MS: Duration = Duration::from_millis(1);

    fn quic() -> Connections {
        Connections::new(&Transport::default())
    }

    #[test]
    fn a_new_connection_waits_a_setup_then_is_free() {
        let mut c = quic();
        let rtt = || 80 * MS;
        assert_eq!(c.wait((1, 0), (2, 0), 1000 * MS, rtt), 80 * MS);
        // Sent while it is still being set up: waits for the rest.
        assert_eq!(c.wait((1, 0), (2, 0), 1030 * MS, rtt), 50 * MS);
        // Either direction shares it; once open, nothing.
        assert_eq!(c.wait((2, 0), (1, 0), 1100 * MS, rtt), Duration::ZERO);
        assert_eq!(c.opened(), 1);
    }

    #[test]
    fn idle_and_departed_connections_close() {
        let mut c = quic();
        let rtt = || 10 * MS;
        c.wait((1, 0), (2, 0), Duration::ZERO, rtt);
        // Used at 59 s: still open; idle 60 s after that: closed.
        assert_eq!(c.wait((1, 0), (2, 0), 59_000 * MS, rtt), Duration::ZERO);
        assert_eq!(c.wait((1, 0), (2, 0), 119_000 * MS, rtt), 10 * MS);
        // Host 2's peer left and another took the host: a new connection.
        assert_eq!(c.wait((1, 0), (2, 1), 119_100 * MS, rtt), 10 * MS);
        assert_eq!(c.opened(), 3);
    }

    #[test]
    fn setup_round_trips_follow_the_kind() {
        let tcp = Transport {
            kind: TransportKind::Tcp,
            ..Transport::default()
        };
        assert_eq!(
            Connections::new(&tcp).wait((0, 0), (1, 0), MS, || 30 * MS),
            60 * MS
        );
        let free = Transport {
            setup_rtts: Some(0.0),
            ..Transport::default()
        };
        let mut c = Connections::new(&free);
        assert_eq!(
            c.wait((0, 0), (1, 0), MS, || unreachable!()),
            Duration::ZERO
        );
    }
}
