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

struct Inner<A: App> {
    id: NodeId,
    group: String,
    raft: Raft<TypeConfig<A>>,
    peers: PeerHttp,
    timeout: Duration,
    log: LogStore<A>,
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

        Ok(Self {
            inner: Arc::new(Inner {
                id: config.id,
                group: config.group,
                raft,
                peers,
                timeout: Duration::from_millis(t.request_timeout_ms),
                log,
            }),
        })
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
            let index = match self.inner.local_read_index(remaining).await {
                Ok(index) => Some(index),
                Err(ForwardError::NotLeader { leader }) => match leader
                    .filter(|(id, _)| *id != self.inner.id)
                {
                    Some((_, node)) => {
                        let answer: Result<Result<u64, ForwardError>, CallError> = self
                            .inner
                            .peers
                            .call(
                                &node.peer_url,
                                READ_INDEX,
                                &(),
                                remaining.max(Duration::from_millis(100)),
                            )
                            .await;
                        match answer {
                            Ok(Ok(index)) => Some(index),
                            Ok(Err(ForwardError::Failed(m))) => return Err(WriteError::Failed(m)),
                            // Reads may always be retried.
                            _ => None,
                        }
                    }
                    None => None,
                },
                Err(ForwardError::Unknown(_)) => None,
                Err(ForwardError::Failed(m)) => return Err(WriteError::Failed(m)),
            };
            if let Some(index) = index {
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

    async fn local_write(
        &self,
        request: A::Request,
        timeout: Duration,
    ) -> Result<A::Response, ForwardError> {
        let was_leader = self.believes_leader();
        match tokio::time::timeout(timeout, self.raft.client_write(request)).await {
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

    async fn local_admin(&self, op: AdminOp) -> Result<(), ForwardError> {
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
            Err(e) => Err(ForwardError::Failed(e.to_string())),
        }
    }
}

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
        self.local_read_index(self.timeout).await
    }

    async fn admin(&self, op: AdminOp) -> Result<(), ForwardError> {
        self.local_admin(op).await
    }
}
