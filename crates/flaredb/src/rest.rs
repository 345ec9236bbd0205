//! The REST API: SQL, tables, a KV interface, namespace administration and backups.
//!
//! Callers authenticate with either the cluster operator's bearer token (every namespace; the
//! request names the namespace) or HTTP Basic auth with a namespace credential
//! (`<namespace>:<password>`, only that namespace). Asking a namespace credential about another
//! namespace answers 404, like an absent namespace.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use uc_runtime::ApiError;
use uc_runtime::auth::{Authenticator, bearer_token};
use uc_runtime::http::Json;
use utoipa::{OpenApi, ToSchema};

use crate::backend::ScramSecret;
use crate::catalog::{CatalogError, Mode, NamespaceRecord};
use crate::namespaces::{Namespace, Registry};
use crate::sql::{SqlError, SqlValue, Statement, StatementResult};

pub struct RestState {
    pub registry: Arc<Registry>,
    pub auth: Arc<dyn Authenticator>,
    /// Verified (namespace, password digest) pairs, so Basic auth does not run PBKDF2 on every
    /// request.
    verified: Mutex<HashMap<(String, [u8; 32]), ()>>,
}

impl RestState {
    pub fn new(registry: Arc<Registry>, auth: Arc<dyn Authenticator>) -> Arc<Self> {
        Arc::new(Self {
            registry,
            auth,
            verified: Mutex::new(HashMap::new()),
        })
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Operator,
    Namespace(String),
}

impl Caller {
    /// The namespace a request acts on: a namespace credential's own, or the one the operator
    /// names. Another namespace than a credential's is "not found".
    fn namespace(&self, requested: Option<&str>) -> Result<String, ApiError> {
        match (self, requested) {
            (Caller::Namespace(own), None) => Ok(own.clone()),
            (Caller::Namespace(own), Some(r)) if r == own => Ok(own.clone()),
            (Caller::Namespace(_), Some(r)) => Err(ApiError::not_found(format!(
                "namespace \"{r}\" does not exist"
            ))),
            (Caller::Operator, Some(r)) => Ok(r.to_owned()),
            (Caller::Operator, None) => Err(ApiError::invalid_argument(
                "name the namespace (\"namespace\")",
            )),
        }
    }

    fn require_operator(&self) -> Result<(), ApiError> {
        match self {
            Caller::Operator => Ok(()),
            Caller::Namespace(_) => Err(ApiError::permission_denied(
                "only the operator manages namespaces",
            )),
        }
    }
}

impl FromRequestParts<Arc<RestState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<RestState>,
    ) -> Result<Self, ApiError> {
        if let Some(token) = bearer_token(&parts.headers) {
            return match state.auth.authenticate(token).await {
                Ok(p) if p.admin => Ok(Caller::Operator),
                Ok(_) => Err(ApiError::permission_denied("token may not use flaredb")),
                Err(_) => Err(ApiError::unauthenticated("invalid token")),
            };
        }
        let basic = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Basic ")
                    .or_else(|| v.strip_prefix("basic "))
            })
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
            .and_then(|b| String::from_utf8(b).ok());
        let Some(pair) = basic else {
            return Err(ApiError::unauthenticated(
                "missing credentials (Authorization: Bearer <operator token> or Basic <namespace:password>)",
            ));
        };
        let (ns, password) = pair.split_once(':').unwrap_or((pair.as_str(), ""));
        let digest: [u8; 32] = {
            use sha2::Digest;
            sha2::Sha256::digest(format!("{ns}\0{password}").as_bytes()).into()
        };
        let key = (ns.to_owned(), digest);
        if state
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&key)
            && state.registry.record(ns).is_some()
        {
            return Ok(Caller::Namespace(ns.to_owned()));
        }
        let valid = state
            .registry
            .record(ns)
            .is_some_and(|r| r.secret.verify(password));
        if !valid {
            return Err(ApiError::unauthenticated("invalid namespace credential"));
        }
        let mut verified = state.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() > 10_000 {
            verified.clear();
        }
        verified.insert(key, ());
        Ok(Caller::Namespace(ns.to_owned()))
    }
}

/// SQL errors in the shared error shape: the code names the SQLSTATE class, the message carries
/// the SQLSTATE itself.
fn sql_error(e: SqlError) -> ApiError {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    let code = match e.sqlstate.as_str() {
        "42601" => "syntax_error",
        "42P01" => "undefined_table",
        "42703" => "undefined_column",
        "23505" => "unique_violation",
        "23502" => "not_null_violation",
        "23503" => "foreign_key_violation",
        "23514" => "check_violation",
        "3D000" => "not_found",
        "0A000" => "not_supported",
        "54000" => "payload_too_large",
        "57P03" | "08006" => "unavailable",
        s if s.starts_with("23") => "conflict",
        _ => uc_runtime::error::code_for_status(status),
    };
    let at = e
        .statement
        .map(|i| format!(" (statement {})", i + 1))
        .unwrap_or_default();
    ApiError::new(
        status,
        code,
        format!("SQLSTATE {}: {}{at}", e.sqlstate, e.message),
    )
}

fn served(state: &RestState, name: &str) -> Result<Arc<Namespace>, ApiError> {
    state.registry.get(name).map_err(sql_error)
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlRequest {
    /// Required for the operator; defaults to the credential's namespace.
    pub namespace: Option<String>,
    /// Executed in order as one transaction.
    #[schema(value_type = Vec<Object>)]
    pub statements: Vec<Statement>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SqlResponse {
    #[schema(value_type = Vec<Object>)]
    pub results: Vec<StatementResult>,
}

/// Runs statements (with `$1…` parameters) as one transaction.
#[utoipa::path(post, path = "/api/v1/sql", request_body = SqlRequest,
    responses((status = 200, body = SqlResponse), (status = 400, body = uc_runtime::ErrorBody), (status = 404, body = uc_runtime::ErrorBody), (status = 409, body = uc_runtime::ErrorBody)),
    security(("bearer" = []), ("basic" = [])))]
async fn sql(
    State(state): State<Arc<RestState>>,
    caller: Caller,
    Json(req): Json<SqlRequest>,
) -> Result<Json<SqlResponse>, ApiError> {
    let name = caller.namespace(req.namespace.as_deref())?;
    let results = served(&state, &name)?
        .execute(req.statements)
        .await
        .map_err(sql_error)?;
    Ok(Json(SqlResponse { results }))
}

#[derive(Debug, Deserialize)]
struct NamespaceQuery {
    namespace: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TableView {
    pub name: String,
    pub sql: String,
}

/// The namespace's tables.
#[utoipa::path(get, path = "/api/v1/tables", params(("namespace" = Option<String>, Query)),
    responses((status = 200, body = Vec<TableView>)), security(("bearer" = []), ("basic" = [])))]
async fn tables(
    State(state): State<Arc<RestState>>,
    caller: Caller,
    Query(q): Query<NamespaceQuery>,
) -> Result<Json<Vec<TableView>>, ApiError> {
    let name = caller.namespace(q.namespace.as_deref())?;
    let ns = served(&state, &name)?;
    if ns.mode == Mode::Strong {
        ns.node
            .read_barrier()
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
    }
    Ok(Json(
        ns.tables()
            .into_iter()
            .filter(|(n, _)| n != KV_TABLE)
            .map(|(name, sql)| TableView { name, sql })
            .collect(),
    ))
}

// --- KV: a table per namespace, driven through the same SQL path.

const KV_TABLE: &str = "_flaredb_kv";
const KV_CREATE: &str = "CREATE TABLE IF NOT EXISTS _flaredb_kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, version INTEGER NOT NULL)";

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct KvItem {
    pub key: String,
    pub value: String,
    /// 1 on creation, +1 on every change.
    pub version: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KvPut {
    pub value: String,
    /// Compare-and-set: only write if the key's version is this (0: the key must not exist).
    pub expected_version: Option<i64>,
    pub namespace: Option<String>,
}

fn kv_item(row: &[SqlValue]) -> Option<KvItem> {
    match row {
        [SqlValue::Text(k), SqlValue::Text(v), SqlValue::Integer(ver)] => Some(KvItem {
            key: k.clone(),
            value: v.clone(),
            version: *ver,
        }),
        _ => None,
    }
}

async fn kv_read(ns: &Namespace, statement: Statement) -> Result<Vec<KvItem>, ApiError> {
    match ns.execute(vec![statement]).await {
        Ok(results) => Ok(results
            .into_iter()
            .flat_map(|r| r.rows)
            .filter_map(|row| kv_item(&row))
            .collect()),
        // No KV write yet: no table, no keys.
        Err(e) if e.sqlstate == crate::sql::sqlstate::UNDEFINED_TABLE => Ok(Vec::new()),
        Err(e) => Err(sql_error(e)),
    }
}

/// One key.
#[utoipa::path(get, path = "/api/v1/kv/{*key}", params(("key" = String, Path), ("namespace" = Option<String>, Query)),
    responses((status = 200, body = KvItem), (status = 404, body = uc_runtime::ErrorBody)), security(("bearer" = []), ("basic" = [])))]
async fn kv_get(
    State(state): State<Arc<RestState>>,
    caller: Caller,
    Path(key): Path<String>,
    Query(q): Query<NamespaceQuery>,
) -> Result<Json<KvItem>, ApiError> {
    let ns = served(&state, &caller.namespace(q.namespace.as_deref())?)?;
    let items = kv_read(
        &ns,
        Statement::with_params(
            "SELECT key, value, version FROM _flaredb_kv WHERE key = $1",
            vec![SqlValue::Text(key.clone())],
        ),
    )
    .await?;
    items
        .into_iter()
        .next()
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no key {key}")))
}

/// Writes a key; with `expected_version`, only if the key is at that version (409 otherwise).
#[utoipa::path(put, path = "/api/v1/kv/{*key}", request_body = KvPut, params(("key" = String, Path)),
    responses((status = 200, body = KvItem), (status = 409, body = uc_runtime::ErrorBody)), security(("bearer" = []), ("basic" = [])))]
async fn kv_put(
    State(state): State<Arc<RestState>>,
    caller: Caller,
    Path(key): Path<String>,
    Json(req): Json<KvPut>,
) -> Result<Json<KvItem>, ApiError> {
    let ns = served(&state, &caller.namespace(req.namespace.as_deref())?)?;
    let (k, v) = (
        SqlValue::Text(key.clone()),
        SqlValue::Text(req.value.clone()),
    );
    let write = match req.expected_version {
        None => Statement::with_params(
            "INSERT INTO _flaredb_kv (key, value, version) VALUES ($1, $2, 1) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = version + 1 \
             RETURNING key, value, version",
            vec![k, v],
        ),
        Some(0) => Statement::with_params(
            "INSERT INTO _flaredb_kv (key, value, version) VALUES ($1, $2, 1) ON CONFLICT (key) DO NOTHING \
             RETURNING key, value, version",
            vec![k, v],
        ),
        Some(expected) => Statement::with_params(
            "UPDATE _flaredb_kv SET value = $2, version = version + 1 WHERE key = $1 AND version = $3 \
             RETURNING key, value, version",
            vec![k, v, SqlValue::Integer(expected)],
        ),
    };
    let results = ns
        .execute(vec![Statement::new(KV_CREATE), write])
        .await
        .map_err(sql_error)?;
    results
        .last()
        .and_then(|r| r.rows.first())
        .and_then(|row| kv_item(row))
        .map(Json)
        .ok_or_else(|| {
            ApiError::conflict(format!(
                "key {key} is not at version {}",
                req.expected_version.unwrap_or(0)
            ))
        })
}

/// Deletes a key.
#[utoipa::path(delete, path = "/api/v1/kv/{*key}", params(("key" = String, Path), ("namespace" = Option<String>, Query)),
    responses((status = 204), (status = 404, body = uc_runtime::ErrorBody)), security(("bearer" = []), ("basic" = [])))]
async fn kv_delete(
    State(state): State<Arc<RestState>>,
    caller: Caller,
    Path(key): Path<String>,
    Query(q): Query<NamespaceQuery>,
) -> Result<StatusCode, ApiError> {
    let ns = served(&state, &caller.namespace(q.namespace.as_deref())?)?;
    let results = ns
        .execute(vec![
            Statement::new(KV_CREATE),
            Statement::with_params(
                "DELETE FROM _flaredb_kv WHERE key = $1",
                vec![SqlValue::Text(key.clone())],
            ),
        ])
        .await
        .map_err(sql_error)?;
    if results.last().is_some_and(|r| r.rows_affected > 0) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no key {key}")))
    }
}

#[derive(Debug, Deserialize)]
struct ScanQuery {
    namespace: Option<String>,
    prefix: Option<String>,
    /// Inclusive start of a key range.
    start: Option<String>,
    /// Exclusive end of a key range.
    end: Option<String>,
    limit: Option<u32>,
    /// From a previous page's `next_page_token`.
    page_token: Option<String>,
}

/// Page tokens are the last key of the previous page, hex-encoded (opaque and URL-safe).
fn decode_page_token(token: &str) -> Result<String, ApiError> {
    let bad = || ApiError::invalid_argument("bad page_token");
    if !token.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&token[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| bad())?;
    String::from_utf8(bytes).map_err(|_| bad())
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScanPage {
    pub items: Vec<KvItem>,
    /// Pass as `page_token` for the next page; absent on the last page.
    pub next_page_token: Option<String>,
}

/// Keys by prefix or range, in key order, paginated.
#[utoipa::path(get, path = "/api/v1/kv", params(("prefix" = Option<String>, Query), ("start" = Option<String>, Query), ("end" = Option<String>, Query), ("limit" = Option<u32>, Query), ("page_token" = Option<String>, Query), ("namespace" = Option<String>, Query)),
    responses((status = 200, body = ScanPage)), security(("bearer" = []), ("basic" = [])))]
async fn kv_scan(
    State(state): State<Arc<RestState>>,
    caller: Caller,
    Query(q): Query<ScanQuery>,
) -> Result<Json<ScanPage>, ApiError> {
    let ns = served(&state, &caller.namespace(q.namespace.as_deref())?)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000) as usize;
    if q.prefix.is_some() && (q.start.is_some() || q.end.is_some()) {
        return Err(ApiError::invalid_argument(
            "give either prefix or start/end",
        ));
    }
    let mut lower = q.start.clone().unwrap_or_default();
    let mut upper = q.end.clone();
    if let Some(prefix) = &q.prefix {
        lower = prefix.clone();
        // Keys with the prefix sort before prefix + U+10FFFF.
        upper = Some(format!("{prefix}\u{10FFFF}"));
    }
    let after = q.page_token.as_deref().map(decode_page_token).transpose()?;
    let mut sql = String::from("SELECT key, value, version FROM _flaredb_kv WHERE key >= $1");
    let mut params = vec![SqlValue::Text(lower)];
    if let Some(u) = upper {
        params.push(SqlValue::Text(u));
        sql.push_str(&format!(" AND key < ${}", params.len()));
    }
    if let Some(a) = after {
        params.push(SqlValue::Text(a));
        sql.push_str(&format!(" AND key > ${}", params.len()));
    }
    params.push(SqlValue::Integer(limit as i64 + 1));
    sql.push_str(&format!(" ORDER BY key LIMIT ${}", params.len()));
    let mut items = kv_read(&ns, Statement::with_params(sql, params)).await?;
    let next_page_token = if items.len() > limit {
        items.truncate(limit);
        items
            .last()
            .map(|i| i.key.bytes().map(|b| format!("{b:02x}")).collect())
    } else {
        None
    };
    Ok(Json(ScanPage {
        items,
        next_page_token,
    }))
}

// --- Namespaces (operator only)

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNamespace {
    /// 1–63 characters: lowercase letters, digits, `_`; starts with a letter.
    pub name: String,
    pub mode: Mode,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NamespaceView {
    pub name: String,
    pub mode: Mode,
    pub members: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedNamespace {
    pub name: String,
    pub mode: Mode,
    /// The namespace credential: PostgreSQL user (and database) = name. Shown once.
    pub username: String,
    pub password: String,
}

fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn view(r: &NamespaceRecord) -> NamespaceView {
    NamespaceView {
        name: r.name.clone(),
        mode: r.mode,
        members: r.members.iter().map(|m| m.name.clone()).collect(),
    }
}

/// Creates a namespace replicated on every flaredb member; answers its credential once.
#[utoipa::path(post, path = "/api/v1/namespaces", request_body = CreateNamespace,
    responses((status = 201, body = CreatedNamespace), (status = 400, body = uc_runtime::ErrorBody), (status = 409, body = uc_runtime::ErrorBody)),
    security(("bearer" = [])))]
async fn create_namespace(
    State(state): State<Arc<RestState>>,
    caller: Caller,
    Json(req): Json<CreateNamespace>,
) -> Result<Response, ApiError> {
    caller.require_operator()?;
    if !valid_name(&req.name) {
        return Err(ApiError::invalid_argument(format!(
            "namespace name `{}`: 1-63 lowercase letters, digits or _, starting with a letter",
            req.name
        )));
    }
    let password: String = (0..24)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let record = NamespaceRecord {
        name: req.name.clone(),
        mode: req.mode,
        members: state.registry.members.clone(),
        founders: state.registry.members.iter().map(|m| m.id).collect(),
        secret: ScramSecret::derive(&password),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
    };
    match state.registry.catalog.create(&record).await {
        Ok(()) => {}
        Err(CatalogError::Exists) => {
            return Err(ApiError::conflict(format!("namespace {} exists", req.name)));
        }
        Err(e) => return Err(ApiError::unavailable(e.to_string())),
    }
    state
        .registry
        .wait_served(&req.name, Duration::from_secs(10))
        .await
        .map_err(sql_error)?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedNamespace {
            username: req.name.clone(),
            name: req.name,
            mode: req.mode,
            password,
        }),
    )
        .into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    /// A flaredb node's name (`[node] name`); it must have started once against the same
    /// chainfire, which is where it registers itself.
    pub name: String,
}

/// Adds a flaredb member to a namespace: it joins the namespace's Raft group as a learner,
/// catches up (by snapshot if needed) and is then promoted to voter.
#[utoipa::path(post, path = "/api/v1/namespaces/{name}/members", request_body = AddMember, params(("name" = String, Path)),
    responses((status = 202, body = NamespaceView), (status = 404, body = uc_runtime::ErrorBody), (status = 409, body = uc_runtime::ErrorBody)),
    security(("bearer" = [])))]
async fn add_member(
    State(state): State<Arc<RestState>>,
    caller: Caller,
    Path(name): Path<String>,
    Json(req): Json<AddMember>,
) -> Result<(StatusCode, Json<NamespaceView>), ApiError> {
    caller.require_operator()?;
    let Some(record) = state.registry.record(&name) else {
        return Err(ApiError::not_found(format!(
            "namespace \"{name}\" does not exist"
        )));
    };
    let ns = served(&state, &name)?;
    let member = match state.registry.catalog.member(&req.name).await {
        Ok(Some(m)) => m,
        Ok(None) => {
            return Err(ApiError::not_found(format!(
                "no flaredb member named \"{}\" has registered (start it against the same chainfire first)",
                req.name
            )));
        }
        Err(e) => return Err(ApiError::unavailable(e.to_string())),
    };
    if record.members.iter().any(|m| m.id == member.id) {
        return Err(ApiError::conflict(format!(
            "{} is already a member of {name}",
            req.name
        )));
    }
    let mut updated = record.clone();
    updated.members.push(member.clone());
    if updated.founders.is_empty() {
        updated.founders = record.members.iter().map(|m| m.id).collect();
    }
    // The record first, so the new member starts an (uninitialized) group that the leader
    // can replicate to as soon as it is added.
    match state.registry.catalog.replace(&record, &updated).await {
        Ok(()) => {}
        Err(CatalogError::Changed) => {
            return Err(ApiError::conflict(
                "the namespace changed concurrently; retry",
            ));
        }
        Err(e) => return Err(ApiError::unavailable(e.to_string())),
    }
    ns.add_member(&member)
        .await
        .map_err(|e| ApiError::unavailable(format!("adding {} to the group: {e}", req.name)))?;
    Ok((StatusCode::ACCEPTED, Json(view(&updated))))
}

/// Namespaces.
#[utoipa::path(get, path = "/api/v1/namespaces", responses((status = 200, body = Vec<NamespaceView>)), security(("bearer" = [])))]
async fn list_namespaces(
    State(state): State<Arc<RestState>>,
    caller: Caller,
) -> Result<Json<Vec<NamespaceView>>, ApiError> {
    caller.require_operator()?;
    Ok(Json(state.registry.records().iter().map(view).collect()))
}

/// Drops a namespace and all its data, on every member.
#[utoipa::path(delete, path = "/api/v1/namespaces/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
async fn drop_namespace(
    State(state): State<Arc<RestState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_operator()?;
    match state.registry.catalog.delete(&name).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(ApiError::not_found(format!(
            "namespace \"{name}\" does not exist"
        ))),
        Err(e) => Err(ApiError::unavailable(e.to_string())),
    }
}

const BACKUP_MAGIC: &[u8; 8] = b"UCFDBAK1";

/// A backup file: magic, the SQLite image, and its SHA-256.
pub fn seal_backup(image: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let mut out = BACKUP_MAGIC.to_vec();
    out.extend_from_slice(image);
    let digest = sha2::Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}

pub fn open_backup(file: &[u8]) -> Result<&[u8], String> {
    use sha2::Digest;
    if file.len() < 8 + 32 || !file.starts_with(BACKUP_MAGIC) {
        return Err("not a flaredb backup".into());
    }
    let (body, trailer) = file.split_at(file.len() - 32);
    if sha2::Sha256::digest(body).as_slice() != trailer {
        return Err("backup checksum mismatch: the file is truncated or corrupted".into());
    }
    Ok(&body[8..])
}

/// A consistent backup of a namespace (SQLite image with a SHA-256 trailer).
#[utoipa::path(get, path = "/api/v1/namespaces/{name}/backup", params(("name" = String, Path)),
    responses((status = 200, content_type = "application/octet-stream")), security(("bearer" = []), ("basic" = [])))]
async fn backup(
    State(state): State<Arc<RestState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let name = caller.namespace(Some(&name))?;
    let image = served(&state, &name)?.image().await.map_err(sql_error)?;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        seal_backup(&image),
    )
        .into_response())
}

/// Replaces a namespace's contents with a backup (on every replica).
#[utoipa::path(post, path = "/api/v1/namespaces/{name}/restore", params(("name" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200), (status = 400, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
async fn restore(
    State(state): State<Arc<RestState>>,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_operator()?;
    let image = open_backup(&body).map_err(ApiError::invalid_argument)?;
    // Refuse a broken image before it reaches the log (every replica would reject it).
    crate::sql::engine::Engine::new()
        .load_image(image)
        .map_err(ApiError::invalid_argument)?;
    let ns = served(&state, &name)?;
    ns.load_image(image.to_vec()).await.map_err(sql_error)?;
    Ok(Json(
        serde_json::json!({"namespace": name, "tables": ns.tables().len()}),
    ))
}

#[derive(Debug, Serialize, ToSchema)]
struct ReplicaStatus {
    namespace: String,
    mode: Mode,
    /// SHA-256 over this replica's table contents: equal on replicas with equal data.
    checksum: String,
    #[schema(value_type = Object)]
    raft: uc_raft::RaftStatus,
    /// The group's members as this replica knows them (`voter: false` while catching up).
    #[schema(value_type = Object)]
    membership: uc_raft::Membership,
}

/// This replica's view of a namespace: Raft state and a checksum of its contents.
#[utoipa::path(get, path = "/api/v1/namespaces/{name}/status", params(("name" = String, Path)),
    responses((status = 200, body = ReplicaStatus), (status = 404, body = uc_runtime::ErrorBody)), security(("bearer" = [])))]
async fn replica_status(
    State(state): State<Arc<RestState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<ReplicaStatus>, ApiError> {
    caller.require_operator()?;
    let ns = served(&state, &name)?;
    Ok(Json(ReplicaStatus {
        namespace: ns.name.clone(),
        mode: ns.mode,
        checksum: ns.checksum(),
        raft: ns.raft_status(),
        membership: ns.membership(),
    }))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "flaredb API",
        description = "Replicated SQL/KV metadata store."
    ),
    paths(
        sql,
        tables,
        kv_get,
        kv_put,
        kv_delete,
        kv_scan,
        create_namespace,
        list_namespaces,
        drop_namespace,
        add_member,
        backup,
        restore,
        replica_status
    ),
    components(schemas(
        SqlRequest,
        SqlResponse,
        TableView,
        KvItem,
        KvPut,
        ScanPage,
        CreateNamespace,
        AddMember,
        NamespaceView,
        CreatedNamespace,
        Mode,
        ReplicaStatus
    ))
)]
pub struct FlaredbApi;

/// Largest body of a REST request (a restore carries a whole database image).
const RESTORE_BODY_LIMIT: usize = 1024 * 1024 * 1024;

pub fn routes(state: Arc<RestState>, max_request_bytes: usize) -> Router {
    use axum::extract::DefaultBodyLimit;
    Router::new()
        .route(
            "/api/v1/sql",
            post(sql).layer(DefaultBodyLimit::max(max_request_bytes + 64 * 1024)),
        )
        .route("/api/v1/tables", get(tables))
        .route("/api/v1/kv", get(kv_scan))
        .route(
            "/api/v1/kv/{*key}",
            get(kv_get).put(kv_put).delete(kv_delete),
        )
        .route(
            "/api/v1/namespaces",
            get(list_namespaces).post(create_namespace),
        )
        .route(
            "/api/v1/namespaces/{name}",
            axum::routing::delete(drop_namespace),
        )
        .route("/api/v1/namespaces/{name}/members", post(add_member))
        .route("/api/v1/namespaces/{name}/backup", get(backup))
        .route("/api/v1/namespaces/{name}/status", get(replica_status))
        .route(
            "/api/v1/namespaces/{name}/restore",
            post(restore).layer(DefaultBodyLimit::max(RESTORE_BODY_LIMIT)),
        )
        .with_state(state)
}
