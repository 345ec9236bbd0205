//! `[flaredb]` in the node config file.

use serde::Deserialize;
use uc_raft::RaftTuning;

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct FlaredbConfig {
    /// REST API (SQL, KV, namespaces, backups).
    pub rest_port: u16,
    /// PostgreSQL wire protocol.
    pub pg_port: u16,
    /// Raft between flaredb members (all namespaces share it).
    pub peer_port: u16,
    /// The flaredb members, `["name=http://10.0.0.1:2480", …]`; empty: this node alone. Every
    /// namespace is replicated on all of them.
    pub initial_cluster: Vec<String>,
    /// The peer URL other members use for this node (default `http(s)://<bind>:<peer_port>`).
    pub advertise_peer_url: Option<String>,
    /// chainfire (etcd v3) endpoint where namespace placement is recorded. Default: the
    /// node's own chainfire.
    pub chainfire_endpoint: Option<String>,
    /// Largest request (statements and parameters) accepted.
    pub max_request_bytes: usize,
    pub raft: RaftTuning,
}

impl Default for FlaredbConfig {
    fn default() -> Self {
        Self {
            rest_port: 8082,
            pg_port: 5433,
            peer_port: 2480,
            initial_cluster: Vec::new(),
            advertise_peer_url: None,
            chainfire_endpoint: None,
            max_request_bytes: 4 * 1024 * 1024,
            raft: RaftTuning::default(),
        }
    }
}
