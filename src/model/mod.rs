//! The model layer: what the engine asks of a model ([`FeatureExtractor`]),
//! the manifest every model comes with ([`manifest`]), and the ONNX Runtime
//! implementation ([`onnx`]). Models are loaded, and their sessions built for
//! the chosen [`Device`], in one place: [`load`]. Nothing above this module
//! sees `ort`.

pub mod manifest;
pub mod onnx;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

pub use manifest::{
    InputSpec, Manifest, ModelKind, ModelSource, Normalization, OutputSpec, TensorDecl, check_contract,
    check_input_size, sha256_hex,
};
pub use onnx::OnnxFeatureModel;

use crate::runtime::Runtime;

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
    /// The device cannot be used: not in this build, or its execution
    /// provider failed to register. Never a silent fallback to the CPU.
    #[error("device {device}: {reason}")]
    Device {
        /// The device asked for.
        device: Device,
        /// Why it cannot be used.
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

/// What the engine needs of a model of the [`ModelKind::PatchFeatures`]
/// kind: a batch of normalised images in, a grid of patch features out.
/// Owned by one engine thread; not shared.
///
/// A new backend (another runtime, a remote accelerator) implements this
/// trait; a model that outputs an anomaly map itself would be a second kind
/// with a trait of its own beside this one.
pub trait FeatureExtractor: Send + fmt::Debug {
    /// The manifest the model was checked against: input size multiple,
    /// normalisation, output stride and channels, and the sha256 that
    /// references are tied to.
    fn manifest(&self) -> &Manifest;

    /// Threads one run uses; the search after it uses as many.
    fn threads(&self) -> usize;

    /// Runs the model on `input`, an NCHW float32 batch of `batch` images of
    /// `height` x `width`, and writes the features (NCHW) into `features`,
    /// which is resized and reused across calls.
    fn run(
        &mut self,
        input: &[f32],
        batch: usize,
        height: usize,
        width: usize,
        features: &mut Vec<f32>,
    ) -> Result<FeatureShape, ModelError>;

    /// Runs one image of the given size through the model, so that the first
    /// real request does not pay for lazy initialisation.
    fn warm_up(&mut self, width: usize, height: usize) -> Result<(), ModelError> {
        let input = vec![0.0; 3 * width * height];
        let mut features = Vec::new();
        self.run(&input, 1, height, width, &mut features).map(|_| ())
    }
}

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// ONNX Runtime's CPU provider.
    #[default]
    Cpu,
    /// ONNX Runtime's CUDA provider on GPU number `.0` (builds with the
    /// `cuda` feature only).
    Cuda(u32),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(index) => write!(f, "cuda:{index}"),
        }
    }
}

impl FromStr for Device {
    type Err = String;

    /// `cpu`, `cuda` (GPU 0) or `cuda:N`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim().to_ascii_lowercase();
        match text.as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => match text.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(index)) => Ok(Self::Cuda(index)),
                _ => Err(format!("unknown device {text:?}; use cpu, cuda or cuda:N")),
            },
        }
    }
}

/// Which model to load and how to run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelConfig {
    /// A `.onnx` file with its manifest (`.json` of the same stem) beside
    /// it; `None` is the bundled model.
    pub path: Option<PathBuf>,
    /// Threads for one run, at least 1.
    pub threads: usize,
    /// Where inference runs.
    pub device: Device,
}

/// A loaded model and what reports say about it.
#[derive(Debug)]
pub struct LoadedModel {
    /// The model, ready to run.
    pub extractor: Box<dyn FeatureExtractor>,
    /// Where it came from: `bundled` or the file path.
    pub origin: String,
}

/// Loads the model `config` names: reads it and its manifest, then
/// [`load_source`]. `serve`, `bench` and the tests all load models here.
pub fn load(runtime: &Runtime, config: &ModelConfig) -> Result<LoadedModel, ModelError> {
    let source = ModelSource::open(config.path.as_deref())?;
    let extractor = load_source(runtime, &source, config)?;
    Ok(LoadedModel {
        extractor,
        origin: source.origin,
    })
}

/// Builds the model of `source` for `config`'s device and threads: checks the
/// checksum and the kind, builds the session, and checks the session's
/// tensors against the manifest.
pub fn load_source(
    runtime: &Runtime,
    source: &ModelSource,
    config: &ModelConfig,
) -> Result<Box<dyn FeatureExtractor>, ModelError> {
    match source.manifest.kind {
        ModelKind::PatchFeatures => Ok(Box::new(OnnxFeatureModel::load(
            runtime,
            source,
            config.threads,
            config.device,
        )?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print() {
        assert_eq!("cpu".parse::<Device>(), Ok(Device::Cpu));
        assert_eq!("CUDA".parse::<Device>(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse::<Device>(), Ok(Device::Cuda(3)));
        assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1"] {
            assert!(
                bad.parse::<Device>().unwrap_err().contains("cpu, cuda or cuda:N"),
                "{bad}"
            );
        }
    }
}
