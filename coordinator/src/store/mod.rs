//! The coordinator's durable state, behind one facade with two backends: the embedded store
//! (redb in the data folder, the default: one coordinator, no extra service) and etcd (an HA
//! group of coordinators, one of them the leader; see `etcd.rs`).
//!
//! Every method is async; the embedded backend runs its blocking calls off the reactor, except
//! [`Store::write`], which the scheduler calls from its own thread (see `scheduler::start`).

use std::sync::Arc;

use hyperexport_proto::v1::{BandwidthConfig, Job, Policy, ReplicaStatus, TaskCheckpointState};

use crate::bandwidth::config::{Compiled, compile};
use crate::error::{CoordinatorError, Result};

pub mod embedded;
pub mod etcd;
pub mod leader;
pub mod leases;
pub mod migrate;

pub(crate) use embedded::{BANDWIDTH, POLICIES, REPLICAS};
pub use embedded::{DB_FILE, JobStore};

/// Changes written together in one transaction.
#[derive(Default)]
pub struct Batch {
    /// Jobs to write, encoded.
    pub jobs: Vec<EncodedJob>,
    /// Checkpoints to write, by task id.
    pub checkpoints: Vec<(String, TaskCheckpointState)>,
    /// Checkpoints to delete (their tasks are finished).
    pub forget: Vec<String>,
    /// Replica states to write.
    pub replicas: Vec<ReplicaStatus>,
    /// Whether the commit must be on disk when it returns (state changes); progress alone may
    /// wait for the next durable commit (the embedded store; etcd always commits durably).
    pub durable: bool,
}

impl Batch {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty() && self.checkpoints.is_empty() && self.forget.is_empty() && self.replicas.is_empty()
    }
}

/// A job as the store keeps it: its id and its protobuf encoding (encoded straight from the
/// scheduler's copy, which is not cloned for the write).
pub struct EncodedJob {
    /// The job's id, its key.
    pub id: String,
    /// `Job` in protobuf.
    pub bytes: Vec<u8>,
}

impl From<&Job> for EncodedJob {
    fn from(job: &Job) -> Self {
        EncodedJob { id: job.id.clone(), bytes: prost::Message::encode_to_vec(job) }
    }
}

/// The key of a VM's state at a region.
pub fn replica_key(vm: &str, region: &str) -> String {
    format!("{vm}\u{0}{region}")
}

pub(crate) fn fail<E: std::fmt::Display>(op: &'static str) -> impl FnOnce(E) -> CoordinatorError {
    move |e| CoordinatorError::Store { op, detail: e.to_string() }
}

/// Runs `f` on the embedded store off the async reactor (redb reads and writes block).
pub async fn off_reactor<T: Send + 'static>(store: &Arc<JobStore>, f: impl FnOnce(&JobStore) -> Result<T> + Send + 'static) -> Result<T> {
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || f(&store)).await.map_err(|e| CoordinatorError::Store { op: "run", detail: e.to_string() })?
}

/// The store, whichever backend holds it.
#[derive(Clone)]
pub enum Store {
    /// redb in the coordinator's data folder.
    Embedded(Arc<JobStore>),
    /// etcd, written only while this coordinator leads.
    Etcd(Box<etcd::EtcdStore>),
}

impl Store {
    /// Writes a batch (one transaction on the embedded store; on etcd, transactions of at most
    /// [`etcd::MAX_TXN_OPS`] operations, each guarded by this coordinator's leadership). The
    /// embedded backend blocks the calling thread.
    pub async fn write(&self, batch: &Batch) -> Result<()> {
        match self {
            Store::Embedded(s) => s.write(batch),
            Store::Etcd(s) => s.write(batch).await,
        }
    }

    /// One job.
    pub async fn get(&self, id: &str) -> Result<Option<Job>> {
        match self {
            Store::Embedded(s) => {
                let id = id.to_string();
                off_reactor(s, move |s| s.get(&id)).await
            }
            Store::Etcd(s) => s.get(id).await,
        }
    }

    /// Every job, newest first.
    pub async fn list(&self) -> Result<Vec<Job>> {
        match self {
            Store::Embedded(s) => off_reactor(s, JobStore::list).await,
            Store::Etcd(s) => s.list().await,
        }
    }

    /// Up to `limit` jobs, newest first, after the job `after` names (a page token: the id of the
    /// last job of the previous page). Returns the page and whether more follow.
    pub async fn page(&self, limit: usize, after: Option<String>) -> Result<(Vec<Job>, bool)> {
        page(self.list().await?, limit, after.as_deref())
    }

    /// Every checkpoint of an unfinished task, by task id.
    pub async fn checkpoints(&self) -> Result<Vec<(String, TaskCheckpointState)>> {
        match self {
            Store::Embedded(s) => off_reactor(s, JobStore::checkpoints).await,
            Store::Etcd(s) => s.checkpoints().await,
        }
    }

    /// Every policy.
    pub async fn policies(&self) -> Result<Vec<Policy>> {
        match self {
            Store::Embedded(s) => off_reactor(s, JobStore::policies).await,
            Store::Etcd(s) => s.all(etcd::POLICIES).await,
        }
    }

    /// Every VM's state at every region it replicates to.
    pub async fn replicas(&self) -> Result<Vec<ReplicaStatus>> {
        match self {
            Store::Embedded(s) => off_reactor(s, JobStore::replicas).await,
            Store::Etcd(s) => s.all(etcd::REPLICAS).await,
        }
    }

    /// Creates or replaces a policy; durable on return.
    pub async fn put_policy(&self, policy: Policy) -> Result<()> {
        match self {
            Store::Embedded(s) => off_reactor(s, move |s| s.put_policy(&policy)).await,
            Store::Etcd(s) => s.put(etcd::POLICIES, &policy.name, &policy).await,
        }
    }

    /// Deletes a policy; whether it existed.
    pub async fn delete_policy(&self, name: &str) -> Result<bool> {
        match self {
            Store::Embedded(s) => {
                let name = name.to_string();
                off_reactor(s, move |s| s.delete_policy(&name)).await
            }
            Store::Etcd(s) => s.delete(etcd::POLICIES, name).await,
        }
    }

    /// The bandwidth configuration (the defaults when none was ever set).
    pub async fn bandwidth(&self) -> Result<Compiled> {
        match self {
            Store::Embedded(s) => off_reactor(s, JobStore::bandwidth).await,
            Store::Etcd(s) => match s.one::<BandwidthConfig>(etcd::BANDWIDTH_KEY).await? {
                Some(config) => compile(config),
                None => Ok(Compiled::default_config()),
            },
        }
    }

    /// Replaces the bandwidth configuration; durable on return.
    pub async fn put_bandwidth(&self, config: BandwidthConfig) -> Result<()> {
        match self {
            Store::Embedded(s) => off_reactor(s, move |s| s.put_bandwidth(&config)).await,
            Store::Etcd(s) => s.put(etcd::BANDWIDTH_KEY, "", &config).await,
        }
    }

    /// Gives up the leadership on etcd (nothing to do on the embedded store).
    pub fn step_down(&self) {
        if let Store::Etcd(s) = self {
            s.step_down();
        }
    }

    /// The fencing token of this coordinator's leadership: agents refuse assignments of an
    /// older term. 0 for the embedded store (one coordinator).
    pub fn term(&self) -> u64 {
        match self {
            Store::Embedded(_) => 0,
            Store::Etcd(s) => s.term(),
        }
    }
}

/// The page of `jobs` (newest first) after job `after`.
fn page(jobs: Vec<Job>, limit: usize, after: Option<&str>) -> Result<(Vec<Job>, bool)> {
    let start = match after {
        Some(id) => jobs
            .iter()
            .position(|j| j.id == id)
            .map(|i| i + 1)
            .ok_or_else(|| CoordinatorError::Invalid(format!("page token {id:?} names no job")))?,
        None => 0,
    };
    let more = jobs.len() > start + limit;
    Ok((jobs.into_iter().skip(start).take(limit).collect(), more))
}

/// Sorts jobs newest first (ties by id, so that pages are stable).
pub(crate) fn newest_first(jobs: &mut [Job]) {
    jobs.sort_by(|a, b| b.created_unix_ms.cmp(&a.created_unix_ms).then_with(|| b.id.cmp(&a.id)));
}
