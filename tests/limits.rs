//! What the server receives is bounded: a real server on loopback accepts
//! no connection past `max_connections` until one closes, and calls whose
//! messages together exceed the receive budget are received in turn, not
//! refused.

mod common;

use std::time::Duration;

use common::{PART_SIZE, TestServer, clients, enroll, request, texture};
use loupe::proto::{self, Frame, PixelFormat, RawImage, Verdict};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Upper bound on any wait that should end.
const PATIENCE: Duration = Duration::from_secs(60);

async fn health_check(channel: Channel) -> Result<(), tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(drop)
}

fn lazy_channel(server: &TestServer) -> Channel {
    Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect_lazy()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_the_limit_is_served_once_another_closes() {
    let data = tempfile::tempdir().unwrap();
    let mut config = common::config(data.path());
    config.limits.max_connections = 2;
    let server = TestServer::start(config).await;
    // Two connections, each served (the one wait_serving used may still be
    // closing: these calls wait for it).
    server.wait_serving("").await;
    let (first, second) = (lazy_channel(&server), lazy_channel(&server));
    for channel in [&first, &second] {
        tokio::time::timeout(PATIENCE, health_check(channel.clone()))
            .await
            .expect("a health check within the connection limit")
            .unwrap();
    }

    // A third waits in the backlog: its check does not complete while the
    // two stay open.
    let third = lazy_channel(&server);
    let mut waiting = tokio::spawn(health_check(third.clone()));
    let early = tokio::time::timeout(Duration::from_secs(2), &mut waiting).await;
    assert!(
        early.is_err(),
        "a third connection was served while two were open: {early:?}"
    );
    // The first two still answer meanwhile.
    tokio::time::timeout(PATIENCE, health_check(second.clone()))
        .await
        .unwrap()
        .unwrap();

    drop(first);
    tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("the third connection is served once the first closes")
        .unwrap()
        .unwrap();
    drop((second, third));
    server.stop().await.unwrap();
}

/// Each frame: a generated part scaled up 3 times, 1.77 MB of raw RGB.
const SCALE: usize = 3;

fn large_frame(seed: u64) -> Frame {
    let small = texture(seed, 0.4, 0.6);
    let side = PART_SIZE * SCALE;
    let mut rgb = Vec::with_capacity(side * side * 3);
    for y in 0..side {
        for x in 0..side {
            let i = ((y / SCALE) * PART_SIZE + x / SCALE) * 3;
            rgb.extend_from_slice(&small[i..i + 3]);
        }
    }
    Frame {
        image: Some(proto::frame::Image::Raw(RawImage {
            width: side as u32,
            height: side as u32,
            stride: 0,
            pixel_format: PixelFormat::Rgb8 as i32,
            data: rgb.into(),
        })),
    }
}

const FRAME_BYTES: usize = PART_SIZE * SCALE * PART_SIZE * SCALE * 3;

/// Room for one frame's message at a time, not two.
const BUDGET: u64 = 3 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_past_the_receive_budget_are_received_in_turn_not_refused() {
    const _: () = assert!(2 * FRAME_BYTES as u64 > BUDGET && (FRAME_BYTES as u64) < BUDGET);
    let data = tempfile::tempdir().unwrap();
    let mut config = common::config(data.path());
    config.limits.max_message_bytes = BUDGET as usize;
    config.limits.max_receive_bytes = BUDGET;
    let server = TestServer::start(config).await;
    let (mut recipes, inspection) = clients(&server).await;
    enroll(&mut recipes, "weave").await;

    // What one call alone answers, for each frame.
    let frames: Vec<Frame> = (0..4).map(|i| large_frame(300 + i)).collect();
    let mut alone = Vec::new();
    let mut client = inspection.clone();
    for (i, frame) in frames.iter().enumerate() {
        let answer = client
            .inspect(request("weave", frame.clone(), &format!("alone-{i}")))
            .await
            .unwrap()
            .into_inner();
        alone.push(answer);
    }

    let mut calls = Vec::new();
    for (i, frame) in frames.iter().enumerate() {
        let mut client = inspection.clone();
        let call = request("weave", frame.clone(), &format!("together-{i}"));
        calls.push(tokio::spawn(async move { client.inspect(call).await }));
    }
    for (i, call) in calls.into_iter().enumerate() {
        let answer = tokio::time::timeout(PATIENCE, call)
            .await
            .expect("every call is received in time")
            .unwrap()
            .unwrap_or_else(|status| panic!("call {i} refused: {status:?}"))
            .into_inner();
        let first = &alone[i];
        assert_eq!(answer.frame_id, format!("together-{i}"));
        assert_ne!(answer.verdict, Verdict::Unspecified as i32);
        assert_eq!(
            answer.verdict, first.verdict,
            "frame {i}: the same verdict as alone"
        );
        assert!(
            (answer.score - first.score).abs() <= 1e-3 * first.score.abs().max(1.0),
            "frame {i}: score {} together, {} alone",
            answer.score,
            first.score
        );
    }
    let peak = loupe::grpc::receive::peak_reserved_bytes();
    eprintln!("peak reserved {peak} bytes, budget {BUDGET}, one message about {FRAME_BYTES}");
    assert!(
        peak >= FRAME_BYTES,
        "the frames' messages were reserved: peak {peak}"
    );
    assert!(
        peak < 2 * FRAME_BYTES,
        "at most one frame's message held at once: peak {peak}"
    );
    server.stop().await.unwrap();
}
