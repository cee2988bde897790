//! The offline benchmark: the field's metrics over image sets.

pub mod metrics;
