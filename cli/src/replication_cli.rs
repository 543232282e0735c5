//! `hyperexport ca ...`, `hyperexport replica serve` and `hyperexport replicate`: the cluster CA
//! and replication of recovery points to other regions over QUIC.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use clap::{Args, Subcommand};
use hyperexport_agent::failover::failover;
use hyperexport_agent::replication::receiver::Receiver;
use hyperexport_agent::replication::sender::{ProgressFn, SendOptions, SendProgress, send_point};
use hyperexport_agent::replication::{pki, tls::NodeTls};
use hyperexport_shared::Repository;
use serde_json::json;

use crate::Output;
use crate::commands::{RepoArgs, RestoreTarget};
use crate::progress::print_json;
use crate::remote::{init_logs, runtime, shutdown_signal};

/// `hyperexport ca ...`
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the cluster CA in a folder (ca.pem, ca-key.pem, ca.json).
    Init {
        /// The folder (created if missing; must not hold a CA yet).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "HyperExport cluster CA")]
        name: String,
    },
    /// Issue a node certificate (ca.pem, node.pem, node-key.pem in --out) signed by the CA.
    Issue {
        /// The node's name: a DNS name or an IP address, also its first subject alternative name.
        name: String,
        /// The CA folder.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// Where to write the node's files.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Another DNS name or IP address the node is reached by (repeatable).
        #[arg(long = "san", value_name = "NAME")]
        sans: Vec<String>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
}

/// `hyperexport replica ...`
#[derive(Debug, Subcommand)]
pub enum ReplicaCommand {
    /// Receive replicas over QUIC: one replica repository per source repository under --root.
    Serve(ServeArgs),
}

/// Options of `replica serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// UDP address to listen on (port 0: any free port, printed).
    #[arg(long, default_value = "0.0.0.0:7443")]
    pub listen: SocketAddr,
    /// Folder of the replicas (one per source repository id).
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
    /// This node's TLS folder (from `hyperexport ca issue`).
    #[arg(long, value_name = "DIR")]
    pub tls: PathBuf,
    /// Serve Prometheus metrics on this address at /metrics (port 0: any free port, printed).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
}

/// `hyperexport dr ...`
#[derive(Debug, Subcommand)]
pub enum DrCommand {
    /// Restore a VM from the best replica: the newest point whose chunks are all there and
    /// verify, falling back to older points and other replicas; says what it chose.
    Failover(FailoverArgs),
    /// Replication policies the coordinator runs.
    #[command(subcommand)]
    Policy(crate::dr_cli::PolicyCommand),
    /// Each VM's RPO at each target region, and its last measured RTO (exit 4 when any is in breach).
    Status(crate::dr_cli::ListArgs),
    /// Measure the RTO: an agent of the target region restores the VM's newest complete point
    /// from its replicas into an isolated folder, verifies it and deletes it.
    TestFailover(crate::dr_cli::TestFailoverArgs),
}

/// Options of `dr failover`.
#[derive(Debug, Args)]
pub struct FailoverArgs {
    /// The VM.
    #[arg(long)]
    pub vm: String,
    /// A replica (repository folder) to restore from, here; repeat for several, most preferred
    /// first. Without it, the coordinator (--coordinator) picks the region with the newest point
    /// and its agent restores to --to on its host.
    #[arg(long = "from", value_name = "DIR")]
    pub from: Vec<PathBuf>,
    #[command(flatten)]
    pub url: crate::remote::CoordinatorUrl,
    #[command(flatten)]
    pub target: RestoreTarget,
    #[command(flatten)]
    pub key: crate::KeyArgs,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// Options of `replicate`.
#[derive(Debug, Args)]
pub struct ReplicateArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// The VM whose newest point is sent.
    #[arg(long, required_unless_present = "point")]
    pub vm: Option<String>,
    /// A point id or unique prefix instead of the VM's newest point.
    #[arg(long, conflicts_with = "vm")]
    pub point: Option<String>,
    /// The receiver's UDP address.
    #[arg(long, value_name = "ADDR")]
    pub to: SocketAddr,
    /// The name the receiver's certificate must carry [default: the address's IP]
    #[arg(long)]
    pub server_name: Option<String>,
    /// This node's TLS folder (from `hyperexport ca issue`).
    #[arg(long, value_name = "DIR")]
    pub tls: PathBuf,
    /// Once the point is published there, the receiver prunes the VM's points by these rules
    /// (default: keep everything).
    #[command(flatten)]
    pub keep: crate::prune_cli::KeepArgs,
    /// QUIC streams carrying chunks at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub streams: u16,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// Runs `hyperexport ca ...`.
pub fn ca(command: CaCommand) -> Result<ExitCode> {
    match command {
        CaCommand::Init { dir, name } => {
            pki::init_ca(&dir, &name)?;
            println!("created CA {name:?} in {}; keep {} secret", dir.display(), dir.join(pki::CA_KEY).display());
        }
        CaCommand::Issue { name, ca, out, sans, days } => {
            pki::issue(&ca, &name, &sans, days, &out)?;
            println!("issued {name:?} into {} (valid {days} days)", out.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `hyperexport replica serve` until SIGINT or SIGTERM.
pub fn replica(command: ReplicaCommand) -> Result<ExitCode> {
    let ReplicaCommand::Serve(a) = command;
    let _logs = init_logs();
    let tls = NodeTls::load(&a.tls)?;
    runtime()?.block_on(async {
        let receiver = Receiver::bind(a.listen, a.root.clone(), &tls)?;
        println!("listening on {}", receiver.local_addr());
        if let Some(listen) = &a.metrics_listen {
            let metrics = crate::telemetry::serve(listen).await?;
            hyperexport_agent::metrics::describe();
            println!("metrics on {metrics}");
        }
        std::io::stdout().flush()?;
        tokio::select! {
            () = receiver.run() => Err(anyhow!("the replica receiver stopped")),
            () = shutdown_signal() => {
                tracing::info!("replica receiver stopping");
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// Runs `hyperexport replicate`.
pub fn replicate(a: ReplicateArgs) -> Result<ExitCode> {
    let repo = Arc::new(a.repo.open()?);
    let point = match (&a.point, &a.vm) {
        (Some(spec), _) => repo.resolve_point(spec)?,
        (None, Some(vm)) => repo.latest_point_of(vm)?.ok_or_else(|| anyhow!("the repository holds no point of VM {vm:?}"))?,
        (None, None) => unreachable!("clap requires --vm or --point"),
    };
    let tls = NodeTls::load(&a.tls)?;
    let progress: Option<ProgressFn> = (a.output == Output::Json).then(|| {
        Arc::new(|p: SendProgress| print_json(&json!({"event": "progress", "operation": "replicate", "progress": p}))) as ProgressFn
    });
    let server_name = a.server_name.clone().unwrap_or_else(|| a.to.ip().to_string());
    let options = SendOptions { streams: a.streams as usize, server_name, progress, retention: a.keep.retention(), throttle: None };
    let report = runtime()?.block_on(send_point(repo, point, a.to, &tls, &options)).with_context(|| format!("replicating to {}", a.to))?;
    match a.output {
        Output::Json => print_json(&json!({"event": "result", "operation": "replicate", "result": report})),
        Output::Text => println!(
            "replicated point {} of {} to {}: {} of {} chunks sent ({} stored bytes), {} bytes on the wire, {:.2} s",
            report.point, report.vm, a.to, report.chunks_sent, report.chunks, report.chunk_bytes_sent, report.wire_bytes, report.seconds
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `hyperexport dr ...`.
pub fn dr(command: DrCommand) -> Result<ExitCode> {
    let a = match command {
        DrCommand::Failover(a) => a,
        DrCommand::Policy(c) => return crate::dr_cli::policy(c),
        DrCommand::Status(a) => return crate::dr_cli::status(a),
        DrCommand::TestFailover(a) => return crate::dr_cli::test_failover(a),
    };
    if a.from.is_empty() {
        return crate::dr_cli::failover(&a.vm, &a.target.to, &a.url, a.output);
    }
    let secret = crate::secrets::from_args(&a.key)?;
    let mut replicas = Vec::new();
    for folder in &a.from {
        let repo = Repository::open(folder, secret.as_ref()).with_context(|| format!("opening replica {}", folder.display()))?;
        replicas.push((folder.clone(), repo));
    }
    let progress = crate::commands::progress_for(a.output, "failover");
    let report = failover(&a.vm, &replicas, &a.target.to, &a.target.options(), progress.as_ref())?;
    drop(progress);
    match a.output {
        Output::Json => print_json(&json!({"event": "result", "operation": "failover", "result": report})),
        Output::Text => {
            for s in &report.skipped {
                println!("skipped {} point {} ({}): {}", s.replica.display(), s.point, s.time, s.reason);
            }
            println!(
                "restored {:?} from {} point {} ({}) to {} in {:.2} s ({:.3} GB/s)",
                report.vm,
                report.replica.display(),
                report.point,
                report.point_time,
                a.target.to.display(),
                report.rto_seconds,
                report.gb_per_second
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
