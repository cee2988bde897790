//! The drift watch on a real server with generated parts: a recipe enrolled
//! on 20 good textures stays OK while parts like them come, and reaches
//! WATCH, then DRIFT, when the parts grow brighter, a grey level every six
//! parts; the state
//! shows in GetRecipe and the metrics, each change is an event on the bus,
//! and a drift setting changed on the way rebuilds nothing and keeps the
//! window.

mod common;

use std::net::SocketAddr;

use common::{TestServer, clients, raw, request, texture};
use loupe::proto::recipes_client::RecipesClient;
use loupe::proto::{
    self, AddReferencesRequest, CreateRecipeRequest, DriftState, GetRecipeRequest, RecipeSettings,
    UpdateRecipeRequest, Verdict,
};
use loupe::server::{DriftState as CoreState, Event, Events, SubscribeOptions, Subscription};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

const RECIPE: &str = "lamp";
/// Small enough to keep a debug build's run short, large enough for the
/// share to move in steps of 1/30.
const WINDOW: u32 = 30;

/// The shift of the weave of part `i`: one of five places, so that every
/// part, enrolled or inspected, has enrolled parts at its own place (as
/// parts in a fixture do).
fn shift(i: u64) -> (f32, f32) {
    let place = (i % 5) as f32;
    (place * 0.7, place * 0.4)
}

fn part(seed: u64, brighter: f32) -> Vec<u8> {
    let (dx, dy) = shift(seed);
    // A well-mixed noise seed of its own for every part (xorshift from a
    // small seed starts with correlated values).
    let mut rgb = texture(
        seed.wrapping_add(7).wrapping_mul(0xBF58_476D_1CE4_E5B9) | 1,
        dx,
        dy,
    );
    for v in &mut rgb {
        *v = (f32::from(*v) + brighter).round().clamp(0.0, 255.0) as u8;
    }
    rgb
}

async fn drift(recipes: &mut RecipesClient<Channel>) -> proto::Drift {
    let recipe = recipes
        .get_recipe(GetRecipeRequest { name: RECIPE.into() })
        .await
        .unwrap()
        .into_inner();
    recipe
        .drift
        .expect("a recipe with a reference has a drift status")
}

fn state(drift: &proto::Drift) -> DriftState {
    DriftState::try_from(drift.state).unwrap()
}

/// A plain HTTP/1.1 GET of `/metrics`: the body.
async fn scrape(addr: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let ask = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(ask.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
        .split_once("\r\n\r\n")
        .expect("an HTTP answer")
        .1
        .to_owned()
}

/// The drift changes waiting on `subscription`, as (from, to).
fn drift_changes(subscription: &mut Subscription) -> Vec<(CoreState, CoreState)> {
    std::iter::from_fn(|| subscription.try_recv())
        .filter_map(|event| match event {
            Event::Drift(change) => {
                assert_eq!(change.recipe, RECIPE);
                Some((change.from, change.status.state))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn stable_parts_stay_ok_and_a_slow_brightening_reaches_watch_then_drift() {
    let data = tempfile::tempdir().unwrap();
    let events = Events::new();
    let mut subscription = events.subscribe(SubscribeOptions::default());
    let server = TestServer::start_with_listeners(common::config(data.path()), events, true).await;
    server.wait_serving("loupe.v1.Inspection").await;
    let (mut recipes, mut inspection) = clients(&server).await;
    recipes
        .create_recipe(CreateRecipeRequest {
            name: RECIPE.into(),
            settings: Some(RecipeSettings {
                input_width: 128,
                input_height: 128,
                drift_window: WINDOW,
                // Wider than the defaults: 30 parts and 20 calibration
                // frames are few, and the stable run must not raise WATCH.
                drift_watch_shift: 1.0,
                drift_limit_shift: 2.0,
                drift_watch_share: 0.25,
                drift_limit_share: 0.5,
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let messages: Vec<AddReferencesRequest> = (0..20)
        .map(|i| AddReferencesRequest {
            recipe: RECIPE.into(),
            frame: Some(raw(part(i + 1, 0.0))),
            replace: false,
            name: String::new(),
        })
        .collect();
    recipes
        .add_references(tokio_stream::iter(messages))
        .await
        .unwrap();
    let fresh = drift(&mut recipes).await;
    assert_eq!(state(&fresh), DriftState::Ok, "{fresh:?}");
    assert_eq!(
        (fresh.parts_seen, fresh.window_parts, fresh.min_parts),
        (0, 0, 15)
    );
    assert!(
        fresh.calibration_p95 > fresh.calibration_median && fresh.calibration_median > 0.0,
        "{fresh:?}"
    );
    assert_eq!(fresh.median_shift, None);

    // Stable parts: new textures like the enrolled ones.
    let mut passed = 0;
    for i in 0..40 {
        let answer = inspection
            .inspect(request(RECIPE, raw(part(1000 + i, 0.0)), ""))
            .await
            .unwrap()
            .into_inner();
        passed += u64::from(answer.verdict == Verdict::Pass as i32);
        let now = drift(&mut recipes).await;
        assert_eq!(state(&now), DriftState::Ok, "stable part {i}: {now:?}");
    }
    let stable = drift(&mut recipes).await;
    println!("stable: {stable:?}");
    assert_eq!(stable.parts_seen, passed);
    assert!(passed >= 36, "{passed} of 40 good parts passed");
    assert_eq!(stable.window_parts, WINDOW);
    assert!(stable.median_shift.unwrap().abs() < 1.0, "{stable:?}");
    assert!(drift_changes(&mut subscription).is_empty());

    // A drift setting changes without a rebuild and keeps the window.
    let updated = recipes
        .update_recipe(UpdateRecipeRequest {
            name: RECIPE.into(),
            settings: Some(RecipeSettings {
                drift_limit_shift: 3.0,
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!updated.reference_rebuilt);
    let kept = updated.drift.unwrap();
    assert_eq!((kept.parts_seen, kept.limit_shift), (passed, 3.0));

    // One grey level brighter every 6 parts, until DRIFT (or 200 parts, 33
    // levels). Faster, the parts turn from PASS below the calibration's p95
    // to FAIL within a few parts, and FAILs are not counted.
    let mut seen = Vec::new();
    for part_number in 1..=200u64 {
        let level = part_number / 6;
        let answer = inspection
            .inspect(request(RECIPE, raw(part(2000 + part_number, level as f32)), ""))
            .await
            .unwrap()
            .into_inner();
        let now = drift(&mut recipes).await;
        let now_state = state(&now);
        if seen.last().map(|(_, s, _)| *s) != Some(now_state) {
            println!(
                "part {part_number}, +{level} grey: {now_state:?}, score {:.4} / threshold {:.4}, {now:?}",
                answer.score, answer.threshold
            );
            seen.push((part_number, now_state, now));
        }
        if now_state == DriftState::Drift {
            break;
        }
    }
    let states: Vec<DriftState> = seen.iter().map(|(_, state, _)| *state).collect();
    assert_eq!(
        states,
        [DriftState::Ok, DriftState::Watch, DriftState::Drift],
        "{seen:?}"
    );
    let (_, _, last) = seen.last().unwrap();
    let share = last.share_above_p95.unwrap();
    let shift = last.median_shift.unwrap();
    assert!(share >= 0.5 || shift >= 3.0, "{last:?}");
    assert_eq!(
        drift_changes(&mut subscription),
        [
            (CoreState::Ok, CoreState::Watch),
            (CoreState::Watch, CoreState::Drift)
        ]
    );

    let text = scrape(server.metrics.unwrap()).await;
    assert!(
        text.contains(&format!("loupe_drift_state{{recipe=\"{RECIPE}\"}} 2")),
        "{text}"
    );
    assert!(text.contains("loupe_drift_share_above_p95{"), "{text}");

    // New good frames: a new reference, a new window.
    let messages = vec![AddReferencesRequest {
        recipe: RECIPE.into(),
        frame: Some(raw(part(99, 0.0))),
        replace: false,
        name: String::new(),
    }];
    let added = recipes
        .add_references(tokio_stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    let reset = added.drift.unwrap();
    assert_eq!((state(&reset), reset.parts_seen), (DriftState::Ok, 0));
    server.stop().await.unwrap();
}
