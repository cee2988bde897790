//! The offline benchmark: the field's metrics over image sets.

pub mod dataset;
pub mod evaluate;
pub mod metrics;
