//! uc-raft: the Raft glue chainfire and flaredb share, on openraft.
//!
//! - [`LogStore`]: the Raft log and vote on redb, fsync'd before a write is acknowledged, with
//!   group commit (appends queued while a commit is in flight share the next fsync).
//! - [`App`] + the state-machine adapter: an application implements `apply`, `snapshot` and
//!   `restore`; uc-raft tracks the applied log id and membership, builds, persists, streams
//!   and installs snapshots.
//! - The peer network: Raft RPCs as authenticated HTTP (postcard bodies) on the component's
//!   raft port, TLS when the node has a certificate.
//! - [`RaftNode`]: bootstrap, writes forwarded to the leader, linearizable read barriers
//!   (ReadIndex, also on followers), membership administration and Prometheus metrics.

mod log_store;
mod metrics;
mod network;
mod node;
mod state_machine;
mod types;

pub use log_store::LogStore;
pub use node::{
    MemberInfo, Membership, RaftNode, RaftNodeConfig, RaftStatus, RaftTuning, WriteError,
};
pub use openraft;
pub use state_machine::{App, seed_from_snapshot};
pub use types::{NodeId, PeerNode, TypeConfig, node_id_from_url, parse_initial_cluster};
