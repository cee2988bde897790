//! Starts a real `loupe serve` in-process on 127.0.0.1:0 for integration
//! tests, with a shutdown channel the test controls.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;

use loupe::config::{EngineConfig, Limits, ServeConfig};
use loupe::grpc::client::{self, Connection};
use loupe::model::{self, Device, FeatureExtractor, ModelConfig};
use loupe::proto::inspection_client::InspectionClient;
use loupe::proto::recipes_client::RecipesClient;
use loupe::proto::{
    self, AddReferencesRequest, CreateRecipeRequest, Frame, InspectRequest, PixelFormat, RawImage,
};
use loupe::runtime::{self, Lookup, Runtime};
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The ONNX Runtime, loaded once per test process.
pub fn runtime() -> Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| runtime::load(&Lookup::from_process(None)).expect("run `make setup` first"))
        .clone()
}

/// The bundled model with `threads` threads, loaded as `serve` loads it.
pub fn bundled_model(threads: usize) -> Box<dyn FeatureExtractor> {
    let config = ModelConfig {
        path: None,
        threads,
        device: Device::Cpu,
    };
    model::load(&runtime(), &config).unwrap().extractor
}

/// A configuration for a test server keeping its data in `data_dir`.
pub fn config(data_dir: &Path) -> ServeConfig {
    ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: None,
        console_listen: None,
        data_dir: data_dir.to_path_buf(),
        engine: EngineConfig {
            onnxruntime: None,
            model: ModelConfig {
                path: None,
                threads: 2,
                device: Device::Cpu,
            },
        },
        limits: Limits::default(),
        max_batch: loupe::config::DEFAULT_MAX_BATCH,
        shutdown_grace: std::time::Duration::from_secs(5),
        security: Default::default(),
        audit: None,
    }
}

/// A plain HTTP/1.1 GET: the status code, the headers and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let ask = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(ask.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

/// The front ends a test server opens besides gRPC, each on 127.0.0.1:0.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fronts {
    pub metrics: bool,
    pub console: bool,
}

/// A running server; dropping it without [`TestServer::stop`] aborts it.
pub struct TestServer {
    pub addr: SocketAddr,
    /// Where its metrics are served, when asked for.
    pub metrics: Option<SocketAddr>,
    /// Where its console is served, when asked for.
    pub console: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), loupe::serve::ServeError>>>,
}

impl TestServer {
    /// Binds 127.0.0.1:0 and serves `config` until stopped.
    pub async fn start(config: ServeConfig) -> Self {
        Self::start_with_events(config, loupe::server::Events::new()).await
    }

    /// [`TestServer::start`], publishing the core's events on `events`.
    pub async fn start_with_events(config: ServeConfig, events: loupe::server::Events) -> Self {
        Self::start_with_listeners(config, events, false).await
    }

    /// [`TestServer::start`] with Prometheus metrics on 127.0.0.1:0 too.
    pub async fn start_with_metrics(config: ServeConfig) -> Self {
        Self::start_with_listeners(config, loupe::server::Events::new(), true).await
    }

    /// [`TestServer::start`] publishing on `events`, with metrics on
    /// 127.0.0.1:0 when `metrics`.
    pub async fn start_with_listeners(
        config: ServeConfig,
        events: loupe::server::Events,
        metrics: bool,
    ) -> Self {
        let fronts = Fronts {
            metrics,
            console: false,
        };
        Self::start_with_fronts(config, events, fronts).await
    }

    /// [`TestServer::start`] publishing on `events`, with the `fronts`.
    pub async fn start_with_fronts(
        config: ServeConfig,
        events: loupe::server::Events,
        fronts: Fronts,
    ) -> Self {
        let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
        let listener = bind().await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (metrics, console) = (
            if fronts.metrics {
                Some(bind().await.unwrap())
            } else {
                None
            },
            if fronts.console {
                Some(bind().await.unwrap())
            } else {
                None
            },
        );
        let metrics_addr = metrics.as_ref().map(|listener| listener.local_addr().unwrap());
        let console_addr = console.as_ref().map(|listener| listener.local_addr().unwrap());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let listeners = loupe::serve::Listeners {
            grpc: listener,
            metrics,
            console,
        };
        let task = tokio::spawn(loupe::serve::serve_with_listeners(
            config,
            runtime(),
            listeners,
            events,
            async move {
                let _ = stop_rx.await;
            },
        ));
        Self {
            addr,
            metrics: metrics_addr,
            console: console_addr,
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    /// A connected channel.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Waits, through the health Watch stream, until `service` is SERVING.
    pub async fn wait_serving(&self, service: &str) {
        wait_serving_on(client::authorized(self.channel().await, None), service).await;
    }

    /// Waits for the server to stop by itself (at most `limit`).
    pub async fn join(mut self, limit: std::time::Duration) -> Result<(), loupe::serve::ServeError> {
        let task = self.task.take().unwrap();
        tokio::time::timeout(limit, task)
            .await
            .expect("the server did not stop by itself")
            .unwrap()
    }

    /// Stops the server through its shutdown channel and waits for it.
    pub async fn stop(mut self) -> Result<(), loupe::serve::ServeError> {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap()
    }
}

/// Waits, through the health Watch stream on `connection` (a TLS one, say),
/// until `service` is SERVING.
pub async fn wait_serving_on(connection: Connection, service: &str) {
    let mut health = HealthClient::new(connection);
    let mut stream = health
        .watch(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(status) = stream.message().await.unwrap() {
        if status.status == ServingStatus::Serving as i32 {
            return;
        }
    }
    panic!("health stream ended before SERVING");
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Side of the generated test parts, in pixels.
pub const PART_SIZE: usize = 256;

/// A woven texture (RGB8, `PART_SIZE` square), shifted by (dx, dy) pixels,
/// with deterministic sensor noise.
pub fn texture(seed: u64, dx: f32, dy: f32) -> Vec<u8> {
    let mut state = seed | 1;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let mut rgb = Vec::with_capacity(PART_SIZE * PART_SIZE * 3);
    for y in 0..PART_SIZE {
        for x in 0..PART_SIZE {
            let (fx, fy) = (x as f32 + dx, y as f32 + dy);
            let v = 128.0
                + 40.0 * (fx * 0.39).sin() * (fy * 0.41).cos()
                + 20.0 * ((fx + fy) * 0.13).sin()
                + 12.0 * (noise() - 0.5);
            let v = v.clamp(0.0, 255.0) as u8;
            rgb.extend_from_slice(&[v, v.saturating_sub(10), v.saturating_add(10)]);
        }
    }
    rgb
}

/// Draws a dark scratch 3 px wide from (x0, y0), `len` px right and
/// `len / 2` down.
pub fn scratch(rgb: &mut [u8], x0: usize, y0: usize, len: usize) {
    for t in 0..len {
        for w in 0..3 {
            let (x, y) = (x0 + t, y0 + t / 2 + w);
            let i = (y * PART_SIZE + x) * 3;
            rgb[i..i + 3].copy_from_slice(&[20, 20, 20]);
        }
    }
}

/// A raw RGB8 frame of a generated part.
pub fn raw(rgb: Vec<u8>) -> Frame {
    Frame {
        image: Some(proto::frame::Image::Raw(RawImage {
            width: PART_SIZE as u32,
            height: PART_SIZE as u32,
            stride: 0,
            pixel_format: PixelFormat::Rgb8 as i32,
            data: rgb.into(),
        })),
    }
}

pub fn request(recipe: &str, frame: Frame, frame_id: &str) -> InspectRequest {
    InspectRequest {
        recipe: recipe.to_owned(),
        frame: Some(frame),
        frame_id: frame_id.to_owned(),
        heatmap: None,
    }
}

pub async fn clients(server: &TestServer) -> (RecipesClient<Channel>, InspectionClient<Channel>) {
    let channel = server.channel().await;
    (
        RecipesClient::new(channel.clone()).max_encoding_message_size(64 << 20),
        InspectionClient::new(channel).max_encoding_message_size(64 << 20),
    )
}

/// Creates recipe `name` over gRPC and enrolls five good textures in two messages
/// per frame style (recipe named only in the first).
pub async fn enroll(recipes: &mut RecipesClient<Channel>, name: &str) -> proto::Recipe {
    recipes
        .create_recipe(CreateRecipeRequest {
            name: name.to_owned(),
            settings: None,
        })
        .await
        .unwrap();
    let messages: Vec<AddReferencesRequest> = (0..5)
        .map(|i| AddReferencesRequest {
            recipe: if i == 0 { name.to_owned() } else { String::new() },
            frame: Some(raw(texture(i + 1, i as f32 * 1.7, i as f32 * 0.9))),
            replace: false,
            name: String::new(),
        })
        .collect();
    recipes
        .add_references(tokio_stream::iter(messages))
        .await
        .unwrap()
        .into_inner()
}

pub fn scratched() -> Vec<u8> {
    let mut rgb = texture(200, 0.5, 0.5);
    scratch(&mut rgb, 90, 120, 60);
    rgb
}
