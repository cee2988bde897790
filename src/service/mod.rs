//! The gRPC transport: binds the listener, serves grpc.health.v1 and
//! reflection, and reports SERVING only once the model is loaded and warmed.

pub mod convert;
mod error;
mod frames;
mod inspection;
mod queue;
mod recipes;
mod registry;
mod worker;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

pub use error::ServiceError;
pub use frames::OwnedFrame;

use crate::config::ServeConfig;
use crate::engine::{Engine, EngineError};
use crate::imaging::DecodeLimits;
use crate::model::{FeatureModel, ModelError, ModelSource};
use crate::proto::inspection_server::InspectionServer;
use crate::proto::recipes_server::RecipesServer;
use crate::runtime::Runtime;
use crate::store::{Store, StoreError};

use inspection::{InspectionService, Inspector};
use recipes::RecipesService;
use registry::Registry;
use worker::Worker;

/// The model input size the warm-up runs at (the default recipe size).
const WARM_UP_SIZE: usize = 256;

/// HTTP/2 flow-control window per stream, bytes: several full frames.
pub const FLOW_WINDOW: u32 = 16 << 20;

/// Largest HTTP/2 DATA frame a client may send: 1 MiB rather than the
/// default 16 KiB cuts a 3 MB camera frame into 3 frames, not 192.
pub const MAX_FRAME: u32 = 1 << 20;

/// Why the service stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The model could not be loaded or warmed up.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The engine could not start.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The data folder cannot be used.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not be set up (a bug in the embedded descriptors).
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The engine thread died while starting.
    #[error("the engine thread stopped unexpectedly")]
    Worker,
}

/// Names whose health is reported: overall ("") and each Loupe service.
pub const HEALTH_SERVICES: [&str; 3] = ["", "loupe.v1.Inspection", "loupe.v1.Recipes"];

/// Runs the service on `listener` until `shutdown` completes.
///
/// Health reports NOT_SERVING until the model is loaded and warmed on the
/// engine thread, then SERVING. A model that fails to load stops the server
/// with that error. After `shutdown`, new calls are refused, calls in flight
/// get `config.shutdown_grace` to finish, and the function returns.
pub async fn serve(
    config: ServeConfig,
    runtime: Runtime,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    set_health(&health_reporter, ServingStatus::NotServing).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let source = match &config.engine.model {
        Some(path) => ModelSource::from_path(path)?,
        None => ModelSource::bundled()?,
    };
    let limits = DecodeLimits {
        max_pixels: config.limits.max_frame_pixels,
    };
    let store = Store::open(&config.data_dir)?;
    let (model_id, size_multiple) = (
        source.manifest.sha256.clone(),
        source.manifest.input.size_multiple,
    );
    let registry = Arc::new(
        tokio::task::spawn_blocking(move || Registry::load(store, limits, size_multiple, &model_id))
            .await
            .map_err(|_| ServeError::Worker)??,
    );

    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let threads = config.engine.threads;
    let worker = Worker::spawn(
        config.limits.max_pending,
        config.max_batch,
        move || {
            let started = std::time::Instant::now();
            let mut model = FeatureModel::load(&runtime, &source, threads)?;
            model.warm_up(WARM_UP_SIZE, WARM_UP_SIZE)?;
            tracing::info!(
                model = %source.manifest.name,
                origin = %source.origin,
                threads,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "model loaded and warmed up"
            );
            Ok(Engine::new(model, limits))
        },
        ready_tx,
    );

    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<ServeError>();
    let reporter = health_reporter.clone();
    tokio::spawn(async move {
        match ready_rx.await {
            Ok(Ok(())) => set_health(&reporter, ServingStatus::Serving).await,
            Ok(Err(error)) => {
                let _ = failed_tx.send(match error {
                    EngineError::Model(model) => ServeError::Model(model),
                    other => ServeError::Engine(other),
                });
            }
            Err(_) => {
                let _ = failed_tx.send(ServeError::Worker);
            }
        }
    });

    let inspector = Arc::new(Inspector::new(
        registry.clone(),
        worker.clone(),
        limits,
        config.limits.max_pending,
    ));
    let max_message = config.limits.max_message_bytes;
    let inspection = InspectionServer::new(InspectionService::new(inspector))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let recipes = RecipesServer::new(RecipesService::new(registry, worker, &config.limits))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);

    tracing::info!(addr = ?listener.local_addr().ok(), data_dir = %config.data_dir.display(), "listening for gRPC");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<Option<ServeError>>();
    tokio::spawn(async move {
        let reason = tokio::select! {
            () = shutdown => None,
            Ok(error) = failed_rx => Some(error),
        };
        let _ = stop_tx.send(reason);
    });
    let (error_tx, error_rx) = tokio::sync::oneshot::channel::<ServeError>();
    let stopping = Arc::new(tokio::sync::Notify::new());
    let stopped = stopping.clone();
    let stop = async move {
        if let Ok(Some(error)) = stop_rx.await {
            let _ = error_tx.send(error);
        }
        set_health(&health_reporter, ServingStatus::NotServing).await;
        tracing::info!("shutting down: no new calls, waiting for calls in flight");
        stopped.notify_one();
    };

    // Small answers must not wait for delayed ACKs: tonic sets TCP_NODELAY
    // only on listeners it binds itself.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    // Frames are megabytes: HTTP/2's default 64 KiB windows would make a
    // 3 MB frame wait for dozens of window updates.
    let server = tonic::transport::Server::builder()
        .initial_stream_window_size(FLOW_WINDOW)
        .initial_connection_window_size(2 * FLOW_WINDOW)
        .max_frame_size(MAX_FRAME)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(inspection)
        .add_service(recipes)
        .serve_with_incoming_shutdown(incoming, stop);
    let grace = config.shutdown_grace;
    tokio::select! {
        result = server => result?,
        () = async { stopping.notified().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace_secs = grace.as_secs(), "calls still in flight after the grace period; stopping anyway");
        }
    }
    match error_rx.await {
        Ok(error) => Err(error),
        Err(_) => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}

async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    for service in HEALTH_SERVICES {
        reporter.set_service_status(service, status).await;
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
