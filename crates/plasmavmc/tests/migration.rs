//! Live migration of a running tiny guest with a NIC between two worker processes on one
//! host (the worker in `up` and a second `ultracloud serve plasmavmc-worker`), on shared
//! coronafs storage (NBD attached to both) and prismnet's host agent: the guest keeps running
//! (its tick counter continues, no second boot), keeps its disk, and keeps its address — a
//! namespace workload in its subnet reaches the same address on the destination's QEMU,
//! through the port's second tap (its migration binding), and again after a migration back.
//! Needs root (netns, taps).

mod cloud;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use uc_testkit::{Cluster, Ready};

use cloud::{Cloud, QemuReaper, ip, net_ok, network};

fn ping_once(netns: &str, addr: &str) -> bool {
    ip(&[
        "netns", "exec", netns, "busybox", "ping", "-c", "1", "-W", "1", addr,
    ])
    .status
    .success()
}

/// Pings until an answer comes (the address is reachable) or 60 s pass.
fn reachable(netns: &str, addr: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if ping_once(netns, addr) {
            return true;
        }
    }
    false
}

/// Pings every 200 ms from another thread while a migration runs; the counts are printed
/// (a measurement of the network pause, never asserted).
struct Pinger {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU32>,
    lost: Arc<AtomicU32>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Pinger {
    fn start(netns: &str, addr: &str) -> Self {
        let (stop, ok, lost) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU32::new(0)),
            Arc::new(AtomicU32::new(0)),
        );
        let (ns, addr) = (netns.to_owned(), addr.to_owned());
        let thread = {
            let (stop, ok, lost) = (stop.clone(), ok.clone(), lost.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let counter = if ping_once(&ns, &addr) { &ok } else { &lost };
                    counter.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        };
        Self {
            stop,
            ok,
            lost,
            thread: Some(thread),
        }
    }

    fn finish(mut self, what: &str) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        eprintln!(
            "{what}: {} pings answered, {} lost (1 s timeout each, 200 ms apart)",
            self.ok.load(Ordering::Relaxed),
            self.lost.load(Ordering::Relaxed)
        );
    }
}

async fn migrate(cloud: &Cloud, token: &str, id: &str, worker: &str) -> (u16, Value) {
    cloud
        .as_(
            token,
            Method::POST,
            &format!("/v1/vms/{id}/migrate"),
            Some(json!({"worker": worker})),
        )
        .await
}

/// The VM under test and where it was before a migration was tried.
struct OnSource<'a> {
    id: &'a str,
    worker: &'a str,
    qemu_pids: &'a [u32],
    port_id: &'a str,
    tap: &'a str,
    address: &'a str,
}

/// What a failed migration must leave: the VM running on its source QEMU and tap, reached
/// there from `peer_ns`, with no migration binding and no second tap.
async fn stayed_on_source(cloud: &Cloud, token: &str, vm: &OnSource<'_>, peer_ns: &str) {
    let now = cloud
        .ok(Method::GET, &format!("/v1/vms/{}", vm.id), None)
        .await;
    assert_eq!(now["worker"], vm.worker, "{now}");
    assert_eq!(now["state"], "running", "{now}");
    assert!(now["migrating_to"].is_null(), "{now}");
    assert_eq!(cloud::qemu_pids(vm.id), vm.qemu_pids);
    let p = port(cloud, token, vm.port_id).await;
    assert!(p["migration"].is_null(), "{p}");
    assert_eq!(p["device"], vm.tap, "{p}");
    device_gone(&format!("ucu{}", &vm.tap[3..])).await;
    assert!(
        reachable(peer_ns, vm.address),
        "the VM is still reached on the source"
    );
}

struct TickingVm {
    id: String,
    port_id: String,
    address: String,
    worker: String,
}

/// The tiny guest as image `ticker` (ticking every second, pinging `peer_ip`) and a VM of it,
/// `name`, with a port in `subnet`.
async fn ticking_vm(
    cloud: &Cloud,
    token: &str,
    name: &str,
    kernel: &str,
    initrd: &str,
    subnet: &str,
    peer_ip: &str,
) -> TickingVm {
    let (s, img) = cloud
        .as_(
            token,
            Method::POST,
            "/v1/images",
            Some(
                json!({"name": "ticker", "kind": "kernel", "kernel": kernel, "initrd": initrd,
                "cmdline": format!("console=ttyS0 loglevel=4 uc.tick=1 uc.ping={peer_ip}")}),
            ),
        )
        .await;
    assert_eq!(s, 201, "{img}");
    let (s, vm) = cloud
        .as_(
            token,
            Method::POST,
            "/v1/vms",
            Some(
                json!({"name": name, "image": "ticker", "vcpus": 1, "memory_mib": 128,
                "root_volume_mib": 8, "subnets": [subnet]}),
            ),
        )
        .await;
    assert_eq!(s, 201, "{vm}");
    let text = |v: &Value| v.as_str().unwrap().to_owned();
    TickingVm {
        id: text(&vm["id"]),
        port_id: text(&vm["nics"][0]["port_id"]),
        address: text(&vm["nics"][0]["ips"][0]),
        worker: text(&vm["worker"]),
    }
}

async fn port(cloud: &Cloud, token: &str, id: &str) -> Value {
    net_ok(cloud, token, Method::GET, &format!("/v1/ports/{id}"), None).await
}

/// Waits until the host has no device of that name (the agent removed it).
async fn device_gone(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while ip(&["link", "show", name]).status.success() {
        assert!(Instant::now() < deadline, "device {name} left behind");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn cmdline(pid: u32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
        .replace('\0', " ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_migration_between_two_worker_processes() {
    // Device and namespace names are global per kernel: a prefix of our own.
    let prefix = format!("m{:x}", std::process::id() % 0xffff);
    let cloud = cloud::up_with("", Some(format!("prefix = \"{prefix}\""))).await;
    let _reaper = QemuReaper(cloud.worker_dir());
    let control_plane = cloud.url.clone();
    let coronafs = cloud.info.url("coronafs");
    let prismnet = cloud.info.url("prismnet");
    let token_file = cloud.info.data_dir.join("secrets/admin-token");
    // Both workers are on this machine: one prismnet host, the one `up`'s agent serves.
    let first = cloud.ok(Method::GET, "/v1/workers", None).await["items"][0].clone();
    const UNREACHABLE: &str = "http://127.0.0.1:1";
    let host = first["host"].as_str().unwrap().to_owned();
    let t = cloud.tenant("mover").await;
    let (vpc, subnet) = network(&cloud, &t, "10.62.0.0/16", "10.62.1.0/24").await;
    // Another port of the subnet: a namespace workload that pings the VM.
    let (ns, peer_ip, peer_id) =
        cloud::peer_workload(&cloud, &t, &subnet, &host, &format!("{prefix}-peer")).await;

    // The image by URL: each worker downloads kernel and initrd when it first needs them
    // (the destination only when the VM migrates to it).
    let g = cloud::guest();
    let (images, images_up) = cloud::serve_files_switchable(vec![
        ("vmlinux", g.kernel.clone()),
        ("initrd", g.initrd.clone()),
    ])
    .await;
    let vm = ticking_vm(
        &cloud,
        &t,
        "mover",
        &format!("{images}/vmlinux"),
        &format!("{images}/initrd"),
        &subnet,
        &peer_ip,
    )
    .await;
    let (id, port_id, vm_ip) = (vm.id.clone(), vm.port_id.clone(), vm.address.clone());
    let source = vm.worker.clone();
    assert_eq!(
        source,
        first["name"].as_str().unwrap(),
        "the only worker yet"
    );
    let target = "uc-w2".to_owned();
    cloud.wait_state(&t, &id, "running").await;
    let (console, _) = cloud.wait_console(&t, &id, "UC-TICK 2", 0).await;
    assert!(console.contains("UC-BOOT-OK mover"), "{console}");
    assert!(console.contains("UC-DISK boots=1"), "{console}");
    assert!(
        console.contains(&format!("UC-GUEST-IP {vm_ip}/")),
        "DHCP gave the port's address: {console}"
    );
    assert!(
        console.contains(&format!("UC-PING {peer_ip} ok")),
        "{console}"
    );
    assert!(reachable(&ns.0, &vm_ip), "the peer reaches the VM");
    let before = cloud::qemu_pids(&id);
    assert_eq!(before.len(), 1);
    let p = port(&cloud, &t, &port_id).await;
    let first_tap = p["device"].as_str().unwrap().to_owned();
    assert!(first_tap.starts_with("uct"), "{p}");

    // The second worker starts with a prismnet it cannot reach.
    let worker_host = host.clone();
    let mut second = Cluster::builder(1)
        .ports(&["worker"])
        .config(move |n, _| {
            format!(
                "[node]\nname = \"uc-w2\"\nbind = \"{ip}\"\ndata_dir = \"{data}\"\n[auth]\nadmin_token_file = \"{token}\"\n\
                 [plasmavmc_worker]\nport = {port}\naccel = \"tcg\"\nheartbeat_secs = 2\n\
                 control_plane_url = \"{control_plane}\"\ncoronafs_url = \"{coronafs}\"\n\
                 prismnet_url = \"{unreachable}\"\nprismnet_host = \"{host}\"\n",
                ip = n.ip,
                data = n.data_dir.display(),
                token = token_file.display(),
                port = n.port("worker"),
                host = worker_host,
                unreachable = UNREACHABLE,
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

    let dir_of = |worker: &str| {
        if worker == "uc-w2" {
            second_dir.clone()
        } else {
            cloud.worker_dir()
        }
    };

    // A destination that cannot set up the port's second tap: the migration fails cleanly;
    // the VM runs on in the same QEMU on the source, on its tap, with no migration binding
    // and nothing left on the destination.
    let on_source = OnSource {
        id: &id,
        worker: &source,
        qemu_pids: &before,
        port_id: &port_id,
        tap: &first_tap,
        address: &vm_ip,
    };
    let (s, e) = migrate(&cloud, &t, &id, &target).await;
    assert_eq!(s, 503, "{e}");
    assert!(cloud::qemus_under(&second_dir).is_empty());
    stayed_on_source(&cloud, &t, &on_source, &ns.0).await;
    // Now with prismnet's real address.
    let config = std::fs::read_to_string(&second.node(0).info.config_path).unwrap();
    std::fs::write(
        &second.node(0).info.config_path,
        config.replace(UNREACHABLE, &prismnet),
    )
    .unwrap();
    second.restart(0).await.expect("second worker restarts");
    cloud.wait_workers(2).await;

    // A destination that fails after setting up the port's second tap (the image server is
    // down, so it cannot fetch the kernel): that tap and the migration binding go again.
    images_up.store(false, Ordering::Relaxed);
    let (s, e) = migrate(&cloud, &t, &id, &target).await;
    images_up.store(true, Ordering::Relaxed);
    assert_eq!(s, 503, "{e}");
    assert!(e.to_string().contains("download"), "{e}");
    assert!(cloud::qemus_under(&second_dir).is_empty());
    stayed_on_source(&cloud, &t, &on_source, &ns.0).await;
    let (_, events) = cloud
        .as_(&t, Method::GET, &format!("/v1/vms/{id}/events"), None)
        .await;
    assert_eq!(
        events.to_string().matches("\"migrate_failed\"").count(),
        2,
        "{events}"
    );

    // Bad input: unknown worker, the VM's own worker. Nothing changes.
    for (worker, code) in [("nope", 400), (source.as_str(), 400)] {
        let (s, e) = migrate(&cloud, &t, &id, worker).await;
        assert_eq!(s, code, "{e}");
    }
    assert!(port(&cloud, &t, &port_id).await["migration"].is_null());
    assert_eq!(cloud::qemu_pids(&id), before);

    // There and back: each time the guest keeps running, keeps its address, and the port
    // moves to the destination QEMU's tap (the two tap names alternate).
    let mut pids = before;
    let mut tap = first_tap.clone();
    for (from, to) in [
        (source.clone(), target.clone()),
        (target.clone(), source.clone()),
    ] {
        let pinger = Pinger::start(&ns.0, &vm_ip);
        let (s, moved) = migrate(&cloud, &t, &id, &to).await;
        assert_eq!(s, 200, "{moved}");
        pinger.finish(&format!("migration {from} → {to}"));
        assert_eq!(moved["worker"], to.as_str(), "{moved}");
        assert_eq!(moved["state"], "running", "{moved}");
        assert!(moved["migrating_to"].is_null());
        assert!(moved["error"].is_null(), "{moved}");
        assert_eq!(moved["nics"][0]["ips"][0], vm_ip.as_str());

        // A different QEMU runs it now, under the destination's run dir, on the other tap.
        let after = cloud::qemu_pids(&id);
        assert_eq!(after.len(), 1, "{after:?}");
        assert_ne!(after, pids);
        assert_eq!(cloud::qemus_under(&dir_of(&to)), after);
        assert!(cloud::qemus_under(&dir_of(&from)).is_empty());
        let p = port(&cloud, &t, &port_id).await;
        let new_tap = p["device"].as_str().unwrap().to_owned();
        assert_ne!(new_tap, tap, "{p}");
        assert_eq!(
            new_tap[3..],
            tap[3..],
            "the same port's other tap name: {p}"
        );
        assert_eq!(p["binding"]["host"], host.as_str());
        assert_eq!(p["status"], "active", "{p}");
        assert!(p["migration"].is_null(), "{p}");
        assert_eq!(p["ips"][0], vm_ip.as_str());
        assert!(
            cmdline(after[0]).contains(&format!("ifname={new_tap}")),
            "{}",
            cmdline(after[0])
        );
        device_gone(&tap).await;
        assert!(ip(&["link", "show", &new_tap]).status.success());

        // The guest kept running (ticks continue on the destination's console without a
        // boot) and is reached at the same address.
        let (console, _) = cloud.wait_console(&t, &id, "UC-TICK", 0).await;
        assert!(!console.contains("UC-BOOT-OK"), "no reboot: {console}");
        assert!(reachable(&ns.0, &vm_ip), "the peer reaches the VM on {to}");
        pids = after;
        tap = new_tap;
    }
    assert_eq!(tap, first_tap, "back on the first tap name");
    let (s, events) = cloud
        .as_(&t, Method::GET, &format!("/v1/vms/{id}/events"), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        events.to_string().matches("\"migrated\"").count(),
        2,
        "{events}"
    );

    // Same disk and port: stop/start counts the second boot, and DHCP hands out the same
    // address again.
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
    // This worker's console had no boot marker before (the guest arrived running).
    let (console, _) = cloud.wait_console(&t, &id, "UC-BOOT-OK mover", 0).await;
    assert!(console.contains("UC-DISK boots=2"), "{console}");
    assert!(
        console.contains(&format!("UC-GUEST-IP {vm_ip}/")),
        "{console}"
    );

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
    device_gone(&tap).await;
    second.node_mut(0).terminate(Duration::from_secs(10));
    cloud::remove_networks(
        &cloud,
        &[
            (&t, format!("/v1/ports/{peer_id}")),
            (&t, format!("/v1/subnets/{subnet}")),
            (&t, format!("/v1/vpcs/{vpc}")),
        ],
        &[&prefix],
    )
    .await;
}

/// A second network host on this kernel: network namespace `name` joined to the root
/// namespace by a veth (`10.63.<n>.1` here, `.2` there). Inside it, 127.0.0.0/8 beyond
/// 127.0.0.1 (which keeps its own local route) routes to the root namespace (`route_localnet` on both veth ends), so processes
/// there reach the cloud the tests run on 127.0.0.x. Removed when dropped.
struct SecondHost {
    netns: String,
    root_end: String,
    here: String,
    there: String,
}

impl SecondHost {
    fn create(name: &str, n: u8) -> Self {
        let host = Self {
            netns: name.to_owned(),
            root_end: format!("{name}a"),
            here: format!("10.63.{n}.1"),
            there: format!("10.63.{n}.2"),
        };
        let _ = ip(&["netns", "del", name]);
        let _ = ip(&["link", "del", &host.root_end]);
        let ns = host.netns.as_str();
        let steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), ns.into()],
            vec![
                "link".into(),
                "add".into(),
                host.root_end.clone(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                "eth0".into(),
                "netns".into(),
                ns.into(),
            ],
            vec![
                "addr".into(),
                "add".into(),
                format!("{}/30", host.here),
                "dev".into(),
                host.root_end.clone(),
            ],
            vec![
                "link".into(),
                "set".into(),
                host.root_end.clone(),
                "up".into(),
            ],
            vec![
                "-n".into(),
                ns.into(),
                "addr".into(),
                "add".into(),
                format!("{}/30", host.there),
                "dev".into(),
                "eth0".into(),
            ],
            vec![
                "-n".into(),
                ns.into(),
                "link".into(),
                "set".into(),
                "eth0".into(),
                "up".into(),
            ],
            vec![
                "-n".into(),
                ns.into(),
                "link".into(),
                "set".into(),
                "lo".into(),
                "up".into(),
            ],
            vec![
                "-n".into(),
                ns.into(),
                "route".into(),
                "del".into(),
                "local".into(),
                "127.0.0.0/8".into(),
                "dev".into(),
                "lo".into(),
                "table".into(),
                "local".into(),
            ],
            vec![
                "-n".into(),
                ns.into(),
                "route".into(),
                "add".into(),
                "127.0.0.0/8".into(),
                "via".into(),
                host.here.clone(),
                "dev".into(),
                "eth0".into(),
                "src".into(),
                host.there.clone(),
            ],
        ];
        for step in &steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            let out = ip(&args);
            assert!(
                out.status.success(),
                "ip {}: {}",
                step.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for (netns, key) in [
            (
                None,
                format!("net.ipv4.conf.{}.route_localnet=1", host.root_end),
            ),
            (Some(ns), "net.ipv4.conf.all.route_localnet=1".to_owned()),
            (Some(ns), "net.ipv4.conf.eth0.route_localnet=1".to_owned()),
        ] {
            let status = match netns {
                Some(ns) => std::process::Command::new("ip")
                    .args(["netns", "exec", ns, "sysctl", "-qw", &key])
                    .status(),
                None => std::process::Command::new("sysctl")
                    .args(["-qw", &key])
                    .status(),
            };
            assert!(status.is_ok_and(|s| s.success()), "sysctl {key}");
        }
        host
    }

    /// A script that runs the ultracloud binary inside this host's namespace.
    fn wrapper(&self, dir: &std::path::Path) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(format!("ultracloud-in-{}", self.netns));
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\nexec ip netns exec {} {} \"$@\"\n",
                self.netns,
                uc_testkit::ultracloud_binary().display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }
}

impl Drop for SecondHost {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.netns]);
        let _ = ip(&["link", "del", &self.root_end]);
    }
}

/// The same migration between two prismnet hosts: the destination worker and its QEMU run
/// in a second network namespace with its own host agent, joined to the first over VXLAN.
/// The port's second tap is made on the destination host, activation moves the port's MAC
/// there (the source host's FDB points at the destination's tunnel endpoint), and a peer on
/// the first host reaches the VM at the same address across the tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_migration_between_two_network_hosts() {
    let prefix = format!("n{:x}", std::process::id() % 0xffff);
    let second_host = SecondHost::create(&format!("{prefix}h2"), 1);
    let cloud = cloud::up_with(
        "",
        Some(format!(
            "prefix = \"{prefix}\"\nunderlay_ip = \"{}\"",
            second_host.here
        )),
    )
    .await;
    let _reaper = QemuReaper(cloud.worker_dir());
    let token_file = cloud.info.data_dir.join("secrets/admin-token");
    let prismnet = cloud.info.url("prismnet");
    let first = cloud.ok(Method::GET, "/v1/workers", None).await["items"][0].clone();
    let host = first["host"].as_str().unwrap().to_owned();

    // The second host's agent: a process here that manages the dataplane inside the
    // namespace.
    let (agent_token, agent_api, agent_ns, agent_ip) = (
        token_file.clone(),
        prismnet.clone(),
        second_host.netns.clone(),
        second_host.there.clone(),
    );
    let agent_prefix = format!("{prefix}b");
    let config_prefix = agent_prefix.clone();
    let mut agent = Cluster::builder(1)
        .config(move |n, _| {
            format!(
                "[node]\nname = \"uc-h2-agent\"\nbind = \"{ip}\"\ndata_dir = \"{data}\"\n[auth]\nadmin_token_file = \"{token}\"\n\
                 [prismnet_agent]\nhost = \"h2\"\nprefix = \"{config_prefix}\"\nunderlay_ip = \"{agent_ip}\"\n\
                 api_url = \"{agent_api}\"\nnetns = \"{agent_ns}\"\n",
                ip = n.ip,
                data = n.data_dir.display(),
                token = agent_token.display(),
            )
        })
        .args(|n| {
            vec![
                "serve".into(),
                "prismnet-agent".into(),
                "--config".into(),
                n.config_path.display().to_string(),
            ]
        })
        .ready(Ready::Spawned)
        .start()
        .await
        .expect("the second host's agent starts");

    let t = cloud.tenant("traveller").await;
    let (vpc, subnet) = network(&cloud, &t, "10.64.0.0/16", "10.64.1.0/24").await;
    let (ns, peer_ip, peer_id) =
        cloud::peer_workload(&cloud, &t, &subnet, &host, &format!("{prefix}-peer")).await;
    let g = cloud::guest();
    let vm = ticking_vm(
        &cloud,
        &t,
        "traveller",
        &g.kernel.display().to_string(),
        &g.initrd.display().to_string(),
        &subnet,
        &peer_ip,
    )
    .await;
    let (id, port_id, vm_ip) = (vm.id, vm.port_id, vm.address);
    cloud.wait_state(&t, &id, "running").await;
    let (console, _) = cloud.wait_console(&t, &id, "UC-TICK 2", 0).await;
    assert!(
        console.contains(&format!("UC-GUEST-IP {vm_ip}/")),
        "{console}"
    );
    assert!(reachable(&ns.0, &vm_ip), "the peer reaches the VM");
    let before = cloud::qemu_pids(&id);
    let first_tap = port(&cloud, &t, &port_id).await["device"]
        .as_str()
        .unwrap()
        .to_owned();

    // The destination worker runs inside the second host (QEMU opens its taps there).
    let scripts = tempfile::tempdir().unwrap();
    let (control_plane, coronafs, worker_ip) = (
        cloud.url.clone(),
        cloud.info.url("coronafs"),
        second_host.there.clone(),
    );
    let mut worker = Cluster::builder(1)
        .binary(second_host.wrapper(scripts.path()))
        .ports(&["worker"])
        .config(move |n, _| {
            format!(
                "[node]\nname = \"uc-h2\"\nbind = \"{worker_ip}\"\ndata_dir = \"{data}\"\n[auth]\nadmin_token_file = \"{token}\"\n\
                 [plasmavmc_worker]\nport = {port}\naccel = \"tcg\"\nheartbeat_secs = 2\n\
                 control_plane_url = \"{control_plane}\"\ncoronafs_url = \"{coronafs}\"\n\
                 prismnet_url = \"{prismnet}\"\nprismnet_host = \"h2\"\n",
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
        .ready(Ready::Spawned)
        .start()
        .await
        .expect("the second host's worker starts");
    let worker_dir = worker.node(0).info.data_dir.join("plasmavmc-worker");
    let _reaper2 = QemuReaper(worker_dir.clone());
    cloud.wait_workers(2).await;

    let pinger = Pinger::start(&ns.0, &vm_ip);
    let (s, moved) = migrate(&cloud, &t, &id, "uc-h2").await;
    pinger.finish("migration to the second network host");
    assert_eq!(s, 200, "{moved}");
    assert_eq!(moved["worker"], "uc-h2", "{moved}");
    assert!(moved["error"].is_null(), "{moved}");
    let after = cloud::qemu_pids(&id);
    assert_eq!(after.len(), 1);
    assert_ne!(after, before);
    assert_eq!(cloud::qemus_under(&worker_dir), after);
    let p = port(&cloud, &t, &port_id).await;
    assert_eq!(p["binding"]["host"], "h2", "{p}");
    assert_eq!(p["status"], "active", "{p}");
    let tap = p["device"].as_str().unwrap().to_owned();
    assert_eq!(tap, format!("ucu{}", &first_tap[3..]), "{p}");
    assert!(
        ip(&["-n", &second_host.netns, "link", "show", &tap])
            .status
            .success(),
        "the tap is on the second host"
    );
    device_gone(&first_tap).await;
    let (console, _) = cloud.wait_console(&t, &id, "UC-TICK", 0).await;
    assert!(!console.contains("UC-BOOT-OK"), "no reboot: {console}");
    assert!(
        reachable(&ns.0, &vm_ip),
        "the peer on the first host reaches the VM on the second, at the same address"
    );

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
    assert!(cloud::qemus_under(&worker_dir).is_empty());
    worker.node_mut(0).terminate(Duration::from_secs(10));
    cloud::remove_networks(
        &cloud,
        &[
            (&t, format!("/v1/ports/{peer_id}")),
            (&t, format!("/v1/subnets/{subnet}")),
            (&t, format!("/v1/vpcs/{vpc}")),
        ],
        &[&prefix, &agent_prefix],
    )
    .await;
    agent.node_mut(0).terminate(Duration::from_secs(10));
}
