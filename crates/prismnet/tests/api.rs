//! prismnet's API against a real flaredb and iam: CRUD, tenancy, bad input (nothing
//! half-created), IPAM uniqueness under concurrency and across restarts, idempotency,
//! routers, floating IPs, pools, and the agent endpoints.

mod common;

use std::collections::HashSet;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crud_versions_and_deletion_order() {
    let cloud = cloud().await;
    let api = cloud.api().await;
    let net = Net::new(&api.url, &cloud.admin_token);

    // The OpenAPI document is public; the API is not.
    let (s, doc) = call(&api.url, None, Method::GET, "/v1/openapi.json", None).await;
    assert_eq!(s, 200);
    assert!(doc["paths"]["/v1/ports"].is_object(), "{doc}");
    let (s, b) = call(&api.url, None, Method::GET, "/v1/vpcs", None).await;
    assert_eq!(s, 401, "{b}");
    assert_eq!(code(&b), "unauthenticated");

    let (vpc, subnet) = net.network("10.20.0.0/16", "10.20.1.0/24").await;
    assert_eq!(subnet["gateway"], "10.20.1.1");
    assert_eq!(subnet["dhcp_server_ip"], "10.20.1.2");
    assert!(subnet["vni"].as_u64().unwrap() >= 4096);
    let sg = net
        .ok(&format!(
            "/v1/security-groups/{}",
            vpc["default_security_group"].as_str().unwrap()
        ))
        .await;
    assert_eq!(sg["is_default"], true);
    let rules = sg["rules"].as_array().unwrap();
    assert!(
        rules
            .iter()
            .any(|r| r["direction"] == "ingress" && r["remote_group"] == sg["id"]),
        "{sg}"
    );
    assert!(
        rules.iter().any(|r| r["direction"] == "egress"
            && r["remote_group"].is_null()
            && r["remote_cidr"].is_null()),
        "{sg}"
    );

    let port = net
        .create(
            "/v1/ports",
            json!({"subnet_id": subnet["id"], "name": "web", "device_owner": "vm", "device_id": "vm-1"}),
        )
        .await;
    let ip = port["ips"][0].as_str().unwrap();
    assert!(ip.starts_with("10.20.1."), "{port}");
    assert!(
        ip != "10.20.1.1" && ip != "10.20.1.2",
        "gateway and DHCP addresses are reserved: {ip}"
    );
    assert_eq!(port["security_groups"], json!([sg["id"]]));
    assert_eq!(port["status"], "down");
    let mac = port["mac"].as_str().unwrap();
    assert_eq!(mac.len(), 17);
    assert!(
        u8::from_str_radix(&mac[..2], 16).unwrap() & 0b11 == 0b10,
        "local unicast: {mac}"
    );
    let id = port["id"].as_str().unwrap();

    // Updates: optimistic concurrency by version, binding resets the status.
    let (s, b) = net
        .put(
            &format!("/v1/ports/{id}"),
            json!({"name": "stale", "version": 99}),
        )
        .await;
    assert_eq!(s, 412, "{b}");
    let (s, updated) = net
        .put(
            &format!("/v1/ports/{id}"),
            json!({"name": "web-1", "version": 1, "binding": {"host": "h1", "attachment": "netns:web"}}),
        )
        .await;
    assert_eq!(s, 200, "{updated}");
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["binding"]["attachment"], "netns:web");
    let (s, b) = net
        .put(
            &format!("/v1/ports/{id}"),
            json!({"name": "late", "version": 1}),
        )
        .await;
    assert_eq!(s, 412, "{b}");
    assert_eq!(net.ok(&format!("/v1/ports/{id}")).await["name"], "web-1");

    // Lists filter and paginate.
    let ports = net.all("/v1/ports?device_id=vm-1").await;
    assert_eq!(ports.len(), 1);
    for i in 0..3 {
        net.create(
            "/v1/vpcs",
            json!({"name": format!("extra-{i}"), "cidr": "172.16.0.0/16"}),
        )
        .await;
    }
    let first = net.ok("/v1/vpcs?limit=2").await;
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    assert!(first["next_page_token"].is_string());
    let all = net.all("/v1/vpcs?limit=2").await;
    assert_eq!(all.len(), 4);
    let ids: HashSet<&str> = all.iter().map(|v| v["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 4);

    // Deletion order is enforced by the store: 409 and nothing removed.
    let subnet_path = format!("/v1/subnets/{}", subnet["id"].as_str().unwrap());
    let vpc_path = format!("/v1/vpcs/{}", vpc["id"].as_str().unwrap());
    let (s, b) = net.delete(&subnet_path).await;
    assert_eq!((s, code(&b)), (409, "subnet_in_use"), "{b}");
    let (s, b) = net.delete(&vpc_path).await;
    assert_eq!((s, code(&b)), (409, "vpc_in_use"), "{b}");
    net.ok(&subnet_path).await;
    net.ok(&format!("/v1/ports/{id}")).await;
    let (s, b) = net
        .delete(&format!(
            "/v1/security-groups/{}",
            sg["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!((s, code(&b)), (409, "default_group"), "{b}");

    assert_eq!(net.delete(&format!("/v1/ports/{id}")).await.0, 204);
    assert_eq!(net.get(&format!("/v1/ports/{id}")).await.0, 404);
    assert_eq!(net.delete(&subnet_path).await.0, 204);
    assert_eq!(net.delete(&vpc_path).await.0, 204);
    assert_eq!(net.get(&vpc_path).await.0, 404);
    // The default group went with its VPC.
    let (s, _) = net
        .get(&format!(
            "/v1/security-groups/{}",
            sg["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(s, 404);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_refused_and_nothing_is_half_created() {
    let cloud = cloud().await;
    let api = cloud.api().await;
    let net = Net::new(&api.url, &cloud.admin_token);
    let (vpc, subnet) = net.network("10.30.0.0/16", "10.30.0.0/29").await;
    let vpc_id = vpc["id"].as_str().unwrap();
    let subnet_id = subnet["id"].as_str().unwrap();

    let counts = |net: Net| async move {
        (
            net.all("/v1/vpcs").await.len(),
            net.all("/v1/subnets").await.len(),
            net.all("/v1/ports").await.len(),
            net.all("/v1/security-groups").await.len(),
        )
    };
    let before = counts(net.clone()).await;

    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "/v1/vpcs",
            json!({"name": "x", "cidr": "10.0.0.0/33"}),
            400,
            "invalid_cidr",
        ),
        (
            "/v1/vpcs",
            json!({"name": "x", "cidr": "banana"}),
            400,
            "invalid_cidr",
        ),
        (
            "/v1/vpcs",
            json!({"name": "x", "cidr": "10.0.0.1/16"}),
            400,
            "invalid_cidr",
        ),
        (
            "/v1/vpcs",
            json!({"name": "x", "cidr": "10.0.0.0/16", "surprise": 1}),
            400,
            "invalid_argument",
        ),
        (
            "/v1/subnets",
            json!({"vpc_id": vpc_id, "name": "s", "cidr": "10.31.0.0/24"}),
            400,
            "subnet_outside_vpc",
        ),
        (
            "/v1/subnets",
            json!({"vpc_id": vpc_id, "name": "s", "cidr": "10.30.0.0/24"}),
            409,
            "subnet_overlap",
        ),
        (
            "/v1/subnets",
            json!({"vpc_id": vpc_id, "name": "s", "cidr": "10.30.1.0/24", "gateway": "10.30.2.1"}),
            400,
            "ip_outside_subnet",
        ),
        (
            "/v1/subnets",
            json!({"vpc_id": vpc_id, "name": "s", "cidr": "10.30.1.0/24", "dns_servers": ["nope"]}),
            400,
            "invalid_ip",
        ),
        (
            "/v1/subnets",
            json!({"vpc_id": "no-such-vpc", "name": "s", "cidr": "10.30.1.0/24"}),
            404,
            "not_found",
        ),
        (
            "/v1/ports",
            json!({"subnet_id": subnet_id, "ips": ["10.30.1.5"]}),
            400,
            "ip_outside_subnet",
        ),
        (
            "/v1/ports",
            json!({"subnet_id": subnet_id, "ips": ["10.30.0.7"]}),
            400,
            "ip_outside_subnet",
        ),
        (
            "/v1/ports",
            json!({"subnet_id": subnet_id, "ips": ["10.30.0.1"]}),
            409,
            "ip_in_use",
        ),
        (
            "/v1/ports",
            json!({"subnet_id": subnet_id, "mac": "01:00:5e:00:00:01"}),
            400,
            "invalid_mac",
        ),
        (
            "/v1/ports",
            json!({"subnet_id": subnet_id, "binding": {"host": "h1", "attachment": "floppy"}}),
            400,
            "invalid_binding",
        ),
        (
            "/v1/ports",
            json!({"subnet_id": subnet_id, "security_groups": ["no-such-group"]}),
            404,
            "not_found",
        ),
        (
            "/v1/security-groups",
            json!({"vpc_id": vpc_id, "name": "g", "rules": [{"direction": "sideways"}]}),
            400,
            "invalid_rule",
        ),
        (
            "/v1/security-groups",
            json!({"vpc_id": vpc_id, "name": "g", "rules": [{"direction": "ingress", "protocol": "icmp", "port_min": 22}]}),
            400,
            "invalid_rule",
        ),
        (
            "/v1/security-groups",
            json!({"vpc_id": vpc_id, "name": "g", "rules": [{"direction": "ingress", "protocol": "tcp", "port_min": 90, "port_max": 80}]}),
            400,
            "invalid_rule",
        ),
    ];
    for (path, body, status, want) in cases {
        let (s, b) = net.post(path, body.clone()).await;
        assert_eq!((s, code(&b)), (status, want), "POST {path} {body}: {b}");
        assert!(b["error"]["request_id"].is_string(), "{b}");
    }
    assert_eq!(
        counts(net.clone()).await,
        before,
        "a refused create left something behind"
    );

    // A /29 has 6 usable addresses; the gateway and the DHCP server take two.
    let mut ips = HashSet::new();
    for _ in 0..4 {
        let p = net
            .create("/v1/ports", json!({"subnet_id": subnet_id}))
            .await;
        assert!(ips.insert(p["ips"][0].as_str().unwrap().to_owned()));
    }
    let (s, b) = net.post("/v1/ports", json!({"subnet_id": subnet_id})).await;
    assert_eq!((s, code(&b)), (409, "ip_exhausted"), "{b}");
    assert_eq!(net.all("/v1/ports").await.len(), 4);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_see_only_their_own_networks() {
    let cloud = cloud().await;
    let api = cloud.api().await;
    let a = Net::new(&api.url, &cloud.tenant("acme", "admin").await);
    let b = Net::new(&api.url, &cloud.tenant("globex", "admin").await);
    let viewer = Net::new(&api.url, &cloud.tenant("initech", "viewer").await);

    // Overlapping CIDRs in different tenants are fine.
    let (vpc_a, subnet_a) = a.network("10.0.0.0/16", "10.0.0.0/24").await;
    let (_vpc_b, subnet_b) = b.network("10.0.0.0/16", "10.0.0.0/24").await;
    let port_a = a
        .create("/v1/ports", json!({"subnet_id": subnet_a["id"]}))
        .await;
    b.create("/v1/ports", json!({"subnet_id": subnet_b["id"]}))
        .await;
    assert!(!vpc_a["org"].as_str().unwrap().is_empty());

    for path in [
        format!("/v1/vpcs/{}", vpc_a["id"].as_str().unwrap()),
        format!("/v1/subnets/{}", subnet_a["id"].as_str().unwrap()),
        format!("/v1/ports/{}", port_a["id"].as_str().unwrap()),
        format!(
            "/v1/security-groups/{}",
            vpc_a["default_security_group"].as_str().unwrap()
        ),
    ] {
        let (s, body) = b.get(&path).await;
        assert_eq!((s, code(&body)), (404, "not_found"), "{path}: {body}");
        let (s, _) = b.delete(&path).await;
        assert_eq!(s, 404, "{path}");
        a.ok(&path).await;
    }
    let (s, body) = b
        .post("/v1/ports", json!({"subnet_id": subnet_a["id"]}))
        .await;
    assert_eq!(s, 404, "{body}");
    assert_eq!(b.all("/v1/vpcs").await.len(), 1);
    assert_eq!(b.all("/v1/ports").await.len(), 1);
    assert_eq!(a.all("/v1/ports").await.len(), 1);
    // The operator sees both.
    let op = Net::new(&api.url, &cloud.admin_token);
    assert_eq!(op.all("/v1/vpcs").await.len(), 2);

    // A viewer reads but does not create; tenants never reach the agent endpoints.
    let (s, body) = viewer
        .post("/v1/vpcs", json!({"name": "x", "cidr": "10.0.0.0/16"}))
        .await;
    assert_eq!((s, code(&body)), (403, "permission_denied"), "{body}");
    assert_eq!(viewer.ok("/v1/vpcs").await["items"], json!([]));
    let (s, _) = a.get("/v1/agent/hosts/h1/plan").await;
    assert_eq!(s, 403);
    let (s, _) = a
        .post(
            "/v1/pools",
            json!({"name": "p", "cidr": "192.0.2.0/24", "kind": "external"}),
        )
        .await;
    assert_eq!(s, 403);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ipam_never_hands_out_an_address_twice() {
    let cloud = cloud().await;
    // Two API instances on one store: only the database can keep them apart.
    let one = cloud.api().await;
    let two = cloud.api().await;
    let n1 = Net::new(&one.url, &cloud.admin_token);
    let n2 = Net::new(&two.url, &cloud.admin_token);
    let (_, subnet) = n1.network("10.40.0.0/16", "10.40.0.0/24").await;
    let subnet_id = subnet["id"].as_str().unwrap().to_owned();

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..60 {
        let net = if i % 2 == 0 { n1.clone() } else { n2.clone() };
        let subnet_id = subnet_id.clone();
        tasks.spawn(async move { net.post("/v1/ports", json!({"subnet_id": subnet_id})).await });
    }
    let mut ips = HashSet::new();
    let mut macs = HashSet::new();
    while let Some(r) = tasks.join_next().await {
        let (s, p) = r.unwrap();
        assert_eq!(s, 201, "{p}");
        assert!(
            ips.insert(p["ips"][0].as_str().unwrap().to_owned()),
            "duplicate address: {p}"
        );
        assert!(
            macs.insert(p["mac"].as_str().unwrap().to_owned()),
            "duplicate MAC: {p}"
        );
    }
    assert_eq!(ips.len(), 60);

    // Concurrent subnets get distinct VNIs and only one of two overlapping creates wins.
    let vpc = n1
        .create("/v1/vpcs", json!({"name": "v", "cidr": "10.50.0.0/16"}))
        .await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..10 {
        let net = if i % 2 == 0 { n1.clone() } else { n2.clone() };
        let body = json!({"vpc_id": vpc["id"], "name": format!("s{i}"), "cidr": format!("10.50.{}.0/24", i / 2)});
        tasks.spawn(async move { net.post("/v1/subnets", body).await });
    }
    let mut vnis = HashSet::new();
    let mut created = 0;
    while let Some(r) = tasks.join_next().await {
        let (s, b) = r.unwrap();
        match s {
            201 => {
                created += 1;
                assert!(
                    vnis.insert(b["vni"].as_u64().unwrap()),
                    "duplicate VNI: {b}"
                );
            }
            409 => assert_eq!(code(&b), "subnet_overlap", "{b}"),
            _ => panic!("{s} {b}"),
        }
    }
    assert_eq!(created, 5, "exactly one of each overlapping pair");

    // Across a restart of both instances: still no reuse.
    one.stop().await;
    two.stop().await;
    let three = cloud.api().await;
    let n3 = Net::new(&three.url, &cloud.admin_token);
    for _ in 0..20 {
        let p = n3
            .create("/v1/ports", json!({"subnet_id": subnet_id}))
            .await;
        assert!(
            ips.insert(p["ips"][0].as_str().unwrap().to_owned()),
            "reused after restart: {p}"
        );
    }
    let listed = n3.all(&format!("/v1/ports?subnet_id={subnet_id}")).await;
    assert_eq!(listed.len(), 80);
    three.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn creates_are_idempotent() {
    let cloud = cloud().await;
    let api = cloud.api().await;
    let net = Net::new(&api.url, &cloud.admin_token);
    let (_, subnet) = net.network("10.60.0.0/16", "10.60.0.0/24").await;
    let body = json!({"subnet_id": subnet["id"], "name": "once"});

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (url, token, body) = (api.url.clone(), cloud.admin_token.clone(), body.clone());
        tasks.spawn(async move {
            call_with(
                &url,
                Some(&token),
                Method::POST,
                "/v1/ports",
                Some(body),
                Some("key-1"),
            )
            .await
        });
    }
    let mut ids = HashSet::new();
    while let Some(r) = tasks.join_next().await {
        let (s, p) = r.unwrap();
        assert_eq!(s, 201, "{p}");
        ids.insert(p["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "one port for one key");
    assert_eq!(net.all("/v1/ports").await.len(), 1);

    let (s, b) = call_with(
        &api.url,
        Some(&cloud.admin_token),
        Method::POST,
        "/v1/ports",
        Some(json!({"subnet_id": subnet["id"], "name": "different"})),
        Some("key-1"),
    )
    .await;
    assert_eq!((s, code(&b)), (422, "idempotency_key_reused"), "{b}");
    // The typed client's idempotent create is safe to repeat.
    let client = prismnet::client::PrismnetClient::new(
        &api.url,
        uc_runtime::client::ClientOptions {
            token: Some(uc_runtime::Secret::new(cloud.admin_token.clone())),
            ..Default::default()
        },
    )
    .unwrap();
    let req = prismnet::api::CreateVpc {
        name: "typed".into(),
        cidr: "10.61.0.0/16".into(),
    };
    let v1 = client.create_vpc(&req, Some("vpc-key")).await.unwrap();
    let v2 = client.create_vpc(&req, Some("vpc-key")).await.unwrap();
    assert_eq!(v1, v2);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn routers_floating_ips_pools_and_agent_plans() {
    let cloud = cloud().await;
    let api = cloud.api().await;
    let op = Net::new(&api.url, &cloud.admin_token);
    let tenant = Net::new(&api.url, &cloud.tenant("acme", "admin").await);

    let ext = op
        .create("/v1/pools", json!({"name": "ext", "cidr": "192.0.2.0/29", "kind": "external", "gateway": "192.0.2.1"}))
        .await;
    let svc = op
        .create(
            "/v1/pools",
            json!({"name": "vips", "cidr": "198.51.100.0/30", "kind": "service"}),
        )
        .await;
    let (s, b) = op
        .post(
            "/v1/pools",
            json!({"name": "bad", "cidr": "192.0.2.0/29", "kind": "weird"}),
        )
        .await;
    assert_eq!((s, code(&b)), (400, "invalid_kind"));

    let (vpc, subnet) = tenant.network("10.70.0.0/16", "10.70.1.0/24").await;
    let router = tenant
        .create(
            "/v1/routers",
            json!({"vpc_id": vpc["id"], "name": "r", "external": {"pool": "ext"}}),
        )
        .await;
    assert_eq!(
        router["host"], "net-host",
        "default placement: the configured network host"
    );
    let ext_ip = router["external"]["ip"].as_str().unwrap().to_owned();
    assert!(
        ext_ip.starts_with("192.0.2.") && ext_ip != "192.0.2.1",
        "{router}"
    );
    let rid = router["id"].as_str().unwrap();
    let port = tenant
        .create(
            "/v1/ports",
            json!({"subnet_id": subnet["id"], "binding": {"host": "h1", "attachment": "netns:w1"}}),
        )
        .await;
    // A floating IP needs a path: the subnet is not attached yet.
    let (s, b) = tenant
        .post(
            "/v1/floating-ips",
            json!({"pool": "ext", "port_id": port["id"]}),
        )
        .await;
    assert_eq!((s, code(&b)), (409, "port_unreachable"), "{b}");
    let (s, r) = tenant
        .post(
            &format!("/v1/routers/{rid}/interfaces"),
            json!({"subnet_id": subnet["id"]}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["interfaces"][0]["ip"], "10.70.1.1");
    let (s, b) = tenant
        .post(
            &format!("/v1/routers/{rid}/interfaces"),
            json!({"subnet_id": subnet["id"]}),
        )
        .await;
    assert_eq!((s, code(&b)), (409, "subnet_attached"));
    let fip = tenant
        .create(
            "/v1/floating-ips",
            json!({"pool": "ext", "port_id": port["id"]}),
        )
        .await;
    let fip_ip = fip["ip"].as_str().unwrap().to_owned();
    assert_ne!(fip_ip, ext_ip);
    // The /29 has 5 addresses for tenants (6 usable minus the upstream gateway); two are
    // taken. Exhaust it, then see the clean error.
    let mut more = Vec::new();
    loop {
        let (s, b) = tenant
            .post("/v1/floating-ips", json!({"pool": "ext"}))
            .await;
        if s != 201 {
            assert_eq!((s, code(&b)), (409, "pool_exhausted"), "{b}");
            break;
        }
        more.push(b);
    }
    assert_eq!(more.len(), 3);
    // Releasing one makes room again.
    let (s, _) = tenant
        .delete(&format!(
            "/v1/floating-ips/{}",
            more[0]["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(s, 204);
    tenant
        .create("/v1/floating-ips", json!({"pool": "ext"}))
        .await;

    // Service pool: allocate/release VIPs; an external pool does not hand out VIPs.
    let svc_id = svc["id"].as_str().unwrap();
    let vip = tenant
        .create(
            &format!("/v1/pools/{svc_id}/allocations"),
            json!({"owner": "lb-1"}),
        )
        .await;
    let vip2 = tenant
        .create(&format!("/v1/pools/{svc_id}/allocations"), json!({}))
        .await;
    assert_ne!(vip["ip"], vip2["ip"]);
    let (s, b) = tenant
        .post(&format!("/v1/pools/{svc_id}/allocations"), json!({}))
        .await;
    assert_eq!((s, code(&b)), (409, "pool_exhausted"), "{b}");
    let (s, _) = tenant
        .delete(&format!(
            "/v1/pools/{svc_id}/allocations/{}",
            vip["ip"].as_str().unwrap()
        ))
        .await;
    assert_eq!(s, 204);
    let (s, b) = tenant
        .post(
            &format!("/v1/pools/{}/allocations", ext["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!((s, code(&b)), (400, "wrong_pool_kind"));
    let (s, b) = op.delete(&format!("/v1/pools/{svc_id}")).await;
    assert_eq!((s, code(&b)), (409, "pool_in_use"));

    // The agent endpoints: the router's host gets the router and the subnet; the port's
    // host gets the port with its DHCP lease and security group.
    op.put("/v1/agent/hosts/h1", json!({"underlay_ip": "203.0.113.1"}))
        .await;
    op.put(
        "/v1/agent/hosts/net-host",
        json!({"underlay_ip": "203.0.113.2"}),
    )
    .await;
    let h1 = op.ok("/v1/agent/hosts/h1/plan?wait=0").await;
    let plan = &h1["plan"];
    assert_eq!(plan["networks"][0]["ports"][0]["port_id"], port["id"]);
    assert_eq!(
        plan["networks"][0]["dhcp"]["hosts"][0]["ip"],
        port["ips"][0]
    );
    assert_eq!(plan["networks"][0]["remote_vteps"], json!(["203.0.113.2"]));
    assert_eq!(
        plan["security_groups"][0]["sg_id"],
        vpc["default_security_group"]
    );
    assert!(plan["routers"].as_array().unwrap().is_empty());
    let nh = op.ok("/v1/agent/hosts/net-host/plan?wait=0").await;
    let r = &nh["plan"]["routers"][0];
    assert_eq!(r["external"]["ip"], ext_ip.as_str());
    assert_eq!(r["external"]["gateway"], "192.0.2.1");
    assert_eq!(r["floating_ips"][0]["external_ip"], fip_ip.as_str());
    assert_eq!(r["floating_ips"][0]["internal_ip"], port["ips"][0]);
    assert_eq!(
        nh["plan"]["networks"][0]["dhcp"],
        Value::Null,
        "no local ports, no DHCP server"
    );

    // A long poll answers once the model changes; the agent reports the port active.
    let rev = h1["revision"].as_i64().unwrap();
    let poll = {
        let op = op.clone();
        tokio::spawn(async move {
            op.ok(&format!("/v1/agent/hosts/h1/plan?after={rev}&wait=30"))
                .await
        })
    };
    tenant
        .put(
            &format!("/v1/ports/{}", port["id"].as_str().unwrap()),
            json!({"name": "renamed"}),
        )
        .await;
    let answer = poll.await.unwrap();
    assert!(answer["revision"].as_i64().unwrap() > rev);
    let (s, _) = op
        .post(
            "/v1/agent/hosts/h1/status",
            json!({"ports": [{"port_id": port["id"], "status": "active", "device": "ucpabc"}]}),
        )
        .await;
    assert_eq!(s, 204);
    // Another host cannot report on it.
    op.post(
        "/v1/agent/hosts/h2/status",
        json!({"ports": [{"port_id": port["id"], "status": "down", "device": null}]}),
    )
    .await;
    let p = tenant
        .ok(&format!("/v1/ports/{}", port["id"].as_str().unwrap()))
        .await;
    assert_eq!(
        (p["status"].as_str(), p["device"].as_str()),
        (Some("active"), Some("ucpabc"))
    );

    // Router teardown order.
    let (s, b) = tenant.delete(&format!("/v1/routers/{rid}")).await;
    assert_eq!((s, code(&b)), (409, "router_in_use"), "{b}");
    let (s, _) = tenant
        .delete(&format!(
            "/v1/routers/{rid}/interfaces/{}",
            subnet["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(s, 200);
    assert_eq!(tenant.delete(&format!("/v1/routers/{rid}")).await.0, 204);
    api.stop().await;
}

/// A port's migration binding (the destination of a VM's live migration): refused unless the
/// port is bound as a tap; the destination host's plan gets the port under its second tap
/// name next to the source's (one DHCP lease when both are on one host); reports on it do
/// not touch the binding; activation swaps the binding (device name included) and the
/// source's plan loses the port; a rebind or delete drops a pending one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_bindings_set_up_activate_and_cancel() {
    let cloud = cloud().await;
    let api = cloud.api().await;
    let op = Net::new(&api.url, &cloud.admin_token);
    let tenant = Net::new(&api.url, &cloud.tenant("mover", "admin").await);
    let (_, subnet) = tenant.network("10.80.0.0/16", "10.80.1.0/24").await;
    let sid = subnet["id"].as_str().unwrap();
    let unbound = tenant
        .create("/v1/ports", json!({"subnet_id": sid, "name": "idle"}))
        .await;
    let uid = unbound["id"].as_str().unwrap();
    let tap = json!({"host": "h2", "attachment": "tap"});

    // Bad input first; nothing changes.
    let (s, b) = tenant
        .put(&format!("/v1/ports/{uid}/migration"), tap.clone())
        .await;
    assert_eq!((s, code(&b)), (409, "not_bound_as_tap"), "{b}");
    let veth = tenant
        .create(
            "/v1/ports",
            json!({"subnet_id": sid, "binding": {"host": "h1", "attachment": "netns:w1"}}),
        )
        .await;
    let (s, b) = tenant
        .put(
            &format!("/v1/ports/{}/migration", veth["id"].as_str().unwrap()),
            tap.clone(),
        )
        .await;
    assert_eq!((s, code(&b)), (409, "not_bound_as_tap"), "{b}");
    let vm = tenant
        .create(
            "/v1/ports",
            json!({"subnet_id": sid, "name": "vm", "binding": {"host": "h1", "attachment": "tap"}}),
        )
        .await;
    let id = vm["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/ports/{id}/migration");
    for bad in [
        json!({"host": "h2", "attachment": "netns:x"}),
        json!({"host": "no spaces", "attachment": "tap"}),
        json!({"host": "h2"}),
        json!({"host": "h2", "attachment": "tap", "extra": 1}),
    ] {
        let (s, b) = tenant.put(&path, bad.clone()).await;
        assert_eq!(s, 400, "{bad}: {b}");
    }
    let (s, b) = tenant.post(&format!("{path}/activate"), json!({})).await;
    assert_eq!((s, code(&b)), (409, "no_migration"), "{b}");
    let (s, _) = tenant.put("/v1/ports/nope/migration", tap.clone()).await;
    assert_eq!(s, 404);
    let other = Net::new(&api.url, &cloud.tenant("other", "admin").await);
    let (s, _) = other.put(&path, tap.clone()).await;
    assert_eq!(s, 404, "another tenant's port is not found");
    assert!(tenant.ok(&format!("/v1/ports/{id}")).await["migration"].is_null());

    // Same host as the source: both taps in h1's plan, one DHCP lease.
    let same = json!({"host": "h1", "attachment": "tap"});
    let (s, p) = tenant.put(&path, same.clone()).await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["migration"]["host"], "h1");
    assert_eq!(p["migration"]["status"], "down");
    let (s, again) = tenant.put(&path, same.clone()).await;
    assert_eq!(
        (s, &again["migration"]),
        (200, &p["migration"]),
        "idempotent"
    );
    let (s, b) = tenant.put(&path, tap.clone()).await;
    assert_eq!((s, code(&b)), (409, "migration_pending"), "{b}");
    let plan = op.ok("/v1/agent/hosts/h1/plan?wait=0").await;
    let net = &plan["plan"]["networks"][0];
    let mine: Vec<&Value> = net["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["port_id"] == id.as_str())
        .collect();
    assert_eq!(mine.len(), 2, "{net}");
    assert_eq!(mine[0]["attachment"]["kind"], "tap");
    assert_eq!(mine[1]["attachment"]["kind"], "tap_alternate");
    assert_eq!(mine[1]["migration_target"], true);
    let leases = net["dhcp"]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["mac"] == vm["mac"])
        .count();
    assert_eq!(leases, 1, "{net}");
    // Cancel: gone from the plan.
    assert_eq!(tenant.delete(&path).await.0, 204);
    assert_eq!(tenant.delete(&path).await.0, 204, "cancel is idempotent");
    let plan = op.ok("/v1/agent/hosts/h1/plan?wait=0").await;
    let count = plan["plan"]["networks"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["port_id"] == id.as_str())
        .count();
    assert_eq!(count, 1);

    // Another host: h2 gets the subnet and the port's second tap; the MAC stays on h1.
    op.put("/v1/agent/hosts/h1", json!({"underlay_ip": "203.0.113.11"}))
        .await;
    op.put("/v1/agent/hosts/h2", json!({"underlay_ip": "203.0.113.12"}))
        .await;
    let (s, p) = tenant.put(&path, tap.clone()).await;
    assert_eq!(s, 200, "{p}");
    let h2 = op.ok("/v1/agent/hosts/h2/plan?wait=0").await;
    let n2 = &h2["plan"]["networks"][0];
    assert_eq!(n2["ports"][0]["port_id"], id.as_str());
    assert_eq!(n2["ports"][0]["migration_target"], true);
    assert!(
        n2["remote_macs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mac"] == vm["mac"] && m["vtep"] == "203.0.113.11"),
        "{n2}"
    );
    // h2 reports its tap; the binding on h1 is untouched. h1 cannot report on h2's tap.
    let (s, _) = op
        .post(
            "/v1/agent/hosts/h1/status",
            json!({"ports": [{"port_id": id, "status": "active", "device": "uct0000000000", "migration": true}]}),
        )
        .await;
    assert_eq!(s, 204);
    assert_eq!(
        tenant.ok(&format!("/v1/ports/{id}")).await["migration"]["status"],
        "down"
    );
    op.post(
        "/v1/agent/hosts/h2/status",
        json!({"ports": [{"port_id": id, "status": "active", "device": "ucu0000000001", "migration": true}]}),
    )
    .await;
    let p = tenant.ok(&format!("/v1/ports/{id}")).await;
    assert_eq!(p["migration"]["status"], "active");
    assert_eq!(p["migration"]["device"], "ucu0000000001");
    assert_eq!(p["binding"]["host"], "h1");
    assert_eq!(p["status"], "down", "the binding's own status is h1's");

    // Activate: the binding moves to h2 with the second tap; h1's plan loses the port.
    let (s, p) = tenant.post(&format!("{path}/activate"), json!({})).await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["binding"], json!({"host": "h2", "attachment": "tap"}));
    assert_eq!(p["device"], "ucu0000000001");
    assert_eq!(p["status"], "active");
    assert!(p["migration"].is_null());
    let h1 = op.ok("/v1/agent/hosts/h1/plan?wait=0").await;
    assert!(
        h1["plan"]["networks"].as_array().unwrap().iter().all(|n| {
            n["ports"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["port_id"] != id.as_str())
        }),
        "{h1}"
    );
    let h2 = op.ok("/v1/agent/hosts/h2/plan?wait=0").await;
    let p2 = &h2["plan"]["networks"][0]["ports"][0];
    assert_eq!(p2["attachment"]["kind"], "tap_alternate");
    assert!(p2.get("migration_target").is_none_or(|m| m == false));
    // Binding it again as it is bound keeps the second tap (QEMU holds it).
    let p = tenant
        .put(
            &format!("/v1/ports/{id}"),
            json!({"binding": {"host": "h2", "attachment": "tap"}}),
        )
        .await
        .1;
    assert_eq!(p["device"], "ucu0000000001", "{p}");
    // The next migration goes back to the first name.
    tenant
        .put(&path, json!({"host": "h1", "attachment": "tap"}))
        .await;
    let h1 = op.ok("/v1/agent/hosts/h1/plan?wait=0").await;
    let back = h1["plan"]["networks"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port_id"] == id.as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(back["attachment"]["kind"], "tap", "{h1}");
    assert_eq!(back["migration_target"], true, "{h1}");
    // A rebind elsewhere drops the pending migration; so does a delete.
    let p = tenant
        .put(
            &format!("/v1/ports/{id}"),
            json!({"binding": {"host": "h3", "attachment": "tap"}}),
        )
        .await
        .1;
    assert!(p["migration"].is_null(), "{p}");
    tenant.put(&path, tap.clone()).await;
    assert_eq!(tenant.delete(&format!("/v1/ports/{id}")).await.0, 204);
    let h2 = op.ok("/v1/agent/hosts/h2/plan?wait=0").await;
    assert!(
        h2["plan"]["networks"].as_array().unwrap().is_empty(),
        "{h2}"
    );
    api.stop().await;
}
