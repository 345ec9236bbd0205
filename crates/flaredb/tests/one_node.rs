//! One flaredb member: psql and tokio-postgres with namespace credentials, REST and the wire
//! protocol on the same data, KV, and bad input.

mod common;

use std::process::Command;

use common::*;
use reqwest::Method;
use serde_json::json;
use tokio_postgres::error::SqlState;

fn psql(node: &uc_testkit::NodeInfo, ns: &str, password: &str, sql: &str) -> std::process::Output {
    Command::new("psql")
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .args([
            "-h",
            &node.ip.to_string(),
            "-p",
            &node.port("pg").to_string(),
            "-U",
            ns,
            "-d",
            ns,
        ])
        .args(["-v", "ON_ERROR_STOP=1", "-X", "-A", "-t", "-c", sql])
        .output()
        .expect("psql is installed (postgresql-client)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_drivers_and_rest_share_one_namespace() {
    let f = flare(1, "").await;
    let node = f.node(0);
    let password = f.create_namespace("app", "strong").await;
    let other_password = f.create_namespace("other", "eventual").await;

    // psql with the namespace credential creates a table.
    let out = psql(
        &node,
        "app",
        &password,
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, at TEXT DEFAULT CURRENT_TIMESTAMP)",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A Rust driver inserts with $1 parameters and reads back.
    let pg = f.pg(0, "app", &password).await.unwrap();
    for (id, name) in [(1i64, "ada"), (2, "grace")] {
        let n = pg
            .execute(
                "INSERT INTO users (id, name) VALUES ($1, $2)",
                &[&id, &name],
            )
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
    let rows = pg
        .query("SELECT id, name FROM users ORDER BY id", &[])
        .await
        .unwrap();
    let got: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, vec![(1, "ada".to_string()), (2, "grace".to_string())]);

    // SQLSTATEs.
    let e = pg
        .execute(
            "INSERT INTO users (id, name) VALUES ($1, $2)",
            &[&3i64, &"ada"],
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::UNIQUE_VIOLATION), "{e:?}");
    let e = pg.simple_query("SELEC * FROM users").await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::SYNTAX_ERROR), "{e:?}");
    let e = pg.simple_query("SELECT * FROM nowhere").await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::UNDEFINED_TABLE), "{e:?}");

    // psql sees it, and so does REST; and REST writes are seen by the wire protocol.
    let out = psql(
        &node,
        "app",
        &password,
        "SELECT name FROM users ORDER BY id",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ada\ngrace\n");
    let (status, body) = f
        .sql(
            0,
            "app",
            json!([{"sql": "SELECT count(*) AS n FROM users"}]),
        )
        .await;
    assert_eq!(
        (status, body["results"][0]["rows"][0][0].clone()),
        (200, json!(2)),
        "{body}"
    );
    let (status, body) = f
        .sql(0, "app", json!([{"sql": "INSERT INTO users (id, name) VALUES ($1, $2)", "params": [3, "linus"]}]))
        .await;
    assert_eq!(status, 200, "{body}");
    let row = pg
        .query_one("SELECT name FROM users WHERE id = $1", &[&3i64])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "linus");
    let (status, body) = f
        .sql(
            0,
            "app",
            json!([{"sql": "INSERT INTO users (id, name) VALUES (9, 'ada')"}]),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("unique_violation")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("SQLSTATE 23505"),
        "{body}"
    );

    // Wrong password, and another namespace's credential, are refused.
    let e = f.pg(0, "app", "wrong-password").await.unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::INVALID_PASSWORD), "{e:?}");
    let node_pg = format!(
        "host={} port={} user=other dbname=app password={other_password}",
        node.ip,
        node.port("pg")
    );
    let refused = tokio_postgres::connect(&node_pg, tokio_postgres::NoTls).await;
    assert!(
        refused.is_err(),
        "namespace credential of `other` opened `app`"
    );
    let out = psql(&node, "app", &other_password, "SELECT 1");
    assert!(!out.status.success());

    // REST with a namespace credential (Basic): only its own namespace.
    let http = uc_testkit::http_client();
    let r = http
        .post(format!("{}/api/v1/sql", node.url("rest")))
        .basic_auth("other", Some(&other_password))
        .json(&json!({"statements": [{"sql": "CREATE TABLE t (a)"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .post(format!("{}/api/v1/sql", node.url("rest")))
        .basic_auth("other", Some(&other_password))
        .json(&json!({"namespace": "app", "statements": [{"sql": "SELECT * FROM users"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "another namespace is not found, not forbidden"
    );
    let r = http
        .get(format!("{}/api/v1/tables?namespace=app", node.url("rest")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (_, tables) = f
        .rest(0, Method::GET, "/api/v1/tables?namespace=app", None)
        .await;
    assert_eq!(tables[0]["name"], "users", "{tables}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_endpoints_and_bad_input() {
    let f = flare(1, "").await;
    f.create_namespace("kv", "strong").await;
    let put = |key: &str, body: serde_json::Value| {
        let path = format!("/api/v1/kv/{key}");
        let f = &f;
        async move { f.rest(0, Method::PUT, &path, Some(body)).await }
    };
    let (s, b) = put("a", json!({"namespace": "kv", "value": "1"})).await;
    assert_eq!((s, b["version"].as_i64()), (200, Some(1)), "{b}");
    let (s, b) = put(
        "a",
        json!({"namespace": "kv", "value": "2", "expected_version": 1}),
    )
    .await;
    assert_eq!((s, b["version"].as_i64()), (200, Some(2)), "{b}");
    let (s, b) = put(
        "a",
        json!({"namespace": "kv", "value": "3", "expected_version": 1}),
    )
    .await;
    assert_eq!(s, 409, "stale compare-and-set: {b}");
    let (s, _) = put(
        "a",
        json!({"namespace": "kv", "value": "x", "expected_version": 0}),
    )
    .await;
    assert_eq!(s, 409, "create-only on an existing key");
    for k in ["p/1", "p/2", "p/3", "q/1"] {
        let (s, b) = put(k, json!({"namespace": "kv", "value": k})).await;
        assert_eq!(s, 200, "{k}: {b}");
    }
    let (_, page) = f
        .rest(
            0,
            Method::GET,
            "/api/v1/kv?namespace=kv&prefix=p/&limit=2",
            None,
        )
        .await;
    let keys: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["p/1", "p/2"]);
    let token = page["next_page_token"].as_str().unwrap().to_owned();
    let (_, page) = f
        .rest(
            0,
            Method::GET,
            &format!("/api/v1/kv?namespace=kv&prefix=p/&limit=2&page_token={token}"),
            None,
        )
        .await;
    assert_eq!(page["items"][0]["key"], "p/3");
    assert!(page["next_page_token"].is_null());
    let (s, b) = f
        .rest(0, Method::GET, "/api/v1/kv/a?namespace=kv", None)
        .await;
    assert_eq!((s, b["value"].as_str()), (200, Some("2")));
    let (s, _) = f
        .rest(0, Method::DELETE, "/api/v1/kv/a?namespace=kv", None)
        .await;
    assert_eq!(s, 204);
    let (s, _) = f
        .rest(0, Method::GET, "/api/v1/kv/a?namespace=kv", None)
        .await;
    assert_eq!(s, 404);

    // Bad input: clean errors, nothing changed.
    f.sql(
        0,
        "kv",
        json!([{"sql": "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"}]),
    )
    .await;
    let before = f.replica_status(0, "kv").await["checksum"].clone();
    let (s, b) = f
        .sql(0, "kv", json!([{"sql": "INSER INTO t VALUES (1)"}]))
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("syntax_error")),
        "{b}"
    );
    let (s, b) = f
        .sql(
            0,
            "kv",
            json!([{"sql": "INSERT INTO t VALUES ($1, $2)", "params": [1]}]),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    let (s, b) = f
        .sql(
            0,
            "kv",
            json!([{"sql": "INSERT INTO t VALUES ($1)", "params": [{"no": "such type"}]}]),
        )
        .await;
    assert_eq!(s, 400, "wrong parameter type: {b}");
    let (s, b) = f
        .sql(
            0,
            "kv",
            json!([
                {"sql": "INSERT INTO t VALUES (1, 'a')"},
                {"sql": "INSERT INTO t VALUES (1, 'duplicate')"}
            ]),
        )
        .await;
    assert_eq!(s, 409, "{b}");
    let (s, b) = f
        .sql(0, "kv", json!([{"sql": "SELECT last_insert_rowid()"}]))
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("not_supported")),
        "{b}"
    );
    let big = "x".repeat(5 * 1024 * 1024);
    let (s, _) = f
        .sql(
            0,
            "kv",
            json!([{"sql": "INSERT INTO t VALUES (2, $1)", "params": [big]}]),
        )
        .await;
    assert_eq!(s, 413, "oversized request");
    let (s, b) = f
        .sql(0, "kv", json!([{"sql": "SELECT 1", "bogus": true}]))
        .await;
    assert_eq!(s, 400, "unknown field: {b}");
    assert_eq!(
        f.replica_status(0, "kv").await["checksum"],
        before,
        "nothing changed"
    );

    // A dropped namespace is gone for every protocol.
    let (s, _) = f
        .rest(0, Method::DELETE, "/api/v1/namespaces/kv", None)
        .await;
    assert_eq!(s, 204);
    let (s, b) = f.sql(0, "kv", json!([{"sql": "SELECT 1"}])).await;
    assert_eq!(s, 404, "{b}");
    let (s, _) = f
        .rest(0, Method::DELETE, "/api/v1/namespaces/kv", None)
        .await;
    assert_eq!(s, 404);
    let (s, _) = f
        .rest(
            0,
            Method::POST,
            "/api/v1/namespaces",
            Some(json!({"name": "Bad-Name", "mode": "strong"})),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = f
        .rest(
            0,
            Method::POST,
            "/api/v1/namespaces",
            Some(json!({"name": "ok", "mode": "sometimes"})),
        )
        .await;
    assert_eq!(s, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_typed_sql_and_kv() {
    use flaredb::client::{FlaredbClient, FlaredbError, params};
    let f = flare(1, "").await;
    let password = f.create_namespace("svc", "strong").await;
    let url = f.api.rest_urls[0].clone();
    let db = FlaredbClient::for_namespace(
        &url,
        "svc",
        uc_runtime::Secret::new(password),
        Default::default(),
    )
    .unwrap();

    db.execute(
        "CREATE TABLE vm (id TEXT PRIMARY KEY, vcpus INTEGER NOT NULL, note TEXT)",
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(
        db.execute(
            "INSERT INTO vm VALUES ($1, $2, $3), ($4, $5, $6)",
            params!["a", 2, None::<String>, "b", 4, "big"],
        )
        .await
        .unwrap(),
        2
    );
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Vm {
        id: String,
        vcpus: i64,
        note: Option<String>,
    }
    let vms: Vec<Vm> = db
        .query(
            "SELECT id, vcpus, note FROM vm WHERE vcpus >= $1 ORDER BY id",
            params![1],
        )
        .await
        .unwrap();
    assert_eq!(
        vms,
        vec![
            Vm {
                id: "a".into(),
                vcpus: 2,
                note: None
            },
            Vm {
                id: "b".into(),
                vcpus: 4,
                note: Some("big".into())
            }
        ]
    );
    let e = db
        .execute("INSERT INTO vm VALUES ($1, 1, NULL)", params!["a"])
        .await
        .unwrap_err();
    assert!(e.is_unique_violation(), "{e}");
    let e = db.execute("SELEC 1", vec![]).await.unwrap_err();
    assert_eq!(e.sqlstate(), Some("42601"), "{e}");
    assert_eq!(db.tables().await.unwrap()[0].name, "vm");

    // KV: typed values, compare-and-set, keys with slashes and spaces, pages, delete.
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Lease {
        holder: String,
    }
    let v1 = db
        .kv_put_json(
            "leases/vm a",
            &Lease {
                holder: "n1".into(),
            },
            Some(0),
        )
        .await
        .unwrap();
    assert_eq!(v1, 1);
    let e = db
        .kv_put_json(
            "leases/vm a",
            &Lease {
                holder: "n2".into(),
            },
            Some(0),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, FlaredbError::VersionConflict(_)), "{e}");
    let v2 = db
        .kv_put_json(
            "leases/vm a",
            &Lease {
                holder: "n2".into(),
            },
            Some(v1),
        )
        .await
        .unwrap();
    assert_eq!(v2, 2);
    let (lease, version) = db
        .kv_get_json::<Lease>("leases/vm a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((lease.holder.as_str(), version), ("n2", 2));
    for i in 0..7 {
        db.kv_put(&format!("many/{i:05}"), "x", None).await.unwrap();
    }
    db.kv_put("manz", "outside the prefix", None).await.unwrap();
    let first = db.kv_scan("many/", 3, None).await.unwrap();
    assert_eq!(first.items.len(), 3);
    let second = db
        .kv_scan("many/", 3, first.next_page_token.as_deref())
        .await
        .unwrap();
    assert_eq!(second.items[0].key, "many/00003");
    let all = db.kv_list("many/").await.unwrap();
    assert_eq!(all.len(), 7);
    assert!(all.windows(2).all(|w| w[0].key < w[1].key));
    assert!(db.kv_delete("leases/vm a").await.unwrap());
    assert!(!db.kv_delete("leases/vm a").await.unwrap());
    assert!(db.kv_get("leases/vm a").await.unwrap().is_none());

    // The operator's client reaches the same namespace.
    let op = FlaredbClient::as_operator(
        &url,
        "svc",
        uc_runtime::client::ClientOptions {
            token: Some(uc_runtime::Secret::new(f.api.token.clone())),
            ..Default::default()
        },
    )
    .unwrap();
    let n: Vec<serde_json::Value> = op
        .query("SELECT count(*) AS n FROM vm", vec![])
        .await
        .unwrap();
    assert_eq!(n[0]["n"], 2);
    assert_eq!(op.kv_list("many/").await.unwrap().len(), 7);
}
