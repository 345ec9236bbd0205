//! iam's core: the identity model in its flaredb namespace, authentication, token issuance,
//! authorization and key lifecycle. No HTTP here; `server` maps requests onto these methods.
//!
//! Tenancy: every object belongs to one organization. A caller acting in another organization
//! gets "not found" for it (never "forbidden"), so existence does not leak; within its own
//! organization a caller needs the permission named for the operation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use flaredb::client::{FlaredbClient, FlaredbError, params};
use flaredb::sql::{SqlValue, Statement};
use serde::Deserialize;
use uc_runtime::auth::Principal as Caller;
use uc_runtime::token::{Claims, DEFAULT_AUDIENCE, JwkSet, SigningKey, Verifier, VerifyError};

use crate::api::*;
use crate::ca::{Ca, CaError, CaView, IssueCertificate, IssuedCertificate};
use crate::catalog;
use crate::crypto::{self, MasterKey};

#[derive(Debug, thiserror::Error)]
pub enum IamError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("too many failed attempts; retry in {retry_after_secs} s")]
    TooManyAttempts { retry_after_secs: u64 },
    #[error("{0}")]
    Unavailable(String),
}

type Result<T> = std::result::Result<T, IamError>;

fn store_error(e: FlaredbError) -> IamError {
    if e.is_unique_violation() {
        IamError::Conflict("an object with that name already exists".into())
    } else {
        tracing::warn!(error = %e, "iam store");
        IamError::Unavailable(format!("iam store: {e}"))
    }
}

fn ca_error(e: CaError) -> IamError {
    match e {
        CaError::Invalid(m) => IamError::Invalid(m),
        CaError::NotFound(m) => IamError::NotFound(m),
        CaError::Conflict(m) => IamError::Conflict(m),
        CaError::Unavailable(m) => IamError::Unavailable(m),
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", crypto::random_hex(8))
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS orgs (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, created_at INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS projects (id TEXT PRIMARY KEY, org_id TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE, name TEXT NOT NULL, created_at INTEGER NOT NULL, UNIQUE (org_id, name))",
    "CREATE TABLE IF NOT EXISTS principals (id TEXT PRIMARY KEY, org_id TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE, kind TEXT NOT NULL CHECK (kind IN ('user', 'service_account', 'group')), name TEXT NOT NULL, password TEXT, disabled INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL, UNIQUE (org_id, kind, name))",
    "CREATE TABLE IF NOT EXISTS group_members (group_id TEXT NOT NULL REFERENCES principals(id) ON DELETE CASCADE, principal_id TEXT NOT NULL REFERENCES principals(id) ON DELETE CASCADE, PRIMARY KEY (group_id, principal_id))",
    "CREATE TABLE IF NOT EXISTS roles (id TEXT PRIMARY KEY, org_id TEXT NOT NULL, name TEXT NOT NULL, permissions TEXT NOT NULL, UNIQUE (org_id, name))",
    "CREATE TABLE IF NOT EXISTS bindings (id TEXT PRIMARY KEY, org_id TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE, project_id TEXT NOT NULL, principal_id TEXT NOT NULL REFERENCES principals(id) ON DELETE CASCADE, role_id TEXT NOT NULL REFERENCES roles(id) ON DELETE CASCADE, created_at INTEGER NOT NULL, UNIQUE (org_id, project_id, principal_id, role_id))",
    "CREATE INDEX IF NOT EXISTS bindings_by_principal ON bindings (principal_id)",
    "CREATE INDEX IF NOT EXISTS group_members_by_principal ON group_members (principal_id)",
    "CREATE TABLE IF NOT EXISTS credentials (id TEXT PRIMARY KEY, org_id TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE, principal_id TEXT NOT NULL REFERENCES principals(id) ON DELETE CASCADE, digest TEXT NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER, revoked_at INTEGER)",
    "CREATE TABLE IF NOT EXISTS signing_keys (kid TEXT PRIMARY KEY, private_key TEXT NOT NULL, state TEXT NOT NULL CHECK (state IN ('active', 'previous', 'retired')), created_at INTEGER NOT NULL, rotated_at INTEGER)",
    "CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY, at INTEGER NOT NULL, actor TEXT NOT NULL, org_id TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, outcome TEXT NOT NULL, reason TEXT NOT NULL, request_id TEXT NOT NULL)",
];

pub const MIN_PASSWORD_LEN: usize = 12;
const MAX_PASSWORD_LEN: usize = 1024;
/// API keys: `ucak_<credential id>_<64 hex>`.
const API_KEY_PREFIX: &str = "ucak_";

pub struct IamSettings {
    pub issuer: String,
    pub token_ttl: Duration,
    /// Failed logins allowed per principal per minute before 429.
    pub login_failures_per_minute: u32,
}

struct LoadedKey {
    kid: String,
    key: Arc<SigningKey>,
    state: String,
}

/// Failed attempts per login name (or credential id) in the current minute.
#[derive(Default)]
struct AttemptLimiter {
    windows: Mutex<HashMap<String, (Instant, u32)>>,
}

impl AttemptLimiter {
    fn check(&self, key: &str, limit: u32) -> Result<()> {
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((start, failures)) = windows.get(key)
            && start.elapsed() < Duration::from_secs(60)
            && *failures >= limit
        {
            let retry = 60u64.saturating_sub(start.elapsed().as_secs()).max(1);
            return Err(IamError::TooManyAttempts {
                retry_after_secs: retry,
            });
        }
        Ok(())
    }

    fn failed(&self, key: &str) {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let entry = windows.entry(key.to_owned()).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= Duration::from_secs(60) {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
        if windows.len() > 100_000 {
            windows.retain(|_, (start, _)| start.elapsed() < Duration::from_secs(60));
        }
    }

    fn succeeded(&self, key: &str) {
        self.windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

pub struct Iam {
    db: FlaredbClient,
    master: MasterKey,
    settings: IamSettings,
    keys: RwLock<Vec<LoadedKey>>,
    verifier: Arc<Verifier>,
    limiter: AttemptLimiter,
}

impl Iam {
    pub fn new(db: FlaredbClient, master: MasterKey, settings: IamSettings) -> Self {
        let verifier = Arc::new(Verifier::new(&settings.issuer, DEFAULT_AUDIENCE));
        Self {
            db,
            master,
            settings,
            keys: RwLock::new(Vec::new()),
            verifier,
            limiter: AttemptLimiter::default(),
        }
    }

    /// Creates the schema and built-in roles, and makes sure a signing key exists (the first
    /// one from `initial_signing_seed`). Safe to repeat.
    pub async fn init(&self, initial_signing_seed: [u8; 32]) -> Result<()> {
        let mut schema: Vec<Statement> = SCHEMA
            .iter()
            .chain(crate::ca::SCHEMA)
            .map(|s| Statement::new(*s))
            .collect();
        for name in catalog::BUILTIN_ROLES {
            let perms = serde_json::to_string(&catalog::builtin_role(name).unwrap_or_default())
                .expect("strings serialize");
            schema.push(Statement::with_params(
                "INSERT INTO roles (id, org_id, name, permissions) VALUES ($1, '', $2, $3) \
                 ON CONFLICT (id) DO UPDATE SET permissions = excluded.permissions",
                params![format!("role-{name}"), *name, perms],
            ));
        }
        self.db.batch(schema).await.map_err(store_error)?;
        let existing: Vec<serde_json::Value> = self
            .db
            .query("SELECT kid FROM signing_keys LIMIT 1", vec![])
            .await
            .map_err(store_error)?;
        if existing.is_empty() {
            let pkcs8 = crypto::ed25519_pkcs8_from_seed(&initial_signing_seed);
            let kid = format!("k-{}", crypto::random_hex(6));
            SigningKey::from_pkcs8(&kid, &pkcs8)
                .map_err(|e| IamError::Invalid(format!("signing key: {e}")))?;
            self.insert_key(&kid, &pkcs8, "active").await?;
            self.audit(
                "system",
                "",
                "iam.key.create",
                &kid,
                "allow",
                "initial signing key",
            )
            .await;
        }
        self.ca().init().await.map_err(ca_error)?;
        self.reload_keys().await
    }

    fn ca(&self) -> Ca<'_> {
        Ca {
            db: &self.db,
            master: &self.master,
        }
    }

    // ---- certificate authority (operator)

    /// The CAs to trust for mTLS (public: it holds only certificates).
    pub async fn ca_bundle(&self) -> Result<String> {
        self.ca().bundle().await.map_err(ca_error)
    }

    pub async fn list_cas(&self, caller: &Caller) -> Result<Vec<CaView>> {
        Self::require_operator(caller)?;
        self.ca().list().await.map_err(ca_error)
    }

    pub async fn issue_certificate(
        &self,
        caller: &Caller,
        req: IssueCertificate,
    ) -> Result<IssuedCertificate> {
        Self::require_operator(caller)?;
        let name = req.name.clone();
        let issued = self.ca().issue(req).await.map_err(ca_error)?;
        self.audit(
            &caller.subject,
            "",
            "iam.certificate.create",
            &format!("{} ({name})", issued.id),
            "allow",
            "",
        )
        .await;
        Ok(issued)
    }

    pub async fn rotate_ca(&self, caller: &Caller) -> Result<Vec<CaView>> {
        Self::require_operator(caller)?;
        self.ca().rotate().await.map_err(ca_error)?;
        self.audit(
            &caller.subject,
            "",
            "iam.certificate.rotate",
            "ca",
            "allow",
            "",
        )
        .await;
        self.ca().list().await.map_err(ca_error)
    }

    pub async fn retire_ca(&self, caller: &Caller, id: &str) -> Result<()> {
        Self::require_operator(caller)?;
        self.ca().retire(id).await.map_err(ca_error)?;
        self.audit(
            &caller.subject,
            "",
            "iam.certificate.retire",
            id,
            "allow",
            "",
        )
        .await;
        Ok(())
    }

    async fn insert_key(&self, kid: &str, pkcs8: &[u8], state: &str) -> Result<()> {
        let sealed = self.master.seal(&format!("signing-key:{kid}"), pkcs8);
        self.db
            .execute(
                "INSERT INTO signing_keys (kid, private_key, state, created_at) VALUES ($1, $2, $3, $4)",
                params![kid, sealed, state, now()],
            )
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// Reads the signing keys from the store (after a rotation, possibly by another instance).
    pub async fn reload_keys(&self) -> Result<()> {
        #[derive(Deserialize)]
        struct K {
            kid: String,
            private_key: String,
            state: String,
        }
        let rows: Vec<K> = self
            .db
            .query(
                "SELECT kid, private_key, state FROM signing_keys WHERE state != 'retired' ORDER BY created_at",
                vec![],
            )
            .await
            .map_err(store_error)?;
        let mut loaded = Vec::new();
        for r in rows {
            let pkcs8 = self
                .master
                .open(&format!("signing-key:{}", r.kid), &r.private_key)
                .map_err(|e| IamError::Unavailable(format!("signing key {}: {e}", r.kid)))?;
            let key = SigningKey::from_pkcs8(&r.kid, &pkcs8)
                .map_err(|e| IamError::Unavailable(format!("signing key {}: {e}", r.kid)))?;
            loaded.push(LoadedKey {
                kid: r.kid,
                key: Arc::new(key),
                state: r.state,
            });
        }
        let set = JwkSet {
            keys: loaded.iter().map(|k| k.key.public_jwk()).collect(),
        };
        self.verifier
            .set_keys(&set)
            .map_err(|e| IamError::Unavailable(e.to_string()))?;
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = loaded;
        Ok(())
    }

    /// The published verification keys (active and previous).
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: self
                .keys
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|k| k.key.public_jwk())
                .collect(),
        }
    }

    pub fn verifier(&self) -> Arc<Verifier> {
        self.verifier.clone()
    }

    // ---- audit

    async fn audit(
        &self,
        actor: &str,
        org_id: &str,
        action: &str,
        target: &str,
        outcome: &str,
        reason: &str,
    ) {
        let request_id = uc_runtime::http::request_id::current().unwrap_or_default();
        if let Err(e) = self
            .db
            .execute(
                "INSERT INTO audit (at, actor, org_id, action, target, outcome, reason, request_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                params![now(), actor, org_id, action, target, outcome, reason, request_id],
            )
            .await
        {
            tracing::error!(error = %e, action, target, "cannot record audit event");
        }
    }

    /// An audit insert to run in the same request as the change it records.
    fn audit_statement(caller: &Caller, org_id: &str, action: &str, target: &str) -> Statement {
        let request_id = uc_runtime::http::request_id::current().unwrap_or_default();
        Statement::with_params(
            "INSERT INTO audit (at, actor, org_id, action, target, outcome, reason, request_id) VALUES ($1, $2, $3, $4, $5, 'allow', '', $6)",
            params![
                now(),
                caller.subject.as_str(),
                org_id,
                action,
                target,
                request_id
            ],
        )
    }

    /// Runs a change and its audit record atomically.
    async fn change(
        &self,
        caller: &Caller,
        org_id: &str,
        action: &str,
        target: &str,
        mut statements: Vec<Statement>,
    ) -> Result<Vec<flaredb::sql::StatementResult>> {
        statements.push(Self::audit_statement(caller, org_id, action, target));
        self.db.batch(statements).await.map_err(store_error)
    }

    // ---- access checks

    /// The organization `org` (name or id) as `caller` may see it: the operator sees every
    /// one, anyone else only their own ("not found" otherwise).
    async fn visible_org(&self, caller: &Caller, org: &str) -> Result<Org> {
        let found: Vec<Org> = self
            .db
            .query(
                "SELECT id, name, created_at FROM orgs WHERE id = $1 OR name = $1",
                params![org],
            )
            .await
            .map_err(store_error)?;
        match found.into_iter().next() {
            Some(o) if caller.admin || caller.org.as_deref() == Some(o.id.as_str()) => Ok(o),
            _ => Err(IamError::NotFound(format!(
                "organization {org:?} not found"
            ))),
        }
    }

    /// `visible_org`, then the permission within it (403 naming the permission).
    async fn authorized_org(&self, caller: &Caller, org: &str, permission: &str) -> Result<Org> {
        let o = self.visible_org(caller, org).await?;
        if caller.allows(permission) {
            Ok(o)
        } else {
            self.audit(
                &caller.subject,
                &o.id,
                permission,
                &o.id,
                "deny",
                "missing permission",
            )
            .await;
            Err(IamError::Denied(format!(
                "permission {permission} is required"
            )))
        }
    }

    fn require_operator(caller: &Caller) -> Result<()> {
        if caller.admin {
            Ok(())
        } else {
            Err(IamError::Denied(
                "only the cluster operator may do this".into(),
            ))
        }
    }

    // ---- organizations and projects

    pub async fn create_org(&self, caller: &Caller, req: CreateNamed) -> Result<Org> {
        Self::require_operator(caller)?;
        catalog::check_name("organization", &req.name).map_err(IamError::Invalid)?;
        let org = Org {
            id: new_id("org"),
            name: req.name,
            created_at: now(),
        };
        self.change(
            caller,
            &org.id,
            "iam.org.create",
            &org.id,
            vec![Statement::with_params(
                "INSERT INTO orgs (id, name, created_at) VALUES ($1, $2, $3)",
                params![&org.id, &org.name, org.created_at],
            )],
        )
        .await?;
        Ok(org)
    }

    pub async fn list_orgs(&self, caller: &Caller) -> Result<Vec<Org>> {
        let (sql, p) = if caller.admin {
            (
                "SELECT id, name, created_at FROM orgs ORDER BY name",
                vec![],
            )
        } else {
            (
                "SELECT id, name, created_at FROM orgs WHERE id = $1",
                params![caller.org.clone().unwrap_or_default()],
            )
        };
        self.db.query(sql, p).await.map_err(store_error)
    }

    pub async fn get_org(&self, caller: &Caller, org: &str) -> Result<Org> {
        self.authorized_org(caller, org, "iam.org.get").await
    }

    pub async fn delete_org(&self, caller: &Caller, org: &str) -> Result<()> {
        let o = self.visible_org(caller, org).await?;
        Self::require_operator(caller)?;
        // Foreign keys cascade to everything the organization owns.
        self.change(
            caller,
            &o.id,
            "iam.org.delete",
            &o.id,
            vec![
                Statement::with_params("DELETE FROM roles WHERE org_id = $1", params![&o.id]),
                Statement::with_params("DELETE FROM orgs WHERE id = $1", params![&o.id]),
            ],
        )
        .await?;
        Ok(())
    }

    pub async fn create_project(
        &self,
        caller: &Caller,
        org: &str,
        req: CreateNamed,
    ) -> Result<Project> {
        let o = self
            .authorized_org(caller, org, "iam.project.create")
            .await?;
        catalog::check_name("project", &req.name).map_err(IamError::Invalid)?;
        let p = Project {
            id: new_id("prj"),
            org_id: o.id.clone(),
            name: req.name,
            created_at: now(),
        };
        self.change(
            caller,
            &o.id,
            "iam.project.create",
            &p.id,
            vec![Statement::with_params(
                "INSERT INTO projects (id, org_id, name, created_at) VALUES ($1, $2, $3, $4)",
                params![&p.id, &p.org_id, &p.name, p.created_at],
            )],
        )
        .await?;
        Ok(p)
    }

    pub async fn list_projects(&self, caller: &Caller, org: &str) -> Result<Vec<Project>> {
        let o = self.authorized_org(caller, org, "iam.project.list").await?;
        self.db
            .query(
                "SELECT id, org_id, name, created_at FROM projects WHERE org_id = $1 ORDER BY name",
                params![&o.id],
            )
            .await
            .map_err(store_error)
    }

    async fn find_project(&self, org_id: &str, project: &str) -> Result<Project> {
        let found: Vec<Project> = self
            .db
            .query(
                "SELECT id, org_id, name, created_at FROM projects WHERE org_id = $1 AND (id = $2 OR name = $2)",
                params![org_id, project],
            )
            .await
            .map_err(store_error)?;
        found
            .into_iter()
            .next()
            .ok_or_else(|| IamError::NotFound(format!("project {project:?} not found")))
    }

    pub async fn get_project(&self, caller: &Caller, org: &str, project: &str) -> Result<Project> {
        let o = self.authorized_org(caller, org, "iam.project.get").await?;
        self.find_project(&o.id, project).await
    }

    pub async fn delete_project(&self, caller: &Caller, org: &str, project: &str) -> Result<()> {
        let o = self
            .authorized_org(caller, org, "iam.project.delete")
            .await?;
        let p = self.find_project(&o.id, project).await?;
        self.change(
            caller,
            &o.id,
            "iam.project.delete",
            &p.id,
            vec![
                Statement::with_params(
                    "DELETE FROM bindings WHERE project_id = $1",
                    params![&p.id],
                ),
                Statement::with_params("DELETE FROM projects WHERE id = $1", params![&p.id]),
            ],
        )
        .await?;
        Ok(())
    }

    // ---- principals

    fn permission_for(kind: PrincipalKind, verb: &str) -> String {
        let resource = match kind {
            PrincipalKind::User => "user",
            PrincipalKind::ServiceAccount => "sa",
            PrincipalKind::Group => "group",
        };
        format!("iam.{resource}.{verb}")
    }

    fn check_password(password: &str) -> Result<()> {
        if password.chars().count() < MIN_PASSWORD_LEN || password.len() > MAX_PASSWORD_LEN {
            return Err(IamError::Invalid(format!(
                "password must be {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters"
            )));
        }
        Ok(())
    }

    pub async fn create_principal(
        &self,
        caller: &Caller,
        org: &str,
        kind: PrincipalKind,
        name: String,
        password: Option<String>,
    ) -> Result<Principal> {
        let o = self
            .authorized_org(caller, org, &Self::permission_for(kind, "create"))
            .await?;
        catalog::check_name(kind.as_str(), &name).map_err(IamError::Invalid)?;
        let p = Principal {
            id: new_id(kind.prefix()),
            org_id: o.id.clone(),
            kind,
            name,
            disabled: false,
            created_at: now(),
        };
        let sealed = match password {
            Some(pw) if kind == PrincipalKind::User => {
                Self::check_password(&pw)?;
                let hash =
                    crypto::hash_password(&pw).map_err(|e| IamError::Unavailable(e.to_string()))?;
                Some(
                    self.master
                        .seal(&format!("password:{}", p.id), hash.as_bytes()),
                )
            }
            Some(_) => {
                return Err(IamError::Invalid(
                    "only users have passwords (service accounts use API keys)".into(),
                ));
            }
            None => None,
        };
        self.change(
            caller,
            &o.id,
            &Self::permission_for(kind, "create"),
            &p.id,
            vec![Statement::with_params(
                "INSERT INTO principals (id, org_id, kind, name, password, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
                params![&p.id, &p.org_id, kind.as_str(), &p.name, sealed, p.created_at],
            )],
        )
        .await?;
        Ok(p)
    }

    pub async fn list_principals(
        &self,
        caller: &Caller,
        org: &str,
        kind: PrincipalKind,
    ) -> Result<Vec<Principal>> {
        let o = self
            .authorized_org(caller, org, &Self::permission_for(kind, "list"))
            .await?;
        self.principals_where("org_id = $1 AND kind = $2", params![&o.id, kind.as_str()])
            .await
    }

    async fn principals_where(&self, filter: &str, p: Vec<SqlValue>) -> Result<Vec<Principal>> {
        #[derive(Deserialize)]
        struct P {
            id: String,
            org_id: String,
            kind: String,
            name: String,
            disabled: i64,
            created_at: i64,
        }
        let rows: Vec<P> = self
            .db
            .query(
                &format!(
                    "SELECT id, org_id, kind, name, disabled, created_at FROM principals WHERE {filter} ORDER BY name"
                ),
                p,
            )
            .await
            .map_err(store_error)?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                Some(Principal {
                    kind: PrincipalKind::parse(&r.kind)?,
                    id: r.id,
                    org_id: r.org_id,
                    name: r.name,
                    disabled: r.disabled != 0,
                    created_at: r.created_at,
                })
            })
            .collect())
    }

    /// A principal of the organization (any kind when `kind` is None).
    async fn find_principal(
        &self,
        org_id: &str,
        id: &str,
        kind: Option<PrincipalKind>,
    ) -> Result<Principal> {
        let found = self
            .principals_where("org_id = $1 AND id = $2", params![org_id, id])
            .await?;
        found
            .into_iter()
            .find(|p| kind.is_none_or(|k| k == p.kind))
            .ok_or_else(|| IamError::NotFound(format!("principal {id:?} not found")))
    }

    pub async fn get_principal(
        &self,
        caller: &Caller,
        org: &str,
        kind: PrincipalKind,
        id: &str,
    ) -> Result<Principal> {
        let o = self
            .authorized_org(caller, org, &Self::permission_for(kind, "get"))
            .await?;
        self.find_principal(&o.id, id, Some(kind)).await
    }

    pub async fn delete_principal(
        &self,
        caller: &Caller,
        org: &str,
        kind: PrincipalKind,
        id: &str,
    ) -> Result<()> {
        let o = self
            .authorized_org(caller, org, &Self::permission_for(kind, "delete"))
            .await?;
        let p = self.find_principal(&o.id, id, Some(kind)).await?;
        self.change(
            caller,
            &o.id,
            &Self::permission_for(kind, "delete"),
            &p.id,
            vec![Statement::with_params(
                "DELETE FROM principals WHERE id = $1",
                params![&p.id],
            )],
        )
        .await?;
        Ok(())
    }

    /// Sets a user's password: with `iam.user.update`, or a user for themselves.
    pub async fn set_password(
        &self,
        caller: &Caller,
        org: &str,
        id: &str,
        password: String,
    ) -> Result<()> {
        let o = self.visible_org(caller, org).await?;
        if !(caller.allows("iam.user.update") || caller.subject == id) {
            return Err(IamError::Denied(
                "permission iam.user.update is required".into(),
            ));
        }
        let p = self
            .find_principal(&o.id, id, Some(PrincipalKind::User))
            .await?;
        Self::check_password(&password)?;
        let hash =
            crypto::hash_password(&password).map_err(|e| IamError::Unavailable(e.to_string()))?;
        let sealed = self
            .master
            .seal(&format!("password:{}", p.id), hash.as_bytes());
        self.change(
            caller,
            &o.id,
            "iam.user.update",
            &p.id,
            vec![Statement::with_params(
                "UPDATE principals SET password = $1 WHERE id = $2",
                params![sealed, &p.id],
            )],
        )
        .await?;
        Ok(())
    }

    pub async fn add_group_member(
        &self,
        caller: &Caller,
        org: &str,
        group: &str,
        member: &str,
    ) -> Result<()> {
        let o = self.authorized_org(caller, org, "iam.group.update").await?;
        let g = self
            .find_principal(&o.id, group, Some(PrincipalKind::Group))
            .await?;
        let m = self.find_principal(&o.id, member, None).await?;
        if m.kind == PrincipalKind::Group {
            return Err(IamError::Invalid("groups cannot contain groups".into()));
        }
        self.change(
            caller,
            &o.id,
            "iam.group.update",
            &format!("{}+{}", g.id, m.id),
            vec![Statement::with_params(
                "INSERT INTO group_members (group_id, principal_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                params![&g.id, &m.id],
            )],
        )
        .await?;
        Ok(())
    }

    pub async fn remove_group_member(
        &self,
        caller: &Caller,
        org: &str,
        group: &str,
        member: &str,
    ) -> Result<()> {
        let o = self.authorized_org(caller, org, "iam.group.update").await?;
        let g = self
            .find_principal(&o.id, group, Some(PrincipalKind::Group))
            .await?;
        let results = self
            .change(
                caller,
                &o.id,
                "iam.group.update",
                &format!("{}-{member}", g.id),
                vec![Statement::with_params(
                    "DELETE FROM group_members WHERE group_id = $1 AND principal_id = $2",
                    params![&g.id, member],
                )],
            )
            .await?;
        if results.first().is_some_and(|r| r.rows_affected == 0) {
            return Err(IamError::NotFound(format!(
                "{member:?} is not a member of {group:?}"
            )));
        }
        Ok(())
    }

    // ---- roles and bindings

    pub async fn create_role(&self, caller: &Caller, org: &str, req: CreateRole) -> Result<Role> {
        let o = self.authorized_org(caller, org, "iam.role.create").await?;
        catalog::check_name("role", &req.name).map_err(IamError::Invalid)?;
        if catalog::BUILTIN_ROLES.contains(&req.name.as_str()) {
            return Err(IamError::Conflict(format!(
                "{} is a built-in role",
                req.name
            )));
        }
        if req.permissions.is_empty() || req.permissions.len() > 500 {
            return Err(IamError::Invalid("a role has 1 to 500 permissions".into()));
        }
        if let Some(bad) = req
            .permissions
            .iter()
            .find(|p| !catalog::is_valid_permission(p))
        {
            return Err(IamError::Invalid(format!(
                "unknown permission {:?} (expected <service>.<resource>.<verb>, <service>.<resource>.*, <service>.* or *)",
                bad.chars().take(100).collect::<String>()
            )));
        }
        let role = Role {
            id: new_id("role"),
            org_id: o.id.clone(),
            name: req.name,
            permissions: req.permissions,
        };
        let perms = serde_json::to_string(&role.permissions).expect("strings serialize");
        self.change(
            caller,
            &o.id,
            "iam.role.create",
            &role.id,
            vec![Statement::with_params(
                "INSERT INTO roles (id, org_id, name, permissions) VALUES ($1, $2, $3, $4)",
                params![&role.id, &role.org_id, &role.name, perms],
            )],
        )
        .await?;
        Ok(role)
    }

    async fn roles_where(&self, filter: &str, p: Vec<SqlValue>) -> Result<Vec<Role>> {
        #[derive(Deserialize)]
        struct R {
            id: String,
            org_id: String,
            name: String,
            permissions: String,
        }
        let rows: Vec<R> = self
            .db
            .query(
                &format!(
                    "SELECT id, org_id, name, permissions FROM roles WHERE {filter} ORDER BY org_id, name"
                ),
                p,
            )
            .await
            .map_err(store_error)?;
        Ok(rows
            .into_iter()
            .map(|r| Role {
                permissions: serde_json::from_str(&r.permissions).unwrap_or_default(),
                id: r.id,
                org_id: r.org_id,
                name: r.name,
            })
            .collect())
    }

    /// The organization's roles and the built-in ones.
    pub async fn list_roles(&self, caller: &Caller, org: &str) -> Result<Vec<Role>> {
        let o = self.authorized_org(caller, org, "iam.role.list").await?;
        self.roles_where("org_id = '' OR org_id = $1", params![&o.id])
            .await
    }

    pub async fn delete_role(&self, caller: &Caller, org: &str, id: &str) -> Result<()> {
        let o = self.authorized_org(caller, org, "iam.role.delete").await?;
        let results = self
            .change(
                caller,
                &o.id,
                "iam.role.delete",
                id,
                vec![Statement::with_params(
                    "DELETE FROM roles WHERE id = $1 AND org_id = $2",
                    params![id, &o.id],
                )],
            )
            .await?;
        if results.first().is_some_and(|r| r.rows_affected == 0) {
            return Err(IamError::NotFound(format!("role {id:?} not found")));
        }
        Ok(())
    }

    pub async fn create_binding(
        &self,
        caller: &Caller,
        org: &str,
        req: CreateBinding,
    ) -> Result<Binding> {
        let o = self
            .authorized_org(caller, org, "iam.binding.create")
            .await?;
        let principal = self.find_principal(&o.id, &req.principal_id, None).await?;
        let role = self
            .roles_where(
                "(org_id = '' OR org_id = $1) AND (id = $2 OR name = $2)",
                params![&o.id, &req.role],
            )
            .await?
            .into_iter()
            // The organization's own role wins over a built-in of the same name (there are
            // none: built-in names are reserved).
            .max_by_key(|r| !r.org_id.is_empty())
            .ok_or_else(|| IamError::NotFound(format!("role {:?} not found", req.role)))?;
        let project_id = match &req.project {
            Some(p) => self.find_project(&o.id, p).await?.id,
            None => String::new(),
        };
        let b = Binding {
            id: new_id("bnd"),
            org_id: o.id.clone(),
            project_id,
            principal_id: principal.id,
            role_id: role.id,
            created_at: now(),
        };
        self.change(
            caller,
            &o.id,
            "iam.binding.create",
            &b.id,
            vec![Statement::with_params(
                "INSERT INTO bindings (id, org_id, project_id, principal_id, role_id, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
                params![&b.id, &b.org_id, &b.project_id, &b.principal_id, &b.role_id, b.created_at],
            )],
        )
        .await?;
        Ok(b)
    }

    pub async fn list_bindings(&self, caller: &Caller, org: &str) -> Result<Vec<Binding>> {
        let o = self.authorized_org(caller, org, "iam.binding.list").await?;
        self.db
            .query(
                "SELECT id, org_id, project_id, principal_id, role_id, created_at FROM bindings WHERE org_id = $1 ORDER BY created_at, id",
                params![&o.id],
            )
            .await
            .map_err(store_error)
    }

    pub async fn delete_binding(&self, caller: &Caller, org: &str, id: &str) -> Result<()> {
        let o = self
            .authorized_org(caller, org, "iam.binding.delete")
            .await?;
        let results = self
            .change(
                caller,
                &o.id,
                "iam.binding.delete",
                id,
                vec![Statement::with_params(
                    "DELETE FROM bindings WHERE id = $1 AND org_id = $2",
                    params![id, &o.id],
                )],
            )
            .await?;
        if results.first().is_some_and(|r| r.rows_affected == 0) {
            return Err(IamError::NotFound(format!("binding {id:?} not found")));
        }
        Ok(())
    }

    /// The permission patterns `principal` holds in `org` (and `project`): its own bindings
    /// and its groups', at organization scope and, when given, the project's.
    async fn effective_permissions(
        &self,
        org_id: &str,
        project_id: Option<&str>,
        principal_id: &str,
    ) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct P {
            permissions: String,
        }
        let rows: Vec<P> = self
            .db
            .query(
                // Driven by the principal (and its groups) through `bindings_by_principal`, so
                // the cost follows the principal's own bindings, not the organization's.
                "SELECT DISTINCT r.permissions FROM bindings b JOIN roles r ON r.id = b.role_id \
                 WHERE b.principal_id IN (SELECT $3 UNION SELECT group_id FROM group_members WHERE principal_id = $3) \
                 AND b.org_id = $1 AND (b.project_id = '' OR b.project_id = $2)",
                params![org_id, project_id.unwrap_or(""), principal_id],
            )
            .await
            .map_err(store_error)?;
        let mut perms: Vec<String> = rows
            .into_iter()
            .flat_map(|r| serde_json::from_str::<Vec<String>>(&r.permissions).unwrap_or_default())
            .collect();
        perms.sort();
        perms.dedup();
        Ok(perms)
    }

    // ---- credentials

    pub async fn create_credential(
        &self,
        caller: &Caller,
        org: &str,
        req: CreateCredential,
    ) -> Result<CreatedCredential> {
        let o = self.visible_org(caller, org).await?;
        // Anyone may create keys for themselves; for others it takes the permission.
        if !(caller.subject == req.principal_id || caller.allows("iam.credential.create")) {
            return Err(IamError::Denied(
                "permission iam.credential.create is required".into(),
            ));
        }
        let principal = self.find_principal(&o.id, &req.principal_id, None).await?;
        if principal.kind == PrincipalKind::Group {
            return Err(IamError::Invalid("groups cannot hold credentials".into()));
        }
        let expires_at = match req.expires_in_secs {
            Some(s) if !(60..=10 * 365 * 86400).contains(&s) => {
                return Err(IamError::Invalid(
                    "expires_in_secs must be between 60 and 315360000".into(),
                ));
            }
            Some(s) => Some(now() + s),
            None => None,
        };
        let id = new_id("crd");
        let secret = crypto::random_hex(32);
        let api_key = format!("{API_KEY_PREFIX}{id}_{secret}");
        let sealed = self
            .master
            .seal(&format!("credential:{id}"), &crypto::digest(&secret));
        let credential = Credential {
            id: id.clone(),
            org_id: o.id.clone(),
            principal_id: principal.id,
            created_at: now(),
            expires_at,
            revoked_at: None,
        };
        self.change(
            caller,
            &o.id,
            "iam.credential.create",
            &id,
            vec![Statement::with_params(
                "INSERT INTO credentials (id, org_id, principal_id, digest, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
                params![&id, &o.id, &credential.principal_id, sealed, credential.created_at, expires_at],
            )],
        )
        .await?;
        Ok(CreatedCredential {
            credential,
            api_key,
        })
    }

    pub async fn list_credentials(&self, caller: &Caller, org: &str) -> Result<Vec<Credential>> {
        let o = self
            .authorized_org(caller, org, "iam.credential.list")
            .await?;
        self.db
            .query(
                "SELECT id, org_id, principal_id, created_at, expires_at, revoked_at FROM credentials WHERE org_id = $1 ORDER BY created_at, id",
                params![&o.id],
            )
            .await
            .map_err(store_error)
    }

    /// Revokes now, or after `after_secs` (the overlap while clients switch to a new key).
    pub async fn revoke_credential(
        &self,
        caller: &Caller,
        org: &str,
        id: &str,
        req: RevokeCredential,
    ) -> Result<Credential> {
        let o = self.visible_org(caller, org).await?;
        let found: Vec<Credential> = self
            .db
            .query(
                "SELECT id, org_id, principal_id, created_at, expires_at, revoked_at FROM credentials WHERE id = $1 AND org_id = $2",
                params![id, &o.id],
            )
            .await
            .map_err(store_error)?;
        let Some(mut c) = found.into_iter().next() else {
            return Err(IamError::NotFound(format!("credential {id:?} not found")));
        };
        if !(caller.subject == c.principal_id || caller.allows("iam.credential.revoke")) {
            return Err(IamError::Denied(
                "permission iam.credential.revoke is required".into(),
            ));
        }
        let after = req.after_secs.unwrap_or(0);
        if !(0..=30 * 86400).contains(&after) {
            return Err(IamError::Invalid(
                "after_secs must be between 0 and 2592000".into(),
            ));
        }
        let at = now() + after;
        self.change(
            caller,
            &o.id,
            "iam.credential.revoke",
            id,
            vec![Statement::with_params(
                "UPDATE credentials SET revoked_at = $1 WHERE id = $2",
                params![at, id],
            )],
        )
        .await?;
        c.revoked_at = Some(at);
        Ok(c)
    }

    // ---- authentication and tokens

    fn mint(
        &self,
        principal: &Principal,
        project_id: Option<String>,
        perms: Vec<String>,
    ) -> Result<TokenResponse> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let active = keys
            .iter()
            .rev()
            .find(|k| k.state == "active")
            .ok_or_else(|| IamError::Unavailable("no active signing key".into()))?;
        let iat = now();
        let ttl = self.settings.token_ttl.as_secs() as i64;
        let claims = Claims {
            iss: self.settings.issuer.clone(),
            sub: principal.id.clone(),
            aud: DEFAULT_AUDIENCE.to_owned(),
            exp: iat + ttl,
            nbf: iat,
            iat,
            jti: crypto::random_hex(12),
            kind: principal.kind.as_str().to_owned(),
            org: Some(principal.org_id.clone()),
            project: project_id,
            perms,
        };
        let token = active
            .key
            .sign(&claims)
            .map_err(|e| IamError::Unavailable(format!("signing: {e}")))?;
        tracing::debug!(kid = %active.kid, sub = %claims.sub, "token issued");
        Ok(TokenResponse {
            access_token: token,
            token_type: "Bearer".into(),
            expires_in: ttl,
            expires_at: claims.exp,
        })
    }

    /// Exchanges a password or an API key for an access token. Every failure looks the same
    /// to the caller ("invalid credentials") and is audited; repeated failures for one
    /// principal are refused for a minute.
    pub async fn issue_token(&self, req: TokenRequest) -> Result<TokenResponse> {
        let invalid = || IamError::Unauthenticated("invalid credentials".into());
        let limit = self.settings.login_failures_per_minute;
        let (principal, project) = match req {
            TokenRequest::Password {
                org,
                username,
                password,
                project,
            } => {
                let attempt_key = format!("password:{org}/{username}");
                self.limiter.check(&attempt_key, limit)?;
                #[derive(Deserialize)]
                struct U {
                    id: String,
                    org_id: String,
                    name: String,
                    password: Option<String>,
                    disabled: i64,
                    created_at: i64,
                }
                let found: Vec<U> = self
                    .db
                    .query(
                        "SELECT p.id, p.org_id, p.name, p.password, p.disabled, p.created_at FROM principals p JOIN orgs o ON o.id = p.org_id \
                         WHERE (o.name = $1 OR o.id = $1) AND p.kind = 'user' AND p.name = $2",
                        params![&org, &username],
                    )
                    .await
                    .map_err(store_error)?;
                let user = found.into_iter().next();
                let ok = user.as_ref().is_some_and(|u| {
                    u.disabled == 0
                        && u.password.as_deref().is_some_and(|sealed| {
                            self.master
                                .open(&format!("password:{}", u.id), sealed)
                                .ok()
                                .and_then(|h| String::from_utf8(h).ok())
                                .is_some_and(|phc| crypto::verify_password(&password, &phc))
                        })
                });
                if !ok {
                    self.limiter.failed(&attempt_key);
                    let org_id = user.as_ref().map(|u| u.org_id.clone()).unwrap_or_default();
                    self.audit(
                        &format!("{org}/{username}"),
                        &org_id,
                        "iam.token.create",
                        &username,
                        "deny",
                        "wrong password or unknown user",
                    )
                    .await;
                    return Err(invalid());
                }
                self.limiter.succeeded(&attempt_key);
                let u = user.expect("checked");
                (
                    Principal {
                        id: u.id,
                        org_id: u.org_id,
                        kind: PrincipalKind::User,
                        name: u.name,
                        disabled: false,
                        created_at: u.created_at,
                    },
                    project,
                )
            }
            TokenRequest::ApiKey { api_key, project } => {
                let parsed = api_key
                    .strip_prefix(API_KEY_PREFIX)
                    .and_then(|rest| rest.rsplit_once('_'))
                    .filter(|(id, secret)| id.len() <= 64 && secret.len() == 64);
                let Some((id, secret)) = parsed else {
                    return Err(invalid());
                };
                let attempt_key = format!("credential:{id}");
                self.limiter.check(&attempt_key, limit)?;
                #[derive(Deserialize)]
                struct C {
                    principal_id: String,
                    org_id: String,
                    digest: String,
                    expires_at: Option<i64>,
                    revoked_at: Option<i64>,
                }
                let found: Vec<C> = self
                    .db
                    .query(
                        "SELECT principal_id, org_id, digest, expires_at, revoked_at FROM credentials WHERE id = $1",
                        params![id],
                    )
                    .await
                    .map_err(store_error)?;
                let t = now();
                let c = found.into_iter().next();
                let ok = c.as_ref().is_some_and(|c| {
                    c.expires_at.is_none_or(|e| e > t)
                        && c.revoked_at.is_none_or(|r| r > t)
                        && self
                            .master
                            .open(&format!("credential:{id}"), &c.digest)
                            .is_ok_and(|d| crypto::equal(&d, &crypto::digest(secret)))
                });
                if !ok {
                    self.limiter.failed(&attempt_key);
                    self.audit(
                        id,
                        &c.as_ref().map(|c| c.org_id.clone()).unwrap_or_default(),
                        "iam.token.create",
                        id,
                        "deny",
                        "unknown, expired, revoked or wrong API key",
                    )
                    .await;
                    return Err(invalid());
                }
                self.limiter.succeeded(&attempt_key);
                let c = c.expect("checked");
                let p = self
                    .find_principal(&c.org_id, &c.principal_id, None)
                    .await?;
                if p.disabled {
                    return Err(invalid());
                }
                (p, project)
            }
        };
        let project_id = match project {
            Some(p) => Some(self.find_project(&principal.org_id, &p).await?.id),
            None => None,
        };
        let perms = self
            .effective_permissions(&principal.org_id, project_id.as_deref(), &principal.id)
            .await?;
        self.mint(&principal, project_id, perms)
    }

    /// Verifies an access token issued by this iam.
    pub fn verify(&self, token: &str) -> Result<Claims> {
        self.verifier.verify(token).map_err(|e| match e {
            VerifyError::UnknownKey { .. } => {
                IamError::Unauthenticated("invalid token (unknown signing key)".into())
            }
            VerifyError::Invalid(_) => IamError::Unauthenticated("invalid token".into()),
        })
    }

    /// A decision for a service: may this token's principal do `permission` on a resource of
    /// `org`/`project`? Denials are audited.
    pub async fn authorize(
        &self,
        caller: &Caller,
        req: AuthorizeRequest,
    ) -> Result<AuthorizeResponse> {
        if !catalog::is_valid_permission(&req.permission) || req.permission.contains('*') {
            return Err(IamError::Invalid(format!(
                "unknown permission {:?}",
                req.permission.chars().take(100).collect::<String>()
            )));
        }
        let (subject, org, project, perms, admin) = match &req.token {
            Some(token) => {
                let c = self.verify(token)?;
                (c.sub, c.org, c.project, c.perms, false)
            }
            None => (
                caller.subject.clone(),
                caller.org.clone(),
                caller.project.clone(),
                caller.permissions.clone(),
                caller.admin,
            ),
        };
        let decision = |allowed: bool, reason: &str| AuthorizeResponse {
            allowed,
            reason: reason.to_owned(),
            principal: subject.clone(),
        };
        let response = if admin {
            decision(true, "cluster operator")
        } else if org.as_deref() != Some(req.org.as_str()) {
            decision(false, "the resource belongs to another organization")
        } else if req.project.is_some() && project.is_some() && project != req.project {
            decision(false, "the token is scoped to another project")
        } else if perms
            .iter()
            .any(|p| uc_runtime::token::permission_matches(p, &req.permission))
        {
            decision(true, "granted by a role binding")
        } else {
            decision(false, "no role binding grants this permission")
        };
        if !response.allowed {
            self.audit(
                &subject,
                &req.org,
                &req.permission,
                req.resource.as_deref().unwrap_or(""),
                "deny",
                &response.reason,
            )
            .await;
        }
        Ok(response)
    }

    // ---- signing keys

    pub async fn list_keys(&self, caller: &Caller) -> Result<Vec<SigningKeyView>> {
        Self::require_operator(caller)?;
        self.db
            .query(
                "SELECT kid, state, created_at, rotated_at FROM signing_keys ORDER BY created_at",
                vec![],
            )
            .await
            .map_err(store_error)
    }

    /// A new active key; the active one becomes `previous` (still verifies) until retired.
    pub async fn rotate_key(&self, caller: &Caller) -> Result<SigningKeyView> {
        Self::require_operator(caller)?;
        let kid = format!("k-{}", crypto::random_hex(6));
        let key = SigningKey::generate(&kid);
        let pkcs8 = key.to_pkcs8();
        let sealed = self
            .master
            .seal(&format!("signing-key:{kid}"), pkcs8.expose());
        let t = now();
        self.change(
            caller,
            "",
            "iam.key.rotate",
            &kid,
            vec![
                Statement::with_params(
                    "UPDATE signing_keys SET state = 'previous', rotated_at = $1 WHERE state = 'active'",
                    params![t],
                ),
                Statement::with_params(
                    "INSERT INTO signing_keys (kid, private_key, state, created_at) VALUES ($1, $2, 'active', $3)",
                    params![&kid, sealed, t],
                ),
            ],
        )
        .await?;
        self.reload_keys().await?;
        Ok(SigningKeyView {
            kid,
            state: "active".into(),
            created_at: t,
            rotated_at: None,
        })
    }

    /// Retires a previous key: it leaves the JWKS and tokens it signed stop verifying. Refused
    /// while tokens it signed may still be valid, unless `force`.
    pub async fn retire_key(&self, caller: &Caller, kid: &str, force: bool) -> Result<()> {
        Self::require_operator(caller)?;
        let keys = self.list_keys(caller).await?;
        let Some(k) = keys.iter().find(|k| k.kid == kid) else {
            return Err(IamError::NotFound(format!("signing key {kid:?} not found")));
        };
        if k.state != "previous" {
            return Err(IamError::Conflict(format!(
                "key {kid} is {}; only a previous (rotated-out) key can be retired",
                k.state
            )));
        }
        let ttl = self.settings.token_ttl.as_secs() as i64;
        let since = now() - k.rotated_at.unwrap_or(0);
        if !force && since < ttl {
            return Err(IamError::Conflict(format!(
                "tokens signed by {kid} may be valid for {} more seconds; retry then (or force)",
                ttl - since
            )));
        }
        self.change(
            caller,
            "",
            "iam.key.retire",
            kid,
            vec![Statement::with_params(
                "UPDATE signing_keys SET state = 'retired' WHERE kid = $1",
                params![kid],
            )],
        )
        .await?;
        self.reload_keys().await
    }

    // ---- audit trail

    pub async fn list_audit(
        &self,
        caller: &Caller,
        org: Option<&str>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<AuditEvent>> {
        let limit = limit.clamp(1, 1000) as i64;
        let sql =
            "SELECT seq, at, actor, org_id, action, target, outcome, reason, request_id FROM audit";
        match org {
            Some(org) => {
                let o = self.authorized_org(caller, org, "iam.audit.list").await?;
                self.db
                    .query(
                        &format!("{sql} WHERE org_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"),
                        params![&o.id, after, limit],
                    )
                    .await
                    .map_err(store_error)
            }
            None => {
                Self::require_operator(caller)?;
                self.db
                    .query(
                        &format!("{sql} WHERE seq > $1 ORDER BY seq LIMIT $2"),
                        params![after, limit],
                    )
                    .await
                    .map_err(store_error)
            }
        }
    }
}
