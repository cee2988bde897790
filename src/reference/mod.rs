//! Golden references: choosing the memory bank of good patches ([`coreset`]) and
//! storing it with its calibration on disk ([`mod@file`]).

pub mod coreset;
pub mod file;
mod search;

pub use coreset::{CoresetOptions, project, select};

pub use file::{FORMAT_VERSION, MatchMode, Reference, ReferenceError, decode, encode, load, save};
