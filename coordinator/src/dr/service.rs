//! `hyperexport.v1.DrService`: policies and the RPO table.

use std::sync::Arc;

use hyperexport_proto::v1::dr_service_server::DrService;
use hyperexport_proto::v1::{
    DeletePolicyRequest, DeletePolicyResponse, DrStatusRequest, DrStatusResponse, FailoverRequest, FailoverResponse, ListPoliciesRequest,
    ListPoliciesResponse, Policy, TestFailoverRequest, TestFailoverResponse,
};
use tonic::{Request, Response, Status};

use super::runner::DrView;
use crate::error::{CoordinatorError, Result};
use crate::jobs::{now_ms, validate_target};
use crate::scheduler::SchedulerHandle;
use crate::store::Store;

/// Most regions one policy replicates to.
const MAX_REGIONS: usize = 16;

/// The service.
pub struct DrApi {
    store: Store,
    view: Arc<DrView>,
    scheduler: SchedulerHandle,
}

impl DrApi {
    /// Serves policies from `store`, the RPO table from `view`, drills through `scheduler`.
    pub fn new(store: Store, view: Arc<DrView>, scheduler: SchedulerHandle) -> Self {
        DrApi { store, view, scheduler }
    }
}

/// Checks a policy as submitted.
pub fn validate(p: &Policy) -> Result<()> {
    let invalid = |m: String| Err(CoordinatorError::Invalid(m));
    if p.name.is_empty() || p.name.len() > 64 || !p.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return invalid(format!("policy name {:?} is not 1-64 characters of letters, digits, '.', '_' and '-'", p.name));
    }
    if p.vm_glob.is_empty() || p.vm_glob.len() > 255 || p.vm_glob.chars().any(char::is_control) {
        return invalid(format!("vm_glob {:?} is not a pattern of 1-255 printable characters", p.vm_glob));
    }
    validate_target(&p.target)?;
    if p.regions.is_empty() || p.regions.len() > MAX_REGIONS {
        return invalid(format!("regions: name 1-{MAX_REGIONS} target regions"));
    }
    if let Some(r) = p.regions.iter().find(|r| r.is_empty() || r.len() > 128 || r.chars().any(char::is_control)) {
        return invalid(format!("region {r:?} is not 1-128 printable characters"));
    }
    if p.rpo_seconds == 0 {
        return invalid("rpo_seconds must be at least 1".into());
    }
    match (p.interval_seconds, p.cron.is_empty()) {
        (0, true) => return invalid("give interval_seconds or cron".into()),
        (n, false) if n > 0 => return invalid("give interval_seconds or cron, not both".into()),
        (_, false) => {
            super::cron::Cron::parse(&p.cron)?;
        }
        _ => {}
    }
    Ok(())
}

#[tonic::async_trait]
impl DrService for DrApi {
    async fn set_policy(&self, request: Request<Policy>) -> std::result::Result<Response<Policy>, Status> {
        let mut policy = request.into_inner();
        validate(&policy)?;
        let name = policy.name.clone();
        let existing = self.store.policies().await?.into_iter().find(|p| p.name == name);
        // The RPO of VMs without a point counts from when the policy was first set.
        policy.created_unix_ms = existing.map_or_else(now_ms, |p| p.created_unix_ms);
        let stored = policy.clone();
        self.store.put_policy(stored).await?;
        tracing::info!(policy = %policy.name, vms = %policy.vm_glob, regions = ?policy.regions, rpo_s = policy.rpo_seconds, "policy set");
        Ok(Response::new(policy))
    }

    async fn list_policies(&self, _: Request<ListPoliciesRequest>) -> std::result::Result<Response<ListPoliciesResponse>, Status> {
        let mut policies = self.store.policies().await?;
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(ListPoliciesResponse { policies }))
    }

    async fn delete_policy(&self, request: Request<DeletePolicyRequest>) -> std::result::Result<Response<DeletePolicyResponse>, Status> {
        let name = request.into_inner().name;
        if !self.store.delete_policy(&name).await? {
            return Err(CoordinatorError::NoPolicy(name).into());
        }
        tracing::info!(policy = %name, "policy deleted");
        Ok(Response::new(DeletePolicyResponse {}))
    }

    async fn status(&self, _: Request<DrStatusRequest>) -> std::result::Result<Response<DrStatusResponse>, Status> {
        Ok(Response::new(DrStatusResponse { replicas: self.view.rows() }))
    }

    async fn failover(&self, request: Request<FailoverRequest>) -> std::result::Result<Response<FailoverResponse>, Status> {
        let FailoverRequest { vm, to } = request.into_inner();
        if vm.is_empty() || !to.starts_with('/') {
            return Err(CoordinatorError::Invalid("vm, and an absolute path `to` on the chosen agent's host, are needed".into()).into());
        }
        // Regions holding a point of the VM, newest point first.
        let wanted = vm.clone();
        let mut regions = self.store.replicas().await?.into_iter().filter(|r| r.vm == wanted && r.point_unix_ms > 0).collect::<Vec<_>>();
        regions.sort_by(|a, b| b.point_unix_ms.cmp(&a.point_unix_ms).then_with(|| a.region.cmp(&b.region)));
        if regions.is_empty() {
            return Err(CoordinatorError::Conflict(format!("no region holds a replicated point of VM {vm:?}")).into());
        }
        let mut skipped = Vec::new();
        for r in regions {
            match self.scheduler.drill(vm.clone(), r.region.clone(), to.clone()).await {
                Ok((agent_id, done)) => {
                    tracing::info!(vm = %vm, region = %r.region, agent = %agent_id, point = %done.point, skipped = skipped.len(), "failover chose a region");
                    return Ok(Response::new(FailoverResponse {
                        region: r.region,
                        agent_id,
                        point: done.point,
                        bytes: done.bytes,
                        rto_seconds: done.seconds,
                        gb_per_second: done.bytes as f64 / done.seconds.max(1e-9) / 1e9,
                        skipped,
                    }));
                }
                Err(e) => skipped.push(format!("{}: {e}", r.region)),
            }
        }
        Err(CoordinatorError::Conflict(format!("no region could restore VM {vm:?}: {}", skipped.join("; "))).into())
    }

    async fn test_failover(&self, request: Request<TestFailoverRequest>) -> std::result::Result<Response<TestFailoverResponse>, Status> {
        let TestFailoverRequest { vm, region } = request.into_inner();
        if vm.is_empty() || region.is_empty() {
            return Err(CoordinatorError::Invalid("vm and region are both needed".into()).into());
        }
        let (agent_id, done) = self.scheduler.drill(vm, region, String::new()).await?;
        Ok(Response::new(TestFailoverResponse {
            agent_id,
            point: done.point,
            bytes: done.bytes,
            rto_seconds: done.seconds,
            gb_per_second: done.bytes as f64 / done.seconds.max(1e-9) / 1e9,
        }))
    }
}
