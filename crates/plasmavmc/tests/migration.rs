//! Live migration of a running tiny guest between two worker processes (the one in `up` and a
//! second `ultracloud serve plasmavmc-worker`), on shared coronafs storage (NBD attached to
//! both): the guest keeps running (its tick counter continues, no second boot) and keeps its
//! disk.

mod cloud;

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use uc_testkit::{Cluster, Ready};

use cloud::QemuReaper;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_migration_between_two_worker_processes() {
    let cloud = cloud::up("").await;
    let _reaper = QemuReaper(cloud.worker_dir());
    let control_plane = cloud.url.clone();
    let coronafs = cloud.info.url("coronafs");
    let token_file = cloud.info.data_dir.join("secrets/admin-token");
    let mut second = Cluster::builder(1)
        .ports(&["worker"])
        .config(move |n, _| {
            format!(
                "[node]\nname = \"uc-w2\"\nbind = \"{ip}\"\ndata_dir = \"{data}\"\n[auth]\nadmin_token_file = \"{token}\"\n\
                 [plasmavmc_worker]\nport = {port}\naccel = \"tcg\"\nheartbeat_secs = 2\n\
                 control_plane_url = \"{control_plane}\"\ncoronafs_url = \"{coronafs}\"\n",
                ip = n.ip,
                data = n.data_dir.display(),
                token = token_file.display(),
                port = n.port("worker"),
            )
        })
        .args(|n| {
            vec![
                "serve".into(),
                "plasmavmc-worker".into(),
                "--config".into(),
                n.config_path.display().to_string(),
            ]
        })
        .ready(Ready::http("worker", "/readyz"))
        .start()
        .await
        .expect("second worker starts");
    let second_dir = second.node(0).info.data_dir.join("plasmavmc-worker");
    let _reaper2 = QemuReaper(second_dir.clone());
    cloud.wait_workers(2).await;

    let t = cloud.tenant("mover").await;
    // The image by URL: each worker downloads kernel and initrd when it first needs them
    // (the destination only when the VM migrates to it).
    let g = cloud::guest();
    let images = cloud::serve_files(vec![
        ("vmlinux", g.kernel.clone()),
        ("initrd", g.initrd.clone()),
    ])
    .await;
    let (s, img) = cloud
        .as_(
            &t,
            Method::POST,
            "/v1/images",
            Some(json!({"name": "ticker", "kind": "kernel", "kernel": format!("{images}/vmlinux"),
                "initrd": format!("{images}/initrd"), "cmdline": "console=ttyS0 loglevel=4 uc.tick=1"})),
        )
        .await;
    assert_eq!(s, 201, "{img}");
    let (s, vm) = cloud
        .as_(
            &t,
            Method::POST,
            "/v1/vms",
            Some(json!({"name": "mover", "image": "ticker", "vcpus": 1, "memory_mib": 128, "root_volume_mib": 8})),
        )
        .await;
    assert_eq!(s, 201, "{vm}");
    let id = vm["id"].as_str().unwrap().to_owned();
    let source = vm["worker"].as_str().unwrap().to_owned();
    let target = if source == "uc-w2" {
        cloud.ok(Method::GET, "/v1/workers", None).await["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["name"].as_str().unwrap().to_owned())
            .find(|n| n != "uc-w2")
            .unwrap()
    } else {
        "uc-w2".to_owned()
    };
    cloud.wait_state(&t, &id, "running").await;
    let (console, _) = cloud.wait_console(&t, &id, "UC-TICK 2", 0).await;
    assert!(console.contains("UC-BOOT-OK mover"), "{console}");
    assert!(console.contains("UC-DISK boots=1"), "{console}");
    let before = cloud::qemu_pids(&id);
    assert_eq!(before.len(), 1);

    // Bad input first: unknown worker, the VM's own worker.
    let (s, e) = cloud
        .as_(
            &t,
            Method::POST,
            &format!("/v1/vms/{id}/migrate"),
            Some(json!({"worker": "nope"})),
        )
        .await;
    assert_eq!(s, 400, "{e}");
    let (s, e) = cloud
        .as_(
            &t,
            Method::POST,
            &format!("/v1/vms/{id}/migrate"),
            Some(json!({"worker": source})),
        )
        .await;
    assert_eq!(s, 400, "{e}");

    let (s, moved) = cloud
        .as_(
            &t,
            Method::POST,
            &format!("/v1/vms/{id}/migrate"),
            Some(json!({"worker": target})),
        )
        .await;
    assert_eq!(s, 200, "{moved}");
    assert_eq!(moved["worker"], target.as_str(), "{moved}");
    assert_eq!(moved["state"], "running", "{moved}");
    assert!(moved["migrating_to"].is_null());

    // A different QEMU process runs it now, under the target's run dir; the old one is gone.
    let after = cloud::qemu_pids(&id);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(after, before);
    let target_dir = if target == "uc-w2" {
        second_dir.clone()
    } else {
        cloud.worker_dir()
    };
    assert_eq!(cloud::qemus_under(&target_dir), after);
    // The guest kept running: its ticks continue on the target's console without a boot.
    let (console, _) = cloud.wait_console(&t, &id, "UC-TICK", 0).await;
    assert!(!console.contains("UC-BOOT-OK"), "no reboot: {console}");
    let (s, events) = cloud
        .as_(&t, Method::GET, &format!("/v1/vms/{id}/events"), None)
        .await;
    assert_eq!(s, 200);
    assert!(events.to_string().contains("migrated"), "{events}");

    // Same disk: stop/start on the target counts the second boot.
    let (s, _) = cloud
        .as_(
            &t,
            Method::POST,
            &format!("/v1/vms/{id}/stop"),
            Some(json!({"timeout_secs": 0})),
        )
        .await;
    assert_eq!(s, 200);
    cloud.wait_state(&t, &id, "stopped").await;
    let (s, _) = cloud
        .as_(&t, Method::POST, &format!("/v1/vms/{id}/start"), None)
        .await;
    assert_eq!(s, 200);
    // The target's console had no boot marker before (the guest arrived running).
    let (console, _) = cloud.wait_console(&t, &id, "UC-BOOT-OK mover", 0).await;
    assert!(console.contains("UC-DISK boots=2"), "{console}");

    let (s, _) = cloud
        .as_(
            &t,
            Method::DELETE,
            &format!("/v1/vms/{id}?force=true"),
            None,
        )
        .await;
    assert!(s == 204 || s == 202, "{s}");
    cloud.wait_gone(&t, &id).await;
    assert!(cloud::qemus_under(&cloud.worker_dir()).is_empty());
    assert!(cloud::qemus_under(&second_dir).is_empty());
    second.node_mut(0).terminate(Duration::from_secs(10));
}
