//! plasmavmc's control-plane HTTP API (thin handlers over [`Plasmavmc`]) and its start-up.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use flaredb::client::FlaredbClient;
use serde::Deserialize;
use uc_runtime::auth::Principal as Caller;
use uc_runtime::http::{HttpServer, Json};
use uc_runtime::secret::read_secret_file;
use uc_runtime::{ApiError, NodeContext, Secret, Shutdown};
use utoipa::OpenApi;

use crate::api::*;
use crate::config::PlasmavmcConfig;
use crate::service::{PageRequest, Plasmavmc, Settings, VmError};
use crate::store::Store;

impl From<VmError> for ApiError {
    fn from(e: VmError) -> Self {
        match e {
            VmError::NotFound(m) => ApiError::not_found(m),
            VmError::Conflict(m) => ApiError::conflict(m),
            VmError::Invalid(m) => ApiError::invalid_argument(m),
            VmError::Denied(m) => ApiError::permission_denied(m),
            VmError::NoCapacity(m) => {
                ApiError::new(StatusCode::CONFLICT, "insufficient_capacity", m)
            }
            VmError::Unavailable(m) => ApiError::unavailable(m),
        }
    }
}

type Answer<T> = Result<Json<T>, ApiError>;
type S = State<Arc<Plasmavmc>>;

fn bearer(headers: &HeaderMap) -> Result<Secret<String>, ApiError> {
    uc_runtime::auth::bearer_token(headers)
        .map(|t| Secret::new(t.to_owned()))
        .ok_or_else(|| ApiError::unauthenticated("missing bearer token"))
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .map(ToOwned::to_owned)
                .map_err(|_| ApiError::invalid_argument("Idempotency-Key: visible ASCII"))
        })
        .transpose()
}

fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    match headers.get(axum::http::header::IF_MATCH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .map(|s| s.trim().trim_matches('"'))
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| ApiError::invalid_argument("If-Match: the VM's version number")),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    page_size: Option<u32>,
    #[serde(default)]
    page_token: Option<String>,
}

impl ListQuery {
    fn into_page(self) -> PageRequest {
        PageRequest {
            page_size: self.page_size.unwrap_or(100),
            page_token: self.page_token,
        }
    }
}

// ---- images

#[utoipa::path(post, path = "/v1/images", request_body = CreateImage,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = Image), (status = 400, body = uc_runtime::ErrorBody), (status = 409, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
async fn create_image(
    State(p): S,
    caller: Caller,
    headers: HeaderMap,
    Json(req): Json<CreateImage>,
) -> Result<(StatusCode, Json<Image>), ApiError> {
    let key = idempotency_key(&headers)?;
    Ok((
        StatusCode::CREATED,
        Json(p.create_image(&caller, req, key).await?),
    ))
}

#[utoipa::path(get, path = "/v1/images", params(("page_size" = Option<u32>, Query), ("page_token" = Option<String>, Query)),
    responses((status = 200, body = Page<Image>)), security(("bearer" = [])))]
async fn list_images(
    State(p): S,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Answer<Page<Image>> {
    Ok(Json(p.list_images(&caller, q.into_page()).await?))
}

#[utoipa::path(get, path = "/v1/images/{id}", params(("id" = String, Path, description = "id or name")),
    responses((status = 200, body = Image), (status = 404, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
async fn get_image(State(p): S, caller: Caller, Path(id): Path<String>) -> Answer<Image> {
    Ok(Json(p.get_image(&caller, &id).await?))
}

#[utoipa::path(delete, path = "/v1/images/{id}", params(("id" = String, Path)),
    responses((status = 204), (status = 409, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
async fn delete_image(
    State(p): S,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    p.delete_image(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- workers

#[utoipa::path(put, path = "/v1/workers/{name}", request_body = RegisterWorker,
    responses((status = 200, body = Worker)), security(("bearer" = [])))]
async fn register_worker(
    State(p): S,
    caller: Caller,
    Path(name): Path<String>,
    Json(req): Json<RegisterWorker>,
) -> Answer<Worker> {
    if req.name != name {
        return Err(ApiError::invalid_argument(
            "the body's name differs from the path's",
        ));
    }
    Ok(Json(p.register_worker(&caller, req).await?))
}

#[utoipa::path(get, path = "/v1/workers", responses((status = 200, body = Page<Worker>)), security(("bearer" = [])))]
async fn list_workers(State(p): S, caller: Caller) -> Answer<Page<Worker>> {
    Ok(Json(p.list_workers(&caller).await?))
}

#[utoipa::path(get, path = "/v1/workers/{name}", params(("name" = String, Path)),
    responses((status = 200, body = Worker)), security(("bearer" = [])))]
async fn get_worker(State(p): S, caller: Caller, Path(name): Path<String>) -> Answer<Worker> {
    Ok(Json(p.get_worker(&caller, &name).await?))
}

#[utoipa::path(delete, path = "/v1/workers/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 409, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
async fn delete_worker(
    State(p): S,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    p.delete_worker(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/workers/{name}/drain", params(("name" = String, Path)),
    responses((status = 200, body = Worker)), security(("bearer" = [])))]
async fn drain_worker(State(p): S, caller: Caller, Path(name): Path<String>) -> Answer<Worker> {
    Ok(Json(p.set_worker_draining(&caller, &name, true).await?))
}

#[utoipa::path(post, path = "/v1/workers/{name}/undrain", params(("name" = String, Path)),
    responses((status = 200, body = Worker)), security(("bearer" = [])))]
async fn undrain_worker(State(p): S, caller: Caller, Path(name): Path<String>) -> Answer<Worker> {
    Ok(Json(p.set_worker_draining(&caller, &name, false).await?))
}

#[utoipa::path(post, path = "/v1/workers/{name}/heartbeat", params(("name" = String, Path)), request_body = Heartbeat,
    responses((status = 200, body = Vec<Assignment>)), security(("bearer" = [])))]
async fn heartbeat(
    State(p): S,
    caller: Caller,
    Path(name): Path<String>,
    Json(hb): Json<Heartbeat>,
) -> Answer<Vec<Assignment>> {
    Ok(Json(p.heartbeat(&caller, &name, hb).await?))
}

// ---- VMs

#[utoipa::path(post, path = "/v1/vms", request_body = CreateVm,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = Vm), (status = 400, body = uc_runtime::ErrorBody), (status = 409, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
async fn create_vm(
    State(p): S,
    caller: Caller,
    headers: HeaderMap,
    Json(req): Json<CreateVm>,
) -> Result<(StatusCode, Json<Vm>), ApiError> {
    let token = bearer(&headers)?;
    let key = idempotency_key(&headers)?;
    Ok((
        StatusCode::CREATED,
        Json(p.create_vm(&caller, &token, req, key).await?),
    ))
}

#[utoipa::path(get, path = "/v1/vms", params(("page_size" = Option<u32>, Query), ("page_token" = Option<String>, Query)),
    responses((status = 200, body = Page<Vm>)), security(("bearer" = [])))]
async fn list_vms(State(p): S, caller: Caller, Query(q): Query<ListQuery>) -> Answer<Page<Vm>> {
    Ok(Json(p.list_vms(&caller, q.into_page()).await?))
}

#[utoipa::path(get, path = "/v1/vms/{id}", params(("id" = String, Path)),
    responses((status = 200, body = Vm), (status = 404, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
async fn get_vm(State(p): S, caller: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    let vm = p.get_vm(&caller, &id).await?;
    Ok((
        [(axum::http::header::ETAG, format!("\"{}\"", vm.version))],
        Json(vm),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    #[serde(default)]
    force: bool,
}

#[utoipa::path(delete, path = "/v1/vms/{id}", params(("id" = String, Path), ("force" = Option<bool>, Query)),
    responses((status = 204, description = "deleted"), (status = 202, body = Vm, description = "the worker is still tearing it down"),
        (status = 409, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
async fn delete_vm(
    State(p): S,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<Response, ApiError> {
    Ok(match p.delete_vm(&caller, &id, q.force).await? {
        None => StatusCode::NO_CONTENT.into_response(),
        Some(vm) => (StatusCode::ACCEPTED, Json(vm)).into_response(),
    })
}

#[utoipa::path(post, path = "/v1/vms/{id}/start", params(("id" = String, Path)),
    responses((status = 200, body = Vm)), security(("bearer" = [])))]
async fn start_vm(State(p): S, caller: Caller, Path(id): Path<String>) -> Answer<Vm> {
    Ok(Json(p.start_vm(&caller, &id).await?))
}

#[utoipa::path(post, path = "/v1/vms/{id}/stop", params(("id" = String, Path)), request_body = Option<StopVm>,
    responses((status = 200, body = Vm)), security(("bearer" = [])))]
async fn stop_vm(
    State(p): S,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Answer<Vm> {
    // The body is optional: no body means the default grace period.
    let req: StopVm = if body.is_empty() {
        StopVm::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid_argument(format!("request body: {e}")))?
    };
    Ok(Json(p.stop_vm(&caller, &id, req).await?))
}

#[utoipa::path(post, path = "/v1/vms/{id}/reboot", params(("id" = String, Path)),
    responses((status = 200, body = Vm)), security(("bearer" = [])))]
async fn reboot_vm(State(p): S, caller: Caller, Path(id): Path<String>) -> Answer<Vm> {
    Ok(Json(p.reboot_vm(&caller, &id).await?))
}

#[utoipa::path(post, path = "/v1/vms/{id}/resize", params(("id" = String, Path), ("If-Match" = Option<String>, Header)), request_body = ResizeVm,
    responses((status = 200, body = Vm), (status = 409, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
async fn resize_vm(
    State(p): S,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(req): Json<ResizeVm>,
) -> Answer<Vm> {
    let version = if_match(&headers)?;
    Ok(Json(p.resize_vm(&caller, &id, version, req).await?))
}

#[utoipa::path(post, path = "/v1/vms/{id}/migrate", params(("id" = String, Path)), request_body = MigrateVm,
    responses((status = 200, body = Vm), (status = 409, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
async fn migrate_vm(
    State(p): S,
    caller: Caller,
    Path(id): Path<String>,
    Json(req): Json<MigrateVm>,
) -> Answer<Vm> {
    Ok(Json(p.migrate_vm(&caller, &id, req).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    #[serde(default)]
    after: Option<i64>,
    #[serde(default)]
    page_token: Option<String>,
}

#[utoipa::path(get, path = "/v1/vms/{id}/events", params(("id" = String, Path), ("after" = Option<i64>, Query)),
    responses((status = 200, body = Page<VmEvent>)), security(("bearer" = [])))]
async fn vm_events(
    State(p): S,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Answer<Page<VmEvent>> {
    let after = match (&q.page_token, q.after) {
        (Some(t), _) => t
            .parse()
            .map_err(|_| ApiError::invalid_argument("page_token: from a previous page"))?,
        (None, a) => a.unwrap_or(0),
    };
    Ok(Json(p.events(&caller, &id, after).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsoleQuery {
    #[serde(default)]
    offset: u64,
}

#[utoipa::path(get, path = "/v1/vms/{id}/console", params(("id" = String, Path), ("offset" = Option<u64>, Query)),
    responses((status = 200, body = ConsoleLog)), security(("bearer" = [])))]
async fn console(
    State(p): S,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<ConsoleQuery>,
) -> Answer<ConsoleLog> {
    Ok(Json(p.console(&caller, &id, q.offset).await?))
}

#[derive(OpenApi)]
#[openapi(
    info(title = "plasmavmc", description = "VMs, images and workers"),
    paths(
        create_image,
        list_images,
        get_image,
        delete_image,
        register_worker,
        list_workers,
        get_worker,
        delete_worker,
        drain_worker,
        undrain_worker,
        heartbeat,
        create_vm,
        list_vms,
        get_vm,
        delete_vm,
        start_vm,
        stop_vm,
        reboot_vm,
        resize_vm,
        migrate_vm,
        vm_events,
        console
    ),
    components(schemas(
        Image,
        CreateImage,
        ImageKind,
        Worker,
        RegisterWorker,
        Heartbeat,
        VmReport,
        Assignment,
        Vm,
        CreateVm,
        VmState,
        PowerState,
        VmVolume,
        VmNic,
        VolumeRequest,
        StopVm,
        ResizeVm,
        MigrateVm,
        VmEvent,
        ConsoleLog
    ))
)]
pub struct PlasmavmcApi;

pub fn api_routes(p: Arc<Plasmavmc>) -> Router {
    Router::new()
        .route("/v1/images", get(list_images).post(create_image))
        .route("/v1/images/{id}", get(get_image).delete(delete_image))
        .route("/v1/workers", get(list_workers))
        .route(
            "/v1/workers/{name}",
            get(get_worker).put(register_worker).delete(delete_worker),
        )
        .route("/v1/workers/{name}/heartbeat", post(heartbeat))
        .route("/v1/workers/{name}/drain", post(drain_worker))
        .route("/v1/workers/{name}/undrain", post(undrain_worker))
        .route("/v1/vms", get(list_vms).post(create_vm))
        .route("/v1/vms/{id}", get(get_vm).delete(delete_vm))
        .route("/v1/vms/{id}/start", post(start_vm))
        .route("/v1/vms/{id}/stop", post(stop_vm))
        .route("/v1/vms/{id}/reboot", post(reboot_vm))
        .route("/v1/vms/{id}/resize", post(resize_vm))
        .route("/v1/vms/{id}/migrate", post(migrate_vm))
        .route("/v1/vms/{id}/events", get(vm_events))
        .route("/v1/vms/{id}/console", get(console))
        .with_state(p)
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("plasmavmc config: {0}")]
    Config(String),
    #[error("plasmavmc: {0}")]
    Runtime(String),
}

pub struct Running {
    pub url: String,
    pub readiness: uc_runtime::http::Readiness,
    pub task: tokio::task::JoinHandle<()>,
}

/// Where the control plane finds what it depends on when the config does not say.
pub struct Defaults {
    pub secrets_dir: PathBuf,
    pub flaredb_url: String,
    /// The node's own prismnet / coronafs, when this node runs them.
    pub prismnet_url: Option<String>,
    pub coronafs_url: Option<String>,
}

pub fn check_config(config: &PlasmavmcConfig) -> Result<(), StartError> {
    if config.worker_timeout_secs == 0 {
        return Err(StartError::Config(
            "plasmavmc.worker_timeout_secs must be at least 1".into(),
        ));
    }
    if config.max_vcpus == 0 || config.max_memory_mib < 16 {
        return Err(StartError::Config(
            "plasmavmc.max_vcpus must be ≥ 1 and max_memory_mib ≥ 16".into(),
        ));
    }
    Ok(())
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

/// Starts the control plane: opens its flaredb namespace, then serves the API.
pub async fn start(
    ctx: &NodeContext,
    config: PlasmavmcConfig,
    defaults: Defaults,
    shutdown: Shutdown,
) -> Result<Running, StartError> {
    check_config(&config)?;
    let password_path = config
        .flaredb_password_file
        .clone()
        .unwrap_or_else(|| defaults.secrets_dir.join("plasmavmc-flaredb-password"));
    let password = read_secret_file(&password_path).map_err(|e| {
        StartError::Config(format!(
            "flaredb namespace password ({}): {e}",
            password_path.display()
        ))
    })?;
    let options = uc_runtime::client::ClientOptions {
        ca_file: ctx.trusted_ca_file().map(ToOwned::to_owned),
        ..Default::default()
    };
    let endpoint = config
        .flaredb_endpoint
        .clone()
        .unwrap_or(defaults.flaredb_url);
    let db = FlaredbClient::for_namespace(
        &endpoint,
        &config.flaredb_namespace,
        password,
        options.clone(),
    )
    .map_err(|e| StartError::Config(e.to_string()))?;
    // An explicit empty string turns a dependency off.
    let prismnet_url = match &config.prismnet_url {
        Some(u) => non_empty(Some(u.clone())),
        None => defaults.prismnet_url,
    };
    let coronafs_url = match &config.coronafs_url {
        Some(u) => non_empty(Some(u.clone())),
        None => defaults.coronafs_url,
    };
    let net = prismnet_url
        .map(|u| crate::net::Network::new(&u, ctx.service_token.clone(), options.clone()))
        .transpose()
        .map_err(|e| StartError::Config(format!("prismnet url: {e}")))?;
    let volumes = coronafs_url
        .map(|u| crate::volumes::Volumes::new(&u, ctx.service_token.clone(), options.clone()))
        .transpose()
        .map_err(|e| StartError::Config(format!("coronafs url: {e}")))?;
    let service = Arc::new(Plasmavmc::new(
        Store::new(db),
        net,
        volumes,
        Settings {
            worker_timeout: Duration::from_secs(config.worker_timeout_secs),
            max_vcpus: config.max_vcpus,
            max_memory_mib: config.max_memory_mib,
            // Below clients' usual 30 s request timeout; a slower teardown answers 202.
            delete_wait: Duration::from_secs(20),
        },
        ctx.service_token.clone(),
        options,
    ));
    uc_runtime::shutdown::retry_transient(
        "plasmavmc store",
        Duration::from_secs(30),
        |e| matches!(e, VmError::Unavailable(_)),
        || service.init(),
    )
    .await
    .map_err(|e| StartError::Runtime(e.to_string()))?;
    let server = HttpServer::new("plasmavmc", ctx.http.clone(), ctx.tenant_auth.clone())
        .api(api_routes(service.clone()))
        .openapi(PlasmavmcApi::openapi())
        .bind(ctx.listen(config.port))
        .await
        .map_err(|e| StartError::Runtime(e.to_string()))?;
    let url = format!("{}://{}", ctx.scheme(), server.local_addr());
    let readiness = server.readiness();
    readiness.set_ready();
    // Undo creates a crash interrupted (their record stays `creating`).
    let reaper = {
        let service = service.clone();
        let shutdown = shutdown.clone();
        async move {
            shutdown
                .every(Duration::from_secs(30), || async {
                    if let Err(e) = service
                        .reap_abandoned_creates(Duration::from_secs(300))
                        .await
                    {
                        tracing::debug!(error = %e, "cannot reap abandoned creates");
                    }
                })
                .await
        }
    };
    let task = tokio::spawn(async move {
        tokio::join!(server.serve(shutdown), reaper);
    });
    Ok(Running {
        url,
        readiness,
        task,
    })
}
