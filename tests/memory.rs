//! The decode memory budget holds against a burst of decompression bombs: a
//! real server on loopback, many concurrent frames that each decode to
//! 128 MB from a 130 KB file, and the process's peak resident memory read
//! from /proc. This file holds one test so that the peak is this test's.

mod common;

use std::time::Duration;

use common::{TestServer, clients, enroll, request};
use loupe::proto::{Frame, frame};
use tonic::Code;

/// Each bomb's decoded size: 4000 x 4000 pixels of 16-bit RGBA.
const BOMB_BYTES: u64 = 4000 * 4000 * 8;

/// The budget: room for one bomb at a time.
const BUDGET: u64 = BOMB_BYTES + (32 << 20);

/// What else a burst may add to the peak: the engine's working buffers,
/// the requests' bytes, allocator slack.
const SLACK: u64 = 96 << 20;

fn bomb() -> Vec<u8> {
    use image::ImageEncoder;
    let pixels = vec![0u8; BOMB_BYTES as usize];
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new_with_quality(
        &mut png,
        image::codecs::png::CompressionType::Fast,
        image::codecs::png::FilterType::NoFilter,
    )
    .write_image(&pixels, 4000, 4000, image::ExtendedColorType::Rgba16)
    .unwrap();
    png
}

/// A field of /proc/self/status, in bytes.
fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_bombs_stays_within_the_decode_budget() {
    // Resetting the peak needs Linux's clear_refs; elsewhere the peak would
    // be the whole test's, which says nothing.
    if std::fs::write("/proc/self/clear_refs", "5").is_err() {
        eprintln!("SKIPPED: /proc/self/clear_refs cannot reset the peak resident memory here");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let mut config = common::config(data.path());
    config.limits.max_frame_bytes = BOMB_BYTES;
    config.limits.max_decode_bytes = BUDGET;
    let server = TestServer::start(config).await;
    let (mut recipes, inspection) = clients(&server).await;
    enroll(&mut recipes, "weave").await;
    let bomb = bytes::Bytes::from(bomb());
    assert!(bomb.len() < 1 << 20, "the bomb is {} bytes", bomb.len());
    let frame = Frame {
        image: Some(frame::Image::Encoded(bomb)),
    };
    // One bomb first, so that buffers the process keeps anyway (the pool,
    // the allocator's arenas) are in the baseline.
    let mut one = inspection.clone();
    one.inspect(request("weave", frame.clone(), "warm-up"))
        .await
        .unwrap();
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let baseline = status_bytes("VmRSS:").unwrap();

    // Eight with a generous deadline wait their turn for memory; eight
    // without one are refused at once while the budget is spent.
    let mut calls = Vec::new();
    for i in 0..16 {
        let mut client = inspection.clone();
        let mut call = tonic::Request::new(request("weave", frame.clone(), &format!("bomb-{i}")));
        if i % 2 == 0 {
            call.set_timeout(Duration::from_secs(600));
        }
        calls.push(tokio::spawn(async move { client.inspect(call).await }));
    }
    let (mut judged, mut refused) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => judged += 1,
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(
                    status.message().contains("--max-decode-bytes"),
                    "{}",
                    status.message()
                );
                refused += 1;
            }
            Err(status) => panic!("unexpected {status:?}"),
        }
    }
    let peak = status_bytes("VmHWM:").unwrap();
    server.stop().await.unwrap();

    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "{judged} judged, {refused} refused; peak resident memory {} MiB over a baseline of {} MiB, budget {} MiB",
        growth >> 20,
        baseline >> 20,
        BUDGET >> 20
    );
    assert!(
        judged >= 8,
        "every call with a deadline is judged: {judged} judged, {refused} refused"
    );
    assert!(refused >= 1, "some calls without a deadline meet a spent budget");
    assert!(
        growth <= BUDGET + SLACK,
        "resident memory grew by {} MiB over a baseline of {} MiB; the budget is {} MiB",
        growth >> 20,
        baseline >> 20,
        BUDGET >> 20
    );
}
