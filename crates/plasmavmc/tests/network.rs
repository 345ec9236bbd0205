//! VMs on prismnet ports under `ultracloud up` (prismnet API + host agent, real taps,
//! bridges and DHCP): the guest gets its port's address by DHCP, prints it on the console read
//! through the API, and reaches another port of its subnet (a network namespace bound as a
//! workload); a port of another tenant is refused with nothing half-created; ports the VM
//! created go with it, ports it was given are released. Needs root (netns, taps).

mod cloud;

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use cloud::{QemuReaper, ip, net, net_ok, network, wait_port};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_gets_dhcp_from_prismnet_and_reaches_its_subnet() {
    // Device and namespace names are global per kernel: a prefix of our own.
    let prefix = format!("p{:x}", std::process::id() % 0xffff);
    let cloud = cloud::up_with("", Some(format!("prefix = \"{prefix}\""))).await;
    let _reaper = QemuReaper(cloud.worker_dir());
    let node = cloud.ok(Method::GET, "/v1/workers", None).await["items"][0]["host"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = cloud.tenant("tenant-a").await;
    let b = cloud.tenant("tenant-b").await;
    let (vpc, subnet) = network(&cloud, &a, "10.61.0.0/16", "10.61.1.0/24").await;
    let (b_vpc, b_subnet) = network(&cloud, &b, "10.61.0.0/16", "10.61.1.0/24").await;

    // Another port of the subnet: a namespace workload with a static address.
    let (_peer_ns, peer_ip, peer_id) =
        cloud::peer_workload(&cloud, &a, &subnet, &node, &format!("{prefix}-peer")).await;

    let g = cloud::guest();
    let (s, img) = cloud
        .as_(
            &a,
            Method::POST,
            "/v1/images",
            Some(
                json!({"name": "tiny", "kind": "kernel", "kernel": g.kernel, "initrd": g.initrd,
                "cmdline": format!("console=ttyS0 loglevel=4 uc.ping={peer_ip}")}),
            ),
        )
        .await;
    assert_eq!(s, 201, "{img}");

    // Another tenant's port: refused, nothing created, the port untouched.
    let foreign = net_ok(
        &cloud,
        &b,
        Method::POST,
        "/v1/ports",
        Some(json!({"subnet_id": b_subnet, "name": "mine"})),
    )
    .await;
    let foreign_id = foreign["id"].as_str().unwrap();
    let (s, e) = cloud
        .as_(
            &a,
            Method::POST,
            "/v1/vms",
            Some(
                json!({"name": "thief", "image": "tiny", "vcpus": 1, "memory_mib": 128,
            "root_volume_mib": 8, "ports": [foreign_id]}),
            ),
        )
        .await;
    assert!(s == 404 || s == 400, "{s} {e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains(foreign_id),
        "{e}"
    );
    let untouched = net_ok(
        &cloud,
        &b,
        Method::GET,
        &format!("/v1/ports/{foreign_id}"),
        None,
    )
    .await;
    assert!(
        untouched["device_id"].is_null() && untouched["binding"].is_null(),
        "{untouched}"
    );
    let (_, vms) = cloud.as_(&a, Method::GET, "/v1/vms", None).await;
    assert_eq!(vms["items"].as_array().unwrap().len(), 0);
    let (_, vols) = cloud::call(
        &cloud.info.url("coronafs"),
        Some(&cloud.admin_token),
        Method::GET,
        "/v1/volumes",
        None,
    )
    .await;
    assert_eq!(
        vols["items"].as_array().unwrap().len(),
        0,
        "no volume left: {vols}"
    );
    assert!(cloud::qemus_under(&cloud.worker_dir()).is_empty());
    // An unknown subnet: same.
    let (s, _) = cloud
        .as_(
            &a,
            Method::POST,
            "/v1/vms",
            Some(
                json!({"name": "lost", "image": "tiny", "vcpus": 1, "memory_mib": 128,
            "subnets": ["subnet-nope"]}),
            ),
        )
        .await;
    assert!(s == 404 || s == 400);

    // A VM with a port it creates in the subnet, and one it is given.
    let given = net_ok(
        &cloud,
        &a,
        Method::POST,
        "/v1/ports",
        Some(json!({"subnet_id": subnet, "name": "given"})),
    )
    .await;
    let given_id = given["id"].as_str().unwrap().to_owned();
    let (s, vm) = cloud
        .as_(
            &a,
            Method::POST,
            "/v1/vms",
            Some(
                json!({"name": "web", "image": "tiny", "vcpus": 1, "memory_mib": 160,
            "subnets": [subnet], "ports": [given_id]}),
            ),
        )
        .await;
    assert_eq!(s, 201, "{vm}");
    let id = vm["id"].as_str().unwrap().to_owned();
    // `ports` come first, then `subnets`.
    assert_eq!(vm["nics"][0]["port_id"], given_id.as_str());
    assert_eq!(vm["nics"][0]["owned"], false);
    assert_eq!(vm["nics"][1]["owned"], true);
    let first_ip = vm["nics"][0]["ips"][0].as_str().unwrap().to_owned();
    let created_port = vm["nics"][1]["port_id"].as_str().unwrap().to_owned();

    cloud.wait_state(&a, &id, "running").await;
    let (console, _) = cloud.wait_console(&a, &id, "UC-BOOT-OK web", 0).await;
    let got = console
        .lines()
        .find_map(|l| l.trim().strip_prefix("UC-GUEST-IP "))
        .unwrap_or("none")
        .to_owned();
    assert_eq!(
        got.split('/').next(),
        Some(first_ip.as_str()),
        "DHCP gave the port's address: {console}"
    );
    assert!(
        console.contains(&format!("UC-PING {peer_ip} ok")),
        "reached the other port: {console}"
    );
    let port = wait_port(&cloud, &a, &given_id, "active").await;
    let tap = port["device"].as_str().unwrap().to_owned();
    assert_eq!(port["device_id"], id.as_str());
    assert!(
        ip(&["link", "show", &tap]).status.success(),
        "tap {tap} exists"
    );

    let (s, _) = cloud
        .as_(
            &a,
            Method::DELETE,
            &format!("/v1/vms/{id}?force=true"),
            None,
        )
        .await;
    assert!(s == 204 || s == 202);
    cloud.wait_gone(&a, &id).await;
    assert!(cloud::qemu_pids(&id).is_empty());
    // The port it created is gone; the one it was given is back, unbound.
    let (s, _) = net(
        &cloud,
        &a,
        Method::GET,
        &format!("/v1/ports/{created_port}"),
        None,
    )
    .await;
    assert_eq!(s, 404);
    let released = net_ok(
        &cloud,
        &a,
        Method::GET,
        &format!("/v1/ports/{given_id}"),
        None,
    )
    .await;
    assert!(released["binding"].is_null(), "{released}");
    assert!(
        released["device_id"].as_str().is_none_or(str::is_empty),
        "{released}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while ip(&["link", "show", &tap]).status.success() {
        assert!(Instant::now() < deadline, "tap {tap} left behind");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The quickstart as a proof lane, against this cloud (one network agent per host: the
    // lane runs here rather than in a test of its own).
    let out = tempfile::tempdir().unwrap();
    let lane = tokio::process::Command::new(uc_testkit::ultracloud_binary())
        .args(["-o", "json", "proof", "fresh-smoke", "--no-start", "--out"])
        .arg(out.path())
        .args([
            "--plasmavmc",
            &cloud.url,
            "--prismnet",
            &cloud.info.url("prismnet"),
        ])
        .arg("--token-file")
        .arg(cloud.info.data_dir.join("secrets/admin-token"))
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&lane.stderr);
    assert!(lane.status.success(), "fresh-smoke failed: {stderr}");
    let dirs: Vec<_> = std::fs::read_dir(out.path()).unwrap().flatten().collect();
    assert_eq!(dirs.len(), 1, "one dated directory");
    let name = dirs[0].file_name().to_string_lossy().into_owned();
    assert!(name.starts_with("fresh-smoke-20"), "{name}");
    let result: Value =
        serde_json::from_slice(&std::fs::read(dirs[0].path().join("result.json")).unwrap())
            .unwrap();
    assert_eq!(result["status"], "pass", "{result}");
    let steps: Vec<&str> = result["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for step in [
        "create network",
        "register image",
        "create VM",
        "boot (marker on the console)",
        "DHCP address from prismnet",
        "clean up",
    ] {
        assert!(steps.contains(&step), "{step} in {steps:?}");
    }
    assert!(
        result["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "pass"),
        "{result}"
    );
    let (_, vms) = cloud.op(Method::GET, "/v1/vms", None).await;
    assert_eq!(
        vms["items"].as_array().unwrap().len(),
        0,
        "the lane cleaned up: {vms}"
    );

    // With nothing answering, the lane records `blocked` (never a pass) and fails.
    let out = tempfile::tempdir().unwrap();
    let lane = tokio::process::Command::new(uc_testkit::ultracloud_binary())
        .args([
            "proof",
            "fresh-smoke",
            "--no-start",
            "--plasmavmc",
            "http://127.0.0.1:9",
            "--out",
        ])
        .arg(out.path())
        .output()
        .await
        .unwrap();
    assert!(!lane.status.success());
    let dir = std::fs::read_dir(out.path())
        .unwrap()
        .flatten()
        .next()
        .unwrap();
    let result: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("result.json")).unwrap()).unwrap();
    assert_eq!(result["status"], "blocked", "{result}");
    assert!(
        !result["missing"].as_array().unwrap().is_empty(),
        "{result}"
    );

    // Leave the host as found: the agent removes the subnets' DHCP servers and bridges
    // once their resources are gone (a killed agent would leave them behind).
    let peer_id = peer_id.as_str();
    cloud::remove_networks(
        &cloud,
        &[
            (&a, format!("/v1/ports/{peer_id}")),
            (&a, format!("/v1/ports/{given_id}")),
            (&b, format!("/v1/ports/{foreign_id}")),
            (&a, format!("/v1/subnets/{subnet}")),
            (&b, format!("/v1/subnets/{b_subnet}")),
            (&a, format!("/v1/vpcs/{vpc}")),
            (&b, format!("/v1/vpcs/{b_vpc}")),
        ],
        &[&prefix],
    )
    .await;
}
