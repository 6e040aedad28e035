//! What `beam network test connectivity` reports: reachability, the NAT's mapping behaviour,
//! and whether hole punching has worked.
//!
//! Reachability is AutoNAT's verdict (peers dial this node's addresses back). The mapping
//! behaviour is read from the addresses peers observed this node at (identify's
//! `observed_addr`) over QUIC: every QUIC connection leaves from the one UDP socket, so a NAT
//! that maps that socket to one public port for every destination (endpoint-independent, as
//! RFC 4787 asks; "cone") shows all peers the same port, and one that maps it per destination
//! (address-dependent, "symmetric") shows each a different one. Hole punching works through
//! the first and rarely through the second. TCP counts only one way: beam's TCP dials leave
//! from the listen port (port reuse), so peers agreeing on one TCP port also shows an
//! endpoint-independent mapping (two peers saw one public port: one mapping served both),
//! but a dial that could not reuse the port leaves from an ephemeral one, so TCP ports that
//! differ show nothing.

use std::collections::BTreeMap;
use std::net::IpAddr;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

/// Peers whose observation of this node is kept.
pub const MAX_OBSERVATIONS: usize = 64;

/// How the NAT (if any) maps this node's UDP socket, as peers saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mapping {
    /// Peers dial this node: no NAT in the way (or one forwarding its port).
    None,
    /// Every peer saw the same public address and port: hole punching should work.
    EndpointIndependent,
    /// Peers saw different ports: hole punching will mostly fail; relays carry the tunnels.
    AddressDependent,
    /// Too few observations (fewer than two peers over QUIC, and no TCP port seen twice).
    Unknown,
}

impl Mapping {
    /// What it means, for the user.
    pub fn explain(self) -> &'static str {
        match self {
            Mapping::None => "none in the way: peers can dial this node",
            Mapping::EndpointIndependent => {
                "endpoint-independent (a \"cone\" NAT): every peer sees the same public port, so \
                 hole punching should work"
            }
            Mapping::AddressDependent => {
                "address-dependent (a \"symmetric\" NAT): each peer sees another public port, so \
                 hole punching mostly fails and tunnels go through relays"
            }
            Mapping::Unknown => {
                "not known yet: fewer than two peers reported this node's address over QUIC, \
                 and no two over TCP saw the same port"
            }
        }
    }
}

/// The mapping from the observations (peer → the address it saw this node at), given
/// whether AutoNAT found the node public.
pub fn mapping<'a>(
    public: Option<bool>,
    observed: impl IntoIterator<Item = &'a Multiaddr>,
) -> Mapping {
    if public == Some(true) {
        return Mapping::None;
    }
    let (mut quic, mut tcp) = (vec![], vec![]);
    for a in observed {
        match endpoint(a) {
            Some((e, true)) => quic.push(e),
            Some((e, false)) => tcp.push(e),
            None => {}
        }
    }
    // Ports compare only between observers that saw the same public IP (a dual-stack node,
    // or peers on the LAN, see it at other IPs; that is not a NAT's doing).
    let mut by_ip: BTreeMap<IpAddr, Vec<u16>> = BTreeMap::new();
    for (ip, port) in &quic {
        by_ip.entry(*ip).or_default().push(*port);
    }
    let groups: Vec<&Vec<u16>> = by_ip.values().filter(|p| p.len() >= 2).collect();
    if !groups.is_empty() {
        if groups.iter().all(|p| p.iter().all(|x| *x == p[0])) {
            Mapping::EndpointIndependent
        } else {
            Mapping::AddressDependent
        }
    } else if tcp
        .iter()
        .enumerate()
        .any(|(i, e)| tcp[i + 1..].contains(e))
    {
        Mapping::EndpointIndependent
    } else {
        Mapping::Unknown
    }
}

/// The IP and port of a QUIC (`true`) or TCP (`false`) address.
fn endpoint(a: &Multiaddr) -> Option<((IpAddr, u16), bool)> {
    let (mut ip, mut port, mut udp, mut quic) = (None, None, false, false);
    for p in a.iter() {
        match p {
            Protocol::Ip4(v) => ip = Some(IpAddr::V4(v)),
            Protocol::Ip6(v) => ip = Some(IpAddr::V6(v)),
            Protocol::Tcp(t) => port = Some(t),
            Protocol::Udp(u) => {
                port = Some(u);
                udp = true;
            }
            Protocol::QuicV1 => quic = true,
            _ => {}
        }
    }
    if udp && !quic {
        return None;
    }
    Some(((ip?, port?), quic))
}

/// Hole punches (DCUtR) tried by or with this node.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Punches {
    pub succeeded: u64,
    pub failed: u64,
    /// The last failure's reason.
    pub last_error: Option<String>,
}

/// What the driver knows about this node's reachability.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Connectivity {
    /// AutoNAT's verdict: `public`, `private` or `unknown`.
    pub reachability: &'static str,
    /// The address AutoNAT confirmed peers can dial, when public.
    pub public_address: Option<String>,
    /// Dial-backs AutoNAT has agreeing on its verdict.
    pub confidence: usize,
    pub mapping: Mapping,
    /// The distinct addresses peers saw this node at (TCP and QUIC), and how many peers saw
    /// each.
    pub observed: BTreeMap<String, usize>,
    pub hole_punches: Punches,
    /// Relays holding a reservation for this node now (behind a NAT, they carry its tunnels).
    pub reservations: u64,
    /// This node's listen addresses.
    pub listen: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Multiaddr {
        s.parse().expect("multiaddr")
    }

    #[test]
    fn the_mapping_is_read_from_quic_observations_only() {
        let same = [
            a("/ip4/203.0.113.7/udp/40000/quic-v1"),
            a("/ip4/203.0.113.7/udp/40000/quic-v1"),
            a("/ip4/203.0.113.7/tcp/51234"),
        ];
        assert_eq!(mapping(Some(false), &same), Mapping::EndpointIndependent);
        let differ = [
            a("/ip4/203.0.113.7/udp/40000/quic-v1"),
            a("/ip4/203.0.113.7/udp/40001/quic-v1"),
        ];
        assert_eq!(mapping(Some(false), &differ), Mapping::AddressDependent);
        // TCP ports that differ say nothing (an ephemeral source port); agreeing ones do.
        let tcp = [a("/ip4/203.0.113.7/tcp/1"), a("/ip4/203.0.113.7/tcp/2")];
        assert_eq!(mapping(Some(false), &tcp), Mapping::Unknown);
        let tcp = [
            a("/ip4/203.0.113.7/tcp/9"),
            a("/ip4/203.0.113.7/tcp/1"),
            a("/ip4/203.0.113.7/tcp/1"),
        ];
        assert_eq!(mapping(Some(false), &tcp), Mapping::EndpointIndependent);
        // QUIC decides over TCP.
        let both = [
            differ[0].clone(),
            differ[1].clone(),
            tcp[0].clone(),
            tcp[1].clone(),
        ];
        assert_eq!(mapping(Some(false), &both), Mapping::AddressDependent);
        assert_eq!(mapping(None, &same[..1]), Mapping::Unknown);
        // Different IPs (IPv4 and IPv6, or a LAN peer): their ports are not compared.
        let two_ips = [
            a("/ip4/203.0.113.7/udp/40000/quic-v1"),
            a("/ip6/2001:db8::7/udp/40001/quic-v1"),
        ];
        assert_eq!(mapping(Some(false), &two_ips), Mapping::Unknown);
        // Peers that can dial the node: no NAT, whatever they saw.
        assert_eq!(mapping(Some(true), &differ), Mapping::None);
        // A UDP address that is not QUIC is not one.
        let udp = [a("/ip4/1.2.3.4/udp/5"), a("/ip4/1.2.3.4/udp/5")];
        assert_eq!(mapping(None, &udp), Mapping::Unknown);
    }
}
