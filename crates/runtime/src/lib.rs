//! uc-runtime: the plumbing every UltraCloud component shares, written once.
//!
//! - [`config`]: TOML file + `UC_*` environment + CLI overrides, strict (unknown keys rejected).
//! - [`http`]: the axum server scaffold (health, readiness, metrics, request ids, one error
//!   shape, body limits, TLS, graceful shutdown) and the auth middleware slot.
//! - [`client`]: a typed HTTP client with timeouts, retries and bearer auth.
//! - [`log`]: tracing setup, text or JSON.
//! - [`secret`]: a redacting wrapper for secrets and 0600 secret files.
//! - [`auth`] and [`token`]: the auth hook, UltraCloud access tokens (signing, offline
//!   verification with cached JWKS) and permission checks.

pub mod auth;
pub mod client;
pub mod component;
pub mod config;
pub mod error;
pub mod http;
pub mod log;
pub mod metrics;
pub mod secret;
pub mod shutdown;
pub mod tls;
pub mod token;

pub use component::NodeContext;
pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use secret::Secret;
pub use shutdown::Shutdown;

/// The version every UltraCloud binary and server reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
