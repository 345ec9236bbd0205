//! Access tokens end to end: a service built with the runtime's `HttpServer` and a
//! `JwksAuthenticator`, a stand-in iam publishing its key set, and requests over real sockets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::routing::{delete, get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use uc_runtime::auth::{Principal, StaticTokenAuthenticator, require_permission};
use uc_runtime::client::{ApiClient, ClientError, ClientOptions};
use uc_runtime::http::{HttpConfig, HttpServer, Json};
use uc_runtime::token::{
    Claims, DEFAULT_AUDIENCE, JwkSet, JwksAuthenticator, SigningKey, Verifier,
};
use uc_runtime::{ApiError, Secret, Shutdown};

const ISS: &str = "https://iam.test";
const ADMIN: &str = "node-admin-token-0123456789abcdef";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(perms: &[&str]) -> Claims {
    let now = now();
    Claims {
        iss: ISS.into(),
        sub: "u-42".into(),
        aud: DEFAULT_AUDIENCE.into(),
        exp: now + 600,
        nbf: now - 5,
        iat: now - 5,
        jti: "t-1".into(),
        kind: "user".into(),
        org: Some("o-1".into()),
        project: Some("p-1".into()),
        perms: perms.iter().map(|p| (*p).to_owned()).collect(),
    }
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

struct Running {
    addr: SocketAddr,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.shutdown.trigger();
        self.task.await.unwrap();
    }
}

async fn serve(server: HttpServer) -> Running {
    let bound = server.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = bound.local_addr();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(bound.serve(shutdown.clone()));
    Running {
        addr,
        shutdown,
        task,
    }
}

/// A stand-in for iam: the public `GET /v1/jwks`, counting fetches.
async fn start_iam(keys: JwkSet) -> (Running, Arc<Mutex<JwkSet>>, Arc<AtomicUsize>) {
    let keys = Arc::new(Mutex::new(keys));
    let hits = Arc::new(AtomicUsize::new(0));
    let routes = {
        let (keys, hits) = (keys.clone(), hits.clone());
        Router::new().route(
            "/v1/jwks",
            get(move || {
                let (keys, hits) = (keys.clone(), hits.clone());
                async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    // Slow enough that concurrent requests overlap the fetch.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let set = keys.lock().unwrap().clone();
                    Json(set)
                }
            }),
        )
    };
    let auth = Arc::new(StaticTokenAuthenticator::admin(Secret::new(ADMIN.into())));
    let server = HttpServer::new("iam", HttpConfig::default(), auth).public(routes);
    (serve(server).await, keys, hits)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct WhoAmI {
    subject: String,
    kind: String,
    org: Option<String>,
    project: Option<String>,
    admin: bool,
}

/// A service whose API is behind a `JwksAuthenticator`.
async fn start_service(verifier: Arc<Verifier>, jwks_url: String) -> Running {
    let auth = Arc::new(JwksAuthenticator::new(
        verifier,
        jwks_url,
        ClientOptions {
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            retries: 0,
            ..Default::default()
        },
        Some(Secret::new(ADMIN.into())),
    ));
    let routes = Router::new()
        .route(
            "/v1/whoami",
            get(|p: Principal| async move {
                Json(WhoAmI {
                    subject: p.subject,
                    kind: p.kind,
                    org: p.org,
                    project: p.project,
                    admin: p.admin,
                })
            }),
        )
        .route(
            "/v1/vms",
            post(|| async { Json(json!({"created": true})) })
                .route_layer(require_permission("plasmavmc.vm.create")),
        )
        .route(
            "/v1/vms/{id}",
            delete(|p: Principal| async move {
                p.require("plasmavmc.vm.delete")?;
                Ok::<_, ApiError>(Json(json!({"deleted": true})))
            }),
        );
    serve(HttpServer::new("svc", HttpConfig::default(), auth).api(routes)).await
}

fn client(addr: SocketAddr, token: &str) -> ApiClient {
    ApiClient::new(
        &format!("http://{addr}"),
        ClientOptions {
            token: Some(Secret::new(token.to_owned())),
            retries: 0,
            ..Default::default()
        },
    )
    .unwrap()
}

async fn whoami(addr: SocketAddr, token: &str) -> Result<WhoAmI, ClientError> {
    client(addr, token).get("/v1/whoami").await
}

#[track_caller]
fn assert_status(result: Result<WhoAmI, ClientError>, status: u16, code: &str, what: &str) {
    match result {
        Err(e) => {
            assert_eq!(e.status(), Some(status), "{what}: {e}");
            assert_eq!(e.code(), Some(code), "{what}: {e}");
        }
        Ok(w) => panic!("{what}: accepted as {}", w.subject),
    }
}

#[tokio::test]
async fn tokens_are_verified_by_a_real_server() {
    let key = SigningKey::generate("k1");
    let (iam, _, hits) = start_iam(JwkSet {
        keys: vec![key.public_jwk()],
    })
    .await;
    let svc = start_service(
        Arc::new(Verifier::new(ISS, DEFAULT_AUDIENCE)),
        format!("http://{}/v1/jwks", iam.addr),
    )
    .await;
    let addr = svc.addr;

    // A good token: the principal reaches the handler.
    let good = key.sign(&claims(&[])).unwrap();
    let me = whoami(addr, &good).await.unwrap();
    assert_eq!(
        (me.subject.as_str(), me.kind.as_str(), me.admin),
        ("u-42", "user", false)
    );
    assert_eq!(me.org.as_deref(), Some("o-1"));
    assert_eq!(me.project.as_deref(), Some("p-1"));
    // The admin token is the operator.
    let me = whoami(addr, ADMIN).await.unwrap();
    assert!(me.admin);
    assert_eq!(me.kind, "admin");

    let unauthenticated = |r, what| assert_status(r, 401, "unauthenticated", what);

    let mut c = claims(&[]);
    c.exp = now() - 120;
    unauthenticated(whoami(addr, &key.sign(&c).unwrap()).await, "expired");
    let mut c = claims(&[]);
    c.nbf = now() + 120;
    unauthenticated(whoami(addr, &key.sign(&c).unwrap()).await, "not yet valid");
    let mut c = claims(&[]);
    c.aud = "another-audience".into();
    unauthenticated(whoami(addr, &key.sign(&c).unwrap()).await, "wrong audience");
    let mut c = claims(&[]);
    c.iss = "https://evil.test".into();
    unauthenticated(whoami(addr, &key.sign(&c).unwrap()).await, "wrong issuer");

    let parts: Vec<&str> = good.split('.').collect();
    let mut c = claims(&["*"]);
    c.sub = "someone-else".into();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(serde_json::to_vec(&c).unwrap()),
        parts[2]
    );
    unauthenticated(whoami(addr, &forged).await, "tampered payload");
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    sig[0] ^= 0x80;
    let forged = format!("{}.{}.{}", parts[0], parts[1], b64(&sig));
    unauthenticated(whoami(addr, &forged).await, "tampered signature");

    let payload = b64(serde_json::to_vec(&claims(&["*"])).unwrap());
    let none = format!("{}.{payload}.", b64(r#"{"alg":"none","kid":"k1"}"#));
    unauthenticated(whoami(addr, &none).await, "alg none");
    let hs_message = format!(
        "{}.{payload}",
        b64(r#"{"typ":"JWT","alg":"HS256","kid":"k1"}"#)
    );
    let public = URL_SAFE_NO_PAD.decode(key.public_jwk().x).unwrap();
    let mac = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &public),
        hs_message.as_bytes(),
    );
    unauthenticated(
        whoami(addr, &format!("{hs_message}.{}", b64(mac))).await,
        "HS256 with the public key",
    );

    let before = hits.load(Ordering::SeqCst);
    let stranger = SigningKey::generate("k-unknown");
    unauthenticated(
        whoami(addr, &stranger.sign(&claims(&[])).unwrap()).await,
        "unknown kid",
    );
    assert!(
        hits.load(Ordering::SeqCst) <= before + 1,
        "at most one refresh for an unknown kid"
    );

    for (token, what) in [
        ("abc", "one part"),
        ("a.b", "two parts"),
        ("a.b.c.d", "four parts"),
        ("!!!.???.***", "bad base64"),
    ] {
        unauthenticated(whoami(addr, token).await, what);
    }
    let not_json = format!("{}.{}.{}", b64("not json"), parts[1], parts[2]);
    unauthenticated(whoami(addr, &not_json).await, "header not JSON");

    // No token at all.
    let anonymous = ApiClient::new(&format!("http://{addr}"), ClientOptions::default()).unwrap();
    let r: Result<WhoAmI, _> = anonymous.get("/v1/whoami").await;
    assert_status(r, 401, "unauthenticated", "no token");

    svc.stop().await;
    iam.stop().await;
}

#[tokio::test]
async fn permissions_are_checked_per_route() {
    let key = SigningKey::generate("k1");
    let verifier = Arc::new(Verifier::new(ISS, DEFAULT_AUDIENCE));
    verifier
        .set_keys(&JwkSet {
            keys: vec![key.public_jwk()],
        })
        .unwrap();
    // iam is not needed while every key is known.
    let svc = start_service(verifier, "http://127.0.0.1:9/v1/jwks".into()).await;
    let addr = svc.addr;

    let create = |token: String| async move {
        client(addr, &token)
            .post::<_, serde_json::Value>("/v1/vms", &json!({}))
            .await
    };
    let remove = |token: String| async move {
        client(addr, &token)
            .delete::<serde_json::Value>("/v1/vms/vm-1")
            .await
    };

    let creator = key.sign(&claims(&["plasmavmc.vm.create"])).unwrap();
    assert!(create(creator.clone()).await.is_ok());
    let err = remove(creator).await.unwrap_err();
    assert_eq!(err.status(), Some(403));
    assert_eq!(err.code(), Some("permission_denied"));
    assert!(err.to_string().contains("plasmavmc.vm.delete"), "{err}");

    let deleter = key.sign(&claims(&["plasmavmc.vm.delete"])).unwrap();
    let err = create(deleter.clone()).await.unwrap_err();
    assert_eq!(err.status(), Some(403));
    assert!(err.to_string().contains("plasmavmc.vm.create"), "{err}");
    assert!(remove(deleter).await.is_ok());

    for token in [
        key.sign(&claims(&["plasmavmc.*"])).unwrap(),
        key.sign(&claims(&["flashdns.zone.read", "plasmavmc.vm.*"]))
            .unwrap(),
        key.sign(&claims(&["*"])).unwrap(),
        ADMIN.to_owned(),
    ] {
        assert!(create(token.clone()).await.is_ok());
        assert!(remove(token).await.is_ok());
    }
    let nothing = key.sign(&claims(&["flashdns.*"])).unwrap();
    assert_eq!(
        create(nothing.clone()).await.unwrap_err().status(),
        Some(403)
    );
    assert_eq!(remove(nothing).await.unwrap_err().status(), Some(403));

    svc.stop().await;
}

#[tokio::test]
async fn keys_are_fetched_once_and_survive_iam_going_away() {
    let k1 = SigningKey::generate("k1");
    let k2 = SigningKey::generate("k2");
    let (iam, keys, hits) = start_iam(JwkSet {
        keys: vec![k1.public_jwk(), k2.public_jwk()],
    })
    .await;
    let iam_addr = iam.addr;
    let svc = start_service(
        Arc::new(Verifier::new(ISS, DEFAULT_AUDIENCE)),
        format!("http://{iam_addr}/v1/jwks"),
    )
    .await;
    let addr = svc.addr;

    // Many concurrent first requests: one fetch between them.
    let token = k2.sign(&claims(&[])).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let token = token.clone();
        tasks.spawn(async move { whoami(addr, &token).await });
    }
    while let Some(r) = tasks.join_next().await {
        assert_eq!(r.unwrap().unwrap().subject, "u-42");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    drop(keys);

    // iam goes away: known keys keep verifying, an unknown one cannot be checked (503).
    iam.stop().await;
    assert!(whoami(addr, &k1.sign(&claims(&[])).unwrap()).await.is_ok());
    let svc2 = start_service(
        Arc::new(Verifier::new(ISS, DEFAULT_AUDIENCE)),
        format!("http://{iam_addr}/v1/jwks"),
    )
    .await;
    assert_status(
        whoami(svc2.addr, &token).await,
        503,
        "unavailable",
        "unknown key with iam down",
    );
    // A bad token is still a 401, not a 503.
    assert_status(
        whoami(svc2.addr, "a.b.c").await,
        401,
        "unauthenticated",
        "garbage with iam down",
    );
    // The admin token never needed iam.
    assert!(whoami(svc2.addr, ADMIN).await.unwrap().admin);

    svc2.stop().await;
    svc.stop().await;
}
