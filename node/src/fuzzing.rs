//! Fuzzing entry points: each takes bytes as a peer could send them and must never panic. The
//! cargo-fuzz targets under `fuzz/` call these ([`TARGETS`]), and the normal test suite runs
//! the committed corpus (`fuzz/corpus/<target>/`) and random inputs through the same functions
//! (`node/tests/fuzz_corpus.rs`), so CI exercises every decoder a peer reaches.
//!
//! A panic here is a bug found. Besides "no panic", the harnesses assert what must hold for
//! whatever was accepted: a decoded message encodes back to one that decodes to itself, and
//! whatever a node sends in answer to any input can be encoded.

use std::time::{Duration, Instant};

use crate::dht::Publish;
use crate::e2e::{Initiator, Responder, StaticKey};
use crate::record::{Participation, Record, ServiceRecord};
use crate::wire::{self, Contact};
use crate::{Addr, Keypair, Node, NodeConfig, PeerId};

/// A fuzz target: its name (the directory of its corpus) and its harness.
pub struct Target {
    /// `fuzz/corpus/<name>/`, `fuzz/fuzz_targets/<name>.rs`.
    pub name: &'static str,
    /// The harness.
    pub run: fn(&[u8]),
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "wire",
        run: wire,
    },
    Target {
        name: "record",
        run: record,
    },
    Target {
        name: "node",
        run: node,
    },
    Target {
        name: "e2e_handshake",
        run: e2e_handshake,
    },
    Target {
        name: "e2e_frames",
        run: e2e_frames,
    },
    Target {
        name: "tunnel",
        run: tunnel,
    },
];

/// The wire codec: whatever decodes re-encodes, and decodes to itself again.
pub fn wire(data: &[u8]) {
    if let Ok(m) = wire::decode(data) {
        let again = wire::encode(&m).expect("a decoded message encodes");
        assert_eq!(wire::decode(&again), Ok(m), "decode(encode(m)) != m");
    }
}

/// A record as a holder receives it: decoding, bounds, signature and freshness checks.
pub fn record(data: &[u8]) {
    if let Ok(r) = postcard::from_bytes::<Record>(data) {
        let _ = r.check_bounds();
        let _ = r.verify_signature();
        let _ = r.check(UNIX_NOW, Duration::from_secs(3600));
        let _ = (r.key(), r.owner(), r.seq(), r.expires(), r.encoded_len());
    }
}

const UNIX_NOW: u64 = 1_800_000_000;

fn peers() -> [PeerId; 4] {
    [1u8, 2, 3, 4].map(|i| Keypair::from_secret([i; 32]).peer_id())
}

fn addr(i: usize) -> Addr {
    Addr::new(format!("/ip4/203.0.113.{}/tcp/4001", i + 1))
}

/// The whole node: `data` is a stream of `[who, len_hi, len_lo, message…]` chunks, each a
/// datagram from one of four peers (`who & 3`), time moving `who >> 2` × 10 ms before it,
/// timers fired when `who`'s top bit is set. Everything the node sends or reports is drained.
/// Whatever it sends must encode.
pub fn node(data: &[u8]) {
    // Only differences between instants matter to the node; this one is never compared with
    // anything outside the run.
    #[allow(clippy::disallowed_methods)]
    let start = Instant::now();
    let mut n = Node::new(
        NodeConfig::new(Participation::Full),
        Keypair::from_secret([9; 32]),
        1,
        start,
        UNIX_NOW,
    );
    let peers = peers();
    n.bootstrap(
        start,
        peers.iter().enumerate().map(|(i, p)| Contact {
            peer: *p,
            addr: addr(i),
        }),
    );
    let mut now = start;
    let mut rest = data;
    while let [who, hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (msg, after) = tail.split_at(len);
        now += Duration::from_millis(u64::from(*who >> 2 & 0x1f) * 10);
        let from = usize::from(*who & 3);
        n.handle_datagram(now, peers[from], addr(from), msg);
        if *who & 0x80 != 0 {
            n.handle_timeout(now);
        }
        drain(&mut n);
        rest = after;
    }
    n.handle_timeout(now + Duration::from_secs(5));
    drain(&mut n);
}

fn drain(n: &mut Node) {
    while let Some(t) = n.poll_transmit() {
        assert!(
            t.encode().is_ok(),
            "the node sent a message it cannot encode"
        );
    }
    while n.poll_event().is_some() {}
}

fn keys() -> (StaticKey, StaticKey) {
    (
        StaticKey::from_secret([5; 32]),
        StaticKey::from_secret([6; 32]),
    )
}

/// The three Noise XK handshake messages, each where it is received.
pub fn e2e_handshake(data: &[u8]) {
    let (client, service) = keys();
    let _ = Responder::new(&service, [1; 32]).respond(data);
    if let Ok((init, _)) = Initiator::start(&client, &service.public(), [2; 32]) {
        let _ = init.finish(data, b"first");
    }
    if let Ok((_, msg1)) = Initiator::start(&client, &service.public(), [3; 32])
        && let Ok((pending, _)) = Responder::new(&service, [4; 32]).respond(&msg1)
    {
        let _ = pending.finish(data);
    }
}

/// Sealed frames on an established session, each way.
pub fn e2e_frames(data: &[u8]) {
    let (client, service) = keys();
    let Ok((init, msg1)) = Initiator::start(&client, &service.public(), [7; 32]) else {
        return;
    };
    let Ok((pending, msg2)) = Responder::new(&service, [8; 32]).respond(&msg1) else {
        return;
    };
    let Ok((mut c, msg3)) = init.finish(&msg2, b"") else {
        return;
    };
    let Ok((mut s, _)) = pending.finish(&msg3) else {
        return;
    };
    let _ = s.decrypt(data);
    let _ = c.decrypt(data);
    let _ = s.decrypt_chunk(data);
    let mut out = vec![0u8; crate::e2e::MAX_CHUNK];
    let _ = c.decrypt_chunk_to(data, &mut out);
}

/// A circuit header as a relay reads it, and a tunnel hello as a service reads it.
pub fn tunnel(data: &[u8]) {
    if let Ok(h) = crate::tunnel::CircuitHeader::decode(data) {
        let again = h.encode().expect("a decoded header encodes");
        assert_eq!(crate::tunnel::CircuitHeader::decode(&again), Ok(h));
    }
    let _ = crate::tunnel::parse_hello(data);
}

/// Seed inputs for every target, made by the protocol itself: the datagrams of a small network
/// of nodes bootstrapping, publishing and resolving; a signed record; real handshake messages
/// and sealed frames; circuit headers and hellos. `(target, input)`.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = vec![];
    // Three nodes exchanging messages in memory: every datagram is a wire seed, and a run of
    // them addressed to one node is a node seed.
    #[allow(clippy::disallowed_methods)]
    let start = Instant::now();
    let kps: Vec<Keypair> = [1u8, 2, 3, 9]
        .iter()
        .map(|i| Keypair::from_secret([*i; 32]))
        .collect();
    let mut nodes: Vec<Node> = kps
        .iter()
        .enumerate()
        .map(|(i, kp)| {
            Node::new(
                NodeConfig::new(Participation::Full),
                kp.clone(),
                i as u64,
                start,
                UNIX_NOW,
            )
        })
        .collect();
    let ids: Vec<PeerId> = nodes.iter().map(Node::peer_id).collect();
    for (i, n) in nodes.iter_mut().enumerate() {
        n.bootstrap(
            start,
            ids.iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(j, p)| Contact {
                    peer: *p,
                    addr: addr(j),
                }),
        );
    }
    let service = ServiceRecord {
        peer: ids[0],
        seq: 0,
        expires: 0,
        tor_address: None,
        endpoints: vec![addr(0)],
        relays: vec![],
        reachable: true,
        coordinates: None,
        participation: Participation::Full,
        noise_key: None,
    };
    let _ = nodes[0].publish(start, Publish::Service(service.clone()));
    let _ = nodes[1].publish(start, Publish::Name("fuzz".into()));
    let mut to_last = vec![];
    let mut now = start;
    for round in 0..40 {
        now += Duration::from_millis(50);
        if round == 10 {
            let _ = nodes[2].resolve(now, &crate::app::ServiceRef::Name("fuzz".into()));
        }
        let mut flying = vec![];
        for (i, n) in nodes.iter_mut().enumerate() {
            n.handle_timeout(now);
            while let Some(t) = n.poll_transmit() {
                if let Ok(bytes) = t.encode() {
                    flying.push((i, t.to, bytes));
                }
            }
            while n.poll_event().is_some() {}
        }
        for (from, to, bytes) in flying {
            if out.iter().filter(|(t, _)| *t == "wire").count() < 64 {
                out.push(("wire", bytes.clone()));
            }
            if let Some(j) = ids.iter().position(|p| *p == to) {
                if j == 3 && from < 3 && to_last.len() < 4096 {
                    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
                    to_last.push(from as u8 | 0x04);
                    to_last.extend_from_slice(&len.to_be_bytes());
                    to_last.extend_from_slice(&bytes);
                }
                nodes[j].handle_datagram(now, ids[from], addr(from), &bytes);
            }
        }
    }
    out.push(("node", to_last));
    // A signed record.
    let mut signed = service;
    signed.seq = 1;
    signed.expires = UNIX_NOW + 600;
    if let Ok(bytes) = postcard::to_stdvec(&signed.sign(&kps[0])) {
        out.push(("record", bytes));
    }
    // A handshake and frames.
    let (client, svc) = keys();
    if let Ok((init, msg1)) = Initiator::start(&client, &svc.public(), [2; 32])
        && let Ok((pending, msg2)) = Responder::new(&svc, [1; 32]).respond(&msg1)
        && let Ok((mut c, msg3)) = init.finish(&msg2, b"first")
        && pending.finish(&msg3).is_ok()
    {
        out.push(("e2e_handshake", msg1));
        out.push(("e2e_handshake", msg2));
        out.push(("e2e_handshake", msg3));
        if let (Ok(a), Ok(b)) = (c.encrypt(b"hello"), c.encrypt_chunk(&[7; 300])) {
            out.push(("e2e_frames", a));
            out.push(("e2e_frames", b));
        }
    }
    // Circuit headers and hellos.
    let header = crate::tunnel::CircuitHeader {
        hops: vec![
            ([1; 32], "/ip4/203.0.113.1/tcp/4001".into()),
            ([2; 32], "/ip4/203.0.113.2/udp/4001/quic-v1".into()),
        ],
    };
    if let Ok(bytes) = header.encode() {
        out.push(("tunnel", bytes));
    }
    out.push(("tunnel", crate::tunnel::hello(None)));
    out.push((
        "tunnel",
        crate::tunnel::hello(Some(b"correct-horse-battery")),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_has_seeds_and_they_pass() {
        let seeds = seeds();
        for t in TARGETS {
            let mine: Vec<&Vec<u8>> = seeds
                .iter()
                .filter(|(n, _)| *n == t.name)
                .map(|(_, b)| b)
                .collect();
            assert!(!mine.is_empty(), "no seeds for {}", t.name);
            for s in mine {
                (t.run)(s);
            }
        }
        // The seeds are real traffic: the wire seeds decode, the node seed is many messages.
        assert!(
            seeds
                .iter()
                .filter(|(n, _)| *n == "wire")
                .all(|(_, b)| wire::decode(b).is_ok())
        );
        let node_seed = &seeds.iter().find(|(n, _)| *n == "node").expect("node").1;
        assert!(node_seed.len() > 200, "node seed {} bytes", node_seed.len());
    }
}
