//! The controller's core: volume records in flaredb (KV, compare-and-set on every change),
//! placement on registered nodes, and the state machine
//! `creating → available ⇄ attached`, `→ deleting → (gone)`, `creating → error`.
//!
//! Keys in the namespace:
//! - `v/<org>/<project>/<id>`: the volume record (a tenant's list is one prefix scan);
//! - `vid/<id>`: `<org>/<project>` of a volume (lookup by id);
//! - `sid/<snapshot id>`: the volume id a snapshot belongs to;
//! - `idem/<org>/<project>/<key>`: the volume an idempotency key created;
//! - `n/<node>`: a registered node.
//!
//! Every operation writes its intent to the record before it calls the node, so a crash
//! leaves a state the reconciler (or the caller's retry) finishes: `creating` is created
//! again (node creation is idempotent), `deleting` is deleted again, an export without an
//! attachment is stopped, an attachment without an export is exported again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use flaredb::client::{FlaredbClient, FlaredbError};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use uc_runtime::auth::Principal;
use uc_runtime::client::ClientOptions;

use crate::api::*;
use crate::client::NodeClient;
use crate::error::{CoronafsError, Result, from_node};
use crate::node::{check_id, check_size};

/// The record stored per volume: the API view plus what the controller needs to finish an
/// interrupted operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    volume: Volume,
    /// The size asked for at creation (`None`: the source's).
    requested_size: Option<u64>,
    idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct IdemEntry {
    id: String,
    /// The request it was first used with; the same key with another request is refused.
    request: String,
}

pub struct ControllerSettings {
    pub max_volume_bytes: u64,
    pub node_liveness: Duration,
    /// Options (service token, CA) for calls to nodes.
    pub node_client: ClientOptions,
}

pub struct Controller {
    db: FlaredbClient,
    s: ControllerSettings,
    locks: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn new_id(prefix: &str) -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &hex[..16])
}

fn store(e: FlaredbError) -> CoronafsError {
    match e {
        FlaredbError::VersionConflict(_) => {
            CoronafsError::Conflict("the volume changed concurrently; retry".into())
        }
        e => {
            tracing::warn!(error = %e, "coronafs store");
            CoronafsError::Unavailable(format!("coronafs store: {e}"))
        }
    }
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(CoronafsError::Invalid(format!(
            "name `{name}`: 1-63 letters, digits, '-', '_' or '.'"
        )))
    }
}

/// A key component may not contain '/'.
fn check_scope_part(what: &str, v: &str) -> Result<()> {
    if v.is_empty() || v.contains('/') || v.len() > 128 {
        return Err(CoronafsError::Invalid(format!("{what} `{v}` is not valid")));
    }
    Ok(())
}

const NO_PROJECT: &str = "-";

impl Controller {
    pub fn new(db: FlaredbClient, s: ControllerSettings) -> Arc<Self> {
        Arc::new(Self {
            db,
            s,
            locks: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Checks that the store answers (start-up).
    pub async fn ping(&self) -> Result<()> {
        self.db.kv_get("n/").await.map_err(store).map(|_| ())
    }

    fn lock_for(&self, id: &str) -> Arc<Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    fn node_client(&self, node: &NodeView) -> Result<NodeClient> {
        NodeClient::new(&node.url, self.s.node_client.clone())
            .map_err(|e| CoronafsError::Internal(e.to_string()))
    }

    // ---- nodes

    pub async fn register_node(&self, caller: &Principal, req: RegisterNode) -> Result<NodeView> {
        if !caller.admin {
            return Err(CoronafsError::NotFound("no such route for tenants".into()));
        }
        check_name(&req.name)?;
        let view = NodeView {
            name: req.name.clone(),
            url: req.url,
            nbd_host: req.nbd_host,
            free_bytes: req.free_bytes,
            tls: req.tls,
            last_seen: now(),
            live: true,
        };
        self.db
            .kv_put_json(&format!("n/{}", req.name), &view, None)
            .await
            .map_err(store)?;
        Ok(view)
    }

    pub async fn list_nodes(&self) -> Result<Vec<NodeView>> {
        let items = self.db.kv_list("n/").await.map_err(store)?;
        let horizon = now() - self.s.node_liveness.as_secs() as i64;
        Ok(items
            .into_iter()
            .filter_map(|i| serde_json::from_str::<NodeView>(&i.value).ok())
            .map(|mut n| {
                n.live = n.last_seen >= horizon;
                n
            })
            .collect())
    }

    async fn node(&self, name: &str) -> Result<NodeView> {
        self.db
            .kv_get_json::<NodeView>(&format!("n/{name}"))
            .await
            .map_err(store)?
            .map(|(n, _)| n)
            .ok_or_else(|| {
                CoronafsError::Unavailable(format!("storage node {name} is not registered"))
            })
    }

    /// The live node with the most free space.
    async fn place(&self, size: u64) -> Result<NodeView> {
        self.list_nodes()
            .await?
            .into_iter()
            .filter(|n| n.live)
            .max_by_key(|n| n.free_bytes)
            .filter(|n| n.free_bytes >= size.min(1 << 30))
            .ok_or_else(|| {
                CoronafsError::Unavailable("no live storage node with free space".into())
            })
    }

    // ---- records

    fn key(org: &str, project: &str, id: &str) -> String {
        format!("v/{org}/{project}/{id}")
    }

    async fn load(&self, id: &str) -> Result<Option<(Record, i64)>> {
        let Some(scope) = self.db.kv_get(&format!("vid/{id}")).await.map_err(store)? else {
            return Ok(None);
        };
        let Some((org, project)) = scope.value.split_once('/') else {
            return Ok(None);
        };
        let found = self
            .db
            .kv_get_json::<Record>(&Self::key(org, project, id))
            .await
            .map_err(store)?;
        Ok(found.map(|(mut r, v)| {
            r.volume.version = v;
            (r, v)
        }))
    }

    /// A volume the caller may see (another tenant's is "not found").
    async fn visible(&self, caller: &Principal, id: &str) -> Result<(Record, i64)> {
        let missing = || CoronafsError::NotFound(format!("volume {id} not found"));
        if check_id("volume", id).is_err() {
            return Err(missing());
        }
        let (r, v) = self.load(id).await?.ok_or_else(missing)?;
        if caller.admin {
            return Ok((r, v));
        }
        let same_org = caller.org.as_deref() == Some(r.volume.org.as_str());
        let same_project = match &caller.project {
            Some(p) => *p == r.volume.project,
            None => true,
        };
        if same_org && same_project {
            Ok((r, v))
        } else {
            Err(missing())
        }
    }

    async fn save(&self, r: &mut Record, version: i64) -> Result<i64> {
        r.volume.updated_at = now();
        let key = Self::key(&r.volume.org, &r.volume.project, &r.volume.id);
        let v = self
            .db
            .kv_put_json(&key, r, Some(version))
            .await
            .map_err(store)?;
        r.volume.version = v;
        Ok(v)
    }

    async fn forget(&self, r: &Record) -> Result<()> {
        let vol = &r.volume;
        for s in &vol.snapshots {
            self.db
                .kv_delete(&format!("sid/{}", s.id))
                .await
                .map_err(store)?;
        }
        if let Some(key) = &r.idempotency_key {
            self.db
                .kv_delete(&format!("idem/{}/{}/{key}", vol.org, vol.project))
                .await
                .map_err(store)?;
        }
        self.db
            .kv_delete(&Self::key(&vol.org, &vol.project, &vol.id))
            .await
            .map_err(store)?;
        self.db
            .kv_delete(&format!("vid/{}", vol.id))
            .await
            .map_err(store)?;
        Ok(())
    }

    // ---- volumes

    fn scope_for_create(caller: &Principal, req: &CreateVolume) -> Result<(String, String)> {
        if caller.admin {
            let org = req.org.clone().unwrap_or_else(|| "operator".into());
            let project = req.project.clone().unwrap_or_else(|| NO_PROJECT.into());
            check_scope_part("org", &org)?;
            check_scope_part("project", &project)?;
            return Ok((org, project));
        }
        let org = caller
            .org
            .clone()
            .ok_or_else(|| CoronafsError::Invalid("the token has no organization".into()))?;
        let project = caller.project.clone().unwrap_or_else(|| NO_PROJECT.into());
        if req.org.as_ref().is_some_and(|o| *o != org)
            || req.project.as_ref().is_some_and(|p| *p != project)
        {
            return Err(CoronafsError::Invalid(
                "org/project may only be chosen by the operator; a tenant's volumes belong to its token's scope"
                    .into(),
            ));
        }
        if req.node.is_some() {
            return Err(CoronafsError::Invalid(
                "node placement may only be chosen by the operator".into(),
            ));
        }
        Ok((org, project))
    }

    pub async fn create_volume(
        &self,
        caller: &Principal,
        req: CreateVolume,
        idempotency_key: Option<String>,
    ) -> Result<Volume> {
        caller.require("coronafs.volume.create").map_err(denied)?;
        check_name(&req.name)?;
        if let Some(size) = req.size_bytes {
            check_size(size, self.s.max_volume_bytes)?;
        }
        if let Some(key) = &idempotency_key
            && (key.is_empty() || key.len() > 200 || key.contains('/'))
        {
            return Err(CoronafsError::Invalid(
                "Idempotency-Key: 1-200 characters, no '/'".into(),
            ));
        }
        let (org, project) = Self::scope_for_create(caller, &req)?;

        // Where the bytes come from decides where the volume can live.
        let (pinned_node, min_size) = match &req.source {
            VolumeSource::Blank => {
                if req.size_bytes.is_none() {
                    return Err(CoronafsError::Invalid(
                        "size_bytes is required for a blank volume".into(),
                    ));
                }
                (None, 0)
            }
            VolumeSource::Image { location } => {
                if location.is_empty() || location.len() > 4096 {
                    return Err(CoronafsError::Invalid(
                        "image location is empty or too long".into(),
                    ));
                }
                (None, 0)
            }
            VolumeSource::Snapshot { snapshot_id } => {
                let (owner, snap) = self.find_snapshot(caller, snapshot_id).await?;
                (Some(owner.volume.node.clone()), snap.size_bytes)
            }
        };
        if let Some(size) = req.size_bytes
            && size < min_size
        {
            return Err(CoronafsError::Invalid(format!(
                "size_bytes {size} is smaller than the snapshot ({min_size} bytes); volumes only grow"
            )));
        }

        // The idempotency key names the volume before anything else is written, so a retry
        // after a crash finds (and finishes) the same volume.
        let fingerprint = serde_json::to_string(&req).unwrap_or_default();
        let mut id = new_id("vol");
        if let Some(key) = &idempotency_key {
            let idem_key = format!("idem/{org}/{project}/{key}");
            let entry = IdemEntry {
                id: id.clone(),
                request: fingerprint.clone(),
            };
            match self.db.kv_put_json(&idem_key, &entry, Some(0)).await {
                Ok(_) => {}
                Err(FlaredbError::VersionConflict(_)) => {
                    let (existing, _) = self
                        .db
                        .kv_get_json::<IdemEntry>(&idem_key)
                        .await
                        .map_err(store)?
                        .ok_or_else(|| {
                            CoronafsError::Conflict("idempotency key in flux; retry".into())
                        })?;
                    if existing.request != fingerprint {
                        return Err(CoronafsError::Conflict(
                            "this Idempotency-Key was used with a different request".into(),
                        ));
                    }
                    if let Some((r, v)) = self.load(&existing.id).await? {
                        return self.finish_create(r, v).await;
                    }
                    id = existing.id;
                }
                Err(e) => return Err(store(e)),
            }
        }

        let placed = match (&pinned_node, &req.node) {
            (Some(n), Some(asked)) if n != asked => {
                return self
                    .abandon_idem(
                        &org,
                        &project,
                        &idempotency_key,
                        CoronafsError::Invalid(format!(
                            "a clone of this snapshot must live on node {n}"
                        )),
                    )
                    .await;
            }
            (Some(n), _) | (None, Some(n)) => self.node(n).await,
            (None, None) => self.place(req.size_bytes.unwrap_or(0)).await,
        };
        let node = match placed {
            Ok(n) => n,
            Err(e) => return self.abandon_idem(&org, &project, &idempotency_key, e).await,
        };
        let t = now();
        let mut record = Record {
            volume: Volume {
                id: id.clone(),
                name: req.name.clone(),
                org: org.clone(),
                project: project.clone(),
                size_bytes: req.size_bytes.unwrap_or(0),
                format: req.format,
                state: VolumeState::Creating,
                node: node.name.clone(),
                source: req.source.clone(),
                multi_attach: req.multi_attach,
                attachments: Vec::new(),
                snapshots: Vec::new(),
                error: None,
                created_at: t,
                updated_at: t,
                version: 0,
            },
            requested_size: req.size_bytes,
            idempotency_key: idempotency_key.clone(),
        };
        self.db
            .kv_put(&format!("vid/{id}"), &format!("{org}/{project}"), None)
            .await
            .map_err(store)?;
        let v = self.save(&mut record, 0).await?;
        self.finish_create(record, v).await
    }

    async fn abandon_idem<T>(
        &self,
        org: &str,
        project: &str,
        key: &Option<String>,
        e: CoronafsError,
    ) -> Result<T> {
        if let Some(key) = key {
            let _ = self
                .db
                .kv_delete(&format!("idem/{org}/{project}/{key}"))
                .await;
        }
        Err(e)
    }

    fn node_request(r: &Record) -> NodeCreateVolume {
        NodeCreateVolume {
            size_bytes: r.requested_size,
            format: r.volume.format,
            source: match &r.volume.source {
                VolumeSource::Blank => NodeSource::Blank,
                VolumeSource::Image { location } => NodeSource::Image {
                    location: location.clone(),
                },
                VolumeSource::Snapshot { snapshot_id } => NodeSource::Snapshot {
                    snapshot_id: snapshot_id.clone(),
                },
            },
        }
    }

    /// Drives a `creating` record to `available`: the node's refusal removes the record
    /// (nothing half-created); an unreachable node leaves it `creating` for a retry.
    async fn finish_create(&self, mut r: Record, v: i64) -> Result<Volume> {
        if r.volume.state != VolumeState::Creating {
            return Ok(r.volume);
        }
        let lock = self.lock_for(&r.volume.id);
        let _guard = lock.lock().await;
        let node = self.node(&r.volume.node).await?;
        let client = self.node_client(&node)?;
        match client
            .put_volume(&r.volume.id, &Self::node_request(&r))
            .await
        {
            Ok(nv) => {
                r.volume.size_bytes = nv.size_bytes;
                r.volume.state = VolumeState::Available;
                self.save(&mut r, v).await?;
                tracing::info!(volume = %r.volume.id, node = %node.name, "volume available");
                Ok(r.volume)
            }
            Err(e) => {
                let e = from_node(&node.name, e);
                if matches!(e, CoronafsError::Unavailable(_)) {
                    return Err(CoronafsError::Unavailable(format!(
                        "{e}; volume {} stays `creating` and is finished by a retry or the reconciler",
                        r.volume.id
                    )));
                }
                // Refused: make sure nothing is left on the node, then forget the record.
                let _ = client.delete_volume(&r.volume.id).await;
                self.forget(&r).await?;
                Err(e)
            }
        }
    }

    pub async fn get_volume(&self, caller: &Principal, id: &str) -> Result<Volume> {
        let (r, _) = self.visible(caller, id).await?;
        caller.require("coronafs.volume.get").map_err(denied)?;
        Ok(r.volume)
    }

    pub async fn list_volumes(
        &self,
        caller: &Principal,
        page_size: Option<u32>,
        page_token: Option<&str>,
    ) -> Result<Page<Volume>> {
        caller.require("coronafs.volume.list").map_err(denied)?;
        let prefix = if caller.admin {
            "v/".to_owned()
        } else {
            let org = caller
                .org
                .as_deref()
                .ok_or_else(|| CoronafsError::Invalid("the token has no organization".into()))?;
            match &caller.project {
                Some(p) => format!("v/{org}/{p}/"),
                None => format!("v/{org}/"),
            }
        };
        let limit = page_size.unwrap_or(100).clamp(1, MAX_PAGE_SIZE);
        let page = self
            .db
            .kv_scan(&prefix, limit, page_token)
            .await
            .map_err(|e| match e {
                FlaredbError::Client(c) if c.status() == Some(400) => {
                    CoronafsError::Invalid("page_token is not valid".into())
                }
                e => store(e),
            })?;
        let items = page
            .items
            .into_iter()
            .filter_map(|i| {
                let mut r: Record = serde_json::from_str(&i.value).ok()?;
                r.volume.version = i.version;
                Some(r.volume)
            })
            .collect();
        Ok(Page {
            items,
            next_page_token: page.next_page_token,
        })
    }

    pub async fn delete_volume(&self, caller: &Principal, id: &str) -> Result<()> {
        let (_, _) = self.visible(caller, id).await?;
        caller.require("coronafs.volume.delete").map_err(denied)?;
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        let (mut r, v) = self
            .load(id)
            .await?
            .ok_or_else(|| CoronafsError::NotFound(format!("volume {id} not found")))?;
        if !r.volume.attachments.is_empty() {
            return Err(CoronafsError::Conflict(format!(
                "volume {id} is attached to {}; detach it first",
                r.volume
                    .attachments
                    .iter()
                    .map(|a| a.worker.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if r.volume.state == VolumeState::Creating {
            return Err(CoronafsError::Conflict(format!(
                "volume {id} is still being created"
            )));
        }
        if r.volume.state != VolumeState::Deleting {
            r.volume.state = VolumeState::Deleting;
            self.save(&mut r, v).await?;
        }
        self.finish_delete(&r).await
    }

    async fn finish_delete(&self, r: &Record) -> Result<()> {
        let node = self.node(&r.volume.node).await?;
        self.node_client(&node)?
            .delete_volume(&r.volume.id)
            .await
            .map_err(|e| from_node(&node.name, e))?;
        self.forget(r).await?;
        tracing::info!(volume = %r.volume.id, "volume deleted");
        Ok(())
    }

    pub async fn resize_volume(&self, caller: &Principal, id: &str, size: u64) -> Result<Volume> {
        self.visible(caller, id).await?;
        caller.require("coronafs.volume.update").map_err(denied)?;
        check_size(size, self.s.max_volume_bytes)?;
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        let (mut r, v) = self
            .load(id)
            .await?
            .ok_or_else(|| CoronafsError::NotFound(format!("volume {id} not found")))?;
        usable(&r.volume)?;
        if size < r.volume.size_bytes {
            return Err(CoronafsError::Invalid(format!(
                "volumes only grow: {size} < current {} bytes",
                r.volume.size_bytes
            )));
        }
        if size == r.volume.size_bytes {
            return Ok(r.volume);
        }
        let node = self.node(&r.volume.node).await?;
        let nv = self
            .node_client(&node)?
            .resize_volume(id, size)
            .await
            .map_err(|e| from_node(&node.name, e))?;
        r.volume.size_bytes = nv.size_bytes;
        self.save(&mut r, v).await?;
        Ok(r.volume)
    }

    // ---- snapshots

    async fn find_snapshot(
        &self,
        caller: &Principal,
        snapshot_id: &str,
    ) -> Result<(Record, Snapshot)> {
        let missing = || CoronafsError::NotFound(format!("snapshot {snapshot_id} not found"));
        check_id("snapshot", snapshot_id).map_err(|_| missing())?;
        let vid = self
            .db
            .kv_get(&format!("sid/{snapshot_id}"))
            .await
            .map_err(store)?
            .ok_or_else(missing)?
            .value;
        let (r, _) = self.visible(caller, &vid).await.map_err(|_| missing())?;
        let snap = r
            .volume
            .snapshots
            .iter()
            .find(|s| s.id == snapshot_id)
            .cloned()
            .ok_or_else(missing)?;
        Ok((r, snap))
    }

    pub async fn create_snapshot(
        &self,
        caller: &Principal,
        id: &str,
        req: CreateSnapshot,
    ) -> Result<Snapshot> {
        self.visible(caller, id).await?;
        caller.require("coronafs.volume.snapshot").map_err(denied)?;
        check_name(&req.name)?;
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        let (mut r, v) = self
            .load(id)
            .await?
            .ok_or_else(|| CoronafsError::NotFound(format!("volume {id} not found")))?;
        usable(&r.volume)?;
        if r.volume.snapshots.iter().any(|s| s.name == req.name) {
            return Err(CoronafsError::Conflict(format!(
                "volume {id} already has a snapshot named {}",
                req.name
            )));
        }
        let sid = new_id("snap");
        self.db
            .kv_put(&format!("sid/{sid}"), id, Some(0))
            .await
            .map_err(store)?;
        let node = self.node(&r.volume.node).await?;
        let ns = match self.node_client(&node)?.put_snapshot(id, &sid).await {
            Ok(ns) => ns,
            Err(e) => {
                let _ = self.db.kv_delete(&format!("sid/{sid}")).await;
                return Err(from_node(&node.name, e));
            }
        };
        let snap = Snapshot {
            id: sid,
            volume_id: id.to_owned(),
            name: req.name,
            size_bytes: ns.size_bytes,
            format: ns.format,
            created_at: now(),
        };
        r.volume.snapshots.push(snap.clone());
        self.save(&mut r, v).await?;
        Ok(snap)
    }

    pub async fn delete_snapshot(&self, caller: &Principal, id: &str, sid: &str) -> Result<()> {
        self.visible(caller, id).await?;
        caller.require("coronafs.volume.snapshot").map_err(denied)?;
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        let (mut r, v) = self
            .load(id)
            .await?
            .ok_or_else(|| CoronafsError::NotFound(format!("volume {id} not found")))?;
        if !r.volume.snapshots.iter().any(|s| s.id == sid) {
            return Err(CoronafsError::NotFound(format!("snapshot {sid} not found")));
        }
        let node = self.node(&r.volume.node).await?;
        self.node_client(&node)?
            .delete_snapshot(id, sid)
            .await
            .map_err(|e| from_node(&node.name, e))?;
        r.volume.snapshots.retain(|s| s.id != sid);
        self.save(&mut r, v).await?;
        self.db
            .kv_delete(&format!("sid/{sid}"))
            .await
            .map_err(store)?;
        Ok(())
    }

    // ---- attachments

    pub async fn attach(
        &self,
        caller: &Principal,
        id: &str,
        req: AttachVolume,
    ) -> Result<AttachInfo> {
        self.visible(caller, id).await?;
        caller.require("coronafs.volume.attach").map_err(denied)?;
        check_name(&req.worker)?;
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        let (mut r, v) = self
            .load(id)
            .await?
            .ok_or_else(|| CoronafsError::NotFound(format!("volume {id} not found")))?;
        usable(&r.volume)?;
        let node = self.node(&r.volume.node).await?;
        let client = self.node_client(&node)?;
        let existing = r
            .volume
            .attachments
            .iter()
            .find(|a| a.worker == req.worker)
            .cloned();
        let limit = if r.volume.multi_attach { 2 } else { 1 };
        let transport = match &existing {
            Some(a) => a.transport,
            None => {
                if r.volume.attachments.len() >= limit {
                    return Err(CoronafsError::Conflict(format!(
                        "volume {id} is already attached to {} (multi_attach: {})",
                        r.volume.attachments[0].worker, r.volume.multi_attach
                    )));
                }
                if r.volume
                    .attachments
                    .iter()
                    .any(|a| a.transport == Transport::Local)
                {
                    return Err(CoronafsError::Conflict(format!(
                        "volume {id} is opened locally on {}; it cannot be shared",
                        r.volume.node
                    )));
                }
                if req.prefer_local && req.worker == r.volume.node && !r.volume.multi_attach {
                    Transport::Local
                } else {
                    Transport::Nbd
                }
            }
        };
        let nv = client
            .get_volume(id)
            .await
            .map_err(|e| from_node(&node.name, e))?
            .ok_or_else(|| {
                CoronafsError::Unavailable(format!("volume {id} is missing on node {}", node.name))
            })?;
        let export = match transport {
            Transport::Nbd => Some(
                client
                    .put_export(id, limit as u32)
                    .await
                    .map_err(|e| from_node(&node.name, e))?,
            ),
            Transport::Local => None,
        };
        if existing.is_none() {
            r.volume.attachments.push(Attachment {
                worker: req.worker.clone(),
                nbd_url: export.as_ref().map(|e| e.nbd_url.clone()),
                transport,
                attached_at: now(),
            });
            r.volume.state = VolumeState::Attached;
            self.save(&mut r, v).await?;
            tracing::info!(volume = id, worker = %req.worker, ?transport, "attached");
        }
        let local = req.worker == r.volume.node;
        Ok(AttachInfo {
            volume_id: id.to_owned(),
            worker: req.worker,
            transport,
            nbd_url: export.as_ref().map(|e| e.nbd_url.clone()),
            nbd_host: export.as_ref().map(|e| e.host.clone()),
            nbd_port: export.as_ref().map(|e| e.port),
            export_name: export.as_ref().map(|e| e.export_name.clone()),
            tls: export.as_ref().is_some_and(|e| e.tls),
            local_path: local.then_some(nv.path),
            format: r.volume.format,
            export_format: if transport == Transport::Nbd {
                VolumeFormat::Raw
            } else {
                r.volume.format
            },
            size_bytes: r.volume.size_bytes,
        })
    }

    pub async fn detach(&self, caller: &Principal, id: &str, req: DetachVolume) -> Result<Volume> {
        self.visible(caller, id).await?;
        caller.require("coronafs.volume.detach").map_err(denied)?;
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        let (mut r, v) = self
            .load(id)
            .await?
            .ok_or_else(|| CoronafsError::NotFound(format!("volume {id} not found")))?;
        let before = r.volume.attachments.len();
        r.volume.attachments.retain(|a| a.worker != req.worker);
        if r.volume.attachments.len() == before {
            return Ok(r.volume);
        }
        if r.volume.attachments.is_empty() {
            r.volume.state = VolumeState::Available;
        }
        // The record first: a crash after it leaves an export without attachment, which the
        // reconciler stops.
        self.save(&mut r, v).await?;
        if r.volume.attachments.is_empty() {
            let node = self.node(&r.volume.node).await?;
            if let Err(e) = self.node_client(&node)?.delete_export(id).await {
                tracing::warn!(volume = id, error = %e, "cannot stop export now; the reconciler will");
            }
        }
        tracing::info!(volume = id, worker = %req.worker, "detached");
        Ok(r.volume)
    }

    // ---- reconciliation

    /// One pass over every record: finishes interrupted creates and deletes, and makes each
    /// node's exports match the attachments.
    pub async fn reconcile(&self) -> Result<()> {
        let items = self.db.kv_list("v/").await.map_err(store)?;
        for item in items {
            let Ok(r) = serde_json::from_str::<Record>(&item.value) else {
                continue;
            };
            let id = r.volume.id.clone();
            let lock = self.lock_for(&id);
            // Busy: an operation is running on it now.
            let Ok(guard) = lock.try_lock() else { continue };
            let Some((r, v)) = self.load(&id).await? else {
                continue;
            };
            let result = match r.volume.state {
                VolumeState::Creating => {
                    drop(guard);
                    self.finish_create(r, v).await.map(|_| ())
                }
                VolumeState::Deleting => self.finish_delete(&r).await,
                VolumeState::Available | VolumeState::Attached => self.reconcile_export(&r).await,
                VolumeState::Error => Ok(()),
            };
            if let Err(e) = result {
                tracing::debug!(volume = %id, error = %e, "reconcile");
            }
        }
        Ok(())
    }

    async fn reconcile_export(&self, r: &Record) -> Result<()> {
        let node = self.node(&r.volume.node).await?;
        let client = self.node_client(&node)?;
        let id = &r.volume.id;
        let nv = client
            .get_volume(id)
            .await
            .map_err(|e| from_node(&node.name, e))?;
        let Some(nv) = nv else { return Ok(()) };
        let wants_export = r
            .volume
            .attachments
            .iter()
            .any(|a| a.transport == Transport::Nbd);
        match (wants_export, nv.export.is_some()) {
            (false, true) => {
                tracing::info!(volume = %id, "stopping an export without attachment");
                client
                    .delete_export(id)
                    .await
                    .map_err(|e| from_node(&node.name, e))?;
            }
            (true, false) => {
                let shared = if r.volume.multi_attach { 2 } else { 1 };
                tracing::info!(volume = %id, "restoring a missing export");
                client
                    .put_export(id, shared)
                    .await
                    .map_err(|e| from_node(&node.name, e))?;
            }
            _ => {}
        }
        Ok(())
    }
}

fn denied(e: uc_runtime::ApiError) -> CoronafsError {
    CoronafsError::Denied(e.message)
}

/// Operations that need the volume on disk.
fn usable(v: &Volume) -> Result<()> {
    match v.state {
        VolumeState::Available | VolumeState::Attached => Ok(()),
        s => Err(CoronafsError::Conflict(format!(
            "volume {} is {}",
            v.id,
            serde_json::to_value(s)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        ))),
    }
}
