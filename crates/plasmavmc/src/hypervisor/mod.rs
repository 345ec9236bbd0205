//! The hypervisor layer: one [`Hypervisor`] per worker runs QEMU processes and controls them
//! only through QMP.
//!
//! Every VM gets a directory `<run_dir>/<vm_id>/` holding `spec.json`, `instance` (a random
//! UUID given to QEMU as `-uuid`), `qemu.pid`, `qmp.sock`, `serial.log` (appended across
//! restarts) and `serial.base` (how many bytes were trimmed off the front of `serial.log`, so
//! console offsets stay absolute; see [`Hypervisor::trim_serial_log`]). QEMU runs with
//! `-daemonize`: it leaves our process group and session, so a dying worker does not take its
//! VMs along, and [`Hypervisor::adopt_all`] finds them again. A process counts as ours only
//! when `/proc/<pid>/cmdline` carries both our `-name guest=<vm_id>,process=uc-vm-<vm_id>`
//! marker and the UUID from `instance`; a pid that was reused, or a QEMU someone started by
//! hand with a look-alike name, is never signalled.

mod accel;
pub mod qmp;
mod spec;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use self::accel::{find_host_kernel, probe_accel};
pub use self::qmp::{QmpClient, QmpError, QmpEvent};
pub use self::spec::{Accel, AccelMode, Boot, DiskFormat, DiskSource, DiskSpec, NicSpec, VmSpec};

/// Where QEMU's unix socket path must fit (sun_path is 108 bytes including the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// How long `quit` may take before the process is killed.
const QUIT_GRACE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(100);
/// Bytes per second a migration may use: about 10 Gbit/s.
const MIGRATION_MAX_BANDWIDTH: u64 = 1_250_000_000;
/// Default cap of one VM's serial console log: 2 MiB (libvirt's virtlogd rotates at the same
/// size). Trimming keeps the newest half.
pub const DEFAULT_CONSOLE_LOG_MAX_BYTES: u64 = 2 << 20;
/// A trim starts the kept part at a line when a newline is this close to the cut.
const TRIM_LINE_LOOKAHEAD: usize = 4096;

#[derive(Debug, Clone)]
pub struct HypervisorConfig {
    /// Per-VM state lives below this directory; keep it short (socket paths are limited).
    pub run_dir: PathBuf,
    /// `qemu-system-x86_64` unless set.
    pub qemu_binary: PathBuf,
    /// A VM's `serial.log` larger than this is cut to its newest half by
    /// [`Hypervisor::trim_serial_log`]; `0`: no cap. Default
    /// [`DEFAULT_CONSOLE_LOG_MAX_BYTES`].
    pub console_log_max_bytes: u64,
}

impl HypervisorConfig {
    pub fn new(run_dir: impl Into<PathBuf>) -> Self {
        Self {
            run_dir: run_dir.into(),
            qemu_binary: PathBuf::from("qemu-system-x86_64"),
            console_log_max_bytes: DEFAULT_CONSOLE_LOG_MAX_BYTES,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error("invalid VM spec: {0}")]
    InvalidSpec(String),
    #[error("VM {0} is already running")]
    AlreadyRunning(String),
    #[error("VM {0} is not running")]
    NotRunning(String),
    #[error("VM {0} is unknown to this hypervisor")]
    NotFound(String),
    #[error("starting QEMU failed: {0}")]
    Spawn(String),
    #[error("migration failed: {0}")]
    Migration(String),
    #[error("accelerator: {0}")]
    Accel(String),
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = HypervisorError> = std::result::Result<T, E>;

/// What QEMU reports (`query-status`), folded to what the control plane acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    Paused,
    /// Destination of a migration, waiting for (or receiving) the state.
    Incoming,
    /// Source after a completed migration (the guest now runs elsewhere).
    Migrated,
    /// The guest asked to power off / QEMU is exiting.
    ShuttingDown,
    /// No process.
    Stopped,
    /// Any other QEMU run state (see `qmp_status`).
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStatus {
    pub vm_id: String,
    pub state: RunState,
    /// QEMU's own status string, when a process answered.
    pub qmp_status: Option<String>,
    pub pid: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShutdownOutcome {
    /// The guest powered itself off after the ACPI power button.
    PoweredOff,
    /// The guest ignored the button; QEMU was told to `quit`.
    Quit,
    /// QEMU did not quit either; it was killed.
    Killed,
    /// Nothing was running.
    AlreadyStopped,
}

/// A slice of the serial console log. Offsets are absolute: they count every byte the VM's
/// serial port ever wrote to the log, including bytes trimmed off since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialChunk {
    pub data: Vec<u8>,
    /// Where `data` starts. Larger than the requested offset when that part was trimmed
    /// (then it is `first`): the reader missed `offset - requested` bytes.
    pub offset: u64,
    /// Where the next read should start (`offset + data.len()`).
    pub next_offset: u64,
    /// The oldest byte still kept (the bytes trimmed so far).
    pub first: u64,
    /// The end of the log when read.
    pub end: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdoptReport {
    /// Running and reconnected over QMP.
    pub adopted: Vec<String>,
    /// The process is gone (or the pid now belongs to something else): runtime state removed,
    /// spec and serial log kept.
    pub gone: Vec<String>,
    /// Our process is alive but QMP did not answer; left alone, retried on the next call.
    pub unreachable: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationProgress {
    /// QEMU's status: `none`, `setup`, `active`, `device`, `completed`, `failed`, `cancelled`…
    pub status: String,
    pub transferred_bytes: u64,
    pub remaining_bytes: u64,
    pub total_bytes: u64,
    pub total_time_ms: Option<u64>,
    pub downtime_ms: Option<u64>,
    pub error: Option<String>,
}

/// One running QEMU we own.
struct Vm {
    pid: u32,
    uuid: String,
    qmp: Arc<QmpClient>,
}

/// One per worker. Cheap to share behind an `Arc`.
pub struct Hypervisor {
    config: HypervisorConfig,
    vms: Mutex<HashMap<String, Arc<Vm>>>,
    /// VMs whose QEMU is being started right now.
    starting: Mutex<std::collections::HashSet<String>>,
    /// Held while a serial log is read, trimmed or removed, so a read never sees a log
    /// half-trimmed and a trim never writes into a run dir being deleted.
    console: Mutex<()>,
}

impl std::fmt::Debug for Hypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hypervisor")
            .field("run_dir", &self.config.run_dir)
            .finish_non_exhaustive()
    }
}

impl Hypervisor {
    /// Creates the run dir. Call [`Hypervisor::adopt_all`] next to pick up VMs a previous
    /// worker process left running.
    pub fn new(config: HypervisorConfig) -> Result<Self> {
        std::fs::create_dir_all(&config.run_dir)?;
        Ok(Self {
            config,
            vms: Mutex::new(HashMap::new()),
            starting: Mutex::new(Default::default()),
            console: Mutex::new(()),
        })
    }

    pub fn run_dir(&self) -> &Path {
        &self.config.run_dir
    }

    /// Resolves the accelerator for this host (see [`probe_accel`]); scratch files go to the
    /// run dir.
    pub async fn probe_accel(&self, mode: AccelMode, kernel: Option<&Path>) -> Result<Accel> {
        let kernel = match kernel {
            Some(k) => Some(k.to_path_buf()),
            None => find_host_kernel(),
        };
        probe_accel(
            mode,
            &self.config.qemu_binary,
            &self.config.run_dir.join(".accel-probe"),
            kernel.as_deref(),
        )
        .await
    }

    fn vm_dir(&self, vm_id: &str) -> PathBuf {
        self.config.run_dir.join(vm_id)
    }

    /// The serial console log file (exists once the VM was started once).
    pub fn serial_log_path(&self, vm_id: &str) -> PathBuf {
        self.vm_dir(vm_id).join("serial.log")
    }

    /// The QEMU command line (without the binary) this hypervisor runs for `spec`; the floor
    /// benchmark starts exactly this by hand.
    pub fn command_line(&self, spec: &VmSpec, uuid: &str, incoming: bool) -> Result<Vec<String>> {
        validate(spec)?;
        let dir = self.vm_dir(&spec.vm_id);
        let qmp = dir.join("qmp.sock");
        if qmp.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(HypervisorError::InvalidSpec(format!(
                "run dir too long for a unix socket path: {}",
                qmp.display()
            )));
        }
        let mut args: Vec<String> = vec![
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-daemonize".into(),
            "-pidfile".into(),
            path_arg(&dir.join("qemu.pid"))?,
            "-name".into(),
            format!("guest={id},process=uc-vm-{id}", id = spec.vm_id),
            "-uuid".into(),
            uuid.into(),
            "-machine".into(),
            "q35".into(),
            "-accel".into(),
            spec.accel.as_str().into(),
            "-smp".into(),
            spec.vcpus.to_string(),
            "-m".into(),
            format!("{}M", spec.memory_mib),
            "-display".into(),
            "none".into(),
            "-chardev".into(),
            format!("socket,id=qmp,path={},server=on,wait=off", opt_path(&qmp)?),
            "-mon".into(),
            "chardev=qmp,mode=control".into(),
            "-chardev".into(),
            format!(
                "file,id=serial0,path={},append=on",
                opt_path(&dir.join("serial.log"))?
            ),
            "-serial".into(),
            "chardev:serial0".into(),
        ];
        match &spec.boot {
            Boot::Kernel {
                kernel,
                initrd,
                cmdline,
            } => {
                args.push("-kernel".into());
                args.push(path_arg(kernel)?);
                if let Some(initrd) = initrd {
                    args.push("-initrd".into());
                    args.push(path_arg(initrd)?);
                }
                args.push("-append".into());
                args.push(cmdline.clone());
            }
            Boot::Disk => {}
        }
        for (i, disk) in spec.disks.iter().enumerate() {
            let file = match &disk.source {
                DiskSource::File { path, format } => {
                    format!("file={},format={}", opt_path(path)?, format.as_str())
                }
                DiskSource::Nbd { url } => format!("file={},format=raw", opt_escape(url)),
            };
            let ro = if disk.readonly { ",readonly=on" } else { "" };
            args.push("-drive".into());
            args.push(format!("{file},if=none,id=drive-{}{ro}", disk.id));
            let mut device = format!("virtio-blk-pci,drive=drive-{}", disk.id);
            if let Some(serial) = &disk.serial {
                device.push_str(&format!(",serial={}", opt_escape(serial)));
            }
            if i == 0 && spec.boot == Boot::Disk {
                device.push_str(",bootindex=0");
            }
            args.push("-device".into());
            args.push(device);
        }
        if let Some(seed) = &spec.seed {
            args.push("-drive".into());
            args.push(format!(
                "file={},format=raw,if=none,id=drive-uc-seed,readonly=on",
                opt_path(seed)?
            ));
            args.push("-device".into());
            args.push("virtio-blk-pci,drive=drive-uc-seed,serial=cidata".into());
        }
        for (i, nic) in spec.nics.iter().enumerate() {
            args.push("-netdev".into());
            args.push(format!(
                "tap,id=net{i},ifname={},script=no,downscript=no",
                nic.tap
            ));
            args.push("-device".into());
            args.push(format!("virtio-net-pci,netdev=net{i},mac={}", nic.mac));
        }
        if incoming {
            args.push("-incoming".into());
            args.push("defer".into());
        }
        Ok(args)
    }

    /// Starts the VM (detached) and connects QMP. Fails if it already runs.
    pub async fn start(&self, spec: &VmSpec) -> Result<VmStatus> {
        self.launch(spec, false).await?;
        self.status(&spec.vm_id).await
    }

    /// Starts the destination side of a migration: QEMU waits with `-incoming defer`, then
    /// listens on `listen` (`migrate-incoming tcp:<addr>`). The spec must describe the same
    /// hardware as the source (its NIC taps may differ); disks must be the same shared
    /// storage (same file or NBD export).
    pub async fn start_incoming(&self, spec: &VmSpec, listen: SocketAddr) -> Result<VmStatus> {
        let vm = self.launch(spec, true).await?;
        let uri = format!("tcp:{listen}");
        if let Err(e) = vm
            .qmp
            .execute("migrate-incoming", Some(json!({ "uri": uri })))
            .await
        {
            let _ = self.kill(&spec.vm_id).await;
            return Err(e.into());
        }
        self.status(&spec.vm_id).await
    }

    async fn launch(&self, spec: &VmSpec, incoming: bool) -> Result<Arc<Vm>> {
        validate(spec)?;
        // Two concurrent starts of one VM would run two QEMUs on the same disks.
        let _starting = StartingGuard::claim(&self.starting, &spec.vm_id)
            .ok_or_else(|| HypervisorError::AlreadyRunning(spec.vm_id.clone()))?;
        self.launch_exclusive(spec, incoming).await
    }

    async fn launch_exclusive(&self, spec: &VmSpec, incoming: bool) -> Result<Arc<Vm>> {
        if let Some(vm) = self.get(&spec.vm_id) {
            if process_is_ours(vm.pid, &spec.vm_id, &vm.uuid) {
                return Err(HypervisorError::AlreadyRunning(spec.vm_id.clone()));
            }
            self.forget_process(&spec.vm_id);
        }
        let dir = self.vm_dir(&spec.vm_id);
        std::fs::create_dir_all(&dir)?;
        // A leftover from a previous run that adoption has not seen yet may still be ours.
        if let Some((pid, uuid)) = read_instance(&dir)
            && process_is_ours(pid, &spec.vm_id, &uuid)
        {
            return Err(HypervisorError::AlreadyRunning(spec.vm_id.clone()));
        }
        let _ = std::fs::remove_file(dir.join("qmp.sock"));
        let _ = std::fs::remove_file(dir.join("qemu.pid"));
        write_atomic(
            &dir.join("spec.json"),
            &serde_json::to_vec_pretty(spec).expect("json"),
        )?;
        let uuid = uuid::Uuid::new_v4().to_string();
        write_atomic(&dir.join("instance"), uuid.as_bytes())?;

        let args = self.command_line(spec, &uuid, incoming)?;
        tracing::info!(vm_id = %spec.vm_id, accel = spec.accel.as_str(), incoming, "starting QEMU");
        // With -daemonize the foreground process exits once the VM is set up (or failed),
        // so its exit status and stderr are the start's result.
        let out = tokio::process::Command::new(&self.config.qemu_binary)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(false)
            .output()
            .await
            .map_err(|e| {
                HypervisorError::Spawn(format!("{}: {e}", self.config.qemu_binary.display()))
            })?;
        if !out.status.success() {
            let _ = std::fs::remove_file(dir.join("instance"));
            return Err(HypervisorError::Spawn(format!(
                "QEMU exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let pid = read_pid(&dir).ok_or_else(|| {
            HypervisorError::Spawn("QEMU started but wrote no pidfile".to_string())
        })?;
        if !process_is_ours(pid, &spec.vm_id, &uuid) {
            return Err(HypervisorError::Spawn(format!(
                "QEMU (pid {pid}) exited right after starting"
            )));
        }
        let qmp = match QmpClient::connect(&dir.join("qmp.sock")).await {
            Ok(qmp) => qmp,
            Err(e) => {
                kill_pid(pid);
                return Err(e.into());
            }
        };
        let vm = Arc::new(Vm { pid, uuid, qmp });
        self.vms
            .lock()
            .expect("vms lock")
            .insert(spec.vm_id.clone(), vm.clone());
        Ok(vm)
    }

    fn get(&self, vm_id: &str) -> Option<Arc<Vm>> {
        self.vms.lock().expect("vms lock").get(vm_id).cloned()
    }

    /// The VM if its process is still ours and alive; cleans up after a dead one.
    fn live(&self, vm_id: &str) -> Option<Arc<Vm>> {
        let vm = self.get(vm_id)?;
        if process_is_ours(vm.pid, vm_id, &vm.uuid) {
            Some(vm)
        } else {
            self.forget_process(vm_id);
            None
        }
    }

    fn live_or_err(&self, vm_id: &str) -> Result<Arc<Vm>> {
        validate_id(vm_id, 64, "vm_id")?;
        self.live(vm_id).ok_or_else(|| {
            if self.vm_dir(vm_id).join("spec.json").exists() {
                HypervisorError::NotRunning(vm_id.to_string())
            } else {
                HypervisorError::NotFound(vm_id.to_string())
            }
        })
    }

    /// Ok for a VM this run dir knows (started at least once), NotFound otherwise.
    fn known_or_err(&self, vm_id: &str) -> Result<()> {
        validate_id(vm_id, 64, "vm_id")?;
        if self.vm_dir(vm_id).join("spec.json").exists() {
            Ok(())
        } else {
            Err(HypervisorError::NotFound(vm_id.to_string()))
        }
    }

    /// Drops the in-memory handle and the runtime files of a VM whose process is gone.
    fn forget_process(&self, vm_id: &str) {
        self.vms.lock().expect("vms lock").remove(vm_id);
        let dir = self.vm_dir(vm_id);
        for f in ["qmp.sock", "qemu.pid", "instance"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
    }

    /// Ids of the VMs whose QEMU this hypervisor currently controls.
    pub fn running(&self) -> Vec<String> {
        let ids: Vec<String> = self.vms.lock().expect("vms lock").keys().cloned().collect();
        let mut ids: Vec<String> = ids
            .into_iter()
            .filter(|id| self.live(id).is_some())
            .collect();
        ids.sort();
        ids
    }

    /// The spec a VM was last started with (from its run dir).
    pub fn spec(&self, vm_id: &str) -> Result<VmSpec> {
        validate_id(vm_id, 64, "vm_id")?;
        let bytes = std::fs::read(self.vm_dir(vm_id).join("spec.json")).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                HypervisorError::NotFound(vm_id.to_string())
            } else {
                e.into()
            }
        })?;
        serde_json::from_slice(&bytes)
            .map_err(|e| HypervisorError::InvalidSpec(format!("stored spec of {vm_id}: {e}")))
    }

    /// QEMU's view (`query-status`), or `Stopped` when no process runs.
    pub async fn status(&self, vm_id: &str) -> Result<VmStatus> {
        validate_id(vm_id, 64, "vm_id")?;
        let Some(vm) = self.live(vm_id) else {
            if !self.vm_dir(vm_id).join("spec.json").exists() {
                return Err(HypervisorError::NotFound(vm_id.to_string()));
            }
            return Ok(VmStatus {
                vm_id: vm_id.to_string(),
                state: RunState::Stopped,
                qmp_status: None,
                pid: None,
            });
        };
        let ret = match vm.qmp.execute("query-status", None).await {
            Ok(ret) => ret,
            // QEMU exited between the liveness check and the command.
            Err(QmpError::Closed | QmpError::Io(_))
                if !process_is_ours(vm.pid, vm_id, &vm.uuid) =>
            {
                self.forget_process(vm_id);
                return Ok(VmStatus {
                    vm_id: vm_id.to_string(),
                    state: RunState::Stopped,
                    qmp_status: None,
                    pid: None,
                });
            }
            Err(e) => return Err(e.into()),
        };
        let status = ret["status"].as_str().unwrap_or("").to_string();
        let state = match status.as_str() {
            "running" => RunState::Running,
            "paused" | "suspended" => RunState::Paused,
            "inmigrate" => RunState::Incoming,
            "postmigrate" | "finish-migrate" => RunState::Migrated,
            "shutdown" => RunState::ShuttingDown,
            _ => RunState::Other,
        };
        Ok(VmStatus {
            vm_id: vm_id.to_string(),
            state,
            qmp_status: Some(status),
            pid: Some(vm.pid),
        })
    }

    /// Runs a QMP command against a VM (for callers needing more than the helpers here).
    pub async fn qmp(&self, vm_id: &str, command: &str, arguments: Option<Value>) -> Result<Value> {
        let vm = self.live_or_err(vm_id)?;
        Ok(vm.qmp.execute(command, arguments).await?)
    }

    /// QMP events of a running VM from now on.
    pub fn events(&self, vm_id: &str) -> Result<tokio::sync::broadcast::Receiver<QmpEvent>> {
        Ok(self.live_or_err(vm_id)?.qmp.subscribe())
    }

    /// Presses the ACPI power button and waits up to `timeout` for the guest to power off;
    /// then `quit`; then SIGKILL.
    pub async fn shutdown(&self, vm_id: &str, timeout: Duration) -> Result<ShutdownOutcome> {
        let Some(vm) = self.live(vm_id) else {
            self.known_or_err(vm_id)?;
            return Ok(ShutdownOutcome::AlreadyStopped);
        };
        match vm.qmp.execute("system_powerdown", None).await {
            Ok(_) | Err(QmpError::Closed) => {}
            Err(e) => tracing::warn!(vm_id, error = %e, "system_powerdown failed"),
        }
        if self.wait_gone(vm_id, &vm, timeout).await {
            return Ok(ShutdownOutcome::PoweredOff);
        }
        tracing::warn!(
            vm_id,
            ?timeout,
            "guest ignored the power button; quitting QEMU"
        );
        let _ = vm.qmp.execute("quit", None).await;
        if self.wait_gone(vm_id, &vm, QUIT_GRACE).await {
            return Ok(ShutdownOutcome::Quit);
        }
        self.kill(vm_id).await?;
        Ok(ShutdownOutcome::Killed)
    }

    /// Waits until the process is gone; true if it went within `timeout`.
    async fn wait_gone(&self, vm_id: &str, vm: &Vm, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if !process_is_ours(vm.pid, vm_id, &vm.uuid) {
                self.forget_process(vm_id);
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Hard reset (`system_reset`).
    pub async fn reboot(&self, vm_id: &str) -> Result<()> {
        self.qmp(vm_id, "system_reset", None).await?;
        Ok(())
    }

    /// SIGKILL. Only ever signals a pid whose command line still carries this VM's marker.
    pub async fn kill(&self, vm_id: &str) -> Result<()> {
        let Some(vm) = self.live(vm_id) else {
            return self.known_or_err(vm_id);
        };
        kill_pid(vm.pid);
        if !self.wait_gone(vm_id, &vm, QUIT_GRACE).await {
            return Err(HypervisorError::Io(std::io::Error::other(format!(
                "QEMU pid {} survived SIGKILL",
                vm.pid
            ))));
        }
        Ok(())
    }

    /// Deletes a stopped VM's run dir (spec, serial log). Fails while it runs.
    pub async fn remove(&self, vm_id: &str) -> Result<()> {
        validate_id(vm_id, 64, "vm_id")?;
        if self.live(vm_id).is_some() {
            return Err(HypervisorError::AlreadyRunning(vm_id.to_string()));
        }
        let dir = self.vm_dir(vm_id);
        if let Some((pid, uuid)) = read_instance(&dir)
            && process_is_ours(pid, vm_id, &uuid)
        {
            return Err(HypervisorError::AlreadyRunning(vm_id.to_string()));
        }
        let _console = self.console.lock().expect("console lock");
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// After a worker restart: reconnects to every QEMU in the run dir that is provably ours
    /// and still alive; clears the runtime state of those whose process is gone. Never signals
    /// anything.
    pub async fn adopt_all(&self) -> Result<AdoptReport> {
        let mut report = AdoptReport::default();
        let mut entries: Vec<(String, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(&self.config.run_dir)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if validate_id(&name, 64, "vm_id").is_err() || !entry.file_type()?.is_dir() {
                continue;
            }
            entries.push((name, entry.path()));
        }
        entries.sort();
        for (vm_id, dir) in entries {
            if self.live(&vm_id).is_some_and(|vm| !vm.qmp.is_closed()) {
                report.adopted.push(vm_id);
                continue;
            }
            let instance = read_instance(&dir);
            let Some((pid, uuid)) =
                instance.filter(|(pid, uuid)| process_is_ours(*pid, &vm_id, uuid))
            else {
                if dir.join("instance").exists() || dir.join("qemu.pid").exists() {
                    self.forget_process(&vm_id);
                    report.gone.push(vm_id);
                }
                continue;
            };
            match QmpClient::connect(&dir.join("qmp.sock")).await {
                Ok(qmp) => {
                    tracing::info!(vm_id, pid, "adopted running QEMU");
                    self.vms
                        .lock()
                        .expect("vms lock")
                        .insert(vm_id.clone(), Arc::new(Vm { pid, uuid, qmp }));
                    report.adopted.push(vm_id);
                }
                Err(e) => {
                    tracing::warn!(vm_id, pid, error = %e, "our QEMU is alive but QMP does not answer");
                    report.unreachable.push(vm_id);
                }
            }
        }
        Ok(report)
    }

    /// Reads the serial console log from the absolute `offset`, at most `max` bytes. An offset
    /// older than the oldest byte kept reads from that byte (the chunk's `offset` says where
    /// the data really starts); one past the end reads nothing from the end.
    pub fn serial_log(&self, vm_id: &str, offset: u64, max: usize) -> Result<SerialChunk> {
        use std::io::{Read, Seek, SeekFrom};
        validate_id(vm_id, 64, "vm_id")?;
        let dir = self.vm_dir(vm_id);
        let _console = self.console.lock().expect("console lock");
        let first = read_serial_base(&dir)?;
        let (mut file, size) = match std::fs::File::open(dir.join("serial.log")) {
            Ok(f) => {
                let size = f.metadata()?.len();
                (Some(f), size)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !dir.exists() {
                    return Err(HypervisorError::NotFound(vm_id.to_string()));
                }
                (None, 0)
            }
            Err(e) => return Err(e.into()),
        };
        let end = first + size;
        let start = offset.clamp(first, end);
        let mut data = Vec::new();
        if let Some(file) = &mut file {
            file.seek(SeekFrom::Start(start - first))?;
            file.take(max as u64).read_to_end(&mut data)?;
        }
        Ok(SerialChunk {
            offset: start,
            next_offset: start + data.len() as u64,
            data,
            first,
            end,
        })
    }

    /// Caps a VM's serial log at `console_log_max_bytes`: when the file is larger, only its
    /// newest half is kept (from a line start when one is near) and `serial.base` records
    /// the total bytes dropped, so offsets stay absolute and only grow, also across new
    /// `Hypervisor`s on the same run dir. Returns the bytes dropped now (0: under the cap,
    /// no cap, or no log).
    ///
    /// Copy-truncate: read the tail, truncate the file, write the tail back at the start. That
    /// is safe with a running QEMU only because QEMU opens the log with `append=on`
    /// (`O_APPEND`): its next write lands at the new end instead of its old file position.
    /// It is racy by design: whatever QEMU writes between reading the tail and writing it
    /// back is lost (truncated, or overwritten by the tail); the window is one read, one
    /// truncate and one write of at most half the cap. `serial.base` is written before the
    /// truncate: if the process dies in between, some bytes are shown twice at higher
    /// offsets (never an offset going backwards), and the next trim cuts again.
    pub fn trim_serial_log(&self, vm_id: &str) -> Result<u64> {
        use std::io::{Read, Seek, SeekFrom};
        use std::os::unix::fs::FileExt;
        validate_id(vm_id, 64, "vm_id")?;
        let cap = self.config.console_log_max_bytes;
        if cap == 0 {
            return Ok(0);
        }
        let dir = self.vm_dir(vm_id);
        let _console = self.console.lock().expect("console lock");
        let mut file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join("serial.log"))
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        let size = file.metadata()?.len();
        if size <= cap {
            return Ok(0);
        }
        let keep = cap / 2;
        // size > cap >= 2 * keep, so the cut is past the first byte. `tail` starts one byte
        // before it (to see whether the cut already is at a line start) and runs to the end
        // of the file, including what QEMU appended since the size was taken.
        let before_cut = size - keep - 1;
        let mut tail = Vec::new();
        file.seek(SeekFrom::Start(before_cut))?;
        file.read_to_end(&mut tail)?;
        let lookahead = tail
            .len()
            .min(TRIM_LINE_LOOKAHEAD)
            .min(usize::try_from(keep / 4).unwrap_or(usize::MAX).max(1));
        let from = match tail[..lookahead].iter().position(|b| *b == b'\n') {
            Some(nl) => nl + 1,
            None => 1,
        };
        let cut = before_cut + from as u64;
        let base = read_serial_base(&dir)? + cut;
        write_atomic(&dir.join("serial.base"), format!("{base}\n").as_bytes())?;
        // Bytes QEMU writes from here until the tail is back are lost (see above).
        file.set_len(0)?;
        file.write_all_at(&tail[from..], 0)?;
        Ok(cut)
    }

    /// [`Hypervisor::trim_serial_log`] for every VM in the run dir, running or not; the worker
    /// calls it periodically. Returns the VMs trimmed and the bytes dropped from each; a VM
    /// that cannot be trimmed is logged and skipped.
    pub fn trim_serial_logs(&self) -> Result<Vec<(String, u64)>> {
        let mut trimmed = Vec::new();
        if self.config.console_log_max_bytes == 0 {
            return Ok(trimmed);
        }
        for entry in std::fs::read_dir(&self.config.run_dir)? {
            let entry = entry?;
            let Ok(vm_id) = entry.file_name().into_string() else {
                continue;
            };
            if validate_id(&vm_id, 64, "vm_id").is_err()
                || !entry.file_type().is_ok_and(|t| t.is_dir())
            {
                continue;
            }
            match self.trim_serial_log(&vm_id) {
                Ok(0) => {}
                Ok(dropped) => trimmed.push((vm_id, dropped)),
                Err(e) => tracing::warn!(vm_id, error = %e, "cannot trim the serial log"),
            }
        }
        trimmed.sort();
        Ok(trimmed)
    }

    /// `query-migrate` on either side.
    pub async fn migration_progress(&self, vm_id: &str) -> Result<MigrationProgress> {
        let ret = self.qmp(vm_id, "query-migrate", None).await?;
        Ok(parse_migration(&ret))
    }

    /// Live-migrates a running VM to a destination prepared with
    /// [`Hypervisor::start_incoming`] (`dest_uri` like `tcp:10.0.0.2:4444`); storage is shared,
    /// so only RAM and device state move. Waits until it completed (then the source QEMU is
    /// told to quit) or failed (the source keeps running). Gives up and cancels after
    /// `timeout`.
    pub async fn migrate(
        &self,
        vm_id: &str,
        dest_uri: &str,
        timeout: Duration,
    ) -> Result<MigrationProgress> {
        let vm = self.live_or_err(vm_id)?;
        // auto-converge throttles a guest that dirties memory faster than it can be sent;
        // QEMU's default bandwidth cap (128 MiB/s) would make a large VM take minutes on a
        // fast link.
        vm.qmp
            .execute(
                "migrate-set-capabilities",
                Some(json!({ "capabilities": [
                    { "capability": "auto-converge", "state": true }
                ] })),
            )
            .await?;
        vm.qmp
            .execute(
                "migrate-set-parameters",
                Some(json!({ "max-bandwidth": MIGRATION_MAX_BANDWIDTH })),
            )
            .await?;
        vm.qmp
            .execute("migrate", Some(json!({ "uri": dest_uri })))
            .await?;
        let deadline = tokio::time::Instant::now() + timeout;
        let progress = loop {
            let ret = vm.qmp.execute("query-migrate", None).await?;
            let progress = parse_migration(&ret);
            match progress.status.as_str() {
                "completed" => break progress,
                "failed" | "cancelled" => {
                    return Err(HypervisorError::Migration(format!(
                        "{}: {}",
                        progress.status,
                        progress.error.unwrap_or_default()
                    )));
                }
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = vm.qmp.execute("migrate_cancel", None).await;
                return Err(HypervisorError::Migration(format!(
                    "not finished after {timeout:?} ({} of {} bytes sent); cancelled",
                    progress.transferred_bytes, progress.total_bytes
                )));
            }
            tokio::time::sleep(POLL).await;
        };
        // The guest runs on the destination now; the paused source only holds memory.
        let _ = vm.qmp.execute("quit", None).await;
        if !self.wait_gone(vm_id, &vm, QUIT_GRACE).await {
            self.kill(vm_id).await?;
        }
        Ok(progress)
    }
}

/// Marks a VM as being started; released on drop (also when the start is cancelled).
struct StartingGuard<'a> {
    set: &'a Mutex<std::collections::HashSet<String>>,
    vm_id: String,
}

impl<'a> StartingGuard<'a> {
    fn claim(set: &'a Mutex<std::collections::HashSet<String>>, vm_id: &str) -> Option<Self> {
        set.lock()
            .expect("starting lock")
            .insert(vm_id.to_string())
            .then(|| Self {
                set,
                vm_id: vm_id.to_string(),
            })
    }
}

impl Drop for StartingGuard<'_> {
    fn drop(&mut self) {
        self.set.lock().expect("starting lock").remove(&self.vm_id);
    }
}

fn parse_migration(ret: &Value) -> MigrationProgress {
    let ram = &ret["ram"];
    MigrationProgress {
        status: ret["status"].as_str().unwrap_or("none").to_string(),
        transferred_bytes: ram["transferred"].as_u64().unwrap_or(0),
        remaining_bytes: ram["remaining"].as_u64().unwrap_or(0),
        total_bytes: ram["total"].as_u64().unwrap_or(0),
        total_time_ms: ret["total-time"].as_u64(),
        downtime_ms: ret["downtime"].as_u64(),
        error: ret["error-desc"].as_str().map(str::to_string),
    }
}

fn validate_id(id: &str, max: usize, what: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= max
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(HypervisorError::InvalidSpec(format!(
            "{what} {id:?} must be 1-{max} characters of [A-Za-z0-9_-]"
        )))
    }
}

fn validate(spec: &VmSpec) -> Result<()> {
    let bad = |m: String| Err(HypervisorError::InvalidSpec(m));
    validate_id(&spec.vm_id, 64, "vm_id")?;
    if spec.vcpus == 0 || spec.vcpus > 255 {
        return bad(format!("vcpus must be 1-255, got {}", spec.vcpus));
    }
    if spec.memory_mib < 16 {
        return bad(format!(
            "memory_mib must be at least 16, got {}",
            spec.memory_mib
        ));
    }
    let mut ids = std::collections::HashSet::new();
    for disk in &spec.disks {
        validate_id(&disk.id, 32, "disk id")?;
        if !ids.insert(disk.id.as_str()) {
            return bad(format!("duplicate disk id {}", disk.id));
        }
        if let Some(serial) = &disk.serial
            && (serial.len() > 20 || !serial.bytes().all(|b| b.is_ascii_graphic()))
        {
            return bad(format!(
                "disk serial {serial:?} must be at most 20 printable characters"
            ));
        }
        if let DiskSource::Nbd { url } = &disk.source
            && !(url.starts_with("nbd://") || url.starts_with("nbd+unix://"))
        {
            return bad(format!(
                "NBD url {url:?} must start with nbd:// or nbd+unix://"
            ));
        }
    }
    for nic in &spec.nics {
        if nic.tap.is_empty()
            || nic.tap.len() > 15
            || !nic
                .tap
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return bad(format!(
                "tap name {:?} is not a valid interface name",
                nic.tap
            ));
        }
        let octets: Vec<&str> = nic.mac.split(':').collect();
        if octets.len() != 6
            || !octets
                .iter()
                .all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return bad(format!("MAC {:?} is not xx:xx:xx:xx:xx:xx", nic.mac));
        }
    }
    if let Boot::Kernel { cmdline, .. } = &spec.boot
        && cmdline.contains('\n')
    {
        return bad("kernel cmdline must be one line".to_string());
    }
    Ok(())
}

/// A path as a plain argument value.
fn path_arg(path: &Path) -> Result<String> {
    path.to_str().map(str::to_string).ok_or_else(|| {
        HypervisorError::InvalidSpec(format!("path {} is not UTF-8", path.display()))
    })
}

/// A path inside a QEMU `key=value,…` option (a comma is escaped by doubling it).
fn opt_path(path: &Path) -> Result<String> {
    Ok(opt_escape(&path_arg(path)?))
}

fn opt_escape(value: &str) -> String {
    value.replace(',', ",,")
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Bytes trimmed off the front of a VM's `serial.log` so far (`serial.base`; 0 when absent).
/// The file is written atomically; should it hold anything but a number, 0 is used (and the
/// next trim rewrites it).
fn read_serial_base(dir: &Path) -> std::io::Result<u64> {
    let path = dir.join("serial.base");
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text.trim().parse().unwrap_or_else(|_| {
            tracing::warn!(path = %path.display(), "not a byte count; using 0");
            0
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

fn read_pid(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join("qemu.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn read_instance(dir: &Path) -> Option<(u32, String)> {
    let uuid = std::fs::read_to_string(dir.join("instance")).ok()?;
    Some((read_pid(dir)?, uuid.trim().to_string()))
}

/// True when `pid` is a live process whose command line carries this VM's marker and UUID.
/// (A zombie has an empty cmdline, so it counts as gone.)
pub fn process_is_ours(pid: u32, vm_id: &str, uuid: &str) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
    let marker = format!("guest={vm_id},process=uc-vm-{vm_id}");
    let has_pair = |flag: &str, value: &str| {
        args.windows(2)
            .any(|w| w[0] == flag.as_bytes() && w[1] == value.as_bytes())
    };
    has_pair("-name", &marker) && has_pair("-uuid", uuid)
}

fn kill_pid(pid: u32) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let Ok(raw) = i32::try_from(pid) else {
        return;
    };
    if let Err(e) = kill(Pid::from_raw(raw), Signal::SIGKILL) {
        tracing::warn!(pid, error = %e, "kill QEMU");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            vm_id: "vm-1".into(),
            name: "one".into(),
            vcpus: 2,
            memory_mib: 128,
            disks: vec![
                DiskSpec {
                    id: "root".into(),
                    source: DiskSource::Nbd {
                        url: "nbd://127.0.0.1:10809/vol-1".into(),
                    },
                    readonly: false,
                    serial: Some("vol-1".into()),
                },
                DiskSpec {
                    id: "data".into(),
                    source: DiskSource::File {
                        path: "/srv/a,b.qcow2".into(),
                        format: DiskFormat::Qcow2,
                    },
                    readonly: true,
                    serial: None,
                },
            ],
            nics: vec![NicSpec {
                tap: "uctap0".into(),
                mac: "52:54:00:12:34:56".into(),
            }],
            boot: Boot::Disk,
            seed: Some("/run/seed.iso".into()),
            accel: Accel::Tcg,
        }
    }

    fn pair(args: &[String], flag: &str) -> Vec<String> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].clone())
            .collect()
    }

    #[test]
    fn command_line_carries_marker_qmp_and_devices() {
        let tmp = tempfile::tempdir().unwrap();
        let hv = Hypervisor::new(HypervisorConfig::new(tmp.path())).unwrap();
        let dir = hv.run_dir().join("vm-1");
        let args = hv.command_line(&spec(), "u-u-i-d", false).unwrap();
        assert_eq!(&args[..2], ["-nodefaults", "-no-user-config"]);
        assert!(args.contains(&"-daemonize".to_string()));
        assert_eq!(pair(&args, "-name"), ["guest=vm-1,process=uc-vm-vm-1"]);
        assert_eq!(pair(&args, "-uuid"), ["u-u-i-d"]);
        assert_eq!(pair(&args, "-accel"), ["tcg"]);
        assert_eq!(pair(&args, "-smp"), ["2"]);
        assert_eq!(pair(&args, "-m"), ["128M"]);
        assert_eq!(
            pair(&args, "-pidfile"),
            [dir.join("qemu.pid").to_str().unwrap()]
        );
        let chardevs = pair(&args, "-chardev");
        assert!(chardevs[0].starts_with("socket,id=qmp,path="));
        assert!(chardevs[0].ends_with("qmp.sock,server=on,wait=off"));
        assert!(chardevs[1].ends_with("serial.log,append=on"));
        assert_eq!(
            pair(&args, "-drive"),
            [
                "file=nbd://127.0.0.1:10809/vol-1,format=raw,if=none,id=drive-root",
                // A comma inside a path is doubled, QEMU's option escaping.
                "file=/srv/a,,b.qcow2,format=qcow2,if=none,id=drive-data,readonly=on",
                "file=/run/seed.iso,format=raw,if=none,id=drive-uc-seed,readonly=on",
            ]
        );
        assert_eq!(
            pair(&args, "-device"),
            [
                "virtio-blk-pci,drive=drive-root,serial=vol-1,bootindex=0",
                "virtio-blk-pci,drive=drive-data",
                "virtio-blk-pci,drive=drive-uc-seed,serial=cidata",
                "virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56",
            ]
        );
        assert_eq!(
            pair(&args, "-netdev"),
            ["tap,id=net0,ifname=uctap0,script=no,downscript=no"]
        );
        assert!(!args.contains(&"-incoming".to_string()));
        let incoming = hv.command_line(&spec(), "u", true).unwrap();
        assert_eq!(pair(&incoming, "-incoming"), ["defer"]);
    }

    #[test]
    fn kernel_boot_arguments() {
        let tmp = tempfile::tempdir().unwrap();
        let hv = Hypervisor::new(HypervisorConfig::new(tmp.path())).unwrap();
        let mut s = spec();
        s.boot = Boot::Kernel {
            kernel: "/g/vmlinux".into(),
            initrd: Some("/g/initrd".into()),
            cmdline: "console=ttyS0 uc.name=x".into(),
        };
        let args = hv.command_line(&s, "u", false).unwrap();
        assert_eq!(pair(&args, "-kernel"), ["/g/vmlinux"]);
        assert_eq!(pair(&args, "-initrd"), ["/g/initrd"]);
        assert_eq!(pair(&args, "-append"), ["console=ttyS0 uc.name=x"]);
        // Firmware boot order only matters when booting from disk.
        assert!(!pair(&args, "-device")[0].contains("bootindex"));
    }

    #[test]
    fn invalid_specs_are_refused() {
        type Mutation = Box<dyn Fn(&mut VmSpec)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("empty id", Box::new(|s| s.vm_id.clear())),
            ("path in id", Box::new(|s| s.vm_id = "../x".into())),
            ("option in id", Box::new(|s| s.vm_id = "a,b".into())),
            ("zero vcpus", Box::new(|s| s.vcpus = 0)),
            ("tiny memory", Box::new(|s| s.memory_mib = 1)),
            ("dup disk", Box::new(|s| s.disks[1].id = "root".into())),
            ("bad disk id", Box::new(|s| s.disks[0].id = "a=b".into())),
            (
                "long serial",
                Box::new(|s| s.disks[0].serial = Some("x".repeat(21))),
            ),
            (
                "serial with comma",
                Box::new(|s| s.disks[0].serial = Some("a b".into())),
            ),
            (
                "not nbd",
                Box::new(|s| {
                    s.disks[0].source = DiskSource::Nbd {
                        url: "http://x".into(),
                    }
                }),
            ),
            (
                "bad mac",
                Box::new(|s| s.nics[0].mac = "52:54:00:12:34".into()),
            ),
            (
                "mac option",
                Box::new(|s| s.nics[0].mac = "52:54:00:12:34:5,".into()),
            ),
            ("tap option", Box::new(|s| s.nics[0].tap = "a,b".into())),
            ("long tap", Box::new(|s| s.nics[0].tap = "x".repeat(16))),
        ];
        for (what, mutate) in cases {
            let mut s = spec();
            mutate(&mut s);
            assert!(
                matches!(validate(&s), Err(HypervisorError::InvalidSpec(_))),
                "{what}: {s:?}"
            );
        }
        validate(&spec()).unwrap();
    }

    #[test]
    fn migration_progress_from_query_migrate() {
        let p = parse_migration(&json!({
            "status": "completed",
            "total-time": 812,
            "downtime": 12,
            "ram": {"transferred": 1000, "remaining": 0, "total": 4000}
        }));
        assert_eq!(p.status, "completed");
        assert_eq!(p.transferred_bytes, 1000);
        assert_eq!(p.total_bytes, 4000);
        assert_eq!(p.total_time_ms, Some(812));
        assert_eq!(p.downtime_ms, Some(12));
        let failed = parse_migration(&json!({"status": "failed", "error-desc": "boom"}));
        assert_eq!(failed.error.as_deref(), Some("boom"));
    }

    /// Appends like QEMU's `append=on` chardev (O_APPEND).
    fn qemu_append(path: &Path, bytes: &[u8]) {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
    }

    fn lines(from: usize, to: usize) -> Vec<u8> {
        (from..to)
            .flat_map(|i| format!("console line {i:06}\n").into_bytes())
            .collect()
    }

    #[test]
    fn serial_log_is_capped_and_offsets_stay_absolute() {
        let tmp = tempfile::tempdir().unwrap();
        let config = HypervisorConfig {
            console_log_max_bytes: 1000,
            ..HypervisorConfig::new(tmp.path())
        };
        let hv = Hypervisor::new(config.clone()).unwrap();
        std::fs::create_dir_all(hv.run_dir().join("vm-1")).unwrap();
        let log = hv.serial_log_path("vm-1");
        // Everything the "guest" ever wrote; absolute offsets index into it.
        let mut all = lines(0, 150); // 20 bytes a line: 3000 bytes
        qemu_append(&log, &all);
        let before = hv.serial_log("vm-1", 2500, 1 << 20).unwrap();
        assert_eq!(before.data, all[2500..]);
        assert_eq!((before.offset, before.first, before.end), (2500, 0, 3000));

        // Over the cap: the newest half (500 bytes) is kept, from a line start.
        let dropped = hv.trim_serial_log("vm-1").unwrap();
        assert_eq!(dropped, 2500);
        let kept = std::fs::read(&log).unwrap();
        assert!(kept.len() as u64 <= config.console_log_max_bytes / 2);
        assert_eq!(kept, all[2500..]);
        assert!(kept.starts_with(b"console line 000125\n"));
        let base = std::fs::read_to_string(hv.run_dir().join("vm-1/serial.base")).unwrap();
        assert_eq!(base.trim(), "2500");
        // Under the cap now: nothing to do.
        assert_eq!(hv.trim_serial_log("vm-1").unwrap(), 0);

        // A reader that was at 2600 goes on at 2600; one at 0 (or anywhere in the dropped
        // part) gets the oldest kept byte and learns where that is.
        let chunk = hv.serial_log("vm-1", 2600, 1 << 20).unwrap();
        assert_eq!(chunk.data, all[2600..]);
        assert_eq!((chunk.offset, chunk.next_offset), (2600, 3000));
        for stale in [0, 1, 1234, 2499] {
            let chunk = hv.serial_log("vm-1", stale, 1 << 20).unwrap();
            assert_eq!(chunk.offset, 2500, "from {stale}");
            assert_eq!(chunk.first, 2500);
            assert_eq!(chunk.data, all[2500..]);
            assert_eq!(chunk.next_offset, 3000);
        }
        // Reads are bounded by `max` and continue where they stopped.
        let part = hv.serial_log("vm-1", 0, 7).unwrap();
        assert_eq!((part.offset, part.next_offset), (2500, 2507));
        assert_eq!(part.data, all[2500..2507]);
        // Past the end: nothing, from the end.
        let past = hv.serial_log("vm-1", 9999, 1 << 20).unwrap();
        assert!(past.data.is_empty());
        assert_eq!(
            (past.offset, past.next_offset, past.end),
            (3000, 3000, 3000)
        );

        // The guest keeps writing (O_APPEND lands after the kept tail); offsets go on.
        let more = lines(150, 200);
        qemu_append(&log, &more);
        all.extend_from_slice(&more);
        let chunk = hv.serial_log("vm-1", 3000, 1 << 20).unwrap();
        assert_eq!(chunk.data, more);
        assert_eq!((chunk.offset, chunk.next_offset), (3000, 4000));

        // A second trim adds to the base; a new Hypervisor on the same run dir (a restarted
        // worker) reads the same absolute offsets.
        let dropped = hv.trim_serial_log("vm-1").unwrap();
        assert_eq!(dropped, 1000);
        drop(hv);
        let hv = Hypervisor::new(config).unwrap();
        let chunk = hv.serial_log("vm-1", 0, 1 << 20).unwrap();
        assert_eq!((chunk.offset, chunk.first, chunk.end), (3500, 3500, 4000));
        assert_eq!(chunk.data, all[3500..]);
        let chunk = hv.serial_log("vm-1", 3990, 1 << 20).unwrap();
        assert_eq!(chunk.data, all[3990..]);
        assert_eq!(chunk.next_offset, 4000);
        // A log whose lines are longer than the look-ahead is cut at exactly half the cap.
        let blob = vec![b'x'; 1500];
        qemu_append(&log, &blob);
        all.extend_from_slice(&blob);
        assert_eq!(hv.trim_serial_logs().unwrap(), [("vm-1".to_string(), 1500)]);
        assert_eq!(std::fs::read(&log).unwrap().len(), 500);
        let chunk = hv.serial_log("vm-1", 0, 1 << 20).unwrap();
        assert_eq!((chunk.offset, chunk.end), (5000, 5500));
        assert_eq!(chunk.data, all[5000..]);
        // A cut inside a line moves on to the next line start: the file holds 500 bytes of
        // the blob, 50 lines and a partial line; half the cap back from the end lies 7
        // bytes into line 225, so the kept part starts at line 226.
        let mut more = lines(200, 250);
        more.extend_from_slice(b"partial");
        qemu_append(&log, &more);
        all.extend_from_slice(&more);
        assert_eq!(hv.trim_serial_log("vm-1").unwrap(), 500 + 26 * 20);
        let kept = std::fs::read(&log).unwrap();
        assert!(kept.starts_with(b"console line 000226\n"));
        assert!(kept.len() < 500);
        let chunk = hv.serial_log("vm-1", 5600, 1 << 20).unwrap();
        assert_eq!((chunk.offset, chunk.end), (6020, 6507));
        assert_eq!(chunk.data, all[6020..]);
    }

    #[test]
    fn serial_log_without_cap_or_log() {
        let tmp = tempfile::tempdir().unwrap();
        let hv = Hypervisor::new(HypervisorConfig {
            console_log_max_bytes: 0,
            ..HypervisorConfig::new(tmp.path())
        })
        .unwrap();
        assert!(matches!(
            hv.serial_log("vm-none", 0, 10),
            Err(HypervisorError::NotFound(_))
        ));
        // Started never, or its log not written yet: empty.
        std::fs::create_dir_all(hv.run_dir().join("vm-1")).unwrap();
        let empty = hv.serial_log("vm-1", 5, 10).unwrap();
        assert!(empty.data.is_empty());
        assert_eq!((empty.offset, empty.next_offset), (0, 0));
        assert_eq!(hv.trim_serial_log("vm-1").unwrap(), 0);
        // No cap: never trimmed.
        qemu_append(&hv.serial_log_path("vm-1"), &lines(0, 10_000));
        assert_eq!(hv.trim_serial_log("vm-1").unwrap(), 0);
        assert!(hv.trim_serial_logs().unwrap().is_empty());
        assert_eq!(hv.serial_log("vm-1", 0, 1 << 20).unwrap().end, 200_000);
        assert!(!hv.run_dir().join("vm-1/serial.base").exists());
    }

    #[test]
    fn only_processes_with_our_marker_and_uuid_count() {
        // This test process carries no marker.
        assert!(!process_is_ours(std::process::id(), "vm-1", "u"));
        assert!(!process_is_ours(u32::MAX, "vm-1", "u"));
    }
}
