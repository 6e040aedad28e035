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
//! Each phase of an attempt (handshake, request) has a timeout from the route's predicted
//! round trip ([`phase_timeout`], at most `attempt_timeout`); when it passes, every relay of
//! the route is marked down (EWMA, [`score::Trust`]) and excluded for this request, and the
//! next attempt takes another route — until `max_attempts` or the request's overall deadline.
//!
//! A relayed attempt that is late — no answer to its phase by well past the predicted round
//! trip, long before its timeout — gets a second route beside it that shares none of its
//! relays (a hedged request, `RouterConfig::hedge`); the first answer wins. At most two routes
//! are in flight, and a second starts only while the other is late, so routes that answer on
//! time cost nothing extra. A dropping relay then costs a request the hedge delay instead of a
//! whole timeout.

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
    /// Start a second, relay-disjoint route beside a relayed attempt that is late (see the
    /// module docs).
    pub hedge: bool,
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
            hedge: true,
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
    let Some(rtt_ms) = predicted_rtt_ms(candidates, own, service, relays) else {
        return max;
    };
    let secs = (2.0 * rtt_ms + PHASE_MARGIN_MS) / 1000.0;
    Duration::try_from_secs_f64(secs).map_or(max, |t| t.clamp(MIN_PHASE_TIMEOUT.min(max), max))
}

/// How long a phase of a relayed attempt may take before a second route starts beside it:
/// 1.5 × the predicted round trip + [`HEDGE_MARGIN_MS`], or half the phase timeout without a
/// prediction; always at least [`MIN_HEDGE_DELAY`] and short of the phase timeout.
fn hedge_delay(
    config: &RouterConfig,
    candidates: &[Candidate],
    own: Option<Coordinates>,
    service: Option<Coordinates>,
    relays: &[Contact],
) -> Duration {
    let timeout = phase_timeout(config, candidates, own, service, relays);
    let delay = predicted_rtt_ms(candidates, own, service, relays)
        .and_then(|ms| Duration::try_from_secs_f64((1.5 * ms + HEDGE_MARGIN_MS) / 1000.0).ok())
        .unwrap_or(timeout / 2);
    delay.max(MIN_HEDGE_DELAY).min(timeout.mul_f64(0.75))
}

/// The round trip a route's coordinates predict, client → relays → service and back, in ms;
/// `None` when a coordinate is missing or the figure is not a sane number (coordinates come
/// from peers).
fn predicted_rtt_ms(
    candidates: &[Candidate],
    own: Option<Coordinates>,
    service: Option<Coordinates>,
    relays: &[Contact],
) -> Option<f64> {
    let coords = |peer: &PeerId| {
        candidates
            .iter()
            .find(|c| c.contact.peer == *peer)
            .and_then(|c| c.coords)
    };
    let (own, service) = (own?, service?);
    let mut hops = vec![own];
    for r in relays {
        hops.push(coords(&r.peer)?);
    }
    hops.push(service);
    let rtt_ms: f64 = hops
        .windows(2)
        .map(|w| score::predict_ms(&w[0], &w[1]))
        .sum();
    (rtt_ms.is_finite() && rtt_ms >= 0.0).then_some(rtt_ms)
}

/// Added to twice the predicted round trip of a phase (queueing, the service's own work).
const PHASE_MARGIN_MS: f64 = 250.0;
/// The shortest phase timeout, whatever the prediction.
const MIN_PHASE_TIMEOUT: Duration = Duration::from_millis(400);
/// Added to 1.5 × the predicted round trip of a phase before a hedge starts.
const HEDGE_MARGIN_MS: f64 = 100.0;
/// The shortest hedge delay, whatever the prediction.
const MIN_HEDGE_DELAY: Duration = Duration::from_millis(150);

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
    /// Second routes started beside a late attempt.
    pub hedges: u64,
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
    /// Whether (and when) a second route may start beside this one.
    hedge: Hedge,
    /// When the request itself went out (after the handshake on relayed routes).
    sent: Instant,
    deadline: Instant,
}

/// An attempt's standing for a hedge (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hedge {
    /// Not hedged: direct, a hole punch, a relay check, or hedging is off.
    Never,
    /// On time until then.
    Until(Instant),
    /// Late: another route may run beside it.
    Late,
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
    /// The attempts in flight: one, or two while the older one is late.
    current: Vec<Attempt>,
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
            hedges: self.stats.hedges,
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

    /// Forgets what routes taught: every relay's trust and the services a hole punch reached.
    /// Returns how many relays' trust was forgotten.
    pub fn forget(&mut self) -> usize {
        let n = self.trust.len();
        self.trust.clear();
        self.punched.clear();
        n
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
            for a in &mut out.current {
                if a.relays.first().map_or(service, |c| c.peer) == *peer {
                    a.deadline = a.deadline.min(now);
                }
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
                current: Vec::new(),
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
                current: Vec::new(),
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

    /// Starts one more route for request `id` (beside those in flight, sharing none of their
    /// relays) if its budget allows; returns whether it did. A request with nothing in flight
    /// that cannot start another fails.
    fn attempt(&mut self, now: Instant, id: RequestId) -> bool {
        let Some(out) = self.requests.get_mut(&id) else {
            return false;
        };
        if out.attempts >= self.config.max_attempts || now >= out.deadline {
            self.fail_if_idle(id);
            return false;
        }
        out.attempts += 1;
        let service = out.target.contact.peer;
        // Relays the next route must avoid: those that failed, and those of routes in flight.
        let mut avoid = out.excluded.clone();
        avoid.extend(
            out.current
                .iter()
                .flat_map(|a| a.relays.iter().map(|c| c.peer)),
        );
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
                &avoid,
                self.config.multi_hop_relays,
                &mut self.rng,
            )
        } else {
            let usable: Vec<&Contact> = out
                .target
                .relays
                .iter()
                .filter(|r| !avoid.contains(&r.peer) && r.peer != self.local)
                .collect();
            let pick = usable
                .get(usize::from(out.attempts - 1) % usable.len().max(1))
                .or(out.target.relays.first().as_ref())
                .map(|c| (*c).clone());
            punch = !out.punch_failed && pick.is_some() && out.current.is_empty();
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
                self.fail_if_idle(id);
                return false;
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
        let hedge = if self.config.hedge && !punch && !relays.is_empty() && out.check_for.is_none()
        {
            Hedge::Until(
                now + hedge_delay(
                    &self.config,
                    &out.candidates,
                    out.own_coords,
                    out.target.coords,
                    &relays,
                ),
            )
        } else {
            Hedge::Never
        };
        out.current.push(Attempt {
            route,
            relays: relays.clone(),
            phase,
            hedge,
            sent: now,
            deadline,
        });
        self.routes.insert(route, id);
        if let Some(data) = data {
            let target = out.target.contact.clone();
            self.send_forward(route, &relays, &target, data);
        }
        self.bound_trust();
        true
    }

    /// Fails request `id` if no route of it is in flight.
    fn fail_if_idle(&mut self, id: RequestId) {
        let Some(out) = self.requests.get(&id) else {
            return;
        };
        if !out.current.is_empty() {
            return;
        }
        let attempts = out.attempts;
        if self
            .requests
            .remove(&id)
            .is_some_and(|o| o.check_for.is_none())
        {
            self.events.push_back(RouteEvent::Failed { id, attempts });
        }
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
        let Some(attempt) = out.current.iter_mut().find(|a| a.route == route) else {
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
        let Some(attempt) = out.current.iter_mut().find(|a| a.route == route) else {
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
                        // The handshake answered: the request phase gets its own hedge delay.
                        if attempt.hedge != Hedge::Never {
                            attempt.hedge = Hedge::Until(
                                now + hedge_delay(
                                    &self.config,
                                    &out.candidates,
                                    out.own_coords,
                                    out.target.coords,
                                    &attempt.relays,
                                ),
                            );
                        }
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
        let mut winner = None;
        for a in out.current {
            self.routes.remove(&a.route);
            let won = a.route == route;
            for r in &a.relays {
                let t = self.trust.entry(r.peer).or_default();
                // A helper's check is about the service's relay, not this node's own routes.
                if won && out.check_for.is_none() {
                    t.on_success();
                }
                t.load = t.load.saturating_sub(1);
            }
            if won {
                winner = Some(a);
            }
        }
        let Some(attempt) = winner else { return };
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
            .filter(|(_, o)| {
                o.current.is_empty()
                    || o.current.iter().any(|a| a.deadline <= now)
                    || o.current
                        .iter()
                        .any(|a| matches!(a.hedge, Hedge::Until(t) if t <= now))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(out) = self.requests.get_mut(&id) else {
                continue;
            };
            let (expired, live): (Vec<Attempt>, Vec<Attempt>) = std::mem::take(&mut out.current)
                .into_iter()
                .partition(|a| a.deadline <= now);
            out.current = live;
            for a in expired {
                self.routes.remove(&a.route);
                self.stats.attempts_timed_out += 1;
                if matches!(a.phase, Phase::Punching) {
                    // The punch failed (or its relay is gone): route through a relay next.
                    out.punch_failed = true;
                }
                for r in &a.relays {
                    out.excluded.insert(r.peer);
                    let t = self.trust.entry(r.peer).or_default();
                    if out.check_for.is_none() {
                        t.on_failure();
                    }
                    t.load = t.load.saturating_sub(1);
                }
            }
            // Keep the candidates' view of trust current for the next choice.
            for c in &mut out.candidates {
                if let Some(t) = self.trust.get(&c.contact.peer) {
                    c.trust = *t;
                }
            }
            for a in &mut out.current {
                if matches!(a.hedge, Hedge::Until(t) if t <= now) {
                    a.hedge = Hedge::Late;
                }
            }
            // Another route when none is in flight, or when the one in flight is late.
            let hedge = out.current.len() == 1 && out.current[0].hedge == Hedge::Late;
            if out.current.is_empty() {
                self.attempt(now, id);
            } else if hedge && self.attempt(now, id) {
                self.stats.hedges += 1;
            }
            self.fail_if_idle(id);
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
            .flat_map(|o| o.current.iter())
            .flat_map(|a| match a.hedge {
                Hedge::Until(t) => [Some(a.deadline), Some(t)],
                _ => [Some(a.deadline), None],
            })
            .flatten()
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

    /// Routers one fixed delay apart (10 ms each way, as their coordinates predict), some
    /// relays dropping every frame they should relay; services answer every request.
    struct Line {
        routers: BTreeMap<PeerId, Router>,
        contacts: BTreeMap<PeerId, Contact>,
        droppers: BTreeSet<PeerId>,
        queue: BTreeMap<(Instant, u64), (Contact, PeerId, RouteMessage)>,
        seq: u64,
        now: Instant,
    }

    const HOP: Duration = Duration::from_millis(10);

    fn at_origin() -> Coordinates {
        Coordinates {
            x: 0.0,
            y: 0.0,
            height: 10.0,
        }
    }

    impl Line {
        fn add(&mut self, i: u8, config: RouterConfig, seed: u64) {
            let c = contact(i);
            let router = Router::new(config, c.peer, static_key_for(&[i; 32]), seed, self.now);
            self.routers.insert(c.peer, router);
            self.contacts.insert(c.peer, c);
        }

        /// Runs until `client` hears of request `id`: its answer time, or `None` if it failed.
        fn until_done(&mut self, client: PeerId, id: RequestId) -> Option<Duration> {
            let start = self.now;
            let mut answered = None;
            while self.now < start + Duration::from_secs(10) {
                for (peer, r) in &mut self.routers {
                    while let Some(e) = r.poll_event() {
                        match e {
                            RouteEvent::Request { reply, body } => r.respond(self.now, reply, body),
                            RouteEvent::Response { id: got, .. } if *peer == client => {
                                assert_eq!(got, id);
                                assert!(answered.is_none(), "two answers to one request");
                                answered = Some(self.now - start);
                            }
                            RouteEvent::Failed { .. } if *peer == client => return None,
                            _ => {}
                        }
                    }
                    while let Some((to, msg)) = r.poll_transmit() {
                        let (RouteMessage::Forward { ahead, .. }
                        | RouteMessage::Backward { ahead, .. }) = &msg;
                        if !ahead.is_empty() && self.droppers.contains(peer) {
                            continue;
                        }
                        self.seq += 1;
                        let from = self.contacts[peer].clone();
                        self.queue
                            .insert((self.now + HOP, self.seq), (from, to.peer, msg));
                    }
                }
                let next_msg = self.queue.keys().next().map(|k| k.0);
                let next_timer = self.routers.values().filter_map(Router::poll_timeout).min();
                let Some(next) = next_msg.into_iter().chain(next_timer).min() else {
                    return answered;
                };
                if answered.is_some() && next_msg.is_none() {
                    return answered;
                }
                self.now = self.now.max(next);
                while let Some(entry) = self.queue.first_entry() {
                    if entry.key().0 > self.now {
                        break;
                    }
                    let (from, to, msg) = entry.remove();
                    if let Some(r) = self.routers.get_mut(&to) {
                        r.handle_message(self.now, from, msg);
                    }
                }
                for r in self.routers.values_mut() {
                    if r.poll_timeout().is_some_and(|t| t <= self.now) {
                        r.handle_timeout(self.now);
                    }
                }
            }
            answered
        }
    }

    /// Mean answer time of 40 multi-hop requests (a fresh client each) over 8 relays of
    /// which `droppers` drop, and the hedges the clients started.
    fn multi_hop_through_droppers(droppers: u8, hedge: bool) -> (Vec<Duration>, u64) {
        let now = Instant::now();
        let mut line = Line {
            routers: BTreeMap::new(),
            contacts: BTreeMap::new(),
            droppers: (20..20 + droppers).map(|i| contact(i).peer).collect(),
            queue: BTreeMap::new(),
            seq: 0,
            now,
        };
        line.add(9, RouterConfig::default(), 9);
        for i in 20..28 {
            line.add(i, RouterConfig::default(), u64::from(i));
        }
        let candidates: Vec<Candidate> = (20..28)
            .map(|i| Candidate {
                contact: contact(i),
                coords: Some(at_origin()),
                trust: Trust::default(),
                relays: true,
                alive: true,
            })
            .collect();
        let target = Target {
            contact: contact(9),
            noise_key: Some(static_key_for(&[9; 32]).public()),
            coords: Some(at_origin()),
            relays: vec![],
            reachable: true,
        };
        let mut times = vec![];
        let mut hedges = 0;
        for seed in 0..40 {
            let config = RouterConfig {
                hedge,
                ..RouterConfig::default()
            };
            line.add(1, config, seed);
            let client = contact(1).peer;
            let r = line.routers.get_mut(&client).expect("client");
            let id = r
                .request(
                    line.now,
                    target.clone(),
                    Strategy::MultiHop,
                    b"hi".to_vec(),
                    candidates.clone(),
                    Some(at_origin()),
                )
                .expect("request starts");
            let took = line
                .until_done(client, id)
                .expect("answered within its attempts");
            times.push(took);
            hedges += line.routers[&client].stats().hedges;
        }
        (times, hedges)
    }

    fn mean(d: &[Duration]) -> Duration {
        d.iter().sum::<Duration>() / u32::try_from(d.len()).expect("few")
    }

    #[test]
    fn a_late_relayed_attempt_gets_a_second_route_and_the_first_answer_wins() {
        // 3 of 8 relays drop: a 2-relay route is honest 10 times in 28.
        let (plain, none) = multi_hop_through_droppers(3, false);
        let (hedged, hedges) = multi_hop_through_droppers(3, true);
        assert_eq!(none, 0);
        assert!(hedges > 0);
        let (plain, hedged) = (mean(&plain), mean(&hedged));
        eprintln!("mean answer time: one route at a time {plain:?}, hedged {hedged:?}");
        assert!(
            hedged.as_secs_f64() < 0.7 * plain.as_secs_f64(),
            "hedged {hedged:?} vs one route at a time {plain:?}"
        );
    }

    #[test]
    fn routes_that_answer_on_time_are_not_hedged() {
        let (times, hedges) = multi_hop_through_droppers(0, true);
        assert_eq!(
            hedges, 0,
            "a hedge was sent though every route answered on time"
        );
        // Handshake and request: two round trips of three hops each way.
        assert!(times.iter().all(|t| *t <= HOP * 12), "{times:?}");
    }
}
