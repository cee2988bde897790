//! The log of the real `loupe serve` binary as a log collector or a script
//! reads it, stderr piped (not a terminal): `--log-format json` gives one
//! JSON object a line; a SERVING line with the address once health says
//! SERVING; one line per recipe change naming the recipe, its revision and
//! what changed; one debug line per inspection when asked for; no colour
//! codes, no `Some(..)`.

mod common;
mod process;

use std::net::SocketAddr;

use common::{enroll, raw, request, texture};
use loupe::proto::inspection_client::InspectionClient;
use loupe::proto::recipes_client::RecipesClient;
use loupe::proto::{RecipeSettings, UpdateRecipeRequest, Verdict};
use process::{Served, serve};
use serde_json::Value;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn no_colour_and_values_only(lines: &[String]) {
    for line in lines {
        assert!(!line.contains("\x1b["), "a colour code in {line:?}");
        assert!(
            !line.contains("Some("),
            "an Option printed with Debug in {line:?}"
        );
    }
}

#[tokio::test]
async fn json_lines_tell_serving_recipe_changes_and_inspections() {
    let data = tempfile::tempdir().unwrap();
    let mut command = serve(env!("CARGO_BIN_EXE_loupe").as_ref(), data.path());
    command.args([
        "--log-format",
        "json",
        "--log",
        "info,ort=warn,loupe::inspection=debug",
    ]);
    let mut served = Served::spawn(command);

    let serving = served
        .find_json("SERVING", |line| line["message"] == "SERVING")
        .await;
    assert_eq!(serving["level"], "INFO");
    let addr: SocketAddr = serving["addr"].as_str().unwrap().parse().unwrap();
    // Health says SERVING by the time the line is written.
    let channel = channel(addr).await;
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);

    let mut recipes = RecipesClient::new(channel.clone()).max_encoding_message_size(64 << 20);
    let enrolled = enroll(&mut recipes, "tile").await;
    let change = |kind: &'static str| {
        move |line: &Value| line["message"] == "recipe changed" && line["change"] == kind
    };
    let created = served.find_json("recipe created", change("created")).await;
    assert_eq!(created["level"], "INFO");
    assert_eq!(created["target"], "loupe::recipe");
    assert_eq!(created["recipe"], "tile");
    assert_eq!(created["revision"], 1);
    assert!(
        created["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{created}"
    );
    let added = served.find_json("references added", change("references")).await;
    assert_eq!(added["recipe"], "tile");
    assert_eq!(added["revision"], enrolled.revision);
    assert_eq!(added["added"], 5);
    assert_eq!(added["replaced"], false);
    let built = served
        .find_json("reference built", |line| line["message"] == "reference built")
        .await;
    assert_eq!(built["recipe"], "tile");
    assert_eq!(built["frames"], 5);

    let updated = recipes
        .update_recipe(UpdateRecipeRequest {
            name: "tile".into(),
            settings: Some(RecipeSettings {
                sensitivity: 1.5,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["sensitivity".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let settings = served.find_json("settings changed", change("settings")).await;
    assert_eq!(settings["recipe"], "tile");
    assert_eq!(settings["revision"], updated.revision);
    assert_eq!(settings["changed"], "sensitivity");
    assert_eq!(settings["rebuilt"], false);

    let judged = InspectionClient::new(channel)
        .max_encoding_message_size(64 << 20)
        .inspect(request("tile", raw(texture(100, 0.3, 1.1)), "part-17"))
        .await
        .unwrap()
        .into_inner();
    let inspected = served
        .find_json("the inspection", |line| line["message"] == "inspected")
        .await;
    assert_eq!(inspected["level"], "DEBUG");
    assert_eq!(inspected["recipe"], "tile");
    assert_eq!(inspected["frame_id"], "part-17");
    let verdict = if judged.verdict == Verdict::Pass as i32 {
        "pass"
    } else {
        "fail"
    };
    assert_eq!(inspected["verdict"], verdict);
    let score = inspected["score"].as_f64().unwrap();
    assert!(
        (score - f64::from(judged.score)).abs() < 1e-4,
        "{score} vs {}",
        judged.score
    );
    assert!(inspected["ms"].as_f64().unwrap() > 0.0, "{inspected}");

    let status = served.terminate().await;
    assert!(status.success(), "{status:?}");
    served
        .find("the last line", |line| line.contains("\"stopped\""))
        .await;
    for line in &served.lines {
        let parsed: Result<Value, _> = serde_json::from_str(line);
        assert!(
            parsed.is_ok_and(|value| value.is_object()),
            "not a JSON object: {line:?}"
        );
    }
    no_colour_and_values_only(&served.lines);
}

#[tokio::test]
async fn text_lines_into_a_pipe_have_no_colour_and_name_the_address() {
    let data = tempfile::tempdir().unwrap();
    let mut served = Served::spawn(serve(env!("CARGO_BIN_EXE_loupe").as_ref(), data.path()));
    let serving = served
        .find("SERVING", |line| line.contains(" SERVING addr="))
        .await;
    let addr = serving
        .split_whitespace()
        .find_map(|field| field.strip_prefix("addr="))
        .unwrap();
    addr.parse::<SocketAddr>().unwrap();
    let listening = served
        .find("listening", |line| line.contains("listening for gRPC"))
        .await;
    assert!(listening.contains(&format!("addr={addr}")), "{listening}");
    let status = served.terminate().await;
    assert!(status.success(), "{status:?}");
    no_colour_and_values_only(&served.lines);
}
