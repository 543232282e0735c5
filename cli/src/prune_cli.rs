//! `hyperexport prune`: retention for a repository or a replica.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use hyperexport_shared::lock::LockMode;
use hyperexport_shared::prune::{PruneReport, Retention, cleanup, prune};
use hyperexport_shared::storage::REPO_LOCK;
use serde_json::json;

use crate::Output;
use crate::progress::print_json;

/// How many points to keep per VM.
#[derive(Debug, Clone, Args)]
pub struct KeepArgs {
    /// Keep the newest N points.
    #[arg(long, default_value_t = 0)]
    pub keep_last: u32,
    /// Keep the newest point of each of the last N days that have points.
    #[arg(long, default_value_t = 0)]
    pub keep_daily: u32,
    /// Keep the newest point of each of the last N ISO weeks that have points.
    #[arg(long, default_value_t = 0)]
    pub keep_weekly: u32,
    /// Keep the newest point of each of the last N months that have points.
    #[arg(long, default_value_t = 0)]
    pub keep_monthly: u32,
}

impl KeepArgs {
    /// The retention these flags ask for.
    pub fn retention(&self) -> Retention {
        Retention { keep_last: self.keep_last, keep_daily: self.keep_daily, keep_weekly: self.keep_weekly, keep_monthly: self.keep_monthly }
    }

    /// The same for the API (none when no rule is given: keep everything).
    pub fn proto(&self) -> Option<hyperexport_proto::v1::Retention> {
        let r = self.retention();
        (!r.is_empty()).then_some(hyperexport_proto::v1::Retention {
            keep_last: r.keep_last,
            keep_daily: r.keep_daily,
            keep_weekly: r.keep_weekly,
            keep_monthly: r.keep_monthly,
        })
    }
}

/// Options of `prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub target: CleanupArgs,
    /// Only this VM's points [default: every VM]
    #[arg(long)]
    pub vm: Option<String>,
    #[command(flatten)]
    pub keep: KeepArgs,
}

/// Options of `cleanup` (and the repository part of `prune`'s).
#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// The repository or replica: a folder, an object store or an SFTP URL (no password needed).
    #[arg(long, value_name = "REPO")]
    pub repo: String,
    /// Show what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Seconds to wait for exports, transfers and restores of the repository to finish.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub lock_wait: u64,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// Runs `hyperexport prune`.
pub fn run(a: PruneArgs) -> Result<ExitCode> {
    let t = &a.target;
    let storage = hyperexport_agent::storage::open(&t.repo)?;
    let report = prune(storage.as_ref(), a.vm.as_deref(), &a.keep.retention(), t.dry_run, Duration::from_secs(t.lock_wait))?;
    print_report("prune", t.output, &report);
    Ok(ExitCode::SUCCESS)
}

/// Runs `hyperexport cleanup`.
pub fn run_cleanup(a: CleanupArgs) -> Result<ExitCode> {
    let storage = hyperexport_agent::storage::open(&a.repo)?;
    // Uploads that restores killed mid-way left open: aborted while nothing else runs.
    let uploads = {
        let _lock = storage.lock(REPO_LOCK, LockMode::Exclusive, Duration::from_secs(a.lock_wait), "cleanup")?;
        hyperexport_agent::storage::upload::abort_journaled(storage.as_ref(), a.dry_run)?
    };
    let mut report = cleanup(storage.as_ref(), a.dry_run, Duration::from_secs(a.lock_wait))?;
    report.uploads_aborted = uploads;
    print_report("cleanup", a.output, &report);
    Ok(ExitCode::SUCCESS)
}

fn print_report(operation: &str, output: Output, report: &PruneReport) {
    match output {
        Output::Json => print_json(&json!({"event": "result", "operation": operation, "result": report})),
        Output::Text => {
            let verb = if report.dry_run { "would remove" } else { "removed" };
            for (vm, ids) in &report.removed {
                println!("{vm}: {verb} {} points ({}), kept {}", ids.len(), ids.join(", "), report.kept.get(vm).map_or(0, Vec::len));
            }
            println!("{verb} {} chunks ({} bytes) no kept point refers to", report.chunks_removed, report.bytes_freed);
            if report.locks_removed > 0 {
                println!("{verb} {} lock objects of holders that are gone", report.locks_removed);
            }
            if report.uploads_aborted > 0 {
                println!("{verb} {} unfinished uploads of restores that were killed (aborted)", report.uploads_aborted);
            }
            if report.temp_files_removed > 0 {
                println!("{verb} {} temp files of writers that died", report.temp_files_removed);
            }
        }
    }
}
