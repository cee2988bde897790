//! What the benches share: deterministic inputs (no `rand` dependency), the
//! 1024x1024 RGB8 test parts, the bundled model's configuration, a taught
//! engine, medians, and a server on loopback taught a recipe. Each bench
//! uses part of it.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use loupe::engine::{Engine, Enrollment, Judge, RecipeSettings};
use loupe::imaging::{DecodeLimits, FrameData, PixelFormat, RawFrame};
use loupe::model::{Device, ModelConfig};
use loupe::proto::inspection_client::InspectionClient;
use loupe::proto::recipes_client::RecipesClient;
use loupe::proto::{AddReferencesRequest, CreateRecipeRequest, InspectRequest};
use tonic::transport::Channel;

/// Side of the test frames.
pub const FRAME: usize = 1024;

/// Uniform values in [0, 1), from xorshift64.
pub fn uniform(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

/// A textured 1024 x 1024 RGB8 part, shifted by `shift` pixels.
pub fn part(seed: u64, shift: f32) -> Vec<u8> {
    let noise = uniform(FRAME * FRAME, seed);
    let mut rgb = Vec::with_capacity(FRAME * FRAME * 3);
    for y in 0..FRAME {
        for x in 0..FRAME {
            let (fx, fy) = (x as f32 + shift, y as f32);
            let v = 128.0 + 40.0 * (fx * 0.1).sin() * (fy * 0.11).cos() + 12.0 * (noise[y * FRAME + x] - 0.5);
            let v = v as u8;
            rgb.extend_from_slice(&[v, v / 2, 255 - v]);
        }
    }
    rgb
}

/// `count` good parts, each shifted 0.7 pixel further than the one before.
pub fn goods(count: u64) -> Vec<Vec<u8>> {
    (0..count).map(|i| part(i + 1, i as f32 * 0.7)).collect()
}

/// The part the benches judge: a texture of its own, shifted 0.3 pixel.
pub fn test_part() -> Vec<u8> {
    part(99, 0.3)
}

/// A raw RGB8 part as the engine takes it.
pub fn frame(rgb: &[u8]) -> FrameData<'_> {
    FrameData::Raw(RawFrame {
        width: FRAME as u32,
        height: FRAME as u32,
        stride: 0,
        format: PixelFormat::Rgb8,
        data: rgb,
    })
}

/// A `loupe serve` on 127.0.0.1:0 in this process, with a fresh data
/// folder, stopped by [`Loopback::stop`].
pub struct Loopback {
    /// A connected channel with the server's flow-control windows.
    pub channel: tonic::transport::Channel,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), loupe::serve::ServeError>>,
    /// The scrapes and the console page of an operated server.
    operator: Option<tokio::task::JoinHandle<()>>,
    _data: tempfile::TempDir,
}

/// What the people running a line do while it runs: Prometheus scrapes
/// `/metrics` every second and a console page reads the live feed.
async fn operate(metrics: std::net::SocketAddr, console: std::net::SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let page = tokio::spawn(async move {
        let mut feed = tokio::net::TcpStream::connect(console).await.unwrap();
        let ask = format!("GET /api/feed HTTP/1.1\r\nHost: {console}\r\nAccept: text/event-stream\r\n\r\n");
        feed.write_all(ask.as_bytes()).await.unwrap();
        let mut buffer = vec![0u8; 64 << 10];
        while feed.read(&mut buffer).await.is_ok_and(|read| read > 0) {}
    });
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        every.tick().await;
        let Ok(mut scrape) = tokio::net::TcpStream::connect(metrics).await else {
            break;
        };
        let ask = format!("GET /metrics HTTP/1.1\r\nHost: {metrics}\r\nConnection: close\r\n\r\n");
        if scrape.write_all(ask.as_bytes()).await.is_err() {
            break;
        }
        let mut text = Vec::new();
        let _ = scrape.read_to_end(&mut text).await;
    }
    page.abort();
}

impl Loopback {
    /// Starts the server with the bundled model on 2 threads and `max_batch`,
    /// with no metrics, audit trail or console.
    pub async fn start(runtime: &loupe::runtime::Runtime, max_batch: usize) -> Self {
        Self::start_with(runtime, max_batch, false).await
    }

    /// [`Loopback::start`], and with `operated` as a line runs it: metrics,
    /// the audit trail (default sample) and the console on, a scrape of
    /// `/metrics` every second and a page reading the console's live feed.
    pub async fn start_with(runtime: &loupe::runtime::Runtime, max_batch: usize, operated: bool) -> Self {
        let data = tempfile::tempdir().unwrap();
        let config = loupe::config::ServeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: None,
            console_listen: None,
            data_dir: data.path().to_path_buf(),
            engine: loupe::config::EngineConfig {
                onnxruntime: None,
                model: bundled_model(),
            },
            limits: loupe::config::Limits::default(),
            max_batch,
            shutdown_grace: std::time::Duration::from_secs(5),
            security: Default::default(),
            audit: operated.then(loupe::audit::AuditConfig::default),
        };
        let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
        let listener = bind().await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (metrics, console) = if operated {
            (Some(bind().await.unwrap()), Some(bind().await.unwrap()))
        } else {
            (None, None)
        };
        let operator = match (&metrics, &console) {
            (Some(metrics), Some(console)) => Some(tokio::spawn(operate(
                metrics.local_addr().unwrap(),
                console.local_addr().unwrap(),
            ))),
            _ => None,
        };
        let listeners = loupe::serve::Listeners {
            grpc: listener,
            metrics,
            console,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(loupe::serve::serve_with_listeners(
            config,
            runtime.clone(),
            listeners,
            loupe::server::Events::new(),
            async move {
                let _ = stopped.await;
            },
        ));
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .initial_stream_window_size(loupe::grpc::FLOW_WINDOW)
            .initial_connection_window_size(2 * loupe::grpc::FLOW_WINDOW)
            .connect()
            .await
            .unwrap();
        Self {
            channel,
            stop,
            server,
            operator,
            _data: data,
        }
    }

    /// Stops the server and waits for it.
    pub async fn stop(self) {
        if let Some(operator) = &self.operator {
            operator.abort();
        }
        let _ = self.stop.send(());
        let _ = self.server.await;
    }
}

/// A server on loopback and its clients, with recipes taught good frames
/// ([`Served::teach`]).
pub struct Served {
    /// A client of the Inspection service.
    pub inspection: InspectionClient<Channel>,
    /// A client of the Recipes service.
    pub recipes: RecipesClient<Channel>,
    /// The server.
    pub server: Loopback,
}

impl Served {
    /// [`Loopback::start`] with recipe "bench" taught `goods`.
    pub async fn start(runtime: &loupe::runtime::Runtime, goods: &[Vec<u8>], max_batch: usize) -> Self {
        Self::start_with(runtime, goods, max_batch, false).await
    }

    /// [`Served::start`], operated ([`Loopback::start_with`]) or bare.
    pub async fn start_with(
        runtime: &loupe::runtime::Runtime,
        goods: &[Vec<u8>],
        max_batch: usize,
        operated: bool,
    ) -> Self {
        let mut served = Self::bare(runtime, max_batch, operated).await;
        served.teach("bench", None, goods).await;
        served
    }

    /// [`Loopback::start_with`] and its clients, with no recipe yet.
    pub async fn bare(runtime: &loupe::runtime::Runtime, max_batch: usize, operated: bool) -> Self {
        let server = Loopback::start_with(runtime, max_batch, operated).await;
        let recipes = RecipesClient::new(server.channel.clone()).max_encoding_message_size(usize::MAX);
        let inspection = InspectionClient::new(server.channel.clone()).max_encoding_message_size(usize::MAX);
        Self {
            inspection,
            recipes,
            server,
        }
    }

    /// Creates recipe `name` with `settings` (`None`: the defaults) and
    /// teaches it `goods`, as raw frames in one `AddReferences` stream.
    pub async fn teach(
        &mut self,
        name: &str,
        settings: Option<loupe::proto::RecipeSettings>,
        goods: &[Vec<u8>],
    ) {
        self.recipes
            .create_recipe(CreateRecipeRequest {
                name: name.into(),
                settings,
            })
            .await
            .unwrap();
        let messages: Vec<AddReferencesRequest> = goods
            .iter()
            .enumerate()
            .map(|(i, good)| AddReferencesRequest {
                recipe: if i == 0 { name.into() } else { String::new() },
                frame: Some(raw_frame(good)),
                replace: false,
                name: String::new(),
            })
            .collect();
        self.recipes
            .add_references(tokio_stream::iter(messages))
            .await
            .unwrap();
    }

    /// Client-side latency of `runs` unary calls.
    pub async fn unary(&mut self, request: &InspectRequest, runs: usize) -> Vec<Duration> {
        let mut samples = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t = Instant::now();
            self.inspection.inspect(request.clone()).await.unwrap();
            samples.push(t.elapsed());
        }
        samples
    }

    /// Stops the server and waits for it.
    pub async fn stop(self) {
        self.server.stop().await;
    }
}

/// A unary `Inspect` request for `rgb` (a raw 1024 x 1024 frame) against
/// `recipe`, without a heatmap.
pub fn inspect_request(recipe: &str, rgb: &[u8]) -> InspectRequest {
    InspectRequest {
        recipe: recipe.into(),
        frame: Some(raw_frame(rgb)),
        frame_id: String::new(),
        heatmap: None,
    }
}

/// The bundled model on 2 threads, on the CPU.
pub fn bundled_model() -> ModelConfig {
    ModelConfig {
        path: None,
        threads: 2,
        device: Device::Cpu,
    }
}

/// Teaches `engine` the `goods` with `settings`: each extracted, the
/// reference built and calibrated; returns the judge of that reference.
pub fn taught(engine: &mut Engine, settings: &RecipeSettings, goods: &[Vec<u8>]) -> Judge {
    let mut enrollment = Enrollment::new();
    for good in goods {
        enrollment.add(engine.extract(settings, frame(good)).unwrap());
    }
    let reference = engine.build_reference(settings, &enrollment).unwrap();
    Judge::new(settings.clone(), reference, DecodeLimits::default()).unwrap()
}

/// The middle of `samples` (the upper one of an even count).
pub fn median<T: PartialOrd + Copy>(mut samples: Vec<T>) -> T {
    samples.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    samples[samples.len() / 2]
}

/// Milliseconds.
pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// A raw 1024 x 1024 RGB8 frame message.
pub fn raw_frame(rgb: &[u8]) -> loupe::proto::Frame {
    loupe::proto::Frame {
        image: Some(loupe::proto::frame::Image::Raw(loupe::proto::RawImage {
            width: FRAME as u32,
            height: FRAME as u32,
            stride: 0,
            pixel_format: loupe::proto::PixelFormat::Rgb8 as i32,
            data: rgb.to_vec().into(),
        })),
    }
}

/// Feature-like rows (`channels` per row): ReLU of 48 latent factors with
/// decaying scales mixed into the channels, around 40 centres, plus a
/// little noise; rows made with the same `seed` share the mixing and the
/// centres, `draw` picks which rows. The search bench's stand-in for real
/// patch features (uniform values have no structure to project).
pub fn clustered(rows: usize, channels: usize, seed: u64, draw: u64) -> Vec<f32> {
    const LATENT: usize = 48;
    const CLUSTERS: usize = 40;
    let gaussian = |n: usize, seed: u64| -> Vec<f32> {
        uniform(4 * n, seed)
            .chunks_exact(4)
            .map(|u| (u.iter().sum::<f32>() - 2.0) * 3f32.sqrt())
            .collect()
    };
    let mixing = gaussian(LATENT * channels, seed);
    let centres = gaussian(CLUSTERS * LATENT, seed + 1);
    let picks = uniform(rows, seed + 2 + draw);
    let spread = gaussian(rows * LATENT, seed + 3 + draw);
    let noise = gaussian(rows * channels, seed + 4 + draw);
    let mut out = vec![0.0; rows * channels];
    for r in 0..rows {
        let cluster = ((picks[r] * CLUSTERS as f32) as usize).min(CLUSTERS - 1);
        let row = &mut out[r * channels..][..channels];
        for l in 0..LATENT {
            let scale = 1.0 / (1.0 + l as f32 / 4.0);
            let factor = scale * (centres[cluster * LATENT + l] + 0.35 * spread[r * LATENT + l]);
            for (v, m) in row.iter_mut().zip(&mixing[l * channels..][..channels]) {
                *v += factor * m;
            }
        }
        for (v, n) in row.iter_mut().zip(&noise[r * channels..][..channels]) {
            *v = v.max(0.0) + 0.05 * n;
        }
    }
    out
}

/// Row-major rows (`channels` each) as the model writes them: planar.
pub fn planar(rows: &[f32], channels: usize) -> Vec<f32> {
    let count = rows.len() / channels;
    (0..channels)
        .flat_map(|c| (0..count).map(move |p| rows[p * channels + c]))
        .collect()
}
