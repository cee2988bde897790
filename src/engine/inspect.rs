//! Judging one frame: decode, preprocess, features, search, anomaly map,
//! verdict, regions in frame pixels, and the heatmap if asked for.

use std::time::{Duration, Instant};

use fast_image_resize::images::{Image as ResizeImage, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use crate::imaging::{Channels, FrameData, Geometry, Image, Roi};
use crate::model::ModelError;
use crate::scoring::annotate::{Outline, Stamp, annotate};
use crate::scoring::heatmap;
use crate::scoring::map::{AnomalyMap, resize_f32};
use crate::scoring::nearest::Grid;
use crate::scoring::regions::find_regions;

use super::{Engine, EngineError, Judge};

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
    /// PNG on the colour scale for people (the threshold where blue-green
    /// turns orange: [`crate::scoring::heatmap`]).
    Png,
    /// That PNG blended over the frame.
    OverlayPng,
}

/// Marks drawn on the PNG heatmaps (never on the raw map).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Marks {
    /// Outline every defect region.
    pub outlines: bool,
    /// Stamp the verdict, the score and the threshold in the top-left
    /// corner.
    pub stamp: bool,
}

/// Per-request options.
#[derive(Debug, Clone, Copy, Default)]
pub struct InspectOptions {
    /// The heatmap to render, with the longest side at most `.1` pixels
    /// (0: the ROI's size).
    pub heatmap: Option<(HeatmapFormat, u32)>,
    /// Marks on PNG heatmaps.
    pub marks: Marks,
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
        let image = std::mem::take(&mut self.image);
        let result = self.inspect_image(judge, &image, options);
        self.image = image;
        let mut inspection = result?;
        inspection.timings.decode = decode;
        Ok(inspection)
    }

    /// Judges an already decoded frame (decoded elsewhere, on another
    /// thread).
    pub fn inspect_image(
        &mut self,
        judge: &Judge,
        image: &Image,
        options: &InspectOptions,
    ) -> Result<Inspection, EngineError> {
        let mut results =
            self.inspect_images(judge, std::slice::from_ref(image), std::slice::from_ref(options));
        results.pop().expect("one result for one frame; this is a bug")
    }

    /// Judges decoded frames of one recipe together, one result per frame
    /// in order. Frames with the same model input size share one model run
    /// and one search (a batch); a frame that fails gets its own error and
    /// the others go on. In a batch each frame's timings carry an equal
    /// share of the model and search time.
    pub fn inspect_images(
        &mut self,
        judge: &Judge,
        images: &[Image],
        options: &[InspectOptions],
    ) -> Vec<Result<Inspection, EngineError>> {
        assert_eq!(
            images.len(),
            options.len(),
            "one options per frame; this is a bug"
        );
        let sizes: Vec<(u32, u32)> = images
            .iter()
            .map(|image| {
                let (width, height) = match judge.settings().roi {
                    Some(roi) => (roi.width, roi.height),
                    None => (image.width, image.height),
                };
                self.input_size(judge.input, width, height)
            })
            .collect();
        let mut results: Vec<Option<Result<Inspection, EngineError>>> = images.iter().map(|_| None).collect();
        for first in 0..images.len() {
            if results[first].is_some() {
                continue;
            }
            let members: Vec<usize> = (first..images.len())
                .filter(|&i| results[i].is_none() && sizes[i] == sizes[first])
                .collect();
            let judged = self.inspect_batch(judge, images, options, &members, sizes[first]);
            for (index, result) in members.into_iter().zip(judged) {
                results[index] = Some(result);
            }
        }
        results
            .into_iter()
            .map(|result| result.expect("every frame is judged; this is a bug"))
            .collect()
    }

    /// Judges `images[members]`, all of model input size `width` x
    /// `height`, with one model run and one search.
    fn inspect_batch(
        &mut self,
        judge: &Judge,
        images: &[Image],
        options: &[InspectOptions],
        members: &[usize],
        (width, height): (u32, u32),
    ) -> Vec<Result<Inspection, EngineError>> {
        let settings = judge.settings();
        let plane = 3 * width as usize * height as usize;
        self.input.resize(members.len() * plane, 0.0);
        let mut results: Vec<Option<Result<Inspection, EngineError>>> =
            members.iter().map(|_| None).collect();
        // (position in `members`, geometry, preprocessing time) of the frames
        // in the model batch, in tensor order.
        let mut batch = Vec::with_capacity(members.len());
        for (position, &index) in members.iter().enumerate() {
            let started = Instant::now();
            let slot = &mut self.input[batch.len() * plane..][..plane];
            match self
                .preprocessor
                .run(&images[index], settings.roi, width, height, &self.normalize, slot)
            {
                Ok(geometry) => batch.push((position, geometry, started.elapsed())),
                Err(error) => results[position] = Some(Err(error.into())),
            }
        }
        if !batch.is_empty() {
            let count = batch.len();
            match self.infer_batch(judge, count, width, height) {
                Ok((grid, inference)) => {
                    let started = Instant::now();
                    let features = std::mem::take(&mut self.features);
                    self.search(&features, count, grid, judge.view());
                    self.features = features;
                    let search = started.elapsed() / count as u32;
                    for (k, (position, geometry, preprocess)) in batch.into_iter().enumerate() {
                        let started = Instant::now();
                        let mut map = AnomalyMap::default();
                        self.build_map(k, grid, judge.mask.as_deref(), &mut map);
                        if let Some(pixels) = judge.pixels.as_deref() {
                            self.fuse_pixels(pixels, k, judge.mask.as_deref(), &mut map);
                        }
                        let index = members[position];
                        let result = judgement(judge, map, geometry, &images[index], &options[index]).map(
                            |mut inspection| {
                                inspection.timings = Timings {
                                    decode: Duration::ZERO,
                                    preprocess,
                                    inference,
                                    postprocess: search + started.elapsed(),
                                };
                                inspection
                            },
                        );
                        results[position] = Some(result);
                    }
                }
                Err(failure) => {
                    for (position, ..) in batch {
                        results[position] = Some(Err(failure.clone().into()));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|result| result.expect("every frame of the batch is judged; this is a bug"))
            .collect()
    }

    /// Runs the model on the first `count` images of the input tensor and
    /// checks the grid against an aligned reference. Returns the grid and
    /// each image's share of the time.
    fn infer_batch(
        &mut self,
        judge: &Judge,
        count: usize,
        width: u32,
        height: u32,
    ) -> Result<(Grid, Duration), SharedFailure> {
        let (grid, elapsed) = self.infer(count, width, height)?;
        let reference = judge.reference();
        let reference_grid = (reference.grid_width as usize, reference.grid_height as usize);
        if judge.settings().match_mode == super::MatchMode::Aligned
            && (grid.width, grid.height) != reference_grid
        {
            return Err(SharedFailure::Mismatch(format!(
                "the frame's feature grid is {}x{}, the reference's {}x{}",
                grid.width, grid.height, reference.grid_width, reference.grid_height
            )));
        }
        Ok((grid, elapsed / count as u32))
    }
}

/// A failure of the model run that every frame of a batch shares.
#[derive(Debug, Clone)]
enum SharedFailure {
    Model(ModelError),
    Mismatch(String),
}

impl From<ModelError> for SharedFailure {
    fn from(error: ModelError) -> Self {
        Self::Model(error)
    }
}

impl From<SharedFailure> for EngineError {
    fn from(failure: SharedFailure) -> Self {
        match failure {
            SharedFailure::Model(error) => Self::Model(error),
            SharedFailure::Mismatch(reason) => Self::ReferenceMismatch(reason),
        }
    }
}

/// The verdict, regions and heatmap of one frame from its anomaly map.
fn judgement(
    judge: &Judge,
    map: AnomalyMap,
    geometry: Geometry,
    image: &Image,
    options: &InspectOptions,
) -> Result<Inspection, EngineError> {
    let score = map.max();
    let threshold = judge.threshold();
    let verdict = if score > threshold {
        Verdict::Fail
    } else {
        Verdict::Pass
    };
    let regions = frame_regions(&map, threshold, &geometry, judge.min_region_area(&geometry));
    let heatmap = match options.heatmap {
        Some((format, max_size)) => {
            let marks = Marked {
                marks: options.marks,
                regions: &regions,
                stamp: Stamp {
                    failed: verdict == Verdict::Fail,
                    score,
                    threshold,
                },
            };
            Some(render(
                image, &map, &geometry, threshold, format, max_size, &marks,
            )?)
        }
        None => None,
    };
    Ok(Inspection {
        verdict,
        score,
        threshold,
        normalized_score: score / threshold,
        regions,
        heatmap,
        map,
        geometry,
        timings: Timings::default(),
    })
}

/// The marks asked for, with what they show.
struct Marked<'a> {
    marks: Marks,
    regions: &'a [Region],
    stamp: Stamp,
}

impl Marked<'_> {
    /// Draws the marks asked for on the `width` x `height` heatmap of `roi`.
    fn draw(&self, rgb: Vec<u8>, roi: Roi, width: usize, height: usize) -> Vec<u8> {
        if self.marks == Marks::default() {
            return rgb;
        }
        let outlines: Vec<Outline> = if self.marks.outlines {
            self.regions
                .iter()
                .map(|region| outline_in_heatmap(region, roi, width, height))
                .collect()
        } else {
            Vec::new()
        };
        let stamp = self.marks.stamp.then_some(self.stamp);
        annotate(rgb, width as u32, height as u32, &outlines, stamp)
    }
}

/// A region in frame pixels as a rectangle of the `width` x `height`
/// heatmap of `roi`.
fn outline_in_heatmap(region: &Region, roi: Roi, width: usize, height: usize) -> Outline {
    let sx = width as f64 / f64::from(roi.width.max(1));
    let sy = height as f64 / f64::from(roi.height.max(1));
    let x0 = (f64::from(region.x.saturating_sub(roi.x)) * sx).floor();
    let y0 = (f64::from(region.y.saturating_sub(roi.y)) * sy).floor();
    let x1 = (f64::from((region.x + region.width).saturating_sub(roi.x)) * sx).ceil();
    let y1 = (f64::from((region.y + region.height).saturating_sub(roi.y)) * sy).ceil();
    Outline {
        x: x0 as u32,
        y: y0 as u32,
        width: ((x1 - x0) as u32).max(1),
        height: ((y1 - y0) as u32).max(1),
    }
}

/// The heatmap of `map` blended over the ROI of `image` at the ROI's size,
/// as PNG: what the audit trail keeps of a judged frame.
pub fn overlay_png(
    image: &Image,
    map: &AnomalyMap,
    geometry: &Geometry,
    threshold: f32,
) -> Result<HeatmapImage, EngineError> {
    let plain = Marked {
        marks: Marks::default(),
        regions: &[],
        stamp: Stamp {
            failed: false,
            score: 0.0,
            threshold,
        },
    };
    render(
        image,
        map,
        geometry,
        threshold,
        HeatmapFormat::OverlayPng,
        0,
        &plain,
    )
}

/// Renders the map as the requested heatmap, sized to the ROI or to
/// `max_size` on its longer side, with the marks asked for on PNGs.
fn render(
    image: &Image,
    map: &AnomalyMap,
    geometry: &Geometry,
    threshold: f32,
    format: HeatmapFormat,
    max_size: u32,
    marked: &Marked<'_>,
) -> Result<HeatmapImage, EngineError> {
    let roi = geometry.roi;
    let (width, height) = heatmap::output_size(roi.width as usize, roi.height as usize, max_size as usize);
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
                let base = roi_rgb(image, roi, width, height)?;
                let mut blended = Vec::new();
                heatmap::blend_by_heat(&base, &colored, &bytes, &mut blended);
                colored = blended;
            }
            let colored = marked.draw(colored, roi, width, height);
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
