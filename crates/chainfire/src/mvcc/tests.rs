//! Unit tests of the MVCC core. Expected values follow etcd 3.4/3.5; the ones marked
//! "etcd 3.4.23" were observed on a real etcd server given the same requests.

use super::hash::{Crc32c, encode_kv};
use super::*;

// ----- helpers ---------------------------------------------------------------------------

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn put_req(k: &str, v: &str) -> PutRequest {
    PutRequest {
        key: b(k),
        value: b(v),
        ..PutRequest::default()
    }
}

fn put(k: &str, v: &str) -> Command {
    Command::Put(put_req(k, v))
}

fn put_lease(k: &str, v: &str, lease: i64) -> Command {
    Command::Put(PutRequest {
        lease,
        ..put_req(k, v)
    })
}

fn del_req(k: &str, end: &[u8]) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: b(k),
        range_end: end.to_vec(),
        prev_kv: false,
    }
}

fn del(k: &str) -> Command {
    Command::DeleteRange(del_req(k, b""))
}

fn del_range(k: &str, end: &[u8]) -> Command {
    Command::DeleteRange(del_req(k, end))
}

fn rng(k: &str, end: &[u8]) -> RangeRequest {
    RangeRequest {
        key: b(k),
        range_end: end.to_vec(),
        ..RangeRequest::default()
    }
}

fn ok(s: &mut Store, cmd: Command) -> (CommandResult, Vec<Event>) {
    let (r, ev) = s.apply(&cmd);
    (r.unwrap_or_else(|e| panic!("{cmd:?} failed: {e}")), ev)
}

fn err(s: &mut Store, cmd: Command) -> MvccError {
    let before = s.clone();
    let (r, ev) = s.apply(&cmd);
    let e = r.expect_err("command should fail");
    assert!(ev.is_empty(), "a failed command produced events");
    assert_eq!(*s, before, "a failed command changed the store");
    e
}

fn get(s: &Store, k: &str) -> Option<KeyValue> {
    s.range(&rng(k, b"")).unwrap().kvs.into_iter().next()
}

fn get_at(s: &Store, k: &str, rev: i64) -> Result<Option<KeyValue>, MvccError> {
    s.range(&RangeRequest {
        revision: rev,
        ..rng(k, b"")
    })
    .map(|r| r.kvs.into_iter().next())
}

fn keys(r: &RangeResponse) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect()
}

fn kv(k: &str, v: &str, create: i64, modr: i64, ver: i64, lease: i64) -> KeyValue {
    KeyValue {
        key: b(k),
        create_revision: create,
        mod_revision: modr,
        version: ver,
        value: b(v),
        lease,
    }
}

fn tombstone(k: &str, rev: i64) -> KeyValue {
    KeyValue {
        key: b(k),
        mod_revision: rev,
        ..KeyValue::default()
    }
}

fn cmp(key: &str, result: CompareResult, target: CompareTarget) -> Compare {
    Compare {
        result,
        target,
        key: b(key),
        range_end: Vec::new(),
    }
}

fn txn(compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        compare,
        success,
        failure,
    }
}

fn txn_resp(r: CommandResult) -> TxnResponse {
    match r {
        CommandResult::Txn(t) => t,
        other => panic!("not a txn result: {other:?}"),
    }
}

fn range_resp(r: &ResponseOp) -> &RangeResponse {
    match r {
        ResponseOp::Range(r) => r,
        other => panic!("not a range response: {other:?}"),
    }
}

// ----- revisions and versions ------------------------------------------------------------

#[test]
fn empty_store() {
    let s = Store::new();
    assert_eq!(s.current_revision(), 1);
    assert_eq!(s.compacted_revision(), 0);
    assert_eq!(s.key_count(), 0);
    assert!(s.leases().is_empty());
    let r = s.range(&rng("\0", b"\0")).unwrap();
    assert_eq!((r.kvs.len(), r.count, r.more), (0, 0, false));
    // etcd 3.4.23 on a fresh cluster: hash 1084519789, compact_revision -1.
    assert_eq!(s.hash_kv(0).unwrap(), (1_084_519_789, -1));
}

#[test]
fn put_put_delete_put_sequence() {
    let mut s = Store::new();
    let (r, ev) = ok(&mut s, put("foo", "a"));
    assert_eq!(r, CommandResult::Put(PutResponse { prev_kv: None }));
    assert_eq!(s.current_revision(), 2);
    assert_eq!(
        ev,
        vec![Event {
            kind: EventKind::Put,
            kv: kv("foo", "a", 2, 2, 1, 0),
            prev_kv: None
        }]
    );

    let (_, ev) = ok(&mut s, put("foo", "b"));
    assert_eq!(s.current_revision(), 3);
    assert_eq!(ev[0].kv, kv("foo", "b", 2, 3, 2, 0));
    assert_eq!(ev[0].prev_kv, Some(kv("foo", "a", 2, 2, 1, 0)));

    let (r, ev) = ok(&mut s, del("foo"));
    assert_eq!(
        r,
        CommandResult::DeleteRange(DeleteRangeResponse {
            deleted: 1,
            prev_kvs: vec![]
        })
    );
    assert_eq!(s.current_revision(), 4);
    assert_eq!(
        ev,
        vec![Event {
            kind: EventKind::Delete,
            kv: tombstone("foo", 4),
            prev_kv: Some(kv("foo", "b", 2, 3, 2, 0)),
        }]
    );
    assert_eq!(get(&s, "foo"), None);
    assert_eq!(s.key_count(), 0);

    let (_, ev) = ok(&mut s, put("foo", "c"));
    assert_eq!(s.current_revision(), 5);
    // Recreated: new create_revision, version restarts at 1, and a create event has no prev_kv.
    assert_eq!(ev[0].kv, kv("foo", "c", 5, 5, 1, 0));
    assert_eq!(ev[0].prev_kv, None);
    assert_eq!(s.key_count(), 1);

    // History.
    assert_eq!(get_at(&s, "foo", 1).unwrap(), None);
    assert_eq!(
        get_at(&s, "foo", 2).unwrap(),
        Some(kv("foo", "a", 2, 2, 1, 0))
    );
    assert_eq!(
        get_at(&s, "foo", 3).unwrap(),
        Some(kv("foo", "b", 2, 3, 2, 0))
    );
    assert_eq!(get_at(&s, "foo", 4).unwrap(), None);
    assert_eq!(
        get_at(&s, "foo", 5).unwrap(),
        Some(kv("foo", "c", 5, 5, 1, 0))
    );
    assert_eq!(get_at(&s, "foo", 6), Err(MvccError::FutureRevision));
}

#[test]
fn put_same_value_bumps_revision_and_version() {
    let mut s = Store::new();
    ok(&mut s, put("k", "v"));
    ok(&mut s, put("k", "v"));
    assert_eq!(s.current_revision(), 3);
    assert_eq!(get(&s, "k").unwrap(), kv("k", "v", 2, 3, 2, 0));
}

#[test]
fn delete_nothing_does_not_bump() {
    let mut s = Store::new();
    ok(&mut s, put("a", "1"));
    let (r, ev) = ok(&mut s, del("missing"));
    assert_eq!(
        r,
        CommandResult::DeleteRange(DeleteRangeResponse {
            deleted: 0,
            prev_kvs: vec![]
        })
    );
    assert!(ev.is_empty());
    assert_eq!(s.current_revision(), 2);
    ok(&mut s, del("a"));
    assert_eq!(s.current_revision(), 3);
    // Deleting an already deleted key: nothing.
    ok(&mut s, del("a"));
    assert_eq!(s.current_revision(), 3);
}

#[test]
fn delete_range_counts_prev_kvs_and_events() {
    let mut s = Store::new();
    for k in ["a", "b", "c", "d"] {
        ok(&mut s, put(k, k));
    }
    let (r, ev) = ok(
        &mut s,
        Command::DeleteRange(DeleteRangeRequest {
            key: b("b"),
            range_end: b("d"),
            prev_kv: true,
        }),
    );
    assert_eq!(
        r,
        CommandResult::DeleteRange(DeleteRangeResponse {
            deleted: 2,
            prev_kvs: vec![kv("b", "b", 3, 3, 1, 0), kv("c", "c", 4, 4, 1, 0)],
        })
    );
    assert_eq!(s.current_revision(), 6);
    assert_eq!(
        ev.iter()
            .map(|e| (e.kind, e.kv.clone()))
            .collect::<Vec<_>>(),
        vec![
            (EventKind::Delete, tombstone("b", 6)),
            (EventKind::Delete, tombstone("c", 6))
        ]
    );
    assert_eq!(keys(&s.range(&rng("\0", b"\0")).unwrap()), ["a", "d"]);
    // From-key delete.
    let (r, _) = ok(&mut s, del_range("b", b"\0"));
    assert_eq!(
        r,
        CommandResult::DeleteRange(DeleteRangeResponse {
            deleted: 1,
            prev_kvs: vec![]
        })
    );
    assert_eq!(s.key_count(), 1);
}

// ----- range -----------------------------------------------------------------------------

fn abc_store() -> Store {
    // rev 2: a, 3: b, 4: c, 5: a again, 6: d, 7: b again, 8: b again.
    let mut s = Store::new();
    ok(&mut s, put("a", "3"));
    ok(&mut s, put("b", "1"));
    ok(&mut s, put("c", "2"));
    ok(&mut s, put("a", "5"));
    ok(&mut s, put("d", "0"));
    ok(&mut s, put("b", "4"));
    ok(&mut s, put("b", "6"));
    s
}

#[test]
fn range_key_encodings() {
    let s = abc_store();
    assert_eq!(keys(&s.range(&rng("b", b"")).unwrap()), ["b"]);
    assert_eq!(
        keys(&s.range(&rng("bb", b"")).unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(keys(&s.range(&rng("b", b"d")).unwrap()), ["b", "c"]);
    assert_eq!(keys(&s.range(&rng("b", b"\0")).unwrap()), ["b", "c", "d"]);
    assert_eq!(
        keys(&s.range(&rng("\0", b"\0")).unwrap()),
        ["a", "b", "c", "d"]
    );
    // range_end <= key: nothing.
    assert_eq!(s.range(&rng("c", b"b")).unwrap().count, 0);
    assert_eq!(s.range(&rng("c", b"c")).unwrap().count, 0);
    assert_eq!(s.range(&rng("", b"")), Err(MvccError::EmptyKey));
}

#[test]
fn range_revisions() {
    let mut s = abc_store();
    let at = |s: &Store, rev: i64| {
        s.range(&RangeRequest {
            revision: rev,
            ..rng("\0", b"\0")
        })
    };
    assert_eq!(keys(&at(&s, 3).unwrap()), ["a", "b"]);
    assert_eq!(at(&s, 3).unwrap().kvs[0], kv("a", "3", 2, 2, 1, 0));
    assert_eq!(at(&s, 9), Err(MvccError::FutureRevision));
    // Negative revisions read the current revision (etcd: rev <= 0).
    assert_eq!(at(&s, -3).unwrap().count, 4);
    ok(&mut s, Command::Compact { revision: 5 });
    assert_eq!(at(&s, 4), Err(MvccError::Compacted));
    assert_eq!(keys(&at(&s, 5).unwrap()), ["a", "b", "c"]);
    assert_eq!(at(&s, 5).unwrap().kvs[1], kv("b", "1", 3, 3, 1, 0));
}

#[test]
fn range_limit_more_count() {
    let s = abc_store();
    let r = s
        .range(&RangeRequest {
            limit: 2,
            ..rng("\0", b"\0")
        })
        .unwrap();
    assert_eq!(
        (keys(&r), r.more, r.count),
        (vec![b_s("a"), b_s("b")], true, 4)
    );
    let r = s
        .range(&RangeRequest {
            limit: 4,
            ..rng("\0", b"\0")
        })
        .unwrap();
    assert_eq!((r.kvs.len(), r.more, r.count), (4, false, 4));
    let r = s
        .range(&RangeRequest {
            limit: -1,
            ..rng("\0", b"\0")
        })
        .unwrap();
    assert_eq!((r.kvs.len(), r.more, r.count), (4, false, 4));
    // count_only: count of everything, no kvs, more false even with a limit.
    let r = s
        .range(&RangeRequest {
            count_only: true,
            limit: 1,
            ..rng("\0", b"\0")
        })
        .unwrap();
    assert_eq!((r.kvs.len(), r.more, r.count), (0, false, 4));
}

fn b_s(s: &str) -> String {
    s.to_string()
}

#[test]
fn range_sort_every_target() {
    let s = abc_store();
    // a: v"5" create 2 mod 5 ver 2; b: v"6" create 3 mod 8 ver 3; c: v"2" create 4 mod 4 ver 1;
    // d: v"0" create 6 mod 6 ver 1.
    let sorted = |order: SortOrder, target: SortTarget| {
        keys(
            &s.range(&RangeRequest {
                sort_order: order,
                sort_target: target,
                ..rng("\0", b"\0")
            })
            .unwrap(),
        )
    };
    use SortOrder::{Ascend, Descend};
    assert_eq!(sorted(Ascend, SortTarget::Key), ["a", "b", "c", "d"]);
    assert_eq!(sorted(Descend, SortTarget::Key), ["d", "c", "b", "a"]);
    assert_eq!(sorted(Ascend, SortTarget::Value), ["d", "c", "a", "b"]);
    assert_eq!(sorted(Descend, SortTarget::Value), ["b", "a", "c", "d"]);
    assert_eq!(sorted(Ascend, SortTarget::Create), ["a", "b", "c", "d"]);
    assert_eq!(sorted(Descend, SortTarget::Create), ["d", "c", "b", "a"]);
    assert_eq!(sorted(Ascend, SortTarget::Mod), ["c", "a", "d", "b"]);
    assert_eq!(sorted(Descend, SortTarget::Mod), ["b", "d", "a", "c"]);
    // Ties (c and d both version 1) keep key order.
    assert_eq!(sorted(Ascend, SortTarget::Version), ["c", "d", "a", "b"]);
    assert_eq!(sorted(Descend, SortTarget::Version), ["b", "a", "c", "d"]);
    // Order None with a non-key target means ascend.
    assert_eq!(
        sorted(SortOrder::None, SortTarget::Mod),
        ["c", "a", "d", "b"]
    );
    assert_eq!(
        sorted(SortOrder::None, SortTarget::Key),
        ["a", "b", "c", "d"]
    );
}

#[test]
fn range_sort_happens_before_limit() {
    let s = abc_store();
    let r = s
        .range(&RangeRequest {
            sort_order: SortOrder::Descend,
            sort_target: SortTarget::Mod,
            limit: 2,
            ..rng("\0", b"\0")
        })
        .unwrap();
    assert_eq!(
        (keys(&r), r.more, r.count),
        (vec![b_s("b"), b_s("d")], true, 4)
    );
    // etcd quirk: with order None and a non-key target the limit is applied to the index scan
    // first (only limit+1 keys in key order are fetched), then those are sorted.
    let r = s
        .range(&RangeRequest {
            sort_order: SortOrder::None,
            sort_target: SortTarget::Value,
            limit: 2,
            ..rng("\0", b"\0")
        })
        .unwrap();
    // a,b,c fetched (values 5,6,2) → sorted c,a,b → truncated to c,a.
    assert_eq!(
        (keys(&r), r.more, r.count),
        (vec![b_s("c"), b_s("a")], true, 4)
    );
}

#[test]
fn range_keys_only_and_filters() {
    let s = abc_store();
    let r = s
        .range(&RangeRequest {
            keys_only: true,
            ..rng("\0", b"\0")
        })
        .unwrap();
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));
    assert_eq!(r.kvs[1], kv("b", "", 3, 8, 3, 0));
    // keys_only with a value sort still sorts by the real values.
    let r = s
        .range(&RangeRequest {
            keys_only: true,
            sort_order: SortOrder::Ascend,
            sort_target: SortTarget::Value,
            ..rng("\0", b"\0")
        })
        .unwrap();
    assert_eq!(keys(&r), ["d", "c", "a", "b"]);
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));

    let filt = |f: fn(&mut RangeRequest), limit: i64| {
        let mut req = RangeRequest {
            limit,
            ..rng("\0", b"\0")
        };
        f(&mut req);
        s.range(&req).unwrap()
    };
    // mod revisions: a 5, b 8, c 4, d 6; create: a 2, b 3, c 4, d 6.
    let r = filt(|r| r.min_mod_revision = 5, 0);
    assert_eq!((keys(&r), r.count), (vec![b_s("a"), b_s("b"), b_s("d")], 4));
    let r = filt(|r| r.max_mod_revision = 5, 0);
    assert_eq!(keys(&r), ["a", "c"]);
    let r = filt(|r| r.min_create_revision = 4, 0);
    assert_eq!(keys(&r), ["c", "d"]);
    let r = filt(|r| r.max_create_revision = 3, 0);
    assert_eq!(keys(&r), ["a", "b"]);
    let r = filt(
        |r| {
            r.min_mod_revision = 5;
            r.max_create_revision = 3;
        },
        0,
    );
    assert_eq!(keys(&r), ["a", "b"]);
    // Filters apply before the limit; `more` is about the filtered list, `count` is not.
    let r = filt(|r| r.min_mod_revision = 5, 2);
    assert_eq!(
        (keys(&r), r.more, r.count),
        (vec![b_s("a"), b_s("b")], true, 4)
    );
    let r = filt(|r| r.min_mod_revision = 6, 2);
    assert_eq!(
        (keys(&r), r.more, r.count),
        (vec![b_s("b"), b_s("d")], false, 4)
    );
}

// ----- put -------------------------------------------------------------------------------

#[test]
fn put_validation_errors() {
    let mut s = Store::new();
    assert_eq!(err(&mut s, put("", "v")), MvccError::EmptyKey);
    assert_eq!(err(&mut s, del("")), MvccError::EmptyKey);
    assert_eq!(
        err(&mut s, put_lease("k", "v", 7)),
        MvccError::LeaseNotFound
    );
    let ignore_value = |v: &str| {
        Command::Put(PutRequest {
            ignore_value: true,
            ..put_req("k", v)
        })
    };
    let ignore_lease = |lease: i64| {
        Command::Put(PutRequest {
            ignore_lease: true,
            lease,
            ..put_req("k", "new")
        })
    };
    assert_eq!(err(&mut s, ignore_value("x")), MvccError::ValueProvided);
    assert_eq!(err(&mut s, ignore_lease(5)), MvccError::LeaseProvided);
    assert_eq!(err(&mut s, ignore_value("")), MvccError::KeyNotFound);
    assert_eq!(err(&mut s, ignore_lease(0)), MvccError::KeyNotFound);
    assert_eq!(s.current_revision(), 1);
}

#[test]
fn put_ignore_value_ignore_lease_prev_kv() {
    let mut s = Store::new();
    ok(&mut s, Command::LeaseGrant { id: 7, ttl: 30 });
    ok(&mut s, put_lease("k", "v1", 7));
    // ignore_value keeps the value; the lease given replaces the old one.
    let (r, _) = ok(
        &mut s,
        Command::Put(PutRequest {
            ignore_value: true,
            prev_kv: true,
            ..put_req("k", "")
        }),
    );
    assert_eq!(
        r,
        CommandResult::Put(PutResponse {
            prev_kv: Some(kv("k", "v1", 2, 2, 1, 7))
        })
    );
    assert_eq!(get(&s, "k").unwrap(), kv("k", "v1", 2, 3, 2, 0));
    assert!(s.lease(7).unwrap().keys.is_empty());
    ok(&mut s, put_lease("k", "v2", 7));
    // ignore_lease keeps the lease, takes the new value.
    ok(
        &mut s,
        Command::Put(PutRequest {
            ignore_lease: true,
            ..put_req("k", "v3")
        }),
    );
    assert_eq!(get(&s, "k").unwrap(), kv("k", "v3", 2, 5, 4, 7));
    assert_eq!(s.lease(7).unwrap().keys, vec![b("k")]);
    // prev_kv on a new key: none.
    let (r, _) = ok(
        &mut s,
        Command::Put(PutRequest {
            prev_kv: true,
            ..put_req("new", "x")
        }),
    );
    assert_eq!(r, CommandResult::Put(PutResponse { prev_kv: None }));
}

// ----- leases ----------------------------------------------------------------------------

#[test]
fn lease_grant_errors() {
    let mut s = Store::new();
    let (r, ev) = ok(&mut s, Command::LeaseGrant { id: 1, ttl: 10 });
    assert_eq!(r, CommandResult::LeaseGrant { id: 1, ttl: 10 });
    assert!(ev.is_empty());
    assert_eq!(
        s.current_revision(),
        1,
        "lease grant does not bump the revision"
    );
    assert_eq!(
        err(&mut s, Command::LeaseGrant { id: 1, ttl: 5 }),
        MvccError::LeaseExists
    );
    assert_eq!(
        err(&mut s, Command::LeaseGrant { id: 0, ttl: 5 }),
        MvccError::LeaseNotFound
    );
    assert_eq!(
        err(
            &mut s,
            Command::LeaseGrant {
                id: 2,
                ttl: MAX_LEASE_TTL + 1
            }
        ),
        MvccError::LeaseTtlTooLarge
    );
    ok(
        &mut s,
        Command::LeaseGrant {
            id: 2,
            ttl: MAX_LEASE_TTL,
        },
    );
    assert_eq!(
        err(&mut s, Command::LeaseRevoke { id: 3 }),
        MvccError::LeaseNotFound
    );
    assert_eq!(
        s.leases().iter().map(|l| (l.id, l.ttl)).collect::<Vec<_>>(),
        vec![(1, 10), (2, MAX_LEASE_TTL)]
    );
}

#[test]
fn lease_attach_detach_and_revoke() {
    let mut s = Store::new();
    ok(&mut s, Command::LeaseGrant { id: 20, ttl: 10 });
    ok(&mut s, Command::LeaseGrant { id: 10, ttl: 10 });
    assert_eq!(
        s.leases().iter().map(|l| l.id).collect::<Vec<_>>(),
        [10, 20]
    );
    ok(&mut s, put_lease("z", "1", 10)); // rev 2
    ok(&mut s, put_lease("a", "1", 10)); // rev 3
    ok(&mut s, put_lease("m", "1", 10)); // rev 4
    ok(&mut s, put_lease("x", "1", 20)); // rev 5
    assert_eq!(s.lease(10).unwrap().keys, vec![b("a"), b("m"), b("z")]);
    // A put moves the key to the new lease; a put without lease detaches it.
    ok(&mut s, put_lease("m", "2", 20)); // rev 6
    ok(&mut s, put("x", "2")); // rev 7
    assert_eq!(s.lease(10).unwrap().keys, vec![b("a"), b("z")]);
    assert_eq!(s.lease(20).unwrap().keys, vec![b("m")]);
    assert_eq!(get(&s, "x").unwrap().lease, 0);
    // A delete detaches.
    ok(&mut s, del("z")); // rev 8
    assert_eq!(s.lease(10).unwrap().keys, vec![b("a")]);
    ok(&mut s, put_lease("b", "1", 10)); // rev 9

    // Revoke: all attached keys deleted in one revision, in key order.
    let (r, ev) = ok(&mut s, Command::LeaseRevoke { id: 10 });
    assert_eq!(r, CommandResult::LeaseRevoke);
    assert_eq!(s.current_revision(), 10);
    assert_eq!(
        ev,
        vec![
            Event {
                kind: EventKind::Delete,
                kv: tombstone("a", 10),
                prev_kv: Some(kv("a", "1", 3, 3, 1, 10)),
            },
            Event {
                kind: EventKind::Delete,
                kv: tombstone("b", 10),
                prev_kv: Some(kv("b", "1", 9, 9, 1, 10)),
            },
        ]
    );
    assert_eq!(s.lease(10), None);
    assert_eq!(keys(&s.range(&rng("\0", b"\0")).unwrap()), ["m", "x"]);
    assert_eq!(
        err(&mut s, put_lease("q", "1", 10)),
        MvccError::LeaseNotFound
    );

    // Revoking a lease without keys does not bump the revision.
    ok(&mut s, Command::LeaseGrant { id: 30, ttl: 10 });
    let (_, ev) = ok(&mut s, Command::LeaseRevoke { id: 30 });
    assert!(ev.is_empty());
    assert_eq!(s.current_revision(), 10);
    assert_eq!(s.lease(30), None);
}

// ----- txn -------------------------------------------------------------------------------

#[test]
fn txn_compare_existing_and_missing_keys() {
    let mut s = Store::new();
    ok(&mut s, Command::LeaseGrant { id: 5, ttl: 10 });
    ok(&mut s, put_lease("k", "v", 5)); // rev 2
    ok(&mut s, put("k2", "w")); // rev 3
    use CompareResult::{Equal, Greater, Less, NotEqual};
    use CompareTarget::{Create, Lease, Mod, Value, Version};
    let cases: Vec<(Compare, bool)> = vec![
        (cmp("k", Equal, Value(b("v"))), true),
        (cmp("k", NotEqual, Value(b("v"))), false),
        (cmp("k", Greater, Value(b("u"))), true),
        (cmp("k", Less, Value(b("w"))), true),
        (cmp("k", Equal, Version(1)), true),
        (cmp("k", Equal, Create(2)), true),
        (cmp("k", Equal, Mod(2)), true),
        (cmp("k", Less, Mod(3)), true),
        (cmp("k", Equal, Lease(5)), true),
        (cmp("k", NotEqual, Lease(5)), false),
        // Missing key: revisions/version/lease compare as 0 ...
        (cmp("nope", Equal, Version(0)), true),
        (cmp("nope", Equal, Create(0)), true),
        (cmp("nope", Equal, Mod(0)), true),
        (cmp("nope", Equal, Lease(0)), true),
        (cmp("nope", Less, Create(1)), true),
        (cmp("nope", Greater, Version(0)), false),
        // ... and a value compare on a missing key is always false.
        (cmp("nope", Equal, Value(b(""))), false),
        (cmp("nope", NotEqual, Value(b("x"))), false),
        // Ranges: every key must satisfy the compare.
        (
            Compare {
                range_end: b("l"),
                ..cmp("k", Greater, Mod(1))
            },
            true,
        ),
        (
            Compare {
                range_end: b("l"),
                ..cmp("k", Equal, Mod(2))
            },
            false,
        ),
        (
            Compare {
                range_end: b("\0"),
                ..cmp("a", Greater, Create(0))
            },
            true,
        ),
        // An empty range compares like a missing key.
        (
            Compare {
                range_end: b("z"),
                ..cmp("x", Equal, Version(0))
            },
            true,
        ),
        (
            Compare {
                range_end: b("z"),
                ..cmp("x", Equal, Value(Vec::new()))
            },
            false,
        ),
    ];
    for (c, expected) in cases {
        let (r, ev) = ok(&mut s, Command::Txn(txn(vec![c.clone()], vec![], vec![])));
        assert_eq!(txn_resp(r).succeeded, expected, "{c:?}");
        assert!(ev.is_empty());
    }
    assert_eq!(s.current_revision(), 3, "read-only txns do not bump");
}

#[test]
fn txn_branches_reads_see_writes_and_share_one_revision() {
    let mut s = Store::new();
    ok(&mut s, put("a", "1")); // rev 2
    let t = txn(
        vec![cmp("a", CompareResult::Equal, CompareTarget::Value(b("1")))],
        vec![
            RequestOp::Put(PutRequest {
                prev_kv: true,
                ..put_req("a", "2")
            }),
            RequestOp::Range(rng("a", b"")),
            RequestOp::Put(put_req("b", "1")),
            RequestOp::DeleteRange(DeleteRangeRequest {
                prev_kv: true,
                ..del_req("c", b"\0")
            }),
            RequestOp::Range(RangeRequest {
                revision: 2,
                ..rng("\0", b"\0")
            }),
            RequestOp::Range(rng("\0", b"\0")),
        ],
        vec![RequestOp::Put(put_req("failed", "1"))],
    );
    let (r, ev) = ok(&mut s, Command::Txn(t.clone()));
    let r = txn_resp(r);
    assert!(r.succeeded);
    assert_eq!(s.current_revision(), 3);
    assert_eq!(
        r.responses[0],
        ResponseOp::Put(PutResponse {
            prev_kv: Some(kv("a", "1", 2, 2, 1, 0))
        })
    );
    // Reads see the txn's own earlier writes ...
    assert_eq!(
        range_resp(&r.responses[1]).kvs,
        vec![kv("a", "2", 2, 3, 2, 0)]
    );
    assert_eq!(
        r.responses[3],
        ResponseOp::DeleteRange(DeleteRangeResponse {
            deleted: 0,
            prev_kvs: vec![]
        })
    );
    // ... unless they ask for an older revision.
    assert_eq!(keys(range_resp(&r.responses[4])), ["a"]);
    assert_eq!(range_resp(&r.responses[4]).kvs[0].value, b("1"));
    assert_eq!(keys(range_resp(&r.responses[5])), ["a", "b"]);
    // One revision, sub-revision order.
    assert_eq!(
        ev.iter().map(|e| e.kv.clone()).collect::<Vec<_>>(),
        vec![kv("a", "2", 2, 3, 2, 0), kv("b", "1", 3, 3, 1, 0)]
    );
    assert_eq!(ev[0].prev_kv, Some(kv("a", "1", 2, 2, 1, 0)));
    assert_eq!(ev[1].prev_kv, None);

    // Same txn again: compare fails now, failure branch runs.
    let (r, _) = ok(&mut s, Command::Txn(t));
    let r = txn_resp(r);
    assert!(!r.succeeded);
    assert_eq!(
        r.responses,
        vec![ResponseOp::Put(PutResponse { prev_kv: None })]
    );
    assert_eq!(s.current_revision(), 4);
    assert!(get(&s, "failed").is_some());
}

#[test]
fn txn_delete_then_read_in_same_txn() {
    let mut s = Store::new();
    ok(&mut s, put("a", "1"));
    ok(&mut s, put("b", "1"));
    let t = txn(
        vec![],
        vec![
            RequestOp::DeleteRange(del_req("a", b"")),
            RequestOp::Range(rng("\0", b"\0")),
            RequestOp::DeleteRange(DeleteRangeRequest {
                prev_kv: true,
                ..del_req("a", b"c")
            }),
        ],
        vec![],
    );
    let (r, ev) = ok(&mut s, Command::Txn(t));
    let r = txn_resp(r);
    assert_eq!(keys(range_resp(&r.responses[1])), ["b"]);
    assert_eq!(
        r.responses[2],
        ResponseOp::DeleteRange(DeleteRangeResponse {
            deleted: 1,
            prev_kvs: vec![kv("b", "1", 3, 3, 1, 0)]
        })
    );
    assert_eq!(s.current_revision(), 4);
    assert_eq!(
        ev.iter().map(|e| e.kv.clone()).collect::<Vec<_>>(),
        vec![tombstone("a", 4), tombstone("b", 4)]
    );
}

#[test]
fn txn_nested() {
    let mut s = Store::new();
    ok(&mut s, put("x", "1")); // rev 2
    use CompareResult::Equal;
    use CompareTarget::{Value, Version};
    // The outer txn writes x=2 and y; the nested txn's compare (x == "1") is evaluated
    // against the pre-txn state, as etcd's compareToPath does, so it succeeds.
    let nested = txn(
        vec![cmp("x", Equal, Value(b("1")))],
        vec![
            RequestOp::Put(put_req("n", "then")),
            RequestOp::Range(rng("x", b"")),
        ],
        vec![RequestOp::Put(put_req("n", "else"))],
    );
    let nested2 = txn(
        vec![cmp("y", Equal, Version(1))], // y does not exist before the txn
        vec![RequestOp::Put(put_req("m", "then"))],
        vec![RequestOp::Put(put_req("m", "else"))],
    );
    let t = txn(
        vec![cmp("x", Equal, Version(1))],
        vec![
            RequestOp::Put(put_req("x", "2")),
            RequestOp::Put(put_req("y", "1")),
            RequestOp::Txn(nested),
            RequestOp::Txn(nested2),
        ],
        vec![],
    );
    let (r, ev) = ok(&mut s, Command::Txn(t));
    let r = txn_resp(r);
    assert!(r.succeeded);
    let ResponseOp::Txn(n1) = &r.responses[2] else {
        panic!("expected nested txn response")
    };
    assert!(n1.succeeded);
    // The nested range sees the outer txn's write.
    assert_eq!(range_resp(&n1.responses[1]).kvs[0].value, b("2"));
    let ResponseOp::Txn(n2) = &r.responses[3] else {
        panic!("expected nested txn response")
    };
    assert!(!n2.succeeded);
    assert_eq!(get(&s, "n").unwrap().value, b("then"));
    assert_eq!(get(&s, "m").unwrap().value, b("else"));
    assert_eq!(s.current_revision(), 3);
    assert_eq!(ev.len(), 4);
    assert!(ev.iter().all(|e| e.kv.mod_revision == 3));
}

#[test]
fn txn_duplicate_key_rules() {
    let mut s = Store::new();
    ok(&mut s, put("a", "1"));
    let dup = |s: &mut Store, success: Vec<RequestOp>, failure: Vec<RequestOp>| {
        let (r, _) = s.apply(&Command::Txn(txn(vec![], success, failure)));
        r.err()
    };
    let p = |k: &str| RequestOp::Put(put_req(k, "v"));
    let d = |k: &str, end: &[u8]| RequestOp::DeleteRange(del_req(k, end));
    let t = |succ: Vec<RequestOp>, fail: Vec<RequestOp>| RequestOp::Txn(txn(vec![], succ, fail));
    let dk = Some(MvccError::DuplicateKey);

    assert_eq!(dup(&mut s, vec![p("a"), p("a")], vec![]), dk);
    assert_eq!(dup(&mut s, vec![p("a"), d("a", b"")], vec![]), dk);
    assert_eq!(dup(&mut s, vec![d("a", b"c"), p("b")], vec![]), dk);
    // Checked on the branch that does not run too.
    assert_eq!(dup(&mut s, vec![], vec![p("a"), p("a")]), dk);
    // Put in nested txn vs put/delete at the outer level.
    assert_eq!(
        dup(&mut s, vec![p("a"), t(vec![p("a")], vec![])], vec![]),
        dk
    );
    assert_eq!(
        dup(&mut s, vec![d("a", b""), t(vec![p("a")], vec![])], vec![]),
        dk
    );
    assert_eq!(
        dup(
            &mut s,
            vec![t(vec![p("a")], vec![]), t(vec![], vec![p("a")])],
            vec![]
        ),
        dk
    );
    // Nested then/else may put the same key.
    assert_eq!(
        dup(&mut s, vec![t(vec![p("a")], vec![p("a")])], vec![]),
        None
    );
    // Deletes may overlap; the same key in success and failure is fine.
    assert_eq!(dup(&mut s, vec![d("a", b""), d("a", b"z")], vec![]), None);
    assert_eq!(dup(&mut s, vec![p("a")], vec![p("a")]), None);
    // A nested delete does not conflict with an earlier nested put (etcd only checks puts
    // against deletes collected before them).
    assert_eq!(
        dup(
            &mut s,
            vec![t(vec![p("q")], vec![]), t(vec![d("q", b"")], vec![])],
            vec![]
        ),
        None
    );
    // etcd quirk: a "from key" delete (range_end [0]) never conflicts with a put.
    assert_eq!(dup(&mut s, vec![d("a", b"\0"), p("b")], vec![]), None);
    assert_eq!(get(&s, "b").unwrap().create_revision, s.current_revision());
}

#[test]
fn txn_put_after_from_key_delete_rolls_back_when_key_gone() {
    // Passes checkIntervals (quirk above) and the pre-txn KeyNotFound check, but at execution
    // the key is already deleted by the txn; etcd panics here, we fail the whole txn.
    let mut s = Store::new();
    ok(&mut s, put("a", "1"));
    let before = s.clone();
    let t = txn(
        vec![],
        vec![
            RequestOp::DeleteRange(del_req("a", b"\0")),
            RequestOp::Put(PutRequest {
                ignore_value: true,
                ..put_req("a", "")
            }),
        ],
        vec![],
    );
    assert_eq!(err(&mut s, Command::Txn(t)), MvccError::KeyNotFound);
    assert_eq!(s, before);
}

#[test]
fn txn_checks_fail_whole_txn() {
    let mut s = Store::new();
    ok(&mut s, put("a", "1")); // rev 2
    let lease_missing = txn(
        vec![],
        vec![
            RequestOp::Put(put_req("b", "1")),
            RequestOp::Put(PutRequest {
                lease: 99,
                ..put_req("c", "1")
            }),
        ],
        vec![],
    );
    assert_eq!(
        err(&mut s, Command::Txn(lease_missing)),
        MvccError::LeaseNotFound
    );
    // ignore_value on a key created earlier in the same txn: checked against the pre-txn
    // state, so KeyNotFound.
    let ignore = txn(
        vec![],
        vec![
            RequestOp::Put(put_req("b", "1")),
            RequestOp::Txn(txn(
                vec![],
                vec![RequestOp::Put(PutRequest {
                    ignore_value: true,
                    ..put_req("c", "")
                })],
                vec![],
            )),
        ],
        vec![],
    );
    assert_eq!(err(&mut s, Command::Txn(ignore)), MvccError::KeyNotFound);
    // Range revisions are checked against the pre-txn revision: the txn's own is "future".
    let future = txn(
        vec![],
        vec![
            RequestOp::Put(put_req("b", "1")),
            RequestOp::Range(RangeRequest {
                revision: 3,
                ..rng("b", b"")
            }),
        ],
        vec![],
    );
    assert_eq!(err(&mut s, Command::Txn(future)), MvccError::FutureRevision);
    // Only the chosen path is checked.
    let unchosen = txn(
        vec![cmp("a", CompareResult::Equal, CompareTarget::Version(1))],
        vec![RequestOp::Put(put_req("ok", "1"))],
        vec![RequestOp::Put(PutRequest {
            lease: 99,
            ..put_req("c", "1")
        })],
    );
    ok(&mut s, Command::Txn(unchosen));
    // Validation errors anywhere.
    let empty = txn(
        vec![],
        vec![],
        vec![RequestOp::Txn(txn(
            vec![],
            vec![RequestOp::Range(rng("", b""))],
            vec![],
        ))],
    );
    assert_eq!(err(&mut s, Command::Txn(empty)), MvccError::EmptyKey);
    let empty_cmp = txn(
        vec![cmp("", CompareResult::Equal, CompareTarget::Version(0))],
        vec![],
        vec![],
    );
    assert_eq!(err(&mut s, Command::Txn(empty_cmp)), MvccError::EmptyKey);
    let provided = txn(
        vec![],
        vec![RequestOp::Put(PutRequest {
            ignore_value: true,
            ..put_req("a", "x")
        })],
        vec![],
    );
    assert_eq!(
        err(&mut s, Command::Txn(provided)),
        MvccError::ValueProvided
    );
}

#[test]
fn txn_with_compacted_range() {
    let mut s = abc_store();
    ok(&mut s, Command::Compact { revision: 5 });
    let t = txn(
        vec![],
        vec![
            RequestOp::Put(put_req("z", "1")),
            RequestOp::Range(RangeRequest {
                revision: 4,
                ..rng("a", b"")
            }),
        ],
        vec![],
    );
    assert_eq!(err(&mut s, Command::Txn(t)), MvccError::Compacted);
}

#[test]
fn txn_read_only_path() {
    let mut s = abc_store();
    let t = txn(
        vec![cmp("a", CompareResult::Equal, CompareTarget::Version(2))],
        vec![
            RequestOp::Range(rng("a", b"c")),
            RequestOp::Txn(txn(vec![], vec![], vec![RequestOp::Range(rng("d", b""))])),
        ],
        vec![],
    );
    let local = s.txn_read(&t).expect("read-only").unwrap();
    let (applied, ev) = ok(&mut s, Command::Txn(t));
    assert_eq!(CommandResult::Txn(local), applied);
    assert!(ev.is_empty());
    let writes = txn(vec![], vec![], vec![RequestOp::Put(put_req("x", "1"))]);
    assert!(s.txn_read(&writes).is_none());
    assert!(!is_txn_read_only(&writes));
}

// ----- compaction ------------------------------------------------------------------------

#[test]
fn compaction_boundaries_and_retention() {
    let mut s = Store::new();
    ok(&mut s, put("a", "1")); // 2
    ok(&mut s, put("a", "2")); // 3
    ok(&mut s, put("b", "1")); // 4
    ok(&mut s, del("b")); // 5
    ok(&mut s, put("c", "1")); // 6
    ok(&mut s, del("c")); // 7
    ok(&mut s, put("c", "2")); // 8
    ok(&mut s, put("a", "3")); // 9
    assert_eq!(
        err(&mut s, Command::Compact { revision: 10 }),
        MvccError::FutureRevision
    );
    let (r, ev) = ok(&mut s, Command::Compact { revision: 7 });
    assert_eq!(r, CommandResult::Compact);
    assert!(ev.is_empty());
    assert_eq!(
        s.current_revision(),
        9,
        "compaction does not bump the revision"
    );
    assert_eq!(s.compacted_revision(), 7);
    assert_eq!(
        err(&mut s, Command::Compact { revision: 7 }),
        MvccError::Compacted
    );
    assert_eq!(
        err(&mut s, Command::Compact { revision: 6 }),
        MvccError::Compacted
    );

    assert_eq!(get_at(&s, "a", 6), Err(MvccError::Compacted));
    // Reading at the compaction revision itself works, and sees the same as before.
    assert_eq!(get_at(&s, "a", 7).unwrap(), Some(kv("a", "2", 2, 3, 2, 0)));
    assert_eq!(get_at(&s, "b", 7).unwrap(), None);
    assert_eq!(get_at(&s, "c", 7).unwrap(), None);
    assert_eq!(get_at(&s, "c", 8).unwrap(), Some(kv("c", "2", 8, 8, 1, 0)));
    assert_eq!(get_at(&s, "a", 9).unwrap(), Some(kv("a", "3", 2, 9, 3, 0)));
    // Only the newest non-tombstone revision <= 7 of each key survives: a@3; b and c's
    // histories up to their tombstones are gone, so b left the index entirely.
    assert_eq!(s.events_since(7, b"\0", b"\0").unwrap().len(), 2); // c@8, a@9
    assert!(!s.index_contains(b"b"));
    assert_eq!(s.retained_revisions(), vec![(3, 0), (8, 0), (9, 0)]);

    // Versions keep counting after compaction.
    ok(&mut s, put("a", "4"));
    assert_eq!(get(&s, "a").unwrap(), kv("a", "4", 2, 10, 4, 0));
    ok(&mut s, Command::Compact { revision: 10 });
    assert_eq!(s.retained_revisions(), vec![(8, 0), (10, 0)]);
}

#[test]
fn compact_zero_on_fresh_store() {
    // etcd starts with compactMainRev -1, so compacting at 0 succeeds once.
    let mut s = Store::new();
    ok(&mut s, Command::Compact { revision: 0 });
    assert_eq!(s.compacted_revision(), 0);
    assert_eq!(
        err(&mut s, Command::Compact { revision: 0 }),
        MvccError::Compacted
    );
    assert_eq!(s.hash_kv(0).unwrap().1, 0);
    ok(&mut s, Command::Compact { revision: 1 });
}

// ----- events ----------------------------------------------------------------------------

#[test]
fn events_since_with_prev_kv_and_ranges() {
    let mut s = Store::new();
    ok(&mut s, put("a", "1")); // 2
    ok(&mut s, put("b", "1")); // 3
    ok(&mut s, put("a", "2")); // 4
    ok(&mut s, del("a")); // 5
    ok(
        &mut s,
        Command::Txn(txn(
            vec![],
            vec![
                RequestOp::Put(put_req("c", "1")),
                RequestOp::Put(put_req("b", "2")),
            ],
            vec![],
        )),
    ); // 6

    let all = s.events_since(1, b"\0", b"\0").unwrap();
    assert_eq!(
        all,
        vec![
            Event {
                kind: EventKind::Put,
                kv: kv("a", "1", 2, 2, 1, 0),
                prev_kv: None
            },
            Event {
                kind: EventKind::Put,
                kv: kv("b", "1", 3, 3, 1, 0),
                prev_kv: None
            },
            Event {
                kind: EventKind::Put,
                kv: kv("a", "2", 2, 4, 2, 0),
                prev_kv: Some(kv("a", "1", 2, 2, 1, 0))
            },
            Event {
                kind: EventKind::Delete,
                kv: tombstone("a", 5),
                prev_kv: Some(kv("a", "2", 2, 4, 2, 0))
            },
            Event {
                kind: EventKind::Put,
                kv: kv("c", "1", 6, 6, 1, 0),
                prev_kv: None
            },
            Event {
                kind: EventKind::Put,
                kv: kv("b", "2", 3, 6, 2, 0),
                prev_kv: Some(kv("b", "1", 3, 3, 1, 0))
            },
        ]
    );
    // The events apply() returned are the same as the history.
    let single: Vec<_> = s.events_since(4, b"a", b"").unwrap();
    assert_eq!(single, all[2..4].to_vec());
    assert_eq!(
        s.events_since(3, b"b", b"c").unwrap(),
        vec![all[1].clone(), all[5].clone()]
    );
    assert_eq!(s.events_since(6, b"b", b"\0").unwrap(), all[4..].to_vec());
    assert_eq!(s.events_since(3, b"c", b"b").unwrap(), vec![]);
    assert_eq!(s.events_since(7, b"\0", b"\0").unwrap(), vec![]);
    assert_eq!(s.events_since(0, b"\0", b"\0").unwrap(), vec![]);

    // Bounded: at most 2 revisions per call, resuming where it stopped.
    let (batch, next) = s.events_since_bounded(2, b"\0", b"\0", 2).unwrap();
    assert_eq!((batch, next), (all[..2].to_vec(), 4));
    let (batch, next) = s.events_since_bounded(4, b"\0", b"\0", 2).unwrap();
    assert_eq!((batch, next), (all[2..4].to_vec(), 6));
    let (batch, next) = s.events_since_bounded(6, b"\0", b"\0", 2).unwrap();
    assert_eq!((batch, next), (all[4..].to_vec(), 7));
    assert_eq!(
        s.events_since_bounded(9, b"\0", b"\0", 2).unwrap(),
        (vec![], 9)
    );
}

#[test]
fn apply_events_match_history() {
    let mut s = Store::new();
    ok(&mut s, Command::LeaseGrant { id: 1, ttl: 5 });
    let cmds = vec![
        put("a", "1"),
        put_lease("b", "1", 1),
        put("a", "2"),
        del_range("a", b"c"),
        put("a", "3"),
        Command::LeaseRevoke { id: 1 },
        put("b", "again"),
    ];
    let mut live = Vec::new();
    for c in cmds {
        live.extend(ok(&mut s, c).1);
    }
    assert_eq!(live, s.events_since(1, b"\0", b"\0").unwrap());
}

#[test]
fn events_since_compaction_boundary() {
    let mut s = Store::new();
    ok(&mut s, put("a", "1")); // 2
    ok(&mut s, put("a", "2")); // 3
    ok(&mut s, put("b", "1")); // 4
    ok(&mut s, put("a", "3")); // 5
    ok(&mut s, del("b")); // 6
    ok(&mut s, put("b", "2")); // 7
    ok(&mut s, Command::Compact { revision: 4 });
    assert_eq!(
        s.events_since(3, b"\0", b"\0"),
        Err(MvccError::Compacted),
        "start < compact revision"
    );
    // Starting at the compaction revision is allowed (etcd: minRev < compactRev is compacted).
    let ev = s.events_since(4, b"\0", b"\0").unwrap();
    assert_eq!(
        ev.iter()
            .map(|e| (e.kind, e.kv.mod_revision))
            .collect::<Vec<_>>(),
        vec![
            (EventKind::Put, 4),
            (EventKind::Put, 5),
            (EventKind::Delete, 6),
            (EventKind::Put, 7)
        ]
    );
    // prev_kv: a@5's previous version (a@3) is readable at revision 4 = compaction point.
    assert_eq!(ev[1].prev_kv, Some(kv("a", "2", 2, 3, 2, 0)));
    assert_eq!(ev[2].prev_kv, Some(kv("b", "1", 4, 4, 1, 0)));

    // A delete exactly at the compaction revision is dropped by compaction (etcd's keep()
    // removes tombstones), so a watch from there does not see it; puts there are kept.
    let mut s = Store::new();
    ok(&mut s, put("x", "1")); // 2
    ok(&mut s, put("y", "1")); // 3
    ok(
        &mut s,
        Command::Txn(txn(
            vec![],
            vec![
                RequestOp::DeleteRange(del_req("x", b"")),
                RequestOp::Put(put_req("y", "2")),
            ],
            vec![],
        )),
    ); // 4
    ok(&mut s, put("y", "3")); // 5
    ok(&mut s, Command::Compact { revision: 4 });
    let ev = s.events_since(4, b"\0", b"\0").unwrap();
    assert_eq!(
        ev.iter()
            .map(|e| (e.kind, e.kv.clone()))
            .collect::<Vec<_>>(),
        vec![
            (EventKind::Put, kv("y", "2", 3, 4, 2, 0)),
            (EventKind::Put, kv("y", "3", 3, 5, 3, 0))
        ]
    );
    // y@4's prev would be at revision 3 < compaction: no prev_kv (etcd's watch gets
    // ErrCompacted for that lookup).
    assert_eq!(ev[0].prev_kv, None);
    assert_eq!(ev[1].prev_kv, Some(kv("y", "2", 3, 4, 2, 0)));
}

// ----- hash, snapshot, determinism -------------------------------------------------------

#[test]
fn crc32c_matches_reference() {
    let mut h = Crc32c::new();
    h.write(b"123456789");
    assert_eq!(h.sum(), 0xE306_9283);
    let mut h = Crc32c::new();
    h.write(b"1234");
    h.write(b"56789");
    assert_eq!(h.sum(), 0xE306_9283);
}

#[test]
fn kv_protobuf_encoding() {
    let e = encode_kv(&kv("foo", "bar", 2, 3, 2, 0));
    assert_eq!(
        e,
        [
            0x0a, 3, b'f', b'o', b'o', 0x10, 2, 0x18, 3, 0x20, 2, 0x2a, 3, b'b', b'a', b'r'
        ]
    );
    // Negative int64: 10-byte varint.
    let e = encode_kv(&KeyValue {
        lease: -1,
        ..KeyValue::default()
    });
    assert_eq!(e.len(), 11);
}

fn scenario() -> Vec<Command> {
    vec![
        Command::LeaseGrant { id: 100, ttl: 60 },
        put("foo", "bar"),
        put_lease("lease/k", "v", 100),
        put("foo", "baz"),
        Command::Txn(txn(
            vec![cmp(
                "foo",
                CompareResult::Equal,
                CompareTarget::Value(b("baz")),
            )],
            vec![
                RequestOp::Put(put_req("t1", "x")),
                RequestOp::DeleteRange(del_req("foo", b"")),
            ],
            vec![],
        )),
        put("foo", "again"),
        del_range("t", b"u"),
        Command::LeaseRevoke { id: 100 },
        put("z", "last"),
    ]
}

#[test]
fn same_commands_same_state_and_hash() {
    let mut s1 = Store::new();
    let mut s2 = Store::new();
    let mut events1 = Vec::new();
    for c in scenario() {
        let (r1, e1) = s1.apply(&c);
        let (r2, e2) = s2.apply(&c);
        assert_eq!(r1, r2);
        assert_eq!(e1, e2);
        events1.extend(e1);
    }
    assert_eq!(s1, s2);
    assert_eq!(s1.hash_kv(0), s2.hash_kv(0));
    for rev in 1..=s1.current_revision() {
        assert_eq!(s1.hash_kv(rev), s2.hash_kv(rev));
    }
    assert!(!events1.is_empty());
    // A different history hashes differently.
    let mut s3 = s1.clone();
    ok(&mut s3, put("z", "other"));
    assert_ne!(s1.hash_kv(0).unwrap().0, s3.hash_kv(0).unwrap().0);
    // And hashing at the old revision ignores the newer write.
    assert_eq!(
        s1.hash_kv(0).unwrap(),
        s3.hash_kv(s1.current_revision()).unwrap()
    );
    assert_eq!(
        s1.hash_kv(s1.current_revision() + 1),
        Err(MvccError::FutureRevision)
    );
}

#[test]
fn scenario_hash_matches_etcd() {
    // etcd 3.4.23 given the same requests: revision 9, hashkv 1027916652 (compact_revision
    // -1); after `compact 6`: 2912115129 at the current revision, 407131109 at revision 8,
    // 2089443142 at revision 7, and "required revision has been compacted" at revision 6.
    let mut s = Store::new();
    for c in scenario() {
        s.apply(&c).0.unwrap();
    }
    assert_eq!(s.current_revision(), 9);
    assert_eq!(s.hash_kv(0).unwrap(), (1_027_916_652, -1));
    ok(&mut s, Command::Compact { revision: 6 });
    assert_eq!(s.hash_kv(0).unwrap(), (2_912_115_129, 6));
    assert_eq!(s.hash_kv(9).unwrap(), (2_912_115_129, 6));
    assert_eq!(s.hash_kv(8).unwrap(), (407_131_109, 6));
    assert_eq!(s.hash_kv(7).unwrap(), (2_089_443_142, 6));
    assert_eq!(s.hash_kv(6), Err(MvccError::Compacted));
}

#[test]
fn postcard_round_trip() {
    let mut s = Store::new();
    for c in scenario() {
        s.apply(&c).0.unwrap();
    }
    ok(&mut s, Command::LeaseGrant { id: 7, ttl: 9 });
    ok(&mut s, put_lease("kept", "v", 7));
    ok(&mut s, Command::Compact { revision: 5 });
    let bytes = postcard::to_stdvec(&s).unwrap();
    let mut back: Store = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, s);
    assert_eq!(back.hash_kv(0), s.hash_kv(0));
    assert_eq!(back.lease(7), s.lease(7));
    // The restored store keeps applying identically.
    let (r1, e1) = s.apply(&put("kept", "w"));
    let (r2, e2) = back.apply(&put("kept", "w"));
    assert_eq!((r1, e1), (r2, e2));
    // Commands themselves round-trip too (they are the Raft payload).
    for c in scenario() {
        let bytes = postcard::to_stdvec(&c).unwrap();
        assert_eq!(postcard::from_bytes::<Command>(&bytes).unwrap(), c);
    }
}

// ----- randomized comparison with a naive model ------------------------------------------

/// A deliberately naive reference: the whole key space copied at every revision.
struct Model {
    /// `states[r - 1]` is the key space at revision `r`.
    states: Vec<BTreeMap<Vec<u8>, KeyValue>>,
    compact: i64,
    leases: BTreeMap<i64, BTreeSet<Vec<u8>>>,
}

use std::collections::{BTreeMap, BTreeSet};

struct ModelWrite {
    next: BTreeMap<Vec<u8>, KeyValue>,
    changes: Vec<(KeyValue, bool)>,
    leases: BTreeMap<i64, BTreeSet<Vec<u8>>>,
    rev: i64,
}

impl Model {
    fn new() -> Self {
        Model {
            states: vec![BTreeMap::new()],
            compact: -1,
            leases: BTreeMap::new(),
        }
    }

    fn cur(&self) -> i64 {
        self.states.len() as i64
    }

    fn state(&self, rev: i64) -> &BTreeMap<Vec<u8>, KeyValue> {
        &self.states[(rev - 1) as usize]
    }

    fn begin(&self) -> ModelWrite {
        ModelWrite {
            next: self.state(self.cur()).clone(),
            changes: Vec::new(),
            leases: self.leases.clone(),
            rev: self.cur() + 1,
        }
    }

    fn commit(&mut self, w: ModelWrite) -> Vec<Event> {
        self.leases = w.leases;
        if w.changes.is_empty() {
            return Vec::new();
        }
        let prev_state = self.state(self.cur()).clone();
        self.states.push(w.next);
        w.changes
            .into_iter()
            .map(|(kv, tomb)| {
                let create = !tomb && kv.create_revision == kv.mod_revision;
                Event {
                    kind: if tomb {
                        EventKind::Delete
                    } else {
                        EventKind::Put
                    },
                    prev_kv: if create {
                        None
                    } else {
                        prev_state.get(&kv.key).cloned()
                    },
                    kv,
                }
            })
            .collect()
    }
}

impl ModelWrite {
    fn put(&mut self, key: &[u8], value: &[u8], lease: i64) {
        let old = self.next.get(key).cloned();
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision: old.as_ref().map_or(self.rev, |o| o.create_revision),
            mod_revision: self.rev,
            version: old.as_ref().map_or(0, |o| o.version) + 1,
            value: value.to_vec(),
            lease,
        };
        if let Some(o) = &old
            && o.lease != 0
        {
            self.leases.get_mut(&o.lease).unwrap().remove(key);
        }
        if lease != 0 {
            self.leases.get_mut(&lease).unwrap().insert(key.to_vec());
        }
        self.next.insert(key.to_vec(), kv.clone());
        self.changes.push((kv, false));
    }

    fn delete(&mut self, key: &[u8]) {
        if let Some(o) = self.next.remove(key) {
            if o.lease != 0 {
                self.leases.get_mut(&o.lease).unwrap().remove(key);
            }
            self.changes.push((
                KeyValue {
                    key: key.to_vec(),
                    mod_revision: self.rev,
                    ..KeyValue::default()
                },
                true,
            ));
        }
    }

    fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
        if end.is_empty() {
            key == start
        } else if end == [0] {
            key >= start
        } else {
            key >= start && key < end
        }
    }

    fn delete_range(&mut self, start: &[u8], end: &[u8]) -> i64 {
        let keys: Vec<Vec<u8>> = self
            .next
            .keys()
            .filter(|k| Self::in_range(k, start, end))
            .cloned()
            .collect();
        for k in &keys {
            self.delete(k);
        }
        keys.len() as i64
    }
}

fn model_compare(c: &Compare, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let ord: Ordering = match &c.target {
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::Create(v) => kv.create_revision.cmp(v),
        CompareTarget::Mod(v) => kv.mod_revision.cmp(v),
        CompareTarget::Lease(v) => kv.lease.cmp(v),
        CompareTarget::Value(v) => kv.value.cmp(v),
    };
    let want: &[Ordering] = match c.result {
        CompareResult::Equal => &[Ordering::Equal],
        CompareResult::NotEqual => &[Ordering::Less, Ordering::Greater],
        CompareResult::Greater => &[Ordering::Greater],
        CompareResult::Less => &[Ordering::Less],
    };
    want.contains(&ord)
}

struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

const KEYS: [&str; 8] = ["a", "b", "c", "d", "e", "f", "g", "h"];

fn random_key(rng: &mut Lcg) -> Vec<u8> {
    b(KEYS[rng.next(KEYS.len() as u64) as usize])
}

fn random_lease(rng: &mut Lcg, model: &Model) -> i64 {
    match rng.next(5) {
        0 => 1000 + rng.next(3) as i64, // maybe missing
        1 | 2 => model
            .leases
            .keys()
            .nth(rng.next(model.leases.len().max(1) as u64) as usize)
            .copied()
            .unwrap_or(0),
        _ => 0,
    }
}

/// Applies `cmd` to the model; mirrors etcd's semantics independently of the store code.
fn model_apply(m: &mut Model, cmd: &Command) -> (Result<CommandResult, MvccError>, Vec<Event>) {
    match cmd {
        Command::Put(p) => {
            if p.lease != 0 && !m.leases.contains_key(&p.lease) {
                return (Err(MvccError::LeaseNotFound), vec![]);
            }
            let mut w = m.begin();
            let prev = w.next.get(&p.key).cloned();
            w.put(&p.key, &p.value, p.lease);
            let ev = m.commit(w);
            (
                Ok(CommandResult::Put(PutResponse {
                    prev_kv: if p.prev_kv { prev } else { None },
                })),
                ev,
            )
        }
        Command::DeleteRange(d) => {
            let mut w = m.begin();
            let prev_kvs: Vec<KeyValue> = if d.prev_kv {
                w.next
                    .values()
                    .filter(|kv| ModelWrite::in_range(&kv.key, &d.key, &d.range_end))
                    .cloned()
                    .collect()
            } else {
                vec![]
            };
            let deleted = w.delete_range(&d.key, &d.range_end);
            let ev = m.commit(w);
            (
                Ok(CommandResult::DeleteRange(DeleteRangeResponse {
                    deleted,
                    prev_kvs,
                })),
                ev,
            )
        }
        Command::Txn(t) => {
            let cur = m.state(m.cur());
            let succeeded = t.compare.iter().all(|c| {
                let kvs: Vec<&KeyValue> = cur
                    .values()
                    .filter(|kv| ModelWrite::in_range(&kv.key, &c.key, &c.range_end))
                    .collect();
                if kvs.is_empty() {
                    return !matches!(c.target, CompareTarget::Value(_))
                        && model_compare(c, &KeyValue::default());
                }
                kvs.iter().all(|kv| model_compare(c, kv))
            });
            let ops = if succeeded { &t.success } else { &t.failure };
            for op in ops {
                if let RequestOp::Put(p) = op
                    && p.lease != 0
                    && !m.leases.contains_key(&p.lease)
                {
                    return (Err(MvccError::LeaseNotFound), vec![]);
                }
            }
            let mut w = m.begin();
            let mut responses = Vec::new();
            for op in ops {
                responses.push(match op {
                    RequestOp::Put(p) => {
                        let prev = w.next.get(&p.key).cloned();
                        w.put(&p.key, &p.value, p.lease);
                        ResponseOp::Put(PutResponse {
                            prev_kv: if p.prev_kv { prev } else { None },
                        })
                    }
                    RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(DeleteRangeResponse {
                        deleted: w.delete_range(&d.key, &d.range_end),
                        prev_kvs: vec![],
                    }),
                    RequestOp::Range(r) => {
                        let kvs: Vec<KeyValue> = w
                            .next
                            .values()
                            .filter(|kv| ModelWrite::in_range(&kv.key, &r.key, &r.range_end))
                            .cloned()
                            .collect();
                        ResponseOp::Range(RangeResponse {
                            count: kvs.len() as i64,
                            kvs,
                            more: false,
                        })
                    }
                    RequestOp::Txn(_) => unreachable!("not generated"),
                });
            }
            let ev = m.commit(w);
            (
                Ok(CommandResult::Txn(TxnResponse {
                    succeeded,
                    responses,
                })),
                ev,
            )
        }
        Command::Compact { revision } => {
            if *revision <= m.compact {
                (Err(MvccError::Compacted), vec![])
            } else if *revision > m.cur() {
                (Err(MvccError::FutureRevision), vec![])
            } else {
                m.compact = *revision;
                (Ok(CommandResult::Compact), vec![])
            }
        }
        Command::LeaseGrant { id, ttl } => {
            if m.leases.contains_key(id) {
                return (Err(MvccError::LeaseExists), vec![]);
            }
            m.leases.insert(*id, BTreeSet::new());
            (Ok(CommandResult::LeaseGrant { id: *id, ttl: *ttl }), vec![])
        }
        Command::LeaseRevoke { id } => {
            let Some(keys) = m.leases.get(id).cloned() else {
                return (Err(MvccError::LeaseNotFound), vec![]);
            };
            let mut w = m.begin();
            for k in &keys {
                w.delete(k);
            }
            w.leases.remove(id);
            let ev = m.commit(w);
            (Ok(CommandResult::LeaseRevoke), ev)
        }
    }
}

fn random_command(rng: &mut Lcg, m: &Model, compactions: bool) -> Command {
    let value = |rng: &mut Lcg| vec![b'v', b'0' + rng.next(10) as u8];
    match rng.next(20) {
        0..=6 => Command::Put(PutRequest {
            key: random_key(rng),
            value: value(rng),
            lease: random_lease(rng, m),
            prev_kv: rng.next(2) == 0,
            ..PutRequest::default()
        }),
        7..=9 => {
            let key = random_key(rng);
            let range_end = match rng.next(3) {
                0 => Vec::new(),
                1 => vec![0],
                _ => random_key(rng),
            };
            Command::DeleteRange(DeleteRangeRequest {
                key,
                range_end,
                prev_kv: rng.next(2) == 0,
            })
        }
        10..=14 => {
            // Distinct keys per branch so that the txn passes the duplicate-key check.
            let ops_for = |rng: &mut Lcg| {
                let mut keys: Vec<&str> = KEYS.to_vec();
                let mut ops = Vec::new();
                for _ in 0..rng.next(4) {
                    let k = b(keys.remove(rng.next(keys.len() as u64) as usize));
                    ops.push(match rng.next(3) {
                        0 => RequestOp::Put(PutRequest {
                            key: k,
                            value: value(rng),
                            lease: random_lease(rng, m),
                            prev_kv: rng.next(2) == 0,
                            ..PutRequest::default()
                        }),
                        1 => RequestOp::DeleteRange(DeleteRangeRequest {
                            key: k,
                            range_end: Vec::new(),
                            prev_kv: false,
                        }),
                        _ => RequestOp::Range(RangeRequest {
                            key: b("a"),
                            range_end: vec![0],
                            ..RangeRequest::default()
                        }),
                    });
                }
                ops
            };
            let target = match rng.next(4) {
                0 => CompareTarget::Version(rng.next(3) as i64),
                1 => CompareTarget::Value(value(rng)),
                2 => CompareTarget::Mod(rng.next(m.cur() as u64 + 1) as i64),
                _ => CompareTarget::Create(rng.next(m.cur() as u64 + 1) as i64),
            };
            let result = [
                CompareResult::Equal,
                CompareResult::NotEqual,
                CompareResult::Greater,
                CompareResult::Less,
            ][rng.next(4) as usize];
            let range_end = if rng.next(4) == 0 {
                vec![0]
            } else {
                Vec::new()
            };
            Command::Txn(TxnRequest {
                compare: vec![Compare {
                    result,
                    target,
                    key: random_key(rng),
                    range_end,
                }],
                success: ops_for(rng),
                failure: ops_for(rng),
            })
        }
        15 if !compactions => random_command(rng, m, compactions),
        15 => Command::Compact {
            revision: m.compact.max(0) + rng.next((m.cur() - m.compact.max(0)) as u64 + 2) as i64,
        },
        16 | 17 => Command::LeaseGrant {
            id: 1 + rng.next(6) as i64,
            ttl: 10,
        },
        _ => Command::LeaseRevoke {
            id: 1 + rng.next(7) as i64,
        },
    }
}

#[test]
fn randomized_against_naive_model() {
    for seed in 1..=4u64 {
        let mut rng = Lcg(seed);
        let mut model = Model::new();
        let mut store = Store::new();
        let mut replica = Store::new();
        let mut all_events = Vec::new();
        for step in 0..600 {
            let cmd = random_command(&mut rng, &model, seed % 2 == 0);
            let expected = model_apply(&mut model, &cmd);
            let got = store.apply(&cmd);
            assert_eq!(got, expected, "seed {seed} step {step}: {cmd:?}");
            assert_eq!(replica.apply(&cmd), expected);
            all_events.extend(got.1);

            assert_eq!(store.current_revision(), model.cur());
            assert_eq!(store.key_count(), model.state(model.cur()).len());
            let leases: Vec<(i64, Vec<Vec<u8>>)> =
                store.leases().into_iter().map(|l| (l.id, l.keys)).collect();
            let model_leases: Vec<(i64, Vec<Vec<u8>>)> = model
                .leases
                .iter()
                .map(|(id, keys)| (*id, keys.iter().cloned().collect()))
                .collect();
            assert_eq!(leases, model_leases);

            if step % 25 == 0 {
                for rev in 1..=model.cur() {
                    let got = store.range(&RangeRequest {
                        key: vec![0],
                        range_end: vec![0],
                        revision: rev,
                        ..RangeRequest::default()
                    });
                    if rev < model.compact {
                        assert_eq!(got, Err(MvccError::Compacted));
                    } else {
                        let want: Vec<KeyValue> = model.state(rev).values().cloned().collect();
                        assert_eq!(got.unwrap().kvs, want, "seed {seed} step {step} rev {rev}");
                    }
                }
                if model.compact < 0 {
                    assert_eq!(store.events_since(1, &[0], &[0]).unwrap(), all_events);
                }
                assert_eq!(store.hash_kv(0), replica.hash_kv(0));
            }
        }
        let bytes = postcard::to_stdvec(&store).unwrap();
        assert_eq!(postcard::from_bytes::<Store>(&bytes).unwrap(), store);
        assert_eq!(store, replica);
    }
}
