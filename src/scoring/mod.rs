//! From patch features to a judgement: nearest-neighbour search against the
//! reference, the anomaly map, defect regions, heatmaps and the threshold.
//! Plain synchronous functions over slices; no model, no transport.

pub mod annotate;
pub mod drift;
pub mod fast;
pub mod heatmap;
pub mod map;
pub mod nearest;
pub mod projection;
pub mod regions;
pub mod search;
pub mod threshold;
pub mod variation;
