//! The connection inspector: the tunnel connections this node carries now and carried
//! recently, each with how it got there (direct, hole-punched, relayed, multi-hop, over Tor),
//! why that route, its setup time and first hop's RTT, the bytes each way and how long it
//! lasted. `beam status --connections` shows it.
//!
//! Each tunnel registers itself ([`Connections::track`]) and counts its bytes into its
//! [`Conn`]; when the [`Tracked`] guard drops, the connection moves to the recent list
//! (bounded: the last [`RECENT`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Ended connections kept for the inspector.
pub const RECENT: usize = 64;

/// Which way a tunnel goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// This node opened it (`beam connect`).
    Out,
    /// A client opened it to this node's service.
    In,
}

/// How a tunnel reaches the other end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A libp2p connection straight to the other end.
    Direct,
    /// A direct connection punched through the service's NAT.
    HolePunched,
    /// Through one relay.
    Relayed,
    /// Through two or more relays, sealed end to end.
    MultiHop,
    /// Over a Tor circuit.
    #[cfg_attr(not(feature = "tor"), allow(dead_code))]
    Tor,
}

/// What is known when a tunnel opens.
#[derive(Clone, Debug, Serialize)]
pub struct Info {
    pub direction: Direction,
    pub kind: Kind,
    /// The other end: the service (out), or the client or last relay (in), short ids.
    pub peer: String,
    /// The relays in order (short ids); for an incoming sealed tunnel, the last one only (the
    /// others are hidden from this node).
    pub via: Vec<String>,
    /// Why this route.
    pub why: String,
    /// From the first attempt to the tunnel being ready.
    pub setup_ms: f64,
    /// The libp2p ping RTT of the connection to the first hop, when measured.
    pub first_hop_rtt_ms: Option<f64>,
    /// Outgoing: one round trip over the route once it was up (see `tunnel::Opened`).
    #[serde(default)]
    pub route_rtt_ms: Option<f64>,
    /// Outgoing: the direct RTT to the service that network coordinates predict (this node's
    /// and those in the service's record), when both are known.
    #[serde(default)]
    pub predicted_direct_ms: Option<f64>,
}

/// One tunnel connection.
#[derive(Debug)]
pub struct Conn {
    id: u64,
    info: Info,
    started: Instant,
    /// Bytes from the other end to the local socket.
    pub bytes_in: AtomicU64,
    /// Bytes from the local socket to the other end.
    pub bytes_out: AtomicU64,
    error: Mutex<Option<String>>,
}

impl Conn {
    /// Records why it failed (shown with the connection).
    pub fn failed(&self, why: impl Into<String>) {
        *self.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.into());
    }

    /// Sets the byte counts (for a tunnel that counts them only at its end).
    #[cfg_attr(not(feature = "tor"), allow(dead_code))]
    pub fn set_bytes(&self, bytes_in: u64, bytes_out: u64) {
        self.bytes_in.store(bytes_in, Ordering::Relaxed);
        self.bytes_out.store(bytes_out, Ordering::Relaxed);
    }

    fn view(&self, now: Instant, ended: Option<Instant>) -> View {
        View {
            id: self.id,
            open: ended.is_none(),
            info: self.info.clone(),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            duration_s: ended
                .unwrap_or(now)
                .duration_since(self.started)
                .as_secs_f64(),
            ended_s_ago: ended.map(|e| now.duration_since(e).as_secs_f64()),
            error: self.error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }
}

/// A connection as `beam status --connections` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct View {
    pub id: u64,
    pub open: bool,
    #[serde(flatten)]
    pub info: Info,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_s: f64,
    pub ended_s_ago: Option<f64>,
    pub error: Option<String>,
}

/// The live and recent connections of this node.
#[derive(Debug, Default)]
pub struct Connections {
    next: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    live: BTreeMap<u64, Arc<Conn>>,
    recent: VecDeque<(Arc<Conn>, Instant)>,
}

/// A tracked connection; moves it to the recent list when dropped.
#[derive(Debug)]
pub struct Tracked {
    conns: Arc<Connections>,
    /// Its counters.
    pub conn: Arc<Conn>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let mut inner = self.conns.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = inner.live.remove(&self.conn.id) {
            inner.recent.push_back((c, Instant::now()));
            while inner.recent.len() > RECENT {
                inner.recent.pop_front();
            }
        }
    }
}

impl Connections {
    /// Registers a connection that just opened.
    pub fn track(self: &Arc<Self>, info: Info) -> Tracked {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let conn = Arc::new(Conn {
            id,
            info,
            started: Instant::now(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            error: Mutex::new(None),
        });
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .live
            .insert(id, conn.clone());
        Tracked {
            conns: self.clone(),
            conn,
        }
    }

    /// The live connections (oldest first), then the recent ones (newest first).
    pub fn views(&self) -> Vec<View> {
        let now = Instant::now();
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .live
            .values()
            .map(|c| c.view(now, None))
            .chain(
                inner
                    .recent
                    .iter()
                    .rev()
                    .map(|(c, e)| c.view(now, Some(*e))),
            )
            .collect()
    }
}

/// Milliseconds, for [`Info`].
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(kind: Kind) -> Info {
        Info {
            direction: Direction::Out,
            kind,
            peer: "abcdefgh".into(),
            via: vec![],
            why: "test".into(),
            setup_ms: 1.0,
            first_hop_rtt_ms: None,
            route_rtt_ms: None,
            predicted_direct_ms: None,
        }
    }

    #[test]
    fn a_connection_is_live_until_dropped_then_recent_and_the_recent_list_is_bounded() {
        let c = Arc::new(Connections::default());
        let a = c.track(info(Kind::Direct));
        a.conn.bytes_in.fetch_add(10, Ordering::Relaxed);
        let b = c.track(info(Kind::MultiHop));
        let v = c.views();
        assert_eq!(v.len(), 2);
        assert!(v.iter().all(|v| v.open));
        assert_eq!(v[0].bytes_in, 10);
        drop(a);
        let v = c.views();
        assert_eq!((v[0].info.kind, v[0].open), (Kind::MultiHop, true));
        assert_eq!(
            (v[1].info.kind, v[1].open, v[1].bytes_in),
            (Kind::Direct, false, 10)
        );
        drop(b);
        for _ in 0..RECENT + 10 {
            drop(c.track(info(Kind::Tor)));
        }
        let v = c.views();
        assert_eq!(v.len(), RECENT, "the recent list keeps the last {RECENT}");
        assert!(v.iter().all(|v| v.info.kind == Kind::Tor && !v.open));
        let json = serde_json::to_value(&v[0]).expect("json");
        assert_eq!(json["kind"], "tor");
        assert_eq!(json["direction"], "out");
    }
}
