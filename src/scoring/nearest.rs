//! Nearest-neighbour search of a frame's patch features in the golden
//! reference. `global` uses the distance trick
//! ||a - b||^2 = ||a||^2 + ||b||^2 - 2 a.b, so the search is a SIMD matrix
//! product (matrixmultiply) per block of bank rows plus a row minimum, with
//! the bank shared out over threads.
//! A bank built for the fast search ([`Bank::with_search`]) answers
//! through [`crate::scoring::fast`] instead: a candidate pass in a
//! projection and an exact re-rank.
//! `aligned` compares each patch only with reference cells near the same
//! place, plane by plane.

use std::sync::Arc;

use super::fast::{self, FastIndex, FastOptions, FastPart};
use super::search::SearchMode;

/// Bank rows per matrix product: the products block (patches x BLOCK f32,
/// 2 MB for 1024 patches) stays in cache between product and minimum.
/// On 2 cores, 1024 patches against 8192 rows took about 8.5 ms with blocks
/// of 128, 7.1-7.5 ms with 256 or 512, 7.6 ms with 1024, 7.8 ms with 4096.
const BLOCK: usize = 512;

/// The global memory bank: patch features as rows, with their squared norms,
/// and for the fast search the bank in its projection. The rows are shared
/// with the reference they came from, not copied.
#[derive(Debug, Clone, Default)]
pub struct Bank {
    features: Arc<[f32]>,
    norms: Vec<f32>,
    channels: usize,
    fast: Option<Arc<FastIndex>>,
}

impl Bank {
    /// Wraps `features` (rows x `channels`, row-major) for the exact search.
    pub fn new(features: impl Into<Arc<[f32]>>, channels: usize) -> Self {
        let features = features.into();
        let norms = features.chunks_exact(channels.max(1)).map(squared_norm).collect();
        Self {
            features,
            norms,
            channels,
            fast: None,
        }
    }

    /// Wraps `features` for `search`: the fast search learns its projection
    /// on them here (tens of milliseconds for 8192 x 152), each patch to
    /// probe `probes` of its lists where given (see [`FastIndex::build`]).
    pub fn with_search(
        features: impl Into<Arc<[f32]>>,
        channels: usize,
        search: SearchMode,
        probes: Option<usize>,
    ) -> Self {
        match search {
            SearchMode::Exact => Self::new(features, channels),
            SearchMode::Fast => Self::with_fast(features, channels, FastOptions::default(), probes),
        }
    }

    /// Wraps `features` for the fast search shaped by `options`.
    pub fn with_fast(
        features: impl Into<Arc<[f32]>>,
        channels: usize,
        options: FastOptions,
        probes: Option<usize>,
    ) -> Self {
        let mut bank = Self::new(features, channels);
        if channels > 0 && !bank.features.is_empty() {
            let index = FastIndex::build(&bank.features, channels, options, probes);
            let (lists, probes) = index.lists();
            tracing::debug!(rows = bank.rows(), lists, probes, "fast search index built");
            bank.fast = Some(Arc::new(index));
        }
        bank
    }

    /// The search it answers with.
    pub fn search(&self) -> SearchMode {
        if self.fast.is_some() {
            SearchMode::Fast
        } else {
            SearchMode::Exact
        }
    }

    /// For the fast search, its inverted lists and how many each patch
    /// probes.
    pub fn fast_lists(&self) -> Option<(usize, usize)> {
        self.fast.as_ref().map(|index| index.lists())
    }

    /// For the fast search, makes each patch probe `probes` lists (at
    /// least one, at most all); nothing for the exact search.
    pub fn set_probes(&mut self, probes: usize) {
        if let Some(index) = &mut self.fast {
            Arc::make_mut(index).set_probes(probes);
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.norms.len()
    }

    /// Feature channels per row.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// The rows, row-major.
    pub fn features(&self) -> &[f32] {
        &self.features
    }
}

fn squared_norm(row: &[f32]) -> f32 {
    row.iter().map(|v| v * v).sum()
}

/// Buffers reused across searches, and how many threads a global search
/// may use.
#[derive(Debug)]
pub struct SearchScratch {
    threads: usize,
    parts: Vec<PartScratch>,
    norms: Vec<f32>,
    best: Vec<f32>,
    plane: Vec<f32>,
    gathered: Vec<f32>,
    fast: Vec<FastPart>,
}

/// One thread's buffers.
#[derive(Debug, Default)]
struct PartScratch {
    products: Vec<f32>,
    best: Vec<f32>,
}

impl SearchScratch {
    /// Buffers for searches split over up to `threads` threads.
    pub fn new(threads: usize) -> Self {
        Self {
            threads: threads.max(1),
            parts: Vec::new(),
            norms: Vec::new(),
            best: Vec::new(),
            plane: Vec::new(),
            gathered: Vec::new(),
            fast: Vec::new(),
        }
    }
}

impl Default for SearchScratch {
    /// One thread.
    fn default() -> Self {
        Self::new(1)
    }
}

/// For each patch of `query` (one image, planar: `channels` planes of
/// `patches` values, as the model writes them), writes the Euclidean
/// distance to the nearest bank row into `out` (`patches` values).
///
/// The bank is split into contiguous shares, one per thread; each thread
/// finds every patch's nearest row in its share on its own (so each bank row
/// is packed for the matrix product once), and the shares' minima are
/// merged at the end. No thread waits for another before that, so a thread
/// the OS pauses (the service's network threads share the cores) delays
/// only its own share.
///
/// A bank built for the fast search is searched with it (see
/// [`crate::scoring::fast`]: never below these distances, equal to them
/// when the nearest row is among the candidates).
pub fn nearest_global(
    query: &[f32],
    patches: usize,
    bank: &Bank,
    scratch: &mut SearchScratch,
    out: &mut [f32],
) {
    assert_eq!(query.len(), bank.channels * patches, "query size; this is a bug");
    if let Some(index) = &bank.fast {
        let threads = scratch.threads;
        return fast::nearest_fast(
            query,
            patches,
            &bank.features,
            index,
            threads,
            &mut scratch.fast,
            out,
        );
    }
    assert_eq!(out.len(), patches, "output size; this is a bug");
    let blocks = bank.rows().div_ceil(BLOCK);
    let parts = scratch.threads.min(blocks).max(1);
    scratch.parts.resize_with(parts, PartScratch::default);
    let blocks_per_part = blocks.div_ceil(parts).max(1);
    let share = blocks_per_part * BLOCK;
    for part in &mut scratch.parts {
        part.best.clear();
        part.best.resize(patches, f32::INFINITY);
    }
    if parts == 1 {
        search_share(query, patches, bank, 0..bank.rows(), &mut scratch.parts[0]);
    } else {
        // Scoped threads, started per search (tens of microseconds against
        // milliseconds of work): a persistent rayon pool measured slower,
        // its idle workers spin after each search and took the cores from
        // ONNX Runtime (engine call 12.6 -> 16.5 ms).
        std::thread::scope(|scope| {
            let mut shares = scratch.parts.iter_mut().enumerate();
            let here = shares.next();
            for (index, part) in shares {
                let rows = index * share..((index + 1) * share).min(bank.rows());
                scope.spawn(move || search_share(query, patches, bank, rows, part));
            }
            if let Some((_, part)) = here {
                search_share(query, patches, bank, 0..share.min(bank.rows()), part);
            }
        });
    }
    let (first, others) = scratch.parts.split_first().expect("at least one part");
    out.copy_from_slice(&first.best);
    for part in others {
        for (out, best) in out.iter_mut().zip(&part.best) {
            *out = out.min(*best);
        }
    }
    scratch.norms.clear();
    scratch.norms.resize(patches, 0.0);
    for plane in query.chunks_exact(patches) {
        for (acc, v) in scratch.norms.iter_mut().zip(plane) {
            *acc += v * v;
        }
    }
    for (out, norm) in out.iter_mut().zip(&scratch.norms) {
        *out = (norm + *out).max(0.0).sqrt();
    }
}

/// For every patch of `query`, min over the bank rows `rows` of
/// (||row||^2 - 2 patch.row), into `part.best` (which starts at infinity),
/// on the calling thread.
fn search_share(
    query: &[f32],
    patches: usize,
    bank: &Bank,
    rows: std::ops::Range<usize>,
    part: &mut PartScratch,
) {
    let channels = bank.channels;
    part.products.resize(patches * BLOCK, 0.0);
    let mut start = rows.start;
    while start < rows.end {
        let block = BLOCK.min(rows.end - start);
        let norms = &bank.norms[start..start + block];
        let bank_rows = &bank.features[start * channels..(start + block) * channels];
        // SAFETY: matrixmultiply reads A (patches x channels) from the planar
        // query with row stride 1 and column stride `patches`, B (channels x
        // block) from the bank rows transposed (row stride 1, column stride
        // `channels`), and writes C (patches x block) row-major into
        // `products`. `query` holds channels * patches values (asserted by
        // the caller), `bank_rows` block * channels, and `products` was
        // resized to patches * BLOCK >= patches * block.
        unsafe {
            matrixmultiply::sgemm(
                patches,
                channels,
                block,
                -2.0,
                query.as_ptr(),
                1,
                patches as isize,
                bank_rows.as_ptr(),
                1,
                channels as isize,
                0.0,
                part.products.as_mut_ptr(),
                block as isize,
                1,
            );
        }
        for (best, products) in part.best.iter_mut().zip(part.products.chunks_exact(block)) {
            *best = best.min(row_min_plus(products, norms));
        }
        start += block;
    }
}

/// [`nearest_global`] for `count` images at once. `features` holds them
/// one after another, each planar as the model writes a batch (NCHW). Their
/// patches are gathered into one query (channel planes of `count * patches`
/// values), so the bank is read and packed once per block for all of them
/// and the matrix products are larger, which the threads share better.
/// `out` gets `count * patches` distances, image after image.
pub fn nearest_global_batch(
    features: &[f32],
    count: usize,
    patches: usize,
    bank: &Bank,
    scratch: &mut SearchScratch,
    out: &mut [f32],
) {
    if count == 1 {
        return nearest_global(features, patches, bank, scratch, out);
    }
    let channels = bank.channels;
    assert_eq!(
        features.len(),
        count * channels * patches,
        "batch size; this is a bug"
    );
    let mut query = std::mem::take(&mut scratch.gathered);
    query.clear();
    for channel in 0..channels {
        for image in features.chunks_exact(channels * patches) {
            query.extend_from_slice(&image[channel * patches..][..patches]);
        }
    }
    nearest_global(&query, count * patches, bank, scratch, out);
    scratch.gathered = query;
}

/// min_j (products[j] + norms[j]), written with independent lanes so the
/// compiler vectorises it.
fn row_min_plus(products: &[f32], norms: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut lanes = [f32::INFINITY; LANES];
    let mut p = products.chunks_exact(LANES);
    let mut n = norms.chunks_exact(LANES);
    for (p, n) in (&mut p).zip(&mut n) {
        for i in 0..LANES {
            lanes[i] = lanes[i].min(p[i] + n[i]);
        }
    }
    let tail = p.remainder().iter().zip(n.remainder()).map(|(p, n)| p + n);
    lanes.into_iter().chain(tail).fold(f32::INFINITY, f32::min)
}

/// Geometry of an aligned search.
#[derive(Debug, Clone, Copy)]
pub struct Grid {
    /// Feature channels.
    pub channels: usize,
    /// Cells across.
    pub width: usize,
    /// Cells down.
    pub height: usize,
}

impl Grid {
    /// Values in one image's planar feature map.
    pub fn len(&self) -> usize {
        self.channels * self.width * self.height
    }

    /// Whether the grid holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// For each cell of `query` (planar, one image), writes the Euclidean
/// distance to the nearest cell within `radius` cells of the same place in
/// any of the `references` (planar images, one after another).
pub fn nearest_aligned(
    query: &[f32],
    references: &[f32],
    grid: Grid,
    radius: usize,
    scratch: &mut SearchScratch,
    out: &mut [f32],
) {
    let cells = grid.width * grid.height;
    assert_eq!(query.len(), grid.len(), "query size; this is a bug");
    assert_eq!(out.len(), cells, "output size; this is a bug");
    assert!(
        !grid.is_empty() && references.len().is_multiple_of(grid.len()),
        "reference size; this is a bug"
    );
    let best = &mut scratch.best;
    best.clear();
    best.resize(cells, f32::INFINITY);
    let acc = &mut scratch.plane;
    let radius = radius as isize;
    for reference in references.chunks_exact(grid.len()) {
        for dy in -radius..=radius {
            for dx in -radius..=radius {
                acc.clear();
                acc.resize(cells, 0.0);
                shifted_squared_distance(query, reference, grid, dy, dx, acc);
                // Cells whose shifted partner falls outside the grid keep an
                // infinite distance for this offset.
                for (y, (best_row, acc_row)) in best
                    .chunks_exact_mut(grid.width)
                    .zip(acc.chunks_exact(grid.width))
                    .enumerate()
                {
                    let Some((x0, x1)) = valid_span(y, dy, dx, grid) else {
                        continue;
                    };
                    for (b, a) in best_row[x0..x1].iter_mut().zip(&acc_row[x0..x1]) {
                        *b = b.min(*a);
                    }
                }
            }
        }
    }
    for (out, best) in out.iter_mut().zip(best.iter()) {
        *out = best.max(0.0).sqrt();
    }
}

/// The x range of row `y` whose partner at (y + dy, x + dx) is on the grid.
fn valid_span(y: usize, dy: isize, dx: isize, grid: Grid) -> Option<(usize, usize)> {
    let ry = y as isize + dy;
    if ry < 0 || ry >= grid.height as isize {
        return None;
    }
    let x0 = (-dx).max(0) as usize;
    let x1 = (grid.width as isize - dx).min(grid.width as isize).max(0) as usize;
    (x0 < x1).then_some((x0, x1))
}

/// acc[y, x] += sum_c (query[c, y, x] - reference[c, y + dy, x + dx])^2 over
/// the cells whose partner is on the grid.
fn shifted_squared_distance(
    query: &[f32],
    reference: &[f32],
    grid: Grid,
    dy: isize,
    dx: isize,
    acc: &mut [f32],
) {
    let cells = grid.width * grid.height;
    for (q_plane, r_plane) in query.chunks_exact(cells).zip(reference.chunks_exact(cells)) {
        for y in 0..grid.height {
            let Some((x0, x1)) = valid_span(y, dy, dx, grid) else {
                continue;
            };
            let ry = (y as isize + dy) as usize;
            let q = &q_plane[y * grid.width + x0..y * grid.width + x1];
            let r_start = (ry * grid.width) as isize + x0 as isize + dx;
            let r = &r_plane[r_start as usize..r_start as usize + (x1 - x0)];
            let a = &mut acc[y * grid.width + x0..y * grid.width + x1];
            for ((a, q), r) in a.iter_mut().zip(q.iter()).zip(r.iter()) {
                let d = q - r;
                *a += d * d;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute-force nearest distance, the reference for the fast paths.
    fn brute_global(query_rows: &[Vec<f32>], bank_rows: &[Vec<f32>]) -> Vec<f32> {
        query_rows
            .iter()
            .map(|q| {
                bank_rows
                    .iter()
                    .map(|b| {
                        q.iter()
                            .zip(b)
                            .map(|(x, y)| (x - y) * (x - y))
                            .sum::<f32>()
                            .sqrt()
                    })
                    .fold(f32::INFINITY, f32::min)
            })
            .collect()
    }

    fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 10_000) as f32 / 10_000.0
            })
            .collect()
    }

    fn planar(rows: &[Vec<f32>]) -> Vec<f32> {
        let channels = rows[0].len();
        (0..channels)
            .flat_map(|c| rows.iter().map(move |r| r[c]))
            .collect()
    }

    #[test]
    fn global_matches_brute_force_across_blocks_and_threads() {
        let channels = 19;
        let patches = 37;
        let bank_rows: Vec<Vec<f32>> = pseudo_random((3 * BLOCK + 300) * channels, 1)
            .chunks(channels)
            .map(<[f32]>::to_vec)
            .collect();
        let query_rows: Vec<Vec<f32>> = pseudo_random(patches * channels, 2)
            .chunks(channels)
            .map(<[f32]>::to_vec)
            .collect();
        let bank = Bank::new(bank_rows.concat(), channels);
        let slow = brute_global(&query_rows, &bank_rows);
        for threads in [1, 2, 3, 8] {
            let mut out = vec![0.0; patches];
            nearest_global(
                &planar(&query_rows),
                patches,
                &bank,
                &mut SearchScratch::new(threads),
                &mut out,
            );
            for (fast, slow) in out.iter().zip(&slow) {
                assert!((fast - slow).abs() < 1e-3, "{threads} threads: {fast} vs {slow}");
            }
        }
    }

    #[test]
    fn a_patch_in_the_bank_has_distance_zero() {
        let channels = 8;
        let rows: Vec<Vec<f32>> = pseudo_random(50 * channels, 3)
            .chunks(channels)
            .map(<[f32]>::to_vec)
            .collect();
        let bank = Bank::new(rows.concat(), channels);
        let mut out = vec![1.0; 5];
        nearest_global(
            &planar(&rows[10..15]),
            5,
            &bank,
            &mut SearchScratch::default(),
            &mut out,
        );
        assert!(out.iter().all(|d| *d < 1e-3), "{out:?}");
    }

    #[test]
    fn a_batch_gives_each_image_its_own_distances() {
        let (channels, patches, count) = (6, 20, 3);
        let bank = Bank::new(pseudo_random(90 * channels, 6), channels);
        let features = pseudo_random(count * channels * patches, 7);
        let mut scratch = SearchScratch::default();
        let mut batched = vec![0.0; count * patches];
        nearest_global_batch(&features, count, patches, &bank, &mut scratch, &mut batched);
        for (image, expected) in features
            .chunks_exact(channels * patches)
            .zip(batched.chunks_exact(patches))
        {
            let mut alone = vec![0.0; patches];
            nearest_global(image, patches, &bank, &mut scratch, &mut alone);
            for (a, b) in alone.iter().zip(expected) {
                assert!((a - b).abs() < 1e-4, "{a} vs {b}");
            }
        }
    }

    fn brute_aligned(query: &[f32], references: &[f32], grid: Grid, radius: isize) -> Vec<f32> {
        let cells = grid.width * grid.height;
        let mut out = vec![f32::INFINITY; cells];
        for reference in references.chunks(grid.len()) {
            for y in 0..grid.height as isize {
                for x in 0..grid.width as isize {
                    for dy in -radius..=radius {
                        for dx in -radius..=radius {
                            let (ry, rx) = (y + dy, x + dx);
                            if ry < 0 || rx < 0 || ry >= grid.height as isize || rx >= grid.width as isize {
                                continue;
                            }
                            let d: f32 = (0..grid.channels)
                                .map(|c| {
                                    let q = query[c * cells + (y as usize) * grid.width + x as usize];
                                    let r = reference[c * cells + (ry as usize) * grid.width + rx as usize];
                                    (q - r) * (q - r)
                                })
                                .sum();
                            let cell = &mut out[(y as usize) * grid.width + x as usize];
                            *cell = cell.min(d.sqrt());
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn aligned_matches_brute_force() {
        let grid = Grid {
            channels: 5,
            width: 7,
            height: 4,
        };
        let query = pseudo_random(grid.len(), 4);
        let references = pseudo_random(grid.len() * 3, 5);
        for radius in [0, 1, 2] {
            let mut out = vec![0.0; 28];
            nearest_aligned(
                &query,
                &references,
                grid,
                radius,
                &mut SearchScratch::default(),
                &mut out,
            );
            let slow = brute_aligned(&query, &references, grid, radius as isize);
            for (fast, slow) in out.iter().zip(&slow) {
                assert!((fast - slow).abs() < 1e-4, "radius {radius}: {fast} vs {slow}");
            }
        }
    }

    #[test]
    fn aligned_sees_a_component_that_moved_beyond_the_radius() {
        // One bright cell at (1, 1) in the reference, at (3, 3) in the query:
        // globally the query cell has an exact match, aligned with radius 1 it
        // does not.
        let grid = Grid {
            channels: 1,
            width: 5,
            height: 5,
        };
        let mut reference = vec![0.0; 25];
        reference[6] = 1.0;
        let mut query = vec![0.0; 25];
        query[18] = 1.0;
        let mut out = vec![0.0; 25];
        nearest_aligned(
            &query,
            &reference,
            grid,
            1,
            &mut SearchScratch::default(),
            &mut out,
        );
        assert_eq!(out[18], 1.0);
        let bank = Bank::new(reference.clone(), 1);
        nearest_global(&query, 25, &bank, &mut SearchScratch::default(), &mut out);
        assert_eq!(out[18], 0.0);
    }
}
