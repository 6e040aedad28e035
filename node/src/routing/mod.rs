//! Routing: requests from a client to a service — direct, or through relays with end-to-end
//! encryption — and relaying for others.
//!
//! # Routes
//!
//! A route is source-routed: the client names every hop ([`RouteMessage::Forward::ahead`]);
//! each relay forwards to the next hop and appends the peer it heard from to `behind`, so the
//! service can answer along the reverse path ([`RouteMessage::Backward`]). Relays keep no
//! state per route. Relay selection is [`score::choose`].
//!
//! # End to end
//!
//! On a direct route the transport's own encryption (libp2p's Noise, authenticated to the
//! peer id) already is end to end, so the payload is not encrypted twice. On a relayed route
//! the client runs a Noise XK handshake with the service ([`crate::e2e`]) against the static
//! key in the service's signed record; the request rides in the third handshake message, the
//! answer comes back sealed. A relay sees only handshake messages and ciphertext.
//!
//! # Failure
//!
//! Each attempt has `attempt_timeout`; when it passes, every relay of the route is marked
//! down (EWMA, [`score::Trust`]) and excluded for this request, and the next attempt takes
//! another route — until `max_attempts` or the request's overall deadline.

pub mod score;
pub mod table;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::e2e::{Initiator, PendingResponder, Responder, Session, StaticKey};
use crate::id::PeerId;
use crate::record::Coordinates;
use crate::wire::{Contact, MAX_ROUTE_DATA, RouteMessage};
pub use score::{Candidate, Strategy, Trust};

/// Router settings. `Default` is the production value.
#[derive(Clone, Debug, PartialEq)]
pub struct RouterConfig {
    /// Whether this node relays for others (routing/full participation).
    pub relay: bool,
    /// One attempt (handshake and request) must finish within this.
    pub attempt_timeout: Duration,
    /// A request fails when no attempt succeeded within this.
    pub request_timeout: Duration,
    /// Most routes tried per request.
    pub max_attempts: u8,
    /// Relays on a multi-hop route.
    pub multi_hop_relays: usize,
    /// Most requests in flight.
    pub max_requests: usize,
    /// Most end-to-end handshakes, and most sessions, held (as a service).
    pub max_sessions: usize,
    /// Most of them charged to one neighbour (the hop a frame arrived from), so a handshake
    /// flood through one neighbour pushes out only that neighbour's own.
    pub max_sessions_per_neighbour: usize,
    /// Most frames relayed per second; more are dropped and counted.
    pub max_relayed_per_s: u32,
    /// Most relays whose trust is remembered.
    pub max_trust_entries: usize,
    /// Most stream circuits ([`Router::admit_circuit`]) relayed at once.
    pub max_circuits: usize,
    /// Most frames queued for the driver; more are dropped and counted.
    pub max_queued_transmits: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            relay: true,
            attempt_timeout: Duration::from_millis(1000),
            request_timeout: Duration::from_secs(5),
            max_attempts: 8,
            multi_hop_relays: 2,
            max_requests: 256,
            max_sessions: 1024,
            max_sessions_per_neighbour: 64,
            max_relayed_per_s: 5000,
            max_trust_entries: 4096,
            max_circuits: 256,
            max_queued_transmits: 4096,
        }
    }
}

/// Identifies a request; the event that ends it carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// Where a request goes: the service, from its verified service record.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// The service's peer id and endpoint.
    pub contact: Contact,
    /// Its end-to-end static key (from the record).
    pub noise_key: Option<[u8; 32]>,
    /// Its coordinates, if known.
    pub coords: Option<Coordinates>,
    /// Relays it keeps open (from the record), for when it cannot be dialled.
    pub relays: Vec<Contact>,
    /// Whether it can be dialled directly.
    pub reachable: bool,
}

/// How to answer a request (handed to the service with [`RouteEvent::Request`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyTo {
    route: u64,
    client: PeerId,
    back: Vec<Contact>,
    request: u64,
}

/// What the router reports.
#[derive(Clone, Debug, PartialEq)]
pub enum RouteEvent {
    /// A request was answered.
    Response {
        /// The request.
        id: RequestId,
        /// The service's answer.
        body: Vec<u8>,
        /// Round trip of the request over its route, after the route was set up.
        rtt: Duration,
        /// The relays of the route that worked.
        relays: Vec<PeerId>,
        /// Routes tried.
        attempts: u8,
    },
    /// A request got no answer in time on any route.
    Failed {
        /// The request.
        id: RequestId,
        /// Routes tried.
        attempts: u8,
    },
    /// A relay check ([`Router::check_relay`]) finished.
    RelayChecked {
        /// The relay.
        relay: PeerId,
        /// Whether the probe came back through it.
        ok: bool,
    },
    /// (As a service.) A request arrived; answer it with [`Router::respond`].
    Request {
        /// Pass to `respond`.
        reply: ReplyTo,
        /// The request.
        body: Vec<u8>,
    },
}

/// Why a request was not started.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Too many requests in flight.
    #[error("too many requests in flight ({0})")]
    TooManyRequests(usize),
    /// The service record lists no endpoint.
    #[error("the service record lists no endpoint")]
    NoEndpoint,
    /// A relayed route needs the service's end-to-end key, and its record has none.
    #[error("the service record has no end-to-end key, so it cannot be reached through relays")]
    NoServiceKey,
    /// The request does not fit in a route frame.
    #[error("the request is {0} bytes; a routed request carries at most {MAX_REQUEST_BODY}")]
    BodyTooLarge(usize),
}

/// The largest request body [`Router::request`] accepts: what fits in a route frame with the
/// end-to-end handshake around it.
pub const MAX_REQUEST_BODY: usize = MAX_ROUTE_DATA - 256;

/// How long one phase of an attempt (handshake, or request) through `relays` may take: when
/// the coordinates of every hop are known, twice the predicted round trip plus a margin, so a
/// route through a relay that drops is given up on soon and another tried within the
/// request's deadline; `attempt_timeout` (also the most) otherwise.
fn phase_timeout(
    config: &RouterConfig,
    candidates: &[Candidate],
    own: Option<Coordinates>,
    service: Option<Coordinates>,
    relays: &[Contact],
) -> Duration {
    let max = config.attempt_timeout;
    let coords = |peer: &PeerId| {
        candidates
            .iter()
            .find(|c| c.contact.peer == *peer)
            .and_then(|c| c.coords)
    };
    let (Some(own), Some(service)) = (own, service) else {
        return max;
    };
    let mut hops = vec![own];
    for r in relays {
        match coords(&r.peer) {
            Some(c) => hops.push(c),
            None => return max,
        }
    }
    hops.push(service);
    let rtt_ms: f64 = hops
        .windows(2)
        .map(|w| score::predict_ms(&w[0], &w[1]))
        .sum();
    // Coordinates come from peers: a prediction that is not a sane number falls back on `max`.
    let secs = (2.0 * rtt_ms + PHASE_MARGIN_MS) / 1000.0;
    if !(secs.is_finite() && secs > 0.0) {
        return max;
    }
    Duration::try_from_secs_f64(secs).map_or(max, |t| t.clamp(MIN_PHASE_TIMEOUT.min(max), max))
}

/// Added to twice the predicted round trip of a phase (queueing, the service's own work).
const PHASE_MARGIN_MS: f64 = 250.0;
/// The shortest phase timeout, whatever the prediction.
const MIN_PHASE_TIMEOUT: Duration = Duration::from_millis(400);

/// Most relay checks this node runs for others at once.
const MAX_CHECKS_FOR: usize = 16;

/// Where the handshake keys of a real node come from: the operating system's RNG, handed in by
/// the driver ([`Router::set_handshake_entropy`]). The core itself never reads it.
pub type Entropy = Box<dyn RngCore + Send>;

/// Counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouterStats {
    /// Frames forwarded for others.
    pub relayed: u64,
    /// Frames not relayed: this node does not relay, or the rate bound was hit.
    pub relay_refused: u64,
    /// Frames that failed to decrypt or decode, or belonged to no known route.
    pub bad_frames: u64,
    /// Attempts that timed out.
    pub attempts_timed_out: u64,
    /// Hole punches started (to services behind a NAT).
    pub punches: u64,
    /// Hole punches that opened a direct path.
    pub punches_succeeded: u64,
    /// Frames dropped because the driver's queue was full.
    pub transmits_dropped: u64,
    /// Stream circuits relayed (admitted).
    pub circuits_admitted: u64,
    /// Stream circuits refused (not a relay, or at `max_circuits`).
    pub circuits_refused: u64,
    /// Requests refused, or answers not sent, because they would have crossed relays in clear.
    pub plaintext_refused: u64,
    /// Handshakes and sessions pushed out of their tables to make room.
    pub sessions_evicted: u64,
}

/// What travels in a route frame's `data`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum RouteData {
    /// Direct routes: the payload itself.
    Plain(Payload),
    /// Noise XK message 1 (client → service).
    Hello(Vec<u8>),
    /// Noise XK message 2 (service → client).
    HelloAck(Vec<u8>),
    /// Noise XK message 3, carrying the request (client → service).
    Finish(Vec<u8>),
    /// A sealed payload.
    Sealed(Vec<u8>),
    /// Hole punch, client → service through the service's relay: "probe me".
    Punch,
    /// Hole punch probe, sent directly in both directions; opens the NATs' mappings.
    Probe,
    /// Relay check, service → helper, directly: "send me a request through `relay`, with
    /// `nonce` as its body, and tell me when its answer came back".
    CheckFor {
        /// The relay to check.
        relay: Contact,
        /// The service's own endpoint.
        service: Contact,
        /// The service's end-to-end key.
        noise_key: [u8; 32],
        /// The check's nonce.
        nonce: u64,
    },
    /// Relay check, helper → service, directly: the answer to `nonce` came back.
    Checked {
        /// The check's nonce.
        nonce: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Payload {
    Request { id: u64, body: Vec<u8> },
    Response { id: u64, body: Vec<u8> },
}

fn encode<T: Serialize>(v: &T) -> Option<Vec<u8>> {
    postcard::to_stdvec(v)
        .ok()
        .filter(|b| b.len() <= MAX_ROUTE_DATA)
}

enum Phase {
    /// Hole punching: waiting for the service's probe.
    Punching,
    /// Direct: the request is out.
    Sent,
    /// Relayed: waiting for message 2.
    Handshaking(Box<Initiator>),
    /// Relayed: request sent in message 3; the session opens the answer.
    Open(Box<Session>),
}

struct Attempt {
    route: u64,
    relays: Vec<Contact>,
    phase: Phase,
    /// When the request itself went out (after the handshake on relayed routes).
    sent: Instant,
    deadline: Instant,
}

struct Outgoing {
    target: Target,
    strategy: Strategy,
    body: Vec<u8>,
    candidates: Vec<Candidate>,
    own_coords: Option<Coordinates>,
    excluded: BTreeSet<PeerId>,
    attempts: u8,
    deadline: Instant,
    current: Option<Attempt>,
    /// A hole punch for this request was tried and did not work.
    punch_failed: bool,
    /// A relay check run for a service: the one route to take, and whom to tell.
    check_for: Option<CheckFor>,
}

/// A relay check this node runs as a helper.
struct CheckFor {
    relay: Contact,
    service: Contact,
    nonce: u64,
}

/// The routing state machine: see the module docs.
pub struct Router {
    config: RouterConfig,
    local: PeerId,
    static_key: StaticKey,
    rng: ChaCha8Rng,
    /// The handshake keys' source under the real driver; `None` in the simulator, where they
    /// come from `rng` (seeded, so runs repeat).
    entropy: Option<Entropy>,
    next_request: u64,
    requests: BTreeMap<RequestId, Outgoing>,
    routes: BTreeMap<u64, RequestId>,
    /// Handshakes waiting for message 3, by (client, route).
    handshakes: table::FairTable<(PeerId, u64), PendingResponder>,
    /// Sessions waiting for the service's answer (each carries one request and its answer).
    sessions: table::FairTable<(PeerId, u64), Session>,
    trust: BTreeMap<PeerId, Trust>,
    /// Services behind a NAT that a hole punch reached (bounded).
    punched: BTreeSet<PeerId>,
    /// Relay checks in flight: route id → (relay, deadline).
    /// Relay checks in flight: nonce → (relay, deadline, the helpers asked).
    relay_checks: BTreeMap<u64, (PeerId, Instant, Vec<PeerId>)>,
    relay_window: (Instant, u32),
    transmits: Outbox,
    events: VecDeque<RouteEvent>,
    stats: RouterStats,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("requests", &self.requests.len())
            .field("sessions", &self.sessions.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Router {
    /// A router for `local`, whose end-to-end static key is `static_key`.
    pub fn new(
        config: RouterConfig,
        local: PeerId,
        static_key: StaticKey,
        seed: u64,
        now: Instant,
    ) -> Self {
        let cap = config.max_queued_transmits;
        let (sessions, per_neighbour) = (config.max_sessions, config.max_sessions_per_neighbour);
        Self {
            config,
            local,
            static_key,
            rng: ChaCha8Rng::seed_from_u64(seed),
            entropy: None,
            next_request: 1,
            requests: BTreeMap::new(),
            routes: BTreeMap::new(),
            handshakes: table::FairTable::new(sessions, per_neighbour),
            sessions: table::FairTable::new(sessions, per_neighbour),
            trust: BTreeMap::new(),
            punched: BTreeSet::new(),
            relay_checks: BTreeMap::new(),
            relay_window: (now, 0),
            transmits: Outbox {
                queue: VecDeque::new(),
                cap,
                dropped: 0,
            },
            events: VecDeque::new(),
            stats: RouterStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> RouterStats {
        RouterStats {
            transmits_dropped: self.transmits.dropped,
            sessions_evicted: self.handshakes.evicted() + self.sessions.evicted(),
            ..self.stats.clone()
        }
    }

    /// Takes the handshakes' ephemeral keys from `entropy` (the OS RNG, under the real driver)
    /// instead of the seeded stream. Only the simulator may leave keys seeded: whoever knows the
    /// seed can read every session.
    pub fn set_handshake_entropy(&mut self, entropy: Entropy) {
        self.entropy = Some(entropy);
    }

    /// 32 fresh bytes for one handshake.
    pub fn handshake_seed(&mut self) -> [u8; 32] {
        handshake_seed(&mut self.entropy, &mut self.rng)
    }

    /// Starts an end-to-end handshake with the service whose static key is `service_key`, for
    /// a stream the driver carries: the initiator and message 1.
    pub fn start_e2e(
        &mut self,
        service_key: &[u8; 32],
    ) -> Result<(Initiator, Vec<u8>), crate::e2e::E2eError> {
        let seed = self.handshake_seed();
        Initiator::start(&self.static_key, service_key, seed)
    }

    /// The responder side of an end-to-end handshake, for a stream the driver carries.
    pub fn e2e_responder(&mut self) -> Responder {
        let seed = self.handshake_seed();
        Responder::new(&self.static_key, seed)
    }

    /// Chooses the relays for a stream route to `target` (empty: go direct), with what the
    /// router has learned of each relay. The driver carries the bytes and reports the outcome
    /// with [`route_outcome`](Router::route_outcome), so the choice and the learning are the
    /// same code the simulator measures.
    pub fn plan(
        &mut self,
        target: &Target,
        strategy: Strategy,
        candidates: Vec<Candidate>,
        own_coords: Option<Coordinates>,
        exclude: &BTreeSet<PeerId>,
    ) -> Vec<Contact> {
        let candidates: Vec<Candidate> = candidates
            .into_iter()
            .map(|mut c| {
                c.trust = self.trust(&c.contact.peer);
                c
            })
            .collect();
        if !target.reachable && !self.punched.contains(&target.contact.peer) {
            // Behind a NAT: through one of the relays it keeps open, the most trusted first.
            let mut usable: Vec<&Contact> = target
                .relays
                .iter()
                .filter(|r| !exclude.contains(&r.peer) && r.peer != self.local)
                .collect();
            usable.sort_by(|a, b| {
                self.trust(&b.peer)
                    .success
                    .total_cmp(&self.trust(&a.peer).success)
            });
            return usable
                .first()
                .map(|c| vec![(*c).clone()])
                .unwrap_or_default();
        }
        score::choose(
            strategy,
            &candidates,
            &self.local,
            &target.contact.peer,
            own_coords.as_ref(),
            target.coords.as_ref(),
            exclude,
            self.config.multi_hop_relays,
            &mut self.rng,
        )
    }

    /// How a stream route through `relays` went: trust learns from it.
    pub fn route_outcome(&mut self, relays: &[PeerId], ok: bool) {
        for r in relays {
            let t = self.trust.entry(*r).or_default();
            if ok {
                t.on_success();
            } else {
                t.on_failure();
            }
        }
        self.bound_trust();
    }

    /// Whether this node relays one more stream circuit, with `open` circuits relayed now.
    pub fn admit_circuit(&mut self, open: usize) -> bool {
        if self.config.relay && open < self.config.max_circuits {
            self.stats.circuits_admitted += 1;
            true
        } else {
            self.stats.circuits_refused += 1;
            false
        }
    }

    /// Records that a hole punch to `service` worked (the driver's DCUtR did it): new routes to
    /// it go direct.
    pub fn punched(&mut self, service: PeerId) {
        if self.punched.len() >= self.config.max_trust_entries {
            self.punched.pop_first();
        }
        self.punched.insert(service);
    }

    /// Whether this node relays for others.
    pub fn set_relay(&mut self, relay: bool) {
        self.config.relay = relay;
    }

    /// The transport lost `peer` (or could not reach it): every attempt whose first hop it is
    /// fails at the next [`handle_timeout`](Router::handle_timeout) instead of waiting out its
    /// timeout.
    pub fn handle_peer_unreachable(&mut self, now: Instant, peer: &PeerId) {
        for out in self.requests.values_mut() {
            let service = out.target.contact.peer;
            if let Some(a) = out.current.as_mut()
                && a.relays.first().map_or(service, |c| c.peer) == *peer
            {
                a.deadline = a.deadline.min(now);
            }
        }
    }

    /// What the router has learned about `relay`.
    pub fn trust(&self, relay: &PeerId) -> Trust {
        self.trust.get(relay).copied().unwrap_or_default()
    }

    /// Sends `body` to the service `target` by `strategy`, choosing relays among `candidates`.
    pub fn request(
        &mut self,
        now: Instant,
        target: Target,
        strategy: Strategy,
        body: Vec<u8>,
        candidates: Vec<Candidate>,
        own_coords: Option<Coordinates>,
    ) -> Result<RequestId, RouteError> {
        if self.requests.len() >= self.config.max_requests {
            return Err(RouteError::TooManyRequests(self.requests.len()));
        }
        if body.len() > MAX_REQUEST_BODY {
            return Err(RouteError::BodyTooLarge(body.len()));
        }
        if strategy != Strategy::Direct && target.noise_key.is_none() {
            return Err(RouteError::NoServiceKey);
        }
        let id = RequestId(self.next_request);
        self.next_request += 1;
        let candidates = candidates
            .into_iter()
            .map(|mut c| {
                c.trust = self.trust(&c.contact.peer);
                c
            })
            .collect();
        self.requests.insert(
            id,
            Outgoing {
                target,
                strategy,
                body,
                candidates,
                own_coords,
                excluded: BTreeSet::new(),
                attempts: 0,
                deadline: now + self.config.request_timeout,
                current: None,
                punch_failed: false,
                check_for: None,
            },
        );
        self.attempt(now, id);
        Ok(id)
    }

    /// Checks that `relay` forwards, for a service behind a NAT (`me`, whose end-to-end key
    /// is this router's): asks each of `helpers` (other peers, reached directly) to send an
    /// ordinary end-to-end request to `me` through `relay` and to say when the answer came
    /// back. To the relay a check is one more client's request — handshake, sealed request,
    /// sealed answer, from a peer that is not the service — so a relay that forwards only what
    /// looks like a check cannot tell. The check passes if any helper confirms within
    /// `attempt_timeout` × 3 (a helper that lies or is lost costs the check only with all of
    /// them); [`RouteEvent::RelayChecked`] tells the outcome.
    pub fn check_relay(&mut self, now: Instant, relay: Contact, me: Contact, helpers: &[Contact]) {
        let helpers: Vec<&Contact> = helpers
            .iter()
            .filter(|h| h.peer != relay.peer && h.peer != self.local)
            .collect();
        if helpers.is_empty() {
            return;
        }
        let nonce = self.rng.next_u64();
        let noise_key = self.static_key.public();
        let asked = helpers.iter().map(|h| h.peer).collect();
        self.relay_checks.insert(
            nonce,
            (relay.peer, now + self.config.attempt_timeout * 3, asked),
        );
        for h in helpers {
            let ask = RouteData::CheckFor {
                relay: relay.clone(),
                service: me.clone(),
                noise_key,
                nonce,
            };
            if let Some(data) = encode(&ask) {
                let route = self.rng.next_u64();
                self.send_forward(route, &[], h, data);
            }
        }
    }

    fn is_own_check(&self, body: &[u8]) -> bool {
        <[u8; 8]>::try_from(body)
            .is_ok_and(|b| self.relay_checks.contains_key(&u64::from_be_bytes(b)))
    }

    /// As a helper: runs the relay check a service asked for (see [`Router::check_relay`]).
    fn check_for(&mut self, now: Instant, from: &Contact, check: CheckFor, noise_key: [u8; 32]) {
        if check.service.peer != from.peer
            || self.requests.len() >= self.config.max_requests
            || self
                .requests
                .values()
                .filter(|o| o.check_for.is_some())
                .count()
                >= MAX_CHECKS_FOR
        {
            return;
        }
        let id = RequestId(self.next_request);
        self.next_request += 1;
        let target = Target {
            contact: check.service.clone(),
            noise_key: Some(noise_key),
            coords: None,
            relays: vec![check.relay.clone()],
            reachable: false,
        };
        self.requests.insert(
            id,
            Outgoing {
                target,
                strategy: Strategy::Direct,
                body: check.nonce.to_be_bytes().to_vec(),
                candidates: vec![],
                own_coords: None,
                excluded: BTreeSet::new(),
                // One attempt, through the relay under check, no hole punch.
                attempts: self.config.max_attempts.saturating_sub(1),
                deadline: now + self.config.attempt_timeout * 2,
                current: None,
                punch_failed: true,
                check_for: Some(check),
            },
        );
        self.attempt(now, id);
    }

    /// Answers a request this node received as a service.
    pub fn respond(&mut self, _now: Instant, reply: ReplyTo, body: Vec<u8>) {
        let payload = Payload::Response {
            id: reply.request,
            body,
        };
        let data = match self.sessions.remove(&(reply.client, reply.route)) {
            Some(mut session) => {
                let Some(plain) = encode(&payload) else {
                    return;
                };
                match session.encrypt(&plain) {
                    Ok(frame) => RouteData::Sealed(frame),
                    Err(_) => return,
                }
            }
            // In clear only straight back to the client: never through relays.
            None if reply.back.len() <= 1 => RouteData::Plain(payload),
            None => {
                self.stats.plaintext_refused += 1;
                return;
            }
        };
        let Some(data) = encode(&data) else { return };
        self.send_backward(reply.route, reply.back.into_iter().rev().collect(), data);
    }

    /// Starts the next attempt of request `id`, or fails it.
    fn attempt(&mut self, now: Instant, id: RequestId) {
        let Some(out) = self.requests.get_mut(&id) else {
            return;
        };
        if let Some(prev) = out.current.take() {
            self.routes.remove(&prev.route);
        }
        if out.attempts >= self.config.max_attempts || now >= out.deadline {
            let attempts = out.attempts;
            if self
                .requests
                .remove(&id)
                .is_some_and(|o| o.check_for.is_none())
            {
                self.events.push_back(RouteEvent::Failed { id, attempts });
            }
            return;
        }
        out.attempts += 1;
        let service = out.target.contact.peer;
        // A service behind a NAT: a hole punch first (unless one failed for this request),
        // direct once punched, otherwise through one of the relays it keeps open.
        let mut punch = false;
        let relays = if let Some(c) = &out.check_for {
            vec![c.relay.clone()]
        } else if out.target.reachable || self.punched.contains(&service) {
            score::choose(
                if out.target.reachable {
                    out.strategy
                } else {
                    Strategy::Direct
                },
                &out.candidates,
                &self.local,
                &service,
                out.own_coords.as_ref(),
                out.target.coords.as_ref(),
                &out.excluded,
                self.config.multi_hop_relays,
                &mut self.rng,
            )
        } else {
            let usable: Vec<&Contact> = out
                .target
                .relays
                .iter()
                .filter(|r| !out.excluded.contains(&r.peer) && r.peer != self.local)
                .collect();
            let pick = usable
                .get(usize::from(out.attempts - 1) % usable.len().max(1))
                .or(out.target.relays.first().as_ref())
                .map(|c| (*c).clone());
            punch = !out.punch_failed && pick.is_some();
            pick.into_iter().collect()
        };
        let route = self.rng.next_u64();
        let timeout = phase_timeout(
            &self.config,
            &out.candidates,
            out.own_coords,
            out.target.coords,
            &relays,
        );
        let deadline = (now + timeout).min(out.deadline);
        let (phase, data) = if punch {
            // Our own probe opens our mapping; the Punch through the relay asks the service
            // to probe us, which opens its own.
            if let Some(probe) = encode(&RouteData::Probe) {
                self.transmits.push((
                    out.target.contact.clone(),
                    RouteMessage::Forward {
                        route,
                        ahead: vec![],
                        behind: vec![],
                        data: probe,
                    },
                ));
            }
            self.stats.punches += 1;
            // Ask through every relay the service lists but the one the route names: one
            // dropping the request (dead, or malicious) must not stop the punch.
            if let Some(punch) = encode(&RouteData::Punch) {
                for r in out
                    .target
                    .relays
                    .iter()
                    .filter(|r| !relays.iter().any(|x| x.peer == r.peer))
                {
                    self.transmits.push((
                        r.clone(),
                        RouteMessage::Forward {
                            route,
                            ahead: vec![out.target.contact.clone()],
                            behind: vec![],
                            data: punch.clone(),
                        },
                    ));
                }
            }
            (Phase::Punching, encode(&RouteData::Punch))
        } else if relays.is_empty() {
            let payload = Payload::Request {
                id: route,
                body: out.body.clone(),
            };
            (Phase::Sent, encode(&RouteData::Plain(payload)))
        } else {
            let Some(key) = out.target.noise_key else {
                return;
            };
            let seed = handshake_seed(&mut self.entropy, &mut self.rng);
            match Initiator::start(&self.static_key, &key, seed) {
                Ok((init, msg1)) => (
                    Phase::Handshaking(Box::new(init)),
                    encode(&RouteData::Hello(msg1)),
                ),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot start an end-to-end handshake");
                    (Phase::Sent, None)
                }
            }
        };
        for r in &relays {
            self.trust.entry(r.peer).or_default().load += 1;
        }
        out.current = Some(Attempt {
            route,
            relays: relays.clone(),
            phase,
            sent: now,
            deadline,
        });
        self.routes.insert(route, id);
        if let Some(data) = data {
            let target = out.target.contact.clone();
            self.send_forward(route, &relays, &target, data);
        }
        self.bound_trust();
    }

    /// Sends `data` back along `path` (the hops towards the client, nearest first).
    fn send_backward(&mut self, route: u64, mut path: Vec<Contact>, data: Vec<u8>) {
        if path.is_empty() {
            return;
        }
        let next = path.remove(0);
        self.transmits.push((
            next,
            RouteMessage::Backward {
                route,
                ahead: path,
                data,
            },
        ));
    }

    fn send_forward(&mut self, route: u64, relays: &[Contact], target: &Contact, data: Vec<u8>) {
        let mut path: Vec<Contact> = relays.to_vec();
        path.push(target.clone());
        let next = path.remove(0);
        self.transmits.push((
            next,
            RouteMessage::Forward {
                route,
                ahead: path,
                behind: vec![],
                data,
            },
        ));
    }

    fn bound_trust(&mut self) {
        while self.trust.len() > self.config.max_trust_entries {
            // Forget an idle relay: the first one (by id) that carries nothing for us now.
            let Some(idle) = self
                .trust
                .iter()
                .find(|(_, t)| t.load == 0)
                .map(|(p, _)| *p)
            else {
                break;
            };
            self.trust.remove(&idle);
        }
    }

    /// Forwards a frame to its next hop, if this node relays and is within its rate bound.
    fn relay(&mut self, now: Instant, next: Contact, frame: RouteMessage) {
        if !self.relay_allowed(now) {
            self.stats.relay_refused += 1;
            return;
        }
        self.stats.relayed += 1;
        self.transmits.push((next, frame));
    }

    fn relay_allowed(&mut self, now: Instant) -> bool {
        if !self.config.relay {
            return false;
        }
        let (start, count) = &mut self.relay_window;
        if now.saturating_duration_since(*start) >= Duration::from_secs(1) {
            *start = now;
            *count = 0;
        }
        if *count >= self.config.max_relayed_per_s {
            return false;
        }
        *count += 1;
        true
    }

    /// A route frame from `from`.
    pub fn handle_message(&mut self, now: Instant, from: Contact, msg: RouteMessage) {
        match msg {
            RouteMessage::Forward {
                route,
                mut ahead,
                mut behind,
                data,
            } => {
                behind.push(from);
                if !ahead.is_empty() {
                    let next = ahead.remove(0);
                    let frame = RouteMessage::Forward {
                        route,
                        ahead,
                        behind,
                        data,
                    };
                    self.relay(now, next, frame);
                    return;
                }
                self.at_service(now, route, behind, &data);
            }
            RouteMessage::Backward {
                route,
                mut ahead,
                data,
            } => {
                if !ahead.is_empty() {
                    let next = ahead.remove(0);
                    self.relay(now, next, RouteMessage::Backward { route, ahead, data });
                    return;
                }
                self.at_client(now, route, &data);
            }
        }
    }

    fn at_service(&mut self, now: Instant, route: u64, behind: Vec<Contact>, data: &[u8]) {
        let (Some(client), Some(neighbour)) = (
            behind.first().map(|c| c.peer),
            behind.last().map(|c| c.peer),
        ) else {
            return;
        };
        let Ok(data) = postcard::from_bytes::<RouteData>(data) else {
            self.stats.bad_frames += 1;
            return;
        };
        let key = (client, route);
        let reply = |request| ReplyTo {
            route,
            client,
            back: behind.clone(),
            request,
        };
        match data {
            RouteData::Plain(Payload::Request { .. }) if behind.len() > 1 => {
                // Through relays a request is sealed end to end, or it is not taken.
                self.stats.plaintext_refused += 1;
            }
            RouteData::Plain(Payload::Request { id, body }) => {
                self.events.push_back(RouteEvent::Request {
                    reply: reply(id),
                    body,
                });
            }
            RouteData::Hello(msg1) => {
                let seed = self.handshake_seed();
                match Responder::new(&self.static_key, seed).respond(&msg1) {
                    Ok((pending, msg2)) => {
                        self.handshakes.insert(key, pending, neighbour);
                        if let Some(data) = encode(&RouteData::HelloAck(msg2)) {
                            let path: Vec<Contact> = behind.iter().rev().cloned().collect();
                            self.send_backward(route, path, data);
                        }
                    }
                    Err(_) => self.stats.bad_frames += 1,
                }
            }
            RouteData::Finish(msg3) => {
                let Some(pending) = self.handshakes.remove(&key) else {
                    self.stats.bad_frames += 1;
                    return;
                };
                match pending.finish(&msg3) {
                    Ok((session, first)) => {
                        self.sessions.insert(key, session, neighbour);
                        match postcard::from_bytes::<Payload>(&first) {
                            Ok(Payload::Request { id, body }) => {
                                if self.is_own_check(&body) {
                                    // A helper's request for one of our relay checks: answer
                                    // it like any other, the helper confirms the answer.
                                    self.respond(now, reply(id), body);
                                } else {
                                    self.events.push_back(RouteEvent::Request {
                                        reply: reply(id),
                                        body,
                                    });
                                }
                            }
                            _ => self.stats.bad_frames += 1,
                        }
                    }
                    Err(_) => self.stats.bad_frames += 1,
                }
            }
            RouteData::Punch => {
                if let (Some(client), Some(probe)) = (behind.first(), encode(&RouteData::Probe)) {
                    self.transmits.push((
                        client.clone(),
                        RouteMessage::Forward {
                            route,
                            ahead: vec![],
                            behind: vec![],
                            data: probe,
                        },
                    ));
                }
            }
            RouteData::Probe => self.punch_answered(now, route),
            RouteData::CheckFor {
                relay,
                service,
                noise_key,
                nonce,
            } if behind.len() == 1 => {
                let from = behind[0].clone();
                let check = CheckFor {
                    relay,
                    service,
                    nonce,
                };
                self.check_for(now, &from, check, noise_key);
            }
            // Only from a helper this check asked (the transport authenticates the sender).
            RouteData::Checked { nonce } if behind.len() == 1 => {
                let from = behind[0].peer;
                if self
                    .relay_checks
                    .get(&nonce)
                    .is_some_and(|(_, _, asked)| asked.contains(&from))
                    && let Some((relay, _, _)) = self.relay_checks.remove(&nonce)
                {
                    self.events
                        .push_back(RouteEvent::RelayChecked { relay, ok: true });
                }
            }
            RouteData::CheckFor { .. } | RouteData::Checked { .. } => self.stats.bad_frames += 1,
            RouteData::Sealed(_)
            | RouteData::HelloAck(_)
            | RouteData::Plain(Payload::Response { .. }) => self.stats.bad_frames += 1,
        }
    }

    /// The service's probe arrived: the hole is punched; send the request directly.
    fn punch_answered(&mut self, now: Instant, route: u64) {
        let Some(&id) = self.routes.get(&route) else {
            return; // the client's own probe, arriving at the service: nothing to do
        };
        let Some(out) = self.requests.get_mut(&id) else {
            return;
        };
        let Some(attempt) = out.current.as_mut() else {
            return;
        };
        if !matches!(attempt.phase, Phase::Punching) {
            return;
        }
        self.stats.punches_succeeded += 1;
        self.punched.insert(out.target.contact.peer);
        if self.punched.len() > self.config.max_trust_entries {
            self.punched.pop_first();
        }
        for r in &attempt.relays {
            if let Some(t) = self.trust.get_mut(&r.peer) {
                t.load = t.load.saturating_sub(1);
            }
        }
        attempt.relays.clear();
        attempt.phase = Phase::Sent;
        attempt.sent = now;
        attempt.deadline = (now + self.config.attempt_timeout).min(out.deadline);
        let payload = Payload::Request {
            id: route,
            body: out.body.clone(),
        };
        if let Some(data) = encode(&RouteData::Plain(payload)) {
            let target = out.target.contact.clone();
            self.send_forward(route, &[], &target, data);
        }
    }

    fn at_client(&mut self, now: Instant, route: u64, data: &[u8]) {
        let Some(&id) = self.routes.get(&route) else {
            self.stats.bad_frames += 1;
            return;
        };
        let Ok(data) = postcard::from_bytes::<RouteData>(data) else {
            self.stats.bad_frames += 1;
            return;
        };
        let Some(out) = self.requests.get_mut(&id) else {
            return;
        };
        let Some(attempt) = out.current.as_mut() else {
            return;
        };
        let response = match (data, &mut attempt.phase) {
            (RouteData::Plain(Payload::Response { body, .. }), Phase::Sent) => Some(body),
            (RouteData::HelloAck(msg2), Phase::Handshaking(_)) => {
                let Phase::Handshaking(init) = std::mem::replace(&mut attempt.phase, Phase::Sent)
                else {
                    return;
                };
                let first = encode(&Payload::Request {
                    id: route,
                    body: out.body.clone(),
                });
                match first.map(|f| init.finish(&msg2, &f)) {
                    Some(Ok((session, msg3))) => {
                        attempt.phase = Phase::Open(Box::new(session));
                        attempt.sent = now;
                        // Each phase of an attempt (handshake, request) gets its own timeout.
                        let timeout = phase_timeout(
                            &self.config,
                            &out.candidates,
                            out.own_coords,
                            out.target.coords,
                            &attempt.relays,
                        );
                        attempt.deadline = (now + timeout).min(out.deadline);
                        if let Some(data) = encode(&RouteData::Finish(msg3)) {
                            let relays = attempt.relays.clone();
                            let target = out.target.contact.clone();
                            self.send_forward(route, &relays, &target, data);
                        }
                    }
                    _ => self.stats.bad_frames += 1,
                }
                None
            }
            (RouteData::Sealed(frame), Phase::Open(session)) => match session
                .decrypt(&frame)
                .ok()
                .and_then(|p| postcard::from_bytes::<Payload>(&p).ok())
            {
                Some(Payload::Response { body, .. }) => Some(body),
                _ => {
                    self.stats.bad_frames += 1;
                    None
                }
            },
            _ => {
                self.stats.bad_frames += 1;
                None
            }
        };
        let Some(body) = response else { return };
        let Some(out) = self.requests.remove(&id) else {
            return;
        };
        let Some(attempt) = out.current else { return };
        self.routes.remove(&attempt.route);
        for r in &attempt.relays {
            let t = self.trust.entry(r.peer).or_default();
            t.on_success();
            t.load = t.load.saturating_sub(1);
        }
        if let Some(check) = out.check_for {
            // A relay check run for a service: tell it the answer came back.
            if body == check.nonce.to_be_bytes()
                && let Some(data) = encode(&RouteData::Checked { nonce: check.nonce })
            {
                let route = self.rng.next_u64();
                self.send_forward(route, &[], &check.service, data);
            }
            return;
        }
        self.events.push_back(RouteEvent::Response {
            id,
            body,
            rtt: now.saturating_duration_since(attempt.sent),
            relays: attempt.relays.iter().map(|c| c.peer).collect(),
            attempts: out.attempts,
        });
    }

    /// Call when [`poll_timeout`](Router::poll_timeout) is reached.
    pub fn handle_timeout(&mut self, now: Instant) {
        let failed: Vec<u64> = self
            .relay_checks
            .iter()
            .filter(|(_, (_, d, _))| *d <= now)
            .map(|(r, _)| *r)
            .collect();
        for route in failed {
            if let Some((relay, _, _)) = self.relay_checks.remove(&route) {
                self.events
                    .push_back(RouteEvent::RelayChecked { relay, ok: false });
            }
        }
        let due: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, o)| o.current.as_ref().is_none_or(|a| a.deadline <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(out) = self.requests.get_mut(&id)
                && let Some(a) = &out.current
            {
                self.stats.attempts_timed_out += 1;
                if matches!(a.phase, Phase::Punching) {
                    // The punch failed (or its relay is gone): route through a relay next.
                    out.punch_failed = true;
                }
                for r in &a.relays {
                    out.excluded.insert(r.peer);
                    let t = self.trust.entry(r.peer).or_default();
                    t.on_failure();
                    t.load = t.load.saturating_sub(1);
                }
                // Keep the candidates' view of trust current for the next choice.
                for c in &mut out.candidates {
                    if let Some(t) = self.trust.get(&c.contact.peer) {
                        c.trust = *t;
                    }
                }
            }
            self.attempt(now, id);
        }
    }

    /// The next frame to send.
    pub fn poll_transmit(&mut self) -> Option<(Contact, RouteMessage)> {
        self.transmits.queue.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<RouteEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Router::handle_timeout) must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.requests
            .values()
            .filter_map(|o| o.current.as_ref().map(|a| a.deadline))
            .chain(self.relay_checks.values().map(|(_, d, _)| *d))
            .min()
    }
}

/// 32 bytes for a handshake: from `entropy` when the driver gave one, else from the seeded `rng`.
fn handshake_seed(entropy: &mut Option<Entropy>, rng: &mut ChaCha8Rng) -> [u8; 32] {
    match entropy.as_mut() {
        Some(e) => {
            let mut seed = [0u8; 32];
            e.fill_bytes(&mut seed);
            seed
        }
        // As the simulator always drew them, so its runs stay byte-identical.
        None => rng.random(),
    }
}

/// The router's outgoing frames: a queue bounded at `cap`; frames beyond it are dropped and
/// counted.
struct Outbox {
    queue: VecDeque<(Contact, RouteMessage)>,
    cap: usize,
    dropped: u64,
}

impl Outbox {
    fn push(&mut self, item: (Contact, RouteMessage)) {
        if self.queue.len() >= self.cap {
            self.dropped += 1;
        } else {
            self.queue.push_back(item);
        }
    }
}

/// The end-to-end static key of a node: derived from its identity secret, so that it (and the
/// `noise_key` its service record publishes) survives restarts.
pub fn static_key_for(identity_secret: &[u8; 32]) -> StaticKey {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"beam/e2e-static/v1");
    h.update(identity_secret);
    StaticKey::from_secret(h.finalize().into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)]
    use super::*;
    use crate::record::Addr;

    fn contact(i: u8) -> Contact {
        Contact {
            peer: PeerId::from_bytes([i; 32]),
            addr: Addr::new(format!("10.0.0.{i}:1")),
        }
    }

    #[test]
    fn nothing_crosses_relays_in_clear() {
        let now = Instant::now();
        let mut service = Router::new(
            RouterConfig::default(),
            contact(9).peer,
            static_key_for(&[9; 32]),
            1,
            now,
        );
        let plain = encode(&RouteData::Plain(Payload::Request {
            id: 1,
            body: b"hi".to_vec(),
        }))
        .expect("encodes");
        // Straight from the client: taken (the transport's own encryption is end to end).
        service.handle_message(
            now,
            contact(1),
            RouteMessage::Forward {
                route: 7,
                ahead: vec![],
                behind: vec![],
                data: plain.clone(),
            },
        );
        let Some(RouteEvent::Request { reply, .. }) = service.poll_event() else {
            panic!("a direct plaintext request is taken");
        };
        // Through a relay (the relay appended the client; we heard it from the relay): refused.
        service.handle_message(
            now,
            contact(2),
            RouteMessage::Forward {
                route: 8,
                ahead: vec![],
                behind: vec![contact(1)],
                data: plain,
            },
        );
        assert!(
            service.poll_event().is_none(),
            "a relayed plaintext request was taken"
        );
        assert_eq!(service.stats().plaintext_refused, 1);
        // An answer with no session goes back only straight to the client, never via relays.
        service.respond(now, reply.clone(), b"ok".to_vec());
        assert!(service.poll_transmit().is_some());
        let relayed = ReplyTo {
            back: vec![contact(1), contact(2)],
            ..reply
        };
        service.respond(now, relayed, b"ok".to_vec());
        assert!(
            service.poll_transmit().is_none(),
            "an answer crossed a relay in clear"
        );
        assert_eq!(service.stats().plaintext_refused, 2);
    }

    #[test]
    fn a_handshake_flood_through_one_relay_leaves_other_clients_their_handshakes() {
        let now = Instant::now();
        let config = RouterConfig {
            max_sessions: 256,
            max_sessions_per_neighbour: 16,
            ..RouterConfig::default()
        };
        let mut service = Router::new(config, contact(9).peer, static_key_for(&[9; 32]), 1, now);
        let key = service.static_key.public();
        let hello = |seed: u8| {
            let (init, msg1) =
                Initiator::start(&static_key_for(&[seed; 32]), &key, [seed; 32]).expect("start");
            (init, encode(&RouteData::Hello(msg1)).expect("encodes"))
        };
        // An honest client's handshake through relay 2, then 5,000 through relay 3.
        let (_init, msg) = hello(1);
        service.handle_message(
            now,
            contact(2),
            RouteMessage::Forward {
                route: 1,
                ahead: vec![],
                behind: vec![contact(1)],
                data: msg,
            },
        );
        for i in 0..5000u64 {
            let (_, msg) = hello(5);
            service.handle_message(
                now,
                contact(3),
                RouteMessage::Forward {
                    route: 1000 + i,
                    ahead: vec![],
                    behind: vec![contact(4)],
                    data: msg,
                },
            );
        }
        assert!(service.handshakes.get_mut(&(contact(1).peer, 1)).is_some());
        assert!(service.handshakes.len() <= 17);
        assert!(service.stats().sessions_evicted >= 5000 - 16);
    }
}
