use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::routing::get;
use serde_json::json;

use super::*;
use crate::Shutdown;
use crate::http::{HttpConfig, HttpServer, Json};

const ISS: &str = "https://iam.test";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims() -> Claims {
    let now = now();
    Claims {
        iss: ISS.into(),
        sub: "u-1".into(),
        aud: DEFAULT_AUDIENCE.into(),
        exp: now + 600,
        nbf: now - 5,
        iat: now - 5,
        jti: "t-1".into(),
        kind: KIND_USER.into(),
        org: Some("o-1".into()),
        project: None,
        perms: vec!["plasmavmc.vm.*".into()],
    }
}

fn set(keys: &[&SigningKey]) -> JwkSet {
    JwkSet {
        keys: keys.iter().map(|k| k.public_jwk()).collect(),
    }
}

fn setup() -> (SigningKey, Verifier) {
    let key = SigningKey::generate("k1");
    let verifier = Verifier::new(ISS, DEFAULT_AUDIENCE);
    verifier.set_keys(&set(&[&key])).unwrap();
    (key, verifier)
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWS over arbitrary header and payload bytes, signed with `key` (to reach checks behind
/// the signature).
fn sign_raw(key: &SigningKey, header: &serde_json::Value, payload: &[u8]) -> String {
    let pair = Ed25519KeyPair::from_pkcs8(key.to_pkcs8().expose()).unwrap();
    let message = format!("{}.{}", b64(header.to_string()), b64(payload));
    let signature = pair.sign(message.as_bytes());
    format!("{message}.{}", b64(signature))
}

fn eddsa_header(kid: &str) -> serde_json::Value {
    json!({"typ": "JWT", "alg": "EdDSA", "kid": kid})
}

#[track_caller]
fn rejected(verifier: &Verifier, token: &str) -> String {
    match verifier.verify(token) {
        Err(VerifyError::Invalid(reason)) => reason,
        other => panic!("expected Invalid, got {other:?} for {token}"),
    }
}

#[test]
fn permission_patterns() {
    let cases = [
        ("*", "plasmavmc.vm.create", true),
        ("*", "x", true),
        ("plasmavmc.*", "plasmavmc.vm.create", true),
        ("plasmavmc.*", "plasmavmc.image", true),
        ("plasmavmc.*", "plasmavmc", false),
        ("plasmavmc.*", "plasmavmcx.vm.create", false),
        ("plasmavmc.*", "flashdns.zone.read", false),
        ("plasmavmc.vm.*", "plasmavmc.vm.create", true),
        ("plasmavmc.vm.*", "plasmavmc.vm.disk.attach", true),
        ("plasmavmc.vm.*", "plasmavmc.image.create", false),
        ("plasmavmc.vm.*", "plasmavmc.vm", false),
        ("plasmavmc.vm.create", "plasmavmc.vm.create", true),
        ("plasmavmc.vm.create", "plasmavmc.vm.delete", false),
        ("plasmavmc.vm.create", "plasmavmc.vm.create.x", false),
        ("plasmavmc.vm", "plasmavmc.vm.create", false),
        ("", "", false),
        ("", "plasmavmc", false),
        ("plasmavmc*", "plasmavmc.vm", false),
        ("Plasmavmc.*", "plasmavmc.vm", false),
    ];
    for (pattern, permission, want) in cases {
        assert_eq!(
            permission_matches(pattern, permission),
            want,
            "{pattern:?} vs {permission:?}"
        );
    }
}

#[test]
fn sign_then_verify() {
    let (key, verifier) = setup();
    let c = claims();
    let token = key.sign(&c).unwrap();
    assert_eq!(token.split('.').count(), 3);
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA);
    assert_eq!(header.kid.as_deref(), Some("k1"));
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    assert_eq!(verifier.verify(&token).unwrap(), c);
    // Optional scope fields are left out, not null.
    let payload = token.split('.').nth(1).unwrap();
    let payload: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert!(payload.get("project").is_none());
    assert_eq!(payload["org"], "o-1");
}

#[test]
fn pkcs8_round_trip_and_jwk_shape() {
    let key = SigningKey::generate("k-2026-01");
    let restored = SigningKey::from_pkcs8("k-2026-01", key.to_pkcs8().expose()).unwrap();
    assert_eq!(restored.public_jwk(), key.public_jwk());
    assert_eq!(restored.kid(), "k-2026-01");
    let verifier = Verifier::new(ISS, DEFAULT_AUDIENCE);
    verifier.set_keys(&set(&[&key])).unwrap();
    assert!(verifier.verify(&restored.sign(&claims()).unwrap()).is_ok());

    let jwk = serde_json::to_value(key.public_jwk()).unwrap();
    assert_eq!(jwk["kty"], "OKP");
    assert_eq!(jwk["crv"], "Ed25519");
    assert_eq!(jwk["alg"], "EdDSA");
    assert_eq!(jwk["use"], "sig");
    assert_eq!(jwk["kid"], "k-2026-01");
    assert_eq!(jwk["x"].as_str().unwrap().len(), 43); // 32 bytes, unpadded
    // Secrets stay out of Debug.
    let debug = format!("{key:?}");
    assert!(
        debug.contains("k-2026-01") && !debug.contains("pkcs8"),
        "{debug}"
    );

    assert!(matches!(
        SigningKey::from_pkcs8("k", b"not a key"),
        Err(TokenError::InvalidKey(_))
    ));
}

#[test]
fn rejects_expired_tokens() {
    let (key, verifier) = setup();
    let mut c = claims();
    c.exp = now() - 120;
    let reason = rejected(&verifier, &key.sign(&c).unwrap());
    assert!(reason.to_lowercase().contains("expired"), "{reason}");
    // Within the leeway it still passes.
    c.exp = now() - 10;
    assert!(verifier.verify(&key.sign(&c).unwrap()).is_ok());
}

#[test]
fn rejects_tokens_not_yet_valid() {
    let (key, verifier) = setup();
    let mut c = claims();
    c.nbf = now() + 120;
    let reason = rejected(&verifier, &key.sign(&c).unwrap());
    assert!(reason.to_lowercase().contains("immature"), "{reason}");
    c.nbf = now() + 10;
    assert!(verifier.verify(&key.sign(&c).unwrap()).is_ok());
}

#[test]
fn rejects_wrong_audience_and_issuer() {
    let (key, verifier) = setup();
    let mut c = claims();
    c.aud = "someone-else".into();
    let reason = rejected(&verifier, &key.sign(&c).unwrap());
    assert!(reason.to_lowercase().contains("audience"), "{reason}");
    let mut c = claims();
    c.iss = "https://evil.test".into();
    let reason = rejected(&verifier, &key.sign(&c).unwrap());
    assert!(reason.to_lowercase().contains("issuer"), "{reason}");
}

#[test]
fn rejects_tampering() {
    let (key, verifier) = setup();
    let token = key.sign(&claims()).unwrap();
    let parts: Vec<&str> = token.split('.').collect();

    // A payload swapped for one granting more, signature kept.
    let mut c = claims();
    c.perms = vec!["*".into()];
    let forged_payload = b64(serde_json::to_vec(&c).unwrap());
    let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    let reason = rejected(&verifier, &forged);
    assert!(reason.to_lowercase().contains("signature"), "{reason}");

    // One signature byte changed.
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    sig[10] ^= 0x01;
    let forged = format!("{}.{}.{}", parts[0], parts[1], b64(&sig));
    rejected(&verifier, &forged);

    // A signature of the wrong length, and none at all.
    rejected(
        &verifier,
        &format!("{}.{}.{}", parts[0], parts[1], b64(&sig[..32])),
    );
    rejected(&verifier, &format!("{}.{}.", parts[0], parts[1]));

    // Signed by a different key that claims the trusted kid.
    let impostor = SigningKey::generate("k1");
    rejected(&verifier, &impostor.sign(&claims()).unwrap());
}

#[test]
fn rejects_unsigned_and_other_algorithms() {
    let (key, verifier) = setup();
    let payload = serde_json::to_vec(&claims()).unwrap();
    let body = |header: serde_json::Value| format!("{}.{}", b64(header.to_string()), b64(&payload));

    // alg: none, with and without a signature part.
    let none = body(json!({"alg": "none", "kid": "k1"}));
    rejected(&verifier, &format!("{none}."));
    rejected(&verifier, &format!("{none}.{}", b64([0u8; 64])));
    rejected(
        &verifier,
        &format!("{}.", body(json!({"alg": "None", "kid": "k1"}))),
    );

    // HS256 "signed" with the public key (raw bytes, and the JWK's x string): the classic
    // algorithm confusion.
    let public = URL_SAFE_NO_PAD.decode(key.public_jwk().x).unwrap();
    let x = key.public_jwk().x;
    for secret in [public.as_slice(), x.as_bytes()] {
        let message = body(json!({"typ": "JWT", "alg": "HS256", "kid": "k1"}));
        let mac = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
            message.as_bytes(),
        );
        let reason = rejected(&verifier, &format!("{message}.{}", b64(mac)));
        assert!(reason.contains("HS256"), "{reason}");
    }

    // Other asymmetric algorithms, with an otherwise valid EdDSA signature.
    for alg in ["RS256", "ES256", "PS256"] {
        let token = sign_raw(&key, &json!({"alg": alg, "kid": "k1"}), &payload);
        rejected(&verifier, &token);
    }
}

#[test]
fn the_crypto_provider_knows_only_eddsa() {
    let key = SigningKey::generate("k1");
    let hmac = EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef").unwrap();
    assert!(eddsa_signer(&Algorithm::HS256, &hmac).is_err());
    assert!(eddsa_signer(&Algorithm::EdDSA, &hmac).is_err());
    assert!(eddsa_signer(&Algorithm::EdDSA, &key.encoding).is_ok());
    let public = DecodingKey::from_ed_components(&key.public_jwk().x).unwrap();
    assert!(eddsa_verifier(&Algorithm::HS256, &public).is_err());
    assert!(eddsa_verifier(&Algorithm::RS256, &public).is_err());
    let hmac = DecodingKey::from_secret(b"0123456789abcdef0123456789abcdef").unwrap();
    assert!(eddsa_verifier(&Algorithm::EdDSA, &hmac).is_err());
    assert!(eddsa_verifier(&Algorithm::EdDSA, &public).is_ok());
    // Signing through jsonwebtoken with any other algorithm fails too.
    ensure_jwt_provider();
    let hmac = EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef").unwrap();
    assert!(jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims(), &hmac).is_err());
}

#[test]
fn unknown_and_missing_kid() {
    let (_, verifier) = setup();
    let other = SigningKey::generate("k2");
    assert_eq!(
        verifier.verify(&other.sign(&claims()).unwrap()),
        Err(VerifyError::UnknownKey { kid: "k2".into() })
    );
    let (key, _) = setup();
    let payload = serde_json::to_vec(&claims()).unwrap();
    let token = sign_raw(&key, &json!({"alg": "EdDSA"}), &payload);
    let reason = rejected(&verifier, &token);
    assert!(reason.contains("kid"), "{reason}");
}

#[test]
fn rejects_malformed_tokens() {
    let (key, verifier) = setup();
    let good = key.sign(&claims()).unwrap();
    let parts: Vec<&str> = good.split('.').collect();
    for token in [
        String::new(),
        "abc".into(),
        "a.b".into(),
        format!("{good}.{}", parts[2]),
        "...".into(),
        format!("!!!.{}.{}", parts[1], parts[2]),
        format!("{}.{}.{}", b64("not json"), parts[1], parts[2]),
        format!("{}.{}.{}", parts[0], "%%%", parts[2]),
        format!("{}.{}.{}", parts[0], parts[1], "***"),
    ] {
        rejected(&verifier, &token);
    }

    // Properly signed, but the payload is not the claims we need.
    let header = eddsa_header("k1");
    rejected(&verifier, &sign_raw(&key, &header, b"not json"));
    rejected(&verifier, &sign_raw(&key, &header, b"[1,2]"));
    let mut c = serde_json::to_value(claims()).unwrap();
    c.as_object_mut().unwrap().remove("exp");
    rejected(
        &verifier,
        &sign_raw(&key, &header, c.to_string().as_bytes()),
    );
    let mut c = serde_json::to_value(claims()).unwrap();
    c.as_object_mut().unwrap().remove("kind");
    rejected(
        &verifier,
        &sign_raw(&key, &header, c.to_string().as_bytes()),
    );
    // Time claims of the wrong type must not skip the time checks (CVE-2026-25537 in
    // jsonwebtoken < 10.3).
    for (field, value) in [("nbf", json!("99999999999")), ("exp", json!("never"))] {
        let mut c = serde_json::to_value(claims()).unwrap();
        c[field] = value;
        rejected(
            &verifier,
            &sign_raw(&key, &header, c.to_string().as_bytes()),
        );
    }
    // The same signed payload with a correct header is accepted: the rejections above are
    // about the payloads, not the helper.
    let c = serde_json::to_vec(&claims()).unwrap();
    assert!(verifier.verify(&sign_raw(&key, &header, &c)).is_ok());
}

#[test]
fn key_sets() {
    let k1 = SigningKey::generate("k1");
    let k2 = SigningKey::generate("k2");
    let verifier = Verifier::new(ISS, DEFAULT_AUDIENCE);
    // Keys of other types (without crv/x) parse and are skipped.
    let mixed: JwkSet = serde_json::from_value(json!({"keys": [
        {"kty": "RSA", "kid": "r1", "n": "AQAB", "e": "AQAB", "alg": "RS256", "use": "sig"},
        {"kty": "OKP", "crv": "X25519", "kid": "x1", "x": k2.public_jwk().x},
        {"kty": "OKP", "crv": "Ed25519", "kid": "enc", "x": k2.public_jwk().x, "use": "enc"},
        serde_json::to_value(k1.public_jwk()).unwrap(),
    ]}))
    .unwrap();
    verifier.set_keys(&mixed).unwrap();
    assert_eq!(verifier.kids(), vec!["k1".to_owned()]);
    assert!(verifier.verify(&k1.sign(&claims()).unwrap()).is_ok());

    // A malformed Ed25519 key is an error and the current set stays.
    let mut bad = k2.public_jwk();
    bad.x = b64([7u8; 31]);
    assert!(matches!(
        verifier.set_keys(&JwkSet { keys: vec![bad] }),
        Err(TokenError::InvalidJwk { .. })
    ));
    let mut bad = k2.public_jwk();
    bad.x = "not base64!".into();
    assert!(verifier.set_keys(&JwkSet { keys: vec![bad] }).is_err());
    let dup = JwkSet {
        keys: vec![k2.public_jwk(), k2.public_jwk()],
    };
    assert!(verifier.set_keys(&dup).is_err());
    assert_eq!(verifier.kids(), vec!["k1".to_owned()]);

    // Setting replaces: k1 is gone.
    verifier.set_keys(&set(&[&k2])).unwrap();
    assert_eq!(
        verifier.verify(&k1.sign(&claims()).unwrap()),
        Err(VerifyError::UnknownKey { kid: "k1".into() })
    );
    assert!(verifier.verify(&k2.sign(&claims()).unwrap()).is_ok());
}

#[test]
fn claims_to_principal() {
    let p = claims().into_principal().unwrap();
    assert_eq!(p.subject, "u-1");
    assert_eq!(p.kind, "user");
    assert_eq!(p.org.as_deref(), Some("o-1"));
    assert!(!p.admin);
    assert!(p.allows("plasmavmc.vm.create"));
    assert!(!p.allows("plasmavmc.image.create"));
    let mut c = claims();
    c.kind = KIND_SERVICE_ACCOUNT.into();
    assert_eq!(c.into_principal().unwrap().kind, "service_account");
    for kind in ["admin", "", "User"] {
        let mut c = claims();
        c.kind = kind.into();
        assert!(c.into_principal().is_err(), "{kind}");
    }
}

#[test]
fn jwks_url_split() {
    let (client, path) = jwks_client("http://127.0.0.1:7000/v1/jwks", Default::default()).unwrap();
    assert_eq!(client.base_url().as_str(), "http://127.0.0.1:7000/v1/");
    assert_eq!(path, "jwks");
    let (client, path) =
        jwks_client("https://iam.example:7000/jwks?v=1", Default::default()).unwrap();
    assert_eq!(client.base_url().as_str(), "https://iam.example:7000/");
    assert_eq!(path, "jwks?v=1");
    assert!(jwks_client("not a url", Default::default()).is_err());
}

// ---- JwksAuthenticator against a stand-in iam ----

struct MockIam {
    addr: std::net::SocketAddr,
    keys: Arc<Mutex<JwkSet>>,
    hits: Arc<AtomicUsize>,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<()>,
}

impl MockIam {
    async fn start(keys: JwkSet, delay: Duration) -> Self {
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
                        tokio::time::sleep(delay).await;
                        let set = keys.lock().unwrap().clone();
                        Json(set)
                    }
                }),
            )
        };
        let auth = Arc::new(StaticTokenAuthenticator::admin(Secret::new(
            "unused-admin-token-0123456789".into(),
        )));
        let server = HttpServer::new("iam", HttpConfig::default(), auth).public(routes);
        let bound = server.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = bound.local_addr();
        let shutdown = Shutdown::new();
        let task = tokio::spawn(bound.serve(shutdown.clone()));
        Self {
            addr,
            keys,
            hits,
            shutdown,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/v1/jwks", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn publish(&self, keys: &[&SigningKey]) {
        *self.keys.lock().unwrap() = set(keys);
    }

    async fn stop(self) {
        self.shutdown.trigger();
        self.task.await.unwrap();
    }
}

fn options() -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        retries: 0,
        ..Default::default()
    }
}

fn authenticator(url: String, admin: Option<&str>) -> JwksAuthenticator {
    JwksAuthenticator::new(
        Arc::new(Verifier::new(ISS, DEFAULT_AUDIENCE)),
        url,
        options(),
        admin.map(|t| Secret::new(t.to_owned())),
    )
}

#[tokio::test]
async fn first_use_fetches_once_for_many_concurrent_requests() {
    let k1 = SigningKey::generate("k1");
    let iam = MockIam::start(set(&[&k1]), Duration::from_millis(200)).await;
    let auth = Arc::new(authenticator(iam.url(), None));
    let token = k1.sign(&claims()).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (auth, token) = (auth.clone(), token.clone());
        tasks.spawn(async move { auth.authenticate(&token).await });
    }
    while let Some(result) = tasks.join_next().await {
        assert_eq!(result.unwrap().unwrap().subject, "u-1");
    }
    assert_eq!(iam.hits(), 1);
    iam.stop().await;
}

#[tokio::test]
async fn unknown_kid_is_rejected_after_one_refresh_and_refreshes_are_rate_limited() {
    let k1 = SigningKey::generate("k1");
    let iam = MockIam::start(set(&[&k1]), Duration::ZERO).await;
    let auth = authenticator(iam.url(), None);
    auth.authenticate(&k1.sign(&claims()).unwrap())
        .await
        .unwrap();
    assert_eq!(iam.hits(), 1);

    // Within the minimum interval of that fetch: no new fetch, rejected.
    for kid in ["k2", "k3", "k4"] {
        let stranger = SigningKey::generate(kid);
        let err = auth
            .authenticate(&stranger.sign(&claims()).unwrap())
            .await
            .unwrap_err();
        assert!(matches!(err, AuthError::InvalidToken { .. }), "{err:?}");
    }
    assert_eq!(iam.hits(), 1);

    // Past it: one fetch, still unknown, rejected; the next stranger does not fetch again.
    let mut auth = auth;
    auth.min_refresh_interval = Duration::from_secs(1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for kid in ["k5", "k6"] {
        let stranger = SigningKey::generate(kid);
        let err = auth
            .authenticate(&stranger.sign(&claims()).unwrap())
            .await
            .unwrap_err();
        match err {
            AuthError::InvalidToken { reason } => assert!(reason.contains(kid), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(iam.hits(), 2);
    iam.stop().await;
}

#[tokio::test]
async fn a_newly_published_key_is_picked_up() {
    let k1 = SigningKey::generate("k1");
    let k2 = SigningKey::generate("k2");
    let iam = MockIam::start(set(&[&k1]), Duration::ZERO).await;
    let mut auth = authenticator(iam.url(), None);
    auth.min_refresh_interval = Duration::ZERO;
    auth.authenticate(&k1.sign(&claims()).unwrap())
        .await
        .unwrap();
    iam.publish(&[&k1, &k2]);
    auth.authenticate(&k2.sign(&claims()).unwrap())
        .await
        .unwrap();
    assert_eq!(auth.verifier().kids(), vec!["k1", "k2"]);
    assert_eq!(iam.hits(), 2);
    iam.stop().await;
}

#[tokio::test]
async fn iam_down_known_keys_verify_unknown_keys_are_unavailable() {
    let k1 = SigningKey::generate("k1");
    let iam = MockIam::start(set(&[&k1]), Duration::ZERO).await;
    let mut auth = authenticator(iam.url(), None);
    auth.min_refresh_interval = Duration::ZERO;
    auth.refresh_keys().await.unwrap();
    let url = iam.url();
    iam.stop().await;

    let token = k1.sign(&claims()).unwrap();
    for _ in 0..3 {
        assert_eq!(auth.authenticate(&token).await.unwrap().subject, "u-1");
    }
    let k2 = SigningKey::generate("k2");
    let err = auth
        .authenticate(&k2.sign(&claims()).unwrap())
        .await
        .unwrap_err();
    match err {
        AuthError::Unavailable(why) => assert!(why.contains("k2") && why.contains(&url), "{why}"),
        other => panic!("{other:?}"),
    }
    // Bad tokens are still plainly invalid, not "unavailable".
    assert!(matches!(
        auth.authenticate("garbage").await,
        Err(AuthError::InvalidToken { .. })
    ));

    // A fresh authenticator that never reached iam: unavailable too.
    let fresh = authenticator(url, None);
    assert!(matches!(
        fresh.authenticate(&token).await,
        Err(AuthError::Unavailable(_))
    ));
    assert!(fresh.refresh_keys().await.is_err());
}

#[tokio::test]
async fn stale_key_sets_are_refreshed_in_the_background() {
    let k1 = SigningKey::generate("k1");
    let k2 = SigningKey::generate("k2");
    let iam = MockIam::start(set(&[&k1]), Duration::ZERO).await;
    let mut auth = authenticator(iam.url(), None).with_max_key_age(Duration::from_millis(300));
    auth.min_refresh_interval = Duration::from_millis(300);
    let old = k1.sign(&claims()).unwrap();
    auth.authenticate(&old).await.unwrap();

    // iam retires k1. Once the set is stale, a request (still served from the cache) starts
    // a background refresh, after which k1 no longer verifies.
    iam.publish(&[&k2]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    auth.authenticate(&old).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while auth.verifier().kids() != vec!["k2"] {
        assert!(Instant::now() < deadline, "no background refresh");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(matches!(
        auth.authenticate(&old).await,
        Err(AuthError::InvalidToken { .. })
    ));
    iam.stop().await;
}

#[tokio::test]
async fn admin_token_is_the_operator_and_jwts_cannot_be() {
    let k1 = SigningKey::generate("k1");
    let iam = MockIam::start(set(&[&k1]), Duration::ZERO).await;
    let admin_token = "node-admin-token-0123456789abcdef";
    let auth = authenticator(iam.url(), Some(admin_token));
    let p = auth.authenticate(admin_token).await.unwrap();
    assert!(p.admin);
    assert_eq!(p.kind, "admin");
    assert!(p.allows("iam.user.delete"));
    assert_eq!(iam.hits(), 0, "the admin token needs no key set");
    assert!(
        auth.authenticate("node-admin-token-0123456789abcdeF")
            .await
            .is_err()
    );

    let mut c = claims();
    c.kind = "admin".into();
    c.perms = vec!["*".into()];
    assert!(matches!(
        auth.authenticate(&k1.sign(&c).unwrap()).await,
        Err(AuthError::InvalidToken { .. })
    ));
    // Without an admin token configured, nothing maps to the operator.
    let auth = authenticator(iam.url(), None);
    assert!(auth.authenticate(admin_token).await.is_err());
    iam.stop().await;
}

#[test]
fn verified_tokens_are_remembered_until_the_key_set_changes() {
    let (key, verifier) = setup();
    let token = key.sign(&claims()).unwrap();
    assert_eq!(verifier.verify(&token).unwrap(), claims_of(&token));
    // A hit answers the same claims.
    assert_eq!(verifier.verify(&token).unwrap().sub, "u-1");
    // A refresh with the same keys keeps what was verified; a tampered copy is not a hit.
    verifier.set_keys(&set(&[&key])).unwrap();
    assert!(verifier.verify(&token).is_ok());
    let mut tampered = token.clone();
    tampered.push('x');
    assert!(verifier.verify(&tampered).is_err());
    // Retiring the key (a new set without it) forgets its tokens at once.
    let other = SigningKey::generate("k-2");
    verifier.set_keys(&set(&[&other])).unwrap();
    assert!(matches!(
        verifier.verify(&token),
        Err(VerifyError::UnknownKey { .. })
    ));
}

fn claims_of(token: &str) -> Claims {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}
