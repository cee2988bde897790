//! The report's charts as inline SVG: the ROC curve with the calibrated
//! operating point, and the score histograms of good and defective parts
//! with the threshold line.

use std::fmt::Write as _;

use super::dataset::Format;
use super::metrics;
use super::report::{Report, number};
use crate::scoring::heatmap;

const PLOT: f64 = 300.0;
const MARGIN: f64 = 48.0;

/// Escapes text for HTML and SVG content and attribute values (the page
/// and its charts share it; charts never import the page).
pub(super) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The ROC curve with the calibrated threshold's operating point.
pub fn roc_svg(report: &Report, scores: &[f32], labels: &[bool]) -> String {
    let points = metrics::roc_curve(scores, labels, 1000);
    if points.is_empty() {
        return "<p class=\"none\">Not applicable: the test set holds only one class (good or defective).</p>".to_owned();
    }
    let x = |fpr: f64| MARGIN + fpr * PLOT;
    let y = |tpr: f64| MARGIN / 2.0 + (1.0 - tpr) * PLOT;
    let mut svg = svg_open(PLOT, "ROC curve");
    axes(
        &mut svg,
        x(0.0),
        y(0.0),
        PLOT,
        PLOT,
        "false-positive rate (good parts failed)",
        "true-positive rate (defects failed)",
    );
    for i in 0..=5 {
        let v = f64::from(i) / 5.0;
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{v:.1}</text>",
            x(v),
            y(0.0) + 14.0
        );
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{v:.1}</text>",
            x(0.0) - 4.0,
            y(v) + 4.0
        );
    }
    let _ = write!(
        svg,
        "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#bbb\" stroke-dasharray=\"4 4\"/>",
        x(0.0),
        y(0.0),
        x(1.0),
        y(1.0)
    );
    let path: Vec<String> = points
        .iter()
        .map(|&(f, t, _)| format!("{:.2},{:.2}", x(f), y(t)))
        .collect();
    let _ = write!(
        svg,
        "<polyline fill=\"none\" stroke=\"#1f6feb\" stroke-width=\"2\" points=\"{}\"/>",
        path.join(" ")
    );
    if let (Some(frr), Some(escape)) = (report.false_reject_rate, report.escape_rate) {
        let (cx, cy) = (x(frr), y(1.0 - escape));
        let _ = write!(
            svg,
            "<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"5\" fill=\"#d73a49\"/><text x=\"{:.1}\" y=\"{:.1}\">calibrated threshold</text>",
            cx + 8.0,
            cy + 14.0
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"13\">AUROC {}</text></svg>",
        x(1.0) - 6.0,
        y(0.0) - 10.0,
        number(report.image_auroc, 4)
    );
    svg
}

/// Escape rate against false-reject rate at every threshold, over the low
/// false-reject range where a line runs, with the calibrated threshold's
/// (day-one) point and the best points at 1, 2 and 5 % false rejects.
pub fn tradeoff_svg(report: &Report, scores: &[f32], labels: &[bool]) -> String {
    let points = metrics::roc_curve(scores, labels, usize::MAX);
    if points.is_empty() {
        return "<p class=\"none\">Not applicable: the test set holds only one class (good or defective).</p>".to_owned();
    }
    // 20 % false rejects is already far past what a line accepts; widen only
    // to keep the day-one point on the chart.
    let day_one = report.false_reject_rate.zip(report.escape_rate);
    let x_max = match day_one {
        Some((frr, _)) if frr > 0.18 => 1.0,
        _ => 0.2,
    };
    let x = |frr: f64| MARGIN + frr.min(x_max) / x_max * PLOT;
    let y = |escape: f64| MARGIN / 2.0 + escape * PLOT;
    let mut svg = svg_open(PLOT, "escape rate against false-reject rate");
    axes(
        &mut svg,
        x(0.0),
        y(1.0),
        PLOT,
        PLOT,
        "false-reject rate (good parts failed)",
        "escape rate (defects passed)",
    );
    for i in 0..=4 {
        let frr = x_max * f64::from(i) / 4.0;
        let escape = f64::from(i) / 4.0;
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{:.0} %</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{:.0} %</text>",
            x(frr),
            y(1.0) + 14.0,
            100.0 * frr,
            x(0.0) - 4.0,
            y(escape) + 4.0,
            100.0 * escape
        );
    }
    let mut path = Vec::new();
    for &(frr, tpr, _) in &points {
        path.push(format!("{:.2},{:.2}", x(frr), y(1.0 - tpr)));
        if frr >= x_max {
            break;
        }
    }
    let _ = write!(
        svg,
        "<polyline fill=\"none\" stroke=\"#1f6feb\" stroke-width=\"2\" points=\"{}\"/>",
        path.join(" ")
    );
    for reported in &report.operating_points {
        let point = reported.point;
        let (cx, cy) = (x(point.false_reject_rate), y(point.escape_rate));
        let _ = write!(
            svg,
            "<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"4\" fill=\"#444\"/><text x=\"{:.1}\" y=\"{:.1}\">best at {:.0} %: {:.1} %</text>",
            cx + 6.0,
            cy - 6.0,
            100.0 * point.target_false_reject_rate,
            100.0 * point.escape_rate
        );
    }
    if let Some((frr, escape)) = day_one {
        let (cx, cy) = (x(frr), y(escape));
        let _ = write!(
            svg,
            "<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"5\" fill=\"#d73a49\"/><text x=\"{:.1}\" y=\"{:.1}\" fill=\"#d73a49\">day one (calibrated): {:.1} % / {:.1} %</text>",
            cx + 8.0,
            cy + 14.0,
            100.0 * frr,
            100.0 * escape
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The opening tag of a chart `width` wide (plot area; the margins are
/// added), `PLOT` high, named `label` for screen readers.
fn svg_open(width: f64, label: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{:.0}\" height=\"{:.0}\" font-size=\"11\" role=\"img\" aria-label=\"{label}\">",
        width + MARGIN * 1.5,
        PLOT + MARGIN * 1.5
    )
}

fn axes(svg: &mut String, x0: f64, y0: f64, width: f64, height: f64, x_label: &str, y_label: &str) {
    let _ = write!(
        svg,
        "<rect x=\"{x0}\" y=\"{:.1}\" width=\"{width}\" height=\"{height}\" fill=\"#fcfcfc\" stroke=\"#888\"/>\
<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
<text transform=\"translate({:.1},{:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        y0 - height,
        x0 + width / 2.0,
        y0 + 30.0,
        escape(x_label),
        x0 - 34.0,
        y0 - height / 2.0,
        escape(y_label)
    );
}

/// Histograms of good and defective scores (each as a share of its class)
/// with the threshold as a line.
pub fn histogram_svg(report: &Report, scores: &[f32], labels: &[bool]) -> String {
    const BINS: usize = 40;
    let finite: Vec<f64> = scores
        .iter()
        .filter(|s| s.is_finite())
        .map(|&s| f64::from(s))
        .collect();
    if finite.is_empty() {
        return "<p class=\"none\">No scores.</p>".to_owned();
    }
    let threshold = report.threshold.map(f64::from);
    let min = finite
        .iter()
        .copied()
        .chain(threshold)
        .fold(f64::INFINITY, f64::min);
    let max = finite
        .iter()
        .copied()
        .chain(threshold)
        .fold(f64::NEG_INFINITY, f64::max);
    // 2 % of room on either side, so no bar or line sits on the frame.
    let pad = ((max - min) * 0.02).max(f64::EPSILON * max.abs().max(1.0));
    let (lo, span) = (min - pad, max - min + 2.0 * pad);
    let bin = |s: f64| (((s - lo) / span * BINS as f64) as usize).min(BINS - 1);
    let mut counts = [[0usize; BINS]; 2];
    for (&s, &defect) in scores.iter().zip(labels) {
        if s.is_finite() {
            counts[usize::from(defect)][bin(f64::from(s))] += 1;
        }
    }
    let totals = [counts[0].iter().sum::<usize>(), counts[1].iter().sum::<usize>()];
    let shares: Vec<[f64; BINS]> = (0..2)
        .map(|c| {
            let mut s = [0.0; BINS];
            for (i, v) in s.iter_mut().enumerate() {
                *v = if totals[c] > 0 {
                    counts[c][i] as f64 / totals[c] as f64
                } else {
                    0.0
                };
            }
            s
        })
        .collect();
    let top = shares.iter().flatten().copied().fold(0.0, f64::max).max(1e-9);
    let width = PLOT * 1.4;
    let x = |v: f64| MARGIN + (v - lo) / span * width;
    let y = |share: f64| MARGIN / 2.0 + (1.0 - share / top) * PLOT;
    let mut svg = svg_open(width, "score histograms");
    axes(
        &mut svg,
        MARGIN,
        y(0.0),
        width,
        PLOT,
        "anomaly score",
        "share of the class's frames",
    );
    for i in 0..=4 {
        let v = lo + span * f64::from(i) / 4.0;
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{v:.3}</text>",
            x(v),
            y(0.0) + 14.0
        );
        let share = top * f64::from(i) / 4.0;
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}%</text>",
            MARGIN - 4.0,
            y(share) + 4.0,
            share * 100.0
        );
    }
    let bin_width = width / BINS as f64;
    for (class, color) in [(0, "#2da44e"), (1, "#d73a49")] {
        for (i, &share) in shares[class].iter().enumerate() {
            if share > 0.0 {
                let _ = write!(
                    svg,
                    "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\" fill-opacity=\"0.5\"/>",
                    MARGIN + i as f64 * bin_width,
                    y(share),
                    bin_width,
                    y(0.0) - y(share)
                );
            }
        }
    }
    if let Some(t) = threshold {
        let label = if report.format == Format::Pairs {
            "median threshold"
        } else {
            "threshold"
        };
        // Label on the side with room, below the legend.
        let right_half = x(t) > MARGIN + width / 2.0;
        let _ = write!(
            svg,
            "<line x1=\"{tx:.1}\" y1=\"{:.1}\" x2=\"{tx:.1}\" y2=\"{:.1}\" stroke=\"#000\" stroke-width=\"2\" stroke-dasharray=\"6 3\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{label} {t:.3}</text>",
            y(top),
            y(0.0),
            if right_half { x(t) - 4.0 } else { x(t) + 4.0 },
            y(top) + 80.0,
            tx = x(t),
            anchor = if right_half { "end" } else { "start" },
        );
    }
    // The legend sits above the plot, clear of the bars.
    let _ = write!(
        svg,
        "<rect x=\"{MARGIN}\" y=\"4\" width=\"12\" height=\"12\" fill=\"#2da44e\" fill-opacity=\"0.5\"/><text x=\"{:.1}\" y=\"14\">good ({})</text>\
<rect x=\"{:.1}\" y=\"4\" width=\"12\" height=\"12\" fill=\"#d73a49\" fill-opacity=\"0.5\"/><text x=\"{:.1}\" y=\"14\">defective ({})</text></svg>",
        MARGIN + 16.0,
        totals[0],
        MARGIN + 110.0,
        MARGIN + 126.0,
        totals[1]
    );
    svg
}

/// The heatmaps' colour scale as a bar from score 0 to twice the
/// threshold, with the threshold marked: one rectangle per heatmap byte,
/// in the colours the overlays use.
pub fn colour_bar_svg() -> String {
    const WIDTH: f64 = 512.0;
    const BAR: f64 = 18.0;
    let step = WIDTH / 256.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"44\" role=\"img\" aria-label=\"heatmap colour scale\">",
        WIDTH + 2.0 * MARGIN
    );
    for byte in 0..=255u8 {
        let [r, g, b] = heatmap::color_of(byte);
        let _ = write!(
            svg,
            "<rect x=\"{:.2}\" y=\"4\" width=\"{:.2}\" height=\"{BAR}\" fill=\"rgb({r},{g},{b})\"/>",
            MARGIN + f64::from(byte) * step,
            step + 0.05
        );
    }
    let at = |fraction: f64| MARGIN + fraction * WIDTH;
    let _ = write!(
        svg,
        "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"0\" y2=\"{1}\" stroke=\"#000\" stroke-width=\"1.5\"/>",
        at(f64::from(heatmap::THRESHOLD_BYTE + 1) / 256.0),
        BAR + 8.0
    );
    for (fraction, label, anchor) in [
        (0.0, "0", "start"),
        (0.5, "threshold", "middle"),
        (1.0, "2x threshold and above", "end"),
    ] {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"40\" font-size=\"12\" text-anchor=\"{anchor}\">{label}</text>",
            at(fraction)
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod colour_bar_tests {
    use super::*;

    #[test]
    fn the_colour_bar_has_every_colour_and_names_the_threshold() {
        let svg = colour_bar_svg();
        assert_eq!(svg.matches("<rect").count(), 256);
        let [r, g, b] = heatmap::color_of(255);
        assert!(svg.contains(&format!("rgb({r},{g},{b})")));
        assert!(svg.contains(">threshold<"));
    }
}
