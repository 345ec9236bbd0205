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
    dataplane: DataplaneThread,
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
        Attachment::TapAlternate => names::device(names::TAP_ALTERNATE, &id),
        Attachment::Netns { .. } => names::device(names::PORT_VETH, &id),
    })
}

/// A port's binding and its migration binding are reported apart.
fn reported_key(s: &PortStatus) -> String {
    if s.migration {
        format!("{}/migration", s.port_id)
    } else {
        s.port_id.clone()
    }
}

impl Agent {
    /// `client` must carry the node's service token. Fails when the configured network
    /// namespace cannot be entered.
    pub fn new(
        client: PrismnetClient,
        config: AgentConfig,
        host: String,
        state_dir: PathBuf,
    ) -> std::io::Result<Self> {
        let dataplane = DataplaneThread::start(
            Dataplane::new(state_dir.join("dataplane")),
            config.netns.clone(),
        )?;
        Ok(Self {
            client,
            dataplane,
            config,
            host,
            state_dir,
        })
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
                    let started = std::time::Instant::now();
                    let report = self.dataplane.converge(stored.plan.clone()).await;
                    let ms = started.elapsed().as_millis() as u64;
                    if !report.changed.is_empty() {
                        tracing::info!(revision = stored.revision, ms, changes = ?report.changed, "dataplane converged");
                    } else {
                        tracing::debug!(revision = stored.revision, ms, "dataplane unchanged");
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
        let mut in_plan = std::collections::HashSet::new();
        for port in plan.networks.iter().flat_map(|n| n.ports.iter()) {
            let ready = if port.migration_target {
                &report.migration_targets_ready
            } else {
                &report.ports_ready
            }
            .contains(&port.port_id);
            let status = PortStatus {
                port_id: port.port_id.clone(),
                status: if ready { "active" } else { "down" }.into(),
                device: ready
                    .then(|| port_device(&port.port_id, &port.attachment))
                    .flatten(),
                migration: port.migration_target,
            };
            let key = reported_key(&status);
            if reported.get(&key) != Some(&status) {
                changes.push(status);
            }
            in_plan.insert(key);
        }
        // A port that left this host and comes back is reported afresh (its binding's
        // status was reset to `down` in between).
        reported.retain(|k, _| in_plan.contains(k));
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
                    reported.insert(reported_key(&c), c);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot report port status"),
        }
    }
}

type Job = (HostPlan, tokio::sync::oneshot::Sender<ConvergeReport>);

/// The thread every dataplane pass runs on: off the async threads (passes run `ip`, `nft`
/// and `dnsmasq`), and inside the host network namespace the agent manages (`netns`), which
/// the `ip`/`nft`/`dnsmasq` processes it starts inherit.
struct DataplaneThread {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl DataplaneThread {
    fn start(mut dataplane: Dataplane, netns: Option<String>) -> std::io::Result<Self> {
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("prismnet-dataplane".into())
            .spawn(move || {
                if let Some(ns) = &netns {
                    let entered = std::fs::File::open(format!("/run/netns/{ns}")).and_then(|fd| {
                        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
                            .map_err(std::io::Error::from)
                    });
                    if let Err(e) = entered {
                        let _ = ready_tx.send(Err(std::io::Error::new(
                            e.kind(),
                            format!("cannot enter network namespace {ns}: {e}"),
                        )));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(()));
                while let Ok((plan, reply)) = rx.recv() {
                    let report = match dataplane.converge(&plan) {
                        Ok(r) => r,
                        Err(e) => ConvergeReport {
                            errors: vec![e.to_string()],
                            ..Default::default()
                        },
                    };
                    let _ = reply.send(report);
                }
            })?;
        ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("dataplane thread died"))??;
        Ok(Self { jobs })
    }

    async fn converge(&self, plan: HostPlan) -> ConvergeReport {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.jobs.send((plan, tx)).is_err() {
            return ConvergeReport {
                errors: vec!["dataplane thread is gone".into()],
                ..Default::default()
            };
        }
        rx.await.unwrap_or_else(|_| ConvergeReport {
            errors: vec!["dataplane pass panicked".into()],
            ..Default::default()
        })
    }
}
