//! Lease expiry, driven by the leader (as in etcd): the leader keeps a deadline per lease in
//! memory, renews it on keep-alive, and proposes a revoke through Raft when it passes. A new
//! leader (after failover or a restart) starts every lease's clock afresh, so a lease never
//! expires early because leadership moved. Followers forward keep-alives and TTL queries to
//! the leader.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uc_raft::RaftNode;
use uc_runtime::Shutdown;

use crate::mvcc::Command;
use crate::state::{ChainfireCommand, ChainfireState};

#[derive(Default)]
struct Deadlines {
    /// Whether these deadlines were set while this node led (reset on every new leadership).
    term: u64,
    by_lease: HashMap<i64, Instant>,
    revoking: HashSet<i64>,
}

pub struct Leases {
    state: Arc<ChainfireState>,
    deadlines: Mutex<Deadlines>,
    /// etcd raises shorter TTLs to this (1.5 × the election timeout, at least 1 s).
    pub min_ttl: i64,
}

impl Leases {
    pub fn new(state: Arc<ChainfireState>, election_timeout_max_ms: u64) -> Self {
        Self {
            state,
            deadlines: Mutex::new(Deadlines::default()),
            min_ttl: (election_timeout_max_ms * 3).div_ceil(2000).max(1) as i64,
        }
    }

    fn deadlines(&self) -> std::sync::MutexGuard<'_, Deadlines> {
        self.deadlines.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// On the leader: restarts a lease's clock. `None` if the lease does not exist.
    pub fn keep_alive(&self, id: i64) -> Option<i64> {
        let ttl = self.state.store().lease(id)?.ttl;
        let mut d = self.deadlines();
        if d.revoking.contains(&id) {
            return None;
        }
        d.by_lease
            .insert(id, Instant::now() + Duration::from_secs(ttl as u64));
        Some(ttl)
    }

    /// On the leader: (granted TTL, seconds remaining), `None` if the lease does not exist.
    pub fn time_to_live(&self, id: i64) -> Option<(i64, i64)> {
        let ttl = self.state.store().lease(id)?.ttl;
        let d = self.deadlines();
        let remaining = match d.by_lease.get(&id) {
            Some(deadline) => deadline
                .saturating_duration_since(Instant::now())
                .as_secs_f64()
                .ceil() as i64,
            None => ttl,
        };
        Some((ttl, remaining.min(ttl)))
    }

    /// On the leader, right after a grant committed: start its clock now.
    pub fn granted(&self, id: i64, ttl: i64) {
        self.deadlines()
            .by_lease
            .insert(id, Instant::now() + Duration::from_secs(ttl as u64));
    }

    /// Runs until shutdown: while leader, revokes expired leases through Raft.
    pub async fn run(self: Arc<Self>, node: RaftNode<ChainfireState>, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tick.tick() => {}
            }
            let status = node.status();
            if !node.is_leader() {
                let mut d = self.deadlines();
                d.by_lease.clear();
                d.term = 0;
                continue;
            }
            let expired = self.sync_and_collect_expired(status.term);
            for id in expired {
                let node = node.clone();
                let leases = self.clone();
                tokio::spawn(async move {
                    let result = node
                        .write(ChainfireCommand::Kv(Command::LeaseRevoke { id }))
                        .await;
                    if let Err(e) = &result {
                        tracing::warn!(lease = id, error = %e, "lease expiry revoke failed; will retry");
                    } else {
                        tracing::debug!(lease = id, "lease expired");
                    }
                    let mut d = leases.deadlines();
                    d.revoking.remove(&id);
                    if result.is_ok() {
                        d.by_lease.remove(&id);
                    }
                });
            }
        }
    }

    /// Brings the deadline table in line with the store and returns leases to revoke now.
    fn sync_and_collect_expired(&self, term: u64) -> Vec<i64> {
        let leases = self.state.store().leases();
        let now = Instant::now();
        let mut d = self.deadlines();
        if d.term != term {
            // New leadership: every lease gets its full TTL from now.
            d.term = term;
            d.by_lease.clear();
            d.revoking.clear();
        }
        let live: HashSet<i64> = leases.iter().map(|l| l.id).collect();
        d.by_lease.retain(|id, _| live.contains(id));
        for lease in &leases {
            d.by_lease
                .entry(lease.id)
                .or_insert_with(|| now + Duration::from_secs(lease.ttl as u64));
        }
        let expired: Vec<i64> = d
            .by_lease
            .iter()
            .filter(|(id, deadline)| **deadline <= now && !d.revoking.contains(id))
            .map(|(id, _)| *id)
            .collect();
        d.revoking.extend(expired.iter().copied());
        expired
    }
}
