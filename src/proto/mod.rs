//! The wire types of the gRPC API, generated from `proto/loupe/v1/*.proto`
//! by `build.rs`, and their conversions to and from Loupe's own types
//! ([`convert`]; the audit trail's in [`results`]), shared by the gRPC transport, the CLI and the benchmark's
//! client. The server core never sees these types.

pub mod convert;
pub mod results;

#[allow(missing_docs, clippy::all, clippy::pedantic, missing_debug_implementations)]
mod generated {
    tonic::include_proto!("loupe.v1");
}

pub use generated::*;

/// The encoded descriptor set of the Loupe protos, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("loupe_descriptor");
