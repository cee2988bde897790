//! The benchmark's outputs for machines and the terminal: report.json (the
//! schema is [`Report`]; README's "Benchmark" section lists it too),
//! scores.csv, and the summary table.
//!
//! report.json keys are stable: every key is always present, with `null`
//! where a metric does not apply (no masks, one class only, ...).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::engine::{RecipeSettings, Verdict};
use crate::scoring::threshold;

use super::dataset::{Dataset, Format};
use super::evaluate::{self, Latency, Recall, Record, TypeStats};
use super::metrics::{self, DEFAULT_FPR_LIMIT};
use super::runner::ModelInfo;
use super::{BenchConfig, BenchError, Measured};

/// Version of the report.json layout; bumped when a key changes meaning or
/// goes away.
pub const SCHEMA_VERSION: u32 = 1;

/// report.json. Rates and AUROCs are fractions in [0, 1]; times in seconds
/// or milliseconds as the key says.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The Loupe version that measured.
    pub loupe_version: String,
    /// The dataset folder as given.
    pub dataset: String,
    /// `mvtec` or `pairs`.
    pub format: Format,
    /// `in-process` or `server`.
    pub runner: &'static str,
    /// The server's address in server mode, else `null`.
    pub server: Option<String>,
    /// The feature model (in-process runs; `null` in server mode).
    pub model: Option<ModelInfo>,
    /// The recipe settings benchmarked, as `--settings` reads them.
    pub settings: RecipeSettings,
    /// `--train-limit`, if given.
    pub train_limit: Option<usize>,
    /// The threshold in force, calibrated from good training images only
    /// (or fixed by the settings); for pairs, the median over the pairs'
    /// own thresholds.
    pub threshold: Option<f32>,
    /// Pairs: the lowest and highest per-pair threshold; `null` for MVTec.
    pub threshold_range: Option<[f32; 2]>,
    /// MVTec, in-process: the out-of-fold scores of the good training
    /// images that calibrated `threshold`, with the rule and the expected
    /// false-reject rate; `null` otherwise.
    pub calibration: Option<Calibration>,
    /// MVTec, in-process, global mode with the fast search: the bank's
    /// inverted lists and how many each patch probes (chosen at
    /// enrollment); `null` otherwise.
    pub fast_search: Option<FastSearch>,
    /// Image AUROC (score vs defective); `null` unless both classes exist.
    pub image_auroc: Option<f64>,
    /// Best F1 over all thresholds.
    pub image_f1_max: Option<f64>,
    /// The score threshold (`score >= t` fails) reaching `image_f1_max`.
    pub image_f1_threshold: Option<f32>,
    /// Good parts failed at `threshold`, of all good parts.
    pub false_reject_rate: Option<f64>,
    /// Defective parts passed at `threshold`, of all defective parts.
    pub escape_rate: Option<f64>,
    /// The best thresholds at 1 %, 2 % and 5 % false rejects, picked on the
    /// test set itself (so not what a user gets on day one), with the escape
    /// rates they give and the `sensitivity` that would set each; empty
    /// unless both classes exist.
    pub operating_points: Vec<ReportedPoint>,
    /// Per test folder (MVTec) or `good`/`defect` (pairs).
    pub per_type: BTreeMap<String, TypeStats>,
    /// Pixel AUROC of the anomaly maps against the masks (resized to the
    /// map, nearest neighbour); `null` without masks.
    pub pixel_auroc: Option<f64>,
    /// Normalised area under the PRO curve up to `aupro_fpr_limit`.
    pub aupro: Option<f64>,
    /// The AUPRO integration limit (0.3, as in MVTec AD).
    pub aupro_fpr_limit: f64,
    /// Pairs: annotated defects overlapped by a reported region.
    pub defect_recall: Option<f64>,
    /// Pairs: reported regions overlapping an annotated defect.
    pub defect_precision: Option<f64>,
    /// Pairs: recall per annotated type (defects.txt's fifth column).
    pub defect_recall_by_type: BTreeMap<String, Recall>,
    /// How many of what.
    pub counts: Counts,
    /// Enrollment wall time (reading, features, reference, calibration);
    /// pairs: summed over the pairs.
    pub enroll_seconds: f64,
    /// Per-frame latency: the engine's decode-to-regions time in-process,
    /// the client's round trip in server mode.
    pub latency_ms: Latency,
    /// Median time inside ONNX Runtime per frame.
    pub inference_ms_p50: Option<f64>,
    /// Median time outside ONNX Runtime (decode, preprocess, search, map,
    /// regions; plus transport in server mode).
    pub outside_ms_p50: Option<f64>,
    /// Frames judged per second, one at a time: frames / test-loop wall
    /// time (pairs: without the per-pair enrollment).
    pub throughput_fps: Option<f64>,
    /// Peak resident memory of the benchmark process (VmHWM), MB; in server
    /// mode that is the client, not the server.
    pub peak_rss_mb: Option<f64>,
}

/// An operating point as report.json has it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ReportedPoint {
    /// The point: `target_false_reject_rate`, `threshold`,
    /// `false_reject_rate`, `escape_rate`.
    #[serde(flatten)]
    pub point: metrics::OperatingPoint,
    /// The `sensitivity` setting that moves the calibrated threshold there
    /// (`null` when the settings fix the threshold).
    pub sensitivity: Option<f64>,
}

/// False-reject rates whose best thresholds the report gives.
pub const FALSE_REJECT_TARGETS: [f64; 3] = [0.01, 0.02, 0.05];

/// Summary of the calibration scores.
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    /// How many good images (out of fold) or perturbed copies were scored.
    pub count: usize,
    /// The rule that set the threshold from them, in words.
    pub rule: String,
    /// The false-reject rate asked for.
    pub target_false_reject_rate: f32,
    /// The false-reject rate the rule expects; `null` for one golden image.
    pub expected_false_reject_rate: Option<f32>,
    /// Lowest score.
    pub min: f32,
    /// Median (nearest rank).
    pub median: f32,
    /// Highest score.
    pub max: f32,
}

impl Calibration {
    fn of(scores: &[f32], images: usize, target: f32) -> Option<Self> {
        let calibrated = threshold::calibrate(scores, images, target)?;
        let mut sorted = scores.to_vec();
        sorted.sort_by(f32::total_cmp);
        Some(Self {
            count: sorted.len(),
            rule: calibrated.rule.to_string(),
            target_false_reject_rate: target,
            expected_false_reject_rate: calibrated.expected_false_reject_rate,
            min: *sorted.first()?,
            median: sorted[(sorted.len() - 1) / 2],
            max: *sorted.last()?,
        })
    }
}

/// The fast search's shape for the recipe benchmarked.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FastSearch {
    /// Inverted lists of the bank.
    pub lists: usize,
    /// Lists each patch probes.
    pub probed: usize,
}

/// Counts behind the rates.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Training (reference) images used.
    pub train: usize,
    /// Test frames.
    pub test: usize,
    /// Good test frames.
    pub good: usize,
    /// Defective test frames.
    pub defect: usize,
    /// Good frames that failed at the threshold.
    pub false_rejects: usize,
    /// Defective frames that passed.
    pub escapes: usize,
    /// Frames in the pixel metrics.
    pub pixel_images: usize,
    /// Defective frames without a mask (left out of the pixel metrics).
    pub missing_masks: usize,
    /// Pairs: annotated defects.
    pub annotated_defects: Option<usize>,
    /// Pairs: annotated defects found.
    pub found_defects: Option<usize>,
    /// Pairs: regions reported.
    pub reported_regions: Option<usize>,
    /// Pairs: reported regions on an annotated defect.
    pub true_regions: Option<usize>,
}

impl Report {
    /// Assembles the report from what a run measured.
    pub fn build(
        config: &BenchConfig,
        dataset: &Dataset,
        settings: &RecipeSettings,
        model: Option<&ModelInfo>,
        measured: &Measured,
    ) -> Self {
        let records = &measured.records;
        let image = evaluate::image_metrics(records);
        let (pixel_auroc, aupro) = measured.pixels.as_ref().map_or((None, None), |p| p.finish());
        let mut thresholds: Vec<f32> = records.iter().map(|r| r.threshold).collect();
        thresholds.sort_by(f32::total_cmp);
        let threshold = thresholds.get(thresholds.len().saturating_sub(1) / 2).copied();
        let threshold_range = match dataset.format() {
            Format::Pairs => thresholds.first().zip(thresholds.last()).map(|(&a, &b)| [a, b]),
            Format::Mvtec => None,
        };
        let inference = evaluate::sorted_ms(records.iter().map(|r| r.inference));
        let outside = evaluate::sorted_ms(records.iter().map(|r| r.latency.saturating_sub(r.inference)));
        let detection = measured.detection.as_ref();
        let total = detection.map(|d| d.total());
        Self {
            schema_version: SCHEMA_VERSION,
            loupe_version: env!("CARGO_PKG_VERSION").to_owned(),
            dataset: config.dir.display().to_string(),
            format: dataset.format(),
            runner: if config.server.is_some() {
                "server"
            } else {
                "in-process"
            },
            server: config.server.as_ref().map(|server| server.server.clone()),
            model: model.cloned(),
            settings: settings.clone(),
            train_limit: config.train_limit,
            threshold,
            threshold_range,
            calibration: measured.calibration_scores.as_deref().and_then(|scores| {
                Calibration::of(scores, measured.train_images, settings.target_false_reject_rate)
            }),
            fast_search: measured
                .fast_lists
                .map(|(lists, probed)| FastSearch { lists, probed }),
            image_auroc: image.auroc,
            image_f1_max: image.f1_max,
            image_f1_threshold: image.f1_threshold,
            false_reject_rate: image.false_reject_rate,
            escape_rate: image.escape_rate,
            operating_points: operating_points(records, settings, threshold),
            per_type: evaluate::per_type(records),
            pixel_auroc,
            aupro,
            aupro_fpr_limit: DEFAULT_FPR_LIMIT,
            defect_recall: total.as_ref().and_then(|t| t.recall),
            defect_precision: detection.and_then(|d| d.precision()),
            defect_recall_by_type: detection.map(|d| d.by_kind()).unwrap_or_default(),
            counts: Counts {
                train: measured.train_images,
                test: records.len(),
                good: image.good,
                defect: image.defect,
                false_rejects: image.false_rejects,
                escapes: image.escapes,
                pixel_images: measured.pixels.as_ref().map_or(0, |p| p.images),
                missing_masks: measured.missing_masks,
                annotated_defects: total.as_ref().map(|t| t.annotated),
                found_defects: total.as_ref().map(|t| t.found),
                reported_regions: detection.map(|d| d.regions),
                true_regions: detection.map(|d| d.true_regions),
            },
            enroll_seconds: measured.enroll_seconds,
            latency_ms: evaluate::latency(records.iter().map(|r| r.latency)),
            inference_ms_p50: evaluate::nearest_rank(&inference, 50.0),
            outside_ms_p50: evaluate::nearest_rank(&outside, 50.0),
            throughput_fps: (measured.test_seconds > 0.0)
                .then(|| records.len() as f64 / measured.test_seconds),
            peak_rss_mb: evaluate::peak_rss_mb(),
        }
    }
}

/// The best thresholds at [`FALSE_REJECT_TARGETS`], each with the
/// sensitivity that gives it: the threshold in force is the calibrated one
/// over the sensitivity, so `sensitivity x in_force / point`.
fn operating_points(
    records: &[Record],
    settings: &RecipeSettings,
    in_force: Option<f32>,
) -> Vec<ReportedPoint> {
    let scores: Vec<f32> = records.iter().map(|r| r.score).collect();
    let labels: Vec<bool> = records.iter().map(|r| r.defect).collect();
    FALSE_REJECT_TARGETS
        .iter()
        .filter_map(|&target| metrics::operating_point(&scores, &labels, target))
        .map(|point| ReportedPoint {
            point,
            sensitivity: in_force
                .filter(|_| settings.threshold.is_none() && point.threshold > 0.0)
                .map(|t| f64::from(settings.sensitivity) * f64::from(t) / f64::from(point.threshold)),
        })
        .collect()
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), BenchError> {
    std::fs::write(path, bytes).map_err(|error| BenchError::Write {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })
}

/// Writes report.json, pretty-printed.
pub fn write_json(path: &Path, report: &Report) -> Result<(), BenchError> {
    let mut text = serde_json::to_string_pretty(report)
        .map_err(|error| BenchError::Internal(format!("report serialisation: {error}")))?;
    text.push('\n');
    write(path, text.as_bytes())
}

/// A CSV field, quoted when it holds a comma, quote or line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// scores.csv: `path,label,defect_type,score,verdict`, one row per test
/// frame in dataset order; scores printed in full (shortest round-trip
/// form of the f32), so metrics recomputed from the file are exact.
pub fn csv(records: &[Record]) -> String {
    let mut out = String::from("path,label,defect_type,score,verdict\n");
    for r in records {
        let _ = writeln!(
            out,
            "{},{},{},{},{}",
            csv_field(&r.name),
            if r.defect { "defect" } else { "good" },
            csv_field(&r.defect_type),
            r.score,
            verdict_name(r.verdict)
        );
    }
    out
}

/// Writes scores.csv.
pub fn write_csv(path: &Path, records: &[Record]) -> Result<(), BenchError> {
    write(path, csv(records).as_bytes())
}

/// `PASS` or `FAIL`.
pub fn verdict_name(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Pass => "PASS",
        Verdict::Fail => "FAIL",
    }
}

/// A fraction as a percentage, or `-`.
pub fn percent(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{:.1} %", 100.0 * v))
}

/// A number with `digits` decimals, or `-`.
pub fn number(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

/// The headline rows: (metric, value), shared by the terminal and HTML.
pub fn headline(report: &Report) -> Vec<(&'static str, String)> {
    let c = &report.counts;
    let mut rows = vec![
        ("image AUROC", number(report.image_auroc, 4)),
        ("image F1 max", number(report.image_f1_max, 4)),
        (
            if report.format == Format::Pairs {
                "threshold (calibrated, median)"
            } else {
                "threshold (calibrated)"
            },
            number(report.threshold.map(f64::from), 4),
        ),
        (
            "calibration scores min / median / max",
            report.calibration.as_ref().map_or_else(
                || "-".to_owned(),
                |c| {
                    let expected = c.expected_false_reject_rate.map_or_else(
                        || "no rate stated".to_owned(),
                        |rate| {
                            format!(
                                "expected false rejects at most {}",
                                percent(Some(f64::from(rate)))
                            )
                        },
                    );
                    format!(
                        "{:.3} / {:.3} / {:.3} ({} scored out of fold; {expected})",
                        c.min, c.median, c.max, c.count
                    )
                },
            ),
        ),
        (
            "false-reject rate",
            format!(
                "{} ({} of {} good)",
                percent(report.false_reject_rate),
                c.false_rejects,
                c.good
            ),
        ),
        (
            "escape rate",
            format!(
                "{} ({} of {} defective)",
                percent(report.escape_rate),
                c.escapes,
                c.defect
            ),
        ),
    ];
    if !report.operating_points.is_empty() {
        let points = &report.operating_points;
        let join = |value: &dyn Fn(&ReportedPoint) -> String| {
            points.iter().map(value).collect::<Vec<_>>().join(" / ")
        };
        rows.push((
            "best escape rate at 1 / 2 / 5 % false rejects",
            format!(
                "{} (thresholds {}; sensitivity {})",
                join(&|p| percent(Some(p.point.escape_rate))),
                join(&|p| format!("{:.4}", p.point.threshold)),
                join(&|p| number(p.sensitivity, 3)),
            ),
        ));
    }
    rows.extend([
        ("pixel AUROC", number(report.pixel_auroc, 4)),
        ("AUPRO (FPR 0.3)", number(report.aupro, 4)),
    ]);
    if report.format == Format::Pairs {
        rows.push((
            "defect recall",
            format!(
                "{} ({} of {})",
                percent(report.defect_recall),
                c.found_defects.unwrap_or(0),
                c.annotated_defects.unwrap_or(0)
            ),
        ));
        rows.push((
            "defect precision",
            format!(
                "{} ({} of {} regions)",
                percent(report.defect_precision),
                c.true_regions.unwrap_or(0),
                c.reported_regions.unwrap_or(0)
            ),
        ));
    }
    if let Some(fast) = report.fast_search {
        rows.push((
            "fast search: lists probed",
            format!("{} of {} (chosen at enrollment)", fast.probed, fast.lists),
        ));
    }
    let l = &report.latency_ms;
    rows.extend([
        (
            "enrollment",
            format!("{:.2} s ({} images)", report.enroll_seconds, c.train),
        ),
        (
            "latency p50 / p90 / p99",
            format!(
                "{} / {} / {} ms",
                number(l.p50, 1),
                number(l.p90, 1),
                number(l.p99, 1)
            ),
        ),
        (
            "inside / outside ONNX Runtime (p50)",
            format!(
                "{} / {} ms",
                number(report.inference_ms_p50, 1),
                number(report.outside_ms_p50, 1)
            ),
        ),
        (
            "throughput",
            format!("{} frames/s", number(report.throughput_fps, 1)),
        ),
        (
            "peak memory (RSS)",
            format!("{} MB", number(report.peak_rss_mb, 0)),
        ),
    ]);
    rows
}

/// The summary table printed on stdout.
pub fn summary(report: &Report) -> String {
    let mut out = format!(
        "loupe bench {} ({}, {} mode, input {}, {} test frames)\n",
        report.dataset,
        match report.format {
            Format::Mvtec => "MVTec AD layout",
            Format::Pairs => "golden pairs",
        },
        report.settings.match_mode,
        report.settings.input_rule(),
        report.counts.test
    );
    let rows = headline(report);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in rows {
        let _ = writeln!(out, "  {key:<width$}  {value}");
    }
    if report.format == Format::Mvtec && report.per_type.len() > 1 {
        let _ = writeln!(out, "  per type:");
        for (name, t) in &report.per_type {
            let rate = match t.label {
                "good" => format!("false rejects {}", percent(t.false_reject_rate)),
                _ => format!(
                    "escapes {}  AUROC {}",
                    percent(t.escape_rate),
                    number(t.image_auroc, 4)
                ),
            };
            let _ = writeln!(
                out,
                "    {name:<width$}  {:>5} frames  {rate}",
                t.count,
                width = width - 2
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    #[test]
    fn csv_quotes_what_needs_it_and_keeps_scores_exact() {
        let record = Record {
            path: PathBuf::new(),
            name: "test/a,b/x.png".into(),
            defect: true,
            defect_type: "a,b".into(),
            score: 0.1 + 0.2,
            threshold: 1.0,
            verdict: Verdict::Pass,
            latency: Duration::ZERO,
            inference: Duration::ZERO,
            mask: None,
            reference: None,
            boxes: Vec::new(),
        };
        let text = csv(&[record]);
        let row = text.lines().nth(1).unwrap();
        assert_eq!(row, "\"test/a,b/x.png\",defect,\"a,b\",0.3,PASS");
        let score: f32 = row.rsplit(',').nth(1).unwrap().parse().unwrap();
        assert_eq!(score, 0.1_f32 + 0.2_f32);
    }
}
