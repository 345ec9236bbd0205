//! Controller and storage node as separate processes: an attached volume keeps serving from
//! its node while the controller is down; the node process killed (-9) and restarted brings its
//! exports back (adopting the qemu-nbd processes that survived, or starting them again when
//! they died too) with no data lost.

mod common;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use reqwest::Method;
use serde_json::json;
use uc_testkit::{Cluster, Ready};

use common::*;

#[tokio::test]
async fn controller_and_node_outages() {
    // The controller: `up` with coronafs's node role off.
    let mut ctl = Cluster::all_in_one("")
        .env("UC_CORONAFS__NODE", "false")
        .env("UC_CORONAFS__HEARTBEAT_SECS", "1")
        .env("UC_CORONAFS__NODE_LIVENESS_SECS", "5")
        .start()
        .await
        .expect("controller cloud starts");
    let ctl_info = ctl.node(0).info.clone();
    let admin = std::fs::read_to_string(ctl_info.data_dir.join("secrets/admin-token"))
        .unwrap()
        .trim()
        .to_owned();
    let coronafs_url = ctl_info.url("coronafs");
    let iam_url = ctl_info.url("iam");

    // The storage node: `serve coronafs` with only the node role, sharing the service token.
    let token_file = ctl.root().join("shared-admin-token");
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&token_file)
        .unwrap()
        .write_all(admin.as_bytes())
        .unwrap();
    let (ctl_url, iam, tf) = (coronafs_url.clone(), iam_url.clone(), token_file.clone());
    let mut storage = Cluster::builder(1)
        .ports(&["node", "coronafs"])
        .config(move |n, _| {
            format!(
                "[node]\nname = \"storage-1\"\nbind = \"{}\"\nport = {}\ndata_dir = \"{}\"\n\
                 [auth]\nadmin_token_file = \"{}\"\niam_url = \"{iam}\"\n\
                 [coronafs]\ncontroller = false\nnode = true\nport = {}\ncontroller_url = \"{ctl_url}\"\nheartbeat_secs = 1\n",
                n.ip,
                n.port("node"),
                n.data_dir.display(),
                tf.display(),
                n.port("coronafs"),
            )
        })
        .args(|n| {
            vec![
                "serve".into(),
                "coronafs".into(),
                "--config".into(),
                n.config_path.display().to_string(),
            ]
        })
        .ready(Ready::http("coronafs", "/readyz"))
        .start()
        .await
        .expect("storage node starts");
    let _reap = (
        NbdReaper(ctl.root().to_path_buf()),
        NbdReaper(storage.root().to_path_buf()),
    );
    let storage_info = storage.node(0).info.clone();
    let storage_dir = storage_info.data_dir.join("coronafs");
    let (s, caps) = call(
        &storage_info.url("coronafs"),
        None,
        Method::GET,
        "/v1/capabilities",
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        caps,
        json!({"supports_controller_api": false, "supports_node_api": true, "node": "storage-1", "version": caps["version"]})
    );

    {
        let (url, admin) = (coronafs_url.clone(), admin.clone());
        eventually("storage-1 to register", async || {
            let (s, b) = call(&url, Some(&admin), Method::GET, "/v1/nodes", None).await;
            s == 200
                && b.as_array().is_some_and(|n| {
                    n.iter()
                        .any(|n| n["name"] == "storage-1" && n["live"] == true)
                })
        })
        .await;
    }
    let t = tenant(&iam_url, &admin, "acme").await;
    let (s, v) = call(
        &coronafs_url,
        Some(&t),
        Method::POST,
        "/v1/volumes",
        Some(json!({"name": "db", "size_bytes": 32 << 20, "format": "qcow2"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["node"], "storage-1");
    let id = v["id"].as_str().unwrap().to_owned();
    let (s, a) = call(
        &coronafs_url,
        Some(&t),
        Method::POST,
        &format!("/v1/volumes/{id}/attach"),
        Some(json!({"worker": "worker-1"})),
    )
    .await;
    assert_eq!(s, 200, "{a}");
    let url = a["nbd_url"].as_str().unwrap().to_owned();
    assert!(
        url.starts_with(&format!("nbd://{}:", storage_info.ip)),
        "{url}"
    );
    qemu_io(&url, &["write -P 0xa1 0 2M"]);

    // 1. The controller (with flaredb and iam) is killed: the node keeps serving the volume.
    ctl.node_mut(0).kill();
    qemu_io(
        &url,
        &[
            "read -P 0xa1 0 2M",
            "write -P 0xb2 2M 2M",
            "read -P 0xb2 2M 2M",
        ],
    );
    assert_eq!(
        uc_testkit::http_status(storage_info.addr("coronafs"), "/healthz").await,
        Some(200)
    );
    ctl.restart(0).await.unwrap();
    let (s, v) = call(
        &coronafs_url,
        Some(&admin),
        Method::GET,
        &format!("/v1/volumes/{id}"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "attached");
    qemu_io(&url, &["read -P 0xa1 0 2M", "read -P 0xb2 2M 2M"]);

    // 2. The node process is killed (-9, its whole process group): the export, in a group of
    //    its own, keeps serving; the restarted node adopts it (same process, same URL).
    let before = qemu_nbd_pids_under(&storage_dir);
    assert_eq!(before.len(), 1);
    storage.node_mut(0).kill();
    qemu_io(&url, &["read -P 0xb2 2M 2M", "write -P 0xc3 4M 1M"]);
    storage.restart(0).await.unwrap();
    assert_eq!(
        qemu_nbd_pids_under(&storage_dir),
        before,
        "adopted, not restarted"
    );
    qemu_io(&url, &["read -P 0xa1 0 2M", "read -P 0xc3 4M 1M"]);

    // 3. The node and its qemu-nbd die together (as in a host crash): the restarted node
    //    starts the export again from its record, on the same port, with every byte.
    storage.node_mut(0).kill();
    for pid in &before {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
    eventually("the export to go away", async || {
        !try_qemu_io(&url, &["read 0 512"]).0
    })
    .await;
    storage.restart(0).await.unwrap();
    let after = qemu_nbd_pids_under(&storage_dir);
    assert_eq!(after.len(), 1);
    assert_ne!(after, before);
    qemu_io(
        &url,
        &[
            "read -P 0xa1 0 2M",
            "read -P 0xb2 2M 2M",
            "read -P 0xc3 4M 1M",
        ],
    );

    // 4. qemu-nbd alone dies: the node's supervisor starts it again.
    let _ = std::process::Command::new("kill")
        .args(["-9", &after[0].to_string()])
        .status();
    eventually("the supervisor to restart the export", async || {
        try_qemu_io(&url, &["read -P 0xc3 4M 1M"]).0
    })
    .await;

    // 5. A graceful stop (SIGTERM) stops the exports with the node; the next start serves them
    //    again.
    let status = storage
        .node_mut(0)
        .terminate(std::time::Duration::from_secs(30));
    assert!(status.is_some(), "the node exits by itself on SIGTERM");
    assert!(qemu_nbd_pids_under(&storage_dir).is_empty());
    storage.restart(0).await.unwrap();
    qemu_io(&url, &["read -P 0xa1 0 2M", "read -P 0xc3 4M 1M"]);

    // 6. A create interrupted by the node going away stays `creating`; the reconciler
    //    finishes it once the node is back, and a retry with the same key returns it.
    storage.node_mut(0).kill();
    let create = async || {
        let r = uc_testkit::http_client()
            .post(format!("{coronafs_url}/v1/volumes"))
            .bearer_auth(&t)
            .header("Idempotency-Key", "late-1")
            .json(&json!({"name": "late", "size_bytes": 8 << 20}))
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<serde_json::Value>().await.unwrap(),
        )
    };
    let (s, b) = create().await;
    assert_eq!(s, 503, "{b}");
    let (_, page) = call(&coronafs_url, Some(&t), Method::GET, "/v1/volumes", None).await;
    let late = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "late")
        .unwrap()
        .clone();
    assert_eq!(late["state"], "creating");
    let late_id = late["id"].as_str().unwrap().to_owned();
    storage.restart(0).await.unwrap();
    eventually("the reconciler to finish the create", async || {
        let (_, v) = call(
            &coronafs_url,
            Some(&t),
            Method::GET,
            &format!("/v1/volumes/{late_id}"),
            None,
        )
        .await;
        v["state"] == "available"
    })
    .await;
    let (s, b) = create().await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["id"], late_id.as_str());
    let (s, _) = call(
        &coronafs_url,
        Some(&t),
        Method::DELETE,
        &format!("/v1/volumes/{late_id}"),
        None,
    )
    .await;
    assert_eq!(s, 204);

    // Clean up through the API: nothing is left on the node.
    let (s, b) = call(
        &coronafs_url,
        Some(&t),
        Method::POST,
        &format!("/v1/volumes/{id}/detach"),
        Some(json!({"worker": "worker-1"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = call(
        &coronafs_url,
        Some(&t),
        Method::DELETE,
        &format!("/v1/volumes/{id}"),
        None,
    )
    .await;
    assert_eq!(s, 204, "{b}");
    assert!(qemu_nbd_pids_under(&storage_dir).is_empty());
    assert_eq!(
        std::fs::read_dir(storage_dir.join("volumes"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(storage_dir.join("exports"))
            .unwrap()
            .count(),
        0
    );
}
