//! Streams are slowed down, not failed, when the engine is busy, and they
//! leave room for unary calls: a real server on loopback with room for 16
//! frames in flight, and 16 streams that each want 8 in flight.

mod common;

use common::{TestServer, clients, enroll, raw, request, texture};

const STREAMS: usize = 16;
const FRAMES: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_busy_streams_get_every_answer_in_order_none_refused_and_unary_calls_get_through() {
    let data = tempfile::tempdir().unwrap();
    let mut config = common::config(data.path());
    config.limits.max_pending = 16;
    let server = TestServer::start(config).await;
    let (mut recipes, inspection) = clients(&server).await;
    enroll(&mut recipes, "weave").await;

    let mut streams = Vec::new();
    for stream in 0..STREAMS {
        let mut client = inspection.clone();
        streams.push(tokio::spawn(async move {
            let frames: Vec<_> = (0..FRAMES)
                .map(|i| {
                    let rgb = texture(7, 0.3 * i as f32, 0.2 * stream as f32);
                    request("weave", raw(rgb), &format!("{stream}-{i}"))
                })
                .collect();
            let mut answers = client
                .inspect_stream(tokio_stream::iter(frames))
                .await
                .unwrap()
                .into_inner();
            let mut seen = Vec::new();
            while let Some(answer) = answers.message().await.unwrap() {
                if let Some(error) = answer.error {
                    panic!("frame {} got {error:?}", answer.frame_id);
                }
                seen.push(answer.frame_id);
            }
            let expected: Vec<_> = (0..FRAMES).map(|i| format!("{stream}-{i}")).collect();
            assert_eq!(seen, expected, "stream {stream}: every answer, in order");
        }));
    }
    // Unary calls meanwhile find a free slot: streams hold at most three
    // quarters of them.
    let mut unary = inspection.clone();
    for i in 0..5 {
        let call = request(
            "weave",
            raw(texture(8, 0.1 * i as f32, 0.0)),
            &format!("unary-{i}"),
        );
        unary
            .inspect(call)
            .await
            .expect("a unary call beside busy streams");
    }
    for stream in streams {
        stream.await.unwrap();
    }
    server.stop().await.unwrap();
}
