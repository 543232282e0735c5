//! The embedded store (the default): jobs in a redb file under the coordinator's data folder. Every write is a
//! committed (fsynced) transaction before the caller goes on.

use std::path::Path;

use hyperexport_proto::v1::{Job, TaskCheckpointState};
use prost::Message;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::{Batch, fail, replica_key};
use crate::error::Result;

/// Jobs by id, each a protobuf-encoded `hyperexport.v1.Job`.
const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs_v1");
/// Checkpoints of unfinished tasks by task id, each a protobuf-encoded
/// `hyperexport.v1.TaskCheckpointState`.
const CHECKPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("checkpoints_v1");
/// Replication policies by name, each a protobuf-encoded `hyperexport.v1.Policy`.
pub(crate) const POLICIES: TableDefinition<&str, &[u8]> = TableDefinition::new("policies_v1");
/// Where each VM stands at each target region, by `vm NUL region`, each a protobuf-encoded
/// `hyperexport.v1.ReplicaStatus` (its point, consistency time and last attempt).
pub(crate) const REPLICAS: TableDefinition<&str, &[u8]> = TableDefinition::new("replicas_v1");
/// The bandwidth configuration under the key `config`, a protobuf-encoded
/// `hyperexport.v1.BandwidthConfig`.
pub(crate) const BANDWIDTH: TableDefinition<&str, &[u8]> = TableDefinition::new("bandwidth_v1");

/// File name of the database inside the data folder.
pub const DB_FILE: &str = "coordinator.redb";

/// The coordinator's durable state.
pub struct JobStore {
    pub(crate) db: redb::Database,
}

impl JobStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(fail("create data folder"))?;
        let db = redb::Database::create(dir.join(DB_FILE)).map_err(fail("open"))?;
        let txn = db.begin_write().map_err(fail("begin"))?;
        txn.open_table(JOBS).map_err(fail("create table"))?;
        txn.open_table(CHECKPOINTS).map_err(fail("create table"))?;
        txn.open_table(POLICIES).map_err(fail("create table"))?;
        txn.open_table(REPLICAS).map_err(fail("create table"))?;
        txn.open_table(BANDWIDTH).map_err(fail("create table"))?;
        txn.commit().map_err(fail("commit"))?;
        Ok(JobStore { db })
    }

    /// Writes a batch in one transaction.
    pub fn write(&self, batch: &Batch) -> Result<()> {
        let mut txn = self.db.begin_write().map_err(fail("begin"))?;
        if !batch.durable {
            txn.set_durability(redb::Durability::None).map_err(fail("set durability"))?;
        }
        {
            let mut jobs = txn.open_table(JOBS).map_err(fail("open table"))?;
            for job in &batch.jobs {
                jobs.insert(job.id.as_str(), job.bytes.as_slice()).map_err(fail("insert"))?;
            }
            let mut checkpoints = txn.open_table(CHECKPOINTS).map_err(fail("open table"))?;
            for (task, state) in &batch.checkpoints {
                checkpoints.insert(task.as_str(), state.encode_to_vec().as_slice()).map_err(fail("insert"))?;
            }
            for task in &batch.forget {
                checkpoints.remove(task.as_str()).map_err(fail("remove"))?;
            }
            let mut replicas = txn.open_table(REPLICAS).map_err(fail("open table"))?;
            for r in &batch.replicas {
                replicas.insert(replica_key(&r.vm, &r.region).as_str(), r.encode_to_vec().as_slice()).map_err(fail("insert"))?;
            }
        }
        txn.commit().map_err(fail("commit"))
    }

    /// Every checkpoint of an unfinished task, by task id.
    pub fn checkpoints(&self) -> Result<Vec<(String, TaskCheckpointState)>> {
        let txn = self.db.begin_read().map_err(fail("begin"))?;
        let table = txn.open_table(CHECKPOINTS).map_err(fail("open table"))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(fail("scan"))? {
            let (key, value) = entry.map_err(fail("scan"))?;
            out.push((key.value().to_string(), TaskCheckpointState::decode(value.value()).map_err(fail("decode checkpoint"))?));
        }
        Ok(out)
    }

    /// One job.
    pub fn get(&self, id: &str) -> Result<Option<Job>> {
        let txn = self.db.begin_read().map_err(fail("begin"))?;
        let table = txn.open_table(JOBS).map_err(fail("open table"))?;
        let value = table.get(id).map_err(fail("get"))?;
        value.map(|v| Job::decode(v.value()).map_err(fail("decode job"))).transpose()
    }

    /// Every job, newest first.
    pub fn list(&self) -> Result<Vec<Job>> {
        let txn = self.db.begin_read().map_err(fail("begin"))?;
        let table = txn.open_table(JOBS).map_err(fail("open table"))?;
        let mut jobs = Vec::new();
        for entry in table.iter().map_err(fail("scan"))? {
            let (_, value) = entry.map_err(fail("scan"))?;
            jobs.push(Job::decode(value.value()).map_err(fail("decode job"))?);
        }
        super::newest_first(&mut jobs);
        Ok(jobs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let job = Job { id: "j1".into(), created_unix_ms: 5, ..Default::default() };
        {
            let store = JobStore::open(dir.path()).unwrap();
            let j2 = Job { id: "j2".into(), created_unix_ms: 9, ..Default::default() };
            store.write(&Batch { jobs: vec![(&job).into(), (&j2).into()], durable: true, ..Default::default() }).unwrap();
        }
        let store = JobStore::open(dir.path()).unwrap();
        assert_eq!(store.get("j1").unwrap(), Some(job));
        assert_eq!(store.get("nope").unwrap(), None);
        assert_eq!(store.list().unwrap().iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), ["j2", "j1"]);
        let (first, more) = super::super::page(store.list().unwrap(), 1, None).unwrap();
        assert_eq!((first[0].id.as_str(), more), ("j2", true));
        let (second, more) = super::super::page(store.list().unwrap(), 1, Some("j2")).unwrap();
        assert_eq!((second[0].id.as_str(), more), ("j1", false));
        assert!(super::super::page(store.list().unwrap(), 1, Some("gone")).is_err());
        let state = TaskCheckpointState { disks: vec![Default::default()] };
        let batch = Batch { checkpoints: vec![("t1".into(), state.clone())], durable: true, ..Default::default() };
        store.write(&batch).unwrap();
        drop(store);
        let store = JobStore::open(dir.path()).unwrap();
        assert_eq!(store.checkpoints().unwrap(), vec![("t1".to_string(), state)]);
        store.write(&Batch { forget: vec!["t1".into()], durable: true, ..Default::default() }).unwrap();
        assert!(store.checkpoints().unwrap().is_empty());
    }
}
