//! `[plasmavmc]` (control plane) and `[plasmavmc_worker]` (worker agent) in the node config.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct PlasmavmcConfig {
    /// The VM API.
    pub port: u16,
    /// flaredb REST endpoint holding plasmavmc's namespace. Default: the node's own flaredb.
    pub flaredb_endpoint: Option<String>,
    pub flaredb_namespace: String,
    /// The namespace's password. Default: `secrets/plasmavmc-flaredb-password`, which `up`
    /// creates together with the namespace.
    pub flaredb_password_file: Option<PathBuf>,
    /// prismnet's API (VM ports). Default: the node's own prismnet. Empty: VMs get no NICs.
    pub prismnet_url: Option<String>,
    /// coronafs' controller API (VM volumes). Default: the node's own coronafs. Empty: VMs get
    /// no volumes.
    pub coronafs_url: Option<String>,
    /// A worker whose last heartbeat is older than this is `down` and gets no new VMs.
    pub worker_timeout_secs: u64,
    /// Largest VM accepted.
    pub max_vcpus: u32,
    pub max_memory_mib: u64,
}

impl Default for PlasmavmcConfig {
    fn default() -> Self {
        Self {
            port: 8087,
            flaredb_endpoint: None,
            flaredb_namespace: "plasmavmc".into(),
            flaredb_password_file: None,
            prismnet_url: None,
            coronafs_url: None,
            worker_timeout_secs: 30,
            max_vcpus: 64,
            max_memory_mib: 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Run the worker agent under `ultracloud up`.
    pub enabled: bool,
    /// Worker name; default: the node name.
    pub name: Option<String>,
    /// The worker agent's API (console reads, live migration).
    pub port: u16,
    /// URL the control plane reaches this agent on; default `http(s)://<bind>:<port>`.
    pub advertise_url: Option<String>,
    /// The control plane's URL; default the node's own plasmavmc.
    pub control_plane_url: Option<String>,
    /// prismnet's API; default the node's own prismnet.
    pub prismnet_url: Option<String>,
    /// The host name prismnet's agent on this machine uses; default: the node name.
    pub prismnet_host: Option<String>,
    /// coronafs' controller API; default the node's own coronafs.
    pub coronafs_url: Option<String>,
    /// `auto` (KVM when it works, else TCG with a warning), `kvm` or `tcg`.
    pub accel: crate::hypervisor::AccelMode,
    /// Capacity offered to the control plane; default: the host's CPUs and 80% of its memory.
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
    /// Address (no port) QEMU listens on for incoming live migrations; default the bind
    /// address.
    pub migration_address: Option<String>,
    pub heartbeat_secs: u64,
    /// How often the agent re-reads its assignments without being woken.
    pub resync_secs: u64,
    /// Cap of each VM's serial console log on this worker: a larger log is cut to its newest
    /// half (checked every 2 s). `0`: no cap. At least 4096 otherwise.
    pub console_log_max_bytes: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            name: None,
            port: 8097,
            advertise_url: None,
            control_plane_url: None,
            prismnet_url: None,
            prismnet_host: None,
            coronafs_url: None,
            accel: Default::default(),
            vcpus: None,
            memory_mib: None,
            migration_address: None,
            heartbeat_secs: 5,
            resync_secs: 10,
            console_log_max_bytes: crate::hypervisor::DEFAULT_CONSOLE_LOG_MAX_BYTES,
        }
    }
}
