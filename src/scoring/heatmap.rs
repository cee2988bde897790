//! Heatmaps: the anomaly map as bytes for machines (with the scale that maps
//! bytes back to scores), and as turbo-coloured PNGs, alone or blended over
//! the frame, for people. One byte scale per recipe: the threshold sits in
//! the middle of the colour map, so colours mean the same on every frame.

use std::io::Cursor;

use image::ImageEncoder;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};

/// Score per byte value for a recipe with `threshold`: 255 is twice the
/// threshold, so the threshold is byte 127.5.
pub fn byte_scale(threshold: f32) -> f32 {
    (2.0 * threshold).max(f32::MIN_POSITIVE) / 255.0
}

/// The size of a heatmap for a `width` x `height` area whose longer side is
/// at most `max_size` (0: no limit), keeping the aspect ratio.
pub fn output_size(width: usize, height: usize, max_size: usize) -> (usize, usize) {
    let longest = width.max(height);
    if max_size == 0 || longest <= max_size {
        return (width, height);
    }
    let scale = max_size as f64 / longest as f64;
    let fit = |v: usize| ((v as f64 * scale).round() as usize).max(1);
    (fit(width), fit(height))
}

/// Quantises scores to bytes: round(score / scale), clamped to 0..=255.
pub fn to_bytes(scores: &[f32], scale: f32, out: &mut Vec<u8>) {
    out.clear();
    out.extend(
        scores
            .iter()
            .map(|&v| (v / scale).round().clamp(0.0, 255.0) as u8),
    );
}

/// The turbo colour map (Google, 2019) as a 256-entry table, from its
/// published polynomial approximation.
fn turbo_table() -> &'static [[u8; 3]; 256] {
    static TABLE: std::sync::OnceLock<[[u8; 3]; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let poly = |x: f64, c: [f64; 6]| {
            let v = c[0] + x * (c[1] + x * (c[2] + x * (c[3] + x * (c[4] + x * c[5]))));
            (v.clamp(0.0, 1.0) * 255.0).round() as u8
        };
        let mut table = [[0; 3]; 256];
        for (i, rgb) in table.iter_mut().enumerate() {
            let x = i as f64 / 255.0;
            *rgb = [
                poly(
                    x,
                    [
                        0.135_721_38,
                        4.615_392_6,
                        -42.660_322_58,
                        132.131_082_34,
                        -152.942_393_96,
                        59.286_379_43,
                    ],
                ),
                poly(
                    x,
                    [
                        0.091_402_61,
                        2.194_188_39,
                        4.842_966_58,
                        -14.185_033_33,
                        4.277_298_57,
                        2.829_566_04,
                    ],
                ),
                poly(
                    x,
                    [
                        0.106_673_3,
                        12.641_946_08,
                        -60.582_048_36,
                        110.362_767_71,
                        -89.903_109_12,
                        27.348_249_73,
                    ],
                ),
            ];
        }
        table
    })
}

/// Colours bytes with the turbo map into packed RGB8.
pub fn colorize(bytes: &[u8], out: &mut Vec<u8>) {
    let table = turbo_table();
    out.clear();
    out.extend(bytes.iter().flat_map(|&b| table[usize::from(b)]));
}

/// Blends `heat` over `base` (both packed RGB8 of the same size):
/// out = base * (1 - alpha) + heat * alpha.
pub fn blend(base: &[u8], heat: &[u8], alpha: f32, out: &mut Vec<u8>) {
    let a = (alpha.clamp(0.0, 1.0) * 256.0) as u16;
    out.clear();
    out.extend(
        base.iter()
            .zip(heat)
            .map(|(&b, &h)| ((u16::from(b) * (256 - a) + u16::from(h) * a) >> 8) as u8),
    );
}

/// Encodes packed RGB8 as PNG (fast compression: heatmaps are sent per
/// frame).
pub fn encode_png(rgb: &[u8], width: usize, height: usize) -> Result<Vec<u8>, image::ImageError> {
    let mut png = Vec::new();
    PngEncoder::new_with_quality(Cursor::new(&mut png), CompressionType::Fast, FilterType::Sub).write_image(
        rgb,
        width as u32,
        height as u32,
        image::ExtendedColorType::Rgb8,
    )?;
    Ok(png)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_map_back_to_scores_with_the_scale() {
        let scale = byte_scale(2.0);
        let mut bytes = Vec::new();
        to_bytes(&[0.0, 1.0, 3.0, 4.0, 9.0], scale, &mut bytes);
        assert_eq!(bytes, [0, 64, 191, 255, 255]);
        assert!((f32::from(bytes[2]) * scale - 3.0).abs() < scale);
    }

    #[test]
    fn turbo_runs_from_dark_blue_to_dark_red() {
        let table = turbo_table();
        assert!(table[30][2] > 2 * table[30][0], "{:?}", table[30]);
        assert!(table[255][0] > table[255][2], "{:?}", table[255]);
        assert!(table[128][1] > 200, "{:?}", table[128]);
    }

    #[test]
    fn output_size_keeps_the_aspect_ratio() {
        assert_eq!(output_size(1000, 500, 0), (1000, 500));
        assert_eq!(output_size(1000, 500, 200), (200, 100));
        assert_eq!(output_size(100, 50, 200), (100, 50));
    }

    #[test]
    fn blend_weights_the_two_images() {
        let mut out = Vec::new();
        blend(&[0, 200], &[200, 0], 0.25, &mut out);
        assert_eq!(out, [50, 150]);
    }

    #[test]
    fn png_round_trips() {
        let mut rgb = Vec::new();
        colorize(&[0, 128, 255, 64], &mut rgb);
        let png = encode_png(&rgb, 2, 2).unwrap();
        let decoded = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(decoded.as_raw(), &rgb);
    }
}
