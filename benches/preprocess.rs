//! Preprocessing benchmark: the fast path (fast_image_resize + vectorised normalisation) against the
//! plain per-pixel baseline, on a full-HD RGB frame cropped and resized to a 256x256 model input.

use criterion::{Criterion, criterion_group, criterion_main};
use loupe::imaging::{Channels, Image, Normalize, Preprocessor, Roi};

fn frame() -> Image {
    let (width, height) = (1920u32, 1080u32);
    let mut data = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height {
        for x in 0..width {
            data.extend_from_slice(&[(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8]);
        }
    }
    Image {
        width,
        height,
        channels: Channels::Rgb,
        data,
    }
}

fn preprocess(c: &mut Criterion) {
    let image = frame();
    let norm = Normalize {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
    let roi = Some(Roi {
        x: 320,
        y: 60,
        width: 1280,
        height: 960,
    });
    let mut out = vec![0.0f32; 3 * 256 * 256];
    let mut group = c.benchmark_group("preprocess 1920x1080 RGB, ROI 1280x960 -> 256x256");
    let mut pre = Preprocessor::new();
    group.bench_function("fast", |b| {
        b.iter(|| pre.run(&image, roi, 256, 256, &norm, &mut out).unwrap())
    });
    group.bench_function("plain", |b| {
        b.iter(|| Preprocessor::run_plain(&image, roi, 256, 256, &norm, &mut out).unwrap())
    });
    group.finish();
}

criterion_group!(benches, preprocess);
criterion_main!(benches);
