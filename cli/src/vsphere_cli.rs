//! vSphere on the command line: how to reach a server (`--source vsphere://USER@HOST...` with the
//! password from a file or the environment, and how its certificate is trusted), and
//! `hyperexport vms --source vsphere://...`, the inventory read from the server itself.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::Args;
use hyperexport_agent::vsphere::http::{Trust, parse_thumbprint};
use hyperexport_agent::vsphere::inventory::{Filter, VsphereVm};
use hyperexport_agent::vsphere::{Connection, VsphereError, VsphereUrl};
use rustls::pki_types::pem::PemObject;
use serde_json::json;

use crate::Output;

/// The environment variable that may hold the vSphere password.
pub const PASSWORD_ENV: &str = "HYPEREXPORT_VSPHERE_PASSWORD";

/// How to log in to vSphere and trust its certificate.
#[derive(Debug, Args, Clone)]
pub struct VsphereAccess {
    /// File holding the vSphere user's password (else the environment variable
    /// HYPEREXPORT_VSPHERE_PASSWORD).
    #[arg(long, value_name = "FILE")]
    pub vsphere_password_file: Option<PathBuf>,
    /// Trust exactly the server certificate with this SHA-256 thumbprint (64 hex digits, `:`
    /// between bytes allowed).
    #[arg(long, value_name = "HEX", conflicts_with_all = ["vsphere_ca", "vsphere_insecure"])]
    pub vsphere_thumbprint: Option<String>,
    /// Trust server certificates signed by a CA in this PEM file.
    #[arg(long, value_name = "FILE", conflicts_with = "vsphere_insecure")]
    pub vsphere_ca: Option<PathBuf>,
    /// Do not check the server's certificate at all (labs and tests only).
    #[arg(long)]
    pub vsphere_insecure: bool,
}

impl VsphereAccess {
    /// The connection to the server `source` names.
    pub fn connection(&self, source: &str) -> Result<Connection> {
        let url = VsphereUrl::parse(source)?;
        let trust = match (&self.vsphere_thumbprint, &self.vsphere_ca, self.vsphere_insecure) {
            (Some(t), _, _) => Trust::Thumbprint(parse_thumbprint(t).map_err(|e| anyhow!("--vsphere-thumbprint: {e}"))?),
            (None, Some(ca), _) => {
                let certs = rustls::pki_types::CertificateDer::pem_file_iter(ca)
                    .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| anyhow!("--vsphere-ca {}: {e}", ca.display()))?;
                if certs.is_empty() {
                    anyhow::bail!("--vsphere-ca {}: no certificate in the file", ca.display());
                }
                Trust::Ca(certs)
            }
            (None, None, true) => Trust::Insecure,
            (None, None, false) => anyhow::bail!(
                "say how to trust the certificate of {}: --vsphere-thumbprint HEX, --vsphere-ca FILE, or --vsphere-insecure",
                url.host
            ),
        };
        Ok(Connection { url, password: self.password()?, trust: Some(trust), timeout: Duration::from_secs(30) })
    }

    fn password(&self) -> Result<String> {
        let password = match &self.vsphere_password_file {
            Some(file) => {
                let text =
                    std::fs::read_to_string(file).with_context(|| format!("reading the vSphere password file {}", file.display()))?;
                text.trim_end_matches(['\r', '\n']).to_string()
            }
            None => std::env::var(PASSWORD_ENV)
                .map_err(|_| anyhow!("no vSphere password: give --vsphere-password-file FILE or set {PASSWORD_ENV}"))?,
        };
        if password.is_empty() {
            anyhow::bail!("the vSphere password is empty");
        }
        Ok(password)
    }
}

/// `vms --source vsphere://...`: the server's VMs, read directly.
pub fn vms(source: &str, access: &VsphereAccess, filter: Filter, output: Output) -> Result<ExitCode> {
    let connection = access.connection(source)?;
    let vms = connection.inventory(&filter)?;
    match output {
        Output::Json => println!("{}", serde_json::Value::Array(vms.iter().map(vm_json).collect())),
        Output::Text => {
            println!("{:<24}  {:<20}  {:<9}  {:>4}  {:>8}  {:>5}  GUEST", "VM", "FOLDER", "POWER", "CPUS", "MEMORY", "DISKS");
            for vm in &vms {
                println!(
                    "{:<24}  {:<20}  {:<9}  {:>4}  {:>6}Mi  {:>5}  {}",
                    vm.name,
                    vm.folder,
                    vm.power_state,
                    vm.cpus,
                    vm.memory_mb,
                    vm.disks.len(),
                    vm.guest_os
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn vm_json(vm: &VsphereVm) -> serde_json::Value {
    json!({"name": vm.name, "provider": "vsphere", "id": vm.id, "folder": vm.folder, "power_state": vm.power_state,
        "guest_os": vm.guest_os, "cpus": vm.cpus, "memory_mb": vm.memory_mb, "disks": vm.disks, "networks": vm.networks})
}

/// A VM of a vSphere server.
#[derive(Debug, Args)]
pub struct VmOn {
    /// The server: vsphere://USER@HOST[:PORT].
    #[arg(long, value_name = "SOURCE")]
    pub source: String,
    /// The VM's name.
    #[arg(long)]
    pub vm: String,
    #[command(flatten)]
    pub access: VsphereAccess,
}

/// `snapshots`: a vSphere VM's snapshots.
#[derive(Debug, clap::Subcommand)]
pub enum SnapshotsCommand {
    /// The VM's snapshots as a tree.
    List {
        #[command(flatten)]
        on: VmOn,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Take a snapshot.
    Create {
        #[command(flatten)]
        on: VmOn,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Include the VM's memory.
        #[arg(long)]
        memory: bool,
        /// Quiesce the guest's file systems first (needs VMware Tools).
        #[arg(long)]
        quiesce: bool,
    },
    /// Put the VM back in the state of a snapshot.
    Revert {
        #[command(flatten)]
        on: VmOn,
        #[arg(long)]
        name: String,
    },
    /// Remove a snapshot (its children stay).
    Remove {
        #[command(flatten)]
        on: VmOn,
        #[arg(long)]
        name: String,
    },
    /// Remove the snapshots exports left behind (named hyperexport-...), of one VM or of all;
    /// run it while no export of those VMs runs.
    Cleanup {
        #[arg(long, value_name = "SOURCE")]
        source: String,
        /// Only this VM.
        #[arg(long)]
        vm: Option<String>,
        #[command(flatten)]
        access: VsphereAccess,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

/// Runs a `snapshots` command.
pub fn snapshots(command: SnapshotsCommand) -> Result<ExitCode> {
    use hyperexport_agent::vsphere::{inventory, snapshot};
    let open = |on: &VmOn| -> Result<_> {
        let connection = on.access.connection(&on.source)?;
        let mut session = connection.session()?;
        let vm = inventory::find(&mut session, &on.vm, &connection.url.datacenter)?;
        Ok((session, vm))
    };
    match command {
        SnapshotsCommand::List { on, output } => {
            let (mut session, vm) = open(&on)?;
            let tree = snapshot::tree(&mut session, &vm.moref())?;
            session.logout();
            match output {
                Output::Json => println!("{}", serde_json::to_string(&tree)?),
                Output::Text => print_tree(&tree, 0),
            }
        }
        SnapshotsCommand::Create { on, name, description, memory, quiesce } => {
            let (mut session, vm) = open(&on)?;
            let made = snapshot::create(&mut session, &vm.moref(), &name, &description, memory, quiesce)?;
            session.logout();
            println!("snapshot {name} ({}) of {}", made.id, vm.name);
        }
        SnapshotsCommand::Revert { on, name } => {
            let (session, vm) = open(&on)?;
            on_named(session, &vm, &name, snapshot::revert)?;
            println!("{} reverted to snapshot {name}", vm.name);
        }
        SnapshotsCommand::Remove { on, name } => {
            let (session, vm) = open(&on)?;
            on_named(session, &vm, &name, snapshot::remove)?;
            println!("snapshot {name} of {} removed", vm.name);
        }
        SnapshotsCommand::Cleanup { source, vm, access, output } => {
            let connection = access.connection(&source)?;
            let mut session = connection.session()?;
            let datacenter = &connection.url.datacenter;
            let vms = match &vm {
                Some(name) => vec![inventory::find(&mut session, name, datacenter)?],
                None => {
                    let folder = if datacenter.is_empty() { String::new() } else { format!("/{datacenter}") };
                    inventory::list(&mut session, &Filter { folder, ..Filter::default() })?
                }
            };
            let mut removed = Vec::new();
            for v in &vms {
                let tree = snapshot::tree(&mut session, &v.moref())?;
                for s in snapshot::flatten(&tree).into_iter().filter(|s| s.name.starts_with(snapshot::EXPORT_PREFIX)) {
                    snapshot::remove(&mut session, &s.moref())?;
                    removed.push(json!({"vm": v.name, "snapshot": s.name}));
                }
            }
            session.logout();
            match output {
                Output::Json => println!("{}", serde_json::Value::Array(removed)),
                Output::Text => println!("{} leftover export snapshots removed", removed.len()),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `act` on `vm`'s one snapshot named `name`, then logs out.
fn on_named(
    mut session: hyperexport_agent::vsphere::soap::Session,
    vm: &VsphereVm,
    name: &str,
    act: fn(&mut hyperexport_agent::vsphere::soap::Session, &hyperexport_agent::vsphere::soap::MoRef) -> Result<(), VsphereError>,
) -> Result<()> {
    use hyperexport_agent::vsphere::snapshot;
    let tree = snapshot::tree(&mut session, &vm.moref())?;
    act(&mut session, &snapshot::named(&tree, &vm.name, name)?.moref())?;
    session.logout();
    Ok(())
}

fn print_tree(nodes: &[hyperexport_agent::vsphere::snapshot::SnapshotNode], depth: usize) {
    for n in nodes {
        println!("{:indent$}{}  ({}, {})", "", n.name, n.id, n.created, indent = depth * 2);
        print_tree(&n.children, depth + 1);
    }
}
