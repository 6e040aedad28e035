//! The data plane: TCP connections carried over libp2p streams.
//!
//! # Direct: `/beam/tunnel/1`
//!
//! One stream per forwarded TCP connection. The client writes a version byte; the service
//! connects to its local port and answers one status byte ([`Status`]), then bytes flow both
//! ways, half-close passed on. libp2p's Noise, authenticated to the service's peer id (the same
//! ed25519 key as its `beam://` address), already is end to end here: no second cipher.
//!
//! # Through relays: `/beam/circuit/1`
//!
//! The first frame is a [`CircuitHeader`] naming the hops still ahead. A relay asks the core
//! to admit the circuit, opens a stream to the next hop with the header minus that hop, and
//! splices the two streams (backpressure hop by hop from yamux's windows). A stream whose
//! header names no hop is for the receiver: it runs the core's Noise XK handshake as the
//! responder (the client holds the service's static key from its signed record), and from
//! then on every frame is sealed. Relays see the header and ciphertext only.
//!
//! Sealed frames must arrive in order: the receiver checks each frame's nonce against the next
//! one expected, so a relay cannot drop, repeat or reorder data without the connection failing.
//! The end of the data is itself a sealed (empty) frame, so a relay cannot truncate a transfer
//! into one that looks complete: a stream that ends without it fails, and the local TCP
//! connection is reset rather than closed.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use beam_node::e2e::{MAX_CHUNK, MAX_CHUNK_FRAME, Session};
use beam_node::tunnel::{CircuitHeader, HELLO_TOKEN, MAX_HEADER, parse_hello};
use futures::StreamExt;
use libp2p::Multiaddr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

use super::addr::to_libp2p;
use super::auth::{self, Token};
use super::inspect::{Conn, Direction, Info, Kind};
use super::limit::Activity;
use super::{Handle, PROTO_CIRCUIT, PROTO_TUNNEL, Route, frame};

/// Largest handshake message read.
const MAX_HANDSHAKE: usize = 1024;
/// Each setup step (open a stream, a handshake message, the status) must finish within this.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the far end says when a tunnel is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Connected to the service's local port.
    Ok,
    /// The service's local port refused the connection.
    LocalRefused,
    /// The peer reached runs no service.
    NoService,
    /// A relay refused the circuit (not a relay, or at its bound).
    RelayRefused,
    /// A relay could not reach the next hop.
    NextHopFailed,
    /// The service requires an access token and none, or another, was presented.
    Unauthorized,
    /// The far end (or a relay) is at its bound of streams for this peer, or in total.
    Busy,
    /// Anything else.
    Unknown(u8),
}

impl Status {
    fn to_byte(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::LocalRefused => 1,
            Status::NoService => 2,
            Status::RelayRefused => 3,
            Status::NextHopFailed => 4,
            Status::Unauthorized => 5,
            Status::Busy => 6,
            Status::Unknown(b) => b,
        }
    }

    fn from_byte(b: u8) -> Self {
        match b {
            0 => Status::Ok,
            1 => Status::LocalRefused,
            2 => Status::NoService,
            3 => Status::RelayRefused,
            4 => Status::NextHopFailed,
            5 => Status::Unauthorized,
            6 => Status::Busy,
            b => Status::Unknown(b),
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Ok => "connected",
            Status::LocalRefused => {
                "the service is up but nothing accepts connections on its local port"
            }
            Status::NoService => "the peer reached runs no service",
            Status::RelayRefused => "a relay refused the circuit",
            Status::NextHopFailed => "a relay could not reach the next hop",
            Status::Unauthorized => {
                "the service requires an access token and refused this one (or none was given)"
            }
            Status::Busy => {
                "the far end is at its limit of open tunnels (for this peer, or in total)"
            }
            Status::Unknown(_) => "the far end answered with an unknown status",
        })
    }
}

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The far end (or a relay) said no.
    #[error("{0}")]
    Refused(Status),
    /// A stream could not be opened or broke during setup.
    #[error("cannot reach {what}: {error}")]
    Unreachable {
        /// Which hop.
        what: String,
        /// Why.
        error: String,
    },
    /// The end-to-end handshake failed (a wrong key, or a relay altering data).
    #[error("the end-to-end handshake with the service failed: {0}")]
    Handshake(String),
}

impl OpenError {
    /// The service itself answered no (its port refused, or the token was wrong): another
    /// route would get the same answer.
    pub fn is_the_services_answer(&self) -> bool {
        matches!(
            self,
            OpenError::Refused(Status::LocalRefused | Status::Unauthorized)
        )
    }
}

/// An open tunnel, before it carries a TCP connection.
pub enum Tunnel {
    /// Direct: libp2p's encryption is end to end.
    Plain(Compat<libp2p::Stream>),
    /// Through relays: sealed by the end-to-end session.
    Sealed(Compat<libp2p::Stream>, Box<Session>),
}

/// An opened tunnel and what its setup cost.
#[derive(Debug)]
pub struct Opened {
    /// The tunnel.
    pub tunnel: Tunnel,
    /// From asking for the tunnel to the service's status: one round trip of the route plus
    /// setup (stream negotiation; on relayed routes the handshake).
    pub setup: Duration,
    /// The last setup exchange, once the route was up: one round trip of the route to the
    /// service and back (and the service's connect to its local port). Direct: the hello and
    /// its status; through relays: the handshake's last message and the status.
    pub route_rtt: Duration,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tunnel::Plain(_) => "Tunnel::Plain",
            Tunnel::Sealed(..) => "Tunnel::Sealed",
        })
    }
}

async fn step<T, E: std::fmt::Display>(
    what: &str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, OpenError> {
    match tokio::time::timeout(STEP_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(OpenError::Unreachable {
            what: what.to_string(),
            error: e.to_string(),
        }),
        Err(_) => Err(OpenError::Unreachable {
            what: what.to_string(),
            error: format!("no answer within {} s", STEP_TIMEOUT.as_secs()),
        }),
    }
}

/// Attempts at opening one tunnel along one route, and the pause before each retry.
const RETRY_PAUSES: [Duration; 2] = [Duration::from_millis(20), Duration::from_millis(60)];
/// A failed attempt is retried only when it failed this fast: a stream dropped on arrival,
/// not a peer that does not answer.
const RETRY_IF_FASTER: Duration = Duration::from_secs(1);

/// Opens a tunnel to the service along `route`, presenting `token` if given.
///
/// An attempt whose stream is dropped before the far end answers is retried (twice, after
/// 20 and 60 ms): libp2p-stream drops an inbound stream that finds its acceptor's queue full
/// (256 streams in the copy in vendor/; one slot upstream), as when another peer floods the
/// service with streams. Nothing reached the service's port then, so a retry is safe; the
/// retries are counted (`stats.open_retries`).
pub async fn open(
    handle: &Handle,
    route: &Route,
    token: Option<&Token>,
) -> Result<Opened, OpenError> {
    let mut pauses = RETRY_PAUSES.iter();
    loop {
        let attempt = Instant::now();
        match open_once(handle, route, token).await {
            Err(e @ OpenError::Unreachable { .. }) if attempt.elapsed() < RETRY_IF_FASTER => {
                let Some(pause) = pauses.next() else {
                    return Err(e);
                };
                tracing::debug!(error = %e, "a tunnel stream was dropped on the way; retrying");
                handle.stats.open_retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(*pause).await;
            }
            r => return r,
        }
    }
}

async fn open_once(
    handle: &Handle,
    route: &Route,
    token: Option<&Token>,
) -> Result<Opened, OpenError> {
    let start = Instant::now();
    let service = to_libp2p(&route.service).ok_or_else(|| OpenError::Unreachable {
        what: "the service".into(),
        error: "its id is not an ed25519 key".into(),
    })?;
    let mut control = handle.control.clone();
    if !route.reachable && route.relays.len() == 1 {
        // Behind a NAT: a relay v2 circuit through the relay the service reserved on. libp2p's
        // Noise runs over it end to end, so the tunnel is the direct one; DCUtR then tries to
        // punch a direct connection, which later tunnels use.
        let (relay, relay_addr) = &route.relays[0];
        let relay = to_libp2p(relay).ok_or_else(|| OpenError::Unreachable {
            what: "the relay".into(),
            error: "its id is not an ed25519 key".into(),
        })?;
        let circuit = super::addr::split_peer(relay_addr)
            .0
            .with(libp2p::multiaddr::Protocol::P2p(relay))
            .with(libp2p::multiaddr::Protocol::P2pCircuit);
        handle.dial(service, vec![circuit]).await;
        return open_direct(&mut control, service, token, start).await;
    }
    if route.relays.is_empty() {
        handle.dial(service, route.endpoints.clone()).await;
        return open_direct(&mut control, service, token, start).await;
    }
    open_circuit(handle, route, &mut control, token, start).await
}

/// Opens `/beam/tunnel/1` to `service` (over whatever connection there is or is being made).
async fn open_direct(
    control: &mut libp2p_stream::Control,
    service: libp2p::PeerId,
    token: Option<&Token>,
    start: Instant,
) -> Result<Opened, OpenError> {
    let s = step(
        "the service",
        control.open_stream(service, PROTO_TUNNEL.clone()),
    )
    .await?;
    let mut s = s.compat();
    let sent = Instant::now();
    step("the service", async {
        s.write_all(&auth::hello(token)).await?;
        s.flush().await
    })
    .await?;
    let mut b = [0u8; 1];
    step("the service", s.read_exact(&mut b)).await?;
    let route_rtt = sent.elapsed();
    match Status::from_byte(b[0]) {
        Status::Ok => Ok(Opened {
            tunnel: Tunnel::Plain(s),
            setup: start.elapsed(),
            route_rtt,
        }),
        st => Err(OpenError::Refused(st)),
    }
}

/// Opens `/beam/circuit/1` through `route.relays` and runs the end-to-end handshake.
async fn open_circuit(
    handle: &Handle,
    route: &Route,
    control: &mut libp2p_stream::Control,
    token: Option<&Token>,
    start: Instant,
) -> Result<Opened, OpenError> {
    let Some(key) = route.noise_key else {
        return Err(OpenError::Handshake(
            "the service record has no end-to-end key".into(),
        ));
    };
    let (first, first_addr) = &route.relays[0];
    let first_pid = to_libp2p(first).ok_or_else(|| OpenError::Unreachable {
        what: "the first relay".into(),
        error: "its id is not an ed25519 key".into(),
    })?;
    handle.dial(first_pid, vec![first_addr.clone()]).await;
    let mut hops: Vec<([u8; 32], String)> = route
        .relays
        .iter()
        .skip(1)
        .map(|(p, a)| (*p.as_bytes(), a.to_string()))
        .collect();
    hops.push((
        *route.service.as_bytes(),
        route
            .endpoints
            .first()
            .map(Multiaddr::to_string)
            .unwrap_or_default(),
    ));
    let header = CircuitHeader { hops }
        .encode()
        .map_err(|e| OpenError::Handshake(format!("cannot encode the circuit header: {e}")))?;
    let s = step(
        "the first relay",
        control.open_stream(first_pid, PROTO_CIRCUIT.clone()),
    )
    .await?;
    let mut s = s.compat();
    let (init, msg1) = handle
        .start_e2e(key)
        .await
        .map_err(|e| OpenError::Handshake(e.to_string()))?;
    step("the first relay", async {
        frame::write(&mut s, &header).await?;
        frame::write(&mut s, &msg1).await?;
        s.flush().await
    })
    .await?;
    let msg2 = read_handshake(&mut s).await?;
    if msg2.len() == 1 {
        // Not a handshake message: a relay's (or the far end's) refusal.
        return Err(OpenError::Refused(Status::from_byte(msg2[0])));
    }
    let (mut session, msg3) = init
        .finish(&msg2, &auth::hello(token))
        .map_err(|e| OpenError::Handshake(e.to_string()))?;
    let sent = Instant::now();
    step("the service", async {
        frame::write(&mut s, &msg3).await?;
        s.flush().await
    })
    .await?;
    let status = read_handshake(&mut s).await?;
    let route_rtt = sent.elapsed();
    let status =
        open_in_order(&mut session, &status, 0).map_err(|e| OpenError::Handshake(e.to_string()))?;
    match status.first().copied().map(Status::from_byte) {
        Some(Status::Ok) => Ok(Opened {
            tunnel: Tunnel::Sealed(s, Box::new(session)),
            setup: start.elapsed(),
            route_rtt,
        }),
        Some(st) => Err(OpenError::Refused(st)),
        None => Err(OpenError::Refused(Status::Unknown(255))),
    }
}

/// The client's read of one handshake frame from the service (or a relay's refusal).
async fn read_handshake<R: AsyncRead + Unpin>(s: &mut R) -> Result<Vec<u8>, OpenError> {
    step("the service", frame::read(s, MAX_HANDSHAKE))
        .await?
        .ok_or_else(|| OpenError::Unreachable {
            what: "the service".into(),
            error: "the circuit closed during the handshake".into(),
        })
}

/// Refuses a sealed frame that does not carry nonce `expected`.
fn check_order(frame: &[u8], expected: u64) -> io::Result<()> {
    let nonce = frame
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes);
    if nonce != Some(expected) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a sealed frame arrived out of order: the route altered the data",
        ));
    }
    Ok(())
}

/// Decrypts a sealed frame that must carry nonce `expected`.
fn open_in_order(session: &mut Session, frame: &[u8], expected: u64) -> io::Result<Vec<u8>> {
    check_order(frame, expected)?;
    session
        .decrypt_chunk(frame)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

/// Carries `tcp` over `tunnel` until both directions end; `next_nonce_in` is the nonce of the
/// peer's next sealed frame (the client has read the status frame, 0, already). Counts bytes in
/// `handle.stats` and in `conn` (the inspector's view of this connection). On any error the TCP
/// connection is reset, not closed, so the application sees a failure rather than a clean
/// (possibly truncated) end.
pub async fn carry(
    handle: &Handle,
    mut tcp: TcpStream,
    tunnel: Tunnel,
    next_nonce_in: u64,
    conn: &Conn,
) {
    let stats = handle.stats.clone();
    stats.tunnels_open.fetch_add(1, Ordering::Relaxed);
    stats.tunnels_total.fetch_add(1, Ordering::Relaxed);
    let activity = Activity::default();
    let moving = async {
        match tunnel {
            Tunnel::Plain(s) => {
                let (tr, tw) = tcp.split();
                let (sr, sw) = tokio::io::split(s);
                let (out, inn) = (
                    [&stats.bytes_out, &conn.bytes_out],
                    [&stats.bytes_in, &conn.bytes_in],
                );
                tokio::try_join!(
                    copy_counted(tr, sw, &out, &activity, None),
                    copy_counted(sr, tw, &inn, &activity, None)
                )
                .map(|_| ())
            }
            Tunnel::Sealed(s, session) => {
                let counts = Counts {
                    stats: &stats,
                    conn,
                };
                pump_sealed(&mut tcp, s, *session, next_nonce_in, counts, &activity).await
            }
        }
    };
    let result = until_idle(handle, &activity, moving).await;
    stats.tunnels_open.fetch_sub(1, Ordering::Relaxed);
    if let Err(e) = result {
        tracing::debug!(error = %e, "tunnel connection failed");
        conn.failed(e.to_string());
        let _ = tcp.set_zero_linger();
    }
}

/// Where a sealed tunnel counts its bytes.
#[derive(Clone, Copy)]
struct Counts<'a> {
    stats: &'a super::Stats,
    conn: &'a Conn,
}

/// Runs `moving` until it ends or nothing has moved for the idle timeout (counted; an error).
async fn until_idle(
    handle: &Handle,
    activity: &Activity,
    moving: impl Future<Output = io::Result<()>>,
) -> io::Result<()> {
    tokio::select! {
        r = moving => r,
        () = activity.idle_for(handle.idle_timeout) => {
            handle.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
            Err(io::Error::new(io::ErrorKind::TimedOut, "idle for longer than limits.idleTimeout"))
        }
    }
}

/// Copies `r` to `w` until `r` ends, then half-closes `w`; counts the bytes as they pass, and
/// for a relayed circuit charges them to the previous hop and writes them to the tap. Flushes
/// only when `r` has nothing more to give right now, so a fast sender's data goes out in large
/// writes rather than one flush per read.
async fn copy_counted<R, W>(
    mut r: R,
    mut w: W,
    counters: &[&AtomicU64],
    activity: &Activity,
    relayed: Option<Relayed<'_>>,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        let n = read_flushing(&mut r, &mut w, &mut buf).await?;
        if n == 0 {
            return w.shutdown().await;
        }
        activity.touch();
        w.write_all(&buf[..n]).await?;
        for c in counters.iter() {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
        if let Some(relayed) = &relayed {
            if let Some(tap) = relayed.tap {
                use std::io::Write as _;
                let _ = tap
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .write_all(&buf[..n]);
            }
            relayed.limiter.charge(relayed.from, n).await;
        }
    }
}

/// Bytes a tunnel or relay copies per read.
const COPY_BUF: usize = 256 * 1024;

/// Reads from `r` into `buf`; when `r` has nothing ready, flushes `w` first (what was written
/// so far goes out while this waits).
async fn read_flushing<R, W>(r: &mut R, w: &mut W, buf: &mut [u8]) -> io::Result<usize>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    use futures::FutureExt as _;
    if let Some(ready) = r.read(buf).now_or_never() {
        return ready;
    }
    w.flush().await?;
    r.read(buf).await
}

/// What a relay does besides copying.
struct Relayed<'a> {
    limiter: &'a super::limit::RelayLimiter,
    from: &'a libp2p::PeerId,
    tap: Option<&'a std::sync::Mutex<std::fs::File>>,
}

async fn pump_sealed(
    tcp: &mut TcpStream,
    s: Compat<libp2p::Stream>,
    session: Session,
    mut expected: u64,
    counts: Counts<'_>,
    activity: &Activity,
) -> io::Result<()> {
    let session = Arc::new(Mutex::new(session));
    let (mut tr, mut tw) = tcp.split();
    let (mut sr, mut sw) = tokio::io::split(s);
    let sealing =
        |e: beam_node::e2e::E2eError| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    let up = async {
        // One buffer for every frame: [length: u32][nonce | ciphertext | tag], written at once.
        let mut plain = vec![0u8; MAX_CHUNK];
        let mut out = vec![0u8; 4 + MAX_CHUNK_FRAME];
        loop {
            let n = read_flushing(&mut tr, &mut sw, &mut plain).await?;
            activity.touch();
            let len = session
                .lock()
                .map_err(|_| io::Error::other("session lock poisoned"))?
                .encrypt_chunk_to(&plain[..n], &mut out[4..])
                .map_err(sealing)?;
            out[..4].copy_from_slice(&(len as u32).to_be_bytes());
            sw.write_all(&out[..4 + len]).await?;
            counts
                .stats
                .bytes_out
                .fetch_add(n as u64, Ordering::Relaxed);
            counts.conn.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
            if n == 0 {
                // The sealed empty frame says "end of data"; then half-close.
                sw.shutdown().await?;
                return Ok::<(), io::Error>(());
            }
        }
    };
    let down = async {
        let mut sealed = vec![0u8; MAX_CHUNK_FRAME];
        let mut plain = vec![0u8; MAX_CHUNK];
        loop {
            let Some(len) = frame::read_into(&mut sr, &mut sealed).await? else {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the route closed before the end of the data: truncated",
                ));
            };
            activity.touch();
            let f = &sealed[..len];
            check_order(f, expected)?;
            let n = session
                .lock()
                .map_err(|_| io::Error::other("session lock poisoned"))?
                .decrypt_chunk_to(f, &mut plain)
                .map_err(sealing)?;
            expected += 1;
            if n == 0 {
                tw.shutdown().await?;
                return Ok(());
            }
            tw.write_all(&plain[..n]).await?;
            counts.stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
            counts.conn.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        }
    };
    tokio::try_join!(up, down).map(|_| ())
}

/// The service tunnels reach: its local port, and the token it requires if any.
#[derive(Clone, Debug)]
pub struct Local {
    /// The port on 127.0.0.1.
    pub port: u16,
    /// `--auth`: only clients presenting this token reach the port.
    pub token: Option<Arc<Token>>,
}

impl Local {
    /// Whether a client that presented `token` may reach the port; counts a refusal.
    fn admits(&self, handle: &Handle, token: Option<&[u8]>) -> bool {
        let Some(required) = &self.token else {
            return true;
        };
        let ok = required.admits(token);
        if !ok {
            handle.stats.auth_refused.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                presented = token.is_some(),
                "refused a tunnel without the right access token"
            );
        }
        ok
    }
}

/// Accepts tunnels (when `local` is set) and circuits (always: for us, or to relay).
pub fn spawn_acceptors(handle: &Handle, local: Option<Local>) -> anyhow::Result<()> {
    let mut control = handle.control.clone();
    if let Some(local) = local.clone() {
        let mut incoming = control
            .accept(PROTO_TUNNEL)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let h = handle.clone();
        tokio::spawn(async move {
            while let Some((peer, stream)) = incoming.next().await {
                let h = h.clone();
                let local = local.clone();
                tokio::spawn(async move {
                    let mut s = stream.compat();
                    let Ok(_permit) = h.streams.try_open(peer) else {
                        let _ = write_byte(&mut s, Status::Busy).await;
                        return;
                    };
                    serve_direct(&h, peer, s, &local).await;
                });
            }
        });
    }
    let mut incoming = control
        .accept(PROTO_CIRCUIT)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let h = handle.clone();
    tokio::spawn(async move {
        while let Some((peer, stream)) = incoming.next().await {
            let h = h.clone();
            let local = local.clone();
            tokio::spawn(async move {
                let mut s = stream.compat();
                let Ok(_permit) = h.streams.try_open(peer) else {
                    refuse(&mut s, Status::Busy).await;
                    return;
                };
                on_circuit(&h, peer, s, local).await;
            });
        }
    });
    Ok(())
}

/// Reads a direct tunnel's hello: the token presented, if any.
async fn read_hello<R: AsyncRead + Unpin>(s: &mut R) -> Result<Option<Vec<u8>>, String> {
    let mut head = [0u8; 2];
    step("the client", s.read_exact(&mut head[..1]))
        .await
        .map_err(|e| e.to_string())?;
    if head[0] != HELLO_TOKEN {
        return parse_hello(&head[..1])
            .map(|_| None)
            .map_err(|e| e.to_string());
    }
    step("the client", s.read_exact(&mut head[1..]))
        .await
        .map_err(|e| e.to_string())?;
    let mut token = vec![0u8; usize::from(head[1])];
    step("the client", s.read_exact(&mut token))
        .await
        .map_err(|e| e.to_string())?;
    let mut whole = head.to_vec();
    whole.extend_from_slice(&token);
    parse_hello(&whole).map_err(|e| e.to_string())?;
    Ok(Some(token))
}

async fn serve_direct(
    handle: &Handle,
    from: libp2p::PeerId,
    mut s: Compat<libp2p::Stream>,
    local: &Local,
) {
    let started = std::time::Instant::now();
    let token = match read_hello(&mut s).await {
        Ok(t) => t,
        Err(e) => {
            tracing::debug!(error = %e, "a direct tunnel without a valid hello");
            handle.stats.dropped_in.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    match reach_local(handle, local, token.as_deref()).await {
        Ok(tcp) => {
            if write_byte(&mut s, Status::Ok).await.is_ok() {
                let tracked = handle.connections.track(incoming(
                    handle,
                    &from,
                    Kind::Direct,
                    vec![],
                    "the client's own tunnel stream, over its libp2p connection to this node (direct, \
                     hole-punched, or through this node's relay)",
                    started,
                ));
                carry(handle, tcp, Tunnel::Plain(s), 0, &tracked.conn).await;
            }
        }
        Err(st) => {
            let _ = write_byte(&mut s, st).await;
        }
    }
}

/// For a tunnel (direct or sealed) that presented `token`: the connection to the local port,
/// or the status that refuses it. Nothing touches the port for a tunnel `local` does not admit.
async fn reach_local(
    handle: &Handle,
    local: &Local,
    token: Option<&[u8]>,
) -> Result<TcpStream, Status> {
    if !local.admits(handle, token) {
        return Err(Status::Unauthorized);
    }
    let port = local.port;
    match TcpStream::connect(("127.0.0.1", port)).await {
        Ok(tcp) => {
            let _ = tcp.set_nodelay(true);
            Ok(tcp)
        }
        Err(e) => {
            tracing::warn!(port, error = %e, "a tunnel arrived but the local port refused it");
            Err(Status::LocalRefused)
        }
    }
}

async fn write_byte<W: AsyncWrite + Unpin>(w: &mut W, st: Status) -> io::Result<()> {
    w.write_all(&[st.to_byte()]).await?;
    w.flush().await
}

async fn refuse<W: AsyncWrite + Unpin>(w: &mut W, st: Status) {
    let _ = frame::write(w, &[st.to_byte()]).await;
    let _ = w.flush().await;
    let _ = w.shutdown().await;
}

async fn on_circuit(
    handle: &Handle,
    from: libp2p::PeerId,
    mut s: Compat<libp2p::Stream>,
    local: Option<Local>,
) {
    let header = match step("the previous hop", frame::read(&mut s, MAX_HEADER)).await {
        Ok(Some(h)) => h,
        _ => {
            handle.stats.dropped_in.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let Ok(header) = CircuitHeader::decode(&header) else {
        handle.stats.dropped_in.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if header.hops.is_empty() {
        match local {
            Some(local) => serve_sealed(handle, from, s, &local).await,
            None => refuse(&mut s, Status::NoService).await,
        }
    } else {
        relay(handle, from, s, header).await;
    }
}

struct CircuitGuard<'a>(&'a super::Stats);

impl Drop for CircuitGuard<'_> {
    fn drop(&mut self) {
        self.0.circuits_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where `BEAM_RELAY_TAP` names a file, a relay appends every byte it carries to it: what a
/// relay's operator could see (ciphertext only; the tests check that a plaintext marker never
/// appears). For audits; off unless set.
pub const TAP_ENV: &str = "BEAM_RELAY_TAP";

/// The tap file, opened once.
fn tap() -> Option<Arc<std::sync::Mutex<std::fs::File>>> {
    static TAP: std::sync::OnceLock<Option<Arc<std::sync::Mutex<std::fs::File>>>> =
        std::sync::OnceLock::new();
    TAP.get_or_init(|| {
        let path = std::env::var_os(TAP_ENV)?;
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            Ok(f) => Some(Arc::new(std::sync::Mutex::new(f))),
            Err(e) => {
                eprintln!(
                    "warning: {TAP_ENV}={}: {e}; relaying without the tap",
                    std::path::Path::new(&path).display()
                );
                None
            }
        }
    })
    .clone()
}

async fn relay(
    handle: &Handle,
    from: libp2p::PeerId,
    mut inbound: Compat<libp2p::Stream>,
    header: CircuitHeader,
) {
    if !handle.admit_circuit().await {
        refuse(&mut inbound, Status::RelayRefused).await;
        return;
    }
    handle.stats.circuits_open.fetch_add(1, Ordering::Relaxed);
    let _guard = CircuitGuard(&handle.stats);
    let (peer, addr) = &header.hops[0];
    let next = to_libp2p(&beam_node::PeerId::from_bytes(*peer));
    let (Some(next), Ok(addr)) = (next, addr.parse::<Multiaddr>()) else {
        refuse(&mut inbound, Status::NextHopFailed).await;
        return;
    };
    handle.dial(next, vec![addr]).await;
    let mut control = handle.control.clone();
    let Ok(out) = step(
        "the next hop",
        control.open_stream(next, PROTO_CIRCUIT.clone()),
    )
    .await
    else {
        refuse(&mut inbound, Status::NextHopFailed).await;
        return;
    };
    let mut out = out.compat();
    let Ok(bytes) = header.rest().encode() else {
        return;
    };
    if frame::write(&mut out, &bytes).await.is_err() || out.flush().await.is_err() {
        refuse(&mut inbound, Status::NextHopFailed).await;
        return;
    }
    handle
        .stats
        .circuits_relayed
        .fetch_add(1, Ordering::Relaxed);
    {
        let mut helped = handle
            .stats
            .helped
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if helped.len() < super::MAX_HELPED {
            helped.insert(from);
        }
    }
    let (ir, iw) = tokio::io::split(inbound);
    let (or, ow) = tokio::io::split(out);
    let tap = tap();
    let relayed = || {
        Some(Relayed {
            limiter: &handle.limiter,
            from: &from,
            tap: tap.as_deref(),
        })
    };
    let counter = &handle.stats.bytes_relayed;
    let activity = Activity::default();
    let moving = async {
        let counters = [counter];
        tokio::try_join!(
            copy_counted(ir, ow, &counters, &activity, relayed()),
            copy_counted(or, iw, &counters, &activity, relayed())
        )
        .map(|_| ())
    };
    if let Err(e) = until_idle(handle, &activity, moving).await {
        tracing::debug!(error = %e, "relayed circuit ended with an error");
    }
}

async fn serve_sealed(
    handle: &Handle,
    from: libp2p::PeerId,
    mut s: Compat<libp2p::Stream>,
    local: &Local,
) {
    let started = std::time::Instant::now();
    let Ok(responder) = handle.e2e_responder().await else {
        return;
    };
    let result: Result<(), String> = async {
        let msg1 = read_step(&mut s).await?;
        let (pending, msg2) = responder.respond(&msg1).map_err(|e| e.to_string())?;
        step("the client", async {
            frame::write(&mut s, &msg2).await?;
            s.flush().await
        })
        .await
        .map_err(|e| e.to_string())?;
        let msg3 = read_step(&mut s).await?;
        let (mut session, first) = pending.finish(&msg3).map_err(|e| e.to_string())?;
        let token = parse_hello(&first).map_err(|e| e.to_string())?;
        let (tcp, st) = match reach_local(handle, local, token).await {
            Ok(tcp) => (Some(tcp), Status::Ok),
            Err(st) => (None, st),
        };
        let sealed = session
            .encrypt(&[st.to_byte()])
            .map_err(|e| e.to_string())?;
        frame::write(&mut s, &sealed)
            .await
            .map_err(|e| e.to_string())?;
        s.flush().await.map_err(|e| e.to_string())?;
        if let Some(tcp) = tcp {
            let tracked = handle.connections.track(incoming(
                handle,
                &from,
                Kind::Relayed,
                vec![short(&from)],
                "sealed end to end through relays: this node sees only the last one, not the \
                 client",
                started,
            ));
            carry(
                handle,
                tcp,
                Tunnel::Sealed(s, Box::new(session)),
                0,
                &tracked.conn,
            )
            .await;
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        handle.stats.dropped_in.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(error = %e, "circuit handshake failed");
    }
}

fn short(p: &libp2p::PeerId) -> String {
    super::addr::from_libp2p(p).map_or_else(|| p.to_string(), |b| b.short())
}

/// The inspector's record of a tunnel a client opened to this node's service.
fn incoming(
    handle: &Handle,
    from: &libp2p::PeerId,
    kind: Kind,
    via: Vec<String>,
    why: &str,
    started: std::time::Instant,
) -> Info {
    Info {
        direction: Direction::In,
        kind,
        peer: short(from),
        via,
        why: why.into(),
        setup_ms: super::inspect::ms(started.elapsed()),
        first_hop_rtt_ms: handle.rtt_of(from).map(super::inspect::ms),
        route_rtt_ms: None,
        predicted_direct_ms: None,
    }
}

async fn read_step<R: AsyncRead + Unpin>(s: &mut R) -> Result<Vec<u8>, String> {
    step("the client", frame::read(s, MAX_HANDSHAKE))
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "the circuit closed during the handshake".to_string())
}
