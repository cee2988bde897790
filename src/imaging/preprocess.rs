//! Preprocessing: crops a region of a decoded [`Image`], resizes it to the model input size and writes
//! it as a normalised NCHW f32 tensor, and maps model-space rectangles back to frame pixels.

use fast_image_resize::images::{CroppedImage, Image as FirImage, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use super::{Channels, Image, ImagingError, Roi};

/// How a frame region maps onto the model input.
///
/// Input pixel (u, v) (continuous, pixel centres at +0.5) covers frame pixels
/// `x = roi.x + u * scale_x`, `y = roi.y + v * scale_y`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Geometry {
    /// The frame region that was fed to the model.
    pub roi: Roi,
    /// Model input width in pixels.
    pub input_width: u32,
    /// Model input height in pixels.
    pub input_height: u32,
}

impl Geometry {
    /// Frame pixels per input pixel horizontally, `roi.width / input_width`.
    pub fn scale_x(&self) -> f64 {
        f64::from(self.roi.width) / f64::from(self.input_width)
    }

    /// Frame pixels per input pixel vertically, `roi.height / input_height`.
    pub fn scale_y(&self) -> f64 {
        f64::from(self.roi.height) / f64::from(self.input_height)
    }

    /// Maps the rectangle (x, y, w, h) of a `map_w` x `map_h` map that spans the whole ROI (e.g. an anomaly
    /// map at ROI or input resolution) back to frame pixels, returning (x, y, w, h).
    ///
    /// The result covers every frame pixel the rectangle touches: x0 = floor(roi.x + px0 * roi.w / map_w),
    /// x1 = ceil(roi.x + px1 * roi.w / map_w), and likewise vertically, clamped to the ROI. An empty map
    /// gives an empty rectangle at the ROI origin.
    pub fn map_rect_to_frame(
        &self,
        map_w: u32,
        map_h: u32,
        x: u32,
        y: u32,
        w: u32,
        h: u32,
    ) -> (u32, u32, u32, u32) {
        if map_w == 0 || map_h == 0 {
            return (self.roi.x, self.roi.y, 0, 0);
        }
        let (x0, x1) = map_span(self.roi.x, self.roi.width, map_w, x, w);
        let (y0, y1) = map_span(self.roi.y, self.roi.height, map_h, y, h);
        (x0, y0, x1 - x0, y1 - y0)
    }
}

/// Maps the map interval [p, p + len) onto frame pixels [start, start + size); integer arithmetic keeps
/// cell edges exact (no 0.9999 floors to the previous pixel).
fn map_span(start: u32, size: u32, map: u32, p: u32, len: u32) -> (u32, u32) {
    let map = u64::from(map);
    let p0 = u64::from(p).min(map);
    let p1 = (u64::from(p) + u64::from(len)).min(map);
    let size = u64::from(size);
    let lo = u64::from(start) + p0 * size / map;
    let hi = u64::from(start) + (p1 * size).div_ceil(map);
    let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    (clamp(lo), clamp(hi))
}

/// Per-channel normalisation: `out = (x / 255 - mean[c]) / std[c]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalize {
    /// Mean of each channel (R, G, B) on the 0..1 scale.
    pub mean: [f32; 3],
    /// Standard deviation of each channel (R, G, B) on the 0..1 scale; must be non-zero.
    pub std: [f32; 3],
}

impl Normalize {
    /// Per-channel (scale, bias) so that the hot loop is one multiply-add: x * scale + bias.
    fn coefficients(&self) -> Result<[(f32, f32); 3], ImagingError> {
        let mut out = [(0.0, 0.0); 3];
        for (c, slot) in out.iter_mut().enumerate() {
            let (mean, std) = (self.mean[c], self.std[c]);
            if !mean.is_finite() || !std.is_finite() || std == 0.0 {
                return Err(ImagingError::invalid(format!(
                    "normalisation of channel {c} has mean {mean} and std {std}; both must be finite and std non-zero"
                )));
            }
            *slot = (1.0 / (255.0 * std), -mean / std);
        }
        Ok(out)
    }
}

/// Reusable preprocessing state: the resizer and its output buffer. One per worker thread.
#[derive(Debug, Default)]
pub struct Preprocessor {
    resizer: Resizer,
    resized: Vec<u8>,
}

/// Rows of 8-bit pixels inside a larger buffer.
struct View<'a> {
    data: &'a [u8],
    stride: usize,
    x: usize,
    y: usize,
    width: usize,
    height: usize,
    channels: usize,
}

impl View<'_> {
    fn rows(&self) -> impl Iterator<Item = &[u8]> {
        let (x0, len) = (self.x * self.channels, self.width * self.channels);
        self.data
            .chunks(self.stride)
            .skip(self.y)
            .take(self.height)
            .map(move |row| &row[x0..x0 + len])
    }
}

impl Preprocessor {
    /// Creates a preprocessor with empty buffers; they grow on first use and are reused after.
    pub fn new() -> Self {
        Self::default()
    }

    /// Crops `roi` (None = whole image) from `image`, resizes it to `input_width` x `input_height` with
    /// antialiased bilinear filtering (like torchvision's `Resize(antialias=True)`), normalises it and
    /// writes NCHW f32 (3 planes, RGB order) into `out`, which must hold `3 * input_width * input_height`
    /// values. A gray image fills all three planes. Returns how the input maps onto the frame.
    pub fn run(
        &mut self,
        image: &Image,
        roi: Option<Roi>,
        input_width: u32,
        input_height: u32,
        norm: &Normalize,
        out: &mut [f32],
    ) -> Result<Geometry, ImagingError> {
        let geometry = check(image, roi, input_width, input_height, out.len())?;
        let coefficients = norm.coefficients()?;
        let roi = geometry.roi;
        let channels = image.channels.count();
        let (iw, ih) = (input_width as usize, input_height as usize);
        // A crop without scaling needs no resampling: normalise straight from the frame's rows.
        let view = if (roi.width, roi.height) == (input_width, input_height) {
            View {
                data: &image.data,
                stride: image.row_bytes(),
                x: roi.x as usize,
                y: roi.y as usize,
                width: iw,
                height: ih,
                channels,
            }
        } else {
            self.resize(image, roi, input_width, input_height)?;
            View {
                data: &self.resized,
                stride: iw * channels,
                x: 0,
                y: 0,
                width: iw,
                height: ih,
                channels,
            }
        };
        normalise(&view, image.channels, coefficients, out);
        Ok(geometry)
    }

    fn resize(&mut self, image: &Image, roi: Roi, width: u32, height: u32) -> Result<(), ImagingError> {
        let pixel_type = match image.channels {
            Channels::Gray => PixelType::U8,
            Channels::Rgb => PixelType::U8x3,
        };
        let fault = |e: &dyn std::fmt::Display| ImagingError::internal("resize failed", e);
        let src = ImageRef::new(image.width, image.height, &image.data, pixel_type).map_err(|e| fault(&e))?;
        self.resized.clear();
        self.resized
            .resize(width as usize * height as usize * image.channels.count(), 0);
        let mut dst =
            FirImage::from_slice_u8(width, height, &mut self.resized, pixel_type).map_err(|e| fault(&e))?;
        // A cropped view reads the region in place instead of copying it out. Unlike
        // `ResizeOptions::crop`, it also keeps the filter from reaching pixels outside the ROI.
        let src = CroppedImage::new(&src, roi.x, roi.y, roi.width, roi.height).map_err(|e| fault(&e))?;
        let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
        self.resizer
            .resize(&src, &mut dst, &options)
            .map_err(|e| fault(&e))
    }

    /// The slow baseline for tests and the "fast vs plain" benchmark: copies the crop, resamples it with
    /// per-pixel bilinear interpolation (no antialiasing) and normalises pixel by pixel. Same contract
    /// as [`Preprocessor::run`]; do not use it in the service.
    pub fn run_plain(
        image: &Image,
        roi: Option<Roi>,
        input_width: u32,
        input_height: u32,
        norm: &Normalize,
        out: &mut [f32],
    ) -> Result<Geometry, ImagingError> {
        let geometry = check(image, roi, input_width, input_height, out.len())?;
        norm.coefficients()?;
        let crop = image.crop(geometry.roi)?;
        let (cw, ch) = (crop.width as usize, crop.height as usize);
        let channels = crop.channels.count();
        let (sx, sy) = (geometry.scale_x(), geometry.scale_y());
        let (iw, ih) = (input_width as usize, input_height as usize);
        // Source coordinate and weight of the next pixel, pixel centres aligned (half-pixel offsets).
        let sample = |i: usize, scale: f64, len: usize| {
            let pos = ((i as f64 + 0.5) * scale - 0.5).clamp(0.0, (len - 1) as f64);
            let lo = pos.floor() as usize;
            (lo, (lo + 1).min(len - 1), (pos - lo as f64) as f32)
        };
        for c in 0..3 {
            let src_c = if channels == 1 { 0 } else { c };
            let at = |x: usize, y: usize| f32::from(crop.data[(y * cw + x) * channels + src_c]);
            for v in 0..ih {
                let (y0, y1, ty) = sample(v, sy, ch);
                for u in 0..iw {
                    let (x0, x1, tx) = sample(u, sx, cw);
                    let top = at(x0, y0) * (1.0 - tx) + at(x1, y0) * tx;
                    let bottom = at(x0, y1) * (1.0 - tx) + at(x1, y1) * tx;
                    let value = top * (1.0 - ty) + bottom * ty;
                    out[(c * ih + v) * iw + u] = (value / 255.0 - norm.mean[c]) / norm.std[c];
                }
            }
        }
        Ok(geometry)
    }
}

/// Validates the arguments shared by both paths and resolves the ROI.
fn check(
    image: &Image,
    roi: Option<Roi>,
    input_width: u32,
    input_height: u32,
    out_len: usize,
) -> Result<Geometry, ImagingError> {
    image.check_consistent()?;
    if input_width == 0 || input_height == 0 {
        return Err(ImagingError::invalid(format!(
            "model input is {input_width}x{input_height} pixels; width and height must be at least 1"
        )));
    }
    let roi = roi.unwrap_or(Roi {
        x: 0,
        y: 0,
        width: image.width,
        height: image.height,
    });
    roi.check_inside(image.width, image.height)?;
    let expected = (u64::from(input_width) * u64::from(input_height)).checked_mul(3);
    if expected != Some(out_len as u64) {
        // The engine sizes the tensor from the model; a mismatch is our bug, not the caller's.
        return Err(ImagingError::Internal(format!(
            "input tensor holds {out_len} values, expected 3x{input_height}x{input_width}"
        )));
    }
    Ok(Geometry {
        roi,
        input_width,
        input_height,
    })
}

/// Writes the three normalised planes; loops are plain slice iterators that LLVM vectorises.
fn normalise(view: &View<'_>, channels: Channels, coefficients: [(f32, f32); 3], out: &mut [f32]) {
    let plane = view.width * view.height;
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    match channels {
        Channels::Rgb => {
            let [(ar, br), (ag, bg), (ab, bb)] = coefficients;
            let dst = r.chunks_exact_mut(view.width).zip(g.chunks_exact_mut(view.width));
            for ((src, (r, g)), b) in view.rows().zip(dst).zip(b.chunks_exact_mut(view.width)) {
                let (src, _) = src.as_chunks::<3>();
                for (p, ((r, g), b)) in src.iter().zip(r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut())) {
                    *r = f32::from(p[0]) * ar + br;
                    *g = f32::from(p[1]) * ag + bg;
                    *b = f32::from(p[2]) * ab + bb;
                }
            }
        }
        Channels::Gray => {
            normalise_gray(view, coefficients[0], r);
            for (c, plane) in [(1, g), (2, b)] {
                if coefficients[c] == coefficients[0] {
                    plane.copy_from_slice(r);
                } else {
                    normalise_gray(view, coefficients[c], plane);
                }
            }
        }
    }
}

fn normalise_gray(view: &View<'_>, (a, bias): (f32, f32), plane: &mut [f32]) {
    for (src, dst) in view.rows().zip(plane.chunks_exact_mut(view.width)) {
        for (&x, d) in src.iter().zip(dst) {
            *d = f32::from(x) * a + bias;
        }
    }
}

/// Keeps a part's aspect ratio: picks an input size whose width and height are multiples of 16 (each at
/// least 16), whose area is close to `target_area` (e.g. 256 * 256) and whose aspect ratio is closest to
/// `width / height`. A zero width or height counts as square.
pub fn input_size_for_aspect(width: u32, height: u32, target_area: u32) -> (u32, u32) {
    const STEP: f64 = 16.0;
    let ratio = if width == 0 || height == 0 {
        1.0
    } else {
        f64::from(width) / f64::from(height)
    };
    let area = f64::from(target_area).max(STEP * STEP);
    let largest = f64::from(u32::MAX - 15);
    // Multiples of 16 just below and just above an ideal side length.
    let around = |ideal: f64| {
        let lo = ((ideal / STEP).floor() * STEP).clamp(STEP, largest);
        [lo, (lo + STEP).min(largest)]
    };
    // Log errors weigh "twice too wide" like "half as wide". Area is the compute budget, so it weighs
    // double: an extreme part gets a 16-pixel short side rather than a huge input.
    let cost = |w: f64, h: f64| ((w / h) / ratio).ln().abs() + 2.0 * (w * h / area).ln().abs();
    let (ideal_w, ideal_h) = ((area * ratio).sqrt(), (area / ratio).sqrt());
    let mut best = (STEP, STEP);
    let mut best_cost = f64::INFINITY;
    let mut consider = |w: f64, h: f64| {
        let c = cost(w, h);
        if c < best_cost {
            (best, best_cost) = ((w, h), c);
        }
    };
    for w in around(ideal_w) {
        for h in around(ideal_h) {
            consider(w, h);
        }
        // When one side is pinned at 16, the other must absorb the area.
        for h in around(area / w) {
            consider(w, h);
        }
    }
    for h in around(ideal_h) {
        for w in around(area / h) {
            consider(w, h);
        }
    }
    (best.0 as u32, best.1 as u32)
}

#[cfg(test)]
mod tests;
