//! Gossip: epidemic broadcast over a bounded mesh, with lazy repair (gossipsub-like).
//!
//! [`Gossip`] spreads service announcements and health reports to every peer. It speaks the
//! crate's vocabulary: [`Gossip::handle_message`] / [`Gossip::handle_timeout`] in,
//! [`Gossip::poll_transmit`] / [`Gossip::poll_event`] / [`Gossip::poll_timeout`] out;
//! [`Gossip::publish`] returns the [`MessageId`] that the [`GossipEvent::Received`] of every
//! other peer carries. Peers come from the node ([`Gossip::add_peer`] /
//! [`Gossip::remove_peer`]); messages are addressed by [`PeerId`].
//!
//! How a message spreads (after gossipsub v1.0 and Leitão et al.'s plumtree, 2007):
//! - **Eager push.** Each peer keeps a *mesh* of `mesh_n` peers (between `mesh_n_low` and
//!   `mesh_n_high`), chosen at random from the peers it knows and kept symmetric with
//!   [`GossipMessage::Graft`] / [`GossipMessage::Prune`]. A new message is forwarded at once
//!   to every mesh peer not known to have it already.
//! - **Lazy repair.** Every heartbeat, a peer announces the ids it received within
//!   `ihave_window` ([`GossipMessage::IHave`]) to `lazy_n` random peers outside its mesh. A
//!   peer that hears of an id it has not seen asks for it ([`GossipMessage::IWant`]); if no
//!   answer comes within `iwant_timeout` it asks the next peer that announced it. Lost
//!   messages and dead mesh peers are thus repaired within a few heartbeats.
//! - **Duplicates** are suppressed with a seen-cache (ids expire after `seen_ttl`): each
//!   message is delivered once.
//!
//! Design choices:
//! - Message ids are content-addressed: the first 16 bytes of SHA-256 over the origin, the
//!   topic and the payload ([`MessageId::of`]); a receiver recomputes the id and drops a
//!   message whose id does not match. A peer therefore cannot poison the seen-cache with a
//!   forged payload under someone else's id. Publishing the same payload twice within
//!   `seen_ttl` is refused ([`GossipError::AlreadyPublished`]): put a sequence number or a
//!   timestamp in the payload.
//! - Gossip does not authenticate `origin` or read payloads: they are opaque bytes whose
//!   signature (for example a signed service record) the receiver checks, before gossip
//!   forwards them when it hands gossip the message with
//!   [`Gossip::handle_message_validated`]. `hops` is what the
//!   senders claim and is only informative.
//! - A mesh peer that fails `max_iwant_failures` IWants in a row (any publish from it resets
//!   the count; announcing without delivering does not) leaves the mesh and is not grafted again for `unresponsive_backoff`; a
//!   [`GossipEvent::PeerUnresponsive`] tells the node.
//! - Everything is bounded: known peers, mesh, seen-cache, message cache, pending IWants,
//!   the outgoing and event queues, ids and payload per message, and per-peer rates (token
//!   buckets for publishes and for IWanted ids). What is dropped is counted in
//!   [`GossipStats`].
//!
//! The clock starts at the first call that carries `now`: call [`Gossip::handle_timeout`]
//! once at start-up so that the heartbeat (and with it the mesh) gets going.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::id::PeerId;

/// Most message ids in one [`GossipMessage::IHave`] or [`GossipMessage::IWant`].
pub const MAX_IDS: usize = 64;
/// Largest payload of a [`GossipMessage::Publish`].
pub const MAX_PAYLOAD: usize = 1024;
/// Upper bound of the postcard encoding of any [`GossipMessage`] that passes
/// [`GossipMessage::check_bounds`] (well inside `wire::MAX_MESSAGE_SIZE`).
pub const MAX_ENCODED_LEN: usize = 1100;

/// Gossip settings. `Default` is the production value.
#[derive(Clone, Debug, PartialEq)]
pub struct GossipConfig {
    /// Mesh size the heartbeat aims for (gossipsub's D).
    pub mesh_n: usize,
    /// Below this many mesh peers, the heartbeat grafts up to `mesh_n`.
    pub mesh_n_low: usize,
    /// Above this many, the heartbeat prunes down to `mesh_n`; grafts beyond it are refused.
    pub mesh_n_high: usize,
    /// Peers outside the mesh that each heartbeat sends an IHave to.
    pub lazy_n: usize,
    /// How often the mesh is maintained and recent ids announced.
    pub heartbeat_interval: Duration,
    /// Messages received within this long are announced in IHaves.
    pub ihave_window: Duration,
    /// An IWant unanswered after this long is asked of the next announcer.
    pub iwant_timeout: Duration,
    /// Consecutive unanswered IWants after which a peer leaves the mesh.
    pub max_iwant_failures: u8,
    /// A peer that pruned us (or that we pruned) is not grafted again for this long.
    pub prune_backoff: Duration,
    /// An unresponsive peer is not grafted again for this long.
    pub unresponsive_backoff: Duration,
    /// How long a message id is remembered for duplicate suppression.
    pub seen_ttl: Duration,
    /// Most ids remembered (the oldest go first).
    pub max_seen: usize,
    /// How long a message is kept to answer IWants.
    pub cache_ttl: Duration,
    /// Most messages kept to answer IWants (the oldest go first).
    pub max_cached: usize,
    /// Most ids asked for and not yet received.
    pub max_pending_wants: usize,
    /// Most other announcers remembered per pending id.
    pub max_announcers: usize,
    /// Most peers known (the mesh and the lazy targets are chosen from them).
    pub max_peers: usize,
    /// Publishes accepted per second from one peer (sustained).
    pub publish_rate: f64,
    /// Publishes accepted from one peer in a burst.
    pub publish_burst: f64,
    /// Ids in IWants answered per second for one peer (sustained).
    pub iwant_rate: f64,
    /// Ids in IWants answered for one peer in a burst.
    pub iwant_burst: f64,
    /// Most messages waiting in the outgoing queue.
    pub max_transmit_queue: usize,
    /// Most events waiting to be polled.
    pub max_events: usize,
}

impl Default for GossipConfig {
    fn default() -> Self {
        Self {
            mesh_n: 6,
            mesh_n_low: 4,
            mesh_n_high: 12,
            lazy_n: 4,
            heartbeat_interval: Duration::from_secs(1),
            ihave_window: Duration::from_secs(3),
            iwant_timeout: Duration::from_secs(1),
            max_iwant_failures: 2,
            prune_backoff: Duration::from_secs(60),
            unresponsive_backoff: Duration::from_secs(60),
            seen_ttl: Duration::from_secs(120),
            max_seen: 16_384,
            cache_ttl: Duration::from_secs(30),
            max_cached: 1024,
            max_pending_wants: 256,
            max_announcers: 8,
            max_peers: 1024,
            publish_rate: 50.0,
            publish_burst: 100.0,
            iwant_rate: 100.0,
            iwant_burst: 200.0,
            max_transmit_queue: 4096,
            max_events: 1024,
        }
    }
}

/// What a message is about. New topics are added at the end (old encodings stay valid; a peer
/// that does not know a topic fails to decode the message and drops it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Topic {
    /// A service record was published or renewed.
    ServiceAnnouncement,
    /// Network health reports.
    Health,
}

impl Topic {
    fn code(self) -> u8 {
        match self {
            Topic::ServiceAnnouncement => 0,
            Topic::Health => 1,
        }
    }
}

/// A message's id: 16 bytes of SHA-256 over its origin, topic and payload.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// The id of the message `origin` publishes on `topic` with `payload`.
    pub fn of(origin: &PeerId, topic: Topic, payload: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(b"beam/gossip/1");
        h.update(origin.as_bytes());
        h.update([topic.code()]);
        h.update((payload.len() as u64).to_le_bytes());
        h.update(payload);
        let digest = h.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        Self(id)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A gossip message between two peers.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum GossipMessage {
    /// A message itself (eager push, or the answer to an IWant).
    Publish {
        /// [`MessageId::of`] `origin`, `topic` and `payload`; checked by the receiver.
        id: MessageId,
        /// The peer that published it (not authenticated by gossip).
        origin: PeerId,
        /// Links travelled, this one included (as claimed by the senders).
        hops: u8,
        /// What it is about.
        topic: Topic,
        /// Opaque to gossip; at most [`MAX_PAYLOAD`] bytes.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// "I have these messages" (lazy announce); at most [`MAX_IDS`].
    IHave {
        /// Ids received recently.
        ids: Vec<MessageId>,
    },
    /// "Send me these messages" (pull repair); at most [`MAX_IDS`].
    IWant {
        /// Ids announced by the receiver and not yet seen by the sender.
        ids: Vec<MessageId>,
    },
    /// "Add me to your mesh" (the sender has added the receiver to its own).
    Graft,
    /// "Take me out of your mesh" (the sender has removed the receiver from its own).
    Prune,
}

/// A field of a [`GossipMessage`] is out of bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("gossip message out of bounds: {0}")]
pub struct BoundsError(pub &'static str);

impl GossipMessage {
    /// Checks every length against its bound; call it where the message is decoded.
    pub fn check_bounds(&self) -> Result<(), BoundsError> {
        match self {
            GossipMessage::Publish { payload, .. } if payload.len() > MAX_PAYLOAD => {
                Err(BoundsError("payload too large"))
            }
            GossipMessage::IHave { ids } | GossipMessage::IWant { ids } if ids.len() > MAX_IDS => {
                Err(BoundsError("too many message ids"))
            }
            _ => Ok(()),
        }
    }
}

/// What gossip reports.
#[derive(Clone, Debug, PartialEq)]
pub enum GossipEvent {
    /// A message published by another peer arrived (once per message).
    Received {
        /// Its id.
        id: MessageId,
        /// Who published it (unauthenticated; check the payload's own signature).
        origin: PeerId,
        /// What it is about.
        topic: Topic,
        /// The opaque payload.
        payload: Vec<u8>,
        /// Links it travelled (as claimed by the senders).
        hops: u8,
    },
    /// A peer left the mesh after failing IWants; the node may want to check it.
    PeerUnresponsive {
        /// The peer.
        peer: PeerId,
    },
}

/// Why [`Gossip::publish`] refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GossipError {
    /// The payload is over [`MAX_PAYLOAD`].
    #[error("gossip payload of {0} bytes is over the {MAX_PAYLOAD}-byte limit; publish less")]
    PayloadTooLarge(usize),
    /// The same payload on the same topic was published recently (same id).
    #[error("message {0:?} was already published; add a sequence number to the payload")]
    AlreadyPublished(MessageId),
}

/// Counters of what gossip did and, above all, of what it dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GossipStats {
    /// Messages published locally.
    pub published: u64,
    /// Messages delivered ([`GossipEvent::Received`]).
    pub delivered: u64,
    /// Publishes sent (eager pushes, fanout and IWant answers).
    pub publishes_sent: u64,
    /// IHaves sent.
    pub ihaves_sent: u64,
    /// IWants sent (including re-asks).
    pub iwants_sent: u64,
    /// Ids answered from the message cache.
    pub iwant_served: u64,
    /// Grafts sent.
    pub grafts_sent: u64,
    /// Prunes sent.
    pub prunes_sent: u64,
    /// Dropped: publishes of messages already seen.
    pub duplicates: u64,
    /// Dropped: publishes whose id does not match their content.
    pub bad_ids: u64,
    /// Dropped: new messages the application's validation refused.
    pub refused: u64,
    /// Dropped: messages over a bound ([`GossipMessage::check_bounds`]).
    pub out_of_bounds: u64,
    /// Dropped: messages claiming to come from the local peer.
    pub from_self: u64,
    /// Dropped: publishes beyond a peer's rate.
    pub rate_limited_publishes: u64,
    /// Dropped: IWanted ids beyond a peer's rate.
    pub rate_limited_iwant_ids: u64,
    /// Not answered: IWanted ids not (or no longer) in the message cache.
    pub iwant_unknown: u64,
    /// IWanted ids not answered in time.
    pub iwant_timeouts: u64,
    /// Ids given up on: no other announcer to ask.
    pub iwant_given_up: u64,
    /// Dropped: announced ids not asked for because `max_pending_wants` were pending.
    pub wants_dropped: u64,
    /// Grafts refused (mesh full, backoff or too many peers).
    pub grafts_refused: u64,
    /// Peers removed from the mesh for failing IWants.
    pub peers_unresponsive: u64,
    /// Peers not added because `max_peers` are known.
    pub peers_refused: u64,
    /// Dropped: outgoing messages over `max_transmit_queue`.
    pub transmits_dropped: u64,
    /// Dropped: events over `max_events`.
    pub events_dropped: u64,
    /// Ids forgotten before `seen_ttl` because `max_seen` were remembered.
    pub seen_evicted: u64,
    /// Messages dropped from the cache before `cache_ttl` because `max_cached` were kept.
    pub cache_evicted: u64,
}

/// Tokens refill at `rate` per second up to `burst`.
#[derive(Clone, Debug)]
struct TokenBucket {
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    fn full(burst: f64) -> Self {
        Self {
            tokens: burst,
            last: None,
        }
    }

    /// Takes `cost` tokens if there are that many.
    fn take(&mut self, now: Instant, rate: f64, burst: f64, cost: f64) -> bool {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * rate).min(burst);
        }
        self.last = Some(self.last.map_or(now, |l| l.max(now)));
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

#[derive(Clone, Debug)]
struct PeerState {
    publishes: TokenBucket,
    iwant_ids: TokenBucket,
    /// Not grafted before this.
    backoff_until: Option<Instant>,
    /// IWants in a row that went unanswered.
    iwant_failures: u8,
}

impl PeerState {
    fn new(config: &GossipConfig) -> Self {
        Self {
            publishes: TokenBucket::full(config.publish_burst),
            iwant_ids: TokenBucket::full(config.iwant_burst),
            backoff_until: None,
            iwant_failures: 0,
        }
    }

    fn in_backoff(&self, now: Instant) -> bool {
        self.backoff_until.is_some_and(|t| now < t)
    }
}

/// Peers known to hold a cached message (so it is neither pushed nor announced to them).
const MAX_HOLDERS: usize = 32;

#[derive(Clone, Debug)]
struct Cached {
    origin: PeerId,
    hops: u8,
    topic: Topic,
    payload: Vec<u8>,
    holders: BTreeSet<PeerId>,
}

impl Cached {
    fn note_holder(&mut self, peer: PeerId) {
        if self.holders.len() < MAX_HOLDERS {
            self.holders.insert(peer);
        }
    }
}

#[derive(Clone, Debug)]
struct PendingWant {
    asked: PeerId,
    deadline: Instant,
    /// Other peers that announced the id, to ask next.
    announcers: VecDeque<PeerId>,
}

/// The gossip state machine of one peer. See the [module docs](self).
#[derive(Debug)]
pub struct Gossip {
    config: GossipConfig,
    local: PeerId,
    rng: ChaCha8Rng,
    peers: BTreeMap<PeerId, PeerState>,
    /// Rate state shared by senders that are not known peers (when `max_peers` are known).
    strangers: PeerState,
    mesh: BTreeSet<PeerId>,
    seen: BTreeMap<MessageId, Instant>,
    seen_order: VecDeque<(Instant, MessageId)>,
    cache: BTreeMap<MessageId, Cached>,
    cache_order: VecDeque<(Instant, MessageId)>,
    pending: BTreeMap<MessageId, PendingWant>,
    transmits: VecDeque<(PeerId, GossipMessage)>,
    events: VecDeque<GossipEvent>,
    next_heartbeat: Option<Instant>,
    stats: GossipStats,
}

impl Gossip {
    /// A gossip instance for `local`, with randomness drawn from `seed`.
    pub fn new(config: GossipConfig, local: PeerId, seed: u64) -> Self {
        let strangers = PeerState::new(&config);
        Self {
            config,
            local,
            rng: ChaCha8Rng::seed_from_u64(seed),
            peers: BTreeMap::new(),
            strangers,
            mesh: BTreeSet::new(),
            seen: BTreeMap::new(),
            seen_order: VecDeque::new(),
            cache: BTreeMap::new(),
            cache_order: VecDeque::new(),
            pending: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_heartbeat: None,
            stats: GossipStats::default(),
        }
    }

    /// The local peer.
    pub fn local_peer(&self) -> PeerId {
        self.local
    }

    /// The settings.
    pub fn config(&self) -> &GossipConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> &GossipStats {
        &self.stats
    }

    /// The current mesh (eager-push peers), in order.
    pub fn mesh(&self) -> impl Iterator<Item = &PeerId> {
        self.mesh.iter()
    }

    /// How many peers are known.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Whether a message with this id was seen (and not yet forgotten).
    pub fn has_seen(&self, id: &MessageId) -> bool {
        self.seen.contains_key(id)
    }

    /// Makes `peer` a candidate for the mesh and for IHaves. Returns false when it was not
    /// added (it is the local peer, or `max_peers` are known).
    pub fn add_peer(&mut self, peer: PeerId) -> bool {
        if peer == self.local {
            return false;
        }
        if self.peers.contains_key(&peer) {
            return true;
        }
        if self.peers.len() >= self.config.max_peers {
            self.stats.peers_refused += 1;
            return false;
        }
        self.peers.insert(peer, PeerState::new(&self.config));
        true
    }

    /// Forgets `peer` (it disconnected or died): it leaves the mesh at once; the next
    /// heartbeat grafts a replacement if the mesh is short.
    pub fn remove_peer(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
        self.mesh.remove(peer);
        for want in self.pending.values_mut() {
            want.announcers.retain(|p| p != peer);
        }
    }

    /// Forgets every peer and the mesh (`beam network reset`); the messages seen stay seen.
    pub fn forget_peers(&mut self) {
        self.peers.clear();
        self.mesh.clear();
        self.pending.clear();
    }

    /// Publishes `payload` on `topic`; returns the id every receiver's event carries. The
    /// message is pushed to the mesh (or, before there is one, to `mesh_n` known peers).
    pub fn publish(
        &mut self,
        now: Instant,
        topic: Topic,
        payload: Vec<u8>,
    ) -> Result<MessageId, GossipError> {
        self.start_clock(now);
        if payload.len() > MAX_PAYLOAD {
            return Err(GossipError::PayloadTooLarge(payload.len()));
        }
        let id = MessageId::of(&self.local, topic, &payload);
        if self.seen.contains_key(&id) {
            return Err(GossipError::AlreadyPublished(id));
        }
        self.stats.published += 1;
        self.mark_seen(now, id);
        self.pending.remove(&id);
        let mut targets: Vec<PeerId> = self.mesh.iter().copied().collect();
        if targets.is_empty() {
            targets = self.peers.keys().copied().collect();
            targets.shuffle(&mut self.rng);
            targets.truncate(self.config.mesh_n);
        }
        let mut cached = Cached {
            origin: self.local,
            hops: 0,
            topic,
            payload,
            holders: BTreeSet::new(),
        };
        for to in targets {
            self.send_publish(to, id, &cached);
            cached.note_holder(to);
        }
        self.cache_insert(now, id, cached);
        Ok(id)
    }

    /// Feeds a message from `from`. Unchecked input is fine: it is bounds-checked here too.
    pub fn handle_message(&mut self, now: Instant, from: PeerId, msg: GossipMessage) {
        self.handle_message_validated(now, from, msg, |_, _, _| true);
    }

    /// [`handle_message`](Gossip::handle_message), with the application's check of every new,
    /// authentic message (`validate(origin, topic, payload)`) before it is delivered or
    /// forwarded — gossipsub's message validation. A message it refuses is not forwarded,
    /// not delivered, and remembered as seen, so announcements of it are not fetched again.
    pub fn handle_message_validated(
        &mut self,
        now: Instant,
        from: PeerId,
        msg: GossipMessage,
        validate: impl FnMut(&PeerId, Topic, &[u8]) -> bool,
    ) {
        self.start_clock(now);
        if from == self.local {
            self.stats.from_self += 1;
            return;
        }
        if msg.check_bounds().is_err() {
            self.stats.out_of_bounds += 1;
            return;
        }
        // A sender is a live peer: know it (if there is room).
        self.add_peer(from);
        match msg {
            GossipMessage::Publish {
                id,
                origin,
                hops,
                topic,
                payload,
            } => self.on_publish(now, from, id, origin, hops, topic, payload, validate),
            GossipMessage::IHave { ids } => self.on_ihave(now, from, ids),
            GossipMessage::IWant { ids } => self.on_iwant(now, from, ids),
            GossipMessage::Graft => self.on_graft(now, from),
            GossipMessage::Prune => {
                self.mesh.remove(&from);
                if let Some(p) = self.peers.get_mut(&from) {
                    p.backoff_until = Some(now + self.config.prune_backoff);
                }
            }
        }
    }

    /// Runs what is due at `now`: IWant timeouts and the heartbeat.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.start_clock(now);
        self.check_wants(now);
        if self.next_heartbeat.is_some_and(|t| t <= now) {
            self.heartbeat(now);
            self.next_heartbeat = Some(now + self.config.heartbeat_interval);
        }
    }

    /// The next message to send, and to whom.
    pub fn poll_transmit(&mut self) -> Option<(PeerId, GossipMessage)> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<GossipEvent> {
        self.events.pop_front()
    }

    /// When [`Gossip::handle_timeout`] is next due; `None` before the clock has started.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let wants = self.pending.values().map(|w| w.deadline).min();
        match (self.next_heartbeat, wants) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn start_clock(&mut self, now: Instant) {
        if self.next_heartbeat.is_none() {
            // Spread heartbeats so that peers started together do not beat in step.
            let interval = self.config.heartbeat_interval.as_nanos() as u64;
            let jitter = self.rng.random_range(0..interval.max(1));
            self.next_heartbeat = Some(now + Duration::from_nanos(jitter));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_publish(
        &mut self,
        now: Instant,
        from: PeerId,
        id: MessageId,
        origin: PeerId,
        hops: u8,
        topic: Topic,
        payload: Vec<u8>,
        mut validate: impl FnMut(&PeerId, Topic, &[u8]) -> bool,
    ) {
        let bucket = self.peers.get_mut(&from).unwrap_or(&mut self.strangers);
        let (rate, burst) = (self.config.publish_rate, self.config.publish_burst);
        if !bucket.publishes.take(now, rate, burst, 1.0) {
            self.stats.rate_limited_publishes += 1;
            return;
        }
        // It delivers messages: forget its unanswered IWants.
        bucket.iwant_failures = 0;
        if self.seen.contains_key(&id) {
            self.stats.duplicates += 1;
            if let Some(c) = self.cache.get_mut(&id) {
                c.note_holder(from);
            }
            return;
        }
        if MessageId::of(&origin, topic, &payload) != id {
            self.stats.bad_ids += 1;
            return;
        }
        self.mark_seen(now, id);
        self.pending.remove(&id);
        if !validate(&origin, topic, &payload) {
            self.stats.refused += 1;
            return;
        }
        let mut cached = Cached {
            origin,
            hops,
            topic,
            payload,
            holders: BTreeSet::new(),
        };
        cached.note_holder(from);
        cached.note_holder(origin);
        let targets: Vec<PeerId> = self
            .mesh
            .iter()
            .filter(|p| !cached.holders.contains(p))
            .copied()
            .collect();
        for to in targets {
            self.send_publish(to, id, &cached);
            cached.note_holder(to);
        }
        let event = GossipEvent::Received {
            id,
            origin,
            topic,
            payload: cached.payload.clone(),
            hops,
        };
        self.stats.delivered += 1;
        self.push_event(event);
        self.cache_insert(now, id, cached);
    }

    fn on_ihave(&mut self, now: Instant, from: PeerId, ids: Vec<MessageId>) {
        let mut wanted = vec![];
        for id in ids {
            if self.seen.contains_key(&id) {
                if let Some(c) = self.cache.get_mut(&id) {
                    c.note_holder(from);
                }
                continue;
            }
            if let Some(want) = self.pending.get_mut(&id) {
                if want.asked != from
                    && !want.announcers.contains(&from)
                    && want.announcers.len() < self.config.max_announcers
                {
                    want.announcers.push_back(from);
                }
                continue;
            }
            if self.pending.len() >= self.config.max_pending_wants {
                self.stats.wants_dropped += 1;
                continue;
            }
            self.pending.insert(
                id,
                PendingWant {
                    asked: from,
                    deadline: now + self.config.iwant_timeout,
                    announcers: VecDeque::new(),
                },
            );
            wanted.push(id);
        }
        if !wanted.is_empty() {
            self.stats.iwants_sent += 1;
            self.send(from, GossipMessage::IWant { ids: wanted });
        }
    }

    fn on_iwant(&mut self, now: Instant, from: PeerId, ids: Vec<MessageId>) {
        let bucket = self.peers.get_mut(&from).unwrap_or(&mut self.strangers);
        let (rate, burst) = (self.config.iwant_rate, self.config.iwant_burst);
        let cost = ids.len().max(1) as f64;
        if !bucket.iwant_ids.take(now, rate, burst, cost) {
            self.stats.rate_limited_iwant_ids += ids.len() as u64;
            return;
        }
        for id in ids {
            let Some(cached) = self.cache.get(&id) else {
                self.stats.iwant_unknown += 1;
                continue;
            };
            let cached = cached.clone();
            self.stats.iwant_served += 1;
            self.send_publish(from, id, &cached);
            if let Some(c) = self.cache.get_mut(&id) {
                c.note_holder(from);
            }
        }
    }

    fn on_graft(&mut self, now: Instant, from: PeerId) {
        let accept = self.mesh.contains(&from)
            || (self.mesh.len() < self.config.mesh_n_high
                && self.peers.get(&from).is_some_and(|p| !p.in_backoff(now)));
        if accept {
            self.mesh.insert(from);
        } else {
            self.stats.grafts_refused += 1;
            self.stats.prunes_sent += 1;
            self.send(from, GossipMessage::Prune);
        }
    }

    /// Re-asks (or gives up on) the IWants whose deadline has passed; peers that failed too
    /// often leave the mesh.
    fn check_wants(&mut self, now: Instant) {
        let expired: Vec<MessageId> = self
            .pending
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        if expired.is_empty() {
            return;
        }
        let mut failed = BTreeSet::new();
        let mut asks: BTreeMap<PeerId, Vec<MessageId>> = BTreeMap::new();
        for id in expired {
            self.stats.iwant_timeouts += 1;
            let Some(want) = self.pending.get_mut(&id) else {
                continue;
            };
            failed.insert(want.asked);
            match want.announcers.pop_front() {
                Some(next) => {
                    want.asked = next;
                    want.deadline = now + self.config.iwant_timeout;
                    asks.entry(next).or_default().push(id);
                }
                None => {
                    self.pending.remove(&id);
                    self.stats.iwant_given_up += 1;
                }
            }
        }
        for peer in failed {
            let Some(state) = self.peers.get_mut(&peer) else {
                continue;
            };
            state.iwant_failures = state.iwant_failures.saturating_add(1);
            if state.iwant_failures >= self.config.max_iwant_failures {
                state.iwant_failures = 0;
                state.backoff_until = Some(now + self.config.unresponsive_backoff);
                if self.mesh.remove(&peer) {
                    self.stats.peers_unresponsive += 1;
                    self.push_event(GossipEvent::PeerUnresponsive { peer });
                }
            }
        }
        for (peer, ids) in asks {
            for chunk in ids.chunks(MAX_IDS) {
                self.stats.iwants_sent += 1;
                self.send(
                    peer,
                    GossipMessage::IWant {
                        ids: chunk.to_vec(),
                    },
                );
            }
        }
    }

    fn heartbeat(&mut self, now: Instant) {
        self.expire(now);
        // Mesh maintenance.
        self.mesh.retain(|p| self.peers.contains_key(p));
        if self.mesh.len() < self.config.mesh_n_low {
            let mut candidates: Vec<PeerId> = self
                .peers
                .iter()
                .filter(|(p, s)| !self.mesh.contains(*p) && !s.in_backoff(now))
                .map(|(p, _)| *p)
                .collect();
            candidates.shuffle(&mut self.rng);
            candidates.truncate(self.config.mesh_n.saturating_sub(self.mesh.len()));
            for peer in candidates {
                self.mesh.insert(peer);
                self.stats.grafts_sent += 1;
                self.send(peer, GossipMessage::Graft);
            }
        } else if self.mesh.len() > self.config.mesh_n_high {
            let mut members: Vec<PeerId> = self.mesh.iter().copied().collect();
            members.shuffle(&mut self.rng);
            for peer in members.into_iter().skip(self.config.mesh_n) {
                self.mesh.remove(&peer);
                if let Some(s) = self.peers.get_mut(&peer) {
                    s.backoff_until = Some(now + self.config.prune_backoff);
                }
                self.stats.prunes_sent += 1;
                self.send(peer, GossipMessage::Prune);
            }
        }
        // Lazy announcements of recent messages, newest first.
        let window_start = now.checked_sub(self.config.ihave_window);
        let recent: Vec<MessageId> = self
            .cache_order
            .iter()
            .rev()
            .take_while(|(t, _)| window_start.is_none_or(|s| *t >= s))
            .map(|(_, id)| *id)
            .collect();
        if recent.is_empty() {
            return;
        }
        let mut lazy: Vec<PeerId> = self
            .peers
            .keys()
            .filter(|p| !self.mesh.contains(*p))
            .copied()
            .collect();
        lazy.shuffle(&mut self.rng);
        lazy.truncate(self.config.lazy_n);
        for peer in lazy {
            let ids: Vec<MessageId> = recent
                .iter()
                .filter(|id| {
                    self.cache
                        .get(id)
                        .is_some_and(|c| !c.holders.contains(&peer))
                })
                .take(MAX_IDS)
                .copied()
                .collect();
            if !ids.is_empty() {
                self.stats.ihaves_sent += 1;
                self.send(peer, GossipMessage::IHave { ids });
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((t, id)) = self.seen_order.front().copied() {
            if t + self.config.seen_ttl > now {
                break;
            }
            self.seen_order.pop_front();
            self.seen.remove(&id);
        }
        while let Some((t, id)) = self.cache_order.front().copied() {
            if t + self.config.cache_ttl > now {
                break;
            }
            self.cache_order.pop_front();
            self.cache.remove(&id);
        }
    }

    fn mark_seen(&mut self, now: Instant, id: MessageId) {
        while self.seen.len() >= self.config.max_seen.max(1) {
            let Some((_, old)) = self.seen_order.pop_front() else {
                break;
            };
            self.seen.remove(&old);
            self.stats.seen_evicted += 1;
        }
        self.seen.insert(id, now);
        self.seen_order.push_back((now, id));
    }

    fn cache_insert(&mut self, now: Instant, id: MessageId, cached: Cached) {
        if self.config.max_cached == 0 {
            return;
        }
        while self.cache.len() >= self.config.max_cached {
            let Some((_, old)) = self.cache_order.pop_front() else {
                break;
            };
            self.cache.remove(&old);
            self.stats.cache_evicted += 1;
        }
        self.cache.insert(id, cached);
        self.cache_order.push_back((now, id));
    }

    fn send_publish(&mut self, to: PeerId, id: MessageId, cached: &Cached) {
        self.stats.publishes_sent += 1;
        self.send(
            to,
            GossipMessage::Publish {
                id,
                origin: cached.origin,
                hops: cached.hops.saturating_add(1),
                topic: cached.topic,
                payload: cached.payload.clone(),
            },
        );
    }

    fn send(&mut self, to: PeerId, msg: GossipMessage) {
        if self.transmits.len() >= self.config.max_transmit_queue {
            self.stats.transmits_dropped += 1;
            return;
        }
        self.transmits.push_back((to, msg));
    }

    fn push_event(&mut self, event: GossipEvent) {
        if self.events.len() >= self.config.max_events {
            self.stats.events_dropped += 1;
            return;
        }
        self.events.push_back(event);
    }

    /// Checks every bound the state machine promises (tests only).
    #[cfg(test)]
    fn check_invariants(&self) {
        let c = &self.config;
        assert!(self.mesh.len() <= c.mesh_n_high.max(c.mesh_n));
        assert!(self.mesh.iter().all(|p| self.peers.contains_key(p)));
        assert!(self.peers.len() <= c.max_peers);
        assert!(!self.peers.contains_key(&self.local));
        assert!(self.seen.len() <= c.max_seen.max(1));
        assert_eq!(self.seen.len(), self.seen_order.len());
        assert!(self.cache.len() <= c.max_cached);
        assert_eq!(self.cache.len(), self.cache_order.len());
        assert!(self.pending.len() <= c.max_pending_wants);
        assert!(self.transmits.len() <= c.max_transmit_queue);
        assert!(self.events.len() <= c.max_events);
        for (_, m) in &self.transmits {
            assert!(m.check_bounds().is_ok());
        }
        for w in self.pending.values() {
            assert!(w.announcers.len() <= c.max_announcers);
        }
    }
}

#[cfg(test)]
mod tests;
