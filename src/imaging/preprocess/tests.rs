//! Unit tests for preprocessing, kept beside `preprocess.rs` so that each file stays readable.

use super::*;

const IMAGENET: Normalize = Normalize {
    mean: [0.485, 0.456, 0.406],
    std: [0.229, 0.224, 0.225],
};

fn image(width: u32, height: u32, channels: Channels, f: impl Fn(u32, u32, usize) -> u8) -> Image {
    let n = channels.count();
    let data = (0..height)
        .flat_map(|y| (0..width).flat_map(move |x| (0..n).map(move |c| (x, y, c))))
        .map(|(x, y, c)| f(x, y, c))
        .collect();
    Image {
        width,
        height,
        channels,
        data,
    }
}

fn expected(value: u8, norm: &Normalize, c: usize) -> f32 {
    (f32::from(value) / 255.0 - norm.mean[c]) / norm.std[c]
}

fn assert_plane(plane: &[f32], want: f32, what: &str) {
    for &v in plane {
        assert!((v - want).abs() <= 1e-6, "{what}: {v} != {want}");
    }
}

#[test]
fn constant_colour_normalises_to_the_exact_value_in_each_plane() {
    let colour = [10u8, 128, 250];
    let img = image(97, 61, Channels::Rgb, |_, _, c| colour[c]);
    let mut pre = Preprocessor::new();
    let mut out = vec![0.0; 3 * 32 * 24];
    for roi in [
        None,
        Some(Roi {
            x: 5,
            y: 7,
            width: 50,
            height: 40,
        }),
    ] {
        pre.run(&img, roi, 32, 24, &IMAGENET, &mut out).unwrap();
        for (c, plane) in out.chunks_exact(32 * 24).enumerate() {
            assert_plane(
                plane,
                expected(colour[c], &IMAGENET, c),
                &format!("plane {c} roi {roi:?}"),
            );
        }
    }
}

#[test]
fn gray_input_gives_three_planes() {
    let img = image(40, 30, Channels::Gray, |x, y, _| (x * 3 + y * 2) as u8);
    let mut pre = Preprocessor::new();
    let same = Normalize {
        mean: [0.5; 3],
        std: [0.25; 3],
    };
    let mut out = vec![0.0; 3 * 20 * 15];
    pre.run(&img, None, 20, 15, &same, &mut out).unwrap();
    let (r, rest) = out.split_at(300);
    assert_eq!((r, r), rest.split_at(300));
    // Different statistics per channel: each plane normalised from the same gray pixels.
    let mut rgb_out = vec![0.0; 3 * 20 * 15];
    pre.run(&img.to_rgb(), None, 20, 15, &IMAGENET, &mut rgb_out)
        .unwrap();
    pre.run(&img, None, 20, 15, &IMAGENET, &mut out).unwrap();
    assert_eq!(out, rgb_out);
}

#[test]
fn roi_on_the_white_half_gives_all_white() {
    // Odd sizes: the filter support straddles the ROI edge at a fractional scale.
    let img = image(70, 33, Channels::Rgb, |x, _, _| if x < 35 { 0 } else { 255 });
    let mut out = vec![0.0; 3 * 16 * 16];
    let roi = Roi {
        x: 35,
        y: 0,
        width: 35,
        height: 33,
    };
    let geometry = Preprocessor::new()
        .run(&img, Some(roi), 16, 16, &IMAGENET, &mut out)
        .unwrap();
    assert_eq!(
        geometry,
        Geometry {
            roi,
            input_width: 16,
            input_height: 16
        }
    );
    for (c, plane) in out.chunks_exact(256).enumerate() {
        assert_plane(plane, expected(255, &IMAGENET, c), &format!("plane {c}"));
    }
}

#[test]
fn unscaled_input_skips_the_resize_and_matches_plain() {
    let img = image(48, 40, Channels::Rgb, |x, y, c| {
        (x * 5 + y * 3 + c as u32 * 70) as u8
    });
    let mut pre = Preprocessor::new();
    let (mut fast, mut plain) = (vec![0.0; 3 * 48 * 40], vec![0.0; 3 * 48 * 40]);
    for (roi, w, h) in [
        (None, 48, 40),
        (
            Some(Roi {
                x: 3,
                y: 4,
                width: 20,
                height: 10,
            }),
            20,
            10,
        ),
    ] {
        let (fast, plain) = (&mut fast[..3 * w * h], &mut plain[..3 * w * h]);
        pre.run(&img, roi, w as u32, h as u32, &IMAGENET, fast).unwrap();
        Preprocessor::run_plain(&img, roi, w as u32, h as u32, &IMAGENET, plain).unwrap();
        for (a, b) in fast.iter().zip(plain.iter()) {
            assert!((a - b).abs() <= 1e-5, "{a} != {b} for {roi:?}");
        }
    }
    assert!(pre.resized.is_empty(), "no resize buffer was needed");
}

#[test]
fn fast_path_is_close_to_the_plain_path_on_a_smooth_image() {
    let img = image(300, 200, Channels::Rgb, |x, y, c| {
        let (x, y) = (f64::from(x), f64::from(y));
        (127.0 + 100.0 * ((x / 40.0 + c as f64).sin() * (y / 30.0).cos())) as u8
    });
    let roi = Some(Roi {
        x: 20,
        y: 10,
        width: 256,
        height: 160,
    });
    let (mut fast, mut plain) = (vec![0.0; 3 * 64 * 48], vec![0.0; 3 * 64 * 48]);
    Preprocessor::new()
        .run(&img, roi, 64, 48, &IMAGENET, &mut fast)
        .unwrap();
    Preprocessor::run_plain(&img, roi, 64, 48, &IMAGENET, &mut plain).unwrap();
    let mad = fast
        .iter()
        .zip(&plain)
        .map(|(a, b)| f64::from((a - b).abs()))
        .sum::<f64>()
        / fast.len() as f64;
    // One gray level is about 0.017 after dividing by std ~0.225.
    assert!(mad < 0.03, "mean abs diff {mad}");
}

#[test]
fn bad_arguments_are_refused() {
    let img = image(256, 256, Channels::Gray, |_, _, _| 0);
    let mut pre = Preprocessor::new();
    let mut out = vec![0.0; 3 * 8 * 8];
    let roi = Some(Roi {
        x: 10,
        y: 10,
        width: 300,
        height: 300,
    });
    let err = pre.run(&img, roi, 8, 8, &IMAGENET, &mut out).unwrap_err();
    assert_eq!(
        err.to_string(),
        "region of interest 10,10 300x300 does not fit in the 256x256 frame"
    );
    let err = Preprocessor::run_plain(&img, roi, 8, 8, &IMAGENET, &mut out).unwrap_err();
    assert!(matches!(err, ImagingError::InvalidInput(_)));
    let err = pre.run(&img, None, 0, 8, &IMAGENET, &mut out).unwrap_err();
    assert_eq!(
        err.to_string(),
        "model input is 0x8 pixels; width and height must be at least 1"
    );
    let err = pre.run(&img, None, 8, 8, &IMAGENET, &mut out[1..]).unwrap_err();
    assert!(matches!(err, ImagingError::Internal(_)), "{err:?}");
    let err = pre
        .run(&img, None, u32::MAX, u32::MAX, &IMAGENET, &mut out)
        .unwrap_err();
    assert!(matches!(err, ImagingError::Internal(_)), "{err:?}");
    let zero_std = Normalize {
        mean: [0.0; 3],
        std: [1.0, 0.0, 1.0],
    };
    let err = pre.run(&img, None, 8, 8, &zero_std, &mut out).unwrap_err();
    assert!(
        err.to_string().contains("channel 1 has mean 0 and std 0"),
        "{err}"
    );
    let err = pre
        .run(&Image::default(), None, 8, 8, &IMAGENET, &mut out)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "image is 0x0 pixels; width and height must be at least 1"
    );
}

#[test]
fn full_map_maps_to_exactly_the_roi() {
    let roi = Roi {
        x: 100,
        y: 50,
        width: 512,
        height: 256,
    };
    let geometry = Geometry {
        roi,
        input_width: 256,
        input_height: 256,
    };
    assert_eq!((geometry.scale_x(), geometry.scale_y()), (2.0, 1.0));
    for (mw, mh) in [(32, 32), (256, 256), (512, 256), (7, 3)] {
        assert_eq!(
            geometry.map_rect_to_frame(mw, mh, 0, 0, mw, mh),
            (100, 50, 512, 256),
            "{mw}x{mh}"
        );
    }
    for k in 0..32 {
        assert_eq!(
            geometry.map_rect_to_frame(32, 32, k, k, 1, 1),
            (100 + 16 * k, 50 + 8 * k, 16, 8)
        );
    }
    // Cells that do not land on pixel edges grow outwards to cover every touched pixel.
    assert_eq!(geometry.map_rect_to_frame(3, 3, 1, 1, 1, 1), (270, 135, 172, 86));
    // Rectangles spilling past the map are clamped to the ROI.
    assert_eq!(
        geometry.map_rect_to_frame(32, 32, 30, 31, 10, u32::MAX),
        (580, 298, 32, 8)
    );
    assert_eq!(geometry.map_rect_to_frame(0, 32, 0, 0, 1, 1), (100, 50, 0, 0));
}

#[test]
fn input_size_keeps_the_aspect_ratio() {
    assert_eq!(input_size_for_aspect(1024, 1024, 65_536), (256, 256));
    let (w, h) = input_size_for_aspect(500, 1250, 65_536);
    assert!(w % 16 == 0 && h % 16 == 0, "{w}x{h}");
    assert!((f64::from(w) / f64::from(h) - 0.4).abs() < 0.02, "{w}x{h}");
    assert_eq!((w, h), (160, 400));
    assert_eq!(input_size_for_aspect(1250, 500, 65_536), (400, 160));
    // Extreme parts pin the short side at 16 and keep the area.
    assert_eq!(input_size_for_aspect(100_000, 1, 65_536), (4096, 16));
    assert_eq!(input_size_for_aspect(0, 0, 0), (16, 16));
    let (w, h) = input_size_for_aspect(u32::MAX, 1, u32::MAX);
    assert!(w % 16 == 0 && h == 16, "{w}x{h}");
}
