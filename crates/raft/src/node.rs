//! [`RaftNode`]: one member of one Raft group, with the operations components need.

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, Raft, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use uc_runtime::Secret;

use crate::log_store::LogStore;
use crate::network::{
    ADMIN, AdminOp, CallError, FORWARD, ForwardError, NetworkFactory, PeerHandler, PeerHttp,
    READ_INDEX, peer_routes,
};
use crate::state_machine::{App, StateMachineStore};
use crate::types::{NodeId, PeerNode, TypeConfig};

/// Raft timing and log-retention settings (a component's `[<component>.raft]` section).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RaftTuning {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_every_entries: u64,
    /// Entries kept after a snapshot, so a briefly absent follower catches up from the log.
    pub entries_kept_after_snapshot: u64,
    /// Most entries in one AppendEntries request.
    pub max_payload_entries: u64,
    /// How long a write or read barrier may wait for a leader/quorum before failing.
    pub request_timeout_ms: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            snapshot_every_entries: 10_000,
            entries_kept_after_snapshot: 5_000,
            max_payload_entries: 512,
            request_timeout_ms: 10_000,
        }
    }
}

pub struct RaftNodeConfig {
    pub id: NodeId,
    /// Names the group in logs and metrics (`chainfire`, `flaredb/<namespace>`).
    pub group: String,
    /// Where the log and snapshots live.
    pub dir: PathBuf,
    pub tuning: RaftTuning,
    /// Bearer token peers present to each other.
    pub peer_token: Secret<String>,
    /// Extra CA to trust for peers' TLS.
    pub peer_ca_file: Option<PathBuf>,
}

/// Why a write or read barrier failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// No leader could be reached in time; nothing was written.
    #[error("no leader")]
    NoLeader,
    /// The request was sent but its outcome is unknown (timeout, leader lost mid-write).
    #[error("outcome unknown: {0}")]
    Unknown(String),
    #[error("{0}")]
    Failed(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: NodeId,
    pub node: PeerNode,
    pub voter: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Membership {
    pub members: Vec<MemberInfo>,
    /// True while a membership change is in its joint phase.
    pub changing: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RaftStatus {
    pub id: NodeId,
    pub group: String,
    pub state: String,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub purged_index: u64,
}

type Reply<T> = tokio::sync::oneshot::Sender<Result<T, ForwardError>>;

struct Inner<A: App> {
    id: NodeId,
    group: String,
    raft: Raft<TypeConfig<A>>,
    peers: PeerHttp,
    timeout: Duration,
    log: LogStore<A>,
    /// Writes waiting to be proposed together (see [`run_write_batcher`]).
    writes: tokio::sync::mpsc::UnboundedSender<(A::Request, Reply<A::Response>)>,
    /// Reads waiting for a read index (see [`run_read_index_batcher`]).
    read_indexes: tokio::sync::mpsc::UnboundedSender<Reply<u64>>,
}

/// Most requests in one log entry.
const MAX_BATCH: usize = 1024;
/// Batches proposed at once: one being flushed locally while the previous is replicated.
const BATCHES_IN_FLIGHT: usize = 2;

/// Proposes writes in batches: whatever arrived while earlier batches were in flight becomes
/// the next log entry. Under load an entry carries many requests; a lone write goes out at
/// once.
async fn run_write_batcher<A: App>(
    inner: std::sync::Weak<Inner<A>>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(A::Request, Reply<A::Response>)>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            let (requests, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            let count = requests.len();
            match inner.propose_batch(requests).await {
                Ok(responses) if responses.len() == count => {
                    for (reply, response) in replies.into_iter().zip(responses) {
                        let _ = reply.send(Ok(response));
                    }
                }
                Ok(responses) => {
                    let e = ForwardError::Failed(format!(
                        "state machine answered {} of {count} requests",
                        responses.len()
                    ));
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
            drop(permit);
        });
    }
}

/// Serves read-index requests in rounds: every request waiting when a round starts is answered
/// by that round (its index is at least what each of them needs, since the round began after
/// they arrived); requests arriving during a round wait for the next. One leadership check
/// (and, on a follower, one call to the leader) serves many reads.
async fn run_read_index_batcher<A: App>(
    inner: std::sync::Weak<Inner<A>>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Reply<u64>>,
) {
    while let Some(first) = rx.recv().await {
        let mut waiting = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let result = inner.read_index_round().await;
        for reply in waiting {
            let _ = reply.send(result.clone());
        }
    }
}

/// One member of a Raft group. Cheap to clone.
pub struct RaftNode<A: App> {
    inner: Arc<Inner<A>>,
}

impl<A: App> Clone for RaftNode<A> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<A: App> RaftNode<A> {
    /// Opens the log and the last snapshot under `config.dir` and starts Raft. The node does
    /// nothing until it is initialized ([`RaftNode::initialize`]) or contacted by a leader.
    pub async fn start(config: RaftNodeConfig, app: Arc<A>) -> Result<Self, String> {
        let t = &config.tuning;
        let raft_config = openraft::Config {
            cluster_name: config.group.clone(),
            heartbeat_interval: t.heartbeat_interval_ms,
            election_timeout_min: t.election_timeout_min_ms,
            election_timeout_max: t.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(t.snapshot_every_entries),
            max_in_snapshot_log_to_keep: t.entries_kept_after_snapshot,
            max_payload_entries: t.max_payload_entries,
            install_snapshot_timeout: 10_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| format!("raft settings: {e}"))?;
        let log = LogStore::<A>::open(&config.dir).map_err(|e| format!("raft log: {e}"))?;
        let sm =
            StateMachineStore::open(&config.dir, app).map_err(|e| format!("raft state: {e}"))?;
        let peers = PeerHttp::new(config.peer_token, config.peer_ca_file.as_deref())?;
        let network = NetworkFactory::<A> {
            peers: peers.clone(),
            _app: PhantomData,
        };
        let raft = Raft::new(config.id, Arc::new(raft_config), network, log.clone(), sm)
            .await
            .map_err(|e| format!("raft: {e}"))?;

        tokio::spawn(promote_caught_up_learners(raft.clone()));

        let mut metrics = raft.metrics();
        let group = config.group.clone();
        tokio::spawn(async move {
            loop {
                crate::metrics::record(&group, &metrics.borrow_and_update());
                if metrics.changed().await.is_err() {
                    break;
                }
            }
        });

        let (writes, write_rx) = tokio::sync::mpsc::unbounded_channel();
        let (read_indexes, read_rx) = tokio::sync::mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            id: config.id,
            group: config.group,
            raft,
            peers,
            timeout: Duration::from_millis(t.request_timeout_ms),
            log,
            writes,
            read_indexes,
        });
        tokio::spawn(run_write_batcher(Arc::downgrade(&inner), write_rx));
        tokio::spawn(run_read_index_batcher(Arc::downgrade(&inner), read_rx));
        Ok(Self { inner })
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub fn raft(&self) -> &Raft<TypeConfig<A>> {
        &self.inner.raft
    }

    /// The routes peers call; mount them on the component's raft listener (behind auth).
    pub fn peer_routes(&self) -> Router {
        peer_routes::<A, Inner<A>>(self.inner.clone())
    }

    /// Forms a new cluster from `members` if this node has never been initialized; a no-op
    /// for a node with state. Every founding member may call it with the same set.
    pub async fn initialize(&self, members: BTreeMap<NodeId, PeerNode>) -> Result<(), String> {
        if self
            .inner
            .raft
            .is_initialized()
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(());
        }
        match self.inner.raft.initialize(members).await {
            Ok(()) => Ok(()),
            // Another founder's initialization reached us first.
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Replicates a request and returns the state machine's response. Forwards to the leader
    /// when this node is not it, retrying only when the request was certainly not accepted.
    pub async fn write(&self, request: A::Request) -> Result<A::Response, WriteError> {
        let deadline = Instant::now() + self.inner.timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let leader = match self.inner.local_write(request.clone(), remaining).await {
                Ok(response) => return Ok(response),
                Err(ForwardError::NotLeader { leader }) => leader,
                Err(ForwardError::Unknown(m)) => return Err(WriteError::Unknown(m)),
                Err(ForwardError::Failed(m)) => return Err(WriteError::Failed(m)),
            };
            if let Some((leader_id, node)) = leader.filter(|(id, _)| *id != self.inner.id) {
                let answer: Result<Result<A::Response, ForwardError>, CallError> = self
                    .inner
                    .peers
                    .call(
                        &node.peer_url,
                        FORWARD,
                        &request,
                        remaining.max(Duration::from_millis(100)),
                    )
                    .await;
                match answer {
                    Ok(Ok(response)) => return Ok(response),
                    Ok(Err(ForwardError::NotLeader { .. })) | Err(CallError::Unreachable(_)) => {}
                    Ok(Err(ForwardError::Unknown(m))) | Err(CallError::Unknown(m)) => {
                        tracing::debug!(leader_id, error = %m, "forwarded write outcome unknown");
                        return Err(WriteError::Unknown(m));
                    }
                    Ok(Err(ForwardError::Failed(m))) => return Err(WriteError::Failed(m)),
                }
            }
            if Instant::now() >= deadline {
                return Err(WriteError::NoLeader);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until this node's state machine reflects every write committed before the call
    /// (ReadIndex): afterwards a local read is linearizable. Works on followers by asking the
    /// leader for its read index.
    pub async fn read_barrier(&self) -> Result<(), WriteError> {
        let deadline = Instant::now() + self.inner.timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.inner.read_index(remaining).await {
                Ok(index) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    return self
                        .inner
                        .raft
                        .wait(Some(remaining.max(Duration::from_millis(1))))
                        .applied_index_at_least(Some(index), "read barrier")
                        .await
                        .map(|_| ())
                        .map_err(|_| WriteError::NoLeader);
                }
                Err(ForwardError::Failed(m)) => return Err(WriteError::Failed(m)),
                // No leader yet, or it changed: reads may always be retried.
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                return Err(WriteError::NoLeader);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Adds a member (as a learner, or directly as a voter), on the leader.
    pub async fn add_member(
        &self,
        id: NodeId,
        node: PeerNode,
        voter: bool,
    ) -> Result<(), WriteError> {
        self.admin(AdminOp::Add { id, node, voter }).await
    }

    /// Makes a learner a voter.
    pub async fn promote(&self, id: NodeId) -> Result<(), WriteError> {
        self.admin(AdminOp::Promote { id }).await
    }

    /// Removes a member (voter or learner) from the group.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), WriteError> {
        self.admin(AdminOp::Remove { id }).await
    }

    /// Changes a member's addresses.
    pub async fn update_member(&self, id: NodeId, node: PeerNode) -> Result<(), WriteError> {
        self.admin(AdminOp::SetNode { id, node }).await
    }

    async fn admin(&self, op: AdminOp) -> Result<(), WriteError> {
        let deadline = Instant::now() + self.inner.timeout;
        loop {
            let leader = match self.inner.local_admin(op.clone()).await {
                Ok(()) => return Ok(()),
                Err(ForwardError::NotLeader { leader }) => leader,
                Err(ForwardError::Unknown(m)) => return Err(WriteError::Unknown(m)),
                Err(ForwardError::Failed(m)) => return Err(WriteError::Failed(m)),
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            if let Some((_, node)) = leader.filter(|(id, _)| *id != self.inner.id) {
                let answer: Result<Result<(), ForwardError>, CallError> = self
                    .inner
                    .peers
                    .call(
                        &node.peer_url,
                        ADMIN,
                        &op,
                        remaining.max(Duration::from_millis(100)),
                    )
                    .await;
                match answer {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(ForwardError::NotLeader { .. })) | Err(CallError::Unreachable(_)) => {}
                    Ok(Err(ForwardError::Unknown(m))) | Err(CallError::Unknown(m)) => {
                        return Err(WriteError::Unknown(m));
                    }
                    Ok(Err(ForwardError::Failed(m))) => return Err(WriteError::Failed(m)),
                }
            }
            if Instant::now() >= deadline {
                return Err(WriteError::NoLeader);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `request` to the current leader's peer route `path` (for component-specific calls
    /// that only the leader can answer, such as lease keep-alives). Waits for a leader; never
    /// calls this node itself (check [`RaftNode::is_leader`] first).
    pub async fn call_leader<Req, Resp>(
        &self,
        path: &str,
        request: &Req,
    ) -> Result<Resp, WriteError>
    where
        Req: Serialize,
        Resp: serde::de::DeserializeOwned,
    {
        let deadline = Instant::now() + self.inner.timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if let Some((_, node)) = self
                .inner
                .leader_hint()
                .filter(|(id, _)| *id != self.inner.id)
            {
                match self
                    .inner
                    .peers
                    .call(
                        &node.peer_url,
                        path,
                        request,
                        remaining.max(Duration::from_millis(100)),
                    )
                    .await
                {
                    Ok(answer) => return Ok(answer),
                    Err(CallError::Unreachable(_)) => {}
                    Err(CallError::Unknown(m)) => return Err(WriteError::Unknown(m)),
                }
            }
            if Instant::now() >= deadline {
                return Err(WriteError::NoLeader);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn membership(&self) -> Membership {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        let config = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = config.voter_ids().collect();
        Membership {
            members: config
                .nodes()
                .map(|(id, node)| MemberInfo {
                    id: *id,
                    node: node.clone(),
                    voter: voters.contains(id),
                })
                .collect(),
            changing: config.get_joint_config().len() > 1,
        }
    }

    pub fn status(&self) -> RaftStatus {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        RaftStatus {
            id: self.inner.id,
            group: self.inner.group.clone(),
            state: format!("{:?}", m.state).to_lowercase(),
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            purged_index: m.purged.map(|l| l.index).unwrap_or(0),
        }
    }

    /// The current term (cheap: no allocation, unlike [`RaftNode::status`]).
    pub fn term(&self) -> u64 {
        self.inner.raft.metrics().borrow().current_term
    }

    pub fn is_leader(&self) -> bool {
        self.inner.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Waits for a change of leadership-related metrics (for tasks that act on leadership).
    pub fn metrics(&self) -> tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, PeerNode>> {
        self.inner.raft.metrics()
    }

    /// Stops Raft and closes the log (the directory can be opened again afterwards).
    pub async fn shutdown(&self) {
        let _ = self.inner.raft.shutdown().await;
        self.inner.log.close().await;
    }
}

impl<A: App> Inner<A> {
    fn leader_hint(&self) -> Option<(NodeId, PeerNode)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, node))
    }

    fn believes_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// A write through this node's batcher (which answers NotLeader when it does not lead).
    async fn local_write(
        &self,
        request: A::Request,
        timeout: Duration,
    ) -> Result<A::Response, ForwardError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.writes
            .send((request, tx))
            .map_err(|_| ForwardError::Failed("raft node is shutting down".into()))?;
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(ForwardError::Unknown("timed out waiting for commit".into())),
            Ok(Err(_)) => Err(ForwardError::Unknown("raft node stopped mid-write".into())),
            Ok(Ok(result)) => result,
        }
    }

    /// Replicates one batch as one log entry.
    async fn propose_batch(
        &self,
        requests: Vec<A::Request>,
    ) -> Result<Vec<A::Response>, ForwardError> {
        let was_leader = self.believes_leader();
        match tokio::time::timeout(self.timeout, self.raft.client_write(requests)).await {
            Err(_) => Err(ForwardError::Unknown("timed out waiting for commit".into())),
            Ok(Ok(response)) => Ok(response.data),
            // Rejected on entry: nothing was appended, so the caller may retry elsewhere.
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) if !was_leader => {
                Err(ForwardError::NotLeader {
                    leader: f.leader_id.zip(f.leader_node),
                })
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Err(
                ForwardError::Unknown("leadership changed while the write was in flight".into()),
            ),
            Ok(Err(e)) => Err(ForwardError::Failed(e.to_string())),
        }
    }

    /// A read index for a read that starts now, through the round-based batcher.
    async fn read_index(&self, timeout: Duration) -> Result<u64, ForwardError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.read_indexes
            .send(tx)
            .map_err(|_| ForwardError::Failed("raft node is shutting down".into()))?;
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(ForwardError::Unknown(
                "timed out waiting for a read index".into(),
            )),
            Ok(Err(_)) => Err(ForwardError::Unknown("raft node stopped".into())),
            Ok(Ok(result)) => result,
        }
    }

    /// One round: the leader confirms its leadership; a follower asks the leader.
    async fn read_index_round(&self) -> Result<u64, ForwardError> {
        match self.local_read_index(self.timeout).await {
            Err(ForwardError::NotLeader { leader }) => {
                let Some((_, node)) = leader.filter(|(id, _)| *id != self.id) else {
                    return Err(ForwardError::NotLeader { leader: None });
                };
                let answer: Result<Result<u64, ForwardError>, CallError> = self
                    .peers
                    .call(&node.peer_url, READ_INDEX, &(), self.timeout)
                    .await;
                match answer {
                    Ok(result) => result,
                    Err(e) => Err(ForwardError::Unknown(e.to_string())),
                }
            }
            other => other,
        }
    }

    async fn local_read_index(&self, timeout: Duration) -> Result<u64, ForwardError> {
        match tokio::time::timeout(timeout, self.raft.get_read_log_id()).await {
            Err(_) => Err(ForwardError::Unknown(
                "timed out confirming leadership".into(),
            )),
            Ok(Ok((read_log_id, _))) => Ok(read_log_id.map(|l| l.index).unwrap_or(0)),
            Ok(Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(
                f,
            )))) => Err(ForwardError::NotLeader {
                leader: f.leader_id.zip(f.leader_node),
            }),
            Ok(Err(RaftError::APIError(e))) => Err(ForwardError::Unknown(e.to_string())),
            Ok(Err(e)) => Err(ForwardError::Failed(e.to_string())),
        }
    }

    /// Runs a membership operation on the leader. Changes are serialized by Raft: while a
    /// previous one (e.g. an automatic promotion) is still in its joint phase, wait for it.
    async fn local_admin(&self, op: AdminOp) -> Result<(), ForwardError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.local_admin_once(op.clone()).await {
                Err(ForwardError::Failed(m))
                    if m.starts_with(MEMBERSHIP_CHANGE_IN_PROGRESS)
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }

    async fn local_admin_once(&self, op: AdminOp) -> Result<(), ForwardError> {
        if !self.believes_leader() {
            return Err(ForwardError::NotLeader {
                leader: self.leader_hint(),
            });
        }
        let result = match op {
            AdminOp::Add {
                id,
                node,
                voter: false,
            } => self.raft.add_learner(id, node, false).await,
            AdminOp::Add {
                id,
                node,
                voter: true,
            } => {
                let node = PeerNode {
                    promote_when_caught_up: true,
                    ..node
                };
                self.raft.add_learner(id, node, false).await
            }
            AdminOp::Promote { id } => {
                if !caught_up(&self.raft.metrics().borrow(), id) {
                    return Err(ForwardError::Failed(format!(
                        "learner {id:x} is not in sync with the leader"
                    )));
                }
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
            }
            AdminOp::Remove { id } => {
                let is_voter = self
                    .raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .voter_ids()
                    .any(|v| v == id);
                if is_voter {
                    self.raft
                        .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                        .await
                } else {
                    self.raft
                        .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                        .await
                }
            }
            AdminOp::SetNode { id, node } => {
                self.raft
                    .change_membership(ChangeMembers::SetNodes(BTreeMap::from([(id, node)])), false)
                    .await
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ForwardError::NotLeader {
                    leader: f.leader_id.zip(f.leader_node),
                })
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                openraft::error::ChangeMembershipError::InProgress(e),
            ))) => Err(ForwardError::Failed(format!(
                "{MEMBERSHIP_CHANGE_IN_PROGRESS}: {e}"
            ))),
            Err(e) => Err(ForwardError::Failed(e.to_string())),
        }
    }
}

const MEMBERSHIP_CHANGE_IN_PROGRESS: &str = "another membership change is in progress";

/// A learner is caught up when it has replicated all but the last few entries.
const CAUGHT_UP_LAG: u64 = 64;

fn caught_up(m: &openraft::RaftMetrics<NodeId, PeerNode>, id: NodeId) -> bool {
    let Some(replication) = &m.replication else {
        return false;
    };
    let matched = replication.get(&id).copied().flatten().map(|l| l.index);
    let last = m.last_log_index.unwrap_or(0);
    matched.is_some_and(|i| i + CAUGHT_UP_LAG >= last)
}

/// On the leader: promotes learners that were added as voters once they have caught up.
async fn promote_caught_up_learners<A: App>(raft: Raft<TypeConfig<A>>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let ready: BTreeSet<NodeId> = {
            let metrics = raft.metrics();
            let m = metrics.borrow();
            if m.running_state.is_err() {
                return;
            }
            if m.state != ServerState::Leader
                || m.membership_config.membership().get_joint_config().len() > 1
            {
                continue;
            }
            let membership = m.membership_config.membership();
            membership
                .learner_ids()
                .filter(|id| {
                    membership
                        .get_node(id)
                        .is_some_and(|n| n.promote_when_caught_up)
                        && caught_up(&m, *id)
                })
                .collect()
        };
        if ready.is_empty() {
            continue;
        }
        tracing::info!(?ready, "promoting caught-up learners to voters");
        if let Err(e) = raft
            .change_membership(ChangeMembers::AddVoterIds(ready), false)
            .await
        {
            tracing::warn!(error = %e, "promotion failed; will retry");
        }
    }
}

impl<A: App> PeerHandler<A> for Inner<A> {
    fn raft(&self) -> &Raft<TypeConfig<A>> {
        &self.raft
    }

    async fn forward(&self, request: A::Request) -> Result<A::Response, ForwardError> {
        self.local_write(request, self.timeout).await
    }

    async fn read_index(&self) -> Result<u64, ForwardError> {
        // Only the leader answers (no forwarding chains); concurrent askers share rounds.
        if !self.believes_leader() {
            return Err(ForwardError::NotLeader {
                leader: self.leader_hint(),
            });
        }
        Inner::read_index(self, self.timeout).await
    }

    async fn admin(&self, op: AdminOp) -> Result<(), ForwardError> {
        self.local_admin(op).await
    }
}
