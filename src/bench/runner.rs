//! Runs frames through Loupe for the benchmark, either in-process through
//! the synchronous engine or through a running server's gRPC API (as an
//! integrator sees it), and hands back the same per-frame result either way.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::{ClientConfig, EngineConfig};
use crate::engine::{
    Engine, EnrollError, HeatmapFormat, InputSize, InspectOptions, Judge, Marks, RecipeSettings, Region,
    Verdict,
};
use crate::grpc::client::{self, Connection};
use crate::imaging::{DecodeLimits, FrameData, OwnedFrame};
use crate::model;
use crate::proto;
use crate::proto::convert::{encoded_frame, region_from_proto, settings_to_proto, verdict_from_proto};
use crate::proto::inspection_client::InspectionClient;
use crate::proto::recipes_client::RecipesClient;
use crate::runtime::{self, Lookup};
use crate::scoring::map::{AnomalyMap, resize_f32};

use super::BenchError;

/// Marks on the gallery's overlays: region outlines; the verdict is in the
/// caption, and a stamp would cover much of a thumbnail.
const GALLERY_MARKS: Marks = Marks {
    outlines: true,
    stamp: false,
};

/// The model a local run used, for the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    /// The manifest's model name.
    pub name: String,
    /// sha256 of the .onnx file.
    pub sha256: String,
    /// `bundled` or the file path.
    pub origin: String,
    /// ONNX Runtime version.
    pub onnxruntime: String,
    /// ONNX Runtime intra-op threads.
    pub threads: usize,
}

/// A reference built from good frames.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// The threshold in force (calibrated from the good frames, or fixed).
    pub threshold: f32,
    /// Wall time of reading, extracting and building the reference.
    pub seconds: f64,
    /// In-process: the scores of the good images (or perturbed copies)
    /// that calibrated the threshold; a server does not return them.
    pub calibration_scores: Option<Vec<f32>>,
    /// In-process, global fast search: the bank's inverted lists and how
    /// many each patch probes.
    pub fast_lists: Option<(usize, usize)>,
}

/// What one inspected frame gave.
#[derive(Debug, Clone)]
pub struct FrameResult {
    /// The anomaly score (map maximum).
    pub score: f32,
    /// The threshold it was judged against.
    pub threshold: f32,
    /// Pass or fail.
    pub verdict: Verdict,
    /// Defect regions in frame pixels.
    pub regions: Vec<Region>,
    /// The anomaly map over the ROI (or frame), when asked for, at the model
    /// input size. In server mode it is the RAW_U8 heatmap (longer side at
    /// the input's) resampled to that size: scores quantised to 256 levels
    /// and clipped at twice the threshold.
    pub map: Option<AnomalyMap>,
    /// Frame latency: the engine's total in-process (decode to regions),
    /// the client-measured round trip in server mode.
    pub latency: Duration,
    /// Time inside ONNX Runtime.
    pub inference: Duration,
}

/// In-process or through a server.
#[derive(Debug)]
pub enum Runner {
    /// The engine in this process.
    Local(Box<Local>),
    /// A Loupe server over gRPC.
    Remote(Box<Remote>),
}

/// The in-process engine and the current reference.
#[derive(Debug)]
pub struct Local {
    engine: Engine,
    settings: RecipeSettings,
    judge: Option<Judge>,
    model: ModelInfo,
}

/// gRPC clients and the benchmark's temporary recipe on the server.
#[derive(Debug)]
pub struct Remote {
    tokio: tokio::runtime::Runtime,
    recipes: RecipesClient<Connection>,
    inspection: InspectionClient<Connection>,
    url: String,
    recipe: String,
    created: bool,
    settings: RecipeSettings,
    resizer: fast_image_resize::Resizer,
}

fn read(path: &Path) -> Result<Vec<u8>, BenchError> {
    std::fs::read(path).map_err(|error| BenchError::Read {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })
}

fn frame_error(path: &Path) -> impl FnOnce(crate::engine::EngineError) -> BenchError + '_ {
    move |error| BenchError::Frame {
        path: path.to_path_buf(),
        reason: error.to_string(),
    }
}

fn not_enrolled() -> BenchError {
    BenchError::Internal("a frame was inspected before enrollment; this is a bug".into())
}

impl Runner {
    /// Loads ONNX Runtime and the model, and checks `settings` against it.
    pub fn local(config: &EngineConfig, settings: RecipeSettings) -> Result<Self, BenchError> {
        let runtime = runtime::load(&Lookup::from_process(config.onnxruntime.clone()))?;
        let loaded = model::load(&runtime, &config.model)?;
        let manifest = loaded.extractor.manifest();
        let info = ModelInfo {
            name: manifest.name.clone(),
            sha256: manifest.sha256.clone(),
            origin: loaded.origin,
            onnxruntime: runtime.version,
            threads: config.model.threads,
        };
        let engine = Engine::new(loaded.extractor, DecodeLimits::default());
        engine.validate(&settings).map_err(BenchError::Settings)?;
        Ok(Self::Local(Box::new(Local {
            engine,
            settings,
            judge: None,
            model: info,
        })))
    }

    /// Connects to the server `server` names; the recipe is created at the
    /// first enrollment and deleted when the runner is dropped.
    pub fn remote(server: &ClientConfig, settings: RecipeSettings) -> Result<Self, BenchError> {
        let url = &server.server;
        let server_error = |message: String| BenchError::Server {
            url: url.clone(),
            message,
        };
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| server_error(format!("cannot start the async runtime: {error}")))?;
        let channel = tokio.block_on(client::connect(server)).map_err(|error| {
            server_error(match error {
                client::ConnectError::Unreachable { reason, .. } => {
                    format!("cannot connect: {reason}; is `loupe serve` running?")
                }
                other => other.to_string(),
            })
        })?;
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Ok(Self::Remote(Box::new(Remote {
            tokio,
            recipes: RecipesClient::new(channel.clone())
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
            inspection: InspectionClient::new(channel)
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
            url: url.clone(),
            recipe: format!("loupe-bench-{}-{}", std::process::id(), unix.as_millis()),
            created: false,
            settings,
            resizer: fast_image_resize::Resizer::new(),
        })))
    }

    /// The model, for a local run (a server does not say which it uses).
    pub fn model(&self) -> Option<&ModelInfo> {
        match self {
            Runner::Local(local) => Some(&local.model),
            Runner::Remote(_) => None,
        }
    }

    /// Builds the reference from `good` (replacing any earlier one), calling
    /// `progress` after each image is read.
    pub fn enroll(&mut self, good: &[PathBuf], progress: &mut dyn FnMut()) -> Result<Enrolled, BenchError> {
        match self {
            Runner::Local(local) => local.enroll(good, progress),
            Runner::Remote(remote) => remote.enroll(good, progress),
        }
    }

    /// Inspects one frame; `want_map` asks for the anomaly map.
    pub fn inspect(&mut self, path: &Path, want_map: bool) -> Result<FrameResult, BenchError> {
        match self {
            Runner::Local(local) => local.inspect(path, want_map),
            Runner::Remote(remote) => remote.inspect(path, want_map),
        }
    }

    /// The heatmap overlay PNG of one frame, longer side at most `max_size`.
    pub fn overlay(&mut self, path: &Path, max_size: u32) -> Result<Vec<u8>, BenchError> {
        match self {
            Runner::Local(local) => local.overlay(path, max_size),
            Runner::Remote(remote) => remote.overlay(path, max_size),
        }
    }
}

impl Local {
    fn enroll(&mut self, good: &[PathBuf], progress: &mut dyn FnMut()) -> Result<Enrolled, BenchError> {
        let started = Instant::now();
        let frames = good.iter().map(|path| {
            let frame = read(path).map(|bytes| OwnedFrame::Encoded(bytes.into()));
            progress();
            frame
        });
        let reference = self
            .engine
            .enroll(&self.settings, frames)
            .map_err(|error| match error {
                EnrollError::Source { error, .. } => error,
                EnrollError::Frame { index, source } => frame_error(&good[index])(source),
                EnrollError::Build(error) => error.into(),
            })?;
        let judge = Judge::new(self.settings.clone(), reference, self.engine.limits())?;
        let enrolled = Enrolled {
            threshold: judge.threshold(),
            seconds: started.elapsed().as_secs_f64(),
            calibration_scores: Some(judge.reference().calibration_scores.clone()),
            fast_lists: judge.bank().and_then(|bank| bank.fast_lists()),
        };
        self.judge = Some(judge);
        Ok(enrolled)
    }

    fn inspect(&mut self, path: &Path, want_map: bool) -> Result<FrameResult, BenchError> {
        let bytes = read(path)?;
        let judge = self.judge.as_ref().ok_or_else(not_enrolled)?;
        let inspection = self
            .engine
            .inspect(judge, FrameData::Encoded(&bytes), &InspectOptions::default())
            .map_err(frame_error(path))?;
        Ok(FrameResult {
            score: inspection.score,
            threshold: inspection.threshold,
            verdict: inspection.verdict,
            regions: inspection.regions,
            map: want_map.then_some(inspection.map),
            latency: inspection.timings.total(),
            inference: inspection.timings.inference,
        })
    }

    fn overlay(&mut self, path: &Path, max_size: u32) -> Result<Vec<u8>, BenchError> {
        let bytes = read(path)?;
        let judge = self.judge.as_ref().ok_or_else(not_enrolled)?;
        let options = InspectOptions {
            heatmap: Some((HeatmapFormat::OverlayPng, max_size)),
            marks: GALLERY_MARKS,
        };
        let inspection = self
            .engine
            .inspect(judge, FrameData::Encoded(&bytes), &options)
            .map_err(frame_error(path))?;
        inspection
            .heatmap
            .map(|h| h.data)
            .ok_or_else(|| BenchError::Internal("the engine rendered no heatmap; this is a bug".into()))
    }
}

impl Remote {
    fn error(&self, message: impl std::fmt::Display) -> BenchError {
        BenchError::Server {
            url: self.url.clone(),
            message: message.to_string(),
        }
    }

    fn status(&self, status: &tonic::Status) -> BenchError {
        self.error(client::describe(status))
    }

    fn enroll(&mut self, good: &[PathBuf], progress: &mut dyn FnMut()) -> Result<Enrolled, BenchError> {
        let started = Instant::now();
        if !self.created {
            let request = proto::CreateRecipeRequest {
                name: self.recipe.clone(),
                settings: Some(settings_to_proto(&self.settings)),
            };
            let answer = self.tokio.block_on(self.recipes.create_recipe(request));
            answer.map_err(|status| self.status(&status))?;
            self.created = true;
        }
        let mut messages = Vec::with_capacity(good.len());
        for (index, path) in good.iter().enumerate() {
            messages.push(proto::AddReferencesRequest {
                recipe: self.recipe.clone(),
                frame: Some(encoded_frame(read(path)?)),
                replace: index == 0,
                name: path.display().to_string(),
            });
            progress();
        }
        let answer = self
            .tokio
            .block_on(self.recipes.add_references(tokio_stream::iter(messages)));
        let recipe = answer.map_err(|status| self.status(&status))?.into_inner();
        Ok(Enrolled {
            threshold: recipe.threshold,
            seconds: started.elapsed().as_secs_f64(),
            calibration_scores: None,
            fast_lists: None,
        })
    }

    fn request(
        &self,
        path: &Path,
        heatmap: Option<(proto::HeatmapFormat, u32)>,
    ) -> Result<proto::InspectRequest, BenchError> {
        Ok(proto::InspectRequest {
            recipe: self.recipe.clone(),
            frame: Some(encoded_frame(read(path)?)),
            frame_id: path.display().to_string(),
            heatmap: heatmap.map(|(format, max_size)| proto::HeatmapOptions {
                format: format as i32,
                max_size,
                outline_regions: format == proto::HeatmapFormat::OverlayPng && GALLERY_MARKS.outlines,
                stamp_verdict: format == proto::HeatmapFormat::OverlayPng && GALLERY_MARKS.stamp,
            }),
        })
    }

    fn inspect(&mut self, path: &Path, want_map: bool) -> Result<FrameResult, BenchError> {
        // A set size: the heatmap at it; otherwise at the frame's (0).
        let max_size = match self.settings.input_rule() {
            InputSize::Fixed(width, height) => width.max(height),
            InputSize::Aspect(_) | InputSize::Native(_) => 0,
        };
        let request = self.request(path, want_map.then_some((proto::HeatmapFormat::RawU8, max_size)))?;
        let started = Instant::now();
        let answer = self.tokio.block_on(self.inspection.inspect(request));
        let latency = started.elapsed();
        let response = answer
            .map_err(|status| BenchError::Frame {
                path: path.to_path_buf(),
                reason: format!("{:?}: {}", status.code(), status.message()),
            })?
            .into_inner();
        let map = response.heatmap.as_ref().map(|h| self.map_at_input_size(h));
        if want_map && map.is_none() {
            return Err(self.error("the server sent no heatmap"));
        }
        let regions = response.regions.iter().map(region_from_proto).collect();
        let inference = Duration::from_micros(response.timings.map_or(0, |t| t.inference_us));
        Ok(FrameResult {
            score: response.score,
            threshold: response.threshold,
            verdict: verdict_from_proto(response.verdict).unwrap_or(Verdict::Pass),
            regions,
            map,
            latency,
            inference,
        })
    }

    /// The RAW_U8 heatmap as scores, resampled (bilinear) to the model
    /// input size so that pixel metrics see the same grid as in-process
    /// (where the mode picks the input size it varies, and the heatmap's own
    /// size, of the same aspect, is kept).
    fn map_at_input_size(&mut self, heatmap: &proto::Heatmap) -> AnomalyMap {
        let (width, height) = (heatmap.width as usize, heatmap.height as usize);
        let scores: Vec<f32> = heatmap
            .data
            .iter()
            .map(|&b| f32::from(b) * heatmap.scale)
            .collect();
        let target = (
            self.settings.input_width as usize,
            self.settings.input_height as usize,
        );
        if !matches!(self.settings.input_rule(), InputSize::Fixed(..))
            || (width, height) == target
            || width * height != scores.len()
            || width == 0
            || height == 0
        {
            return AnomalyMap {
                width,
                height,
                data: scores,
            };
        }
        let mut data = vec![0.0; target.0 * target.1];
        resize_f32(
            &mut self.resizer,
            &scores,
            width,
            height,
            &mut data,
            target.0,
            target.1,
        );
        AnomalyMap {
            width: target.0,
            height: target.1,
            data,
        }
    }

    fn overlay(&mut self, path: &Path, max_size: u32) -> Result<Vec<u8>, BenchError> {
        let request = self.request(path, Some((proto::HeatmapFormat::OverlayPng, max_size)))?;
        let answer = self.tokio.block_on(self.inspection.inspect(request));
        let response = answer.map_err(|status| self.status(&status))?.into_inner();
        response
            .heatmap
            .map(|h| h.data.to_vec())
            .ok_or_else(|| self.error("the server sent no heatmap"))
    }
}

impl Drop for Remote {
    /// Deletes the benchmark's recipe from the server (best effort).
    fn drop(&mut self) {
        if self.created {
            let request = proto::DeleteRecipeRequest {
                name: self.recipe.clone(),
            };
            if let Err(status) = self.tokio.block_on(self.recipes.delete_recipe(request)) {
                tracing::warn!(recipe = %self.recipe, %status, "could not delete the benchmark recipe");
            }
        }
    }
}
