//! Pixel-level comparison of an aligned part with its golden images: a
//! variation model (an ideal image and a per-pixel tolerance, as machine
//! vision libraries such as HALCON build one), after sub-pixel registration.
//!
//! Planes are gray levels on the 0..255 scale at the model input size.
//! - **Registration**: a translation, found coarse to fine by Gauss-Newton
//!   steps (Lucas-Kanade) from no shift on the coarsest level of a 2x
//!   pyramid (at most [`COARSEST_SIDE`] pixels on its shorter side) down to
//!   full resolution, on copies blurred with sigma [`REGISTRATION_SIGMA`] so
//!   that sharp (binarised) edges give smooth gradients. Starting from no
//!   shift finds the nearest match, which is the right one for a fixtured
//!   part (a periodic part also matches itself a period away; a search over
//!   whole shifts picked such aliases). Each level's basin is about a
//!   quarter of the pattern's period at that level, so a few pixels at full
//!   resolution. A frame is then resampled bilinearly onto the golden
//!   image's pixels.
//! - **The model**: the ideal image is the mean of the registered golden
//!   images; the tolerance of a pixel is
//!   `ABSOLUTE + EDGE x edge + SPREAD x spread`, where `edge` is the
//!   largest gradient magnitude of the ideal image within one pixel (so an
//!   edge may move by up to [`EDGE`] pixels: a part's edges differ that much
//!   from copy to copy and after resampling) and `spread` is the per-pixel
//!   standard deviation of the golden images (0 with one image).
//! - **The comparison**: `|frame - ideal| / tolerance` per pixel (1 is at the
//!   tolerance), then a grey-scale opening with a 3 x 3 square: a defect
//!   must be at least [`MIN_DEFECT_SIDE`] pixels across, which removes the
//!   one- and two-pixel slivers that edge placement leaves along every edge.

use super::map::{gaussian_kernel_of_radius, separable_blur};

/// Tolerance everywhere, in gray levels (of 255): sensor noise and
/// compression.
pub const ABSOLUTE: f32 = 20.0;
/// Pixels an edge may move: the tolerance grows by this times the local
/// gradient (gray levels per pixel).
pub const EDGE: f32 = 3.0;
/// Standard deviations of the golden images' own variation allowed.
pub const SPREAD: f32 = 3.0;
/// Smallest defect side, in pixels, the comparison keeps.
pub const MIN_DEFECT_SIDE: usize = 3;
/// How far, in feature cells, the feature map reaches around a pixel-level
/// difference in the fused map (see [`fuse`]): the feature map's own blur
/// spreads a defect's response about that far.
pub const FEATURE_REACH_CELLS: usize = 2;
/// Blur before registration, in pixels.
pub const REGISTRATION_SIGMA: f32 = 1.0;
/// Pyramid levels stop at this side (the coarsest is at least this small
/// on its shorter side, or level 0).
pub const COARSEST_SIDE: usize = 64;
/// Gauss-Newton steps per level at most.
const STEPS: usize = 10;
/// A step shorter than this (pixels) ends a level's iterations.
const CONVERGED: f32 = 0.01;

/// A translation, in pixels: the frame's content at `(x + dx, y + dy)` lies
/// on the golden image's `(x, y)`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Shift {
    /// Across.
    pub dx: f32,
    /// Down.
    pub dy: f32,
}

/// An ideal image and its per-pixel tolerance, `width` x `height`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct VariationModel {
    /// Pixels across.
    pub width: usize,
    /// Pixels down.
    pub height: usize,
    /// The mean of the registered golden images, gray levels.
    pub ideal: Vec<f32>,
    /// Gray levels a frame may differ from `ideal` at each pixel.
    pub tolerance: Vec<f32>,
}

impl VariationModel {
    /// The model of `planes` (each `width` x `height`; at least one): every
    /// plane registered onto the first, then averaged.
    pub fn build(planes: &[&[f32]], width: usize, height: usize) -> Self {
        let first = planes[0];
        let mut registered = vec![first.to_vec()];
        let target = Blurred::new(first, width, height);
        for plane in &planes[1..] {
            let shift = register(&target, plane);
            let mut out = vec![0.0; width * height];
            warp(plane, width, height, shift, &mut out);
            registered.push(out);
        }
        let n = registered.len() as f32;
        let mut ideal = vec![0.0; width * height];
        for plane in &registered {
            ideal.iter_mut().zip(plane).for_each(|(m, &v)| *m += v / n);
        }
        let mut spread = vec![0.0; width * height];
        if registered.len() > 1 {
            for plane in &registered {
                spread
                    .iter_mut()
                    .zip(plane.iter().zip(&ideal))
                    .for_each(|(s, (&v, &m))| *s += (v - m) * (v - m) / (n - 1.0));
            }
            spread.iter_mut().for_each(|s| *s = s.sqrt());
        }
        let mut edge = gradient_magnitude(&ideal, width, height);
        edge = max_filter3(&edge, width, height);
        let tolerance = edge
            .iter()
            .zip(&spread)
            .map(|(&e, &s)| ABSOLUTE + EDGE * e + SPREAD * s)
            .collect();
        Self {
            width,
            height,
            ideal,
            tolerance,
        }
    }
}

/// A variation model ready to compare frames with: the model and its ideal
/// image prepared for registration (built once per recipe).
pub struct Comparison {
    model: VariationModel,
    target: Blurred,
}

impl std::fmt::Debug for Comparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Comparison")
            .field("width", &self.model.width)
            .field("height", &self.model.height)
            .finish_non_exhaustive()
    }
}

impl Comparison {
    /// Prepares `model`.
    pub fn new(model: VariationModel) -> Self {
        let target = Blurred::new(&model.ideal, model.width, model.height);
        Self { model, target }
    }

    /// The model.
    pub fn model(&self) -> &VariationModel {
        &self.model
    }

    /// Compares `frame` (`width` x `height` gray levels) with the model:
    /// `out` gets `|frame - ideal| / tolerance` after registration, opened
    /// with a [`MIN_DEFECT_SIDE`] square. Returns the registration shift.
    pub fn compare(&self, frame: &[f32], out: &mut Vec<f32>) -> Shift {
        let model = &self.model;
        let (width, height) = (model.width, model.height);
        let shift = register(&self.target, frame);
        out.resize(width * height, 0.0);
        warp(frame, width, height, shift, out);
        for ((v, &ideal), &tolerance) in out.iter_mut().zip(&model.ideal).zip(&model.tolerance) {
            *v = (*v - ideal).abs() / tolerance;
        }
        let opened = max_filter3(&min_filter3(out, width, height), width, height);
        *out = opened;
        shift
    }
}

/// Fuses the pixel map into the feature map, in place, in one unit: each
/// divided by its scale (the highest value the good frames' calibration
/// reached on it), `mask` (1 inspect, 0 ignore) applied to the pixel map as
/// it already is to the feature map. The feature map counts only near a
/// pixel-level difference: it is weighted by the largest pixel value within
/// `radius` pixels (at most 1), so a defect keeps the feature map's extent
/// while a feature response with no difference from the golden image
/// behind it does not fail the part. The result is the larger of the pixel
/// value and the weighted feature value. `work` is scratch space.
pub fn fuse(
    features: &mut [f32],
    pixels: &[f32],
    (width, height): (usize, usize),
    (feature_scale, pixel_scale): (f32, f32),
    mask: Option<&[f32]>,
    radius: usize,
    work: &mut Vec<f32>,
) {
    work.clear();
    work.extend(pixels.iter().map(|&q| q / pixel_scale));
    if let Some(mask) = mask {
        work.iter_mut().zip(mask).for_each(|(q, &m)| *q *= m);
    }
    let near = max_filter(work, width, height, radius);
    let f = 1.0 / feature_scale;
    for ((v, &q), &g) in features.iter_mut().zip(work.iter()).zip(&near) {
        *v = q.max(*v * f * g.min(1.0));
    }
}

/// The fused image score of a calibration frame from the maxima of its
/// two maps (already divided by their scales): an upper bound of the fused
/// map's maximum (see [`fuse`]).
pub fn fused_score(feature: f32, pixel: f32) -> f32 {
    pixel.max(feature * pixel.min(1.0))
}

/// A square maximum filter of `radius` (edges clamped), separable.
fn max_filter(plane: &[f32], width: usize, height: usize, radius: usize) -> Vec<f32> {
    let mut out = plane.to_vec();
    for _ in 0..radius {
        out = max_filter3(&out, width, height);
    }
    out
}

/// A golden plane prepared for registration: blurred, at every pyramid
/// level, with its gradients.
struct Blurred {
    levels: Vec<Level>,
}

/// One pyramid level of a blurred plane.
struct Level {
    width: usize,
    height: usize,
    data: Vec<f32>,
    gx: Vec<f32>,
    gy: Vec<f32>,
}

impl Blurred {
    fn new(plane: &[f32], width: usize, height: usize) -> Self {
        let levels = pyramid(&blur(plane, width, height), width, height)
            .into_iter()
            .map(|(data, width, height)| {
                let (gx, gy) = gradients(&data, width, height);
                Level {
                    width,
                    height,
                    data,
                    gx,
                    gy,
                }
            })
            .collect();
        Self { levels }
    }
}

/// The shift that best lays `frame` onto `target` (see the module notes).
fn register(target: &Blurred, frame: &[f32]) -> Shift {
    let (width, height) = (target.levels[0].width, target.levels[0].height);
    let moving = pyramid(&blur(frame, width, height), width, height);
    let coarsest = target.levels.len() - 1;
    let mut shift = Shift::default();
    let mut warped = Vec::new();
    for level in (0..=coarsest).rev() {
        if level != coarsest {
            shift.dx *= 2.0;
            shift.dy *= 2.0;
        }
        let reference = &target.levels[level];
        let plane = &moving[level].0;
        let limit = (reference.width.min(reference.height) / 4) as f32;
        for _ in 0..STEPS {
            warped.resize(plane.len(), 0.0);
            warp(plane, reference.width, reference.height, shift, &mut warped);
            let Some((ddx, ddy)) = gauss_newton_step(reference, &warped, shift) else {
                break;
            };
            shift.dx += ddx;
            shift.dy += ddy;
            if shift.dx.abs() > limit || shift.dy.abs() > limit {
                return Shift::default();
            }
            if ddx.abs().max(ddy.abs()) < CONVERGED {
                break;
            }
        }
    }
    shift
}

/// The interior of a level that every shift up to `shift` (+1 pixel) keeps
/// inside the frame: (x0, x1, y0, y1).
fn interior(width: usize, height: usize, shift: Shift) -> (usize, usize, usize, usize) {
    let mx = (shift.dx.abs().ceil() as usize + 2).min(width / 2);
    let my = (shift.dy.abs().ceil() as usize + 2).min(height / 2);
    (mx, width - mx, my, height - my)
}

/// One Lucas-Kanade step for a translation: solves
/// `H d = -sum(grad R (F - R))` over the interior; `None` when the plane
/// has no texture to register on.
fn gauss_newton_step(reference: &Level, warped: &[f32], shift: Shift) -> Option<(f32, f32)> {
    let (x0, x1, y0, y1) = interior(reference.width, reference.height, shift);
    let (mut hxx, mut hxy, mut hyy, mut bx, mut by) = (0.0f64, 0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for y in y0..y1 {
        let row = y * reference.width;
        let range = row + x0..row + x1;
        let (mut sxx, mut sxy, mut syy, mut sbx, mut sby) = (0.0f32, 0.0f32, 0.0f32, 0.0f32, 0.0f32);
        for (((&gx, &gy), &r), &f) in reference.gx[range.clone()]
            .iter()
            .zip(&reference.gy[range.clone()])
            .zip(&reference.data[range.clone()])
            .zip(&warped[range])
        {
            let e = f - r;
            sxx += gx * gx;
            sxy += gx * gy;
            syy += gy * gy;
            sbx += gx * e;
            sby += gy * e;
        }
        hxx += f64::from(sxx);
        hxy += f64::from(sxy);
        hyy += f64::from(syy);
        bx += f64::from(sbx);
        by += f64::from(sby);
    }
    let det = hxx * hyy - hxy * hxy;
    if det.abs() <= 1e-9 * (hxx * hyy).max(f64::MIN_POSITIVE) {
        return None;
    }
    let dx = -(hyy * bx - hxy * by) / det;
    let dy = -(hxx * by - hxy * bx) / det;
    Some((dx as f32, dy as f32))
}

/// `out(x, y) = plane(x + dx, y + dy)`, bilinear, edges clamped.
pub fn warp(plane: &[f32], width: usize, height: usize, shift: Shift, out: &mut [f32]) {
    let (ix, fx) = (shift.dx.floor(), shift.dx - shift.dx.floor());
    let (iy, fy) = (shift.dy.floor(), shift.dy - shift.dy.floor());
    let (ix, iy) = (ix as isize, iy as isize);
    let clamp_x = |x: isize| x.clamp(0, width as isize - 1) as usize;
    let clamp_y = |y: isize| y.clamp(0, height as isize - 1) as usize;
    // Columns whose two taps lie inside the row: no clamping needed there.
    let inner_start = (-ix).clamp(0, width as isize) as usize;
    let inner_end = ((width as isize - 1 - ix).clamp(0, width as isize) as usize).max(inner_start);
    let weights = [(1.0 - fx) * (1.0 - fy), fx * (1.0 - fy), (1.0 - fx) * fy, fx * fy];
    for (y, out_row) in out.chunks_exact_mut(width).enumerate() {
        let top = &plane[clamp_y(y as isize + iy) * width..][..width];
        let bottom = &plane[clamp_y(y as isize + iy + 1) * width..][..width];
        let tap = |row: &[f32], x: usize, offset: isize| row[clamp_x(x as isize + ix + offset)];
        let value = |x: usize| {
            weights[0] * tap(top, x, 0)
                + weights[1] * tap(top, x, 1)
                + weights[2] * tap(bottom, x, 0)
                + weights[3] * tap(bottom, x, 1)
        };
        for x in (0..inner_start).chain(inner_end..width) {
            out_row[x] = value(x);
        }
        if inner_end > inner_start {
            let first = (inner_start as isize + ix) as usize;
            let len = inner_end - inner_start;
            let (t0, t1) = (&top[first..first + len], &top[first + 1..first + 1 + len]);
            let (b0, b1) = (&bottom[first..first + len], &bottom[first + 1..first + 1 + len]);
            for (i, o) in out_row[inner_start..inner_end].iter_mut().enumerate() {
                *o = weights[0] * t0[i] + weights[1] * t1[i] + weights[2] * b0[i] + weights[3] * b1[i];
            }
        }
    }
}

/// Gaussian blur with [`REGISTRATION_SIGMA`]: imageproc's
/// `gaussian_blur_f32` (its kernel, 2 x ceil(2 sigma) + 1 taps, borders
/// clamped), done as vectorised row passes ([`separable_blur`]); imageproc's
/// own loop took about a tenth of an aligned 1024 x 1024 frame.
fn blur(plane: &[f32], width: usize, height: usize) -> Vec<f32> {
    let mut out = plane.to_vec();
    separable_blur(&mut out, width, height, &registration_kernel());
    out
}

/// imageproc's Gaussian kernel for [`REGISTRATION_SIGMA`]: 2 x ceil(2
/// sigma) + 1 taps.
fn registration_kernel() -> Vec<f32> {
    let sigma = REGISTRATION_SIGMA;
    gaussian_kernel_of_radius(sigma, (2.0 * sigma).ceil() as usize)
}

/// The plane and its 2x box-averaged halvings, finest first, down to
/// [`COARSEST_SIDE`]: (data, width, height) per level.
fn pyramid(plane: &[f32], width: usize, height: usize) -> Vec<(Vec<f32>, usize, usize)> {
    let mut levels = vec![(plane.to_vec(), width, height)];
    loop {
        let (data, w, h) = levels.last().expect("level 0 exists");
        let (w, h) = (*w, *h);
        if w.min(h) <= COARSEST_SIDE {
            break;
        }
        let (hw, hh) = (w / 2, h / 2);
        let mut half = vec![0.0; hw * hh];
        for (y, row) in half.chunks_exact_mut(hw).enumerate() {
            let a = &data[2 * y * w..][..2 * hw];
            let b = &data[(2 * y + 1) * w..][..2 * hw];
            for (x, v) in row.iter_mut().enumerate() {
                *v = 0.25 * (a[2 * x] + a[2 * x + 1] + b[2 * x] + b[2 * x + 1]);
            }
        }
        levels.push((half, hw, hh));
    }
    levels
}

/// Central-difference gradients (one-sided at the borders), gray levels per
/// pixel.
fn gradients(plane: &[f32], width: usize, height: usize) -> (Vec<f32>, Vec<f32>) {
    let mut gx = vec![0.0; plane.len()];
    let mut gy = vec![0.0; plane.len()];
    if width >= 2 {
        for (row, out) in plane.chunks_exact(width).zip(gx.chunks_exact_mut(width)) {
            for (o, w) in out[1..width - 1].iter_mut().zip(row.windows(3)) {
                *o = 0.5 * (w[2] - w[0]);
            }
            out[0] = row[1] - row[0];
            out[width - 1] = row[width - 1] - row[width - 2];
        }
    }
    if height >= 2 {
        for y in 0..height {
            let (up, down, scale) = match y {
                0 => (0, 1, 1.0),
                y if y == height - 1 => (y - 1, y, 1.0),
                y => (y - 1, y + 1, 0.5),
            };
            let (a, b) = (&plane[up * width..][..width], &plane[down * width..][..width]);
            for ((o, &p), &q) in gy[y * width..][..width].iter_mut().zip(a).zip(b) {
                *o = scale * (q - p);
            }
        }
    }
    (gx, gy)
}

/// Gradient magnitude of `plane`.
fn gradient_magnitude(plane: &[f32], width: usize, height: usize) -> Vec<f32> {
    let (gx, gy) = gradients(plane, width, height);
    gx.iter().zip(&gy).map(|(&x, &y)| x.hypot(y)).collect()
}

/// 3 x 3 maximum (edges clamped), separable.
fn max_filter3(plane: &[f32], width: usize, height: usize) -> Vec<f32> {
    filter3(plane, width, height, f32::max)
}

/// 3 x 3 minimum (edges clamped), separable.
fn min_filter3(plane: &[f32], width: usize, height: usize) -> Vec<f32> {
    filter3(plane, width, height, f32::min)
}

fn filter3(plane: &[f32], width: usize, height: usize, pick: fn(f32, f32) -> f32) -> Vec<f32> {
    let mut rows = plane.to_vec();
    if width >= 2 {
        for (row, out) in plane.chunks_exact(width).zip(rows.chunks_exact_mut(width)) {
            for (o, w) in out[1..width - 1].iter_mut().zip(row.windows(3)) {
                *o = pick(pick(w[0], w[1]), w[2]);
            }
            out[0] = pick(row[0], row[1]);
            out[width - 1] = pick(row[width - 1], row[width - 2]);
        }
    }
    let mut out = rows.clone();
    for y in 0..height {
        let up = &rows[y.saturating_sub(1) * width..][..width];
        let down = &rows[(y + 1).min(height - 1) * width..][..width];
        for ((o, &a), &b) in out[y * width..][..width].iter_mut().zip(up).zip(down) {
            *o = pick(pick(*o, a), b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Luma};

    /// A smooth random texture with some sharp edges, gray levels.
    fn texture(width: usize, height: usize, seed: u64) -> Vec<f32> {
        let mut state = seed | 1;
        let mut noise = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        let raw: Vec<f32> = (0..width * height).map(|_| 255.0 * noise()).collect();
        let image: ImageBuffer<Luma<f32>, Vec<f32>> =
            ImageBuffer::from_raw(width as u32, height as u32, raw).unwrap();
        let mut smooth = imageproc::filter::gaussian_blur_f32(&image, 3.0).into_raw();
        for (i, v) in smooth.iter_mut().enumerate() {
            let (x, y) = (i % width, i / width);
            if (x / 24 + y / 24) % 2 == 0 {
                *v += 60.0;
            }
        }
        smooth
    }

    /// A board-like binarised part: bright traces on dark ground.
    fn board(width: usize, height: usize, offset: f32) -> Vec<f32> {
        (0..width * height)
            .map(|i| {
                let x = (i % width) as f32 - offset;
                let y = (i / width) as f32;
                let trace = (x / 20.0).floor() as i32 % 2 == 0 || (y > 50.0 && y < 62.0);
                if trace { 230.0 } else { 20.0 }
            })
            .collect()
    }

    #[test]
    fn the_registration_blur_is_imageprocs() {
        let (width, height) = (97, 61);
        let plane = texture(width, height, 3);
        let image: ImageBuffer<Luma<f32>, Vec<f32>> =
            ImageBuffer::from_raw(width as u32, height as u32, plane.clone()).unwrap();
        let expected = imageproc::filter::gaussian_blur_f32(&image, REGISTRATION_SIGMA).into_raw();
        let worst = blur(&plane, width, height)
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst < 1e-3, "off by {worst} gray levels");
    }

    #[test]
    fn registration_recovers_a_known_sub_pixel_shift() {
        let (width, height) = (160, 128);
        let golden = texture(width, height, 3);
        for (dx, dy) in [(1.3, -0.6), (-2.45, 0.8), (0.0, 0.0), (4.2, 3.7)] {
            let mut frame = vec![0.0; width * height];
            // The frame's content at (x + dx, y + dy) is the golden (x, y).
            warp(&golden, width, height, Shift { dx: -dx, dy: -dy }, &mut frame);
            let shift = register(&Blurred::new(&golden, width, height), &frame);
            assert!(
                (shift.dx - dx).abs() < 0.05 && (shift.dy - dy).abs() < 0.05,
                "shift ({dx}, {dy}) registered as ({}, {})",
                shift.dx,
                shift.dy
            );
        }
    }

    #[test]
    fn a_shifted_edge_stays_within_tolerance_and_a_drawn_defect_does_not() {
        let (width, height) = (128, 96);
        let model = Comparison::new(VariationModel::build(
            &[&board(width, height, 0.0)],
            width,
            height,
        ));
        let mut out = Vec::new();
        // The whole part moved by a pixel and a half: registered away.
        model.compare(&board(width, height, 1.5), &mut out);
        let moved = out.iter().copied().fold(0.0, f32::max);
        assert!(moved < 1.0, "a shifted part scores {moved}");
        // One edge placed a pixel off (not a shift of the part): the edge
        // tolerance and the opening take it.
        let mut edge = board(width, height, 0.0);
        for y in 0..height {
            edge[y * width + 40] = edge[y * width + 39];
        }
        model.compare(&edge, &mut out);
        let edge_score = out.iter().copied().fold(0.0, f32::max);
        assert!(edge_score < 1.0, "an edge one pixel off scores {edge_score}");
        // A 5 x 5 spot of copper in the ground between traces.
        let mut defect = board(width, height, 0.0);
        for y in 20..25 {
            for x in 26..31 {
                defect[y * width + x] = 230.0;
            }
        }
        model.compare(&defect, &mut out);
        let at = |x: usize, y: usize| out[y * width + x];
        assert!(at(28, 22) > 2.0, "the defect scores {}", at(28, 22));
        let elsewhere = (0..width * height)
            .filter(|i| !(15..30).contains(&(i / width)) || !(20..36).contains(&(i % width)))
            .map(|i| out[i])
            .fold(0.0, f32::max);
        assert!(elsewhere < 1.0, "away from the defect: {elsewhere}");
    }

    #[test]
    fn several_golden_images_widen_the_tolerance_where_they_vary() {
        let (width, height) = (96, 96);
        let mut a = texture(width, height, 5);
        let mut b = a.clone();
        let (spot, calm) = (30 * width + 30, 60 * width + 60);
        a[spot] -= 40.0;
        b[spot] += 40.0;
        let model = VariationModel::build(&[&a, &b], width, height);
        let single = VariationModel::build(&[&a], width, height);
        // Spread sqrt(2) x 40 allowed SPREAD times over; elsewhere the two agree.
        let widened = model.tolerance[spot] - single.tolerance[spot];
        assert!(widened > 2.0 * 40.0, "{widened}");
        assert!((model.tolerance[calm] - single.tolerance[calm]).abs() < 1.0);
        assert!((model.ideal[spot] - (a[spot] + 40.0)).abs() < 1.0);
    }

    #[test]
    fn warp_matches_the_bilinear_formula() {
        let (width, height) = (7, 5);
        let plane: Vec<f32> = (0..width * height).map(|i| (i * i % 11) as f32).collect();
        let shift = Shift { dx: 1.25, dy: -0.5 };
        let mut out = vec![0.0; width * height];
        warp(&plane, width, height, shift, &mut out);
        let at = |x: isize, y: isize| {
            plane[y.clamp(0, height as isize - 1) as usize * width + x.clamp(0, width as isize - 1) as usize]
        };
        for y in 0..height as isize {
            for x in 0..width as isize {
                let sx = x as f32 + shift.dx;
                let sy = y as f32 + shift.dy;
                let (x0, y0) = (sx.floor() as isize, sy.floor() as isize);
                let (fx, fy) = (sx - sx.floor(), sy - sy.floor());
                let expected = (1.0 - fx) * (1.0 - fy) * at(x0, y0)
                    + fx * (1.0 - fy) * at(x0 + 1, y0)
                    + (1.0 - fx) * fy * at(x0, y0 + 1)
                    + fx * fy * at(x0 + 1, y0 + 1);
                let got = out[y as usize * width + x as usize];
                assert!((got - expected).abs() < 1e-4, "({x}, {y}): {got} vs {expected}");
            }
        }
    }
}
