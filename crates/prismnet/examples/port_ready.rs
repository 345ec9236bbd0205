//! Port-ready latency, for bench/prismnet/run.sh: the time from a port create (API call) to
//! the first packet forwarded, i.e. a TCP connection from the new port's workload namespace
//! to a probe port of the same subnet succeeding. The workload sets the port's IPAM address
//! on eth0 as soon as the agent has created it (no DHCP client in the measured path).
//!
//!     port_ready prismnet --api URL --token-file F --host H --prefix P [--count N]
//!     port_ready floor --prefix P [--count N]
//!
//! `floor` does the same with plain `ip` commands from this process (a veth into the
//! workload namespace, enslaved to a bridge): the kernel's own cost of the operations, with
//! no control plane, store, long poll or nftables in the path. Prints one JSON object.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use prismnet::api::{Binding, CreatePort, CreateSubnet, CreateVpc};
use prismnet::client::PrismnetClient;
use serde_json::json;

const PROBE_PORT: u16 = 7777;

fn fail(msg: &str) -> ! {
    eprintln!("port_ready: {msg}");
    std::process::exit(1);
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn enter(ns: &str) {
    let fd = File::open(format!("/run/netns/{ns}")).unwrap_or_else(|e| fail(&format!("{ns}: {e}")));
    setns(&fd, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| fail(&format!("setns {ns}: {e}")));
}

fn new_netns(ns: &str) {
    let _ = run(&["ip", "netns", "del", ns]);
    run(&["ip", "netns", "add", ns]).unwrap_or_else(|e| fail(&e));
    run(&["ip", "-n", ns, "link", "set", "lo", "up"]).unwrap_or_else(|e| fail(&e));
}

/// A listener in the probe namespace that accepts forever.
fn probe_listener(ns: &str) {
    let ns = ns.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        enter(&ns);
        let l = TcpListener::bind(("0.0.0.0", PROBE_PORT))
            .unwrap_or_else(|e| fail(&format!("bind: {e}")));
        tx.send(()).ok();
        for c in l.incoming() {
            drop(c);
        }
    });
    rx.recv().ok();
}

/// (On a thread inside the namespace.) Puts `addr` on eth0 as soon as it exists and brings
/// it up. eth0's ARP retransmit time becomes 10 ms instead of the kernel's 1 s, so an ARP sent
/// before the port is wired into its bridge does not quantize the measurement to seconds.
fn configure_eth0(ns: &str, addr: &str, give_up: Duration) -> Result<(), String> {
    let start = Instant::now();
    while run(&["ip", "addr", "add", addr, "dev", "eth0"]).is_err() {
        if start.elapsed() > give_up {
            return Err(format!("{ns}: eth0 never appeared"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    run(&["sysctl", "-qw", "net.ipv4.neigh.eth0.retrans_time_ms=10"])?;
    run(&["ip", "link", "set", "eth0", "up"])
}

fn set_addr(ns: &str, addr: &str, give_up: Duration) -> Result<(), String> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns);
            configure_eth0(ns, addr, give_up)
        })
        .join()
        .unwrap_or_else(|_| Err("thread panicked".into()))
    })
}

/// In the workload namespace: configure eth0, then connect to the probe until it works.
/// Returns when the first connection succeeded.
fn wait_ready(ns: &str, addr: &str, probe: SocketAddr, give_up: Duration) -> Result<(), String> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns);
            let start = Instant::now();
            configure_eth0(ns, addr, give_up)?;
            loop {
                if TcpStream::connect_timeout(&probe, Duration::from_millis(20)).is_ok() {
                    return Ok(());
                }
                if start.elapsed() > give_up {
                    return Err(format!("{ns}: no connection to the probe"));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
        .join()
        .unwrap_or_else(|_| Err("thread panicked".into()))
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn summary(mut ms: Vec<f64>) -> serde_json::Value {
    ms.sort_by(|a, b| a.total_cmp(b));
    json!({
        "n": ms.len(),
        "p50_ms": percentile(&ms, 0.50),
        "p90_ms": percentile(&ms, 0.90),
        "p99_ms": percentile(&ms, 0.99),
        "max_ms": ms.last().copied().unwrap_or(f64::NAN),
    })
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().cloned().unwrap_or_default();
    let prefix = arg(&args, "--prefix").unwrap_or_else(|| fail("--prefix is required"));
    let count: usize = arg(&args, "--count")
        .and_then(|c| c.parse().ok())
        .unwrap_or(100);
    let give_up = Duration::from_secs(20);
    match mode.as_str() {
        "prismnet" => {
            let api = arg(&args, "--api").unwrap_or_else(|| fail("--api is required"));
            let token_file = arg(&args, "--token-file").unwrap_or_else(|| fail("--token-file"));
            let host = arg(&args, "--host").unwrap_or_else(|| fail("--host is required"));
            let token = uc_runtime::secret::read_secret_file(std::path::Path::new(&token_file))
                .unwrap_or_else(|e| fail(&e.to_string()));
            let client = PrismnetClient::new(
                &api,
                uc_runtime::client::ClientOptions {
                    token: Some(token),
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| fail(&e.to_string()));
            let vpc = client
                .create_vpc(
                    &CreateVpc {
                        name: "bench".into(),
                        cidr: "10.97.0.0/16".into(),
                    },
                    None,
                )
                .await
                .unwrap_or_else(|e| fail(&e.to_string()));
            let subnet = client
                .create_subnet(
                    &CreateSubnet {
                        vpc_id: vpc.id.clone(),
                        name: "bench".into(),
                        cidr: "10.97.0.0/22".into(),
                        gateway: None,
                        dhcp: Some(true),
                        dns_servers: vec![],
                    },
                    None,
                )
                .await
                .unwrap_or_else(|e| fail(&e.to_string()));
            let port = |ns: &str| CreatePort {
                subnet_id: subnet.id.clone(),
                name: String::new(),
                mac: None,
                ips: None,
                security_groups: None,
                port_security: None,
                device_owner: None,
                device_id: None,
                binding: Some(Binding {
                    host: host.clone(),
                    attachment: format!("netns:{ns}"),
                }),
            };
            let probe_ns = format!("{prefix}-probe");
            new_netns(&probe_ns);
            let probe_port = client
                .create_port(&port(&probe_ns), None)
                .await
                .unwrap_or_else(|e| fail(&e.to_string()));
            let probe_ip = probe_port.ips[0].clone();
            set_addr(
                &probe_ns,
                &format!("{probe_ip}/22"),
                Duration::from_secs(60),
            )
            .unwrap_or_else(|e| fail(&format!("probe: {e}")));
            probe_listener(&probe_ns);
            let probe: SocketAddr = format!("{probe_ip}:{PROBE_PORT}").parse().unwrap();
            let mut created = vec![probe_port.id.clone()];
            let mut namespaces = vec![probe_ns.clone()];
            // The probe itself must be reachable from somewhere before anything is timed.
            let warm_ns = format!("{prefix}-warm");
            new_netns(&warm_ns);
            namespaces.push(warm_ns.clone());
            let warm = client
                .create_port(&port(&warm_ns), None)
                .await
                .unwrap_or_else(|e| fail(&e.to_string()));
            created.push(warm.id.clone());
            wait_ready(
                &warm_ns,
                &format!("{}/22", warm.ips[0]),
                probe,
                Duration::from_secs(60),
            )
            .unwrap_or_else(|e| fail(&format!("warm-up: {e}")));
            let mut ready = Vec::new();
            let mut api_ms = Vec::new();
            let mut active_ms = Vec::new();
            for i in 0..count {
                let ns = format!("{prefix}-w{i}");
                new_netns(&ns);
                namespaces.push(ns.clone());
                let t0 = Instant::now();
                let p = client
                    .create_port(&port(&ns), None)
                    .await
                    .unwrap_or_else(|e| fail(&e.to_string()));
                api_ms.push(t0.elapsed().as_secs_f64() * 1e3);
                created.push(p.id.clone());
                let addr = format!("{}/22", p.ips[0]);
                let ns2 = ns.clone();
                // When the API shows the port active (the agent's report), watched alongside.
                let active = {
                    let client = client.clone();
                    let id = p.id.clone();
                    tokio::spawn(async move {
                        loop {
                            match client.get_port(&id).await {
                                Ok(got) if got.status == "active" => return Some(t0.elapsed()),
                                _ if t0.elapsed() > give_up => return None,
                                _ => tokio::time::sleep(Duration::from_millis(2)).await,
                            }
                        }
                    })
                };
                tokio::task::spawn_blocking(move || wait_ready(&ns2, &addr, probe, give_up))
                    .await
                    .unwrap()
                    .unwrap_or_else(|e| fail(&e));
                ready.push(t0.elapsed().as_secs_f64() * 1e3);
                let a = active
                    .await
                    .unwrap()
                    .unwrap_or_else(|| fail("the port never became active in the API"));
                active_ms.push(a.as_secs_f64() * 1e3);
            }
            println!(
                "{}",
                json!({"mode": "prismnet", "ready": summary(ready), "api_create": summary(api_ms), "api_active": summary(active_ms)})
            );
            for id in created {
                let _ = client.delete(&format!("/v1/ports/{id}")).await;
            }
            let _ = client.delete(&format!("/v1/subnets/{}", subnet.id)).await;
            let _ = client.delete(&format!("/v1/vpcs/{}", vpc.id)).await;
            for ns in namespaces {
                let _ = run(&["ip", "netns", "del", &ns]);
            }
        }
        "floor" => {
            let host = format!("{prefix}-fhost");
            new_netns(&host);
            let _ = run(&["ip", "-n", &host, "link", "add", "br0", "type", "bridge"]);
            run(&["ip", "-n", &host, "link", "set", "br0", "up"]).unwrap_or_else(|e| fail(&e));
            let mut namespaces = vec![host.clone()];
            let attach = |ns: &str, i: usize| -> Result<(), String> {
                let dev = format!("fv{i}");
                run(&[
                    "ip", "-n", &host, "link", "add", &dev, "type", "veth", "peer", "name", "eth0",
                    "netns", ns,
                ])?;
                run(&[
                    "ip", "-n", &host, "link", "set", &dev, "master", "br0", "up",
                ])
            };
            let probe_ns = format!("{prefix}-fprobe");
            new_netns(&probe_ns);
            namespaces.push(probe_ns.clone());
            attach(&probe_ns, 100_000).unwrap_or_else(|e| fail(&e));
            run(&[
                "ip",
                "-n",
                &probe_ns,
                "addr",
                "add",
                "10.96.0.1/22",
                "dev",
                "eth0",
            ])
            .unwrap_or_else(|e| fail(&e));
            run(&["ip", "-n", &probe_ns, "link", "set", "eth0", "up"]).unwrap_or_else(|e| fail(&e));
            probe_listener(&probe_ns);
            let probe: SocketAddr = format!("10.96.0.1:{PROBE_PORT}").parse().unwrap();
            let mut ready = Vec::new();
            for i in 0..count {
                let ns = format!("{prefix}-f{i}");
                new_netns(&ns);
                namespaces.push(ns.clone());
                let t0 = Instant::now();
                attach(&ns, i).unwrap_or_else(|e| fail(&e));
                let addr = format!("10.96.{}.{}/22", 1 + i / 250, 2 + i % 250);
                wait_ready(&ns, &addr, probe, give_up).unwrap_or_else(|e| fail(&e));
                ready.push(t0.elapsed().as_secs_f64() * 1e3);
            }
            println!("{}", json!({"mode": "floor", "ready": summary(ready)}));
            for ns in namespaces {
                let _ = run(&["ip", "netns", "del", &ns]);
            }
        }
        _ => fail(
            "usage: port_ready prismnet|floor --prefix P [--count N] [--api URL --token-file F --host H]",
        ),
    }
}
