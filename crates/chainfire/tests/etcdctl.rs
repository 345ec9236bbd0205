//! The Debian `etcdctl` (3.4), unchanged, against real chainfire processes.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use uc_testkit::Cluster;

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn b64(s: &str) -> String {
    // etcdctl's JSON output base64-encodes keys and values.
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `etcdctl watch …` in the background; its output lines arrive on a channel.
struct Watch {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Watch {
    fn start(cluster: &Cluster, node: &uc_testkit::NodeInfo, args: &[&str]) -> Self {
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", client_endpoint(node)))
            .arg(format!("--user=root:{}", cluster.admin_token()))
            .arg("watch")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx2.send(format!("stderr: {line}"));
            }
        });
        Self { child, lines: rx }
    }

    /// Collects output lines until `n` non-stderr lines arrived (or 15 s passed).
    fn expect_lines(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut got = Vec::new();
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with("stderr: ") => {}
                Ok(line) => got.push(line),
                Err(_) => break,
            }
        }
        got
    }

    /// Waits for a line containing `needle` on stdout or stderr.
    fn expect_containing(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!("no line with `{needle}`; saw {seen:?}"),
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn etcdctl_kv_txn_and_compaction_on_one_node() {
    let cluster = chainfire_cluster(1, "").start().await.unwrap();
    let n = cluster.node(0).info.clone();
    let ctl = |args: &[&str]| etcdctl(&cluster, &[&n], args);

    for (k, v) in [("a", "1"), ("b", "2"), ("c", "3"), ("d", "4"), ("b", "22")] {
        assert_eq!(ok(ctl(&["put", k, v])), "OK\n");
    }
    assert_eq!(ok(ctl(&["get", "b"])), "b\n22\n");
    assert_eq!(
        ok(ctl(&["get", "", "--prefix", "--keys-only"])),
        "a\n\nb\n\nc\n\nd\n\n"
    );
    assert_eq!(ok(ctl(&["get", "a", "c"])), "a\n1\nb\n22\n", "range [a, c)");
    assert_eq!(
        ok(ctl(&["get", "", "--prefix", "--limit=2", "--keys-only"])),
        "a\n\nb\n\n"
    );
    assert_eq!(
        ok(ctl(&[
            "get",
            "",
            "--prefix",
            "--sort-by=MODIFY",
            "--order=DESCEND",
            "--keys-only"
        ])),
        "b\n\nd\n\nc\n\na\n\n"
    );
    let counted = json(&ok(ctl(&[
        "get",
        "",
        "--prefix",
        "--limit=1",
        "-w",
        "json",
    ])));
    assert_eq!(counted["count"], 4, "count ignores the limit");
    assert_eq!(counted["more"], true);
    assert_eq!(counted["kvs"].as_array().unwrap().len(), 1);

    // Revisions exactly as etcd numbers them: 1 is the empty store, each put adds one.
    let b = json(&ok(ctl(&["get", "b", "-w", "json"])));
    assert_eq!(b["header"]["revision"], 6);
    assert_eq!(b["kvs"][0]["create_revision"], 3);
    assert_eq!(b["kvs"][0]["mod_revision"], 6);
    assert_eq!(b["kvs"][0]["version"], 2);
    assert_eq!(b["kvs"][0]["value"], b64("22"));
    assert_eq!(
        ok(ctl(&["get", "b", "--rev=3"])),
        "b\n2\n",
        "read at an old revision"
    );

    // Deletes: prefix, and prev-kv.
    assert_eq!(ok(ctl(&["del", "--prev-kv", "d"])), "1\nd\n4\n");
    assert_eq!(ok(ctl(&["del", "nothing"])), "0\n");
    ok(ctl(&["put", "p/1", "x"]));
    ok(ctl(&["put", "p/2", "y"]));
    assert_eq!(ok(ctl(&["del", "--prefix", "p/"])), "2\n");

    // Transactions (etcdctl reads compares, success ops and failure ops from stdin).
    let txn = |input: &str| ok(etcdctl_with_stdin(&cluster, &[&n], &["txn"], Some(input)));
    assert_eq!(
        txn("value(\"a\") = \"1\"\n\nput a 11\n\nput a 99\n\n"),
        "SUCCESS\n\nOK\n"
    );
    assert_eq!(
        txn("value(\"a\") = \"1\"\n\nput a 12\n\nget a\n\n"),
        "FAILURE\n\na\n11\n"
    );
    assert_eq!(
        txn("version(\"a\") = \"2\"\nmod(\"c\") < \"100\"\n\nput t yes\n\n\n"),
        "SUCCESS\n\nOK\n"
    );
    assert_eq!(
        txn("create(\"zz\") = \"0\"\n\nput zz new\n\n\n"),
        "SUCCESS\n\nOK\n",
        "missing key has create 0"
    );
    assert_eq!(ok(ctl(&["get", "t"])), "t\nyes\n");

    // Compaction, then the compacted error for old revisions.
    let rev = json(&ok(ctl(&["get", "a", "-w", "json"])))["header"]["revision"]
        .as_i64()
        .unwrap();
    assert_eq!(
        ok(ctl(&["compaction", &rev.to_string()])),
        format!("compacted revision {rev}\n")
    );
    let e = err(ctl(&["get", "b", "--rev=3"]));
    assert!(
        e.contains("etcdserver: mvcc: required revision has been compacted"),
        "{e}"
    );
    let e = err(ctl(&["compaction", "2"]));
    assert!(e.contains("required revision has been compacted"), "{e}");
    let e = err(ctl(&["get", "a", "--rev=100000"]));
    assert!(
        e.contains("etcdserver: mvcc: required revision is a future revision"),
        "{e}"
    );
    assert_eq!(ok(ctl(&["get", "a"])), "a\n11\n", "current data untouched");
}

#[tokio::test]
async fn etcdctl_watch_prefix_revision_prev_kv_and_compacted() {
    let cluster = chainfire_cluster(1, "").start().await.unwrap();
    let n = cluster.node(0).info.clone();
    let ctl = |args: &[&str]| etcdctl(&cluster, &[&n], args);
    ok(ctl(&["put", "w/a", "1"])); // rev 2
    ok(ctl(&["put", "w/a", "2"])); // rev 3
    ok(ctl(&["put", "other", "x"])); // rev 4

    // From an old revision, with previous values: history first, then live events.
    let watch = Watch::start(&cluster, &n, &["--prefix", "--rev=2", "--prev-kv", "w/"]);
    assert_eq!(
        watch.expect_lines(3 + 5),
        ["PUT", "w/a", "1", "PUT", "w/a", "1", "w/a", "2"]
    );
    ok(ctl(&["put", "w/b", "3"]));
    ok(ctl(&["put", "other", "y"]));
    ok(ctl(&["del", "w/a"]));
    // etcdctl prints an event's previous key-value before the event's own.
    assert_eq!(
        watch.expect_lines(3 + 4),
        ["PUT", "w/b", "3", "DELETE", "w/a", "2", "w/a"]
    );
    drop(watch);

    // A watch from a compacted revision is cancelled with etcd's error.
    let rev = json(&ok(ctl(&["get", "other", "-w", "json"])))["header"]["revision"]
        .as_i64()
        .unwrap();
    ok(ctl(&["compaction", &rev.to_string()]));
    let old = Watch::start(&cluster, &n, &["--rev=2", "w/a"]);
    let line = old.expect_containing("compacted");
    assert!(
        line.contains("etcdserver: mvcc: required revision has been compacted"),
        "{line}"
    );
}

#[tokio::test]
async fn etcdctl_leases_keepalive_and_expiry() {
    let cluster = chainfire_cluster(1, "").start().await.unwrap();
    let n = cluster.node(0).info.clone();
    let ctl = |args: &[&str]| etcdctl(&cluster, &[&n], args);

    let granted = ok(ctl(&["lease", "grant", "300"]));
    // "lease 694d7a3b6b6f3e1a granted with TTL(300s)"
    let id = granted.split_whitespace().nth(1).unwrap().to_owned();
    assert!(granted.ends_with("granted with TTL(300s)\n"), "{granted}");
    ok(ctl(&["put", "--lease", &id, "lk1", "v"]));
    ok(ctl(&["put", "--lease", &id, "lk2", "v"]));
    let ttl = ok(ctl(&["lease", "timetolive", &id, "--keys"]));
    assert!(
        ttl.contains("granted with TTL(300s)") && ttl.contains("attached keys([lk1 lk2])"),
        "{ttl}"
    );
    assert!(ok(ctl(&["lease", "list"])).contains(&id));
    let kept = ok(ctl(&["lease", "keep-alive", "--once", &id]));
    assert_eq!(kept, format!("lease {id} keepalived with TTL(300)\n"));
    assert_eq!(
        ok(ctl(&["lease", "revoke", &id])),
        format!("lease {id} revoked\n")
    );
    assert_eq!(
        ok(ctl(&["get", "lk", "--prefix"])),
        "",
        "revoking deleted the attached keys"
    );
    let e = err(ctl(&["lease", "revoke", &id]));
    assert!(e.contains("etcdserver: requested lease not found"), "{e}");
    let e = err(ctl(&["put", "--lease=1234abcd", "k", "v"]));
    assert!(e.contains("etcdserver: requested lease not found"), "{e}");

    // Attached keys expire on time: a 2 s lease, never kept alive.
    let short = ok(ctl(&["lease", "grant", "2"]));
    let short_id = short.split_whitespace().nth(1).unwrap().to_owned();
    ok(ctl(&["put", "--lease", &short_id, "ephemeral", "v"]));
    assert_eq!(ok(ctl(&["get", "ephemeral"])), "ephemeral\nv\n");
    let granted_at = Instant::now();
    let mut gone = false;
    while granted_at.elapsed() < Duration::from_secs(20) {
        if ok(ctl(&["get", "ephemeral"])).is_empty() {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(gone, "key outlived its lease");
    assert!(
        granted_at.elapsed() >= Duration::from_millis(1500),
        "not before its TTL"
    );
    let ttl = ok(ctl(&["lease", "timetolive", &short_id]));
    assert!(ttl.contains("already expired"), "{ttl}");
}

#[tokio::test]
async fn etcdctl_endpoint_status_health_and_snapshot_restore_into_a_new_cluster() {
    let cluster = chainfire_cluster(1, "").start().await.unwrap();
    let n = cluster.node(0).info.clone();
    let ctl = |args: &[&str]| etcdctl(&cluster, &[&n], args);
    for i in 0..50 {
        ok(ctl(&["put", &format!("key{i:02}"), &format!("value{i}")]));
    }
    ok(ctl(&["del", "key07"]));

    let out = ctl(&["endpoint", "health"]);
    // etcdctl 3.4 prints health lines on stderr.
    let health =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && health.contains("is healthy"),
        "{health}"
    );
    let status = json(&ok(ctl(&["endpoint", "status", "-w", "json"])));
    let s = &status[0]["Status"];
    assert_eq!(s["leader"], s["header"]["member_id"], "{status}");
    assert!(s["raftIndex"].as_u64().unwrap() > 50, "{status}");
    assert!(s["dbSize"].as_i64().unwrap() > 0);

    let file = cluster.root().join("backup.db");
    let out = ctl(&["snapshot", "save", file.to_str().unwrap()]);
    let saved = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && saved.contains("Snapshot saved at"),
        "{saved}"
    );
    let before = json(&ok(ctl(&["get", "", "--prefix", "-w", "json"])));

    // A new cluster, seeded from the backup by the ultracloud CLI.
    let mut restored = chainfire_cluster(1, "").prepare().unwrap();
    let r = restored.node(0).info.clone();
    let out = Command::new(uc_testkit::ultracloud_binary())
        .args(["chainfire", "snapshot", "restore"])
        .arg(&file)
        .arg("--data-dir")
        .arg(&r.data_dir)
        .args(["--name", &r.name, "--peer-url", &peer_url(&r)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    restored.start_node(0).await.unwrap();
    let after = json(&ok(etcdctl(
        &restored,
        &[&r],
        &["get", "", "--prefix", "-w", "json"],
    )));
    assert_eq!(
        before["kvs"], after["kvs"],
        "same keys, values, revisions and versions"
    );
    assert_eq!(before["header"]["revision"], after["header"]["revision"]);
    assert_ne!(before["header"]["member_id"], after["header"]["member_id"]);
    ok(etcdctl(&restored, &[&r], &["put", "new", "write"]));

    // A corrupted backup is refused, and nothing is created.
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[100] ^= 0xff;
    let bad = cluster.root().join("bad.db");
    std::fs::write(&bad, bytes).unwrap();
    let target = cluster.root().join("never");
    let out = Command::new(uc_testkit::ultracloud_binary())
        .args(["chainfire", "snapshot", "restore"])
        .arg(&bad)
        .arg("--data-dir")
        .arg(&target)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("checksum"));
    assert!(!target.exists());
}
