//! Scenario files: what one simulator run simulates.
//!
//! A scenario is a TOML file whose keys are the contract in DESIGN.md ("Simulation"): tests and
//! the CI gate rely on them, so the struct here has exactly those keys and refuses any other
//! (`deny_unknown_fields` everywhere — a misspelt `[faults] los = 0.1` must fail loudly rather
//! than silently simulate a loss-free network). Every section and key is optional; a missing one
//! takes its value from [`Scenario::default`], which is the commented `scenarios/example.toml`
//! (a test keeps the two equal).
//!
//! Loading is two steps: parsing ([`Scenario::from_toml_str`], [`Scenario::load`]) and
//! [`Scenario::validate`], which both call, so a `Scenario` obtained from text is always valid.
//! Errors name the key at fault and, when loaded from a file, the file.
//!
//! Shares (`[regions]`, `[participation]`) become exact peer counts with [`apportion`]
//! (largest-remainder rounding), so 30 % of 100 peers is 30 peers, not "about 30".

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::cities::Region;

/// The most peers a scenario may ask for (the simulator is measured up to 10,000).
pub const MAX_PEERS: usize = 100_000;

/// The most services a scenario may publish.
pub const MAX_SERVICES: usize = 100_000;

/// Slack allowed when shares must sum to 1.
pub const SHARE_TOLERANCE: f64 = 1e-6;

/// One simulator run: network size, geography, participation, churn, faults and workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// Name written to the report's `scenario` column.
    pub name: String,
    /// Seed of every random choice in the run.
    pub seed: u64,
    /// Number of peers at the start (churn replaces leavers, so it stays so).
    pub peers: usize,
    /// Simulated seconds measured, after the warmup.
    pub duration_s: u64,
    /// Simulated seconds to join and bootstrap before measuring.
    pub warmup_s: u64,
    /// Share of peers per region.
    pub regions: Regions,
    /// Share of peers per participation level.
    pub participation: Participation,
    /// Peers leaving and being replaced.
    pub churn: Churn,
    /// Message loss and mass failure.
    pub faults: Faults,
    /// Malicious peers.
    pub adversary: Adversary,
    /// Peers behind NAT.
    pub nat: Nat,
    /// Services and the requests sent to them.
    pub workload: Workload,
    /// DHT settings.
    pub dht: Dht,
    /// How connections between peers are set up and kept.
    pub transport: Transport,
    /// Thresholds the CI gate checks this scenario's report row against.
    pub gate: Gate,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            name: "example".to_owned(),
            seed: 42,
            peers: 100,
            duration_s: 300,
            warmup_s: 60,
            regions: Regions::default(),
            participation: Participation::default(),
            churn: Churn::default(),
            faults: Faults::default(),
            adversary: Adversary::default(),
            nat: Nat::default(),
            workload: Workload::default(),
            dht: Dht::default(),
            transport: Transport::default(),
            gate: Gate::default(),
        }
    }
}

/// `[regions]`: share of peers placed in each region (sum 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Regions {
    /// Share in North America.
    pub north_america: f64,
    /// Share in Europe.
    pub europe: f64,
    /// Share in Asia.
    pub asia: f64,
    /// Share in South America.
    pub south_america: f64,
    /// Share in Africa.
    pub africa: f64,
    /// Share in Oceania.
    pub oceania: f64,
}

impl Default for Regions {
    fn default() -> Self {
        Regions {
            north_america: 0.30,
            europe: 0.30,
            asia: 0.25,
            south_america: 0.06,
            africa: 0.04,
            oceania: 0.05,
        }
    }
}

impl Regions {
    /// The share of one region.
    pub fn share(&self, region: Region) -> f64 {
        match region {
            Region::NorthAmerica => self.north_america,
            Region::Europe => self.europe,
            Region::Asia => self.asia,
            Region::SouthAmerica => self.south_america,
            Region::Africa => self.africa,
            Region::Oceania => self.oceania,
        }
    }

    /// The shares in [`Region::ALL`] order.
    pub fn shares(&self) -> [f64; 6] {
        Region::ALL.map(|r| self.share(r))
    }
}

/// `[participation]`: share of peers per participation level (sum 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Participation {
    /// DHT clients that relay nothing.
    pub light: f64,
    /// DHT servers that relay.
    pub routing: f64,
    /// DHT servers and relays with larger tables; gateways when public.
    pub full: f64,
}

impl Default for Participation {
    fn default() -> Self {
        Participation {
            light: 0.6,
            routing: 0.3,
            full: 0.1,
        }
    }
}

/// Exact peer counts per participation level (see [`Scenario::participation_counts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParticipationCounts {
    /// Light peers.
    pub light: usize,
    /// Routing peers.
    pub routing: usize,
    /// Full peers.
    pub full: usize,
}

impl ParticipationCounts {
    /// Peers that serve the DHT and relay (routing + full): the ones that can host services.
    pub fn non_light(&self) -> usize {
        self.routing + self.full
    }
}

/// `[churn]`: peers leaving and being replaced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Churn {
    /// Mean of the exponential session length in seconds; 0 means no churn.
    pub mean_session_s: f64,
}

impl Default for Churn {
    fn default() -> Self {
        Churn {
            mean_session_s: 0.0,
        }
    }
}

/// `[faults]`: message loss and a mass failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Probability that any one message on any link is dropped.
    pub loss: f64,
    /// Share of peers killed at once at `kill_at_s` (not replaced).
    pub kill_fraction: f64,
    /// When the kill happens, in simulated seconds from the start of the run (warmup included).
    pub kill_at_s: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            loss: 0.0,
            kill_fraction: 0.0,
            kill_at_s: 0,
        }
    }
}

/// `[adversary]`: peers that misbehave. Adversaries speak the protocol like honest peers
/// (they answer pings, send their coordinates, forward what looks like a probe) and lie
/// where it hurts, in the ways `behaviours` lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Adversary {
    /// Share of adversaries; of all peers or of the DHT servers, as `of` says. Adversaries
    /// are always servers (a light peer can attack nothing).
    pub fraction: f64,
    /// What `fraction` is a share of.
    pub of: Share,
    /// What adversaries do (default: all of them).
    pub behaviours: Vec<Behaviour>,
    /// All adversaries in one /24 (Sybils on one network); at most 254 of them.
    pub sybil_subnet: bool,
    /// Adversaries grind their ids close to one service's key, to eclipse it.
    pub eclipse_target: bool,
}

impl Default for Adversary {
    fn default() -> Self {
        Adversary {
            fraction: 0.0,
            of: Share::Peers,
            behaviours: Behaviour::ALL.to_vec(),
            sybil_subnet: false,
            eclipse_target: false,
        }
    }
}

/// What `adversary.fraction` is a share of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Share {
    /// Of all peers (all drawn from the servers: with 60 % light peers and 30 % NAT, 0.2 of
    /// the peers is about 60 % of the dialable servers).
    Peers,
    /// Of the dialable DHT servers (the peers in routing tables, the relays).
    Servers,
}

/// One way an adversary misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Behaviour {
    /// Drops relayed frames, but forwards whatever looks like a relay probe (a frame addressed
    /// back to its sender, or a tiny one), to pass the services' checks.
    DropRelayed,
    /// Answers FIND_NODE / FIND_VALUE with the colluders closest to the target.
    Eclipse,
    /// Adds fabricated contacts (ids ground near the target, unroutable addresses) to answers.
    Fabricate,
    /// Keeps the first copy of every record it is given and serves it; withholds the rest.
    Stale,
    /// Floods health gossip under forged origins with a wildly wrong size estimate.
    GossipFlood,
}

impl Behaviour {
    /// Every behaviour.
    pub const ALL: [Behaviour; 5] = [
        Behaviour::DropRelayed,
        Behaviour::Eclipse,
        Behaviour::Fabricate,
        Behaviour::Stale,
        Behaviour::GossipFlood,
    ];
}

/// `[nat]`: peers that cannot be dialled directly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Nat {
    /// Share of peers behind NAT.
    pub fraction: f64,
    /// Probability that a hole punch between two NATed peers succeeds.
    pub punch_success: f64,
}

impl Default for Nat {
    fn default() -> Self {
        Nat {
            fraction: 0.0,
            punch_success: 0.7,
        }
    }
}

/// `[workload]`: services and the requests sent to them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Workload {
    /// Number of services published by random non-light peers.
    pub services: usize,
    /// Client → service requests per simulated second, over the whole network.
    pub requests_per_s: f64,
    /// How requests are routed.
    pub strategy: Strategy,
    /// Services republish their record every this many simulated seconds (0: the node's
    /// default, 1,200 s, longer than most runs; set it to make a stale copy stale).
    pub republish_s: u64,
    /// How requests pick their service: Zipf's law with this exponent over the services
    /// (0: uniformly; 1: the classic popularity curve, the first service asked ~1/H(n) of
    /// the time).
    pub popularity: f64,
    /// Each request is followed, this many simulated seconds later, by a second one from the
    /// same client to the same service: the *warm* request (record known, connections open),
    /// measured apart from the first, *cold* one (0: no follow-ups).
    pub follow_up_s: f64,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            services: 100,
            requests_per_s: 50.0,
            strategy: Strategy::Geographic,
            republish_s: 0,
            popularity: 0.0,
            follow_up_s: 2.0,
        }
    }
}

/// `[dht]`: the nodes' DHT settings the scenario varies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Dht {
    /// Nodes cache the records they resolve and push them along the lookup path
    /// (`p2p.caching`; `beam_node::dht::DhtConfig::cache` at its defaults).
    pub caching: bool,
    /// How long a node answers a resolve from a record it resolved itself
    /// (`beam_node::NodeConfig::remember_resolved`); unset: the node's default (60 s), 0: never
    /// (every request's lookup asks the network, as `beam network probe` does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remember_resolved_s: Option<u64>,
}

/// `[transport]`: how two peers get a connection before their first message, as the real
/// driver's libp2p does. A message to a peer without an open connection waits for the
/// connection's setup (`setup_rtts` round trips between the two); a connection unused for
/// `idle_timeout_s` closes, and one closes when either end leaves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Transport {
    /// `quic` (the default: the real driver listens on QUIC and TCP and dials both at once,
    /// and QUIC's one-round-trip handshake wins on the same path) or `tcp`.
    pub kind: TransportKind,
    /// Round trips before the first message, overriding the kind's (QUIC 1: the TLS 1.3
    /// handshake; TCP 2: the TCP handshake, then Noise XX, whose third message carries the
    /// first data; 0: connections are free, as before the transport model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setup_rtts: Option<f64>,
    /// A connection unused this long closes (the real driver's idle timeout, 60 s).
    pub idle_timeout_s: f64,
}

impl Default for Transport {
    fn default() -> Self {
        Transport {
            kind: TransportKind::Quic,
            setup_rtts: None,
            idle_timeout_s: 60.0,
        }
    }
}

impl Transport {
    /// Round trips a new connection costs before its first message.
    pub fn setup_rtts(&self) -> f64 {
        self.setup_rtts.unwrap_or(match self.kind {
            TransportKind::Quic => 1.0,
            TransportKind::Tcp => 2.0,
        })
    }
}

/// The transport a scenario's connections use; written `quic` or `tcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// QUIC: one round trip to set up.
    Quic,
    /// TCP with Noise and yamux: two.
    Tcp,
}

/// `[gate]`: thresholds the CI gate checks; absent keys are not checked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Gate {
    /// Lowest acceptable `routing_success` for this scenario.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_routing_success: Option<f64>,
}

/// Route selection strategy; written `direct`, `multi-hop` or `geographic`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Connect to the service's endpoints (1 hop).
    Direct,
    /// Through 1–3 relays chosen from relaying peers.
    MultiHop,
    /// Relays chosen to minimise predicted latency, weighted by trust.
    Geographic,
}

impl Strategy {
    /// Every strategy, in declaration order.
    pub const ALL: [Strategy; 3] = [Strategy::Direct, Strategy::MultiHop, Strategy::Geographic];

    /// The name used in scenario files and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Direct => "direct",
            Strategy::MultiHop => "multi-hop",
            Strategy::Geographic => "geographic",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Strategy::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!("unknown strategy {s:?}: expected direct, multi-hop or geographic")
            })
    }
}

/// Why a scenario could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said (shown as the error's cause).
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid TOML or has an unknown key or a value of the wrong type.
    #[error("{}invalid scenario: {message}", in_file(path))]
    Parse {
        /// The file, when loaded from one.
        path: Option<PathBuf>,
        /// The TOML parser's message: line, column, and the key at fault.
        message: String,
    },
    /// A value is out of range or inconsistent with another.
    #[error("{}{key}{problem}", in_file(path))]
    Invalid {
        /// The file, when loaded from one.
        path: Option<PathBuf>,
        /// The key at fault, e.g. `faults.loss` or `regions`.
        key: String,
        /// What is wrong, starting with the value, e.g. ` = 1.5: must be between 0 and 1`.
        problem: String,
    },
}

impl ScenarioError {
    /// The key at fault, for validation errors.
    pub fn key(&self) -> Option<&str> {
        match self {
            ScenarioError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }

    fn with_path(self, file: &Path) -> Self {
        match self {
            ScenarioError::Parse { message, .. } => ScenarioError::Parse {
                path: Some(file.to_owned()),
                message,
            },
            ScenarioError::Invalid { key, problem, .. } => ScenarioError::Invalid {
                path: Some(file.to_owned()),
                key,
                problem,
            },
            other => other,
        }
    }
}

fn in_file(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!("{}: ", p.display()),
        None => String::new(),
    }
}

/// Formats a number for an error message: up to 6 decimals, no trailing zeros.
fn num(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

fn invalid(key: &str, problem: String) -> ScenarioError {
    ScenarioError::Invalid {
        path: None,
        key: key.to_owned(),
        problem,
    }
}

fn check_probability(key: &str, v: f64) -> Result<(), ScenarioError> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!(" = {}: must be between 0 and 1", num(v)),
        ))
    }
}

fn check_shares(section: &str, names: &[&str], shares: &[f64]) -> Result<(), ScenarioError> {
    for (name, &share) in names.iter().zip(shares) {
        check_probability(&format!("{section}.{name}"), share)?;
    }
    let sum: f64 = shares.iter().sum();
    if (sum - 1.0).abs() > SHARE_TOLERANCE {
        return Err(invalid(
            section,
            format!(": shares sum to {}, expected 1", num(sum)),
        ));
    }
    Ok(())
}

impl Scenario {
    /// Parses and validates a scenario from TOML text.
    pub fn from_toml_str(text: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            path: None,
            message: e.to_string().trim_end().to_owned(),
        })?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Reads, parses and validates a scenario file; errors name the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Scenario, ScenarioError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_owned(),
            source,
        })?;
        Scenario::from_toml_str(&text).map_err(|e| e.with_path(path))
    }

    /// Checks ranges and consistency; the error names the first key at fault.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        if self.name.trim().is_empty() {
            return Err(invalid("name", " is empty: give the run a name".to_owned()));
        }
        if !(2..=MAX_PEERS).contains(&self.peers) {
            return Err(invalid(
                "peers",
                format!(" = {}: must be between 2 and {MAX_PEERS}", self.peers),
            ));
        }
        if self.duration_s == 0 {
            return Err(invalid(
                "duration_s",
                " = 0: must be at least 1 (simulated seconds measured)".to_owned(),
            ));
        }
        let r = &self.regions;
        check_shares("regions", &Region::ALL.map(Region::key), &r.shares())?;
        let p = &self.participation;
        check_shares(
            "participation",
            &["light", "routing", "full"],
            &[p.light, p.routing, p.full],
        )?;
        let counts = self.participation_counts();
        if counts.non_light() == 0 {
            return Err(invalid(
                "participation",
                format!(
                    ": no routing or full peer among {} peers; services need one to run on",
                    self.peers
                ),
            ));
        }
        let session = self.churn.mean_session_s;
        if !(session.is_finite() && session >= 0.0) {
            return Err(invalid(
                "churn.mean_session_s",
                format!(" = {}: must be 0 (no churn) or more", num(session)),
            ));
        }
        check_probability("faults.loss", self.faults.loss)?;
        check_probability("faults.kill_fraction", self.faults.kill_fraction)?;
        let end = self.warmup_s.saturating_add(self.duration_s);
        if self.faults.kill_at_s > end {
            return Err(invalid(
                "faults.kill_at_s",
                format!(
                    " = {}: must be within the run, 0 to warmup_s + duration_s = {end}",
                    self.faults.kill_at_s
                ),
            ));
        }
        check_probability("adversary.fraction", self.adversary.fraction)?;
        if self.adversary.sybil_subnet {
            let n = (self.adversary.fraction * self.peers as f64).round();
            if self.adversary.of == Share::Peers && n > 254.0 {
                return Err(invalid(
                    "adversary.sybil_subnet",
                    format!(
                        ": {n} adversaries do not fit in one /24 (254 addresses); lower \
                         adversary.fraction or peers"
                    ),
                ));
            }
        }
        check_probability("nat.fraction", self.nat.fraction)?;
        check_probability("nat.punch_success", self.nat.punch_success)?;
        let w = &self.workload;
        if !(1..=MAX_SERVICES).contains(&w.services) {
            return Err(invalid(
                "workload.services",
                format!(" = {}: must be between 1 and {MAX_SERVICES}", w.services),
            ));
        }
        if !(w.requests_per_s.is_finite() && w.requests_per_s >= 0.0) {
            return Err(invalid(
                "workload.requests_per_s",
                format!(" = {}: must be 0 or more", num(w.requests_per_s)),
            ));
        }
        if !(w.popularity.is_finite() && (0.0..=4.0).contains(&w.popularity)) {
            return Err(invalid(
                "workload.popularity",
                format!(" = {}: must be from 0 (uniform) to 4", num(w.popularity)),
            ));
        }
        if !(w.follow_up_s.is_finite() && (0.0..=60.0).contains(&w.follow_up_s)) {
            return Err(invalid(
                "workload.follow_up_s",
                format!(" = {}: must be from 0 (none) to 60", num(w.follow_up_s)),
            ));
        }
        let t = &self.transport;
        if let Some(r) = t.setup_rtts
            && !(r.is_finite() && (0.0..=10.0).contains(&r))
        {
            return Err(invalid(
                "transport.setup_rtts",
                format!(" = {}: must be from 0 to 10 round trips", num(r)),
            ));
        }
        if !(t.idle_timeout_s.is_finite() && t.idle_timeout_s > 0.0) {
            return Err(invalid(
                "transport.idle_timeout_s",
                format!(" = {}: must be more than 0", num(t.idle_timeout_s)),
            ));
        }
        if let Some(min) = self.gate.min_routing_success {
            check_probability("gate.min_routing_success", min)?;
        }
        Ok(())
    }

    /// Exact peer count per region, in [`Region::ALL`] order (largest-remainder rounding).
    pub fn region_counts(&self) -> [(Region, usize); 6] {
        let counts = apportion(self.peers, &self.regions.shares());
        let mut out = Region::ALL.map(|r| (r, 0));
        for (slot, count) in out.iter_mut().zip(counts) {
            slot.1 = count;
        }
        out
    }

    /// Exact peer count per participation level (largest-remainder rounding).
    pub fn participation_counts(&self) -> ParticipationCounts {
        let p = &self.participation;
        let c = apportion(self.peers, &[p.light, p.routing, p.full]);
        ParticipationCounts {
            light: c[0],
            routing: c[1],
            full: c[2],
        }
    }

    /// Total simulated seconds, warmup included.
    pub fn total_s(&self) -> u64 {
        self.warmup_s.saturating_add(self.duration_s)
    }
}

/// Splits `total` into whole counts proportional to `shares` (largest-remainder method).
///
/// Counts sum to `total` whenever the shares sum to 1 (within rounding). Each share gets the
/// floor of its quota; the units left go to the largest remainders, ties to the earlier share,
/// so the result is deterministic. Negative or non-finite shares count as 0.
pub fn apportion(total: usize, shares: &[f64]) -> Vec<usize> {
    let clean: Vec<f64> = shares
        .iter()
        .map(|&s| if s.is_finite() && s > 0.0 { s } else { 0.0 })
        .collect();
    let sum: f64 = clean.iter().sum();
    if clean.is_empty() || sum <= 0.0 {
        return vec![0; shares.len()];
    }
    let quotas: Vec<f64> = clean.iter().map(|s| s / sum * total as f64).collect();
    let mut counts: Vec<usize> = quotas.iter().map(|q| q.floor() as usize).collect();
    let mut order: Vec<usize> = (0..quotas.len()).collect();
    // Largest remainder first; the stable sort keeps earlier shares first among equals.
    order.sort_by(|&a, &b| {
        let ra = quotas[a] - quotas[a].floor();
        let rb = quotas[b] - quotas[b].floor();
        rb.total_cmp(&ra)
    });
    let assigned: usize = counts.iter().sum();
    let left = total.saturating_sub(assigned);
    for &i in order.iter().cycle().take(left) {
        counts[i] += 1;
    }
    // Floating-point quotas can overshoot by one; take it back from the smallest remainders.
    let mut over = counts.iter().sum::<usize>().saturating_sub(total);
    for &i in order.iter().rev() {
        if over == 0 {
            break;
        }
        if counts[i] > 0 {
            counts[i] -= 1;
            over -= 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_file(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("scenarios")
            .join(name)
    }

    fn err(text: &str) -> String {
        match Scenario::from_toml_str(text) {
            Ok(s) => panic!("expected an error, parsed {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn default_is_valid() {
        Scenario::default()
            .validate()
            .expect("default scenario is valid");
    }

    #[test]
    fn empty_text_is_the_default() {
        assert_eq!(
            Scenario::from_toml_str("").expect("empty scenario"),
            Scenario::default()
        );
    }

    #[test]
    fn example_file_parses_to_the_default() {
        let s = Scenario::load(repo_file("example.toml")).expect("example.toml");
        assert_eq!(s, Scenario::default());
    }

    #[test]
    fn example_file_has_every_key() {
        // Every key the serializer writes appears in the example, so new keys get documented.
        let text = std::fs::read_to_string(repo_file("example.toml")).expect("example.toml");
        let mut full = Scenario::default();
        full.gate.min_routing_success = Some(0.9);
        let value = toml::Value::try_from(&full).expect("serialize");
        let table = value.as_table().expect("table");
        for (key, v) in table {
            match v.as_table() {
                Some(section) => {
                    assert!(text.contains(&format!("[{key}]")), "[{key}] missing");
                    for sub in section.keys() {
                        assert!(
                            text.lines().any(|l| {
                                l.trim_start_matches(['#', ' '])
                                    .starts_with(&format!("{sub} ="))
                            }),
                            "{key}.{sub} missing"
                        );
                    }
                }
                None => assert!(
                    text.lines().any(|l| l.starts_with(&format!("{key} ="))),
                    "{key} missing"
                ),
            }
        }
    }

    #[test]
    fn scaling_set_differs_only_in_size() {
        let mut reference: Option<Scenario> = None;
        for (file, peers) in [
            ("100-peers.toml", 100),
            ("1k-peers.toml", 1_000),
            ("10k-peers.toml", 10_000),
        ] {
            let s = Scenario::load(repo_file(file)).expect(file);
            assert_eq!(s.peers, peers);
            assert_eq!(s.name, file.trim_end_matches(".toml"));
            assert_eq!(s.seed, 42);
            assert_eq!((s.warmup_s, s.duration_s), (60, 120));
            assert_eq!(s.workload.strategy, Strategy::Geographic);
            assert_eq!(s.workload.services, 100);
            assert_eq!(s.faults, Faults::default());
            assert_eq!(s.churn.mean_session_s, 0.0);
            assert_eq!(s.nat.fraction, 0.3);
            let mut normalized = s.clone();
            normalized.peers = 0;
            normalized.name = String::new();
            match &reference {
                None => reference = Some(normalized),
                Some(r) => assert_eq!(&normalized, r, "{file} differs beyond peers and name"),
            }
        }
    }

    #[test]
    fn strategy_names() {
        for (text, strategy) in [
            ("direct", Strategy::Direct),
            ("multi-hop", Strategy::MultiHop),
            ("geographic", Strategy::Geographic),
        ] {
            let s = Scenario::from_toml_str(&format!("[workload]\nstrategy = \"{text}\""))
                .expect("strategy");
            assert_eq!(s.workload.strategy, strategy);
            assert_eq!(strategy.to_string(), text);
            assert_eq!(text.parse::<Strategy>(), Ok(strategy));
        }
        let e = err("[workload]\nstrategy = \"multihop\"");
        assert!(e.contains("multihop") && e.contains("multi-hop"), "{e}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = err("peers = 10\npeer = 10");
        assert!(e.contains("unknown field `peer`"), "{e}");
        let e = err("[faults]\nlos = 0.1");
        assert!(e.contains("unknown field `los`"), "{e}");
        let e = err("[regions]\nantarctica = 0.1");
        assert!(e.contains("unknown field `antarctica`"), "{e}");
        let e = err("[weather]\nrain = true");
        assert!(e.contains("unknown field `weather`"), "{e}");
    }

    #[test]
    fn wrong_types_are_named() {
        let e = err("peers = \"many\"");
        assert!(e.contains("peers"), "{e}");
        let e = err("peers = -5");
        assert!(e.contains("peers"), "{e}");
    }

    #[test]
    fn shares_must_sum_to_one() {
        let e = err("[regions]\nnorth_america = 0.25");
        assert_eq!(e, "regions: shares sum to 0.95, expected 1");
        let e = err("[participation]\nlight = 0.5\nrouting = 0.3\nfull = 0.1");
        assert_eq!(e, "participation: shares sum to 0.9, expected 1");
        let e = err(
            "[regions]\nnorth_america = 1.2\neurope = -0.2\nasia = 0\nsouth_america = 0\nafrica = 0\noceania = 0",
        );
        assert_eq!(e, "regions.north_america = 1.2: must be between 0 and 1");
        // Within tolerance is fine.
        Scenario::from_toml_str("[participation]\nlight = 0.6000000001").expect("tolerance");
    }

    #[test]
    fn probabilities_are_range_checked() {
        for (text, message) in [
            (
                "[faults]\nloss = 1.5",
                "faults.loss = 1.5: must be between 0 and 1",
            ),
            (
                "[faults]\nkill_fraction = -0.1",
                "faults.kill_fraction = -0.1: must be between 0 and 1",
            ),
            (
                "[adversary]\nfraction = 2",
                "adversary.fraction = 2: must be between 0 and 1",
            ),
            (
                "[nat]\npunch_success = 1.01",
                "nat.punch_success = 1.01: must be between 0 and 1",
            ),
            (
                "[nat]\nfraction = nan",
                "nat.fraction = NaN: must be between 0 and 1",
            ),
            (
                "[gate]\nmin_routing_success = 95.0",
                "gate.min_routing_success = 95: must be between 0 and 1",
            ),
        ] {
            assert_eq!(err(text), message);
        }
    }

    #[test]
    fn transport_and_follow_ups_are_checked() {
        assert_eq!(
            err("[transport]\nsetup_rtts = 11"),
            "transport.setup_rtts = 11: must be from 0 to 10 round trips"
        );
        assert_eq!(
            err("[transport]\nidle_timeout_s = 0"),
            "transport.idle_timeout_s = 0: must be more than 0"
        );
        assert_eq!(
            err("[workload]\nfollow_up_s = -1"),
            "workload.follow_up_s = -1: must be from 0 (none) to 60"
        );
        assert!(err("[transport]\nkind = \"sctp\"").contains("unknown variant"));
        let tcp = Scenario::from_toml_str("[transport]\nkind = \"tcp\"").expect("tcp");
        assert_eq!(tcp.transport.setup_rtts(), 2.0);
        assert_eq!(Scenario::default().transport.setup_rtts(), 1.0);
        let free = Scenario::from_toml_str("[transport]\nkind = \"tcp\"\nsetup_rtts = 0")
            .expect("override");
        assert_eq!(free.transport.setup_rtts(), 0.0);
    }

    #[test]
    fn sizes_and_times_are_checked() {
        assert_eq!(err("peers = 1"), "peers = 1: must be between 2 and 100000");
        assert_eq!(
            err("peers = 100001"),
            "peers = 100001: must be between 2 and 100000"
        );
        assert!(err("duration_s = 0").starts_with("duration_s = 0: must be at least 1"));
        assert_eq!(
            err("warmup_s = 10\nduration_s = 20\n[faults]\nkill_at_s = 31"),
            "faults.kill_at_s = 31: must be within the run, 0 to warmup_s + duration_s = 30"
        );
        Scenario::from_toml_str("warmup_s = 10\nduration_s = 20\n[faults]\nkill_at_s = 30")
            .expect("kill at the very end");
        assert_eq!(
            err("[workload]\nservices = 0"),
            "workload.services = 0: must be between 1 and 100000"
        );
        assert_eq!(
            err("[workload]\nrequests_per_s = -1"),
            "workload.requests_per_s = -1: must be 0 or more"
        );
        assert_eq!(
            err("[churn]\nmean_session_s = -3"),
            "churn.mean_session_s = -3: must be 0 (no churn) or more"
        );
        assert!(err("name = \" \"").starts_with("name is empty"));
        let e = err("peers = 2\n[participation]\nlight = 0.9\nrouting = 0.1\nfull = 0.0");
        assert!(
            e.starts_with("participation: no routing or full peer"),
            "{e}"
        );
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("sim-scenario-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[faults]\nloss = 1.5\n").expect("write");
        let e = Scenario::load(&bad).expect_err("invalid").to_string();
        assert_eq!(
            e,
            format!(
                "{}: faults.loss = 1.5: must be between 0 and 1",
                bad.display()
            )
        );
        std::fs::write(&bad, "[faults]\nlost = 1\n").expect("write");
        let e = Scenario::load(&bad).expect_err("unknown key").to_string();
        assert!(e.starts_with(&bad.display().to_string()), "{e}");
        assert!(e.contains("unknown field `lost`"), "{e}");
        let missing = dir.join("missing.toml");
        let e = Scenario::load(&missing).expect_err("missing").to_string();
        assert!(e.contains("missing.toml"), "{e}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn apportion_is_exact_and_deterministic() {
        assert_eq!(
            apportion(100, &Regions::default().shares()),
            vec![30, 30, 25, 6, 4, 5]
        );
        assert_eq!(apportion(10, &[0.6, 0.3, 0.1]), vec![6, 3, 1]);
        // 7 × (1/3): floors 2,2,2; one left goes to the first of the equal remainders.
        assert_eq!(apportion(7, &[1.0 / 3.0; 3]), vec![3, 2, 2]);
        assert_eq!(apportion(3, &[0.5, 0.5, 0.0]), vec![2, 1, 0]);
        for total in [2usize, 3, 17, 101, 999, 10_000, 99_999] {
            let c = apportion(total, &Regions::default().shares());
            assert_eq!(c.iter().sum::<usize>(), total);
        }
        assert_eq!(apportion(5, &[0.0, 0.0]), vec![0, 0]);
    }

    #[test]
    fn counts_follow_shares() {
        let s = Scenario::default();
        let regions: Vec<usize> = s.region_counts().iter().map(|&(_, n)| n).collect();
        assert_eq!(regions, vec![30, 30, 25, 6, 4, 5]);
        let p = s.participation_counts();
        assert_eq!(
            (p.light, p.routing, p.full, p.non_light()),
            (60, 30, 10, 40)
        );
        assert_eq!(s.total_s(), 360);
    }
}
