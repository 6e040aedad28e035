//! Incoming connections bounded by the IP address they come from: one host cannot hold the
//! node's handshake slots or connection slots, whatever peer identities it makes up.
//!
//! libp2p's `connection_limits` bounds connections per peer identity, but an identity costs a
//! key pair, and a connection still in its handshake has none. A host opening TCP connections
//! and never finishing the handshake holds a file descriptor and a task each until the
//! handshake times out; with the common soft limit of 1,024 descriptors, a few thousand of
//! them left the node unable to open the connection to its own local port for a client that
//! was already connected (measured: `Too many open files`). So:
//!
//! - handshakes (connections accepted, not yet authenticated) from one address, and in total,
//!   are bounded: over either, a new connection is closed as soon as it is accepted;
//! - established incoming connections from one address are bounded too.
//!
//! Connections through a relay (`/p2p-circuit`) carry the relay's address, not the peer's, and
//! are not counted here (the relay bounds its circuits itself). [`Counts`] is the pure
//! bookkeeping (unit-tested); [`Behaviour`] plugs it into the swarm.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p::PeerId;
use libp2p::core::{Endpoint, Multiaddr, multiaddr::Protocol, transport::PortUse};
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm, behaviour::ListenFailure, dummy,
};

/// The bounds (`limits.handshakesPerAddress`, `limits.handshakesTotal`,
/// `limits.connectionsPerAddress`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Incoming connections still in their handshake from one address.
    pub handshakes_per_address: usize,
    /// ... from all addresses together.
    pub handshakes_total: usize,
    /// Established incoming connections from one address.
    pub connections_per_address: usize,
}

/// Why a connection was refused; the cause of libp2p's `ListenError::Denied`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Its address had `handshakes_per_address` in their handshake.
    #[error("{0} handshakes already pending from this address (limits.handshakesPerAddress)")]
    HandshakesPerAddress(usize),
    /// `handshakes_total` were in their handshake.
    #[error("{0} handshakes already pending (limits.handshakesTotal)")]
    HandshakesTotal(usize),
    /// Its address had `connections_per_address` established.
    #[error("{0} connections already held from this address (limits.connectionsPerAddress)")]
    ConnectionsPerAddress(usize),
}

/// Connections in their handshake and established, by address.
#[derive(Debug)]
pub struct Counts {
    bounds: Bounds,
    pending: HashMap<ConnectionId, IpAddr>,
    established: HashMap<ConnectionId, IpAddr>,
    pending_by: HashMap<IpAddr, usize>,
    established_by: HashMap<IpAddr, usize>,
}

fn inc(m: &mut HashMap<IpAddr, usize>, ip: IpAddr) {
    *m.entry(ip).or_insert(0) += 1;
}

fn dec(m: &mut HashMap<IpAddr, usize>, ip: IpAddr) {
    if let Some(n) = m.get_mut(&ip) {
        *n -= 1;
        if *n == 0 {
            m.remove(&ip);
        }
    }
}

impl Counts {
    /// Nothing counted yet.
    pub fn new(bounds: Bounds) -> Self {
        Self {
            bounds,
            pending: HashMap::new(),
            established: HashMap::new(),
            pending_by: HashMap::new(),
            established_by: HashMap::new(),
        }
    }

    /// A connection from `ip` was accepted and starts its handshake.
    pub fn begin(&mut self, id: ConnectionId, ip: IpAddr) -> Result<(), Refused> {
        let b = self.bounds;
        if self.pending_by.get(&ip).copied().unwrap_or(0) >= b.handshakes_per_address {
            return Err(Refused::HandshakesPerAddress(b.handshakes_per_address));
        }
        if self.pending.len() >= b.handshakes_total {
            return Err(Refused::HandshakesTotal(b.handshakes_total));
        }
        self.pending.insert(id, ip);
        inc(&mut self.pending_by, ip);
        Ok(())
    }

    /// Connection `id` from `ip` finished its handshake.
    pub fn establish(&mut self, id: ConnectionId, ip: IpAddr) -> Result<(), Refused> {
        self.end_handshake(id);
        let b = self.bounds;
        if self.established_by.get(&ip).copied().unwrap_or(0) >= b.connections_per_address {
            return Err(Refused::ConnectionsPerAddress(b.connections_per_address));
        }
        self.established.insert(id, ip);
        inc(&mut self.established_by, ip);
        Ok(())
    }

    fn end_handshake(&mut self, id: ConnectionId) {
        if let Some(ip) = self.pending.remove(&id) {
            dec(&mut self.pending_by, ip);
        }
    }

    /// Connection `id` failed or closed, whatever its state.
    pub fn forget(&mut self, id: ConnectionId) {
        self.end_handshake(id);
        if let Some(ip) = self.established.remove(&id) {
            dec(&mut self.established_by, ip);
        }
    }

    /// `(in their handshake, established)` incoming connections counted now.
    #[cfg(test)]
    fn counted(&self) -> (usize, usize) {
        (self.pending.len(), self.established.len())
    }
}

/// The address a remote address is counted under, unless it is relayed (or has none): an IPv4
/// address (IPv4-mapped IPv6 included), or an IPv6 address's /64 (one host usually has a whole
/// /64 to pick addresses from).
fn direct_ip(addr: &Multiaddr) -> Option<IpAddr> {
    if addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
        return None;
    }
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(match ip.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(ip) & !((1u128 << 64) - 1),
            )),
        }),
        _ => None,
    })
}

/// [`Counts`] as a libp2p behaviour: denies what [`Counts`] refuses.
pub struct Behaviour {
    counts: Counts,
}

impl Behaviour {
    /// Enforces `bounds`.
    pub fn new(bounds: Bounds) -> Self {
        Self {
            counts: Counts::new(bounds),
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        match direct_ip(remote) {
            Some(ip) => self.counts.begin(id, ip).map_err(ConnectionDenied::new),
            None => Ok(()),
        }
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        _peer: PeerId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if let Some(ip) = direct_ip(remote) {
            self.counts
                .establish(id, ip)
                .map_err(ConnectionDenied::new)?;
        }
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        match event {
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. })
            | FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => {
                self.counts.forget(connection_id);
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Bounds = Bounds {
        handshakes_per_address: 2,
        handshakes_total: 3,
        connections_per_address: 2,
    };

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn one_address_cannot_take_the_handshake_slots_of_others() {
        let mut c = Counts::new(B);
        let ids: Vec<ConnectionId> = (1..=6).map(ConnectionId::new_unchecked).collect();
        assert_eq!(c.begin(ids[0], ip(1)), Ok(()));
        assert_eq!(c.begin(ids[1], ip(1)), Ok(()));
        assert_eq!(
            c.begin(ids[2], ip(1)),
            Err(Refused::HandshakesPerAddress(2))
        );
        assert_eq!(
            c.begin(ids[3], ip(2)),
            Ok(()),
            "another address still gets in"
        );
        assert_eq!(c.begin(ids[4], ip(3)), Err(Refused::HandshakesTotal(3)));
        // A finished handshake frees its slot.
        assert_eq!(c.establish(ids[0], ip(1)), Ok(()));
        assert_eq!(c.begin(ids[4], ip(3)), Ok(()));
        assert_eq!(c.counted(), (3, 1));
    }

    #[test]
    fn established_connections_are_bounded_per_address_and_freed_when_closed() {
        let mut c = Counts::new(B);
        let id = ConnectionId::new_unchecked;
        for i in 1..=3 {
            c.begin(id(i), ip(1)).ok();
        }
        assert_eq!(c.establish(id(1), ip(1)), Ok(()));
        assert_eq!(c.establish(id(2), ip(1)), Ok(()));
        assert_eq!(
            c.establish(id(3), ip(1)),
            Err(Refused::ConnectionsPerAddress(2))
        );
        // Refused at establishment: libp2p reports a listen failure, which forgets it.
        c.forget(id(3));
        assert_eq!(c.counted(), (0, 2));
        c.forget(id(1));
        c.forget(id(1));
        assert_eq!(c.counted(), (0, 1), "forgetting twice counts once");
        assert_eq!(c.begin(id(4), ip(1)), Ok(()));
        assert_eq!(c.establish(id(4), ip(1)), Ok(()));
    }

    #[test]
    fn relayed_connections_are_not_counted_against_the_relay_and_ipv6_counts_by_64() {
        let relayed: Multiaddr = "/ip4/10.0.0.1/tcp/4001/p2p/12D3KooWHtNBSdMH5wmpE3VYLnD9aqmBEEGwKKHR7jZ7cZeF3kYx/p2p-circuit"
            .parse()
            .expect("addr");
        assert_eq!(direct_ip(&relayed), None);
        let a: Multiaddr = "/ip6/2001:db8:1:2::5/udp/4001/quic-v1"
            .parse()
            .expect("addr");
        let b: Multiaddr = "/ip6/2001:db8:1:2:ffff::9/tcp/4001".parse().expect("addr");
        assert_eq!(direct_ip(&a), Some("2001:db8:1:2::".parse().expect("ip")));
        assert_eq!(direct_ip(&a), direct_ip(&b), "one /64 is one address");
        let mapped: Multiaddr = "/ip6/::ffff:10.0.0.1/tcp/4001".parse().expect("addr");
        assert_eq!(
            direct_ip(&mapped),
            Some(ip(1)),
            "IPv4-mapped counts as the IPv4"
        );
    }
}
