//! Turns per-frame results into the benchmark's numbers: image-level metrics
//! overall and per defect type, pixel metrics against ground-truth masks,
//! defect recall and precision for golden pairs, and latency percentiles.
//! The metric definitions themselves live in [`super::metrics`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::engine::{Region, Verdict};
use crate::scoring::map::AnomalyMap;

use super::dataset::{DefectBox, Mask};
use super::metrics::{self, Aupro, PixelAuroc};

/// One judged test frame.
#[derive(Debug, Clone)]
pub struct Record {
    /// The frame file.
    pub path: PathBuf,
    /// The path as written to scores.csv (relative to the dataset folder).
    pub name: String,
    /// Whether the part is defective.
    pub defect: bool,
    /// The MVTec test folder (`good`, `crack`, ...); `good` or `defect` for
    /// golden pairs.
    pub defect_type: String,
    /// Anomaly score.
    pub score: f32,
    /// Threshold it was judged against.
    pub threshold: f32,
    /// Pass or fail.
    pub verdict: Verdict,
    /// Engine total (in-process) or round trip (server).
    pub latency: Duration,
    /// Time inside ONNX Runtime.
    pub inference: Duration,
    /// The ground-truth mask file, if any.
    pub mask: Option<PathBuf>,
    /// Golden pairs: the reference image.
    pub reference: Option<PathBuf>,
    /// Golden pairs: annotated defect boxes, in frame pixels.
    pub boxes: Vec<DefectBox>,
}

impl Record {
    /// Whether the frame failed.
    pub fn failed(&self) -> bool {
        self.verdict == Verdict::Fail
    }
}

/// Image-level metrics over a set of records.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ImageMetrics {
    /// AUROC; `None` unless both good and defective frames exist.
    pub auroc: Option<f64>,
    /// Best F1 over thresholds (`score >= t` fails); `None` as for AUROC.
    pub f1_max: Option<f64>,
    /// The threshold reaching it.
    pub f1_threshold: Option<f32>,
    /// Good frames that failed, of all good frames.
    pub false_reject_rate: Option<f64>,
    /// Defective frames that passed, of all defective frames.
    pub escape_rate: Option<f64>,
    /// Good frames.
    pub good: usize,
    /// Defective frames.
    pub defect: usize,
    /// Good frames that failed.
    pub false_rejects: usize,
    /// Defective frames that passed.
    pub escapes: usize,
}

/// Image-level metrics of `records`. Rates use each frame's own verdict
/// (its score against the threshold in force for it).
pub fn image_metrics(records: &[Record]) -> ImageMetrics {
    let scores: Vec<f32> = records.iter().map(|r| r.score).collect();
    let labels: Vec<bool> = records.iter().map(|r| r.defect).collect();
    // `score > threshold` exactly when `score - threshold > 0` for finite
    // floats (subnormals make a difference zero only for equal values), so
    // this is the verdict rule even where thresholds differ per frame.
    let margins: Vec<f32> = records.iter().map(|r| r.score - r.threshold).collect();
    let rates = metrics::rates_at(&margins, &labels, 0.0);
    let both = rates.good > 0 && rates.defective > 0;
    let f1 = if both {
        metrics::f1_max(&scores, &labels)
    } else {
        None
    };
    ImageMetrics {
        auroc: if both {
            metrics::auroc(&scores, &labels)
        } else {
            None
        },
        f1_max: f1.map(|f| f.f1),
        f1_threshold: f1.map(|f| f.threshold),
        false_reject_rate: rates.false_reject_rate,
        escape_rate: rates.escape_rate,
        good: rates.good,
        defect: rates.defective,
        false_rejects: rates.false_rejects,
        escapes: rates.escapes,
    }
}

/// One defect type's numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TypeStats {
    /// `good` or `defect`.
    pub label: &'static str,
    /// Frames of this type.
    pub count: usize,
    /// Frames that failed.
    pub failed: usize,
    /// Good type: failed / count.
    pub false_reject_rate: Option<f64>,
    /// Defect types: passed / count.
    pub escape_rate: Option<f64>,
    /// Defect types: AUROC of this type against every good frame.
    pub image_auroc: Option<f64>,
}

/// Per-type numbers, by type name.
pub fn per_type(records: &[Record]) -> BTreeMap<String, TypeStats> {
    let good: Vec<&Record> = records.iter().filter(|r| !r.defect).collect();
    let mut types: BTreeMap<String, Vec<&Record>> = BTreeMap::new();
    for record in records {
        types.entry(record.defect_type.clone()).or_default().push(record);
    }
    types
        .into_iter()
        .map(|(name, members)| {
            let count = members.len();
            let failed = members.iter().filter(|r| r.failed()).count();
            let defect = members.iter().any(|r| r.defect);
            let stats = if defect {
                let subset: Vec<Record> = good.iter().chain(&members).map(|&r| r.clone()).collect();
                TypeStats {
                    label: "defect",
                    count,
                    failed,
                    false_reject_rate: None,
                    escape_rate: Some((count - failed) as f64 / count as f64),
                    image_auroc: image_metrics(&subset).auroc,
                }
            } else {
                TypeStats {
                    label: "good",
                    count,
                    failed,
                    false_reject_rate: Some(failed as f64 / count as f64),
                    escape_rate: None,
                    image_auroc: None,
                }
            };
            (name, stats)
        })
        .collect()
}

/// Pixel AUROC and AUPRO, accumulated frame by frame.
#[derive(Debug, Default)]
pub struct PixelMetrics {
    auroc: PixelAuroc,
    aupro: Aupro,
    /// Frames added.
    pub images: usize,
}

impl PixelMetrics {
    /// Adds one frame: `mask` (over the same area as `map`, at any size) is
    /// resized to the map's size by nearest neighbour.
    pub fn add(&mut self, map: &AnomalyMap, mask: &Mask) {
        let mask = mask.resize_nearest(map.width, map.height);
        self.auroc.add(&map.data, &mask.data);
        self.aupro.add(&map.data, &mask.data, map.width, map.height);
        self.images += 1;
    }

    /// (pixel AUROC, AUPRO); each `None` without defect or good pixels.
    pub fn finish(&self) -> (Option<f64>, Option<f64>) {
        (self.auroc.finish(), self.aupro.finish())
    }
}

/// Found and total for one kind of defect.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Recall {
    /// Annotated defects.
    pub annotated: usize,
    /// Those overlapped by a reported region.
    pub found: usize,
    /// found / annotated.
    pub recall: Option<f64>,
}

/// Defect-level recall and precision: an annotated box is found when a
/// reported region shares a pixel with it; a region is true when it shares
/// a pixel with an annotated box.
#[derive(Debug, Clone, Default)]
pub struct Detection {
    /// Per annotated kind: (annotated, found).
    by_kind: BTreeMap<String, (usize, usize)>,
    /// Reported regions.
    pub regions: usize,
    /// Reported regions overlapping a box.
    pub true_regions: usize,
}

impl Detection {
    /// Adds one frame's boxes and regions (both in frame pixels).
    pub fn add(&mut self, boxes: &[DefectBox], regions: &[Region]) {
        for b in boxes {
            let found = regions.iter().any(|r| b.overlaps(r.x, r.y, r.width, r.height));
            let entry = self.by_kind.entry(b.kind.clone()).or_default();
            entry.0 += 1;
            entry.1 += usize::from(found);
        }
        self.regions += regions.len();
        self.true_regions += regions
            .iter()
            .filter(|r| boxes.iter().any(|b| b.overlaps(r.x, r.y, r.width, r.height)))
            .count();
    }

    /// All kinds together.
    pub fn total(&self) -> Recall {
        let (annotated, found) = self
            .by_kind
            .values()
            .fold((0, 0), |(a, f), &(ka, kf)| (a + ka, f + kf));
        recall(annotated, found)
    }

    /// Per kind.
    pub fn by_kind(&self) -> BTreeMap<String, Recall> {
        self.by_kind
            .iter()
            .map(|(kind, &(annotated, found))| (kind.clone(), recall(annotated, found)))
            .collect()
    }

    /// True regions / regions; `None` without regions.
    pub fn precision(&self) -> Option<f64> {
        (self.regions > 0).then(|| self.true_regions as f64 / self.regions as f64)
    }
}

fn recall(annotated: usize, found: usize) -> Recall {
    Recall {
        annotated,
        found,
        recall: (annotated > 0).then(|| found as f64 / annotated as f64),
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Mean.
    pub mean: Option<f64>,
    /// Slowest frame.
    pub max: Option<f64>,
}

/// The nearest-rank `p`-th percentile (0 < p <= 100) of ascending `sorted`:
/// the value at rank `ceil(p / 100 * n)`.
pub fn nearest_rank(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Milliseconds, sorted.
pub fn sorted_ms(durations: impl Iterator<Item = Duration>) -> Vec<f64> {
    let mut ms: Vec<f64> = durations.map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    ms
}

/// Percentiles of `durations`.
pub fn latency(durations: impl Iterator<Item = Duration>) -> Latency {
    let ms = sorted_ms(durations);
    Latency {
        p50: nearest_rank(&ms, 50.0),
        p90: nearest_rank(&ms, 90.0),
        p99: nearest_rank(&ms, 99.0),
        mean: (!ms.is_empty()).then(|| ms.iter().sum::<f64>() / ms.len() as f64),
        max: ms.last().copied(),
    }
}

/// Peak resident memory of this process (VmHWM), in MB; `None` where
/// /proc is not available.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(defect_type: &str, score: f32, threshold: f32) -> Record {
        Record {
            path: PathBuf::new(),
            name: String::new(),
            defect: defect_type != "good",
            defect_type: defect_type.to_owned(),
            score,
            threshold,
            verdict: if score > threshold {
                Verdict::Fail
            } else {
                Verdict::Pass
            },
            latency: Duration::ZERO,
            inference: Duration::ZERO,
            mask: None,
            reference: None,
            boxes: Vec::new(),
        }
    }

    #[test]
    fn image_metrics_by_hand_with_ties() {
        // good 1, 2, 3; defects 3 (tie), 5. Threshold 2.5.
        let records = [
            record("good", 1.0, 2.5),
            record("good", 2.0, 2.5),
            record("good", 3.0, 2.5),
            record("crack", 3.0, 2.5),
            record("hole", 5.0, 2.5),
        ];
        let m = image_metrics(&records);
        // Pairs (defect, good): 3 vs {1, 2, 3} = 2.5, 5 vs all = 3; 5.5 / 6.
        assert!((m.auroc.unwrap() - 5.5 / 6.0).abs() < 1e-12);
        // t = 5: F1 = 2/3; t = 3: TP 2, FP 1, F1 = 4/5.
        assert!((m.f1_max.unwrap() - 0.8).abs() < 1e-12);
        assert_eq!(m.f1_threshold, Some(3.0));
        assert_eq!((m.false_rejects, m.escapes), (1, 0));
        assert!((m.false_reject_rate.unwrap() - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(m.escape_rate, Some(0.0));
        let types = per_type(&records);
        assert_eq!(types["good"].false_reject_rate, Some(1.0 / 3.0));
        // crack (3) against good {1, 2, 3}: 2.5 / 3.
        assert!((types["crack"].image_auroc.unwrap() - 2.5 / 3.0).abs() < 1e-12);
        assert_eq!(types["hole"].escape_rate, Some(0.0));
    }

    #[test]
    fn a_score_equal_to_its_threshold_passes_and_one_class_has_no_auroc() {
        let records = [record("defect", 2.0, 2.0), record("defect", 4.0, 3.0)];
        let m = image_metrics(&records);
        assert_eq!((m.escapes, m.escape_rate), (1, Some(0.5)));
        assert_eq!((m.auroc, m.f1_max, m.false_reject_rate), (None, None, None));
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(nearest_rank(&v, 50.0), Some(5.0));
        assert_eq!(nearest_rank(&v, 90.0), Some(9.0));
        assert_eq!(nearest_rank(&v, 99.0), Some(10.0));
        assert_eq!(nearest_rank(&[7.0], 1.0), Some(7.0));
        assert_eq!(nearest_rank(&[], 50.0), None);
        let l = latency([3, 1, 2].into_iter().map(Duration::from_millis));
        assert_eq!((l.p50, l.max, l.mean), (Some(2.0), Some(3.0), Some(2.0)));
    }

    #[test]
    fn detection_counts_overlaps_both_ways() {
        let boxes = [
            DefectBox {
                x1: 0,
                y1: 0,
                x2: 10,
                y2: 10,
                kind: "1".into(),
            },
            DefectBox {
                x1: 50,
                y1: 50,
                x2: 60,
                y2: 60,
                kind: "2".into(),
            },
        ];
        let region = |x, y| Region {
            x,
            y,
            width: 5,
            height: 5,
            area: 25,
            max_score: 1.0,
            mean_score: 1.0,
        };
        let mut detection = Detection::default();
        detection.add(&boxes, &[region(8, 8), region(30, 30)]);
        assert_eq!(
            detection.total(),
            Recall {
                annotated: 2,
                found: 1,
                recall: Some(0.5)
            }
        );
        assert_eq!(detection.by_kind()["2"].found, 0);
        assert_eq!(detection.precision(), Some(0.5));
        assert_eq!(Detection::default().precision(), None);
    }

    #[test]
    fn pixel_metrics_resize_the_mask_to_the_map() {
        let map = AnomalyMap {
            width: 2,
            height: 2,
            data: vec![0.1, 0.9, 0.2, 0.3],
        };
        // 4x4 mask with the top-right quadrant defective.
        let mut mask = Mask::empty(4, 4);
        for y in 0..2 {
            for x in 2..4 {
                mask.data[y * 4 + x] = true;
            }
        }
        let mut pixels = PixelMetrics::default();
        pixels.add(&map, &mask);
        let (auroc, aupro) = pixels.finish();
        assert_eq!(auroc, Some(1.0));
        assert!((aupro.unwrap() - 1.0).abs() < 1e-9);
    }
}
