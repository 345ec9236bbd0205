//! coronafs under `ultracloud up` (controller and node in one process), driven through its
//! HTTP API and CLI, with real qemu-io/qemu-img reading and writing through the NBD exports.

mod common;

use reqwest::Method;
use serde_json::{Value, json};
use uc_testkit::Cluster;

use common::*;

struct Cloud {
    cluster: Cluster,
    url: String,
    iam: String,
    admin: String,
    _reaper: NbdReaper,
}

/// Faster heartbeats so a test need not wait for registration and reconciliation.
async fn up() -> Cloud {
    let cluster = Cluster::all_in_one("")
        .env("UC_CORONAFS__HEARTBEAT_SECS", "1")
        .env("UC_CORONAFS__NODE_LIVENESS_SECS", "5")
        .start()
        .await
        .expect("ultracloud up starts");
    let info = cluster.node(0).info.clone();
    let admin = std::fs::read_to_string(info.data_dir.join("secrets/admin-token"))
        .unwrap()
        .trim()
        .to_owned();
    let cloud = Cloud {
        url: info.url("coronafs"),
        iam: info.url("iam"),
        _reaper: NbdReaper(cluster.root().to_path_buf()),
        cluster,
        admin,
    };
    let (url, admin) = (cloud.url.clone(), cloud.admin.clone());
    eventually("the node to register", async || {
        let (s, b) = call(&url, Some(&admin), Method::GET, "/v1/nodes", None).await;
        s == 200 && b[0]["live"] == true
    })
    .await;
    cloud
}

impl Cloud {
    async fn call(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        call(&self.url, Some(token), method, path, body).await
    }

    async fn ok(&self, token: &str, method: Method, path: &str, body: Option<Value>) -> Value {
        let (s, b) = self.call(token, method, path, body).await;
        assert!((200..300).contains(&s), "{path}: {s} {b}");
        b
    }

    fn coronafs_dir(&self) -> std::path::PathBuf {
        self.cluster.node(0).info.data_dir.join("coronafs")
    }

    fn volume_files(&self) -> usize {
        std::fs::read_dir(self.coronafs_dir().join("volumes"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

#[tokio::test]
async fn write_detach_reattach_snapshot_clone_resize() {
    let cloud = up().await;
    let t = tenant(&cloud.iam, &cloud.admin, "acme").await;

    // Capabilities are public; the API is not.
    let (s, caps) = call(&cloud.url, None, Method::GET, "/v1/capabilities", None).await;
    assert_eq!(s, 200);
    assert_eq!(caps["supports_controller_api"], true);
    assert_eq!(caps["supports_node_api"], true);
    let (s, _) = call(&cloud.url, None, Method::GET, "/v1/volumes", None).await;
    assert_eq!(s, 401);
    let (s, doc) = call(&cloud.url, None, Method::GET, "/v1/openapi.json", None).await;
    assert_eq!(s, 200);
    assert!(doc["paths"]["/v1/volumes/{id}/attach"].is_object());

    for format in ["raw", "qcow2"] {
        let v = cloud
            .ok(&t, Method::POST, "/v1/volumes", Some(json!({"name": format!("disk-{format}"), "size_bytes": 64 << 20, "format": format})))
            .await;
        assert_eq!(v["state"], "available", "{v}");
        assert_eq!(v["size_bytes"], 64 << 20);
        assert_eq!(v["format"], format);
        let id = v["id"].as_str().unwrap().to_owned();

        let a = cloud
            .ok(
                &t,
                Method::POST,
                &format!("/v1/volumes/{id}/attach"),
                Some(json!({"worker": "worker-a"})),
            )
            .await;
        assert_eq!(a["transport"], "nbd");
        assert!(
            a["local_path"].is_null(),
            "worker-a is not the volume's node"
        );
        let url = a["nbd_url"].as_str().unwrap().to_owned();
        let v = cloud
            .ok(&t, Method::GET, &format!("/v1/volumes/{id}"), None)
            .await;
        assert_eq!(v["state"], "attached");
        qemu_io(&url, &["write -P 0x5a 0 4M", "write -P 0x11 60M 1M"]);

        // Detach stops the export; reattach serves the same bytes.
        let v = cloud
            .ok(
                &t,
                Method::POST,
                &format!("/v1/volumes/{id}/detach"),
                Some(json!({"worker": "worker-a"})),
            )
            .await;
        assert_eq!(v["state"], "available");
        assert!(
            qemu_nbd_pids_under(&cloud.coronafs_dir()).is_empty(),
            "export stopped"
        );
        let (ok, _) = try_qemu_io(&url, &["read 0 512"]);
        assert!(!ok, "a detached volume is not served");
        let a = cloud
            .ok(
                &t,
                Method::POST,
                &format!("/v1/volumes/{id}/attach"),
                Some(json!({"worker": "worker-a"})),
            )
            .await;
        let url = a["nbd_url"].as_str().unwrap().to_owned();
        qemu_io(&url, &["read -P 0x5a 0 4M", "read -P 0x11 60M 1M"]);

        // Snapshot, write more, clone the snapshot: the clone has the snapshot's bytes.
        let snap = cloud
            .ok(
                &t,
                Method::POST,
                &format!("/v1/volumes/{id}/snapshots"),
                Some(json!({"name": "before"})),
            )
            .await;
        qemu_io(&url, &["write -P 0x77 0 4M"]);
        let clone = cloud
            .ok(&t, Method::POST, "/v1/volumes", Some(json!({"name": format!("clone-{format}"), "format": format, "source": {"type": "snapshot", "snapshot_id": snap["id"]}})))
            .await;
        assert_eq!(clone["size_bytes"], 64 << 20, "{clone}");
        let clone_id = clone["id"].as_str().unwrap().to_owned();
        let ca = cloud
            .ok(
                &t,
                Method::POST,
                &format!("/v1/volumes/{clone_id}/attach"),
                Some(json!({"worker": "worker-b"})),
            )
            .await;
        let clone_url = ca["nbd_url"].as_str().unwrap().to_owned();
        qemu_io(&clone_url, &["read -P 0x5a 0 4M", "read -P 0x11 60M 1M"]);
        qemu_io(&url, &["read -P 0x77 0 4M"]);

        // Grow while attached: a reader sees the new size, and the old bytes.
        let r = cloud
            .ok(
                &t,
                Method::POST,
                &format!("/v1/volumes/{id}/resize"),
                Some(json!({"size_bytes": 128 << 20})),
            )
            .await;
        assert_eq!(r["size_bytes"], 128 << 20);
        assert_eq!(nbd_size(&url), 128 << 20);
        qemu_io(
            &url,
            &[
                "read -P 0x77 0 4M",
                "write -P 0x33 127M 1M",
                "read -P 0x33 127M 1M",
            ],
        );

        for vid in [&id, &clone_id] {
            let worker = if vid == &id { "worker-a" } else { "worker-b" };
            cloud
                .ok(
                    &t,
                    Method::POST,
                    &format!("/v1/volumes/{vid}/detach"),
                    Some(json!({"worker": worker})),
                )
                .await;
            let (s, b) = cloud
                .call(&t, Method::DELETE, &format!("/v1/volumes/{vid}"), None)
                .await;
            assert_eq!(s, 204, "{b}");
            let (s, _) = cloud
                .call(&t, Method::GET, &format!("/v1/volumes/{vid}"), None)
                .await;
            assert_eq!(s, 404);
        }
    }
    assert_eq!(cloud.volume_files(), 0);
    assert!(
        qemu_nbd_pids_under(cloud.cluster.root()).is_empty(),
        "no orphan qemu-nbd after delete"
    );
    let page = cloud.ok(&t, Method::GET, "/v1/volumes", None).await;
    assert_eq!(page["items"], json!([]));
}

#[tokio::test]
async fn bad_input_is_refused_cleanly_and_tenants_are_isolated() {
    let cloud = up().await;
    let t = tenant(&cloud.iam, &cloud.admin, "acme").await;
    let other = tenant(&cloud.iam, &cloud.admin, "globex").await;

    let bad = [
        json!({"name": "a", "size_bytes": -1}),
        json!({"name": "a", "size_bytes": 0}),
        json!({"name": "a", "size_bytes": 1000}),
        json!({"name": "a", "size_bytes": 1u64 << 60}),
        json!({"name": "a", "size_bytes": 1u64 << 20, "format": "vmdk"}),
        json!({"name": "a"}),
        json!({"name": "", "size_bytes": 1u64 << 20}),
        json!({"name": "a/b", "size_bytes": 1u64 << 20}),
        json!({"name": "a", "size_bytes": 1u64 << 20, "bogus": 1}),
        json!({"name": "a", "source": {"type": "image", "location": "/no/such/image.qcow2"}}),
        json!({"name": "a", "source": {"type": "image", "location": "relative.img"}}),
        json!({"name": "a", "source": {"type": "snapshot", "snapshot_id": "snap-0000"}}),
        json!({"name": "a", "size_bytes": 1u64 << 20, "node": "elsewhere"}),
    ];
    for body in bad {
        let (s, b) = cloud
            .call(&t, Method::POST, "/v1/volumes", Some(body.clone()))
            .await;
        assert!(s == 400 || s == 404, "{body}: {s} {b}");
        assert!(b["error"]["code"].is_string(), "{b}");
        assert!(b["error"]["request_id"].is_string(), "{b}");
    }
    let page = cloud
        .ok(&cloud.admin, Method::GET, "/v1/volumes", None)
        .await;
    assert_eq!(page["items"], json!([]), "nothing half-created");
    assert_eq!(cloud.volume_files(), 0);
    assert_eq!(
        std::fs::read_dir(cloud.coronafs_dir().join("tmp"))
            .unwrap()
            .count(),
        0
    );

    let v = cloud
        .ok(
            &t,
            Method::POST,
            "/v1/volumes",
            Some(json!({"name": "data", "size_bytes": 16 << 20})),
        )
        .await;
    let id = v["id"].as_str().unwrap().to_owned();

    // Shrinking and non-multiples are refused; the size stays.
    for size in [8 << 20, 16 << 20 | 1] {
        let (s, b) = cloud
            .call(
                &t,
                Method::POST,
                &format!("/v1/volumes/{id}/resize"),
                Some(json!({"size_bytes": size})),
            )
            .await;
        assert_eq!(s, 400, "{b}");
    }
    // Another tenant sees nothing and can do nothing.
    for (method, path, body) in [
        (Method::GET, format!("/v1/volumes/{id}"), None),
        (Method::DELETE, format!("/v1/volumes/{id}"), None),
        (
            Method::POST,
            format!("/v1/volumes/{id}/attach"),
            Some(json!({"worker": "w"})),
        ),
        (
            Method::POST,
            format!("/v1/volumes/{id}/resize"),
            Some(json!({"size_bytes": 32 << 20})),
        ),
        (
            Method::POST,
            format!("/v1/volumes/{id}/snapshots"),
            Some(json!({"name": "s"})),
        ),
    ] {
        let (s, b) = cloud.call(&other, method, &path, body).await;
        assert_eq!(s, 404, "{path}: {b}");
    }
    let page = cloud.ok(&other, Method::GET, "/v1/volumes", None).await;
    assert_eq!(page["items"], json!([]));
    // The node API is for the service token only.
    let (s, _) = cloud
        .call(&t, Method::DELETE, &format!("/v1/node/volumes/{id}"), None)
        .await;
    assert_eq!(s, 403);

    // Attached: deleting is a conflict, a second worker too (no multi_attach).
    cloud
        .ok(
            &t,
            Method::POST,
            &format!("/v1/volumes/{id}/attach"),
            Some(json!({"worker": "w1"})),
        )
        .await;
    let (s, b) = cloud
        .call(&t, Method::DELETE, &format!("/v1/volumes/{id}"), None)
        .await;
    assert_eq!(s, 409, "{b}");
    assert_eq!(b["error"]["code"], "conflict");
    let (s, _) = cloud
        .call(
            &t,
            Method::POST,
            &format!("/v1/volumes/{id}/attach"),
            Some(json!({"worker": "w2"})),
        )
        .await;
    assert_eq!(s, 409);
    let v = cloud
        .ok(&t, Method::GET, &format!("/v1/volumes/{id}"), None)
        .await;
    assert_eq!(v["state"], "attached");
    assert_eq!(v["size_bytes"], 16 << 20);
    assert_eq!(qemu_nbd_pids_under(cloud.cluster.root()).len(), 1);

    cloud
        .ok(
            &t,
            Method::POST,
            &format!("/v1/volumes/{id}/detach"),
            Some(json!({"worker": "w1"})),
        )
        .await;
    // An export without attachment (as a crash between export and record would leave) is
    // stopped by the reconciler.
    cloud
        .ok(
            &cloud.admin,
            Method::PUT,
            &format!("/v1/node/volumes/{id}/export"),
            Some(json!({"shared": 1})),
        )
        .await;
    assert_eq!(qemu_nbd_pids_under(cloud.cluster.root()).len(), 1);
    let root = cloud.cluster.root().to_path_buf();
    eventually("the reconciler to stop the stray export", async || {
        qemu_nbd_pids_under(&root).is_empty()
    })
    .await;
    let (s, _) = cloud
        .call(&t, Method::DELETE, &format!("/v1/volumes/{id}"), None)
        .await;
    assert_eq!(s, 204);
    assert!(qemu_nbd_pids_under(cloud.cluster.root()).is_empty());
    assert_eq!(cloud.volume_files(), 0);
}

#[tokio::test]
async fn idempotent_create_multi_attach_and_pages() {
    let cloud = up().await;
    let t = tenant(&cloud.iam, &cloud.admin, "acme").await;
    let create = |key: &'static str, body: Value| {
        let url = cloud.url.clone();
        let t = t.clone();
        async move {
            let r = uc_testkit::http_client()
                .post(format!("{url}/v1/volumes"))
                .bearer_auth(&t)
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let body = json!({"name": "shared", "size_bytes": 8 << 20, "multi_attach": true});
    let (s1, a) = create("k-1", body.clone()).await;
    let (s2, b) = create("k-1", body.clone()).await;
    assert_eq!((s1, s2), (201, 201), "{a} {b}");
    assert_eq!(a["id"], b["id"], "the same key returns the same volume");
    let (s, e) = create("k-1", json!({"name": "other", "size_bytes": 8 << 20})).await;
    assert_eq!(s, 409, "{e}");
    let id = a["id"].as_str().unwrap().to_owned();

    // Migration: two workers attached at once see the same bytes.
    let a1 = cloud
        .ok(
            &t,
            Method::POST,
            &format!("/v1/volumes/{id}/attach"),
            Some(json!({"worker": "src"})),
        )
        .await;
    let a2 = cloud
        .ok(
            &t,
            Method::POST,
            &format!("/v1/volumes/{id}/attach"),
            Some(json!({"worker": "dst"})),
        )
        .await;
    assert_eq!(a1["nbd_url"], a2["nbd_url"]);
    let (s, _) = cloud
        .call(
            &t,
            Method::POST,
            &format!("/v1/volumes/{id}/attach"),
            Some(json!({"worker": "third"})),
        )
        .await;
    assert_eq!(s, 409, "at most two attachments");
    let url = a1["nbd_url"].as_str().unwrap();
    qemu_io(url, &["write -P 0x42 0 1M"]);
    qemu_io(url, &["read -P 0x42 0 1M"]);
    let v = cloud
        .ok(
            &t,
            Method::POST,
            &format!("/v1/volumes/{id}/detach"),
            Some(json!({"worker": "src"})),
        )
        .await;
    assert_eq!(v["state"], "attached", "still attached to dst");
    qemu_io(url, &["read -P 0x42 0 1M"]);

    // Local attachment when the worker is the volume's node.
    let node = v["node"].as_str().unwrap().to_owned();
    let (_, local) = create("k-2", json!({"name": "local", "size_bytes": 8 << 20})).await;
    let lid = local["id"].as_str().unwrap();
    let la = cloud
        .ok(
            &t,
            Method::POST,
            &format!("/v1/volumes/{lid}/attach"),
            Some(json!({"worker": node, "prefer_local": true})),
        )
        .await;
    assert_eq!(la["transport"], "local");
    assert!(la["nbd_url"].is_null());
    assert!(std::path::Path::new(la["local_path"].as_str().unwrap()).is_file());

    // Pages.
    for i in 0..3 {
        cloud
            .ok(
                &t,
                Method::POST,
                "/v1/volumes",
                Some(json!({"name": format!("p{i}"), "size_bytes": 1 << 20})),
            )
            .await;
    }
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let path = match &token {
            Some(tk) => format!("/v1/volumes?page_size=2&page_token={tk}"),
            None => "/v1/volumes?page_size=2".into(),
        };
        let page = cloud.ok(&t, Method::GET, &path, None).await;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|v| v["id"].as_str().unwrap().to_owned()));
        match page["next_page_token"].as_str() {
            Some(tk) => token = Some(tk.to_owned()),
            None => break,
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 5);
}

#[tokio::test]
async fn cli_round_trip() {
    let cloud = up().await;
    let token_file = cloud
        .cluster
        .node(0)
        .info
        .data_dir
        .join("secrets/admin-token");
    let run = |args: &[&str]| -> Value {
        let out = std::process::Command::new(uc_testkit::ultracloud_binary())
            .args([
                "-o",
                "json",
                "volume",
                "--endpoint",
                &cloud.url,
                "--token-file",
            ])
            .arg(&token_file)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let v = run(&["create", "cli-disk", "--size", "32M", "--format", "qcow2"]);
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(v["size_bytes"], 32 << 20);
    let a = run(&["attach", &id, "--worker", "w1"]);
    qemu_io(a["nbd_url"].as_str().unwrap(), &["write -P 0x99 0 1M"]);
    let s = run(&["snapshot", &id, "--name", "s1"]);
    let c = run(&[
        "clone",
        s["id"].as_str().unwrap(),
        "--name",
        "cli-clone",
        "--size",
        "64M",
    ]);
    assert_eq!(c["size_bytes"], 64 << 20);
    let r = run(&["resize", &id, "--size", "48M"]);
    assert_eq!(r["size_bytes"], 48 << 20);
    let l = run(&["list"]);
    assert_eq!(l["items"].as_array().unwrap().len(), 2);
    run(&["detach", &id, "--worker", "w1"]);
    run(&["delete", &id]);
    run(&["delete", c["id"].as_str().unwrap()]);
    let g = std::process::Command::new(uc_testkit::ultracloud_binary())
        .args(["volume", "--endpoint", &cloud.url, "--token-file"])
        .arg(&token_file)
        .args(["get", &id])
        .output()
        .unwrap();
    assert!(!g.status.success());
    assert!(String::from_utf8_lossy(&g.stderr).contains("not_found"));
}
