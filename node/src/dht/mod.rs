//! Kademlia: the sans-IO DHT state machine.
//!
//! [`Dht`] holds the routing table ([`kbucket`]), the records held for others ([`store`]),
//! the records this node owns and republishes, and the lookups in progress ([`query`]).
//! It speaks the crate's vocabulary: `handle_message` / `handle_timeout` in, `poll_transmit`
//! / `poll_event` / `poll_timeout` out; commands (`lookup`, `get_record`, `put_record`,
//! `publish`) return a [`QueryId`] that their [`Event`] carries.
//!
//! Design choices:
//! - A request is failed after `request_timeout`; a failed peer is evicted from the table
//!   after `max_failures` in a row (never after one: see [`kbucket`]).
//! - Light peers (`server = false`) ask but never answer, and mark their requests
//!   [`Mode::Client`] so that servers keep them out of routing tables.
//! - Every record is checked ([`Record::check`]) where it is stored *and* where it is read
//!   in a lookup, so a lying peer can neither plant nor serve a forged or expired record.
//! - "Peers online" is estimated from the distances of the k closest peers that lookups
//!   return (see [`Dht::size_estimate`]); every completed lookup adds a sample.
//! - Everything is bounded: queries in flight, pending requests, the outgoing queue, the
//!   candidate set of each lookup, the record store. What is dropped is counted in
//!   [`DhtStats`].

pub mod kbucket;
pub mod query;
pub mod store;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::id::{Key, Keypair, PeerId};
use crate::record::{Addr, NameRecord, Record, RecordError, ServiceRecord};
use crate::wire::{Contact, DhtMessage, Mode, Request, Response};
use kbucket::{InsertOutcome, KBucketTable};
use query::{ClosestPeersIter, Next};
use store::{RecordCache, RecordStore};

/// DHT settings. `Default` is the production value.
#[derive(Clone, Debug, PartialEq)]
pub struct DhtConfig {
    /// Number of results of a lookup and replication factor of records (Kademlia's k).
    pub k: usize,
    /// Entries per k-bucket (and per replacement cache); k, or more for full peers, whose
    /// larger tables shorten everyone's lookups through them.
    pub bucket_size: usize,
    /// Requests in flight per lookup (Kademlia's α).
    pub alpha: usize,
    /// A request unanswered after this long has failed.
    pub request_timeout: Duration,
    /// The transport closes a connection idle this long (the driver's idle timeout). A
    /// request to a peer nothing passed to or from within it goes over a new connection, so
    /// its round trip includes the dial and the handshake: it is no RTT sample for the
    /// network coordinates.
    pub connection_idle: Duration,
    /// Consecutive failures after which a peer leaves the table (sooner if a replacement waits).
    pub max_failures: u8,
    /// A full bucket's oldest entry is pinged when a newcomer arrives and it has not been
    /// heard from for this long.
    pub stale_after: Duration,
    /// How often every bucket is refreshed with a lookup of a random key in its range.
    pub refresh_interval: Duration,
    /// The first refresh after the bootstrap comes this soon: the view of a node that just
    /// joined (often with the network) is the one most out of date.
    pub first_refresh_after: Duration,
    /// Lifetime of the records this node publishes.
    pub record_ttl: Duration,
    /// How often owned records are re-signed (new sequence number and expiry) and stored again.
    pub republish_interval: Duration,
    /// Records expiring further ahead than this are refused.
    pub max_record_ttl: Duration,
    /// Most records held for others.
    pub max_records: usize,
    /// Most queries in progress.
    pub max_queries: usize,
    /// Most requests awaiting an answer.
    pub max_pending_requests: usize,
    /// Most messages waiting in the outgoing queue.
    pub max_transmit_queue: usize,
    /// Whether this node answers queries (a DHT server) or only asks (a light client).
    pub server: bool,
    /// A record search ends once this many valid copies were received (the newest wins), or
    /// when the lookup ends. More than 1 defends against holders serving stale copies.
    pub record_quorum: usize,
    /// Most lookup samples the size estimate pools.
    pub size_samples: usize,
    /// Samples older than this (relative to the newest) are dropped from the size estimate.
    pub size_window: Duration,
    /// How many peers of one /24 (/48) the routing table takes.
    pub subnet_limits: kbucket::SubnetLimits,
    /// Most contacts of one /24 (/48) taken from one answer (0: no limit).
    pub answer_per_subnet: usize,
    /// Disjoint paths (S/Kademlia) of a publish's lookup, and of a record search that found
    /// nothing on one path and tries again (1: never).
    pub disjoint_paths: usize,
    /// `p2p.caching`: keep copies of the records this node resolves, answer its own repeated
    /// searches from them, and push each found record to the nearest peer on the search's
    /// path that did not have it (Kademlia's caching), which keeps it for others; `None`: off.
    pub cache: Option<CacheConfig>,
}

/// How records are cached (see [`DhtConfig::cache`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CacheConfig {
    /// Most copies kept.
    pub max_records: usize,
    /// How long a copy is kept at most (a record that changed within it may be served old:
    /// a client whose route fails drops its copy and searches again).
    pub ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_records: 1024,
            ttl: Duration::from_secs(300),
        }
    }
}

impl Default for DhtConfig {
    fn default() -> Self {
        Self {
            k: 20,
            bucket_size: 20,
            alpha: 3,
            request_timeout: Duration::from_secs(1),
            connection_idle: Duration::from_secs(60),
            max_failures: 2,
            stale_after: Duration::from_secs(60),
            refresh_interval: Duration::from_secs(600),
            first_refresh_after: Duration::from_secs(60),
            record_ttl: Duration::from_secs(3600),
            republish_interval: Duration::from_secs(1200),
            max_record_ttl: Duration::from_secs(24 * 3600),
            max_records: 10_000,
            max_queries: 64,
            max_pending_requests: 1024,
            max_transmit_queue: 4096,
            server: true,
            record_quorum: 3,
            size_samples: 32,
            size_window: Duration::from_secs(300),
            subnet_limits: kbucket::SubnetLimits::default(),
            answer_per_subnet: 2,
            disjoint_paths: 3,
            cache: None,
        }
    }
}

/// Identifies a query; the event that ends it carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueryId(pub u64);

/// A message to send.
#[derive(Clone, Debug, PartialEq)]
pub struct Transmit {
    /// The recipient.
    pub to: PeerId,
    /// Where to reach it.
    pub addr: Addr,
    /// The message.
    pub message: DhtMessage,
}

/// How a query went.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct QueryStats {
    /// Path length: hop count to the closest peer that answered.
    pub hops: u8,
    /// Requests sent.
    pub requests: usize,
    /// Time from start to end.
    pub duration: Duration,
}

/// What the DHT reports.
// Events are few and short-lived; boxing the record would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A [`Dht::lookup`] finished.
    Lookup {
        /// The query.
        id: QueryId,
        /// What was looked up.
        target: Key,
        /// The k closest live peers found, closest first.
        closest: Vec<Contact>,
        /// How it went.
        stats: QueryStats,
    },
    /// A [`Dht::get_record`] finished.
    GetRecord {
        /// The query.
        id: QueryId,
        /// The record key.
        key: Key,
        /// The record, if a live, correctly signed one was found.
        record: Option<Record>,
        /// How it went.
        stats: QueryStats,
    },
    /// A [`Dht::put_record`] or [`Dht::publish`] finished.
    PutRecord {
        /// The query.
        id: QueryId,
        /// The record key.
        key: Key,
        /// Holders that stored it.
        stored: usize,
        /// Holders that refused it, with the first reason given.
        refused: usize,
        /// Why the first refusing holder refused.
        refusal: Option<RecordError>,
        /// How it went.
        stats: QueryStats,
    },
    /// The first bootstrap lookup finished.
    Bootstrapped {
        /// Peers in the routing table.
        peers: usize,
    },
}

/// Why a command was not started.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DhtError {
    /// `max_queries` are already running.
    #[error("too many queries in progress ({0}); wait for some to finish")]
    TooManyQueries(usize),
    /// The record is refused locally already.
    #[error("the record is invalid: {0}")]
    InvalidRecord(RecordError),
    /// The name is not valid.
    #[error("`{0}` is not a valid name: use 1–63 of a-z, 0-9 and '-'")]
    InvalidName(String),
}

/// What a record the node publishes itself is.
#[derive(Clone, Debug, PartialEq)]
pub enum Publish {
    /// A service record (its `peer`, `seq` and `expires` are filled in by the DHT).
    Service(ServiceRecord),
    /// A name pointing at this node.
    Name(String),
}

/// Counters of what happened; for `beam status`, the simulator and debugging.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DhtStats {
    /// Requests sent.
    pub requests_sent: u64,
    /// Requests that timed out.
    pub requests_timed_out: u64,
    /// Requests answered.
    pub requests_answered: u64,
    /// Requests ignored because this node is a light client.
    pub requests_ignored_client_mode: u64,
    /// Answers that matched no pending request, or came from the wrong peer.
    pub unexpected_responses: u64,
    /// Records refused for storage.
    pub records_refused: u64,
    /// Records received in lookups that failed their checks.
    pub bad_records_seen: u64,
    /// Messages dropped because the outgoing queue was full.
    pub transmits_dropped: u64,
    /// Requests not sent because too many were pending.
    pub requests_dropped: u64,
    /// Record searches that found nothing and searched again over disjoint paths.
    pub disjoint_searches: u64,
    /// Record searches answered from this node's cache.
    pub cache_hits: u64,
    /// Copies pushed to a peer on a search's path.
    pub cache_pushed: u64,
    /// Copies taken from others into the cache.
    pub cache_stored: u64,
    /// FIND_VALUE requests answered from the cache.
    pub cache_served: u64,
}

#[derive(Clone, Copy, Debug)]
enum Purpose {
    Query(QueryId),
    Ping,
    /// A CACHE push (its answer only shows the peer is alive).
    Cache,
}

#[derive(Debug)]
struct PendingRequest {
    peer: PeerId,
    purpose: Purpose,
    sent: Instant,
    deadline: Instant,
    /// Sent while a connection to the peer was likely open (see `connection_idle`).
    warm: bool,
}

/// A round-trip time the DHT measured (request sent → answer received), with the
/// responder's coordinates if it gave them: the input of the network-coordinate system.
#[derive(Clone, Debug, PartialEq)]
pub struct RttSample {
    /// The responder.
    pub peer: PeerId,
    /// Request to answer.
    pub rtt: Duration,
    /// The responder's coordinates.
    pub position: Option<crate::wire::Position>,
}

/// First back-off before an emptied table falls back on the bootstrap contacts.
const REBOOTSTRAP_MIN: Duration = Duration::from_secs(5);
/// Longest back-off between such fallbacks.
const REBOOTSTRAP_MAX: Duration = Duration::from_secs(300);

/// Most RTT samples kept until the node reads them.
const MAX_RTT_SAMPLES: usize = 256;

#[derive(Debug)]
enum Internal {
    Bootstrap,
    Refresh,
}

#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum QueryKind {
    Lookup(Option<Internal>),
    /// The newest valid copy seen so far, and how many valid copies were seen.
    GetRecord {
        best: Option<Record>,
        copies: usize,
        /// The search again over disjoint paths: the requests of the first search.
        earlier: Option<usize>,
        /// The peers that answered with a valid copy (the cache push goes to another).
        had: BTreeSet<PeerId>,
    },
    PutRecord {
        record: Record,
        /// `None` while looking for the closest peers; then the STORE round.
        storing: Option<StoreRound>,
    },
}

#[derive(Debug, Default)]
struct StoreRound {
    pending: BTreeSet<PeerId>,
    stored: usize,
    refused: usize,
    refusal: Option<RecordError>,
}

#[derive(Debug)]
struct Query {
    kind: QueryKind,
    iter: ClosestPeersIter,
    started: Instant,
    /// A put's finished lookup phase: its hops and requests.
    lookup: Option<(u8, usize)>,
}

#[derive(Debug)]
struct Owned {
    what: Publish,
    seq: u64,
    next_republish: Instant,
}

/// The Kademlia DHT state machine. See the module docs.
#[derive(Debug)]
pub struct Dht {
    config: DhtConfig,
    keypair: Keypair,
    local: PeerId,
    table: KBucketTable,
    store: RecordStore,
    /// `None` when caching is off.
    cache: Option<RecordCache>,
    rng: ChaCha8Rng,
    epoch: Instant,
    unix_at_epoch: u64,
    next_request_id: u64,
    next_query_id: u64,
    requests: BTreeMap<u64, PendingRequest>,
    deadlines: BTreeSet<(Instant, u64)>,
    queries: BTreeMap<QueryId, Query>,
    owned: BTreeMap<Key, Owned>,
    /// Every record this node publishes gets a higher seq than this (see [`Dht::set_seq_floor`]).
    seq_floor: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    next_refresh: Option<Instant>,
    /// The contacts the node was bootstrapped with, and when it may next fall back on them
    /// (with the current back-off) if its table has emptied.
    bootstrap_contacts: Vec<Contact>,
    rebootstrap: Option<(Instant, Duration)>,
    /// The refresh round in progress: when it started, and its lookups still running.
    refresh_round: Option<(Instant, usize)>,
    /// Refresh rounds completed (each replaces the size samples with fresh ones).
    refresh_rounds_done: u32,
    next_sweep: Instant,
    /// (when, number of peers, distance of the farthest as a fraction of the key space).
    size_samples: VecDeque<(Instant, usize, f64)>,
    rtt_samples: VecDeque<RttSample>,
    /// When something last passed to or from each peer (pruned at `connection_idle`).
    exchanged: BTreeMap<PeerId, Instant>,
    stats: DhtStats,
}

impl Dht {
    /// A DHT node with identity `keypair`, randomness from `seed`, created at `now`, when the
    /// wall clock reads `unix_now` seconds (records carry wall-clock expiries).
    pub fn new(
        config: DhtConfig,
        keypair: Keypair,
        seed: u64,
        now: Instant,
        unix_now: u64,
    ) -> Self {
        let local = keypair.peer_id();
        let table = KBucketTable::new(
            local.key(),
            config.bucket_size,
            config.bucket_size,
            config.stale_after,
        )
        .with_subnet_limits(config.subnet_limits);
        let store = RecordStore::new(config.max_records, config.max_record_ttl);
        let cache = config
            .cache
            .map(|c| RecordCache::new(c.max_records, c.ttl, config.max_record_ttl));
        Self {
            table,
            store,
            cache,
            keypair,
            local,
            rng: ChaCha8Rng::seed_from_u64(seed),
            epoch: now,
            unix_at_epoch: unix_now,
            next_request_id: 1,
            next_query_id: 1,
            requests: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            queries: BTreeMap::new(),
            owned: BTreeMap::new(),
            seq_floor: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_refresh: None,
            bootstrap_contacts: vec![],
            rebootstrap: None,
            refresh_round: None,
            refresh_rounds_done: 0,
            next_sweep: now + Duration::from_secs(60),
            size_samples: VecDeque::new(),
            rtt_samples: VecDeque::new(),
            exchanged: BTreeMap::new(),
            stats: DhtStats::default(),
            config,
        }
    }

    // ---- getters -------------------------------------------------------------------------

    /// This node's id.
    pub fn local_peer(&self) -> PeerId {
        self.local
    }

    /// The configuration.
    pub fn config(&self) -> &DhtConfig {
        &self.config
    }

    /// This node's identity (to sign what it announces).
    pub(crate) fn keypair(&self) -> &Keypair {
        &self.keypair
    }

    /// The routing table.
    pub fn table(&self) -> &KBucketTable {
        &self.table
    }

    /// The records held for others.
    pub fn store(&self) -> &RecordStore {
        &self.store
    }

    /// Counters.
    pub fn stats(&self) -> &DhtStats {
        &self.stats
    }

    /// Queries in progress.
    pub fn queries_in_progress(&self) -> usize {
        self.queries.len()
    }

    /// Whether the size estimate rests on a full refresh round (the bootstrap lookup's own
    /// samples are too few to announce).
    pub fn size_estimate_settled(&self) -> bool {
        self.refresh_rounds_done >= 1
    }

    /// The wall clock reads `unix_now` at `now`: re-anchors record times. The monotonic clock
    /// stops while a machine is suspended and the wall clock does not, so without this a node
    /// that slept an hour would keep serving records that expired while it slept.
    pub fn handle_wall_clock(&mut self, now: Instant, unix_now: u64) {
        let elapsed = now.saturating_duration_since(self.epoch).as_secs();
        self.unix_at_epoch = unix_now.saturating_sub(elapsed);
    }

    /// Switches between DHT server (answers queries, may be put in others' tables) and client
    /// (asks only): reachability is learned at run time.
    pub fn set_server(&mut self, server: bool) {
        self.config.server = server;
    }

    /// Unix time (seconds) at `now`.
    pub fn unix_time(&self, now: Instant) -> u64 {
        self.unix_at_epoch + now.saturating_duration_since(self.epoch).as_secs()
    }

    /// Estimated number of DHT servers online, or `None` before any lookup finished.
    ///
    /// Each finished lookup is a sample: its k closest peers to a random target, the farthest
    /// at distance `d_k` (as a fraction of the key space). For N peers placed uniformly, the
    /// k-th closest lies at `d_k ~ Gamma(k, 1/N)`, so pooling samples gives the unbiased
    /// `N ≈ (Σk − 1) / Σd_k`, with a relative error of about `1/√Σk` (≈ 4 % for 32 lookups).
    pub fn size_estimate(&self) -> Option<f64> {
        let count: usize = self.size_samples.iter().map(|s| s.1).sum();
        let dist: f64 = self.size_samples.iter().map(|s| s.2).sum();
        (count > 1 && dist > 0.0).then(|| (count - 1) as f64 / dist)
    }

    // ---- commands ------------------------------------------------------------------------

    /// Adds `contacts` (e.g. configured bootstrap peers) and starts the bootstrap: a lookup of
    /// the node's own key, then a refresh of every bucket. [`Event::Bootstrapped`] follows.
    pub fn bootstrap(&mut self, now: Instant, contacts: impl IntoIterator<Item = Contact>) {
        self.bootstrap_contacts = contacts
            .into_iter()
            .filter(|c| c.peer != self.local)
            .take(self.config.k)
            .collect();
        for c in self.bootstrap_contacts.clone() {
            self.table.insert(c, now);
        }
        self.rebootstrap = Some((now + REBOOTSTRAP_MIN, REBOOTSTRAP_MIN));
        let target = self.local.key();
        let _ = self.start_query(now, target, QueryKind::Lookup(Some(Internal::Bootstrap)));
    }

    /// Starts a lookup of the k closest peers to `target`.
    pub fn lookup(&mut self, now: Instant, target: Key) -> Result<QueryId, DhtError> {
        self.start_query(now, target, QueryKind::Lookup(None))
    }

    /// Starts a search for the record under `key` (answered at once from the cache when
    /// caching is on and it holds a live copy).
    pub fn get_record(&mut self, now: Instant, key: Key) -> Result<QueryId, DhtError> {
        let unix = self.unix_time(now);
        // Never a cached copy of this node's own record (a peer could push an old one).
        let cached = self
            .cache
            .as_ref()
            .filter(|_| !self.owned.contains_key(&key))
            .and_then(|c| c.get(&key, unix))
            .cloned();
        if cached.is_some() {
            self.stats.cache_hits += 1;
        }
        // Our own record, or a cached copy: answer from memory, still through an event.
        if let Some(r) = cached.or_else(|| self.owned_record_now(&key, now)) {
            let id = self.next_query_id();
            self.events.push_back(Event::GetRecord {
                id,
                key,
                record: Some(r),
                stats: QueryStats::default(),
            });
            return Ok(id);
        }
        self.start_query(
            now,
            key,
            QueryKind::GetRecord {
                best: None,
                copies: 0,
                earlier: None,
                had: BTreeSet::new(),
            },
        )
    }

    /// Starts a refresh of every bucket now (one lookup each, farthest first); returns the
    /// lookups started.
    pub fn refresh_now(&mut self, now: Instant) -> usize {
        let before = self.queries.len();
        self.refresh_buckets(now);
        self.queries.len() - before
    }

    /// The routing table, to change in place (`Node::optimize`).
    pub(crate) fn table_mut(&mut self) -> &mut KBucketTable {
        &mut self.table
    }

    /// Drops the cached copy under `key`, if any (the next search asks the network).
    pub fn uncache(&mut self, key: &Key) -> bool {
        self.cache.as_mut().is_some_and(|c| c.remove(key))
    }

    /// The cache, when caching is on.
    pub fn cache(&self) -> Option<&RecordCache> {
        self.cache.as_ref()
    }

    /// Stores a signed record at the k closest peers to its key (and locally, when a server).
    pub fn put_record(&mut self, now: Instant, record: Record) -> Result<QueryId, DhtError> {
        record
            .check(self.unix_time(now), self.config.max_record_ttl)
            .map_err(DhtError::InvalidRecord)?;
        if self.config.server {
            let _ = self.store.put(record.clone(), self.unix_time(now));
        }
        let key = record.key();
        self.start_query(
            now,
            key,
            QueryKind::PutRecord {
                record,
                storing: None,
            },
        )
    }

    /// Publishes a record this node owns: signs it (fresh sequence number and expiry), stores
    /// it, and keeps republishing it every `republish_interval` until [`Dht::unpublish`].
    pub fn publish(&mut self, now: Instant, what: Publish) -> Result<QueryId, DhtError> {
        if let Publish::Name(n) = &what
            && !crate::record::valid_name(n)
        {
            return Err(DhtError::InvalidName(n.clone()));
        }
        let key = match &what {
            Publish::Service(_) => self.local.key(),
            Publish::Name(n) => Key::of_name(n),
        };
        let prev_seq = self
            .owned
            .get(&key)
            .map_or(self.seq_floor, |o| o.seq.max(self.seq_floor));
        let seq = (prev_seq + 1).max(self.unix_time(now));
        let record = self.sign_owned(&what, seq, now);
        let id = self.put_record(now, record)?;
        self.owned.insert(
            key,
            Owned {
                what,
                seq,
                next_republish: now + self.config.republish_interval,
            },
        );
        Ok(id)
    }

    /// Pings `contact` (a liveness check; behind a NAT it also keeps the mapping open so that
    /// the peer can reach this node).
    pub fn ping(&mut self, now: Instant, contact: Contact) {
        self.send_request(now, contact, Request::Ping, Purpose::Ping);
    }

    /// Makes every record published from now on carry a seq above `floor`. Seqs follow the wall
    /// clock in seconds, so an owner restarted within the second(s) of its last publish would
    /// otherwise publish a seq the holders already have, and be refused: a driver that keeps
    /// [`Dht::last_seq`] across restarts hands it back here.
    pub fn set_seq_floor(&mut self, floor: u64) {
        self.seq_floor = self.seq_floor.max(floor);
    }

    /// The highest seq this node has published (0 before the first publish).
    pub fn last_seq(&self) -> u64 {
        self.owned
            .values()
            .map(|o| o.seq)
            .max()
            .unwrap_or(0)
            .max(self.seq_floor)
    }

    /// Stops republishing the record under `key`; holders drop it when it expires.
    pub fn unpublish(&mut self, key: &Key) -> bool {
        self.owned.remove(key).is_some()
    }

    /// Forgets every contact (the routing table, its replacement caches) and the samples the
    /// network-size estimate and RTTs came from. Keeps the records this node publishes and
    /// the records it holds for others (they expire on their own). The next
    /// [`bootstrap`](Dht::bootstrap) joins afresh. Returns how many contacts were forgotten.
    pub fn forget_contacts(&mut self, now: Instant) -> usize {
        // The work in flight ends first (failed, its events sent), so that no answer to it
        // puts a forgotten contact back.
        let n = self.table.len();
        self.table.clear();
        let queries: Vec<QueryId> = self.queries.keys().copied().collect();
        for id in queries {
            self.finish(now, id, None);
        }
        // A record search that found nothing searches again (over the now-empty table): it
        // ends at once.
        let again: Vec<QueryId> = self.queries.keys().copied().collect();
        for id in again {
            self.finish(now, id, None);
        }
        self.requests.clear();
        self.deadlines.clear();
        self.size_samples.clear();
        self.rtt_samples.clear();
        self.exchanged.clear();
        self.refresh_round = None;
        self.rebootstrap = None;
        n
    }

    fn sign_owned(&self, what: &Publish, seq: u64, now: Instant) -> Record {
        let expires = self.unix_time(now) + self.config.record_ttl.as_secs();
        match what {
            Publish::Service(s) => ServiceRecord {
                peer: self.local,
                seq,
                expires,
                ..s.clone()
            }
            .sign(&self.keypair),
            Publish::Name(n) => NameRecord {
                name: n.clone(),
                peer: self.local,
                seq,
                expires,
            }
            .sign(&self.keypair),
        }
    }

    fn owned_record_now(&self, key: &Key, now: Instant) -> Option<Record> {
        let o = self.owned.get(key)?;
        // The live copy in our store, if we are a server; otherwise sign one afresh.
        self.store
            .get(key, self.unix_time(now))
            .cloned()
            .or_else(|| Some(self.sign_owned(&o.what, o.seq, now)))
    }

    fn next_query_id(&mut self) -> QueryId {
        let id = QueryId(self.next_query_id);
        self.next_query_id += 1;
        id
    }

    fn start_query(
        &mut self,
        now: Instant,
        target: Key,
        kind: QueryKind,
    ) -> Result<QueryId, DhtError> {
        if self.queries.len() >= self.config.max_queries {
            return Err(DhtError::TooManyQueries(self.queries.len()));
        }
        let id = self.next_query_id();
        let known = self.table.closest(&target, self.config.k);
        let paths = match kind {
            QueryKind::PutRecord { .. } => self.config.disjoint_paths,
            _ => 1,
        };
        let iter =
            ClosestPeersIter::disjoint(target, known, self.config.k, self.config.alpha, paths);
        self.queries.insert(
            id,
            Query {
                kind,
                iter,
                started: now,
                lookup: None,
            },
        );
        self.advance(now, id);
        Ok(id)
    }

    // ---- inputs --------------------------------------------------------------------------

    /// A message from `from`, reachable at `addr`.
    pub fn handle_message(&mut self, now: Instant, from: PeerId, addr: Addr, msg: DhtMessage) {
        if from == self.local {
            return;
        }
        self.exchanged.insert(from, now);
        match msg {
            DhtMessage::Request { id, mode, body } => {
                if !self.config.server {
                    self.stats.requests_ignored_client_mode += 1;
                    return;
                }
                let answer = self.answer(now, &from, body);
                self.stats.requests_answered += 1;
                self.send(Transmit {
                    to: from,
                    addr: addr.clone(),
                    message: DhtMessage::Response {
                        id,
                        body: answer,
                        position: None,
                    },
                });
                if mode == Mode::Server {
                    self.saw_server(now, Contact { peer: from, addr });
                }
            }
            DhtMessage::Response { id, body, position } => {
                let Some(pending) = self.requests.get(&id) else {
                    self.stats.unexpected_responses += 1;
                    return;
                };
                if pending.peer != from {
                    self.stats.unexpected_responses += 1;
                    return;
                }
                let Some(pending) = self.requests.remove(&id) else {
                    return;
                };
                self.deadlines.remove(&(pending.deadline, id));
                self.saw_server(now, Contact { peer: from, addr });
                // Over a new connection the round trip includes its setup: no sample.
                if pending.warm && self.rtt_samples.len() < MAX_RTT_SAMPLES {
                    self.rtt_samples.push_back(RttSample {
                        peer: from,
                        rtt: now.saturating_duration_since(pending.sent),
                        position,
                    });
                }
                if let Purpose::Query(q) = pending.purpose {
                    self.on_query_response(now, q, from, body);
                }
            }
        }
    }

    /// Call when `poll_timeout` is reached.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(p) = self.requests.remove(&id) else {
                continue;
            };
            self.stats.requests_timed_out += 1;
            tracing::debug!(peer = %p.peer.short(), "DHT request timed out");
            // A CACHE push unanswered (a peer that does not know CACHE) says little of the
            // peer as a DHT server.
            if !matches!(p.purpose, Purpose::Cache) {
                self.table.on_failure(&p.peer, self.config.max_failures);
            }
            if let Purpose::Query(q) = p.purpose {
                self.on_query_failure(now, q, p.peer);
            }
        }
        // A table that emptied (every known peer failed) falls back on the bootstrap
        // contacts, with exponential back-off.
        if let Some((at, backoff)) = self.rebootstrap
            && at <= now
        {
            if self.table.is_empty() && !self.bootstrap_contacts.is_empty() {
                for c in self.bootstrap_contacts.clone() {
                    self.table.insert(c, now);
                }
                let target = self.local.key();
                let _ = self.start_query(now, target, QueryKind::Lookup(Some(Internal::Bootstrap)));
                let backoff = (backoff * 2).min(REBOOTSTRAP_MAX);
                self.rebootstrap = Some((now + backoff, backoff));
            } else {
                self.rebootstrap = Some((now + REBOOTSTRAP_MIN, REBOOTSTRAP_MIN));
            }
        }
        if self.next_refresh.is_some_and(|t| t <= now) {
            self.next_refresh = Some(now + self.config.refresh_interval);
            self.refresh_buckets(now);
        }
        let due: Vec<Key> = self
            .owned
            .iter()
            .filter(|(_, o)| o.next_republish <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            if let Some(o) = self.owned.get_mut(&key) {
                o.seq += 1;
                o.next_republish = now + self.config.republish_interval;
                let (what, seq) = (o.what.clone(), o.seq);
                let record = self.sign_owned(&what, seq, now);
                let _ = self.put_record(now, record);
            }
        }
        if self.next_sweep <= now {
            self.next_sweep = now + Duration::from_secs(60);
            let unix = self.unix_time(now);
            self.store.expire(unix);
            if let Some(c) = &mut self.cache {
                c.expire(unix);
            }
            let idle = self.config.connection_idle;
            self.exchanged
                .retain(|_, t| now.saturating_duration_since(*t) < idle);
        }
    }

    /// A transport-level signal that `peer` cannot be reached (connection refused or lost).
    pub fn handle_peer_unreachable(&mut self, now: Instant, peer: &PeerId) {
        let ids: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, p)| p.peer == *peer)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(p) = self.requests.remove(&id) {
                self.deadlines.remove(&(p.deadline, id));
                if let Purpose::Query(q) = p.purpose {
                    self.on_query_failure(now, q, p.peer);
                }
            }
        }
        self.table.remove(peer);
    }

    // ---- outputs -------------------------------------------------------------------------

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next measured round-trip time.
    pub fn poll_rtt_sample(&mut self) -> Option<RttSample> {
        self.rtt_samples.pop_front()
    }

    /// When `handle_timeout` must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = Some(self.next_sweep);
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        consider(self.deadlines.first().map(|(d, _)| *d));
        consider(self.next_refresh);
        consider(self.rebootstrap.map(|r| r.0));
        consider(self.owned.values().map(|o| o.next_republish).min());
        t
    }

    // ---- internals -----------------------------------------------------------------------

    fn send(&mut self, t: Transmit) {
        if self.transmits.len() >= self.config.max_transmit_queue {
            self.stats.transmits_dropped += 1;
            tracing::debug!(to = ?t.to, "outgoing queue full, message dropped");
            return;
        }
        self.transmits.push_back(t);
    }

    fn send_request(&mut self, now: Instant, to: Contact, body: Request, purpose: Purpose) -> bool {
        if self.requests.len() >= self.config.max_pending_requests {
            self.stats.requests_dropped += 1;
            return false;
        }
        let id = self.next_request_id;
        self.next_request_id += 1;
        let deadline = now + self.config.request_timeout;
        let warm = self.connection_open(now, &to.peer);
        self.exchanged.insert(to.peer, now);
        self.requests.insert(
            id,
            PendingRequest {
                peer: to.peer,
                purpose,
                sent: now,
                deadline,
                warm,
            },
        );
        self.deadlines.insert((deadline, id));
        self.stats.requests_sent += 1;
        let mode = if self.config.server {
            Mode::Server
        } else {
            Mode::Client
        };
        self.send(Transmit {
            to: to.peer,
            addr: to.addr,
            message: DhtMessage::Request { id, mode, body },
        });
        true
    }

    /// Whether a connection to `peer` is likely open: something passed within
    /// `connection_idle`.
    fn connection_open(&self, now: Instant, peer: &PeerId) -> bool {
        self.exchanged
            .get(peer)
            .is_some_and(|t| now.saturating_duration_since(*t) < self.config.connection_idle)
    }

    fn saw_server(&mut self, now: Instant, contact: Contact) {
        if let InsertOutcome::Full { stale: Some(old) } = self.table.insert(contact, now) {
            // Kademlia's liveness check: the oldest entry keeps its place only if it answers.
            let already = self
                .requests
                .values()
                .any(|p| p.peer == old.peer && matches!(p.purpose, Purpose::Ping));
            if !already {
                self.send_request(now, old, Request::Ping, Purpose::Ping);
            }
        }
    }

    fn answer(&mut self, now: Instant, from: &PeerId, body: Request) -> Response {
        let k = self.config.k;
        let closest = |table: &KBucketTable, target: &Key| -> Vec<Contact> {
            let mut c = table.closest(target, k + 1);
            c.retain(|c| c.peer != *from);
            c.truncate(k);
            c
        };
        match body {
            Request::Ping => Response::Pong,
            Request::FindNode { target } => Response::Nodes {
                closer: closest(&self.table, &target),
            },
            Request::FindValue { key } => {
                let unix = self.unix_time(now);
                let held = self.store.get(&key, unix).or_else(|| {
                    let c = self.cache.as_ref()?.get(&key, unix)?;
                    self.stats.cache_served += 1;
                    Some(c)
                });
                match held {
                    Some(r) => Response::Value {
                        record: Some(r.clone()),
                        closer: vec![],
                    },
                    None => Response::Value {
                        record: None,
                        closer: closest(&self.table, &key),
                    },
                }
            }
            Request::Store { record } => {
                let result = self.store.put(record, self.unix_time(now));
                if let Err(e) = result {
                    self.stats.records_refused += 1;
                    tracing::debug!(error = %e, "refused a record");
                }
                Response::Stored { result }
            }
            Request::Cache { record } => {
                let unix = self.unix_time(now);
                let result = match &mut self.cache {
                    None => Err(RecordError::NotCaching),
                    // Our own record is ours to publish: a pushed copy could only be older.
                    Some(_) if self.owned.contains_key(&record.key()) => Err(RecordError::Stale),
                    Some(c) => c.put(record, unix),
                };
                if result.is_ok() {
                    self.stats.cache_stored += 1;
                }
                Response::Stored { result }
            }
        }
    }

    fn on_query_response(&mut self, now: Instant, id: QueryId, from: PeerId, body: Response) {
        let unix = self.unix_time(now);
        let max_ttl = self.config.max_record_ttl;
        let record_quorum = self.config.record_quorum;
        let local = self.local;
        let k = self.config.k;
        let (per_subnet, private) = (
            self.config.answer_per_subnet,
            self.config.subnet_limits.limit_private,
        );
        let mut seen_nets: BTreeMap<crate::record::Subnet, usize> = BTreeMap::new();
        // At most `per_subnet` contacts of one network from one answer.
        let mut fits = move |c: &Contact| {
            let Some(net) = c.addr.subnet(private).filter(|_| per_subnet > 0) else {
                return true;
            };
            let n = seen_nets.entry(net).or_insert(0);
            *n += 1;
            *n <= per_subnet
        };
        let Some(q) = self.queries.get_mut(&id) else {
            return;
        };
        let mut found = None;
        match (&mut q.kind, body) {
            (
                QueryKind::PutRecord {
                    storing: Some(round),
                    ..
                },
                Response::Stored { result },
            ) => {
                if round.pending.remove(&from) {
                    match result {
                        Ok(()) => round.stored += 1,
                        Err(e) => {
                            round.refused += 1;
                            round.refusal.get_or_insert(e);
                        }
                    }
                }
            }
            (
                QueryKind::Lookup(_) | QueryKind::PutRecord { storing: None, .. },
                Response::Nodes { closer },
            ) => {
                let closer = closer
                    .into_iter()
                    .filter(|c| c.peer != local && fits(c))
                    .take(k);
                q.iter.on_success(&from, closer);
            }
            (
                QueryKind::GetRecord {
                    best, copies, had, ..
                },
                Response::Value { record, closer },
            ) => {
                let target = *q.iter.target();
                match record {
                    Some(r) if r.key() == target && r.check(unix, max_ttl).is_ok() => {
                        q.iter.on_success(&from, std::iter::empty());
                        had.insert(from);
                        // Keep the newest: a holder may serve a stale (older, still signed)
                        // copy. Enough copies agreeing ends the search early.
                        *copies += 1;
                        if best.as_ref().is_none_or(|b| r.seq() > b.seq()) {
                            *best = Some(r);
                        }
                        if *copies >= record_quorum {
                            found = best.take();
                        }
                    }
                    Some(_) => {
                        self.stats.bad_records_seen += 1;
                        q.iter.on_failure(&from);
                    }
                    None => {
                        let closer = closer
                            .into_iter()
                            .filter(|c| c.peer != local && fits(c))
                            .take(k);
                        q.iter.on_success(&from, closer);
                    }
                }
            }
            _ => {
                // An answer of the wrong kind: treat the peer as failed for this query.
                self.stats.unexpected_responses += 1;
                q.iter.on_failure(&from);
            }
        }
        if let Some(record) = found {
            self.finish(now, id, Some(record));
        } else {
            self.advance(now, id);
        }
    }

    fn on_query_failure(&mut self, now: Instant, id: QueryId, peer: PeerId) {
        let Some(q) = self.queries.get_mut(&id) else {
            return;
        };
        match &mut q.kind {
            QueryKind::PutRecord {
                storing: Some(round),
                ..
            } => {
                round.pending.remove(&peer);
            }
            _ => q.iter.on_failure(&peer),
        }
        self.advance(now, id);
    }

    /// Sends what the query wants sent; finishes it when it is done.
    fn advance(&mut self, now: Instant, id: QueryId) {
        loop {
            let Some(q) = self.queries.get_mut(&id) else {
                return;
            };
            if let QueryKind::PutRecord {
                storing: Some(round),
                ..
            } = &q.kind
            {
                if round.pending.is_empty() {
                    self.finish(now, id, None);
                }
                return;
            }
            match q.iter.next_step() {
                Next::Contact(c) => {
                    let body = match &q.kind {
                        QueryKind::GetRecord { .. } => Request::FindValue {
                            key: *q.iter.target(),
                        },
                        _ => Request::FindNode {
                            target: *q.iter.target(),
                        },
                    };
                    if !self.send_request(now, c.clone(), body, Purpose::Query(id))
                        && let Some(q) = self.queries.get_mut(&id)
                    {
                        q.iter.on_failure(&c.peer);
                    }
                }
                Next::Wait => return,
                Next::Finished => {
                    if let Some(q) = self.queries.get_mut(&id)
                        && let QueryKind::PutRecord { record, storing } = &mut q.kind
                    {
                        // The lookup is done: STORE at the k closest.
                        let record = record.clone();
                        *storing = Some(StoreRound::default());
                        let finished = std::mem::replace(
                            &mut q.iter,
                            ClosestPeersIter::new(record.key(), [], 1, 1),
                        );
                        q.lookup = Some((finished.hops(), finished.requests()));
                        let closest = finished.into_result();
                        self.note_size_sample(now, &record.key(), &closest);
                        let mut sent = BTreeSet::new();
                        for c in closest {
                            let peer = c.peer;
                            let body = Request::Store {
                                record: record.clone(),
                            };
                            if self.send_request(now, c, body, Purpose::Query(id)) {
                                sent.insert(peer);
                            }
                        }
                        if let Some(Query {
                            kind:
                                QueryKind::PutRecord {
                                    storing: Some(round),
                                    ..
                                },
                            ..
                        }) = self.queries.get_mut(&id)
                        {
                            round.pending = sent;
                        }
                        continue;
                    }
                    self.finish(now, id, None);
                    return;
                }
            }
        }
    }

    fn finish(&mut self, now: Instant, id: QueryId, found: Option<Record>) {
        let Some(q) = self.queries.remove(&id) else {
            return;
        };
        // Drop the requests still pending for this query: their answers are no longer needed.
        let stale: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, p)| matches!(p.purpose, Purpose::Query(x) if x == id))
            .map(|(rid, _)| *rid)
            .collect();
        for rid in stale {
            if let Some(p) = self.requests.remove(&rid) {
                self.deadlines.remove(&(p.deadline, rid));
            }
        }
        let target = *q.iter.target();
        if let QueryKind::GetRecord {
            best: None,
            earlier: None,
            ..
        } = q.kind
            && found.is_none()
            && self.config.disjoint_paths > 1
        {
            // Nothing found on one path: search again over disjoint ones, from scratch (a
            // path that colluders captured cannot reach into the others).
            self.stats.disjoint_searches += 1;
            let known = self.table.closest(&target, self.config.k);
            let iter = ClosestPeersIter::disjoint(
                target,
                known,
                self.config.k,
                self.config.alpha,
                self.config.disjoint_paths,
            );
            let requests = q.iter.requests();
            self.queries.insert(
                id,
                Query {
                    kind: QueryKind::GetRecord {
                        best: None,
                        copies: 0,
                        earlier: Some(requests),
                        had: BTreeSet::new(),
                    },
                    iter,
                    started: q.started,
                    lookup: None,
                },
            );
            self.advance(now, id);
            return;
        }
        let (hops, mut requests) = q.lookup.unwrap_or((q.iter.hops(), q.iter.requests()));
        if let QueryKind::GetRecord {
            earlier: Some(e), ..
        } = q.kind
        {
            requests += e;
        }
        let mut stats = QueryStats {
            hops,
            requests,
            duration: now.saturating_duration_since(q.started),
        };
        match q.kind {
            QueryKind::Lookup(internal) => {
                let closest = q.iter.into_result();
                self.note_size_sample(now, &target, &closest);
                match internal {
                    None => self.events.push_back(Event::Lookup {
                        id,
                        target,
                        closest,
                        stats,
                    }),
                    Some(Internal::Bootstrap) => {
                        self.events.push_back(Event::Bootstrapped {
                            peers: self.table.len(),
                        });
                        self.refresh_buckets(now);
                        self.next_refresh = Some(now + self.config.first_refresh_after);
                    }
                    Some(Internal::Refresh) => {
                        if let Some((started, pending)) = &mut self.refresh_round {
                            *pending = pending.saturating_sub(1);
                            if *pending == 0 {
                                // A whole round of fresh samples: older ones describe a network
                                // that may have changed since.
                                let started = *started;
                                self.size_samples.retain(|s| s.0 >= started);
                                self.refresh_round = None;
                                self.refresh_rounds_done += 1;
                            }
                        }
                    }
                }
            }
            QueryKind::GetRecord { best, had, .. } => {
                let found = found.or(best);
                let closest = q.iter.into_result();
                if found.is_none() {
                    self.note_size_sample(now, &target, &closest);
                }
                let unix = self.unix_time(now);
                if let (Some(r), Some(cache)) = (&found, &mut self.cache) {
                    let _ = cache.put(r.clone(), unix);
                    // Kademlia's caching: the nearest peer asked that did not have it keeps a
                    // copy, so the next search for it from around here ends sooner.
                    if let Some(c) = closest.into_iter().find(|c| !had.contains(&c.peer)) {
                        let body = Request::Cache { record: r.clone() };
                        if self.send_request(now, c, body, Purpose::Cache) {
                            self.stats.cache_pushed += 1;
                        }
                    }
                }
                self.events.push_back(Event::GetRecord {
                    id,
                    key: target,
                    record: found,
                    stats,
                });
            }
            QueryKind::PutRecord { record, storing } => {
                let round = storing.unwrap_or_default();
                stats.requests += round.stored + round.refused;
                self.events.push_back(Event::PutRecord {
                    id,
                    key: record.key(),
                    stored: round.stored,
                    refused: round.refused,
                    refusal: round.refusal,
                    stats,
                });
            }
        }
    }

    /// One lookup of a random key in every bucket from the farthest down to the nearest
    /// non-empty one: keeps every bucket populated with live peers.
    fn refresh_buckets(&mut self, now: Instant) {
        let Some(nearest) = self.table.bucket_indices().next() else {
            return;
        };
        let local_key = self.local.key();
        let mut started = 0;
        for b in (nearest..256).rev() {
            if self.queries.len() >= self.config.max_queries / 2 {
                break;
            }
            let target = local_key.random_in_bucket(b, &mut self.rng);
            if self
                .start_query(now, target, QueryKind::Lookup(Some(Internal::Refresh)))
                .is_ok()
            {
                started += 1;
            }
        }
        self.refresh_round = (started > 0).then_some((now, started));
    }

    fn note_size_sample(&mut self, now: Instant, target: &Key, closest: &[Contact]) {
        // Only full answers count: a short one means the network is smaller than k, or the
        // lookup failed, and its farthest distance says nothing about density.
        let Some(farthest) = closest.get(self.config.k.saturating_sub(1)) else {
            return;
        };
        let d = farthest.peer.key().distance(target).as_fraction();
        while self.size_samples.len() >= self.config.size_samples.max(1)
            || self
                .size_samples
                .front()
                .is_some_and(|s| now.saturating_duration_since(s.0) > self.config.size_window)
        {
            self.size_samples.pop_front();
        }
        self.size_samples.push_back((now, self.config.k, d));
    }

    /// A random 64-bit value from the node's seeded RNG (for callers composing the DHT).
    pub fn random_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }
}
