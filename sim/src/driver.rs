//! The thin loop that runs one sans-IO protocol instance over a datagram socket.
//!
//! # Design
//!
//! The protocol core owns no socket, no clock and no task; the driver owns all three and is
//! the only code between them. It is the same loop in the simulator (over
//! [`turmoil_net::shim::tokio::net::UdpSocket`]) and in the real binary (over
//! [`tokio::net::UdpSocket`]): only the [`DatagramSocket`] differs, so whatever the simulator
//! measures is what the real driver runs.
//!
//! ```text
//! loop {
//!     select! { biased;
//!         command           => proto.handle_command(now, cmd),   // channel closed → return
//!         datagram          => proto.handle_datagram(now, from, bytes),
//!         sleep_until(poll_timeout()) => proto.handle_timeout(now),
//!     }
//!     drain poll_transmit() → send_to;  drain poll_event() → events channel
//! }
//! ```
//!
//! - **`biased;`** — an unbiased `select!` picks a branch with tokio's own RNG, which is not
//!   seeded by the scenario: measured, 6 identical simulations gave 2 different traces.
//!   Commands come first (they are the caller's intent), then the network, then timers.
//! - **Time** is `tokio::time::Instant::now().into_std()` ([`now`]): under the simulator's
//!   paused runtime it is simulated time, under a normal runtime it is wall-clock time.
//! - **One timer**, reset only when `poll_timeout` changes, not re-created every iteration;
//!   when to reset it, and the stale-deadline guard, are `beam_node::wakeup::Wakeup`, which
//!   the libp2p driver in `cli` uses too.
//! - **One receive buffer per thread.** The loop polls the socket with a thread-local 64 KiB
//!   buffer and hands the datagram to the protocol inside that poll, so 10,000 simulated
//!   hosts share one buffer instead of holding 10,000 (640 MiB).
//! - **Errors never stop the loop.** A failed send or receive is counted in [`DriveStats`]
//!   and traced at debug level (without addresses, which are identifying); a closed events
//!   channel is counted too. The loop ends only when the command channel closes, and hands
//!   back the protocol and the counters.
//!
//! # Calling contract for [`Protocol`]
//!
//! After every `handle_*` the driver drains `poll_transmit` and `poll_event` until they return
//! `None` and re-reads `poll_timeout`. `handle_timeout(now)` must handle everything due at or
//! before `now`, so that `poll_timeout` afterwards is later than `now` (or `None`). A protocol
//! that breaks this would spin forever at one simulated instant; the driver defends against
//! that by deferring such a deadline by one millisecond and counting it in
//! [`DriveStats::stale_timeouts`].

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::task::{Context, Poll};
use std::time::Instant;

use beam_node::wakeup::Wakeup;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

/// Size of the driver's receive buffer: the largest UDP datagram fits.
pub const MAX_DATAGRAM: usize = 64 * 1024;

/// The current time as a `std` instant, following tokio's clock (paused in the simulator).
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// A connectionless socket the driver can send and receive datagrams on.
///
/// Implemented for [`tokio::net::UdpSocket`] (the real driver), for turmoil-net's
/// [`UdpSocket`](turmoil_net::shim::tokio::net::UdpSocket) (the simulator), and for shared
/// references and `Rc`/`Arc` of either.
#[allow(async_fn_in_trait)] // only used with concrete, single-threaded futures
pub trait DatagramSocket {
    /// Sends `buf` as one datagram to `target`; returns the bytes sent.
    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize>;

    /// Receives one datagram into `buf`; returns its length (truncated to `buf`) and sender.
    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        poll_fn(|cx| self.poll_recv_from(cx, buf)).await
    }

    /// Receives one datagram into `buf` if one is queued; otherwise arranges for `cx` to be
    /// woken when one arrives and returns `Pending`. The driver polls this with a buffer it
    /// only lends for the call, which is what lets all drivers on a thread share one.
    fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>>;
}

impl DatagramSocket for tokio::net::UdpSocket {
    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        tokio::net::UdpSocket::send_to(self, buf, target).await
    }

    fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>> {
        let mut read = tokio::io::ReadBuf::new(buf);
        tokio::net::UdpSocket::poll_recv_from(self, cx, &mut read)
            .map_ok(|from| (read.filled().len(), from))
    }
}

impl DatagramSocket for turmoil_net::shim::tokio::net::UdpSocket {
    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        turmoil_net::shim::tokio::net::UdpSocket::send_to(self, buf, target).await
    }

    fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>> {
        // The shim has no `poll_recv_from`, but its `recv_from` is a stateless `poll_fn` over
        // the socket (the waker is kept by the socket, not the future): polling a fresh one
        // once is exactly one poll of the socket.
        pin!(turmoil_net::shim::tokio::net::UdpSocket::recv_from(
            self, buf
        ))
        .poll(cx)
    }
}

/// Forwards [`DatagramSocket`] through a smart pointer or reference.
macro_rules! forward_datagram_socket {
    ($($ptr:ty),*) => {$(
        impl<S: DatagramSocket + ?Sized> DatagramSocket for $ptr {
            async fn send_to(&self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
                (**self).send_to(buf, target).await
            }

            fn poll_recv_from(
                &self,
                cx: &mut Context<'_>,
                buf: &mut [u8],
            ) -> Poll<io::Result<(usize, SocketAddr)>> {
                (**self).poll_recv_from(cx, buf)
            }
        }
    )*};
}

forward_datagram_socket!(&S, std::rc::Rc<S>, std::sync::Arc<S>);

/// A sans-IO protocol state machine, in the project's vocabulary: inputs are `handle_*`,
/// outputs are `poll_*`, time comes in as `now`.
pub trait Protocol {
    /// What the application asks of the protocol (publish, look up, open a route, ...).
    type Command;
    /// What the protocol reports to the application.
    type Event;

    /// A datagram arrived from `from`. `data` is untrusted.
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]);

    /// The deadline last returned by [`poll_timeout`](Self::poll_timeout) has passed.
    fn handle_timeout(&mut self, now: Instant);

    /// The application issued a command.
    fn handle_command(&mut self, now: Instant, cmd: Self::Command);

    /// The next datagram to send, if any.
    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)>;

    /// The next event for the application, if any.
    fn poll_event(&mut self) -> Option<Self::Event>;

    /// When [`handle_timeout`](Self::handle_timeout) should next be called, if ever.
    fn poll_timeout(&self) -> Option<Instant>;
}

/// What a [`drive`] loop did, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriveStats {
    /// Datagrams received and handed to the protocol.
    pub datagrams_in: u64,
    /// Bytes in those datagrams.
    pub bytes_in: u64,
    /// Datagrams the socket accepted for sending.
    pub datagrams_out: u64,
    /// Bytes in those datagrams.
    pub bytes_out: u64,
    /// Sends that failed (the datagram is lost, as on a real network).
    pub send_errors: u64,
    /// Receives that failed.
    pub recv_errors: u64,
    /// Commands handed to the protocol.
    pub commands: u64,
    /// Times `handle_timeout` was called.
    pub timeouts: u64,
    /// Deadlines at or before the timeout just handled (a broken calling contract),
    /// deferred by one millisecond.
    pub stale_timeouts: u64,
    /// Events forwarded to the events channel.
    pub events: u64,
    /// Events dropped because the events channel was closed.
    pub events_undelivered: u64,
}

/// What [`drive`] returns when its command channel closes.
#[derive(Debug)]
pub struct Driven<P> {
    /// The protocol, as the loop left it.
    pub proto: P,
    /// What the loop did.
    pub stats: DriveStats,
}

/// Runs `proto` over `socket` until the `commands` channel closes; forwards its events to
/// `events`. See the [module docs](self) for the loop and the calling contract.
pub async fn drive<S, P>(
    socket: S,
    mut proto: P,
    mut commands: UnboundedReceiver<P::Command>,
    events: UnboundedSender<P::Event>,
) -> Driven<P>
where
    S: DatagramSocket,
    P: Protocol,
{
    let mut stats = DriveStats::default();
    let timer = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(timer);
    let mut wakeup = Wakeup::new();

    // The protocol may have queued work before it was handed over (e.g. bootstrap pings).
    flush(&socket, &mut proto, &events, &mut stats).await;
    loop {
        if let Some(d) = wakeup.next(proto.poll_timeout()) {
            timer.as_mut().reset(tokio::time::Instant::from_std(d));
        }
        stats.stale_timeouts = wakeup.stale;

        tokio::select! {
            biased;
            cmd = commands.recv() => match cmd {
                Some(cmd) => {
                    stats.commands += 1;
                    proto.handle_command(now(), cmd);
                }
                None => break,
            },
            received = poll_fn(|cx| receive(&socket, &mut proto, &mut stats, cx)) => {
                if let Err(e) = received {
                    stats.recv_errors += 1;
                    tracing::debug!(error = %e, "recv_from failed");
                }
            }
            () = &mut timer, if wakeup.armed() => {
                stats.timeouts += 1;
                let t = now();
                proto.handle_timeout(t);
                wakeup.fired(t);
            }
        }
        flush(&socket, &mut proto, &events, &mut stats).await;
    }
    Driven { proto, stats }
}

thread_local! {
    /// The receive buffer, shared by every driver on the thread: it is lent to the socket for
    /// one poll and the datagram handed to the protocol before the poll returns, so one
    /// suffices. (One 64 KiB buffer per driver was 640 MiB at 10,000 simulated hosts.)
    static RECV_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_DATAGRAM]);
}

/// Polls `socket` for one datagram and hands it to the protocol.
fn receive<S: DatagramSocket, P: Protocol>(
    socket: &S,
    proto: &mut P,
    stats: &mut DriveStats,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    RECV_BUF.with_borrow_mut(|buf| {
        socket.poll_recv_from(cx, buf).map_ok(|(len, from)| {
            stats.datagrams_in += 1;
            stats.bytes_in += len as u64;
            proto.handle_datagram(now(), from, &buf[..len]);
        })
    })
}

/// Sends everything the protocol queued and forwards its events.
async fn flush<S: DatagramSocket, P: Protocol>(
    socket: &S,
    proto: &mut P,
    events: &UnboundedSender<P::Event>,
    stats: &mut DriveStats,
) {
    while let Some((target, data)) = proto.poll_transmit() {
        match socket.send_to(&data, target).await {
            Ok(sent) => {
                stats.datagrams_out += 1;
                stats.bytes_out += sent as u64;
            }
            Err(e) => {
                stats.send_errors += 1;
                tracing::debug!(error = %e, len = data.len(), "send_to failed");
            }
        }
    }
    while let Some(event) = proto.poll_event() {
        if events.send(event).is_ok() {
            stats.events += 1;
        } else {
            stats.events_undelivered += 1;
        }
    }
}
