//! The Linux dataplane: converges one host's bridges, VXLAN devices, taps, veths, network
//! namespaces, dnsmasq servers and nftables rules to a [`plan::HostPlan`].

pub mod plan;
