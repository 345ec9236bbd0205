//! Between the etcd wire types (prost) and the MVCC core's own types.

use tonic::{Code, Status};

use crate::etcdpb::etcdserverpb as pb;
use crate::etcdpb::mvccpb;
use crate::mvcc;

pub(crate) fn kv_to_pb(kv: mvcc::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

pub(crate) fn event_to_pb(event: mvcc::Event, with_prev: bool) -> mvccpb::Event {
    mvccpb::Event {
        r#type: match event.kind {
            mvcc::EventKind::Put => mvccpb::event::EventType::Put as i32,
            mvcc::EventKind::Delete => mvccpb::event::EventType::Delete as i32,
        },
        kv: Some(kv_to_pb(event.kv)),
        prev_kv: if with_prev {
            event.prev_kv.map(kv_to_pb)
        } else {
            None
        },
    }
}

fn invalid(message: &str) -> Status {
    Status::new(Code::InvalidArgument, format!("etcdserver: {message}"))
}

pub(crate) fn range_from_pb(r: pb::RangeRequest) -> Result<mvcc::RangeRequest, Status> {
    use pb::range_request::{SortOrder, SortTarget};
    let sort_order = match SortOrder::try_from(r.sort_order) {
        Ok(SortOrder::None) => mvcc::SortOrder::None,
        Ok(SortOrder::Ascend) => mvcc::SortOrder::Ascend,
        Ok(SortOrder::Descend) => mvcc::SortOrder::Descend,
        Err(_) => return Err(invalid("invalid sort option")),
    };
    let sort_target = match SortTarget::try_from(r.sort_target) {
        Ok(SortTarget::Key) => mvcc::SortTarget::Key,
        Ok(SortTarget::Version) => mvcc::SortTarget::Version,
        Ok(SortTarget::Create) => mvcc::SortTarget::Create,
        Ok(SortTarget::Mod) => mvcc::SortTarget::Mod,
        Ok(SortTarget::Value) => mvcc::SortTarget::Value,
        Err(_) => return Err(invalid("invalid sort option")),
    };
    Ok(mvcc::RangeRequest {
        key: r.key,
        range_end: r.range_end,
        limit: r.limit,
        revision: r.revision,
        sort_order,
        sort_target,
        serializable: r.serializable,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    })
}

pub(crate) fn put_from_pb(r: pb::PutRequest) -> mvcc::PutRequest {
    mvcc::PutRequest {
        key: r.key,
        value: r.value,
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    }
}

pub(crate) fn delete_from_pb(r: pb::DeleteRangeRequest) -> mvcc::DeleteRangeRequest {
    mvcc::DeleteRangeRequest {
        key: r.key,
        range_end: r.range_end,
        prev_kv: r.prev_kv,
    }
}

fn compare_from_pb(c: pb::Compare) -> Result<mvcc::Compare, Status> {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let result = match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => mvcc::CompareResult::Equal,
        Ok(CompareResult::Greater) => mvcc::CompareResult::Greater,
        Ok(CompareResult::Less) => mvcc::CompareResult::Less,
        Ok(CompareResult::NotEqual) => mvcc::CompareResult::NotEqual,
        Err(_) => return Err(invalid("invalid compare result")),
    };
    // The `target` enum says what is compared; the union carries the operand (absent when
    // it is the type's zero value on some clients).
    let target = match (CompareTarget::try_from(c.target), c.target_union) {
        (Ok(CompareTarget::Version), Some(TargetUnion::Version(v))) => {
            mvcc::CompareTarget::Version(v)
        }
        (Ok(CompareTarget::Version), None) => mvcc::CompareTarget::Version(0),
        (Ok(CompareTarget::Create), Some(TargetUnion::CreateRevision(v))) => {
            mvcc::CompareTarget::Create(v)
        }
        (Ok(CompareTarget::Create), None) => mvcc::CompareTarget::Create(0),
        (Ok(CompareTarget::Mod), Some(TargetUnion::ModRevision(v))) => mvcc::CompareTarget::Mod(v),
        (Ok(CompareTarget::Mod), None) => mvcc::CompareTarget::Mod(0),
        (Ok(CompareTarget::Value), Some(TargetUnion::Value(v))) => mvcc::CompareTarget::Value(v),
        (Ok(CompareTarget::Value), None) => mvcc::CompareTarget::Value(Vec::new()),
        (Ok(CompareTarget::Lease), Some(TargetUnion::Lease(v))) => mvcc::CompareTarget::Lease(v),
        (Ok(CompareTarget::Lease), None) => mvcc::CompareTarget::Lease(0),
        _ => return Err(invalid("invalid compare target")),
    };
    Ok(mvcc::Compare {
        result,
        target,
        key: c.key,
        range_end: c.range_end,
    })
}

/// Converts a transaction, counting its operations (nested ones included) against `max_ops`.
pub(crate) fn txn_from_pb(t: pb::TxnRequest, max_ops: usize) -> Result<mvcc::TxnRequest, Status> {
    fn ops(list: Vec<pb::RequestOp>, max_ops: usize) -> Result<Vec<mvcc::RequestOp>, Status> {
        list.into_iter()
            .map(|op| match op.request {
                Some(pb::request_op::Request::RequestRange(r)) => {
                    Ok(mvcc::RequestOp::Range(range_from_pb(r)?))
                }
                Some(pb::request_op::Request::RequestPut(r)) => {
                    Ok(mvcc::RequestOp::Put(put_from_pb(r)))
                }
                Some(pb::request_op::Request::RequestDeleteRange(r)) => {
                    Ok(mvcc::RequestOp::DeleteRange(delete_from_pb(r)))
                }
                Some(pb::request_op::Request::RequestTxn(t)) => {
                    Ok(mvcc::RequestOp::Txn(txn_from_pb(t, max_ops)?))
                }
                None => Err(invalid("key is not provided")),
            })
            .collect()
    }
    if t.compare.len() > max_ops || t.success.len() > max_ops || t.failure.len() > max_ops {
        return Err(invalid("too many operations in txn request"));
    }
    Ok(mvcc::TxnRequest {
        compare: t
            .compare
            .into_iter()
            .map(compare_from_pb)
            .collect::<Result<_, _>>()?,
        success: ops(t.success, max_ops)?,
        failure: ops(t.failure, max_ops)?,
    })
}

pub(crate) fn range_to_pb(r: mvcc::RangeResponse, header: pb::ResponseHeader) -> pb::RangeResponse {
    pb::RangeResponse {
        header: Some(header),
        kvs: r.kvs.into_iter().map(kv_to_pb).collect(),
        more: r.more,
        count: r.count,
    }
}

pub(crate) fn put_to_pb(r: mvcc::PutResponse, header: pb::ResponseHeader) -> pb::PutResponse {
    pb::PutResponse {
        header: Some(header),
        prev_kv: r.prev_kv.map(kv_to_pb),
    }
}

pub(crate) fn delete_to_pb(
    r: mvcc::DeleteRangeResponse,
    header: pb::ResponseHeader,
) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header: Some(header),
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(kv_to_pb).collect(),
    }
}

/// A txn response as etcd builds it. Only the top-level header is the server's (`header`, with
/// the revision after the txn); the responses inside carry what etcd's applier puts there
/// (`applierV3backend.Txn`/`applyTxn`): a header with only a revision — for a range, the
/// revision the txn reads at (the pre-txn revision, or the txn's own once it has written); for
/// a put, the txn's revision; for a delete, the txn's revision if the txn has written by then,
/// else the pre-txn one — and for a nested txn an empty header (revision 0).
pub(crate) fn txn_to_pb(r: mvcc::TxnResponse, header: pb::ResponseHeader) -> pb::TxnResponse {
    let begin = if txn_writes(&r) {
        header.revision - 1
    } else {
        header.revision
    };
    let mut written = false;
    let mut response = nested_txn_to_pb(r, begin, &mut written);
    response.header = Some(header);
    response
}

/// Whether a txn changed the store: a put, or a delete that deleted something (etcd's
/// `len(txn.Changes()) != 0`).
fn txn_writes(r: &mvcc::TxnResponse) -> bool {
    r.responses.iter().any(|op| match op {
        mvcc::ResponseOp::Range(_) => false,
        mvcc::ResponseOp::Put(_) => true,
        mvcc::ResponseOp::DeleteRange(d) => d.deleted > 0,
        mvcc::ResponseOp::Txn(t) => txn_writes(t),
    })
}

/// The responses of a txn executed from revision `begin`; `written` tracks whether an earlier
/// operation of the (top-level) txn has changed the store.
fn nested_txn_to_pb(r: mvcc::TxnResponse, begin: i64, written: &mut bool) -> pb::TxnResponse {
    let at = |revision: i64| pb::ResponseHeader {
        revision,
        ..Default::default()
    };
    let mut responses = Vec::with_capacity(r.responses.len());
    for op in r.responses {
        let response = match op {
            mvcc::ResponseOp::Range(r) => pb::response_op::Response::ResponseRange(range_to_pb(
                r,
                at(begin + i64::from(*written)),
            )),
            mvcc::ResponseOp::Put(r) => {
                *written = true;
                pb::response_op::Response::ResponsePut(put_to_pb(r, at(begin + 1)))
            }
            mvcc::ResponseOp::DeleteRange(r) => {
                *written |= r.deleted > 0;
                let revision = begin + i64::from(*written);
                pb::response_op::Response::ResponseDeleteRange(delete_to_pb(r, at(revision)))
            }
            mvcc::ResponseOp::Txn(r) => {
                pb::response_op::Response::ResponseTxn(nested_txn_to_pb(r, begin, written))
            }
        };
        responses.push(pb::ResponseOp {
            response: Some(response),
        });
    }
    pb::TxnResponse {
        header: Some(pb::ResponseHeader::default()),
        succeeded: r.succeeded,
        responses,
    }
}

/// etcd's gRPC status for each store error (`api/v3rpc/rpctypes/error.go`).
pub(crate) fn mvcc_status(e: mvcc::MvccError) -> Status {
    use mvcc::MvccError::*;
    let code = match e {
        Compacted | FutureRevision | LeaseTtlTooLarge => Code::OutOfRange,
        LeaseNotFound => Code::NotFound,
        LeaseExists => Code::FailedPrecondition,
        KeyNotFound | ValueProvided | LeaseProvided | DuplicateKey | EmptyKey => {
            Code::InvalidArgument
        }
    };
    Status::new(code, format!("etcdserver: {e}"))
}
