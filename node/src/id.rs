//! Identity: peer ids, DHT keys, the XOR distance, and the `beam://` address form.
//!
//! A peer is its ed25519 public key ([`PeerId`], 32 bytes). Its place in the DHT is
//! [`Key::of_peer`] = SHA-256 of that key, so ids cannot be ground to a chosen DHT position
//! any cheaper than by brute force. A service address is shown as `beam://` followed by the
//! lowercase, unpadded base32 of the peer id: 52 characters.

use std::fmt;
use std::str::FromStr;

use data_encoding::{BASE32_NOPAD, Encoding};
use ed25519_dalek::{Signer, Verifier};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The scheme prefix of a service address.
pub const BEAM_SCHEME: &str = "beam://";

/// Length of the base32 form of a peer id (32 bytes = 256 bits → 52 characters).
pub const ADDRESS_LEN: usize = 52;

/// A peer's identity: its ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerId([u8; 32]);

impl PeerId {
    /// The id with these raw bytes (not checked to be a valid curve point until used to verify).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw public-key bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// This peer's position in the DHT.
    pub fn key(&self) -> Key {
        Key::of_peer(self)
    }

    /// Verifies `signature` over `message` with this id as the public key.
    pub fn verify(&self, message: &[u8], signature: &Signature) -> bool {
        let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        let sig = ed25519_dalek::Signature::from_bytes(&signature.0);
        key.verify(message, &sig).is_ok()
    }

    /// The `beam://…` address of the service this peer publishes.
    pub fn to_address(&self) -> String {
        format!("{BEAM_SCHEME}{}", base32_lower().encode(&self.0))
    }

    /// A short form for logs: the first 8 base32 characters.
    pub fn short(&self) -> String {
        base32_lower().encode(&self.0)[..8].to_owned()
    }
}

fn base32_lower() -> Encoding {
    let mut spec = BASE32_NOPAD.specification();
    spec.symbols = "abcdefghijklmnopqrstuvwxyz234567".to_owned();
    // The specification above is a constant that data-encoding accepts; a failure here would be
    // a bug in this line, found by every test that formats an id.
    spec.encoding().unwrap_or_else(|_| BASE32_NOPAD.clone())
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", self.short())
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_address())
    }
}

/// Why a string is not a `beam://` address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The string does not start with `beam://`.
    #[error("`{0}` is not a beam address: it must start with beam://")]
    MissingScheme(String),
    /// The part after the scheme has the wrong length.
    #[error("a beam address has {ADDRESS_LEN} characters after beam://, this one has {0}")]
    WrongLength(usize),
    /// The part after the scheme is not base32.
    #[error("a beam address uses only a-z and 2-7 after beam://; found `{0}`")]
    BadCharacter(char),
}

impl FromStr for PeerId {
    type Err = AddressError;

    /// Parses `beam://<52 base32 chars>`; upper case is accepted, as people retype addresses.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let rest = s
            .get(..BEAM_SCHEME.len())
            .filter(|p| p.eq_ignore_ascii_case(BEAM_SCHEME))
            .map(|_| &s[BEAM_SCHEME.len()..])
            .ok_or_else(|| AddressError::MissingScheme(s.chars().take(80).collect()))?;
        let rest = rest.trim_end_matches('/');
        let lower = rest.to_ascii_lowercase();
        if let Some(c) = lower.chars().find(|c| !matches!(c, 'a'..='z' | '2'..='7')) {
            return Err(AddressError::BadCharacter(c));
        }
        if lower.len() != ADDRESS_LEN {
            return Err(AddressError::WrongLength(lower.len()));
        }
        let bytes = base32_lower()
            .decode(lower.as_bytes())
            .map_err(|_| AddressError::WrongLength(lower.len()))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| AddressError::WrongLength(lower.len()))?;
        Ok(PeerId(arr))
    }
}

/// An ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature(#[serde(with = "serde_sig")] pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

mod serde_sig {
    //! serde has no impls for `[u8; 64]`; encode it as a fixed tuple.
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::ser::SerializeTuple;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(64)?;
        for b in v {
            t.serialize_element(b)?;
        }
        t.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = [u8; 64];
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("64 bytes")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; 64], A::Error> {
                let mut out = [0u8; 64];
                for (i, b) in out.iter_mut().enumerate() {
                    *b = seq
                        .next_element()?
                        .ok_or_else(|| A::Error::invalid_length(i, &self))?;
                }
                Ok(out)
            }
        }
        d.deserialize_tuple(64, V)
    }
}

/// A peer's signing key. Created from 32 secret bytes (the caller's RNG or a key file).
#[derive(Clone)]
pub struct Keypair {
    signing: ed25519_dalek::SigningKey,
}

impl Keypair {
    /// The keypair for these 32 secret bytes.
    pub fn from_secret(secret: [u8; 32]) -> Self {
        Self {
            signing: ed25519_dalek::SigningKey::from_bytes(&secret),
        }
    }

    /// A fresh keypair drawn from `rng` (seeded by the caller: the core has no global RNG).
    pub fn generate(rng: &mut impl rand::RngCore) -> Self {
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        Self::from_secret(secret)
    }

    /// The secret bytes, for persisting the identity.
    pub fn secret(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The public identity.
    pub fn peer_id(&self) -> PeerId {
        PeerId(self.signing.verifying_key().to_bytes())
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature(self.signing.sign(message).to_bytes())
    }
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keypair({:?})", self.peer_id())
    }
}

/// A position in the DHT's 256-bit key space.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key(pub [u8; 32]);

impl Key {
    /// SHA-256 of `data`.
    pub fn hash(data: &[u8]) -> Self {
        Key(Sha256::digest(data).into())
    }

    /// The DHT position of a peer: SHA-256 of its public key.
    pub fn of_peer(peer: &PeerId) -> Self {
        Self::hash(peer.as_bytes())
    }

    /// The key a name record is stored under: SHA-256("name:" + name).
    pub fn of_name(name: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"name:");
        h.update(name.as_bytes());
        Key(h.finalize().into())
    }

    /// The XOR distance to `other`.
    pub fn distance(&self, other: &Key) -> Distance {
        let mut d = [0u8; 32];
        for (i, b) in d.iter_mut().enumerate() {
            *b = self.0[i] ^ other.0[i];
        }
        Distance(d)
    }

    /// A uniformly random key whose distance to `self` lies in bucket `bucket`
    /// (i.e. `2^bucket <= distance < 2^(bucket+1)`).
    pub fn random_in_bucket(&self, bucket: usize, rng: &mut impl rand::RngCore) -> Key {
        let bucket = bucket.min(255);
        let mut d = [0u8; 32];
        rng.fill_bytes(&mut d);
        // Bit `bucket` counted from the least significant end is byte 31 - bucket/8.
        let top_byte = 31 - bucket / 8;
        let bit = bucket % 8;
        for b in d.iter_mut().take(top_byte) {
            *b = 0;
        }
        let mask = if bit == 7 {
            0xff
        } else {
            (1u8 << (bit + 1)) - 1
        };
        d[top_byte] &= mask;
        d[top_byte] |= 1 << bit;
        let mut k = [0u8; 32];
        for i in 0..32 {
            k[i] = self.0[i] ^ d[i];
        }
        Key(k)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Key({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// The XOR distance between two keys, ordered as a 256-bit big-endian integer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Distance(pub [u8; 32]);

impl Distance {
    /// The k-bucket this distance falls in: the index of its highest set bit (0..=255),
    /// or `None` for distance zero (the key itself).
    pub fn bucket(&self) -> Option<usize> {
        for (i, b) in self.0.iter().enumerate() {
            if *b != 0 {
                return Some((31 - i) * 8 + (7 - b.leading_zeros() as usize));
            }
        }
        None
    }

    /// The distance as a fraction of the whole key space, in [0, 1).
    pub fn as_fraction(&self) -> f64 {
        let mut hi = [0u8; 8];
        hi.copy_from_slice(&self.0[..8]);
        u64::from_be_bytes(hi) as f64 / 2f64.powi(64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    #[test]
    fn address_round_trips_and_has_52_chars() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let id = Keypair::generate(&mut rng).peer_id();
        let a = id.to_address();
        assert!(a.starts_with("beam://"));
        assert_eq!(a.len(), 7 + ADDRESS_LEN);
        assert_eq!(a.parse::<PeerId>(), Ok(id));
        assert_eq!(
            a.to_uppercase().replace("BEAM://", "beam://").parse(),
            Ok(id)
        );
    }

    #[test]
    fn malformed_addresses_are_refused_with_a_reason() {
        assert!(matches!(
            "http://abc".parse::<PeerId>(),
            Err(AddressError::MissingScheme(_))
        ));
        assert_eq!(
            "beam://abc".parse::<PeerId>(),
            Err(AddressError::WrongLength(3))
        );
        assert_eq!(
            "beam://aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1a".parse::<PeerId>(),
            Err(AddressError::BadCharacter('1'))
        );
        // 52 chars whose last char carries bits beyond 256: not canonical.
        assert!(
            "beam://7777777777777777777777777777777777777777777777777777"
                .parse::<PeerId>()
                .is_err()
        );
        assert!("".parse::<PeerId>().is_err());
        assert!("beam://ü".parse::<PeerId>().is_err());
    }

    #[test]
    fn signatures_verify_only_for_the_signer_and_message() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let a = Keypair::generate(&mut rng);
        let b = Keypair::generate(&mut rng);
        let sig = a.sign(b"hello");
        assert!(a.peer_id().verify(b"hello", &sig));
        assert!(!a.peer_id().verify(b"hellp", &sig));
        assert!(!b.peer_id().verify(b"hello", &sig));
        assert!(!PeerId::from_bytes([0xff; 32]).verify(b"hello", &sig));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".*") {
            let _ = s.parse::<PeerId>();
            let _ = format!("beam://{s}").parse::<PeerId>();
        }

        #[test]
        fn any_id_round_trips(bytes in any::<[u8; 32]>()) {
            let id = PeerId::from_bytes(bytes);
            prop_assert_eq!(id.to_address().parse::<PeerId>(), Ok(id));
        }

        #[test]
        fn random_in_bucket_lands_in_that_bucket(seed in any::<u64>(), key in any::<[u8; 32]>(), bucket in 0usize..256) {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let k = Key(key);
            let r = k.random_in_bucket(bucket, &mut rng);
            prop_assert_eq!(k.distance(&r).bucket(), Some(bucket));
        }

        #[test]
        fn xor_metric_is_symmetric_and_zero_only_to_self(a in any::<[u8; 32]>(), b in any::<[u8; 32]>()) {
            let (a, b) = (Key(a), Key(b));
            prop_assert_eq!(a.distance(&b), b.distance(&a));
            prop_assert_eq!(a.distance(&b).bucket().is_none(), a == b);
        }
    }
}
