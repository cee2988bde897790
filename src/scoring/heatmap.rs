//! Heatmaps: the anomaly map as bytes for machines (with the scale that maps
//! bytes back to scores), and as coloured PNGs, alone or blended over the
//! frame, for people. One byte scale per recipe (the threshold is byte
//! 127.5), so colours mean the same on every frame.
//!
//! The colour scale for people ([`colorize`]) is the turbo map split at the
//! threshold: scores from 0 up to the threshold run from dark blue through
//! cyan and green to yellow-green (turbo 0 to 0.62), and above the threshold
//! the colour jumps to orange (turbo 0.75) and runs to dark red at twice
//! the threshold and beyond. Yellow-green to orange is the threshold: every
//! pixel above it is plainly hot, one just under it is not. In overlays
//! ([`blend_by_heat`]) the cool part lies lightly over the frame so that the
//! part stays visible, and the hot part covers it strongly.

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

/// The highest byte at or below the threshold (byte 127.5).
pub const THRESHOLD_BYTE: u8 = 127;
/// Turbo position of the threshold from below: yellow-green.
const COOL_END: f64 = 0.62;
/// Turbo position just above the threshold: orange.
const HOT_START: f64 = 0.75;
/// Overlay opacity of a zero score, rising to [`COOL_ALPHA_MAX`] at the
/// threshold.
const COOL_ALPHA_MIN: f64 = 0.15;
/// Overlay opacity just under the threshold.
const COOL_ALPHA_MAX: f64 = 0.4;
/// Overlay opacity above the threshold.
const HOT_ALPHA: f64 = 0.7;

/// The turbo position of a heatmap byte on the scale for people.
fn scale_position(byte: u8) -> f64 {
    if byte <= THRESHOLD_BYTE {
        COOL_END * f64::from(byte) / f64::from(THRESHOLD_BYTE)
    } else {
        let above = f64::from(byte - THRESHOLD_BYTE - 1) / f64::from(u8::MAX - THRESHOLD_BYTE - 1);
        HOT_START + (1.0 - HOT_START) * above
    }
}

/// The colour of every heatmap byte on the scale for people.
fn people_table() -> &'static [[u8; 3]; 256] {
    static TABLE: std::sync::OnceLock<[[u8; 3]; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let turbo = turbo_table();
        let mut table = [[0; 3]; 256];
        for (byte, rgb) in table.iter_mut().enumerate() {
            let position = scale_position(byte as u8);
            *rgb = turbo[(position * 255.0).round() as usize];
        }
        table
    })
}

/// Overlay opacity of every heatmap byte, in 1/256.
fn alpha_table() -> &'static [u16; 256] {
    static TABLE: std::sync::OnceLock<[u16; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = [0; 256];
        for (byte, alpha) in table.iter_mut().enumerate() {
            let opacity = if byte <= usize::from(THRESHOLD_BYTE) {
                COOL_ALPHA_MIN + (COOL_ALPHA_MAX - COOL_ALPHA_MIN) * byte as f64 / f64::from(THRESHOLD_BYTE)
            } else {
                HOT_ALPHA
            };
            *alpha = (opacity * 256.0).round() as u16;
        }
        table
    })
}

/// The colour of `byte` on the scale for people, for legends.
pub fn color_of(byte: u8) -> [u8; 3] {
    people_table()[usize::from(byte)]
}

/// Colours heatmap bytes on the scale for people into packed RGB8.
pub fn colorize(bytes: &[u8], out: &mut Vec<u8>) {
    let table = people_table();
    out.clear();
    out.extend(bytes.iter().flat_map(|&b| table[usize::from(b)]));
}

/// Blends the coloured `heat` over `base` (both packed RGB8 of the same
/// size), each pixel as opaque as its heatmap byte says: lightly below the
/// threshold, strongly above it.
pub fn blend_by_heat(base: &[u8], heat: &[u8], bytes: &[u8], out: &mut Vec<u8>) {
    let alphas = alpha_table();
    out.clear();
    out.extend(
        base.chunks_exact(3)
            .zip(heat.chunks_exact(3))
            .zip(bytes)
            .flat_map(|((b, h), &byte)| {
                let a = alphas[usize::from(byte)];
                let mix = |b: u8, h: u8| ((u16::from(b) * (256 - a) + u16::from(h) * a) >> 8) as u8;
                [mix(b[0], h[0]), mix(b[1], h[1]), mix(b[2], h[2])]
            }),
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
    fn the_threshold_is_where_the_colour_turns_hot() {
        let red = |byte: u8| i32::from(color_of(byte)[0]) - i32::from(color_of(byte)[2]);
        let [r, g, _] = color_of(THRESHOLD_BYTE);
        assert!(
            r > 150 && g > 200,
            "the threshold is yellow-green: {:?}",
            color_of(THRESHOLD_BYTE)
        );
        let [r, g, b] = color_of(THRESHOLD_BYTE + 1);
        assert!(
            r > 220 && g < 190 && b < 80,
            "just above it is orange: {:?}",
            [r, g, b]
        );
        // The step at the threshold is bigger than any step below it.
        let distance = |a: [u8; 3], b: [u8; 3]| {
            a.iter()
                .zip(b)
                .map(|(&x, y)| (i32::from(x) - i32::from(y)).abs())
                .sum::<i32>()
        };
        let step = distance(color_of(THRESHOLD_BYTE), color_of(THRESHOLD_BYTE + 1));
        for byte in 0..THRESHOLD_BYTE {
            assert!(distance(color_of(byte), color_of(byte + 1)) < step, "byte {byte}");
        }
        // Everything above the threshold is red more than blue; low scores are blue.
        for byte in THRESHOLD_BYTE + 1..=255 {
            assert!(red(byte) > 100, "byte {byte}: {:?}", color_of(byte));
        }
        assert!(red(10) < -50, "low scores are blue: {:?}", color_of(10));
    }

    #[test]
    fn overlays_cover_the_frame_lightly_below_the_threshold_and_strongly_above() {
        let mut out = Vec::new();
        let base = [200, 200, 200, 200, 200, 200];
        let heat = [0, 0, 0, 0, 0, 0];
        blend_by_heat(&base, &heat, &[0, 200], &mut out);
        assert!(out[0] > 160, "a zero score keeps most of the frame: {out:?}");
        assert!(out[3] < 70, "a hot pixel covers it: {out:?}");
        assert_eq!(out.len(), 6);
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
