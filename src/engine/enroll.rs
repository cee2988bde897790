//! Teaching a recipe: features of good frames become the reference (a
//! greedy k-center coreset for `global`, every image's grid for `aligned`),
//! and the good frames themselves, scored out of fold, set the threshold.
//!
//! Calibration, by how many good images there are:
//! - two or more: every image is scored against a reference that holds
//!   nothing of its own: the images are cut into up to [`FOLDS`] runs of
//!   neighbours (in the order they came, so near-duplicate neighbours share
//!   a fold), and each run is scored against the others (`global`: a
//!   coreset selected from the other runs' shares, see [`super::shares`];
//!   `aligned`: the other images). The scores go through
//!   [`threshold::for_false_reject_rate`];
//! - one (a single golden image): score perturbed copies of it against it
//!   (shifted by two pixels each way, 8 % brighter and darker, and with
//!   sensor noise at the level measured in the golden image itself, so a
//!   clean binarised image gets none), through
//!   [`threshold::from_perturbations`].
//!
//! With the fast search, the calibration also chooses how many inverted lists
//! each patch probes (see [`Engine::choose_probes`]), and the reference keeps
//! the count.
//!
//! Aligned references also hold a pixel-level variation model of the golden
//! images ([`crate::scoring::variation`]). The same calibration frames are
//! scored on both maps; each map is divided by the highest value they reached
//! on it (the pixel map by at least 1, its own tolerance), the fused map is
//! the larger of the two, and the threshold is set on the fused scores.

use std::sync::Arc;

use crate::imaging::{FrameData, OwnedFrame};
use crate::reference::{PixelReference, Reference};
use crate::scoring::fast::{self, FastOptions};
use crate::scoring::map::AnomalyMap;
use crate::scoring::nearest::{Bank, Grid};
use crate::scoring::threshold;
use crate::scoring::variation::{self, Comparison, VariationModel};

use super::settings::{InputSize, MatchMode, RecipeSettings, SearchMode};
use super::shares::FoldShares;
use super::{Engine, EngineError, MatchView};

/// Most folds of out-of-fold calibration (fewer images: one per image).
pub const FOLDS: usize = 10;
/// Calibration frames the probe count is chosen on, at most, spread evenly
/// over the enrolled images.
const PROBE_FRAMES: usize = 32;
/// How far above its score with every list probed a probe frame's image
/// score may be with the chosen count, relative.
const PROBE_SCORE_TOLERANCE: f32 = 0.01;

/// One good image's features.
#[derive(Debug, Clone)]
pub struct Features {
    /// Planar features: channels x grid height x grid width.
    pub data: Vec<f32>,
    /// The feature grid.
    pub grid: Grid,
    /// The normalised model input (3 x height x width), kept for the first
    /// image only, for single-image calibration.
    pub input: Option<(Vec<f32>, u32, u32)>,
    /// The model input size, width x height.
    pub input_size: (u32, u32),
    /// Aligned: the input's gray levels (0..255), for the variation model.
    pub gray: Option<Vec<f32>>,
}

impl Features {
    /// Bytes an enrollment holds for this image.
    pub fn held_bytes(&self) -> u64 {
        let floats = self.data.len() + self.gray.as_ref().map_or(0, Vec::len);
        (floats * std::mem::size_of::<f32>()) as u64
    }
}

/// Good images collected for one recipe, before the reference is built.
#[derive(Debug, Clone, Default)]
pub struct Enrollment {
    images: Vec<Features>,
}

impl Enrollment {
    /// An empty enrollment.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one good image; only the first keeps its input tensor.
    pub fn add(&mut self, mut features: Features) {
        if !self.images.is_empty() {
            features.input = None;
        }
        self.images.push(features);
    }

    /// How many images were added.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Whether no image was added.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }
}

/// Why [`Engine::enroll`] built no reference.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError<E> {
    /// Good frame `index` (0-based) could not be had from its source.
    #[error("good frame {index}: {error}")]
    Source {
        /// Which frame.
        index: usize,
        /// The source's error.
        error: E,
    },
    /// Good frame `index` (0-based) was refused.
    #[error("good frame {index}: {source}")]
    Frame {
        /// Which frame.
        index: usize,
        /// Why.
        source: EngineError,
    },
    /// The reference could not be built from the frames.
    #[error(transparent)]
    Build(EngineError),
}

impl Engine {
    /// Builds a reference from good frames, taken one at a time from
    /// `frames` (so a caller reading files holds one file at a time): each is
    /// decoded, preprocessed and run through the model, then the reference is
    /// built and calibrated. The server's worker and the benchmark both
    /// enroll here.
    pub fn enroll<E>(
        &mut self,
        settings: &RecipeSettings,
        frames: impl IntoIterator<Item = Result<OwnedFrame, E>>,
    ) -> Result<Reference, EnrollError<E>> {
        self.validate(settings).map_err(EnrollError::Build)?;
        let mut enrollment = Enrollment::new();
        // A size the mode picks from the frame is the first frame's for all.
        let mut sized = settings.clone();
        let frames = frames.into_iter();
        // Exact for the server's and the benchmark's frame lists.
        let expected = frames.size_hint().1;
        let mut held = 0u64;
        for (index, frame) in frames.enumerate() {
            let frame = frame.map_err(|error| EnrollError::Source { index, error })?;
            let features = self
                .extract(&sized, frame.as_data())
                .map_err(|source| EnrollError::Frame { index, source })?;
            let bytes = features.held_bytes();
            held += bytes;
            let count = expected.unwrap_or(index + 1).max(index + 1);
            let projected = (bytes * count as u64).max(held);
            if projected > self.enrollment_budget {
                let (width, height) = features.input_size;
                return Err(EnrollError::Build(EngineError::InvalidSettings(format!(
                    "enrolling {count} frames at {width}x{height} would hold about {projected} bytes of features, \
                     more than the enrollment budget of {} bytes (--max-enrollment-bytes); send fewer frames or choose a smaller input size",
                    self.enrollment_budget
                ))));
            }
            if let InputSize::Native(_) = sized.input_rule() {
                sized = settings.with_input_size(features.input_size.0, features.input_size.1);
            }
            enrollment.add(features);
        }
        self.build_reference(settings, &enrollment)
            .map_err(EnrollError::Build)
    }

    /// Decodes, preprocesses and runs the model on one good frame.
    pub fn extract(
        &mut self,
        settings: &RecipeSettings,
        frame: FrameData<'_>,
    ) -> Result<Features, EngineError> {
        self.decode(frame)?;
        let (geometry, _) = self.preprocess(settings, settings.input_rule())?;
        let (width, height) = (geometry.input_width, geometry.input_height);
        let (grid, _) = self.infer(1, width, height)?;
        let gray = (settings.match_mode == MatchMode::Aligned).then(|| {
            let mut gray = Vec::new();
            self.gray_plane(0, width, height, &mut gray);
            gray
        });
        Ok(Features {
            data: self.features.clone(),
            grid,
            input: Some((self.input.clone(), width, height)),
            input_size: (width, height),
            gray,
        })
    }

    /// Builds the reference and calibrates its threshold.
    pub fn build_reference(
        &mut self,
        settings: &RecipeSettings,
        enrollment: &Enrollment,
    ) -> Result<Reference, EngineError> {
        self.validate(settings)?;
        let images = &enrollment.images;
        let Some(first) = images.first() else {
            return Err(EngineError::NoReferences);
        };
        let grid = first.grid;
        let (width, height) = first.input_size;
        let rule = match settings.input_rule() {
            InputSize::Native(_) => InputSize::Fixed(width, height),
            rule => rule,
        };
        let mask = settings.mask(rule, self.limits)?;
        let (mode, features, scores, pixels, probes) = match settings.match_mode {
            MatchMode::Aligned => {
                if let Some(other) = images.iter().find(|f| f.input_size != first.input_size) {
                    return Err(EngineError::ReferenceMismatch(format!(
                        "aligned references need one input size; got {}x{} and {}x{}",
                        width, height, other.input_size.0, other.input_size.1
                    )));
                }
                let planes: Vec<&[f32]> = images.iter().filter_map(|f| f.gray.as_deref()).collect();
                if planes.len() != images.len() {
                    return Err(EngineError::NoReferences);
                }
                let model = VariationModel::build(&planes, width as usize, height as usize);
                let features: Arc<[f32]> = images.iter().flat_map(|f| f.data.iter().copied()).collect();
                let pairs = if images.len() == 1 {
                    let view = MatchView::Aligned {
                        references: &features,
                        neighborhood: settings.neighborhood as usize,
                    };
                    let comparison = Comparison::new(model.clone());
                    self.perturbation_scores(first, view, mask.as_deref(), Some(&comparison))?
                } else {
                    self.out_of_fold_aligned(settings, images, &planes, mask.as_deref())
                };
                let (scores, feature_scale, pixel_scale) = fused_scores(&pairs);
                let pixels = PixelReference {
                    ideal: model.ideal,
                    tolerance: model.tolerance,
                    feature_scale,
                    pixel_scale,
                };
                (MatchMode::Aligned, features, scores, Some(pixels), 0)
            }
            MatchMode::Global => {
                let target = settings.reference_size as usize;
                let shares = FoldShares::select(images, target);
                let bank_rows: Arc<[f32]> = shares.coreset(None, target).rows.into();
                let (scores, probed_share) = if images.len() == 1 {
                    // No frame stands apart from one image's bank: every list.
                    let bank = Bank::with_search(
                        bank_rows.clone(),
                        grid.channels,
                        settings.search,
                        Some(usize::MAX),
                    );
                    let view = MatchView::Global(&bank);
                    let pairs = self.perturbation_scores(first, view, mask.as_deref(), None)?;
                    let scores = pairs.into_iter().map(|(feature, _)| feature).collect();
                    (scores, 1.0)
                } else {
                    self.out_of_fold_global(images, &shares, target, settings.search, mask.as_deref())
                };
                let probes = match settings.search {
                    SearchMode::Fast => {
                        let lists = fast::list_count(bank_rows.len() / grid.channels, FastOptions::default());
                        ((probed_share * lists as f64).ceil() as usize).clamp(1, lists) as u32
                    }
                    SearchMode::Exact => 0,
                };
                (MatchMode::Global, bank_rows, scores, None, probes)
            }
        };
        let calibrated = threshold::calibrate(&scores, images.len(), settings.target_false_reject_rate)
            .ok_or(EngineError::NoReferences)?
            .threshold;
        Ok(Reference {
            mode,
            channels: grid.channels as u32,
            grid_width: grid.width as u32,
            grid_height: grid.height as u32,
            features,
            image_count: images.len() as u32,
            threshold: calibrated,
            calibration_scores: scores,
            model_id: self.model_id(),
            input_width: width,
            input_height: height,
            pixels,
            probes,
        })
    }

    /// Image score (map maximum) of `features` against `view`.
    fn image_score(&mut self, features: &Features, view: MatchView<'_>, mask: Option<&[f32]>) -> f32 {
        let mut map = AnomalyMap::default();
        self.score(&features.data, features.grid, view, mask, &mut map);
        map.max()
    }

    /// The highest value of the feature map and of the pixel map (0
    /// without a comparison) of one calibration frame, whose gray levels
    /// are `gray`.
    fn component_scores(
        &mut self,
        features: &Features,
        view: MatchView<'_>,
        mask: Option<&[f32]>,
        pixels: Option<(&Comparison, &[f32])>,
    ) -> (f32, f32) {
        let feature = self.image_score(features, view, mask);
        let Some((comparison, gray)) = pixels else {
            return (feature, 0.0);
        };
        comparison.compare(gray, &mut self.pixel_map);
        let pixel = match mask.filter(|m| m.len() == self.pixel_map.len()) {
            Some(mask) => self
                .pixel_map
                .iter()
                .zip(mask)
                .map(|(&p, &m)| p * m)
                .fold(0.0, f32::max),
            None => self.pixel_map.iter().copied().fold(0.0, f32::max),
        };
        (feature, pixel)
    }

    /// Aligned: each fold's images against all the other images, on both
    /// maps.
    fn out_of_fold_aligned(
        &mut self,
        settings: &RecipeSettings,
        images: &[Features],
        planes: &[&[f32]],
        mask: Option<&[f32]>,
    ) -> Vec<(f32, f32)> {
        let (width, height) = images[0].input_size;
        let mut scores = Vec::with_capacity(images.len());
        for fold in folds(images.len()) {
            let others: Vec<f32> = images
                .iter()
                .enumerate()
                .filter(|(i, _)| !fold.contains(i))
                .flat_map(|(_, f)| f.data.iter().copied())
                .collect();
            let other_planes: Vec<&[f32]> = planes
                .iter()
                .enumerate()
                .filter(|(i, _)| !fold.contains(i))
                .map(|(_, &plane)| plane)
                .collect();
            let comparison = Comparison::new(VariationModel::build(
                &other_planes,
                width as usize,
                height as usize,
            ));
            let view = MatchView::Aligned {
                references: &others,
                neighborhood: settings.neighborhood as usize,
            };
            for (image, plane) in images[fold.clone()].iter().zip(&planes[fold]) {
                scores.push(self.component_scores(image, view, mask, Some((&comparison, plane))));
            }
        }
        scores
    }

    /// Global: each fold's images against a coreset selected from the
    /// other folds' shares (see [`FoldShares`]), searched with `search`;
    /// and the share of the inverted lists the fast search probes (1 for
    /// the exact search).
    fn out_of_fold_global(
        &mut self,
        images: &[Features],
        shares: &FoldShares,
        target: usize,
        search: SearchMode,
        mask: Option<&[f32]>,
    ) -> (Vec<f32>, f64) {
        let channels = images[0].grid.channels;
        let mut banks: Vec<Bank> = (0..shares.folds.len())
            .map(|index| {
                let rows = shares.coreset(Some(index), target).rows;
                Bank::with_search(rows, channels, search, Some(usize::MAX))
            })
            .collect();
        let share = match search {
            SearchMode::Fast => self.choose_probes(images, &shares.folds, &mut banks, mask),
            SearchMode::Exact => 1.0,
        };
        let mut scores = Vec::with_capacity(images.len());
        for (bank, fold) in banks.iter().zip(&shares.folds) {
            for image in &images[fold.clone()] {
                scores.push(self.image_score(image, MatchView::Global(bank), mask));
            }
        }
        (scores, share)
    }

    /// The fast search's probe count, as a share of the lists, chosen on
    /// real out-of-fold frames: up to [`PROBE_FRAMES`] calibration frames,
    /// spread evenly, each against its fold's bank. Each frame's image
    /// score with every list probed is the mark; the count is the smallest
    /// (from a sequence rising by half: 1, 2, 3, 4, 6, 9, 13, ... lists) that
    /// keeps every one of them within [`PROBE_SCORE_TOLERANCE`] of its mark.
    /// The image score is the map's maximum, so one patch whose nearest row
    /// lies in a list not probed can raise it: this is what the threshold
    /// sees, where a share of patches found (the rule the search falls back
    /// on without a recorded count) is not. Leaves every bank probing that
    /// many lists.
    fn choose_probes(
        &mut self,
        images: &[Features],
        folds: &[std::ops::Range<usize>],
        banks: &mut [Bank],
        mask: Option<&[f32]>,
    ) -> f64 {
        let frames = images.len().min(PROBE_FRAMES);
        let picks: Vec<(usize, usize)> = (0..frames)
            .map(|k| {
                let image = k * images.len() / frames;
                let fold = folds
                    .iter()
                    .position(|f| f.contains(&image))
                    .expect("folds cover every image");
                (image, fold)
            })
            .collect();
        let marks: Vec<f32> = picks
            .iter()
            .map(|&(image, fold)| self.image_score(&images[image], MatchView::Global(&banks[fold]), mask))
            .collect();
        let lists = |bank: &Bank| bank.fast_lists().map_or(1, |(lists, _)| lists);
        let most = banks.iter().map(lists).max().unwrap_or(1);
        let mut share = 1.0;
        for probes in probe_counts(most) {
            let candidate = probes as f64 / most as f64;
            for bank in banks.iter_mut() {
                let count = lists(bank);
                bank.set_probes((candidate * count as f64).ceil() as usize);
            }
            let close = picks.iter().zip(&marks).all(|(&(image, fold), &mark)| {
                let score = self.image_score(&images[image], MatchView::Global(&banks[fold]), mask);
                score <= mark * (1.0 + PROBE_SCORE_TOLERANCE)
            });
            if close {
                share = candidate;
                break;
            }
        }
        tracing::debug!(share, frames, "fast search probe share chosen");
        share
    }

    /// One golden image: perturbed copies against the reference built from
    /// it, on the feature map and (with a comparison) the pixel map.
    fn perturbation_scores(
        &mut self,
        golden: &Features,
        view: MatchView<'_>,
        mask: Option<&[f32]>,
        comparison: Option<&Comparison>,
    ) -> Result<Vec<(f32, f32)>, EngineError> {
        let Some((input, width, height)) = &golden.input else {
            return Err(EngineError::NoReferences);
        };
        let normalize = self.normalize;
        let variants = perturbations(
            input,
            *width as usize,
            *height as usize,
            &normalize.mean,
            &normalize.std,
        );
        let mut scores = Vec::with_capacity(variants.len());
        let mut gray = Vec::new();
        for variant in variants {
            self.input = variant;
            let (grid, _) = self.infer(1, *width, *height)?;
            let features = Features {
                data: self.features.clone(),
                grid,
                input: None,
                input_size: (*width, *height),
                gray: None,
            };
            let pixels = comparison.map(|comparison| {
                self.gray_plane(0, *width, *height, &mut gray);
                (comparison, gray.as_slice())
            });
            scores.push(self.component_scores(&features, view, mask, pixels));
        }
        Ok(scores)
    }
}

/// The fused calibration scores of (feature, pixel) pairs and the two
/// scales: each map's highest calibration value (the pixel map's at least
/// 1, the tolerance itself), so that 1 on the fused map is as far as good
/// frames went on either.
fn fused_scores(pairs: &[(f32, f32)]) -> (Vec<f32>, f32, f32) {
    let feature_scale = pairs
        .iter()
        .map(|&(f, _)| f)
        .fold(0.0, f32::max)
        .max(f32::MIN_POSITIVE.sqrt());
    let pixel_scale = pairs.iter().map(|&(_, p)| p).fold(1.0, f32::max);
    let scores = pairs
        .iter()
        .map(|&(f, p)| variation::fused_score(f / feature_scale, p / pixel_scale))
        .collect();
    (scores, feature_scale, pixel_scale)
}

/// Probe counts tried, rising by about half each step from 1, up to and
/// including `lists`.
fn probe_counts(lists: usize) -> Vec<usize> {
    let mut counts = vec![1];
    while let Some(&last) = counts.last().filter(|&&last| last < lists) {
        let step = (last / 2).max(1);
        counts.push((last + step).min(lists));
    }
    counts
}

/// The folds of out-of-fold calibration: up to [`FOLDS`] runs of
/// neighbouring images, as even as they divide.
pub(super) fn folds(count: usize) -> Vec<std::ops::Range<usize>> {
    let folds = count.min(FOLDS);
    (0..folds)
        .map(|k| k * count / folds..(k + 1) * count / folds)
        .collect()
}

/// Noise level of a normalised plane, from the median absolute deviation of
/// horizontal neighbour differences (robust to edges): sigma of one pixel.
fn noise_sigma(plane: &[f32], width: usize) -> f32 {
    let mut differences: Vec<f32> = plane
        .chunks_exact(width)
        .flat_map(|row| row.windows(2).map(|w| w[1] - w[0]))
        .collect();
    if differences.is_empty() {
        return 0.0;
    }
    let middle = differences.len() / 2;
    let median = *differences.select_nth_unstable_by(middle, f32::total_cmp).1;
    differences.iter_mut().for_each(|d| *d = (*d - median).abs());
    let mad = *differences.select_nth_unstable_by(middle, f32::total_cmp).1;
    // 1.4826 MAD estimates the standard deviation of a difference of two
    // pixels, which is sqrt(2) times that of one.
    1.4826 * mad / std::f32::consts::SQRT_2
}

/// Perturbed copies of a normalised input tensor (3 planes of
/// `width` x `height`): shifted by 2 pixels each way, 8 % darker and
/// brighter, with Gaussian noise at the image's own noise level, and all
/// combined.
fn perturbations(
    input: &[f32],
    width: usize,
    height: usize,
    mean: &[f32; 3],
    std: &[f32; 3],
) -> Vec<Vec<f32>> {
    let shift = |dx: isize, dy: isize| {
        let mut out = vec![0.0; input.len()];
        for (plane_in, plane_out) in input
            .chunks_exact(width * height)
            .zip(out.chunks_exact_mut(width * height))
        {
            for y in 0..height {
                let sy = (y as isize - dy).clamp(0, height as isize - 1) as usize;
                for x in 0..width {
                    let sx = (x as isize - dx).clamp(0, width as isize - 1) as usize;
                    plane_out[y * width + x] = plane_in[sy * width + sx];
                }
            }
        }
        out
    };
    // Brightness a on pixels x: (a x - m) / s = a (x - m) / s + (a - 1) m / s.
    let brightness = |source: &[f32], a: f32| {
        let mut out = source.to_vec();
        for (c, plane) in out.chunks_exact_mut(width * height).enumerate() {
            let offset = (a - 1.0) * mean[c] / std[c];
            plane.iter_mut().for_each(|v| *v = a * *v + offset);
        }
        out
    };
    let sigma = noise_sigma(&input[..width * height], width);
    let noise = |source: &[f32], seed: u64| {
        let mut state = seed | 1;
        let mut gaussian = || {
            // Sum of four uniforms: close enough to Gaussian for noise.
            let mut sum = 0.0;
            for _ in 0..4 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                sum += (state >> 40) as f32 / (1u64 << 24) as f32;
            }
            (sum - 2.0) * (12.0_f32 / 4.0).sqrt()
        };
        let mut out = source.to_vec();
        for plane in out.chunks_exact_mut(width * height) {
            plane.iter_mut().for_each(|v| *v += sigma * gaussian());
        }
        out
    };
    vec![
        shift(2, 0),
        shift(-2, 0),
        shift(0, 2),
        shift(0, -2),
        brightness(input, 0.92),
        brightness(input, 1.08),
        noise(input, 1),
        noise(input, 2),
        noise(&brightness(&shift(1, 1), 1.04), 3),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_counts_rise_by_half_to_every_list() {
        assert_eq!(probe_counts(1), [1]);
        assert_eq!(probe_counts(5), [1, 2, 3, 4, 5]);
        assert_eq!(probe_counts(64), [1, 2, 3, 4, 6, 9, 13, 19, 28, 42, 63, 64]);
    }

    #[test]
    fn folds_cover_every_image_once_in_runs_of_neighbours() {
        assert!(folds(0).is_empty());
        assert_eq!(folds(2), [0..1, 1..2]);
        let many = folds(714);
        assert_eq!(many.len(), FOLDS);
        assert_eq!(many.first().unwrap().start, 0);
        assert_eq!(many.last().unwrap().end, 714);
        assert!(many.windows(2).all(|w| w[0].end == w[1].start));
        assert!(many.iter().all(|f| (71..=72).contains(&f.len())));
    }

    #[test]
    fn perturbations_keep_shape_and_change_the_image() {
        let input: Vec<f32> = (0..3 * 16 * 16).map(|i| (i % 37) as f32 / 37.0).collect();
        let variants = perturbations(&input, 16, 16, &[0.5; 3], &[0.5; 3]);
        assert_eq!(variants.len(), 9);
        for variant in &variants {
            assert_eq!(variant.len(), input.len());
        }
        assert_ne!(variants[0], input);
        assert_ne!(variants[4], input);
    }

    #[test]
    fn noise_is_measured_from_the_image_and_ignores_edges() {
        // A clean two-level image has no noise, however many edges it has.
        let binary: Vec<f32> = (0..64 * 64)
            .map(|i| if (i % 64) / 8 % 2 == 0 { -1.0 } else { 1.0 })
            .collect();
        assert_eq!(noise_sigma(&binary, 64), 0.0);
        // Uniform noise of width 1 has sigma 1 / sqrt(12) = 0.289.
        let mut state = 7_u64;
        let noisy: Vec<f32> = (0..256 * 256)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32
            })
            .collect();
        let sigma = noise_sigma(&noisy, 256);
        assert!((sigma - 0.289).abs() < 0.04, "{sigma}");
    }
}
