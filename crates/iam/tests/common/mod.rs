//! `ultracloud up` (chainfire + flaredb + iam in one process) under uc-testkit, and a small
//! HTTP helper for iam's API.

#![allow(dead_code)]

use std::time::Duration;

use serde_json::{Value, json};
use uc_testkit::Cluster;

pub struct Cloud {
    pub cluster: Cluster,
    pub iam_url: String,
    pub admin_token: String,
}

pub async fn up(extra: &'static str) -> Cloud {
    let cluster = Cluster::all_in_one(extra)
        .start()
        .await
        .expect("ultracloud up starts");
    let info = cluster.node(0).info.clone();
    let admin_token = std::fs::read_to_string(info.data_dir.join("secrets/admin-token"))
        .unwrap()
        .trim()
        .to_owned();
    Cloud {
        iam_url: info.url("iam"),
        cluster,
        admin_token,
    }
}

/// One call to iam: (status, JSON body or Null).
pub async fn call(
    base: &str,
    token: Option<&str>,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = uc_testkit::http_client()
        .request(method, format!("{base}{path}"))
        .timeout(Duration::from_secs(20));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("iam answers");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

impl Cloud {
    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (s, b) = call(&self.iam_url, Some(&self.admin_token), method, path, body).await;
        assert!((200..300).contains(&s), "{path}: {s} {b}");
        b
    }

    /// The operator's call, returned as is (no status check).
    pub async fn as_admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        call(&self.iam_url, Some(&self.admin_token), method, path, body).await
    }

    pub async fn as_(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        call(&self.iam_url, Some(token), method, path, body).await
    }

    /// A token for a user by password.
    pub async fn login(&self, org: &str, user: &str, password: &str) -> (u16, Value) {
        call(
            &self.iam_url,
            None,
            reqwest::Method::POST,
            "/v1/tokens",
            Some(json!({"grant_type": "password", "org": org, "username": user, "password": password})),
        )
        .await
    }

    pub async fn token(&self, org: &str, user: &str, password: &str) -> String {
        let (s, b) = self.login(org, user, password).await;
        assert_eq!(s, 200, "{b}");
        b["access_token"].as_str().unwrap().to_owned()
    }

    /// An organization with an admin user (bound to the built-in admin role); returns
    /// (org id, user id).
    pub async fn tenant(&self, org: &str, user: &str, password: &str) -> (String, String) {
        let o = self
            .admin(
                reqwest::Method::POST,
                "/v1/orgs",
                Some(json!({"name": org})),
            )
            .await;
        let org_id = o["id"].as_str().unwrap().to_owned();
        let u = self
            .admin(
                reqwest::Method::POST,
                &format!("/v1/orgs/{org_id}/users"),
                Some(json!({"name": user, "password": password})),
            )
            .await;
        let user_id = u["id"].as_str().unwrap().to_owned();
        self.admin(
            reqwest::Method::POST,
            &format!("/v1/orgs/{org_id}/bindings"),
            Some(json!({"principal_id": user_id, "role": "admin"})),
        )
        .await;
        (org_id, user_id)
    }
}
