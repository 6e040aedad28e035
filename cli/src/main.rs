//! `beam`: expose a local port to the world — as a Tor onion service and on beam's own
//! peer-to-peer network.
//!
//! This binary is the thin layer over the protocol core (`beam-node`). The network drivers
//! (libp2p, Arti) are not built yet; today it manages the node's identity, which the
//! `beam://` address is derived from.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use beam_node::Keypair;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "beam",
    version,
    about = "Expose a local port to the world: a Tor onion service and a beam:// address on a peer-to-peer network, with no central server.",
    long_about = None,
)]
struct Cli {
    /// Where beam keeps its identity and state [default: $BEAM_HOME, else ~/.beam].
    #[arg(long, global = true, env = "BEAM_HOME")]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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

fn default_state_dir() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context(
        "cannot find the state directory: $HOME is not set; pass --state-dir DIR or set BEAM_HOME",
    )?;
    Ok(PathBuf::from(home).join(".beam"))
}

/// Loads the identity key from `dir/identity.key`, creating it (mode 0600) if absent.
fn load_or_create_identity(dir: &Path) -> Result<(Keypair, bool)> {
    let path = dir.join("identity.key");
    match fs::read(&path) {
        Ok(bytes) => {
            let secret: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                anyhow::anyhow!(
                    "{} is {} bytes, an identity key is 32: the file is damaged. Move it away to \
                     create a new identity (this changes your beam:// address)",
                    path.display(),
                    bytes.len()
                )
            })?;
            Ok((Keypair::from_secret(secret), false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
            let mut secret = [0u8; 32];
            getrandom(&mut secret)?;
            let kp = Keypair::from_secret(secret);
            let mut opts = fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts
                .open(&path)
                .with_context(|| format!("cannot write the identity key {}", path.display()))?;
            f.write_all(&secret)?;
            Ok((kp, true))
        }
        Err(e) => {
            Err(e).with_context(|| format!("cannot read the identity key {}", path.display()))
        }
    }
}

/// 32 bytes from the operating system's RNG.
fn getrandom(buf: &mut [u8]) -> Result<()> {
    let mut f = fs::File::open("/dev/urandom").context("cannot open /dev/urandom for a new key")?;
    std::io::Read::read_exact(&mut f, buf).context("cannot read /dev/urandom")?;
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Id { json } => {
            let dir = match cli.state_dir {
                Some(d) => d,
                None => default_state_dir()?,
            };
            let (kp, created) = load_or_create_identity(&dir)?;
            let key_file = dir.join("identity.key");
            if json {
                println!(
                    "{{\"peer_id\":\"{}\",\"key_file\":{:?},\"created\":{}}}",
                    kp.peer_id(),
                    key_file.display().to_string(),
                    created
                );
            } else {
                println!("{}", kp.peer_id());
                if created {
                    eprintln!("created a new identity in {}", key_file.display());
                }
            }
        }
        Command::Parse { address } => match address.parse::<beam_node::PeerId>() {
            Ok(id) => println!("{id}"),
            Err(e) => bail!("{e}"),
        },
    }
    Ok(())
}
