//! Concurrent clients record a history of puts, linearizable gets, compare-and-sets and deletes
//! against a 3-member cluster while members are killed, restarted and paused; the history must
//! be linearizable (Wing–Gong/Lowe checker in uc-testkit).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use uc_testkit::NodeInfo;
use uc_testkit::linearizability::{Kv, KvInput, KvOp, KvOutput, Recorder, assert_linearizable};

const KEYS: usize = 3;
const CLIENTS_PER_MEMBER: usize = 2;
const OP_TIMEOUT: Duration = Duration::from_secs(3);

async fn run_op(
    client: &mut etcd_client::Client,
    input: &KvInput,
) -> Result<KvOutput, etcd_client::Error> {
    let key = input.key.as_str();
    Ok(match &input.op {
        KvOp::Put(v) => {
            client.put(key, v.as_str(), None).await?;
            KvOutput::Done
        }
        KvOp::Get => {
            let r = client.get(key, None).await?;
            KvOutput::Value(r.kvs().first().map(|kv| kv.value_str().unwrap().to_owned()))
        }
        KvOp::Delete => {
            client.delete(key, None).await?;
            KvOutput::Done
        }
        KvOp::CompareAndSet { expected, new } => {
            let compare = match expected {
                Some(v) => Compare::value(key, CompareOp::Equal, v.as_str()),
                None => Compare::create_revision(key, CompareOp::Equal, 0),
            };
            let r = client
                .txn(
                    Txn::new()
                        .when([compare])
                        .and_then([TxnOp::put(key, new.as_str(), None)]),
                )
                .await?;
            KvOutput::Swapped(r.succeeded())
        }
    })
}

async fn client_loop(
    id: u64,
    mut client: etcd_client::Client,
    recorder: Arc<Recorder<KvInput, KvOutput>>,
    stop: Arc<AtomicBool>,
) {
    let mut seq = 0u64;
    let mut last_seen: Vec<Option<String>> = vec![None; KEYS];
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let k = rand::random_range(0..KEYS);
        let key = format!("lin/{k}");
        let value = format!("c{id}-{seq}");
        let op = match rand::random_range(0..10) {
            0..=3 => KvOp::Get,
            4..=6 => KvOp::Put(value),
            7..=8 => KvOp::CompareAndSet {
                expected: last_seen[k].clone(),
                new: value,
            },
            _ => KvOp::Delete,
        };
        let input = KvInput::new(key, op);
        let pending = recorder.invoke(id, input.clone());
        match tokio::time::timeout(OP_TIMEOUT, run_op(&mut client, &input)).await {
            Ok(Ok(output)) => {
                if let KvOutput::Value(v) = &output {
                    last_seen[k] = v.clone();
                }
                recorder.complete(pending, output);
            }
            // A read that failed had no effect. A write that failed might have committed
            // (the answer was lost), so its outcome is unknown.
            _ if input.op == KvOp::Get => recorder.discard(pending),
            _ => {
                recorder.unknown(pending);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn histories_under_kills_and_pauses_are_linearizable() {
    let mut cluster = chainfire_cluster(3, "").start().await.unwrap();
    let infos: Vec<NodeInfo> = cluster.nodes().cloned().collect();
    let recorder: Arc<Recorder<KvInput, KvOutput>> = Arc::new(Recorder::new());
    let stop = Arc::new(AtomicBool::new(false));

    let mut tasks = Vec::new();
    let mut id = 0;
    for node in &infos {
        for _ in 0..CLIENTS_PER_MEMBER {
            id += 1;
            let c = client(&cluster, &[node]).await;
            tasks.push(tokio::spawn(client_loop(
                id,
                c,
                recorder.clone(),
                stop.clone(),
            )));
        }
    }

    // The nemesis: kill the leader, pause a member, kill another, with traffic throughout.
    tokio::time::sleep(Duration::from_millis(800)).await;
    for round in 0..3 {
        let leader = wait_for_leader(&cluster).await;
        cluster.node_mut(leader).kill();
        tokio::time::sleep(Duration::from_millis(1200)).await;
        cluster.restart(leader).await.unwrap();

        let victim = (leader + 1 + round) % 3;
        cluster.node_mut(victim).pause();
        tokio::time::sleep(Duration::from_millis(1200)).await;
        cluster.node_mut(victim).resume();
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    let history = recorder.history();
    let completed = history.iter().filter(|o| !o.is_unknown()).count();
    eprintln!(
        "history: {} operations ({completed} completed, {} unknown)",
        history.len(),
        history.len() - completed
    );
    assert!(
        completed > 100,
        "the clients made progress despite the faults"
    );
    assert_linearizable::<Kv>(&history, Duration::from_secs(120));
}
