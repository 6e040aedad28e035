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
    /// Most end-to-end sessions and handshakes held (as a service).
    pub max_sessions: usize,
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
            max_attempts: 5,
            multi_hop_relays: 2,
            max_requests: 256,
            max_sessions: 1024,
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
    handshakes: BTreeMap<(PeerId, u64), PendingResponder>,
    sessions: BTreeMap<(PeerId, u64), Session>,
    /// Insertion order of `handshakes` and `sessions` keys, for eviction.
    session_order: VecDeque<(PeerId, u64)>,
    trust: BTreeMap<PeerId, Trust>,
    /// Services behind a NAT that a hole punch reached (bounded).
    punched: BTreeSet<PeerId>,
    /// Relay checks in flight: route id → (relay, deadline).
    relay_checks: BTreeMap<u64, (PeerId, Instant)>,
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
        Self {
            config,
            local,
            static_key,
            rng: ChaCha8Rng::seed_from_u64(seed),
            entropy: None,
            next_request: 1,
            requests: BTreeMap::new(),
            routes: BTreeMap::new(),
            handshakes: BTreeMap::new(),
            sessions: BTreeMap::new(),
            session_order: VecDeque::new(),
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
            },
        );
        self.attempt(now, id);
        Ok(id)
    }

    /// Checks that `relay` forwards: sends a probe through it to ourselves (`me`). A node
    /// behind a NAT uses this to keep only relays that work in its service record (a relay
    /// can answer pings and still drop what it should forward).
    pub fn check_relay(&mut self, now: Instant, relay: Contact, me: Contact) {
        let route = self.rng.next_u64();
        let Some(data) = encode(&RouteData::Probe) else {
            return;
        };
        self.relay_checks
            .insert(route, (relay.peer, now + self.config.attempt_timeout));
        self.transmits.push((
            relay,
            RouteMessage::Forward {
                route,
                ahead: vec![me],
                behind: vec![],
                data,
            },
        ));
    }

    /// Answers a request this node received as a service.
    pub fn respond(&mut self, _now: Instant, reply: ReplyTo, body: Vec<u8>) {
        let payload = Payload::Response {
            id: reply.request,
            body,
        };
        let data = match self.sessions.get_mut(&(reply.client, reply.route)) {
            Some(session) => {
                let Some(plain) = encode(&payload) else {
                    return;
                };
                match session.encrypt(&plain) {
                    Ok(frame) => RouteData::Sealed(frame),
                    Err(_) => return,
                }
            }
            None => RouteData::Plain(payload),
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
            self.requests.remove(&id);
            self.events.push_back(RouteEvent::Failed { id, attempts });
            return;
        }
        out.attempts += 1;
        let service = out.target.contact.peer;
        // A service behind a NAT: a hole punch first (unless one failed for this request),
        // direct once punched, otherwise through one of the relays it keeps open.
        let mut punch = false;
        let relays = if out.target.reachable || self.punched.contains(&service) {
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
        let deadline = (now + self.config.attempt_timeout).min(out.deadline);
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

    fn remember(&mut self, key: (PeerId, u64)) {
        self.session_order.push_back(key);
        while self.session_order.len() > self.config.max_sessions {
            if let Some(old) = self.session_order.pop_front() {
                self.handshakes.remove(&old);
                self.sessions.remove(&old);
            }
        }
    }

    fn at_service(&mut self, now: Instant, route: u64, behind: Vec<Contact>, data: &[u8]) {
        let Some(client) = behind.first().map(|c| c.peer) else {
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
                        self.handshakes.insert(key, pending);
                        self.remember(key);
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
                        self.sessions.insert(key, session);
                        match postcard::from_bytes::<Payload>(&first) {
                            Ok(Payload::Request { id, body }) => {
                                self.events.push_back(RouteEvent::Request {
                                    reply: reply(id),
                                    body,
                                });
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
            RouteData::Probe => {
                if let Some((relay, _)) = self.relay_checks.remove(&route) {
                    self.events
                        .push_back(RouteEvent::RelayChecked { relay, ok: true });
                } else {
                    self.punch_answered(now, route);
                }
            }
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
                        attempt.deadline = (now + self.config.attempt_timeout).min(out.deadline);
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
            .filter(|(_, (_, d))| *d <= now)
            .map(|(r, _)| *r)
            .collect();
        for route in failed {
            if let Some((relay, _)) = self.relay_checks.remove(&route) {
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
            .chain(self.relay_checks.values().map(|(_, d)| *d))
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
