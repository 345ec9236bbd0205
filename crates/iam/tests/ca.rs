//! The internal CA: identities it issues authenticate over mutual TLS; others do not; CA
//! rotation by overlap (both trusted) and cutover (old one retired).

mod common;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use common::*;
use reqwest::Method;
use serde_json::{Value, json};
use uc_runtime::auth::StaticTokenAuthenticator;
use uc_runtime::http::{HttpConfig, HttpServer};
use uc_runtime::tls::TlsConfig;
use uc_runtime::{Secret, Shutdown};

struct Service {
    url: String,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// A service requiring client certificates from `bundle`, serving with `identity`.
async fn service(identity: &Value, bundle: &str) -> Service {
    uc_runtime::tls::ensure_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let ca = dir.path().join("bundle.pem");
    std::fs::write(&cert, identity["cert_pem"].as_str().unwrap()).unwrap();
    uc_runtime::secret::write_secret_file(&key, identity["key_pem"].as_str().unwrap().as_bytes())
        .unwrap();
    std::fs::write(&ca, bundle).unwrap();
    let config = HttpConfig {
        tls: Some(TlsConfig {
            cert_file: cert,
            key_file: key,
            client_ca_file: Some(ca),
            trusted_ca_file: None,
        }),
        shutdown_grace_secs: 1,
        ..Default::default()
    };
    let auth = Arc::new(StaticTokenAuthenticator::admin(Secret::new(
        "unused-token-0123456789abcdef0123".into(),
    )));
    let server = HttpServer::new("svc", config, auth)
        .public(Router::new().route("/v1/ping", get(|| async { "pong" })))
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let url = format!("https://localhost:{}/v1/ping", server.local_addr().port());
    let shutdown = Shutdown::new();
    let task = tokio::spawn(server.serve(shutdown.clone()));
    Service {
        url,
        shutdown,
        task,
        _dir: dir,
    }
}

impl Service {
    async fn stop(self) {
        self.shutdown.trigger();
        let _ = self.task.await;
    }
}

/// Calls `svc` trusting `bundle`, presenting `identity` (cert + key PEM) if given.
async fn ping(svc: &Service, bundle: &str, identity: Option<(String, String)>) -> bool {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(bundle.as_bytes()).unwrap());
    if let Some((cert, key)) = identity {
        builder = builder
            .identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    match builder.build().unwrap().get(&svc.url).send().await {
        Ok(r) => r.status() == 200,
        Err(_) => false,
    }
}

fn pair(v: &Value) -> Option<(String, String)> {
    Some((
        v["cert_pem"].as_str().unwrap().to_owned(),
        v["key_pem"].as_str().unwrap().to_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_identities_authenticate_over_mtls_and_rotate_by_overlap_and_cutover() {
    let cloud = up("").await;
    let issue = |name: &str| {
        let body = json!({"name": name, "sans": ["localhost", "127.0.0.1"]});
        let cloud = &cloud;
        async move {
            cloud
                .admin(Method::POST, "/v1/ca/certificates", Some(body))
                .await
        }
    };
    let server_id = issue("svc-b").await;
    let client_id = issue("svc-a").await;
    assert!(
        server_id["key_pem"]
            .as_str()
            .unwrap()
            .contains("PRIVATE KEY")
    );
    let bundle = server_id["ca_bundle_pem"].as_str().unwrap().to_owned();
    let (s, public_bundle) = call(&cloud.iam_url, None, Method::GET, "/v1/ca/bundle", None).await;
    assert_eq!(s, 200);
    let _ = public_bundle;

    let svc = service(&server_id, &bundle).await;
    assert!(
        ping(&svc, &bundle, pair(&client_id)).await,
        "CA identity accepted"
    );
    assert!(
        !ping(&svc, &bundle, None).await,
        "no client certificate: refused"
    );
    let foreign = uc_testkit::pki::TestPki::new(&["localhost"]);
    let foreign_id = Some((
        std::fs::read_to_string(&foreign.client_cert).unwrap(),
        std::fs::read_to_string(&foreign.client_key).unwrap(),
    ));
    assert!(
        !ping(&svc, &bundle, foreign_id.clone()).await,
        "another CA: refused"
    );
    svc.stop().await;

    // Rotation, overlap: the new CA issues; the bundle trusts both.
    let cas = cloud.admin(Method::POST, "/v1/ca/rotate", None).await;
    let old_ca = cas
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["state"] == "previous")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let new_server = issue("svc-b").await;
    let new_client = issue("svc-a").await;
    assert_ne!(new_client["ca_id"], client_id["ca_id"]);
    let overlap = new_server["ca_bundle_pem"].as_str().unwrap().to_owned();
    assert_eq!(overlap.matches("BEGIN CERTIFICATE").count(), 2);
    let svc = service(&new_server, &overlap).await;
    assert!(
        ping(&svc, &overlap, pair(&client_id)).await,
        "old identity during overlap"
    );
    assert!(
        ping(&svc, &overlap, pair(&new_client)).await,
        "new identity"
    );
    svc.stop().await;

    // Cutover: the old CA leaves the bundle; its identities are refused.
    let (s, b) = cloud
        .as_admin(Method::POST, &format!("/v1/ca/{old_ca}/retire"), None)
        .await;
    assert_eq!(s, 204, "{b}");
    let (_, after) = call(
        &cloud.iam_url,
        Some(&cloud.admin_token),
        Method::GET,
        "/v1/ca",
        None,
    )
    .await;
    assert_eq!(
        after
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["state"] == "retired")
            .count(),
        1
    );
    let cut = issue("svc-b").await;
    let cut_bundle = cut["ca_bundle_pem"].as_str().unwrap().to_owned();
    assert_eq!(cut_bundle.matches("BEGIN CERTIFICATE").count(), 1);
    let svc = service(&cut, &cut_bundle).await;
    assert!(
        !ping(&svc, &cut_bundle, pair(&client_id)).await,
        "old CA identity refused"
    );
    assert!(ping(&svc, &cut_bundle, pair(&new_client)).await);
    svc.stop().await;

    // Bad input and tenants.
    for bad in [
        json!({"name": "x", "sans": []}),
        json!({"name": "x", "sans": ["bad host!"]}),
        json!({"name": "x", "sans": ["a"], "days": 5000}),
        json!({"name": "X", "sans": ["a"]}),
    ] {
        let (s, _) = cloud
            .as_admin(Method::POST, "/v1/ca/certificates", Some(bad.clone()))
            .await;
        assert_eq!(s, 400, "{bad}");
    }
    cloud.tenant("alpha", "ann", "alpha-password-123").await;
    let token = cloud.token("alpha", "ann", "alpha-password-123").await;
    let (s, _) = cloud
        .as_(
            &token,
            Method::POST,
            "/v1/ca/certificates",
            Some(json!({"name": "x", "sans": ["a"]})),
        )
        .await;
    assert_eq!(s, 403, "only the operator issues identities");
}
