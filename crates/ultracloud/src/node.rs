//! The node's own server: health, readiness and metrics for the whole process, plus
//! `/v1/node`, which says what runs here.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::Serialize;
use uc_runtime::auth::Authenticator;
use uc_runtime::http::{BoundHttpServer, HttpConfig, HttpServer, Json};
use utoipa::{OpenApi, ToSchema};

/// What this node runs.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NodeStatus {
    pub name: String,
    pub version: &'static str,
    pub components: Vec<Endpoint>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Endpoint {
    pub component: String,
    pub url: String,
}

/// `GET /v1/node`
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeStatusResponse {
    #[serde(flatten)]
    pub status: NodeStatus,
    pub uptime_secs: u64,
}

struct AppState {
    status: NodeStatus,
    started: Instant,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "UltraCloud node API", description = "What runs on this node."),
    paths(node_status),
    components(schemas(NodeStatusResponse, NodeStatus, Endpoint))
)]
struct NodeApi;

/// The node's name, version, uptime and the components it runs.
#[utoipa::path(
    get,
    path = "/v1/node",
    responses(
        (status = 200, body = NodeStatusResponse),
        (status = 401, description = "missing or invalid token", body = uc_runtime::ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn node_status(State(state): State<Arc<AppState>>) -> Json<NodeStatusResponse> {
    Json(NodeStatusResponse {
        status: state.status.clone(),
        uptime_secs: state.started.elapsed().as_secs(),
    })
}

pub async fn bind(
    http: &HttpConfig,
    auth: Arc<dyn Authenticator>,
    listen: std::net::SocketAddr,
    status: NodeStatus,
) -> Result<BoundHttpServer, uc_runtime::http::ServeError> {
    let state = Arc::new(AppState {
        status,
        started: Instant::now(),
    });
    let api = Router::new()
        .route("/v1/node", get(node_status))
        .with_state(state);
    HttpServer::new("node", http.clone(), auth)
        .api(api)
        .openapi(NodeApi::openapi())
        .bind(listen)
        .await
}
