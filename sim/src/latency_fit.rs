//! Fitting the latency model's corridor factors to published RTTs, and measuring how well the
//! model predicts the rows it was not fitted on.
//!
//! The dataset is `reports/latency-dataset/rtt.csv` (its `SOURCES.md` says where every row
//! comes from). Rows in file order alternate between a training half (even rows) and a held-out
//! half (odd rows); a second check holds out each provider in turn, fitting on the other
//! three, which says how well the model carries across networks it has never seen.
//!
//! For one corridor the model is `rtt = fixed + k · km` with `fixed` the model's own last-mile
//! terms ([`LatencyModel::fixed_rtt_ms`]). The `k` minimising `Σ |fixed + k·kmᵢ − rttᵢ| / rttᵢ`
//! (the absolute relative error, the figure reported) is the weighted median of
//! `(rttᵢ − fixed) / kmᵢ` with weights `kmᵢ / rttᵢ`: exact, no iteration, no solver.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Deserialize;

use crate::latency::{Corridors, FIBRE_KM_PER_S, LatencyModel, Zone, haversine_km};

/// A corridor needs this many training rows for a factor of its own; thinner ones use the
/// fallback fitted on every training row.
pub const MIN_ROWS_PER_CORRIDOR: usize = 5;

/// One published RTT between two places.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The provider's name, e.g. `AWS inter-region (CloudPing.co)`.
    pub source: String,
    /// Zones of the two ends.
    pub zones: (Zone, Zone),
    /// Great-circle distance, km.
    pub km: f64,
    /// The published RTT, ms.
    pub rtt_ms: f64,
}

/// Why the dataset could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    /// The file could not be opened or a row could not be parsed.
    #[error("reading {path}: {source}")]
    Csv {
        /// The dataset's path.
        path: String,
        /// The parser's error (it names the line).
        source: csv::Error,
    },
    /// A row's numbers are out of range.
    #[error("{path}, data row {row}: {what}")]
    Row {
        /// The dataset's path.
        path: String,
        /// 1-based data row.
        row: usize,
        /// What is wrong.
        what: String,
    },
    /// Nothing to fit on.
    #[error("{0}: no data rows")]
    Empty(String),
}

#[derive(Deserialize)]
struct RawRow {
    source: String,
    lat_a: f64,
    lon_a: f64,
    lat_b: f64,
    lon_b: f64,
    rtt_ms: f64,
}

/// Reads the dataset; every row must have coordinates in range and a positive RTT.
pub fn read_dataset(path: &Path) -> Result<Vec<Sample>, FitError> {
    let name = path.display().to_string();
    let csv_err = |source| FitError::Csv {
        path: name.clone(),
        source,
    };
    let mut reader = csv::Reader::from_path(path).map_err(csv_err)?;
    let mut out = Vec::new();
    for (i, row) in reader.deserialize::<RawRow>().enumerate() {
        let r = row.map_err(csv_err)?;
        let bad = |what: String| FitError::Row {
            path: name.clone(),
            row: i + 1,
            what,
        };
        for (lat, lon) in [(r.lat_a, r.lon_a), (r.lat_b, r.lon_b)] {
            if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
                return Err(bad(format!("coordinates {lat},{lon} out of range")));
            }
        }
        if !(r.rtt_ms.is_finite() && r.rtt_ms > 0.0) {
            return Err(bad(format!("rtt_ms {} is not a positive number", r.rtt_ms)));
        }
        let km = haversine_km(r.lat_a, r.lon_a, r.lat_b, r.lon_b);
        if km <= 0.0 {
            return Err(bad("both ends are the same place".into()));
        }
        let (a, b) = (Zone::of(r.lat_a, r.lon_a), Zone::of(r.lat_b, r.lon_b));
        out.push(Sample {
            source: r.source,
            zones: (a.min(b), a.max(b)),
            km,
            rtt_ms: r.rtt_ms,
        });
    }
    if out.is_empty() {
        return Err(FitError::Empty(name));
    }
    Ok(out)
}

/// The fitted factors: one per well-covered corridor, and the fallback.
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    /// Factor for corridors with too few rows, fitted on every training row.
    pub fallback: f64,
    /// `(zones, factor, training rows)` per corridor with at least
    /// [`MIN_ROWS_PER_CORRIDOR`] rows, in zone order.
    pub corridors: Vec<((Zone, Zone), f64, usize)>,
}

impl Fit {
    /// The base model with these factors in place of its own.
    pub fn model(&self, base: &LatencyModel) -> LatencyModel {
        let rows: Vec<(Zone, Zone, f64)> = self
            .corridors
            .iter()
            .map(|&((a, b), f, _)| (a, b, f))
            .collect();
        LatencyModel {
            inflation: self.fallback,
            corridors: Corridors::from_table(&rows),
            ..base.clone()
        }
    }

    /// The factors as the Rust rows of `FITTED_CORRIDORS` (and the fallback's constant).
    pub fn to_rust(&self) -> String {
        let mut s = format!("pub const FITTED_FALLBACK: f64 = {:.3};\n", self.fallback);
        for &((a, b), f, n) in &self.corridors {
            let _ = writeln!(s, "    (Zone::{a:?}, Zone::{b:?}, {f:.3}), // {n} rows");
        }
        s
    }
}

/// `k` minimising the summed absolute relative error of `fixed + k · km` (a weighted median).
fn fit_slope(rows: &[&Sample], fixed: f64) -> f64 {
    let mut pts: Vec<(f64, f64)> = rows
        .iter()
        .map(|s| ((s.rtt_ms - fixed) / s.km, s.km / s.rtt_ms))
        .collect();
    pts.sort_by(|x, y| x.0.total_cmp(&y.0));
    let total: f64 = pts.iter().map(|p| p.1).sum();
    let mut acc = 0.0;
    for &(k, w) in &pts {
        acc += w;
        if acc >= total / 2.0 {
            return k;
        }
    }
    pts.last().map_or(0.0, |p| p.0)
}

/// RTT slope (ms per km) to path inflation.
fn inflation_of(slope: f64) -> f64 {
    slope / 2.0 * FIBRE_KM_PER_S / 1e3
}

/// Fits the corridor factors on `train`, keeping `base`'s last-mile terms.
pub fn fit(train: &[&Sample], base: &LatencyModel) -> Fit {
    let fixed = base.fixed_rtt_ms();
    let mut by: BTreeMap<(Zone, Zone), Vec<&Sample>> = BTreeMap::new();
    for s in train {
        by.entry(s.zones).or_default().push(s);
    }
    Fit {
        fallback: inflation_of(fit_slope(train, fixed)),
        corridors: by
            .into_iter()
            .filter(|(_, rows)| rows.len() >= MIN_ROWS_PER_CORRIDOR)
            .map(|(z, rows)| (z, inflation_of(fit_slope(&rows, fixed)), rows.len()))
            .collect(),
    }
}

/// The model's median RTT for a sample's distance and zones, ms.
pub fn predict(model: &LatencyModel, s: &Sample) -> f64 {
    2.0 * model.propagation_ms(s.km, s.zones.0, s.zones.1) + model.fixed_rtt_ms()
}

/// Median of `|predicted / published − 1|` over `rows`.
pub fn median_relative_error(model: &LatencyModel, rows: &[&Sample]) -> f64 {
    let mut e: Vec<f64> = rows
        .iter()
        .map(|s| (predict(model, s) / s.rtt_ms - 1.0).abs())
        .collect();
    crate::metrics::median(&mut e)
}

/// The training half: even rows in file order.
pub fn training_half(samples: &[Sample]) -> Vec<&Sample> {
    samples.iter().step_by(2).collect()
}

/// The held-out half: odd rows in file order.
pub fn held_out_half(samples: &[Sample]) -> Vec<&Sample> {
    samples.iter().skip(1).step_by(2).collect()
}

/// One train/test split and how the models did on its test rows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    /// What was held out, e.g. `odd rows` or `AWS inter-region (CloudPing.co)`.
    pub held_out: String,
    /// Training rows.
    pub train: usize,
    /// Held-out rows.
    pub test: usize,
    /// Median relative error of the model fitted on the training rows.
    pub fitted_error: f64,
    /// Median relative error of the single-factor model of four AWS pairs (inflation 1.48),
    /// for comparison.
    pub single_factor_error: f64,
}

/// The fit the simulator uses (on the training half) and the checks of it.
#[derive(Debug, Clone)]
pub struct Report {
    /// The fit on the training half: the model in `FITTED_CORRIDORS`.
    pub fit: Fit,
    /// Even/odd first, then each provider held out in turn.
    pub checks: Vec<Check>,
}

/// Fits on the training half and checks on the held-out half, then on each provider held out.
pub fn evaluate(samples: &[Sample], base: &LatencyModel) -> Report {
    let single = LatencyModel {
        inflation: 1.48,
        corridors: Corridors::default(),
        ..base.clone()
    };
    let check = |held_out: String, train: Vec<&Sample>, test: Vec<&Sample>| {
        let model = fit(&train, base).model(base);
        Check {
            held_out,
            train: train.len(),
            test: test.len(),
            fitted_error: median_relative_error(&model, &test),
            single_factor_error: median_relative_error(&single, &test),
        }
    };
    let train = training_half(samples);
    let fitted = fit(&train, base);
    let mut checks = vec![check(
        "odd rows (the fit in use)".into(),
        train,
        held_out_half(samples),
    )];
    let mut sources: Vec<&str> = samples.iter().map(|s| s.source.as_str()).collect();
    sources.sort_unstable();
    sources.dedup();
    for src in sources {
        let (test, train): (Vec<&Sample>, Vec<&Sample>) =
            samples.iter().partition(|s| s.source == src);
        checks.push(check(src.to_string(), train, test));
    }
    Report {
        fit: fitted,
        checks,
    }
}

/// The report as the lines `sim latency-fit` prints.
pub fn render(report: &Report) -> String {
    let mut s = String::from(
        "held out                                               train  test  median error  (one factor)\n",
    );
    for c in &report.checks {
        let _ = writeln!(
            s,
            "{:<52} {:>6} {:>5}  {:>11.1} %  ({:.1} %)",
            c.held_out,
            c.train,
            c.test,
            c.fitted_error * 100.0,
            c.single_factor_error * 100.0
        );
    }
    s.push_str("\nfitted on the training half (even rows):\n");
    s.push_str(&report.fit.to_rust());
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::{FITTED_CORRIDORS, FITTED_FALLBACK};

    fn dataset() -> Vec<Sample> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../reports/latency-dataset/rtt.csv");
        read_dataset(&path).expect("the committed dataset reads")
    }

    #[test]
    fn slope_is_the_weighted_median() {
        let s = |km: f64, rtt_ms: f64| Sample {
            source: "t".into(),
            zones: (Zone::Europe, Zone::Europe),
            km,
            rtt_ms,
        };
        let rows = [s(1000.0, 10.0), s(1000.0, 20.0), s(1000.0, 12.0)];
        let refs: Vec<&Sample> = rows.iter().collect();
        // Equal distances: the minimiser of Σ|k·1000 − y|/y is the weighted median of y/1000
        // with weights 1000/y, which the two smaller RTTs outweigh.
        assert_eq!(fit_slope(&refs, 0.0), 0.012);
        // A perfect line is recovered exactly.
        let line = [s(1000.0, 12.0), s(3000.0, 32.0), s(8000.0, 82.0)];
        let refs: Vec<&Sample> = line.iter().collect();
        assert!((fit_slope(&refs, 2.0) - 0.01).abs() < 1e-12);
    }

    #[test]
    fn the_model_in_use_is_the_fit_of_the_committed_dataset() {
        let samples = dataset();
        let fit = fit(&training_half(&samples), &LatencyModel::default());
        assert!(
            (fit.fallback - FITTED_FALLBACK).abs() < 5e-4,
            "{}",
            fit.to_rust()
        );
        let table: Vec<(Zone, Zone, f64)> = fit
            .corridors
            .iter()
            .map(|&((a, b), f, _)| (a, b, f))
            .collect();
        assert_eq!(table.len(), FITTED_CORRIDORS.len(), "{}", fit.to_rust());
        for (got, want) in table.iter().zip(FITTED_CORRIDORS) {
            assert_eq!((got.0, got.1), (want.0, want.1), "{}", fit.to_rust());
            assert!((got.2 - want.2).abs() < 5e-4, "{}", fit.to_rust());
        }
    }

    #[test]
    fn held_out_median_error_is_within_ten_percent() {
        let samples = dataset();
        assert_eq!(samples.len(), 1_424);
        let model = LatencyModel::default();
        let error = median_relative_error(&model, &held_out_half(&samples));
        assert!(error <= 0.10, "held-out median relative error {error:.3}");
        let report = evaluate(&samples, &model);
        // The fit is better than one factor on every split, provider held out included.
        for c in &report.checks {
            assert!(c.fitted_error < c.single_factor_error, "{c:?}");
        }
    }

    #[test]
    fn bad_rows_are_named() {
        let dir = std::env::temp_dir().join(format!("beam-fit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("bad.csv");
        std::fs::write(
            &path,
            "source,lat_a,lon_a,lat_b,lon_b,rtt_ms\nx,1,2,3,4,10\nx,95,2,3,4,10\n",
        )
        .expect("write");
        let err = read_dataset(&path).expect_err("latitude 95").to_string();
        assert!(err.contains("data row 2") && err.contains("95,2"), "{err}");
        std::fs::write(
            &path,
            "source,lat_a,lon_a,lat_b,lon_b,rtt_ms\nx,1,2,3,4,-1\n",
        )
        .expect("w");
        let err = read_dataset(&path).expect_err("negative").to_string();
        assert!(err.contains("rtt_ms -1"), "{err}");
        std::fs::write(&path, "source,lat_a\n").expect("w");
        assert!(matches!(read_dataset(&path), Err(FitError::Empty(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
