//! `[coronafs]` in the node config file.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct CoronafsConfig {
    /// Run the controller (`/v1/volumes`, metadata in flaredb).
    pub controller: bool,
    /// Run the node service (volumes on local disk, qemu-nbd exports).
    pub node: bool,
    /// The one HTTP listener of this process: the node API, and the controller API when this
    /// process runs the controller too.
    pub port: u16,
    /// The controller nodes register with. Default: this process's own listener when it runs
    /// the controller.
    pub controller_url: Option<String>,
    /// The node API URL the controller calls. Default `http(s)://<node.bind>:<port>`.
    pub advertise_url: Option<String>,
    /// The worker-network address exports listen on. Default `node.bind`.
    pub nbd_bind: Option<IpAddr>,
    /// The host name or address put in NBD URLs. Default `nbd_bind`.
    pub nbd_host: Option<String>,
    /// Inclusive port range for exports; default: a free ephemeral port per export (kept
    /// across restarts when still free).
    pub nbd_port_min: Option<u16>,
    pub nbd_port_max: Option<u16>,
    /// Serve exports over TLS: a directory with `ca-cert.pem`, `server-cert.pem` and
    /// `server-key.pem` (QEMU's x509 layout). Clients then need `tls-creds`.
    pub nbd_tls_dir: Option<PathBuf>,
    /// `qemu-nbd --cache`: `auto` (default: `none`, i.e. O_DIRECT, where the volume filesystem
    /// supports it, else `writeback`), `none`, `writeback`, `writethrough`, `directsync`,
    /// `unsafe`.
    pub nbd_cache: String,
    /// `qemu-nbd --aio`: `auto` (default: `native` with O_DIRECT, else `threads`), `threads`,
    /// `native` (needs cache `none`/`directsync`), `io_uring`.
    pub nbd_aio: String,
    /// The largest volume accepted, in bytes (default 16 TiB).
    pub max_volume_bytes: u64,
    /// A node not heard from for this long gets no new volumes.
    pub node_liveness_secs: u64,
    /// How often a node re-registers, and how often the controller reconciles.
    pub heartbeat_secs: u64,
    /// flaredb REST endpoint holding the controller's namespace. Default: the node's own.
    pub flaredb_endpoint: Option<String>,
    pub flaredb_namespace: String,
    /// Default: `secrets/coronafs-flaredb-password`, which `up` creates with the namespace.
    pub flaredb_password_file: Option<PathBuf>,
}

impl Default for CoronafsConfig {
    fn default() -> Self {
        Self {
            controller: true,
            node: true,
            port: 50088,
            controller_url: None,
            advertise_url: None,
            nbd_bind: None,
            nbd_host: None,
            nbd_port_min: None,
            nbd_port_max: None,
            nbd_tls_dir: None,
            nbd_cache: "auto".into(),
            nbd_aio: "auto".into(),
            max_volume_bytes: 16 << 40,
            node_liveness_secs: 30,
            heartbeat_secs: 5,
            flaredb_endpoint: None,
            flaredb_namespace: "coronafs".into(),
            flaredb_password_file: None,
        }
    }
}

impl CoronafsConfig {
    /// Problems types cannot catch; found before anything starts.
    pub fn check(&self) -> Result<(), String> {
        if !self.controller && !self.node {
            return Err("config key `coronafs`: enable `controller`, `node` or both".into());
        }
        if ![
            "auto",
            "writeback",
            "none",
            "writethrough",
            "directsync",
            "unsafe",
        ]
        .contains(&self.nbd_cache.as_str())
        {
            return Err(format!(
                "config key `coronafs.nbd_cache`: unknown cache mode `{}`",
                self.nbd_cache
            ));
        }
        if !["auto", "threads", "native", "io_uring"].contains(&self.nbd_aio.as_str()) {
            return Err(format!(
                "config key `coronafs.nbd_aio`: unknown aio mode `{}`",
                self.nbd_aio
            ));
        }
        if self.nbd_aio == "native"
            && !["auto", "none", "directsync"].contains(&self.nbd_cache.as_str())
        {
            return Err(
                "config key `coronafs.nbd_aio`: `native` needs `nbd_cache` `none` or `directsync` (O_DIRECT)"
                    .into(),
            );
        }
        match (self.nbd_port_min, self.nbd_port_max) {
            (None, None) => {}
            (Some(lo), Some(hi)) if lo > 0 && lo <= hi => {}
            _ => {
                return Err(
                    "config keys `coronafs.nbd_port_min`/`nbd_port_max`: give both, min <= max"
                        .into(),
                );
            }
        }
        if self.max_volume_bytes < 1 << 20 {
            return Err("config key `coronafs.max_volume_bytes`: at least 1 MiB".into());
        }
        if self.heartbeat_secs == 0 || self.node_liveness_secs < self.heartbeat_secs {
            return Err(
                "config keys `coronafs.heartbeat_secs`/`node_liveness_secs`: heartbeat > 0 and liveness >= heartbeat"
                    .into(),
            );
        }
        if let Some(dir) = &self.nbd_tls_dir {
            for f in ["ca-cert.pem", "server-cert.pem", "server-key.pem"] {
                if !dir.join(f).is_file() {
                    return Err(format!(
                        "config key `coronafs.nbd_tls_dir`: {} is missing",
                        dir.join(f).display()
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::CoronafsConfig;

    #[test]
    fn defaults_are_valid_and_mistakes_are_named() {
        assert!(CoronafsConfig::default().check().is_ok());
        let bad = |f: fn(&mut CoronafsConfig)| {
            let mut c = CoronafsConfig::default();
            f(&mut c);
            c.check().unwrap_err()
        };
        assert!(
            bad(|c| {
                c.controller = false;
                c.node = false;
            })
            .contains("enable")
        );
        assert!(bad(|c| c.nbd_cache = "sometimes".into()).contains("nbd_cache"));
        assert!(bad(|c| c.nbd_aio = "magic".into()).contains("nbd_aio"));
        assert!(
            bad(|c| {
                c.nbd_aio = "native".into();
                c.nbd_cache = "writeback".into();
            })
            .contains("O_DIRECT")
        );
        assert!(bad(|c| c.nbd_port_min = Some(10)).contains("nbd_port"));
        assert!(
            bad(|c| {
                c.nbd_port_min = Some(20);
                c.nbd_port_max = Some(10);
            })
            .contains("nbd_port")
        );
        assert!(bad(|c| c.max_volume_bytes = 1).contains("max_volume_bytes"));
        assert!(bad(|c| c.heartbeat_secs = 0).contains("heartbeat"));
        assert!(bad(|c| c.nbd_tls_dir = Some("/nonexistent".into())).contains("nbd_tls_dir"));
    }
}
