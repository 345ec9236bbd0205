//! prismnet's HTTP API (thin handlers over [`Prismnet`]) and its start-up.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router as AxumRouter;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get, post, put};
use flaredb::client::FlaredbClient;
use serde::Deserialize;
use uc_runtime::auth::Principal as Caller;
use uc_runtime::http::{HttpServer, Json};
use uc_runtime::secret::read_secret_file;
use uc_runtime::{ApiError, NodeContext, Shutdown};
use utoipa::OpenApi;

use crate::api::*;
use crate::config::PrismnetConfig;
use crate::service::{PageQuery, PortFilter, Prismnet, Scope};

type S = State<Arc<Prismnet>>;
type Answer<T> = Result<Json<T>, ApiError>;
type Created<T> = Result<(StatusCode, Json<T>), ApiError>;

fn key(headers: &HeaderMap) -> Option<&str> {
    headers.get("idempotency-key").and_then(|v| v.to_str().ok())
}

fn scope(caller: &Caller, permission: &str) -> Result<Scope, ApiError> {
    caller.require(permission)?;
    Ok(Scope::of(caller))
}

fn operator(caller: &Caller) -> Result<(), ApiError> {
    if caller.admin {
        Ok(())
    } else {
        Err(ApiError::permission_denied(
            "agent endpoints take the node's service token",
        ))
    }
}

/// Query of list calls: paging plus the filters some lists accept.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    pub limit: Option<u32>,
    pub page_token: Option<String>,
    pub vpc_id: Option<String>,
    pub subnet_id: Option<String>,
    pub device_id: Option<String>,
    pub host: Option<String>,
}

impl ListQuery {
    fn page(&self) -> PageQuery {
        PageQuery {
            limit: self.limit,
            page_token: self.page_token.clone(),
        }
    }
}

const NO_CONTENT: Result<StatusCode, ApiError> = Ok(StatusCode::NO_CONTENT);

// ---- VPCs

#[utoipa::path(post, path = "/v1/vpcs", request_body = CreateVpc, params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = Vpc), (status = 400, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
async fn create_vpc(
    State(p): S,
    c: Caller,
    h: HeaderMap,
    Json(r): Json<CreateVpc>,
) -> Created<Vpc> {
    let s = scope(&c, "prismnet.vpc.create")?;
    Ok((
        StatusCode::CREATED,
        Json(p.create_vpc(&s, r, key(&h)).await?),
    ))
}

#[utoipa::path(get, path = "/v1/vpcs", params(ListQuery), responses((status = 200, body = Page<Vpc>)), security(("bearer" = [])))]
async fn list_vpcs(State(p): S, c: Caller, Query(q): Query<ListQuery>) -> Answer<Page<Vpc>> {
    let s = scope(&c, "prismnet.vpc.list")?;
    Ok(Json(p.list_vpcs(&s, &q.page()).await?))
}

#[utoipa::path(get, path = "/v1/vpcs/{id}", params(("id" = String, Path)), responses((status = 200, body = Vpc), (status = 404, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
async fn get_vpc(State(p): S, c: Caller, Path(id): Path<String>) -> Answer<Vpc> {
    let s = scope(&c, "prismnet.vpc.get")?;
    Ok(Json(p.get_vpc(&s, &id).await?))
}

#[utoipa::path(put, path = "/v1/vpcs/{id}", params(("id" = String, Path)), request_body = UpdateVpc, responses((status = 200, body = Vpc), (status = 412, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
async fn update_vpc(
    State(p): S,
    c: Caller,
    Path(id): Path<String>,
    Json(r): Json<UpdateVpc>,
) -> Answer<Vpc> {
    let s = scope(&c, "prismnet.vpc.update")?;
    Ok(Json(p.update_vpc(&s, &id, r).await?))
}

#[utoipa::path(delete, path = "/v1/vpcs/{id}", params(("id" = String, Path)), responses((status = 204), (status = 409, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
async fn delete_vpc(
    State(p): S,
    c: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let s = scope(&c, "prismnet.vpc.delete")?;
    p.delete_vpc(&s, &id).await?;
    NO_CONTENT
}

// ---- subnets

#[utoipa::path(post, path = "/v1/subnets", request_body = CreateSubnet, params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = Subnet), (status = 400, body = uc_runtime::ErrorBody), (status = 409, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
async fn create_subnet(
    State(p): S,
    c: Caller,
    h: HeaderMap,
    Json(r): Json<CreateSubnet>,
) -> Created<Subnet> {
    let s = scope(&c, "prismnet.subnet.create")?;
    Ok((
        StatusCode::CREATED,
        Json(p.create_subnet(&s, r, key(&h)).await?),
    ))
}

#[utoipa::path(get, path = "/v1/subnets", params(ListQuery), responses((status = 200, body = Page<Subnet>)), security(("bearer" = [])))]
async fn list_subnets(State(p): S, c: Caller, Query(q): Query<ListQuery>) -> Answer<Page<Subnet>> {
    let s = scope(&c, "prismnet.subnet.list")?;
    Ok(Json(
        p.list_subnets(&s, &q.page(), q.vpc_id.as_deref()).await?,
    ))
}

#[utoipa::path(get, path = "/v1/subnets/{id}", params(("id" = String, Path)), responses((status = 200, body = Subnet)), security(("bearer" = [])))]
async fn get_subnet(State(p): S, c: Caller, Path(id): Path<String>) -> Answer<Subnet> {
    let s = scope(&c, "prismnet.subnet.get")?;
    Ok(Json(p.get_subnet(&s, &id).await?))
}

#[utoipa::path(put, path = "/v1/subnets/{id}", params(("id" = String, Path)), request_body = UpdateSubnet, responses((status = 200, body = Subnet)), security(("bearer" = [])))]
async fn update_subnet(
    State(p): S,
    c: Caller,
    Path(id): Path<String>,
    Json(r): Json<UpdateSubnet>,
) -> Answer<Subnet> {
    let s = scope(&c, "prismnet.subnet.update")?;
    Ok(Json(p.update_subnet(&s, &id, r).await?))
}

#[utoipa::path(delete, path = "/v1/subnets/{id}", params(("id" = String, Path)), responses((status = 204), (status = 409, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
async fn delete_subnet(
    State(p): S,
    c: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let s = scope(&c, "prismnet.subnet.delete")?;
    p.delete_subnet(&s, &id).await?;
    NO_CONTENT
}

// ---- ports

#[utoipa::path(post, path = "/v1/ports", request_body = CreatePort, params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = Port), (status = 400, body = uc_runtime::ErrorBody), (status = 409, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
async fn create_port(
    State(p): S,
    c: Caller,
    h: HeaderMap,
    Json(r): Json<CreatePort>,
) -> Created<Port> {
    let s = scope(&c, "prismnet.port.create")?;
    Ok((
        StatusCode::CREATED,
        Json(p.create_port(&s, r, key(&h)).await?),
    ))
}

#[utoipa::path(get, path = "/v1/ports", params(ListQuery), responses((status = 200, body = Page<Port>)), security(("bearer" = [])))]
async fn list_ports(State(p): S, c: Caller, Query(q): Query<ListQuery>) -> Answer<Page<Port>> {
    let s = scope(&c, "prismnet.port.list")?;
    let filter = PortFilter {
        subnet_id: q.subnet_id.clone(),
        device_id: q.device_id.clone(),
        host: q.host.clone(),
    };
    Ok(Json(p.list_ports(&s, &q.page(), &filter).await?))
}

#[utoipa::path(get, path = "/v1/ports/{id}", params(("id" = String, Path)), responses((status = 200, body = Port)), security(("bearer" = [])))]
async fn get_port(State(p): S, c: Caller, Path(id): Path<String>) -> Answer<Port> {
    let s = scope(&c, "prismnet.port.get")?;
    Ok(Json(p.get_port(&s, &id).await?))
}

#[utoipa::path(put, path = "/v1/ports/{id}", params(("id" = String, Path)), request_body = UpdatePort, responses((status = 200, body = Port), (status = 412, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
async fn update_port(
    State(p): S,
    c: Caller,
    Path(id): Path<String>,
    Json(r): Json<UpdatePort>,
) -> Answer<Port> {
    let s = scope(&c, "prismnet.port.update")?;
    Ok(Json(p.update_port(&s, &id, r).await?))
}

#[utoipa::path(delete, path = "/v1/ports/{id}", params(("id" = String, Path)), responses((status = 204)), security(("bearer" = [])))]
async fn delete_port(
    State(p): S,
    c: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let s = scope(&c, "prismnet.port.delete")?;
    p.delete_port(&s, &id).await?;
    NO_CONTENT
}

#[utoipa::path(put, path = "/v1/ports/{id}/migration", params(("id" = String, Path)), request_body = Binding,
    responses((status = 200, body = Port), (status = 400, body = uc_runtime::ErrorBody), (status = 409, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
async fn set_port_migration(
    State(p): S,
    c: Caller,
    Path(id): Path<String>,
    Json(r): Json<Binding>,
) -> Answer<Port> {
    let s = scope(&c, "prismnet.port.update")?;
    Ok(Json(p.set_port_migration(&s, &id, r).await?))
}

#[utoipa::path(delete, path = "/v1/ports/{id}/migration", params(("id" = String, Path)), responses((status = 204)), security(("bearer" = [])))]
async fn cancel_port_migration(
    State(p): S,
    c: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let s = scope(&c, "prismnet.port.update")?;
    p.cancel_port_migration(&s, &id).await?;
    NO_CONTENT
}

#[utoipa::path(post, path = "/v1/ports/{id}/migration/activate", params(("id" = String, Path)),
    responses((status = 200, body = Port), (status = 409, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
async fn activate_port_migration(State(p): S, c: Caller, Path(id): Path<String>) -> Answer<Port> {
    let s = scope(&c, "prismnet.port.update")?;
    Ok(Json(p.activate_port_migration(&s, &id).await?))
}

// ---- security groups

#[utoipa::path(post, path = "/v1/security-groups", request_body = CreateSecurityGroup, params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = SecurityGroup)), security(("bearer" = [])))]
async fn create_sg(
    State(p): S,
    c: Caller,
    h: HeaderMap,
    Json(r): Json<CreateSecurityGroup>,
) -> Created<SecurityGroup> {
    let s = scope(&c, "prismnet.sg.create")?;
    Ok((
        StatusCode::CREATED,
        Json(p.create_sg(&s, r, key(&h)).await?),
    ))
}

#[utoipa::path(get, path = "/v1/security-groups", params(ListQuery), responses((status = 200, body = Page<SecurityGroup>)), security(("bearer" = [])))]
async fn list_sgs(
    State(p): S,
    c: Caller,
    Query(q): Query<ListQuery>,
) -> Answer<Page<SecurityGroup>> {
    let s = scope(&c, "prismnet.sg.list")?;
    Ok(Json(p.list_sgs(&s, &q.page(), q.vpc_id.as_deref()).await?))
}

#[utoipa::path(get, path = "/v1/security-groups/{id}", params(("id" = String, Path)), responses((status = 200, body = SecurityGroup)), security(("bearer" = [])))]
async fn get_sg(State(p): S, c: Caller, Path(id): Path<String>) -> Answer<SecurityGroup> {
    let s = scope(&c, "prismnet.sg.get")?;
    Ok(Json(p.get_sg(&s, &id).await?))
}

#[utoipa::path(delete, path = "/v1/security-groups/{id}", params(("id" = String, Path)), responses((status = 204), (status = 409, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
async fn delete_sg(State(p): S, c: Caller, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let s = scope(&c, "prismnet.sg.delete")?;
    p.delete_sg(&s, &id).await?;
    NO_CONTENT
}

#[utoipa::path(post, path = "/v1/security-groups/{id}/rules", params(("id" = String, Path)), request_body = CreateRule,
    responses((status = 201, body = Rule)), security(("bearer" = [])))]
async fn add_rule(
    State(p): S,
    c: Caller,
    Path(id): Path<String>,
    Json(r): Json<CreateRule>,
) -> Created<Rule> {
    let s = scope(&c, "prismnet.sg.update")?;
    Ok((StatusCode::CREATED, Json(p.add_rule(&s, &id, r).await?)))
}

#[utoipa::path(delete, path = "/v1/security-groups/{id}/rules/{rule_id}", params(("id" = String, Path), ("rule_id" = String, Path)),
    responses((status = 204)), security(("bearer" = [])))]
async fn delete_rule(
    State(p): S,
    c: Caller,
    Path((id, rule)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let s = scope(&c, "prismnet.sg.update")?;
    p.delete_rule(&s, &id, &rule).await?;
    NO_CONTENT
}

// ---- routers

#[utoipa::path(post, path = "/v1/routers", request_body = CreateRouter, params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = Router)), security(("bearer" = [])))]
async fn create_router(
    State(p): S,
    c: Caller,
    h: HeaderMap,
    Json(r): Json<CreateRouter>,
) -> Created<Router> {
    let s = scope(&c, "prismnet.router.create")?;
    Ok((
        StatusCode::CREATED,
        Json(p.create_router(&s, r, key(&h)).await?),
    ))
}

#[utoipa::path(get, path = "/v1/routers", params(ListQuery), responses((status = 200, body = Page<Router>)), security(("bearer" = [])))]
async fn list_routers(State(p): S, c: Caller, Query(q): Query<ListQuery>) -> Answer<Page<Router>> {
    let s = scope(&c, "prismnet.router.list")?;
    Ok(Json(p.list_routers(&s, &q.page()).await?))
}

#[utoipa::path(get, path = "/v1/routers/{id}", params(("id" = String, Path)), responses((status = 200, body = Router)), security(("bearer" = [])))]
async fn get_router(State(p): S, c: Caller, Path(id): Path<String>) -> Answer<Router> {
    let s = scope(&c, "prismnet.router.get")?;
    Ok(Json(p.get_router(&s, &id).await?))
}

#[utoipa::path(put, path = "/v1/routers/{id}", params(("id" = String, Path)), request_body = UpdateRouter, responses((status = 200, body = Router)), security(("bearer" = [])))]
async fn update_router(
    State(p): S,
    c: Caller,
    Path(id): Path<String>,
    Json(r): Json<UpdateRouter>,
) -> Answer<Router> {
    let s = scope(&c, "prismnet.router.update")?;
    Ok(Json(p.update_router(&s, &id, r).await?))
}

#[utoipa::path(delete, path = "/v1/routers/{id}", params(("id" = String, Path)), responses((status = 204), (status = 409, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
async fn delete_router(
    State(p): S,
    c: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let s = scope(&c, "prismnet.router.delete")?;
    p.delete_router(&s, &id).await?;
    NO_CONTENT
}

#[utoipa::path(post, path = "/v1/routers/{id}/interfaces", params(("id" = String, Path)), request_body = AddInterface,
    responses((status = 200, body = Router), (status = 409, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
async fn add_interface(
    State(p): S,
    c: Caller,
    Path(id): Path<String>,
    Json(r): Json<AddInterface>,
) -> Answer<Router> {
    let s = scope(&c, "prismnet.router.update")?;
    Ok(Json(p.add_interface(&s, &id, r).await?))
}

#[utoipa::path(delete, path = "/v1/routers/{id}/interfaces/{subnet_id}", params(("id" = String, Path), ("subnet_id" = String, Path)),
    responses((status = 200, body = Router)), security(("bearer" = [])))]
async fn remove_interface(
    State(p): S,
    c: Caller,
    Path((id, subnet)): Path<(String, String)>,
) -> Answer<Router> {
    let s = scope(&c, "prismnet.router.update")?;
    Ok(Json(p.remove_interface(&s, &id, &subnet).await?))
}

// ---- floating IPs

#[utoipa::path(post, path = "/v1/floating-ips", request_body = CreateFloatingIp, params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = FloatingIp), (status = 409, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
async fn create_fip(
    State(p): S,
    c: Caller,
    h: HeaderMap,
    Json(r): Json<CreateFloatingIp>,
) -> Created<FloatingIp> {
    let s = scope(&c, "prismnet.fip.create")?;
    Ok((
        StatusCode::CREATED,
        Json(p.create_fip(&s, r, key(&h)).await?),
    ))
}

#[utoipa::path(get, path = "/v1/floating-ips", params(ListQuery), responses((status = 200, body = Page<FloatingIp>)), security(("bearer" = [])))]
async fn list_fips(State(p): S, c: Caller, Query(q): Query<ListQuery>) -> Answer<Page<FloatingIp>> {
    let s = scope(&c, "prismnet.fip.list")?;
    Ok(Json(p.list_fips(&s, &q.page()).await?))
}

#[utoipa::path(get, path = "/v1/floating-ips/{id}", params(("id" = String, Path)), responses((status = 200, body = FloatingIp)), security(("bearer" = [])))]
async fn get_fip(State(p): S, c: Caller, Path(id): Path<String>) -> Answer<FloatingIp> {
    let s = scope(&c, "prismnet.fip.get")?;
    Ok(Json(p.get_fip(&s, &id).await?))
}

#[utoipa::path(put, path = "/v1/floating-ips/{id}", params(("id" = String, Path)), request_body = UpdateFloatingIp, responses((status = 200, body = FloatingIp)), security(("bearer" = [])))]
async fn update_fip(
    State(p): S,
    c: Caller,
    Path(id): Path<String>,
    Json(r): Json<UpdateFloatingIp>,
) -> Answer<FloatingIp> {
    let s = scope(&c, "prismnet.fip.update")?;
    Ok(Json(p.update_fip(&s, &id, r).await?))
}

#[utoipa::path(delete, path = "/v1/floating-ips/{id}", params(("id" = String, Path)), responses((status = 204)), security(("bearer" = [])))]
async fn delete_fip(
    State(p): S,
    c: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let s = scope(&c, "prismnet.fip.delete")?;
    p.delete_fip(&s, &id).await?;
    NO_CONTENT
}

// ---- pools

#[utoipa::path(post, path = "/v1/pools", request_body = CreatePool, params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = Pool), (status = 403, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
async fn create_pool(
    State(p): S,
    c: Caller,
    h: HeaderMap,
    Json(r): Json<CreatePool>,
) -> Created<Pool> {
    let s = scope(&c, "prismnet.pool.create")?;
    Ok((
        StatusCode::CREATED,
        Json(p.create_pool(&s, r, key(&h)).await?),
    ))
}

#[utoipa::path(get, path = "/v1/pools", params(ListQuery), responses((status = 200, body = Page<Pool>)), security(("bearer" = [])))]
async fn list_pools(State(p): S, c: Caller, Query(q): Query<ListQuery>) -> Answer<Page<Pool>> {
    scope(&c, "prismnet.pool.list")?;
    Ok(Json(p.list_pools(&q.page()).await?))
}

#[utoipa::path(get, path = "/v1/pools/{id}", params(("id" = String, Path, description = "id or name")), responses((status = 200, body = Pool)), security(("bearer" = [])))]
async fn get_pool(State(p): S, c: Caller, Path(id): Path<String>) -> Answer<Pool> {
    scope(&c, "prismnet.pool.get")?;
    Ok(Json(p.get_pool(&id).await?))
}

#[utoipa::path(delete, path = "/v1/pools/{id}", params(("id" = String, Path)), responses((status = 204), (status = 409, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
async fn delete_pool(
    State(p): S,
    c: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let s = scope(&c, "prismnet.pool.delete")?;
    p.delete_pool(&s, &id).await?;
    NO_CONTENT
}

#[utoipa::path(post, path = "/v1/pools/{id}/allocations", params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)), request_body = Allocate,
    responses((status = 201, body = PoolAllocation), (status = 409, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
async fn allocate(
    State(p): S,
    c: Caller,
    h: HeaderMap,
    Path(id): Path<String>,
    Json(r): Json<Allocate>,
) -> Created<PoolAllocation> {
    let s = scope(&c, "prismnet.pool.update")?;
    Ok((
        StatusCode::CREATED,
        Json(p.allocate(&s, &id, r, key(&h)).await?),
    ))
}

#[utoipa::path(get, path = "/v1/pools/{id}/allocations", params(("id" = String, Path), ListQuery), responses((status = 200, body = Page<PoolAllocation>)), security(("bearer" = [])))]
async fn list_allocations(
    State(p): S,
    c: Caller,
    Path(id): Path<String>,
    Query(q): Query<ListQuery>,
) -> Answer<Page<PoolAllocation>> {
    let s = scope(&c, "prismnet.pool.get")?;
    Ok(Json(p.list_allocations(&s, &id, &q.page()).await?))
}

#[utoipa::path(delete, path = "/v1/pools/{id}/allocations/{ip}", params(("id" = String, Path), ("ip" = String, Path)), responses((status = 204)), security(("bearer" = [])))]
async fn release(
    State(p): S,
    c: Caller,
    Path((id, ip)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let s = scope(&c, "prismnet.pool.update")?;
    p.release(&s, &id, &ip).await?;
    NO_CONTENT
}

// ---- agents (service token only)

#[utoipa::path(get, path = "/v1/agent/hosts", responses((status = 200, body = Vec<Host>)), security(("bearer" = [])))]
async fn list_hosts(State(p): S, c: Caller) -> Answer<Vec<Host>> {
    operator(&c)?;
    Ok(Json(p.list_hosts().await?))
}

#[utoipa::path(put, path = "/v1/agent/hosts/{host}", params(("host" = String, Path)), request_body = HostRegistration, responses((status = 200, body = Host)), security(("bearer" = [])))]
async fn register_host(
    State(p): S,
    c: Caller,
    Path(host): Path<String>,
    Json(r): Json<HostRegistration>,
) -> Answer<Host> {
    operator(&c)?;
    Ok(Json(p.register_host(&host, r).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct PlanQuery {
    /// Answer once the model revision is greater than this (long poll).
    #[serde(default)]
    pub after: i64,
    /// Seconds to wait for a newer revision (default 20, at most 60).
    pub wait: Option<u64>,
}

#[utoipa::path(get, path = "/v1/agent/hosts/{host}/plan", params(("host" = String, Path), PlanQuery), responses((status = 200, body = PlanAnswer)), security(("bearer" = [])))]
async fn host_plan(
    State(p): S,
    c: Caller,
    Path(host): Path<String>,
    Query(q): Query<PlanQuery>,
) -> Answer<PlanAnswer> {
    operator(&c)?;
    let wait = Duration::from_secs(q.wait.unwrap_or(20).min(60));
    Ok(Json(p.plan(&host, q.after, wait).await?))
}

#[utoipa::path(post, path = "/v1/agent/hosts/{host}/status", params(("host" = String, Path)), request_body = StatusReport, responses((status = 204)), security(("bearer" = [])))]
async fn report_status(
    State(p): S,
    c: Caller,
    Path(host): Path<String>,
    Json(r): Json<StatusReport>,
) -> Result<StatusCode, ApiError> {
    operator(&c)?;
    p.report_status(&host, r).await?;
    NO_CONTENT
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "prismnet API",
        description = "Tenant networks: VPCs, subnets, ports, routers, security groups, floating IPs, address pools; host agents."
    ),
    paths(
        create_vpc,
        list_vpcs,
        get_vpc,
        update_vpc,
        delete_vpc,
        create_subnet,
        list_subnets,
        get_subnet,
        update_subnet,
        delete_subnet,
        create_port,
        list_ports,
        get_port,
        update_port,
        delete_port,
        set_port_migration,
        cancel_port_migration,
        activate_port_migration,
        create_sg,
        list_sgs,
        get_sg,
        delete_sg,
        add_rule,
        delete_rule,
        create_router,
        list_routers,
        get_router,
        update_router,
        delete_router,
        add_interface,
        remove_interface,
        create_fip,
        list_fips,
        get_fip,
        update_fip,
        delete_fip,
        create_pool,
        list_pools,
        get_pool,
        delete_pool,
        allocate,
        list_allocations,
        release,
        list_hosts,
        register_host,
        host_plan,
        report_status
    ),
    components(schemas(
        Vpc,
        CreateVpc,
        UpdateVpc,
        Subnet,
        CreateSubnet,
        UpdateSubnet,
        Binding,
        Port,
        MigrationBinding,
        CreatePort,
        UpdatePort,
        SecurityGroup,
        Rule,
        CreateRule,
        CreateSecurityGroup,
        Router,
        RouterInterface,
        ExternalGateway,
        SetExternalGateway,
        CreateRouter,
        UpdateRouter,
        AddInterface,
        FloatingIp,
        CreateFloatingIp,
        UpdateFloatingIp,
        Pool,
        CreatePool,
        PoolAllocation,
        Allocate,
        HostRegistration,
        Host,
        PlanAnswer,
        PortStatus,
        StatusReport
    ))
)]
pub struct PrismnetApi;

pub fn routes(p: Arc<Prismnet>) -> AxumRouter {
    AxumRouter::new()
        .route("/v1/vpcs", get(list_vpcs).post(create_vpc))
        .route(
            "/v1/vpcs/{id}",
            get(get_vpc).put(update_vpc).delete(delete_vpc),
        )
        .route("/v1/subnets", get(list_subnets).post(create_subnet))
        .route(
            "/v1/subnets/{id}",
            get(get_subnet).put(update_subnet).delete(delete_subnet),
        )
        .route("/v1/ports", get(list_ports).post(create_port))
        .route(
            "/v1/ports/{id}",
            get(get_port).put(update_port).delete(delete_port),
        )
        .route(
            "/v1/ports/{id}/migration",
            put(set_port_migration).delete(cancel_port_migration),
        )
        .route(
            "/v1/ports/{id}/migration/activate",
            post(activate_port_migration),
        )
        .route("/v1/security-groups", get(list_sgs).post(create_sg))
        .route("/v1/security-groups/{id}", get(get_sg).delete(delete_sg))
        .route("/v1/security-groups/{id}/rules", post(add_rule))
        .route(
            "/v1/security-groups/{id}/rules/{rule_id}",
            delete(delete_rule),
        )
        .route("/v1/routers", get(list_routers).post(create_router))
        .route(
            "/v1/routers/{id}",
            get(get_router).put(update_router).delete(delete_router),
        )
        .route("/v1/routers/{id}/interfaces", post(add_interface))
        .route(
            "/v1/routers/{id}/interfaces/{subnet_id}",
            delete(remove_interface),
        )
        .route("/v1/floating-ips", get(list_fips).post(create_fip))
        .route(
            "/v1/floating-ips/{id}",
            get(get_fip).put(update_fip).delete(delete_fip),
        )
        .route("/v1/pools", get(list_pools).post(create_pool))
        .route("/v1/pools/{id}", get(get_pool).delete(delete_pool))
        .route(
            "/v1/pools/{id}/allocations",
            get(list_allocations).post(allocate),
        )
        .route("/v1/pools/{id}/allocations/{ip}", delete(release))
        .route("/v1/agent/hosts", get(list_hosts))
        .route("/v1/agent/hosts/{host}", put(register_host))
        .route("/v1/agent/hosts/{host}/plan", get(host_plan))
        .route("/v1/agent/hosts/{host}/status", post(report_status))
        .with_state(p)
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("prismnet config: {0}")]
    Config(String),
    #[error("prismnet: {0}")]
    Runtime(String),
}

pub struct Running {
    pub url: String,
    pub readiness: uc_runtime::http::Readiness,
    pub task: tokio::task::JoinHandle<()>,
    pub service: Arc<Prismnet>,
}

/// Where prismnet's store credentials come from by default.
pub struct Bootstrap {
    /// The node's secrets directory (`prismnet-flaredb-password`).
    pub secrets_dir: PathBuf,
    /// The node's own flaredb REST URL.
    pub default_flaredb: String,
}

/// Starts prismnet: opens its flaredb namespace, creates the schema, serves the API.
pub async fn start(
    ctx: &NodeContext,
    config: PrismnetConfig,
    boot: Bootstrap,
    shutdown: Shutdown,
) -> Result<Running, StartError> {
    let password_path = config
        .flaredb_password_file
        .clone()
        .unwrap_or_else(|| boot.secrets_dir.join("prismnet-flaredb-password"));
    let password = read_secret_file(&password_path).map_err(|e| {
        StartError::Config(format!(
            "flaredb namespace password ({}): {e}",
            password_path.display()
        ))
    })?;
    let endpoint = config
        .flaredb_endpoint
        .clone()
        .unwrap_or(boot.default_flaredb);
    let db = FlaredbClient::for_namespace(
        &endpoint,
        &config.flaredb_namespace,
        password,
        uc_runtime::client::ClientOptions {
            ca_file: ctx.trusted_ca_file().map(ToOwned::to_owned),
            ..Default::default()
        },
    )
    .map_err(|e| StartError::Config(e.to_string()))?;
    let router_host = config
        .network_host
        .clone()
        .unwrap_or_else(|| ctx.node_name.clone());
    let service = Arc::new(Prismnet::new(db, router_host));
    uc_runtime::shutdown::retry_transient(
        "prismnet store",
        Duration::from_secs(30),
        |e: &ApiError| e.status.is_server_error(),
        || service.init(),
    )
    .await
    .map_err(|e| StartError::Runtime(e.to_string()))?;
    let server = HttpServer::new("prismnet", ctx.http.clone(), ctx.tenant_auth.clone())
        .api(routes(service.clone()))
        .openapi(PrismnetApi::openapi())
        .bind(ctx.listen(config.port))
        .await
        .map_err(|e| StartError::Runtime(e.to_string()))?;
    let url = format!("{}://{}", ctx.scheme(), server.local_addr());
    let readiness = server.readiness();
    readiness.set_ready();
    // Changes made through another prismnet instance reach this one's long polls.
    let poll = {
        let service = service.clone();
        let shutdown = shutdown.clone();
        async move {
            shutdown
                .every(Duration::from_secs(1), || async {
                    if let Err(e) = service.refresh_revision().await {
                        tracing::debug!(error = %e, "cannot read the model revision");
                    }
                })
                .await
        }
    };
    let task = tokio::spawn(async move {
        tokio::join!(server.serve(shutdown), poll);
    });
    Ok(Running {
        url,
        readiness,
        task,
        service,
    })
}
