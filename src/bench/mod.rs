//! The offline benchmark, `loupe bench`: a folder of images in, the field's
//! metrics out (summary table, report.json, scores.csv, report.html).
//!
//! [`dataset`] lists the images and [`truth`] reads their masks and defect
//! boxes, [`runner`] judges them in-process or through a server,
//! [`evaluate`] and [`metrics`] compute the numbers, [`report`] and [`html`]
//! (with its charts and gallery) write them.

mod charts;
pub mod dataset;
pub mod evaluate;
mod gallery;
pub mod html;
pub mod metrics;
pub mod report;
pub mod runner;
pub mod truth;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::{BenchArgs, ClientConfig, ConfigError, EngineConfig, FormatArg};
use crate::engine::{EngineError, MatchMode, RecipeSettings};

use dataset::{Dataset, DatasetError, Format, Pair, TestImage};
use evaluate::{Detection, PixelMetrics, Record};
use report::Report;
use runner::Runner;
use truth::{DefectBox, Mask};

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The folder is not a usable dataset.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// A flag value cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The recipe settings cannot work.
    #[error(transparent)]
    Settings(EngineError),
    /// ONNX Runtime could not be loaded.
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    /// The model could not be loaded.
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// Building the reference failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// One frame could not be judged.
    #[error("{path}: {reason}")]
    Frame {
        /// The frame file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The server failed or refused.
    #[error("server {url}: {message}")]
    Server {
        /// The server's address.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// An output file could not be written.
    #[error("cannot write {path}: {reason}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A broken invariant.
    #[error("internal error: {0}")]
    Internal(String),
}

impl BenchError {
    /// Whether the user can fix it before starting (folder, flags, settings,
    /// runtime, model, server address): these exit with code 2.
    pub fn is_setup(&self) -> bool {
        matches!(
            self,
            Self::Dataset(_)
                | Self::Config(_)
                | Self::Settings(_)
                | Self::Runtime(_)
                | Self::Model(_)
                | Self::Server { .. }
        )
    }
}

/// A resolved `loupe bench` configuration.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The dataset folder.
    pub dir: PathBuf,
    /// The layout, when forced.
    pub format: Option<Format>,
    /// Where the report files go.
    pub out: Option<PathBuf>,
    /// gRPC server to go through instead of the in-process engine, and how
    /// to reach it.
    pub server: Option<ClientConfig>,
    /// Use at most this many training images, evenly spaced.
    pub train_limit: Option<usize>,
    /// Frames per gallery section.
    pub gallery: usize,
    /// Show a progress bar.
    pub progress: bool,
    /// Recipe settings from the file and flags.
    pub settings: RecipeSettings,
    /// Whether the matching mode was chosen (flag or settings file); if not,
    /// golden pairs use the aligned mode.
    pub mode_chosen: bool,
    /// Runtime, model and threads.
    pub engine: EngineConfig,
}

impl BenchConfig {
    /// Resolves the flags.
    pub fn from_args(args: &BenchArgs) -> Result<Self, BenchError> {
        let settings = args.settings.apply(RecipeSettings::default())?;
        let file_sets_mode = match &args.settings.settings {
            Some(path) => std::fs::read_to_string(path)
                .ok()
                .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
                .is_some_and(|value| value.get("match_mode").is_some()),
            None => false,
        };
        if args.train_limit == Some(0) {
            return Err(ConfigError {
                flag: "train-limit",
                reason: "must be at least 1".into(),
            }
            .into());
        }
        let server = match &args.server {
            Some(url) => Some(args.credentials.resolve("server", url)?),
            None => match args.credentials.first_given() {
                Some(flag) => {
                    return Err(ConfigError {
                        flag,
                        reason: "only with --server: the in-process engine needs no connection".into(),
                    }
                    .into());
                }
                None => None,
            },
        };
        use std::io::IsTerminal;
        Ok(Self {
            dir: args.dir.clone(),
            format: args.format.map(|f| match f {
                FormatArg::Mvtec => Format::Mvtec,
                FormatArg::Pairs => Format::Pairs,
            }),
            out: args.out.clone(),
            server,
            train_limit: args.train_limit,
            gallery: args.gallery,
            progress: !args.quiet && std::io::stdout().is_terminal(),
            settings,
            mode_chosen: args.settings.mode.is_some() || file_sets_mode,
            engine: args.engine.resolve()?,
        })
    }

    /// The settings for a dataset of `format`.
    pub fn settings_for(&self, format: Format) -> RecipeSettings {
        let mut settings = self.settings.clone();
        if format == Format::Pairs && !self.mode_chosen {
            settings.match_mode = MatchMode::Aligned;
        }
        settings
    }
}

/// What a run measured, before it becomes a [`Report`].
#[derive(Debug, Default)]
pub struct Measured {
    /// One record per test frame, in dataset order.
    pub records: Vec<Record>,
    /// Pixel metrics, when the dataset has ground truth.
    pub pixels: Option<PixelMetrics>,
    /// Defect recall and precision (golden pairs).
    pub detection: Option<Detection>,
    /// Training images used.
    pub train_images: usize,
    /// Total enrollment wall time.
    pub enroll_seconds: f64,
    /// Wall time of the test loop (reading, judging, bookkeeping), without
    /// enrollment.
    pub test_seconds: f64,
    /// Defect frames without a mask (left out of pixel metrics).
    pub missing_masks: usize,
    /// MVTec in-process: the good scores that calibrated the threshold.
    pub calibration_scores: Option<Vec<f32>>,
    /// MVTec in-process, global fast search: lists, and lists probed.
    pub fast_lists: Option<(usize, usize)>,
}

fn progress_bar(show: bool, len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(len as u64),
        if show {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:>8} [{bar:40}] {pos}/{len} {elapsed_precise} eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(what.to_owned());
    bar
}

/// Runs the benchmark, writes the report files if asked, and returns the
/// report.
pub fn run(config: &BenchConfig) -> Result<Report, BenchError> {
    let dataset = dataset::load(&config.dir, config.format)?;
    let settings = config.settings_for(dataset.format());
    let mut runner = match &config.server {
        Some(server) => Runner::remote(server, settings.clone())?,
        None => Runner::local(&config.engine, settings.clone())?,
    };
    let measured = match &dataset {
        Dataset::Mvtec { train, test } => {
            let pixels = dataset.has_ground_truth();
            run_mvtec(config, &mut runner, &settings, train, test, pixels)?
        }
        Dataset::Pairs(pairs) => run_pairs(config, &mut runner, &settings, pairs)?,
    };
    let report = Report::build(config, &dataset, &settings, runner.model(), &measured);
    if let Some(out) = &config.out {
        std::fs::create_dir_all(out).map_err(|error| BenchError::Write {
            path: out.clone(),
            reason: error.to_string(),
        })?;
        report::write_json(&out.join("report.json"), &report)?;
        report::write_csv(&out.join("scores.csv"), &measured.records)?;
        let gallery = gallery::build(&mut runner, &measured.records, config.gallery, &dataset)?;
        html::write(&out.join("report.html"), &report, &measured.records, &gallery)?;
    }
    Ok(report)
}

fn relative(dir: &Path, path: &Path) -> String {
    path.strip_prefix(dir)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// Adds a frame's map and mask to the pixel metrics, the mask cropped to
/// the ROI the map covers.
fn add_pixels(
    pixels: &mut PixelMetrics,
    settings: &RecipeSettings,
    result: &runner::FrameResult,
    mask: &Mask,
) {
    let Some(map) = &result.map else {
        return;
    };
    match settings.roi {
        Some(roi) => pixels.add(map, &mask.crop(roi.x, roi.y, roi.width, roi.height)),
        None => pixels.add(map, mask),
    }
}

fn run_mvtec(
    config: &BenchConfig,
    runner: &mut Runner,
    settings: &RecipeSettings,
    train: &[PathBuf],
    test: &[TestImage],
    with_pixels: bool,
) -> Result<Measured, BenchError> {
    let chosen: Vec<PathBuf> = dataset::evenly_spaced(train.len(), config.train_limit.unwrap_or(train.len()))
        .into_iter()
        .map(|i| train[i].clone())
        .collect();
    let bar = progress_bar(config.progress, chosen.len(), "enroll");
    let enrolled = runner.enroll(&chosen, &mut || bar.inc(1))?;
    bar.finish_and_clear();

    let mut measured = Measured {
        train_images: chosen.len(),
        enroll_seconds: enrolled.seconds,
        calibration_scores: enrolled.calibration_scores,
        fast_lists: enrolled.fast_lists,
        pixels: with_pixels.then(PixelMetrics::default),
        ..Measured::default()
    };
    let bar = progress_bar(config.progress, test.len(), "test");
    let started = Instant::now();
    for image in test {
        let result = runner.inspect(&image.path, with_pixels)?;
        if let Some(pixels) = &mut measured.pixels {
            match (&image.mask, &result.map) {
                (Some(path), _) => add_pixels(pixels, settings, &result, &Mask::read(path)?),
                (None, Some(map)) if !image.is_defect() => {
                    pixels.add(map, &Mask::empty(map.width, map.height))
                }
                _ => measured.missing_masks += 1,
            }
        }
        measured.records.push(Record {
            path: image.path.clone(),
            name: relative(&config.dir, &image.path),
            defect: image.is_defect(),
            defect_type: image.defect_type.clone(),
            score: result.score,
            threshold: result.threshold,
            verdict: result.verdict,
            latency: result.latency,
            inference: result.inference,
            mask: image.mask.clone(),
            reference: None,
            boxes: Vec::new(),
        });
        bar.inc(1);
    }
    measured.test_seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    if !with_pixels {
        measured.missing_masks = test.iter().filter(|t| t.is_defect()).count();
    }
    Ok(measured)
}

/// A pair's annotations: boxes from defects.txt (else the mask's connected
/// components) and the mask (else the boxes drawn at the frame's size).
fn pair_truth(pair: &Pair) -> Result<(Vec<DefectBox>, Mask), BenchError> {
    let boxes = match &pair.defects {
        Some(path) => Some(truth::read_defects(path)?),
        None => None,
    };
    let mask = match &pair.mask {
        Some(path) => Mask::read(path)?,
        None => {
            let (width, height) = image::image_dimensions(&pair.frame).map_err(|error| BenchError::Read {
                path: pair.frame.clone(),
                reason: error.to_string(),
            })?;
            Mask::from_boxes(
                boxes.as_deref().unwrap_or_default(),
                width as usize,
                height as usize,
            )
        }
    };
    let boxes = boxes.unwrap_or_else(|| mask.component_boxes());
    Ok((boxes, mask))
}

fn run_pairs(
    config: &BenchConfig,
    runner: &mut Runner,
    settings: &RecipeSettings,
    pairs: &[Pair],
) -> Result<Measured, BenchError> {
    let mut measured = Measured {
        pixels: Some(PixelMetrics::default()),
        detection: Some(Detection::default()),
        ..Measured::default()
    };
    let bar = progress_bar(config.progress, pairs.len(), "pairs");
    let mut test_time = Duration::ZERO;
    for pair in pairs {
        let enrolled = runner.enroll(std::slice::from_ref(&pair.reference), &mut || {})?;
        measured.enroll_seconds += enrolled.seconds;
        measured.train_images += 1;
        let started = Instant::now();
        let result = runner.inspect(&pair.frame, true)?;
        let (boxes, mask) = pair_truth(pair)?;
        if let Some(pixels) = &mut measured.pixels {
            add_pixels(pixels, settings, &result, &mask);
        }
        if let Some(detection) = &mut measured.detection {
            detection.add(&boxes, &result.regions);
        }
        let defect = mask.any() || !boxes.is_empty();
        measured.records.push(Record {
            path: pair.frame.clone(),
            name: relative(&config.dir, &pair.frame),
            defect,
            defect_type: if defect { "defect" } else { dataset::GOOD }.to_owned(),
            score: result.score,
            threshold: result.threshold,
            verdict: result.verdict,
            latency: result.latency,
            inference: result.inference,
            mask: pair.mask.clone(),
            reference: Some(pair.reference.clone()),
            boxes,
        });
        test_time += started.elapsed();
        bar.inc(1);
    }
    measured.test_seconds = test_time.as_secs_f64();
    bar.finish_and_clear();
    Ok(measured)
}
