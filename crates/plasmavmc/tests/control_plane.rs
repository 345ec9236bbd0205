//! plasmavmc's control plane through its API under `ultracloud up`: images, workers,
//! placement, bad input leaving nothing behind, tenancy.

mod cloud;

use reqwest::Method;
use serde_json::{Value, json};

use cloud::{Cloud, QemuReaper};

async fn coronafs_volumes(cloud: &Cloud) -> Vec<Value> {
    let (s, b) = cloud::call(
        &cloud.info.url("coronafs"),
        Some(&cloud.admin_token),
        Method::GET,
        "/v1/volumes",
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    b["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_bad_input_and_tenancy() {
    let cloud = cloud::up("").await;
    let _reaper = QemuReaper(cloud.worker_dir());

    // The API needs a token; its description does not.
    let (s, _) = cloud::call(&cloud.url, None, Method::GET, "/v1/vms", None).await;
    assert_eq!(s, 401);
    let (s, doc) = cloud::call(&cloud.url, None, Method::GET, "/v1/openapi.json", None).await;
    assert_eq!(s, 200);
    assert!(doc["paths"]["/v1/vms"].is_object(), "{doc}");

    // The node's own worker registered itself, with TCG as configured.
    let workers = cloud.ok(Method::GET, "/v1/workers", None).await;
    let w = &workers["items"][0];
    assert_eq!(w["state"], "up", "{workers}");
    assert_eq!(w["accel"], "tcg");
    assert!(w["memory_mib"].as_u64().unwrap() > 0);

    let alice = cloud.tenant("alice").await;
    let bob = cloud.tenant("bob").await;
    // Tenants do not manage workers.
    let (s, e) = cloud.as_(&alice, Method::GET, "/v1/workers", None).await;
    assert_eq!(s, 403, "{e}");

    // Image registration: bad input is refused with a clear error and nothing is stored.
    let g = cloud::guest();
    for (body, why) in [
        (
            json!({"name": "t", "kind": "kernel", "kernel": "/nonexistent/vmlinuz"}),
            "missing kernel",
        ),
        (
            json!({"name": "t", "kind": "kernel", "kernel": "vmlinuz"}),
            "relative path",
        ),
        (
            json!({"name": "Bad Name", "kind": "kernel", "kernel": g.kernel}),
            "bad name",
        ),
        (json!({"name": "t", "kind": "disk"}), "disk without a disk"),
        (
            json!({"name": "t", "kind": "disk", "disk": g.kernel, "format": "vmdk"}),
            "unknown format",
        ),
        (
            json!({"name": "t", "kind": "kernel", "kernel": g.kernel, "disk": g.kernel}),
            "mixed kinds",
        ),
        (
            json!({"name": "t", "kind": "floppy", "kernel": g.kernel}),
            "unknown kind",
        ),
    ] {
        let (s, e) = cloud
            .as_(&alice, Method::POST, "/v1/images", Some(body))
            .await;
        assert_eq!(s, 400, "{why}: {e}");
        assert_eq!(e["error"]["code"], "invalid_argument", "{why}: {e}");
        assert!(
            e["error"]["request_id"]
                .as_str()
                .is_some_and(|r| !r.is_empty())
        );
    }
    let (s, e) = cloud
        .as_(
            &alice,
            Method::POST,
            "/v1/images",
            Some(json!({"name": "t", "kind": "kernel", "kernel": g.kernel, "public": true})),
        )
        .await;
    assert_eq!(s, 403, "a tenant cannot publish: {e}");
    let (_, list) = cloud.as_(&alice, Method::GET, "/v1/images", None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 0, "{list}");

    // By URL: it must answer now (HEAD), or the image is refused.
    let files = cloud::serve_files(vec![("vmlinux", g.kernel.clone())]).await;
    let (s, e) = cloud
        .as_(
            &alice,
            Method::POST,
            "/v1/images",
            Some(json!({"name": "web", "kind": "kernel", "kernel": format!("{files}/missing")})),
        )
        .await;
    assert_eq!(s, 400, "a URL that answers 404: {e}");
    let (s, by_url) = cloud
        .as_(
            &alice,
            Method::POST,
            "/v1/images",
            Some(json!({"name": "web", "kind": "kernel", "kernel": format!("{files}/vmlinux")})),
        )
        .await;
    assert_eq!(s, 201, "{by_url}");
    assert_eq!(
        by_url["size_bytes"].as_u64(),
        Some(std::fs::metadata(&g.kernel).unwrap().len())
    );
    let (s, _) = cloud
        .as_(&alice, Method::DELETE, "/v1/images/web", None)
        .await;
    assert_eq!(s, 204);
    let image = cloud.tiny_image(&alice, "tiny").await;
    // An image create with an idempotency key: a repeat answers the same image.
    let keyed_image = || {
        uc_testkit::http_client()
            .post(format!("{}/v1/images", cloud.url))
            .bearer_auth(&alice)
            .header("idempotency-key", "img-key-1")
            .json(&json!({"name": "keyed", "kind": "kernel", "kernel": g.kernel}))
            .send()
    };
    let first: Value = keyed_image().await.unwrap().json().await.unwrap();
    let again = keyed_image().await.unwrap();
    assert_eq!(again.status().as_u16(), 201);
    let again: Value = again.json().await.unwrap();
    assert_eq!(first["id"], again["id"], "{first} {again}");
    let (s, _) = cloud
        .as_(&alice, Method::DELETE, "/v1/images/keyed", None)
        .await;
    assert_eq!(s, 204);
    let (s, e) = cloud
        .as_(
            &alice,
            Method::POST,
            "/v1/images",
            Some(json!({"name": "tiny", "kind": "kernel", "kernel": g.kernel})),
        )
        .await;
    assert_eq!(s, 409, "duplicate name: {e}");
    // By id and by name for its owner; invisible to another tenant.
    let (s, _) = cloud
        .as_(&alice, Method::GET, &format!("/v1/images/{image}"), None)
        .await;
    assert_eq!(s, 200);
    let (s, by_name) = cloud
        .as_(&alice, Method::GET, "/v1/images/tiny", None)
        .await;
    assert_eq!((s, by_name["id"].as_str()), (200, Some(image.as_str())));
    let (s, _) = cloud
        .as_(&bob, Method::GET, &format!("/v1/images/{image}"), None)
        .await;
    assert_eq!(s, 404);

    // VM creates with bad input: each refused, nothing created anywhere.
    let vm = |image: &str, vcpus: u32, memory: u64| json!({"name": "web", "image": image, "vcpus": vcpus, "memory_mib": memory, "root_volume_mib": 8});
    for (token, body, status, why) in [
        (&alice, vm("no-such-image", 1, 128), 400, "unknown image"),
        (&bob, vm(&image, 1, 128), 400, "another tenant's image"),
        (&alice, vm(&image, 0, 128), 400, "zero vCPUs"),
        (
            &alice,
            vm(&image, 1, 1 << 30),
            400,
            "memory larger than any worker",
        ),
        (&alice, vm(&image, 1, 4), 400, "too little memory"),
        (
            &alice,
            json!({"name": "web", "image": image, "vcpus": 1, "memory_mib": 128, "volumes": [{"size_mib": 0}]}),
            400,
            "zero-sized volume",
        ),
        (
            &alice,
            json!({"name": "Web!", "image": image, "vcpus": 1, "memory_mib": 128}),
            400,
            "bad name",
        ),
        (
            &alice,
            json!({"name": "web", "image": image, "vcpus": 1, "memory_mib": 128, "cores": 2}),
            400,
            "unknown field",
        ),
    ] {
        let (s, e) = cloud.as_(token, Method::POST, "/v1/vms", Some(body)).await;
        assert_eq!(s, status, "{why}: {e}");
        assert!(
            e["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{why}: {e}"
        );
    }
    let largest = cloud.ok(Method::GET, "/v1/workers", None).await["items"][0]["memory_mib"]
        .as_u64()
        .unwrap();
    let (s, e) = cloud
        .as_(
            &alice,
            Method::POST,
            "/v1/vms",
            Some(vm(&image, 1, largest + 1)),
        )
        .await;
    assert_eq!(s, 400, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("larger than any worker"),
        "{e}"
    );
    let all = cloud.ok(Method::GET, "/v1/vms", None).await;
    assert_eq!(
        all["items"].as_array().unwrap().len(),
        0,
        "no VM row: {all}"
    );
    assert!(coronafs_volumes(&cloud).await.is_empty(), "no volume left");
    assert!(
        cloud::qemus_under(&cloud.worker_dir()).is_empty(),
        "no QEMU"
    );

    // An image in use cannot be deleted; an unused one can.
    let (s, created) = cloud
        .as_(&alice, Method::POST, "/v1/vms", Some(json!({"name": "idle", "image": image, "vcpus": 1, "memory_mib": 64, "start": false})))
        .await;
    assert_eq!(s, 201, "{created}");
    let id = created["id"].as_str().unwrap();
    let (s, _) = cloud
        .as_(&alice, Method::DELETE, &format!("/v1/images/{image}"), None)
        .await;
    assert_eq!(s, 409);
    // Tenancy: bob sees neither the VM nor its console.
    for path in [
        format!("/v1/vms/{id}"),
        format!("/v1/vms/{id}/console"),
        format!("/v1/vms/{id}/events"),
    ] {
        let (s, _) = cloud.as_(&bob, Method::GET, &path, None).await;
        assert_eq!(s, 404, "{path}");
    }
    let (s, _) = cloud
        .as_(
            &bob,
            Method::DELETE,
            &format!("/v1/vms/{id}?force=true"),
            None,
        )
        .await;
    assert_eq!(s, 404);
    let (_, bobs) = cloud.as_(&bob, Method::GET, "/v1/vms", None).await;
    assert_eq!(bobs["items"].as_array().unwrap().len(), 0);
    cloud.wait_state(&alice, id, "stopped").await;
    let (s, _) = cloud
        .as_(&alice, Method::DELETE, &format!("/v1/vms/{id}"), None)
        .await;
    assert!(s == 204 || s == 202, "{s}");
    cloud.wait_gone(&alice, id).await;
    let (s, e) = cloud
        .as_(&alice, Method::DELETE, &format!("/v1/images/{image}"), None)
        .await;
    assert_eq!(s, 204, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_spreads_by_free_capacity_and_never_overfills() {
    let cloud = cloud::up("worker_timeout_secs = 600").await;
    let _reaper = QemuReaper(cloud.worker_dir());
    let tenant = cloud.tenant("placer").await;
    let image = cloud.tiny_image(&tenant, "tiny").await;
    // Keep the real worker out of it; two registered workers with known capacity take VMs
    // (created stopped, so nothing needs to run there).
    let real = cloud.ok(Method::GET, "/v1/workers", None).await["items"][0]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    cloud
        .ok(Method::POST, &format!("/v1/workers/{real}/drain"), None)
        .await;
    for (name, mem) in [("w-a", 1000), ("w-b", 600)] {
        cloud
            .ok(
                Method::PUT,
                &format!("/v1/workers/{name}"),
                Some(
                    json!({"name": name, "url": "http://127.0.0.1:9", "host": name, "vcpus": 16,
                    "memory_mib": mem, "accel": "tcg", "migration_address": "127.0.0.1"}),
                ),
            )
            .await;
    }
    let create = |name: String, mem: u64| {
        let cloud = &cloud;
        let tenant = &tenant;
        let image = &image;
        async move {
            cloud
                .as_(tenant, Method::POST, "/v1/vms", Some(json!({"name": name, "image": image, "vcpus": 1, "memory_mib": mem, "start": false})))
                .await
        }
    };
    let (s, a) = create("a".into(), 400).await;
    assert_eq!(s, 201, "{a}");
    assert_eq!(a["worker"], "w-a", "most free memory wins");
    let (s, b) = create("b".into(), 400).await;
    // 600 MiB free on each: the one with more free vCPUs (w-b) wins the tie.
    assert_eq!((s, b["worker"].as_str()), (201, Some("w-b")), "{b}");
    let (s, c) = create("c".into(), 400).await;
    assert_eq!((s, c["worker"].as_str()), (201, Some("w-a")), "{c}");
    // 200 MiB left on each: 400 fits nowhere now (409), but would fit an empty worker.
    let (s, e) = create("d".into(), 400).await;
    assert_eq!(s, 409, "{e}");
    assert_eq!(e["error"]["code"], "insufficient_capacity");
    let ws = cloud.ok(Method::GET, "/v1/workers", None).await;
    let used: Vec<(String, u64)> = ws["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["name"].as_str().unwrap().to_owned(),
                w["used_memory_mib"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        used.contains(&("w-a".into(), 800)) && used.contains(&("w-b".into(), 400)),
        "{used:?}"
    );

    // Concurrent creates never overfill: 200 MiB free on each, 8 creates of 100 MiB race
    // for 4 slots.
    let results =
        futures_util::future::join_all((0..8).map(|i| create(format!("race-{i}"), 100))).await;
    let ok = results.iter().filter(|(s, _)| *s == 201).count();
    let full = results.iter().filter(|(s, _)| *s == 409).count();
    assert_eq!((ok, full), (4, 4), "{results:?}");
    let ws = cloud.ok(Method::GET, "/v1/workers", None).await;
    for w in ws["items"].as_array().unwrap() {
        assert!(
            w["used_memory_mib"].as_u64() <= w["memory_mib"].as_u64(),
            "overfilled: {w}"
        );
    }

    // Idempotent create: the same key returns the same VM, not a second one.
    cloud
        .ok(Method::POST, &format!("/v1/workers/{real}/undrain"), None)
        .await;
    let keyed = |key: &'static str| {
        let url = cloud.url.clone();
        let tenant = tenant.clone();
        let image = image.clone();
        async move {
            let r = uc_testkit::http_client()
                .post(format!("{url}/v1/vms"))
                .bearer_auth(tenant)
                .header("idempotency-key", key)
                .json(&json!({"name": "keyed", "image": image, "vcpus": 1, "memory_mib": 64, "start": false}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (s1, v1) = keyed("k-1").await;
    let (s2, v2) = keyed("k-1").await;
    assert_eq!((s1, s2), (201, 201), "{v1} {v2}");
    assert_eq!(v1["id"], v2["id"]);
    let (s3, e) = keyed("k-2").await;
    assert_eq!(s3, 409, "same name, new key: {e}");
}
