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
