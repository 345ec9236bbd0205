//! plasmavmc: the VM control plane and the QEMU/KVM worker agent.

pub mod api;
pub mod client;
pub mod config;
pub mod guest;
pub mod hypervisor;
pub mod net;
pub mod placement;
pub mod server;
pub mod service;
pub mod store;
pub mod volumes;
pub mod worker;

pub use config::{PlasmavmcConfig, WorkerConfig};
