//! Starting chainfire: the Raft member, the three listeners (etcd gRPC, peer, admin REST) and
//! the background work (lease expiry, publishing this member's name and URLs).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tonic::Code;
use uc_raft::{PeerNode, RaftNode, RaftNodeConfig};
use uc_runtime::auth::{Authenticator, bearer_token};
use uc_runtime::http::{HttpServer, Readiness};
use uc_runtime::{NodeContext, Shutdown};

use crate::config::{ChainfireConfig, ClusterState, member_id, parse_initial_cluster};
use crate::etcdpb::etcdserverpb as pb;
use crate::grpc::{Core, LEASE_KEEPALIVE_PATH, LEASE_TTL_PATH, Services};
use crate::lease::Leases;
use crate::state::{ChainfireCommand, ChainfireState};

/// Where a started chainfire listens.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub client_url: String,
    pub peer_url: String,
    pub admin_url: String,
    pub member_id: u64,
}

/// A running chainfire: its endpoints, and the task that ends after shutdown.
pub struct Running {
    pub endpoints: Endpoints,
    pub task: tokio::task::JoinHandle<()>,
    pub core: Arc<Core>,
    /// Ready while the member knows a leader (what its listeners' `/readyz` report).
    pub readiness: Readiness,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("chainfire config: {0}")]
    Config(String),
    #[error("chainfire: {0}")]
    Runtime(String),
}

/// gRPC sizes: etcd accepts messages up to the request limit plus 512 KiB of framing.
const GRPC_OVERHEAD: usize = 512 * 1024;

/// Validates the config (before anything is written).
pub fn check_config(config: &ChainfireConfig) -> Result<(), StartError> {
    parse_initial_cluster(&config.initial_cluster).map_err(StartError::Config)?;
    if config.initial_cluster_state == ClusterState::New && config.initial_cluster.len() > 1 {
        // fine: a founding member
    }
    if config.max_txn_ops == 0 || config.max_request_bytes == 0 {
        return Err(StartError::Config(
            "max_txn_ops and max_request_bytes must be greater than 0".into(),
        ));
    }
    Ok(())
}

pub async fn start(
    ctx: &NodeContext,
    config: ChainfireConfig,
    shutdown: Shutdown,
) -> Result<Running, StartError> {
    check_config(&config)?;
    let scheme = ctx.scheme();
    let peer_url = config
        .advertise_peer_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{}", ctx.listen(config.peer_port)))
        .trim_end_matches('/')
        .to_owned();
    let client_url = config
        .advertise_client_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{}", ctx.listen(config.client_port)));
    let id = member_id(&peer_url);

    let state = Arc::new(ChainfireState::new());
    let node = RaftNode::start(
        RaftNodeConfig {
            id,
            group: "chainfire".into(),
            dir: ctx.component_dir("chainfire").join("raft"),
            tuning: config.raft.clone(),
            peer_token: ctx.service_token.clone(),
            peer_ca_file: ctx.trusted_ca_file().map(ToOwned::to_owned),
        },
        state.clone(),
    )
    .await
    .map_err(StartError::Runtime)?;
    let leases = Arc::new(Leases::new(
        state.clone(),
        config.raft.election_timeout_max_ms,
    ));
    let core = Arc::new(Core {
        node: node.clone(),
        state: state.clone(),
        leases: leases.clone(),
        member_id: id,
        config: config.clone(),
        shutdown: shutdown.clone(),
        auth: ctx.auth.clone(),
    });

    let bind_err = |e: uc_runtime::http::ServeError| StartError::Runtime(e.to_string());
    let peer = HttpServer::new("chainfire-peer", ctx.http.clone(), ctx.auth.clone())
        .quiet_access_log()
        .api(node.peer_routes().merge(lease_routes(core.clone())))
        .bind(ctx.listen(config.peer_port))
        .await
        .map_err(bind_err)?;
    let client = HttpServer::new("chainfire", ctx.http.clone(), ctx.auth.clone())
        .quiet_access_log()
        .public(grpc_router(core.clone(), ctx.auth.clone()))
        .bind(ctx.listen(config.client_port))
        .await
        .map_err(bind_err)?;
    let admin = crate::admin::server(core.clone(), ctx)
        .bind(ctx.listen(config.admin_port))
        .await
        .map_err(bind_err)?;
    let endpoints = Endpoints {
        client_url: format!("{scheme}://{}", client.local_addr()),
        peer_url: peer_url.clone(),
        admin_url: format!("{scheme}://{}", admin.local_addr()),
        member_id: id,
    };
    let readiness = [peer.readiness(), client.readiness(), admin.readiness()];
    for r in &readiness {
        r.set_ready();
        r.set("raft", Err("no leader yet".into()));
    }

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(peer.serve(shutdown.clone()));
    tasks.spawn(client.serve(shutdown.clone()));
    tasks.spawn(admin.serve(shutdown.clone()));
    tasks.spawn(leases.run(node.clone(), shutdown.clone()));
    tasks.spawn(track_readiness(
        node.clone(),
        readiness.to_vec(),
        shutdown.clone(),
    ));
    tasks.spawn(publish_self(
        node.clone(),
        state.clone(),
        PeerNode {
            name: ctx.node_name.clone(),
            peer_url: peer_url.clone(),
            client_urls: vec![client_url.clone()],
            ..Default::default()
        },
        shutdown.clone(),
    ));

    if config.initial_cluster_state == ClusterState::New {
        let founders = if config.initial_cluster.is_empty() {
            vec![(ctx.node_name.clone(), peer_url.clone())]
        } else {
            parse_initial_cluster(&config.initial_cluster).map_err(StartError::Config)?
        };
        if !founders.iter().any(|(_, url)| *url == peer_url) {
            return Err(StartError::Config(format!(
                "initial_cluster does not contain this member's peer URL {peer_url}"
            )));
        }
        let members: BTreeMap<u64, PeerNode> = founders
            .into_iter()
            .map(|(name, url)| {
                let client_urls = if url == peer_url {
                    vec![client_url.clone()]
                } else {
                    Vec::new()
                };
                (
                    member_id(&url),
                    PeerNode {
                        name,
                        peer_url: url,
                        client_urls,
                        ..Default::default()
                    },
                )
            })
            .collect();
        node.initialize(members)
            .await
            .map_err(StartError::Runtime)?;
    }
    tracing::info!(member = format!("{id:x}"), client = %endpoints.client_url, peer = %peer_url, "chainfire started");

    let task = tokio::spawn(async move {
        while tasks.join_next().await.is_some() {}
        node.shutdown().await;
        tracing::info!("chainfire stopped");
    });
    Ok(Running {
        endpoints,
        task,
        core,
        readiness: readiness[2].clone(),
    })
}

/// Every listener is ready only while the member knows a leader.
async fn track_readiness(
    node: RaftNode<ChainfireState>,
    readiness: Vec<Readiness>,
    shutdown: Shutdown,
) {
    let mut metrics = node.metrics();
    loop {
        let leader = metrics.borrow_and_update().current_leader;
        for r in &readiness {
            r.set(
                "raft",
                if leader.is_some() {
                    Ok(())
                } else {
                    Err("no leader".into())
                },
            );
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            changed = metrics.changed() => if changed.is_err() { return },
        }
    }
}

/// Makes the membership show this member's name and client URL (a member added by
/// `member add` is known only by its peer URL until it starts), and sets the cluster id once.
async fn publish_self(
    node: RaftNode<ChainfireState>,
    state: Arc<ChainfireState>,
    me: PeerNode,
    shutdown: Shutdown,
) {
    let mut published = false;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        if node.status().leader.is_none() {
            continue;
        }
        if !published {
            let current = node
                .membership()
                .members
                .into_iter()
                .find(|m| m.id == node.id())
                .map(|m| m.node);
            match current {
                Some(n) if n.name == me.name && n.client_urls == me.client_urls => published = true,
                Some(n) => match node
                    .update_member(
                        node.id(),
                        PeerNode {
                            promote_when_caught_up: n.promote_when_caught_up,
                            ..me.clone()
                        },
                    )
                    .await
                {
                    Ok(()) => published = true,
                    Err(e) => {
                        tracing::debug!(error = %e, "publishing member attributes; will retry")
                    }
                },
                None => {} // not yet a member (joining): wait
            }
        }
        if node.is_leader() && state.cluster_id() == 0 {
            let mut ids: Vec<u64> = node.membership().members.iter().map(|m| m.id).collect();
            ids.sort_unstable();
            let cluster_id = ids.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, id| {
                (h ^ id).wrapping_mul(0x0100_0000_01b3)
            });
            if let Err(e) = node.write(ChainfireCommand::SetClusterId(cluster_id)).await {
                tracing::debug!(error = %e, "setting cluster id; will retry");
            }
        }
        if published && state.cluster_id() != 0 {
            return;
        }
    }
}

fn postcard_reply<T: serde::Serialize>(value: &T) -> Response {
    postcard::to_stdvec(value)
        .map(|b| b.into_response())
        .unwrap_or_else(|e| uc_runtime::ApiError::internal(e.to_string()).into_response())
}

/// Leader-only lease calls, reached by followers over the peer listener.
fn lease_routes(core: Arc<Core>) -> Router {
    Router::new()
        .route(
            LEASE_KEEPALIVE_PATH,
            post(|State(core): State<Arc<Core>>, body: Bytes| async move {
                let Ok(id) = postcard::from_bytes::<i64>(&body) else {
                    return uc_runtime::ApiError::invalid_argument("bad lease id").into_response();
                };
                let answer: Result<Option<i64>, String> = if core.node.is_leader() {
                    Ok(core.leases.keep_alive(id))
                } else {
                    Err("not the leader".into())
                };
                postcard_reply(&answer)
            }),
        )
        .route(
            LEASE_TTL_PATH,
            post(|State(core): State<Arc<Core>>, body: Bytes| async move {
                let Ok(id) = postcard::from_bytes::<i64>(&body) else {
                    return uc_runtime::ApiError::invalid_argument("bad lease id").into_response();
                };
                let answer: Result<Option<(i64, i64)>, String> = if core.node.is_leader() {
                    Ok(core.leases.time_to_live(id))
                } else {
                    Err("not the leader".into())
                };
                postcard_reply(&answer)
            }),
        )
        .with_state(core)
}

fn grpc_router(core: Arc<Core>, auth: Arc<dyn Authenticator>) -> Router {
    let limit = core.config.max_request_bytes + GRPC_OVERHEAD;
    let services = Services(core);
    tonic::service::Routes::new(
        pb::kv_server::KvServer::new(services.clone())
            .max_decoding_message_size(limit)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(
        pb::watch_server::WatchServer::new(services.clone()).max_decoding_message_size(limit),
    )
    .add_service(
        pb::lease_server::LeaseServer::new(services.clone()).max_decoding_message_size(limit),
    )
    .add_service(
        pb::cluster_server::ClusterServer::new(services.clone()).max_decoding_message_size(limit),
    )
    .add_service(
        pb::maintenance_server::MaintenanceServer::new(services.clone())
            .max_decoding_message_size(limit)
            .max_encoding_message_size(usize::MAX),
    )
    .add_service(pb::auth_server::AuthServer::new(services).max_decoding_message_size(limit))
    .into_axum_router()
    .layer(from_fn_with_state(auth, grpc_auth))
}

/// etcd clients authenticate with a `token` metadata entry (from `Authenticate`); UltraCloud
/// clients may send `authorization: Bearer …` instead. Only `Authenticate` itself is open.
async fn grpc_auth(
    State(auth): State<Arc<dyn Authenticator>>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path() == "/etcdserverpb.Auth/Authenticate" {
        return next.run(request).await;
    }
    let token = request
        .headers()
        .get("token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| bearer_token(request.headers()).map(str::to_owned));
    let Some(token) = token else {
        return grpc_status(Code::InvalidArgument, "etcdserver: user name is empty");
    };
    match auth.authenticate(&token).await {
        Ok(_) => next.run(request).await,
        Err(_) => grpc_status(Code::Unauthenticated, "etcdserver: invalid auth token"),
    }
}

fn grpc_status(code: Code, message: &str) -> Response {
    tonic::Status::new(code, message)
        .into_http::<axum::body::Body>()
        .into_response()
}
