//! Request validation that etcd performs in its gRPC layer before proposing
//! (`server/etcdserver/api/v3rpc/key.go`: `checkRangeRequest`, `checkPutRequest`,
//! `checkDeleteRequest`, `checkTxnRequest`, `checkIntervals`). It depends on the request only,
//! so running it again at apply time is deterministic.

use std::collections::BTreeSet;

use super::types::{
    Command, DeleteRangeRequest, MvccError, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

/// Checks a command the way etcd's gRPC layer checks the request before proposing it.
/// ([`super::Store::apply`] runs this too.) Etcd's `max-txn-ops` limit is configuration and is
/// left to the gRPC layer.
pub fn validate_command(cmd: &Command) -> Result<(), MvccError> {
    match cmd {
        Command::Put(p) => check_put(p),
        Command::DeleteRange(d) => check_delete(d),
        Command::Txn(t) => validate_txn(t),
        Command::Compact { .. } | Command::LeaseGrant { .. } | Command::LeaseRevoke { .. } => {
            Ok(())
        }
    }
}

/// Checks a txn as etcd's `checkTxnRequest` followed by `checkIntervals` on each branch.
pub(super) fn validate_txn(t: &TxnRequest) -> Result<(), MvccError> {
    check_txn(t)?;
    check_intervals(&t.success)?;
    check_intervals(&t.failure)?;
    Ok(())
}

/// Checks a range request as etcd's `checkRangeRequest` (the key must not be empty).
pub fn validate_range(r: &RangeRequest) -> Result<(), MvccError> {
    if r.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    Ok(())
}

/// Whether a txn contains no Put or DeleteRange in any branch, at any depth (etcd's
/// `isTxnReadonly`). Such a txn never changes the store.
pub fn is_txn_read_only(t: &TxnRequest) -> bool {
    t.success.iter().chain(t.failure.iter()).all(|op| match op {
        RequestOp::Range(_) => true,
        RequestOp::Put(_) | RequestOp::DeleteRange(_) => false,
        RequestOp::Txn(n) => is_txn_read_only(n),
    })
}

fn check_put(p: &PutRequest) -> Result<(), MvccError> {
    if p.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(MvccError::ValueProvided);
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(MvccError::LeaseProvided);
    }
    Ok(())
}

fn check_delete(d: &DeleteRangeRequest) -> Result<(), MvccError> {
    if d.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    Ok(())
}

fn check_op(op: &RequestOp) -> Result<(), MvccError> {
    match op {
        RequestOp::Range(r) => validate_range(r),
        RequestOp::Put(p) => check_put(p),
        RequestOp::DeleteRange(d) => check_delete(d),
        RequestOp::Txn(t) => check_txn(t),
    }
}

fn check_txn(t: &TxnRequest) -> Result<(), MvccError> {
    if t.compare.iter().any(|c| c.key.is_empty()) {
        return Err(MvccError::EmptyKey);
    }
    t.success
        .iter()
        .chain(t.failure.iter())
        .try_for_each(check_op)
}

/// A deleted interval as etcd's `checkIntervals` builds it: a point delete is `[k, k\0)`, a
/// range delete is `[key, range_end)` compared as plain bytes. Note that, exactly as in etcd, a
/// "from key" delete (`range_end == [0]`) is the literal interval `[key, "\0")`, which contains
/// no (non-empty) key, so it never conflicts with a put.
struct DelInterval {
    begin: Vec<u8>,
    end: Vec<u8>,
}

impl DelInterval {
    fn contains(&self, k: &[u8]) -> bool {
        self.begin.as_slice() <= k && k < self.end.as_slice()
    }
}

fn intersects(dels: &[DelInterval], k: &[u8]) -> bool {
    dels.iter().any(|d| d.contains(k))
}

/// etcd's `checkIntervals`: within one list of ops (recursing into nested txns), a key may be
/// put at most once and may not be put if a delete in scope covers it. The then/else branches of
/// a nested txn may put the same key. Deletes may overlap each other.
fn check_intervals(ops: &[RequestOp]) -> Result<(BTreeSet<Vec<u8>>, Vec<DelInterval>), MvccError> {
    let mut dels: Vec<DelInterval> = ops
        .iter()
        .filter_map(|op| match op {
            RequestOp::DeleteRange(d) => Some(if d.range_end.is_empty() {
                let mut end = d.key.clone();
                end.push(0);
                DelInterval {
                    begin: d.key.clone(),
                    end,
                }
            } else {
                DelInterval {
                    begin: d.key.clone(),
                    end: d.range_end.clone(),
                }
            }),
            _ => None,
        })
        .collect();

    let mut puts: BTreeSet<Vec<u8>> = BTreeSet::new();
    for op in ops {
        let RequestOp::Txn(t) = op else { continue };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || intersects(&dels, k) {
                return Err(MvccError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            // A key put in both then and else is fine: only one branch runs.
            if puts.contains(k) && !puts_then.contains(k) {
                return Err(MvccError::DuplicateKey);
            }
            if intersects(&dels, k) {
                return Err(MvccError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }

    for op in ops {
        let RequestOp::Put(p) = op else { continue };
        if puts.contains(&p.key) || intersects(&dels, &p.key) {
            return Err(MvccError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}
