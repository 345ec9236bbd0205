//! The Raft log and vote on redb.
//!
//! Every mutation goes through one writer thread, which commits everything queued since its
//! last commit in one redb transaction: one fsync acknowledges a whole batch of appends (group
//! commit), so throughput under concurrency is not bounded by one fsync per write. An append is
//! acknowledged to openraft (its `LogFlushed` callback) only after that commit is durable.
//! The non-purged log is also kept in memory, so replication reads never touch the disk.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogId, StorageError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::state_machine::App;
use crate::types::{NodeId, TypeConfig};

type Entry<A> = openraft::Entry<TypeConfig<A>>;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

type Done = Box<dyn FnOnce(Result<(), String>) + Send>;

enum Job {
    Append(Vec<(u64, Vec<u8>)>, Done),
    Truncate(u64, Done),
    Purge(u64, Vec<u8>),
    Meta(&'static str, Vec<u8>, Option<Done>),
    /// Commit what came before, close the database, then confirm.
    Stop(Done),
}

struct Cache<A: App> {
    entries: BTreeMap<u64, Entry<A>>,
    last_purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
}

/// The log store; cloning shares it (openraft uses a clone as the log reader).
pub struct LogStore<A: App> {
    cache: Arc<Mutex<Cache<A>>>,
    writer: mpsc::Sender<Job>,
}

impl<A: App> Clone for LogStore<A> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            writer: self.writer.clone(),
        }
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, io::Error> {
    postcard::to_stdvec(value).map_err(io::Error::other)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, io::Error> {
    postcard::from_bytes(bytes).map_err(io::Error::other)
}

impl<A: App> LogStore<A> {
    /// Opens (or creates) `<dir>/raft-log.redb` and loads the log into memory.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let db = Database::create(dir.join("raft-log.redb")).map_err(io::Error::other)?;
        let mut cache = Cache {
            entries: BTreeMap::new(),
            last_purged: None,
            vote: None,
            committed: None,
        };
        {
            // Make sure both tables exist, then read them.
            let txn = db.begin_write().map_err(io::Error::other)?;
            txn.open_table(LOG).map_err(io::Error::other)?;
            txn.open_table(META).map_err(io::Error::other)?;
            txn.commit().map_err(io::Error::other)?;
            let read = db.begin_read().map_err(io::Error::other)?;
            let meta = read.open_table(META).map_err(io::Error::other)?;
            if let Some(v) = meta.get(VOTE).map_err(io::Error::other)? {
                cache.vote = Some(decode(v.value())?);
            }
            if let Some(v) = meta.get(COMMITTED).map_err(io::Error::other)? {
                cache.committed = decode(v.value())?;
            }
            if let Some(v) = meta.get(LAST_PURGED).map_err(io::Error::other)? {
                cache.last_purged = decode(v.value())?;
            }
            let log = read.open_table(LOG).map_err(io::Error::other)?;
            for item in log.iter().map_err(io::Error::other)? {
                let (k, v) = item.map_err(io::Error::other)?;
                cache.entries.insert(k.value(), decode(v.value())?);
            }
        }
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || {
                let stopped = writer_loop(&db, rx);
                drop(db);
                if let Some(done) = stopped {
                    done(Ok(()));
                }
            })?;
        Ok(Self {
            cache: Arc::new(Mutex::new(cache)),
            writer: tx,
        })
    }

    /// Flushes what is queued and closes the database (so it can be opened again in this
    /// process). Later writes fail.
    pub async fn close(&self) {
        let _ = self.submit_and_wait(Job::Stop).await;
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache<A>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn submit(&self, job: Job) -> Result<(), io::Error> {
        self.writer
            .send(job)
            .map_err(|_| io::Error::other("raft log writer has stopped"))
    }

    /// Submits a job and waits until it is durable.
    async fn submit_and_wait(&self, make: impl FnOnce(Done) -> Job) -> Result<(), io::Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(make(Box::new(move |r| {
            let _ = tx.send(r);
        })))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io::Error::other(e)),
            Err(_) => Err(io::Error::other("raft log writer has stopped")),
        }
    }
}

impl Job {
    /// Whether someone waits for this job to be durable. Jobs nobody waits for (the
    /// committed index, purges) ride along with the next commit that fsyncs anyway, instead
    /// of costing a commit of their own.
    fn needs_sync(&self) -> bool {
        matches!(
            self,
            Job::Append(..) | Job::Truncate(..) | Job::Meta(_, _, Some(_)) | Job::Stop(_)
        )
    }
}

/// Runs until every sender is gone or a `Stop` arrives (whose confirmation it returns).
fn writer_loop(db: &Database, rx: mpsc::Receiver<Job>) -> Option<Done> {
    let mut lazy: Vec<Job> = Vec::new();
    while let Ok(first) = rx.recv() {
        // Earlier lazy jobs first: the order of jobs is the order of the calls.
        let mut batch = std::mem::take(&mut lazy);
        let mut stop = None;
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Stop(done) => {
                    stop = Some(done);
                    break;
                }
                job => batch.push(job),
            }
            if batch.len() >= 4096 {
                break;
            }
            next = rx.try_recv().ok();
        }
        if stop.is_none() && !batch.iter().any(Job::needs_sync) {
            lazy = batch;
            continue;
        }
        let started = std::time::Instant::now();
        let result = commit_batch(db, &batch).map_err(|e| e.to_string());
        tracing::trace!(
            jobs = batch.len(),
            micros = started.elapsed().as_micros() as u64,
            "raft log commit"
        );
        if let Err(e) = &result {
            tracing::error!(error = %e, "raft log commit failed");
        }
        for job in batch {
            match job {
                Job::Append(_, done) | Job::Truncate(_, done) => done(result.clone()),
                Job::Meta(_, _, Some(done)) => done(result.clone()),
                Job::Meta(_, _, None) | Job::Purge(..) | Job::Stop(_) => {}
            }
        }
        if stop.is_some() {
            return stop;
        }
    }
    if !lazy.is_empty() {
        let _ = commit_batch(db, &lazy);
    }
    None
}

fn commit_batch(db: &Database, batch: &[Job]) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut log = txn.open_table(LOG)?;
        let mut meta = txn.open_table(META)?;
        for job in batch {
            match job {
                Job::Append(entries, _) => {
                    for (index, bytes) in entries {
                        log.insert(*index, bytes.as_slice())?;
                    }
                }
                Job::Truncate(from, _) => {
                    log.retain_in(*from.., |_, _| false)?;
                }
                Job::Purge(upto, log_id) => {
                    log.retain_in(..=*upto, |_, _| false)?;
                    meta.insert(LAST_PURGED, log_id.as_slice())?;
                }
                Job::Meta(key, value, _) => {
                    meta.insert(*key, value.as_slice())?;
                }
                Job::Stop(_) => {}
            }
        }
    }
    txn.commit()?;
    Ok(())
}

fn storage_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: io::Error,
) -> StorageError<NodeId> {
    StorageError::from_io_error(subject, verb, e)
}

impl<A: App> RaftLogReader<TypeConfig<A>> for LogStore<A> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<A>>, StorageError<NodeId>> {
        Ok(self
            .cache()
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl<A: App> RaftLogStorage<TypeConfig<A>> for LogStore<A> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig<A>>, StorageError<NodeId>> {
        let cache = self.cache();
        let last = cache
            .entries
            .values()
            .next_back()
            .map(|e| *e.get_log_id())
            .or(cache.last_purged);
        Ok(LogState {
            last_purged_log_id: cache.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let bytes =
            encode(vote).map_err(|e| storage_error(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        // Durable before returning: a vote forgotten after a crash could vote twice in a term.
        self.submit_and_wait(|done| Job::Meta(VOTE, bytes, Some(done)))
            .await
            .map_err(|e| storage_error(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        self.cache().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.cache().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Not required to be durable: it only lets a restarted node re-apply sooner.
        let bytes = encode(&committed)
            .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, e))?;
        self.cache().committed = committed;
        self.submit(Job::Meta(COMMITTED, bytes, None))
            .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.cache().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig<A>>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<A>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        {
            let mut cache = self.cache();
            for entry in entries {
                let index = entry.get_log_id().index;
                let bytes = encode(&entry)
                    .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Write, e))?;
                encoded.push((index, bytes));
                cache.entries.insert(index, entry);
            }
        }
        self.submit(Job::Append(
            encoded,
            Box::new(move |result| callback.log_io_completed(result.map_err(io::Error::other))),
        ))
        .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Write, e))
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.cache().entries.split_off(&log_id.index);
        self.submit_and_wait(|done| Job::Truncate(log_id.index, done))
            .await
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let bytes = encode(&Some(log_id))
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        {
            let mut cache = self.cache();
            let keep = cache.entries.split_off(&(log_id.index + 1));
            cache.entries = keep;
            cache.last_purged = Some(log_id);
        }
        self.submit(Job::Purge(log_id.index, bytes))
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}

/// Creates a log database whose log starts after `log_id` (everything up to it is covered by
/// a snapshot).
pub(crate) fn seed_purged(dir: &Path, log_id: LogId<NodeId>) -> io::Result<()> {
    let db = Database::create(dir.join("raft-log.redb")).map_err(io::Error::other)?;
    let txn = db.begin_write().map_err(io::Error::other)?;
    {
        txn.open_table(LOG).map_err(io::Error::other)?;
        let mut meta = txn.open_table(META).map_err(io::Error::other)?;
        let purged = encode(&Some(log_id))?;
        meta.insert(LAST_PURGED, purged.as_slice())
            .map_err(io::Error::other)?;
        meta.insert(COMMITTED, purged.as_slice())
            .map_err(io::Error::other)?;
    }
    txn.commit().map_err(io::Error::other)?;
    Ok(())
}
