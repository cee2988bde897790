//! Greedy k-center coreset selection (PatchCore's memory-bank subsampling): a random
//! projection, then an exact, lazy farthest-point search on bytes (`farthest.rs`).

use super::farthest::Space;

/// Options for coreset selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoresetOptions {
    /// How many rows to keep.
    pub target: usize,
    /// Dimensions of the random projection the distances are measured in (64 is
    /// PatchCore's choice); 0, or at least the feature dimension, measures them on
    /// the features themselves.
    pub projection_dims: usize,
    /// Seed of the projection; the search starts at row `seed % n`.
    pub seed: u64,
}

/// Selects `options.target` rows of `features` (`n` rows x `dims` columns, row-major)
/// by greedy k-center (farthest point) selection as in PatchCore (Roth et al. 2022).
///
/// It starts from row `seed % n`, then repeatedly adds the row whose distance to its
/// nearest selected row is largest (the lowest such row on ties). Distances are
/// squared Euclidean on a Gaussian random projection to `options.projection_dims`
/// dimensions (see [`project`]), quantised to at most 255 levels per coordinate with
/// one step for all dimensions. The quantisation error (half a step per coordinate)
/// is far below the projection's own distortion, and it makes every distance an
/// exact integer: the selection is the same on every CPU.
///
/// Returns the selected row indices, all distinct, in selection order. If `target >= n`
/// it returns `0..n`. `dims == 0` gives an empty result and a trailing partial row
/// is ignored. Non-finite values do not panic but make the choice arbitrary.
pub fn select(features: &[f32], dims: usize, options: CoresetOptions) -> Vec<usize> {
    let n = features.len().checked_div(dims).unwrap_or(0);
    if options.target >= n {
        return (0..n).collect();
    }
    if options.target == 0 {
        return Vec::new();
    }
    let features = &features[..n * dims];
    let first = (options.seed % n as u64) as usize;
    let space = if options.projection_dims == 0 || options.projection_dims >= dims {
        Space::quantize(features, dims)
    } else {
        // Only the bytes are kept for the search: the f32 projection goes here.
        Space::quantize(
            &project(features, dims, options.projection_dims, options.seed),
            options.projection_dims,
        )
    };
    space.farthest_points(first, options.target)
}

/// Projects `features` (`n` rows x `dims`) onto `out_dims` Gaussian random directions,
/// deterministic from `seed`, scaled by `1/sqrt(out_dims)` so that squared distances
/// are preserved in expectation (Johnson-Lindenstrauss). Returns `n` x `out_dims`,
/// row-major; empty if `dims` or `out_dims` is 0. The rows are split over the
/// machine's cores, one matrix product each.
pub fn project(features: &[f32], dims: usize, out_dims: usize, seed: u64) -> Vec<f32> {
    let n = features.len().checked_div(dims).unwrap_or(0);
    if n == 0 || out_dims == 0 {
        return Vec::new();
    }
    let scale = 1.0 / (out_dims as f64).sqrt();
    let mut rng = SplitMix64(seed ^ 0x9e37_79b9_7f4a_7c15);
    let matrix: Vec<f32> = (0..dims * out_dims)
        .map(|_| (rng.gaussian() * scale) as f32)
        .collect();
    let mut out = vec![0.0f32; n * out_dims];
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let rows_per_part = n.div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        for (features, out) in features[..n * dims]
            .chunks(rows_per_part * dims)
            .zip(out.chunks_mut(rows_per_part * out_dims))
        {
            let matrix = &matrix;
            scope.spawn(move || project_rows(features, dims, matrix, out_dims, out));
        }
    });
    out
}

/// `out` = `features` (rows x `dims`) times `matrix` (`dims` x `out_dims`).
fn project_rows(features: &[f32], dims: usize, matrix: &[f32], out_dims: usize, out: &mut [f32]) {
    let rows = features.len() / dims;
    assert!(
        matrix.len() == dims * out_dims && out.len() == rows * out_dims,
        "projection sizes; this is a bug"
    );
    // SAFETY: `features` holds rows x dims values (row stride dims), `matrix`
    // exactly dims x out_dims (row stride out_dims) and `out` exactly rows x
    // out_dims (row stride out_dims), as asserted; all strides fit isize
    // because the slices exist.
    unsafe {
        matrixmultiply::sgemm(
            rows,
            dims,
            out_dims,
            1.0,
            features.as_ptr(),
            dims as isize,
            1,
            matrix.as_ptr(),
            out_dims as isize,
            1,
            0.0,
            out.as_mut_ptr(),
            out_dims as isize,
            1,
        );
    }
}

/// The splitmix64 generator (Steele et al.): tiny, fast, and good enough for a
/// projection matrix.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform draw in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal draw (Box-Muller, one of the pair).
    fn gaussian(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn options(target: usize, projection_dims: usize, seed: u64) -> CoresetOptions {
        CoresetOptions {
            target,
            projection_dims,
            seed,
        }
    }

    /// Uniform values in [0, 1), from xorshift64.
    pub(crate) fn uniform(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32
            })
            .collect()
    }

    /// `n` rows around `clusters` centers, each cluster with its own spread.
    pub(crate) fn clustered(n: usize, dims: usize, clusters: usize, seed: u64) -> Vec<f32> {
        let centers = uniform(clusters * dims, seed);
        let noise = uniform(n * dims, seed + 1);
        let mut out = Vec::with_capacity(n * dims);
        for (i, noise) in noise.chunks_exact(dims).enumerate() {
            let c = i % clusters;
            let spread = 0.02 + 0.1 * (c as f32 / clusters as f32);
            let center = &centers[c * dims..(c + 1) * dims];
            out.extend(
                center
                    .iter()
                    .zip(noise)
                    .map(|(&m, &e)| 10.0 * m + spread * (e - 0.5)),
            );
        }
        out
    }

    /// Largest distance from any row to its nearest selected row, in the original space.
    fn coverage(features: &[f32], dims: usize, selected: &[usize]) -> f64 {
        let row = |i: usize| &features[i * dims..(i + 1) * dims];
        (0..features.len() / dims)
            .map(|i| {
                selected
                    .iter()
                    .map(|&s| {
                        row(i)
                            .iter()
                            .zip(row(s))
                            .map(|(a, b)| f64::from(a - b).powi(2))
                            .sum::<f64>()
                    })
                    .fold(f64::INFINITY, f64::min)
            })
            .fold(0.0, f64::max)
            .sqrt()
    }

    #[test]
    fn picks_the_obvious_order_in_2d() {
        // From (0,0): the far corner (10,6), then (10,0) at 6, then (5,3) at sqrt(34)
        // before (0,5) at 5; the near neighbour (1,0) would come last.
        let points = [0.0, 0.0, 1.0, 0.0, 10.0, 0.0, 0.0, 5.0, 10.0, 6.0, 5.0, 3.0];
        assert_eq!(select(&points, 2, options(5, 0, 0)), [0, 4, 2, 5, 3]);
        assert_eq!(select(&points, 2, options(3, 0, 0)), [0, 4, 2]);
        // The seed picks the start.
        assert_eq!(select(&points, 2, options(2, 0, 7))[0], 1);
    }

    #[test]
    fn is_deterministic() {
        let features = uniform(5000 * 40, 4);
        let a = select(&features, 40, options(300, 16, 9));
        assert_eq!(a, select(&features, 40, options(300, 16, 9)));
        assert_eq!(project(&features, 40, 16, 9), project(&features, 40, 16, 9));
        assert_ne!(a, select(&features, 40, options(300, 16, 10)));
    }

    #[test]
    fn handles_edge_sizes() {
        let features = uniform(10 * 4, 5);
        assert_eq!(
            select(&features, 4, options(10, 2, 0)),
            (0..10).collect::<Vec<_>>()
        );
        assert_eq!(
            select(&features, 4, options(50, 2, 0)),
            (0..10).collect::<Vec<_>>()
        );
        assert!(select(&features, 4, options(0, 2, 0)).is_empty());
        assert!(select(&features, 0, options(3, 2, 0)).is_empty());
        assert!(select(&[], 4, options(3, 2, 0)).is_empty());
        // A trailing partial row is not a row.
        assert_eq!(select(&features[..39], 4, options(20, 0, 0)).len(), 9);
        assert!(project(&features, 4, 0, 0).is_empty());
        assert_eq!(project(&features, 4, 3, 0).len(), 30);
    }

    #[test]
    fn selects_distinct_rows_among_duplicates() {
        let mut features = vec![1.5f32; 200 * 6];
        features[7 * 6] = f32::NAN;
        features[9 * 6] = f32::INFINITY;
        let mut picked = select(&features, 6, options(50, 0, 3));
        assert_eq!(picked.len(), 50);
        picked.sort_unstable();
        picked.dedup();
        assert_eq!(picked.len(), 50);
    }

    #[test]
    fn projected_selection_covers_the_data() {
        let (dims, n, target) = (48, 4000, 150);
        let features = clustered(n, dims, 100, 6);
        let exact = coverage(&features, dims, &select(&features, dims, options(target, 0, 1)));
        let projected = coverage(&features, dims, &select(&features, dims, options(target, 16, 1)));
        let random: Vec<usize> = uniform(target, 11)
            .iter()
            .map(|v| (v * n as f32) as usize)
            .collect();
        let random = coverage(&features, dims, &random);
        assert!(projected <= 1.5 * exact, "projected {projected}, exact {exact}");
        assert!(projected < 0.8 * random, "projected {projected}, random {random}");
    }

    #[test]
    fn projection_roughly_preserves_distances() {
        let (dims, out) = (100, 64);
        let features = uniform(50 * dims, 10);
        let projected = project(&features, dims, out, 3);
        for (i, j) in [(0, 1), (2, 30), (7, 49)] {
            let distance = |x: &[f32], d: usize| -> f32 {
                x[i * d..(i + 1) * d]
                    .iter()
                    .zip(&x[j * d..(j + 1) * d])
                    .map(|(a, b)| (a - b).powi(2))
                    .sum()
            };
            let ratio = distance(&projected, out) / distance(&features, dims);
            assert!((0.5..2.0).contains(&ratio), "pair ({i}, {j}): ratio {ratio}");
        }
    }
}
