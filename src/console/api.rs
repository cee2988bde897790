//! The console's JSON API, which its script reads: recipes with their
//! threshold, drift state and counts; results, one result, and a result's
//! pictures from the audit trail. Read-only, `GET` only.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::Console;
use super::feed::Counts;
use crate::audit::{Audit, ImagesState, MAX_PAGE_SIZE, ResultFilter, ResultRecord};
use crate::engine::{Region, Verdict};
use crate::server::{DriftState, DriftStatus, Error, RecipeState};

/// An error as the page gets it: a status and `{"error": "..."}`.
#[derive(Debug)]
pub(super) struct ApiError(StatusCode, String);

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let status = match &error {
            Error::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::AlreadyExists(_) | Error::FailedPrecondition(_) => StatusCode::CONFLICT,
            Error::ResourceExhausted(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Engine(_) | Error::ReferenceFrame { .. } | Error::Store(_) | Error::Internal(_) => {
                tracing::error!(%error, "console");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let message = match &error {
            Error::Store(store) => store.for_client(),
            _ => error.to_string(),
        };
        Self(status, message)
    }
}

impl ApiError {
    /// 503 with `message`.
    pub(super) fn unavailable(message: String) -> Self {
        Self(StatusCode::SERVICE_UNAVAILABLE, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body {
            error: String,
        }
        (self.0, Json(Body { error: self.1 })).into_response()
    }
}

type Answer<T> = Result<Json<T>, ApiError>;

/// Anything else: 404.
pub(super) async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such page".to_owned())
}

fn trail(console: &Console) -> Result<&Audit, ApiError> {
    console.audit.as_ref().ok_or_else(|| {
        ApiError::unavailable(
            "the audit trail is off on this server (--audit off): no results are recorded".to_owned(),
        )
    })
}

#[derive(Debug, Serialize)]
pub(super) struct RecipeView {
    name: String,
    revision: u64,
    status: &'static str,
    status_reason: Option<String>,
    reference_count: u32,
    mode: String,
    input: String,
    threshold: f32,
    threshold_source: String,
    calibration: Option<CalibrationView>,
    drift: Option<DriftView>,
    counts: Counts,
    /// Every setting, as in a settings file (the mask as its size).
    settings: serde_json::Value,
}

#[derive(Debug, Serialize)]
struct CalibrationView {
    rule: String,
    frames_scored: usize,
    target_false_reject_rate: f32,
    expected_false_reject_rate: Option<f32>,
}

#[derive(Debug, Serialize)]
struct DriftView {
    state: String,
    parts_seen: u64,
    window_parts: usize,
    min_parts: usize,
    median_shift: Option<f32>,
    share_above_p95: Option<f32>,
    /// The calibration's median, 95th percentile and spread (p95 - median).
    basis: Option<[f32; 3]>,
    reason: Option<String>,
    watch_shift: f32,
    limit_shift: f32,
    watch_share: f32,
    limit_share: f32,
}

fn drift_view(status: &DriftStatus) -> DriftView {
    let state = match status.state {
        DriftState::Ok => "OK",
        DriftState::Watch => "WATCH",
        DriftState::Drift => "DRIFT",
        DriftState::Unavailable => "UNAVAILABLE",
    };
    DriftView {
        state: state.to_owned(),
        parts_seen: status.parts_seen,
        window_parts: status.window_parts,
        min_parts: status.min_parts,
        median_shift: status.statistics.as_ref().map(|s| s.median_shift),
        share_above_p95: status.statistics.as_ref().map(|s| s.share_above_p95),
        basis: status.basis.as_ref().map(|b| [b.median, b.p95, b.spread]),
        reason: status.reason.clone(),
        watch_shift: status.limits.watch_shift,
        limit_shift: status.limits.limit_shift,
        watch_share: status.limits.watch_share,
        limit_share: status.limits.limit_share,
    }
}

fn recipe_view(console: &Console, state: &RecipeState) -> RecipeView {
    let record = &state.record;
    let settings = &record.settings;
    let calibrated = state.judge.as_ref().and_then(|judge| judge.calibration());
    let (status, status_reason) = match (&state.damage, &state.judge) {
        (Some(reason), _) => ("damaged", Some(reason.clone())),
        (None, Some(_)) => ("ready", None),
        (None, None) => ("needs references", None),
    };
    let mut shown = serde_json::to_value(settings).unwrap_or_default();
    if let Some(fields) = shown.as_object_mut() {
        fields.remove("mask_png");
        fields.insert("mask_bytes".to_owned(), settings.mask_png.len().into());
    }
    RecipeView {
        name: record.name.clone(),
        revision: record.revision,
        status,
        status_reason,
        reference_count: record.reference_count,
        mode: settings.match_mode.to_string(),
        input: settings.input_rule().to_string(),
        threshold: state.threshold(),
        threshold_source: settings.threshold_source(calibrated.is_some()),
        calibration: calibrated.map(|calibrated| CalibrationView {
            rule: calibrated.rule.to_string(),
            frames_scored: calibrated.scored,
            target_false_reject_rate: settings.target_false_reject_rate,
            expected_false_reject_rate: calibrated.expected_false_reject_rate,
        }),
        drift: console.server.drift(state).as_ref().map(drift_view),
        counts: console.feed.counts(&record.name),
        settings: shown,
    }
}

/// `GET /api/recipes`.
pub(super) async fn recipes(State(console): State<Console>) -> Json<Vec<RecipeView>> {
    let mut recipes = console.server.recipes();
    recipes.sort_by(|a, b| a.record.name.cmp(&b.record.name));
    Json(recipes.iter().map(|state| recipe_view(&console, state)).collect())
}

/// `GET /api/recipes/NAME`.
pub(super) async fn recipe(State(console): State<Console>, Path(name): Path<String>) -> Answer<RecipeView> {
    let state = console.server.recipe(&name)?;
    Ok(Json(recipe_view(&console, &state)))
}

#[derive(Debug, Serialize)]
pub(super) struct ResultView {
    id: String,
    at_ms: i64,
    recipe: String,
    revision: u64,
    frame_id: String,
    verdict: &'static str,
    score: f32,
    threshold: f32,
    regions: Vec<RegionView>,
    /// Milliseconds per stage.
    timings_ms: Timings,
    peer: Option<String>,
    /// `kept`, `not sampled`, `removed`, `write failed` or `unavailable`.
    pictures: &'static str,
}

#[derive(Debug, Serialize)]
struct RegionView {
    x: u32,
    y: u32,
    width: u32,
    height: u32,
    area: u32,
    max_score: f32,
}

#[derive(Debug, Serialize)]
struct Timings {
    decode: f64,
    queue: f64,
    preprocess: f64,
    model: f64,
    search: f64,
    total: f64,
}

fn result_view(record: &ResultRecord) -> ResultView {
    let ms = |duration: std::time::Duration| duration.as_secs_f64() * 1e3;
    let t = &record.timings;
    ResultView {
        id: record.id.clone(),
        at_ms: record.at_ms,
        recipe: record.recipe.clone(),
        revision: record.revision,
        frame_id: record.frame_id.clone(),
        verdict: super::feed::verdict_text(record.verdict),
        score: record.score,
        threshold: record.threshold,
        regions: record.regions.iter().map(region_view).collect(),
        timings_ms: Timings {
            decode: ms(t.decode),
            queue: ms(t.queue),
            preprocess: ms(t.preprocess),
            model: ms(t.inference),
            search: ms(t.postprocess),
            total: ms(t.total),
        },
        peer: record.peer.clone(),
        pictures: match record.images {
            ImagesState::Kept => "kept",
            ImagesState::NotSampled => "not sampled",
            ImagesState::Removed => "removed",
            ImagesState::WriteFailed => "write failed",
            ImagesState::Unavailable => "unavailable",
        },
    }
}

fn region_view(region: &Region) -> RegionView {
    RegionView {
        x: region.x,
        y: region.y,
        width: region.width,
        height: region.height,
        area: region.area,
        max_score: region.max_score,
    }
}

/// The filters of `GET /api/results`.
#[derive(Debug, Deserialize)]
pub(super) struct ResultsQuery {
    recipe: Option<String>,
    /// `PASS` or `FAIL`.
    verdict: Option<String>,
    /// At most [`MAX_PAGE_SIZE`]; 50 when absent.
    limit: Option<usize>,
}

/// `GET /api/results?recipe=&verdict=&limit=`: the newest results first.
pub(super) async fn results(
    State(console): State<Console>,
    Query(query): Query<ResultsQuery>,
) -> Answer<Vec<ResultView>> {
    let audit = trail(&console)?;
    let verdict = match query.verdict.as_deref() {
        None | Some("") => None,
        Some(text) if text.eq_ignore_ascii_case("pass") => Some(Verdict::Pass),
        Some(text) if text.eq_ignore_ascii_case("fail") => Some(Verdict::Fail),
        Some(text) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("verdict must be PASS or FAIL, got {}", crate::text::quoted(text)),
            ));
        }
    };
    let filter = ResultFilter {
        recipe: query.recipe.filter(|name| !name.is_empty()),
        verdict,
        ..ResultFilter::default()
    };
    let limit = query.limit.unwrap_or(50).clamp(1, MAX_PAGE_SIZE);
    let page = audit.list(filter, limit, "").await.map_err(Error::from)?;
    Ok(Json(page.results.iter().map(result_view).collect()))
}

/// `GET /api/results/ID`.
pub(super) async fn result(State(console): State<Console>, Path(id): Path<String>) -> Answer<ResultView> {
    let (record, _) = trail(&console)?.get(id).await.map_err(Error::from)?;
    Ok(Json(result_view(&record)))
}

/// `GET /api/results/ID/frame.png`.
pub(super) async fn frame(
    State(console): State<Console>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    picture(&console, id, |images| images.frame_png).await
}

/// `GET /api/results/ID/overlay.png`.
pub(super) async fn overlay(
    State(console): State<Console>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    picture(&console, id, |images| images.overlay_png).await
}

async fn picture(
    console: &Console,
    id: String,
    which: impl FnOnce(crate::audit::ResultImages) -> Option<Vec<u8>>,
) -> Result<Response, ApiError> {
    let (record, images) = trail(console)?.get(id).await.map_err(Error::from)?;
    let Some(png) = which(images) else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!(
                "result {} has no picture kept ({})",
                record.id,
                result_view(&record).pictures
            ),
        ));
    };
    // A result's pictures never change: the browser may keep them.
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "max-age=86400, immutable"),
        ],
        png,
    )
        .into_response())
}
