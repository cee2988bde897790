//! The gRPC transport: `loupe.v1.Inspection` and `loupe.v1.Recipes` over the
//! server core, `loupe.v1.Results` over the audit trail, grpc.health.v1 and
//! reflection. It converts proto messages to
//! core types and back ([`crate::proto::convert`]) and core errors to
//! `Status` (in `status.rs`, one exhaustive `From`). It also owns how the
//! service is reached: TLS here, the token check for every call in
//! [`auth`], and the client end in [`client`]; the core knows nothing of
//! either. What the server receives is bounded here too: open connections
//! in [`connections`], request message bytes in [`receive`]. [`calls`]
//! counts failed calls for whoever asks (the metrics).

pub mod auth;
pub mod calls;
pub mod client;
pub mod connections;
mod inspection;
pub mod receive;
mod recipes;
mod results;
mod status;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::audit::Audit;
use crate::config::{Security, ServerTls, Tokens};
use crate::proto::inspection_server::InspectionServer;
use crate::proto::recipes_server::RecipesServer;
use crate::proto::results_server::ResultsServer;
use crate::server::Server;

use inspection::InspectionService;
use recipes::RecipesService;
use results::ResultsService;
pub use status::code_name;

/// HTTP/2 flow-control window per stream, bytes: several full frames.
pub const FLOW_WINDOW: u32 = 16 << 20;

/// Largest HTTP/2 DATA frame a client may send: 1 MiB rather than the
/// default 16 KiB cuts a 3 MB camera frame into 3 frames, not 192.
pub const MAX_FRAME: u32 = 1 << 20;

/// Most calls (HTTP/2 streams) open at once on one connection; a client
/// that wants more queues them itself. With `--max-connections` it bounds
/// the calls open at once, and so the DATA frames waiting for the receive
/// budget (one per call at most).
pub const MAX_CONCURRENT_STREAMS: u32 = 64;

/// What the transport lets clients send: resolved from `loupe serve`'s
/// limits.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Largest gRPC message, bytes, either way.
    pub max_message_bytes: usize,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most request message bytes being received at once.
    pub max_receive_bytes: u64,
}

/// Metadata on an AddReferences error caused by one good frame (it cannot
/// be decoded or used): that frame's index in the call, from 0, so a client
/// can leave it out and send the others again (`loupe recipe add-refs
/// --skip-bad`).
pub const FRAME_INDEX_METADATA: &str = "loupe-frame-index";

/// Names whose health is reported: overall ("") and each Loupe service.
pub const HEALTH_SERVICES: [&str; 4] = ["", "loupe.v1.Inspection", "loupe.v1.Recipes", "loupe.v1.Results"];

/// Longest a client may take over its TLS handshake: a connection that
/// stalls there must not hold the server's resources.
pub const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why the gRPC transport stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    /// The TLS files were read but the TLS library refused them (a key that
    /// does not match its certificate, an unsupported key type).
    #[error("TLS set-up (--tls-cert {cert}, --tls-key {key}): {reason}")]
    Tls {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
        /// What the TLS library said.
        reason: String,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not be set up (a bug in the embedded descriptors).
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// An error and its causes on one line; tonic's own message alone is only
/// "transport error".
pub(crate) fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    with_causes(Vec::new(), Some(error))
}

/// `parts` followed by `next` and its causes, each left out when the part
/// before already says it.
pub(crate) fn with_causes(
    mut parts: Vec<String>,
    mut next: Option<&(dyn std::error::Error + 'static)>,
) -> String {
    while let Some(error) = next {
        let text = error.to_string();
        if parts.last().is_none_or(|last| !last.contains(&text)) {
            parts.push(text);
        }
        next = error.source();
    }
    parts.join(": ")
}

/// Reports `status` for every name in [`HEALTH_SERVICES`].
pub async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    for service in HEALTH_SERVICES {
        reporter.set_service_status(service, status).await;
    }
}

fn tls_config(tls: &ServerTls) -> ServerTlsConfig {
    let identity = &tls.identity;
    let config = ServerTlsConfig::new()
        .identity(Identity::from_pem(&identity.cert.pem, &identity.key.pem))
        .timeout(TLS_HANDSHAKE_TIMEOUT);
    match &tls.client_ca {
        // Required, not optional: tonic's default once a CA is set.
        Some(ca) => config.client_ca_root(Certificate::from_pem(&ca.pem)),
        None => config,
    }
}

/// How the server is reached, set up from [`Security`] before the core
/// starts, so TLS files the TLS library refuses stop Loupe before a model
/// is loaded.
#[derive(Debug)]
pub struct Transport {
    builder: tonic::transport::Server,
    tokens: Option<Arc<Tokens>>,
}

impl Transport {
    /// TLS as `security` says (its acceptor built and checked now), and its
    /// tokens for the check on every call.
    pub fn new(security: &Security) -> Result<Self, GrpcError> {
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &security.tls {
            builder = builder
                .tls_config(tls_config(tls))
                .map_err(|error| GrpcError::Tls {
                    cert: tls.identity.cert.path.display().to_string(),
                    key: tls.identity.key.path.display().to_string(),
                    reason: causes(&error),
                })?;
        }
        Ok(Self {
            builder,
            tokens: security.tokens.clone(),
        })
    }
}

/// Serves the core on `listener` through `transport` until `stop`
/// completes, then lets calls in flight finish. Health says NOT_SERVING
/// until `serving` completes (the core is ready), SERVING after, and
/// NOT_SERVING again once `stop` has; a `SERVING` log line with the address
/// follows the turn to SERVING. Failed calls are counted into
/// `failed_calls` when given. `Results` reads `audit` (without one, its
/// calls get FAILED_PRECONDITION).
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    server: Arc<Server>,
    audit: Option<Audit>,
    transport: Transport,
    listener: TcpListener,
    bounds: Bounds,
    failed_calls: Option<Arc<dyn calls::FailedCalls>>,
    serving: impl Future<Output = ()> + Send + 'static,
    stop: impl Future<Output = ()> + Send,
) -> Result<(), GrpcError> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    set_health(&reporter, ServingStatus::NotServing).await;
    let ready = reporter.clone();
    let addr = listener
        .local_addr()
        .map_or_else(|_| "an unknown address".to_owned(), |addr| addr.to_string());
    tokio::spawn(async move {
        serving.await;
        set_health(&ready, ServingStatus::Serving).await;
        // After health says so: a script that waits for this line may call
        // at once.
        tracing::info!(%addr, "SERVING");
    });
    let stop = async move {
        stop.await;
        set_health(&reporter, ServingStatus::NotServing).await;
        tracing::info!("shutting down: no new calls, waiting for calls in flight");
    };
    // v1 for current tools, v1alpha for grpcio-reflection and older ones.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (reflection, reflection_v1alpha) = (reflection().build_v1()?, reflection().build_v1alpha()?);
    let max_message_bytes = bounds.max_message_bytes;
    let inspection = InspectionServer::new(InspectionService::new(server.clone()))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    let recipes = RecipesServer::new(RecipesService::new(server))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    let results = ResultsServer::new(ResultsService::new(audit))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);

    // Small answers must not wait for delayed ACKs: tonic sets TCP_NODELAY
    // only on listeners it binds itself.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let incoming = connections::Limited::new(incoming, bounds.max_connections);
    let budget = receive::ReceiveBudget::new(bounds.max_receive_bytes, max_message_bytes);
    // Frames are megabytes: HTTP/2's default 64 KiB windows would make a
    // 3 MB frame wait for dozens of window updates.
    transport
        .builder
        .initial_stream_window_size(FLOW_WINDOW)
        .initial_connection_window_size(2 * FLOW_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        // Outside the token check, so that refused calls are counted too.
        .layer(calls::CallsLayer::new(failed_calls))
        // One check for every service, health and reflection included
        // (the layer lets those through itself).
        .layer(auth::AuthLayer::new(transport.tokens))
        // Inside the token check: a refused call reads no message. Health
        // and reflection pass through it too; their messages are small
        // and reserve nothing.
        .layer(receive::ReceiveLayer::new(budget))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(inspection)
        .add_service(recipes)
        .add_service(results)
        .serve_with_incoming_shutdown(incoming, stop)
        .await?;
    Ok(())
}
