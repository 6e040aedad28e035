//! The libp2p driver: the `beam-node` core on a real network.
//!
//! # Layout
//!
//! - [`addr`] — peer ids and addresses between libp2p and the core; which addresses may be
//!   dialled or published.
//! - [`frame`] — length-prefixed frames on streams.
//! - this module — the node task: one loop that owns the libp2p [`Swarm`] and the core
//!   [`Node`], and the [`Handle`] the rest of the binary talks to it through.
//! - [`tunnel`] — the data plane: `/beam/tunnel/1` (direct) and `/beam/circuit/1` (through
//!   relays, end-to-end encrypted by the core's Noise XK).
//!
//! # Design
//!
//! The core chooses, the driver carries. The core's messages travel on three stream
//! protocols (`/beam/dht/1`, `/beam/route/1`, `/beam/gossip/1`) as length-prefixed frames, by
//! [`PeerId`](beam_node::PeerId): an address in a [`Transmit`](beam_node::Transmit) is only a
//! dial hint. Each peer has one writer task with a bounded queue (full → the message is dropped
//! and counted; the loop never waits on a peer) that opens its streams lazily and closes them
//! after [`WRITER_IDLE`], so control traffic does not hold idle connections open. Readers
//! hand frames to the loop through one bounded channel.
//!
//! The address a peer is known by is the listen address it announced in identify (checked
//! against [`addr::AddrPolicy`]), never the ephemeral port of its TCP connection: frames from a
//! peer whose identify has not arrived yet wait for it (briefly, bounded).
//!
//! The loop is the core's calling contract: after every input it drains `poll_transmit` and
//! `poll_event`, then sleeps until `poll_timeout`. Every `select!` is `biased;` (commands, then
//! the network, then timers), as in the simulator's driver.

pub mod addr;
pub mod auth;
pub mod by_address;
pub mod frame;
pub mod inspect;
pub mod limit;
pub mod nat;
pub mod probe;
pub mod tunnel;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use beam_node::app::{ResolveError, ResolveId, ServiceRef};
use beam_node::dht::{self, Publish, QueryId};
use beam_node::record::{Participation, RecordError, ServiceRecord};
use beam_node::routing::Strategy;
use beam_node::wakeup::Wakeup;
use beam_node::wire::{self, Contact, Message};
use beam_node::{Addr, Event, Keypair, Node, NodeConfig};
use futures::StreamExt;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, StreamProtocol, Swarm, autonat, connection_limits, dcutr, identify, mdns, noise,
    ping, relay, tcp, yamux,
};
use rand::SeedableRng;
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::FuturesAsyncReadCompatExt;

use addr::{AddrPolicy, from_libp2p, split_peer, to_libp2p};

/// The DHT's messages.
pub const PROTO_DHT: StreamProtocol = StreamProtocol::new("/beam/dht/1");
/// The router's datagram frames (relay checks, request/response routes).
pub const PROTO_ROUTE: StreamProtocol = StreamProtocol::new("/beam/route/1");
/// Gossip.
pub const PROTO_GOSSIP: StreamProtocol = StreamProtocol::new("/beam/gossip/1");
/// A direct tunnel: one stream per forwarded TCP connection.
pub const PROTO_TUNNEL: StreamProtocol = StreamProtocol::new("/beam/tunnel/1");
/// A circuit through relays.
pub const PROTO_CIRCUIT: StreamProtocol = StreamProtocol::new("/beam/circuit/1");

/// identify's protocol version: peers that announce another are not beam peers.
const IDENTIFY_VERSION: &str = "/beam/1";
/// A writer with nothing to send for this long closes its streams and ends.
pub const WRITER_IDLE: Duration = Duration::from_secs(30);
/// Tries of one control message before it is given up (each on a new stream).
const WRITE_ATTEMPTS: u32 = 3;
/// The pause before a control message's second try (twice that before the third).
const WRITE_RETRY_PAUSE: Duration = Duration::from_millis(5);
/// How long a writer waits for a new stream's acknowledgement before it writes again.
const STREAM_ACK_WAIT: Duration = Duration::from_secs(2);
/// A control stream with nothing to read for this long is closed.
const READER_IDLE: Duration = Duration::from_secs(90);
/// Messages queued per peer before more are dropped.
const WRITER_QUEUE: usize = 256;
/// Frames from all readers queued for the loop before more are dropped.
const INBOUND_QUEUE: usize = 4096;
/// Most control streams read at once (all peers together).
const MAX_READERS: usize = 1024;
/// How long frames from a peer wait for its identify before they are handled anyway.
const IDENTIFY_WAIT: Duration = Duration::from_secs(2);
/// Most frames held per peer while waiting for its identify.
const MAX_PENDING_PER_PEER: usize = 64;
/// How often the loop does its housekeeping (bootstrap retries, republish, wall clock).
const TICK: Duration = Duration::from_millis(500);
/// Bootstrap peers that could not be reached are dialled again this often.
const BOOTSTRAP_RETRY: Duration = Duration::from_secs(5);

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// The node's identity.
    pub keypair: Keypair,
    /// What it does for the network.
    pub participation: Participation,
    /// Where to listen.
    pub listen: Vec<Multiaddr>,
    /// Peers to join through (with or without `/p2p/<id>`).
    pub bootstrap: Vec<Multiaddr>,
    /// Which addresses may be dialled and published.
    pub policy: AddrPolicy,
    /// The service to publish, if any.
    pub service: Option<ServiceSpec>,
    /// Bandwidth cap per previous-hop peer on the circuits this node relays, bytes per second
    /// (`None`: no cap).
    pub relay_rate: Option<u64>,
    /// Find peers on the local network with mDNS, and answer others' queries.
    pub mdns: bool,
    /// Most connections to other peers held at once (`p2p.maxPeers`); more are refused.
    pub max_peers: u32,
    /// Bounds on the tunnels and circuits peers can make this node hold (`limits.*`).
    pub limits: Limits,
    /// Where this node says it is (`--location`, `p2p.location`): latitude, longitude. Sent to
    /// peers in identify; `None` sends nothing.
    pub location: Option<(f64, f64)>,
    /// `p2p.caching`: cache the records resolved and push copies along lookup paths
    /// (`beam_node::dht::DhtConfig::cache`).
    pub caching: bool,
}

/// Bounds on the tunnels and circuits peers can make this node hold.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Inbound tunnel and circuit streams open at once from one peer (`limits.streamsPerPeer`).
    pub streams_per_peer: usize,
    /// ... from all peers together (`limits.streamsTotal`).
    pub streams_total: usize,
    /// A tunnel or circuit that carried nothing either way this long is closed
    /// (`limits.idleTimeout`; `None`: never).
    pub idle_timeout: Option<Duration>,
    /// Connections held at once with one peer (`limits.connectionsPerPeer`).
    pub connections_per_peer: u32,
    /// Incoming connections in their handshake and established, by IP address
    /// (`limits.handshakesPerAddress`, `limits.handshakesTotal`, `limits.connectionsPerAddress`).
    pub by_address: by_address::Bounds,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections_per_peer: 8,
            by_address: by_address::Bounds {
                handshakes_per_address: 16,
                handshakes_total: 128,
                connections_per_address: 64,
            },
            streams_per_peer: 64,
            streams_total: 512,
            idle_timeout: Some(Duration::from_secs(600)),
        }
    }
}

/// A service this node publishes.
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    /// The local port tunnels are forwarded to.
    pub port: u16,
    /// The name to claim, if any.
    pub name: Option<String>,
    /// Where the highest seq published so far is kept across restarts (in the state
    /// directory), so a quickly restarted service's records are newer than its last ones.
    pub seq_file: Option<std::path::PathBuf>,
}

/// What the loop tells the user interface.
#[derive(Clone, Debug)]
pub enum Notice {
    /// A listen address is up.
    Listening(Multiaddr),
    /// Joined the network (or, with no bootstrap peer, started one).
    Joined {
        /// Peers in the routing table.
        peers: usize,
        /// Whether there was no bootstrap peer to join through.
        alone: bool,
    },
    /// A bootstrap peer could not be reached.
    BootstrapUnreachable {
        /// Its address.
        addr: Multiaddr,
        /// Why.
        error: String,
    },
    /// Whether others can dial this node, as autonat found.
    Reachability {
        /// True when peers could dial it back.
        public: bool,
    },
    /// A relay accepted this node's reservation (behind a NAT: clients reach it through there).
    Reserved {
        /// The relay.
        relay: beam_node::PeerId,
    },
    /// A hole punch to a peer worked: its connection is direct now.
    HolePunched {
        /// The peer.
        peer: beam_node::PeerId,
    },
    /// A beam peer on the local network, found by mDNS (it is joined like a bootstrap peer).
    LanPeer {
        /// The peer.
        peer: beam_node::PeerId,
        /// Where it was found.
        addr: Multiaddr,
    },
    /// Listening, but on no address others may dial (loopback or private only, and private
    /// addresses are not allowed): nothing is published until one appears.
    NoUsableAddress,
    /// A record was published.
    Published {
        /// Which.
        what: PublishedWhat,
        /// Peers that stored it.
        stored: usize,
        /// Peers that refused it.
        refused: usize,
        /// Why the first refused it.
        refusal: Option<RecordError>,
        /// Behind a NAT: the relays the record names.
        relays: Vec<beam_node::PeerId>,
    },
}

/// Which record a [`Notice::Published`] is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublishedWhat {
    /// The service record.
    Service,
    /// The name record of this name.
    Name(String),
}

/// Counters shared between the loop, the tunnels and the user interface.
#[derive(Debug, Default)]
pub struct Stats {
    /// Core messages dropped because a peer's queue was full or it could not be sent.
    pub dropped_out: AtomicU64,
    /// Frames dropped on the way in (queue full, malformed, oversized, not a beam peer).
    pub dropped_in: AtomicU64,
    /// Tunnel connections open now.
    pub tunnels_open: AtomicUsize,
    /// Tunnel connections served or made in total.
    pub tunnels_total: AtomicU64,
    /// Tunnel bytes received from peers.
    pub bytes_in: AtomicU64,
    /// Tunnel bytes sent to peers.
    pub bytes_out: AtomicU64,
    /// Circuits relayed for others, open now.
    pub circuits_open: AtomicUsize,
    /// Bytes relayed for others (both directions).
    pub bytes_relayed: AtomicU64,
    /// Circuits relayed for others in total (set up to their next hop).
    pub circuits_relayed: AtomicU64,
    /// The previous hops whose circuits this node relayed (at most [`MAX_HELPED`] kept).
    pub helped: std::sync::Mutex<std::collections::HashSet<libp2p::PeerId>>,
    /// Core deadlines that did not move past the timeout just handled (deferred; see
    /// `beam_node::wakeup`).
    pub stale_timeouts: AtomicU64,
    /// Tunnels refused for a missing or wrong access token (`--auth`).
    pub auth_refused: AtomicU64,
    /// Tunnels and circuits closed for carrying nothing for `limits.idleTimeout`.
    pub idle_closed: AtomicU64,
    /// Tunnel attempts retried because their stream was dropped before the far end answered.
    pub open_retries: AtomicU64,
    /// Incoming connections refused by `p2p.maxPeers`, `limits.connectionsPerPeer` or
    /// `limits.connectionsPerAddress`.
    pub connections_refused: AtomicU64,
    /// Incoming connections closed as soon as accepted: their address, or the node, had
    /// `limits.handshakesPerAddress` or `limits.handshakesTotal` still in their handshake.
    pub handshakes_refused: AtomicU64,
}

/// A snapshot of the node for `beam status` and the status line.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Status {
    /// `beam://…`.
    pub peer_id: String,
    /// The libp2p peer id (for `/p2p/…` in multiaddrs).
    pub libp2p_id: String,
    /// Participation level.
    pub participation: String,
    /// Listen addresses.
    pub listen: Vec<String>,
    /// Peers with an open connection.
    pub peers_connected: usize,
    /// Entries in the routing table.
    pub routing_table: usize,
    /// Estimated DHT servers online (measured; `None` before the first lookup).
    pub network_size_estimate: Option<f64>,
    /// Core messages that did not decode (dropped and counted).
    pub malformed_in: u64,
    /// Records held for others.
    pub records_held: usize,
    /// Circuits this node refused to relay (not a relay, or at the core's bound).
    pub circuits_refused: u64,
    /// DHT health: the share of the last [`DHT_WINDOW`] DHT operations that reached their goal
    /// (a publish stored by a holder, a lookup that found a live peer, a record fetch that
    /// found it; a resolve counts when it returned a verified record, and not at all when it
    /// found nothing, since the name may not exist); `None` before the first.
    pub dht_health: Option<f64>,
    /// How many operations that share is of.
    pub dht_operations: usize,
    /// The median libp2p ping RTT to the connected peers, ms (`None`: none measured yet).
    pub peer_rtt_p50_ms: Option<f64>,
    /// Tunnel bandwidth over the last [`RATE_WINDOW`], bytes per second, in and out.
    pub rate_in_bps: f64,
    pub rate_out_bps: f64,
    /// What AutoNAT found: `public` (peers can dial this node), `private`, or `unknown` (not
    /// decided yet).
    pub reachability: &'static str,
    /// `--bootstrap` (and LAN) peers connected, of those known.
    pub bootstrap_connected: usize,
    pub bootstrap_known: usize,
    /// Where this node says it is (`--location`), `[lat, lon]`, and that place's region.
    pub location: Option<[f64; 2]>,
    pub region: Option<String>,
    /// With `p2p.caching`: copies held, searches answered from them, copies pushed to and
    /// taken from others, FIND_VALUEs answered from them; `None` when caching is off.
    pub cache: Option<serde_json::Value>,
}

/// A connected peer, for `beam network peers`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PeerInfo {
    /// `beam://…` (`None`: a libp2p peer whose key is not a beam identity).
    pub peer: Option<String>,
    pub libp2p_id: String,
    /// The remote address of the latest connection.
    pub address: String,
    /// `out` when this node dialled it, `in` when it dialled this node.
    pub direction: &'static str,
    /// Through a libp2p relay circuit (`/p2p-circuit`).
    pub relayed: bool,
    /// The last libp2p ping RTT, ms.
    pub rtt_ms: Option<f64>,
    /// Where the peer says it is, `[lat, lon]` (declared with `--location`, not measured).
    pub location: Option<[f64; 2]>,
    /// The region of that location, named after the nearest city of beam's table, e.g.
    /// `Europe (near Frankfurt)`.
    pub region: Option<String>,
    /// Whether it is in this node's DHT routing table (a DHT server this node uses).
    pub in_routing_table: bool,
}

/// The identify agent version: `beam/<version>`, then ` location=LAT,LON` (two decimals, about
/// a kilometre) when the node declares where it is.
fn agent_version(location: Option<(f64, f64)>) -> String {
    let mut v = format!("beam/{}", env!("CARGO_PKG_VERSION"));
    if let Some((lat, lon)) = location {
        v.push_str(&format!(" location={lat:.2},{lon:.2}"));
    }
    v
}

/// The location a peer's agent version declares, if any and well formed (anything else in it
/// is ignored: it is the peer's word, and only a place on the map hangs on it).
fn declared_location(agent: &str) -> Option<(f64, f64)> {
    let text = agent
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix("location="))?;
    beam_node::geo::parse_lat_lon(text).ok()
}

/// Farther than this from the nearest city of the table, a place is not "near" it.
const FAR_FROM_CITY_KM: f64 = 500.0;

/// `Europe (near Frankfurt)`: the region of the nearest city of beam's table (`Oceania
/// (2140 km from Auckland)` when that city is far).
pub fn region_of(lat: f64, lon: f64) -> String {
    let (region, city, km) = beam_node::geo::nearest_city(lat, lon);
    if km <= FAR_FROM_CITY_KM {
        format!("{} (near {})", region.name(), city.name)
    } else {
        format!("{} ({km:.0} km from {})", region.name(), city.name)
    }
}

/// Distinct peers [`Stats::helped`] counts at most.
pub const MAX_HELPED: usize = 100_000;

/// DHT operations [`Status::dht_health`] is measured over.
pub const DHT_WINDOW: usize = 100;
/// The window of [`Status::rate_in_bps`].
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// A route the core chose for a stream.
#[derive(Clone, Debug)]
pub struct Route {
    /// The service and its endpoints.
    pub service: beam_node::PeerId,
    /// Where the service can be dialled.
    pub endpoints: Vec<Multiaddr>,
    /// The relays, in order, with their addresses.
    pub relays: Vec<(beam_node::PeerId, Multiaddr)>,
    /// The service's end-to-end key.
    pub noise_key: Option<[u8; 32]>,
    /// Whether the service can be dialled (false behind a NAT: reach it through its relay).
    pub reachable: bool,
    /// The direct RTT to the service that network coordinates predict (this node's, and
    /// those in the service's record), when both are known.
    pub predicted_direct: Option<Duration>,
}

enum Cmd {
    Resolve(
        ServiceRef,
        oneshot::Sender<Result<ServiceRecord, ResolveError>>,
    ),
    Plan(
        Box<ServiceRecord>,
        Strategy,
        BTreeSet<beam_node::PeerId>,
        oneshot::Sender<Result<Route, String>>,
    ),
    Outcome(Vec<beam_node::PeerId>, bool),
    Admit(oneshot::Sender<bool>),
    Dial(libp2p::PeerId, Vec<Multiaddr>),
    StartE2e(
        [u8; 32],
        oneshot::Sender<Result<(beam_node::e2e::Initiator, Vec<u8>), String>>,
    ),
    Responder(oneshot::Sender<beam_node::e2e::Responder>),
    Status(oneshot::Sender<Status>),
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    #[cfg_attr(not(feature = "tor"), allow(dead_code))]
    SetTorAddress(Option<String>),
    Connectivity(oneshot::Sender<nat::Connectivity>),
    Uncache(ServiceRef, beam_node::PeerId),
    Optimize(bool, oneshot::Sender<beam_node::Optimized>),
    Reconnect(bool, oneshot::Sender<Reconnected>),
}

/// What [`Handle::reconnect`] did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Reconnected {
    /// Peers disconnected.
    pub disconnected: usize,
    /// Bootstrap peers being dialled again.
    pub bootstrap: usize,
    /// With `forget`: what the core forgot.
    pub forgotten: Option<beam_node::Forgotten>,
    /// Peers' listen addresses forgotten (with `forget`).
    pub addresses_forgotten: usize,
}

/// The running node, as the rest of the binary sees it. Cloning is cheap.
#[derive(Clone)]
pub struct Handle {
    cmd: mpsc::Sender<Cmd>,
    /// Opens streams to peers.
    pub control: libp2p_stream::Control,
    /// This node's id.
    pub peer: beam_node::PeerId,
    /// Counters.
    pub stats: Arc<Stats>,
    /// The per-peer bandwidth cap on relayed circuits.
    pub limiter: Arc<limit::RelayLimiter>,
    /// Streams open at once, per peer and in total.
    pub streams: Arc<limit::StreamLimits>,
    /// The idle timeout of tunnels and circuits.
    pub idle_timeout: Option<Duration>,
    /// The tunnel connections carried now and recently (the connection inspector).
    pub connections: Arc<inspect::Connections>,
    /// The last libp2p ping RTT to each connected peer.
    pub rtts: Arc<std::sync::Mutex<HashMap<libp2p::PeerId, Duration>>>,
}

impl Handle {
    /// The last ping RTT measured to `peer`, if connected and measured.
    pub fn rtt(&self, peer: &beam_node::PeerId) -> Option<Duration> {
        self.rtt_of(&addr::to_libp2p(peer)?)
    }

    /// [`Handle::rtt`] by libp2p id.
    pub fn rtt_of(&self, peer: &libp2p::PeerId) -> Option<Duration> {
        self.rtts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .copied()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(make(tx))
            .await
            .map_err(|_| anyhow::anyhow!("the node has stopped"))?;
        rx.await
            .map_err(|_| anyhow::anyhow!("the node has stopped"))
    }

    /// The connected peers, nearest (by ping RTT) first.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>> {
        self.ask(Cmd::Peers).await
    }

    /// Finds the verified service record of a name or address.
    pub async fn resolve(&self, what: ServiceRef) -> Result<Result<ServiceRecord, ResolveError>> {
        self.ask(|tx| Cmd::Resolve(what, tx)).await
    }

    /// The route the core chooses to `record`'s service, avoiding `exclude`.
    pub async fn plan(
        &self,
        record: &ServiceRecord,
        strategy: Strategy,
        exclude: BTreeSet<beam_node::PeerId>,
    ) -> Result<Route> {
        self.ask(|tx| Cmd::Plan(Box::new(record.clone()), strategy, exclude, tx))
            .await?
            .map_err(anyhow::Error::msg)
    }

    /// How a route went (trust learns from it).
    pub async fn outcome(&self, relays: Vec<beam_node::PeerId>, ok: bool) {
        let _ = self.cmd.send(Cmd::Outcome(relays, ok)).await;
    }

    /// Whether to relay one more circuit.
    pub async fn admit_circuit(&self) -> bool {
        self.ask(Cmd::Admit).await.unwrap_or(false)
    }

    /// Makes sure there is (or will be) a connection to `peer`, dialling `addrs` if needed.
    pub async fn dial(&self, peer: libp2p::PeerId, addrs: Vec<Multiaddr>) {
        let _ = self.cmd.send(Cmd::Dial(peer, addrs)).await;
    }

    /// Starts an end-to-end handshake with a service's static key.
    pub async fn start_e2e(&self, key: [u8; 32]) -> Result<(beam_node::e2e::Initiator, Vec<u8>)> {
        self.ask(|tx| Cmd::StartE2e(key, tx))
            .await?
            .map_err(anyhow::Error::msg)
    }

    /// A responder for an end-to-end handshake.
    pub async fn e2e_responder(&self) -> Result<beam_node::e2e::Responder> {
        self.ask(Cmd::Responder).await
    }

    /// A snapshot of the node.
    pub async fn status(&self) -> Result<Status> {
        self.ask(Cmd::Status).await
    }

    /// Drops the cached copies behind `what` (`p2p.caching`): the next resolve asks the
    /// network.
    pub async fn uncache(&self, what: ServiceRef, service: beam_node::PeerId) {
        let _ = self.cmd.send(Cmd::Uncache(what, service)).await;
    }

    /// Re-ranks the routing table by RTT and refreshes it (`beam network optimize`): by the
    /// libp2p ping RTTs measured, or with `geo` by the RTTs network coordinates predict, which
    /// also re-picks a NATed service's relays.
    pub async fn optimize(&self, geo: bool) -> Result<beam_node::Optimized> {
        self.ask(|tx| Cmd::Optimize(geo, tx)).await
    }

    /// Reachability, the NAT's mapping, hole punching (`beam network test connectivity`).
    pub async fn connectivity(&self) -> Result<nat::Connectivity> {
        self.ask(Cmd::Connectivity).await
    }

    /// Drops every connection and joins again from the bootstrap peers, keeping the identity
    /// (`beam network restart`); with `forget`, also forgets the routing table, the relays'
    /// trust and peers' addresses first (`beam network reset`). The service is published
    /// again once joined.
    pub async fn reconnect(&self, forget: bool) -> Result<Reconnected> {
        self.ask(|tx| Cmd::Reconnect(forget, tx)).await
    }

    /// Puts the service's `.onion` address into its signed record (or takes it out) and
    /// republishes, so clients can fall back to Tor.
    #[cfg_attr(not(feature = "tor"), allow(dead_code))]
    pub async fn set_tor_address(&self, onion: Option<String>) {
        let _ = self.cmd.send(Cmd::SetTorAddress(onion)).await;
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    stream: libp2p_stream::Behaviour,
    /// Is this node reachable? Peers dial back its addresses (and it does so for them).
    autonat: autonat::Behaviour,
    /// Relay v2 server, on DHT servers: services behind NATs reserve here.
    relay: Toggle<relay::Behaviour>,
    /// Relay v2 client: reservations (behind a NAT) and dialling through relays.
    relay_client: relay::client::Behaviour,
    /// Hole punching over a relayed connection.
    dcutr: dcutr::Behaviour,
    /// Peers on the local network (unless `--no-mdns`).
    mdns: Toggle<mdns::tokio::Behaviour>,
    /// `p2p.maxPeers`: connections beyond it are refused.
    limits: connection_limits::Behaviour,
    /// Handshakes and connections per IP address.
    by_address: by_address::Behaviour,
}

/// Relay v2 settings for beam relays: a tunnel lives longer than relay v2's default 2 minutes
/// and 128 KiB, so those limits are lifted; circuits are bounded per peer and in total instead.
fn relay_config() -> relay::Config {
    relay::Config {
        max_reservations: 512,
        max_reservations_per_peer: 4,
        reservation_duration: Duration::from_secs(3600),
        max_circuits: 256,
        max_circuits_per_peer: 16,
        max_circuit_duration: Duration::from_secs(24 * 3600),
        max_circuit_bytes: u64::MAX,
        ..relay::Config::default()
    }
}

/// Starts the node: binds its listeners and spawns its loop. Returns the handle and the
/// notices for the user interface.
pub async fn start(config: Config) -> Result<(Handle, mpsc::UnboundedReceiver<Notice>)> {
    let mut secret = config.keypair.secret();
    let key = libp2p::identity::Keypair::ed25519_from_bytes(&mut secret)
        .context("the identity key is not a valid ed25519 key")?;
    let lan = if config.mdns {
        Some(
            mdns::tokio::Behaviour::new(mdns::Config::default(), key.public().to_peer_id())
                .context("cannot start mDNS (find peers on the local network); try --no-mdns")?,
        )
    } else {
        None
    };
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .context("cannot set up the TCP transport")?
        .with_quic()
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .context("cannot set up the relay client")?
        .with_behaviour(|key, relay_client| Behaviour {
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_VERSION.into(), key.public())
                    .with_agent_version(agent_version(config.location)),
            ),
            ping: ping::Behaviour::default(),
            stream: libp2p_stream::Behaviour::new(),
            autonat: autonat::Behaviour::new(
                key.public().to_peer_id(),
                autonat::Config {
                    boot_delay: Duration::from_secs(1),
                    retry_interval: Duration::from_secs(10),
                    refresh_interval: Duration::from_secs(300),
                    throttle_server_period: Duration::from_secs(5),
                    confidence_max: 1,
                    only_global_ips: !config.policy.allow_private,
                    ..autonat::Config::default()
                },
            ),
            relay: Toggle::from(
                config
                    .participation
                    .is_server()
                    .then(|| relay::Behaviour::new(key.public().to_peer_id(), relay_config())),
            ),
            relay_client,
            dcutr: dcutr::Behaviour::new(key.public().to_peer_id()),
            mdns: Toggle::from(lan),
            limits: connection_limits::Behaviour::new(
                connection_limits::ConnectionLimits::default()
                    .with_max_established(Some(config.max_peers))
                    .with_max_established_per_peer(Some(config.limits.connections_per_peer)),
            ),
            by_address: by_address::Behaviour::new(config.limits.by_address),
        })
        .context("cannot set up the libp2p behaviours")?
        // Streams are negotiated optimistically (multistream-select "V1Lazy"): the opener
        // writes its first message right behind the protocol's name instead of waiting a
        // round trip for the answer. With V1 every new stream (a control writer after
        // WRITER_IDLE, a tunnel) cost one more round trip, and a DHT request whose two
        // streams were new cost two: the sim-vs-real test measured lookups 76 % slower than
        // the simulator's, which has no such round trip.
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(Duration::from_secs(60))
                .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy)
        })
        .build();
    for addr in &config.listen {
        swarm.listen_on(addr.clone()).with_context(|| {
            format!("cannot listen on {addr}: is the port in use, or the address not this host's?")
        })?;
    }
    let control = swarm.behaviour().stream.new_control();
    let stats = Arc::new(Stats::default());
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
    let readers = Arc::new(tokio::sync::Semaphore::new(MAX_READERS));
    for proto in [PROTO_DHT, PROTO_ROUTE, PROTO_GOSSIP] {
        let mut c = control.clone();
        let incoming = c
            .accept(proto.clone())
            .context("protocol registered twice")?;
        tokio::spawn(accept_control(
            incoming,
            inbound_tx.clone(),
            stats.clone(),
            readers.clone(),
        ));
    }
    let now = Instant::now();
    // Reachable until shown otherwise: the record's endpoints are what the service listens on.
    let mut node_config = NodeConfig::new(config.participation);
    if config.caching {
        node_config.dht.cache = Some(dht::CacheConfig::default());
    }
    let mut os_rng = rand::rngs::StdRng::from_os_rng();
    let mut node = Node::new(
        node_config,
        config.keypair.clone(),
        rand::RngCore::next_u64(&mut os_rng),
        now,
        unix_now(),
    );
    // Handshake keys from the OS RNG: only the simulator may seed them.
    node.set_handshake_entropy(Box::new(os_rng));
    if let Some(path) = config.service.as_ref().and_then(|s| s.seq_file.as_ref()) {
        // Missing or unreadable: no floor (the wall clock alone, as on a first start).
        if let Some(seq) = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
        {
            node.set_seq_floor(seq);
        }
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(256);
    let (notice_tx, notice_rx) = mpsc::unbounded_channel();
    let handle = Handle {
        cmd: cmd_tx,
        control: control.clone(),
        peer: config.keypair.peer_id(),
        stats: stats.clone(),
        limiter: Arc::new(limit::RelayLimiter::new(config.relay_rate)),
        streams: limit::StreamLimits::new(
            config.limits.streams_per_peer,
            config.limits.streams_total,
        ),
        idle_timeout: config.limits.idle_timeout,
        connections: Arc::default(),
        rtts: Arc::default(),
    };
    let bootstrap = config
        .bootstrap
        .iter()
        .map(|a| {
            let (base, id) = split_peer(a);
            BootstrapPeer {
                addr: base,
                id,
                connected: false,
                next_try: now,
                lan: false,
            }
        })
        .collect();
    let driver = Driver {
        node,
        swarm,
        control,
        policy: config.policy,
        participation: config.participation,
        service: config.service,
        writers: HashMap::new(),
        awaiting_dial: HashMap::new(),
        known_addr: HashMap::new(),
        remote_ip: HashMap::new(),
        remote_addr: HashMap::new(),
        locations: HashMap::new(),
        location: config.location,
        pending_in: HashMap::new(),
        listen: BTreeSet::new(),
        bootstrap,
        listening: false,
        warned_no_addr: false,
        tor_address: None,
        joined: false,
        published: None,
        republish: false,
        reserving: BTreeSet::new(),
        publishing: BTreeMap::new(),
        resolves: BTreeMap::new(),
        notices: notice_tx,
        stats,
        rtts: handle.rtts.clone(),
        dht_recent: std::collections::VecDeque::new(),
        public: None,
        observed: BTreeMap::new(),
        punches: nat::Punches::default(),
        reservations: BTreeSet::new(),
        rate_samples: std::collections::VecDeque::new(),
        last_wall_clock: now,
    };
    tokio::spawn(driver.run(cmd_rx, inbound_rx));
    Ok((handle, notice_rx))
}

/// Unix time in seconds.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

struct BootstrapPeer {
    addr: Multiaddr,
    id: Option<libp2p::PeerId>,
    connected: bool,
    next_try: Instant,
    /// Found by mDNS (forgotten when its record expires), not given with `--bootstrap`.
    lan: bool,
}

/// LAN peers (found by mDNS) kept as bootstrap peers at most.
const MAX_LAN_PEERS: usize = 64;

struct Driver {
    node: Node,
    swarm: Swarm<Behaviour>,
    control: libp2p_stream::Control,
    policy: AddrPolicy,
    participation: Participation,
    service: Option<ServiceSpec>,
    writers: HashMap<libp2p::PeerId, mpsc::Sender<(StreamProtocol, Vec<u8>)>>,
    /// Messages for peers being dialled.
    awaiting_dial: HashMap<libp2p::PeerId, Vec<(StreamProtocol, Vec<u8>)>>,
    /// Each peer's identify-confirmed listen address (a usable one).
    known_addr: HashMap<libp2p::PeerId, Multiaddr>,
    /// The IP each connected peer was last seen at.
    remote_ip: HashMap<libp2p::PeerId, std::net::IpAddr>,
    /// The remote address of each connected peer's latest connection, and whether this node
    /// dialled it.
    remote_addr: HashMap<libp2p::PeerId, (Multiaddr, bool)>,
    /// Where connected peers say they are (identify's agent version; see [`agent_version`]).
    locations: HashMap<libp2p::PeerId, (f64, f64)>,
    /// Where this node says it is.
    location: Option<(f64, f64)>,
    /// Frames from peers whose identify has not arrived: since when, and the frames.
    pending_in: HashMap<libp2p::PeerId, (Instant, Vec<Vec<u8>>)>,
    /// This node's own usable listen addresses.
    listen: BTreeSet<Multiaddr>,
    bootstrap: Vec<BootstrapPeer>,
    /// A listener is up (bootstrap dials wait for it).
    listening: bool,
    /// [`Notice::NoUsableAddress`] was sent.
    warned_no_addr: bool,
    /// The service's `.onion` address, once its onion service runs.
    tor_address: Option<String>,
    joined: bool,
    /// The endpoints of the service record last published.
    published: Option<BTreeSet<Multiaddr>>,
    /// Publish again at the next chance (reachability changed).
    republish: bool,
    /// Relays this node asked for a reservation.
    reserving: BTreeSet<libp2p::PeerId>,
    publishing: BTreeMap<QueryId, PublishedWhat>,
    resolves: BTreeMap<ResolveId, oneshot::Sender<Result<ServiceRecord, ResolveError>>>,
    notices: mpsc::UnboundedSender<Notice>,
    stats: Arc<Stats>,
    /// Shared with [`Handle::rtts`].
    rtts: Arc<std::sync::Mutex<HashMap<libp2p::PeerId, Duration>>>,
    /// The outcomes of the last [`DHT_WINDOW`] DHT operations.
    dht_recent: std::collections::VecDeque<bool>,
    /// AutoNAT's verdict (`None`: not decided).
    public: Option<bool>,
    /// The address each peer saw this node at (identify), at most [`nat::MAX_OBSERVATIONS`].
    observed: BTreeMap<libp2p::PeerId, Multiaddr>,
    punches: nat::Punches,
    /// The relays holding a reservation for this node now (removed when the connection to
    /// one closes).
    reservations: BTreeSet<libp2p::PeerId>,
    /// Tunnel byte counters (in, out) sampled at each housekeeping tick, over [`RATE_WINDOW`].
    rate_samples: std::collections::VecDeque<(Instant, u64, u64)>,
    last_wall_clock: Instant,
}

impl Driver {
    async fn run(
        mut self,
        mut cmds: mpsc::Receiver<Cmd>,
        mut inbound: mpsc::Receiver<(libp2p::PeerId, Vec<u8>)>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // One timer, reset only when the core's deadline changes; the stale-deadline guard is
        // the simulator driver's too (beam_node::wakeup).
        let timer = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(timer);
        let mut wakeup = Wakeup::new();
        loop {
            if let Some(d) = wakeup.next(self.node.poll_timeout()) {
                timer.as_mut().reset(tokio::time::Instant::from_std(d));
            }
            self.stats
                .stale_timeouts
                .store(wakeup.stale, Ordering::Relaxed);
            tokio::select! {
                biased;
                cmd = cmds.recv() => match cmd {
                    Some(cmd) => self.on_cmd(cmd),
                    None => break,
                },
                Some((peer, bytes)) = inbound.recv() => self.on_frame(peer, bytes),
                ev = self.swarm.select_next_some() => self.on_swarm(ev),
                _ = tick.tick() => self.housekeeping(),
                () = &mut timer, if wakeup.armed() => {
                    let t = Instant::now();
                    self.node.handle_timeout(t);
                    wakeup.fired(t);
                }
            }
            self.drain();
        }
    }

    /// Drains the node until both `poll_transmit` and `poll_event` return `None` in one pass:
    /// handling an event can queue messages (a resolve's second lookup starts inside
    /// `poll_event`), so the transmits are polled again after the events.
    fn drain(&mut self) {
        loop {
            while let Some(t) = self.node.poll_transmit() {
                self.send(t);
            }
            let mut events = false;
            while let Some(e) = self.node.poll_event() {
                events = true;
                self.on_event(e);
            }
            let mut sent = false;
            while let Some(t) = self.node.poll_transmit() {
                sent = true;
                self.send(t);
            }
            if !events && !sent {
                break;
            }
        }
    }

    fn send(&mut self, t: beam_node::Transmit) {
        let Some(pid) = to_libp2p(&t.to) else {
            self.stats.dropped_out.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let proto = match &t.message {
            Message::Dht(_) => PROTO_DHT,
            Message::Route(_) => PROTO_ROUTE,
            Message::Gossip(_) => PROTO_GOSSIP,
        };
        let Ok(bytes) = t.encode() else {
            self.stats.dropped_out.fetch_add(1, Ordering::Relaxed);
            return;
        };
        tracing::trace!(peer = %pid, %proto, connected = self.swarm.is_connected(&pid), "send");
        if !self.swarm.is_connected(&pid) {
            // Held here until the connection is up: a stream opened before it would race the
            // dial and fail.
            let q = self.awaiting_dial.entry(pid).or_default();
            if q.len() >= WRITER_QUEUE {
                self.stats.dropped_out.fetch_add(1, Ordering::Relaxed);
                return;
            }
            q.push((proto, bytes));
            if q.len() > 1 {
                return; // a dial is under way already
            }
            match t
                .addr
                .as_str()
                .parse::<Multiaddr>()
                .map(|a| split_peer(&a).0)
            {
                Ok(a) if self.policy.usable(&a) => self.dial(pid, vec![a]),
                _ if self.known_addr.contains_key(&pid) => {
                    let a = self.known_addr[&pid].clone();
                    self.dial(pid, vec![a]);
                }
                _ => {
                    // An address we will not dial (private, malformed): as good as unreachable.
                    self.awaiting_dial.remove(&pid);
                    self.stats.dropped_out.fetch_add(1, Ordering::Relaxed);
                    self.node.handle_peer_unreachable(Instant::now(), &t.to);
                }
            }
            return;
        }
        self.write_to(pid, proto, bytes);
    }

    fn write_to(&mut self, pid: libp2p::PeerId, proto: StreamProtocol, bytes: Vec<u8>) {
        let tx = match self.writers.get(&pid) {
            Some(tx) if !tx.is_closed() => tx.clone(),
            _ => {
                let (tx, rx) = mpsc::channel(WRITER_QUEUE);
                tokio::spawn(writer(self.control.clone(), pid, rx));
                self.writers.insert(pid, tx.clone());
                tx
            }
        };
        if tx.try_send((proto, bytes)).is_err() {
            self.stats.dropped_out.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn dial(&mut self, pid: libp2p::PeerId, addrs: Vec<Multiaddr>) {
        if self.swarm.is_connected(&pid) || pid == *self.swarm.local_peer_id() {
            return;
        }
        let addrs: Vec<Multiaddr> = addrs
            .into_iter()
            .map(|a| split_peer(&a).0)
            .filter(|a| self.policy.dialable(a))
            .collect();
        let opts = DialOpts::peer_id(pid)
            .addresses(addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(error = %e, "dial not started");
        }
    }

    fn on_frame(&mut self, pid: libp2p::PeerId, bytes: Vec<u8>) {
        tracing::trace!(peer = %pid, len = bytes.len(), "frame in");
        let Some(peer) = from_libp2p(&pid) else {
            self.stats.dropped_in.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match self.known_addr.get(&pid) {
            Some(a) => {
                let addr = Addr::new(a.to_string());
                self.node
                    .handle_datagram(Instant::now(), peer, addr, &bytes);
            }
            None => {
                let (_, q) = self
                    .pending_in
                    .entry(pid)
                    .or_insert_with(|| (Instant::now(), vec![]));
                if q.len() < MAX_PENDING_PER_PEER {
                    q.push(bytes);
                } else {
                    self.stats.dropped_in.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Hands a peer's waiting frames to the node, with `addr` as its address (empty if none).
    fn flush_pending(&mut self, pid: libp2p::PeerId) {
        let Some((_, frames)) = self.pending_in.remove(&pid) else {
            return;
        };
        let Some(peer) = from_libp2p(&pid) else {
            return;
        };
        let addr = Addr::new(
            self.known_addr
                .get(&pid)
                .map(|a| a.to_string())
                .unwrap_or_default(),
        );
        for f in frames {
            self.node
                .handle_datagram(Instant::now(), peer, addr.clone(), &f);
        }
    }

    fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        let now = Instant::now();
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                if let Some(ip) = addr::ip_of(&address) {
                    crate::logs::own(ip.to_string());
                }
                if self.policy.usable(&address) {
                    self.listen.insert(address.clone());
                }
                if !self.listening {
                    // Dial only once a listener is up: TCP dials then leave from the listen port
                    // (port reuse), so the address peers observe is one a hole punch can use.
                    self.listening = true;
                    self.dial_bootstrap(now);
                }
                let _ = self.notices.send(Notice::Listening(address));
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen.remove(&address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                connection_id,
                ..
            } => {
                tracing::debug!(peer = %peer_id, ?connection_id, ?endpoint, "connection established");
                if let Some(ip) = addr::ip_of(endpoint.get_remote_address()) {
                    self.remote_ip.insert(peer_id, ip);
                }
                self.remote_addr.insert(
                    peer_id,
                    (endpoint.get_remote_address().clone(), endpoint.is_dialer()),
                );
                if endpoint.is_dialer() {
                    let remote = split_peer(endpoint.get_remote_address()).0;
                    self.on_bootstrap_connected(now, peer_id, &remote);
                }
                for (proto, bytes) in self.awaiting_dial.remove(&peer_id).unwrap_or_default() {
                    self.write_to(peer_id, proto, bytes);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => {
                tracing::debug!(peer = %peer_id, ?connection_id, ?cause, "connection closed");
                if num_established > 0 {
                    return;
                }
                self.flush_pending(peer_id);
                for b in &mut self.bootstrap {
                    if b.id == Some(peer_id) {
                        b.connected = false;
                    }
                }
                // What it saw of this node, and the reservation it held, went with it.
                self.observed.remove(&peer_id);
                self.reservations.remove(&peer_id);
                self.remote_ip.remove(&peer_id);
                self.remote_addr.remove(&peer_id);
                self.locations.remove(&peer_id);
                self.rtts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&peer_id);
            }
            SwarmEvent::IncomingConnectionError {
                error: libp2p::swarm::ListenError::Denied { cause },
                ..
            } => {
                tracing::debug!(%cause, "refused an incoming connection");
                let handshake = matches!(
                    cause.downcast_ref::<by_address::Refused>(),
                    Some(
                        by_address::Refused::HandshakesPerAddress(_)
                            | by_address::Refused::HandshakesTotal(_)
                    )
                );
                let counter = if handshake {
                    &self.stats.handshakes_refused
                } else {
                    &self.stats.connections_refused
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                let msg = error.to_string();
                for b in &mut self.bootstrap {
                    if !b.connected && (b.id.is_none() || b.id == peer_id) && msg_mentions(&msg, b)
                    {
                        let _ = self.notices.send(Notice::BootstrapUnreachable {
                            addr: b.addr.clone(),
                            error: first_line(&msg),
                        });
                    }
                }
                if let Some(pid) = peer_id
                    && !self.swarm.is_connected(&pid)
                    && let Some(peer) = from_libp2p(&pid)
                {
                    if let Some(q) = self.awaiting_dial.remove(&pid) {
                        self.stats
                            .dropped_out
                            .fetch_add(q.len() as u64, Ordering::Relaxed);
                    }
                    self.node.handle_peer_unreachable(now, &peer);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(autonat::Event::StatusChanged {
                new,
                ..
            })) => {
                let public = match new {
                    autonat::NatStatus::Public(_) => true,
                    autonat::NatStatus::Private => false,
                    autonat::NatStatus::Unknown => return,
                };
                self.public = Some(public);
                if let Some(ip) = self
                    .swarm
                    .behaviour()
                    .autonat
                    .public_address()
                    .and_then(addr::ip_of)
                {
                    crate::logs::own(ip.to_string());
                }
                if public != self.node.is_reachable() {
                    self.node.set_reachable(now, public);
                    self.republish = true;
                    if public {
                        self.reserving.clear();
                    }
                    self.publish_if_due(now);
                }
                let _ = self.notices.send(Notice::Reachability { public });
            }
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(
                relay::client::Event::ReservationReqAccepted { relay_peer_id, .. },
            )) => {
                self.reservations.insert(relay_peer_id);
                if let Some(relay) = from_libp2p(&relay_peer_id) {
                    let _ = self.notices.send(Notice::Reserved { relay });
                }
            }
            SwarmEvent::ListenerClosed { addresses, .. } => {
                // A reservation ended (the relay left): ask again at the next publish.
                for a in addresses {
                    if let Some(libp2p::multiaddr::Protocol::P2p(relay)) = a
                        .iter()
                        .take_while(|p| !matches!(p, libp2p::multiaddr::Protocol::P2pCircuit))
                        .last()
                    {
                        self.reserving.remove(&relay);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                self.on_lan_peers(now, found);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Expired(gone))) => {
                self.bootstrap.retain(|b| {
                    !(b.lan
                        && !b.connected
                        && gone.iter().any(|(p, a)| b.id == Some(*p) && b.addr == *a))
                });
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            })) => match result {
                Ok(_) => {
                    self.punches.succeeded += 1;
                    if let Some(peer) = from_libp2p(&remote_peer_id) {
                        self.node.punched(peer);
                        let _ = self.notices.send(Notice::HolePunched { peer });
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "hole punch failed");
                    self.punches.failed += 1;
                    self.punches.last_error = Some(first_line(&e.to_string()));
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                if info.protocol_version != IDENTIFY_VERSION {
                    return;
                }
                let mut usable: Vec<Multiaddr> = info
                    .listen_addrs
                    .iter()
                    .map(|a| split_peer(a).0)
                    .filter(|a| self.policy.usable(a))
                    .collect();
                // The address on the network we reach the peer through first (a peer on several
                // networks, or with loopback among its addresses, is known by the one that works
                // for others too), then TCP before QUIC.
                let seen_ip = self.remote_ip.get(&peer_id).copied();
                usable.sort_by_key(|a| {
                    let ip = addr::ip_of(a);
                    (
                        ip != seen_ip,
                        ip.is_some_and(|i| i.is_loopback()),
                        !addr::is_tcp(a),
                    )
                });
                if let Some(a) = usable.into_iter().next() {
                    self.known_addr.insert(peer_id, a);
                }
                // Over a relay, the address seen is the circuit's: it says nothing of a NAT.
                let circuit = info
                    .observed_addr
                    .iter()
                    .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2pCircuit));
                if !circuit
                    && (self.observed.len() < nat::MAX_OBSERVATIONS
                        || self.observed.contains_key(&peer_id))
                {
                    self.observed.insert(peer_id, info.observed_addr.clone());
                }
                match declared_location(&info.agent_version) {
                    Some(at) => self.locations.insert(peer_id, at),
                    None => self.locations.remove(&peer_id),
                };
                tracing::debug!(peer = %peer_id, "identified");
                self.flush_pending(peer_id);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            })) => {
                self.rtts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(peer, rtt);
            }
            _ => {}
        }
    }

    /// Peers mDNS found on the local network are joined like bootstrap peers: dialled, and
    /// given to the DHT once connected.
    fn on_lan_peers(&mut self, now: Instant, found: Vec<(libp2p::PeerId, Multiaddr)>) {
        let me = *self.swarm.local_peer_id();
        for (pid, addr) in found {
            let known = self
                .bootstrap
                .iter()
                .any(|b| b.id == Some(pid) && b.addr == addr);
            let lan = self.bootstrap.iter().filter(|b| b.lan).count();
            if pid == me || known || lan >= MAX_LAN_PEERS {
                continue;
            }
            if !self.bootstrap.iter().any(|b| b.id == Some(pid))
                && let Some(peer) = from_libp2p(&pid)
            {
                let _ = self.notices.send(Notice::LanPeer {
                    peer,
                    addr: addr.clone(),
                });
            }
            let connected = self.swarm.is_connected(&pid);
            self.bootstrap.push(BootstrapPeer {
                addr,
                id: Some(pid),
                connected: false,
                next_try: now,
                lan: true,
            });
            if connected {
                // Already connected (it dialled us): hand it to the DHT now.
                let remote = self.bootstrap[self.bootstrap.len() - 1].addr.clone();
                self.on_bootstrap_connected(now, pid, &remote);
            }
        }
        if self.listening {
            self.dial_bootstrap(now);
        }
    }

    fn on_bootstrap_connected(&mut self, now: Instant, pid: libp2p::PeerId, remote: &Multiaddr) {
        let Some(peer) = from_libp2p(&pid) else {
            return;
        };
        let mut contacts = vec![];
        for b in &mut self.bootstrap {
            if !b.connected && (b.addr == *remote || b.id == Some(pid)) {
                b.connected = true;
                b.id = Some(pid);
                contacts.push(Contact {
                    peer,
                    addr: Addr::new(b.addr.to_string()),
                });
            }
        }
        if !contacts.is_empty() {
            self.known_addr.entry(pid).or_insert_with(|| remote.clone());
            self.node.bootstrap(now, contacts);
        }
    }

    /// See [`Handle::reconnect`].
    fn reconnect(&mut self, now: Instant, forget: bool) -> Reconnected {
        let forgotten = forget.then(|| self.node.forget_network(now));
        let peers: Vec<libp2p::PeerId> = self.swarm.connected_peers().copied().collect();
        for p in &peers {
            let _ = self.swarm.disconnect_peer_id(*p);
        }
        let addresses_forgotten = if forget {
            self.dht_recent.clear();
            self.observed.clear();
            std::mem::take(&mut self.known_addr).len()
        } else {
            0
        };
        self.writers.clear();
        self.awaiting_dial.clear();
        self.reserving.clear();
        self.reservations.clear();
        for b in &mut self.bootstrap {
            b.connected = false;
            b.next_try = now;
        }
        // Joined again when a bootstrap peer answers (at once when there is none); the service
        // record goes out again then.
        self.joined = false;
        self.republish = true;
        tracing::info!(disconnected = peers.len(), forget, "reconnecting");
        Reconnected {
            disconnected: peers.len(),
            bootstrap: self.bootstrap.len(),
            forgotten,
            addresses_forgotten,
        }
    }

    fn dial_bootstrap(&mut self, now: Instant) {
        if self.bootstrap.is_empty() && !self.joined {
            self.joined = true;
            let _ = self.notices.send(Notice::Joined {
                peers: 0,
                alone: true,
            });
        }
        for i in 0..self.bootstrap.len() {
            let b = &mut self.bootstrap[i];
            if b.connected || b.next_try > now {
                continue;
            }
            b.next_try = now + BOOTSTRAP_RETRY;
            let opts = match b.id {
                Some(id) => DialOpts::peer_id(id)
                    .addresses(vec![b.addr.clone()])
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build(),
                None => DialOpts::unknown_peer_id().address(b.addr.clone()).build(),
            };
            let addr = b.addr.clone();
            match self.swarm.dial(opts) {
                Ok(()) => {}
                // Connected or being dialled already (a connection still closing after a
                // reconnect): try again at the next tick.
                Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) => {
                    self.bootstrap[i].next_try = now;
                }
                Err(e) => {
                    let _ = self.notices.send(Notice::BootstrapUnreachable {
                        addr,
                        error: e.to_string(),
                    });
                }
            }
        }
    }

    /// Tunnel bytes per second (in, out) over the samples kept.
    fn rate(&self) -> (f64, f64) {
        let (Some(first), Some(last)) = (self.rate_samples.front(), self.rate_samples.back())
        else {
            return (0.0, 0.0);
        };
        let secs = last.0.saturating_duration_since(first.0).as_secs_f64();
        if secs <= 0.0 {
            return (0.0, 0.0);
        }
        (
            last.1.saturating_sub(first.1) as f64 / secs,
            last.2.saturating_sub(first.2) as f64 / secs,
        )
    }

    fn housekeeping(&mut self) {
        let now = Instant::now();
        self.rate_samples.push_back((
            now,
            self.stats.bytes_in.load(Ordering::Relaxed),
            self.stats.bytes_out.load(Ordering::Relaxed),
        ));
        while self
            .rate_samples
            .front()
            .is_some_and(|s| now.saturating_duration_since(s.0) > RATE_WINDOW)
        {
            self.rate_samples.pop_front();
        }
        if self.listening && (!self.joined || self.bootstrap.iter().all(|b| !b.connected)) {
            self.dial_bootstrap(now);
        }
        let stale: Vec<libp2p::PeerId> = self
            .pending_in
            .iter()
            .filter(|(_, (since, _))| now.saturating_duration_since(*since) >= IDENTIFY_WAIT)
            .map(|(p, _)| *p)
            .collect();
        for p in stale {
            tracing::debug!(peer = %p, "frames handled with no identify");
            self.flush_pending(p);
        }
        if now.saturating_duration_since(self.last_wall_clock) >= Duration::from_secs(60) {
            self.last_wall_clock = now;
            self.node.handle_wall_clock(now, unix_now());
        }
        self.writers.retain(|_, tx| !tx.is_closed());
        self.publish_if_due(now);
    }

    /// Publishes the service record (and name) once joined and listening, and again when the
    /// endpoints change.
    fn publish_if_due(&mut self, now: Instant) {
        let Some(spec) = self.service.clone() else {
            return;
        };
        if self.joined && self.listening && self.listen.is_empty() && !self.warned_no_addr {
            self.warned_no_addr = true;
            let _ = self.notices.send(Notice::NoUsableAddress);
        }
        if !self.joined || self.listen.is_empty() {
            return;
        }
        if self.published.as_ref() == Some(&self.listen) && !self.republish {
            return;
        }
        self.republish = false;
        let first = self.published.is_none();
        self.published = Some(self.listen.clone());
        let mut endpoints: Vec<Multiaddr> = self.listen.iter().cloned().collect();
        endpoints.sort_by_key(|a| !addr::is_tcp(a));
        let record = ServiceRecord {
            peer: self.node.peer_id(),
            seq: 0,
            expires: 0,
            tor_address: self.tor_address.clone(),
            endpoints: endpoints
                .iter()
                .take(beam_node::record::MAX_ENDPOINTS)
                .map(|a| Addr::new(a.to_string()))
                .collect(),
            relays: vec![],
            reachable: true,
            coordinates: None,
            participation: self.participation,
            noise_key: None,
        };
        match self.node.publish(now, Publish::Service(record)) {
            Ok(q) => {
                self.publishing.insert(q, PublishedWhat::Service);
            }
            Err(e) => tracing::warn!(error = %e, "cannot publish the service record"),
        }
        self.reserve_on_relays();
        if first && let Some(name) = &spec.name {
            match self.node.publish(now, Publish::Name(name.clone())) {
                Ok(q) => {
                    self.publishing.insert(q, PublishedWhat::Name(name.clone()));
                }
                Err(e) => tracing::warn!(error = %e, "cannot publish the name"),
            }
        }
        self.save_seq(&spec);
    }

    /// Behind a NAT: keeps a relay v2 reservation on each relay the core put in the service
    /// record, so clients can reach this node through them.
    fn reserve_on_relays(&mut self) {
        if self.node.is_reachable() {
            return;
        }
        for c in self.node.nat_relays().to_vec() {
            let (Some(pid), Ok(addr)) = (to_libp2p(&c.peer), c.addr.as_str().parse::<Multiaddr>())
            else {
                continue;
            };
            if !self.reserving.insert(pid) {
                continue;
            }
            let circuit = split_peer(&addr)
                .0
                .with(libp2p::multiaddr::Protocol::P2p(pid))
                .with(libp2p::multiaddr::Protocol::P2pCircuit);
            if let Err(e) = self.swarm.listen_on(circuit) {
                tracing::warn!(error = %e, "cannot reserve on a relay");
                self.reserving.remove(&pid);
            }
        }
    }

    /// Keeps the highest seq published so far in the service's seq file.
    fn save_seq(&self, spec: &ServiceSpec) {
        if let Some(path) = &spec.seq_file
            && let Err(e) = std::fs::write(path, format!("{}\n", self.node.dht().last_seq()))
        {
            tracing::warn!(error = %e, file = %path.display(), "cannot keep the record seq");
        }
    }

    /// Remembers how a DHT operation went, for [`Status::dht_health`].
    fn dht_outcome(&mut self, ok: bool) {
        if self.dht_recent.len() == DHT_WINDOW {
            self.dht_recent.pop_front();
        }
        self.dht_recent.push_back(ok);
    }

    fn on_event(&mut self, e: Event) {
        match &e {
            // A resolve that found its record counts; one that found nothing does not (the
            // name may not exist), nor one refused before any query ran (busy).
            Event::Resolved { result: Ok(_), .. } => self.dht_outcome(true),
            Event::Dht(dht::Event::PutRecord { stored, .. }) => self.dht_outcome(*stored > 0),
            Event::Dht(dht::Event::Lookup { closest, .. }) => self.dht_outcome(!closest.is_empty()),
            Event::Dht(dht::Event::GetRecord { record, .. }) => self.dht_outcome(record.is_some()),
            _ => {}
        }
        match e {
            Event::Resolved { id, result, .. } => {
                if let Some(tx) = self.resolves.remove(&id) {
                    let _ = tx.send(result);
                }
            }
            Event::Dht(dht::Event::Bootstrapped { peers }) => {
                if !self.joined {
                    self.joined = true;
                    let _ = self.notices.send(Notice::Joined {
                        peers,
                        alone: false,
                    });
                    self.publish_if_due(Instant::now());
                }
            }
            Event::Dht(dht::Event::PutRecord {
                id,
                stored,
                refused,
                refusal,
                ..
            }) => {
                if let Some(what) = self.publishing.remove(&id) {
                    let _ = self.notices.send(Notice::Published {
                        what,
                        stored,
                        refused,
                        refusal,
                        relays: self.node.nat_relays().iter().map(|c| c.peer).collect(),
                    });
                }
            }
            Event::Route(beam_node::routing::RouteEvent::Request { reply, .. }) => {
                // Datagram requests are the simulator's workload; a real service answers over
                // tunnels. Answer empty so the asker does not wait out its timeout.
                self.node.respond(Instant::now(), reply, vec![]);
            }
            Event::Dht(_) | Event::Route(_) => {}
        }
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        let now = Instant::now();
        match cmd {
            Cmd::Resolve(what, tx) => match self.node.resolve(now, &what) {
                Ok(id) => {
                    self.resolves.insert(id, tx);
                }
                Err(e) => {
                    let _ = tx.send(Err(ResolveError::Busy(e.to_string())));
                }
            },
            Cmd::Plan(record, strategy, exclude, tx) => {
                let plan = self
                    .node
                    .plan_route(&record, strategy, &exclude)
                    .map_err(|e| e.to_string())
                    .map(|p| Route {
                        service: record.peer,
                        endpoints: record
                            .endpoints
                            .iter()
                            .filter_map(|a| a.as_str().parse().ok())
                            .collect(),
                        relays: p
                            .relays
                            .iter()
                            .filter_map(|c| Some((c.peer, c.addr.as_str().parse().ok()?)))
                            .collect(),
                        noise_key: record.noise_key,
                        reachable: p.reachable,
                        predicted_direct: record.coordinates.as_ref().and_then(|c| {
                            self.node.coordinates()?;
                            Some(self.node.vivaldi().predict_to(c))
                        }),
                    });
                let _ = tx.send(plan);
            }
            Cmd::Outcome(relays, ok) => self.node.route_outcome(&relays, ok),
            Cmd::Admit(tx) => {
                let open = self.stats.circuits_open.load(Ordering::Relaxed);
                let _ = tx.send(self.node.admit_circuit(open));
            }
            Cmd::Dial(pid, addrs) => self.dial(pid, addrs),
            Cmd::SetTorAddress(onion) => {
                if self.tor_address != onion {
                    self.tor_address = onion;
                    self.republish = true;
                }
            }
            Cmd::StartE2e(key, tx) => {
                let _ = tx.send(self.node.start_e2e(&key).map_err(|e| e.to_string()));
            }
            Cmd::Responder(tx) => {
                let _ = tx.send(self.node.e2e_responder());
            }
            Cmd::Peers(tx) => {
                let rtts = self.rtts.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let mut peers: Vec<PeerInfo> = self
                    .swarm
                    .connected_peers()
                    .map(|p| {
                        let beam = addr::from_libp2p(p);
                        let (address, dialled) = self
                            .remote_addr
                            .get(p)
                            .map_or((String::new(), false), |(a, d)| (a.to_string(), *d));
                        PeerInfo {
                            peer: beam.map(|b| b.to_string()),
                            libp2p_id: p.to_string(),
                            relayed: address.contains("/p2p-circuit"),
                            address,
                            direction: if dialled { "out" } else { "in" },
                            rtt_ms: rtts.get(p).map(|d| d.as_secs_f64() * 1e3),
                            location: self.locations.get(p).map(|&(lat, lon)| [lat, lon]),
                            region: self.locations.get(p).map(|&(lat, lon)| region_of(lat, lon)),
                            in_routing_table: beam
                                .is_some_and(|b| self.node.dht().table().contains(&b)),
                        }
                    })
                    .collect();
                peers.sort_by(|a, b| {
                    a.rtt_ms
                        .unwrap_or(f64::INFINITY)
                        .total_cmp(&b.rtt_ms.unwrap_or(f64::INFINITY))
                        .then_with(|| a.libp2p_id.cmp(&b.libp2p_id))
                });
                let _ = tx.send(peers);
            }
            Cmd::Connectivity(tx) => {
                let mut observed = BTreeMap::new();
                for a in self.observed.values() {
                    *observed.entry(a.to_string()).or_insert(0) += 1;
                }
                let autonat = &self.swarm.behaviour().autonat;
                let _ = tx.send(nat::Connectivity {
                    reachability: reachability(self.public),
                    public_address: autonat.public_address().map(|a| a.to_string()),
                    confidence: autonat.confidence(),
                    mapping: nat::mapping(self.public, self.observed.values()),
                    observed,
                    hole_punches: self.punches.clone(),
                    reservations: self.reservations.len() as u64,
                    listen: self.listen.iter().map(|a| a.to_string()).collect(),
                });
            }
            Cmd::Uncache(what, service) => self.node.uncache(&what, &service),
            Cmd::Optimize(geo, tx) => {
                let rank = if geo {
                    beam_node::Rank::Coordinates
                } else {
                    let rtts = self.rtts.lock().unwrap_or_else(|p| p.into_inner());
                    beam_node::Rank::Measured(
                        rtts.iter()
                            .filter_map(|(p, d)| Some((from_libp2p(p)?, d.as_secs_f64() * 1e3)))
                            .collect(),
                    )
                };
                let _ = tx.send(self.node.optimize(now, &rank));
            }
            Cmd::Reconnect(forget, tx) => {
                let _ = tx.send(self.reconnect(now, forget));
            }
            Cmd::Status(tx) => {
                let (rate_in_bps, rate_out_bps) = self.rate();
                let _ = tx.send(Status {
                    peer_id: self.node.peer_id().to_string(),
                    libp2p_id: self.swarm.local_peer_id().to_string(),
                    participation: format!("{:?}", self.participation).to_lowercase(),
                    listen: self.listen.iter().map(|a| a.to_string()).collect(),
                    peers_connected: self.swarm.connected_peers().count(),
                    routing_table: self.node.dht().table().len(),
                    network_size_estimate: self.node.network_size_estimate(),
                    malformed_in: self.node.stats().malformed_in,
                    records_held: self.node.dht().store().len(),
                    circuits_refused: self.node.router().stats().circuits_refused,
                    dht_health: (!self.dht_recent.is_empty()).then(|| {
                        self.dht_recent.iter().filter(|&&ok| ok).count() as f64
                            / self.dht_recent.len() as f64
                    }),
                    dht_operations: self.dht_recent.len(),
                    peer_rtt_p50_ms: {
                        let mut v: Vec<Duration> = self
                            .rtts
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .values()
                            .copied()
                            .collect();
                        v.sort_unstable();
                        v.get(v.len() / 2).map(|d| d.as_secs_f64() * 1e3)
                    },
                    rate_in_bps,
                    rate_out_bps,
                    reachability: reachability(self.public),
                    bootstrap_connected: self.bootstrap.iter().filter(|b| b.connected).count(),
                    bootstrap_known: self.bootstrap.len(),
                    location: self.location.map(|(lat, lon)| [lat, lon]),
                    region: self.location.map(|(lat, lon)| region_of(lat, lon)),
                    cache: self.node.dht().cache().map(|c| {
                        let s = self.node.dht().stats();
                        serde_json::json!({
                            "copies": c.len(),
                            "hits": s.cache_hits,
                            "pushed": s.cache_pushed,
                            "stored": s.cache_stored,
                            "served": s.cache_served,
                        })
                    }),
                });
            }
        }
    }
}

fn reachability(public: Option<bool>) -> &'static str {
    match public {
        Some(true) => "public",
        Some(false) => "private",
        None => "unknown",
    }
}

fn msg_mentions(msg: &str, b: &BootstrapPeer) -> bool {
    b.id.is_some() || msg.contains(&b.addr.to_string())
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).to_string()
}

/// Accepts control streams of one protocol and spawns a reader for each.
async fn accept_control(
    mut incoming: libp2p_stream::IncomingStreams,
    to_loop: mpsc::Sender<(libp2p::PeerId, Vec<u8>)>,
    stats: Arc<Stats>,
    readers: Arc<tokio::sync::Semaphore>,
) {
    while let Some((peer, stream)) = incoming.next().await {
        let Ok(permit) = readers.clone().try_acquire_owned() else {
            stats.dropped_in.fetch_add(1, Ordering::Relaxed);
            continue; // at the bound: the stream is dropped (reset)
        };
        let (to_loop, stats) = (to_loop.clone(), stats.clone());
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _permit = permit;
            let mut s = stream.compat();
            // Taken: the writer may forget what it wrote on this stream (see `writer`). A peer
            // that stopped reading misses the byte; what it sent is read all the same.
            let _ = s.write_all(&[STREAM_ACCEPTED]).await;
            let _ = s.flush().await;
            loop {
                match tokio::time::timeout(READER_IDLE, frame::read(&mut s, wire::MAX_MESSAGE_SIZE))
                    .await
                {
                    Ok(Ok(Some(bytes))) => {
                        if to_loop.try_send((peer, bytes)).is_err() {
                            stats.dropped_in.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(Ok(None)) | Err(_) => break,
                    Ok(Err(e)) => {
                        stats.dropped_in.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(error = %e, "closed a control stream");
                        break;
                    }
                }
            }
        });
    }
}

/// The byte a reader writes back when it takes a control stream: the writer then knows the
/// stream was not dropped on arrival.
const STREAM_ACCEPTED: u8 = 1;

/// Sends the core's messages to one peer: opens a stream per protocol when first needed,
/// writes frames in order, and ends after [`WRITER_IDLE`] with nothing to send or when the peer
/// cannot be reached.
///
/// A new stream can be dropped on arrival: libp2p-stream hands inbound streams to the reader
/// through a channel of one, and drops a stream that finds it full — which happens when several
/// peers' first messages arrive together (a node joining, a busy bootstrap peer). The message
/// would be lost and its request wait out the DHT timeout (1 s, on about a third of cold
/// `beam connect`s on loopback). So the reader acknowledges each stream it takes with one byte
/// ([`STREAM_ACCEPTED`]); the writer keeps what it wrote on a stream until that byte arrives —
/// without waiting for it — and writes it again on a new stream when the stream fails first (up
/// to [`WRITE_ATTEMPTS`] streams). A message delivered twice is harmless: the core matches
/// answers by request id and ignores repeats.
async fn writer(
    mut control: libp2p_stream::Control,
    peer: libp2p::PeerId,
    mut rx: mpsc::Receiver<(StreamProtocol, Vec<u8>)>,
) {
    let mut out: HashMap<StreamProtocol, Outbound> = HashMap::new();
    let (acks_tx, mut acks) = mpsc::unbounded_channel::<(StreamProtocol, u64, bool)>();
    let mut generation = 0u64;
    loop {
        tokio::select! {
            next = tokio::time::timeout(WRITER_IDLE, rx.recv()) => {
                let Ok(Some((proto, bytes))) = next else { break };
                let retry = match out.get_mut(&proto) {
                    Some(o) => o.write(bytes).await,
                    None => Some((vec![bytes], 0)),
                };
                if let Some((unconfirmed, attempts)) = retry {
                    out.remove(&proto);
                    match Outbound::open(&mut control, peer, &proto, &acks_tx, &mut generation, unconfirmed, attempts).await {
                        Ok(o) => { out.insert(proto, o); }
                        Err(()) => return,
                    }
                }
            }
            Some((proto, generation_acked, accepted)) = acks.recv() => {
                let Some(o) = out.get_mut(&proto) else { continue };
                if o.generation != generation_acked {
                    continue; // an older stream's
                }
                if accepted {
                    o.unconfirmed = None;
                    continue;
                }
                let Some(o) = out.remove(&proto) else { continue };
                let unconfirmed = o.unconfirmed.unwrap_or_default();
                tracing::debug!(%peer, %proto, messages = unconfirmed.len(), "a control stream was dropped: writing again");
                match Outbound::open(&mut control, peer, &proto, &acks_tx, &mut generation, unconfirmed, o.attempts).await {
                    Ok(o) => { out.insert(proto, o); }
                    Err(()) => return,
                }
            }
        }
    }
    for (_, mut o) in out {
        use tokio::io::AsyncWriteExt;
        let _ = o.w.shutdown().await;
    }
}

/// Most messages kept for a second try while a stream is unacknowledged.
const MAX_UNCONFIRMED: usize = 64;

/// One protocol's stream to a peer, as [`writer`] holds it.
struct Outbound {
    w: tokio::io::WriteHalf<tokio_util::compat::Compat<libp2p::Stream>>,
    generation: u64,
    /// What was written since the stream opened, until the reader acknowledges it (`None` then).
    unconfirmed: Option<Vec<Vec<u8>>>,
    /// Streams opened for these messages so far.
    attempts: u32,
}

impl Outbound {
    /// Opens a stream, starts waiting for its acknowledgement, and writes `messages` on it
    /// (opening another when that fails, up to [`WRITE_ATTEMPTS`] in all). `Err` when the peer
    /// cannot be reached: the writer ends.
    async fn open(
        control: &mut libp2p_stream::Control,
        peer: libp2p::PeerId,
        proto: &StreamProtocol,
        acks: &mpsc::UnboundedSender<(StreamProtocol, u64, bool)>,
        generation: &mut u64,
        mut messages: Vec<Vec<u8>>,
        mut attempts: u32,
    ) -> Result<Outbound, ()> {
        use tokio::io::AsyncReadExt;
        loop {
            attempts += 1;
            if attempts > WRITE_ATTEMPTS {
                tracing::debug!(%peer, %proto, messages = messages.len(), "control streams keep failing: messages lost");
                return Err(());
            }
            let stream = match tokio::time::timeout(
                Duration::from_secs(10),
                control.open_stream(peer, proto.clone()),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "cannot open a control stream");
                    return Err(());
                }
                Err(_) => return Err(()),
            };
            *generation += 1;
            let (mut r, w) = tokio::io::split(stream.compat());
            let (acks, proto_acked, generation_acked) = (acks.clone(), proto.clone(), *generation);
            tokio::spawn(async move {
                let mut b = [0u8; 1];
                let accepted = matches!(
                    tokio::time::timeout(STREAM_ACK_WAIT, r.read_exact(&mut b)).await,
                    Ok(Ok(_)) if b[0] == STREAM_ACCEPTED
                );
                let _ = acks.send((proto_acked, generation_acked, accepted));
            });
            let mut o = Outbound {
                w,
                generation: *generation,
                unconfirmed: Some(Vec::new()),
                attempts,
            };
            let mut failed = None;
            for (i, m) in messages.iter().enumerate() {
                if !o.write_one(m).await {
                    failed = Some(i);
                    break;
                }
            }
            match failed {
                None => {
                    o.unconfirmed = Some(messages);
                    return Ok(o);
                }
                Some(_) => {
                    // The stream failed at once (reset on arrival): all of them again.
                    tracing::debug!(%peer, %proto, "a control stream failed: writing again");
                    tokio::time::sleep(WRITE_RETRY_PAUSE * attempts).await;
                    messages.truncate(MAX_UNCONFIRMED);
                }
            }
        }
    }

    async fn write_one(&mut self, bytes: &[u8]) -> bool {
        use tokio::io::AsyncWriteExt;
        frame::write(&mut self.w, bytes).await.is_ok() && self.w.flush().await.is_ok()
    }

    /// Writes one message; `Some((unconfirmed, attempts))` when the stream failed and the
    /// messages must go on a new one.
    async fn write(&mut self, bytes: Vec<u8>) -> Option<(Vec<Vec<u8>>, u32)> {
        if self.write_one(&bytes).await {
            if let Some(u) = &mut self.unconfirmed
                && u.len() < MAX_UNCONFIRMED
            {
                u.push(bytes);
            }
            return None;
        }
        let mut again = self.unconfirmed.take().unwrap_or_default();
        again.push(bytes);
        // A stream that was acknowledged and then failed: its connection went away; the
        // message goes on a new stream (a new connection, if there is one) from a fresh count.
        let attempts = if again.len() == 1 { 0 } else { self.attempts };
        Some((again, attempts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn node(bootstrap: Vec<Multiaddr>, service: Option<ServiceSpec>) -> (Handle, Multiaddr) {
        let (h, mut n) = start(Config {
            service,
            ..config(bootstrap)
        })
        .await
        .expect("start");
        let addr = loop {
            match tokio::time::timeout(Duration::from_secs(10), n.recv()).await {
                Ok(Some(Notice::Listening(a))) => break a,
                Ok(Some(_)) => {}
                other => panic!("no listen address: {other:?}"),
            }
        };
        // Keep draining notices so the channel never fills.
        tokio::spawn(async move { while n.recv().await.is_some() {} });
        let id = h.status().await.expect("status").libp2p_id;
        (h, format!("{addr}/p2p/{id}").parse().expect("addr"))
    }

    fn config(bootstrap: Vec<Multiaddr>) -> Config {
        Config {
            keypair: Keypair::generate(&mut rand::rngs::StdRng::from_os_rng()),
            participation: Participation::Routing,
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
            bootstrap,
            policy: AddrPolicy {
                allow_private: true,
            },
            service: None,
            relay_rate: None,
            mdns: false,
            max_peers: 256,
            location: None,
            caching: false,
            limits: Limits::default(),
        }
    }

    async fn raw_frame(attacker: &Handle, victim: &Handle, bytes: &[u8]) {
        let to = to_libp2p(&victim.peer).expect("id");
        let mut c = attacker.control.clone();
        let s = c.open_stream(to, PROTO_DHT).await.expect("stream");
        let mut s = s.compat();
        let _ = s.write_all(bytes).await;
        let _ = s.flush().await;
        let _ = s.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn oversized_frames_garbage_and_forged_records_are_dropped_and_the_node_stays_up() {
        let (victim, victim_addr) = node(vec![], None).await;
        let (attacker, _) = node(vec![victim_addr.clone()], None).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        // A frame announcing 1 GiB: the stream is closed before anything is allocated.
        raw_frame(&attacker, &victim, &(1u32 << 30).to_be_bytes()).await;
        // A frame of the right size that is not a message.
        let mut junk = 64u32.to_be_bytes().to_vec();
        junk.extend_from_slice(&[0xab; 64]);
        raw_frame(&attacker, &victim, &junk).await;
        // A STORE of a service record whose signature does not verify.
        let owner = Keypair::generate(&mut rand::rngs::StdRng::from_os_rng());
        let mut forged = ServiceRecord {
            peer: owner.peer_id(),
            seq: 1,
            expires: unix_now() + 600,
            tor_address: None,
            endpoints: vec![Addr::new("/ip4/127.0.0.1/tcp/9")],
            relays: vec![],
            reachable: true,
            coordinates: None,
            participation: Participation::Light,
            noise_key: None,
        }
        .sign(&owner);
        if let beam_node::Record::Service(s) = &mut forged {
            s.body.endpoints = vec![Addr::new("/ip4/127.0.0.1/tcp/6666")]; // altered after signing
        }
        let store = Message::Dht(beam_node::wire::DhtMessage::Request {
            id: 7,
            mode: beam_node::wire::Mode::Server,
            body: beam_node::wire::Request::Store { record: forged },
        });
        let bytes = wire::encode(&store).expect("encode");
        let mut framed = (bytes.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        raw_frame(&attacker, &victim, &framed).await;
        tokio::time::sleep(Duration::from_millis(500)).await;

        let st = victim.status().await.expect("the victim still answers");
        assert!(st.malformed_in >= 1, "the junk frame was counted: {st:?}");
        assert!(
            victim.stats.dropped_in.load(Ordering::Relaxed) >= 1,
            "the oversized frame was counted"
        );
        assert_eq!(
            attacker
                .resolve(ServiceRef::Peer(owner.peer_id()))
                .await
                .expect("resolve"),
            Err(ResolveError::ServiceNotFound(owner.peer_id())),
            "the forged record was not stored"
        );
        // And the node still serves: a real service publishes through it and is found.
        let (svc, _) = node(
            vec![victim_addr],
            Some(ServiceSpec {
                port: 9,
                name: Some("after-attack".into()),
                seq_file: None,
            }),
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match attacker
                .resolve(ServiceRef::Name("after-attack".into()))
                .await
                .expect("resolve")
            {
                Ok(r) => {
                    assert_eq!(r.peer, svc.peer);
                    break;
                }
                Err(e) if Instant::now() > deadline => panic!("not found after the attack: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}
