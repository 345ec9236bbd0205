//! The node's own server: health, readiness and metrics for the whole process, plus
//! `/v1/node`, which says what runs here.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::routing::get;
use serde::Serialize;
use uc_runtime::auth::Authenticator;
use uc_runtime::http::{BoundHttpServer, HttpConfig, HttpServer, Json};

/// What `/v1/node` reports.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub version: &'static str,
    pub components: Vec<Endpoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    pub component: String,
    pub url: String,
}

pub async fn bind(
    http: &HttpConfig,
    auth: Arc<dyn Authenticator>,
    listen: std::net::SocketAddr,
    status: NodeStatus,
) -> Result<BoundHttpServer, uc_runtime::http::ServeError> {
    let started = Instant::now();
    let status = Arc::new(status);
    let api = Router::new().route(
        "/v1/node",
        get(move || {
            let status = status.clone();
            async move {
                Json(serde_json::json!({
                    "name": status.name,
                    "version": status.version,
                    "uptime_secs": started.elapsed().as_secs(),
                    "components": status.components,
                }))
            }
        }),
    );
    HttpServer::new("node", http.clone(), auth)
        .api(api)
        .bind(listen)
        .await
}
