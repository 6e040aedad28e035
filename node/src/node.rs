//! [`Node`]: the protocol core of one peer, composing the DHT (and, as they land, gossip,
//! coordinates and routing) behind one calling contract.

use std::time::Instant;

use crate::dht::{self, Dht, DhtConfig, DhtError, Publish, QueryId};
use crate::id::{Key, Keypair, PeerId};
use crate::record::{Addr, Participation, Record};
use crate::wire::{self, Contact, DecodeError, EncodeError, Message};

/// Settings of a node. `Default` is a `routing` peer with production values.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeConfig {
    /// What the node does for the network.
    pub participation: Participation,
    /// The DHT's settings (`server` is derived from `participation` by [`NodeConfig::new`]).
    pub dht: DhtConfig,
}

impl NodeConfig {
    /// The production settings for a participation level.
    pub fn new(participation: Participation) -> Self {
        let mut dht = DhtConfig {
            server: participation.is_server(),
            ..DhtConfig::default()
        };
        if participation == Participation::Full {
            // Full peers keep more records for others.
            dht.max_records *= 4;
        }
        Self { participation, dht }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self::new(Participation::Routing)
    }
}

/// A message for the driver to send.
#[derive(Clone, Debug, PartialEq)]
pub struct Transmit {
    /// The recipient.
    pub to: PeerId,
    /// Where to reach it.
    pub addr: Addr,
    /// The message.
    pub message: Message,
}

impl Transmit {
    /// The message's wire encoding.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        wire::encode(&self.message)
    }
}

/// What the node reports.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// From the DHT.
    Dht(dht::Event),
}

/// Counters of the node's traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Messages handled.
    pub messages_in: u64,
    /// Bytes of datagrams handled (valid or not).
    pub bytes_in: u64,
    /// Messages handed to the driver.
    pub messages_out: u64,
    /// Datagrams dropped because they did not decode.
    pub malformed_in: u64,
    /// Messages of a kind this node does not handle.
    pub unhandled_in: u64,
}

/// The protocol core of one peer.
///
/// # Calling contract
///
/// The node never does I/O, never reads a clock and has no global RNG: the driver gives it
/// time (`now`) with every input, and a seed at construction. The driver:
///
/// 1. feeds every input: [`handle_datagram`](Node::handle_datagram) (or
///    [`handle_message`](Node::handle_message) for already-decoded messages),
///    [`handle_peer_unreachable`](Node::handle_peer_unreachable), commands such as
///    [`lookup`](Node::lookup);
/// 2. after **every** input, drains [`poll_transmit`](Node::poll_transmit) (send each) and
///    [`poll_event`](Node::poll_event) until both return `None`;
/// 3. sleeps until [`poll_timeout`](Node::poll_timeout), then calls
///    [`handle_timeout`](Node::handle_timeout) and drains again.
///
/// `now` must not go backwards. A peer is identified by its [`PeerId`], which the transport
/// authenticates (libp2p's Noise handshake; in the simulator, the harness); addresses are
/// hints the node hands back in [`Transmit::addr`].
#[derive(Debug)]
pub struct Node {
    config: NodeConfig,
    dht: Dht,
    stats: NodeStats,
}

impl Node {
    /// A node with identity `keypair`, randomness from `seed`, created at `now`, when the wall
    /// clock reads `unix_now` seconds.
    pub fn new(
        config: NodeConfig,
        keypair: Keypair,
        seed: u64,
        now: Instant,
        unix_now: u64,
    ) -> Self {
        let dht = Dht::new(config.dht.clone(), keypair, seed, now, unix_now);
        Self {
            config,
            dht,
            stats: NodeStats::default(),
        }
    }

    // ---- getters ----

    /// This node's id.
    pub fn peer_id(&self) -> PeerId {
        self.dht.local_peer()
    }

    /// The settings.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The DHT (read-only: routing table, store, counters, size estimate).
    pub fn dht(&self) -> &Dht {
        &self.dht
    }

    /// Traffic counters.
    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    // ---- commands ----

    /// Joins the network through `contacts`; see [`Dht::bootstrap`].
    pub fn bootstrap(&mut self, now: Instant, contacts: impl IntoIterator<Item = Contact>) {
        self.dht.bootstrap(now, contacts)
    }

    /// Finds the k closest peers to `target`.
    pub fn lookup(&mut self, now: Instant, target: Key) -> Result<QueryId, DhtError> {
        self.dht.lookup(now, target)
    }

    /// Finds the record under `key`.
    pub fn get_record(&mut self, now: Instant, key: Key) -> Result<QueryId, DhtError> {
        self.dht.get_record(now, key)
    }

    /// Stores a signed record.
    pub fn put_record(&mut self, now: Instant, record: Record) -> Result<QueryId, DhtError> {
        self.dht.put_record(now, record)
    }

    /// Publishes (and keeps republishing) a record this node owns.
    pub fn publish(&mut self, now: Instant, what: Publish) -> Result<QueryId, DhtError> {
        self.dht.publish(now, what)
    }

    // ---- inputs ----

    /// A datagram (one encoded message) from `from`, reachable at `addr`. Malformed input is
    /// counted, traced and dropped.
    pub fn handle_datagram(&mut self, now: Instant, from: PeerId, addr: Addr, bytes: &[u8]) {
        self.stats.bytes_in += bytes.len() as u64;
        match wire::decode(bytes) {
            Ok(msg) => self.handle_message(now, from, addr, msg),
            Err(e) => self.on_malformed(&from, &e),
        }
    }

    fn on_malformed(&mut self, from: &PeerId, e: &DecodeError) {
        self.stats.malformed_in += 1;
        tracing::debug!(peer = %from.short(), error = %e, "dropped a malformed message");
    }

    /// A decoded message from `from`, reachable at `addr`.
    pub fn handle_message(&mut self, now: Instant, from: PeerId, addr: Addr, msg: Message) {
        self.stats.messages_in += 1;
        match msg {
            Message::Dht(m) => self.dht.handle_message(now, from, addr, m),
            Message::Route(_) => self.stats.unhandled_in += 1,
        }
    }

    /// The transport could not reach `peer`, or lost its connection.
    pub fn handle_peer_unreachable(&mut self, now: Instant, peer: &PeerId) {
        self.dht.handle_peer_unreachable(now, peer)
    }

    /// Call when [`poll_timeout`](Node::poll_timeout) is reached.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.dht.handle_timeout(now)
    }

    // ---- outputs ----

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let t = self.dht.poll_transmit()?;
        self.stats.messages_out += 1;
        Some(Transmit {
            to: t.to,
            addr: t.addr,
            message: Message::Dht(t.message),
        })
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.dht.poll_event().map(Event::Dht)
    }

    /// When [`handle_timeout`](Node::handle_timeout) must next be called: the earliest of the
    /// parts' timeouts.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.dht.poll_timeout()].into_iter().flatten().min()
    }
}
