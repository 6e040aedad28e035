//! `--seeds N`: each scenario run with N seeds, and its headline columns summarized as a mean
//! with a 95 % confidence interval (Student's t over the seeds), so a reader sees how much of a
//! figure is the seed.

use std::io;
use std::path::Path;

use crate::report::Row;
use crate::scenario::{Scenario, Strategy};

/// The columns summarized.
pub const HEADLINE: [&str; 5] = [
    "routing_success",
    "lookup_success",
    "latency_p50_ms",
    "latency_p99_ms",
    "stretch_p50",
];

/// A run that answered nothing has no latency or stretch (its row says 0): left out.
fn headline(r: &Row) -> [f64; 5] {
    let answered = |x: f64| if r.routing_success > 0.0 { x } else { f64::NAN };
    [
        r.routing_success,
        r.lookup_success,
        answered(r.latency_p50_ms),
        answered(r.latency_p99_ms),
        answered(r.stretch_p50),
    ]
}

/// `scenario` with seeds `seed, seed + 1, …` (`n` of them, at least one).
pub fn expand(scenario: &Scenario, n: u64) -> Vec<Scenario> {
    (0..n.max(1))
        .map(|i| {
            let mut s = scenario.clone();
            s.seed = scenario.seed.wrapping_add(i);
            s
        })
        .collect()
}

/// Student's t quantile 0.975 for `df` degrees of freedom (df ≥ 1): exact to 30, then the value
/// at the bracket's lower end (40, 60, 120: never too narrow), 1.960 past 120.
pub fn t975(df: usize) -> f64 {
    match df {
        0..=30 => {}
        31..=40 => return 2.042,
        41..=60 => return 2.021,
        61..=120 => return 2.000,
        _ => return 1.960,
    }
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    T.get(df.wrapping_sub(1)).copied().unwrap_or(1.960)
}

/// Mean and the half-width of its 95 % interval (`NaN` half-width with one value; values that
/// are `NaN`, as a column with nothing measured, are left out).
pub fn mean_interval(values: &[f64]) -> (f64, f64) {
    let v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, f64::NAN);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, t975(v.len() - 1) * (var / n).sqrt())
}

/// One scenario's summary over its seeds.
#[derive(Debug, Clone)]
pub struct Summary {
    pub scenario: String,
    pub peers: u64,
    pub strategy: Strategy,
    pub seeds: usize,
    /// First seed, last seed.
    pub seed_first: u64,
    pub seed_last: u64,
    /// For each [`HEADLINE`] column: mean, lower and upper end of the 95 % interval.
    pub columns: [(f64, f64, f64); 5],
}

/// Groups `rows` by scenario and strategy (in the order they first appear) and summarizes each.
pub fn summarize(rows: &[Row]) -> Vec<Summary> {
    let mut groups: Vec<(String, Strategy, Vec<&Row>)> = vec![];
    for r in rows {
        match groups
            .iter_mut()
            .find(|(n, s, _)| *n == r.scenario && *s == r.strategy)
        {
            Some(g) => g.2.push(r),
            None => groups.push((r.scenario.clone(), r.strategy, vec![r])),
        }
    }
    groups
        .into_iter()
        .map(|(scenario, strategy, rs)| {
            let mut columns = [(0.0, 0.0, 0.0); 5];
            for (c, col) in columns.iter_mut().enumerate() {
                let values: Vec<f64> = rs.iter().map(|r| headline(r)[c]).collect();
                let (m, h) = mean_interval(&values);
                *col = (m, m - h, m + h);
            }
            Summary {
                peers: rs[0].peers,
                seeds: rs.len(),
                seed_first: rs.iter().map(|r| r.seed).min().unwrap_or(0),
                seed_last: rs.iter().map(|r| r.seed).max().unwrap_or(0),
                scenario,
                strategy,
                columns,
            }
        })
        .collect()
}

fn fmt(x: f64) -> String {
    if x.is_nan() {
        String::new()
    } else {
        format!("{x:.5}")
    }
}

/// Writes the summaries as CSV: scenario, peers, strategy, seeds, first and last seed, then
/// `COLUMN_mean`, `COLUMN_lo95`, `COLUMN_hi95` for each headline column.
pub fn write_summary(w: impl io::Write, summaries: &[Summary]) -> csv::Result<()> {
    let mut w = csv::Writer::from_writer(w);
    let mut header: Vec<String> = [
        "scenario",
        "peers",
        "strategy",
        "seeds",
        "seed_first",
        "seed_last",
    ]
    .map(String::from)
    .to_vec();
    for c in HEADLINE {
        header.extend([
            format!("{c}_mean"),
            format!("{c}_lo95"),
            format!("{c}_hi95"),
        ]);
    }
    w.write_record(&header)?;
    for s in summaries {
        let mut rec = vec![
            s.scenario.clone(),
            s.peers.to_string(),
            s.strategy.to_string(),
            s.seeds.to_string(),
            s.seed_first.to_string(),
            s.seed_last.to_string(),
        ];
        for (m, lo, hi) in s.columns {
            rec.extend([fmt(m), fmt(lo), fmt(hi)]);
        }
        w.write_record(&rec)?;
    }
    w.flush()?;
    Ok(())
}

/// [`write_summary`] to a file.
pub fn write_summary_file(path: &Path, summaries: &[Summary]) -> anyhow::Result<()> {
    let f = std::fs::File::create(path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    write_summary(io::BufWriter::new(f), summaries)?;
    Ok(())
}

/// The summaries as a few lines for a person (stderr).
pub fn describe(summaries: &[Summary]) -> String {
    let mut out = String::new();
    for s in summaries {
        let (r, rlo, rhi) = s.columns[0];
        let (p50, plo, phi) = s.columns[2];
        out.push_str(&format!(
            "{} [{}] over {} seeds: routing {:.3} % (95 % interval {:.3}–{:.3}), latency p50 \
             {:.1} ms ({:.1}–{:.1})\n",
            s.scenario,
            s.strategy,
            s.seeds,
            r * 100.0,
            rlo * 100.0,
            rhi * 100.0,
            p50,
            plo,
            phi
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_is_students_t_over_the_seeds() {
        // Mean 2, sample sd 1, n = 3: half-width t(2) * 1 / sqrt(3) = 4.303 / 1.732.
        let (m, h) = mean_interval(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12);
        assert!((h - 4.303 / 3f64.sqrt()).abs() < 1e-9, "{h}");
        let (m, h) = mean_interval(&[5.0, 5.0, 5.0, 5.0]);
        assert_eq!((m, h), (5.0, 0.0), "no spread, no interval");
        let (m, h) = mean_interval(&[7.0, f64::NAN]);
        assert_eq!(m, 7.0);
        assert!(h.is_nan(), "one value has no interval");
        assert_eq!(t975(1), 12.706);
        assert_eq!(t975(100), 2.000);
        assert_eq!(t975(1000), 1.960);
    }
}
