//! `hyperexport dev load-agents`: the scale bench's load. Many lightweight agents, each a real
//! `AgentService.Attach` stream from this one process, register VMs in a few regions; jobs are
//! submitted all at once and fill the queue; an agent "runs" each task it is assigned for a fixed
//! time, then reports success. Placement latency is measured where an agent sees it: from the
//! moment a task could be placed on it (its job accepted and a slot of the agent free) to the
//! assignment.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use clap::Args;
use hyperexport_proto::v1::agent_message::Body as AgentBody;
use hyperexport_proto::v1::agent_service_client::AgentServiceClient;
use hyperexport_proto::v1::coordinator_message::Body as CoordinatorBody;
use hyperexport_proto::v1::export_service_client::ExportServiceClient;
use hyperexport_proto::v1::{AgentMessage, Heartbeat, Register, SubmitRequest, TaskFinished, TaskOutcome, Vm};
use serde_json::json;
use tokio::sync::{Mutex, mpsc};
use tokio_stream::wrappers::ReceiverStream;

/// `dev load-agents`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The coordinator, HOST:PORT.
    #[arg(long)]
    coordinator: String,
    /// Agents to attach.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Regions they are spread over.
    #[arg(long, default_value_t = 10)]
    regions: usize,
    /// VMs each region has (every agent of the region serves all of them).
    #[arg(long, default_value_t = 100)]
    vms_per_region: usize,
    /// Tasks to queue (jobs of `vms_per_region` tasks each).
    #[arg(long, default_value_t = 10_000)]
    tasks: usize,
    /// Tasks an agent runs at once.
    #[arg(long, default_value_t = 1)]
    capacity: u32,
    /// How long an agent takes per task, in milliseconds.
    #[arg(long, default_value_t = 200)]
    task_ms: u64,
}

/// Connection attempts per load agent after the first.
const CONNECT_ATTEMPTS: u32 = 5;

/// What the agents saw.
#[derive(Default)]
struct Seen {
    /// Placement latencies of assignments to slots freed by a finished task.
    latencies: Vec<Duration>,
    /// Placement latencies of assignments to slots never used before (the first wave, from the
    /// job's Submit).
    first_wave: Vec<Duration>,
    assigned: usize,
    done: usize,
    /// When each job's Submit was sent, by job id (known once it is answered).
    submitted: HashMap<String, Instant>,
    /// Assignments that came before their job's Submit was answered: when they came.
    early: HashMap<String, Vec<Instant>>,
}

impl Seen {
    /// Records an assignment of a task of `job` at `at`, the task placeable since `slot` (when
    /// the agent freed a slot; `None`: the slot was never used).
    fn assigned(&mut self, job: &str, at: Instant, slot: Option<Instant>) {
        self.assigned += 1;
        match (self.submitted.get(job), slot) {
            (Some(&sent), Some(slot)) => self.latencies.push(at.saturating_duration_since(slot.max(sent))),
            (Some(&sent), None) => self.first_wave.push(at.saturating_duration_since(sent)),
            (None, _) => self.early.entry(job.to_string()).or_default().push(at),
        }
    }

    /// Job `id`'s Submit, sent at `sent`, was answered.
    fn accepted(&mut self, id: String, sent: Instant) {
        for at in self.early.remove(&id).unwrap_or_default() {
            self.first_wave.push(at.saturating_duration_since(sent));
        }
        self.submitted.insert(id, sent);
    }
}

pub fn run(a: LoadArgs) -> Result<std::process::ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(load(a))
}

async fn load(a: LoadArgs) -> Result<std::process::ExitCode> {
    let url = format!("http://{}", a.coordinator);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (ready_tx, mut ready_rx) = mpsc::channel(a.agents);
    let attach_started = Instant::now();
    for i in 0..a.agents {
        let region = i % a.regions;
        let vms = (0..a.vms_per_region)
            .map(|v| Vm {
                name: format!("vm-{region}-{v}"),
                provider: "local".into(),
                kind: "image".into(),
                disks: 1,
                power_state: "unknown".into(),
            })
            .collect();
        let register = Register {
            agent_id: format!("load-{i:05}"),
            region: format!("region-{region}"),
            capacity: a.capacity,
            providers: vec!["local".into()],
            vms,
            ..Default::default()
        };
        let (url, seen, ready) = (url.clone(), Arc::clone(&seen), ready_tx.clone());
        let task_time = Duration::from_millis(a.task_ms);
        tokio::spawn(async move {
            if let Err(e) = agent(url, register, task_time, seen, ready.clone()).await {
                let _ = ready.send(Err(format!("{e:#}"))).await;
            }
        });
    }
    for _ in 0..a.agents {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(anyhow!("a load agent failed: {e}")),
            None => return Err(anyhow!("the load agents went away")),
        }
    }
    let attach_seconds = attach_started.elapsed().as_secs_f64();
    let client = ExportServiceClient::connect(url.clone()).await.context("connecting to the coordinator")?;
    let jobs = a.tasks.div_ceil(a.vms_per_region);
    let submit_started = Instant::now();
    let mut submissions = tokio::task::JoinSet::new();
    for j in 0..jobs {
        let region = j % a.regions;
        let count = (a.tasks - j * a.vms_per_region).min(a.vms_per_region);
        let vms = (0..count).map(|v| format!("vm-{region}-{v}")).collect();
        let (mut client, seen) = (client.clone(), Arc::clone(&seen));
        submissions.spawn(async move {
            let request = SubmitRequest { vms, target: "file:///var/tmp/hyperexport-load".into(), ..Default::default() };
            let sent = Instant::now();
            let id = client.submit(request).await?.into_inner().job_id;
            seen.lock().await.accepted(id, sent);
            Ok::<_, tonic::Status>(())
        });
    }
    let mut queue_peak = 0;
    while let Some(done) = submissions.join_next().await {
        done??;
        let s = seen.lock().await;
        let queued = s.submitted.len() * a.vms_per_region;
        queue_peak = queue_peak.max(queued - s.assigned.min(queued));
    }
    let submit_seconds = submit_started.elapsed().as_secs_f64();
    let drain_started = Instant::now();
    loop {
        {
            let s = seen.lock().await;
            queue_peak = queue_peak.max(a.tasks.saturating_sub(s.assigned));
            if s.done >= a.tasks {
                break;
            }
        }
        if drain_started.elapsed() > Duration::from_secs(600) {
            return Err(anyhow!("the queue did not drain within 10 minutes"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drain_seconds = drain_started.elapsed().as_secs_f64();
    let mut s = seen.lock().await;
    let mut all: Vec<Duration> = s.latencies.iter().chain(&s.first_wave).copied().collect();
    let (steady, first, all) = (summary(&mut s.latencies), summary(&mut s.first_wave), summary(&mut all));
    drop(s);
    println!(
        "{}",
        json!({
            "agents": a.agents, "tasks": a.tasks, "jobs": jobs, "capacity": a.capacity, "task_ms": a.task_ms, "queue_peak": queue_peak,
            "attach_seconds": attach_seconds, "submit_seconds": submit_seconds, "drain_seconds": drain_seconds,
            "tasks_per_second": a.tasks as f64 / drain_seconds,
            "placement_ms": {"all": all, "freed_slot": steady, "first_wave": first},
        })
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// Percentiles of latencies in milliseconds.
fn summary(latencies: &mut [Duration]) -> serde_json::Value {
    latencies.sort();
    let at = |q: f64| {
        latencies.get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1))).map(|d| d.as_secs_f64() * 1000.0)
    };
    json!({"samples": latencies.len(), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": at(1.0)})
}

/// One lightweight agent: attaches, heartbeats, and runs each assignment for `task_time`.
async fn agent(
    url: String,
    register: Register,
    task_time: Duration,
    seen: Arc<Mutex<Seen>>,
    ready: mpsc::Sender<Result<(), String>>,
) -> Result<()> {
    // A thousand connections at once can overflow the listen backlog: try again a few times.
    let mut attempt = 0;
    let mut client = loop {
        match AgentServiceClient::connect(url.clone()).await {
            Ok(client) => break client,
            Err(e) if attempt >= CONNECT_ATTEMPTS => return Err(e).context("connecting"),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                attempt += 1;
            }
        }
    };
    let (tx, rx) = mpsc::channel(64);
    tx.send(AgentMessage { body: Some(AgentBody::Register(register.clone())) }).await?;
    let mut inbound = client.attach(ReceiverStream::new(rx)).await?.into_inner();
    let heartbeat = match inbound.message().await?.and_then(|m| m.body) {
        Some(CoordinatorBody::Registered(r)) => Duration::from_millis(r.heartbeat_interval_ms as u64),
        other => return Err(anyhow!("expected Registered, got {other:?}")),
    };
    ready.send(Ok(())).await?;
    let beats = tx.clone();
    tokio::spawn(async move {
        let mut sequence = 0;
        loop {
            tokio::time::sleep(heartbeat).await;
            sequence += 1;
            if beats.send(AgentMessage { body: Some(AgentBody::Heartbeat(Heartbeat { sequence, demand: Vec::new() })) }).await.is_err() {
                return;
            }
        }
    });
    // When each slot freed by a finished task became free (slots never used are free from the
    // start, so for them the job's acceptance counts).
    let free_since = Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    while let Some(message) = inbound.message().await? {
        let Some(CoordinatorBody::Assign(assign)) = message.body else { continue };
        let now = Instant::now();
        let slot = {
            let mut free = free_since.lock().expect("free slots lock");
            (!free.is_empty()).then(|| free.remove(0))
        };
        seen.lock().await.assigned(&assign.job_id, now, slot);
        let (tx, seen, free_since) = (tx.clone(), Arc::clone(&seen), Arc::clone(&free_since));
        tokio::spawn(async move {
            tokio::time::sleep(task_time).await;
            let done = TaskFinished {
                task_id: assign.task_id,
                attempt: assign.attempt,
                outcome: TaskOutcome::Succeeded as i32,
                point: "load".into(),
                ..Default::default()
            };
            free_since.lock().expect("free slots lock").push(Instant::now());
            let _ = tx.send(AgentMessage { body: Some(AgentBody::Finished(done)) }).await;
            seen.lock().await.done += 1;
        });
    }
    Ok(())
}
