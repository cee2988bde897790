//! The engine behind the model seam with a second, tiny model: an Identity
//! ONNX graph whose "features" are the normalised pixels themselves (stride
//! 1, 3 channels, its own manifest), loaded the way `serve` and `bench` load
//! models. Enrollment, judging and regions work unchanged, so nothing in the
//! engine assumes EfficientNet's stride or channels.

mod common;

use loupe::engine::{Engine, InspectOptions, Judge, RecipeSettings, Verdict};
use loupe::imaging::{DecodeLimits, OwnedFrame, PixelFormat};
use loupe::model::{self, Device, ModelConfig, ModelError};

use common::{PART_SIZE, texture};

const IDENTITY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/identity.onnx");

fn identity_engine() -> Engine {
    let config = ModelConfig {
        path: Some(IDENTITY.into()),
        threads: 1,
        device: Device::Cpu,
    };
    let loaded = model::load(&common::runtime(), &config).unwrap();
    let manifest = loaded.extractor.manifest();
    assert_eq!((manifest.output.stride, manifest.output.channels), (1, 3));
    Engine::new(loaded.extractor, DecodeLimits::default())
}

fn raw(rgb: Vec<u8>) -> OwnedFrame {
    OwnedFrame::Raw {
        width: PART_SIZE as u32,
        height: PART_SIZE as u32,
        stride: 0,
        format: PixelFormat::Rgb8,
        data: rgb.into(),
    }
}

/// Paints a pure red square (a colour the grey texture never has) of `side`
/// pixels at (x0, y0).
fn red_square(rgb: &mut [u8], x0: usize, y0: usize, side: usize) {
    for y in y0..y0 + side {
        for x in x0..x0 + side {
            let i = (y * PART_SIZE + x) * 3;
            rgb[i..i + 3].copy_from_slice(&[255, 0, 0]);
        }
    }
}

#[test]
fn a_stride_1_three_channel_model_enrolls_and_judges_through_the_same_engine() {
    let mut engine = identity_engine();
    // 32 x 32 inputs: 1024 "patches" (pixels) an image, every one kept (so
    // out-of-fold calibration stays quick in unoptimised tests). The
    // texture's colours lie on a line, so good pixels find near-exact matches
    // and their scores are tiny and close together; the threshold gets a
    // margin (sensitivity 0.5 doubles it) so that this test is about the
    // seam, not about calibrating on such scores.
    let settings = RecipeSettings {
        input_width: 32,
        input_height: 32,
        reference_size: 1 << 20,
        sensitivity: 0.5,
        ..RecipeSettings::default()
    };
    let goods = (0..10).map(|i| Ok::<_, std::convert::Infallible>(raw(texture(i + 1, i as f32, 0.0))));
    let reference = engine.enroll(&settings, goods).unwrap();
    assert_eq!(
        (reference.channels, reference.grid_width, reference.grid_height),
        (3, 32, 32)
    );
    let judge = Judge::new(settings, reference, DecodeLimits::default()).unwrap();

    let good = raw(texture(42, 0.5, 0.0));
    let good = engine
        .inspect(&judge, good.as_data(), &InspectOptions::default())
        .unwrap();
    assert_eq!(
        good.verdict,
        Verdict::Pass,
        "good part scored {} over {}",
        good.score,
        good.threshold
    );

    let mut bad = texture(43, 0.25, 0.0);
    red_square(&mut bad, 160, 96, 24);
    let bad = engine
        .inspect(&judge, raw(bad).as_data(), &InspectOptions::default())
        .unwrap();
    assert_eq!(bad.verdict, Verdict::Fail);
    assert!(bad.score > 3.0 * good.score, "{} vs {}", bad.score, good.score);
    let region = bad.regions.first().expect("a region over the defect");
    let overlaps =
        region.x < 184 && region.x + region.width > 160 && region.y < 120 && region.y + region.height > 96;
    assert!(
        overlaps,
        "region {region:?} misses the square at (160, 96) 24 x 24"
    );
}

#[test]
fn a_manifest_of_an_unknown_kind_is_refused_when_read() {
    let folder = tempfile::tempdir().unwrap();
    let manifest = std::fs::read_to_string(IDENTITY.replace(".onnx", ".json"))
        .unwrap()
        .replace("patch_features", "anomaly_map");
    let path = folder.path().join("identity.onnx");
    std::fs::copy(IDENTITY, &path).unwrap();
    std::fs::write(path.with_extension("json"), manifest).unwrap();
    let config = ModelConfig {
        path: Some(path),
        threads: 1,
        device: Device::Cpu,
    };
    let error = model::load(&common::runtime(), &config).unwrap_err();
    assert!(matches!(error, ModelError::Read { .. }), "{error}");
    assert!(error.to_string().contains("anomaly_map"), "{error}");
}

#[test]
fn a_cuda_device_is_refused_in_a_build_without_cuda() {
    let config = ModelConfig {
        path: Some(IDENTITY.into()),
        threads: 1,
        device: Device::Cuda(0),
    };
    let result = model::load(&common::runtime(), &config);
    if cfg!(feature = "cuda") {
        // A CUDA build on a machine without a GPU build of ONNX Runtime:
        // the provider fails to register, which is an error too.
        if let Err(error) = result {
            assert!(matches!(error, ModelError::Device { .. }), "{error}");
        }
    } else {
        let error = result.unwrap_err();
        assert!(matches!(error, ModelError::Device { .. }), "{error}");
        assert!(error.to_string().contains("no CUDA support"), "{error}");
    }
}

#[test]
fn a_coreset_of_one_patch_still_calibrates_a_finite_threshold() {
    // The one kept patch comes from one image; the fold holding that image
    // has no other patch to be scored against.
    let mut engine = identity_engine();
    let settings = RecipeSettings {
        input_width: 32,
        input_height: 32,
        reference_size: 1,
        ..RecipeSettings::default()
    };
    let goods = (0..3).map(|i| Ok::<_, std::convert::Infallible>(raw(texture(i + 1, i as f32, 0.0))));
    let reference = engine.enroll(&settings, goods).unwrap();
    assert_eq!(reference.features.len(), 3);
    assert!(reference.calibration_scores.iter().all(|s| s.is_finite()));
    let judge = Judge::new(settings, reference, DecodeLimits::default()).unwrap();
    assert!(judge.threshold().is_finite() && judge.threshold() > 0.0);
}
