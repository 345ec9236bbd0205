//! The application state machine and its adapter to openraft: applied log id and membership
//! tracking, and snapshots built, persisted (atomically, fsync'd), streamed and installed.

use std::fmt::Debug;
use std::io::{self, Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StoredMembership,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::types::{NodeId, PeerNode, TypeConfig};

/// What an application replicates. Implementations keep their state behind their own lock;
/// uc-raft never calls `apply` and `snapshot` at the same time, so a snapshot sees a state
/// that matches the applied log id exactly.
pub trait App: Send + Sync + 'static {
    type Request: Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static;
    type Response: Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static;

    /// Applies one committed request. Must be deterministic: every replica applies the same
    /// requests in the same order and must end in the same state.
    fn apply(&self, index: u64, request: &Self::Request) -> Self::Response;

    /// The whole state, serialized.
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the whole state with a snapshot's.
    fn restore(&self, data: &[u8]) -> Result<(), String>;

    /// Called after each batch of applied entries with the last applied index (e.g. to wake
    /// readers waiting for an index). Default: nothing.
    fn applied(&self, _index: u64) {}
}

type Meta = SnapshotMeta<NodeId, PeerNode>;

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: Meta,
    data: Vec<u8>,
}

struct SmState {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, PeerNode>,
    snapshots_built: u64,
}

struct Shared<A: App> {
    app: Arc<A>,
    state: Mutex<SmState>,
    path: PathBuf,
}

impl<A: App> Shared<A> {
    fn state(&self) -> MutexGuard<'_, SmState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) struct StateMachineStore<A: App> {
    shared: Arc<Shared<A>>,
}

fn sm_error(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageError::from_io_error(
        ErrorSubject::StateMachine,
        verb,
        io::Error::other(e.to_string()),
    )
}

impl<A: App> StateMachineStore<A> {
    /// Loads the last persisted snapshot (if any) into the app.
    pub(crate) fn open(dir: &Path, app: Arc<A>) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("snapshot.bin");
        let mut state = SmState {
            last_applied: None,
            membership: StoredMembership::default(),
            snapshots_built: 0,
        };
        if let Some(file) = read_snapshot_file(&path)? {
            app.restore(&file.data).map_err(io::Error::other)?;
            state.last_applied = file.meta.last_log_id;
            state.membership = file.meta.last_membership;
            tracing::info!(last_applied = ?state.last_applied, "state restored from snapshot");
        }
        Ok(Self {
            shared: Arc::new(Shared {
                app,
                state: Mutex::new(state),
                path,
            }),
        })
    }
}

fn read_snapshot_file(path: &Path) -> io::Result<Option<SnapshotFile>> {
    match std::fs::read(path) {
        Ok(bytes) => postcard::from_bytes(&bytes)
            .map(Some)
            .map_err(|e| io::Error::other(format!("corrupt snapshot {}: {e}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn write_snapshot_file(path: &Path, file: &SnapshotFile) -> io::Result<()> {
    let bytes = postcard::to_stdvec(file).map_err(io::Error::other)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

pub(crate) struct SnapshotBuilder<A: App> {
    shared: Arc<Shared<A>>,
}

impl<A: App> RaftSnapshotBuilder<TypeConfig<A>> for SnapshotBuilder<A> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig<A>>, StorageError<NodeId>> {
        let file = {
            // Holding the state lock keeps `apply` out: data and log id match.
            let mut state = self.shared.state();
            state.snapshots_built += 1;
            let data = self.shared.app.snapshot();
            let snapshot_id = match state.last_applied {
                Some(id) => format!("{}-{}-{}", id.leader_id, id.index, state.snapshots_built),
                None => format!("none-{}", state.snapshots_built),
            };
            SnapshotFile {
                meta: Meta {
                    last_log_id: state.last_applied,
                    last_membership: state.membership.clone(),
                    snapshot_id,
                },
                data,
            }
        };
        let path = self.shared.path.clone();
        let file =
            tokio::task::spawn_blocking(move || write_snapshot_file(&path, &file).map(|()| file))
                .await
                .map_err(|e| sm_error(ErrorVerb::Write, e))?
                .map_err(|e| sm_error(ErrorVerb::Write, e))?;
        tracing::info!(snapshot = %file.meta.snapshot_id, bytes = file.data.len(), "snapshot built");
        Ok(Snapshot {
            meta: file.meta,
            snapshot: Box::new(Cursor::new(file.data)),
        })
    }
}

impl<A: App> RaftStateMachine<TypeConfig<A>> for StateMachineStore<A> {
    type SnapshotBuilder = SnapshotBuilder<A>;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, PeerNode>), StorageError<NodeId>>
    {
        let state = self.shared.state();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<A::Response>>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig<A>>> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut responses = Vec::new();
        let last = {
            let mut state = self.shared.state();
            for entry in entries {
                state.last_applied = Some(entry.log_id);
                let response = match entry.payload {
                    EntryPayload::Blank => Vec::new(),
                    EntryPayload::Normal(ref batch) => batch
                        .iter()
                        .map(|request| self.shared.app.apply(entry.log_id.index, request))
                        .collect(),
                    EntryPayload::Membership(membership) => {
                        state.membership = StoredMembership::new(Some(entry.log_id), membership);
                        Vec::new()
                    }
                };
                responses.push(response);
            }
            state.last_applied.map(|id| id.index)
        };
        if let Some(index) = last {
            self.shared.app.applied(index);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        {
            let mut state = self.shared.state();
            self.shared
                .app
                .restore(&data)
                .map_err(|e| sm_error(ErrorVerb::Write, e))?;
            state.last_applied = meta.last_log_id;
            state.membership = meta.last_membership.clone();
        }
        if let Some(id) = meta.last_log_id {
            self.shared.app.applied(id.index);
        }
        let path = self.shared.path.clone();
        let file = SnapshotFile {
            meta: meta.clone(),
            data,
        };
        tokio::task::spawn_blocking(move || write_snapshot_file(&path, &file))
            .await
            .map_err(|e| sm_error(ErrorVerb::Write, e))?
            .map_err(|e| sm_error(ErrorVerb::Write, e))?;
        tracing::info!(snapshot = %meta.snapshot_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig<A>>>, StorageError<NodeId>> {
        let path = self.shared.path.clone();
        let file = tokio::task::spawn_blocking(move || read_snapshot_file(&path))
            .await
            .map_err(|e| sm_error(ErrorVerb::Read, e))?
            .map_err(|e| sm_error(ErrorVerb::Read, e))?;
        Ok(file.map(|f| Snapshot {
            meta: f.meta,
            snapshot: Box::new(Cursor::new(f.data)),
        }))
    }
}

/// Prepares an empty directory to start a member of a *new* cluster from an application
/// snapshot (whole-cluster restore): every member is seeded with the same data and the same
/// founding membership, as if both had been committed at log index 1, and elects a leader
/// when started.
pub fn seed_from_snapshot(
    dir: &Path,
    app_data: Vec<u8>,
    members: std::collections::BTreeMap<NodeId, PeerNode>,
) -> io::Result<()> {
    use openraft::{CommittedLeaderId, Membership};
    if dir.join("snapshot.bin").exists() || dir.join("raft-log.redb").exists() {
        return Err(io::Error::other(format!(
            "{} already holds Raft state; restore into an empty directory",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir)?;
    let log_id = LogId::new(CommittedLeaderId::new(1, 0), 1);
    let voters = members.keys().copied().collect();
    let membership = Membership::new(vec![voters], members);
    let file = SnapshotFile {
        meta: Meta {
            last_log_id: Some(log_id),
            last_membership: StoredMembership::new(Some(log_id), membership),
            snapshot_id: "restored".to_owned(),
        },
        data: app_data,
    };
    write_snapshot_file(&dir.join("snapshot.bin"), &file)?;
    crate::log_store::seed_purged(dir, log_id)
}
