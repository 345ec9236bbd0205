//! flaredb process-level test helpers: a chainfire (for the namespace catalog) and N real
//! `ultracloud serve flaredb` processes sharing it.

#![allow(dead_code)]

use std::time::Duration;

use serde_json::{Value, json};
use uc_testkit::{Cluster, NodeInfo, Ready};

pub struct Flare {
    /// One chainfire member holding the catalog.
    pub chainfire: Cluster,
    pub flaredb: Cluster,
    /// REST access to every member (cheap to clone into tasks).
    pub api: Api,
}

/// The operator's REST access to the members, usable from concurrent tasks.
#[derive(Clone)]
pub struct Api {
    pub rest_urls: Vec<String>,
    pub token: String,
}

const RAFT: &str = "heartbeat_interval_ms = 50\nelection_timeout_min_ms = 300\nelection_timeout_max_ms = 600\nrequest_timeout_ms = 5000\n";

/// Starts chainfire, then `n` flaredb members; `extra_raft` is added to `[flaredb.raft]`.
pub async fn flare(n: usize, extra_raft: &'static str) -> Flare {
    flare_with(n, n, extra_raft).await
}

/// Like [`flare`], but only the first `founders` members place new namespaces on each
/// other; the rest list the founders and themselves (nodes that join later).
pub async fn flare_with(n: usize, founders: usize, extra_raft: &'static str) -> Flare {
    let chainfire = Cluster::builder(1)
        .ports(&["client", "peer", "admin", "node"])
        .config(|node, _| {
            format!(
                "[node]\nname = \"cf\"\nbind = \"{ip}\"\nport = {np}\ndata_dir = \"{data}\"\n[auth]\nadmin_token_file = \"{tok}\"\n\
                 [http]\nshutdown_grace_secs = 1\n[chainfire]\nclient_port = {c}\npeer_port = {p}\nadmin_port = {a}\n",
                ip = node.ip,
                np = node.port("node"),
                data = node.data_dir.display(),
                tok = node.admin_token_file.display(),
                c = node.port("client"),
                p = node.port("peer"),
                a = node.port("admin"),
            )
        })
        .args(|node| vec!["serve".into(), "chainfire".into(), "--config".into(), node.config_path.display().to_string()])
        .ready(Ready::http("admin", "/readyz"))
        .start()
        .await
        .expect("chainfire starts");
    let cf = chainfire.node(0).info.clone();
    let token_file = cf.admin_token_file.clone();
    let endpoint = format!("http://{}:{}", cf.ip, cf.port("client"));
    let mut flaredb = Cluster::builder(n)
        .ports(&["rest", "pg", "peer", "node"])
        .config(move |node, all| {
            let initial: Vec<String> = all
                .iter()
                .enumerate()
                .filter(|(i, m)| *i < founders || m.name == node.name)
                .map(|(_, m)| m)
                .map(|m| format!("\"{}=http://{}:{}\"", m.name, m.ip, m.port("peer")))
                .collect();
            format!(
                "[node]\nname = \"{name}\"\nbind = \"{ip}\"\nport = {np}\ndata_dir = \"{data}\"\n[auth]\nadmin_token_file = \"{tok}\"\n\
                 [http]\nshutdown_grace_secs = 1\n[flaredb]\nrest_port = {r}\npg_port = {pg}\npeer_port = {p}\n\
                 chainfire_endpoint = \"{endpoint}\"\ninitial_cluster = [{initial}]\n[flaredb.raft]\n{RAFT}{extra_raft}",
                name = node.name,
                ip = node.ip,
                np = node.port("node"),
                data = node.data_dir.display(),
                tok = token_file.display(),
                r = node.port("rest"),
                pg = node.port("pg"),
                p = node.port("peer"),
                initial = initial.join(", "),
            )
        })
        .args(|node| vec!["serve".into(), "flaredb".into(), "--config".into(), node.config_path.display().to_string()])
        .ready(Ready::http("rest", "/readyz"))
        .prepare()
        .expect("flaredb prepares");
    for i in 0..n {
        flaredb.spawn_node(i).unwrap();
    }
    for i in 0..n {
        flaredb.wait_ready(i).await.unwrap();
    }
    let api = Api {
        rest_urls: flaredb.nodes().map(|n| n.url("rest")).collect(),
        token: chainfire.admin_token().to_owned(),
    };
    Flare {
        chainfire,
        flaredb,
        api,
    }
}

impl Api {
    /// The operator's REST call to member `i`; returns (status, JSON body).
    pub async fn rest(
        &self,
        i: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = uc_testkit::http_client()
            .request(method, format!("{}{path}", self.rest_urls[i]))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(20));
        if let Some(b) = body {
            req = req.json(&b);
        }
        match req.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.json().await.unwrap_or(Value::Null))
            }
            Err(e) => (0, json!({"transport": e.to_string()})),
        }
    }

    /// Creates a namespace through member 0; returns its password.
    pub async fn create_namespace(&self, name: &str, mode: &str) -> String {
        let (status, body) = self
            .rest(
                0,
                reqwest::Method::POST,
                "/api/v1/namespaces",
                Some(json!({"name": name, "mode": mode})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["password"].as_str().unwrap().to_owned()
    }

    /// SQL through member `i` as the operator.
    pub async fn sql(&self, i: usize, ns: &str, statements: Value) -> (u16, Value) {
        self.rest(
            i,
            reqwest::Method::POST,
            "/api/v1/sql",
            Some(json!({"namespace": ns, "statements": statements})),
        )
        .await
    }

    /// Waits until every member serves `ns` (the catalog watch starts groups).
    pub async fn wait_served_everywhere(&self, ns: &str) {
        for i in 0..self.rest_urls.len() {
            for _ in 0..200 {
                let (status, _) = self
                    .rest(
                        i,
                        reqwest::Method::GET,
                        &format!("/api/v1/namespaces/{ns}/status"),
                        None,
                    )
                    .await;
                if status == 200 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    pub async fn replica_status(&self, i: usize, ns: &str) -> Value {
        self.rest(
            i,
            reqwest::Method::GET,
            &format!("/api/v1/namespaces/{ns}/status"),
            None,
        )
        .await
        .1
    }

    /// The member index leading `ns`, if one does.
    pub async fn leader_of(&self, ns: &str) -> Option<usize> {
        for i in 0..self.rest_urls.len() {
            let s = self.replica_status(i, ns).await;
            if s["raft"]["state"] == "leader" {
                return Some(i);
            }
        }
        None
    }

    pub async fn wait_leader_of(&self, ns: &str) -> usize {
        for _ in 0..300 {
            if let Some(i) = self.leader_of(ns).await {
                return i;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no leader for namespace {ns}");
    }
}

impl std::ops::Deref for Flare {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Flare {
    pub fn token(&self) -> &str {
        self.chainfire.admin_token()
    }

    pub fn node(&self, i: usize) -> NodeInfo {
        self.flaredb.node(i).info.clone()
    }

    /// A tokio-postgres connection to member `i` with a namespace credential.
    pub async fn pg(
        &self,
        i: usize,
        ns: &str,
        password: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let node = self.node(i);
        let (client, connection) = tokio_postgres::connect(
            &format!(
                "host={} port={} user={ns} dbname={ns} password={password} connect_timeout=10",
                node.ip,
                node.port("pg")
            ),
            tokio_postgres::NoTls,
        )
        .await?;
        tokio::spawn(connection);
        Ok(client)
    }
}
