//! Evaluation metrics for the benchmark: image-level AUROC, ROC curve, best F1 and confusion rates at a
//! threshold, plus the pixel-level AUROC and AUPRO of the MVTec AD protocol (in the submodules).
//!
//! Conventions shared by everything here:
//! - scores: higher = more anomalous; labels / masks: `true` = defective (the positive class);
//! - scores are compared numerically, so `-0.0` and `0.0` tie; a NaN score ranks above every other score
//!   (all NaNs tie), so a broken anomaly map counts as maximally anomalous instead of silently vanishing
//!   ([`rates_at`] is the exception: it applies Loupe's literal verdict rule `score > threshold`);
//! - `scores` and `labels` are paired with `zip`: if their lengths differ, the longer one's tail is ignored.

mod aupro;
mod pixel;

pub use aupro::{Aupro, DEFAULT_FPR_LIMIT};
pub use pixel::PixelAuroc;

/// Area under the ROC curve, exact, with ties handled as the trapezoid rule does (equivalently the Mann-Whitney U
/// with ties counted 1/2): the fraction of (defective, good) pairs where the defective one scores higher, a tied
/// pair counting 1/2. Equals `sklearn.metrics.roc_auc_score`. `None` if either class is empty.
pub fn auroc(scores: &[f32], labels: &[bool]) -> Option<f64> {
    // Integer pair counting (twice U, so ties stay integral) keeps the result exact up to the final division.
    let mut twice_u: u128 = 0;
    let (mut n_pos, mut n_neg) = (0u64, 0u64);
    for g in groups(scores, labels) {
        twice_u += 2 * u128::from(g.pos) * u128::from(n_neg) + u128::from(g.pos) * u128::from(g.neg);
        n_pos += g.pos;
        n_neg += g.neg;
    }
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    Some(twice_u as f64 / (2 * u128::from(n_pos) * u128::from(n_neg)) as f64)
}

/// ROC curve points `(fpr, tpr, threshold)`, for plotting. Predicting defective when `score >= threshold`, there
/// is one point per distinct score (highest first), preceded by `(0, 0, +inf)` (scikit-learn's convention), so
/// the curve runs from (0, 0) to (1, 1). If there are more than `max_points` points, `max_points` evenly spaced
/// ones are kept, always including the first and the last (`max_points` below 2 is treated as 2). Empty if
/// either class is empty (the rates would be undefined).
pub fn roc_curve(scores: &[f32], labels: &[bool], max_points: usize) -> Vec<(f64, f64, f32)> {
    let groups = groups(scores, labels);
    let n_pos: u64 = groups.iter().map(|g| g.pos).sum();
    let n_neg: u64 = groups.iter().map(|g| g.neg).sum();
    if n_pos == 0 || n_neg == 0 {
        return Vec::new();
    }
    let mut points = Vec::with_capacity(groups.len() + 1);
    points.push((0.0, 0.0, f32::INFINITY));
    let (mut tp, mut fp) = (0u64, 0u64);
    for g in groups.iter().rev() {
        tp += g.pos;
        fp += g.neg;
        points.push((
            fp as f64 / n_neg as f64,
            tp as f64 / n_pos as f64,
            key_to_score(g.key),
        ));
    }
    thin_evenly(points, max_points)
}

/// Best F1 over all thresholds, and the threshold that reaches it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct F1Max {
    /// `max_t 2·TP / (2·TP + FP + FN)` where the prediction is "defective" when `score >= t`.
    pub f1: f64,
    /// The highest threshold reaching `f1` (it is one of the scores). Note the `>=`: under Loupe's verdict rule
    /// (`score > threshold`, see [`rates_at`]) the same split needs a threshold just below this one.
    pub threshold: f32,
}

/// Best F1 over every threshold `t` taken from the scores, predicting defective when `score >= t` (tied scores
/// always fall on the same side). When several thresholds reach the same F1 the highest one is reported. `None`
/// if there is no defective sample (F1 would be 0 or undefined everywhere).
pub fn f1_max(scores: &[f32], labels: &[bool]) -> Option<F1Max> {
    let groups = groups(scores, labels);
    let n_pos: u64 = groups.iter().map(|g| g.pos).sum();
    if n_pos == 0 {
        return None;
    }
    // Best as the fraction (2·TP, 2·TP + FP + FN) = (2·TP, TP + FP + P), compared exactly by cross-multiplying,
    // so equal F1 values are recognised as equal and the first (highest) threshold is kept.
    let mut best: Option<(u64, u64, u32)> = None;
    let (mut tp, mut fp) = (0u64, 0u64);
    for g in groups.iter().rev() {
        tp += g.pos;
        fp += g.neg;
        let (num, den) = (2 * tp, tp + fp + n_pos);
        let better = match best {
            None => true,
            Some((b_num, b_den, _)) => {
                u128::from(num) * u128::from(b_den) > u128::from(b_num) * u128::from(den)
            }
        };
        if better {
            best = Some((num, den, g.key));
        }
    }
    best.map(|(num, den, key)| F1Max {
        f1: num as f64 / den as f64,
        threshold: key_to_score(key),
    })
}

/// Confusion counts at one threshold under Loupe's verdict rule: a part FAILs (is predicted defective) when
/// `score > threshold`; a score equal to the threshold PASSes, and so does a NaN score (the comparison is false).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    /// `false_rejects / good`: share of good parts that FAIL. `None` if there is no good part.
    pub false_reject_rate: Option<f64>,
    /// `escapes / defective`: share of defective parts that PASS. `None` if there is no defective part.
    pub escape_rate: Option<f64>,
    /// Number of good parts (label `false`).
    pub good: usize,
    /// Number of defective parts (label `true`).
    pub defective: usize,
    /// Good parts with `score > threshold`.
    pub false_rejects: usize,
    /// Defective parts with `score <= threshold` (or a NaN score).
    pub escapes: usize,
}

/// Confusion counts and rates at `threshold`, FAIL meaning `score > threshold` (see [`Rates`]).
pub fn rates_at(scores: &[f32], labels: &[bool], threshold: f32) -> Rates {
    let (mut good, mut defective, mut false_rejects, mut escapes) = (0, 0, 0, 0);
    for (&score, &is_defective) in scores.iter().zip(labels) {
        let fail = score > threshold;
        if is_defective {
            defective += 1;
            escapes += usize::from(!fail);
        } else {
            good += 1;
            false_rejects += usize::from(fail);
        }
    }
    let ratio = |num: usize, den: usize| (den > 0).then(|| num as f64 / den as f64);
    Rates {
        false_reject_rate: ratio(false_rejects, good),
        escape_rate: ratio(escapes, defective),
        good,
        defective,
        false_rejects,
        escapes,
    }
}

/// The lowest threshold that fails at most `target` of the good parts under the verdict rule (`score >
/// threshold`), and what it gives: the best any threshold does at that false-reject rate. It is picked on the
/// test set itself, so it shows how far the calibrated threshold is from the best one, not what a user gets.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct OperatingPoint {
    /// The false-reject rate allowed, as a fraction of the good parts.
    pub target_false_reject_rate: f64,
    /// The threshold: the good score ranked just after the allowed number of false rejects.
    pub threshold: f32,
    /// The false-reject rate it gives (at most the target; lower when scores tie).
    pub false_reject_rate: f64,
    /// The escape rate it gives.
    pub escape_rate: f64,
}

/// The [`OperatingPoint`] for `target` (a fraction, such as 0.01): with `k = floor(target x good)` false
/// rejects allowed, the threshold is the (k+1)-th highest good score. `None` unless both classes exist.
pub fn operating_point(scores: &[f32], labels: &[bool], target: f64) -> Option<OperatingPoint> {
    let mut good: Vec<f32> = scores
        .iter()
        .zip(labels)
        .filter(|&(_, &defective)| !defective)
        .map(|(&score, _)| score)
        .collect();
    good.sort_by(|a, b| b.total_cmp(a));
    // A hair over the product, so that 2 % of 50 parts allows 1, not 0, despite rounding.
    let allowed = (target.max(0.0) * good.len() as f64 + 1e-9).floor() as usize;
    let threshold = *good.get(allowed.min(good.len().checked_sub(1)?))?;
    let rates = rates_at(scores, labels, threshold);
    Some(OperatingPoint {
        target_false_reject_rate: target,
        threshold,
        false_reject_rate: rates.false_reject_rate?,
        escape_rate: rates.escape_rate?,
    })
}

/// Maps a score to a `u32` whose unsigned order is the scores' numeric order, with `-0.0` merged into `0.0` and
/// every NaN into one value above `+inf`. Sorting and tie detection then become plain integer operations, and
/// the accumulators store 4 bytes per pixel.
fn sort_key(score: f32) -> u32 {
    let canonical = if score == 0.0 {
        0.0
    } else if score.is_nan() {
        f32::NAN
    } else {
        score
    };
    let bits = canonical.to_bits();
    // Negative floats order backwards by their bits, positive ones forwards: flip accordingly.
    if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

/// Inverse of [`sort_key`] (returns the canonical score).
fn key_to_score(key: u32) -> f32 {
    f32::from_bits(if key & 0x8000_0000 != 0 {
        key & 0x7fff_ffff
    } else {
        !key
    })
}

/// A run of equal scores: its key and how many defective / good samples share it.
struct Group {
    key: u32,
    pos: u64,
    neg: u64,
}

/// Groups `(score, label)` pairs by equal score, in ascending score order.
fn groups(scores: &[f32], labels: &[bool]) -> Vec<Group> {
    let mut pairs: Vec<(u32, bool)> = scores
        .iter()
        .zip(labels)
        .map(|(&s, &l)| (sort_key(s), l))
        .collect();
    pairs.sort_unstable_by_key(|&(key, _)| key);
    pairs
        .chunk_by(|a, b| a.0 == b.0)
        .map(|run| {
            let pos = run.iter().filter(|&&(_, l)| l).count() as u64;
            Group {
                key: run[0].0,
                pos,
                neg: run.len() as u64 - pos,
            }
        })
        .collect()
}

/// Keeps `max_points.max(2)` evenly spaced items, including the first and the last.
fn thin_evenly<T: Copy>(points: Vec<T>, max_points: usize) -> Vec<T> {
    let keep = max_points.max(2);
    let n = points.len();
    if n <= keep {
        return points;
    }
    // With n > keep the step (n-1)/(keep-1) exceeds 1, so the floored indices are distinct and end at n-1.
    (0..keep).map(|i| points[i * (n - 1) / (keep - 1)]).collect()
}

/// Search structure over sorted distinct keys: where each 16-bit key prefix starts, so one lookup only bisects the
/// short (usually cache-resident) run sharing the query's prefix. This makes "rank tens of millions of pixels
/// against a sorted class" cheap without sorting, or copying, the larger class.
struct SortedIndex<'a> {
    keys: &'a [u32],
    /// `starts[p]` = first index whose key prefix is `>= p`; 65537 entries.
    starts: Vec<usize>,
}

impl<'a> SortedIndex<'a> {
    /// `keys` must be sorted ascending and distinct.
    fn new(keys: &'a [u32]) -> Self {
        let mut starts = Vec::with_capacity((1 << 16) + 1);
        let mut i = 0;
        for prefix in 0..=(1u32 << 16) {
            while i < keys.len() && (keys[i] >> 16) < prefix {
                i += 1;
            }
            starts.push(i);
        }
        Self { keys, starts }
    }

    /// `(number of keys < key, whether key is one of them)`.
    fn locate(&self, key: u32) -> (usize, bool) {
        let prefix = (key >> 16) as usize;
        let (lo, hi) = (self.starts[prefix], self.starts[prefix + 1]);
        let run = &self.keys[lo..hi];
        let below = run.partition_point(|&k| k < key);
        (lo + below, run.get(below) == Some(&key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: bool = false;
    const T: bool = true;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn sort_key_orders_numerically() {
        let ordered = [
            f32::NEG_INFINITY,
            -2.5,
            -1e-30,
            0.0,
            1e-30,
            1.0,
            3.0,
            f32::INFINITY,
            f32::NAN,
        ];
        for pair in ordered.windows(2) {
            assert!(sort_key(pair[0]) < sort_key(pair[1]), "{pair:?}");
        }
        assert_eq!(sort_key(-0.0), sort_key(0.0));
        assert_eq!(sort_key(f32::NAN), sort_key(-f32::NAN));
        for &s in &ordered[..8] {
            assert_eq!(key_to_score(sort_key(s)), s);
        }
        assert!(key_to_score(sort_key(f32::NAN)).is_nan());
    }

    #[test]
    fn sorted_index_finds_rank_and_membership() {
        let keys: Vec<u32> = [0.1f32, 0.5, 0.6, 2.0, 70000.0]
            .iter()
            .map(|&s| sort_key(s))
            .collect();
        let index = SortedIndex::new(&keys);
        assert_eq!(index.locate(sort_key(-1.0)), (0, false));
        assert_eq!(index.locate(sort_key(0.1)), (0, true));
        assert_eq!(index.locate(sort_key(0.6)), (2, true));
        assert_eq!(index.locate(sort_key(1.0)), (3, false));
        assert_eq!(index.locate(sort_key(70000.0)), (4, true));
        assert_eq!(index.locate(sort_key(f32::NAN)), (5, false));
        assert_eq!(SortedIndex::new(&[]).locate(7), (0, false));
    }

    #[test]
    fn auroc_without_ties() {
        // Defective 0.35, 0.8 vs good 0.1, 0.4: 0.35>0.1, 0.35<0.4, 0.8>both -> 3 of 4 pairs.
        assert_eq!(auroc(&[0.1, 0.4, 0.35, 0.8], &[F, F, T, T]), Some(0.75));
    }

    #[test]
    fn auroc_with_ties() {
        // Defective 0.5, 0.9 vs good 0.2, 0.5: 0.5>0.2 (1), 0.5=0.5 (1/2), 0.9>both (2) -> 3.5/4.
        assert_eq!(auroc(&[0.2, 0.5, 0.5, 0.9], &[F, T, F, T]), Some(0.875));
        // Everything tied: every pair counts 1/2.
        assert_eq!(auroc(&[0.3; 5], &[F, T, F, T, T]), Some(0.5));
        // -0.0 and 0.0 are the same score.
        assert_eq!(auroc(&[-0.0, 0.0], &[T, F]), Some(0.5));
        // Defective 1, 1, 2 vs good 1, 3: pairs vs 1 -> 1/2, 1/2, 1; vs 3 -> 0, 0, 0 => 2/6.
        let a = auroc(&[1.0, 1.0, 2.0, 1.0, 3.0], &[T, T, T, F, F]).unwrap();
        assert!(close(a, 2.0 / 6.0));
    }

    #[test]
    fn auroc_extremes_and_degenerate_inputs() {
        assert_eq!(auroc(&[0.1, 0.2, 0.8, 0.9], &[F, F, T, T]), Some(1.0));
        assert_eq!(auroc(&[0.9, 0.8, 0.2, 0.1], &[F, F, T, T]), Some(0.0));
        assert_eq!(auroc(&[0.1, 0.2], &[T, T]), None);
        assert_eq!(auroc(&[0.1, 0.2], &[F, F]), None);
        assert_eq!(auroc(&[], &[]), None);
        // NaN ranks above everything.
        assert_eq!(auroc(&[f32::NAN, f32::INFINITY], &[T, F]), Some(1.0));
        // Length mismatch: only the common prefix counts.
        assert_eq!(auroc(&[0.1, 0.9, 0.5], &[F, T]), Some(1.0));
    }

    #[test]
    fn roc_curve_points_and_thinning() {
        // Descending: 0.8 T, 0.4 F, 0.35 T, 0.1 F.
        let curve = roc_curve(&[0.1, 0.4, 0.35, 0.8], &[F, F, T, T], 100);
        let expected = [
            (0.0, 0.0, f32::INFINITY),
            (0.0, 0.5, 0.8),
            (0.5, 0.5, 0.4),
            (0.5, 1.0, 0.35),
            (1.0, 1.0, 0.1),
        ];
        assert_eq!(curve, expected);
        // 5 points down to 3: indices 0, 2, 4.
        assert_eq!(
            roc_curve(&[0.1, 0.4, 0.35, 0.8], &[F, F, T, T], 3),
            [expected[0], expected[2], expected[4]]
        );
        // max_points below 2 still keeps both ends.
        assert_eq!(
            roc_curve(&[0.1, 0.4, 0.35, 0.8], &[F, F, T, T], 0),
            [expected[0], expected[4]]
        );
        // Ties move both rates in one step: 0.9 T, {0.5 T, 0.5 F}, 0.2 F.
        let tied = roc_curve(&[0.2, 0.5, 0.5, 0.9], &[F, T, F, T], 10);
        assert_eq!(
            tied,
            [
                (0.0, 0.0, f32::INFINITY),
                (0.0, 0.5, 0.9),
                (0.5, 1.0, 0.5),
                (1.0, 1.0, 0.2)
            ]
        );
        assert!(roc_curve(&[0.1, 0.2], &[T, T], 10).is_empty());
        assert!(roc_curve(&[], &[], 10).is_empty());
    }

    #[test]
    fn f1_max_keeps_ties_together() {
        // P = 2. t=0.9: TP1 FP0 -> 2/(1+0+2) = 2/3; t=0.5: TP2 FP1 -> 4/5; t=0.1: TP2 FP2 -> 4/6.
        // Splitting the 0.5 tie (defective first) would wrongly reach TP2 FP0 -> 1.0.
        let best = f1_max(&[0.9, 0.5, 0.5, 0.1], &[T, T, F, F]).unwrap();
        assert_eq!(
            best,
            F1Max {
                f1: 0.8,
                threshold: 0.5
            }
        );
        // P = 3. t=0.9: 2/4; t=0.8 (tie T,F): 4/6; t=0.3: 6/7; t=0.2: 6/8.
        let best = f1_max(&[0.9, 0.8, 0.8, 0.3, 0.2], &[T, F, T, T, F]).unwrap();
        assert!(close(best.f1, 6.0 / 7.0));
        assert_eq!(best.threshold, 0.3);
    }

    #[test]
    fn f1_max_equal_values_report_highest_threshold() {
        // P = 2. t=0.9: 2/(1+0+2) = 2/3; t=0.8: 2/4; t=0.7: 2/5; t=0.6: 4/(2+2+2) = 2/3 -> keep 0.9.
        let best = f1_max(&[0.9, 0.8, 0.7, 0.6], &[T, F, F, T]).unwrap();
        assert!(close(best.f1, 2.0 / 3.0));
        assert_eq!(best.threshold, 0.9);
        // Only defectives: everything predicted defective gives F1 = 1 at the lowest score.
        assert_eq!(
            f1_max(&[0.2, 0.4], &[T, T]),
            Some(F1Max {
                f1: 1.0,
                threshold: 0.2
            })
        );
        assert_eq!(f1_max(&[0.2, 0.4], &[F, F]), None);
        assert_eq!(f1_max(&[], &[]), None);
    }

    #[test]
    fn rates_at_scores_equal_to_threshold_pass() {
        // Goods 0.2, 0.5, 0.5: none > 0.5. Defectives 0.5 (passes: escape), 0.7 (fails).
        let r = rates_at(&[0.2, 0.5, 0.5, 0.7, 0.5], &[F, F, T, T, F], 0.5);
        assert_eq!(
            r,
            Rates {
                false_reject_rate: Some(0.0),
                escape_rate: Some(0.5),
                good: 3,
                defective: 2,
                false_rejects: 0,
                escapes: 1
            }
        );
        // Threshold 0.4: goods 0.5, 0.5 fail (2/3); both defectives fail.
        let r = rates_at(&[0.2, 0.5, 0.5, 0.7, 0.5], &[F, F, T, T, F], 0.4);
        assert_eq!((r.false_rejects, r.escapes), (2, 0));
        assert!(close(r.false_reject_rate.unwrap(), 2.0 / 3.0));
        assert_eq!(r.escape_rate, Some(0.0));
        // NaN never exceeds the threshold, so it passes.
        assert_eq!(rates_at(&[f32::NAN], &[T], 0.5).escapes, 1);
    }

    #[test]
    fn rates_at_empty_classes() {
        let r = rates_at(&[], &[], 0.5);
        assert_eq!(
            (r.good, r.defective, r.false_reject_rate, r.escape_rate),
            (0, 0, None, None)
        );
        let r = rates_at(&[0.9], &[F], 0.5);
        assert_eq!((r.false_reject_rate, r.escape_rate), (Some(1.0), None));
    }

    #[test]
    fn operating_points_allow_the_target_share_of_false_rejects_and_no_more() {
        // 100 good parts scoring 0..99 and 10 defects scoring 95.5..104.5.
        let mut scores: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let mut labels = vec![false; 100];
        scores.extend((0..10).map(|i| 95.5 + i as f32));
        labels.extend([true; 10]);
        let one = operating_point(&scores, &labels, 0.01).unwrap();
        // One false reject allowed: 99 fails, 98 is the threshold.
        assert_eq!(one.threshold, 98.0);
        assert!((one.false_reject_rate - 0.01).abs() < 1e-12);
        // Defects at 95.5, 96.5 and 97.5 pass.
        assert!((one.escape_rate - 0.3).abs() < 1e-12);
        let five = operating_point(&scores, &labels, 0.05).unwrap();
        assert_eq!(five.threshold, 94.0);
        assert_eq!(five.escape_rate, 0.0);
        // 2 % of 50 is exactly one part despite floating point.
        let fifty: Vec<f32> = (0..50).map(|i| i as f32).chain([100.0]).collect();
        let labels: Vec<bool> = (0..51).map(|i| i == 50).collect();
        assert_eq!(operating_point(&fifty, &labels, 0.02).unwrap().threshold, 48.0);
        assert!(operating_point(&fifty[..50], &labels[..50], 0.02).is_none());
    }
}
