//! The fast global search: a candidate pass in a principal-component
//! projection of the bank ([`Projection`], learned when the bank is built),
//! then an exact re-rank of each patch's candidates in all channels.
//!
//! The candidate pass is the brute-force search's matrix product with
//! `dims` instead of `channels` columns (32 of 152: under a quarter of the
//! work), keeping the `candidates` rows nearest in the projection. The
//! re-rank takes them nearest first and stops as soon as the next one's
//! projected distance reaches the best true distance found: a projected
//! distance never exceeds the true one, so no row left can be nearer. It
//! also skips a candidate whose residual (the part outside the projection)
//! is so much longer or shorter than the patch's that
//! `|p(q) - p(b)|^2 + (|r(q)| - |r(b)|)^2`, another lower bound, reaches
//! the best found (up to rounding, which a 1 % slack on the residual term
//! covers).
//!
//! What it returns, per patch, is the true distance to one bank row, so it
//! is never below the exact search's answer, and equals it whenever the
//! nearest row is among the candidates (the tests require that for at least
//! 99 % of patches on clustered, feature-like data; on random data the
//! projection keeps little and the answer is only bounded). When the
//! nearest row `n` is missed, the answer `f` is still bounded: with `c` the
//! projected-nearest candidate, `r` the residual (the part outside the
//! projection) and `e` the exact distance,
//! `f^2 <= |q - c|^2 <= e^2 + |r(q) - r(c)|^2 <= e^2 + (|r(q)| + |r(c)|)^2`,
//! since `c` is no farther than `n` in the projection.

use super::projection::Projection;

/// Projected dimensions of the candidate pass by default.
pub const DEFAULT_DIMS: usize = 32;
/// Candidates kept per patch by default.
pub const DEFAULT_CANDIDATES: usize = 16;
/// Bank rows per product of the candidate pass (patches x BLOCK f32 stay
/// in cache between the product and the scan).
const BLOCK: usize = 512;
/// Lanes of the scan for rows below a patch's worst candidate.
const LANES: usize = 16;
/// The share of the residual term the re-rank's skip test trusts: the
/// residual lengths come from differences of squared norms in f32.
const RESIDUAL_SLACK: f32 = 0.99;

/// The shape of the fast search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastOptions {
    /// Projected dimensions of the candidate pass.
    pub dims: usize,
    /// Candidates re-ranked (at most) per patch.
    pub candidates: usize,
}

impl Default for FastOptions {
    fn default() -> Self {
        Self {
            dims: DEFAULT_DIMS,
            candidates: DEFAULT_CANDIDATES,
        }
    }
}

/// The bank in the projection, built once per bank.
#[derive(Debug, Clone)]
pub struct FastIndex {
    projection: Projection,
    /// The bank rows projected, `dims` per row.
    rows: Vec<f32>,
    /// Their squared norms.
    norms: Vec<f32>,
    /// The length of each row's residual (the part outside the projection).
    residuals: Vec<f32>,
    candidates: usize,
}

impl FastIndex {
    /// Learns the projection on `features` (row-major, `channels` per row)
    /// and projects them.
    pub fn build(features: &[f32], channels: usize, options: FastOptions) -> Self {
        let projection = Projection::learn(features, channels, options.dims);
        let mut rows = Vec::new();
        projection.rows(features, &mut rows);
        let norms: Vec<f32> = rows
            .chunks_exact(projection.dims())
            .map(|r| r.iter().map(|v| v * v).sum())
            .collect();
        let residuals = features
            .chunks_exact(channels)
            .zip(&norms)
            .map(|(row, kept)| (projection.centred_norm(row) - kept).max(0.0).sqrt())
            .collect();
        Self {
            projection,
            rows,
            norms,
            residuals,
            candidates: options.candidates.max(1),
        }
    }

    /// The shape it was built with.
    pub fn options(&self) -> FastOptions {
        FastOptions {
            dims: self.projection.dims(),
            candidates: self.candidates,
        }
    }

    fn bank_rows(&self) -> usize {
        self.norms.len()
    }
}

/// One thread's buffers for the fast search, reused across searches.
#[derive(Debug, Default)]
pub(crate) struct FastPart {
    /// The share's patches projected, `dims` per patch.
    projected: Vec<f32>,
    /// The share's patches as rows of all channels, for the re-rank.
    patches: Vec<f32>,
    /// Products of a block of the candidate pass.
    products: Vec<f32>,
    /// Per patch, `candidates` values of ||b||^2 - 2 q.b (projected).
    values: Vec<f32>,
    /// The bank rows they belong to.
    indices: Vec<u32>,
    /// Per patch, the largest of its candidate values.
    worst: Vec<f32>,
}

/// For each patch of the planar `query` (`channels` planes of `patches`
/// values), writes into `out` the distance to the nearest of its candidates
/// in `bank` (row-major, `channels` per row, indexed by `index`). The
/// patches are split into contiguous shares, one per thread (up to
/// `threads`), each with its own buffers in `parts`.
pub(crate) fn nearest_fast(
    query: &[f32],
    patches: usize,
    bank: &[f32],
    index: &FastIndex,
    threads: usize,
    parts: &mut Vec<FastPart>,
    out: &mut [f32],
) {
    let channels = index.projection.channels();
    assert_eq!(query.len(), channels * patches, "query size; this is a bug");
    assert_eq!(
        bank.len(),
        channels * index.bank_rows(),
        "bank size; this is a bug"
    );
    assert_eq!(out.len(), patches, "output size; this is a bug");
    // At least 64 patches a share: below that a thread costs more than it saves.
    let shares = threads.min(patches.div_ceil(64)).max(1);
    let share = patches.div_ceil(shares).max(1);
    parts.resize_with(shares, FastPart::default);
    if shares == 1 {
        search_share(query, patches, 0..patches, bank, index, &mut parts[0], out);
        return;
    }
    // Scoped threads per search, as the exact search (see there why no pool).
    std::thread::scope(|scope| {
        let mut work = parts.iter_mut().zip(out.chunks_mut(share)).enumerate();
        let here = work.next();
        for (n, (part, out)) in work {
            let range = n * share..n * share + out.len();
            scope.spawn(move || search_share(query, patches, range, bank, index, part, out));
        }
        if let Some((_, (part, out))) = here {
            let range = 0..out.len();
            search_share(query, patches, range, bank, index, part, out);
        }
    });
}

/// The fast search of patches `range` of `query`, on the calling thread.
fn search_share(
    query: &[f32],
    patches: usize,
    range: std::ops::Range<usize>,
    bank: &[f32],
    index: &FastIndex,
    part: &mut FastPart,
    out: &mut [f32],
) {
    candidate_pass(query, patches, range.clone(), index, part);
    let channels = index.projection.channels();
    // The share's patches as rows: the re-rank reads one patch at a time.
    let count = range.len();
    part.patches.clear();
    part.patches.resize(count * channels, 0.0);
    for (c, plane) in query.chunks_exact(patches).enumerate() {
        for (p, &v) in plane[range.clone()].iter().enumerate() {
            part.patches[p * channels + c] = v;
        }
    }
    let k = index.candidates;
    let dims = index.projection.dims();
    for (p, out) in out.iter_mut().enumerate() {
        let projected = &part.projected[p * dims..][..dims];
        let query_norm: f32 = projected.iter().map(|v| v * v).sum();
        let values = &mut part.values[p * k..][..k];
        let indices = &mut part.indices[p * k..][..k];
        sort_candidates(values, indices);
        let patch = &part.patches[p * channels..][..channels];
        let residual = (index.projection.centred_norm(patch) - query_norm)
            .max(0.0)
            .sqrt();
        let mut best = f32::INFINITY;
        for (&value, &row) in values.iter().zip(indices.iter()) {
            // The projected squared distance bounds this row's and every
            // later one's from below.
            let projected = query_norm + value;
            if projected >= best || row == u32::MAX {
                break;
            }
            let row = row as usize;
            let apart = residual - index.residuals[row];
            if projected + RESIDUAL_SLACK * apart * apart >= best {
                continue;
            }
            best = best.min(squared_distance(patch, &bank[row * channels..][..channels]));
        }
        *out = best.sqrt();
    }
}

/// Fills `part.values` and `part.indices` with the `candidates` bank rows
/// nearest each patch of `range` in the projection (unsorted; a patch with
/// fewer rows than that gets index `u32::MAX` at infinity for the rest).
fn candidate_pass(
    query: &[f32],
    patches: usize,
    range: std::ops::Range<usize>,
    index: &FastIndex,
    part: &mut FastPart,
) {
    let count = range.len();
    let (dims, k) = (index.projection.dims(), index.candidates);
    index
        .projection
        .planar(query, patches, range, &mut part.projected);
    part.values.clear();
    part.values.resize(count * k, f32::INFINITY);
    part.indices.clear();
    part.indices.resize(count * k, u32::MAX);
    part.worst.clear();
    part.worst.resize(count, f32::INFINITY);
    part.products.resize(count * BLOCK, 0.0);
    let mut start = 0;
    while start < index.bank_rows() && count > 0 {
        let block = BLOCK.min(index.bank_rows() - start);
        let rows = &index.rows[start * dims..(start + block) * dims];
        let norms = &index.norms[start..start + block];
        // SAFETY: A (count x dims) is `part.projected` row-major, B (dims x
        // block) the block's projected rows transposed (row stride 1,
        // column stride dims), C (count x block) row-major in `products`,
        // resized to count * BLOCK >= count * block.
        unsafe {
            matrixmultiply::sgemm(
                count,
                dims,
                block,
                -2.0,
                part.projected.as_ptr(),
                dims as isize,
                1,
                rows.as_ptr(),
                1,
                dims as isize,
                0.0,
                part.products.as_mut_ptr(),
                block as isize,
                1,
            );
        }
        for (p, products) in part.products.chunks_exact(block).take(count).enumerate() {
            let values = &mut part.values[p * k..][..k];
            let indices = &mut part.indices[p * k..][..k];
            keep_nearest(products, norms, start as u32, values, indices, &mut part.worst[p]);
        }
        start += block;
    }
}

/// Offers rows `first..` with values `products[j] + norms[j]` to one
/// patch's candidates (`values`, `indices`, whose largest value is
/// `worst`): a row below the worst replaces it. The scan compares a run of
/// lanes at once and offers only the rows below.
fn keep_nearest(
    products: &[f32],
    norms: &[f32],
    first: u32,
    values: &mut [f32],
    indices: &mut [u32],
    worst: &mut f32,
) {
    let mut offer = |j: usize, value: f32, worst: &mut f32| {
        if value < *worst {
            let slot = values
                .iter()
                .position(|v| *v == *worst)
                .expect("the worst value is a candidate's; this is a bug");
            values[slot] = value;
            indices[slot] = first + j as u32;
            *worst = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        }
    };
    let mut p = products.chunks_exact(LANES);
    let mut n = norms.chunks_exact(LANES);
    for (run, (p, n)) in (&mut p).zip(&mut n).enumerate() {
        let mut below = 0u32;
        for i in 0..LANES {
            below |= u32::from(p[i] + n[i] < *worst) << i;
        }
        // Only the lanes below, lowest first (each offer may lower the worst).
        while below != 0 {
            let i = below.trailing_zeros() as usize;
            below &= below - 1;
            offer(run * LANES + i, p[i] + n[i], worst);
        }
    }
    let tail = products.len() - p.remainder().len();
    for (i, (p, n)) in p.remainder().iter().zip(n.remainder()).enumerate() {
        offer(tail + i, p + n, worst);
    }
}

/// Sorts one patch's candidates by value, nearest first (insertion sort:
/// a handful of them).
fn sort_candidates(values: &mut [f32], indices: &mut [u32]) {
    for i in 1..values.len() {
        let mut j = i;
        while j > 0 && values[j - 1] > values[j] {
            values.swap(j - 1, j);
            indices.swap(j - 1, j);
            j -= 1;
        }
    }
}

/// ||a - b||^2 with independent lanes, so the compiler vectorises it.
fn squared_distance(a: &[f32], b: &[f32]) -> f32 {
    const WIDTH: usize = 8;
    let mut lanes = [0.0f32; WIDTH];
    let mut x = a.chunks_exact(WIDTH);
    let mut y = b.chunks_exact(WIDTH);
    for (x, y) in (&mut x).zip(&mut y) {
        for i in 0..WIDTH {
            let d = x[i] - y[i];
            lanes[i] += d * d;
        }
    }
    let tail: f32 = x
        .remainder()
        .iter()
        .zip(y.remainder())
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
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
            .filter(|(p, (row, _))| part.indices[p * k..][..k].contains(row))
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
            },
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
            },
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
        let index = FastIndex::build(&bank, channels, FastOptions::default());
        let truth = brute(&queries, &bank, channels);
        let found = recall(&queries, &index, &truth);
        assert!(
            found >= 0.99,
            "the nearest row is a candidate for {found} of the queries"
        );
        let answers = fast(&queries, &bank, &index, 2);
        let mut worst = 0.0f32;
        let mut equal = 0;
        for (f, (_, e)) in answers.iter().zip(&truth) {
            assert!(*f >= e - 1e-3 * e.max(1.0), "{f} below the exact {e}");
            worst = worst.max((f - e) / e.max(1e-6));
            equal += usize::from(f - e <= 1e-3 * e.max(1.0));
        }
        assert!(
            equal as f64 >= 0.99 * answers.len() as f64,
            "{equal} equal answers"
        );
        // A miss lands on a row almost as near.
        assert!(worst < 0.1, "worst relative error {worst}");
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
            },
        );
        let truth = brute(&queries, &bank, channels);
        for (f, (_, e)) in fast(&queries, &bank, &index, 1).iter().zip(&truth) {
            assert!((f - e).abs() < 1e-5, "{f} vs {e}");
        }
    }
}
