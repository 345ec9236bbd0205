//! The openraft type configuration, generic over the application.

use std::fmt;
use std::io::Cursor;
use std::marker::PhantomData;

use serde::{Deserialize, Serialize};

use crate::state_machine::App;

pub type NodeId = u64;

/// Parses etcd-style `name=http(s)://host:port` member lists (URLs without a trailing slash).
pub fn parse_initial_cluster(entries: &[String]) -> Result<Vec<(String, String)>, String> {
    entries
        .iter()
        .map(|entry| {
            let (name, url) = entry
                .split_once('=')
                .ok_or_else(|| format!("`{entry}` is not name=url"))?;
            if name.is_empty() || !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!("`{entry}` is not name=http(s)://host:port"));
            }
            Ok((name.to_owned(), url.trim_end_matches('/').to_owned()))
        })
        .collect()
}

/// A member id derived from its advertised peer URL (FNV-1a), so a cluster adding a member and
/// the member itself agree on the id without talking. Never 0.
pub fn node_id_from_url(peer_url: &str) -> NodeId {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in peer_url.trim_end_matches('/').bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash.max(1)
}

/// What the cluster knows about a member: its name and where to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    pub name: String,
    /// Base URL of the member's raft (peer) HTTP server, e.g. `http://10.0.0.2:2380`.
    pub peer_url: String,
    /// Where clients reach the member's application API (e.g. etcd gRPC).
    pub client_urls: Vec<String>,
    /// Added as a voter while not yet running: it joins as a learner and the leader promotes
    /// it once it has caught up, so adding a member never costs the cluster its quorum.
    #[serde(default)]
    pub promote_when_caught_up: bool,
}

impl fmt::Display for PeerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.peer_url)
    }
}

/// openraft's type configuration for an [`App`]. (The derive macros would demand bounds on `A`
/// that a marker type does not need, hence the hand-written impls.)
pub struct TypeConfig<A>(PhantomData<fn() -> A>);

impl<A> Clone for TypeConfig<A> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<A> Copy for TypeConfig<A> {}
impl<A> Default for TypeConfig<A> {
    fn default() -> Self {
        Self(PhantomData)
    }
}
impl<A> PartialEq for TypeConfig<A> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<A> Eq for TypeConfig<A> {}
impl<A> PartialOrd for TypeConfig<A> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<A> Ord for TypeConfig<A> {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}
impl<A> fmt::Debug for TypeConfig<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TypeConfig")
    }
}

impl<A: App> openraft::RaftTypeConfig for TypeConfig<A> {
    // One log entry carries a batch of requests: concurrent writes share an entry, so they
    // share its fsync and replication round (group commit on top of openraft, which flushes
    // each append before the next).
    type D = Vec<A::Request>;
    type R = Vec<A::Response>;
    type NodeId = NodeId;
    type Node = PeerNode;
    type Entry = openraft::Entry<Self>;
    type SnapshotData = Cursor<Vec<u8>>;
    type AsyncRuntime = openraft::TokioRuntime;
    type Responder = openraft::impls::OneshotResponder<Self>;
}
