//! The worker agent: registers with the control plane, heartbeats, and converges the VMs
//! assigned to it — volumes attached through coronafs, NICs bound as taps through prismnet,
//! a NoCloud seed with user-data and network config, QEMU through [`Hypervisor`]. It reports
//! each VM's observed state with the next heartbeat (sent at once after a change).
//!
//! QEMU runs detached from the agent: killing the agent leaves VMs running, and a restarted
//! agent adopts them (`Hypervisor::adopt_all`). The agent never stops a VM it is not told to,
//! and never signals a process it did not start.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Deserialize;
use uc_runtime::auth::Principal as Caller;
use uc_runtime::client::ClientOptions;
use uc_runtime::http::{HttpServer, Json};
use uc_runtime::{ApiError, NodeContext, Shutdown};

use crate::api::*;
use crate::client::PlasmavmcClient;
use crate::config::WorkerConfig;
use crate::hypervisor::{
    Accel, Boot, DiskFormat, DiskSource, DiskSpec, Hypervisor, HypervisorConfig, NicSpec, RunState,
    VmSpec,
};
use crate::net::Network;
use crate::volumes::Volumes;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("plasmavmc worker config: {0}")]
    Config(String),
    #[error("plasmavmc worker: {0}")]
    Runtime(String),
}

pub struct Running {
    pub url: String,
    pub name: String,
    pub readiness: uc_runtime::http::Readiness,
    pub task: tokio::task::JoinHandle<()>,
}

/// Where the agent finds the node's own services when the config does not say.
pub struct Defaults {
    pub control_plane_url: String,
    pub prismnet_url: Option<String>,
    pub coronafs_url: Option<String>,
}

/// How long a NIC may take to become active on this host.
const PORT_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How a VM's NICs get their taps on this worker.
#[derive(Debug, Clone, Copy)]
enum NicBinding {
    /// The ports are bound to this host (a start).
    Bind,
    /// Each port's second tap next to the source's (an incoming live migration).
    MigrationTarget,
}
const CONSOLE_MAX: usize = 1024 * 1024;
/// How often every VM's serial log is checked against `console_log_max_bytes` (a log may
/// exceed the cap by what its guest writes in this time).
const CONSOLE_TRIM_EVERY: Duration = Duration::from_secs(2);
/// The smallest console cap accepted (0 aside, which means none).
const CONSOLE_LOG_MIN_BYTES: u64 = 4096;

struct Agent {
    name: String,
    host: String,
    cp: PlasmavmcClient,
    hv: Arc<Hypervisor>,
    net: Option<Network>,
    volumes: Option<Volumes>,
    accel: Accel,
    data_dir: PathBuf,
    migration_address: String,
    wake: tokio::sync::Notify,
    /// What each VM was last observed as (sent with every heartbeat).
    observed: Mutex<HashMap<String, VmReport>>,
    /// VMs with a convergence step in flight.
    busy: Mutex<HashSet<String>>,
    /// VMs in a live migration (either side): convergence leaves them alone.
    migrating: Mutex<HashSet<String>>,
    /// Reboot sequence numbers already applied.
    reboots: Mutex<HashMap<String, u64>>,
    /// Running VMs not assigned to this worker, already warned about.
    strays: Mutex<HashSet<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

/// Host capacity: CPUs (×4: tiny VMs share well) and 80% of memory.
fn host_capacity() -> (u32, u64) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .unwrap_or(1024 * 1024);
    (cpus * 4, mem_kib / 1024 * 8 / 10)
}

pub async fn start(
    ctx: &NodeContext,
    config: WorkerConfig,
    defaults: Defaults,
    shutdown: Shutdown,
) -> Result<Running, StartError> {
    let name = config.name.clone().unwrap_or_else(|| ctx.node_name.clone());
    crate::service::check_name("worker", &name).map_err(|e| StartError::Config(e.to_string()))?;
    if config.heartbeat_secs == 0 || config.resync_secs == 0 {
        return Err(StartError::Config(
            "heartbeat_secs and resync_secs must be at least 1".into(),
        ));
    }
    if config.console_log_max_bytes != 0 && config.console_log_max_bytes < CONSOLE_LOG_MIN_BYTES {
        return Err(StartError::Config(format!(
            "console_log_max_bytes must be 0 (no cap) or at least {CONSOLE_LOG_MIN_BYTES}"
        )));
    }
    let options = ClientOptions {
        ca_file: ctx.trusted_ca_file().map(ToOwned::to_owned),
        ..Default::default()
    };
    let cp_url = config
        .control_plane_url
        .clone()
        .unwrap_or(defaults.control_plane_url);
    let cp = PlasmavmcClient::new(
        &cp_url,
        ClientOptions {
            token: Some(ctx.service_token.clone()),
            ..options.clone()
        },
    )
    .map_err(|e| StartError::Config(format!("control plane url: {e}")))?;
    let prismnet_url = match &config.prismnet_url {
        Some(u) => non_empty(Some(u.clone())),
        None => defaults.prismnet_url,
    };
    let coronafs_url = match &config.coronafs_url {
        Some(u) => non_empty(Some(u.clone())),
        None => defaults.coronafs_url,
    };
    let net = prismnet_url
        .map(|u| Network::new(&u, ctx.service_token.clone(), options.clone()))
        .transpose()
        .map_err(|e| StartError::Config(format!("prismnet url: {e}")))?;
    let volumes = coronafs_url
        .map(|u| Volumes::new(&u, ctx.service_token.clone(), options.clone()))
        .transpose()
        .map_err(|e| StartError::Config(format!("coronafs url: {e}")))?;

    let data_dir = ctx.component_dir("plasmavmc-worker");
    // QMP socket paths must stay short (108 bytes): VMs live in a short `run` subdirectory.
    let hv = Hypervisor::new(HypervisorConfig {
        console_log_max_bytes: config.console_log_max_bytes,
        ..HypervisorConfig::new(data_dir.join("run"))
    })
    .map_err(|e| StartError::Runtime(format!("hypervisor: {e}")))?;
    let hv = Arc::new(hv);
    let adopted = hv
        .adopt_all()
        .await
        .map_err(|e| StartError::Runtime(format!("adopting running VMs: {e}")))?;
    if !adopted.adopted.is_empty() || !adopted.gone.is_empty() {
        tracing::info!(adopted = ?adopted.adopted, gone = ?adopted.gone, unreachable = ?adopted.unreachable, "found VMs of a previous agent");
    }
    let accel = hv
        .probe_accel(config.accel, None)
        .await
        .map_err(|e| StartError::Runtime(format!("accelerator: {e}")))?;
    if accel == Accel::Tcg {
        tracing::warn!("VMs run with software emulation (TCG): slow; KVM is not usable here");
    }
    let (cpus, mem) = host_capacity();
    let migration_address = config
        .migration_address
        .clone()
        .unwrap_or_else(|| ctx.bind.to_string());

    let agent = Arc::new(Agent {
        host: config
            .prismnet_host
            .clone()
            .unwrap_or_else(|| ctx.node_name.clone()),
        name: name.clone(),
        cp,
        hv,
        net,
        volumes,
        accel,
        data_dir,
        migration_address: migration_address.clone(),
        wake: tokio::sync::Notify::new(),
        observed: Mutex::new(HashMap::new()),
        busy: Mutex::new(HashSet::new()),
        migrating: Mutex::new(HashSet::new()),
        reboots: Mutex::new(HashMap::new()),
        strays: Mutex::new(HashSet::new()),
    });

    let server = HttpServer::new("plasmavmc-worker", ctx.http.clone(), ctx.auth.clone())
        .api(agent_routes(agent.clone()))
        .bind(ctx.listen(config.port))
        .await
        .map_err(|e| StartError::Runtime(e.to_string()))?;
    let url = config
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("{}://{}", ctx.scheme(), server.local_addr()));
    let readiness = server.readiness();
    readiness.set_ready();
    let registration = RegisterWorker {
        name: name.clone(),
        url: url.clone(),
        host: agent.host.clone(),
        vcpus: config.vcpus.unwrap_or(cpus),
        memory_mib: config.memory_mib.unwrap_or(mem),
        accel: accel.as_str().into(),
        migration_address,
    };
    let run = {
        let agent = agent.clone();
        let shutdown = shutdown.clone();
        let heartbeat = Duration::from_secs(config.heartbeat_secs);
        let resync = Duration::from_secs(config.resync_secs);
        async move {
            agent
                .run(registration, heartbeat.min(resync), shutdown)
                .await
        }
    };
    // Console logs are capped whether anyone reads them or not.
    let trim = {
        let hv = agent.hv.clone();
        let shutdown = shutdown.clone();
        async move {
            shutdown
                .every(CONSOLE_TRIM_EVERY, || trim_consoles(hv.clone()))
                .await
        }
    };
    let task = tokio::spawn(async move {
        tokio::join!(server.serve(shutdown), run, trim);
    });
    Ok(Running {
        url,
        name,
        readiness,
        task,
    })
}

/// One pass of the console cap over every VM in the run dir (blocking file I/O: off the
/// runtime's threads).
async fn trim_consoles(hv: Arc<Hypervisor>) {
    match tokio::task::spawn_blocking(move || hv.trim_serial_logs()).await {
        Ok(Ok(trimmed)) => {
            for (vm, dropped) in trimmed {
                tracing::debug!(vm, dropped, "serial console log trimmed to its cap");
            }
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot trim serial console logs"),
        Err(e) => tracing::warn!(error = %e, "serial console trim task failed"),
    }
}

impl Agent {
    async fn run(
        self: Arc<Self>,
        registration: RegisterWorker,
        period: Duration,
        shutdown: Shutdown,
    ) {
        // Register (the control plane may come up after us).
        loop {
            match self.cp.register_worker(&registration).await {
                Ok(_) => {
                    tracing::info!(worker = %self.name, accel = %registration.accel, "registered with the control plane");
                    break;
                }
                Err(e) => tracing::debug!(error = %e, "cannot register yet; retrying"),
            }
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        loop {
            let reports: Vec<VmReport> = lock(&self.observed).values().cloned().collect();
            match self
                .cp
                .heartbeat(
                    &self.name,
                    &Heartbeat {
                        vms: reports.clone(),
                    },
                )
                .await
            {
                Ok(assignments) => {
                    // Reports of VMs that were deleted are done once sent.
                    lock(&self.observed).retain(|_, r| r.state != VmState::Deleted);
                    self.dispatch(assignments);
                }
                Err(e) if e.status() == Some(404) => {
                    // Forgotten (e.g. removed by the operator while we were down): register again.
                    let _ = self.cp.register_worker(&registration).await;
                }
                Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
            }
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(period) => {}
            }
        }
    }

    fn report(&self, vm_id: &str, state: VmState, error: Option<String>) {
        let reboot_seq = lock(&self.reboots).get(vm_id).copied().unwrap_or(0);
        let changed = {
            let mut observed = lock(&self.observed);
            let new = VmReport {
                id: vm_id.to_owned(),
                state,
                error,
                reboot_seq,
            };
            let changed = observed.get(vm_id) != Some(&new);
            observed.insert(vm_id.to_owned(), new);
            changed
        };
        if changed {
            self.wake.notify_one();
        }
    }

    fn dispatch(self: &Arc<Self>, assignments: Vec<Assignment>) {
        // A VM running here that the control plane does not assign to us (e.g. its record
        // was removed while this agent was down) is left alone: never stop what we are not
        // told to. Said once per VM.
        let assigned: HashSet<&str> = assignments.iter().map(|a| a.vm.id.as_str()).collect();
        let migrating = lock(&self.migrating).clone();
        for id in self.hv.running() {
            if !assigned.contains(id.as_str())
                && !migrating.contains(&id)
                && lock(&self.strays).insert(id.clone())
            {
                tracing::warn!(vm = %id, "a VM runs here that is not assigned to this worker; leaving it alone");
            }
        }
        for a in assignments {
            let id = a.vm.id.clone();
            if lock(&self.migrating).contains(&id) || a.vm.migrating_to.is_some() {
                continue;
            }
            if !lock(&self.busy).insert(id.clone()) {
                continue;
            }
            let me = self.clone();
            tokio::spawn(async move {
                me.converge(&a).await;
                lock(&me.busy).remove(&a.vm.id);
            });
        }
    }

    async fn is_running(&self, vm_id: &str) -> bool {
        match self.hv.status(vm_id).await {
            Ok(s) => !matches!(s.state, RunState::Stopped | RunState::Migrated),
            Err(_) => false,
        }
    }

    async fn converge(&self, a: &Assignment) {
        let id = a.vm.id.as_str();
        let running = self.is_running(id).await;
        match a.vm.desired {
            PowerState::Deleted => {
                if running && let Err(e) = self.hv.kill(id).await {
                    self.report(id, VmState::Error, Some(format!("cannot stop QEMU: {e}")));
                    return;
                }
                self.release(a).await;
                if let Err(e) = self.hv.remove(id).await {
                    tracing::warn!(vm = id, error = %e, "cannot remove VM run dir");
                }
                let _ = tokio::fs::remove_dir_all(self.seed_dir(id)).await;
                lock(&self.reboots).remove(id);
                self.report(id, VmState::Deleted, None);
            }
            PowerState::Stopped => {
                if running {
                    self.report(id, VmState::Stopping, None);
                    match self
                        .hv
                        .shutdown(id, Duration::from_secs(a.stop_timeout_secs))
                        .await
                    {
                        Ok(outcome) => tracing::info!(vm = id, ?outcome, "VM stopped"),
                        Err(e) => {
                            self.report(id, VmState::Error, Some(format!("stop failed: {e}")));
                            return;
                        }
                    }
                }
                let already = lock(&self.observed)
                    .get(id)
                    .is_some_and(|r| r.state == VmState::Stopped);
                if !already {
                    self.release(a).await;
                }
                self.report(id, VmState::Stopped, None);
            }
            PowerState::Running => {
                if running {
                    let applied = *lock(&self.reboots)
                        .entry(id.to_owned())
                        .or_insert(a.reboot_applied);
                    if a.vm.reboot_seq > applied {
                        if let Err(e) = self.hv.reboot(id).await {
                            tracing::warn!(vm = id, error = %e, "reboot failed");
                        }
                        lock(&self.reboots).insert(id.to_owned(), a.vm.reboot_seq);
                    }
                    self.report(id, VmState::Running, None);
                    return;
                }
                // A failed start is retried only when the owner asks again (start clears
                // the error), not in a loop.
                if a.vm.state == VmState::Error && a.vm.error.is_some() {
                    self.report(id, VmState::Error, a.vm.error.clone());
                    return;
                }
                self.report(id, VmState::Starting, None);
                match self.launch(a).await {
                    Ok(()) => {
                        lock(&self.reboots).insert(id.to_owned(), a.vm.reboot_seq);
                        self.report(id, VmState::Running, None);
                    }
                    Err(e) => {
                        tracing::warn!(vm = id, error = %e, "VM start failed");
                        self.release(a).await;
                        self.report(id, VmState::Error, Some(e));
                    }
                }
            }
        }
    }

    fn seed_dir(&self, vm_id: &str) -> PathBuf {
        self.data_dir.join("seeds").join(vm_id)
    }

    /// Detaches the VM's volumes from this worker and unbinds its ports from this host.
    async fn release(&self, a: &Assignment) {
        self.detach_volumes(&a.vm).await;
        if let Some(net) = &self.net {
            for nic in &a.vm.nics {
                if let Err(e) = net.unbind(&nic.port_id, &self.host).await {
                    tracing::warn!(vm = %a.vm.id, port = %nic.port_id, error = %e, "unbind failed");
                }
            }
        }
    }

    async fn detach_volumes(&self, vm: &Vm) {
        if let Some(volumes) = &self.volumes {
            for v in &vm.volumes {
                if let Err(e) = volumes.detach(&v.volume_id, &self.name).await
                    && e.status() != Some(404)
                {
                    tracing::warn!(vm = %vm.id, volume = %v.volume_id, error = %e, "detach failed");
                }
            }
        }
    }

    /// The destination's side of a failed migration: its volume attachments and its second
    /// taps go; the source keeps the VM, its binding and its taps.
    async fn release_incoming(&self, vm: &Vm) {
        self.detach_volumes(vm).await;
        if let Some(net) = &self.net {
            for nic in &vm.nics {
                if let Err(e) = net.cancel_migration(&nic.port_id).await {
                    tracing::warn!(vm = %vm.id, port = %nic.port_id, error = %e, "cannot drop the migration binding");
                }
            }
        }
    }

    /// A NIC's tap on this host: the port bound here, or (for an incoming migration) the
    /// port's second tap next to the source's.
    async fn nic_tap(&self, port_id: &str, nics: NicBinding) -> Result<String, String> {
        let net = self
            .net
            .as_ref()
            .ok_or("the VM has NICs but this worker has no prismnet")?;
        match nics {
            NicBinding::Bind => {
                net.bind_tap(port_id, &self.host)
                    .await
                    .map_err(|e| format!("bind port {port_id}: {e}"))?;
                let port = net
                    .wait_active(port_id, &self.host, PORT_READY_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(port.device.unwrap_or_default())
            }
            NicBinding::MigrationTarget => {
                net.bind_migration_target(port_id, &self.host)
                    .await
                    .map_err(|e| format!("migration tap for port {port_id}: {e}"))?;
                net.wait_migration_target(port_id, &self.host, PORT_READY_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Builds the VM's spec: volumes attached, NICs bound, seed written, boot files local.
    async fn spec(&self, a: &Assignment, nic_binding: NicBinding) -> Result<VmSpec, String> {
        let vm = &a.vm;
        let mut disks = Vec::new();
        if !vm.volumes.is_empty() {
            let volumes = self
                .volumes
                .as_ref()
                .ok_or("the VM has volumes but this worker has no coronafs")?;
            for (i, v) in vm.volumes.iter().enumerate() {
                let info = volumes
                    .attach(&v.volume_id, &self.name)
                    .await
                    .map_err(|e| format!("attach volume {}: {e}", v.volume_id))?;
                let source = match (info.transport, &info.nbd_url, &info.local_path) {
                    (coronafs::api::Transport::Local, _, Some(path)) => DiskSource::File {
                        path: PathBuf::from(path),
                        format: match info.format {
                            coronafs::api::VolumeFormat::Qcow2 => DiskFormat::Qcow2,
                            coronafs::api::VolumeFormat::Raw => DiskFormat::Raw,
                        },
                    },
                    (_, Some(url), _) => DiskSource::Nbd { url: url.clone() },
                    _ => return Err(format!("volume {}: no NBD url or path", v.volume_id)),
                };
                disks.push(DiskSpec {
                    id: if v.role == "root" {
                        "root".into()
                    } else {
                        format!("data{i}")
                    },
                    source,
                    readonly: false,
                    serial: Some(v.volume_id.chars().take(20).collect()),
                });
            }
        }
        let mut nics = Vec::new();
        let mut network_config = String::from("version: 2\nethernets:\n");
        for (i, nic) in vm.nics.iter().enumerate() {
            let tap = self.nic_tap(&nic.port_id, nic_binding).await?;
            nics.push(NicSpec {
                tap,
                mac: nic.mac.clone(),
            });
            network_config.push_str(&format!(
                "  nic{i}:\n    match:\n      macaddress: \"{}\"\n    dhcp4: true\n",
                nic.mac
            ));
        }
        let seed_dir = self.seed_dir(&vm.id);
        tokio::fs::create_dir_all(&seed_dir)
            .await
            .map_err(|e| format!("seed dir: {e}"))?;
        let meta = format!("instance-id: {}\nlocal-hostname: {}\n", vm.id, vm.name);
        let user_data = a
            .user_data
            .clone()
            .unwrap_or_else(|| "#cloud-config\n".into());
        let net_cfg = (!vm.nics.is_empty()).then_some(network_config);
        let seed = {
            let dir = seed_dir.clone();
            tokio::task::spawn_blocking(move || {
                crate::guest::nocloud_seed(&dir, &meta, &user_data, net_cfg.as_deref())
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("NoCloud seed: {e}"))?
        };
        let boot = match a.image.kind {
            ImageKind::Disk => Boot::Disk,
            ImageKind::Kernel => {
                let kernel = self
                    .fetch(&a.image, "kernel", a.image.kernel.as_deref().unwrap_or(""))
                    .await?;
                let initrd = match &a.image.initrd {
                    Some(loc) => Some(self.fetch(&a.image, "initrd", loc).await?),
                    None => None,
                };
                let mut cmdline = a.image.cmdline.clone().unwrap_or_default();
                if !cmdline
                    .split_whitespace()
                    .any(|w| w.starts_with("console="))
                {
                    cmdline = format!("console=ttyS0 {cmdline}").trim().to_owned();
                }
                Boot::Kernel {
                    kernel,
                    initrd,
                    cmdline,
                }
            }
        };
        Ok(VmSpec {
            vm_id: vm.id.clone(),
            name: vm.name.clone(),
            vcpus: vm.vcpus,
            memory_mib: vm.memory_mib,
            disks,
            nics,
            boot,
            seed: Some(seed),
            accel: self.accel,
        })
    }

    async fn launch(&self, a: &Assignment) -> Result<(), String> {
        let spec = self.spec(a, NicBinding::Bind).await?;
        self.hv
            .start(&spec)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// A boot file on this host: a path as is; a URL downloaded once into the image cache.
    async fn fetch(&self, image: &Image, what: &str, location: &str) -> Result<PathBuf, String> {
        if !(location.starts_with("http://") || location.starts_with("https://")) {
            let p = PathBuf::from(location);
            if !p.is_file() {
                return Err(format!(
                    "image {} {what}: {location} is not on this worker",
                    image.id
                ));
            }
            return Ok(p);
        }
        let dir = self.data_dir.join("images").join(&image.id);
        let path = dir.join(what);
        if path.is_file() {
            return Ok(path);
        }
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| e.to_string())?;
        let bytes = reqwest::get(location)
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("download {location}: {e}"))?
            .bytes()
            .await
            .map_err(|e| format!("download {location}: {e}"))?;
        let tmp = dir.join(format!(".{what}.part"));
        tokio::fs::write(&tmp, &bytes)
            .await
            .map_err(|e| e.to_string())?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| e.to_string())?;
        Ok(path)
    }

    // ---- live migration (driven by the control plane)

    async fn incoming(&self, a: &Assignment) -> Result<String, String> {
        let id = &a.vm.id;
        lock(&self.migrating).insert(id.clone());
        let mut spec = self.spec(a, NicBinding::MigrationTarget).await?;
        spec.accel = self.accel;
        // A free port for QEMU's migration listener.
        let listener = std::net::TcpListener::bind((self.migration_address.as_str(), 0))
            .map_err(|e| format!("migration listener: {e}"))?;
        let addr: SocketAddr = listener.local_addr().map_err(|e| e.to_string())?;
        drop(listener);
        self.hv
            .start_incoming(&spec, addr)
            .await
            .map_err(|e| format!("incoming QEMU: {e}"))?;
        Ok(format!("tcp:{addr}"))
    }

    async fn migrate_out(&self, vm_id: &str, uri: &str) -> Result<(), String> {
        lock(&self.migrating).insert(vm_id.to_owned());
        let result = self
            .hv
            .migrate(vm_id, uri, Duration::from_secs(600))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        if result.is_err() {
            lock(&self.migrating).remove(vm_id);
        }
        result
    }
}

fn operator(caller: &Caller) -> Result<(), ApiError> {
    if caller.admin {
        Ok(())
    } else {
        Err(ApiError::permission_denied(
            "the worker agent answers the control plane only",
        ))
    }
}

type A = State<Arc<Agent>>;

async fn wake(State(agent): A, caller: Caller) -> Result<StatusCode, ApiError> {
    operator(&caller)?;
    agent.wake.notify_one();
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
struct ConsoleQuery {
    #[serde(default)]
    offset: u64,
}

async fn console(
    State(agent): A,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<ConsoleQuery>,
) -> Result<Json<ConsoleLog>, ApiError> {
    operator(&caller)?;
    let chunk = agent
        .hv
        .serial_log(&id, q.offset, CONSOLE_MAX)
        .map_err(|e| match e {
            crate::hypervisor::HypervisorError::NotFound(_) => {
                ApiError::not_found(format!("no console for VM {id} on this worker"))
            }
            e => ApiError::internal(e.to_string()),
        })?;
    Ok(Json(ConsoleLog {
        vm_id: id,
        // Past the requested offset when that part was trimmed off (the log's cap).
        offset: chunk.offset,
        next_offset: chunk.next_offset,
        data: String::from_utf8_lossy(&chunk.data).into_owned(),
    }))
}

async fn incoming(
    State(agent): A,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
    Json(req): Json<IncomingRequest>,
) -> Result<Json<IncomingReady>, ApiError> {
    operator(&caller)?;
    if req.assignment.vm.id != id {
        return Err(ApiError::invalid_argument("VM id mismatch"));
    }
    match agent.incoming(&req.assignment).await {
        Ok(uri) => Ok(Json(IncomingReady { uri })),
        Err(e) => {
            let _ = agent.hv.kill(&id).await;
            let _ = agent.hv.remove(&id).await;
            agent.release_incoming(&req.assignment.vm).await;
            lock(&agent.migrating).remove(&id);
            Err(ApiError::unavailable(e))
        }
    }
}

async fn migrate_out(
    State(agent): A,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
    Json(req): Json<MigrateOut>,
) -> Result<Json<serde_json::Value>, ApiError> {
    operator(&caller)?;
    agent
        .migrate_out(&id, &req.uri)
        .await
        .map_err(ApiError::unavailable)?;
    Ok(Json(serde_json::json!({"status": "completed"})))
}

/// Destination: the VM is ours now.
async fn migration_finish(
    State(agent): A,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    operator(&caller)?;
    lock(&agent.migrating).remove(&id);
    agent.report(&id, VmState::Running, None);
    Ok(Json(serde_json::json!({"status": "running"})))
}

/// Destination: the migration failed; drop the waiting QEMU.
async fn migration_abort(
    State(agent): A,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
) -> Result<StatusCode, ApiError> {
    operator(&caller)?;
    if lock(&agent.migrating).remove(&id) {
        let _ = agent.hv.kill(&id).await;
        let _ = agent.hv.remove(&id).await;
        if let Ok(vm) = agent.cp.get_vm(&id).await {
            agent.release_incoming(&vm).await;
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Source: the VM runs elsewhere now; drop the remains (QEMU already quit after migrating).
async fn migration_cleanup(
    State(agent): A,
    caller: Caller,
    UrlPath(id): UrlPath<String>,
) -> Result<StatusCode, ApiError> {
    operator(&caller)?;
    if agent.is_running(&id).await {
        let _ = agent.hv.kill(&id).await;
    }
    let _ = agent.hv.remove(&id).await;
    if let Some(volumes) = &agent.volumes
        && let Ok(vm) = agent.cp.get_vm(&id).await
    {
        for v in &vm.volumes {
            let _ = volumes.detach(&v.volume_id, &agent.name).await;
        }
    }
    let _ = tokio::fs::remove_dir_all(agent.seed_dir(&id)).await;
    lock(&agent.migrating).remove(&id);
    lock(&agent.observed).remove(&id);
    Ok(StatusCode::NO_CONTENT)
}

fn agent_routes(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/wake", post(wake))
        .route("/v1/vms/{id}/console", get(console))
        .route("/v1/vms/{id}/migration/incoming", post(incoming))
        .route("/v1/vms/{id}/migration/out", post(migrate_out))
        .route("/v1/vms/{id}/migration/finish", post(migration_finish))
        .route("/v1/vms/{id}/migration/abort", post(migration_abort))
        .route("/v1/vms/{id}/migration/cleanup", post(migration_cleanup))
        .with_state(agent)
}

/// Exposed for the CLI/tests: the path a worker keeps a VM's serial log at.
pub fn serial_log_path(worker_data_dir: &Path, vm_id: &str) -> PathBuf {
    worker_data_dir.join("run").join(vm_id).join("serial.log")
}
