//! Gossip tests: unit tests of one instance, and multi-node runs in an in-memory
//! discrete-event network (no tokio, one seed).

#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

fn peer(i: u64) -> PeerId {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&i.to_be_bytes());
    b[8] = 0xbe;
    PeerId::from_bytes(b)
}

/// A network of gossip instances: a min-heap of deliveries (every message encoded and
/// decoded with postcard and bounds-checked, as the wire will), seeded latencies.
struct Net {
    start: Instant,
    now: Instant,
    rng: ChaCha8Rng,
    nodes: Vec<Gossip>,
    alive: Vec<bool>,
    ids: Vec<PeerId>,
    index: BTreeMap<PeerId, usize>,
    seq: u64,
    deliveries: BinaryHeap<Reverse<(Instant, u64)>>,
    packets: BTreeMap<u64, (usize, usize, Vec<u8>)>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    scheduled: Vec<Option<Instant>>,
    /// (node, time since start, id, hops) of every `Received`.
    received: Vec<(usize, Duration, MessageId, u8)>,
    /// Messages sent (handed to the network) and their bytes.
    sent: u64,
    bytes: u64,
    /// One-way latency range, uniform.
    latency: (Duration, Duration),
    /// Per-message drop probability.
    loss: f64,
}

impl Net {
    /// `n` nodes, each told of `degree` random others, clocks started.
    fn new(seed: u64, n: usize, degree: usize, config: GossipConfig) -> Self {
        let start = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let ids: Vec<PeerId> = (0..n as u64).map(peer).collect();
        let mut nodes: Vec<Gossip> = ids
            .iter()
            .map(|id| Gossip::new(config.clone(), *id, rng.random()))
            .collect();
        for (i, node) in nodes.iter_mut().enumerate() {
            let mut added = 0;
            while added < degree.min(n - 1) {
                let j = rng.random_range(0..n);
                if j != i && node.add_peer(ids[j]) {
                    added += 1;
                }
            }
        }
        let index = ids.iter().enumerate().map(|(i, p)| (*p, i)).collect();
        let mut net = Self {
            start,
            now: start,
            rng,
            nodes,
            alive: vec![true; n],
            ids,
            index,
            seq: 0,
            deliveries: BinaryHeap::new(),
            packets: BTreeMap::new(),
            timers: BinaryHeap::new(),
            scheduled: vec![None; n],
            received: vec![],
            sent: 0,
            bytes: 0,
            latency: (Duration::from_millis(10), Duration::from_millis(150)),
            loss: 0.0,
        };
        for i in 0..n {
            net.nodes[i].handle_timeout(start);
            net.after_input(i);
        }
        net
    }

    fn after_input(&mut self, i: usize) {
        while let Some((to, msg)) = self.nodes[i].poll_transmit() {
            let bytes = postcard::to_allocvec(&msg).unwrap();
            assert!(bytes.len() <= MAX_ENCODED_LEN, "{} bytes", bytes.len());
            self.sent += 1;
            self.bytes += bytes.len() as u64;
            let Some(&to) = self.index.get(&to) else {
                continue;
            };
            if self.loss > 0.0 && self.rng.random_bool(self.loss) {
                continue;
            }
            let (lo, hi) = self.latency;
            let delay = self.rng.random_range(lo..=hi);
            self.seq += 1;
            self.deliveries.push(Reverse((self.now + delay, self.seq)));
            self.packets.insert(self.seq, (to, i, bytes));
        }
        while let Some(e) = self.nodes[i].poll_event() {
            if let GossipEvent::Received { id, hops, .. } = e {
                self.received
                    .push((i, self.now.duration_since(self.start), id, hops));
            }
        }
        if let Some(t) = self.nodes[i].poll_timeout()
            && self.scheduled[i] != Some(t)
        {
            self.scheduled[i] = Some(t);
            self.timers.push(Reverse((t, i)));
        }
    }

    fn step(&mut self, until: Instant) -> bool {
        let d = self.deliveries.peek().map(|Reverse((t, _))| *t);
        let t = self.timers.peek().map(|Reverse((t, _))| *t);
        let next = match (d, t) {
            (None, None) => return false,
            (Some(d), None) => d,
            (None, Some(t)) => t,
            (Some(d), Some(t)) => d.min(t),
        };
        if next > until {
            return false;
        }
        self.now = self.now.max(next);
        let now = self.now;
        if d == Some(next) {
            let Reverse((_, seq)) = self.deliveries.pop().unwrap();
            let (to, from, bytes) = self.packets.remove(&seq).unwrap();
            if self.alive[to] {
                let msg: GossipMessage = postcard::from_bytes(&bytes).unwrap();
                msg.check_bounds().unwrap();
                let from = self.ids[from];
                self.nodes[to].handle_message(now, from, msg);
                self.after_input(to);
            }
        } else {
            let Reverse((_, i)) = self.timers.pop().unwrap();
            if self.scheduled[i] != Some(next) {
                return true; // superseded
            }
            self.scheduled[i] = None;
            if self.alive[i] {
                self.nodes[i].handle_timeout(now);
                self.after_input(i);
            }
        }
        true
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        while self.step(until) {}
        self.now = until;
    }

    fn publish(&mut self, i: usize, payload: &[u8]) -> MessageId {
        let now = self.now;
        let id = self.nodes[i]
            .publish(now, Topic::ServiceAnnouncement, payload.to_vec())
            .unwrap();
        self.after_input(i);
        id
    }

    /// Asserts that every live node but `origin` received `id` exactly once; returns the
    /// time to full coverage (from `published_at`) and the largest hop count.
    fn assert_full_coverage(
        &self,
        id: MessageId,
        origin: usize,
        published_at: Duration,
    ) -> (Duration, u8) {
        let mut count = vec![0u32; self.nodes.len()];
        let mut last = Duration::ZERO;
        let mut max_hops = 0;
        for (i, t, got, hops) in &self.received {
            if *got == id {
                count[*i] += 1;
                last = last.max(*t - published_at);
                max_hops = max_hops.max(*hops);
            }
        }
        let missing: Vec<usize> = (0..self.nodes.len())
            .filter(|i| *i != origin && self.alive[*i] && count[*i] == 0)
            .collect();
        assert!(missing.is_empty(), "{} live nodes missed it", missing.len());
        for (i, c) in count.iter().enumerate() {
            if i != origin && self.alive[i] {
                assert_eq!(*c, 1, "node {i} delivered it {c} times");
            }
        }
        assert_eq!(
            count[origin], 0,
            "the publisher does not deliver its own message"
        );
        (last, max_hops)
    }

    fn total_stats(&self) -> GossipStats {
        let mut s = GossipStats::default();
        for n in &self.nodes {
            let t = n.stats();
            s.duplicates += t.duplicates;
            s.iwant_served += t.iwant_served;
            s.iwant_timeouts += t.iwant_timeouts;
            s.iwants_sent += t.iwants_sent;
            s.ihaves_sent += t.ihaves_sent;
            s.publishes_sent += t.publishes_sent;
            s.peers_unresponsive += t.peers_unresponsive;
            s.grafts_sent += t.grafts_sent;
            s.grafts_refused += t.grafts_refused;
        }
        s
    }

    fn check_invariants(&self) {
        for n in &self.nodes {
            n.check_invariants();
        }
    }
}

const N: usize = 1000;
const DEGREE: usize = 20;

/// Builds a network, lets the mesh form, optionally kills a share, publishes from node 0 and
/// runs until repair is over; reports and checks.
fn broadcast(seed: u64, kill: f64, loss: f64) -> (Net, MessageId, Duration) {
    let mut net = Net::new(seed, N, DEGREE, GossipConfig::default());
    net.loss = loss;
    net.run_for(Duration::from_secs(3));
    let mut killed = 0;
    if kill > 0.0 {
        for i in 1..N {
            if net.rng.random_bool(kill) {
                net.alive[i] = false;
                killed += 1;
            }
        }
    }
    let (sent0, bytes0) = (net.sent, net.bytes);
    let at = net.now.duration_since(net.start);
    let id = net.publish(0, b"service record of node 0");
    net.run_for(Duration::from_secs(15));
    let (coverage, hops) = net.assert_full_coverage(id, 0, at);
    let live = net.alive.iter().filter(|a| **a).count();
    let s = net.total_stats();
    eprintln!(
        "gossip seed={seed} nodes={N} killed={killed} loss={loss}: all {} live nodes reached in \
         {coverage:?} (max {hops} hops); {:.1} msgs/node ({:.1} publishes, {:.1} ihaves, {:.2} \
         iwants), {:.0} bytes/node; {} duplicates suppressed, {} served by IWant, {} IWant \
         timeouts, {} peers left the mesh as unresponsive",
        live - 1,
        (net.sent - sent0) as f64 / N as f64,
        s.publishes_sent as f64 / N as f64,
        s.ihaves_sent as f64 / N as f64,
        s.iwants_sent as f64 / N as f64,
        (net.bytes - bytes0) as f64 / N as f64,
        s.duplicates,
        s.iwant_served,
        s.iwant_timeouts,
        s.peers_unresponsive,
    );
    net.check_invariants();
    (net, id, coverage)
}

#[test]
fn a_message_reaches_every_node_of_1000() {
    let (net, _, coverage) = broadcast(1, 0.0, 0.0);
    // Eager push alone covers a healthy network within a few hops.
    assert!(coverage < Duration::from_secs(2), "{coverage:?}");
    // The mesh is bounded.
    let mut total = 0;
    for n in &net.nodes {
        let m = n.mesh().count();
        assert!((1..=12).contains(&m), "mesh of {m}");
        total += m;
    }
    eprintln!(
        "gossip seed=1: mean mesh size {:.1}",
        total as f64 / N as f64
    );
}

#[test]
fn with_20_percent_killed_every_live_node_receives_it() {
    broadcast(2, 0.2, 0.0);
}

#[test]
fn with_5_percent_loss_every_node_receives_it() {
    broadcast(3, 0.0, 0.05);
}

/// Eager push over a thin mesh on lossy links misses nodes; lazy repair finds them all.
#[test]
fn lazy_repair_reaches_what_eager_push_misses() {
    let run = |lazy_n| {
        let config = GossipConfig {
            mesh_n: 2,
            mesh_n_low: 1,
            mesh_n_high: 3,
            lazy_n,
            ..GossipConfig::default()
        };
        let mut net = Net::new(5, N, DEGREE, config);
        net.loss = 0.2;
        net.run_for(Duration::from_secs(3));
        let at = net.now.duration_since(net.start);
        let id = net.publish(0, b"thin mesh");
        net.run_for(Duration::from_secs(20));
        let got = net.received.iter().filter(|r| r.2 == id).count();
        (net, id, at, got)
    };
    let (_, _, _, eager_only) = run(0);
    assert!(eager_only < N - 1, "eager push alone reached {eager_only}");
    let (net, id, at, _) = run(GossipConfig::default().lazy_n);
    let (coverage, hops) = net.assert_full_coverage(id, 0, at);
    let s = net.total_stats();
    assert!(s.iwant_served > 0);
    eprintln!(
        "gossip seed=5 nodes={N} mesh_n=2 loss=0.2: eager push alone reached {eager_only}; with \
         lazy repair all {} in {coverage:?} (max {hops} hops), {} served by IWant, {} IWant \
         timeouts",
        N - 1,
        s.iwant_served,
        s.iwant_timeouts
    );
    net.check_invariants();
}

#[test]
fn many_messages_are_each_delivered_exactly_once() {
    let n = 300;
    let mut net = Net::new(4, n, DEGREE, GossipConfig::default());
    net.run_for(Duration::from_secs(3));
    let at = net.now.duration_since(net.start);
    let mut ids = vec![];
    for k in 0..20 {
        let origin = (k * 37) % n;
        ids.push((net.publish(origin, format!("msg {k}").as_bytes()), origin));
        net.run_for(Duration::from_millis(20));
    }
    net.run_for(Duration::from_secs(15));
    for (id, origin) in &ids {
        net.assert_full_coverage(*id, *origin, at);
    }
    assert_eq!(net.received.len(), ids.len() * (n - 1));
    let s = net.total_stats();
    assert!(
        s.duplicates > 0,
        "duplicates did arrive and were suppressed"
    );
    eprintln!(
        "gossip seed=4 nodes={n}: 20 messages, each delivered once per node; {} duplicates \
         suppressed",
        s.duplicates
    );
    net.check_invariants();
}

#[test]
fn same_seed_same_run() {
    let run = |seed| {
        let mut net = Net::new(seed, 200, DEGREE, GossipConfig::default());
        net.loss = 0.05;
        net.run_for(Duration::from_secs(2));
        net.alive[7] = false;
        net.publish(0, b"x");
        net.publish(5, b"y");
        net.run_for(Duration::from_secs(10));
        (net.received, net.sent, net.bytes)
    };
    let a = run(9);
    assert_eq!(a, run(9));
    assert_ne!(a, run(10));
}

fn publish_from(origin: PeerId, k: u32) -> GossipMessage {
    let payload = k.to_be_bytes().to_vec();
    GossipMessage::Publish {
        id: MessageId::of(&origin, Topic::Health, &payload),
        origin,
        hops: 1,
        topic: Topic::Health,
        payload,
    }
}

#[test]
fn a_flooding_peer_is_rate_limited_and_counted() {
    let t0 = Instant::now();
    let config = GossipConfig::default();
    let (burst, rate) = (config.publish_burst as u64, config.publish_rate as u64);
    let mut g = Gossip::new(config.clone(), peer(0), 1);
    let flooder = peer(1);
    let honest = peer(2);
    g.add_peer(flooder);
    g.add_peer(honest);
    for k in 0..1000 {
        g.handle_message(t0, flooder, publish_from(flooder, k));
    }
    assert_eq!(g.stats().delivered, burst);
    assert_eq!(g.stats().rate_limited_publishes, 1000 - burst);
    // Another peer is not affected by the flooder's bucket.
    g.handle_message(t0, honest, publish_from(honest, 0));
    assert_eq!(g.stats().delivered, burst + 1);
    // One second later, `rate` more are accepted.
    let t1 = t0 + Duration::from_secs(1);
    for k in 1000..2000 {
        g.handle_message(t1, flooder, publish_from(flooder, k));
    }
    assert_eq!(g.stats().delivered, burst + 1 + rate);
    assert_eq!(g.stats().rate_limited_publishes, 2000 - burst - rate);
    let delivered = std::iter::from_fn(|| g.poll_event()).count() as u64;
    assert_eq!(delivered, burst + 1 + rate);

    // IWants: answered up to the bucket, the excess counted by id.
    let ids: Vec<MessageId> = (0..MAX_IDS as u32)
        .map(|k| match publish_from(flooder, k) {
            GossipMessage::Publish { id, .. } => id,
            _ => unreachable!(),
        })
        .collect();
    while g.poll_transmit().is_some() {}
    let rounds = 10;
    for _ in 0..rounds {
        g.handle_message(t1, honest, GossipMessage::IWant { ids: ids.clone() });
    }
    let answered = (config.iwant_burst as usize / MAX_IDS) * MAX_IDS;
    assert_eq!(g.stats().iwant_served, answered as u64);
    assert_eq!(
        g.stats().rate_limited_iwant_ids,
        (rounds * MAX_IDS - answered) as u64
    );
    let publishes = std::iter::from_fn(|| g.poll_transmit())
        .filter(|(to, m)| *to == honest && matches!(m, GossipMessage::Publish { .. }))
        .count();
    assert_eq!(publishes, answered);
    g.check_invariants();
}

#[test]
fn forged_ids_and_oversized_messages_are_dropped() {
    let t0 = Instant::now();
    let mut g = Gossip::new(GossipConfig::default(), peer(0), 1);
    let real = publish_from(peer(5), 1);
    let GossipMessage::Publish { id, .. } = real.clone() else {
        unreachable!()
    };
    // A forged payload under the real id is dropped and does not suppress the real one.
    g.handle_message(
        t0,
        peer(1),
        GossipMessage::Publish {
            id,
            origin: peer(5),
            hops: 1,
            topic: Topic::Health,
            payload: b"forged".to_vec(),
        },
    );
    assert_eq!(g.stats().bad_ids, 1);
    g.handle_message(t0, peer(2), real.clone());
    g.handle_message(t0, peer(3), real);
    assert_eq!(g.stats().delivered, 1);
    assert_eq!(g.stats().duplicates, 1);
    g.handle_message(
        t0,
        peer(1),
        GossipMessage::IHave {
            ids: vec![id; MAX_IDS + 1],
        },
    );
    assert_eq!(g.stats().out_of_bounds, 1);
    g.handle_message(t0, peer(0), GossipMessage::Graft);
    assert_eq!(g.stats().from_self, 1);
    assert_eq!(
        g.publish(t0, Topic::Health, vec![0; MAX_PAYLOAD + 1]),
        Err(GossipError::PayloadTooLarge(MAX_PAYLOAD + 1))
    );
    let id = g.publish(t0, Topic::Health, b"hi".to_vec()).unwrap();
    assert_eq!(
        g.publish(t0, Topic::Health, b"hi".to_vec()),
        Err(GossipError::AlreadyPublished(id))
    );
}

#[test]
fn an_unanswered_iwant_goes_to_the_next_announcer_and_the_silent_peer_leaves_the_mesh() {
    let t0 = Instant::now();
    let config = GossipConfig::default();
    let mut g = Gossip::new(config.clone(), peer(0), 1);
    let (silent, other) = (peer(1), peer(2));
    g.add_peer(silent);
    g.add_peer(other);
    g.handle_timeout(t0);
    g.handle_timeout(t0 + config.heartbeat_interval);
    assert!(g.mesh().any(|p| *p == silent));
    while g.poll_transmit().is_some() {}
    let mut t = t0 + config.heartbeat_interval;
    for k in 0..config.max_iwant_failures as u32 {
        let GossipMessage::Publish { id, .. } = publish_from(peer(9), k) else {
            unreachable!()
        };
        g.handle_message(t, silent, GossipMessage::IHave { ids: vec![id] });
        g.handle_message(t, other, GossipMessage::IHave { ids: vec![id] });
        assert_eq!(
            g.poll_transmit(),
            Some((silent, GossipMessage::IWant { ids: vec![id] }))
        );
        assert_eq!(
            g.poll_transmit(),
            None,
            "the second announcer waits its turn"
        );
        t = g.poll_timeout().unwrap().min(t + config.iwant_timeout);
        g.handle_timeout(t);
        let asks: Vec<_> = std::iter::from_fn(|| g.poll_transmit())
            .filter(|(_, m)| matches!(m, GossipMessage::IWant { .. }))
            .collect();
        assert_eq!(asks, vec![(other, GossipMessage::IWant { ids: vec![id] })]);
    }
    assert!(!g.mesh().any(|p| *p == silent));
    assert_eq!(g.stats().peers_unresponsive, 1);
    assert_eq!(
        std::iter::from_fn(|| g.poll_event()).last(),
        Some(GossipEvent::PeerUnresponsive { peer: silent })
    );
    // remove_peer takes a peer out of the mesh at once.
    g.remove_peer(&other);
    assert_eq!(g.mesh().count(), 0);
    g.check_invariants();
}

#[test]
fn the_largest_messages_fit_their_bound() {
    let big = [
        GossipMessage::Publish {
            id: MessageId([0xff; 16]),
            origin: PeerId::from_bytes([0xff; 32]),
            hops: u8::MAX,
            topic: Topic::Health,
            payload: vec![0xff; MAX_PAYLOAD],
        },
        GossipMessage::IHave {
            ids: vec![MessageId([0xff; 16]); MAX_IDS],
        },
        GossipMessage::IWant {
            ids: vec![MessageId([0xff; 16]); MAX_IDS],
        },
    ];
    for m in big {
        assert!(m.check_bounds().is_ok());
        let len = postcard::to_allocvec(&m).unwrap().len();
        assert!(len <= MAX_ENCODED_LEN, "{len}");
        assert!(len + 2 <= crate::wire::MAX_MESSAGE_SIZE);
    }
}

fn arb_id() -> impl Strategy<Value = MessageId> {
    // A small id space, so that ids repeat and meet each other.
    (0u8..8).prop_map(|b| MessageId([b; 16]))
}

fn arb_peer() -> impl Strategy<Value = PeerId> {
    (0u64..6).prop_map(peer)
}

fn arb_message() -> impl Strategy<Value = GossipMessage> {
    prop_oneof![
        (
            arb_id(),
            arb_peer(),
            any::<u8>(),
            prop_oneof![Just(Topic::Health), Just(Topic::ServiceAnnouncement)],
            proptest::collection::vec(any::<u8>(), 0..1100),
            any::<bool>(),
        )
            .prop_map(|(id, origin, hops, topic, payload, honest)| {
                let id = if honest {
                    MessageId::of(&origin, topic, &payload)
                } else {
                    id
                };
                GossipMessage::Publish {
                    id,
                    origin,
                    hops,
                    topic,
                    payload,
                }
            }),
        proptest::collection::vec(arb_id(), 0..80).prop_map(|ids| GossipMessage::IHave { ids }),
        proptest::collection::vec(arb_id(), 0..80).prop_map(|ids| GossipMessage::IWant { ids }),
        Just(GossipMessage::Graft),
        Just(GossipMessage::Prune),
    ]
}

proptest! {
    #[test]
    fn arbitrary_messages_never_panic_and_bounds_hold(
        steps in proptest::collection::vec(
            (arb_peer(), arb_message(), 0u64..3000, any::<bool>()),
            0..60,
        ),
        seed in any::<u64>(),
    ) {
        let t0 = Instant::now();
        let config = GossipConfig {
            mesh_n: 2,
            mesh_n_low: 1,
            mesh_n_high: 3,
            max_peers: 4,
            max_seen: 5,
            max_cached: 3,
            max_pending_wants: 3,
            max_announcers: 2,
            max_transmit_queue: 16,
            max_events: 4,
            ..GossipConfig::default()
        };
        let mut g = Gossip::new(config, peer(0), seed);
        g.add_peer(peer(1));
        let mut now = t0;
        for (from, msg, dt, tick) in steps {
            now += Duration::from_millis(dt);
            let fits = msg.check_bounds().is_ok();
            if fits {
                let len = postcard::to_allocvec(&msg).unwrap().len();
                prop_assert!(len <= MAX_ENCODED_LEN);
            }
            g.handle_message(now, from, msg);
            if tick {
                g.handle_timeout(now);
            }
            if let Some(t) = g.poll_timeout() {
                prop_assert!(t > now || !tick);
            }
            g.check_invariants();
            while let Some((to, m)) = g.poll_transmit() {
                prop_assert!(to != peer(0));
                prop_assert!(m.check_bounds().is_ok());
            }
            while g.poll_event().is_some() {}
        }
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
        if let Ok(m) = postcard::from_bytes::<GossipMessage>(&bytes) {
            let _ = m.check_bounds();
        }
    }
}
