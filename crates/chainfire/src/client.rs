//! A small etcd v3 client for UltraCloud's own tools (CLI, tests): connects with a token and
//! speaks chainfire's (etcd's) gRPC API.

use std::path::Path;

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};
use uc_runtime::Secret;

use crate::etcdpb::etcdserverpb as pb;

#[derive(Clone)]
pub struct TokenInterceptor(MetadataValue<tonic::metadata::Ascii>);

impl Interceptor for TokenInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.metadata_mut().insert("token", self.0.clone());
        Ok(request)
    }
}

type Intercepted = tonic::service::interceptor::InterceptedService<Channel, TokenInterceptor>;

pub struct Client {
    pub kv: pb::kv_client::KvClient<Intercepted>,
    pub watch: pb::watch_client::WatchClient<Intercepted>,
    pub lease: pb::lease_client::LeaseClient<Intercepted>,
    pub cluster: pb::cluster_client::ClusterClient<Intercepted>,
    pub maintenance: pb::maintenance_client::MaintenanceClient<Intercepted>,
}

impl Client {
    /// Connects to `endpoint` (`http://host:2379` or `https://…`, trusting `ca_file` too).
    pub async fn connect(
        endpoint: &str,
        token: &Secret<String>,
        ca_file: Option<&Path>,
    ) -> Result<Self, String> {
        uc_runtime::tls::ensure_crypto_provider();
        let mut ep = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| format!("endpoint `{endpoint}`: {e}"))?
            .connect_timeout(std::time::Duration::from_secs(5));
        if endpoint.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            if let Some(path) = ca_file {
                let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            ep = ep.tls_config(tls).map_err(|e| e.to_string())?;
        }
        let channel = ep
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {endpoint}: {e}"))?;
        let value = MetadataValue::try_from(token.expose().as_str())
            .map_err(|_| "token is not valid metadata".to_owned())?;
        let interceptor = TokenInterceptor(value);
        let wrap = || {
            tonic::service::interceptor::InterceptedService::new(
                channel.clone(),
                interceptor.clone(),
            )
        };
        Ok(Self {
            kv: pb::kv_client::KvClient::new(wrap()),
            watch: pb::watch_client::WatchClient::new(wrap()),
            lease: pb::lease_client::LeaseClient::new(wrap()),
            cluster: pb::cluster_client::ClusterClient::new(wrap()),
            maintenance: pb::maintenance_client::MaintenanceClient::new(wrap())
                .max_decoding_message_size(usize::MAX),
        })
    }

    /// A whole backup (snapshot + SHA-256 trailer), as `etcdctl snapshot save` writes it.
    pub async fn snapshot(&mut self) -> Result<Vec<u8>, Status> {
        let mut stream = self
            .maintenance
            .snapshot(pb::SnapshotRequest {})
            .await?
            .into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await? {
            data.extend_from_slice(&chunk.blob);
        }
        Ok(data)
    }

    pub async fn members(&mut self) -> Result<Vec<pb::Member>, Status> {
        Ok(self
            .cluster
            .member_list(pb::MemberListRequest { linearizable: true })
            .await?
            .into_inner()
            .members)
    }
}
