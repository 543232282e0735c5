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
//! Leadership is a lease-held key: a coordinator campaigns by creating `leader` under a lease
//! of `ttl` if nobody holds it, keeps the lease alive, and steps down (stops writing, and the
//! process stops serving) when it has not renewed it for two thirds of the TTL, before the lease
//! can expire and another coordinator take over. Every write is a transaction guarded by
//! `leader` still holding this coordinator's value, so a coordinator that lost the key cannot
//! write even before it notices. The leader key's revision when it was created is the
//! coordinator's term: assignments carry it, and agents refuse those of an older term.
//!
//! Each write is also a compare-and-swap on every record it touches: the transaction holds
//! only if each record's mod revision is still the one this coordinator last read or wrote
//! (absent for a record it has never seen), so a record changed behind its back (by a tool, or
//! a coordinator that should not be writing) is never overwritten; the write fails instead.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use std::sync::{Arc, Mutex};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse};
use foldhash::HashMap;
use hyperexport_proto::v1::{Job, TaskCheckpointState};
use prost::Message;
use tokio::sync::watch;

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
#[derive(Debug, Clone)]
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

/// What this coordinator holds while it leads.
struct Leadership {
    key: String,
    value: String,
    term: u64,
    lost: AtomicBool,
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

    /// Remembers the revision of records read (never going back: a read that raced a write of
    /// this coordinator's may return the older one).
    fn seen<'a>(&self, kvs: impl IntoIterator<Item = &'a KeyValue>) {
        let mut revisions = self.revisions.lock().unwrap_or_else(|e| e.into_inner());
        for kv in kvs {
            let r = revisions.entry(kv.key().to_vec()).or_insert(0);
            *r = (*r).max(kv.mod_revision());
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
            put(self.key(JOBS, &job.id), job.encode_to_vec());
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

/// A store on etcd for reads only (a standby answers job reads from it); every write is refused.
pub async fn reader(options: &EtcdOptions) -> Result<EtcdStore> {
    let client = connect(options).await?;
    let key = format!("{}{LEADER_KEY}", options.prefix);
    Ok(EtcdStore {
        client,
        prefix: options.prefix.clone(),
        leadership: Arc::new(Leadership { key, value: String::new(), term: 0, lost: AtomicBool::new(true) }),
        ttl: options.ttl,
        revisions: Arc::default(),
    })
}

fn not_leader() -> CoordinatorError {
    CoordinatorError::Store { op: "write", detail: "this coordinator no longer leads (the etcd leader key is gone or another's)".into() }
}

/// Campaigns until this coordinator leads (or `stopping` turns true: `None`), then keeps its
/// lease alive in the background. `identity` is stored in the leader key (the address it serves
/// on). `stepped_down` turns true when the leadership is lost; `leader` is kept up to date with
/// the address of the coordinator that leads meanwhile (for a standby's forwarding). Unless
/// `patient`, failing to
/// reach etcd at first is an error (a wrong address should be said at once); once it was
/// reached, outages are waited out.
pub async fn lead(
    options: &EtcdOptions,
    identity: &str,
    mut stopping: watch::Receiver<bool>,
    stepped_down: watch::Sender<bool>,
    patient: bool,
    leader: &watch::Sender<Option<String>>,
) -> Result<Option<EtcdStore>> {
    let probe = format!("{}{LEADER_KEY}", options.prefix);
    let mut client = loop {
        let reached = match connect(options).await {
            Ok(mut c) => c.get(probe.as_str(), None).await.map(|_| c).map_err(fail("reach etcd")),
            Err(e) => Err(e),
        };
        match reached {
            Ok(c) => break c,
            Err(e) if !patient => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "etcd unreachable; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stopping.changed() => return Ok(None),
                }
            }
        }
    };
    let mut nonce = [0u8; 8];
    hyperexport_shared::crypto::random_bytes(&mut nonce);
    let value = format!("{identity} {}", hex::encode(nonce));
    loop {
        if *stopping.borrow() {
            return Ok(None);
        }
        match campaign(&mut client, options, &value, &mut stopping, leader).await {
            Ok(Some(leadership)) => {
                let store = EtcdStore {
                    client: client.clone(),
                    prefix: options.prefix.clone(),
                    leadership: Arc::clone(&leadership.0),
                    ttl: options.ttl,
                    revisions: Arc::default(),
                };
                keep_alive(client, leadership.1, options.ttl, leadership.0, stepped_down).await?;
                return Ok(Some(store));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "etcd unavailable while standing by; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stopping.changed() => {}
                }
            }
        }
    }
}

/// One try: creates the leader key if nobody holds it (returns the leadership and its lease),
/// else waits until the key goes, a TTL passes or `stopping` changes.
async fn campaign(
    client: &mut Client,
    options: &EtcdOptions,
    value: &str,
    stopping: &mut watch::Receiver<bool>,
    leader: &watch::Sender<Option<String>>,
) -> Result<Option<(Arc<Leadership>, i64)>> {
    let key = format!("{}{LEADER_KEY}", options.prefix);
    let ttl = options.ttl.as_secs().max(1) as i64;
    let lease = client.lease_grant(ttl, None).await.map_err(fail("etcd lease grant"))?.id();
    let put = TxnOp::put(key.as_str(), value, Some(PutOptions::new().with_lease(lease)));
    let txn = Txn::new().when(vec![Compare::create_revision(key.as_str(), CompareOp::Equal, 0)]).and_then(vec![put]);
    let resp = client.txn(txn).await.map_err(fail("etcd campaign"))?;
    if resp.succeeded() {
        let term = resp.header().map_or(0, |h| h.revision()).max(1) as u64;
        tracing::info!(term, ttl_s = ttl, "leading: this coordinator holds the etcd leader key");
        return Ok(Some((Arc::new(Leadership { key, value: value.to_string(), term, lost: AtomicBool::new(false) }), lease)));
    }
    let _ = client.lease_revoke(lease).await;
    let holder = client.get(key.as_str(), None).await.ok().and_then(|r| r.kvs().first().map(|kv| kv.value_str().unwrap_or("").to_string()));
    tracing::info!(leader = holder.as_deref().unwrap_or("?"), "standby: another coordinator leads");
    // The key's value is the leader's address and a nonce.
    leader.send_replace(holder.as_deref().and_then(|h| h.split_whitespace().next()).map(str::to_string));
    // Wait for the key to go (or a TTL, in case the watch misses it), then try again.
    let mut watch = client.watch(key.as_str(), None).await.map_err(fail("etcd watch"))?;
    let gone = async {
        while let Ok(Some(resp)) = watch.message().await {
            if resp.events().iter().any(|e| e.event_type() == EventType::Delete) {
                return;
            }
        }
    };
    tokio::select! {
        () = gone => {}
        _ = tokio::time::sleep(options.ttl) => {}
        _ = stopping.changed() => {}
    }
    leader.send_replace(None);
    Ok(None)
}

/// Renews the lease every third of the TTL; marks the leadership lost (and says so on
/// `stepped_down`) once it has gone two thirds of the TTL without a renewal, or etcd says the
/// lease is gone.
async fn keep_alive(
    mut client: Client,
    lease: i64,
    ttl: Duration,
    leadership: Arc<Leadership>,
    stepped_down: watch::Sender<bool>,
) -> Result<()> {
    let (mut keeper, mut responses) = client.lease_keep_alive(lease).await.map_err(fail("etcd lease keep-alive"))?;
    tokio::spawn(async move {
        let step = ttl / 3;
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(step).await;
            if leadership.lost.load(Ordering::SeqCst) {
                tracing::warn!("stepping down: this coordinator gave its leadership up");
                break;
            }
            let renew = async {
                keeper.keep_alive().await.ok()?;
                responses.message().await.ok().flatten()
            };
            match tokio::time::timeout(step, renew).await {
                Ok(Some(r)) if r.ttl() > 0 => renewed = Instant::now(),
                Ok(Some(_)) => {
                    tracing::error!("the etcd lease of this coordinator expired; stepping down");
                    break;
                }
                _ => tracing::warn!(since_ms = renewed.elapsed().as_millis() as u64, "cannot renew the etcd leader lease"),
            }
            if renewed.elapsed() >= ttl * 2 / 3 {
                tracing::error!(ttl_ms = ttl.as_millis() as u64, "etcd unreachable for two thirds of the lease TTL; stepping down");
                break;
            }
        }
        leadership.lost.store(true, Ordering::SeqCst);
        let _ = stepped_down.send(true);
        // Best effort: give the key up at once rather than when the lease runs out.
        let _ = tokio::time::timeout(Duration::from_secs(1), client.lease_revoke(lease)).await;
    });
    Ok(())
}
