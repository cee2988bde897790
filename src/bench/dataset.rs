//! Benchmark datasets on disk: the MVTec AD layout and golden pairs, detected
//! from the folder (or forced), listed in a sorted, deterministic order; the
//! ground truth files are read by [`super::truth`].
//!
//! MVTec AD: `DIR/train/good/*`, `DIR/test/<type>/*` (`good` is defect-free),
//! optional `DIR/ground_truth/<type>/<stem>_mask.png`.
//! Golden pairs: `DIR/<id>/reference.*` and `DIR/<id>/frame.*`, optional
//! `DIR/<id>/mask.png` and `DIR/<id>/defects.txt` (`x1 y1 x2 y2 type` a line).

use std::path::{Path, PathBuf};

/// Extensions of the image files a dataset may hold (the formats the engine
/// decodes), compared without case.
pub const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "tif", "tiff"];

/// The defect-free type of the MVTec AD layout.
pub const GOOD: &str = "good";

/// Which layout a folder has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// MVTec AD: `train/good`, `test/<type>`, `ground_truth/<type>`.
    Mvtec,
    /// Golden pairs: `<id>/reference.*`, `<id>/frame.*`.
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
