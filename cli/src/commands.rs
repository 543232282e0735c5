//! The repository commands: export, points, verify, restore, key.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use hyperexport_agent::export::{ExportOptions, ExportReport, TestFaults};
use hyperexport_agent::progress::Progress;
use hyperexport_agent::repair::{self, RepairSource};
use hyperexport_agent::replication::tls::NodeTls;
use hyperexport_agent::restore::{RestoreFormat, RestoreOptions};
use hyperexport_agent::{export as exporter, restore as restorer, source, storage, verify as verifier};
use hyperexport_shared::chunk::validate_chunk_size;
use hyperexport_shared::compress::Compression;
use hyperexport_shared::keys::Secret;
use hyperexport_shared::repo::InitOptions;
use hyperexport_shared::units::{format_bytes, parse_size};
use hyperexport_shared::{Repository, chunk};
use serde_json::json;

use crate::progress::{Bars, JsonLines, Quiet, print_json};
use crate::{KeyArgs, Output, secrets};

/// Exit code of `verify` when a point has missing or corrupt data.
pub const EXIT_VERIFY_FAILED: u8 = 3;

#[derive(Debug, Args)]
pub struct RepoArgs {
    /// The repository: a folder, s3://BUCKET/PREFIX, azure://CONTAINER/PREFIX, gs://BUCKET/PREFIX
    /// or sftp://USER@HOST/PATH (docs/STORAGE.md).
    #[arg(long, value_name = "REPO")]
    pub repo: String,
    #[command(flatten)]
    pub key: KeyArgs,
}

impl RepoArgs {
    pub(crate) fn open(&self) -> Result<Repository> {
        let secret = secrets::from_args(&self.key)?;
        Ok(Repository::open_in(storage::open(&self.repo)?, secret.as_ref())?)
    }
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A VM folder (with one .ovf or .vmx), an .ovf, .vmx or .ova file, or a disk image.
    #[arg(required_unless_present = "vm", conflicts_with = "vm")]
    pub source: Option<PathBuf>,
    /// The repository (local export): a folder, or s3://, azure://, gs://, sftp:// (docs/STORAGE.md).
    #[arg(long, value_name = "REPO", required_unless_present = "vm", conflicts_with = "vm")]
    pub repo: Option<String>,
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(flatten)]
    pub remote: crate::remote::SubmitArgs,
    /// Store chunks unencrypted (only when creating a repository).
    #[arg(long)]
    pub no_encryption: bool,
    /// Compression of new chunks: zstd[:LEVEL], lz4 or none [default: the repository's, zstd:1]
    #[arg(long, value_name = "ALGO")]
    pub compression: Option<Compression>,
    /// Chunk size, a power of two from 64K to 16M [default: the repository's, 4M]
    #[arg(long, value_name = "SIZE")]
    pub chunk_size: Option<String>,
    /// Worker threads [default: the number of CPUs plus one]
    #[arg(long)]
    pub threads: Option<usize>,
    /// Chunks uploaded at once to a repository in an object store or over SFTP (it then runs
    /// this many workers, each with one chunk in flight).
    #[arg(long, default_value_t = hyperexport_agent::export::DEFAULT_UPLOAD_CONCURRENCY as u64, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub upload_concurrency: u64,
    /// Seconds to wait for another writer to release the repository.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub lock_wait: u64,
    /// Folder for images converted from qcow2/vmdk/vhd(x) [default: the system temp folder]
    #[arg(long, value_name = "DIR")]
    pub temp_dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// A limiter of a local export's reads at `--bwlimit RATE[:BURST]`.
fn local_throttle(bwlimit: Option<&str>) -> Result<Option<hyperexport_agent::bandwidth::Throttle>> {
    let Some(text) = bwlimit else { return Ok(None) };
    let (rate, burst) = crate::bandwidth_cli::parse_bwlimit(text)?;
    let limiter = hyperexport_agent::bandwidth::Limiter::new();
    let job = "local".to_string();
    limiter.apply(&hyperexport_proto::v1::Rates {
        agent_bps: rate,
        jobs: vec![hyperexport_proto::v1::JobRate { job_id: job.clone(), bps: rate, burst, class: String::new() }],
        counts: "reads".into(),
        adaptive: false,
    });
    Ok(Some(hyperexport_agent::bandwidth::Throttle { limiter, job }))
}

#[derive(Debug, Args)]
pub struct PointsArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Point id, unique id prefix, or `latest` [default: every point]
    pub point: Option<String>,
    /// Only check that every chunk is present.
    #[arg(long)]
    pub quick: bool,
    /// Replace missing or corrupt chunks by good copies from --from, then verify again.
    #[arg(long, requires = "from")]
    pub repair: bool,
    /// Where copies come from, tried in order: a replica folder, or quic://HOST:PORT of a
    /// replica receiver (needs --tls) (repeatable).
    #[arg(long, value_name = "SOURCE", requires = "repair")]
    pub from: Vec<String>,
    /// This node's TLS folder, for quic:// sources.
    #[arg(long, value_name = "DIR")]
    pub tls: Option<PathBuf>,
    #[arg(long)]
    pub threads: Option<usize>,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Point id, unique id prefix, or `latest`.
    pub point: String,
    #[command(flatten)]
    pub target: RestoreTarget,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Replace the password or key file that unlocks the repository; data is not re-encrypted.
    Passwd {
        #[command(flatten)]
        repo: RepoArgs,
        /// File whose first line is the new password.
        #[arg(long, value_name = "FILE", conflicts_with = "new_key_file", required_unless_present = "new_key_file")]
        new_password_file: Option<PathBuf>,
        /// New key file.
        #[arg(long, value_name = "FILE")]
        new_key_file: Option<PathBuf>,
    },
}

/// The progress display for an operation.
pub fn progress_for(output: Output, operation: &'static str) -> Box<dyn Progress> {
    match output {
        Output::Json => Box::new(JsonLines::new(operation)),
        Output::Text if std::io::stderr().is_terminal() => Box::new(Bars::new(operation)),
        Output::Text => Box::new(Quiet),
    }
}

/// Worker threads: as asked, else one per CPU plus one, so a CPU stays busy while a worker
/// waits for a direct write to reach the disk.
pub(crate) fn threads(n: Option<usize>) -> usize {
    n.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()) + 1).max(1)
}

/// Checks the arguments for creating a repository, before anything is read or written.
fn init_options(
    location: &str,
    secret: Option<Secret>,
    no_encryption: bool,
    chunk_size: Option<u32>,
    compression: Option<Compression>,
) -> Result<InitOptions> {
    match (&secret, no_encryption) {
        (Some(_), true) => bail!("--no-encryption conflicts with the password or key file given (flag or HYPEREXPORT_PASSWORD*)"),
        (None, false) => bail!(
            "no repository at {location} yet, and no password to create one: give --password-file, --key-file, HYPEREXPORT_PASSWORD(_FILE), or --no-encryption"
        ),
        _ => {}
    }
    Ok(InitOptions {
        chunk_size: chunk_size.unwrap_or(chunk::DEFAULT_CHUNK_SIZE),
        compression: compression.unwrap_or(Compression::Zstd(hyperexport_shared::compress::DEFAULT_ZSTD_LEVEL)),
        secret,
    })
}

pub fn export(a: ExportArgs) -> Result<ExitCode> {
    if !a.remote.vm.is_empty() {
        let local_only = [
            ("--password-file", a.key.password_file.is_some()),
            ("--key-file", a.key.key_file.is_some()),
            ("--no-encryption", a.no_encryption),
            ("--compression", a.compression.is_some()),
            ("--chunk-size", a.chunk_size.is_some()),
            ("--threads", a.threads.is_some()),
            ("--temp-dir", a.temp_dir.is_some()),
        ];
        if let Some((flag, _)) = local_only.iter().find(|(_, given)| *given) {
            bail!("{flag} applies to local exports (SOURCE --repo REPO), not to jobs submitted with --vm");
        }
        return crate::jobs_cli::submit(&a.remote, a.output);
    }
    let chunk_size =
        a.chunk_size.as_deref().map(|s| parse_size(s).and_then(validate_chunk_size)).transpose().map_err(anyhow::Error::msg)?;
    let (Some(source), Some(path)) = (&a.source, &a.repo) else {
        bail!("a local export needs SOURCE and --repo (or --vm, --to and --coordinator to submit a job)");
    };
    let secret = secrets::from_args(&a.key)?;
    // An existing repository is unlocked before the source is touched (a wrong password fails
    // fast); a new one is created only once the source has opened (bad input creates nothing).
    let store = storage::open(path)?;
    let target = if Repository::exists_in(store.as_ref())? {
        let repo = Repository::open_in(store.clone(), secret.as_ref())?;
        if a.no_encryption && repo.keys().encrypts() {
            bail!("repository {path} is encrypted; --no-encryption only applies when creating one");
        }
        Ok(repo)
    } else {
        Err(init_options(path, secret.clone(), a.no_encryption, chunk_size, a.compression)?)
    };
    let vm = source::open(source, a.temp_dir.as_deref())?;
    let progress = progress_for(a.output, "export");
    let repo = match target {
        Ok(repo) => repo,
        Err(opts) => match Repository::init_in(store.clone(), opts) {
            Ok(repo) => {
                progress.note(&format!(
                    "created repository {} ({})",
                    repo.location(),
                    if repo.keys().encrypts() { "AES-256-GCM" } else { "not encrypted" }
                ));
                repo
            }
            // Another export created it meanwhile (its config won the create-if-absent).
            Err(e) if Repository::exists_in(store.as_ref())? => {
                tracing::debug!(error = %e, "repository created by another process meanwhile");
                Repository::open_in(store, secret.as_ref())?
            }
            Err(e) => return Err(e.into()),
        },
    };
    let compression: Compression = match a.compression {
        Some(c) => c,
        None => repo.config().compression.parse().map_err(anyhow::Error::msg).context("repository config compression")?,
    };
    let opts = ExportOptions {
        chunk_size: chunk_size.unwrap_or(repo.config().chunk_size),
        compression,
        threads: threads(a.threads),
        upload_concurrency: a.upload_concurrency as usize,
        lock_wait: Duration::from_secs(a.lock_wait),
        faults: TestFaults::from_env(),
        throttle: local_throttle(a.remote.bwlimit.as_deref())?,
    };
    let report = exporter::export(&Arc::new(repo), &Arc::new(vm), &opts, progress.as_ref())?;
    drop(progress);
    match a.output {
        Output::Json => print_json(&json!({"event": "result", "operation": "export", "result": report})),
        Output::Text => print_export(&report),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_export(r: &ExportReport) {
    let t = &r.total;
    println!(
        "point {} of VM {:?}{}",
        r.point,
        r.vm,
        r.parent.as_ref().map(|p| format!(" (incremental from {})", &p[..12.min(p.len())])).unwrap_or_default()
    );
    println!(
        "  disks {}  size {}  read {}  holes/zeros {}",
        r.disks.len(),
        format_bytes(t.size),
        format_bytes(t.bytes_read),
        format_bytes(t.hole_bytes)
    );
    println!(
        "  new {} in {} chunks, stored as {}  reused {} in {} chunks",
        format_bytes(t.new_bytes),
        t.new_chunks,
        format_bytes(t.stored_bytes),
        format_bytes(t.reused_bytes),
        t.reused_chunks
    );
    if t.found_chunks > 0 {
        println!(
            "  resumed: {} chunks ({}) were already in the repository and were checked, not written again",
            t.found_chunks,
            format_bytes(t.found_bytes)
        );
    }
    if t.repaired_chunks > 0 {
        println!("  repaired: {} damaged chunks found in the repository were written again", t.repaired_chunks);
    }
    println!("  {:.2} s, {}/s", r.seconds, format_bytes((t.size as f64 / r.seconds.max(1e-9)) as u64));
}

pub fn points(a: PointsArgs) -> Result<ExitCode> {
    let repo = a.repo.open()?;
    let points = repo.list_points()?;
    match a.output {
        Output::Json => {
            let list: Vec<_> = points
                .iter()
                .map(|p| {
                    json!({
                        "id": p.id, "vm": p.vm, "time": p.time, "parent": p.parent, "source": p.source, "vm_info": p.vm_info,
                        "disks": p.disks.iter().map(|d| json!({
                            "name": d.name, "size": d.size, "sha256": d.sha256, "chunk_size": d.chunk_size,
                            "chunks": d.chunks.len(), "holes": d.chunks.iter().filter(|c| c.is_none()).count(),
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            println!("{}", serde_json::Value::Array(list));
        }
        Output::Text => {
            println!("{:<12}  {:<24}  {:<24}  {:>5}  {:>12}", "ID", "VM", "TIME", "DISKS", "SIZE");
            for p in &points {
                let size: u64 = p.disks.iter().map(|d| d.size).sum();
                println!("{:<12}  {:<24}  {:<24}  {:>5}  {:>12}", &p.id[..12], p.vm, p.time, p.disks.len(), format_bytes(size));
            }
            println!("{} points", points.len());
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn verify(a: VerifyArgs) -> Result<ExitCode> {
    let repo = a.repo.open()?;
    let mut failed = 0;
    let points = match &a.point {
        Some(spec) => vec![repo.resolve_point(spec)?],
        // Every point: a damaged point file is one failure among the others, not the end.
        None => repo
            .scan_points(None)?
            .into_iter()
            .filter_map(|p| {
                p.inspect_err(|e| {
                    failed += 1;
                    eprintln!("error: {e}");
                    if a.output == Output::Json {
                        print_json(&json!({"event": "error", "operation": "verify", "message": e.to_string()}));
                    }
                })
                .ok()
            })
            .collect(),
    };
    let total = points.len() + failed;
    let sources = a.from.iter().map(|s| repair_source(s)).collect::<Result<Vec<_>>>()?;
    let tls = a.tls.as_deref().map(NodeTls::load).transpose()?;
    for point in &points {
        let progress = progress_for(a.output, "verify");
        let mut report = verifier::verify(&repo, point, a.quick, threads(a.threads), progress.as_ref())?;
        drop(progress);
        if a.repair && !report.problems.is_empty() {
            print_verify(a.output, &report);
            let repaired = repair::repair(&repo, point, &report.problems, &sources, tls.as_ref())?;
            match a.output {
                Output::Json => print_json(&json!({"event": "result", "operation": "repair", "result": repaired})),
                Output::Text => {
                    for (chunk, source) in &repaired.repaired {
                        println!("chunk {chunk}: repaired from {source}");
                    }
                    for chunk in &repaired.unrepaired {
                        println!("chunk {chunk}: no good copy in any source");
                    }
                    for e in &repaired.source_errors {
                        println!("source error: {e}");
                    }
                }
            }
            let progress = progress_for(a.output, "verify");
            report = verifier::verify(&repo, point, a.quick, threads(a.threads), progress.as_ref())?;
        }
        if !report.ok {
            failed += 1;
        }
        print_verify(a.output, &report);
    }
    if a.output == Output::Text && total != 1 {
        println!("{total} points checked, {failed} failed");
    }
    Ok(if failed > 0 { ExitCode::from(EXIT_VERIFY_FAILED) } else { ExitCode::SUCCESS })
}

/// `verify --from`: a folder, or `quic://HOST:PORT`.
fn repair_source(spec: &str) -> Result<RepairSource> {
    Ok(match spec.strip_prefix("quic://") {
        Some(addr) => {
            let addr: std::net::SocketAddr = addr.parse().map_err(|e| anyhow::anyhow!("--from {spec:?}: not quic://IP:PORT ({e})"))?;
            RepairSource::Receiver { addr, server_name: addr.ip().to_string() }
        }
        None => RepairSource::Folder(PathBuf::from(spec)),
    })
}

/// Prints one point's verify report.
fn print_verify(output: Output, report: &verifier::VerifyReport) {
    match output {
        Output::Json => print_json(&json!({"event": "result", "operation": "verify", "result": report})),
        Output::Text => {
            for p in &report.problems {
                println!(
                    "point {} disk {} offset {} (chunk #{}, {}): {}",
                    &report.point[..12],
                    p.disk,
                    p.offset,
                    p.index,
                    p.chunk,
                    p.problem
                );
            }
            for d in &report.digest_mismatches {
                println!("point {} disk {}: SHA-256 does not match the point", &report.point[..12], d);
            }
            let verdict = if report.ok { "ok" } else { "FAILED" };
            println!(
                "point {} of {:?}: {} ({} check, {} chunks, {})",
                &report.point[..12],
                report.vm,
                verdict,
                report.mode,
                report.chunks_checked,
                format_bytes(report.bytes_checked)
            );
        }
    }
}

/// Where and how a point is restored (`restore`, `dr failover`).
#[derive(Debug, Args)]
pub struct RestoreTarget {
    /// Output file (one disk) or folder (several disks, ovf); the .ova file for ova, which may
    /// also be an object: s3://BUCKET/KEY.ova, azure://..., gs://... (streamed, no temp files).
    #[arg(long, value_name = "PATH")]
    pub to: PathBuf,
    /// raw, qcow2, vmdk (through qemu-img), ovf or ova.
    #[arg(long, default_value = "raw")]
    pub format: RestoreFormat,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
    #[arg(long)]
    pub threads: Option<usize>,
}

impl RestoreTarget {
    /// The restore options these flags ask for.
    pub(crate) fn options(&self) -> RestoreOptions {
        RestoreOptions { format: self.format, force: self.force, threads: threads(self.threads) }
    }
}

pub fn restore(a: RestoreArgs) -> Result<ExitCode> {
    let repo = a.repo.open()?;
    let point = repo.resolve_point(&a.point)?;
    let progress = progress_for(a.output, "restore");
    let to = a.target.to.to_string_lossy().into_owned();
    let report = if storage::is_url(&to) {
        if !matches!(a.target.format, RestoreFormat::Ova) || to.starts_with("sftp://") {
            bail!("--to {to}: only an OVA (--format ova) can be restored to an object store (s3://, azure://, gs://) so far");
        }
        restorer::restore_ova_to_store(&repo, &point, &to, a.target.options().threads, progress.as_ref())?
    } else {
        restorer::restore(&repo, &point, &a.target.to, &a.target.options(), progress.as_ref())?
    };
    drop(progress);
    match a.output {
        Output::Json => print_json(&json!({"event": "result", "operation": "restore", "result": report})),
        Output::Text => {
            for o in &report.outputs {
                println!("wrote {}", o.display());
            }
            println!(
                "restored point {} of {:?}: {} in {:.2} s, every chunk and disk digest verified",
                &report.point[..12],
                report.vm,
                format_bytes(report.bytes),
                report.seconds
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn key(c: KeyCommand) -> Result<ExitCode> {
    match c {
        KeyCommand::Passwd { repo, new_password_file, new_key_file } => {
            let current =
                secrets::from_args(&repo.key)?.ok_or_else(|| anyhow::anyhow!("give the current password or key file to change it"))?;
            let new = match (new_password_file, new_key_file) {
                (Some(p), _) => Secret::Password(secrets::read_password_file(&p)?),
                (None, Some(k)) => Secret::KeyFile(secrets::read_key_file(&k)?),
                (None, None) => bail!("give --new-password-file or --new-key-file"),
            };
            let mut r = Repository::open_in(storage::open(&repo.repo)?, Some(&current))?;
            r.change_secret(&current, &new)?;
            println!("key changed for repository {}; chunk data was not rewritten", r.location());
            Ok(ExitCode::SUCCESS)
        }
    }
}
