//! `[chainfire]` in the node config file.

use serde::Deserialize;
use uc_raft::RaftTuning;

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ChainfireConfig {
    /// etcd v3 gRPC API.
    pub client_port: u16,
    /// Raft between members.
    pub peer_port: u16,
    /// Admin REST.
    pub admin_port: u16,
    /// Founding members, etcd style: `["name=http://10.0.0.1:2380", …]`. Empty: a one-member
    /// cluster of this node.
    pub initial_cluster: Vec<String>,
    /// `new` to found a cluster; `existing` to join one that added this member
    /// (`etcdctl member add`).
    pub initial_cluster_state: ClusterState,
    /// The peer URL other members use for this node (default `http(s)://<bind>:<peer_port>`).
    /// A member's id is derived from it.
    pub advertise_peer_url: Option<String>,
    /// The client URL reported to clients (default `http(s)://<bind>:<client_port>`).
    pub advertise_client_url: Option<String>,
    /// Largest write request accepted (etcd's `--max-request-bytes`).
    pub max_request_bytes: usize,
    /// Most operations in one transaction (etcd's `--max-txn-ops`).
    pub max_txn_ops: usize,
    /// Largest keyspace (keys, values and history) before writes are refused with
    /// `database space exceeded` (etcd's `--quota-backend-bytes`).
    pub quota_bytes: u64,
    /// Seconds between progress notifications to watchers that asked for them.
    pub watch_progress_notify_secs: u64,
    pub raft: RaftTuning,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    #[default]
    New,
    Existing,
}

impl Default for ChainfireConfig {
    fn default() -> Self {
        Self {
            client_port: 2379,
            peer_port: 2380,
            admin_port: 8081,
            initial_cluster: Vec::new(),
            initial_cluster_state: ClusterState::New,
            advertise_peer_url: None,
            advertise_client_url: None,
            max_request_bytes: 1536 * 1024,
            max_txn_ops: 128,
            quota_bytes: 2 * 1024 * 1024 * 1024,
            watch_progress_notify_secs: 600,
            raft: RaftTuning::default(),
        }
    }
}

/// A member's id: derived from its advertised peer URL (see [`uc_raft::node_id_from_url`]),
/// so the cluster (at `member add`) and the new member (from its own config) agree on it.
pub fn member_id(peer_url: &str) -> u64 {
    uc_raft::node_id_from_url(peer_url)
}

pub use uc_raft::parse_initial_cluster;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_are_stable_and_url_normalized() {
        assert_eq!(
            member_id("http://10.0.0.1:2380"),
            member_id("http://10.0.0.1:2380/")
        );
        assert_ne!(
            member_id("http://10.0.0.1:2380"),
            member_id("http://10.0.0.2:2380")
        );
        assert_ne!(member_id(""), 0);
    }

    #[test]
    fn initial_cluster_parsing() {
        let ok = parse_initial_cluster(&["a=http://1.2.3.4:2380".into()]).unwrap();
        assert_eq!(ok, vec![("a".into(), "http://1.2.3.4:2380".into())]);
        assert!(parse_initial_cluster(&["a".into()]).is_err());
        assert!(parse_initial_cluster(&["=http://x".into()]).is_err());
        assert!(parse_initial_cluster(&["a=ftp://x".into()]).is_err());
    }
}
