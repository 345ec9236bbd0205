//! flaredb: the replicated SQL/KV metadata store. Namespaces are Raft groups (uc-raft) with an
//! in-memory SQLite state machine, reachable over REST and the PostgreSQL wire protocol.

pub mod backend;
pub mod catalog;
pub mod client;
pub mod config;
pub mod namespaces;
pub mod pgwire_server;
pub mod rest;
pub mod server;
pub mod sql;

pub use backend::{LocalBackend, ScramSecret, SqlBackend};
