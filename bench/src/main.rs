//! The load tools of `reports/bench/tunnel.sh`, one binary:
//!
//! - `beam-bench serve --port P`: the origin every case talks to, an HTTP/1.1 server (hyper):
//!   `GET /` answers 64 bytes, `GET /bytes/N` answers N bytes, streamed from one static buffer so
//!   the origin costs next to nothing.
//! - `beam-bench get --port P --bytes N --streams S`: downloads N bytes in S parallel connections
//!   (N/S each) and prints the aggregate throughput as JSON; fails unless every byte arrived.
//! - `beam-bench first-byte --port P -- CMD ARGS…`: starts CMD (e.g. `beam connect …`), then
//!   connects to 127.0.0.1:P every millisecond until a `GET /` gets its first byte back: that is
//!   the cold time, from the start of CMD. Then later connections' first byte (the median of 21):
//!   the warm time.
//!   CMD keeps running (its pid is in the JSON), so the script can measure and stop it.

use std::convert::Infallible;
use std::pin::Pin;
use std::process::Stdio;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use hyper::body::{Body, Bytes, Frame, SizeHint};
use hyper::{Request, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
#[command(about = "Load tools for reports/bench/tunnel.sh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve `GET /` (64 bytes) and `GET /bytes/N` (N bytes) on 127.0.0.1:PORT.
    Serve {
        #[arg(long)]
        port: u16,
    },
    /// Download BYTES from 127.0.0.1:PORT/bytes/… over STREAMS parallel connections.
    Get {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        bytes: u64,
        #[arg(long, default_value_t = 1)]
        streams: u64,
    },
    /// Start CMD, then time the first byte of `GET /` on 127.0.0.1:PORT (cold), then again on a
    /// new connection (warm).
    FirstByte {
        #[arg(long)]
        port: u16,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Where CMD's standard output and error go.
        #[arg(long)]
        log: std::path::PathBuf,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match cli.command {
            Command::Serve { port } => serve(port).await,
            Command::Get {
                port,
                bytes,
                streams,
            } => get(port, bytes, streams).await,
            Command::FirstByte {
                port,
                timeout,
                log,
                cmd,
            } => first_byte(port, Duration::from_secs(timeout), &log, &cmd).await,
        }
    })
}

/// A body of `left` zero bytes, in slices of one static buffer.
struct Zeros {
    left: u64,
}

static ZEROS: [u8; 256 * 1024] = [0; 256 * 1024];

impl Body for Zeros {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(ZEROS.len() as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&ZEROS[..n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

async fn serve(port: u16) -> Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("listen on 127.0.0.1:{port}"))?;
    eprintln!("serving on 127.0.0.1:{port}");
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                    Ok::<_, Infallible>(answer(req.uri().path()))
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn answer(path: &str) -> Response<Zeros> {
    let (status, left) = match path {
        "/" => (StatusCode::OK, 64),
        p => match p.strip_prefix("/bytes/").map(str::parse::<u64>) {
            Some(Ok(n)) => (StatusCode::OK, n),
            _ => (StatusCode::NOT_FOUND, 0),
        },
    };
    let mut r = Response::new(Zeros { left });
    *r.status_mut() = status;
    r
}

/// One `GET path` with `Connection: close`; returns the body's length once the server closes.
async fn fetch(port: u16, path: &str) -> Result<u64> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut head = Vec::new();
    let mut body = 0u64;
    loop {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if body == 0 && !head.ends_with(b"\r\n\r\n") {
            head.extend_from_slice(&buf[..n]);
            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                body = (head.len() - end - 4) as u64;
                head.truncate(end + 4);
                if !head.starts_with(b"HTTP/1.1 200") {
                    bail!(
                        "{}",
                        String::from_utf8_lossy(&head).lines().next().unwrap_or("")
                    );
                }
            }
        } else {
            body += n as u64;
        }
    }
    Ok(body)
}

async fn get(port: u16, bytes: u64, streams: u64) -> Result<()> {
    if streams == 0 || !bytes.is_multiple_of(streams) {
        bail!("--bytes must be a multiple of --streams (≥ 1)");
    }
    let each = bytes / streams;
    let started = Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|_| tokio::spawn(async move { fetch(port, &format!("/bytes/{each}")).await }))
        .collect();
    let mut got = 0;
    for t in tasks {
        let n = t.await??;
        if n != each {
            bail!("a stream ended after {n} of {each} bytes");
        }
        got += n;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "bytes": got,
            "streams": streams,
            "seconds": secs,
            "mib_per_s": got as f64 / secs / (1024.0 * 1024.0),
        })
    );
    Ok(())
}

/// Connects and sends `GET /`; the time until the first byte of the answer, or `None` when the
/// port is not open yet or the connection ended with no answer (the tunnel is not ready).
async fn one_first_byte(port: u16) -> Option<Duration> {
    let t = Instant::now();
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let _ = tcp.set_nodelay(true);
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut b = [0u8; 1];
    match tcp.read(&mut b).await {
        Ok(1) => Some(t.elapsed()),
        _ => None,
    }
}

async fn first_byte(
    port: u16,
    timeout: Duration,
    log: &std::path::Path,
    cmd: &[String],
) -> Result<()> {
    let out = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    let started = Instant::now();
    let child = std::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("start {}", cmd[0]))?;
    let cold = loop {
        if one_first_byte(port).await.is_some() {
            break started.elapsed();
        }
        if started.elapsed() > timeout {
            bail!(
                "no answer on 127.0.0.1:{port} within {timeout:?} (see {})",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    // Warm: later connections through the running client, one at a time; the median of 21.
    let mut warm = Vec::new();
    for _ in 0..21 {
        warm.push(
            one_first_byte(port)
                .await
                .context("a later connection got no answer")?,
        );
    }
    warm.sort();
    let warm = warm[warm.len() / 2];
    println!(
        "{}",
        serde_json::json!({
            "pid": child.id(),
            "cold_ms": cold.as_secs_f64() * 1e3,
            "warm_ms": warm.as_secs_f64() * 1e3,
        })
    );
    Ok(())
}
