//! The typed client of prismnet's API, used by the CLI, the host agent and other components
//! (plasmavmc binds VM ports, fiberlb allocates VIPs).

use serde::Serialize;
use serde::de::DeserializeOwned;
use uc_runtime::client::{ApiClient, ClientError, ClientOptions};

use crate::api::*;

#[derive(Clone)]
pub struct PrismnetClient {
    api: ApiClient,
}

impl PrismnetClient {
    pub fn new(base_url: &str, options: ClientOptions) -> Result<Self, ClientError> {
        Ok(Self {
            api: ApiClient::new(base_url, options)?,
        })
    }

    pub fn api(&self) -> &ApiClient {
        &self.api
    }

    /// A create; with a key it is deduplicated by the server and safe to retry.
    pub async fn create<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        idempotency_key: Option<&str>,
    ) -> Result<T, ClientError> {
        match idempotency_key {
            Some(k) => self.api.post_idempotent(path, body, k).await,
            None => self.api.post(path, body).await,
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.api.get(path).await
    }

    /// Every item of a list, following the pages.
    pub async fn list_all<T: DeserializeOwned>(&self, path: &str) -> Result<Vec<T>, ClientError> {
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        let sep = if path.contains('?') { '&' } else { '?' };
        loop {
            let url = match &token {
                Some(t) => format!("{path}{sep}limit=1000&page_token={t}"),
                None => format!("{path}{sep}limit=1000"),
            };
            let page: Page<T> = self.api.get(&url).await?;
            items.extend(page.items);
            match page.next_page_token {
                Some(t) => token = Some(t),
                None => return Ok(items),
            }
        }
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.api.put(path, body).await
    }

    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.api.delete_no_content(path).await
    }

    pub async fn create_vpc(&self, req: &CreateVpc, key: Option<&str>) -> Result<Vpc, ClientError> {
        self.create("/v1/vpcs", req, key).await
    }

    pub async fn create_subnet(
        &self,
        req: &CreateSubnet,
        key: Option<&str>,
    ) -> Result<Subnet, ClientError> {
        self.create("/v1/subnets", req, key).await
    }

    pub async fn create_port(
        &self,
        req: &CreatePort,
        key: Option<&str>,
    ) -> Result<Port, ClientError> {
        self.create("/v1/ports", req, key).await
    }

    pub async fn get_port(&self, id: &str) -> Result<Port, ClientError> {
        self.get(&format!("/v1/ports/{id}")).await
    }

    pub async fn update_port(&self, id: &str, req: &UpdatePort) -> Result<Port, ClientError> {
        self.put(&format!("/v1/ports/{id}"), req).await
    }

    /// Sets up the port's migration binding on `host` (its second tap, for a live migration).
    pub async fn set_port_migration(&self, id: &str, host: &str) -> Result<Port, ClientError> {
        let binding = Binding {
            host: host.into(),
            attachment: "tap".into(),
        };
        self.put(&format!("/v1/ports/{id}/migration"), &binding)
            .await
    }

    pub async fn cancel_port_migration(&self, id: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/ports/{id}/migration")).await
    }

    /// The migration binding becomes the port's binding.
    pub async fn activate_port_migration(&self, id: &str) -> Result<Port, ClientError> {
        self.api
            .post(
                &format!("/v1/ports/{id}/migration/activate"),
                &serde_json::json!({}),
            )
            .await
    }

    /// A VIP from a service pool (fiberlb).
    pub async fn allocate_vip(
        &self,
        pool: &str,
        req: &Allocate,
        key: Option<&str>,
    ) -> Result<PoolAllocation, ClientError> {
        self.create(&format!("/v1/pools/{pool}/allocations"), req, key)
            .await
    }

    pub async fn release_vip(&self, pool: &str, ip: &str) -> Result<(), ClientError> {
        self.delete(&format!("/v1/pools/{pool}/allocations/{ip}"))
            .await
    }

    // ---- agent calls (service token)

    pub async fn register_host(
        &self,
        host: &str,
        req: &HostRegistration,
    ) -> Result<Host, ClientError> {
        self.put(&format!("/v1/agent/hosts/{host}"), req).await
    }

    /// The host's plan once the model passes `after`, waiting up to `wait_secs`.
    pub async fn plan(
        &self,
        host: &str,
        after: i64,
        wait_secs: u64,
    ) -> Result<PlanAnswer, ClientError> {
        self.get(&format!(
            "/v1/agent/hosts/{host}/plan?after={after}&wait={wait_secs}"
        ))
        .await
    }

    pub async fn report_status(
        &self,
        host: &str,
        report: &StatusReport,
    ) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .api
            .post(&format!("/v1/agent/hosts/{host}/status"), report)
            .await?;
        Ok(())
    }
}
