//! The gRPC transport: binds the listener, serves grpc.health.v1 and
//! reflection, and reports SERVING only once the model is loaded and warmed.

use std::future::Future;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::config::ServeConfig;
use crate::model::{FeatureModel, ModelError, ModelSource};
use crate::runtime::Runtime;

/// The model input size the warm-up runs at (the default recipe size).
const WARM_UP_SIZE: usize = 256;

/// Why the service stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The model could not be loaded or warmed up.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not be set up (a bug in the embedded descriptors).
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The model-loading thread died.
    #[error("the model thread stopped unexpectedly: {0}")]
    Worker(String),
}

/// Names of every service whose health is reported: the overall status ("")
/// and each Loupe service.
pub const HEALTH_SERVICES: [&str; 1] = [""];

/// Runs the service on `listener` until `shutdown` completes.
///
/// Health reports NOT_SERVING until the model is loaded and warmed on its
/// own thread, then SERVING. A model that fails to load stops the server
/// with that error.
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

    let (model_failed_tx, model_failed_rx) = tokio::sync::oneshot::channel::<ServeError>();
    let loader = tokio::task::spawn_blocking({
        let engine = config.engine.clone();
        move || -> Result<FeatureModel, ServeError> {
            let source = match &engine.model {
                Some(path) => ModelSource::from_path(path)?,
                None => ModelSource::bundled()?,
            };
            let started = std::time::Instant::now();
            let mut model = FeatureModel::load(&runtime, &source, engine.threads)?;
            model.warm_up(WARM_UP_SIZE, WARM_UP_SIZE)?;
            tracing::info!(
                model = %source.manifest.name,
                origin = %source.origin,
                threads = engine.threads,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "model loaded and warmed up"
            );
            Ok(model)
        }
    });
    let reporter = health_reporter.clone();
    tokio::spawn(async move {
        match loader.await {
            Ok(Ok(_model)) => set_health(&reporter, ServingStatus::Serving).await,
            Ok(Err(error)) => {
                let _ = model_failed_tx.send(error);
            }
            Err(join) => {
                let _ = model_failed_tx.send(ServeError::Worker(join.to_string()));
            }
        }
    });

    let local_addr = listener.local_addr().ok();
    tracing::info!(addr = ?local_addr, "listening for gRPC");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<Option<ServeError>>();
    tokio::spawn(async move {
        let reason = tokio::select! {
            () = shutdown => None,
            Ok(error) = model_failed_rx => Some(error),
        };
        let _ = stop_tx.send(reason);
    });
    let (error_tx, error_rx) = tokio::sync::oneshot::channel::<ServeError>();
    let stop = async move {
        if let Ok(Some(error)) = stop_rx.await {
            let _ = error_tx.send(error);
        }
        set_health(&health_reporter, ServingStatus::NotServing).await;
        tracing::info!("shutting down");
    };

    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop)
        .await?;
    match error_rx.await {
        Ok(error) => Err(error),
        Err(_) => Ok(()),
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
