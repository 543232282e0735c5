//! The etcd backend: coordinator state under `PREFIX` (default `/hyperexport/v1/`), one key per
//! record, each value the record's protobuf encoding:
//!
//! | key | value |
//! |---|---|
//! | `jobs/<id>` | `Job` |
//! | `checkpoints/<task id>` | `TaskCheckpointState` |
//! | `policies/<name>` | `Policy` |
//! | `replicas/<vm>\0<region>` | `ReplicaStatus` |
//! | `bandwidth/config` | `BandwidthConfig` |
//! | `leader` | the leading coordinator's address and a random nonce, held by its lease |
//!
//! Leadership is a lease-held key (`leader.rs`). Every write is a transaction guarded by
//! `leader` still holding this coordinator's value, so a coordinator that lost the key cannot
//! write even before it notices. The leader key's revision when it was created is the
//! coordinator's term: assignments carry it, and agents refuse those of an older term.
//!
//! Each write is also a compare-and-swap on every record it touches: the transaction holds
//! only if each record's mod revision is still the one this coordinator last read or wrote
//! (absent for a record it has never seen), so a record changed behind its back (by a tool, or
//! a coordinator that should not be writing) is never overwritten; the write fails instead.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use std::sync::{Arc, Mutex};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse};
use foldhash::HashMap;
use hyperexport_proto::v1::{Job, TaskCheckpointState};
use prost::Message;

use super::{Batch, fail, newest_first, replica_key};
use crate::error::{CoordinatorError, Result};

/// Operations per transaction at most (etcd's default `--max-txn-ops` is 128).
pub const MAX_TXN_OPS: usize = 100;
/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/hyperexport/v1/";
/// Key folders.
pub const JOBS: &str = "jobs/";
pub const CHECKPOINTS: &str = "checkpoints/";
pub const POLICIES: &str = "policies/";
pub const REPLICAS: &str = "replicas/";
pub const BANDWIDTH_KEY: &str = "bandwidth/config";
pub const LEADER_KEY: &str = "leader";
/// Agents attached to the leader, each key held by the agent's lease (see `leases.rs`).
pub const AGENTS: &str = "agents/";

/// How to reach etcd and lead.
#[derive(Clone)]
pub struct EtcdOptions {
    /// `host:port` of each member.
    pub endpoints: Vec<String>,
    /// Key prefix (ends with `/`).
    pub prefix: String,
    /// Leader lease TTL: a dead leader is replaced within about this long.
    pub ttl: Duration,
    /// User and password, when etcd has authentication on.
    pub user: Option<(String, String)>,
    /// TLS to etcd (CA, and a client identity when etcd asks for one).
    pub tls: Option<etcd_client::TlsOptions>,
}

impl std::fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Connects to etcd (each request times out after 5 s).
pub async fn connect(options: &EtcdOptions) -> Result<Client> {
    let mut connect = ConnectOptions::new().with_connect_timeout(Duration::from_secs(5)).with_timeout(Duration::from_secs(5));
    if let Some((user, password)) = &options.user {
        connect = connect.with_user(user.clone(), password.clone());
    }
    if let Some(tls) = &options.tls {
        connect = connect.with_tls(tls.clone());
    }
    Client::connect(&options.endpoints, Some(connect))
        .await
        .map_err(|e| CoordinatorError::Store { op: "connect to etcd", detail: format!("{}: {e}", options.endpoints.join(",")) })
}

/// What this coordinator holds while it leads (see `leader.rs`).
pub(super) struct Leadership {
    /// The leader key.
    pub(super) key: String,
    /// Its value while this coordinator holds it: its address and a nonce.
    pub(super) value: String,
    /// The key's creation revision.
    pub(super) term: u64,
    /// Set once the leadership is given up or lost.
    pub(super) lost: AtomicBool,
}

/// The etcd store of a leading coordinator.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: String,
    leadership: Arc<Leadership>,
    /// The leader lease's TTL.
    ttl: Duration,
    /// The mod revision of each record this coordinator has read or written, by full key (a
    /// record it has never seen must be absent when it writes it).
    revisions: Arc<Mutex<HashMap<Vec<u8>, i64>>>,
}

/// One record to write: its full key and new value (`None` deletes it).
struct Write {
    key: String,
    value: Option<Vec<u8>>,
}

/// What a write assumes of a record this coordinator has never seen.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unseen {
    /// It is absent (the scheduler loaded every record it writes, so an unseen one is new).
    Absent,
    /// Read its revision first (a single record written by an API call).
    Read,
}

impl EtcdStore {
    fn key(&self, folder: &str, name: &str) -> String {
        format!("{}{folder}{name}", self.prefix)
    }

    /// The coordinator's term (the leader key's creation revision).
    pub fn term(&self) -> u64 {
        self.leadership.term
    }

    /// The leader lease's TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The client (for the agent leases).
    pub(super) fn client(&self) -> Client {
        self.client.clone()
    }

    /// The full key of `folder/name`.
    pub(super) fn full_key(&self, folder: &str, name: &str) -> String {
        self.key(folder, name)
    }

    /// Writes a key held by `lease`, guarded by this coordinator's leadership only: etcd
    /// deletes such a key itself when the lease expires, so its revision is not tracked.
    pub(super) async fn put_leased(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<()> {
        if self.lost() {
            return Err(not_leader());
        }
        let put = TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease)));
        let resp =
            self.client.clone().txn(Txn::new().when(vec![self.guard()]).and_then(vec![put])).await.map_err(fail("etcd transaction"))?;
        if !resp.succeeded() {
            self.leadership.lost.store(true, Ordering::SeqCst);
            return Err(not_leader());
        }
        Ok(())
    }

    fn guard(&self) -> Compare {
        Compare::value(self.leadership.key.as_str(), CompareOp::Equal, self.leadership.value.as_str())
    }

    /// Remembers the revision of records read that this coordinator had not seen yet. A record
    /// it has seen keeps the revision it last wrote or read first: a later read must not make a
    /// change by another writer look like its own.
    fn seen<'a>(&self, kvs: impl IntoIterator<Item = &'a KeyValue>) {
        // A reader (a standby) writes nothing: it keeps no revisions.
        if self.leadership.value.is_empty() {
            return;
        }
        let mut revisions = self.revisions.lock().unwrap_or_else(|e| e.into_inner());
        for kv in kvs {
            revisions.entry(kv.key().to_vec()).or_insert(kv.mod_revision());
        }
    }

    /// The revision of each unseen record among `writes`, read from etcd.
    async fn read_unseen(&self, writes: &[Write]) -> Result<()> {
        for w in writes {
            let known = self.revisions.lock().unwrap_or_else(|e| e.into_inner()).contains_key(w.key.as_bytes());
            if !known {
                let resp = self.client.clone().get(w.key.as_str(), None).await.map_err(fail("etcd get"))?;
                self.seen(resp.kvs());
            }
        }
        Ok(())
    }

    /// Writes records in transactions of at most [`MAX_TXN_OPS`], each guarded by this
    /// coordinator's leadership and by every record's revision; for each record, whether it
    /// existed (deletes only).
    async fn guarded(&self, writes: Vec<Write>, unseen: Unseen) -> Result<Vec<bool>> {
        if self.leadership.lost.load(Ordering::SeqCst) {
            return Err(not_leader());
        }
        if unseen == Unseen::Read {
            self.read_unseen(&writes).await?;
        }
        let mut out = Vec::with_capacity(writes.len());
        for part in writes.chunks(MAX_TXN_OPS) {
            let mut when = vec![self.guard()];
            {
                let revisions = self.revisions.lock().unwrap_or_else(|e| e.into_inner());
                for w in part {
                    when.push(match revisions.get(w.key.as_bytes()).copied().unwrap_or(0) {
                        0 => Compare::version(w.key.as_str(), CompareOp::Equal, 0),
                        r => Compare::mod_revision(w.key.as_str(), CompareOp::Equal, r),
                    });
                }
            }
            let ops = part
                .iter()
                .map(|w| match &w.value {
                    Some(v) => TxnOp::put(w.key.as_str(), v.clone(), None),
                    None => TxnOp::delete(w.key.as_str(), None),
                })
                .collect::<Vec<_>>();
            let txn = Txn::new().when(when).and_then(ops).or_else(vec![TxnOp::get(self.leadership.key.as_str(), None)]);
            let resp = self.client.clone().txn(txn).await.map_err(fail("etcd transaction"))?;
            let mut revisions = self.revisions.lock().unwrap_or_else(|e| e.into_inner());
            if !resp.succeeded() {
                let ours = matches!(resp.op_responses().first(), Some(TxnOpResponse::Get(g))
                    if g.kvs().first().is_some_and(|kv| kv.value() == self.leadership.value.as_bytes()));
                if !ours {
                    self.leadership.lost.store(true, Ordering::SeqCst);
                    return Err(not_leader());
                }
                // Forget what was assumed of these records: a later write reads them afresh.
                for w in part {
                    revisions.remove(w.key.as_bytes());
                }
                return Err(CoordinatorError::Conflict(format!(
                    "a record changed in etcd since this coordinator read it (one of {} records from {:?}); nothing of it was written",
                    part.len(),
                    part[0].key
                )));
            }
            let revision = resp.header().map_or(0, |h| h.revision());
            for (w, r) in part.iter().zip(resp.op_responses()) {
                match &w.value {
                    Some(_) => {
                        revisions.insert(w.key.as_bytes().to_vec(), revision);
                        out.push(true);
                    }
                    None => {
                        revisions.remove(w.key.as_bytes());
                        out.push(matches!(r, TxnOpResponse::Delete(d) if d.deleted() > 0));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Writes a batch while this coordinator leads.
    pub async fn write(&self, batch: &Batch) -> Result<()> {
        let mut writes = Vec::new();
        let mut put = |key: String, value: Vec<u8>| writes.push(Write { key, value: Some(value) });
        for job in &batch.jobs {
            put(self.key(JOBS, &job.id), job.bytes.clone());
        }
        for (task, state) in &batch.checkpoints {
            put(self.key(CHECKPOINTS, task), state.encode_to_vec());
        }
        for r in &batch.replicas {
            put(self.key(REPLICAS, &replica_key(&r.vm, &r.region)), r.encode_to_vec());
        }
        for task in &batch.forget {
            writes.push(Write { key: self.key(CHECKPOINTS, task), value: None });
        }
        self.guarded(writes, Unseen::Absent).await.map(drop)
    }

    /// Creates or replaces `folder/name` (`folder` alone when `name` is empty).
    pub async fn put<M: Message>(&self, folder: &str, name: &str, value: &M) -> Result<()> {
        self.guarded(vec![Write { key: self.key(folder, name), value: Some(value.encode_to_vec()) }], Unseen::Read).await.map(drop)
    }

    /// Deletes `folder/name`; whether it existed.
    pub async fn delete(&self, folder: &str, name: &str) -> Result<bool> {
        let existed = self.guarded(vec![Write { key: self.key(folder, name), value: None }], Unseen::Read).await?;
        Ok(existed.first().copied().unwrap_or(false))
    }

    /// The record at `key`, if any.
    pub async fn one<M: Message + Default>(&self, key: &str) -> Result<Option<M>> {
        let resp = self.client.clone().get(self.key(key, ""), None).await.map_err(fail("etcd get"))?;
        self.seen(resp.kvs());
        resp.kvs().first().map(|kv| M::decode(kv.value()).map_err(fail("decode"))).transpose()
    }

    /// Every record under `folder`, with its name.
    async fn named<M: Message + Default>(&self, folder: &str) -> Result<Vec<(String, M)>> {
        let prefix = self.key(folder, "");
        let resp = self.client.clone().get(prefix.as_str(), Some(GetOptions::new().with_prefix())).await.map_err(fail("etcd get"))?;
        self.seen(resp.kvs());
        resp.kvs()
            .iter()
            .map(|kv| {
                let name = String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned();
                Ok((name, M::decode(kv.value()).map_err(fail("decode"))?))
            })
            .collect()
    }

    /// Every record under `folder`.
    pub async fn all<M: Message + Default>(&self, folder: &str) -> Result<Vec<M>> {
        Ok(self.named(folder).await?.into_iter().map(|(_, m)| m).collect())
    }

    /// One job.
    pub async fn get(&self, id: &str) -> Result<Option<Job>> {
        self.one(&format!("{JOBS}{id}")).await
    }

    /// Every job, newest first.
    pub async fn list(&self) -> Result<Vec<Job>> {
        let mut jobs = self.all(JOBS).await?;
        newest_first(&mut jobs);
        Ok(jobs)
    }

    /// Every checkpoint, by task id.
    pub async fn checkpoints(&self) -> Result<Vec<(String, TaskCheckpointState)>> {
        self.named(CHECKPOINTS).await
    }

    /// Whether this coordinator has stepped down (or found another one leading).
    pub fn lost(&self) -> bool {
        self.leadership.lost.load(Ordering::SeqCst)
    }

    /// Gives the leadership up (its writes stop at once, and the lease is revoked soon after, so
    /// that another coordinator need not wait for it to expire).
    pub fn step_down(&self) {
        self.leadership.lost.store(true, Ordering::SeqCst);
    }
}

impl EtcdStore {
    /// The store of the coordinator that holds `leadership`.
    pub(super) fn new(client: Client, options: &EtcdOptions, leadership: Arc<Leadership>) -> Self {
        EtcdStore { client, prefix: options.prefix.clone(), leadership, ttl: options.ttl, revisions: Arc::default() }
    }
}

/// A store on etcd for reads only (a standby answers job reads from it); every write is refused.
pub async fn reader(options: &EtcdOptions) -> Result<EtcdStore> {
    let client = connect(options).await?;
    let key = format!("{}{LEADER_KEY}", options.prefix);
    Ok(EtcdStore::new(client, options, Arc::new(Leadership { key, value: String::new(), term: 0, lost: AtomicBool::new(true) })))
}

pub(super) fn not_leader() -> CoordinatorError {
    CoordinatorError::Store { op: "write", detail: "this coordinator no longer leads (the etcd leader key is gone or another's)".into() }
}
