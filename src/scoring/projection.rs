//! A linear projection learned on the memory bank (principal components):
//! the fast search's candidate pass compares patches in a few of these
//! dimensions instead of all the feature channels.
//!
//! The basis is orthonormal, so the distance between two projected points
//! is never larger than between the points themselves: a projected distance
//! is a lower bound on the true one, which is what lets the fast search
//! stop re-ranking (see [`crate::scoring::fast`]). The basis spans the
//! bank's dominant principal subspace, found by orthogonal (block power)
//! iteration on the covariance; it need not be converged to be orthonormal.

/// Orthogonal iterations on the covariance: the subspace settles in far
/// fewer on patch features (eigenvalues decay fast), and each costs about
/// `dims * channels^2` multiply-adds.
const ITERATIONS: usize = 40;

/// An orthonormal projection from `channels` to `dims` dimensions, centred
/// on the bank's mean.
#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    channels: usize,
    dims: usize,
    /// `dims` x `channels`, row-major: one unit basis vector per row.
    basis: Vec<f32>,
    /// The bank's mean.
    mean: Vec<f32>,
    /// The basis applied to the mean, subtracted after projecting.
    offset: Vec<f32>,
}

impl Projection {
    /// The `dims` leading principal directions of `rows` (row-major,
    /// `channels` per row). `dims` is capped at `channels`.
    pub fn learn(rows: &[f32], channels: usize, dims: usize) -> Self {
        assert!(
            channels > 0 && rows.len().is_multiple_of(channels),
            "bank shape; this is a bug"
        );
        let dims = dims.clamp(1, channels);
        let count = rows.len() / channels;
        let mut mean = vec![0.0f64; channels];
        for row in rows.chunks_exact(channels) {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += f64::from(v);
            }
        }
        let mean: Vec<f32> = mean.iter().map(|m| (m / count.max(1) as f64) as f32).collect();
        let centred: Vec<f32> = rows
            .chunks_exact(channels)
            .flat_map(|row| row.iter().zip(&mean).map(|(v, m)| v - m))
            .collect();
        // Covariance (up to scale): centred^T centred, channels x channels.
        let mut covariance = vec![0.0f32; channels * channels];
        // SAFETY: A = centred^T (channels x count, row stride 1, column
        // stride channels) and B = centred (count x channels, row-major) are
        // read within `centred`'s count * channels values; C (channels x
        // channels, row-major) fits `covariance`.
        unsafe {
            matrixmultiply::sgemm(
                channels,
                count,
                channels,
                1.0,
                centred.as_ptr(),
                1,
                channels as isize,
                centred.as_ptr(),
                channels as isize,
                1,
                0.0,
                covariance.as_mut_ptr(),
                channels as isize,
                1,
            );
        }
        let scale = covariance
            .iter()
            .fold(0.0f32, |m, v| m.max(v.abs()))
            .max(f32::MIN_POSITIVE);
        covariance.iter_mut().for_each(|v| *v /= scale);
        let mut basis = seed_basis(dims, channels);
        orthonormalise(&mut basis, channels);
        let mut next = vec![0.0f32; dims * channels];
        for _ in 0..ITERATIONS {
            // next = basis * covariance (the covariance is symmetric).
            // SAFETY: A (dims x channels) and B (channels x channels) are
            // row-major within `basis` and `covariance`; C (dims x
            // channels) fits `next`.
            unsafe {
                matrixmultiply::sgemm(
                    dims,
                    channels,
                    channels,
                    1.0,
                    basis.as_ptr(),
                    channels as isize,
                    1,
                    covariance.as_ptr(),
                    channels as isize,
                    1,
                    0.0,
                    next.as_mut_ptr(),
                    channels as isize,
                    1,
                );
            }
            std::mem::swap(&mut basis, &mut next);
            orthonormalise(&mut basis, channels);
        }
        let offset = basis
            .chunks_exact(channels)
            .map(|b| b.iter().zip(&mean).map(|(b, m)| b * m).sum())
            .collect();
        Self {
            channels,
            dims,
            basis,
            mean,
            offset,
        }
    }

    /// Input channels.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Output dimensions.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// The basis, `dims` x `channels` row-major.
    pub fn basis(&self) -> &[f32] {
        &self.basis
    }

    /// The length of the part of `row` (`channels` values) that the
    /// projection leaves out, measured from the bank's mean.
    pub fn residual(&self, row: &[f32]) -> f32 {
        let centred: Vec<f32> = row.iter().zip(&self.mean).map(|(v, m)| v - m).collect();
        let kept: f32 = self
            .basis
            .chunks_exact(self.channels)
            .map(|b| b.iter().zip(&centred).map(|(b, v)| b * v).sum::<f32>().powi(2))
            .sum();
        let whole: f32 = centred.iter().map(|v| v * v).sum();
        (whole - kept).max(0.0).sqrt()
    }

    /// `|row - mean|^2`: with the squared norm of the row's projection it
    /// gives the residual's, `|r|^2 = |row - mean|^2 - |projected|^2`.
    #[inline(always)]
    pub fn centred_norm(&self, row: &[f32]) -> f32 {
        const WIDTH: usize = 8;
        let mut lanes = [0.0f32; WIDTH];
        let mut x = row.chunks_exact(WIDTH);
        let mut m = self.mean.chunks_exact(WIDTH);
        for (x, m) in (&mut x).zip(&mut m) {
            for i in 0..WIDTH {
                let d = x[i] - m[i];
                lanes[i] += d * d;
            }
        }
        let tail: f32 = x
            .remainder()
            .iter()
            .zip(m.remainder())
            .map(|(x, m)| (x - m) * (x - m))
            .sum();
        lanes.iter().sum::<f32>() + tail
    }

    /// Projects `rows` (row-major, `channels` per row) into `out` (row-major,
    /// `dims` per row; resized to fit).
    pub fn rows(&self, rows: &[f32], out: &mut Vec<f32>) {
        let count = rows.len() / self.channels;
        self.apply(rows.as_ptr(), count, (self.channels as isize, 1), out);
    }

    /// Projects patches `range` of a planar `query` (`channels` planes of
    /// `patches` values) into `out` (row-major, `dims` per patch).
    pub fn planar(&self, query: &[f32], patches: usize, range: std::ops::Range<usize>, out: &mut Vec<f32>) {
        assert!(
            query.len() == self.channels * patches && range.end <= patches,
            "query size; this is a bug"
        );
        let start = query[range.start..].as_ptr();
        self.apply(start, range.len(), (1, patches as isize), out);
    }

    /// `out = A basis^T - offset` for A (`count` x `channels`, strides
    /// `(row, column)`) read from `a`.
    fn apply(&self, a: *const f32, count: usize, (row, column): (isize, isize), out: &mut Vec<f32>) {
        out.clear();
        out.resize(count * self.dims, 0.0);
        if count == 0 {
            return;
        }
        // SAFETY: the callers pass strides that keep every A element
        // (i, c), at a + i * row + c * column, inside the slice `a` points
        // into (row-major rows, or planar planes of `patches` values from a
        // patch of `range`). B = basis^T (channels x dims: row stride 1,
        // column stride channels) is within `basis`; C fits `out`.
        unsafe {
            matrixmultiply::sgemm(
                count,
                self.channels,
                self.dims,
                1.0,
                a,
                row,
                column,
                self.basis.as_ptr(),
                1,
                self.channels as isize,
                0.0,
                out.as_mut_ptr(),
                self.dims as isize,
                1,
            );
        }
        for projected in out.chunks_exact_mut(self.dims) {
            for (v, o) in projected.iter_mut().zip(&self.offset) {
                *v -= o;
            }
        }
    }
}

/// A deterministic start for the iteration (xorshift, values in -1..1).
fn seed_basis(dims: usize, channels: usize) -> Vec<f32> {
    let mut state = 0x5eed_0f1e_a4f0_u64;
    (0..dims * channels)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Gram-Schmidt on the rows of `basis` (`channels` each), twice over for
/// orthogonality to rounding, in f64. A row that vanishes (the bank spans
/// fewer dimensions) becomes a unit vector orthogonal to the rows before
/// it, so the basis stays orthonormal.
fn orthonormalise(basis: &mut [f32], channels: usize) {
    let mut rows: Vec<Vec<f64>> = basis
        .chunks_exact(channels)
        .map(|r| r.iter().map(|&v| f64::from(v)).collect())
        .collect();
    for i in 0..rows.len() {
        let mut fallback = 0;
        loop {
            for _ in 0..2 {
                for j in 0..i {
                    let dot: f64 = rows[i].iter().zip(&rows[j]).map(|(a, b)| a * b).sum();
                    let (head, tail) = rows.split_at_mut(i);
                    for (a, b) in tail[0].iter_mut().zip(&head[j]) {
                        *a -= dot * b;
                    }
                }
            }
            let norm = rows[i].iter().map(|v| v * v).sum::<f64>().sqrt();
            if norm > 1e-9 {
                rows[i].iter_mut().for_each(|v| *v /= norm);
                break;
            }
            // Degenerate: try the unit vectors in turn.
            rows[i] = (0..channels)
                .map(|c| if c == fallback { 1.0 } else { 0.0 })
                .collect();
            fallback += 1;
            if fallback > channels {
                break;
            }
        }
    }
    for (out, row) in basis.chunks_exact_mut(channels).zip(&rows) {
        for (o, &v) in out.iter_mut().zip(row) {
            *o = v as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xorshift(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }

    #[test]
    fn the_basis_is_orthonormal() {
        let channels = 24;
        let rows = xorshift(500 * channels, 1);
        let projection = Projection::learn(&rows, channels, 8);
        let basis = projection.basis();
        for i in 0..8 {
            for j in 0..8 {
                let dot: f32 = basis[i * channels..][..channels]
                    .iter()
                    .zip(&basis[j * channels..][..channels])
                    .map(|(a, b)| a * b)
                    .sum();
                let expected = if i == j { 1.0 } else { 0.0 };
                assert!((dot - expected).abs() < 1e-4, "{i} {j}: {dot}");
            }
        }
    }

    #[test]
    fn it_finds_the_directions_the_data_varies_along() {
        // Rows spread widely along channels 2 and 5, barely along the rest.
        let channels = 10;
        let noise = xorshift(400 * channels, 2);
        let rows: Vec<f32> = noise
            .chunks_exact(channels)
            .flat_map(|row| {
                row.iter().enumerate().map(|(c, &v)| match c {
                    2 => 10.0 * v + 3.0,
                    5 => 7.0 * v - 1.0,
                    _ => 0.1 * v,
                })
            })
            .collect();
        let projection = Projection::learn(&rows, channels, 2);
        for basis in projection.basis().chunks_exact(channels) {
            let captured = basis[2] * basis[2] + basis[5] * basis[5];
            assert!(captured > 0.99, "{basis:?}");
        }
    }

    #[test]
    fn projected_distances_bound_true_distances_from_below() {
        let channels = 16;
        let rows = xorshift(300 * channels, 3);
        let projection = Projection::learn(&rows, channels, 4);
        let mut projected = Vec::new();
        projection.rows(&rows, &mut projected);
        for (i, j) in [(0, 1), (5, 200), (17, 299)] {
            let full: f32 = (0..channels)
                .map(|c| (rows[i * channels + c] - rows[j * channels + c]).powi(2))
                .sum();
            let low: f32 = (0..4)
                .map(|d| (projected[i * 4 + d] - projected[j * 4 + d]).powi(2))
                .sum();
            assert!(low <= full + 1e-5, "{low} > {full}");
        }
    }

    #[test]
    fn planar_and_row_major_inputs_project_alike() {
        let (channels, patches) = (6, 9);
        let rows = xorshift(patches * channels, 4);
        let planar: Vec<f32> = (0..channels)
            .flat_map(|c| (0..patches).map(move |p| (c, p)))
            .map(|(c, p)| rows[p * channels + c])
            .collect();
        let projection = Projection::learn(&rows, channels, 3);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        projection.rows(&rows[2 * channels..7 * channels], &mut a);
        projection.planar(&planar, patches, 2..7, &mut b);
        assert_eq!(a.len(), 15);
        for (a, b) in a.iter().zip(&b) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn a_bank_of_fewer_dimensions_still_gets_an_orthonormal_basis() {
        // Every row the same: no variance at all.
        let rows: Vec<f32> = std::iter::repeat_n([1.0, 2.0, 3.0], 20).flatten().collect();
        let projection = Projection::learn(&rows, 3, 3);
        let b = projection.basis();
        let gram = |i: usize, j: usize| (0..3).map(|c| b[i * 3 + c] * b[j * 3 + c]).sum::<f32>();
        for i in 0..3 {
            assert!((gram(i, i) - 1.0).abs() < 1e-5);
            for j in 0..i {
                assert!(gram(i, j).abs() < 1e-5);
            }
        }
    }
}
