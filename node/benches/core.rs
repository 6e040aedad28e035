//! Criterion micro-benchmarks of the core's hot paths: `cargo bench -p beam-node`.
//!
//! The codec (a FIND_NODE answer, a 4 KiB route frame), the routing table's k closest, a
//! record's full check (bounds, expiry, signature), route selection among 200 candidates, and
//! one end-to-end frame sealed and opened (4 KiB and a 64 KiB stream chunk).

use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::{Duration, Instant};

use beam_node::dht::kbucket::KBucketTable;
use beam_node::e2e::{self, Initiator, Responder, StaticKey};
use beam_node::record::{Coordinates, ServiceRecord};
use beam_node::routing::Strategy;
use beam_node::routing::score::{self, Candidate, Trust};
use beam_node::wire::{self, Contact, DhtMessage, Message, Position, Response, RouteMessage};
use beam_node::{Addr, Key, Keypair, Participation, PeerId};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn rng() -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(7)
}

fn contact(rng: &mut ChaCha8Rng) -> Contact {
    let kp = Keypair::generate(rng);
    Contact {
        peer: kp.peer_id(),
        addr: Addr::new(format!(
            "/ip4/10.{}.{}.{}/tcp/4001",
            rng.random::<u8>(),
            rng.random::<u8>(),
            rng.random::<u8>()
        )),
    }
}

fn codec(c: &mut Criterion) {
    let mut rng = rng();
    let answer = Message::Dht(DhtMessage::Response {
        id: 42,
        body: Response::Nodes {
            closer: (0..20).map(|_| contact(&mut rng)).collect(),
        },
        position: Some(Position {
            coords: Coordinates {
                x: 12.5,
                y: -40.0,
                height: 3.0,
            },
            error: 0.2,
        }),
    });
    let route = Message::Route(RouteMessage::Forward {
        route: 7,
        ahead: vec![contact(&mut rng)],
        behind: vec![contact(&mut rng)],
        data: vec![0xab; wire::MAX_ROUTE_DATA],
    });
    let mut g = c.benchmark_group("codec");
    for (name, msg) in [("find_node_answer_20", &answer), ("route_frame_4k", &route)] {
        let bytes = wire::encode(msg).expect("encodes");
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(format!("encode/{name}"), |b| {
            b.iter(|| wire::encode(black_box(msg)))
        });
        g.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| wire::decode(black_box(&bytes)))
        });
    }
    g.finish();
}

#[allow(clippy::disallowed_methods)] // a benchmark's table needs a time; nothing reads it
fn now() -> Instant {
    Instant::now()
}

fn k_closest(c: &mut Criterion) {
    let mut rng = rng();
    let local = Keypair::generate(&mut rng).peer_id();
    let mut table = KBucketTable::new(Key::of_peer(&local), 20, 8, Duration::from_secs(600));
    let t = now();
    // Offered every peer of a 10,000-peer network: keeps what Kademlia keeps (~k per bucket).
    for _ in 0..10_000 {
        table.insert(contact(&mut rng), t);
    }
    let targets: Vec<Key> = (0..64).map(|_| Key(rng.random())).collect();
    let mut i = 0;
    c.bench_function(&format!("kbucket/closest_20_of_{}", table.len()), |b| {
        b.iter(|| {
            i = (i + 1) % targets.len();
            table.closest(black_box(&targets[i]), 20)
        })
    });
}

fn record_check(c: &mut Criterion) {
    let mut rng = rng();
    let kp = Keypair::generate(&mut rng);
    let record = ServiceRecord {
        peer: kp.peer_id(),
        seq: 3,
        expires: 10_000,
        tor_address: None,
        endpoints: vec![Addr::new("/ip4/203.0.113.5/tcp/4001")],
        relays: vec![contact(&mut rng), contact(&mut rng)],
        reachable: true,
        coordinates: Some(Coordinates {
            x: 1.0,
            y: 2.0,
            height: 3.0,
        }),
        participation: Participation::Routing,
        noise_key: Some([9; 32]),
    }
    .sign(&kp);
    record
        .check(5_000, Duration::from_secs(7200))
        .expect("a valid record");
    c.bench_function("record/check_service_record", |b| {
        b.iter(|| black_box(&record).check(5_000, Duration::from_secs(7200)))
    });
}

fn route_selection(c: &mut Criterion) {
    let mut rng = rng();
    let candidates: Vec<Candidate> = (0..200)
        .map(|_| Candidate {
            contact: contact(&mut rng),
            coords: Some(Coordinates {
                x: rng.random_range(-150.0..150.0),
                y: rng.random_range(-150.0..150.0),
                height: rng.random_range(0.5..10.0),
            }),
            trust: Trust::default(),
            relays: true,
            alive: true,
        })
        .collect();
    let (client, service) = (PeerId::from_bytes([1; 32]), PeerId::from_bytes([2; 32]));
    let (cc, sc) = (
        Coordinates {
            x: -80.0,
            y: 10.0,
            height: 2.0,
        },
        Coordinates {
            x: 90.0,
            y: -30.0,
            height: 4.0,
        },
    );
    let exclude = BTreeSet::new();
    let mut g = c.benchmark_group("route_selection_200");
    for (name, strategy) in [
        ("geographic", Strategy::Geographic),
        ("multi_hop", Strategy::MultiHop),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                score::choose(
                    strategy,
                    black_box(&candidates),
                    &client,
                    &service,
                    Some(&cc),
                    Some(&sc),
                    &exclude,
                    2,
                    &mut rng,
                )
            })
        });
    }
    g.finish();
}

fn e2e_frames(c: &mut Criterion) {
    let client = StaticKey::from_secret([3; 32]);
    let service = StaticKey::from_secret([4; 32]);
    let (init, msg1) = Initiator::start(&client, &service.public(), [5; 32]).expect("msg1");
    let (pending, msg2) = Responder::new(&service, [6; 32])
        .respond(&msg1)
        .expect("msg2");
    let (mut tx, msg3) = init.finish(&msg2, b"").expect("msg3");
    let (mut rx, _) = pending.finish(&msg3).expect("session");
    let mut g = c.benchmark_group("e2e_frame");
    for len in [e2e::MAX_PLAINTEXT, e2e::MAX_CHUNK] {
        let plain = vec![0x5a; len];
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(format!("seal_open/{len}"), |b| {
            b.iter(|| {
                let frame = tx.encrypt_chunk(black_box(&plain)).expect("seal");
                rx.decrypt_chunk(&frame).expect("open")
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    codec,
    k_closest,
    record_check,
    route_selection,
    e2e_frames
);
criterion_main!(benches);
