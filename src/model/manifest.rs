//! What a model promises (its manifest, read from the JSON file beside the
//! `.onnx`), where its bytes come from, and the contract check of a session's
//! declared tensors against the manifest.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ModelError;

/// The bundled model, compiled into the binary so that it runs from anywhere.
const BUNDLED_ONNX: &[u8] = include_bytes!("../../models/efficientnet-lite0-features.onnx");
/// The bundled model's manifest.
const BUNDLED_MANIFEST: &str = include_str!("../../models/efficientnet-lite0-features.json");

/// What kind of output a model gives, which decides how the engine uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Patch features (`[N, C, H/stride, W/stride]`) that the engine searches
    /// in the golden reference. A manifest without `kind` is of this kind.
    #[default]
    PatchFeatures,
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::PatchFeatures => "patch_features",
        })
    }
}

/// What a model promises: read from the JSON file next to the `.onnx`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Model name, reported in logs and benchmark reports.
    pub name: String,
    /// What the model outputs. A manifest naming a kind this build does not
    /// know is refused when it is read.
    #[serde(default)]
    pub kind: ModelKind,
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

    /// The model at `path` (see [`ModelSource::from_path`]), or the bundled
    /// one.
    pub fn open(path: Option<&Path>) -> Result<Self, ModelError> {
        match path {
            Some(path) => Self::from_path(path),
            None => Self::bundled(),
        }
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
