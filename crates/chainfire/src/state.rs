//! The replicated state: the MVCC store plus the cluster id, applied through uc-raft, with
//! every applied batch of events broadcast to this node's watchers.

use std::sync::{Arc, RwLock, RwLockReadGuard};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use uc_raft::App;

use crate::mvcc::{Command, CommandResult, Event, MvccError, Store};

/// What goes through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChainfireCommand {
    Kv(Command),
    /// Proposed once by the first leader, so every member reports the same cluster id.
    SetClusterId(u64),
}

/// The state machine's answer to one command.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Applied {
    /// The store revision after the command.
    pub revision: i64,
    pub result: Option<Result<CommandResult, MvccError>>,
}

/// What watchers receive after each apply.
#[derive(Debug)]
pub enum WatchFeed {
    /// Events of one revision.
    Events { revision: i64, events: Vec<Event> },
    /// The state was replaced (snapshot installed): re-read history from the store.
    Reset,
}

#[derive(Serialize, Deserialize, Default)]
struct Persisted {
    cluster_id: u64,
    store: Store,
}

pub struct ChainfireState {
    inner: RwLock<Persisted>,
    feed: broadcast::Sender<Arc<WatchFeed>>,
}

impl Default for ChainfireState {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainfireState {
    pub fn new() -> Self {
        let (feed, _) = broadcast::channel(4096);
        Self {
            inner: RwLock::new(Persisted::default()),
            feed,
        }
    }

    /// Read access to the store (hold briefly: writers wait).
    pub fn store(&self) -> StoreGuard<'_> {
        StoreGuard(self.inner.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn cluster_id(&self) -> u64 {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .cluster_id
    }

    /// Size of the state as a snapshot, in bytes (reported as etcd's `dbSize`).
    pub fn snapshot_size_estimate(&self) -> usize {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        postcard::experimental::serialized_size(&*inner).unwrap_or(0)
    }

    /// Subscribes to applied events. Subscribe *before* reading history from the store, so
    /// nothing falls between the two.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<WatchFeed>> {
        self.feed.subscribe()
    }
}

pub struct StoreGuard<'a>(RwLockReadGuard<'a, Persisted>);

impl std::ops::Deref for StoreGuard<'_> {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.0.store
    }
}

impl App for ChainfireState {
    type Request = ChainfireCommand;
    type Response = Applied;

    fn apply(&self, _index: u64, request: &ChainfireCommand) -> Applied {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        match request {
            ChainfireCommand::SetClusterId(id) => {
                if inner.cluster_id == 0 {
                    inner.cluster_id = *id;
                }
                Applied {
                    revision: inner.store.current_revision(),
                    result: None,
                }
            }
            ChainfireCommand::Kv(command) => {
                let (result, events) = inner.store.apply(command);
                let revision = inner.store.current_revision();
                if !events.is_empty() {
                    // Sent under the write lock: a watcher that subscribed and then read the
                    // store under the read lock cannot miss or reorder events.
                    let _ = self
                        .feed
                        .send(Arc::new(WatchFeed::Events { revision, events }));
                }
                Applied {
                    revision,
                    result: Some(result),
                }
            }
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        postcard::to_stdvec(&*inner).expect("in-memory state serializes")
    }

    fn restore(&self, data: &[u8]) -> Result<(), String> {
        let restored: Persisted =
            postcard::from_bytes(data).map_err(|e| format!("invalid chainfire snapshot: {e}"))?;
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        *inner = restored;
        let _ = self.feed.send(Arc::new(WatchFeed::Reset));
        Ok(())
    }
}

const BACKUP_MAGIC: &[u8; 8] = b"UCCFSNP1";

/// A chainfire backup: a magic, the snapshot's length, the snapshot, zero padding to a multiple
/// of 512 bytes, then the SHA-256 of all that. The shape follows etcd's snapshot stream (page-
/// aligned data plus a SHA-256 trailer), which `etcdctl snapshot save` checks for, and a
/// truncated or altered file is detected on restore.
pub fn seal_backup(data: Vec<u8>) -> Vec<u8> {
    use sha2::Digest;
    let mut out = Vec::with_capacity(data.len() + 512 + 32);
    out.extend_from_slice(BACKUP_MAGIC);
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend_from_slice(&data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    let digest = sha2::Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}

/// Checks a backup's trailer and returns the snapshot bytes.
pub fn open_backup(mut file: Vec<u8>) -> Result<Vec<u8>, String> {
    use sha2::Digest;
    if file.len() < 16 + 32
        || !(file.len() - 32).is_multiple_of(512)
        || !file.starts_with(BACKUP_MAGIC)
    {
        return Err("not a chainfire snapshot (wrong size or header)".into());
    }
    let trailer = file.split_off(file.len() - 32);
    if sha2::Sha256::digest(&file).as_slice() != trailer.as_slice() {
        return Err("backup checksum mismatch: the file is truncated or corrupted".into());
    }
    let len = u64::from_le_bytes(file[8..16].try_into().expect("8 bytes")) as usize;
    if 16 + len > file.len() {
        return Err("backup length field is inconsistent".into());
    }
    let data = file[16..16 + len].to_vec();
    // Make sure it decodes before anyone builds a cluster from it.
    postcard::from_bytes::<Persisted>(&data)
        .map_err(|e| format!("invalid chainfire snapshot: {e}"))?;
    Ok(data)
}

/// The snapshot bytes for seeding a *new* cluster from a backup: same keyspace, cluster id
/// cleared so the new cluster's first leader assigns its own.
pub fn for_new_cluster(snapshot: &[u8]) -> Result<Vec<u8>, String> {
    let mut p: Persisted = postcard::from_bytes(snapshot).map_err(|e| e.to_string())?;
    p.cluster_id = 0;
    postcard::to_stdvec(&p).map_err(|e| e.to_string())
}

/// Summary of a backup, for `snapshot status`-like output.
pub fn backup_summary(snapshot: &[u8]) -> Result<(u64, i64, usize), String> {
    let p: Persisted = postcard::from_bytes(snapshot).map_err(|e| e.to_string())?;
    Ok((
        p.cluster_id,
        p.store.current_revision(),
        p.store.key_count(),
    ))
}

#[cfg(test)]
mod backup_tests {
    use super::*;

    #[test]
    fn backups_round_trip_and_detect_damage() {
        let state = ChainfireState::new();
        let sealed = seal_backup(uc_raft::App::snapshot(&state));
        assert_eq!((sealed.len() - 32) % 512, 0, "etcdctl's hasChecksum rule");
        let data = open_backup(sealed.clone()).unwrap();
        assert_eq!(data, uc_raft::App::snapshot(&state));
        let mut damaged = sealed.clone();
        damaged[20] ^= 1;
        assert!(open_backup(damaged).unwrap_err().contains("checksum"));
        assert!(open_backup(sealed[..sealed.len() - 1].to_vec()).is_err());
        assert!(open_backup(b"hello".to_vec()).is_err());
    }
}
