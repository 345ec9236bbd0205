//! The HTTP server scaffold every component serves its API with.

mod json;
mod middleware;
pub mod readiness;
pub mod request_id;
mod server;

pub use json::Json;
pub use readiness::Readiness;
pub use request_id::RequestId;
pub use server::{BoundHttpServer, HttpConfig, HttpServer, ServeError, TlsPeer};
