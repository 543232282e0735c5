//! Leadership of the HA group: a lease-held key. A coordinator campaigns by creating `leader`
//! under a lease of `ttl` if nobody holds it, keeps the lease alive, and steps down (stops
//! writing, and the process stops serving) when it has not renewed it for two thirds of the
//! TTL, before the lease can expire and another coordinator take over. The leader key's
//! revision when it was created is the coordinator's term: assignments carry it, and agents
//! refuse those of an older term.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, EventType, PutOptions, Txn, TxnOp};
use tokio::sync::watch;

use super::etcd::{EtcdOptions, EtcdStore, LEADER_KEY, Leadership, connect};
use super::fail;
use crate::error::Result;

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
                let store = EtcdStore::new(client.clone(), options, Arc::clone(&leadership.0));
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
