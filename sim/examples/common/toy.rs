//! The load-test workload of `shared/notes/turmoil-at-scale.md` as a sans-IO [`Protocol`],
//! and a function that runs it on a [`SimNet`]. Shared by `tests/harness.rs` (determinism)
//! and `examples/harness_bench.rs` (speed): every host sends a ~100-byte ping to 8 random
//! peers every simulated second (seeded ChaCha per host) and answers every ping with a pong.

#![allow(dead_code)] // each includer uses a different part

use std::cell::RefCell;
use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sim::driver::{self, Protocol};
use sim::net::{NetStats, SimNet, host_index, host_ip};
use tokio::sync::mpsc;
use turmoil_net::shim::tokio::net::UdpSocket;
use turmoil_net::{Packet, Verdict};

/// The port every toy host listens on.
pub const PORT: u16 = 9000;
/// Pings per host per period.
pub const FANOUT: usize = 8;
/// How often a host pings.
pub const PERIOD: Duration = Duration::from_secs(1);
/// Bytes per datagram.
pub const PAYLOAD: usize = 100;

const PING: u8 = 0;
const PONG: u8 = 1;

/// What a toy host reports: it received a ping or a pong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ToyEvent {
    /// The receiving host.
    pub host: u32,
    /// Who sent it.
    pub from: SocketAddr,
    /// `PING` or `PONG`.
    pub kind: u8,
    /// The pinger's sequence number.
    pub seq: u64,
}

/// One toy host.
pub struct Toy {
    index: u32,
    hosts: u32,
    rng: ChaCha8Rng,
    next_ping: Instant,
    seq: u64,
    transmit: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<ToyEvent>,
}

impl Toy {
    /// Host `index` of `hosts`; its first ping goes out at a random offset within the first
    /// period after `start`.
    pub fn new(index: u32, hosts: u32, seed: u64, start: Instant) -> Self {
        let mut rng =
            ChaCha8Rng::seed_from_u64(seed ^ u64::from(index).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let offset = Duration::from_millis(rng.random_range(0..PERIOD.as_millis() as u64));
        Self {
            index,
            hosts,
            rng,
            next_ping: start + offset,
            seq: 0,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    fn message(kind: u8, seq: u64, from: u32) -> Vec<u8> {
        let mut msg = vec![0u8; PAYLOAD];
        msg[0] = kind;
        msg[1..9].copy_from_slice(&seq.to_le_bytes());
        msg[9..13].copy_from_slice(&from.to_le_bytes());
        msg
    }
}

impl Protocol for Toy {
    type Command = ();
    type Event = ToyEvent;

    fn handle_datagram(&mut self, _now: Instant, from: SocketAddr, data: &[u8]) {
        let (Some(&kind), Some(seq)) = (data.first(), data.get(1..9)) else {
            return;
        };
        let seq = u64::from_le_bytes(seq.try_into().expect("8 bytes"));
        if kind == PING {
            let mut reply = data.to_vec();
            reply[0] = PONG;
            self.transmit.push_back((from, reply));
        }
        self.events.push_back(ToyEvent {
            host: self.index,
            from,
            kind,
            seq,
        });
    }

    fn handle_timeout(&mut self, now: Instant) {
        while self.next_ping <= now {
            for _ in 0..FANOUT {
                let mut peer = self.rng.random_range(0..self.hosts - 1);
                if peer >= self.index {
                    peer += 1;
                }
                let to = SocketAddr::new(host_ip(peer as usize).into(), PORT);
                self.seq += 1;
                self.transmit
                    .push_back((to, Self::message(PING, self.seq, self.index)));
            }
            self.next_ping += PERIOD;
        }
    }

    fn handle_command(&mut self, _now: Instant, (): ()) {}

    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.transmit.pop_front()
    }

    fn poll_event(&mut self) -> Option<ToyEvent> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Some(self.next_ping)
    }
}

/// What a toy run produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Hash of every event with its simulated time, in the order the collector saw them.
    pub trace_hash: u64,
    /// Events seen.
    pub events: u64,
    /// The network's counters.
    pub stats: NetStats,
}

/// A latency rule from random points in a unit square: 5 ms + up to ~141 ms.
pub fn latency_rule(hosts: usize, seed: u64) -> impl FnMut(&Packet) -> Verdict + 'static {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let coords: Vec<(f32, f32)> = (0..hosts)
        .map(|_| (rng.random::<f32>(), rng.random::<f32>()))
        .collect();
    move |p: &Packet| {
        let (Some(a), Some(b)) = (host_index(p.src), host_index(p.dst)) else {
            return Verdict::Pass;
        };
        let ((ax, ay), (bx, by)) = (coords[a], coords[b]);
        let distance = ((ax - bx).powi(2) + (ay - by).powi(2)).sqrt();
        Verdict::Deliver(Duration::from_millis(5 + (distance * 100.0) as u64))
    }
}

/// Runs the toy workload on `hosts` hosts for `secs` simulated seconds.
pub fn run(hosts: usize, secs: u64, seed: u64) -> Outcome {
    let mut net = SimNet::new();
    let ids: Vec<_> = (0..hosts).map(|i| net.add_host(host_ip(i))).collect();
    net.set_rule(latency_rule(hosts, seed));

    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let mut commands = Vec::with_capacity(hosts);
    for (i, &id) in ids.iter().enumerate() {
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        commands.push(cmd_tx);
        let events_tx = events_tx.clone();
        net.spawn(id, async move {
            let socket = UdpSocket::bind((host_ip(i), PORT))
                .await
                .expect("bind the toy port");
            let toy = Toy::new(i as u32, hosts as u32, seed, driver::now());
            driver::drive(socket, toy, cmd_rx, events_tx).await.stats
        });
    }
    drop(events_tx);

    let trace = Rc::new(RefCell::new((DefaultHasher::new(), 0u64)));
    let collector = Rc::clone(&trace);
    let handle = net.handle();
    net.spawn_local(async move {
        while let Some(event) = events_rx.recv().await {
            let mut trace = collector.borrow_mut();
            handle.now().hash(&mut trace.0);
            event.hash(&mut trace.0);
            trace.1 += 1;
        }
    });

    net.run_until(Duration::from_secs(secs));
    let (hasher, events) = &*trace.borrow();
    Outcome {
        trace_hash: hasher.finish(),
        events: *events,
        stats: net.stats(),
    }
}
