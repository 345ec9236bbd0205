//! The admin REST API and the `ultracloud chainfire` CLI against a running member.

mod common;

use std::process::Command;

use common::*;

#[tokio::test]
async fn admin_rest_status_members_backup_and_cli() {
    let cluster = chainfire_cluster(1, "").start().await.unwrap();
    let n = cluster.node(0).info.clone();
    let http = uc_testkit::http_client();
    let admin = n.url("admin");
    let token = cluster.admin_token().to_owned();
    ok(etcdctl(&cluster, &[&n], &["put", "x", "1"]));

    // Everything but health needs the token.
    let r = http.get(format!("{admin}/v1/status")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let status: serde_json::Value = http
        .get(format!("{admin}/v1/status"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["name"], n.name.as_str());
    assert_eq!(status["leader"], status["member_id"]);
    assert_eq!(status["keys"], 1);
    assert_eq!(status["revision"], 2);

    let members: serde_json::Value = http
        .get(format!("{admin}/v1/members"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(members[0]["peer_url"], peer_url(&n).as_str());

    // Bad member requests: clean 4xx in the shared error shape.
    let r = http
        .post(format!("{admin}/v1/members"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"peer_url": "not a url"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_argument");
    let r = http
        .post(format!("{admin}/v1/members"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"peer_url": peer_url(&n)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let r = http
        .delete(format!("{admin}/v1/members/ffff"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .delete(format!("{admin}/v1/members/zz-not-hex"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // The backup endpoint serves the same format etcdctl saves.
    let backup = http
        .get(format!("{admin}/v1/backup"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let snapshot = chainfire::state::open_backup(backup.to_vec()).unwrap();
    let (_, revision, keys) = chainfire::state::backup_summary(&snapshot).unwrap();
    assert_eq!((revision, keys), (2, 1));

    let doc: serde_json::Value = http
        .get(format!("{admin}/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        doc["paths"]["/v1/members/{id}/promote"].is_object(),
        "{doc}"
    );

    // The CLI: member list (JSON) and snapshot save.
    let out = Command::new(uc_testkit::ultracloud_binary())
        .args([
            "-o",
            "json",
            "chainfire",
            "member",
            "list",
            "--endpoint",
            &n.url("client"),
        ])
        .arg("--token-file")
        .arg(&n.admin_token_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["name"], n.name.as_str());
    let file = cluster.root().join("cli.snapshot");
    let out = Command::new(uc_testkit::ultracloud_binary())
        .args(["chainfire", "snapshot", "save"])
        .arg(&file)
        .args(["--endpoint", &n.url("client"), "--token-file"])
        .arg(&n.admin_token_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("REVISION"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600,
        "backups hold data: 0600"
    );

    // A wrong token is refused by the CLI's server call.
    let bad = cluster.root().join("bad-token");
    uc_runtime::secret::write_secret_file(&bad, b"definitely-not-the-token-0123456789abcdef")
        .unwrap();
    let out = Command::new(uc_testkit::ultracloud_binary())
        .args([
            "chainfire",
            "member",
            "list",
            "--endpoint",
            &n.url("client"),
            "--token-file",
        ])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid auth token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
