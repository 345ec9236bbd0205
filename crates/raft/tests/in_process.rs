//! uc-raft with a tiny key-value app: three members in one process, talking over real HTTP.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uc_raft::{App, PeerNode, RaftNode, RaftNodeConfig, RaftTuning, WriteError};
use uc_runtime::auth::StaticTokenAuthenticator;
use uc_runtime::http::{HttpConfig, HttpServer};
use uc_runtime::{Secret, Shutdown};

const TOKEN: &str = "peer-token-0123456789abcdef0123456789abcdef";

#[derive(Default)]
struct Kv {
    map: Mutex<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Set(String, String);

impl App for Kv {
    type Request = Set;
    type Response = Option<String>;

    fn apply(&self, _index: u64, Set(k, v): &Set) -> Option<String> {
        self.map.lock().unwrap().insert(k.clone(), v.clone())
    }

    fn snapshot(&self) -> Vec<u8> {
        postcard::to_stdvec(&*self.map.lock().unwrap()).unwrap()
    }

    fn restore(&self, data: &[u8]) -> Result<(), String> {
        *self.map.lock().unwrap() = postcard::from_bytes(data).map_err(|e| e.to_string())?;
        Ok(())
    }
}

impl Kv {
    fn get(&self, k: &str) -> Option<String> {
        self.map.lock().unwrap().get(k).cloned()
    }
}

struct Member {
    id: u64,
    node: RaftNode<Kv>,
    app: Arc<Kv>,
    url: String,
    shutdown: Shutdown,
    server: tokio::task::JoinHandle<()>,
}

fn tuning() -> RaftTuning {
    RaftTuning {
        heartbeat_interval_ms: 50,
        election_timeout_min_ms: 200,
        election_timeout_max_ms: 400,
        snapshot_every_entries: 20,
        entries_kept_after_snapshot: 0,
        request_timeout_ms: 5_000,
        ..Default::default()
    }
}

/// Starts a member; `port` 0 picks a free one (a restart passes the old port).
async fn start_member(id: u64, root: &std::path::Path, port: u16) -> Member {
    let app = Arc::new(Kv::default());
    let node = RaftNode::start(
        RaftNodeConfig {
            id,
            group: "test".into(),
            dir: root.join(format!("n{id}")),
            tuning: tuning(),
            peer_token: Secret::new(TOKEN.into()),
            peer_ca_file: None,
        },
        app.clone(),
    )
    .await
    .unwrap();
    let auth = Arc::new(StaticTokenAuthenticator::admin(Secret::new(TOKEN.into())));
    let bound = HttpServer::new("raft-test", HttpConfig::default(), auth)
        .api(node.peer_routes())
        .bind(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .unwrap();
    let url = format!("http://{}", bound.local_addr());
    let shutdown = Shutdown::new();
    let server = tokio::spawn(bound.serve(shutdown.clone()));
    Member {
        id,
        node,
        app,
        url,
        shutdown,
        server,
    }
}

async fn stop(m: Member) -> u16 {
    m.node.shutdown().await;
    m.shutdown.trigger();
    let _ = m.server.await;
    m.url.rsplit(':').next().unwrap().parse().unwrap()
}

fn peer(m: &Member) -> PeerNode {
    PeerNode {
        name: format!("n{}", m.id),
        peer_url: m.url.clone(),
        client_urls: vec![],
        promote_when_caught_up: false,
    }
}

async fn wait_leader(members: &[&Member]) -> u64 {
    for _ in 0..200 {
        if let Some(m) = members.iter().find(|m| m.node.is_leader()) {
            return m.id;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no leader elected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicate_forward_failover_and_snapshot_catch_up() {
    let root = tempfile::tempdir().unwrap();
    let mut members = Vec::new();
    for id in 1..=3 {
        members.push(start_member(id, root.path(), 0).await);
    }
    let founders: BTreeMap<u64, PeerNode> = members.iter().map(|m| (m.id, peer(m))).collect();
    for m in &members {
        m.node.initialize(founders.clone()).await.unwrap();
    }
    let leader = wait_leader(&members.iter().collect::<Vec<_>>()).await;

    // A write through a follower is forwarded; a read barrier on another follower sees it.
    let followers: Vec<&Member> = members.iter().filter(|m| m.id != leader).collect();
    assert_eq!(
        followers[0]
            .node
            .write(Set("a".into(), "1".into()))
            .await
            .unwrap(),
        None
    );
    followers[1].node.read_barrier().await.unwrap();
    assert_eq!(followers[1].app.get("a").as_deref(), Some("1"));
    assert_eq!(members[0].node.membership().members.len(), 3);

    // Stop the leader: the others elect a new one and keep accepting writes.
    let leader_index = members.iter().position(|m| m.id == leader).unwrap();
    let old = members.remove(leader_index);
    let old_id = old.id;
    let old_port = stop(old).await;
    let new_leader = wait_leader(&members.iter().collect::<Vec<_>>()).await;
    assert_ne!(new_leader, old_id);
    // Enough writes to build a snapshot and purge the log the old leader would need.
    for i in 0..60 {
        members[i % 2]
            .node
            .write(Set(format!("k{i}"), format!("v{i}")))
            .await
            .unwrap();
    }
    for m in &members {
        for _ in 0..100 {
            if m.node.status().purged_index > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            m.node.status().snapshot_index > 0,
            "snapshot built on {}",
            m.id
        );
    }

    // The old leader restarts from its own disk and catches up through a snapshot.
    let back = start_member(old_id, root.path(), old_port).await;
    back.node.read_barrier().await.unwrap();
    assert_eq!(back.app.get("k59").as_deref(), Some("v59"));
    assert_eq!(back.app.get("a").as_deref(), Some("1"));
    assert!(
        back.node.status().snapshot_index > 0,
        "caught up by snapshot"
    );
    members.push(back);

    // Everyone restarts: nothing acknowledged is lost.
    let mut ports = Vec::new();
    for m in members.drain(..) {
        ports.push((m.id, stop(m).await));
    }
    for (id, port) in ports {
        members.push(start_member(id, root.path(), port).await);
    }
    wait_leader(&members.iter().collect::<Vec<_>>()).await;
    for m in &members {
        m.node.read_barrier().await.unwrap();
        assert_eq!(m.app.get("k59").as_deref(), Some("v59"), "node {}", m.id);
        assert_eq!(m.app.get("a").as_deref(), Some("1"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_without_quorum_fail_cleanly() {
    let root = tempfile::tempdir().unwrap();
    let a = start_member(1, root.path(), 0).await;
    let b_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // Founded as two voters, but the second never starts: no quorum.
    let founders = BTreeMap::from([
        (1, peer(&a)),
        (
            2,
            PeerNode {
                name: "n2".into(),
                peer_url: format!("http://127.0.0.1:{b_port}"),
                client_urls: vec![],
                promote_when_caught_up: false,
            },
        ),
    ]);
    a.node.initialize(founders).await.unwrap();
    let err = a.node.write(Set("x".into(), "y".into())).await.unwrap_err();
    assert!(
        matches!(err, WriteError::NoLeader | WriteError::Unknown(_)),
        "{err}"
    );
    assert!(a.app.get("x").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cluster_starts_from_a_seeded_snapshot() {
    let root = tempfile::tempdir().unwrap();
    let data = postcard::to_stdvec(&BTreeMap::from([(
        "restored".to_string(),
        "yes".to_string(),
    )]))
    .unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let members = BTreeMap::from([(
        7,
        PeerNode {
            name: "n7".into(),
            peer_url: format!("http://127.0.0.1:{port}"),
            client_urls: vec![],
            promote_when_caught_up: false,
        },
    )]);
    uc_raft::seed_from_snapshot(&root.path().join("n7"), data.clone(), members.clone()).unwrap();
    assert!(
        uc_raft::seed_from_snapshot(&root.path().join("n7"), data, members).is_err(),
        "never over existing state"
    );

    let m = start_member(7, root.path(), port).await;
    wait_leader(&[&m]).await;
    m.node.read_barrier().await.unwrap();
    assert_eq!(m.app.get("restored").as_deref(), Some("yes"));
    m.node.write(Set("after".into(), "1".into())).await.unwrap();
    assert_eq!(m.app.get("after").as_deref(), Some("1"));
    assert_eq!(m.node.membership().members.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_as_voter_joins_as_learner_and_is_promoted_when_caught_up() {
    let root = tempfile::tempdir().unwrap();
    let a = start_member(1, root.path(), 0).await;
    a.node
        .initialize(BTreeMap::from([(1, peer(&a))]))
        .await
        .unwrap();
    wait_leader(&[&a]).await;
    for i in 0..30 {
        a.node
            .write(Set(format!("k{i}"), "v".into()))
            .await
            .unwrap();
    }
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let joining = PeerNode {
        name: "n2".into(),
        peer_url: format!("http://127.0.0.1:{port}"),
        client_urls: vec![],
        promote_when_caught_up: false,
    };
    // Returns at once although the new member is not running yet: the cluster keeps quorum.
    a.node.add_member(2, joining, true).await.unwrap();
    let m = a.node.membership();
    assert!(m.members.iter().any(|m| m.id == 2 && !m.voter));
    a.node
        .write(Set("still".into(), "writable".into()))
        .await
        .unwrap();
    assert!(
        a.node.promote(2).await.is_err(),
        "not in sync before it runs"
    );

    let b = start_member(2, root.path(), port).await;
    for _ in 0..200 {
        if a.node.membership().members.iter().all(|m| m.voter) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        a.node.membership().members.iter().all(|m| m.voter),
        "{:?}",
        a.node.membership()
    );
    b.node.read_barrier().await.unwrap();
    assert_eq!(b.app.get("still").as_deref(), Some("writable"));

    a.node.remove_member(2).await.unwrap();
    assert_eq!(a.node.membership().members.len(), 1);
    a.node
        .write(Set("after-remove".into(), "1".into()))
        .await
        .unwrap();
}
