//! coronafs's request/response types and its OpenAPI description.
//!
//! Two APIs share these types: the controller's tenant-facing `/v1/volumes` and the node
//! service's `/v1/node/...` (operator/service token only), which the controller drives.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Largest page a list returns.
pub const MAX_PAGE_SIZE: u32 = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum VolumeFormat {
    /// A plain file: fastest, no copy-on-write; sparse on disk.
    #[default]
    Raw,
    /// qcow2: grows as written.
    Qcow2,
}

impl VolumeFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Qcow2 => "qcow2",
        }
    }
}

impl std::fmt::Display for VolumeFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VolumeState {
    /// Recorded; the node is materializing it (a retry or the reconciler finishes it).
    Creating,
    /// On disk, no attachment.
    Available,
    /// Exported to one worker (two during a migration with `multi_attach`).
    Attached,
    /// Being removed from its node; the reconciler finishes it.
    Deleting,
    /// The node refused or failed the materialization; delete it.
    Error,
}

/// Where a new volume's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum VolumeSource {
    /// Zeroes.
    #[default]
    Blank,
    /// A disk image (raw, qcow2, or any format `qemu-img` reads): an absolute path on the
    /// volume's node, or an `http(s)://` URL the node downloads.
    Image { location: String },
    /// A copy of a snapshot (placed on the snapshot's node).
    Snapshot { snapshot_id: String },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVolume {
    /// 1-63 letters, digits, '-', '_' or '.'.
    pub name: String,
    /// Required for blank volumes; for clones, defaults to the source's size (and may only
    /// grow it). A positive multiple of 512.
    #[serde(default)]
    pub size_bytes: Option<u64>,
    #[serde(default)]
    pub format: VolumeFormat,
    #[serde(default)]
    pub source: VolumeSource,
    /// Allow two simultaneous attachments (a VM live migration: source and destination
    /// worker both connected to the same export).
    #[serde(default)]
    pub multi_attach: bool,
    /// Operator only: the node to place the volume on.
    #[serde(default)]
    pub node: Option<String>,
    /// Operator only: create the volume for this organization/project (e.g. plasmavmc acting
    /// for a tenant with the service token).
    #[serde(default)]
    pub org: Option<String>,
    #[serde(default)]
    pub project: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Attachment {
    /// The worker (host name) the volume is attached to.
    pub worker: String,
    /// `nbd://host:port/export`; absent for a `local` attachment.
    pub nbd_url: Option<String>,
    /// `nbd` or `local`.
    pub transport: Transport,
    pub attached_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Through the node's qemu-nbd export.
    #[default]
    Nbd,
    /// The worker is the volume's node and opens the file itself (no export).
    Local,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    pub id: String,
    pub volume_id: String,
    pub name: String,
    pub size_bytes: u64,
    pub format: VolumeFormat,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Volume {
    pub id: String,
    pub name: String,
    pub org: String,
    pub project: String,
    pub size_bytes: u64,
    pub format: VolumeFormat,
    pub state: VolumeState,
    /// The storage node holding the volume.
    pub node: String,
    pub source: VolumeSource,
    pub multi_attach: bool,
    pub attachments: Vec<Attachment>,
    pub snapshots: Vec<Snapshot>,
    /// Why the volume is in `error`.
    #[serde(default)]
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Bumped on every change; `If-Match`-style checks use it.
    pub version: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `page_token` for the next page; absent on the last.
    pub next_page_token: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeVolume {
    /// The new size: larger than the current one (volumes only grow).
    pub size_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    pub name: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachVolume {
    /// The worker (host name) the VM runs on.
    pub worker: String,
    /// Prefer a local path when the worker is the volume's node (no NBD export; not for
    /// multi-attach volumes).
    #[serde(default)]
    pub prefer_local: bool,
}

/// What a worker needs to open an attached volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AttachInfo {
    pub volume_id: String,
    pub worker: String,
    pub transport: Transport,
    /// `nbd://host:port/export` (for QEMU: `driver=nbd,server.host=…,server.port=…,export=…`).
    pub nbd_url: Option<String>,
    pub nbd_host: Option<String>,
    pub nbd_port: Option<u16>,
    pub export_name: Option<String>,
    /// Whether the export requires TLS (`tls-creds` with the cluster CA).
    pub tls: bool,
    /// The volume file, when the worker is the volume's node.
    pub local_path: Option<String>,
    pub format: VolumeFormat,
    /// The format a client of the NBD export sees: always raw (qemu-nbd decodes qcow2).
    pub export_format: VolumeFormat,
    pub size_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DetachVolume {
    pub worker: String,
}

// ---- node service

/// `/v1/capabilities`: which roles this process serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Capabilities {
    pub supports_controller_api: bool,
    pub supports_node_api: bool,
    pub node: String,
    pub version: String,
}

/// A node announcing itself to the controller (and refreshing every few seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterNode {
    pub name: String,
    /// The node API's URL.
    pub url: String,
    /// The worker-network address its exports listen on.
    pub nbd_host: String,
    pub free_bytes: u64,
    pub tls: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeView {
    pub name: String,
    pub url: String,
    pub nbd_host: String,
    pub free_bytes: u64,
    pub tls: bool,
    pub last_seen: i64,
    /// Seen within the liveness window.
    pub live: bool,
}

/// Materialize a volume on a node (idempotent: the same request again is a no-op).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeCreateVolume {
    pub size_bytes: Option<u64>,
    pub format: VolumeFormat,
    pub source: NodeSource,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum NodeSource {
    Blank,
    Image { location: String },
    Snapshot { snapshot_id: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeVolume {
    pub id: String,
    pub format: VolumeFormat,
    /// The virtual size as `qemu-img info` reports it.
    pub size_bytes: u64,
    pub path: String,
    pub export: Option<NodeExport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeExport {
    pub host: String,
    pub port: u16,
    pub export_name: String,
    pub shared: u32,
    pub tls: bool,
    pub nbd_url: String,
    /// The supervised qemu-nbd process, when running.
    pub pid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeExportRequest {
    /// Clients allowed at once (`qemu-nbd --shared`): 1, or 2 for a migration.
    pub shared: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeSnapshot {
    pub id: String,
    pub volume_id: String,
    pub format: VolumeFormat,
    pub size_bytes: u64,
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "coronafs", description = "Mutable VM volumes (raw/qcow2) exported over NBD"),
    paths(
        crate::server::create_volume,
        crate::server::list_volumes,
        crate::server::get_volume,
        crate::server::delete_volume,
        crate::server::resize_volume,
        crate::server::attach_volume,
        crate::server::detach_volume,
        crate::server::create_snapshot,
        crate::server::delete_snapshot,
        crate::server::list_nodes,
        crate::server::register_node,
        crate::server::capabilities,
        crate::server::node_put_volume,
        crate::server::node_get_volume,
        crate::server::node_delete_volume,
        crate::server::node_resize_volume,
        crate::server::node_put_export,
        crate::server::node_delete_export,
        crate::server::node_put_snapshot,
        crate::server::node_delete_snapshot,
    ),
    components(schemas(
        Volume, VolumeFormat, VolumeState, VolumeSource, CreateVolume, Attachment, Transport,
        Snapshot, ResizeVolume, CreateSnapshot, AttachVolume, AttachInfo, DetachVolume,
        Capabilities, RegisterNode, NodeView, NodeCreateVolume, NodeSource, NodeVolume,
        NodeExport, NodeExportRequest, NodeSnapshot, Page<Volume>,
    ))
)]
pub struct CoronafsApi;
