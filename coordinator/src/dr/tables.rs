//! Policies and replica states in the store.

use hyperexport_proto::v1::{Policy, ReplicaStatus};
use prost::Message;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::Result;
use crate::store::{JobStore, POLICIES, REPLICAS, fail};

fn all<M: Message + Default>(store: &JobStore, table: TableDefinition<&str, &[u8]>, what: &'static str) -> Result<Vec<M>> {
    let txn = store.db.begin_read().map_err(fail("begin"))?;
    let table = txn.open_table(table).map_err(fail("open table"))?;
    let mut out = Vec::new();
    for entry in table.iter().map_err(fail("scan"))? {
        let (_, value) = entry.map_err(fail("scan"))?;
        out.push(M::decode(value.value()).map_err(fail(what))?);
    }
    Ok(out)
}

impl JobStore {
    /// Every policy, by name.
    pub fn policies(&self) -> Result<Vec<Policy>> {
        all(self, POLICIES, "decode policy")
    }

    /// Every VM's state at every region it replicates to.
    pub fn replicas(&self) -> Result<Vec<ReplicaStatus>> {
        all(self, REPLICAS, "decode replica state")
    }

    /// Creates or replaces a policy; durable on return.
    pub fn put_policy(&self, policy: &Policy) -> Result<()> {
        let txn = self.db.begin_write().map_err(fail("begin"))?;
        txn.open_table(POLICIES)
            .map_err(fail("open table"))?
            .insert(policy.name.as_str(), policy.encode_to_vec().as_slice())
            .map_err(fail("insert"))?;
        txn.commit().map_err(fail("commit"))
    }

    /// Deletes a policy; whether it existed.
    pub fn delete_policy(&self, name: &str) -> Result<bool> {
        let txn = self.db.begin_write().map_err(fail("begin"))?;
        let existed = txn.open_table(POLICIES).map_err(fail("open table"))?.remove(name).map_err(fail("remove"))?.is_some();
        txn.commit().map_err(fail("commit"))?;
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Batch;

    #[test]
    fn policies_and_replica_states_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let policy = Policy { name: "gold".into(), vm_glob: "web*".into(), regions: vec!["b".into()], ..Default::default() };
        let state = ReplicaStatus { vm: "web1".into(), region: "b".into(), point: "p".into(), point_unix_ms: 7, ..Default::default() };
        {
            let store = JobStore::open(dir.path()).unwrap();
            store.put_policy(&policy).unwrap();
            store.write(&Batch { replicas: vec![state.clone()], durable: true, ..Default::default() }).unwrap();
        }
        let store = JobStore::open(dir.path()).unwrap();
        assert_eq!(store.policies().unwrap(), vec![policy]);
        assert_eq!(store.replicas().unwrap(), vec![state]);
        assert!(store.delete_policy("gold").unwrap());
        assert!(!store.delete_policy("gold").unwrap());
        assert!(store.policies().unwrap().is_empty());
    }
}
