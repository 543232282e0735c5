//! The RPO of every VM a policy covers at every region it names: a pure function of the
//! policies, the VMs live agents serve, what the store knows of each replica, and the time.

use std::collections::HashMap;

use hyperexport_proto::v1::{Policy, ReplicaStatus};

use crate::store::replica_key;
use hyperexport_shared::glob::glob_match;

/// State names in `ReplicaStatus.state`.
pub const OK: &str = "ok";
/// Older than the RPO target (or no point yet, for longer than the target).
pub const BREACH: &str = "breach";
/// No point there yet, within the target.
pub const NEVER: &str = "never";

/// One row per (VM covered by a policy, region of that policy), sorted by VM then region. A VM
/// covered by several policies gets the rows of the first one by name.
pub fn evaluate(policies: &[Policy], vms: &[String], replicas: &[ReplicaStatus], now_ms: i64) -> Vec<ReplicaStatus> {
    let known: HashMap<String, &ReplicaStatus> = replicas.iter().map(|r| (replica_key(&r.vm, &r.region), r)).collect();
    let mut sorted: Vec<&Policy> = policies.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut rows = Vec::new();
    let mut vms: Vec<&String> = vms.iter().collect();
    vms.sort();
    vms.dedup();
    for vm in vms {
        let Some(policy) = sorted.iter().find(|p| glob_match(&p.vm_glob, vm)) else { continue };
        for region in &policy.regions {
            let seen = known.get(&replica_key(vm, region));
            let point_ms = seen.map_or(0, |r| r.point_unix_ms);
            let since = if point_ms > 0 { point_ms } else { policy.created_unix_ms };
            let rpo = (now_ms - since).max(0) as f64 / 1000.0;
            let state = if rpo > policy.rpo_seconds as f64 {
                BREACH
            } else if point_ms == 0 {
                NEVER
            } else {
                OK
            };
            rows.push(ReplicaStatus {
                vm: vm.clone(),
                region: region.clone(),
                policy: policy.name.clone(),
                point: seen.map(|r| r.point.clone()).unwrap_or_default(),
                point_unix_ms: point_ms,
                rpo_seconds: rpo,
                rpo_target_seconds: policy.rpo_seconds,
                state: state.into(),
                last_error: seen.map(|r| r.last_error.clone()).unwrap_or_default(),
                last_attempt_unix_ms: seen.map_or(0, |r| r.last_attempt_unix_ms),
                last_rto_seconds: seen.map_or(0.0, |r| r.last_rto_seconds),
                last_rto_gb_per_second: seen.map_or(0.0, |r| r.last_rto_gb_per_second),
                last_rto_unix_ms: seen.map_or(0, |r| r.last_rto_unix_ms),
            });
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, glob: &str, regions: &[&str], rpo: u32) -> Policy {
        Policy {
            name: name.into(),
            vm_glob: glob.into(),
            regions: regions.iter().map(|r| r.to_string()).collect(),
            rpo_seconds: rpo,
            interval_seconds: 10,
            created_unix_ms: 1_000,
            ..Default::default()
        }
    }

    #[test]
    fn rpo_grows_from_the_newest_point_and_breaches_past_the_target() {
        let policies = [policy("gold", "web*", &["b", "c"], 60), policy("all", "*", &["b"], 600)];
        let vms = ["web1".to_string(), "db1".to_string(), "web1".to_string()];
        let b = ReplicaStatus { vm: "web1".into(), region: "b".into(), point: "p1".into(), point_unix_ms: 100_000, ..Default::default() };
        let rows = evaluate(&policies, &vms, &[b], 130_000);
        let view: Vec<(&str, &str, &str, f64, &str)> =
            rows.iter().map(|r| (r.vm.as_str(), r.region.as_str(), r.policy.as_str(), r.rpo_seconds, r.state.as_str())).collect();
        assert_eq!(
            view,
            [
                // db1 only matches "all": no point yet, 129 s since the policy, within 600 s.
                ("db1", "b", "all", 129.0, NEVER),
                // web1 matches both; "all" comes first by name.
                ("web1", "b", "all", 30.0, OK),
            ]
        );
        let gold_only = [policies[0].clone()];
        let rows = evaluate(&gold_only, &vms, &[], 200_000);
        assert_eq!(rows.iter().map(|r| (r.region.as_str(), r.state.as_str())).collect::<Vec<_>>(), [("b", BREACH), ("c", BREACH)]);
    }
}
