//! The typed client of plasmavmc's control-plane API, used by the CLI, the worker agent and
//! other components.

use uc_runtime::client::{ApiClient, ClientError, ClientOptions};

use crate::api::*;

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

/// What `DELETE /v1/vms/{id}` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deleted {
    /// Gone.
    Done,
    /// The worker is still tearing it down; it disappears later.
    Pending(Box<Vm>),
}

#[derive(Clone)]
pub struct PlasmavmcClient {
    api: ApiClient,
}

impl PlasmavmcClient {
    pub fn new(base_url: &str, options: ClientOptions) -> Result<Self, ClientError> {
        Ok(Self {
            api: ApiClient::new(base_url, options)?,
        })
    }

    // ---- images

    /// With an idempotency key, repeating the call returns the same image.
    pub async fn create_image(
        &self,
        req: &CreateImage,
        idempotency_key: Option<&str>,
    ) -> Result<Image, ClientError> {
        match idempotency_key {
            Some(k) => self.api.post_idempotent("/v1/images", req, k).await,
            None => self.api.post("/v1/images", req).await,
        }
    }

    pub async fn list_images(&self, page_token: Option<&str>) -> Result<Page<Image>, ClientError> {
        match page_token {
            Some(t) => {
                self.api
                    .get(&format!("/v1/images?page_token={}", enc(t)))
                    .await
            }
            None => self.api.get("/v1/images").await,
        }
    }

    pub async fn get_image(&self, id_or_name: &str) -> Result<Image, ClientError> {
        self.api
            .get(&format!("/v1/images/{}", enc(id_or_name)))
            .await
    }

    pub async fn delete_image(&self, id: &str) -> Result<(), ClientError> {
        self.api
            .delete_no_content(&format!("/v1/images/{}", enc(id)))
            .await
    }

    // ---- workers

    pub async fn register_worker(&self, req: &RegisterWorker) -> Result<Worker, ClientError> {
        self.api
            .put(&format!("/v1/workers/{}", enc(&req.name)), req)
            .await
    }

    pub async fn heartbeat(
        &self,
        name: &str,
        hb: &Heartbeat,
    ) -> Result<Vec<Assignment>, ClientError> {
        // Reports are idempotent (they state what is), so a repeat is harmless.
        self.api
            .post_idempotent(
                &format!("/v1/workers/{}/heartbeat", enc(name)),
                hb,
                &uuid::Uuid::new_v4().to_string(),
            )
            .await
    }

    pub async fn list_workers(&self) -> Result<Page<Worker>, ClientError> {
        self.api.get("/v1/workers").await
    }

    pub async fn get_worker(&self, name: &str) -> Result<Worker, ClientError> {
        self.api.get(&format!("/v1/workers/{}", enc(name))).await
    }

    pub async fn delete_worker(&self, name: &str) -> Result<(), ClientError> {
        self.api
            .delete_no_content(&format!("/v1/workers/{}", enc(name)))
            .await
    }

    pub async fn drain_worker(&self, name: &str, drain: bool) -> Result<Worker, ClientError> {
        let verb = if drain { "drain" } else { "undrain" };
        self.api
            .post(
                &format!("/v1/workers/{}/{verb}", enc(name)),
                &serde_json::json!({}),
            )
            .await
    }

    // ---- VMs

    /// With an idempotency key, repeating the call returns the same VM.
    pub async fn create_vm(
        &self,
        req: &CreateVm,
        idempotency_key: Option<&str>,
    ) -> Result<Vm, ClientError> {
        match idempotency_key {
            Some(k) => self.api.post_idempotent("/v1/vms", req, k).await,
            None => self.api.post("/v1/vms", req).await,
        }
    }

    pub async fn list_vms(&self, page_token: Option<&str>) -> Result<Page<Vm>, ClientError> {
        match page_token {
            Some(t) => {
                self.api
                    .get(&format!("/v1/vms?page_token={}", enc(t)))
                    .await
            }
            None => self.api.get("/v1/vms").await,
        }
    }

    pub async fn get_vm(&self, id: &str) -> Result<Vm, ClientError> {
        self.api.get(&format!("/v1/vms/{}", enc(id))).await
    }

    pub async fn delete_vm(&self, id: &str, force: bool) -> Result<Deleted, ClientError> {
        let path = format!("/v1/vms/{}?force={force}", enc(id));
        let answer: Option<Vm> = self.api.delete(&path).await.or_else(|e| match e {
            // 204: no body to decode.
            ClientError::Decode { .. } => Ok(None),
            e => Err(e),
        })?;
        Ok(match answer {
            Some(vm) => Deleted::Pending(Box::new(vm)),
            None => Deleted::Done,
        })
    }

    pub async fn start_vm(&self, id: &str) -> Result<Vm, ClientError> {
        self.api
            .post(
                &format!("/v1/vms/{}/start", enc(id)),
                &serde_json::json!({}),
            )
            .await
    }

    pub async fn stop_vm(&self, id: &str, timeout_secs: Option<u64>) -> Result<Vm, ClientError> {
        self.api
            .post(
                &format!("/v1/vms/{}/stop", enc(id)),
                &StopVm { timeout_secs },
            )
            .await
    }

    pub async fn reboot_vm(&self, id: &str) -> Result<Vm, ClientError> {
        self.api
            .post(
                &format!("/v1/vms/{}/reboot", enc(id)),
                &serde_json::json!({}),
            )
            .await
    }

    pub async fn resize_vm(&self, id: &str, req: &ResizeVm) -> Result<Vm, ClientError> {
        self.api
            .post(&format!("/v1/vms/{}/resize", enc(id)), req)
            .await
    }

    pub async fn migrate_vm(&self, id: &str, worker: Option<&str>) -> Result<Vm, ClientError> {
        self.api
            .post(
                &format!("/v1/vms/{}/migrate", enc(id)),
                &MigrateVm {
                    worker: worker.map(ToOwned::to_owned),
                },
            )
            .await
    }

    pub async fn events(&self, id: &str, after: i64) -> Result<Page<VmEvent>, ClientError> {
        self.api
            .get(&format!("/v1/vms/{}/events?after={after}", enc(id)))
            .await
    }

    pub async fn console(&self, id: &str, offset: u64) -> Result<ConsoleLog, ClientError> {
        self.api
            .get(&format!("/v1/vms/{}/console?offset={offset}", enc(id)))
            .await
    }
}
