//! The domain core: validation, tenancy, IPAM and idempotency over the flaredb store. Every
//! create is one flaredb batch (all or nothing) that also bumps the model revision agents
//! wait on; address and VNI allocation retry when the database's unique constraints say
//! another request took the candidate first.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use axum::http::StatusCode;
use flaredb::client::{FlaredbClient, FlaredbError, params};
use flaredb::sql::{SqlValue, Statement, StatementResult};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use uc_runtime::ApiError;
use uc_runtime::auth::Principal;

use crate::api::*;
use crate::net::{Cidr, derived_mac, parse_ip, parse_mac, random_mac};
use crate::store::{self, *};

pub type Result<T> = std::result::Result<T, ApiError>;

/// How often a create retries after losing an allocation race.
const ALLOCATION_ATTEMPTS: usize = 64;
/// Candidates an allocation picks from at random, so concurrent creates rarely collide.
const CANDIDATES: usize = 32;
const FIRST_VNI: i64 = 4096;
const MAX_VNI: i64 = (1 << 24) - 1;

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A fresh id: 32 lowercase hex characters (device names use the first 10).
pub fn new_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn invalid(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, code, message)
}

fn not_found(what: &str, id: &str) -> ApiError {
    ApiError::not_found(format!("{what} {id:?} not found"))
}

fn check_name(name: &str) -> Result<()> {
    if name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(invalid(
            "invalid_name",
            "names are at most 128 characters without control characters",
        ));
    }
    Ok(())
}

fn cidr(what: &str, text: &str) -> Result<Cidr> {
    Cidr::parse(text).map_err(|m| invalid("invalid_cidr", format!("{what}: {m}")))
}

fn ip(what: &str, text: &str) -> Result<Ipv4Addr> {
    parse_ip(what, text).map_err(|m| invalid("invalid_ip", m))
}

/// The tenant a caller acts for: its token's org and project. The operator sees everything.
#[derive(Debug, Clone)]
pub struct Scope {
    pub org: String,
    pub project: String,
    pub admin: bool,
}

impl Scope {
    pub fn of(caller: &Principal) -> Self {
        Self {
            org: caller.org.clone().unwrap_or_default(),
            project: caller.project.clone().unwrap_or_default(),
            admin: caller.admin,
        }
    }

    fn sees(&self, org: &str, project: &str) -> bool {
        self.admin || (self.org == org && self.project == project)
    }

    /// SQL filter `(admin OR org/project match)` over `$1..$3`.
    fn filter_params(&self) -> Vec<SqlValue> {
        params![self.admin, self.org.as_str(), self.project.as_str()]
    }
}

const SCOPED: &str = "($1 = 1 OR (org = $2 AND project = $3))";

/// Paging arguments of list calls.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
pub struct PageQuery {
    /// At most this many items (default 100, at most 1000).
    pub limit: Option<u32>,
    /// From a previous page's `next_page_token`.
    pub page_token: Option<String>,
}

impl PageQuery {
    fn limit(&self) -> i64 {
        i64::from(self.limit.unwrap_or(100).clamp(1, 1000))
    }
    fn after(&self) -> &str {
        self.page_token.as_deref().unwrap_or("")
    }
}

fn page<T, R>(
    mut rows: Vec<R>,
    q: &PageQuery,
    id: impl Fn(&R) -> String,
    f: impl FnMut(R) -> T,
) -> Page<T> {
    let limit = q.limit() as usize;
    let next_page_token = (rows.len() > limit).then(|| {
        rows.truncate(limit);
        id(rows.last().expect("limit >= 1"))
    });
    Page {
        items: rows.into_iter().map(f).collect(),
        next_page_token,
    }
}

/// A create's idempotency: its scoped key and the request it answers.
pub struct Idempotency {
    key: String,
    request: String,
}

impl Idempotency {
    pub fn new(
        scope: &Scope,
        op: &str,
        key: Option<&str>,
        request: &impl Serialize,
    ) -> Result<Option<Self>> {
        let Some(key) = key else { return Ok(None) };
        if key.is_empty() || key.len() > 255 {
            return Err(invalid(
                "invalid_idempotency_key",
                "Idempotency-Key must be 1..=255 characters",
            ));
        }
        Ok(Some(Self {
            key: format!("{}/{}/{op}/{key}", scope.org, scope.project),
            request: serde_json::to_string(request).unwrap_or_default(),
        }))
    }
}

pub struct Prismnet {
    db: FlaredbClient,
    revision: watch::Sender<i64>,
    default_router_host: String,
}

impl Prismnet {
    pub fn new(db: FlaredbClient, default_router_host: String) -> Self {
        Self {
            db,
            revision: watch::channel(0).0,
            default_router_host,
        }
    }

    /// Creates the schema. Safe to repeat.
    pub async fn init(&self) -> Result<()> {
        let mut schema: Vec<Statement> = SCHEMA.iter().map(|s| Statement::new(*s)).collect();
        schema.push(Statement::new(
            "CREATE UNIQUE INDEX IF NOT EXISTS fips_port ON fips (port_id)",
        ));
        self.db.batch(schema).await.map_err(store_error)?;
        self.refresh_revision().await?;
        Ok(())
    }

    /// Reads the model revision (changes made through other API instances).
    pub async fn refresh_revision(&self) -> Result<i64> {
        #[derive(serde::Deserialize)]
        struct Rev {
            v: i64,
        }
        let rows: Vec<Rev> = self
            .db
            .query(READ_REVISION, vec![])
            .await
            .map_err(store_error)?;
        let rev = rows.first().map_or(0, |r| r.v);
        self.revision.send_if_modified(|cur| {
            let newer = rev > *cur;
            if newer {
                *cur = rev;
            }
            newer
        });
        Ok(rev)
    }

    /// Waits until the revision passes `after` or `timeout` elapses; the current revision.
    pub async fn wait_revision(&self, after: i64, timeout: Duration) -> i64 {
        let mut rx = self.revision.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|r| *r > after)).await;
        *rx.borrow()
    }

    /// Runs a change (plus its idempotency record) and bumps the revision, atomically.
    async fn commit(
        &self,
        mut statements: Vec<Statement>,
        idem: Option<(&Idempotency, String)>,
    ) -> std::result::Result<Vec<StatementResult>, FlaredbError> {
        if let Some((i, result)) = idem {
            statements.push(Statement::with_params(
                "INSERT INTO idempotency (key, request, result, created_at) VALUES ($1, $2, $3, $4)",
                params![i.key.as_str(), i.request.as_str(), result, now()],
            ));
        }
        statements.push(Statement::new(BUMP_REVISION));
        statements.push(Statement::new(READ_REVISION));
        let results = self.db.batch(statements).await?;
        if let Some(last) = results.last()
            && let Some(Some(SqlValue::Integer(rev))) = last.rows.first().map(|r| r.first())
        {
            let rev = *rev;
            self.revision.send_if_modified(|cur| {
                let newer = rev > *cur;
                if newer {
                    *cur = rev;
                }
                newer
            });
        }
        Ok(results)
    }

    /// The stored answer of an earlier create with the same key, if any.
    async fn replay<T: DeserializeOwned>(&self, idem: Option<&Idempotency>) -> Result<Option<T>> {
        let Some(i) = idem else { return Ok(None) };
        #[derive(serde::Deserialize)]
        struct Row {
            request: String,
            result: String,
        }
        let rows: Vec<Row> = self
            .db
            .query(
                "SELECT request, result FROM idempotency WHERE key = $1",
                params![i.key.as_str()],
            )
            .await
            .map_err(store_error)?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(None);
        };
        if row.request != i.request {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used for a different request",
            ));
        }
        serde_json::from_str(&row.result)
            .map(Some)
            .map_err(|e| ApiError::internal(format!("stored idempotent answer: {e}")))
    }

    /// Commits a create; if a concurrent request with the same idempotency key won, answers
    /// with its result instead.
    async fn commit_create<T: Serialize + DeserializeOwned>(
        &self,
        statements: Vec<Statement>,
        idem: Option<&Idempotency>,
        result: T,
    ) -> std::result::Result<T, CreateError> {
        let text = serde_json::to_string(&result).unwrap_or_default();
        match self.commit(statements, idem.map(|i| (i, text))).await {
            Ok(_) => Ok(result),
            Err(e) if store::violated(&e, "idempotency.key") => match self.replay(idem).await {
                Ok(Some(stored)) => Ok(stored),
                Ok(None) => Err(CreateError::Api(store_error(e))),
                Err(api) => Err(CreateError::Api(api)),
            },
            Err(e) => Err(CreateError::Store(e)),
        }
    }

    async fn rows<T: DeserializeOwned>(&self, sql: &str, p: Vec<SqlValue>) -> Result<Vec<T>> {
        self.db.query(sql, p).await.map_err(store_error)
    }

    async fn one<T: DeserializeOwned>(&self, sql: &str, p: Vec<SqlValue>) -> Result<Option<T>> {
        Ok(self.rows(sql, p).await?.into_iter().next())
    }

    // ---------------------------------------------------------------- VPCs

    async fn vpc_row(&self, scope: &Scope, id: &str) -> Result<VpcRow> {
        self.one::<VpcRow>("SELECT * FROM vpcs WHERE id = $1", params![id])
            .await?
            .filter(|r| scope.sees(&r.org, &r.project))
            .ok_or_else(|| not_found("vpc", id))
    }

    pub async fn create_vpc(
        &self,
        scope: &Scope,
        req: CreateVpc,
        key: Option<&str>,
    ) -> Result<Vpc> {
        let idem = Idempotency::new(scope, "vpc", key, &req)?;
        if let Some(v) = self.replay(idem.as_ref()).await? {
            return Ok(v);
        }
        check_name(&req.name)?;
        let c = cidr("cidr", &req.cidr)?;
        if !(8..=29).contains(&c.prefix_len) {
            return Err(invalid(
                "invalid_cidr",
                "a VPC's prefix length must be 8..=29",
            ));
        }
        let id = new_id();
        let sg = new_id();
        let at = now();
        let vpc = Vpc {
            id: id.clone(),
            org: scope.org.clone(),
            project: scope.project.clone(),
            name: req.name.clone(),
            cidr: c.to_string(),
            default_security_group: sg.clone(),
            created_at: at,
            version: 1,
        };
        let mut statements = vec![
            Statement::with_params(
                "INSERT INTO vpcs (id, org, project, name, cidr, default_sg, created_at, version) VALUES ($1, $2, $3, $4, $5, $6, $7, 1)",
                params![
                    id.as_str(),
                    scope.org.as_str(),
                    scope.project.as_str(),
                    req.name.as_str(),
                    vpc.cidr.as_str(),
                    sg.as_str(),
                    at
                ],
            ),
            Statement::with_params(
                "INSERT INTO sgs (id, org, project, vpc_id, name, is_default, created_at, version) VALUES ($1, $2, $3, $4, 'default', 1, $5, 1)",
                params![
                    sg.as_str(),
                    scope.org.as_str(),
                    scope.project.as_str(),
                    id.as_str(),
                    at
                ],
            ),
        ];
        // Members of the default group reach each other; everything may go out.
        statements.push(rule_insert(
            &sg,
            &new_id(),
            "ingress",
            "any",
            None,
            None,
            None,
            Some(&sg),
            at,
        ));
        statements.push(rule_insert(
            &sg,
            &new_id(),
            "egress",
            "any",
            None,
            None,
            None,
            None,
            at,
        ));
        self.commit_create(statements, idem.as_ref(), vpc)
            .await
            .map_err(CreateError::into_api)
    }

    pub async fn get_vpc(&self, scope: &Scope, id: &str) -> Result<Vpc> {
        Ok(vpc_view(self.vpc_row(scope, id).await?))
    }

    pub async fn list_vpcs(&self, scope: &Scope, q: &PageQuery) -> Result<Page<Vpc>> {
        let mut p = scope.filter_params();
        p.extend(params![q.after(), q.limit() + 1]);
        let rows: Vec<VpcRow> = self
            .rows(
                &format!("SELECT * FROM vpcs WHERE {SCOPED} AND id > $4 ORDER BY id LIMIT $5"),
                p,
            )
            .await?;
        Ok(page(rows, q, |r| r.id.clone(), vpc_view))
    }

    pub async fn update_vpc(&self, scope: &Scope, id: &str, req: UpdateVpc) -> Result<Vpc> {
        let row = self.vpc_row(scope, id).await?;
        check_version(row.version, req.version)?;
        let name = req.name.unwrap_or(row.name.clone());
        check_name(&name)?;
        self.commit(
            guarded(
                "vpcs",
                id,
                row.version,
                vec![Statement::with_params(
                    "UPDATE vpcs SET name = $1, version = version + 1 WHERE id = $2",
                    params![name.as_str(), id],
                )],
            ),
            None,
        )
        .await
        .map_err(store_error)?;
        self.get_vpc(scope, id).await
    }

    pub async fn delete_vpc(&self, scope: &Scope, id: &str) -> Result<()> {
        let row = self.vpc_row(scope, id).await?;
        let r = self
            .commit(
                vec![
                    Statement::with_params(
                        "DELETE FROM sgs WHERE id = $1",
                        params![row.default_sg.as_str()],
                    ),
                    Statement::with_params("DELETE FROM vpcs WHERE id = $1", params![id]),
                ],
                None,
            )
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.sqlstate() == Some("23503") => Err(conflict(
                "vpc_in_use",
                "the VPC still has subnets, routers or security groups (or its default group is referenced); delete them first",
            )),
            Err(e) => Err(store_error(e)),
        }
    }

    // ---------------------------------------------------------------- subnets

    async fn subnet_row(&self, scope: &Scope, id: &str) -> Result<SubnetRow> {
        self.one::<SubnetRow>("SELECT * FROM subnets WHERE id = $1", params![id])
            .await?
            .filter(|r| scope.sees(&r.org, &r.project))
            .ok_or_else(|| not_found("subnet", id))
    }

    pub async fn create_subnet(
        &self,
        scope: &Scope,
        req: CreateSubnet,
        key: Option<&str>,
    ) -> Result<Subnet> {
        let idem = Idempotency::new(scope, "subnet", key, &req)?;
        if let Some(v) = self.replay(idem.as_ref()).await? {
            return Ok(v);
        }
        check_name(&req.name)?;
        let vpc = self.vpc_row(scope, &req.vpc_id).await?;
        let c = cidr("cidr", &req.cidr)?;
        let vpc_cidr = cidr("vpc cidr", &vpc.cidr)?;
        if !vpc_cidr.covers(&c) {
            return Err(invalid(
                "subnet_outside_vpc",
                format!("{c} is not inside the VPC's {vpc_cidr}"),
            ));
        }
        if c.prefix_len > 29 {
            return Err(invalid(
                "invalid_cidr",
                "a subnet's prefix length must be at most 29",
            ));
        }
        let siblings: Vec<SubnetRow> = self
            .rows(
                "SELECT * FROM subnets WHERE vpc_id = $1",
                params![vpc.id.as_str()],
            )
            .await?;
        if let Some(s) = siblings
            .iter()
            .find(|s| Cidr::parse(&s.cidr).is_ok_and(|o| o.overlaps(&c)))
        {
            return Err(conflict(
                "subnet_overlap",
                format!("{c} overlaps subnet {} ({}) of the VPC", s.id, s.cidr),
            ));
        }
        let (lo, hi) = c.usable();
        let gateway = match req.gateway.as_deref() {
            None => Some(Ipv4Addr::from(lo)),
            Some("none") => None,
            Some(g) => {
                let g = ip("gateway", g)?;
                if !c.is_usable(g) {
                    return Err(invalid(
                        "ip_outside_subnet",
                        format!("gateway {g} is not a usable address of {c}"),
                    ));
                }
                Some(g)
            }
        };
        let dhcp = req.dhcp.unwrap_or(true);
        let dhcp_ip = if dhcp {
            Some(
                (lo..=hi)
                    .map(Ipv4Addr::from)
                    .find(|a| Some(*a) != gateway)
                    .ok_or_else(|| {
                        invalid("invalid_cidr", "the subnet has no room for a DHCP server")
                    })?,
            )
        } else {
            None
        };
        let dns = req
            .dns_servers
            .iter()
            .map(|d| ip("dns_servers", d).map(|a| a.to_string()))
            .collect::<Result<Vec<_>>>()?;
        let id = new_id();
        let at = now();
        for _ in 0..ALLOCATION_ATTEMPTS {
            let used: Vec<VniRow> = self.rows("SELECT vni FROM subnets", vec![]).await?;
            let used: HashSet<i64> = used.into_iter().map(|r| r.vni).collect();
            let vni = pick((FIRST_VNI..=MAX_VNI).filter(|v| !used.contains(v)))
                .ok_or_else(|| conflict("vni_exhausted", "no VXLAN network identifier is free"))?;
            let subnet = Subnet {
                id: id.clone(),
                org: scope.org.clone(),
                project: scope.project.clone(),
                vpc_id: vpc.id.clone(),
                name: req.name.clone(),
                cidr: c.to_string(),
                gateway: gateway.map(|g| g.to_string()),
                dhcp,
                dhcp_server_ip: dhcp_ip.map(|d| d.to_string()),
                dns_servers: dns.clone(),
                vni: vni as u32,
                created_at: at,
                version: 1,
            };
            let mut statements = vec![Statement::with_params(
                "INSERT INTO subnets (id, org, project, vpc_id, name, cidr, first, last, gateway, dhcp, dhcp_ip, dns, vni, created_at, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 1)",
                params![
                    id.as_str(),
                    scope.org.as_str(),
                    scope.project.as_str(),
                    vpc.id.as_str(),
                    req.name.as_str(),
                    subnet.cidr.as_str(),
                    i64::from(c.first()),
                    i64::from(c.last()),
                    subnet.gateway.clone(),
                    dhcp,
                    subnet.dhcp_server_ip.clone(),
                    serde_json::to_string(&dns).unwrap_or_default(),
                    vni,
                    at
                ],
            )];
            for (addr, owner) in [(gateway, "gateway"), (dhcp_ip, "dhcp")] {
                if let Some(a) = addr {
                    statements.push(Statement::with_params(
                        "INSERT INTO ip_allocs (subnet_id, ip, owner) VALUES ($1, $2, $3)",
                        params![id.as_str(), i64::from(u32::from(a)), owner],
                    ));
                }
            }
            match self.commit_create(statements, idem.as_ref(), subnet).await {
                Ok(s) => return Ok(s),
                Err(CreateError::Store(e)) if store::violated(&e, "subnets.vni") => continue,
                Err(e) => return Err(e.into_api()),
            }
        }
        Err(ApiError::unavailable(
            "too much contention allocating a VNI; retry",
        ))
    }

    pub async fn get_subnet(&self, scope: &Scope, id: &str) -> Result<Subnet> {
        Ok(subnet_view(self.subnet_row(scope, id).await?))
    }

    pub async fn list_subnets(
        &self,
        scope: &Scope,
        q: &PageQuery,
        vpc_id: Option<&str>,
    ) -> Result<Page<Subnet>> {
        let mut p = scope.filter_params();
        p.extend(params![q.after(), q.limit() + 1, vpc_id.unwrap_or("")]);
        let rows: Vec<SubnetRow> = self
            .rows(
                &format!("SELECT * FROM subnets WHERE {SCOPED} AND id > $4 AND ($6 = '' OR vpc_id = $6) ORDER BY id LIMIT $5"),
                p,
            )
            .await?;
        Ok(page(rows, q, |r| r.id.clone(), subnet_view))
    }

    pub async fn update_subnet(
        &self,
        scope: &Scope,
        id: &str,
        req: UpdateSubnet,
    ) -> Result<Subnet> {
        let row = self.subnet_row(scope, id).await?;
        check_version(row.version, req.version)?;
        let name = req.name.unwrap_or(row.name.clone());
        check_name(&name)?;
        let dns = match req.dns_servers {
            Some(list) => list
                .iter()
                .map(|d| ip("dns_servers", d).map(|a| a.to_string()))
                .collect::<Result<Vec<_>>>()?,
            None => serde_json::from_str(&row.dns).unwrap_or_default(),
        };
        self.commit(
            guarded(
                "subnets",
                id,
                row.version,
                vec![Statement::with_params(
                    "UPDATE subnets SET name = $1, dns = $2, version = version + 1 WHERE id = $3",
                    params![
                        name.as_str(),
                        serde_json::to_string(&dns).unwrap_or_default(),
                        id
                    ],
                )],
            ),
            None,
        )
        .await
        .map_err(store_error)?;
        self.get_subnet(scope, id).await
    }

    pub async fn delete_subnet(&self, scope: &Scope, id: &str) -> Result<()> {
        self.subnet_row(scope, id).await?;
        match self
            .commit(
                vec![Statement::with_params(
                    "DELETE FROM subnets WHERE id = $1",
                    params![id],
                )],
                None,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.sqlstate() == Some("23503") => Err(conflict(
                "subnet_in_use",
                "the subnet still has ports or a router interface; delete them first",
            )),
            Err(e) => Err(store_error(e)),
        }
    }

    // ---------------------------------------------------------------- ports

    async fn port_row(&self, scope: &Scope, id: &str) -> Result<PortRow> {
        self.one::<PortRow>("SELECT * FROM ports WHERE id = $1", params![id])
            .await?
            .filter(|r| scope.sees(&r.org, &r.project))
            .ok_or_else(|| not_found("port", id))
    }

    async fn port_groups(&self, ids: &[String]) -> Result<HashMap<String, Vec<String>>> {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        if ids.is_empty() {
            return Ok(map);
        }
        let (list, p) = in_list(ids, 1);
        let rows: Vec<PortSgRow> = self
            .rows(
                &format!("SELECT * FROM port_sgs WHERE port_id IN ({list}) ORDER BY sg_id"),
                p,
            )
            .await?;
        for r in rows {
            map.entry(r.port_id).or_default().push(r.sg_id);
        }
        Ok(map)
    }

    /// Security groups a port may use: visible to the caller and of the port's VPC.
    async fn check_groups(
        &self,
        scope: &Scope,
        vpc_id: &str,
        groups: &[String],
    ) -> Result<Vec<String>> {
        let set: BTreeSet<String> = groups.iter().cloned().collect();
        for g in &set {
            let row = self.sg_row(scope, g).await?;
            if row.vpc_id != vpc_id {
                return Err(invalid(
                    "wrong_vpc",
                    format!("security group {g} belongs to another VPC"),
                ));
            }
        }
        Ok(set.into_iter().collect())
    }

    pub async fn create_port(
        &self,
        scope: &Scope,
        req: CreatePort,
        key: Option<&str>,
    ) -> Result<Port> {
        let idem = Idempotency::new(scope, "port", key, &req)?;
        if let Some(v) = self.replay(idem.as_ref()).await? {
            return Ok(v);
        }
        check_name(&req.name)?;
        let subnet = self.subnet_row(scope, &req.subnet_id).await?;
        let c = cidr("subnet cidr", &subnet.cidr)?;
        let vpc = self
            .vpc_row(
                &Scope {
                    admin: true,
                    ..scope.clone()
                },
                &subnet.vpc_id,
            )
            .await?;
        let given_mac = req
            .mac
            .as_deref()
            .map(|m| parse_mac(m).map_err(|e| invalid("invalid_mac", e)))
            .transpose()?;
        let mut requested = Vec::new();
        for text in req.ips.iter().flatten() {
            let a = ip("ips", text)?;
            if !c.is_usable(a) {
                return Err(invalid(
                    "ip_outside_subnet",
                    format!("{a} is not a usable address of {c}"),
                ));
            }
            if !requested.contains(&a) {
                requested.push(a);
            }
        }
        let groups = match &req.security_groups {
            Some(g) => self.check_groups(scope, &vpc.id, g).await?,
            None => vec![vpc.default_sg.clone()],
        };
        if let Some(b) = &req.binding {
            check_binding(b)?;
        }
        for o in [&req.device_owner, &req.device_id].into_iter().flatten() {
            check_name(o)?;
        }
        let id = new_id();
        let at = now();
        for _ in 0..ALLOCATION_ATTEMPTS {
            let ips = if requested.is_empty() {
                let used: Vec<IpRow> = self
                    .rows(
                        "SELECT ip FROM ip_allocs WHERE subnet_id = $1",
                        params![subnet.id.as_str()],
                    )
                    .await?;
                let used: HashSet<i64> = used.into_iter().map(|r| r.ip).collect();
                let (lo, hi) = c.usable();
                let free = (i64::from(lo)..=i64::from(hi)).filter(|a| !used.contains(a));
                let a = pick(free).ok_or_else(|| {
                    conflict(
                        "ip_exhausted",
                        format!("subnet {} ({}) has no free address", subnet.id, subnet.cidr),
                    )
                })?;
                vec![Ipv4Addr::from(a as u32)]
            } else {
                requested.clone()
            };
            let mac = given_mac.clone().unwrap_or_else(random_mac);
            let port = Port {
                id: id.clone(),
                org: scope.org.clone(),
                project: scope.project.clone(),
                vpc_id: vpc.id.clone(),
                subnet_id: subnet.id.clone(),
                name: req.name.clone(),
                mac: mac.clone(),
                ips: ips.iter().map(ToString::to_string).collect(),
                security_groups: groups.clone(),
                port_security: req.port_security.unwrap_or(true),
                device_owner: req.device_owner.clone(),
                device_id: req.device_id.clone(),
                binding: req.binding.clone(),
                status: "down".into(),
                device: None,
                migration: None,
                created_at: at,
                version: 1,
            };
            let mut statements = vec![Statement::with_params(
                "INSERT INTO ports (id, org, project, vpc_id, subnet_id, name, mac, ips, port_security, device_owner, device_id, host, attachment, status, device, created_at, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'down', NULL, $14, 1)",
                params![
                    id.as_str(),
                    scope.org.as_str(),
                    scope.project.as_str(),
                    vpc.id.as_str(),
                    subnet.id.as_str(),
                    req.name.as_str(),
                    mac.as_str(),
                    serde_json::to_string(&port.ips).unwrap_or_default(),
                    port.port_security,
                    req.device_owner.clone(),
                    req.device_id.clone(),
                    req.binding.as_ref().map(|b| b.host.clone()),
                    req.binding.as_ref().map(|b| b.attachment.clone()),
                    at
                ],
            )];
            for a in &ips {
                statements.push(Statement::with_params(
                    "INSERT INTO ip_allocs (subnet_id, ip, owner) VALUES ($1, $2, $3)",
                    params![subnet.id.as_str(), i64::from(u32::from(*a)), id.as_str()],
                ));
            }
            for g in &groups {
                statements.push(Statement::with_params(
                    "INSERT INTO port_sgs (port_id, sg_id) VALUES ($1, $2)",
                    params![id.as_str(), g.as_str()],
                ));
            }
            match self.commit_create(statements, idem.as_ref(), port).await {
                Ok(p) => return Ok(p),
                Err(CreateError::Store(e)) if store::violated(&e, "ip_allocs.") => {
                    if !requested.is_empty() {
                        return Err(conflict(
                            "ip_in_use",
                            "a requested address is already in use in the subnet",
                        ));
                    }
                }
                Err(CreateError::Store(e)) if store::violated(&e, "ports.mac") => {
                    if given_mac.is_some() {
                        return Err(conflict(
                            "mac_in_use",
                            "the MAC address is already used by another port",
                        ));
                    }
                }
                Err(e) => return Err(e.into_api()),
            }
        }
        Err(ApiError::unavailable(
            "too much contention allocating an address; retry",
        ))
    }

    pub async fn get_port(&self, scope: &Scope, id: &str) -> Result<Port> {
        let row = self.port_row(scope, id).await?;
        let ids = std::slice::from_ref(&row.id);
        let mut groups = self.port_groups(ids).await?;
        let mut migrations = self.port_migrations(ids).await?;
        let g = groups.remove(&row.id).unwrap_or_default();
        let m = migrations.remove(&row.id);
        Ok(port_view(row, g, m))
    }

    async fn port_migrations(&self, ids: &[String]) -> Result<HashMap<String, PortMigrationRow>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let (list, p) = in_list(ids, 1);
        let rows: Vec<PortMigrationRow> = self
            .rows(
                &format!("SELECT * FROM port_migrations WHERE port_id IN ({list})"),
                p,
            )
            .await?;
        Ok(rows.into_iter().map(|r| (r.port_id.clone(), r)).collect())
    }

    pub async fn list_ports(
        &self,
        scope: &Scope,
        q: &PageQuery,
        filter: &PortFilter,
    ) -> Result<Page<Port>> {
        let mut p = scope.filter_params();
        p.extend(params![
            q.after(),
            q.limit() + 1,
            filter.subnet_id.as_deref().unwrap_or(""),
            filter.device_id.as_deref().unwrap_or(""),
            filter.host.as_deref().unwrap_or("")
        ]);
        let rows: Vec<PortRow> = self
            .rows(
                &format!(
                    "SELECT * FROM ports WHERE {SCOPED} AND id > $4 AND ($6 = '' OR subnet_id = $6) AND ($7 = '' OR device_id = $7) AND ($8 = '' OR host = $8) ORDER BY id LIMIT $5"
                ),
                p,
            )
            .await?;
        let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        let mut groups = self.port_groups(&ids).await?;
        let mut migrations = self.port_migrations(&ids).await?;
        Ok(page(
            rows,
            q,
            |r| r.id.clone(),
            |r| {
                let g = groups.remove(&r.id).unwrap_or_default();
                let m = migrations.remove(&r.id);
                port_view(r, g, m)
            },
        ))
    }

    pub async fn update_port(&self, scope: &Scope, id: &str, req: UpdatePort) -> Result<Port> {
        let row = self.port_row(scope, id).await?;
        check_version(row.version, req.version)?;
        let name = req.name.clone().unwrap_or(row.name.clone());
        check_name(&name)?;
        if let Some(b) = &req.binding {
            check_binding(b)?;
            if req.unbind {
                return Err(invalid(
                    "invalid_argument",
                    "give `binding` or `unbind`, not both",
                ));
            }
        }
        let (host, attachment) = if req.unbind {
            (None, None)
        } else if let Some(b) = &req.binding {
            // The API shows both tap names as `tap`: binding a port again as it is bound keeps
            // the tap (and the QEMU that holds it) in place.
            let same_tap = b.attachment == TAP
                && row.host.as_deref() == Some(b.host.as_str())
                && row.attachment.as_deref().is_some_and(is_tap);
            if same_tap {
                (row.host.clone(), row.attachment.clone())
            } else {
                (Some(b.host.clone()), Some(b.attachment.clone()))
            }
        } else {
            (row.host.clone(), row.attachment.clone())
        };
        let rebound = host != row.host || attachment != row.attachment;
        let mut statements = vec![Statement::with_params(
            "UPDATE ports SET name = $1, port_security = $2, device_owner = $3, device_id = $4, host = $5, attachment = $6, \
             status = CASE WHEN $7 = 1 THEN 'down' ELSE status END, device = CASE WHEN $7 = 1 THEN NULL ELSE device END, \
             version = version + 1 WHERE id = $8",
            params![
                name.as_str(),
                req.port_security.unwrap_or(row.port_security != 0),
                req.device_owner.clone().or(row.device_owner.clone()),
                req.device_id.clone().or(row.device_id.clone()),
                host,
                attachment,
                rebound,
                id
            ],
        )];
        if rebound {
            // A pending migration's destination belongs to the binding it was set up next to.
            statements.push(Statement::with_params(
                "DELETE FROM port_migrations WHERE port_id = $1",
                params![id],
            ));
        }
        if let Some(g) = &req.security_groups {
            let groups = self.check_groups(scope, &row.vpc_id, g).await?;
            statements.push(Statement::with_params(
                "DELETE FROM port_sgs WHERE port_id = $1",
                params![id],
            ));
            for g in &groups {
                statements.push(Statement::with_params(
                    "INSERT INTO port_sgs (port_id, sg_id) VALUES ($1, $2)",
                    params![id, g.as_str()],
                ));
            }
        }
        self.commit(guarded("ports", id, row.version, statements), None)
            .await
            .map_err(store_error)?;
        self.get_port(scope, id).await
    }

    pub async fn delete_port(&self, scope: &Scope, id: &str) -> Result<()> {
        let row = self.port_row(scope, id).await?;
        self.commit(
            vec![
                Statement::with_params(
                    "UPDATE fips SET port_id = NULL, version = version + 1 WHERE port_id = $1",
                    params![id],
                ),
                Statement::with_params(
                    "DELETE FROM ip_allocs WHERE subnet_id = $1 AND owner = $2",
                    params![row.subnet_id.as_str(), id],
                ),
                Statement::with_params(
                    "DELETE FROM port_migrations WHERE port_id = $1",
                    params![id],
                ),
                Statement::with_params("DELETE FROM ports WHERE id = $1", params![id]),
            ],
            None,
        )
        .await
        .map_err(store_error)?;
        Ok(())
    }

    /// Sets up the port's migration binding on `req.host` (idempotent for the same host).
    pub async fn set_port_migration(&self, scope: &Scope, id: &str, req: Binding) -> Result<Port> {
        check_binding(&req)?;
        if req.attachment != TAP {
            return Err(invalid(
                "invalid_binding",
                "a migration binding is a `tap` (only VMs migrate)",
            ));
        }
        let row = self.port_row(scope, id).await?;
        let Some(attachment) = row.attachment.as_deref().filter(|a| is_tap(a)) else {
            return Err(conflict(
                "not_bound_as_tap",
                format!("port {id} is not bound as a tap; there is nothing to migrate"),
            ));
        };
        if let Some(m) = self
            .port_migrations(std::slice::from_ref(&row.id))
            .await?
            .remove(id)
        {
            if m.host == req.host {
                return self.get_port(scope, id).await;
            }
            return Err(conflict(
                "migration_pending",
                format!("port {id} is already migrating to host {}", m.host),
            ));
        }
        // The other tap name than the source's, so both devices can live on one host.
        let other = if attachment == TAP {
            TAP_ALTERNATE
        } else {
            TAP
        };
        let statements = vec![Statement::with_params(
            "INSERT INTO port_migrations (port_id, host, attachment, status, device, created_at) VALUES ($1, $2, $3, 'down', NULL, $4)",
            params![id, req.host.as_str(), other, now()],
        )];
        match self
            .commit(guarded("ports", id, row.version, statements), None)
            .await
        {
            Ok(_) => {}
            // Two racing requests: the row exists now; answer as for a repeat.
            Err(e) if store::violated(&e, "port_migrations.") => {}
            Err(e) => return Err(store_error(e)),
        }
        let port = self.get_port(scope, id).await?;
        match &port.migration {
            Some(m) if m.host == req.host => Ok(port),
            _ => Err(conflict(
                "migration_pending",
                format!("port {id} changed while its migration binding was set up; retry"),
            )),
        }
    }

    /// Drops the port's migration binding (the migration failed or was abandoned).
    pub async fn cancel_port_migration(&self, scope: &Scope, id: &str) -> Result<()> {
        let row = self.port_row(scope, id).await?;
        self.commit(
            vec![Statement::with_params(
                "DELETE FROM port_migrations WHERE port_id = $1",
                params![row.id.as_str()],
            )],
            None,
        )
        .await
        .map_err(store_error)?;
        Ok(())
    }

    /// Makes the migration binding the port's binding (the VM now runs on the destination);
    /// the source host's agent then removes the old device.
    pub async fn activate_port_migration(&self, scope: &Scope, id: &str) -> Result<Port> {
        let row = self.port_row(scope, id).await?;
        let Some(m) = self
            .port_migrations(std::slice::from_ref(&row.id))
            .await?
            .remove(id)
        else {
            return Err(conflict(
                "no_migration",
                format!("port {id} has no migration binding to activate"),
            ));
        };
        let statements = vec![
            Statement::with_params(
                "UPDATE ports SET host = $1, attachment = $2, status = $3, device = $4, version = version + 1 WHERE id = $5",
                params![
                    m.host.as_str(),
                    m.attachment.as_str(),
                    m.status.as_str(),
                    m.device.clone(),
                    id
                ],
            ),
            Statement::with_params(
                "DELETE FROM port_migrations WHERE port_id = $1",
                params![id],
            ),
        ];
        self.commit(guarded("ports", id, row.version, statements), None)
            .await
            .map_err(store_error)?;
        self.get_port(scope, id).await
    }

    // ---------------------------------------------------------------- security groups

    async fn sg_row(&self, scope: &Scope, id: &str) -> Result<SgRow> {
        self.one::<SgRow>("SELECT * FROM sgs WHERE id = $1", params![id])
            .await?
            .filter(|r| scope.sees(&r.org, &r.project))
            .ok_or_else(|| not_found("security group", id))
    }

    async fn check_rule(
        &self,
        scope: &Scope,
        vpc_id: &str,
        self_id: &str,
        r: &CreateRule,
    ) -> Result<()> {
        if !matches!(r.direction.as_str(), "ingress" | "egress") {
            return Err(invalid(
                "invalid_rule",
                "direction must be ingress or egress",
            ));
        }
        if !matches!(r.protocol.as_str(), "any" | "tcp" | "udp" | "icmp") {
            return Err(invalid(
                "invalid_rule",
                "protocol must be any, tcp, udp or icmp",
            ));
        }
        let ports = r.port_min.is_some() || r.port_max.is_some();
        if ports && !matches!(r.protocol.as_str(), "tcp" | "udp") {
            return Err(invalid(
                "invalid_rule",
                "port ranges need protocol tcp or udp",
            ));
        }
        let (lo, hi) = (r.port_min.or(r.port_max), r.port_max.or(r.port_min));
        if let (Some(lo), Some(hi)) = (lo, hi)
            && (lo == 0 || lo > hi)
        {
            return Err(invalid(
                "invalid_rule",
                "port range must satisfy 1 <= port_min <= port_max",
            ));
        }
        if r.remote_cidr.is_some() && r.remote_group.is_some() {
            return Err(invalid(
                "invalid_rule",
                "give remote_cidr or remote_group, not both",
            ));
        }
        if let Some(c) = &r.remote_cidr {
            cidr("remote_cidr", c)?;
        }
        if let Some(g) = &r.remote_group
            && g != self_id
        {
            let row = self.sg_row(scope, g).await?;
            if row.vpc_id != vpc_id {
                return Err(invalid("wrong_vpc", "remote_group belongs to another VPC"));
            }
        }
        Ok(())
    }

    async fn rules_of(&self, ids: &[String]) -> Result<HashMap<String, Vec<Rule>>> {
        let mut map: HashMap<String, Vec<Rule>> = HashMap::new();
        if ids.is_empty() {
            return Ok(map);
        }
        let (list, p) = in_list(ids, 1);
        let rows: Vec<RuleRow> = self
            .rows(
                &format!("SELECT * FROM sg_rules WHERE sg_id IN ({list}) ORDER BY created_at, id"),
                p,
            )
            .await?;
        for r in rows {
            map.entry(r.sg_id.clone()).or_default().push(rule_view(r));
        }
        Ok(map)
    }

    pub async fn create_sg(
        &self,
        scope: &Scope,
        req: CreateSecurityGroup,
        key: Option<&str>,
    ) -> Result<SecurityGroup> {
        let idem = Idempotency::new(scope, "sg", key, &req)?;
        if let Some(v) = self.replay(idem.as_ref()).await? {
            return Ok(v);
        }
        check_name(&req.name)?;
        let vpc = self.vpc_row(scope, &req.vpc_id).await?;
        let id = new_id();
        for r in &req.rules {
            self.check_rule(scope, &vpc.id, &id, r).await?;
        }
        let at = now();
        let mut statements = vec![Statement::with_params(
            "INSERT INTO sgs (id, org, project, vpc_id, name, is_default, created_at, version) VALUES ($1, $2, $3, $4, $5, 0, $6, 1)",
            params![
                id.as_str(),
                scope.org.as_str(),
                scope.project.as_str(),
                vpc.id.as_str(),
                req.name.as_str(),
                at
            ],
        )];
        let mut rules = Vec::new();
        for r in &req.rules {
            let rid = new_id();
            statements.push(rule_insert(
                &id,
                &rid,
                &r.direction,
                &r.protocol,
                r.port_min.or(r.port_max),
                r.port_max.or(r.port_min),
                r.remote_cidr.as_deref(),
                r.remote_group.as_deref(),
                at,
            ));
            rules.push(created_rule(rid, r));
        }
        let sg = SecurityGroup {
            id: id.clone(),
            org: scope.org.clone(),
            project: scope.project.clone(),
            vpc_id: vpc.id,
            name: req.name.clone(),
            is_default: false,
            rules,
            created_at: at,
            version: 1,
        };
        self.commit_create(statements, idem.as_ref(), sg)
            .await
            .map_err(CreateError::into_api)
    }

    pub async fn get_sg(&self, scope: &Scope, id: &str) -> Result<SecurityGroup> {
        let row = self.sg_row(scope, id).await?;
        let mut rules = self.rules_of(std::slice::from_ref(&row.id)).await?;
        let r = rules.remove(&row.id).unwrap_or_default();
        Ok(sg_view(row, r))
    }

    pub async fn list_sgs(
        &self,
        scope: &Scope,
        q: &PageQuery,
        vpc_id: Option<&str>,
    ) -> Result<Page<SecurityGroup>> {
        let mut p = scope.filter_params();
        p.extend(params![q.after(), q.limit() + 1, vpc_id.unwrap_or("")]);
        let rows: Vec<SgRow> = self
            .rows(
                &format!("SELECT * FROM sgs WHERE {SCOPED} AND id > $4 AND ($6 = '' OR vpc_id = $6) ORDER BY id LIMIT $5"),
                p,
            )
            .await?;
        let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        let mut rules = self.rules_of(&ids).await?;
        Ok(page(
            rows,
            q,
            |r| r.id.clone(),
            |r| {
                let x = rules.remove(&r.id).unwrap_or_default();
                sg_view(r, x)
            },
        ))
    }

    pub async fn delete_sg(&self, scope: &Scope, id: &str) -> Result<()> {
        let row = self.sg_row(scope, id).await?;
        if row.is_default != 0 {
            return Err(conflict(
                "default_group",
                "a VPC's default group goes with its VPC",
            ));
        }
        match self
            .commit(
                vec![Statement::with_params(
                    "DELETE FROM sgs WHERE id = $1",
                    params![id],
                )],
                None,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.sqlstate() == Some("23503") => Err(conflict(
                "sg_in_use",
                "the security group is used by ports or referenced by other groups' rules",
            )),
            Err(e) => Err(store_error(e)),
        }
    }

    pub async fn add_rule(&self, scope: &Scope, sg_id: &str, req: CreateRule) -> Result<Rule> {
        let row = self.sg_row(scope, sg_id).await?;
        self.check_rule(scope, &row.vpc_id, sg_id, &req).await?;
        let rid = new_id();
        self.commit(
            vec![
                rule_insert(
                    sg_id,
                    &rid,
                    &req.direction,
                    &req.protocol,
                    req.port_min.or(req.port_max),
                    req.port_max.or(req.port_min),
                    req.remote_cidr.as_deref(),
                    req.remote_group.as_deref(),
                    now(),
                ),
                Statement::with_params(
                    "UPDATE sgs SET version = version + 1 WHERE id = $1",
                    params![sg_id],
                ),
            ],
            None,
        )
        .await
        .map_err(store_error)?;
        Ok(created_rule(rid, &req))
    }

    pub async fn delete_rule(&self, scope: &Scope, sg_id: &str, rule_id: &str) -> Result<()> {
        self.sg_row(scope, sg_id).await?;
        let r = self
            .commit(
                vec![
                    Statement::with_params(
                        "DELETE FROM sg_rules WHERE id = $1 AND sg_id = $2",
                        params![rule_id, sg_id],
                    ),
                    Statement::with_params(
                        "UPDATE sgs SET version = version + 1 WHERE id = $1",
                        params![sg_id],
                    ),
                ],
                None,
            )
            .await
            .map_err(store_error)?;
        if r.first().map_or(0, |x| x.rows_affected) == 0 {
            return Err(not_found("rule", rule_id));
        }
        Ok(())
    }

    // ---------------------------------------------------------------- pools

    async fn pool_row(&self, id_or_name: &str) -> Result<PoolRow> {
        self.one::<PoolRow>(
            "SELECT * FROM pools WHERE id = $1 OR name = $1",
            params![id_or_name],
        )
        .await?
        .ok_or_else(|| not_found("pool", id_or_name))
    }

    pub async fn create_pool(
        &self,
        caller: &Scope,
        req: CreatePool,
        key: Option<&str>,
    ) -> Result<Pool> {
        if !caller.admin {
            return Err(ApiError::permission_denied(
                "address pools are the operator's",
            ));
        }
        let idem = Idempotency::new(caller, "pool", key, &req)?;
        if let Some(v) = self.replay(idem.as_ref()).await? {
            return Ok(v);
        }
        check_name(&req.name)?;
        if req.name.is_empty() {
            return Err(invalid("invalid_name", "a pool needs a name"));
        }
        let c = cidr("cidr", &req.cidr)?;
        if !matches!(req.kind.as_str(), "external" | "service") {
            return Err(invalid("invalid_kind", "kind must be external or service"));
        }
        let gateway = match &req.gateway {
            Some(g) => {
                let g = ip("gateway", g)?;
                if !c.is_usable(g) {
                    return Err(invalid(
                        "ip_outside_subnet",
                        format!("gateway {g} is not a usable address of {c}"),
                    ));
                }
                Some(g.to_string())
            }
            None => None,
        };
        let pool = Pool {
            id: new_id(),
            name: req.name.clone(),
            cidr: c.to_string(),
            kind: req.kind.clone(),
            gateway,
            created_at: now(),
        };
        self.commit_create(
            vec![Statement::with_params(
                "INSERT INTO pools (id, name, cidr, kind, gateway, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
                params![pool.id.as_str(), pool.name.as_str(), pool.cidr.as_str(), pool.kind.as_str(), pool.gateway.clone(), pool.created_at],
            )],
            idem.as_ref(),
            pool,
        )
        .await
        .map_err(CreateError::into_api)
    }

    pub async fn get_pool(&self, id: &str) -> Result<Pool> {
        Ok(pool_view(self.pool_row(id).await?))
    }

    pub async fn list_pools(&self, q: &PageQuery) -> Result<Page<Pool>> {
        let rows: Vec<PoolRow> = self
            .rows(
                "SELECT * FROM pools WHERE id > $1 ORDER BY id LIMIT $2",
                params![q.after(), q.limit() + 1],
            )
            .await?;
        Ok(page(rows, q, |r| r.id.clone(), pool_view))
    }

    pub async fn delete_pool(&self, caller: &Scope, id: &str) -> Result<()> {
        if !caller.admin {
            return Err(ApiError::permission_denied(
                "address pools are the operator's",
            ));
        }
        let row = self.pool_row(id).await?;
        match self
            .commit(
                vec![Statement::with_params(
                    "DELETE FROM pools WHERE id = $1",
                    params![row.id.as_str()],
                )],
                None,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.sqlstate() == Some("23503") => Err(conflict(
                "pool_in_use",
                "the pool still has allocated addresses",
            )),
            Err(e) => Err(store_error(e)),
        }
    }

    /// Statements allocating one address of a pool to an owner; retried by the caller on a
    /// `pool_allocs` conflict when the address was picked here.
    async fn pool_candidate(
        &self,
        pool: &PoolRow,
        requested: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr> {
        let c = cidr("pool cidr", &pool.cidr)?;
        let gateway = pool
            .gateway
            .as_deref()
            .and_then(|g| g.parse::<Ipv4Addr>().ok());
        if let Some(a) = requested {
            if !c.is_usable(a) || Some(a) == gateway {
                return Err(invalid(
                    "ip_outside_pool",
                    format!("{a} is not an allocatable address of {}", pool.cidr),
                ));
            }
            return Ok(a);
        }
        let used: Vec<IpRow> = self
            .rows(
                "SELECT ip FROM pool_allocs WHERE pool_id = $1",
                params![pool.id.as_str()],
            )
            .await?;
        let mut used: HashSet<i64> = used.into_iter().map(|r| r.ip).collect();
        if let Some(g) = gateway {
            used.insert(i64::from(u32::from(g)));
        }
        let (lo, hi) = c.usable();
        pick((i64::from(lo)..=i64::from(hi)).filter(|a| !used.contains(a)))
            .map(|a| Ipv4Addr::from(a as u32))
            .ok_or_else(|| {
                conflict(
                    "pool_exhausted",
                    format!("pool {} has no free address", pool.name),
                )
            })
    }

    /// Commits what `build` makes of a pool address (picked here, or `requested`), picking
    /// again when a concurrent request took the address first.
    async fn with_pool_address<T, F>(
        &self,
        pool: &PoolRow,
        requested: Option<Ipv4Addr>,
        idem: Option<&Idempotency>,
        build: F,
    ) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
        F: Fn(Ipv4Addr) -> (Vec<Statement>, T),
    {
        for _ in 0..ALLOCATION_ATTEMPTS {
            let a = self.pool_candidate(pool, requested).await?;
            let (statements, result) = build(a);
            match self.commit_create(statements, idem, result).await {
                Ok(v) => return Ok(v),
                Err(CreateError::Store(e)) if store::violated(&e, "pool_allocs.") => {
                    if requested.is_some() {
                        return Err(conflict("ip_in_use", format!("{a} is already allocated")));
                    }
                }
                Err(e) => return Err(e.into_api()),
            }
        }
        Err(ApiError::unavailable(
            "too much contention allocating an address; retry",
        ))
    }

    pub async fn allocate(
        &self,
        scope: &Scope,
        pool_id: &str,
        req: Allocate,
        key: Option<&str>,
    ) -> Result<PoolAllocation> {
        let idem = Idempotency::new(scope, &format!("alloc/{pool_id}"), key, &req)?;
        if let Some(v) = self.replay(idem.as_ref()).await? {
            return Ok(v);
        }
        let pool = self.pool_row(pool_id).await?;
        if pool.kind != "service" {
            return Err(invalid(
                "wrong_pool_kind",
                "VIPs come from service pools; external pools serve routers and floating IPs",
            ));
        }
        let requested = req.ip.as_deref().map(|t| ip("ip", t)).transpose()?;
        let owner = req.owner.clone().unwrap_or_default();
        check_name(&owner)?;
        let at = now();
        self.with_pool_address(&pool, requested, idem.as_ref(), |a| {
            let alloc = PoolAllocation {
                pool_id: pool.id.clone(),
                ip: a.to_string(),
                owner_kind: "vip".into(),
                owner_id: owner.clone(),
                org: scope.org.clone(),
                project: scope.project.clone(),
                created_at: at,
            };
            (
                vec![pool_alloc_insert(&pool.id, a, "vip", &owner, scope, at)],
                alloc,
            )
        })
        .await
    }

    pub async fn list_allocations(
        &self,
        scope: &Scope,
        pool_id: &str,
        q: &PageQuery,
    ) -> Result<Page<PoolAllocation>> {
        let pool = self.pool_row(pool_id).await?;
        let mut p = scope.filter_params();
        let after: i64 = q
            .page_token
            .as_deref()
            .and_then(|t| t.parse().ok())
            .unwrap_or(-1);
        p.extend(params![after, q.limit() + 1, pool.id.as_str()]);
        let rows: Vec<PoolAllocRow> = self
            .rows(&format!("SELECT * FROM pool_allocs WHERE {SCOPED} AND ip > $4 AND pool_id = $6 ORDER BY ip LIMIT $5"), p)
            .await?;
        Ok(page(rows, q, |r| r.ip.to_string(), alloc_view))
    }

    pub async fn release(&self, scope: &Scope, pool_id: &str, address: &str) -> Result<()> {
        let pool = self.pool_row(pool_id).await?;
        let a = ip("ip", address)?;
        let row: Option<PoolAllocRow> = self
            .one(
                "SELECT * FROM pool_allocs WHERE pool_id = $1 AND ip = $2",
                params![pool.id.as_str(), i64::from(u32::from(a))],
            )
            .await?;
        let row = row
            .filter(|r| scope.sees(&r.org, &r.project))
            .ok_or_else(|| not_found("allocation", address))?;
        if row.owner_kind != "vip" {
            return Err(conflict(
                "in_use",
                format!(
                    "{address} belongs to a {}; release it there",
                    row.owner_kind
                ),
            ));
        }
        self.commit(
            vec![Statement::with_params(
                "DELETE FROM pool_allocs WHERE pool_id = $1 AND ip = $2",
                params![pool.id.as_str(), row.ip],
            )],
            None,
        )
        .await
        .map_err(store_error)?;
        Ok(())
    }

    // ---------------------------------------------------------------- routers

    async fn router_row(&self, scope: &Scope, id: &str) -> Result<RouterRow> {
        self.one::<RouterRow>("SELECT * FROM routers WHERE id = $1", params![id])
            .await?
            .filter(|r| scope.sees(&r.org, &r.project))
            .ok_or_else(|| not_found("router", id))
    }

    async fn external_pool(&self, pool: &str) -> Result<PoolRow> {
        let p = self.pool_row(pool).await?;
        if p.kind != "external" {
            return Err(invalid(
                "wrong_pool_kind",
                "router gateways and floating IPs come from external pools",
            ));
        }
        Ok(p)
    }

    pub async fn create_router(
        &self,
        scope: &Scope,
        req: CreateRouter,
        key: Option<&str>,
    ) -> Result<Router> {
        let idem = Idempotency::new(scope, "router", key, &req)?;
        if let Some(v) = self.replay(idem.as_ref()).await? {
            return Ok(v);
        }
        check_name(&req.name)?;
        let vpc = self.vpc_row(scope, &req.vpc_id).await?;
        let host = req
            .host
            .clone()
            .unwrap_or_else(|| self.default_router_host.clone());
        check_host(&host)?;
        let id = new_id();
        let at = now();
        let insert = |ext: Option<(&str, Ipv4Addr, bool)>| {
            Statement::with_params(
                "INSERT INTO routers (id, org, project, vpc_id, name, host, ext_pool, ext_ip, snat, created_at, version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1)",
                params![
                    id.as_str(),
                    scope.org.as_str(),
                    scope.project.as_str(),
                    vpc.id.as_str(),
                    req.name.as_str(),
                    host.as_str(),
                    ext.map(|e| e.0.to_owned()),
                    ext.map(|e| e.1.to_string()),
                    ext.is_none_or(|e| e.2),
                    at
                ],
            )
        };
        let router = |ext: Option<ExternalGateway>| Router {
            id: id.clone(),
            org: scope.org.clone(),
            project: scope.project.clone(),
            vpc_id: vpc.id.clone(),
            name: req.name.clone(),
            host: host.clone(),
            interfaces: Vec::new(),
            external: ext,
            created_at: at,
            version: 1,
        };
        match &req.external {
            None => self
                .commit_create(vec![insert(None)], idem.as_ref(), router(None))
                .await
                .map_err(CreateError::into_api),
            Some(ext) => {
                let pool = self.external_pool(&ext.pool).await?;
                let snat = ext.snat.unwrap_or(true);
                self.with_pool_address(&pool, None, idem.as_ref(), |a| {
                    let statements = vec![
                        insert(Some((&pool.id, a, snat))),
                        pool_alloc_insert(&pool.id, a, "router", &id, scope, at),
                    ];
                    let r = router(Some(ExternalGateway {
                        pool_id: pool.id.clone(),
                        ip: a.to_string(),
                        snat,
                    }));
                    (statements, r)
                })
                .await
            }
        }
    }

    async fn ifaces_of(&self, ids: &[String]) -> Result<HashMap<String, Vec<RouterInterface>>> {
        let mut map: HashMap<String, Vec<RouterInterface>> = HashMap::new();
        if ids.is_empty() {
            return Ok(map);
        }
        let (list, p) = in_list(ids, 1);
        let rows: Vec<IfaceRow> = self
            .rows(
                &format!(
                    "SELECT * FROM router_ifaces WHERE router_id IN ({list}) ORDER BY subnet_id"
                ),
                p,
            )
            .await?;
        for r in rows {
            map.entry(r.router_id.clone())
                .or_default()
                .push(RouterInterface {
                    subnet_id: r.subnet_id,
                    ip: r.ip,
                    mac: r.mac,
                });
        }
        Ok(map)
    }

    pub async fn get_router(&self, scope: &Scope, id: &str) -> Result<Router> {
        let row = self.router_row(scope, id).await?;
        let mut i = self.ifaces_of(std::slice::from_ref(&row.id)).await?;
        let x = i.remove(&row.id).unwrap_or_default();
        Ok(router_view(row, x))
    }

    pub async fn list_routers(&self, scope: &Scope, q: &PageQuery) -> Result<Page<Router>> {
        let mut p = scope.filter_params();
        p.extend(params![q.after(), q.limit() + 1]);
        let rows: Vec<RouterRow> = self
            .rows(
                &format!("SELECT * FROM routers WHERE {SCOPED} AND id > $4 ORDER BY id LIMIT $5"),
                p,
            )
            .await?;
        let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        let mut i = self.ifaces_of(&ids).await?;
        Ok(page(
            rows,
            q,
            |r| r.id.clone(),
            |r| {
                let x = i.remove(&r.id).unwrap_or_default();
                router_view(r, x)
            },
        ))
    }

    pub async fn update_router(
        &self,
        scope: &Scope,
        id: &str,
        req: UpdateRouter,
    ) -> Result<Router> {
        let row = self.router_row(scope, id).await?;
        check_version(row.version, req.version)?;
        let name = req.name.clone().unwrap_or(row.name.clone());
        check_name(&name)?;
        if req.clear_external && req.external.is_some() {
            return Err(invalid(
                "invalid_argument",
                "give `external` or `clear_external`, not both",
            ));
        }
        let release_old = || -> Vec<Statement> {
            match (&row.ext_pool, &row.ext_ip) {
                (Some(p), Some(a)) => vec![Statement::with_params(
                    "DELETE FROM pool_allocs WHERE pool_id = $1 AND ip = $2 AND owner_kind = 'router'",
                    params![
                        p.as_str(),
                        a.parse::<Ipv4Addr>()
                            .map(|a| i64::from(u32::from(a)))
                            .unwrap_or(-1)
                    ],
                )],
                _ => Vec::new(),
            }
        };
        let update = |ext: Option<(&str, String, bool)>| {
            Statement::with_params(
                "UPDATE routers SET name = $1, ext_pool = $2, ext_ip = $3, snat = $4, version = version + 1 WHERE id = $5",
                params![
                    name.as_str(),
                    ext.as_ref().map(|e| e.0.to_owned()),
                    ext.as_ref().map(|e| e.1.clone()),
                    ext.as_ref().is_none_or(|e| e.2),
                    id
                ],
            )
        };
        if let Some(ext) = &req.external {
            let pool = self.external_pool(&ext.pool).await?;
            let snat = ext.snat.unwrap_or(true);
            if row.ext_pool.as_deref() == Some(pool.id.as_str()) {
                // Same pool: keep the address, only SNAT may change.
                self.commit(
                    guarded(
                        "routers",
                        id,
                        row.version,
                        vec![update(Some((
                            &pool.id,
                            row.ext_ip.clone().unwrap_or_default(),
                            snat,
                        )))],
                    ),
                    None,
                )
                .await
                .map_err(store_error)?;
            } else {
                let at = now();
                self.with_pool_address(&pool, None, None, |a| {
                    let mut statements = vec![update(Some((&pool.id, a.to_string(), snat)))];
                    statements.extend(release_old());
                    statements.push(pool_alloc_insert(&pool.id, a, "router", id, scope, at));
                    (guarded("routers", id, row.version, statements), ())
                })
                .await?;
            }
        } else {
            let ext = if req.clear_external {
                None
            } else {
                row.ext_pool
                    .as_deref()
                    .zip(row.ext_ip.clone())
                    .map(|(p, a)| (p, a, row.snat != 0))
            };
            let mut statements = vec![update(ext)];
            if req.clear_external {
                statements.extend(release_old());
            }
            self.commit(guarded("routers", id, row.version, statements), None)
                .await
                .map_err(store_error)?;
        }
        self.get_router(scope, id).await
    }

    pub async fn delete_router(&self, scope: &Scope, id: &str) -> Result<()> {
        let row = self.router_row(scope, id).await?;
        let mut statements = Vec::new();
        if let (Some(p), Some(a)) = (&row.ext_pool, &row.ext_ip) {
            statements.push(Statement::with_params(
                "DELETE FROM pool_allocs WHERE pool_id = $1 AND ip = $2 AND owner_kind = 'router'",
                params![
                    p.as_str(),
                    a.parse::<Ipv4Addr>()
                        .map(|a| i64::from(u32::from(a)))
                        .unwrap_or(-1)
                ],
            ));
        }
        statements.push(Statement::with_params(
            "DELETE FROM routers WHERE id = $1",
            params![id],
        ));
        match self.commit(statements, None).await {
            Ok(_) => Ok(()),
            Err(e) if e.sqlstate() == Some("23503") => Err(conflict(
                "router_in_use",
                "the router still has interfaces; remove them first",
            )),
            Err(e) => Err(store_error(e)),
        }
    }

    pub async fn add_interface(
        &self,
        scope: &Scope,
        router_id: &str,
        req: AddInterface,
    ) -> Result<Router> {
        let row = self.router_row(scope, router_id).await?;
        let subnet = self.subnet_row(scope, &req.subnet_id).await?;
        if subnet.vpc_id != row.vpc_id {
            return Err(invalid("wrong_vpc", "the subnet belongs to another VPC"));
        }
        let Some(gw) = subnet.gateway.clone() else {
            return Err(invalid(
                "no_gateway",
                "the subnet has no gateway address for the router to take",
            ));
        };
        let mac = derived_mac(&format!("{router_id}/{}", subnet.id));
        match self
            .commit(
                vec![
                    Statement::with_params(
                        "INSERT INTO router_ifaces (router_id, subnet_id, ip, mac) VALUES ($1, $2, $3, $4)",
                        params![router_id, subnet.id.as_str(), gw.as_str(), mac.as_str()],
                    ),
                    Statement::with_params("UPDATE routers SET version = version + 1 WHERE id = $1", params![router_id]),
                ],
                None,
            )
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_unique_violation() => {
                return Err(conflict("subnet_attached", "the subnet is already attached to a router"));
            }
            Err(e) => return Err(store_error(e)),
        }
        self.get_router(scope, router_id).await
    }

    pub async fn remove_interface(
        &self,
        scope: &Scope,
        router_id: &str,
        subnet_id: &str,
    ) -> Result<Router> {
        self.router_row(scope, router_id).await?;
        let r = self
            .commit(
                vec![
                    Statement::with_params(
                        "DELETE FROM router_ifaces WHERE router_id = $1 AND subnet_id = $2",
                        params![router_id, subnet_id],
                    ),
                    Statement::with_params(
                        "UPDATE routers SET version = version + 1 WHERE id = $1",
                        params![router_id],
                    ),
                ],
                None,
            )
            .await
            .map_err(store_error)?;
        if r.first().map_or(0, |x| x.rows_affected) == 0 {
            return Err(not_found("interface", subnet_id));
        }
        self.get_router(scope, router_id).await
    }

    // ---------------------------------------------------------------- floating IPs

    async fn fip_row(&self, scope: &Scope, id: &str) -> Result<FipRow> {
        self.one::<FipRow>("SELECT * FROM fips WHERE id = $1", params![id])
            .await?
            .filter(|r| scope.sees(&r.org, &r.project))
            .ok_or_else(|| not_found("floating ip", id))
    }

    /// A port a floating IP may point at: visible, and behind a router with an external
    /// gateway (else nothing could carry the translated traffic).
    async fn check_fip_port(&self, scope: &Scope, port_id: &str) -> Result<()> {
        let port = self.port_row(scope, port_id).await?;
        #[derive(serde::Deserialize)]
        struct Ext {
            ext_ip: Option<String>,
        }
        let rows: Vec<Ext> = self
            .rows(
                "SELECT r.ext_ip AS ext_ip FROM router_ifaces i JOIN routers r ON r.id = i.router_id WHERE i.subnet_id = $1",
                params![port.subnet_id.as_str()],
            )
            .await?;
        if !rows.iter().any(|r| r.ext_ip.is_some()) {
            return Err(conflict(
                "port_unreachable",
                "the port's subnet is not attached to a router with an external gateway",
            ));
        }
        Ok(())
    }

    pub async fn create_fip(
        &self,
        scope: &Scope,
        req: CreateFloatingIp,
        key: Option<&str>,
    ) -> Result<FloatingIp> {
        let idem = Idempotency::new(scope, "fip", key, &req)?;
        if let Some(v) = self.replay(idem.as_ref()).await? {
            return Ok(v);
        }
        let pool = self.external_pool(&req.pool).await?;
        if let Some(p) = &req.port_id {
            self.check_fip_port(scope, p).await?;
        }
        let id = new_id();
        let at = now();
        let result = self
            .with_pool_address(&pool, None, idem.as_ref(), |a| {
                let fip = FloatingIp {
                    id: id.clone(),
                    org: scope.org.clone(),
                    project: scope.project.clone(),
                    pool_id: pool.id.clone(),
                    ip: a.to_string(),
                    port_id: req.port_id.clone(),
                    created_at: at,
                    version: 1,
                };
                let statements = vec![
                    Statement::with_params(
                        "INSERT INTO fips (id, org, project, pool_id, ip, port_id, created_at, version) VALUES ($1, $2, $3, $4, $5, $6, $7, 1)",
                        params![id.as_str(), scope.org.as_str(), scope.project.as_str(), pool.id.as_str(), a.to_string(), req.port_id.clone(), at],
                    ),
                    pool_alloc_insert(&pool.id, a, "fip", &id, scope, at),
                ];
                (statements, fip)
            })
            .await;
        match result {
            Err(e) if e.code == "already_exists" && e.message.contains("fips.port_id") => Err(
                conflict("port_has_fip", "the port already has a floating IP"),
            ),
            other => other,
        }
    }

    pub async fn get_fip(&self, scope: &Scope, id: &str) -> Result<FloatingIp> {
        Ok(fip_view(self.fip_row(scope, id).await?))
    }

    pub async fn list_fips(&self, scope: &Scope, q: &PageQuery) -> Result<Page<FloatingIp>> {
        let mut p = scope.filter_params();
        p.extend(params![q.after(), q.limit() + 1]);
        let rows: Vec<FipRow> = self
            .rows(
                &format!("SELECT * FROM fips WHERE {SCOPED} AND id > $4 ORDER BY id LIMIT $5"),
                p,
            )
            .await?;
        Ok(page(rows, q, |r| r.id.clone(), fip_view))
    }

    pub async fn update_fip(
        &self,
        scope: &Scope,
        id: &str,
        req: UpdateFloatingIp,
    ) -> Result<FloatingIp> {
        let row = self.fip_row(scope, id).await?;
        check_version(row.version, req.version)?;
        if let Some(p) = &req.port_id {
            self.check_fip_port(scope, p).await?;
        }
        self.commit(
            guarded(
                "fips",
                id,
                row.version,
                vec![Statement::with_params(
                    "UPDATE fips SET port_id = $1, version = version + 1 WHERE id = $2",
                    params![req.port_id.clone(), id],
                )],
            ),
            None,
        )
        .await
        .map_err(|e| {
            if e.is_unique_violation() {
                conflict("port_has_fip", "the port already has a floating IP")
            } else {
                store_error(e)
            }
        })?;
        self.get_fip(scope, id).await
    }

    pub async fn delete_fip(&self, scope: &Scope, id: &str) -> Result<()> {
        let row = self.fip_row(scope, id).await?;
        let a = row
            .ip
            .parse::<Ipv4Addr>()
            .map(|a| i64::from(u32::from(a)))
            .unwrap_or(-1);
        self.commit(
            vec![
                Statement::with_params("DELETE FROM fips WHERE id = $1", params![id]),
                Statement::with_params(
                    "DELETE FROM pool_allocs WHERE pool_id = $1 AND ip = $2 AND owner_kind = 'fip'",
                    params![row.pool_id.as_str(), a],
                ),
            ],
            None,
        )
        .await
        .map_err(store_error)?;
        Ok(())
    }

    // ---------------------------------------------------------------- agents

    pub async fn register_host(&self, name: &str, req: HostRegistration) -> Result<Host> {
        check_host(name)?;
        let underlay = req
            .underlay_ip
            .as_deref()
            .map(|t| ip("underlay_ip", t))
            .transpose()?;
        let underlay = underlay.map(|a| a.to_string());
        let existing: Option<HostRow> = self
            .one("SELECT * FROM hosts WHERE name = $1", params![name])
            .await?;
        let at = now();
        if existing.as_ref().is_none_or(|h| h.underlay_ip != underlay) {
            // A new or moved VTEP changes other hosts' plans: bump the revision.
            self.commit(
                vec![Statement::with_params(
                    "INSERT INTO hosts (name, underlay_ip, updated_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE SET underlay_ip = excluded.underlay_ip, updated_at = excluded.updated_at",
                    params![name, underlay.clone(), at],
                )],
                None,
            )
            .await
            .map_err(store_error)?;
        }
        Ok(Host {
            name: name.to_owned(),
            underlay_ip: underlay,
            updated_at: at,
        })
    }

    pub async fn list_hosts(&self) -> Result<Vec<Host>> {
        let rows: Vec<HostRow> = self
            .rows("SELECT * FROM hosts ORDER BY name", vec![])
            .await?;
        Ok(rows
            .into_iter()
            .map(|h| Host {
                name: h.name,
                underlay_ip: h.underlay_ip,
                updated_at: h.updated_at,
            })
            .collect())
    }

    /// The host's plan once the model revision passes `after` (or after `wait`).
    pub async fn plan(&self, host: &str, after: i64, wait: Duration) -> Result<PlanAnswer> {
        check_host(host)?;
        if after >= *self.revision.borrow() {
            self.wait_revision(after, wait).await;
        }
        let snapshot = load_snapshot(&self.db).await?;
        Ok(PlanAnswer {
            revision: snapshot.revision,
            plan: crate::planner::host_plan(&snapshot, host),
        })
    }

    /// Records what an agent observed; only ports bound to that host change.
    pub async fn report_status(&self, host: &str, report: StatusReport) -> Result<()> {
        check_host(host)?;
        let mut statements = Vec::new();
        for p in &report.ports {
            if !matches!(p.status.as_str(), "active" | "down") {
                return Err(invalid("invalid_status", "status must be active or down"));
            }
            let sql = if p.migration {
                "UPDATE port_migrations SET status = $1, device = $2 WHERE port_id = $3 AND host = $4 AND (status != $1 OR device IS NOT $2)"
            } else {
                "UPDATE ports SET status = $1, device = $2 WHERE id = $3 AND host = $4 AND (status != $1 OR device IS NOT $2)"
            };
            statements.push(Statement::with_params(
                sql,
                params![
                    p.status.as_str(),
                    p.device.clone(),
                    p.port_id.as_str(),
                    host
                ],
            ));
        }
        if !statements.is_empty() {
            // Status is not part of any plan: no revision bump, so agents are not woken.
            self.db.batch(statements).await.map_err(store_error)?;
        }
        Ok(())
    }
}

/// Filters of the port list.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
pub struct PortFilter {
    pub subnet_id: Option<String>,
    pub device_id: Option<String>,
    pub host: Option<String>,
}

/// A create's failure: a store error (the caller may retry an allocation) or a final answer.
pub enum CreateError {
    Store(FlaredbError),
    Api(ApiError),
}

impl CreateError {
    pub fn into_api(self) -> ApiError {
        match self {
            Self::Store(e) => store_error(e),
            Self::Api(e) => e,
        }
    }
}

#[derive(serde::Deserialize)]
struct IpRow {
    ip: i64,
}

#[derive(serde::Deserialize)]
struct VniRow {
    vni: i64,
}

/// One of the first few candidates at random: sequential-looking addresses, yet concurrent
/// allocations rarely pick the same one.
fn pick(candidates: impl Iterator<Item = i64>) -> Option<i64> {
    let first: Vec<i64> = candidates.take(CANDIDATES).collect();
    if first.is_empty() {
        return None;
    }
    Some(first[rand::random_range(0..first.len())])
}

fn in_list(ids: &[String], start: usize) -> (String, Vec<SqlValue>) {
    let list = (0..ids.len())
        .map(|i| format!("${}", i + start))
        .collect::<Vec<_>>()
        .join(", ");
    (
        list,
        ids.iter().map(|s| SqlValue::Text(s.clone())).collect(),
    )
}

fn check_version(current: i64, given: Option<i64>) -> Result<()> {
    match given {
        Some(v) if v != current => Err(ApiError::failed_precondition(format!(
            "version {v} is stale; the object is at version {current}"
        ))),
        _ => Ok(()),
    }
}

/// Wraps an update's statements so the whole batch aborts (CHECK violation → 412) unless
/// the object is still at the version that was read: a later statement must never apply
/// when the versioned update matched nothing.
fn guarded(table: &str, id: &str, version: i64, statements: Vec<Statement>) -> Vec<Statement> {
    let mut out = vec![Statement::with_params(
        format!(
            "INSERT INTO version_guard (ok) SELECT COUNT(*) FROM {table} WHERE id = $1 AND version = $2"
        ),
        params![id, version],
    )];
    out.extend(statements);
    out.push(Statement::new("DELETE FROM version_guard"));
    out
}

fn check_host(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(invalid(
            "invalid_host",
            format!("`{name}` is not a host name"),
        ));
    }
    Ok(())
}

/// A tap binding as stored: `tap` (device `uct…`) or, after a live migration moved the port
/// onto its second tap name, `tap:alternate` (device `ucu…`).
pub const TAP: &str = "tap";
pub const TAP_ALTERNATE: &str = "tap:alternate";

fn is_tap(attachment: &str) -> bool {
    attachment == TAP || attachment == TAP_ALTERNATE
}

/// Both tap names are one attachment kind to API users (`device` tells the name).
fn api_attachment(stored: &str) -> String {
    if is_tap(stored) { TAP } else { stored }.to_owned()
}

fn check_binding(b: &Binding) -> Result<()> {
    check_host(&b.host)?;
    if b.attachment == "tap" {
        return Ok(());
    }
    match b.attachment.strip_prefix("netns:") {
        Some(ns)
            if !ns.is_empty()
                && ns.len() <= 64
                && ns
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')) =>
        {
            Ok(())
        }
        _ => Err(invalid(
            "invalid_binding",
            "attachment must be `tap` or `netns:<name>` (letters, digits, - _ .)",
        )),
    }
}

#[allow(clippy::too_many_arguments)]
fn rule_insert(
    sg: &str,
    id: &str,
    direction: &str,
    protocol: &str,
    port_min: Option<u16>,
    port_max: Option<u16>,
    remote_cidr: Option<&str>,
    remote_group: Option<&str>,
    at: i64,
) -> Statement {
    let remote_cidr = remote_cidr
        .and_then(|c| Cidr::parse(c).ok())
        .map(|c| c.to_string());
    Statement::with_params(
        "INSERT INTO sg_rules (id, sg_id, direction, protocol, port_min, port_max, remote_cidr, remote_group, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        params![
            id,
            sg,
            direction,
            protocol,
            port_min.map(i64::from),
            port_max.map(i64::from),
            remote_cidr,
            remote_group.map(ToOwned::to_owned),
            at
        ],
    )
}

fn created_rule(id: String, r: &CreateRule) -> Rule {
    Rule {
        id,
        direction: r.direction.clone(),
        protocol: r.protocol.clone(),
        port_min: r.port_min.or(r.port_max),
        port_max: r.port_max.or(r.port_min),
        remote_cidr: r
            .remote_cidr
            .as_deref()
            .and_then(|c| Cidr::parse(c).ok())
            .map(|c| c.to_string()),
        remote_group: r.remote_group.clone(),
    }
}

fn pool_alloc_insert(
    pool: &str,
    a: Ipv4Addr,
    kind: &str,
    owner: &str,
    scope: &Scope,
    at: i64,
) -> Statement {
    Statement::with_params(
        "INSERT INTO pool_allocs (pool_id, ip, owner_kind, owner_id, org, project, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        params![
            pool,
            i64::from(u32::from(a)),
            kind,
            owner,
            scope.org.as_str(),
            scope.project.as_str(),
            at
        ],
    )
}

pub fn vpc_view(r: VpcRow) -> Vpc {
    Vpc {
        id: r.id,
        org: r.org,
        project: r.project,
        name: r.name,
        cidr: r.cidr,
        default_security_group: r.default_sg,
        created_at: r.created_at,
        version: r.version,
    }
}

pub fn subnet_view(r: SubnetRow) -> Subnet {
    Subnet {
        id: r.id,
        org: r.org,
        project: r.project,
        vpc_id: r.vpc_id,
        name: r.name,
        cidr: r.cidr,
        gateway: r.gateway,
        dhcp: r.dhcp != 0,
        dhcp_server_ip: r.dhcp_ip,
        dns_servers: serde_json::from_str(&r.dns).unwrap_or_default(),
        vni: r.vni as u32,
        created_at: r.created_at,
        version: r.version,
    }
}

pub fn port_view(
    r: PortRow,
    security_groups: Vec<String>,
    migration: Option<PortMigrationRow>,
) -> Port {
    Port {
        binding: r
            .host
            .clone()
            .zip(r.attachment.as_deref().map(api_attachment))
            .map(|(host, attachment)| Binding { host, attachment }),
        migration: migration.map(|m| MigrationBinding {
            host: m.host,
            attachment: api_attachment(&m.attachment),
            status: m.status,
            device: m.device,
            created_at: m.created_at,
        }),
        id: r.id,
        org: r.org,
        project: r.project,
        vpc_id: r.vpc_id,
        subnet_id: r.subnet_id,
        name: r.name,
        mac: r.mac,
        ips: serde_json::from_str(&r.ips).unwrap_or_default(),
        security_groups,
        port_security: r.port_security != 0,
        device_owner: r.device_owner,
        device_id: r.device_id,
        status: r.status,
        device: r.device,
        created_at: r.created_at,
        version: r.version,
    }
}

pub fn rule_view(r: RuleRow) -> Rule {
    Rule {
        id: r.id,
        direction: r.direction,
        protocol: r.protocol,
        port_min: r.port_min.map(|p| p as u16),
        port_max: r.port_max.map(|p| p as u16),
        remote_cidr: r.remote_cidr,
        remote_group: r.remote_group,
    }
}

fn sg_view(r: SgRow, rules: Vec<Rule>) -> SecurityGroup {
    SecurityGroup {
        id: r.id,
        org: r.org,
        project: r.project,
        vpc_id: r.vpc_id,
        name: r.name,
        is_default: r.is_default != 0,
        rules,
        created_at: r.created_at,
        version: r.version,
    }
}

fn router_view(r: RouterRow, interfaces: Vec<RouterInterface>) -> Router {
    Router {
        external: r
            .ext_pool
            .clone()
            .zip(r.ext_ip.clone())
            .map(|(pool_id, ip)| ExternalGateway {
                pool_id,
                ip,
                snat: r.snat != 0,
            }),
        id: r.id,
        org: r.org,
        project: r.project,
        vpc_id: r.vpc_id,
        name: r.name,
        host: r.host,
        interfaces,
        created_at: r.created_at,
        version: r.version,
    }
}

fn pool_view(r: PoolRow) -> Pool {
    Pool {
        id: r.id,
        name: r.name,
        cidr: r.cidr,
        kind: r.kind,
        gateway: r.gateway,
        created_at: r.created_at,
    }
}

fn alloc_view(r: PoolAllocRow) -> PoolAllocation {
    PoolAllocation {
        pool_id: r.pool_id,
        ip: Ipv4Addr::from(r.ip as u32).to_string(),
        owner_kind: r.owner_kind,
        owner_id: r.owner_id,
        org: r.org,
        project: r.project,
        created_at: r.created_at,
    }
}

fn fip_view(r: FipRow) -> FloatingIp {
    FloatingIp {
        id: r.id,
        org: r.org,
        project: r.project,
        pool_id: r.pool_id,
        ip: r.ip,
        port_id: r.port_id,
        created_at: r.created_at,
        version: r.version,
    }
}
