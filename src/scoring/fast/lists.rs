//! Inverted lists over the projected bank, so that the candidate pass reads
//! only the part of the bank near each patch.
//!
//! At build, k-means (Lloyd's rounds from evenly spaced rows) groups the
//! projected rows into lists of about [`super::DEFAULT_LIST_ROWS`] rows,
//! and the rows are stored list after list. A patch probes the `probes`
//! lists whose centres are nearest it in the projection. How many is
//! chosen when the recipe is enrolled, on the calibration frames (see
//! `engine::enroll`), and stored with the reference. Where no count was
//! recorded (references written before it was, banks built outside
//! enrollment) a rule picks one at build, on the bank itself: rows sampled
//! evenly from it stand in for patches (each with the bank minus itself,
//! as an out-of-fold frame sees a bank without its own patches), and
//! `probes` is the smallest count that puts each sample's true nearest
//! other row (in all channels) in a probed list for [`PROBE_RECALL`] of
//! them, and never fewer than [`MIN_PROBED_SHARE`] of the lists.

use super::BLOCK;

/// k-means rounds at most (they stop early once no row changes list).
const ROUNDS: usize = 20;
/// Bank rows sampled by the probe rule.
const SAMPLES: usize = 512;
/// The share of the lists probed at least. The bank's own rows are an
/// optimistic stand-in for new frames where a frame's neighbouring patches
/// are near copies of each other: a row's nearest other row is then
/// often its neighbour from the same frame, in the same list. On the drift
/// test's generated parts (20 frames, 16 x 16 cells, banks of 36 to 42
/// lists) the rule alone chose 1 or 2 lists, and the out-of-fold
/// calibration scores rose so far that the threshold went from 3.34 to
/// 9.14; with a quarter of the lists probed it was 3.34 again, as with
/// every list. On magnetic-tile the rule itself chose a quarter (16 of 64).
const MIN_PROBED_SHARE: f64 = 0.25;
/// The share of sampled rows whose nearest other row must lie in a probed
/// list. On magnetic-tile's bank (8192 rows, 64 lists) the rule chose 16
/// probes, and the nearest row of 99.7 % of the test patches was then
/// among the candidates (99.8 % with every list probed).
pub(super) const PROBE_RECALL: f64 = 0.995;

/// The lists: their centres in the projection and where each starts in
/// the reordered rows.
#[derive(Debug, Clone)]
pub(super) struct Lists {
    /// `count` x `dims`, row-major.
    centres: Vec<f32>,
    /// Their squared norms; infinite for an empty list, never probed.
    norms: Vec<f32>,
    /// Start of each list in the reordered rows, and the end of the last.
    starts: Vec<usize>,
    dims: usize,
    probes: usize,
}

/// The lists built over a bank, and the order they put its rows in.
pub(super) struct Grouping {
    pub lists: Lists,
    /// The bank row at each reordered position.
    pub ids: Vec<u32>,
}

impl Lists {
    /// Groups `projected` (row-major, `dims` per row) into about
    /// `rows / list_rows` lists (one list, probed always, when `list_rows`
    /// is 0 or the bank is small), each patch probing `probes` of them, or
    /// as many as the rule picks on `features` (the same rows in all
    /// `channels`).
    pub fn build(
        projected: &[f32],
        dims: usize,
        features: &[f32],
        channels: usize,
        list_rows: usize,
        probes: Option<usize>,
    ) -> Grouping {
        let rows = projected.len() / dims;
        let count = count_for(rows, list_rows);
        let (centres, labels) = kmeans(projected, dims, count);
        let mut starts = vec![0usize; count + 1];
        for &label in &labels {
            starts[label as usize + 1] += 1;
        }
        for l in 0..count {
            starts[l + 1] += starts[l];
        }
        let mut next = starts.clone();
        let mut ids = vec![0u32; rows];
        for (row, &label) in labels.iter().enumerate() {
            ids[next[label as usize]] = row as u32;
            next[label as usize] += 1;
        }
        let norms = centres
            .chunks_exact(dims)
            .zip(starts.windows(2))
            .map(|(c, span)| {
                if span[0] == span[1] {
                    f32::INFINITY
                } else {
                    c.iter().map(|v| v * v).sum()
                }
            })
            .collect();
        let mut lists = Self {
            centres,
            norms,
            starts,
            dims,
            probes: count,
        };
        match probes {
            Some(probes) => lists.set_probes(probes),
            None if count > 1 => lists.probes = lists.choose_probes(projected, features, channels, &labels),
            None => {}
        }
        Grouping { lists, ids }
    }

    /// Number of lists.
    pub fn count(&self) -> usize {
        self.norms.len()
    }

    /// Lists each patch probes.
    pub fn probes(&self) -> usize {
        self.probes
    }

    /// Makes each patch probe `probes` lists (at least one, at most all).
    pub fn set_probes(&mut self, probes: usize) {
        self.probes = probes.clamp(1, self.count());
    }

    /// The reordered positions of list `list`.
    pub fn span(&self, list: usize) -> std::ops::Range<usize> {
        self.starts[list]..self.starts[list + 1]
    }

    /// For each of `count` patches of `projected` (row-major), writes the
    /// `probes` lists it probes into `probed` (`count * probes` values, the
    /// nearest list first), using `products` and `order` as scratch.
    pub fn probe(
        &self,
        projected: &[f32],
        count: usize,
        products: &mut Vec<f32>,
        order: &mut Vec<(f32, u32)>,
        probed: &mut Vec<u32>,
    ) {
        let lists = self.count();
        probed.clear();
        if lists == 1 {
            probed.resize(count, 0);
            return;
        }
        products.resize(count * lists, 0.0);
        dot_products(
            &projected[..count * self.dims],
            &self.centres,
            self.dims,
            1.0,
            products,
        );
        for row in products.chunks_exact(lists).take(count) {
            order.clear();
            order.extend(
                row.iter()
                    .zip(&self.norms)
                    .enumerate()
                    .map(|(l, (p, n))| (n - 2.0 * p, l as u32)),
            );
            let kept = &mut order[..];
            if self.probes < lists {
                kept.select_nth_unstable_by(self.probes - 1, |a, b| a.0.total_cmp(&b.0));
            }
            let kept = &mut kept[..self.probes];
            // The nearest list first.
            let nearest = (0..kept.len())
                .min_by(|&a, &b| kept[a].0.total_cmp(&kept[b].0))
                .unwrap_or(0);
            kept.swap(0, nearest);
            probed.extend(kept.iter().map(|&(_, l)| l));
        }
    }

    /// The probe rule (see the module's documentation).
    fn choose_probes(&self, projected: &[f32], features: &[f32], channels: usize, labels: &[u32]) -> usize {
        let rows = labels.len();
        let samples = SAMPLES.min(rows);
        let picks: Vec<usize> = (0..samples).map(|s| s * rows / samples).collect();
        let gather = |values: &[f32], width: usize| -> Vec<f32> {
            picks
                .iter()
                .flat_map(|&r| values[r * width..][..width].iter().copied())
                .collect()
        };
        let nearest = nearest_other(&gather(features, channels), &picks, features, channels);
        let mut products = vec![0.0; samples * self.count()];
        dot_products(
            &gather(projected, self.dims),
            &self.centres,
            self.dims,
            1.0,
            &mut products,
        );
        let mut needed: Vec<usize> = products
            .chunks_exact(self.count())
            .zip(&nearest)
            .map(|(row, &other)| {
                let value = |l: usize| self.norms[l] - 2.0 * row[l];
                let target = value(labels[other] as usize);
                1 + (0..self.count()).filter(|&l| value(l) < target).count()
            })
            .collect();
        needed.sort_unstable();
        let at = ((PROBE_RECALL * samples as f64).ceil() as usize).clamp(1, samples);
        let floor = (MIN_PROBED_SHARE * self.count() as f64).ceil() as usize;
        needed[at - 1].max(floor).clamp(1, self.count())
    }
}

/// The lists a bank of `rows` rows is grouped into, about `list_rows` rows
/// each (one when `list_rows` is 0).
pub(super) fn count_for(rows: usize, list_rows: usize) -> usize {
    rows.checked_div(list_rows).unwrap_or(1).max(1)
}

/// `out[i * n + j] = scale * a_i . b_j` for `a` and `b` row-major with
/// `width` values per row (`n` rows in `b`).
pub(super) fn dot_products(a: &[f32], b: &[f32], width: usize, scale: f32, out: &mut [f32]) {
    let (m, n) = (a.len() / width, b.len() / width);
    assert!(
        a.len() == m * width && b.len() == n * width && out.len() >= m * n,
        "product shapes; this is a bug"
    );
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: A (m x width) and B^T (width x n, read from `b` with row
    // stride 1 and column stride width) lie within `a` and `b`, and C
    // (m x n, row-major) within `out`, as asserted above.
    unsafe {
        matrixmultiply::sgemm(
            m,
            width,
            n,
            scale,
            a.as_ptr(),
            width as isize,
            1,
            b.as_ptr(),
            1,
            width as isize,
            0.0,
            out.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// For each sampled row (`samples`, row-major, bank row `picks[i]`), the
/// bank row nearest it other than itself.
fn nearest_other(samples: &[f32], picks: &[usize], bank: &[f32], channels: usize) -> Vec<usize> {
    let rows = bank.len() / channels;
    let norms: Vec<f32> = bank
        .chunks_exact(channels)
        .map(|r| r.iter().map(|v| v * v).sum())
        .collect();
    let mut best = vec![(f32::INFINITY, 0usize); picks.len()];
    let mut products = vec![0.0; picks.len() * BLOCK];
    let mut start = 0;
    while start < rows {
        let block = BLOCK.min(rows - start);
        let part = &mut products[..picks.len() * block];
        dot_products(
            samples,
            &bank[start * channels..(start + block) * channels],
            channels,
            1.0,
            part,
        );
        for ((best, row), &pick) in best.iter_mut().zip(part.chunks_exact(block)).zip(picks) {
            for (j, p) in row.iter().enumerate() {
                let value = norms[start + j] - 2.0 * p;
                if start + j != pick && value < best.0 {
                    *best = (value, start + j);
                }
            }
        }
        start += block;
    }
    best.into_iter().map(|(_, row)| row).collect()
}

/// Lloyd's k-means of `rows` (row-major, `dims` per row) into `count`
/// groups, started from evenly spaced rows: the centres (row-major) and
/// each row's group. A group that empties keeps its last centre.
fn kmeans(rows: &[f32], dims: usize, count: usize) -> (Vec<f32>, Vec<u32>) {
    let n = rows.len() / dims;
    let mut centres: Vec<f32> = (0..count)
        .flat_map(|c| rows[(c * n / count) * dims..][..dims].iter().copied())
        .collect();
    let mut labels = vec![0u32; n];
    if count == 1 {
        let mut mean = vec![0.0f64; dims];
        accumulate(rows, dims, &labels, &mut mean, &mut [0]);
        centres = mean.iter().map(|m| (m / n.max(1) as f64) as f32).collect();
        return (centres, labels);
    }
    let mut products = vec![0.0; n * count];
    let mut sums = vec![0.0f64; count * dims];
    let mut sizes = vec![0usize; count];
    for round in 0..ROUNDS {
        dot_products(rows, &centres, dims, 1.0, &mut products);
        let norms: Vec<f32> = centres
            .chunks_exact(dims)
            .map(|c| c.iter().map(|v| v * v).sum())
            .collect();
        let mut moved = false;
        for (label, row) in labels.iter_mut().zip(products.chunks_exact(count)) {
            let (nearest, _) = row
                .iter()
                .zip(&norms)
                .map(|(p, n)| n - 2.0 * p)
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .expect("at least one centre");
            moved |= *label != nearest as u32;
            *label = nearest as u32;
        }
        if !moved && round > 0 {
            break;
        }
        sums.fill(0.0);
        sizes.fill(0);
        accumulate(rows, dims, &labels, &mut sums, &mut sizes);
        for ((centre, sum), &size) in centres
            .chunks_exact_mut(dims)
            .zip(sums.chunks_exact(dims))
            .zip(&sizes)
        {
            if size > 0 {
                for (c, s) in centre.iter_mut().zip(sum) {
                    *c = (s / size as f64) as f32;
                }
            }
        }
    }
    (centres, labels)
}

/// Adds each row into its group's sum and counts it.
fn accumulate(rows: &[f32], dims: usize, labels: &[u32], sums: &mut [f64], sizes: &mut [usize]) {
    for (row, &label) in rows.chunks_exact(dims).zip(labels) {
        let label = label as usize;
        sizes[label] += 1;
        for (s, &v) in sums[label * dims..][..dims].iter_mut().zip(row) {
            *s += f64::from(v);
        }
    }
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

    /// The lists probed for each row of `queries`.
    fn probed(lists: &Lists, queries: &[f32]) -> Vec<u32> {
        let (mut products, mut order, mut probed) = (Vec::new(), Vec::new(), Vec::new());
        lists.probe(
            queries,
            queries.len() / lists.dims,
            &mut products,
            &mut order,
            &mut probed,
        );
        probed
    }

    #[test]
    fn separated_groups_become_one_list_each_probed_alone() {
        // Three blobs far apart, 100 rows each, interleaved in the bank.
        let dims = 4;
        let noise = uniform(300 * dims, 1);
        let rows: Vec<f32> = noise
            .iter()
            .enumerate()
            .map(|(i, v)| 10.0 * ((i / dims) % 3) as f32 + v)
            .collect();
        let Grouping { lists, ids } = Lists::build(&rows, dims, &rows, dims, 100, None);
        assert_eq!((lists.count(), lists.probes()), (3, 1));
        let mut seen = ids.clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..300).collect::<Vec<u32>>(), "each row in one list");
        for list in 0..3 {
            let blobs: Vec<u32> = ids[lists.span(list)].iter().map(|id| id % 3).collect();
            assert_eq!(blobs.len(), 100);
            assert!(blobs.iter().all(|b| *b == blobs[0]), "list {list} mixes blobs");
        }
        // A fresh point of a blob probes that blob's list.
        let probe = probed(&lists, &[20.5; 4]);
        assert!(ids[lists.span(probe[0] as usize)].iter().all(|id| id % 3 == 2));
    }

    #[test]
    fn on_fresh_queries_the_nearest_row_is_in_a_probed_list_as_often_as_the_rule_says() {
        // Uniform data: no clusters to lean on, the hard case for lists.
        let dims = 8;
        let bank = uniform(4096 * dims, 2);
        let queries = uniform(1000 * dims, 3);
        let Grouping { lists, ids } = Lists::build(&bank, dims, &bank, dims, 64, None);
        assert_eq!(lists.count(), 64);
        assert!(
            lists.probes() > 1 && lists.probes() < 64,
            "{} probes",
            lists.probes()
        );
        let mut list_of = vec![0u32; ids.len()];
        for list in 0..lists.count() {
            for position in lists.span(list) {
                list_of[ids[position] as usize] = list as u32;
            }
        }
        let probes = lists.probes();
        let probed = probed(&lists, &queries);
        let found = queries
            .chunks_exact(dims)
            .zip(probed.chunks_exact(probes))
            .filter(|(query, probed)| {
                let distance = |r: &[f32]| r.iter().zip(*query).map(|(a, b)| (a - b) * (a - b)).sum::<f32>();
                let (nearest, _) = bank
                    .chunks_exact(dims)
                    .map(distance)
                    .enumerate()
                    .min_by(|a, b| a.1.total_cmp(&b.1))
                    .unwrap();
                probed.contains(&list_of[nearest])
            })
            .count();
        // The rule asks for 99.5 % of the sampled bank rows; fresh queries
        // come within a point of it.
        let share = found as f64 / 1000.0;
        assert!(
            share >= PROBE_RECALL - 0.01,
            "nearest row in a probed list for {share}"
        );
    }

    #[test]
    fn without_lists_the_whole_bank_is_one_list() {
        let bank = uniform(500 * 3, 4);
        let Grouping { lists, ids } = Lists::build(&bank, 3, &bank, 3, 0, None);
        assert_eq!((lists.count(), lists.probes()), (1, 1));
        assert_eq!(lists.span(0), 0..500);
        assert_eq!(ids, (0..500).collect::<Vec<u32>>());
        assert_eq!(probed(&lists, &bank[..6]), [0, 0]);
    }
}
