//! The outermost layer of every server: request id, tracing span, metrics, access log, and
//! the error shape for responses the framework produced itself (404, 405, 413 …).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use super::request_id::{self, RequestId};
use crate::error::{ApiError, code_for_status};
use crate::metrics;

pub(crate) struct Context {
    pub component: &'static str,
    /// Successful requests logged at info (management APIs) or only at debug (high-rate
    /// protocol listeners such as gRPC data planes and Raft peers). Errors are always info.
    pub log_successes: bool,
}

pub(crate) async fn request_context(
    State(ctx): State<Arc<Context>>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let id = request_id::accept_or_generate(req.headers());
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().clone();
    // The route template, not the concrete path, so metrics stay bounded.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    // The path only: query strings can carry credentials (presigned URLs).
    let path = req.uri().path().to_owned();
    let span = tracing::info_span!(
        "request",
        component = ctx.component,
        method = %method,
        path = %path,
        request_id = %id,
    );

    let response = request_id::scope(id.clone(), next.run(req).instrument(span.clone())).await;
    let mut response = shape_framework_error(response, &id).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(request_id::HEADER, value);
    }

    let status = response.status();
    let elapsed = started.elapsed();
    metrics::http().observe(
        ctx.component,
        method.as_str(),
        &route,
        status.as_u16(),
        elapsed,
    );
    let _guard = span.enter();
    let ms = elapsed.as_secs_f64() * 1000.0;
    let routine = matches!(route.as_str(), "/healthz" | "/readyz" | "/metrics")
        || (!ctx.log_successes && !status.is_client_error() && !status.is_server_error());
    if routine {
        tracing::debug!(status = status.as_u16(), ms, "request");
    } else {
        tracing::info!(status = status.as_u16(), ms, "request");
    }
    response
}

/// Framework responses (no route, wrong method, body too large, …) come as plain text; give
/// them the one JSON error shape. Handler errors are JSON already and pass through.
async fn shape_framework_error(response: Response, request_id: &str) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_lowercase()
    } else {
        text
    };
    let error = ApiError::new(status, code_for_status(status), message);
    let body = serde_json::to_vec(&error.body(request_id)).unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}

pub(crate) async fn no_route(req: Request) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {} {}", req.method(), req.uri().path()),
    )
    .into_response()
}
