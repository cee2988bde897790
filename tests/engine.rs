//! The engine end to end on generated parts: a textured surface with a
//! drawn scratch, and a board of components with one missing. Defects fail
//! with a region over them, clean parts pass, and `aligned` catches the
//! missing component that `global` cannot.

mod common;

use loupe::engine::{
    Engine, Enrollment, InspectOptions, Inspection, Judge, MatchMode, RecipeSettings, Verdict,
};
use loupe::imaging::{self, DecodeLimits, FrameData, Image, PixelFormat, RawFrame};

/// Boards are larger, so their two holes sit far from every border.
const BOARD: usize = 512;

fn engine() -> Engine {
    Engine::new(common::bundled_model(2), DecodeLimits::default())
}

use common::{scratch, texture};

/// Deterministic noise in [0, 1).
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Component pitch and size on the board, in pixels.
const PITCH: usize = 16;
const PART: usize = 8;
/// A slot left empty by the design itself, far from the borders.
const EMPTY_BY_DESIGN: (usize, usize) = (10, 10);

/// A board: a dense periodic grid of bright components on a dark
/// background (pitch 16 px, 32 x 32 slots), one slot empty by design;
/// `missing` leaves one more out. Away from the borders, an empty slot looks
/// the same wherever it is, so only its position tells a defect.
fn board(seed: u64, missing: Option<(usize, usize)>) -> Vec<u8> {
    let mut noise = Noise(seed | 1);
    let mut rgb = Vec::with_capacity(BOARD * BOARD * 3);
    for y in 0..BOARD {
        for x in 0..BOARD {
            let slot = (x / PITCH, y / PITCH);
            let inside =
                (x % PITCH) >= 4 && (x % PITCH) < 4 + PART && (y % PITCH) >= 4 && (y % PITCH) < 4 + PART;
            let component = inside && missing != Some(slot) && slot != EMPTY_BY_DESIGN;
            let base = if component { 210.0 } else { 40.0 };
            let v = (base + 10.0 * (noise.next() - 0.5)) as u8;
            rgb.extend_from_slice(&[v, v, v]);
        }
    }
    rgb
}

/// The pixel box of slot (column, row): x0, y0, x1, y1.
fn slot_box(column: usize, row: usize) -> (u32, u32, u32, u32) {
    let (x, y) = ((4 + column * PITCH) as u32, (4 + row * PITCH) as u32);
    (x, y, x + PART as u32, y + PART as u32)
}

fn frame(rgb: &[u8]) -> FrameData<'_> {
    let side = ((rgb.len() / 3) as f64).sqrt() as u32;
    FrameData::Raw(RawFrame {
        width: side,
        height: side,
        stride: 0,
        format: PixelFormat::Rgb8,
        data: rgb,
    })
}

fn teach(engine: &mut Engine, settings: &RecipeSettings, goods: &[Vec<u8>]) -> Judge {
    let mut enrollment = Enrollment::new();
    for good in goods {
        enrollment.add(engine.extract(settings, frame(good)).unwrap());
    }
    let reference = engine.build_reference(settings, &enrollment).unwrap();
    Judge::new(settings.clone(), reference, DecodeLimits::default()).unwrap()
}

fn overlaps(inspection: &Inspection, x0: u32, y0: u32, x1: u32, y1: u32) -> bool {
    inspection
        .regions
        .iter()
        .any(|r| r.x < x1 && r.x + r.width > x0 && r.y < y1 && r.y + r.height > y0)
}

#[test]
fn a_scratch_fails_with_a_region_over_it_and_clean_parts_pass() {
    let mut engine = engine();
    let settings = RecipeSettings::default();
    let goods: Vec<Vec<u8>> = (0..6)
        .map(|i| texture(i + 1, i as f32 * 1.7, i as f32 * 0.9))
        .collect();
    let judge = teach(&mut engine, &settings, &goods);
    let options = InspectOptions::default();

    for seed in 100..103 {
        let clean = texture(seed, seed as f32 * 0.3, 1.1);
        let result = engine.inspect(&judge, frame(&clean), &options).unwrap();
        assert_eq!(
            result.verdict,
            Verdict::Pass,
            "clean part scored {} / {}",
            result.score,
            result.threshold
        );
    }

    let mut scratched = texture(200, 0.5, 0.5);
    scratch(&mut scratched, 90, 120, 60);
    let result = engine.inspect(&judge, frame(&scratched), &options).unwrap();
    assert_eq!(
        result.verdict,
        Verdict::Fail,
        "scratch scored {} / {}",
        result.score,
        result.threshold
    );
    assert!(
        overlaps(&result, 90, 120, 150, 153),
        "regions {:?}",
        result.regions
    );
}

#[test]
fn aligned_catches_a_missing_component_that_global_misses() {
    let mut engine = engine();
    let goods: Vec<Vec<u8>> = (0..4).map(|i| board(i + 1, None)).collect();
    // Slot (21, 20) empty looks just like slot (10, 10), empty by design.
    let defective = board(50, Some((21, 20)));
    let clean = board(51, None);
    let options = InspectOptions::default();

    // Every reference patch is kept (no coreset): the point is what each
    // mode compares, and coreset selection is slow in unoptimised tests.
    // Four good boards cannot promise 1 % false rejects (the threshold for
    // that lies far above their scores); the test asks for 5 %.
    let global = RecipeSettings {
        input_width: BOARD as u32,
        input_height: BOARD as u32,
        reference_size: 1 << 16,
        target_false_reject_rate: 0.05,
        ..RecipeSettings::default()
    };
    let aligned = RecipeSettings {
        match_mode: MatchMode::Aligned,
        ..global.clone()
    };
    let judge = teach(&mut engine, &aligned, &goods);
    let result = engine.inspect(&judge, frame(&clean), &options).unwrap();
    assert_eq!(
        result.verdict,
        Verdict::Pass,
        "aligned clean: {} / {}",
        result.score,
        result.threshold
    );
    let result = engine.inspect(&judge, frame(&defective), &options).unwrap();
    assert_eq!(
        result.verdict,
        Verdict::Fail,
        "aligned missing: {} / {}",
        result.score,
        result.threshold
    );
    let (x0, y0, x1, y1) = slot_box(21, 20);
    assert!(overlaps(&result, x0, y0, x1, y1), "regions {:?}", result.regions);

    let judge = teach(&mut engine, &global, &goods);
    let result = engine.inspect(&judge, frame(&defective), &options).unwrap();
    assert_eq!(
        result.verdict,
        Verdict::Pass,
        "global sees only background: {} / {}",
        result.score,
        result.threshold
    );
}

#[test]
fn one_golden_image_is_enough_to_calibrate() {
    let mut engine = engine();
    let aligned = RecipeSettings {
        match_mode: MatchMode::Aligned,
        ..RecipeSettings::default()
    };
    let judge = teach(&mut engine, &aligned, &[texture(1, 0.0, 0.0)]);
    assert!(judge.threshold() > 0.0);
    let options = InspectOptions::default();
    let clean = texture(60, 0.4, 0.3);
    let result = engine.inspect(&judge, frame(&clean), &options).unwrap();
    assert_eq!(
        result.verdict,
        Verdict::Pass,
        "clean: {} / {}",
        result.score,
        result.threshold
    );
    let mut scratched = texture(61, 0.4, 0.3);
    scratch(&mut scratched, 40, 60, 80);
    let result = engine.inspect(&judge, frame(&scratched), &options).unwrap();
    assert_eq!(
        result.verdict,
        Verdict::Fail,
        "scratch: {} / {}",
        result.score,
        result.threshold
    );
    assert!(
        overlaps(&result, 40, 60, 120, 103),
        "regions {:?}",
        result.regions
    );
}

#[test]
fn regions_map_back_to_frame_pixels_through_roi_and_resize() {
    // A 512 x 384 frame whose ROI (64, 32, 384 x 256) holds the board; a
    // missing component must be reported in frame pixels, offset by the ROI
    // and scaled by 1.5.
    let mut engine = engine();
    let (width, height) = (512usize, 384usize);
    let embed = |board_rgb: &[u8]| {
        let mut rgb = vec![0u8; width * height * 3];
        for y in 0..256 {
            for x in 0..384 {
                let (bx, by) = (x * 2 / 3, y);
                let src = (by * BOARD + bx) * 3;
                let dst = ((y + 32) * width + x + 64) * 3;
                rgb[dst..dst + 3].copy_from_slice(&board_rgb[src..src + 3]);
            }
        }
        rgb
    };
    let settings = RecipeSettings {
        match_mode: MatchMode::Aligned,
        roi: Some(loupe::imaging::Roi {
            x: 64,
            y: 32,
            width: 384,
            height: 256,
        }),
        ..RecipeSettings::default()
    };
    let goods: Vec<Vec<u8>> = (0..3).map(|i| embed(&board(i + 1, None))).collect();
    fn as_frame(rgb: &[u8]) -> FrameData<'_> {
        FrameData::Raw(RawFrame {
            width: 512,
            height: 384,
            stride: 0,
            format: PixelFormat::Rgb8,
            data: rgb,
        })
    }
    let mut enrollment = Enrollment::new();
    for good in &goods {
        enrollment.add(engine.extract(&settings, as_frame(good)).unwrap());
    }
    let reference = engine.build_reference(&settings, &enrollment).unwrap();
    let judge = Judge::new(settings, reference, DecodeLimits::default()).unwrap();
    let defective = embed(&board(70, Some((8, 10))));
    let result = engine
        .inspect(&judge, as_frame(&defective), &InspectOptions::default())
        .unwrap();
    assert_eq!(result.verdict, Verdict::Fail);
    // Slot (8, 10) covers board pixels x 132..140, y 164..172, so frame
    // pixels x 64 + 1.5 * (132..140) = 262..274 and y 32 + (164..172) =
    // 196..204.
    let (x0, y0, x1, y1) = slot_box(8, 10);
    assert_eq!((x0, y0, x1, y1), (132, 164, 140, 172));
    assert!(
        overlaps(&result, 262, 196, 274, 204),
        "regions {:?}",
        result.regions
    );
    for region in &result.regions {
        assert!(
            region.x >= 64 && region.x + region.width <= 448,
            "{region:?} leaves the ROI"
        );
        assert!(
            region.y >= 32 && region.y + region.height <= 288,
            "{region:?} leaves the ROI"
        );
    }
}

#[test]
fn frames_judged_together_score_as_they_do_alone_and_fail_alone() {
    let mut engine = engine();
    let settings = RecipeSettings::default();
    let goods: Vec<Vec<u8>> = (0..4)
        .map(|i| texture(i + 1, i as f32 * 1.7, i as f32 * 0.9))
        .collect();
    let judge = teach(&mut engine, &settings, &goods);
    let mut scratched = texture(200, 0.5, 0.5);
    scratch(&mut scratched, 90, 120, 60);
    let decode = |rgb: &[u8]| {
        let mut image = Image::default();
        imaging::decode(frame(rgb), DecodeLimits::default(), &mut image).unwrap();
        image
    };
    // A clean part, a scratched one, and an empty image that cannot be
    // preprocessed, in one batch.
    let images = vec![
        decode(&texture(100, 0.3, 1.1)),
        decode(&scratched),
        Image::default(),
    ];
    let options = vec![InspectOptions::default(); images.len()];

    let together = engine.inspect_images(&judge, &images, &options);
    assert_eq!(together.len(), 3);
    for (image, together) in images.iter().zip(&together).take(2) {
        let alone = engine.inspect_image(&judge, image, &options[0]).unwrap();
        let together = together.as_ref().unwrap();
        assert_eq!(alone.verdict, together.verdict);
        assert!(
            (alone.score - together.score).abs() <= 1e-3 * alone.score,
            "alone {} vs together {}",
            alone.score,
            together.score
        );
        assert_eq!(alone.regions.len(), together.regions.len());
    }
    assert_eq!(together[0].as_ref().unwrap().verdict, Verdict::Pass);
    assert_eq!(together[1].as_ref().unwrap().verdict, Verdict::Fail);
    let error = together[2].as_ref().unwrap_err().to_string();
    assert!(!error.is_empty());
}

/// The rule the day-one threshold had before it was set for a false-reject
/// rate: the larger of the good scores' maximum and their mean plus three
/// standard deviations, times 1.1.
fn former_threshold(scores: &[f32]) -> f32 {
    let n = scores.len() as f32;
    let mean = scores.iter().sum::<f32>() / n;
    let sd = (scores.iter().map(|s| (s - mean).powi(2)).sum::<f32>() / n).sqrt();
    scores.iter().copied().fold(mean + 3.0 * sd, f32::max) * 1.1
}

/// Draws a scratch like [`scratch`], `len` pixels long from (90, 120), at
/// `contrast` (0 invisible, 1 the full dark line) over the part.
fn faint_scratch(rgb: &mut [u8], len: usize, contrast: f32) {
    let mut line = rgb.to_vec();
    scratch(&mut line, 90, 120, len);
    for (pixel, dark) in rgb.iter_mut().zip(&line) {
        *pixel = (f32::from(*pixel) + contrast * (f32::from(*dark) - f32::from(*pixel))).round() as u8;
    }
}

#[test]
fn a_faint_defect_the_former_threshold_passed_fails_and_good_parts_pass_at_about_the_target_rate() {
    let mut engine = engine();
    // Default settings but every patch kept (coreset selection is slow in
    // unoptimised tests); the target false-reject rate is the default 1 %.
    let settings = RecipeSettings {
        reference_size: 1 << 16,
        ..RecipeSettings::default()
    };
    let shift = |i: u64| ((i * 37 % 23) as f32 * 0.13, (i * 53 % 19) as f32 * 0.11);
    let goods: Vec<Vec<u8>> = (0..60)
        .map(|i| {
            let (dx, dy) = shift(i);
            texture(i + 1, dx, dy)
        })
        .collect();
    let judge = teach(&mut engine, &settings, &goods);
    let former = former_threshold(&judge.reference().calibration_scores);
    let threshold = judge.threshold();
    assert!(threshold < former, "threshold {threshold}, former rule {former}");
    let options = InspectOptions::default();

    // Fresh good parts: at a 1 % target, 30 of them fail at most 2 (a 5 %
    // chance at the target rate itself).
    let fresh_fails = (300..330)
        .filter(|&seed| {
            let (dx, dy) = shift(seed);
            let result = engine
                .inspect(&judge, frame(&texture(seed, dx, dy)), &options)
                .unwrap();
            result.verdict == Verdict::Fail
        })
        .count();
    assert!(fresh_fails <= 2, "{fresh_fails} of 30 fresh good parts failed");

    // Faint scratches of a few lengths and contrasts: one of them fails
    // with a score at or below the former threshold (so the former rule let
    // it pass), with a region over it.
    let candidates = [20, 40, 60]
        .into_iter()
        .flat_map(|len| (10..=20).map(move |step| (len, step as f32 * 0.01)));
    let mut scored = Vec::new();
    let caught = candidates.into_iter().find_map(|(len, contrast)| {
        let mut part = texture(400, 0.7, 0.2);
        faint_scratch(&mut part, len, contrast);
        let result = engine.inspect(&judge, frame(&part), &options).unwrap();
        scored.push((len, contrast, result.score));
        (result.verdict == Verdict::Fail && result.score <= former).then_some((len, result))
    });
    let Some((len, result)) = caught else {
        panic!(
            "no faint scratch scored between the threshold {threshold} and the former {former}: {scored:?}"
        );
    };
    let (x1, y1) = (90 + len as u32, 123 + len as u32 / 2);
    assert!(overlaps(&result, 90, 120, x1, y1), "regions {:?}", result.regions);
}

#[test]
fn the_fast_search_probes_fewer_lists_and_scores_fresh_parts_as_with_every_list() {
    let mut engine = engine();
    // Every patch kept, as a small enrollment keeps them: neighbouring
    // patches of a part are near copies of each other, the case where the
    // bank's own rows ask for too few probes.
    let settings = RecipeSettings {
        reference_size: 1 << 16,
        ..RecipeSettings::default()
    };
    let place = |i: u64| ((i % 5) as f32 * 0.7, (i % 5) as f32 * 0.4);
    let goods: Vec<Vec<u8>> = (0..12)
        .map(|i| {
            let (dx, dy) = place(i);
            texture(i + 1, dx, dy)
        })
        .collect();
    let judge = teach(&mut engine, &settings, &goods);
    let (lists, probes) = judge.bank().unwrap().fast_lists().unwrap();
    assert_eq!(
        judge.reference().probes as usize,
        probes,
        "the bank probes what was recorded"
    );
    assert!(probes < lists / 2, "{probes} of {lists} lists probed");

    let every = Judge::new(
        settings.clone(),
        loupe::reference::Reference {
            probes: u32::MAX,
            ..judge.reference().clone()
        },
        DecodeLimits::default(),
    )
    .unwrap();
    assert_eq!(every.bank().unwrap().fast_lists().unwrap(), (lists, lists));
    let options = InspectOptions::default();
    // Fresh parts, good and scratched: the chosen count keeps each probe
    // frame within 1 % of its score with every list; fresh parts come
    // within 2 %.
    for seed in 300..320 {
        let (dx, dy) = place(seed);
        let mut part = texture(seed, dx, dy);
        if seed % 4 == 0 {
            scratch(&mut part, 90, 120, 40);
        }
        let fast = engine.inspect(&judge, frame(&part), &options).unwrap().score;
        let whole = engine.inspect(&every, frame(&part), &options).unwrap().score;
        assert!(
            fast <= whole * 1.02,
            "part {seed}: {fast} with {probes} of {lists} lists, {whole} with every list"
        );
    }
}
