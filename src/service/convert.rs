//! Conversions between proto messages and engine types. Zero and unset
//! proto fields become the documented defaults here, in one place.

use std::time::Duration;

use crate::engine::{self, HeatmapFormat, InspectOptions, Inspection, MatchMode, RecipeSettings, Verdict};
use crate::imaging::Roi;
use crate::proto;
use crate::store::RecipeRecord;

use super::ServiceError;

/// Engine settings from the proto message (`None`: all defaults).
pub fn settings_from_proto(settings: Option<proto::RecipeSettings>) -> Result<RecipeSettings, ServiceError> {
    let defaults = RecipeSettings::default();
    let Some(p) = settings else {
        return Ok(defaults);
    };
    let match_mode = match proto::MatchMode::try_from(p.match_mode) {
        Ok(proto::MatchMode::Unspecified | proto::MatchMode::Global) => MatchMode::Global,
        Ok(proto::MatchMode::Aligned) => MatchMode::Aligned,
        Err(_) => {
            return Err(ServiceError::InvalidArgument(format!(
                "unknown match_mode {}",
                p.match_mode
            )));
        }
    };
    let or = |value: u32, default: u32| if value == 0 { default } else { value };
    Ok(RecipeSettings {
        input_width: or(p.input_width, defaults.input_width),
        input_height: or(p.input_height, defaults.input_height),
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
        roi: p.roi.filter(|r| r.width != 0 || r.height != 0).map(|r| Roi {
            x: r.x,
            y: r.y,
            width: r.width,
            height: r.height,
        }),
        mask_png: p.mask_png.to_vec(),
        reference_size: or(p.reference_size, defaults.reference_size),
    })
}

/// The proto form of engine settings, defaults filled in.
pub fn settings_to_proto(settings: &RecipeSettings) -> proto::RecipeSettings {
    proto::RecipeSettings {
        input_width: settings.input_width,
        input_height: settings.input_height,
        match_mode: match settings.match_mode {
            MatchMode::Global => proto::MatchMode::Global,
            MatchMode::Aligned => proto::MatchMode::Aligned,
        } as i32,
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
        keep_aspect: settings.keep_aspect,
    }
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
    }
}

/// Engine options from the request's heatmap options.
pub fn inspect_options(heatmap: Option<proto::HeatmapOptions>) -> Result<InspectOptions, ServiceError> {
    let Some(heatmap) = heatmap else {
        return Ok(InspectOptions::default());
    };
    let format = match proto::HeatmapFormat::try_from(heatmap.format) {
        Ok(proto::HeatmapFormat::None) => return Ok(InspectOptions::default()),
        Ok(proto::HeatmapFormat::RawU8) => HeatmapFormat::RawU8,
        Ok(proto::HeatmapFormat::Png) => HeatmapFormat::Png,
        Ok(proto::HeatmapFormat::OverlayPng) => HeatmapFormat::OverlayPng,
        Err(_) => {
            return Err(ServiceError::InvalidArgument(format!(
                "unknown heatmap format {}",
                heatmap.format
            )));
        }
    };
    Ok(InspectOptions {
        heatmap: Some((format, heatmap.max_size)),
    })
}

fn micros(duration: Duration) -> u64 {
    duration.as_micros() as u64
}

/// The response for an inspection.
pub fn inspection_to_proto(
    inspection: Inspection,
    frame_id: String,
    revision: u64,
    decode: Duration,
    queue: Duration,
    total: Duration,
) -> proto::InspectResponse {
    let t = inspection.timings;
    proto::InspectResponse {
        frame_id,
        verdict: match inspection.verdict {
            Verdict::Pass => proto::Verdict::Pass,
            Verdict::Fail => proto::Verdict::Fail,
        } as i32,
        score: inspection.score,
        threshold: inspection.threshold,
        normalized_score: inspection.normalized_score,
        regions: inspection.regions.iter().map(region_to_proto).collect(),
        heatmap: inspection.heatmap.map(|h| proto::Heatmap {
            width: h.width,
            height: h.height,
            data: h.data.into(),
            media_type: h.media_type.to_owned(),
            scale: h.scale,
        }),
        timings: Some(proto::Timings {
            decode_us: micros(decode),
            queue_us: micros(queue),
            preprocess_us: micros(t.preprocess),
            inference_us: micros(t.inference),
            postprocess_us: micros(t.postprocess),
            total_us: micros(total),
        }),
        recipe_revision: revision,
        error: None,
    }
}

fn region_to_proto(region: &engine::Region) -> proto::DefectRegion {
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

/// The stream response for a frame that failed.
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
    fn unknown_enum_values_are_invalid() {
        let bad = proto::RecipeSettings {
            match_mode: 42,
            ..Default::default()
        };
        assert!(matches!(
            settings_from_proto(Some(bad)),
            Err(ServiceError::InvalidArgument(_))
        ));
        let heatmap = proto::HeatmapOptions {
            format: 9,
            max_size: 0,
        };
        assert!(inspect_options(Some(heatmap)).is_err());
    }
}
