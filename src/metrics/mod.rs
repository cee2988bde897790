//! Prometheus metrics for `--metrics-listen`: counters and histograms fed by
//! a subscriber of the core's events (never on the inspection path: a
//! subscriber that falls behind loses events, which the bus counts), values
//! read from the core at scrape time (frames in flight, events dropped, each
//! recipe's drift state and statistics), failed gRPC calls counted by
//! the transport's layer ([`crate::grpc::calls`]), and the HTTP listener
//! that serves them all on `GET /metrics` in the Prometheus text format.
//!
//! The audit trail's failed writes and dropped records are read from it
//! at scrape time ([`register_audit`]).
//!
//! Left out for now because the core has nothing to report yet:
//! failed enrollments (the events carry only the
//! recipe changes that happened).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, prometheus_text};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::Code;

use crate::audit::Audit;
use crate::engine::Verdict;
use crate::grpc::calls::FailedCalls;
use crate::server::{DriftState, Event, InspectionEvent, RecipeChange, RecipeEvent, Server, Subscription};

/// Bounds of the stage-time buckets, seconds.
const STAGE_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Bounds of the score / threshold buckets: finely around 1, where PASS
/// turns to FAIL.
const NORMALIZED_SCORE_BUCKETS: [f64; 11] = [0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 4.0];

/// Bounds of the batch-size buckets, frames.
const BATCH_BUCKETS: [f64; 7] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// The stages of `loupe_inspection_stage_seconds`.
pub const STAGES: [&str; 6] = ["queue", "decode", "preprocess", "model", "search", "total"];

/// The changes of `loupe_recipe_changes_total`.
pub const CHANGES: [&str; 5] = ["created", "settings", "references", "deleted", "damaged"];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InspectionLabels {
    recipe: String,
    verdict: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RecipeLabels {
    recipe: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChangeLabels {
    change: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: &'static str,
    code: &'static str,
}

type Histograms<S> = Family<S, Histogram, fn() -> Histogram>;

fn stage_histogram() -> Histogram {
    Histogram::new(STAGE_BUCKETS)
}

fn normalized_score_histogram() -> Histogram {
    Histogram::new(NORMALIZED_SCORE_BUCKETS)
}

/// The metric families; cloning shares them.
#[derive(Debug, Clone)]
pub struct Metrics {
    inspections: Family<InspectionLabels, Counter>,
    stages: Histograms<StageLabels>,
    normalized_score: Histograms<RecipeLabels>,
    batch_size: Histogram,
    engine_busy: Counter<f64, AtomicU64>,
    recipe_changes: Family<ChangeLabels, Counter>,
    enrollments: Family<OutcomeLabels, Counter>,
    failed_calls: Family<CallLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Families with nothing counted yet; those with a fixed set of labels
    /// start at zero for every label, so they are scraped from the start.
    pub fn new() -> Self {
        let metrics = Self {
            inspections: Family::default(),
            stages: Family::new_with_constructor(stage_histogram),
            normalized_score: Family::new_with_constructor(normalized_score_histogram),
            batch_size: Histogram::new(BATCH_BUCKETS),
            engine_busy: Counter::default(),
            recipe_changes: Family::default(),
            enrollments: Family::default(),
            failed_calls: Family::default(),
        };
        for stage in STAGES {
            metrics.stages.get_or_create_owned(&StageLabels { stage });
        }
        for change in CHANGES {
            metrics
                .recipe_changes
                .get_or_create_owned(&ChangeLabels { change });
        }
        metrics
            .enrollments
            .get_or_create_owned(&OutcomeLabels { outcome: "succeeded" });
        metrics
    }

    /// Counts one event of the core.
    pub fn record(&self, event: &Event) {
        match event {
            Event::Inspection(inspection) => self.inspected(inspection),
            Event::Recipe(change) => self.recipe_changed(change),
            // Drift is read from the core at each scrape.
            Event::Drift(_) => {}
        }
    }

    fn inspected(&self, event: &InspectionEvent) {
        let verdict = match event.verdict {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
        };
        self.inspections
            .get_or_create(&InspectionLabels {
                recipe: event.recipe.clone(),
                verdict,
            })
            .inc();
        let timings = event.timings;
        for (stage, time) in STAGES.into_iter().zip([
            timings.queue,
            timings.decode,
            timings.preprocess,
            timings.inference,
            timings.postprocess,
            timings.total,
        ]) {
            self.stages
                .get_or_create(&StageLabels { stage })
                .observe(time.as_secs_f64());
        }
        if event.threshold > 0.0 && event.score.is_finite() {
            self.normalized_score
                .get_or_create(&RecipeLabels {
                    recipe: event.recipe.clone(),
                })
                .observe(f64::from(event.score) / f64::from(event.threshold));
        }
        if event.batch.first {
            self.batch_size.observe(event.batch.size as f64);
        }
        let busy: Duration = timings.preprocess + timings.inference + timings.postprocess;
        self.engine_busy.inc_by(busy.as_secs_f64());
    }

    fn recipe_changed(&self, event: &RecipeEvent) {
        let (change, enrolled) = match event.change {
            RecipeChange::Created => ("created", false),
            RecipeChange::SettingsChanged { rebuilt, .. } => ("settings", rebuilt),
            RecipeChange::ReferencesAdded { .. } => ("references", true),
            RecipeChange::Deleted => ("deleted", false),
            RecipeChange::Damaged { .. } => ("damaged", false),
        };
        self.recipe_changes.get_or_create(&ChangeLabels { change }).inc();
        if enrolled {
            self.enrollments
                .get_or_create(&OutcomeLabels { outcome: "succeeded" })
                .inc();
        }
    }

    /// A registry of every family under the `loupe_` prefix, with the
    /// values read from `core` at each scrape when given.
    pub fn registry(&self, core: Option<Arc<Server>>) -> Registry {
        let mut registry = Registry::with_prefix("loupe");
        registry.register(
            "inspections",
            "Frames judged, by recipe and verdict",
            self.inspections.clone(),
        );
        registry.register_with_unit(
            "inspection_stage",
            "Time judged frames spent in each stage (queue: waiting for the engine; model: the \
             frame's share of its batch's model run; search: nearest-neighbour search, map, regions and heatmap; \
             total: arrival at the core to the answer)",
            Unit::Seconds,
            self.stages.clone(),
        );
        registry.register(
            "normalized_score",
            "Anomaly score over the recipe's threshold of judged frames (above 1 fails)",
            self.normalized_score.clone(),
        );
        registry.register(
            "batch_size",
            "Frames judged together in one model run (counted from the run's first frame's event)",
            self.batch_size.clone(),
        );
        registry.register_with_unit(
            "engine_busy",
            "Engine time spent judging frames: preprocess, model and search summed over judged frames",
            Unit::Seconds,
            self.engine_busy.clone(),
        );
        registry.register(
            "recipe_changes",
            "Recipe changes, by kind (damaged: not loadable at start-up)",
            self.recipe_changes.clone(),
        );
        registry.register(
            "enrollments",
            "References built from good frames (AddReferences, or settings that needed a rebuild)",
            self.enrollments.clone(),
        );
        registry.register(
            "grpc_failed_calls",
            "gRPC calls that ended with a status other than OK, by method and code",
            self.failed_calls.clone(),
        );
        if let Some(server) = core {
            registry.register_collector(Box::new(Core(server)));
        }
        registry
    }

    /// Counts every event of `subscription` on a task of its own until the
    /// task is aborted.
    pub fn spawn_subscriber(&self, mut subscription: Subscription) -> JoinHandle<()> {
        let metrics = self.clone();
        tokio::spawn(async move {
            while let Some(event) = subscription.recv().await {
                metrics.record(&event);
            }
        })
    }
}

impl FailedCalls for Metrics {
    fn failed(&self, method: &'static str, code: Code) {
        self.failed_calls
            .get_or_create(&CallLabels {
                method,
                code: code_name(code),
            })
            .inc();
    }
}

/// A status code as gRPC spells it (`NOT_FOUND`).
pub use crate::grpc::code_name;

/// What is read from the core at each scrape: two counters and each
/// recipe's drift status (a short lock per recipe), no I/O.
#[derive(Debug)]
struct Core(Arc<Server>);

impl Collector for Core {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let in_flight = ConstGauge::new(i64::try_from(self.0.frames_in_flight()).unwrap_or(i64::MAX));
        in_flight.encode(encoder.encode_descriptor(
            "frames_in_flight",
            "Frames accepted for inspection and not yet answered (at most --max-pending).",
            None,
            in_flight.metric_type(),
        )?)?;
        let dropped = ConstCounter::new(self.0.events().dropped());
        dropped.encode(encoder.encode_descriptor(
            "events_dropped",
            "Core events lost by subscribers that fell behind (these metrics, or any other subscriber).",
            None,
            dropped.metric_type(),
        )?)?;
        encode_drift(&self.0, &mut encoder)
    }
}

/// `loupe_drift_state`, `loupe_drift_median_shift` and
/// `loupe_drift_share_above_p95` of every recipe with a drift watch.
fn encode_drift(server: &Server, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let mut states = Vec::new();
    let mut statistics = Vec::new();
    for state in server.recipes() {
        let Some(drift) = server.drift(&state) else {
            continue;
        };
        let level = match drift.state {
            DriftState::Ok => 0,
            DriftState::Watch => 1,
            DriftState::Drift => 2,
            DriftState::Unavailable => continue,
        };
        let labels = RecipeLabels {
            recipe: state.record.name.clone(),
        };
        if let Some(stats) = drift.statistics {
            statistics.push((labels.clone(), stats));
        }
        states.push((labels, level));
    }
    let gauge = ConstGauge::new(0i64);
    let mut family = encoder.encode_descriptor(
        "drift_state",
        "Drift watch state of each recipe with one: 0 OK, 1 WATCH, 2 DRIFT (recipes without a reference, \
         or whose reference gives no basis, are left out)",
        None,
        gauge.metric_type(),
    )?;
    for (labels, level) in &states {
        ConstGauge::new(*level).encode(family.encode_family(labels)?)?;
    }
    let gauge = ConstGauge::new(0.0f64);
    let mut family = encoder.encode_descriptor(
        "drift_median_shift",
        "Median of the recent PASS scores minus the calibration median, over the calibration's p95 - median",
        None,
        gauge.metric_type(),
    )?;
    for (labels, stats) in &statistics {
        ConstGauge::new(f64::from(stats.median_shift)).encode(family.encode_family(labels)?)?;
    }
    let mut family = encoder.encode_descriptor(
        "drift_share_above_p95",
        "Share of the recent PASS scores above the calibration's 95th percentile (expected 0.05)",
        None,
        gauge.metric_type(),
    )?;
    for (labels, stats) in &statistics {
        ConstGauge::new(f64::from(stats.share_above_p95)).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// Adds the audit trail's counts to `registry`: read at each scrape.
pub fn register_audit(registry: &mut Registry, audit: Audit) {
    registry.register_collector(Box::new(AuditCounts(audit)));
}

/// What is read from the audit trail at each scrape.
#[derive(Debug)]
struct AuditCounts(Audit);

impl Collector for AuditCounts {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let failed = ConstCounter::new(self.0.writes_failed());
        failed.encode(encoder.encode_descriptor(
            "audit_writes_failed",
            "Audit-trail records and files that could not be written (the disk, say); the inspections were answered.",
            None,
            failed.metric_type(),
        )?)?;
        let dropped = ConstCounter::new(self.0.records_dropped());
        dropped.encode(encoder.encode_descriptor(
            "audit_records_dropped",
            "Core events the audit writer lost because its queue (--audit-queue) was full.",
            None,
            dropped.metric_type(),
        )?)?;
        Ok(())
    }
}

/// Why the metrics listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address cannot be bound.
    #[error("cannot listen for metrics on {addr} (--metrics-listen): {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Binds the metrics listener at `addr`.
pub async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Serves `registry` on `listener` (`GET /metrics`; 404 elsewhere) until
/// `stop` completes.
pub async fn serve(
    registry: Arc<Registry>,
    listener: TcpListener,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .with_state(registry);
    axum::serve(listener, app).with_graceful_shutdown(stop).await
}

async fn scrape(State(registry): State<Arc<Registry>>) -> Response {
    let mut text = String::new();
    match prometheus_text::encode(&mut text, &registry) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)], text).into_response(),
        Err(error) => {
            tracing::error!(%error, "cannot encode the metrics; this is a bug");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::server::{Batch, InspectionEvent, RecipeEvent, Timings};

    fn inspection(recipe: &str, score: f32, verdict: Verdict, batch: Batch) -> Event {
        let ms = Duration::from_millis;
        Event::Inspection(Arc::new(InspectionEvent {
            at: SystemTime::now(),
            recipe: recipe.to_owned(),
            revision: 1,
            frame_id: String::new(),
            verdict,
            score,
            threshold: 2.0,
            regions: Vec::new(),
            timings: Timings {
                decode: ms(2),
                queue: ms(1),
                preprocess: ms(3),
                inference: ms(20),
                postprocess: ms(7),
                total: ms(40),
            },
            batch,
            peer: None,
            images: None,
        }))
    }

    fn change(change: RecipeChange) -> Event {
        Event::Recipe(Arc::new(RecipeEvent {
            at: SystemTime::now(),
            recipe: "weave".to_owned(),
            revision: 1,
            change,
            peer: None,
        }))
    }

    fn text(metrics: &Metrics) -> String {
        let mut text = String::new();
        prometheus_text::encode(&mut text, &metrics.registry(None)).unwrap();
        text
    }

    /// The value of the sample `series` (name and labels as scraped).
    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn events_become_counts_by_label() {
        let metrics = Metrics::new();
        let (one, two) = (
            Batch { size: 1, first: true },
            [
                Batch { size: 2, first: true },
                Batch {
                    size: 2,
                    first: false,
                },
            ],
        );
        metrics.record(&inspection("weave", 1.0, Verdict::Pass, one));
        metrics.record(&inspection("weave", 5.0, Verdict::Fail, two[0]));
        metrics.record(&inspection("weave", 3.0, Verdict::Fail, two[1]));
        metrics.record(&inspection("felt", 1.9, Verdict::Pass, one));
        for event in [
            RecipeChange::Created,
            RecipeChange::ReferencesAdded {
                added: 5,
                replaced: false,
            },
            RecipeChange::SettingsChanged {
                changed: Vec::new(),
                rebuilt: true,
            },
            RecipeChange::SettingsChanged {
                changed: Vec::new(),
                rebuilt: false,
            },
            RecipeChange::Damaged {
                reason: "broken".into(),
            },
        ] {
            metrics.record(&change(event));
        }
        metrics.failed("loupe.v1.Inspection/Inspect", Code::NotFound);
        metrics.failed("loupe.v1.Inspection/Inspect", Code::NotFound);

        let text = text(&metrics);
        let v = |series: &str| value(&text, series);
        assert_eq!(
            v(r#"loupe_inspections_total{recipe="weave",verdict="pass"}"#),
            1.0
        );
        assert_eq!(
            v(r#"loupe_inspections_total{recipe="weave",verdict="fail"}"#),
            2.0
        );
        assert_eq!(v(r#"loupe_inspections_total{recipe="felt",verdict="pass"}"#), 1.0);
        for stage in STAGES {
            let count = format!(r#"loupe_inspection_stage_seconds_count{{stage="{stage}"}}"#);
            assert_eq!(v(&count), 4.0, "{stage}");
        }
        let model = v(r#"loupe_inspection_stage_seconds_sum{stage="model"}"#);
        assert!((model - 0.08).abs() < 1e-9, "{model}");
        let queue = v(r#"loupe_inspection_stage_seconds_bucket{stage="queue",le="0.001"}"#);
        assert_eq!(queue, 4.0);
        // Scores 1, 5 and 3 over a threshold of 2: 0.5, 2.5 and 1.5.
        assert_eq!(
            v(r#"loupe_normalized_score_bucket{recipe="weave",le="0.5"}"#),
            1.0
        );
        assert_eq!(v(r#"loupe_normalized_score_bucket{recipe="weave",le="1"}"#), 1.0);
        assert_eq!(v(r#"loupe_normalized_score_bucket{recipe="weave",le="2"}"#), 2.0);
        assert_eq!(v(r#"loupe_normalized_score_count{recipe="weave"}"#), 3.0);
        // Three model runs: two of one frame, one of two.
        assert_eq!(v("loupe_batch_size_count"), 3.0);
        assert_eq!(v("loupe_batch_size_sum"), 4.0);
        let busy = v("loupe_engine_busy_seconds_total");
        assert!((busy - 4.0 * 0.030).abs() < 1e-9, "{busy}");
        for (change, count) in [
            ("created", 1.0),
            ("references", 1.0),
            ("settings", 2.0),
            ("deleted", 0.0),
            ("damaged", 1.0),
        ] {
            let series = format!(r#"loupe_recipe_changes_total{{change="{change}"}}"#);
            assert_eq!(v(&series), count, "{change}");
        }
        // AddReferences and the settings change that rebuilt.
        assert_eq!(v(r#"loupe_enrollments_total{outcome="succeeded"}"#), 2.0);
        assert_eq!(
            v(r#"loupe_grpc_failed_calls_total{method="loupe.v1.Inspection/Inspect",code="NOT_FOUND"}"#),
            2.0
        );
        assert!(text.contains("# TYPE loupe_inspection_stage_seconds histogram"));
        assert!(!text.contains("frames_in_flight"), "no core was given");
    }

    #[test]
    fn fixed_labels_are_scraped_at_zero_before_anything_happens() {
        let text = text(&Metrics::new());
        assert!(
            text.contains(r#"loupe_recipe_changes_total{change="deleted"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"loupe_enrollments_total{outcome="succeeded"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"loupe_inspection_stage_seconds_count{stage="total"} 0"#),
            "{text}"
        );
        assert!(!text.contains("loupe_inspections_total{"), "{text}");
    }
}
