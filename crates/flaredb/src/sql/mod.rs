//! flaredb's SQL engine: types, deterministic rewriting, and the SQLite state machine.

pub mod determinism;
pub mod engine;
pub mod types;

pub use types::*;
