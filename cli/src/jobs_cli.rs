//! Job commands against a coordinator: `export --vm` (submit, optionally `--wait`), `jobs`,
//! `watch JOB` and `cancel JOB`, in text (bars per disk on a terminal) or JSON lines.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Result, anyhow};
use hyperexport_proto::v1::export_service_client::ExportServiceClient;
use hyperexport_proto::v1::{CancelJobRequest, Job, JobState, ListJobsRequest, SubmitRequest, WatchJobRequest};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::Output;
use crate::progress::print_json;
use crate::remote::{CoordinatorUrl, JobArgs, SubmitArgs, connect, refused, runtime};

fn state_name(state: i32) -> String {
    JobState::try_from(state).map(|s| s.as_str_name().trim_start_matches("JOB_STATE_").to_lowercase()).unwrap_or_else(|_| "unknown".into())
}

/// A job as JSON (the `--output json` form).
pub fn job_json(job: &Job) -> serde_json::Value {
    json!({
        "id": job.id, "state": state_name(job.state), "target": job.target, "priority": job.priority,
        "region": job.region, "labels": job.labels, "max_parallel": job.max_parallel,
        "created_unix_ms": job.created_unix_ms, "updated_unix_ms": job.updated_unix_ms,
        "tasks": job.tasks.iter().map(|t| json!({
            "id": t.id, "vm": t.vm, "state": state_name(t.state), "agent": t.agent, "error": t.error,
            "attempt": t.attempt, "failures": t.failures, "point": t.point,
            "bytes_done": t.bytes_done, "bytes_total": t.bytes_total, "bytes_read": t.bytes_read,
            "checkpoint_bytes": t.checkpoint_bytes, "finished_unix_ms": t.finished_unix_ms,
            "stats": t.stats.as_ref().map(|s| json!({
                "size": s.size, "bytes_read": s.bytes_read, "hole_bytes": s.hole_bytes, "new_bytes": s.new_bytes,
                "stored_bytes": s.stored_bytes, "reused_bytes": s.reused_bytes, "found_bytes": s.found_bytes, "resumed_bytes": s.resumed_bytes,
                "changes_found_by": s.changes_found_by, "note": s.note,
            })),
            "disks": t.disks.iter().map(|d| json!({"name": d.name, "bytes_done": d.bytes_done, "bytes_total": d.bytes_total})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn print_job_line(job: &Job) {
    let vms: Vec<&str> = job.tasks.iter().map(|t| t.vm.as_str()).collect();
    println!("{:<16}  {:<10}  {:>3}  {:<32}  {}", job.id, state_name(job.state), job.priority, job.target, vms.join(","));
}

/// Shows a job's updates: a bar per disk of every task on a terminal, else a line per task
/// whenever its state changes, or a JSON line per update.
struct JobView {
    output: Output,
    multi: Option<MultiProgress>,
    bars: HashMap<(String, String), ProgressBar>,
    states: HashMap<String, i32>,
}

impl JobView {
    fn new(output: Output) -> Self {
        let tty = output == Output::Text && std::io::stderr().is_terminal();
        let multi = tty.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8)));
        JobView { output, multi, bars: HashMap::new(), states: HashMap::new() }
    }

    fn show(&mut self, job: &Job) {
        if self.output == Output::Json {
            print_json(&json!({"event": "job", "job": job_json(job)}));
            return;
        }
        for t in &job.tasks {
            if self.states.insert(t.id.clone(), t.state) != Some(t.state) {
                let mut line = format!("{} {:<24} {:<10}", job.id, t.vm, state_name(t.state));
                if !t.agent.is_empty() {
                    line.push_str(&format!(" on {} (attempt {})", t.agent, t.attempt));
                }
                if !t.point.is_empty() {
                    line.push_str(&format!(" point {}", t.point));
                }
                if !t.error.is_empty() {
                    line.push_str(&format!(": {}", t.error));
                }
                self.say(&line);
            }
            let Some(multi) = &self.multi else { continue };
            for d in &t.disks {
                let bar = self.bars.entry((t.id.clone(), d.name.clone())).or_insert_with(|| {
                    let style = ProgressStyle::with_template(
                        "{prefix:>32} [{bar:30}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} eta {eta}",
                    )
                    .expect("static template is valid")
                    .progress_chars("=> ");
                    multi.add(ProgressBar::new(d.bytes_total).with_style(style).with_prefix(format!("{} {}", t.vm, d.name)))
                });
                bar.set_length(d.bytes_total);
                bar.set_position(d.bytes_done);
            }
        }
    }

    fn say(&self, line: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(line);
            }
            None => {
                println!("{line}");
                let _ = std::io::stdout().flush();
            }
        }
    }
}

/// Follows a job to its end; the last state seen (none if the stream ended first).
pub(crate) async fn follow(url: &CoordinatorUrl, job: &str, output: Output) -> Result<Option<Job>> {
    let mut view = JobView::new(output);
    let mut last: Option<Job> = None;
    // Given an HA group, a leader that stops or steps down ends the stream as unavailable: the
    // watch goes on with whichever coordinator answers next (Watch starts with the job as it is,
    // so nothing is missed). A single coordinator, or a group never reached, is an error at once.
    let (mut answered, mut lost_since, mut attempt) = (false, None, 0);
    loop {
        let watched = async {
            let channel = crate::remote::channel_from(url, attempt).await?;
            let mut stream = ExportServiceClient::new(channel).watch(WatchJobRequest { job_id: job.to_string() }).await?.into_inner();
            while let Some(update) = stream.message().await? {
                (answered, lost_since) = (true, None);
                view.show(&update);
                last = Some(update);
            }
            Ok::<(), WatchError>(())
        };
        let Err(e) = watched.await else { break };
        let lost = *lost_since.get_or_insert_with(std::time::Instant::now);
        // A group member may answer unavailable while it cannot tell who leads (cut off, or
        // during a takeover): the next one is tried.
        let retry = url.is_group() && lost.elapsed() < REWATCH_FOR && e.retryable() && (answered || matches!(e, WatchError::Status(_)));
        attempt += 1;
        if !retry {
            return Err(match e {
                WatchError::Status(s) => refused(s),
                WatchError::Connect(e) => e,
            });
        }
        tracing::debug!(error = %e, "watch interrupted; watching again");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    for bar in view.bars.values() {
        bar.abandon();
    }
    Ok(last)
}

/// How long a watch of an HA group keeps trying to reach a coordinator again after losing one.
const REWATCH_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// Why a watch was interrupted: no coordinator reached, or a status from one.
enum WatchError {
    Connect(anyhow::Error),
    Status(tonic::Status),
}

impl WatchError {
    /// Whether another coordinator of the group may answer: none reached, or one stopping.
    fn retryable(&self) -> bool {
        match self {
            WatchError::Connect(_) => true,
            WatchError::Status(s) => s.code() == tonic::Code::Unavailable,
        }
    }
}

impl From<anyhow::Error> for WatchError {
    fn from(e: anyhow::Error) -> Self {
        WatchError::Connect(e)
    }
}

impl From<tonic::Status> for WatchError {
    fn from(s: tonic::Status) -> Self {
        WatchError::Status(s)
    }
}

impl std::fmt::Display for WatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WatchError::Connect(e) => write!(f, "{e:#}"),
            WatchError::Status(s) => write!(f, "{} ({:?})", s.message(), s.code()),
        }
    }
}

fn exit_for(last: Option<Job>) -> ExitCode {
    match last {
        Some(job) if job.state == JobState::Succeeded as i32 => ExitCode::SUCCESS,
        Some(job) => {
            eprintln!("job {} ended {}", job.id, state_name(job.state));
            ExitCode::FAILURE
        }
        None => {
            eprintln!("the coordinator ended the watch before the job finished");
            ExitCode::FAILURE
        }
    }
}

/// Submits a job; prints its id, then with `--wait` follows it (exit 0 only on success).
pub fn submit(a: &SubmitArgs, output: Output) -> Result<ExitCode> {
    let target = a.to.clone().ok_or_else(|| anyhow!("--to TARGET is needed with --vm (e.g. file:///srv/hyperexport/repo)"))?;
    let mut labels = HashMap::new();
    for l in &a.labels {
        let (k, v) = l.split_once('=').ok_or_else(|| anyhow!("label {l:?} is not KEY=VALUE"))?;
        labels.insert(k.to_string(), v.to_string());
    }
    let (bandwidth_cap, bandwidth_burst) = a.bwlimit.as_deref().map(crate::bandwidth_cli::parse_bwlimit).transpose()?.unwrap_or_default();
    runtime()?.block_on(async {
        let mut client = connect(&a.url).await?;
        let req = SubmitRequest {
            vms: a.vm.clone(),
            target,
            priority: a.priority,
            region: a.region.clone().unwrap_or_default(),
            labels,
            max_parallel: a.max_parallel,
            replicate_to: a.replicate_to.clone(),
            class: a.class.clone().unwrap_or_default(),
            bandwidth_cap,
            bandwidth_burst,
        };
        let id = client.submit(req).await.map_err(refused)?.into_inner().job_id;
        match output {
            Output::Json => print_json(&json!({"event": "result", "operation": "submit", "result": {"job_id": id}})),
            Output::Text => println!("{id}"),
        }
        if !a.wait {
            return Ok(ExitCode::SUCCESS);
        }
        Ok(exit_for(follow(&a.url, &id, output).await?))
    })
}

/// Lists the coordinator's jobs (every page).
pub fn jobs(a: &JobArgs) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let mut client = connect(&a.url).await?;
        let mut jobs = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = client.list(ListJobsRequest { page_size: 0, page_token }).await.map_err(refused)?.into_inner();
            jobs.extend(page.jobs);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        match a.output {
            Output::Json => println!("{}", serde_json::Value::Array(jobs.iter().map(job_json).collect())),
            Output::Text => {
                println!("{:<16}  {:<10}  {:>3}  {:<32}  VMS", "JOB", "STATE", "PRI", "TARGET");
                jobs.iter().for_each(print_job_line);
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Cancels a job.
pub fn cancel(a: &JobArgs, job: &str) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let job = connect(&a.url).await?.cancel(CancelJobRequest { job_id: job.to_string() }).await.map_err(refused)?.into_inner();
        match a.output {
            Output::Json => print_json(&json!({"event": "result", "operation": "cancel", "result": job_json(&job)})),
            Output::Text => print_job_line(&job),
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Follows a job until it finishes; exits 0 only when it succeeded.
pub fn watch(a: &JobArgs, job: &str) -> Result<ExitCode> {
    runtime()?.block_on(async { Ok(exit_for(follow(&a.url, job, a.output).await?)) })
}
