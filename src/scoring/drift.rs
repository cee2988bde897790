//! The drift statistic: how the recent PASS scores of a recipe sit against
//! the out-of-fold calibration scores of its enrolled good frames.
//!
//! From the calibration scores (sorted, `n` of them) come the median `m`
//! and the 95th percentile `q`, both as the `p (n + 1)`-th smallest score
//! (interpolated; Hyndman and Fan's type 6), so that a new good part lands
//! above `q` with probability 5 % on average over calibrations; the
//! spread is `s = q - m`. Over the last `N` PASS scores (a ring buffer),
//! with `m_r` their median:
//! - the **median shift** `(m_r - m) / s`: 0 for parts like the enrolled
//!   ones, 1 when the typical part scores as high as one good part in
//!   twenty did at enrollment; negative when parts score lower. Only a rise
//!   raises WATCH or DRIFT: new parts score below the out-of-fold
//!   calibration whenever the enrolled frames come in near-duplicates (each
//!   then has its twin in the reference, which out of fold it lacks), so a
//!   fall is shown but is no alarm;
//! - the **share above p95**: the fraction of the `N` scores above `q`,
//!   expected 5 %.
//!
//! Levels OK, WATCH, DRIFT ([`next_level`]): WATCH once the shift reaches
//! `watch_shift` or the share reaches `watch_share`; DRIFT at
//! `limit_shift` or `limit_share`. A level is left only once both
//! statistics are below [`HYSTERESIS`] times the limits that raised it, so
//! that a window at a limit does not flap. The defaults, and why:
//! - `window` [`DEFAULT_WINDOW`] parts: about a shift of a busy line, or a
//!   day of a slow one; enough for the share to be estimated to ±1.5
//!   points (the binomial standard deviation of 5 % over 200 parts).
//! - `watch_share` 0.10 and `limit_share` 0.15, twice and three times the
//!   expected share: for 200 good parts the binomial distribution reaches
//!   them by chance with probability 0.27 % and 9e-8 per window, given a
//!   well-estimated `q`. With `n` calibration frames `q` itself is off:
//!   the true share above it has a spread of about
//!   `sqrt(0.05 * 0.95 / (n + 2))` (4.6 points for 20 frames, 2.2 for 100),
//!   which adds to the window's; enroll more frames for fewer false WATCH.
//! - `watch_shift` 0.5 and `limit_shift` 1.0: DRIFT when the typical part
//!   scores like the 95th-percentile good part did, WATCH halfway. For
//!   normally distributed scores the shift of good parts has a standard
//!   deviation of about `0.76 sqrt(1 / N + 1 / n)` (the spread of two
//!   medians over `s = 1.645` standard deviations): 0.18 for 20
//!   calibration frames and 200 parts, so WATCH is 2.8 of them away.
//! - Before `N` PASS parts are seen, the level is judged on those there are
//!   once they are half a window ([`DriftLimits::min_parts`]); the chance
//!   of a false WATCH is higher then (2.8 % at 100 parts by the binomial).
//!
//! The statistic needs [`MIN_CALIBRATION_SCORES`] scores (below that the
//! 95th percentile is the highest score and is exceeded more often than
//! 5 %), and out-of-fold scores of several good frames: a single golden
//! image is calibrated on perturbed copies of itself, which are no sample
//! of good parts, so no share above their 95th percentile can be expected
//! and the drift watch is not available there.

use std::collections::VecDeque;

/// Default number of recent PASS scores the statistics are taken over.
pub const DEFAULT_WINDOW: u32 = 200;
/// Accepted windows: at least 10 parts, and at most 10,000, so that the
/// median (computed at every PASS part, linear in the window) stays cheap.
pub const WINDOW_RANGE: (u32, u32) = (10, 10_000);
/// Default median shift that raises WATCH.
pub const DEFAULT_WATCH_SHIFT: f32 = 0.5;
/// Default median shift that raises DRIFT.
pub const DEFAULT_LIMIT_SHIFT: f32 = 1.0;
/// Default share above the calibration's 95th percentile that raises WATCH.
pub const DEFAULT_WATCH_SHARE: f32 = 0.10;
/// Default share above the calibration's 95th percentile that raises DRIFT.
pub const DEFAULT_LIMIT_SHARE: f32 = 0.15;
/// The share of good parts expected above the calibration's 95th
/// percentile; share limits must be above it.
pub const EXPECTED_SHARE: f32 = 0.05;
/// Largest shift limit accepted.
pub const MAX_SHIFT: f32 = 100.0;
/// Fewest calibration scores the statistic is taken against: with fewer,
/// `0.95 (n + 1) > n` and the 95th percentile is the highest score.
pub const MIN_CALIBRATION_SCORES: usize = 19;
/// A level is left once both statistics are below this share of the limits
/// that raised it.
pub const HYSTERESIS: f32 = 0.8;
/// Smallest spread, relative to the median, so that identical calibration
/// scores still give finite shifts.
const MIN_RELATIVE_SPREAD: f32 = 1e-3;

/// The drift watch's settings (part of a recipe's settings).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriftLimits {
    /// Recent PASS scores the statistics are taken over.
    pub window: u32,
    /// Median shift (in calibration spreads) that raises WATCH.
    pub watch_shift: f32,
    /// Median shift that raises DRIFT.
    pub limit_shift: f32,
    /// Share above the calibration's 95th percentile that raises WATCH.
    pub watch_share: f32,
    /// Share above the calibration's 95th percentile that raises DRIFT.
    pub limit_share: f32,
}

impl Default for DriftLimits {
    fn default() -> Self {
        Self {
            window: DEFAULT_WINDOW,
            watch_shift: DEFAULT_WATCH_SHIFT,
            limit_shift: DEFAULT_LIMIT_SHIFT,
            watch_share: DEFAULT_WATCH_SHARE,
            limit_share: DEFAULT_LIMIT_SHARE,
        }
    }
}

impl DriftLimits {
    /// PASS parts needed before a level other than OK is judged: half the
    /// window.
    pub fn min_parts(&self) -> usize {
        (self.window as usize).div_ceil(2)
    }

    /// Checks every limit; the message names the setting and the range.
    pub fn validate(&self) -> Result<(), String> {
        let (low, high) = WINDOW_RANGE;
        if !(low..=high).contains(&self.window) {
            return Err(format!(
                "drift_window is {}; it must be between {low} and {high} parts",
                self.window
            ));
        }
        if !(self.watch_shift > 0.0 && self.watch_shift <= self.limit_shift && self.limit_shift <= MAX_SHIFT)
        {
            return Err(format!(
                "drift_watch_shift is {} and drift_limit_shift {}; they must satisfy 0 < watch <= limit <= {MAX_SHIFT} (calibration spreads)",
                self.watch_shift, self.limit_shift
            ));
        }
        if !(self.watch_share > EXPECTED_SHARE
            && self.watch_share <= self.limit_share
            && self.limit_share <= 1.0)
        {
            return Err(format!(
                "drift_watch_share is {} and drift_limit_share {}; they must satisfy {EXPECTED_SHARE} < watch <= limit <= 1 (good parts land above the 95th percentile {EXPECTED_SHARE} of the time)",
                self.watch_share, self.limit_share
            ));
        }
        Ok(())
    }

    /// The level `statistics` reach with these limits.
    pub fn level(&self, statistics: Statistics) -> Level {
        let shift = statistics.median_shift;
        let share = statistics.share_above_p95;
        if shift >= self.limit_shift || share >= self.limit_share {
            Level::Drift
        } else if shift >= self.watch_shift || share >= self.watch_share {
            Level::Watch
        } else {
            Level::Ok
        }
    }

    fn scaled(&self, factor: f32) -> Self {
        Self {
            watch_shift: self.watch_shift * factor,
            limit_shift: self.limit_shift * factor,
            watch_share: self.watch_share * factor,
            limit_share: self.limit_share * factor,
            ..*self
        }
    }
}

/// How far the recent parts have moved, in rising order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Like the enrolled parts.
    Ok,
    /// Moving: look at the line.
    Watch,
    /// Moved: the threshold no longer fits the parts.
    Drift,
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ok => "OK",
            Self::Watch => "WATCH",
            Self::Drift => "DRIFT",
        })
    }
}

/// The level after `current` for `statistics`: up at once to the level the
/// limits give, down only as far as [`HYSTERESIS`] times the limits allow.
pub fn next_level(current: Level, statistics: Statistics, limits: &DriftLimits) -> Level {
    let raised = limits.level(statistics);
    if raised >= current {
        raised
    } else {
        current.min(limits.scaled(HYSTERESIS).level(statistics))
    }
}

/// What the calibration scores give the statistic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Basis {
    /// Median of the calibration scores.
    pub median: f32,
    /// Their 95th percentile.
    pub p95: f32,
    /// `p95 - median` (at least a thousandth of the median).
    pub spread: f32,
    /// Calibration scores.
    pub scores: usize,
}

impl Basis {
    /// The basis from the calibration scores of a reference built from
    /// `images` good images; the error says why there is none.
    pub fn from_calibration(scores: &[f32], images: usize) -> Result<Self, String> {
        if images <= 1 {
            return Err(
                "one golden image: its calibration scores are of perturbed copies, not a sample of good parts; \
                 enroll at least 19 good frames for the drift watch"
                    .into(),
            );
        }
        let mut sorted: Vec<f32> = scores.iter().copied().filter(|s| s.is_finite()).collect();
        if sorted.len() < MIN_CALIBRATION_SCORES {
            return Err(format!(
                "{} calibration scores; the drift watch needs at least {MIN_CALIBRATION_SCORES} (enroll more good frames)",
                sorted.len()
            ));
        }
        sorted.sort_by(f32::total_cmp);
        let median = quantile(&sorted, 0.5);
        let p95 = quantile(&sorted, 0.95);
        let spread = (p95 - median)
            .max(MIN_RELATIVE_SPREAD * median.abs())
            .max(f32::MIN_POSITIVE);
        Ok(Self {
            median,
            p95,
            spread,
            scores: sorted.len(),
        })
    }
}

/// The `p` quantile of `sorted` (ascending, not empty) as the
/// `p (n + 1)`-th smallest value, interpolated and clamped to the sample.
pub fn quantile(sorted: &[f32], p: f64) -> f32 {
    let n = sorted.len();
    let h = (p * (n as f64 + 1.0)).clamp(1.0, n as f64);
    let below = h.floor() as usize;
    let fraction = (h - below as f64) as f32;
    let low = sorted[below - 1];
    match sorted.get(below) {
        Some(&high) if fraction > 0.0 => low + fraction * (high - low),
        _ => low,
    }
}

/// The two statistics of a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Statistics {
    /// `(median_recent - median_calibration) / spread`.
    pub median_shift: f32,
    /// Share of the window above the calibration's 95th percentile.
    pub share_above_p95: f32,
}

/// The last PASS scores, at most `capacity`, with the count above the
/// basis's 95th percentile kept as they come and go.
#[derive(Debug, Clone)]
pub struct Window {
    scores: VecDeque<f32>,
    capacity: usize,
    p95: f32,
    above: usize,
    scratch: Vec<f32>,
}

impl Window {
    /// An empty window of `capacity` scores, counting those above `p95`.
    pub fn new(capacity: usize, p95: f32) -> Self {
        Self {
            scores: VecDeque::with_capacity(capacity),
            capacity,
            p95,
            above: 0,
            scratch: Vec::with_capacity(capacity),
        }
    }

    /// Scores held.
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }

    /// Keeps at most `capacity` scores from now on, dropping the oldest.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
        while self.scores.len() > self.capacity {
            self.pop();
        }
    }

    fn pop(&mut self) {
        if let Some(old) = self.scores.pop_front()
            && old > self.p95
        {
            self.above -= 1;
        }
    }

    /// Adds a score, dropping the oldest when full. Scores that are not
    /// finite are ignored.
    pub fn push(&mut self, score: f32) {
        if !score.is_finite() {
            return;
        }
        if self.scores.len() >= self.capacity {
            self.pop();
        }
        self.scores.push_back(score);
        if score > self.p95 {
            self.above += 1;
        }
    }

    /// The statistics against `basis` (whose `p95` the window counts
    /// against); `None` when empty.
    pub fn statistics(&mut self, basis: &Basis) -> Option<Statistics> {
        let n = self.scores.len();
        if n == 0 {
            return None;
        }
        self.scratch.clear();
        self.scratch.extend(self.scores.iter().copied());
        let middle = n / 2;
        let (_, &mut upper, _) = self.scratch.select_nth_unstable_by(middle, f32::total_cmp);
        let median = if n % 2 == 1 {
            upper
        } else {
            // The largest of the lower half, next to `upper`.
            let lower = self.scratch[..middle]
                .iter()
                .copied()
                .fold(f32::NEG_INFINITY, f32::max);
            0.5 * (lower + upper)
        };
        Some(Statistics {
            median_shift: (median - basis.median) / basis.spread,
            share_above_p95: self.above as f32 / n as f32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calibration scores 1..=99: median 50, p95 95, spread 45.
    fn basis() -> Basis {
        let scores: Vec<f32> = (1..=99).map(|v| v as f32).collect();
        Basis::from_calibration(&scores, 99).unwrap()
    }

    fn stats(shift: f32, share: f32) -> Statistics {
        Statistics {
            median_shift: shift,
            share_above_p95: share,
        }
    }

    #[test]
    fn quantiles_are_the_p_n_plus_1_th_values() {
        let sorted: Vec<f32> = (1..=19).map(|v| v as f32).collect();
        // 0.95 * 20 = 19: the highest; 0.5 * 20 = 10.
        assert_eq!(quantile(&sorted, 0.95), 19.0);
        assert_eq!(quantile(&sorted, 0.5), 10.0);
        let sorted = [1.0, 2.0, 3.0, 4.0];
        // 0.5 * 5 = 2.5: halfway between 2 and 3; 0.95 * 5 clamps to 4.
        assert_eq!(quantile(&sorted, 0.5), 2.5);
        assert_eq!(quantile(&sorted, 0.95), 4.0);
        assert_eq!(quantile(&[7.0], 0.5), 7.0);
        let basis = basis();
        assert_eq!((basis.median, basis.p95, basis.spread), (50.0, 95.0, 45.0));
    }

    #[test]
    fn too_few_or_perturbed_calibration_scores_give_no_basis() {
        let scores: Vec<f32> = (0..18).map(|v| v as f32).collect();
        let error = Basis::from_calibration(&scores, 18).unwrap_err();
        assert!(error.contains("18 calibration scores"), "{error}");
        let scores: Vec<f32> = (0..40).map(|v| v as f32).collect();
        let error = Basis::from_calibration(&scores, 1).unwrap_err();
        assert!(error.contains("perturbed copies"), "{error}");
        let same = vec![2.0; 30];
        let basis = Basis::from_calibration(&same, 30).unwrap();
        assert!((basis.spread - 0.002).abs() < 1e-6, "{basis:?}");
    }

    #[test]
    fn the_window_keeps_the_last_scores_and_counts_those_above_p95() {
        let basis = basis();
        let mut window = Window::new(4, basis.p95);
        assert_eq!(window.statistics(&basis), None);
        for score in [50.0, 96.0, 50.0, 50.0] {
            window.push(score);
        }
        // Median 50: no shift; one of four above 95.
        assert_eq!(window.statistics(&basis), Some(stats(0.0, 0.25)));
        // The 96 leaves, two 140s come: 50, 50, 140, 140.
        window.push(140.0);
        window.push(140.0);
        window.push(f32::NAN);
        assert_eq!(window.len(), 4);
        assert_eq!(window.statistics(&basis), Some(stats(1.0, 0.5)));
        // Shrinking drops the oldest: 140, 140.
        window.set_capacity(2);
        assert_eq!(window.statistics(&basis), Some(stats(2.0, 1.0)));
        // Odd counts take the middle value: 5 below the calibration median.
        let mut window = Window::new(3, basis.p95);
        for score in [5.0, 95.0, 50.0 - 45.0 * 0.5] {
            window.push(score);
        }
        assert_eq!(window.statistics(&basis), Some(stats(-0.5, 0.0)));
    }

    #[test]
    fn levels_rise_at_the_limits_and_fall_below_the_hysteresis() {
        let limits = DriftLimits::default();
        let next = |current, shift, share| next_level(current, stats(shift, share), &limits);
        assert_eq!(next(Level::Ok, 0.0, 0.05), Level::Ok);
        assert_eq!(next(Level::Ok, 0.49, 0.099), Level::Ok);
        assert_eq!(next(Level::Ok, 0.5, 0.0), Level::Watch);
        assert_eq!(next(Level::Ok, -5.0, 0.0), Level::Ok, "a fall is no alarm");
        assert_eq!(next(Level::Ok, 0.0, 0.10), Level::Watch);
        assert_eq!(next(Level::Ok, 0.0, 0.15), Level::Drift);
        assert_eq!(next(Level::Watch, 1.0, 0.0), Level::Drift);
        // Between 0.8 x and 1 x the limits a raised level holds.
        assert_eq!(next(Level::Watch, 0.45, 0.0), Level::Watch);
        assert_eq!(next(Level::Watch, 0.0, 0.09), Level::Watch);
        assert_eq!(next(Level::Watch, 0.39, 0.079), Level::Ok);
        assert_eq!(next(Level::Drift, 0.9, 0.0), Level::Drift);
        assert_eq!(next(Level::Drift, 0.79, 0.0), Level::Watch);
        assert_eq!(next(Level::Drift, 0.1, 0.02), Level::Ok);
    }

    #[test]
    fn a_sequence_of_rising_scores_goes_ok_watch_drift_and_back() {
        let basis = basis();
        let limits = DriftLimits {
            window: 20,
            ..DriftLimits::default()
        };
        let mut window = Window::new(limits.window as usize, basis.p95);
        let mut level = Level::Ok;
        let mut seen = Vec::new();
        // 20 parts at the calibration median, then 1 more each part.
        let scores = (0..20).map(|_| 50.0).chain((1..=60).map(|i| 50.0 + i as f32));
        for score in scores.chain(std::iter::repeat_n(50.0, 40)) {
            window.push(score);
            let stats = window.statistics(&basis).unwrap();
            level = next_level(level, stats, &limits);
            if seen.last() != Some(&level) {
                seen.push(level);
            }
        }
        assert_eq!(
            seen,
            [Level::Ok, Level::Watch, Level::Drift, Level::Watch, Level::Ok]
        );
    }

    #[test]
    fn limits_are_checked() {
        assert_eq!(DriftLimits::default().validate(), Ok(()));
        assert_eq!(DriftLimits::default().min_parts(), 100);
        let bad = [
            DriftLimits {
                window: 9,
                ..DriftLimits::default()
            },
            DriftLimits {
                watch_shift: 2.0,
                ..DriftLimits::default()
            },
            DriftLimits {
                watch_share: 0.05,
                ..DriftLimits::default()
            },
            DriftLimits {
                limit_share: 1.5,
                ..DriftLimits::default()
            },
            DriftLimits {
                watch_shift: f32::NAN,
                ..DriftLimits::default()
            },
        ];
        for limits in bad {
            assert!(limits.validate().is_err(), "{limits:?}");
        }
    }
}
