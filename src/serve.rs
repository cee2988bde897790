//! `loupe serve`: the server core with its front ends. Builds the event bus,
//! starts the core (recipes from the data folder, the model on the engine
//! thread), and serves it over gRPC until shutdown. The other front ends
//! (the metrics listener, the web console) and the subscribers to the
//! core's events (the metrics, the audit trail, the console's feed) are
//! attached here.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::audit::{Audit, AuditError};
use crate::config::ServeConfig;
use crate::console::ConsoleError;
use crate::engine::EngineError;
use crate::grpc::{self, GrpcError};
use crate::imaging::DecodeLimits;
use crate::metrics::{Metrics, MetricsError};
use crate::model::ModelError;
use crate::runtime::Runtime;
use crate::server::{Events, ReferenceLimits, Server, ServerConfig, StartError, Starting, SubscribeOptions};

/// Why `loupe serve` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The model could not be read, loaded or warmed up.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The engine could not start.
    #[error(transparent)]
    Engine(EngineError),
    /// The core could not start (the data folder, a start-up task).
    #[error(transparent)]
    Start(StartError),
    /// The gRPC transport failed.
    #[error(transparent)]
    Grpc(#[from] GrpcError),
    /// The metrics listener could not start.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// The audit trail could not be opened.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The console listener could not start.
    #[error(transparent)]
    Console(#[from] ConsoleError),
    /// The engine thread died while starting.
    #[error("the engine thread stopped unexpectedly")]
    Worker,
    /// The engine thread panicked while serving.
    #[error("the engine thread panicked ({0}); the server stopped so that its supervisor restarts it")]
    EngineDied(String),
}

impl From<StartError> for ServeError {
    fn from(error: StartError) -> Self {
        match error {
            StartError::Model(error) => Self::Model(error),
            other => Self::Start(other),
        }
    }
}

impl From<EngineError> for ServeError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::Model(error) => Self::Model(error),
            other => Self::Engine(other),
        }
    }
}

/// The core's configuration from `loupe serve`'s.
pub fn server_config(config: &ServeConfig) -> ServerConfig {
    ServerConfig {
        data_dir: config.data_dir.clone(),
        model: config.engine.model.clone(),
        decode: DecodeLimits {
            max_pixels: config.limits.max_frame_pixels,
            max_bytes: config.limits.max_frame_bytes,
        },
        decode_budget: config.limits.max_decode_bytes,
        max_response_bytes: config.limits.max_message_bytes,
        max_pending: config.limits.max_pending,
        max_batch: config.max_batch,
        references: ReferenceLimits {
            call_frames: config.limits.max_references,
            call_bytes: config.limits.max_reference_bytes,
            recipe_frames: config.limits.max_recipe_frames,
            recipe_bytes: config.limits.max_recipe_bytes,
            enrollment_bytes: config.limits.max_enrollment_bytes,
        },
    }
}

/// Runs the service on `listener` until `shutdown` completes, with the
/// Prometheus metrics on `config.metrics_listen` and the web console on
/// `config.console_listen` when they are set.
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
    serve_with_events(config, runtime, listener, Events::new(), shutdown).await
}

/// [`serve`], publishing the core's events on `events`, which the caller
/// may have subscribed to (start-up events included).
pub async fn serve_with_events(
    config: ServeConfig,
    runtime: Runtime,
    listener: TcpListener,
    events: Events,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let metrics = match config.metrics_listen {
        Some(addr) => Some(crate::metrics::bind(addr).await?),
        None => None,
    };
    let console = match config.console_listen {
        Some(addr) => Some(crate::console::bind(addr).await?),
        None => None,
    };
    let listeners = Listeners {
        grpc: listener,
        metrics,
        console,
    };
    serve_with_listeners(config, runtime, listeners, events, shutdown).await
}

/// The sockets `loupe serve` answers on, bound by the caller.
#[derive(Debug)]
pub struct Listeners {
    /// gRPC.
    pub grpc: TcpListener,
    /// Prometheus metrics; `None` serves none (whatever
    /// `--metrics-listen` said).
    pub metrics: Option<TcpListener>,
    /// The web console; `None` serves none.
    pub console: Option<TcpListener>,
}

/// [`serve_with_events`] on sockets the caller bound.
pub async fn serve_with_listeners(
    config: ServeConfig,
    runtime: Runtime,
    listeners: Listeners,
    events: Events,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let transport = grpc::Transport::new(&config.security)?;
    // Subscribed before the core starts, so that recipes found damaged at
    // start-up are counted and logged.
    let journal = crate::logging::journal::spawn(&events);
    let metrics = listeners.metrics.map(|listener| {
        (
            Metrics::new(),
            events.subscribe(SubscribeOptions::default()),
            listener,
        )
    });
    // The audit trail's subscription too, so that recipe changes at
    // start-up are recorded; the trail itself is opened once the core holds
    // the data folder (its start-up clean-up must never run beside another
    // server's writer).
    let audit_subscription = config.audit.as_ref().map(|audit| {
        events.subscribe(SubscribeOptions {
            capacity: audit.queue,
            images: true,
            pass_images_every: audit.pass_images_every(),
        })
    });
    // The console's counts start with the core.
    let console = listeners
        .console
        .map(|listener| (events.subscribe(SubscribeOptions::default()), listener));
    let starting = Server::start(server_config(&config), runtime, events).await?;
    let (audit, audit_writer) = match (&config.audit, audit_subscription) {
        (Some(audit), Some(subscription)) => {
            let (reader, writer) = Audit::start(audit.clone(), &config.data_dir, subscription).await?;
            tracing::info!(
                folder = %crate::audit::folder(&config.data_dir).display(),
                retain_days = audit.retain.as_secs() / 86_400,
                retain_bytes = audit.retain_bytes,
                "recording the audit trail"
            );
            (Some(reader), Some(writer))
        }
        _ => (None, None),
    };
    let (failed_calls, mut attached) = match metrics {
        Some((metrics, subscription, listener)) => {
            let addr = listener
                .local_addr()
                .map_or_else(|_| "an unknown address".to_owned(), |addr| addr.to_string());
            tracing::info!(%addr, "serving metrics on GET /metrics");
            let mut registry = metrics.registry(Some(starting.server.clone()));
            if let Some(audit) = &audit {
                crate::metrics::register_audit(&mut registry, audit.clone());
            }
            let registry = Arc::new(registry);
            let listening = tokio::spawn(async move {
                if let Err(error) = crate::metrics::serve(registry, listener, std::future::pending()).await {
                    tracing::error!(%error, "the metrics listener stopped");
                }
            });
            let tasks = [metrics.spawn_subscriber(subscription), listening];
            let calls: Arc<dyn grpc::calls::FailedCalls> = Arc::new(metrics);
            (Some(calls), Attached(tasks.into()))
        }
        None => (None, Attached(Vec::new())),
    };
    attached.0.push(journal);
    if let Some((subscription, listener)) = console {
        let addr = listener
            .local_addr()
            .map_or_else(|_| "an unknown address".to_owned(), |addr| addr.to_string());
        tracing::info!(%addr, "serving the console on http://{addr}/");
        attached.0.extend(crate::console::spawn(
            starting.server.clone(),
            audit.clone(),
            subscription,
            listener,
        ));
    }
    let outcome = serve_core(
        config,
        starting,
        audit,
        transport,
        listeners.grpc,
        failed_calls,
        shutdown,
    )
    .await;
    attached.stop().await;
    // After the last call: what the writer still holds is written.
    if let Some(writer) = audit_writer {
        writer.stop().await;
    }
    outcome
}

/// Tasks that end with the server: aborted when dropped too, so that a
/// server future dropped half-way leaves none behind.
struct Attached(Vec<tokio::task::JoinHandle<()>>);

impl Attached {
    /// Aborts the tasks and waits until they are gone: the metrics listener
    /// holds the core, which must be closed when `serve` returns, so that a
    /// new server may open the same data folder at once.
    async fn stop(mut self) {
        for task in std::mem::take(&mut self.0) {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// The gRPC transport over a starting core, until `shutdown`.
async fn serve_core(
    config: ServeConfig,
    starting: Starting,
    audit: Option<Audit>,
    transport: grpc::Transport,
    listener: TcpListener,
    failed_calls: Option<Arc<dyn grpc::calls::FailedCalls>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let Starting { server, ready, died } = starting;
    let (serving_tx, serving_rx) = tokio::sync::oneshot::channel::<()>();
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<ServeError>();
    tokio::spawn(async move {
        match ready.await {
            Ok(Ok(())) => {
                let _ = serving_tx.send(());
                // Health turns NOT_SERVING and the server stops with an
                // error if the engine dies.
                if let Ok(cause) = died.await {
                    let _ = failed_tx.send(ServeError::EngineDied(cause));
                }
            }
            Ok(Err(error)) => {
                let _ = failed_tx.send(error.into());
            }
            Err(_) => {
                let _ = failed_tx.send(ServeError::Worker);
            }
        }
    });
    let serving = async move {
        if serving_rx.await.is_err() {
            std::future::pending::<()>().await;
        }
    };

    let security = &config.security;
    let addr = listener
        .local_addr()
        .map_or_else(|_| "an unknown address".to_owned(), |addr| addr.to_string());
    tracing::info!(
        %addr,
        data_dir = %config.data_dir.display(),
        tls = security.tls.is_some(),
        client_certificates = security.tls.as_ref().is_some_and(|tls| tls.client_ca.is_some()),
        tokens = security.tokens.as_ref().map_or(0, |tokens| tokens.len()),
        "listening for gRPC"
    );
    for warning in config.exposure_warnings() {
        tracing::warn!("{warning}");
    }
    let (error_tx, error_rx) = tokio::sync::oneshot::channel::<ServeError>();
    let stopping = std::sync::Arc::new(tokio::sync::Notify::new());
    let stopped = stopping.clone();
    let stop = async move {
        let reason = tokio::select! {
            () = shutdown => None,
            Ok(error) = failed_rx => Some(error),
        };
        if let Some(error) = reason {
            let _ = error_tx.send(error);
        }
        stopped.notify_one();
    };
    let transport = grpc::serve(
        server,
        audit,
        transport,
        listener,
        grpc::Bounds {
            max_message_bytes: config.limits.max_message_bytes,
            max_connections: config.limits.max_connections,
            max_receive_bytes: config.limits.max_receive_bytes,
        },
        failed_calls,
        serving,
        stop,
    );
    let grace = config.shutdown_grace;
    tokio::select! {
        result = transport => result?,
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
