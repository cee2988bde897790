//! Turns patch distances into an anomaly map: bilinear upsampling from the
//! feature grid to the analysis size (fast_image_resize, SIMD), a separable
//! Gaussian blur, and the inspection mask. Both linear steps are folded into
//! one short operator per axis, built once per size by running them on unit
//! impulses ([`MapBuilder`]); [`resized_then_blurred`] is the plain way, kept
//! as the reference the tests and benches compare with.

use fast_image_resize::images::{Image as ResizeImage, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

/// Blur sigma, in map pixels, at a 256 x 256 map (as PatchCore uses);
/// scaled with the map's size.
pub const SIGMA_AT_256: f32 = 4.0;

/// The sigma for a `width` x `height` map: [`SIGMA_AT_256`] scaled by the
/// map's linear size relative to 256 x 256.
pub fn sigma_for(width: usize, height: usize) -> f32 {
    SIGMA_AT_256 * ((width * height) as f32).sqrt() / 256.0
}

/// An anomaly map: one score per pixel of the analysis grid (the model
/// input size), row-major.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AnomalyMap {
    /// Pixels across.
    pub width: usize,
    /// Pixels down.
    pub height: usize,
    /// Scores, row-major.
    pub data: Vec<f32>,
}

impl AnomalyMap {
    /// The highest score (0 for an empty map).
    pub fn max(&self) -> f32 {
        self.data.iter().copied().fold(0.0, f32::max)
    }
}

/// Reusable state for building maps: the resizer and each axis's operator.
#[derive(Debug, Default)]
pub struct MapBuilder {
    resizer: Resizer,
    across: Axis,
    down: Axis,
    /// Grid rows, each upsampled and blurred across.
    rows: Vec<f32>,
}

impl MapBuilder {
    /// Builds `out` (`width` x `height`) from `patch_scores` on a
    /// `grid_width` x `grid_height` grid: bilinear upsample (pixel centres
    /// aligned, as torch's `align_corners=False`), Gaussian blur with
    /// `sigma` (0 skips it), then multiplies by `mask` if given
    /// (`width` x `height`, 1 inspect, 0 ignore).
    ///
    /// Upsampling and blur are both linear and separable, so each axis is
    /// one operator (an [`Axis`]: a short band of grid cells per pixel),
    /// applied across each grid row, then down the columns. A pixel then
    /// costs the cells under its blur (about 2 x 4 sigma / stride + 2)
    /// instead of the blur's taps (2 x 4 sigma + 1): at 1024 x 1024 from a
    /// 128 x 128 grid, 18 instead of 129 per axis.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        &mut self,
        patch_scores: &[f32],
        grid_width: usize,
        grid_height: usize,
        width: usize,
        height: usize,
        sigma: f32,
        mask: Option<&[f32]>,
        out: &mut AnomalyMap,
    ) {
        out.width = width;
        out.height = height;
        out.data.clear();
        out.data.resize(width * height, 0.0);
        self.across.prepare(&mut self.resizer, grid_width, width, sigma);
        self.down.prepare(&mut self.resizer, grid_height, height, sigma);
        self.rows.resize(grid_height * width, 0.0);
        for (cells, row) in patch_scores
            .chunks_exact(grid_width)
            .zip(self.rows.chunks_exact_mut(width))
        {
            self.across.apply_to_row(cells, row);
        }
        self.down.apply_down(&self.rows, width, &mut out.data);
        if let Some(mask) = mask {
            for (v, m) in out.data.iter_mut().zip(mask) {
                *v *= m;
            }
        }
    }
}

/// One axis of the map's operator: `from` grid cells to `to` pixels,
/// upsampled and blurred, as `band` weights per pixel starting at its
/// first cell. Built by running the upsampling ([`resize_f32`]) and the
/// blur on each cell's unit impulse, so it is the same arithmetic as
/// resizing and blurring the whole map, up to rounding.
#[derive(Debug, Default)]
struct Axis {
    /// (from, to, sigma's bits) of the operator held.
    key: Option<(usize, usize, u32)>,
    /// First cell of each pixel's band.
    starts: Vec<usize>,
    band: usize,
    /// `to` x `band`.
    weights: Vec<f32>,
    /// Buffers of the last build, kept so that frames of varying sizes
    /// (global keeps each frame's aspect ratio) reuse them.
    dense: Vec<f32>,
    impulse: Vec<f32>,
    padded: Vec<f32>,
}

impl Axis {
    /// Makes the operator for `from` cells to `to` pixels at `sigma` (0: no
    /// blur), unless it is the one held.
    fn prepare(&mut self, resizer: &mut Resizer, from: usize, to: usize, sigma: f32) {
        let key = (from, to, sigma.to_bits());
        if self.key == Some(key) {
            return;
        }
        // Column `j` of the dense operator: cell j's impulse, upsampled and
        // blurred.
        let kernel = (sigma > 0.0).then(|| gaussian_kernel(sigma));
        let Self {
            starts,
            band,
            weights,
            dense,
            impulse,
            padded,
            ..
        } = self;
        dense.clear();
        dense.resize(from * to, 0.0);
        impulse.clear();
        impulse.resize(from, 0.0);
        for (j, column) in dense.chunks_exact_mut(to).enumerate() {
            impulse.fill(0.0);
            impulse[j] = 1.0;
            resize_f32(resizer, impulse, from, 1, column, to, 1);
            if let Some(kernel) = &kernel {
                blur_rows(column, to, kernel, padded);
            }
        }
        // Each pixel's band: its first and last cell of nonzero weight,
        // found once; every band is then widened to the widest (kept inside
        // the cells).
        let weight = |i: usize, j: usize| dense[j * to + i];
        starts.clear();
        *band = 1;
        for i in 0..to {
            let first = (0..from).find(|&j| weight(i, j) != 0.0).unwrap_or(0);
            let last = (first..from)
                .rev()
                .find(|&j| weight(i, j) != 0.0)
                .unwrap_or(first);
            starts.push(first);
            *band = (*band).max(last - first + 1);
        }
        weights.clear();
        for (i, start) in starts.iter_mut().enumerate() {
            *start = (*start).min(from - *band);
            weights.extend((*start..*start + *band).map(|j| weight(i, j)));
        }
        self.key = Some(key);
    }

    /// `row` (`to` pixels) from `cells` (`from` cells).
    fn apply_to_row(&self, cells: &[f32], row: &mut [f32]) {
        for ((out, &start), weights) in row
            .iter_mut()
            .zip(&self.starts)
            .zip(self.weights.chunks_exact(self.band))
        {
            *out = weights.iter().zip(&cells[start..]).map(|(w, c)| w * c).sum();
        }
    }

    /// `out` (`to` rows of `width`) from `rows` (`from` rows of `width`),
    /// each out row a weighted sum of whole rows (contiguous, so it
    /// vectorises).
    fn apply_down(&self, rows: &[f32], width: usize, out: &mut [f32]) {
        for ((line, &start), weights) in out
            .chunks_exact_mut(width)
            .zip(&self.starts)
            .zip(self.weights.chunks_exact(self.band))
        {
            line.fill(0.0);
            for (&w, source) in weights.iter().zip(rows[start * width..].chunks_exact(width)) {
                for (o, &v) in line.iter_mut().zip(source) {
                    *o += w * v;
                }
            }
        }
    }
}

/// Separable blur of a `width` x `height` plane in place with `kernel`
/// (odd length, centred), borders clamped (replicated): along rows, then
/// along columns on the transposed plane, so both passes are axpys over
/// contiguous rows, which vectorise.
pub fn separable_blur(data: &mut [f32], width: usize, height: usize, kernel: &[f32]) {
    let (mut padded, mut transposed) = (Vec::new(), vec![0.0; width * height]);
    blur_rows(data, width, kernel, &mut padded);
    transpose(data, width, height, &mut transposed);
    blur_rows(&mut transposed, height, kernel, &mut padded);
    transpose(&transposed, height, width, data);
}

/// Bilinear resize of an f32 plane with fast_image_resize.
pub fn resize_f32(
    resizer: &mut Resizer,
    src: &[f32],
    src_width: usize,
    src_height: usize,
    dst: &mut [f32],
    dst_width: usize,
    dst_height: usize,
) {
    if (src_width, src_height) == (dst_width, dst_height) {
        dst.copy_from_slice(src);
        return;
    }
    let source = ImageRef::new(
        src_width as u32,
        src_height as u32,
        bytemuck::cast_slice(src),
        PixelType::F32,
    )
    .expect("source plane matches its size; this is a bug");
    let mut target = ResizeImage::from_slice_u8(
        dst_width as u32,
        dst_height as u32,
        bytemuck::cast_slice_mut(dst),
        PixelType::F32,
    )
    .expect("target plane matches its size; this is a bug");
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    resizer
        .resize(&source, &mut target, &options)
        .expect("same pixel type on both sides; this is a bug");
}

/// Normalised Gaussian kernel of 2 * round(4 sigma) + 1 taps.
fn gaussian_kernel(sigma: f32) -> Vec<f32> {
    gaussian_kernel_of_radius(sigma, (4.0 * sigma + 0.5) as usize)
}

/// Normalised Gaussian kernel of 2 * `radius` + 1 taps.
pub fn gaussian_kernel_of_radius(sigma: f32, radius: usize) -> Vec<f32> {
    let mut kernel: Vec<f32> = (0..=2 * radius)
        .map(|i| {
            let x = i as f32 - radius as f32;
            (-x * x / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    let sum: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= sum);
    kernel
}

fn blur_rows(data: &mut [f32], width: usize, kernel: &[f32], padded: &mut Vec<f32>) {
    let radius = kernel.len() / 2;
    for row in data.chunks_exact_mut(width) {
        padded.clear();
        padded.extend(std::iter::repeat_n(row[0], radius));
        padded.extend_from_slice(row);
        padded.extend(std::iter::repeat_n(row[width - 1], radius));
        row.fill(0.0);
        for (tap, &k) in kernel.iter().enumerate() {
            for (out, &v) in row.iter_mut().zip(&padded[tap..tap + width]) {
                *out += k * v;
            }
        }
    }
}

fn transpose(src: &[f32], width: usize, height: usize, dst: &mut [f32]) {
    const TILE: usize = 16;
    for y0 in (0..height).step_by(TILE) {
        for x0 in (0..width).step_by(TILE) {
            for y in y0..(y0 + TILE).min(height) {
                for x in x0..(x0 + TILE).min(width) {
                    dst[x * height + y] = src[y * width + x];
                }
            }
        }
    }
}

/// The reference for [`MapBuilder::build`] (without the mask), and how
/// maps were built before its per-axis operators: the whole map upsampled,
/// then blurred along rows and columns. The tests and `benches/engine.rs`
/// compare the two.
pub fn resized_then_blurred(
    grid: &[f32],
    grid_width: usize,
    grid_height: usize,
    width: usize,
    height: usize,
    sigma: f32,
) -> Vec<f32> {
    let mut data = vec![0.0; width * height];
    resize_f32(
        &mut Resizer::new(),
        grid,
        grid_width,
        grid_height,
        &mut data,
        width,
        height,
    );
    if sigma > 0.0 {
        separable_blur(&mut data, width, height, &gaussian_kernel(sigma));
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_is_normalised_and_patchcore_sized() {
        let kernel = gaussian_kernel(4.0);
        assert_eq!(kernel.len(), 33);
        assert!((kernel.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(kernel[16] > kernel[15] && kernel[15] == kernel[17]);
    }

    #[test]
    fn a_constant_map_stays_constant() {
        let mut builder = MapBuilder::default();
        let mut map = AnomalyMap::default();
        builder.build(&[2.5; 16], 4, 4, 64, 48, 3.0, None, &mut map);
        assert_eq!((map.width, map.height), (64, 48));
        assert!(map.data.iter().all(|v| (v - 2.5).abs() < 1e-4));
    }

    #[test]
    fn upsampling_keeps_the_peak_where_it_was() {
        // A single hot cell at grid (2, 1) of a 4 x 4 grid, upsampled to
        // 32 x 32: the peak is over that cell (pixels 16..24 x 8..16).
        let mut grid = [0.0; 16];
        grid[4 + 2] = 1.0;
        let mut builder = MapBuilder::default();
        let mut map = AnomalyMap::default();
        builder.build(&grid, 4, 4, 32, 32, 1.0, None, &mut map);
        let (index, _) =
            map.data.iter().enumerate().fold(
                (0, f32::MIN),
                |best, (i, &v)| if v > best.1 { (i, v) } else { best },
            );
        let (x, y) = (index % 32, index / 32);
        assert!((16..24).contains(&x) && (8..16).contains(&y), "peak at {x},{y}");
    }

    #[test]
    fn blur_spreads_a_spike_symmetrically_and_keeps_its_mass() {
        let mut builder = MapBuilder::default();
        let mut spike = vec![0.0; 41 * 41];
        spike[20 * 41 + 20] = 1.0;
        let mut map = AnomalyMap::default();
        builder.build(&spike, 41, 41, 41, 41, 2.0, None, &mut map);
        let data = &map.data;
        let sum: f32 = data.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "{sum}");
        assert!((data[20 * 41 + 18] - data[20 * 41 + 22]).abs() < 1e-7);
        assert!((data[18 * 41 + 20] - data[20 * 41 + 18]).abs() < 1e-7);
    }

    #[test]
    fn the_axis_operators_give_the_map_of_upsampling_then_blurring() {
        let mut state = 7u64;
        let mut builder = MapBuilder::default();
        let mut map = AnomalyMap::default();
        // Global's 32 x 32 grid at 256 x 256, an aspect-kept grid, aligned's
        // 128 x 128 at 1024 x 1024, one axis not resized, and no blur; each
        // twice, so a held operator is reused.
        for (gw, gh, w, h) in [
            (32, 32, 256, 256),
            (40, 22, 320, 176),
            (128, 128, 1024, 1024),
            (16, 24, 16, 192),
            (32, 32, 256, 256),
            (40, 22, 320, 176),
        ] {
            for sigma in [sigma_for(w, h), 0.0] {
                let grid: Vec<f32> = (0..gw * gh)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        (state >> 40) as f32 / (1u64 << 20) as f32
                    })
                    .collect();
                builder.build(&grid, gw, gh, w, h, sigma, None, &mut map);
                let expected = resized_then_blurred(&grid, gw, gh, w, h, sigma);
                let worst = map
                    .data
                    .iter()
                    .zip(&expected)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(
                    worst < 1e-4,
                    "{gw}x{gh} to {w}x{h}, sigma {sigma}: off by {worst}"
                );
            }
        }
    }

    #[test]
    fn the_mask_zeroes_ignored_pixels() {
        let mut builder = MapBuilder::default();
        let mut map = AnomalyMap::default();
        let mask: Vec<f32> = (0..64).map(|i| if i % 8 < 4 { 1.0 } else { 0.0 }).collect();
        builder.build(&[1.0; 4], 2, 2, 8, 8, 0.0, Some(&mask), &mut map);
        for (v, m) in map.data.iter().zip(&mask) {
            assert_eq!(*v, *m);
        }
    }

    #[test]
    fn sigma_scales_with_size() {
        assert_eq!(sigma_for(256, 256), 4.0);
        assert_eq!(sigma_for(512, 512), 8.0);
    }
}
