//! Raft RPCs between peers: authenticated HTTP POSTs with postcard bodies, served by the
//! component's raft listener (uc-runtime's server, so TLS, request ids and metrics come for
//! free). Also the two internal calls followers make to the leader: forwarding a write and
//! asking for a read index.

use std::marker::PhantomData;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use openraft::Raft;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uc_runtime::{ApiError, Secret};

use crate::state_machine::App;
use crate::types::{NodeId, PeerNode, TypeConfig};

/// Peer requests can carry large batches and snapshot chunks.
const PEER_BODY_LIMIT: usize = 512 * 1024 * 1024;

pub(crate) const APPEND: &str = "/raft/v1/append";
pub(crate) const VOTE: &str = "/raft/v1/vote";
pub(crate) const SNAPSHOT: &str = "/raft/v1/snapshot";
pub(crate) const FORWARD: &str = "/raft/v1/forward";
pub(crate) const READ_INDEX: &str = "/raft/v1/read-index";
pub(crate) const ADMIN: &str = "/raft/v1/admin";

/// Why a forwarded call did not run.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    /// The receiver is not the leader; it may know who is.
    #[error("not the leader")]
    NotLeader { leader: Option<(NodeId, PeerNode)> },
    /// It was accepted, but whether it took effect is not known.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    #[error("{0}")]
    Failed(String),
}

/// A membership change, run by the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminOp {
    /// Add a member: as a learner, or straight as a voter.
    Add {
        id: NodeId,
        node: PeerNode,
        voter: bool,
    },
    Promote {
        id: NodeId,
    },
    Remove {
        id: NodeId,
    },
    SetNode {
        id: NodeId,
        node: PeerNode,
    },
}

/// A client for one peer, shared by Raft replication and forwarding.
#[derive(Clone)]
pub(crate) struct PeerHttp {
    http: reqwest::Client,
    token: Secret<String>,
}

#[derive(Debug)]
pub(crate) enum CallError {
    /// No connection was made: the request was certainly not received.
    Unreachable(String),
    /// Sent, but no (usable) answer: it may or may not have been processed.
    Unknown(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(m) => write!(f, "unreachable: {m}"),
            Self::Unknown(m) => write!(f, "no answer: {m}"),
        }
    }
}

impl std::error::Error for CallError {}

impl PeerHttp {
    pub(crate) fn new(
        token: Secret<String>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, String> {
        uc_runtime::tls::ensure_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true);
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            builder = builder.tls_certs_merge(certs);
        }
        Ok(Self {
            http: builder.build().map_err(|e| e.to_string())?,
            token,
        })
    }

    pub(crate) async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        base: &str,
        path: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let body =
            postcard::to_stdvec(request).map_err(|e| CallError::Unreachable(e.to_string()))?;
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let response = self
            .http
            .post(&url)
            .bearer_auth(self.token.expose())
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    CallError::Unreachable(format!("{url}: {e}"))
                } else {
                    CallError::Unknown(format!("{url}: {e}"))
                }
            })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| CallError::Unknown(format!("{url}: {e}")))?;
        if status != StatusCode::OK {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
            // Refused before handling (auth, bad request): nothing was processed.
            return Err(CallError::Unreachable(format!(
                "{url}: HTTP {status}: {text}"
            )));
        }
        postcard::from_bytes(&bytes)
            .map_err(|e| CallError::Unknown(format!("{url}: bad answer: {e}")))
    }
}

pub(crate) struct NetworkFactory<A> {
    pub(crate) peers: PeerHttp,
    pub(crate) _app: PhantomData<fn() -> A>,
}

pub(crate) struct PeerConnection<A> {
    peers: PeerHttp,
    target: NodeId,
    node: PeerNode,
    _app: PhantomData<fn() -> A>,
}

impl<A: App> RaftNetworkFactory<TypeConfig<A>> for NetworkFactory<A> {
    type Network = PeerConnection<A>;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> Self::Network {
        PeerConnection {
            peers: self.peers.clone(),
            target,
            node: node.clone(),
            _app: PhantomData,
        }
    }
}

impl<A: App> PeerConnection<A> {
    async fn rpc<Req: Serialize, Resp: DeserializeOwned, E>(
        &self,
        path: &str,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, PeerNode, RaftError<NodeId, E>>>
    where
        E: std::error::Error + DeserializeOwned,
    {
        let answer: Result<Resp, RaftError<NodeId, E>> = self
            .peers
            .call(&self.node.peer_url, path, request, option.hard_ttl())
            .await
            .map_err(|e| match e {
                CallError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&e)),
                CallError::Unknown(_) => RPCError::Network(NetworkError::new(&e)),
            })?;
        answer.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl<A: App> RaftNetwork<TypeConfig<A>> for PeerConnection<A> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig<A>>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId>>> {
        self.rpc(APPEND, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig<A>>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, PeerNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.rpc(SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId>>> {
        self.rpc(VOTE, &rpc, &option).await
    }
}

fn postcard_response<T: Serialize>(value: &T) -> Response {
    match postcard::to_stdvec(value) {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(e) => ApiError::internal(format!("cannot encode answer: {e}")).into_response(),
    }
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    postcard::from_bytes(body)
        .map_err(|e| ApiError::invalid_argument(format!("malformed raft message: {e}")))
}

/// What the peer routes need from the node.
pub(crate) trait PeerHandler<A: App>: Send + Sync + 'static {
    fn raft(&self) -> &Raft<TypeConfig<A>>;
    fn forward(
        &self,
        request: A::Request,
    ) -> impl Future<Output = Result<A::Response, ForwardError>> + Send;
    fn read_index(&self) -> impl Future<Output = Result<u64, ForwardError>> + Send;
    fn admin(&self, op: AdminOp) -> impl Future<Output = Result<(), ForwardError>> + Send;
}

/// The routes a node serves to its peers (mount behind the node's authentication).
pub(crate) fn peer_routes<A: App, H: PeerHandler<A>>(handler: std::sync::Arc<H>) -> Router {
    Router::new()
        .route(
            APPEND,
            post(
                |State(h): State<std::sync::Arc<H>>, body: Bytes| async move {
                    match decode::<AppendEntriesRequest<TypeConfig<A>>>(&body) {
                        Ok(req) => postcard_response(&h.raft().append_entries(req).await),
                        Err(e) => e.into_response(),
                    }
                },
            ),
        )
        .route(
            VOTE,
            post(
                |State(h): State<std::sync::Arc<H>>, body: Bytes| async move {
                    match decode::<VoteRequest<NodeId>>(&body) {
                        Ok(req) => postcard_response(&h.raft().vote(req).await),
                        Err(e) => e.into_response(),
                    }
                },
            ),
        )
        .route(
            SNAPSHOT,
            post(
                |State(h): State<std::sync::Arc<H>>, body: Bytes| async move {
                    match decode::<InstallSnapshotRequest<TypeConfig<A>>>(&body) {
                        Ok(req) => postcard_response(&h.raft().install_snapshot(req).await),
                        Err(e) => e.into_response(),
                    }
                },
            ),
        )
        .route(
            FORWARD,
            post(
                |State(h): State<std::sync::Arc<H>>, body: Bytes| async move {
                    match decode::<A::Request>(&body) {
                        Ok(req) => postcard_response(&h.forward(req).await),
                        Err(e) => e.into_response(),
                    }
                },
            ),
        )
        .route(
            READ_INDEX,
            post(|State(h): State<std::sync::Arc<H>>| async move {
                postcard_response(&h.read_index().await)
            }),
        )
        .route(
            ADMIN,
            post(
                |State(h): State<std::sync::Arc<H>>, body: Bytes| async move {
                    match decode::<AdminOp>(&body) {
                        Ok(op) => postcard_response(&h.admin(op).await),
                        Err(e) => e.into_response(),
                    }
                },
            ),
        )
        .layer(DefaultBodyLimit::max(PEER_BODY_LIMIT))
        .with_state(handler)
}
