//! VM NICs through prismnet's API (`/v1/ports`): the control plane checks or creates a VM's
//! ports (with the caller's own token, so a foreign tenant's port is simply "not found"), and
//! deletes or releases them with the VM; workers bind a port to their host as a `tap`, wait
//! for the agent to make it `active`, and unbind it when the VM leaves.
//!
//! The shapes mirror `prismnet::api` field for field; only the fields plasmavmc reads are
//! declared.

use serde::Deserialize;
use uc_runtime::Secret;
use uc_runtime::client::{ApiClient, ClientError, ClientOptions};

use crate::api::VmNic;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
}

fn classify(what: &str, e: ClientError) -> NetError {
    match e.status() {
        Some(404) => NetError::NotFound(format!("{what}: not found")),
        Some(409) => NetError::Conflict(format!("{what}: {e}")),
        Some(s) if (400..500).contains(&s) => NetError::Invalid(format!("{what}: {e}")),
        _ => NetError::Unavailable(format!("prismnet: {what}: {e}")),
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Binding {
    pub host: String,
    pub attachment: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Port {
    pub id: String,
    pub subnet_id: String,
    pub mac: String,
    pub ips: Vec<String>,
    pub device_owner: Option<String>,
    pub device_id: Option<String>,
    pub binding: Option<Binding>,
    pub status: String,
    pub device: Option<String>,
    pub version: i64,
}

impl Port {
    pub fn nic(&self, owned: bool) -> VmNic {
        VmNic {
            port_id: self.id.clone(),
            subnet_id: self.subnet_id.clone(),
            mac: self.mac.clone(),
            ips: self.ips.clone(),
            owned,
        }
    }
}

/// prismnet as the control plane and workers use it.
#[derive(Clone)]
pub struct Network {
    url: String,
    options: ClientOptions,
    /// The service (operator) credential.
    service: ApiClient,
}

impl Network {
    pub fn new(
        url: &str,
        service_token: Secret<String>,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        Ok(Self {
            url: url.to_owned(),
            service: ApiClient::new(
                url,
                ClientOptions {
                    token: Some(service_token),
                    ..options.clone()
                },
            )?,
            options,
        })
    }

    fn as_caller(&self, token: &Secret<String>) -> Result<ApiClient, NetError> {
        ApiClient::new(
            &self.url,
            ClientOptions {
                token: Some(token.clone()),
                ..self.options.clone()
            },
        )
        .map_err(|e| NetError::Unavailable(e.to_string()))
    }

    /// Takes the caller's existing port for VM `vm_id` (refused if another device owns it).
    pub async fn claim_port(
        &self,
        caller_token: &Secret<String>,
        port_id: &str,
        vm_id: &str,
    ) -> Result<VmNic, NetError> {
        let what = format!("port {port_id}");
        let port: Port = self
            .as_caller(caller_token)?
            .get(&format!("/v1/ports/{port_id}"))
            .await
            .map_err(|e| classify(&what, e))?;
        if port
            .device_id
            .as_deref()
            .is_some_and(|d| !d.is_empty() && d != vm_id)
        {
            return Err(NetError::Conflict(format!(
                "port {port_id} is in use by {}",
                port.device_id.unwrap_or_default()
            )));
        }
        let port: Port = self
            .service
            .put(
                &format!("/v1/ports/{port_id}"),
                &serde_json::json!({
                    "device_owner": "vm",
                    "device_id": vm_id,
                    "version": port.version,
                }),
            )
            .await
            .map_err(|e| classify(&what, e))?;
        Ok(port.nic(false))
    }

    /// A new port in the caller's subnet, owned by VM `vm_id`.
    pub async fn create_port(
        &self,
        caller_token: &Secret<String>,
        subnet_id: &str,
        vm_id: &str,
        vm_name: &str,
    ) -> Result<VmNic, NetError> {
        let port: Port = self
            .as_caller(caller_token)?
            .post(
                "/v1/ports",
                &serde_json::json!({
                    "subnet_id": subnet_id,
                    "name": format!("{vm_name}-{}", &vm_id[vm_id.len().saturating_sub(6)..]),
                    "device_owner": "vm",
                    "device_id": vm_id,
                }),
            )
            .await
            .map_err(|e| classify(&format!("subnet {subnet_id}"), e))?;
        Ok(port.nic(true))
    }

    pub async fn delete_port(&self, port_id: &str) -> Result<(), NetError> {
        match self
            .service
            .delete_no_content(&format!("/v1/ports/{port_id}"))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(classify(&format!("port {port_id}"), e)),
        }
    }

    /// Gives a claimed port back: unbound, no owner.
    pub async fn release_port(&self, port_id: &str, vm_id: &str) -> Result<(), NetError> {
        let port = match self.get_port(port_id).await {
            Ok(p) => p,
            Err(NetError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if port.device_id.as_deref() != Some(vm_id) {
            return Ok(());
        }
        self.service
            .put::<_, Port>(
                &format!("/v1/ports/{port_id}"),
                &serde_json::json!({"device_owner": "", "device_id": "", "unbind": true}),
            )
            .await
            .map_err(|e| classify(&format!("port {port_id}"), e))?;
        Ok(())
    }

    pub async fn get_port(&self, port_id: &str) -> Result<Port, NetError> {
        self.service
            .get(&format!("/v1/ports/{port_id}"))
            .await
            .map_err(|e| classify(&format!("port {port_id}"), e))
    }

    /// Binds a port to `host` as a tap (no-op when already so bound).
    pub async fn bind_tap(&self, port_id: &str, host: &str) -> Result<Port, NetError> {
        let port = self.get_port(port_id).await?;
        if let Some(b) = &port.binding
            && b.host == host
            && b.attachment == "tap"
        {
            return Ok(port);
        }
        self.service
            .put(
                &format!("/v1/ports/{port_id}"),
                &serde_json::json!({"binding": {"host": host, "attachment": "tap"}}),
            )
            .await
            .map_err(|e| classify(&format!("port {port_id}"), e))
    }

    /// Unbinds a port if it is bound to `host` (a port that moved on is left alone).
    pub async fn unbind(&self, port_id: &str, host: &str) -> Result<(), NetError> {
        let port = match self.get_port(port_id).await {
            Ok(p) => p,
            Err(NetError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if port.binding.as_ref().is_none_or(|b| b.host != host) {
            return Ok(());
        }
        self.service
            .put::<_, Port>(
                &format!("/v1/ports/{port_id}"),
                &serde_json::json!({"unbind": true}),
            )
            .await
            .map_err(|e| classify(&format!("port {port_id}"), e))?;
        Ok(())
    }

    /// Waits until the port's device on `host` is ready; its tap name.
    pub async fn wait_active(
        &self,
        port_id: &str,
        host: &str,
        timeout: std::time::Duration,
    ) -> Result<Port, NetError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let port = self.get_port(port_id).await?;
            let bound_here = port.binding.as_ref().is_some_and(|b| b.host == host);
            if bound_here && port.status == "active" && port.device.is_some() {
                return Ok(port);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(NetError::Unavailable(format!(
                    "port {port_id} did not become active on host {host} (status {})",
                    port.status
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}
