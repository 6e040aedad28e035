//! The Vivaldi update rule with adaptive timestep, in the height-vector model.
//!
//! Each RTT sample to a peer is a spring between the two coordinates whose rest length is the
//! measured RTT; [`Vivaldi::observe`] moves the local coordinates a step along it. With the
//! paper's notation (section 5 and figure 3):
//!
//! ```text
//! w  = e_l / (e_l + e_r)                       how much to trust this sample
//! es = | ‖x_l − x_r‖ − rtt | / rtt             its relative error
//! e_l = es·ce·w + e_l·(1 − ce·w)               the local error, a moving average
//! δ  = cc·w                                    the adaptive timestep
//! x_l = x_l + δ·(rtt − ‖x_l − x_r‖)·u(x_l − x_r)
//! ```
//!
//! In the height-vector model (section 5.5) a coordinate is `[x, h]` with
//! `[x, h_x] − [y, h_y] = [x − y, h_x + h_y]` and `‖[x, h]‖ = ‖x‖ + h`, so the distance is the
//! planar distance plus both heights, and the unit vector moves the height too: a peer that is
//! measured further away than predicted rises, one measured closer sinks (never below the
//! configured minimum).
//!
//! Deviations from the paper, all for robustness:
//! - when the two points coincide in the plane and the spring pushes, the direction in the
//!   plane is drawn from the caller's RNG (the paper picks a random direction too; with heights
//!   the formula alone would only lift both peers and never separate them);
//! - the local error is capped at [`VivaldiConfig::max_error`] so that one wild sample (an RTT
//!   far below the predicted one gives a relative error in the thousands) is forgotten quickly;
//! - samples with unusable input are dropped (see [`Vivaldi::observe`]) and coordinates are
//!   kept within ±[`MAX_COORDINATE_MS`].
//!
//! Pure data structure: no I/O, no clock; randomness from the caller's RNG.

use std::time::Duration;

use rand::{Rng, RngCore};

use crate::record::Coordinates;

/// Largest absolute value of any coordinate component (position or height), in milliseconds.
///
/// Ten times the largest RTT a sample may have: honest coordinates stay far inside it (they
/// span the network's RTTs plus a slow drift of the centroid). Remote coordinates beyond it are
/// refused, and the local coordinates are clamped to it, so arithmetic on coordinates never
/// overflows.
pub const MAX_COORDINATE_MS: f32 = 100_000.0;

/// Planar distances below this (in ms, i.e. 1 ns) count as "the same point".
const COINCIDE_MS: f64 = 1e-6;

/// Vivaldi settings. `Default` is the production value.
#[derive(Clone, Debug, PartialEq)]
pub struct VivaldiConfig {
    /// The paper's `c_e`: how fast the local error estimate follows new samples (0–1).
    pub ce: f32,
    /// The paper's `c_c`: the largest fraction of a sample's error one step corrects (0–1).
    pub cc: f32,
    /// Lowest height, in ms. Heights start here; a positive minimum keeps the distance of two
    /// peers positive, so the unit vector between them is always defined.
    pub min_height_ms: f32,
    /// Cap of the local error estimate (1.0 is "predictions are off by 100 %").
    pub max_error: f32,
    /// Samples with a longer RTT are dropped: no usable path takes this long, so the RTT was
    /// measured across a stall, a retransmission or a clock jump.
    pub max_rtt: Duration,
}

impl Default for VivaldiConfig {
    fn default() -> Self {
        Self {
            ce: 0.25,
            cc: 0.25,
            min_height_ms: 0.1,
            max_error: 1.5,
            max_rtt: Duration::from_secs(10),
        }
    }
}

impl VivaldiConfig {
    /// The same settings with every value forced into its meaningful range, non-finite values
    /// replaced by the defaults.
    fn sanitized(self) -> Self {
        let d = Self::default();
        let pick = |v: f32, fallback: f32, lo: f32, hi: f32| {
            if v.is_finite() {
                v.clamp(lo, hi)
            } else {
                fallback
            }
        };
        Self {
            ce: pick(self.ce, d.ce, 0.0, 1.0),
            cc: pick(self.cc, d.cc, 0.0, 1.0),
            min_height_ms: pick(self.min_height_ms, d.min_height_ms, 0.0, MAX_COORDINATE_MS),
            max_error: pick(self.max_error, d.max_error, f32::MIN_POSITIVE, 1e6),
            max_rtt: self.max_rtt.min(d.max_rtt * 10),
        }
    }
}

/// A peer's Vivaldi state: its coordinates and how much it trusts them.
#[derive(Clone, Debug)]
pub struct Vivaldi {
    config: VivaldiConfig,
    coordinates: Coordinates,
    error: f32,
    samples: u64,
    rejected: u64,
}

impl Vivaldi {
    /// A peer that knows nothing yet: at the origin, at the minimum height, with error 1.0.
    ///
    /// Out-of-range settings are clamped (`ce` and `cc` to 0–1, negative minimum height to 0)
    /// and non-finite ones replaced by their defaults.
    pub fn new(config: VivaldiConfig) -> Self {
        let config = config.sanitized();
        Self {
            coordinates: Coordinates {
                x: 0.0,
                y: 0.0,
                height: config.min_height_ms,
            },
            error: 1.0_f32.min(config.max_error),
            config,
            samples: 0,
            rejected: 0,
        }
    }

    /// The settings in use (after clamping).
    pub fn config(&self) -> &VivaldiConfig {
        &self.config
    }

    /// The local coordinates, to publish and to predict RTTs from.
    pub fn coordinates(&self) -> Coordinates {
        self.coordinates
    }

    /// The local error estimate: roughly the mean relative error of recent predictions
    /// (0 = perfect, 1.0 = off by 100 %; starts at 1.0). Send it along with the coordinates.
    pub fn error(&self) -> f32 {
        self.error
    }

    /// Samples that moved the coordinates.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Samples dropped as unusable (see [`Vivaldi::observe`]).
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// The predicted RTT from here to a peer at `remote`.
    pub fn predict_to(&self, remote: &Coordinates) -> Duration {
        predict(&self.coordinates, remote)
    }

    /// Takes one RTT sample to a peer that reports `remote` coordinates and error estimate
    /// `remote_error`, and moves the local coordinates one step towards agreeing with it.
    ///
    /// The sample is dropped — nothing changes but [`Vivaldi::rejected`] — when `rtt` is zero
    /// or over [`VivaldiConfig::max_rtt`], when `remote` has a non-finite component, a negative
    /// height or a component beyond ±[`MAX_COORDINATE_MS`], or when `remote_error` is negative
    /// or not finite. `rng` is used only when the two points coincide. Returns whether the
    /// sample was used.
    pub fn observe(
        &mut self,
        remote: Coordinates,
        remote_error: f32,
        rtt: Duration,
        rng: &mut impl RngCore,
    ) -> bool {
        if !self.acceptable(&remote, remote_error, rtt) {
            self.rejected += 1;
            return false;
        }
        let cfg = &self.config;
        let rtt_ms = rtt.as_secs_f64() * 1000.0;
        let local_error = f64::from(self.error);
        let remote_error = f64::from(remote_error.min(cfg.max_error));
        let (ce, cc) = (f64::from(cfg.ce), f64::from(cfg.cc));

        let me = self.coordinates;
        let dx = f64::from(me.x) - f64::from(remote.x);
        let dy = f64::from(me.y) - f64::from(remote.y);
        let planar = dx.hypot(dy);
        let heights = f64::from(me.height) + f64::from(remote.height);
        let distance = planar + heights;

        // Trust the sample in proportion to how unsure we are compared with the remote.
        let weight = local_error / (local_error + remote_error).max(1e-9);
        let sample_error = (distance - rtt_ms).abs() / rtt_ms;
        let new_error = (sample_error * ce * weight + local_error * (1.0 - ce * weight))
            .min(f64::from(cfg.max_error));
        // Positive: the peers are predicted closer than they are, so push apart.
        let force = cc * weight * (rtt_ms - distance);

        let (mut x, mut y, mut h) = (f64::from(me.x), f64::from(me.y), f64::from(me.height));
        if planar < COINCIDE_MS && force > 0.0 {
            let angle = rng.random::<f64>() * std::f64::consts::TAU;
            x += force * angle.cos();
            y += force * angle.sin();
        } else if distance > 0.0 {
            // The unit vector of [x_l − x_r, h_l + h_r] under the height-vector norm.
            x += force * dx / distance;
            y += force * dy / distance;
            h += force * heights / distance;
        }

        let bound = f64::from(MAX_COORDINATE_MS);
        let clamp = |v: f64, lo: f64| -> Option<f32> {
            // Written so that a NaN fails `is_finite` rather than slipping through `clamp`.
            v.is_finite().then(|| v.clamp(lo, bound) as f32)
        };
        let updated = (
            clamp(x, -bound),
            clamp(y, -bound),
            clamp(h, f64::from(cfg.min_height_ms)),
            new_error.is_finite().then_some(new_error.max(0.0) as f32),
        );
        let (Some(x), Some(y), Some(height), Some(error)) = updated else {
            // Unreachable with the checks above; kept so that no input can leave NaN behind.
            self.rejected += 1;
            return false;
        };
        self.coordinates = Coordinates { x, y, height };
        self.error = error;
        self.samples += 1;
        true
    }

    fn acceptable(&self, remote: &Coordinates, remote_error: f32, rtt: Duration) -> bool {
        let in_range = |v: f32| v.is_finite() && v.abs() <= MAX_COORDINATE_MS;
        !rtt.is_zero()
            && rtt <= self.config.max_rtt
            && in_range(remote.x)
            && in_range(remote.y)
            && in_range(remote.height)
            && remote.height >= 0.0
            && remote_error.is_finite()
            && remote_error >= 0.0
    }
}

/// The RTT that coordinates `a` and `b` predict: the planar distance plus both heights.
///
/// Total on untrusted input: negative heights count as zero, and coordinates with a non-finite
/// component predict [`Duration::MAX`] ("unknown, assume far"), as does a distance too large
/// for a `Duration`.
pub fn predict(a: &Coordinates, b: &Coordinates) -> Duration {
    let finite = |c: &Coordinates| c.x.is_finite() && c.y.is_finite() && c.height.is_finite();
    if !finite(a) || !finite(b) {
        return Duration::MAX;
    }
    let dx = f64::from(a.x) - f64::from(b.x);
    let dy = f64::from(a.y) - f64::from(b.y);
    // Heights summed first: IEEE addition commutes, so predict(a, b) == predict(b, a) exactly.
    let ms = dx.hypot(dy) + (f64::from(a.height.max(0.0)) + f64::from(b.height.max(0.0)));
    Duration::try_from_secs_f64(ms / 1000.0).unwrap_or(Duration::MAX)
}

/// How far a prediction is off, relative to the measurement: `|predicted − measured| / measured`.
///
/// 0.1 means "off by 10 %". Never NaN: a zero measurement gives 0 if the prediction is zero
/// too and infinity otherwise.
pub fn relative_error(predicted: Duration, measured: Duration) -> f64 {
    if measured.is_zero() {
        return if predicted.is_zero() {
            0.0
        } else {
            f64::INFINITY
        };
    }
    predicted.abs_diff(measured).as_secs_f64() / measured.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn ms(v: f64) -> Duration {
        Duration::from_secs_f64(v / 1000.0)
    }

    fn at(x: f32, y: f32, height: f32) -> Coordinates {
        Coordinates { x, y, height }
    }

    fn assert_sane(v: &Vivaldi) {
        let c = v.coordinates();
        for p in [c.x, c.y, c.height] {
            assert!(p.is_finite() && p.abs() <= MAX_COORDINATE_MS, "{c:?}");
        }
        assert!(c.height >= v.config().min_height_ms, "{c:?}");
        assert!(v.error().is_finite() && (0.0..=v.config().max_error).contains(&v.error()));
    }

    #[test]
    fn a_new_node_is_at_the_origin_with_full_error() {
        let v = Vivaldi::new(VivaldiConfig::default());
        assert_eq!(v.coordinates(), at(0.0, 0.0, 0.1));
        assert_eq!(v.error(), 1.0);
    }

    #[test]
    fn coinciding_points_separate_in_a_random_direction() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut a = Vivaldi::new(VivaldiConfig::default());
        let mut b = Vivaldi::new(VivaldiConfig::default());
        let rtt = ms(50.0);
        for _ in 0..200 {
            let (ca, ea) = (a.coordinates(), a.error());
            a.observe(b.coordinates(), b.error(), rtt, &mut rng);
            b.observe(ca, ea, rtt, &mut rng);
        }
        let (ca, cb) = (a.coordinates(), b.coordinates());
        let planar = (ca.x - cb.x).hypot(ca.y - cb.y);
        assert!(planar > 40.0, "{ca:?} {cb:?}");
        let err = relative_error(predict(&ca, &cb), rtt);
        assert!(err < 0.01, "relative error {err}");
        // The two draws pick different directions: not both along one axis.
        assert!(ca.x != 0.0 && ca.y != 0.0);
    }

    #[test]
    fn a_pair_converges_to_the_measured_rtt() {
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        let mut a = Vivaldi::new(VivaldiConfig::default());
        let far = at(30.0, 40.0, 5.0); // 50 ms in the plane + 5 ms height
        for _ in 0..100 {
            a.observe(far, 0.05, ms(80.0), &mut rng);
        }
        let err = relative_error(a.predict_to(&far), ms(80.0));
        assert!(err < 0.01, "relative error {err}");
        assert!(a.error() < 0.05, "error estimate {}", a.error());
    }

    #[test]
    fn too_close_predictions_raise_the_height_and_too_far_ones_lower_it() {
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        let mut v = Vivaldi::new(VivaldiConfig::default());
        let remote = at(10.0, 0.0, 1.0);
        v.observe(remote, 1.0, ms(100.0), &mut rng);
        let raised = v.coordinates().height;
        assert!(raised > 0.1);
        for _ in 0..50 {
            v.observe(v.coordinates(), 1.0, ms(0.01), &mut rng);
        }
        assert!(v.coordinates().height < raised);
        assert!(v.coordinates().height >= 0.1);
    }

    #[test]
    fn bad_inputs_are_ignored() {
        let mut rng = ChaCha8Rng::seed_from_u64(14);
        let mut v = Vivaldi::new(VivaldiConfig::default());
        v.observe(at(3.0, 4.0, 1.0), 0.5, ms(20.0), &mut rng);
        let before = (v.coordinates(), v.error());
        let good = at(1.0, 2.0, 3.0);
        let bad_coordinates = [
            at(f32::NAN, 0.0, 1.0),
            at(0.0, f32::INFINITY, 1.0),
            at(0.0, 0.0, f32::NEG_INFINITY),
            at(0.0, 0.0, -1.0),
            at(MAX_COORDINATE_MS * 2.0, 0.0, 1.0),
            at(f32::MAX, f32::MIN, f32::MAX),
        ];
        for c in bad_coordinates {
            assert!(!v.observe(c, 0.5, ms(20.0), &mut rng), "{c:?}");
        }
        for e in [f32::NAN, f32::INFINITY, -0.1] {
            assert!(!v.observe(good, e, ms(20.0), &mut rng), "{e}");
        }
        for rtt in [Duration::ZERO, Duration::from_secs(11), Duration::MAX] {
            assert!(!v.observe(good, 0.5, rtt, &mut rng), "{rtt:?}");
        }
        assert_eq!((v.coordinates(), v.error()), before);
        assert_eq!(v.rejected(), 12);
        assert_eq!(v.samples(), 1);
        // The boundary itself is accepted.
        assert!(v.observe(good, 0.5, Duration::from_secs(10), &mut rng));
        assert!(v.observe(good, 0.5, Duration::from_nanos(1), &mut rng));
        assert_sane(&v);
    }

    #[test]
    fn nonsense_configuration_is_sanitized() {
        let v = Vivaldi::new(VivaldiConfig {
            ce: f32::NAN,
            cc: 7.0,
            min_height_ms: -3.0,
            max_error: f32::INFINITY,
            max_rtt: Duration::MAX,
        });
        let c = v.config();
        assert_eq!(
            (c.ce, c.cc, c.min_height_ms, c.max_error),
            (0.25, 1.0, 0.0, 1.5)
        );
        assert_eq!(c.max_rtt, Duration::from_secs(100));
    }

    #[test]
    fn zero_minimum_height_still_separates_coinciding_points() {
        let mut rng = ChaCha8Rng::seed_from_u64(15);
        let config = VivaldiConfig {
            min_height_ms: 0.0,
            ..VivaldiConfig::default()
        };
        let mut v = Vivaldi::new(config);
        assert!(v.observe(at(0.0, 0.0, 0.0), 1.0, ms(10.0), &mut rng));
        assert_sane(&v);
        assert!(v.coordinates().x != 0.0 || v.coordinates().y != 0.0);
    }

    #[test]
    fn predict_and_relative_error_are_total() {
        let a = at(0.0, 0.0, 1.0);
        assert_eq!(predict(&a, &at(3.0, 4.0, 2.0)), ms(8.0));
        assert_eq!(predict(&a, &at(f32::NAN, 0.0, 0.0)), Duration::MAX);
        assert_eq!(predict(&a, &at(0.0, 0.0, -5.0)), ms(1.0));
        assert_eq!(
            predict(
                &at(f32::MAX, f32::MAX, f32::MAX),
                &at(f32::MIN, f32::MIN, f32::MAX)
            ),
            Duration::MAX
        );
        assert_eq!(
            relative_error(ms(110.0), ms(100.0)),
            relative_error(ms(90.0), ms(100.0))
        );
        assert!((relative_error(ms(110.0), ms(100.0)) - 0.1).abs() < 1e-9);
        assert_eq!(relative_error(Duration::ZERO, Duration::ZERO), 0.0);
        assert_eq!(relative_error(ms(1.0), Duration::ZERO), f64::INFINITY);
        let huge = relative_error(Duration::MAX, Duration::from_nanos(1));
        assert!(huge.is_finite() && huge > 1e27);
    }

    fn arb_f32() -> impl Strategy<Value = f32> {
        prop_oneof![
            any::<u32>().prop_map(f32::from_bits),
            -300.0f32..300.0,
            Just(0.0f32),
        ]
    }

    fn arb_coordinates() -> impl Strategy<Value = Coordinates> {
        (arb_f32(), arb_f32(), arb_f32()).prop_map(|(x, y, height)| Coordinates { x, y, height })
    }

    proptest! {
        #[test]
        fn no_input_makes_the_state_nan_or_unbounded(
            seed in any::<u64>(),
            samples in proptest::collection::vec(
                (arb_coordinates(), arb_f32(), prop_oneof![any::<u64>(), 0u64..500_000_000]),
                1..200,
            ),
        ) {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut v = Vivaldi::new(VivaldiConfig::default());
            for (remote, remote_error, rtt_ns) in samples {
                v.observe(remote, remote_error, Duration::from_nanos(rtt_ns), &mut rng);
                assert_sane(&v);
                let p = v.predict_to(&remote);
                let e = relative_error(p, Duration::from_nanos(rtt_ns));
                prop_assert!(!e.is_nan());
            }
        }

        #[test]
        fn prediction_is_symmetric_and_at_least_the_heights(a in arb_coordinates(), b in arb_coordinates()) {
            prop_assert_eq!(predict(&a, &b), predict(&b, &a));
            if a.height.is_finite() && b.height.is_finite() && a.x.is_finite() && b.x.is_finite()
                && a.y.is_finite() && b.y.is_finite()
            {
                let heights = f64::from(a.height.max(0.0)) + f64::from(b.height.max(0.0));
                // Less one nanosecond, the resolution of a `Duration`.
                let p = predict(&a, &b);
                prop_assert!(p == Duration::MAX || p.as_secs_f64() * 1000.0 >= heights * (1.0 - 1e-9) - 1e-6);
            }
        }
    }

    // ---- Simulation: many nodes measuring each other on a metric with a known answer. ----

    /// Vivaldi running on every node of a synthetic network whose true RTTs are `rtt(i, j)`.
    struct Sim {
        rng: ChaCha8Rng,
        nodes: Vec<Vivaldi>,
    }

    impl Sim {
        fn new(seed: u64, n: usize) -> Self {
            Self {
                rng: ChaCha8Rng::seed_from_u64(seed),
                nodes: (0..n)
                    .map(|_| Vivaldi::new(VivaldiConfig::default()))
                    .collect(),
            }
        }

        /// Each round every node measures `per_round` random others, with the true RTT scaled
        /// by a jitter drawn uniformly from `1 ± jitter`.
        fn run(
            &mut self,
            rounds: usize,
            per_round: usize,
            jitter: f64,
            rtt: &dyn Fn(usize, usize) -> f64,
        ) {
            let n = self.nodes.len();
            for _ in 0..rounds {
                for i in 0..n {
                    for _ in 0..per_round {
                        let j = (i + self.rng.random_range(1..n)) % n;
                        let noise = 1.0 + jitter * (2.0 * self.rng.random::<f64>() - 1.0);
                        let (c, e) = (self.nodes[j].coordinates(), self.nodes[j].error());
                        self.nodes[i].observe(c, e, ms(rtt(i, j) * noise), &mut self.rng);
                    }
                }
            }
            for v in &self.nodes {
                assert_sane(v);
            }
        }

        /// Median and 90th percentile of the relative error of predictions over `pairs` random
        /// pairs of distinct nodes, against the true (jitter-free) RTT.
        fn prediction_error(
            &mut self,
            pairs: usize,
            rtt: &dyn Fn(usize, usize) -> f64,
        ) -> (f64, f64) {
            let n = self.nodes.len();
            let mut errors: Vec<f64> = (0..pairs)
                .map(|_| {
                    let i = self.rng.random_range(0..n);
                    let j = (i + self.rng.random_range(1..n)) % n;
                    let p = predict(&self.nodes[i].coordinates(), &self.nodes[j].coordinates());
                    relative_error(p, ms(rtt(i, j)))
                })
                .collect();
            errors.sort_by(f64::total_cmp);
            (errors[pairs / 2], errors[pairs * 9 / 10])
        }
    }

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    /// For each seed: 200 nodes, 3 measurements per node and round, 2 % jitter; the median
    /// relative error after 100 and after 200 rounds.
    fn sweep(
        seeds: std::ops::RangeInclusive<u64>,
        network: impl Fn(&mut ChaCha8Rng) -> Box<dyn Fn(usize, usize) -> f64>,
    ) -> (Vec<f64>, Vec<f64>) {
        let (mut at_100, mut at_200) = (vec![], vec![]);
        for seed in seeds {
            let rtt = network(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x5eed));
            let mut sim = Sim::new(seed, 200);
            sim.run(100, 3, 0.02, &rtt);
            let (m100, p100) = sim.prediction_error(10_000, &rtt);
            sim.run(100, 3, 0.02, &rtt);
            let (m200, p200) = sim.prediction_error(10_000, &rtt);
            println!(
                "seed={seed}: median relative error {m100:.4} (p90 {p100:.4}) after 100 rounds, \
                 {m200:.4} (p90 {p200:.4}) after 200"
            );
            at_100.push(m100);
            at_200.push(m200);
        }
        (at_100, at_200)
    }

    /// 200 nodes in a 200 ms × 200 ms square with access delays (heights) of 1–20 ms: exactly
    /// the height-vector model, so Vivaldi can reach the true RTTs up to the jitter.
    fn plane_with_heights(rng: &mut ChaCha8Rng) -> Box<dyn Fn(usize, usize) -> f64> {
        let truth: Vec<(f64, f64, f64)> = (0..200)
            .map(|_| {
                (
                    rng.random_range(0.0..200.0),
                    rng.random_range(0.0..200.0),
                    rng.random_range(1.0..20.0),
                )
            })
            .collect();
        Box::new(move |i, j| {
            let (a, b) = (truth[i], truth[j]);
            (a.0 - b.0).hypot(a.1 - b.1) + a.2 + b.2
        })
    }

    /// 200 nodes on the Earth, four in five scattered (~8°) around population centres, one in
    /// five anywhere. RTT: the great-circle path through fibre (200 km/ms) both ways, inflated
    /// 1.5× for indirect routing, plus both access delays (1–20 ms). Not embeddable in a plane
    /// (the sphere wraps around), like the real Internet.
    fn earth(rng: &mut ChaCha8Rng) -> Box<dyn Fn(usize, usize) -> f64> {
        // Latitude, longitude: North America east and west, Europe, East Asia, South Asia,
        // South America, Australia.
        let centres = [
            (40.0, -75.0),
            (37.0, -122.0),
            (50.0, 8.0),
            (35.0, 135.0),
            (20.0, 78.0),
            (-23.0, -46.0),
            (-33.0, 151.0),
        ];
        let unit = |lat: f64, lon: f64| {
            let (lat, lon) = (f64::to_radians(lat), f64::to_radians(lon));
            [lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()]
        };
        let spread = |r: &mut ChaCha8Rng| 8.0 * (r.random::<f64>() + r.random::<f64>() - 1.0);
        let nodes: Vec<([f64; 3], f64)> = (0..200)
            .map(|k| {
                let p = if k % 5 == 4 {
                    let z: f64 = rng.random_range(-1.0..1.0);
                    unit(z.asin().to_degrees(), rng.random_range(-180.0..180.0))
                } else {
                    let (lat, lon) = centres[rng.random_range(0..centres.len())];
                    let lat = (lat + spread(rng)).clamp(-89.0, 89.0);
                    unit(lat, lon + spread(rng))
                };
                (p, rng.random_range(1.0..20.0))
            })
            .collect();
        Box::new(move |i, j| {
            let ((a, ha), (b, hb)) = (nodes[i], nodes[j]);
            let cos = (a[0] * b[0] + a[1] * b[1] + a[2] * b[2]).clamp(-1.0, 1.0);
            let km = 6371.0 * cos.acos();
            2.0 * km / 200.0 * 1.5 + ha + hb
        })
    }

    #[test]
    fn converges_on_a_plane_with_heights() {
        let (at_100, at_200) = sweep(1..=20, plane_with_heights);
        let (worst_100, worst_200) = (
            at_100.iter().copied().fold(0.0, f64::max),
            at_200.iter().copied().fold(0.0, f64::max),
        );
        let (typical_100, typical_200) = (median(at_100), median(at_200));
        println!(
            "plane+heights, seeds 1–20: median of medians {typical_100:.4} after 100 rounds \
             (worst {worst_100:.4}), {typical_200:.4} after 200 (worst {worst_200:.4})"
        );
        // Measured: median of the 20 medians 1.0 % after 100 rounds, but one seed in twenty is
        // still unfolding a twist of the layout then (13.1 %); after 200 rounds every seed is
        // at 0.38–0.65 %.
        assert!(typical_100 < 0.02, "{typical_100}");
        assert!(worst_100 < 0.15, "{worst_100}");
        assert!(worst_200 < 0.01, "{worst_200}");
    }

    #[test]
    fn approximates_great_circle_latencies() {
        let (at_100, at_200) = sweep(1..=20, earth);
        let (worst_100, worst_200) = (
            at_100.iter().copied().fold(0.0, f64::max),
            at_200.iter().copied().fold(0.0, f64::max),
        );
        let (typical_100, typical_200) = (median(at_100), median(at_200));
        println!(
            "earth, seeds 1–20: median of medians {typical_100:.4} after 100 rounds \
             (worst {worst_100:.4}), {typical_200:.4} after 200 (worst {worst_200:.4})"
        );
        // Measured: median of the 20 medians 11.0 % after 100 rounds (worst 13.9 %), 10.6 %
        // after 200 (worst 12.9 %) — the ~11 % the paper reports on real Internet RTTs.
        assert!(typical_100 < 0.12, "{typical_100}");
        assert!(worst_100 < 0.15, "{worst_100}");
        assert!(worst_200 < 0.14, "{worst_200}");
    }

    #[test]
    fn same_seed_same_coordinates() {
        let rtt = |i: usize, j: usize| 10.0 + ((i * 7 + j * 7) % 50) as f64;
        let state = |seed| {
            let mut sim = Sim::new(seed, 20);
            sim.run(10, 3, 0.05, &rtt);
            sim.nodes
                .iter()
                .map(|n| (n.coordinates(), n.error()))
                .collect::<Vec<_>>()
        };
        assert_eq!(state(5), state(5));
        assert_ne!(state(5), state(6));
    }
}
