//! The Linux dataplane: converges one host's bridges, VXLAN devices, taps, veths, network
//! namespaces, dnsmasq servers and nftables rules to a [`plan::HostPlan`]. See
//! docs/prismnet.md, section "Dataplane", for the picture.

mod converge;
mod dhcp;
pub mod names;
mod nft;
pub mod plan;
mod resolve;
mod sys;

pub use converge::{Dataplane, DataplaneError};
pub use sys::Tools;
