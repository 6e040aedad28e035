//! One scenario run: from a [`Scenario`] to a report [`Row`].
//!
//! # Timeline
//!
//! - **Join** (first half of the warmup): peers join one after another, evenly spaced, each
//!   bootstrapping from up to three honest DHT servers that joined before it (the first server
//!   joins at time 0 and is everyone's fallback contact).
//! - **Publish** (at three quarters of the warmup): every service peer publishes its record.
//! - **Measure** (`duration_s` after the warmup): requests arrive as a Poisson process of
//!   `requests_per_s`; each picks a random service and a random live client. The client looks
//!   the service record up in the DHT and sends its request to the record's endpoint (direct;
//!   the routing strategies replace this step when they land). A request succeeds when its
//!   answer arrives within 5 s of being issued; requests to a service that is not alive are not
//!   sent and not counted. Requests issued near the end are followed to their deadline.
//! - **Churn**: each peer's session is exponential with mean `mean_session_s`; a leaver is
//!   replaced at once by a new peer (new identity, same place and participation) on the same
//!   host. **Kill**: at `kill_at_s`, `kill_fraction` of the live peers die, not replaced.
//!
//! # Randomness
//!
//! Independent ChaCha streams, all from the scenario's seed: placement, roles, keys, the
//! network's jitter and loss, the workload, churn. Adding draws to one stream does not shift
//! the others.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use beam_node::record::{Participation, ServiceRecord};
use beam_node::wire::Contact;
use beam_node::{Addr, Keypair, Node, NodeConfig, PeerId};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use turmoil_net::{Packet, Verdict};

use crate::driver::{self, drive};
use crate::latency::{LatencyModel, Placement};
use crate::metrics::{self, Metrics, REQUEST_DEADLINE};
use crate::net::{HostId, SimHandle, SimNet, host_ip};
use crate::peer::{Adversaries, Command, SimPeer, socket_addr};
use crate::report::Row;
use crate::scenario::{Scenario, Share, Strategy};
use crate::transport::Connections;

/// Wall-clock time the simulated network pretends it started at (records carry unix times).
pub const UNIX_START: u64 = 1_800_000_000;

/// Why a scenario could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The scenario asks for something the simulator does not model yet.
    #[error("{key}: {problem}")]
    Unsupported {
        /// The scenario key.
        key: &'static str,
        /// What is missing.
        problem: String,
    },
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// The report row (deterministic).
    pub row: Row,
    /// Messages per peer per second, by participation level (light, routing, full).
    pub msgs_per_level: [f64; 3],
    /// Services actually published (capped at the honest non-light peers).
    pub services: usize,
    /// Median relative error of the peers' Vivaldi predictions against the latency model's
    /// mean RTT, over random pairs of live peers (`None` without coordinates).
    pub coords_median_error: Option<f64>,
    /// Hole punches started and succeeded (by live peers, whole run).
    pub punches: (u64, u64),
}

/// Streams of the scenario's randomness.
#[derive(Clone, Copy)]
enum Stream {
    Placement = 1,
    Roles,
    Keys,
    Network,
    Workload,
    Churn,
    /// Adversaries' ground ids (eclipse) and their lies.
    Adversary,
}

fn rng(seed: u64, stream: Stream) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(stream as u64);
    r
}

/// Bits of key prefix an eclipsing adversary shares with its target (grinding costs 2^bits
/// key generations per adversary; 8 bits put it nearer the target than all but ~1 in 256
/// honest peers).
const ECLIPSE_BITS: usize = 8;

fn leading_zeros(d: &beam_node::Distance) -> usize {
    d.bucket().map_or(256, |b| 255 - b)
}

/// How many adversaries the scenario asks for, among `servers` servers of `n` peers, when
/// `n_nat` honest peers will be behind NATs. With `of = "servers"` the share is of the
/// dialable servers, which NATs (drawn among the honest peers afterwards) thin out: the
/// smallest count that reaches the share of the expected dialable servers.
fn adversary_count(scenario: &Scenario, n: usize, servers: usize, n_nat: usize) -> usize {
    let f = scenario.adversary.fraction;
    let max = servers.saturating_sub(1);
    match scenario.adversary.of {
        Share::Peers => ((f * n as f64).round() as usize).min(max),
        Share::Servers => (0..=max)
            .find(|&a| {
                let honest = (servers - a) as f64;
                let nat_share = (n_nat as f64 / (n - a).max(1) as f64).min(1.0);
                let dialable = a as f64 + honest * (1.0 - nat_share);
                a as f64 >= (f * dialable).round()
            })
            .unwrap_or(max),
    }
}

fn level_index(p: Participation) -> usize {
    match p {
        Participation::Light => 0,
        Participation::Routing => 1,
        Participation::Full => 2,
    }
}

/// The live state every workload action needs, shared with the workload task.
struct World {
    handle: SimHandle,
    hosts: Vec<HostId>,
    ips: Vec<std::net::IpAddr>,
    roles: Vec<Participation>,
    adversary: Vec<bool>,
    /// Behind a NAT (cannot be dialled).
    nat: Vec<bool>,
    adversaries: Rc<Adversaries>,
    /// The peer currently on each host (None: dead).
    current: Vec<Option<PeerId>>,
    senders: Vec<Option<UnboundedSender<Command>>>,
    events: UnboundedSender<()>,
    metrics: Rc<RefCell<Metrics>>,
    start: Instant,
    strategy: beam_node::routing::Strategy,
    /// `workload.republish_s`, when set.
    republish: Option<Duration>,
    /// `dht.caching`.
    caching: bool,
    /// `dht.remember_resolved_s`.
    remember_resolved: Option<Duration>,
    /// The service the adversaries eclipse, if they do.
    eclipse: Option<usize>,
    /// Per host, how many of its peers have left (a connection dies with its peer).
    epochs: Rc<Vec<Cell<u32>>>,
}

impl World {
    fn contact(&self, host: usize) -> Option<Contact> {
        Some(Contact {
            peer: self.current[host]?,
            addr: Addr::new(socket_addr(self.ips[host]).to_string()),
        })
    }

    fn honest_servers_alive(&self) -> Vec<usize> {
        (0..self.hosts.len())
            .filter(|&i| {
                self.current[i].is_some()
                    && self.roles[i].is_server()
                    && !self.adversary[i]
                    && !self.nat[i]
            })
            .collect()
    }

    /// Starts a peer with identity `kp` on `host` after `delay`, bootstrapping via `contacts`.
    fn start_peer(
        &mut self,
        host: usize,
        kp: Keypair,
        node_seed: u64,
        delay: Duration,
        contacts: Vec<Contact>,
    ) {
        let (tx, rx) = unbounded_channel();
        self.senders[host] = Some(tx);
        self.current[host] = Some(kp.peer_id());
        let mut config = NodeConfig::new(self.roles[host]);
        if self.nat[host] {
            config = config.behind_nat();
        }
        // The simulated 10/8 stands in for the Internet: its /24s are limited like public ones.
        config.dht.subnet_limits.limit_private = true;
        if let Some(every) = self.republish {
            config.dht.republish_interval = every;
        }
        if self.caching {
            config.dht.cache = Some(beam_node::dht::CacheConfig::default());
        }
        if let Some(d) = self.remember_resolved {
            config.remember_resolved = d;
        }
        let adversary = self.adversary[host].then(|| Rc::clone(&self.adversaries));
        let is_adversary = self.adversary[host];
        self.metrics
            .borrow_mut()
            .host_by_peer
            .insert(kp.peer_id(), host as u32);
        let metrics = Rc::clone(&self.metrics);
        let events = self.events.clone();
        let addr = socket_addr(self.ips[host]);
        let start = self.start;
        let strategy = self.strategy;
        self.handle.spawn(self.hosts[host], async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let socket = match turmoil_net::shim::tokio::net::UdpSocket::bind(addr).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("host {host}: cannot bind the simulated socket: {e}");
                    return;
                }
            };
            let now = driver::now();
            let unix = UNIX_START + now.saturating_duration_since(start).as_secs();
            let mut node = Node::new(config, kp.clone(), node_seed, now, unix);
            node.bootstrap(now, contacts);
            let mut peer = SimPeer::new(host, node, adversary, metrics, strategy);
            if is_adversary {
                peer = peer.with_keypair(kp, now);
            }
            drive(socket, peer, rx, events).await;
        });
    }

    fn kill(&mut self, host: usize) {
        // Requests this peer is waiting for can no longer be answered to anyone.
        let now = driver::now();
        for r in self.metrics.borrow_mut().requests.values_mut() {
            if r.client == host && r.answer.is_none() && now < r.start + REQUEST_DEADLINE {
                r.client_left = true;
            }
        }
        self.handle.kill(self.hosts[host]);
        self.epochs[host].set(self.epochs[host].get() + 1);
        self.current[host] = None;
        self.senders[host] = None;
    }

    fn send(&self, host: usize, cmd: Command) -> bool {
        self.senders[host]
            .as_ref()
            .is_some_and(|s| s.send(cmd).is_ok())
    }
}

/// An action of the workload, at a simulated time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Publish,
    StartMeasuring,
    Request,
    /// The warm request after a cold one: the same client (of this generation) asks the
    /// same service again.
    FollowUp {
        client: usize,
        generation: u32,
        service: usize,
    },
    Kill,
    /// The session of the peer on this host (of this generation) ends.
    Leave {
        host: usize,
        generation: u32,
    },
    StopMeasuring,
}

/// Runs `scenario`; `progress` is called with the simulated seconds done and total.
///
/// The steps, each its own function: who the hosts are ([`cast`]), their identities and
/// addresses ([`identities`]), the network between them ([`network`]), the joins
/// ([`spawn_joins`]), the workload's schedule and task ([`Workload`]), then the run and its
/// summary ([`summarize_run`]). A new scenario key goes to the step it changes.
pub fn run(scenario: &Scenario, mut progress: impl FnMut(u64, u64)) -> Result<RunOutput, RunError> {
    let n = scenario.peers;
    let model = LatencyModel::default();
    let placements: Rc<Vec<Placement>> =
        Rc::new(model.place_peers(scenario, &mut rng(scenario.seed, Stream::Placement)));
    let cast = cast(scenario)?;
    let ids = identities(scenario, &cast);
    let epochs: Rc<Vec<Cell<u32>>> = Rc::new((0..n).map(|_| Cell::new(0)).collect());
    let connections = Rc::new(RefCell::new(Connections::new(&scenario.transport)));
    let mut net = network(
        scenario,
        &model,
        &placements,
        &ids.ips,
        &cast.nat,
        (&epochs, &connections),
    );
    let hosts: Vec<HostId> = (0..n).map(|i| net.add_host(ids.ips[i])).collect();

    let metrics = Rc::new(RefCell::new(Metrics::new(n)));
    let (events_tx, events_rx) = unbounded_channel::<()>();
    let start = net.block_on(async { driver::now() });
    let world = Rc::new(RefCell::new(World {
        handle: net.handle(),
        ips: hosts.iter().map(|h| net.ip(*h)).collect(),
        hosts,
        roles: cast.roles.clone(),
        adversary: cast.adversary.clone(),
        nat: cast.nat.clone(),
        adversaries: Rc::clone(&ids.adversaries),
        current: vec![None; n],
        senders: vec![None; n],
        events: events_tx,
        metrics: Rc::clone(&metrics),
        start,
        eclipse: ids.eclipse,
        epochs: Rc::clone(&epochs),
        republish: (scenario.workload.republish_s > 0)
            .then(|| Duration::from_secs(scenario.workload.republish_s)),
        caching: scenario.dht.caching,
        remember_resolved: scenario.dht.remember_resolved_s.map(Duration::from_secs),
        strategy: match scenario.workload.strategy {
            Strategy::Direct => beam_node::routing::Strategy::Direct,
            Strategy::MultiHop => beam_node::routing::Strategy::MultiHop,
            Strategy::Geographic => beam_node::routing::Strategy::Geographic,
        },
    }));

    // Joins: the first honest server at 0, then everyone else in host order, evenly spaced
    // over the first half of the warmup.
    let first = first_server(&cast);
    let order: Vec<usize> = std::iter::once(first)
        .chain((0..n).filter(|&i| i != first))
        .collect();
    let spacing = (Duration::from_secs(scenario.warmup_s) / 2) / n.max(1) as u32;
    spawn_joins(&net, &world, scenario.seed, &cast, &ids, &order, spacing);

    let workload = Workload::new(scenario, &cast, &ids, &order, spacing);
    let (end, service_count) = (workload.end, workload.services.len());
    {
        let world = Rc::clone(&world);
        net.spawn_local(workload.run(world));
    }

    // Run, a simulated second at a time.
    let total_s = end.as_secs();
    for s in 1..=total_s {
        net.run_until(Duration::from_secs(s));
        progress(s, total_s);
    }
    net.run_until(end + Duration::from_millis(10));
    drop(events_rx);

    let w = world.borrow();
    let m = metrics.borrow();
    Ok(summarize_run(
        scenario,
        &model,
        &placements,
        &w,
        &m,
        service_count,
        connections.borrow().opened(),
    ))
}

/// Where each host is and what it runs, as [`run`] builds them, for checks that rebuild the
/// same network outside the simulator (the sim-vs-real test in `tests/`).
#[derive(Debug, Clone)]
pub struct Plan {
    /// Each host's place (indexed by host).
    pub placements: Vec<Placement>,
    /// Each host's participation level.
    pub roles: Vec<Participation>,
    /// Behind a NAT.
    pub nat: Vec<bool>,
    /// The hosts that publish a service.
    pub services: Vec<usize>,
    /// The host that joins first; the others bootstrap from it.
    pub first: usize,
    /// Each host's identity key (the secret the real `beam` keeps in `identity.key`): the same
    /// ids put the same peers nearest each record's key.
    pub secrets: Vec<[u8; 32]>,
    /// The delays the simulated network gives a message from one host to another, without
    /// jitter ([`LatencyModel::base_one_way`]), and the mean jitter added to each.
    pub model: LatencyModel,
}

impl Plan {
    /// The mean one-way delay from host `a` to host `b`: the base plus the mean jitter.
    pub fn mean_one_way_ms(&self, a: usize, b: usize) -> f64 {
        self.model
            .base_one_way(&self.placements[a], &self.placements[b])
            .as_secs_f64()
            * 1e3
            + self.model.jitter_mean_ms.max(0.0)
    }
}

/// The [`Plan`] of `scenario`: the same draws as [`run`]'s.
pub fn plan(scenario: &Scenario) -> Result<Plan, RunError> {
    let model = LatencyModel::default();
    let placements = model.place_peers(scenario, &mut rng(scenario.seed, Stream::Placement));
    let cast = cast(scenario)?;
    let ids = identities(scenario, &cast);
    Ok(Plan {
        placements,
        first: first_server(&cast),
        secrets: ids.keys.iter().map(Keypair::secret).collect(),
        roles: cast.roles,
        nat: cast.nat,
        services: cast.service_hosts,
        model,
    })
}

/// The honest server that joins first.
fn first_server(cast: &Cast) -> usize {
    cast.honest_servers.iter().copied().min().unwrap_or(0)
}

/// Who each host is (indexed by host).
struct Cast {
    roles: Vec<Participation>,
    adversary: Vec<bool>,
    /// Behind a NAT.
    nat: Vec<bool>,
    /// Honest servers not behind a NAT (the bootstrap contacts).
    honest_servers: Vec<usize>,
    /// The hosts that publish a service, in host order.
    service_hosts: Vec<usize>,
}

/// Roles by exact counts, shuffled; adversaries among the servers; NATs; the services.
fn cast(scenario: &Scenario) -> Result<Cast, RunError> {
    let n = scenario.peers;
    let counts = scenario.participation_counts();
    let mut roles: Vec<Participation> = std::iter::repeat_n(Participation::Light, counts.light)
        .chain(std::iter::repeat_n(Participation::Routing, counts.routing))
        .chain(std::iter::repeat_n(Participation::Full, counts.full))
        .collect();
    let mut role_rng = rng(scenario.seed, Stream::Roles);
    roles.shuffle(&mut role_rng);
    let mut servers: Vec<usize> = (0..n).filter(|&i| roles[i].is_server()).collect();
    servers.shuffle(&mut role_rng);
    let n_nat = (scenario.nat.fraction * n as f64).round() as usize;
    let n_adv = adversary_count(scenario, n, servers.len(), n_nat);
    if scenario.adversary.sybil_subnet && n_adv > 254 {
        return Err(RunError::Unsupported {
            key: "adversary.sybil_subnet",
            problem: format!("{n_adv} adversaries do not fit in one /24 (254 addresses)"),
        });
    }
    let mut adversary = vec![false; n];
    for &i in &servers[..n_adv] {
        adversary[i] = true;
    }
    // NAT: a share of all peers, drawn independently of roles; a NAT'ed peer cannot be a DHT
    // server or relay (it cannot be dialled), so it runs in client mode whatever its level.
    let mut nat = vec![false; n];
    let mut all: Vec<usize> = (0..n).collect();
    all.shuffle(&mut role_rng);
    for &i in all.iter().filter(|&&i| !adversary[i]).take(n_nat) {
        nat[i] = true;
    }
    // Services are published by honest non-light peers, behind a NAT or not.
    let mut service_hosts: Vec<usize> = servers[n_adv..].to_vec();
    let honest_servers: Vec<usize> = servers[n_adv..]
        .iter()
        .copied()
        .filter(|&i| !nat[i])
        .collect();
    service_hosts.shuffle(&mut role_rng);
    service_hosts.truncate(scenario.workload.services);
    service_hosts.sort_unstable();
    Ok(Cast {
        roles,
        adversary,
        nat,
        honest_servers,
        service_hosts,
    })
}

/// Every host's identity and address, and what the adversaries share.
struct Identities {
    keys: Vec<Keypair>,
    node_seeds: Vec<u64>,
    ips: Vec<std::net::Ipv4Addr>,
    /// The service the adversaries eclipse, if they do.
    eclipse: Option<usize>,
    adversaries: Rc<Adversaries>,
}

/// Keys (eclipsing adversaries grind theirs near the target's) and addresses: every honest
/// host in a /24 of its own (as on the Internet, where a /24 limit must not hurt honest
/// peers); Sybils all in one.
fn identities(scenario: &Scenario, cast: &Cast) -> Identities {
    let n = scenario.peers;
    let mut key_rng = rng(scenario.seed, Stream::Keys);
    let mut keys: Vec<Keypair> = (0..n).map(|_| Keypair::generate(&mut key_rng)).collect();
    let node_seeds: Vec<u64> = (0..n).map(|_| key_rng.random()).collect();
    let mut adv_rng = rng(scenario.seed, Stream::Adversary);
    let any_adversary = cast.adversary.iter().any(|&a| a);
    let eclipse = (scenario.adversary.eclipse_target && any_adversary)
        .then(|| cast.service_hosts.first().copied())
        .flatten();
    if let Some(target) = eclipse {
        let target_key = keys[target].peer_id().key();
        for i in (0..n).filter(|&i| cast.adversary[i]) {
            keys[i] = loop {
                let kp = Keypair::generate(&mut adv_rng);
                if leading_zeros(&kp.peer_id().key().distance(&target_key)) >= ECLIPSE_BITS {
                    break kp;
                }
            };
        }
    }
    let ips: Vec<std::net::Ipv4Addr> = {
        let mut sybil = 0u8;
        (0..n)
            .map(|i| {
                if scenario.adversary.sybil_subnet && cast.adversary[i] {
                    sybil += 1;
                    std::net::Ipv4Addr::new(172, 30, 0, sybil)
                } else {
                    host_ip(i)
                }
            })
            .collect()
    };
    let mut adv_sorted: Vec<_> = (0..n)
        .filter(|&i| cast.adversary[i])
        .map(|i| {
            let id = keys[i].peer_id();
            (
                id.key(),
                Contact {
                    peer: id,
                    addr: Addr::new(socket_addr(ips[i].into()).to_string()),
                },
            )
        })
        .collect();
    adv_sorted.sort_by_key(|(k, _)| *k);
    let adversaries = Rc::new(
        Adversaries::new(
            adv_sorted,
            scenario.adversary.behaviours.iter().copied().collect(),
            adv_rng.random(),
        )
        .eclipsing(eclipse.map(|t| keys[t].peer_id().key())),
    );
    Identities {
        keys,
        node_seeds,
        ips,
        eclipse,
        adversaries,
    }
}

/// The simulated network: the latency model's delays, `faults.loss`, and NATs that let in only
/// what their host sent to (between two NAT'ed hosts, for the share `nat.punch_success` of
/// pairs; the rest have NATs a punch cannot open).
fn network(
    scenario: &Scenario,
    model: &LatencyModel,
    placements: &Rc<Vec<Placement>>,
    ips: &[std::net::Ipv4Addr],
    nat: &[bool],
    (epochs, connections): (&Rc<Vec<Cell<u32>>>, &Rc<RefCell<Connections>>),
) -> SimNet {
    let seed = scenario.seed;
    let net = SimNet::new();
    let handle = net.handle();
    let (epochs, connections) = (Rc::clone(epochs), Rc::clone(connections));
    let by_ip: std::collections::HashMap<std::net::IpAddr, usize> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| (std::net::IpAddr::V4(*ip), i))
        .collect();
    let loss = scenario.faults.loss;
    let placements = Rc::clone(placements);
    let model = model.clone();
    let mut rng = rng(seed, Stream::Network);
    let nat = nat.to_vec();
    let punch_success = scenario.nat.punch_success;
    // NAT mappings: (host behind the NAT, remote) pairs it has sent to.
    let mut mappings: std::collections::BTreeSet<(u32, u32)> = std::collections::BTreeSet::new();
    let punchable = move |a: usize, b: usize| {
        let (lo, hi) = (a.min(b) as u64, a.max(b) as u64);
        let mut h = ChaCha8Rng::seed_from_u64(seed ^ (lo << 32) ^ hi);
        h.random_bool(punch_success)
    };
    let mut net = net;
    net.set_rule(move |p: &Packet| {
        let (Some(&a), Some(&b)) = (by_ip.get(&p.src), by_ip.get(&p.dst)) else {
            return Verdict::Drop;
        };
        let (Some(pa), Some(pb)) = (placements.get(a), placements.get(b)) else {
            return Verdict::Drop;
        };
        if nat[a] {
            mappings.insert((a as u32, b as u32));
        }
        if nat[b] && (!mappings.contains(&(b as u32, a as u32)) || (nat[a] && !punchable(a, b))) {
            return Verdict::Drop;
        }
        if loss > 0.0 && rng.random_bool(loss) {
            return Verdict::Drop;
        }
        // No connection yet: the message waits for its setup (the transport model).
        let wait = connections.borrow_mut().wait(
            (a as u32, epochs[a].get()),
            (b as u32, epochs[b].get()),
            handle.now(),
            || model.base_one_way(pa, pb) + model.base_one_way(pb, pa),
        );
        Verdict::Deliver(wait + model.one_way(pa, pb, &mut rng))
    });
    net
}

/// Starts every peer in `order`, `spacing` apart, each bootstrapping from up to three honest
/// servers that joined before it and are still there. (Host tasks must be spawned from inside
/// the simulation: the joins run as a task.)
fn spawn_joins(
    net: &SimNet,
    world: &Rc<RefCell<World>>,
    seed: u64,
    cast: &Cast,
    ids: &Identities,
    order: &[usize],
    spacing: Duration,
) {
    let world = Rc::clone(world);
    let (order, roles, adversary, nat) = (
        order.to_vec(),
        cast.roles.clone(),
        cast.adversary.clone(),
        cast.nat.clone(),
    );
    let (keys, node_seeds) = (ids.keys.clone(), ids.node_seeds.clone());
    let mut join_rng = rng(seed, Stream::Roles);
    net.spawn_local(async move {
        let base = tokio::time::Instant::now();
        let mut joined_servers: Vec<usize> = vec![];
        for (rank, &host) in order.iter().enumerate() {
            tokio::time::sleep_until(base + spacing * rank as u32).await;
            let mut w = world.borrow_mut();
            let mut pool: Vec<usize> = joined_servers
                .iter()
                .copied()
                .filter(|&s| w.current[s] == Some(keys[s].peer_id()))
                .collect();
            pool.shuffle(&mut join_rng);
            let contacts: Vec<Contact> =
                pool.iter().take(3).filter_map(|&s| w.contact(s)).collect();
            if roles[host].is_server() && !adversary[host] && !nat[host] {
                joined_servers.push(host);
            }
            w.start_peer(
                host,
                keys[host].clone(),
                node_seeds[host],
                Duration::ZERO,
                contacts,
            );
        }
    });
}

/// The workload: its schedule of actions (publish, measure, requests, kill, churn) and the
/// state it needs to carry them out.
struct Workload {
    schedule: BTreeMap<(Duration, u64), Action>,
    /// The tie-breaker of the next action scheduled.
    next_seq: u64,
    /// When the run ends: the last requests' deadline after measuring stops.
    end: Duration,
    services: Vec<(usize, PeerId)>,
    /// `workload.popularity > 0`: the cumulative Zipf weights of the services, in order.
    popularity: Option<Vec<f64>>,
    /// Requests and kills.
    wl_rng: ChaCha8Rng,
    churn_rng: ChaCha8Rng,
    /// Fresh identities for replacements.
    key_rng: ChaCha8Rng,
    /// The generation of the peer on each host (a leave of an older one is void).
    generation: Vec<u32>,
    next_request: u64,
    n: usize,
    kill_fraction: f64,
    mean_session_s: f64,
    /// `workload.follow_up_s`, when set.
    follow_up: Option<Duration>,
    keys: Vec<Keypair>,
    roles: Vec<Participation>,
}

impl Workload {
    /// The schedule: publishing at three quarters of the warmup, requests as a Poisson process
    /// over the measured window, the kill, and each first peer's session end.
    fn new(
        scenario: &Scenario,
        cast: &Cast,
        ids: &Identities,
        order: &[usize],
        spacing: Duration,
    ) -> Self {
        let (seed, n) = (scenario.seed, scenario.peers);
        let warmup = Duration::from_secs(scenario.warmup_s);
        let measure_start = warmup;
        let measure_end = warmup + Duration::from_secs(scenario.duration_s);
        let mut wl = Workload {
            schedule: BTreeMap::new(),
            next_seq: 0,
            end: measure_end + REQUEST_DEADLINE,
            services: cast
                .service_hosts
                .iter()
                .map(|&h| (h, ids.keys[h].peer_id()))
                .collect(),
            popularity: (scenario.workload.popularity > 0.0).then(|| {
                let s = scenario.workload.popularity;
                let mut total = 0.0;
                (0..cast.service_hosts.len())
                    .map(|i| {
                        total += 1.0 / ((i + 1) as f64).powf(s);
                        total
                    })
                    .collect()
            }),
            wl_rng: rng(seed, Stream::Workload),
            churn_rng: rng(seed, Stream::Churn),
            key_rng: rng(seed, Stream::Keys),
            generation: vec![0; n],
            next_request: 0,
            n,
            kill_fraction: scenario.faults.kill_fraction,
            mean_session_s: scenario.churn.mean_session_s,
            follow_up: (scenario.workload.follow_up_s > 0.0)
                .then(|| Duration::from_secs_f64(scenario.workload.follow_up_s)),
            keys: ids.keys.clone(),
            roles: cast.roles.clone(),
        };
        wl.at(warmup * 3 / 4, Action::Publish);
        wl.at(measure_start, Action::StartMeasuring);
        wl.at(measure_end, Action::StopMeasuring);
        if scenario.workload.requests_per_s > 0.0 {
            let mut t = measure_start.as_secs_f64();
            loop {
                let u: f64 = wl.wl_rng.random_range(f64::EPSILON..1.0);
                t += -u.ln() / scenario.workload.requests_per_s;
                if t >= measure_end.as_secs_f64() {
                    break;
                }
                wl.at(Duration::from_secs_f64(t), Action::Request);
            }
        }
        if scenario.faults.kill_fraction > 0.0 {
            wl.at(Duration::from_secs(scenario.faults.kill_at_s), Action::Kill);
        }
        if wl.mean_session_s > 0.0 {
            for (rank, &host) in order.iter().enumerate() {
                let joined = spacing * rank as u32;
                let t = joined + wl.session();
                wl.at(
                    t,
                    Action::Leave {
                        host,
                        generation: 0,
                    },
                );
            }
        }
        // Skip the draws the initial identities used, so replacements get fresh keys.
        for _ in 0..2 * n {
            let _: [u8; 32] = wl.key_rng.random();
        }
        wl
    }

    fn at(&mut self, t: Duration, a: Action) {
        self.next_seq += 1;
        self.schedule.insert((t, self.next_seq), a);
    }

    /// A session length: exponential with mean `churn.mean_session_s`.
    fn session(&mut self) -> Duration {
        let u: f64 = self.churn_rng.random_range(f64::EPSILON..1.0);
        Duration::from_secs_f64(-u.ln() * self.mean_session_s)
    }

    /// Carries out the schedule, each action at its time.
    async fn run(mut self, world: Rc<RefCell<World>>) {
        let base = tokio::time::Instant::now();
        while let Some(((t, _), action)) = self.schedule.pop_first() {
            tokio::time::sleep_until(base + t).await;
            let now = driver::now();
            let mut w = world.borrow_mut();
            match action {
                Action::Publish => self.publish(&w),
                Action::StartMeasuring => w.metrics.borrow_mut().measuring = true,
                Action::StopMeasuring => {
                    w.metrics.borrow_mut().measuring = false;
                    for h in 0..self.n {
                        w.send(h, Command::Snapshot);
                    }
                }
                Action::Request => self.request(&w, now, base.elapsed()),
                Action::FollowUp {
                    client,
                    generation,
                    service,
                } => {
                    if self.generation[client] == generation && w.current[client].is_some() {
                        self.issue(&w, now, client, service, true);
                    }
                }
                Action::Kill => self.kill(&mut w),
                Action::Leave { host, generation } => {
                    self.leave(&mut w, host, generation, base.elapsed())
                }
            }
        }
    }

    /// Every service publishes its record.
    fn publish(&self, w: &World) {
        for &(h, _) in &self.services {
            let record = ServiceRecord {
                peer: self.keys[h].peer_id(),
                seq: 0,
                expires: 0,
                tor_address: None,
                endpoints: vec![Addr::new(socket_addr(w.ips[h]).to_string())],
                relays: vec![],
                reachable: !w.nat[h],
                coordinates: None,
                participation: self.roles[h],
                noise_key: None,
            };
            w.send(h, Command::Publish(Box::new(record)));
        }
    }

    /// A random live client asks a random service (not sent, not counted, when the service
    /// is not alive).
    fn request(&mut self, w: &World, now: Instant, elapsed: Duration) {
        if self.services.is_empty() {
            return;
        }
        let pick = match &self.popularity {
            // Uniform: the draw the scenarios before `popularity` made (their rows stay).
            None => self.wl_rng.random_range(0..self.services.len()),
            Some(cum) => {
                let total = cum.last().copied().unwrap_or(1.0);
                let u = self.wl_rng.random_range(0.0..total);
                cum.partition_point(|&c| c <= u).min(cum.len() - 1)
            }
        };
        let (service_host, service_id) = self.services[pick];
        if w.current[service_host] != Some(service_id) {
            return;
        }
        let live: Vec<usize> = (0..self.n)
            .filter(|&i| i != service_host && w.current[i].is_some())
            .collect();
        let Some(&client) = live.get(self.wl_rng.random_range(0..live.len().max(1))) else {
            return;
        };
        self.issue(w, now, client, pick, false);
        if let Some(after) = self.follow_up {
            let generation = self.generation[client];
            self.at(
                elapsed + after,
                Action::FollowUp {
                    client,
                    generation,
                    service: pick,
                },
            );
        }
    }

    /// Sends request `next_request` from `client` to the `pick`-th service (if it is alive).
    fn issue(&mut self, w: &World, now: Instant, client: usize, pick: usize, warm: bool) {
        let (service_host, service_id) = self.services[pick];
        if w.current[service_host] != Some(service_id) {
            return;
        }
        self.next_request += 1;
        w.metrics.borrow_mut().requests.insert(
            self.next_request,
            metrics::RequestRecord {
                start: now,
                client,
                service: service_host,
                warm,
                lookup: None,
                answer: None,
                client_left: false,
            },
        );
        w.send(
            client,
            Command::Request {
                id: self.next_request,
                service: service_id,
            },
        );
    }

    /// `faults.kill_fraction` of the live peers die, not replaced.
    fn kill(&mut self, w: &mut World) {
        let mut live: Vec<usize> = (0..self.n).filter(|&i| w.current[i].is_some()).collect();
        live.shuffle(&mut self.wl_rng);
        let k = (self.kill_fraction * live.len() as f64).round() as usize;
        for &h in &live[..k.min(live.len())] {
            w.kill(h);
        }
    }

    /// The peer of generation `g` on `host` leaves; a new one (new identity) takes its place
    /// and gets a session of its own.
    fn leave(&mut self, w: &mut World, host: usize, g: u32, elapsed: Duration) {
        if self.generation[host] != g || w.current[host].is_none() {
            return;
        }
        w.kill(host);
        self.generation[host] += 1;
        let kp = Keypair::generate(&mut self.key_rng);
        let node_seed = self.key_rng.random();
        let mut pool = w.honest_servers_alive();
        pool.shuffle(&mut self.churn_rng);
        let contacts: Vec<Contact> = pool.iter().take(3).filter_map(|&s| w.contact(s)).collect();
        // One tick later: the killed peer's task (and its socket) must be gone before the new
        // peer binds the same port, or dropping the old socket would unbind the new one.
        w.start_peer(host, kp, node_seed, Duration::from_millis(1), contacts);
        let t_next = elapsed + self.session();
        let generation = self.generation[host];
        self.at(t_next, Action::Leave { host, generation });
    }
}

/// What the routing tables at the end say about the overlay.
struct Overlay {
    adversary_server_share: f64,
    captured_share: f64,
    honest_scc_share: f64,
    in_degree_honest: f64,
    in_degree_adversary: f64,
}

/// Builds the overlay graph (an edge from each live peer to every entry of its routing table)
/// and measures how much of it adversaries hold.
fn overlay(w: &World, m: &Metrics) -> Overlay {
    use petgraph::graph::{DiGraph, NodeIndex};
    let n = w.current.len();
    let live = |i: usize| w.current[i].is_some();
    let honest_server =
        |i: usize| live(i) && w.roles[i].is_server() && !w.nat[i] && !w.adversary[i];
    let adversaries = (0..n).filter(|&i| live(i) && w.adversary[i]).count();
    let honest = (0..n).filter(|&i| honest_server(i)).count();
    let mut in_degree = vec![0u64; n];
    let mut g: DiGraph<(), ()> = DiGraph::with_capacity(n, 0);
    let nodes: Vec<NodeIndex> = (0..n).map(|_| g.add_node(())).collect();
    for i in (0..n).filter(|&i| live(i)) {
        for &j in &m.tables[i] {
            let j = j as usize;
            if j < n {
                in_degree[j] += 1;
                if honest_server(i) && honest_server(j) {
                    g.add_edge(nodes[i], nodes[j], ());
                }
            }
        }
    }
    let captured = (0..n)
        .filter(|&i| honest_server(i))
        .filter(|&i| {
            let c = &m.own_closest[i];
            let bad = c.iter().filter(|&&j| w.adversary[j as usize]).count();
            !c.is_empty() && bad * 2 > c.len()
        })
        .count();
    let largest = petgraph::algo::tarjan_scc(&g)
        .into_iter()
        .map(|scc| scc.iter().filter(|x| honest_server(x.index())).count())
        .max()
        .unwrap_or(0);
    let mean = |f: &dyn Fn(usize) -> bool| {
        let v: Vec<u64> = (0..n).filter(|&i| f(i)).map(|i| in_degree[i]).collect();
        if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<u64>() as f64 / v.len() as f64
        }
    };
    let share = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Overlay {
        adversary_server_share: share(adversaries, adversaries + honest),
        captured_share: share(captured, honest),
        honest_scc_share: share(largest, honest),
        in_degree_honest: mean(&|i| honest_server(i)),
        in_degree_adversary: mean(&|i| live(i) && w.adversary[i]),
    }
}

fn summarize_run(
    scenario: &Scenario,
    model: &LatencyModel,
    placements: &[Placement],
    w: &World,
    m: &Metrics,
    services: usize,
    connections_opened: u64,
) -> RunOutput {
    let mut requests = 0u64;
    let mut ok = 0u64;
    let mut rtts = vec![];
    let mut direct = vec![];
    let mut stretch = vec![];
    let mut lookups = 0u64;
    let mut lookups_ok = 0u64;
    let mut hops = 0u64;
    let mut lookup_ms = vec![];
    // Issue to answer, first requests and later ones; stretch per route kind.
    let (mut e2e_cold, mut e2e_warm) = (vec![], vec![]);
    let mut stretch_by = [vec![], vec![], vec![]];
    let mut regions = std::collections::BTreeSet::new();
    let debug = std::env::var_os("BEAM_SIM_DEBUG").is_some();
    for r in m.requests.values().filter(|r| !r.client_left) {
        if debug && r.answer.is_none() {
            eprintln!(
                "failed: client {} ({:?}, nat {}) service {} (nat {}) lookup {:?}",
                r.client, w.roles[r.client], w.nat[r.client], r.service, w.nat[r.service], r.lookup
            );
        }
        requests += 1;
        // A warm request reuses the record its client found: the lookup columns are the
        // first requests'.
        if !r.warm {
            lookups += 1;
            if let Some((true, stats)) = &r.lookup {
                lookups_ok += 1;
                hops += u64::from(stats.hops);
                lookup_ms.push(stats.duration.as_secs_f64() * 1000.0);
            }
        }
        if let Some((at, rtt, relays)) = r.answer
            && at.saturating_duration_since(r.start) <= REQUEST_DEADLINE
        {
            ok += 1;
            let rtt_ms = rtt.as_secs_f64() * 1000.0;
            let d = model.mean_rtt_ms(&placements[r.client], &placements[r.service]);
            rtts.push(rtt_ms);
            direct.push(d);
            stretch.push(rtt_ms / d);
            let kind = match (relays, w.nat[r.service]) {
                (0, false) => 0,
                (0, true) => 1,
                _ => 2,
            };
            stretch_by[kind].push(rtt_ms / d);
            let e2e = at.saturating_duration_since(r.start).as_secs_f64() * 1000.0;
            if r.warm {
                e2e_warm.push(e2e);
            } else {
                e2e_cold.push(e2e);
            }
            regions.insert(placements[r.client].region);
        }
    }
    let lat = metrics::summarize(rtts.iter().copied());
    let look = metrics::summarize(lookup_ms.iter().copied());
    let (cold, warm) = (
        metrics::summarize(e2e_cold.iter().copied()),
        metrics::summarize(e2e_warm.iter().copied()),
    );
    let median_or_nan = |v: &mut Vec<f64>| {
        if v.is_empty() {
            f64::NAN
        } else {
            metrics::median(v)
        }
    };
    let [mut s_direct, mut s_punched, mut s_relayed] = stretch_by;
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };

    // Size estimate: against the live DHT servers (light peers are not in routing tables, so
    // the DHT cannot count them; the estimate is of the servers).
    let live_servers = (0..w.current.len())
        .filter(|&i| w.current[i].is_some() && w.roles[i].is_server() && !w.nat[i])
        .count() as f64;
    let mut err = 0.0;
    let mut err_max: f64 = 0.0;
    let mut counted = 0usize;
    for i in 0..w.current.len() {
        if w.current[i].is_none() || w.adversary[i] {
            continue;
        }
        counted += 1;
        let e = match m.size_estimates[i] {
            Some(e) if live_servers > 0.0 => (e - live_servers).abs() / live_servers,
            _ => 1.0,
        };
        err += e;
        err_max = err_max.max(e);
    }
    let overlay = overlay(w, m);
    let mut eclipse_lookups = (0u64, 0u64);
    if let Some(target) = w.eclipse {
        for r in m
            .requests
            .values()
            .filter(|r| !r.client_left && r.service == target)
        {
            eclipse_lookups.1 += 1;
            if matches!(r.lookup, Some((true, _))) {
                eclipse_lookups.0 += 1;
            }
        }
    }
    let secs = scenario.duration_s as f64;
    let n = scenario.peers as f64;
    let total_msgs: u64 = m.msgs.iter().sum();
    let total_bytes: u64 = m.bytes.iter().sum();
    let mut per_level = [0.0; 3];
    let mut level_count = [0usize; 3];
    for i in 0..w.roles.len() {
        per_level[level_index(w.roles[i])] += m.msgs[i] as f64;
        level_count[level_index(w.roles[i])] += 1;
    }
    for l in 0..3 {
        per_level[l] = if level_count[l] == 0 {
            0.0
        } else {
            per_level[l] / level_count[l] as f64 / secs
        };
    }
    let row = Row {
        scenario: scenario.name.clone(),
        seed: scenario.seed,
        peers: scenario.peers as u64,
        strategy: scenario.workload.strategy,
        sim_s: secs,
        requests,
        routing_success: ratio(ok, requests),
        latency_mean_ms: lat.mean,
        latency_p50_ms: lat.p50,
        latency_p99_ms: lat.p99,
        direct_rtt_mean_ms: if direct.is_empty() {
            0.0
        } else {
            direct.iter().sum::<f64>() / direct.len() as f64
        },
        stretch_p50: metrics::median(&mut stretch),
        lookup_success: ratio(lookups_ok, lookups),
        lookup_hops_mean: if lookups_ok == 0 {
            0.0
        } else {
            hops as f64 / lookups_ok as f64
        },
        lookup_p50_ms: look.p50,
        lookup_p99_ms: look.p99,
        regions_covered: regions.len() as u32,
        size_estimate_error: if counted == 0 {
            1.0
        } else {
            err / counted as f64
        },
        msgs_per_peer_s: total_msgs as f64 / n / secs,
        bytes_per_peer_s: total_bytes as f64 / n / secs,
        adversary_server_share: overlay.adversary_server_share,
        captured_share: overlay.captured_share,
        honest_scc_share: overlay.honest_scc_share,
        in_degree_honest: overlay.in_degree_honest,
        in_degree_adversary: overlay.in_degree_adversary,
        eclipse_lookup_success: if w.eclipse.is_some() && eclipse_lookups.1 > 0 {
            ratio(eclipse_lookups.0, eclipse_lookups.1)
        } else {
            f64::NAN
        },
        size_estimate_error_max: if counted == 0 { 1.0 } else { err_max },
        e2e_p50_ms: cold.p50,
        e2e_p99_ms: cold.p99,
        e2e_warm_p50_ms: warm.p50,
        e2e_warm_p99_ms: warm.p99,
        stretch_direct_p50: median_or_nan(&mut s_direct),
        stretch_punched_p50: median_or_nan(&mut s_punched),
        stretch_relayed_p50: median_or_nan(&mut s_relayed),
        connections_per_peer_s: connections_opened as f64
            / n
            / (scenario.warmup_s + scenario.duration_s) as f64,
    };
    // Vivaldi against the model: 2,000 random pairs of live peers with coordinates.
    let with_coords: Vec<usize> = (0..w.current.len())
        .filter(|&i| w.current[i].is_some() && m.coordinates[i].is_some())
        .collect();
    let mut errors = vec![];
    let mut pair_rng = rng(scenario.seed, Stream::Workload);
    if with_coords.len() >= 2 {
        for _ in 0..2000 {
            let a = with_coords[pair_rng.random_range(0..with_coords.len())];
            let b = with_coords[pair_rng.random_range(0..with_coords.len())];
            if a == b {
                continue;
            }
            let (Some(ca), Some(cb)) = (m.coordinates[a], m.coordinates[b]) else {
                continue;
            };
            let predicted = beam_node::routing::score::predict_ms(&ca, &cb);
            let actual = model.mean_rtt_ms(&placements[a], &placements[b]);
            errors.push((predicted - actual).abs() / actual);
        }
    }
    let coords_median_error = (!errors.is_empty()).then(|| metrics::median(&mut errors));
    RunOutput {
        row,
        msgs_per_level: per_level,
        services,
        coords_median_error,
        punches: m.punches,
    }
}

/// Peak resident memory of this process so far, in MiB (Linux; `None` elsewhere).
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
