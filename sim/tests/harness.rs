//! The simulator's network harness and driver loop: exact latency, drops, determinism, kill,
//! and the same `drive` loop over real loopback sockets.

#[path = "../examples/common/toy.rs"]
mod toy;

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use sim::driver::{self, Driven, Protocol};
use sim::net::{SimNet, host_ip};
use tokio::sync::mpsc;
use turmoil_net::shim::tokio::net::UdpSocket;
use turmoil_net::{Packet, Verdict};

const PORT: u16 = 7000;

fn addr(index: usize) -> SocketAddr {
    SocketAddr::new(host_ip(index).into(), PORT)
}

/// One-way latency: `a_to_b` for packets from `a`, `b_to_a` for the rest.
fn one_way(a: IpAddr, a_to_b: Duration, b_to_a: Duration) -> impl FnMut(&Packet) -> Verdict {
    move |p: &Packet| {
        if p.src == a {
            Verdict::Deliver(a_to_b)
        } else {
            Verdict::Deliver(b_to_a)
        }
    }
}

/// An echo server on a raw socket: answers every datagram with its bytes.
async fn echo(index: usize) {
    let socket = UdpSocket::bind(addr(index)).await.expect("bind echo");
    let mut buf = [0u8; 1500];
    loop {
        let (len, from) = socket.recv_from(&mut buf).await.expect("recv");
        socket.send_to(&buf[..len], from).await.expect("send");
    }
}

#[test]
fn latency_is_exact() {
    let mut net = SimNet::new();
    let a = net.add_host(host_ip(0));
    let b = net.add_host(host_ip(1));
    net.set_rule(one_way(
        host_ip(0).into(),
        Duration::from_millis(40),
        Duration::from_millis(40),
    ));
    net.spawn(b, echo(1));
    let pinger = net.spawn(a, async {
        let socket = UdpSocket::bind(addr(0)).await.expect("bind");
        let mut rtts = Vec::new();
        let mut buf = [0u8; 64];
        for i in 0..5u64 {
            // Start at odd instants, too: the round structure must not add a tick.
            tokio::time::sleep(Duration::from_millis(7 * i + 1)).await;
            let sent = tokio::time::Instant::now();
            socket
                .send_to(&i.to_le_bytes(), addr(1))
                .await
                .expect("send");
            let (len, _) = socket.recv_from(&mut buf).await.expect("recv");
            assert_eq!(&buf[..len], &i.to_le_bytes());
            rtts.push(sent.elapsed());
        }
        rtts
    });
    let rtts = net.block_on(pinger).expect("pinger finished");
    assert_eq!(rtts, vec![Duration::from_millis(80); 5]);
}

#[test]
fn asymmetric_latency_is_exact_and_run_until_stops_on_time() {
    let mut net = SimNet::new();
    let a = net.add_host(host_ip(0));
    let b = net.add_host(host_ip(1));
    net.set_rule(one_way(
        host_ip(0).into(),
        Duration::from_millis(25),
        Duration::from_millis(40),
    ));
    net.spawn(b, echo(1));
    let rtt = Rc::new(Cell::new(None));
    let out = Rc::clone(&rtt);
    net.spawn(a, async move {
        let socket = UdpSocket::bind(addr(0)).await.expect("bind");
        tokio::time::sleep(Duration::from_millis(3)).await;
        let sent = tokio::time::Instant::now();
        socket.send_to(b"x", addr(1)).await.expect("send");
        let mut buf = [0u8; 8];
        socket.recv_from(&mut buf).await.expect("recv");
        out.set(Some(sent.elapsed()));
    });
    net.run_until(Duration::from_millis(67));
    assert_eq!(net.now(), Duration::from_millis(67));
    assert_eq!(rtt.get(), None, "the pong is due at 68 ms");
    net.run_until(Duration::from_millis(69));
    assert_eq!(rtt.get(), Some(Duration::from_millis(65)));
    assert_eq!(net.stats().delivered, 2);
}

/// A ping protocol for the `drive` tests: `Ping(to)` sends a ping; pings are answered; a pong
/// becomes a `Pong` event with the measured round-trip time.
#[derive(Default)]
struct PingPong {
    next_id: u64,
    sent: HashMap<u64, Instant>,
    transmit: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<PingEvent>,
}

#[derive(Debug, PartialEq, Eq)]
enum PingEvent {
    Pinged { from: SocketAddr },
    Pong { from: SocketAddr, rtt: Duration },
}

impl Protocol for PingPong {
    type Command = SocketAddr;
    type Event = PingEvent;

    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let Some((&kind, id)) = data.split_first() else {
            return;
        };
        let Ok(id_bytes) = <[u8; 8]>::try_from(id) else {
            return;
        };
        match kind {
            b'P' => {
                let mut reply = data.to_vec();
                reply[0] = b'O';
                self.transmit.push_back((from, reply));
                self.events.push_back(PingEvent::Pinged { from });
            }
            b'O' => {
                if let Some(sent) = self.sent.remove(&u64::from_le_bytes(id_bytes)) {
                    let rtt = now - sent;
                    self.events.push_back(PingEvent::Pong { from, rtt });
                }
            }
            _ => {}
        }
    }

    fn handle_timeout(&mut self, _now: Instant) {}

    fn handle_command(&mut self, now: Instant, to: SocketAddr) {
        self.next_id += 1;
        self.sent.insert(self.next_id, now);
        let mut msg = vec![b'P'];
        msg.extend_from_slice(&self.next_id.to_le_bytes());
        self.transmit.push_back((to, msg));
    }

    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.transmit.pop_front()
    }

    fn poll_event(&mut self) -> Option<PingEvent> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}

#[test]
fn driver_in_the_simulator_measures_exact_rtt() {
    let mut net = SimNet::new();
    let a = net.add_host(host_ip(0));
    let b = net.add_host(host_ip(1));
    net.set_rule(one_way(
        host_ip(0).into(),
        Duration::from_millis(40),
        Duration::from_millis(40),
    ));
    let (cmd_a, cmds) = mpsc::unbounded_channel();
    let (ev_a, mut events_a) = mpsc::unbounded_channel();
    let driver_a = net.spawn(a, async move {
        let socket = UdpSocket::bind(addr(0)).await.expect("bind");
        driver::drive(socket, PingPong::default(), cmds, ev_a).await
    });
    let (cmd_b, cmds) = mpsc::unbounded_channel();
    let (ev_b, _events_b) = mpsc::unbounded_channel();
    net.spawn(b, async move {
        let socket = UdpSocket::bind(addr(1)).await.expect("bind");
        driver::drive(socket, PingPong::default(), cmds, ev_b).await
    });

    let event = net.block_on(async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        cmd_a.send(addr(1)).expect("driver a runs");
        let event = events_a.recv().await;
        drop(cmd_a);
        event
    });
    assert_eq!(
        event,
        Some(PingEvent::Pong {
            from: addr(1),
            rtt: Duration::from_millis(80)
        })
    );
    let Driven { stats, .. } = net.block_on(driver_a).expect("driver a ends");
    assert_eq!((stats.datagrams_out, stats.datagrams_in), (1, 1));
    drop(cmd_b);
}

#[test]
fn drop_verdicts_drop() {
    let mut net = SimNet::new();
    let a = net.add_host(host_ip(0));
    let b = net.add_host(host_ip(1));
    let a_ip: IpAddr = host_ip(0).into();
    // A → B is cut; B → A works.
    net.set_rule(move |p: &Packet| {
        if p.src == a_ip {
            Verdict::Drop
        } else {
            Verdict::Deliver(Duration::from_millis(10))
        }
    });
    let at_b = Rc::new(Cell::new(0));
    let at_a = Rc::new(Cell::new(0));
    for (host, me, peer, count) in [(a, 0, 1, Rc::clone(&at_a)), (b, 1, 0, Rc::clone(&at_b))] {
        net.spawn(host, async move {
            let socket = UdpSocket::bind(addr(me)).await.expect("bind");
            let mut buf = [0u8; 8];
            for _ in 0..3 {
                socket.send_to(b"hi", addr(peer)).await.expect("send");
                let wait = tokio::time::sleep(Duration::from_millis(100));
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        biased;
                        () = &mut wait => break,
                        r = socket.recv_from(&mut buf) => {
                            r.expect("recv");
                            count.set(count.get() + 1);
                        }
                    }
                }
            }
        });
    }
    net.run_until(Duration::from_secs(1));
    assert_eq!(at_b.get(), 0, "A → B is dropped");
    assert_eq!(at_a.get(), 3, "B → A is delivered");
    let stats = net.stats();
    assert_eq!(
        (stats.sent, stats.dropped_by_rule, stats.delivered),
        (6, 3, 3)
    );
}

#[test]
fn same_seed_same_trace() {
    let first = toy::run(200, 10, 7);
    let second = toy::run(200, 10, 7);
    assert_eq!(first, second);
    // 200 hosts × 8 pings × ~10 periods, each answered: every datagram is an event.
    assert!(first.events > 200 * 8 * 9 * 2, "{first:?}");
    assert_eq!(
        first.stats.delivered, first.events,
        "every delivered datagram is one event"
    );
    assert_eq!(
        first.stats.sent,
        first.stats.delivered + first.stats.in_flight,
        "nothing dropped"
    );
    let other_seed = toy::run(200, 10, 8);
    assert_ne!(first.trace_hash, other_seed.trace_hash);
}

#[tokio::test]
async fn drive_runs_over_real_udp_sockets() {
    let socket_a = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind a");
    let socket_b = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind b");
    let addr_b = socket_b.local_addr().expect("addr b");

    let (cmd_a, cmds_a) = mpsc::unbounded_channel();
    let (ev_a, mut events_a) = mpsc::unbounded_channel();
    let (cmd_b, cmds_b) = mpsc::unbounded_channel();
    let (ev_b, mut events_b) = mpsc::unbounded_channel();
    let driver_a = tokio::spawn(driver::drive(socket_a, PingPong::default(), cmds_a, ev_a));
    let driver_b = tokio::spawn(driver::drive(socket_b, PingPong::default(), cmds_b, ev_b));

    cmd_a.send(addr_b).expect("driver a runs");
    let pong = tokio::time::timeout(Duration::from_secs(5), events_a.recv())
        .await
        .expect("pong within 5 s");
    let Some(PingEvent::Pong { from, rtt }) = pong else {
        panic!("expected a pong, got {pong:?}");
    };
    assert_eq!(from, addr_b);
    assert!(rtt < Duration::from_secs(5));
    assert!(matches!(
        events_b.recv().await,
        Some(PingEvent::Pinged { .. })
    ));

    drop((cmd_a, cmd_b));
    let a = driver_a.await.expect("driver a ends");
    let b = driver_b.await.expect("driver b ends");
    assert_eq!((a.stats.datagrams_out, a.stats.datagrams_in), (1, 1));
    assert_eq!((b.stats.datagrams_out, b.stats.datagrams_in), (1, 1));
}

#[test]
fn killed_hosts_drop_packets_and_end_their_tasks() {
    let mut net = SimNet::new();
    let a = net.add_host(host_ip(0));
    let b = net.add_host(host_ip(1));
    net.set_rule(|_: &Packet| Verdict::Deliver(Duration::from_millis(20)));

    net.spawn(a, async {
        let socket = UdpSocket::bind(addr(0)).await.expect("bind");
        loop {
            socket.send_to(b"tick", addr(1)).await.expect("send");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let received = Rc::new(Cell::new(0u32));
    let listener = |count: Rc<Cell<u32>>| async move {
        let socket = UdpSocket::bind(addr(1)).await.expect("bind b's port");
        let mut buf = [0u8; 8];
        loop {
            socket.recv_from(&mut buf).await.expect("recv");
            count.set(count.get() + 1);
        }
    };
    let b_task = net.spawn(b, listener(Rc::clone(&received)));

    // Sends at 0, 100, ..., 1000 ms arrive at 20, 120, ..., 1020 ms.
    net.run_until(Duration::from_millis(1010));
    assert_eq!(received.get(), 10);
    // The send at 1000 ms is in flight when B dies.
    net.kill(b);
    assert!(!net.is_alive(b));
    net.run_until(Duration::from_millis(2010));
    assert_eq!(received.get(), 10, "nothing reaches a killed host");
    assert!(b_task.is_finished(), "the killed host's task ended");
    // 1000 ms (in flight at the kill), then 1100 ..= 2000 ms.
    assert_eq!(net.stats().dropped_dead, 11, "{:?}", net.stats());

    // A replacement on the same host gets the address (and the port) back.
    net.spawn(b, listener(Rc::clone(&received)));
    assert!(net.is_alive(b));
    net.run_until(Duration::from_millis(2510));
    assert_eq!(
        received.get(),
        14,
        "sends at 2100 ..= 2400 ms arrive by 2510 ms"
    );
}

#[test]
fn host_panics_surface() {
    let mut net = SimNet::new();
    let a = net.add_host(host_ip(0));
    net.spawn(a, async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        panic!("boom");
    });
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        net.run_until(Duration::from_secs(1));
    }));
    let payload = result.expect_err("the run re-raises the panic");
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(message.contains("host 0 panicked: boom"), "{message}");
}
