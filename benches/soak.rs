//! A bounded soak of the service on loopback (not part of `make test`): 8
//! streams, unary calls and recipe churn for `LOUPE_SOAK_SECS` seconds (600
//! by default). Prints the unexpected errors (target 0), the resident
//! memory after the warm-up (the first tenth) and at the end (target: at
//! most 5 % growth), and the p99 latency of the unary calls.
//!
//! Run: `cargo bench --bench soak` (`LOUPE_SOAK_SECS=60` for a short one).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use loupe::proto::inspection_client::InspectionClient;
use loupe::proto::recipes_client::RecipesClient;
use loupe::proto::{
    AddReferencesRequest, CreateRecipeRequest, DeleteRecipeRequest, InspectRequest, RecipeSettings,
    UpdateRecipeRequest,
};
use loupe::runtime::{Lookup, load};
use support::{Loopback, goods, raw_frame, test_part};
use tonic::transport::Channel;

const STREAMS: usize = 8;
/// Frames a stream keeps in flight, and frames per stream call.
const IN_FLIGHT: usize = 4;
const STREAM_FRAMES: usize = 50;

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn request(recipe: &str, frame: &loupe::proto::Frame, id: String) -> InspectRequest {
    InspectRequest {
        recipe: recipe.to_owned(),
        frame: Some(frame.clone()),
        frame_id: id,
        heatmap: None,
    }
}

async fn enroll(
    recipes: &mut RecipesClient<Channel>,
    name: &str,
    goods: &[loupe::proto::Frame],
) -> Result<(), tonic::Status> {
    recipes
        .create_recipe(CreateRecipeRequest {
            name: name.to_owned(),
            settings: None,
        })
        .await?;
    let messages: Vec<_> = goods
        .iter()
        .map(|frame| AddReferencesRequest {
            recipe: name.to_owned(),
            frame: Some(frame.clone()),
            replace: false,
            name: String::new(),
        })
        .collect();
    recipes
        .add_references(tokio_stream::iter(messages))
        .await
        .map(drop)
}

/// One stream call of `STREAM_FRAMES` frames with `IN_FLIGHT` outstanding;
/// returns the frames judged and the unexpected errors.
async fn stream_once(inspection: &mut InspectionClient<Channel>, frame: &loupe::proto::Frame) -> (u64, u64) {
    let (tx, rx) = tokio::sync::mpsc::channel::<InspectRequest>(1);
    // A frame is sent only while fewer than IN_FLIGHT answers are due.
    let window = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let frame = frame.clone();
    let feeder = tokio::spawn({
        let window = window.clone();
        async move {
            for i in 0..STREAM_FRAMES {
                let Ok(permit) = window.acquire().await else {
                    return;
                };
                permit.forget();
                if tx.send(request("line", &frame, i.to_string())).await.is_err() {
                    return;
                }
            }
        }
    });
    let (mut judged, mut errors) = (0, 0);
    match inspection
        .inspect_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    {
        Ok(answers) => {
            let mut answers = answers.into_inner();
            loop {
                let answer = answers.message().await;
                window.add_permits(1);
                match answer {
                    Ok(Some(answer)) if answer.error.is_none() => judged += 1,
                    Ok(Some(answer)) => {
                        eprintln!("stream frame error: {:?}", answer.error);
                        errors += 1;
                    }
                    Ok(None) => break,
                    Err(status) => {
                        eprintln!("stream failed: {status:?}");
                        errors += 1;
                        break;
                    }
                }
            }
        }
        Err(status) => {
            eprintln!("stream refused: {status:?}");
            errors += 1;
        }
    }
    window.close();
    let _ = feeder.await;
    (judged, errors)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("soak bench: skipped (run it with `cargo bench --bench soak`)");
        return;
    }
    let seconds: u64 = std::env::var("LOUPE_SOAK_SECS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(600);
    let (total, warm_up) = (Duration::from_secs(seconds), Duration::from_secs(seconds / 10));
    let runtime = load(&Lookup::from_process(None)).expect("run `make setup` first");
    let goods: Vec<loupe::proto::Frame> = goods(10).iter().map(|good| raw_frame(good)).collect();
    let test = raw_frame(&test_part());
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio.block_on(async {
        let server = Loopback::start(&runtime, loupe::config::DEFAULT_MAX_BATCH).await;
        let mut recipes = RecipesClient::new(server.channel.clone()).max_encoding_message_size(usize::MAX);
        let inspection = InspectionClient::new(server.channel.clone()).max_encoding_message_size(usize::MAX);
        enroll(&mut recipes, "line", &goods).await.unwrap();

        let started = Instant::now();
        let end = started + total;
        let (judged, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut tasks = Vec::new();
        for _ in 0..STREAMS {
            let (mut client, frame) = (inspection.clone(), test.clone());
            let (judged, errors) = (judged.clone(), errors.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < end {
                    let (ok, bad) = stream_once(&mut client, &frame).await;
                    judged.fetch_add(ok, Ordering::Relaxed);
                    errors.fetch_add(bad, Ordering::Relaxed);
                }
                Vec::new()
            }));
        }
        {
            let (mut client, frame) = (inspection.clone(), test.clone());
            let (judged, errors) = (judged.clone(), errors.clone());
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < end {
                    let call = Instant::now();
                    match client.inspect(request("line", &frame, "unary".into())).await {
                        Ok(_) => {
                            latencies.push(call.elapsed());
                            judged.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(status) => {
                            eprintln!("unary: {status:?}");
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                latencies
            }));
        }
        let churned = Arc::new(AtomicU64::new(0));
        {
            let (mut recipes, goods, errors, churned) = (recipes.clone(), goods[..3].to_vec(), errors.clone(), churned.clone());
            tasks.push(tokio::spawn(async move {
                let mut round = 0;
                while Instant::now() < end {
                    let name = format!("churn-{round}");
                    let outcome = async {
                        enroll(&mut recipes, &name, &goods).await?;
                        let settings = RecipeSettings {
                            sensitivity: 1.5,
                            ..Default::default()
                        };
                        recipes
                            .update_recipe(UpdateRecipeRequest {
                                name: name.clone(),
                                settings: Some(settings),
                                update_mask: None,
                            })
                            .await?;
                        recipes.delete_recipe(DeleteRecipeRequest { name: name.clone() }).await
                    }
                    .await;
                    if let Err(status) = outcome {
                        eprintln!("churn {name}: {status:?}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    churned.fetch_add(1, Ordering::Relaxed);
                    round += 1;
                }
                Vec::new()
            }));
        }
        tokio::time::sleep(warm_up).await;
        let after_warm_up = resident_bytes();
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.unwrap());
        }
        let at_end = resident_bytes();
        server.stop().await;

        latencies.sort();
        let p99 = latencies[((latencies.len() - 1) as f64 * 0.99).round() as usize];
        println!(
            "soak {seconds} s: {} frames judged ({STREAMS} streams of {STREAM_FRAMES} frames, {IN_FLIGHT} in flight, and unary calls), \
             {} recipes created, enrolled, updated and deleted; unexpected errors {} (target 0)",
            judged.load(Ordering::Relaxed),
            churned.load(Ordering::Relaxed),
            errors.load(Ordering::Relaxed)
        );
        println!(
            "resident memory after the warm-up ({} s) {:.1} MiB, at the end {:.1} MiB, growth {:+.1} % (target <= 5 %)",
            warm_up.as_secs(),
            after_warm_up as f64 / 1048576.0,
            at_end as f64 / 1048576.0,
            100.0 * (at_end as f64 / after_warm_up as f64 - 1.0)
        );
        println!(
            "unary Inspect p99 {:.2} ms over {} calls, median {:.2} ms",
            p99.as_secs_f64() * 1e3,
            latencies.len(),
            latencies[latencies.len() / 2].as_secs_f64() * 1e3
        );
    });
}
