//! `loupe demo DIR`: a small folder of generated parts with a known answer,
//! for a first run without images of one's own. A woven texture in the
//! MVTec AD layout: good parts to teach, good and defective parts to
//! inspect (dark scratches and light spots), and the defects' masks, so
//! that `loupe bench DIR` scores it too. Deterministic: the same files every
//! time.

use std::path::{Path, PathBuf};

use image::{GrayImage, Luma, RgbImage};

/// Side of a demo part, in pixels.
pub const SIZE: u32 = 256;
/// Good parts to teach.
pub const TRAIN_GOOD: usize = 30;
/// Good parts to inspect.
pub const TEST_GOOD: usize = 10;
/// Defective parts of each kind to inspect.
pub const TEST_DEFECTIVE: usize = 5;

/// What could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {reason}")]
pub struct DemoError {
    /// The file or folder.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// What `write` made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Good parts in `train/good`.
    pub train_good: usize,
    /// Good parts in `test/good`.
    pub test_good: usize,
    /// Defective parts in `test/scratch` and `test/spot`.
    pub test_defective: usize,
}

/// Deterministic noise (xorshift64).
struct Noise(u64);

impl Noise {
    fn unit(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }

    fn between(&mut self, low: f32, high: f32) -> f32 {
        low + (high - low) * self.unit()
    }
}

/// A good part: the woven texture, shifted by up to 8 pixels, with sensor
/// noise and a slight change of lighting.
fn part(noise: &mut Noise) -> RgbImage {
    let (dx, dy) = (noise.between(0.0, 8.0), noise.between(0.0, 8.0));
    let gain = noise.between(0.95, 1.05);
    RgbImage::from_fn(SIZE, SIZE, |x, y| {
        let (fx, fy) = (x as f32 + dx, y as f32 + dy);
        let v = gain
            * (128.0 + 40.0 * (fx * 0.39).sin() * (fy * 0.41).cos() + 20.0 * ((fx + fy) * 0.13).sin())
            + 12.0 * (noise.unit() - 0.5);
        let v = v.clamp(0.0, 255.0) as u8;
        image::Rgb([v, v.saturating_sub(10), v.saturating_add(10)])
    })
}

/// Paints `color` on the part and white on the mask wherever `inside` holds.
fn paint(image: &mut RgbImage, mask: &mut GrayImage, color: [u8; 3], inside: impl Fn(f32, f32) -> bool) {
    for (x, y, pixel) in image.enumerate_pixels_mut() {
        if inside(x as f32, y as f32) {
            *pixel = image::Rgb(color);
            mask.put_pixel(x, y, Luma([255]));
        }
    }
}

/// A dark scratch, 3 pixels wide and 40 to 80 long, at a random place and
/// angle.
fn scratch(image: &mut RgbImage, mask: &mut GrayImage, noise: &mut Noise) {
    let (x0, y0) = (noise.between(50.0, 200.0), noise.between(50.0, 200.0));
    let length = noise.between(40.0, 80.0);
    let angle = noise.between(0.0, std::f32::consts::PI);
    let (ux, uy) = (angle.cos(), angle.sin());
    paint(image, mask, [25, 20, 30], |x, y| {
        let (px, py) = (x - x0, y - y0);
        let along = px * ux + py * uy;
        let across = (px * uy - py * ux).abs();
        (0.0..=length).contains(&along) && across <= 1.5
    });
}

/// A light spot, 5 to 9 pixels in radius.
fn spot(image: &mut RgbImage, mask: &mut GrayImage, noise: &mut Noise) {
    let (cx, cy) = (noise.between(40.0, 216.0), noise.between(40.0, 216.0));
    let radius = noise.between(5.0, 9.0);
    paint(image, mask, [235, 230, 240], |x, y| {
        (x - cx).powi(2) + (y - cy).powi(2) <= radius * radius
    });
}

fn save<P>(image: &image::ImageBuffer<P, Vec<u8>>, path: &Path) -> Result<(), DemoError>
where
    P: image::Pixel<Subpixel = u8> + image::PixelWithColorType,
{
    let error = |reason: String| DemoError {
        path: path.to_path_buf(),
        reason,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| error(e.to_string()))?;
    }
    image
        .save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| error(e.to_string()))
}

/// Writes the demo parts under `dir` (created if needed; files already
/// there with the same names are replaced).
pub fn write(dir: &Path) -> Result<Written, DemoError> {
    let mut noise = Noise(0x5EED_1005_E0F1_AB1E);
    for index in 0..TRAIN_GOOD {
        save(&part(&mut noise), &dir.join(format!("train/good/{index:03}.png")))?;
    }
    for index in 0..TEST_GOOD {
        save(&part(&mut noise), &dir.join(format!("test/good/{index:03}.png")))?;
    }
    type Draw = fn(&mut RgbImage, &mut GrayImage, &mut Noise);
    let kinds: [(&str, Draw); 2] = [("scratch", scratch), ("spot", spot)];
    for (kind, draw) in kinds {
        for index in 0..TEST_DEFECTIVE {
            let mut image = part(&mut noise);
            let mut mask = GrayImage::new(SIZE, SIZE);
            draw(&mut image, &mut mask, &mut noise);
            save(&image, &dir.join(format!("test/{kind}/{index:03}.png")))?;
            save(
                &mask,
                &dir.join(format!("ground_truth/{kind}/{index:03}_mask.png")),
            )?;
        }
    }
    Ok(Written {
        train_good: TRAIN_GOOD,
        test_good: TEST_GOOD,
        test_defective: 2 * TEST_DEFECTIVE,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_mvtec_layout_with_a_mask_per_defect() {
        let dir = tempfile::tempdir().unwrap();
        let written = write(dir.path()).unwrap();
        assert_eq!(written.test_defective, 10);
        let count = |sub: &str| std::fs::read_dir(dir.path().join(sub)).unwrap().count();
        assert_eq!(count("train/good"), TRAIN_GOOD);
        assert_eq!(count("test/good"), TEST_GOOD);
        assert_eq!(count("test/scratch"), TEST_DEFECTIVE);
        assert_eq!(count("ground_truth/spot"), TEST_DEFECTIVE);
        let mask = image::open(dir.path().join("ground_truth/scratch/000_mask.png"))
            .unwrap()
            .to_luma8();
        let marked = mask.pixels().filter(|p| p.0[0] == 255).count();
        assert!((100..1000).contains(&marked), "a scratch covers {marked} pixels");
    }

    #[test]
    fn the_same_files_every_time() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write(a.path()).unwrap();
        write(b.path()).unwrap();
        for file in [
            "train/good/007.png",
            "test/spot/004.png",
            "ground_truth/spot/004_mask.png",
        ] {
            assert_eq!(
                std::fs::read(a.path().join(file)).unwrap(),
                std::fs::read(b.path().join(file)).unwrap(),
                "{file}"
            );
        }
    }
}
