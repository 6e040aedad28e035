//! The wire format: one message enum and its codec.
//!
//! A message is one version byte ([`WIRE_VERSION`]) followed by the message's postcard
//! encoding (serde, varint integers — compact enough for a datagram, and self-delimiting
//! inside a libp2p stream frame). Every encoded message fits in [`MAX_MESSAGE_SIZE`].
//!
//! [`decode`] takes bytes from the network and never panics: empty, oversized, truncated,
//! unknown-version, trailing-garbage and out-of-bounds input all come back as a
//! [`DecodeError`], which the node counts and traces before dropping the message.

use serde::{Deserialize, Serialize};

use crate::id::{Key, PeerId};
use crate::record::{Addr, MAX_ADDR_LEN, Record, RecordError};

/// The version byte that starts every message.
pub const WIRE_VERSION: u8 = 1;
/// Hard limit on an encoded message, version byte included.
pub const MAX_MESSAGE_SIZE: usize = 8 * 1024;
/// Most contacts in one answer.
pub const MAX_CONTACTS: usize = 32;

/// A peer and an address where it can be reached.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Contact {
    /// The peer.
    pub peer: PeerId,
    /// Where it listens.
    pub addr: Addr,
}

/// A peer's network coordinates and how much it trusts them.
#[derive(Clone, Copy, PartialEq, Debug, Serialize, Deserialize)]
pub struct Position {
    /// Vivaldi coordinates, in milliseconds.
    pub coords: crate::record::Coordinates,
    /// The peer's own relative error estimate (0 = certain, 1 = no idea).
    pub error: f32,
}

/// Whether the sender of a request is a DHT server (and so belongs in routing tables).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Mode {
    /// Answers DHT queries.
    Server,
    /// Only asks (a light peer); never added to others' routing tables.
    Client,
}

/// Every message beam peers exchange. New kinds of message are added as new variants at the
/// end, which keeps old encodings valid.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum Message {
    /// Kademlia DHT.
    Dht(DhtMessage),
    /// Frames travelling along a route (direct or through relays).
    Route(RouteMessage),
    /// Epidemic broadcast: service announcements and network health.
    Gossip(crate::gossip::GossipMessage),
}

/// Most relays on a route.
pub const MAX_RELAYS_PER_ROUTE: usize = 3;
/// Largest route payload (an end-to-end encrypted frame).
pub const MAX_ROUTE_DATA: usize = 4 * 1024;

/// A frame on a source route. Relays forward it without reading `data` (which is end-to-end
/// encrypted on relayed routes); they learn only the previous and next hop.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum RouteMessage {
    /// From the client towards the service.
    Forward {
        /// The route's id, chosen by the client.
        route: u64,
        /// The hops still ahead after the receiver; empty at the service.
        ahead: Vec<Contact>,
        /// The hops behind the sender, nearest the client first (the client itself first);
        /// each relay appends the peer it received the frame from.
        behind: Vec<Contact>,
        /// The payload (encoded as bytes: the same encoding as a sequence of u8, in one copy).
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// From the service back to the client.
    Backward {
        /// The route's id.
        route: u64,
        /// The hops still ahead after the receiver; empty at the client.
        ahead: Vec<Contact>,
        /// The payload (encoded as bytes: the same encoding as a sequence of u8, in one copy).
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
}

/// A DHT request or its answer. The request id pairs them; it is chosen by the requester.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum DhtMessage {
    /// A request.
    Request {
        /// Chosen by the requester, echoed in the answer.
        id: u64,
        /// Whether the requester is a DHT server.
        mode: Mode,
        /// What is asked.
        body: Request,
    },
    /// An answer.
    Response {
        /// The id of the request this answers.
        id: u64,
        /// The answer.
        body: Response,
        /// The responder's network coordinates: with the request's measured RTT, they move
        /// the requester's own coordinates (Vivaldi).
        position: Option<Position>,
    },
}

/// A DHT request.
// Messages live from decode to handling; boxing the record would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum Request {
    /// PING: are you alive?
    Ping,
    /// FIND_NODE: the peers you know closest to `target`.
    FindNode {
        /// The key looked up.
        target: Key,
    },
    /// FIND_VALUE: the record under `key`, or the peers you know closest to it.
    FindValue {
        /// The record key.
        key: Key,
    },
    /// STORE: keep this record.
    Store {
        /// The signed record.
        record: Record,
    },
    /// CACHE: keep a copy of this record for a while, and answer FIND_VALUE with it (a
    /// resolver pushes what it found to the nearest peer on its path that did not have it).
    Cache {
        /// The signed record.
        record: Record,
    },
}

/// An answer to a DHT request.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum Response {
    /// PONG.
    Pong,
    /// The closest peers the responder knows.
    Nodes {
        /// At most [`MAX_CONTACTS`] contacts.
        closer: Vec<Contact>,
    },
    /// The record if held, and closer peers.
    Value {
        /// The record, when the responder holds a live one.
        record: Option<Record>,
        /// Closer peers (empty when the record is given).
        closer: Vec<Contact>,
    },
    /// The outcome of a STORE.
    Stored {
        /// `Ok` when stored, otherwise why not.
        result: Result<(), RecordError>,
    },
}

/// Why bytes from the network are not a message.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum DecodeError {
    /// No bytes at all.
    #[error("empty message")]
    Empty,
    /// More bytes than [`MAX_MESSAGE_SIZE`].
    #[error("message of {0} bytes is over the {MAX_MESSAGE_SIZE}-byte limit")]
    TooLarge(usize),
    /// A version this build does not speak.
    #[error("unknown wire version {0} (this build speaks {WIRE_VERSION})")]
    UnknownVersion(u8),
    /// The bytes do not decode (truncated, bad tag, bad varint…).
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Bytes left over after a complete message.
    #[error("{0} bytes of trailing garbage after the message")]
    TrailingBytes(usize),
    /// It decodes, but a field is over its bound.
    #[error("message field out of bounds: {0}")]
    OutOfBounds(&'static str),
}

/// Why a message could not be encoded.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum EncodeError {
    /// The encoding would be over [`MAX_MESSAGE_SIZE`].
    #[error("message of {0} bytes is over the {MAX_MESSAGE_SIZE}-byte limit")]
    TooLarge(usize),
    /// serde refused (cannot happen for these types; kept rather than unwrapped).
    #[error("encoding failed: {0}")]
    Serde(String),
}

/// Encodes a message: the version byte, then postcard.
pub fn encode(msg: &Message) -> Result<Vec<u8>, EncodeError> {
    let out = postcard::to_extend(msg, vec![WIRE_VERSION])
        .map_err(|e| EncodeError::Serde(e.to_string()))?;
    if out.len() > MAX_MESSAGE_SIZE {
        return Err(EncodeError::TooLarge(out.len()));
    }
    Ok(out)
}

/// Decodes bytes from the network. Never panics; see [`DecodeError`].
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    let (&version, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if bytes.len() > MAX_MESSAGE_SIZE {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    if version != WIRE_VERSION {
        return Err(DecodeError::UnknownVersion(version));
    }
    let (msg, left) = postcard::take_from_bytes::<Message>(rest)
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !left.is_empty() {
        return Err(DecodeError::TrailingBytes(left.len()));
    }
    check_bounds(&msg)?;
    Ok(msg)
}

fn check_contacts(c: &[Contact]) -> Result<(), DecodeError> {
    if c.len() > MAX_CONTACTS {
        return Err(DecodeError::OutOfBounds("too many contacts"));
    }
    if c.iter()
        .any(|c| c.addr.0.is_empty() || c.addr.0.len() > MAX_ADDR_LEN)
    {
        return Err(DecodeError::OutOfBounds("contact address"));
    }
    Ok(())
}

fn check_record(r: &Record) -> Result<(), DecodeError> {
    r.check_bounds()
        .map_err(|_| DecodeError::OutOfBounds("record"))
}

fn check_bounds(msg: &Message) -> Result<(), DecodeError> {
    match msg {
        Message::Dht(DhtMessage::Request { body, .. }) => match body {
            Request::Store { record } | Request::Cache { record } => check_record(record),
            Request::Ping | Request::FindNode { .. } | Request::FindValue { .. } => Ok(()),
        },
        Message::Route(RouteMessage::Forward {
            ahead,
            behind,
            data,
            ..
        }) => {
            if ahead.len() > MAX_RELAYS_PER_ROUTE || behind.len() > MAX_RELAYS_PER_ROUTE + 1 {
                return Err(DecodeError::OutOfBounds("route length"));
            }
            if data.len() > MAX_ROUTE_DATA {
                return Err(DecodeError::OutOfBounds("route data"));
            }
            check_contacts(ahead)?;
            check_contacts(behind)
        }
        Message::Gossip(g) => g.check_bounds().map_err(|e| DecodeError::OutOfBounds(e.0)),
        Message::Route(RouteMessage::Backward { ahead, data, .. }) => {
            if ahead.len() > MAX_RELAYS_PER_ROUTE + 1 {
                return Err(DecodeError::OutOfBounds("route length"));
            }
            if data.len() > MAX_ROUTE_DATA {
                return Err(DecodeError::OutOfBounds("route data"));
            }
            check_contacts(ahead)
        }
        Message::Dht(DhtMessage::Response { body, position, .. }) => {
            check_position(position.as_ref())?;
            check_response(body)
        }
    }
}

/// Coordinates a peer sends must be numbers: NaN or infinity never reach Vivaldi or scoring
/// (found by the `wire` fuzz target: a NaN position decoded, and so also failed to equal itself).
fn check_position(p: Option<&Position>) -> Result<(), DecodeError> {
    match p {
        Some(p)
            if !(p.coords.x.is_finite()
                && p.coords.y.is_finite()
                && p.coords.height.is_finite()
                && p.error.is_finite()) =>
        {
            Err(DecodeError::OutOfBounds("position"))
        }
        _ => Ok(()),
    }
}

fn check_response(body: &Response) -> Result<(), DecodeError> {
    match body {
        Response::Nodes { closer } => check_contacts(closer),
        Response::Value { record, closer } => {
            check_contacts(closer)?;
            record.as_ref().map_or(Ok(()), check_record)
        }
        Response::Pong | Response::Stored { .. } => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Keypair;
    use crate::record::tests::service;
    use proptest::prelude::*;
    use rand::SeedableRng;

    fn contact(i: u8) -> Contact {
        Contact {
            peer: PeerId::from_bytes([i; 32]),
            addr: Addr::new(format!("10.0.0.{i}:4000")),
        }
    }

    fn samples() -> Vec<Message> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let kp = Keypair::generate(&mut rng);
        let rec = service(&kp, 3, 99);
        vec![
            Message::Dht(DhtMessage::Request {
                id: 1,
                mode: Mode::Server,
                body: Request::Ping,
            }),
            Message::Dht(DhtMessage::Request {
                id: u64::MAX,
                mode: Mode::Client,
                body: Request::FindNode {
                    target: Key([5; 32]),
                },
            }),
            Message::Dht(DhtMessage::Request {
                id: 7,
                mode: Mode::Server,
                body: Request::Store {
                    record: rec.clone(),
                },
            }),
            Message::Dht(DhtMessage::Response {
                id: 7,
                position: None,
                body: Response::Nodes {
                    closer: (0..20).map(contact).collect(),
                },
            }),
            Message::Dht(DhtMessage::Response {
                id: 8,
                position: None,
                body: Response::Value {
                    record: Some(rec),
                    closer: vec![],
                },
            }),
            Message::Dht(DhtMessage::Response {
                id: 9,
                position: None,
                body: Response::Stored {
                    result: Err(RecordError::NameTaken),
                },
            }),
        ]
    }

    /// Route data is encoded as bytes (one copy) rather than element by element; postcard
    /// writes both the same way, so frames from before the change still decode.
    #[test]
    fn route_data_as_bytes_is_the_old_encoding() {
        #[derive(Serialize)]
        enum OldRoute {
            Backward {
                route: u64,
                ahead: Vec<Contact>,
                data: Vec<u8>,
            },
        }
        let data: Vec<u8> = (0..=255).collect();
        let new = postcard::to_stdvec(&RouteMessage::Backward {
            route: 7,
            ahead: vec![],
            data: data.clone(),
        })
        .expect("encodes");
        let mut old = postcard::to_stdvec(&OldRoute::Backward {
            route: 7,
            ahead: vec![],
            data,
        })
        .expect("encodes");
        // The variant index: Backward is the second variant of RouteMessage, the first here.
        old[0] = 1;
        assert_eq!(new, old);
    }

    #[test]
    fn samples_round_trip_and_are_compact() {
        for m in samples() {
            let bytes = encode(&m).expect("encodes");
            assert_eq!(bytes[0], WIRE_VERSION);
            assert_eq!(decode(&bytes), Ok(m));
        }
        let ping = encode(&samples()[0]).expect("encodes");
        assert!(ping.len() <= 6, "a ping is {} bytes", ping.len());
    }

    #[test]
    fn bad_input_gives_the_right_error() {
        let good = encode(&samples()[3]).expect("encodes");
        assert_eq!(decode(&[]), Err(DecodeError::Empty));
        assert_eq!(decode(&[2, 0]), Err(DecodeError::UnknownVersion(2)));
        assert!(matches!(
            decode(&good[..good.len() - 3]),
            Err(DecodeError::Malformed(_))
        ));
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(decode(&trailing), Err(DecodeError::TrailingBytes(1)));
        let big = vec![WIRE_VERSION; MAX_MESSAGE_SIZE + 1];
        assert_eq!(
            decode(&big),
            Err(DecodeError::TooLarge(MAX_MESSAGE_SIZE + 1))
        );
        let too_many = Message::Dht(DhtMessage::Response {
            id: 1,
            position: None,
            body: Response::Nodes {
                closer: (0..40).map(contact).collect(),
            },
        });
        let bytes = encode(&too_many).expect("encodes");
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::OutOfBounds("too many contacts"))
        );
    }

    #[test]
    fn oversized_messages_are_not_encoded() {
        let m = Message::Dht(DhtMessage::Response {
            id: 1,
            position: None,
            body: Response::Nodes {
                closer: (0..200)
                    .map(|i| Contact {
                        peer: PeerId::from_bytes([i as u8; 32]),
                        addr: Addr::new("x".repeat(200)),
                    })
                    .collect(),
            },
        });
        assert!(matches!(encode(&m), Err(EncodeError::TooLarge(_))));
    }

    #[test]
    fn a_position_that_is_not_a_number_is_refused() {
        let mut m = DhtMessage::Response {
            id: 1,
            position: Some(Position {
                coords: crate::record::Coordinates {
                    x: 1.0,
                    y: 2.0,
                    height: 0.5,
                },
                error: 0.3,
            }),
            body: Response::Pong,
        };
        let ok = encode(&Message::Dht(m.clone())).expect("encodes");
        assert!(decode(&ok).is_ok());
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            if let DhtMessage::Response {
                position: Some(p), ..
            } = &mut m
            {
                p.coords.x = bad;
            }
            let bytes = encode(&Message::Dht(m.clone())).expect("encodes");
            assert_eq!(decode(&bytes), Err(DecodeError::OutOfBounds("position")));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode(&bytes);
            let mut v = vec![WIRE_VERSION];
            v.extend_from_slice(&bytes);
            let _ = decode(&v);
        }

        #[test]
        fn mutated_messages_never_panic(i in 0usize..6, pos in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
            let mut bytes = encode(&samples()[i]).expect("encodes");
            let p = pos.index(bytes.len());
            bytes[p] = byte;
            let _ = decode(&bytes);
            let c = cut.index(bytes.len());
            let _ = decode(&bytes[..c]);
        }

        #[test]
        fn find_node_round_trips(id in any::<u64>(), target in any::<[u8; 32]>(), server in any::<bool>()) {
            let m = Message::Dht(DhtMessage::Request {
                id,
                mode: if server { Mode::Server } else { Mode::Client },
                body: Request::FindNode { target: Key(target) },
            });
            prop_assert_eq!(decode(&encode(&m).expect("encodes")), Ok(m));
        }

        #[test]
        fn nodes_round_trip(id in any::<u64>(), peers in proptest::collection::vec((any::<[u8; 32]>(), "[a-z0-9.:/]{1,40}"), 0..MAX_CONTACTS)) {
            let m = Message::Dht(DhtMessage::Response {
                id,
                position: None,
                body: Response::Nodes {
                    closer: peers.into_iter().map(|(p, a)| Contact { peer: PeerId::from_bytes(p), addr: Addr::new(a) }).collect(),
                },
            });
            prop_assert_eq!(decode(&encode(&m).expect("encodes")), Ok(m));
        }
    }
}
