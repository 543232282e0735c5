//! Opening a task for `JobSupervisor` (the source VM, the target, the resume plan) and turning
//! its results into what the coordinator keeps.

use std::sync::Arc;
use std::time::Duration;

use hyperexport_proto::v1::{self as pb, Assign};
use hyperexport_shared::prune::Retention;

use super::job_supervisor::JobSupervisorConfig;
use crate::AgentError;
use crate::export::{ExportOptions, ExportReport, ExportRun};
use crate::resume::{ResumePlan, plan_resume};
use crate::source::AgentSource;
use crate::source::disk::RawDisk;
use crate::target::{open_or_create, target_storage};

/// The retention an assignment asks for (none: keep everything).
pub(super) fn retention_of(a: &Assign) -> Retention {
    a.retention.map_or_else(Retention::default, |r| Retention {
        keep_last: r.keep_last,
        keep_daily: r.keep_daily,
        keep_weekly: r.keep_weekly,
        keep_monthly: r.keep_monthly,
    })
}

/// The export's report as the coordinator keeps it.
pub(super) fn stats_of(r: &ExportReport, note: Option<&str>) -> pb::ExportStats {
    let t = &r.total;
    pb::ExportStats {
        size: t.size,
        bytes_read: t.bytes_read,
        hole_bytes: t.hole_bytes,
        new_bytes: t.new_bytes,
        stored_bytes: t.stored_bytes,
        reused_bytes: t.reused_bytes,
        found_bytes: t.found_bytes,
        resumed_bytes: t.resumed_bytes,
        changes_found_by: "content".into(),
        note: note.unwrap_or_default().to_string(),
    }
}

/// An opened task: the export under way, its disks' sizes and where to resume them.
pub(super) struct Opened {
    /// The export, its target locked.
    pub(super) run: ExportRun,
    /// Each disk's size.
    pub(super) sizes: Vec<u64>,
    /// Where each disk resumes.
    pub(super) plan: ResumePlan,
}

/// Opens the source VM and the target, locks the target for the export and plans the resume.
pub(super) fn open(config: &JobSupervisorConfig) -> Result<Opened, AgentError> {
    let a = &config.assign;
    let source = Arc::new(match &config.source {
        AgentSource::Local(dir) => crate::source::open(&crate::source::inventory::find(dir, &a.vm)?, None)?,
        // A snapshot is taken (or found again, for a retry) and its disks read from the datastore.
        AgentSource::Vsphere(connection) => crate::vsphere::export::open(connection, &a.vm, &a.task_id)?,
    });
    let repo = Arc::new(open_or_create(target_storage(&a.target)?, &config.access)?);
    let compression = repo.config().compression.parse().map_err(|e: String| AgentError::Invalid(format!("target compression: {e}")))?;
    let opts = ExportOptions {
        chunk_size: repo.config().chunk_size,
        compression,
        threads: config.threads,
        upload_concurrency: crate::export::DEFAULT_UPLOAD_CONCURRENCY,
        lock_wait: Duration::from_secs(24 * 3600),
        faults: config.faults,
        throttle: Some(config.throttle()),
    };
    let sizes: Vec<u64> = source.disks.iter().map(|d| RawDisk::of(d).map(|r| r.size())).collect::<Result<_, _>>()?;
    let run = ExportRun::begin(repo, source, opts, &config.cancel)?;
    let plan = plan_resume(&run, &sizes, a.resume.as_ref());
    Ok(Opened { run, sizes, plan })
}
