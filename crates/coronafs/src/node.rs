//! The node service's core: volumes as files under `data_dir/coronafs`, made with qemu-img,
//! and one supervised qemu-nbd export per exported volume.
//!
//! On disk (`<dir>` = `data_dir/coronafs`):
//! - `volumes/<id>.<raw|qcow2>`: the volume; its presence is the volume's existence (a file
//!   appears only by rename once complete, so a crash leaves no half volume).
//! - `snapshots/<volume id>/<snapshot id>.<fmt>`: point-in-time copies.
//! - `exports/<id>.json`: the exports this node must serve; written before qemu-nbd starts,
//!   removed after it stopped, so a restarted node knows every process it may have left.
//! - `tmp/`: work in progress, emptied at start.
//! - `logs/<id>.log`: qemu-nbd's output.
//!
//! qemu-nbd runs in its own process group, so a crash (or kill -9) of the node process leaves
//! exports serving; the restarted node adopts each process whose command line is exactly the
//! one it would start, and stops any other qemu-nbd serving a file under `volumes/`.
//! A graceful shutdown stops the exports (they come back at the next start).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, watch};

use crate::api::{
    NodeCreateVolume, NodeExport, NodeSnapshot, NodeSource, NodeVolume, VolumeFormat,
};
use crate::error::{CoronafsError, Result};
use crate::qemu::{self, NbdSpec};

/// What the node needs to know from its config.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub name: String,
    pub dir: PathBuf,
    pub nbd_bind: IpAddr,
    pub nbd_host: String,
    pub port_range: Option<(u16, u16)>,
    pub tls_dir: Option<PathBuf>,
    pub cache: String,
    pub aio: String,
    pub max_volume_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct ExportRecord {
    port: u16,
    shared: u32,
}

struct ExportHandle {
    record: ExportRecord,
    pid: watch::Receiver<Option<u32>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

pub struct NodeService {
    s: NodeSettings,
    exports: Mutex<HashMap<String, ExportHandle>>,
    /// One operation at a time per volume.
    locks: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

/// Volume and snapshot ids are path components: keep them to a safe alphabet.
pub fn check_id(what: &str, id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(CoronafsError::Invalid(format!(
            "{what} id `{id}`: 1-64 lowercase letters, digits or '-'"
        )))
    }
}

fn ext(format: VolumeFormat) -> &'static str {
    format.as_str()
}

/// Writes a file atomically (temp, fsync, rename, fsync dir), so a crash leaves the old or the
/// new content, never a torn one.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The command line of a live process, split at NULs.
fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None;
    }
    Some(
        raw.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

/// qemu-nbd processes (pid, args after argv[0]) on this host.
fn qemu_nbd_processes() -> Vec<(u32, Vec<String>)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let argv = cmdline(pid)?;
            let (first, rest) = argv.split_first()?;
            (Path::new(first).file_name()? == "qemu-nbd").then(|| (pid, rest.to_vec()))
        })
        .collect()
}

fn pid_alive(pid: u32) -> bool {
    // A zombie still has /proc/<pid> but no cmdline.
    cmdline(pid).is_some()
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// SIGTERM, then SIGKILL after a grace period; returns when the process is gone.
async fn stop_pid(pid: u32) {
    signal(pid, nix::sys::signal::Signal::SIGTERM);
    for _ in 0..100 {
        if !pid_alive(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    while pid_alive(pid) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl NodeService {
    /// Prepares the directories and clears leftovers of interrupted work.
    pub fn new(mut s: NodeSettings) -> Result<Arc<Self>> {
        for sub in ["volumes", "snapshots", "exports", "tmp", "logs"] {
            std::fs::create_dir_all(s.dir.join(sub))?;
        }
        let direct = supports_o_direct(&s.dir.join("tmp"));
        if s.cache == "auto" {
            s.cache = if direct { "none" } else { "writeback" }.into();
        }
        if s.aio == "auto" {
            s.aio = if matches!(s.cache.as_str(), "none" | "directsync") {
                "native"
            } else {
                "threads"
            }
            .into();
        }
        tracing::info!(cache = %s.cache, aio = %s.aio, "coronafs node: export I/O mode");
        // Work interrupted by a crash: never visible as a volume, so just remove it.
        for entry in std::fs::read_dir(s.dir.join("tmp"))? {
            let path = entry?.path();
            let _ = std::fs::remove_file(&path).or_else(|_| std::fs::remove_dir_all(&path));
        }
        Ok(Arc::new(Self {
            s,
            exports: Mutex::new(HashMap::new()),
            locks: std::sync::Mutex::new(HashMap::new()),
        }))
    }

    pub fn name(&self) -> &str {
        &self.s.name
    }

    pub fn nbd_host(&self) -> &str {
        &self.s.nbd_host
    }

    pub fn tls(&self) -> bool {
        self.s.tls_dir.is_some()
    }

    fn lock_for(&self, id: &str) -> Arc<Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    fn volume_path(&self, id: &str, format: VolumeFormat) -> PathBuf {
        self.s
            .dir
            .join("volumes")
            .join(format!("{id}.{}", ext(format)))
    }

    /// The volume's file and format, if it exists.
    fn find_volume(&self, id: &str) -> Option<(PathBuf, VolumeFormat)> {
        [VolumeFormat::Raw, VolumeFormat::Qcow2]
            .into_iter()
            .map(|f| (self.volume_path(id, f), f))
            .find(|(p, _)| p.exists())
    }

    fn export_record_path(&self, id: &str) -> PathBuf {
        self.s.dir.join("exports").join(format!("{id}.json"))
    }

    fn snapshot_dir(&self, volume_id: &str) -> PathBuf {
        self.s.dir.join("snapshots").join(volume_id)
    }

    fn find_snapshot(&self, snapshot_id: &str) -> Option<(PathBuf, VolumeFormat, String)> {
        let dirs = std::fs::read_dir(self.s.dir.join("snapshots")).ok()?;
        for dir in dirs.flatten() {
            for f in [VolumeFormat::Raw, VolumeFormat::Qcow2] {
                let p = dir.path().join(format!("{snapshot_id}.{}", ext(f)));
                if p.exists() {
                    let volume = dir.file_name().to_string_lossy().into_owned();
                    return Some((p, f, volume));
                }
            }
        }
        None
    }

    /// Free bytes on the volume filesystem.
    pub fn free_bytes(&self) -> u64 {
        nix::sys::statvfs::statvfs(&self.s.dir)
            .map(|v| v.blocks_available() * v.fragment_size())
            .unwrap_or(0)
    }

    fn spec(&self, id: &str, path: PathBuf, format: VolumeFormat, r: &ExportRecord) -> NbdSpec {
        NbdSpec {
            path,
            format,
            bind: self.s.nbd_bind.to_string(),
            port: r.port,
            export_name: id.to_owned(),
            shared: r.shared,
            cache: self.s.cache.clone(),
            aio: self.s.aio.clone(),
            tls_dir: self.s.tls_dir.clone(),
        }
    }

    fn export_view(&self, id: &str, h: &ExportHandle) -> NodeExport {
        NodeExport {
            host: self.s.nbd_host.clone(),
            port: h.record.port,
            export_name: id.to_owned(),
            shared: h.record.shared,
            tls: self.tls(),
            nbd_url: format!(
                "nbd://{}:{}/{id}",
                url_host(&self.s.nbd_host),
                h.record.port
            ),
            pid: *h.pid.borrow(),
        }
    }

    pub async fn get_volume(&self, id: &str) -> Result<NodeVolume> {
        check_id("volume", id)?;
        let (path, format) = self
            .find_volume(id)
            .ok_or_else(|| CoronafsError::NotFound(format!("no volume {id} on this node")))?;
        let info = qemu::info(&path).await?;
        let export = self
            .exports
            .lock()
            .await
            .get(id)
            .map(|h| self.export_view(id, h));
        Ok(NodeVolume {
            id: id.to_owned(),
            format,
            size_bytes: info.virtual_size,
            path: path.display().to_string(),
            export,
        })
    }

    /// Materializes a volume; the same request for an existing volume returns it.
    pub async fn create_volume(&self, id: &str, req: NodeCreateVolume) -> Result<NodeVolume> {
        check_id("volume", id)?;
        if let Some(size) = req.size_bytes {
            check_size(size, self.s.max_volume_bytes)?;
        }
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        if let Some((_, format)) = self.find_volume(id) {
            if format != req.format {
                return Err(CoronafsError::Conflict(format!(
                    "volume {id} exists here as {format}"
                )));
            }
            return self.get_volume(id).await;
        }
        let tmp = self
            .s
            .dir
            .join("tmp")
            .join(format!("{id}.{}", ext(req.format)));
        let download = self.s.dir.join("tmp").join(format!("{id}.download"));
        let result = self.materialize(&tmp, &download, &req).await;
        let _ = std::fs::remove_file(&download);
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let dst = self.volume_path(id, req.format);
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &dst)?;
        sync_dir(&self.s.dir.join("volumes"))?;
        tracing::info!(volume = id, format = %req.format, "volume materialized");
        drop(_guard);
        self.get_volume(id).await
    }

    async fn materialize(&self, tmp: &Path, download: &Path, req: &NodeCreateVolume) -> Result<()> {
        match &req.source {
            NodeSource::Blank => {
                let size = req.size_bytes.ok_or_else(|| {
                    CoronafsError::Invalid("size_bytes is required for a blank volume".into())
                })?;
                qemu::create(tmp, req.format, size).await?;
                return Ok(());
            }
            NodeSource::Image { location } => {
                let src = if location.starts_with("http://") || location.starts_with("https://") {
                    fetch(location, download).await?;
                    download.to_path_buf()
                } else {
                    let p = PathBuf::from(location);
                    if !p.is_absolute() {
                        return Err(CoronafsError::Invalid(format!(
                            "image location `{location}`: an absolute path on the node or an http(s) URL"
                        )));
                    }
                    if !p.is_file() {
                        return Err(CoronafsError::Invalid(format!(
                            "image `{location}` does not exist on node {}",
                            self.s.name
                        )));
                    }
                    p
                };
                // Probe the format rather than trust a name: qemu-img reads what it is.
                let info = qemu::info(&src).await?;
                qemu::convert(&src, Some(&info.format), tmp, req.format).await?;
            }
            NodeSource::Snapshot { snapshot_id } => {
                check_id("snapshot", snapshot_id)?;
                let (src, format, _) = self.find_snapshot(snapshot_id).ok_or_else(|| {
                    CoronafsError::NotFound(format!("no snapshot {snapshot_id} on this node"))
                })?;
                qemu::convert(&src, Some(format.as_str()), tmp, req.format).await?;
            }
        }
        let current = qemu::info(tmp).await?.virtual_size;
        if let Some(size) = req.size_bytes {
            if size < current {
                return Err(CoronafsError::Invalid(format!(
                    "size_bytes {size} is smaller than the source ({current} bytes)"
                )));
            }
            if size > current {
                qemu::resize(tmp, req.format, size).await?;
            }
        }
        Ok(())
    }

    /// Removes a volume with its export and snapshots; a missing volume is not an error.
    pub async fn delete_volume(&self, id: &str) -> Result<()> {
        check_id("volume", id)?;
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        self.stop_export(id).await?;
        if let Some((path, _)) = self.find_volume(id) {
            std::fs::remove_file(&path)?;
        }
        let snaps = self.snapshot_dir(id);
        if snaps.exists() {
            std::fs::remove_dir_all(&snaps)?;
        }
        let _ = std::fs::remove_file(self.s.dir.join("logs").join(format!("{id}.log")));
        tracing::info!(volume = id, "volume deleted");
        Ok(())
    }

    /// Grows a volume. A running export is stopped for the resize and started again on the same
    /// port (qemu-nbd announces the size when a client connects).
    pub async fn resize_volume(&self, id: &str, size: u64) -> Result<NodeVolume> {
        check_id("volume", id)?;
        check_size(size, self.s.max_volume_bytes)?;
        let lock = self.lock_for(id);
        let guard = lock.lock().await;
        let (path, format) = self
            .find_volume(id)
            .ok_or_else(|| CoronafsError::NotFound(format!("no volume {id} on this node")))?;
        let current = qemu::info(&path).await?.virtual_size;
        if size < current {
            return Err(CoronafsError::Invalid(format!(
                "volumes only grow: {size} < current {current} bytes"
            )));
        }
        if size > current {
            let record = self.exports.lock().await.get(id).map(|h| h.record.clone());
            if record.is_some() {
                self.stop_process(id).await;
            }
            let resized = qemu::resize(&path, format, size).await;
            if let Some(record) = record {
                // Serve again whatever the resize did.
                self.start_process(id, record).await?;
            }
            resized?;
            tracing::info!(volume = id, size, "volume resized");
        }
        drop(guard);
        self.get_volume(id).await
    }

    /// A point-in-time copy of the volume (idempotent per snapshot id).
    pub async fn create_snapshot(
        &self,
        volume_id: &str,
        snapshot_id: &str,
    ) -> Result<NodeSnapshot> {
        check_id("volume", volume_id)?;
        check_id("snapshot", snapshot_id)?;
        let lock = self.lock_for(volume_id);
        let _guard = lock.lock().await;
        let (path, format) = self.find_volume(volume_id).ok_or_else(|| {
            CoronafsError::NotFound(format!("no volume {volume_id} on this node"))
        })?;
        let dir = self.snapshot_dir(volume_id);
        std::fs::create_dir_all(&dir)?;
        let dst = dir.join(format!("{snapshot_id}.{}", ext(format)));
        if !dst.exists() {
            let tmp = self
                .s
                .dir
                .join("tmp")
                .join(format!("snap-{snapshot_id}.{}", ext(format)));
            if let Err(e) = qemu::convert(&path, Some(format.as_str()), &tmp, format).await {
                let _ = std::fs::remove_file(&tmp);
                return Err(e.into());
            }
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &dst)?;
            sync_dir(&dir)?;
        }
        Ok(NodeSnapshot {
            id: snapshot_id.to_owned(),
            volume_id: volume_id.to_owned(),
            format,
            size_bytes: qemu::info(&dst).await?.virtual_size,
        })
    }

    pub async fn delete_snapshot(&self, volume_id: &str, snapshot_id: &str) -> Result<()> {
        check_id("volume", volume_id)?;
        check_id("snapshot", snapshot_id)?;
        for f in [VolumeFormat::Raw, VolumeFormat::Qcow2] {
            let p = self
                .snapshot_dir(volume_id)
                .join(format!("{snapshot_id}.{}", ext(f)));
            if p.exists() {
                std::fs::remove_file(p)?;
            }
        }
        Ok(())
    }

    /// Starts the volume's export, or confirms it (restarting it when `shared` changed).
    pub async fn ensure_export(&self, id: &str, shared: u32) -> Result<NodeExport> {
        check_id("volume", id)?;
        if !(1..=16).contains(&shared) {
            return Err(CoronafsError::Invalid("shared must be 1..=16".into()));
        }
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        if self.find_volume(id).is_none() {
            return Err(CoronafsError::NotFound(format!(
                "no volume {id} on this node"
            )));
        }
        {
            // Already serving as asked: confirm, do not touch the process.
            let exports = self.exports.lock().await;
            if let Some(h) = exports.get(id)
                && h.record.shared == shared
            {
                return Ok(self.export_view(id, h));
            }
        }
        let existing = self.exports.lock().await.get(id).map(|h| h.record.clone());
        let record = match existing {
            Some(r) => {
                self.stop_process(id).await;
                ExportRecord {
                    port: r.port,
                    shared,
                }
            }
            None => ExportRecord {
                port: self.allocate_port().await?,
                shared,
            },
        };
        self.start_process(id, record).await?;
        let exports = self.exports.lock().await;
        let h = exports
            .get(id)
            .ok_or_else(|| CoronafsError::Internal("export vanished".into()))?;
        Ok(self.export_view(id, h))
    }

    /// Stops the volume's export and forgets it (idempotent).
    pub async fn remove_export(&self, id: &str) -> Result<()> {
        check_id("volume", id)?;
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        self.stop_export(id).await
    }

    async fn stop_export(&self, id: &str) -> Result<()> {
        self.stop_process(id).await;
        match std::fs::remove_file(self.export_record_path(id)) {
            Ok(()) => {
                tracing::info!(volume = id, "export removed");
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Stops the supervised process (keeps the record).
    async fn stop_process(&self, id: &str) {
        let handle = self.exports.lock().await.remove(id);
        if let Some(h) = handle {
            let _ = h.stop.send(true);
            let _ = h.task.await;
        }
    }

    async fn allocate_port(&self) -> Result<u16> {
        let used: Vec<u16> = self
            .exports
            .lock()
            .await
            .values()
            .map(|h| h.record.port)
            .collect();
        let free = |port: u16| std::net::TcpListener::bind((self.s.nbd_bind, port)).ok();
        match self.s.port_range {
            Some((lo, hi)) => (lo..=hi)
                .find(|p| !used.contains(p) && free(*p).is_some())
                .ok_or_else(|| {
                    CoronafsError::Unavailable(format!("no free export port in {lo}-{hi}"))
                }),
            None => loop {
                let l = free(0).ok_or_else(|| {
                    CoronafsError::Unavailable(format!("cannot bind {}", self.s.nbd_bind))
                })?;
                let port = l.local_addr()?.port();
                if !used.contains(&port) {
                    return Ok(port);
                }
            },
        }
    }

    /// Persists the record, then starts (or adopts) qemu-nbd under a supervisor and waits until
    /// it accepts connections. If the recorded port is taken by someone else, moves to another.
    async fn start_process(&self, id: &str, mut record: ExportRecord) -> Result<()> {
        let (path, format) = self
            .find_volume(id)
            .ok_or_else(|| CoronafsError::NotFound(format!("no volume {id} on this node")))?;
        for attempt in 0..3 {
            let bytes =
                serde_json::to_vec(&record).map_err(|e| CoronafsError::Internal(e.to_string()))?;
            write_atomic(&self.export_record_path(id), &bytes)?;
            let spec = self.spec(id, path.clone(), format, &record);
            match self.spawn_supervised(id, spec, record.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < 2 => {
                    tracing::warn!(volume = id, port = record.port, error = %e, "export did not start; trying another port");
                    record.port = self.allocate_port().await?;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the last attempt returns")
    }

    async fn spawn_supervised(&self, id: &str, spec: NbdSpec, record: ExportRecord) -> Result<()> {
        let args = spec.args();
        // A process already serving exactly this (left by a crashed node process) is adopted;
        // one serving the same file differently is stopped.
        let path = spec.path.display().to_string();
        let mut adopted = None;
        for (pid, pargs) in qemu_nbd_processes() {
            if pargs.last() == Some(&path) {
                if pargs == args && adopted.is_none() {
                    adopted = Some(pid);
                } else {
                    tracing::warn!(
                        volume = id,
                        pid,
                        "stopping a stale qemu-nbd for this volume"
                    );
                    stop_pid(pid).await;
                }
            }
        }
        let log = self.s.dir.join("logs").join(format!("{id}.log"));
        let addr = SocketAddr::new(self.s.nbd_bind, spec.port);
        let (pid_tx, pid_rx) = watch::channel(None);
        let (stop_tx, stop_rx) = watch::channel(false);
        let first = match adopted {
            Some(pid) => {
                tracing::info!(volume = id, pid, port = spec.port, "adopted running export");
                Running::Adopted(pid)
            }
            None => {
                let child = spawn_qemu_nbd(&args, &log)?;
                let pid = child.id().unwrap_or(0);
                let mut child = child;
                if let Err(e) = wait_listening(addr, &mut child, &log).await {
                    let _ = child.kill().await;
                    return Err(e);
                }
                tracing::info!(volume = id, pid, port = spec.port, "export started");
                Running::Child(child)
            }
        };
        let task = tokio::spawn(supervise(
            id.to_owned(),
            args,
            log,
            addr,
            first,
            pid_tx,
            stop_rx,
        ));
        let mut pid = pid_rx.clone();
        // The supervisor publishes the pid as soon as it holds the process.
        let _ = tokio::time::timeout(Duration::from_secs(1), pid.wait_for(Option::is_some)).await;
        self.exports.lock().await.insert(
            id.to_owned(),
            ExportHandle {
                record,
                pid: pid_rx,
                stop: stop_tx,
                task,
            },
        );
        Ok(())
    }

    /// Brings back every recorded export (adopting processes that survived a crash) and stops
    /// qemu-nbd processes serving our volumes without a record.
    pub async fn restore(&self) -> Result<()> {
        let mut recorded = Vec::new();
        for entry in std::fs::read_dir(self.s.dir.join("exports"))? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(id) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
                continue;
            };
            let record: ExportRecord = match std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
            {
                Some(r) => r,
                None => {
                    tracing::warn!(file = %path.display(), "unreadable export record; removing");
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
            };
            if self.find_volume(&id).is_none() {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            recorded.push((id, record));
        }
        let volumes_dir = self.s.dir.join("volumes").display().to_string();
        for (pid, args) in qemu_nbd_processes() {
            let Some(file) = args.last() else { continue };
            if !file.starts_with(&format!("{volumes_dir}/")) {
                continue;
            }
            let id = Path::new(file)
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default();
            if !recorded.iter().any(|(r, _)| r == id) {
                tracing::warn!(pid, file, "stopping an unrecorded qemu-nbd");
                stop_pid(pid).await;
            }
        }
        for (id, record) in recorded {
            let lock = self.lock_for(&id);
            let _guard = lock.lock().await;
            if let Err(e) = self.start_process(&id, record).await {
                tracing::error!(volume = %id, error = %e, "cannot restore export");
            }
        }
        Ok(())
    }

    /// Stops every export process (records stay: the next start serves them again).
    pub async fn shutdown(&self) {
        let ids: Vec<String> = self.exports.lock().await.keys().cloned().collect();
        for id in ids {
            self.stop_process(&id).await;
        }
    }

    /// Volume ids present on this node.
    pub fn volume_ids(&self) -> Vec<String> {
        std::fs::read_dir(self.s.dir.join("volumes"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        e.path()
                            .file_stem()
                            .and_then(|s| s.to_str())
                            .map(str::to_owned)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Whether files in `dir` can be opened with O_DIRECT (not on tmpfs, for one), so exports can
/// bypass the page cache.
fn supports_o_direct(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join(".o_direct_probe");
    let ok = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
        .open(&probe)
        .is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

pub fn check_size(size: u64, max: u64) -> Result<()> {
    if size == 0 || !size.is_multiple_of(512) {
        return Err(CoronafsError::Invalid(format!(
            "size_bytes {size}: a positive multiple of 512"
        )));
    }
    if size > max {
        return Err(CoronafsError::Invalid(format!(
            "size_bytes {size} exceeds the limit of {max} bytes"
        )));
    }
    Ok(())
}

/// IPv6 literals need brackets in URLs.
pub fn url_host(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

enum Running {
    Child(Child),
    Adopted(u32),
}

fn spawn_qemu_nbd(args: &[String], log: &Path) -> Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut cmd = Command::new("qemu-nbd");
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        // Its own process group: a signal to the node's group (Ctrl-C, a kill of the node)
        // does not take exports down with it.
        .process_group(0)
        .kill_on_drop(false);
    cmd.spawn()
        .map_err(|e| CoronafsError::Internal(format!("cannot start qemu-nbd: {e}")))
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// Waits until the export accepts connections (or the process exits).
async fn wait_listening(addr: SocketAddr, child: &mut Child, log: &Path) -> Result<()> {
    for _ in 0..200 {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(CoronafsError::Unavailable(format!(
                "qemu-nbd exited ({status}): {}",
                log_tail(log)
            )));
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(CoronafsError::Unavailable(format!(
        "qemu-nbd did not listen on {addr}: {}",
        log_tail(log)
    )))
}

/// Resolves once a stop was requested (the watch guard must not live across an await).
/// A dropped sender is not a stop request: only an explicit stop ends an export.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Keeps one export's qemu-nbd running until told to stop: restarts it when it exits.
async fn supervise(
    id: String,
    args: Vec<String>,
    log: PathBuf,
    addr: SocketAddr,
    first: Running,
    pid: watch::Sender<Option<u32>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut running = first;
    loop {
        match running {
            Running::Child(mut child) => {
                let _ = pid.send(child.id());
                tokio::select! {
                    status = child.wait() => {
                        tracing::warn!(volume = %id, ?status, "qemu-nbd exited; restarting");
                    }
                    _ = stopped(&mut stop) => {
                        if let Some(p) = child.id() {
                            stop_pid(p).await;
                        }
                        let _ = child.wait().await;
                        let _ = pid.send(None);
                        return;
                    }
                }
            }
            Running::Adopted(p) => {
                let _ = pid.send(Some(p));
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {
                            if !pid_alive(p) {
                                tracing::warn!(volume = %id, pid = p, "adopted qemu-nbd exited; restarting");
                                break;
                            }
                        }
                        _ = stopped(&mut stop) => {
                            stop_pid(p).await;
                            let _ = pid.send(None);
                            return;
                        }
                    }
                }
            }
        }
        let _ = pid.send(None);
        // Back off so a process that cannot start does not spin.
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stopped(&mut stop) => return,
            }
            match spawn_qemu_nbd(&args, &log) {
                Ok(mut child) => match wait_listening(addr, &mut child, &log).await {
                    Ok(()) => {
                        tracing::info!(volume = %id, pid = child.id(), "export restarted");
                        running = Running::Child(child);
                        break;
                    }
                    Err(e) => {
                        let _ = child.kill().await;
                        tracing::warn!(volume = %id, error = %e, "export restart failed");
                    }
                },
                Err(e) => tracing::warn!(volume = %id, error = %e, "export restart failed"),
            }
        }
    }
}

/// Downloads an image over HTTP(S) to `dst`.
async fn fetch(url: &str, dst: &Path) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    uc_runtime::tls::ensure_crypto_provider();
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| CoronafsError::Internal(e.to_string()))?;
    let mut resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| CoronafsError::Invalid(format!("cannot fetch image {url}: {e}")))?;
    if !resp.status().is_success() {
        return Err(CoronafsError::Invalid(format!(
            "cannot fetch image {url}: HTTP {}",
            resp.status()
        )));
    }
    let mut file = tokio::fs::File::create(dst).await?;
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| CoronafsError::Unavailable(format!("fetching image {url}: {e}")))?
    {
        file.write_all(&chunk).await?;
    }
    file.sync_all().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_safe_path_components() {
        for ok in ["vol-0123abcd", "a", "snap-1"] {
            assert!(check_id("volume", ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "../etc", "a/b", "Vol", "a.b", &"x".repeat(65)] {
            assert!(check_id("volume", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert!(check_size(512, 1 << 20).is_ok());
        assert!(check_size(1 << 20, 1 << 20).is_ok());
        for bad in [0, 511, 513, (1 << 20) + 512] {
            assert!(check_size(bad, 1 << 20).is_err(), "{bad}");
        }
    }

    #[test]
    fn nbd_urls_bracket_ipv6() {
        assert_eq!(url_host("10.0.0.1"), "10.0.0.1");
        assert_eq!(url_host("::1"), "[::1]");
        assert_eq!(url_host("[::1]"), "[::1]");
    }

    #[test]
    fn qemu_nbd_command_line() {
        let spec = NbdSpec {
            path: "/d/coronafs/volumes/vol-1.qcow2".into(),
            format: VolumeFormat::Qcow2,
            bind: "10.0.0.5".into(),
            port: 10809,
            export_name: "vol-1".into(),
            shared: 2,
            cache: "none".into(),
            aio: "native".into(),
            tls_dir: Some("/etc/uc/nbd".into()),
        };
        let args = spec.args();
        assert_eq!(args.last().unwrap(), "/d/coronafs/volumes/vol-1.qcow2");
        for want in [
            "--format=qcow2",
            "--bind=10.0.0.5",
            "--port=10809",
            "--export-name=vol-1",
            "--shared=2",
            "--persistent",
            "--tls-creds=tls0",
            "--object=tls-creds-x509,id=tls0,endpoint=server,dir=/etc/uc/nbd",
        ] {
            assert!(args.iter().any(|a| a == want), "{want} in {args:?}");
        }
    }
}
