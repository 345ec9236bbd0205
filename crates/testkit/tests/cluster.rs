//! uc-testkit's own tests, on real `ultracloud serve node` processes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use uc_testkit::{Cluster, ClusterBuilder, Ready, http_status, pid_alive};

fn node_cluster(n: usize) -> ClusterBuilder {
    Cluster::builder(n)
        .ports(&["http"])
        .config(|node, _all| {
            format!(
                "[node]\nname = \"{}\"\nbind = \"{}\"\nport = {}\ndata_dir = \"{}\"\n\
                 [auth]\nadmin_token_file = \"{}\"\n[http]\nshutdown_grace_secs = 1\n",
                node.name,
                node.ip,
                node.port("http"),
                node.data_dir.display(),
                node.admin_token_file.display()
            )
        })
        .args(|node| {
            vec![
                "serve".into(),
                "node".into(),
                "--config".into(),
                node.config_path.display().to_string(),
            ]
        })
        .ready(Ready::http("http", "/readyz"))
}

#[tokio::test]
async fn three_nodes_kill_restart_pause_resume() {
    let mut cluster = node_cluster(3).start().await.unwrap();
    let infos: Vec<_> = cluster.nodes().cloned().collect();
    let ips: std::collections::HashSet<_> = infos.iter().map(|n| n.ip).collect();
    assert_eq!(ips.len(), 3, "distinct 127.0.0.x addresses");
    for info in &infos {
        assert_eq!(http_status(info.addr("http"), "/healthz").await, Some(200));
    }

    // The admin token the testkit generated opens the API.
    let client = uc_testkit::http_client();
    let r = client
        .get(format!("{}/v1/node", infos[0].url("http")))
        .bearer_auth(cluster.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["name"], "node-0");

    // kill -9: gone; the others keep serving.
    let old_pid = cluster.node(1).pid().unwrap();
    cluster.node_mut(1).kill();
    assert!(!pid_alive(old_pid));
    assert_eq!(http_status(infos[1].addr("http"), "/healthz").await, None);
    assert_eq!(
        http_status(infos[0].addr("http"), "/healthz").await,
        Some(200)
    );

    // Restart with the same data dir and ports.
    cluster.restart(1).await.unwrap();
    assert_ne!(cluster.node(1).pid().unwrap(), old_pid);
    assert_eq!(
        http_status(infos[1].addr("http"), "/healthz").await,
        Some(200)
    );
    let log = cluster.node(1).log();
    assert!(log.contains("start #2 of node-1"), "{log}");
    assert_eq!(log.matches("listening").count(), 2, "{log}");

    // SIGSTOP: the process is there but does not answer; SIGCONT: it answers again.
    cluster.node_mut(2).pause();
    assert!(cluster.node_mut(2).is_running());
    assert_eq!(http_status(infos[2].addr("http"), "/healthz").await, None);
    cluster.node_mut(2).resume();
    assert_eq!(
        http_status(infos[2].addr("http"), "/healthz").await,
        Some(200)
    );

    // SIGTERM: graceful exit 0.
    let status = cluster
        .node_mut(0)
        .terminate(Duration::from_secs(10))
        .expect("exits by itself");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn a_node_that_cannot_start_fails_with_its_log() {
    let err = node_cluster(1)
        .args(|node| {
            vec![
                "serve".into(),
                "node".into(),
                "--config".into(),
                node.dir.join("missing.toml").display().to_string(),
            ]
        })
        .start()
        .await
        .err()
        .expect("start fails");
    let text = err.to_string();
    assert!(text.contains("exited before becoming ready"), "{text}");
    assert!(
        text.contains("missing.toml"),
        "the node's own error is shown: {text}"
    );
}

#[test]
fn a_panicking_test_leaves_no_processes() {
    let pids: Arc<Mutex<Vec<u32>>> = Arc::default();
    let seen = pids.clone();
    let outcome = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut cluster = node_cluster(3)
                .keep_on_failure(false)
                .start()
                .await
                .unwrap();
            cluster.node_mut(2).pause(); // even a stopped process is cleaned up
            *seen.lock().unwrap() = cluster.running_pids();
            panic!("deliberate failure inside a test");
        })
    })
    .join();
    assert!(outcome.is_err(), "the inner test panicked");
    let pids = pids.lock().unwrap().clone();
    assert_eq!(pids.len(), 3);
    for pid in pids {
        assert!(!pid_alive(pid), "pid {pid} outlived its test");
    }
}

/// Runs only as a child of `killing_the_test_process_kills_its_nodes`.
#[tokio::test]
async fn helper_cluster_that_waits_to_be_killed() {
    if std::env::var_os("TESTKIT_HELPER").is_none() {
        return;
    }
    let mut cluster = node_cluster(2).start().await.unwrap();
    let pids = cluster.running_pids();
    println!(
        "PIDS {}",
        pids.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    tokio::time::sleep(Duration::from_secs(120)).await;
}

#[test]
fn killing_the_test_process_kills_its_nodes() {
    use std::io::{BufRead, BufReader};
    let mut helper = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "helper_cluster_that_waits_to_be_killed",
            "--exact",
            "--nocapture",
        ])
        .env("TESTKIT_HELPER", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = helper.stdout.take().unwrap();
    let pids: Vec<u32> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| {
            line.strip_prefix("PIDS ")
                .map(|p| p.split(',').map(|x| x.parse().unwrap()).collect())
        })
        .expect("helper printed its node pids");
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|&p| pid_alive(p)));

    helper.kill().unwrap(); // SIGKILL: no Drop runs in the helper
    helper.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|&p| pid_alive(p)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in pids {
        assert!(
            !pid_alive(pid),
            "pid {pid} outlived its killed test process"
        );
    }
}
