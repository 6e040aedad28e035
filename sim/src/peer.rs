//! One simulated peer: the node core behind the driver's [`Protocol`] trait, plus the
//! workload's application layer (a request to a service and its answer) and the adversary.
//!
//! # Datagram framing
//!
//! Every datagram is `[kind: u8][sender PeerId: 32 bytes][payload]`. The sender's id stands
//! in for what the real transport gives (libp2p authenticates the remote's id in its Noise
//! handshake); in the simulator no peer forges it. The only kind is [`KIND_NODE`], a
//! `beam-node` wire message. A workload request resolves the service record through the DHT,
//! then goes to the service over a route chosen by the scenario's strategy; the service
//! answers with the request's 8-byte id.
//!
//! # The adversary
//!
//! An adversarial peer runs the honest node for its own needs and speaks the protocol like an
//! honest peer: its answers carry its coordinates (through [`Node::position`]), it answers
//! pings, and it forwards whatever looks like a relay probe. Where it lies is the scenario's
//! `adversary.behaviours` ([`Behaviour`]):
//! - `drop-relayed`: drops every frame it should relay, except one addressed back to its
//!   sender or a tiny one (what a relay check looked like);
//! - `eclipse`: answers FIND_NODE (and FIND_VALUE when it serves no record) with the colluders
//!   closest to the target, to pull lookups into a captured region;
//! - `fabricate`: puts ids ground near the target, at addresses where nobody listens, at the
//!   head of those answers: each holds one of a lookup's α request slots for a timeout;
//! - `stale`: keeps only the first copy of every record it is asked to store, acknowledges
//!   every STORE without storing the fresh copy, and serves the old one;
//! - with `eclipse_target`, all of them withhold the eclipsed service's record: they
//!   acknowledge its STOREs, never serve it, and answer searches for it with colluders;
//! - `gossip-flood`: every [`FLOOD_EVERY`], sends its gossip peers health announcements under
//!   [`FLOOD_ORIGINS`] freshly minted origins (validly signed by keys nobody knows) and one
//!   under its own id, all claiming a network [`FLOOD_FACTOR`] times larger than it is.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use beam_node::app::{ResolveId, ServiceRef};
use beam_node::dht::Publish;
use beam_node::gossip::{GossipMessage, MessageId, Topic};
use beam_node::node::Health;
use beam_node::record::ServiceRecord;
use beam_node::routing::{RequestId, RouteEvent, Strategy};
use beam_node::wire::{self, Contact, DhtMessage, Message, Request, Response, RouteMessage};
use beam_node::{Addr, Key, Keypair, Node, PeerId, Record};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::driver::Protocol;
use crate::metrics::Metrics;
use crate::scenario::Behaviour;

/// A `beam-node` wire message.
pub const KIND_NODE: u8 = 0;
const HEADER: usize = 33;

/// The port every simulated peer listens on.
pub const PORT: u16 = 7000;

/// What the harness asks a peer to do.
#[derive(Debug)]
pub enum Command {
    /// Join through these contacts.
    Bootstrap(Vec<Contact>),
    /// Publish this service record (and keep it published).
    Publish(Box<ServiceRecord>),
    /// Send workload request `id` to the service run by `service`.
    Request {
        /// The workload's request id.
        id: u64,
        /// The service's peer id.
        service: PeerId,
    },
    /// Write the node's current size estimate into the metrics.
    Snapshot,
}

/// How often a flooding adversary sends forged health announcements.
pub const FLOOD_EVERY: Duration = Duration::from_secs(10);
/// Forged origins per flood.
pub const FLOOD_ORIGINS: usize = 8;
/// How much larger than its own estimate the network a flood claims is: just inside the
/// factor of 2 beyond which a node ignores an announcement (an attacker that read the code).
pub const FLOOD_FACTOR: f32 = 1.9;
/// Gossip peers each flood goes to.
const FLOOD_FANOUT: usize = 8;
/// Fabricated contacts at the head of a lying answer.
const FAKES: usize = 4;
/// Key-prefix bits a fabricated id shares with the target (2^bits hashes to grind one).
const FAKE_BITS: usize = 6;
/// Targets whose fabricated contacts are remembered (the same lookup asks many adversaries).
const MAX_FAKE_TARGETS: usize = 4096;

/// What every adversary knows and shares: the colluders sorted by DHT key (for "closest to
/// the target"), the behaviours, and the fabricated contacts made so far.
#[derive(Debug)]
pub struct Adversaries {
    /// (DHT key, contact), sorted by key.
    pub sorted: Vec<(Key, Contact)>,
    behaviours: BTreeSet<Behaviour>,
    /// The key of the service record the adversaries eclipse, if they do: they withhold it.
    eclipse: Option<Key>,
    fakes: RefCell<BTreeMap<Key, Vec<Contact>>>,
    rng: RefCell<ChaCha8Rng>,
}

impl Adversaries {
    /// The colluders `sorted` by key, doing `behaviours`, with randomness from `seed`.
    pub fn new(sorted: Vec<(Key, Contact)>, behaviours: BTreeSet<Behaviour>, seed: u64) -> Self {
        Self {
            sorted,
            behaviours,
            eclipse: None,
            fakes: RefCell::new(BTreeMap::new()),
            rng: RefCell::new(ChaCha8Rng::seed_from_u64(seed)),
        }
    }

    /// The adversaries also eclipse the record under `key`.
    pub fn eclipsing(mut self, key: Option<Key>) -> Self {
        self.eclipse = key;
        self
    }

    /// Whether adversaries do `b`.
    pub fn does(&self, b: Behaviour) -> bool {
        self.behaviours.contains(&b)
    }

    /// [`FAKES`] made-up contacts whose keys are near `target`, at addresses nobody listens on.
    fn fabricated(&self, target: &Key) -> Vec<Contact> {
        if let Some(f) = self.fakes.borrow().get(target) {
            return f.clone();
        }
        let mut rng = self.rng.borrow_mut();
        let fakes: Vec<Contact> = (0..FAKES)
            .map(|_| {
                let peer = loop {
                    let mut b = [0u8; 32];
                    rng.fill_bytes(&mut b);
                    let p = PeerId::from_bytes(b);
                    let d = p.key().distance(target);
                    if d.bucket().is_none_or(|b| 255 - b >= FAKE_BITS) {
                        break p;
                    }
                };
                // 172.31.0.0/16 holds no simulated host: what is sent there is lost.
                let addr = format!(
                    "172.31.{}.{}:{PORT}",
                    rng.random::<u8>(),
                    rng.random_range(1..255u8)
                );
                Contact {
                    peer,
                    addr: Addr::new(addr),
                }
            })
            .collect();
        let mut cache = self.fakes.borrow_mut();
        if cache.len() >= MAX_FAKE_TARGETS {
            cache.clear();
        }
        cache.insert(*target, fakes.clone());
        fakes
    }

    /// A lying answer's contacts for `target`: fabricated ones first, then colluders.
    fn lying_contacts(&self, target: &Key, k: usize) -> Vec<Contact> {
        let mut v = vec![];
        if self.does(Behaviour::Fabricate) {
            v.extend(self.fabricated(target));
        }
        if self.does(Behaviour::Eclipse) {
            v.extend(self.near(target, k));
        }
        v.truncate(k);
        v
    }

    /// A fresh key for a forged origin.
    fn mint(&self) -> Keypair {
        Keypair::generate(&mut *self.rng.borrow_mut())
    }

    /// About `n` adversaries near `target`: the ones around the target's position in key
    /// order (a cheap stand-in for the XOR-closest), nearest first.
    fn near(&self, target: &Key, n: usize) -> Vec<Contact> {
        if self.sorted.is_empty() {
            return vec![];
        }
        let pos = self.sorted.partition_point(|(k, _)| k < target);
        let lo = pos.saturating_sub(n);
        let hi = (pos + n).min(self.sorted.len());
        let mut v: Vec<&(Key, Contact)> = self.sorted[lo..hi].iter().collect();
        v.sort_by_key(|(k, _)| k.distance(target));
        v.into_iter().take(n).map(|(_, c)| c.clone()).collect()
    }
}

/// The simulated peer.
pub struct SimPeer {
    index: usize,
    node: Node,
    id: PeerId,
    adversary: Option<Rc<Adversaries>>,
    /// An adversary's first copy of every record it was given.
    stale: BTreeMap<Key, Record>,
    metrics: Rc<RefCell<Metrics>>,
    strategy: Strategy,
    lookups: BTreeMap<ResolveId, u64>,
    in_flight: BTreeMap<RequestId, u64>,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
    /// A flooding adversary's next flood.
    next_flood: Option<Instant>,
    /// An adversary's own identity (it announces under it too).
    node_keypair: Option<Keypair>,
}

/// What an adversary does with a message.
enum Lie {
    Honest,
    Drop,
    Answer(Box<Message>),
}

impl std::fmt::Debug for SimPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimPeer")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

/// The socket address of a simulated peer's host.
pub fn socket_addr(ip: std::net::IpAddr) -> SocketAddr {
    SocketAddr::new(ip, PORT)
}

fn frame(kind: u8, from: &PeerId, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + payload.len());
    v.push(kind);
    v.extend_from_slice(from.as_bytes());
    v.extend_from_slice(payload);
    v
}

impl SimPeer {
    /// Wraps `node`, the peer on host `index`.
    pub fn new(
        index: usize,
        node: Node,
        adversary: Option<Rc<Adversaries>>,
        metrics: Rc<RefCell<Metrics>>,
        strategy: Strategy,
    ) -> Self {
        Self {
            index,
            id: node.peer_id(),
            node,
            adversary,
            strategy,
            stale: BTreeMap::new(),
            metrics,
            lookups: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            out: VecDeque::new(),
            next_flood: None,
            node_keypair: None,
        }
    }

    /// An adversary's own identity (it floods under it too), and the time it starts at.
    pub fn with_keypair(mut self, keypair: Keypair, now: Instant) -> Self {
        self.node_keypair = Some(keypair);
        if self
            .adversary
            .as_ref()
            .is_some_and(|a| a.does(Behaviour::GossipFlood))
        {
            self.next_flood = Some(now + FLOOD_EVERY);
        }
        self
    }

    /// A flooding adversary's forged health announcements, sent to its gossip peers.
    fn flood(&mut self, now: Instant) {
        let Some(adv) = self.adversary.clone() else {
            return;
        };
        self.next_flood = Some(now + FLOOD_EVERY);
        let Some(own) = self.node.dht().size_estimate() else {
            return;
        };
        let minute = self.node.dht().unix_time(now) / 60;
        let claim = own as f32 * FLOOD_FACTOR;
        let mut origins: Vec<Keypair> = (0..FLOOD_ORIGINS).map(|_| adv.mint()).collect();
        origins.extend(self.node_keypair.clone());
        let to: Vec<SocketAddr> = self
            .node
            .dht()
            .table()
            .iter()
            .take(FLOOD_FANOUT)
            .filter_map(|e| e.contact.addr.as_str().parse().ok())
            .collect();
        for kp in &origins {
            let payload = Health::signed(kp, claim, minute).to_bytes();
            let origin = kp.peer_id();
            let msg = Message::Gossip(GossipMessage::Publish {
                id: MessageId::of(&origin, Topic::Health, &payload),
                origin,
                hops: 1,
                topic: Topic::Health,
                payload,
            });
            let Ok(bytes) = wire::encode(&msg) else {
                continue;
            };
            for &addr in &to {
                self.out
                    .push_back((addr, frame(KIND_NODE, &self.id, &bytes)));
            }
        }
    }

    /// Handles the node's events: resolved services get the workload's request; services
    /// answer requests; answers are measured.
    fn pump(&mut self, now: Instant) {
        while let Some(ev) = self.node.poll_event() {
            match ev {
                beam_node::Event::Resolved { id, result, stats } => {
                    let Some(req) = self.lookups.remove(&id) else {
                        continue;
                    };
                    let service = result.ok();
                    self.metrics
                        .borrow_mut()
                        .lookup_done(req, service.is_some(), &stats);
                    if let Some(service) = service {
                        match self.node.request(
                            now,
                            &service,
                            self.strategy,
                            req.to_be_bytes().to_vec(),
                        ) {
                            Ok(rid) => {
                                self.in_flight.insert(rid, req);
                            }
                            Err(e) => tracing::debug!(error = %e, "request not sent"),
                        }
                    }
                }
                beam_node::Event::Route(RouteEvent::Response {
                    id, rtt, relays, ..
                }) => {
                    if let Some(req) = self.in_flight.remove(&id) {
                        self.metrics
                            .borrow_mut()
                            .response(req, now, rtt, relays.len());
                    }
                }
                beam_node::Event::Route(RouteEvent::Failed { id, .. }) => {
                    self.in_flight.remove(&id);
                }
                beam_node::Event::Route(RouteEvent::Request { reply, body }) => {
                    if self.adversary.is_none() {
                        self.node.respond(now, reply, body);
                    }
                }
                beam_node::Event::Dht(_) | beam_node::Event::Route(_) => {}
            }
        }
    }

    /// What an adversary does with `msg` from `sender`: let the honest node handle it, drop
    /// it, or answer with a lie.
    fn lie(&mut self, sender: &PeerId, msg: &Message) -> Lie {
        let Some(adv) = self.adversary.clone() else {
            return Lie::Honest;
        };
        let (id, body) = match msg {
            Message::Dht(DhtMessage::Request { id, body, .. }) => (id, body),
            Message::Route(RouteMessage::Forward { ahead, data, .. })
                if !ahead.is_empty() && adv.does(Behaviour::DropRelayed) =>
            {
                // Pass the relay checks: forward what looks like one, drop the rest.
                let probe_like = ahead.last().is_some_and(|c| c.peer == *sender) || data.len() <= 8;
                return if probe_like { Lie::Honest } else { Lie::Drop };
            }
            Message::Route(RouteMessage::Backward { ahead, data, .. })
                if !ahead.is_empty() && adv.does(Behaviour::DropRelayed) =>
            {
                return if data.len() <= 8 {
                    Lie::Honest
                } else {
                    Lie::Drop
                };
            }
            _ => return Lie::Honest,
        };
        let k = self.node.config().dht.k;
        let lies_about_peers = adv.does(Behaviour::Eclipse) || adv.does(Behaviour::Fabricate);
        let body = match body {
            Request::Ping => return Lie::Honest,
            Request::FindNode { target } if lies_about_peers => Response::Nodes {
                closer: adv.lying_contacts(target, k),
            },
            // The eclipsed record: never served, never stored, only colluders named.
            Request::FindValue { key } if adv.eclipse == Some(*key) => Response::Value {
                record: None,
                closer: adv.lying_contacts(key, k),
            },
            Request::Store { record } if adv.eclipse == Some(record.key()) => {
                Response::Stored { result: Ok(()) }
            }
            Request::FindValue { key } => match self.stale.get(key) {
                Some(r) if adv.does(Behaviour::Stale) => Response::Value {
                    record: Some(r.clone()),
                    closer: vec![],
                },
                _ if lies_about_peers => Response::Value {
                    record: None,
                    closer: adv.lying_contacts(key, k),
                },
                _ => return Lie::Honest,
            },
            Request::Store { record } if adv.does(Behaviour::Stale) => {
                self.stale
                    .entry(record.key())
                    .or_insert_with(|| record.clone());
                Response::Stored { result: Ok(()) }
            }
            _ => return Lie::Honest,
        };
        Lie::Answer(Box::new(Message::Dht(DhtMessage::Response {
            id: *id,
            body,
            // Like every honest answer (a real attacker gets its coordinates right too).
            position: self.node.position(),
        })))
    }
}

impl Protocol for SimPeer {
    type Command = Command;
    type Event = ();

    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let (Some(&kind), Some(id)) = (data.first(), data.get(1..HEADER)) else {
            self.metrics.borrow_mut().malformed += 1;
            return;
        };
        let Ok(id) = <[u8; 32]>::try_from(id) else {
            return;
        };
        let sender = PeerId::from_bytes(id);
        let payload = &data[HEADER..];
        if kind != KIND_NODE {
            self.metrics.borrow_mut().malformed += 1;
            return;
        }
        if self.adversary.is_some()
            && let Ok(msg) = wire::decode(payload)
        {
            match self.lie(&sender, &msg) {
                Lie::Honest => {}
                Lie::Drop => return,
                Lie::Answer(answer) => {
                    if let Ok(bytes) = wire::encode(&answer) {
                        self.out
                            .push_back((from, frame(KIND_NODE, &self.id, &bytes)));
                    }
                    return;
                }
            }
        }
        self.node
            .handle_datagram(now, sender, Addr::new(from.to_string()), payload);
        self.pump(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.next_flood.is_some_and(|t| t <= now) {
            self.flood(now);
        }
        self.node.handle_timeout(now);
        self.pump(now);
    }

    fn handle_command(&mut self, now: Instant, cmd: Command) {
        match cmd {
            Command::Bootstrap(contacts) => self.node.bootstrap(now, contacts),
            Command::Publish(record) => {
                if let Err(e) = self.node.publish(now, Publish::Service(*record)) {
                    tracing::warn!(peer = self.index, error = %e, "publish failed");
                }
            }
            Command::Request { id, service } => {
                match self.node.resolve(now, &ServiceRef::Peer(service)) {
                    Ok(q) => {
                        self.lookups.insert(q, id);
                    }
                    Err(_) => self.metrics.borrow_mut().lookup_refused(id),
                }
            }
            Command::Snapshot => {
                let est = self.node.network_size_estimate();
                if std::env::var_os("BEAM_SIM_DEBUG_SIZE").is_some() && self.adversary.is_none() {
                    let (ann, own) = self.node.size_estimates();
                    let mut v: Vec<f64> = ann.iter().map(|(_, e)| *e).collect();
                    v.sort_by(f64::total_cmp);
                    let st = self.node.stats();
                    eprintln!(
                        "size: host {} est {:?} own {:?} settled {} refused gossip {} health {} announced {:?}",
                        self.index,
                        est,
                        own,
                        self.node.dht().size_estimate_settled(),
                        st.gossip_refused,
                        st.health_refused,
                        v
                    );
                }
                let mut m = self.metrics.borrow_mut();
                m.size_estimates[self.index] = est;
                let table = self.node.dht().table();
                let hosts = |v: &mut dyn Iterator<Item = PeerId>| -> Vec<u32> {
                    v.filter_map(|p| m.host_by_peer.get(&p).copied()).collect()
                };
                let all = hosts(&mut table.iter().map(|e| e.contact.peer));
                let k = self.node.config().dht.k;
                let closest =
                    hosts(&mut table.closest(&self.id.key(), k).into_iter().map(|c| c.peer));
                m.tables[self.index] = all;
                m.own_closest[self.index] = closest;
                m.coordinates[self.index] = self.node.coordinates();
                let r = self.node.router().stats();
                m.punches.0 += r.punches;
                m.punches.1 += r.punches_succeeded;
            }
        }
        self.pump(now);
    }

    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        let (to, bytes) = match self.out.pop_front() {
            Some(t) => t,
            None => loop {
                let t = self.node.poll_transmit()?;
                // Addresses come from peers: one that is not ip:port is dropped, not fatal.
                let (Ok(to), Ok(bytes)) = (t.addr.as_str().parse::<SocketAddr>(), t.encode())
                else {
                    self.metrics.borrow_mut().unsendable += 1;
                    continue;
                };
                break (to, frame(KIND_NODE, &self.id, &bytes));
            },
        };
        self.metrics.borrow_mut().sent(self.index, bytes.len());
        Some((to, bytes))
    }

    fn poll_event(&mut self) -> Option<()> {
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match (self.node.poll_timeout(), self.next_flood) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
