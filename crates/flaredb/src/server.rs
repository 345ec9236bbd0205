//! Starting flaredb on a node: the namespace registry following the catalog in chainfire, and
//! the REST, PostgreSQL and peer listeners.

use std::sync::Arc;

use uc_runtime::http::HttpServer;
use uc_runtime::{NodeContext, Shutdown};
use utoipa::OpenApi;

use crate::catalog::{Catalog, MemberRef};
use crate::config::FlaredbConfig;
use crate::namespaces::{Registry, RegistryConfig};
use crate::rest::{self, RestState};

#[derive(Debug, Clone)]
pub struct Endpoints {
    pub rest_url: String,
    pub pg_addr: std::net::SocketAddr,
    pub peer_url: String,
}

pub struct Running {
    pub endpoints: Endpoints,
    pub registry: Arc<Registry>,
    pub task: tokio::task::JoinHandle<()>,
    /// Ready once the namespace catalog has been read.
    pub readiness: uc_runtime::http::Readiness,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("flaredb config: {0}")]
    Config(String),
    #[error("flaredb: {0}")]
    Runtime(String),
}

pub fn check_config(config: &FlaredbConfig) -> Result<(), StartError> {
    uc_raft::parse_initial_cluster(&config.initial_cluster).map_err(StartError::Config)?;
    if config.max_request_bytes == 0 {
        return Err(StartError::Config(
            "max_request_bytes must be greater than 0".into(),
        ));
    }
    Ok(())
}

/// Starts flaredb. `default_chainfire` is used when the config names no chainfire endpoint
/// (the node's own chainfire).
pub async fn start(
    ctx: &NodeContext,
    config: FlaredbConfig,
    default_chainfire: String,
    shutdown: Shutdown,
) -> Result<Running, StartError> {
    check_config(&config)?;
    let scheme = ctx.scheme();
    let peer_url = config
        .advertise_peer_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{}", ctx.listen(config.peer_port)))
        .trim_end_matches('/')
        .to_owned();
    let me = MemberRef {
        id: uc_raft::node_id_from_url(&peer_url),
        name: ctx.node_name.clone(),
        peer_url: peer_url.clone(),
    };
    let members: Vec<MemberRef> = if config.initial_cluster.is_empty() {
        vec![me.clone()]
    } else {
        uc_raft::parse_initial_cluster(&config.initial_cluster)
            .map_err(StartError::Config)?
            .into_iter()
            .map(|(name, url)| MemberRef {
                id: uc_raft::node_id_from_url(&url),
                name,
                peer_url: url,
            })
            .collect()
    };
    if !members.iter().any(|m| m.id == me.id) {
        return Err(StartError::Config(format!(
            "initial_cluster does not contain this member's peer URL {peer_url}"
        )));
    }
    let catalog = Catalog::new(
        config
            .chainfire_endpoint
            .clone()
            .unwrap_or(default_chainfire),
        ctx.service_token.clone(),
        ctx.trusted_ca_file().map(ToOwned::to_owned),
    );
    let registry = Registry::new(RegistryConfig {
        me,
        members,
        dir: ctx.component_dir("flaredb"),
        tuning: config.raft.clone(),
        peer_token: ctx.service_token.clone(),
        peer_ca_file: ctx.trusted_ca_file().map(ToOwned::to_owned),
        max_request_bytes: config.max_request_bytes,
        catalog,
    });

    let bind_err = |e: uc_runtime::http::ServeError| StartError::Runtime(e.to_string());
    let peer = HttpServer::new("flaredb-peer", ctx.http.clone(), ctx.auth.clone())
        .quiet_access_log()
        .api(registry.peer_router())
        .bind(ctx.listen(config.peer_port))
        .await
        .map_err(bind_err)?;
    // REST routes authenticate themselves (operator token or namespace credential).
    let rest_state = RestState::new(registry.clone(), ctx.auth.clone());
    // Services call the REST API for every query (iam several times per token): a line per
    // successful call would drown the log.
    let rest = HttpServer::new("flaredb", ctx.http.clone(), ctx.auth.clone())
        .quiet_access_log()
        .public(rest::routes(rest_state, config.max_request_bytes))
        .openapi(rest::FlaredbApi::openapi())
        .bind(ctx.listen(config.rest_port))
        .await
        .map_err(bind_err)?;
    let pg_tls = match &ctx.http.tls {
        Some(tls) => Some(
            uc_runtime::tls::server_config(tls).map_err(|e| StartError::Config(e.to_string()))?,
        ),
        None => None,
    };
    let pg =
        crate::pgwire_server::PgServer::bind(ctx.listen(config.pg_port), registry.clone(), pg_tls)
            .await
            .map_err(|e| {
                StartError::Runtime(format!(
                    "cannot listen on {}: {e}",
                    ctx.listen(config.pg_port)
                ))
            })?;

    let endpoints = Endpoints {
        rest_url: format!("{scheme}://{}", rest.local_addr()),
        pg_addr: pg.local_addr(),
        peer_url,
    };
    let readiness = rest.readiness();
    for r in [&readiness, &peer.readiness()] {
        r.set_ready();
        r.set("catalog", Err("namespace catalog not read yet".into()));
    }
    let (synced_tx, mut synced_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let peer_readiness = peer.readiness();
    tasks.spawn(peer.serve(shutdown.clone()));
    tasks.spawn(rest.serve(shutdown.clone()));
    tasks.spawn(pg.serve(shutdown.clone()));
    tasks.spawn(registry.clone().run(synced_tx, shutdown.clone()));
    {
        let readiness = readiness.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = shutdown.wait() => {}
                _ = synced_rx.wait_for(|s| *s) => {
                    readiness.set("catalog", Ok(()));
                    peer_readiness.set("catalog", Ok(()));
                }
            }
        });
    }
    tracing::info!(rest = %endpoints.rest_url, pg = %endpoints.pg_addr, peer = %endpoints.peer_url, "flaredb started");
    let task = tokio::spawn(async move {
        while tasks.join_next().await.is_some() {}
        tracing::info!("flaredb stopped");
    });
    Ok(Running {
        endpoints,
        registry,
        task,
        readiness,
    })
}
