//! coronafs: mutable VM volumes (raw/qcow2) exported to workers over NBD.
//!
//! One crate, two roles (see docs/coronafs.md):
//! - the **controller** ([`controller`]): the tenant-facing `/v1/volumes` API; volume records
//!   and their states live in its flaredb namespace; it places volumes on nodes and drives them;
//! - the **node service** ([`node`]): volumes as files on local disk (qemu-img), each exported
//!   by a supervised qemu-nbd; it keeps serving while the controller is down.

pub mod api;
pub mod client;
pub mod config;
pub mod controller;
pub mod error;
pub mod node;
pub mod qemu;
pub mod server;

pub use client::CoronafsClient;
pub use config::CoronafsConfig;
