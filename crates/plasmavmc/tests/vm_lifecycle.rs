//! A real tiny guest (TCG) through plasmavmc's API under `ultracloud up`: boot marker read
//! through the console API, user-data through NoCloud, a coronafs volume whose data survives
//! stop/start and an agent restart, the agent killed while the VM runs (the VM keeps running
//! and is adopted), reboot, offline resize, delete refusing a running VM without force.

mod cloud;

use reqwest::Method;
use serde_json::json;

use cloud::QemuReaper;

fn boots(console: &str) -> Vec<u64> {
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("UC-DISK boots="))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_boots_keeps_its_disk_and_survives_an_agent_kill() {
    let mut cloud = cloud::up("").await;
    let _reaper = QemuReaper(cloud.worker_dir());
    let t = cloud.tenant("acme").await;
    let image = cloud.tiny_image(&t, "tiny").await;

    let (s, vm) = cloud
        .as_(
            &t,
            Method::POST,
            "/v1/vms",
            Some(json!({
                "name": "box",
                "image": "tiny",
                "vcpus": 1,
                "memory_mib": 160,
                "root_volume_mib": 8,
                "user_data": "#!/bin/sh\necho hello-from-user-data\n",
            })),
        )
        .await;
    assert_eq!(s, 201, "{vm}");
    let id = vm["id"].as_str().unwrap().to_owned();
    assert_eq!(vm["image_id"], image.as_str());
    assert_eq!(vm["volumes"][0]["role"], "root");
    assert_eq!(vm["has_user_data"], true);
    assert!(
        vm.get("user_data").is_none(),
        "user-data is not echoed back"
    );

    cloud.wait_state(&t, &id, "running").await;
    let (console, offset) = cloud.wait_console(&t, &id, "UC-BOOT-OK box", 0).await;
    assert!(console.contains("UC-USER-DATA #!/bin/sh"), "{console}");
    assert!(
        console.contains("hello-from-user-data"),
        "user-data ran: {console}"
    );
    assert_eq!(boots(&console), vec![1], "{console}");
    let pids = cloud::qemu_pids(&id);
    assert_eq!(pids.len(), 1, "one QEMU for the VM");

    // A running VM is not deleted without force; nothing changes.
    let (s, e) = cloud
        .as_(&t, Method::DELETE, &format!("/v1/vms/{id}"), None)
        .await;
    assert_eq!(s, 409, "{e}");
    assert_eq!(e["error"]["code"], "conflict");
    let (s, e) = cloud
        .as_(
            &t,
            Method::POST,
            &format!("/v1/vms/{id}/resize"),
            Some(json!({"memory_mib": 192})),
        )
        .await;
    assert_eq!(s, 409, "resize is offline: {e}");
    assert_eq!(cloud::qemu_pids(&id), pids);

    // Kill the whole `up` process (the agent with it) while the VM runs.
    cloud.cluster.node_mut(0).kill();
    assert_eq!(cloud::qemu_pids(&id), pids, "the VM outlives its agent");
    cloud.cluster.restart(0).await.unwrap();
    cloud.wait_workers(1).await;
    // Adopted, not restarted: same process, console continues, state running.
    let vm = cloud.wait_state(&t, &id, "running").await;
    assert_eq!(cloud::qemu_pids(&id), pids, "adopted, not restarted: {vm}");
    let (s, log) = cloud
        .as_(
            &t,
            Method::GET,
            &format!("/v1/vms/{id}/console?offset={offset}"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{log}");
    assert!(
        !log["data"].as_str().unwrap().contains("UC-BOOT-OK"),
        "no second boot: {log}"
    );

    // Reboot through the API: the guest boots again on the same disk.
    let (s, e) = cloud
        .as_(&t, Method::POST, &format!("/v1/vms/{id}/reboot"), None)
        .await;
    assert_eq!(s, 200, "{e}");
    let (console, offset) = cloud.wait_console(&t, &id, "UC-BOOT-OK box", offset).await;
    assert_eq!(boots(&console), vec![2], "{console}");
    assert_eq!(cloud::qemu_pids(&id), pids, "a reboot keeps the process");

    // Graceful stop: QEMU goes away; the volume keeps the data for the next start.
    let (s, e) = cloud
        .as_(
            &t,
            Method::POST,
            &format!("/v1/vms/{id}/stop"),
            Some(json!({"timeout_secs": 60})),
        )
        .await;
    assert_eq!(s, 200, "{e}");
    cloud.wait_state(&t, &id, "stopped").await;
    assert!(cloud::qemu_pids(&id).is_empty());
    // Offline resize.
    let (s, vm) = cloud
        .as_(
            &t,
            Method::POST,
            &format!("/v1/vms/{id}/resize"),
            Some(json!({"memory_mib": 192, "vcpus": 2})),
        )
        .await;
    assert_eq!(s, 200, "{vm}");
    assert_eq!(
        (vm["memory_mib"].as_u64(), vm["vcpus"].as_u64()),
        (Some(192), Some(2))
    );
    let (s, _) = cloud
        .as_(&t, Method::POST, &format!("/v1/vms/{id}/start"), None)
        .await;
    assert_eq!(s, 200);
    cloud.wait_state(&t, &id, "running").await;
    let (console, _) = cloud.wait_console(&t, &id, "UC-BOOT-OK box", offset).await;
    assert_eq!(
        boots(&console),
        vec![3],
        "the disk survived stop/start: {console}"
    );
    let new_pid = cloud::qemu_pids(&id);
    assert_eq!(new_pid.len(), 1);
    let cmdline = std::fs::read_to_string(format!("/proc/{}/cmdline", new_pid[0]))
        .unwrap()
        .replace('\0', " ");
    assert!(
        cmdline.contains("-m 192M") && cmdline.contains("-smp 2"),
        "{cmdline}"
    );

    let (s, events) = cloud
        .as_(&t, Method::GET, &format!("/v1/vms/{id}/events"), None)
        .await;
    assert_eq!(s, 200);
    let kinds: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for k in ["created", "reboot", "stop", "resize", "start"] {
        assert!(kinds.contains(&k), "{k} in {kinds:?}");
    }

    // Forced delete of the running VM: QEMU, volume and record all go.
    let volume = vm["volumes"][0]["volume_id"].as_str().unwrap().to_owned();
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
    assert!(cloud::qemu_pids(&id).is_empty(), "no orphan QEMU");
    let (s, _) = cloud::call(
        &cloud.info.url("coronafs"),
        Some(&cloud.admin_token),
        Method::GET,
        &format!("/v1/volumes/{volume}"),
        None,
    )
    .await;
    assert_eq!(s, 404, "the VM's volume is deleted with it");
    assert!(!cloud.worker_dir().join("run").join(&id).exists());
}

/// A disk image: coronafs clones the VM's root volume from it, QEMU boots the root volume
/// through the firmware (a blank disk here: the VM runs, with nothing to boot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_image_becomes_the_root_volume() {
    let cloud = cloud::up("").await;
    let _reaper = QemuReaper(cloud.worker_dir());
    let t = cloud.tenant("disky").await;
    let dir = tempfile::tempdir().unwrap();
    let image_file = dir.path().join("disk.raw");
    let mut bytes = vec![0u8; 2 * 1024 * 1024];
    let pattern = b"UC-IMAGE-PATTERN-0123456789";
    bytes[..pattern.len()].copy_from_slice(pattern);
    std::fs::write(&image_file, &bytes).unwrap();
    let (s, img) = cloud
        .as_(
            &t,
            Method::POST,
            "/v1/images",
            Some(json!({"name": "blank", "kind": "disk", "disk": image_file, "format": "raw"})),
        )
        .await;
    assert_eq!(s, 201, "{img}");
    assert_eq!(img["size_bytes"].as_u64(), Some(bytes.len() as u64));
    // A root volume smaller than the image is refused, nothing created.
    let (s, e) = cloud
        .as_(
            &t,
            Method::POST,
            "/v1/vms",
            Some(json!({"name": "small", "image": "blank", "vcpus": 1, "memory_mib": 64, "root_volume_mib": 1})),
        )
        .await;
    assert_eq!(s, 400, "{e}");

    let (s, vm) = cloud
        .as_(
            &t,
            Method::POST,
            "/v1/vms",
            Some(json!({"name": "disky", "image": "blank", "vcpus": 1, "memory_mib": 64, "root_volume_mib": 4})),
        )
        .await;
    assert_eq!(s, 201, "{vm}");
    let id = vm["id"].as_str().unwrap().to_owned();
    assert_eq!(vm["volumes"][0]["role"], "root");
    assert_eq!(vm["volumes"][0]["size_mib"], 4);
    let volume = vm["volumes"][0]["volume_id"].as_str().unwrap().to_owned();
    cloud.wait_state(&t, &id, "running").await;
    let pids = cloud::qemu_pids(&id);
    assert_eq!(pids.len(), 1);
    let cmdline = std::fs::read_to_string(format!("/proc/{}/cmdline", pids[0]))
        .unwrap()
        .replace('\0', " ");
    assert!(!cmdline.contains("-kernel"), "firmware boot: {cmdline}");
    assert!(cmdline.contains("bootindex=0"), "{cmdline}");
    assert!(
        cmdline.contains("nbd://"),
        "the root volume through NBD: {cmdline}"
    );
    // The volume's bytes start with the image's.
    let file = std::fs::read_dir(cloud.info.data_dir.join("coronafs/volumes"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&volume))
        .expect("the root volume's file")
        .path();
    let head = std::fs::read(&file).unwrap();
    assert_eq!(&head[..pattern.len()], pattern, "{}", file.display());
    assert_eq!(head.len(), 4 * 1024 * 1024, "grown to the requested size");

    let (s, _) = cloud
        .as_(
            &t,
            Method::DELETE,
            &format!("/v1/vms/{id}?force=true"),
            None,
        )
        .await;
    assert!(s == 204 || s == 202);
    cloud.wait_gone(&t, &id).await;
    assert!(cloud::qemu_pids(&id).is_empty());
    assert!(!file.exists(), "the cloned volume is deleted with the VM");
}
