//! Starts a real `loupe serve` in-process on 127.0.0.1:0 for integration
//! tests, with a shutdown channel the test controls.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;

use loupe::config::{EngineConfig, Limits, ServeConfig};
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

/// A configuration for a test server keeping its data in `data_dir`.
pub fn config(data_dir: &Path) -> ServeConfig {
    ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_path_buf(),
        engine: EngineConfig {
            onnxruntime: None,
            model: None,
            threads: 2,
        },
        limits: Limits::default(),
        shutdown_grace: std::time::Duration::from_secs(5),
    }
}

/// A running server; dropping it without [`TestServer::stop`] aborts it.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), loupe::service::ServeError>>>,
}

impl TestServer {
    /// Binds 127.0.0.1:0 and serves `config` until stopped.
    pub async fn start(config: ServeConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(loupe::service::serve(config, runtime(), listener, async move {
            let _ = stop_rx.await;
        }));
        Self {
            addr,
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
        let mut health = HealthClient::new(self.channel().await);
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

    /// Waits for the server to stop by itself (at most `limit`).
    pub async fn join(mut self, limit: std::time::Duration) -> Result<(), loupe::service::ServeError> {
        let task = self.task.take().unwrap();
        tokio::time::timeout(limit, task)
            .await
            .expect("the server did not stop by itself")
            .unwrap()
    }

    /// Stops the server through its shutdown channel and waits for it.
    pub async fn stop(mut self) -> Result<(), loupe::service::ServeError> {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
