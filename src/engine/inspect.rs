//! Judging one frame: decode, preprocess, features, search, anomaly map,
//! verdict, regions in frame pixels, and the heatmap if asked for.

use std::time::{Duration, Instant};

use fast_image_resize::images::{Image as ResizeImage, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use crate::imaging::{Channels, FrameData, Geometry, Image, Roi};
use crate::scoring::heatmap;
use crate::scoring::map::{AnomalyMap, resize_f32};
use crate::scoring::regions::find_regions;

use super::{Engine, EngineError, Judge};

/// How strongly the heatmap covers the frame in overlays.
const OVERLAY_ALPHA: f32 = 0.45;

/// Pass or fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Score at or below the threshold.
    Pass,
    /// Score above the threshold.
    Fail,
}

/// A defect region in frame pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Region {
    /// Bounding box left edge.
    pub x: u32,
    /// Bounding box top edge.
    pub y: u32,
    /// Bounding box width.
    pub width: u32,
    /// Bounding box height.
    pub height: u32,
    /// Area in frame pixels.
    pub area: u32,
    /// Highest score inside.
    pub max_score: f32,
    /// Mean score inside.
    pub mean_score: f32,
}

/// Which heatmap to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeatmapFormat {
    /// One byte a pixel; score = byte x scale.
    RawU8,
    /// Turbo-coloured PNG.
    Png,
    /// Turbo-coloured PNG blended over the frame.
    OverlayPng,
}

/// Per-request options.
#[derive(Debug, Clone, Copy, Default)]
pub struct InspectOptions {
    /// The heatmap to render, with the longest side at most `.1` pixels
    /// (0: the ROI's size).
    pub heatmap: Option<(HeatmapFormat, u32)>,
}

/// A rendered heatmap over the ROI.
#[derive(Debug, Clone, PartialEq)]
pub struct HeatmapImage {
    /// Pixels across.
    pub width: u32,
    /// Pixels down.
    pub height: u32,
    /// Raw bytes or a PNG file.
    pub data: Vec<u8>,
    /// `application/octet-stream` or `image/png`.
    pub media_type: &'static str,
    /// Score per byte value.
    pub scale: f32,
}

/// Where one frame's time went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Decoding or converting the frame.
    pub decode: Duration,
    /// Crop, resize, normalise.
    pub preprocess: Duration,
    /// The feature model.
    pub inference: Duration,
    /// Search, map, regions, heatmap.
    pub postprocess: Duration,
}

impl Timings {
    /// Everything but the model: the part Loupe's own code spends.
    pub fn outside_model(&self) -> Duration {
        self.decode + self.preprocess + self.postprocess
    }

    /// The sum of all parts.
    pub fn total(&self) -> Duration {
        self.outside_model() + self.inference
    }
}

/// The judgement of one frame.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// Pass or fail.
    pub verdict: Verdict,
    /// Highest anomaly-map value (within the mask).
    pub score: f32,
    /// Threshold in force.
    pub threshold: f32,
    /// score / threshold.
    pub normalized_score: f32,
    /// Regions above the threshold, at least the recipe's minimum area,
    /// highest score first, in frame pixels.
    pub regions: Vec<Region>,
    /// The heatmap, when asked for.
    pub heatmap: Option<HeatmapImage>,
    /// The anomaly map at the model input size, over the ROI.
    pub map: AnomalyMap,
    /// How the map lies on the frame.
    pub geometry: Geometry,
    /// Where the time went.
    pub timings: Timings,
}

impl Engine {
    /// Judges `frame` against `judge`.
    pub fn inspect(
        &mut self,
        judge: &Judge,
        frame: FrameData<'_>,
        options: &InspectOptions,
    ) -> Result<Inspection, EngineError> {
        let decode = self.decode(frame)?;
        let mut inspection = self.inspect_decoded(judge, options)?;
        inspection.timings.decode = decode;
        Ok(inspection)
    }

    /// Judges an already decoded frame (decoded elsewhere, on another
    /// thread). The buffer is borrowed for the call and handed back.
    pub fn inspect_image(
        &mut self,
        judge: &Judge,
        image: &mut Image,
        options: &InspectOptions,
    ) -> Result<Inspection, EngineError> {
        std::mem::swap(&mut self.image, image);
        let result = self.inspect_decoded(judge, options);
        std::mem::swap(&mut self.image, image);
        result
    }

    fn inspect_decoded(
        &mut self,
        judge: &Judge,
        options: &InspectOptions,
    ) -> Result<Inspection, EngineError> {
        let (geometry, preprocess) = self.preprocess(judge.settings())?;
        let (grid, inference) = self.infer(geometry.input_width, geometry.input_height)?;
        if judge.settings().match_mode == super::MatchMode::Aligned
            && (grid.width, grid.height)
                != (
                    judge.reference().grid_width as usize,
                    judge.reference().grid_height as usize,
                )
        {
            return Err(EngineError::ReferenceMismatch(format!(
                "the frame's feature grid is {}x{}, the reference's {}x{}",
                grid.width,
                grid.height,
                judge.reference().grid_width,
                judge.reference().grid_height
            )));
        }

        let started = Instant::now();
        let mut map = AnomalyMap::default();
        let features = std::mem::take(&mut self.features);
        self.score(&features, grid, judge.view(), judge.mask.as_deref(), &mut map);
        self.features = features;
        let score = map.max();
        let threshold = judge.threshold();
        let verdict = if score > threshold {
            Verdict::Fail
        } else {
            Verdict::Pass
        };
        let regions = frame_regions(&map, threshold, &geometry, judge.settings().min_region_area);
        let heatmap = match options.heatmap {
            Some((format, max_size)) => Some(self.render(&map, &geometry, threshold, format, max_size)?),
            None => None,
        };
        let postprocess = started.elapsed();
        Ok(Inspection {
            verdict,
            score,
            threshold,
            normalized_score: score / threshold,
            regions,
            heatmap,
            map,
            geometry,
            timings: Timings {
                decode: Duration::ZERO,
                preprocess,
                inference,
                postprocess,
            },
        })
    }

    /// Renders the map as the requested heatmap, sized to the ROI or to
    /// `max_size` on its longer side.
    fn render(
        &mut self,
        map: &AnomalyMap,
        geometry: &Geometry,
        threshold: f32,
        format: HeatmapFormat,
        max_size: u32,
    ) -> Result<HeatmapImage, EngineError> {
        let roi = geometry.roi;
        let (width, height) =
            heatmap::output_size(roi.width as usize, roi.height as usize, max_size as usize);
        let mut scores = vec![0.0; width * height];
        resize_f32(
            &mut Resizer::new(),
            &map.data,
            map.width,
            map.height,
            &mut scores,
            width,
            height,
        );
        let scale = heatmap::byte_scale(threshold);
        let mut bytes = Vec::new();
        heatmap::to_bytes(&scores, scale, &mut bytes);
        let (data, media_type) = match format {
            HeatmapFormat::RawU8 => (bytes, "application/octet-stream"),
            HeatmapFormat::Png | HeatmapFormat::OverlayPng => {
                let mut colored = Vec::new();
                heatmap::colorize(&bytes, &mut colored);
                if format == HeatmapFormat::OverlayPng {
                    let base = roi_rgb(&self.image, roi, width, height)?;
                    let mut blended = Vec::new();
                    heatmap::blend(&base, &colored, OVERLAY_ALPHA, &mut blended);
                    colored = blended;
                }
                let png = heatmap::encode_png(&colored, width, height)
                    .map_err(|error| EngineError::Heatmap(error.to_string()))?;
                (png, "image/png")
            }
        };
        Ok(HeatmapImage {
            width: width as u32,
            height: height as u32,
            data,
            media_type,
            scale,
        })
    }
}

/// The ROI of `image` as packed RGB8, resized to `width` x `height`.
fn roi_rgb(image: &Image, roi: Roi, width: usize, height: usize) -> Result<Vec<u8>, EngineError> {
    let crop = image.crop(roi)?;
    let rgb = if crop.channels == Channels::Rgb {
        crop
    } else {
        crop.to_rgb()
    };
    if (rgb.width as usize, rgb.height as usize) == (width, height) {
        return Ok(rgb.data);
    }
    let source = ImageRef::new(rgb.width, rgb.height, &rgb.data, PixelType::U8x3)
        .map_err(|error| EngineError::Heatmap(error.to_string()))?;
    let mut target = ResizeImage::new(width as u32, height as u32, PixelType::U8x3);
    Resizer::new()
        .resize(
            &source,
            &mut target,
            &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)),
        )
        .map_err(|error| EngineError::Heatmap(error.to_string()))?;
    Ok(target.into_vec())
}

/// Regions of `map` above `threshold`, mapped to frame pixels, without
/// those under `min_area` frame pixels.
pub fn frame_regions(map: &AnomalyMap, threshold: f32, geometry: &Geometry, min_area: u32) -> Vec<Region> {
    let pixel_area = geometry.scale_x() * geometry.scale_y();
    find_regions(map, threshold)
        .into_iter()
        .filter_map(|region| {
            let area = (f64::from(region.pixels) * pixel_area).round() as u32;
            if area < min_area {
                return None;
            }
            let (x, y, width, height) = geometry.map_rect_to_frame(
                map.width as u32,
                map.height as u32,
                region.x,
                region.y,
                region.width,
                region.height,
            );
            Some(Region {
                x,
                y,
                width,
                height,
                area,
                max_score: region.max_score,
                mean_score: region.mean_score,
            })
        })
        .collect()
}
