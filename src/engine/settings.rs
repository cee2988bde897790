//! Recipe settings as the engine uses them: defaults, validation, and the
//! inspection mask.

use serde::{Deserialize, Serialize};

use crate::imaging::{Channels, DecodeLimits, FrameData, Image, Roi, decode};
pub use crate::reference::MatchMode;
use crate::scoring::drift::DriftLimits;
use crate::scoring::map::resize_f32;
pub use crate::scoring::search::SearchMode;
use crate::scoring::threshold::{
    DEFAULT_TARGET_FALSE_REJECT_RATE, MAX_TARGET_FALSE_REJECT_RATE, MIN_TARGET_FALSE_REJECT_RATE,
};

use super::EngineError;
use InputSize::{Aspect, Fixed, Native};

/// Default model input size (both sides) of the global mode: frames get
/// about this many pixels squared, in their own aspect ratio.
pub const DEFAULT_INPUT_SIZE: u32 = 256;
/// Accepted sensitivities: the calibrated threshold is divided by it, so
/// the range keeps every threshold finite and above 0.
pub const SENSITIVITY_RANGE: (f32, f32) = (0.01, 100.0);
/// Accepted fixed thresholds on the anomaly score.
pub const THRESHOLD_RANGE: (f32, f32) = (1e-6, 1e6);
/// Most model input pixels the aligned mode picks from a frame on its own
/// (a frame above it is scaled down, keeping its aspect ratio).
pub const ALIGNED_PIXEL_BUDGET: u32 = 1024 * 1024;
/// Default aligned-mode neighbourhood, in feature cells.
pub const DEFAULT_NEIGHBORHOOD: u32 = 1;
/// Default global-mode coreset size: the bank size that keeps a
/// 1024x1024 frame at 256x256 within the 25 ms latency target on 2 cores
/// (see the README's results).
pub const DEFAULT_REFERENCE_SIZE: u32 = 8192;
/// Largest model input side accepted.
pub const MAX_INPUT_SIZE: u32 = 2048;
/// Largest aligned-mode neighbourhood accepted.
pub const MAX_NEIGHBORHOOD: u32 = 8;
/// Largest coreset accepted.
pub const MAX_REFERENCE_SIZE: u32 = 1 << 20;

/// Everything that decides how a product is inspected. Every field has a
/// default, so `RecipeSettings::default()` is a working recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RecipeSettings {
    /// Model input width, a multiple of 16; 0 (with `input_height` 0)
    /// lets the mode choose (see [`RecipeSettings::input_rule`]).
    pub input_width: u32,
    /// Model input height, a multiple of 16; 0 lets the mode choose.
    pub input_height: u32,
    /// Global only: size each frame's input to its own aspect ratio, with
    /// about `input_width x input_height` pixels (for parts whose shape
    /// varies); otherwise a set input size is used exactly. With no input
    /// size set, global frames keep their aspect ratio anyway.
    pub keep_aspect: bool,
    /// Matching mode.
    pub match_mode: MatchMode,
    /// Aligned only: how far, in feature cells, a patch may be from the same
    /// place in the reference.
    pub neighborhood: u32,
    /// Regions smaller than this many frame pixels are not reported; 0 lets
    /// the mode choose (global: every region; aligned: one feature cell, see
    /// [`super::Judge::min_region_area`]).
    pub min_region_area: u32,
    /// A fixed threshold on the anomaly score instead of the calibrated one.
    pub threshold: Option<f32>,
    /// Scales the calibrated threshold: above 1 fails more parts.
    pub sensitivity: f32,
    /// The share of good parts the calibrated threshold may fail, between
    /// 0.001 and 0.2 (see [`crate::scoring::threshold`]).
    pub target_false_reject_rate: f32,
    /// Region of interest in frame pixels; `None` is the whole frame.
    pub roi: Option<Roi>,
    /// Inspection mask (PNG, white = inspect); empty = inspect everything.
    #[serde(with = "base64_bytes")]
    pub mask_png: Vec<u8>,
    /// Global only: coreset size (reference patches kept).
    pub reference_size: u32,
    /// Global only: how each patch's nearest reference patch is found.
    pub search: SearchMode,
    /// Drift watch: recent PASS scores the statistics are taken over (see
    /// [`crate::scoring::drift`]).
    pub drift_window: u32,
    /// Drift watch: median shift, in calibration spreads, that raises WATCH.
    pub drift_watch_shift: f32,
    /// Drift watch: median shift that raises DRIFT.
    pub drift_limit_shift: f32,
    /// Drift watch: share above the calibration's 95th percentile that
    /// raises WATCH.
    pub drift_watch_share: f32,
    /// Drift watch: share above the calibration's 95th percentile that
    /// raises DRIFT.
    pub drift_limit_share: f32,
}

impl Default for RecipeSettings {
    fn default() -> Self {
        let drift = DriftLimits::default();
        Self {
            input_width: 0,
            input_height: 0,
            keep_aspect: false,
            match_mode: MatchMode::Global,
            neighborhood: DEFAULT_NEIGHBORHOOD,
            min_region_area: 0,
            threshold: None,
            sensitivity: 1.0,
            target_false_reject_rate: DEFAULT_TARGET_FALSE_REJECT_RATE,
            roi: None,
            mask_png: Vec::new(),
            reference_size: DEFAULT_REFERENCE_SIZE,
            search: SearchMode::default(),
            drift_window: drift.window,
            drift_watch_shift: drift.watch_shift,
            drift_limit_shift: drift.limit_shift,
            drift_watch_share: drift.watch_share,
            drift_limit_share: drift.limit_share,
        }
    }
}

fn invalid(message: String) -> EngineError {
    EngineError::InvalidSettings(message)
}

/// How a frame's model input size is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputSize {
    /// Exactly `width` x `height` (the frame is stretched to it).
    Fixed(u32, u32),
    /// The frame's aspect ratio, with about this many pixels.
    Aspect(u32),
    /// The frame's own size, rounded to the model's size multiple, scaled
    /// down to at most this many pixels; the first golden frame fixes it
    /// for the recipe.
    Native(u32),
}

impl std::fmt::Display for InputSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::Fixed(width, height) => write!(f, "{width}x{height}"),
            Self::Aspect(pixels) => write!(f, "{pixels} px in the frame's aspect ratio"),
            Self::Native(pixels) => write!(f, "the golden frame's size, at most {pixels} px"),
        }
    }
}

impl RecipeSettings {
    /// Whether the input size is the mode's choice (both sides 0).
    pub fn input_size_is_auto(&self) -> bool {
        (self.input_width, self.input_height) == (0, 0)
    }

    /// Where the threshold in force comes from, in words: fixed, none yet,
    /// calibrated, or calibrated and scaled by the sensitivity.
    pub fn threshold_source(&self, calibrated: bool) -> String {
        match (self.threshold, calibrated) {
            (Some(_), _) => "fixed".into(),
            (None, false) => "none yet: add good frames".into(),
            (None, true) if self.sensitivity == 1.0 => "calibrated".into(),
            (None, true) => format!("calibrated, scaled by sensitivity {}", self.sensitivity),
        }
    }

    /// How frames are sized for the model. A set size is used exactly, or
    /// as a pixel budget with `keep_aspect`. Unset, the mode chooses: global
    /// keeps each frame's aspect ratio at about 256 x 256 pixels (exactly
    /// 256 x 256 with a mask, which needs one size); aligned works at the
    /// golden frame's own resolution up to [`ALIGNED_PIXEL_BUDGET`] pixels.
    pub fn input_rule(&self) -> InputSize {
        let default_area = DEFAULT_INPUT_SIZE * DEFAULT_INPUT_SIZE;
        match (self.input_size_is_auto(), self.match_mode) {
            (false, _) if self.keep_aspect => Aspect(self.input_width * self.input_height),
            (false, _) => Fixed(self.input_width, self.input_height),
            (true, MatchMode::Aligned) => Native(ALIGNED_PIXEL_BUDGET),
            (true, MatchMode::Global) if self.mask_png.is_empty() => Aspect(default_area),
            (true, MatchMode::Global) if self.keep_aspect => Aspect(default_area),
            (true, MatchMode::Global) => Fixed(DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE),
        }
    }

    /// The drift watch's limits.
    pub fn drift_limits(&self) -> DriftLimits {
        DriftLimits {
            window: self.drift_window,
            watch_shift: self.drift_watch_shift,
            limit_shift: self.drift_limit_shift,
            watch_share: self.drift_watch_share,
            limit_share: self.drift_limit_share,
        }
    }

    /// A copy with the input size set.
    pub fn with_input_size(&self, width: u32, height: u32) -> Self {
        Self {
            input_width: width,
            input_height: height,
            ..self.clone()
        }
    }

    /// Checks every field; the message says which and why.
    pub fn validate(&self, size_multiple: u32) -> Result<(), EngineError> {
        if !self.input_size_is_auto() {
            for (name, value) in [
                ("input_width", self.input_width),
                ("input_height", self.input_height),
            ] {
                if value == 0 || value > MAX_INPUT_SIZE || value % size_multiple != 0 {
                    return Err(invalid(format!(
                        "{name} is {value}; it must be a multiple of {size_multiple} between {size_multiple} and {MAX_INPUT_SIZE} (or both sides 0: the mode chooses)"
                    )));
                }
            }
        }
        if self.keep_aspect && self.match_mode == MatchMode::Aligned {
            return Err(invalid(
                "keep_aspect works only with the global mode: aligned needs one grid for every frame".into(),
            ));
        }
        if self.keep_aspect && !self.mask_png.is_empty() {
            return Err(invalid(
                "mask_png needs one input size for every frame; turn keep_aspect off to use a mask".into(),
            ));
        }
        if self.neighborhood > MAX_NEIGHBORHOOD {
            return Err(invalid(format!(
                "neighborhood is {}; at most {MAX_NEIGHBORHOOD} cells",
                self.neighborhood
            )));
        }
        if !(SENSITIVITY_RANGE.0..=SENSITIVITY_RANGE.1).contains(&self.sensitivity) {
            return Err(invalid(format!(
                "sensitivity is {}; it must be between {} and {} (1 keeps the calibrated threshold, above 1 fails more parts)",
                self.sensitivity, SENSITIVITY_RANGE.0, SENSITIVITY_RANGE.1
            )));
        }
        let target = self.target_false_reject_rate;
        if !(MIN_TARGET_FALSE_REJECT_RATE..=MAX_TARGET_FALSE_REJECT_RATE).contains(&target) {
            return Err(invalid(format!(
                "target_false_reject_rate is {target}; it must be between {MIN_TARGET_FALSE_REJECT_RATE} and {MAX_TARGET_FALSE_REJECT_RATE} (0.1 % to 20 %)"
            )));
        }
        if let Some(threshold) = self.threshold
            && !(THRESHOLD_RANGE.0..=THRESHOLD_RANGE.1).contains(&threshold)
        {
            return Err(invalid(format!(
                "threshold is {threshold}; it must be between {} and {}",
                THRESHOLD_RANGE.0, THRESHOLD_RANGE.1
            )));
        }
        if self.reference_size == 0 || self.reference_size > MAX_REFERENCE_SIZE {
            return Err(invalid(format!(
                "reference_size is {}; it must be between 1 and {MAX_REFERENCE_SIZE}",
                self.reference_size
            )));
        }
        if let Some(roi) = self.roi
            && (roi.width == 0 || roi.height == 0)
        {
            return Err(invalid("roi width and height must be above 0".into()));
        }
        self.drift_limits().validate().map_err(invalid)
    }

    /// The inspection mask at the model input size `rule` resolves to (1
    /// inspect, 0 ignore), or `None` when the recipe has none or the size
    /// varies from frame to frame.
    pub fn mask(&self, rule: InputSize, limits: DecodeLimits) -> Result<Option<Vec<f32>>, EngineError> {
        let InputSize::Fixed(width, height) = rule else {
            return Ok(None);
        };
        mask_plane(&self.mask_png, width as usize, height as usize, limits)
    }

    /// Whether a change from `self` to `other` invalidates the reference
    /// features (so they must be computed again from the good frames).
    /// The stored calibration scores were computed with the mask, in the
    /// aligned mode the neighbourhood, and in the global mode the search: a
    /// change of any needs them computed again too.
    pub fn reference_changes(&self, other: &Self) -> bool {
        let aligned_radius = |s: &Self| (s.match_mode == MatchMode::Aligned).then_some(s.neighborhood);
        let global_search = |s: &Self| (s.match_mode == MatchMode::Global).then_some(s.search);
        (self.input_rule(), self.match_mode, self.roi, self.reference_size)
            != (
                other.input_rule(),
                other.match_mode,
                other.roi,
                other.reference_size,
            )
            || self.mask_png != other.mask_png
            || aligned_radius(self) != aligned_radius(other)
            || global_search(self) != global_search(other)
    }

    /// The settings that differ between `self` and `other`, in
    /// [`Setting::ALL`]'s order.
    pub fn changes(&self, other: &Self) -> Vec<Setting> {
        Setting::ALL
            .into_iter()
            .filter(|setting| {
                let (mut a, mut b) = (Self::default(), Self::default());
                a.set(*setting, self);
                b.set(*setting, other);
                a != b
            })
            .collect()
    }

    /// Takes `setting`'s value from `from`.
    pub fn set(&mut self, setting: Setting, from: &Self) {
        match setting {
            Setting::InputSize => {
                (self.input_width, self.input_height) = (from.input_width, from.input_height)
            }
            Setting::KeepAspect => self.keep_aspect = from.keep_aspect,
            Setting::MatchMode => self.match_mode = from.match_mode,
            Setting::Neighborhood => self.neighborhood = from.neighborhood,
            Setting::MinRegionArea => self.min_region_area = from.min_region_area,
            Setting::Threshold => self.threshold = from.threshold,
            Setting::Sensitivity => self.sensitivity = from.sensitivity,
            Setting::TargetFalseRejectRate => self.target_false_reject_rate = from.target_false_reject_rate,
            Setting::Roi => self.roi = from.roi,
            Setting::Mask => self.mask_png.clone_from(&from.mask_png),
            Setting::ReferenceSize => self.reference_size = from.reference_size,
            Setting::Search => self.search = from.search,
            Setting::DriftWindow => self.drift_window = from.drift_window,
            Setting::DriftWatchShift => self.drift_watch_shift = from.drift_watch_shift,
            Setting::DriftLimitShift => self.drift_limit_shift = from.drift_limit_shift,
            Setting::DriftWatchShare => self.drift_watch_share = from.drift_watch_share,
            Setting::DriftLimitShare => self.drift_limit_share = from.drift_limit_share,
        }
    }
}

/// One setting, as a partial update names it. The two sides of the input
/// size are one setting: a size is set or left to the mode whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Setting {
    /// `input_width` and `input_height`.
    InputSize,
    /// `keep_aspect`.
    KeepAspect,
    /// `match_mode`.
    MatchMode,
    /// `neighborhood`.
    Neighborhood,
    /// `min_region_area`.
    MinRegionArea,
    /// `threshold` (unset: calibrated).
    Threshold,
    /// `sensitivity`.
    Sensitivity,
    /// `target_false_reject_rate`.
    TargetFalseRejectRate,
    /// `roi`.
    Roi,
    /// `mask_png`.
    Mask,
    /// `reference_size`.
    ReferenceSize,
    /// `search`.
    Search,
    /// `drift_window`.
    DriftWindow,
    /// `drift_watch_shift`.
    DriftWatchShift,
    /// `drift_limit_shift`.
    DriftLimitShift,
    /// `drift_watch_share`.
    DriftWatchShare,
    /// `drift_limit_share`.
    DriftLimitShare,
}

impl Setting {
    /// Every setting.
    pub const ALL: [Self; 17] = [
        Self::InputSize,
        Self::KeepAspect,
        Self::MatchMode,
        Self::Neighborhood,
        Self::MinRegionArea,
        Self::Threshold,
        Self::Sensitivity,
        Self::TargetFalseRejectRate,
        Self::Roi,
        Self::Mask,
        Self::ReferenceSize,
        Self::Search,
        Self::DriftWindow,
        Self::DriftWatchShift,
        Self::DriftLimitShift,
        Self::DriftWatchShare,
        Self::DriftLimitShare,
    ];

    /// The field names of [`RecipeSettings`] (and of the proto message)
    /// that hold it.
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            Self::InputSize => &["input_width", "input_height"],
            Self::KeepAspect => &["keep_aspect"],
            Self::MatchMode => &["match_mode"],
            Self::Neighborhood => &["neighborhood"],
            Self::MinRegionArea => &["min_region_area"],
            Self::Threshold => &["threshold"],
            Self::Sensitivity => &["sensitivity"],
            Self::TargetFalseRejectRate => &["target_false_reject_rate"],
            Self::Roi => &["roi"],
            Self::Mask => &["mask_png"],
            Self::ReferenceSize => &["reference_size"],
            Self::Search => &["search"],
            Self::DriftWindow => &["drift_window"],
            Self::DriftWatchShift => &["drift_watch_shift"],
            Self::DriftLimitShift => &["drift_limit_shift"],
            Self::DriftWatchShare => &["drift_watch_share"],
            Self::DriftLimitShare => &["drift_limit_share"],
        }
    }

    /// Every field name, in order (for messages that list them).
    pub fn all_fields() -> Vec<&'static str> {
        Self::ALL
            .iter()
            .flat_map(|s| s.fields().iter().copied())
            .collect()
    }

    /// The setting a field name belongs to.
    pub fn from_field(field: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|setting| setting.fields().contains(&field))
    }

    /// Its name in messages and logs (the first field's).
    pub fn name(self) -> &'static str {
        self.fields()[0]
    }
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::InputSize => "input size",
            other => other.name(),
        })
    }
}

/// A change to some of a recipe's settings: the named ones take their
/// values from `values`, the others keep theirs.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingsUpdate {
    /// The new values (of the named settings; the rest is ignored).
    pub values: RecipeSettings,
    /// The settings that change.
    pub settings: Vec<Setting>,
}

impl SettingsUpdate {
    /// Every setting replaced by `values`.
    pub fn whole(values: RecipeSettings) -> Self {
        Self {
            values,
            settings: Setting::ALL.to_vec(),
        }
    }

    /// `current` with this update applied.
    pub fn apply(&self, current: &RecipeSettings) -> RecipeSettings {
        let mut settings = current.clone();
        for setting in &self.settings {
            settings.set(*setting, &self.values);
        }
        settings
    }
}

/// Decodes the mask PNG into a `width` x `height` plane of 1.0 (inspect)
/// and 0.0 (ignore), scaling it to fit. `None` for an empty mask.
pub fn mask_plane(
    mask_png: &[u8],
    width: usize,
    height: usize,
    limits: DecodeLimits,
) -> Result<Option<Vec<f32>>, EngineError> {
    if mask_png.is_empty() {
        return Ok(None);
    }
    let mut image = Image::default();
    decode(FrameData::Encoded(mask_png), limits, &mut image)
        .map_err(|error| invalid(format!("mask_png: {error}")))?;
    let gray: Vec<f32> = match image.channels {
        Channels::Gray => image.data.iter().map(|&v| f32::from(v)).collect(),
        Channels::Rgb => image
            .data
            .chunks_exact(3)
            .map(|p| f32::from(p[0].max(p[1]).max(p[2])))
            .collect(),
    };
    let mut plane = vec![0.0; width * height];
    resize_f32(
        &mut fast_image_resize::Resizer::new(),
        &gray,
        image.width as usize,
        image.height as usize,
        &mut plane,
        width,
        height,
    );
    for v in &mut plane {
        *v = if *v >= 127.5 { 1.0 } else { 0.0 };
    }
    if plane.iter().all(|&v| v == 0.0) {
        return Err(invalid(
            "mask_png is black everywhere: nothing would be inspected".into(),
        ));
    }
    Ok(Some(plane))
}

/// Serde helper: bytes as base64 in JSON (masks are small PNGs).
mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(|error| serde::de::Error::custom(format!("mask_png is not base64: {error}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_changes_only_what_it_names() {
        let current = RecipeSettings {
            match_mode: MatchMode::Aligned,
            neighborhood: 2,
            threshold: Some(3.0),
            ..RecipeSettings::default()
        };
        let update = SettingsUpdate {
            values: RecipeSettings {
                sensitivity: 1.5,
                ..RecipeSettings::default()
            },
            settings: vec![Setting::Sensitivity, Setting::Threshold],
        };
        let updated = update.apply(&current);
        assert_eq!(updated.match_mode, MatchMode::Aligned);
        assert_eq!(updated.neighborhood, 2);
        assert_eq!(updated.sensitivity, 1.5);
        // Named but unset in the values: back to calibrated.
        assert_eq!(updated.threshold, None);
        assert_eq!(
            current.changes(&updated),
            [Setting::Threshold, Setting::Sensitivity]
        );
        assert!(!current.reference_changes(&updated));
        assert_eq!(SettingsUpdate::whole(updated.clone()).apply(&current), updated);
    }

    #[test]
    fn every_field_belongs_to_one_setting() {
        let serde_json::Value::Object(fields) = serde_json::to_value(RecipeSettings::default()).unwrap()
        else {
            panic!("settings serialise as an object");
        };
        for field in fields.keys() {
            assert!(Setting::from_field(field).is_some(), "{field} has no setting");
        }
        let named: usize = Setting::ALL.iter().map(|s| s.fields().len()).sum();
        assert_eq!(named, fields.len());
    }

    #[test]
    fn a_mask_or_an_aligned_radius_changes_the_reference() {
        let with = |change: fn(&mut RecipeSettings)| {
            let mut settings = RecipeSettings::default();
            change(&mut settings);
            settings
        };
        let global = RecipeSettings::default();
        assert!(global.reference_changes(&with(|s| s.mask_png = vec![1, 2, 3])));
        assert!(
            !global.reference_changes(&with(|s| s.neighborhood = 3)),
            "global mode has no radius"
        );
        let aligned = with(|s| s.match_mode = MatchMode::Aligned);
        let aligned_wider = with(|s| {
            s.match_mode = MatchMode::Aligned;
            s.neighborhood = 3;
        });
        assert!(aligned.reference_changes(&aligned_wider));
        // The default is fast.
        let exact = with(|s| s.search = SearchMode::Exact);
        assert!(global.reference_changes(&exact), "calibrated with the search");
        let aligned_exact = with(|s| {
            s.match_mode = MatchMode::Aligned;
            s.search = SearchMode::Exact;
        });
        assert!(
            !aligned.reference_changes(&aligned_exact),
            "aligned has no global search"
        );
        let drift = with(|s| {
            s.drift_window = 50;
            s.drift_limit_share = 0.3;
        });
        assert!(
            !global.reference_changes(&drift),
            "the drift watch never rebuilds"
        );
        assert_eq!(
            global.changes(&drift),
            [Setting::DriftWindow, Setting::DriftLimitShare]
        );
    }

    #[test]
    fn defaults_are_valid() {
        RecipeSettings::default().validate(16).unwrap();
    }

    #[test]
    fn bad_fields_are_named() {
        let bad = |change: fn(&mut RecipeSettings)| {
            let mut settings = RecipeSettings::default();
            change(&mut settings);
            settings.validate(16).unwrap_err().to_string()
        };
        assert!(bad(|s| s.input_width = 250).contains("input_width is 250"));
        assert!(bad(|s| s.input_width = 256).contains("input_height is 0"));
        assert!(bad(|s| s.sensitivity = 0.0).contains("sensitivity"));
        // Found by a hostile client: 1e-40 made the threshold infinite, so
        // every part passed.
        assert!(bad(|s| s.sensitivity = 1e-40).contains("it must be between 0.01 and 100"));
        assert!(bad(|s| s.sensitivity = f32::INFINITY).contains("sensitivity"));
        assert!(bad(|s| s.threshold = Some(f32::INFINITY)).contains("threshold"));
        assert!(bad(|s| s.threshold = Some(1e-30)).contains("threshold"));
        assert!(bad(|s| s.target_false_reject_rate = 0.5).contains("target_false_reject_rate"));
        assert!(bad(|s| s.target_false_reject_rate = f32::NAN).contains("target_false_reject_rate"));
        assert!(bad(|s| s.threshold = Some(f32::NAN)).contains("threshold"));
        assert!(bad(|s| s.neighborhood = 99).contains("neighborhood"));
        assert!(bad(|s| s.reference_size = 0).contains("reference_size"));
        assert!(
            bad(|s| {
                s.keep_aspect = true;
                s.mask_png = vec![1];
            })
            .contains("mask_png")
        );
        assert!(
            bad(|s| {
                s.keep_aspect = true;
                s.match_mode = MatchMode::Aligned;
            })
            .contains("keep_aspect")
        );
    }

    #[test]
    fn settings_round_trip_through_json_with_the_mask() {
        let settings = RecipeSettings {
            mask_png: vec![0, 1, 2, 250, 251],
            threshold: Some(3.5),
            ..RecipeSettings::default()
        };
        let json = serde_json::to_string(&settings).unwrap();
        assert_eq!(serde_json::from_str::<RecipeSettings>(&json).unwrap(), settings);
        let partial: RecipeSettings = serde_json::from_str(r#"{"match_mode": "aligned"}"#).unwrap();
        assert_eq!(partial.match_mode, MatchMode::Aligned);
        assert!(partial.input_size_is_auto());
    }

    #[test]
    fn each_mode_chooses_its_input_size_unless_one_is_set() {
        let global = RecipeSettings::default();
        assert_eq!(global.input_rule(), Aspect(256 * 256));
        let masked = RecipeSettings {
            mask_png: vec![1],
            ..RecipeSettings::default()
        };
        assert_eq!(masked.input_rule(), Fixed(256, 256));
        let aligned = RecipeSettings {
            match_mode: MatchMode::Aligned,
            ..RecipeSettings::default()
        };
        assert_eq!(aligned.input_rule(), Native(ALIGNED_PIXEL_BUDGET));
        assert_eq!(aligned.with_input_size(320, 160).input_rule(), Fixed(320, 160));
        let budget = RecipeSettings {
            keep_aspect: true,
            ..global.with_input_size(320, 160)
        };
        assert_eq!(budget.input_rule(), Aspect(320 * 160));
    }
}
