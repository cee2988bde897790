//! Benchmark datasets on disk: the MVTec AD layout and golden pairs, detected
//! from the folder (or forced), listed in a sorted, deterministic order, with
//! their ground truth (masks, defect boxes) read on demand.
//!
//! MVTec AD: `DIR/train/good/*`, `DIR/test/<type>/*` (`good` is defect-free),
//! optional `DIR/ground_truth/<type>/<stem>_mask.png`.
//! Golden pairs: `DIR/<id>/reference.*` and `DIR/<id>/frame.*`, optional
//! `DIR/<id>/mask.png` and `DIR/<id>/defects.txt` (`x1 y1 x2 y2 type` a line).

use std::path::{Path, PathBuf};

use image::{GrayImage, Luma};
use imageproc::region_labelling::{Connectivity, connected_components};

/// Extensions of the image files a dataset may hold (the formats the engine
/// decodes), compared without case.
pub const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "tif", "tiff"];

/// The defect-free type of the MVTec AD layout.
pub const GOOD: &str = "good";

/// Which layout a folder has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// MVTec AD: train/good, test/<type>, ground_truth/<type>.
    Mvtec,
    /// Golden pairs: <id>/reference.*, <id>/frame.*.
    Pairs,
}

/// A folder that is not a usable dataset; the message names what is missing.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The folder fits neither layout, or not the one forced.
    #[error("{0}")]
    Layout(String),
    /// A file or folder could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// What could not be read.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A defects.txt line is not `x1 y1 x2 y2 type`.
    #[error("{path}, line {line}: expected `x1 y1 x2 y2 type`, got {text:?}")]
    Defects {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
}

/// One test image of an MVTec AD set.
#[derive(Debug, Clone, PartialEq)]
pub struct TestImage {
    /// The image file.
    pub path: PathBuf,
    /// The folder it came from under `test/` (`good` for defect-free parts).
    pub defect_type: String,
    /// Its ground-truth mask, when the file exists.
    pub mask: Option<PathBuf>,
}

impl TestImage {
    /// Whether the part is defective (any type but `good`).
    pub fn is_defect(&self) -> bool {
        self.defect_type != GOOD
    }
}

/// One golden pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    /// The folder name.
    pub id: String,
    /// The golden reference image.
    pub reference: PathBuf,
    /// The inspected frame.
    pub frame: PathBuf,
    /// `mask.png`, when present.
    pub mask: Option<PathBuf>,
    /// `defects.txt`, when present.
    pub defects: Option<PathBuf>,
}

/// A listed dataset.
#[derive(Debug, Clone, PartialEq)]
pub enum Dataset {
    /// MVTec AD layout.
    Mvtec {
        /// Good training images, sorted.
        train: Vec<PathBuf>,
        /// Test images, sorted by type then file name.
        test: Vec<TestImage>,
    },
    /// Golden pairs, sorted by id.
    Pairs(Vec<Pair>),
}

impl Dataset {
    /// The layout.
    pub fn format(&self) -> Format {
        match self {
            Dataset::Mvtec { .. } => Format::Mvtec,
            Dataset::Pairs(_) => Format::Pairs,
        }
    }

    /// Whether any ground-truth mask (or, for pairs, defect annotation)
    /// exists, which decides whether pixel metrics are computed.
    pub fn has_ground_truth(&self) -> bool {
        match self {
            Dataset::Mvtec { test, .. } => test.iter().any(|t| t.mask.is_some()),
            Dataset::Pairs(pairs) => pairs.iter().any(|p| p.mask.is_some() || p.defects.is_some()),
        }
    }
}

/// A defect annotation: a box in frame pixels, `[x1, x2) x [y1, y2)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefectBox {
    /// Left edge.
    pub x1: u32,
    /// Top edge.
    pub y1: u32,
    /// Right edge (exclusive).
    pub x2: u32,
    /// Bottom edge (exclusive).
    pub y2: u32,
    /// The annotated type (`defects.txt`'s fifth column; `region` for boxes
    /// taken from a mask).
    pub kind: String,
}

impl DefectBox {
    /// Whether the box and the rectangle `x, y, width, height` share at
    /// least one pixel.
    pub fn overlaps(&self, x: u32, y: u32, width: u32, height: u32) -> bool {
        let (x2, y2) = (u64::from(x) + u64::from(width), u64::from(y) + u64::from(height));
        u64::from(self.x1) < x2
            && u64::from(x) < u64::from(self.x2)
            && u64::from(self.y1) < y2
            && u64::from(y) < u64::from(self.y2)
    }
}

/// Lists `dir` as `format`, or as whichever layout it fits when `None`.
pub fn load(dir: &Path, format: Option<Format>) -> Result<Dataset, DatasetError> {
    if !dir.is_dir() {
        return Err(DatasetError::Layout(format!("{} is not a folder", dir.display())));
    }
    match format {
        Some(Format::Mvtec) => load_mvtec(dir),
        Some(Format::Pairs) => load_pairs(dir),
        None => {
            if dir.join("train").is_dir() || dir.join("test").is_dir() {
                return load_mvtec(dir);
            }
            match load_pairs(dir) {
                Ok(pairs) => Ok(pairs),
                Err(DatasetError::Layout(pairs_reason)) => Err(DatasetError::Layout(format!(
                    "{} fits neither layout: not MVTec AD (no train/good/ and test/ folders) and not golden pairs ({pairs_reason})",
                    dir.display()
                ))),
                Err(other) => Err(other),
            }
        }
    }
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    let read_error = |error: std::io::Error| DatasetError::Read {
        path: dir.to_path_buf(),
        reason: error.to_string(),
    };
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        let hidden = path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with('.'));
        if !hidden {
            entries.push(path);
        }
    }
    entries.sort();
    Ok(entries)
}

/// Whether `path` names an image file by its extension.
pub fn is_image(path: &Path) -> bool {
    path.is_file()
        && path.extension().is_some_and(|ext| {
            let ext = ext.to_string_lossy().to_ascii_lowercase();
            IMAGE_EXTENSIONS.contains(&ext.as_str())
        })
}

fn images_in(dir: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    Ok(read_dir_sorted(dir)?
        .into_iter()
        .filter(|p| is_image(p))
        .collect())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

fn load_mvtec(dir: &Path) -> Result<Dataset, DatasetError> {
    let train_dir = dir.join("train").join(GOOD);
    if !train_dir.is_dir() {
        return Err(DatasetError::Layout(format!(
            "MVTec AD layout: {} is missing (the good training images)",
            train_dir.display()
        )));
    }
    let train = images_in(&train_dir)?;
    if train.is_empty() {
        return Err(DatasetError::Layout(format!(
            "MVTec AD layout: {} holds no images ({})",
            train_dir.display(),
            IMAGE_EXTENSIONS.join(", ")
        )));
    }
    let test_dir = dir.join("test");
    if !test_dir.is_dir() {
        return Err(DatasetError::Layout(format!(
            "MVTec AD layout: {} is missing (test/<type>/ folders, `good` for defect-free parts)",
            test_dir.display()
        )));
    }
    let ground_truth = dir.join("ground_truth");
    let mut test = Vec::new();
    for type_dir in read_dir_sorted(&test_dir)?.into_iter().filter(|p| p.is_dir()) {
        let defect_type = file_name(&type_dir);
        for path in images_in(&type_dir)? {
            let mask = (defect_type != GOOD)
                .then(|| {
                    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
                    ground_truth.join(&defect_type).join(format!("{stem}_mask.png"))
                })
                .filter(|mask| mask.is_file());
            test.push(TestImage {
                path,
                defect_type: defect_type.clone(),
                mask,
            });
        }
    }
    if test.is_empty() {
        return Err(DatasetError::Layout(format!(
            "MVTec AD layout: {} holds no images in <type>/ folders",
            test_dir.display()
        )));
    }
    Ok(Dataset::Mvtec { train, test })
}

/// The file `name.*` (any image extension) in `dir`, the first in sorted
/// order if there are several.
fn named_image(entries: &[PathBuf], name: &str) -> Option<PathBuf> {
    entries
        .iter()
        .find(|p| is_image(p) && p.file_stem().is_some_and(|s| s == name))
        .cloned()
}

fn load_pairs(dir: &Path) -> Result<Dataset, DatasetError> {
    let mut pairs = Vec::new();
    let mut incomplete = Vec::new();
    for pair_dir in read_dir_sorted(dir)?.into_iter().filter(|p| p.is_dir()) {
        let entries = read_dir_sorted(&pair_dir)?;
        let reference = named_image(&entries, "reference");
        let frame = named_image(&entries, "frame");
        let id = file_name(&pair_dir);
        match (reference, frame) {
            (Some(reference), Some(frame)) => {
                let mask = Some(pair_dir.join("mask.png")).filter(|p| p.is_file());
                let defects = Some(pair_dir.join("defects.txt")).filter(|p| p.is_file());
                pairs.push(Pair {
                    id,
                    reference,
                    frame,
                    mask,
                    defects,
                });
            }
            (None, None) => {}
            (None, Some(_)) => incomplete.push(format!("{id}/ has a frame but no reference.*")),
            (Some(_), None) => incomplete.push(format!("{id}/ has a reference but no frame.*")),
        }
    }
    if let Some(first) = incomplete.first() {
        return Err(DatasetError::Layout(format!(
            "golden pairs in {}: {first}{}",
            dir.display(),
            if incomplete.len() > 1 {
                format!(" (and {} more incomplete pairs)", incomplete.len() - 1)
            } else {
                String::new()
            }
        )));
    }
    if pairs.is_empty() {
        return Err(DatasetError::Layout(format!(
            "no <id>/ subfolder of {} holds both reference.* and frame.*",
            dir.display()
        )));
    }
    Ok(Dataset::Pairs(pairs))
}

/// `count` of `n` items, evenly spaced from the first (index `i * n / count`);
/// all of them when `count >= n`.
pub fn evenly_spaced(n: usize, count: usize) -> Vec<usize> {
    if count >= n {
        return (0..n).collect();
    }
    (0..count).map(|i| i * n / count).collect()
}

/// Parses defects.txt: one `x1 y1 x2 y2 type` a line (blank lines skipped;
/// commas accepted as separators).
pub fn parse_defects(path: &Path, text: &str) -> Result<Vec<DefectBox>, DatasetError> {
    let mut boxes = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|f| !f.is_empty())
            .collect();
        if fields.is_empty() {
            continue;
        }
        let bad = || DatasetError::Defects {
            path: path.to_path_buf(),
            line: index + 1,
            text: line.to_owned(),
        };
        let [x1, y1, x2, y2, kind] = fields[..] else {
            return Err(bad());
        };
        let number = |s: &str| s.parse::<u32>().map_err(|_| bad());
        let (x1, y1, x2, y2) = (number(x1)?, number(y1)?, number(x2)?, number(y2)?);
        if x2 <= x1 || y2 <= y1 {
            return Err(bad());
        }
        boxes.push(DefectBox {
            x1,
            y1,
            x2,
            y2,
            kind: kind.to_owned(),
        });
    }
    Ok(boxes)
}

/// Reads and parses a defects.txt file.
pub fn read_defects(path: &Path) -> Result<Vec<DefectBox>, DatasetError> {
    let text = std::fs::read_to_string(path).map_err(|error| DatasetError::Read {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })?;
    parse_defects(path, &text)
}

/// A binary mask: `true` = defect pixel, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Mask {
    /// Pixels across.
    pub width: usize,
    /// Pixels down.
    pub height: usize,
    /// One flag a pixel.
    pub data: Vec<bool>,
}

impl Mask {
    /// An all-good mask.
    pub fn empty(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            data: vec![false; width * height],
        }
    }

    /// Reads a mask image; any channel above 127 marks a defect pixel.
    pub fn read(path: &Path) -> Result<Self, DatasetError> {
        let image = image::open(path).map_err(|error| DatasetError::Read {
            path: path.to_path_buf(),
            reason: error.to_string(),
        })?;
        let gray = image.to_luma8();
        Ok(Self {
            width: gray.width() as usize,
            height: gray.height() as usize,
            data: gray.as_raw().iter().map(|&v| v > 127).collect(),
        })
    }

    /// The boxes drawn filled onto a `width` x `height` mask.
    pub fn from_boxes(boxes: &[DefectBox], width: usize, height: usize) -> Self {
        let mut mask = Self::empty(width, height);
        for b in boxes {
            for y in (b.y1 as usize).min(height)..(b.y2 as usize).min(height) {
                for x in (b.x1 as usize).min(width)..(b.x2 as usize).min(width) {
                    mask.data[y * width + x] = true;
                }
            }
        }
        mask
    }

    /// Whether any pixel is a defect.
    pub fn any(&self) -> bool {
        self.data.contains(&true)
    }

    /// The part inside `x, y, width, height` (clamped to the mask).
    pub fn crop(&self, x: u32, y: u32, width: u32, height: u32) -> Self {
        let (x0, y0) = ((x as usize).min(self.width), (y as usize).min(self.height));
        let x1 = (x0 + width as usize).min(self.width);
        let y1 = (y0 + height as usize).min(self.height);
        let mut data = Vec::with_capacity((x1 - x0) * (y1 - y0));
        for row in y0..y1 {
            data.extend_from_slice(&self.data[row * self.width + x0..row * self.width + x1]);
        }
        Self {
            width: x1 - x0,
            height: y1 - y0,
            data,
        }
    }

    /// Resized to `width` x `height` by nearest neighbour, target pixel
    /// `(x, y)` taking source pixel `(floor(x * w / width), floor(y * h / height))`
    /// (torch's `nearest`, which anomalib applies to masks).
    pub fn resize_nearest(&self, width: usize, height: usize) -> Self {
        if (width, height) == (self.width, self.height) {
            return self.clone();
        }
        if self.width == 0 || self.height == 0 {
            return Self::empty(width, height);
        }
        let columns: Vec<usize> = (0..width).map(|x| x * self.width / width).collect();
        let mut data = Vec::with_capacity(width * height);
        for y in 0..height {
            let row = y * self.height / height * self.width;
            data.extend(columns.iter().map(|&sx| self.data[row + sx]));
        }
        Self { width, height, data }
    }

    /// Bounding boxes of the 8-connected defect components, in mask
    /// pixels, ordered by first pixel in row-major order.
    pub fn component_boxes(&self) -> Vec<DefectBox> {
        let raw = self.data.iter().map(|&d| if d { 255 } else { 0 }).collect();
        let Some(binary) = GrayImage::from_raw(self.width as u32, self.height as u32, raw) else {
            return Vec::new();
        };
        let labels = connected_components(&binary, Connectivity::Eight, Luma([0u8]));
        let mut boxes: Vec<Option<DefectBox>> = Vec::new();
        for (x, y, label) in labels.enumerate_pixels() {
            let label = label.0[0] as usize;
            if label == 0 {
                continue;
            }
            if boxes.len() < label {
                boxes.resize(label, None);
            }
            let b = boxes[label - 1].get_or_insert(DefectBox {
                x1: x,
                y1: y,
                x2: x + 1,
                y2: y + 1,
                kind: "region".to_owned(),
            });
            b.x1 = b.x1.min(x);
            b.y1 = b.y1.min(y);
            b.x2 = b.x2.max(x + 1);
            b.y2 = b.y2.max(y + 1);
        }
        boxes.into_iter().flatten().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evenly_spaced_picks_spread_indices() {
        assert_eq!(evenly_spaced(10, 3), [0, 3, 6]);
        assert_eq!(evenly_spaced(4, 4), [0, 1, 2, 3]);
        assert_eq!(evenly_spaced(3, 10), [0, 1, 2]);
        assert!(evenly_spaced(5, 0).is_empty());
    }

    #[test]
    fn defects_txt_is_parsed_and_bad_lines_are_named() {
        let path = Path::new("d.txt");
        let boxes = parse_defects(path, "513 376 549 402 1\n\n397,260,430,312,2\n").unwrap();
        assert_eq!(boxes.len(), 2);
        assert_eq!(
            (boxes[1].x1, boxes[1].y2, boxes[1].kind.as_str()),
            (397, 312, "2")
        );
        let error = parse_defects(path, "1 2 3 4 1\n5 6 7\n").unwrap_err().to_string();
        assert!(
            error.contains("line 2") && error.contains("x1 y1 x2 y2 type"),
            "{error}"
        );
        assert!(parse_defects(path, "9 0 3 4 1").is_err());
    }

    #[test]
    fn boxes_overlap_only_when_they_share_a_pixel() {
        let b = DefectBox {
            x1: 10,
            y1: 10,
            x2: 20,
            y2: 20,
            kind: "1".into(),
        };
        assert!(b.overlaps(19, 19, 1, 1));
        assert!(!b.overlaps(20, 10, 5, 5));
        assert!(!b.overlaps(0, 0, 10, 10));
        assert!(b.overlaps(0, 0, 11, 11));
    }

    #[test]
    fn masks_resize_crop_and_split_into_components() {
        // 4x2: defect at (1, 0) and (3, 1).
        let mask = Mask {
            width: 4,
            height: 2,
            data: vec![false, true, false, false, false, false, false, true],
        };
        let half = mask.resize_nearest(2, 1);
        assert_eq!(half.data, [false, false]);
        let double = mask.resize_nearest(8, 4);
        assert_eq!(double.data.iter().filter(|&&d| d).count(), 8);
        assert!(double.data[2] && double.data[3] && double.data[8 + 2]);
        assert_eq!(mask.crop(1, 0, 10, 1).data, [true, false, false]);
        let boxes = mask.component_boxes();
        assert_eq!(boxes.len(), 2);
        assert_eq!((boxes[0].x1, boxes[0].y1, boxes[0].x2, boxes[0].y2), (1, 0, 2, 1));
        let drawn = Mask::from_boxes(&boxes, 4, 2);
        assert_eq!(drawn, mask);
    }

    #[test]
    fn layouts_are_detected_and_missing_parts_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let error = load(root, None).unwrap_err().to_string();
        assert!(error.contains("fits neither layout"), "{error}");
        std::fs::create_dir_all(root.join("train/good")).unwrap();
        std::fs::write(root.join("train/good/a.png"), b"x").unwrap();
        let error = load(root, None).unwrap_err().to_string();
        assert!(error.contains("test"), "{error}");
        let error = load(root, Some(Format::Pairs)).unwrap_err().to_string();
        assert!(error.contains("reference.*"), "{error}");
        std::fs::create_dir_all(root.join("test/good")).unwrap();
        std::fs::create_dir_all(root.join("test/crack")).unwrap();
        std::fs::create_dir_all(root.join("ground_truth/crack")).unwrap();
        for file in [
            "test/good/b.png",
            "test/crack/c.jpg",
            "test/crack/d.png",
            "ground_truth/crack/c_mask.png",
        ] {
            std::fs::write(root.join(file), b"x").unwrap();
        }
        let Dataset::Mvtec { train, test } = load(root, None).unwrap() else {
            panic!("not MVTec");
        };
        assert_eq!(train.len(), 1);
        let listed: Vec<_> = test
            .iter()
            .map(|t| (t.defect_type.as_str(), t.mask.is_some()))
            .collect();
        assert_eq!(listed, [("crack", true), ("crack", false), ("good", false)]);
    }
}
