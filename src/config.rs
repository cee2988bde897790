//! Command-line flags (each with a `LOUPE_*` environment variable) and the
//! validated configuration they resolve into.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Loupe: visual quality inspection against a golden reference, over gRPC.
#[derive(Debug, Parser)]
#[command(name = "loupe", version, about, propagate_version = true)]
pub struct Cli {
    /// Log filter, in `tracing` env-filter syntax (`info`, `loupe=debug`, ...).
    #[arg(long, env = "LOUPE_LOG", default_value = "info,ort=warn", global = true)]
    pub log: String,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the gRPC inspection service.
    Serve(ServeArgs),
    /// Manages recipes on a running server.
    Recipe(RecipeArgs),
    /// Inspects image files on a running server and prints the verdicts.
    Inspect(InspectArgs),
    /// Benchmarks a recipe on a folder of images (MVTec AD layout or golden
    /// pairs): AUROC, F1, false-reject and escape rates, pixel AUROC, AUPRO,
    /// defect recall, latency; a summary on stdout and, with --out, report
    /// files.
    Bench(BenchArgs),
}

/// Where a client command finds the server.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// The Loupe server's address.
    #[arg(long, env = "LOUPE_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
}

/// Recipe settings as flags (unset flags keep the defaults, or with
/// `recipe update` the recipe's current values).
#[derive(Debug, Clone, Default, Args)]
pub struct SettingsArgs {
    /// JSON file of recipe settings (the fields of RecipeSettings, as
    /// `loupe recipe show --json` prints them); flags override it.
    #[arg(long, env = "LOUPE_SETTINGS", value_name = "FILE")]
    pub settings: Option<PathBuf>,

    /// Model input size, WxH, multiples of 16 (default 256x256).
    #[arg(long, env = "LOUPE_INPUT_SIZE", value_name = "WxH", value_parser = parse_size)]
    pub input_size: Option<(u32, u32)>,

    /// Matching mode: global (PatchCore) or aligned (fixtured parts).
    #[arg(long, env = "LOUPE_MODE", value_enum)]
    pub mode: Option<ModeArg>,

    /// Aligned mode: search radius in feature cells (default 1).
    #[arg(long, env = "LOUPE_NEIGHBORHOOD", value_name = "CELLS")]
    pub neighborhood: Option<u32>,

    /// Global mode: coreset size, in reference patches (default 8192).
    #[arg(long, env = "LOUPE_REFERENCE_SIZE", value_name = "N")]
    pub reference_size: Option<u32>,

    /// Global mode: give each frame an input of its own aspect ratio.
    #[arg(long, env = "LOUPE_KEEP_ASPECT")]
    pub keep_aspect: Option<bool>,

    /// Smallest reported region, in frame pixels.
    #[arg(long, env = "LOUPE_MIN_REGION_AREA", value_name = "PIXELS")]
    pub min_region_area: Option<u32>,

    /// Fixed threshold on the anomaly score (default: calibrated).
    #[arg(long, env = "LOUPE_THRESHOLD")]
    pub threshold: Option<f32>,

    /// Sensitivity: above 1 fails more parts (default 1).
    #[arg(long, env = "LOUPE_SENSITIVITY")]
    pub sensitivity: Option<f32>,

    /// Region of interest in frame pixels: x,y,width,height.
    #[arg(long, env = "LOUPE_ROI", value_name = "X,Y,W,H", value_parser = parse_roi)]
    pub roi: Option<crate::imaging::Roi>,

    /// Inspection mask PNG (white = inspect, black = ignore).
    #[arg(long, env = "LOUPE_MASK", value_name = "PNG")]
    pub mask: Option<PathBuf>,
}

/// Matching mode flag values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// PatchCore: nearest reference patch anywhere.
    Global,
    /// Nearest reference patch near the same place.
    Aligned,
}

fn parse_size(text: &str) -> Result<(u32, u32), String> {
    let (w, h) = text
        .split_once(['x', 'X'])
        .ok_or("expected WxH, such as 256x256")?;
    Ok((
        w.trim().parse().map_err(|_| format!("bad width {w:?}"))?,
        h.trim().parse().map_err(|_| format!("bad height {h:?}"))?,
    ))
}

fn parse_roi(text: &str) -> Result<crate::imaging::Roi, String> {
    let parts: Vec<u32> = text
        .split(',')
        .map(|p| {
            p.trim()
                .parse()
                .map_err(|_| format!("bad number {p:?} in {text:?}"))
        })
        .collect::<Result<_, _>>()?;
    let [x, y, width, height] = parts[..] else {
        return Err("expected x,y,width,height".into());
    };
    Ok(crate::imaging::Roi { x, y, width, height })
}

impl SettingsArgs {
    /// Applies the settings file and the flags to `base`.
    pub fn apply(
        &self,
        base: crate::engine::RecipeSettings,
    ) -> Result<crate::engine::RecipeSettings, ConfigError> {
        let mut settings = match &self.settings {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                    flag: "settings",
                    reason: format!("cannot read {}: {e}", path.display()),
                })?;
                serde_json::from_str(&text).map_err(|e| ConfigError {
                    flag: "settings",
                    reason: format!("{}: {e}", path.display()),
                })?
            }
            None => base,
        };
        if let Some((width, height)) = self.input_size {
            settings.input_width = width;
            settings.input_height = height;
        }
        if let Some(mode) = self.mode {
            settings.match_mode = match mode {
                ModeArg::Global => crate::engine::MatchMode::Global,
                ModeArg::Aligned => crate::engine::MatchMode::Aligned,
            };
        }
        if let Some(v) = self.neighborhood {
            settings.neighborhood = v;
        }
        if let Some(v) = self.reference_size {
            settings.reference_size = v;
        }
        if let Some(v) = self.keep_aspect {
            settings.keep_aspect = v;
        }
        if let Some(v) = self.min_region_area {
            settings.min_region_area = v;
        }
        if let Some(v) = self.threshold {
            settings.threshold = Some(v);
        }
        if let Some(v) = self.sensitivity {
            settings.sensitivity = v;
        }
        if let Some(v) = self.roi {
            settings.roi = Some(v);
        }
        if let Some(path) = &self.mask {
            settings.mask_png = std::fs::read(path).map_err(|e| ConfigError {
                flag: "mask",
                reason: format!("cannot read {}: {e}", path.display()),
            })?;
        }
        Ok(settings)
    }
}

/// `loupe recipe ...`.
#[derive(Debug, Args)]
pub struct RecipeArgs {
    #[command(flatten)]
    pub server: ServerArgs,

    /// What to do with recipes.
    #[command(subcommand)]
    pub action: RecipeAction,
}

/// Recipe actions.
#[derive(Debug, Subcommand)]
pub enum RecipeAction {
    /// Creates a recipe.
    Create {
        /// Recipe name: letters, digits, '-', '_', '.'.
        name: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Changes a recipe's settings (unset flags keep their current value).
    Update {
        /// Recipe name.
        name: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Lists the recipes.
    List,
    /// Shows one recipe.
    Show {
        /// Recipe name.
        name: String,
        /// Print the settings as JSON (usable with --settings).
        #[arg(long, env = "LOUPE_JSON")]
        json: bool,
    },
    /// Deletes a recipe and its reference.
    Delete {
        /// Recipe name.
        name: String,
    },
    /// Sends good frames (image files) to a recipe's golden reference.
    AddRefs {
        /// Recipe name.
        name: String,
        /// Image files of good parts.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Start the reference afresh instead of adding to it.
        #[arg(long, env = "LOUPE_REPLACE")]
        replace: bool,
    },
}

/// `loupe inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub server: ServerArgs,

    /// Recipe to inspect against.
    #[arg(long, env = "LOUPE_RECIPE")]
    pub recipe: String,

    /// Image files to inspect.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,

    /// Write a heatmap overlay PNG per file into this folder.
    #[arg(long, env = "LOUPE_HEATMAP_DIR", value_name = "DIR")]
    pub heatmap: Option<PathBuf>,
}

/// Dataset layouts `loupe bench` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
    /// CATEGORY/train/good, CATEGORY/test/TYPE, CATEGORY/ground_truth/TYPE.
    Mvtec,
    /// SET/ID/reference.*, SET/ID/frame.*, optional mask.png and defects.txt.
    Pairs,
}

/// `loupe bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Dataset folder: an MVTec AD category or a folder of golden pairs.
    pub dir: PathBuf,

    /// Dataset layout (default: detected from the folder).
    #[arg(long, env = "LOUPE_BENCH_FORMAT", value_enum)]
    pub format: Option<FormatArg>,

    /// Write report.json, scores.csv and report.html into this folder.
    #[arg(long, env = "LOUPE_BENCH_OUT", value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Go through the gRPC API of the Loupe server at this address (such as
    /// http://127.0.0.1:50051) instead of the in-process engine; a temporary
    /// recipe is created there and deleted at the end.
    #[arg(long, env = "LOUPE_BENCH_SERVER", value_name = "URL")]
    pub server: Option<String>,

    /// Use only N training images, evenly spaced in sorted order (quick runs).
    #[arg(long, env = "LOUPE_BENCH_TRAIN_LIMIT", value_name = "N")]
    pub train_limit: Option<usize>,

    /// Frames shown in each gallery section of report.html.
    #[arg(long, env = "LOUPE_BENCH_GALLERY", value_name = "N", default_value_t = 6)]
    pub gallery: usize,

    /// No progress bar (it is also hidden when stdout is not a terminal).
    #[arg(long, env = "LOUPE_QUIET")]
    pub quiet: bool,

    #[command(flatten)]
    pub settings: SettingsArgs,

    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Where the ONNX Runtime library and the feature model come from, and how
/// many threads inference uses.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// ONNX Runtime library (libonnxruntime.so). Looked for, in order: this
    /// flag, ORT_DYLIB_PATH, the checkout's .loupe/onnxruntime (filled by
    /// `make setup`), next to the executable.
    #[arg(long, env = "LOUPE_ONNXRUNTIME", value_name = "PATH")]
    pub onnxruntime: Option<PathBuf>,

    /// Feature model (.onnx) with its manifest (.json of the same stem)
    /// beside it. Default: the bundled EfficientNet-Lite0 feature model.
    #[arg(long, env = "LOUPE_MODEL", value_name = "PATH")]
    pub model: Option<PathBuf>,

    /// Threads ONNX Runtime uses for one inference. Default: every core.
    #[arg(long, env = "LOUPE_THREADS", value_name = "N")]
    pub threads: Option<usize>,
}

/// Flags of `loupe serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on for gRPC.
    #[arg(long, env = "LOUPE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Folder for recipes and references; created if missing.
    #[arg(
        long,
        env = "LOUPE_DATA_DIR",
        default_value = "loupe-data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,

    #[command(flatten)]
    pub engine: EngineArgs,

    /// Largest gRPC message accepted, in bytes.
    #[arg(long, env = "LOUPE_MAX_MESSAGE_BYTES", default_value_t = 64 << 20)]
    pub max_message_bytes: usize,

    /// Largest frame accepted, in pixels (width x height), checked before
    /// any pixel memory is allocated. Also caps what an encoded file may
    /// claim, which stops decompression bombs.
    #[arg(long, env = "LOUPE_MAX_FRAME_PIXELS", default_value_t = 64 << 20)]
    pub max_frame_pixels: u64,

    /// Most good frames one AddReferences call may send.
    #[arg(long, env = "LOUPE_MAX_REFERENCES", default_value_t = 1000)]
    pub max_references: usize,

    /// Most frames accepted for inspection at once (running or waiting);
    /// beyond that a request gets RESOURCE_EXHAUSTED at once.
    #[arg(long, env = "LOUPE_MAX_PENDING", default_value_t = 64)]
    pub max_pending: usize,

    /// Most waiting frames of one recipe judged together in one model run
    /// and one search (1 turns batching off). Only frames that are already
    /// waiting are batched; none is held back to fill a batch.
    #[arg(long, env = "LOUPE_MAX_BATCH", default_value_t = DEFAULT_MAX_BATCH)]
    pub max_batch: usize,

    /// Seconds to let in-flight requests finish after SIGINT or SIGTERM.
    #[arg(long, env = "LOUPE_SHUTDOWN_GRACE", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
}

/// Waiting frames judged together by default. With 4 frames in flight on a
/// stream, batches of 2 leave the other 2 frames travelling and decoding
/// while the engine works; batches of up to 4 measured slower
/// (`cargo bench --bench service`).
pub const DEFAULT_MAX_BATCH: usize = 2;

/// Resolved engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// `--onnxruntime`, if given.
    pub onnxruntime: Option<PathBuf>,
    /// `--model`, if given; else the bundled model.
    pub model: Option<PathBuf>,
    /// ONNX Runtime intra-op threads, at least 1.
    pub threads: usize,
}

/// Resolved limits on what a client may send.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest gRPC message, bytes.
    pub max_message_bytes: usize,
    /// Largest frame, pixels.
    pub max_frame_pixels: u64,
    /// Most frames in one AddReferences call.
    pub max_references: usize,
    /// Most frames accepted for inspection at once.
    pub max_pending: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 << 20,
            max_frame_pixels: 64 << 20,
            max_references: 1000,
            max_pending: 64,
        }
    }
}

/// Resolved `loupe serve` configuration, passed down whole.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Data folder.
    pub data_dir: PathBuf,
    /// Engine settings.
    pub engine: EngineConfig,
    /// Client limits.
    pub limits: Limits,
    /// Most waiting frames judged in one model run.
    pub max_batch: usize,
    /// Grace period at shutdown.
    pub shutdown_grace: std::time::Duration,
}

/// A flag value that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("--{flag}: {reason}")]
pub struct ConfigError {
    /// The flag's long name.
    pub flag: &'static str,
    /// What is wrong.
    pub reason: String,
}

fn at_least(flag: &'static str, value: u64, min: u64) -> Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError {
            flag,
            reason: format!("must be at least {min}, got {value}"),
        });
    }
    Ok(())
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
        Ok(EngineConfig {
            onnxruntime: self.onnxruntime.clone(),
            model: self.model.clone(),
            threads,
        })
    }
}

impl ServeArgs {
    /// Validates the flags into a [`ServeConfig`].
    pub fn resolve(&self) -> Result<ServeConfig, ConfigError> {
        at_least("max-message-bytes", self.max_message_bytes as u64, 1024)?;
        at_least("max-frame-pixels", self.max_frame_pixels, 1)?;
        at_least("max-references", self.max_references as u64, 1)?;
        at_least("max-pending", self.max_pending as u64, 1)?;
        at_least("max-batch", self.max_batch as u64, 1)?;
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError {
                flag: "data-dir",
                reason: "must not be empty".to_owned(),
            });
        }
        Ok(ServeConfig {
            listen: self.listen,
            data_dir: self.data_dir.clone(),
            engine: self.engine.resolve()?,
            limits: Limits {
                max_message_bytes: self.max_message_bytes,
                max_frame_pixels: self.max_frame_pixels,
                max_references: self.max_references,
                max_pending: self.max_pending,
            },
            max_batch: self.max_batch,
            shutdown_grace: std::time::Duration::from_secs(self.shutdown_grace_secs),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn serve(args: &[&str]) -> Result<ServeConfig, String> {
        let cli = Cli::try_parse_from(["loupe", "serve"].iter().chain(args)).map_err(|e| e.to_string())?;
        let Command::Serve(serve) = cli.command else {
            unreachable!("parsed `serve`");
        };
        serve.resolve().map_err(|e| e.to_string())
    }

    #[test]
    fn settings_flags_override_the_base() {
        let cli = Cli::try_parse_from([
            "loupe",
            "recipe",
            "create",
            "part",
            "--input-size",
            "320x160",
            "--mode",
            "aligned",
            "--roi",
            "1,2,30,40",
            "--threshold",
            "2.5",
        ])
        .unwrap();
        let Command::Recipe(RecipeArgs {
            action: RecipeAction::Create { name, settings },
            ..
        }) = cli.command
        else {
            panic!("parsed as something else");
        };
        assert_eq!(name, "part");
        let settings = settings.apply(crate::engine::RecipeSettings::default()).unwrap();
        assert_eq!((settings.input_width, settings.input_height), (320, 160));
        assert_eq!(settings.match_mode, crate::engine::MatchMode::Aligned);
        assert_eq!(
            settings.roi.map(|r| (r.x, r.y, r.width, r.height)),
            Some((1, 2, 30, 40))
        );
        assert_eq!(settings.threshold, Some(2.5));
        assert!(parse_size("256").is_err());
        assert!(parse_roi("1,2,3").is_err());
    }

    #[test]
    fn bench_flags_are_parsed() {
        let cli = Cli::try_parse_from([
            "loupe",
            "bench",
            "data/tiles",
            "--format",
            "pairs",
            "--out",
            "/tmp/r",
            "--train-limit",
            "20",
            "--mode",
            "global",
            "--input-size",
            "128x128",
        ])
        .unwrap();
        let Command::Bench(args) = cli.command else {
            panic!("parsed as something else");
        };
        assert_eq!(args.dir, PathBuf::from("data/tiles"));
        assert_eq!(args.format, Some(FormatArg::Pairs));
        assert_eq!(args.train_limit, Some(20));
        assert_eq!(args.gallery, 6);
        assert!(args.server.is_none());
        let settings = args
            .settings
            .apply(crate::engine::RecipeSettings::default())
            .unwrap();
        assert_eq!(
            (settings.input_width, settings.match_mode),
            (128, crate::engine::MatchMode::Global)
        );
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_need_no_flags() {
        let config = serve(&[]).unwrap();
        assert_eq!(config.listen, "127.0.0.1:50051".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("loupe-data"));
        assert_eq!(config.limits.max_message_bytes, 64 << 20);
        assert!(config.engine.threads >= 1);
        assert!(config.engine.model.is_none());
    }

    #[test]
    fn flags_are_parsed() {
        let config = serve(&[
            "--listen",
            "0.0.0.0:6000",
            "--data-dir",
            "/tmp/x",
            "--threads",
            "3",
            "--max-pending",
            "5",
            "--onnxruntime",
            "/opt/ort.so",
        ])
        .unwrap();
        assert_eq!(config.listen.port(), 6000);
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(config.engine.threads, 3);
        assert_eq!(config.limits.max_pending, 5);
        assert_eq!(config.engine.onnxruntime, Some(PathBuf::from("/opt/ort.so")));
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_name() {
        assert!(serve(&["--listen", "nowhere"]).unwrap_err().contains("--listen"));
        assert!(serve(&["--threads", "0"]).unwrap_err().contains("--threads"));
        assert!(
            serve(&["--max-message-bytes", "10"])
                .unwrap_err()
                .contains("at least 1024")
        );
    }

    #[test]
    fn every_flag_has_an_env_variable_and_help() {
        fn walk(command: &clap::Command) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") || arg.is_positional() {
                    continue;
                }
                let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
                assert!(
                    env.as_deref().is_some_and(|e| e.starts_with("LOUPE_")),
                    "{} --{id} has no LOUPE_ env variable",
                    command.get_name()
                );
                assert!(arg.get_help().is_some(), "--{id} has no help");
            }
            for sub in command.get_subcommands() {
                walk(sub);
            }
        }
        walk(&Cli::command());
    }
}
