//! coronafs's HTTP API (thin handlers over [`Controller`] and [`NodeService`]) and its
//! start-up. One listener serves whichever roles the config enables.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post, put};
use flaredb::client::FlaredbClient;
use serde::Deserialize;
use uc_runtime::auth::Principal;
use uc_runtime::client::{ApiClient, ClientOptions};
use uc_runtime::http::{HttpServer, Json};
use uc_runtime::secret::read_secret_file;
use uc_runtime::{ApiError, NodeContext, Shutdown};
use utoipa::OpenApi;

use crate::api::*;
use crate::config::CoronafsConfig;
use crate::controller::{Controller, ControllerSettings};
use crate::error::CoronafsError;
use crate::node::{NodeService, NodeSettings};

type Answer<T> = Result<Json<T>, ApiError>;

#[derive(Clone)]
pub(crate) struct AppState {
    controller: Option<Arc<Controller>>,
    node: Option<Arc<NodeService>>,
    node_name: String,
}

impl AppState {
    fn controller(&self) -> Result<&Arc<Controller>, ApiError> {
        self.controller
            .as_ref()
            .ok_or_else(|| ApiError::not_found("this process does not run the coronafs controller"))
    }
    fn node(&self, caller: &Principal) -> Result<&Arc<NodeService>, ApiError> {
        // The node API is infrastructure: the operator's/service token only.
        if !caller.admin {
            return Err(ApiError::permission_denied(
                "the node API is for the operator and the coronafs controller",
            ));
        }
        self.node.as_ref().ok_or_else(|| {
            ApiError::not_found("this process does not run the coronafs node service")
        })
    }
}

type S = State<AppState>;

// ---- controller

#[utoipa::path(post, path = "/v1/volumes", request_body = CreateVolume,
    params(("Idempotency-Key" = Option<String>, Header, description = "repeat-safe create")),
    responses((status = 201, body = Volume), (status = 400, body = uc_runtime::ErrorBody), (status = 409, body = uc_runtime::ErrorBody), (status = 503, body = uc_runtime::ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn create_volume(
    State(st): S,
    caller: Principal,
    headers: HeaderMap,
    Json(req): Json<CreateVolume>,
) -> Result<(StatusCode, Json<Volume>), ApiError> {
    let key = headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| ApiError::invalid_argument("Idempotency-Key is not text"))
        })
        .transpose()?;
    let v = st.controller()?.create_volume(&caller, req, key).await?;
    Ok((StatusCode::CREATED, Json(v)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    page_size: Option<u32>,
    page_token: Option<String>,
}

#[utoipa::path(get, path = "/v1/volumes",
    params(("page_size" = Option<u32>, Query), ("page_token" = Option<String>, Query)),
    responses((status = 200, body = Page<Volume>)), security(("bearer" = [])))]
pub(crate) async fn list_volumes(
    State(st): S,
    caller: Principal,
    Query(q): Query<ListQuery>,
) -> Answer<Page<Volume>> {
    Ok(Json(
        st.controller()?
            .list_volumes(&caller, q.page_size, q.page_token.as_deref())
            .await?,
    ))
}

#[utoipa::path(get, path = "/v1/volumes/{id}", params(("id" = String, Path)),
    responses((status = 200, body = Volume), (status = 404, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
pub(crate) async fn get_volume(
    State(st): S,
    caller: Principal,
    Path(id): Path<String>,
) -> Answer<Volume> {
    Ok(Json(st.controller()?.get_volume(&caller, &id).await?))
}

#[utoipa::path(delete, path = "/v1/volumes/{id}", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = uc_runtime::ErrorBody), (status = 409, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
pub(crate) async fn delete_volume(
    State(st): S,
    caller: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.controller()?.delete_volume(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/volumes/{id}/resize", params(("id" = String, Path)), request_body = ResizeVolume,
    responses((status = 200, body = Volume), (status = 400, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
pub(crate) async fn resize_volume(
    State(st): S,
    caller: Principal,
    Path(id): Path<String>,
    Json(req): Json<ResizeVolume>,
) -> Answer<Volume> {
    Ok(Json(
        st.controller()?
            .resize_volume(&caller, &id, req.size_bytes)
            .await?,
    ))
}

#[utoipa::path(post, path = "/v1/volumes/{id}/attach", params(("id" = String, Path)), request_body = AttachVolume,
    responses((status = 200, body = AttachInfo), (status = 409, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
pub(crate) async fn attach_volume(
    State(st): S,
    caller: Principal,
    Path(id): Path<String>,
    Json(req): Json<AttachVolume>,
) -> Answer<AttachInfo> {
    Ok(Json(st.controller()?.attach(&caller, &id, req).await?))
}

#[utoipa::path(post, path = "/v1/volumes/{id}/detach", params(("id" = String, Path)), request_body = DetachVolume,
    responses((status = 200, body = Volume)), security(("bearer" = [])))]
pub(crate) async fn detach_volume(
    State(st): S,
    caller: Principal,
    Path(id): Path<String>,
    Json(req): Json<DetachVolume>,
) -> Answer<Volume> {
    Ok(Json(st.controller()?.detach(&caller, &id, req).await?))
}

#[utoipa::path(post, path = "/v1/volumes/{id}/snapshots", params(("id" = String, Path)), request_body = CreateSnapshot,
    responses((status = 201, body = Snapshot)), security(("bearer" = [])))]
pub(crate) async fn create_snapshot(
    State(st): S,
    caller: Principal,
    Path(id): Path<String>,
    Json(req): Json<CreateSnapshot>,
) -> Result<(StatusCode, Json<Snapshot>), ApiError> {
    let s = st.controller()?.create_snapshot(&caller, &id, req).await?;
    Ok((StatusCode::CREATED, Json(s)))
}

#[utoipa::path(delete, path = "/v1/volumes/{id}/snapshots/{sid}", params(("id" = String, Path), ("sid" = String, Path)),
    responses((status = 204)), security(("bearer" = [])))]
pub(crate) async fn delete_snapshot(
    State(st): S,
    caller: Principal,
    Path((id, sid)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    st.controller()?.delete_snapshot(&caller, &id, &sid).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/nodes", responses((status = 200, body = Vec<NodeView>)), security(("bearer" = [])))]
pub(crate) async fn list_nodes(State(st): S, caller: Principal) -> Answer<Vec<NodeView>> {
    if !caller.admin {
        return Err(ApiError::permission_denied(
            "listing storage nodes is for the operator",
        ));
    }
    Ok(Json(st.controller()?.list_nodes().await?))
}

#[utoipa::path(put, path = "/v1/nodes/{name}", params(("name" = String, Path)), request_body = RegisterNode,
    responses((status = 200, body = NodeView)), security(("bearer" = [])))]
pub(crate) async fn register_node(
    State(st): S,
    caller: Principal,
    Path(name): Path<String>,
    Json(req): Json<RegisterNode>,
) -> Answer<NodeView> {
    if name != req.name {
        return Err(ApiError::invalid_argument(
            "the path and the body name different nodes",
        ));
    }
    if !caller.admin {
        return Err(ApiError::permission_denied(
            "node registration is for the service token",
        ));
    }
    Ok(Json(st.controller()?.register_node(&caller, req).await?))
}

#[utoipa::path(get, path = "/v1/capabilities", responses((status = 200, body = Capabilities)))]
pub(crate) async fn capabilities(State(st): S) -> Json<Capabilities> {
    Json(Capabilities {
        supports_controller_api: st.controller.is_some(),
        supports_node_api: st.node.is_some(),
        node: st.node_name.clone(),
        version: uc_runtime::VERSION.to_owned(),
    })
}

// ---- node

#[utoipa::path(put, path = "/v1/node/volumes/{id}", params(("id" = String, Path)), request_body = NodeCreateVolume,
    responses((status = 200, body = NodeVolume)), security(("bearer" = [])))]
pub(crate) async fn node_put_volume(
    State(st): S,
    caller: Principal,
    Path(id): Path<String>,
    Json(req): Json<NodeCreateVolume>,
) -> Answer<NodeVolume> {
    Ok(Json(st.node(&caller)?.create_volume(&id, req).await?))
}

#[utoipa::path(get, path = "/v1/node/volumes/{id}", params(("id" = String, Path)),
    responses((status = 200, body = NodeVolume)), security(("bearer" = [])))]
pub(crate) async fn node_get_volume(
    State(st): S,
    caller: Principal,
    Path(id): Path<String>,
) -> Answer<NodeVolume> {
    Ok(Json(st.node(&caller)?.get_volume(&id).await?))
}

#[utoipa::path(delete, path = "/v1/node/volumes/{id}", params(("id" = String, Path)),
    responses((status = 204)), security(("bearer" = [])))]
pub(crate) async fn node_delete_volume(
    State(st): S,
    caller: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.node(&caller)?.delete_volume(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/v1/node/volumes/{id}/size", params(("id" = String, Path)), request_body = ResizeVolume,
    responses((status = 200, body = NodeVolume)), security(("bearer" = [])))]
pub(crate) async fn node_resize_volume(
    State(st): S,
    caller: Principal,
    Path(id): Path<String>,
    Json(req): Json<ResizeVolume>,
) -> Answer<NodeVolume> {
    Ok(Json(
        st.node(&caller)?.resize_volume(&id, req.size_bytes).await?,
    ))
}

#[utoipa::path(put, path = "/v1/node/volumes/{id}/export", params(("id" = String, Path)), request_body = NodeExportRequest,
    responses((status = 200, body = NodeExport)), security(("bearer" = [])))]
pub(crate) async fn node_put_export(
    State(st): S,
    caller: Principal,
    Path(id): Path<String>,
    Json(req): Json<NodeExportRequest>,
) -> Answer<NodeExport> {
    Ok(Json(
        st.node(&caller)?.ensure_export(&id, req.shared).await?,
    ))
}

#[utoipa::path(delete, path = "/v1/node/volumes/{id}/export", params(("id" = String, Path)),
    responses((status = 204)), security(("bearer" = [])))]
pub(crate) async fn node_delete_export(
    State(st): S,
    caller: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.node(&caller)?.remove_export(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/v1/node/volumes/{id}/snapshots/{sid}", params(("id" = String, Path), ("sid" = String, Path)),
    responses((status = 200, body = NodeSnapshot)), security(("bearer" = [])))]
pub(crate) async fn node_put_snapshot(
    State(st): S,
    caller: Principal,
    Path((id, sid)): Path<(String, String)>,
) -> Answer<NodeSnapshot> {
    Ok(Json(st.node(&caller)?.create_snapshot(&id, &sid).await?))
}

#[utoipa::path(delete, path = "/v1/node/volumes/{id}/snapshots/{sid}", params(("id" = String, Path), ("sid" = String, Path)),
    responses((status = 204)), security(("bearer" = [])))]
pub(crate) async fn node_delete_snapshot(
    State(st): S,
    caller: Principal,
    Path((id, sid)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    st.node(&caller)?.delete_snapshot(&id, &sid).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn api_routes(st: AppState) -> Router {
    let mut r = Router::new();
    if st.controller.is_some() {
        r = r
            .route("/v1/volumes", get(list_volumes).post(create_volume))
            .route("/v1/volumes/{id}", get(get_volume).delete(delete_volume))
            .route("/v1/volumes/{id}/resize", post(resize_volume))
            .route("/v1/volumes/{id}/attach", post(attach_volume))
            .route("/v1/volumes/{id}/detach", post(detach_volume))
            .route("/v1/volumes/{id}/snapshots", post(create_snapshot))
            .route(
                "/v1/volumes/{id}/snapshots/{sid}",
                axum::routing::delete(delete_snapshot),
            )
            .route("/v1/nodes", get(list_nodes))
            .route("/v1/nodes/{name}", put(register_node));
    }
    if st.node.is_some() {
        r = r
            .route(
                "/v1/node/volumes/{id}",
                get(node_get_volume)
                    .put(node_put_volume)
                    .delete(node_delete_volume),
            )
            .route("/v1/node/volumes/{id}/size", put(node_resize_volume))
            .route(
                "/v1/node/volumes/{id}/export",
                put(node_put_export).delete(node_delete_export),
            )
            .route(
                "/v1/node/volumes/{id}/snapshots/{sid}",
                put(node_put_snapshot).delete(node_delete_snapshot),
            );
    }
    r.with_state(st)
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("coronafs config: {0}")]
    Config(String),
    #[error("coronafs: {0}")]
    Runtime(String),
}

pub struct Running {
    pub url: String,
    pub readiness: uc_runtime::http::Readiness,
    pub task: tokio::task::JoinHandle<()>,
}

/// Where the controller's store is, by default.
pub struct Defaults {
    /// The node's secrets directory (default password file).
    pub secrets_dir: PathBuf,
    /// The node's own flaredb REST URL.
    pub flaredb_url: String,
}

/// Starts the roles the config enables on one listener: the node service first restores its
/// exports, then the API serves; the node registers with the controller every heartbeat and
/// the controller reconciles as often.
pub async fn start(
    ctx: &NodeContext,
    config: CoronafsConfig,
    defaults: Defaults,
    shutdown: Shutdown,
) -> Result<Running, StartError> {
    config.check().map_err(StartError::Config)?;
    let scheme = ctx.scheme();
    let node_opts = ClientOptions {
        token: Some(ctx.service_token.clone()),
        ca_file: ctx.trusted_ca_file().map(ToOwned::to_owned),
        // Materializing from a large image takes a while.
        timeout: Duration::from_secs(3600),
        ..Default::default()
    };

    let controller = if config.controller {
        let password_path = config
            .flaredb_password_file
            .clone()
            .unwrap_or_else(|| defaults.secrets_dir.join("coronafs-flaredb-password"));
        let password = read_secret_file(&password_path).map_err(|e| {
            StartError::Config(format!(
                "flaredb namespace password ({}): {e}",
                password_path.display()
            ))
        })?;
        let endpoint = config
            .flaredb_endpoint
            .clone()
            .unwrap_or(defaults.flaredb_url);
        let db = FlaredbClient::for_namespace(
            &endpoint,
            &config.flaredb_namespace,
            password,
            ClientOptions {
                ca_file: ctx.trusted_ca_file().map(ToOwned::to_owned),
                ..Default::default()
            },
        )
        .map_err(|e| StartError::Config(e.to_string()))?;
        let c = Controller::new(
            db,
            ControllerSettings {
                max_volume_bytes: config.max_volume_bytes,
                node_liveness: Duration::from_secs(config.node_liveness_secs),
                node_client: node_opts.clone(),
            },
        );
        uc_runtime::shutdown::retry_transient(
            "coronafs store",
            Duration::from_secs(30),
            |_| true,
            || c.ping(),
        )
        .await
        .map_err(|e| StartError::Runtime(e.to_string()))?;
        Some(c)
    } else {
        None
    };

    let nbd_bind = config.nbd_bind.unwrap_or(ctx.bind);
    let node = if config.node {
        let n = NodeService::new(NodeSettings {
            name: ctx.node_name.clone(),
            dir: ctx.component_dir("coronafs"),
            nbd_bind,
            nbd_host: config
                .nbd_host
                .clone()
                .unwrap_or_else(|| nbd_bind.to_string()),
            port_range: config.nbd_port_min.zip(config.nbd_port_max),
            tls_dir: config.nbd_tls_dir.clone(),
            cache: config.nbd_cache.clone(),
            aio: config.nbd_aio.clone(),
            max_volume_bytes: config.max_volume_bytes,
        })
        .map_err(|e| StartError::Runtime(e.to_string()))?;
        n.restore()
            .await
            .map_err(|e| StartError::Runtime(format!("restoring exports: {e}")))?;
        Some(n)
    } else {
        None
    };

    let st = AppState {
        controller: controller.clone(),
        node: node.clone(),
        node_name: ctx.node_name.clone(),
    };
    let server = HttpServer::new("coronafs", ctx.http.clone(), ctx.tenant_auth.clone())
        .public(
            Router::new()
                .route("/v1/capabilities", get(capabilities))
                .with_state(st.clone()),
        )
        .api(api_routes(st))
        .openapi(CoronafsApi::openapi())
        .bind(ctx.listen(config.port))
        .await
        .map_err(|e| StartError::Runtime(e.to_string()))?;
    let url = format!("{scheme}://{}", server.local_addr());
    let readiness = server.readiness();
    readiness.set_ready();

    let mut background = Vec::new();
    if let Some(node) = node.clone() {
        let controller_url = match (&config.controller_url, config.controller) {
            (Some(u), _) => u.clone(),
            (None, true) => url.clone(),
            (None, false) => {
                return Err(StartError::Config(
                    "config key `coronafs.controller_url` is required when this process runs only the node service".into(),
                ));
            }
        };
        let api = ApiClient::new(
            &controller_url,
            ClientOptions {
                token: Some(ctx.service_token.clone()),
                ca_file: ctx.trusted_ca_file().map(ToOwned::to_owned),
                retries: 0,
                timeout: Duration::from_secs(5),
                ..Default::default()
            },
        )
        .map_err(|e| StartError::Config(e.to_string()))?;
        let advertise = config.advertise_url.clone().unwrap_or_else(|| url.clone());
        background.push(tokio::spawn(heartbeat(
            node,
            api,
            advertise,
            Duration::from_secs(config.heartbeat_secs),
            shutdown.clone(),
        )));
    }
    if let Some(c) = controller {
        background.push(tokio::spawn(reconcile_loop(
            c,
            Duration::from_secs(config.heartbeat_secs * 2),
            shutdown.clone(),
        )));
    }
    let task = tokio::spawn(async move {
        server.serve(shutdown).await;
        for b in background {
            let _ = b.await;
        }
        if let Some(node) = node {
            node.shutdown().await;
        }
    });
    Ok(Running {
        url,
        readiness,
        task,
    })
}

async fn heartbeat(
    node: Arc<NodeService>,
    api: ApiClient,
    url: String,
    every: Duration,
    shutdown: Shutdown,
) {
    let mut warned = false;
    loop {
        let req = RegisterNode {
            name: node.name().to_owned(),
            url: url.clone(),
            nbd_host: node.nbd_host().to_owned(),
            free_bytes: node.free_bytes(),
            tls: node.tls(),
        };
        match crate::client::register_node(&api, &req).await {
            Ok(_) => warned = false,
            // The node keeps serving its exports without the controller.
            Err(e) if !warned => {
                tracing::warn!(error = %e, "cannot register with the coronafs controller; retrying");
                warned = true;
            }
            Err(e) => tracing::debug!(error = %e, "cannot register with the coronafs controller"),
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

async fn reconcile_loop(c: Arc<Controller>, every: Duration, shutdown: Shutdown) {
    shutdown
        .every(every, || async {
            if let Err(e) = c.reconcile().await {
                tracing::debug!(error = %e, "reconcile pass failed");
            }
        })
        .await
}

impl From<CoronafsError> for StartError {
    fn from(e: CoronafsError) -> Self {
        Self::Runtime(e.to_string())
    }
}
