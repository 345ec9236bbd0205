//! The namespaces this node serves: each a Raft group (uc-raft) whose state machine is an
//! in-memory SQLite database, started and stopped as the catalog in chainfire says.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tower::ServiceExt;
use uc_raft::{App, PeerNode, RaftNode, RaftNodeConfig, RaftTuning, WriteError};
use uc_runtime::{ApiError, Secret, Shutdown};

use crate::backend::{self, BoxFuture, ScramSecret, SqlBackend, undefined_namespace};
use crate::catalog::{Catalog, MemberRef, Mode, NamespaceRecord};
use crate::sql::engine::{Engine, SqlCommand, SqlOutcome};
use crate::sql::{Column, SqlError, Statement, StatementResult, sqlstate};

/// What a namespace's Raft log carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum NsRequest {
    Sql(SqlCommand),
    /// Replace the whole database with an image (restore from a backup).
    LoadImage(Vec<u8>),
}

pub(crate) struct NamespaceApp {
    pub engine: Engine,
}

impl App for NamespaceApp {
    type Request = NsRequest;
    type Response = SqlOutcome;

    fn apply(&self, _index: u64, request: &NsRequest) -> SqlOutcome {
        match request {
            NsRequest::Sql(command) => self.engine.apply(command),
            NsRequest::LoadImage(image) => self
                .engine
                .load_image(image)
                .map(|()| Vec::new())
                .map_err(|e| SqlError::new(sqlstate::INTERNAL_ERROR, e)),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        self.engine.image()
    }

    fn restore(&self, data: &[u8]) -> Result<(), String> {
        self.engine.load_image(data)
    }
}

/// One namespace served here.
pub struct Namespace {
    pub name: String,
    pub mode: Mode,
    pub(crate) app: Arc<NamespaceApp>,
    pub(crate) node: RaftNode<NamespaceApp>,
    peer_routes: Router,
    max_request_bytes: usize,
}

fn write_error(e: WriteError) -> SqlError {
    match e {
        WriteError::NoLeader => SqlError::new(
            sqlstate::CANNOT_CONNECT_NOW,
            "no leader for this namespace right now; retry",
        ),
        WriteError::Unknown(m) => SqlError::new(
            sqlstate::CONNECTION_FAILURE,
            format!("the outcome of the write is unknown ({m}); check before retrying"),
        ),
        WriteError::Failed(m) => SqlError::new(sqlstate::INTERNAL_ERROR, m),
    }
}

impl Namespace {
    /// Runs a request as one transaction: reads locally (after a read barrier in `strong`
    /// mode), writes through Raft.
    pub async fn execute(
        &self,
        statements: Vec<Statement>,
    ) -> Result<Vec<StatementResult>, SqlError> {
        let size: usize = statements
            .iter()
            .map(|s| {
                s.sql.len()
                    + s.params
                        .iter()
                        .map(|p| match p {
                            crate::sql::SqlValue::Text(t) => t.len(),
                            crate::sql::SqlValue::Blob { blob } => blob.0.len(),
                            _ => 8,
                        })
                        .sum::<usize>()
            })
            .sum();
        if size > self.max_request_bytes {
            return Err(SqlError::new(
                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "request of {size} bytes exceeds the limit of {} bytes",
                    self.max_request_bytes
                ),
            ));
        }
        if statements.is_empty() {
            return Ok(Vec::new());
        }
        if self.app.engine.is_read_only(&statements) {
            if self.mode == Mode::Strong {
                self.node.read_barrier().await.map_err(write_error)?;
            }
            if let Some(results) = self.app.engine.try_read(&statements)? {
                return Ok(results);
            }
        }
        let command = backend::to_command(&statements)?;
        let outcome = self
            .node
            .write(NsRequest::Sql(command))
            .await
            .map_err(write_error)?;
        Ok(outcome?.into_iter().map(Into::into).collect())
    }

    /// Replaces the namespace's contents with a database image, on every replica.
    pub async fn load_image(&self, image: Vec<u8>) -> Result<(), SqlError> {
        self.node
            .write(NsRequest::LoadImage(image))
            .await
            .map_err(write_error)?
            .map(|_| ())
    }

    /// A consistent image of the namespace (after a read barrier).
    pub async fn image(&self) -> Result<Vec<u8>, SqlError> {
        self.node.read_barrier().await.map_err(write_error)?;
        Ok(self.app.engine.image())
    }

    pub fn tables(&self) -> Vec<(String, String)> {
        self.app.engine.tables()
    }

    /// SHA-256 of all table contents on this replica.
    pub fn checksum(&self) -> String {
        self.app.engine.checksum()
    }

    pub fn raft_status(&self) -> uc_raft::RaftStatus {
        self.node.status()
    }

    pub fn membership(&self) -> uc_raft::Membership {
        self.node.membership()
    }

    /// Adds a flaredb member to this namespace's group: it joins as a learner and becomes a
    /// voter once it has caught up (the leader promotes it).
    pub async fn add_member(&self, member: &MemberRef) -> Result<(), uc_raft::WriteError> {
        self.node
            .add_member(member.id, group_peer(member, &self.name), true)
            .await
    }
}

/// A member's address for one namespace's group (groups share the peer listener under
/// `/ns/<namespace>`).
fn group_peer(member: &MemberRef, namespace: &str) -> PeerNode {
    PeerNode {
        name: member.name.clone(),
        peer_url: format!("{}/ns/{namespace}", member.peer_url),
        ..Default::default()
    }
}

/// This node's view: the flaredb members, and the namespaces it serves.
pub struct Registry {
    pub me: MemberRef,
    pub members: Vec<MemberRef>,
    dir: PathBuf,
    tuning: RaftTuning,
    peer_token: Secret<String>,
    peer_ca_file: Option<PathBuf>,
    max_request_bytes: usize,
    pub catalog: Catalog,
    records: RwLock<HashMap<String, NamespaceRecord>>,
    served: RwLock<HashMap<String, Arc<Namespace>>>,
    /// Namespaces being started or stopped (serializes changes per name).
    changes: tokio::sync::Mutex<()>,
}

pub struct RegistryConfig {
    pub me: MemberRef,
    pub members: Vec<MemberRef>,
    pub dir: PathBuf,
    pub tuning: RaftTuning,
    pub peer_token: Secret<String>,
    pub peer_ca_file: Option<PathBuf>,
    pub max_request_bytes: usize,
    pub catalog: Catalog,
}

impl Registry {
    pub fn new(c: RegistryConfig) -> Arc<Self> {
        Arc::new(Self {
            me: c.me,
            members: c.members,
            dir: c.dir,
            tuning: c.tuning,
            peer_token: c.peer_token,
            peer_ca_file: c.peer_ca_file,
            max_request_bytes: c.max_request_bytes,
            catalog: c.catalog,
            records: RwLock::new(HashMap::new()),
            served: RwLock::new(HashMap::new()),
            changes: tokio::sync::Mutex::new(()),
        })
    }

    pub fn get(&self, name: &str) -> Result<Arc<Namespace>, SqlError> {
        self.served
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| undefined_namespace(name))
    }

    pub fn records(&self) -> Vec<NamespaceRecord> {
        let mut v: Vec<_> = self
            .records
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn record(&self, name: &str) -> Option<NamespaceRecord> {
        self.records
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Waits until this node serves `name` (after a create, the catalog watch starts it).
    pub async fn wait_served(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<Arc<Namespace>, SqlError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(ns) = self.get(name) {
                return Ok(ns);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(undefined_namespace(name));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn group_dir(&self, name: &str) -> PathBuf {
        self.dir.join("ns").join(name)
    }

    async fn ensure_served(&self, record: NamespaceRecord) {
        let _guard = self.changes.lock().await;
        self.records
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(record.name.clone(), record.clone());
        if self.get(&record.name).is_ok() || !record.members.iter().any(|m| m.id == self.me.id) {
            return;
        }
        let app = Arc::new(NamespaceApp {
            engine: Engine::new(),
        });
        let node = match RaftNode::start(
            RaftNodeConfig {
                id: self.me.id,
                group: format!("flaredb/{}", record.name),
                dir: self.group_dir(&record.name),
                tuning: self.tuning.clone(),
                peer_token: self.peer_token.clone(),
                peer_ca_file: self.peer_ca_file.clone(),
            },
            app.clone(),
        )
        .await
        {
            Ok(node) => node,
            Err(e) => {
                tracing::error!(namespace = %record.name, error = %e, "cannot start namespace");
                return;
            }
        };
        let founders: BTreeMap<u64, PeerNode> = record
            .members
            .iter()
            .filter(|m| record.founders.is_empty() || record.founders.contains(&m.id))
            .map(|m| (m.id, group_peer(m, &record.name)))
            .collect();
        let founder = record.founders.is_empty() || record.founders.contains(&self.me.id);
        if founder && let Err(e) = node.initialize(founders).await {
            tracing::error!(namespace = %record.name, error = %e, "cannot initialize namespace");
        }
        let ns = Arc::new(Namespace {
            name: record.name.clone(),
            mode: record.mode,
            peer_routes: node.peer_routes(),
            app,
            node,
            max_request_bytes: self.max_request_bytes,
        });
        self.served
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(record.name.clone(), ns);
        tracing::info!(namespace = %record.name, mode = ?record.mode, "serving namespace");
    }

    async fn stop_serving(&self, name: &str) {
        let _guard = self.changes.lock().await;
        self.records
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        let removed = self
            .served
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        if let Some(ns) = removed {
            ns.node.shutdown().await;
            let dir = self.group_dir(name);
            if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
                tracing::warn!(namespace = name, error = %e, "cannot remove namespace data");
            }
            tracing::info!(namespace = name, "namespace dropped");
        }
    }

    /// Follows the catalog until shutdown: serves every namespace placed on this node and
    /// drops the ones deleted. `synced` fires after the first full listing.
    pub async fn run(
        self: Arc<Self>,
        synced: tokio::sync::watch::Sender<bool>,
        shutdown: Shutdown,
    ) {
        loop {
            let result = self.sync_once(&synced, &shutdown).await;
            if shutdown.is_triggered() {
                break;
            }
            if let Err(e) = result {
                tracing::warn!(error = %e, "namespace catalog unavailable; retrying");
            }
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        let names: Vec<String> = self
            .served
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        for name in names {
            let ns = self
                .served
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&name);
            if let Some(ns) = ns {
                ns.node.shutdown().await;
            }
        }
    }

    async fn sync_once(
        &self,
        synced: &tokio::sync::watch::Sender<bool>,
        shutdown: &Shutdown,
    ) -> Result<(), String> {
        self.catalog
            .register_member(&self.me)
            .await
            .map_err(|e| e.to_string())?;
        let (records, revision) = self.catalog.list().await.map_err(|e| e.to_string())?;
        let names: std::collections::HashSet<String> =
            records.iter().map(|r| r.name.clone()).collect();
        for record in records {
            self.ensure_served(record).await;
        }
        let gone: Vec<String> = self
            .records
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .filter(|n| !names.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            self.stop_serving(&name).await;
        }
        let _ = synced.send(true);
        let mut events = self
            .catalog
            .watch(revision + 1)
            .await
            .map_err(|e| e.to_string())?;
        loop {
            tokio::select! {
                _ = shutdown.wait() => return Ok(()),
                event = events.recv() => match event {
                    Some(Ok((_, Some(record)))) => self.ensure_served(record).await,
                    Some(Ok((name, None))) => self.stop_serving(&name).await,
                    Some(Err(e)) => return Err(e),
                    None => return Err("catalog watch ended".into()),
                }
            }
        }
    }

    /// Routes `/ns/{name}/…` on the peer listener to that namespace's Raft group.
    pub fn peer_router(self: &Arc<Self>) -> Router {
        async fn dispatch(
            State(registry): State<Arc<Registry>>,
            Path((name, rest)): Path<(String, String)>,
            mut request: Request,
        ) -> Response {
            let Ok(ns) = registry.get(&name) else {
                return ApiError::not_found(format!("namespace {name} is not served here"))
                    .into_response();
            };
            let path = format!("/{rest}");
            let Ok(uri) = path.parse() else {
                return ApiError::invalid_argument("bad path").into_response();
            };
            *request.uri_mut() = uri;
            match ns.peer_routes.clone().oneshot(request.map(Body::new)).await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        }
        Router::new()
            .route("/ns/{name}/{*rest}", axum::routing::post(dispatch))
            .with_state(self.clone())
    }
}

impl SqlBackend for Registry {
    fn scram_secret(&self, namespace: &str) -> Option<ScramSecret> {
        self.record(namespace).map(|r| r.secret)
    }

    fn execute<'a>(
        &'a self,
        namespace: &'a str,
        statements: Vec<Statement>,
    ) -> BoxFuture<'a, Result<Vec<StatementResult>, SqlError>> {
        Box::pin(async move { self.get(namespace)?.execute(statements).await })
    }

    fn describe(&self, namespace: &str, sql: &str) -> Result<(usize, Vec<Column>), SqlError> {
        self.get(namespace)?.app.engine.describe(sql)
    }

    fn table_columns(&self, namespace: &str, table: &str) -> Vec<(String, String)> {
        self.get(namespace)
            .map(|ns| ns.app.engine.table_columns(table))
            .unwrap_or_default()
    }
}
