//! Raft metrics in the process's Prometheus registry, one label set per Raft group.

use std::sync::OnceLock;
use std::sync::atomic::AtomicI64;

use openraft::RaftMetrics;
use openraft::ServerState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::types::{NodeId, PeerNode};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    group: String,
}

type Gauges = Family<GroupLabels, Gauge<i64, AtomicI64>>;

struct RaftGauges {
    term: Gauges,
    is_leader: Gauges,
    leader_id: Gauges,
    last_log_index: Gauges,
    applied_index: Gauges,
    apply_lag: Gauges,
    snapshot_index: Gauges,
    voters: Gauges,
}

fn gauges() -> &'static RaftGauges {
    static GAUGES: OnceLock<RaftGauges> = OnceLock::new();
    GAUGES.get_or_init(|| {
        let g = RaftGauges {
            term: Gauges::default(),
            is_leader: Gauges::default(),
            leader_id: Gauges::default(),
            last_log_index: Gauges::default(),
            applied_index: Gauges::default(),
            apply_lag: Gauges::default(),
            snapshot_index: Gauges::default(),
            voters: Gauges::default(),
        };
        uc_runtime::metrics::register(|r| {
            r.register("uc_raft_term", "Current Raft term", g.term.clone());
            r.register(
                "uc_raft_is_leader",
                "1 if this node leads the group",
                g.is_leader.clone(),
            );
            r.register(
                "uc_raft_leader_id",
                "Id of the known leader (0: none)",
                g.leader_id.clone(),
            );
            r.register(
                "uc_raft_last_log_index",
                "Index of the last log entry",
                g.last_log_index.clone(),
            );
            r.register(
                "uc_raft_applied_index",
                "Index of the last applied entry",
                g.applied_index.clone(),
            );
            r.register(
                "uc_raft_apply_lag",
                "Log entries appended but not yet applied",
                g.apply_lag.clone(),
            );
            r.register(
                "uc_raft_snapshot_index",
                "Index covered by the last snapshot",
                g.snapshot_index.clone(),
            );
            r.register(
                "uc_raft_voters",
                "Voters in the current membership",
                g.voters.clone(),
            );
        });
        g
    })
}

pub(crate) fn record(group: &str, m: &RaftMetrics<NodeId, PeerNode>) {
    let g = gauges();
    let l = GroupLabels {
        group: group.to_owned(),
    };
    let last = m.last_log_index.unwrap_or(0) as i64;
    let applied = m.last_applied.map(|id| id.index).unwrap_or(0) as i64;
    g.term.get_or_create(&l).set(m.current_term as i64);
    g.is_leader
        .get_or_create(&l)
        .set(i64::from(m.state == ServerState::Leader));
    g.leader_id
        .get_or_create(&l)
        .set(m.current_leader.unwrap_or(0) as i64);
    g.last_log_index.get_or_create(&l).set(last);
    g.applied_index.get_or_create(&l).set(applied);
    g.apply_lag.get_or_create(&l).set((last - applied).max(0));
    g.snapshot_index
        .get_or_create(&l)
        .set(m.snapshot.map(|id| id.index).unwrap_or(0) as i64);
    g.voters
        .get_or_create(&l)
        .set(m.membership_config.voter_ids().count() as i64);
}
