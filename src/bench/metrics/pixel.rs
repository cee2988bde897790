//! Exact pixel-level AUROC, accumulated image by image.

use super::{SortedIndex, sort_key};

/// Pixel-level AUROC over all pixels of all added images, exact (the same definition as [`super::auroc`] applied
/// to the concatenation of every anomaly map and mask; equals `sklearn.metrics.roc_auc_score` on all pixels).
///
/// Memory: 4 bytes per pixel are kept (the score as an order-preserving `u32`, split by class); [`Self::finish`]
/// additionally sorts a copy of the smaller class only (distinct scores with cumulative counts) and ranks the
/// larger class against it, so ~40 million pixels need about 160 MB plus up to 3x the smaller class.
#[derive(Debug, Clone, Default)]
pub struct PixelAuroc {
    positives: Vec<u32>,
    negatives: Vec<u32>,
    skipped: usize,
}

impl PixelAuroc {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one image: `anomaly_map[i]` is pixel i's score, `mask[i]` whether it is a defect pixel. An image whose
    /// two slices differ in length is skipped whole (and counted by [`Self::skipped`]) rather than guessed at.
    pub fn add(&mut self, anomaly_map: &[f32], mask: &[bool]) {
        if anomaly_map.len() != mask.len() {
            self.skipped += 1;
            return;
        }
        for (&score, &defect) in anomaly_map.iter().zip(mask) {
            if defect {
                &mut self.positives
            } else {
                &mut self.negatives
            }
            .push(sort_key(score));
        }
    }

    /// Number of images rejected by [`Self::add`] because the map and the mask differ in length.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// The AUROC over all pixels added so far; `None` if there is no defect pixel or no defect-free pixel.
    pub fn finish(&self) -> Option<f64> {
        if self.positives.is_empty() || self.negatives.is_empty() {
            return None;
        }
        let positives_smaller = self.positives.len() <= self.negatives.len();
        let (small, large) = if positives_smaller {
            (&self.positives, &self.negatives)
        } else {
            (&self.negatives, &self.positives)
        };
        let mut sorted = small.clone();
        sorted.sort_unstable();
        // Distinct scores of the smaller class, and `cumulative[i]` = how many of its scores are below keys[i]
        // (with the total appended), so one search answers both "how many below" and "how many tied".
        let mut keys = Vec::new();
        let mut cumulative = vec![0u64];
        for run in sorted.chunk_by(|a, b| a == b) {
            keys.push(run[0]);
            cumulative.push(cumulative[cumulative.len() - 1] + run.len() as u64);
        }
        drop(sorted);
        let index = SortedIndex::new(&keys);
        // s = sum over the larger class of (2·#smaller below + #smaller equal): twice the Mann-Whitney U of the
        // larger class against the smaller one, ties counting 1/2, in exact integers.
        let s: u128 = large
            .iter()
            .map(|&key| {
                let (i, tied) = index.locate(key);
                let equal = if tied {
                    cumulative[i + 1] - cumulative[i]
                } else {
                    0
                };
                u128::from(2 * cumulative[i] + equal)
            })
            .sum();
        let (n_small, n_large) = (small.len() as u128, large.len() as u128);
        // Twice the U of the positives: directly s, or its complement when the positives are the smaller class.
        let twice_u = if positives_smaller {
            2 * n_small * n_large - s
        } else {
            s
        };
        Some(twice_u as f64 / (2 * n_small * n_large) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::super::auroc;
    use super::*;

    /// Deterministic pseudo-random numbers (64-bit LCG, high bits) so the test needs no dependency.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }
    }

    /// Images with coarse (heavily tied) scores, defect pixels scoring higher on average.
    fn images(seed: u64, defect_rate: u32) -> Vec<(Vec<f32>, Vec<bool>)> {
        let mut rng = Lcg(seed);
        (0..7)
            .map(|i| {
                let n = 50 + 13 * i;
                let mask: Vec<bool> = (0..n).map(|_| rng.next() % 100 < defect_rate).collect();
                let map = mask
                    .iter()
                    .map(|&m| (rng.next() % 20 + if m { 6 } else { 0 }) as f32 / 10.0)
                    .collect();
                (map, mask)
            })
            .collect()
    }

    #[test]
    fn equals_image_style_auroc_on_concatenation() {
        // Few defect pixels (positives sorted) and mostly defect pixels (negatives sorted): both branches.
        for (seed, rate) in [(1, 10), (2, 50), (3, 90)] {
            let imgs = images(seed, rate);
            let mut acc = PixelAuroc::new();
            for (map, mask) in &imgs {
                acc.add(map, mask);
            }
            let all_scores: Vec<f32> = imgs.iter().flat_map(|(m, _)| m.iter().copied()).collect();
            let all_labels: Vec<bool> = imgs.iter().flat_map(|(_, k)| k.iter().copied()).collect();
            let expected = auroc(&all_scores, &all_labels).unwrap();
            assert!((acc.finish().unwrap() - expected).abs() < 1e-12, "seed {seed}");
        }
    }

    #[test]
    fn hand_computed_with_ties() {
        // Defect pixels 0.5 | 0.9 vs good 0.2, 0.5 | 0.5: 0.5 -> 1 + 1/2 + 1/2; 0.9 -> 3 => 5/6.
        let mut acc = PixelAuroc::new();
        acc.add(&[0.5, 0.2, 0.5], &[true, false, false]);
        acc.add(&[0.9, 0.5], &[true, false]);
        assert!((acc.finish().unwrap() - 5.0 / 6.0).abs() < 1e-12);
        // The same pairs from the other side (more defect than good pixels): swap roles and scores' order.
        let mut acc = PixelAuroc::new();
        acc.add(&[-0.5, -0.2, -0.5], &[false, true, true]);
        acc.add(&[-0.9, -0.5], &[false, true]);
        assert!((acc.finish().unwrap() - 5.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn degenerate_inputs() {
        let mut acc = PixelAuroc::new();
        assert_eq!(acc.finish(), None);
        acc.add(&[0.1, 0.2], &[false, false]);
        assert_eq!(acc.finish(), None);
        acc.add(&[0.9], &[true, false]);
        assert_eq!((acc.finish(), acc.skipped()), (None, 1));
        acc.add(&[0.9], &[true]);
        assert_eq!(acc.finish(), Some(1.0));
    }
}
