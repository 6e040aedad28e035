//! One simulated peer: the node core behind the driver's [`Protocol`] trait, plus the
//! workload's application layer (a request to a service and its answer) and the adversary.
//!
//! # Datagram framing
//!
//! Every datagram is `[kind: u8][sender PeerId: 32 bytes][payload]`. The sender's id stands
//! in for what the real transport gives (libp2p authenticates the remote's id in its Noise
//! handshake); in the simulator no peer forges it. Kinds:
//! - [`KIND_NODE`]: a `beam-node` wire message;
//! - [`KIND_APP_REQUEST`] / [`KIND_APP_RESPONSE`]: the workload's request and answer
//!   (`u64` request id, big-endian). Until the routing issue lands a client sends its request
//!   straight to the endpoint in the service record.
//!
//! # The adversary
//!
//! An adversarial peer runs the honest node for its own needs but lies to others: it answers
//! FIND_NODE (and FIND_VALUE when it holds nothing) with the adversaries closest to the
//! target it knows of (trying to pull lookups into a captured region), keeps only the first
//! copy of every record it is asked to store and serves that stale copy forever, and
//! acknowledges every STORE without storing fresh data.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use beam_node::dht::{self, Publish, QueryId};
use beam_node::record::ServiceRecord;
use beam_node::wire::{self, Contact, DhtMessage, Message, Request, Response};
use beam_node::{Addr, Key, Node, PeerId, Record};

use crate::driver::Protocol;
use crate::metrics::Metrics;

/// A `beam-node` wire message.
pub const KIND_NODE: u8 = 0;
/// The workload's request to a service.
pub const KIND_APP_REQUEST: u8 = 1;
/// A service's answer.
pub const KIND_APP_RESPONSE: u8 = 2;
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
    lookups: BTreeMap<QueryId, u64>,
    in_flight: BTreeMap<u64, Instant>,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
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
    ) -> Self {
        Self {
            index,
            id: node.peer_id(),
            node,
            adversary,
            stale: BTreeMap::new(),
            metrics,
            lookups: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            out: VecDeque::new(),
        }
    }

    /// Handles the node's events: resolved services get the workload's request.
    fn pump(&mut self, now: Instant) {
        while let Some(ev) = self.node.poll_event() {
            let beam_node::Event::Dht(ev) = ev;
            if let dht::Event::GetRecord {
                id, record, stats, ..
            } = ev
                && let Some(req) = self.lookups.remove(&id)
            {
                let endpoint = match &record {
                    Some(Record::Service(s)) => s
                        .body
                        .endpoints
                        .first()
                        .and_then(|a| a.as_str().parse::<SocketAddr>().ok()),
                    _ => None,
                };
                self.metrics
                    .borrow_mut()
                    .lookup_done(req, endpoint.is_some(), &stats);
                if let Some(to) = endpoint {
                    self.in_flight.insert(req, now);
                    self.out
                        .push_back((to, frame(KIND_APP_REQUEST, &self.id, &req.to_be_bytes())));
                }
            }
        }
    }

    /// An adversary's answer to a DHT request, or `None` to let the honest node answer.
    fn lie(&mut self, msg: &Message) -> Option<Message> {
        let adv = self.adversary.as_ref()?;
        let Message::Dht(DhtMessage::Request { id, body, .. }) = msg else {
            return None;
        };
        let k = self.node.config().dht.k;
        let body = match body {
            Request::Ping => return None,
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
        Some(Message::Dht(DhtMessage::Response {
            id: *id,
            body,
            position: None,
        }))
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
        match kind {
            KIND_NODE => {
                if self.adversary.is_some()
                    && let Ok(msg) = wire::decode(payload)
                    && let Some(answer) = self.lie(&msg)
                {
                    if let Ok(bytes) = wire::encode(&answer) {
                        self.out
                            .push_back((from, frame(KIND_NODE, &self.id, &bytes)));
                    }
                    return;
                }
                self.node
                    .handle_datagram(now, sender, Addr::new(from.to_string()), payload);
            }
            KIND_APP_REQUEST => {
                if self.adversary.is_none() {
                    self.out
                        .push_back((from, frame(KIND_APP_RESPONSE, &self.id, payload)));
                }
            }
            KIND_APP_RESPONSE => {
                let Ok(req) = <[u8; 8]>::try_from(payload).map(u64::from_be_bytes) else {
                    self.metrics.borrow_mut().malformed += 1;
                    return;
                };
                if let Some(sent) = self.in_flight.remove(&req) {
                    self.metrics.borrow_mut().response(
                        req,
                        now,
                        now.saturating_duration_since(sent),
                    );
                }
            }
            _ => self.metrics.borrow_mut().malformed += 1,
        }
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
            Command::Request { id, service } => match self.node.get_record(now, service.key()) {
                Ok(q) => {
                    self.lookups.insert(q, id);
                }
                Err(_) => self.metrics.borrow_mut().lookup_refused(id),
            },
            Command::Snapshot => {
                let est = self.node.dht().size_estimate();
                self.metrics.borrow_mut().size_estimates[self.index] = est;
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
