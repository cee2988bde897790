//! Conversions between proto messages and Loupe's types. Zero and unset
//! proto fields become the documented defaults here, in one place.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::engine::{
    self, HeatmapFormat, InspectOptions, Marks, MatchMode, RecipeSettings, SearchMode, Setting,
    SettingsUpdate, Verdict,
};
use crate::imaging::{OwnedFrame, PixelFormat, Roi};
use crate::proto;
use crate::server::{DriftState, DriftStatus, InspectRequest, Inspected, RecipeState, Timings};
use crate::store::RecipeRecord;

/// A message that cannot be used: the text says what was expected and what
/// came (INVALID_ARGUMENT on the wire).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConvertError(pub String);

fn invalid(message: impl Into<String>) -> ConvertError {
    ConvertError(message.into())
}

/// Engine settings from the proto message (`None`: all defaults).
pub fn settings_from_proto(settings: Option<proto::RecipeSettings>) -> Result<RecipeSettings, ConvertError> {
    let defaults = RecipeSettings::default();
    let Some(p) = settings else {
        return Ok(defaults);
    };
    let match_mode = match proto::MatchMode::try_from(p.match_mode) {
        Ok(proto::MatchMode::Unspecified | proto::MatchMode::Global) => MatchMode::Global,
        Ok(proto::MatchMode::Aligned) => MatchMode::Aligned,
        Err(_) => return Err(invalid(format!("unknown match_mode {}", p.match_mode))),
    };
    let search = match proto::SearchMode::try_from(p.search) {
        Ok(proto::SearchMode::Unspecified) => defaults.search,
        Ok(proto::SearchMode::Exact) => SearchMode::Exact,
        Ok(proto::SearchMode::Fast) => SearchMode::Fast,
        Err(_) => return Err(invalid(format!("unknown search {}", p.search))),
    };
    let or = |value: u32, default: u32| if value == 0 { default } else { value };
    // Both sides unset: the mode chooses; one side set: the other is 256.
    let side = |value: u32| match (p.input_width, p.input_height) {
        (0, 0) => 0,
        _ => or(value, engine::settings::DEFAULT_INPUT_SIZE),
    };
    Ok(RecipeSettings {
        input_width: side(p.input_width),
        input_height: side(p.input_height),
        keep_aspect: p.keep_aspect,
        match_mode,
        neighborhood: or(p.neighborhood, defaults.neighborhood),
        min_region_area: p.min_region_area,
        threshold: p.threshold,
        sensitivity: if p.sensitivity == 0.0 {
            defaults.sensitivity
        } else {
            p.sensitivity
        },
        target_false_reject_rate: if p.target_false_reject_rate == 0.0 {
            defaults.target_false_reject_rate
        } else {
            p.target_false_reject_rate
        },
        roi: p.roi.filter(|r| r.width != 0 || r.height != 0).map(|r| Roi {
            x: r.x,
            y: r.y,
            width: r.width,
            height: r.height,
        }),
        mask_png: p.mask_png.to_vec(),
        reference_size: or(p.reference_size, defaults.reference_size),
        search,
        drift_window: or(p.drift_window, defaults.drift_window),
        drift_watch_shift: or_f32(p.drift_watch_shift, defaults.drift_watch_shift),
        drift_limit_shift: or_f32(p.drift_limit_shift, defaults.drift_limit_shift),
        drift_watch_share: or_f32(p.drift_watch_share, defaults.drift_watch_share),
        drift_limit_share: or_f32(p.drift_limit_share, defaults.drift_limit_share),
    })
}

/// A float field, 0 (unset) meaning the default.
fn or_f32(value: f32, default: f32) -> f32 {
    if value == 0.0 { default } else { value }
}

/// A settings change from UpdateRecipe's `settings` and `update_mask`
/// (AIP-134): the named fields, `*` for all, or with no mask the fields the
/// message sets.
pub fn settings_update_from_proto(
    settings: Option<proto::RecipeSettings>,
    mask: Option<prost_types::FieldMask>,
) -> Result<SettingsUpdate, ConvertError> {
    let named = match mask {
        Some(mask) if !mask.paths.is_empty() => Some(mask_settings(&mask.paths)?),
        _ => None,
    };
    let changed = match named {
        Some(named) => named,
        None => settings.as_ref().map(set_settings).unwrap_or_default(),
    };
    Ok(SettingsUpdate {
        values: settings_from_proto(settings)?,
        settings: changed,
    })
}

/// The settings an update mask names; an unknown path is refused, naming
/// the ones there are.
fn mask_settings(paths: &[String]) -> Result<Vec<Setting>, ConvertError> {
    if paths.iter().any(|path| path == "*") {
        return Ok(Setting::ALL.to_vec());
    }
    let mut named = Vec::new();
    for path in paths {
        let field = path.strip_prefix("settings.").unwrap_or(path);
        let Some(setting) = Setting::from_field(field) else {
            return Err(invalid(format!(
                "update_mask names {}, which is not a setting; the settings are {} (or * for all)",
                crate::text::quoted(path),
                Setting::all_fields().join(", ")
            )));
        };
        if !named.contains(&setting) {
            named.push(setting);
        }
    }
    Ok(named)
}

/// The settings a message sets: non-zero, non-empty, true.
fn set_settings(p: &proto::RecipeSettings) -> Vec<Setting> {
    Setting::ALL
        .into_iter()
        .filter(|setting| match setting {
            Setting::InputSize => p.input_width != 0 || p.input_height != 0,
            Setting::KeepAspect => p.keep_aspect,
            Setting::MatchMode => p.match_mode != 0,
            Setting::Neighborhood => p.neighborhood != 0,
            Setting::MinRegionArea => p.min_region_area != 0,
            Setting::Threshold => p.threshold.is_some(),
            Setting::Sensitivity => p.sensitivity != 0.0,
            Setting::TargetFalseRejectRate => p.target_false_reject_rate != 0.0,
            Setting::Roi => p.roi.is_some(),
            Setting::Mask => !p.mask_png.is_empty(),
            Setting::ReferenceSize => p.reference_size != 0,
            Setting::Search => p.search != 0,
            Setting::DriftWindow => p.drift_window != 0,
            Setting::DriftWatchShift => p.drift_watch_shift != 0.0,
            Setting::DriftLimitShift => p.drift_limit_shift != 0.0,
            Setting::DriftWatchShare => p.drift_watch_share != 0.0,
            Setting::DriftLimitShare => p.drift_limit_share != 0.0,
        })
        .collect()
}

/// The proto form of engine settings, defaults filled in.
pub fn settings_to_proto(settings: &RecipeSettings) -> proto::RecipeSettings {
    proto::RecipeSettings {
        input_width: settings.input_width,
        input_height: settings.input_height,
        match_mode: mode_to_proto(settings.match_mode) as i32,
        neighborhood: settings.neighborhood,
        min_region_area: settings.min_region_area,
        threshold: settings.threshold,
        sensitivity: settings.sensitivity,
        roi: settings.roi.map(|r| proto::Roi {
            x: r.x,
            y: r.y,
            width: r.width,
            height: r.height,
        }),
        mask_png: settings.mask_png.clone().into(),
        reference_size: settings.reference_size,
        search: search_to_proto(settings.search) as i32,
        keep_aspect: settings.keep_aspect,
        target_false_reject_rate: settings.target_false_reject_rate,
        drift_window: settings.drift_window,
        drift_watch_shift: settings.drift_watch_shift,
        drift_limit_shift: settings.drift_limit_shift,
        drift_watch_share: settings.drift_watch_share,
        drift_limit_share: settings.drift_limit_share,
    }
}

/// The proto form of a recipe's drift status.
pub fn drift_to_proto(status: &DriftStatus) -> proto::Drift {
    let state = match status.state {
        DriftState::Ok => proto::DriftState::Ok,
        DriftState::Watch => proto::DriftState::Watch,
        DriftState::Drift => proto::DriftState::Drift,
        DriftState::Unavailable => proto::DriftState::Unavailable,
    };
    let limits = status.limits;
    proto::Drift {
        state: state as i32,
        parts_seen: status.parts_seen,
        window_parts: u32::try_from(status.window_parts).unwrap_or(u32::MAX),
        min_parts: u32::try_from(status.min_parts).unwrap_or(u32::MAX),
        median_shift: status.statistics.map(|s| s.median_shift),
        share_above_p95: status.statistics.map(|s| s.share_above_p95),
        calibration_median: status.basis.map_or(0.0, |b| b.median),
        calibration_p95: status.basis.map_or(0.0, |b| b.p95),
        reason: status.reason.clone().unwrap_or_default(),
        window: limits.window,
        watch_shift: limits.watch_shift,
        limit_shift: limits.limit_shift,
        watch_share: limits.watch_share,
        limit_share: limits.limit_share,
    }
}

/// The proto form of a recipe as the core holds it.
pub fn recipe_state_to_proto(state: &RecipeState) -> proto::Recipe {
    let mut recipe = recipe_to_proto(&state.record, state.threshold());
    let status = match (&state.damage, &state.judge) {
        (Some(reason), _) => {
            recipe.status_reason.clone_from(reason);
            proto::RecipeStatus::Damaged
        }
        (None, Some(_)) => proto::RecipeStatus::Ready,
        (None, None) => proto::RecipeStatus::NeedsReferences,
    };
    recipe.status = status as i32;
    recipe.calibration = state
        .judge
        .as_ref()
        .and_then(|judge| judge.calibration())
        .map(|calibrated| proto::Calibration {
            frames_scored: u32::try_from(calibrated.scored).unwrap_or(u32::MAX),
            rule: calibrated.rule.to_string(),
            target_false_reject_rate: state.record.settings.target_false_reject_rate,
            expected_false_reject_rate: calibrated.expected_false_reject_rate,
            calibrated_threshold: calibrated.threshold,
        });
    recipe
}

/// The proto form of a recipe.
pub fn recipe_to_proto(record: &RecipeRecord, threshold: f32) -> proto::Recipe {
    proto::Recipe {
        name: record.name.clone(),
        revision: record.revision,
        reference_count: record.reference_count,
        threshold,
        settings: Some(settings_to_proto(&record.settings)),
        updated_at: Some(prost_types::Timestamp {
            seconds: record.updated_at.0,
            nanos: record.updated_at.1 as i32,
        }),
        calibration: None,
        status: proto::RecipeStatus::Unspecified as i32,
        status_reason: String::new(),
        reference_rebuilt: false,
        drift: None,
    }
}

/// Engine options from the request's heatmap options.
pub fn inspect_options(heatmap: Option<proto::HeatmapOptions>) -> Result<InspectOptions, ConvertError> {
    let Some(heatmap) = heatmap else {
        return Ok(InspectOptions::default());
    };
    let format = match proto::HeatmapFormat::try_from(heatmap.format) {
        Ok(proto::HeatmapFormat::None) => return Ok(InspectOptions::default()),
        Ok(proto::HeatmapFormat::RawU8) => HeatmapFormat::RawU8,
        Ok(proto::HeatmapFormat::Png) => HeatmapFormat::Png,
        Ok(proto::HeatmapFormat::OverlayPng) => HeatmapFormat::OverlayPng,
        Err(_) => return Err(invalid(format!("unknown heatmap format {}", heatmap.format))),
    };
    Ok(InspectOptions {
        heatmap: Some((format, heatmap.max_size)),
        marks: Marks {
            outlines: heatmap.outline_regions,
            stamp: heatmap.stamp_verdict,
        },
    })
}

fn micros(duration: Duration) -> u64 {
    duration.as_micros() as u64
}

/// The core's request for a proto request; `deadline` and `peer` come from
/// the transport.
pub fn inspect_request_from_proto(
    request: proto::InspectRequest,
    deadline: Option<Instant>,
    peer: Option<SocketAddr>,
) -> Result<InspectRequest, ConvertError> {
    let options = inspect_options(request.heatmap)?;
    let frame = frame_from_proto(request.frame)?;
    Ok(InspectRequest {
        recipe: request.recipe,
        frame,
        frame_id: request.frame_id,
        options,
        deadline,
        peer,
    })
}

/// The response for a judged frame.
pub fn inspected_to_proto(inspected: Inspected) -> proto::InspectResponse {
    proto::InspectResponse {
        frame_id: inspected.frame_id,
        verdict: verdict_to_proto(inspected.verdict) as i32,
        score: inspected.score,
        threshold: inspected.threshold,
        normalized_score: inspected.normalized_score,
        regions: inspected.regions.iter().map(region_to_proto).collect(),
        heatmap: inspected.heatmap.map(|h| proto::Heatmap {
            width: h.width,
            height: h.height,
            data: h.data.into(),
            media_type: h.media_type.to_owned(),
            scale: h.scale,
        }),
        timings: Some(timings_to_proto(inspected.timings)),
        recipe_revision: inspected.revision,
        error: None,
    }
}

/// Where the time went, in the proto's microseconds.
pub fn timings_to_proto(timings: Timings) -> proto::Timings {
    let Timings {
        decode,
        queue,
        preprocess,
        inference,
        postprocess,
        total,
    } = timings;
    proto::Timings {
        decode_us: micros(decode),
        queue_us: micros(queue),
        preprocess_us: micros(preprocess),
        inference_us: micros(inference),
        postprocess_us: micros(postprocess),
        total_us: micros(total),
    }
}

/// The proto verdict.
pub fn verdict_to_proto(verdict: Verdict) -> proto::Verdict {
    match verdict {
        Verdict::Pass => proto::Verdict::Pass,
        Verdict::Fail => proto::Verdict::Fail,
    }
}

/// The verdict of a proto value; `None` for UNSPECIFIED and unknown values.
pub fn verdict_from_proto(value: i32) -> Option<Verdict> {
    match proto::Verdict::try_from(value) {
        Ok(proto::Verdict::Pass) => Some(Verdict::Pass),
        Ok(proto::Verdict::Fail) => Some(Verdict::Fail),
        Ok(proto::Verdict::Unspecified) | Err(_) => None,
    }
}

/// A defect region of the response, as Loupe's type.
pub fn region_from_proto(region: &proto::DefectRegion) -> engine::Region {
    engine::Region {
        x: region.x,
        y: region.y,
        width: region.width,
        height: region.height,
        area: region.area,
        max_score: region.max_score,
        mean_score: region.mean_score,
    }
}

/// Takes the frame out of a request message (the bytes are shared, not
/// copied).
pub fn frame_from_proto(frame: Option<proto::Frame>) -> Result<OwnedFrame, ConvertError> {
    let image = frame
        .and_then(|f| f.image)
        .ok_or_else(|| invalid("the request has no frame"))?;
    match image {
        proto::frame::Image::Encoded(bytes) => {
            if bytes.is_empty() {
                return Err(invalid("the encoded frame is empty"));
            }
            Ok(OwnedFrame::Encoded(bytes))
        }
        proto::frame::Image::Raw(raw) => Ok(OwnedFrame::Raw {
            width: raw.width,
            height: raw.height,
            stride: raw.stride,
            format: pixel_format(raw.pixel_format)?,
            data: raw.data,
        }),
    }
}

/// An encoded image file as a request frame.
pub fn encoded_frame(bytes: impl Into<bytes::Bytes>) -> proto::Frame {
    proto::Frame {
        image: Some(proto::frame::Image::Encoded(bytes.into())),
    }
}

/// The pixel format of a proto enum value.
pub fn pixel_format(value: i32) -> Result<PixelFormat, ConvertError> {
    use proto::PixelFormat as P;
    match P::try_from(value) {
        Ok(P::Mono8) => Ok(PixelFormat::Mono8),
        Ok(P::Mono16) => Ok(PixelFormat::Mono16),
        Ok(P::Rgb8) => Ok(PixelFormat::Rgb8),
        Ok(P::Bgr8) => Ok(PixelFormat::Bgr8),
        Ok(P::Rgba8) => Ok(PixelFormat::Rgba8),
        Ok(P::Bgra8) => Ok(PixelFormat::Bgra8),
        Ok(P::Unspecified) => Err(invalid(
            "raw frame has no pixel_format; set MONO8, MONO16, RGB8, BGR8, RGBA8 or BGRA8",
        )),
        Err(_) => Err(invalid(format!("unknown pixel_format {value}"))),
    }
}

/// The proto form of a search.
pub fn search_to_proto(search: SearchMode) -> proto::SearchMode {
    match search {
        SearchMode::Exact => proto::SearchMode::Exact,
        SearchMode::Fast => proto::SearchMode::Fast,
    }
}

/// The proto form of a matching mode.
pub fn mode_to_proto(mode: MatchMode) -> proto::MatchMode {
    match mode {
        MatchMode::Global => proto::MatchMode::Global,
        MatchMode::Aligned => proto::MatchMode::Aligned,
    }
}

/// A defect region as the proto's.
pub fn region_to_proto(region: &engine::Region) -> proto::DefectRegion {
    proto::DefectRegion {
        x: region.x,
        y: region.y,
        width: region.width,
        height: region.height,
        area: region.area,
        max_score: region.max_score,
        mean_score: region.mean_score,
    }
}

/// The stream response for a frame that failed with `status`.
pub fn error_response(frame_id: String, status: &tonic::Status) -> proto::InspectResponse {
    proto::InspectResponse {
        frame_id,
        verdict: proto::Verdict::Unspecified as i32,
        error: Some(proto::FrameError {
            code: status.code() as i32,
            message: status.message().to_owned(),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_changes_what_its_mask_names_or_else_what_it_sets() {
        let sensitivity = proto::RecipeSettings {
            sensitivity: 1.5,
            ..Default::default()
        };
        let implied = settings_update_from_proto(Some(sensitivity.clone()), None).unwrap();
        assert_eq!(implied.settings, [Setting::Sensitivity]);
        let mask = |paths: &[&str]| {
            Some(prost_types::FieldMask {
                paths: paths.iter().map(|&p| p.to_owned()).collect(),
            })
        };
        let named = settings_update_from_proto(
            Some(sensitivity.clone()),
            mask(&["settings.threshold", "input_height", "input_width"]),
        )
        .unwrap();
        assert_eq!(named.settings, [Setting::Threshold, Setting::InputSize]);
        let all = settings_update_from_proto(Some(sensitivity.clone()), mask(&["*"])).unwrap();
        assert_eq!(all.settings, Setting::ALL);
        let error = settings_update_from_proto(Some(sensitivity), mask(&["keepaspect"])).unwrap_err();
        assert!(
            error.0.contains("\"keepaspect\", which is not a setting"),
            "{error}"
        );
        assert!(error.0.contains("keep_aspect"), "{error}");
    }

    #[test]
    fn unset_fields_take_the_defaults_and_round_trip() {
        let settings = settings_from_proto(Some(proto::RecipeSettings::default())).unwrap();
        assert_eq!(settings, RecipeSettings::default());
        let aligned = proto::RecipeSettings {
            match_mode: proto::MatchMode::Aligned as i32,
            input_width: 320,
            threshold: Some(2.0),
            roi: Some(proto::Roi {
                x: 1,
                y: 2,
                width: 30,
                height: 40,
            }),
            ..Default::default()
        };
        let engine = settings_from_proto(Some(aligned)).unwrap();
        assert_eq!(engine.match_mode, MatchMode::Aligned);
        assert_eq!((engine.input_width, engine.input_height), (320, 256));
        assert_eq!(
            settings_from_proto(Some(settings_to_proto(&engine))).unwrap(),
            engine
        );
    }

    #[test]
    fn drift_settings_convert_and_update_alone() {
        let drift = proto::RecipeSettings {
            drift_window: 50,
            drift_limit_share: 0.3,
            ..Default::default()
        };
        let update = settings_update_from_proto(Some(drift), None).unwrap();
        assert_eq!(update.settings, [Setting::DriftWindow, Setting::DriftLimitShare]);
        let applied = update.apply(&RecipeSettings::default());
        assert_eq!((applied.drift_window, applied.drift_limit_share), (50, 0.3));
        assert_eq!(
            applied.drift_watch_share,
            RecipeSettings::default().drift_watch_share
        );
        assert_eq!(
            settings_from_proto(Some(settings_to_proto(&applied))).unwrap(),
            applied
        );
    }

    #[test]
    fn the_search_converts_both_ways_and_updates_alone() {
        for search in SearchMode::ALL {
            let engine = RecipeSettings {
                search,
                ..RecipeSettings::default()
            };
            assert_eq!(
                settings_from_proto(Some(settings_to_proto(&engine))).unwrap(),
                engine
            );
        }
        let exact = proto::RecipeSettings {
            search: proto::SearchMode::Exact as i32,
            ..Default::default()
        };
        let update = settings_update_from_proto(Some(exact), None).unwrap();
        assert_eq!(update.settings, [Setting::Search]);
        assert_eq!(update.apply(&RecipeSettings::default()).search, SearchMode::Exact);
        let bad = proto::RecipeSettings {
            search: 7,
            ..Default::default()
        };
        assert!(settings_from_proto(Some(bad)).unwrap_err().0.contains("search"));
    }

    #[test]
    fn unknown_enum_values_are_invalid() {
        let bad = proto::RecipeSettings {
            match_mode: 42,
            ..Default::default()
        };
        assert!(
            settings_from_proto(Some(bad))
                .unwrap_err()
                .0
                .contains("match_mode")
        );
        let heatmap = proto::HeatmapOptions {
            format: 9,
            ..Default::default()
        };
        assert!(inspect_options(Some(heatmap)).is_err());
    }

    #[test]
    fn a_missing_frame_or_format_is_invalid() {
        assert!(frame_from_proto(None).unwrap_err().0.contains("no frame"));
        let raw = proto::Frame {
            image: Some(proto::frame::Image::Raw(proto::RawImage {
                width: 1,
                height: 1,
                stride: 0,
                pixel_format: 0,
                data: vec![0].into(),
            })),
        };
        assert!(
            frame_from_proto(Some(raw))
                .unwrap_err()
                .0
                .contains("pixel_format")
        );
    }
}
