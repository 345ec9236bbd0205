//! `[prismnet]` and `[prismnet_agent]` in the node config file.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct PrismnetConfig {
    /// prismnet's API.
    pub port: u16,
    /// flaredb REST endpoint holding prismnet's namespace. Default: the node's own flaredb.
    pub flaredb_endpoint: Option<String>,
    pub flaredb_namespace: String,
    /// The namespace's password. Default: `secrets/prismnet-flaredb-password`, which `up`
    /// creates together with the namespace.
    pub flaredb_password_file: Option<PathBuf>,
    /// Host that runs routers created without an explicit `host`. Default: this node.
    pub network_host: Option<String>,
}

impl Default for PrismnetConfig {
    fn default() -> Self {
        Self {
            port: 8084,
            flaredb_endpoint: None,
            flaredb_namespace: "prismnet".into(),
            flaredb_password_file: None,
            network_host: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Whether `ultracloud up` runs the agent (`serve prismnet-agent` always does).
    pub enabled: bool,
    /// The host name ports are bound to. Default: the node name.
    pub host: Option<String>,
    /// Prefix of the network-namespace names the agent creates (global per kernel).
    pub prefix: String,
    /// This host's VXLAN tunnel endpoint; required for subnets that span hosts.
    pub underlay_ip: Option<Ipv4Addr>,
    /// Bridge that router external legs join (created by the operator).
    pub external_bridge: Option<String>,
    /// prismnet's URL. Default: the node's own prismnet.
    pub api_url: Option<String>,
    /// Seconds between re-converges that repair drift when nothing changed.
    pub repair_interval_secs: u64,
    /// Manage the dataplane inside this network namespace (`/run/netns/<name>`) instead of
    /// the agent's own: for hosts that keep tenant networking apart, and for tests that run
    /// several "hosts" on one kernel.
    pub netns: Option<String>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            host: None,
            prefix: "uc".into(),
            underlay_ip: None,
            external_bridge: None,
            api_url: None,
            repair_interval_secs: 5,
            netns: None,
        }
    }
}
