//! The node config file: one TOML file per node, shared by `up` and every `serve <component>`
//! on that node. See docs/configuration.md for every key.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use uc_runtime::config::{self, Override};
use uc_runtime::http::HttpConfig;
use uc_runtime::log::LogConfig;

use crate::Failure;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    pub node: NodeSection,
    pub log: LogConfig,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub chainfire: chainfire::ChainfireConfig,
    pub flaredb: flaredb::config::FlaredbConfig,
    pub iam: iam::IamConfig,
    pub plasmavmc: plasmavmc::PlasmavmcConfig,
    pub plasmavmc_worker: plasmavmc::WorkerConfig,
    pub coronafs: coronafs::CoronafsConfig,
    pub prismnet: prismnet::PrismnetConfig,
    pub prismnet_agent: prismnet::AgentConfig,
}

/// `[node]`: who this node is and where it keeps state.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// Defaults to the host name.
    pub name: String,
    pub data_dir: PathBuf,
    /// The address every listener of this node binds to.
    pub bind: IpAddr,
    /// Port of the node's own health/metrics/status server.
    pub port: u16,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            name: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_owned())
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "node".to_owned()),
            data_dir: PathBuf::from("./.ultracloud"),
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 8070,
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// File (mode 0600) holding the admin token; default `<data_dir>/secrets/admin-token`.
    pub admin_token_file: Option<PathBuf>,
    /// iam's URL, whose `/v1/jwks` verifies access tokens; default the node's own iam
    /// (`http(s)://<bind>:<iam.port>`).
    pub iam_url: Option<String>,
}

impl NodeConfig {
    /// File, then `UC_*` environment, then flags. Also checks what types cannot (log filter,
    /// names), so every config mistake is found before anything is written.
    pub fn load(file: Option<&Path>, flags: Vec<Override>) -> Result<Self, Failure> {
        let mut overrides = Override::from_env();
        overrides.extend(flags);
        let mut cfg: NodeConfig = config::load(file, &overrides)?;
        cfg.log.validate().map_err(Failure::Config)?;
        // Components hand paths below the data directory to child processes (QEMU, dnsmasq,
        // qemu-nbd) that run elsewhere or change directory: keep it absolute.
        cfg.node.data_dir = std::path::absolute(&cfg.node.data_dir).map_err(|e| {
            Failure::Config(format!(
                "config key `node.data_dir`: {}: {e}",
                cfg.node.data_dir.display()
            ))
        })?;
        if cfg.node.name.is_empty()
            || !cfg
                .node
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(Failure::Config(format!(
                "config key `node.name`: `{}` must be non-empty letters, digits, '-', '_' or '.'",
                cfg.node.name
            )));
        }
        chainfire::check_config(&cfg.chainfire).map_err(|e| Failure::Config(e.to_string()))?;
        flaredb::server::check_config(&cfg.flaredb).map_err(|e| Failure::Config(e.to_string()))?;
        cfg.coronafs.check().map_err(Failure::Config)?;
        iam::server::check_bootstrap(&cfg.iam, cfg.auth.admin_token_file.is_some())
            .map_err(|e| Failure::Config(e.to_string()))?;
        plasmavmc::server::check_config(&cfg.plasmavmc)
            .map_err(|e| Failure::Config(e.to_string()))?;
        if cfg.http.max_body_bytes == 0 {
            return Err(Failure::Config(
                "config key `http.max_body_bytes`: must be greater than 0".to_owned(),
            ));
        }
        Ok(cfg)
    }

    pub fn admin_token_file(&self) -> PathBuf {
        self.auth
            .admin_token_file
            .clone()
            .unwrap_or_else(|| crate::secrets::SecretPaths::new(&self.node.data_dir).admin_token)
    }

    /// What components get from this node.
    pub fn context(
        &self,
        auth: std::sync::Arc<dyn uc_runtime::auth::Authenticator>,
        tenant_auth: std::sync::Arc<dyn uc_runtime::auth::Authenticator>,
        service_token: uc_runtime::Secret<String>,
    ) -> uc_runtime::NodeContext {
        uc_runtime::NodeContext {
            node_name: self.node.name.clone(),
            bind: self.node.bind,
            data_dir: self.node.data_dir.clone(),
            http: self.http.clone(),
            auth,
            tenant_auth,
            service_token,
        }
    }

    pub fn listen(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.node.bind, port)
    }
}
