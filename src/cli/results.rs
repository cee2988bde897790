//! `loupe results list|show|watch`: the audit trail through the Results
//! service.

use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context, Result};

use super::status;
use crate::audit::{MAX_PAGE_SIZE, unix_ms};
use crate::config::{ClientConfig, ResultsAction, VerdictArg};
use crate::grpc::client;
use crate::proto;
use crate::proto::results::timestamp;
use crate::proto::results_client::ResultsClient;

fn verdict_name(value: i32) -> &'static str {
    match proto::Verdict::try_from(value) {
        Ok(proto::Verdict::Pass) => "PASS",
        Ok(proto::Verdict::Fail) => "FAIL",
        Ok(proto::Verdict::Unspecified) | Err(_) => "?",
    }
}

fn images_name(value: i32) -> &'static str {
    proto::ImagesState::try_from(value).map_or("IMAGES_STATE_UNSPECIFIED", |state| state.as_str_name())
}

/// The time as RFC 3339 in UTC, at millisecond precision.
fn rfc3339(time: Option<&prost_types::Timestamp>) -> String {
    let Some(time) = time else {
        return String::new();
    };
    let days = time.seconds.div_euclid(86_400);
    let seconds = time.seconds.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        seconds / 3600,
        seconds % 3600 / 60,
        seconds % 60,
        time.nanos / 1_000_000
    )
}

fn print_line(result: &proto::InspectionResult) {
    let total_ms = result
        .timings
        .as_ref()
        .map_or(0.0, |t| t.total_us as f64 / 1000.0);
    println!(
        "{}  {}  {}  rev {}  {}  score {:.4} / {:.4}  {} region(s)  {total_ms:.1} ms  frame {:?}  images {}",
        result.id,
        rfc3339(result.time.as_ref()),
        result.recipe,
        result.recipe_revision,
        verdict_name(result.verdict),
        result.score,
        result.threshold,
        result.regions.len(),
        result.frame_id,
        images_name(result.images)
            .trim_start_matches("IMAGES_STATE_")
            .to_ascii_lowercase(),
    );
}

/// A result as JSON, by the proto's field names.
fn result_json(result: &proto::InspectionResult) -> serde_json::Value {
    let regions: Vec<serde_json::Value> = result
        .regions
        .iter()
        .map(|r| {
            serde_json::json!({
                "x": r.x, "y": r.y, "width": r.width, "height": r.height, "area": r.area,
                "max_score": r.max_score, "mean_score": r.mean_score,
            })
        })
        .collect();
    let timings = result.timings.unwrap_or_default();
    serde_json::json!({
        "id": result.id,
        "time": rfc3339(result.time.as_ref()),
        "recipe": result.recipe,
        "recipe_revision": result.recipe_revision,
        "frame_id": result.frame_id,
        "verdict": proto::Verdict::try_from(result.verdict).map_or("VERDICT_UNSPECIFIED", |v| v.as_str_name()),
        "score": result.score,
        "threshold": result.threshold,
        "regions": regions,
        "timings": {
            "decode_us": timings.decode_us, "queue_us": timings.queue_us,
            "preprocess_us": timings.preprocess_us, "inference_us": timings.inference_us,
            "postprocess_us": timings.postprocess_us, "total_us": timings.total_us,
        },
        "peer": result.peer,
        "images": images_name(result.images),
    })
}

/// Runs a `loupe results` action on the server `server` resolves to.
pub async fn results(server: &ClientConfig, action: ResultsAction) -> Result<()> {
    let mut client = ResultsClient::new(client::connect(server).await?).max_decoding_message_size(usize::MAX);
    match action {
        ResultsAction::List {
            recipe,
            verdict,
            since,
            limit,
            json,
        } => {
            let start_time = since
                .map(|ago| {
                    SystemTime::now()
                        .checked_sub(ago)
                        .unwrap_or(SystemTime::UNIX_EPOCH)
                })
                .map(|at| timestamp(unix_ms(at)));
            let verdict = match verdict {
                None => proto::Verdict::Unspecified,
                Some(VerdictArg::Pass) => proto::Verdict::Pass,
                Some(VerdictArg::Fail) => proto::Verdict::Fail,
            };
            let mut request = proto::ListResultsRequest {
                recipe: recipe.unwrap_or_default(),
                verdict: verdict as i32,
                start_time,
                end_time: None,
                page_size: 0,
                page_token: String::new(),
            };
            let mut left = limit;
            while left > 0 {
                request.page_size = i32::try_from(left.min(MAX_PAGE_SIZE)).unwrap_or(1000);
                let page = client
                    .list_results(request.clone())
                    .await
                    .map_err(status)?
                    .into_inner();
                for result in page.results.iter().take(left) {
                    if json {
                        println!("{}", result_json(result));
                    } else {
                        print_line(result);
                    }
                }
                left = left.saturating_sub(page.results.len());
                if page.next_page_token.is_empty() {
                    break;
                }
                request.page_token = page.next_page_token;
            }
        }
        ResultsAction::Show {
            id,
            save_images,
            json,
        } => {
            let answer = client
                .get_result(proto::GetResultRequest { id: id.clone() })
                .await
                .map_err(status)?
                .into_inner();
            let result = answer.result.unwrap_or_default();
            if json {
                println!("{}", result_json(&result));
            } else {
                print_line(&result);
                for r in &result.regions {
                    println!(
                        "    region x {} y {} {}x{} area {} max {:.4} mean {:.4}",
                        r.x, r.y, r.width, r.height, r.area, r.max_score, r.mean_score
                    );
                }
                if !result.peer.is_empty() {
                    println!("    client {}", result.peer);
                }
            }
            if let Some(dir) = save_images {
                save(&dir, &id, "frame", &answer.frame_png)?;
                save(&dir, &id, "overlay", &answer.overlay_png)?;
            }
        }
        ResultsAction::Watch { recipe, json } => {
            let mut stream = client
                .watch_results(proto::WatchResultsRequest {
                    recipe: recipe.unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner();
            while let Some(result) = stream.message().await.map_err(status)? {
                if json {
                    println!("{}", result_json(&result));
                } else {
                    print_line(&result);
                }
            }
        }
    }
    Ok(())
}

/// Writes `DIR/ID.KIND.png`, saying on stderr when the server kept none.
fn save(dir: &Path, id: &str, kind: &str, png: &[u8]) -> Result<()> {
    if png.is_empty() {
        eprintln!("loupe: the server kept no {kind} for {id}");
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(format!("{id}.{kind}.png"));
    std::fs::write(&path, png).with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_rfc3339_utc() {
        let at = prost_types::Timestamp {
            seconds: 1_764_763_200,
            nanos: 123_000_000,
        };
        assert_eq!(rfc3339(Some(&at)), "2025-12-03T12:00:00.123Z");
        let epoch = prost_types::Timestamp::default();
        assert_eq!(rfc3339(Some(&epoch)), "1970-01-01T00:00:00.000Z");
    }
}
