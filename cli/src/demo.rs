//! `hyperexport demo`: the whole local cycle on a sample VM, with a summary table.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use hyperexport_agent::export::{ExportOptions, ExportReport};
use hyperexport_agent::restore::{RestoreFormat, RestoreOptions, sha256_file};
use hyperexport_agent::{export, restore, source, verify};
use hyperexport_shared::chunk::DEFAULT_CHUNK_SIZE;
use hyperexport_shared::compress::{Compression, DEFAULT_ZSTD_LEVEL};
use hyperexport_shared::keys::Secret;
use hyperexport_shared::ovf::{self, OutputDisk};
use hyperexport_shared::point::VmInfo;
use hyperexport_shared::repo::{InitOptions, Repository};
use hyperexport_shared::units::{format_bytes, parse_size};

use crate::Output;
use crate::commands::progress_for;
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

fn export_row(step: &str, r: &ExportReport) -> Row {
    Row {
        step: step.into(),
        read: r.total.bytes_read,
        stored: r.total.stored_bytes,
        reused: r.total.reused_bytes,
        bytes: r.total.size,
        seconds: r.seconds,
    }
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
    let (vm_dir, repo_dir, restored) = (base.join("demo-vm"), base.join("repo"), base.join("restored-disk1.img"));
    std::fs::create_dir_all(&vm_dir)?;
    let disk = vm_dir.join("demo-vm-disk1.img");
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) + 1;

    println!("making a sample VM: {} sparse disk with text, random and zero regions in {}", format_bytes(size), vm_dir.display());
    make_image(&disk, size, Layout::Demo, 42)?;
    let info =
        VmInfo { cpus: 2, memory_mib: 4096, guest_os: Some("Debian GNU/Linux 12 (64-bit)".into()), networks: vec!["VM Network".into()] };
    let descriptor = ovf::generate(
        "demo-vm",
        &info,
        &[OutputDisk { file_name: "demo-vm-disk1.img".into(), file_size: size, capacity: size, format: ovf::RAW_IMAGE }],
    );
    std::fs::write(vm_dir.join("demo-vm.ovf"), descriptor)?;

    let repo = std::sync::Arc::new(Repository::init(
        &repo_dir,
        InitOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            compression: Compression::Zstd(DEFAULT_ZSTD_LEVEL),
            secret: Some(Secret::Password(b"demo password".to_vec())),
        },
    )?);
    let opts = ExportOptions {
        chunk_size: DEFAULT_CHUNK_SIZE,
        compression: Compression::Zstd(DEFAULT_ZSTD_LEVEL),
        threads,
        lock_wait: std::time::Duration::from_secs(5),
        faults: Default::default(),
    };
    let mut rows = Vec::new();

    let vm = std::sync::Arc::new(source::open(&vm_dir, None)?);
    let first = export::export(&repo, &vm, &opts, progress_for(Output::Text, "export").as_ref())?;
    rows.push(export_row("export (full)", &first));

    let changed = mutate(&disk, 0.01, 7)?;
    println!("changed {} of the disk (1% in 1 MiB runs)", format_bytes(changed));
    let second = export::export(&repo, &vm, &opts, progress_for(Output::Text, "export").as_ref())?;
    rows.push(export_row("export (1% changed)", &second));

    let point = repo.resolve_point(&second.point)?;
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
    let checks = [
        ("full verify of the second point", verified.ok),
        ("restored disk SHA-256 equals the source's", source_sha == restored_sha && restored_sha == point.disks[0].sha256),
        ("restored disk is sparse (holes not written)", allocated < size),
        ("second export stored only chunks the change touched", second.total.new_chunks <= changed.div_ceil(1 << 20)),
        (
            "second export reused the unchanged chunks",
            second.total.reused_chunks > 0 && second.parent.as_deref() == Some(first.point.as_str()),
        ),
    ];

    println!();
    println!("{:<22} {:>12} {:>12} {:>12} {:>8} {:>14}", "step", "read", "stored", "reused", "time", "throughput");
    for r in &rows {
        let rate = format!("{}/s", format_bytes((r.bytes as f64 / r.seconds.max(1e-9)) as u64));
        println!(
            "{:<22} {:>12} {:>12} {:>12} {:>7.2}s {:>14}",
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
        println!("kept in {} (repository password: \"demo password\")", dir.display());
    }
    Ok(if passed == checks.len() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
