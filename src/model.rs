//! The feature model: its manifest, the contract check at load time, and
//! inference through ONNX Runtime. Nothing above this module sees `ort`.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{TensorRef, ValueType};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::runtime::Runtime;

/// The bundled model, compiled into the binary so that it runs from anywhere.
const BUNDLED_ONNX: &[u8] = include_bytes!("../models/efficientnet-lite0-features.onnx");
/// The bundled model's manifest.
const BUNDLED_MANIFEST: &str = include_str!("../models/efficientnet-lite0-features.json");

/// What a model promises: read from the JSON file next to the `.onnx`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Model name, reported in logs and benchmark reports.
    pub name: String,
    /// The `.onnx` file name, relative to the manifest.
    pub file: String,
    /// Hex sha256 of the `.onnx` file.
    pub sha256: String,
    /// The input tensor.
    pub input: InputSpec,
    /// The feature tensor.
    pub output: OutputSpec,
    /// Pixel normalisation the weights expect.
    pub normalization: Normalization,
    /// Licence of the weights.
    pub license: String,
}

/// The model's input tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// Tensor name.
    pub name: String,
    /// `[N, C, H, W]`, -1 for dynamic dimensions.
    pub shape: Vec<i64>,
    /// Height and width must be multiples of this.
    pub size_multiple: u32,
}

/// The model's feature tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputSpec {
    /// Tensor name.
    pub name: String,
    /// `[N, C, H/stride, W/stride]`, -1 for dynamic dimensions.
    pub shape: Vec<i64>,
    /// Input pixels per feature cell along each axis.
    pub stride: u32,
    /// Feature channels per cell.
    pub channels: u32,
}

/// `(x - mean) / std` per RGB channel, with x in [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Per-channel mean.
    pub mean: [f32; 3],
    /// Per-channel standard deviation.
    pub std: [f32; 3],
}

/// Errors of this layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ModelError {
    /// The model or manifest file cannot be read or parsed.
    #[error("model {origin}: {reason}")]
    Read {
        /// Which model.
        origin: String,
        /// What failed.
        reason: String,
    },
    /// The `.onnx` bytes are not the ones the manifest describes.
    #[error("model {origin}: sha256 is {actual}, the manifest says {expected}")]
    Checksum {
        /// Which model.
        origin: String,
        /// From the manifest.
        expected: String,
        /// Of the file.
        actual: String,
    },
    /// The session's inputs or outputs differ from the manifest.
    #[error("model {origin} does not match its manifest: {reason}")]
    Contract {
        /// Which model.
        origin: String,
        /// The first difference found.
        reason: String,
    },
    /// An input size the model cannot take.
    #[error("model input {width}x{height} is not allowed: {reason}")]
    InputSize {
        /// Requested width.
        width: usize,
        /// Requested height.
        height: usize,
        /// Why not.
        reason: String,
    },
    /// ONNX Runtime failed.
    #[error("ONNX Runtime: {0}")]
    Ort(String),
}

impl From<ort::Error> for ModelError {
    fn from(error: ort::Error) -> Self {
        Self::Ort(error.to_string())
    }
}

/// A model's bytes and manifest, before a session exists.
#[derive(Debug, Clone)]
pub struct ModelSource {
    /// The `.onnx` file's bytes.
    pub onnx: Cow<'static, [u8]>,
    /// Its manifest.
    pub manifest: Manifest,
    /// Where it came from, for messages.
    pub origin: String,
}

impl ModelSource {
    /// The model compiled into the binary.
    pub fn bundled() -> Result<Self, ModelError> {
        let origin = "bundled".to_owned();
        let manifest = parse_manifest(BUNDLED_MANIFEST, &origin)?;
        Ok(Self {
            onnx: Cow::Borrowed(BUNDLED_ONNX),
            manifest,
            origin,
        })
    }

    /// A model from disk: `path` is the `.onnx` file and its manifest is the
    /// file of the same stem with a `.json` extension.
    pub fn from_path(path: &Path) -> Result<Self, ModelError> {
        let origin = path.display().to_string();
        let read_error = |what: &Path, error: std::io::Error| ModelError::Read {
            origin: origin.clone(),
            reason: format!("cannot read {}: {error}", what.display()),
        };
        let manifest_path: PathBuf = path.with_extension("json");
        let manifest_text =
            std::fs::read_to_string(&manifest_path).map_err(|e| read_error(&manifest_path, e))?;
        let manifest = parse_manifest(&manifest_text, &origin)?;
        let onnx = std::fs::read(path).map_err(|e| read_error(path, e))?;
        Ok(Self {
            onnx: Cow::Owned(onnx),
            manifest,
            origin,
        })
    }

    /// Checks the bytes against the manifest's sha256.
    pub fn verify_checksum(&self) -> Result<(), ModelError> {
        let actual = sha256_hex(&self.onnx);
        if actual.eq_ignore_ascii_case(&self.manifest.sha256) {
            Ok(())
        } else {
            Err(ModelError::Checksum {
                origin: self.origin.clone(),
                expected: self.manifest.sha256.clone(),
                actual,
            })
        }
    }
}

fn parse_manifest(text: &str, origin: &str) -> Result<Manifest, ModelError> {
    serde_json::from_str(text).map_err(|error| ModelError::Read {
        origin: origin.to_owned(),
        reason: format!("bad manifest: {error}"),
    })
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// One tensor as a session declares it: name, element type, shape.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorDecl {
    /// Tensor name.
    pub name: String,
    /// Whether the element type is float32.
    pub is_f32: bool,
    /// Shape, -1 for dynamic dimensions.
    pub shape: Vec<i64>,
}

/// Compares a session's declared inputs and outputs with the manifest.
/// Fixed dimensions must agree; a dimension the manifest marks dynamic
/// (-1) must be dynamic in the session too.
pub fn check_contract(
    manifest: &Manifest,
    inputs: &[TensorDecl],
    outputs: &[TensorDecl],
) -> Result<(), String> {
    let check = |role: &str, decls: &[TensorDecl], name: &str, shape: &[i64]| {
        let [decl] = decls else {
            return Err(format!(
                "expected one {role} `{name}`, the model has {}",
                decls.len()
            ));
        };
        if decl.name != name {
            return Err(format!("{role} is named `{}`, expected `{name}`", decl.name));
        }
        if !decl.is_f32 {
            return Err(format!("{role} `{name}` is not float32"));
        }
        if decl.shape != shape {
            return Err(format!(
                "{role} `{name}` has shape {:?}, expected {shape:?}",
                decl.shape
            ));
        }
        Ok(())
    };
    check("input", inputs, &manifest.input.name, &manifest.input.shape)?;
    check("output", outputs, &manifest.output.name, &manifest.output.shape)?;
    if manifest.input.shape.len() != 4 || manifest.input.shape[1] != 3 {
        return Err("the manifest's input must be [N, 3, H, W]".to_owned());
    }
    if manifest.output.shape.len() != 4 || manifest.output.shape[1] != i64::from(manifest.output.channels) {
        return Err("the manifest's output must be [N, channels, H, W]".to_owned());
    }
    Ok(())
}

fn declare(outlet: &ort::value::Outlet) -> TensorDecl {
    match outlet.dtype() {
        ValueType::Tensor { ty, shape, .. } => TensorDecl {
            name: outlet.name().to_owned(),
            is_f32: *ty == ort::value::TensorElementType::Float32,
            shape: shape.iter().copied().collect(),
        },
        _ => TensorDecl {
            name: outlet.name().to_owned(),
            is_f32: false,
            shape: Vec::new(),
        },
    }
}

/// Shape of one feature batch: `[batch, channels, height, width]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureShape {
    /// Images in the batch.
    pub batch: usize,
    /// Channels per cell.
    pub channels: usize,
    /// Cells down.
    pub height: usize,
    /// Cells across.
    pub width: usize,
}

/// A loaded, checked feature model. Owns its session; not shared between
/// threads (a worker thread owns one).
#[derive(Debug)]
pub struct FeatureModel {
    session: Session,
    manifest: Manifest,
    threads: usize,
}

impl FeatureModel {
    /// Creates a session with `threads` intra-op threads, then checks the
    /// checksum and the session's inputs and outputs against the manifest.
    pub fn load(runtime: &Runtime, source: &ModelSource, threads: usize) -> Result<Self, ModelError> {
        source.verify_checksum()?;
        let session = Session::builder(&runtime.environment)?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(ort::Error::from)?
            .with_intra_threads(threads.max(1))
            .map_err(ort::Error::from)?
            .with_inter_threads(1)
            .map_err(ort::Error::from)?
            // ONNX Runtime's workers otherwise spin after each run, taking
            // the cores from the search that follows.
            .with_intra_op_spinning(false)
            .map_err(ort::Error::from)?
            .commit_from_memory(&source.onnx)?;
        let inputs: Vec<TensorDecl> = session.inputs().iter().map(declare).collect();
        let outputs: Vec<TensorDecl> = session.outputs().iter().map(declare).collect();
        check_contract(&source.manifest, &inputs, &outputs).map_err(|reason| ModelError::Contract {
            origin: source.origin.clone(),
            reason,
        })?;
        Ok(Self {
            session,
            manifest: source.manifest.clone(),
            threads: threads.max(1),
        })
    }

    /// The manifest the model was checked against.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The intra-op threads the session was made with; the search uses as
    /// many.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Checks that the model can take a `width` x `height` input.
    pub fn check_input_size(&self, width: usize, height: usize) -> Result<(), ModelError> {
        check_input_size(&self.manifest, width, height)
    }

    /// Runs the model on `input`, an NCHW float32 batch of `batch` images of
    /// `height` x `width`, and writes the features (NCHW) into `features`,
    /// which is resized and reused across calls.
    pub fn run(
        &mut self,
        input: &[f32],
        batch: usize,
        height: usize,
        width: usize,
        features: &mut Vec<f32>,
    ) -> Result<FeatureShape, ModelError> {
        self.check_input_size(width, height)?;
        if input.len() != batch * 3 * height * width {
            return Err(ModelError::InputSize {
                width,
                height,
                reason: format!(
                    "the buffer holds {} values, not {batch}x3x{height}x{width}",
                    input.len()
                ),
            });
        }
        let tensor = TensorRef::from_array_view(([batch, 3, height, width], input))?;
        let outputs = self
            .session
            .run(ort::inputs![self.manifest.input.name.as_str() => tensor])?;
        let (shape, data) = outputs[self.manifest.output.name.as_str()].try_extract_tensor::<f32>()?;
        let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
        let stride = self.manifest.output.stride as usize;
        let expected = [
            batch,
            self.manifest.output.channels as usize,
            height / stride,
            width / stride,
        ];
        if dims != expected {
            return Err(ModelError::Contract {
                origin: self.manifest.name.clone(),
                reason: format!("output shape {dims:?}, expected {expected:?}"),
            });
        }
        features.clear();
        features.extend_from_slice(data);
        Ok(FeatureShape {
            batch,
            channels: expected[1],
            height: expected[2],
            width: expected[3],
        })
    }

    /// Runs one image of the given size through the model, so that the first
    /// real request does not pay for ONNX Runtime's lazy initialisation.
    pub fn warm_up(&mut self, width: usize, height: usize) -> Result<(), ModelError> {
        let input = vec![0.0; 3 * width * height];
        let mut features = Vec::new();
        self.run(&input, 1, height, width, &mut features).map(|_| ())
    }
}

/// Checks that `width` x `height` is a positive multiple of the manifest's
/// size multiple (the model's SAME padding is only right then).
pub fn check_input_size(manifest: &Manifest, width: usize, height: usize) -> Result<(), ModelError> {
    let multiple = manifest.input.size_multiple.max(1) as usize;
    if width == 0 || height == 0 || !width.is_multiple_of(multiple) || !height.is_multiple_of(multiple) {
        return Err(ModelError::InputSize {
            width,
            height,
            reason: format!("width and height must be positive multiples of {multiple}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(name: &str, shape: &[i64]) -> TensorDecl {
        TensorDecl {
            name: name.to_owned(),
            is_f32: true,
            shape: shape.to_vec(),
        }
    }

    fn bundled() -> Manifest {
        ModelSource::bundled().unwrap().manifest
    }

    #[test]
    fn bundled_manifest_matches_bundled_bytes() {
        ModelSource::bundled().unwrap().verify_checksum().unwrap();
    }

    #[test]
    fn contract_accepts_the_manifest_shapes() {
        let m = bundled();
        let ok = check_contract(
            &m,
            &[decl(&m.input.name, &m.input.shape)],
            &[decl(&m.output.name, &m.output.shape)],
        );
        assert_eq!(ok, Ok(()));
    }

    #[test]
    fn contract_refuses_wrong_names_channels_types_and_counts() {
        let m = bundled();
        let input = || decl(&m.input.name, &m.input.shape);
        let output = || decl(&m.output.name, &m.output.shape);
        let refused =
            |inputs: &[TensorDecl], outputs: &[TensorDecl]| check_contract(&m, inputs, outputs).unwrap_err();

        assert!(refused(&[input()], &[decl("logits", &m.output.shape)]).contains("`logits`"));
        assert!(refused(&[input()], &[decl(&m.output.name, &[-1, 40, -1, -1])]).contains("shape"));
        let fixed_size = refused(&[decl(&m.input.name, &[1, 3, 224, 224])], &[output()]);
        assert!(fixed_size.contains("[1, 3, 224, 224]"));
        let int_input = TensorDecl {
            is_f32: false,
            ..input()
        };
        assert!(refused(&[int_input], &[output()]).contains("float32"));
        assert!(refused(&[input()], &[output(), output()]).contains("the model has 2"));
    }

    #[test]
    fn input_sizes_must_be_multiples_of_sixteen() {
        let m = bundled();
        assert!(check_input_size(&m, 256, 256).is_ok());
        assert!(check_input_size(&m, 512, 1248).is_ok());
        assert!(check_input_size(&m, 250, 256).is_err());
        assert!(check_input_size(&m, 0, 256).is_err());
    }

    #[test]
    fn a_corrupted_model_fails_its_checksum() {
        let mut source = ModelSource::bundled().unwrap();
        source.onnx.to_mut()[100] ^= 0xff;
        let error = source.verify_checksum().unwrap_err().to_string();
        assert!(error.contains("sha256"), "{error}");
    }
}
