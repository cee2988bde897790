//! The inspection engine: teaches a recipe from good frames and judges new
//! frames against it. Synchronous and single-threaded by contract (ONNX
//! Runtime and the matrix products use their own threads); the service
//! reaches it through a worker thread that owns one [`Engine`].

mod enroll;
mod inspect;
pub mod settings;
mod shares;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use enroll::{EnrollError, Enrollment, Features};
pub use inspect::{
    HeatmapFormat, HeatmapImage, InspectOptions, Inspection, Marks, Region, Timings, Verdict, overlay_png,
};
pub use settings::{InputSize, MatchMode, RecipeSettings, SearchMode, Setting, SettingsUpdate};

use crate::imaging::{self, DecodeLimits, FrameData, Geometry, Image, ImagingError, Normalize, Preprocessor};
use crate::model::{FeatureExtractor, ModelError};
use crate::reference::{self, Reference};
use crate::scoring::map::{AnomalyMap, MapBuilder, sigma_for};
use crate::scoring::nearest::{self, Bank, Grid, SearchScratch};
use crate::scoring::threshold::{self, Calibrated};
use crate::scoring::variation::{self, Comparison, VariationModel};

/// Errors of the engine layer.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The frame cannot be read (bad buffer, bad file, too large).
    #[error(transparent)]
    Frame(#[from] ImagingError),
    /// The recipe settings cannot work.
    #[error("invalid settings: {0}")]
    InvalidSettings(String),
    /// A reference was asked for without good frames.
    #[error("no good frames to build the reference from")]
    NoReferences,
    /// The reference was built by another model or with other settings.
    #[error("the reference does not fit: {0}")]
    ReferenceMismatch(String),
    /// The feature model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A reference file could not be read or written.
    #[error(transparent)]
    Reference(#[from] reference::ReferenceError),
    /// Encoding a heatmap failed.
    #[error("heatmap encoding failed: {0}")]
    Heatmap(String),
}

/// A recipe ready to judge frames: settings, reference, the bank or
/// reference grids, the mask at map resolution, and the threshold in force.
#[derive(Debug, Clone)]
pub struct Judge {
    settings: RecipeSettings,
    /// The input size rule with the aligned mode's native size resolved
    /// to the reference's.
    input: InputSize,
    reference: Reference,
    matcher: Matcher,
    /// Aligned: the pixel-level comparison with the golden images.
    pixels: Option<Arc<PixelMatch>>,
    mask: Option<Vec<f32>>,
    calibrated: Option<Calibrated>,
    threshold: f32,
}

/// The pixel-level comparison of an aligned recipe and the scales that
/// fuse its map with the feature map.
#[derive(Debug)]
struct PixelMatch {
    comparison: Comparison,
    feature_scale: f32,
    pixel_scale: f32,
}

#[derive(Debug, Clone)]
enum Matcher {
    Global(Bank),
    Aligned,
}

/// What a frame's patches are searched in: borrowed, so calibration can
/// score against references that no [`Judge`] holds.
#[derive(Debug, Clone, Copy)]
enum MatchView<'a> {
    Global(&'a Bank),
    Aligned {
        /// Planar reference images, one after another.
        references: &'a [f32],
        /// Search radius in cells.
        neighborhood: usize,
    },
}

impl Judge {
    /// Prepares `reference` for judging with `settings`: builds the bank,
    /// decodes the mask, and fixes the threshold (the settings' fixed one,
    /// else the calibrated one over the sensitivity).
    pub fn new(
        settings: RecipeSettings,
        reference: Reference,
        limits: DecodeLimits,
    ) -> Result<Self, EngineError> {
        let channels = reference.channels as usize;
        let matcher = match settings.match_mode {
            MatchMode::Global => Matcher::Global(Bank::with_search(
                reference.features.clone(),
                channels,
                settings.search,
                (reference.probes > 0).then_some(reference.probes as usize),
            )),
            MatchMode::Aligned => Matcher::Aligned,
        };
        if settings.match_mode != reference.mode {
            return Err(EngineError::ReferenceMismatch(format!(
                "the reference was built for the {} mode, the settings ask for {}",
                reference.mode, settings.match_mode
            )));
        }
        let input = match settings.input_rule() {
            InputSize::Native(_) if reference.input_width == 0 => {
                return Err(EngineError::ReferenceMismatch(
                    "the reference does not record its input size; set input_width and input_height, or add the references again"
                        .into(),
                ));
            }
            InputSize::Native(_) => InputSize::Fixed(reference.input_width, reference.input_height),
            rule => rule,
        };
        let mask = settings.mask(input, limits)?;
        let pixels = reference.pixels.as_ref().map(|pixels| {
            Arc::new(PixelMatch {
                comparison: Comparison::new(VariationModel {
                    width: reference.input_width as usize,
                    height: reference.input_height as usize,
                    ideal: pixels.ideal.clone(),
                    tolerance: pixels.tolerance.clone(),
                }),
                feature_scale: pixels.feature_scale,
                pixel_scale: pixels.pixel_scale,
            })
        });
        // From the stored calibration scores, so that a new target needs no
        // new enrollment; a reference without scores keeps its threshold.
        let calibrated = threshold::calibrate(
            &reference.calibration_scores,
            reference.image_count as usize,
            settings.target_false_reject_rate,
        );
        let base = calibrated.map_or(reference.threshold, |c| c.threshold);
        let threshold = threshold::in_force(base, settings.threshold, settings.sensitivity);
        Ok(Self {
            settings,
            input,
            reference,
            matcher,
            pixels,
            mask,
            calibrated,
            threshold,
        })
    }

    /// The settings.
    pub fn settings(&self) -> &RecipeSettings {
        &self.settings
    }

    /// The reference.
    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    /// Global: the bank searched, as built for the recipe's search.
    pub fn bank(&self) -> Option<&Bank> {
        match &self.matcher {
            Matcher::Global(bank) => Some(bank),
            Matcher::Aligned => None,
        }
    }

    /// The threshold in force.
    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// The smallest region reported, in frame pixels: the setting, or where
    /// it is 0 in the aligned mode, one feature cell. A pixel-level
    /// difference smaller than a cell with nothing of the feature map
    /// around it is not reported as a defect of its own (the map cannot
    /// place anything finer than a cell); set 1 to report every region.
    pub fn min_region_area(&self, geometry: &Geometry) -> u32 {
        let reference = &self.reference;
        match (self.settings.min_region_area, self.settings.match_mode) {
            (0, MatchMode::Aligned) if reference.grid_width > 0 => {
                let stride = f64::from(reference.input_width / reference.grid_width);
                (stride * stride * geometry.scale_x() * geometry.scale_y()).round() as u32
            }
            (area, _) => area,
        }
    }

    /// What the calibrated threshold rests on (the frames scored, the rule,
    /// the expected false-reject rate); `None` for a reference without
    /// calibration scores. With a fixed threshold in the settings it is
    /// still reported, and not in force.
    pub fn calibration(&self) -> Option<&Calibrated> {
        self.calibrated.as_ref()
    }

    fn view(&self) -> MatchView<'_> {
        match &self.matcher {
            Matcher::Global(bank) => MatchView::Global(bank),
            Matcher::Aligned => MatchView::Aligned {
                references: &self.reference.features,
                neighborhood: self.settings.neighborhood as usize,
            },
        }
    }
}

/// The engine: one feature model and every buffer a request needs, reused
/// from call to call.
#[derive(Debug)]
pub struct Engine {
    model: Box<dyn FeatureExtractor>,
    normalize: Normalize,
    limits: DecodeLimits,
    preprocessor: Preprocessor,
    image: Image,
    input: Vec<f32>,
    features: Vec<f32>,
    scratch: SearchScratch,
    patch_scores: Vec<f32>,
    maps: MapBuilder,
    /// Gray levels of one input image, for the pixel comparison.
    gray: Vec<f32>,
    /// The pixel comparison's map.
    pixel_map: Vec<f32>,
    /// Most bytes the features of one enrollment may hold.
    enrollment_budget: u64,
}

impl Engine {
    /// Wraps a loaded model; frames larger than `limits` are refused.
    pub fn new(model: Box<dyn FeatureExtractor>, limits: DecodeLimits) -> Self {
        let normalization = &model.manifest().normalization;
        let normalize = Normalize {
            mean: normalization.mean,
            std: normalization.std,
        };
        let threads = model.threads();
        Self {
            model,
            normalize,
            limits,
            preprocessor: Preprocessor::new(),
            image: Image::default(),
            input: Vec::new(),
            features: Vec::new(),
            scratch: SearchScratch::new(threads),
            patch_scores: Vec::new(),
            maps: MapBuilder::default(),
            gray: Vec::new(),
            pixel_map: Vec::new(),
            enrollment_budget: u64::MAX,
        }
    }

    /// Caps the bytes one enrollment's features may hold (unlimited by
    /// default): an enrollment that would pass it is refused after its
    /// first frame, when the frame count is known.
    pub fn set_enrollment_budget(&mut self, bytes: u64) {
        self.enrollment_budget = bytes;
    }

    /// The feature model.
    pub fn model(&self) -> &dyn FeatureExtractor {
        self.model.as_ref()
    }

    /// The decode limits.
    pub fn limits(&self) -> DecodeLimits {
        self.limits
    }

    /// Identity of the model that references are tied to.
    pub fn model_id(&self) -> String {
        self.model.manifest().sha256.clone()
    }

    fn stride(&self) -> usize {
        self.model.manifest().output.stride as usize
    }

    /// Checks settings against the model.
    pub fn validate(&self, settings: &RecipeSettings) -> Result<(), EngineError> {
        settings.validate(self.model.manifest().input.size_multiple)
    }

    /// The model input size for a frame of `width` x `height` (after ROI)
    /// under `rule`.
    fn input_size(&self, rule: InputSize, width: u32, height: u32) -> (u32, u32) {
        let multiple = self.model.manifest().input.size_multiple.max(1);
        match rule {
            InputSize::Fixed(width, height) => (width, height),
            InputSize::Aspect(pixels) => imaging::input_size_for_aspect(width, height, pixels),
            InputSize::Native(budget) if u64::from(width) * u64::from(height) <= u64::from(budget) => {
                let round = |side: u32| {
                    let rounded = (side + multiple / 2) / multiple * multiple;
                    rounded.clamp(multiple, settings::MAX_INPUT_SIZE / multiple * multiple)
                };
                (round(width), round(height))
            }
            InputSize::Native(budget) => imaging::input_size_for_aspect(width, height, budget),
        }
    }

    /// Decodes `frame` into the engine's image buffer.
    fn decode(&mut self, frame: FrameData<'_>) -> Result<Duration, EngineError> {
        let started = Instant::now();
        imaging::decode(frame, self.limits, &mut self.image)?;
        Ok(started.elapsed())
    }

    /// Crops, resizes and normalises the decoded image into the input
    /// tensor, sized by `rule`.
    fn preprocess(
        &mut self,
        settings: &RecipeSettings,
        rule: InputSize,
    ) -> Result<(Geometry, Duration), EngineError> {
        let started = Instant::now();
        let (roi_width, roi_height) = match settings.roi {
            Some(roi) => (roi.width, roi.height),
            None => (self.image.width, self.image.height),
        };
        let (width, height) = self.input_size(rule, roi_width, roi_height);
        self.input.resize(3 * width as usize * height as usize, 0.0);
        let geometry = self.preprocessor.run(
            &self.image,
            settings.roi,
            width,
            height,
            &self.normalize,
            &mut self.input,
        )?;
        Ok((geometry, started.elapsed()))
    }

    /// Runs the model on the first `count` images of the input tensor;
    /// features land in `self.features`. Returns the grid and the time.
    fn infer(&mut self, count: usize, width: u32, height: u32) -> Result<(Grid, Duration), ModelError> {
        let started = Instant::now();
        let plane = 3 * width as usize * height as usize;
        let input = self.input.get(..count * plane).unwrap_or(&self.input);
        let shape = self
            .model
            .run(input, count, height as usize, width as usize, &mut self.features)?;
        let grid = Grid {
            channels: shape.channels,
            width: shape.width,
            height: shape.height,
        };
        Ok((grid, started.elapsed()))
    }

    /// Scores `features` (one image on `grid`) against `view` and builds
    /// the anomaly map at the input size (grid x stride) into `map`.
    fn score(
        &mut self,
        features: &[f32],
        grid: Grid,
        view: MatchView<'_>,
        mask: Option<&[f32]>,
        map: &mut AnomalyMap,
    ) {
        self.search(features, 1, grid, view);
        self.build_map(0, grid, mask, map);
    }

    /// Writes the nearest-reference distance of every patch of `count`
    /// images (NCHW `features` on `grid`) into `self.patch_scores`, image
    /// after image. Global search takes all images in one pass over the bank.
    fn search(&mut self, features: &[f32], count: usize, grid: Grid, view: MatchView<'_>) {
        let cells = grid.width * grid.height;
        self.patch_scores.resize(count * cells, 0.0);
        match view {
            MatchView::Global(bank) => nearest::nearest_global_batch(
                features,
                count,
                cells,
                bank,
                &mut self.scratch,
                &mut self.patch_scores,
            ),
            MatchView::Aligned {
                references,
                neighborhood,
            } => {
                for (image, out) in features
                    .chunks_exact(grid.len())
                    .zip(self.patch_scores.chunks_exact_mut(cells))
                {
                    nearest::nearest_aligned(image, references, grid, neighborhood, &mut self.scratch, out);
                }
            }
        }
    }

    /// Builds image `index`'s anomaly map at the input size (grid x stride)
    /// from its patch scores in `self.patch_scores`.
    fn build_map(&mut self, index: usize, grid: Grid, mask: Option<&[f32]>, map: &mut AnomalyMap) {
        let cells = grid.width * grid.height;
        let stride = self.stride();
        let (width, height) = (grid.width * stride, grid.height * stride);
        let mask = mask.filter(|m| m.len() == width * height);
        self.maps.build(
            &self.patch_scores[index * cells..][..cells],
            grid.width,
            grid.height,
            width,
            height,
            sigma_for(width, height),
            mask,
            map,
        );
    }

    /// Gray levels (0..255) of image `index` of the input tensor, each a
    /// `width` x `height` image: its channels un-normalised and averaged.
    fn gray_plane(&self, index: usize, width: u32, height: u32, out: &mut Vec<f32>) {
        let pixels = width as usize * height as usize;
        let image = &self.input[index * 3 * pixels..][..3 * pixels];
        out.clear();
        out.resize(pixels, 0.0);
        for (c, plane) in image.chunks_exact(pixels).enumerate() {
            let (scale, bias) = (
                255.0 / 3.0 * self.normalize.std[c],
                255.0 / 3.0 * self.normalize.mean[c],
            );
            out.iter_mut()
                .zip(plane)
                .for_each(|(g, &v)| *g += v * scale + bias);
        }
    }

    /// Compares input image `index` with the golden images pixel by pixel
    /// and fuses the result into its feature map `map` (see
    /// [`crate::scoring::variation::fuse`]).
    fn fuse_pixels(&mut self, pixels: &PixelMatch, index: usize, mask: Option<&[f32]>, map: &mut AnomalyMap) {
        let mut gray = std::mem::take(&mut self.gray);
        self.gray_plane(index, map.width as u32, map.height as u32, &mut gray);
        pixels.comparison.compare(&gray, &mut self.pixel_map);
        let mask = mask.filter(|m| m.len() == map.data.len());
        let radius = variation::FEATURE_REACH_CELLS * self.stride();
        variation::fuse(
            &mut map.data,
            &self.pixel_map,
            (map.width, map.height),
            (pixels.feature_scale, pixels.pixel_scale),
            mask,
            radius,
            &mut gray,
        );
        self.gray = gray;
    }
}
