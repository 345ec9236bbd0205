//! chainfire as a 3-member cluster of real processes: membership through etcdctl, leader
//! failure, catch-up by snapshot, whole-cluster restart, paused members, and restarts that keep
//! data, revisions and leases.

mod common;

use std::time::{Duration, Instant};

use common::*;
use etcd_client::{GetOptions, PutOptions};
use uc_testkit::{Cluster, NodeInfo, Ready};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

async fn admin_status(cluster: &Cluster, node: &NodeInfo) -> serde_json::Value {
    uc_testkit::http_client()
        .get(format!("{}/v1/status", node.url("admin")))
        .bearer_auth(cluster.admin_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Retries an etcd-client call while the cluster elects a leader.
macro_rules! retry {
    ($e:expr) => {{
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match $e {
                Ok(v) => break v,
                Err(err) if Instant::now() < deadline => {
                    let _ = err;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => panic!("still failing after retries: {err}"),
            }
        }
    }};
}

#[tokio::test]
async fn three_members_with_etcdctl_member_add_and_remove() {
    // Four nodes prepared; the first three found the cluster, the fourth joins later.
    let mut cluster = Cluster::builder(4)
        .ports(&["client", "peer", "admin", "node"])
        .config(|node, all| {
            if node.index < 3 {
                node_config(node, &all[..3], "new", "")
            } else {
                node_config(node, &all[..0], "existing", "")
            }
        })
        .args(|node| {
            vec![
                "serve".into(),
                "chainfire".into(),
                "--config".into(),
                node.config_path.display().to_string(),
            ]
        })
        .ready(Ready::http("admin", "/readyz"))
        .prepare()
        .unwrap();
    let infos: Vec<NodeInfo> = cluster.nodes().cloned().collect();
    start_founders(&mut cluster, 3).await;
    let founders: Vec<&NodeInfo> = infos[..3].iter().collect();

    assert_eq!(
        ok(etcdctl(&cluster, &founders, &["put", "shared", "v1"])),
        "OK\n"
    );
    for n in &founders {
        assert_eq!(
            ok(etcdctl(&cluster, &[n], &["get", "shared"])),
            "shared\nv1\n",
            "via {}",
            n.name
        );
    }
    let members = json(&ok(etcdctl(
        &cluster,
        &founders,
        &["member", "list", "-w", "json"],
    )));
    let names: Vec<&str> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "{members}");
    for n in &founders {
        assert!(names.contains(&n.name.as_str()), "{members}");
    }
    let status = json(&ok(etcdctl(
        &cluster,
        &founders,
        &["endpoint", "status", "-w", "json"],
    )));
    let leaders: Vec<u64> = status
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Status"]["leader"].as_u64().unwrap())
        .collect();
    assert!(
        leaders.iter().all(|l| *l == leaders[0] && *l != 0),
        "one agreed leader: {status}"
    );

    // etcd's membership flow: add, then start the new member with state "existing".
    let newcomer = &infos[3];
    let added = ok(etcdctl(
        &cluster,
        &founders,
        &[
            "member",
            "add",
            &newcomer.name,
            &format!("--peer-urls={}", peer_url(newcomer)),
        ],
    ));
    assert!(added.contains("added to cluster"), "{added}");
    cluster.start_node(3).await.unwrap();
    let all: Vec<&NodeInfo> = infos.iter().collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let members = json(&ok(etcdctl(
            &cluster,
            &founders,
            &["member", "list", "-w", "json"],
        )));
        let list = members["members"].as_array().unwrap().clone();
        let joined = list.iter().find(|m| m["name"] == newcomer.name.as_str());
        if list.len() == 4 && joined.is_some_and(|m| m["isLearner"].as_bool() != Some(true)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "newcomer never became a voter: {members}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        ok(etcdctl(&cluster, &[newcomer], &["get", "shared"])),
        "shared\nv1\n"
    );
    assert_eq!(
        ok(etcdctl(&cluster, &all, &["put", "after-join", "v2"])),
        "OK\n"
    );

    // Remove it again.
    let id = format!("{:x}", chainfire::member_id(&peer_url(newcomer)));
    let removed = ok(etcdctl(&cluster, &founders, &["member", "remove", &id]));
    assert!(removed.contains("removed from cluster"), "{removed}");
    let members = json(&ok(etcdctl(
        &cluster,
        &founders,
        &["member", "list", "-w", "json"],
    )));
    assert_eq!(members["members"].as_array().unwrap().len(), 3, "{members}");
    assert_eq!(
        ok(etcdctl(&cluster, &founders, &["put", "after-remove", "v3"])),
        "OK\n"
    );

    // Bad membership requests are clean errors.
    let e = err(etcdctl(
        &cluster,
        &founders,
        &["member", "remove", "abcdef"],
    ));
    assert!(e.contains("member not found"), "{e}");
    let e = err(etcdctl(
        &cluster,
        &founders,
        &[
            "member",
            "add",
            "dup",
            &format!("--peer-urls={}", peer_url(&infos[0])),
        ],
    ));
    assert!(e.contains("Peer URLs already exists"), "{e}");
}

/// Spawns founders 0..n together (a lone founder has no quorum, so none is ready alone),
/// then waits for each.
async fn start_founders(cluster: &mut Cluster, n: usize) {
    for i in 0..n {
        cluster.spawn_node(i).unwrap();
    }
    for i in 0..n {
        cluster.wait_ready(i).await.unwrap();
    }
}

#[tokio::test]
async fn leader_killed_new_leader_writes_continue_and_restarted_member_catches_up_by_snapshot() {
    let extra = "snapshot_every_entries = 100\nentries_kept_after_snapshot = 10\n";
    let mut cluster = chainfire_cluster(3, extra).start().await.unwrap();
    let infos: Vec<NodeInfo> = cluster.nodes().cloned().collect();
    let all: Vec<&NodeInfo> = infos.iter().collect();
    let mut kv = client(&cluster, &all).await;
    retry!(kv.put("before", "1", None).await);

    let leader = wait_for_leader(&cluster).await;
    cluster.node_mut(leader).kill();
    let survivors: Vec<&NodeInfo> = infos.iter().filter(|n| n.index != leader).collect();
    let mut kv = client(&cluster, &survivors).await;
    // Writes continue once the survivors elect a leader.
    retry!(kv.put("during", "1", None).await);
    let new_leader = wait_for_leader(&cluster).await;
    assert_ne!(new_leader, leader);
    for i in 0..300 {
        retry!(kv.put(format!("k{i:03}"), format!("v{i}"), None).await);
    }
    // The log the killed member would need is gone: only a snapshot can catch it up.
    let survivor_status = admin_status(&cluster, survivors[0]).await;
    assert!(
        survivor_status["raft"]["purged_index"].as_u64().unwrap() > 50,
        "{survivor_status}"
    );

    cluster.restart(leader).await.unwrap();
    let back = &infos[leader];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut local = client(&cluster, &[back]).await;
        let got = local
            .get(
                "k",
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_count_only()
                        .with_serializable(),
                ),
            )
            .await;
        if got.as_ref().is_ok_and(|r| r.count() == 300) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restarted member did not catch up: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = admin_status(&cluster, back).await;
    assert!(
        status["raft"]["snapshot_index"].as_u64().unwrap() >= 100,
        "installed a snapshot: {status}"
    );

    // All members agree byte for byte (etcd's HashKV), at the same revision.
    let revision = retry!(kv.get("before", None).await)
        .header()
        .unwrap()
        .revision();
    let mut hashes = Vec::new();
    for n in &all {
        let c = client(&cluster, &[n]).await;
        hashes.push(retry!(c.maintenance_client().hash_kv(revision).await).hash());
    }
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");

    // Kill every member at once, restart: nothing acknowledged is lost.
    for i in 0..3 {
        cluster.node_mut(i).kill();
    }
    for i in 0..2 {
        cluster.spawn_node(i).unwrap();
    }
    cluster.restart(2).await.unwrap();
    for i in 0..2 {
        cluster.wait_ready(i).await.unwrap();
    }
    let mut kv = client(&cluster, &all).await;
    let all_keys = retry!(
        kv.get(
            "",
            Some(GetOptions::new().with_from_key().with_count_only())
        )
        .await
    );
    assert_eq!(all_keys.count(), 302, "before + during + 300");
    assert_eq!(
        retry!(kv.get("k299", None).await).kvs()[0]
            .value_str()
            .unwrap(),
        "v299"
    );
}

#[tokio::test]
async fn a_paused_member_does_not_stop_the_cluster_and_catches_up_when_resumed() {
    let mut cluster = chainfire_cluster(3, "").start().await.unwrap();
    let infos: Vec<NodeInfo> = cluster.nodes().cloned().collect();
    let leader = wait_for_leader(&cluster).await;
    cluster.node_mut(leader).pause();
    let others: Vec<&NodeInfo> = infos.iter().filter(|n| n.index != leader).collect();
    let mut kv = client(&cluster, &others).await;
    for i in 0..20 {
        retry!(kv.put(format!("p{i}"), "x", None).await);
    }
    cluster.node_mut(leader).resume();
    let paused = &infos[leader];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut c = client(&cluster, &[paused]).await;
        // A linearizable read through the formerly paused member sees every write.
        if let Ok(r) = c
            .get("p", Some(GetOptions::new().with_prefix().with_count_only()))
            .await
            && r.count() == 20
        {
            break;
        }
        assert!(Instant::now() < deadline, "resumed member never caught up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn restart_keeps_data_revisions_and_leases() {
    let mut cluster = chainfire_cluster(1, "").start().await.unwrap();
    let n = cluster.node(0).info.clone();
    let mut kv = client(&cluster, &[&n]).await;
    kv.put("a", "1", None).await.unwrap();
    kv.put("a", "2", None).await.unwrap();
    let lease = kv.lease_grant(600, None).await.unwrap().id();
    kv.put("leased", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    let before = kv.get("a", None).await.unwrap();
    let before_kv = before.kvs()[0].clone();
    let before_rev = kv
        .get("leased", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();

    cluster.node_mut(0).kill(); // no chance to flush anything more
    cluster.restart(0).await.unwrap();
    let mut kv = client(&cluster, &[&n]).await;
    let after = retry!(kv.get("a", None).await);
    let a = &after.kvs()[0];
    assert_eq!(
        (
            a.value(),
            a.create_revision(),
            a.mod_revision(),
            a.version()
        ),
        (
            before_kv.value(),
            before_kv.create_revision(),
            before_kv.mod_revision(),
            before_kv.version()
        )
    );
    assert_eq!(after.header().unwrap().revision(), before_rev);
    let ttl = retry!(
        kv.lease_time_to_live(
            lease,
            Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys())
        )
        .await
    );
    assert_eq!(ttl.granted_ttl(), 600);
    assert!(ttl.ttl() > 0 && ttl.ttl() <= 600, "{}", ttl.ttl());
    assert_eq!(ttl.keys(), [b"leased".to_vec()]);
    // Revisions continue from where they were.
    let next = kv.put("b", "1", None).await.unwrap();
    assert_eq!(next.header().unwrap().revision(), before_rev + 1);
}
