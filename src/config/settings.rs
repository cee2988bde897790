//! Recipe settings as flags, shared by `loupe recipe` and `loupe bench`.

use std::path::PathBuf;

use clap::Args;

use super::ConfigError;
use crate::engine::{MatchMode, RecipeSettings, SearchMode, Setting, SettingsUpdate};
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

    /// Global mode: the nearest-neighbour search, exact (every reference
    /// patch) or fast (candidates from a projection of the reference,
    /// re-ranked exactly; never below the exact distance). Default fast.
    #[arg(long, env = "LOUPE_SEARCH", value_name = "exact|fast")]
    pub search: Option<SearchMode>,

    /// Global mode: give each frame an input of its own aspect ratio with
    /// about --input-size pixels, instead of stretching it to that size.
    #[arg(long, env = "LOUPE_KEEP_ASPECT", overrides_with = "no_keep_aspect")]
    pub keep_aspect: bool,

    /// Turn --keep-aspect off (for `recipe update`, or over a settings
    /// file).
    #[arg(long, env = "LOUPE_NO_KEEP_ASPECT", overrides_with = "keep_aspect")]
    pub no_keep_aspect: bool,

    /// Smallest reported region, in frame pixels (0: the mode chooses; global
    /// reports every region, aligned none smaller than one feature cell).
    #[arg(long, env = "LOUPE_MIN_REGION_AREA", value_name = "PIXELS")]
    pub min_region_area: Option<u32>,

    /// Fixed threshold on the anomaly score (default: calibrated).
    #[arg(long, env = "LOUPE_THRESHOLD", conflicts_with = "no_threshold")]
    pub threshold: Option<f32>,

    /// Drop a fixed threshold: calibrate it from the good parts again.
    #[arg(long, env = "LOUPE_NO_THRESHOLD")]
    pub no_threshold: bool,

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

    /// Drift watch: recent PASS parts the statistics are taken over, 10 to
    /// 10000 (default 200).
    #[arg(long, env = "LOUPE_DRIFT_WINDOW", value_name = "PARTS")]
    pub drift_window: Option<u32>,

    /// Drift watch: median shift (a rise), in calibration spreads, that
    /// raises WATCH (default 0.5).
    #[arg(long, env = "LOUPE_DRIFT_WATCH_SHIFT", value_name = "SPREADS")]
    pub drift_watch_shift: Option<f32>,

    /// Drift watch: median shift that raises DRIFT (default 1.0).
    #[arg(long, env = "LOUPE_DRIFT_LIMIT_SHIFT", value_name = "SPREADS")]
    pub drift_limit_shift: Option<f32>,

    /// Drift watch: share of recent PASS parts above the calibration's 95th
    /// percentile that raises WATCH, above 0.05 (default 0.10).
    #[arg(long, env = "LOUPE_DRIFT_WATCH_SHARE", value_name = "FRACTION")]
    pub drift_watch_share: Option<f32>,

    /// Drift watch: share above the 95th percentile that raises DRIFT
    /// (default 0.15).
    #[arg(long, env = "LOUPE_DRIFT_LIMIT_SHARE", value_name = "FRACTION")]
    pub drift_limit_share: Option<f32>,
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
    /// Applies the settings file (in place of `base`) and the flags.
    pub fn apply(&self, base: RecipeSettings) -> Result<RecipeSettings, ConfigError> {
        let base = self.read()?.map_or(base, |file| file.values);
        Ok(self.flags()?.apply(&base))
    }

    /// The change these flags ask for, for `recipe update`: the fields of
    /// the settings file and the flags given, nothing else.
    pub fn update(&self) -> Result<SettingsUpdate, ConfigError> {
        let flags = self.flags()?;
        let Some(file) = self.read()? else {
            return Ok(flags);
        };
        let mut settings = file.settings.clone();
        settings.extend(flags.settings.iter().filter(|s| !file.settings.contains(s)));
        Ok(SettingsUpdate {
            values: flags.apply(&file.values),
            settings,
        })
    }

    /// The settings file: its values (defaults for the fields it leaves
    /// out) and the settings it names. A field that is not a setting is
    /// refused, named: a typo must not be ignored silently.
    fn read(&self) -> Result<Option<SettingsUpdate>, ConfigError> {
        let Some(path) = &self.settings else {
            return Ok(None);
        };
        let error = |reason: String| ConfigError {
            flag: "settings",
            reason: format!("{}: {reason}", path.display()),
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(format!("cannot read it: {e}")))?;
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| error(e.to_string()))?;
        let serde_json::Value::Object(fields) = &value else {
            return Err(error("expected a JSON object of settings".into()));
        };
        let mut named = Vec::new();
        for field in fields.keys() {
            let Some(setting) = Setting::from_field(field) else {
                return Err(error(format!(
                    "{field:?} is not a setting; the settings are {}",
                    Setting::all_fields().join(", ")
                )));
            };
            if !named.contains(&setting) {
                named.push(setting);
            }
        }
        let values = serde_json::from_value(value).map_err(|e| error(e.to_string()))?;
        Ok(Some(SettingsUpdate {
            values,
            settings: named,
        }))
    }

    /// The flags given, as a change.
    fn flags(&self) -> Result<SettingsUpdate, ConfigError> {
        let mut values = RecipeSettings::default();
        let mut given = Vec::new();
        let mut set = |setting: Setting, change: &dyn Fn(&mut RecipeSettings)| {
            change(&mut values);
            given.push(setting);
        };
        if let Some((width, height)) = self.input_size {
            set(Setting::InputSize, &|s| {
                (s.input_width, s.input_height) = (width, height)
            });
        }
        if let Some(mode) = self.mode {
            set(Setting::MatchMode, &|s| s.match_mode = mode);
        }
        if let Some(v) = self.neighborhood {
            set(Setting::Neighborhood, &|s| s.neighborhood = v);
        }
        if let Some(v) = self.reference_size {
            set(Setting::ReferenceSize, &|s| s.reference_size = v);
        }
        if let Some(v) = self.search {
            set(Setting::Search, &|s| s.search = v);
        }
        if self.keep_aspect || self.no_keep_aspect {
            let keep = self.keep_aspect;
            set(Setting::KeepAspect, &|s| s.keep_aspect = keep);
        }
        if let Some(v) = self.min_region_area {
            set(Setting::MinRegionArea, &|s| s.min_region_area = v);
        }
        if self.threshold.is_some() || self.no_threshold {
            let threshold = self.threshold;
            set(Setting::Threshold, &|s| s.threshold = threshold);
        }
        if let Some(v) = self.sensitivity {
            set(Setting::Sensitivity, &|s| s.sensitivity = v);
        }
        if let Some(v) = self.target_false_reject_rate {
            set(Setting::TargetFalseRejectRate, &|s| {
                s.target_false_reject_rate = v
            });
        }
        if let Some(v) = self.roi {
            set(Setting::Roi, &|s| s.roi = Some(v));
        }
        if let Some(v) = self.drift_window {
            set(Setting::DriftWindow, &|s| s.drift_window = v);
        }
        if let Some(v) = self.drift_watch_shift {
            set(Setting::DriftWatchShift, &|s| s.drift_watch_shift = v);
        }
        if let Some(v) = self.drift_limit_shift {
            set(Setting::DriftLimitShift, &|s| s.drift_limit_shift = v);
        }
        if let Some(v) = self.drift_watch_share {
            set(Setting::DriftWatchShare, &|s| s.drift_watch_share = v);
        }
        if let Some(v) = self.drift_limit_share {
            set(Setting::DriftLimitShare, &|s| s.drift_limit_share = v);
        }
        if let Some(path) = &self.mask {
            let mask = std::fs::read(path).map_err(|e| ConfigError {
                flag: "mask",
                reason: format!("cannot read {}: {e}", path.display()),
            })?;
            set(Setting::Mask, &|s| s.mask_png.clone_from(&mask));
        }
        Ok(SettingsUpdate {
            values,
            settings: given,
        })
    }
}
