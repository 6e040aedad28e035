//! Signed DHT records: service records and name records.
//!
//! A record is a body signed by its owner ([`Signed`]). The signature covers a domain tag and
//! the body's canonical encoding, so a service-record signature can never be replayed as a
//! name record. Holders check everything before storing (see [`Record::check`]); the rules
//! live here, in one place, so that a node storing a record and a node receiving one in a
//! lookup apply the same ones.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::id::{Key, Keypair, PeerId, Signature};

/// Largest encoded record a node stores or accepts in a lookup.
pub const MAX_RECORD_SIZE: usize = 2048;
/// Most endpoints a service record may list.
pub const MAX_ENDPOINTS: usize = 8;
/// Most relays a service record may list.
pub const MAX_RELAYS: usize = 8;
/// Longest endpoint address, in bytes.
pub const MAX_ADDR_LEN: usize = 256;
/// Longest name, in bytes.
pub const MAX_NAME_LEN: usize = 63;
/// Longest onion address (56 base32 chars + ".onion").
pub const MAX_TOR_ADDRESS_LEN: usize = 62;

/// Where a peer can be reached: a multiaddr in the real network (`/ip4/…/udp/…/quic-v1`),
/// `ip:port` in the simulator. Opaque to the core; bounded in length.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct Addr(pub String);

impl Addr {
    /// An address from its text form.
    pub fn new(s: impl Into<String>) -> Self {
        Addr(s.into())
    }

    /// The text form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The IP address in it: `ip:port`, `[ip6]:port`, a bare IP, or a multiaddr starting
    /// `/ip4/…` or `/ip6/…`. `None` for anything else (a DNS name, garbage).
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        let s = self.0.as_str();
        if let Some(rest) = s.strip_prefix("/ip4/").or_else(|| s.strip_prefix("/ip6/")) {
            return rest.split('/').next()?.parse().ok();
        }
        s.parse::<std::net::SocketAddr>()
            .map(|a| a.ip())
            .or_else(|_| s.parse::<std::net::IpAddr>())
            .ok()
    }

    /// The network it is in, for limits on how many peers one network may place (see
    /// [`Subnet`]). `None` without an IP, and for loopback, private and link-local addresses
    /// unless `limit_private` (a LAN or a test on one machine is many peers on one network).
    pub fn subnet(&self, limit_private: bool) -> Option<Subnet> {
        use std::net::IpAddr;
        let ip = match self.ip()? {
            // A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d: limit them as IPv4.
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        match ip {
            IpAddr::V4(v4) => {
                let local = v4.is_loopback() || v4.is_private() || v4.is_link_local();
                if local && !limit_private {
                    return None;
                }
                let [a, b, c, _] = v4.octets();
                Some(Subnet([a, b, c, 0, 0, 0, 4]))
            }
            IpAddr::V6(v6) => {
                let seg = v6.segments();
                let local =
                    v6.is_loopback() || (seg[0] & 0xfe00) == 0xfc00 || (seg[0] & 0xffc0) == 0xfe80;
                if local && !limit_private {
                    return None;
                }
                let o = v6.octets();
                Some(Subnet([o[0], o[1], o[2], o[3], o[4], o[5], 6]))
            }
        }
    }
}

/// A /24 (IPv4) or /48 (IPv6) network: what one operator can fill with Sybils cheaply. The
/// last byte tells the families apart.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Subnet(pub [u8; 7]);

/// How much a peer does for the network.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub enum Participation {
    /// A DHT client: relays nothing and answers no DHT queries.
    Light,
    /// A DHT server and relay.
    Routing,
    /// A DHT server and relay with larger tables; a public gateway when it has a public address.
    Full,
}

impl Participation {
    /// Whether the peer answers DHT queries (is a DHT server).
    pub fn is_server(self) -> bool {
        !matches!(self, Participation::Light)
    }
}

/// Vivaldi network coordinates: a 2-D position plus a height, in milliseconds.
#[derive(Clone, Copy, PartialEq, Debug, Serialize, Deserialize)]
pub struct Coordinates {
    /// Position, first axis.
    pub x: f32,
    /// Position, second axis.
    pub y: f32,
    /// Height: the access-link delay that every path to this peer pays.
    pub height: f32,
}

/// What a service publishes about itself, stored under the DHT key of its peer id.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// The owner, whose key signs the record.
    pub peer: PeerId,
    /// Increases with every new version; holders refuse older ones.
    pub seq: u64,
    /// Unix time (seconds) after which the record is dead.
    pub expires: u64,
    /// The service's `.onion` address, when published through Tor too.
    pub tor_address: Option<String>,
    /// Where the service can be dialled directly.
    pub endpoints: Vec<Addr>,
    /// Relays through which the service can be reached when it cannot be dialled: peers it
    /// keeps a connection to (so they can reach it through its NAT).
    pub relays: Vec<crate::wire::Contact>,
    /// Whether the endpoints accept connections from anyone (false behind a NAT: a client
    /// must hole-punch through one of `relays`, or route through it).
    pub reachable: bool,
    /// The service's network coordinates, for latency prediction.
    pub coordinates: Option<Coordinates>,
    /// The owner's participation level.
    pub participation: Participation,
    /// The static key of the service's end-to-end Noise handshake (bound to the peer id by this
    /// record's signature).
    pub noise_key: Option<[u8; 32]>,
}

/// A human-readable name pointing at a peer, stored under SHA-256("name:" + name).
/// First come, first served: while a live record exists, another key cannot take the name.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct NameRecord {
    /// The name: 1–63 characters of a–z, 0–9 and `-`, not starting or ending with `-`.
    pub name: String,
    /// The owner the name points at.
    pub peer: PeerId,
    /// Increases with every new version.
    pub seq: u64,
    /// Unix time (seconds) after which the record is dead.
    pub expires: u64,
}

/// A record body with its owner's signature.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Signed<T> {
    /// What is signed.
    pub body: T,
    /// The owner's signature over the domain tag and the body's encoding.
    pub signature: Signature,
}

/// Any record the DHT stores.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum Record {
    /// A service record.
    Service(Signed<ServiceRecord>),
    /// A name record.
    Name(Signed<NameRecord>),
}

/// Why a record was refused. Sent back to the publisher in a STORE answer.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, thiserror::Error)]
pub enum RecordError {
    /// The signature does not verify against the owner's key.
    #[error("the record's signature does not verify")]
    BadSignature,
    /// The encoded record is larger than [`MAX_RECORD_SIZE`] or a field is over its bound.
    #[error("the record is over the size limit")]
    TooLarge,
    /// A field is malformed (an invalid name, an empty address).
    #[error("the record is malformed")]
    Malformed,
    /// Its expiry is past.
    #[error("the record has expired")]
    Expired,
    /// Its expiry is further in the future than holders accept.
    #[error("the record's expiry is too far in the future")]
    TooFarInFuture,
    /// The holder has a newer version (higher sequence number) or a different record with
    /// the same sequence number.
    #[error("the holder has a newer record")]
    Stale,
    /// A live name record for this name belongs to a different key.
    #[error("the name is taken by another key")]
    NameTaken,
    /// The holder's store is full.
    #[error("the holder's record store is full")]
    StoreFull,
    /// Asked to cache a copy, by a peer that does not cache (`p2p.caching` off).
    #[error("the peer does not cache records")]
    NotCaching,
}

const SERVICE_DOMAIN: &[u8] = b"beam/service-record/v1";
const NAME_DOMAIN: &[u8] = b"beam/name-record/v1";

fn signing_bytes<T: Serialize>(domain: &[u8], body: &T) -> Vec<u8> {
    let mut out = domain.to_vec();
    // postcard serialization of these plain structs into a Vec cannot fail.
    if let Ok(b) = postcard::to_stdvec(body) {
        out.extend_from_slice(&b);
    }
    out
}

impl ServiceRecord {
    /// Signs the record with its owner's keypair.
    pub fn sign(self, keypair: &Keypair) -> Record {
        let signature = keypair.sign(&signing_bytes(SERVICE_DOMAIN, &self));
        Record::Service(Signed {
            body: self,
            signature,
        })
    }
}

impl NameRecord {
    /// Signs the record with its owner's keypair.
    pub fn sign(self, keypair: &Keypair) -> Record {
        let signature = keypair.sign(&signing_bytes(NAME_DOMAIN, &self));
        Record::Name(Signed {
            body: self,
            signature,
        })
    }
}

/// Whether `name` is a valid name: 1–63 of `a-z 0-9 -`, not starting or ending with `-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Record {
    /// The DHT key this record lives under.
    pub fn key(&self) -> Key {
        match self {
            Record::Service(s) => Key::of_peer(&s.body.peer),
            Record::Name(n) => Key::of_name(&n.body.name),
        }
    }

    /// The owner's peer id.
    pub fn owner(&self) -> PeerId {
        match self {
            Record::Service(s) => s.body.peer,
            Record::Name(n) => n.body.peer,
        }
    }

    /// The sequence number.
    pub fn seq(&self) -> u64 {
        match self {
            Record::Service(s) => s.body.seq,
            Record::Name(n) => n.body.seq,
        }
    }

    /// Unix time (seconds) at which the record dies.
    pub fn expires(&self) -> u64 {
        match self {
            Record::Service(s) => s.body.expires,
            Record::Name(n) => n.body.expires,
        }
    }

    /// The encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        postcard::to_stdvec(self)
            .map(|v| v.len())
            .unwrap_or(usize::MAX)
    }

    /// Checks the bounds of every field (no signature check, no clock): what a decoder can
    /// check on its own.
    pub fn check_bounds(&self) -> Result<(), RecordError> {
        match self {
            Record::Service(s) => {
                let b = &s.body;
                if b.endpoints.len() > MAX_ENDPOINTS
                    || b.relays.len() > MAX_RELAYS
                    || b.endpoints.iter().any(|a| a.0.len() > MAX_ADDR_LEN)
                    || b.relays.iter().any(|c| c.addr.0.len() > MAX_ADDR_LEN)
                    || b.tor_address
                        .as_ref()
                        .is_some_and(|t| t.len() > MAX_TOR_ADDRESS_LEN)
                {
                    return Err(RecordError::TooLarge);
                }
                if b.endpoints.iter().any(|a| a.0.is_empty())
                    || b.coordinates.is_some_and(|c| {
                        !(c.x.is_finite() && c.y.is_finite() && c.height.is_finite())
                    })
                {
                    return Err(RecordError::Malformed);
                }
            }
            Record::Name(n) => {
                if n.body.name.len() > MAX_NAME_LEN {
                    return Err(RecordError::TooLarge);
                }
                if !valid_name(&n.body.name) {
                    return Err(RecordError::Malformed);
                }
            }
        }
        if self.encoded_len() > MAX_RECORD_SIZE {
            return Err(RecordError::TooLarge);
        }
        Ok(())
    }

    /// Whether the owner's signature verifies.
    pub fn verify_signature(&self) -> bool {
        match self {
            Record::Service(s) => s
                .body
                .peer
                .verify(&signing_bytes(SERVICE_DOMAIN, &s.body), &s.signature),
            Record::Name(n) => n
                .body
                .peer
                .verify(&signing_bytes(NAME_DOMAIN, &n.body), &n.signature),
        }
    }

    /// Every check a holder makes before storing or a reader before using a record:
    /// bounds, expiry (`now_unix < expires <= now_unix + max_ttl`), then the signature
    /// (the expensive one, last).
    pub fn check(&self, now_unix: u64, max_ttl: Duration) -> Result<(), RecordError> {
        self.check_bounds()?;
        if self.expires() <= now_unix {
            return Err(RecordError::Expired);
        }
        if self.expires() > now_unix.saturating_add(max_ttl.as_secs()) {
            return Err(RecordError::TooFarInFuture);
        }
        if !self.verify_signature() {
            return Err(RecordError::BadSignature);
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::SeedableRng;

    pub(crate) fn service(kp: &Keypair, seq: u64, expires: u64) -> Record {
        ServiceRecord {
            peer: kp.peer_id(),
            seq,
            expires,
            tor_address: None,
            endpoints: vec![Addr::new("/ip4/127.0.0.1/udp/4000/quic-v1")],
            relays: vec![],
            reachable: true,
            coordinates: Some(Coordinates {
                x: 1.0,
                y: 2.0,
                height: 3.0,
            }),
            participation: Participation::Routing,
            noise_key: Some([7; 32]),
        }
        .sign(kp)
    }

    #[test]
    fn a_signed_record_checks_and_a_tampered_one_does_not() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let kp = Keypair::generate(&mut rng);
        let ttl = Duration::from_secs(3600);
        let r = service(&kp, 1, 1000);
        assert_eq!(r.check(500, ttl), Ok(()));
        assert_eq!(r.check(1000, ttl), Err(RecordError::Expired));
        assert_eq!(
            service(&kp, 1, 5000).check(1000, ttl),
            Err(RecordError::TooFarInFuture)
        );
        let Record::Service(mut s) = r else {
            unreachable!()
        };
        s.body.seq = 2;
        assert_eq!(
            Record::Service(s).check(500, ttl),
            Err(RecordError::BadSignature)
        );
    }

    #[test]
    fn names_are_validated() {
        assert!(valid_name("my-app2"));
        assert!(!valid_name(""));
        assert!(!valid_name("-x"));
        assert!(!valid_name("Caps"));
        assert!(!valid_name(&"a".repeat(64)));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let kp = Keypair::generate(&mut rng);
        let r = NameRecord {
            name: "no spaces".into(),
            peer: kp.peer_id(),
            seq: 1,
            expires: 100,
        }
        .sign(&kp);
        assert_eq!(r.check_bounds(), Err(RecordError::Malformed));
    }

    #[test]
    fn a_signature_cannot_move_between_record_kinds() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let kp = Keypair::generate(&mut rng);
        let r = service(&kp, 1, 1000);
        let Record::Service(s) = r else {
            unreachable!()
        };
        let forged = Record::Name(Signed {
            body: NameRecord {
                name: "x".into(),
                peer: kp.peer_id(),
                seq: 1,
                expires: 1000,
            },
            signature: s.signature,
        });
        assert!(!forged.verify_signature());
    }

    #[test]
    fn addresses_give_their_subnet() {
        let sub = |s: &str, private| Addr::new(s).subnet(private);
        assert_eq!(sub("8.8.8.8:53", false), sub("/ip4/8.8.8.200/tcp/1", false));
        assert_ne!(sub("8.8.8.8:53", false), sub("8.8.9.8:53", false));
        assert!(sub("8.8.8.8:53", false).is_some());
        assert_eq!(
            sub("[2001:db8:1::1]:4", false),
            sub("/ip6/2001:db8:1:ffff::2/udp/4/quic-v1", false)
        );
        assert_ne!(
            sub("[2001:db8:1::1]:4", false),
            sub("[2001:db8:2::1]:4", false)
        );
        // Loopback and private networks are not limited unless asked.
        assert_eq!(sub("127.0.0.1:9", false), None);
        assert_eq!(sub("10.1.2.3:9", false), None);
        assert!(sub("10.1.2.3:9", true).is_some());
        assert_eq!(sub("example.com:80", true), None);
        assert_eq!(sub("[::ffff:8.8.8.9]:53", false), sub("8.8.8.8:53", false));
        assert_eq!(sub("not an address", true), None);
    }
}
