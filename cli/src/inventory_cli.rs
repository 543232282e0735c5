//! `hyperexport vms`: the VMs of all live agents (from the coordinator), or of one vSphere
//! server read directly.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use hyperexport_proto::v1::ListVmsRequest;
use hyperexport_proto::v1::inventory_service_client::InventoryServiceClient;
use serde_json::json;

use crate::Output;
use crate::remote::{CoordinatorUrl, channel, refused, runtime};

/// `vms`: the inventory across agents, or of one vSphere server read directly.
#[derive(Debug, Args)]
pub struct VmsArgs {
    #[command(flatten)]
    pub url: CoordinatorUrl,
    /// Read the inventory from this vSphere server instead of the agents
    /// (vsphere://USER@HOST[:PORT][/DATACENTER]), with each VM's folder, guest OS, CPUs, memory,
    /// disks and networks.
    #[arg(long, value_name = "SOURCE")]
    pub source: Option<String>,
    /// With --source: only VMs in this inventory folder or below (`/DC0/vm/web`).
    #[arg(long, value_name = "PATH", default_value = "", requires = "source")]
    pub folder: String,
    #[command(flatten)]
    pub vsphere: crate::vsphere_cli::VsphereAccess,
    /// Shell-style pattern on the VM name (`*`, `?`).
    #[arg(long, value_name = "GLOB", default_value = "")]
    pub name: String,
    #[arg(long, default_value = "")]
    pub provider: String,
    #[arg(long, default_value = "")]
    pub region: String,
    /// on, off, suspended or unknown.
    #[arg(long, default_value = "")]
    pub power_state: String,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// Lists the VMs of all live agents.
pub fn vms(a: &VmsArgs) -> Result<ExitCode> {
    if let Some(source) = &a.source {
        let filter = hyperexport_agent::vsphere::inventory::Filter {
            name_glob: a.name.clone(),
            folder: a.folder.clone(),
            power_state: a.power_state.clone(),
        };
        return crate::vsphere_cli::vms(source, &a.vsphere, filter, a.output);
    }
    runtime()?.block_on(async {
        let mut client = InventoryServiceClient::new(channel(&a.url).await?);
        let req = ListVmsRequest { name_glob: a.name.clone(), provider: a.provider.clone(), region: a.region.clone(), power_state: a.power_state.clone() };
        let vms = client.list_vms(req).await.map_err(refused)?.into_inner().vms;
        match a.output {
            Output::Json => {
                let list: Vec<_> = vms
                    .iter()
                    .map(|l| {
                        let vm = l.vm.clone().unwrap_or_default();
                        json!({"name": vm.name, "provider": vm.provider, "kind": vm.kind, "disks": vm.disks, "power_state": vm.power_state, "agent": l.agent_id, "region": l.region, "site": l.site})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            }
            Output::Text => {
                println!("{:<32}  {:<8}  {:<6}  {:>5}  {:<12}  AGENT", "VM", "PROVIDER", "KIND", "DISKS", "REGION");
                for l in &vms {
                    let vm = l.vm.clone().unwrap_or_default();
                    println!("{:<32}  {:<8}  {:<6}  {:>5}  {:<12}  {}", vm.name, vm.provider, vm.kind, vm.disks, l.region, l.agent_id);
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
