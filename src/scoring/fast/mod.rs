//! The fast global search: a candidate pass in a principal-component
//! projection of the bank ([`Projection`], learned when the bank is built),
//! over the inverted lists each patch probes ([`lists`]), then an exact
//! re-rank of each patch's candidates in all channels.
//!
//! The candidate pass is the brute-force search's matrix product with
//! `dims` instead of `channels` columns (48 of 152: under a third of the
//! work) and, with the bank in k-means lists of about 128 rows, only over
//! the lists nearest the patch (19 of 64 on magnetic-tile's bank, chosen
//! at enrollment: under a third of the rows), keeping the `candidates` rows
//! nearest in the projection. The patches are grouped by the lists they probe, so each
//! list is one matrix product with all its patches. The re-rank takes the
//! candidates nearest first and stops as soon as the next one's projected
//! distance reaches the best true distance found: a projected distance
//! never exceeds the true one, so no candidate left can be nearer. It
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
//! nearest row `n` is missed by the projection alone (one list), the
//! answer `f` is still bounded: with `c` the projected-nearest candidate,
//! `r` the residual (the part outside the projection) and `e` the exact
//! distance, `f^2 <= |q - c|^2 <= e^2 + |r(q) - r(c)|^2 <= e^2 + (|r(q)| +
//! |r(c)|)^2`, since `c` is no farther than `n` in the projection. When
//! the lists miss it (it lies in a list not probed), no such bound holds;
//! the number of lists probed is chosen at enrollment so that the image
//! scores of out-of-fold calibration frames stay within 1 % of their
//! scores with every list probed (`engine::enroll`; without a recorded
//! count, the rule of [`lists`] picks one), and on magnetic-tile the image
//! and pixel AUROC stayed within 0.0002 of the exact search's.

mod lists;

use super::projection::Projection;
use lists::{Grouping, Lists, dot_products};

/// Projected dimensions of the candidate pass by default. On magnetic-tile
/// (`loupe bench`, 630 test frames) 48 gave the exact image score to 1e-4
/// for 607 frames and at most 0.7 % above it; 32 for 476 frames, at most
/// 4.9 % above; 32 dimensions with 32 candidates, or 48 with 32, were slower
/// (more rows to re-rank) than 48 with 16.
pub const DEFAULT_DIMS: usize = 48;
/// Candidates kept per patch by default.
pub const DEFAULT_CANDIDATES: usize = 16;
/// Bank rows per inverted list by default (8192 rows make 64 lists).
pub const DEFAULT_LIST_ROWS: usize = 128;
/// Bank rows per product of the candidate pass (patches x BLOCK f32 stay
/// in cache between the product and the scan).
const BLOCK: usize = 512;
/// Lanes of the scan for rows below a patch's worst candidate.
const LANES: usize = 16;
/// The share of the residual term the re-rank's skip test trusts: the
/// residual lengths come from differences of squared norms in f32.
const RESIDUAL_SLACK: f32 = 0.99;

/// The inverted lists a bank of `rows` rows is grouped into with `options`.
pub fn list_count(rows: usize, options: FastOptions) -> usize {
    lists::count_for(rows, options.list_rows)
}

/// The shape of the fast search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastOptions {
    /// Projected dimensions of the candidate pass.
    pub dims: usize,
    /// Candidates re-ranked (at most) per patch.
    pub candidates: usize,
    /// Bank rows per inverted list, about; 0 keeps the bank in one list,
    /// so the candidate pass reads all of it.
    pub list_rows: usize,
}

impl Default for FastOptions {
    fn default() -> Self {
        Self {
            dims: DEFAULT_DIMS,
            candidates: DEFAULT_CANDIDATES,
            list_rows: DEFAULT_LIST_ROWS,
        }
    }
}

/// The bank in the projection, built once per bank. The projected rows
/// are stored list after list (see [`lists`]); `ids` maps each position
/// back to its bank row.
#[derive(Debug, Clone)]
pub struct FastIndex {
    projection: Projection,
    lists: Lists,
    /// The bank row at each position.
    ids: Vec<u32>,
    /// The bank rows projected, `dims` per row, by position.
    rows: Vec<f32>,
    /// Their squared norms.
    norms: Vec<f32>,
    /// The length of each row's residual (the part outside the projection).
    residuals: Vec<f32>,
    candidates: usize,
    list_rows: usize,
}

impl FastIndex {
    /// Learns the projection on `features` (row-major, `channels` per row)
    /// and projects them; each patch probes `probes` lists, or as many as
    /// the rule of [`lists`] picks.
    pub fn build(features: &[f32], channels: usize, options: FastOptions, probes: Option<usize>) -> Self {
        let projection = Projection::learn(features, channels, options.dims);
        let dims = projection.dims();
        let mut projected = Vec::new();
        projection.rows(features, &mut projected);
        let Grouping { lists, ids } =
            Lists::build(&projected, dims, features, channels, options.list_rows, probes);
        let rows: Vec<f32> = ids
            .iter()
            .flat_map(|&id| projected[id as usize * dims..][..dims].iter().copied())
            .collect();
        let norms: Vec<f32> = rows
            .chunks_exact(dims)
            .map(|r| r.iter().map(|v| v * v).sum())
            .collect();
        let residuals = ids
            .iter()
            .zip(&norms)
            .map(|(&id, kept)| {
                let row = &features[id as usize * channels..][..channels];
                (projection.centred_norm(row) - kept).max(0.0).sqrt()
            })
            .collect();
        Self {
            projection,
            lists,
            ids,
            rows,
            norms,
            residuals,
            candidates: options.candidates.max(1),
            list_rows: options.list_rows,
        }
    }

    /// The shape it was built with.
    pub fn options(&self) -> FastOptions {
        FastOptions {
            dims: self.projection.dims(),
            candidates: self.candidates,
            list_rows: self.list_rows,
        }
    }

    /// Inverted lists, and how many of them each patch probes.
    pub fn lists(&self) -> (usize, usize) {
        (self.lists.count(), self.lists.probes())
    }

    /// Makes each patch probe `probes` lists (at least one, at most all).
    pub fn set_probes(&mut self, probes: usize) {
        self.lists.set_probes(probes);
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
    /// Per patch, the lists it probes.
    probed: Vec<u32>,
    /// Scratch of the probe choice.
    order: Vec<(f32, u32)>,
    /// Where each list's probing patches start in `members`.
    offsets: Vec<usize>,
    /// The next free slot of each list in `members`, while filling it.
    cursor: Vec<usize>,
    /// The patches probing each list, list after list.
    members: Vec<u32>,
    /// The projected patches probing one list, row-major.
    gathered: Vec<f32>,
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

/// The fast search of patches `range` of `query`, on the calling thread:
/// compiled for AVX2 as well, and run so where the CPU has it (the scan
/// and the re-rank are Loupe's own loops; the products dispatch on their
/// own in matrixmultiply).
fn search_share(
    query: &[f32],
    patches: usize,
    range: std::ops::Range<usize>,
    bank: &[f32],
    index: &FastIndex,
    part: &mut FastPart,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { search_share_avx2(query, patches, range, bank, index, part, out) };
    }
    search_share_inline(query, patches, range, bank, index, part, out)
}

/// [`search_share`] with AVX2 enabled.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn search_share_avx2(
    query: &[f32],
    patches: usize,
    range: std::ops::Range<usize>,
    bank: &[f32],
    index: &FastIndex,
    part: &mut FastPart,
    out: &mut [f32],
) {
    search_share_inline(query, patches, range, bank, index, part, out)
}

/// The body of [`search_share`], inlined into each of its builds.
#[inline(always)]
fn search_share_inline(
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
            let position = row as usize;
            let apart = residual - index.residuals[position];
            if projected + RESIDUAL_SLACK * apart * apart >= best {
                continue;
            }
            let row = index.ids[position] as usize;
            best = best.min(squared_distance(patch, &bank[row * channels..][..channels]));
        }
        *out = best.sqrt();
    }
}

/// Fills `part.values` and `part.indices` with the `candidates` rows
/// (positions in the index) nearest each patch of `range` in the
/// projection among the lists it probes (unsorted; a patch with fewer rows
/// than that gets index `u32::MAX` at infinity for the rest). The patches
/// are grouped by list, so each list's rows are multiplied once with all
/// the patches probing it.
#[inline(always)]
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
    let lists = &index.lists;
    lists.probe(
        &part.projected,
        count,
        &mut part.products,
        &mut part.order,
        &mut part.probed,
    );
    // The patches of each list, by a counting sort of the probes: first
    // every list with the patches it is the nearest list of, then every
    // list with the others. A patch's nearest list gives it near
    // candidates at once, so the later lists offer it few rows.
    let (list_count, probes) = (lists.count(), lists.probes());
    let bucket = |slot: usize, list: u32| {
        list as usize
            + if slot.is_multiple_of(probes) {
                0
            } else {
                list_count
            }
    };
    part.offsets.clear();
    part.offsets.resize(2 * list_count + 1, 0);
    for (slot, &list) in part.probed.iter().enumerate() {
        part.offsets[bucket(slot, list) + 1] += 1;
    }
    for b in 0..2 * list_count {
        part.offsets[b + 1] += part.offsets[b];
    }
    part.members.clear();
    part.members.resize(part.probed.len(), 0);
    part.cursor.clear();
    part.cursor.extend_from_slice(&part.offsets);
    for (slot, &list) in part.probed.iter().enumerate() {
        let b = bucket(slot, list);
        part.members[part.cursor[b]] = (slot / probes) as u32;
        part.cursor[b] += 1;
    }
    for b in 0..2 * list_count {
        let members = &part.members[part.offsets[b]..part.offsets[b + 1]];
        let span = lists.span(b % list_count);
        if members.is_empty() || span.is_empty() {
            continue;
        }
        part.gathered.clear();
        for &p in members {
            part.gathered
                .extend_from_slice(&part.projected[p as usize * dims..][..dims]);
        }
        part.products
            .resize(part.products.len().max(members.len() * BLOCK), 0.0);
        let mut start = span.start;
        while start < span.end {
            let block = BLOCK.min(span.end - start);
            let products = &mut part.products[..members.len() * block];
            let rows = &index.rows[start * dims..(start + block) * dims];
            dot_products(&part.gathered, rows, dims, -2.0, products);
            let norms = &index.norms[start..start + block];
            for (&p, products) in members.iter().zip(products.chunks_exact(block)) {
                let p = p as usize;
                let values = &mut part.values[p * k..][..k];
                let indices = &mut part.indices[p * k..][..k];
                keep_nearest(products, norms, start as u32, values, indices, &mut part.worst[p]);
            }
            start += block;
        }
    }
}

/// Offers rows `first..` with values `products[j] + norms[j]` to one
/// patch's candidates (`values`, `indices`, whose largest value is
/// `worst`): a row below the worst replaces it. The scan compares a run of
/// lanes at once and offers only the rows below.
#[inline(always)]
fn keep_nearest(
    products: &[f32],
    norms: &[f32],
    first: u32,
    values: &mut [f32],
    indices: &mut [u32],
    worst: &mut f32,
) {
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
            offer(
                values,
                indices,
                first + (run * LANES + i) as u32,
                p[i] + n[i],
                worst,
            );
        }
    }
    let tail = products.len() - p.remainder().len();
    for (i, (p, n)) in p.remainder().iter().zip(n.remainder()).enumerate() {
        offer(values, indices, first + (tail + i) as u32, p + n, worst);
    }
}

/// Offers row `row` at `value` to one patch's candidates: below the
/// worst, it takes the worst's place.
#[inline(always)]
fn offer(values: &mut [f32], indices: &mut [u32], row: u32, value: f32, worst: &mut f32) {
    if value < *worst {
        let slot = values
            .iter()
            .position(|v| *v == *worst)
            .expect("the worst value is a candidate's; this is a bug");
        values[slot] = value;
        indices[slot] = row;
        *worst = largest(values);
    }
}

/// The largest of `values` (none NaN), in [`LANES`] independent lanes: a
/// fold of `f32::max` is one chain of compare, NaN test and blend per
/// value, and it was half of the fast search's own time (perf, ratios
/// bench) where every offer to a patch's candidates recomputes it.
#[inline(always)]
fn largest(values: &[f32]) -> f32 {
    let pick = |a: f32, b: f32| if b > a { b } else { a };
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut runs = values.chunks_exact(LANES);
    for run in &mut runs {
        for (lane, &v) in lanes.iter_mut().zip(run) {
            *lane = pick(*lane, v);
        }
    }
    let tail = runs.remainder().iter().copied().fold(f32::NEG_INFINITY, pick);
    lanes.into_iter().fold(tail, pick)
}

/// Sorts one patch's candidates by value, nearest first (insertion sort:
/// a handful of them).
#[inline(always)]
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
#[inline(always)]
fn squared_distance(a: &[f32], b: &[f32]) -> f32 {
    const WIDTH: usize = 8;
    let mut lanes = [0.0f32; WIDTH];
    let (x, x_tail) = a.as_chunks::<WIDTH>();
    let (y, y_tail) = b.as_chunks::<WIDTH>();
    for (x, y) in x.iter().zip(y) {
        for i in 0..WIDTH {
            let d = x[i] - y[i];
            lanes[i] += d * d;
        }
    }
    let tail: f32 = x_tail.iter().zip(y_tail).map(|(x, y)| (x - y) * (x - y)).sum();
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests;
