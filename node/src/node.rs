//! [`Node`]: the protocol core of one peer, composing the DHT (and, as they land, gossip,
//! coordinates and routing) behind one calling contract.

use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::app::{ResolveError, ResolveId, Resolver, ServiceRef, Step};
use crate::coords::{Vivaldi, VivaldiConfig};
use crate::dht::{self, Dht, DhtConfig, DhtError, Publish, QueryId};
use crate::gossip::{Gossip, GossipConfig, GossipEvent, Topic};
use crate::id::{Key, Keypair, PeerId};
use crate::record::{Addr, Participation, Record, ServiceRecord};
use crate::routing::{
    self, Candidate, ReplyTo, RequestId, RouteError, RouteEvent, Router, RouterConfig, Strategy,
    Target, Trust,
};
use crate::wire::{self, Contact, DecodeError, DhtMessage, EncodeError, Message, Position};

/// Settings of a node. `Default` is a `routing` peer with production values.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeConfig {
    /// What the node does for the network.
    pub participation: Participation,
    /// The DHT's settings (`server` is derived from `participation` by [`NodeConfig::new`]).
    pub dht: DhtConfig,
    /// The router's settings (`relay` is derived from `participation`).
    pub router: RouterConfig,
    /// Whether others can dial this node (false behind a NAT: it then asks but does not
    /// answer DHT queries, relays nothing, and publishes its services through relays).
    pub reachable: bool,
    /// A service record this node resolved answers its next resolves of the same name or
    /// peer for this long, without a lookup (zero: every resolve asks the network). A route
    /// that fails drops it ([`Node::uncache`]).
    pub remember_resolved: Duration,
}

/// Most resolved records a node remembers ([`NodeConfig::remember_resolved`]).
pub const MAX_REMEMBERED: usize = 256;

impl NodeConfig {
    /// The settings of a node behind a NAT that cannot be dialled.
    pub fn behind_nat(mut self) -> Self {
        self.reachable = false;
        self.dht.server = false;
        self.router.relay = false;
        self
    }
}

/// How often a node behind a NAT pings its relays to keep its mappings open.
pub const NAT_KEEPALIVE: Duration = Duration::from_secs(10);
/// Relays a node behind a NAT lists in its service record.
pub const NAT_RELAYS: usize = 3;

impl NodeConfig {
    /// The production settings for a participation level.
    pub fn new(participation: Participation) -> Self {
        let mut dht = DhtConfig {
            server: participation.is_server(),
            ..DhtConfig::default()
        };
        if participation == Participation::Full {
            // Full peers keep larger tables: twice the entries per bucket, and four times the
            // records held for others.
            dht.bucket_size = 2 * dht.k;
            dht.max_records *= 4;
        }
        let router = RouterConfig {
            relay: participation.is_server(),
            ..RouterConfig::default()
        };
        Self {
            participation,
            dht,
            router,
            reachable: true,
            remember_resolved: Duration::from_secs(60),
        }
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
#[allow(clippy::large_enum_variant)] // few, short-lived
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// From the DHT.
    Dht(dht::Event),
    /// From the router.
    Route(RouteEvent),
    /// A [`Node::resolve`] finished.
    Resolved {
        /// The resolve.
        id: ResolveId,
        /// The service's verified record, or why there is none.
        result: Result<ServiceRecord, ResolveError>,
        /// How its last DHT lookup went.
        stats: dht::QueryStats,
    },
}

/// How to reach a service over a stream the driver carries ([`Node::plan_route`]).
#[derive(Clone, Debug, PartialEq)]
pub struct RoutePlan {
    /// The service.
    pub service: Contact,
    /// The relays, in order (empty: direct).
    pub relays: Vec<Contact>,
    /// Whether the service can be dialled directly (false behind a NAT).
    pub reachable: bool,
}

/// How [`Node::optimize`] ranks peers.
#[derive(Clone, Debug)]
pub enum Rank {
    /// By RTTs the driver measured (e.g. libp2p ping), ms; peers without one are not moved.
    Measured(BTreeMap<PeerId, f64>),
    /// By the RTT network coordinates predict (this node's and those peers sent), which also
    /// re-picks a NATed service's relays.
    Coordinates,
}

/// One routing-table change [`Node::optimize`] made.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Swap {
    /// The entry that left for the replacement cache.
    pub out: PeerId,
    /// Its RTT, ms.
    pub out_ms: f64,
    /// The replacement that took its place.
    pub into: PeerId,
    /// Its RTT, ms.
    pub into_ms: f64,
}

/// What [`Node::optimize`] changed.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Optimized {
    /// Routing-table entries replaced by nearer (lower-RTT) peers of the same bucket.
    pub swaps: Vec<Swap>,
    /// Table entries with an RTT to rank by.
    pub ranked: usize,
    /// Table entries.
    pub entries: usize,
    /// Bucket-refresh lookups started (they find fresh peers for the table).
    pub refreshing: usize,
    /// Behind a NAT, with [`Rank::Coordinates`]: the relays before.
    pub relays_before: Vec<PeerId>,
    /// And after (republished when they changed).
    pub relays_after: Vec<PeerId>,
}

/// What [`Node::forget_network`] forgot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Forgotten {
    /// Contacts in the DHT routing table.
    pub contacts: usize,
    /// Relays whose trust the router had learned.
    pub trusted_relays: usize,
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
    /// Valid health announcements not counted (unknown origin, replayed).
    pub health_refused: u64,
    /// Gossiped messages refused before gossip took them (bad signature, not drawn by the
    /// health lottery, stale, invalid record).
    pub gossip_refused: u64,
    /// Resolves answered from a record resolved lately ([`NodeConfig::remember_resolved`]).
    pub resolves_remembered: u64,
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
    router: Router,
    noise_key: [u8; 32],
    /// Coordinates peers reported in their DHT answers (bounded).
    positions: BTreeMap<PeerId, Position>,
    vivaldi: Vivaldi,
    vivaldi_rng: ChaCha8Rng,
    /// Behind a NAT: the relays named in our service record, and when to ping them next.
    nat_relays: Vec<Contact>,
    next_keepalive: Option<Instant>,
    /// The service record published behind a NAT, to republish when a relay is lost.
    nat_service: Option<ServiceRecord>,
    /// Relays that failed relay checks: (strikes, not listed again before). Each failure
    /// doubles the time out, each passed check takes a strike back: loss alone does not shut
    /// an honest relay out for good, and a relay that keeps dropping stays out.
    bad_relays: BTreeMap<PeerId, (u32, Instant)>,
    /// The time of the latest input (for work that follows an event).
    last_now: Option<Instant>,
    created: Instant,
    /// Gossip, for DHT servers that can be dialled (others could not receive it).
    gossip: Option<Gossip>,
    /// Where gossip peers are (from the routing table and from their messages).
    gossip_addrs: BTreeMap<PeerId, Addr>,
    next_gossip_sync: Option<Instant>,
    next_health: Option<Instant>,
    /// Network-size estimates other peers announced: origin → (estimate, when).
    /// The minute of this node's latest health announcement.
    health_minute: Option<u64>,
    /// The latest minute whose health announcement of each origin this node forwarded.
    health_forwarded: BTreeMap<PeerId, u64>,
    /// New health announcements this node may still forward: (tokens, as of).
    health_budget: Option<(f64, Instant)>,
    /// Announced estimates: origin → (estimate, when received, its minute).
    peer_estimates: BTreeMap<PeerId, (f64, Instant, u64)>,
    /// Service records announced by gossip (checked), newest per service.
    announced: BTreeMap<PeerId, Record>,
    resolver: Resolver,
    /// The key each resolve in flight was asked for.
    resolving: BTreeMap<ResolveId, Key>,
    /// Records resolved lately, by the key asked for: (record, kept until).
    remembered: BTreeMap<Key, (ServiceRecord, Instant)>,
    /// Finished resolves, to report.
    resolved: std::collections::VecDeque<Event>,
    stats: NodeStats,
}

/// Peers asked to run each relay check (it passes if any of them confirms).
const CHECK_HELPERS: usize = 2;
/// A relay that fails a check is not listed for this long after its first strike, twice as
/// long after each further one...
const RELAY_TIME_OUT: Duration = Duration::from_secs(300);
/// ...up to this.
const RELAY_TIME_OUT_MAX: Duration = Duration::from_secs(4 * 3600);
/// Most peers whose coordinates are remembered.
const MAX_POSITIONS: usize = 4096;
/// How often a node asks the health lottery whether it announces this minute (see
/// [`crate::health`]).
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(60);
/// How often the gossip peer set is refreshed from the routing table.
const GOSSIP_SYNC: Duration = Duration::from_secs(10);
/// A node forwards at most this many times the network's rate of new health announcements.
const HEALTH_FORWARD_BUDGET: f64 = 2.0;
/// Announced estimates more than this factor away from the node's own are not used.
const ESTIMATE_BAND: f64 = 2.0;
/// Announced estimates older than this are not used.
const ESTIMATE_MAX_AGE: Duration = Duration::from_secs(300);
/// Most announced estimates and service records kept.
const MAX_ANNOUNCED: usize = 1024;

pub use crate::health::Health;

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
        let gossips = config.participation.is_server() && config.reachable;
        let static_key = routing::static_key_for(&keypair.secret());
        let noise_key = static_key.public();
        let peer = keypair.peer_id();
        let dht = Dht::new(config.dht.clone(), keypair, seed, now, unix_now);
        let router = Router::new(
            config.router.clone(),
            peer,
            static_key,
            seed ^ 0x9e37_79b9_7f4a_7c15,
            now,
        );
        Self {
            config,
            dht,
            router,
            noise_key,
            positions: BTreeMap::new(),
            vivaldi: Vivaldi::new(VivaldiConfig::default()),
            vivaldi_rng: ChaCha8Rng::seed_from_u64(seed ^ 0x6a09_e667_f3bc_c908),
            nat_relays: vec![],
            next_keepalive: None,
            nat_service: None,
            bad_relays: BTreeMap::new(),
            last_now: None,
            created: now,
            gossip: gossips
                .then(|| Gossip::new(GossipConfig::default(), peer, seed ^ 0xbb67_ae85_84ca_a73b)),
            gossip_addrs: BTreeMap::new(),
            next_gossip_sync: Some(now),
            next_health: Some(now + HEALTH_INTERVAL),
            peer_estimates: BTreeMap::new(),
            health_budget: None,
            health_forwarded: BTreeMap::new(),
            health_minute: None,
            announced: BTreeMap::new(),
            resolver: Resolver::default(),
            resolving: BTreeMap::new(),
            remembered: BTreeMap::new(),
            resolved: std::collections::VecDeque::new(),
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

    /// Every record published from now on gets a seq above `floor` (a restarted owner hands in
    /// the [`Dht::last_seq`] of its previous run; see [`Dht::set_seq_floor`]).
    pub fn set_seq_floor(&mut self, floor: u64) {
        self.dht.set_seq_floor(floor);
    }

    /// The DHT (read-only: routing table, store, counters, size estimate).
    pub fn dht(&self) -> &Dht {
        &self.dht
    }

    fn dht_epoch(&self) -> Instant {
        self.created
    }

    /// Gossip (read-only), when this node takes part.
    pub fn gossip(&self) -> Option<&Gossip> {
        self.gossip.as_ref()
    }

    /// Traffic counters.
    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    // ---- commands ----

    /// Takes the end-to-end handshakes' ephemeral keys from `entropy` — the OS RNG, which the
    /// real driver must hand in. Left unset (the simulator), they come from the seed.
    pub fn set_handshake_entropy(&mut self, entropy: routing::Entropy) {
        self.router.set_handshake_entropy(entropy);
    }

    /// The wall clock reads `unix_now` at `now` (call after a suspend, and now and then): record
    /// expiries follow the wall clock, not the monotonic one.
    pub fn handle_wall_clock(&mut self, now: Instant, unix_now: u64) {
        self.dht.handle_wall_clock(now, unix_now);
    }

    /// Whether others can dial this node, as learned at run time (autonat, or the driver's own
    /// check). A reachable server answers DHT queries, relays and gossips; an unreachable one
    /// becomes a DHT client that relays nothing.
    pub fn set_reachable(&mut self, now: Instant, reachable: bool) {
        if self.config.reachable == reachable {
            return;
        }
        self.config.reachable = reachable;
        let server = reachable && self.config.participation.is_server();
        self.config.dht.server = server;
        self.config.router.relay = server;
        self.dht.set_server(server);
        self.router.set_relay(server);
        if server && self.gossip.is_none() {
            let seed = self.dht.random_u64();
            self.gossip = Some(Gossip::new(GossipConfig::default(), self.peer_id(), seed));
            self.next_gossip_sync = Some(now);
            self.next_health = Some(now + HEALTH_INTERVAL);
        } else if !server {
            self.gossip = None;
        }
        if reachable {
            self.nat_relays.clear();
            self.next_keepalive = None;
        }
    }

    /// Finds the verified service record of what `what` names (a name takes two lookups: the
    /// name record, then the service record). Finishes with [`Event::Resolved`].
    pub fn resolve(&mut self, now: Instant, what: &ServiceRef) -> Result<ResolveId, DhtError> {
        let key = match what {
            ServiceRef::Peer(p) => p.key(),
            ServiceRef::Name(n) => Key::of_name(n),
        };
        let unix = self.dht.unix_time(now);
        if let Some((record, until)) = self.remembered.get(&key)
            && now < *until
            && record.expires > unix
        {
            let id = self.resolver.next_id();
            self.stats.resolves_remembered += 1;
            self.resolved.push_back(Event::Resolved {
                id,
                result: Ok(record.clone()),
                stats: dht::QueryStats::default(),
            });
            return Ok(id);
        }
        let query = self.dht.get_record(now, key)?;
        let id = self.resolver.next_id();
        self.resolver.wait(query, id, what);
        if !self.config.remember_resolved.is_zero() {
            self.resolving.insert(id, key);
        }
        Ok(id)
    }

    /// Keeps `record`, resolved for `key`, for [`NodeConfig::remember_resolved`].
    fn remember(&mut self, key: Key, record: &ServiceRecord) {
        let now = self.last_now.unwrap_or(self.created);
        self.remembered.retain(|_, (_, until)| *until > now);
        if self.remembered.len() >= MAX_REMEMBERED
            && let Some(oldest) = self
                .remembered
                .iter()
                .min_by_key(|(_, (_, until))| *until)
                .map(|(k, _)| *k)
        {
            self.remembered.remove(&oldest);
        }
        let until = now + self.config.remember_resolved;
        self.remembered.insert(key, (record.clone(), until));
    }

    /// Drops the cached copies behind `what` (its name record, if a name, and `service`'s
    /// record), so the next [`resolve`](Node::resolve) asks the network: for a client whose
    /// route to the service failed (it may have moved). Nothing happens with caching off.
    pub fn uncache(&mut self, what: &ServiceRef, service: &PeerId) {
        if let ServiceRef::Name(n) = what {
            self.dht.uncache(&Key::of_name(n));
            self.remembered.remove(&Key::of_name(n));
        }
        self.dht.uncache(&service.key());
        self.remembered.remove(&service.key());
    }

    fn on_resolve_step(&mut self, step: Step) {
        match step {
            Step::Done(id, result, stats) => {
                if let (Some(key), Ok(record)) = (self.resolving.remove(&id), &result) {
                    self.remember(key, record);
                }
                self.resolved
                    .push_back(Event::Resolved { id, result, stats })
            }
            Step::LookUpService(id, peer) => {
                let now = self.last_now.unwrap_or(self.created);
                match self.dht.get_record(now, peer.key()) {
                    Ok(q) => self.resolver.wait(q, id, &ServiceRef::Peer(peer)),
                    Err(e) => self.resolved.push_back(Event::Resolved {
                        id,
                        result: Err(ResolveError::Busy(e.to_string())),
                        stats: dht::QueryStats::default(),
                    }),
                }
            }
        }
    }

    /// The route to take to `record`'s service by `strategy`, avoiding `exclude` (relays that
    /// failed already): the router's choice, with what it learned of each relay. The driver
    /// carries the stream and reports with [`route_outcome`](Node::route_outcome).
    pub fn plan_route(
        &mut self,
        record: &ServiceRecord,
        strategy: Strategy,
        exclude: &std::collections::BTreeSet<PeerId>,
    ) -> Result<RoutePlan, RouteError> {
        let (target, candidates, own) = self.target_of(record, strategy)?;
        if strategy != Strategy::Direct && target.noise_key.is_none() {
            return Err(RouteError::NoServiceKey);
        }
        let relays = self
            .router
            .plan(&target, strategy, candidates, own, exclude);
        Ok(RoutePlan {
            service: target.contact,
            relays,
            reachable: target.reachable,
        })
    }

    /// How a route from [`plan_route`](Node::plan_route) went.
    pub fn route_outcome(&mut self, relays: &[PeerId], ok: bool) {
        self.router.route_outcome(relays, ok);
    }

    /// Whether to relay one more stream circuit, with `open` relayed now.
    pub fn admit_circuit(&mut self, open: usize) -> bool {
        self.router.admit_circuit(open)
    }

    /// Starts an end-to-end handshake with a service (its record's `noise_key`), for a stream.
    pub fn start_e2e(
        &mut self,
        service_key: &[u8; 32],
    ) -> Result<(crate::e2e::Initiator, Vec<u8>), crate::e2e::E2eError> {
        self.router.start_e2e(service_key)
    }

    /// The responder of an end-to-end handshake, for a stream.
    pub fn e2e_responder(&mut self) -> crate::e2e::Responder {
        self.router.e2e_responder()
    }

    /// Behind a NAT: the relays named in the service record (the driver keeps reservations on
    /// them). Empty when reachable.
    pub fn nat_relays(&self) -> &[Contact] {
        &self.nat_relays
    }

    /// Whether the node believes others can dial it.
    pub fn is_reachable(&self) -> bool {
        self.config.reachable
    }

    /// Re-ranks the routing table by RTT (`beam network optimize`): in each bucket, while a
    /// replacement is more than 10 % nearer than the farthest entry, they trade places
    /// (Kademlia's proximity neighbour selection: lookups then go through nearer peers; the
    /// XOR structure is unchanged, since both are of the same bucket). Then refreshes every
    /// bucket, and with [`Rank::Coordinates`] re-picks a NATed service's relays by predicted
    /// RTT (republishing when they change).
    pub fn optimize(&mut self, now: Instant, rank: &Rank) -> Optimized {
        let own = self.coordinates();
        let rtt = |p: &PeerId| -> Option<f64> {
            match rank {
                Rank::Measured(m) => m.get(p).copied(),
                Rank::Coordinates => Some(routing::score::predict_ms(
                    &own?,
                    &self.positions.get(p)?.coords,
                )),
            }
        };
        let mut out = Optimized {
            entries: self.dht.table().len(),
            ..Optimized::default()
        };
        let mut plans = vec![];
        for (entries, replacements) in self.dht.table().buckets() {
            let mut ents: Vec<(f64, PeerId)> = entries
                .iter()
                .filter_map(|e| Some((rtt(&e.contact.peer)?, e.contact.peer)))
                .collect();
            out.ranked += ents.len();
            let mut reps: Vec<(f64, PeerId)> = replacements
                .iter()
                .filter_map(|c| Some((rtt(&c.peer)?, c.peer)))
                .collect();
            // Farthest entries first, nearest replacements first; ties by id (deterministic).
            ents.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            reps.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            for (e, r) in ents.into_iter().zip(reps) {
                if r.0 < e.0 * 0.9 {
                    plans.push(Swap {
                        out: e.1,
                        out_ms: e.0,
                        into: r.1,
                        into_ms: r.0,
                    });
                }
            }
        }
        for s in plans {
            if self.dht.table_mut().swap(&s.out, &s.into, now) {
                out.swaps.push(s);
            }
        }
        out.refreshing = self.dht.refresh_now(now);
        if matches!(rank, Rank::Coordinates) && !self.nat_relays.is_empty() {
            out.relays_before = self.nat_relays.iter().map(|c| c.peer).collect();
            self.replace_relays(now);
            out.relays_after = self.nat_relays.iter().map(|c| c.peer).collect();
        }
        out
    }

    /// Forgets the network, keeping the identity (`beam network reset`): the DHT's contacts
    /// and size samples, the relays' trust, the gossip peers, the records it resolved. The
    /// records this node publishes are kept (and go out again when the driver bootstraps
    /// anew); so are the relays a NATed service's record names, until it is published again.
    pub fn forget_network(&mut self, now: Instant) -> Forgotten {
        if let Some(g) = &mut self.gossip {
            g.forget_peers();
        }
        // What it resolved came from the network it forgets.
        self.remembered.clear();
        Forgotten {
            contacts: self.dht.forget_contacts(now),
            trusted_relays: self.router.forget(),
        }
    }

    /// A hole punch to `service` worked (the driver's DCUtR): routes to it go direct now.
    pub fn punched(&mut self, service: PeerId) {
        self.router.punched(service);
    }

    /// This node's end-to-end static public key (its service record's `noise_key`).
    pub fn noise_key(&self) -> [u8; 32] {
        self.noise_key
    }

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

    /// Publishes (and keeps republishing) a record this node owns. A service record gets the
    /// node's end-to-end key (so clients can reach it through relays) and its coordinates.
    pub fn publish(&mut self, now: Instant, what: Publish) -> Result<QueryId, DhtError> {
        let what = match what {
            Publish::Service(mut s) => {
                s.noise_key = Some(self.noise_key);
                s.coordinates = s.coordinates.or(self.coordinates());
                if !self.config.reachable {
                    // Behind a NAT: name the relays we keep open.
                    self.nat_relays = self.pick_relays(now);
                    s.reachable = false;
                    s.relays = self.nat_relays.clone();
                    self.nat_service = Some(s.clone());
                    self.keepalive(now);
                }
                Publish::Service(s)
            }
            other => other,
        };
        let is_service = matches!(what, Publish::Service(_));
        let id = self.dht.publish(now, what)?;
        if is_service {
            self.announce_own_service(now);
        }
        Ok(id)
    }

    fn announce_own_service(&mut self, now: Instant) {
        let key = self.peer_id().key();
        let unix = self.dht.unix_time(now);
        let Some(record) = self.dht.store().get(&key, unix).cloned() else {
            return;
        };
        let (Some(g), Ok(bytes)) = (self.gossip.as_mut(), postcard::to_stdvec(&record)) else {
            return;
        };
        let _ = g.publish(now, Topic::ServiceAnnouncement, bytes);
    }

    /// Service records learned from gossip (each checked), newest per service.
    pub fn announced_services(&self) -> impl Iterator<Item = &Record> {
        self.announced.values()
    }

    /// The estimates other servers announced that this node counts (origin, estimate), and
    /// its own from the DHT.
    pub fn size_estimates(&self) -> (Vec<(PeerId, f64)>, Option<f64>) {
        let now = self.last_now;
        let announced = self
            .peer_estimates
            .iter()
            .filter(|(_, (_, t, _))| {
                now.is_some_and(|n| n.saturating_duration_since(*t) <= ESTIMATE_MAX_AGE)
            })
            .map(|(p, (e, _, _))| (*p, *e))
            .collect();
        (announced, self.dht.size_estimate())
    }

    /// The node's estimate of the number of DHT servers online: the median of its own
    /// estimate and those announced by gossip in the last five minutes by origins it knows
    /// (see [`crate::health`]) that lie within a factor of 2 of its own.
    pub fn network_size_estimate(&self) -> Option<f64> {
        let now = self.last_now?;
        let own = self.dht.size_estimate();
        // Announcements refine this node's own measurement; one that disagrees with it by
        // more than ESTIMATE_BAND (a liar, or a peer that measured a smaller network while it
        // joined) is an outlier, not a vote.
        let in_band = |e: f64| own.is_none_or(|o| e >= o / ESTIMATE_BAND && e <= o * ESTIMATE_BAND);
        let mut v: Vec<f64> = self
            .peer_estimates
            .values()
            .filter(|(_, t, _)| now.saturating_duration_since(*t) <= ESTIMATE_MAX_AGE)
            .map(|(e, _, _)| *e)
            .filter(|&e| in_band(e))
            .chain(own)
            .filter(|e| e.is_finite() && *e > 0.0)
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        Some(if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        })
    }

    fn gossip_tick(&mut self, now: Instant) {
        let Some(g) = self.gossip.as_mut() else {
            return;
        };
        if self.next_gossip_sync.is_some_and(|t| t <= now) {
            self.next_gossip_sync = Some(now + GOSSIP_SYNC);
            for e in self.dht.table().iter() {
                self.gossip_addrs
                    .insert(e.contact.peer, e.contact.addr.clone());
                g.add_peer(e.contact.peer);
            }
            while self.gossip_addrs.len() > MAX_POSITIONS {
                self.gossip_addrs.pop_first();
            }
        }
        if self.next_health.is_some_and(|t| t <= now) {
            self.next_health = Some(now + HEALTH_INTERVAL);
            // Every announcement floods the whole network, so the network as a whole should
            // make about health::PER_MINUTE of them: a node announces in the minutes the
            // lottery draws it (see crate::health).
            let est = self
                .dht
                .size_estimate()
                .filter(|_| self.dht.size_estimate_settled());
            let minute = self.dht.unix_time(now) / 60;
            let me = self.dht.local_peer();
            if let Some(est) = est.filter(|&e| {
                self.health_minute.is_none_or(|m| minute > m) && crate::health::wins(&me, minute, e)
            }) {
                self.health_minute = Some(minute);
                let h = Health::signed(self.dht.keypair(), est as f32, minute);
                if let Ok(bytes) = postcard::to_stdvec(&h) {
                    let _ = g.publish(now, Topic::Health, bytes);
                }
            }
        }
        g.handle_timeout(now);
    }

    fn on_gossip(&mut self, now: Instant, e: GossipEvent) {
        let GossipEvent::Received {
            origin,
            topic,
            payload,
            ..
        } = e
        else {
            return;
        };
        match topic {
            Topic::Health => {
                if let Ok(h) = postcard::from_bytes::<Health>(&payload)
                    && h.size_estimate.is_finite()
                    && h.size_estimate > 0.0
                    && self.health_counts(&origin, &h)
                {
                    if self.peer_estimates.len() >= MAX_ANNOUNCED
                        && !self.peer_estimates.contains_key(&origin)
                    {
                        self.peer_estimates.pop_first();
                    }
                    self.peer_estimates
                        .insert(origin, (f64::from(h.size_estimate), now, h.minute));
                }
            }
            Topic::ServiceAnnouncement => {
                // Gossip does not authenticate its origin: the record's own signature does.
                let unix = self.dht.unix_time(now);
                let max_ttl = self.config.dht.max_record_ttl;
                if let Ok(r) = postcard::from_bytes::<Record>(&payload)
                    && matches!(r, Record::Service(_))
                    && r.check(unix, max_ttl).is_ok()
                {
                    let owner = r.owner();
                    if self
                        .announced
                        .get(&owner)
                        .is_none_or(|old| r.seq() > old.seq())
                    {
                        if self.announced.len() >= MAX_ANNOUNCED
                            && !self.announced.contains_key(&owner)
                        {
                            self.announced.pop_first();
                        }
                        self.announced.insert(owner, r);
                    }
                }
            }
        }
    }

    /// Whether a new gossiped message may spread: valid ([`Node::gossip_valid`]), and for
    /// health, the origin's first announcement of that minute, and — when this node has not
    /// exchanged DHT messages with the origin — within the budget of such announcements it
    /// forwards (a few times what the whole network makes). A flood of validly signed
    /// announcements under minted keys then costs the network a bounded share of its traffic,
    /// and cannot crowd out the announcements of peers a node knows, the only ones it counts.
    fn gossip_admit(
        &mut self,
        now: Instant,
        origin: &PeerId,
        topic: Topic,
        payload: &[u8],
    ) -> bool {
        if !self.gossip_valid(now, origin, topic, payload) {
            return false;
        }
        if topic != Topic::Health {
            return true;
        }
        let Ok(h) = postcard::from_bytes::<Health>(payload) else {
            return false;
        };
        if self
            .health_forwarded
            .get(origin)
            .is_some_and(|&m| m >= h.minute)
        {
            return false;
        }
        if self.health_forwarded.len() >= MAX_ANNOUNCED
            && !self.health_forwarded.contains_key(origin)
        {
            self.health_forwarded.pop_first();
        }
        self.health_forwarded.insert(*origin, h.minute);
        if self.knows(origin) {
            return true;
        }
        let rate = HEALTH_FORWARD_BUDGET * crate::health::PER_MINUTE / 60.0;
        let burst = HEALTH_FORWARD_BUDGET * crate::health::PER_MINUTE;
        let (tokens, at) = self.health_budget.get_or_insert((burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }

    /// Whether this node has exchanged DHT messages with `peer` (it is in the table, or
    /// answered a request of ours).
    fn knows(&self, peer: &PeerId) -> bool {
        self.positions.contains_key(peer) || self.dht.table().contains(peer)
    }

    /// Whether a gossiped message may spread (checked before gossip takes it): a health
    /// announcement signed by its origin, of this minute or a neighbour, drawn by the lottery
    /// (see [`crate::health`]); a service record valid now and announced by its owner.
    fn gossip_valid(&self, now: Instant, origin: &PeerId, topic: Topic, payload: &[u8]) -> bool {
        let unix = self.dht.unix_time(now);
        match topic {
            Topic::Health => {
                let Ok(h) = postcard::from_bytes::<Health>(payload) else {
                    return false;
                };
                let minute = unix / 60;
                let fresh =
                    h.minute.saturating_add(1) >= minute && h.minute <= minute.saturating_add(1);
                let drawn = self.dht.size_estimate().is_none_or(|own| {
                    crate::health::wins(origin, h.minute, own / crate::health::LOTTERY_SLACK)
                });
                h.size_estimate.is_finite()
                    && h.size_estimate > 0.0
                    && fresh
                    && drawn
                    && h.verify(origin)
            }
            Topic::ServiceAnnouncement => postcard::from_bytes::<Record>(payload).is_ok_and(|r| {
                matches!(r, Record::Service(_))
                    && r.owner() == *origin
                    && r.check(unix, self.config.dht.max_record_ttl).is_ok()
            }),
        }
    }

    /// Whether a (valid) health announcement of `origin` counts towards the size estimate:
    /// from a peer this node has exchanged DHT messages with (keys minted for a flood count for
    /// nothing), and newer than the one it replaces.
    fn health_counts(&mut self, origin: &PeerId, h: &Health) -> bool {
        let known = self.knows(origin);
        let newer = self
            .peer_estimates
            .get(origin)
            .is_none_or(|(_, _, m)| h.minute > *m);
        let ok = known && newer;
        if !ok {
            self.stats.health_refused += 1;
        }
        ok
    }

    /// This node's network coordinates, once it has measured any.
    pub fn coordinates(&self) -> Option<crate::record::Coordinates> {
        (self.vivaldi.samples() > 0).then(|| self.vivaldi.coordinates())
    }

    /// The coordinate system's state (error estimate, samples used).
    pub fn vivaldi(&self) -> &Vivaldi {
        &self.vivaldi
    }

    /// Sends `body` to the service of `record` (a record from a lookup: its signature and
    /// expiry were checked) by `strategy`. The answer comes as [`RouteEvent::Response`], or
    /// [`RouteEvent::Failed`].
    pub fn request(
        &mut self,
        now: Instant,
        record: &ServiceRecord,
        strategy: Strategy,
        body: Vec<u8>,
    ) -> Result<RequestId, RouteError> {
        let (target, candidates, own) = self.target_of(record, strategy)?;
        self.router
            .request(now, target, strategy, body, candidates, own)
    }

    /// The router's view of a service and of the relays it could use.
    #[allow(clippy::type_complexity)]
    fn target_of(
        &self,
        record: &ServiceRecord,
        strategy: Strategy,
    ) -> Result<(Target, Vec<Candidate>, Option<crate::record::Coordinates>), RouteError> {
        let Some(endpoint) = record.endpoints.first() else {
            return Err(RouteError::NoEndpoint);
        };
        let target = Target {
            contact: Contact {
                peer: record.peer,
                addr: endpoint.clone(),
            },
            noise_key: record.noise_key,
            relays: record.relays.clone(),
            reachable: record.reachable,
            coords: self
                .positions
                .get(&record.peer)
                .map(|p| p.coords)
                .or(record.coordinates),
        };
        let candidates: Vec<Candidate> = if strategy == Strategy::Direct {
            vec![]
        } else {
            self.dht
                .table()
                .iter()
                .map(|e| Candidate {
                    contact: e.contact.clone(),
                    coords: self.positions.get(&e.contact.peer).map(|p| p.coords),
                    trust: Trust::default(),
                    relays: true,
                    alive: e.failures == 0,
                })
                .collect()
        };
        Ok((target, candidates, self.coordinates()))
    }

    /// The relays for a node behind a NAT: the table entries with the lowest predicted RTT
    /// (its traffic goes through them) that have not failed a relay check. Not the XOR-nearest:
    /// a lookup of our own key is exactly where adversaries push themselves into the table.
    fn pick_relays(&self, now: Instant) -> Vec<Contact> {
        let own = self.coordinates();
        let mut cands: Vec<(f64, &Contact)> = self
            .dht
            .table()
            .iter()
            .filter(|e| e.failures == 0 && !self.relay_banned(now, &e.contact.peer))
            .map(|e| {
                let rtt = match (own, self.positions.get(&e.contact.peer)) {
                    (Some(a), Some(p)) => routing::score::predict_ms(&a, &p.coords),
                    _ => f64::INFINITY,
                };
                (rtt, &e.contact)
            })
            .collect();
        cands.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.peer.cmp(&b.1.peer)));
        cands
            .into_iter()
            .take(NAT_RELAYS)
            .map(|(_, c)| c.clone())
            .collect()
    }

    /// Behind a NAT: ping the relays (keeping the mappings open), check that they forward,
    /// and replace — and republish without — any that left the table or failed a check.
    fn keepalive(&mut self, now: Instant) {
        let lost = self
            .nat_relays
            .iter()
            .any(|r| !self.dht.table().contains(&r.peer) || self.relay_banned(now, &r.peer));
        if lost {
            self.replace_relays(now);
        }
        let me = self
            .nat_service
            .as_ref()
            .and_then(|s| s.endpoints.first().cloned())
            .map(|addr| Contact {
                peer: self.peer_id(),
                addr,
            });
        for c in self.nat_relays.clone() {
            self.dht.ping(now, c.clone());
            if let Some(me) = &me {
                let helpers = self.check_helpers();
                self.router.check_relay(now, c, me.clone(), &helpers);
            }
        }
        self.next_keepalive = (!self.nat_relays.is_empty()).then_some(now + NAT_KEEPALIVE);
    }

    /// Failed relay checks held against `relay` (each passed check takes one back).
    pub fn relay_strikes(&self, relay: &PeerId) -> u32 {
        self.bad_relays.get(relay).map_or(0, |(s, _)| *s)
    }

    /// Peers to run a relay check through: [`CHECK_HELPERS`] random table entries that are
    /// not our relays.
    fn check_helpers(&mut self) -> Vec<Contact> {
        let pool: Vec<Contact> = self
            .dht
            .table()
            .iter()
            .filter(|e| {
                e.failures == 0 && !self.nat_relays.iter().any(|r| r.peer == e.contact.peer)
            })
            .map(|e| e.contact.clone())
            .collect();
        let mut picked: Vec<Contact> = Vec::new();
        for _ in 0..CHECK_HELPERS * 4 {
            if picked.len() >= CHECK_HELPERS.min(pool.len()) {
                break;
            }
            let i = (self.dht.random_u64() % pool.len().max(1) as u64) as usize;
            if let Some(c) = pool.get(i)
                && !picked.iter().any(|p| p.peer == c.peer)
            {
                picked.push(c.clone());
            }
        }
        picked
    }

    fn relay_banned(&self, now: Instant, relay: &PeerId) -> bool {
        self.bad_relays
            .get(relay)
            .is_some_and(|(_, until)| *until > now)
    }

    fn replace_relays(&mut self, now: Instant) {
        let Some(s) = self.nat_service.clone() else {
            return;
        };
        let fresh = self.pick_relays(now);
        if fresh.is_empty() || fresh == self.nat_relays {
            return;
        }
        self.nat_relays = fresh;
        let s = ServiceRecord {
            relays: self.nat_relays.clone(),
            ..s
        };
        let _ = self.dht.publish(now, Publish::Service(s.clone()));
        self.nat_service = Some(s);
    }

    /// Answers a request this node received as a service ([`RouteEvent::Request`]).
    pub fn respond(&mut self, now: Instant, reply: ReplyTo, body: Vec<u8>) {
        self.router.respond(now, reply, body)
    }

    /// The router (read-only: counters, trust).
    pub fn router(&self) -> &Router {
        &self.router
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
        self.last_now = Some(now);
        self.stats.messages_in += 1;
        match msg {
            Message::Dht(m) => self.dht.handle_message(now, from, addr, m),
            Message::Route(m) => self
                .router
                .handle_message(now, Contact { peer: from, addr }, m),
            Message::Gossip(m) => {
                if let Some(mut g) = self.gossip.take() {
                    if !self.gossip_addrs.contains_key(&from)
                        && self.gossip_addrs.len() < MAX_POSITIONS
                    {
                        self.gossip_addrs.insert(from, addr);
                    }
                    // Gossip forwards what it takes to the whole network: a new message is
                    // checked before, so a forged one dies at the first honest peer.
                    let mut refused = 0;
                    g.handle_message_validated(now, from, m, |origin, topic, payload| {
                        let ok = self.gossip_admit(now, origin, topic, payload);
                        refused += u64::from(!ok);
                        ok
                    });
                    self.stats.gossip_refused += refused;
                    self.gossip = Some(g);
                } else {
                    self.stats.unhandled_in += 1;
                }
            }
        }
    }

    /// The transport could not reach `peer`, or lost its connection.
    pub fn handle_peer_unreachable(&mut self, now: Instant, peer: &PeerId) {
        self.last_now = Some(now);
        self.dht.handle_peer_unreachable(now, peer);
        self.router.handle_peer_unreachable(now, peer);
        self.router.handle_timeout(now);
        if let Some(g) = self.gossip.as_mut() {
            g.remove_peer(peer);
        }
    }

    /// Call when [`poll_timeout`](Node::poll_timeout) is reached.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = Some(now);
        self.dht.handle_timeout(now);
        self.router.handle_timeout(now);
        self.gossip_tick(now);
        if self.next_keepalive.is_some_and(|t| t <= now) {
            self.keepalive(now);
        }
        self.absorb_rtt_samples();
    }

    /// Takes what the DHT measured: peers' coordinates (for relay choice).
    fn absorb_rtt_samples(&mut self) {
        while let Some(s) = self.dht.poll_rtt_sample() {
            if let Some(p) = s.position {
                self.vivaldi
                    .observe(p.coords, p.error, s.rtt, &mut self.vivaldi_rng);
                if self.positions.len() >= MAX_POSITIONS && !self.positions.contains_key(&s.peer) {
                    self.positions.pop_first();
                }
                self.positions.insert(s.peer, p);
            }
        }
    }

    // ---- outputs ----

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.absorb_rtt_samples();
        if let Some((to, m)) = self.router.poll_transmit() {
            self.stats.messages_out += 1;
            return Some(Transmit {
                to: to.peer,
                addr: to.addr,
                message: Message::Route(m),
            });
        }
        while let Some((to, m)) = self.gossip.as_mut().and_then(Gossip::poll_transmit) {
            let Some(addr) = self.gossip_addrs.get(&to).cloned() else {
                continue; // a peer we have no address for: nothing to do but drop it
            };
            self.stats.messages_out += 1;
            return Some(Transmit {
                to,
                addr,
                message: Message::Gossip(m),
            });
        }
        let mut t = self.dht.poll_transmit()?;
        if let DhtMessage::Response { position, .. } = &mut t.message {
            *position = self.position();
        }
        self.stats.messages_out += 1;
        Some(Transmit {
            to: t.to,
            addr: t.addr,
            message: Message::Dht(t.message),
        })
    }

    /// This node's coordinates as sent in DHT answers.
    /// Always given, even before any sample: a fresh node's position (the origin, error 1)
    /// is what lets the others weigh it, and the system start at all.
    pub fn position(&self) -> Option<Position> {
        Some(Position {
            coords: self.vivaldi.coordinates(),
            error: self.vivaldi.error(),
        })
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        while let Some(e) = self.dht.poll_event() {
            match e {
                dht::Event::GetRecord {
                    id, record, stats, ..
                } if self.resolver.owns(&id) => {
                    if let Some(step) = self.resolver.on_record(id, record, stats) {
                        self.on_resolve_step(step);
                    }
                }
                e => return Some(Event::Dht(e)),
            }
        }
        if let Some(e) = self.resolved.pop_front() {
            return Some(e);
        }
        while let Some(e) = self.gossip.as_mut().and_then(Gossip::poll_event) {
            let now = self.last_now.unwrap_or_else(|| self.dht_epoch());
            self.on_gossip(now, e);
        }
        loop {
            match self.router.poll_event()? {
                RouteEvent::RelayChecked { relay, ok } => {
                    let Some(now) = self.last_now else { continue };
                    if ok {
                        if let Some((strikes, _)) = self.bad_relays.get_mut(&relay) {
                            *strikes = strikes.saturating_sub(1);
                        }
                    } else if self.nat_relays.iter().any(|r| r.peer == relay) {
                        if self.bad_relays.len() >= MAX_POSITIONS
                            && !self.bad_relays.contains_key(&relay)
                        {
                            self.bad_relays.pop_first();
                        }
                        let (strikes, until) = self.bad_relays.entry(relay).or_insert((0, now));
                        *strikes = strikes.saturating_add(1);
                        let out = RELAY_TIME_OUT
                            .saturating_mul(1 << (*strikes - 1).min(8))
                            .min(RELAY_TIME_OUT_MAX);
                        *until = now + out;
                        // Replace it now: clients must stop being sent to it.
                        self.replace_relays(now);
                    }
                }
                e => return Some(Event::Route(e)),
            }
        }
    }

    /// When [`handle_timeout`](Node::handle_timeout) must next be called: the earliest of the
    /// parts' timeouts.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.dht.poll_timeout(),
            self.router.poll_timeout(),
            self.next_keepalive,
            self.gossip.as_ref().and_then(Gossip::poll_timeout),
            self.gossip.as_ref().and(self.next_gossip_sync),
            self.gossip.as_ref().and(self.next_health),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

#[cfg(test)]
mod seq_floor_tests {
    use super::*;

    #[allow(clippy::disallowed_methods)] // a test needs a start instant; the node takes it as input
    fn t0() -> Instant {
        Instant::now()
    }

    fn record(kp: &Keypair) -> ServiceRecord {
        ServiceRecord {
            peer: kp.peer_id(),
            seq: 0,
            expires: 0,
            tor_address: None,
            endpoints: vec![Addr::new("/ip4/127.0.0.1/tcp/9")],
            relays: vec![],
            reachable: true,
            coordinates: None,
            participation: Participation::Routing,
            noise_key: None,
        }
    }

    /// A service restarted within the second of its last publish: seqs follow the wall clock in
    /// seconds, so without the floor its new record would carry the seq holders already have.
    #[test]
    fn a_restarted_owner_publishes_above_its_last_seq() {
        let kp = Keypair::from_secret([8; 32]);
        let (now, unix) = (t0(), 1_000_000);
        let node = |seed| {
            Node::new(
                NodeConfig::new(Participation::Routing),
                kp.clone(),
                seed,
                now,
                unix,
            )
        };
        let mut first = node(1);
        first
            .publish(now, Publish::Service(record(&kp)))
            .expect("publish");
        first
            .publish(now, Publish::Service(record(&kp)))
            .expect("republish");
        let last = first.dht().last_seq();
        assert_eq!(last, unix + 1, "wall-clock seconds, then +1");
        let mut again = node(2);
        again.set_seq_floor(last);
        again
            .publish(now, Publish::Service(record(&kp)))
            .expect("publish");
        assert_eq!(again.dht().last_seq(), last + 1);
        let mut unfloored = node(3);
        unfloored
            .publish(now, Publish::Service(record(&kp)))
            .expect("publish");
        assert!(
            unfloored.dht().last_seq() <= last,
            "what the floor prevents"
        );
    }
}
