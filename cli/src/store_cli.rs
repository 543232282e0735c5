//! Where the coordinator keeps its state (`--store etcd://...` and its options), and
//! `hyperexport store migrate` from an embedded store into etcd.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use hyperexport_coordinator::store::etcd::{DEFAULT_PREFIX, EtcdOptions};
use serde_json::json;

use crate::Output;
use crate::progress::print_json;
use crate::remote::runtime;

/// The etcd store's options.
#[derive(Debug, Args)]
pub struct EtcdArgs {
    /// Keep the state in etcd instead of the data folder: etcd://HOST:PORT[,HOST:PORT...]
    /// (several coordinators on one etcd form an HA group; one leads).
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// Lease TTL of the leader, in seconds: a dead leader is replaced within about this long.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub etcd_ttl: u64,
    /// Key prefix in etcd.
    #[arg(long, default_value = DEFAULT_PREFIX, value_name = "PREFIX")]
    pub etcd_prefix: String,
    /// etcd user (with --etcd-password-file), when etcd has authentication on.
    #[arg(long, value_name = "USER", requires = "etcd_password_file")]
    pub etcd_user: Option<String>,
    /// File holding the etcd user's password.
    #[arg(long, value_name = "FILE", requires = "etcd_user")]
    pub etcd_password_file: Option<PathBuf>,
    /// CA certificate (PEM) of etcd's TLS: connect with https.
    #[arg(long, value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM), when etcd asks for one.
    #[arg(long, value_name = "FILE", requires = "etcd_key", requires = "etcd_ca")]
    pub etcd_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// HOST:PORT at which the other coordinators of the group reach this one (standbys forward
    /// calls there) [default: the address it listens on, which must then not be 0.0.0.0 or ::]
    #[arg(long, value_name = "HOST:PORT", requires = "store")]
    pub advertise: Option<String>,
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
}

impl EtcdArgs {
    /// The etcd options, or `None` for the embedded store.
    pub fn options(&self) -> Result<Option<EtcdOptions>> {
        let Some(url) = &self.store else { return Ok(None) };
        let hosts = url.strip_prefix("etcd://").ok_or_else(|| anyhow!("--store {url:?}: expected etcd://HOST:PORT[,HOST:PORT...]"))?;
        let tls = self.etcd_ca.is_some();
        let mut endpoints = Vec::new();
        for host in hosts.split(',') {
            let ok = host.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                bail!("--store {url:?}: {host:?} is not HOST:PORT");
            }
            endpoints.push(format!("{}://{host}", if tls { "https" } else { "http" }));
        }
        if self.etcd_ttl < 2 || self.etcd_ttl > 600 {
            bail!("--etcd-ttl {}: give 2 to 600 seconds", self.etcd_ttl);
        }
        if !self.etcd_prefix.starts_with('/') || !self.etcd_prefix.ends_with('/') {
            bail!("--etcd-prefix {:?}: it must start and end with '/'", self.etcd_prefix);
        }
        let user = match (&self.etcd_user, &self.etcd_password_file) {
            (Some(u), Some(f)) => {
                let password = String::from_utf8(read(f, "etcd password file")?).context("the etcd password file is not UTF-8")?;
                Some((u.clone(), password.trim_end_matches(['\n', '\r']).to_string()))
            }
            _ => None,
        };
        let tls = match &self.etcd_ca {
            Some(ca) => {
                let mut t = etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(read(ca, "etcd CA")?));
                if let (Some(cert), Some(key)) = (&self.etcd_cert, &self.etcd_key) {
                    t = t.identity(etcd_client::Identity::from_pem(read(cert, "etcd client certificate")?, read(key, "etcd client key")?));
                }
                Some(t)
            }
            None => None,
        };
        Ok(Some(EtcdOptions { endpoints, prefix: self.etcd_prefix.clone(), ttl: Duration::from_secs(self.etcd_ttl), user, tls }))
    }
}

/// `hyperexport store ...`
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy a stopped coordinator's embedded store into etcd (which must hold nothing under the
    /// prefix yet, and no coordinator may run on it).
    Migrate {
        /// The coordinator's data folder.
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// etcd://HOST:PORT[,HOST:PORT...]
        #[arg(long, value_name = "URL")]
        to: String,
        #[command(flatten)]
        etcd: EtcdArgs,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

/// Runs `hyperexport store ...`.
pub fn run(command: StoreCommand) -> Result<ExitCode> {
    let StoreCommand::Migrate { from, to, mut etcd, output } = command;
    if etcd.store.is_some() {
        bail!("give the etcd URL with --to");
    }
    etcd.store = Some(to.clone());
    let options = etcd.options()?.expect("--to is set");
    if !from.join(hyperexport_coordinator::store::DB_FILE).is_file() {
        bail!("{} holds no coordinator store ({} is missing)", from.display(), hyperexport_coordinator::store::DB_FILE);
    }
    let store =
        hyperexport_coordinator::store::JobStore::open(&from).with_context(|| format!("opening the store in {}", from.display()))?;
    let done = runtime()?.block_on(hyperexport_coordinator::store::migrate::migrate(&store, &options))?;
    match output {
        Output::Json => print_json(&json!({"event": "result", "operation": "store-migrate", "result": {
            "jobs": done.jobs, "checkpoints": done.checkpoints, "policies": done.policies, "replicas": done.replicas,
            "bandwidth": done.bandwidth, "to": to, "prefix": options.prefix}})),
        Output::Text => println!(
            "copied {} jobs, {} checkpoints, {} policies, {} replica states{} to {to} under {}",
            done.jobs,
            done.checkpoints,
            done.policies,
            done.replicas,
            if done.bandwidth { " and the bandwidth configuration" } else { "" },
            options.prefix
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// What a coordinator of an HA group needs to stand by.
pub struct Standby<'a> {
    pub options: &'a EtcdOptions,
    /// The address it serves on (the one it bound the first time, if `--listen` had port 0).
    pub listen: String,
    /// Where the others reach it (`--advertise`; default: the bound address).
    pub advertise: Option<String>,
    pub server_tls: Option<tonic::transport::ServerTlsConfig>,
    pub client_tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Standby<'_> {
    /// Stands by until this coordinator leads: while it knows which coordinator leads, it
    /// serves on its address and forwards every call there; while it does not (a takeover, or
    /// etcd out of reach), it listens on nothing, so that clients given the whole group go to
    /// another. Returns the store and the address, or `None` once `stop` turns true.
    pub async fn until_leading(
        &self,
        stop: tokio::sync::watch::Receiver<bool>,
        stepped_down: tokio::sync::watch::Sender<bool>,
        patient: bool,
    ) -> Result<Option<(hyperexport_coordinator::store::etcd::EtcdStore, std::net::SocketAddr)>> {
        // Bound once to learn the address (with port 0) that is this coordinator's identity.
        let addr =
            tokio::net::TcpListener::bind(&self.listen).await.with_context(|| format!("cannot listen on {}", self.listen))?.local_addr()?;
        // Its identity in the leader key: where standbys forward calls while it leads.
        let identity = match &self.advertise {
            Some(a) => a.clone(),
            None if addr.ip().is_unspecified() => {
                anyhow::bail!("--listen {addr} is every address: give --advertise HOST:PORT, where the other coordinators reach this one")
            }
            None => addr.to_string(),
        };
        println!("standing by on {addr}");
        std::io::Write::flush(&mut std::io::stdout())?;
        let (leader_tx, leader_rx) = tokio::sync::watch::channel(None);
        let forwarding =
            tokio::spawn(forward_while_led(addr, leader_rx, self.options.clone(), self.server_tls.clone(), self.client_tls.clone()));
        let led = hyperexport_coordinator::store::leader::lead(self.options, &identity, stop, stepped_down, patient, &leader_tx).await;
        // Calls forwarded to the old leader end with it; the port is free for the leader's server.
        forwarding.abort();
        let _ = forwarding.await;
        Ok(led.context("joining the coordinators on etcd")?.map(|store| (store, addr)))
    }
}

/// Serves the standby's server on `addr` whenever `leader` names a coordinator (job reads from
/// etcd, the rest forwarded), and nothing while it names none; runs until aborted.
async fn forward_while_led(
    addr: std::net::SocketAddr,
    mut leader: tokio::sync::watch::Receiver<Option<String>>,
    options: hyperexport_coordinator::store::etcd::EtcdOptions,
    server_tls: Option<tonic::transport::ServerTlsConfig>,
    client_tls: Option<tonic::transport::ClientTlsConfig>,
) {
    use hyperexport_coordinator::follower;
    let mut reads = None;
    loop {
        if leader.wait_for(Option::is_some).await.is_err() {
            return;
        }
        // One client to etcd for the reads, made once (and again after a failure); without
        // one, the standby forwards the reads too.
        if reads.is_none() {
            reads = match hyperexport_coordinator::store::etcd::reader(&options).await {
                Ok(store) => Some(hyperexport_coordinator::store::Store::Etcd(Box::new(store))),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read etcd; job reads are forwarded to the leader too");
                    None
                }
            };
        }
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(%addr, error = %e, "cannot listen to forward calls; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let forward = follower::Forward::new(leader.clone(), client_tls.clone());
        let mut serving = tokio::spawn(follower::serve(listener, forward, reads.clone(), server_tls.clone(), std::future::pending()));
        tokio::select! {
            _ = leader.wait_for(Option::is_none) => {}
            _ = &mut serving => {}
        }
        serving.abort();
        let _ = serving.await;
    }
}
