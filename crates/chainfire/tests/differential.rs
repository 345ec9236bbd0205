//! Differential tests: the same etcd v3 requests, byte for byte, against the real etcd 3.4
//! (Debian's `/usr/bin/etcd`, the reference, started here on loopback) and a 1-node chainfire,
//! through the etcd-client crate. Every response is normalized (only `cluster_id`, `member_id`
//! and `raft_term` are dropped, as they legitimately differ) and compared as it comes.
//!
//! Each test starts its own pair of servers, so revisions and lease ids line up from a fresh
//! store on both sides.

mod common;

use std::time::Duration;

use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, EventType, GetOptions,
    LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse, WatchFilterType, WatchOptions,
};
use uc_testkit::{Cluster, NodeInfo, Ready};

// ----- the two servers -------------------------------------------------------------------

const ETCD_BIN: &str = "/usr/bin/etcd";

/// A single-member etcd on 127.0.0.10 with its own data directory; killed when dropped
/// (also on panic, by the `Cluster`).
async fn start_etcd() -> (Cluster, Client) {
    let cluster = Cluster::builder(1)
        .binary(ETCD_BIN)
        .ports(&["client", "peer"])
        .args(|node: &NodeInfo| {
            let client = node.url("client");
            let peer = node.url("peer");
            vec![
                "--name".into(),
                "default".into(),
                "--data-dir".into(),
                node.data_dir.display().to_string(),
                "--listen-client-urls".into(),
                client.clone(),
                "--advertise-client-urls".into(),
                client,
                "--listen-peer-urls".into(),
                peer.clone(),
                "--initial-advertise-peer-urls".into(),
                peer.clone(),
                "--initial-cluster".into(),
                format!("default={peer}"),
                "--initial-cluster-state".into(),
                "new".into(),
            ]
        })
        .keep_on_failure(false)
        .ready(Ready::Tcp {
            port: "client".into(),
        })
        .start()
        .await
        .expect("start etcd");
    let url = cluster.node(0).info.url("client");
    let mut client = None;
    for _ in 0..600 {
        if let Ok(mut c) = Client::connect(
            [url.as_str()],
            Some(etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(10))),
        )
        .await
            && c.get("probe", None).await.is_ok()
        {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (cluster, client.expect("etcd answers"))
}

async fn start_chainfire() -> (Cluster, Client) {
    let cluster = common::chainfire_cluster(1, "")
        .keep_on_failure(false)
        .start()
        .await
        .expect("start chainfire");
    let node = cluster.node(0).info.clone();
    let mut client = common::client(&cluster, &[&node]).await;
    // Wait until it serves a linearizable read (the probe itself writes nothing).
    for _ in 0..600 {
        if client.get("probe", None).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (cluster, client)
}

/// etcd (the reference) and chainfire side by side.
struct Pair {
    etcd: Client,
    cf: Client,
    step: usize,
    _etcd_proc: Cluster,
    _cf_proc: Cluster,
}

impl Pair {
    async fn start() -> Pair {
        let (etcd_proc, etcd) = start_etcd().await;
        let (cf_proc, cf) = start_chainfire().await;
        Pair {
            etcd,
            cf,
            step: 0,
            _etcd_proc: etcd_proc,
            _cf_proc: cf_proc,
        }
    }

    /// Sends `op` to etcd, then the identical request to chainfire; asserts equal responses
    /// and returns etcd's.
    async fn run(&mut self, label: &str, op: Op) -> R {
        self.step += 1;
        let want = exec(&mut self.etcd, &op).await;
        let got = exec(&mut self.cf, &op).await;
        assert_eq!(
            want, got,
            "step {} ({label}): etcd (left) and chainfire (right) differ\nrequest: {op:?}",
            self.step
        );
        want
    }

    /// Runs a table of operations in order.
    async fn script(&mut self, steps: Vec<(&str, Op)>) {
        for (label, op) in steps {
            self.run(label, op).await;
        }
    }

    /// The current revision, as etcd reports it (compared with chainfire's on the way).
    async fn revision(&mut self) -> i64 {
        self.run("current revision", get("\0", None))
            .await
            .revision()
            .expect("a range answers with a revision")
    }

    /// Opens the same watch on both sides and compares what each delivers: the created
    /// response, then every event (flattened across responses, whose batching is not part of
    /// the contract) until the put of `sentinel` (issued once the watch is created) shows up,
    /// or until the watch is canceled.
    async fn watch(&mut self, label: &str, key: &str, opts: WatchOptions, sentinel: Option<&str>) {
        self.step += 1;
        let want = watch_side(&mut self.etcd, key, opts.clone(), sentinel).await;
        let got = watch_side(&mut self.cf, key, opts.clone(), sentinel).await;
        assert_eq!(
            want, got,
            "step {} (watch {label}): etcd (left) and chainfire (right) differ\nwatch {key:?} {opts:?}",
            self.step
        );
    }
}

// ----- requests and normalized responses ---------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Put(String, String, Option<PutOptions>),
    Get(String, Option<GetOptions>),
    Del(String, Option<DeleteOptions>),
    Txn(Txn),
    Compact(i64),
    Grant {
        ttl: i64,
        id: i64,
    },
    Revoke(i64),
    /// LeaseTimeToLive with keys.
    TimeToLive(i64),
    Leases,
    HashKv(i64),
}

fn put(k: &str, v: &str, o: Option<PutOptions>) -> Op {
    Op::Put(k.into(), v.into(), o)
}
fn get(k: &str, o: Option<GetOptions>) -> Op {
    Op::Get(k.into(), o)
}
fn del(k: &str, o: Option<DeleteOptions>) -> Op {
    Op::Del(k.into(), o)
}
fn go() -> GetOptions {
    GetOptions::new()
}
fn po() -> PutOptions {
    PutOptions::new()
}
fn dopt() -> DeleteOptions {
    DeleteOptions::new()
}

#[derive(Clone, Debug, PartialEq)]
struct Kv {
    key: String,
    value: String,
    create: i64,
    modr: i64,
    version: i64,
    lease: i64,
}

fn kv(k: &etcd_client::KeyValue) -> Kv {
    Kv {
        key: String::from_utf8_lossy(k.key()).into_owned(),
        value: String::from_utf8_lossy(k.value()).into_owned(),
        create: k.create_revision(),
        modr: k.mod_revision(),
        version: k.version(),
        lease: k.lease(),
    }
}

/// A response with everything but `cluster_id`, `member_id` and `raft_term`.
#[derive(Clone, Debug, PartialEq)]
enum R {
    Range {
        rev: Option<i64>,
        kvs: Vec<Kv>,
        more: bool,
        count: i64,
    },
    Put {
        rev: Option<i64>,
        prev: Option<Kv>,
    },
    Delete {
        rev: Option<i64>,
        deleted: i64,
        prev: Vec<Kv>,
    },
    Txn {
        rev: Option<i64>,
        succeeded: bool,
        responses: Vec<R>,
    },
    Compact {
        rev: Option<i64>,
    },
    Grant {
        rev: Option<i64>,
        id: i64,
        ttl: i64,
        error: String,
    },
    Revoke {
        rev: Option<i64>,
    },
    TimeToLive {
        rev: Option<i64>,
        id: i64,
        granted: i64,
        /// The remaining TTL counts down with time: only "0 < ttl <= granted" is compared,
        /// other values (-1 for an unknown lease) exactly.
        ttl: String,
        keys: Vec<String>,
    },
    Leases {
        rev: Option<i64>,
        ids: Vec<i64>,
    },
    HashKv {
        rev: Option<i64>,
        hash: u32,
        compact_revision: i64,
    },
    Error {
        code: String,
        message: String,
    },
}

impl R {
    fn revision(&self) -> Option<i64> {
        match self {
            R::Range { rev, .. }
            | R::Put { rev, .. }
            | R::Delete { rev, .. }
            | R::Txn { rev, .. }
            | R::Compact { rev }
            | R::Grant { rev, .. }
            | R::Revoke { rev }
            | R::TimeToLive { rev, .. }
            | R::Leases { rev, .. }
            | R::HashKv { rev, .. } => *rev,
            R::Error { .. } => None,
        }
    }
}

fn rev(h: Option<&etcd_client::ResponseHeader>) -> Option<i64> {
    h.map(|h| h.revision())
}

fn get_r(r: &etcd_client::GetResponse) -> R {
    R::Range {
        rev: rev(r.header()),
        kvs: r.kvs().iter().map(kv).collect(),
        more: r.more(),
        count: r.count(),
    }
}

fn put_r(r: &etcd_client::PutResponse) -> R {
    R::Put {
        rev: rev(r.header()),
        prev: r.prev_key().map(kv),
    }
}

fn del_r(r: &etcd_client::DeleteResponse) -> R {
    R::Delete {
        rev: rev(r.header()),
        deleted: r.deleted(),
        prev: r.prev_kvs().iter().map(kv).collect(),
    }
}

fn txn_r(r: &etcd_client::TxnResponse) -> R {
    R::Txn {
        rev: rev(r.header()),
        succeeded: r.succeeded(),
        responses: r
            .op_responses()
            .iter()
            .map(|op| match op {
                TxnOpResponse::Put(p) => put_r(p),
                TxnOpResponse::Get(g) => get_r(g),
                TxnOpResponse::Delete(d) => del_r(d),
                TxnOpResponse::Txn(t) => txn_r(t),
            })
            .collect(),
    }
}

fn err_r(e: etcd_client::Error) -> R {
    match e {
        etcd_client::Error::GRpcStatus(s) => R::Error {
            code: format!("{:?}", s.code()),
            message: s.message().to_owned(),
        },
        other => panic!("not a gRPC status: {other}"),
    }
}

async fn exec(c: &mut Client, op: &Op) -> R {
    let r = match op.clone() {
        Op::Put(k, v, o) => c.put(k, v, o).await.map(|r| put_r(&r)),
        Op::Get(k, o) => c.get(k, o).await.map(|r| get_r(&r)),
        Op::Del(k, o) => c.delete(k, o).await.map(|r| del_r(&r)),
        Op::Txn(t) => c.txn(t).await.map(|r| txn_r(&r)),
        // Physical: etcd compacts its backend in the background, and until that is done (and
        // committed) a HashKV at a revision where no key exists (etcd's "don't skip if there
        // isn't one") still hashes the compacted entries. A physical compaction answers only
        // once the backend is settled; chainfire compacts synchronously either way.
        Op::Compact(revision) => c
            .compact(revision, Some(CompactionOptions::new().with_physical()))
            .await
            .map(|r| R::Compact {
                rev: rev(r.header()),
            }),
        Op::Grant { ttl, id } => c
            .lease_grant(ttl, Some(LeaseGrantOptions::new().with_id(id)))
            .await
            .map(|r| R::Grant {
                rev: rev(r.header()),
                id: r.id(),
                ttl: r.ttl(),
                error: r.error().to_owned(),
            }),
        Op::Revoke(id) => c.lease_revoke(id).await.map(|r| R::Revoke {
            rev: rev(r.header()),
        }),
        Op::TimeToLive(id) => c
            .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .map(|r| {
                let mut keys: Vec<String> = r
                    .keys()
                    .iter()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .collect();
                // etcd lists a lease's keys in map order.
                keys.sort();
                let ttl = if r.ttl() > 0 && r.ttl() <= r.granted_ttl() {
                    "0 < ttl <= granted".to_owned()
                } else {
                    r.ttl().to_string()
                };
                R::TimeToLive {
                    rev: rev(r.header()),
                    id: r.id(),
                    granted: r.granted_ttl(),
                    ttl,
                    keys,
                }
            }),
        Op::Leases => c.leases().await.map(|r| {
            let mut ids: Vec<i64> = r.leases().iter().map(|l| l.id()).collect();
            ids.sort();
            R::Leases {
                rev: rev(r.header()),
                ids,
            }
        }),
        Op::HashKv(revision) => c
            .maintenance_client()
            .hash_kv(revision)
            .await
            .map(|r| R::HashKv {
                rev: rev(r.header()),
                hash: r.hash(),
                compact_revision: r.compact_version(),
            }),
    };
    r.unwrap_or_else(err_r)
}

#[derive(Debug, PartialEq)]
struct Ev {
    kind: &'static str,
    kv: Option<Kv>,
    prev: Option<Kv>,
}

#[derive(Debug, PartialEq, Default)]
struct WatchLog {
    /// (watch id, header revision) of the created response.
    created: Option<(i64, Option<i64>)>,
    sentinel_put: Option<R>,
    events: Vec<Ev>,
    /// (compact revision, header revision, cancel reason) of a cancel.
    canceled: Option<(i64, Option<i64>, String)>,
    /// Whether the collection ended by a timeout (the expected end never came).
    timed_out: bool,
}

async fn watch_side(
    c: &mut Client,
    key: &str,
    opts: WatchOptions,
    sentinel: Option<&str>,
) -> WatchLog {
    let mut stream = c
        .watch_client()
        .watch(key, Some(opts))
        .await
        .expect("open watch");
    let mut log = WatchLog::default();
    let mut sentinel_rev = None;
    loop {
        let msg = match tokio::time::timeout(Duration::from_secs(15), stream.message()).await {
            Ok(m) => m.expect("watch stream"),
            Err(_) => {
                log.timed_out = true;
                return log;
            }
        };
        let Some(resp) = msg else { return log };
        if resp.created() {
            log.created = Some((resp.watch_id(), rev(resp.header())));
            if let Some(s) = sentinel {
                let r = exec(c, &put(s, "sentinel", None)).await;
                sentinel_rev = r.revision();
                log.sentinel_put = Some(r);
            }
        }
        for e in resp.events() {
            log.events.push(Ev {
                kind: match e.event_type() {
                    EventType::Put => "PUT",
                    EventType::Delete => "DELETE",
                },
                kv: e.kv().map(kv),
                prev: e.prev_kv().map(kv),
            });
        }
        if resp.canceled() {
            log.canceled = Some((
                resp.compact_revision(),
                rev(resp.header()),
                resp.cancel_reason().to_owned(),
            ));
            return log;
        }
        if let (Some(s), Some(r)) = (sentinel, sentinel_rev)
            && log.events.iter().any(|e| {
                e.kv.as_ref()
                    .is_some_and(|k| k.key == s && k.modr == r && e.kind == "PUT")
            })
        {
            return log;
        }
        if sentinel.is_none() && !resp.created() && !resp.events().is_empty() {
            // Without a sentinel, one batch of history is enough.
            return log;
        }
    }
}

// ----- scripted sequences ----------------------------------------------------------------

#[tokio::test]
async fn differential_kv_ranges_and_deletes() {
    let mut p = Pair::start().await;
    p.script(vec![
        ("empty store", get("a", None)),
        ("hash of an empty store", Op::HashKv(0)),
        ("put a", put("a", "1", None)),
        (
            "put b with prev_kv (none)",
            put("b", "2", Some(po().with_prev_key())),
        ),
        (
            "overwrite a with prev_kv",
            put("a", "3", Some(po().with_prev_key())),
        ),
        ("put dir/x", put("dir/x", "x1", None)),
        ("put dir/y", put("dir/y", "y1", None)),
        ("put dir/z", put("dir/z", "z1", None)),
        ("put dir2/q", put("dir2/q", "q1", None)),
        ("put e", put("e", "5", None)),
        ("overwrite dir/y", put("dir/y", "y2", None)),
        ("overwrite dir/x twice", put("dir/x", "x2", None)),
        (
            "overwrite dir/x again",
            put("dir/x", "x3", Some(po().with_prev_key())),
        ),
        ("get a", get("a", None)),
        ("get missing", get("nope", None)),
        ("prefix dir/", get("dir/", Some(go().with_prefix()))),
        ("all keys", get("", Some(go().with_all_keys()))),
        ("from key c", get("c", Some(go().with_from_key()))),
        ("range [b, dir/y)", get("b", Some(go().with_range("dir/y")))),
        ("range end before key", get("e", Some(go().with_range("a")))),
        ("range end equal key", get("e", Some(go().with_range("e")))),
        (
            "limit 2 (more)",
            get("dir/", Some(go().with_prefix().with_limit(2))),
        ),
        (
            "limit 3 (exact)",
            get("dir/", Some(go().with_prefix().with_limit(3))),
        ),
        (
            "limit 10",
            get("dir/", Some(go().with_prefix().with_limit(10))),
        ),
        (
            "keys only",
            get("", Some(go().with_all_keys().with_keys_only())),
        ),
        (
            "count only",
            get("", Some(go().with_all_keys().with_count_only())),
        ),
        (
            "count only with limit",
            get(
                "",
                Some(go().with_all_keys().with_count_only().with_limit(2)),
            ),
        ),
        (
            "keys only with limit",
            get(
                "dir",
                Some(go().with_prefix().with_keys_only().with_limit(2)),
            ),
        ),
    ])
    .await;

    let targets = [
        SortTarget::Key,
        SortTarget::Version,
        SortTarget::Create,
        SortTarget::Mod,
        SortTarget::Value,
    ];
    let orders = [SortOrder::None, SortOrder::Ascend, SortOrder::Descend];
    for t in targets {
        for o in orders {
            p.run(
                &format!("sort {t:?} {o:?}"),
                get("", Some(go().with_all_keys().with_sort(t, o))),
            )
            .await;
            p.run(
                &format!("sort {t:?} {o:?} limit 3"),
                get("", Some(go().with_all_keys().with_sort(t, o).with_limit(3))),
            )
            .await;
        }
    }

    let now = p.revision().await;
    p.script(vec![
        (
            "at revision 2",
            get("", Some(go().with_all_keys().with_revision(2))),
        ),
        (
            "at revision 1",
            get("", Some(go().with_all_keys().with_revision(1))),
        ),
        ("a at revision 3", get("a", Some(go().with_revision(3)))),
        (
            "dir/ at revision 7 with limit",
            get(
                "dir/",
                Some(go().with_prefix().with_revision(7).with_limit(1)),
            ),
        ),
        (
            "future revision",
            get("a", Some(go().with_revision(now + 1))),
        ),
        (
            "min mod revision",
            get("", Some(go().with_all_keys().with_min_mod_revision(8))),
        ),
        (
            "max mod revision",
            get("", Some(go().with_all_keys().with_max_mod_revision(8))),
        ),
        (
            "min create revision",
            get("", Some(go().with_all_keys().with_min_create_revision(5))),
        ),
        (
            "max create revision",
            get("", Some(go().with_all_keys().with_max_create_revision(5))),
        ),
        (
            "mod window with limit (more?)",
            get(
                "",
                Some(
                    go().with_all_keys()
                        .with_min_mod_revision(4)
                        .with_max_mod_revision(12)
                        .with_limit(2),
                ),
            ),
        ),
        (
            "create window, sorted descending by mod, limit 1",
            get(
                "",
                Some(
                    go().with_all_keys()
                        .with_min_create_revision(3)
                        .with_max_create_revision(7)
                        .with_sort(SortTarget::Mod, SortOrder::Descend)
                        .with_limit(1),
                ),
            ),
        ),
        (
            "filters at an old revision",
            get(
                "",
                Some(
                    go().with_all_keys()
                        .with_revision(9)
                        .with_min_mod_revision(5),
                ),
            ),
        ),
        (
            "count only with a filter",
            get(
                "",
                Some(
                    go().with_all_keys()
                        .with_count_only()
                        .with_min_mod_revision(9),
                ),
            ),
        ),
        ("compact at 0 (never compacted)", Op::Compact(0)),
        ("hash after compacting at 0", Op::HashKv(0)),
        ("compact at -1", Op::Compact(-1)),
        ("hash at 5", Op::HashKv(5)),
        ("hash now", Op::HashKv(0)),
        ("hash at a future revision", Op::HashKv(now + 5)),
        // Puts that reuse the current value or lease, and their errors.
        ("ignore_value", put("a", "", Some(po().with_ignore_value()))),
        (
            "ignore_lease with prev_kv",
            put("a", "33", Some(po().with_ignore_lease().with_prev_key())),
        ),
        (
            "ignore_value on a missing key",
            put("nope", "", Some(po().with_ignore_value())),
        ),
        (
            "ignore_value with a value",
            put("a", "x", Some(po().with_ignore_value())),
        ),
        (
            "ignore_lease with a lease",
            put("a", "x", Some(po().with_ignore_lease().with_lease(7))),
        ),
        ("empty key", put("", "x", None)),
        (
            "put with a missing lease",
            put("a", "x", Some(po().with_lease(12345))),
        ),
        ("get empty key", get("", None)),
        // Deletes.
        ("delete missing", del("nope", None)),
        (
            "delete missing with prev_kv",
            del("nope", Some(dopt().with_prev_key())),
        ),
        (
            "delete a with prev_kv",
            del("a", Some(dopt().with_prev_key())),
        ),
        ("get deleted a", get("a", None)),
        ("recreate a", put("a", "again", Some(po().with_prev_key()))),
        ("a after recreate", get("a", None)),
        (
            "delete prefix dir/ with prev_kv",
            del("dir/", Some(dopt().with_prefix().with_prev_key())),
        ),
        (
            "prefix dir/ after delete",
            get("dir", Some(go().with_prefix())),
        ),
        (
            "delete range [a, c)",
            del("a", Some(dopt().with_range("c"))),
        ),
        ("delete empty range", del("x", Some(dopt().with_range("y")))),
        (
            "delete from key d with prev_kv",
            del("d", Some(dopt().with_from_key().with_prev_key())),
        ),
        ("nothing left", get("", Some(go().with_all_keys()))),
        (
            "old revision still readable",
            get("", Some(go().with_all_keys().with_revision(now))),
        ),
        ("recreate dir/x", put("dir/x", "x4", None)),
        ("delete all keys", del("", Some(dopt().with_all_keys()))),
        ("hash at the end", Op::HashKv(0)),
        ("hash at 10", Op::HashKv(10)),
        ("hash at 2", Op::HashKv(2)),
    ])
    .await;
}

#[tokio::test]
async fn differential_txn() {
    use CompareOp::*;
    let mut p = Pair::start().await;
    p.script(vec![
        ("put t/a", put("t/a", "1", None)),
        ("put t/b", put("t/b", "2", None)),
        ("overwrite t/b", put("t/b", "22", None)),
        ("put t/c", put("t/c", "3", None)),
    ])
    .await;
    // (t/a: create 2 mod 2 version 1; t/b: create 3 mod 4 version 2; t/c: create 5 mod 5)

    let then_ops = || {
        vec![
            TxnOp::put("t/x", "then", Some(po().with_prev_key())),
            TxnOp::get("t/", Some(go().with_prefix())),
        ]
    };
    let else_ops = || {
        vec![
            TxnOp::get("t/a", None),
            TxnOp::put("t/y", "else", Some(po().with_prev_key())),
        ]
    };
    let cases: Vec<(&str, Vec<Compare>)> = vec![
        ("value equal", vec![Compare::value("t/a", Equal, "1")]),
        (
            "value equal (false)",
            vec![Compare::value("t/a", Equal, "9")],
        ),
        ("value greater", vec![Compare::value("t/b", Greater, "21")]),
        (
            "value less (false)",
            vec![Compare::value("t/b", Less, "21")],
        ),
        (
            "value not equal",
            vec![Compare::value("t/c", NotEqual, "4")],
        ),
        (
            "value of a missing key",
            vec![Compare::value("t/none", NotEqual, "x")],
        ),
        (
            "value equal empty on a missing key",
            vec![Compare::value("t/none", Equal, "")],
        ),
        ("version equal", vec![Compare::version("t/b", Equal, 2)]),
        (
            "version greater (false)",
            vec![Compare::version("t/b", Greater, 5)],
        ),
        (
            "version of a missing key",
            vec![Compare::version("t/none", Equal, 0)],
        ),
        ("version less", vec![Compare::version("t/a", Less, 2)]),
        (
            "create equal",
            vec![Compare::create_revision("t/b", Equal, 3)],
        ),
        (
            "create less (false)",
            vec![Compare::create_revision("t/b", Less, 3)],
        ),
        (
            "create of a missing key",
            vec![Compare::create_revision("t/none", Equal, 0)],
        ),
        (
            "create greater",
            vec![Compare::create_revision("t/c", Greater, 4)],
        ),
        ("mod equal", vec![Compare::mod_revision("t/b", Equal, 4)]),
        (
            "mod not equal (false)",
            vec![Compare::mod_revision("t/b", NotEqual, 4)],
        ),
        ("mod less", vec![Compare::mod_revision("t/a", Less, 3)]),
        (
            "mod greater (false)",
            vec![Compare::mod_revision("t/none", Greater, 0)],
        ),
        ("lease equal 0", vec![Compare::lease("t/a", Equal, 0)]),
        (
            "lease greater (false)",
            vec![Compare::lease("t/a", Greater, 0)],
        ),
        (
            "lease of a missing key",
            vec![Compare::lease("t/none", Equal, 0)],
        ),
        (
            "lease not equal (false)",
            vec![Compare::lease("t/c", NotEqual, 0)],
        ),
        (
            "version over a prefix",
            vec![Compare::version("t/", Greater, 0).with_prefix()],
        ),
        (
            "value over a range (false)",
            vec![Compare::value("t/a", Equal, "1").with_range("t/c")],
        ),
        (
            "mod over a range",
            vec![Compare::mod_revision("t/a", Less, 100).with_range("t/z")],
        ),
        (
            "create over an empty range",
            vec![Compare::create_revision("u/", Equal, 0).with_prefix()],
        ),
        (
            "two compares, both true",
            vec![
                Compare::value("t/a", Equal, "1"),
                Compare::version("t/b", Equal, 2),
            ],
        ),
        (
            "two compares, one false",
            vec![
                Compare::value("t/a", Equal, "1"),
                Compare::version("t/b", Equal, 3),
            ],
        ),
    ];
    for (label, compares) in cases {
        p.run(
            label,
            Op::Txn(
                Txn::new()
                    .when(compares)
                    .and_then(then_ops())
                    .or_else(else_ops()),
            ),
        )
        .await;
        // Undo, so that every case starts from the same keys.
        p.run(
            &format!("{label}: cleanup"),
            Op::Txn(Txn::new().and_then(vec![
                TxnOp::delete("t/x", Some(dopt().with_prev_key())),
                TxnOp::delete("t/y", Some(dopt().with_prev_key())),
            ])),
        )
        .await;
    }

    let nested_then = Txn::new()
        .when(vec![Compare::value("t/a", Equal, "1")])
        .and_then(vec![
            TxnOp::put("t/n1", "inner-then", None),
            TxnOp::get("t/n", Some(go().with_prefix())),
        ])
        .or_else(vec![TxnOp::put("t/n1", "inner-else", None)]);
    let nested_else = Txn::new()
        .when(vec![Compare::version("t/zzz", Greater, 0)])
        .and_then(vec![TxnOp::delete("t/a", None)])
        .or_else(vec![
            TxnOp::put("t/n2", "inner-else", Some(po().with_prev_key())),
            TxnOp::txn(
                Txn::new()
                    .when(vec![Compare::mod_revision("t/n1", Equal, 0)])
                    .and_then(vec![TxnOp::get("t/n1", None)])
                    .or_else(vec![TxnOp::put("t/n3", "deep", None)]),
            ),
        ]);
    p.script(vec![
        (
            "nested txn in then",
            Op::Txn(
                Txn::new()
                    .when(vec![Compare::version("t/a", Equal, 1)])
                    .and_then(vec![
                        TxnOp::get("t/a", None),
                        TxnOp::txn(nested_then.clone()),
                        TxnOp::put("t/after", "x", None),
                        TxnOp::get("t/", Some(go().with_prefix().with_keys_only())),
                    ])
                    .or_else(vec![TxnOp::get("t/b", None)]),
            ),
        ),
        (
            "nested txns in else (compares see the pre-txn state)",
            Op::Txn(
                Txn::new()
                    .when(vec![Compare::version("t/a", Equal, 100)])
                    .and_then(vec![TxnOp::get("t/b", None)])
                    .or_else(vec![
                        TxnOp::delete("t/n1", Some(dopt().with_prev_key())),
                        TxnOp::txn(nested_else.clone()),
                        TxnOp::get("t/n", Some(go().with_prefix())),
                    ]),
            ),
        ),
        (
            "nested txn taking the other branch",
            Op::Txn(
                Txn::new()
                    .and_then(vec![TxnOp::txn(nested_else)])
                    .or_else(vec![]),
            ),
        ),
        (
            "then and else of a nested txn may put the same key",
            Op::Txn(Txn::new().and_then(vec![TxnOp::txn(nested_then)])),
        ),
        (
            "deleting a missing key first, then a put",
            Op::Txn(Txn::new().and_then(vec![
                TxnOp::delete("t/missing", None),
                TxnOp::get("t/a", None),
                TxnOp::put("t/p", "1", None),
                TxnOp::get("t/p", None),
                TxnOp::delete("t/missing", None),
            ])),
        ),
        (
            "delete then read in the same txn",
            Op::Txn(Txn::new().and_then(vec![
                TxnOp::get("t/", Some(go().with_prefix().with_count_only())),
                TxnOp::delete("t/n", Some(dopt().with_prefix().with_prev_key())),
                TxnOp::get("t/", Some(go().with_prefix().with_count_only())),
                TxnOp::put("t/q", "1", Some(po().with_prev_key())),
            ])),
        ),
        (
            "read-only txn",
            Op::Txn(
                Txn::new()
                    .when(vec![Compare::value("t/a", Equal, "1")])
                    .and_then(vec![
                        TxnOp::get("t/a", None),
                        TxnOp::get("t/", Some(go().with_prefix().with_limit(2))),
                        TxnOp::get("t/b", Some(go().with_revision(3))),
                    ]),
            ),
        ),
        ("empty txn", Op::Txn(Txn::new())),
        (
            "txn with only compares",
            Op::Txn(Txn::new().when(vec![Compare::value("t/a", Equal, "x")])),
        ),
        (
            "duplicate put in a txn",
            Op::Txn(Txn::new().and_then(vec![
                TxnOp::put("t/a", "1", None),
                TxnOp::put("t/a", "2", None),
            ])),
        ),
        (
            "put inside a deleted range in a txn",
            Op::Txn(Txn::new().and_then(vec![
                TxnOp::delete("t/", Some(dopt().with_prefix())),
                TxnOp::put("t/a", "2", None),
            ])),
        ),
        (
            "duplicate put across a nested txn",
            Op::Txn(Txn::new().and_then(vec![
                TxnOp::put("t/a", "1", None),
                TxnOp::txn(Txn::new().and_then(vec![TxnOp::put("t/a", "2", None)])),
            ])),
        ),
        (
            "duplicate put in the branch not taken",
            Op::Txn(
                Txn::new()
                    .when(vec![Compare::value("t/a", Equal, "nope")])
                    .and_then(vec![
                        TxnOp::put("t/k", "1", None),
                        TxnOp::put("t/k", "2", None),
                    ])
                    .or_else(vec![TxnOp::get("t/k", None)]),
            ),
        ),
        (
            "ignore_value on a missing key in a txn",
            Op::Txn(Txn::new().and_then(vec![TxnOp::put(
                "t/missing",
                "",
                Some(po().with_ignore_value()),
            )])),
        ),
        (
            "ignore_value on a missing key in the branch not taken",
            Op::Txn(
                Txn::new()
                    .when(vec![Compare::version("t/a", Equal, 77)])
                    .and_then(vec![TxnOp::put(
                        "t/missing",
                        "",
                        Some(po().with_ignore_value()),
                    )]),
            ),
        ),
        (
            "put with a missing lease in a txn",
            Op::Txn(Txn::new().and_then(vec![TxnOp::put("t/l", "1", Some(po().with_lease(4242)))])),
        ),
        (
            "range at a future revision in a txn",
            Op::Txn(Txn::new().and_then(vec![
                TxnOp::put("t/f", "1", None),
                TxnOp::get("t/a", Some(go().with_revision(1000))),
            ])),
        ),
        (
            "ignore_value and ignore_lease in a txn",
            Op::Txn(Txn::new().and_then(vec![
                TxnOp::put("t/a", "", Some(po().with_ignore_value().with_prev_key())),
                TxnOp::put("t/b", "bb", Some(po().with_ignore_lease())),
            ])),
        ),
        (
            "put after a from-key delete covering the key",
            Op::Txn(Txn::new().and_then(vec![
                TxnOp::delete("t/", Some(dopt().with_from_key().with_prev_key())),
                TxnOp::put("t/a", "again", Some(po().with_prev_key())),
                TxnOp::get("t/", Some(go().with_prefix())),
            ])),
        ),
        ("everything", get("t/", Some(go().with_prefix()))),
        ("hash", Op::HashKv(0)),
    ])
    .await;
    let now = p.revision().await;
    p.script(vec![
        ("compact", Op::Compact(now - 3)),
        (
            "range at a compacted revision in a txn",
            Op::Txn(Txn::new().and_then(vec![
                TxnOp::put("t/f", "2", None),
                TxnOp::get("t/a", Some(go().with_revision(2))),
            ])),
        ),
        (
            "read-only txn at a compacted revision",
            Op::Txn(Txn::new().and_then(vec![TxnOp::get("t/a", Some(go().with_revision(2)))])),
        ),
        ("hash after compaction", Op::HashKv(0)),
    ])
    .await;
}

#[tokio::test]
async fn differential_compaction_and_watch() {
    let mut p = Pair::start().await;
    p.script(vec![
        ("put w/a", put("w/a", "1", None)),       // 2
        ("put w/b", put("w/b", "1", None)),       // 3
        ("overwrite w/a", put("w/a", "2", None)), // 4
        ("delete w/b", del("w/b", None)),         // 5
        ("put w/c", put("w/c", "1", None)),       // 6
        ("recreate w/b", put("w/b", "2", None)),  // 7
        ("delete w/a", del("w/a", None)),         // 8
        ("put other", put("other/x", "1", None)), // 9
        (
            "txn writing three keys",
            Op::Txn(Txn::new().and_then(vec![
                TxnOp::put("w/d", "1", None),
                TxnOp::put("w/c", "2", None),
                TxnOp::delete("w/b", None),
            ])),
        ), // 10
        ("overwrite w/d", put("w/d", "2", None)), // 11
        ("recreate w/a", put("w/a", "3", None)),  // 12
        ("delete w/ prefix", del("w/", Some(dopt().with_prefix()))), // 13
        ("put w/e", put("w/e", "1", None)),       // 14
        ("overwrite w/e", put("w/e", "2", None)), // 15
    ])
    .await;

    p.watch(
        "prefix from revision 2 with prev_kv",
        "w/",
        WatchOptions::new()
            .with_prefix()
            .with_start_revision(2)
            .with_prev_key(),
        Some("w/zz-sentinel-1"),
    )
    .await;
    p.watch(
        "one key from revision 3 with prev_kv",
        "w/a",
        WatchOptions::new().with_start_revision(3).with_prev_key(),
        Some("w/a"),
    )
    .await;
    p.watch(
        "prefix from revision 6 without prev_kv, no deletes",
        "w/",
        WatchOptions::new()
            .with_prefix()
            .with_start_revision(6)
            .with_filters([WatchFilterType::NoDelete]),
        Some("w/zz-sentinel-2"),
    )
    .await;
    p.watch(
        "range [w/b, w/e) from revision 1, no puts",
        "w/b",
        WatchOptions::new()
            .with_range("w/e")
            .with_start_revision(1)
            .with_prev_key()
            .with_filters([WatchFilterType::NoPut]),
        None,
    )
    .await;

    let compact_at = 10;
    let now = p.revision().await;
    p.script(vec![
        ("hash at 9 before compaction", Op::HashKv(9)),
        ("hash at 10 before compaction", Op::HashKv(10)),
        ("compact at 10", Op::Compact(compact_at)),
        (
            "read at 9",
            get("w/", Some(go().with_prefix().with_revision(9))),
        ),
        ("read at 2", get("w/a", Some(go().with_revision(2)))),
        (
            "read at 10",
            get("", Some(go().with_all_keys().with_revision(10))),
        ),
        (
            "read at 11",
            get("", Some(go().with_all_keys().with_revision(11))),
        ),
        (
            "count at 12",
            get(
                "",
                Some(go().with_all_keys().with_revision(12).with_count_only()),
            ),
        ),
        ("compact again at 10", Op::Compact(compact_at)),
        ("compact at 5", Op::Compact(5)),
        ("compact in the future", Op::Compact(now + 10)),
        ("hash now", Op::HashKv(0)),
        ("hash at 10 (compacted)", Op::HashKv(10)),
        ("hash at 11", Op::HashKv(11)),
        ("hash at 13", Op::HashKv(13)),
    ])
    .await;
    p.watch(
        "from a compacted revision",
        "w/",
        WatchOptions::new()
            .with_prefix()
            .with_start_revision(5)
            .with_prev_key(),
        None,
    )
    .await;
    p.watch(
        "from exactly the compaction revision with prev_kv",
        "w/",
        WatchOptions::new()
            .with_prefix()
            .with_start_revision(compact_at)
            .with_prev_key(),
        Some("w/zz-sentinel-3"),
    )
    .await;
    p.watch(
        "everything from the revision after compaction with prev_kv",
        "",
        WatchOptions::new()
            .with_all_keys()
            .with_start_revision(compact_at + 1)
            .with_prev_key(),
        Some("w/zz-sentinel-4"),
    )
    .await;
    let now = p.revision().await;
    p.watch(
        "from the next revision",
        "w/",
        WatchOptions::new()
            .with_prefix()
            .with_start_revision(now + 1)
            .with_prev_key(),
        Some("w/zz-sentinel-5"),
    )
    .await;
    let now = p.revision().await;
    p.script(vec![
        ("compact at now", Op::Compact(now)),
        (
            "everything after compacting all",
            get("", Some(go().with_all_keys())),
        ),
        ("hash after compacting all", Op::HashKv(0)),
        (
            "read at the compaction revision",
            get("", Some(go().with_all_keys().with_revision(now))),
        ),
        (
            "read before it",
            get("", Some(go().with_all_keys().with_revision(now - 1))),
        ),
        (
            "write after compaction",
            put("w/a", "4", Some(po().with_prev_key())),
        ),
        ("hash after a write", Op::HashKv(0)),
        ("hash at the compaction revision", Op::HashKv(now)),
    ])
    .await;
}

#[tokio::test]
async fn differential_leases() {
    let mut p = Pair::start().await;
    p.script(vec![
        ("grant 1001", Op::Grant { ttl: 600, id: 1001 }),
        ("grant 1002", Op::Grant { ttl: 300, id: 1002 }),
        ("grant 1001 again", Op::Grant { ttl: 60, id: 1001 }),
        (
            "grant a too large ttl",
            Op::Grant {
                ttl: 9_000_000_001,
                id: 1003,
            },
        ),
        ("leases", Op::Leases),
        (
            "put l/a on 1001",
            put("l/a", "a", Some(po().with_lease(1001))),
        ),
        (
            "put l/b on 1001",
            put("l/b", "b", Some(po().with_lease(1001).with_prev_key())),
        ),
        (
            "put l/c on 1002",
            put("l/c", "c", Some(po().with_lease(1002))),
        ),
        ("put l/d without lease", put("l/d", "d", None)),
        (
            "put on a missing lease",
            put("l/e", "e", Some(po().with_lease(9999))),
        ),
        ("keys with leases", get("l/", Some(go().with_prefix()))),
        ("ttl 1001", Op::TimeToLive(1001)),
        ("ttl 1002", Op::TimeToLive(1002)),
        ("ttl of a missing lease", Op::TimeToLive(9999)),
        (
            "move l/b to 1002",
            put("l/b", "b2", Some(po().with_lease(1002).with_prev_key())),
        ),
        (
            "l/a keeps its lease with ignore_lease",
            put("l/a", "a2", Some(po().with_ignore_lease().with_prev_key())),
        ),
        (
            "l/d joins 1001",
            put("l/d", "", Some(po().with_ignore_value().with_lease(1001))),
        ),
        (
            "compare lease",
            Op::Txn(
                Txn::new()
                    .when(vec![
                        Compare::lease("l/a", CompareOp::Equal, 1001),
                        Compare::lease("l/c", CompareOp::Greater, 1001),
                    ])
                    .and_then(vec![TxnOp::put("l/t", "then", Some(po().with_lease(1002)))])
                    .or_else(vec![TxnOp::put("l/t", "else", None)]),
            ),
        ),
        (
            "compare lease (false)",
            Op::Txn(
                Txn::new()
                    .when(vec![Compare::lease("l/d", CompareOp::Less, 1001)])
                    .and_then(vec![TxnOp::put("l/u", "then", None)])
                    .or_else(vec![TxnOp::put("l/u", "else", Some(po().with_lease(1001)))]),
            ),
        ),
        ("ttl 1001 after moves", Op::TimeToLive(1001)),
        ("ttl 1002 after moves", Op::TimeToLive(1002)),
        ("delete l/c", del("l/c", Some(dopt().with_prev_key()))),
        ("ttl 1002 after delete", Op::TimeToLive(1002)),
        (
            "drop the lease of l/u",
            put("l/u", "u", Some(po().with_prev_key())),
        ),
        ("ttl 1001 before revoke", Op::TimeToLive(1001)),
        ("hash before revoke", Op::HashKv(0)),
    ])
    .await;
    let before_revoke = p.revision().await;
    p.script(vec![
        ("revoke 1001", Op::Revoke(1001)),
        ("keys after revoke", get("l/", Some(go().with_prefix()))),
        ("ttl of the revoked lease", Op::TimeToLive(1001)),
        ("revoke 1001 again", Op::Revoke(1001)),
        ("leases after revoke", Op::Leases),
        (
            "put on the revoked lease",
            put("l/a", "x", Some(po().with_lease(1001))),
        ),
        ("revoke 1002", Op::Revoke(1002)),
        ("grant 1004", Op::Grant { ttl: 100, id: 1004 }),
        ("revoke 1004 (no keys)", Op::Revoke(1004)),
        ("leases at the end", Op::Leases),
        ("keys at the end", get("l/", Some(go().with_prefix()))),
        ("hash after revokes", Op::HashKv(0)),
        ("hash before revokes", Op::HashKv(before_revoke)),
    ])
    .await;
    p.watch(
        "the revokes, with prev_kv",
        "l/",
        WatchOptions::new()
            .with_prefix()
            .with_start_revision(before_revoke)
            .with_prev_key(),
        Some("l/zz-sentinel"),
    )
    .await;
}

// ----- a randomized sequence ---------------------------------------------------------------

/// SplitMix64: a tiny deterministic generator, so the sequence depends on the seed only.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const KEYS: [&str; 6] = ["r/a", "r/b", "r/c", "r/d", "r/e", "r/f"];
const VALUES: [&str; 4] = ["0", "1", "2", "3"];
/// Leases granted at the start (and re-granted after each revoke); 13 never exists.
const LEASES: [i64; 3] = [11, 12, 13];

fn random_get_options(rng: &mut Rng, current: i64) -> (String, GetOptions) {
    let key = rng.pick(&KEYS).to_string();
    let mut o = go();
    let key = match rng.below(4) {
        0 => key,
        1 => {
            o = o.with_prefix();
            "r/".to_owned()
        }
        2 => {
            o = o.with_range(rng.pick(&KEYS).to_string());
            key
        }
        _ => {
            o = o.with_from_key();
            key
        }
    };
    if rng.chance(40) {
        o = o.with_limit(rng.below(4) as i64);
    }
    if rng.chance(30) {
        let t = *rng.pick(&[
            SortTarget::Key,
            SortTarget::Version,
            SortTarget::Create,
            SortTarget::Mod,
            SortTarget::Value,
        ]);
        let ord = *rng.pick(&[SortOrder::None, SortOrder::Ascend, SortOrder::Descend]);
        o = o.with_sort(t, ord);
    }
    if rng.chance(10) {
        o = o.with_keys_only();
    }
    if rng.chance(10) {
        o = o.with_count_only();
    }
    if rng.chance(25) {
        o = o.with_revision(1 + rng.below(current as u64 + 1) as i64);
    }
    if rng.chance(15) {
        let r = rng.below(current as u64 + 1) as i64;
        o = match rng.below(4) {
            0 => o.with_min_mod_revision(r),
            1 => o.with_max_mod_revision(r),
            2 => o.with_min_create_revision(r),
            _ => o.with_max_create_revision(r),
        };
    }
    (key, o)
}

fn random_compare(rng: &mut Rng, current: i64) -> Compare {
    let key = *rng.pick(&KEYS);
    let op = *rng.pick(&[
        CompareOp::Equal,
        CompareOp::Greater,
        CompareOp::Less,
        CompareOp::NotEqual,
    ]);
    let c = match rng.below(5) {
        0 => Compare::value(key, op, *rng.pick(&VALUES)),
        1 => Compare::version(key, op, rng.below(4) as i64),
        2 => Compare::create_revision(key, op, rng.below(current as u64 + 1) as i64),
        3 => Compare::mod_revision(key, op, rng.below(current as u64 + 1) as i64),
        _ => Compare::lease(key, op, 0),
    };
    if rng.chance(15) { c.with_prefix() } else { c }
}

fn random_txn_ops(rng: &mut Rng, current: i64, depth: u32) -> Vec<TxnOp> {
    (0..rng.below(4))
        .map(|_| match rng.below(if depth < 2 { 7 } else { 6 }) {
            0 | 1 => {
                let mut o = po();
                if rng.chance(40) {
                    o = o.with_prev_key();
                }
                if rng.chance(15) {
                    o = o.with_lease(*rng.pick(&LEASES));
                }
                TxnOp::put(*rng.pick(&KEYS), *rng.pick(&VALUES), Some(o))
            }
            2 => {
                let mut o = dopt();
                if rng.chance(40) {
                    o = o.with_prev_key();
                }
                match rng.below(10) {
                    0 | 1 => o = o.with_range(*rng.pick(&KEYS)),
                    // A from-key delete: etcd's duplicate-key check does not see it covering a
                    // put of the same txn.
                    2 => o = o.with_from_key(),
                    _ => {}
                }
                TxnOp::delete(*rng.pick(&KEYS), Some(o))
            }
            3..=5 => {
                let (k, o) = random_get_options(rng, current);
                TxnOp::get(k, Some(o))
            }
            _ => TxnOp::txn(random_txn(rng, current, depth + 1)),
        })
        .collect()
}

fn random_txn(rng: &mut Rng, current: i64, depth: u32) -> Txn {
    let compares: Vec<Compare> = (0..rng.below(3))
        .map(|_| random_compare(rng, current))
        .collect();
    Txn::new()
        .when(compares)
        .and_then(random_txn_ops(rng, current, depth))
        .or_else(random_txn_ops(rng, current, depth))
}

#[tokio::test]
async fn differential_randomized_sequence() {
    // Another seed can be tried with CHAINFIRE_DIFF_SEED=<n>.
    let seed = std::env::var("CHAINFIRE_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00C0_FFEE_D1FF_u64);
    const STEPS: usize = 400;
    let mut p = Pair::start().await;
    for id in &LEASES[..2] {
        p.run("grant", Op::Grant { ttl: 600, id: *id }).await;
    }
    let mut rng = Rng(seed);
    let mut current = 1i64;
    let mut compacted = 0i64;
    for step in 0..STEPS {
        let (label, op) = match rng.below(100) {
            0..=26 => {
                let mut o = po();
                if rng.chance(30) {
                    o = o.with_prev_key();
                }
                let value = *rng.pick(&VALUES);
                if rng.chance(15) {
                    o = o.with_lease(*rng.pick(&LEASES));
                }
                if rng.chance(5) {
                    o = o.with_ignore_value();
                    let key = *rng.pick(&KEYS);
                    ("put ignore_value", put(key, "", Some(o)))
                } else {
                    let key = *rng.pick(&KEYS);
                    ("put", put(key, value, Some(o)))
                }
            }
            27..=39 => {
                let mut o = dopt();
                if rng.chance(40) {
                    o = o.with_prev_key();
                }
                let key = *rng.pick(&KEYS);
                match rng.below(4) {
                    0 => ("delete prefix", del("r/", Some(o.with_prefix()))),
                    1 => (
                        "delete range",
                        del(key, Some(o.with_range(*rng.pick(&KEYS)))),
                    ),
                    _ => ("delete", del(key, Some(o))),
                }
            }
            40..=63 => ("txn", Op::Txn(random_txn(&mut rng, current, 0))),
            64..=85 => {
                let (k, o) = random_get_options(&mut rng, current);
                ("range", Op::Get(k, Some(o)))
            }
            86..=89 => {
                // Mostly a step forward (at most half-way to the current revision), sometimes
                // at or before the last compaction (an error).
                let r = if rng.chance(80) && current > compacted {
                    compacted + 1 + rng.below(((current - compacted) / 2).max(1) as u64) as i64
                } else {
                    1 + rng.below(compacted.max(1) as u64) as i64
                };
                ("compact", Op::Compact(r))
            }
            90..=91 => ("lease ttl", Op::TimeToLive(*rng.pick(&LEASES))),
            92..=93 => {
                // Revoke (deleting the attached keys), then grant the same id again.
                let id = *rng.pick(&LEASES[..2]);
                p.run(
                    &format!("random #{step} (seed {seed}): revoke {id}"),
                    Op::Revoke(id),
                )
                .await;
                ("grant again", Op::Grant { ttl: 600, id })
            }
            _ => {
                let r = match rng.below(10) {
                    0 => 0,
                    // Anything, compacted and future revisions included.
                    1 => rng.below(current as u64 + 2) as i64,
                    _ => compacted + 1 + rng.below((current - compacted).max(1) as u64) as i64,
                };
                ("hash", Op::HashKv(r))
            }
        };
        let r = p
            .run(
                &format!("random #{step} (seed {seed}): {label}"),
                op.clone(),
            )
            .await;
        if let Op::Compact(rev) = op
            && !matches!(r, R::Error { .. })
        {
            compacted = rev;
        }
        if let Some(rev) = r.revision() {
            current = current.max(rev);
        }
    }
    p.script(vec![
        ("final keys", get("", Some(go().with_all_keys()))),
        ("final hash", Op::HashKv(0)),
    ])
    .await;
    p.watch(
        "history since the last compaction",
        "r/",
        WatchOptions::new()
            .with_prefix()
            .with_start_revision(compacted.max(1))
            .with_prev_key(),
        Some("r/zz-sentinel"),
    )
    .await;
}
