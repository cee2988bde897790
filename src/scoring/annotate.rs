//! Marks on heatmaps for people: the outline of every defect region and a
//! stamped verdict with the score against the threshold, drawn on the
//! coloured PNG or the overlay (never on the raw map for machines).

use image::{Rgb, RgbImage};
use imageproc::drawing::draw_filled_rect_mut;
use imageproc::rect::Rect;

/// Outline colour: white, visible on every colour of the scale.
const OUTLINE: Rgb<u8> = Rgb([255, 255, 255]);
/// Stamp background for PASS: green.
const PASS_BACKGROUND: Rgb<u8> = Rgb([20, 120, 40]);
/// Stamp background for FAIL: red.
const FAIL_BACKGROUND: Rgb<u8> = Rgb([190, 20, 20]);
/// Stamp text colour.
const TEXT: Rgb<u8> = Rgb([255, 255, 255]);
/// Glyph cell of the bitmap font, in pixels.
const GLYPH: u32 = 8;

/// A rectangle in the heatmap's pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outline {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width, at least 1.
    pub width: u32,
    /// Height, at least 1.
    pub height: u32,
}

/// What the stamp says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stamp {
    /// Whether the part failed.
    pub failed: bool,
    /// Its score.
    pub score: f32,
    /// The threshold it was judged against.
    pub threshold: f32,
}

impl Stamp {
    /// `FAIL 0.482 > 0.350` or `PASS 0.120 <= 0.350`.
    pub fn text(&self) -> String {
        let (verdict, relation) = if self.failed {
            ("FAIL", ">")
        } else {
            ("PASS", "<=")
        };
        format!(
            "{verdict} {} {relation} {}",
            significant(self.score),
            significant(self.threshold)
        )
    }
}

/// Three significant digits, without an exponent for the scores anomaly
/// maps have.
fn significant(value: f32) -> String {
    let magnitude = value.abs().max(f32::MIN_POSITIVE).log10().floor() as i32;
    let decimals = (2 - magnitude).clamp(0, 6) as usize;
    format!("{value:.decimals$}")
}

/// Draws `outlines` (two pixels wide where the image allows) and `stamp`
/// on the packed RGB8 image `rgb` of `width` x `height`.
pub fn annotate(
    rgb: Vec<u8>,
    width: u32,
    height: u32,
    outlines: &[Outline],
    stamp: Option<Stamp>,
) -> Vec<u8> {
    let Some(mut image) = RgbImage::from_raw(width, height, rgb) else {
        unreachable!("the heatmap buffer holds width x height RGB pixels; this is a bug")
    };
    for outline in outlines {
        draw_outline(&mut image, outline);
    }
    if let Some(stamp) = stamp {
        draw_stamp(&mut image, &stamp);
    }
    image.into_raw()
}

fn draw_outline(image: &mut RgbImage, outline: &Outline) {
    let (width, height) = image.dimensions();
    if outline.x >= width || outline.y >= height {
        return;
    }
    let w = outline.width.clamp(1, width - outline.x);
    let h = outline.height.clamp(1, height - outline.y);
    draw_hollow_rect_mut(image, Rect::at(outline.x as i32, outline.y as i32).of_size(w, h));
    if w > 2 && h > 2 {
        let inner = Rect::at(outline.x as i32 + 1, outline.y as i32 + 1).of_size(w - 2, h - 2);
        draw_hollow_rect_mut(image, inner);
    }
}

/// Draws the imageproc rectangle in the outline colour.
fn draw_hollow_rect_mut(image: &mut RgbImage, rect: Rect) {
    imageproc::drawing::draw_hollow_rect_mut(image, rect, OUTLINE);
}

/// The stamp's glyph size for an image `width` pixels across: 1x under
/// 400 pixels, 2x to 1000, 3x above.
fn glyph_scale(width: u32) -> u32 {
    match width {
        0..400 => 1,
        400..1000 => 2,
        _ => 3,
    }
}

fn draw_stamp(image: &mut RgbImage, stamp: &Stamp) {
    let text = stamp.text();
    let scale = glyph_scale(image.width());
    let cell = GLYPH * scale;
    let pad = 2 * scale;
    let (width, height) = image.dimensions();
    let banner_w = (text.len() as u32 * cell + 2 * pad).min(width);
    let banner_h = (cell + 2 * pad).min(height);
    let background = if stamp.failed {
        FAIL_BACKGROUND
    } else {
        PASS_BACKGROUND
    };
    draw_filled_rect_mut(
        image,
        Rect::at(0, 0).of_size(banner_w.max(1), banner_h.max(1)),
        background,
    );
    for (index, character) in text.bytes().enumerate() {
        let left = pad + index as u32 * cell;
        if left + cell > width || pad + cell > height {
            break;
        }
        draw_glyph(image, character, left, pad, scale);
    }
}

/// Draws one ASCII character of the 8x8 public-domain font at (`left`,
/// `top`), each font pixel `scale` x `scale`.
fn draw_glyph(image: &mut RgbImage, character: u8, left: u32, top: u32, scale: u32) {
    let Some(rows) = font8x8::legacy::BASIC_LEGACY.get(usize::from(character)) else {
        return;
    };
    for (row, bits) in rows.iter().enumerate() {
        for column in 0..GLYPH {
            // Bit 0 is the leftmost pixel.
            if bits >> column & 1 == 1 {
                let x = left + column * scale;
                let y = top + row as u32 * scale;
                draw_filled_rect_mut(image, Rect::at(x as i32, y as i32).of_size(scale, scale), TEXT);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gray(width: u32, height: u32) -> Vec<u8> {
        vec![90; (width * height * 3) as usize]
    }

    fn pixel(rgb: &[u8], width: u32, x: u32, y: u32) -> [u8; 3] {
        let at = ((y * width + x) * 3) as usize;
        [rgb[at], rgb[at + 1], rgb[at + 2]]
    }

    #[test]
    fn the_stamp_states_verdict_score_and_threshold() {
        let fail = Stamp {
            failed: true,
            score: 0.4821,
            threshold: 0.35,
        };
        assert_eq!(fail.text(), "FAIL 0.482 > 0.350");
        let pass = Stamp {
            failed: false,
            score: 12.34,
            threshold: 20.0,
        };
        assert_eq!(pass.text(), "PASS 12.3 <= 20.0");
    }

    #[test]
    fn outlines_frame_the_region_and_leave_its_inside() {
        let rgb = annotate(
            gray(64, 64),
            64,
            64,
            &[Outline {
                x: 10,
                y: 20,
                width: 20,
                height: 10,
            }],
            None,
        );
        assert_eq!(pixel(&rgb, 64, 10, 20), [255; 3]);
        assert_eq!(pixel(&rgb, 64, 29, 29), [255; 3]);
        assert_eq!(pixel(&rgb, 64, 11, 21), [255; 3], "two pixels wide");
        assert_eq!(pixel(&rgb, 64, 20, 25), [90; 3], "inside untouched");
        assert_eq!(pixel(&rgb, 64, 40, 40), [90; 3], "outside untouched");
    }

    #[test]
    fn outlines_past_the_edge_are_clipped() {
        let rgb = annotate(
            gray(16, 16),
            16,
            16,
            &[
                Outline {
                    x: 12,
                    y: 12,
                    width: 50,
                    height: 50,
                },
                Outline {
                    x: 40,
                    y: 0,
                    width: 2,
                    height: 2,
                },
            ],
            None,
        );
        assert_eq!(pixel(&rgb, 16, 15, 15), [255; 3]);
        assert_eq!(rgb.len(), 16 * 16 * 3);
    }

    #[test]
    fn a_fail_stamp_is_red_with_white_text_and_a_pass_stamp_green() {
        let fail = annotate(
            gray(256, 64),
            256,
            64,
            &[],
            Some(Stamp {
                failed: true,
                score: 1.0,
                threshold: 0.5,
            }),
        );
        assert_eq!(pixel(&fail, 256, 0, 0), FAIL_BACKGROUND.0);
        let banner: Vec<[u8; 3]> = (0..200)
            .flat_map(|x| (0..12).map(move |y| (x, y)))
            .map(|(x, y)| pixel(&fail, 256, x, y))
            .collect();
        assert!(banner.contains(&TEXT.0), "the text is drawn");
        assert_eq!(pixel(&fail, 256, 128, 40), [90; 3], "below the banner untouched");
        let pass = annotate(
            gray(256, 64),
            256,
            64,
            &[],
            Some(Stamp {
                failed: false,
                score: 0.1,
                threshold: 0.5,
            }),
        );
        assert_eq!(pixel(&pass, 256, 0, 0), PASS_BACKGROUND.0);
    }

    #[test]
    fn a_stamp_on_a_tiny_heatmap_stays_inside_it() {
        let rgb = annotate(
            gray(5, 3),
            5,
            3,
            &[],
            Some(Stamp {
                failed: true,
                score: 1.0,
                threshold: 0.5,
            }),
        );
        assert_eq!(rgb.len(), 5 * 3 * 3);
    }
}
