//! Prometheus metrics of a real server: known inspections, a known failed
//! call and a recipe's changes, scraped over plain HTTP from the metrics
//! listener, counted exactly.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{TestServer, clients, enroll, http_get as get, raw, request, scratched, texture};
use loupe::proto;

/// The value of the sample `series` (its name and labels as scraped).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

/// Scrapes until the subscriber has counted `inspections` frames (it
/// reads the events on a task of its own), for at most 30 s.
async fn scrape_after(addr: SocketAddr, inspections: f64) -> String {
    let started = Instant::now();
    loop {
        let (status, head, text) = get(addr, "/metrics").await;
        assert_eq!(status, 200, "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        let counted: f64 = text
            .lines()
            .filter(|line| line.starts_with("loupe_inspections_total{"))
            .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum();
        if counted >= inspections {
            return text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{counted} of {inspections} inspections counted after 30 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_scrape_counts_inspections_verdicts_stages_changes_and_failed_calls_exactly() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start_with_metrics(common::config(data.path())).await;
    let metrics = server.metrics.unwrap();
    server.wait_serving("loupe.v1.Inspection").await;
    let (mut recipes, mut inspection) = clients(&server).await;
    enroll(&mut recipes, "weave").await;

    // Good and scratched parts, one at a time: five model runs of one frame.
    let mut verdicts = Vec::new();
    for i in 0..5 {
        let rgb = if i % 2 == 0 {
            texture(300 + i, 0.4, 0.2)
        } else {
            scratched()
        };
        let answer = inspection
            .inspect(request("weave", raw(rgb), &format!("frame-{i}")))
            .await
            .unwrap()
            .into_inner();
        verdicts.push(answer.verdict);
    }
    let passed = verdicts
        .iter()
        .filter(|v| **v == proto::Verdict::Pass as i32)
        .count() as f64;
    let failed = verdicts
        .iter()
        .filter(|v| **v == proto::Verdict::Fail as i32)
        .count() as f64;
    assert_eq!(
        (passed, failed),
        (3.0, 2.0),
        "good parts pass and scratched ones fail"
    );

    let missing = inspection
        .inspect(request("missing", raw(texture(1, 0.0, 0.0)), "lost"))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    let text = scrape_after(metrics, 5.0).await;
    let v = |series: &str| value(&text, series);
    assert_eq!(
        v(r#"loupe_inspections_total{recipe="weave",verdict="pass"}"#),
        passed
    );
    assert_eq!(
        v(r#"loupe_inspections_total{recipe="weave",verdict="fail"}"#),
        failed
    );
    for stage in loupe::metrics::STAGES {
        let count = format!(r#"loupe_inspection_stage_seconds_count{{stage="{stage}"}}"#);
        assert_eq!(v(&count), 5.0, "{stage}");
    }
    // A frame passes when its score is at most the threshold.
    assert_eq!(v(r#"loupe_normalized_score_count{recipe="weave"}"#), 5.0);
    assert_eq!(
        v(r#"loupe_normalized_score_bucket{recipe="weave",le="1"}"#),
        passed
    );
    assert_eq!(v("loupe_batch_size_count"), 5.0);
    assert_eq!(v("loupe_batch_size_sum"), 5.0);
    let busy = v("loupe_engine_busy_seconds_total");
    let total = v(r#"loupe_inspection_stage_seconds_sum{stage="total"}"#);
    assert!(busy > 0.0 && busy <= total, "engine {busy} s of {total} s in all");
    for (change, count) in [
        ("created", 1.0),
        ("references", 1.0),
        ("settings", 0.0),
        ("deleted", 0.0),
        ("damaged", 0.0),
    ] {
        let series = format!(r#"loupe_recipe_changes_total{{change="{change}"}}"#);
        assert_eq!(v(&series), count, "{change}");
    }
    assert_eq!(v(r#"loupe_enrollments_total{outcome="succeeded"}"#), 1.0);
    // The one failed call, and no other (the health watch the test
    // dropped ended without a status).
    let failures: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with("loupe_grpc_failed_calls_total{"))
        .collect();
    assert_eq!(
        failures,
        [r#"loupe_grpc_failed_calls_total{method="loupe.v1.Inspection/Inspect",code="NOT_FOUND"} 1"#]
    );
    assert_eq!(v("loupe_frames_in_flight"), 0.0);
    assert_eq!(v("loupe_events_dropped_total"), 0.0);

    let (status, _, _) = get(metrics, "/").await;
    assert_eq!(status, 404);
    let (status, _, _) = get(metrics, "/metrics/more").await;
    assert_eq!(status, 404);
    server.stop().await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(metrics).await.is_err(),
        "the metrics listener outlived the server"
    );
}
