//! The desired dataplane of one host: what `converge` makes real. The control plane maps its
//! model (VPCs, subnets, ports, routers, security groups) to one `HostPlan` per host.
//!
//! Addresses are IPv4 only. CIDRs are strings like "10.0.0.0/24" (parsed and validated by
//! `converge`, which reports a bad one as an error for that object and leaves it alone).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Everything one agent manages on its host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPlan {
    /// Host (agent) name; informational.
    pub host: String,
    /// Prefix of network-namespace names (global in /run/netns), so several agents can share
    /// one kernel. Default "uc".
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// This host's VXLAN tunnel endpoint address; needed when any network has remote VTEPs.
    #[serde(default)]
    pub underlay_ip: Option<Ipv4Addr>,
    /// Bridge in the host netns that router external legs join (e.g. "ucext"). It is not
    /// created by `converge`: the operator connects it to the outside world.
    #[serde(default)]
    pub external_bridge: Option<String>,
    #[serde(default)]
    pub networks: Vec<NetworkPlan>,
    #[serde(default)]
    pub routers: Vec<RouterPlan>,
    #[serde(default)]
    pub security_groups: Vec<SecurityGroupPlan>,
}

pub fn default_prefix() -> String {
    "uc".to_string()
}

impl HostPlan {
    pub fn empty(host: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            prefix: prefix.into(),
            underlay_ip: None,
            external_bridge: None,
            networks: Vec::new(),
            routers: Vec::new(),
            security_groups: Vec::new(),
        }
    }
}

/// One subnet present on this host (a bridge, optionally a VXLAN device and a DHCP server).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPlan {
    pub subnet_id: String,
    /// VXLAN network identifier (allocated by the control plane, unique per subnet).
    pub vni: u32,
    /// e.g. "10.0.0.0/24".
    pub cidr: String,
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    #[serde(default)]
    pub dhcp: Option<DhcpPlan>,
    #[serde(default)]
    pub ports: Vec<PortPlan>,
    /// Other hosts' VTEPs that have this subnet; empty → no VXLAN device.
    #[serde(default)]
    pub remote_vteps: Vec<Ipv4Addr>,
    /// Known MACs behind remote VTEPs (static FDB entries; BUM goes to every remote VTEP).
    #[serde(default)]
    pub remote_macs: Vec<RemoteMac>,
}

pub fn default_mtu() -> u32 {
    1450
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteMac {
    pub mac: String,
    pub vtep: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DhcpPlan {
    /// Address of the DHCP server's leg in the subnet (must be inside the subnet).
    pub server_ip: Ipv4Addr,
    pub server_mac: String,
    #[serde(default)]
    pub dns_servers: Vec<Ipv4Addr>,
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u32,
    /// Static leases. Usually one per port of the subnet on this host.
    #[serde(default)]
    pub hosts: Vec<DhcpHost>,
}

pub fn default_lease_secs() -> u32 {
    3600
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DhcpHost {
    pub mac: String,
    pub ip: Ipv4Addr,
    #[serde(default)]
    pub hostname: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortPlan {
    pub port_id: String,
    pub mac: String,
    #[serde(default)]
    pub ips: Vec<Ipv4Addr>,
    pub attachment: Attachment,
    /// Security group ids; the port's traffic is filtered by the union of their rules.
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// false: no anti-spoofing and no filtering at all for this port.
    #[serde(default = "default_true")]
    pub port_security: bool,
    /// This is the port's migration binding (the destination of a live migration), not
    /// its binding: the device is made like any port's and reported in
    /// `migration_targets_ready`. The same port may be in the plan once as each.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub migration_target: bool,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Attachment {
    /// Persistent tap `uct<id10>`; QEMU opens it with `ifname=...,script=no,downscript=no`.
    Tap,
    /// The same under the port's second tap name, `ucu<id10>`. A live migration's
    /// destination tap takes the name the source's does not have, so both can exist on one
    /// host, and keeps it afterwards (QEMU holds it open).
    TapAlternate,
    /// veth `ucp<id10>` whose peer is created in the workload netns `netns` and named
    /// `ifname` there (default "eth0"), with the port's MAC. The caller creates (and removes)
    /// the workload netns; while it is missing the port is reported as an error, not ready.
    Netns {
        netns: String,
        #[serde(default = "default_ifname")]
        ifname: String,
    },
}

pub fn default_ifname() -> String {
    "eth0".to_string()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroupPlan {
    pub sg_id: String,
    #[serde(default)]
    pub rules: Vec<RulePlan>,
    /// IPv4 addresses of the ports in this group (for remote-group rules).
    #[serde(default)]
    pub members: Vec<Ipv4Addr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Ingress,
    Egress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Any,
    Tcp,
    Udp,
    Icmp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulePlan {
    pub direction: Direction,
    pub protocol: Protocol,
    /// Destination port range for tcp/udp; None = all ports.
    #[serde(default)]
    pub port_min: Option<u16>,
    #[serde(default)]
    pub port_max: Option<u16>,
    #[serde(default)]
    pub remote: Remote,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Remote {
    #[default]
    Any,
    /// e.g. "192.168.0.0/16".
    Cidr(String),
    /// Members of that security group (by sg_id).
    Group(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterPlan {
    pub router_id: String,
    #[serde(default)]
    pub interfaces: Vec<RouterInterface>,
    #[serde(default)]
    pub external: Option<ExternalGateway>,
    #[serde(default)]
    pub floating_ips: Vec<FloatingIpPlan>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterInterface {
    /// Must be one of the plan's networks on this host.
    pub subnet_id: String,
    /// The gateway address inside the subnet.
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub mac: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalGateway {
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default = "default_true")]
    pub snat: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FloatingIpPlan {
    pub external_ip: Ipv4Addr,
    pub internal_ip: Ipv4Addr,
}

/// What one `converge` pass did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConvergeReport {
    /// Human-readable list of changes made ("create bridge ucb0123456789", ...). Empty when
    /// the live state already matched the plan.
    pub changed: Vec<String>,
    /// Port ids whose device exists, is up and enslaved to its subnet's bridge.
    pub ports_ready: Vec<String>,
    /// The same for ports' migration bindings on this host.
    #[serde(default)]
    pub migration_targets_ready: Vec<String>,
    /// Problems with single objects; the rest of the plan was still applied.
    pub errors: Vec<String>,
}
