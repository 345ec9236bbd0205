//! Typed clients: [`CoronafsClient`] for the controller's `/v1/volumes` API (used by the CLI
//! and plasmavmc) and [`NodeClient`] for a node service's `/v1/node` API (used by the
//! controller, with the service token).

use uc_runtime::client::{ApiClient, ClientError, ClientOptions};

use crate::api::*;

/// Percent-encodes a path segment or query value.
fn enc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The controller's API. Every call needs a token (an iam access token, or the operator's
/// admin/service token) in the [`ClientOptions`].
#[derive(Clone)]
pub struct CoronafsClient {
    api: ApiClient,
}

impl CoronafsClient {
    pub fn new(base_url: &str, options: ClientOptions) -> Result<Self, ClientError> {
        Ok(Self {
            api: ApiClient::new(base_url, options)?,
        })
    }

    /// Creates a volume and returns it once it is `available` (the node has materialized it).
    /// With an idempotency key, repeating the call returns the same volume instead of making a
    /// second one.
    pub async fn create_volume(
        &self,
        req: &CreateVolume,
        idempotency_key: Option<&str>,
    ) -> Result<Volume, ClientError> {
        match idempotency_key {
            Some(key) => self.api.post_idempotent("/v1/volumes", req, key).await,
            None => self.api.post("/v1/volumes", req).await,
        }
    }

    pub async fn get_volume(&self, id: &str) -> Result<Volume, ClientError> {
        self.api.get(&format!("/v1/volumes/{}", enc(id))).await
    }

    /// One page of the caller's volumes (the operator sees every tenant's).
    pub async fn list_volumes(
        &self,
        page_size: Option<u32>,
        page_token: Option<&str>,
    ) -> Result<Page<Volume>, ClientError> {
        let mut path = format!("/v1/volumes?page_size={}", page_size.unwrap_or(100));
        if let Some(token) = page_token {
            path.push_str(&format!("&page_token={}", enc(token)));
        }
        self.api.get(&path).await
    }

    /// Deletes a detached volume with its snapshots (409 while attached).
    pub async fn delete_volume(&self, id: &str) -> Result<(), ClientError> {
        self.api
            .delete_no_content(&format!("/v1/volumes/{}", enc(id)))
            .await
    }

    /// Grows a volume. An attached volume's export restarts on the new size (NBD clients
    /// reconnect and see it).
    pub async fn resize_volume(&self, id: &str, size_bytes: u64) -> Result<Volume, ClientError> {
        self.api
            .post(
                &format!("/v1/volumes/{}/resize", enc(id)),
                &ResizeVolume { size_bytes },
            )
            .await
    }

    pub async fn create_snapshot(
        &self,
        volume_id: &str,
        name: &str,
    ) -> Result<Snapshot, ClientError> {
        self.api
            .post(
                &format!("/v1/volumes/{}/snapshots", enc(volume_id)),
                &CreateSnapshot {
                    name: name.to_owned(),
                },
            )
            .await
    }

    pub async fn delete_snapshot(
        &self,
        volume_id: &str,
        snapshot_id: &str,
    ) -> Result<(), ClientError> {
        self.api
            .delete_no_content(&format!(
                "/v1/volumes/{}/snapshots/{}",
                enc(volume_id),
                enc(snapshot_id)
            ))
            .await
    }

    /// Attaches a volume to a worker: where to reach its bytes. Attaching to a worker that
    /// already has it returns the same answer.
    pub async fn attach(
        &self,
        volume_id: &str,
        req: &AttachVolume,
    ) -> Result<AttachInfo, ClientError> {
        self.api
            .post(&format!("/v1/volumes/{}/attach", enc(volume_id)), req)
            .await
    }

    /// Detaches a volume from a worker; detaching a worker that has no attachment is a no-op.
    pub async fn detach(&self, volume_id: &str, worker: &str) -> Result<Volume, ClientError> {
        self.api
            .post(
                &format!("/v1/volumes/{}/detach", enc(volume_id)),
                &DetachVolume {
                    worker: worker.to_owned(),
                },
            )
            .await
    }

    /// Registered storage nodes (operator).
    pub async fn list_nodes(&self) -> Result<Vec<NodeView>, ClientError> {
        self.api.get("/v1/nodes").await
    }

    /// Which roles the server at this URL runs (no token needed).
    pub async fn capabilities(&self) -> Result<Capabilities, ClientError> {
        self.api.get("/v1/capabilities").await
    }
}

/// A node service's API (operator/service token).
#[derive(Clone)]
pub struct NodeClient {
    api: ApiClient,
}

impl NodeClient {
    pub fn new(base_url: &str, options: ClientOptions) -> Result<Self, ClientError> {
        Ok(Self {
            api: ApiClient::new(base_url, options)?,
        })
    }

    pub async fn put_volume(
        &self,
        id: &str,
        req: &NodeCreateVolume,
    ) -> Result<NodeVolume, ClientError> {
        self.api
            .put(&format!("/v1/node/volumes/{}", enc(id)), req)
            .await
    }

    /// `None` when the node has no such volume.
    pub async fn get_volume(&self, id: &str) -> Result<Option<NodeVolume>, ClientError> {
        match self.api.get(&format!("/v1/node/volumes/{}", enc(id))).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes the volume, its export and its snapshots (idempotent).
    pub async fn delete_volume(&self, id: &str) -> Result<(), ClientError> {
        self.api
            .delete_no_content(&format!("/v1/node/volumes/{}", enc(id)))
            .await
    }

    pub async fn resize_volume(
        &self,
        id: &str,
        size_bytes: u64,
    ) -> Result<NodeVolume, ClientError> {
        self.api
            .put(
                &format!("/v1/node/volumes/{}/size", enc(id)),
                &ResizeVolume { size_bytes },
            )
            .await
    }

    /// Starts (or confirms) the volume's export.
    pub async fn put_export(&self, id: &str, shared: u32) -> Result<NodeExport, ClientError> {
        self.api
            .put(
                &format!("/v1/node/volumes/{}/export", enc(id)),
                &NodeExportRequest { shared },
            )
            .await
    }

    /// Stops the volume's export (idempotent).
    pub async fn delete_export(&self, id: &str) -> Result<(), ClientError> {
        self.api
            .delete_no_content(&format!("/v1/node/volumes/{}/export", enc(id)))
            .await
    }

    pub async fn put_snapshot(
        &self,
        volume_id: &str,
        snapshot_id: &str,
    ) -> Result<NodeSnapshot, ClientError> {
        self.api
            .put(
                &format!(
                    "/v1/node/volumes/{}/snapshots/{}",
                    enc(volume_id),
                    enc(snapshot_id)
                ),
                &serde_json::json!({}),
            )
            .await
    }

    pub async fn delete_snapshot(
        &self,
        volume_id: &str,
        snapshot_id: &str,
    ) -> Result<(), ClientError> {
        self.api
            .delete_no_content(&format!(
                "/v1/node/volumes/{}/snapshots/{}",
                enc(volume_id),
                enc(snapshot_id)
            ))
            .await
    }

    pub async fn capabilities(&self) -> Result<Capabilities, ClientError> {
        self.api.get("/v1/capabilities").await
    }
}

/// The controller's node-registration endpoint, as a node calls it.
pub async fn register_node(api: &ApiClient, req: &RegisterNode) -> Result<NodeView, ClientError> {
    api.put(&format!("/v1/nodes/{}", enc(&req.name)), req).await
}
