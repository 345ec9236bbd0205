//! A real cloud for prismnet's tests: `ultracloud up` (chainfire + flaredb + iam) under
//! uc-testkit, prismnet's flaredb namespace created through flaredb's admin API, and
//! prismnet's server started in-process against it (as many instances as a test wants).

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use uc_runtime::auth::Authenticator;
use uc_runtime::{NodeContext, Secret, Shutdown};
use uc_testkit::Cluster;

/// Extra `up` config: none (testkit gives every component, prismnet included, a free port;
/// `up`'s own agent never converges because nothing is bound to its host).
pub const UP_EXTRA: &str = "";

pub struct Cloud {
    pub cluster: Cluster,
    pub iam_url: String,
    pub flaredb_url: String,
    pub admin_token: String,
    pub dir: tempfile::TempDir,
    pub password_file: PathBuf,
}

pub struct Api {
    pub url: String,
    pub shutdown: Shutdown,
    pub running: prismnet::server::Running,
}

impl Api {
    pub async fn stop(self) {
        self.shutdown.trigger();
        let _ = self.running.task.await;
    }
}

pub async fn cloud() -> Cloud {
    let cluster = Cluster::all_in_one(UP_EXTRA)
        .start()
        .await
        .expect("ultracloud up starts");
    let info = cluster.node(0).info.clone();
    let admin_token = std::fs::read_to_string(info.data_dir.join("secrets/admin-token"))
        .unwrap()
        .trim()
        .to_owned();
    let flaredb_url = info.url("rest");
    let dir = tempfile::tempdir().unwrap();
    let (s, created) = call(
        &flaredb_url,
        Some(&admin_token),
        reqwest::Method::POST,
        "/api/v1/namespaces",
        Some(json!({"name": "prismnet_test", "mode": "strong"})),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let password_file = dir.path().join("password");
    uc_runtime::secret::write_secret_file(
        &password_file,
        created["password"].as_str().unwrap().as_bytes(),
    )
    .unwrap();
    Cloud {
        iam_url: info.url("iam"),
        cluster,
        flaredb_url,
        admin_token,
        dir,
        password_file,
    }
}

impl Cloud {
    pub fn context(&self, bind: IpAddr) -> NodeContext {
        let admin = Secret::new(self.admin_token.clone());
        let verifier = Arc::new(uc_runtime::token::Verifier::new(
            "ultracloud-iam",
            uc_runtime::token::DEFAULT_AUDIENCE,
        ));
        let tenant_auth: Arc<dyn Authenticator> =
            Arc::new(uc_runtime::token::JwksAuthenticator::new(
                verifier,
                format!("{}/v1/jwks", self.iam_url),
                Default::default(),
                Some(admin.clone()),
            ));
        let auth: Arc<dyn Authenticator> = Arc::new(
            uc_runtime::auth::StaticTokenAuthenticator::admin(admin.clone()),
        );
        NodeContext {
            node_name: "test-node".into(),
            bind,
            data_dir: self.dir.path().to_owned(),
            http: Default::default(),
            auth,
            tenant_auth,
            service_token: admin,
        }
    }

    /// A prismnet server on a free port of `bind`.
    pub async fn api_on(&self, bind: IpAddr) -> Api {
        let config = prismnet::PrismnetConfig {
            port: 0,
            flaredb_endpoint: Some(self.flaredb_url.clone()),
            flaredb_namespace: "prismnet_test".into(),
            flaredb_password_file: Some(self.password_file.clone()),
            network_host: Some("net-host".into()),
        };
        let shutdown = Shutdown::new();
        let running = prismnet::server::start(
            &self.context(bind),
            config,
            prismnet::server::Bootstrap {
                secrets_dir: self.dir.path().to_owned(),
                default_flaredb: self.flaredb_url.clone(),
            },
            shutdown.clone(),
        )
        .await
        .expect("prismnet starts");
        Api {
            url: running.url.clone(),
            shutdown,
            running,
        }
    }

    pub async fn api(&self) -> Api {
        self.api_on(IpAddr::V4(Ipv4Addr::LOCALHOST)).await
    }

    async fn iam_admin(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let (s, b) = call(
            &self.iam_url,
            Some(&self.admin_token),
            method,
            path,
            Some(body),
        )
        .await;
        assert!((200..300).contains(&s), "{path}: {s} {b}");
        b
    }

    /// An organization with a user bound to `role`; the user's access token.
    pub async fn tenant(&self, org: &str, role: &str) -> String {
        let o = self
            .iam_admin(reqwest::Method::POST, "/v1/orgs", json!({"name": org}))
            .await;
        let org_id = o["id"].as_str().unwrap().to_owned();
        let u = self
            .iam_admin(
                reqwest::Method::POST,
                &format!("/v1/orgs/{org_id}/users"),
                json!({"name": "alice", "password": "correct horse battery"}),
            )
            .await;
        self.iam_admin(
            reqwest::Method::POST,
            &format!("/v1/orgs/{org_id}/bindings"),
            json!({"principal_id": u["id"], "role": role}),
        )
        .await;
        let (s, t) = call(
            &self.iam_url,
            None,
            reqwest::Method::POST,
            "/v1/tokens",
            Some(json!({"grant_type": "password", "org": org_id, "username": "alice", "password": "correct horse battery"})),
        )
        .await;
        assert_eq!(s, 200, "{t}");
        t["access_token"].as_str().unwrap().to_owned()
    }
}

/// One HTTP call: (status, JSON body or Null).
pub async fn call(
    base: &str,
    token: Option<&str>,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    call_with(base, token, method, path, body, None).await
}

pub async fn call_with(
    base: &str,
    token: Option<&str>,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
    idempotency_key: Option<&str>,
) -> (u16, Value) {
    let mut req = uc_testkit::http_client()
        .request(method, format!("{base}{path}"))
        .timeout(Duration::from_secs(60));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(k) = idempotency_key {
        req = req.header("idempotency-key", k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("server answers");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Calls against one prismnet with one token.
#[derive(Clone)]
pub struct Net {
    pub url: String,
    pub token: String,
}

impl Net {
    pub fn new(url: &str, token: &str) -> Self {
        Self {
            url: url.to_owned(),
            token: token.to_owned(),
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        call(&self.url, Some(&self.token), method, path, body).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    /// A create that must succeed.
    pub async fn create(&self, path: &str, body: Value) -> Value {
        let (s, b) = self.post(path, body).await;
        assert_eq!(s, 201, "POST {path}: {b}");
        b
    }

    pub async fn ok(&self, path: &str) -> Value {
        let (s, b) = self.get(path).await;
        assert_eq!(s, 200, "GET {path}: {b}");
        b
    }

    /// Every item of a list (follows the pages).
    pub async fn all(&self, path: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        let sep = if path.contains('?') { '&' } else { '?' };
        loop {
            let p = match &token {
                Some(t) => format!("{path}{sep}page_token={t}"),
                None => path.to_owned(),
            };
            let page = self.ok(&p).await;
            items.extend(page["items"].as_array().unwrap().iter().cloned());
            match page["next_page_token"].as_str() {
                Some(t) => token = Some(t.to_owned()),
                None => return items,
            }
        }
    }

    /// A VPC with one subnet; (vpc, subnet).
    pub async fn network(&self, vpc_cidr: &str, subnet_cidr: &str) -> (Value, Value) {
        let vpc = self
            .create("/v1/vpcs", json!({"name": "vpc", "cidr": vpc_cidr}))
            .await;
        let subnet = self
            .create(
                "/v1/subnets",
                json!({"vpc_id": vpc["id"], "name": "subnet", "cidr": subnet_cidr}),
            )
            .await;
        (vpc, subnet)
    }
}

pub fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}
