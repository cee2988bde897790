//! The verdict threshold from good parts only, as a user has on day one,
//! set for a stated false-reject rate.
//!
//! Rule, for the out-of-fold scores of the enrolled good frames (each frame
//! scored against a reference that holds none of its own patches):
//! - [`TailRule::Exponential`], two or more frames: the upper tail is
//!   modelled as exponential (peaks over a threshold). Take the top
//!   `m = max(MIN_TAIL, n / 10)` scores (at most `n - 1`) above the
//!   `(m + 1)`-th highest, `u`; `P(score > u) = m / n`, and their mean
//!   excess `e` over `u` estimates the tail's scale. The scale used is the
//!   upper end of its one-sided 75 % confidence interval,
//!   `b = e m / G(m, 0.25)` (`G` the Gamma quantile, Wilson-Hilferty), so
//!   that few frames do not make the threshold optimistic. The threshold for
//!   a target false-reject rate `f` is `u + b ln(m / (n f))`: right for
//!   exponential and Gumbel tails (which maxima of anomaly maps have), on the
//!   safe side for lighter ones (normal), interpolated within the data when
//!   `n f >= m`. The false-reject rate, averaged over calibrations, is then
//!   at most the target: simulated (401 calibrations each, targets 1, 2 and
//!   5 %), 0.73 to 0.96 of it on Gumbel scores and 0.42 to 1.02 on normal
//!   ones, for 20, 50 and 700 frames; one calibration on 50 frames varies
//!   between about a tenth and three times the target.
//! - [`TailRule::Perturbation`], one golden image: no rate can be stated
//!   from one image. The threshold is [`SINGLE_IMAGE_MARGIN`] times the
//!   highest score of perturbed copies of the golden image (shifted, lighter
//!   and darker, noisier); it promises that frames differing from the golden
//!   image only that much score at most 1 / 0.9 = 1.11 times the threshold.
//!
//! A fixed `threshold` in the settings replaces the calibrated one; the
//! `sensitivity` divides it (above 1 fails more parts).

/// Default false-reject rate the calibrated threshold aims at.
pub const DEFAULT_TARGET_FALSE_REJECT_RATE: f32 = 0.01;
/// Lowest target accepted: below it the tail is extrapolated too far.
pub const MIN_TARGET_FALSE_REJECT_RATE: f32 = 0.001;
/// Highest target accepted.
pub const MAX_TARGET_FALSE_REJECT_RATE: f32 = 0.2;
/// Fewest scores the tail is fitted to.
pub const MIN_TAIL: usize = 5;
/// Factor on the highest perturbed-copy score of a single golden image
/// (chosen on the first 100 of deeppcb-pairs: 1.0 found 88.7 % of their
/// defects, 0.9 more without more false regions).
pub const SINGLE_IMAGE_MARGIN: f32 = 0.9;
/// Smallest tail scale, relative to `u`, so that identical scores still
/// leave a little room above them.
const MIN_RELATIVE_SCALE: f64 = 1e-3;
/// The standard normal's 25th percentile: the confidence of the tail scale.
const Z_25: f64 = -0.674_489_750_196_081_7;

/// The `p = 0.25` quantile of Gamma(`m`, 1) by Wilson and Hilferty's cube
/// approximation (within 1 % for `m >= 1`).
fn gamma_quantile_25(m: f64) -> f64 {
    m * (1.0 - 1.0 / (9.0 * m) + Z_25 / (9.0 * m).sqrt()).powi(3)
}

/// How a calibrated threshold was set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailRule {
    /// An exponential tail fitted to the top `tail` of the scores.
    Exponential {
        /// Scores in the fitted tail.
        tail: usize,
    },
    /// Perturbed copies of one golden image.
    Perturbation,
}

impl std::fmt::Display for TailRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exponential { tail } => write!(
                f,
                "exponential tail fitted to the top {tail} out-of-fold scores of the good frames"
            ),
            Self::Perturbation => write!(
                f,
                "{SINGLE_IMAGE_MARGIN} x the highest score of perturbed copies of the one golden image"
            ),
        }
    }
}

/// A calibrated threshold and what it rests on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibrated {
    /// The threshold on the anomaly score.
    pub threshold: f32,
    /// Scores it was set from.
    pub scored: usize,
    /// The rule.
    pub rule: TailRule,
    /// The false-reject rate expected of good parts like the enrolled ones;
    /// `None` where none can be stated (one golden image).
    pub expected_false_reject_rate: Option<f32>,
}

/// The threshold for a target false-reject rate from the out-of-fold
/// scores of `n >= 2` good frames ([`TailRule::Exponential`]); `None`
/// with fewer than two scores or a target outside (0, 1).
pub fn for_false_reject_rate(scores: &[f32], target: f32) -> Option<Calibrated> {
    let n = scores.len();
    if n < 2 || !(target > 0.0 && target < 1.0) {
        return None;
    }
    let mut sorted: Vec<f64> = scores.iter().map(|&s| f64::from(s)).collect();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let tail = (n / 10).max(MIN_TAIL).min(n - 1);
    let u = sorted[tail];
    let excess = sorted[..tail].iter().map(|s| s - u).sum::<f64>() / tail as f64;
    let bound = tail as f64 / gamma_quantile_25(tail as f64);
    let scale = (excess * bound)
        .max(MIN_RELATIVE_SCALE * u.abs())
        .max(f64::MIN_POSITIVE);
    let threshold = u + scale * (tail as f64 / (n as f64 * f64::from(target))).ln();
    Some(Calibrated {
        threshold: threshold as f32,
        scored: n,
        rule: TailRule::Exponential { tail },
        expected_false_reject_rate: Some(target),
    })
}

/// The threshold of one golden image from the scores of its perturbed
/// copies ([`TailRule::Perturbation`]); `None` without scores.
pub fn from_perturbations(scores: &[f32]) -> Option<Calibrated> {
    let max = scores.iter().copied().reduce(f32::max)?;
    Some(Calibrated {
        threshold: max * SINGLE_IMAGE_MARGIN,
        scored: scores.len(),
        rule: TailRule::Perturbation,
        expected_false_reject_rate: None,
    })
}

/// The calibrated threshold of a reference built from `images` good images
/// whose calibration gave `scores`.
pub fn calibrate(scores: &[f32], images: usize, target: f32) -> Option<Calibrated> {
    if images <= 1 {
        from_perturbations(scores)
    } else {
        for_false_reject_rate(scores, target)
    }
}

/// The threshold in force: the fixed one if set, else the calibrated one
/// divided by the sensitivity (above 1 fails more parts).
pub fn in_force(calibrated: f32, fixed: Option<f32>, sensitivity: f32) -> f32 {
    match fixed {
        Some(fixed) => fixed,
        None => calibrated / sensitivity.max(f32::MIN_POSITIVE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic uniform samples in (0, 1).
    struct Uniform(u64);

    impl Uniform {
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }

        /// Standard Gumbel: what maxima of many noisy values follow.
        fn gumbel(&mut self) -> f64 {
            -(-self.next().ln()).ln()
        }

        /// Standard normal (Box-Muller).
        fn normal(&mut self) -> f64 {
            (-2.0 * self.next().ln()).sqrt() * (std::f64::consts::TAU * self.next()).cos()
        }
    }

    /// Mean, over `trials` calibrations on `n` samples, of the false-reject
    /// rate on the true distribution, for target `f`, where `exceed(t)` is
    /// the true P(score > t).
    fn mean_rate(
        n: usize,
        f: f32,
        trials: usize,
        mut sample: impl FnMut(&mut Uniform) -> f64,
        exceed: impl Fn(f64) -> f64,
    ) -> f64 {
        let mut random = Uniform(0x5eed + n as u64);
        let total: f64 = (0..trials)
            .map(|_| {
                let scores: Vec<f32> = (0..n)
                    .map(|_| (20.0 + 2.0 * sample(&mut random)) as f32)
                    .collect();
                let threshold = f64::from(for_false_reject_rate(&scores, f).unwrap().threshold);
                exceed((threshold - 20.0) / 2.0)
            })
            .sum();
        total / trials as f64
    }

    fn gumbel_exceed(x: f64) -> f64 {
        1.0 - (-(-x).exp()).exp()
    }

    fn normal_exceed(x: f64) -> f64 {
        // Abramowitz-Stegun 7.1.26 for erfc, good to 1e-7.
        let z = x / std::f64::consts::SQRT_2;
        let t = 1.0 / (1.0 + 0.327_591_1 * z.abs());
        let poly = t
            * (0.254_829_592
                + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
        let erfc = poly * (-z * z).exp();
        0.5 * if z >= 0.0 { erfc } else { 2.0 - erfc }
    }

    #[test]
    fn on_gumbel_scores_the_mean_rate_is_at_most_the_target_and_near_it() {
        // Stated tolerance: the mean over calibrations within 0.6 to 1.1 of
        // the target.
        for n in [700, 50, 20] {
            for f in [0.01, 0.02, 0.05] {
                let ratio = mean_rate(n, f, 401, Uniform::gumbel, gumbel_exceed) / f64::from(f);
                assert!(
                    (0.6..=1.1).contains(&ratio),
                    "n {n}, target {f}: mean rate {ratio:.3} x the target"
                );
            }
        }
    }

    #[test]
    fn on_normal_scores_the_mean_rate_errs_on_the_safe_side() {
        // Within 0.3 to 1.15 of the target.
        for n in [700, 50, 20] {
            for f in [0.01, 0.05] {
                let ratio = mean_rate(n, f, 401, Uniform::normal, normal_exceed) / f64::from(f);
                assert!(
                    (0.3..=1.15).contains(&ratio),
                    "n {n}, target {f}: mean rate {ratio:.3} x the target"
                );
            }
        }
    }

    #[test]
    fn the_basis_is_reported() {
        let scores: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let calibrated = for_false_reject_rate(&scores, 0.01).unwrap();
        assert_eq!(calibrated.scored, 100);
        assert_eq!(calibrated.rule, TailRule::Exponential { tail: 10 });
        assert_eq!(calibrated.expected_false_reject_rate, Some(0.01));
        // u = 89 (the 11th highest), mean excess 5.5 times the bound
        // 10 / G(10, 0.25) = 1.29 (the exact quantile is 7.73), ln(10 / 1) = 2.303.
        let bound = 10.0 / gamma_quantile_25(10.0) as f32;
        assert!((bound - 10.0 / 7.73).abs() < 0.01, "{bound}");
        assert!((calibrated.threshold - (89.0 + 5.5 * bound * 10f32.ln())).abs() < 1e-2);
        assert!(calibrated.rule.to_string().contains("top 10"));
        // A looser target gives a lower threshold.
        assert!(for_false_reject_rate(&scores, 0.05).unwrap().threshold < calibrated.threshold);
    }

    #[test]
    fn identical_scores_leave_a_little_room_and_few_scores_still_work() {
        let calibrated = for_false_reject_rate(&[3.0; 8], 0.01).unwrap();
        assert!(
            calibrated.threshold > 3.0 && calibrated.threshold < 3.05,
            "{}",
            calibrated.threshold
        );
        let two = for_false_reject_rate(&[1.0, 2.0], 0.01).unwrap();
        assert_eq!(two.rule, TailRule::Exponential { tail: 1 });
        assert!(two.threshold > 2.0);
        assert!(for_false_reject_rate(&[1.0], 0.01).is_none());
        assert!(for_false_reject_rate(&[1.0, 2.0], 0.0).is_none());
    }

    #[test]
    fn one_golden_image_uses_its_perturbed_copies() {
        let calibrated = calibrate(&[1.0, 4.0, 2.0], 1, 0.01).unwrap();
        assert_eq!(calibrated.rule, TailRule::Perturbation);
        assert!((calibrated.threshold - 4.0 * SINGLE_IMAGE_MARGIN).abs() < 1e-6);
        assert_eq!(calibrated.expected_false_reject_rate, None);
        assert!(calibrate(&[], 1, 0.01).is_none());
    }

    #[test]
    fn fixed_wins_and_sensitivity_scales() {
        assert_eq!(in_force(4.0, Some(1.5), 2.0), 1.5);
        assert_eq!(in_force(4.0, None, 2.0), 2.0);
        assert_eq!(in_force(4.0, None, 0.5), 8.0);
    }
}
