//! chainfire: the replicated coordination store, wire-compatible with the etcd v3 API.

pub mod mvcc;
