//! Loupe: visual quality inspection against a golden reference.
//!
//! Layers, with arrows pointing one way: [`service`] (gRPC transport) calls
//! the engine, which calls [`model`] (ONNX Runtime). [`runtime`] finds and
//! loads the ONNX Runtime library; [`config`] turns flags into settings.

pub mod bench;
pub mod cli;
pub mod config;
pub mod engine;
pub mod imaging;
pub mod model;
pub mod proto;
pub mod reference;
pub mod runtime;
pub mod scoring;
pub mod service;
pub mod store;
