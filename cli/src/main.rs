//! `beam`: expose a local port to the world — on beam's own peer-to-peer network (and, next,
//! as a Tor onion service).
//!
//! # Layout
//!
//! - [`p2p`] — the libp2p driver: the `beam-node` core on a real network, and the data plane
//!   (tunnels and circuits).
//! - [`serve`] — `beam <PORT>` and `beam node`: run a peer, publish a service.
//! - [`connect`] — `beam connect`: resolve a service, choose a route, forward a local port.
//! - [`demo`] — `beam demo`: a small network on loopback, end to end, in one process.
//! - [`state`] — the state directory and the identity key.
//! - [`config`] — `beam config`: the configuration file the other commands read (flags win).
//!
//! The protocol decisions (records, lookups, route choice, relay admission, trust) are the
//! core's; this binary carries bytes and talks to the user.

mod config;
mod connect;
mod control;
mod dashboard;
mod demo;
mod history;
mod logs;
mod network;
mod p2p;
mod serve;
mod state;
mod status;
#[cfg(feature = "tor")]
mod tor;

use std::path::PathBuf;

use anyhow::{Result, bail};
use beam_node::record::Participation;
use beam_node::routing::Strategy;
use clap::{Args, Parser, Subcommand, ValueEnum};
use libp2p::Multiaddr;

#[derive(Parser)]
#[command(
    name = "beam",
    version,
    about = "Expose a local port to the world on a peer-to-peer network, with no central server.",
    long_about = "Expose a local port to the world on a peer-to-peer network, with no central \
        server.\n\n\
        beam 8000                         publish 127.0.0.1:8000; prints its beam:// address\n\
        beam 8000 --name demo --bootstrap /ip4/HOST/tcp/4001\n\
        beam connect demo --port 9000 --bootstrap /ip4/HOST/tcp/4001   then: curl localhost:9000\n\
        beam node --p2p-full --listen /ip4/0.0.0.0/tcp/4001             a bootstrap peer and relay\n\
        beam demo                         see it all work on this machine",
    subcommand_negates_reqs = true
)]
struct Cli {
    /// Where beam keeps its identity and state [default: $BEAM_HOME, else ~/.beam]. Run several
    /// nodes on one machine with one directory each.
    #[arg(long, global = true, env = "BEAM_HOME")]
    state_dir: Option<PathBuf>,
    /// Dial and publish loopback and private addresses too (tests on one machine, LANs, network
    /// namespaces). Off by default: addresses learned from peers could otherwise make this node
    /// dial hosts on its own network.
    #[arg(long, global = true)]
    allow_private_addrs: bool,
    /// Do not look for beam peers on the local network (mDNS), nor answer their queries. On by
    /// default: on a LAN, nodes find each other with no --bootstrap (add --allow-private-addrs
    /// so LAN addresses are published too).
    #[arg(long, global = true)]
    no_mdns: bool,
    /// The configuration file [default: $BEAM_CONFIG, else beam/config.toml in the platform's
    /// config directory, ~/.config on Linux]. See `beam config list`; flags override it.
    #[arg(long, global = true, env = "BEAM_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    serve: ServeArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

/// `beam <PORT>`.
#[derive(Args, Debug)]
struct ServeArgs {
    /// The local port to expose (on 127.0.0.1).
    #[arg(value_name = "PORT", required = true)]
    port: Option<u16>,
    /// Claim a name for the service (first come, first served: 1–63 of a-z, 0-9, '-').
    #[arg(long)]
    name: Option<String>,
    /// Publish it as a Tor onion service too (Arti, in process): prints `Tor URL:
    /// http://….onion`; the .onion stays the same across restarts and goes into the signed
    /// service record, so `beam connect NAME` falls back to Tor when no P2P route works.
    /// [default: tor.enabled in the config file, false]
    #[arg(long)]
    tor: bool,
    /// Give up on Tor (and keep the P2P side running) when it has not bootstrapped after this
    /// many seconds.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    tor_timeout: u64,
    /// Let in only clients that present an access token (`beam connect NAME --token TOKEN`);
    /// others are refused before a byte reaches the port. With no value a token is generated
    /// once and kept in the state directory (file auth-token); or give your own (16–128
    /// printable characters). The token travels inside the end-to-end encryption: relays never
    /// see it.
    #[arg(long, value_name = "TOKEN", num_args = 0..=1, default_missing_value = "")]
    auth: Option<String>,
    #[command(flatten)]
    p2p: P2pArgs,
}

#[derive(Args, Debug, Clone)]
struct P2pArgs {
    /// Answer DHT queries and relay for others (the default for a node with no bootstrap peer,
    /// which starts a network).
    #[arg(long, conflicts_with = "p2p_full")]
    p2p_routing: bool,
    /// Like --p2p-routing, with larger tables: for well-connected, long-running peers.
    #[arg(long)]
    p2p_full: bool,
    /// A peer to join through, e.g. /ip4/203.0.113.5/tcp/4001 (a trailing /p2p/<id> is
    /// optional). Repeat for several.
    #[arg(long, value_name = "MULTIADDR")]
    bootstrap: Vec<Multiaddr>,
    /// Where to listen, e.g. /ip4/0.0.0.0/tcp/4001 or /ip4/0.0.0.0/udp/4001/quic-v1. Repeat
    /// for several [default: TCP and QUIC on all interfaces, any free port].
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// Bandwidth cap on the circuits this node relays for any one peer, in MiB/s (both
    /// directions together; 0: no cap). A peer over its share waits; others do not.
    /// [default: p2p.relayRate in the config file, 16]
    #[arg(long, value_name = "MIB_PER_S")]
    relay_rate: Option<f64>,
    /// Tell peers where this node is, so their `beam network peers --geo` and dashboard map
    /// can place it: LAT,LON in decimal degrees (e.g. 50.11,8.68) or a city (e.g. Frankfurt).
    /// Your word, not measured; not declared by default. [default: p2p.location in the config
    /// file]
    #[arg(long, value_name = "LAT,LON|CITY", value_parser = parse_location, allow_hyphen_values = true)]
    location: Option<(f64, f64)>,
}

fn parse_location(text: &str) -> Result<(f64, f64), String> {
    beam_node::geo::parse_location(text).map_err(|e| e.to_string())
}

impl P2pArgs {
    /// The flags' participation, else the config file's, else `default`.
    fn participation(&self, settings: &config::Settings, default: Participation) -> Participation {
        if self.p2p_full {
            Participation::Full
        } else if self.p2p_routing {
            Participation::Routing
        } else {
            settings.participation.unwrap_or(default)
        }
    }

    /// `--bootstrap` when given, else the config file's list.
    fn bootstrap(&self, settings: &config::Settings) -> Vec<Multiaddr> {
        if self.bootstrap.is_empty() {
            settings.bootstrap.clone()
        } else {
            self.bootstrap.clone()
        }
    }

    /// `--relay-rate` (else the config file's) in bytes per second (`None`: no cap).
    fn relay_rate(&self, settings: &config::Settings) -> Result<Option<u64>> {
        let rate = self.relay_rate.unwrap_or(settings.relay_rate);
        if !rate.is_finite() || rate < 0.0 {
            bail!("--relay-rate must be a number of MiB/s, 0 or more (0: no cap); got {rate}");
        }
        Ok(Some((rate * 1024.0 * 1024.0) as u64).filter(|r| *r > 0))
    }

    /// `--location`, else the config file's.
    fn location(&self, settings: &config::Settings) -> Option<(f64, f64)> {
        self.location.or(settings.location)
    }

    fn listen_or(&self, port: u16) -> Vec<Multiaddr> {
        if !self.listen.is_empty() {
            return self.listen.clone();
        }
        [
            format!("/ip4/0.0.0.0/tcp/{port}"),
            format!("/ip4/0.0.0.0/udp/{port}/quic-v1"),
        ]
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect()
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a peer that exposes nothing: a bootstrap node and relay for others.
    Node {
        #[command(flatten)]
        p2p: P2pArgs,
    },
    /// Reach a service by name, beam:// address or .onion address and forward a local port to
    /// it.
    Connect(ConnectArgs),
    /// Show the running beam (the one using this state directory): addresses, peers, tunnels.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// List the tunnel connections open now and the last 64 ended: how each got there
        /// (direct, hole-punched, relayed via which peer, multi-hop via which peers, over Tor),
        /// why that route, its setup time and first hop's RTT, bytes each way and duration.
        #[arg(long)]
        connections: bool,
    },
    /// The network as the running beam sees it.
    Network {
        #[command(subcommand)]
        command: NetworkCommand,
    },
    /// The Tor side of the running beam.
    Tor {
        #[command(subcommand)]
        command: TorCommand,
    },
    /// Start a small network on this machine (bootstrap peer, two relays, a service, a client)
    /// and fetch a page through it, directly and through relays. Needs no other machine.
    Demo {
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show this node's identity: its beam:// address. Creates the identity key on first use;
    /// the address stays the same for as long as the state directory is kept.
    Id {
        /// Print JSON: {"peer_id": "beam://…", "libp2p_id": "12D3…" (for /p2p/ in multiaddrs),
        /// "key_file": "…", "created": true|false}.
        #[arg(long)]
        json: bool,
    },
    /// Check that a beam:// address is well formed and print it in canonical form.
    Parse {
        /// The address, e.g. beam://aaaa… (52 characters after beam://).
        address: String,
    },
    /// Read and change the configuration file (p2p.maxPeers, routing.strategy, tor.enabled,
    /// …): `beam config list` shows every key, its value and where it came from.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print a shell completion script, e.g. `beam completions bash >
    /// ~/.local/share/bash-completion/completions/beam`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print beam's manual page (roff), e.g. `beam man > beam.1 && man ./beam.1`.
    Man,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Every key with its value, where it came from (file or default) and what it takes.
    List {
        /// Print JSON: [{"key", "value", "source", "takes"}].
        #[arg(long)]
        json: bool,
    },
    /// One key's value (TOML syntax).
    Get {
        /// The key, e.g. p2p.maxPeers.
        key: String,
    },
    /// Set a key (checked first: a bad value or an unknown key changes nothing). Creates the
    /// file from the commented example if there is none.
    Set {
        /// The key, e.g. p2p.maxPeers.
        key: String,
        /// The value, e.g. 64, geographic, true, or multiaddrs separated by commas.
        value: String,
    },
    /// Print where the configuration file is (it need not exist).
    Path,
    /// Print the commented example file: every key at its default.
    Example,
}

#[derive(Subcommand)]
enum NetworkCommand {
    /// The peers the running beam is connected to, nearest first: beam address, the
    /// connection's remote address and direction, whether it is relayed, the libp2p ping RTT,
    /// and whether the peer is in this node's DHT routing table.
    Peers {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Also where each peer says it is (its --location) and that place's region, e.g.
        /// `Europe (near Frankfurt)`. Peers that declared nothing are listed as such.
        #[arg(long)]
        geo: bool,
    },
    /// Is this node well connected? Peers, bootstrap peers, the DHT's recent success, the
    /// routing table, reachability. Exits 1 when a check fails (for scripts and monitors).
    Health {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A live terminal view of the running beam: a world map of its peers (at the places they
    /// declared with --location) and the routes in use, the peers with their RTTs, latency and
    /// throughput graphs, and the connection inspector. Redrawn each second; q quits. Fits an
    /// 80×24 terminal.
    #[command(visible_aliases = ["map", "watch", "monitor"])]
    Dashboard,
    /// The node's history: peers, DHT health, RTT, bandwidth and bytes, sampled by the running
    /// node every history.sampleSeconds (60) into history.sqlite in its state directory
    /// (bounded by history.maxSamples). Reads the file: works with the node stopped too.
    Stats {
        /// How far back, e.g. 24h, 30m, 7d.
        #[arg(long, default_value = "24h")]
        period: String,
        /// Print JSON: {"period_s", "samples": [{"t", "peers", …}]}.
        #[arg(long)]
        json: bool,
    },
    /// The history as plots: peers, peer RTT p50 and tunnel throughput over the period, drawn
    /// from history.sqlite into an SVG file.
    Analytics {
        /// How far back, e.g. 24h, 30m, 7d.
        #[arg(long, default_value = "24h")]
        period: String,
        /// The SVG file to write.
        #[arg(long, short, default_value = "beam-history.svg", value_name = "FILE")]
        output: PathBuf,
    },
    /// Check everything: the config file, each bootstrap peer (dialled now), and the running
    /// node's peers, DHT and reachability. Exits 1 when a check fails.
    /// `beam network test connectivity` checks reachability alone, in detail.
    Test {
        /// Print JSON: {"ok", "checks": [{"check", "ok", "detail"}]}.
        #[arg(long)]
        json: bool,
        /// Bootstrap peers to check instead of the config file's p2p.bootstrap.
        #[arg(long, value_name = "MULTIADDR")]
        bootstrap: Vec<Multiaddr>,
        #[command(subcommand)]
        command: Option<TestCommand>,
    },
    /// Check the config file and its bootstrap peers (each dialled now: does it answer, as
    /// the identity its /p2p/ names?). Needs no running node. Exits 1 when a check fails.
    TestConfig {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Bootstrap peers to check instead of the config file's p2p.bootstrap.
        #[arg(long, value_name = "MULTIADDR")]
        bootstrap: Vec<Multiaddr>,
    },
    /// Drop every connection and join again from the bootstrap peers, keeping the identity,
    /// the routing table and the published service (published again once joined). Open
    /// tunnels are cut, so it refuses while there are any unless --force.
    Restart {
        #[command(flatten)]
        opts: ReconnectArgs,
    },
    /// Like restart, but first forget the network: the routing table, the relays' trust and
    /// the peers' addresses. The identity (beam:// address), name and service stay.
    Reset {
        #[command(flatten)]
        opts: ReconnectArgs,
    },
    /// Write a report for asking for help: versions, system, the configuration, the state
    /// directory's file names (no contents: no keys, no token), the running node's status and
    /// its recent warnings and errors. Peers' addresses are scrubbed; the node's own stay.
    Diagnose {
        /// Where to write it (`-`: print it) [default: beam-diagnose-TIME.txt here].
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Write a problem report: your description and everything `diagnose` collects, into a
    /// local file. beam has no central server, so nothing is sent anywhere: attach the file
    /// where you ask for help.
    ReportIssue {
        /// What went wrong, in your words.
        text: String,
        /// Where to write it (`-`: print it) [default: beam-issue-TIME.txt here].
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// What the running node's measurements add up to: peers and the network's size, DHT
    /// health, where peers say they are (regions, spread), a latency map (RTT per region, and
    /// against the speed of light in fibre from here), and routing efficiency: each outgoing
    /// tunnel's route RTT ÷ the direct RTT network coordinates predict, per route kind.
    Analyze {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-rank the routing table by the RTTs measured (libp2p ping): in each bucket, a
    /// replacement more than 10 % nearer than an entry takes its place (lookups then go
    /// through nearer peers); then refresh every bucket. Prints what changed.
    Optimize {
        /// Print JSON: {"swaps": [{"out", "out_ms", "into", "into_ms"}], "ranked", "entries", …}.
        #[arg(long)]
        json: bool,
    },
    /// Like optimize, by the RTTs network coordinates predict (a place in latency space for
    /// every peer that sent one, connected or not); behind a NAT also re-picks the relays that
    /// carry this service's tunnels, nearest first, and republishes when they change.
    OptimizeGeo {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// How long the network takes to find a service and reach it, from the running node: each
    /// round forgets the node's copy of the record, looks it up in the DHT (timed), and opens a
    /// tunnel on the route the strategy chooses (timed: setup, and one round trip of the route),
    /// then closes it. Exit 1 when a round fails.
    Probe {
        /// The service: beam://ADDRESS or a name.
        target: String,
        /// Rounds, one after another.
        #[arg(long, default_value_t = 5, value_name = "N")]
        count: u32,
        /// The route's strategy.
        #[arg(long, value_enum, default_value = "direct")]
        strategy: StrategyArg,
        /// Print JSON: {"rounds": [{"lookup_ms", "found", "route", "setup_ms", "route_rtt_ms",
        /// "error"}], "lookup_p50_ms", "setup_p50_ms", "route_rtt_p50_ms", "found", "opened"}.
        #[arg(long)]
        json: bool,
    },
    /// What this node gives the network: circuits relayed for others, the distinct peers they
    /// came from, bytes relayed, tunnels served, uptime.
    MyStats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TestCommand {
    /// Reachability in detail: AutoNAT's verdict (do peers dial this node back?), the NAT's
    /// mapping (from the ports peers see this node at: cone or symmetric), the addresses peers
    /// see, hole punches tried and how they went, relay reservations. Exits 1 when nobody can
    /// reach the node (private, and no relay holds a reservation).
    Connectivity {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct ReconnectArgs {
    /// Go ahead even though tunnel connections are open (they are cut).
    #[arg(long)]
    force: bool,
    /// How long to wait for the rejoin before saying it has not happened, in seconds.
    #[arg(long, default_value_t = 15, value_name = "SECONDS")]
    wait: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum TorCommand {
    /// Bootstrap state, circuits in use, the onion service's state, and whether it is
    /// reachable, measured by reaching it through the Tor network now (a self-test).
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restricted discovery (Tor client authorization): with at least one client authorized,
    /// only those clients can find the onion service at all; anyone else who knows the .onion
    /// gets nothing. Takes effect when `beam <PORT> --tor` (re)starts.
    Client {
        #[command(subcommand)]
        command: TorClientCommand,
    },
}

#[derive(Subcommand)]
enum TorClientCommand {
    /// Authorize a client. Without --key, generates its key pair and prints the line its tor
    /// needs (C tor: a file NAME.auth_private in its ClientOnionAuthDir; Tor Browser asks for
    /// the key when it visits).
    Add {
        /// A name for the client (lower-case letters, digits, '-', '_').
        name: String,
        /// The client's own public key, `descriptor:x25519:…` (when it made its pair itself).
        #[arg(long)]
        key: Option<String>,
    },
    /// The authorized clients.
    List {
        /// Print JSON: [{"name", "key"}].
        #[arg(long)]
        json: bool,
    },
    /// Withdraw a client's authorization (on the next restart; a client that already knows
    /// the service's introduction points may keep reaching it until they change).
    Remove {
        /// The client's name.
        name: String,
    },
}

#[derive(Args, Debug)]
struct ConnectArgs {
    /// The service: a name (demo), an address (beam://…), or any onion service (….onion,
    /// reached over Tor; no --bootstrap needed).
    target: String,
    /// The local port to listen on (127.0.0.1) [default: any free port, printed].
    #[arg(long)]
    port: Option<u16>,
    /// How to route: straight to the service, through relays, or through the relays with the
    /// lowest predicted latency [default: routing.strategy in the config file, direct].
    #[arg(long, value_enum)]
    strategy: Option<StrategyArg>,
    /// How long to keep looking for the service before giving up, in seconds (a service that
    /// just started may still be publishing).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    wait: u64,
    /// Never fall back to Tor, even when the service publishes a .onion address.
    #[arg(long)]
    no_tor: bool,
    /// For a .onion target: the onion service's port.
    #[arg(long, default_value_t = 80, value_name = "PORT")]
    onion_port: u16,
    /// Give up on Tor when it has not bootstrapped after this many seconds.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    tor_timeout: u64,
    /// The access token of a service started with --auth (its owner has it; the service
    /// printed it). Read from $BEAM_TOKEN when not given, which keeps it out of `ps`.
    #[arg(long, env = "BEAM_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(flatten)]
    p2p: P2pArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum StrategyArg {
    Direct,
    MultiHop,
    Geographic,
}

impl From<StrategyArg> for Strategy {
    fn from(s: StrategyArg) -> Self {
        match s {
            StrategyArg::Direct => Strategy::Direct,
            StrategyArg::MultiHop => Strategy::MultiHop,
            StrategyArg::Geographic => Strategy::Geographic,
        }
    }
}

fn main() {
    let cli = Cli::parse();
    // The config commands must work on a file the others refuse (to fix it).
    let settings = match &cli.command {
        Some(
            Command::Config { .. }
            | Command::Completions { .. }
            | Command::Man
            | Command::Network {
                command:
                    NetworkCommand::Test { .. }
                    | NetworkCommand::TestConfig { .. }
                    | NetworkCommand::Diagnose { .. }
                    | NetworkCommand::ReportIssue { .. },
            },
        ) => Ok(config::Settings::default()),
        _ => config_path(&cli).and_then(|p| config::load(&p)),
    };
    let level = settings
        .as_ref()
        .map_or("warn".to_owned(), |s| s.log_level.clone());
    logs::init(&level);
    // Every tunnel holds two descriptors and every peer connection one; the usual soft limit
    // (1,024) is far below what the limits.* bounds allow, so take what the hard limit gives.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(open_files = n, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    if let Err(e) = settings.and_then(|s| run(cli, &s)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Writes `bytes` to stdout; a reader that went away (`beam man | head`) is not an error.
fn emit(bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// `--config`, else `$BEAM_CONFIG` (clap reads both), else the platform's default.
fn config_path(cli: &Cli) -> Result<PathBuf> {
    match &cli.config {
        Some(p) => Ok(p.clone()),
        None => config::default_path(),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(cli: Cli, settings: &config::Settings) -> Result<()> {
    let mdns = !cli.no_mdns && settings.mdns;
    let config_file = config_path(&cli);
    let policy = p2p::addr::AddrPolicy {
        allow_private: cli.allow_private_addrs,
    };
    if cli.command.is_some() && cli.serve.port.is_some() {
        bail!("give either a port to expose (`beam 8000`) or a command (`beam node`), not both");
    }
    match cli.command {
        None => {
            let Some(port) = cli.serve.port else {
                bail!("give the local port to expose, e.g. `beam 8000` (see `beam --help`)");
            };
            let dir = state::dir(cli.state_dir)?;
            let (keypair, _) = state::load_or_create_identity(&dir)?;
            let p = &cli.serve.p2p;
            // A service with no bootstrap peer starts the network: it must answer lookups.
            let bootstrap = p.bootstrap(settings);
            let default = if bootstrap.is_empty() {
                Participation::Routing
            } else {
                Participation::Light
            };
            let config = p2p::Config {
                keypair,
                participation: p.participation(settings, default),
                listen: p.listen_or(0),
                bootstrap,
                policy,
                service: Some(p2p::ServiceSpec {
                    port,
                    name: cli.serve.name.clone(),
                    seq_file: Some(dir.join("record-seq")),
                }),
                relay_rate: p.relay_rate(settings)?,
                mdns,
                caching: settings.caching,
                max_peers: settings.max_peers,
                limits: settings.limits(),
                location: p.location(settings),
            };
            if let Some(name) = &cli.serve.name
                && !beam_node::record::valid_name(name)
            {
                bail!(
                    "`{name}` is not a valid name: use 1–63 of a-z, 0-9 and '-', not starting or \
                     ending with '-'"
                );
            }
            let tor = cli.serve.tor || settings.tor;
            let auth = match cli.serve.auth.as_deref() {
                None => None,
                Some("") => {
                    let (token, _) = p2p::auth::load_or_create(&dir)?;
                    Some(serve::Auth {
                        token,
                        kept_in: Some(dir.join(p2p::auth::FILE)),
                    })
                }
                Some(t) => Some(serve::Auth {
                    token: p2p::auth::Token::parse(t)?,
                    kept_in: None,
                }),
            };
            #[cfg(feature = "tor")]
            if auth.is_some() && tor && tor::clients::list(&tor::dir(&dir))?.is_empty() {
                bail!(
                    "--auth guards the P2P side; over Tor anyone with the .onion address would \
                     reach port {port} without a token. Restrict the onion service to known \
                     clients first (`beam tor client add NAME`), or leave out --auth or --tor"
                );
            }
            let opts = serve::Options {
                state_dir: dir,
                tor: tor.then(|| std::time::Duration::from_secs(cli.serve.tor_timeout)),
                auth,
                history: settings.history(),
            };
            runtime()?.block_on(serve::run(config, opts))
        }
        Some(Command::Node { p2p: p }) => {
            let dir = state::dir(cli.state_dir)?;
            let (keypair, _) = state::load_or_create_identity(&dir)?;
            let config = p2p::Config {
                keypair,
                participation: p.participation(settings, Participation::Routing),
                listen: p.listen_or(4001),
                bootstrap: p.bootstrap(settings),
                policy,
                service: None,
                relay_rate: p.relay_rate(settings)?,
                mdns,
                caching: settings.caching,
                max_peers: settings.max_peers,
                limits: settings.limits(),
                location: p.location(settings),
            };
            let opts = serve::Options {
                state_dir: dir,
                tor: None,
                auth: None,
                history: settings.history(),
            };
            runtime()?.block_on(serve::run(config, opts))
        }
        Some(Command::Connect(args)) if args.target.ends_with(".onion") => {
            let dir = state::dir(cli.state_dir)?;
            runtime()?.block_on(connect::run_onion(
                &dir,
                &args.target,
                args.onion_port,
                args.port,
                std::time::Duration::from_secs(args.tor_timeout),
            ))
        }
        Some(Command::Connect(args)) => {
            let target: beam_node::app::ServiceRef = args.target.parse()?;
            let token = args
                .token
                .as_deref()
                .map(p2p::auth::Token::parse)
                .transpose()?;
            let bootstrap = args.p2p.bootstrap(settings);
            if bootstrap.is_empty() && !mdns {
                bail!(
                    "beam connect needs a peer to join through: add --bootstrap MULTIADDR (an \
                     address `beam <PORT>` or `beam node` printed; there is no central server), \
                     or drop --no-mdns to find peers on the local network"
                );
            }
            let dir = state::dir(cli.state_dir)?;
            let (keypair, _) = state::load_or_create_identity(&dir)?;
            let config = p2p::Config {
                keypair,
                participation: args.p2p.participation(settings, Participation::Light),
                listen: args.p2p.listen_or(0),
                bootstrap,
                policy,
                service: None,
                relay_rate: args.p2p.relay_rate(settings)?,
                mdns,
                caching: settings.caching,
                max_peers: settings.max_peers,
                limits: settings.limits(),
                location: args.p2p.location(settings),
            };
            runtime()?.block_on(connect::run(
                config,
                connect::Options {
                    target,
                    port: args.port,
                    strategy: args.strategy.map_or(settings.strategy, Into::into),
                    wait: std::time::Duration::from_secs(args.wait),
                    token,
                    state_dir: dir.clone(),
                    tor: (!args.no_tor).then(|| connect::TorFallback {
                        dir: dir.clone(),
                        timeout: std::time::Duration::from_secs(args.tor_timeout),
                    }),
                },
            ))
        }
        Some(Command::Demo { json }) => runtime()?.block_on(demo::run(json)),
        Some(Command::Status { json, connections }) => {
            let dir = state::dir(cli.state_dir)?;
            if connections {
                runtime()?.block_on(status::connections(&dir, json))
            } else {
                runtime()?.block_on(status::node(&dir, json))
            }
        }
        Some(Command::Network {
            command: NetworkCommand::Stats { period, json },
        }) => status::stats(&state::dir(cli.state_dir)?, &period, json),
        Some(Command::Network {
            command: NetworkCommand::Analytics { period, output },
        }) => status::analytics(&state::dir(cli.state_dir)?, &period, &output),
        Some(Command::Network {
            command: NetworkCommand::Dashboard,
        }) => dashboard::run(&state::dir(cli.state_dir)?),
        Some(Command::Network {
            command: NetworkCommand::Peers { json, geo },
        }) => {
            let dir = state::dir(cli.state_dir)?;
            runtime()?.block_on(status::peers(&dir, json, geo))
        }
        Some(Command::Network {
            command: NetworkCommand::Health { json },
        }) => {
            let dir = state::dir(cli.state_dir)?;
            if !runtime()?.block_on(status::health(&dir, json))? {
                std::process::exit(1);
            }
            Ok(())
        }
        Some(Command::Network {
            command:
                NetworkCommand::Test {
                    json,
                    bootstrap,
                    command,
                },
        }) => {
            let dir = state::dir(cli.state_dir)?;
            let ok = match command {
                Some(TestCommand::Connectivity { json }) => {
                    runtime()?.block_on(network::connectivity(&dir, json))?
                }
                None => {
                    let path = config_file?;
                    let checks = runtime()?.block_on(network::test_all(
                        &dir,
                        &path,
                        &bootstrap,
                        policy.allow_private,
                    ));
                    network::print_checks(&checks, json)
                }
            };
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Some(Command::Network {
            command: NetworkCommand::TestConfig { json, bootstrap },
        }) => {
            let path = config_file?;
            let checks = runtime()?.block_on(network::test_config(
                &path,
                &bootstrap,
                policy.allow_private,
            ));
            if !network::print_checks(&checks, json) {
                std::process::exit(1);
            }
            Ok(())
        }
        Some(Command::Network {
            command: command @ (NetworkCommand::Restart { .. } | NetworkCommand::Reset { .. }),
        }) => {
            let dir = state::dir(cli.state_dir)?;
            let (forget, opts) = match command {
                NetworkCommand::Reset { opts } => (true, opts),
                NetworkCommand::Restart { opts } => (false, opts),
                _ => unreachable!(),
            };
            runtime()?.block_on(network::reconnect(
                &dir,
                forget,
                opts.force,
                std::time::Duration::from_secs(opts.wait),
                opts.json,
            ))
        }
        Some(Command::Network {
            command: NetworkCommand::Diagnose { output },
        }) => {
            let dir = state::dir(cli.state_dir)?;
            let text = runtime()?.block_on(network::report(&dir, &config_file?, None));
            if let Some(p) = network::write_report(&text, output.as_deref(), "beam-diagnose")? {
                println!(
                    "wrote {} ({} lines): versions, configuration, status and recent warnings; \
                     no keys, peers' addresses scrubbed",
                    p.display(),
                    text.lines().count()
                );
            }
            Ok(())
        }
        Some(Command::Network {
            command: NetworkCommand::ReportIssue { text, output },
        }) => {
            if text.trim().is_empty() {
                bail!(
                    "say what went wrong: `beam network report-issue \"the tunnel drops after a minute\"`"
                );
            }
            let dir = state::dir(cli.state_dir)?;
            let report = runtime()?.block_on(network::report(&dir, &config_file?, Some(&text)));
            if let Some(p) = network::write_report(&report, output.as_deref(), "beam-issue")? {
                println!(
                    "wrote {}: attach it where you ask for help (beam has no central server; \
                     nothing was sent)",
                    p.display()
                );
            }
            Ok(())
        }
        Some(Command::Network {
            command: NetworkCommand::Optimize { json },
        }) => {
            let dir = state::dir(cli.state_dir)?;
            runtime()?.block_on(network::optimize(&dir, false, json))
        }
        Some(Command::Network {
            command: NetworkCommand::OptimizeGeo { json },
        }) => {
            let dir = state::dir(cli.state_dir)?;
            runtime()?.block_on(network::optimize(&dir, true, json))
        }
        Some(Command::Network {
            command: NetworkCommand::Analyze { json },
        }) => {
            let dir = state::dir(cli.state_dir)?;
            runtime()?.block_on(network::analyze(&dir, json))
        }
        Some(Command::Network {
            command:
                NetworkCommand::Probe {
                    target,
                    count,
                    strategy,
                    json,
                },
        }) => {
            let dir = state::dir(cli.state_dir)?;
            let strategy = match strategy {
                StrategyArg::Direct => "direct",
                StrategyArg::MultiHop => "multi-hop",
                StrategyArg::Geographic => "geographic",
            };
            runtime()?.block_on(network::probe(&dir, &target, count, strategy, json))
        }
        Some(Command::Network {
            command: NetworkCommand::MyStats { json },
        }) => {
            let dir = state::dir(cli.state_dir)?;
            runtime()?.block_on(status::my_stats(&dir, json))
        }
        Some(Command::Tor {
            command: TorCommand::Status { json },
        }) => {
            let dir = state::dir(cli.state_dir)?;
            runtime()?.block_on(status::tor(&dir, json))
        }
        Some(Command::Tor {
            command: TorCommand::Client { command },
        }) => tor_client(&state::dir(cli.state_dir)?, command),
        Some(Command::Id { json }) => {
            let dir = state::dir(cli.state_dir)?;
            let (kp, created) = state::load_or_create_identity(&dir)?;
            let key_file = dir.join("identity.key");
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "peer_id": kp.peer_id().to_string(),
                        "libp2p_id": p2p::addr::to_libp2p(&kp.peer_id()).map(|p| p.to_string()),
                        "key_file": key_file.display().to_string(),
                        "created": created,
                    })
                );
            } else {
                println!("{}", kp.peer_id());
                if created {
                    eprintln!("created a new identity in {}", key_file.display());
                }
            }
            Ok(())
        }
        Some(Command::Parse { address }) => match address.parse::<beam_node::PeerId>() {
            Ok(id) => {
                println!("{id}");
                Ok(())
            }
            Err(e) => bail!("{e}"),
        },
        Some(Command::Config { command }) => {
            let path = config_file?;
            match command {
                ConfigCommand::List { json } => {
                    let rows = config::list(&path)?;
                    let mut out = String::new();
                    if json {
                        out = serde_json::to_string_pretty(&rows)? + "\n";
                    } else {
                        out += &format!("# {}\n", path.display());
                        let w = rows.iter().map(|r| r.key.len()).max().unwrap_or(0);
                        for r in rows {
                            let from = match r.source {
                                config::Source::File => "",
                                config::Source::Default => "   (default)",
                            };
                            out += &format!("{:w$} = {}{from}\n", r.key, r.value);
                        }
                    }
                    emit(out.as_bytes())?;
                }
                ConfigCommand::Get { key } => println!("{}", config::get(&path, &key)?.value),
                ConfigCommand::Set { key, value } => {
                    config::set(&path, &key, &value)?;
                    let row = config::get(&path, &key)?;
                    eprintln!("{} = {} (in {})", row.key, row.value, path.display());
                }
                ConfigCommand::Path => println!("{}", path.display()),
                ConfigCommand::Example => emit(config::EXAMPLE.as_bytes())?,
            }
            Ok(())
        }
        Some(Command::Completions { shell }) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut out = vec![];
            clap_complete::generate(shell, &mut cmd, "beam", &mut out);
            emit(&out)
        }
        Some(Command::Man) => {
            let cmd = <Cli as clap::CommandFactory>::command();
            let mut out = vec![];
            clap_mangen::Man::new(cmd).render(&mut out)?;
            emit(&out)
        }
    }
}

/// `beam tor client …`.
#[cfg(feature = "tor")]
fn tor_client(state_dir: &std::path::Path, command: TorClientCommand) -> Result<()> {
    let dir = tor::dir(state_dir);
    match command {
        TorClientCommand::Add { name, key } => {
            let added = tor::clients::add(&dir, &name, key.as_deref())?;
            println!("authorized {name}: {}", added.client.key);
            if let Some(private) = added.private {
                let onion = added.onion.as_deref().unwrap_or("ONION.onion");
                let host = onion.trim_end_matches(".onion");
                println!("private key for {name} (give it to them only): {private}");
                println!("C tor: put this line in {name}.auth_private in its ClientOnionAuthDir:");
                println!("{host}:{private}");
                if added.onion.is_none() {
                    println!(
                        "(ONION is the service's address: `beam <PORT> --tor` prints it once it runs)"
                    );
                }
            }
            eprintln!("takes effect when `beam <PORT> --tor` (re)starts");
        }
        TorClientCommand::List { json } => {
            let clients = tor::clients::list(&dir)?;
            if json {
                println!("{}", serde_json::to_string(&clients)?);
            } else if clients.is_empty() {
                println!(
                    "no authorized clients: anyone with the .onion address can find the service"
                );
            } else {
                for c in clients {
                    println!("{}  {}", c.name, c.key);
                }
            }
        }
        TorClientCommand::Remove { name } => {
            tor::clients::remove(&dir, &name)?;
            eprintln!("removed {name} (takes effect when `beam <PORT> --tor` restarts)");
        }
    }
    Ok(())
}

#[cfg(not(feature = "tor"))]
fn tor_client(_: &std::path::Path, _: TorClientCommand) -> Result<()> {
    bail!("this beam was built without Tor (rebuild with the default `tor` feature)")
}
