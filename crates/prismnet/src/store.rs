//! prismnet's persistence in its flaredb namespace: the schema, row types, and the error
//! mapping. The database is the arbiter of every invariant that concurrent requests could
//! break: `UNIQUE (subnet_id, ip)` for IPAM, `UNIQUE vni`, `UNIQUE mac`, a trigger refusing
//! overlapping subnets in a VPC, and foreign keys refusing to delete what is still in use.

use axum::http::StatusCode;
use flaredb::client::{FlaredbClient, FlaredbError};
use flaredb::sql::{Statement, StatementResult};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use uc_runtime::ApiError;

pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL)",
    "INSERT INTO meta (k, v) VALUES ('revision', 1) ON CONFLICT (k) DO NOTHING",
    "CREATE TABLE IF NOT EXISTS vpcs (id TEXT PRIMARY KEY, org TEXT NOT NULL, project TEXT NOT NULL, name TEXT NOT NULL, cidr TEXT NOT NULL, default_sg TEXT NOT NULL, created_at INTEGER NOT NULL, version INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS subnets (id TEXT PRIMARY KEY, org TEXT NOT NULL, project TEXT NOT NULL, vpc_id TEXT NOT NULL REFERENCES vpcs(id), name TEXT NOT NULL, cidr TEXT NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL, gateway TEXT, dhcp INTEGER NOT NULL, dhcp_ip TEXT, dns TEXT NOT NULL, vni INTEGER NOT NULL UNIQUE, created_at INTEGER NOT NULL, version INTEGER NOT NULL)",
    // Two concurrent creates both pass the service's overlap check; this one decides.
    "CREATE TRIGGER IF NOT EXISTS subnets_no_overlap BEFORE INSERT ON subnets WHEN EXISTS (SELECT 1 FROM subnets s WHERE s.vpc_id = NEW.vpc_id AND s.first <= NEW.last AND NEW.first <= s.last) BEGIN SELECT RAISE(ABORT, 'subnet_overlap: the CIDR overlaps another subnet of the VPC'); END",
    "CREATE TABLE IF NOT EXISTS ip_allocs (subnet_id TEXT NOT NULL REFERENCES subnets(id) ON DELETE CASCADE, ip INTEGER NOT NULL, owner TEXT NOT NULL, PRIMARY KEY (subnet_id, ip))",
    "CREATE TABLE IF NOT EXISTS sgs (id TEXT PRIMARY KEY, org TEXT NOT NULL, project TEXT NOT NULL, vpc_id TEXT NOT NULL REFERENCES vpcs(id), name TEXT NOT NULL, is_default INTEGER NOT NULL, created_at INTEGER NOT NULL, version INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sg_rules (id TEXT PRIMARY KEY, sg_id TEXT NOT NULL REFERENCES sgs(id) ON DELETE CASCADE, direction TEXT NOT NULL, protocol TEXT NOT NULL, port_min INTEGER, port_max INTEGER, remote_cidr TEXT, remote_group TEXT REFERENCES sgs(id), created_at INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ports (id TEXT PRIMARY KEY, org TEXT NOT NULL, project TEXT NOT NULL, vpc_id TEXT NOT NULL, subnet_id TEXT NOT NULL REFERENCES subnets(id), name TEXT NOT NULL, mac TEXT NOT NULL UNIQUE, ips TEXT NOT NULL, port_security INTEGER NOT NULL, device_owner TEXT, device_id TEXT, host TEXT, attachment TEXT, status TEXT NOT NULL, device TEXT, created_at INTEGER NOT NULL, version INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS ports_host ON ports (host)",
    // A port's second binding while a live migration moves its workload: the destination
    // host's device is set up next to the source's, and `activate` makes it the binding.
    "CREATE TABLE IF NOT EXISTS port_migrations (port_id TEXT PRIMARY KEY REFERENCES ports(id) ON DELETE CASCADE, host TEXT NOT NULL, attachment TEXT NOT NULL, status TEXT NOT NULL, device TEXT, created_at INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS port_sgs (port_id TEXT NOT NULL REFERENCES ports(id) ON DELETE CASCADE, sg_id TEXT NOT NULL REFERENCES sgs(id), PRIMARY KEY (port_id, sg_id))",
    "CREATE TABLE IF NOT EXISTS pools (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, cidr TEXT NOT NULL, kind TEXT NOT NULL, gateway TEXT, created_at INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS pool_allocs (pool_id TEXT NOT NULL REFERENCES pools(id), ip INTEGER NOT NULL, owner_kind TEXT NOT NULL, owner_id TEXT NOT NULL, org TEXT NOT NULL, project TEXT NOT NULL, created_at INTEGER NOT NULL, PRIMARY KEY (pool_id, ip))",
    "CREATE TABLE IF NOT EXISTS routers (id TEXT PRIMARY KEY, org TEXT NOT NULL, project TEXT NOT NULL, vpc_id TEXT NOT NULL REFERENCES vpcs(id), name TEXT NOT NULL, host TEXT NOT NULL, ext_pool TEXT REFERENCES pools(id), ext_ip TEXT, snat INTEGER NOT NULL, created_at INTEGER NOT NULL, version INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS router_ifaces (router_id TEXT NOT NULL REFERENCES routers(id), subnet_id TEXT NOT NULL UNIQUE REFERENCES subnets(id), ip TEXT NOT NULL, mac TEXT NOT NULL, PRIMARY KEY (router_id, subnet_id))",
    "CREATE TABLE IF NOT EXISTS fips (id TEXT PRIMARY KEY, org TEXT NOT NULL, project TEXT NOT NULL, pool_id TEXT NOT NULL REFERENCES pools(id), ip TEXT NOT NULL, port_id TEXT REFERENCES ports(id), created_at INTEGER NOT NULL, version INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS hosts (name TEXT PRIMARY KEY, underlay_ip TEXT, updated_at INTEGER NOT NULL)",
    // Guards conditional batches: an insert of 0 violates the CHECK and aborts the batch.
    "CREATE TABLE IF NOT EXISTS version_guard (ok INTEGER NOT NULL CHECK (ok = 1))",
    "CREATE TABLE IF NOT EXISTS idempotency (key TEXT PRIMARY KEY, request TEXT NOT NULL, result TEXT NOT NULL, created_at INTEGER NOT NULL)",
];

/// Every change bumps the model revision in the same transaction; agents long-poll on it.
pub const BUMP_REVISION: &str = "UPDATE meta SET v = v + 1 WHERE k = 'revision'";
pub const READ_REVISION: &str = "SELECT v FROM meta WHERE k = 'revision'";

#[derive(Debug, Clone, Deserialize)]
pub struct VpcRow {
    pub id: String,
    pub org: String,
    pub project: String,
    pub name: String,
    pub cidr: String,
    pub default_sg: String,
    pub created_at: i64,
    pub version: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SubnetRow {
    pub id: String,
    pub org: String,
    pub project: String,
    pub vpc_id: String,
    pub name: String,
    pub cidr: String,
    pub first: i64,
    pub last: i64,
    pub gateway: Option<String>,
    pub dhcp: i64,
    pub dhcp_ip: Option<String>,
    pub dns: String,
    pub vni: i64,
    pub created_at: i64,
    pub version: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PortRow {
    pub id: String,
    pub org: String,
    pub project: String,
    pub vpc_id: String,
    pub subnet_id: String,
    pub name: String,
    pub mac: String,
    pub ips: String,
    pub port_security: i64,
    pub device_owner: Option<String>,
    pub device_id: Option<String>,
    pub host: Option<String>,
    pub attachment: Option<String>,
    pub status: String,
    pub device: Option<String>,
    pub created_at: i64,
    pub version: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PortMigrationRow {
    pub port_id: String,
    pub host: String,
    pub attachment: String,
    pub status: String,
    pub device: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PortSgRow {
    pub port_id: String,
    pub sg_id: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SgRow {
    pub id: String,
    pub org: String,
    pub project: String,
    pub vpc_id: String,
    pub name: String,
    pub is_default: i64,
    pub created_at: i64,
    pub version: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RuleRow {
    pub id: String,
    pub sg_id: String,
    pub direction: String,
    pub protocol: String,
    pub port_min: Option<i64>,
    pub port_max: Option<i64>,
    pub remote_cidr: Option<String>,
    pub remote_group: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RouterRow {
    pub id: String,
    pub org: String,
    pub project: String,
    pub vpc_id: String,
    pub name: String,
    pub host: String,
    pub ext_pool: Option<String>,
    pub ext_ip: Option<String>,
    pub snat: i64,
    pub created_at: i64,
    pub version: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct IfaceRow {
    pub router_id: String,
    pub subnet_id: String,
    pub ip: String,
    pub mac: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PoolRow {
    pub id: String,
    pub name: String,
    pub cidr: String,
    pub kind: String,
    pub gateway: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PoolAllocRow {
    pub pool_id: String,
    pub ip: i64,
    pub owner_kind: String,
    pub owner_id: String,
    pub org: String,
    pub project: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FipRow {
    pub id: String,
    pub org: String,
    pub project: String,
    pub pool_id: String,
    pub ip: String,
    pub port_id: Option<String>,
    pub created_at: i64,
    pub version: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HostRow {
    pub name: String,
    pub underlay_ip: Option<String>,
    pub updated_at: i64,
}

/// Decodes a result's rows into `T` by column name.
pub fn decode<T: DeserializeOwned>(result: &StatementResult) -> Result<Vec<T>, ApiError> {
    result
        .rows
        .iter()
        .map(|row| {
            let object: serde_json::Map<String, serde_json::Value> = result
                .columns
                .iter()
                .zip(row)
                .map(|(c, v)| {
                    (
                        c.name.clone(),
                        serde_json::to_value(v).unwrap_or(serde_json::Value::Null),
                    )
                })
                .collect();
            serde_json::from_value(serde_json::Value::Object(object))
                .map_err(|e| ApiError::internal(format!("cannot decode a stored row: {e}")))
        })
        .collect()
}

/// Everything the planner needs, read in one request (one consistent view).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub revision: i64,
    pub subnets: Vec<SubnetRow>,
    pub ports: Vec<PortRow>,
    pub migrations: Vec<PortMigrationRow>,
    pub port_sgs: Vec<PortSgRow>,
    pub sgs: Vec<SgRow>,
    pub rules: Vec<RuleRow>,
    pub routers: Vec<RouterRow>,
    pub ifaces: Vec<IfaceRow>,
    pub pools: Vec<PoolRow>,
    pub fips: Vec<FipRow>,
    pub hosts: Vec<HostRow>,
}

pub async fn load_snapshot(db: &FlaredbClient) -> Result<Snapshot, ApiError> {
    let r = db
        .batch(vec![
            Statement::new(READ_REVISION),
            Statement::new("SELECT * FROM subnets ORDER BY id"),
            Statement::new("SELECT * FROM ports ORDER BY id"),
            Statement::new("SELECT * FROM port_sgs ORDER BY port_id, sg_id"),
            Statement::new("SELECT * FROM sgs ORDER BY id"),
            Statement::new("SELECT * FROM sg_rules ORDER BY sg_id, id"),
            Statement::new("SELECT * FROM routers ORDER BY id"),
            Statement::new("SELECT * FROM router_ifaces ORDER BY router_id, subnet_id"),
            Statement::new("SELECT * FROM pools ORDER BY id"),
            Statement::new("SELECT * FROM fips ORDER BY id"),
            Statement::new("SELECT * FROM hosts ORDER BY name"),
            Statement::new("SELECT * FROM port_migrations ORDER BY port_id"),
        ])
        .await
        .map_err(store_error)?;
    if r.len() != 12 {
        return Err(ApiError::internal("short snapshot answer"));
    }
    #[derive(Deserialize)]
    struct Rev {
        v: i64,
    }
    Ok(Snapshot {
        revision: decode::<Rev>(&r[0])?.first().map_or(0, |r| r.v),
        subnets: decode(&r[1])?,
        ports: decode(&r[2])?,
        port_sgs: decode(&r[3])?,
        sgs: decode(&r[4])?,
        rules: decode(&r[5])?,
        routers: decode(&r[6])?,
        ifaces: decode(&r[7])?,
        pools: decode(&r[8])?,
        fips: decode(&r[9])?,
        hosts: decode(&r[10])?,
        migrations: decode(&r[11])?,
    })
}

/// Maps a store failure to the API: constraint violations are conflicts with a code saying
/// which, transport trouble is 503.
pub fn store_error(e: FlaredbError) -> ApiError {
    match &e {
        FlaredbError::Sql {
            sqlstate, message, ..
        } => {
            let text = message.as_str();
            match sqlstate.as_str() {
                "23505" => ApiError::new(StatusCode::CONFLICT, "already_exists", text.to_owned()),
                "23503" => ApiError::new(
                    StatusCode::CONFLICT,
                    "in_use",
                    "the object is still in use by other objects (or refers to one that is gone)",
                ),
                "23514" if text.contains("version_guard") => ApiError::failed_precondition(
                    "the object changed since it was read (version mismatch); read it again and retry",
                ),
                "23000" if text.contains("subnet_overlap") => ApiError::new(
                    StatusCode::CONFLICT,
                    "subnet_overlap",
                    "the CIDR overlaps another subnet of the VPC",
                ),
                _ => ApiError::internal(format!("store: {e}")),
            }
        }
        FlaredbError::Client(c) if c.status().is_none() || c.status() == Some(503) => {
            ApiError::unavailable(format!("store unavailable: {e}"))
        }
        _ => ApiError::internal(format!("store: {e}")),
    }
}

/// Which unique constraint a violation names (e.g. `ip_allocs.subnet_id`).
pub fn violated(e: &FlaredbError, table_column: &str) -> bool {
    e.is_unique_violation() && e.to_string().contains(table_column)
}
