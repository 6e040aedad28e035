//! The node's history: what `beam status` shows, sampled every `history.sampleSeconds` (60 by
//! default) into an SQLite database in the state directory (`history.sqlite`), bounded to the
//! newest `history.maxSamples` rows (10,080: a week of minutes, about a megabyte). `beam network
//! stats --period 24h` reads it, with or without a running node.
//!
//! One writer (the running node; WAL journal, so readers never block it) and any number of
//! readers. A database that cannot be opened or written is logged and sampling stops: history
//! is a view, never a reason for the node to go down.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use rusqlite::{Connection, OpenFlags, params};
use serde::Serialize;

/// The database's file name in the state directory.
pub const FILE: &str = "history.sqlite";

/// How the node samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Between two samples.
    pub interval: Duration,
    /// Rows kept (the oldest go first).
    pub max_samples: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            max_samples: 10_080,
        }
    }
}

/// The database's path.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// One sample.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Sample {
    /// Unix time, seconds.
    pub t: i64,
    pub peers: i64,
    pub routing_table: i64,
    pub network_size: Option<f64>,
    pub dht_health: Option<f64>,
    pub rtt_p50_ms: Option<f64>,
    pub rate_in_bps: f64,
    pub rate_out_bps: f64,
    pub tunnels_open: i64,
    pub tunnels_total: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub bytes_relayed: i64,
}

/// The tunnel throughput (in, out) between each sample and the one before, bytes per second,
/// from the byte counters: what passed over the whole interval, not the last 10 s before the
/// sample. `None` for the first sample, and where the counters went down (the node restarted)
/// or no time passed.
pub fn interval_rates(samples: &[Sample]) -> Vec<Option<(f64, f64)>> {
    let mut out = Vec::with_capacity(samples.len());
    out.push(None);
    for w in samples.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let dt = (b.t - a.t) as f64;
        let (din, dout) = (b.bytes_in - a.bytes_in, b.bytes_out - a.bytes_out);
        out.push((dt > 0.0 && din >= 0 && dout >= 0).then(|| (din as f64 / dt, dout as f64 / dt)));
    }
    out.truncate(samples.len());
    out
}

impl Sample {
    /// A sample of a `beam status --json` object, at `t`.
    pub fn of_status(t: i64, s: &serde_json::Value) -> Self {
        let p = &s["p2p"];
        let int = |v: &serde_json::Value| v.as_u64().map_or(0, |n| n.min(i64::MAX as u64) as i64);
        Self {
            t,
            peers: int(&p["peers_connected"]),
            routing_table: int(&p["routing_table"]),
            network_size: p["network_size_estimate"].as_f64(),
            dht_health: p["dht_health"].as_f64(),
            rtt_p50_ms: p["peer_rtt_p50_ms"].as_f64(),
            rate_in_bps: p["rate_in_bps"].as_f64().unwrap_or(0.0),
            rate_out_bps: p["rate_out_bps"].as_f64().unwrap_or(0.0),
            tunnels_open: int(&s["tunnels_open"]),
            tunnels_total: int(&s["tunnels_total"]),
            bytes_in: int(&s["bytes_in"]),
            bytes_out: int(&s["bytes_out"]),
            bytes_relayed: int(&s["bytes_relayed"]),
        }
    }
}

const COLUMNS: &str = "t, peers, routing_table, network_size, dht_health, rtt_p50_ms, \
                       rate_in_bps, rate_out_bps, tunnels_open, tunnels_total, bytes_in, \
                       bytes_out, bytes_relayed";

/// The writer's end.
pub struct Writer {
    db: Connection,
    max_samples: u64,
}

impl Writer {
    /// Opens (creating) the database at `path`.
    pub fn open(path: &Path, max_samples: u64) -> Result<Self> {
        let db = Connection::open(path)
            .with_context(|| format!("cannot open the history database {}", path.display()))?;
        db.execute_batch(
            // The write-ahead log is checkpointed every 100 pages and cut back to 512 KiB after:
            // it never holds more than a few hundred KiB beside the table.
            // synchronous = NORMAL: in WAL mode the file stays consistent; a power cut may lose
            // the last sample, and no sample waits for an fsync.
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA wal_autocheckpoint = 100;
             PRAGMA journal_size_limit = 524288;
             CREATE TABLE IF NOT EXISTS samples (
                t INTEGER NOT NULL, peers INTEGER NOT NULL, routing_table INTEGER NOT NULL,
                network_size REAL, dht_health REAL, rtt_p50_ms REAL,
                rate_in_bps REAL NOT NULL, rate_out_bps REAL NOT NULL,
                tunnels_open INTEGER NOT NULL, tunnels_total INTEGER NOT NULL,
                bytes_in INTEGER NOT NULL, bytes_out INTEGER NOT NULL,
                bytes_relayed INTEGER NOT NULL);
             CREATE INDEX IF NOT EXISTS samples_t ON samples (t);",
        )
        .with_context(|| format!("{} is not a beam history database", path.display()))?;
        Ok(Self { db, max_samples })
    }

    /// Adds a sample, then drops the oldest past the bound.
    pub fn record(&mut self, s: &Sample) -> Result<()> {
        let tx = self.db.transaction()?;
        tx.execute(
            &format!(
                "INSERT INTO samples ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, \
                 ?11, ?12, ?13)"
            ),
            params![
                s.t,
                s.peers,
                s.routing_table,
                s.network_size,
                s.dht_health,
                s.rtt_p50_ms,
                s.rate_in_bps,
                s.rate_out_bps,
                s.tunnels_open,
                s.tunnels_total,
                s.bytes_in,
                s.bytes_out,
                s.bytes_relayed
            ],
        )?;
        tx.execute(
            // Rows go in in time order, so the newest are the highest rowids: one index
            // range, not a scan of the table against a list of those to keep.
            "DELETE FROM samples WHERE rowid <= (SELECT max(rowid) FROM samples) - ?1",
            params![self.max_samples.min(i64::MAX as u64) as i64],
        )?;
        tx.commit()?;
        Ok(())
    }
}

/// The samples of the last `period`, oldest first (none when there is no database yet).
pub fn read(path: &Path, period: Duration, now: i64) -> Result<Vec<Sample>> {
    if !path.exists() {
        return Ok(vec![]);
    }
    let db = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("cannot open the history database {}", path.display()))?;
    // A node starting up creates the file before its table: nothing sampled yet.
    let has_table: bool = db
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'samples'",
            [],
            |r| r.get(0),
        )
        .with_context(|| format!("{} is not a beam history database", path.display()))?;
    if !has_table {
        return Ok(vec![]);
    }
    let since = now.saturating_sub(period.as_secs().min(i64::MAX as u64) as i64);
    let mut q = db
        .prepare(&format!(
            "SELECT {COLUMNS} FROM samples WHERE t >= ?1 ORDER BY t, rowid"
        ))
        .with_context(|| format!("{} is not a beam history database", path.display()))?;
    let rows = q.query_map(params![since], |r| {
        Ok(Sample {
            t: r.get(0)?,
            peers: r.get(1)?,
            routing_table: r.get(2)?,
            network_size: r.get(3)?,
            dht_health: r.get(4)?,
            rtt_p50_ms: r.get(5)?,
            rate_in_bps: r.get(6)?,
            rate_out_bps: r.get(7)?,
            tunnels_open: r.get(8)?,
            tunnels_total: r.get(9)?,
            bytes_in: r.get(10)?,
            bytes_out: r.get(11)?,
            bytes_relayed: r.get(12)?,
        })
    })?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .with_context(|| format!("cannot read {}", path.display()))
}

/// Unix time now, seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Reads a period such as `24h`, `30m`, `7d` or `1h 30m`.
pub fn parse_period(text: &str) -> Result<Duration> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        anyhow::anyhow!(
            "--period takes a duration such as 24h, 30m, 7d or 1h30m; got `{text}`: {e}"
        )
    })?;
    if d.is_zero() {
        bail!("--period must be longer than 0");
    }
    Ok(d)
}

/// Samples the node every `settings.interval` into `path`, until the process ends. `status`
/// gives `beam status --json`'s object.
pub fn spawn<F, Fut>(path: PathBuf, settings: Settings, status: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<serde_json::Value>> + Send,
{
    tokio::spawn(async move {
        let writer = match Writer::open(&path, settings.max_samples) {
            Ok(w) => std::sync::Arc::new(std::sync::Mutex::new(w)),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "no history: cannot open its database");
                return;
            }
        };
        // Failed writes in a row (a full disk, say): warned of once, and after this many the
        // sampling stops.
        const GIVE_UP_AFTER: u32 = 10;
        let mut failures = 0u32;
        let mut tick = tokio::time::interval(settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        tick.tick().await; // the first tick is now: the first sample comes one interval in
        loop {
            tick.tick().await;
            let s = match status().await {
                Ok(s) => Sample::of_status(unix_now(), &s),
                Err(e) => {
                    tracing::debug!(error = %e, "no history sample");
                    continue;
                }
            };
            // Disk work off the runtime's threads.
            let w = writer.clone();
            let written = tokio::task::spawn_blocking(move || {
                w.lock().unwrap_or_else(|p| p.into_inner()).record(&s)
            })
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("the history writer failed: {e}")));
            match written {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(error = %format!("{e:#}"), "a history sample was not written");
                    }
                    if failures >= GIVE_UP_AFTER {
                        tracing::warn!(error = %format!("{e:#}"), "history sampling stops after {GIVE_UP_AFTER} failed writes");
                        return;
                    }
                }
            }
        }
    });
}

/// Draws `samples` as an SVG file at `out`: peers, peer RTT p50 and tunnel throughput against
/// time (minutes before the last sample), one panel each.
pub fn plot(samples: &[Sample], out: &Path) -> Result<()> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("cannot draw {}: {e}", out.display());
    let Some(last) = samples.last().map(|s| s.t) else {
        bail!("no samples to draw");
    };
    let x = |s: &Sample| (s.t - last) as f64 / 60.0;
    let x_lo = samples.first().map_or(-1.0, x).min(-1.0 / 60.0);
    let root = SVGBackend::new(out, (1000, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let panels = root.split_evenly((3, 1));
    type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);
    let kib = |v: f64| v / 1024.0;
    let rates = interval_rates(samples);
    let drawn: [(&str, &str, Vec<Series<'_>>); 3] = [
        (
            "peers connected",
            "peers",
            vec![(
                "peers",
                BLUE,
                samples.iter().map(|s| (x(s), s.peers as f64)).collect(),
            )],
        ),
        (
            "peer RTT p50 (libp2p ping)",
            "ms",
            vec![(
                "RTT p50",
                RED,
                samples
                    .iter()
                    .filter_map(|s| Some((x(s), s.rtt_p50_ms?)))
                    .collect(),
            )],
        ),
        (
            "tunnel throughput (average between samples)",
            "KiB/s",
            vec![
                (
                    "in",
                    GREEN,
                    samples
                        .iter()
                        .zip(&rates)
                        .filter_map(|(s, r)| Some((x(s), kib(r.as_ref()?.0))))
                        .collect(),
                ),
                (
                    "out",
                    MAGENTA,
                    samples
                        .iter()
                        .zip(&rates)
                        .filter_map(|(s, r)| Some((x(s), kib(r.as_ref()?.1))))
                        .collect(),
                ),
            ],
        ),
    ];
    for (area, (caption, unit, series)) in panels.iter().zip(drawn) {
        let top = series
            .iter()
            .flat_map(|(_, _, p)| p.iter().map(|&(_, y)| y))
            .fold(0.0_f64, f64::max);
        let top = if top > 0.0 { top * 1.15 } else { 1.0 };
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(x_lo..0.0, 0.0..top)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("minutes before the last sample")
            .y_desc(unit)
            .draw()
            .map_err(|e| err(&e))?;
        for (label, colour, points) in series {
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(label)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(label: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("beam-history-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    fn sample(t: i64, peers: i64) -> Sample {
        Sample {
            t,
            peers,
            rtt_p50_ms: Some(1.5),
            ..Sample::default()
        }
    }

    #[test]
    fn two_samples_read_back_as_two_points_in_the_period() {
        let d = dir("two");
        let p = path(&d);
        assert!(
            read(&p, Duration::from_secs(86_400), 1_000)
                .expect("read")
                .is_empty()
        );
        let mut w = Writer::open(&p, 100).expect("open");
        w.record(&sample(1_000, 3)).expect("record");
        w.record(&sample(1_060, 4)).expect("record");
        let got = read(&p, Duration::from_secs(86_400), 1_100).expect("read");
        assert_eq!(got, vec![sample(1_000, 3), sample(1_060, 4)]);
        // A period that reaches back past only the second.
        let got = read(&p, Duration::from_secs(60), 1_100).expect("read");
        assert_eq!(got, vec![sample(1_060, 4)]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_database_stays_under_its_bound_after_many_samples() {
        let d = dir("bound");
        let p = path(&d);
        let mut w = Writer::open(&p, 500).expect("open");
        let mut sizes = vec![];
        for i in 0..5_000 {
            w.record(&sample(i, i)).expect("record");
            if i % 1_000 == 999 {
                let bytes = |f: &Path| std::fs::metadata(f).map_or(0, |m| m.len());
                sizes.push(bytes(&p) + bytes(&d.join(format!("{FILE}-wal"))));
            }
        }
        let got = read(&p, Duration::from_secs(10_000), 5_000).expect("read");
        assert_eq!(got.len(), 500);
        assert_eq!(got.first().map(|s| s.t), Some(4_500));
        // Deleted rows' pages are reused: the files stop growing once the bound is reached.
        assert!(sizes[4] <= sizes[1] + 64 * 1024, "sizes {sizes:?}");
        assert!(sizes[4] < 1024 * 1024, "sizes {sizes:?}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused_plainly() {
        let d = dir("junk");
        let p = path(&d);
        std::fs::write(
            &p,
            b"this is not sqlite, just text that is long enough to look",
        )
        .expect("w");
        let e = Writer::open(&p, 10).err().expect("refused");
        assert!(format!("{e:#}").contains("history"), "{e:#}");
        assert!(read(&p, Duration::from_secs(60), 100).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_history_is_drawn_as_an_svg_with_a_line_per_series() {
        let d = dir("plot");
        let out = d.join("h.svg");
        let samples: Vec<Sample> = (0..10).map(|i| sample(i * 60, i % 4)).collect();
        plot(&samples, &out).expect("plot");
        let svg = std::fs::read_to_string(&out).expect("svg");
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        // The data lines (2 px; the legend's are 1 px): peers and RTT, 10 points each; in and
        // out, 9 (a rate is between two samples).
        let lines: Vec<&str> = svg
            .lines()
            .filter(|l| l.starts_with("<polyline") && l.contains("stroke-width=\"2\""))
            .collect();
        assert_eq!(lines.len(), 4, "{svg}");
        let mut counts: Vec<usize> = lines
            .iter()
            .map(|l| {
                l.split("points=\"")
                    .nth(1)
                    .and_then(|p| p.split('"').next())
                    .unwrap_or("")
                    .split_whitespace()
                    .count()
            })
            .collect();
        counts.sort_unstable();
        assert_eq!(counts, [9, 9, 10, 10], "{svg}");
        assert!(svg.contains("peer RTT p50"));
        assert!(plot(&[], &out).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn periods() {
        assert_eq!(
            parse_period("24h").expect("24h"),
            Duration::from_secs(86_400)
        );
        assert_eq!(
            parse_period("7d").expect("7d"),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(
            parse_period("1h30m").expect("x"),
            Duration::from_secs(5_400)
        );
        assert!(parse_period("banana").is_err());
        assert!(parse_period("0s").is_err());
    }

    #[test]
    fn throughput_is_what_passed_between_samples() {
        let at = |t: i64, bytes_in: i64, bytes_out: i64| Sample {
            t,
            bytes_in,
            bytes_out,
            ..Sample::default()
        };
        let samples = [
            at(0, 0, 0),
            at(60, 6_000, 600),
            at(120, 6_000, 1_200),
            at(180, 10, 10),
        ];
        assert_eq!(
            interval_rates(&samples),
            vec![None, Some((100.0, 10.0)), Some((0.0, 10.0)), None],
            "a counter that went down is a restart, not negative traffic"
        );
        assert_eq!(interval_rates(&[]), vec![]);
    }
}
