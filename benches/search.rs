//! The global search alone, exact against fast, on the default bank size
//! (8192 x 152) and one 32 x 32 frame's patches, on feature-like clustered
//! rows: criterion's timings, then a summary line per variant of the fast
//! search (projected dimensions, candidates, rows per inverted list) with its median time, the
//! ratio to exact measured in the same run, and how often it found the
//! exact answer. Needs no model.

mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use loupe::scoring::fast::FastOptions;
use loupe::scoring::nearest::{Bank, SearchScratch, nearest_global};
use support::{clustered, planar};

const CHANNELS: usize = 152;
const PATCHES: usize = 32 * 32;
const ROWS: usize = 8192;

/// The fast variants measured: the default first.
const VARIANTS: [FastOptions; 5] = [
    FastOptions {
        dims: 48,
        candidates: 16,
        list_rows: 128,
    },
    FastOptions {
        dims: 48,
        candidates: 16,
        list_rows: 0,
    },
    FastOptions {
        dims: 48,
        candidates: 16,
        list_rows: 64,
    },
    FastOptions {
        dims: 48,
        candidates: 16,
        list_rows: 256,
    },
    FastOptions {
        dims: 32,
        candidates: 16,
        list_rows: 128,
    },
];

struct Setup {
    rows: Vec<f32>,
    query: Vec<f32>,
    scratch: SearchScratch,
    out: Vec<f32>,
}

fn setup() -> Setup {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    Setup {
        rows: clustered(ROWS, CHANNELS, 7, 0),
        query: planar(&clustered(PATCHES, CHANNELS, 7, 1000), CHANNELS),
        scratch: SearchScratch::new(threads),
        out: vec![0.0; PATCHES],
    }
}

fn name(options: FastOptions) -> String {
    let lists = match options.list_rows {
        0 => "one_list".to_owned(),
        rows => format!("lists_of_{rows}"),
    };
    format!(
        "fast_{}dims_{}candidates_{lists}",
        options.dims, options.candidates
    )
}

fn search(c: &mut Criterion) {
    let mut s = setup();
    let mut group = c.benchmark_group("search_8192x152_1024_patches");
    let exact = Bank::new(s.rows.clone(), CHANNELS);
    group.bench_function("exact", |b| {
        b.iter(|| nearest_global(black_box(&s.query), PATCHES, &exact, &mut s.scratch, &mut s.out))
    });
    for options in VARIANTS {
        let fast = Bank::with_fast(s.rows.clone(), CHANNELS, options, None);
        group.bench_function(name(options), |b| {
            b.iter(|| nearest_global(black_box(&s.query), PATCHES, &fast, &mut s.scratch, &mut s.out))
        });
    }
    group.finish();
}

/// Median of `runs` timed searches of `bank`, after one warm-up.
fn median(s: &mut Setup, bank: &Bank, runs: usize) -> Duration {
    nearest_global(&s.query, PATCHES, bank, &mut s.scratch, &mut s.out);
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            nearest_global(black_box(&s.query), PATCHES, bank, &mut s.scratch, &mut s.out);
            started.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

/// The summary: each variant against exact, timed in turn in this run.
fn ratios(_: &mut Criterion) {
    let mut s = setup();
    let runs = 41;
    let exact = Bank::new(s.rows.clone(), CHANNELS);
    let exact_time = median(&mut s, &exact, runs);
    nearest_global(&s.query, PATCHES, &exact, &mut s.scratch, &mut s.out);
    let truth = s.out.clone();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("search alone, {ROWS} x {CHANNELS} bank, {PATCHES} patches, median of {runs}:");
    println!("  {:<44} {:7.2} ms", "exact", ms(exact_time));
    for options in VARIANTS {
        let started = Instant::now();
        let fast = Bank::with_fast(s.rows.clone(), CHANNELS, options, None);
        let built = started.elapsed();
        let time = median(&mut s, &fast, runs);
        let same = s
            .out
            .iter()
            .zip(&truth)
            .filter(|(f, e)| **f - **e <= 1e-3 * e.max(1.0))
            .count();
        let worst = s
            .out
            .iter()
            .zip(&truth)
            .map(|(f, e)| (f - e) / e.max(1e-6))
            .fold(0.0f32, f32::max);
        let (lists, probes) = fast.fast_lists().unwrap_or((0, 0));
        println!(
            "  {:<44} {:7.2} ms  fast/exact {:.3}  exact answers {:.2} %  worst relative error {:.4}  index built in {:.0} ms ({lists} lists, {probes} probed)",
            name(options),
            ms(time),
            time.as_secs_f64() / exact_time.as_secs_f64(),
            100.0 * same as f64 / PATCHES as f64,
            worst,
            ms(built),
        );
    }
}

criterion_group!(benches, search, ratios);
criterion_main!(benches);
