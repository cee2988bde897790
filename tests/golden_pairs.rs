//! A golden pair at the default settings: a generated circuit board and a
//! copy of it moved by a fraction of a pixel, with drawn defects (a short, an
//! open, a spur of copper, a pin-hole). Every defect fails the part with one
//! region of its own, and nothing else is reported (nothing smaller than a
//! feature cell, unless asked); a clean moved copy passes.

mod common;

use loupe::engine::{Engine, InspectOptions, Inspection, Judge, MatchMode, RecipeSettings, Verdict};
use loupe::imaging::{DecodeLimits, FrameData, OwnedFrame, PixelFormat, RawFrame};

const WIDTH: usize = 320;
const HEIGHT: usize = 240;
/// Sub-samples per pixel side when rendering (edges land between pixels).
const SUPERSAMPLE: usize = 4;

/// A rectangle of copper (`true`) or of bare board (`false`), x0 y0 x1 y1.
type Patch = (f32, f32, f32, f32, bool);

/// Copper of the design at board point (x, y): vertical traces every 40 px,
/// horizontal ones every 60 px between x 0 and 200, square pads.
fn design(x: f32, y: f32) -> bool {
    let vertical = (x - 12.0).rem_euclid(40.0) < 8.0;
    let horizontal = (y - 24.0).rem_euclid(60.0) < 6.0 && x < 200.0;
    let pad = (x - 252.0).rem_euclid(40.0) < 14.0 && (y - 40.0).rem_euclid(48.0) < 14.0 && x > 230.0;
    vertical || horizontal || pad
}

/// The board moved by (dx, dy) with `patches` drawn on it (in frame
/// coordinates), rendered with anti-aliased edges and sensor noise.
fn render(dx: f32, dy: f32, patches: &[Patch], seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let step = 1.0 / SUPERSAMPLE as f32;
    let mut rgb = Vec::with_capacity(WIDTH * HEIGHT * 3);
    for py in 0..HEIGHT {
        for px in 0..WIDTH {
            let mut copper = 0;
            for sy in 0..SUPERSAMPLE {
                for sx in 0..SUPERSAMPLE {
                    let (x, y) = (
                        px as f32 + (sx as f32 + 0.5) * step,
                        py as f32 + (sy as f32 + 0.5) * step,
                    );
                    let drawn = patches
                        .iter()
                        .rev()
                        .find(|&&(x0, y0, x1, y1, _)| x >= x0 && x < x1 && y >= y0 && y < y1);
                    let is_copper = match drawn {
                        Some(&(.., value)) => value,
                        None => design(x - dx, y - dy),
                    };
                    copper += usize::from(is_copper);
                }
            }
            let share = copper as f32 / (SUPERSAMPLE * SUPERSAMPLE) as f32;
            let v = (35.0 + 180.0 * share + 8.0 * noise()).clamp(0.0, 255.0) as u8;
            rgb.extend_from_slice(&[v, v, v]);
        }
    }
    rgb
}

fn frame(rgb: &[u8]) -> FrameData<'_> {
    FrameData::Raw(RawFrame {
        width: WIDTH as u32,
        height: HEIGHT as u32,
        stride: 0,
        format: PixelFormat::Rgb8,
        data: rgb,
    })
}

fn regions_over(inspection: &Inspection, (x0, y0, x1, y1, _): Patch) -> usize {
    inspection
        .regions
        .iter()
        .filter(|r| {
            (r.x as f32) < x1
                && (r.x + r.width) as f32 > x0
                && (r.y as f32) < y1
                && (r.y + r.height) as f32 > y0
        })
        .count()
}

#[test]
fn a_golden_pair_at_the_defaults_finds_every_defect_with_one_region_each() {
    let mut engine = Engine::new(common::bundled_model(2), DecodeLimits::default());
    let settings = RecipeSettings {
        match_mode: MatchMode::Aligned,
        ..RecipeSettings::default()
    };
    let golden = render(0.0, 0.0, &[], 1);
    let reference = engine
        .enroll(
            &settings,
            [Ok::<_, std::convert::Infallible>(OwnedFrame::Raw {
                width: WIDTH as u32,
                height: HEIGHT as u32,
                stride: 0,
                format: PixelFormat::Rgb8,
                data: golden.into(),
            })],
        )
        .unwrap();
    // The mode picked the frame's own size.
    assert_eq!(
        (reference.input_width, reference.input_height),
        (WIDTH as u32, HEIGHT as u32)
    );
    assert!(reference.pixels.is_some());
    let every_region = RecipeSettings {
        min_region_area: 1,
        ..settings.clone()
    };
    let every_region = Judge::new(every_region, reference.clone(), DecodeLimits::default()).unwrap();
    let judge = Judge::new(settings, reference, DecodeLimits::default()).unwrap();
    let options = InspectOptions::default();

    let (dx, dy) = (0.6, -0.4);
    let clean = render(dx, dy, &[], 2);
    let result = engine.inspect(&judge, frame(&clean), &options).unwrap();
    assert_eq!(
        result.verdict,
        Verdict::Pass,
        "a clean copy moved by ({dx}, {dy}): {} / {}, regions {:?}",
        result.score,
        result.threshold,
        result.regions
    );

    let defects: [Patch; 4] = [
        // A short: copper bridging two vertical traces.
        (60.0 + dx, 110.0 + dy, 92.0 + dx, 115.0 + dy, true),
        // An open: a gap across a vertical trace.
        (130.0 + dx, 200.0 + dy, 142.0 + dx, 206.0 + dy, false),
        // A spur of copper on bare board.
        (150.0 + dx, 100.0 + dy, 157.0 + dx, 108.0 + dy, true),
        // A pin-hole in a pad.
        (256.0 + dx, 92.0 + dy, 261.0 + dx, 97.0 + dy, false),
    ];
    let defective = render(dx, dy, &defects, 3);
    let result = engine.inspect(&judge, frame(&defective), &options).unwrap();
    assert_eq!(
        result.verdict,
        Verdict::Fail,
        "{} / {}",
        result.score,
        result.threshold
    );
    for defect in defects {
        assert_eq!(
            regions_over(&result, defect),
            1,
            "defect {defect:?}: regions {:?}",
            result.regions
        );
    }
    assert_eq!(
        result.regions.len(),
        defects.len(),
        "one region per defect and no other: {:?}",
        result.regions
    );
    // Unset, the smallest region is one 8 x 8 feature cell at the frame's
    // own size; a set area is used as it is.
    assert_eq!(judge.min_region_area(&result.geometry), 64);
    assert_eq!(every_region.min_region_area(&result.geometry), 1);
}
