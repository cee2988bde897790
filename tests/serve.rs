//! `loupe serve` end to end: a real server on 127.0.0.1:0 and a real gRPC
//! health client.

mod common;

use common::TestServer;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn health_reports_serving_once_the_model_is_warm() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(common::config(data.path())).await;
    server.wait_serving("").await;

    let mut health = HealthClient::new(server.channel().await);
    let status = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_model_that_breaks_its_manifest_stops_the_server_with_a_clear_error() {
    let data = tempfile::tempdir().unwrap();
    // The real model bytes under a manifest that promises another output.
    let source = loupe::model::ModelSource::bundled().unwrap();
    let mut manifest = source.manifest.clone();
    manifest.output.name = "logits".to_owned();
    let model = data.path().join("wrong.onnx");
    std::fs::write(&model, &source.onnx).unwrap();
    std::fs::write(
        model.with_extension("json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();

    let mut config = common::config(data.path());
    config.engine.model.path = Some(model);
    let server = TestServer::start(config).await;
    let error = server
        .join(std::time::Duration::from_secs(60))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("does not match its manifest"), "{error}");
    assert!(error.contains("`logits`"), "{error}");
}
