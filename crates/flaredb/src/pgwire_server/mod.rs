//! flaredb's PostgreSQL wire protocol front-end, so `psql` and PostgreSQL drivers
//! (tokio-postgres, sqlx, JDBC, …) connect to a namespace.
//!
//! - **Login**: SCRAM-SHA-256. The user name is the namespace and the database must be the
//!   same namespace (or omitted). A wrong password, an unknown namespace or a database other
//!   than the user's own are all refused alike: 28P01 after the full SCRAM exchange.
//! - **Queries**: the simple protocol (several statements per query string, one implicit
//!   transaction) and the extended protocol (Parse/Bind/Describe/Execute with `$1`…
//!   parameters, text and binary formats). The SQL is SQLite's dialect; see [`values`] for
//!   how declared types map to PostgreSQL types.
//! - **Transactions**: `BEGIN` … `COMMIT` blocks are buffered and applied as one request at
//!   `COMMIT` (see `session`).
//! - **TLS**: with a server config, `SSLRequest` is accepted (and direct TLS with ALPN
//!   `postgresql`); without one it is refused and clients continue in plain text.

mod session;
mod sqltext;
mod values;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pgwire::api::PgWireServerHandlers;
use pgwire::api::auth::DefaultServerParameterProvider;
use pgwire::api::auth::StartupHandler;
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::sasl::scram::ScramAuth;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::tokio::TlsAcceptor;
use pgwire::tokio::tokio_rustls::rustls;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use uc_runtime::Shutdown;

use crate::backend::{SCRAM_ITERATIONS, SqlBackend};
use session::{Handler, NamespaceAuth, SERVER_VERSION};

type Startup = SASLAuthStartupHandler<DefaultServerParameterProvider>;

/// The PostgreSQL wire protocol listener.
pub struct PgServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    backend: Arc<dyn SqlBackend>,
    tls: Option<TlsAcceptor>,
    startup: Arc<Startup>,
}

impl PgServer {
    /// Binds the listener (errors for a taken port come out here).
    pub async fn bind(
        addr: SocketAddr,
        backend: Arc<dyn SqlBackend>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let tls = tls.map(|config| {
            // Direct TLS (PostgreSQL 17 clients) requires ALPN "postgresql"; the config may be
            // shared with HTTP servers, so set it on a copy.
            let mut config = (*config).clone();
            config.alpn_protocols = vec![b"postgresql".to_vec()];
            TlsAcceptor::from(Arc::new(config))
        });
        let mut scram = ScramAuth::new(Arc::new(NamespaceAuth::new(backend.clone())));
        scram.set_iterations(SCRAM_ITERATIONS);
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.server_version = SERVER_VERSION.to_owned();
        parameters.is_superuser = false;
        parameters.date_style = "ISO, MDY".to_owned();
        parameters.time_zone = "UTC".to_owned();
        let startup = Arc::new(SASLAuthStartupHandler::new(Arc::new(parameters)).with_scram(scram));
        Ok(Self {
            listener,
            local_addr,
            backend,
            tls,
            startup,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` fires, then stops accepting and closes connections.
    pub async fn serve(self, shutdown: Shutdown) {
        tracing::info!(addr = %self.local_addr, tls = self.tls.is_some(), "flaredb pgwire listening");
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.wait() => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = self.listener.accept() => match accepted {
                    Ok((socket, peer)) => {
                        let handlers = Connection {
                            handler: Arc::new(Handler::new(self.backend.clone())),
                            startup: self.startup.clone(),
                        };
                        let tls = self.tls.clone();
                        let shutdown = shutdown.clone();
                        connections.spawn(async move {
                            tokio::select! {
                                result = pgwire::tokio::process_socket(socket, tls, handlers) => {
                                    if let Err(e) = result {
                                        tracing::debug!(%peer, error = %e, "pgwire connection ended");
                                    }
                                }
                                // Dropping the socket closes the connection; an open
                                // transaction block is discarded, like a rollback.
                                _ = shutdown.wait() => {}
                            }
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "pgwire accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        drop(self.listener);
        while connections.join_next().await.is_some() {}
        tracing::info!(addr = %self.local_addr, "flaredb pgwire stopped");
    }
}

/// The handlers of one connection (each connection has its own session).
struct Connection {
    handler: Arc<Handler>,
    startup: Arc<Startup>,
}

impl PgWireServerHandlers for Connection {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.handler.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.handler.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }

    fn error_handler(&self) -> Arc<impl pgwire::api::ErrorHandler> {
        self.handler.clone()
    }
}
