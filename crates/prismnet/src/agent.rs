//! The host agent: registers its host (name, VXLAN endpoint), long-polls prismnet for the
//! host's plan, converges the dataplane to it, and reports which ports are ready.
//!
//! - A new plan is converged as soon as it arrives (the long poll answers on the model
//!   change), so a port is ready well under a second after its create.
//! - Every `repair_interval_secs` the current plan is converged again, which repairs drift
//!   (a deleted bridge, a flushed nftables table, a dead dnsmasq).
//! - The last plan is kept in `<state_dir>/plan.json`. When the API cannot be reached the
//!   agent keeps converging that plan; it never tears the dataplane down because a fetch
//!   failed.
//! - An agent that has never been given anything (no stored plan, empty plans) does not
//!   converge at all, so a node that does not use prismnet never has its devices touched.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use uc_runtime::Shutdown;

use crate::api::{HostRegistration, PortStatus, StatusReport};
use crate::client::PrismnetClient;
use crate::config::AgentConfig;
use crate::dataplane::plan::{Attachment, ConvergeReport, HostPlan};
use crate::dataplane::{Dataplane, names};

/// Seconds a plan request waits for a change on the server.
const LONG_POLL_SECS: u64 = 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Stored {
    revision: i64,
    plan: HostPlan,
}

pub struct Agent {
    client: PrismnetClient,
    dataplane: Arc<Mutex<Dataplane>>,
    config: AgentConfig,
    host: String,
    state_dir: PathBuf,
}

fn has_content(plan: &HostPlan) -> bool {
    !plan.networks.is_empty() || !plan.routers.is_empty() || !plan.security_groups.is_empty()
}

/// The host-side device of a port, as the dataplane names it.
pub fn port_device(port_id: &str, attachment: &Attachment) -> Option<String> {
    let id = names::id10(port_id)?;
    Some(match attachment {
        Attachment::Tap => names::device(names::TAP, &id),
        Attachment::Netns { .. } => names::device(names::PORT_VETH, &id),
    })
}

impl Agent {
    /// `client` must carry the node's service token.
    pub fn new(
        client: PrismnetClient,
        config: AgentConfig,
        host: String,
        state_dir: PathBuf,
    ) -> Self {
        Self {
            client,
            dataplane: Arc::new(Mutex::new(Dataplane::new(state_dir.join("dataplane")))),
            config,
            host,
            state_dir,
        }
    }

    fn plan_file(&self) -> PathBuf {
        self.state_dir.join("plan.json")
    }

    fn load(&self) -> Option<Stored> {
        let text = std::fs::read_to_string(self.plan_file()).ok()?;
        match serde_json::from_str(&text) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an unreadable stored plan");
                None
            }
        }
    }

    fn save(&self, stored: &Stored) {
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.state_dir)?;
            let tmp = self.state_dir.join("plan.json.tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(stored).unwrap_or_default())?;
            std::fs::rename(&tmp, self.plan_file())
        };
        if let Err(e) = write() {
            tracing::warn!(error = %e, "cannot store the plan");
        }
    }

    /// The plan with this agent's local settings (prefix, VTEP, external bridge).
    fn localize(&self, mut plan: HostPlan) -> HostPlan {
        plan.host = self.host.clone();
        plan.prefix = self.config.prefix.clone();
        if let Some(ip) = self.config.underlay_ip {
            plan.underlay_ip = Some(ip);
        }
        plan.external_bridge = self.config.external_bridge.clone();
        plan
    }

    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: Shutdown) {
        let stored = self.load();
        let (tx, rx) = watch::channel(stored.clone());
        let fetch = self.fetch_loop(
            stored.as_ref().map_or(0, |s| s.revision),
            tx,
            shutdown.clone(),
        );
        let apply = self.apply_loop(rx, stored.is_some(), shutdown);
        tokio::join!(fetch, apply);
    }

    async fn fetch_loop(
        &self,
        mut revision: i64,
        tx: watch::Sender<Option<Stored>>,
        shutdown: Shutdown,
    ) {
        let mut registered = false;
        let mut backoff = Duration::from_millis(200);
        loop {
            let step = async {
                if !registered {
                    let req = HostRegistration {
                        underlay_ip: self.config.underlay_ip.map(|a| a.to_string()),
                    };
                    self.client.register_host(&self.host, &req).await?;
                    registered = true;
                    tracing::info!(host = %self.host, "registered with prismnet");
                }
                self.client.plan(&self.host, revision, LONG_POLL_SECS).await
            };
            let answer = tokio::select! {
                _ = shutdown.wait() => return,
                a = step => a,
            };
            match answer {
                Ok(a) => {
                    backoff = Duration::from_millis(200);
                    let stored = Stored {
                        revision: a.revision,
                        plan: self.localize(a.plan),
                    };
                    revision = a.revision;
                    let changed = tx.borrow().as_ref().is_none_or(|s| s.plan != stored.plan);
                    if changed {
                        if has_content(&stored.plan) || self.plan_file().exists() {
                            self.save(&stored);
                        }
                        tx.send_replace(Some(stored));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot fetch the host plan; keeping the last one");
                    tokio::select! {
                        _ = shutdown.wait() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn apply_loop(
        &self,
        mut rx: watch::Receiver<Option<Stored>>,
        mut active: bool,
        shutdown: Shutdown,
    ) {
        let repair = Duration::from_secs(self.config.repair_interval_secs.max(1));
        let mut reported: HashMap<String, PortStatus> = HashMap::new();
        loop {
            let current = rx.borrow_and_update().clone();
            if let Some(stored) = current {
                active |= has_content(&stored.plan);
                if active {
                    let report = converge(self.dataplane.clone(), stored.plan.clone()).await;
                    if !report.changed.is_empty() {
                        tracing::info!(changes = ?report.changed, "dataplane converged");
                    }
                    for e in &report.errors {
                        tracing::warn!(error = %e, "dataplane");
                    }
                    self.report(&stored.plan, &report, &mut reported).await;
                }
            }
            tokio::select! {
                _ = shutdown.wait() => return,
                r = rx.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(repair) => {}
            }
        }
    }

    /// Tells prismnet which ports changed state since the last successful report.
    async fn report(
        &self,
        plan: &HostPlan,
        report: &ConvergeReport,
        reported: &mut HashMap<String, PortStatus>,
    ) {
        let mut changes = Vec::new();
        for port in plan.networks.iter().flat_map(|n| n.ports.iter()) {
            let ready = report.ports_ready.contains(&port.port_id);
            let status = PortStatus {
                port_id: port.port_id.clone(),
                status: if ready { "active" } else { "down" }.into(),
                device: ready
                    .then(|| port_device(&port.port_id, &port.attachment))
                    .flatten(),
            };
            if reported.get(&port.port_id) != Some(&status) {
                changes.push(status);
            }
        }
        if changes.is_empty() {
            return;
        }
        match self
            .client
            .report_status(
                &self.host,
                &StatusReport {
                    ports: changes.clone(),
                },
            )
            .await
        {
            Ok(()) => {
                for c in changes {
                    reported.insert(c.port_id.clone(), c);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot report port status"),
        }
    }
}

/// One dataplane pass, off the async threads (it runs `ip`, `nft` and `dnsmasq`).
async fn converge(dataplane: Arc<Mutex<Dataplane>>, plan: HostPlan) -> ConvergeReport {
    let pass = move || {
        let mut dp = dataplane.lock().unwrap_or_else(|p| p.into_inner());
        dp.converge(&plan)
    };
    match tokio::task::spawn_blocking(pass).await {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => ConvergeReport {
            errors: vec![e.to_string()],
            ..Default::default()
        },
        Err(e) => ConvergeReport {
            errors: vec![format!("converge task: {e}")],
            ..Default::default()
        },
    }
}
