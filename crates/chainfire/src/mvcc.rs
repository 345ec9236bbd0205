//! The MVCC core of chainfire: an in-memory, deterministic re-implementation of etcd v3's
//! key-value state machine (etcd 3.4/3.5 server behaviour).
//!
//! Plain Rust: no I/O, no clocks, no randomness, no hash-map iteration. Replicas that
//! [`Store::apply`] the same [`Command`]s in the same order reach identical state (compare
//! [`Store::hash_kv`]). A snapshot is the serde encoding of the [`Store`] itself.
//!
//! What lives where in etcd, and therefore here:
//! - request validation that etcd does in the gRPC layer (`v3rpc/key.go`: empty key, value or
//!   lease provided with `ignore_*`, duplicate keys in a txn) is [`validate_command`]; `apply`
//!   runs it too, so an invalid command is a deterministic no-op error on every replica;
//! - the applier (`etcdserver/apply.go`): ranges with sort/filter/limit, txn compare/check/apply,
//!   puts with `ignore_value`/`ignore_lease`/`prev_kv`, compaction, lease grant/revoke;
//! - the store (`mvcc/kvstore_txn.go`, `key_index.go`, `kvstore_compaction.go`): revisions,
//!   versions, tombstones and compaction retention;
//! - the watchable store (`watchable_store.go`, `watcher_group.go`, `v3rpc/watch.go`): which
//!   historical events a watcher starting at a revision gets ([`Store::events_since`]).
//!
//! Lease TTL bookkeeping (expiry, keep-alive, minimum TTL clamping) is the caller's: the store
//! only remembers the granted TTL and which keys are attached.

mod hash;
mod store;
mod types;
mod validate;

#[cfg(test)]
mod tests;

pub use store::{MAX_LEASE_TTL, Store, key_in_range};
pub use types::{
    Command, CommandResult, Compare, CompareResult, CompareTarget, DeleteRangeRequest,
    DeleteRangeResponse, Event, EventKind, KeyValue, Lease, MvccError, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, ResponseOp, Revision, SortOrder, SortTarget,
    TxnRequest, TxnResponse,
};
pub use validate::{is_txn_read_only, validate_command, validate_range};
