//! The prismnet dataplane against the real kernel: network namespaces, bridges, veths, VXLAN,
//! nftables, dnsmasq, and real packets (TCP from Rust sockets opened inside workload
//! namespaces, ICMP from busybox ping, DHCP from busybox udhcpc). Needs root.
//!
//! Every test builds its own "host" network namespace and runs `converge` on a thread that
//! joined it, so tests never touch the machine's own network configuration and can run in
//! parallel (namespace names carry a per-test prefix).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use prismnet::dataplane::Dataplane;
use prismnet::dataplane::plan::*;

// ---------------------------------------------------------------------------------------------
// Harness

/// Runs `f` on a thread inside network namespace `ns` (sockets it opens stay in that netns;
/// processes it spawns start there).
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

/// Polls `f` every 100 ms until it holds or `secs` pass.
fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn unique_prefix(tag: &str) -> String {
    format!("t{:x}{tag}", std::process::id() & 0xfffff)
}

/// One simulated host: its own network namespace and a dataplane converged inside it.
struct Host {
    netns: String,
    prefix: String,
    dp: Dataplane,
    /// Extra namespaces (workloads, "outside") the test created; removed on drop.
    extra: Vec<String>,
    _state: tempfile::TempDir,
}

impl Host {
    fn new(prefix: &str) -> Host {
        let netns = format!("{prefix}-host");
        let _ = run("ip", &["netns", "del", &netns]);
        ip(&["netns", "add", &netns]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        let state = tempfile::tempdir().unwrap();
        let mut dp = Dataplane::new(state.path());
        // Every pass re-reads everything, so "no change" claims are checked in full.
        dp.full_verify_every = Duration::ZERO;
        Host {
            netns,
            prefix: prefix.to_string(),
            dp,
            extra: Vec::new(),
            _state: state,
        }
    }

    fn plan(&self) -> HostPlan {
        HostPlan::empty("test", self.prefix.clone())
    }

    fn converge(&mut self, plan: &HostPlan) -> ConvergeReport {
        let netns = self.netns.clone();
        let dp = &mut self.dp;
        let report = in_netns(&netns, || dp.converge(plan)).expect("converge");
        assert!(report.errors.is_empty(), "converge errors: {report:#?}");
        report
    }

    /// A workload namespace (what a container or test client would be).
    fn workload(&mut self, name: &str) -> String {
        let ns = format!("{}-{name}", self.prefix);
        let _ = run("ip", &["netns", "del", &ns]);
        ip(&["netns", "add", &ns]);
        self.extra.push(ns.clone());
        ns
    }

    fn host_ip(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["-n", self.netns.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    fn nft(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["netns", "exec", self.netns.as_str(), "nft"];
        all.extend_from_slice(args);
        run("ip", &all)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let netns = self.netns.clone();
        let prefix = self.prefix.clone();
        // A fresh Dataplane with the real tools: a test may have swapped in wrappers that are
        // gone by now.
        let mut dp = Dataplane::new(self.dp.state_dir());
        let _ = in_netns(&netns, || dp.teardown_all(&prefix));
        for ns in self.extra.iter().chain(std::iter::once(&self.netns)) {
            let _ = run("ip", &["netns", "del", ns]);
        }
    }
}

fn network(id: &str, vni: u32, cidr: &str, gateway: Option<&str>) -> NetworkPlan {
    NetworkPlan {
        subnet_id: id.into(),
        vni,
        cidr: cidr.into(),
        gateway: gateway.map(|g| g.parse().unwrap()),
        mtu: 1450,
        dhcp: None,
        ports: Vec::new(),
        remote_vteps: Vec::new(),
        remote_macs: Vec::new(),
    }
}

fn netns_port(id: &str, mac: &str, ip: &str, netns: &str, sgs: &[&str]) -> PortPlan {
    PortPlan {
        port_id: id.into(),
        mac: mac.into(),
        ips: vec![ip.parse().unwrap()],
        attachment: Attachment::Netns {
            netns: netns.into(),
            ifname: "eth0".into(),
        },
        security_groups: sgs.iter().map(|s| s.to_string()).collect(),
        port_security: true,
        migration_target: false,
    }
}

/// DHCP with a static lease for every port already in the network.
fn with_dhcp(mut net: NetworkPlan, server_ip: &str) -> NetworkPlan {
    let hosts = net
        .ports
        .iter()
        .map(|p| DhcpHost {
            mac: p.mac.clone(),
            ip: p.ips[0],
            hostname: None,
        })
        .collect();
    net.dhcp = Some(DhcpPlan {
        server_ip: server_ip.parse().unwrap(),
        server_mac: "02:dd:00:00:00:01".into(),
        dns_servers: vec![],
        lease_secs: 3600,
        hosts,
    });
    net
}

fn allow_all_sg(id: &str) -> SecurityGroupPlan {
    SecurityGroupPlan {
        sg_id: id.into(),
        rules: vec![
            RulePlan {
                direction: Direction::Ingress,
                protocol: Protocol::Any,
                port_min: None,
                port_max: None,
                remote: Remote::Any,
            },
            RulePlan {
                direction: Direction::Egress,
                protocol: Protocol::Any,
                port_min: None,
                port_max: None,
                remote: Remote::Any,
            },
        ],
        members: vec![],
    }
}

fn rule(direction: Direction, protocol: Protocol, port: Option<u16>, remote: Remote) -> RulePlan {
    RulePlan {
        direction,
        protocol,
        port_min: port,
        port_max: port,
        remote,
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
exit 0
"#;

/// Runs a real DHCP client (busybox udhcpc) in the workload namespace and returns the
/// address the interface ended up with.
fn dhcp_client(netns: &str) -> Ipv4Addr {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("udhcpc.sh");
    std::fs::write(&script, UDHCPC_SCRIPT).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut last_err = String::new();
    let got = eventually(30, || {
        match run(
            "ip",
            &[
                "netns",
                "exec",
                netns,
                "busybox",
                "udhcpc",
                "-i",
                "eth0",
                "-f",
                "-q",
                "-n",
                "-t",
                "4",
                "-T",
                "1",
                "-s",
                script.to_str().unwrap(),
            ],
        ) {
            Ok(_) => true,
            Err(e) => {
                last_err = e;
                false
            }
        }
    });
    assert!(got, "udhcpc in {netns} got no lease: {last_err}");
    let out = run("ip", &["-n", netns, "-j", "addr", "show", "dev", "eth0"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["family"] == "inet")
        .and_then(|a| a["local"].as_str())
        .expect("an IPv4 address after DHCP")
        .parse()
        .unwrap()
}

/// Gives a workload its address statically (for tests about something other than DHCP).
fn static_ip(netns: &str, cidr_addr: &str, gateway: Option<&str>) {
    ip(&["-n", netns, "addr", "add", cidr_addr, "dev", "eth0"]);
    if let Some(gw) = gateway {
        ip(&["-n", netns, "route", "add", "default", "via", gw]);
    }
}

/// A TCP server inside a namespace: greets every client with "<name> <client address>\n"
/// and then echoes lines back.
fn serve(netns: &str, port: u16, name: &str) {
    let listener = in_netns(netns, || {
        TcpListener::bind(("0.0.0.0", port)).expect("bind")
    });
    let name = name.to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let name = name.clone();
            std::thread::spawn(move || {
                let peer = conn
                    .peer_addr()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                if writeln!(conn, "{name} {peer}").is_err() {
                    return;
                }
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

/// Connects from inside `netns`; Ok(greeting) once the server answered.
fn connect(netns: &str, addr: &str, port: u16) -> Result<(Conn, String), String> {
    let addr = SocketAddr::new(addr.parse().unwrap(), port);
    let stream = in_netns(netns, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1))
    })
    .map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut greeting = String::new();
    reader.read_line(&mut greeting).map_err(|e| e.to_string())?;
    Ok((Conn { stream, reader }, greeting.trim_end().to_string()))
}

/// The greeting once a connection succeeds (polling), or panics with the last error.
fn greeting(netns: &str, addr: &str, port: u16) -> String {
    let mut last = String::new();
    let mut result = None;
    let ok = eventually(15, || match connect(netns, addr, port) {
        Ok((_, g)) => {
            result = Some(g);
            true
        }
        Err(e) => {
            last = e;
            false
        }
    });
    assert!(ok, "{netns} -> {addr}:{port} never connected: {last}");
    result.unwrap()
}

/// Connection attempts fail (each one waits up to its own timeout). Only meaningful next to
/// a positive check over the same path.
fn unreachable(netns: &str, addr: &str, port: u16) -> bool {
    (0..2).all(|_| connect(netns, addr, port).is_err())
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

fn ping_from(netns: &str, source: &str, addr: &str) -> bool {
    run(
        "ip",
        &[
            "netns", "exec", netns, "busybox", "ping", "-c", "1", "-W", "1", "-I", source, addr,
        ],
    )
    .is_ok()
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn dhcp_gives_ports_their_addresses_and_they_talk() {
    let mut host = Host::new(&unique_prefix("dh"));
    let a = host.workload("a");
    let b = host.workload("b");
    let mut net = network("5ub0000001", 101, "10.10.0.0/24", Some("10.10.0.1"));
    net.ports = vec![
        netns_port(
            "a000000001",
            "02:00:00:00:01:01",
            "10.10.0.11",
            &a,
            &["open"],
        ),
        netns_port(
            "b000000001",
            "02:00:00:00:01:02",
            "10.10.0.12",
            &b,
            &["open"],
        ),
    ];
    let mut plan = host.plan();
    plan.networks = vec![with_dhcp(net, "10.10.0.250")];
    plan.security_groups = vec![allow_all_sg("open")];
    let report = host.converge(&plan);
    assert!(!report.changed.is_empty());
    assert_eq!(report.ports_ready.len(), 2, "{report:#?}");

    assert_eq!(dhcp_client(&a), "10.10.0.11".parse::<Ipv4Addr>().unwrap());
    assert_eq!(dhcp_client(&b), "10.10.0.12".parse::<Ipv4Addr>().unwrap());
    // The DHCP router option reached the client.
    let routes = run("ip", &["-n", &a, "route", "show", "default"]).unwrap();
    assert!(routes.contains("via 10.10.0.1"), "{routes}");

    assert!(eventually(10, || ping(&a, "10.10.0.12")));
    serve(&b, 7000, "b");
    assert_eq!(greeting(&a, "10.10.0.12", 7000), "b 10.10.0.11");

    // A MAC that has no static lease gets nothing (static leases only).
    let c = host.workload("c");
    plan.networks[0].ports.push(netns_port(
        "c000000001",
        "02:00:00:00:01:03",
        "10.10.0.13",
        &c,
        &["open"],
    ));
    host.converge(&plan);
    let denied = run(
        "ip",
        &[
            "netns",
            "exec",
            &c,
            "busybox",
            "udhcpc",
            "-i",
            "eth0",
            "-f",
            "-q",
            "-n",
            "-t",
            "2",
            "-T",
            "1",
            "-s",
            "/bin/true",
        ],
    );
    assert!(denied.is_err(), "a MAC without a lease was answered");
    // Adding its lease reloads dnsmasq and then it gets the address.
    plan.networks[0]
        .dhcp
        .as_mut()
        .unwrap()
        .hosts
        .push(DhcpHost {
            mac: "02:00:00:00:01:03".into(),
            ip: "10.10.0.13".parse().unwrap(),
            hostname: Some("c".into()),
        });
    let report = host.converge(&plan);
    assert!(
        report.changed.iter().any(|c| c.contains("reload dnsmasq")),
        "{report:#?}"
    );
    assert_eq!(dhcp_client(&c), "10.10.0.13".parse::<Ipv4Addr>().unwrap());
}

#[test]
fn overlapping_vpcs_on_one_host_are_isolated() {
    let mut host = Host::new(&unique_prefix("ov"));
    let a1 = host.workload("a1");
    let a2 = host.workload("a2");
    let b1 = host.workload("b1");
    let b2 = host.workload("b2");
    let mut va = network("vpca000001", 201, "10.0.0.0/24", None);
    va.ports = vec![
        netns_port(
            "a100000001",
            "02:00:00:00:02:01",
            "10.0.0.2",
            &a1,
            &["open"],
        ),
        netns_port(
            "a200000001",
            "02:00:00:00:02:02",
            "10.0.0.3",
            &a2,
            &["open"],
        ),
    ];
    let mut vb = network("vpcb000001", 202, "10.0.0.0/24", None);
    vb.ports = vec![
        netns_port(
            "b100000001",
            "02:00:00:00:03:01",
            "10.0.0.2",
            &b1,
            &["open"],
        ),
        netns_port(
            "b200000001",
            "02:00:00:00:03:02",
            "10.0.0.4",
            &b2,
            &["open"],
        ),
    ];
    let mut plan = host.plan();
    plan.networks = vec![va, vb];
    plan.security_groups = vec![allow_all_sg("open")];
    host.converge(&plan);
    static_ip(&a1, "10.0.0.2/24", None);
    static_ip(&a2, "10.0.0.3/24", None);
    static_ip(&b1, "10.0.0.2/24", None);
    static_ip(&b2, "10.0.0.4/24", None);
    serve(&a1, 7000, "a1");
    serve(&b1, 7000, "b1");
    serve(&a2, 7000, "a2");
    serve(&b2, 7000, "b2");

    // The same address answers with a different workload depending on the VPC.
    assert_eq!(greeting(&a2, "10.0.0.2", 7000), "a1 10.0.0.3");
    assert_eq!(greeting(&b2, "10.0.0.2", 7000), "b1 10.0.0.4");
    // Neither side reaches the other VPC's addresses.
    assert!(unreachable(&a2, "10.0.0.4", 7000));
    assert!(unreachable(&b2, "10.0.0.3", 7000));
    assert!(!ping(&a1, "10.0.0.4"));
    assert!(!ping(&b1, "10.0.0.3"));
}

#[test]
fn security_groups_follow_rules_and_group_membership() {
    let mut host = Host::new(&unique_prefix("sg"));
    let a = host.workload("a");
    let b = host.workload("b");
    let mut net = network("5ub0000003", 301, "10.30.0.0/24", None);
    net.ports = vec![
        netns_port(
            "a000000003",
            "02:00:00:00:04:01",
            "10.30.0.2",
            &a,
            &["client"],
        ),
        netns_port(
            "b000000003",
            "02:00:00:00:04:02",
            "10.30.0.3",
            &b,
            &["server"],
        ),
    ];
    let client = SecurityGroupPlan {
        sg_id: "client".into(),
        rules: vec![
            rule(Direction::Egress, Protocol::Any, None, Remote::Any),
            rule(Direction::Ingress, Protocol::Tcp, Some(7001), Remote::Any),
        ],
        members: vec!["10.30.0.2".parse().unwrap()],
    };
    let server = SecurityGroupPlan {
        sg_id: "server".into(),
        rules: vec![
            rule(Direction::Egress, Protocol::Any, None, Remote::Any),
            rule(Direction::Ingress, Protocol::Icmp, None, Remote::Any),
        ],
        members: vec!["10.30.0.3".parse().unwrap()],
    };
    let mut plan = host.plan();
    plan.networks = vec![net];
    plan.security_groups = vec![client, server];
    host.converge(&plan);
    static_ip(&a, "10.30.0.2/24", None);
    static_ip(&b, "10.30.0.3/24", None);
    serve(&a, 7001, "a");
    serve(&b, 7000, "b");

    // The path works (b reaches a's allowed port; a pings b) ...
    assert_eq!(greeting(&b, "10.30.0.2", 7001), "a 10.30.0.3");
    assert!(eventually(10, || ping(&a, "10.30.0.3")));
    // ... but b's port 7000 has no ingress rule.
    assert!(unreachable(&a, "10.30.0.3", 7000));

    // Allow 7000 from members of "client": a connects.
    plan.security_groups[1].rules.push(rule(
        Direction::Ingress,
        Protocol::Tcp,
        Some(7000),
        Remote::Group("client".into()),
    ));
    host.converge(&plan);
    assert_eq!(greeting(&a, "10.30.0.3", 7000), "b 10.30.0.2");

    // A ruleset change elsewhere (a new member of "client") re-applies the tables; an
    // established connection is not disturbed by it.
    let (mut conn, _) = connect(&a, "10.30.0.3", 7000).expect("allowed connection");
    plan.security_groups[0]
        .members
        .push("10.30.0.50".parse().unwrap());
    let report = host.converge(&plan);
    assert!(
        report.changed.iter().any(|c| c.contains("nftables")),
        "{report:#?}"
    );
    assert_eq!(
        conn.roundtrip("across the re-apply").unwrap(),
        "across the re-apply"
    );
    plan.security_groups[0].members.pop();

    // a leaves the group: new connections fail again.
    plan.security_groups[0].members.clear();
    host.converge(&plan);
    assert!(unreachable(&a, "10.30.0.3", 7000));
    // Back in the group: they work.
    plan.security_groups[0].members = vec!["10.30.0.2".parse().unwrap()];
    host.converge(&plan);
    assert_eq!(greeting(&a, "10.30.0.3", 7000), "b 10.30.0.2");

    // Remove the rule: refused again.
    plan.security_groups[1].rules.pop();
    host.converge(&plan);
    assert!(unreachable(&a, "10.30.0.3", 7000));

    // Anti-spoofing: a's own address pings b; a forged source address does not.
    ip(&["-n", &a, "addr", "add", "10.30.0.99/24", "dev", "eth0"]);
    assert!(ping_from(&a, "10.30.0.2", "10.30.0.3"));
    assert!(!ping_from(&a, "10.30.0.99", "10.30.0.3"));
}

#[test]
fn router_snat_and_floating_ip() {
    let mut host = Host::new(&unique_prefix("rt"));
    let a = host.workload("a");
    let b = host.workload("b");
    // The "outside": a bridge in the host and a namespace on it standing for the internet.
    ip(&["-n", &host.netns, "link", "add", "ucext", "type", "bridge"]);
    ip(&["-n", &host.netns, "link", "set", "ucext", "up"]);
    let outside = host.workload("out");
    ip(&[
        "-n",
        &host.netns,
        "link",
        "add",
        "extpeer",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &outside,
    ]);
    ip(&[
        "-n",
        &host.netns,
        "link",
        "set",
        "extpeer",
        "master",
        "ucext",
        "up",
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
    ip(&["-n", &outside, "link", "set", "lo", "up"]);

    let mut net = network("5ub0000004", 401, "10.40.0.0/24", Some("10.40.0.1"));
    net.ports = vec![
        netns_port(
            "a000000004",
            "02:00:00:00:05:01",
            "10.40.0.2",
            &a,
            &["open"],
        ),
        netns_port(
            "b000000004",
            "02:00:00:00:05:02",
            "10.40.0.3",
            &b,
            &["open"],
        ),
    ];
    let mut plan = host.plan();
    plan.external_bridge = Some("ucext".into());
    // A second subnet of the same VPC behind the same router.
    let c = host.workload("c");
    let mut net2 = network("5ub0000014", 402, "10.41.0.0/24", Some("10.41.0.1"));
    net2.ports = vec![netns_port(
        "c000000004",
        "02:00:00:00:05:03",
        "10.41.0.2",
        &c,
        &["open"],
    )];
    plan.networks = vec![
        with_dhcp(net, "10.40.0.250"),
        with_dhcp(net2, "10.41.0.250"),
    ];
    plan.security_groups = vec![allow_all_sg("open")];
    plan.routers = vec![RouterPlan {
        router_id: "r000000004".into(),
        interfaces: vec![
            RouterInterface {
                subnet_id: "5ub0000004".into(),
                ip: "10.40.0.1".parse().unwrap(),
                prefix_len: 24,
                mac: "02:aa:00:00:00:01".into(),
            },
            RouterInterface {
                subnet_id: "5ub0000014".into(),
                ip: "10.41.0.1".parse().unwrap(),
                prefix_len: 24,
                mac: "02:aa:00:00:00:02".into(),
            },
        ],
        external: Some(ExternalGateway {
            ip: "203.0.113.10".parse().unwrap(),
            prefix_len: 24,
            gateway: Some("203.0.113.1".parse().unwrap()),
            snat: true,
        }),
        floating_ips: vec![FloatingIpPlan {
            external_ip: "203.0.113.20".parse().unwrap(),
            internal_ip: "10.40.0.3".parse().unwrap(),
        }],
    }];
    host.converge(&plan);
    // Addresses and the default route via the router come from DHCP.
    dhcp_client(&a);
    dhcp_client(&b);
    dhcp_client(&c);
    serve(&outside, 8000, "outside");
    serve(&b, 8001, "b");
    serve(&c, 8002, "c");

    // Between the VPC's subnets the router routes without NAT.
    assert_eq!(greeting(&a, "10.41.0.2", 8002), "c 10.40.0.2");
    assert_eq!(greeting(&c, "10.40.0.3", 8001), "b 10.41.0.2");
    assert_eq!(greeting(&c, "203.0.113.1", 8000), "outside 203.0.113.10");

    // SNAT: the outside sees the router's external address.
    assert_eq!(greeting(&a, "203.0.113.1", 8000), "outside 203.0.113.10");
    // The floating IP's port leaves with its floating IP ...
    assert_eq!(greeting(&b, "203.0.113.1", 8000), "outside 203.0.113.20");
    // ... and the outside reaches it through the floating IP (DNAT, source kept).
    assert_eq!(greeting(&outside, "203.0.113.20", 8001), "b 203.0.113.1");
    // Routing the tenant subnet via the router directly does not get in.
    ip(&[
        "-n",
        &outside,
        "route",
        "add",
        "10.40.0.0/24",
        "via",
        "203.0.113.10",
    ]);
    assert!(unreachable(&outside, "10.40.0.3", 8001));

    // Floating IP removed: no longer reachable, but SNAT still works for b.
    plan.routers[0].floating_ips.clear();
    host.converge(&plan);
    assert!(unreachable(&outside, "203.0.113.20", 8001));
    assert_eq!(greeting(&b, "203.0.113.1", 8000), "outside 203.0.113.10");
}

#[test]
fn vxlan_joins_a_subnet_across_two_hosts() {
    let p1 = unique_prefix("v1");
    let p2 = unique_prefix("v2");
    let mut h1 = Host::new(&p1);
    let mut h2 = Host::new(&p2);
    // The underlay: one veth between the two host namespaces.
    ip(&[
        "-n", &h1.netns, "link", "add", "underlay", "type", "veth", "peer", "name", "underlay",
        "netns", &h2.netns,
    ]);
    ip(&[
        "-n",
        &h1.netns,
        "addr",
        "add",
        "192.168.77.1/24",
        "dev",
        "underlay",
    ]);
    ip(&[
        "-n",
        &h2.netns,
        "addr",
        "add",
        "192.168.77.2/24",
        "dev",
        "underlay",
    ]);
    ip(&["-n", &h1.netns, "link", "set", "underlay", "up"]);
    ip(&["-n", &h2.netns, "link", "set", "underlay", "up"]);
    let w1 = h1.workload("w");
    let w2 = h2.workload("w");

    let vtep1: Ipv4Addr = "192.168.77.1".parse().unwrap();
    let vtep2: Ipv4Addr = "192.168.77.2".parse().unwrap();
    let mac1 = "02:00:00:00:06:01";
    let mac2 = "02:00:00:00:06:02";
    let make =
        |local: Ipv4Addr, remote: Ipv4Addr, port: PortPlan, remote_mac: &str, prefix: &str| {
            let mut net = network("5ub0000005", 5005, "10.50.0.0/24", None);
            net.ports = vec![port];
            net.remote_vteps = vec![remote];
            net.remote_macs = vec![RemoteMac {
                mac: remote_mac.into(),
                vtep: remote,
            }];
            let mut plan = HostPlan::empty("test", prefix);
            plan.underlay_ip = Some(local);
            // Each host serves DHCP for its own ports only; both use the same server address.
            plan.networks = vec![with_dhcp(net, "10.50.0.250")];
            let mut sg = allow_all_sg("peers");
            sg.rules = vec![
                rule(Direction::Egress, Protocol::Any, None, Remote::Any),
                rule(
                    Direction::Ingress,
                    Protocol::Any,
                    None,
                    Remote::Group("peers".into()),
                ),
            ];
            sg.members = vec!["10.50.0.11".parse().unwrap(), "10.50.0.12".parse().unwrap()];
            plan.security_groups = vec![sg];
            plan
        };
    let plan1 = make(
        vtep1,
        vtep2,
        netns_port("a000000005", mac1, "10.50.0.11", &w1, &["peers"]),
        mac2,
        &p1,
    );
    let plan2 = make(
        vtep2,
        vtep1,
        netns_port("b000000005", mac2, "10.50.0.12", &w2, &["peers"]),
        mac1,
        &p2,
    );
    h1.converge(&plan1);
    h2.converge(&plan2);
    assert_eq!(dhcp_client(&w1), "10.50.0.11".parse::<Ipv4Addr>().unwrap());
    assert_eq!(dhcp_client(&w2), "10.50.0.12".parse::<Ipv4Addr>().unwrap());
    serve(&w1, 7000, "w1");
    serve(&w2, 7000, "w2");
    assert_eq!(greeting(&w1, "10.50.0.12", 7000), "w2 10.50.0.11");
    assert_eq!(greeting(&w2, "10.50.0.11", 7000), "w1 10.50.0.12");

    // The packets really cross the underlay as VXLAN (UDP 4789 between the VTEPs).
    let fdb = run(
        "bridge",
        &["-n", &h1.netns, "-j", "fdb", "show", "dev", "ucx5ub0000005"],
    )
    .unwrap();
    assert!(fdb.contains("192.168.77.2"), "{fdb}");
    let stats = |ns: &str| -> u64 {
        let out = run(
            "ip",
            &["-n", ns, "-j", "-s", "link", "show", "dev", "ucx5ub0000005"],
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0]["stats64"]["tx"]["packets"].as_u64().unwrap()
    };
    let before = stats(&h1.netns);
    assert!(ping(&w1, "10.50.0.12"));
    assert!(stats(&h1.netns) > before);

    // Without the tunnel (remote VTEP removed on h1) the subnet is cut in two.
    let mut cut = plan1.clone();
    cut.networks[0].remote_vteps.clear();
    cut.networks[0].remote_macs.clear();
    h1.converge(&cut);
    assert!(unreachable(&w1, "10.50.0.12", 7000));
    h1.converge(&plan1);
    assert_eq!(greeting(&w1, "10.50.0.12", 7000), "w2 10.50.0.11");
}

#[test]
fn converge_is_idempotent_and_repairs_drift() {
    let mut host = Host::new(&unique_prefix("dr"));
    let a = host.workload("a");
    let b = host.workload("b");
    let mut net = network("5ub0000006", 601, "10.60.0.0/24", Some("10.60.0.1"));
    net.ports = vec![
        netns_port("a000000006", "02:00:00:00:07:01", "10.60.0.2", &a, &["web"]),
        netns_port("b000000006", "02:00:00:00:07:02", "10.60.0.3", &b, &["web"]),
    ];
    let web = SecurityGroupPlan {
        sg_id: "web".into(),
        rules: vec![
            rule(Direction::Egress, Protocol::Any, None, Remote::Any),
            rule(
                Direction::Ingress,
                Protocol::Tcp,
                Some(7000),
                Remote::Cidr("10.60.0.0/24".into()),
            ),
        ],
        members: vec![],
    };
    let mut plan = host.plan();
    plan.networks = vec![with_dhcp(net, "10.60.0.250")];
    plan.security_groups = vec![web];
    plan.routers = vec![RouterPlan {
        router_id: "r000000006".into(),
        interfaces: vec![RouterInterface {
            subnet_id: "5ub0000006".into(),
            ip: "10.60.0.1".parse().unwrap(),
            prefix_len: 24,
            mac: "02:aa:00:00:06:01".into(),
        }],
        external: None,
        floating_ips: vec![],
    }];
    host.converge(&plan);
    dhcp_client(&a);
    dhcp_client(&b);
    serve(&b, 7000, "b");
    serve(&b, 7002, "b");
    let (mut conn, hello) = connect(&a, "10.60.0.3", 7000).expect("first connection");
    assert_eq!(hello, "b 10.60.0.2");
    assert!(unreachable(&a, "10.60.0.3", 7002));

    // Nothing changed: converge (a full re-read every time here) does nothing, and the
    // established connection carries on.
    for _ in 0..3 {
        let report = host.converge(&plan);
        assert!(report.changed.is_empty(), "{report:#?}");
        assert_eq!(report.ports_ready.len(), 2);
        assert_eq!(conn.roundtrip("still there").unwrap(), "still there");
    }
    // An agent restart (a new Dataplane over the same state directory) changes nothing
    // either: rulesets, dnsmasq and devices are recognised, not recreated.
    let state_dir = host.dp.state_dir().to_path_buf();
    host.dp = Dataplane::new(&state_dir);
    let report = host.converge(&plan);
    assert!(report.changed.is_empty(), "{report:#?}");
    assert_eq!(conn.roundtrip("after restart").unwrap(), "after restart");
    host.dp.full_verify_every = Duration::ZERO;
    // The router's interface is the gateway: it answers ARP/ICMP.
    assert!(ping(&a, "10.60.0.1"));

    // The bridge deleted by hand: traffic stops; converge rebuilds it and traffic flows.
    host.host_ip(&["link", "del", "ucb5ub0000006"]).unwrap();
    assert!(unreachable(&a, "10.60.0.3", 7000));
    let report = host.converge(&plan);
    assert!(
        report.changed.iter().any(|c| c.contains("create bridge")),
        "{report:#?}"
    );
    assert_eq!(greeting(&a, "10.60.0.3", 7000), "b 10.60.0.2");
    assert!(ping(&a, "10.60.0.1"));

    // The whole ruleset flushed: converge restores it (filtering is back, not just
    // connectivity).
    host.nft(&["flush", "ruleset"]).unwrap();
    let report = host.converge(&plan);
    assert!(
        report.changed.iter().any(|c| c.contains("nftables")),
        "{report:#?}"
    );
    assert_eq!(greeting(&a, "10.60.0.3", 7000), "b 10.60.0.2");
    assert!(unreachable(&a, "10.60.0.3", 7002));
    // One table deleted: same.
    host.nft(&["delete", "table", "bridge", "ultracloud"])
        .unwrap();
    let report = host.converge(&plan);
    assert!(
        report.changed.iter().any(|c| c.contains("nftables")),
        "{report:#?}"
    );
    assert!(unreachable(&a, "10.60.0.3", 7002));

    // A port's veth deleted and the DHCP server killed: both come back.
    host.host_ip(&["link", "del", "ucpa000000006"]).unwrap();
    let pid = std::fs::read_to_string(
        host.dp
            .state_dir()
            .join(&host.prefix)
            .join("dhcp-5ub0000006/dnsmasq.pid"),
    )
    .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid.trim().parse().unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(eventually(5, || !std::path::Path::new(&format!(
        "/proc/{}",
        pid.trim()
    ))
    .exists()
        || std::fs::read_to_string(format!(
            "/proc/{}/stat",
            pid.trim()
        ))
        .is_ok_and(|s| s.contains(") Z"))));
    let report = host.converge(&plan);
    assert!(
        report
            .changed
            .iter()
            .any(|c| c.contains("create veth ucpa000000006")),
        "{report:#?}"
    );
    assert!(
        report.changed.iter().any(|c| c.contains("start dnsmasq")),
        "{report:#?}"
    );
    assert_eq!(dhcp_client(&a), "10.60.0.2".parse::<Ipv4Addr>().unwrap());
    assert_eq!(greeting(&a, "10.60.0.3", 7000), "b 10.60.0.2");

    // The router namespace's leg deleted from inside: the next (deep) pass restores it.
    run(
        "ip",
        &[
            "-n",
            &format!("{}r-r000000006", host.prefix),
            "link",
            "del",
            "ri5ub0000006",
        ],
    )
    .unwrap();
    let report = host.converge(&plan);
    assert!(!report.changed.is_empty());
    assert!(eventually(10, || ping(&a, "10.60.0.1")));

    // And after all that, converging again is quiet.
    let report = host.converge(&plan);
    assert!(report.changed.is_empty(), "{report:#?}");
}

#[test]
fn empty_plan_removes_everything() {
    let mut host = Host::new(&unique_prefix("rm"));
    let a = host.workload("a");
    ip(&["-n", &host.netns, "link", "add", "ucext", "type", "bridge"]);
    let mut net = network("5ub0000007", 701, "10.70.0.0/24", Some("10.70.0.1"));
    net.ports = vec![
        netns_port(
            "a000000007",
            "02:00:00:00:08:01",
            "10.70.0.2",
            &a,
            &["open"],
        ),
        PortPlan {
            port_id: "vm00000007".into(),
            mac: "02:00:00:00:08:02".into(),
            ips: vec!["10.70.0.3".parse().unwrap()],
            attachment: Attachment::Tap,
            security_groups: vec!["open".into()],
            port_security: true,
            migration_target: false,
        },
    ];
    let mut plan = host.plan();
    plan.external_bridge = Some("ucext".into());
    plan.networks = vec![with_dhcp(net, "10.70.0.250")];
    plan.security_groups = vec![allow_all_sg("open")];
    plan.routers = vec![RouterPlan {
        router_id: "r000000007".into(),
        interfaces: vec![RouterInterface {
            subnet_id: "5ub0000007".into(),
            ip: "10.70.0.1".parse().unwrap(),
            prefix_len: 24,
            mac: "02:aa:00:00:07:01".into(),
        }],
        external: Some(ExternalGateway {
            ip: "203.0.113.70".parse().unwrap(),
            prefix_len: 24,
            gateway: None,
            snat: true,
        }),
        floating_ips: vec![],
    }];
    let report = host.converge(&plan);
    assert_eq!(report.ports_ready.len(), 2, "{report:#?}");
    let links = host.host_ip(&["-j", "link", "show"]).unwrap();
    for dev in [
        "ucb5ub0000007",
        "ucd5ub0000007",
        "ucg5ub0000007",
        "ucpa000000007",
        "uctvm00000007",
        "ucor000000007",
    ] {
        assert!(
            links.contains(&format!("\"{dev}\"")),
            "{dev} missing: {links}"
        );
    }
    let netns_list = run("ip", &["netns", "list"]).unwrap();
    assert!(netns_list.contains(&format!("{}d-5ub0000007", host.prefix)));
    assert!(netns_list.contains(&format!("{}r-r000000007", host.prefix)));
    let dnsmasq_conf = host
        .dp
        .state_dir()
        .join(&host.prefix)
        .join("dhcp-5ub0000007/dnsmasq.conf");
    let dnsmasq_running = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(dnsmasq_conf.to_str().unwrap()))
        })
    };
    assert!(dnsmasq_running());

    let report = host.converge(&host.plan());
    assert!(!report.changed.is_empty());
    let links = host.host_ip(&["-j", "link", "show"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&links).unwrap();
    let left: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .collect();
    assert_eq!(left, vec!["lo", "ucext"], "devices left behind");
    let netns_list = run("ip", &["netns", "list"]).unwrap();
    assert!(
        !netns_list.contains(&format!("{}d-", host.prefix)),
        "{netns_list}"
    );
    assert!(
        !netns_list.contains(&format!("{}r-", host.prefix)),
        "{netns_list}"
    );
    let tables = host.nft(&["list", "tables"]).unwrap();
    assert!(!tables.contains("ultracloud"), "{tables}");
    assert!(!dnsmasq_running());
    // The workload's end went with its veth.
    let inside = run("ip", &["-n", &a, "-j", "link", "show"]).unwrap();
    assert!(!inside.contains("\"eth0\""), "{inside}");
    // Empty again is a no-op.
    let report = host.converge(&host.plan());
    assert!(report.changed.is_empty(), "{report:#?}");

    // teardown_all does the same from any state and also drops the state directory.
    host.converge(&plan);
    assert!(dnsmasq_running());
    let netns = host.netns.clone();
    let prefix = host.prefix.clone();
    let dp = &mut host.dp;
    let report = in_netns(&netns, || dp.teardown_all(&prefix)).unwrap();
    assert!(report.errors.is_empty(), "{report:#?}");
    assert!(!dnsmasq_running());
    assert!(!host.dp.state_dir().join(&host.prefix).exists());
    let netns_list = run("ip", &["netns", "list"]).unwrap();
    assert!(
        !netns_list.contains(&format!("{}d-", host.prefix)),
        "{netns_list}"
    );
    assert!(
        !netns_list.contains(&format!("{}r-", host.prefix)),
        "{netns_list}"
    );
    let tables = host.nft(&["list", "tables"]).unwrap();
    assert!(!tables.contains("ultracloud"), "{tables}");
}

#[test]
fn bad_plan_entries_are_reported_and_the_rest_applied() {
    let mut host = Host::new(&unique_prefix("bd"));
    let a = host.workload("a");
    let mut good = network("5ub0000008", 801, "10.80.0.0/24", None);
    good.ports = vec![
        netns_port("a000000008", "02:00:00:00:09:01", "10.80.0.2", &a, &[]),
        // An address outside the subnet.
        netns_port("b000000008", "02:00:00:00:09:02", "10.81.0.2", &a, &[]),
        // A workload namespace that does not exist.
        netns_port(
            "c000000008",
            "02:00:00:00:09:03",
            "10.80.0.4",
            "no-such-netns",
            &[],
        ),
    ];
    let bad_cidr = network("5ub0000009", 802, "10.80.0.1/24", None);
    let mut plan = host.plan();
    plan.networks = vec![good, bad_cidr];
    let netns = host.netns.clone();
    let dp = &mut host.dp;
    let report = in_netns(&netns, || dp.converge(&plan)).unwrap();
    assert_eq!(
        report.ports_ready,
        vec!["a000000008".to_string()],
        "{report:#?}"
    );
    assert_eq!(report.errors.len(), 3, "{report:#?}");
    assert!(report.errors.iter().any(|e| e.contains("10.81.0.2")));
    assert!(report.errors.iter().any(|e| e.contains("no-such-netns")));
    assert!(report.errors.iter().any(|e| e.contains("bad CIDR")));
    // An invalid prefix is refused outright.
    let mut bad = host.plan();
    bad.prefix = "Bad/Prefix".into();
    let dp = &mut host.dp;
    assert!(in_netns(&netns, || dp.converge(&bad)).is_err());
}

/// Records every invocation of a tool, then runs the real one.
fn logging_wrapper(dir: &std::path::Path, tool: &str, log: &std::path::Path) -> String {
    let real = run("sh", &["-c", &format!("command -v {tool}")]).unwrap();
    let path = dir.join(tool);
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"{tool} $*\" >> {}\nexec {} \"$@\"\n",
            log.display(),
            real.trim()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn unchanged_plan_costs_a_few_reads_and_still_sees_host_drift() {
    let mut host = Host::new(&unique_prefix("lt"));
    let a = host.workload("a");
    let b = host.workload("b");
    let mut net = network("5ub000000a", 1001, "10.100.0.0/24", Some("10.100.0.1"));
    net.ports = vec![
        netns_port(
            "a00000000a",
            "02:00:00:00:0a:01",
            "10.100.0.2",
            &a,
            &["open"],
        ),
        netns_port(
            "b00000000a",
            "02:00:00:00:0a:02",
            "10.100.0.3",
            &b,
            &["open"],
        ),
    ];
    let mut plan = host.plan();
    plan.networks = vec![with_dhcp(net, "10.100.0.250")];
    plan.security_groups = vec![allow_all_sg("open")];
    plan.routers = vec![RouterPlan {
        router_id: "r00000000a".into(),
        interfaces: vec![RouterInterface {
            subnet_id: "5ub000000a".into(),
            ip: "10.100.0.1".parse().unwrap(),
            prefix_len: 24,
            mac: "02:aa:00:00:0a:01".into(),
        }],
        external: None,
        floating_ips: vec![],
    }];
    let tools = tempfile::tempdir().unwrap();
    let log = tools.path().join("calls.log");
    host.dp.tools.ip = logging_wrapper(tools.path(), "ip", &log);
    host.dp.tools.nft = logging_wrapper(tools.path(), "nft", &log);
    host.dp.tools.bridge = logging_wrapper(tools.path(), "bridge", &log);
    host.dp.full_verify_every = Duration::from_secs(3600);
    host.converge(&plan);
    static_ip(&a, "10.100.0.2/24", None);
    static_ip(&b, "10.100.0.3/24", None);
    assert!(eventually(10, || ping(&a, "10.100.0.3")));

    std::fs::write(&log, "").unwrap();
    for _ in 0..5 {
        let report = host.converge(&plan);
        assert!(report.changed.is_empty(), "{report:#?}");
        assert_eq!(report.ports_ready.len(), 2);
    }
    let calls = std::fs::read_to_string(&log).unwrap();
    // Per pass: one `ip -j -d addr show` of the host and one `nft list ruleset`.
    assert_eq!(calls.lines().count(), 10, "{calls}");
    assert_eq!(
        calls
            .lines()
            .filter(|l| l.starts_with("ip -j -d addr show"))
            .count(),
        5,
        "{calls}"
    );
    assert_eq!(
        calls
            .lines()
            .filter(|l| l.starts_with("nft list ruleset"))
            .count(),
        5,
        "{calls}"
    );

    // Host-level drift is still seen by such a pass.
    host.host_ip(&["link", "set", "ucpb00000000a", "nomaster"])
        .unwrap();
    assert!(!ping(&a, "10.100.0.3"));
    let report = host.converge(&plan);
    assert!(
        report
            .changed
            .iter()
            .any(|c| c.contains("master ucb5ub000000a")),
        "{report:#?}"
    );
    assert!(eventually(10, || ping(&a, "10.100.0.3")));
    host.nft(&["delete", "table", "ip", "ultracloud"]).unwrap();
    let report = host.converge(&plan);
    assert!(
        report.changed.iter().any(|c| c.contains("nftables")),
        "{report:#?}"
    );
}
