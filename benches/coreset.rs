//! Coreset selection at the default recipe's scale: 51,200 patches of 152 channels
//! (e.g. 200 images x 16x16 cells) down to 5,120, with a 64-dimension projection.

mod support;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use loupe::reference::coreset::{CoresetOptions, project, select};
use support::uniform;

fn coreset(c: &mut Criterion) {
    let (rows, dims) = (51_200, 152);
    let features = uniform(rows * dims, 0x5eed);
    let options = CoresetOptions {
        target: 5_120,
        projection_dims: 64,
        seed: 7,
    };
    let mut group = c.benchmark_group("coreset");
    group.sample_size(10);
    group.bench_function("project 51200x152 -> 64", |b| {
        b.iter(|| project(black_box(&features), dims, 64, 7))
    });
    group.bench_function("select 51200x152 -> 5120 (projection 64)", |b| {
        b.iter(|| select(black_box(&features), dims, options))
    });
    group.finish();
}

criterion_group!(benches, coreset);
criterion_main!(benches);
