//! iam: identities (organizations, projects, users, service accounts, groups), roles and
//! bindings, credentials and access tokens, authorization decisions, signing-key lifecycle
//! and the audit trail. Its data lives in its own flaredb namespace, secrets sealed with the
//! master key.

pub mod api;
pub mod ca;
pub mod catalog;
pub mod config;
pub mod crypto;
pub mod server;
pub mod service;

pub use config::IamConfig;
