//! The core's events seen by subscribers of a real server: every inspection
//! of a stream arrives, in order, with the verdict the client saw; recipe
//! changes arrive too; a stuck subscriber loses events (counted) and leaves
//! inspections as fast as before.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, clients, enroll, raw, request, scratched, texture};
use loupe::engine::Verdict;
use loupe::proto::{self, InspectResponse};
use loupe::server::{Event, Events, RecipeChange, SubscribeOptions, Subscription};

/// Waits for the next event, failing after `limit`.
async fn next(subscription: &mut Subscription) -> Event {
    tokio::time::timeout(Duration::from_secs(30), subscription.recv())
        .await
        .expect("no event within 30 s")
        .expect("the bus closed")
}

#[tokio::test]
async fn a_subscriber_sees_every_inspection_of_a_stream_in_order_with_the_clients_verdicts() {
    let data = tempfile::tempdir().unwrap();
    let events = Events::new();
    let mut subscription = events.subscribe(SubscribeOptions {
        capacity: 64,
        images: true,
        ..SubscribeOptions::default()
    });
    let server = TestServer::start_with_events(common::config(data.path()), events).await;
    server.wait_serving("loupe.v1.Inspection").await;
    let (mut recipes, mut inspection) = clients(&server).await;
    enroll(&mut recipes, "weave").await;

    for expected in [
        RecipeChange::Created,
        RecipeChange::ReferencesAdded {
            added: 5,
            replaced: false,
        },
    ] {
        let Event::Recipe(change) = next(&mut subscription).await else {
            panic!("expected a recipe event");
        };
        assert_eq!((change.recipe.as_str(), &change.change), ("weave", &expected));
        assert!(change.peer.is_some_and(|peer| peer.ip().is_loopback()));
    }

    // Good and scratched parts alternating, several in flight at once.
    let frames: Vec<proto::InspectRequest> = (0..10)
        .map(|i| {
            let rgb = if i % 2 == 0 {
                texture(300 + i, 0.4, 0.2)
            } else {
                scratched()
            };
            request("weave", raw(rgb), &format!("frame-{i}"))
        })
        .collect();
    let mut stream = inspection
        .inspect_stream(tokio_stream::iter(frames))
        .await
        .unwrap()
        .into_inner();
    let mut answers: Vec<InspectResponse> = Vec::new();
    while let Some(answer) = stream.message().await.unwrap() {
        answers.push(answer);
    }
    assert_eq!(answers.len(), 10);
    assert!(answers.iter().any(|a| a.verdict == proto::Verdict::Fail as i32));
    assert!(answers.iter().any(|a| a.verdict == proto::Verdict::Pass as i32));

    for answer in &answers {
        let Event::Inspection(seen) = next(&mut subscription).await else {
            panic!("expected an inspection event");
        };
        assert_eq!(seen.frame_id, answer.frame_id, "events out of order");
        let verdict = match seen.verdict {
            Verdict::Pass => proto::Verdict::Pass,
            Verdict::Fail => proto::Verdict::Fail,
        };
        assert_eq!(verdict as i32, answer.verdict);
        assert_eq!((seen.score, seen.threshold), (answer.score, answer.threshold));
        assert_eq!(seen.regions.len(), answer.regions.len());
        assert_eq!(
            (seen.recipe.as_str(), seen.revision),
            ("weave", answer.recipe_revision)
        );
        let images = seen.images.as_ref().expect("the subscriber asked for images");
        assert_eq!((images.frame.width, images.frame.height), (256, 256));
        assert_eq!(images.map.data.len(), images.map.width * images.map.height);
    }
    assert_eq!(subscription.dropped(), 0);
    server.stop().await.unwrap();
}

/// Median latency of `runs` unary inspections of a good part.
async fn median_latency(
    inspection: &mut loupe::proto::inspection_client::InspectionClient<tonic::transport::Channel>,
    runs: usize,
) -> Duration {
    let mut samples = Vec::with_capacity(runs);
    for i in 0..runs {
        let frame = request("weave", raw(texture(500, 0.1, 0.3)), &format!("t-{i}"));
        let started = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(30), inspection.inspect(frame))
            .await
            .expect("an inspection waited for a stuck subscriber")
            .unwrap();
        samples.push(started.elapsed());
        assert_eq!(answer.get_ref().verdict, proto::Verdict::Pass as i32);
    }
    samples.sort();
    samples[runs / 2]
}

#[tokio::test]
async fn a_stuck_subscriber_loses_counted_events_and_delays_nothing() {
    let data = tempfile::tempdir().unwrap();
    let events = Events::new();
    let server = TestServer::start_with_events(common::config(data.path()), events.clone()).await;
    server.wait_serving("loupe.v1.Inspection").await;
    let (mut recipes, mut inspection) = clients(&server).await;
    enroll(&mut recipes, "weave").await;
    median_latency(&mut inspection, 3).await; // warm up

    let alone = median_latency(&mut inspection, 9).await;
    // Never read, room for one event, and it wants the pictures too.
    let stuck = events.subscribe(SubscribeOptions {
        capacity: 1,
        images: true,
        ..SubscribeOptions::default()
    });
    let mut reader = events.subscribe(SubscribeOptions::default());
    let with_stuck = median_latency(&mut inspection, 9).await;

    assert_eq!(stuck.dropped(), 8, "9 inspections, room for 1");
    assert_eq!(events.dropped(), 8);
    let mut received = 0;
    while reader.try_recv().is_some() {
        received += 1;
    }
    assert_eq!((received, reader.dropped()), (9, 0));
    // Within noise: the median may move by scheduling jitter on a busy
    // machine, never by waiting for the subscriber.
    assert!(
        with_stuck < alone * 3 / 2 + Duration::from_millis(15),
        "median {with_stuck:?} with a stuck subscriber, {alone:?} without"
    );
    drop(stuck);
    server.stop().await.unwrap();
}
