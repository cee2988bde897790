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

#[tokio::test]
async fn reflection_answers_in_v1_and_in_v1alpha() {
    use tonic_reflection::pb::{v1, v1alpha};

    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(common::config(data.path())).await;
    let channel = server.channel().await;

    let mut current = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = current
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("v1 did not list the services");
    };
    let names: Vec<_> = list.service.iter().map(|service| service.name.as_str()).collect();
    assert!(
        names.contains(&"loupe.v1.Inspection") && names.contains(&"loupe.v1.Recipes"),
        "{names:?}"
    );

    // grpcio-reflection, Python's standard client, and older tools speak v1alpha.
    let mut older = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = older
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("v1alpha did not list the services");
    };
    assert!(
        list.service
            .iter()
            .any(|service| service.name == "loupe.v1.Inspection")
    );
    server.stop().await.unwrap();
}

/// Mask PNGs are decoded off the async runtime (issue 12, finding 5: three
/// `CreateRecipe` calls with large masks once stalled health checks for
/// seconds). The server shares the test's one runtime thread with the
/// health checks, so any decode left on the runtime stalls them (4.8 s of
/// 4.9 s when the check ran on it).
#[tokio::test]
async fn health_answers_while_large_masks_are_decoded() {
    use loupe::proto::recipes_client::RecipesClient;
    use loupe::proto::{CreateRecipeRequest, RecipeSettings};
    use std::time::{Duration, Instant};

    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(common::config(data.path())).await;
    server.wait_serving("").await;

    // 49 Mpx of white: 50 KB on the wire, a few hundred milliseconds to
    // decode and scale.
    let mut mask = Vec::new();
    image::DynamicImage::ImageLuma8(image::GrayImage::from_pixel(7000, 7000, image::Luma([255])))
        .write_to(&mut std::io::Cursor::new(&mut mask), image::ImageFormat::Png)
        .unwrap();
    let channel = server.channel().await;
    let started = Instant::now();
    let creates: Vec<_> = (0..4)
        .map(|i| {
            let (mut recipes, mask) = (RecipesClient::new(channel.clone()), mask.clone());
            tokio::spawn(async move {
                recipes
                    .create_recipe(CreateRecipeRequest {
                        name: format!("masked-{i}"),
                        settings: Some(RecipeSettings {
                            mask_png: mask.into(),
                            ..Default::default()
                        }),
                    })
                    .await
            })
        })
        .collect();

    let mut health = HealthClient::new(server.channel().await);
    let mut worst = Duration::ZERO;
    while !creates.iter().all(|create| create.is_finished()) {
        let asked = Instant::now();
        health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
        worst = worst.max(asked.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let busy = started.elapsed();
    for create in creates {
        create.await.unwrap().unwrap();
    }
    assert!(
        busy >= Duration::from_millis(200),
        "the masks took {busy:?}: too quick to show a stall, use larger ones"
    );
    assert!(
        worst < busy / 4,
        "a health check waited {worst:?} while the masks were decoded for {busy:?}"
    );
    server.stop().await.unwrap();
}
