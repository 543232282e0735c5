//! `hyperexport`: export VMs into a deduplicated, encrypted repository, verify and restore them.

mod bandwidth_cli;
mod commands;
mod demo;
mod demo_cluster;
mod dr_cli;
mod inventory_cli;
mod jobs_cli;
mod load;
mod progress;
mod prune_cli;
mod remote;
mod replication_cli;
mod sample;
mod secrets;
mod store_cli;
mod submit_load;
mod telemetry;
mod vsphere_cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Output style of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable text and progress bars.
    Text,
    /// JSON: progress events and results as JSON lines (`points`: one JSON array).
    Json,
}

/// How a repository is unlocked (or created).
#[derive(Debug, Clone, Args)]
pub struct KeyArgs {
    /// File whose first line is the repository password (also HYPEREXPORT_PASSWORD_FILE).
    #[arg(long, value_name = "FILE", conflicts_with = "key_file")]
    pub password_file: Option<PathBuf>,
    /// Key file (at least 32 bytes, e.g. `head -c 32 /dev/urandom > key`) instead of a password.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Parser)]
#[command(
    name = "hyperexport",
    version,
    about = "Export virtual machines into a verifiable, deduplicated, encrypted repository and restore them bit for bit"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Export a VM (a folder with .ovf or .vmx and its disks, or one disk image) as a new recovery point.
    Export(commands::ExportArgs),
    /// List the recovery points in a repository.
    Points(commands::PointsArgs),
    /// Check a point (or all points): every chunk's tag, decompression and id, and each disk's SHA-256.
    Verify(commands::VerifyArgs),
    /// Restore a point as raw, qcow2 or vmdk images, an OVF folder or an OVA.
    Restore(commands::RestoreArgs),
    /// Remove points by retention rules (keep-last/daily/weekly/monthly) and the chunks no kept
    /// point needs; works on replicas without a password.
    Prune(prune_cli::PruneArgs),
    /// Remove what no point needs, keeping every point: chunks left by an interrupted export,
    /// lock objects of holders that are gone; works without a password.
    Cleanup(prune_cli::CleanupArgs),
    /// Manage the repository's keys.
    #[command(subcommand)]
    Key(commands::KeyCommand),
    /// Run a coordinator: the export job API with durable state; shards tasks across agents.
    Coordinator(remote::CoordinatorArgs),
    /// Run an agent: attaches to the coordinator, reports the VMs of its source and runs tasks.
    Agent(remote::AgentArgs),
    /// List the VMs of all live agents.
    Vms(inventory_cli::VmsArgs),
    /// List the coordinator's jobs.
    Jobs(remote::JobArgs),
    /// Follow a job until it finishes (exit 0 only when it succeeded).
    Watch {
        /// Job id.
        job: String,
        #[command(flatten)]
        args: remote::JobArgs,
    },
    /// Cancel a job that has not finished.
    Cancel {
        /// Job id.
        job: String,
        #[command(flatten)]
        args: remote::JobArgs,
    },
    /// The cluster CA: create it, issue node certificates (mutual TLS between all processes).
    #[command(subcommand)]
    Ca(replication_cli::CaCommand),
    /// Keep replicas of other regions' repositories (a QUIC receiver).
    #[command(subcommand)]
    Replica(replication_cli::ReplicaCommand),
    /// Send a recovery point, and the chunks the receiver lacks, to a replica receiver.
    Replicate(replication_cli::ReplicateArgs),
    /// Disaster recovery: fail a VM over from its replicas.
    #[command(subcommand)]
    Dr(replication_cli::DrCommand),
    /// The coordinator's store: move an embedded store into etcd.
    #[command(subcommand)]
    Store(store_cli::StoreCommand),
    /// Bandwidth budgets: caps per cluster, region and site, QoS classes, timetables.
    #[command(subcommand)]
    Bandwidth(bandwidth_cli::BandwidthCommand),
    /// A vSphere VM's snapshots: list as a tree, create, revert, remove, and clean up those
    /// exports left behind.
    #[command(subcommand)]
    Snapshots(vsphere_cli::SnapshotsCommand),
    /// Build a sample VM, export it twice with a change between, verify, restore, and print a summary.
    Demo(demo::DemoArgs),
    /// Tools for benchmarks and tests: make and mutate sample images.
    #[command(subcommand, hide = true)]
    Dev(sample::DevCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Export(a) => commands::export(a),
        Command::Points(a) => commands::points(a),
        Command::Verify(a) => commands::verify(a),
        Command::Restore(a) => commands::restore(a),
        Command::Key(c) => commands::key(c),
        Command::Prune(a) => prune_cli::run(a),
        Command::Cleanup(a) => prune_cli::run_cleanup(a),
        Command::Coordinator(a) => remote::coordinator(&a),
        Command::Agent(a) => remote::agent(&a),
        Command::Vms(a) => inventory_cli::vms(&a),
        Command::Jobs(a) => jobs_cli::jobs(&a),
        Command::Watch { job, args } => jobs_cli::watch(&args, &job),
        Command::Cancel { job, args } => jobs_cli::cancel(&args, &job),
        Command::Ca(c) => replication_cli::ca(c),
        Command::Replica(c) => replication_cli::replica(c),
        Command::Replicate(a) => replication_cli::replicate(a),
        Command::Dr(c) => replication_cli::dr(c),
        Command::Bandwidth(c) => bandwidth_cli::run(c),
        Command::Snapshots(c) => vsphere_cli::snapshots(c),
        Command::Store(c) => store_cli::run(c),
        Command::Demo(a) => demo::run(a),
        Command::Dev(c) => sample::run(c),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
