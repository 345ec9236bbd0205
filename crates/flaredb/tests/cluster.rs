//! Three flaredb members: leader killed mid-write, catch-up by snapshot, identical replicas
//! (also after random()/now()), linearizable strong reads, monotonic eventual reads, and
//! backup → restore into a fresh cluster.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::{Value, json};
use uc_testkit::linearizability::{Kv, KvInput, KvOp, KvOutput, Recorder, assert_linearizable};

/// Writes a pair of rows per request until told to stop; records what was acknowledged.
async fn writer(
    f: Api,
    ns: &'static str,
    stop: Arc<std::sync::atomic::AtomicBool>,
    acked: Arc<Mutex<BTreeSet<i64>>>,
    alive: Arc<Mutex<Vec<bool>>>,
) {
    let mut id = 0i64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        id += 1;
        let target = {
            let alive = alive.lock().unwrap();
            (0..3)
                .map(|k| (id as usize + k) % 3)
                .find(|i| alive[*i])
                .unwrap_or(0)
        };
        let (status, _) = f
            .sql(target, ns, json!([
                {"sql": "INSERT INTO pairs (id, side, r, at) VALUES ($1, 'a', random(), now())", "params": [id]},
                {"sql": "INSERT INTO pairs (id, side, r, at) VALUES ($1, 'b', random(), CURRENT_TIMESTAMP)", "params": [id]}
            ]))
            .await;
        if status == 200 {
            acked.lock().unwrap().insert(id);
        }
    }
}

async fn checksums(f: &Api, ns: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for i in 0..3 {
        out.push(f.replica_status(i, ns).await["checksum"].clone());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_mid_write_loses_nothing_and_replicas_end_identical() {
    let f = flare(
        3,
        "snapshot_every_entries = 40\nentries_kept_after_snapshot = 5\n",
    )
    .await;
    f.create_namespace("orders", "strong").await;
    f.wait_served_everywhere("orders").await;
    let (s, b) = f
        .sql(0, "orders", json!([{"sql": "CREATE TABLE pairs (id INTEGER, side TEXT, r INTEGER, at TEXT, PRIMARY KEY (id, side))"}]))
        .await;
    assert_eq!(s, 200, "{b}");

    let mut f = f;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let alive = Arc::new(Mutex::new(vec![true; 3]));
    let task = tokio::spawn(writer(
        f.api.clone(),
        "orders",
        stop.clone(),
        acked.clone(),
        alive.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(700)).await;

    let leader = f.wait_leader_of("orders").await;
    alive.lock().unwrap()[leader] = false;
    // kill -9 the leader while the writer is mid-flight.
    f.flaredb.node_mut(leader).kill();
    // Writes continue on the survivors, long enough to snapshot and purge past the dead member.
    let deadline = Instant::now() + Duration::from_secs(20);
    let start_count = acked.lock().unwrap().len();
    while acked.lock().unwrap().len() < start_count + 60 {
        assert!(
            Instant::now() < deadline,
            "writes did not continue after the leader died"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f.flaredb.restart(leader).await.unwrap();
    alive.lock().unwrap()[leader] = true;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    task.await.unwrap();

    // Every acknowledged request is there, whole; no half request anywhere.
    let acked: BTreeSet<i64> = acked.lock().unwrap().clone();
    let (s, body) = f
        .sql(
            0,
            "orders",
            json!([{"sql": "SELECT id, count(*) FROM pairs GROUP BY id ORDER BY id"}]),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let counts: BTreeMap<i64, i64> = body["results"][0]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_i64().unwrap(), r[1].as_i64().unwrap()))
        .collect();
    for id in &acked {
        assert_eq!(
            counts.get(id),
            Some(&2),
            "acknowledged request {id} lost or torn"
        );
    }
    assert!(
        counts.values().all(|c| *c == 2),
        "a half transaction is visible: {counts:?}"
    );

    // The restarted member caught up (by snapshot: its log was purged meanwhile) and all
    // replicas hold byte-identical tables, random() and now() included.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sums = checksums(&f.api, "orders").await;
        if sums.iter().all(|s| *s == sums[0] && !s.is_null()) {
            break;
        }
        assert!(Instant::now() < deadline, "replicas differ: {sums:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = f.replica_status(leader, "orders").await;
    assert!(
        status["raft"]["snapshot_index"].as_u64().unwrap() > 0,
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strong_reads_are_linearizable_and_eventual_reads_never_go_back() {
    let f = flare(3, "").await;
    f.create_namespace("reg", "strong").await;
    f.create_namespace("ev", "eventual").await;
    f.wait_served_everywhere("reg").await;
    f.wait_served_everywhere("ev").await;
    f.sql(
        0,
        "reg",
        json!([{"sql": "CREATE TABLE r (k TEXT PRIMARY KEY, v TEXT)"}]),
    )
    .await;
    f.sql(0, "ev", json!([{"sql": "CREATE TABLE c (k INTEGER PRIMARY KEY, n INTEGER)"}, {"sql": "INSERT INTO c VALUES (1, 0)"}]))
        .await;

    let recorder: Arc<Recorder<KvInput, KvOutput>> = Arc::new(Recorder::new());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for client in 0..6u64 {
        let (f, recorder, stop) = (f.api.clone(), recorder.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let member = (client % 3) as usize;
            let mut seq = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                seq += 1;
                let key = format!("k{}", rand::random_range(0..2u8));
                let value = format!("c{client}-{seq}");
                let (op, statement) = match rand::random_range(0..3u8) {
                    0 => (KvOp::Get, json!({"sql": "SELECT v FROM r WHERE k = $1", "params": [key]})),
                    1 => (
                        KvOp::put(value.clone()),
                        json!({"sql": "INSERT INTO r (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = excluded.v", "params": [key, value]}),
                    ),
                    _ => (KvOp::Delete, json!({"sql": "DELETE FROM r WHERE k = $1", "params": [key]})),
                };
                let input = KvInput::new(key, op.clone());
                let pending = recorder.invoke(client, input);
                let (status, body) = f.sql(member, "reg", json!([statement])).await;
                match (status, &op) {
                    (200, KvOp::Get) => {
                        let v = body["results"][0]["rows"][0][0].as_str().map(str::to_owned);
                        recorder.complete(pending, KvOutput::Value(v));
                    }
                    (200, _) => recorder.complete(pending, KvOutput::Done),
                    (_, KvOp::Get) => recorder.discard(pending),
                    _ => recorder.unknown(pending),
                }
            }
        }));
    }
    // Eventual mode: one writer counts up; a reader on each member must never see it go back.
    let counter = {
        let (f, stop) = (f.api.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.sql(
                    0,
                    "ev",
                    json!([{"sql": "UPDATE c SET n = n + 1 WHERE k = 1"}]),
                )
                .await;
            }
        })
    };
    let regressions = Arc::new(Mutex::new(Vec::new()));
    let mut readers = Vec::new();
    for member in 0..3 {
        let (f, stop, regressions) = (f.api.clone(), stop.clone(), regressions.clone());
        readers.push(tokio::spawn(async move {
            let mut last = -1;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (s, body) = f
                    .sql(
                        member,
                        "ev",
                        json!([{"sql": "SELECT n FROM c WHERE k = 1"}]),
                    )
                    .await;
                if s == 200 {
                    let n = body["results"][0]["rows"][0][0].as_i64().unwrap_or(-1);
                    if n < last {
                        regressions.lock().unwrap().push((member, last, n));
                    }
                    last = last.max(n);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks.into_iter().chain(readers).chain([counter]) {
        t.await.unwrap();
    }
    assert!(
        regressions.lock().unwrap().is_empty(),
        "eventual reads went back: {:?}",
        regressions.lock().unwrap()
    );
    let history = recorder.history();
    let completed = history.iter().filter(|o| !o.is_unknown()).count();
    assert!(completed > 50, "progress: {completed}");
    assert_linearizable::<Kv>(&history, Duration::from_secs(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_restores_into_a_fresh_cluster_with_identical_tables() {
    let a = flare(1, "").await;
    a.create_namespace("inv", "strong").await;
    let (s, b) = a
        .sql(0, "inv", json!([
            {"sql": "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL, img BLOB, at TEXT DEFAULT CURRENT_TIMESTAMP)"},
            {"sql": "INSERT INTO items (id, name, price, img) VALUES (1, 'bolt', 0.25, x'00ff'), (2, 'nut', 0.1, NULL)"},
            {"sql": "CREATE INDEX items_name ON items (name)"}
        ]))
        .await;
    assert_eq!(s, 200, "{b}");
    let backup = uc_testkit::http_client()
        .get(format!(
            "{}/api/v1/namespaces/inv/backup",
            a.node(0).url("rest")
        ))
        .bearer_auth(a.token())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let source_sum = a.replica_status(0, "inv").await["checksum"].clone();

    let b_cluster = flare(1, "").await;
    b_cluster.create_namespace("inv", "strong").await;
    let r = uc_testkit::http_client()
        .post(format!(
            "{}/api/v1/namespaces/inv/restore",
            b_cluster.node(0).url("rest")
        ))
        .bearer_auth(b_cluster.token())
        .body(backup.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    assert_eq!(
        b_cluster.replica_status(0, "inv").await["checksum"],
        source_sum
    );
    let (_, body) = b_cluster
        .sql(
            0,
            "inv",
            json!([{"sql": "SELECT name FROM items ORDER BY id"}]),
        )
        .await;
    assert_eq!(body["results"][0]["rows"], json!([["bolt"], ["nut"]]));

    // A damaged backup is refused and changes nothing.
    let mut damaged = backup.to_vec();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0xff;
    let r = uc_testkit::http_client()
        .post(format!(
            "{}/api/v1/namespaces/inv/restore",
            b_cluster.node(0).url("rest")
        ))
        .bearer_auth(b_cluster.token())
        .body(damaged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        b_cluster.replica_status(0, "inv").await["checksum"],
        source_sum
    );
    let _ = Method::GET;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_added_to_a_namespace_catches_up_by_snapshot_and_votes() {
    // Members 0 and 1 found the namespace; member 2 starts on its own and is added later.
    let mut f = flare_with(
        3,
        2,
        "snapshot_every_entries = 20\nentries_kept_after_snapshot = 2\n",
    )
    .await;
    f.create_namespace("grow", "strong").await;
    let (s, b) = f
        .sql(
            0,
            "grow",
            json!([{"sql": "CREATE TABLE t (id INTEGER PRIMARY KEY, r REAL)"}]),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    for id in 0..60 {
        let (s, b) = f
            .sql(
                id % 2,
                "grow",
                json!([{"sql": "INSERT INTO t VALUES ($1, random())", "params": [id]}]),
            )
            .await;
        assert_eq!(s, 200, "{b}");
    }
    let (s, _) = f
        .rest(2, Method::GET, "/api/v1/namespaces/grow/status", None)
        .await;
    assert_eq!(
        s, 404,
        "member 2 does not serve the namespace before it is added"
    );

    // Bad input first: unknown member, unknown namespace, an existing member.
    let add = |ns: &str, member: &str| {
        let path = format!("/api/v1/namespaces/{ns}/members");
        let body = json!({"name": member});
        let f = f.api.clone();
        async move { f.rest(0, Method::POST, &path, Some(body)).await }
    };
    assert_eq!(add("grow", "nobody").await.0, 404);
    assert_eq!(add("missing", "flaredb-2").await.0, 404);
    let member0 = f.flaredb.node(0).info.name.clone();
    assert_eq!(add("grow", &member0).await.0, 409);

    let member2 = f.flaredb.node(2).info.name.clone();
    let (s, b) = add("grow", &member2).await;
    assert_eq!(s, 202, "{b}");
    assert_eq!(b["members"].as_array().unwrap().len(), 3, "{b}");

    // Member 2 catches up (the log it missed was purged: by snapshot) and becomes a voter.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = f.replica_status(2, "grow").await;
        let voters = status["membership"]["members"]
            .as_array()
            .map(|m| m.iter().filter(|m| m["voter"] == true).count())
            .unwrap_or(0);
        if voters == 3 && status["raft"]["snapshot_index"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "member 2 did not join: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, b) = f
        .sql(2, "grow", json!([{"sql": "SELECT count(*) AS n FROM t"}]))
        .await;
    assert_eq!(
        (s, b["results"][0]["rows"][0][0].as_i64()),
        (200, Some(60)),
        "{b}"
    );
    let sums = checksums(&f, "grow").await;
    assert!(
        sums.iter().all(|c| *c == sums[0]),
        "replicas differ: {sums:?}"
    );

    // It now counts towards the quorum: with member 0 down, 1 and 2 still commit.
    f.flaredb.node_mut(0).kill();
    let (s, b) = f
        .sql(1, "grow", json!([{"sql": "INSERT INTO t VALUES (100, 0)"}]))
        .await;
    assert_eq!(s, 200, "{b}");
}
