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
//! An adversarial peer runs the honest node for its own needs but lies to others: it answers
//! FIND_NODE (and FIND_VALUE when it holds nothing) with the adversaries closest to the
//! target it knows of (trying to pull lookups into a captured region), keeps only the first
//! copy of every record it is asked to store and serves that stale copy forever, and
//! acknowledges every STORE without storing fresh data; and drops every frame it should relay.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use beam_node::app::{ResolveId, ServiceRef};
use beam_node::dht::Publish;
use beam_node::record::ServiceRecord;
use beam_node::routing::{RequestId, RouteEvent, Strategy};
use beam_node::wire::{self, Contact, DhtMessage, Message, Request, Response, RouteMessage};
use beam_node::{Addr, Key, Node, PeerId, Record};

use crate::driver::Protocol;
use crate::metrics::Metrics;

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

/// Adversaries known to every adversary, sorted by DHT key (for "closest to the target").
#[derive(Debug, Default)]
pub struct Adversaries {
    /// (DHT key, contact), sorted by key.
    pub sorted: Vec<(Key, Contact)>,
}

impl Adversaries {
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
                beam_node::Event::Route(RouteEvent::Response { id, rtt, .. }) => {
                    if let Some(req) = self.in_flight.remove(&id) {
                        self.metrics.borrow_mut().response(req, now, rtt);
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

    /// An adversary's answer to a DHT request, or `None` to let the honest node answer.
    fn lie(&mut self, msg: &Message) -> Lie {
        let Some(adv) = self.adversary.as_ref() else {
            return Lie::Honest;
        };
        let (id, body) = match msg {
            Message::Dht(DhtMessage::Request { id, body, .. }) => (id, body),
            Message::Route(
                RouteMessage::Forward { ahead, .. } | RouteMessage::Backward { ahead, .. },
            ) if !ahead.is_empty() => return Lie::Drop,
            _ => return Lie::Honest,
        };
        let k = self.node.config().dht.k;
        let body = match body {
            Request::Ping => return Lie::Honest,
            Request::FindNode { target } => Response::Nodes {
                closer: adv.near(target, k),
            },
            Request::FindValue { key } => match self.stale.get(key) {
                Some(r) => Response::Value {
                    record: Some(r.clone()),
                    closer: vec![],
                },
                None => Response::Value {
                    record: None,
                    closer: adv.near(key, k),
                },
            },
            Request::Store { record } => {
                self.stale
                    .entry(record.key())
                    .or_insert_with(|| record.clone());
                Response::Stored { result: Ok(()) }
            }
        };
        Lie::Answer(Box::new(Message::Dht(DhtMessage::Response {
            id: *id,
            body,
            position: None,
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
            match self.lie(&msg) {
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
                let mut m = self.metrics.borrow_mut();
                m.size_estimates[self.index] = est;
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
        self.node.poll_timeout()
    }
}
