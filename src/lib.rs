//! Loupe: visual quality inspection against a golden reference.
//!
//! Layers, arrows pointing down: transport ([`grpc`]; [`proto`] converts its
//! messages; [`metrics`], the Prometheus listener fed by the core's events;
//! [`console`], the read-only web console over the core and the trail)
//! -> server core ([`server`]: admission, batching, worker, recipes,
//! [`store`], events) -> [`engine`] (sync: enroll, judge; over
//! [`imaging`], [`scoring`], [`mod@reference`]) -> [`model`] (a trait, ONNX
//! Runtime behind it). [`audit`] records every verdict from the core's
//! events. A new front end goes beside [`grpc`] and is wired up
//! in [`serve`]; a new model kind or device goes in [`model`].
//! [`runtime`] finds the ONNX Runtime library; [`config`] turns flags into
//! configuration; [`logging`] sets up the log lines and logs the core's events; [`cli`] and [`mod@bench`] are clients of the API and the engine.

pub mod audit;
pub mod bench;
pub mod cli;
pub mod config;
pub mod console;
pub mod demo;
pub mod engine;
pub mod failpoint;
pub mod grpc;
pub mod imaging;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod proto;
pub mod reference;
pub mod runtime;
pub mod scoring;
pub mod serve;
pub mod server;
pub mod store;
pub mod text;
