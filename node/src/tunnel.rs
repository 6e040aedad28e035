//! The tunnel's own framing, which the driver reads from peers: the circuit header a relay
//! reads first, and the hello a service reads before it touches its local port. Decoding
//! never panics and refuses anything over its bounds.

use serde::{Deserialize, Serialize};

use crate::record::MAX_ADDR_LEN;
use crate::wire::MAX_RELAYS_PER_ROUTE;

/// Largest encoded circuit header.
pub const MAX_HEADER: usize = 4096;
/// Most hops a header names: the relays of the longest route and the service.
pub const MAX_HOPS: usize = MAX_RELAYS_PER_ROUTE + 1;

/// The first frame of a circuit: the hops still ahead (the last is the service), each a peer id
/// and a multiaddr.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CircuitHeader {
    /// `(peer id, multiaddr)` of each hop.
    pub hops: Vec<([u8; 32], String)>,
}

/// Why a header or hello was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TunnelError {
    /// Not decodable.
    #[error("a malformed {0}")]
    Malformed(&'static str),
    /// Decodable, but over a bound.
    #[error("a circuit header over its bounds ({0})")]
    OutOfBounds(&'static str),
    /// A tunnel version this node does not speak.
    #[error("unknown tunnel version {0}")]
    Version(u8),
}

impl CircuitHeader {
    /// Encodes the header.
    pub fn encode(&self) -> Result<Vec<u8>, TunnelError> {
        self.check()?;
        postcard::to_stdvec(self).map_err(|_| TunnelError::Malformed("circuit header"))
    }

    /// Decodes a header read from a peer.
    pub fn decode(bytes: &[u8]) -> Result<CircuitHeader, TunnelError> {
        if bytes.len() > MAX_HEADER {
            return Err(TunnelError::OutOfBounds("size"));
        }
        let (h, rest) = postcard::take_from_bytes::<CircuitHeader>(bytes)
            .map_err(|_| TunnelError::Malformed("circuit header"))?;
        if !rest.is_empty() {
            return Err(TunnelError::Malformed("circuit header (trailing bytes)"));
        }
        h.check()?;
        Ok(h)
    }

    fn check(&self) -> Result<(), TunnelError> {
        if self.hops.len() > MAX_HOPS {
            return Err(TunnelError::OutOfBounds("too many hops"));
        }
        if self.hops.iter().any(|(_, a)| a.len() > MAX_ADDR_LEN) {
            return Err(TunnelError::OutOfBounds("hop address"));
        }
        Ok(())
    }

    /// The header the next hop gets: this one without its first hop.
    pub fn rest(&self) -> CircuitHeader {
        CircuitHeader {
            hops: self.hops.iter().skip(1).cloned().collect(),
        }
    }
}

/// A tunnel with no access token.
pub const HELLO_V1: u8 = 1;
/// A tunnel with an access token: `[2, len, token]`.
pub const HELLO_TOKEN: u8 = 2;
/// Longest access token (its length is one byte on the wire).
pub const MAX_TOKEN: usize = 128;

/// The first bytes a client sends on a tunnel: the version, and its access token if any
/// (at most [`MAX_TOKEN`] bytes; a longer one is cut there and so refused).
pub fn hello(token: Option<&[u8]>) -> Vec<u8> {
    match token {
        None => vec![HELLO_V1],
        Some(t) => {
            let t = &t[..t.len().min(MAX_TOKEN)];
            let mut v = vec![HELLO_TOKEN, t.len() as u8];
            v.extend_from_slice(t);
            v
        }
    }
}

/// Reads a whole hello: the token presented, if any.
pub fn parse_hello(b: &[u8]) -> Result<Option<&[u8]>, TunnelError> {
    match b {
        [HELLO_V1] => Ok(None),
        [HELLO_TOKEN, n, token @ ..]
            if token.len() == usize::from(*n) && !token.is_empty() && token.len() <= MAX_TOKEN =>
        {
            Ok(Some(token))
        }
        [HELLO_V1 | HELLO_TOKEN, ..] | [] => Err(TunnelError::Malformed("tunnel hello")),
        [v, ..] => Err(TunnelError::Version(*v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hellos_round_trip_and_bad_ones_are_refused() {
        assert_eq!(parse_hello(&hello(None)), Ok(None));
        assert_eq!(
            parse_hello(&hello(Some(b"a-token"))),
            Ok(Some(&b"a-token"[..]))
        );
        let bad = TunnelError::Malformed("tunnel hello");
        assert_eq!(parse_hello(&[]), Err(bad.clone()));
        assert_eq!(parse_hello(&[2, 5, b'a']), Err(bad.clone()));
        assert_eq!(parse_hello(&[2, 0]), Err(bad.clone()));
        assert_eq!(parse_hello(&[1, 0]), Err(bad));
        assert_eq!(parse_hello(&[9]), Err(TunnelError::Version(9)));
        let long = vec![b'x'; 300];
        assert_eq!(
            parse_hello(&hello(Some(&long))),
            Ok(Some(&long[..MAX_TOKEN]))
        );
    }

    #[test]
    fn headers_round_trip_and_out_of_bounds_ones_are_refused() {
        let h = CircuitHeader {
            hops: vec![
                ([1; 32], "/ip4/127.0.0.1/tcp/1".into()),
                ([2; 32], String::new()),
            ],
        };
        assert_eq!(
            CircuitHeader::decode(&h.encode().expect("encodes")),
            Ok(h.clone())
        );
        assert_eq!(h.rest().hops, h.hops[1..].to_vec());
        let many = CircuitHeader {
            hops: vec![([0; 32], String::new()); MAX_HOPS + 1],
        };
        assert!(many.encode().is_err());
        let bytes = postcard::to_stdvec(&many).expect("postcard");
        assert_eq!(
            CircuitHeader::decode(&bytes),
            Err(TunnelError::OutOfBounds("too many hops"))
        );
        let mut trailing = h.encode().expect("encodes");
        trailing.push(0);
        assert!(CircuitHeader::decode(&trailing).is_err());
    }

    proptest! {
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = CircuitHeader::decode(&bytes);
            let _ = parse_hello(&bytes);
        }
    }
}
