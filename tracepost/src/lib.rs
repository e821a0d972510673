//! The tracepost process: wires storage, the collector and the query API into the roles the binary runs
//! (`serve`, `collector`, `query`, `migrate`), with health endpoints, metrics and graceful shutdown.
//! `main.rs` only parses the command line, sets up logging and waits for signals.

pub mod app;
pub mod listener;
pub mod loadgen;
pub mod push;
pub mod querybench;

pub use app::{start, App, AppConfig, Role};
