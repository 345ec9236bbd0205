//! VM volumes through coronafs' controller API (`/v1/volumes`): the control plane creates and
//! deletes them (with the service token, for the VM's tenant); workers attach and detach.
//!
//! The request/response shapes mirror `coronafs::api` field for field; only the fields
//! plasmavmc reads are declared, so coronafs may add fields without breaking this side.

use serde::{Deserialize, Serialize};
use uc_runtime::Secret;
use uc_runtime::client::{ApiClient, ClientError, ClientOptions};

#[derive(Debug, Clone, Serialize)]
pub struct CreateVolume {
    pub name: String,
    pub size_bytes: Option<u64>,
    pub format: String,
    pub source: serde_json::Value,
    pub multi_attach: bool,
    pub org: Option<String>,
    pub project: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Volume {
    pub id: String,
    pub org: String,
    pub project: String,
    pub size_bytes: u64,
    #[serde(default)]
    pub attachments: Vec<serde_json::Value>,
}

/// Where a worker opens an attached volume.
#[derive(Debug, Clone, Deserialize)]
pub struct AttachInfo {
    pub volume_id: String,
    /// `nbd` or `local`.
    pub transport: String,
    pub nbd_url: Option<String>,
    pub local_path: Option<String>,
    /// The format of `local_path` (`raw` or `qcow2`); NBD exports are always raw.
    pub format: String,
}

#[derive(Clone)]
pub struct Volumes {
    api: ApiClient,
}

impl Volumes {
    pub fn new(
        url: &str,
        token: Secret<String>,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        Ok(Self {
            api: ApiClient::new(
                url,
                ClientOptions {
                    token: Some(token),
                    // A volume create clones an image: it can take a while.
                    timeout: std::time::Duration::from_secs(300),
                    ..options
                },
            )?,
        })
    }

    pub async fn create(&self, req: &CreateVolume, key: &str) -> Result<Volume, ClientError> {
        self.api.post_idempotent("/v1/volumes", req, key).await
    }

    pub async fn get(&self, id: &str) -> Result<Volume, ClientError> {
        self.api.get(&format!("/v1/volumes/{id}")).await
    }

    pub async fn delete(&self, id: &str) -> Result<(), ClientError> {
        self.api
            .delete_no_content(&format!("/v1/volumes/{id}"))
            .await
    }

    pub async fn attach(
        &self,
        id: &str,
        worker: &str,
        prefer_local: bool,
    ) -> Result<AttachInfo, ClientError> {
        self.api
            .post(
                &format!("/v1/volumes/{id}/attach"),
                &serde_json::json!({"worker": worker, "prefer_local": prefer_local}),
            )
            .await
    }

    pub async fn detach(&self, id: &str, worker: &str) -> Result<(), ClientError> {
        self.api
            .post::<_, serde_json::Value>(
                &format!("/v1/volumes/{id}/detach"),
                &serde_json::json!({"worker": worker}),
            )
            .await
            .map(|_| ())
    }
}
