//! Access tokens: `beam <PORT> --auth` lets in only the clients that present the service's
//! token (`beam connect NAME --token T`).
//!
//! The token travels inside the end-to-end encryption and before anything reaches the local
//! port: on a direct tunnel after the version byte, inside libp2p's Noise session with the
//! service's own key; through relays in the payload of the Noise XK handshake's last message,
//! which only the service can read. A service refuses a missing or wrong token with
//! [`Status::Unauthorized`](super::tunnel::Status) and never connects to its port for it.
//!
//! The comparison is of SHA-256 digests in constant time, so the time a refusal takes says
//! nothing about how much of a guess was right.

use std::path::Path;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Shortest token accepted from the user: shorter ones can be guessed.
pub const MIN_LEN: usize = 16;
/// Longest token (its length is one byte on the wire).
pub const MAX_LEN: usize = beam_node::tunnel::MAX_TOKEN;
/// The file in the state directory that keeps a generated token across restarts.
pub const FILE: &str = "auth-token";

/// A service's access token.
#[derive(Clone)]
pub struct Token {
    text: String,
    digest: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

impl Token {
    /// A token the user chose: 16–128 printable ASCII characters, no spaces.
    pub fn parse(s: &str) -> Result<Token> {
        if s.len() < MIN_LEN || s.len() > MAX_LEN {
            bail!(
                "an access token must be {MIN_LEN}–{MAX_LEN} characters (got {}); leave the value \
                 out (`--auth`) to have one generated",
                s.len()
            );
        }
        if let Some(c) = s.chars().find(|c| !c.is_ascii_graphic()) {
            bail!(
                "an access token takes printable ASCII characters without spaces; {c:?} is not one"
            );
        }
        Ok(Token {
            text: s.to_owned(),
            digest: Sha256::digest(s.as_bytes()).into(),
        })
    }

    /// A new random token: 160 bits, 32 characters of lower-case base32.
    pub fn generate() -> Result<Token> {
        let mut raw = [0u8; 20];
        crate::state::getrandom(&mut raw)?;
        Token::parse(
            &data_encoding::BASE32_NOPAD
                .encode(&raw)
                .to_ascii_lowercase(),
        )
    }

    /// The token as the user types it.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `presented` is this token (in constant time).
    pub fn admits(&self, presented: Option<&[u8]>) -> bool {
        let Some(presented) = presented else {
            return false;
        };
        let d: [u8; 32] = Sha256::digest(presented).into();
        d.ct_eq(&self.digest).into()
    }
}

/// The token kept in `dir`, created (mode 0600) on first use; and whether it was created now.
pub fn load_or_create(dir: &Path) -> Result<(Token, bool)> {
    let path = dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let t = Token::parse(s.trim()).with_context(|| {
                format!(
                    "{} does not hold a valid token; delete it to have a new one generated",
                    path.display()
                )
            })?;
            Ok((t, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
            let t = Token::generate()?;
            crate::state::create_private(&path, format!("{}\n", t.as_str()).as_bytes())
                .with_context(|| format!("cannot write the access token {}", path.display()))?;
            Ok((t, true))
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The first bytes a client sends on a tunnel: the version, and the token if it has one.
pub fn hello(token: Option<&Token>) -> Vec<u8> {
    beam_node::tunnel::hello(token.map(|t| t.text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_and_generated_ones_are_valid() {
        assert!(Token::parse("short").is_err());
        assert!(Token::parse("has a space in it, sadly").is_err());
        assert!(Token::parse(&"x".repeat(MAX_LEN + 1)).is_err());
        let t = Token::parse("correct-horse-battery").expect("valid");
        assert!(t.admits(Some(b"correct-horse-battery")));
        assert!(!t.admits(Some(b"correct-horse-batterx")));
        assert!(!t.admits(Some(b"")));
        assert!(!t.admits(None));
        let g = Token::generate().expect("random");
        assert_eq!(g.as_str().len(), 32);
        assert_ne!(g.as_str(), Token::generate().expect("random").as_str());
        assert_eq!(format!("{g:?}"), "Token(…)", "Debug never prints the token");
    }

    #[test]
    fn a_token_goes_into_the_hello_whole() {
        let t = Token::parse("correct-horse-battery").expect("valid");
        let h = hello(Some(&t));
        assert_eq!(
            beam_node::tunnel::parse_hello(&h),
            Ok(Some(&b"correct-horse-battery"[..]))
        );
        assert!(t.admits(beam_node::tunnel::parse_hello(&h).expect("parses")));
        assert_eq!(beam_node::tunnel::parse_hello(&hello(None)), Ok(None));
    }

    #[test]
    fn a_generated_token_is_kept_across_restarts() {
        let dir = std::env::temp_dir().join(format!("beam-auth-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (a, created) = load_or_create(&dir).expect("create");
        assert!(created);
        let (b, created) = load_or_create(&dir).expect("load");
        assert!(!created);
        assert_eq!(a.as_str(), b.as_str());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(FILE))
                .expect("file")
                .permissions();
            assert_eq!(mode.mode() & 0o777, 0o600);
        }
        std::fs::write(dir.join(FILE), "bad").expect("write");
        assert!(load_or_create(&dir).is_err(), "a damaged file is an error");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
