//! plasmavmc's core: images, workers, placement and the VM lifecycle over the store, prismnet
//! (ports) and coronafs (volumes). No HTTP here; `server` maps requests onto these methods.
//!
//! The control plane records what each VM should be (`desired`) and where it runs (`worker`);
//! the worker agent converges QEMU to that and reports the observed `state`. Tenancy: every
//! image and VM belongs to one org/project; another tenant's objects are "not found".

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flaredb::client::FlaredbError;
use uc_runtime::Secret;
use uc_runtime::auth::Principal as Caller;
use uc_runtime::client::{ApiClient, ClientError, ClientOptions};

use crate::api::*;
use crate::net::{NetError, Network};
use crate::placement::{self, Candidate, PlacementError};
use crate::store::{Store, VmRecord, WorkerRecord};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Denied(String),
    /// Not enough free capacity now (retry later).
    #[error("{0}")]
    NoCapacity(String),
    #[error("{0}")]
    Unavailable(String),
}

pub type Result<T> = std::result::Result<T, VmError>;

pub(crate) fn store_error(e: FlaredbError) -> VmError {
    if e.is_unique_violation() {
        VmError::Conflict("an object with that name already exists".into())
    } else {
        tracing::warn!(error = %e, "plasmavmc store");
        VmError::Unavailable(format!("plasmavmc store: {e}"))
    }
}

fn dependency_error(what: &str, e: ClientError) -> VmError {
    match e.status() {
        Some(404) => VmError::NotFound(format!("{what}: not found")),
        Some(s) if (400..500).contains(&s) => VmError::Invalid(format!("{what}: {e}")),
        _ => VmError::Unavailable(format!("{what}: {e}")),
    }
}

impl From<NetError> for VmError {
    fn from(e: NetError) -> Self {
        match e {
            NetError::NotFound(m) => VmError::NotFound(m),
            NetError::Invalid(m) => VmError::Invalid(m),
            NetError::Conflict(m) => VmError::Conflict(m),
            NetError::Unavailable(m) => VmError::Unavailable(m),
        }
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub fn new_id(prefix: &str) -> String {
    let u = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &u[..16])
}

/// 1-63 lowercase letters, digits or '-', starting with a letter (also a valid host name).
pub fn check_name(kind: &str, name: &str) -> Result<()> {
    let ok = (1..=63).contains(&name.len())
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(VmError::Invalid(format!(
            "{kind} name {:?}: 1-63 lowercase letters, digits or '-', starting with a letter",
            name.chars().take(80).collect::<String>()
        )))
    }
}

/// The tenant a caller acts as. The operator (admin token) acts as org "" / project "" and
/// sees every tenant's objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub org: String,
    pub project: String,
    pub operator: bool,
}

impl Scope {
    pub fn of(caller: &Caller) -> Result<Self> {
        if caller.admin {
            return Ok(Self {
                org: String::new(),
                project: String::new(),
                operator: true,
            });
        }
        let Some(org) = caller.org.clone() else {
            return Err(VmError::Denied(
                "the token is not scoped to an organization".into(),
            ));
        };
        Ok(Self {
            org,
            project: caller.project.clone().unwrap_or_default(),
            operator: false,
        })
    }

    fn sees(&self, org: &str, project: &str) -> bool {
        self.operator || (self.org == org && self.project == project)
    }

    fn filter(&self) -> Option<(&str, &str)> {
        (!self.operator).then_some((self.org.as_str(), self.project.as_str()))
    }
}

fn require(caller: &Caller, permission: &str) -> Result<()> {
    if caller.allows(permission) {
        Ok(())
    } else {
        Err(VmError::Denied(format!(
            "permission `{permission}` is required; the credentials of `{}` do not grant it",
            caller.subject
        )))
    }
}

fn require_operator(caller: &Caller, what: &str) -> Result<()> {
    if caller.admin {
        Ok(())
    } else {
        Err(VmError::Denied(format!("{what} is for the operator")))
    }
}

pub struct Settings {
    pub worker_timeout: Duration,
    pub max_vcpus: u32,
    pub max_memory_mib: u64,
    /// How long a delete waits for the worker before answering `202` with state `deleting`.
    pub delete_wait: Duration,
}

pub struct Plasmavmc {
    store: Store,
    net: Option<Network>,
    volumes: Option<crate::volumes::Volumes>,
    settings: Settings,
    service_token: Secret<String>,
    client_options: ClientOptions,
    worker_clients: Mutex<HashMap<String, ApiClient>>,
    /// Wakes a delete waiting for its worker's confirmation.
    changes: tokio::sync::broadcast::Sender<String>,
}

/// A page request: `page_token` is the last id of the previous page.
pub struct PageRequest {
    pub page_size: u32,
    pub page_token: Option<String>,
}

impl PageRequest {
    fn limit(&self) -> u32 {
        self.page_size.clamp(1, 500)
    }
}

fn page<T>(items: Vec<T>, limit: u32, id: impl Fn(&T) -> String) -> Page<T> {
    let next_page_token = (items.len() as u32 >= limit)
        .then(|| items.last().map(&id))
        .flatten();
    Page {
        items,
        next_page_token,
    }
}

/// Checks that an image location is an existing absolute file path or an http(s) URL that
/// answers; returns its size when known.
async fn check_location(what: &str, location: &str) -> Result<u64> {
    if location.starts_with("http://") || location.starts_with("https://") {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| VmError::Unavailable(e.to_string()))?;
        let answer = client
            .head(location)
            .send()
            .await
            .map_err(|e| VmError::Invalid(format!("{what} {location}: not reachable: {e}")))?;
        if !answer.status().is_success() {
            return Err(VmError::Invalid(format!(
                "{what} {location}: answered {}",
                answer.status()
            )));
        }
        // The header itself: reqwest's content_length() of a HEAD answer is the (empty)
        // body's. Unknown (no header) counts as 0.
        return Ok(answer
            .headers()
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0));
    }
    let path = std::path::Path::new(location);
    if !path.is_absolute() {
        return Err(VmError::Invalid(format!(
            "{what} {location:?}: an absolute path or an http(s):// URL is required"
        )));
    }
    match tokio::fs::metadata(path).await {
        Ok(m) if m.is_file() => Ok(m.len()),
        Ok(_) => Err(VmError::Invalid(format!("{what} {location}: not a file"))),
        Err(e) => Err(VmError::Invalid(format!("{what} {location}: {e}"))),
    }
}

const MIB: u64 = 1024 * 1024;

impl Plasmavmc {
    pub fn new(
        store: Store,
        net: Option<Network>,
        volumes: Option<crate::volumes::Volumes>,
        settings: Settings,
        service_token: Secret<String>,
        client_options: ClientOptions,
    ) -> Self {
        Self {
            store,
            net,
            volumes,
            settings,
            service_token,
            client_options,
            worker_clients: Mutex::new(HashMap::new()),
            changes: tokio::sync::broadcast::channel(256).0,
        }
    }

    pub async fn init(&self) -> Result<()> {
        self.store.init().await.map_err(store_error)
    }

    async fn event(&self, vm_id: &str, kind: &str, message: &str) {
        if let Err(e) = self.store.add_event(vm_id, now(), kind, message).await {
            tracing::warn!(vm = vm_id, error = %e, "cannot record VM event");
        }
    }

    // ---- images

    pub async fn create_image(
        &self,
        caller: &Caller,
        req: CreateImage,
        idempotency_key: Option<String>,
    ) -> Result<Image> {
        require(caller, "plasmavmc.image.create")?;
        let scope = Scope::of(caller)?;
        if let Some(key) = &idempotency_key {
            if key.is_empty() || key.len() > 200 {
                return Err(VmError::Invalid("Idempotency-Key: 1-200 characters".into()));
            }
            if let Some(image) = self
                .store
                .image_by_idempotency_key(&scope.org, &scope.project, key)
                .await
                .map_err(store_error)?
            {
                return Ok(image);
            }
        }
        check_name("image", &req.name)?;
        if req.public && !scope.operator {
            return Err(VmError::Denied(
                "only the operator registers public images".into(),
            ));
        }
        let mut size = 0;
        match req.kind {
            ImageKind::Disk => {
                let Some(disk) = &req.disk else {
                    return Err(VmError::Invalid("a disk image needs `disk`".into()));
                };
                if req.kernel.is_some() || req.initrd.is_some() || req.cmdline.is_some() {
                    return Err(VmError::Invalid(
                        "a disk image takes no kernel, initrd or cmdline".into(),
                    ));
                }
                match req.format.as_deref() {
                    None | Some("qcow2") | Some("raw") => {}
                    Some(f) => {
                        return Err(VmError::Invalid(format!(
                            "image format {f:?}: `raw` or `qcow2`"
                        )));
                    }
                }
                size += check_location("disk", disk).await?;
            }
            ImageKind::Kernel => {
                let Some(kernel) = &req.kernel else {
                    return Err(VmError::Invalid("a kernel image needs `kernel`".into()));
                };
                if req.disk.is_some() || req.format.is_some() {
                    return Err(VmError::Invalid(
                        "a kernel image takes no disk or format".into(),
                    ));
                }
                size += check_location("kernel", kernel).await?;
                if let Some(initrd) = &req.initrd {
                    size += check_location("initrd", initrd).await?;
                }
                if req.cmdline.as_ref().is_some_and(|c| c.len() > 4096) {
                    return Err(VmError::Invalid("cmdline: at most 4096 bytes".into()));
                }
            }
        }
        let image = Image {
            id: new_id("img"),
            name: req.name,
            org_id: scope.org.clone(),
            project_id: scope.project.clone(),
            kind: req.kind,
            format: match req.kind {
                ImageKind::Disk => Some(req.format.unwrap_or_else(|| "qcow2".into())),
                ImageKind::Kernel => None,
            },
            disk: req.disk,
            kernel: req.kernel,
            initrd: req.initrd,
            cmdline: req.cmdline,
            public: req.public,
            size_bytes: size,
            created_at: now(),
        };
        match self
            .store
            .insert_image(&image, idempotency_key.as_deref())
            .await
        {
            Ok(()) => Ok(image),
            // A concurrent repeat with the same key won the insert: its image is the answer.
            Err(e) if e.is_unique_violation() => {
                if let Some(key) = &idempotency_key
                    && let Some(existing) = self
                        .store
                        .image_by_idempotency_key(&scope.org, &scope.project, key)
                        .await
                        .map_err(store_error)?
                {
                    return Ok(existing);
                }
                Err(store_error(e))
            }
            Err(e) => Err(store_error(e)),
        }
    }

    async fn visible_image(&self, scope: &Scope, id_or_name: &str) -> Result<Image> {
        if let Some(image) = self.store.image(id_or_name).await.map_err(store_error)?
            && (image.public || scope.sees(&image.org_id, &image.project_id))
        {
            return Ok(image);
        }
        // By name: the tenant's own first, then a public one.
        let mut after = String::new();
        let mut public = None;
        loop {
            let batch = self
                .store
                .images(scope.filter(), &after, 500)
                .await
                .map_err(store_error)?;
            for image in &batch {
                if image.name == id_or_name {
                    if scope.sees(&image.org_id, &image.project_id) && !image.public {
                        return Ok(image.clone());
                    }
                    public.get_or_insert_with(|| image.clone());
                }
            }
            match batch.last() {
                Some(last) if batch.len() == 500 => after = last.id.clone(),
                _ => break,
            }
        }
        public.ok_or_else(|| VmError::NotFound(format!("image {id_or_name:?} not found")))
    }

    pub async fn get_image(&self, caller: &Caller, id: &str) -> Result<Image> {
        require(caller, "plasmavmc.image.get")?;
        self.visible_image(&Scope::of(caller)?, id).await
    }

    pub async fn list_images(&self, caller: &Caller, req: PageRequest) -> Result<Page<Image>> {
        require(caller, "plasmavmc.image.list")?;
        let scope = Scope::of(caller)?;
        let limit = req.limit();
        let items = self
            .store
            .images(
                scope.filter(),
                req.page_token.as_deref().unwrap_or(""),
                limit,
            )
            .await
            .map_err(store_error)?;
        Ok(page(items, limit, |i| i.id.clone()))
    }

    pub async fn delete_image(&self, caller: &Caller, id: &str) -> Result<()> {
        require(caller, "plasmavmc.image.delete")?;
        let scope = Scope::of(caller)?;
        let image = self.visible_image(&scope, id).await?;
        if !scope.sees(&image.org_id, &image.project_id) {
            // A public image of the operator: visible, but not the tenant's to delete.
            return Err(VmError::Denied(
                "only the operator deletes public images".into(),
            ));
        }
        if self
            .store
            .image_in_use(&image.id)
            .await
            .map_err(store_error)?
        {
            return Err(VmError::Conflict(format!(
                "image {} is used by a VM",
                image.id
            )));
        }
        self.store
            .delete_image(&image.id)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    // ---- workers

    pub async fn register_worker(&self, caller: &Caller, req: RegisterWorker) -> Result<Worker> {
        require_operator(caller, "registering a worker")?;
        check_name("worker", &req.name)?;
        if req.vcpus == 0 || req.memory_mib == 0 {
            return Err(VmError::Invalid(
                "a worker offers at least 1 vCPU and 1 MiB".into(),
            ));
        }
        if !(req.url.starts_with("http://") || req.url.starts_with("https://")) {
            return Err(VmError::Invalid("worker url: http(s)://host:port".into()));
        }
        let existing = self
            .store
            .workers()
            .await
            .map_err(store_error)?
            .into_iter()
            .find(|w| w.info.name == req.name);
        let at = now();
        let rec = WorkerRecord {
            state: match &existing {
                Some(w) if w.state == "draining" => "draining".into(),
                _ => "up".into(),
            },
            registered_at: existing.map_or(at, |w| w.registered_at),
            last_heartbeat: at,
            info: req,
        };
        self.store.upsert_worker(&rec).await.map_err(store_error)?;
        self.worker_clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&rec.info.name);
        let name = rec.info.name.clone();
        self.workers_view()
            .await?
            .into_iter()
            .find(|w| w.name == name)
            .ok_or_else(|| VmError::Unavailable("worker vanished".into()))
    }

    fn worker_state(&self, w: &WorkerRecord) -> String {
        if w.state == "draining" {
            return w.state.clone();
        }
        if now() - w.last_heartbeat > self.settings.worker_timeout.as_secs() as i64 {
            "down".into()
        } else {
            "up".into()
        }
    }

    async fn workers_view(&self) -> Result<Vec<Worker>> {
        let usage: HashMap<String, (u32, u64)> = self
            .store
            .usage()
            .await
            .map_err(store_error)?
            .into_iter()
            .map(|(w, v, m)| (w, (v, m)))
            .collect();
        Ok(self
            .store
            .workers()
            .await
            .map_err(store_error)?
            .into_iter()
            .map(|w| {
                let (used_vcpus, used_memory_mib) =
                    usage.get(&w.info.name).copied().unwrap_or((0, 0));
                Worker {
                    state: self.worker_state(&w),
                    name: w.info.name,
                    url: w.info.url,
                    host: w.info.host,
                    vcpus: w.info.vcpus,
                    memory_mib: w.info.memory_mib,
                    used_vcpus,
                    used_memory_mib,
                    accel: w.info.accel,
                    migration_address: w.info.migration_address,
                    last_heartbeat: w.last_heartbeat,
                    registered_at: w.registered_at,
                }
            })
            .collect())
    }

    pub async fn list_workers(&self, caller: &Caller) -> Result<Page<Worker>> {
        require_operator(caller, "listing workers")?;
        Ok(Page {
            items: self.workers_view().await?,
            next_page_token: None,
        })
    }

    pub async fn get_worker(&self, caller: &Caller, name: &str) -> Result<Worker> {
        require_operator(caller, "reading a worker")?;
        self.find_worker(name).await
    }

    async fn find_worker(&self, name: &str) -> Result<Worker> {
        self.workers_view()
            .await?
            .into_iter()
            .find(|w| w.name == name)
            .ok_or_else(|| VmError::NotFound(format!("worker {name:?} not found")))
    }

    /// Draining: keeps its VMs, gets no new ones.
    pub async fn set_worker_draining(
        &self,
        caller: &Caller,
        name: &str,
        draining: bool,
    ) -> Result<Worker> {
        require_operator(caller, "draining a worker")?;
        let state = if draining { "draining" } else { "up" };
        if !self
            .store
            .set_worker_state(name, state)
            .await
            .map_err(store_error)?
        {
            return Err(VmError::NotFound(format!("worker {name:?} not found")));
        }
        self.find_worker(name).await
    }

    pub async fn delete_worker(&self, caller: &Caller, name: &str) -> Result<()> {
        require_operator(caller, "removing a worker")?;
        if !self
            .store
            .vms_of_worker(name)
            .await
            .map_err(store_error)?
            .is_empty()
        {
            return Err(VmError::Conflict(format!(
                "worker {name:?} still has VMs; migrate or delete them first"
            )));
        }
        if !self.store.delete_worker(name).await.map_err(store_error)? {
            return Err(VmError::NotFound(format!("worker {name:?} not found")));
        }
        Ok(())
    }

    /// A worker's heartbeat with what it observed; answers its current assignments.
    pub async fn heartbeat(
        &self,
        caller: &Caller,
        name: &str,
        hb: Heartbeat,
    ) -> Result<Vec<Assignment>> {
        require_operator(caller, "a worker heartbeat")?;
        if !self
            .store
            .heartbeat(name, now())
            .await
            .map_err(store_error)?
        {
            return Err(VmError::NotFound(format!(
                "worker {name:?} is not registered"
            )));
        }
        for report in hb.vms {
            if let Err(e) = self.apply_report(name, report).await {
                tracing::warn!(worker = name, error = %e, "cannot apply VM report");
            }
        }
        self.assignments(name).await
    }

    pub async fn assignments(&self, worker: &str) -> Result<Vec<Assignment>> {
        let mut images: HashMap<String, Image> = HashMap::new();
        let mut out = Vec::new();
        for rec in self
            .store
            .vms_of_worker(worker)
            .await
            .map_err(store_error)?
        {
            if rec.vm.state == VmState::Creating {
                continue;
            }
            let image = match images.get(&rec.vm.image_id) {
                Some(i) => i.clone(),
                None => match self
                    .store
                    .image(&rec.vm.image_id)
                    .await
                    .map_err(store_error)?
                {
                    Some(i) => {
                        images.insert(i.id.clone(), i.clone());
                        i
                    }
                    None => continue,
                },
            };
            out.push(Assignment {
                stop_timeout_secs: rec.stop_timeout_secs,
                reboot_applied: rec.reboot_applied,
                user_data: rec.user_data,
                vm: rec.vm,
                image,
            });
        }
        Ok(out)
    }

    async fn apply_report(&self, worker: &str, report: VmReport) -> Result<()> {
        for _ in 0..5 {
            let Some(mut rec) = self.store.vm(&report.id).await.map_err(store_error)? else {
                return Ok(());
            };
            // Only the VM's worker speaks for it (a migration target reports through the
            // migration call).
            if rec.vm.worker != worker {
                return Ok(());
            }
            if report.state == VmState::Deleted {
                if rec.vm.desired == PowerState::Deleted {
                    self.finalize_delete(rec).await;
                }
                return Ok(());
            }
            let mut state = report.state;
            if rec.vm.desired == PowerState::Deleted {
                state = VmState::Deleting;
            }
            if rec.vm.state == VmState::Migrating {
                // The migration call owns the state until it finishes.
                return Ok(());
            }
            let reboot_applied = rec.reboot_applied.max(report.reboot_seq);
            if rec.vm.state == state
                && rec.vm.error == report.error
                && rec.reboot_applied == reboot_applied
            {
                return Ok(());
            }
            let previous = rec.vm.state;
            rec.vm.state = state;
            rec.vm.error = report.error.clone();
            rec.reboot_applied = reboot_applied;
            rec.vm.version += 1;
            rec.vm.updated_at = now();
            if self.store.update_vm(&rec).await.map_err(store_error)? {
                if previous == state {
                    // Only the applied reboot changed.
                    return Ok(());
                }
                let message = match &report.error {
                    Some(e) => format!("{} → {}: {e}", previous.as_str(), state.as_str()),
                    None => format!("{} → {}", previous.as_str(), state.as_str()),
                };
                self.event(&rec.vm.id, "state", &message).await;
                let _ = self.changes.send(rec.vm.id.clone());
                return Ok(());
            }
        }
        Err(VmError::Conflict("VM kept changing".into()))
    }

    // ---- VMs

    fn worker_client(&self, worker: &Worker) -> Result<ApiClient> {
        let mut clients = self
            .worker_clients
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(&worker.name)
            && c.base_url().as_str().trim_end_matches('/') == worker.url.trim_end_matches('/')
        {
            return Ok(c.clone());
        }
        let c = ApiClient::new(
            &worker.url,
            ClientOptions {
                token: Some(self.service_token.clone()),
                // A live migration's calls last as long as the memory copy.
                timeout: Duration::from_secs(900),
                ..self.client_options.clone()
            },
        )
        .map_err(|e| VmError::Unavailable(e.to_string()))?;
        clients.insert(worker.name.clone(), c.clone());
        Ok(c)
    }

    /// Tells a worker to converge now instead of at its next resync (best effort).
    async fn wake(&self, worker: &str) {
        let Ok(w) = self.find_worker(worker).await else {
            return;
        };
        let Ok(client) = self.worker_client(&w) else {
            return;
        };
        let _ = client.post_no_content("/v1/wake").await;
    }

    fn wake_later(self: &Arc<Self>, worker: String) {
        let me = self.clone();
        tokio::spawn(async move { me.wake(&worker).await });
    }

    async fn candidates(&self) -> Result<Vec<Candidate>> {
        Ok(self
            .workers_view()
            .await?
            .into_iter()
            .map(|w| Candidate {
                schedulable: w.state == "up",
                name: w.name,
                vcpus: w.vcpus,
                memory_mib: w.memory_mib,
                used_vcpus: w.used_vcpus,
                used_memory_mib: w.used_memory_mib,
            })
            .collect())
    }

    async fn visible_vm(&self, caller: &Caller, id: &str) -> Result<VmRecord> {
        let scope = Scope::of(caller)?;
        match self.store.vm(id).await.map_err(store_error)? {
            Some(rec)
                if scope.sees(&rec.vm.org_id, &rec.vm.project_id)
                    && rec.vm.state != VmState::Creating =>
            {
                Ok(rec)
            }
            _ => Err(VmError::NotFound(format!("VM {id:?} not found"))),
        }
    }

    pub async fn create_vm(
        self: &Arc<Self>,
        caller: &Caller,
        caller_token: &Secret<String>,
        req: CreateVm,
        idempotency_key: Option<String>,
    ) -> Result<Vm> {
        require(caller, "plasmavmc.vm.create")?;
        let scope = Scope::of(caller)?;
        if let Some(key) = &idempotency_key {
            if key.is_empty() || key.len() > 200 {
                return Err(VmError::Invalid("Idempotency-Key: 1-200 characters".into()));
            }
            if let Some(rec) = self
                .store
                .vm_by_idempotency_key(&scope.org, &scope.project, key)
                .await
                .map_err(store_error)?
            {
                return Ok(rec.vm);
            }
        }
        check_name("VM", &req.name)?;
        if req.vcpus == 0 || req.vcpus > self.settings.max_vcpus {
            return Err(VmError::Invalid(format!(
                "vcpus: 1 to {}",
                self.settings.max_vcpus
            )));
        }
        if req.memory_mib < 16 || req.memory_mib > self.settings.max_memory_mib {
            return Err(VmError::Invalid(format!(
                "memory_mib: 16 to {}",
                self.settings.max_memory_mib
            )));
        }
        if req.user_data.as_ref().is_some_and(|u| u.len() > 64 * 1024) {
            return Err(VmError::Invalid("user_data: at most 64 KiB".into()));
        }
        if req.volumes.len() > 16 || req.ports.len() + req.subnets.len() > 8 {
            return Err(VmError::Invalid(
                "at most 16 extra volumes and 8 NICs".into(),
            ));
        }
        for v in &req.volumes {
            match (v.size_mib, &v.volume_id) {
                (Some(s), None) if (1..=16 * 1024 * 1024).contains(&s) => {}
                (None, Some(_)) => {}
                _ => {
                    return Err(VmError::Invalid(
                        "each volume: either size_mib (1 MiB to 16 TiB) or volume_id".into(),
                    ));
                }
            }
        }
        if let Some(s) = req.root_volume_mib
            && !(1..=16 * 1024 * 1024).contains(&s)
        {
            return Err(VmError::Invalid("root_volume_mib: 1 MiB to 16 TiB".into()));
        }
        let image = self
            .visible_image(&scope, &req.image)
            .await
            .map_err(|e| match e {
                VmError::NotFound(m) => VmError::Invalid(m),
                e => e,
            })?;
        if image.kind == ImageKind::Disk
            && let Some(s) = req.root_volume_mib
            && s * MIB < image.size_bytes
        {
            return Err(VmError::Invalid(format!(
                "root_volume_mib {s} is smaller than the image ({} bytes)",
                image.size_bytes
            )));
        }
        let wants_volumes = image.kind == ImageKind::Disk
            || req.root_volume_mib.is_some()
            || !req.volumes.is_empty();
        if wants_volumes && self.volumes.is_none() {
            return Err(VmError::Invalid(
                "this cloud has no volume service (coronafs): VMs cannot have volumes".into(),
            ));
        }
        if (!req.ports.is_empty() || !req.subnets.is_empty()) && self.net.is_none() {
            return Err(VmError::Invalid(
                "this cloud has no network service (prismnet): VMs cannot have ports".into(),
            ));
        }

        // Place and record the VM (state `creating`, invisible) before creating anything
        // outside: the record reserves the capacity and lists what was created, so a
        // failure — or a crash — can undo it.
        let at = now();
        let mut rec = VmRecord {
            vm: Vm {
                id: new_id("vm"),
                name: req.name.clone(),
                org_id: scope.org.clone(),
                project_id: scope.project.clone(),
                image_id: image.id.clone(),
                vcpus: req.vcpus,
                memory_mib: req.memory_mib,
                volumes: Vec::new(),
                nics: Vec::new(),
                has_user_data: req.user_data.is_some(),
                desired: if req.start.unwrap_or(true) {
                    PowerState::Running
                } else {
                    PowerState::Stopped
                },
                state: VmState::Creating,
                worker: String::new(),
                migrating_to: None,
                reboot_seq: 0,
                error: None,
                version: 1,
                created_at: at,
                updated_at: at,
            },
            user_data: req.user_data.clone(),
            stop_timeout_secs: 30,
            idempotency_key: idempotency_key.clone(),
            reboot_applied: 0,
        };
        let mut placed = false;
        for _ in 0..8 {
            let candidates = self.candidates().await?;
            let chosen = placement::place(&candidates, req.vcpus, req.memory_mib, None).map_err(
                |e| match e {
                    PlacementError::TooLarge { .. } => VmError::Invalid(e.to_string()),
                    PlacementError::NoWorkers | PlacementError::NoCapacity { .. } => {
                        VmError::NoCapacity(e.to_string())
                    }
                },
            )?;
            rec.vm.worker = chosen.name.clone();
            match self
                .store
                .insert_vm(&rec, chosen.memory_mib, chosen.vcpus)
                .await
            {
                Ok(true) => {
                    placed = true;
                    break;
                }
                // Another create took the room first: place again.
                Ok(false) => continue,
                Err(e) if e.is_unique_violation() => {
                    if let Some(key) = &idempotency_key
                        && let Some(existing) = self
                            .store
                            .vm_by_idempotency_key(&scope.org, &scope.project, key)
                            .await
                            .map_err(store_error)?
                    {
                        return Ok(existing.vm);
                    }
                    return Err(VmError::Conflict(format!(
                        "a VM named {:?} already exists",
                        req.name
                    )));
                }
                Err(e) => return Err(store_error(e)),
            }
        }
        if !placed {
            return Err(VmError::NoCapacity(
                "workers filled up while placing the VM; retry".into(),
            ));
        }
        match self
            .create_resources(&mut rec, &req, &image, caller_token)
            .await
        {
            Ok(()) => {}
            Err(e) => {
                self.undo_create(&rec).await;
                return Err(e);
            }
        }
        rec.vm.state = VmState::Pending;
        rec.vm.version += 1;
        rec.vm.updated_at = now();
        match self.store.update_vm(&rec).await {
            Ok(true) => {}
            Ok(false) => {
                self.undo_create(&rec).await;
                return Err(VmError::Conflict(
                    "the VM changed while being created".into(),
                ));
            }
            Err(e) => {
                self.undo_create(&rec).await;
                return Err(store_error(e));
            }
        }
        self.event(
            &rec.vm.id,
            "created",
            &format!("placed on worker {}", rec.vm.worker),
        )
        .await;
        self.wake_later(rec.vm.worker.clone());
        Ok(rec.vm)
    }

    /// Saves the record's resource lists (so a crash can undo them).
    async fn save_progress(&self, rec: &mut VmRecord) -> Result<()> {
        rec.vm.version += 1;
        if self.store.update_vm(rec).await.map_err(store_error)? {
            Ok(())
        } else {
            Err(VmError::Conflict(
                "the VM changed while being created".into(),
            ))
        }
    }

    async fn create_resources(
        &self,
        rec: &mut VmRecord,
        req: &CreateVm,
        image: &Image,
        caller_token: &Secret<String>,
    ) -> Result<()> {
        let id = rec.vm.id.clone();
        // NICs first: a foreign or busy port is the likeliest refusal, and it is cheap.
        if let Some(net) = &self.net {
            for port_id in &req.ports {
                let nic = net.claim_port(caller_token, port_id, &id).await?;
                rec.vm.nics.push(nic);
                self.save_progress(rec).await?;
            }
            for subnet in &req.subnets {
                let nic = net
                    .create_port(caller_token, subnet, &id, &rec.vm.name)
                    .await?;
                rec.vm.nics.push(nic);
                self.save_progress(rec).await?;
            }
        }
        if let Some(volumes) = &self.volumes {
            let root_mib = match (image.kind, req.root_volume_mib) {
                (_, Some(s)) => Some(s),
                (ImageKind::Disk, None) => Some(image.size_bytes.div_ceil(MIB).max(1)),
                (ImageKind::Kernel, None) => None,
            };
            use coronafs::api::{CreateVolume, VolumeFormat, VolumeSource};
            let mut wanted: Vec<(String, Option<u64>, VolumeSource)> = Vec::new();
            if let Some(size) = root_mib {
                let source = match image.kind {
                    ImageKind::Disk => VolumeSource::Image {
                        location: image.disk.clone().unwrap_or_default(),
                    },
                    ImageKind::Kernel => VolumeSource::Blank,
                };
                wanted.push(("root".into(), Some(size), source));
            }
            for (i, v) in req.volumes.iter().enumerate() {
                if let Some(size) = v.size_mib {
                    wanted.push((format!("data{i}"), Some(size), VolumeSource::Blank));
                } else if let Some(existing) = &v.volume_id {
                    let vol = volumes
                        .get(existing)
                        .await
                        .map_err(|e| dependency_error(&format!("volume {existing}"), e))?;
                    if !rec.vm.org_id.is_empty()
                        && (vol.org != rec.vm.org_id || vol.project != rec.vm.project_id)
                    {
                        return Err(VmError::Invalid(format!("volume {existing}: not found")));
                    }
                    if !vol.attachments.is_empty() {
                        return Err(VmError::Conflict(format!(
                            "volume {existing} is attached elsewhere"
                        )));
                    }
                    rec.vm.volumes.push(VmVolume {
                        volume_id: vol.id,
                        role: "data".into(),
                        size_mib: vol.size_bytes / MIB,
                        owned: false,
                    });
                }
            }
            for (role, size, source) in wanted {
                let create = CreateVolume {
                    name: format!("{id}-{role}"),
                    size_bytes: size.map(|s| s * MIB),
                    format: VolumeFormat::Raw,
                    source,
                    // Live migration attaches the volume to two workers for a moment.
                    multi_attach: true,
                    node: None,
                    org: Some(rec.vm.org_id.clone()),
                    project: Some(rec.vm.project_id.clone()),
                };
                let vol = volumes
                    .create(&create, &format!("{id}-{role}"))
                    .await
                    .map_err(|e| dependency_error(&format!("{role} volume"), e))?;
                rec.vm.volumes.push(VmVolume {
                    volume_id: vol.id,
                    role: if role == "root" {
                        "root".into()
                    } else {
                        "data".into()
                    },
                    size_mib: vol.size_bytes / MIB,
                    owned: true,
                });
                self.save_progress(rec).await?;
            }
        }
        Ok(())
    }

    /// Removes what a failed create made, then its record.
    async fn undo_create(&self, rec: &VmRecord) {
        self.release_resources(&rec.vm).await;
        if let Err(e) = self.store.delete_vm(&rec.vm.id).await {
            tracing::warn!(vm = %rec.vm.id, error = %e, "cannot remove a failed VM's record");
        }
    }

    /// Deletes owned volumes and ports, releases claimed ports. Best effort, logged.
    async fn release_resources(&self, vm: &Vm) {
        if let Some(volumes) = &self.volumes {
            for v in vm.volumes.iter().filter(|v| v.owned) {
                if let Err(e) = volumes.delete(&v.volume_id).await
                    && e.status() != Some(404)
                {
                    tracing::warn!(vm = %vm.id, volume = %v.volume_id, error = %e, "cannot delete VM volume");
                }
            }
        }
        if let Some(net) = &self.net {
            for nic in &vm.nics {
                let result = if nic.owned {
                    net.delete_port(&nic.port_id).await
                } else {
                    net.release_port(&nic.port_id, &vm.id).await
                };
                if let Err(e) = result {
                    tracing::warn!(vm = %vm.id, port = %nic.port_id, error = %e, "cannot release VM port");
                }
            }
        }
    }

    /// Undoes creates that a crash left half-done (records still `creating` after a while).
    pub async fn reap_abandoned_creates(&self, older_than: Duration) -> Result<usize> {
        let mut n = 0;
        for rec in self
            .store
            .vms_in_state(VmState::Creating.as_str())
            .await
            .map_err(store_error)?
        {
            if now() - rec.vm.updated_at >= older_than.as_secs() as i64 {
                tracing::info!(vm = %rec.vm.id, "undoing an abandoned create");
                self.undo_create(&rec).await;
                n += 1;
            }
        }
        Ok(n)
    }

    pub async fn get_vm(&self, caller: &Caller, id: &str) -> Result<Vm> {
        require(caller, "plasmavmc.vm.get")?;
        Ok(self.visible_vm(caller, id).await?.vm)
    }

    pub async fn list_vms(&self, caller: &Caller, req: PageRequest) -> Result<Page<Vm>> {
        require(caller, "plasmavmc.vm.list")?;
        let scope = Scope::of(caller)?;
        let limit = req.limit();
        let items: Vec<Vm> = self
            .store
            .vms(
                scope.filter(),
                req.page_token.as_deref().unwrap_or(""),
                limit,
            )
            .await
            .map_err(store_error)?
            .into_iter()
            .map(|r| r.vm)
            .collect();
        let next = (items.len() as u32 >= limit).then(|| items.last().map(|v| v.id.clone()));
        Ok(Page {
            items: items
                .into_iter()
                .filter(|v| v.state != VmState::Creating)
                .collect(),
            next_page_token: next.flatten(),
        })
    }

    /// Reads, changes and writes a VM with compare-and-set, retrying on concurrent changes.
    async fn modify(
        &self,
        caller: &Caller,
        id: &str,
        if_match: Option<i64>,
        change: impl Fn(&mut VmRecord) -> Result<()>,
    ) -> Result<VmRecord> {
        for _ in 0..8 {
            let mut rec = self.visible_vm(caller, id).await?;
            if let Some(v) = if_match
                && v != rec.vm.version
            {
                return Err(VmError::Conflict(format!(
                    "VM {id} is at version {}, not {v}",
                    rec.vm.version
                )));
            }
            change(&mut rec)?;
            rec.vm.version += 1;
            rec.vm.updated_at = now();
            if self.store.update_vm(&rec).await.map_err(store_error)? {
                return Ok(rec);
            }
            if if_match.is_some() {
                return Err(VmError::Conflict(format!("VM {id} changed meanwhile")));
            }
        }
        Err(VmError::Conflict(format!("VM {id} kept changing; retry")))
    }

    fn not_while_migrating(rec: &VmRecord) -> Result<()> {
        if rec.vm.migrating_to.is_some() || rec.vm.state == VmState::Migrating {
            return Err(VmError::Conflict("the VM is migrating".into()));
        }
        if rec.vm.desired == PowerState::Deleted {
            return Err(VmError::Conflict("the VM is being deleted".into()));
        }
        Ok(())
    }

    pub async fn start_vm(self: &Arc<Self>, caller: &Caller, id: &str) -> Result<Vm> {
        require(caller, "plasmavmc.vm.start")?;
        let rec = self
            .modify(caller, id, None, |rec| {
                Self::not_while_migrating(rec)?;
                rec.vm.desired = PowerState::Running;
                if rec.vm.state == VmState::Error {
                    rec.vm.error = None;
                }
                Ok(())
            })
            .await?;
        self.event(id, "start", "start requested").await;
        self.wake_later(rec.vm.worker.clone());
        Ok(rec.vm)
    }

    pub async fn stop_vm(self: &Arc<Self>, caller: &Caller, id: &str, req: StopVm) -> Result<Vm> {
        require(caller, "plasmavmc.vm.stop")?;
        let timeout = req.timeout_secs.unwrap_or(30);
        if timeout > 3600 {
            return Err(VmError::Invalid("timeout_secs: at most 3600".into()));
        }
        let rec = self
            .modify(caller, id, None, |rec| {
                Self::not_while_migrating(rec)?;
                rec.vm.desired = PowerState::Stopped;
                rec.stop_timeout_secs = timeout;
                Ok(())
            })
            .await?;
        self.event(id, "stop", &format!("stop requested (grace {timeout} s)"))
            .await;
        self.wake_later(rec.vm.worker.clone());
        Ok(rec.vm)
    }

    pub async fn reboot_vm(self: &Arc<Self>, caller: &Caller, id: &str) -> Result<Vm> {
        require(caller, "plasmavmc.vm.reboot")?;
        let rec = self
            .modify(caller, id, None, |rec| {
                Self::not_while_migrating(rec)?;
                if rec.vm.state != VmState::Running || rec.vm.desired != PowerState::Running {
                    return Err(VmError::Conflict(format!(
                        "only a running VM reboots (it is {})",
                        rec.vm.state.as_str()
                    )));
                }
                rec.vm.reboot_seq += 1;
                Ok(())
            })
            .await?;
        self.event(id, "reboot", "reboot requested").await;
        self.wake_later(rec.vm.worker.clone());
        Ok(rec.vm)
    }

    /// Offline resize: vCPUs and memory of a stopped VM (capacity checked on its worker).
    pub async fn resize_vm(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        if_match: Option<i64>,
        req: ResizeVm,
    ) -> Result<Vm> {
        require(caller, "plasmavmc.vm.update")?;
        let current = self.visible_vm(caller, id).await?;
        let vcpus = req.vcpus.unwrap_or(current.vm.vcpus);
        let memory = req.memory_mib.unwrap_or(current.vm.memory_mib);
        if vcpus == 0 || vcpus > self.settings.max_vcpus {
            return Err(VmError::Invalid(format!(
                "vcpus: 1 to {}",
                self.settings.max_vcpus
            )));
        }
        if memory < 16 || memory > self.settings.max_memory_mib {
            return Err(VmError::Invalid(format!(
                "memory_mib: 16 to {}",
                self.settings.max_memory_mib
            )));
        }
        let worker = self.find_worker(&current.vm.worker).await?;
        let grow_v = vcpus.saturating_sub(current.vm.vcpus);
        let grow_m = memory.saturating_sub(current.vm.memory_mib);
        if worker.used_vcpus + grow_v > worker.vcpus
            || worker.used_memory_mib + grow_m > worker.memory_mib
        {
            return Err(VmError::NoCapacity(format!(
                "worker {} has no room for {vcpus} vCPUs / {memory} MiB",
                worker.name
            )));
        }
        let rec = self
            .modify(caller, id, if_match, |rec| {
                Self::not_while_migrating(rec)?;
                if rec.vm.state != VmState::Stopped || rec.vm.desired != PowerState::Stopped {
                    return Err(VmError::Conflict(format!(
                        "resize is offline: stop the VM first (it is {})",
                        rec.vm.state.as_str()
                    )));
                }
                rec.vm.vcpus = vcpus;
                rec.vm.memory_mib = memory;
                Ok(())
            })
            .await?;
        self.event(id, "resize", &format!("{vcpus} vCPUs, {memory} MiB"))
            .await;
        Ok(rec.vm)
    }

    /// Deletes a VM: the worker tears it down, then its volumes and ports go, then the
    /// record. Waits a while for that; if the worker is slow the answer is the VM in state
    /// `deleting` (it disappears later).
    pub async fn delete_vm(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        force: bool,
    ) -> Result<Option<Vm>> {
        require(caller, "plasmavmc.vm.delete")?;
        let mut changes = self.changes.subscribe();
        let rec = self
            .modify(caller, id, None, |rec| {
                if rec.vm.migrating_to.is_some() {
                    return Err(VmError::Conflict("the VM is migrating".into()));
                }
                if rec.vm.desired == PowerState::Deleted {
                    return Ok(());
                }
                if rec.vm.state.may_run() && !force {
                    return Err(VmError::Conflict(format!(
                        "VM {} is {}; stop it first or delete with force=true",
                        rec.vm.id,
                        rec.vm.state.as_str()
                    )));
                }
                rec.vm.desired = PowerState::Deleted;
                rec.vm.state = VmState::Deleting;
                Ok(())
            })
            .await?;
        self.event(id, "delete", if force { "forced delete" } else { "delete" })
            .await;
        self.wake_later(rec.vm.worker.clone());
        let deadline = tokio::time::Instant::now() + self.settings.delete_wait;
        loop {
            match self.store.vm(id).await.map_err(store_error)? {
                None => return Ok(None),
                Some(r) if tokio::time::Instant::now() >= deadline => return Ok(Some(r.vm)),
                Some(_) => {}
            }
            let _ = tokio::time::timeout_at(deadline, async {
                loop {
                    match changes.recv().await {
                        Ok(changed) if changed == id => return,
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                        Err(_) => return,
                    }
                }
            })
            .await;
        }
    }

    async fn finalize_delete(&self, rec: VmRecord) {
        self.release_resources(&rec.vm).await;
        match self.store.delete_vm(&rec.vm.id).await {
            Ok(_) => tracing::info!(vm = %rec.vm.id, "VM deleted"),
            Err(e) => tracing::warn!(vm = %rec.vm.id, error = %e, "cannot delete VM record"),
        }
        let _ = self.changes.send(rec.vm.id.clone());
    }

    pub async fn events(&self, caller: &Caller, id: &str, after: i64) -> Result<Page<VmEvent>> {
        require(caller, "plasmavmc.vm.get")?;
        self.visible_vm(caller, id).await?;
        let items = self
            .store
            .events(id, after, 500)
            .await
            .map_err(store_error)?;
        let next = (items.len() == 500).then(|| items.last().map(|e| e.seq.to_string()));
        Ok(Page {
            items,
            next_page_token: next.flatten(),
        })
    }

    pub async fn console(&self, caller: &Caller, id: &str, offset: u64) -> Result<ConsoleLog> {
        require(caller, "plasmavmc.vm.console")?;
        let rec = self.visible_vm(caller, id).await?;
        let worker = self.find_worker(&rec.vm.worker).await?;
        let client = self.worker_client(&worker)?;
        client
            .get(&format!("/v1/vms/{id}/console?offset={offset}"))
            .await
            .map_err(|e| match e.status() {
                Some(404) => VmError::NotFound(format!(
                    "VM {id} has no console output on worker {} yet",
                    worker.name
                )),
                _ => VmError::Unavailable(format!("worker {}: {e}", worker.name)),
            })
    }

    /// Live migration to another worker (shared storage: coronafs volumes attach to both).
    /// Runs to completion before answering.
    pub async fn migrate_vm(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        req: MigrateVm,
    ) -> Result<Vm> {
        require(caller, "plasmavmc.vm.migrate")?;
        let current = self.visible_vm(caller, id).await?;
        if current.vm.state != VmState::Running || current.vm.desired != PowerState::Running {
            return Err(VmError::Conflict(format!(
                "only a running VM migrates live (it is {})",
                current.vm.state.as_str()
            )));
        }
        let candidates = self.candidates().await?;
        let target = match &req.worker {
            Some(name) => {
                let c = candidates
                    .iter()
                    .find(|c| &c.name == name)
                    .ok_or_else(|| VmError::Invalid(format!("worker {name:?} not found")))?;
                if c.name == current.vm.worker {
                    return Err(VmError::Invalid(
                        "the VM already runs on that worker".into(),
                    ));
                }
                if !c.schedulable {
                    return Err(VmError::Conflict(format!("worker {name} is not up")));
                }
                c.clone()
            }
            None => placement::place(
                &candidates,
                current.vm.vcpus,
                current.vm.memory_mib,
                Some(&current.vm.worker),
            )
            .map_err(|e| VmError::NoCapacity(e.to_string()))?
            .clone(),
        };
        let source = self.find_worker(&current.vm.worker).await?;
        let dest = self.find_worker(&target.name).await?;
        if !current.vm.nics.is_empty() && self.net.is_none() {
            return Err(VmError::Unavailable(
                "the VM has NICs but the control plane has no prismnet".into(),
            ));
        }
        // Reserve room on the target and mark the VM migrating (one atomic statement).
        let mut rec = current.clone();
        rec.vm.migrating_to = Some(target.name.clone());
        rec.vm.state = VmState::Migrating;
        rec.vm.version += 1;
        rec.vm.updated_at = now();
        if !self
            .store
            .start_migration(&rec, target.memory_mib, target.vcpus)
            .await
            .map_err(store_error)?
        {
            return Err(VmError::Conflict(
                "the VM changed, or the target filled up; retry".into(),
            ));
        }
        self.event(
            id,
            "migrate",
            &format!("live migration {} → {}", source.name, dest.name),
        )
        .await;
        let outcome = self.run_migration(&rec, &source, &dest).await;
        let mut port_error = None;
        if outcome.is_ok() {
            // The VM runs on the destination now (the source QEMU cannot resume): its second
            // taps become the ports' taps and the source's are removed. A failure here does
            // not undo the migration; it is kept as the VM's error.
            if let Err(e) = self.activate_ports(&rec).await {
                tracing::warn!(vm = id, error = %e, "ports not switched after migration");
                self.event(id, "migrate_ports_failed", &e.to_string()).await;
                port_error = Some(format!("after migration: {e}"));
            }
        }
        // Whatever happened, the record must end consistent: on the destination when QEMU
        // moved, on the source otherwise.
        for _ in 0..8 {
            let Some(mut now_rec) = self.store.vm(id).await.map_err(store_error)? else {
                break;
            };
            now_rec.vm.migrating_to = None;
            now_rec.vm.state = VmState::Running;
            match &outcome {
                Ok(()) => {
                    now_rec.vm.worker = dest.name.clone();
                    now_rec.vm.error = port_error.clone();
                }
                Err(e) => now_rec.vm.error = Some(format!("migration failed: {e}")),
            }
            now_rec.vm.version += 1;
            now_rec.vm.updated_at = now();
            if self.store.update_vm(&now_rec).await.map_err(store_error)? {
                break;
            }
        }
        match outcome {
            Ok(()) => {
                self.event(id, "migrated", &format!("now on worker {}", dest.name))
                    .await;
                // The source drops its QEMU remains and volume attachments.
                let src = self.worker_client(&source)?;
                if let Err(e) = src
                    .post_no_content(&format!("/v1/vms/{id}/migration/cleanup"))
                    .await
                {
                    tracing::warn!(vm = id, error = %e, "source cleanup after migration");
                }
                self.get_vm(caller, id).await
            }
            Err(e) => {
                self.event(id, "migrate_failed", &e.to_string()).await;
                let dst = self.worker_client(&dest)?;
                let _ = dst
                    .post_no_content(&format!("/v1/vms/{id}/migration/abort"))
                    .await;
                // The destination drops its second taps on abort; also when it is unreachable.
                if let Some(net) = &self.net {
                    for nic in &rec.vm.nics {
                        if let Err(e) = net.cancel_migration(&nic.port_id).await {
                            tracing::warn!(vm = id, port = %nic.port_id, error = %e, "cannot drop a migration binding");
                        }
                    }
                }
                Err(e)
            }
        }
    }

    async fn activate_ports(&self, rec: &VmRecord) -> Result<()> {
        let Some(net) = &self.net else {
            return Ok(());
        };
        for nic in &rec.vm.nics {
            let mut attempt = 0;
            loop {
                match net.activate_migration(&nic.port_id).await {
                    Ok(_) => break,
                    Err(NetError::Unavailable(e)) if attempt < 20 => {
                        tracing::debug!(port = %nic.port_id, error = %e, "switching port; retrying");
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => {
                        return Err(VmError::Unavailable(format!(
                            "switch port {}: {e}",
                            nic.port_id
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    async fn run_migration(&self, rec: &VmRecord, source: &Worker, dest: &Worker) -> Result<()> {
        let image = self
            .store
            .image(&rec.vm.image_id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| VmError::Conflict("the VM's image is gone".into()))?;
        let assignment = Assignment {
            vm: rec.vm.clone(),
            image,
            user_data: rec.user_data.clone(),
            stop_timeout_secs: rec.stop_timeout_secs,
            reboot_applied: rec.reboot_applied,
        };
        let dst = self.worker_client(dest)?;
        let ready: IncomingReady = dst
            .post(
                &format!("/v1/vms/{}/migration/incoming", rec.vm.id),
                &IncomingRequest { assignment },
            )
            .await
            .map_err(|e| VmError::Unavailable(format!("destination {}: {e}", dest.name)))?;
        let src = self.worker_client(source)?;
        src.post::<_, serde_json::Value>(
            &format!("/v1/vms/{}/migration/out", rec.vm.id),
            &MigrateOut { uri: ready.uri },
        )
        .await
        .map_err(|e| VmError::Unavailable(format!("source {}: {e}", source.name)))?;
        dst.post::<_, serde_json::Value>(
            &format!("/v1/vms/{}/migration/finish", rec.vm.id),
            &serde_json::json!({}),
        )
        .await
        .map_err(|e| VmError::Unavailable(format!("destination {}: {e}", dest.name)))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(org: Option<&str>, project: Option<&str>, admin: bool) -> Caller {
        Caller {
            subject: "u".into(),
            org: org.map(Into::into),
            project: project.map(Into::into),
            admin,
            kind: if admin { "admin" } else { "user" }.into(),
            permissions: vec!["plasmavmc.vm.get".into()],
        }
    }

    #[test]
    fn names() {
        assert!(check_name("VM", "web-1").is_ok());
        for bad in ["", "Web", "1web", "web_1", "web 1", &"a".repeat(64)] {
            assert!(check_name("VM", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn scopes() {
        let op = Scope::of(&caller(None, None, true)).unwrap();
        assert!(op.operator && op.sees("o-1", "p-1") && op.filter().is_none());
        let t = Scope::of(&caller(Some("o-1"), Some("p-1"), false)).unwrap();
        assert!(t.sees("o-1", "p-1"));
        assert!(!t.sees("o-1", "p-2"), "another project of the same org");
        assert!(!t.sees("o-2", "p-1"));
        assert_eq!(t.filter(), Some(("o-1", "p-1")));
        assert!(matches!(
            Scope::of(&caller(None, None, false)),
            Err(VmError::Denied(_))
        ));
        assert!(require(&caller(Some("o"), None, false), "plasmavmc.vm.create").is_err());
        assert!(require(&caller(Some("o"), None, false), "plasmavmc.vm.get").is_ok());
    }

    #[test]
    fn pages() {
        let full = page(vec![1, 2, 3], 3, |i| i.to_string());
        assert_eq!(full.next_page_token.as_deref(), Some("3"));
        let last = page(vec![1, 2], 3, |i| i.to_string());
        assert_eq!(last.next_page_token, None);
    }
}
