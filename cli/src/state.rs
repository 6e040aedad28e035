//! The state directory: where the identity key (and so the `beam://` address) persists.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use beam_node::Keypair;

/// The state directory: `--state-dir`, else `$BEAM_HOME` (clap reads both), else `~/.beam`.
pub fn dir(given: Option<PathBuf>) -> Result<PathBuf> {
    match given {
        Some(d) => Ok(d),
        None => default_state_dir(),
    }
}

fn default_state_dir() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context(
        "cannot find the state directory: $HOME is not set; pass --state-dir DIR or set BEAM_HOME",
    )?;
    Ok(PathBuf::from(home).join(".beam"))
}

/// Loads the identity key from `dir/identity.key`, creating it (mode 0600) if absent.
pub fn load_or_create_identity(dir: &Path) -> Result<(Keypair, bool)> {
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
            create_private(&path, &secret)
                .with_context(|| format!("cannot write the identity key {}", path.display()))?;
            Ok((kp, true))
        }
        Err(e) => {
            Err(e).with_context(|| format!("cannot read the identity key {}", path.display()))
        }
    }
}

/// Creates `path` (which must not exist) readable by this user only, holding `bytes`.
pub fn create_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)?.write_all(bytes)
}

/// Bytes from the operating system's RNG.
pub fn getrandom(buf: &mut [u8]) -> Result<()> {
    let mut f = fs::File::open("/dev/urandom").context("cannot open /dev/urandom for a new key")?;
    std::io::Read::read_exact(&mut f, buf).context("cannot read /dev/urandom")?;
    Ok(())
}
