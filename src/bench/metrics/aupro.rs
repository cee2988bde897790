//! AUPRO (area under the per-region-overlap curve) as the MVTec AD evaluation defines it, computed exactly.

use image::{GrayImage, Luma};
use imageproc::region_labelling::{Connectivity, connected_components};

use super::{SortedIndex, sort_key};

/// The false-positive-rate integration limit used by the MVTec AD benchmark.
pub const DEFAULT_FPR_LIMIT: f64 = 0.3;

/// Normalised area under the PRO curve up to a false-positive-rate limit, as defined by the MVTec AD evaluation
/// (Bergmann et al., IJCV 2021; official script `generic_util.compute_pro` + `trapezoid`):
///
/// - the ground-truth regions are the 8-connected components of each image's mask;
/// - at a threshold t (a pixel is predicted anomalous when its score >= t), a region's overlap is
///   |region ∩ predicted| / |region|, and PRO(t) is the mean overlap over all regions of all images (each region
///   weighs the same whatever its size);
/// - FPR(t) is the fraction of all defect-free pixels (over all images, defect-free images included) predicted
///   anomalous;
/// - the curve has one point per distinct score (tied pixels flip together), from (0, 0) to (1, 1); it is
///   integrated over FPR from 0 to `fpr_limit` with the trapezoid rule, PRO being linearly interpolated at
///   exactly `fpr_limit`, and the area is divided by `fpr_limit` (1.0 = perfect).
///
/// Images without defect pixels only contribute to the FPR. Memory: 4 bytes per defect-free pixel and 8 per
/// defect pixel; [`Self::finish`] sorts a copy of the defect pixels only (the defect-free ones are ranked against
/// them), so ~40 million pixels need a few hundred MB at most.
#[derive(Debug, Clone)]
pub struct Aupro {
    fpr_limit: f64,
    /// Sort keys of the defect-free pixels.
    background: Vec<u32>,
    /// (sort key, global region index) of the defect pixels.
    defect: Vec<(u32, u32)>,
    /// Pixel count of every region seen so far.
    region_sizes: Vec<u32>,
    skipped: usize,
}

impl Default for Aupro {
    /// An accumulator with the benchmark's limit, [`DEFAULT_FPR_LIMIT`] (0.3).
    fn default() -> Self {
        Self::new(DEFAULT_FPR_LIMIT)
    }
}

impl Aupro {
    /// An empty accumulator integrating up to `fpr_limit`, which must lie in (0, 1] (otherwise [`Self::finish`]
    /// returns `None`).
    pub fn new(fpr_limit: f64) -> Self {
        Self {
            fpr_limit,
            background: Vec::new(),
            defect: Vec::new(),
            region_sizes: Vec::new(),
            skipped: 0,
        }
    }

    /// Adds one image, row-major: `anomaly_map[y * width + x]` is the pixel's score, `mask[..]` whether it is a
    /// defect pixel. An image whose slices do not both hold `width * height` values (or that is too large to
    /// label, 2^32 pixels or more) is skipped whole and counted by [`Self::skipped`].
    pub fn add(&mut self, anomaly_map: &[f32], mask: &[bool], width: usize, height: usize) {
        let pixels = width.checked_mul(height);
        let dims = u32::try_from(width).ok().zip(u32::try_from(height).ok());
        let (Some((w, h)), Some(pixels)) = (dims, pixels) else {
            self.skipped += 1;
            return;
        };
        if anomaly_map.len() != pixels || mask.len() != pixels || u32::try_from(pixels).is_err() {
            self.skipped += 1;
            return;
        }
        if !mask.contains(&true) {
            // Defect-free image: no labelling needed, every pixel is background.
            self.background.extend(anomaly_map.iter().map(|&s| sort_key(s)));
            return;
        }
        let raw = mask.iter().map(|&m| if m { 255 } else { 0 }).collect();
        let Some(binary) = GrayImage::from_raw(w, h, raw) else {
            self.skipped += 1;
            return;
        };
        // Labels are 0 for background and 1..=n for the n components, consecutive.
        let labels = connected_components(&binary, Connectivity::Eight, Luma([0u8]));
        let labels = labels.as_raw();
        let n_new = labels.iter().copied().max().unwrap_or(0) as usize;
        let base = self.region_sizes.len();
        if u32::try_from(base + n_new).is_err() {
            self.skipped += 1;
            return;
        }
        self.region_sizes.resize(base + n_new, 0);
        for (&score, &label) in anomaly_map.iter().zip(labels) {
            if label == 0 {
                self.background.push(sort_key(score));
            } else {
                let region = base + label as usize - 1;
                self.region_sizes[region] += 1;
                // Fits: checked above that base + n_new fits in u32.
                self.defect.push((sort_key(score), region as u32));
            }
        }
    }

    /// Number of images rejected by [`Self::add`] (inconsistent or oversized dimensions).
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// The normalised AUPRO over all images added so far, in [0, 1]. `None` if there is no ground-truth region,
    /// no defect-free pixel, or `fpr_limit` is not in (0, 1].
    pub fn finish(&self) -> Option<f64> {
        let limit = self.fpr_limit;
        if !(limit > 0.0 && limit <= 1.0) || self.region_sizes.is_empty() || self.background.is_empty() {
            return None;
        }
        let mut defect = self.defect.clone();
        defect.sort_unstable_by_key(|&(key, _)| key);
        // Distinct defect-pixel scores (ascending) and, for each, the summed 1/|region| of its pixels: the PRO
        // gain of that tie group before dividing by the number of regions.
        let (mut keys, mut gains) = (Vec::new(), Vec::new());
        for run in defect.chunk_by(|a, b| a.0 == b.0) {
            keys.push(run[0].0);
            gains.push(
                run.iter()
                    .map(|&(_, r)| 1.0 / f64::from(self.region_sizes[r as usize]))
                    .sum::<f64>(),
            );
        }
        drop(defect);

        // Where each background pixel falls relative to those scores: tied with keys[i] (flips in the same step),
        // or strictly between keys[i-1] and keys[i] (`between[keys.len()]`: above them all). Background-only steps
        // move the curve horizontally, so they need no point of their own beyond the run's end: collinear points
        // change neither the trapezoid sum nor the interpolation at the limit. This avoids sorting (or copying)
        // the background pixels, the bulk of the data.
        let index = SortedIndex::new(&keys);
        let mut equal = vec![0u64; keys.len()];
        let mut between = vec![0u64; keys.len() + 1];
        for &key in &self.background {
            let (below, tied) = index.locate(key);
            if tied {
                equal[below] += 1;
            } else {
                between[below] += 1;
            }
        }

        let n_background = self.background.len() as f64;
        let n_regions = self.region_sizes.len() as f64;
        let mut curve = Trapezoid::new(limit);
        let mut false_positives = between[keys.len()];
        let mut covered = 0.0;
        curve.push(false_positives as f64 / n_background, 0.0);
        for i in (0..keys.len()).rev() {
            false_positives += equal[i];
            covered += gains[i];
            // Clamp like the official script: rounding in the sum must not push PRO past 1.
            let pro = (covered / n_regions).min(1.0);
            curve.push(false_positives as f64 / n_background, pro);
            if between[i] > 0 {
                false_positives += between[i];
                curve.push(false_positives as f64 / n_background, pro);
            }
        }
        Some(curve.area / limit)
    }
}

/// Streaming trapezoid integration of a polyline starting at (0, 0) with non-decreasing x, cut at `limit` with
/// linear interpolation there.
struct Trapezoid {
    limit: f64,
    last: (f64, f64),
    area: f64,
    done: bool,
}

impl Trapezoid {
    fn new(limit: f64) -> Self {
        Self {
            limit,
            last: (0.0, 0.0),
            area: 0.0,
            done: false,
        }
    }

    fn push(&mut self, x: f64, y: f64) {
        if self.done {
            return;
        }
        let (x0, y0) = self.last;
        if x <= self.limit {
            self.area += 0.5 * (y0 + y) * (x - x0);
            self.last = (x, y);
        } else {
            // x > limit >= x0, so the segment has non-zero width.
            let y_limit = y0 + (y - y0) * (self.limit - x0) / (x - x0);
            self.area += 0.5 * (y0 + y_limit) * (self.limit - x0);
            self.done = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    /// Parses a mask drawn as rows of '#' (defect) and '.' (good).
    fn mask(rows: &[&str]) -> Vec<bool> {
        rows.iter().flat_map(|r| r.chars().map(|c| c == '#')).collect()
    }

    #[test]
    fn hand_computed_one_region() {
        // 4x4, one 2x2 region (scores 0.9 0.8 / 0.6 0.4), 12 background pixels: 0.7, 0.5 and ten at 0.1.
        // Sweeping the scores downwards, points (FPR, PRO):
        //   0.9 -> (0, 1/4)   0.8 -> (0, 2/4)   0.7 -> (1/12, 2/4)   0.6 -> (1/12, 3/4)
        //   0.5 -> (2/12, 3/4)   0.4 -> (2/12, 1)   0.1 -> (1, 1)
        // Area up to 0.3: 1/12 * 1/2 + 1/12 * 3/4 + (0.3 - 2/12) * 1 = 1/24 + 1/16 + 2/15 = 57/240;
        // normalised: (57/240) / 0.3 = 19/24.
        let m = mask(&["##..", "##..", "....", "...."]);
        #[rustfmt::skip]
        let scores = [
            0.9, 0.8, 0.7, 0.1,
            0.6, 0.4, 0.5, 0.1,
            0.1, 0.1, 0.1, 0.1,
            0.1, 0.1, 0.1, 0.1,
        ];
        let mut acc = Aupro::default();
        acc.add(&scores, &m, 4, 4);
        assert!(close(acc.finish().unwrap(), 19.0 / 24.0));
        // Up to FPR 1: 1/24 + 1/16 + (1 - 2/12) * 1 = 225/240.
        let mut acc = Aupro::new(1.0);
        acc.add(&scores, &m, 4, 4);
        assert!(close(acc.finish().unwrap(), 225.0 / 240.0));
    }

    #[test]
    fn perfect_detector_scores_one() {
        let m = mask(&["....", ".##.", ".#..", "...."]);
        let scores: Vec<f32> = m.iter().map(|&d| if d { 0.8 } else { 0.2 }).collect();
        let mut acc = Aupro::default();
        acc.add(&scores, &m, 4, 4);
        assert_eq!(acc.finish(), Some(1.0));
    }

    #[test]
    fn interpolation_at_the_limit() {
        // 4x3: region of 2 pixels (0.9 and 0.5); 10 background pixels, five tied with the region's 0.5 and five
        // at 0.1. Points: (0, 0) -> 0.9: (0, 1/2) -> 0.5 tie group: (5/10, 1) -> (1, 1).
        // The diagonal (0, 1/2)-(1/2, 1) crosses 0.3 at PRO 1/2 + 1/2 * 0.3/0.5 = 0.8, so the area is
        // (0.5 + 0.8)/2 * 0.3 = 0.195 -> 0.65. (Stopping at the last point before 0.3 would give 0, taking either
        // end's PRO 0.5 or 1.)
        let m = mask(&["##..", "....", "...."]);
        #[rustfmt::skip]
        let scores = [
            0.9, 0.5, 0.5, 0.5,
            0.5, 0.5, 0.5, 0.1,
            0.1, 0.1, 0.1, 0.1,
        ];
        let mut acc = Aupro::new(0.3);
        acc.add(&scores, &m, 4, 3);
        assert!(close(acc.finish().unwrap(), 0.65));
        // Up to 1: (0.5 + 1)/2 * 0.5 + 1 * 0.5 = 0.875.
        let mut acc = Aupro::new(1.0);
        acc.add(&scores, &m, 4, 3);
        assert!(close(acc.finish().unwrap(), 0.875));
    }

    #[test]
    fn regions_weigh_equally_whatever_their_size() {
        // Region A: 1 pixel at 0.9; region B: 3 pixels at 0.3; 12 background pixels: two at 0.5, ten at 0.1.
        // Points: 0.9 -> (0, 1/2) (A is half the regions, not 1/4 of the pixels) -> 0.5: (2/12, 1/2)
        //   -> 0.3: (2/12, 1) -> (1, 1). Area up to 0.3: 1/2 * 1/6 + 1 * (0.3 - 1/6) = 13/60 -> 13/18.
        let m = mask(&["#...", "....", "...#", "..##"]);
        #[rustfmt::skip]
        let scores = [
            0.9, 0.1, 0.5, 0.1,
            0.1, 0.1, 0.1, 0.5,
            0.1, 0.1, 0.1, 0.3,
            0.1, 0.1, 0.3, 0.3,
        ];
        let mut acc = Aupro::default();
        acc.add(&scores, &m, 4, 4);
        assert!(close(acc.finish().unwrap(), 13.0 / 18.0));
    }

    #[test]
    fn regions_are_eight_connected_and_per_image() {
        // (0,0) touches (1,1) diagonally: one region of 3 pixels, of which only (0,0) scores high.
        // Points: 0.9 -> (0, 1/3) -> 0.1 (everything else) -> (1, 1). Area to 1: (1/3 + 1)/2 = 2/3.
        // (With 4-connectivity it would be two regions, PRO 1/2 at the first point, area 3/4.)
        let m = mask(&["#..", ".##", "..."]);
        let scores = [0.9, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1];
        let mut acc = Aupro::new(1.0);
        acc.add(&scores, &m, 3, 3);
        assert!(close(acc.finish().unwrap(), 2.0 / 3.0));
        // The same image twice: two regions of equal weight, same curve, same area.
        acc.add(&scores, &m, 3, 3);
        assert!(close(acc.finish().unwrap(), 2.0 / 3.0));
    }

    #[test]
    fn good_images_only_add_false_positives() {
        // Defective 2x1 image: region pixel 0.4, background 0.1. Good 2x1 image: 0.5, 0.05. Background = 3.
        // Points: 0.5 -> (1/3, 0) -> 0.4: (1/3, 1) -> 0.1: (2/3, 1) -> 0.05: (1, 1). Area to 1: 2/3.
        let mut acc = Aupro::new(1.0);
        acc.add(&[0.4, 0.1], &[true, false], 2, 1);
        assert_eq!(acc.finish(), Some(1.0));
        acc.add(&[0.5, 0.05], &[false, false], 2, 1);
        assert!(close(acc.finish().unwrap(), 2.0 / 3.0));
    }

    #[test]
    fn degenerate_inputs() {
        let mut acc = Aupro::default();
        assert_eq!(acc.finish(), None);
        acc.add(&[0.1, 0.2], &[false, false], 2, 1);
        assert_eq!(acc.finish(), None, "no region");
        let mut acc = Aupro::default();
        acc.add(&[0.1, 0.2], &[true, true], 2, 1);
        assert_eq!(acc.finish(), None, "no defect-free pixel");
        acc.add(&[0.1, 0.2, 0.3], &[false, false], 3, 1);
        acc.add(&[0.1, 0.2], &[false, false], 3, 1);
        acc.add(&[], &[], usize::MAX, 2);
        assert_eq!((acc.finish(), acc.skipped()), (None, 3));
        for limit in [0.0, -1.0, 1.5, f64::NAN] {
            let mut acc = Aupro::new(limit);
            acc.add(&[0.9, 0.1], &[true, false], 2, 1);
            assert_eq!(acc.finish(), None, "limit {limit}");
        }
        let mut acc = Aupro::new(1.0);
        acc.add(&[], &[], 0, 0);
        acc.add(&[0.9, 0.1], &[true, false], 2, 1);
        assert_eq!((acc.finish(), acc.skipped()), (Some(1.0), 0));
    }
}
