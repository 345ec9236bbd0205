//! Request and response types of plasmavmc's API (control plane and worker agent), also used
//! by its client, the worker agent and the CLI.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A page of a list; pass `next_page_token` back as `page_token` for the next one.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

// ---- images

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ImageKind {
    /// A bootable disk (raw or qcow2); the VM's root volume is cloned from it.
    Disk,
    /// A kernel and an initrd booted directly (with `cmdline`); the root volume starts blank.
    Kernel,
}

impl ImageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disk => "disk",
            Self::Kernel => "kernel",
        }
    }
}

/// Register an image. Every location is an absolute path on the cluster's hosts or an
/// `http(s)://` URL reachable from them.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateImage {
    pub name: String,
    pub kind: ImageKind,
    /// Disk images: the disk file.
    #[serde(default)]
    pub disk: Option<String>,
    /// Disk images: `raw` or `qcow2` (default `qcow2`).
    #[serde(default)]
    pub format: Option<String>,
    /// Kernel images: the kernel.
    #[serde(default)]
    pub kernel: Option<String>,
    /// Kernel images: the initrd.
    #[serde(default)]
    pub initrd: Option<String>,
    /// Kernel images: the kernel command line (`console=ttyS0` is always added).
    #[serde(default)]
    pub cmdline: Option<String>,
    /// Visible to every tenant (operator only).
    #[serde(default)]
    pub public: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Image {
    pub id: String,
    pub name: String,
    pub org_id: String,
    pub project_id: String,
    pub kind: ImageKind,
    pub disk: Option<String>,
    pub format: Option<String>,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
    pub public: bool,
    /// Size of the disk (disk images) or kernel + initrd (kernel images) at registration.
    pub size_bytes: u64,
    pub created_at: i64,
}

// ---- workers

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RegisterWorker {
    /// Unique worker name (usually the node name).
    pub name: String,
    /// The worker agent's API URL (console, migration).
    pub url: String,
    /// The host name prismnet knows this worker's dataplane by (port bindings).
    pub host: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// Address other workers reach this one on for live migration.
    pub migration_address: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Worker {
    pub name: String,
    pub url: String,
    pub host: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Sum over the VMs placed on this worker (running or not: their capacity is reserved).
    pub used_vcpus: u32,
    pub used_memory_mib: u64,
    pub accel: String,
    pub migration_address: String,
    /// `up` while heartbeats arrive, `down` after they stop, `draining` refuses new VMs.
    pub state: String,
    pub last_heartbeat: i64,
    pub registered_at: i64,
}

/// What a worker reports about one VM it runs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct VmReport {
    pub id: String,
    pub state: VmState,
    #[serde(default)]
    pub error: Option<String>,
    /// The reboot sequence number the worker has applied.
    #[serde(default)]
    pub reboot_seq: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// VMs whose observed state changed (or all of them).
    #[serde(default)]
    pub vms: Vec<VmReport>,
}

// ---- VMs

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Being created (capacity reserved, volumes and ports being made); not listed.
    Creating,
    /// Placed, waiting for its worker.
    Pending,
    Starting,
    Running,
    Stopping,
    Stopped,
    Migrating,
    Deleting,
    /// The worker has removed every trace of the VM (sent by the worker only).
    Deleted,
    Error,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Pending => "pending",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Migrating => "migrating",
            Self::Deleting => "deleting",
            Self::Deleted => "deleted",
            Self::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "creating" => Self::Creating,
            "pending" => Self::Pending,
            "starting" => Self::Starting,
            "running" => Self::Running,
            "stopping" => Self::Stopping,
            "stopped" => Self::Stopped,
            "migrating" => Self::Migrating,
            "deleting" => Self::Deleting,
            "deleted" => Self::Deleted,
            "error" => Self::Error,
            _ => return None,
        })
    }

    /// A QEMU process may exist for the VM.
    pub fn may_run(self) -> bool {
        matches!(
            self,
            Self::Starting | Self::Running | Self::Stopping | Self::Migrating
        )
    }
}

/// What the owner wants the VM to be.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PowerState {
    Running,
    Stopped,
    /// Being deleted: the worker tears it down, then the control plane removes its volumes,
    /// ports and record.
    Deleted,
}

impl PowerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => Self::Running,
            "stopped" => Self::Stopped,
            "deleted" => Self::Deleted,
            _ => return None,
        })
    }
}

/// An extra volume: a new blank one of `size_mib`, or an existing coronafs volume by id.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeRequest {
    #[serde(default)]
    pub size_mib: Option<u64>,
    #[serde(default)]
    pub volume_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVm {
    pub name: String,
    /// Image id or name.
    pub image: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Size of the root volume (disk images: at least the image's size).
    #[serde(default)]
    pub root_volume_mib: Option<u64>,
    #[serde(default)]
    pub volumes: Vec<VolumeRequest>,
    /// Existing prismnet ports (of the caller's project) to attach, in NIC order.
    #[serde(default)]
    pub ports: Vec<String>,
    /// Subnets to create a port in (owned by the VM, deleted with it), after `ports`.
    #[serde(default)]
    pub subnets: Vec<String>,
    /// cloud-init user-data, delivered through a NoCloud seed.
    #[serde(default)]
    pub user_data: Option<String>,
    /// Start right away (default true).
    #[serde(default)]
    pub start: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct VmVolume {
    pub volume_id: String,
    /// `root` or `data`.
    pub role: String,
    pub size_mib: u64,
    /// Created for this VM (deleted with it) rather than brought by the caller.
    pub owned: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct VmNic {
    pub port_id: String,
    pub subnet_id: String,
    pub mac: String,
    /// Fixed IPv4 addresses of the port.
    pub ips: Vec<String>,
    /// Created for this VM (deleted with it) rather than brought by the caller.
    pub owned: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Vm {
    pub id: String,
    pub name: String,
    pub org_id: String,
    pub project_id: String,
    pub image_id: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub volumes: Vec<VmVolume>,
    pub nics: Vec<VmNic>,
    pub has_user_data: bool,
    pub desired: PowerState,
    pub state: VmState,
    /// The worker it is placed on.
    pub worker: String,
    /// Set while a live migration to this worker runs.
    pub migrating_to: Option<String>,
    pub reboot_seq: u64,
    pub error: Option<String>,
    /// Optimistic concurrency: pass as `If-Match` on updates.
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StopVm {
    /// Seconds to wait for the guest to power off after the ACPI request before killing it
    /// (default 30; 0 kills at once).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// Offline resize (the VM must be stopped).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeVm {
    #[serde(default)]
    pub vcpus: Option<u32>,
    #[serde(default)]
    pub memory_mib: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrateVm {
    /// Destination worker; default: the one with the most free memory.
    #[serde(default)]
    pub worker: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct VmEvent {
    pub seq: i64,
    pub vm_id: String,
    pub at: i64,
    pub kind: String,
    pub message: String,
}

/// The serial console's output from `offset` on.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ConsoleLog {
    pub vm_id: String,
    /// Byte offset of `data` in the whole log. Larger than the requested offset when the
    /// worker had already trimmed that part (each VM's log is capped; the newest part is
    /// kept): the bytes in between are gone.
    pub offset: u64,
    /// Pass back as `offset` to read only what came after.
    pub next_offset: u64,
    /// The bytes, lossily decoded as UTF-8.
    pub data: String,
}

// ---- worker agent API (control plane → worker)

/// Everything a worker needs to run a VM, as the control plane sends it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Assignment {
    pub vm: Vm,
    pub image: Image,
    /// Present only here (never in [`Vm`]).
    pub user_data: Option<String>,
    /// Grace period of the pending stop, if one is pending.
    pub stop_timeout_secs: u64,
    /// The reboot sequence number a worker last reported as applied: a restarted agent
    /// starts from it, so a reboot requested while no agent ran is still carried out.
    #[serde(default)]
    pub reboot_applied: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IncomingRequest {
    pub assignment: Assignment,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IncomingReady {
    /// QEMU migration URI (`tcp:host:port`) the source sends to.
    pub uri: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MigrateOut {
    pub uri: String,
}
