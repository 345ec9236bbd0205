//! What every component gets from the node it runs on, the same under `ultracloud up` and
//! `ultracloud serve <component>`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use crate::auth::Authenticator;
use crate::http::HttpConfig;
use crate::secret::Secret;

#[derive(Clone)]
pub struct NodeContext {
    pub node_name: String,
    /// The address the component's listeners bind to.
    pub bind: IpAddr,
    /// The node's data directory; a component keeps its state in `data_dir/<component>`.
    pub data_dir: PathBuf,
    pub http: HttpConfig,
    /// Verifies callers of infrastructure APIs (chainfire, flaredb, Raft peers, the node
    /// server): only the operator's admin token / the service token.
    pub auth: Arc<dyn Authenticator>,
    /// Verifies callers of tenant-facing APIs: iam access tokens (offline, against iam's
    /// published keys) and the admin token as the operator.
    pub tenant_auth: Arc<dyn Authenticator>,
    /// The credential this node presents to peers and to other components.
    pub service_token: Secret<String>,
}

impl NodeContext {
    pub fn component_dir(&self, component: &str) -> PathBuf {
        self.data_dir.join(component)
    }

    pub fn listen(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.bind, port)
    }

    /// The CA bundle to trust when calling other nodes (`http.tls.trusted_ca_file`).
    pub fn trusted_ca_file(&self) -> Option<&std::path::Path> {
        self.http
            .tls
            .as_ref()
            .and_then(|t| t.trusted_ca_file.as_deref())
    }

    /// `http` or `https`, as the node's listeners serve.
    pub fn scheme(&self) -> &'static str {
        if self.http.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}
