//! Flags of `loupe bench`.

use std::path::PathBuf;

use clap::Args;

use super::{CredentialArgs, EngineArgs, SettingsArgs};

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

    #[command(flatten)]
    pub credentials: CredentialArgs,

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
