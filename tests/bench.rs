//! `loupe bench` end to end on small datasets generated here: the MVTec AD
//! layout with and without masks, golden pairs, malformed folders, the
//! same run twice, and a run through a real server.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use image::{GrayImage, Luma, Rgb, RgbImage};
use serde_json::Value;

/// Deterministic noise.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// A woven texture with a little noise.
fn texture(width: u32, height: u32, seed: u64) -> GrayImage {
    let mut noise = Lcg(seed);
    GrayImage::from_fn(width, height, |x, y| {
        let v = 128.0 + 45.0 * (x as f32 * 0.8).sin() * (y as f32 * 0.6).cos() + 12.0 * (noise.next() - 0.5);
        Luma([v.clamp(0.0, 255.0) as u8])
    })
}

/// Draws a dark disc and returns its mask.
fn spot(image: &mut GrayImage, cx: i32, cy: i32, radius: i32) -> GrayImage {
    let mut mask = GrayImage::new(image.width(), image.height());
    for y in 0..image.height() as i32 {
        for x in 0..image.width() as i32 {
            if (x - cx).pow(2) + (y - cy).pow(2) <= radius * radius {
                image.put_pixel(x as u32, y as u32, Luma([15]));
                mask.put_pixel(x as u32, y as u32, Luma([255]));
            }
        }
    }
    mask
}

fn save_gray(image: &GrayImage, path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image.save(path).unwrap();
}

fn save_rgb(image: &GrayImage, path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    RgbImage::from_fn(image.width(), image.height(), |x, y| {
        let v = image.get_pixel(x, y).0[0];
        Rgb([v, v, v])
    })
    .save(path)
    .unwrap();
}

/// MVTec AD layout: 6 good training images, 3 good and 4 defective test
/// images (one without a mask; sizes and formats vary), masks unless
/// `with_masks` is false (then no ground_truth folder at all).
fn mvtec(root: &Path, with_masks: bool) {
    for i in 0..6 {
        let size = if i % 2 == 0 { (96, 96) } else { (100, 90) };
        save_gray(
            &texture(size.0, size.1, i),
            &root.join(format!("train/good/{i:03}.png")),
        );
    }
    for i in 0..3 {
        save_gray(
            &texture(96, 96, 100 + i),
            &root.join(format!("test/good/{i:03}.png")),
        );
    }
    save_rgb(&texture(96, 96, 103), &root.join("test/good/003.jpg"));
    let spots = [(30, 40), (60, 60), (48, 25), (70, 30)];
    for (i, &(cx, cy)) in spots.iter().enumerate() {
        let mut image = texture(96, 96, 200 + i as u64);
        let mask = spot(&mut image, cx, cy, 9);
        save_gray(&image, &root.join(format!("test/spot/{i:03}.png")));
        if with_masks && i != 3 {
            save_gray(&mask, &root.join(format!("ground_truth/spot/{i:03}_mask.png")));
        }
    }
}

/// Golden pairs: three ids, a reference and a frame with a spot each;
/// annotations by mask and defects.txt, by mask only, and by defects.txt
/// only.
fn pairs(root: &Path) {
    for (i, &(cx, cy)) in [(30, 40), (60, 60), (48, 25)].iter().enumerate() {
        let dir = root.join(format!("p{i}"));
        save_gray(&texture(96, 96, 300 + i as u64), &dir.join("reference.png"));
        let mut frame = texture(96, 96, 300 + i as u64);
        let mask = spot(&mut frame, cx, cy, 9);
        save_gray(&frame, &dir.join("frame.png"));
        if i != 2 {
            save_gray(&mask, &dir.join("mask.png"));
        }
        if i != 1 {
            let line = format!("{} {} {} {} 1\n", cx - 9, cy - 9, cx + 10, cy + 10);
            std::fs::write(dir.join("defects.txt"), line).unwrap();
        }
    }
}

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loupe"))
        .arg("bench")
        .args(args)
        .args(["--input-size", "64x64", "--threads", "1", "--log", "warn"])
        .output()
        .unwrap()
}

fn bench_ok(dir: &Path, out: &Path, extra: &[&str]) -> Value {
    let mut args = vec![dir.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let output = bench(&args);
    assert!(
        output.status.success(),
        "loupe bench failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("image AUROC") && stdout.contains("latency"),
        "{stdout}"
    );
    serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap()
}

fn f(report: &Value, key: &str) -> f64 {
    report[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is {}", report[key]))
}

/// Every key a user may rely on is present.
fn assert_schema(report: &Value) {
    for key in [
        "image_auroc",
        "image_f1_max",
        "pixel_auroc",
        "aupro",
        "false_reject_rate",
        "escape_rate",
        "enroll_seconds",
        "latency_ms",
        "throughput_fps",
        "threshold",
        "counts",
        "defect_recall",
        "defect_precision",
        "settings",
        "model",
        "per_type",
        "fast_search",
    ] {
        assert!(report.get(key).is_some(), "report.json lacks {key}");
    }
    for key in ["p50", "p90", "p99"] {
        assert!(
            report["latency_ms"][key].as_f64().unwrap() > 0.0,
            "latency_ms.{key}"
        );
    }
    assert!(f(report, "throughput_fps") > 0.0);
    assert!(f(report, "enroll_seconds") > 0.0);
}

fn csv_rows(out: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(out.join("scores.csv")).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("path,label,defect_type,score,verdict"));
    lines.map(|l| l.split(',').map(str::to_owned).collect()).collect()
}

fn assert_html(out: &Path) {
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for title in loupe::bench::html::SECTIONS {
        assert!(
            html.contains(&format!("{title}</h2>")),
            "report.html lacks {title}"
        );
    }
    assert!(html.contains("<svg") && html.contains("data:image/png;base64,"));
    // Self-contained: nothing fetched (the SVG namespace is a name, not a fetch).
    let fetches = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    for needle in ["<script", "<link", "src=\"http", "url(http", "@import"] {
        assert!(!fetches.contains(needle), "report.html contains {needle}");
    }
}

#[test]
fn mvtec_layout_with_masks_gives_every_metric() {
    let data = tempfile::tempdir().unwrap();
    mvtec(data.path(), true);
    let out = data.path().join("out");
    let report = bench_ok(data.path(), &out, &["--train-limit", "5"]);
    assert_schema(&report);
    assert_eq!(report["format"], "mvtec");
    assert_eq!(report["counts"]["train"], 5);
    assert_eq!(report["counts"]["test"], 8);
    assert_eq!(report["counts"]["missing_masks"], 1);
    assert_eq!(report["counts"]["pixel_images"], 7);
    // The default global recipe searches fast, over lists chosen at enrollment.
    let fast = &report["fast_search"];
    let (lists, probed) = (fast["lists"].as_u64(), fast["probed"].as_u64());
    assert!(
        matches!((lists, probed), (Some(lists), Some(probed)) if (1..=lists).contains(&probed)),
        "{fast}"
    );
    assert!(f(&report, "image_auroc") >= 0.9, "{report}");
    assert!(f(&report, "image_f1_max") >= 0.8, "{report}");
    assert!(f(&report, "pixel_auroc") >= 0.9, "{report}");
    let aupro = f(&report, "aupro");
    assert!((0.0..=1.0).contains(&aupro));
    assert!(report["defect_recall"].is_null());
    assert_eq!(report["per_type"]["spot"]["count"], 4);

    let rows = csv_rows(&out);
    assert_eq!(rows.len(), 8);
    assert!(
        rows.iter()
            .all(|r| r.len() == 5 && (r[4] == "PASS" || r[4] == "FAIL"))
    );
    let defects = rows.iter().filter(|r| r[1] == "defect").count();
    assert_eq!(defects, 4);
    assert!(rows.iter().any(|r| r[0] == "test/spot/000.png" && r[2] == "spot"));
    assert_html(&out);
}

#[test]
fn without_masks_only_image_metrics_are_computed() {
    let data = tempfile::tempdir().unwrap();
    mvtec(data.path(), false);
    let out = data.path().join("out");
    let report = bench_ok(data.path(), &out, &["--gallery", "2"]);
    assert!(
        report["pixel_auroc"].is_null() && report["aupro"].is_null(),
        "{report}"
    );
    assert!(f(&report, "image_auroc") >= 0.9);
    assert_eq!(report["counts"]["missing_masks"], 4);
    assert_html(&out);
}

#[test]
fn the_same_data_and_settings_give_the_same_metrics() {
    let data = tempfile::tempdir().unwrap();
    mvtec(data.path(), true);
    let metrics = |out: &str| {
        let mut report = bench_ok(data.path(), &data.path().join(out), &[]);
        let object = report.as_object_mut().unwrap();
        for timing in [
            "enroll_seconds",
            "latency_ms",
            "inference_ms_p50",
            "outside_ms_p50",
            "throughput_fps",
            "peak_rss_mb",
        ] {
            object.remove(timing);
        }
        (
            report,
            std::fs::read_to_string(data.path().join(out).join("scores.csv")).unwrap(),
        )
    };
    assert_eq!(metrics("a"), metrics("b"));
}

#[test]
fn golden_pairs_give_pixel_metrics_and_defect_recall() {
    let data = tempfile::tempdir().unwrap();
    pairs(data.path());
    let out = data.path().join("out");
    let report = bench_ok(data.path(), &out, &[]);
    assert_schema(&report);
    assert_eq!(report["format"], "pairs");
    assert_eq!(report["settings"]["match_mode"], "aligned");
    assert_eq!(report["counts"]["test"], 3);
    assert_eq!(report["counts"]["annotated_defects"], 3);
    // Every frame is defective: no image AUROC.
    assert!(report["image_auroc"].is_null());
    assert!(f(&report, "pixel_auroc") >= 0.9, "{report}");
    let recall = f(&report, "defect_recall");
    assert!((0.0..=1.0).contains(&recall));
    assert!(report["threshold_range"].is_array());
    assert_eq!(csv_rows(&out).len(), 3);
    assert_html(&out);

    // --mode wins over the pairs default.
    let report = bench_ok(data.path(), &data.path().join("global"), &["--mode", "global"]);
    assert_eq!(report["settings"]["match_mode"], "global");
}

#[test]
fn a_malformed_folder_is_refused_naming_what_is_missing() {
    let data = tempfile::tempdir().unwrap();
    let root = data.path();
    let run = |args: &[&str]| {
        let output = bench(args);
        assert_eq!(output.status.code(), Some(2), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        stderr
    };
    let dir = root.to_str().unwrap();
    let stderr = run(&[dir]);
    assert!(
        stderr.contains("fits neither layout") && stderr.contains("train/good"),
        "{stderr}"
    );

    save_gray(&texture(32, 32, 1), &root.join("train/good/a.png"));
    let stderr = run(&[dir]);
    assert!(stderr.contains("test") && stderr.contains("missing"), "{stderr}");

    let pairs_dir = root.join("pairs");
    save_gray(&texture(32, 32, 1), &pairs_dir.join("x/reference.png"));
    let stderr = run(&[pairs_dir.to_str().unwrap()]);
    assert!(stderr.contains("x/ has a reference but no frame"), "{stderr}");

    let stderr = run(&[dir, "--format", "pairs"]);
    assert!(stderr.contains("reference.*"), "{stderr}");
    let missing: PathBuf = root.join("nowhere");
    let stderr = run(&[missing.to_str().unwrap()]);
    assert!(stderr.contains("is not a folder"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_server_the_image_metrics_match_the_engine() {
    let data = tempfile::tempdir().unwrap();
    mvtec(data.path(), true);
    let server = common::TestServer::start(common::config(&data.path().join("server"))).await;
    server.wait_serving("").await;
    let url = format!("http://{}", server.addr);
    let root = data.path().to_path_buf();
    let (remote, local) = tokio::task::spawn_blocking(move || {
        let remote = bench_ok(&root, &root.join("remote"), &["--server", &url]);
        let local = bench_ok(&root, &root.join("local"), &[]);
        (remote, local)
    })
    .await
    .unwrap();
    assert_eq!(remote["runner"], "server");
    assert!(remote["model"].is_null());
    // Scores travel as f32 unchanged: image metrics are identical.
    for key in [
        "image_auroc",
        "image_f1_max",
        "false_reject_rate",
        "escape_rate",
        "threshold",
    ] {
        assert_eq!(remote[key], local[key], "{key}");
    }
    // Pixel metrics come from the RAW_U8 heatmap, quantised and clipped at
    // twice the threshold (here every pixel of a defective frame clips, so
    // they tie): computed, but not equal to the engine's.
    let pixel = f(&remote, "pixel_auroc");
    assert!((0.5..=1.0).contains(&pixel), "{pixel}");
    assert_schema(&remote);
    server.stop().await.unwrap();
}
