//! The latency model: how long a message takes between two simulated peers.
//!
//! # Design
//!
//! Every peer sits at a real city of its region ([`crate::cities`]). A message from `a` to `b`
//! takes
//!
//! ```text
//! one-way = distance(a, b) / 200,000 km/s × inflation   (light in fibre, along real paths)
//!         + access(a) + access(b)                        (each end's last mile, fixed per peer)
//!         + jitter                                       (queueing, fresh for every message)
//! ```
//!
//! - *distance* is the great-circle distance (haversine, R = 6371 km); light in fibre travels at
//!   about 2/3 c ≈ 200,000 km/s.
//! - *inflation* accounts for cables not following great circles and for routing detours. It
//!   depends on the *corridor*: the pair of [`Zone`]s the two ends sit in (Europe to East
//!   Asia detours through Suez or the US, 2.1×; North America to Oceania crosses one straight
//!   cable, 1.2×). Corridors the dataset covers too thinly use one fallback factor.
//! - *access* is drawn once per peer from a log-normal distribution (median
//!   [`LatencyModel::access_median_ms`], log-spread [`LatencyModel::access_sigma`], capped at
//!   [`LatencyModel::access_max_ms`]): most peers sit close to their city's exchange, a tail
//!   sits behind slow links.
//! - *jitter* is exponential with mean [`LatencyModel::jitter_mean_ms`]: never negative, mostly
//!   small, occasionally larger. Independent per message, so messages on one link may be
//!   reordered, as on the Internet.
//!
//! # Calibration
//!
//! The corridor factors are fitted ([`crate::latency_fit`], `sim latency-fit`) to 1,424
//! published inter-region RTTs of four clouds (`reports/latency-dataset/`): every other row
//! trains, the rest is held out. A data centre is modelled as a peer at the region's city whose
//! access delay is the distribution's median, and a "median RTT" is the median of out-and-back
//! with two independent jitter draws ([`LatencyModel::median_rtt_between`]). The last-mile
//! terms are not fitted (data-centre RTTs leave little room beyond propagation, so the access
//! median is small, 1 ms, and its long tail provides slower peers); each corridor's factor is
//! the weighted median that minimises the training rows' absolute relative error. On the
//! held-out half the median relative error is 9.6 % (reports/README.md has the table, per
//! provider held out too). The earlier single factor, fitted to four AWS pairs, was 13.2 % off
//! on the same rows.
//!
//! Everything random takes the caller's RNG (the run's seeded ChaCha), so a seed fixes every
//! placement and every delay.

use std::fmt;
use std::time::Duration;

use rand::Rng;
use rand::seq::SliceRandom;

pub use beam_node::geo::{
    EARTH_RADIUS_KM, LocationError, haversine_km, nearest_city, parse_lat_lon, parse_location,
};

use crate::cities::{City, Region};
use crate::scenario::Scenario;

/// Speed of light in optical fibre, km/s.
pub const FIBRE_KM_PER_S: f64 = 200_000.0;

/// Median of the sum of two independent exponentials of mean 1: x with (1 + x)·e^(−x) = 1/2.
const MEDIAN_OF_TWO_EXPONENTIALS: f64 = 1.678_346_990_016_661;

/// Where on the cable map a point sits: the six regions, with Asia split in three because its
/// corridors differ most (the Gulf, India and East Asia reach Europe by different routes).
///
/// A zone is a property of coordinates ([`Zone::of`]), so the model, the fit and a scenario's
/// peers agree on it without a table of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Zone {
    /// Canada, the United States and Mexico.
    NorthAmerica,
    /// South America.
    SouthAmerica,
    /// Europe.
    Europe,
    /// The Gulf and the Levant (between 12° and 42° N, 34° and 62° E).
    MiddleEast,
    /// India and its neighbours (Asia west of 92° E and south of 36° N).
    SouthAsia,
    /// East and South-East Asia.
    EastAsia,
    /// Africa.
    Africa,
    /// Australia and New Zealand.
    Oceania,
}

impl Zone {
    /// Every zone, in index order.
    pub const ALL: [Zone; 8] = [
        Zone::NorthAmerica,
        Zone::SouthAmerica,
        Zone::Europe,
        Zone::MiddleEast,
        Zone::SouthAsia,
        Zone::EastAsia,
        Zone::Africa,
        Zone::Oceania,
    ];

    /// The zone of a point: its nearest built-in city's region, with the Middle East and
    /// South Asia carved out by coordinates.
    pub fn of(lat: f64, lon: f64) -> Zone {
        if (12.0..=42.0).contains(&lat) && (34.0..=62.0).contains(&lon) {
            return Zone::MiddleEast;
        }
        match nearest_city(lat, lon).0 {
            Region::NorthAmerica => Zone::NorthAmerica,
            Region::SouthAmerica => Zone::SouthAmerica,
            Region::Europe => Zone::Europe,
            Region::Africa => Zone::Africa,
            Region::Oceania => Zone::Oceania,
            Region::Asia if lon < 92.0 && lat < 36.0 => Zone::SouthAsia,
            Region::Asia => Zone::EastAsia,
        }
    }

    /// The zone's short name, e.g. `east_asia`.
    pub fn key(self) -> &'static str {
        match self {
            Zone::NorthAmerica => "north_america",
            Zone::SouthAmerica => "south_america",
            Zone::Europe => "europe",
            Zone::MiddleEast => "middle_east",
            Zone::SouthAsia => "south_asia",
            Zone::EastAsia => "east_asia",
            Zone::Africa => "africa",
            Zone::Oceania => "oceania",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Path inflation per corridor: an unordered pair of zones, or none (then the model's fallback).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Corridors([[Option<f64>; 8]; 8]);

impl Corridors {
    /// The factors of [`FITTED_CORRIDORS`].
    pub fn fitted() -> Self {
        Self::from_table(FITTED_CORRIDORS)
    }

    /// Corridors from `(zone, zone, factor)` rows, either order.
    pub fn from_table(rows: &[(Zone, Zone, f64)]) -> Self {
        let mut c = Corridors::default();
        for &(a, b, f) in rows {
            c.set(a, b, f);
        }
        c
    }

    /// Sets the factor between `a` and `b` (both directions).
    pub fn set(&mut self, a: Zone, b: Zone, factor: f64) {
        self.0[a.index()][b.index()] = Some(factor);
        self.0[b.index()][a.index()] = Some(factor);
    }

    /// The factor between `a` and `b`, if the corridor has one.
    pub fn get(&self, a: Zone, b: Zone) -> Option<f64> {
        self.0[a.index()][b.index()]
    }
}

/// Path inflation for corridors the fit had too few rows for (fitted on all training rows).
pub const FITTED_FALLBACK: f64 = 1.531;

/// Path inflation per corridor, as fitted by `sim latency-fit` on the training half of
/// `reports/latency-dataset/rtt.csv` (a test checks this table is that fit's output).
pub const FITTED_CORRIDORS: &[(Zone, Zone, f64)] = &[
    (Zone::NorthAmerica, Zone::NorthAmerica, 1.477), // 42 rows
    (Zone::NorthAmerica, Zone::SouthAmerica, 1.467), // 18 rows
    (Zone::NorthAmerica, Zone::Europe, 1.435),       // 102 rows
    (Zone::NorthAmerica, Zone::MiddleEast, 1.588),   // 28 rows
    (Zone::NorthAmerica, Zone::SouthAsia, 1.636),    // 21 rows
    (Zone::NorthAmerica, Zone::EastAsia, 1.324),     // 73 rows
    (Zone::NorthAmerica, Zone::Africa, 1.670),       // 10 rows
    (Zone::NorthAmerica, Zone::Oceania, 1.198),      // 21 rows
    (Zone::SouthAmerica, Zone::Europe, 1.838),       // 17 rows
    (Zone::SouthAmerica, Zone::MiddleEast, 2.361),   // 5 rows
    (Zone::SouthAmerica, Zone::EastAsia, 1.492),     // 13 rows
    (Zone::Europe, Zone::Europe, 1.409),             // 53 rows
    (Zone::Europe, Zone::MiddleEast, 1.777),         // 31 rows
    (Zone::Europe, Zone::SouthAsia, 1.750),          // 23 rows
    (Zone::Europe, Zone::EastAsia, 2.071),           // 83 rows
    (Zone::Europe, Zone::Africa, 1.766),             // 11 rows
    (Zone::Europe, Zone::Oceania, 1.533),            // 21 rows
    (Zone::MiddleEast, Zone::SouthAsia, 1.914),      // 8 rows
    (Zone::MiddleEast, Zone::EastAsia, 2.054),       // 21 rows
    (Zone::MiddleEast, Zone::Oceania, 1.597),        // 7 rows
    (Zone::SouthAsia, Zone::EastAsia, 1.820),        // 20 rows
    (Zone::SouthAsia, Zone::Oceania, 1.488),         // 5 rows
    (Zone::EastAsia, Zone::EastAsia, 1.499),         // 28 rows
    (Zone::EastAsia, Zone::Africa, 2.588),           // 11 rows
    (Zone::EastAsia, Zone::Oceania, 1.415),          // 19 rows
];

/// Parameters of the latency model; [`Default`] is the calibrated production model.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyModel {
    /// Factor by which real paths are longer than the great circle, for corridors without a
    /// fitted factor of their own.
    pub inflation: f64,
    /// Fitted factor per corridor (unordered pair of zones); see [`Corridors`].
    pub corridors: Corridors,
    /// Median of the per-peer access delay, ms (one way, one end).
    pub access_median_ms: f64,
    /// Standard deviation of ln(access delay): the spread of the log-normal.
    pub access_sigma: f64,
    /// Upper bound of the access delay, ms.
    pub access_max_ms: f64,
    /// Mean of the exponential per-message jitter, ms (one way); 0 disables jitter.
    pub jitter_mean_ms: f64,
}

impl Default for LatencyModel {
    fn default() -> Self {
        LatencyModel {
            inflation: FITTED_FALLBACK,
            corridors: Corridors::fitted(),
            access_median_ms: 1.0,
            access_sigma: 1.0,
            access_max_ms: 50.0,
            jitter_mean_ms: 1.0,
        }
    }
}

/// Where a simulated peer sits: its region, its city, and its access delay.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// The peer's region.
    pub region: Region,
    /// Index of the peer's city in `region.cities()`.
    pub city: usize,
    /// Latitude in degrees (the city's).
    pub lat: f64,
    /// Longitude in degrees (the city's).
    pub lon: f64,
    /// The city's zone, which picks the path inflation to other peers.
    pub zone: Zone,
    /// The peer's own one-way access delay, added to every message it sends or receives.
    pub access_delay: Duration,
}

impl Placement {
    /// The peer's city in the built-in table.
    pub fn city(&self) -> &'static City {
        &self.region.cities()[self.city]
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Converts milliseconds to a `Duration`, rounded to the nanosecond (negative counts as 0).
fn duration_ms(ms: f64) -> Duration {
    if ms.is_finite() && ms > 0.0 {
        Duration::from_nanos((ms * 1e6).round() as u64)
    } else {
        Duration::ZERO
    }
}

impl LatencyModel {
    /// Path inflation between two zones: the corridor's fitted factor, or the fallback.
    pub fn inflation_between(&self, a: Zone, b: Zone) -> f64 {
        self.corridors.get(a, b).unwrap_or(self.inflation)
    }

    /// One-way propagation time in ms over a great-circle distance between two zones,
    /// inflation included.
    pub fn propagation_ms(&self, distance_km: f64, a: Zone, b: Zone) -> f64 {
        distance_km / FIBRE_KM_PER_S * 1e3 * self.inflation_between(a, b)
    }

    /// The part of a data-centre median RTT that does not grow with distance: four median
    /// access delays (two per direction) and the median of two jitter draws, ms.
    pub fn fixed_rtt_ms(&self) -> f64 {
        4.0 * self.access_median_ms.min(self.access_max_ms)
            + MEDIAN_OF_TWO_EXPONENTIALS * self.jitter_mean_ms.max(0.0)
    }

    /// Draws one peer's access delay (log-normal, capped).
    pub fn sample_access_delay(&self, rng: &mut impl Rng) -> Duration {
        // Box–Muller; 1 − u keeps the logarithm's argument in (0, 1].
        let u1 = 1.0 - rng.random::<f64>();
        let u2 = rng.random::<f64>();
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        let delay = self.access_median_ms * (self.access_sigma * z).exp();
        duration_ms(delay.min(self.access_max_ms))
    }

    /// Draws one message's jitter (exponential, non-negative).
    pub fn sample_jitter(&self, rng: &mut impl Rng) -> Duration {
        if self.jitter_mean_ms <= 0.0 {
            return Duration::ZERO;
        }
        let u = rng.random::<f64>();
        duration_ms(-self.jitter_mean_ms * (1.0 - u).ln())
    }

    /// Places `scenario.peers` peers: exact counts per region, random cities, access delays.
    ///
    /// Region counts come from [`Scenario::region_counts`] (largest remainder), so shares are
    /// honoured exactly; the peers' order is shuffled so that peer index says nothing about
    /// region. Then, for each peer in index order, a city (uniform among the region's) and an
    /// access delay are drawn. Same scenario and RNG state, same placements.
    pub fn place_peers(&self, scenario: &Scenario, rng: &mut impl Rng) -> Vec<Placement> {
        let mut regions: Vec<Region> = scenario
            .region_counts()
            .iter()
            .flat_map(|&(region, n)| std::iter::repeat_n(region, n))
            .collect();
        regions.shuffle(rng);
        regions
            .into_iter()
            .map(|region| {
                let cities = region.cities();
                let city = rng.random_range(0..cities.len());
                let access_delay = self.sample_access_delay(rng);
                Placement {
                    region,
                    city,
                    lat: cities[city].lat,
                    lon: cities[city].lon,
                    zone: Zone::of(cities[city].lat, cities[city].lon),
                    access_delay,
                }
            })
            .collect()
    }

    /// One-way delay from `a` to `b` without jitter: propagation plus both access delays.
    pub fn base_one_way(&self, a: &Placement, b: &Placement) -> Duration {
        let km = haversine_km(a.lat, a.lon, b.lat, b.lon);
        duration_ms(self.propagation_ms(km, a.zone, b.zone)) + a.access_delay + b.access_delay
    }

    /// One-way delay of one message from `a` to `b`: the base plus a fresh jitter sample.
    pub fn one_way(&self, a: &Placement, b: &Placement, rng: &mut impl Rng) -> Duration {
        self.base_one_way(a, b) + self.sample_jitter(rng)
    }

    /// Expected round-trip time between two peers in ms (base both ways plus mean jitter).
    ///
    /// This is the physical reference for a direct connection (`direct_rtt_mean_ms`).
    pub fn mean_rtt_ms(&self, a: &Placement, b: &Placement) -> f64 {
        ms(self.base_one_way(a, b)) + ms(self.base_one_way(b, a)) + 2.0 * self.jitter_mean_ms
    }

    /// Median round-trip time in ms between two data centres at the given coordinates.
    ///
    /// Each end's access delay is taken at the distribution's median; the jitter term is the
    /// median of the two independent exponential draws (out and back).
    pub fn median_rtt_between(&self, lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
        let km = haversine_km(lat1, lon1, lat2, lon2);
        let (za, zb) = (Zone::of(lat1, lon1), Zone::of(lat2, lon2));
        2.0 * self.propagation_ms(km, za, zb) + self.fixed_rtt_ms()
    }
}

/// [`LatencyModel::place_peers`] with the default model.
pub fn place_peers(scenario: &Scenario, rng: &mut impl Rng) -> Vec<Placement> {
    LatencyModel::default().place_peers(scenario, rng)
}

/// [`LatencyModel::median_rtt_between`] with the default model.
pub fn median_rtt_between(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    LatencyModel::default().median_rtt_between(lat1, lon1, lat2, lon2)
}

/// Writes an integer with thousands separators, e.g. `5,453`.
struct Thousands(u64);

impl fmt::Display for Thousands {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.0.to_string();
        for (i, ch) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                f.write_str(",")?;
            }
            write!(f, "{ch}")?;
        }
        Ok(())
    }
}

/// `sim latency A B`: the model's median RTT between two locations, as the line to print.
///
/// Each argument is `LAT,LON` or a city of the built-in table; e.g.
/// `"median RTT 86.5 ms (distance 5,461 km)"`.
pub fn latency_command(a: &str, b: &str) -> Result<String, LocationError> {
    let (lat1, lon1) = parse_location(a)?;
    let (lat2, lon2) = parse_location(b)?;
    let km = haversine_km(lat1, lon1, lat2, lon2);
    let rtt = median_rtt_between(lat1, lon1, lat2, lon2);
    Ok(format!(
        "median RTT {rtt:.1} ms (distance {} km)",
        Thousands(km.round() as u64)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cities::find_city;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn at(name: &str) -> (f64, f64) {
        let (_, c) = find_city(name).expect(name);
        (c.lat, c.lon)
    }

    /// AWS inter-region RTT averages (DESIGN.md) and the cities of those regions.
    const AWS: [(&str, &str, f64); 4] = [
        ("Ashburn", "Dublin", 80.5),
        ("Ashburn", "Frankfurt", 88.7),
        ("Ashburn", "Tokyo", 145.3),
        ("Dublin", "Sydney", 309.6),
    ];

    #[test]
    fn calibrated_within_20_percent_of_aws() {
        for (a, b, published) in AWS {
            let ((la, oa), (lb, ob)) = (at(a), at(b));
            let model = median_rtt_between(la, oa, lb, ob);
            let error = model / published - 1.0;
            assert!(
                error.abs() <= 0.20,
                "{a}–{b}: model {model:.1} ms vs AWS {published} ms ({:+.1} %)",
                error * 100.0
            );
        }
    }

    #[test]
    fn sampled_rtts_match_the_median_formula() {
        // Two data centres: peers whose access delay is exactly the median.
        let model = LatencyModel::default();
        let place = |name: &str| {
            let (region, c) = find_city(name).expect(name);
            Placement {
                region,
                city: region
                    .cities()
                    .iter()
                    .position(|x| x.name == c.name)
                    .expect("index"),
                lat: c.lat,
                lon: c.lon,
                zone: Zone::of(c.lat, c.lon),
                access_delay: duration_ms(model.access_median_ms),
            }
        };
        let (a, b) = (place("Ashburn"), place("Dublin"));
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut rtts: Vec<f64> = (0..20_001)
            .map(|_| ms(model.one_way(&a, &b, &mut rng)) + ms(model.one_way(&b, &a, &mut rng)))
            .collect();
        rtts.sort_by(f64::total_cmp);
        let sampled = rtts[rtts.len() / 2];
        let formula = model.median_rtt_between(a.lat, a.lon, b.lat, b.lon);
        assert!((sampled - formula).abs() < 0.1, "{sampled} vs {formula}");
        let mean = rtts.iter().sum::<f64>() / rtts.len() as f64;
        assert!((mean - model.mean_rtt_ms(&a, &b)).abs() < 0.1);
    }

    #[test]
    fn haversine_known_distances() {
        assert_eq!(haversine_km(10.0, 20.0, 10.0, 20.0), 0.0);
        // A quarter of a meridian.
        let quarter = haversine_km(0.0, 0.0, 90.0, 0.0);
        assert!((quarter - std::f64::consts::PI * EARTH_RADIUS_KM / 2.0).abs() < 1e-6);
        // Antipodes: half the circumference, no NaN from rounding.
        let half = haversine_km(0.0, 0.0, 0.0, 180.0);
        assert!((half - std::f64::consts::PI * EARTH_RADIUS_KM).abs() < 1e-6);
        let (a, d) = (at("Ashburn"), at("Dublin"));
        let km = haversine_km(a.0, a.1, d.0, d.1);
        assert!((5400.0..5500.0).contains(&km), "{km}");
    }

    #[test]
    fn placement_honours_shares_and_seed() {
        let scenario = Scenario {
            peers: 1_000,
            ..Scenario::default()
        };
        let place = |seed| place_peers(&scenario, &mut ChaCha8Rng::seed_from_u64(seed));
        let peers = place(42);
        assert_eq!(peers.len(), 1_000);
        for (region, n) in scenario.region_counts() {
            assert_eq!(peers.iter().filter(|p| p.region == region).count(), n);
        }
        for p in &peers {
            assert_eq!((p.city().lat, p.city().lon), (p.lat, p.lon));
            assert!(p.access_delay <= Duration::from_millis(50));
        }
        assert_eq!(place(42), peers);
        assert_ne!(place(43), peers);
        // Shuffled: the first 300 peers are not all North American.
        assert!(
            peers[..300]
                .iter()
                .any(|p| p.region != Region::NorthAmerica)
        );
    }

    #[test]
    fn access_delays_have_the_configured_median() {
        let model = LatencyModel::default();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut d: Vec<Duration> = (0..10_001)
            .map(|_| model.sample_access_delay(&mut rng))
            .collect();
        d.sort();
        let median = ms(d[d.len() / 2]);
        assert!((median - 1.0).abs() < 0.05, "{median}");
    }

    #[test]
    fn one_way_is_base_plus_small_nonnegative_jitter() {
        let model = LatencyModel::default();
        let scenario = Scenario::default();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let peers = model.place_peers(&scenario, &mut rng);
        let (a, b) = (&peers[0], &peers[1]);
        let base = model.base_one_way(a, b);
        assert_eq!(base, model.base_one_way(b, a));
        let n = 10_000;
        let mut total = 0.0;
        for _ in 0..n {
            let d = model.one_way(a, b, &mut rng);
            assert!(d >= base);
            total += ms(d - base);
        }
        let mean_jitter = total / n as f64;
        assert!((mean_jitter - 1.0).abs() < 0.05, "{mean_jitter}");
        let quiet = LatencyModel {
            jitter_mean_ms: 0.0,
            ..model
        };
        assert_eq!(quiet.one_way(a, b, &mut rng), quiet.base_one_way(a, b));
    }

    #[test]
    fn parses_locations() {
        assert_eq!(parse_lat_lon("53.35,-6.26"), Ok((53.35, -6.26)));
        assert_eq!(parse_lat_lon(" 53.35 , -6.26 "), Ok((53.35, -6.26)));
        assert_eq!(parse_lat_lon("-90,180"), Ok((-90.0, 180.0)));
        assert_eq!(parse_lat_lon("91,0"), Err(LocationError::Latitude(91.0)));
        assert_eq!(
            parse_lat_lon("0,-180.5"),
            Err(LocationError::Longitude(-180.5))
        );
        assert!(matches!(
            parse_lat_lon("north,0"),
            Err(LocationError::NotANumber {
                which: "latitude",
                ..
            })
        ));
        assert!(matches!(
            parse_lat_lon("0,inf"),
            Err(LocationError::NotANumber {
                which: "longitude",
                ..
            })
        ));
        assert!(matches!(
            parse_lat_lon("53.35"),
            Err(LocationError::Format(_))
        ));
        let e = parse_lat_lon("100,0").expect_err("range").to_string();
        assert!(
            e.contains("latitude 100") && e.contains("-90 and 90"),
            "{e}"
        );
        assert_eq!(parse_location("dublin"), Ok(at("Dublin")));
        assert!(parse_location("Atlantis").is_err());
    }

    #[test]
    fn latency_command_line() {
        let line = latency_command("39.0438,-77.4874", "Dublin").expect("command");
        assert!(line.starts_with("median RTT "), "{line}");
        assert!(line.ends_with(" ms (distance 5,461 km)"), "{line}");
        assert_eq!(
            latency_command("1,1", "1,1").expect("same place"),
            format!(
                "median RTT {:.1} ms (distance 0 km)",
                median_rtt_between(1.0, 1.0, 1.0, 1.0)
            )
        );
        assert!(latency_command("1,1", "1;1").is_err());
        assert_eq!(Thousands(1_234_567).to_string(), "1,234,567");
        assert_eq!(Thousands(999).to_string(), "999");
    }
}
