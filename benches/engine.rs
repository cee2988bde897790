//! Engine hot paths: the nearest-neighbour search alone (global bank of the
//! default size, aligned with 10 references), and the whole engine call on a
//! 1024x1024 RGB8 raw frame at the default 256x256 input, global and
//! aligned; and batching (two images in one search, two frames in one
//! model run) against one at a time; and the anomaly map (upsampling and
//! blur) by per-axis operators against upsampling then blurring. Needs the
//! ONNX Runtime set-up (`make setup`).

mod support;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use loupe::engine::{Engine, InspectOptions, MatchMode, RecipeSettings};
use loupe::imaging::{self, DecodeLimits, Image};
use loupe::model;
use loupe::runtime::{Lookup, load};
use loupe::scoring::map::{AnomalyMap, MapBuilder, resized_then_blurred, sigma_for};
use loupe::scoring::nearest::{
    Bank, Grid, SearchScratch, nearest_aligned, nearest_global, nearest_global_batch,
};
use support::{bundled_model, frame, goods, taught, test_part, uniform};

fn search(c: &mut Criterion) {
    let mut group = c.benchmark_group("search");
    let (channels, patches) = (152, 32 * 32);
    let query = uniform(channels * patches, 1);
    let bank = Bank::new(uniform(8192 * channels, 2), channels);
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let mut scratch = SearchScratch::new(threads);
    let mut out = vec![0.0; patches];
    group.bench_function("global_8192x152_1024_patches", |b| {
        b.iter(|| nearest_global(black_box(&query), patches, &bank, &mut scratch, &mut out))
    });
    // Two images' patches in one pass over the bank, against two passes.
    let pair = uniform(2 * channels * patches, 4);
    let mut pair_out = vec![0.0; 2 * patches];
    group.bench_function("global_two_images_one_pass", |b| {
        b.iter(|| nearest_global_batch(black_box(&pair), 2, patches, &bank, &mut scratch, &mut pair_out))
    });
    group.bench_function("global_two_images_two_passes", |b| {
        b.iter(|| {
            for (image, out) in pair
                .chunks_exact(channels * patches)
                .zip(pair_out.chunks_exact_mut(patches))
            {
                nearest_global(black_box(image), patches, &bank, &mut scratch, out);
            }
        })
    });
    let grid = Grid {
        channels,
        width: 32,
        height: 32,
    };
    let references = uniform(grid.len() * 10, 3);
    group.bench_function("aligned_10_refs_radius_1", |b| {
        b.iter(|| nearest_aligned(black_box(&query), &references, grid, 1, &mut scratch, &mut out))
    });
    group.finish();
}

fn whole_engine(c: &mut Criterion) {
    let runtime = load(&Lookup::from_process(None)).expect("run `make setup` first");
    let model = model::load(&runtime, &bundled_model()).unwrap().extractor;
    let mut engine = Engine::new(model, DecodeLimits::default());
    let goods = goods(20);
    let test = test_part();
    let mut group = c.benchmark_group("engine_1024x1024_rgb8_at_256");
    group.sample_size(30);
    for (name, mode, count) in [
        ("global_default", MatchMode::Global, 20),
        ("aligned_10_refs", MatchMode::Aligned, 10),
    ] {
        // 256x256 set: the mode would otherwise choose (aligned: the
        // frame's own 1024x1024).
        let settings = RecipeSettings {
            match_mode: mode,
            input_width: 256,
            input_height: 256,
            ..RecipeSettings::default()
        };
        let judge = taught(&mut engine, &settings, &goods[..count]);
        group.bench_function(name, |b| {
            b.iter(|| {
                engine
                    .inspect(&judge, frame(black_box(&test)), &InspectOptions::default())
                    .unwrap()
            })
        });
        if mode == MatchMode::Global {
            // What the service's batching does with two waiting frames
            // (decoded already), against judging them one after the other.
            let images: Vec<Image> = [&test, &goods[0]]
                .iter()
                .map(|rgb| {
                    let mut image = Image::default();
                    imaging::decode(frame(rgb), DecodeLimits::default(), &mut image).unwrap();
                    image
                })
                .collect();
            let options = [InspectOptions::default(); 2];
            group.bench_function("global_two_decoded_frames_one_batch", |b| {
                b.iter(|| engine.inspect_images(&judge, black_box(&images), &options))
            });
            group.bench_function("global_two_decoded_frames_one_by_one", |b| {
                b.iter(|| {
                    for image in &images {
                        engine
                            .inspect_image(&judge, black_box(image), &options[0])
                            .unwrap();
                    }
                })
            });
        }
    }
    group.finish();
}

/// The anomaly map from patch scores: global's 32 x 32 grid at 256 x 256,
/// aligned's 128 x 128 at 1024 x 1024.
fn map(c: &mut Criterion) {
    let mut group = c.benchmark_group("map");
    for (grid, size) in [(32, 256), (128, 1024)] {
        let scores = uniform(grid * grid, 3);
        let sigma = sigma_for(size, size);
        let (mut builder, mut out) = (MapBuilder::default(), AnomalyMap::default());
        group.bench_function(format!("{grid}x{grid}_to_{size}x{size}_axis_operators"), |b| {
            b.iter(|| builder.build(black_box(&scores), grid, grid, size, size, sigma, None, &mut out))
        });
        group.bench_function(
            format!("{grid}x{grid}_to_{size}x{size}_resized_then_blurred"),
            |b| b.iter(|| resized_then_blurred(black_box(&scores), grid, grid, size, size, sigma)),
        );
    }
    group.finish();
}

criterion_group!(benches, search, whole_engine, map);
criterion_main!(benches);
