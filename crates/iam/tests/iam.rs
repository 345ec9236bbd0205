//! iam end to end, in a real `ultracloud up`: tenant isolation, token rejection, rotations,
//! credentials, rate limiting, bad input, secrets at rest and in logs.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

const PW_A: &str = "alpha-password-123";
const PW_B: &str = "bravo-password-456";

/// Everything a tenant can own, created in `org` by the operator; returns the paths of the
/// objects (for get/delete) and collections (for list/create).
async fn populate(cloud: &Cloud, org: &str, user: &str) -> (Vec<String>, Vec<String>) {
    let p = cloud
        .admin(
            Method::POST,
            &format!("/v1/orgs/{org}/projects"),
            Some(json!({"name": "web"})),
        )
        .await;
    let sa = cloud
        .admin(
            Method::POST,
            &format!("/v1/orgs/{org}/service-accounts"),
            Some(json!({"name": "ci"})),
        )
        .await;
    let g = cloud
        .admin(
            Method::POST,
            &format!("/v1/orgs/{org}/groups"),
            Some(json!({"name": "ops"})),
        )
        .await;
    let role = cloud
        .admin(
            Method::POST,
            &format!("/v1/orgs/{org}/roles"),
            Some(json!({"name": "vm-operator", "permissions": ["plasmavmc.vm.*"]})),
        )
        .await;
    let b = cloud
        .admin(
            Method::POST,
            &format!("/v1/orgs/{org}/bindings"),
            Some(json!({"principal_id": sa["id"], "role": "vm-operator", "project": "web"})),
        )
        .await;
    let c = cloud
        .admin(
            Method::POST,
            &format!("/v1/orgs/{org}/credentials"),
            Some(json!({"principal_id": sa["id"]})),
        )
        .await;
    let id = |v: &Value| v["id"].as_str().unwrap().to_owned();
    let objects = vec![
        format!("/v1/orgs/{org}"),
        format!("/v1/orgs/{org}/projects/{}", id(&p)),
        format!("/v1/orgs/{org}/users/{user}"),
        format!("/v1/orgs/{org}/service-accounts/{}", id(&sa)),
        format!("/v1/orgs/{org}/groups/{}", id(&g)),
        format!("/v1/orgs/{org}/roles/{}", id(&role)),
        format!("/v1/orgs/{org}/bindings/{}", id(&b)),
        format!("/v1/orgs/{org}/credentials/{}/revoke", id(&c)),
        format!("/v1/orgs/{org}/groups/{}/members/{user}", id(&g)),
        format!("/v1/orgs/{org}/users/{user}/password"),
    ];
    let collections = [
        "projects",
        "users",
        "service-accounts",
        "groups",
        "roles",
        "bindings",
        "credentials",
        "audit",
    ]
    .iter()
    .map(|c| format!("/v1/orgs/{org}/{c}"))
    .collect();
    (objects, collections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_cannot_see_or_touch_each_other() {
    let cloud = up("").await;
    let (a, a_user) = cloud.tenant("alpha", "ann", PW_A).await;
    let (b, b_user) = cloud.tenant("bravo", "bob", PW_B).await;
    let (a_objects, a_lists) = populate(&cloud, &a, &a_user).await;
    let (b_objects, b_lists) = populate(&cloud, &b, &b_user).await;
    let token_a = cloud.token("alpha", "ann", PW_A).await;
    let token_b = cloud.token("bravo", "bob", PW_B).await;

    // A sees its own objects (admin role in its org) …
    for path in a_objects.iter().filter(|p| {
        !p.ends_with("/revoke") && !p.contains("/members/") && !p.ends_with("/password")
    }) {
        let (s, body) = cloud.as_(&token_a, Method::GET, path, None).await;
        if !path.contains("/roles/") && !path.contains("/bindings/") {
            assert_eq!(s, 200, "A reads its own {path}: {body}");
        }
    }
    for path in &a_lists {
        let (s, body) = cloud.as_(&token_a, Method::GET, path, None).await;
        assert_eq!(s, 200, "A lists its own {path}: {body}");
    }
    // … and nothing of B's: not found (never forbidden), for reads, lists and changes.
    for (token, objects, lists, who) in [
        (&token_a, &b_objects, &b_lists, "A on B"),
        (&token_b, &a_objects, &a_lists, "B on A"),
    ] {
        for path in objects {
            for method in [Method::GET, Method::DELETE, Method::POST, Method::PUT] {
                // A well-formed body for the route, so only authorization can refuse it.
                let body = if path.ends_with("/password") {
                    Some(json!({"password": "another-password-789"}))
                } else if path.ends_with("/revoke") {
                    Some(json!({}))
                } else {
                    None
                };
                let (s, b) = cloud.as_(token, method.clone(), path, body).await;
                assert!(
                    s == 404 || s == 405,
                    "{who}: {method} {path} answered {s} {b}"
                );
                assert_ne!(s, 403, "{who}: existence leaked");
            }
        }
        for path in lists {
            let (s, b) = cloud.as_(token, Method::GET, path, None).await;
            assert_eq!(s, 404, "{who}: list {path}: {b}");
            let body = if path.ends_with("/roles") {
                json!({"name": "intruder", "permissions": ["*"]})
            } else if path.ends_with("/bindings") {
                json!({"principal_id": "usr-x", "role": "admin"})
            } else if path.ends_with("/credentials") {
                json!({"principal_id": "usr-x"})
            } else {
                json!({"name": "intruder"})
            };
            let (s, b) = cloud.as_(token, Method::POST, path, Some(body)).await;
            assert!(s == 404 || s == 405, "{who}: create in {path}: {s} {b}");
        }
    }
    // Listing organizations shows only one's own.
    let (_, orgs) = cloud.as_(&token_a, Method::GET, "/v1/orgs", None).await;
    let names: Vec<&str> = orgs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha"]);
    // Tenants cannot create organizations or manage signing keys.
    let (s, _) = cloud
        .as_(
            &token_a,
            Method::POST,
            "/v1/orgs",
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(s, 403);
    let (s, _) = cloud
        .as_(&token_a, Method::POST, "/v1/keys/rotate", None)
        .await;
    assert_eq!(s, 403);
    // B's objects are all still there.
    for path in b_objects.iter().filter(|p| {
        !p.ends_with("/revoke")
            && !p.contains("/members/")
            && !p.ends_with("/password")
            && !p.contains("/roles/")
            && !p.contains("/bindings/")
    }) {
        let (s, _) = cloud.as_(&token_b, Method::GET, path, None).await;
        assert_eq!(s, 200, "{path} untouched");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_follows_roles_projects_groups_and_audits_denials() {
    let cloud = up("").await;
    let (org, _) = cloud.tenant("alpha", "ann", PW_A).await;
    let (other, _) = cloud.tenant("bravo", "bob", PW_B).await;
    cloud
        .admin(
            Method::POST,
            &format!("/v1/orgs/{org}/projects"),
            Some(json!({"name": "web"})),
        )
        .await;
    let viewer = cloud
        .admin(
            Method::POST,
            &format!("/v1/orgs/{org}/users"),
            Some(json!({"name": "vera", "password": "viewer-password-1"})),
        )
        .await;
    let group = cloud
        .admin(
            Method::POST,
            &format!("/v1/orgs/{org}/groups"),
            Some(json!({"name": "devs"})),
        )
        .await;
    cloud
        .admin(
            Method::POST,
            &format!("/v1/orgs/{org}/bindings"),
            Some(json!({"principal_id": viewer["id"], "role": "viewer"})),
        )
        .await;
    cloud
        .admin(
            Method::POST,
            &format!("/v1/orgs/{org}/bindings"),
            Some(json!({"principal_id": group["id"], "role": "member", "project": "web"})),
        )
        .await;
    let admin_token = cloud.token("alpha", "ann", PW_A).await;
    let decide = |token: String, permission: &str, org: &str, project: Option<&str>| {
        let body = json!({"token": token, "permission": permission, "org": org, "project": project, "resource": "vm-1"});
        let cloud = &cloud;
        async move {
            let (s, b) = cloud
                .as_admin(Method::POST, "/v1/authorize", Some(body))
                .await;
            assert_eq!(s, 200, "{b}");
            b["allowed"].as_bool().unwrap()
        }
    };
    let vera = cloud.token("alpha", "vera", "viewer-password-1").await;
    assert!(decide(vera.clone(), "plasmavmc.vm.get", &org, None).await);
    assert!(!decide(vera.clone(), "plasmavmc.vm.create", &org, None).await);
    assert!(
        !decide(vera.clone(), "plasmavmc.vm.get", &other, None).await,
        "another org"
    );

    // Group membership grants member on project "web" — to a token scoped to that project.
    cloud
        .admin(
            Method::PUT,
            &format!(
                "/v1/orgs/{org}/groups/{}/members/{}",
                group["id"].as_str().unwrap(),
                viewer["id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    let (s, scoped) = common::call(
        &cloud.iam_url,
        None,
        Method::POST,
        "/v1/tokens",
        Some(json!({"grant_type": "password", "org": "alpha", "username": "vera", "password": "viewer-password-1", "project": "web"})),
    )
    .await;
    assert_eq!(s, 200, "{scoped}");
    let scoped = scoped["access_token"].as_str().unwrap().to_owned();
    let web = cloud
        .admin(Method::GET, &format!("/v1/orgs/{org}/projects/web"), None)
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(decide(scoped.clone(), "plasmavmc.vm.create", &org, Some(&web)).await);
    assert!(
        !decide(vera.clone(), "plasmavmc.vm.create", &org, Some(&web)).await,
        "unscoped token"
    );
    assert!(decide(admin_token.clone(), "iam.binding.create", &org, None).await);

    // Unknown permissions are bad input.
    let (s, _) = cloud
        .as_admin(
            Method::POST,
            "/v1/authorize",
            Some(json!({"token": vera, "permission": "plasmavmc.vm.fly", "org": org})),
        )
        .await;
    assert_eq!(s, 400);

    // Denials are in the audit trail with the request id.
    let (s, events) = cloud
        .as_(
            &admin_token,
            Method::GET,
            &format!("/v1/orgs/{org}/audit?limit=1000"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let denial = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["outcome"] == "deny" && e["action"] == "plasmavmc.vm.create")
        .unwrap_or_else(|| panic!("no denial audited: {events}"));
    assert_eq!(denial["target"], "vm-1");
    assert!(!denial["request_id"].as_str().unwrap().is_empty());
    assert!(
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "iam.binding.create" && e["actor"] == "admin"),
        "changes are audited: {events}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_key_rotation_keeps_old_tokens_until_retired() {
    let cloud = up("").await;
    let (org, _) = cloud.tenant("alpha", "ann", PW_A).await;
    let me = format!("/v1/orgs/{org}");
    let old = cloud.token("alpha", "ann", PW_A).await;
    let jwks = cloud.admin(Method::GET, "/v1/jwks", None).await;
    let old_kid = jwks["keys"][0]["kid"].as_str().unwrap().to_owned();

    let rotated = cloud.admin(Method::POST, "/v1/keys/rotate", None).await;
    let new_kid = rotated["kid"].as_str().unwrap().to_owned();
    assert_ne!(new_kid, old_kid);
    let new = cloud.token("alpha", "ann", PW_A).await;
    let jwks = cloud.admin(Method::GET, "/v1/jwks", None).await;
    assert_eq!(
        jwks["keys"].as_array().unwrap().len(),
        2,
        "overlap: both published"
    );
    assert_eq!(
        cloud.as_(&old, Method::GET, &me, None).await.0,
        200,
        "old token still valid"
    );
    assert_eq!(cloud.as_(&new, Method::GET, &me, None).await.0, 200);

    // Retiring while old tokens may be valid is refused; forced, old tokens stop working.
    let (s, b) = cloud
        .as_admin(Method::POST, &format!("/v1/keys/{old_kid}/retire"), None)
        .await;
    assert_eq!(s, 409, "{b}");
    let (s, _) = cloud
        .as_admin(
            Method::POST,
            &format!("/v1/keys/{new_kid}/retire?force=true"),
            None,
        )
        .await;
    assert_eq!(s, 409, "the active key cannot be retired");
    let (s, b) = cloud
        .as_admin(
            Method::POST,
            &format!("/v1/keys/{old_kid}/retire?force=true"),
            None,
        )
        .await;
    assert_eq!(s, 204, "{b}");
    assert_eq!(cloud.as_(&old, Method::GET, &me, None).await.0, 401);
    assert_eq!(cloud.as_(&new, Method::GET, &me, None).await.0, 200);
    let jwks = cloud.admin(Method::GET, "/v1/jwks", None).await;
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    let keys = cloud.admin(Method::GET, "/v1/keys", None).await;
    assert!(keys.to_string().contains("retired"), "{keys}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_rotate_with_overlap_and_revoke_at_once() {
    let cloud = up("").await;
    let (org, _) = cloud.tenant("alpha", "ann", PW_A).await;
    let sa = cloud
        .admin(
            Method::POST,
            &format!("/v1/orgs/{org}/service-accounts"),
            Some(json!({"name": "ci"})),
        )
        .await;
    cloud
        .admin(
            Method::POST,
            &format!("/v1/orgs/{org}/bindings"),
            Some(json!({"principal_id": sa["id"], "role": "viewer"})),
        )
        .await;
    let new_key = || async {
        cloud
            .admin(
                Method::POST,
                &format!("/v1/orgs/{org}/credentials"),
                Some(json!({"principal_id": sa["id"]})),
            )
            .await
    };
    let iam_url = cloud.iam_url.clone();
    let exchange = |key: String| {
        let iam_url = iam_url.clone();
        async move {
            common::call(
                &iam_url,
                None,
                Method::POST,
                "/v1/tokens",
                Some(json!({"grant_type": "api_key", "api_key": key})),
            )
            .await
        }
    };
    let k1 = new_key().await;
    let k1_secret = k1["api_key"].as_str().unwrap().to_owned();
    let (s, t) = exchange(k1_secret.clone()).await;
    assert_eq!(s, 200, "{t}");
    let sa_token = t["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        cloud
            .as_(
                &sa_token,
                Method::GET,
                &format!("/v1/orgs/{org}/projects"),
                None
            )
            .await
            .0,
        200
    );

    // Rotation: a second key; the first revoked with an overlap keeps working meanwhile.
    let k2 = new_key().await;
    let k2_secret = k2["api_key"].as_str().unwrap().to_owned();
    let (s, _) = cloud
        .as_admin(
            Method::POST,
            &format!(
                "/v1/orgs/{org}/credentials/{}/revoke",
                k1["id"].as_str().unwrap()
            ),
            Some(json!({"after_secs": 300})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(exchange(k1_secret.clone()).await.0, 200, "overlap");
    assert_eq!(exchange(k2_secret.clone()).await.0, 200);
    // Revoked now: refused at once; the other key is unaffected.
    let (s, _) = cloud
        .as_admin(
            Method::POST,
            &format!(
                "/v1/orgs/{org}/credentials/{}/revoke",
                k1["id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(exchange(k1_secret.clone()).await.0, 401);
    assert_eq!(exchange(k2_secret).await.0, 200);
    // A key with a wrong secret, or garbage, is refused the same way.
    let forged = format!("{}0", &k1_secret[..k1_secret.len() - 1]);
    assert_eq!(exchange(forged).await.0, 401);
    assert_eq!(exchange("ucak_nonsense".into()).await.0, 401);
    // Listing credentials never shows secrets.
    let list = cloud
        .admin(Method::GET, &format!("/v1/orgs/{org}/credentials"), None)
        .await;
    assert!(
        !list
            .to_string()
            .contains(&k1_secret[k1_secret.len() - 64..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_changes_nothing() {
    let cloud = up("").await;
    let (org, _) = cloud.tenant("alpha", "ann", PW_A).await;
    let roles = format!("/v1/orgs/{org}/roles");
    let before = cloud.admin(Method::GET, &roles, None).await;
    let t = &cloud.admin_token;
    // Malformed JSON.
    let r = uc_testkit::http_client()
        .post(format!("{}{roles}", cloud.iam_url))
        .bearer_auth(t)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_argument");
    for bad in [
        json!({"name": "r1", "permissions": ["plasmavmc.vm.fly"]}),
        json!({"name": "r1", "permissions": []}),
        json!({"name": "r1", "permissions": ["*"], "extra": 1}),
        json!({"name": "R1", "permissions": ["*"]}),
        json!({"name": "x".repeat(64), "permissions": ["*"]}),
        json!({"name": "admin", "permissions": ["*"]}),
    ] {
        let (s, b) = cloud.as_(t, Method::POST, &roles, Some(bad.clone())).await;
        assert!(s == 400 || s == 409, "{bad}: {s} {b}");
    }
    let (s, _) = cloud
        .as_(
            t,
            Method::POST,
            &roles,
            Some(json!({"name": "ok", "permissions": ["flashdns.*"]})),
        )
        .await;
    assert_eq!(s, 201);
    let (s, _) = cloud
        .as_(
            t,
            Method::POST,
            &roles,
            Some(json!({"name": "ok", "permissions": ["flashdns.*"]})),
        )
        .await;
    assert_eq!(s, 409, "duplicate name");
    let after = cloud.admin(Method::GET, &roles, None).await;
    assert_eq!(
        after["items"].as_array().unwrap().len(),
        before["items"].as_array().unwrap().len() + 1,
        "only the valid role was added"
    );
    // Weak passwords, duplicate users, unknown principals and roles in bindings.
    let users = format!("/v1/orgs/{org}/users");
    let (s, _) = cloud
        .as_(
            t,
            Method::POST,
            &users,
            Some(json!({"name": "weak", "password": "short"})),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = cloud
        .as_(
            t,
            Method::POST,
            &users,
            Some(json!({"name": "ann", "password": PW_A})),
        )
        .await;
    assert_eq!(s, 409);
    let bindings = format!("/v1/orgs/{org}/bindings");
    let (s, _) = cloud
        .as_(
            t,
            Method::POST,
            &bindings,
            Some(json!({"principal_id": "usr-none", "role": "admin"})),
        )
        .await;
    assert_eq!(s, 404);
    let (s, _) = cloud.as_(t, Method::GET, "/v1/orgs", None).await;
    assert_eq!(s, 200);
    let (s, _) = common::call(
        &cloud.iam_url,
        None,
        Method::POST,
        "/v1/tokens",
        Some(json!({"grant_type": "magic"})),
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = common::call(&cloud.iam_url, None, Method::GET, "/v1/orgs", None).await;
    assert_eq!(s, 401, "no token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_attempts_are_rate_limited_per_principal() {
    let cloud = up("").await;
    cloud.tenant("alpha", "ann", PW_A).await;
    cloud.tenant("bravo", "bob", PW_B).await;
    for _ in 0..5 {
        assert_eq!(
            cloud.login("alpha", "ann", "wrong-password-000").await.0,
            401
        );
    }
    let (s, b) = cloud.login("alpha", "ann", PW_A).await;
    assert_eq!(
        s, 429,
        "locked for a minute even with the right password: {b}"
    );
    assert_eq!(b["error"]["code"], "too_many_requests", "{b}");
    // Another principal is not affected.
    assert_eq!(cloud.login("bravo", "bob", PW_B).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_that_are_not_ours_are_refused() {
    use uc_runtime::token::{Claims, SigningKey};
    let cloud = up("").await;
    let (org, user) = cloud.tenant("alpha", "ann", PW_A).await;
    let me = format!("/v1/orgs/{org}");
    let good = cloud.token("alpha", "ann", PW_A).await;
    assert_eq!(cloud.as_(&good, Method::GET, &me, None).await.0, 200);

    // The real signing key (the test can read the node's seed file) with bad claims.
    let data_dir = cloud.cluster.node(0).info.data_dir.clone();
    let seed_hex = std::fs::read_to_string(data_dir.join("secrets/signing.key")).unwrap();
    let seed = iam::crypto::seed_from_hex(&uc_runtime::Secret::new(seed_hex)).unwrap();
    let jwks = cloud.admin(Method::GET, "/v1/jwks", None).await;
    let kid = jwks["keys"][0]["kid"].as_str().unwrap().to_owned();
    let real = SigningKey::from_pkcs8(&kid, &iam::crypto::ed25519_pkcs8_from_seed(&seed)).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = Claims {
        iss: "ultracloud-iam".into(),
        sub: user.clone(),
        aud: "ultracloud".into(),
        exp: now + 600,
        nbf: now - 10,
        iat: now - 10,
        jti: "t".into(),
        kind: "user".into(),
        org: Some(org.clone()),
        project: None,
        perms: vec!["*".into()],
    };
    let sign = |c: Claims| real.sign(&c).unwrap();
    assert_eq!(
        cloud
            .as_(&sign(claims.clone()), Method::GET, &me, None)
            .await
            .0,
        200,
        "control"
    );
    let cases = [
        (
            "expired",
            sign(Claims {
                exp: now - 120,
                iat: now - 1000,
                nbf: now - 1000,
                ..claims.clone()
            }),
        ),
        (
            "not yet valid",
            sign(Claims {
                nbf: now + 3600,
                ..claims.clone()
            }),
        ),
        (
            "wrong audience",
            sign(Claims {
                aud: "someone-else".into(),
                ..claims.clone()
            }),
        ),
        (
            "wrong issuer",
            sign(Claims {
                iss: "evil".into(),
                ..claims.clone()
            }),
        ),
        (
            "unknown key",
            SigningKey::generate(&kid).sign(&claims).unwrap(),
        ),
        (
            "unknown kid",
            SigningKey::generate("k-unknown").sign(&claims).unwrap(),
        ),
    ];
    for (what, token) in cases {
        assert_eq!(
            cloud.as_(&token, Method::GET, &me, None).await.0,
            401,
            "{what}"
        );
    }
    // Tampered payload (more permissions) and an unsigned token.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = good.split('.').collect();
    let mut payload: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    payload["org"] = json!("org-other");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(payload.to_string()),
        parts[2]
    );
    assert_eq!(
        cloud.as_(&tampered, Method::GET, &me, None).await.0,
        401,
        "tampered"
    );
    let none_header = b64.encode(json!({"alg": "none", "typ": "JWT", "kid": kid}).to_string());
    let unsigned = format!("{none_header}.{}.", parts[1]);
    assert_eq!(
        cloud.as_(&unsigned, Method::GET, &me, None).await.0,
        401,
        "alg none"
    );
    assert_eq!(
        cloud.as_("a.b.c", Method::GET, &me, None).await.0,
        401,
        "garbage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_sealed_at_rest_and_never_logged_or_returned() {
    let cloud = up("").await;
    let (org, user) = cloud.tenant("alpha", "ann", PW_A).await;
    let sa = cloud
        .admin(
            Method::POST,
            &format!("/v1/orgs/{org}/service-accounts"),
            Some(json!({"name": "ci"})),
        )
        .await;
    let key = cloud
        .admin(
            Method::POST,
            &format!("/v1/orgs/{org}/credentials"),
            Some(json!({"principal_id": sa["id"]})),
        )
        .await;
    let api_key = key["api_key"].as_str().unwrap().to_owned();
    let secret = &api_key[api_key.len() - 64..];
    let token = cloud.token("alpha", "ann", PW_A).await;
    cloud.login("alpha", "ann", "wrong-password-999").await;
    let u = cloud
        .admin(Method::GET, &format!("/v1/orgs/{org}/users/{user}"), None)
        .await;
    assert!(u.get("password").is_none(), "{u}");

    // Read iam's whole namespace straight from flaredb as the operator.
    let info = cloud.cluster.node(0).info.clone();
    let mut dump = String::new();
    for table in ["principals", "credentials", "signing_keys", "audit"] {
        let r: Value = uc_testkit::http_client()
            .post(format!("{}/api/v1/sql", info.url("rest")))
            .bearer_auth(&cloud.admin_token)
            .json(&json!({"namespace": "iam", "statements": [{"sql": format!("SELECT * FROM {table}")}]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        dump.push_str(&r.to_string());
    }
    assert!(dump.contains("ann"), "the dump is real: {dump}");
    for (what, s) in [
        ("password", PW_A),
        ("API key secret", secret),
        ("wrong password", "wrong-password-999"),
    ] {
        assert!(!dump.contains(s), "{what} stored in plaintext");
    }
    assert!(!dump.contains("$argon2"), "password hashes are sealed too");

    // Nothing secret in the node's log (which runs at debug for iam here? default info).
    let log = cloud.cluster.node(0).log();
    for (what, s) in [
        ("password", PW_A),
        ("wrong password", "wrong-password-999"),
        ("API key", secret),
        ("access token", token.as_str()),
        ("admin token", cloud.admin_token.as_str()),
    ] {
        assert!(!log.contains(s), "{what} in the log");
    }
}
