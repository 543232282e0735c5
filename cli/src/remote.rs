//! Commands that talk to a coordinator: `coordinator` (runs one), `export --vm` (submits a job),
//! `jobs`, `watch` and `cancel`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use clap::Args;
use hyperexport_agent::actors::agent_root::{AgentRoot, AgentRootConfig};
use hyperexport_proto::v1::export_service_client::ExportServiceClient;
use hyperexport_proto::v1::inventory_service_client::InventoryServiceClient;
use hyperexport_proto::v1::{CancelJobRequest, Job, JobState, ListJobsRequest, ListVmsRequest, SubmitRequest, WatchJobRequest};
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
    /// How often agents must send a heartbeat, in milliseconds (three missed: taken for dead).
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    pub heartbeat_ms: u64,
}

/// `agent`: run one.
#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub url: CoordinatorUrl,
    /// Region this agent runs in.
    #[arg(long)]
    pub region: String,
    /// Site within the region.
    #[arg(long, default_value = "")]
    pub site: String,
    /// Labels for placement, KEY=VALUE (repeat for several).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Folder for the agent's state (its id); created if missing.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Where its VMs are: local:DIR (each VM folder, .ova, .ovf, .vmx or disk image in DIR).
    #[arg(long, value_name = "SOURCE")]
    pub source: String,
    /// Tasks it runs at once.
    #[arg(long, default_value_t = 2)]
    pub capacity: u32,
}

/// `vms`: the inventory across agents.
#[derive(Debug, Args)]
pub struct VmsArgs {
    #[command(flatten)]
    pub url: CoordinatorUrl,
    /// Shell-style pattern on the VM name (`*`, `?`).
    #[arg(long, value_name = "GLOB", default_value = "")]
    pub name: String,
    #[arg(long, default_value = "")]
    pub provider: String,
    #[arg(long, default_value = "")]
    pub region: String,
    /// on, off or unknown.
    #[arg(long, default_value = "")]
    pub power_state: String,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
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

/// The coordinator's URL, `http://` added to a bare `HOST:PORT`.
fn coordinator_url(url: &CoordinatorUrl) -> Result<String> {
    let raw = url.coordinator.as_deref().ok_or_else(|| anyhow!("no coordinator: give --coordinator URL or set HYPEREXPORT_COORDINATOR"))?;
    Ok(if raw.contains("://") { raw.to_string() } else { format!("http://{raw}") })
}

async fn channel(url: &CoordinatorUrl) -> Result<Channel> {
    let full = coordinator_url(url)?;
    let endpoint = Channel::from_shared(full.clone()).map_err(|e| anyhow!("coordinator address {full:?} is not a URL: {e}"))?;
    endpoint
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot reach the coordinator at {full}"))
}

async fn connect(url: &CoordinatorUrl) -> Result<ExportServiceClient<Channel>> {
    Ok(ExportServiceClient::new(channel(url).await?))
}

/// Lists the VMs of all live agents.
pub fn vms(a: &VmsArgs) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let mut client = InventoryServiceClient::new(channel(&a.url).await?);
        let req = ListVmsRequest { name_glob: a.name.clone(), provider: a.provider.clone(), region: a.region.clone(), power_state: a.power_state.clone() };
        let vms = client.list_vms(req).await.map_err(refused)?.into_inner().vms;
        match a.output {
            Output::Json => {
                let list: Vec<_> = vms
                    .iter()
                    .map(|l| {
                        let vm = l.vm.clone().unwrap_or_default();
                        json!({"name": vm.name, "provider": vm.provider, "kind": vm.kind, "disks": vm.disks, "power_state": vm.power_state, "agent": l.agent_id, "region": l.region, "site": l.site})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            }
            Output::Text => {
                println!("{:<32}  {:<8}  {:<6}  {:>5}  {:<12}  AGENT", "VM", "PROVIDER", "KIND", "DISKS", "REGION");
                for l in &vms {
                    let vm = l.vm.clone().unwrap_or_default();
                    println!("{:<32}  {:<8}  {:<6}  {:>5}  {:<12}  {}", vm.name, vm.provider, vm.kind, vm.disks, l.region, l.agent_id);
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The agent's id, kept in its data folder (made on first start).
fn agent_id(data: &std::path::Path) -> Result<String> {
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    let path = data.join("agent-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        _ => {
            let mut raw = [0u8; 8];
            hyperexport_shared::crypto::random_bytes(&mut raw);
            let id = format!("agent-{}", raw.iter().map(|b| format!("{b:02x}")).collect::<String>());
            std::fs::write(&path, &id).with_context(|| format!("writing {}", path.display()))?;
            Ok(id)
        }
    }
}

/// Runs an agent until SIGINT or SIGTERM.
pub fn agent(a: &AgentArgs) -> Result<ExitCode> {
    let source = a
        .source
        .strip_prefix("local:")
        .map(PathBuf::from)
        .ok_or_else(|| anyhow!("source {:?} is not local:DIR (the only provider so far)", a.source))?;
    if !source.is_dir() {
        anyhow::bail!("source folder {} does not exist", source.display());
    }
    let mut labels = std::collections::HashMap::new();
    for l in &a.labels {
        let (k, v) = l.split_once('=').ok_or_else(|| anyhow!("label {l:?} is not KEY=VALUE"))?;
        labels.insert(k.to_string(), v.to_string());
    }
    let config = AgentRootConfig {
        coordinator: coordinator_url(&a.url)?,
        agent_id: agent_id(&a.data)?,
        region: a.region.clone(),
        site: a.site.clone(),
        labels,
        source,
        capacity: a.capacity,
    };
    init_logs();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    rt.block_on(async {
        let (root, handle) = ractor::Actor::spawn(Some(config.agent_id.clone()), AgentRoot, config)
            .await
            .map_err(|e| anyhow!("agent failed to start: {e}"))?;
        shutdown_signal().await;
        tracing::info!("agent stopping");
        root.stop(None);
        let _ = handle.await;
        Ok(ExitCode::SUCCESS)
    })
}

fn init_logs() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
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
    init_logs();
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
        let heartbeat = std::time::Duration::from_millis(a.heartbeat_ms.max(50));
        hyperexport_coordinator::server::serve(listener, store, heartbeat, shutdown_signal()).await?;
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
