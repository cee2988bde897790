//! Conversions between the `loupe.v1.Results` messages and the audit
//! trail's types.

use prost_types::Timestamp;

use super::convert::{ConvertError, region_to_proto, timings_to_proto, verdict_from_proto, verdict_to_proto};
use crate::audit::{ImagesState, ResultFilter, ResultRecord};
use crate::proto;

/// Unix milliseconds as a timestamp.
pub fn timestamp(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A timestamp as Unix milliseconds (sub-millisecond parts rounded up, so
/// that `[start, end)` keeps its meaning at millisecond precision).
pub fn timestamp_ms(field: &str, time: &Timestamp) -> Result<i64, ConvertError> {
    if !(0..1_000_000_000).contains(&time.nanos) {
        return Err(ConvertError(format!(
            "{field}.nanos must be in 0..1000000000, got {}",
            time.nanos
        )));
    }
    let millis = (i64::from(time.nanos) + 999_999) / 1_000_000;
    time.seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(millis))
        .ok_or_else(|| ConvertError(format!("{field} is out of range ({} s)", time.seconds)))
}

/// The proto's images state.
pub fn images_to_proto(images: ImagesState) -> proto::ImagesState {
    match images {
        ImagesState::Kept => proto::ImagesState::Kept,
        ImagesState::NotSampled => proto::ImagesState::NotSampled,
        ImagesState::Removed => proto::ImagesState::Removed,
        ImagesState::WriteFailed => proto::ImagesState::WriteFailed,
        ImagesState::Unavailable => proto::ImagesState::Unavailable,
    }
}

/// A recorded result as the proto's.
pub fn result_to_proto(result: &ResultRecord) -> proto::InspectionResult {
    proto::InspectionResult {
        id: result.id.clone(),
        time: Some(timestamp(result.at_ms)),
        recipe: result.recipe.clone(),
        recipe_revision: result.revision,
        frame_id: result.frame_id.clone(),
        verdict: verdict_to_proto(result.verdict) as i32,
        score: result.score,
        threshold: result.threshold,
        regions: result.regions.iter().map(region_to_proto).collect(),
        timings: Some(timings_to_proto(result.timings)),
        peer: result.peer.clone().unwrap_or_default(),
        images: images_to_proto(result.images) as i32,
    }
}

/// The filters of a ListResults request.
pub fn filter_from_proto(request: &proto::ListResultsRequest) -> Result<ResultFilter, ConvertError> {
    let verdict = match request.verdict {
        0 => None,
        value => Some(verdict_from_proto(value).ok_or_else(|| {
            ConvertError(format!(
                "verdict must be VERDICT_PASS (1), VERDICT_FAIL (2) or unset, got {value}"
            ))
        })?),
    };
    let start_ms = request
        .start_time
        .as_ref()
        .map(|time| timestamp_ms("start_time", time))
        .transpose()?;
    let end_ms = request
        .end_time
        .as_ref()
        .map(|time| timestamp_ms("end_time", time))
        .transpose()?;
    Ok(ResultFilter {
        recipe: (!request.recipe.is_empty()).then(|| request.recipe.clone()),
        verdict,
        start_ms,
        end_ms,
    })
}

/// A ListResults page size: 0 for the default; negative is refused.
pub fn page_size(value: i32) -> Result<usize, ConvertError> {
    usize::try_from(value).map_err(|_| ConvertError(format!("page_size must be 0 or more, got {value}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_at_millisecond_precision() {
        for ms in [0, 1, 999, 1_764_000_000_123, -1] {
            assert_eq!(timestamp_ms("t", &timestamp(ms)).unwrap(), ms);
        }
        let bad = Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert!(
            timestamp_ms("start_time", &bad)
                .unwrap_err()
                .0
                .contains("start_time")
        );
    }

    #[test]
    fn an_unknown_verdict_filter_is_refused() {
        let request = proto::ListResultsRequest {
            verdict: 7,
            ..Default::default()
        };
        let error = filter_from_proto(&request).unwrap_err();
        assert!(error.0.contains("got 7"), "{}", error.0);
    }
}
