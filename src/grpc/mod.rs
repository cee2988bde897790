//! The gRPC transport: `loupe.v1.Inspection` and `loupe.v1.Recipes` over the
//! server core, grpc.health.v1 and reflection. It converts proto messages to
//! core types and back ([`crate::proto::convert`]) and core errors to
//! `Status` (in `status.rs`, one exhaustive `From`), and nothing else.

mod inspection;
mod recipes;
mod status;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::proto::inspection_server::InspectionServer;
use crate::proto::recipes_server::RecipesServer;
use crate::server::Server;

use inspection::InspectionService;
use recipes::RecipesService;

/// HTTP/2 flow-control window per stream, bytes: several full frames.
pub const FLOW_WINDOW: u32 = 16 << 20;

/// Largest HTTP/2 DATA frame a client may send: 1 MiB rather than the
/// default 16 KiB cuts a 3 MB camera frame into 3 frames, not 192.
pub const MAX_FRAME: u32 = 1 << 20;

/// Names whose health is reported: overall ("") and each Loupe service.
pub const HEALTH_SERVICES: [&str; 3] = ["", "loupe.v1.Inspection", "loupe.v1.Recipes"];

/// Why the gRPC transport stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not be set up (a bug in the embedded descriptors).
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Reports `status` for every name in [`HEALTH_SERVICES`].
pub async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    for service in HEALTH_SERVICES {
        reporter.set_service_status(service, status).await;
    }
}

/// Serves the core on `listener` until `stop` completes, then lets calls in
/// flight finish. Health says NOT_SERVING until `serving` completes (the
/// core is ready), SERVING after, and NOT_SERVING again once `stop` has.
pub async fn serve(
    server: Arc<Server>,
    listener: TcpListener,
    max_message_bytes: usize,
    serving: impl Future<Output = ()> + Send + 'static,
    stop: impl Future<Output = ()> + Send,
) -> Result<(), GrpcError> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    set_health(&reporter, ServingStatus::NotServing).await;
    let ready = reporter.clone();
    tokio::spawn(async move {
        serving.await;
        set_health(&ready, ServingStatus::Serving).await;
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
    let inspection = InspectionServer::new(InspectionService::new(server.clone()))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    let recipes = RecipesServer::new(RecipesService::new(server))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);

    // Small answers must not wait for delayed ACKs: tonic sets TCP_NODELAY
    // only on listeners it binds itself.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    // Frames are megabytes: HTTP/2's default 64 KiB windows would make a
    // 3 MB frame wait for dozens of window updates.
    tonic::transport::Server::builder()
        .initial_stream_window_size(FLOW_WINDOW)
        .initial_connection_window_size(2 * FLOW_WINDOW)
        .max_frame_size(MAX_FRAME)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(inspection)
        .add_service(recipes)
        .serve_with_incoming_shutdown(incoming, stop)
        .await?;
    Ok(())
}
