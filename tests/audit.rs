//! The audit trail of a real server: verdicts recorded with their fields,
//! read back through `loupe.v1.Results` (filters, paging, a restart, the
//! frame and overlay of a FAIL), the live stream, a stuck writer that costs
//! records and never an inspection, and `loupe results list`.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{PART_SIZE, TestServer, clients, enroll, raw, request, scratched, texture};
use loupe::audit::{AuditConfig, Stall};
use loupe::proto::results_client::ResultsClient;
use loupe::proto::{self, ImagesState, ListResultsRequest, Verdict};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::transport::Channel;

/// A test server's configuration with the audit trail on: every FAIL's
/// pictures kept, no PASS's.
fn audited(data_dir: &Path, audit: AuditConfig) -> loupe::config::ServeConfig {
    let mut config = common::config(data_dir);
    config.audit = Some(audit);
    config
}

fn no_pass_pictures() -> AuditConfig {
    AuditConfig {
        pass_sample: 0.0,
        ..AuditConfig::default()
    }
}

async fn results_client(server: &TestServer) -> ResultsClient<Channel> {
    ResultsClient::new(server.channel().await).max_decoding_message_size(64 << 20)
}

async fn list(
    client: &mut ResultsClient<Channel>,
    request: ListResultsRequest,
) -> proto::ListResultsResponse {
    client.list_results(request).await.unwrap().into_inner()
}

/// The database's row counts: (results, recipe changes).
fn rows(data_dir: &Path) -> (i64, i64) {
    let db = rusqlite::Connection::open(data_dir.join("audit/audit.db")).unwrap();
    let count = |table: &str| {
        db.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| row.get(0))
            .unwrap()
    };
    (count("results"), count("recipe_changes"))
}

#[tokio::test]
async fn verdicts_are_recorded_and_read_back_after_a_restart_with_the_pictures_of_a_fail() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(audited(data.path(), no_pass_pictures())).await;
    server.wait_serving("loupe.v1.Results").await;
    let (mut recipes, mut inspection) = clients(&server).await;
    let recipe = enroll(&mut recipes, "weave").await;
    let mut answers = Vec::new();
    for (n, rgb) in [
        texture(101, 0.4, 0.2),
        texture(102, 1.3, 0.7),
        scratched(),
        texture(103, 0.1, 1.9),
    ]
    .into_iter()
    .enumerate()
    {
        let answer = inspection
            .inspect(request("weave", raw(rgb), &format!("part-{n}")))
            .await
            .unwrap()
            .into_inner();
        answers.push(answer);
    }
    assert_eq!(
        answers[2].verdict,
        Verdict::Fail as i32,
        "the scratched part fails"
    );
    assert!(
        answers
            .iter()
            .enumerate()
            .all(|(n, a)| n == 2 || a.verdict == Verdict::Pass as i32)
    );
    // A clean stop writes everything queued; the trail outlives the server.
    server.stop().await.unwrap();
    assert_eq!(
        rows(data.path()),
        (4, 2),
        "four verdicts, a creation and an enrollment"
    );

    let server = TestServer::start(audited(data.path(), no_pass_pictures())).await;
    server.wait_serving("loupe.v1.Results").await;
    let mut results = results_client(&server).await;
    let all = list(&mut results, ListResultsRequest::default()).await;
    assert!(all.next_page_token.is_empty());
    let frame_ids: Vec<&str> = all.results.iter().map(|r| r.frame_id.as_str()).collect();
    assert_eq!(
        frame_ids,
        ["part-3", "part-2", "part-1", "part-0"],
        "newest first"
    );
    for (result, answer) in all.results.iter().rev().zip(&answers) {
        assert_eq!(result.recipe, "weave");
        assert_eq!(result.recipe_revision, recipe.revision);
        assert_eq!(result.verdict, answer.verdict);
        assert_eq!(result.score, answer.score);
        assert_eq!(result.threshold, answer.threshold);
        assert_eq!(result.regions, answer.regions);
        let timings = result.timings.unwrap();
        assert_eq!(Some(timings), answer.timings, "the timings the client got");
        assert!(timings.total_us > 0);
        assert!(result.peer.starts_with("127.0.0.1:"), "peer {:?}", result.peer);
        assert!(result.time.is_some());
    }

    let fail = &all.results[1];
    assert_eq!(fail.images, ImagesState::Kept as i32);
    assert!(!fail.regions.is_empty());
    let got = results
        .get_result(proto::GetResultRequest { id: fail.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.result.as_ref(), Some(fail));
    let frame = image::load_from_memory(&got.frame_png).unwrap().into_rgb8();
    assert_eq!(frame.dimensions(), (PART_SIZE as u32, PART_SIZE as u32));
    assert_eq!(frame.into_raw(), scratched(), "the frame is kept losslessly");
    let overlay = image::load_from_memory(&got.overlay_png).unwrap().into_rgb8();
    assert_eq!(overlay.dimensions(), (PART_SIZE as u32, PART_SIZE as u32));

    let pass = &all.results[0];
    assert_eq!(pass.images, ImagesState::NotSampled as i32);
    let got = results
        .get_result(proto::GetResultRequest { id: pass.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(got.frame_png.is_empty() && got.overlay_png.is_empty());
    let missing = results
        .get_result(proto::GetResultRequest { id: "0-0".into() })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");

    // Filters: verdict, recipe, time range [start, end).
    let fails = list(
        &mut results,
        ListResultsRequest {
            verdict: Verdict::Fail as i32,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        fails.results.iter().map(|r| &r.frame_id).collect::<Vec<_>>(),
        ["part-2"]
    );
    let other = list(
        &mut results,
        ListResultsRequest {
            recipe: "other".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(other.results.is_empty());
    let (start, end) = (all.results[2].time, all.results[1].time);
    let window = list(
        &mut results,
        ListResultsRequest {
            start_time: start,
            end_time: end,
            ..Default::default()
        },
    )
    .await;
    assert!(
        window.results.iter().any(|r| r.frame_id == "part-1"),
        "{window:?}"
    );
    assert!(
        window
            .results
            .iter()
            .all(|r| r.frame_id != "part-2" && r.frame_id != "part-3")
    );

    // Pages of 3: the same results in the same order, then no token.
    let first = list(
        &mut results,
        ListResultsRequest {
            page_size: 3,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(first.results.len(), 3);
    assert!(!first.next_page_token.is_empty());
    let second = list(
        &mut results,
        ListResultsRequest {
            page_size: 3,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        },
    )
    .await;
    assert!(second.next_page_token.is_empty());
    let paged: Vec<_> = first.results.iter().chain(&second.results).cloned().collect();
    assert_eq!(paged, all.results);
    let mismatched = results
        .list_results(ListResultsRequest {
            recipe: "weave".into(),
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(mismatched.code(), Code::InvalidArgument);
    assert!(mismatched.message().contains("other filters"), "{mismatched:?}");
    let negative = results
        .list_results(ListResultsRequest {
            page_size: -1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(negative.code(), Code::InvalidArgument);

    // The recipe's changes, with the client that made them.
    let db = rusqlite::Connection::open(data.path().join("audit/audit.db")).unwrap();
    let mut statement = db
        .prepare("SELECT recipe, change, peer FROM recipe_changes ORDER BY id")
        .unwrap();
    let changes: Vec<(String, String, Option<String>)> = statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(
        (changes[0].0.as_str(), changes[0].1.as_str()),
        ("weave", "created")
    );
    assert_eq!(changes[1].1, "references: 5 good frames added");
    assert!(
        changes
            .iter()
            .all(|c| c.2.as_deref().is_some_and(|p| p.starts_with("127.0.0.1:")))
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn watch_results_streams_each_new_result_of_its_recipe() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(audited(data.path(), AuditConfig::default())).await;
    server.wait_serving("loupe.v1.Results").await;
    let (mut recipes, mut inspection) = clients(&server).await;
    enroll(&mut recipes, "weave").await;
    let mut results = results_client(&server).await;
    let mut others = results
        .watch_results(proto::WatchResultsRequest {
            recipe: "other".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut stream = results
        .watch_results(proto::WatchResultsRequest {
            recipe: "weave".into(),
        })
        .await
        .unwrap()
        .into_inner();
    for n in 0..2 {
        inspection
            .inspect(request("weave", raw(scratched()), &format!("live-{n}")))
            .await
            .unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("a result within 30 s")
            .unwrap()
            .unwrap();
        assert_eq!(seen.frame_id, format!("live-{n}"));
        assert_eq!(seen.verdict, Verdict::Fail as i32);
        assert_eq!(seen.images, ImagesState::Kept as i32);
    }
    let nothing = tokio::time::timeout(Duration::from_millis(200), others.message()).await;
    assert!(nothing.is_err(), "a stream for another recipe got {nothing:?}");
    server.stop().await.unwrap();
}

/// A plain HTTP/1.1 GET of the metrics.
async fn scrape(addr: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let ask = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(ask.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer.split_once("\r\n\r\n").unwrap().1.to_owned()
}

fn value(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

#[tokio::test]
async fn a_stuck_audit_writer_costs_records_never_inspection_time() {
    let data = tempfile::tempdir().unwrap();
    let gate = Stall::closed();
    let audit = AuditConfig {
        queue: 2,
        pass_sample: 0.0,
        stall: Some(Arc::clone(&gate)),
        ..AuditConfig::default()
    };
    let server = TestServer::start_with_metrics(audited(data.path(), audit)).await;
    let metrics = server.metrics.unwrap();
    server.wait_serving("loupe.v1.Inspection").await;
    let (mut recipes, mut inspection) = clients(&server).await;
    enroll(&mut recipes, "weave").await;
    let mut timed = async |count: usize, seed: u64| {
        let mut times = Vec::new();
        for n in 0..count {
            let started = Instant::now();
            let call = inspection.inspect(request("weave", raw(texture(seed + n as u64, 0.3, 0.6)), "t"));
            tokio::time::timeout(Duration::from_secs(30), call)
                .await
                .expect("an inspection is never held up by the audit writer")
                .unwrap();
            times.push(started.elapsed());
        }
        times
    };
    // The writer is stuck on its first event; the queue fills, then drops.
    let stuck = timed(20, 300).await;
    let dropped = value(&scrape(metrics).await, "loupe_audit_records_dropped_total");
    assert!(
        dropped >= 5,
        "only {dropped} of 22 events dropped with a queue of 2"
    );
    assert_eq!(
        value(&scrape(metrics).await, "loupe_audit_writes_failed_total"),
        0
    );

    gate.open();
    let free = timed(20, 400).await;
    let (stuck, free) = (median(stuck), median(free));
    assert!(
        stuck <= free * 2 + Duration::from_millis(20),
        "median inspection {stuck:?} with the writer stuck, {free:?} with it free"
    );
    let dropped = value(&scrape(metrics).await, "loupe_audit_records_dropped_total");
    server.stop().await.unwrap();
    // Every event is either recorded or counted as dropped.
    let (results, changes) = rows(data.path());
    assert_eq!(
        results + changes + dropped as i64,
        42,
        "{results} results, {changes} changes, {dropped} dropped"
    );
}

#[tokio::test]
async fn results_list_prints_the_recorded_verdicts() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(audited(data.path(), no_pass_pictures())).await;
    server.wait_serving("loupe.v1.Results").await;
    let (mut recipes, mut inspection) = clients(&server).await;
    enroll(&mut recipes, "weave").await;
    // The writer records off the inspection path: its stream says when.
    let mut recorded = results_client(&server)
        .await
        .watch_results(proto::WatchResultsRequest::default())
        .await
        .unwrap()
        .into_inner();
    for (rgb, id) in [(texture(150, 0.2, 0.2), "good-part"), (scratched(), "bad-part")] {
        inspection.inspect(request("weave", raw(rgb), id)).await.unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(30), recorded.message()).await;
        assert_eq!(seen.unwrap().unwrap().unwrap().frame_id, id);
    }
    let address = server.addr.to_string();
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_loupe"))
                .args(&args)
                .env_remove("LOUPE_SERVER")
                .output()
                .unwrap()
        })
    };
    let arguments = |list: &[&str]| list.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
    let output = run(arguments(&[
        "results",
        "list",
        "--server",
        &address,
        "--verdict",
        "fail",
        "--json",
    ]))
    .await
    .unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(lines[0]["frame_id"], "bad-part");
    assert_eq!(lines[0]["verdict"], "VERDICT_FAIL");
    assert_eq!(lines[0]["images"], "IMAGES_STATE_KEPT");
    let id = lines[0]["id"].as_str().unwrap().to_owned();

    let output = run(arguments(&[
        "results", "list", "--server", &address, "--limit", "1",
    ]))
    .await
    .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("FAIL") && text.contains("bad-part"), "{text}");

    let saved = tempfile::tempdir().unwrap();
    let folder = saved.path().to_str().unwrap();
    let output = run(arguments(&[
        "results",
        "show",
        &id,
        "--server",
        &address,
        "--save-images",
        folder,
    ]))
    .await
    .unwrap();
    assert!(output.status.success(), "{output:?}");
    for kind in ["frame", "overlay"] {
        let png = std::fs::read(saved.path().join(format!("{id}.{kind}.png"))).unwrap();
        assert!(image::load_from_memory(&png).is_ok(), "{kind}");
    }
    server.stop().await.unwrap();
}
