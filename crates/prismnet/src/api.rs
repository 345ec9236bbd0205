//! prismnet's API types (JSON) and their OpenAPI schemas. Addresses are strings in the JSON
//! (`"10.0.0.5"`, `"10.0.0.0/24"`); the service validates them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One page of a list; pass `next_page_token` back as `page_token` for the next.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Vpc {
    pub id: String,
    pub org: String,
    pub project: String,
    pub name: String,
    pub cidr: String,
    /// Created with the VPC: ingress from its own members, all egress.
    pub default_security_group: String,
    pub created_at: i64,
    pub version: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVpc {
    pub name: String,
    pub cidr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct UpdateVpc {
    pub name: Option<String>,
    /// Optimistic concurrency: the version read; a newer one answers 412.
    pub version: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Subnet {
    pub id: String,
    pub org: String,
    pub project: String,
    pub vpc_id: String,
    pub name: String,
    pub cidr: String,
    /// The router address of the subnet (a router interface takes it).
    pub gateway: Option<String>,
    pub dhcp: bool,
    /// Address of the subnet's DHCP server (reserved from the subnet) when `dhcp` is on.
    pub dhcp_server_ip: Option<String>,
    pub dns_servers: Vec<String>,
    /// VXLAN network identifier, unique per subnet.
    pub vni: u32,
    pub created_at: i64,
    pub version: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSubnet {
    pub vpc_id: String,
    pub name: String,
    pub cidr: String,
    /// Default: the first usable address. `"none"`: no gateway.
    pub gateway: Option<String>,
    /// Default true.
    pub dhcp: Option<bool>,
    #[serde(default)]
    pub dns_servers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct UpdateSubnet {
    pub name: Option<String>,
    pub dns_servers: Option<Vec<String>>,
    pub version: Option<i64>,
}

/// Where a port is plugged in: the host whose agent realizes it and how the workload
/// attaches: `tap` (a VM; QEMU opens the tap) or `netns:<name>` (a veth whose peer is moved
/// into that network namespace).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    pub host: String,
    pub attachment: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Port {
    pub id: String,
    pub org: String,
    pub project: String,
    pub vpc_id: String,
    pub subnet_id: String,
    pub name: String,
    pub mac: String,
    pub ips: Vec<String>,
    pub security_groups: Vec<String>,
    pub port_security: bool,
    /// What uses the port, e.g. `vm`; with `device_id` the VM id.
    pub device_owner: Option<String>,
    pub device_id: Option<String>,
    pub binding: Option<Binding>,
    /// `down` until the bound host's agent reports the device ready, then `active`.
    pub status: String,
    /// The host-side device (tap or veth) the agent created.
    pub device: Option<String>,
    /// The destination's binding while a live migration moves the port's VM (see
    /// `PUT /v1/ports/{id}/migration`).
    pub migration: Option<MigrationBinding>,
    pub created_at: i64,
    pub version: i64,
}

/// A port's second, inactive binding during a live migration: the destination host's agent
/// creates a second tap for the port (under the other of the two tap names, so source and
/// destination may share a host) with the same MAC, addresses and security groups, and
/// reports it like a port. `POST /v1/ports/{id}/migration/activate` makes it the port's
/// binding and removes the source's device; `DELETE` drops it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct MigrationBinding {
    pub host: String,
    /// Always `tap`: only VMs migrate.
    pub attachment: String,
    /// `down` until the destination's agent reports the device ready, then `active`.
    pub status: String,
    pub device: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePort {
    pub subnet_id: String,
    #[serde(default)]
    pub name: String,
    /// Default: generated (locally administered, unicast).
    pub mac: Option<String>,
    /// Fixed addresses inside the subnet; default: one address from IPAM.
    pub ips: Option<Vec<String>>,
    /// Default: the VPC's default group. `[]`: no group (all ingress dropped).
    pub security_groups: Option<Vec<String>>,
    /// Default true; false disables anti-spoofing and filtering for this port.
    pub port_security: Option<bool>,
    pub device_owner: Option<String>,
    pub device_id: Option<String>,
    pub binding: Option<Binding>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct UpdatePort {
    pub name: Option<String>,
    pub security_groups: Option<Vec<String>>,
    pub port_security: Option<bool>,
    pub device_owner: Option<String>,
    pub device_id: Option<String>,
    /// Binds (or re-binds) the port.
    pub binding: Option<Binding>,
    /// Unbinds the port (its device is removed from the host).
    #[serde(default)]
    pub unbind: bool,
    pub version: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct SecurityGroup {
    pub id: String,
    pub org: String,
    pub project: String,
    pub vpc_id: String,
    pub name: String,
    pub is_default: bool,
    pub rules: Vec<Rule>,
    pub created_at: i64,
    pub version: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Rule {
    pub id: String,
    /// `ingress` or `egress`.
    pub direction: String,
    /// `any`, `tcp`, `udp` or `icmp`.
    pub protocol: String,
    pub port_min: Option<u16>,
    pub port_max: Option<u16>,
    /// Remote side: a CIDR, or the members of a security group, or (neither) anywhere.
    pub remote_cidr: Option<String>,
    pub remote_group: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRule {
    pub direction: String,
    #[serde(default = "any")]
    pub protocol: String,
    pub port_min: Option<u16>,
    pub port_max: Option<u16>,
    pub remote_cidr: Option<String>,
    pub remote_group: Option<String>,
}

fn any() -> String {
    "any".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSecurityGroup {
    pub vpc_id: String,
    pub name: String,
    #[serde(default)]
    pub rules: Vec<CreateRule>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Router {
    pub id: String,
    pub org: String,
    pub project: String,
    pub vpc_id: String,
    pub name: String,
    /// The host whose agent runs the router's namespace.
    pub host: String,
    pub interfaces: Vec<RouterInterface>,
    pub external: Option<ExternalGateway>,
    pub created_at: i64,
    pub version: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct RouterInterface {
    pub subnet_id: String,
    pub ip: String,
    pub mac: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct ExternalGateway {
    pub pool_id: String,
    pub ip: String,
    pub snat: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetExternalGateway {
    /// An external pool (id or name).
    pub pool: String,
    /// Default true: masquerade the router's subnets to the external address.
    pub snat: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRouter {
    pub vpc_id: String,
    pub name: String,
    /// Default: the configured `network_host`, else the API's own node.
    pub host: Option<String>,
    pub external: Option<SetExternalGateway>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct UpdateRouter {
    pub name: Option<String>,
    /// Sets (or replaces) the external gateway.
    pub external: Option<SetExternalGateway>,
    /// Removes the external gateway (its address goes back to the pool).
    #[serde(default)]
    pub clear_external: bool,
    pub version: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddInterface {
    pub subnet_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct FloatingIp {
    pub id: String,
    pub org: String,
    pub project: String,
    pub pool_id: String,
    pub ip: String,
    pub port_id: Option<String>,
    pub created_at: i64,
    pub version: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateFloatingIp {
    /// An external pool (id or name).
    pub pool: String,
    pub port_id: Option<String>,
}

/// PUT semantics: `port_id` absent or null dissociates.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct UpdateFloatingIp {
    pub port_id: Option<String>,
    pub version: Option<i64>,
}

/// An operator-defined address pool: `external` (router gateways, floating IPs) or
/// `service` (VIPs fiberlb allocates).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Pool {
    pub id: String,
    pub name: String,
    pub cidr: String,
    pub kind: String,
    /// The upstream router of an external pool.
    pub gateway: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePool {
    pub name: String,
    pub cidr: String,
    pub kind: String,
    pub gateway: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct PoolAllocation {
    pub pool_id: String,
    pub ip: String,
    /// `router`, `fip` or `vip`.
    pub owner_kind: String,
    pub owner_id: String,
    pub org: String,
    pub project: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct Allocate {
    /// A specific address; default: any free one.
    pub ip: Option<String>,
    /// Free text naming the user of the VIP (e.g. a load balancer id).
    pub owner: Option<String>,
}

/// An agent registering its host.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct HostRegistration {
    /// The host's VXLAN endpoint address.
    pub underlay_ip: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Host {
    pub name: String,
    pub underlay_ip: Option<String>,
    pub updated_at: i64,
}

/// A host's desired dataplane at a model revision.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct PlanAnswer {
    pub revision: i64,
    /// A `HostPlan` (see the dataplane documentation).
    #[schema(value_type = Object)]
    pub plan: crate::dataplane::plan::HostPlan,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PortStatus {
    pub port_id: String,
    /// `active` or `down`.
    pub status: String,
    pub device: Option<String>,
    /// The port's migration binding on the reporting host, not its binding.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub migration: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct StatusReport {
    pub ports: Vec<PortStatus>,
}
