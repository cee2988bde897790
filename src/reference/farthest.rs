//! The exact greedy farthest-point search behind [`super::coreset`]: rows quantised
//! to bytes in blocks, searched lazily with per-block bounds by a vectorised kernel.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Rows per block: the unit of distance bounds and of the distance kernel.
const BLOCK: usize = 64;
/// Below this many bytes of input, quantising on a second thread does not pay.
const MIN_PARALLEL_BYTES: usize = 1 << 20;

/// The rows as the search reads them: quantised to bytes, in blocks of [`BLOCK`]
/// rows, dimension-major within a block (`BLOCK` consecutive bytes are one dimension
/// of all its rows), so the kernel runs across rows in whole vectors with no
/// horizontal sums. The last block is padded with zero rows.
#[derive(Debug)]
pub(super) struct Space {
    blocks: Vec<u8>,
    /// Squared norm of each row, exact in f32.
    norms: Vec<f32>,
    dims: usize,
    /// Real rows.
    count: usize,
}

impl Space {
    /// Quantises `rows` (`n` x `dims`), on two threads when large. One step for every
    /// dimension keeps the geometry; offsets per dimension use the full range. The
    /// step is chosen so that every sum the kernel forms (at most
    /// `2 * dims * levels^2`) stays within 2^24, where f32 arithmetic on integers is
    /// exact: any summation order, with or without FMA, gives the same distances.
    pub(super) fn quantize(rows: &[f32], dims: usize) -> Self {
        let count = rows.len() / dims;
        let mut low = vec![f32::INFINITY; dims];
        let mut high = vec![f32::NEG_INFINITY; dims];
        for row in rows.chunks_exact(dims) {
            for ((l, h), &v) in low.iter_mut().zip(high.iter_mut()).zip(row) {
                // Non-finite values would make the step infinite; they saturate instead.
                if v.is_finite() {
                    *l = l.min(v);
                    *h = h.max(v);
                }
            }
        }
        let range = low.iter().zip(&high).map(|(l, h)| h - l).fold(0.0f32, f32::max);
        let levels = ((f64::from(1u32 << 23) / dims as f64).sqrt().floor()).min(255.0) as f32;
        // A zero, infinite or subnormal range puts every row on level 0.
        let scale = Some(levels / range)
            .filter(|s| range > 0.0 && s.is_finite())
            .unwrap_or(0.0);
        let block_count = count.div_ceil(BLOCK);
        let mut blocks = vec![0u8; block_count * BLOCK * dims];
        let mut norms = vec![0.0f32; block_count * BLOCK];
        let threads = if std::mem::size_of_val(rows) < MIN_PARALLEL_BYTES {
            1
        } else {
            2
        };
        let per_thread = block_count.div_ceil(threads).max(1);
        let low = &low;
        std::thread::scope(|scope| {
            let shares = blocks
                .chunks_mut(per_thread * BLOCK * dims)
                .zip(norms.chunks_mut(per_thread * BLOCK))
                .zip(rows.chunks(per_thread * BLOCK * dims));
            for ((blocks, norms), rows) in shares {
                scope.spawn(move || {
                    let blocks = blocks
                        .chunks_exact_mut(BLOCK * dims)
                        .zip(norms.chunks_exact_mut(BLOCK));
                    for ((block, norms), rows) in blocks.zip(rows.chunks(BLOCK * dims)) {
                        for (r, (row, norm)) in rows.chunks_exact(dims).zip(norms.iter_mut()).enumerate() {
                            let mut sum = 0u32;
                            for ((&v, &l), q) in row.iter().zip(low).zip(block[r..].iter_mut().step_by(BLOCK))
                            {
                                // Rounds half up (v >= l); NaN stays NaN and `as u8` makes it 0.
                                *q = ((v - l) * scale + 0.5).clamp(0.0, levels) as u8;
                                sum += u32::from(*q) * u32::from(*q);
                            }
                            *norm = sum as f32;
                        }
                    }
                });
            }
        });
        Self {
            blocks,
            norms,
            dims,
            count,
        }
    }

    /// Greedy farthest-point selection of `target` rows, starting at `first`; see
    /// [`Search`]. `0 < target <= count`, `first < count`.
    pub(super) fn farthest_points(&self, first: usize, target: usize) -> Vec<usize> {
        Search::new(self, target).run(first, target)
    }

    fn block(&self, b: usize) -> &[u8] {
        &self.blocks[b * BLOCK * self.dims..(b + 1) * BLOCK * self.dims]
    }
}

/// Greedy farthest-point search, lazy but exact.
///
/// Each step needs the row farthest from all centers so far. Rather than measuring
/// every row against each new center (the whole bank streamed from memory on every
/// step), each block keeps an upper bound on its rows' distances: its exact maximum
/// when last brought up to date, as distances only shrink. A step brings blocks up to
/// date in order of bound until the best exact row beats every remaining bound. A block
/// then takes all its pending centers at once while it sits in L1, and blocks whose
/// rows are already well covered are never touched again. The result is exactly the
/// eager one.
///
/// It runs on one thread: a step is short (tens of microseconds), and its work sits
/// in a few blocks, so a split between threads is unbalanced (measured: at most 1.25x
/// to 1.4x even without synchronisation cost) and a per-step barrier made it slower.
struct Search<'a> {
    space: &'a Space,
    /// Squared distance of each row to its nearest applied center; -1 for centers
    /// and padding, which are never the farthest.
    mind: Vec<f32>,
    /// Centers applied to each block so far.
    applied: Vec<usize>,
    /// (bound key, block): largest bound first, then lowest block.
    bounds: BinaryHeap<(u32, Reverse<usize>)>,
    /// Coordinates of the centers, row-major, and their squared norms.
    centers: Vec<f32>,
    center_norms: Vec<f32>,
    /// The block being brought up to date, widened to f32.
    scratch: Vec<f32>,
    isa: Isa,
}

impl<'a> Search<'a> {
    fn new(space: &'a Space, target: usize) -> Self {
        let block_count = space.norms.len() / BLOCK;
        let mut mind = vec![f32::INFINITY; block_count * BLOCK];
        mind[space.count..].fill(-1.0);
        Self {
            space,
            mind,
            applied: vec![0; block_count],
            bounds: (0..block_count).map(|b| (u32::MAX, Reverse(b))).collect(),
            centers: Vec::with_capacity(target * space.dims),
            center_norms: Vec::with_capacity(target),
            scratch: vec![0.0; BLOCK * space.dims],
            isa: Isa::detect(),
        }
    }

    /// Selects `target` rows starting with `first` (`target <= count`, `first < count`).
    fn run(mut self, first: usize, target: usize) -> Vec<usize> {
        let mut selected = Vec::with_capacity(target);
        let mut current = first;
        loop {
            selected.push(current);
            if selected.len() >= target {
                break;
            }
            self.add_center(current);
            match self.farthest() {
                (_, row) if row < self.space.count => current = row,
                // Every row is a center: only reachable with target == count.
                _ => break,
            }
        }
        selected
    }

    fn add_center(&mut self, row: usize) {
        let dims = self.space.dims;
        let base = row / BLOCK * BLOCK * dims + row % BLOCK;
        let coordinates = self.space.blocks.iter().skip(base).step_by(BLOCK).take(dims);
        self.centers.extend(coordinates.map(|&q| f32::from(q)));
        self.center_norms
            .push(self.space.norms.get(row).copied().unwrap_or(0.0));
        if let Some(m) = self.mind.get_mut(row) {
            *m = -1.0;
        }
    }

    /// The row farthest from all centers: (distance key, row), or row `usize::MAX` if
    /// every row is a center.
    fn farthest(&mut self) -> (u32, usize) {
        let (dims, k) = (self.space.dims, self.center_norms.len());
        let mut best = (0u32, usize::MAX);
        while let Some(&(bound, Reverse(b))) = self.bounds.peek() {
            // An up-to-date block was weighed this step already; any other block below
            // the best (or level with it but later) cannot hold anything better.
            if self.applied[b] == k || better(best, (bound, b * BLOCK)) == best {
                break;
            }
            self.bounds.pop();
            let pending = self.applied[b];
            let (Some(norms), Some(mind)) = (
                self.space.norms[b * BLOCK..].first_chunk(),
                self.mind[b * BLOCK..].first_chunk_mut(),
            ) else {
                break;
            };
            let job = Refresh {
                block: self.space.block(b),
                norms,
                centers: &self.centers[pending * dims..],
                center_norms: &self.center_norms[pending..],
                mind,
                scratch: &mut self.scratch,
            };
            let (farthest, lane) = self.isa.refresh(job);
            self.applied[b] = k;
            self.bounds.push((key(farthest), Reverse(b)));
            best = better(best, (key(farthest), b * BLOCK + lane));
        }
        best
    }
}

/// The farther of two (key, row) candidates; ties go to the lower row.
fn better(a: (u32, usize), b: (u32, usize)) -> (u32, usize) {
    if b.0 > a.0 || (b.0 == a.0 && b.1 < a.1) {
        b
    } else {
        a
    }
}

/// A distance (an integer, -1 or infinity) as an order-preserving integer.
fn key(distance: f32) -> u32 {
    (distance + 1.0) as u32
}

/// Bringing one block up to date with its pending centers.
struct Refresh<'a> {
    /// `BLOCK` rows, dimension-major.
    block: &'a [u8],
    norms: &'a [f32; BLOCK],
    /// Pending centers, row-major, and their squared norms.
    centers: &'a [f32],
    center_norms: &'a [f32],
    mind: &'a mut [f32; BLOCK],
    scratch: &'a mut [f32],
}

/// Applies the pending centers to a block; returns its largest distance and that
/// row's lane (the first, on ties).
///
/// Squared distances come from dot products, `|p|^2 + |c|^2 - 2 p.c`, all exact (see
/// [`Space::quantize`]). The inner loop is fixed-width over the block's 64 rows, with
/// no bounds checks, and takes two centers at a time: each row vector loaded feeds
/// two multiply-adds into independent accumulators.
#[inline(always)]
fn refresh<const FMA: bool, const PAIRS: bool>(job: Refresh<'_>) -> (f32, usize) {
    let Refresh {
        block,
        norms,
        centers,
        center_norms,
        mind,
        scratch,
    } = job;
    let dims = block.len() / BLOCK;
    for (s, &q) in scratch.iter_mut().zip(block) {
        *s = f32::from(q);
    }
    let (rows, _) = scratch.as_chunks::<BLOCK>();
    let mut update = |dots: &[f32; BLOCK], center_norm: f32| {
        for ((m, &dot), &norm) in mind.iter_mut().zip(dots).zip(norms) {
            let distance = norm + center_norm - 2.0 * dot;
            // Compare and select: one vector min.
            if distance < *m {
                *m = distance;
            }
        }
    };
    // Pairs need twice the accumulators: only AVX-512 has the registers for them.
    let paired = if PAIRS { center_norms.len() / 2 * 2 } else { 0 };
    let pairs = centers
        .chunks_exact(2 * dims)
        .zip(center_norms[..paired].as_chunks::<2>().0);
    for (pair, &[norm0, norm1]) in pairs {
        let (c0, c1) = pair.split_at(dims);
        let [mut dot0, mut dot1] = [[0.0f32; BLOCK]; 2];
        for ((row, &x0), &x1) in rows.iter().zip(c0).zip(c1) {
            for ((a0, a1), &p) in dot0.iter_mut().zip(dot1.iter_mut()).zip(row) {
                (*a0, *a1) = if FMA {
                    (p.mul_add(x0, *a0), p.mul_add(x1, *a1))
                } else {
                    (*a0 + p * x0, *a1 + p * x1)
                };
            }
        }
        update(&dot0, norm0);
        update(&dot1, norm1);
    }
    for (center, &center_norm) in centers[paired * dims..]
        .chunks_exact(dims)
        .zip(&center_norms[paired..])
    {
        let mut dot = [0.0f32; BLOCK];
        for (row, &x) in rows.iter().zip(center) {
            for (a, &p) in dot.iter_mut().zip(row) {
                *a = if FMA { p.mul_add(x, *a) } else { *a + p * x };
            }
        }
        update(&dot, center_norm);
    }
    let mut lanes = [f32::NEG_INFINITY; 16];
    for m in mind.as_chunks::<16>().0 {
        for (lane, &m) in lanes.iter_mut().zip(m) {
            if m > *lane {
                *lane = m;
            }
        }
    }
    let top = lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    (top, mind.iter().position(|&m| m == top).unwrap_or(0))
}

/// The widest vector instructions this CPU has. The build targets baseline x86-64;
/// the kernel is compiled once more for each of these and picked at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    Avx512,
    Avx2,
    Baseline,
}

impl Isa {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("fma") {
                return Self::Avx512;
            }
            if has!("avx2") && has!("fma") {
                return Self::Avx2;
            }
        }
        Self::Baseline
    }

    /// [`refresh`] compiled for this instruction set.
    fn refresh(self, job: Refresh<'_>) -> (f32, usize) {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `detect` chose this only where the CPU reports AVX-512F and FMA.
            Self::Avx512 => unsafe { refresh_avx512(job) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `detect` chose this only where the CPU reports AVX2 and FMA.
            Self::Avx2 => unsafe { refresh_avx2(job) },
            // Without a hardware FMA, `mul_add` would be a slow library call.
            _ => refresh::<false, false>(job),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn refresh_avx512(job: Refresh<'_>) -> (f32, usize) {
    refresh::<true, true>(job)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn refresh_avx2(job: Refresh<'_>) -> (f32, usize) {
    refresh::<true, false>(job)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::coreset::tests::{clustered, uniform};

    /// Plain greedy on the quantised rows, measuring every row at every step: what
    /// the lazy search must reproduce exactly.
    fn eager(space: &Space, first: usize, target: usize) -> Vec<usize> {
        let dims = space.dims;
        let row = |r: usize| -> Vec<i64> {
            (0..dims)
                .map(|d| i64::from(space.blocks[r / BLOCK * BLOCK * dims + d * BLOCK + r % BLOCK]))
                .collect()
        };
        let rows: Vec<Vec<i64>> = (0..space.count).map(row).collect();
        let mut mind = vec![i64::MAX; space.count];
        let mut selected = vec![first];
        while selected.len() < target {
            let center = &rows[*selected.last().unwrap()];
            for (m, row) in mind.iter_mut().zip(&rows) {
                let distance = row.iter().zip(center).map(|(a, b)| (a - b) * (a - b)).sum();
                *m = (*m).min(distance);
            }
            for &s in &selected {
                mind[s] = -1;
            }
            let best = (0..space.count).max_by_key(|&i| (mind[i], Reverse(i))).unwrap();
            selected.push(best);
        }
        selected
    }

    #[test]
    fn lazy_search_matches_eager_greedy() {
        let cases = [
            (uniform(3000 * 8, 1), 8),
            (clustered(2500, 24, 12, 2), 24),
            // Few distinct values: many exact ties, broken by the lowest row.
            (
                uniform(2000 * 3, 3).iter().map(|v| (v * 4.0).floor()).collect(),
                3,
            ),
        ];
        for (features, dims) in cases {
            let space = Space::quantize(&features, dims);
            for (first, target) in [(0, 150), (17, 60)] {
                let lazy = Search::new(&space, target).run(first, target);
                assert_eq!(lazy, eager(&space, first, target), "dims {dims}, first {first}");
            }
        }
    }

    #[test]
    fn kernels_agree_across_instruction_sets() {
        let dims = 20;
        let space = Space::quantize(&uniform(BLOCK * dims, 7), dims);
        let centers: Vec<f32> = uniform(5 * dims, 8).iter().map(|v| (v * 255.0).round()).collect();
        let center_norms: Vec<f32> = centers
            .chunks(dims)
            .map(|c| c.iter().map(|x| x * x).sum())
            .collect();
        let run = |isa: Isa| {
            let (mut mind, mut scratch) = ([f32::INFINITY; BLOCK], vec![0.0; BLOCK * dims]);
            let norms = space.norms.first_chunk().unwrap();
            let job = Refresh {
                block: space.block(0),
                norms,
                centers: &centers,
                center_norms: &center_norms,
                mind: &mut mind,
                scratch: &mut scratch,
            };
            (isa.refresh(job), mind)
        };
        let baseline = run(Isa::Baseline);
        assert_eq!(run(Isa::detect()), baseline);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            assert_eq!(run(Isa::Avx2), baseline);
        }
    }
}
