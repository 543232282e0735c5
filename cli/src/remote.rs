//! The distributed side of the CLI: `coordinator` and `agent` (run one), `vms`, and the arguments
//! of the job commands (in `jobs_cli`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use clap::Args;
use hyperexport_agent::actors::agent_root::{AgentRoot, AgentRootConfig};
use hyperexport_agent::attach::AttachConfig;
use hyperexport_agent::replication::receiver::Receiver;
use hyperexport_agent::replication::tls::NodeTls;
use hyperexport_agent::source::AgentSource;
use hyperexport_agent::target::TargetAccess;
use hyperexport_coordinator::server::ServeOptions;
use hyperexport_coordinator::store::Store;
use hyperexport_proto::v1::export_service_client::ExportServiceClient;
use tonic::transport::Channel;

use crate::Output;

/// Where the coordinator is.
#[derive(Debug, Clone, Args)]
pub struct CoordinatorUrl {
    /// The coordinator's address, `http(s)://HOST:PORT` or `HOST:PORT` (also HYPEREXPORT_COORDINATOR).
    #[arg(long, env = "HYPEREXPORT_COORDINATOR", value_name = "URL")]
    pub coordinator: Option<String>,
    /// This node's TLS folder (from `hyperexport ca issue`) for a coordinator that demands mutual
    /// TLS; a bare HOST:PORT then means https:// (also HYPEREXPORT_TLS).
    #[arg(long = "tls", env = "HYPEREXPORT_TLS", value_name = "DIR")]
    pub tls: Option<PathBuf>,
}

impl CoordinatorUrl {
    /// Whether it names several coordinators (an HA group).
    pub fn is_group(&self) -> bool {
        self.coordinator.as_deref().is_some_and(|c| c.split(',').filter(|a| !a.trim().is_empty()).count() > 1)
    }

    /// The gRPC client TLS configuration, when `--tls` is given.
    fn client_tls(&self) -> Result<Option<tonic::transport::ClientTlsConfig>> {
        self.tls.as_deref().map(|dir| Ok(NodeTls::load(dir)?.grpc_client())).transpose()
    }
}

/// `export --vm ...`: submit a job instead of exporting locally.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// VMs to export through the coordinator (repeat for several); submits a job.
    #[arg(long, value_name = "NAME")]
    pub vm: Vec<String>,
    /// Where the points go: file:///absolute/path (a repository on the agent's host), or s3://, azure://, gs://, sftp:// (docs/STORAGE.md).
    #[arg(long, value_name = "TARGET", requires = "vm")]
    pub to: Option<String>,
    /// 0 (lowest) to 100.
    #[arg(long, default_value_t = 0, requires = "vm")]
    pub priority: i32,
    /// Run only on agents of this region.
    #[arg(long, requires = "vm")]
    pub region: Option<String>,
    /// Run only on agents with this label, KEY=VALUE (repeat for several).
    #[arg(long = "agent-label", value_name = "KEY=VALUE", requires = "vm")]
    pub labels: Vec<String>,
    /// Tasks of the job running at once (0: no limit).
    #[arg(long, default_value_t = 0, requires = "vm")]
    pub max_parallel: u32,
    /// Then replicate each new point to a receiver in this region (repeat for several).
    #[arg(long = "replicate-to", value_name = "REGION", requires = "vm")]
    pub replicate_to: Vec<String>,
    /// QoS class for bandwidth (one of `hyperexport bandwidth show`'s classes) [default: standard]
    #[arg(long, requires = "vm")]
    pub class: Option<String>,
    /// Bandwidth cap, RATE[:BURST] (e.g. 5M:8M): with --vm the job's cap over all its agents;
    /// for a local export, its reads from the source.
    #[arg(long, value_name = "RATE[:BURST]")]
    pub bwlimit: Option<String>,
    /// Follow the job with progress per disk; exit 0 only when it succeeds.
    #[arg(long, requires = "vm")]
    pub wait: bool,
    #[command(flatten)]
    pub url: CoordinatorUrl,
}

/// `coordinator`: run one.
#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// Address to serve the gRPC API on (port 0: any free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:7700", value_name = "ADDR")]
    pub listen: String,
    /// Folder for the coordinator's state (created if missing); not used with --store.
    #[arg(long, value_name = "DIR", required_unless_present = "store")]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    pub etcd: crate::store_cli::EtcdArgs,
    /// How often agents must send a heartbeat, in milliseconds (three missed: taken for dead).
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    pub heartbeat_ms: u64,
    /// Serve Prometheus metrics on this address at /metrics (port 0: any free port, printed).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// This node's TLS folder (from `hyperexport ca issue`): serve the API with mutual TLS and
    /// refuse clients without a certificate from the same CA. Needed to listen beyond loopback.
    #[arg(long, value_name = "DIR")]
    pub tls: Option<PathBuf>,
    /// How often replication policies are evaluated, in milliseconds: RPO metrics, breach
    /// events and due runs.
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    pub dr_interval_ms: u64,
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
    /// Where its VMs are: local:DIR (each VM folder, .ova, .ovf, .vmx or disk image in DIR), or
    /// vsphere://USER@HOST[:PORT][/DATACENTER] (exported through snapshots; see docs/VSPHERE.md).
    #[arg(long, value_name = "SOURCE")]
    pub source: String,
    /// With a vSphere source: the password and how its certificate is trusted.
    #[command(flatten)]
    pub vsphere: crate::vsphere_cli::VsphereAccess,
    /// Tasks it runs at once (1-1024).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub capacity: u32,
    /// Worker threads per task (default: the number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Secret of the target repositories (also HYPEREXPORT_PASSWORD, HYPEREXPORT_PASSWORD_FILE).
    #[command(flatten)]
    pub key: crate::KeyArgs,
    /// Create targets that do not exist yet unencrypted when the agent has no secret.
    #[arg(long)]
    pub no_encryption: bool,
    /// Serve Prometheus metrics on this address at /metrics (port 0: any free port, printed).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Also receive replicas from other regions over QUIC on this UDP address (port 0: any free
    /// port, printed as `replica on ADDR`); needs --tls.
    #[arg(long, value_name = "ADDR", requires = "tls")]
    pub replica_listen: Option<std::net::SocketAddr>,
    /// Folder of the replicas it receives [default: DATA/replicas]
    #[arg(long, value_name = "DIR", requires = "replica_listen")]
    pub replica_root: Option<PathBuf>,
}

/// `jobs`, `watch JOB`, `cancel JOB`.
#[derive(Debug, Args)]
pub struct JobArgs {
    #[command(flatten)]
    pub url: CoordinatorUrl,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")
}

/// The coordinator's URL, `http://` (`https://` with `--tls`) added to a bare `HOST:PORT`.
/// The coordinators' URLs (several, comma-separated, for an HA group), each with its scheme.
fn coordinator_urls(url: &CoordinatorUrl) -> Result<Vec<String>> {
    let raw = url.coordinator.as_deref().ok_or_else(|| anyhow!("no coordinator: give --coordinator URL or set HYPEREXPORT_COORDINATOR"))?;
    let scheme = if url.tls.is_some() { "https" } else { "http" };
    let urls: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| if u.contains("://") { u.to_string() } else { format!("{scheme}://{u}") })
        .collect();
    if urls.is_empty() {
        anyhow::bail!("--coordinator {raw:?} names no address");
    }
    Ok(urls)
}

/// A channel to the first of the coordinators that accepts a connection (any coordinator of an
/// HA group answers: standbys forward to the leader).
pub(crate) async fn channel(url: &CoordinatorUrl) -> Result<Channel> {
    channel_from(url, 0).await
}

/// Like [`channel`], trying the addresses from the `start`-th on (wrapping around).
pub(crate) async fn channel_from(url: &CoordinatorUrl, start: usize) -> Result<Channel> {
    let tls = url.client_tls()?;
    let mut failures = Vec::new();
    let mut urls = coordinator_urls(url)?;
    let n = urls.len();
    urls.rotate_left(start % n);
    for full in urls {
        let mut endpoint = Channel::from_shared(full.clone()).map_err(|e| anyhow!("coordinator address {full:?} is not a URL: {e}"))?;
        if let Some(tls) = &tls {
            endpoint = endpoint.tls_config(tls.clone()).with_context(|| format!("TLS to {full}"))?;
        }
        match endpoint.connect_timeout(std::time::Duration::from_secs(5)).connect().await {
            Ok(channel) => return Ok(channel),
            Err(e) => failures.push(format!("{full}: {e}")),
        }
    }
    Err(anyhow!("cannot reach the coordinator ({})", failures.join("; ")))
}

pub(crate) async fn connect(url: &CoordinatorUrl) -> Result<ExportServiceClient<Channel>> {
    Ok(ExportServiceClient::new(channel(url).await?))
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
    let source = if a.source.starts_with("vsphere://") {
        AgentSource::Vsphere(a.vsphere.connection(&a.source)?)
    } else {
        let dir = a
            .source
            .strip_prefix("local:")
            .map(PathBuf::from)
            .ok_or_else(|| anyhow!("source {:?} is neither local:DIR nor vsphere://USER@HOST", a.source))?;
        if !dir.is_dir() {
            anyhow::bail!("source folder {} does not exist", dir.display());
        }
        AgentSource::Local(dir)
    };
    let mut labels = std::collections::HashMap::new();
    for l in &a.labels {
        let (k, v) = l.split_once('=').ok_or_else(|| anyhow!("label {l:?} is not KEY=VALUE"))?;
        labels.insert(k.to_string(), v.to_string());
    }
    let mut attach = AttachConfig {
        coordinator: coordinator_urls(&a.url)?.join(","),
        agent_id: agent_id(&a.data)?,
        region: a.region.clone(),
        site: a.site.clone(),
        labels,
        capacity: a.capacity.max(1),
        tls: a.url.client_tls()?,
        replica_addr: String::new(),
    };
    let access = TargetAccess { secret: crate::secrets::from_args(&a.key)?, allow_unencrypted: a.no_encryption };
    let _logs = init_logs();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    rt.block_on(async {
        if let Some(listen) = &a.metrics_listen {
            let addr = crate::telemetry::serve(listen).await?;
            hyperexport_agent::metrics::describe();
            hyperexport_agent::metrics::spawn_rate_sampler();
            println!("metrics on {addr}");
        }
        if let (Some(listen), Some(tls)) = (a.replica_listen, &a.url.tls) {
            let root = a.replica_root.clone().unwrap_or_else(|| a.data.join("replicas"));
            let receiver = Receiver::bind(listen, root, &NodeTls::load(tls)?)?;
            attach.replica_addr = receiver.local_addr().to_string();
            println!("replica on {}", attach.replica_addr);
            tokio::spawn(receiver.run());
        }
        std::io::stdout().flush()?;
        let config = AgentRootConfig {
            attach,
            source,
            access,
            threads: crate::commands::threads(a.threads),
            faults: hyperexport_agent::export::TestFaults::from_env(),
            tls: a.url.tls.as_deref().map(NodeTls::load).transpose()?,
            replica_root: a.replica_listen.map(|_| a.replica_root.clone().unwrap_or_else(|| a.data.join("replicas"))),
            scratch: a.data.join("drills"),
        };
        let (root, handle) = ractor::Actor::spawn(Some(config.attach.agent_id.clone()), AgentRoot, config)
            .await
            .map_err(|e| anyhow!("agent failed to start: {e}"))?;
        shutdown_signal().await;
        tracing::info!("agent stopping");
        root.stop(None);
        let _ = handle.await;
        Ok(ExitCode::SUCCESS)
    })
}

/// Logs to stderr from a thread of their own: the threads that log (the coordinator's scheduler
/// logs every assignment) do not wait for the write. Nothing is dropped when the buffer is full;
/// the returned guard flushes what is left when it goes out of scope.
#[must_use = "logs written after the guard is dropped are lost"]
pub(crate) fn init_logs() -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) =
        tracing_appender::non_blocking::NonBlockingBuilder::default().lossy(false).thread_name("hx-log").finish(std::io::stderr());
    tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    guard
}

/// Turns a gRPC status into an error that names the coordinator's reason.
pub(crate) fn refused(status: tonic::Status) -> anyhow::Error {
    anyhow!("coordinator: {} ({:?})", status.message(), status.code())
}

/// Runs a coordinator until SIGINT or SIGTERM.
pub fn coordinator(a: &CoordinatorArgs) -> Result<ExitCode> {
    let _logs = init_logs();
    let tls = a.tls.as_deref().map(|dir| NodeTls::load(dir).map(|t| t.grpc_server())).transpose()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    let etcd = a.etcd.options()?;
    // Said before anything starts when the address is given as one (a host name is checked
    // once bound).
    if let Ok(addr) = a.listen.parse::<std::net::SocketAddr>() {
        refuse_plaintext_beyond_loopback(addr, tls.is_some())?;
    }
    rt.block_on(async {
        let (signalled, stop) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = signalled.send(true);
        });
        let mut metrics_served = false;
        let mut patient = false;
        // With port 0, the first bind picks the port; the coordinator keeps it (its identity in
        // the group).
        let mut listen_at = a.listen.clone();
        let client_tls = a.tls.as_deref().map(|dir| NodeTls::load(dir).map(|t| t.grpc_client())).transpose()?;
        // With etcd, a coordinator that loses its leadership stops serving and stands by again.
        loop {
            // The store opens first: the coordinator listens only once it can serve. With etcd
            // that is once it leads: a standby listens on nothing, so that agents and clients
            // given the whole group's addresses find the leader as the one that accepts them.
            let (stepped_down_tx, mut stepped_down) = tokio::sync::watch::channel(false);
            let store = match (&etcd, &a.data) {
                (Some(options), _) => {
                    let standby = crate::store_cli::Standby {
                        options,
                        listen: listen_at.clone(),
                        advertise: a.etcd.advertise.clone(),
                        server_tls: tls.clone(),
                        client_tls: client_tls.clone(),
                    };
                    let led = standby.until_leading(stop.clone(), stepped_down_tx, patient).await?;
                    patient = true;
                    match led {
                        Some((store, addr)) => {
                            listen_at = addr.to_string();
                            Store::Etcd(Box::new(store))
                        }
                        None => return Ok(ExitCode::SUCCESS),
                    }
                }
                (None, Some(data)) => Store::Embedded(std::sync::Arc::new(
                    hyperexport_coordinator::store::JobStore::open(data)
                        .with_context(|| format!("opening the coordinator state in {}", data.display()))?,
                )),
                (None, None) => anyhow::bail!("give --data DIR or --store etcd://..."),
            };
            let listener = tokio::net::TcpListener::bind(&listen_at).await.with_context(|| format!("cannot listen on {listen_at}"))?;
            let addr = listener.local_addr()?;
            listen_at = addr.to_string();
            refuse_plaintext_beyond_loopback(addr, tls.is_some())?;
            println!("listening on {addr}");
            if let Some(listen) = a.metrics_listen.as_ref().filter(|_| !metrics_served) {
                let metrics = crate::telemetry::serve(listen).await?;
                hyperexport_coordinator::metrics::describe();
                println!("metrics on {metrics}");
                metrics_served = true;
            }
            std::io::stdout().flush()?;
            let term = store.term();
            tracing::info!(%addr, store = a.etcd.store.as_deref().unwrap_or("embedded"), term, "coordinator started");
            let heartbeat = std::time::Duration::from_millis(a.heartbeat_ms.max(50));
            let options =
                ServeOptions { heartbeat, tls: tls.clone(), dr_interval: std::time::Duration::from_millis(a.dr_interval_ms.max(50)) };
            // Serves until a signal, or until it no longer leads on etcd (it then stops at once,
            // so that another coordinator takes over cleanly).
            let lost = async {
                while !*stepped_down.borrow() {
                    if stepped_down.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            };
            let mut signal = stop.clone();
            let until = async move {
                tokio::select! {
                    () = lost => true,
                    _ = signal.wait_for(|s| *s) => false,
                }
            };
            let (lost_tx, lost_rx) = tokio::sync::oneshot::channel();
            let shutdown = async move {
                let _ = lost_tx.send(until.await);
            };
            let held = store.clone();
            if let Err(e) = hyperexport_coordinator::server::serve(listener, store, options, shutdown).await {
                // On etcd a failed write (etcd away) is no reason to die: the state is in etcd,
                // and whoever leads next reloads it. This coordinator gives up and stands by.
                if etcd.is_none() {
                    return Err(e.into());
                }
                tracing::error!(error = %e, term, "serving failed; stepping down to stand by");
                held.step_down();
                continue;
            }
            if !lost_rx.await.unwrap_or(false) {
                tracing::info!("coordinator stopped");
                return Ok(ExitCode::SUCCESS);
            }
            tracing::warn!(term, "this coordinator lost its etcd leadership: it stopped serving and stands by");
        }
    })
}

/// Plaintext only where no other host can connect: beyond loopback every peer must show a
/// certificate from the cluster CA.
fn refuse_plaintext_beyond_loopback(addr: std::net::SocketAddr, tls: bool) -> Result<()> {
    if !tls && !addr.ip().is_loopback() {
        anyhow::bail!(
            "refusing to serve the API in plaintext on {addr}, which other hosts can reach: give --tls DIR (mutual TLS), or listen on a loopback address"
        );
    }
    Ok(())
}

pub(crate) async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}
