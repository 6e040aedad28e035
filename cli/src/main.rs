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
//!
//! The protocol decisions (records, lookups, route choice, relay admission, trust) are the
//! core's; this binary carries bytes and talks to the user.

mod connect;
mod control;
mod demo;
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
    #[arg(long)]
    tor: bool,
    /// Give up on Tor (and keep the P2P side running) when it has not bootstrapped after this
    /// many seconds.
    #[arg(long, default_value_t = 60, value_name = "SECONDS", requires = "tor")]
    tor_timeout: u64,
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
    #[arg(long, default_value_t = 16.0, value_name = "MIB_PER_S")]
    relay_rate: f64,
}

impl P2pArgs {
    fn participation(&self, default: Participation) -> Participation {
        if self.p2p_full {
            Participation::Full
        } else if self.p2p_routing {
            Participation::Routing
        } else {
            default
        }
    }

    /// `--relay-rate` in bytes per second (`None`: no cap).
    fn relay_rate(&self) -> Result<Option<u64>> {
        if !self.relay_rate.is_finite() || self.relay_rate < 0.0 {
            bail!(
                "--relay-rate must be a number of MiB/s, 0 or more (0: no cap); got {}",
                self.relay_rate
            );
        }
        Ok(Some((self.relay_rate * 1024.0 * 1024.0) as u64).filter(|r| *r > 0))
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
        /// Print JSON: {"peer_id": "beam://…", "key_file": "…", "created": true|false}.
        #[arg(long)]
        json: bool,
    },
    /// Check that a beam:// address is well formed and print it in canonical form.
    Parse {
        /// The address, e.g. beam://aaaa… (52 characters after beam://).
        address: String,
    },
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
    /// lowest predicted latency.
    #[arg(long, value_enum, default_value_t = StrategyArg::Direct)]
    strategy: StrategyArg,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(cli: Cli) -> Result<()> {
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
            let default = if p.bootstrap.is_empty() {
                Participation::Routing
            } else {
                Participation::Light
            };
            let config = p2p::Config {
                keypair,
                participation: p.participation(default),
                listen: p.listen_or(0),
                bootstrap: p.bootstrap.clone(),
                policy,
                service: Some(p2p::ServiceSpec {
                    port,
                    name: cli.serve.name.clone(),
                    seq_file: Some(dir.join("record-seq")),
                }),
                relay_rate: p.relay_rate()?,
                mdns: !cli.no_mdns,
            };
            if let Some(name) = &cli.serve.name
                && !beam_node::record::valid_name(name)
            {
                bail!(
                    "`{name}` is not a valid name: use 1–63 of a-z, 0-9 and '-', not starting or \
                     ending with '-'"
                );
            }
            let opts = serve::Options {
                state_dir: dir,
                tor: cli
                    .serve
                    .tor
                    .then(|| std::time::Duration::from_secs(cli.serve.tor_timeout)),
            };
            runtime()?.block_on(serve::run(config, opts))
        }
        Some(Command::Node { p2p: p }) => {
            let dir = state::dir(cli.state_dir)?;
            let (keypair, _) = state::load_or_create_identity(&dir)?;
            let config = p2p::Config {
                keypair,
                participation: p.participation(Participation::Routing),
                listen: p.listen_or(4001),
                bootstrap: p.bootstrap.clone(),
                policy,
                service: None,
                relay_rate: p.relay_rate()?,
                mdns: !cli.no_mdns,
            };
            let opts = serve::Options {
                state_dir: dir,
                tor: None,
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
            if args.p2p.bootstrap.is_empty() && cli.no_mdns {
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
                participation: args.p2p.participation(Participation::Light),
                listen: args.p2p.listen_or(0),
                bootstrap: args.p2p.bootstrap.clone(),
                policy,
                service: None,
                relay_rate: args.p2p.relay_rate()?,
                mdns: !cli.no_mdns,
            };
            runtime()?.block_on(connect::run(
                config,
                connect::Options {
                    target,
                    port: args.port,
                    strategy: args.strategy.into(),
                    wait: std::time::Duration::from_secs(args.wait),
                    tor: (!args.no_tor).then(|| connect::TorFallback {
                        dir: dir.clone(),
                        timeout: std::time::Duration::from_secs(args.tor_timeout),
                    }),
                },
            ))
        }
        Some(Command::Demo { json }) => runtime()?.block_on(demo::run(json)),
        Some(Command::Status { json }) => {
            let dir = state::dir(cli.state_dir)?;
            runtime()?.block_on(status::node(&dir, json))
        }
        Some(Command::Tor {
            command: TorCommand::Status { json },
        }) => {
            let dir = state::dir(cli.state_dir)?;
            runtime()?.block_on(status::tor(&dir, json))
        }
        Some(Command::Id { json }) => {
            let dir = state::dir(cli.state_dir)?;
            let (kp, created) = state::load_or_create_identity(&dir)?;
            let key_file = dir.join("identity.key");
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "peer_id": kp.peer_id().to_string(),
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
    }
}
