//! The verdict threshold from good parts only, as a user has on day one.
//!
//! Rule: score good images that the reference was not built from (held out
//! from enrollment, or perturbed copies of a single golden image); the
//! threshold is the larger of their maximum and their mean plus three
//! standard deviations, times a margin. The user can replace it with a fixed
//! value or scale it with the sensitivity knob.

/// Safety margin on top of the held-out statistics.
pub const MARGIN: f32 = 1.1;

/// The calibrated threshold for the scores of held-out good images, or
/// `None` without any score.
pub fn from_good_scores(scores: &[f32]) -> Option<f32> {
    if scores.is_empty() {
        return None;
    }
    let n = scores.len() as f64;
    let mean = scores.iter().map(|&s| f64::from(s)).sum::<f64>() / n;
    let variance = scores.iter().map(|&s| (f64::from(s) - mean).powi(2)).sum::<f64>() / n;
    let max = scores.iter().copied().fold(f32::MIN, f32::max);
    let spread = (mean + 3.0 * variance.sqrt()) as f32;
    Some(max.max(spread) * MARGIN)
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

    #[test]
    fn a_wide_distribution_is_set_by_mean_plus_three_sigma() {
        // mean 5, population std 2 (values 3 and 7): 5 + 6 = 11 > max 7.
        let t = from_good_scores(&[3.0, 7.0, 3.0, 7.0]).unwrap();
        assert!((t - 11.0 * MARGIN).abs() < 1e-5, "{t}");
    }

    #[test]
    fn an_outlier_sets_it_through_the_maximum() {
        // 19 scores of 1 and one of 10: mean 1.45, std 1.96, mean + 3 std
        // = 7.33 < max 10.
        let mut scores = vec![1.0; 19];
        scores.push(10.0);
        let t = from_good_scores(&scores).unwrap();
        assert!((t - 10.0 * MARGIN).abs() < 1e-5, "{t}");
    }

    #[test]
    fn no_scores_no_threshold() {
        assert_eq!(from_good_scores(&[]), None);
    }

    #[test]
    fn fixed_wins_and_sensitivity_scales() {
        assert_eq!(in_force(4.0, Some(1.5), 2.0), 1.5);
        assert_eq!(in_force(4.0, None, 2.0), 2.0);
        assert_eq!(in_force(4.0, None, 0.5), 8.0);
    }
}
