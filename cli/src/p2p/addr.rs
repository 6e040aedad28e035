//! Identities and addresses between libp2p and the core.
//!
//! beam's [`PeerId`](beam_node::PeerId) is the ed25519 public key itself; libp2p's is that key in
//! an identity multihash, so the two convert both ways without a table. Addresses are
//! multiaddrs in text form inside the core ([`beam_node::Addr`]); which of them may be dialled is
//! decided here: a non-global address learned from a peer would make this node dial hosts on its
//! own LAN, so those are dropped unless `--allow-private-addrs`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

/// The libp2p peer id of a beam peer.
pub fn to_libp2p(peer: &beam_node::PeerId) -> Option<libp2p::PeerId> {
    let pk = libp2p::identity::ed25519::PublicKey::try_from_bytes(peer.as_bytes()).ok()?;
    Some(libp2p::identity::PublicKey::from(pk).to_peer_id())
}

/// The beam peer id of a libp2p peer (only ed25519 peers are beam peers).
pub fn from_libp2p(peer: &libp2p::PeerId) -> Option<beam_node::PeerId> {
    let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if mh.code() != 0 {
        return None; // not an identity multihash: an RSA or other long key
    }
    let pk = libp2p::identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    let ed = pk.try_into_ed25519().ok()?;
    Some(beam_node::PeerId::from_bytes(ed.to_bytes()))
}

/// Whether an IP address is globally routable (not loopback, private, link-local, CGNAT, …).
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_global_v4(v4),
        IpAddr::V6(v6) => is_global_v6(v6),
    }
}

fn is_global_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0)
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240)
}

fn is_global_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (seg[0] & 0xfe00) == 0xfc00 // unique local
        || (seg[0] & 0xffc0) == 0xfe80 // link local
        || (seg[0] == 0x2001 && seg[1] == 0x0db8)) // documentation
}

/// The IP of a multiaddr, if it starts with one.
pub fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    match addr.iter().next()? {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    }
}

/// What addresses this node dials and publishes.
#[derive(Clone, Copy, Debug)]
pub struct AddrPolicy {
    /// Accept loopback and private addresses (tests on one machine, in namespaces, on a LAN).
    pub allow_private: bool,
}

impl AddrPolicy {
    /// Whether `addr` may be dialled or published: a TCP or QUIC address on an IP that is
    /// global (or any IP, when private ones are allowed), not the unspecified address, and not
    /// a relay circuit.
    pub fn usable(&self, addr: &Multiaddr) -> bool {
        self.usable_direct(addr)
    }

    /// Whether `addr` may be dialled: a usable direct address, or a relay circuit
    /// (`…/p2p/RELAY/p2p-circuit/…`) through a relay at a usable address.
    pub fn dialable(&self, addr: &Multiaddr) -> bool {
        let relay: Multiaddr = addr
            .iter()
            .take_while(|p| !matches!(p, Protocol::P2pCircuit | Protocol::P2p(_)))
            .collect();
        self.usable_direct(&relay)
    }

    fn usable_direct(&self, addr: &Multiaddr) -> bool {
        let Some(ip) = ip_of(addr) else {
            return false; // DNS names are resolved by whoever publishes them
        };
        if ip.is_unspecified() || addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
            return false;
        }
        let transport_ok = addr.iter().any(|p| {
            matches!(p, Protocol::Tcp(port) if port != 0) || matches!(p, Protocol::QuicV1)
        });
        transport_ok && (self.allow_private || is_global(ip))
    }
}

/// `addr` without a trailing `/p2p/<id>`, and that id.
pub fn split_peer(addr: &Multiaddr) -> (Multiaddr, Option<libp2p::PeerId>) {
    let mut a = addr.clone();
    match a.pop() {
        Some(Protocol::P2p(id)) => (a, Some(id)),
        Some(other) => {
            a.push(other);
            (a, None)
        }
        None => (a, None),
    }
}

/// Whether `addr` is a TCP address (the transport contacts prefer: yamux windows, one socket).
pub fn is_tcp(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::Tcp(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_ids_convert_both_ways() {
        let kp = beam_node::Keypair::from_secret([9; 32]);
        let lp = libp2p::identity::Keypair::ed25519_from_bytes(kp.secret()).expect("key");
        let id = to_libp2p(&kp.peer_id()).expect("ed25519");
        assert_eq!(id, lp.public().to_peer_id());
        assert_eq!(from_libp2p(&id), Some(kp.peer_id()));
    }

    #[test]
    fn policy_drops_private_addresses_unless_allowed() {
        let strict = AddrPolicy {
            allow_private: false,
        };
        let loose = AddrPolicy {
            allow_private: true,
        };
        let lo: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().expect("addr");
        let lan: Multiaddr = "/ip4/192.168.1.5/udp/4001/quic-v1".parse().expect("addr");
        let public: Multiaddr = "/ip4/8.8.8.8/tcp/4001".parse().expect("addr");
        let any: Multiaddr = "/ip4/0.0.0.0/tcp/4001".parse().expect("addr");
        let ephemeral: Multiaddr = "/ip4/8.8.8.8/tcp/0".parse().expect("addr");
        assert!(!strict.usable(&lo) && !strict.usable(&lan) && strict.usable(&public));
        assert!(loose.usable(&lo) && loose.usable(&lan));
        assert!(!loose.usable(&any) && !loose.usable(&ephemeral));
        assert!(!is_global("100.64.0.1".parse().expect("ip")));
        assert!(!is_global("fd00::1".parse().expect("ip")));
        assert!(is_global("2a00::1".parse().expect("ip")));
    }

    #[test]
    fn splits_a_trailing_peer_id() {
        let kp = libp2p::identity::Keypair::generate_ed25519();
        let id = kp.public().to_peer_id();
        let a: Multiaddr = format!("/ip4/127.0.0.1/tcp/1/p2p/{id}")
            .parse()
            .expect("addr");
        let (base, p) = split_peer(&a);
        assert_eq!(p, Some(id));
        assert_eq!(base.to_string(), "/ip4/127.0.0.1/tcp/1");
        assert_eq!(split_peer(&base), (base.clone(), None));
    }
}
