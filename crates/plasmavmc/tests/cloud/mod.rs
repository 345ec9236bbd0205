//! `ultracloud up` with plasmavmc (control plane + worker agent, TCG) under uc-testkit, extra
//! worker processes (`serve plasmavmc-worker`), tenants from iam, the tiny guest, and small
//! HTTP helpers.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use uc_testkit::{Cluster, NodeInfo, Ready};

/// Every port `up` binds, named.
const PORTS: &[&str] = &[
    "node",
    "client",
    "peer",
    "admin",
    "rest",
    "pg",
    "fpeer",
    "iam",
    "prismnet",
    "coronafs",
    "nbd",
    "plasmavmc",
    "worker",
];

/// `agent`: the `[prismnet_agent]` keys; `None` turns the host network agent off.
fn config(n: &NodeInfo, extra: &str, agent: Option<&str>) -> String {
    let nbd = n.port("nbd");
    format!(
        "[node]\nname = \"uc-{name}\"\nbind = \"{ip}\"\nport = {node}\n[http]\nshutdown_grace_secs = 2\n\
         [chainfire]\nclient_port = {client}\npeer_port = {peer}\nadmin_port = {admin}\n\
         [flaredb]\nrest_port = {rest}\npg_port = {pg}\npeer_port = {fpeer}\n\
         [iam]\nport = {iam}\n\
         [coronafs]\nport = {coronafs}\nnbd_port_min = {nbd}\nnbd_port_max = {nbd_max}\n\
         [plasmavmc]\nport = {plasmavmc}\n{extra}\n\
         [plasmavmc_worker]\nport = {worker}\naccel = \"tcg\"\nheartbeat_secs = 2\n\
         [prismnet]\nport = {prismnet}\n[prismnet_agent]\n{agent}\n",
        name = n.name,
        ip = n.ip,
        node = n.port("node"),
        client = n.port("client"),
        peer = n.port("peer"),
        admin = n.port("admin"),
        rest = n.port("rest"),
        pg = n.port("pg"),
        fpeer = n.port("fpeer"),
        iam = n.port("iam"),
        coronafs = n.port("coronafs"),
        nbd_max = nbd + 40,
        prismnet = n.port("prismnet"),
        // prismnet's agent owns its devices in the root network namespace (where QEMU opens
        // taps): only the tests that need VM NICs run one, never two clouds at once.
        agent = agent.map_or_else(
            || "enabled = false".to_owned(),
            |k| format!("enabled = true\n{k}")
        ),
        plasmavmc = n.port("plasmavmc"),
        worker = n.port("worker"),
    )
}

pub struct Cloud {
    pub cluster: Cluster,
    pub url: String,
    pub iam_url: String,
    pub admin_token: String,
    pub info: NodeInfo,
}

/// `extra`: extra lines for the `[plasmavmc]` table. No host network agent: VMs without NICs.
pub async fn up(extra: &'static str) -> Cloud {
    up_with(extra, None).await
}

/// Like [`up`]; `agent`: run prismnet's host agent with these `[prismnet_agent]` keys.
pub async fn up_with(extra: &'static str, agent: Option<String>) -> Cloud {
    let cluster = Cluster::builder(1)
        .ports(PORTS)
        .config(move |n, _| config(n, extra, agent.as_deref()))
        .args(|n| {
            vec![
                "up".into(),
                "--config".into(),
                n.config_path.display().to_string(),
                "--data-dir".into(),
                n.data_dir.display().to_string(),
            ]
        })
        .ready(Ready::http("node", "/readyz"))
        .ready_timeout(Duration::from_secs(120))
        .start()
        .await
        .expect("ultracloud up starts");
    let info = cluster.node(0).info.clone();
    let admin_token = std::fs::read_to_string(info.data_dir.join("secrets/admin-token"))
        .unwrap()
        .trim()
        .to_owned();
    let cloud = Cloud {
        url: info.url("plasmavmc"),
        iam_url: info.url("iam"),
        admin_token,
        info,
        cluster,
    };
    cloud.wait_workers(1).await;
    cloud
}

/// One HTTP call: (status, JSON body or Null).
pub async fn call(
    base: &str,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = uc_testkit::http_client()
        .request(method, format!("{base}{path}"))
        .timeout(Duration::from_secs(120));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("server answers");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

impl Cloud {
    /// The operator's call to plasmavmc.
    pub async fn op(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        call(&self.url, Some(&self.admin_token), method, path, body).await
    }

    /// The operator's call that must succeed.
    pub async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (s, b) = self.op(method, path, body).await;
        assert!((200..300).contains(&s), "{path}: {s} {b}");
        b
    }

    pub async fn as_(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        call(&self.url, Some(token), method, path, body).await
    }

    pub async fn wait_workers(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (s, b) = self.op(Method::GET, "/v1/workers", None).await;
            let up = b["items"]
                .as_array()
                .map(|a| a.iter().filter(|w| w["state"] == "up").count())
                .unwrap_or(0);
            if s == 200 && up >= n {
                return;
            }
            assert!(Instant::now() < deadline, "{n} workers never came up: {b}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A tenant (org + project + admin user) and its project-scoped token.
    pub async fn tenant(&self, org: &str) -> String {
        let iam = |m, p: &str, b| {
            let url = self.iam_url.clone();
            let token = self.admin_token.clone();
            let p = p.to_owned();
            async move { call(&url, Some(&token), m, &p, b).await }
        };
        let (s, o) = iam(Method::POST, "/v1/orgs", Some(json!({"name": org}))).await;
        assert_eq!(s, 201, "{o}");
        let org_id = o["id"].as_str().unwrap().to_owned();
        let (s, p) = iam(
            Method::POST,
            &format!("/v1/orgs/{org_id}/projects"),
            Some(json!({"name": "main"})),
        )
        .await;
        assert_eq!(s, 201, "{p}");
        let password = "a-long-enough-password";
        let (s, u) = iam(
            Method::POST,
            &format!("/v1/orgs/{org_id}/users"),
            Some(json!({"name": "owner", "password": password})),
        )
        .await;
        assert_eq!(s, 201, "{u}");
        let user_id = u["id"].as_str().unwrap().to_owned();
        let (s, b) = iam(
            Method::POST,
            &format!("/v1/orgs/{org_id}/bindings"),
            Some(json!({"principal_id": user_id, "role": "member"})),
        )
        .await;
        assert!((200..300).contains(&s), "{b}");
        let (s, t) = call(
            &self.iam_url,
            None,
            Method::POST,
            "/v1/tokens",
            Some(json!({"grant_type": "password", "org": org, "username": "owner", "password": password, "project": "main"})),
        )
        .await;
        assert_eq!(s, 200, "{t}");
        t["access_token"].as_str().unwrap().to_owned()
    }

    /// Waits for a VM state (fails on `error` unless that is the wanted state).
    pub async fn wait_state(&self, token: &str, id: &str, state: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            let (s, vm) = self
                .as_(token, Method::GET, &format!("/v1/vms/{id}"), None)
                .await;
            assert_eq!(s, 200, "{vm}");
            if vm["state"] == state {
                return vm;
            }
            assert!(
                vm["state"] != "error" || state == "error",
                "VM failed: {vm}"
            );
            assert!(Instant::now() < deadline, "VM never {state}: {vm}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Reads the console through the API until it contains `text` (from `offset`); returns
    /// the whole console text read and the next offset.
    pub async fn wait_console(
        &self,
        token: &str,
        id: &str,
        text: &str,
        offset: u64,
    ) -> (String, u64) {
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut seen = String::new();
        let mut next = offset;
        loop {
            let (s, log) = self
                .as_(
                    token,
                    Method::GET,
                    &format!("/v1/vms/{id}/console?offset={next}"),
                    None,
                )
                .await;
            if s == 200 {
                seen.push_str(log["data"].as_str().unwrap_or_default());
                next = log["next_offset"].as_u64().unwrap_or(next);
                if seen.contains(text) {
                    return (seen, next);
                }
            }
            assert!(
                Instant::now() < deadline,
                "console of {id} never showed {text:?}; got:\n{seen}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    pub async fn wait_gone(&self, token: &str, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (s, b) = self
                .as_(token, Method::GET, &format!("/v1/vms/{id}"), None)
                .await;
            if s == 404 {
                return;
            }
            assert!(Instant::now() < deadline, "VM {id} never went away: {b}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Registers the tiny guest as a kernel image (as `token`'s tenant); its id.
    pub async fn tiny_image(&self, token: &str, name: &str) -> String {
        let g = guest();
        let (s, img) = self
            .as_(
                token,
                Method::POST,
                "/v1/images",
                Some(json!({
                    "name": name,
                    "kind": "kernel",
                    "kernel": g.kernel,
                    "initrd": g.initrd,
                    "cmdline": "console=ttyS0 loglevel=4",
                })),
            )
            .await;
        assert_eq!(s, 201, "{img}");
        img["id"].as_str().unwrap().to_owned()
    }

    pub fn worker_dir(&self) -> PathBuf {
        self.info.data_dir.join("plasmavmc-worker")
    }
}

/// The tiny guest, built once per test binary.
pub fn guest() -> &'static plasmavmc::guest::TinyGuest {
    static GUEST: OnceLock<(tempfile::TempDir, plasmavmc::guest::TinyGuest)> = OnceLock::new();
    &GUEST
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let g = plasmavmc::guest::build(dir.path()).expect("tiny guest builds");
            (dir, g)
        })
        .1
}

/// QEMU processes whose command line names this VM (our `-name guest=<id>` marker).
pub fn qemu_pids(vm_id: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains(&format!("guest={vm_id},")) {
            pids.push(pid);
        }
    }
    pids
}

/// Every QEMU started under `dir` (a worker's data dir) — for "no orphan" checks.
pub fn qemus_under(dir: &Path) -> Vec<u32> {
    let marker = dir.display().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains("qemu-system") && cmd.contains(&marker) {
            pids.push(pid);
        }
    }
    pids
}

pub fn kill_qemus_under(dir: &Path) {
    for pid in qemus_under(dir) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Kills the cloud's QEMUs when a test ends (QEMU is daemonized: it outlives the cloud).
pub struct QemuReaper(pub PathBuf);

impl Drop for QemuReaper {
    fn drop(&mut self) {
        kill_qemus_under(&self.0);
    }
}

/// Serves files over HTTP (GET and HEAD) from this test process, like a cluster-reachable
/// image server; answers the base URL. The server lives as long as the test's runtime.
pub async fn serve_files(files: Vec<(&'static str, PathBuf)>) -> String {
    serve_files_switchable(files).await.0
}

/// Like [`serve_files`]; while the switch is off the server answers 503 (an image server
/// that is down).
pub async fn serve_files_switchable(
    files: Vec<(&'static str, PathBuf)>,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let on = Arc::new(AtomicBool::new(true));
    let mut app = axum::Router::new();
    for (name, path) in files {
        let bytes = std::fs::read(&path).unwrap();
        let on = on.clone();
        app = app.route(
            &format!("/{name}"),
            axum::routing::get(move || {
                let bytes = bytes.clone();
                let up = on.load(Ordering::Relaxed);
                async move {
                    if up {
                        Ok(bytes)
                    } else {
                        Err(axum::http::StatusCode::SERVICE_UNAVAILABLE)
                    }
                }
            }),
        );
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, on)
}

// ---- prismnet (VM NICs)

pub fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip").args(args).output().expect("ip runs")
}

/// A network namespace removed when the test ends.
pub struct Netns(pub String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.0]);
    }
}

pub async fn net(
    cloud: &Cloud,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    call(&cloud.info.url("prismnet"), Some(token), method, path, body).await
}

pub async fn net_ok(
    cloud: &Cloud,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Value {
    let (s, b) = net(cloud, token, method, path, body).await;
    assert!((200..300).contains(&s), "{path}: {s} {b}");
    b
}

/// A VPC with one DHCP subnet: (VPC id, subnet id).
pub async fn network(cloud: &Cloud, token: &str, cidr16: &str, cidr24: &str) -> (String, String) {
    let vpc = net_ok(
        cloud,
        token,
        Method::POST,
        "/v1/vpcs",
        Some(json!({"name": "net", "cidr": cidr16})),
    )
    .await;
    let subnet = net_ok(
        cloud,
        token,
        Method::POST,
        "/v1/subnets",
        Some(json!({"vpc_id": vpc["id"], "name": "sub", "cidr": cidr24})),
    )
    .await;
    (
        vpc["id"].as_str().unwrap().to_owned(),
        subnet["id"].as_str().unwrap().to_owned(),
    )
}

pub async fn wait_port(cloud: &Cloud, token: &str, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (s, p) = net(cloud, token, Method::GET, &format!("/v1/ports/{id}"), None).await;
        assert_eq!(s, 200, "{p}");
        if p["status"] == status {
            return p;
        }
        assert!(Instant::now() < deadline, "port never {status}: {p}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Another port of `subnet`, bound to `host` as a namespace workload (`<name>` netns, removed
/// when dropped) with the port's address set statically: (netns, address, port id).
pub async fn peer_workload(
    cloud: &Cloud,
    token: &str,
    subnet: &str,
    host: &str,
    name: &str,
) -> (Netns, String, String) {
    let ns = Netns(name.to_owned());
    assert!(ip(&["netns", "add", &ns.0]).status.success());
    let peer = net_ok(
        cloud,
        token,
        Method::POST,
        "/v1/ports",
        Some(json!({"subnet_id": subnet, "name": "peer",
            "binding": {"host": host, "attachment": format!("netns:{}", ns.0)}})),
    )
    .await;
    let peer_ip = peer["ips"][0].as_str().unwrap().to_owned();
    wait_port(cloud, token, peer["id"].as_str().unwrap(), "active").await;
    let cidr = format!("{peer_ip}/24");
    assert!(
        ip(&["-n", &ns.0, "addr", "add", &cidr, "dev", "eth0"])
            .status
            .success()
    );
    let _ = ip(&["-n", &ns.0, "link", "set", "eth0", "up"]);
    (ns, peer_ip, peer["id"].as_str().unwrap().to_owned())
}

/// Deletes prismnet objects in the order given (`(token, path)`), then waits until the host
/// agents with these prefixes removed the DHCP namespaces they made: the tests leave the host
/// as they found it (a killed agent would leave them behind).
pub async fn remove_networks(cloud: &Cloud, objects: &[(&str, String)], prefixes: &[&str]) {
    for (token, path) in objects {
        let (s, e) = net(cloud, token, Method::DELETE, path, None).await;
        assert!(s == 204 || s == 200, "{path}: {s} {e}");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let namespaces = String::from_utf8_lossy(&ip(&["netns", "list"]).stdout).into_owned();
        if !prefixes
            .iter()
            .any(|p| namespaces.contains(&format!("{p}d-")))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "DHCP namespaces left: {namespaces}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
