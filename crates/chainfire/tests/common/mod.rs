//! Shared helpers for chainfire's process-level tests: clusters of real
//! `ultracloud serve chainfire` processes, and the real `etcdctl`.

#![allow(dead_code)]

use std::process::{Command, Output};
use std::time::Duration;

use uc_testkit::{Cluster, ClusterBuilder, NodeInfo, Ready};

/// Raft timing for tests: fast elections on loopback.
pub const RAFT_TUNING: &str = "[chainfire.raft]\nheartbeat_interval_ms = 50\nelection_timeout_min_ms = 300\nelection_timeout_max_ms = 600\nrequest_timeout_ms = 5000\n";

/// A cluster of `n` chainfire members founded together; `extra` is appended to every config.
pub fn chainfire_cluster(n: usize, extra: &'static str) -> ClusterBuilder {
    Cluster::builder(n)
        .ports(&["client", "peer", "admin", "node"])
        .config(move |node, all| node_config(node, all, "new", extra))
        .args(|node| {
            vec![
                "serve".into(),
                "chainfire".into(),
                "--config".into(),
                node.config_path.display().to_string(),
            ]
        })
        .ready(Ready::http("admin", "/readyz"))
}

pub fn peer_url(node: &NodeInfo) -> String {
    format!("http://{}:{}", node.ip, node.port("peer"))
}

/// A node config for chainfire founded by `all` (or joining, with state "existing").
pub fn node_config(node: &NodeInfo, all: &[NodeInfo], state: &str, extra: &str) -> String {
    let initial: Vec<String> = all
        .iter()
        .map(|n| format!("\"{}={}\"", n.name, peer_url(n)))
        .collect();
    format!(
        "[node]\nname = \"{name}\"\nbind = \"{ip}\"\nport = {node_port}\ndata_dir = \"{data}\"\n\
         [auth]\nadmin_token_file = \"{token}\"\n[http]\nshutdown_grace_secs = 1\n\
         [chainfire]\nclient_port = {client}\npeer_port = {peer}\nadmin_port = {admin}\n\
         initial_cluster = [{initial}]\ninitial_cluster_state = \"{state}\"\n{RAFT_TUNING}{extra}",
        name = node.name,
        ip = node.ip,
        node_port = node.port("node"),
        data = node.data_dir.display(),
        token = node.admin_token_file.display(),
        client = node.port("client"),
        peer = node.port("peer"),
        admin = node.port("admin"),
        initial = initial.join(", "),
    )
}

pub fn client_endpoint(node: &NodeInfo) -> String {
    format!("{}:{}", node.ip, node.port("client"))
}

/// Runs the system's `etcdctl` (v3 API) against `endpoints` as root with the cluster token.
pub fn etcdctl(cluster: &Cluster, endpoints: &[&NodeInfo], args: &[&str]) -> Output {
    etcdctl_with_stdin(cluster, endpoints, args, None)
}

pub fn etcdctl_with_stdin(
    cluster: &Cluster,
    endpoints: &[&NodeInfo],
    args: &[&str],
    stdin: Option<&str>,
) -> Output {
    use std::io::Write;
    let endpoints: Vec<String> = endpoints.iter().map(|n| client_endpoint(n)).collect();
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .arg(format!("--user=root:{}", cluster.admin_token()))
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .expect("etcdctl is installed (scripts/test.sh installs etcd-client)");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

/// stdout of a successful etcdctl call (panics with its stderr otherwise).
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "etcdctl failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// stderr of a failing etcdctl call (panics if it succeeded).
pub fn err(out: Output) -> String {
    assert!(
        !out.status.success(),
        "etcdctl unexpectedly succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

/// An etcd-client connection to the given members, authenticated as root.
pub async fn client(cluster: &Cluster, nodes: &[&NodeInfo]) -> etcd_client::Client {
    let endpoints: Vec<String> = nodes
        .iter()
        .map(|n| format!("http://{}", client_endpoint(n)))
        .collect();
    etcd_client::Client::connect(
        endpoints,
        Some(
            etcd_client::ConnectOptions::new()
                .with_user("root", cluster.admin_token())
                .with_timeout(Duration::from_secs(10)),
        ),
    )
    .await
    .expect("connect")
}

/// The member that currently leads, by asking each member's admin status.
pub async fn leader_index(cluster: &Cluster) -> Option<usize> {
    let http = uc_testkit::http_client();
    for (i, node) in cluster.nodes().enumerate() {
        let Ok(r) = http
            .get(format!("{}/v1/status", node.url("admin")))
            .bearer_auth(cluster.admin_token())
            .timeout(Duration::from_secs(2))
            .send()
            .await
        else {
            continue;
        };
        let Ok(status) = r.json::<serde_json::Value>().await else {
            continue;
        };
        if status["raft"]["state"] == "leader" {
            return Some(i);
        }
    }
    None
}

pub async fn wait_for_leader(cluster: &Cluster) -> usize {
    for _ in 0..300 {
        if let Some(i) = leader_index(cluster).await {
            return i;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no leader elected");
}
