//! report.html: one self-contained page (inline CSS, inline SVG charts,
//! images as base64 data URLs; no scripts, fonts or anything else fetched)
//! that shows how good a recipe is and where it fails: the metrics, the ROC
//! curve, escape rate against false-reject rate with the day-one point, the
//! score histograms with the threshold, and a gallery.

use std::fmt::Write as _;
use std::path::Path;

use base64::Engine as _;

use super::BenchError;
use super::charts::{self, escape};
use super::dataset::Format;
use super::evaluate::Record;
use super::gallery::{Entry, Gallery};
use super::report::{self, Report, number, percent};

/// Section titles, in page order (tests look for them).
pub const SECTIONS: [&str; 8] = [
    "Metrics",
    "ROC curve",
    "Escape rate against false-reject rate",
    "Score histograms",
    "Worst false rejects",
    "Worst escapes",
    "Typical defects found",
    "Settings",
];

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}\
h1{font-size:22px;margin-bottom:4px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}\
.sub{color:#666;margin-top:0}.lead{font-size:16px;background:#f4f6f8;padding:12px 16px;border-radius:6px}\
table{border-collapse:collapse;margin:8px 0}td,th{padding:4px 12px;border-bottom:1px solid #eee;text-align:left}\
th{background:#fafafa}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.charts{display:flex;flex-wrap:wrap;gap:24px}.gallery figure{display:inline-block;margin:4px;vertical-align:top;text-align:center}\
.gallery img{display:block;max-width:192px;max-height:192px;border:1px solid #ccc}.row{margin:12px 0;padding:8px;border:1px solid #eee;border-radius:6px}\
.cap{font-size:13px;color:#444;margin-bottom:4px;word-break:break-all}.none{color:#888;font-style:italic}\
figcaption{font-size:12px;color:#666}pre{background:#f7f7f7;padding:8px;overflow:auto;font-size:12px}";

fn data_url(png: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

/// The page.
pub fn render(report: &Report, records: &[Record], gallery: &Gallery) -> String {
    let mut page = String::with_capacity(1 << 20);
    let _ = write!(
        page,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Loupe benchmark: {}</title><style>{STYLE}</style></head><body>",
        escape(&report.dataset)
    );
    let _ = write!(
        page,
        "<h1>Loupe benchmark: {}</h1><p class=\"sub\">{}, {} mode, input {}, {} reference image(s), {} test frames, {}{}</p>",
        escape(&report.dataset),
        match report.format {
            Format::Mvtec => "MVTec AD layout",
            Format::Pairs => "golden pairs (each frame against its own reference)",
        },
        report.settings.match_mode,
        report.settings.input_rule(),
        report.counts.train,
        report.counts.test,
        match &report.server {
            Some(url) => format!("through the server at {}", escape(url)),
            None => "in-process engine".to_owned(),
        },
        report
            .model
            .as_ref()
            .map(|m| format!(
                ", model {} (ONNX Runtime {}, {} threads)",
                escape(&m.name),
                escape(&m.onnxruntime),
                m.threads
            ))
            .unwrap_or_default()
    );
    let _ = write!(page, "<p class=\"lead\">{}</p>", lead(report));
    metrics_section(&mut page, report);
    let scores: Vec<f32> = records.iter().map(|r| r.score).collect();
    let labels: Vec<bool> = records.iter().map(|r| r.defect).collect();
    let _ = write!(page, "<div class=\"charts\"><div><h2>{}</h2>", SECTIONS[1]);
    page.push_str(&charts::roc_svg(report, &scores, &labels));
    let _ = write!(page, "</div><div><h2>{}</h2>", SECTIONS[2]);
    page.push_str(&charts::tradeoff_svg(report, &scores, &labels));
    let _ = write!(page, "</div><div><h2>{}</h2>", SECTIONS[3]);
    page.push_str(&charts::histogram_svg(report, &scores, &labels));
    page.push_str("</div></div>");
    let _ = write!(
        page,
        "<p class=\"sub\">Heatmap colours, from score 0 to twice the threshold: blue to yellow-green below the threshold, orange to dark red above it; white boxes outline the defect regions.</p>{}",
        charts::colour_bar_svg()
    );
    let threshold_note = if report.format == Format::Pairs {
        "each frame is judged against its own reference's threshold"
    } else {
        "at the threshold calibrated from good training images"
    };
    gallery_section(
        &mut page,
        SECTIONS[4],
        &format!("good parts that FAIL, highest score first ({threshold_note})"),
        &gallery.false_rejects,
        records,
    );
    gallery_section(
        &mut page,
        SECTIONS[5],
        &format!("defective parts that PASS, lowest score first ({threshold_note})"),
        &gallery.escapes,
        records,
    );
    gallery_section(
        &mut page,
        SECTIONS[6],
        "defective parts that FAIL, around the median score of those",
        &gallery.found,
        records,
    );
    let settings = serde_json::to_string_pretty(&report.settings).unwrap_or_default();
    let _ = write!(
        page,
        "<h2>{}</h2><p>Create the same recipe on a server with <code>loupe recipe create NAME --settings FILE</code> using this JSON:</p><pre>{}</pre>",
        SECTIONS[7],
        escape(&settings)
    );
    if let Some(model) = &report.model {
        let _ = write!(
            page,
            "<p>Model: {} sha256 {} ({}).</p>",
            escape(&model.name),
            escape(&model.sha256),
            escape(&model.origin)
        );
    }
    page.push_str("</body></html>\n");
    page
}

/// One sentence a person reads first.
fn lead(report: &Report) -> String {
    let c = &report.counts;
    let mut text = String::new();
    if let Some(auroc) = report.image_auroc {
        let _ = write!(text, "Image AUROC {auroc:.3}. ");
    }
    let source = match report.format {
        Format::Mvtec => format!(
            "At the threshold calibrated from good training images only ({}), the one a user gets on day one,",
            number(report.threshold.map(f64::from), 3)
        ),
        Format::Pairs => "With each pair's threshold calibrated from its golden reference only,".to_owned(),
    };
    let mut parts = Vec::new();
    if c.good > 0 {
        parts.push(format!(
            "{} of {} good parts are rejected ({})",
            c.false_rejects,
            c.good,
            percent(report.false_reject_rate)
        ));
    }
    if c.defect > 0 {
        parts.push(format!(
            "{} of {} defective parts pass ({})",
            c.escapes,
            c.defect,
            percent(report.escape_rate)
        ));
    }
    if !parts.is_empty() {
        let _ = write!(text, "{source} {}.", parts.join(" and "));
    }
    if let Some(recall) = report.defect_recall {
        let _ = write!(
            text,
            " {:.1} % of the annotated defects are found by a reported region; ",
            100.0 * recall
        );
        match report.defect_precision {
            Some(precision) => {
                let _ = write!(text, "{:.1} % of the regions are on a defect.", 100.0 * precision);
            }
            None => text.push_str("no region is reported."),
        }
    }
    escape(&text)
}

fn metrics_section(page: &mut String, report: &Report) {
    let _ = write!(page, "<h2>{}</h2><table>", SECTIONS[0]);
    for (key, value) in report::headline(report) {
        let _ = write!(
            page,
            "<tr><th>{}</th><td class=\"n\">{}</td></tr>",
            escape(key),
            escape(&value)
        );
    }
    page.push_str("</table>");
    if report.per_type.len() > 1 {
        page.push_str("<table><tr><th>type</th><th>frames</th><th>failed</th><th>false-reject rate</th><th>escape rate</th><th>AUROC vs good</th></tr>");
        for (name, t) in &report.per_type {
            let _ = write!(
                page,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                escape(name),
                t.count,
                t.failed,
                percent(t.false_reject_rate),
                percent(t.escape_rate),
                number(t.image_auroc, 4)
            );
        }
        page.push_str("</table>");
    }
    if !report.defect_recall_by_type.is_empty() {
        page.push_str("<table><tr><th>annotated type</th><th>defects</th><th>found</th><th>recall</th></tr>");
        for (kind, r) in &report.defect_recall_by_type {
            let _ = write!(
                page,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                escape(kind),
                r.annotated,
                r.found,
                percent(r.recall)
            );
        }
        page.push_str("</table>");
    }
}

fn figure(png: Option<&[u8]>, caption: &str) -> String {
    match png {
        Some(png) => format!(
            "<figure><img src=\"{}\" alt=\"{caption}\"><figcaption>{caption}</figcaption></figure>",
            data_url(png)
        ),
        None => format!(
            "<figure><div class=\"none\" style=\"width:192px\">no mask</div><figcaption>{caption}</figcaption></figure>"
        ),
    }
}

fn gallery_section(page: &mut String, title: &str, what: &str, entries: &[Entry], records: &[Record]) {
    let _ = write!(
        page,
        "<h2>{title}</h2><p class=\"sub\">{}</p><div class=\"gallery\">",
        escape(what)
    );
    if entries.is_empty() {
        page.push_str("<p class=\"none\">None.</p>");
    }
    for entry in entries {
        let r = &records[entry.record];
        let _ = write!(
            page,
            "<div class=\"row\"><div class=\"cap\">{} &middot; {} &middot; score {:.4} (threshold {:.4}, {:.2}x) &middot; {}</div>",
            escape(&r.name),
            escape(&r.defect_type),
            r.score,
            r.threshold,
            r.score / r.threshold,
            report::verdict_name(r.verdict)
        );
        if let Some(reference) = &entry.reference {
            page.push_str(&figure(Some(reference), "reference"));
        }
        page.push_str(&figure(Some(&entry.frame), "frame"));
        page.push_str(&figure(Some(&entry.overlay), "heatmap overlay"));
        page.push_str(&figure(entry.truth.as_deref(), "ground truth"));
        page.push_str("</div>");
    }
    page.push_str("</div>");
}

/// Writes report.html.
pub fn write(path: &Path, report: &Report, records: &[Record], gallery: &Gallery) -> Result<(), BenchError> {
    std::fs::write(path, render(report, records, gallery)).map_err(|error| BenchError::Write {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })
}
