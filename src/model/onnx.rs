//! The ONNX Runtime feature extractor: the session built for a device, its
//! tensors checked against the manifest, and inference.

use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::value::{TensorRef, ValueType};

use super::manifest::{Manifest, ModelSource, TensorDecl, check_contract, check_input_size};
use super::{Device, FeatureExtractor, FeatureShape, ModelError};
use crate::runtime::Runtime;

/// A loaded, checked feature model. Owns its session; not shared between
/// threads (a worker thread owns one).
#[derive(Debug)]
pub struct OnnxFeatureModel {
    session: Session,
    manifest: Manifest,
    threads: usize,
}

impl OnnxFeatureModel {
    /// Creates a session on `device` with `threads` intra-op threads, then
    /// checks the checksum and the session's inputs and outputs against the
    /// manifest.
    pub fn load(
        runtime: &Runtime,
        source: &ModelSource,
        threads: usize,
        device: Device,
    ) -> Result<Self, ModelError> {
        source.verify_checksum()?;
        let builder = Session::builder(&runtime.environment)?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(ort::Error::from)?
            .with_intra_threads(threads.max(1))
            .map_err(ort::Error::from)?
            .with_inter_threads(1)
            .map_err(ort::Error::from)?
            // ONNX Runtime's workers otherwise spin after each run, taking
            // the cores from the search that follows.
            .with_intra_op_spinning(false)
            .map_err(ort::Error::from)?;
        let session = with_device(builder, device)?.commit_from_memory(&source.onnx)?;
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
}

/// Registers the execution provider for `device`; the CPU needs none. A
/// provider that fails to register is an error, never a quiet fall back to
/// the CPU.
fn with_device(builder: SessionBuilder, device: Device) -> Result<SessionBuilder, ModelError> {
    match device {
        Device::Cpu => Ok(builder),
        #[cfg(feature = "cuda")]
        Device::Cuda(index) => {
            let provider = ort::ep::CUDA::default()
                .with_device_id(i32::try_from(index).unwrap_or(i32::MAX))
                .build()
                .error_on_failure();
            builder
                .with_execution_providers([provider])
                .map_err(|error| ModelError::Device {
                    device,
                    reason: format!(
                        "the CUDA execution provider did not register ({}); is the ONNX Runtime library a GPU build, with CUDA and cuDNN installed?",
                        ort::Error::<()>::from(error)
                    ),
                })
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err(ModelError::Device {
            device,
            reason: NO_CUDA.to_owned(),
        }),
    }
}

/// Why a build without the `cuda` feature refuses a CUDA device.
pub const NO_CUDA: &str =
    "this build has no CUDA support; build with `cargo build --release --features cuda`";

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

impl FeatureExtractor for OnnxFeatureModel {
    fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn threads(&self) -> usize {
        self.threads
    }

    fn run(
        &mut self,
        input: &[f32],
        batch: usize,
        height: usize,
        width: usize,
        features: &mut Vec<f32>,
    ) -> Result<FeatureShape, ModelError> {
        check_input_size(&self.manifest, width, height)?;
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
}
