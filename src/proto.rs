//! Code generated from `proto/loupe/v1/*.proto` by `build.rs`.

#![allow(missing_docs, clippy::all, clippy::pedantic, missing_debug_implementations)]

tonic::include_proto!("loupe.v1");

/// The encoded descriptor set of the Loupe protos, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("loupe_descriptor");
