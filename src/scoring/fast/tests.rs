//! The fast search against brute force: on random data, on clustered
//! feature-like data, and at the edges.

use super::*;

/// xorshift values in 0..1.
fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

/// Roughly Gaussian (sum of four uniforms, unit variance).
fn gaussian(n: usize, seed: u64) -> Vec<f32> {
    uniform(4 * n, seed)
        .chunks_exact(4)
        .map(|u| (u.iter().sum::<f32>() - 2.0) * 3f32.sqrt())
        .collect()
}

/// Feature-like rows: ReLU of a few dozen latent factors with decaying
/// scales mixed into `channels`, around `clusters` centres (kinds of
/// texture), plus a little noise in every channel. Rows of one
/// generator share the mixing, so bank and queries are alike.
fn clustered(rows: usize, channels: usize, seed: u64, offset: u64) -> Vec<f32> {
    const LATENT: usize = 48;
    const CLUSTERS: usize = 40;
    let mixing = gaussian(LATENT * channels, seed);
    let centres = gaussian(CLUSTERS * LATENT, seed + 1);
    let picks = uniform(rows, seed + 2 + offset);
    let spread = gaussian(rows * LATENT, seed + 3 + offset);
    let noise = gaussian(rows * channels, seed + 4 + offset);
    let mut out = vec![0.0; rows * channels];
    for r in 0..rows {
        let cluster = ((picks[r] * CLUSTERS as f32) as usize).min(CLUSTERS - 1);
        for l in 0..LATENT {
            let scale = 1.0 / (1.0 + l as f32 / 4.0);
            let factor = scale * (centres[cluster * LATENT + l] + 0.35 * spread[r * LATENT + l]);
            for c in 0..channels {
                out[r * channels + c] += factor * mixing[l * channels + c];
            }
        }
        for c in 0..channels {
            let v = &mut out[r * channels + c];
            *v = v.max(0.0) + 0.05 * noise[r * channels + c];
        }
    }
    out
}

fn planar(rows: &[f32], channels: usize) -> Vec<f32> {
    let count = rows.len() / channels;
    (0..channels)
        .flat_map(|c| (0..count).map(move |p| rows[p * channels + c]))
        .collect()
}

/// The nearest bank row of every query row and its distance, by brute
/// force (one full product, then the row minimum).
fn brute(queries: &[f32], bank: &[f32], channels: usize) -> Vec<(u32, f32)> {
    let (q, b) = (queries.len() / channels, bank.len() / channels);
    let mut products = vec![0.0f32; q * b];
    // SAFETY: both operands row-major within their slices; C fits.
    unsafe {
        matrixmultiply::sgemm(
            q,
            channels,
            b,
            1.0,
            queries.as_ptr(),
            channels as isize,
            1,
            bank.as_ptr(),
            1,
            channels as isize,
            0.0,
            products.as_mut_ptr(),
            b as isize,
            1,
        );
    }
    let norm = |r: &[f32]| r.iter().map(|v| v * v).sum::<f32>();
    let bank_norms: Vec<f32> = bank.chunks_exact(channels).map(norm).collect();
    queries
        .chunks_exact(channels)
        .zip(products.chunks_exact(b))
        .map(|(query, products)| {
            let (row, _) = products
                .iter()
                .zip(&bank_norms)
                .map(|(p, n)| n - 2.0 * p)
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .expect("a bank row");
            let row_values = &bank[row * channels..][..channels];
            (row as u32, squared_distance(query, row_values).sqrt())
        })
        .collect()
}

fn fast(queries: &[f32], bank: &[f32], index: &FastIndex, threads: usize) -> Vec<f32> {
    let channels = index.projection.channels();
    let patches = queries.len() / channels;
    let mut out = vec![0.0; patches];
    let mut parts = Vec::new();
    nearest_fast(
        &planar(queries, channels),
        patches,
        bank,
        index,
        threads,
        &mut parts,
        &mut out,
    );
    out
}

/// The share of queries whose true nearest row is among the candidates.
fn recall(queries: &[f32], index: &FastIndex, truth: &[(u32, f32)]) -> f64 {
    let channels = index.projection.channels();
    let patches = queries.len() / channels;
    let mut part = FastPart::default();
    candidate_pass(&planar(queries, channels), patches, 0..patches, index, &mut part);
    let k = index.candidates;
    let found = truth
        .iter()
        .enumerate()
        .filter(|(p, (row, _))| {
            part.indices[p * k..][..k]
                .iter()
                .any(|&position| position != u32::MAX && index.ids[position as usize] == *row)
        })
        .count();
    found as f64 / patches as f64
}

#[test]
fn with_every_dimension_kept_it_is_the_exact_search() {
    let channels = 12;
    let bank = uniform(700 * channels, 1);
    let queries = uniform(150 * channels, 2);
    let index = FastIndex::build(
        &bank,
        channels,
        FastOptions {
            dims: channels,
            candidates: 4,
            list_rows: 0,
        },
        None,
    );
    let truth = brute(&queries, &bank, channels);
    assert_eq!(recall(&queries, &index, &truth), 1.0);
    for threads in [1, 3] {
        for (f, (_, e)) in fast(&queries, &bank, &index, threads).iter().zip(&truth) {
            assert!((f - e).abs() < 1e-4, "{threads} threads: {f} vs {e}");
        }
    }
}

#[test]
fn on_random_data_it_is_never_below_exact_and_within_the_bound() {
    // Uniform data has no dominant directions: the projection keeps
    // little, candidates are often missed, and only the bound holds.
    let channels = 40;
    let bank = uniform(1200 * channels, 3);
    let queries = uniform(300 * channels, 4);
    let index = FastIndex::build(
        &bank,
        channels,
        FastOptions {
            dims: 8,
            candidates: 8,
            list_rows: 0,
        },
        None,
    );
    let truth = brute(&queries, &bank, channels);
    let widest = bank
        .chunks_exact(channels)
        .map(|row| index.projection.residual(row))
        .fold(0.0, f32::max);
    let answers = fast(&queries, &bank, &index, 2);
    let mut missed = 0;
    for ((f, (_, e)), query) in answers.iter().zip(&truth).zip(queries.chunks_exact(channels)) {
        assert!(*f >= e - 1e-4, "{f} below the exact {e}");
        let bound = (e * e + (index.projection.residual(query) + widest).powi(2)).sqrt();
        assert!(*f <= bound + 1e-4, "{f} above the bound {bound}");
        missed += usize::from(f - e > 1e-4);
    }
    // The bound is not vacuous here: some answers do differ.
    assert!(missed > 0);
}

#[test]
fn on_clustered_feature_like_data_the_nearest_row_is_a_candidate() {
    let channels = 152;
    let bank = clustered(4096, channels, 10, 0);
    let queries = clustered(1024, channels, 10, 100);
    let truth = brute(&queries, &bank, channels);
    let whole = FastOptions {
        list_rows: 0,
        ..FastOptions::default()
    };
    // With the bank in one list, a miss is bounded by the projection
    // (see the module) and lands on a row almost as near; with lists a
    // miss may land in a farther list, so only the share of misses and
    // their mean error are bounded.
    for (options, worst_allowed) in [(whole, 0.1), (FastOptions::default(), 0.3)] {
        let index = FastIndex::build(&bank, channels, options, None);
        let found = recall(&queries, &index, &truth);
        assert!(
            found >= 0.99,
            "{options:?}: the nearest row is a candidate for {found} of the queries"
        );
        let answers = fast(&queries, &bank, &index, 2);
        let (mut worst, mut total, mut equal) = (0.0f32, 0.0f32, 0);
        for (f, (_, e)) in answers.iter().zip(&truth) {
            assert!(*f >= e - 1e-3 * e.max(1.0), "{f} below the exact {e}");
            let error = (f - e) / e.max(1e-6);
            worst = worst.max(error);
            total += error;
            equal += usize::from(f - e <= 1e-3 * e.max(1.0));
        }
        assert!(
            equal as f64 >= 0.99 * answers.len() as f64,
            "{options:?}: {equal} equal answers"
        );
        let mean = total / answers.len() as f32;
        assert!(mean < 1e-3, "{options:?}: mean relative error {mean}");
        assert!(worst < worst_allowed, "{options:?}: worst relative error {worst}");
    }
}

#[test]
fn candidates_are_the_projected_nearest_rows() {
    let values = [5.0, 1.0, 4.0, 2.0, 3.0, 0.5, 6.0];
    let norms = [0.0; 7];
    let (mut kept, mut rows, mut worst) = ([f32::INFINITY; 3], [u32::MAX; 3], f32::INFINITY);
    keep_nearest(&values, &norms, 10, &mut kept, &mut rows, &mut worst);
    sort_candidates(&mut kept, &mut rows);
    assert_eq!(kept, [0.5, 1.0, 2.0]);
    assert_eq!(rows, [15, 11, 13]);
    assert_eq!(worst, 2.0);
    // Long runs go through the lane test.
    let many: Vec<f32> = (0..100).map(|i| 100.0 - i as f32).collect();
    keep_nearest(&many, &[0.0; 100], 0, &mut kept, &mut rows, &mut worst);
    sort_candidates(&mut kept, &mut rows);
    assert_eq!(kept, [0.5, 1.0, 1.0]);
    assert_eq!(rows, [15, 11, 99]);
}

#[test]
fn a_bank_smaller_than_the_candidates_is_searched_whole() {
    let channels = 6;
    let bank = uniform(3 * channels, 5);
    let queries = uniform(5 * channels, 6);
    let index = FastIndex::build(
        &bank,
        channels,
        FastOptions {
            dims: 2,
            candidates: 8,
            list_rows: DEFAULT_LIST_ROWS,
        },
        None,
    );
    let truth = brute(&queries, &bank, channels);
    for (f, (_, e)) in fast(&queries, &bank, &index, 1).iter().zip(&truth) {
        assert!((f - e).abs() < 1e-5, "{f} vs {e}");
    }
}

#[test]
fn a_bank_of_near_duplicates_still_finds_new_rows_nearest() {
    // Every row twice, a hair apart, as a bank that kept every patch holds
    // neighbouring cells of one frame: each row's nearest other row is its
    // twin, in its own list, so the bank's rows alone would ask for few
    // probes. New rows must still find their nearest row.
    let channels = 152;
    let base = clustered(2048, channels, 20, 0);
    let jitter = gaussian(base.len(), 21);
    let bank: Vec<f32> = base
        .chunks_exact(channels)
        .zip(jitter.chunks_exact(channels))
        .flat_map(|(row, noise)| {
            let twin: Vec<f32> = row.iter().zip(noise).map(|(v, n)| v + 1e-3 * n).collect();
            row.iter().copied().chain(twin)
        })
        .collect();
    let queries = clustered(1024, channels, 20, 100);
    let index = FastIndex::build(&bank, channels, FastOptions::default(), None);
    let (lists, probes) = index.lists();
    let found = recall(&queries, &index, &brute(&queries, &bank, channels));
    assert!(
        found >= 0.99,
        "{probes} of {lists} lists probed: the nearest row is a candidate for {found} of the queries"
    );
    assert!(probes * 4 >= lists, "{probes} of {lists} lists probed");
}
