//! Agent liveness on etcd: each agent attached to the leader holds an etcd lease, and its key
//! `agents/<id>` (its registration) is held by that lease. The leader renews an agent's lease
//! whenever the agent is heard from (attach, heartbeat, any message); when the agent is gone
//! (killed, cut off, or its stream ended and it did not come back), nobody renews it, etcd
//! expires the lease and deletes the key, and a watch on `agents/` tells the scheduler, which
//! only then gives the agent's tasks to others.
//!
//! The lease outlives a leader failover: a new leader finds the keys of the agents that were
//! attached, renews each lease once as it takes over, and keeps renewing those whose agents
//! attach to it. See [`agent_ttl`] for the lease's length.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use foldhash::HashMap;
use tokio::sync::{Notify, watch};

use super::etcd::{AGENTS, EtcdStore};
use super::fail;
use crate::error::Result;

/// The TTL of an agent's lease: the leader's TTL (a failover, during which nobody renews it),
/// then `missed` heartbeats and `grace` for the agent to attach to the new leader; in whole
/// seconds, as etcd grants them.
pub fn agent_ttl(leader_ttl: Duration, heartbeat: Duration, missed: u32, grace: Duration) -> i64 {
    (leader_ttl + heartbeat * missed + grace).as_secs_f64().ceil().max(1.0) as i64
}

/// One agent's lease, renewed by its own task.
struct Holder {
    /// Wakes the task to renew the lease once.
    beat: Arc<Notify>,
    /// Ends the task (the lease expired and the holder was dropped).
    gone: Arc<Notify>,
    /// The lease's id once granted or taken over (0 until then).
    lease: Arc<AtomicI64>,
}

type Holders = Arc<Mutex<HashMap<String, Holder>>>;

/// Drops `agent`'s holder, ending its task.
fn drop_holder(holders: &mut HashMap<String, Holder>, agent: &str) {
    if let Some(h) = holders.remove(agent) {
        h.gone.notify_one();
    }
}

/// The leases of the agents, held by the leader.
pub struct AgentLeases {
    store: EtcdStore,
    ttl_s: i64,
    holders: Holders,
    /// Turns true when the leases are dropped (the scheduler stopped): every task ends.
    stop: watch::Sender<bool>,
}

impl Drop for AgentLeases {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl AgentLeases {
    /// Takes over the leases of the agents whose keys are in etcd (renewing each once; their
    /// ids are returned), and watches `agents/` from then on: `expired` is called with the id
    /// of each agent whose lease expires.
    pub async fn start(store: EtcdStore, ttl_s: i64, expired: impl Fn(String) + Send + Sync + 'static) -> Result<(Self, Vec<String>)> {
        let prefix = store.full_key(AGENTS, "");
        let resp = store.client().get(prefix.as_str(), Some(GetOptions::new().with_prefix())).await.map_err(fail("etcd get"))?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let leases = AgentLeases { store, ttl_s, holders: Arc::default(), stop: watch::channel(false).0 };
        let mut alive = Vec::new();
        for kv in resp.kvs() {
            let id = String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned();
            leases.hold(&id, kv.lease(), None);
            alive.push(id);
        }
        tokio::spawn(watch_expiries(
            leases.store.client(),
            prefix,
            revision + 1,
            Arc::clone(&leases.holders),
            expired,
            leases.stop.subscribe(),
        ));
        tracing::info!(agents = alive.len(), ttl_s, "agent leases taken over");
        Ok((leases, alive))
    }

    /// An agent attached: renews its lease, or (the first time, or after it expired) grants one
    /// and writes its key with `registration`.
    pub fn attach(&self, agent: &str, registration: Vec<u8>) {
        let held = self.holders.lock().unwrap_or_else(|e| e.into_inner()).get(agent).map(|h| Arc::clone(&h.beat));
        match held {
            Some(beat) => beat.notify_one(),
            None => self.hold(agent, 0, Some(registration)),
        }
    }

    /// An attached agent was heard from: renews its lease.
    pub fn beat(&self, agent: &str) {
        if let Some(h) = self.holders.lock().unwrap_or_else(|e| e.into_inner()).get(agent) {
            h.beat.notify_one();
        }
    }

    /// Starts the task holding `agent`'s lease: takes over `lease` when it still runs, else
    /// grants one (writing the key with `registration`), renews it now and on every beat.
    fn hold(&self, agent: &str, lease: i64, registration: Option<Vec<u8>>) {
        let holder = Holder { beat: Arc::new(Notify::new()), gone: Arc::new(Notify::new()), lease: Arc::new(AtomicI64::new(0)) };
        let task = HolderTask {
            store: self.store.clone(),
            key: self.store.full_key(AGENTS, agent),
            agent: agent.to_string(),
            ttl_s: self.ttl_s,
            beat: Arc::clone(&holder.beat),
            gone: Arc::clone(&holder.gone),
            lease: Arc::clone(&holder.lease),
            holders: Arc::clone(&self.holders),
        };
        holder.beat.notify_one();
        self.holders.lock().unwrap_or_else(|e| e.into_inner()).insert(agent.to_string(), holder);
        tokio::spawn(task.run(lease, registration, self.stop.subscribe()));
    }
}

struct HolderTask {
    store: EtcdStore,
    key: String,
    agent: String,
    ttl_s: i64,
    beat: Arc<Notify>,
    gone: Arc<Notify>,
    lease: Arc<AtomicI64>,
    holders: Holders,
}

impl HolderTask {
    async fn run(self, adopt: i64, registration: Option<Vec<u8>>, mut stop: watch::Receiver<bool>) {
        let holding = async {
            let mut client = self.store.client();
            // etcd may be out for a moment; one that is out for long makes the leader step down
            // (and drop these tasks).
            let lease = loop {
                match self.acquire(&mut client, adopt, registration.clone()).await {
                    Ok(lease) => break lease,
                    Err(e) => tracing::warn!(agent = %self.agent, error = %e, "cannot hold the agent's etcd lease; trying again"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            };
            self.lease.store(lease, Ordering::SeqCst);
            loop {
                match self.renew(&mut client, lease).await {
                    Ok(()) => return,
                    Err(e) => tracing::warn!(agent = %self.agent, error = %e, "cannot renew the agent's etcd lease; trying again"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        tokio::select! {
            () = holding => self.forget(),
            () = self.gone.notified() => {}
            _ = stop.changed() => {}
        }
    }

    /// Renews `lease` on every beat until etcd says it expired (`Ok`), or the stream fails.
    async fn renew(&self, client: &mut Client, lease: i64) -> Result<()> {
        let (mut keeper, mut answers) = client.lease_keep_alive(lease).await.map_err(fail("etcd lease keep-alive"))?;
        loop {
            self.beat.notified().await;
            keeper.keep_alive().await.map_err(fail("etcd lease keep-alive"))?;
            let answer = tokio::time::timeout(Duration::from_secs(self.ttl_s as u64), answers.message()).await;
            match answer {
                Ok(Ok(Some(a))) if a.ttl() <= 0 => {
                    tracing::warn!(agent = %self.agent, lease, "the agent's etcd lease expired");
                    return Ok(());
                }
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) => return Err(fail("etcd lease keep-alive")("the stream ended")),
                Ok(Err(e)) => return Err(fail("etcd lease keep-alive")(e)),
                Err(_) => return Err(fail("etcd lease keep-alive")("no answer")),
            }
        }
    }

    /// Takes over `adopt` if it still runs, else grants a lease; writes the key (always when
    /// granted; with the new registration when taken over).
    async fn acquire(&self, client: &mut Client, adopt: i64, registration: Option<Vec<u8>>) -> Result<i64> {
        if adopt != 0 {
            let alive = client.lease_time_to_live(adopt, None).await.map_err(fail("etcd lease ttl"))?.ttl() > 0;
            if alive {
                if let Some(value) = registration {
                    self.store.put_leased(&self.key, value, adopt).await?;
                }
                return Ok(adopt);
            }
        }
        let lease = client.lease_grant(self.ttl_s, None).await.map_err(fail("etcd lease grant"))?.id();
        self.store.put_leased(&self.key, registration.unwrap_or_default(), lease).await?;
        tracing::debug!(agent = %self.agent, lease, ttl_s = self.ttl_s, "agent lease granted");
        Ok(lease)
    }

    /// Removes this holder from the map (unless another one replaced it).
    fn forget(&self) {
        let mut holders = self.holders.lock().unwrap_or_else(|e| e.into_inner());
        if holders.get(&self.agent).is_some_and(|h| Arc::ptr_eq(&h.beat, &self.beat)) {
            holders.remove(&self.agent);
        }
    }
}

/// Watches `prefix` from `revision` on and calls `expired` for each agent key deleted with the
/// lease its holder has (or with no holder left); a deletion of an older lease is ignored.
async fn watch_expiries(
    mut client: Client,
    prefix: String,
    mut revision: i64,
    holders: Holders,
    expired: impl Fn(String),
    mut stop: watch::Receiver<bool>,
) {
    loop {
        // Progress notices move `revision` on while no agent key changes, so that a watch made
        // again after an outage does not start before etcd's compaction.
        let options = WatchOptions::new().with_prefix().with_start_revision(revision).with_prev_key().with_progress_notify();
        let watching = async {
            let mut stream = client.watch(prefix.as_str(), Some(options)).await.map_err(fail("etcd watch"))?;
            while let Some(resp) = stream.message().await.map_err(fail("etcd watch"))? {
                if resp.canceled() {
                    // Compacted past `revision` (or refused): what happened meanwhile is read
                    // from the keys as they are.
                    tracing::warn!(
                        reason = resp.cancel_reason(),
                        compacted = resp.compact_revision(),
                        "the watch of agent leases was cancelled; reading the keys again"
                    );
                    revision = resync(&mut client, &prefix, &holders, &expired).await?;
                    return Ok(());
                }
                for event in resp.events().iter().filter(|e| e.event_type() == EventType::Delete) {
                    let Some(kv) = event.kv() else { continue };
                    revision = revision.max(kv.mod_revision() + 1);
                    let agent = String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned();
                    let lease = event.prev_kv().map_or(0, |p| p.lease());
                    let mut held = holders.lock().unwrap_or_else(|e| e.into_inner());
                    let current = held.get(&agent).map(|h| h.lease.load(Ordering::SeqCst));
                    if current.is_some_and(|c| c != 0 && lease != 0 && c != lease) {
                        continue;
                    }
                    drop_holder(&mut held, &agent);
                    drop(held);
                    tracing::warn!(agent = %agent, lease, "agent lease expired");
                    expired(agent);
                }
                if let Some(h) = resp.header() {
                    revision = revision.max(h.revision() + 1);
                }
            }
            Ok::<(), crate::error::CoordinatorError>(())
        };
        tokio::select! {
            ended = watching => {
                if let Err(e) = ended {
                    tracing::warn!(error = %e, "the watch of agent leases ended; watching again");
                }
            }
            _ = stop.changed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Lists the agent keys: the holders of agents whose key is gone are dropped and reported
/// expired. Returns the revision to watch from.
async fn resync(client: &mut Client, prefix: &str, holders: &Holders, expired: &impl Fn(String)) -> Result<i64> {
    let resp = client.get(prefix, Some(GetOptions::new().with_prefix().with_keys_only())).await.map_err(fail("etcd get"))?;
    let present: std::collections::HashSet<String> =
        resp.kvs().iter().map(|kv| String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned()).collect();
    let gone: Vec<String> = {
        let mut held = holders.lock().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<String> = held.keys().filter(|a| !present.contains(a.as_str())).cloned().collect();
        for agent in &gone {
            drop_holder(&mut held, agent);
        }
        gone
    };
    for agent in gone {
        tracing::warn!(agent = %agent, "agent lease expired (found while reading the keys again)");
        expired(agent);
    }
    Ok(resp.header().map_or(0, |h| h.revision()) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_lease_outlasts_a_failover_and_a_reattach_in_whole_seconds() {
        let ms = Duration::from_millis;
        assert_eq!(agent_ttl(ms(2000), ms(300), 3, ms(2000)), 5, "2 + 0.9 + 2 s rounds up");
        assert_eq!(agent_ttl(ms(10_000), ms(5000), 3, ms(2000)), 27);
        assert_eq!(agent_ttl(ms(0), ms(0), 3, ms(0)), 1, "etcd grants whole seconds, at least one");
    }
}
