//! `ultracloud up` (every component in one process) and `ultracloud serve <component>`.
//! Both load the same node config and run the same servers; `up` adds first-start setup.

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;
use uc_runtime::auth::Authenticator;
use uc_runtime::config::Override;
use uc_runtime::{Secret, Shutdown};

use crate::Failure;
use crate::cli::{Component, OutputFormat, ServeArgs, UpArgs};
use crate::node::{self, Endpoint, NodeStatus};
use crate::node_config::NodeConfig;
use crate::output;
use crate::secrets::{self, DirLock, SecretPaths};

#[derive(Debug, Serialize)]
struct UpReport {
    node: String,
    data_dir: String,
    admin_token_file: String,
    endpoints: Vec<EndpointRow>,
}

#[derive(Debug, Serialize)]
struct EndpointRow {
    component: String,
    url: String,
    health: String,
}

/// A component started by `up` or `serve`: what it listens on, and its task.
struct Started {
    name: &'static str,
    readiness: uc_runtime::http::Readiness,
    endpoints: Vec<Endpoint>,
    /// (component, health URL)
    health: Vec<(String, String)>,
    task: tokio::task::JoinHandle<()>,
    _lock: DirLock,
}

impl Started {
    /// A component with one HTTP endpoint whose health is `<url>/healthz`.
    fn http(
        name: &'static str,
        label: &str,
        url: String,
        readiness: uc_runtime::http::Readiness,
        task: tokio::task::JoinHandle<()>,
        lock: DirLock,
    ) -> Self {
        Self {
            name,
            readiness,
            health: vec![(label.to_owned(), format!("{url}/healthz"))],
            endpoints: vec![Endpoint {
                component: label.to_owned(),
                url,
            }],
            task,
            _lock: lock,
        }
    }
}

async fn start_chainfire(
    cfg: &NodeConfig,
    ctx: &uc_runtime::NodeContext,
    shutdown: &Shutdown,
) -> Result<Started, Failure> {
    let lock = DirLock::acquire(&ctx.component_dir("chainfire"))?;
    let running = chainfire::start(ctx, cfg.chainfire.clone(), shutdown.clone())
        .await
        .map_err(|e| match e {
            chainfire::StartError::Config(m) => Failure::Config(m),
            chainfire::StartError::Runtime(m) => Failure::Runtime(anyhow::anyhow!(m)),
        })?;
    let ep = &running.endpoints;
    Ok(Started {
        name: "chainfire",
        readiness: running.readiness.clone(),
        endpoints: vec![
            Endpoint {
                component: "chainfire (etcd v3 gRPC)".into(),
                url: ep.client_url.clone(),
            },
            Endpoint {
                component: "chainfire admin".into(),
                url: ep.admin_url.clone(),
            },
        ],
        health: vec![
            (
                "chainfire (etcd v3 gRPC)".into(),
                format!("{}/healthz", ep.client_url),
            ),
            (
                "chainfire admin".into(),
                format!("{}/healthz", ep.admin_url),
            ),
        ],
        task: running.task,
        _lock: lock,
    })
}

async fn start_flaredb(
    cfg: &NodeConfig,
    ctx: &uc_runtime::NodeContext,
    shutdown: &Shutdown,
    chainfire_url: String,
) -> Result<Started, Failure> {
    let lock = DirLock::acquire(&ctx.component_dir("flaredb"))?;
    let running = flaredb::server::start(ctx, cfg.flaredb.clone(), chainfire_url, shutdown.clone())
        .await
        .map_err(|e| match e {
            flaredb::server::StartError::Config(m) => Failure::Config(m),
            flaredb::server::StartError::Runtime(m) => Failure::Runtime(anyhow::anyhow!(m)),
        })?;
    let ep = &running.endpoints;
    let pg_url = format!("postgresql://{}", ep.pg_addr);
    Ok(Started {
        name: "flaredb",
        readiness: running.readiness.clone(),
        endpoints: vec![
            Endpoint {
                component: "flaredb (REST)".into(),
                url: ep.rest_url.clone(),
            },
            Endpoint {
                component: "flaredb (PostgreSQL)".into(),
                url: pg_url,
            },
        ],
        health: vec![
            ("flaredb (REST)".into(), format!("{}/healthz", ep.rest_url)),
            (
                "flaredb (PostgreSQL)".into(),
                format!("{}/readyz", ep.rest_url),
            ),
        ],
        task: running.task,
        _lock: lock,
    })
}

/// Creates iam's flaredb namespace on first start (see [`ensure_service_namespace`]).
async fn ensure_iam_namespace(
    cfg: &NodeConfig,
    ctx: &uc_runtime::NodeContext,
    flaredb: &Started,
    paths: &SecretPaths,
) -> Result<(), Failure> {
    let password_file = paths.service_password(&cfg.iam.flaredb_password_file, "iam");
    ensure_service_namespace(
        ctx,
        flaredb,
        "iam",
        &cfg.iam.flaredb_namespace,
        &password_file,
    )
    .await
}

/// Creates a component's own flaredb namespace (strong mode) on first start and keeps its
/// password in `password_file` (0600) with the node's secrets; later starts find the file
/// and reuse the namespace. Every component that keeps metadata in flaredb calls this from
/// `up` before it starts.
async fn ensure_service_namespace(
    ctx: &uc_runtime::NodeContext,
    flaredb: &Started,
    component: &str,
    namespace: &str,
    password_file: &std::path::Path,
) -> Result<(), Failure> {
    if password_file.exists() {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while flaredb.readiness.check().is_err() {
        if std::time::Instant::now() > deadline {
            return Err(Failure::Runtime(anyhow::anyhow!(
                "flaredb did not become ready; cannot create {component}'s namespace"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let api = uc_runtime::client::ApiClient::new(
        &flaredb.endpoints[0].url,
        uc_runtime::client::ClientOptions {
            token: Some(ctx.service_token.clone()),
            ca_file: ctx.trusted_ca_file().map(ToOwned::to_owned),
            ..Default::default()
        },
    )
    .map_err(|e| Failure::Runtime(e.into()))?;
    let created: flaredb::rest::CreatedNamespace = api
        .post(
            "/api/v1/namespaces",
            &serde_json::json!({"name": namespace, "mode": "strong"}),
        )
        .await
        .with_context(|| {
            format!("cannot create flaredb namespace {namespace:?} for {component}")
        })?;
    uc_runtime::secret::write_secret_file(password_file, created.password.as_bytes())
        .with_context(|| format!("cannot write {}", password_file.display()))?;
    tracing::info!(path = %password_file.display(), "created {component}'s flaredb namespace");
    Ok(())
}

async fn start_iam(
    cfg: &NodeConfig,
    ctx: &uc_runtime::NodeContext,
    shutdown: &Shutdown,
    default_flaredb: String,
) -> Result<Started, Failure> {
    let boot = iam::server::Bootstrap {
        secrets_dir: SecretPaths::new(&cfg.node.data_dir).dir,
        admin_token_explicit: cfg.auth.admin_token_file.is_some(),
        default_flaredb,
    };
    let running = iam::server::start(ctx, cfg.iam.clone(), boot, shutdown.clone())
        .await
        .map_err(|e| match e {
            iam::server::StartError::Config(m) => Failure::Config(m),
            iam::server::StartError::Runtime(m) => Failure::Runtime(anyhow::anyhow!(m)),
        })?;
    Ok(Started::http(
        "iam",
        "iam",
        running.url,
        running.readiness,
        running.task,
        DirLock::acquire(&ctx.component_dir("iam"))?,
    ))
}

/// coronafs under `up`: its namespace first (when it runs the controller), then both roles.
async fn start_coronafs(
    cfg: &NodeConfig,
    ctx: &uc_runtime::NodeContext,
    shutdown: &Shutdown,
    flaredb: &Started,
    paths: &SecretPaths,
) -> Result<Started, Failure> {
    if cfg.coronafs.controller {
        let password_file = paths.service_password(&cfg.coronafs.flaredb_password_file, "coronafs");
        ensure_service_namespace(
            ctx,
            flaredb,
            "coronafs",
            &cfg.coronafs.flaredb_namespace,
            &password_file,
        )
        .await?;
    }
    start_coronafs_with(cfg, ctx, shutdown, flaredb.endpoints[0].url.clone()).await
}

async fn start_coronafs_with(
    cfg: &NodeConfig,
    ctx: &uc_runtime::NodeContext,
    shutdown: &Shutdown,
    flaredb_url: String,
) -> Result<Started, Failure> {
    let lock = DirLock::acquire(&ctx.component_dir("coronafs"))?;
    let defaults = coronafs::server::Defaults {
        secrets_dir: SecretPaths::new(&cfg.node.data_dir).dir,
        flaredb_url,
    };
    let running = coronafs::server::start(ctx, cfg.coronafs.clone(), defaults, shutdown.clone())
        .await
        .map_err(|e| match e {
            coronafs::server::StartError::Config(m) => Failure::Config(m),
            coronafs::server::StartError::Runtime(m) => Failure::Runtime(anyhow::anyhow!(m)),
        })?;
    Ok(Started::http(
        "coronafs",
        "coronafs",
        running.url,
        running.readiness,
        running.task,
        lock,
    ))
}

/// prismnet under `up`: its namespace first, then the API.
async fn start_prismnet(
    cfg: &NodeConfig,
    ctx: &uc_runtime::NodeContext,
    shutdown: &Shutdown,
    flaredb: &Started,
    paths: &SecretPaths,
) -> Result<Started, Failure> {
    let password_file = paths.service_password(&cfg.prismnet.flaredb_password_file, "prismnet");
    ensure_service_namespace(
        ctx,
        flaredb,
        "prismnet",
        &cfg.prismnet.flaredb_namespace,
        &password_file,
    )
    .await?;
    start_prismnet_with(cfg, ctx, shutdown, flaredb.endpoints[0].url.clone()).await
}

async fn start_prismnet_with(
    cfg: &NodeConfig,
    ctx: &uc_runtime::NodeContext,
    shutdown: &Shutdown,
    flaredb_url: String,
) -> Result<Started, Failure> {
    let lock = DirLock::acquire(&ctx.component_dir("prismnet"))?;
    let boot = prismnet::server::Bootstrap {
        secrets_dir: SecretPaths::new(&cfg.node.data_dir).dir,
        default_flaredb: flaredb_url,
    };
    let running = prismnet::server::start(ctx, cfg.prismnet.clone(), boot, shutdown.clone())
        .await
        .map_err(|e| match e {
            prismnet::server::StartError::Config(m) => Failure::Config(m),
            prismnet::server::StartError::Runtime(m) => Failure::Runtime(anyhow::anyhow!(m)),
        })?;
    Ok(Started::http(
        "prismnet",
        "prismnet",
        running.url,
        running.readiness,
        running.task,
        lock,
    ))
}

/// The host network agent (`[prismnet_agent]`), talking to `default_api` unless configured
/// otherwise; runs until shutdown.
fn prismnet_agent(
    cfg: &NodeConfig,
    ctx: &uc_runtime::NodeContext,
    default_api: String,
) -> Result<(prismnet::agent::Agent, DirLock), Failure> {
    let agent_cfg = cfg.prismnet_agent.clone();
    let api_url = agent_cfg.api_url.clone().unwrap_or(default_api);
    let host = agent_cfg
        .host
        .clone()
        .unwrap_or_else(|| cfg.node.name.clone());
    let client = prismnet::client::PrismnetClient::new(
        &api_url,
        uc_runtime::client::ClientOptions {
            token: Some(ctx.service_token.clone()),
            ca_file: ctx.trusted_ca_file().map(ToOwned::to_owned),
            ..Default::default()
        },
    )
    .map_err(|e| Failure::Config(format!("prismnet_agent.api_url: {e}")))?;
    let dir = ctx.component_dir("prismnet-agent");
    let lock = DirLock::acquire(&dir)?;
    let agent = prismnet::agent::Agent::new(client, agent_cfg, host, dir)
        .map_err(|e| Failure::Config(format!("prismnet_agent: {e}")))?;
    Ok((agent, lock))
}

/// The URL of a component this node runs (by its `Started` name), for components that use
/// it by default.
fn started_url(started: &[Started], name: &str) -> Option<String> {
    started
        .iter()
        .find(|s| s.name == name)
        .and_then(|s| s.endpoints.first())
        .map(|e| e.url.clone())
}

/// plasmavmc under `up`: its namespace, the control plane, then (unless disabled) this node's
/// worker agent. NICs and volumes come from the node's own prismnet and coronafs when `up`
/// runs them (so they must be in `started` before this is called).
async fn with_plasmavmc(
    cfg: &NodeConfig,
    ctx: &uc_runtime::NodeContext,
    shutdown: &Shutdown,
    paths: &SecretPaths,
    mut started: Vec<Started>,
) -> Result<Vec<Started>, Failure> {
    let password_file = paths.service_password(&cfg.plasmavmc.flaredb_password_file, "plasmavmc");
    let flaredb = started
        .iter()
        .find(|s| s.name == "flaredb")
        .ok_or_else(|| Failure::Runtime(anyhow::anyhow!("plasmavmc needs flaredb")))?;
    ensure_service_namespace(
        ctx,
        flaredb,
        "plasmavmc",
        &cfg.plasmavmc.flaredb_namespace,
        &password_file,
    )
    .await?;
    let flaredb_url = flaredb.endpoints[0].url.clone();
    let control = start_plasmavmc(cfg, ctx, shutdown, flaredb_url, &started).await?;
    let control_url = control.endpoints[0].url.clone();
    started.push(control);
    if cfg.plasmavmc_worker.enabled {
        let worker = start_plasmavmc_worker(cfg, ctx, shutdown, control_url, &started).await?;
        started.push(worker);
    }
    Ok(started)
}

async fn start_plasmavmc(
    cfg: &NodeConfig,
    ctx: &uc_runtime::NodeContext,
    shutdown: &Shutdown,
    flaredb_url: String,
    started: &[Started],
) -> Result<Started, Failure> {
    let lock = DirLock::acquire(&ctx.component_dir("plasmavmc"))?;
    let defaults = plasmavmc::server::Defaults {
        secrets_dir: SecretPaths::new(&cfg.node.data_dir).dir,
        flaredb_url,
        prismnet_url: started_url(started, "prismnet"),
        coronafs_url: started_url(started, "coronafs"),
    };
    let running = plasmavmc::server::start(ctx, cfg.plasmavmc.clone(), defaults, shutdown.clone())
        .await
        .map_err(|e| match e {
            plasmavmc::server::StartError::Config(m) => Failure::Config(m),
            plasmavmc::server::StartError::Runtime(m) => Failure::Runtime(anyhow::anyhow!(m)),
        })?;
    Ok(Started::http(
        "plasmavmc",
        "plasmavmc",
        running.url,
        running.readiness,
        running.task,
        lock,
    ))
}

async fn start_plasmavmc_worker(
    cfg: &NodeConfig,
    ctx: &uc_runtime::NodeContext,
    shutdown: &Shutdown,
    control_plane_url: String,
    started: &[Started],
) -> Result<Started, Failure> {
    let lock = DirLock::acquire(&ctx.component_dir("plasmavmc-worker"))?;
    let defaults = plasmavmc::worker::Defaults {
        control_plane_url,
        prismnet_url: started_url(started, "prismnet"),
        coronafs_url: started_url(started, "coronafs"),
    };
    let running = plasmavmc::worker::start(
        ctx,
        cfg.plasmavmc_worker.clone(),
        defaults,
        shutdown.clone(),
    )
    .await
    .map_err(|e| match e {
        plasmavmc::worker::StartError::Config(m) => Failure::Config(m),
        plasmavmc::worker::StartError::Runtime(m) => Failure::Runtime(anyhow::anyhow!(m)),
    })?;
    Ok(Started::http(
        "plasmavmc-worker",
        "plasmavmc worker",
        running.url,
        running.readiness,
        running.task,
        lock,
    ))
}

/// The node's own flaredb REST URL.
fn local_flaredb_url(cfg: &NodeConfig, ctx: &uc_runtime::NodeContext) -> String {
    format!("{}://{}", ctx.scheme(), ctx.listen(cfg.flaredb.rest_port))
}

/// The node's own chainfire client URL, for components that record state there.
fn local_chainfire_url(cfg: &NodeConfig, ctx: &uc_runtime::NodeContext) -> String {
    cfg.chainfire
        .advertise_client_url
        .clone()
        .unwrap_or_else(|| {
            format!(
                "{}://{}",
                ctx.scheme(),
                ctx.listen(cfg.chainfire.client_port)
            )
        })
}

pub async fn up(args: UpArgs, format: OutputFormat) -> Result<(), Failure> {
    let mut flags = Vec::new();
    if let Some(dir) = &args.data_dir {
        flags.push(Override::flag(
            "node.data_dir",
            dir.display().to_string(),
            "--data-dir",
        ));
    }
    if let Some(ip) = args.bind {
        flags.push(Override::flag("node.bind", ip.to_string(), "--bind"));
    }
    // Every check that can fail on configuration runs before anything is written.
    let cfg = NodeConfig::load(args.config.as_deref(), flags)?;
    check_tls(&cfg)?;
    let configured_token = match &cfg.auth.admin_token_file {
        Some(path) => Some(secrets::read_admin_token(path).map_err(Failure::Config)?),
        None => None,
    };
    uc_runtime::log::init(&cfg.log).map_err(Failure::Config)?;
    let shutdown = Shutdown::on_signals().context("cannot install signal handlers")?;

    let data_dir = &cfg.node.data_dir;
    let first_start = !data_dir.exists();
    secrets::ensure_private_dir(data_dir)?;
    let node_lock = DirLock::acquire(&data_dir.join("node"))?;
    let paths = SecretPaths::new(data_dir);
    let generated_token = secrets::ensure_node_secrets(&paths)?;
    let admin_token = configured_token.unwrap_or(generated_token);
    if first_start {
        tracing::info!(data_dir = %data_dir.display(), "initialized data directory");
    }
    let (auth, ctx) = context(&cfg, admin_token);

    // Each component starts here; the node server comes last and lists them.
    let chainfire = start_chainfire(&cfg, &ctx, &shutdown).await?;
    let chainfire_url = chainfire.endpoints[0].url.clone();
    let flaredb = start_flaredb(&cfg, &ctx, &shutdown, chainfire_url).await?;
    ensure_iam_namespace(&cfg, &ctx, &flaredb, &paths).await?;
    let iam = start_iam(&cfg, &ctx, &shutdown, flaredb.endpoints[0].url.clone()).await?;
    let coronafs = start_coronafs(&cfg, &ctx, &shutdown, &flaredb, &paths).await?;
    let prismnet = start_prismnet(&cfg, &ctx, &shutdown, &flaredb, &paths).await?;
    if cfg.prismnet_agent.enabled {
        let (agent, lock) = prismnet_agent(&cfg, &ctx, prismnet.endpoints[0].url.clone())?;
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            agent.run(shutdown).await;
            drop(lock);
        });
    }
    let started = vec![chainfire, flaredb, iam, coronafs, prismnet];
    let started = with_plasmavmc(&cfg, &ctx, &shutdown, &paths, started).await?;
    let components: Vec<Endpoint> = started.iter().flat_map(|s| s.endpoints.clone()).collect();
    let node_server = node::bind(
        &cfg.http,
        auth.clone(),
        cfg.listen(cfg.node.port),
        NodeStatus {
            name: cfg.node.name.clone(),
            version: uc_runtime::VERSION,
            components,
        },
    )
    .await
    .context("cannot start the node server")?;

    let scheme = ctx.scheme();
    let node_url = format!("{scheme}://{}", node_server.local_addr());
    let mut rows: Vec<EndpointRow> = vec![EndpointRow {
        component: "node".into(),
        health: format!("{node_url}/healthz"),
        url: node_url,
    }];
    for s in &started {
        for (endpoint, (_, health)) in s.endpoints.iter().zip(&s.health) {
            rows.push(EndpointRow {
                component: endpoint.component.clone(),
                url: endpoint.url.clone(),
                health: health.clone(),
            });
        }
    }
    let report = UpReport {
        node: cfg.node.name.clone(),
        data_dir: data_dir.display().to_string(),
        admin_token_file: cfg.admin_token_file().display().to_string(),
        endpoints: rows,
    };
    print_report(format, &report);

    let readiness = node_server.readiness();
    let node_task = tokio::spawn(node_server.serve(shutdown.clone()));
    readiness.set_ready();
    // The node is ready when every component it runs is.
    let components: Vec<(&'static str, uc_runtime::http::Readiness)> = started
        .iter()
        .map(|s| (s.name, s.readiness.clone()))
        .collect();
    tokio::spawn(mirror_readiness(readiness, components, shutdown.clone()));
    tracing::info!(node = %cfg.node.name, "ultracloud is up");
    node_task.await.context("node server task failed")?;
    for s in started {
        let _ = s.task.await;
    }
    drop(node_lock);
    tracing::info!("stopped");
    Ok(())
}

async fn mirror_readiness(
    node: uc_runtime::http::Readiness,
    components: Vec<(&'static str, uc_runtime::http::Readiness)>,
    shutdown: Shutdown,
) {
    loop {
        for (name, r) in &components {
            node.set(name, r.check().map_err(|reasons| reasons.join("; ")));
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
        }
    }
}

/// Infrastructure APIs accept only the node's admin token; tenant-facing APIs accept iam's
/// access tokens (verified offline against iam's published keys) and the admin token.
fn context(
    cfg: &NodeConfig,
    admin_token: Secret<String>,
) -> (Arc<dyn Authenticator>, uc_runtime::NodeContext) {
    let scheme = if cfg.http.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let iam_url = cfg
        .auth
        .iam_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{}", cfg.listen(cfg.iam.port)));
    let verifier = Arc::new(uc_runtime::token::Verifier::new(
        &cfg.iam.issuer,
        uc_runtime::token::DEFAULT_AUDIENCE,
    ));
    let tenant_auth: Arc<dyn Authenticator> = Arc::new(uc_runtime::token::JwksAuthenticator::new(
        verifier,
        format!("{}/v1/jwks", iam_url.trim_end_matches('/')),
        uc_runtime::client::ClientOptions {
            ca_file: cfg
                .http
                .tls
                .as_ref()
                .and_then(|t| t.trusted_ca_file.clone()),
            ..Default::default()
        },
        Some(admin_token.clone()),
    ));
    let auth: Arc<dyn Authenticator> = Arc::new(uc_runtime::auth::StaticTokenAuthenticator::admin(
        admin_token.clone(),
    ));
    let ctx = cfg.context(auth.clone(), tenant_auth, admin_token);
    (auth, ctx)
}

fn print_report(format: OutputFormat, report: &UpReport) {
    let rows = report
        .endpoints
        .iter()
        .map(|e| vec![e.component.clone(), e.url.clone(), e.health.clone()])
        .collect();
    output::print(format, report, &["component", "url", "health"], rows);
    if format == OutputFormat::Table {
        println!();
        println!("data directory:    {}", report.data_dir);
        println!(
            "admin credential:  {} (use as: Authorization: Bearer $(cat {}))",
            report.admin_token_file, report.admin_token_file
        );
    }
    let _ = std::io::stdout().flush();
}

/// A TLS setting that cannot load is a configuration error (exit 2), found before startup.
fn check_tls(cfg: &NodeConfig) -> Result<(), Failure> {
    if let Some(tls) = &cfg.http.tls {
        uc_runtime::tls::server_config(tls)
            .map_err(|e| Failure::Config(format!("config key `http.tls`: {e}")))?;
    }
    Ok(())
}

pub async fn serve(args: ServeArgs) -> Result<(), Failure> {
    let cfg = NodeConfig::load(Some(&args.config), Vec::new())?;
    check_tls(&cfg)?;
    let token = secrets::read_admin_token(&cfg.admin_token_file()).map_err(Failure::Config)?;
    uc_runtime::log::init(&cfg.log).map_err(Failure::Config)?;
    let shutdown = Shutdown::on_signals().context("cannot install signal handlers")?;
    secrets::ensure_private_dir(&cfg.node.data_dir)?;
    let (auth, ctx) = context(&cfg, token);

    match args.component {
        Component::Node => {
            let _lock = DirLock::acquire(&cfg.node.data_dir.join("node"))?;
            let server = node::bind(
                &cfg.http,
                auth,
                cfg.listen(cfg.node.port),
                NodeStatus {
                    name: cfg.node.name.clone(),
                    version: uc_runtime::VERSION,
                    components: Vec::new(),
                },
            )
            .await
            .context("cannot start the node server")?;
            server.readiness().set_ready();
            server.serve(shutdown).await;
        }
        Component::Chainfire => {
            let started = start_chainfire(&cfg, &ctx, &shutdown).await?;
            let _ = started.task.await;
        }
        Component::Flaredb => {
            let chainfire_url = local_chainfire_url(&cfg, &ctx);
            let started = start_flaredb(&cfg, &ctx, &shutdown, chainfire_url).await?;
            let _ = started.task.await;
        }
        Component::Coronafs => {
            let flaredb_url = local_flaredb_url(&cfg, &ctx);
            let started = start_coronafs_with(&cfg, &ctx, &shutdown, flaredb_url).await?;
            let _ = started.task.await;
        }
        Component::Iam => {
            let flaredb_url = local_flaredb_url(&cfg, &ctx);
            let started = start_iam(&cfg, &ctx, &shutdown, flaredb_url).await?;
            let _ = started.task.await;
        }
        Component::Prismnet => {
            let flaredb_url = local_flaredb_url(&cfg, &ctx);
            let started = start_prismnet_with(&cfg, &ctx, &shutdown, flaredb_url).await?;
            let _ = started.task.await;
        }
        Component::PrismnetAgent => {
            let default_api = format!("{}://{}", ctx.scheme(), ctx.listen(cfg.prismnet.port));
            let (agent, _lock) = prismnet_agent(&cfg, &ctx, default_api)?;
            agent.run(shutdown).await;
        }
        Component::Plasmavmc => {
            // On its own, prismnet/coronafs come from `plasmavmc.prismnet_url`/`coronafs_url`.
            let flaredb_url = local_flaredb_url(&cfg, &ctx);
            let started = start_plasmavmc(&cfg, &ctx, &shutdown, flaredb_url, &[]).await?;
            let _ = started.task.await;
        }
        Component::PlasmavmcWorker => {
            let control_plane_url =
                format!("{}://{}", ctx.scheme(), ctx.listen(cfg.plasmavmc.port));
            let started =
                start_plasmavmc_worker(&cfg, &ctx, &shutdown, control_plane_url, &[]).await?;
            let _ = started.task.await;
        }
    }
    tracing::info!("stopped");
    Ok(())
}
