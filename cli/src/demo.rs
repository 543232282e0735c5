//! `hyperexport demo`: a coordinator and two agents in two regions on loopback export two sample
//! VMs, then one of them again after a 1% change; the incremental point is verified and restored
//! bit for bit; a summary table and checks close it.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use hyperexport_agent::restore::{RestoreFormat, RestoreOptions, sha256_file};
use hyperexport_agent::{restore, verify};
use hyperexport_proto::v1::{Job, JobState, SubmitRequest};
use hyperexport_shared::keys::Secret;
use hyperexport_shared::ovf::{self, OutputDisk};
use hyperexport_shared::point::VmInfo;
use hyperexport_shared::repo::Repository;
use hyperexport_shared::units::{format_bytes, parse_size};

use crate::Output;
use crate::commands::progress_for;
use crate::demo_cluster::Cluster;
use crate::jobs_cli::follow;
use crate::remote::{CoordinatorUrl, connect, refused, runtime};
use crate::sample::{Layout, make_image, mutate};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Size of the sample VM's disk.
    #[arg(long, default_value = "3G")]
    size: String,
    /// Keep the sample VM, repository and restored disk in this folder (default: a temp folder, removed).
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
}

struct Row {
    step: String,
    read: u64,
    stored: u64,
    reused: u64,
    bytes: u64,
    seconds: f64,
}

/// The demo's repository password (the kept folder's `password` file holds it too).
const DEMO_PASSWORD: &str = "demo password";

/// A row for a whole job: its tasks' statistics summed, over the job's wall time.
fn job_row(step: &str, job: &Job, seconds: f64) -> Row {
    let mut row = Row { step: step.into(), read: 0, stored: 0, reused: 0, bytes: 0, seconds };
    for s in job.tasks.iter().filter_map(|t| t.stats.as_ref()) {
        row.read += s.bytes_read;
        row.stored += s.stored_bytes;
        row.reused += s.reused_bytes;
        row.bytes += s.size;
    }
    row
}

/// Submits a job and follows it with bars per disk; the final job and the seconds it took.
async fn run_job(url: &CoordinatorUrl, vms: &[&str], target: &str) -> Result<(Job, f64)> {
    let started = Instant::now();
    let request = SubmitRequest { vms: vms.iter().map(|v| v.to_string()).collect(), target: target.into(), ..Default::default() };
    let id = connect(url).await?.submit(request).await.map_err(refused)?.into_inner().job_id;
    println!("job {id}: {}", vms.join(", "));
    let job = follow(url, &id, Output::Text).await?.ok_or_else(|| anyhow!("the coordinator ended the watch of job {id} early"))?;
    if job.state() != JobState::Succeeded {
        bail!("job {id} ended {:?}: {}", job.state(), job.tasks.iter().map(|t| t.error.as_str()).collect::<Vec<_>>().join("; "));
    }
    Ok((job, started.elapsed().as_secs_f64()))
}

pub fn run(a: DemoArgs) -> Result<ExitCode> {
    let size = parse_size(&a.size).map_err(anyhow::Error::msg)?;
    let temp = tempfile::Builder::new().prefix("hyperexport-demo-").tempdir()?;
    let base = match &a.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => temp.path().to_path_buf(),
    };
    let (eu, us) = (base.join("eu"), base.join("us"));
    let (repo_dir, restored) = (base.join("repo"), base.join("restored-disk1.img"));
    let vm_dir = eu.join("demo-vm");
    std::fs::create_dir_all(&vm_dir)?;
    std::fs::create_dir_all(&us)?;
    let disk = vm_dir.join("demo-vm-disk1.img");
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) + 1;

    println!(
        "making two sample VMs: demo-vm in region eu ({} sparse disk with text, random and zero regions), db-vm in region us",
        format_bytes(size)
    );
    make_image(&disk, size, Layout::Demo, 42)?;
    let info =
        VmInfo { cpus: 2, memory_mib: 4096, guest_os: Some("Debian GNU/Linux 12 (64-bit)".into()), networks: vec!["VM Network".into()] };
    let descriptor = ovf::generate(
        "demo-vm",
        &info,
        &[OutputDisk { file_name: "demo-vm-disk1.img".into(), file_size: size, capacity: size, format: ovf::RAW_IMAGE }],
    );
    std::fs::write(vm_dir.join("demo-vm.ovf"), descriptor)?;
    let db_disk = us.join("db-vm.img");
    make_image(&db_disk, (size / 4).max(1 << 20), Layout::Demo, 7)?;
    let password = base.join("password");
    std::fs::write(&password, format!("{DEMO_PASSWORD}\n"))?;

    let mut cluster = Cluster::start(&base)?;
    cluster.add_agent("agent-eu", "eu", &eu, &password)?;
    cluster.add_agent("agent-us", "us", &us, &password)?;
    println!("coordinator on {}, agents in regions eu and us (logs in {})", cluster.addr, base.display());
    let url = CoordinatorUrl { coordinator: Some(cluster.addr.clone()), tls: None };
    let target = format!("file://{}", repo_dir.display());
    let rt = runtime()?;
    rt.block_on(cluster.wait_for_vms(2, Duration::from_secs(60)))?;

    let mut rows = Vec::new();
    let (first, seconds) = rt.block_on(run_job(&url, &["demo-vm", "db-vm"], &target))?;
    rows.push(job_row("export 2 VMs (full)", &first, seconds));
    let changed = mutate(&disk, 0.01, 7)?;
    println!("changed {} of demo-vm's disk (1% in 1 MiB runs)", format_bytes(changed));
    let (second, seconds) = rt.block_on(run_job(&url, &["demo-vm"], &target))?;
    rows.push(job_row("export demo-vm (1% changed)", &second, seconds));
    let (eu_agent, us_agent) = (cluster.agent_id("agent-eu")?, cluster.agent_id("agent-us")?);
    // The runtime holds the client connections: closed first, so that the coordinator stops at once.
    drop(rt);
    drop(cluster);

    let repo = Repository::open(&repo_dir, Some(&Secret::Password(DEMO_PASSWORD.as_bytes().to_vec())))?;
    let point = repo.resolve_point(&second.tasks[0].point)?;
    let started = Instant::now();
    let verified = verify::verify(&repo, &point, false, threads, progress_for(Output::Text, "verify").as_ref())?;
    rows.push(Row {
        step: "verify (full)".into(),
        read: verified.bytes_checked,
        stored: 0,
        reused: 0,
        bytes: size,
        seconds: started.elapsed().as_secs_f64(),
    });
    let ropts = RestoreOptions { format: RestoreFormat::Raw, force: true, threads };
    let restored_report = restore::restore(&repo, &point, &restored, &ropts, progress_for(Output::Text, "restore").as_ref())?;
    rows.push(Row { step: "restore (raw)".into(), read: 0, stored: 0, reused: 0, bytes: size, seconds: restored_report.seconds });

    let source_sha = sha256_file(&disk).context("hashing the source disk")?;
    let restored_sha = sha256_file(&restored).context("hashing the restored disk")?;
    let allocated = std::fs::metadata(&restored)?.blocks() * 512;
    let ran_on = |job: &Job, vm: &str| job.tasks.iter().find(|t| t.vm == vm).map(|t| t.agent.clone()).unwrap_or_default();
    let stats = second.tasks[0].stats.clone().unwrap_or_default();
    let data = stats.size - stats.hole_bytes;
    let checks = [
        ("each VM exported by the agent of its region", ran_on(&first, "demo-vm") == eu_agent && ran_on(&first, "db-vm") == us_agent),
        ("both jobs succeeded, one point per VM and job", first.state() == JobState::Succeeded && second.state() == JobState::Succeeded),
        ("full verify of the incremental point", verified.ok),
        ("restored disk SHA-256 equals the source's", source_sha == restored_sha && restored_sha == point.disks[0].sha256),
        ("restored disk is sparse (holes not written)", allocated < size),
        (
            "incremental export reused at least 90% of the data",
            stats.reused_bytes * 10 >= data * 9 && point.parent.as_deref() == Some(first.tasks[0].point.as_str()),
        ),
    ];
    println!();
    println!("{:<30} {:>12} {:>12} {:>12} {:>8} {:>14}", "step", "read", "stored", "reused", "time", "throughput");
    for r in &rows {
        let rate = format!("{}/s", format_bytes((r.bytes as f64 / r.seconds.max(1e-9)) as u64));
        println!(
            "{:<30} {:>12} {:>12} {:>12} {:>7.2}s {:>14}",
            r.step,
            format_bytes(r.read),
            format_bytes(r.stored),
            format_bytes(r.reused),
            r.seconds,
            rate
        );
    }
    println!();
    for (what, ok) in &checks {
        println!("  [{}] {what}", if *ok { "PASS" } else { "FAIL" });
    }
    let passed = checks.iter().filter(|(_, ok)| *ok).count();
    println!("{passed}/{} checks passed; disk SHA-256 {}", checks.len(), &restored_sha[..16]);
    if let Some(dir) = &a.keep {
        println!("kept in {} (repository password in {}/password)", dir.display(), dir.display());
    }
    Ok(if passed == checks.len() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
