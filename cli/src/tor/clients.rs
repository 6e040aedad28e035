//! Restricted discovery (Tor's client authorization): `beam tor client add|list|remove`.
//!
//! With at least one authorized client, the onion service's descriptor is encrypted to the
//! clients' keys: anyone else who knows the `.onion` cannot even find its introduction points.
//! Each client is a file `<state dir>/tor/authorized_clients/NAME.auth` ([`dir`]) holding
//! `descriptor:x25519:<base32 public key>`, the format of C tor's `authorized_clients`
//! directory, so keys move between the two as they are. The service reads them when it starts.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use tor_hscrypto::pk::HsClientDescEncKey;
use tor_hsservice::config::restricted_discovery::HsClientNickname;
use tor_llcrypto::pk::curve25519;

/// Where the authorized clients are kept, in the Tor directory [`super::dir`].
pub fn dir(tor_dir: &Path) -> PathBuf {
    tor_dir.join("authorized_clients")
}

/// The file where the onion service's address is noted when it launches (so `client add` can
/// print the client's whole key line).
pub fn address_file(tor_dir: &Path) -> PathBuf {
    tor_dir.join("onion-address")
}

/// An authorized client.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Client {
    /// Its nickname (the file name without `.auth`).
    pub name: String,
    /// `descriptor:x25519:<base32>`.
    pub key: String,
}

/// What `add` made.
pub struct Added {
    /// The client as authorized.
    pub client: Client,
    /// When beam generated the pair: the private key, `descriptor:x25519:<base32>`, for the
    /// client's side.
    pub private: Option<String>,
    /// The onion address, once the service has run.
    pub onion: Option<String>,
}

fn nickname(name: &str) -> Result<HsClientNickname> {
    HsClientNickname::from_str(name).map_err(|e| {
        anyhow::anyhow!(
            "`{name}` is not a usable client name ({e}): use lower-case letters, digits, '-' and \
             '_'"
        )
    })
}

fn parse_key(text: &str, origin: &str) -> Result<HsClientDescEncKey> {
    HsClientDescEncKey::from_str(text.trim()).map_err(|e| {
        anyhow::anyhow!(
            "{origin}: not a client key ({e}); one looks like descriptor:x25519: followed by 52 \
             base32 characters"
        )
    })
}

/// Every authorized client, by name. A file that is not a client key is an error that names it.
pub fn list(tor_dir: &Path) -> Result<Vec<Client>> {
    let d = dir(tor_dir);
    let entries = match std::fs::read_dir(&d) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", d.display())),
    };
    let mut out = vec![];
    for entry in entries {
        let path = entry?.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".auth"))
        else {
            continue;
        };
        nickname(name).with_context(|| format!("{}", path.display()))?;
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let key = parse_key(&text, &path.display().to_string())?;
        out.push(Client {
            name: name.to_string(),
            key: key.to_string(),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The clients as Arti takes them.
pub fn keys(tor_dir: &Path) -> Result<Vec<(HsClientNickname, HsClientDescEncKey)>> {
    list(tor_dir)?
        .into_iter()
        .map(|c| Ok((nickname(&c.name)?, parse_key(&c.key, &c.name)?)))
        .collect()
}

/// Authorizes `name`: with `key` (the client's public key, from its own tor), or with a pair
/// generated here (the private part is returned, for the client).
pub fn add(tor_dir: &Path, name: &str, key: Option<&str>) -> Result<Added> {
    nickname(name)?;
    let (public, private) = match key {
        Some(k) => (parse_key(k, "--key")?.to_string(), None),
        None => {
            let mut raw = [0u8; 32];
            crate::state::getrandom(&mut raw)?;
            let secret = curve25519::StaticSecret::from(raw);
            let public = curve25519::PublicKey::from(&secret);
            let b32 = |b: &[u8]| data_encoding::BASE32_NOPAD.encode(b);
            (
                format!("descriptor:x25519:{}", b32(public.as_bytes())),
                Some(format!("descriptor:x25519:{}", b32(&secret.to_bytes()))),
            )
        }
    };
    if list(tor_dir)?.iter().any(|c| c.key == public) {
        bail!("that key is already authorized (see `beam tor client list`)");
    }
    let d = dir(tor_dir);
    super::create_private_dir(&d)?;
    let path = d.join(format!("{name}.auth"));
    if path.exists() {
        bail!(
            "a client named `{name}` is already authorized; remove it first or choose another name"
        );
    }
    crate::state::create_private(&path, format!("{public}\n").as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    let onion = std::fs::read_to_string(address_file(tor_dir))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| s.ends_with(".onion"));
    Ok(Added {
        client: Client {
            name: name.to_string(),
            key: public,
        },
        private,
        onion,
    })
}

/// Withdraws `name`'s authorization.
pub fn remove(tor_dir: &Path, name: &str) -> Result<()> {
    nickname(name)?;
    let path = dir(tor_dir).join(format!("{name}.auth"));
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("no client named `{name}` is authorized (see `beam tor client list`)")
        }
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_added_listed_and_removed_and_bad_input_changes_nothing() {
        let state = std::env::temp_dir().join(format!("beam-tor-clients-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        assert!(list(&state).expect("empty").is_empty());
        let a = add(&state, "alice", None).expect("generated");
        let private = a
            .private
            .expect("a generated pair returns its private part");
        assert!(private.starts_with("descriptor:x25519:") && private.len() == 18 + 52);
        // The private key's public half is the one authorized.
        let raw = data_encoding::BASE32_NOPAD
            .decode(private.trim_start_matches("descriptor:x25519:").as_bytes())
            .expect("base32");
        let raw: [u8; 32] = raw.try_into().expect("32 bytes");
        let public = curve25519::PublicKey::from(&curve25519::StaticSecret::from(raw));
        assert_eq!(
            a.client.key,
            format!(
                "descriptor:x25519:{}",
                data_encoding::BASE32_NOPAD.encode(public.as_bytes())
            )
        );
        let bob_key = "descriptor:x25519:zprrmiv6dv6sjfl7sfbsvlj5vunpgcdfevz7m23ltlvtccxjqbka";
        let b = add(&state, "bob", Some(bob_key)).expect("given key");
        assert!(b.private.is_none());
        assert!(add(&state, "bob", None).is_err(), "a name twice");
        assert!(add(&state, "carol", Some(bob_key)).is_err(), "a key twice");
        assert!(add(&state, "Bad Name", None).is_err());
        assert!(add(&state, "dave", Some("descriptor:x25519:nope")).is_err());
        let names: Vec<String> = list(&state)
            .expect("list")
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["alice", "bob"]);
        assert_eq!(keys(&state).expect("keys").len(), 2);
        remove(&state, "alice").expect("remove");
        assert!(remove(&state, "alice").is_err(), "not there any more");
        assert_eq!(list(&state).expect("list").len(), 1);
        std::fs::write(dir(&state).join("eve.auth"), "garbage").expect("write");
        let err = list(&state).expect_err("a damaged file");
        assert!(format!("{err:#}").contains("eve.auth"), "{err:#}");
        let _ = std::fs::remove_dir_all(&state);
    }
}
