//! Helpers for beam's end-to-end tests: real `beam` processes on loopback (and in network
//! namespaces the tests build themselves).
//!
//! - [`beam_bin`] — the binary under test (`$BEAM_BIN`, else the workspace's
//!   `target/debug/beam`, built on first use).
//! - [`Beam`] — a running `beam` process: its stdout lines, waited for with a timeout; killed
//!   when dropped, so a failing test leaves nothing behind.
//! - [`HttpServer`] / [`http_get`] — a tiny HTTP server with a known body, and a client that
//!   returns the body and the time to its first byte.
//! - [`TempDir`] — a state directory per node, removed when dropped.
//! - [`tornet`] — a private Tor network on loopback (Debian's `tor`), torn down when dropped.

pub mod netns;
pub mod tornet;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The `beam` binary under test.
pub fn beam_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("BEAM_BIN") {
            return PathBuf::from(p);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("tests/ is inside the workspace")
            .to_path_buf();
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            // The whole workspace with every target, as `.ci/run` does: dependencies then get
            // the features they have under `cargo test --workspace` (dev-dependencies such as
            // proptest add some), so this build reuses that one's.
            .args(["build", "--workspace", "--all-targets", "--locked"])
            .current_dir(&root)
            .status()
            .expect("run cargo build -p beam");
        assert!(status.success(), "cargo build --workspace failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        target.join("debug").join("beam")
    })
    .clone()
}

/// Seconds since the first call (for timestamps in verbose output).
pub fn since_start() -> f64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// A temporary directory, removed when dropped.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh directory named after `label`.
    pub fn new(label: &str) -> Self {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("beam-e2e-{}-{label}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    /// Its path as a string.
    pub fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `beam` process.
pub struct Beam {
    /// What it is, for messages.
    pub label: String,
    child: Child,
    lines: Receiver<String>,
    /// Every stdout line so far.
    pub seen: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Beam {
    /// Starts `beam ARGS` (with `--allow-private-addrs`: everything here is on loopback), with
    /// `wrapper` in front when given (e.g. `ip netns exec NS`).
    pub fn start_in(wrapper: &[&str], label: &str, args: &[&str]) -> Self {
        Self::spawn(wrapper, label, args, &[])
    }

    /// Starts `beam ARGS` with `wrapper` in front and extra environment variables.
    pub fn start_in_env(
        wrapper: &[&str],
        label: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::spawn(wrapper, label, args, env)
    }

    /// Starts `beam ARGS` on this host with extra environment variables.
    pub fn start_env(label: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn(&[], label, args, env)
    }

    fn spawn(wrapper: &[&str], label: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let bin = beam_bin();
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.args(args).arg("--allow-private-addrs");
        // Tests on one host would find each other's nodes by mDNS (multicast loops back):
        // only a test that asks for it (BEAM_TEST_MDNS in `env`) keeps mDNS on.
        if !env.iter().any(|(k, _)| *k == "BEAM_TEST_MDNS") {
            cmd.arg("--no-mdns");
        }
        cmd.env(
            "RUST_LOG",
            std::env::var("BEAM_TEST_LOG").unwrap_or("warn".into()),
        )
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn beam");
        let (tx, lines) = channel();
        let seen = Arc::new(Mutex::new(vec![]));
        let stdout = child.stdout.take().expect("stdout");
        let (seen2, label2) = (seen.clone(), label.to_string());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if std::env::var_os("BEAM_TEST_VERBOSE").is_some() {
                    eprintln!("{:7.2} [{label2}] {line}", since_start());
                }
                seen2.lock().expect("lock").push(line.clone());
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(vec![]));
        let err = child.stderr.take().expect("stderr");
        let (stderr2, label3) = (stderr.clone(), label.to_string());
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if std::env::var_os("BEAM_TEST_VERBOSE").is_some() {
                    eprintln!("[{label3} stderr] {line}");
                }
                stderr2.lock().expect("lock").push(line);
            }
        });
        Beam {
            label: label.to_string(),
            child,
            lines,
            seen,
            stderr,
        }
    }

    /// Starts `beam ARGS` on this host.
    pub fn start(label: &str, args: &[&str]) -> Self {
        Self::start_in(&[], label, args)
    }

    /// Waits for a stdout line starting with `prefix` (one printed already counts); returns the
    /// first such line. Panics with the process's output on timeout or exit.
    pub fn wait_for(&mut self, prefix: &str, timeout: Duration) -> String {
        self.wait_until(prefix, |l| l.starts_with(prefix), timeout)
    }

    /// Waits for a stdout line that `pred` accepts (`what` names it in a failure message).
    pub fn wait_until(
        &mut self,
        what: &str,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> String {
        let prefix = what;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.seen.lock().expect("lock").iter().find(|l| pred(l)) {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left.min(Duration::from_millis(50))) {
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) if left.is_zero() => {
                    panic!(
                        "{}: no line `{prefix}…` within {timeout:?}\n{}",
                        self.label,
                        self.dump()
                    )
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(100));
                    if let Some(l) = self.seen.lock().expect("lock").iter().find(|l| pred(l)) {
                        return l.clone();
                    }
                    panic!("{}: exited before `{prefix}…`\n{}", self.label, self.dump())
                }
            }
        }
    }

    /// What it printed, for failure messages.
    pub fn dump(&self) -> String {
        format!(
            "stdout:\n  {}\nstderr:\n  {}",
            self.seen.lock().expect("lock").join("\n  "),
            self.stderr.lock().expect("lock").join("\n  ")
        )
    }

    /// Waits for a stderr line containing `needle`; returns it. Panics with the output on
    /// timeout.
    pub fn wait_stderr(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.stderr().into_iter().find(|l| l.contains(needle)) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no stderr line with `{needle}` within {timeout:?}\n{}",
                self.label,
                self.dump()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().expect("lock").clone()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills it (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Beam {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `/ip4/…/tcp/…/p2p/…` address in a `listening …` line.
pub fn listen_addr(line: &str) -> String {
    line.trim_start_matches("listening ").trim().to_string()
}

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A tiny HTTP server: answers every request with `body`, and counts connections.
pub struct HttpServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Connections accepted.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl HttpServer {
    /// Serves `body` on a free port of `ip` until the process ends.
    pub fn start_on(ip: &str, body: Arc<Vec<u8>>) -> Self {
        let l = TcpListener::bind((ip, 0)).expect("bind http");
        let port = l.local_addr().expect("addr").port();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = connections.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let body = body.clone();
                std::thread::spawn(move || {
                    let mut req = vec![];
                    let mut buf = [0u8; 4096];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(head.as_bytes());
                    let _ = s.write_all(&body);
                    let _ = s.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        HttpServer { port, connections }
    }

    /// Serves `body` on 127.0.0.1.
    pub fn start(body: Arc<Vec<u8>>) -> Self {
        Self::start_on("127.0.0.1", body)
    }
}

/// The answer to a GET.
#[derive(Debug)]
pub struct Fetched {
    /// The body (after the headers).
    pub body: Vec<u8>,
    /// From connecting to the first byte of the answer.
    pub first_byte: Duration,
}

/// GET / on 127.0.0.1:`port`, waiting at most `timeout`.
pub fn http_get(port: u16, timeout: Duration) -> std::io::Result<Fetched> {
    let start = Instant::now();
    let s = TcpStream::connect(("127.0.0.1", port))?;
    http_over(s, start, timeout)
}

/// GET http://`host`/ through the SOCKS5 proxy on 127.0.0.1:`socks_port` (a C-tor client's
/// SocksPort), the proxy resolving `host` (….onion).
pub fn socks_get(socks_port: u16, host: &str, timeout: Duration) -> std::io::Result<Fetched> {
    let start = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", socks_port))?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(&[5, 1, 0])?;
    let mut hello = [0u8; 2];
    s.read_exact(&mut hello)?;
    if hello != [5, 0] {
        return Err(std::io::Error::other(format!(
            "SOCKS greeting refused: {hello:?}"
        )));
    }
    let mut req = vec![5, 1, 0, 3, host.len() as u8];
    req.extend_from_slice(host.as_bytes());
    req.extend_from_slice(&80u16.to_be_bytes());
    s.write_all(&req)?;
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply)?;
    if reply[1] != 0 {
        return Err(std::io::Error::other(format!(
            "SOCKS CONNECT to {host} failed: reply code {}",
            reply[1]
        )));
    }
    http_over(s, start, timeout)
}

/// GET / over an open connection.
fn http_over(mut s: TcpStream, start: Instant, timeout: Duration) -> std::io::Result<Fetched> {
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")?;
    let mut all = vec![];
    let mut first = [0u8; 1];
    let n = s.read(&mut first)?;
    let first_byte = start.elapsed();
    all.extend_from_slice(&first[..n]);
    s.read_to_end(&mut all)?;
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {} bytes", all.len())))?;
    let head = String::from_utf8_lossy(&all[..split]).to_string();
    let body = all[split + 4..].to_vec();
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse::<usize>().ok())
        && len != body.len()
    {
        return Err(std::io::Error::other(format!(
            "body is {} bytes, content-length says {len}",
            body.len()
        )));
    }
    Ok(Fetched { body, first_byte })
}

/// GET with retries until it works or `timeout` passes.
pub fn http_get_retry(port: u16, timeout: Duration) -> Fetched {
    let deadline = Instant::now() + timeout;
    loop {
        match http_get(port, Duration::from_secs(60)) {
            Ok(f) => return f,
            Err(e) if Instant::now() >= deadline => panic!("GET :{port} kept failing: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// `n` deterministic pseudo-random bytes (xorshift), so a body has no easy pattern.
pub fn body_of(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

/// SHA-256 of `b`, hex.
pub fn sha256(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Milliseconds each of `n` GETs on 127.0.0.1:`port` took, each checked against the SHA-256
/// `want`; a failure panics naming `what` with `who`'s output.
pub fn latencies(port: u16, n: usize, want: &str, what: &str, who: &Beam) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let t = Instant::now();
            let f = http_get(port, Duration::from_secs(20))
                .unwrap_or_else(|e| panic!("{what}: GET {i} of {n}: {e}\n{}", who.dump()));
            assert_eq!(sha256(&f.body), want, "the body");
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}

/// The `p` quantile (0..=1, nearest rank) of `v`.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// `"key":N` from `beam status --json`.
pub fn json_u64(json: &str, key: &str) -> Option<u64> {
    let at = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    json[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// `beam status --json` of the node whose state directory is `dir`.
pub fn status_json(dir: &TempDir) -> String {
    let out = std::process::Command::new(beam_bin())
        .args(["--state-dir", dir.path(), "status", "--json"])
        .output()
        .expect("run beam status");
    assert!(
        out.status.success(),
        "beam status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}
