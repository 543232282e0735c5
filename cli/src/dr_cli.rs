//! `hyperexport dr policy ...` and `hyperexport dr status`: replication policies the coordinator
//! runs, and each VM's RPO at each target region.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, anyhow};
use clap::{Args, Subcommand};
use hyperexport_proto::v1::dr_service_client::DrServiceClient;
use hyperexport_proto::v1::{DeletePolicyRequest, DrStatusRequest, FailoverRequest, ListPoliciesRequest, Policy, TestFailoverRequest};
use serde_json::json;

use crate::Output;
use crate::progress::print_json;
use crate::remote::{CoordinatorUrl, channel, refused, runtime};

/// `hyperexport dr policy ...`
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Create or replace a policy: export the VMs matching --vms on its interval and replicate
    /// each new point to a receiver in each --region.
    Set(SetPolicyArgs),
    /// List the policies.
    List(ListArgs),
    /// Delete a policy (points already made stay).
    Delete {
        /// The policy's name.
        name: String,
        #[command(flatten)]
        url: CoordinatorUrl,
    },
}

/// Options of `dr policy set`.
#[derive(Debug, Args)]
pub struct SetPolicyArgs {
    /// The policy's name (letters, digits, '.', '_', '-').
    pub name: String,
    /// Shell-style pattern on VM names (`*`, `?`).
    #[arg(long = "vms", value_name = "GLOB")]
    pub vm_glob: String,
    /// Where each VM is exported first: file:///absolute/path on the agent serving it.
    #[arg(long, value_name = "TARGET")]
    pub target: String,
    /// A region whose receiver keeps a replica (repeat for several).
    #[arg(long = "region", value_name = "REGION", required = true)]
    pub regions: Vec<String>,
    /// Most data loss allowed (e.g. 15m, 1h).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub rpo: Duration,
    /// How often each VM is exported and replicated (e.g. 5m).
    #[arg(long, value_parser = humantime::parse_duration, required_unless_present = "cron", conflicts_with = "cron")]
    pub interval: Option<Duration>,
    /// When to run instead, as five cron fields in UTC (e.g. "0 2 * * 1-5").
    #[arg(long)]
    pub cron: Option<String>,
    /// Points kept after each run, at the source and in every replica (default: all).
    #[command(flatten)]
    pub keep: crate::prune_cli::KeepArgs,
    #[command(flatten)]
    pub url: CoordinatorUrl,
}

/// Options of `dr test-failover`.
#[derive(Debug, Args)]
pub struct TestFailoverArgs {
    /// The VM.
    #[arg(long)]
    pub vm: String,
    /// The region whose replicas are restored from.
    #[arg(long = "target", value_name = "REGION")]
    pub region: String,
    #[command(flatten)]
    pub url: CoordinatorUrl,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// Runs `hyperexport dr test-failover`: an agent of the region restores the VM's newest complete
/// point from its replicas into an isolated folder, verifies and deletes it; the time is the RTO.
pub fn test_failover(a: TestFailoverArgs) -> Result<ExitCode> {
    let request = TestFailoverRequest { vm: a.vm.clone(), region: a.region.clone() };
    let r = runtime()?.block_on(async {
        Ok::<_, anyhow::Error>(DrServiceClient::new(channel(&a.url).await?).test_failover(request).await.map_err(refused)?.into_inner())
    })?;
    match a.output {
        Output::Json => print_json(&json!({"event": "result", "operation": "test-failover", "result": {
            "vm": a.vm, "target": a.region, "agent": r.agent_id, "point": r.point, "bytes": r.bytes,
            "rto_seconds": r.rto_seconds, "gb_per_second": r.gb_per_second}})),
        Output::Text => println!(
            "test failover of {:?} at {} (agent {}): point {} restored and verified in {:.2} s ({:.3} GB/s)",
            a.vm, a.region, r.agent_id, r.point, r.rto_seconds, r.gb_per_second
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// `dr failover` through the coordinator: the region with the newest point restores `vm` to
/// `to` on its agent's host.
pub fn failover(vm: &str, to: &std::path::Path, url: &CoordinatorUrl, output: Output) -> Result<ExitCode> {
    let request = FailoverRequest { vm: vm.to_string(), to: to.display().to_string() };
    let r = runtime()?.block_on(async {
        Ok::<_, anyhow::Error>(DrServiceClient::new(channel(url).await?).failover(request).await.map_err(refused)?.into_inner())
    })?;
    match output {
        Output::Json => print_json(&json!({"event": "result", "operation": "failover", "result": {
            "vm": vm, "region": r.region, "agent": r.agent_id, "point": r.point, "to": to, "bytes": r.bytes,
            "rto_seconds": r.rto_seconds, "gb_per_second": r.gb_per_second, "skipped": r.skipped}})),
        Output::Text => {
            for s in &r.skipped {
                println!("skipped region {s}");
            }
            println!(
                "failed {vm:?} over in {} (agent {}): point {} restored to {} in {:.2} s ({:.3} GB/s)",
                r.region,
                r.agent_id,
                r.point,
                to.display(),
                r.rto_seconds,
                r.gb_per_second
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Options of listings.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub url: CoordinatorUrl,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

fn seconds(d: Duration, what: &str) -> Result<u32> {
    let s = d.as_secs();
    if s == 0 || s > u32::MAX as u64 {
        return Err(anyhow!("--{what} must be from 1 s to 136 years"));
    }
    Ok(s as u32)
}

/// Runs `hyperexport dr policy ...`.
pub fn policy(command: PolicyCommand) -> Result<ExitCode> {
    runtime()?.block_on(async {
        match command {
            PolicyCommand::Set(a) => {
                let policy = Policy {
                    name: a.name,
                    vm_glob: a.vm_glob,
                    target: a.target,
                    regions: a.regions,
                    rpo_seconds: seconds(a.rpo, "rpo")?,
                    interval_seconds: a.interval.map(|i| seconds(i, "interval")).transpose()?.unwrap_or(0),
                    cron: a.cron.unwrap_or_default(),
                    created_unix_ms: 0,
                    retention: a.keep.proto(),
                };
                let set = DrServiceClient::new(channel(&a.url).await?).set_policy(policy).await.map_err(refused)?.into_inner();
                let when = if set.cron.is_empty() { format!("every {} s", set.interval_seconds) } else { format!("at cron {:?} (UTC)", set.cron) };
                println!("policy {:?} set: VMs {:?} to {} {when}, RPO {} s", set.name, set.vm_glob, set.regions.join(", "), set.rpo_seconds);
            }
            PolicyCommand::List(a) => {
                let policies = DrServiceClient::new(channel(&a.url).await?).list_policies(ListPoliciesRequest {}).await.map_err(refused)?.into_inner().policies;
                match a.output {
                    Output::Json => {
                        let list: Vec<_> = policies
                            .iter()
                            .map(|p| json!({"name": p.name, "vms": p.vm_glob, "target": p.target, "regions": p.regions, "rpo_seconds": p.rpo_seconds, "interval_seconds": p.interval_seconds, "cron": p.cron}))
                            .collect();
                        println!("{}", serde_json::Value::Array(list));
                    }
                    Output::Text => {
                        println!("{:<20} {:<16} {:<24} {:>8} {:>10}  TARGET", "NAME", "VMS", "REGIONS", "RPO", "INTERVAL");
                        for p in &policies {
                            let every = if p.cron.is_empty() { format!("{}s", p.interval_seconds) } else { p.cron.clone() };
                            let rpo = format!("{}s", p.rpo_seconds);
                            println!("{:<20} {:<16} {:<24} {:>8} {:>10}  {}", p.name, p.vm_glob, p.regions.join(","), rpo, every, p.target);
                        }
                    }
                }
            }
            PolicyCommand::Delete { name, url } => {
                DrServiceClient::new(channel(&url).await?).delete_policy(DeletePolicyRequest { name: name.clone() }).await.map_err(refused)?;
                println!("policy {name:?} deleted");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Runs `hyperexport dr status`: one row per VM and target region. Exits 0 when no VM is in
/// breach, 4 otherwise.
pub fn status(a: ListArgs) -> Result<ExitCode> {
    let rows = runtime()?.block_on(async {
        Ok::<_, anyhow::Error>(
            DrServiceClient::new(channel(&a.url).await?).status(DrStatusRequest {}).await.map_err(refused)?.into_inner().replicas,
        )
    })?;
    match a.output {
        Output::Json => {
            let list: Vec<_> = rows
                .iter()
                .map(|r| {
                    json!({"vm": r.vm, "target": r.region, "policy": r.policy, "point": r.point, "point_unix_ms": r.point_unix_ms,
                           "rpo_seconds": r.rpo_seconds, "rpo_target_seconds": r.rpo_target_seconds, "state": r.state,
                           "last_error": r.last_error, "last_attempt_unix_ms": r.last_attempt_unix_ms,
                           "last_rto_seconds": r.last_rto_seconds, "last_rto_gb_per_second": r.last_rto_gb_per_second,
                           "last_rto_unix_ms": r.last_rto_unix_ms})
                })
                .collect();
            print_json(&serde_json::Value::Array(list));
        }
        Output::Text => {
            println!(
                "{:<24} {:<12} {:<14} {:>10} {:>10}  {:<7} {:>9}  LAST ERROR",
                "VM", "TARGET", "NEWEST POINT", "RPO", "TARGET RPO", "STATE", "LAST RTO"
            );
            for r in &rows {
                let point = if r.point.is_empty() { "-".to_string() } else { r.point[..12.min(r.point.len())].to_string() };
                let (rpo, target) = (format!("{:.0}s", r.rpo_seconds), format!("{}s", r.rpo_target_seconds));
                let rto = if r.last_rto_unix_ms == 0 { "-".to_string() } else { format!("{:.1}s", r.last_rto_seconds) };
                println!(
                    "{:<24} {:<12} {:<14} {:>10} {:>10}  {:<7} {:>9}  {}",
                    r.vm, r.region, point, rpo, target, r.state, rto, r.last_error
                );
            }
        }
    }
    Ok(if rows.iter().any(|r| r.state == "breach") { ExitCode::from(4) } else { ExitCode::SUCCESS })
}
