//! VM NICs through prismnet's API (`/v1/ports`): the control plane checks or creates a VM's
//! ports (with the caller's own token, so a foreign tenant's port is simply "not found"), and
//! deletes or releases them with the VM; workers bind a port to their host as a `tap`, wait
//! for the agent to make it `active`, and unbind it when the VM leaves. A live migration's
//! destination gets the port's second tap (its migration binding) while the source keeps
//! the first; the control plane activates it once the VM runs on the destination.
//!
//! Everything goes through prismnet's typed client ([`PrismnetClient`]).

use prismnet::api::{Binding, CreatePort, Port, UpdatePort};
use prismnet::client::PrismnetClient;
use uc_runtime::Secret;
use uc_runtime::client::{ClientError, ClientOptions};

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
        Some(409 | 412) => NetError::Conflict(format!("{what}: {e}")),
        Some(s) if (400..500).contains(&s) => NetError::Invalid(format!("{what}: {e}")),
        _ => NetError::Unavailable(format!("prismnet: {what}: {e}")),
    }
}

fn nic(port: &Port, owned: bool) -> VmNic {
    VmNic {
        port_id: port.id.clone(),
        subnet_id: port.subnet_id.clone(),
        mac: port.mac.clone(),
        ips: port.ips.clone(),
        owned,
    }
}

/// prismnet as the control plane and workers use it.
#[derive(Clone)]
pub struct Network {
    url: String,
    options: ClientOptions,
    /// With the service (operator) credential.
    service: PrismnetClient,
}

impl Network {
    pub fn new(
        url: &str,
        service_token: Secret<String>,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        Ok(Self {
            url: url.to_owned(),
            service: PrismnetClient::new(
                url,
                ClientOptions {
                    token: Some(service_token),
                    ..options.clone()
                },
            )?,
            options,
        })
    }

    fn as_caller(&self, token: &Secret<String>) -> Result<PrismnetClient, NetError> {
        PrismnetClient::new(
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
        let port = self
            .as_caller(caller_token)?
            .get_port(port_id)
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
        let port = self
            .service
            .update_port(
                port_id,
                &UpdatePort {
                    device_owner: Some("vm".into()),
                    device_id: Some(vm_id.into()),
                    // Claimed from the version read: a concurrent claim loses.
                    version: Some(port.version),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| classify(&what, e))?;
        Ok(nic(&port, false))
    }

    /// A new port in the caller's subnet, owned by VM `vm_id`.
    pub async fn create_port(
        &self,
        caller_token: &Secret<String>,
        subnet_id: &str,
        vm_id: &str,
        vm_name: &str,
    ) -> Result<VmNic, NetError> {
        let req = CreatePort {
            subnet_id: subnet_id.into(),
            name: format!("{vm_name}-{}", &vm_id[vm_id.len().saturating_sub(6)..]),
            mac: None,
            ips: None,
            security_groups: None,
            port_security: None,
            device_owner: Some("vm".into()),
            device_id: Some(vm_id.into()),
            binding: None,
        };
        let port = self
            .as_caller(caller_token)?
            .create_port(&req, Some(&format!("{vm_id}-{subnet_id}")))
            .await
            .map_err(|e| classify(&format!("subnet {subnet_id}"), e))?;
        Ok(nic(&port, true))
    }

    pub async fn delete_port(&self, port_id: &str) -> Result<(), NetError> {
        match self.service.delete(&format!("/v1/ports/{port_id}")).await {
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
        let unbind = port.binding.is_some();
        self.service
            .update_port(
                port_id,
                &UpdatePort {
                    device_owner: Some(String::new()),
                    device_id: Some(String::new()),
                    unbind,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| classify(&format!("port {port_id}"), e))?;
        Ok(())
    }

    pub async fn get_port(&self, port_id: &str) -> Result<Port, NetError> {
        self.service
            .get_port(port_id)
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
            .update_port(
                port_id,
                &UpdatePort {
                    binding: Some(Binding {
                        host: host.into(),
                        attachment: "tap".into(),
                    }),
                    ..Default::default()
                },
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
            .update_port(
                port_id,
                &UpdatePort {
                    unbind: true,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| classify(&format!("port {port_id}"), e))?;
        Ok(())
    }

    /// Sets up the port's second tap on `host` for a live migration (its migration binding;
    /// no-op when already there).
    pub async fn bind_migration_target(&self, port_id: &str, host: &str) -> Result<(), NetError> {
        self.service
            .set_port_migration(port_id, host)
            .await
            .map(|_| ())
            .map_err(|e| classify(&format!("port {port_id}"), e))
    }

    /// Drops the port's migration binding (gone already is fine).
    pub async fn cancel_migration(&self, port_id: &str) -> Result<(), NetError> {
        match self.service.cancel_port_migration(port_id).await {
            Ok(()) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(classify(&format!("port {port_id}"), e)),
        }
    }

    /// The migration binding becomes the port's binding: the destination's tap carries the
    /// port from now on and the source's tap is removed.
    pub async fn activate_migration(&self, port_id: &str) -> Result<Port, NetError> {
        self.service
            .activate_port_migration(port_id)
            .await
            .map_err(|e| classify(&format!("port {port_id}"), e))
    }

    /// Waits until the port's migration binding on `host` is ready; its tap name.
    pub async fn wait_migration_target(
        &self,
        port_id: &str,
        host: &str,
        timeout: std::time::Duration,
    ) -> Result<String, NetError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let port = self.get_port(port_id).await?;
            let status = match &port.migration {
                Some(m) if m.host == host => {
                    if m.status == "active"
                        && let Some(device) = &m.device
                    {
                        return Ok(device.clone());
                    }
                    m.status.clone()
                }
                _ => {
                    return Err(NetError::Conflict(format!(
                        "port {port_id} has no migration binding on host {host}"
                    )));
                }
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(NetError::Unavailable(format!(
                    "port {port_id}'s migration tap did not become active on host {host} (status {status})"
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
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
