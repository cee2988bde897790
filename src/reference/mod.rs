//! Golden references: choosing the memory bank of good patches ([`coreset`],
//! with its farthest-point search), how it is matched ([`MatchMode`]), and its
//! file format ([`mod@file`]).

pub mod coreset;
mod farthest;
pub mod file;
mod mode;

pub use coreset::{CoresetOptions, project, select};
pub use file::{FORMAT_VERSION, PixelReference, Reference, ReferenceError, decode, encode, load, to_bytes};
pub use mode::{MatchMode, UnknownMode};
