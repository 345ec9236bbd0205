//! plasmavmc's records in its flaredb namespace. Each record is a JSON body plus the columns
//! queries filter on; VM updates are compare-and-set on `version`.

use flaredb::client::{FlaredbClient, FlaredbError, params};
use flaredb::sql::Statement;
use serde::{Deserialize, Serialize};

use crate::api::{Image, RegisterWorker, Vm, VmEvent};

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS images (id TEXT PRIMARY KEY, org_id TEXT NOT NULL, project_id TEXT NOT NULL, name TEXT NOT NULL, public INTEGER NOT NULL, idempotency_key TEXT, body TEXT NOT NULL, UNIQUE (org_id, project_id, name), UNIQUE (org_id, project_id, idempotency_key))",
    "CREATE TABLE IF NOT EXISTS workers (name TEXT PRIMARY KEY, body TEXT NOT NULL, state TEXT NOT NULL, last_heartbeat INTEGER NOT NULL, registered_at INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS vms (id TEXT PRIMARY KEY, org_id TEXT NOT NULL, project_id TEXT NOT NULL, name TEXT NOT NULL, worker TEXT NOT NULL, migrating_to TEXT, vcpus INTEGER NOT NULL, memory_mib INTEGER NOT NULL, state TEXT NOT NULL, idempotency_key TEXT, version INTEGER NOT NULL, body TEXT NOT NULL, UNIQUE (org_id, project_id, name), UNIQUE (org_id, project_id, idempotency_key))",
    "CREATE INDEX IF NOT EXISTS vms_by_worker ON vms (worker)",
    "CREATE TABLE IF NOT EXISTS vm_events (seq INTEGER PRIMARY KEY, vm_id TEXT NOT NULL, at INTEGER NOT NULL, kind TEXT NOT NULL, message TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS vm_events_by_vm ON vm_events (vm_id, seq)",
];

/// A VM as stored: the public view plus what only the worker sees.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmRecord {
    pub vm: Vm,
    pub user_data: Option<String>,
    pub stop_timeout_secs: u64,
    pub idempotency_key: Option<String>,
    /// The reboot sequence number the worker last reported as applied.
    #[serde(default)]
    pub reboot_applied: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkerRecord {
    pub info: RegisterWorker,
    pub state: String,
    pub last_heartbeat: i64,
    pub registered_at: i64,
}

#[derive(Deserialize)]
struct Body {
    body: String,
}

#[derive(Deserialize)]
struct WorkerRow {
    body: String,
    state: String,
    last_heartbeat: i64,
    registered_at: i64,
}

#[derive(Deserialize)]
struct Usage {
    worker: String,
    vcpus: i64,
    memory_mib: i64,
}

fn decode<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T, FlaredbError> {
    serde_json::from_str(text).map_err(|e| FlaredbError::Decode(e.to_string()))
}

fn encode<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("records serialize")
}

#[derive(Clone)]
pub struct Store {
    db: FlaredbClient,
}

impl Store {
    pub fn new(db: FlaredbClient) -> Self {
        Self { db }
    }

    pub async fn init(&self) -> Result<(), FlaredbError> {
        self.db
            .batch(SCHEMA.iter().map(|s| Statement::new(*s)).collect())
            .await
            .map(|_| ())
    }

    // ---- images

    pub async fn insert_image(
        &self,
        image: &Image,
        idempotency_key: Option<&str>,
    ) -> Result<(), FlaredbError> {
        self.db
            .execute(
                "INSERT INTO images (id, org_id, project_id, name, public, idempotency_key, body) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                params![&image.id, &image.org_id, &image.project_id, &image.name, image.public, idempotency_key, encode(image)],
            )
            .await
            .map(|_| ())
    }

    pub async fn image_by_idempotency_key(
        &self,
        org: &str,
        project: &str,
        key: &str,
    ) -> Result<Option<Image>, FlaredbError> {
        let rows: Vec<Body> = self
            .db
            .query(
                "SELECT body FROM images WHERE org_id = $1 AND project_id = $2 AND idempotency_key = $3",
                params![org, project, key],
            )
            .await?;
        rows.first().map(|r| decode(&r.body)).transpose()
    }

    pub async fn image(&self, id: &str) -> Result<Option<Image>, FlaredbError> {
        let rows: Vec<Body> = self
            .db
            .query("SELECT body FROM images WHERE id = $1", params![id])
            .await?;
        rows.first().map(|r| decode(&r.body)).transpose()
    }

    /// Images a tenant sees: its own and the public ones (all for `None`, the operator).
    pub async fn images(
        &self,
        scope: Option<(&str, &str)>,
        after: &str,
        limit: u32,
    ) -> Result<Vec<Image>, FlaredbError> {
        let rows: Vec<Body> = match scope {
            Some((org, project)) => {
                self.db
                    .query(
                        "SELECT body FROM images WHERE ((org_id = $1 AND project_id = $2) OR public = 1) AND id > $3 ORDER BY id LIMIT $4",
                        params![org, project, after, limit],
                    )
                    .await?
            }
            None => {
                self.db
                    .query(
                        "SELECT body FROM images WHERE id > $1 ORDER BY id LIMIT $2",
                        params![after, limit],
                    )
                    .await?
            }
        };
        rows.iter().map(|r| decode(&r.body)).collect()
    }

    pub async fn image_in_use(&self, image_id: &str) -> Result<bool, FlaredbError> {
        // The image id sits in the body; a LIKE on the JSON keeps the schema small.
        let rows: Vec<Body> = self
            .db
            .query(
                "SELECT body FROM vms WHERE body LIKE $1 LIMIT 1",
                params![format!("%\"image_id\":\"{image_id}\"%")],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    pub async fn delete_image(&self, id: &str) -> Result<bool, FlaredbError> {
        Ok(self
            .db
            .execute("DELETE FROM images WHERE id = $1", params![id])
            .await?
            > 0)
    }

    // ---- workers

    pub async fn upsert_worker(&self, w: &WorkerRecord) -> Result<(), FlaredbError> {
        self.db
            .execute(
                "INSERT INTO workers (name, body, state, last_heartbeat, registered_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (name) DO UPDATE SET body = excluded.body, state = excluded.state, last_heartbeat = excluded.last_heartbeat",
                params![&w.info.name, encode(&w.info), &w.state, w.last_heartbeat, w.registered_at],
            )
            .await
            .map(|_| ())
    }

    pub async fn heartbeat(&self, name: &str, at: i64) -> Result<bool, FlaredbError> {
        Ok(self
            .db
            .execute(
                "UPDATE workers SET last_heartbeat = $1, state = CASE WHEN state = 'draining' THEN 'draining' ELSE 'up' END WHERE name = $2",
                params![at, name],
            )
            .await?
            > 0)
    }

    pub async fn set_worker_state(&self, name: &str, state: &str) -> Result<bool, FlaredbError> {
        Ok(self
            .db
            .execute(
                "UPDATE workers SET state = $1 WHERE name = $2",
                params![state, name],
            )
            .await?
            > 0)
    }

    pub async fn workers(&self) -> Result<Vec<WorkerRecord>, FlaredbError> {
        let rows: Vec<WorkerRow> = self
            .db
            .query(
                "SELECT body, state, last_heartbeat, registered_at FROM workers ORDER BY name",
                vec![],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(WorkerRecord {
                    info: decode(&r.body)?,
                    state: r.state.clone(),
                    last_heartbeat: r.last_heartbeat,
                    registered_at: r.registered_at,
                })
            })
            .collect()
    }

    pub async fn delete_worker(&self, name: &str) -> Result<bool, FlaredbError> {
        Ok(self
            .db
            .execute("DELETE FROM workers WHERE name = $1", params![name])
            .await?
            > 0)
    }

    /// (worker, vcpus, memory) reserved by the VMs placed on (or migrating to) each worker.
    pub async fn usage(&self) -> Result<Vec<(String, u32, u64)>, FlaredbError> {
        let rows: Vec<Usage> = self
            .db
            .query(
                "SELECT worker, SUM(vcpus) AS vcpus, SUM(memory_mib) AS memory_mib FROM \
                 (SELECT worker, vcpus, memory_mib FROM vms UNION ALL \
                  SELECT migrating_to AS worker, vcpus, memory_mib FROM vms WHERE migrating_to IS NOT NULL) \
                 GROUP BY worker",
                vec![],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|u| (u.worker, u.vcpus.max(0) as u32, u.memory_mib.max(0) as u64))
            .collect())
    }

    // ---- VMs

    /// Inserts a VM if its worker still has room for it (capacity checked in the same
    /// statement, so concurrent creates cannot overfill a worker). `Ok(false)`: no room.
    pub async fn insert_vm(
        &self,
        rec: &VmRecord,
        worker_memory_mib: u64,
        worker_vcpus: u32,
    ) -> Result<bool, FlaredbError> {
        let vm = &rec.vm;
        let n = self
            .db
            .execute(
                "INSERT INTO vms (id, org_id, project_id, name, worker, migrating_to, vcpus, memory_mib, state, idempotency_key, version, body) \
                 SELECT $1, $2, $3, $4, $5, NULL, $6, $7, $8, $9, $10, $11 \
                 WHERE (SELECT COALESCE(SUM(memory_mib), 0) FROM vms WHERE worker = $5 OR migrating_to = $5) + $7 <= $12 \
                 AND (SELECT COALESCE(SUM(vcpus), 0) FROM vms WHERE worker = $5 OR migrating_to = $5) + $6 <= $13",
                params![
                    &vm.id,
                    &vm.org_id,
                    &vm.project_id,
                    &vm.name,
                    &vm.worker,
                    vm.vcpus,
                    vm.memory_mib as i64,
                    vm.state.as_str(),
                    rec.idempotency_key.clone(),
                    vm.version,
                    encode(rec),
                    worker_memory_mib as i64,
                    worker_vcpus
                ],
            )
            .await?;
        Ok(n > 0)
    }

    pub async fn vm(&self, id: &str) -> Result<Option<VmRecord>, FlaredbError> {
        let rows: Vec<Body> = self
            .db
            .query("SELECT body FROM vms WHERE id = $1", params![id])
            .await?;
        rows.first().map(|r| decode(&r.body)).transpose()
    }

    pub async fn vm_by_idempotency_key(
        &self,
        org: &str,
        project: &str,
        key: &str,
    ) -> Result<Option<VmRecord>, FlaredbError> {
        let rows: Vec<Body> = self
            .db
            .query(
                "SELECT body FROM vms WHERE org_id = $1 AND project_id = $2 AND idempotency_key = $3",
                params![org, project, key],
            )
            .await?;
        rows.first().map(|r| decode(&r.body)).transpose()
    }

    pub async fn vms(
        &self,
        scope: Option<(&str, &str)>,
        after: &str,
        limit: u32,
    ) -> Result<Vec<VmRecord>, FlaredbError> {
        let rows: Vec<Body> = match scope {
            Some((org, project)) => {
                self.db
                    .query(
                        "SELECT body FROM vms WHERE org_id = $1 AND project_id = $2 AND id > $3 ORDER BY id LIMIT $4",
                        params![org, project, after, limit],
                    )
                    .await?
            }
            None => {
                self.db
                    .query(
                        "SELECT body FROM vms WHERE id > $1 ORDER BY id LIMIT $2",
                        params![after, limit],
                    )
                    .await?
            }
        };
        rows.iter().map(|r| decode(&r.body)).collect()
    }

    /// VMs placed on, or migrating to, a worker.
    pub async fn vms_of_worker(&self, worker: &str) -> Result<Vec<VmRecord>, FlaredbError> {
        let rows: Vec<Body> = self
            .db
            .query(
                "SELECT body FROM vms WHERE worker = $1 OR migrating_to = $1 ORDER BY id",
                params![worker],
            )
            .await?;
        rows.iter().map(|r| decode(&r.body)).collect()
    }

    pub async fn vms_in_state(&self, state: &str) -> Result<Vec<VmRecord>, FlaredbError> {
        let rows: Vec<Body> = self
            .db
            .query(
                "SELECT body FROM vms WHERE state = $1 ORDER BY id",
                params![state],
            )
            .await?;
        rows.iter().map(|r| decode(&r.body)).collect()
    }

    /// Writes `rec` if the stored version is still `rec.vm.version - 1` (the caller bumped
    /// it). `Ok(false)`: someone else changed it first. With `extra_memory_check`, the
    /// migration target must still have room.
    pub async fn update_vm(&self, rec: &VmRecord) -> Result<bool, FlaredbError> {
        let vm = &rec.vm;
        let n = self
            .db
            .execute(
                "UPDATE vms SET worker = $1, migrating_to = $2, vcpus = $3, memory_mib = $4, state = $5, version = $6, body = $7 \
                 WHERE id = $8 AND version = $9",
                params![
                    &vm.worker,
                    vm.migrating_to.clone(),
                    vm.vcpus,
                    vm.memory_mib as i64,
                    vm.state.as_str(),
                    vm.version,
                    encode(rec),
                    &vm.id,
                    vm.version - 1
                ],
            )
            .await?;
        Ok(n > 0)
    }

    /// Sets a migration target if it has room (in one statement, like [`Self::insert_vm`]).
    pub async fn start_migration(
        &self,
        rec: &VmRecord,
        target_memory_mib: u64,
        target_vcpus: u32,
    ) -> Result<bool, FlaredbError> {
        let vm = &rec.vm;
        let target = vm.migrating_to.clone().unwrap_or_default();
        let n = self
            .db
            .execute(
                "UPDATE vms SET migrating_to = $1, state = $2, version = $3, body = $4 \
                 WHERE id = $5 AND version = $6 \
                 AND (SELECT COALESCE(SUM(memory_mib), 0) FROM vms WHERE worker = $1 OR migrating_to = $1) + $7 <= $8 \
                 AND (SELECT COALESCE(SUM(vcpus), 0) FROM vms WHERE worker = $1 OR migrating_to = $1) + $9 <= $10",
                params![
                    &target,
                    vm.state.as_str(),
                    vm.version,
                    encode(rec),
                    &vm.id,
                    vm.version - 1,
                    vm.memory_mib as i64,
                    target_memory_mib as i64,
                    vm.vcpus,
                    target_vcpus
                ],
            )
            .await?;
        Ok(n > 0)
    }

    pub async fn delete_vm(&self, id: &str) -> Result<bool, FlaredbError> {
        Ok(self
            .db
            .batch(vec![
                Statement::with_params("DELETE FROM vms WHERE id = $1", params![id]),
                Statement::with_params("DELETE FROM vm_events WHERE vm_id = $1", params![id]),
            ])
            .await?
            .first()
            .is_some_and(|r| r.rows_affected > 0))
    }

    // ---- events

    pub async fn add_event(
        &self,
        vm_id: &str,
        at: i64,
        kind: &str,
        message: &str,
    ) -> Result<(), FlaredbError> {
        self.db
            .execute(
                "INSERT INTO vm_events (vm_id, at, kind, message) VALUES ($1, $2, $3, $4)",
                params![vm_id, at, kind, message],
            )
            .await
            .map(|_| ())
    }

    pub async fn events(
        &self,
        vm_id: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<VmEvent>, FlaredbError> {
        self.db
            .query(
                "SELECT seq, vm_id, at, kind, message FROM vm_events WHERE vm_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                params![vm_id, after, limit],
            )
            .await
    }
}
