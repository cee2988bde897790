//! Where the ONNX Runtime library and the model come from, and how the model
//! runs: flags shared by `loupe serve` and `loupe bench`.

use std::path::PathBuf;

use clap::Args;

use super::{ConfigError, at_least};
use crate::model::onnx::NO_CUDA;
use crate::model::{Device, ModelConfig};

/// Where the ONNX Runtime library and the feature model come from, and how
/// many threads inference uses.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// ONNX Runtime library (libonnxruntime.so). Looked for, in order: this
    /// flag, ORT_DYLIB_PATH, next to the executable (as `make install` and
    /// `make dist` put it), the checkout's .loupe/onnxruntime (filled by
    /// `make setup`).
    #[arg(long, env = "LOUPE_ONNXRUNTIME", value_name = "PATH")]
    pub onnxruntime: Option<PathBuf>,

    /// Feature model (.onnx) with its manifest (.json of the same stem)
    /// beside it. Default: the bundled EfficientNet-Lite0 feature model.
    #[arg(long, env = "LOUPE_MODEL", value_name = "PATH")]
    pub model: Option<PathBuf>,

    /// Threads ONNX Runtime uses for one inference. Default: every core.
    #[arg(long, env = "LOUPE_THREADS", value_name = "N")]
    pub threads: Option<usize>,

    /// Where inference runs: cpu, or cuda / cuda:N (GPU N; needs a build
    /// with `--features cuda` and a GPU build of ONNX Runtime). A device that
    /// cannot be used stops Loupe with the reason; it never falls back to the
    /// CPU.
    #[arg(long, env = "LOUPE_DEVICE", value_name = "DEVICE", default_value = "cpu")]
    pub device: Device,
}

/// Resolved engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// `--onnxruntime`, if given.
    pub onnxruntime: Option<PathBuf>,
    /// The model, its threads and its device.
    pub model: ModelConfig,
}

impl EngineArgs {
    /// Validates the engine flags.
    pub fn resolve(&self) -> Result<EngineConfig, ConfigError> {
        let threads = match self.threads {
            Some(threads) => {
                at_least("threads", threads as u64, 1)?;
                threads
            }
            None => std::thread::available_parallelism().map_or(1, usize::from),
        };
        if let Device::Cuda(_) = self.device
            && !cfg!(feature = "cuda")
        {
            return Err(ConfigError {
                flag: "device",
                reason: format!("{}: {NO_CUDA}", self.device),
            });
        }
        Ok(EngineConfig {
            onnxruntime: self.onnxruntime.clone(),
            model: ModelConfig {
                path: self.model.clone(),
                threads,
                device: self.device,
            },
        })
    }
}
