//! chainfire: the replicated coordination store, wire-compatible with the etcd v3 API.
//!
//! - [`mvcc`]: the keyspace with etcd's revision semantics (plain Rust, deterministic).
//! - [`state`]: that keyspace as a uc-raft application, with the watch feed.
//! - the etcd v3 gRPC services, lease expiry on the leader, admin REST, and [`start`].

pub mod admin;
pub mod client;
pub mod config;
mod convert;
pub mod etcdpb;
mod grpc;
mod lease;
pub mod mvcc;
mod server;
pub mod state;

pub use config::{ChainfireConfig, ClusterState, member_id};
pub use grpc::ETCD_API_VERSION;
pub use server::{Endpoints, Running, StartError, check_config, start};
