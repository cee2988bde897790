//! The report's gallery: which frames to show (the worst false rejects, the
//! worst escapes, typical defects found) and their thumbnails: the frame,
//! the heatmap overlay, and the ground truth, as small PNGs.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageFormat, Rgb, RgbImage};

use super::BenchError;
use super::dataset::{Dataset, Mask};
use super::evaluate::Record;
use super::runner::Runner;

/// Longest side of a gallery thumbnail, in pixels.
pub const THUMBNAIL: u32 = 192;

/// One frame of the gallery.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Index into the records.
    pub record: usize,
    /// The frame, PNG.
    pub frame: Vec<u8>,
    /// The heatmap overlay, PNG.
    pub overlay: Vec<u8>,
    /// The ground truth over the dimmed frame (defect pixels red), PNG;
    /// `None` for a defect without a mask.
    pub truth: Option<Vec<u8>>,
    /// Golden pairs: the reference, PNG.
    pub reference: Option<Vec<u8>>,
}

/// The three gallery sections.
#[derive(Debug, Clone, Default)]
pub struct Gallery {
    /// Good parts that failed, highest score first.
    pub false_rejects: Vec<Entry>,
    /// Defective parts that passed, lowest score first.
    pub escapes: Vec<Entry>,
    /// Defective parts that failed, around the median score of those.
    pub found: Vec<Entry>,
}

/// Indices of the frames each section shows, at most `n` each.
pub fn select(records: &[Record], n: usize) -> [Vec<usize>; 3] {
    let by_score = |filter: &dyn Fn(&Record) -> bool| {
        let mut indices: Vec<usize> = (0..records.len()).filter(|&i| filter(&records[i])).collect();
        indices.sort_by(|&a, &b| records[a].score.total_cmp(&records[b].score).then(a.cmp(&b)));
        indices
    };
    let mut false_rejects = by_score(&|r| !r.defect && r.failed());
    false_rejects.reverse();
    false_rejects.truncate(n);
    let mut escapes = by_score(&|r| r.defect && !r.failed());
    escapes.truncate(n);
    let found = by_score(&|r| r.defect && r.failed());
    let start = (found.len() / 2)
        .saturating_sub(n / 2)
        .min(found.len().saturating_sub(n));
    let found = found.into_iter().skip(start).take(n).collect();
    [false_rejects, escapes, found]
}

fn png(image: &DynamicImage) -> Result<Vec<u8>, BenchError> {
    let mut bytes = Cursor::new(Vec::new());
    image
        .write_to(&mut bytes, ImageFormat::Png)
        .map_err(|error| BenchError::Internal(format!("PNG encoding failed: {error}")))?;
    Ok(bytes.into_inner())
}

fn open(path: &Path) -> Result<DynamicImage, BenchError> {
    image::open(path).map_err(|error| BenchError::Read {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })
}

/// The ground truth at the thumbnail's size: defect pixels red over the
/// frame at a third of its brightness.
fn truth_image(frame: &RgbImage, mask: &Mask) -> RgbImage {
    let (width, height) = frame.dimensions();
    let mask = mask.resize_nearest(width as usize, height as usize);
    RgbImage::from_fn(width, height, |x, y| {
        if mask.data[(y * width + x) as usize] {
            Rgb([255, 40, 40])
        } else {
            let p = frame.get_pixel(x, y).0;
            Rgb([p[0] / 3, p[1] / 3, p[2] / 3])
        }
    })
}

fn entry(runner: &mut Runner, records: &[Record], index: usize, pairs: bool) -> Result<Entry, BenchError> {
    let record = &records[index];
    if pairs && let Some(reference) = &record.reference {
        runner.enroll(std::slice::from_ref(reference), &mut || {})?;
    }
    let overlay = runner.overlay(&record.path, THUMBNAIL)?;
    let frame_image = open(&record.path)?;
    let (width, height) = (frame_image.width(), frame_image.height());
    let thumbnail = frame_image.thumbnail(THUMBNAIL, THUMBNAIL).to_rgb8();
    let mask = match &record.mask {
        Some(path) => Some(Mask::read(path)?),
        None if !record.boxes.is_empty() => {
            Some(Mask::from_boxes(&record.boxes, width as usize, height as usize))
        }
        None if !record.defect => Some(Mask::empty(1, 1)),
        None => None,
    };
    let truth = match mask {
        Some(mask) => Some(png(&DynamicImage::ImageRgb8(truth_image(&thumbnail, &mask)))?),
        None => None,
    };
    let reference = match &record.reference {
        Some(path) => Some(png(&open(path)?.thumbnail(THUMBNAIL, THUMBNAIL))?),
        None => None,
    };
    Ok(Entry {
        record: index,
        frame: png(&DynamicImage::ImageRgb8(thumbnail))?,
        overlay,
        truth,
        reference,
    })
}

/// Picks and renders the gallery, `n` frames per section.
pub fn build(
    runner: &mut Runner,
    records: &[Record],
    n: usize,
    dataset: &Dataset,
) -> Result<Gallery, BenchError> {
    let pairs = matches!(dataset, Dataset::Pairs(_));
    let [false_rejects, escapes, found] = select(records, n);
    let mut render = |indices: Vec<usize>| -> Result<Vec<Entry>, BenchError> {
        indices
            .into_iter()
            .map(|i| entry(runner, records, i, pairs))
            .collect()
    };
    Ok(Gallery {
        false_rejects: render(false_rejects)?,
        escapes: render(escapes)?,
        found: render(found)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Verdict;
    use std::path::PathBuf;
    use std::time::Duration;

    #[test]
    fn sections_pick_the_worst_and_the_typical() {
        let record = |defect: bool, score: f32| Record {
            path: PathBuf::new(),
            name: String::new(),
            defect,
            defect_type: String::new(),
            score,
            threshold: 5.0,
            verdict: if score > 5.0 { Verdict::Fail } else { Verdict::Pass },
            latency: Duration::ZERO,
            inference: Duration::ZERO,
            mask: None,
            reference: None,
            boxes: Vec::new(),
        };
        let records = [
            record(false, 6.0),
            record(false, 9.0),
            record(false, 1.0),
            record(true, 2.0),
            record(true, 4.0),
            record(true, 6.0),
            record(true, 7.0),
            record(true, 8.0),
            record(true, 10.0),
            record(true, 12.0),
        ];
        let [false_rejects, escapes, found] = select(&records, 2);
        assert_eq!(false_rejects, [1, 0]);
        assert_eq!(escapes, [3, 4]);
        // Found, by score: 6, 7, 8, 10, 12 -> median 8 at position 2.
        assert_eq!(found, [6, 7]);
        let [_, _, all] = select(&records, 10);
        assert_eq!(all.len(), 5);
    }
}
