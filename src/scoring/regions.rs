//! Defect regions: connected areas of the anomaly map above a threshold
//! (imageproc's connected components, 8-connectivity), in map pixels. The
//! engine maps them back to frame pixels.

use image::{GrayImage, Luma};
use imageproc::region_labelling::{Connectivity, connected_components};

use super::map::AnomalyMap;

/// One region, in map pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct MapRegion {
    /// Bounding box left edge.
    pub x: u32,
    /// Bounding box top edge.
    pub y: u32,
    /// Bounding box width.
    pub width: u32,
    /// Bounding box height.
    pub height: u32,
    /// Pixels in the region.
    pub pixels: u32,
    /// Highest score in the region.
    pub max_score: f32,
    /// Mean score in the region.
    pub mean_score: f32,
}

/// Connected regions of `map` where the score exceeds `threshold`, highest
/// score first.
pub fn find_regions(map: &AnomalyMap, threshold: f32) -> Vec<MapRegion> {
    if map.data.iter().all(|&v| v <= threshold) {
        return Vec::new();
    }
    let binary = GrayImage::from_fn(map.width as u32, map.height as u32, |x, y| {
        Luma([u8::from(
            map.data[y as usize * map.width + x as usize] > threshold,
        )])
    });
    let labels = connected_components(&binary, Connectivity::Eight, Luma([0]));

    struct Acc {
        x0: u32,
        y0: u32,
        x1: u32,
        y1: u32,
        pixels: u32,
        max: f32,
        sum: f64,
    }
    let mut regions: Vec<Option<Acc>> = Vec::new();
    for (x, y, label) in labels.enumerate_pixels() {
        let label = label[0] as usize;
        if label == 0 {
            continue;
        }
        if regions.len() < label {
            regions.resize_with(label, || None);
        }
        let score = map.data[y as usize * map.width + x as usize];
        let acc = regions[label - 1].get_or_insert(Acc {
            x0: x,
            y0: y,
            x1: x,
            y1: y,
            pixels: 0,
            max: f32::MIN,
            sum: 0.0,
        });
        acc.x0 = acc.x0.min(x);
        acc.y0 = acc.y0.min(y);
        acc.x1 = acc.x1.max(x);
        acc.y1 = acc.y1.max(y);
        acc.pixels += 1;
        acc.max = acc.max.max(score);
        acc.sum += f64::from(score);
    }
    let mut out: Vec<MapRegion> = regions
        .into_iter()
        .flatten()
        .map(|acc| MapRegion {
            x: acc.x0,
            y: acc.y0,
            width: acc.x1 - acc.x0 + 1,
            height: acc.y1 - acc.y0 + 1,
            pixels: acc.pixels,
            max_score: acc.max,
            mean_score: (acc.sum / f64::from(acc.pixels)) as f32,
        })
        .collect();
    out.sort_by(|a, b| b.max_score.total_cmp(&a.max_score));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(width: usize, height: usize, hot: &[(usize, usize, f32)]) -> AnomalyMap {
        let mut data = vec![0.1; width * height];
        for &(x, y, v) in hot {
            data[y * width + x] = v;
        }
        AnomalyMap { width, height, data }
    }

    #[test]
    fn a_quiet_map_has_no_regions() {
        assert!(find_regions(&map(8, 8, &[]), 0.5).is_empty());
    }

    #[test]
    fn two_blobs_give_two_boxes_with_their_statistics() {
        let m = map(
            10,
            8,
            &[(1, 1, 0.9), (2, 1, 0.7), (2, 2, 0.8), (7, 5, 2.0), (8, 6, 1.0)],
        );
        let regions = find_regions(&m, 0.5);
        assert_eq!(regions.len(), 2);
        // Diagonal neighbours join under 8-connectivity.
        assert_eq!(
            regions[0],
            MapRegion {
                x: 7,
                y: 5,
                width: 2,
                height: 2,
                pixels: 2,
                max_score: 2.0,
                mean_score: 1.5
            }
        );
        let first = &regions[1];
        assert_eq!(
            (first.x, first.y, first.width, first.height, first.pixels),
            (1, 1, 2, 2, 3)
        );
        assert!((first.mean_score - 0.8).abs() < 1e-6);
    }

    #[test]
    fn pixels_at_the_threshold_are_not_part_of_a_region() {
        assert!(find_regions(&map(4, 4, &[(1, 1, 0.5)]), 0.5).is_empty());
    }
}
