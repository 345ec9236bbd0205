//! The server scaffold and the client, exercised over real sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use uc_runtime::auth::{Principal, StaticTokenAuthenticator};
use uc_runtime::client::{ApiClient, ClientError, ClientOptions};
use uc_runtime::http::{HttpConfig, HttpServer, Json, Readiness};
use uc_runtime::tls::TlsConfig;
use uc_runtime::{ApiError, ErrorBody, Secret, Shutdown};

const TOKEN: &str = "test-token-0123456789abcdef0123456789";

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Echo {
    text: String,
}

#[derive(Default)]
struct Counters {
    flaky: AtomicU32,
    posts: AtomicU32,
}

fn routes(counters: Arc<Counters>) -> Router {
    Router::new()
        .route(
            "/v1/echo",
            post(|principal: Principal, Json(e): Json<Echo>| async move {
                Json(Echo {
                    text: format!("{}:{}", principal.subject, e.text),
                })
            }),
        )
        .route(
            "/v1/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                Json(Echo {
                    text: "slow done".into(),
                })
            }),
        )
        .route(
            "/v1/flaky",
            get(|State(c): State<Arc<Counters>>| async move {
                if c.flaky.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(ApiError::unavailable("warming up"))
                } else {
                    Ok(Json(Echo {
                        text: "finally".into(),
                    }))
                }
            })
            .post(|State(c): State<Arc<Counters>>| async move {
                c.posts.fetch_add(1, Ordering::SeqCst);
                Err::<Json<Echo>, _>(ApiError::unavailable("busy"))
            }),
        )
        .route(
            "/v1/conflict",
            get(|| async { Err::<(), _>(ApiError::conflict("already exists")) }),
        )
        .with_state(counters)
}

struct Running {
    addr: SocketAddr,
    shutdown: Shutdown,
    readiness: Readiness,
    task: tokio::task::JoinHandle<()>,
    counters: Arc<Counters>,
}

async fn start(config: HttpConfig) -> Running {
    let counters = Arc::new(Counters::default());
    let auth = Arc::new(StaticTokenAuthenticator::admin(Secret::new(TOKEN.into())));
    let server = HttpServer::new("test", config, auth).api(routes(counters.clone()));
    let readiness = server.readiness();
    let bound = server.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = bound.local_addr();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(bound.serve(shutdown.clone()));
    Running {
        addr,
        shutdown,
        readiness,
        task,
        counters,
    }
}

fn http() -> reqwest::Client {
    uc_runtime::tls::ensure_crypto_provider();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn client(addr: SocketAddr, token: Option<&str>) -> ApiClient {
    ApiClient::new(
        &format!("http://{addr}"),
        ClientOptions {
            token: token.map(|t| Secret::new(t.to_owned())),
            base_backoff: Duration::from_millis(10),
            ..Default::default()
        },
    )
    .unwrap()
}

async fn error_body(resp: reqwest::Response) -> ErrorBody {
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    resp.json().await.unwrap()
}

#[tokio::test]
async fn health_is_public_and_readiness_is_the_components() {
    let s = start(HttpConfig::default()).await;
    let h = http();
    let r = h
        .get(format!("http://{}/healthz", s.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = h
        .get(format!("http://{}/readyz", s.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["status"], "not_ready");
    s.readiness.set_ready();
    let r = h
        .get(format!("http://{}/readyz", s.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn api_requires_a_valid_token() {
    let s = start(HttpConfig::default()).await;
    let h = http();
    let url = format!("http://{}/v1/echo", s.addr);
    let r = h
        .post(&url)
        .json(&Echo { text: "hi".into() })
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(error_body(r).await.error.code, "unauthenticated");

    let r = h
        .post(&url)
        .bearer_auth("wrong")
        .json(&Echo { text: "hi".into() })
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let echoed: Echo = client(s.addr, Some(TOKEN))
        .post("/v1/echo", &Echo { text: "hi".into() })
        .await
        .unwrap();
    assert_eq!(echoed.text, "admin:hi");

    // /metrics is behind the token too
    let r = h
        .get(format!("http://{}/metrics", s.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn request_ids_are_propagated_or_generated_and_in_error_bodies() {
    let s = start(HttpConfig::default()).await;
    let h = http();
    let r = h
        .get(format!("http://{}/v1/conflict", s.addr))
        .bearer_auth(TOKEN)
        .header("x-request-id", "caller-chose-this")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(r.headers()["x-request-id"], "caller-chose-this");
    let body = error_body(r).await;
    assert_eq!(body.error.code, "conflict");
    assert_eq!(body.error.message, "already exists");
    assert_eq!(body.error.request_id, "caller-chose-this");

    let r = h
        .get(format!("http://{}/healthz", s.addr))
        .send()
        .await
        .unwrap();
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
}

#[tokio::test]
async fn framework_errors_use_the_one_error_shape() {
    let s = start(HttpConfig {
        max_body_bytes: 64,
        ..Default::default()
    })
    .await;
    let h = http();
    let base = format!("http://{}", s.addr);

    let r = h.get(format!("{base}/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let b = error_body(r).await;
    assert_eq!(b.error.code, "not_found");
    assert!(b.error.message.contains("/nope"));
    assert!(!b.error.request_id.is_empty());

    let r = h.delete(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(error_body(r).await.error.code, "method_not_allowed");

    let r = h
        .post(format!("{base}/v1/echo"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{\"text\": 5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_body(r).await.error.code, "invalid_argument");

    let r = h
        .post(format!("{base}/v1/echo"))
        .bearer_auth(TOKEN)
        .json(&Echo {
            text: "x".repeat(500),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(error_body(r).await.error.code, "payload_too_large");

    let r = h
        .post(format!("{base}/v1/echo"))
        .bearer_auth(TOKEN)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(error_body(r).await.error.code, "unsupported_media_type");
}

#[tokio::test]
async fn metrics_count_requests_per_route_template() {
    let s = start(HttpConfig::default()).await;
    let c = client(s.addr, Some(TOKEN));
    let _ = c.get::<serde_json::Value>("/v1/conflict").await;
    let text = http()
        .get(format!("http://{}/metrics", s.addr))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(r#"uc_http_requests_total{component="test",method="GET",route="/v1/conflict",status="409"}"#),
        "{text}"
    );
    assert!(
        text.contains("uc_http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("uc_build_info"), "{text}");
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_and_stops_accepting() {
    let s = start(HttpConfig::default()).await;
    let c = client(s.addr, Some(TOKEN));
    let in_flight = tokio::spawn(async move { c.get::<Echo>("/v1/slow").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.shutdown.trigger();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // No longer accepting.
    assert!(tokio::net::TcpStream::connect(s.addr).await.is_err());
    // The request that was in flight completes.
    let echo = in_flight.await.unwrap().unwrap();
    assert_eq!(echo.text, "slow done");
    tokio::time::timeout(Duration::from_secs(5), s.task)
        .await
        .expect("server stops after draining")
        .unwrap();
}

#[tokio::test]
async fn grace_period_bounds_shutdown() {
    let s = start(HttpConfig {
        shutdown_grace_secs: 0,
        ..Default::default()
    })
    .await;
    let c = client(s.addr, Some(TOKEN));
    let in_flight = tokio::spawn(async move { c.get::<Echo>("/v1/slow").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    s.shutdown.trigger();
    s.task.await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(1000));
    assert!(in_flight.await.unwrap().is_err(), "cut off at the deadline");
}

#[tokio::test]
async fn client_retries_idempotent_calls_only() {
    let s = start(HttpConfig::default()).await;
    let c = client(s.addr, Some(TOKEN));
    let e: Echo = c.get("/v1/flaky").await.unwrap();
    assert_eq!(e.text, "finally");
    assert_eq!(s.counters.flaky.load(Ordering::SeqCst), 3);

    let err = c.post::<_, Echo>("/v1/flaky", &()).await.unwrap_err();
    assert_eq!(err.status(), Some(503));
    assert_eq!(err.code(), Some("unavailable"));
    assert_eq!(
        s.counters.posts.load(Ordering::SeqCst),
        1,
        "plain POST is sent once"
    );

    let _ = c
        .post_idempotent::<_, Echo>("/v1/flaky", &(), "key-1")
        .await;
    assert_eq!(
        s.counters.posts.load(Ordering::SeqCst),
        1 + 4,
        "1 try + 3 retries"
    );

    let err = client(s.addr, None)
        .get::<Echo>("/v1/flaky")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("unauthenticated"));
}

#[tokio::test]
async fn client_reports_transport_failures_after_retrying() {
    // A port nobody listens on.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let err = client(addr, None).get::<Echo>("/v1/x").await.unwrap_err();
    assert!(matches!(err, ClientError::Transport { .. }), "{err}");
    assert!(err.to_string().contains("cannot connect"), "{err}");

    let s = start(HttpConfig::default()).await;
    let impatient = ApiClient::new(
        &format!("http://{}", s.addr),
        ClientOptions {
            token: Some(Secret::new(TOKEN.into())),
            timeout: Duration::from_millis(200),
            retries: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let err = impatient.get::<Echo>("/v1/slow").await.unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
}

struct Pki {
    _dir: tempfile::TempDir,
    ca: std::path::PathBuf,
    server_cert: std::path::PathBuf,
    server_key: std::path::PathBuf,
    client_pem: Vec<u8>,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client_cert = CertificateParams::new(vec!["client".into()])
        .unwrap()
        .signed_by(&client_key, &issuer)
        .unwrap();

    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    let cert = dir.path().join("server.pem");
    std::fs::write(&cert, server_cert.pem()).unwrap();
    let key = dir.path().join("server.key");
    uc_runtime::secret::write_secret_file(&key, server_key.serialize_pem().as_bytes()).unwrap();
    let client_pem = format!("{}{}", client_cert.pem(), client_key.serialize_pem()).into_bytes();
    Pki {
        _dir: dir,
        ca,
        server_cert: cert,
        server_key: key,
        client_pem,
    }
}

#[tokio::test]
async fn tls_when_a_certificate_is_configured() {
    let pki = pki();
    let s = start(HttpConfig {
        tls: Some(TlsConfig {
            cert_file: pki.server_cert.clone(),
            key_file: pki.server_key.clone(),
            client_ca_file: None,
            trusted_ca_file: None,
        }),
        ..Default::default()
    })
    .await;
    let port = s.addr.port();
    let c = ApiClient::new(
        &format!("https://localhost:{port}"),
        ClientOptions {
            token: Some(Secret::new(TOKEN.into())),
            ca_file: Some(pki.ca.clone()),
            retries: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let e: Echo = c
        .post("/v1/echo", &Echo { text: "tls".into() })
        .await
        .unwrap();
    assert_eq!(e.text, "admin:tls");

    // Plain HTTP to a TLS port gets no HTTP answer.
    assert!(
        http()
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate() {
    let pki = pki();
    let s = start(HttpConfig {
        tls: Some(TlsConfig {
            cert_file: pki.server_cert.clone(),
            key_file: pki.server_key.clone(),
            client_ca_file: Some(pki.ca.clone()),
            trusted_ca_file: None,
        }),
        ..Default::default()
    })
    .await;
    let url = format!("https://localhost:{}/healthz", s.addr.port());
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&pki.ca).unwrap()).unwrap();
    let anonymous = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_merge([ca.clone()])
        .build()
        .unwrap();
    assert!(anonymous.get(&url).send().await.is_err());

    let identified = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_merge([ca])
        .identity(reqwest::Identity::from_pem(&pki.client_pem).unwrap())
        .build()
        .unwrap();
    assert_eq!(identified.get(&url).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn world_readable_tls_key_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let pki = pki();
    std::fs::set_permissions(&pki.server_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let auth = Arc::new(StaticTokenAuthenticator::admin(Secret::new(TOKEN.into())));
    let server = HttpServer::new(
        "test",
        HttpConfig {
            tls: Some(TlsConfig {
                cert_file: pki.server_cert.clone(),
                key_file: pki.server_key.clone(),
                client_ca_file: None,
                trusted_ca_file: None,
            }),
            ..Default::default()
        },
        auth,
    );
    let err = server
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("chmod 600"), "{err}");
}

#[tokio::test]
async fn idle_and_half_open_connections_do_not_hold_up_shutdown() {
    let pki = pki();
    let s = start(HttpConfig {
        shutdown_grace_secs: 60,
        tls: Some(TlsConfig {
            cert_file: pki.server_cert.clone(),
            key_file: pki.server_key.clone(),
            client_ca_file: None,
            trusted_ca_file: None,
        }),
        ..Default::default()
    })
    .await;
    // A TCP connection that never starts its TLS handshake.
    let _silent = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(20), s.task)
        .await
        .expect("drain does not wait out the 60 s grace for a connection with no request")
        .unwrap();
}
