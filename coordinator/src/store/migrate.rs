//! `hyperexport store migrate`: copies an embedded store into etcd, once, while no coordinator
//! runs on that etcd and before it holds any state (nothing is overwritten).

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use prost::Message;

use super::etcd::{BANDWIDTH_KEY, CHECKPOINTS, EtcdOptions, JOBS, LEADER_KEY, MAX_TXN_OPS, POLICIES, REPLICAS, connect};
use super::{JobStore, fail, replica_key};
use crate::error::{CoordinatorError, Result};

/// What was copied.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    pub jobs: usize,
    pub checkpoints: usize,
    pub policies: usize,
    pub replicas: usize,
    pub bandwidth: bool,
}

/// Copies every record of `from` under `options.prefix` in etcd. Refuses when a coordinator
/// leads on that etcd or when the prefix already holds anything.
pub async fn migrate(from: &JobStore, options: &EtcdOptions) -> Result<Migrated> {
    let mut client = connect(options).await?;
    let existing = client
        .get(options.prefix.as_str(), Some(GetOptions::new().with_prefix().with_count_only()))
        .await
        .map_err(fail("etcd get"))?
        .count();
    if existing > 0 {
        return Err(CoordinatorError::Conflict(format!(
            "etcd already holds {existing} keys under {:?}: nothing was written (migrate into an empty prefix)",
            options.prefix
        )));
    }
    let key = |folder: &str, name: &str| format!("{}{folder}{name}", options.prefix);
    let mut ops = Vec::new();
    let mut done = Migrated::default();
    for job in from.list()? {
        ops.push(TxnOp::put(key(JOBS, &job.id), job.encode_to_vec(), None));
        done.jobs += 1;
    }
    for (task, state) in from.checkpoints()? {
        ops.push(TxnOp::put(key(CHECKPOINTS, &task), state.encode_to_vec(), None));
        done.checkpoints += 1;
    }
    for policy in from.policies()? {
        ops.push(TxnOp::put(key(POLICIES, &policy.name), policy.encode_to_vec(), None));
        done.policies += 1;
    }
    for r in from.replicas()? {
        ops.push(TxnOp::put(key(REPLICAS, &replica_key(&r.vm, &r.region)), r.encode_to_vec(), None));
        done.replicas += 1;
    }
    let bandwidth = from.bandwidth()?;
    if bandwidth.config != crate::bandwidth::config::Compiled::default_config().config {
        ops.push(TxnOp::put(key(BANDWIDTH_KEY, ""), bandwidth.config.encode_to_vec(), None));
        done.bandwidth = true;
    }
    // Each part only while no coordinator leads (one that started meanwhile would not see the
    // rest); a refusal after the first part is reported with what was written.
    let leader = key(LEADER_KEY, "");
    let mut written = 0;
    let total = ops.len();
    let mut ops = ops.into_iter().peekable();
    while ops.peek().is_some() {
        let part: Vec<TxnOp> = ops.by_ref().take(MAX_TXN_OPS).collect();
        let n = part.len();
        let txn = Txn::new().when(vec![Compare::create_revision(leader.as_str(), CompareOp::Equal, 0)]).and_then(part);
        if !client.txn(txn).await.map_err(fail("etcd transaction"))?.succeeded() {
            return Err(CoordinatorError::Conflict(format!(
                "a coordinator leads on this etcd: stop it first ({written} of {total} records were written)"
            )));
        }
        written += n;
    }
    Ok(done)
}
