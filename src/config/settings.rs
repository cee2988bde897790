//! Recipe settings as flags, shared by `loupe recipe` and `loupe bench`.

use std::path::PathBuf;

use clap::Args;

use super::ConfigError;
use crate::engine::{MatchMode, RecipeSettings};
use crate::imaging::Roi;

/// Recipe settings as flags (unset flags keep the defaults, or with
/// `recipe update` the recipe's current values).
#[derive(Debug, Clone, Default, Args)]
pub struct SettingsArgs {
    /// JSON file of recipe settings (the fields of RecipeSettings, as
    /// `loupe recipe show --json` prints them); flags override it.
    #[arg(long, env = "LOUPE_SETTINGS", value_name = "FILE")]
    pub settings: Option<PathBuf>,

    /// Model input size, WxH, multiples of 16 (default: the mode chooses;
    /// global about 256x256 pixels in each frame's aspect ratio, aligned the
    /// golden frame's own size up to 1024x1024 pixels).
    #[arg(long, env = "LOUPE_INPUT_SIZE", value_name = "WxH", value_parser = parse_size)]
    pub input_size: Option<(u32, u32)>,

    /// Matching mode: global (PatchCore) or aligned (fixtured parts).
    #[arg(long, env = "LOUPE_MODE", value_name = "global|aligned")]
    pub mode: Option<MatchMode>,

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

    /// Share of good parts the calibrated threshold may fail, 0.001 to 0.2
    /// (default 0.01: 1 %).
    #[arg(long, env = "LOUPE_TARGET_FALSE_REJECT_RATE", value_name = "FRACTION")]
    pub target_false_reject_rate: Option<f32>,

    /// Region of interest in frame pixels: x,y,width,height.
    #[arg(long, env = "LOUPE_ROI", value_name = "X,Y,W,H", value_parser = parse_roi)]
    pub roi: Option<Roi>,

    /// Inspection mask PNG (white = inspect, black = ignore).
    #[arg(long, env = "LOUPE_MASK", value_name = "PNG")]
    pub mask: Option<PathBuf>,
}

pub(super) fn parse_size(text: &str) -> Result<(u32, u32), String> {
    let (w, h) = text
        .split_once(['x', 'X'])
        .ok_or("expected WxH, such as 256x256")?;
    Ok((
        w.trim().parse().map_err(|_| format!("bad width {w:?}"))?,
        h.trim().parse().map_err(|_| format!("bad height {h:?}"))?,
    ))
}

pub(super) fn parse_roi(text: &str) -> Result<Roi, String> {
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
    Ok(Roi { x, y, width, height })
}

impl SettingsArgs {
    /// Applies the settings file and the flags to `base`.
    pub fn apply(&self, base: RecipeSettings) -> Result<RecipeSettings, ConfigError> {
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
            settings.match_mode = mode;
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
        if let Some(v) = self.target_false_reject_rate {
            settings.target_false_reject_rate = v;
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
