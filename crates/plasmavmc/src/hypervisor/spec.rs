//! What the worker asks the hypervisor to run: one VM's hardware, disks, NICs and boot.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything needed to build one QEMU command line. Persisted in the run dir next to the
/// process so a restarted worker can adopt the VM and restart it identically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// Stable id; names the run-dir entry, the QMP socket and the process marker. Must be
    /// `[A-Za-z0-9_-]{1,64}` (it ends up in paths and on QEMU's command line).
    pub vm_id: String,
    /// Human name; the guest sees it (the tiny guest prints it in its boot marker).
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disks: Vec<DiskSpec>,
    pub nics: Vec<NicSpec>,
    pub boot: Boot,
    /// A NoCloud seed image (ISO9660, label `cidata`), attached read-only as a virtio disk
    /// after the other disks.
    pub seed: Option<PathBuf>,
    pub accel: Accel,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    /// Stable id; the QEMU node name is derived from it. `[A-Za-z0-9_-]{1,32}`.
    pub id: String,
    pub source: DiskSource,
    pub readonly: bool,
    /// Virtio serial number the guest sees under /dev/disk/by-id (at most 20 characters).
    pub serial: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DiskSource {
    /// A local file (raw or qcow2).
    File { path: PathBuf, format: DiskFormat },
    /// An NBD export, `nbd://host:port/export` (coronafs' qemu-nbd). Raw over the wire.
    Nbd { url: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicSpec {
    /// An existing tap device (prismnet creates it on the port's bridge).
    pub tap: String,
    /// `52:54:00:xx:xx:xx` style MAC the guest gets (the prismnet port's MAC).
    pub mac: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Boot {
    /// Direct kernel boot (`-kernel/-initrd/-append`).
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
    },
    /// Firmware boots the first disk.
    Disk,
}

/// The accelerator a VM runs with. Resolve it once per worker with
/// [`crate::hypervisor::probe_accel`] (from an [`AccelMode`]) and put the answer in each spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The operator's choice (worker config `accel = "auto" | "kvm" | "tcg"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccelMode {
    /// KVM when /dev/kvm opens and a probe guest makes progress under it, else TCG (warned).
    #[default]
    Auto,
    /// KVM or fail.
    Kvm,
    /// Software emulation always.
    Tcg,
}
