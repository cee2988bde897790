//! The service as an integrator sees it, against the engine alone, in one
//! run: a 1024x1024 RGB8 raw frame at the default 256x256 input, `global`.
//! Prints the engine's median latency and the client's median over
//! loopback `Inspect` (target: at most 1.2x), and the engine's
//! single-stream throughput and `InspectStream` throughput with 4 frames in
//! flight (target: at least 1x). Needs the ONNX Runtime set-up.
//!
//! Run: `cargo bench --bench service`.

use std::time::{Duration, Instant};

use loupe::config::{EngineConfig, Limits, ServeConfig};
use loupe::engine::{Engine, Enrollment, InspectOptions, Judge, RecipeSettings};
use loupe::imaging::{DecodeLimits, FrameData, PixelFormat, RawFrame};
use loupe::model::{FeatureModel, ModelSource};
use loupe::proto::inspection_client::InspectionClient;
use loupe::proto::recipes_client::RecipesClient;
use loupe::proto::{self, AddReferencesRequest, CreateRecipeRequest, InspectRequest, RawImage};
use loupe::runtime::{Lookup, load};

const FRAME: usize = 1024;
const GOODS: u64 = 20;
const RUNS: usize = 60;

fn part(seed: u64, shift: f32) -> Vec<u8> {
    let mut state = seed | 1;
    let mut rgb = Vec::with_capacity(FRAME * FRAME * 3);
    for y in 0..FRAME {
        for x in 0..FRAME {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let noise = (state >> 40) as f32 / (1u64 << 24) as f32;
            let (fx, fy) = (x as f32 + shift, y as f32);
            let v = (128.0 + 40.0 * (fx * 0.1).sin() * (fy * 0.11).cos() + 12.0 * (noise - 0.5)) as u8;
            rgb.extend_from_slice(&[v, v / 2, 255 - v]);
        }
    }
    rgb
}

fn raw_frame(rgb: &[u8]) -> proto::Frame {
    proto::Frame {
        image: Some(proto::frame::Image::Raw(RawImage {
            width: FRAME as u32,
            height: FRAME as u32,
            stride: 0,
            pixel_format: proto::PixelFormat::Rgb8 as i32,
            data: rgb.to_vec(),
        })),
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
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

    // The engine alone, in this process.
    let (engine_median, engine_fps) = {
        let model = FeatureModel::load(&runtime, &ModelSource::bundled().unwrap(), 2).unwrap();
        let mut engine = Engine::new(model, DecodeLimits::default());
        let settings = RecipeSettings::default();
        fn frame(rgb: &[u8]) -> FrameData<'_> {
            FrameData::Raw(RawFrame {
                width: FRAME as u32,
                height: FRAME as u32,
                stride: 0,
                format: PixelFormat::Rgb8,
                data: rgb,
            })
        }
        let mut enrollment = Enrollment::new();
        for good in &goods {
            enrollment.add(engine.extract(&settings, frame(good)).unwrap());
        }
        let reference = engine.build_reference(&settings, &enrollment).unwrap();
        let judge = Judge::new(settings, reference, DecodeLimits::default()).unwrap();
        for _ in 0..5 {
            engine
                .inspect(&judge, frame(&test), &InspectOptions::default())
                .unwrap();
        }
        let started = Instant::now();
        let samples: Vec<Duration> = (0..RUNS)
            .map(|_| {
                let t = Instant::now();
                engine
                    .inspect(&judge, frame(&test), &InspectOptions::default())
                    .unwrap();
                t.elapsed()
            })
            .collect();
        (median(samples), RUNS as f64 / started.elapsed().as_secs_f64())
    };

    // The same frame through a real server on loopback.
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (client_median, stream_fps) = tokio.block_on(async {
        let data = tempfile::tempdir().unwrap();
        let config = ServeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: data.path().to_path_buf(),
            engine: EngineConfig {
                onnxruntime: None,
                model: None,
                threads: 2,
            },
            limits: Limits::default(),
            shutdown_grace: Duration::from_secs(5),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(loupe::service::serve(
            config,
            runtime.clone(),
            listener,
            async move {
                let _ = stop_rx.await;
            },
        ));
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .initial_stream_window_size(loupe::service::FLOW_WINDOW)
            .initial_connection_window_size(2 * loupe::service::FLOW_WINDOW)
            .connect()
            .await
            .unwrap();
        let mut recipes = RecipesClient::new(channel.clone()).max_encoding_message_size(usize::MAX);
        let mut inspection = InspectionClient::new(channel).max_encoding_message_size(usize::MAX);
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
            })
            .collect();
        recipes
            .add_references(tokio_stream::iter(messages))
            .await
            .unwrap();
        let request = InspectRequest {
            recipe: "bench".into(),
            frame: Some(raw_frame(&test)),
            frame_id: String::new(),
            heatmap: None,
        };
        for _ in 0..5 {
            inspection.inspect(request.clone()).await.unwrap();
        }
        let mut samples = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            let t = Instant::now();
            inspection.inspect(request.clone()).await.unwrap();
            samples.push(t.elapsed());
        }
        // A stream keeps up to 4 frames in flight: the client sends the next
        // frame only when fewer than 4 answers are outstanding.
        let (tx, rx) = tokio::sync::mpsc::channel::<InspectRequest>(1);
        let started = Instant::now();
        let mut responses = inspection
            .inspect_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let (sent_tx, mut sent_rx) = tokio::sync::mpsc::channel::<()>(4);
        let feeder = tokio::spawn({
            let request = request.clone();
            async move {
                for _ in 0..RUNS {
                    sent_tx.send(()).await.unwrap();
                    tx.send(request.clone()).await.unwrap();
                }
            }
        });
        for _ in 0..RUNS {
            responses.message().await.unwrap().unwrap();
            sent_rx.recv().await.unwrap();
        }
        let stream_fps = RUNS as f64 / started.elapsed().as_secs_f64();
        feeder.await.unwrap();
        let _ = stop_tx.send(());
        drop(responses);
        let _ = server.await;
        (median(samples), stream_fps)
    });

    println!("1024x1024 RGB8 raw frame, 256x256 input, global, default reference size, {RUNS} runs");
    println!(
        "Inspect latency median: engine {:.2} ms, client over loopback {:.2} ms, ratio {:.2} (target <= 1.2)",
        ms(engine_median),
        ms(client_median),
        ms(client_median) / ms(engine_median)
    );
    println!(
        "throughput: engine single stream {engine_fps:.1} frames/s, InspectStream with 4 in flight {stream_fps:.1} frames/s, ratio {:.2} (target >= 1.0)",
        stream_fps / engine_fps
    );
}
