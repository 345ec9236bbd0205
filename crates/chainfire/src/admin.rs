//! Admin REST on the admin port: status, members, backup. Behind the node's authentication.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use uc_raft::RaftStatus;
use uc_runtime::http::{HttpServer, Json};
use uc_runtime::{ApiError, NodeContext};
use utoipa::{OpenApi, ToSchema};

use crate::grpc::{AddMemberError, Core};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StatusView {
    /// This member's id, hex as etcdctl prints it.
    pub member_id: String,
    pub cluster_id: String,
    pub name: String,
    pub leader: Option<String>,
    pub revision: i64,
    pub compact_revision: i64,
    pub keys: usize,
    #[schema(value_type = Object)]
    pub raft: RaftStatus,
}

#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct MemberView {
    pub id: String,
    pub name: String,
    pub peer_url: String,
    pub client_urls: Vec<String>,
    pub learner: bool,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AddMember {
    /// The new member's advertised peer URL (its id is derived from it).
    pub peer_url: String,
    /// Join as a learner (promote later) instead of a voter.
    #[serde(default)]
    pub learner: bool,
}

fn hex(id: u64) -> String {
    format!("{id:x}")
}

fn parse_id(text: &str) -> Result<u64, ApiError> {
    u64::from_str_radix(text, 16)
        .map_err(|_| ApiError::invalid_argument(format!("`{text}` is not a hex member id")))
}

fn members(core: &Core) -> Vec<MemberView> {
    core.node
        .membership()
        .members
        .into_iter()
        .map(|m| MemberView {
            id: hex(m.id),
            name: m.node.name,
            peer_url: m.node.peer_url,
            client_urls: m.node.client_urls,
            learner: !m.voter,
        })
        .collect()
}

fn write_error(e: uc_raft::WriteError) -> ApiError {
    match e {
        uc_raft::WriteError::NoLeader => ApiError::unavailable("no leader"),
        uc_raft::WriteError::Unknown(m) => ApiError::unavailable(format!("outcome unknown: {m}")),
        uc_raft::WriteError::Failed(m) => ApiError::failed_precondition(m),
    }
}

/// Status of this member and of the cluster as it sees it.
#[utoipa::path(get, path = "/v1/status", responses((status = 200, body = StatusView)), security(("bearer" = [])))]
async fn status(State(core): State<Arc<Core>>) -> Json<StatusView> {
    let raft = core.node.status();
    let (revision, compact_revision, keys) = {
        let store = core.state.store();
        (
            store.current_revision(),
            store.compacted_revision(),
            store.key_count(),
        )
    };
    let name = core
        .node
        .membership()
        .members
        .into_iter()
        .find(|m| m.id == core.member_id)
        .map(|m| m.node.name)
        .unwrap_or_default();
    Json(StatusView {
        member_id: hex(core.member_id),
        cluster_id: hex(core.state.cluster_id()),
        name,
        leader: raft.leader.map(hex),
        revision,
        compact_revision,
        keys,
        raft,
    })
}

/// Members of the cluster.
#[utoipa::path(get, path = "/v1/members", responses((status = 200, body = Vec<MemberView>)), security(("bearer" = [])))]
async fn list_members(State(core): State<Arc<Core>>) -> Json<Vec<MemberView>> {
    Json(members(&core))
}

/// Adds a member; start it afterwards with `initial_cluster_state = "existing"`.
#[utoipa::path(post, path = "/v1/members", request_body = AddMember,
    responses((status = 201, body = MemberView), (status = 400, body = uc_runtime::ErrorBody), (status = 409, body = uc_runtime::ErrorBody)),
    security(("bearer" = [])))]
async fn add_member(
    State(core): State<Arc<Core>>,
    Json(req): Json<AddMember>,
) -> Result<Response, ApiError> {
    let (id, url) = core
        .add_member(&req.peer_url, req.learner)
        .await
        .map_err(|e| match e {
            AddMemberError::BadUrl => {
                ApiError::invalid_argument(format!("`{}` is not http(s)://host:port", req.peer_url))
            }
            AddMemberError::UrlExists | AddMemberError::IdExists => {
                ApiError::conflict(format!("a member with peer URL {} exists", req.peer_url))
            }
            AddMemberError::Raft(e) => write_error(e),
        })?;
    let view = MemberView {
        id: hex(id),
        name: String::new(),
        peer_url: url,
        client_urls: Vec::new(),
        learner: true,
    };
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// Removes a member.
#[utoipa::path(delete, path = "/v1/members/{id}", params(("id" = String, Path, description = "hex member id")),
    responses((status = 204), (status = 404, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
async fn remove_member(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    if !core.node.membership().members.iter().any(|m| m.id == id) {
        return Err(ApiError::not_found(format!("no member {id:x}")));
    }
    core.node.remove_member(id).await.map_err(write_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Promotes a learner to voter.
#[utoipa::path(post, path = "/v1/members/{id}/promote", params(("id" = String, Path, description = "hex member id")),
    responses((status = 200, body = Vec<MemberView>), (status = 404, body = uc_runtime::ErrorBody), (status = 412, body = uc_runtime::ErrorBody)),
    security(("bearer" = [])))]
async fn promote_member(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
) -> Result<Json<Vec<MemberView>>, ApiError> {
    let id = parse_id(&id)?;
    let Some(member) = core
        .node
        .membership()
        .members
        .into_iter()
        .find(|m| m.id == id)
    else {
        return Err(ApiError::not_found(format!("no member {id:x}")));
    };
    if member.voter {
        return Err(ApiError::failed_precondition(format!(
            "member {id:x} is already a voter"
        )));
    }
    core.node.promote(id).await.map_err(write_error)?;
    Ok(Json(members(&core)))
}

/// A consistent backup of the whole keyspace (restore with `ultracloud chainfire snapshot restore`).
#[utoipa::path(get, path = "/v1/backup", responses((status = 200, content_type = "application/octet-stream", description = "snapshot followed by its SHA-256")),
    security(("bearer" = [])))]
async fn backup(State(core): State<Arc<Core>>) -> Result<Response, ApiError> {
    core.node.read_barrier().await.map_err(write_error)?;
    let data = crate::state::seal_backup(uc_raft::App::snapshot(&*core.state));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"chainfire.snapshot\"",
            ),
        ],
        data,
    )
        .into_response())
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "chainfire admin API",
        description = "Status, membership and backup of the coordination store."
    ),
    paths(
        status,
        list_members,
        add_member,
        remove_member,
        promote_member,
        backup
    ),
    components(schemas(StatusView, MemberView, AddMember))
)]
struct AdminApi;

pub(crate) fn server(core: Arc<Core>, ctx: &NodeContext) -> HttpServer {
    let routes = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/members", get(list_members).post(add_member))
        .route("/v1/members/{id}", axum::routing::delete(remove_member))
        .route("/v1/members/{id}/promote", post(promote_member))
        .route("/v1/backup", get(backup))
        .with_state(core);
    HttpServer::new("chainfire-admin", ctx.http.clone(), ctx.auth.clone())
        .api(routes)
        .openapi(AdminApi::openapi())
}
