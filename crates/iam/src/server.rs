//! iam's HTTP API (thin handlers over [`Iam`]) and its start-up.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use flaredb::client::FlaredbClient;
use serde::Deserialize;
use uc_runtime::auth::{AuthError, Authenticator, BoxFuture, Principal as Caller};
use uc_runtime::http::{HttpServer, Json};
use uc_runtime::secret::read_secret_file;
use uc_runtime::token::Claims;
use uc_runtime::{ApiError, NodeContext, Secret, Shutdown};
use utoipa::OpenApi;

use crate::api::*;
use crate::config::IamConfig;
use crate::crypto::{self, MasterKey};
use crate::service::{Iam, IamError, IamSettings};

impl From<IamError> for ApiError {
    fn from(e: IamError) -> Self {
        match e {
            IamError::NotFound(m) => ApiError::not_found(m),
            IamError::Conflict(m) => ApiError::conflict(m),
            IamError::Invalid(m) => ApiError::invalid_argument(m),
            IamError::Denied(m) => ApiError::permission_denied(m),
            IamError::Unauthenticated(m) => ApiError::unauthenticated(m),
            e @ IamError::TooManyAttempts { .. } => {
                ApiError::from_status(StatusCode::TOO_MANY_REQUESTS, e.to_string())
            }
            IamError::Unavailable(m) => ApiError::unavailable(m),
        }
    }
}

type Answer<T> = Result<Json<T>, ApiError>;
type S = State<Arc<Iam>>;

/// The principal a verified token stands for.
pub fn principal_from_claims(c: Claims) -> Caller {
    Caller {
        subject: c.sub,
        org: c.org,
        project: c.project,
        admin: false,
        kind: c.kind,
        permissions: c.perms,
    }
}

/// iam's own authenticator: its tokens, verified in-process, or the node's admin token.
struct IamAuthenticator {
    iam: Arc<Iam>,
    admin: uc_runtime::auth::StaticTokenAuthenticator,
}

impl Authenticator for IamAuthenticator {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>> {
        Box::pin(async move {
            if token.split('.').count() == 3 {
                return self
                    .iam
                    .verify(token)
                    .map(principal_from_claims)
                    .map_err(|e| AuthError::InvalidToken {
                        reason: e.to_string(),
                    });
            }
            self.admin.authenticate(token).await
        })
    }
}

// ---- tokens, keys, authorize

#[utoipa::path(post, path = "/v1/tokens", request_body = TokenRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = uc_runtime::ErrorBody), (status = 429, body = uc_runtime::ErrorBody)))]
async fn issue_token(State(iam): S, Json(req): Json<TokenRequest>) -> Answer<TokenResponse> {
    Ok(Json(iam.issue_token(req).await?))
}

#[utoipa::path(get, path = "/v1/jwks", responses((status = 200, body = Object)))]
async fn jwks(State(iam): S) -> Response {
    (
        [(axum::http::header::CACHE_CONTROL, "max-age=60")],
        axum::Json(iam.jwks()),
    )
        .into_response()
}

#[utoipa::path(post, path = "/v1/authorize", request_body = AuthorizeRequest,
    responses((status = 200, body = AuthorizeResponse)), security(("bearer" = [])))]
async fn authorize(
    State(iam): S,
    caller: Caller,
    Json(req): Json<AuthorizeRequest>,
) -> Answer<AuthorizeResponse> {
    Ok(Json(iam.authorize(&caller, req).await?))
}

#[utoipa::path(get, path = "/v1/keys", responses((status = 200, body = Vec<SigningKeyView>)), security(("bearer" = [])))]
async fn list_keys(State(iam): S, caller: Caller) -> Answer<Vec<SigningKeyView>> {
    Ok(Json(iam.list_keys(&caller).await?))
}

#[utoipa::path(post, path = "/v1/keys/rotate", responses((status = 200, body = SigningKeyView)), security(("bearer" = [])))]
async fn rotate_key(State(iam): S, caller: Caller) -> Answer<SigningKeyView> {
    Ok(Json(iam.rotate_key(&caller).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetireQuery {
    #[serde(default)]
    force: bool,
}

#[utoipa::path(post, path = "/v1/keys/{kid}/retire", params(("kid" = String, Path), ("force" = Option<bool>, Query)),
    responses((status = 204), (status = 409, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
async fn retire_key(
    State(iam): S,
    caller: Caller,
    Path(kid): Path<String>,
    Query(q): Query<RetireQuery>,
) -> Result<StatusCode, ApiError> {
    iam.retire_key(&caller, &kid, q.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- certificate authority

#[utoipa::path(get, path = "/v1/ca/bundle", responses((status = 200, description = "PEM certificates of the trusted CAs", content_type = "application/x-pem-file")))]
async fn ca_bundle(State(iam): S) -> Result<Response, ApiError> {
    let pem = iam.ca_bundle().await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-pem-file")],
        pem,
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/ca", responses((status = 200, body = Vec<crate::ca::CaView>)), security(("bearer" = [])))]
async fn list_cas(State(iam): S, caller: Caller) -> Answer<Vec<crate::ca::CaView>> {
    Ok(Json(iam.list_cas(&caller).await?))
}

#[utoipa::path(post, path = "/v1/ca/certificates", request_body = crate::ca::IssueCertificate,
    responses((status = 201, body = crate::ca::IssuedCertificate)), security(("bearer" = [])))]
async fn issue_certificate(
    State(iam): S,
    caller: Caller,
    Json(req): Json<crate::ca::IssueCertificate>,
) -> Result<(StatusCode, Json<crate::ca::IssuedCertificate>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(iam.issue_certificate(&caller, req).await?),
    ))
}

#[utoipa::path(post, path = "/v1/ca/rotate", responses((status = 200, body = Vec<crate::ca::CaView>)), security(("bearer" = [])))]
async fn rotate_ca(State(iam): S, caller: Caller) -> Answer<Vec<crate::ca::CaView>> {
    Ok(Json(iam.rotate_ca(&caller).await?))
}

#[utoipa::path(post, path = "/v1/ca/{id}/retire", params(("id" = String, Path)), responses((status = 204)), security(("bearer" = [])))]
async fn retire_ca(
    State(iam): S,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    iam.retire_ca(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- organizations, projects

#[utoipa::path(post, path = "/v1/orgs", request_body = CreateNamed, responses((status = 201, body = Org)), security(("bearer" = [])))]
async fn create_org(
    State(iam): S,
    caller: Caller,
    Json(req): Json<CreateNamed>,
) -> Result<(StatusCode, Json<Org>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(iam.create_org(&caller, req).await?),
    ))
}

#[utoipa::path(get, path = "/v1/orgs", responses((status = 200, body = Page<Org>)), security(("bearer" = [])))]
async fn list_orgs(State(iam): S, caller: Caller) -> Answer<Page<Org>> {
    Ok(Json(Page {
        items: iam.list_orgs(&caller).await?,
    }))
}

#[utoipa::path(get, path = "/v1/orgs/{org}", params(("org" = String, Path)), responses((status = 200, body = Org), (status = 404, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
async fn get_org(State(iam): S, caller: Caller, Path(org): Path<String>) -> Answer<Org> {
    Ok(Json(iam.get_org(&caller, &org).await?))
}

#[utoipa::path(delete, path = "/v1/orgs/{org}", params(("org" = String, Path)), responses((status = 204)), security(("bearer" = [])))]
async fn delete_org(
    State(iam): S,
    caller: Caller,
    Path(org): Path<String>,
) -> Result<StatusCode, ApiError> {
    iam.delete_org(&caller, &org).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/orgs/{org}/projects", params(("org" = String, Path)), request_body = CreateNamed, responses((status = 201, body = Project)), security(("bearer" = [])))]
async fn create_project(
    State(iam): S,
    caller: Caller,
    Path(org): Path<String>,
    Json(req): Json<CreateNamed>,
) -> Result<(StatusCode, Json<Project>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(iam.create_project(&caller, &org, req).await?),
    ))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/projects", params(("org" = String, Path)), responses((status = 200, body = Page<Project>)), security(("bearer" = [])))]
async fn list_projects(
    State(iam): S,
    caller: Caller,
    Path(org): Path<String>,
) -> Answer<Page<Project>> {
    Ok(Json(Page {
        items: iam.list_projects(&caller, &org).await?,
    }))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/projects/{project}", params(("org" = String, Path), ("project" = String, Path)), responses((status = 200, body = Project)), security(("bearer" = [])))]
async fn get_project(
    State(iam): S,
    caller: Caller,
    Path((org, project)): Path<(String, String)>,
) -> Answer<Project> {
    Ok(Json(iam.get_project(&caller, &org, &project).await?))
}

#[utoipa::path(delete, path = "/v1/orgs/{org}/projects/{project}", params(("org" = String, Path), ("project" = String, Path)), responses((status = 204)), security(("bearer" = [])))]
async fn delete_project(
    State(iam): S,
    caller: Caller,
    Path((org, project)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    iam.delete_project(&caller, &org, &project).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- principals (users, service accounts, groups share handlers)

fn kind_of(collection: &str) -> Result<PrincipalKind, ApiError> {
    match collection {
        "users" => Ok(PrincipalKind::User),
        "service-accounts" => Ok(PrincipalKind::ServiceAccount),
        "groups" => Ok(PrincipalKind::Group),
        other => Err(ApiError::not_found(format!("no collection {other:?}"))),
    }
}

#[utoipa::path(post, path = "/v1/orgs/{org}/{collection}", params(("org" = String, Path), ("collection" = String, Path, description = "users, service-accounts or groups")),
    request_body = CreateUser, responses((status = 201, body = Principal), (status = 409, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
async fn create_principal(
    State(iam): S,
    caller: Caller,
    Path((org, collection)): Path<(String, String)>,
    Json(req): Json<CreateUser>,
) -> Result<(StatusCode, Json<Principal>), ApiError> {
    let kind = kind_of(&collection)?;
    let p = iam
        .create_principal(&caller, &org, kind, req.name, req.password)
        .await?;
    Ok((StatusCode::CREATED, Json(p)))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/{collection}", params(("org" = String, Path), ("collection" = String, Path)),
    responses((status = 200, body = Page<Principal>)), security(("bearer" = [])))]
async fn list_principals(
    State(iam): S,
    caller: Caller,
    Path((org, collection)): Path<(String, String)>,
) -> Answer<Page<Principal>> {
    let kind = kind_of(&collection)?;
    Ok(Json(Page {
        items: iam.list_principals(&caller, &org, kind).await?,
    }))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/{collection}/{id}", params(("org" = String, Path), ("collection" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = Principal)), security(("bearer" = [])))]
async fn get_principal(
    State(iam): S,
    caller: Caller,
    Path((org, collection, id)): Path<(String, String, String)>,
) -> Answer<Principal> {
    let kind = kind_of(&collection)?;
    Ok(Json(iam.get_principal(&caller, &org, kind, &id).await?))
}

#[utoipa::path(delete, path = "/v1/orgs/{org}/{collection}/{id}", params(("org" = String, Path), ("collection" = String, Path), ("id" = String, Path)),
    responses((status = 204)), security(("bearer" = [])))]
async fn delete_principal(
    State(iam): S,
    caller: Caller,
    Path((org, collection, id)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let kind = kind_of(&collection)?;
    iam.delete_principal(&caller, &org, kind, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/v1/orgs/{org}/users/{id}/password", params(("org" = String, Path), ("id" = String, Path)), request_body = SetPassword,
    responses((status = 204)), security(("bearer" = [])))]
async fn set_password(
    State(iam): S,
    caller: Caller,
    Path((org, id)): Path<(String, String)>,
    Json(req): Json<SetPassword>,
) -> Result<StatusCode, ApiError> {
    iam.set_password(&caller, &org, &id, req.password).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/v1/orgs/{org}/groups/{group}/members/{member}", params(("org" = String, Path), ("group" = String, Path), ("member" = String, Path)),
    responses((status = 204)), security(("bearer" = [])))]
async fn add_member(
    State(iam): S,
    caller: Caller,
    Path((org, group, member)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    iam.add_group_member(&caller, &org, &group, &member).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/v1/orgs/{org}/groups/{group}/members/{member}", params(("org" = String, Path), ("group" = String, Path), ("member" = String, Path)),
    responses((status = 204)), security(("bearer" = [])))]
async fn remove_member(
    State(iam): S,
    caller: Caller,
    Path((org, group, member)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    iam.remove_group_member(&caller, &org, &group, &member)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- roles, bindings

#[utoipa::path(post, path = "/v1/orgs/{org}/roles", params(("org" = String, Path)), request_body = CreateRole,
    responses((status = 201, body = Role), (status = 400, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
async fn create_role(
    State(iam): S,
    caller: Caller,
    Path(org): Path<String>,
    Json(req): Json<CreateRole>,
) -> Result<(StatusCode, Json<Role>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(iam.create_role(&caller, &org, req).await?),
    ))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/roles", params(("org" = String, Path)), responses((status = 200, body = Page<Role>)), security(("bearer" = [])))]
async fn list_roles(State(iam): S, caller: Caller, Path(org): Path<String>) -> Answer<Page<Role>> {
    Ok(Json(Page {
        items: iam.list_roles(&caller, &org).await?,
    }))
}

#[utoipa::path(delete, path = "/v1/orgs/{org}/roles/{id}", params(("org" = String, Path), ("id" = String, Path)), responses((status = 204)), security(("bearer" = [])))]
async fn delete_role(
    State(iam): S,
    caller: Caller,
    Path((org, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    iam.delete_role(&caller, &org, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/orgs/{org}/bindings", params(("org" = String, Path)), request_body = CreateBinding,
    responses((status = 201, body = Binding)), security(("bearer" = [])))]
async fn create_binding(
    State(iam): S,
    caller: Caller,
    Path(org): Path<String>,
    Json(req): Json<CreateBinding>,
) -> Result<(StatusCode, Json<Binding>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(iam.create_binding(&caller, &org, req).await?),
    ))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/bindings", params(("org" = String, Path)), responses((status = 200, body = Page<Binding>)), security(("bearer" = [])))]
async fn list_bindings(
    State(iam): S,
    caller: Caller,
    Path(org): Path<String>,
) -> Answer<Page<Binding>> {
    Ok(Json(Page {
        items: iam.list_bindings(&caller, &org).await?,
    }))
}

#[utoipa::path(delete, path = "/v1/orgs/{org}/bindings/{id}", params(("org" = String, Path), ("id" = String, Path)), responses((status = 204)), security(("bearer" = [])))]
async fn delete_binding(
    State(iam): S,
    caller: Caller,
    Path((org, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    iam.delete_binding(&caller, &org, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- credentials

#[utoipa::path(post, path = "/v1/orgs/{org}/credentials", params(("org" = String, Path)), request_body = CreateCredential,
    responses((status = 201, body = CreatedCredential)), security(("bearer" = [])))]
async fn create_credential(
    State(iam): S,
    caller: Caller,
    Path(org): Path<String>,
    Json(req): Json<CreateCredential>,
) -> Result<(StatusCode, Json<CreatedCredential>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(iam.create_credential(&caller, &org, req).await?),
    ))
}

#[utoipa::path(get, path = "/v1/orgs/{org}/credentials", params(("org" = String, Path)), responses((status = 200, body = Page<Credential>)), security(("bearer" = [])))]
async fn list_credentials(
    State(iam): S,
    caller: Caller,
    Path(org): Path<String>,
) -> Answer<Page<Credential>> {
    Ok(Json(Page {
        items: iam.list_credentials(&caller, &org).await?,
    }))
}

#[utoipa::path(post, path = "/v1/orgs/{org}/credentials/{id}/revoke", params(("org" = String, Path), ("id" = String, Path)), request_body = RevokeCredential,
    responses((status = 200, body = Credential)), security(("bearer" = [])))]
async fn revoke_credential(
    State(iam): S,
    caller: Caller,
    Path((org, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Answer<Credential> {
    // The body is optional: empty means "revoke now".
    let req: RevokeCredential = if body.iter().all(u8::is_ascii_whitespace) {
        RevokeCredential::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid_argument(format!("request body: {e}")))?
    };
    Ok(Json(iam.revoke_credential(&caller, &org, &id, req).await?))
}

// ---- audit

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    #[serde(default)]
    after: i64,
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/v1/orgs/{org}/audit", params(("org" = String, Path), ("after" = Option<i64>, Query), ("limit" = Option<u32>, Query)),
    responses((status = 200, body = Page<AuditEvent>)), security(("bearer" = [])))]
async fn org_audit(
    State(iam): S,
    caller: Caller,
    Path(org): Path<String>,
    Query(q): Query<AuditQuery>,
) -> Answer<Page<AuditEvent>> {
    Ok(Json(Page {
        items: iam
            .list_audit(&caller, Some(&org), q.after, q.limit.unwrap_or(100))
            .await?,
    }))
}

#[utoipa::path(get, path = "/v1/audit", params(("after" = Option<i64>, Query), ("limit" = Option<u32>, Query)),
    responses((status = 200, body = Page<AuditEvent>)), security(("bearer" = [])))]
async fn all_audit(
    State(iam): S,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> Answer<Page<AuditEvent>> {
    Ok(Json(Page {
        items: iam
            .list_audit(&caller, None, q.after, q.limit.unwrap_or(100))
            .await?,
    }))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "iam API",
        description = "Identities, tenancy, tokens, authorization."
    ),
    paths(
        issue_token,
        jwks,
        authorize,
        list_keys,
        rotate_key,
        retire_key,
        create_org,
        list_orgs,
        get_org,
        delete_org,
        create_project,
        list_projects,
        get_project,
        delete_project,
        create_principal,
        list_principals,
        get_principal,
        delete_principal,
        set_password,
        add_member,
        remove_member,
        create_role,
        list_roles,
        delete_role,
        create_binding,
        list_bindings,
        delete_binding,
        create_credential,
        list_credentials,
        revoke_credential,
        org_audit,
        all_audit,
        ca_bundle,
        list_cas,
        issue_certificate,
        rotate_ca,
        retire_ca
    ),
    components(schemas(
        Org,
        Project,
        Principal,
        PrincipalKind,
        Role,
        Binding,
        Credential,
        CreatedCredential,
        SigningKeyView,
        AuditEvent,
        CreateNamed,
        CreateUser,
        SetPassword,
        CreateRole,
        CreateBinding,
        CreateCredential,
        RevokeCredential,
        TokenRequest,
        TokenResponse,
        AuthorizeRequest,
        AuthorizeResponse,
        crate::ca::CaView,
        crate::ca::IssueCertificate,
        crate::ca::IssuedCertificate
    ))
)]
pub struct IamApi;

fn public_routes(iam: Arc<Iam>) -> Router {
    Router::new()
        .route("/v1/tokens", post(issue_token))
        .route("/v1/jwks", get(jwks))
        .route("/v1/ca/bundle", get(ca_bundle))
        .with_state(iam)
}

fn api_routes(iam: Arc<Iam>) -> Router {
    Router::new()
        .route("/v1/authorize", post(authorize))
        .route("/v1/keys", get(list_keys))
        .route("/v1/keys/rotate", post(rotate_key))
        .route("/v1/keys/{kid}/retire", post(retire_key))
        .route("/v1/audit", get(all_audit))
        .route("/v1/ca", get(list_cas))
        .route("/v1/ca/certificates", post(issue_certificate))
        .route("/v1/ca/rotate", post(rotate_ca))
        .route("/v1/ca/{id}/retire", post(retire_ca))
        .route("/v1/orgs", get(list_orgs).post(create_org))
        .route("/v1/orgs/{org}", get(get_org).delete(delete_org))
        .route(
            "/v1/orgs/{org}/projects",
            get(list_projects).post(create_project),
        )
        .route(
            "/v1/orgs/{org}/projects/{project}",
            get(get_project).delete(delete_project),
        )
        .route("/v1/orgs/{org}/roles", get(list_roles).post(create_role))
        .route("/v1/orgs/{org}/roles/{id}", delete(delete_role))
        .route(
            "/v1/orgs/{org}/bindings",
            get(list_bindings).post(create_binding),
        )
        .route("/v1/orgs/{org}/bindings/{id}", delete(delete_binding))
        .route(
            "/v1/orgs/{org}/credentials",
            get(list_credentials).post(create_credential),
        )
        .route(
            "/v1/orgs/{org}/credentials/{id}/revoke",
            post(revoke_credential),
        )
        .route("/v1/orgs/{org}/audit", get(org_audit))
        .route("/v1/orgs/{org}/users/{id}/password", put(set_password))
        .route(
            "/v1/orgs/{org}/groups/{group}/members/{member}",
            put(add_member).delete(remove_member),
        )
        .route(
            "/v1/orgs/{org}/{collection}",
            get(list_principals).post(create_principal),
        )
        .route(
            "/v1/orgs/{org}/{collection}/{id}",
            get(get_principal).delete(delete_principal),
        )
        .with_state(iam)
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("iam config: {0}")]
    Config(String),
    #[error("iam: {0}")]
    Runtime(String),
}

pub struct Running {
    pub url: String,
    pub readiness: uc_runtime::http::Readiness,
    pub task: tokio::task::JoinHandle<()>,
}

/// Where the bootstrap secrets come from.
pub struct Bootstrap {
    /// The node's secrets directory (defaults for the key files).
    pub secrets_dir: PathBuf,
    /// Whether the admin token was configured explicitly (production mode requires it).
    pub admin_token_explicit: bool,
    /// The node's own flaredb REST URL (default endpoint).
    pub default_flaredb: String,
}

fn read_key_file(what: &str, path: &std::path::Path) -> Result<Secret<String>, StartError> {
    read_secret_file(path)
        .map_err(|e| StartError::Config(format!("{what} ({}): {e}", path.display())))
}

/// Checks the bootstrap inputs: in production mode each must be configured explicitly, and
/// every key must be well-formed and not trivially weak.
pub fn check_bootstrap(config: &IamConfig, admin_token_explicit: bool) -> Result<(), StartError> {
    if config.production {
        let mut missing = Vec::new();
        if !admin_token_explicit {
            missing.push("auth.admin_token_file");
        }
        if config.master_key_file.is_none() {
            missing.push("iam.master_key_file");
        }
        if config.signing_key_file.is_none() {
            missing.push("iam.signing_key_file");
        }
        if !missing.is_empty() {
            return Err(StartError::Config(format!(
                "production mode requires explicit bootstrap secrets; missing: {}",
                missing.join(", ")
            )));
        }
    }
    if config.token_ttl_secs < 60 || config.token_ttl_secs > 86400 {
        return Err(StartError::Config(
            "token_ttl_secs must be between 60 and 86400".into(),
        ));
    }
    Ok(())
}

/// Starts iam: opens its flaredb namespace, then serves the API.
pub async fn start(
    ctx: &NodeContext,
    config: IamConfig,
    boot: Bootstrap,
    shutdown: Shutdown,
) -> Result<Running, StartError> {
    check_bootstrap(&config, boot.admin_token_explicit)?;
    let master_path = config
        .master_key_file
        .clone()
        .unwrap_or_else(|| boot.secrets_dir.join("master.key"));
    let master = MasterKey::from_hex(&read_key_file("master key", &master_path)?)
        .map_err(|e| StartError::Config(format!("master key ({}): {e}", master_path.display())))?;
    let seed_path = config
        .signing_key_file
        .clone()
        .unwrap_or_else(|| boot.secrets_dir.join("signing.key"));
    let seed = crypto::seed_from_hex(&read_key_file("signing key", &seed_path)?)
        .map_err(|e| StartError::Config(format!("signing key ({}): {e}", seed_path.display())))?;
    let password_path = config
        .flaredb_password_file
        .clone()
        .unwrap_or_else(|| boot.secrets_dir.join("iam-flaredb-password"));
    let password = read_key_file("flaredb namespace password", &password_path)?;
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
    let settings = IamSettings {
        issuer: config.issuer.clone(),
        token_ttl: Duration::from_secs(config.token_ttl_secs),
        login_failures_per_minute: config.login_failures_per_minute.max(1),
    };
    let iam = Arc::new(Iam::new(db, master, settings));
    uc_runtime::shutdown::retry_transient(
        "iam store",
        Duration::from_secs(30),
        |e| matches!(e, IamError::Unavailable(_)),
        || iam.init(seed),
    )
    .await
    .map_err(|e| StartError::Runtime(e.to_string()))?;
    let auth = Arc::new(IamAuthenticator {
        iam: iam.clone(),
        admin: uc_runtime::auth::StaticTokenAuthenticator::admin(ctx.service_token.clone()),
    });
    let server = HttpServer::new("iam", ctx.http.clone(), auth)
        .public(public_routes(iam.clone()))
        .api(api_routes(iam.clone()))
        .openapi(IamApi::openapi())
        .bind(ctx.listen(config.port))
        .await
        .map_err(|e| StartError::Runtime(e.to_string()))?;
    let url = format!("{}://{}", ctx.scheme(), server.local_addr());
    let readiness = server.readiness();
    readiness.set_ready();
    // Another iam instance may rotate keys: pick them up.
    let reload = {
        let iam = iam.clone();
        let shutdown = shutdown.clone();
        async move {
            shutdown
                .every(Duration::from_secs(5), || async {
                    if let Err(e) = iam.reload_keys().await {
                        tracing::warn!(error = %e, "cannot reload signing keys");
                    }
                })
                .await
        }
    };
    let task = tokio::spawn(async move {
        tokio::join!(server.serve(shutdown), reload);
    });
    Ok(Running {
        url,
        readiness,
        task,
    })
}
