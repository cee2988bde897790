//! Ground truth of a benchmark frame: defect masks (read, cropped, resized
//! by nearest neighbour, split into connected components) and defect boxes
//! from defects.txt.

use std::path::Path;

use image::{GrayImage, Luma};
use imageproc::region_labelling::{Connectivity, connected_components};

use super::dataset::DatasetError;

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
}
