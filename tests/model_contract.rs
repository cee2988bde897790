//! The model contract checked against real ONNX Runtime sessions: the
//! bundled model loads and produces the promised features; a different model
//! file is refused with a message naming the difference.

mod common;

use loupe::model::{Device, FeatureExtractor, ModelError, ModelSource, OnnxFeatureModel, sha256_hex};

#[test]
fn the_bundled_model_loads_and_yields_stride_8_features() {
    let source = ModelSource::bundled().unwrap();
    let mut model = OnnxFeatureModel::load(&common::runtime(), &source, 1, Device::Cpu).unwrap();
    let (width, height) = (96, 64);
    let input = vec![0.5_f32; 3 * width * height];
    let mut features = Vec::new();
    let shape = model.run(&input, 1, height, width, &mut features).unwrap();
    assert_eq!((shape.channels, shape.height, shape.width), (152, 8, 12));
    assert_eq!(features.len(), 152 * 8 * 12);
    assert!(features.iter().all(|v| v.is_finite()));
}

#[test]
fn sizes_that_are_not_multiples_of_16_are_refused() {
    let source = ModelSource::bundled().unwrap();
    let mut model = OnnxFeatureModel::load(&common::runtime(), &source, 1, Device::Cpu).unwrap();
    let input = vec![0.0_f32; 3 * 100 * 64];
    let error = model.run(&input, 1, 64, 100, &mut Vec::new()).unwrap_err();
    assert!(matches!(error, ModelError::InputSize { .. }), "{error}");
    assert!(error.to_string().contains("multiples of 16"), "{error}");
}

#[test]
fn a_different_model_file_is_refused() {
    // A valid ONNX model (an Identity) with the right tensor names but
    // 3 output channels, under the bundled manifest with its hash updated.
    let onnx = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/identity.onnx")).unwrap();
    let mut source = ModelSource::bundled().unwrap();
    source.manifest.sha256 = sha256_hex(&onnx);
    source.onnx = onnx.into();
    let error = OnnxFeatureModel::load(&common::runtime(), &source, 1, Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(error.contains("does not match its manifest"), "{error}");
    assert!(error.contains("[-1, 3, -1, -1]"), "{error}");
}

#[test]
fn a_model_file_that_differs_from_its_manifest_hash_is_refused() {
    let mut source = ModelSource::bundled().unwrap();
    source.onnx = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/identity.onnx"))
        .unwrap()
        .into();
    let error = OnnxFeatureModel::load(&common::runtime(), &source, 1, Device::Cpu).unwrap_err();
    assert!(matches!(error, ModelError::Checksum { .. }), "{error}");
}
