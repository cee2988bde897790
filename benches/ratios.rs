//! The time ratios of issue 11 in one run, on the same frames: the feature
//! model alone (an ONNX session like the engine's, run on the test frame's
//! preprocessed input tensor), the search alone on the features the model
//! produced for that frame (global: exact and fast, against the bank the
//! recipe was taught; aligned: its one search, against the reference
//! grids), the whole engine call (`Engine::inspect` on the raw frame), and
//! unary `Inspect` over loopback against the same recipe on a served copy.
//! Both modes with the default settings: global (fast search, about 256 x
//! 256 input) taught 20 generated parts, aligned (the frame's own size)
//! taught 10. Every side runs in turn in each of several rounds, so that a
//! slow moment of the machine does not fall on one side only; the table
//! gives the medians and their ratios. Needs the ONNX Runtime set-up.
//!
//! Run: `cargo bench --bench ratios`.

mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use loupe::config::DEFAULT_MAX_BATCH;
use loupe::engine::{Engine, Features, InspectOptions, Judge, MatchMode, RecipeSettings, SearchMode};
use loupe::imaging::DecodeLimits;
use loupe::model::{self, FeatureExtractor};
use loupe::proto::{self, InspectRequest};
use loupe::runtime::{Lookup, load};
use loupe::scoring::nearest::{Bank, SearchScratch, nearest_aligned, nearest_global};
use support::{Served, bundled_model, frame, goods, inspect_request, median, ms, taught, test_part};

/// Good parts the global recipe is taught, the first of them the aligned one.
const GOODS: u64 = 20;
const ALIGNED_GOODS: usize = 10;
const ROUNDS: usize = 5;
/// Frames per side per round.
const GLOBAL_RUNS: usize = 40;
const ALIGNED_RUNS: usize = 5;

/// `runs` timings of `work`.
fn timed(runs: usize, mut work: impl FnMut()) -> Vec<Duration> {
    (0..runs)
        .map(|_| {
            let started = Instant::now();
            work();
            started.elapsed()
        })
        .collect()
}

/// One recipe measured every way: what the engine judges with, and the
/// test frame's input tensor and features for the model and the search
/// alone.
struct Recipe {
    name: &'static str,
    judge: Judge,
    test: Features,
    /// Global: the exact and the fast search over the taught bank.
    banks: Option<(Bank, Bank)>,
    request: InspectRequest,
    runs: usize,
}

/// Samples of each side of one recipe, over all rounds.
#[derive(Default)]
struct Samples {
    model: Vec<Duration>,
    exact: Vec<Duration>,
    fast: Vec<Duration>,
    engine: Vec<Duration>,
    /// The model's share as the engine timed it inside those calls.
    engine_model: Vec<Duration>,
    service: Vec<Duration>,
}

/// The medians of one recipe's sides.
struct Medians {
    model: Duration,
    exact: Duration,
    fast: Option<Duration>,
    engine: Duration,
    engine_model: Duration,
    service: Duration,
}

impl Samples {
    fn medians(self) -> Medians {
        Medians {
            model: median(self.model),
            exact: median(self.exact),
            fast: (!self.fast.is_empty()).then(|| median(self.fast)),
            engine: median(self.engine),
            engine_model: median(self.engine_model),
            service: median(self.service),
        }
    }
}

/// What measures the sides: the engine, a second session of the same model
/// for the model alone, the search's buffers, and the served copy.
struct Bench {
    engine: Engine,
    model: Box<dyn FeatureExtractor>,
    scratch: SearchScratch,
    features: Vec<f32>,
    scores: Vec<f32>,
    rgb: Vec<u8>,
    served: Served,
    tokio: tokio::runtime::Runtime,
}

impl Bench {
    /// Runs every side of `recipe` `runs` times, appending to `samples`.
    fn round(&mut self, recipe: &Recipe, runs: usize, samples: &mut Samples) {
        let (width, height) = recipe.test.input_size;
        let (input, ..) = recipe
            .test
            .input
            .as_ref()
            .expect("the test frame's input; this is a bug");
        let (model, features) = (&mut self.model, &mut self.features);
        samples.model.extend(timed(runs, || {
            model
                .run(black_box(input), 1, height as usize, width as usize, features)
                .unwrap();
        }));
        let grid = recipe.test.grid;
        let cells = grid.width * grid.height;
        let (query, scratch, scores) = (&recipe.test.data, &mut self.scratch, &mut self.scores);
        scores.resize(cells, 0.0);
        match &recipe.banks {
            Some((exact, fast)) => {
                samples.exact.extend(timed(runs, || {
                    nearest_global(black_box(query), cells, exact, scratch, scores)
                }));
                samples.fast.extend(timed(runs, || {
                    nearest_global(black_box(query), cells, fast, scratch, scores)
                }));
            }
            None => {
                let (references, radius) = (
                    &recipe.judge.reference().features,
                    recipe.judge.settings().neighborhood as usize,
                );
                samples.exact.extend(timed(runs, || {
                    nearest_aligned(black_box(query), references, grid, radius, scratch, scores)
                }));
            }
        }
        for _ in 0..runs {
            let started = Instant::now();
            let inspection = self
                .engine
                .inspect(
                    &recipe.judge,
                    frame(black_box(&self.rgb)),
                    &InspectOptions::default(),
                )
                .unwrap();
            samples.engine.push(started.elapsed());
            samples.engine_model.push(inspection.timings.inference);
        }
        let served = &mut self.served;
        samples
            .service
            .extend(self.tokio.block_on(served.unary(&recipe.request, runs)));
    }
}

/// Teaches the engine and the served copy `settings` on `goods` as recipe
/// `name`, and extracts the test frame's input and features.
fn recipe(bench: &mut Bench, name: &'static str, settings: &RecipeSettings, goods: &[Vec<u8>]) -> Recipe {
    let judge = taught(&mut bench.engine, settings, goods);
    let test = bench.engine.extract(settings, frame(&bench.rgb)).unwrap();
    let banks = (settings.match_mode == MatchMode::Global).then(|| {
        let reference = judge.reference();
        let fast = judge.bank().expect("a global recipe has a bank").clone();
        assert_eq!(
            fast.search(),
            SearchMode::Fast,
            "the default search is the fast one"
        );
        (
            Bank::new(reference.features.clone(), reference.channels as usize),
            fast,
        )
    });
    let served = proto::RecipeSettings {
        match_mode: match settings.match_mode {
            MatchMode::Global => proto::MatchMode::Global,
            MatchMode::Aligned => proto::MatchMode::Aligned,
        } as i32,
        ..Default::default()
    };
    bench
        .tokio
        .block_on(bench.served.teach(name, Some(served), goods));
    let runs = match settings.match_mode {
        MatchMode::Global => GLOBAL_RUNS,
        MatchMode::Aligned => ALIGNED_RUNS,
    };
    Recipe {
        name,
        request: inspect_request(name, &bench.rgb),
        judge,
        test,
        banks,
        runs,
    }
}

/// How often the fast search gave the exact distance for the test frame's
/// patches, as a share.
fn exact_answers(bench: &mut Bench, recipe: &Recipe) -> Option<f64> {
    let (exact, fast) = recipe.banks.as_ref()?;
    let cells = recipe.test.grid.width * recipe.test.grid.height;
    let (mut truth, mut found) = (vec![0.0; cells], vec![0.0; cells]);
    nearest_global(&recipe.test.data, cells, exact, &mut bench.scratch, &mut truth);
    nearest_global(&recipe.test.data, cells, fast, &mut bench.scratch, &mut found);
    let same = found
        .iter()
        .zip(&truth)
        .filter(|(f, e)| **f - **e <= 1e-3 * e.max(1.0))
        .count();
    Some(same as f64 / cells as f64)
}

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`:
    // the measurement only makes sense in an optimised `cargo bench` build.
    if !std::env::args().any(|a| a == "--bench") {
        println!("ratios bench: skipped (run it with `cargo bench --bench ratios`)");
        return;
    }
    let started = Instant::now();
    let runtime = load(&Lookup::from_process(None)).expect("run `make setup` first");
    let goods = goods(GOODS);
    let engine = Engine::new(
        model::load(&runtime, &bundled_model()).unwrap().extractor,
        DecodeLimits::default(),
    );
    let model = model::load(&runtime, &bundled_model()).unwrap().extractor;
    let scratch = SearchScratch::new(model.threads());
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let served = tokio.block_on(Served::bare(&runtime, DEFAULT_MAX_BATCH, false));
    let mut bench = Bench {
        engine,
        model,
        scratch,
        features: Vec::new(),
        scores: Vec::new(),
        rgb: test_part(),
        served,
        tokio,
    };
    let aligned = RecipeSettings {
        match_mode: MatchMode::Aligned,
        ..RecipeSettings::default()
    };
    let recipes = [
        recipe(&mut bench, "global", &RecipeSettings::default(), &goods),
        recipe(&mut bench, "aligned", &aligned, &goods[..ALIGNED_GOODS]),
    ];
    let taught_in = started.elapsed();
    let mut samples: Vec<Samples> = recipes.iter().map(|_| Samples::default()).collect();
    // One of each side first: sessions and buffers sized for each input.
    for recipe in &recipes {
        bench.round(recipe, 1, &mut Samples::default());
    }
    for _ in 0..ROUNDS {
        for (recipe, samples) in recipes.iter().zip(&mut samples) {
            bench.round(recipe, recipe.runs, samples);
        }
    }
    let answers: Vec<Option<f64>> = recipes.iter().map(|r| exact_answers(&mut bench, r)).collect();
    let Bench { served, tokio, .. } = bench;
    tokio.block_on(served.stop());

    println!(
        "1024x1024 RGB8 raw frame, bundled model on 2 threads, default settings; taught in {:.1} s, then \
         {ROUNDS} alternating rounds ({GLOBAL_RUNS} frames a side a round global, {ALIGNED_RUNS} aligned), \
         medians; {:.1} s in all",
        taught_in.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    for recipe in &recipes {
        let reference = recipe.judge.reference();
        let (width, height) = recipe.test.input_size;
        let grid = recipe.test.grid;
        let bank = match reference.mode {
            MatchMode::Global => {
                let lists = match recipe.judge.bank().and_then(|bank| bank.fast_lists()) {
                    Some((lists, probes)) => format!(", {probes} of {lists} lists probed"),
                    None => String::new(),
                };
                format!(
                    "bank {} x {}{lists}",
                    reference.features.len() / grid.channels,
                    grid.channels
                )
            }
            MatchMode::Aligned => format!("radius {}", recipe.judge.settings().neighborhood),
        };
        println!(
            "{}: {} good parts, {width}x{height} input, {}x{} grid, {bank}, search {}",
            recipe.name,
            reference.image_count,
            grid.width,
            grid.height,
            match reference.mode {
                MatchMode::Global => recipe.judge.settings().search.name(),
                MatchMode::Aligned => "aligned (one kind)",
            },
        );
    }
    let medians: Vec<Medians> = samples.into_iter().map(Samples::medians).collect();
    let cell = |value: Option<String>| value.unwrap_or_else(|| "-".into());
    let row = |label: &str, value: &dyn Fn(&Medians) -> Option<String>| {
        let values: Vec<String> = medians.iter().map(|m| cell(value(m))).collect();
        println!("| {label} | {} |", values.join(" | "));
    };
    let names: Vec<&str> = recipes.iter().map(|r| r.name).collect();
    println!("\n| median, ms | {} |", names.join(" | "));
    println!("|---|{}", "---|".repeat(names.len()));
    let time = |d: Duration| Some(format!("{:.2}", ms(d)));
    let ratio = |a: Duration, b: Duration| Some(format!("{:.2}", a.as_secs_f64() / b.as_secs_f64()));
    row("model alone", &|m| time(m.model));
    row("search alone, exact (aligned: within the radius)", &|m| {
        time(m.exact)
    });
    row("search alone, fast", &|m| m.fast.and_then(time));
    row("engine (`Engine::inspect`)", &|m| time(m.engine));
    row("of which the model, as the engine timed it", &|m| {
        time(m.engine_model)
    });
    row("service (unary `Inspect` over loopback)", &|m| time(m.service));
    row("**engine / model**", &|m| ratio(m.engine, m.model));
    row("search exact / model (aligned: search / model)", &|m| {
        ratio(m.exact, m.model)
    });
    row("search fast / model", &|m| {
        m.fast.and_then(|fast| ratio(fast, m.model))
    });
    row("fast / exact", &|m| m.fast.and_then(|fast| ratio(fast, m.exact)));
    row("**service / engine**", &|m| ratio(m.service, m.engine));
    row("service / model", &|m| ratio(m.service, m.model));
    let shares: Vec<String> = answers
        .iter()
        .map(|share| cell(share.map(|s| format!("{:.1} %", 100.0 * s))))
        .collect();
    println!(
        "| fast search's exact answers, test frame's patches | {} |",
        shares.join(" | ")
    );
}
