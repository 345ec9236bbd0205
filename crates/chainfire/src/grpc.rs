//! The etcd v3 gRPC API: KV, Watch, Lease, Cluster, Maintenance and Auth.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};
use uc_raft::{PeerNode, RaftNode, WriteError};
use uc_runtime::Shutdown;

use crate::config::{ChainfireConfig, member_id};
use crate::convert::*;
use crate::etcdpb::etcdserverpb as pb;
use crate::lease::Leases;
use crate::mvcc::{self, Command, CommandResult};
use crate::state::{ChainfireCommand, ChainfireState, WatchFeed};

/// The version chainfire reports in `Status`: the etcd API level it implements.
pub const ETCD_API_VERSION: &str = "3.5.0";

pub(crate) const LEASE_KEEPALIVE_PATH: &str = "/chainfire/v1/lease/keepalive";
pub(crate) const LEASE_TTL_PATH: &str = "/chainfire/v1/lease/ttl";

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Everything the services share.
pub struct Core {
    pub node: RaftNode<ChainfireState>,
    pub state: Arc<ChainfireState>,
    pub leases: Arc<Leases>,
    pub member_id: u64,
    pub config: ChainfireConfig,
    pub shutdown: Shutdown,
    /// Checks the passwords of `Authenticate` (UltraCloud tokens).
    pub auth: Arc<dyn uc_runtime::auth::Authenticator>,
}

pub(crate) fn etcd_error(code: Code, message: &str) -> Status {
    Status::new(code, format!("etcdserver: {message}"))
}

pub(crate) fn write_status(e: WriteError) -> Status {
    match e {
        WriteError::NoLeader => etcd_error(Code::Unavailable, "no leader"),
        WriteError::Unknown(m) => {
            tracing::debug!(error = %m, "request outcome unknown");
            etcd_error(Code::Unavailable, "request timed out")
        }
        WriteError::Failed(m) => Status::new(Code::Internal, m),
    }
}

impl Core {
    pub(crate) fn header(&self, revision: i64) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.state.cluster_id(),
            member_id: self.member_id,
            revision,
            raft_term: self.node.term(),
        }
    }

    fn current_header(&self) -> pb::ResponseHeader {
        let revision = self.state.store().current_revision();
        self.header(revision)
    }

    async fn barrier(&self) -> Result<(), Status> {
        self.node.read_barrier().await.map_err(write_status)
    }

    fn check_size(&self, encoded_len: usize) -> Result<(), Status> {
        if encoded_len > self.config.max_request_bytes {
            return Err(etcd_error(Code::InvalidArgument, "request is too large"));
        }
        Ok(())
    }

    /// Validates, replicates and applies a command; returns the revision after it.
    async fn propose(&self, command: Command) -> Result<(i64, CommandResult), Status> {
        mvcc::validate_command(&command).map_err(mvcc_status)?;
        let applied = self
            .node
            .write(ChainfireCommand::Kv(command))
            .await
            .map_err(write_status)?;
        match applied.result {
            Some(Ok(result)) => Ok((applied.revision, result)),
            Some(Err(e)) => Err(mvcc_status(e)),
            None => Err(Status::internal("command produced no result")),
        }
    }

    fn members(&self) -> Vec<pb::Member> {
        self.node
            .membership()
            .members
            .into_iter()
            .map(|m| pb::Member {
                id: m.id,
                name: m.node.name,
                peer_ur_ls: vec![m.node.peer_url],
                client_ur_ls: m.node.client_urls,
                is_learner: !m.voter,
            })
            .collect()
    }

    /// Asks the leader (this node or another) a lease question.
    async fn ask_leader<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        id: i64,
        local: impl Fn() -> T,
    ) -> Result<T, Status> {
        let deadline =
            std::time::Instant::now() + Duration::from_millis(self.config.raft.request_timeout_ms);
        loop {
            if self.node.is_leader() {
                return Ok(local());
            }
            match self
                .node
                .call_leader::<_, Result<T, String>>(path, &id)
                .await
            {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(_)) => {} // it stopped leading in between: ask the new leader
                Err(e) => return Err(write_status(e)),
            }
            if std::time::Instant::now() >= deadline {
                return Err(etcd_error(Code::Unavailable, "no leader"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Keep-alive on the leader, wherever the request arrived.
    async fn keep_alive(&self, id: i64) -> Result<Option<i64>, Status> {
        self.ask_leader(LEASE_KEEPALIVE_PATH, id, || self.leases.keep_alive(id))
            .await
    }

    async fn time_to_live(&self, id: i64) -> Result<Option<(i64, i64)>, Status> {
        self.ask_leader(LEASE_TTL_PATH, id, || self.leases.time_to_live(id))
            .await
    }
}

#[derive(Clone)]
pub struct Services(pub Arc<Core>);

#[tonic::async_trait]
impl pb::kv_server::Kv for Services {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let core = &self.0;
        let req = range_from_pb(request.into_inner())?;
        mvcc::validate_range(&req).map_err(mvcc_status)?;
        if !req.serializable {
            core.barrier().await?;
        }
        let (result, revision) = {
            let store = core.state.store();
            (store.range(&req), store.current_revision())
        };
        let result = result.map_err(mvcc_status)?;
        Ok(Response::new(range_to_pb(result, core.header(revision))))
    }

    type RangeStreamStream = BoxStream<pb::RangeStreamResponse>;

    async fn range_stream(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        let response = self.range(request).await?.into_inner();
        let item = pb::RangeStreamResponse {
            range_response: Some(response),
        };
        Ok(Response::new(Box::pin(tokio_stream::once(Ok(item)))))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let core = &self.0;
        let req = request.into_inner();
        core.check_size(req.encoded_len())?;
        let (revision, result) = core.propose(Command::Put(put_from_pb(req))).await?;
        match result {
            CommandResult::Put(r) => Ok(Response::new(put_to_pb(r, core.header(revision)))),
            _ => Err(Status::internal("unexpected result")),
        }
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let core = &self.0;
        let req = request.into_inner();
        core.check_size(req.encoded_len())?;
        let (revision, result) = core
            .propose(Command::DeleteRange(delete_from_pb(req)))
            .await?;
        match result {
            CommandResult::DeleteRange(r) => {
                Ok(Response::new(delete_to_pb(r, core.header(revision))))
            }
            _ => Err(Status::internal("unexpected result")),
        }
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let core = &self.0;
        let req = request.into_inner();
        core.check_size(req.encoded_len())?;
        let txn = txn_from_pb(req, core.config.max_txn_ops)?;
        let (revision, result) = core.propose(Command::Txn(txn)).await?;
        match result {
            CommandResult::Txn(r) => Ok(Response::new(txn_to_pb(r, core.header(revision)))),
            _ => Err(Status::internal("unexpected result")),
        }
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let core = &self.0;
        let req = request.into_inner();
        let (revision, _) = core
            .propose(Command::Compact {
                revision: req.revision,
            })
            .await?;
        Ok(Response::new(pb::CompactionResponse {
            header: Some(core.header(revision)),
        }))
    }
}

/// One watcher of a watch stream.
struct Watcher {
    id: i64,
    key: Vec<u8>,
    range_end: Vec<u8>,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    /// The next revision this watcher has not yet been sent.
    next_revision: i64,
}

impl Watcher {
    fn matches(&self, event: &mvcc::Event) -> bool {
        let filtered = match event.kind {
            mvcc::EventKind::Put => self.no_put,
            mvcc::EventKind::Delete => self.no_delete,
        };
        !filtered && mvcc::key_in_range(&event.kv.key, &self.key, &self.range_end)
    }
}

struct WatchSession {
    core: Arc<Core>,
    out: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    watchers: Vec<Watcher>,
    next_id: i64,
}

impl WatchSession {
    async fn send(&self, response: pb::WatchResponse) -> bool {
        self.out.send(Ok(response)).await.is_ok()
    }

    /// Sends history from the store to every watcher behind the store's current revision.
    /// Watchers whose history was compacted away are cancelled, as etcd does.
    async fn catch_up(&mut self) -> bool {
        let mut batches = Vec::new();
        let mut compacted = Vec::new();
        let current = {
            let store = self.core.state.store();
            let current = store.current_revision();
            for w in &mut self.watchers {
                if w.next_revision > current {
                    continue;
                }
                match store.events_since(w.next_revision, &w.key, &w.range_end) {
                    Ok(events) => {
                        let events: Vec<_> = events.into_iter().filter(|e| w.matches(e)).collect();
                        w.next_revision = current + 1;
                        if !events.is_empty() {
                            batches.push((w.id, w.prev_kv, events));
                        }
                    }
                    Err(_) => compacted.push((w.id, store.compacted_revision())),
                }
            }
            current
        };
        let header = self.core.header(current);
        for (id, prev_kv, events) in batches {
            let response = pb::WatchResponse {
                header: Some(header),
                watch_id: id,
                events: events
                    .into_iter()
                    .map(|e| event_to_pb(e, prev_kv))
                    .collect(),
                ..Default::default()
            };
            if !self.send(response).await {
                return false;
            }
        }
        for (id, compact_revision) in compacted {
            self.watchers.retain(|w| w.id != id);
            // As etcd (`watchable_store.go` chooseAll + `v3rpc/watch.go` sendLoop): the cancel
            // carries only the compact revision (clients derive ErrCompacted from it), no
            // cancel reason, and a header at revision 0.
            let response = pb::WatchResponse {
                header: Some(pb::ResponseHeader {
                    revision: 0,
                    ..header
                }),
                watch_id: id,
                canceled: true,
                compact_revision,
                ..Default::default()
            };
            if !self.send(response).await {
                return false;
            }
        }
        true
    }

    async fn deliver(&mut self, revision: i64, events: &[mvcc::Event]) -> bool {
        let header = self.core.header(revision);
        let mut responses = Vec::new();
        for w in &mut self.watchers {
            if revision < w.next_revision {
                continue;
            }
            let matching: Vec<_> = events
                .iter()
                .filter(|e| w.matches(e))
                .map(|e| event_to_pb(e.clone(), w.prev_kv))
                .collect();
            w.next_revision = revision + 1;
            if !matching.is_empty() {
                responses.push(pb::WatchResponse {
                    header: Some(header),
                    watch_id: w.id,
                    events: matching,
                    ..Default::default()
                });
            }
        }
        for response in responses {
            if !self.send(response).await {
                return false;
            }
        }
        true
    }

    async fn create(&mut self, req: pb::WatchCreateRequest) -> bool {
        let current = self.core.state.store().current_revision();
        let id = if req.watch_id > 0 {
            if self.watchers.iter().any(|w| w.id == req.watch_id) {
                // etcd answers a duplicate id with a created+canceled response.
                return self
                    .send(pb::WatchResponse {
                        header: Some(self.core.header(current)),
                        watch_id: req.watch_id,
                        created: true,
                        canceled: true,
                        cancel_reason: "etcdserver: duplicate watch ID provided on the WatchStream"
                            .to_owned(),
                        ..Default::default()
                    })
                    .await;
            }
            req.watch_id
        } else {
            while self.watchers.iter().any(|w| w.id == self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        if req.key.is_empty() {
            return self
                .send(pb::WatchResponse {
                    header: Some(self.core.header(current)),
                    watch_id: -1,
                    created: true,
                    canceled: true,
                    cancel_reason: "etcdserver: no key given".to_owned(),
                    ..Default::default()
                })
                .await;
        }
        use pb::watch_create_request::FilterType;
        self.watchers.push(Watcher {
            id,
            key: req.key,
            range_end: req.range_end,
            prev_kv: req.prev_kv,
            no_put: req.filters.contains(&(FilterType::Noput as i32)),
            no_delete: req.filters.contains(&(FilterType::Nodelete as i32)),
            progress_notify: req.progress_notify,
            next_revision: if req.start_revision > 0 {
                req.start_revision
            } else {
                current + 1
            },
        });
        if !self
            .send(pb::WatchResponse {
                header: Some(self.core.header(current)),
                watch_id: id,
                created: true,
                ..Default::default()
            })
            .await
        {
            return false;
        }
        self.catch_up().await
    }

    async fn cancel(&mut self, watch_id: i64) -> bool {
        let before = self.watchers.len();
        self.watchers.retain(|w| w.id != watch_id);
        if self.watchers.len() == before {
            return true;
        }
        self.send(pb::WatchResponse {
            header: Some(self.core.current_header()),
            watch_id,
            canceled: true,
            ..Default::default()
        })
        .await
    }

    async fn progress(&mut self, only_requesting: bool) -> bool {
        let header = self.core.current_header();
        if !only_requesting {
            // A progress request: one response for the whole stream (etcd uses id -1).
            return self
                .send(pb::WatchResponse {
                    header: Some(header),
                    watch_id: -1,
                    ..Default::default()
                })
                .await;
        }
        let ids: Vec<i64> = self
            .watchers
            .iter()
            .filter(|w| w.progress_notify)
            .map(|w| w.id)
            .collect();
        for id in ids {
            if !self
                .send(pb::WatchResponse {
                    header: Some(header),
                    watch_id: id,
                    ..Default::default()
                })
                .await
            {
                return false;
            }
        }
        true
    }

    async fn run(mut self, mut requests: Streaming<pb::WatchRequest>) {
        let mut feed = self.core.state.subscribe();
        let notify_every = Duration::from_secs(self.core.config.watch_progress_notify_secs.max(1));
        let mut progress_tick =
            tokio::time::interval_at(tokio::time::Instant::now() + notify_every, notify_every);
        let shutdown = self.core.shutdown.clone();
        loop {
            let ok = tokio::select! {
                _ = shutdown.wait() => return,
                request = requests.next() => match request {
                    Some(Ok(pb::WatchRequest { request_union: Some(union) })) => {
                        use pb::watch_request::RequestUnion;
                        match union {
                            RequestUnion::CreateRequest(create) => self.create(create).await,
                            RequestUnion::CancelRequest(cancel) => self.cancel(cancel.watch_id).await,
                            RequestUnion::ProgressRequest(_) => self.progress(false).await,
                        }
                    }
                    Some(Ok(_)) => true,
                    Some(Err(_)) | None => return,
                },
                item = feed.recv() => match item {
                    Ok(feed_item) => match &*feed_item {
                        WatchFeed::Events { revision, events } => self.deliver(*revision, events).await,
                        WatchFeed::Reset => self.catch_up().await,
                    },
                    // Fell behind the broadcast: re-read what was missed from the store.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.catch_up().await,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = progress_tick.tick() => self.progress(true).await,
            };
            if !ok {
                return;
            }
        }
    }
}

#[tonic::async_trait]
impl pb::watch_server::Watch for Services {
    type WatchStream = BoxStream<pb::WatchResponse>;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (tx, rx) = mpsc::channel(256);
        let session = WatchSession {
            core: self.0.clone(),
            out: tx,
            watchers: Vec::new(),
            next_id: 0,
        };
        tokio::spawn(session.run(request.into_inner()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl pb::lease_server::Lease for Services {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let core = &self.0;
        let req = request.into_inner();
        if req.ttl > mvcc::MAX_LEASE_TTL {
            return Err(mvcc_status(mvcc::MvccError::LeaseTtlTooLarge));
        }
        let ttl = req.ttl.max(core.leases.min_ttl);
        let id = if req.id != 0 {
            req.id
        } else {
            // Chosen by the proposer, so every replica applies the same id.
            rand::random_range(1..i64::MAX)
        };
        let (revision, result) = core.propose(Command::LeaseGrant { id, ttl }).await?;
        let CommandResult::LeaseGrant { id, ttl } = result else {
            return Err(Status::internal("unexpected result"));
        };
        if core.node.is_leader() {
            core.leases.granted(id, ttl);
        }
        Ok(Response::new(pb::LeaseGrantResponse {
            header: Some(core.header(revision)),
            id,
            ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let core = &self.0;
        let id = request.into_inner().id;
        let (revision, _) = core.propose(Command::LeaseRevoke { id }).await?;
        Ok(Response::new(pb::LeaseRevokeResponse {
            header: Some(core.header(revision)),
        }))
    }

    type LeaseKeepAliveStream = BoxStream<pb::LeaseKeepAliveResponse>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let core = self.0.clone();
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            while let Some(Ok(req)) = requests.next().await {
                let answer = match core.keep_alive(req.id).await {
                    Ok(ttl) => Ok(pb::LeaseKeepAliveResponse {
                        header: Some(core.current_header()),
                        id: req.id,
                        // etcd answers an unknown or expired lease with TTL 0.
                        ttl: ttl.unwrap_or(0),
                    }),
                    Err(status) => Err(status),
                };
                let failed = answer.is_err();
                if tx.send(answer).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let core = &self.0;
        let req = request.into_inner();
        let Some((granted, remaining)) = core.time_to_live(req.id).await? else {
            return Ok(Response::new(pb::LeaseTimeToLiveResponse {
                header: Some(core.current_header()),
                id: req.id,
                ttl: -1,
                ..Default::default()
            }));
        };
        let keys = if req.keys {
            core.barrier().await?;
            core.state
                .store()
                .lease(req.id)
                .map(|l| l.keys)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        Ok(Response::new(pb::LeaseTimeToLiveResponse {
            header: Some(core.current_header()),
            id: req.id,
            ttl: remaining,
            granted_ttl: granted,
            keys,
        }))
    }

    async fn lease_leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let core = &self.0;
        core.barrier().await?;
        let leases = core.state.store().leases();
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: Some(core.current_header()),
            leases: leases
                .into_iter()
                .map(|l| pb::LeaseStatus { id: l.id })
                .collect(),
        }))
    }
}

/// A peer URL as members advertise it: `http(s)://host:port`, without a trailing slash.
pub(crate) fn parse_peer_url(url: &str) -> Option<String> {
    let url = url.trim_end_matches('/');
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let (host, port) = rest.rsplit_once(':')?;
    (!host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok()).then(|| url.to_owned())
}

/// Why a member could not be added.
pub(crate) enum AddMemberError {
    BadUrl,
    UrlExists,
    IdExists,
    Raft(WriteError),
}

impl Core {
    /// Adds the member that will advertise `peer_url`; returns its id and the normalized URL.
    pub(crate) async fn add_member(
        &self,
        peer_url: &str,
        learner: bool,
    ) -> Result<(u64, String), AddMemberError> {
        let peer_url = parse_peer_url(peer_url).ok_or(AddMemberError::BadUrl)?;
        let id = member_id(&peer_url);
        let members = self.node.membership().members;
        if members.iter().any(|m| m.node.peer_url == peer_url) {
            return Err(AddMemberError::UrlExists);
        }
        if members.iter().any(|m| m.id == id) {
            return Err(AddMemberError::IdExists);
        }
        let node = PeerNode {
            peer_url: peer_url.clone(),
            ..Default::default()
        };
        self.node
            .add_member(id, node, !learner)
            .await
            .map_err(AddMemberError::Raft)?;
        Ok((id, peer_url))
    }
}

fn member_error(e: WriteError) -> Status {
    match &e {
        WriteError::Failed(m) if m.contains("not in sync") => etcd_error(
            Code::FailedPrecondition,
            "can only promote a learner member which is in sync with leader",
        ),
        WriteError::Failed(m) if m.contains("not a learner") => etcd_error(
            Code::FailedPrecondition,
            "can only promote a learner member",
        ),
        _ => write_status(e),
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for Services {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        let core = &self.0;
        let req = request.into_inner();
        let url = req
            .peer_ur_ls
            .first()
            .map(String::as_str)
            .unwrap_or_default();
        let (id, peer_url) = core
            .add_member(url, req.is_learner)
            .await
            .map_err(|e| match e {
                AddMemberError::BadUrl => {
                    etcd_error(Code::InvalidArgument, "given member URLs are invalid")
                }
                AddMemberError::UrlExists => {
                    etcd_error(Code::FailedPrecondition, "Peer URLs already exists")
                }
                AddMemberError::IdExists => {
                    etcd_error(Code::FailedPrecondition, "member ID already exist")
                }
                AddMemberError::Raft(e) => member_error(e),
            })?;
        Ok(Response::new(pb::MemberAddResponse {
            header: Some(core.current_header()),
            member: Some(pb::Member {
                id,
                name: String::new(),
                peer_ur_ls: vec![peer_url],
                client_ur_ls: Vec::new(),
                is_learner: req.is_learner,
            }),
            members: core.members(),
        }))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        let core = &self.0;
        let id = request.into_inner().id;
        if !core.node.membership().members.iter().any(|m| m.id == id) {
            return Err(etcd_error(Code::NotFound, "member not found"));
        }
        core.node.remove_member(id).await.map_err(member_error)?;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: Some(core.current_header()),
            members: core.members(),
        }))
    }

    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        let core = &self.0;
        let req = request.into_inner();
        let peer_url = req
            .peer_ur_ls
            .first()
            .and_then(|u| parse_peer_url(u))
            .ok_or_else(|| etcd_error(Code::InvalidArgument, "given member URLs are invalid"))?;
        let Some(current) = core
            .node
            .membership()
            .members
            .into_iter()
            .find(|m| m.id == req.id)
        else {
            return Err(etcd_error(Code::NotFound, "member not found"));
        };
        let node = PeerNode {
            peer_url,
            ..current.node
        };
        core.node
            .update_member(req.id, node)
            .await
            .map_err(member_error)?;
        Ok(Response::new(pb::MemberUpdateResponse {
            header: Some(core.current_header()),
            members: core.members(),
        }))
    }

    async fn member_list(
        &self,
        _request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let core = &self.0;
        Ok(Response::new(pb::MemberListResponse {
            header: Some(core.current_header()),
            members: core.members(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        let core = &self.0;
        let id = request.into_inner().id;
        let Some(member) = core
            .node
            .membership()
            .members
            .into_iter()
            .find(|m| m.id == id)
        else {
            return Err(etcd_error(Code::NotFound, "member not found"));
        };
        if member.voter {
            return Err(etcd_error(
                Code::FailedPrecondition,
                "can only promote a learner member",
            ));
        }
        core.node.promote(id).await.map_err(member_error)?;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: Some(core.current_header()),
            members: core.members(),
        }))
    }
}

/// Snapshot streams go out in chunks of this size.
const SNAPSHOT_CHUNK: usize = 32 * 1024;

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for Services {
    async fn alarm(
        &self,
        request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        // chainfire raises no alarms (no NOSPACE: the keyspace is bounded by memory, no
        // CORRUPT: replicas are compared with HashKV). Activation requests are ignored.
        let _ = request.into_inner();
        Ok(Response::new(pb::AlarmResponse {
            header: Some(self.0.current_header()),
            alarms: Vec::new(),
        }))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let core = &self.0;
        let raft = core.node.status();
        let size = core.state.snapshot_size_estimate() as i64;
        let is_learner = core
            .node
            .membership()
            .members
            .iter()
            .any(|m| m.id == core.member_id && !m.voter);
        Ok(Response::new(pb::StatusResponse {
            header: Some(core.current_header()),
            version: ETCD_API_VERSION.to_owned(),
            db_size: size,
            leader: raft.leader.unwrap_or(0),
            raft_index: raft.last_log_index,
            raft_term: raft.term,
            raft_applied_index: raft.applied_index,
            errors: Vec::new(),
            db_size_in_use: size,
            is_learner,
            ..Default::default()
        }))
    }

    async fn defragment(
        &self,
        _request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        // The keyspace lives in memory and snapshots are rewritten whole: nothing to defragment.
        Ok(Response::new(pb::DefragmentResponse {
            header: Some(self.0.current_header()),
        }))
    }

    async fn hash(
        &self,
        _request: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        let core = &self.0;
        let (hash, _) = core.state.store().hash_kv(0).map_err(mvcc_status)?;
        Ok(Response::new(pb::HashResponse {
            header: Some(core.current_header()),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        let core = &self.0;
        let revision = request.into_inner().revision;
        let (hash, compact_revision, current) = {
            let store = core.state.store();
            let (hash, compact) = store.hash_kv(revision).map_err(mvcc_status)?;
            (hash, compact, store.current_revision())
        };
        Ok(Response::new(pb::HashKvResponse {
            header: Some(core.header(current)),
            hash,
            compact_revision,
            hash_revision: if revision > 0 { revision } else { current },
        }))
    }

    type SnapshotStream = BoxStream<pb::SnapshotResponse>;

    async fn snapshot(
        &self,
        _request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let core = self.0.clone();
        let data = crate::state::seal_backup(uc_raft::App::snapshot(&*core.state));
        let header = core.current_header();
        let total = data.len();
        let chunks: Vec<Result<pb::SnapshotResponse, Status>> = data
            .chunks(SNAPSHOT_CHUNK)
            .enumerate()
            .map(|(i, chunk)| {
                let sent = (i * SNAPSHOT_CHUNK + chunk.len()) as u64;
                Ok(pb::SnapshotResponse {
                    header: Some(header),
                    remaining_bytes: total as u64 - sent,
                    blob: chunk.to_vec(),
                    version: ETCD_API_VERSION.to_owned(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn move_leader(
        &self,
        _request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        Err(Status::unimplemented(
            "chainfire does not support leader transfer",
        ))
    }

    async fn downgrade(
        &self,
        _request: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        Err(Status::unimplemented(
            "chainfire does not support downgrades",
        ))
    }
}

#[tonic::async_trait]
impl pb::auth_server::Auth for Services {
    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        // The password is an UltraCloud token (the admin token until iam issues others); the
        // etcd session token handed back is that same token, checked on every call.
        let core = &self.0;
        let req = request.into_inner();
        if req.name.is_empty() {
            return Err(etcd_error(Code::InvalidArgument, "user name is empty"));
        }
        match core.auth.authenticate(&req.password).await {
            Ok(_) => Ok(Response::new(pb::AuthenticateResponse {
                header: Some(core.current_header()),
                token: req.password,
            })),
            Err(_) => Err(etcd_error(
                Code::InvalidArgument,
                "authentication failed, invalid user ID or password",
            )),
        }
    }

    async fn auth_status(
        &self,
        _request: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        Ok(Response::new(pb::AuthStatusResponse {
            header: Some(self.0.current_header()),
            enabled: true,
            auth_revision: 1,
        }))
    }

    async fn auth_enable(
        &self,
        _: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        Err(managed_by_iam())
    }
    async fn auth_disable(
        &self,
        _: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        Err(managed_by_iam())
    }
    async fn user_add(
        &self,
        _: Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        Err(managed_by_iam())
    }
    async fn user_get(
        &self,
        _: Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        Err(managed_by_iam())
    }
    async fn user_list(
        &self,
        _: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        Err(managed_by_iam())
    }
    async fn user_delete(
        &self,
        _: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        Err(managed_by_iam())
    }
    async fn user_change_password(
        &self,
        _: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        Err(managed_by_iam())
    }
    async fn user_grant_role(
        &self,
        _: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        Err(managed_by_iam())
    }
    async fn user_revoke_role(
        &self,
        _: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        Err(managed_by_iam())
    }
    async fn role_add(
        &self,
        _: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        Err(managed_by_iam())
    }
    async fn role_get(
        &self,
        _: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        Err(managed_by_iam())
    }
    async fn role_list(
        &self,
        _: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        Err(managed_by_iam())
    }
    async fn role_delete(
        &self,
        _: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        Err(managed_by_iam())
    }
    async fn role_grant_permission(
        &self,
        _: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        Err(managed_by_iam())
    }
    async fn role_revoke_permission(
        &self,
        _: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        Err(managed_by_iam())
    }
}

fn managed_by_iam() -> Status {
    Status::unimplemented(
        "users and roles are managed by UltraCloud iam, not through the etcd Auth API",
    )
}
