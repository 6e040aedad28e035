//! Dialling peers from a throwaway identity, to check they answer (`beam network test`).
//!
//! A swarm with TCP and QUIC, Noise and yamux and no behaviour: a dial succeeds when the
//! peer completes the handshake as the identity its `/p2p/…` names (Noise checks it), which
//! is what a beam node needs of a bootstrap peer before anything else.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::{Multiaddr, noise, tcp, yamux};

use super::addr::{AddrPolicy, split_peer};

/// A peer that answered.
#[derive(Debug)]
pub struct Answered {
    /// Its libp2p peer id (as `beam://…` when it is a beam identity).
    pub peer: String,
    /// From the dial to the end of the handshake.
    pub handshake: Duration,
}

/// Dials each address at once; each result within `timeout`.
pub async fn dial_all(
    addrs: &[Multiaddr],
    timeout: Duration,
    allow_private: bool,
) -> Vec<(Multiaddr, Result<Answered, String>)> {
    let mut results: Vec<(Multiaddr, Option<Result<Answered, String>>)> =
        addrs.iter().map(|a| (a.clone(), None)).collect();
    if addrs.is_empty() {
        return vec![];
    }
    let mut swarm = match libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map(|b| b.with_quic())
        .map_err(|e| e.to_string())
        .and_then(|b| {
            b.with_behaviour(|_| libp2p::swarm::dummy::Behaviour)
                .map_err(|e| e.to_string())
        }) {
        Ok(b) => b
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(1)))
            .build(),
        Err(e) => {
            return addrs
                .iter()
                .map(|a| (a.clone(), Err(format!("cannot set up a dialler: {e}"))))
                .collect();
        }
    };
    let policy = AddrPolicy { allow_private };
    let start = Instant::now();
    let mut by_conn = HashMap::new();
    for (i, (addr, result)) in results.iter_mut().enumerate() {
        let (base, id) = split_peer(addr);
        if !policy.dialable(&base) {
            *result = Some(Err(
                "a private or local address: beam dials it only with --allow-private-addrs".into(),
            ));
            continue;
        }
        let opts = match id {
            // Always: a second address of the same peer is dialled too.
            Some(id) => DialOpts::peer_id(id)
                .addresses(vec![base])
                .condition(libp2p::swarm::dial_opts::PeerCondition::Always)
                .build(),
            None => DialOpts::unknown_peer_id().address(base).build(),
        };
        let conn = opts.connection_id();
        match swarm.dial(opts) {
            Ok(()) => {
                by_conn.insert(conn, i);
            }
            Err(e) => *result = Some(Err(e.to_string())),
        }
    }
    let deadline = tokio::time::Instant::now() + timeout;
    while results.iter().any(|(_, r)| r.is_none()) {
        let ev = match tokio::time::timeout_at(deadline, swarm.select_next_some()).await {
            Ok(ev) => ev,
            Err(_) => break,
        };
        match ev {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                ..
            } => {
                if let Some(&i) = by_conn.get(&connection_id) {
                    let peer = super::addr::from_libp2p(&peer_id)
                        .map_or(peer_id.to_string(), |p| p.to_string());
                    results[i].1 = Some(Ok(Answered {
                        peer,
                        handshake: start.elapsed(),
                    }));
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                error,
                ..
            } => {
                if let Some(&i) = by_conn.get(&connection_id) {
                    results[i].1 = Some(Err(super::first_line(&error.to_string())));
                }
            }
            _ => {}
        }
    }
    results
        .into_iter()
        .map(|(a, r)| {
            let r = r.unwrap_or_else(|| Err(format!("no answer within {} s", timeout.as_secs())));
            (a, r)
        })
        .collect()
}
