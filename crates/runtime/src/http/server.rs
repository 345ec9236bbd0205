//! [`HttpServer`]: routes plus the shared layers, served over TCP or TLS with graceful
//! shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::middleware::{Context, no_route, request_context};
use super::readiness::Readiness;
use crate::auth::{Authenticator, require_bearer};
use crate::shutdown::Shutdown;
use crate::tls::{self, TlsConfig, TlsError};

/// `[http]`: settings shared by every HTTP listener of a process.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Largest request body accepted, in bytes (larger: 413).
    pub max_body_bytes: usize,
    /// Seconds in-flight requests get to finish after a shutdown signal.
    pub shutdown_grace_secs: u64,
    /// Seconds a client gets to send its request headers.
    pub header_read_timeout_secs: u64,
    /// Serve TLS with this certificate; plain HTTP when absent.
    pub tls: Option<TlsConfig>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            shutdown_grace_secs: 5,
            header_read_timeout_secs: 30,
            tls: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The client certificate chain of a mutually authenticated TLS connection, as a request
/// extension.
#[derive(Debug, Clone)]
pub struct TlsPeer(pub Vec<CertificateDer<'static>>);

/// A component's HTTP server: its API routes (behind the auth hook), optional public routes,
/// and `/healthz`, `/readyz`, `/metrics`.
pub struct HttpServer {
    component: &'static str,
    config: HttpConfig,
    readiness: Readiness,
    auth: Arc<dyn Authenticator>,
    api: Router,
    public: Router,
    openapi: Option<utoipa::openapi::OpenApi>,
    log_successes: bool,
}

impl HttpServer {
    /// Every server has an authenticator: there is no way to build an unauthenticated API.
    pub fn new(component: &'static str, config: HttpConfig, auth: Arc<dyn Authenticator>) -> Self {
        Self {
            component,
            config,
            readiness: Readiness::new(),
            auth,
            api: Router::new(),
            public: Router::new(),
            openapi: None,
            log_successes: true,
        }
    }

    /// Logs successful requests at debug instead of info: for high-rate protocol listeners
    /// (a gRPC data plane, Raft between peers) where a line per call would drown the log.
    /// Failed requests are still logged at info.
    pub fn quiet_access_log(mut self) -> Self {
        self.log_successes = false;
        self
    }

    /// The API's OpenAPI description, served (without a token, like any published API
    /// reference) at `/v1/openapi.json`. The bearer scheme and the shared error schema are
    /// added here, so each component describes only its own paths.
    pub fn openapi(mut self, mut doc: utoipa::openapi::OpenApi) -> Self {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        use utoipa::{PartialSchema, ToSchema};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.schemas.insert(
            crate::ErrorBody::name().into_owned(),
            crate::ErrorBody::schema(),
        );
        components.schemas.insert(
            crate::ErrorDetail::name().into_owned(),
            crate::ErrorDetail::schema(),
        );
        self.openapi = Some(doc);
        self
    }

    /// The readiness `/readyz` reports; the component marks it ready.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Routes that require a valid bearer token.
    pub fn api(mut self, routes: Router) -> Self {
        self.api = self.api.merge(routes);
        self
    }

    /// Routes reachable without a token (health-like endpoints, key publication). Use
    /// sparingly: SPEC §1 puts every API behind iam.
    pub fn public(mut self, routes: Router) -> Self {
        self.public = self.public.merge(routes);
        self
    }

    /// The complete app with every shared layer, for serving or for in-process tests.
    pub fn into_router(self) -> Router {
        let readiness = self.readiness.clone();
        let mut public = self.public;
        if let Some(doc) = self.openapi {
            let json = Arc::new(doc.to_json().unwrap_or_else(|_| "{}".to_owned()));
            public = public.route(
                "/v1/openapi.json",
                get(move || {
                    let json = json.clone();
                    async move {
                        (
                            [(header::CONTENT_TYPE, "application/json")],
                            json.as_str().to_owned(),
                        )
                    }
                }),
            );
        }
        let protected = self
            .api
            .route("/metrics", get(metrics))
            .route_layer(from_fn_with_state(self.auth, require_bearer));
        Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(move || readyz(readiness.clone())))
            .merge(public)
            .merge(protected)
            .fallback(no_route)
            .layer(DefaultBodyLimit::max(self.config.max_body_bytes))
            .layer(from_fn_with_state(
                Arc::new(Context {
                    component: self.component,
                    log_successes: self.log_successes,
                }),
                request_context,
            ))
    }

    /// Binds the listener (so a taken port is an error before anything runs) and loads TLS.
    pub async fn bind(self, addr: SocketAddr) -> Result<BoundHttpServer, ServeError> {
        let tls = match &self.config.tls {
            Some(cfg) => Some(TlsAcceptor::from(tls::server_config(cfg)?)),
            None => None,
        };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ServeError::Bind { addr, source })?;
        Ok(BoundHttpServer {
            component: self.component,
            grace: Duration::from_secs(self.config.shutdown_grace_secs),
            header_timeout: Duration::from_secs(self.config.header_read_timeout_secs.max(1)),
            readiness: self.readiness.clone(),
            app: self.into_router(),
            listener,
            local_addr,
            tls,
        })
    }
}

async fn healthz() -> Response {
    json_status(StatusCode::OK, serde_json::json!({"status": "ok"}))
}

async fn readyz(readiness: Readiness) -> Response {
    match readiness.check() {
        Ok(()) => json_status(StatusCode::OK, serde_json::json!({"status": "ready"})),
        Err(reasons) => json_status(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "not_ready", "reasons": reasons}),
        ),
    }
}

fn json_status(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

async fn metrics() -> Response {
    let mut response = crate::metrics::encode().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    response
}

/// A server with its listener bound; [`BoundHttpServer::serve`] runs it until shutdown.
pub struct BoundHttpServer {
    component: &'static str,
    grace: Duration,
    header_timeout: Duration,
    readiness: Readiness,
    app: Router,
    listener: TcpListener,
    local_addr: SocketAddr,
    tls: Option<TlsAcceptor>,
}

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl BoundHttpServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Serves until `shutdown` fires; then stops accepting, lets in-flight requests finish
    /// within the grace period, closes what is left, and returns.
    pub async fn serve(self, shutdown: Shutdown) {
        let Self {
            component,
            grace,
            header_timeout,
            readiness,
            app,
            listener,
            local_addr,
            tls,
        } = self;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout);
        let graceful = GracefulShutdown::new();
        let mut connections = JoinSet::new();
        tracing::info!(component, addr = %local_addr, tls = tls.is_some(), "listening");

        loop {
            while connections.try_join_next().is_some() {}
            let (stream, peer) = tokio::select! {
                _ = shutdown.wait() => break,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(component, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let watcher = graceful.watcher();
            let builder = builder.clone();
            let app = app.clone();
            let tls = tls.clone();
            let shutdown = shutdown.clone();
            connections.spawn(async move {
                match tls {
                    None => {
                        serve_connection(builder, TokioIo::new(stream), app, peer, None, watcher)
                            .await
                    }
                    Some(acceptor) => {
                        // A handshake still under way when shutdown begins carries no request
                        // yet: drop it rather than make the drain wait for it.
                        let handshake = tokio::select! {
                            h = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => h,
                            _ = shutdown.wait() => return,
                        };
                        match handshake {
                            Ok(Ok(tls_stream)) => {
                                let peer_certs =
                                    tls_stream.get_ref().1.peer_certificates().map(|c| {
                                        TlsPeer(c.iter().map(|c| c.clone().into_owned()).collect())
                                    });
                                serve_connection(
                                    builder,
                                    TokioIo::new(tls_stream),
                                    app,
                                    peer,
                                    peer_certs,
                                    watcher,
                                )
                                .await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                }
            });
        }

        // Stop accepting first, then drain.
        readiness.set_shutting_down();
        drop(listener);
        tracing::info!(
            component,
            grace_secs = grace.as_secs(),
            open = connections.len(),
            "stopped accepting; draining"
        );
        match tokio::time::timeout(grace, graceful.shutdown()).await {
            Ok(()) => tracing::info!(component, "all connections finished"),
            Err(_) => tracing::warn!(
                component,
                open = connections.len(),
                "grace period over; closing remaining connections"
            ),
        }
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}

async fn serve_connection<I>(
    builder: auto::Builder<TokioExecutor>,
    io: TokioIo<I>,
    app: Router,
    peer: SocketAddr,
    tls_peer: Option<TlsPeer>,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = app.map_request(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        if let Some(certs) = &tls_peer {
            req.extensions_mut().insert(certs.clone());
        }
        req
    });
    let connection = builder.serve_connection_with_upgrades(io, TowerToHyperService::new(service));
    if let Err(e) = watcher.watch(connection.into_owned()).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
