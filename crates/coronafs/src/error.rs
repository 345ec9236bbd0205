//! The errors of coronafs's cores, mapped onto the shared API error shape.

use uc_runtime::ApiError;
use uc_runtime::client::ClientError;

#[derive(Debug, thiserror::Error)]
pub enum CoronafsError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Denied(String),
    /// A dependency (flaredb, a node, a tool) is not usable now; a retry may succeed.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, CoronafsError>;

impl From<CoronafsError> for ApiError {
    fn from(e: CoronafsError) -> Self {
        match e {
            CoronafsError::NotFound(m) => ApiError::not_found(m),
            CoronafsError::Conflict(m) => ApiError::conflict(m),
            CoronafsError::Invalid(m) => ApiError::invalid_argument(m),
            CoronafsError::Denied(m) => ApiError::permission_denied(m),
            CoronafsError::Unavailable(m) => ApiError::unavailable(m),
            CoronafsError::Internal(m) => ApiError::internal(m),
        }
    }
}

impl From<crate::qemu::QemuError> for CoronafsError {
    fn from(e: crate::qemu::QemuError) -> Self {
        match e {
            crate::qemu::QemuError::Rejected(m) => Self::Invalid(m),
            crate::qemu::QemuError::Failed(m) => Self::Internal(m),
        }
    }
}

impl From<std::io::Error> for CoronafsError {
    fn from(e: std::io::Error) -> Self {
        Self::Internal(format!("local disk: {e}"))
    }
}

/// A node's answer as the controller sees it: the node's 4xx are the caller's problem and
/// keep their meaning; anything else means the node is not usable now.
pub fn from_node(node: &str, e: ClientError) -> CoronafsError {
    match e.status() {
        Some(400) => CoronafsError::Invalid(node_message(&e)),
        Some(404) => CoronafsError::NotFound(node_message(&e)),
        Some(409) => CoronafsError::Conflict(node_message(&e)),
        _ => CoronafsError::Unavailable(format!("storage node {node}: {e}")),
    }
}

fn node_message(e: &ClientError) -> String {
    match e {
        ClientError::Api(f) => f.message.clone(),
        other => other.to_string(),
    }
}
