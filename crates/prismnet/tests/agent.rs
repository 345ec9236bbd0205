//! End to end: prismnet's API (real flaredb, iam) and the host agent converging a real
//! dataplane in a per-test "host" network namespace; workloads are namespaces attached to
//! ports, with a real DHCP client (busybox udhcpc), ping, and TCP from sockets opened inside
//! the namespaces. Needs root.

mod common;

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use nix::sched::{CloneFlags, setns};
use prismnet::AgentConfig;
use prismnet::agent::Agent;
use prismnet::client::PrismnetClient;
use serde_json::{Value, json};
use uc_runtime::Shutdown;

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn ip(args: &[&str]) {
    run("ip", args).unwrap();
}

/// Runs `f` on a thread inside network namespace `ns`.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let fd = File::open(format!("/run/netns/{ns}")).expect("open netns");
            setns(&fd, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread panicked")
    })
}

/// Polls `f` every 200 ms until it holds or `secs` pass.
async fn eventually(secs: u64, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    if [ -n "$router" ]; then ip route replace default via "${router%% *}" dev "$interface"; fi ;;
esac
"#;

/// A real DHCP client in the namespace; the address eth0 ends up with.
fn dhcp(netns: &str, script: &str) -> Result<String, String> {
    run(
        "ip",
        &[
            "netns", "exec", netns, "busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5",
            "-T", "1", "-s", script,
        ],
    )?;
    let out = run("ip", &["-n", netns, "-j", "addr", "show", "dev", "eth0"])?;
    let v: Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
    v[0]["addr_info"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["family"] == "inet"))
        .and_then(|a| a["local"].as_str())
        .map(ToOwned::to_owned)
        .ok_or_else(|| format!("no IPv4 address on eth0 in {netns}: {out}"))
}

fn ping(netns: &str, addr: &str) -> bool {
    run(
        "ip",
        &[
            "netns", "exec", netns, "busybox", "ping", "-c", "1", "-W", "1", addr,
        ],
    )
    .is_ok()
}

/// A TCP server inside a namespace that echoes lines back.
fn serve(netns: &str, port: u16) {
    let listener = in_netns(netns, || {
        TcpListener::bind(("0.0.0.0", port)).expect("bind")
    });
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    if conn.write_all(line.as_bytes()).is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
}

/// A TCP server that answers every client with the address it sees the client come from.
fn serve_whoami(netns: &str, port: u16) {
    let listener = in_netns(netns, || {
        TcpListener::bind(("0.0.0.0", port)).expect("bind")
    });
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let peer = conn
                .peer_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            let _ = writeln!(conn, "{peer}");
        }
    });
}

/// The address the whoami server saw, or an error.
fn whoami(netns: &str, addr: &str, port: u16) -> Result<String, String> {
    let addr = SocketAddr::new(addr.parse().unwrap(), port);
    let stream = in_netns(netns, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1))
    })
    .map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    Ok(line.trim_end().to_owned())
}

struct Conn {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn roundtrip(&mut self, msg: &str) -> Result<String, String> {
        writeln!(self.stream, "{msg}").map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        Ok(line.trim_end().to_string())
    }
}

/// Connects from inside `netns` and checks one echo.
fn connect(netns: &str, addr: &str, port: u16) -> Result<Conn, String> {
    let addr = SocketAddr::new(addr.parse().unwrap(), port);
    let stream = in_netns(netns, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1))
    })
    .map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let reader = BufReader::new(stream.try_clone().unwrap());
    let mut c = Conn { stream, reader };
    match c.roundtrip("hello")?.as_str() {
        "hello" => Ok(c),
        other => Err(format!("unexpected echo {other:?}")),
    }
}

/// Both attempts fail; only meaningful next to a positive check over the same path.
fn blocked(netns: &str, addr: &str, port: u16) -> bool {
    (0..2).all(|_| connect(netns, addr, port).is_err())
}

/// One simulated host (its own network namespace) and the namespaces the test made.
struct Host {
    prefix: String,
    netns: String,
    workloads: Vec<String>,
    state: tempfile::TempDir,
}

impl Host {
    fn new(tag: &str) -> Self {
        let prefix = format!("e{:x}{tag}", std::process::id() & 0xffff);
        let netns = format!("{prefix}-host");
        let _ = run("ip", &["netns", "del", &netns]);
        ip(&["netns", "add", &netns]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        Self {
            prefix,
            netns,
            workloads: Vec::new(),
            state: tempfile::tempdir().unwrap(),
        }
    }

    fn workload(&mut self, name: &str) -> String {
        let ns = format!("{}-{name}", self.prefix);
        let _ = run("ip", &["netns", "del", &ns]);
        ip(&["netns", "add", &ns]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        self.workloads.push(ns.clone());
        ns
    }

    fn agent_dir(&self) -> PathBuf {
        self.state.path().join("agent")
    }

    /// Starts an agent for this host against `api`; stop it with the returned shutdown.
    fn start_agent(&self, api: &str, token: &str) -> (Shutdown, tokio::task::JoinHandle<()>) {
        self.start_agent_with(api, token, AgentConfig::default())
    }

    fn start_agent_with(
        &self,
        api: &str,
        token: &str,
        base: AgentConfig,
    ) -> (Shutdown, tokio::task::JoinHandle<()>) {
        let client = PrismnetClient::new(
            api,
            uc_runtime::client::ClientOptions {
                token: Some(uc_runtime::Secret::new(token.to_owned())),
                timeout: Duration::from_secs(40),
                ..Default::default()
            },
        )
        .unwrap();
        let config = AgentConfig {
            prefix: self.prefix.clone(),
            netns: Some(self.netns.clone()),
            repair_interval_secs: 1,
            ..base
        };
        let agent = Agent::new(client, config, self.prefix.clone(), self.agent_dir()).unwrap();
        let shutdown = Shutdown::new();
        let task = tokio::spawn(agent.run(shutdown.clone()));
        (shutdown, task)
    }

    /// Devices and namespaces the dataplane owns that are still there.
    fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        let links = run("ip", &["-n", &self.netns, "-j", "link", "show"]).unwrap_or_default();
        let links: Value = serde_json::from_str(&links).unwrap_or(Value::Null);
        for l in links.as_array().into_iter().flatten() {
            let name = l["ifname"].as_str().unwrap_or("");
            if name.starts_with("uc") {
                out.push(format!("device {name}"));
            }
        }
        let netns = run("ip", &["netns", "list"]).unwrap_or_default();
        for line in netns.lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with(&format!("{}d-", self.prefix))
                || name.starts_with(&format!("{}r-", self.prefix))
            {
                out.push(format!("netns {name}"));
            }
        }
        let tables = run(
            "ip",
            &["netns", "exec", &self.netns, "nft", "list", "tables"],
        )
        .unwrap_or_default();
        for t in tables.lines().filter(|t| t.contains("ultracloud")) {
            out.push(format!("nft {t}"));
        }
        out
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Whatever a failed test left: stop dnsmasq and remove every object of this prefix.
        let mut dp = prismnet::dataplane::Dataplane::new(self.agent_dir().join("dataplane"));
        let prefix = self.prefix.clone();
        let _ = in_netns(&self.netns, || dp.teardown_all(&prefix));
        for ns in self.workloads.iter().chain(std::iter::once(&self.netns)) {
            let _ = run("ip", &["netns", "del", ns]);
        }
    }
}

async fn port_active(net: &Net, id: &str) -> bool {
    let (s, p) = net.get(&format!("/v1/ports/{id}")).await;
    s == 200 && p["status"] == "active"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ports_get_dhcp_talk_follow_security_groups_survive_agent_restart_and_vanish() {
    let cloud = cloud().await;
    let api = cloud.api().await;
    let net = Net::new(&api.url, &cloud.admin_token);
    let mut host = Host::new("a");
    let wa = host.workload("wa");
    let wb = host.workload("wb");
    let script = host.state.path().join("udhcpc.sh");
    std::fs::write(&script, UDHCPC_SCRIPT).unwrap();
    run("chmod", &["755", script.to_str().unwrap()]).unwrap();
    let script = script.to_str().unwrap().to_owned();

    let (vpc, subnet) = net.network("10.80.0.0/16", "10.80.1.0/24").await;
    let web = net
        .create(
            "/v1/security-groups",
            json!({"vpc_id": vpc["id"], "name": "web", "rules": [
                {"direction": "ingress", "protocol": "icmp"},
                {"direction": "egress", "protocol": "any"}
            ]}),
        )
        .await;
    let web_id = web["id"].as_str().unwrap().to_owned();
    let mut ports = Vec::new();
    for ns in [&wa, &wb] {
        ports.push(
            net.create(
                "/v1/ports",
                json!({"subnet_id": subnet["id"], "security_groups": [web_id],
                       "binding": {"host": host.prefix, "attachment": format!("netns:{ns}")}}),
            )
            .await,
        );
    }
    let (pa, pb) = (ports[0].clone(), ports[1].clone());
    let (ida, idb) = (pa["id"].as_str().unwrap(), pb["id"].as_str().unwrap());

    let (stop, agent) = host.start_agent(&api.url, &cloud.admin_token);
    assert!(
        eventually(30, async || port_active(&net, ida).await
            && port_active(&net, idb).await)
        .await,
        "the agent never reported the ports active: {:?}",
        (
            net.ok(&format!("/v1/ports/{ida}")).await,
            net.ok(&format!("/v1/ports/{idb}")).await
        )
    );
    let p = net.ok(&format!("/v1/ports/{ida}")).await;
    assert_eq!(p["device"], format!("ucp{}", &ida[..10]));

    // DHCP hands each workload its IPAM address; they reach each other.
    let mut got = Vec::new();
    for ns in [&wa, &wb] {
        let mut last = String::new();
        let mut addr = None;
        let ok = eventually(30, async || match dhcp(ns, &script) {
            Ok(a) => {
                addr = Some(a);
                true
            }
            Err(e) => {
                last = e;
                false
            }
        })
        .await;
        assert!(ok, "no DHCP lease in {ns}: {last}");
        got.push(addr.unwrap());
    }
    let (ipa, ipb) = (
        pa["ips"][0].as_str().unwrap(),
        pb["ips"][0].as_str().unwrap(),
    );
    assert_eq!(got, vec![ipa.to_owned(), ipb.to_owned()]);
    assert!(
        eventually(10, async || ping(&wa, ipb)).await,
        "a cannot ping b"
    );
    assert!(
        eventually(10, async || ping(&wb, ipa)).await,
        "b cannot ping a"
    );

    // Security groups: TCP 8080 is closed until a rule opens it.
    serve(&wb, 8080);
    serve(&wb, 9090);
    assert!(blocked(&wa, ipb, 8080), "8080 open without a rule");
    let (s, rule) = net
        .post(
            &format!("/v1/security-groups/{web_id}/rules"),
            json!({"direction": "ingress", "protocol": "tcp", "port_min": 8080, "remote_cidr": "10.80.1.0/24"}),
        )
        .await;
    assert_eq!(s, 201, "{rule}");
    assert!(
        eventually(15, async || connect(&wa, ipb, 8080).is_ok()).await,
        "the rule did not open 8080"
    );
    assert!(blocked(&wa, ipb, 9090), "a rule for 8080 opened 9090");
    let (s, _) = net
        .delete(&format!(
            "/v1/security-groups/{web_id}/rules/{}",
            rule["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(s, 204);
    assert!(
        eventually(15, async || blocked(&wa, ipb, 8080)).await,
        "removing the rule did not close 8080"
    );

    // Remote-group rule: members of `web` may connect.
    net.create(
        &format!("/v1/security-groups/{web_id}/rules"),
        json!({"direction": "ingress", "protocol": "tcp", "port_min": 8080, "remote_group": web_id}),
    )
    .await;
    assert!(eventually(15, async || connect(&wa, ipb, 8080).is_ok()).await);

    // Drift: the subnet's bridge deleted by hand comes back.
    let bridge = format!("ucb{}", &subnet["id"].as_str().unwrap()[..10]);
    ip(&["-n", &host.netns, "link", "del", &bridge]);
    assert!(
        eventually(20, async || run(
            "ip",
            &["-n", &host.netns, "link", "show", &bridge]
        )
        .is_ok()
            && ping(&wa, ipb))
        .await,
        "the agent did not restore the deleted bridge"
    );

    // An agent restart does not disturb an open connection.
    let mut conn = eventually_connect(&wa, ipb, 8080).await;
    assert_eq!(conn.roundtrip("before").unwrap(), "before");
    stop.trigger();
    agent.await.unwrap();
    let (stop, agent) = host.start_agent(&api.url, &cloud.admin_token);
    // Proof that the new agent converged: a change made now takes effect.
    net.create(
        &format!("/v1/security-groups/{web_id}/rules"),
        json!({"direction": "ingress", "protocol": "tcp", "port_min": 9090, "remote_cidr": "10.80.1.0/24"}),
    )
    .await;
    assert!(eventually(15, async || connect(&wa, ipb, 9090).is_ok()).await);
    assert_eq!(conn.roundtrip("after restart").unwrap(), "after restart");

    // Membership: a leaves `web` (default group only) and loses the remote-group access.
    let (s, b) = net
        .put(
            &format!("/v1/ports/{ida}"),
            json!({"security_groups": [vpc["default_security_group"]]}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert!(
        eventually(15, async || blocked(&wa, ipb, 8080)).await,
        "8080 still open after a left the group"
    );
    drop(conn);

    // Deleting everything removes every trace from the host.
    assert_eq!(net.delete(&format!("/v1/ports/{ida}")).await.0, 204);
    assert_eq!(net.delete(&format!("/v1/ports/{idb}")).await.0, 204);
    assert_eq!(
        net.delete(&format!("/v1/security-groups/{web_id}")).await.0,
        204
    );
    assert_eq!(
        net.delete(&format!("/v1/subnets/{}", subnet["id"].as_str().unwrap()))
            .await
            .0,
        204
    );
    assert_eq!(
        net.delete(&format!("/v1/vpcs/{}", vpc["id"].as_str().unwrap()))
            .await
            .0,
        204
    );
    let mut left = Vec::new();
    let clean = eventually(20, async || {
        left = host.leftovers();
        left.is_empty()
    })
    .await;
    assert!(clean, "left on the host: {left:?}");
    assert!(
        run("ip", &["-n", &wa, "link", "show", "eth0"]).is_err(),
        "the workload still has its port device"
    );
    stop.trigger();
    agent.await.unwrap();
    api.stop().await;
}

async fn eventually_connect(netns: &str, addr: &str, port: u16) -> Conn {
    let mut conn = None;
    let mut last = String::new();
    let ok = eventually(15, async || match connect(netns, addr, port) {
        Ok(c) => {
            conn = Some(c);
            true
        }
        Err(e) => {
            last = e;
            false
        }
    })
    .await;
    assert!(ok, "{netns} -> {addr}:{port}: {last}");
    conn.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_keeps_the_dataplane_while_the_api_is_down() {
    let cloud = cloud().await;
    let api = cloud.api().await;
    let net = Net::new(&api.url, &cloud.admin_token);
    let mut host = Host::new("b");
    let wa = host.workload("wa");
    let wb = host.workload("wb");
    let (_, subnet) = net.network("10.81.0.0/16", "10.81.0.0/24").await;
    let mut ips = Vec::new();
    for ns in [&wa, &wb] {
        let p = net
            .create(
                "/v1/ports",
                json!({"subnet_id": subnet["id"],
                       "binding": {"host": host.prefix, "attachment": format!("netns:{ns}")}}),
            )
            .await;
        let a = p["ips"][0].as_str().unwrap().to_owned();
        // Static addresses: this test is about the agent, not DHCP.
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        ips.push((p["id"].as_str().unwrap().to_owned(), a));
    }
    let (stop, agent) = host.start_agent(&api.url, &cloud.admin_token);
    for (id, _) in &ips {
        assert!(eventually(30, async || port_active(&net, id).await).await);
    }
    for (ns, (_, a)) in [&wa, &wb].iter().zip(&ips) {
        ip(&["-n", ns, "addr", "add", &format!("{a}/24"), "dev", "eth0"]);
    }
    assert!(eventually(10, async || ping(&wa, &ips[1].1)).await);

    // The API goes away; the agent keeps converging its stored plan and repairs drift.
    api.stop().await;
    let bridge = format!("ucb{}", &subnet["id"].as_str().unwrap()[..10]);
    ip(&["-n", &host.netns, "link", "del", &bridge]);
    assert!(
        eventually(20, async || ping(&wa, &ips[1].1)).await,
        "no repair while the API is down"
    );
    // A restarted agent with the API still down uses its stored plan.
    stop.trigger();
    agent.await.unwrap();
    let (stop, agent) = host.start_agent("http://127.0.0.1:9", &cloud.admin_token);
    ip(&["-n", &host.netns, "link", "del", &bridge]);
    assert!(
        eventually(20, async || ping(&wa, &ips[1].1)).await,
        "a restarted agent did not use its stored plan"
    );
    stop.trigger();
    agent.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hosts_share_a_subnet_over_vxlan_with_router_snat_and_a_floating_ip() {
    let cloud = cloud().await;
    let api = cloud.api().await;
    let op = Net::new(&api.url, &cloud.admin_token);
    let mut h1 = Host::new("c1");
    let mut h2 = Host::new("c2");
    let wa = h1.workload("wa");
    let wb = h2.workload("wb");
    let script = h1.state.path().join("udhcpc.sh");
    std::fs::write(&script, UDHCPC_SCRIPT).unwrap();
    run("chmod", &["755", script.to_str().unwrap()]).unwrap();
    let script = script.to_str().unwrap().to_owned();

    // The underlay between the two hosts, and on host 1 the operator's external bridge with
    // an "outside" namespace (the upstream router, 203.0.113.1) on it.
    let u1 = format!("{}u", h1.prefix);
    ip(&[
        "-n", &h1.netns, "link", "add", &u1, "type", "veth", "peer", "name", "under", "netns",
        &h2.netns,
    ]);
    ip(&["-n", &h1.netns, "link", "set", &u1, "name", "under"]);
    ip(&[
        "-n",
        &h1.netns,
        "addr",
        "add",
        "192.168.250.1/24",
        "dev",
        "under",
    ]);
    ip(&[
        "-n",
        &h2.netns,
        "addr",
        "add",
        "192.168.250.2/24",
        "dev",
        "under",
    ]);
    ip(&["-n", &h1.netns, "link", "set", "under", "up"]);
    ip(&["-n", &h2.netns, "link", "set", "under", "up"]);
    ip(&["-n", &h1.netns, "link", "add", "ucext", "type", "bridge"]);
    ip(&["-n", &h1.netns, "link", "set", "ucext", "up"]);
    let outside = h1.workload("out");
    ip(&[
        "-n", &h1.netns, "link", "add", "extpeer", "type", "veth", "peer", "name", "eth0", "netns",
        &outside,
    ]);
    ip(&[
        "-n", &h1.netns, "link", "set", "extpeer", "master", "ucext", "up",
    ]);
    ip(&[
        "-n",
        &outside,
        "addr",
        "add",
        "203.0.113.1/24",
        "dev",
        "eth0",
    ]);
    ip(&["-n", &outside, "link", "set", "eth0", "up"]);
    serve_whoami(&outside, 9000);

    op.create(
        "/v1/pools",
        json!({"name": "ext", "cidr": "203.0.113.0/24", "kind": "external", "gateway": "203.0.113.1"}),
    )
    .await;
    let (vpc, subnet) = op.network("10.90.0.0/16", "10.90.1.0/24").await;
    let sg = vpc["default_security_group"].as_str().unwrap();
    // From outside: ping and TCP 8080 (the floating IP's traffic keeps its source).
    for rule in [
        json!({"direction": "ingress", "protocol": "icmp"}),
        json!({"direction": "ingress", "protocol": "tcp", "port_min": 8080, "remote_cidr": "0.0.0.0/0"}),
    ] {
        op.create(&format!("/v1/security-groups/{sg}/rules"), rule)
            .await;
    }
    let router = op
        .create(
            "/v1/routers",
            json!({"vpc_id": vpc["id"], "name": "r", "host": h1.prefix, "external": {"pool": "ext"}}),
        )
        .await;
    let rid = router["id"].as_str().unwrap();
    let ext_ip = router["external"]["ip"].as_str().unwrap().to_owned();
    let (s, b) = op
        .post(
            &format!("/v1/routers/{rid}/interfaces"),
            json!({"subnet_id": subnet["id"]}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let pa = op
        .create(
            "/v1/ports",
            json!({"subnet_id": subnet["id"], "binding": {"host": h1.prefix, "attachment": format!("netns:{wa}")}}),
        )
        .await;
    let pb = op
        .create(
            "/v1/ports",
            json!({"subnet_id": subnet["id"], "binding": {"host": h2.prefix, "attachment": format!("netns:{wb}")}}),
        )
        .await;
    let fip = op
        .create(
            "/v1/floating-ips",
            json!({"pool": "ext", "port_id": pb["id"]}),
        )
        .await;
    let fip_ip = fip["ip"].as_str().unwrap().to_owned();

    let (stop1, agent1) = h1.start_agent_with(
        &api.url,
        &cloud.admin_token,
        AgentConfig {
            underlay_ip: Some("192.168.250.1".parse().unwrap()),
            external_bridge: Some("ucext".into()),
            ..Default::default()
        },
    );
    let (stop2, agent2) = h2.start_agent_with(
        &api.url,
        &cloud.admin_token,
        AgentConfig {
            underlay_ip: Some("192.168.250.2".parse().unwrap()),
            ..Default::default()
        },
    );
    let (ida, idb) = (pa["id"].as_str().unwrap(), pb["id"].as_str().unwrap());
    assert!(
        eventually(30, async || port_active(&op, ida).await
            && port_active(&op, idb).await)
        .await,
        "ports never active"
    );
    // Each host's DHCP server leases its own port the IPAM address (and the router route).
    let (ipa, ipb) = (
        pa["ips"][0].as_str().unwrap(),
        pb["ips"][0].as_str().unwrap(),
    );
    for (ns, want) in [(&wa, ipa), (&wb, ipb)] {
        let mut last = String::new();
        let ok = eventually(30, async || match dhcp(ns, &script) {
            Ok(a) => {
                a == want || {
                    last = format!("got {a}");
                    false
                }
            }
            Err(e) => {
                last = e;
                false
            }
        })
        .await;
        assert!(ok, "{ns}: {last}");
    }
    // Across hosts over VXLAN.
    assert!(
        eventually(20, async || ping(&wa, ipb)).await,
        "a cannot reach b across hosts"
    );
    assert!(
        eventually(10, async || ping(&wb, ipa)).await,
        "b cannot reach a across hosts"
    );
    // a (host 1) goes out through the router's SNAT: the outside sees the gateway address.
    let mut seen = String::new();
    assert!(
        eventually(20, async || whoami(&wa, "203.0.113.1", 9000)
            .map(|s| seen = s)
            .is_ok())
        .await,
        "a cannot reach the outside"
    );
    assert_eq!(seen, ext_ip);
    // b (host 2, behind VXLAN) has a floating IP: it goes out as that address, and the
    // outside reaches it there.
    assert!(
        eventually(20, async || whoami(&wb, "203.0.113.1", 9000)
            .map(|s| seen = s)
            .is_ok())
        .await,
        "b cannot reach the outside"
    );
    assert_eq!(seen, fip_ip);
    serve(&wb, 8080);
    assert!(
        eventually(20, async || connect(&outside, &fip_ip, 8080).is_ok()).await,
        "the outside cannot reach b through its floating IP"
    );
    assert!(ping(&outside, &fip_ip));

    // Dissociating the floating IP takes the path away.
    let (s, b) = op
        .put(
            &format!("/v1/floating-ips/{}", fip["id"].as_str().unwrap()),
            json!({"port_id": null}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert!(
        eventually(20, async || blocked(&outside, &fip_ip, 8080)).await,
        "the floating IP still reaches b"
    );

    stop1.trigger();
    stop2.trigger();
    agent1.await.unwrap();
    agent2.await.unwrap();
    api.stop().await;
}

/// A TCP server that answers every client with `name`.
fn serve_name(netns: &str, port: u16, name: &str) {
    let listener = in_netns(netns, || {
        TcpListener::bind(("0.0.0.0", port)).expect("bind")
    });
    let name = name.to_owned();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = writeln!(conn, "{name}");
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vpcs_with_overlapping_cidrs_stay_apart_on_one_host() {
    let cloud = cloud().await;
    let api = cloud.api().await;
    let t1 = Net::new(&api.url, &cloud.tenant("acme", "admin").await);
    let t2 = Net::new(&api.url, &cloud.tenant("globex", "admin").await);
    let op = Net::new(&api.url, &cloud.admin_token);
    let mut host = Host::new("d");
    // The same CIDR in two tenants' VPCs; c and d even share an address.
    let mut ns = Vec::new();
    for (net, name, addr) in [
        (&t1, "a", "10.85.0.10"),
        (&t1, "c", "10.85.0.11"),
        (&t2, "b", "10.85.0.12"),
        (&t2, "d", "10.85.0.11"),
    ] {
        let w = host.workload(name);
        ns.push((net.clone(), w, addr));
    }
    let (v1, s1) = t1.network("10.85.0.0/16", "10.85.0.0/24").await;
    let (v2, s2) = t2.network("10.85.0.0/16", "10.85.0.0/24").await;
    // Groups open to everyone: only the topology can keep the tenants apart.
    for (net, vpc) in [(&t1, &v1), (&t2, &v2)] {
        let sg = vpc["default_security_group"].as_str().unwrap();
        net.create(
            &format!("/v1/security-groups/{sg}/rules"),
            json!({"direction": "ingress", "protocol": "any"}),
        )
        .await;
    }
    let mut ids = Vec::new();
    for (net, w, addr) in &ns {
        let subnet = if net.token == t1.token { &s1 } else { &s2 };
        let p = net
            .create(
                "/v1/ports",
                json!({"subnet_id": subnet["id"], "ips": [addr],
                       "binding": {"host": host.prefix, "attachment": format!("netns:{w}")}}),
            )
            .await;
        ids.push(p["id"].as_str().unwrap().to_owned());
    }
    let (stop, agent) = host.start_agent(&api.url, &cloud.admin_token);
    for id in &ids {
        assert!(
            eventually(30, async || port_active(&op, id).await).await,
            "{id} never active"
        );
    }
    for (_, w, addr) in &ns {
        ip(&["-n", w, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
    }
    let (a, c, b, d) = (&ns[0].1, &ns[1].1, &ns[2].1, &ns[3].1);
    serve_name(c, 9000, "c");
    serve_name(d, 9000, "d");
    let name_at = |from: &str| {
        let addr = SocketAddr::new("10.85.0.11".parse().unwrap(), 9000);
        in_netns(from, || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        })
        .ok()
        .and_then(|s| {
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line).ok()?;
            Some(line.trim_end().to_owned())
        })
    };
    // 10.85.0.11 is c for tenant 1 and d for tenant 2.
    let mut got = None;
    assert!(
        eventually(15, async || {
            got = name_at(a);
            got.is_some()
        })
        .await
    );
    assert_eq!(got.as_deref(), Some("c"));
    assert!(
        eventually(15, async || {
            got = name_at(b);
            got.is_some()
        })
        .await
    );
    assert_eq!(got.as_deref(), Some("d"));
    // Across VPCs nothing passes, even inside the shared range.
    assert!(eventually(10, async || ping(a, "10.85.0.11")).await);
    assert!(!ping(a, "10.85.0.12"), "tenant 1 reached tenant 2's port");
    assert!(!ping(b, "10.85.0.10"), "tenant 2 reached tenant 1's port");
    stop.trigger();
    agent.await.unwrap();
    api.stop().await;
}
