//! The service as an integrator sees it, against the engine alone, in one
//! run: a 1024x1024 RGB8 raw frame at the default 256x256 input, `global`.
//! Prints the engine's median latency and the client's median over
//! loopback `Inspect` (target: at most 1.2x), and the engine's
//! single-stream throughput and `InspectStream` throughput with 4 frames in
//! flight (target: at least 1x), with batching on (the default) and off.
//! The sides are measured in alternating rounds so that a slow moment of
//! the machine does not fall on one side only. Needs the ONNX Runtime
//! set-up.
//!
//! Run: `cargo bench --bench service`.

mod support;

use std::time::{Duration, Instant};

use loupe::config::{DEFAULT_MAX_BATCH, EngineConfig, Limits, ServeConfig};
use loupe::engine::{Engine, Enrollment, InspectOptions, Judge, RecipeSettings};
use loupe::imaging::DecodeLimits;
use loupe::model::{self, Device, ModelConfig};
use loupe::proto::inspection_client::InspectionClient;
use loupe::proto::recipes_client::RecipesClient;
use loupe::proto::{self, AddReferencesRequest, CreateRecipeRequest, InspectRequest, RawImage};
use loupe::runtime::{Lookup, Runtime, load};
use support::{FRAME, frame, part};
use tonic::transport::Channel;

const GOODS: u64 = 20;
/// Frames per side per round.
const RUNS: usize = 100;
const ROUNDS: usize = 3;
/// Frames a stream keeps in flight.
const IN_FLIGHT: usize = 4;

fn raw_frame(rgb: &[u8]) -> proto::Frame {
    proto::Frame {
        image: Some(proto::frame::Image::Raw(RawImage {
            width: FRAME as u32,
            height: FRAME as u32,
            stride: 0,
            pixel_format: proto::PixelFormat::Rgb8 as i32,
            data: rgb.to_vec().into(),
        })),
    }
}

fn median<T: PartialOrd + Copy>(mut samples: Vec<T>) -> T {
    samples.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    samples[samples.len() / 2]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// The engine alone, in this process, judging the test frame.
struct Direct {
    engine: Engine,
    judge: Judge,
}

impl Direct {
    fn new(runtime: &Runtime, goods: &[Vec<u8>]) -> Self {
        let model = model::load(runtime, &bundled_model()).unwrap().extractor;
        let mut engine = Engine::new(model, DecodeLimits::default());
        let settings = RecipeSettings::default();
        let mut enrollment = Enrollment::new();
        for good in goods {
            enrollment.add(engine.extract(&settings, frame(good)).unwrap());
        }
        let reference = engine.build_reference(&settings, &enrollment).unwrap();
        let judge = Judge::new(settings, reference, DecodeLimits::default()).unwrap();
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

/// The bundled model on 2 threads, on the CPU.
fn bundled_model() -> ModelConfig {
    ModelConfig {
        path: None,
        threads: 2,
        device: Device::Cpu,
    }
}

/// A server on loopback with a recipe taught the good frames.
struct Served {
    inspection: InspectionClient<Channel>,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), loupe::serve::ServeError>>,
    _data: tempfile::TempDir,
}

impl Served {
    async fn start(runtime: &Runtime, goods: &[Vec<u8>], max_batch: usize) -> Self {
        let data = tempfile::tempdir().unwrap();
        let config = ServeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: data.path().to_path_buf(),
            engine: EngineConfig {
                onnxruntime: None,
                model: bundled_model(),
            },
            limits: Limits::default(),
            max_batch,
            shutdown_grace: Duration::from_secs(5),
            security: Default::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(loupe::serve::serve(
            config,
            runtime.clone(),
            listener,
            async move {
                let _ = stopped.await;
            },
        ));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .initial_stream_window_size(loupe::grpc::FLOW_WINDOW)
            .initial_connection_window_size(2 * loupe::grpc::FLOW_WINDOW)
            .connect()
            .await
            .unwrap();
        let mut recipes = RecipesClient::new(channel.clone()).max_encoding_message_size(usize::MAX);
        let inspection = InspectionClient::new(channel).max_encoding_message_size(usize::MAX);
        recipes
            .create_recipe(CreateRecipeRequest {
                name: "bench".into(),
                settings: None,
            })
            .await
            .unwrap();
        let messages: Vec<AddReferencesRequest> = goods
            .iter()
            .enumerate()
            .map(|(i, good)| AddReferencesRequest {
                recipe: if i == 0 { "bench".into() } else { String::new() },
                frame: Some(raw_frame(good)),
                replace: false,
                name: String::new(),
            })
            .collect();
        recipes
            .add_references(tokio_stream::iter(messages))
            .await
            .unwrap();
        Self {
            inspection,
            stop,
            server,
            _data: data,
        }
    }

    /// Client-side latency of `runs` unary calls.
    async fn unary(&mut self, request: &InspectRequest, runs: usize) -> Vec<Duration> {
        let mut samples = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t = Instant::now();
            self.inspection.inspect(request.clone()).await.unwrap();
            samples.push(t.elapsed());
        }
        samples
    }

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

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
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
    let goods: Vec<Vec<u8>> = (0..GOODS).map(|i| part(i + 1, i as f32 * 0.7)).collect();
    let test = part(99, 0.3);
    let request = InspectRequest {
        recipe: "bench".into(),
        frame: Some(raw_frame(&test)),
        frame_id: String::new(),
        heatmap: None,
    };

    let mut direct = Direct::new(&runtime, &goods);
    direct.run(&test, 5);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut batched, mut unbatched) = tokio.block_on(async {
        let batched = Served::start(&runtime, &goods, DEFAULT_MAX_BATCH).await;
        let unbatched = Served::start(&runtime, &goods, 1).await;
        (batched, unbatched)
    });
    tokio.block_on(async {
        batched.unary(&request, 5).await;
        unbatched.unary(&request, 5).await;
    });

    let (mut engine_latency, mut client_latency) = (Vec::new(), Vec::new());
    let (mut engine_fps, mut stream_fps, mut unbatched_fps) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (latency, fps) = direct.run(&test, RUNS);
        engine_latency.extend(latency);
        engine_fps.push(fps);
        tokio.block_on(async {
            client_latency.extend(batched.unary(&request, RUNS).await);
            stream_fps.push(batched.stream(&request, RUNS).await);
            unbatched_fps.push(unbatched.stream(&request, RUNS).await);
        });
    }
    tokio.block_on(async {
        batched.stop().await;
        unbatched.stop().await;
    });

    let (engine_median, client_median) = (median(engine_latency), median(client_latency));
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
}
