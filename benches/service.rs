//! The service as an integrator sees it, against the engine alone, in one
//! run: a 1024x1024 RGB8 raw frame at the default 256x256 input, `global`.
//! Prints the engine's median latency and the client's median over
//! loopback `Inspect` (target: at most 1.2x), and the engine's
//! single-stream throughput and `InspectStream` throughput with 4 frames in
//! flight (target: at least 1x), with batching on (the default) and off,
//! and the same server operated as a line runs it (metrics scraped every
//! second, the audit trail recording, a console page reading the live
//! feed) against it bare: `Inspect` median within 3 %, `InspectStream`
//! throughput within 5 %.
//! The sides are measured in alternating rounds so that a slow moment of
//! the machine does not fall on one side only. Last, the p99 latency of
//! `Inspect` calls while another recipe enrolls 700 good frames, against
//! the same calls idle (target: at most 3x). Needs the ONNX Runtime set-up.
//!
//! Run: `cargo bench --bench service`.

mod support;

use std::time::{Duration, Instant};

use loupe::config::DEFAULT_MAX_BATCH;
use loupe::engine::{Engine, InspectOptions, Judge, RecipeSettings};
use loupe::imaging::DecodeLimits;
use loupe::model;
use loupe::proto::{self, AddReferencesRequest, CreateRecipeRequest, InspectRequest};
use loupe::runtime::{Lookup, Runtime, load};
use support::{FRAME, Served, bundled_model, frame, goods, inspect_request, median, ms, taught, test_part};

const GOODS: u64 = 20;
/// Frames per side per round.
const RUNS: usize = 100;
const ROUNDS: usize = 3;
/// Frames a stream keeps in flight.
const IN_FLIGHT: usize = 4;

/// The engine alone, in this process, judging the test frame.
struct Direct {
    engine: Engine,
    judge: Judge,
}

impl Direct {
    fn new(runtime: &Runtime, goods: &[Vec<u8>]) -> Self {
        let model = model::load(runtime, &bundled_model()).unwrap().extractor;
        let mut engine = Engine::new(model, DecodeLimits::default());
        let judge = taught(&mut engine, &RecipeSettings::default(), goods);
        Self { engine, judge }
    }

    /// Latency of each run, and frames per second over all of them.
    fn run(&mut self, test: &[u8], runs: usize) -> (Vec<Duration>, f64) {
        let started = Instant::now();
        let samples = (0..runs)
            .map(|_| {
                let t = Instant::now();
                self.engine
                    .inspect(&self.judge, frame(test), &InspectOptions::default())
                    .unwrap();
                t.elapsed()
            })
            .collect();
        (samples, runs as f64 / started.elapsed().as_secs_f64())
    }
}

/// Good frames of the enrollment that runs beside inspections.
const ENROLLED: usize = 700;

fn percentile(mut samples: Vec<Duration>, share: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * share).round() as usize]
}

/// What the service bench asks of the server beyond [`Served::unary`].
impl Served {
    /// Frames per second through one stream that keeps `IN_FLIGHT` frames
    /// outstanding: the client sends the next frame only when fewer answers
    /// are due.
    async fn stream(&mut self, request: &InspectRequest, runs: usize) -> f64 {
        let (tx, rx) = tokio::sync::mpsc::channel::<InspectRequest>(1);
        let started = Instant::now();
        let mut responses = self
            .inspection
            .inspect_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let (sent_tx, mut sent_rx) = tokio::sync::mpsc::channel::<()>(IN_FLIGHT);
        let feeder = tokio::spawn({
            let request = request.clone();
            async move {
                for _ in 0..runs {
                    sent_tx.send(()).await.unwrap();
                    tx.send(request.clone()).await.unwrap();
                }
            }
        });
        for _ in 0..runs {
            let response = responses.message().await.unwrap().unwrap();
            assert!(response.error.is_none(), "{:?}", response.error);
            sent_rx.recv().await.unwrap();
        }
        let fps = runs as f64 / started.elapsed().as_secs_f64();
        feeder.await.unwrap();
        fps
    }

    /// `Inspect` latencies while recipe "other" enrolls `frames`, and the
    /// enrollment's duration.
    async fn beside_enrollment(
        &mut self,
        request: &InspectRequest,
        frames: Vec<proto::Frame>,
    ) -> (Vec<Duration>, Duration) {
        self.recipes
            .create_recipe(CreateRecipeRequest {
                name: "other".into(),
                settings: None,
            })
            .await
            .unwrap();
        let messages: Vec<AddReferencesRequest> = frames
            .into_iter()
            .map(|frame| AddReferencesRequest {
                recipe: "other".into(),
                frame: Some(frame),
                replace: false,
                name: String::new(),
            })
            .collect();
        let mut recipes = self.recipes.clone();
        let started = Instant::now();
        let enrollment =
            tokio::spawn(async move { recipes.add_references(tokio_stream::iter(messages)).await });
        let mut samples = Vec::new();
        while !enrollment.is_finished() {
            samples.extend(self.unary(request, 1).await);
        }
        enrollment.await.unwrap().unwrap();
        (samples, started.elapsed())
    }
}

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`:
    // the measurement only makes sense in an optimised `cargo bench` build.
    if !std::env::args().any(|a| a == "--bench") {
        println!("service bench: skipped (run it with `cargo bench --bench service`)");
        return;
    }
    let runtime = load(&Lookup::from_process(None)).expect("run `make setup` first");
    let goods = goods(GOODS);
    let test = test_part();
    let request = inspect_request("bench", &test);

    let mut direct = Direct::new(&runtime, &goods);
    direct.run(&test, 5);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut batched, mut unbatched, mut operated) = tokio.block_on(async {
        let batched = Served::start(&runtime, &goods, DEFAULT_MAX_BATCH).await;
        let unbatched = Served::start(&runtime, &goods, 1).await;
        let operated = Served::start_with(&runtime, &goods, DEFAULT_MAX_BATCH, true).await;
        (batched, unbatched, operated)
    });
    tokio.block_on(async {
        batched.unary(&request, 5).await;
        unbatched.unary(&request, 5).await;
        operated.unary(&request, 5).await;
    });

    let (mut engine_latency, mut client_latency) = (Vec::new(), Vec::new());
    let (mut engine_fps, mut stream_fps, mut unbatched_fps) = (Vec::new(), Vec::new(), Vec::new());
    let (mut operated_latency, mut operated_fps) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (latency, fps) = direct.run(&test, RUNS);
        engine_latency.extend(latency);
        engine_fps.push(fps);
        tokio.block_on(async {
            client_latency.extend(batched.unary(&request, RUNS).await);
            stream_fps.push(batched.stream(&request, RUNS).await);
            unbatched_fps.push(unbatched.stream(&request, RUNS).await);
            operated_latency.extend(operated.unary(&request, RUNS).await);
            operated_fps.push(operated.stream(&request, RUNS).await);
        });
    }
    // The enrollment's frames as JPEG files, as a camera's would come.
    let enrolled: Vec<proto::Frame> = goods
        .iter()
        .map(|good| {
            let image = image::RgbImage::from_raw(FRAME as u32, FRAME as u32, good.clone()).unwrap();
            let mut jpeg = Vec::new();
            image::DynamicImage::ImageRgb8(image)
                .write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
                .unwrap();
            proto::Frame {
                image: Some(proto::frame::Image::Encoded(jpeg.into())),
            }
        })
        .cycle()
        .take(ENROLLED)
        .collect();
    let (idle, during, enrollment) = tokio.block_on(async {
        let idle = batched.unary(&request, 3 * RUNS).await;
        let (during, took) = batched.beside_enrollment(&request, enrolled).await;
        batched.stop().await;
        unbatched.stop().await;
        operated.stop().await;
        (idle, during, took)
    });

    let (engine_median, client_median) = (median(engine_latency), median(client_latency));
    let (operated_median, operated_fps) = (median(operated_latency), median(operated_fps));
    let (engine_fps, stream_fps, unbatched_fps) =
        (median(engine_fps), median(stream_fps), median(unbatched_fps));
    println!(
        "1024x1024 RGB8 raw frame, 256x256 input, global, default reference size; \
         {ROUNDS} alternating rounds of {RUNS} frames a side, medians"
    );
    println!(
        "Inspect latency median: engine {:.2} ms, client over loopback {:.2} ms, ratio {:.2} (target <= 1.2)",
        ms(engine_median),
        ms(client_median),
        ms(client_median) / ms(engine_median)
    );
    println!(
        "throughput: engine single stream {engine_fps:.1} frames/s, InspectStream with {IN_FLIGHT} in flight \
         {stream_fps:.1} frames/s, ratio {:.2} (target >= 1.0)",
        stream_fps / engine_fps
    );
    println!(
        "InspectStream with {IN_FLIGHT} in flight and batching off (--max-batch 1): {unbatched_fps:.1} frames/s, \
         ratio {:.2}",
        unbatched_fps / engine_fps
    );
    println!(
        "operated (metrics scraped every second, audit trail on, a console page on the live feed) against bare: \
         Inspect median {:.2} ms against {:.2} ms, ratio {:.3} (target <= 1.03); InspectStream {operated_fps:.1} \
         against {stream_fps:.1} frames/s, ratio {:.3} (target >= 0.95)",
        ms(operated_median),
        ms(client_median),
        ms(operated_median) / ms(client_median),
        operated_fps / stream_fps
    );
    let (idle_p99, during_p99) = (percentile(idle, 0.99), percentile(during.clone(), 0.99));
    println!(
        "Inspect p99 while another recipe enrolls {ENROLLED} 1024x1024 JPEG frames ({:.1} s, {} calls): {:.2} ms, \
         idle {:.2} ms, ratio {:.2} (target <= 3); median during {:.2} ms",
        enrollment.as_secs_f64(),
        during.len(),
        ms(during_p99),
        ms(idle_p99),
        ms(during_p99) / ms(idle_p99),
        ms(median(during))
    );
}
