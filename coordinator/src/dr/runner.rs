//! The policy runner: on every evaluation interval, computes each covered VM's RPO at each target
//! region (metrics, breach events) and submits an export-and-replicate job for each VM whose
//! policy interval has passed and that has none under way.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyperexport_proto::v1::{ReplicaStatus, SubmitRequest};
use tokio::sync::watch;

use super::evaluate::{BREACH, evaluate};
use crate::error::Result;
use crate::jobs::{self, is_final, now_ms};
use crate::scheduler::SchedulerHandle;
use crate::store::Store;
use hyperexport_shared::glob::glob_match;

/// The last evaluation, for `DrService.Status`.
#[derive(Default)]
pub struct DrView {
    rows: Mutex<Vec<ReplicaStatus>>,
}

impl DrView {
    /// The rows of the last evaluation.
    pub fn rows(&self) -> Vec<ReplicaStatus> {
        self.rows.lock().expect("dr view lock").clone()
    }
}

/// What the runner remembers between evaluations.
#[derive(Default)]
struct Memory {
    /// VM → its policy job under way.
    in_flight: HashMap<String, String>,
    /// VM → when its last policy job was submitted.
    submitted: HashMap<String, i64>,
    /// (VM, region) pairs in breach at the last evaluation.
    breached: HashSet<(String, String)>,
}

/// Starts the runner; it evaluates every `every` until `stopping` turns true.
pub fn spawn(store: Store, scheduler: SchedulerHandle, every: Duration, mut stopping: watch::Receiver<bool>) -> Arc<DrView> {
    let view = Arc::new(DrView::default());
    let shared = Arc::clone(&view);
    tokio::spawn(async move {
        let mut memory = Memory::default();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopping.changed() => return,
            }
            match evaluation(&store, &scheduler, &mut memory).await {
                Ok(rows) => *shared.rows.lock().expect("dr view lock") = rows,
                Err(e) => tracing::warn!(error = %e, "disaster-recovery evaluation failed"),
            }
        }
    });
    view
}

/// One evaluation: RPO rows, metrics and breach events, and the submissions that are due.
async fn evaluation(store: &Store, scheduler: &SchedulerHandle, memory: &mut Memory) -> Result<Vec<ReplicaStatus>> {
    let mut policies = store.policies().await?;
    if policies.is_empty() {
        return Ok(Vec::new());
    }
    policies.sort_by(|a, b| a.name.cmp(&b.name));
    let mut vms: Vec<String> = scheduler.live_agents().await?.into_iter().flat_map(|a| a.vms.into_iter().map(|v| v.name)).collect();
    vms.sort();
    vms.dedup();
    let replicas = store.replicas().await?;
    let now = now_ms();
    // VMs that have replicas count even when no live agent serves them any more: that is when
    // their RPO matters most.
    let mut covered = vms.clone();
    covered.extend(replicas.iter().map(|r| r.vm.clone()));
    let rows = evaluate(&policies, &covered, &replicas, now);
    let mut breached = HashSet::new();
    for row in &rows {
        crate::metrics::rpo(&row.vm, &row.region, row.rpo_seconds, row.rpo_target_seconds);
        let key = (row.vm.clone(), row.region.clone());
        if row.state == BREACH {
            if !memory.breached.contains(&key) {
                tracing::warn!(vm = %row.vm, region = %row.region, policy = %row.policy, rpo_s = row.rpo_seconds, target_s = row.rpo_target_seconds, last_error = %row.last_error, "rpo breach");
                crate::metrics::rpo_breach(&row.region);
            }
            breached.insert(key);
        } else if memory.breached.contains(&key) {
            tracing::info!(vm = %row.vm, region = %row.region, rpo_s = row.rpo_seconds, "rpo back within target");
        }
    }
    memory.breached = breached;
    // Jobs under way that have finished free their VM.
    let mut finished = Vec::new();
    for (vm, job) in &memory.in_flight {
        let id = job.clone();
        if store.get(&id).await?.is_none_or(|j| is_final(j.state())) {
            finished.push(vm.clone());
        }
    }
    for vm in finished {
        memory.in_flight.remove(&vm);
    }
    for vm in &vms {
        let Some(policy) = policies.iter().find(|p| glob_match(&p.vm_glob, vm)) else { continue };
        let last = memory.submitted.get(vm).copied();
        let due = match super::cron::Cron::parse(&policy.cron) {
            // A cron policy runs at its minutes, counted from its last run or its creation.
            Ok(cron) if !policy.cron.is_empty() => cron.due(last.unwrap_or(policy.created_unix_ms), now),
            _ => last.is_none_or(|at| now - at >= policy.interval_seconds as i64 * 1000),
        };
        if !due || memory.in_flight.contains_key(vm) {
            continue;
        }
        let request = SubmitRequest {
            vms: vec![vm.clone()],
            target: policy.target.clone(),
            replicate_to: policy.regions.clone(),
            ..Default::default()
        };
        let mut job = jobs::new_job(request)?;
        job.policy = policy.name.clone();
        job.retention = policy.retention;
        memory.submitted.insert(vm.clone(), now);
        match scheduler.submit(job).await {
            Ok(job_id) => {
                tracing::info!(vm = %vm, policy = %policy.name, job = %job_id, "policy run submitted");
                memory.in_flight.insert(vm.clone(), job_id);
            }
            Err(e) => tracing::warn!(vm = %vm, policy = %policy.name, error = %e, "policy run not submitted"),
        }
    }
    Ok(rows)
}
