//! Logging: tracing to stderr (`RUST_LOG`, else `logging.level`), with Arti's safe-logging
//! idea, and the recent warnings `beam diagnose` reports.
//!
//! **Safe logging.** At `info`, `warn` and `error`, every IP address (v4 or v6, alone, with a
//! port or in a multiaddr) and every `.onion` address in a log line's fields is written as
//! `[scrubbed]`, except this node's own (its listen addresses and its onion service, registered
//! with [`own`]). `debug` and `trace` lines are written as they are: a user who asks for them
//! is debugging and needs the addresses. The scrubbing reads tokens, not patterns: a token is
//! scrubbed only when it parses as an address, so times (`18:20:01`) and Rust paths
//! (`beam::p2p`) are left alone.
//!
//! **Recent warnings.** The last [`RECENT`] `warn` and `error` events, scrubbed the same way,
//! are kept in memory for `beam diagnose` (through the control socket).

use std::collections::{HashSet, VecDeque};
use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, OnceLock, RwLock};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Warnings and errors kept for `beam diagnose`.
pub const RECENT: usize = 100;
/// What a scrubbed address is written as.
pub const SCRUBBED: &str = "[scrubbed]";

/// One kept warning or error.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// Unix time, seconds.
    pub t: u64,
    pub level: String,
    pub target: String,
    /// The fields, scrubbed.
    pub text: String,
}

fn own_set() -> &'static RwLock<HashSet<String>> {
    static OWN: OnceLock<RwLock<HashSet<String>>> = OnceLock::new();
    OWN.get_or_init(Default::default)
}

fn recent_buf() -> &'static Mutex<VecDeque<Entry>> {
    static RECENT_BUF: OnceLock<Mutex<VecDeque<Entry>>> = OnceLock::new();
    RECENT_BUF.get_or_init(Default::default)
}

/// Marks an address (an IP, or a `.onion`) as this node's own: logged in clear, however it
/// is written (with a port, at the end of a sentence).
pub fn own(addr: impl Into<String>) {
    let addr = addr.into();
    let canonical = address(&addr).unwrap_or_else(|| addr.to_ascii_lowercase());
    own_set()
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(canonical);
}

/// The warnings and errors kept, oldest first.
pub fn recent() -> Vec<Entry> {
    recent_buf()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect()
}

/// `text` with every address that is not this node's own replaced by [`SCRUBBED`].
pub fn scrub(text: &str) -> String {
    let own = own_set().read().unwrap_or_else(|p| p.into_inner());
    let mut out = String::with_capacity(text.len());
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        if !token.is_empty() {
            if address(token).is_some_and(|a| !own.contains(&a)) {
                out.push_str(SCRUBBED);
            } else {
                out.push_str(token);
            }
            token.clear();
        }
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == '.' || c == ':' {
            token.push(c);
        } else {
            flush(&mut token, &mut out);
            out.push(c);
        }
    }
    flush(&mut token, &mut out);
    out
}

/// The address a token (letters, digits, `.` and `:`) is, in one canonical form: an IP (with
/// or without a port; not the unspecified one) as `IpAddr` writes it, or a `.onion` (v3) in
/// lower case. `None`: not an address.
fn address(token: &str) -> Option<String> {
    let t = token.trim_end_matches(['.', ':']);
    if let Some(host) = t.strip_suffix(".onion") {
        let label = host.rsplit('.').next().unwrap_or(host);
        let onion = label.len() == 56
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b));
        return onion.then(|| format!("{label}.onion"));
    }
    let ip = t
        .parse::<IpAddr>()
        .ok()
        .or_else(|| t.parse::<SocketAddr>().ok().map(|s| s.ip()))?;
    (!ip.is_unspecified()).then(|| ip.to_string())
}

/// Sets up tracing: `RUST_LOG` if set, else `level`.
pub fn init(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .event_format(Safe),
        )
        .with(Recent)
        .try_init();
}

/// The line format: `time LEVEL target: fields`, the fields scrubbed at info and above.
pub struct Safe;

impl<S, N> FormatEvent<S, N> for Safe
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        write!(writer, "{now} {:>5} {}: ", meta.level(), meta.target())?;
        let mut fields = String::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                fields.push_str(span.name());
                if let Some(f) = span.extensions().get::<FormattedFields<N>>()
                    && !f.is_empty()
                {
                    write!(fields, "{{{f}}}")?;
                }
                fields.push_str(": ");
            }
        }
        ctx.field_format()
            .format_fields(Writer::new(&mut fields), event)?;
        if *meta.level() <= Level::INFO {
            fields = scrub(&fields);
        }
        writeln!(writer, "{fields}")
    }
}

/// Keeps the recent warnings and errors.
struct Recent;

impl<S: Subscriber> tracing_subscriber::Layer<S> for Recent {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() > Level::WARN {
            return;
        }
        let mut v = Fields(String::new());
        event.record(&mut v);
        let entry = Entry {
            t: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            level: meta.level().to_string(),
            target: meta.target().to_string(),
            text: scrub(v.0.trim()),
        };
        let mut buf = recent_buf().lock().unwrap_or_else(|p| p.into_inner());
        if buf.len() >= RECENT {
            buf.pop_front();
        }
        buf.push_back(entry);
    }
}

/// `message field=value …`.
struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?} ");
        } else {
            let _ = write!(self.0, "{}={value:?} ", field.name());
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value} ");
        } else {
            let _ = write!(self.0, "{}={value} ", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONION: &str = "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion";

    #[test]
    fn addresses_are_scrubbed_and_nothing_else() {
        let line = format!(
            "dial failed: /ip4/203.0.113.9/tcp/4001 and [2001:db8::1]:443, 198.51.100.2:80, \
             {ONION}; at 18:20:01 in beam::p2p, data::bytes, version 0.47, ::, 0.0.0.0"
        );
        assert_eq!(
            scrub(&line),
            "dial failed: /ip4/[scrubbed]/tcp/4001 and [[scrubbed]]:443, [scrubbed], \
             [scrubbed]; at 18:20:01 in beam::p2p, data::bytes, version 0.47, ::, 0.0.0.0"
        );
    }

    #[test]
    fn the_nodes_own_addresses_stay() {
        own("192.0.2.77");
        own("zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz.onion");
        assert_eq!(
            scrub("listening on /ip4/192.0.2.77/tcp/1, peer 192.0.2.78"),
            "listening on /ip4/192.0.2.77/tcp/1, peer [scrubbed]"
        );
        // However it is written: with a port, ending a sentence.
        assert_eq!(
            scrub("bound 192.0.2.77:4001. Reached 192.0.2.77."),
            "bound 192.0.2.77:4001. Reached 192.0.2.77."
        );
        assert_eq!(
            scrub("http://zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz.onion/"),
            "http://zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz.onion/"
        );
    }

    #[test]
    fn info_lines_are_scrubbed_debug_lines_are_not_and_warnings_are_kept() {
        use std::sync::Arc;
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("lock").extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::new("debug"))
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(move || out.clone())
                    .with_ansi(false)
                    .event_format(Safe),
            )
            .with(Recent);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(peer = "/ip4/203.0.113.5/tcp/9", "connected");
            tracing::debug!(peer = "/ip4/203.0.113.5/tcp/9", "connected");
            tracing::warn!(
                error = "timeout dialling 203.0.113.6:4001",
                "kept for diagnose"
            );
        });
        let text = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].contains(" INFO ")
                && lines[0].ends_with("connected peer=\"/ip4/[scrubbed]/tcp/9\""),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].contains("DEBUG") && lines[1].contains("/ip4/203.0.113.5/tcp/9"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].contains(" WARN ")
                && lines[2].contains("dialling [scrubbed]")
                && !lines[2].contains("203.0.113.6"),
            "{}",
            lines[2]
        );
        let kept = recent();
        let w = kept
            .iter()
            .rev()
            .find(|e| e.text.starts_with("kept for diagnose"))
            .expect("kept");
        assert_eq!(w.level, "WARN");
        assert_eq!(
            w.text,
            "kept for diagnose error=timeout dialling [scrubbed]"
        );
    }
}
