//! The scaling table: one CSV row per scenario run, and a chart of it.
//!
//! # Design
//!
//! The table is what the project's claims rest on and what the CI gate compares against a
//! committed baseline, so a row is *bytes*, not just numbers: the same run must write the same
//! bytes. [`Row`] therefore serializes every float with a fixed number of decimals (fractions
//! 5, milliseconds 1, ratios and means 3, bytes 1) instead of Rust's shortest round-trip form,
//! which would print noise digits (`0.30000000000000004`) and make diffs unreadable. Reading a
//! row back and writing it again reproduces it exactly. Wall-clock time never goes in a row.
//!
//! Columns and their order are the contract in DESIGN.md ("Simulation") and [`COLUMNS`]; a test
//! checks the header against it. A value that cannot be measured (no requests, say) is written
//! as `NaN`.
//!
//! [`plot_svg`] draws latency and routing success against network size, one series per
//! strategy, with the `plotters` SVG backend (no font files needed: SVG text is laid out by
//! the viewer).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, Serializer};

use crate::scenario::Strategy;

/// The table's columns, in order: the CSV header.
pub const COLUMNS: [&str; 35] = [
    "scenario",
    "seed",
    "peers",
    "strategy",
    "sim_s",
    "requests",
    "routing_success",
    "latency_mean_ms",
    "latency_p50_ms",
    "latency_p99_ms",
    "direct_rtt_mean_ms",
    "stretch_p50",
    "lookup_success",
    "lookup_hops_mean",
    "lookup_p50_ms",
    "lookup_p99_ms",
    "regions_covered",
    "size_estimate_error",
    "msgs_per_peer_s",
    "bytes_per_peer_s",
    "adversary_server_share",
    "captured_share",
    "honest_scc_share",
    "in_degree_honest",
    "in_degree_adversary",
    "eclipse_lookup_success",
    "size_estimate_error_max",
    "e2e_p50_ms",
    "e2e_p99_ms",
    "e2e_warm_p50_ms",
    "e2e_warm_p99_ms",
    "stretch_direct_p50",
    "stretch_punched_p50",
    "stretch_relayed_p50",
    "connections_per_peer_s",
];

/// One scenario run's results: a row of the scaling table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Row {
    /// The scenario's `name`.
    pub scenario: String,
    /// The scenario's `seed`.
    pub seed: u64,
    /// Peers at the start.
    pub peers: u64,
    /// Route selection strategy.
    pub strategy: Strategy,
    /// Simulated seconds measured (after warmup).
    #[serde(serialize_with = "decimals_1")]
    pub sim_s: f64,
    /// Requests whose service was alive when sent.
    pub requests: u64,
    /// Share of those requests answered within 5 s.
    #[serde(serialize_with = "decimals_5")]
    pub routing_success: f64,
    /// Mean round-trip time of a request over its route, ms.
    #[serde(serialize_with = "decimals_1")]
    pub latency_mean_ms: f64,
    /// Median request round-trip time, ms.
    #[serde(serialize_with = "decimals_1")]
    pub latency_p50_ms: f64,
    /// 99th-percentile request round-trip time, ms.
    #[serde(serialize_with = "decimals_1")]
    pub latency_p99_ms: f64,
    /// Mean direct RTT of the same client–service pairs under the model, ms.
    #[serde(serialize_with = "decimals_1")]
    pub direct_rtt_mean_ms: f64,
    /// Median of route RTT ÷ direct RTT.
    #[serde(serialize_with = "decimals_3")]
    pub stretch_p50: f64,
    /// Share of service-record lookups that succeeded.
    #[serde(serialize_with = "decimals_5")]
    pub lookup_success: f64,
    /// Mean hops of a lookup.
    #[serde(serialize_with = "decimals_3")]
    pub lookup_hops_mean: f64,
    /// Median lookup time, ms.
    #[serde(serialize_with = "decimals_1")]
    pub lookup_p50_ms: f64,
    /// 99th-percentile lookup time, ms.
    #[serde(serialize_with = "decimals_1")]
    pub lookup_p99_ms: f64,
    /// Regions from which at least one service was reached.
    pub regions_covered: u32,
    /// Mean |estimated N − N| ÷ N over peers.
    #[serde(serialize_with = "decimals_5")]
    pub size_estimate_error: f64,
    /// Messages sent per peer per simulated second.
    #[serde(serialize_with = "decimals_3")]
    pub msgs_per_peer_s: f64,
    /// Bytes sent per peer per simulated second.
    #[serde(serialize_with = "decimals_1")]
    pub bytes_per_peer_s: f64,
    // Columns added later: read as 0 from tables written before them.
    /// Share of the dialable DHT servers (the peers in routing tables) that are adversaries.
    #[serde(serialize_with = "decimals_5", default)]
    pub adversary_server_share: f64,
    /// The overlay at the end: share of honest servers whose `k` table entries nearest their
    /// own key are mostly adversaries (captured; an eclipse shows here first).
    #[serde(serialize_with = "decimals_5", default)]
    pub captured_share: f64,
    /// Share of the honest servers in the largest strongly connected component of the honest
    /// servers' overlay (1: strongly connected).
    #[serde(serialize_with = "decimals_5", default)]
    pub honest_scc_share: f64,
    /// Mean in-degree (routing tables that hold it) of an honest server.
    #[serde(serialize_with = "decimals_3", default)]
    pub in_degree_honest: f64,
    /// Mean in-degree of an adversary (NaN without adversaries).
    #[serde(serialize_with = "decimals_3", default)]
    pub in_degree_adversary: f64,
    /// Share of the lookups of the eclipsed service's record that found it (NaN without an
    /// eclipse).
    #[serde(serialize_with = "decimals_5", default)]
    pub eclipse_lookup_success: f64,
    /// Largest |estimated N − N| ÷ N over honest peers.
    #[serde(serialize_with = "decimals_5", default)]
    pub size_estimate_error_max: f64,
    /// Median time from a client's first request to a service being issued to its answer:
    /// the lookup, connection setups, the route's handshake and the request (ms).
    #[serde(serialize_with = "decimals_1", default)]
    pub e2e_p50_ms: f64,
    /// 99th percentile of the same, ms.
    #[serde(serialize_with = "decimals_1", default)]
    pub e2e_p99_ms: f64,
    /// Median issue-to-answer time of a later request from the same client to the same
    /// service (`workload.follow_up_s`; record remembered, connections open), ms.
    #[serde(serialize_with = "decimals_1", default)]
    pub e2e_warm_p50_ms: f64,
    /// 99th percentile of the same, ms.
    #[serde(serialize_with = "decimals_1", default)]
    pub e2e_warm_p99_ms: f64,
    /// Median stretch of requests answered over a direct route to a dialable service (NaN
    /// without any).
    #[serde(serialize_with = "decimals_3", default)]
    pub stretch_direct_p50: f64,
    /// Median stretch over a hole-punched route to a service behind a NAT (NaN without any).
    #[serde(serialize_with = "decimals_3", default)]
    pub stretch_punched_p50: f64,
    /// Median stretch over a relayed route (NaN without any).
    #[serde(serialize_with = "decimals_3", default)]
    pub stretch_relayed_p50: f64,
    /// Connections set up per peer per simulated second (whole run, the transport model).
    #[serde(serialize_with = "decimals_3", default)]
    pub connections_per_peer_s: f64,
}

/// Formats `v` with `decimals` fixed decimals; −0 is written as 0.
pub fn fixed(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    // "-0.0", "-0.000": a negative zero (or a negative value that rounds to zero).
    if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
        s[1..].to_owned()
    } else {
        s
    }
}

fn decimals_1<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&fixed(*v, 1))
}

fn decimals_3<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&fixed(*v, 3))
}

fn decimals_5<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&fixed(*v, 5))
}

/// Why the table could not be written, read or plotted.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file could not be opened or created.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// `read` or `write`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// CSV writing or parsing failed (the message has the line and the column).
    #[error("{}report table: {source}", in_file(path))]
    Csv {
        /// The file, when there is one.
        path: Option<PathBuf>,
        /// What the CSV layer said.
        #[source]
        source: csv::Error,
    },
    /// The header is neither [`COLUMNS`] nor a start of it: not a report.
    #[error("{}report table header is {found:?}, expected {:?}", in_file(path), COLUMNS.join(","))]
    Header {
        /// The file, when there is one.
        path: Option<PathBuf>,
        /// The header found.
        found: String,
    },
    /// Drawing the chart failed.
    #[error("cannot draw chart {}: {message}", path.display())]
    Plot {
        /// The SVG file.
        path: PathBuf,
        /// What plotters said.
        message: String,
    },
}

fn in_file(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!("{}: ", p.display()),
        None => String::new(),
    }
}

/// Writes the header and `rows` as CSV to `out`.
pub fn write_rows(out: impl io::Write, rows: &[Row]) -> Result<(), ReportError> {
    let csv_err = |source| ReportError::Csv { path: None, source };
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(out);
    // Written by hand so that an empty table still has its header.
    w.write_record(COLUMNS).map_err(csv_err)?;
    for row in rows {
        w.serialize(row).map_err(csv_err)?;
    }
    w.flush().map_err(|e| csv_err(e.into()))
}

/// Writes the header and `rows` to a CSV file, replacing it.
pub fn write_rows_file(path: impl AsRef<Path>, rows: &[Row]) -> Result<(), ReportError> {
    let path = path.as_ref();
    let file = std::fs::File::create(path).map_err(|source| ReportError::Io {
        action: "write",
        path: path.to_owned(),
        source,
    })?;
    write_rows(io::BufWriter::new(file), rows).map_err(|e| match e {
        ReportError::Csv { source, .. } => ReportError::Csv {
            path: Some(path.to_owned()),
            source,
        },
        other => other,
    })
}

/// Renders `rows` (with the header) as a CSV string.
pub fn to_csv_string(rows: &[Row]) -> String {
    let mut out = Vec::new();
    // Writing to memory fails only on a serializer bug; the rows' types cannot fail.
    if let Err(e) = write_rows(&mut out, rows) {
        panic!("writing rows to memory failed: {e}");
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The columns every table has had; later ones were added at the end.
const FIRST_COLUMNS: usize = 20;

/// Reads a table written by [`write_rows`]; the header must be [`COLUMNS`], or a table of an
/// earlier version: its first columns, in order (the columns it lacks read as 0).
pub fn read_rows_from(input: impl io::Read) -> Result<Vec<Row>, ReportError> {
    let csv_err = |source| ReportError::Csv { path: None, source };
    let mut r = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(input);
    let header = r.headers().map_err(csv_err)?;
    let known = header.len() >= FIRST_COLUMNS
        && header.len() <= COLUMNS.len()
        && header.iter().eq(COLUMNS[..header.len()].iter().copied());
    if !known {
        return Err(ReportError::Header {
            path: None,
            found: header.iter().collect::<Vec<_>>().join(","),
        });
    }
    r.deserialize().map(|row| row.map_err(csv_err)).collect()
}

/// Reads a CSV file written by [`write_rows_file`] (e.g. the committed baseline).
pub fn read_rows(path: impl AsRef<Path>) -> Result<Vec<Row>, ReportError> {
    let path = path.as_ref();
    let file = std::fs::File::open(path).map_err(|source| ReportError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })?;
    read_rows_from(io::BufReader::new(file)).map_err(|e| match e {
        ReportError::Csv { source, .. } => ReportError::Csv {
            path: Some(path.to_owned()),
            source,
        },
        ReportError::Header { found, .. } => ReportError::Header {
            path: Some(path.to_owned()),
            found,
        },
        other => other,
    })
}

/// One strategy's points, sorted by network size: (peers, value).
type Series = BTreeMap<Strategy, Vec<(f64, f64)>>;

fn series(rows: &[Row], value: impl Fn(&Row) -> f64) -> Series {
    let mut out = Series::new();
    for row in rows {
        let v = value(row);
        if row.peers > 0 && v.is_finite() {
            out.entry(row.strategy)
                .or_default()
                .push((row.peers as f64, v));
        }
    }
    for points in out.values_mut() {
        points.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    }
    out
}

/// Draws the table as an SVG chart: request latency (p50 solid, mean dashed) and routing
/// success against network size (log scale), one colour per strategy.
pub fn plot_svg(rows: &[Row], path: impl AsRef<Path>) -> Result<(), ReportError> {
    let path = path.as_ref();
    draw(rows, path).map_err(|message| ReportError::Plot {
        path: path.to_owned(),
        message,
    })
}

fn draw(rows: &[Row], path: &Path) -> Result<(), String> {
    use plotters::prelude::*;

    let err = |e: &dyn std::fmt::Display| e.to_string();
    let p50 = series(rows, |r| r.latency_p50_ms);
    let mean = series(rows, |r| r.latency_mean_ms);
    let success = series(rows, |r| r.routing_success);

    let sizes = || rows.iter().filter(|r| r.peers > 0).map(|r| r.peers as f64);
    let (lo, hi) = sizes().fold((f64::INFINITY, 0.0_f64), |(lo, hi), p| {
        (lo.min(p), hi.max(p))
    });
    let (x_lo, x_hi) = if lo.is_finite() {
        (lo / 1.5, hi * 1.5)
    } else {
        (10.0, 100_000.0)
    };
    let latency_max = p50
        .values()
        .chain(mean.values())
        .flatten()
        .map(|&(_, v)| v)
        .fold(0.0_f64, f64::max);
    let latency_top = if latency_max > 0.0 {
        latency_max * 1.15
    } else {
        100.0
    };

    let root = SVGBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (left, right) = root.split_horizontally(600);
    let colour = |s: Strategy| match s {
        Strategy::Direct => BLUE,
        Strategy::MultiHop => RED,
        Strategy::Geographic => GREEN,
    };

    let mut chart = ChartBuilder::on(&left)
        .caption("request RTT vs network size", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), 0.0..latency_top)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("peers")
        .y_desc("request RTT, ms")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(|e| err(&e))?;
    for (&strategy, points) in &p50 {
        let c = colour(strategy);
        chart
            .draw_series(LineSeries::new(points.iter().copied(), c.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(format!("{strategy} p50"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, c.filled())))
            .map_err(|e| err(&e))?;
    }
    for (&strategy, points) in &mean {
        let c = colour(strategy);
        chart
            .draw_series(DashedLineSeries::new(
                points.iter().copied(),
                6,
                4,
                c.into(),
            ))
            .map_err(|e| err(&e))?
            .label(format!("{strategy} mean"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| err(&e))?;

    let mut chart = ChartBuilder::on(&right)
        .caption("routing success vs network size", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), 0.0..1.05)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("peers")
        .y_desc("routing success")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(|e| err(&e))?;
    for (&strategy, points) in &success {
        let c = colour(strategy);
        chart
            .draw_series(LineSeries::new(points.iter().copied(), c.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(strategy.to_string())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, c.filled())))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerLeft)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(peers: u64, strategy: Strategy) -> Row {
        Row {
            scenario: format!("{peers}-peers"),
            seed: 42,
            peers,
            strategy,
            sim_s: 120.0,
            requests: 6_000,
            routing_success: 0.1 + 0.2,
            latency_mean_ms: 123.456_78,
            latency_p50_ms: 99.95,
            latency_p99_ms: 412.0,
            direct_rtt_mean_ms: 88.04,
            stretch_p50: 1.234_56,
            lookup_success: 0.999_996,
            lookup_hops_mean: 3.0,
            lookup_p50_ms: 250.0,
            lookup_p99_ms: 900.0,
            regions_covered: 6,
            size_estimate_error: -0.0,
            msgs_per_peer_s: 12.5,
            bytes_per_peer_s: 2048.25,
            adversary_server_share: 0.2,
            captured_share: 0.0,
            honest_scc_share: 1.0,
            in_degree_honest: 30.5,
            in_degree_adversary: 3.0,
            eclipse_lookup_success: 1.0,
            size_estimate_error_max: 0.25,
            e2e_p50_ms: 420.0,
            e2e_p99_ms: 1200.0,
            e2e_warm_p50_ms: 210.0,
            e2e_warm_p99_ms: 600.0,
            stretch_direct_p50: 1.0,
            stretch_punched_p50: f64::NAN,
            stretch_relayed_p50: 1.2,
            connections_per_peer_s: 0.5,
        }
    }

    #[test]
    fn header_is_the_contract() {
        let csv = to_csv_string(&[]);
        assert_eq!(
            csv,
            "scenario,seed,peers,strategy,sim_s,requests,routing_success,latency_mean_ms,\
             latency_p50_ms,latency_p99_ms,direct_rtt_mean_ms,stretch_p50,lookup_success,\
             lookup_hops_mean,lookup_p50_ms,lookup_p99_ms,regions_covered,size_estimate_error,\
             msgs_per_peer_s,bytes_per_peer_s,adversary_server_share,captured_share,\
             honest_scc_share,in_degree_honest,in_degree_adversary,eclipse_lookup_success,\
             size_estimate_error_max,e2e_p50_ms,e2e_p99_ms,e2e_warm_p50_ms,e2e_warm_p99_ms,\
             stretch_direct_p50,stretch_punched_p50,stretch_relayed_p50,connections_per_peer_s\n"
        );
        // The struct's own field order agrees with COLUMNS.
        let mut w = csv::Writer::from_writer(Vec::new());
        w.serialize(row(100, Strategy::Direct)).expect("serialize");
        let bytes = w.into_inner().expect("flush");
        let text = String::from_utf8(bytes).expect("utf-8");
        assert_eq!(text.lines().next(), Some(COLUMNS.join(",").as_str()));
    }

    #[test]
    fn floats_have_fixed_decimals() {
        let csv = to_csv_string(&[row(100, Strategy::MultiHop)]);
        let line = csv.lines().nth(1).expect("row");
        assert_eq!(
            line,
            "100-peers,42,100,multi-hop,120.0,6000,0.30000,123.5,100.0,412.0,88.0,1.235,\
             1.00000,3.000,250.0,900.0,6,0.00000,12.500,2048.2,0.20000,0.00000,1.00000,30.500,\
             3.000,1.00000,0.25000,420.0,1200.0,210.0,600.0,1.000,NaN,1.200,0.500"
        );
        assert_eq!(fixed(-0.04, 1), "0.0");
        assert_eq!(fixed(-0.06, 1), "-0.1");
        assert_eq!(fixed(f64::NAN, 3), "NaN");
    }

    #[test]
    fn rows_round_trip_byte_for_byte() {
        let rows = vec![
            row(100, Strategy::Direct),
            row(1_000, Strategy::Geographic),
            Row {
                latency_p99_ms: f64::NAN,
                scenario: "with, comma".to_owned(),
                ..row(10_000, Strategy::MultiHop)
            },
        ];
        let first = to_csv_string(&rows);
        assert_eq!(first, to_csv_string(&rows), "same rows, same bytes");
        let back = read_rows_from(first.as_bytes()).expect("read");
        assert_eq!(back.len(), 3);
        assert_eq!(back[1].strategy, Strategy::Geographic);
        assert_eq!(back[2].scenario, "with, comma");
        assert!(back[2].latency_p99_ms.is_nan());
        assert_eq!(to_csv_string(&back), first);
    }

    #[test]
    fn files_and_bad_headers() {
        let dir = std::env::temp_dir().join(format!("sim-report-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("table.csv");
        let rows = vec![row(100, Strategy::Geographic)];
        write_rows_file(&path, &rows).expect("write");
        let back = read_rows(&path).expect("read");
        assert_eq!(to_csv_string(&back), to_csv_string(&rows));

        std::fs::write(&path, "scenario,seed\nx,1\n").expect("write");
        let e = read_rows(&path).expect_err("bad header").to_string();
        assert!(e.contains("table.csv") && e.contains("header"), "{e}");

        // A table of an earlier version (its first 27 columns) reads, the rest as 0.
        let full = to_csv_string(&rows);
        let old: String = full
            .lines()
            .map(|l| l.split(',').take(27).collect::<Vec<_>>().join(",") + "\n")
            .collect();
        std::fs::write(&path, old).expect("write");
        let back = read_rows(&path).expect("an older table");
        assert_eq!(
            back[0].size_estimate_error_max,
            rows[0].size_estimate_error_max
        );
        assert_eq!(back[0].e2e_p50_ms, 0.0);
        // Columns out of order are not a start of the contract.
        std::fs::write(&path, full.replacen("seed,peers", "peers,seed", 1)).expect("write");
        assert!(read_rows(&path).is_err());

        let bad_value = to_csv_string(&rows).replace("geographic", "teleport");
        std::fs::write(&path, bad_value).expect("write");
        let e = read_rows(&path).expect_err("bad strategy").to_string();
        assert!(e.contains("table.csv") && e.contains("teleport"), "{e}");

        let e = read_rows(dir.join("missing.csv"))
            .expect_err("missing")
            .to_string();
        assert!(
            e.starts_with("cannot read") && e.contains("missing.csv"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn plots_an_svg() {
        let dir = std::env::temp_dir().join(format!("sim-plot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("scaling.svg");
        let mut rows = Vec::new();
        for strategy in Strategy::ALL {
            for peers in [100, 1_000, 10_000] {
                rows.push(row(peers, strategy));
            }
        }
        plot_svg(&rows, &path).expect("plot");
        let svg = std::fs::read_to_string(&path).expect("svg");
        assert!(svg.starts_with("<svg") && svg.contains("routing success"));
        assert!(svg.contains("multi-hop p50"));
        // Degenerate tables still draw.
        plot_svg(&[], &path).expect("empty plot");
        plot_svg(&rows[..1], &path).expect("one point");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
