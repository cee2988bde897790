//! Turns patch distances into an anomaly map: bilinear upsampling from the
//! feature grid to the analysis size (fast_image_resize, SIMD), a separable
//! Gaussian blur, and the inspection mask.

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

/// Reusable state for building maps: the resizer, blur kernel and buffers.
#[derive(Debug, Default)]
pub struct MapBuilder {
    resizer: Resizer,
    kernel: Vec<f32>,
    kernel_sigma: f32,
    padded: Vec<f32>,
    transposed: Vec<f32>,
}

impl MapBuilder {
    /// Builds `out` (`width` x `height`) from `patch_scores` on a
    /// `grid_width` x `grid_height` grid: bilinear upsample (pixel centres
    /// aligned, as torch's `align_corners=False`), Gaussian blur with
    /// `sigma` (0 skips it), then multiplies by `mask` if given
    /// (`width` x `height`, 1 inspect, 0 ignore).
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
        resize_f32(
            &mut self.resizer,
            patch_scores,
            grid_width,
            grid_height,
            &mut out.data,
            width,
            height,
        );
        if sigma > 0.0 {
            self.blur(&mut out.data, width, height, sigma);
        }
        if let Some(mask) = mask {
            for (v, m) in out.data.iter_mut().zip(mask) {
                *v *= m;
            }
        }
    }

    /// Separable Gaussian blur in place, borders clamped (replicated), with
    /// the kernel PatchCore uses: 2 * round(4 sigma) + 1 taps. Both passes run
    /// along rows (the second on the transposed map) so the inner loop is an
    /// axpy over a contiguous row, which vectorises.
    fn blur(&mut self, data: &mut [f32], width: usize, height: usize, sigma: f32) {
        if self.kernel.is_empty() || self.kernel_sigma != sigma {
            self.kernel = gaussian_kernel(sigma);
            self.kernel_sigma = sigma;
        }
        self.transposed.resize(width * height, 0.0);
        blur_rows(data, width, &self.kernel, &mut self.padded);
        transpose(data, width, height, &mut self.transposed);
        blur_rows(&mut self.transposed, height, &self.kernel, &mut self.padded);
        transpose(&self.transposed, height, width, data);
    }
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
    let radius = (4.0 * sigma + 0.5) as usize;
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
        let mut data = vec![0.0; 41 * 41];
        data[20 * 41 + 20] = 1.0;
        builder.blur(&mut data, 41, 41, 2.0);
        let sum: f32 = data.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "{sum}");
        assert!((data[20 * 41 + 18] - data[20 * 41 + 22]).abs() < 1e-7);
        assert!((data[18 * 41 + 20] - data[20 * 41 + 18]).abs() < 1e-7);
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
