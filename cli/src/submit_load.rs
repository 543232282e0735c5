//! `hyperexport dev submit-load`: the store bench's load. One lightweight agent (a real
//! `AgentService.Attach` stream) serves one VM so that submissions are admitted; then jobs of
//! that VM are submitted from several concurrent clients, and each Submit's latency (sent to
//! answered: the job is durable in the store by then) is measured.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use clap::Args;
use hyperexport_proto::v1::agent_message::Body as AgentBody;
use hyperexport_proto::v1::agent_service_client::AgentServiceClient;
use hyperexport_proto::v1::export_service_client::ExportServiceClient;
use hyperexport_proto::v1::{AgentMessage, Register, SubmitRequest, Vm};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// `dev submit-load`.
#[derive(Debug, Args)]
pub struct SubmitLoadArgs {
    /// The coordinator, HOST:PORT.
    #[arg(long)]
    coordinator: String,
    /// Submissions in all.
    #[arg(long, default_value_t = 2000)]
    submits: usize,
    /// Clients submitting at once (each its own connection).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

/// Runs the load and prints one JSON line: submissions per second and latency percentiles.
pub fn run(a: SubmitLoadArgs) -> Result<std::process::ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(load(a))
}

async fn load(a: SubmitLoadArgs) -> Result<std::process::ExitCode> {
    let url = format!("http://{}", a.coordinator);
    let (tx, rx) = mpsc::channel(16);
    let vm = Vm { name: "bench-vm".into(), provider: "local".into(), kind: "image".into(), disks: 1, power_state: "unknown".into() };
    let register = Register { agent_id: "submit-load".into(), region: "bench".into(), capacity: 1, vms: vec![vm], ..Default::default() };
    tx.send(AgentMessage { body: Some(AgentBody::Register(register)) }).await?;
    let mut agent = AgentServiceClient::connect(url.clone()).await.context("connecting to the coordinator")?;
    let mut inbound = agent.attach(ReceiverStream::new(rx)).await?.into_inner();
    inbound.message().await?.ok_or_else(|| anyhow!("the coordinator closed the agent stream"))?;
    // Keep reading (and so the stream) open; assignments are left unanswered.
    tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    let per_client = a.submits.div_ceil(a.concurrency.max(1));
    for c in 0..a.concurrency.max(1) {
        let n = per_client.min(a.submits.saturating_sub(c * per_client));
        let url = url.clone();
        clients.spawn(async move {
            let mut client = ExportServiceClient::connect(url).await?;
            let mut latencies = Vec::with_capacity(n);
            for _ in 0..n {
                let req = SubmitRequest { vms: vec!["bench-vm".into()], target: "file:///srv/bench".into(), ..Default::default() };
                let sent = Instant::now();
                client.submit(req).await.map_err(|s| anyhow!("submit: {}", s.message()))?;
                latencies.push(sent.elapsed());
            }
            Ok::<Vec<Duration>, anyhow::Error>(latencies)
        });
    }
    let mut latencies = Vec::with_capacity(a.submits);
    while let Some(done) = clients.join_next().await {
        latencies.extend(done??);
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(tx);
    latencies.sort();
    let pct =
        |p: f64| latencies.get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1)).map_or(0.0, |d| d.as_secs_f64() * 1e3);
    println!(
        "{}",
        json!({"submits": latencies.len(), "concurrency": a.concurrency, "seconds": seconds,
               "per_second": latencies.len() as f64 / seconds, "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": pct(1.0)})
    );
    Ok(std::process::ExitCode::SUCCESS)
}
