//! Commands that talk to a coordinator: `coordinator` (runs one), `export --vm` (submits a job),
//! `jobs`, `watch` and `cancel`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use clap::Args;
use hyperexport_proto::v1::export_service_client::ExportServiceClient;
use hyperexport_proto::v1::{CancelJobRequest, Job, JobState, ListJobsRequest, SubmitRequest, WatchJobRequest};
use serde_json::json;
use tonic::transport::Channel;

use crate::Output;
use crate::progress::print_json;

/// Where the coordinator is.
#[derive(Debug, Clone, Args)]
pub struct CoordinatorUrl {
    /// The coordinator's address, `http://HOST:PORT` or `HOST:PORT` (also HYPEREXPORT_COORDINATOR).
    #[arg(long, env = "HYPEREXPORT_COORDINATOR", value_name = "URL")]
    pub coordinator: Option<String>,
}

/// `export --vm ...`: submit a job instead of exporting locally.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// VMs to export through the coordinator (repeat for several); submits a job.
    #[arg(long, value_name = "NAME")]
    pub vm: Vec<String>,
    /// Where the points go: file:///absolute/path (a repository on the agent's host).
    #[arg(long, value_name = "TARGET", requires = "vm")]
    pub to: Option<String>,
    /// 0 (lowest) to 100.
    #[arg(long, default_value_t = 0, requires = "vm")]
    pub priority: i32,
    #[command(flatten)]
    pub url: CoordinatorUrl,
}

/// `coordinator`: run one.
#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// Address to serve the gRPC API on (port 0: any free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:7700", value_name = "ADDR")]
    pub listen: String,
    /// Folder for the coordinator's state (created if missing).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
}

/// `jobs`, `watch JOB`, `cancel JOB`.
#[derive(Debug, Args)]
pub struct JobArgs {
    #[command(flatten)]
    pub url: CoordinatorUrl,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")
}

async fn connect(url: &CoordinatorUrl) -> Result<ExportServiceClient<Channel>> {
    let raw = url.coordinator.as_deref().ok_or_else(|| anyhow!("no coordinator: give --coordinator URL or set HYPEREXPORT_COORDINATOR"))?;
    let full = if raw.contains("://") { raw.to_string() } else { format!("http://{raw}") };
    let endpoint = Channel::from_shared(full.clone()).map_err(|e| anyhow!("coordinator address {raw:?} is not a URL: {e}"))?;
    let channel = endpoint
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot reach the coordinator at {full}"))?;
    Ok(ExportServiceClient::new(channel))
}

/// Turns a gRPC status into an error that names the coordinator's reason.
fn refused(status: tonic::Status) -> anyhow::Error {
    anyhow!("coordinator: {} ({:?})", status.message(), status.code())
}

fn state_name(state: i32) -> &'static str {
    JobState::try_from(state).map(|s| s.as_str_name().trim_start_matches("JOB_STATE_")).unwrap_or("UNKNOWN")
}

fn job_json(job: &Job) -> serde_json::Value {
    json!({
        "id": job.id, "state": state_name(job.state).to_lowercase(), "target": job.target, "priority": job.priority,
        "created_unix_ms": job.created_unix_ms, "updated_unix_ms": job.updated_unix_ms,
        "tasks": job.tasks.iter().map(|t| json!({
            "id": t.id, "vm": t.vm, "state": state_name(t.state).to_lowercase(), "agent": t.agent, "error": t.error,
            "bytes_done": t.bytes_done, "bytes_total": t.bytes_total,
        })).collect::<Vec<_>>(),
    })
}

fn print_job_line(job: &Job) {
    let vms: Vec<&str> = job.tasks.iter().map(|t| t.vm.as_str()).collect();
    println!("{:<16}  {:<10}  {:>3}  {:<32}  {}", job.id, state_name(job.state).to_lowercase(), job.priority, job.target, vms.join(","));
}

/// Submits a job; prints its id.
pub fn submit(a: &SubmitArgs, output: Output) -> Result<ExitCode> {
    let target = a.to.clone().ok_or_else(|| anyhow!("--to TARGET is needed with --vm (e.g. file:///srv/hyperexport/repo)"))?;
    runtime()?.block_on(async {
        let mut client = connect(&a.url).await?;
        let req = SubmitRequest { vms: a.vm.clone(), target, priority: a.priority };
        let id = client.submit(req).await.map_err(refused)?.into_inner().job_id;
        match output {
            Output::Json => print_json(&json!({"event": "result", "operation": "submit", "result": {"job_id": id}})),
            Output::Text => println!("{id}"),
        }
        Ok(ExitCode::SUCCESS)
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
    runtime()?.block_on(async {
        let mut stream = connect(&a.url).await?.watch(WatchJobRequest { job_id: job.to_string() }).await.map_err(refused)?.into_inner();
        let mut last = None;
        while let Some(update) = stream.message().await.map_err(refused)? {
            match a.output {
                Output::Json => print_json(&json!({"event": "job", "job": job_json(&update)})),
                Output::Text => print_job_line(&update),
            }
            let _ = std::io::stdout().flush();
            last = Some(update.state);
        }
        Ok(if last == Some(JobState::Succeeded as i32) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
    })
}

/// Runs a coordinator until SIGINT or SIGTERM.
pub fn coordinator(a: &CoordinatorArgs) -> Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    // The store opens first: "listening on" is printed only once the coordinator can serve.
    let store = hyperexport_coordinator::store::JobStore::open(&a.data)
        .with_context(|| format!("opening the coordinator state in {}", a.data.display()))?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&a.listen).await.with_context(|| format!("cannot listen on {}", a.listen))?;
        let addr = listener.local_addr()?;
        println!("listening on {addr}");
        std::io::stdout().flush()?;
        tracing::info!(%addr, data = %a.data.display(), "coordinator started");
        hyperexport_coordinator::server::serve(listener, store, shutdown_signal()).await?;
        tracing::info!("coordinator stopped");
        Ok(ExitCode::SUCCESS)
    })
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}
