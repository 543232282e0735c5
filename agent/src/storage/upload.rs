//! One large object written to an object store as a stream: a multipart upload whose parts go up
//! while the next are produced (a few in flight, so memory stays at a few parts), completed at the
//! end and aborted on any failure.
//!
//! Parts are ceil(size / 10,000) bytes rounded up to a MiB, at least 5 MiB (S3's limits: 10,000
//! parts, 5 MiB each but the last). A journal `uploads/<name>.json` in the repository the data
//! comes from names each upload while it runs; a process killed mid-upload leaves its journal,
//! and `hyperexport cleanup` aborts those uploads (object stores keep the parts of an upload that
//! was neither completed nor aborted, and bill them).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::Arc;

use hyperexport_shared::RepoError;
use hyperexport_shared::error::Result;
use hyperexport_shared::storage::{Durable, Storage};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{MultipartId, PutPayload};
use serde::{Deserialize, Serialize};

use super::bridge::Bridge;

/// Parts being uploaded at once.
const PARTS_IN_FLIGHT: usize = 4;
const MIB: u64 = 1 << 20;

/// The part size for an object of `total` bytes.
pub fn part_size(total: u64) -> usize {
    let size = total.div_ceil(10_000).div_ceil(MIB) * MIB;
    size.max(5 * MIB) as usize
}

/// What a journal says of a running upload.
#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    target: String,
    upload_id: String,
}

/// A streamed upload; see the module documentation.
pub struct Upload {
    bridge: Bridge,
    store: Arc<dyn MultipartStore>,
    path: Path,
    id: MultipartId,
    location: String,
    part_size: usize,
    buf: Vec<u8>,
    in_flight: VecDeque<tokio::task::JoinHandle<object_store::Result<PartId>>>,
    parts: Vec<PartId>,
    journal: Option<(Arc<dyn Storage>, String)>,
    written: u64,
    done: bool,
}

/// The store and object of `spec` (`s3://BUCKET/KEY`, `azure://...`, `gs://...`).
fn target(spec: &str) -> Result<(Arc<dyn MultipartStore>, Path, String)> {
    let Some((scheme, rest)) = spec.split_once("://").filter(|(s, _)| matches!(*s, "s3" | "azure" | "az" | "gs")) else {
        return Err(RepoError::Invalid(format!("{spec:?} is not an s3://, azure:// or gs:// object")));
    };
    let (_, store, key, location) = super::object_store_at(spec, scheme, rest)?;
    if key.is_empty() || key.ends_with('/') {
        return Err(RepoError::Invalid(format!("{spec:?} names no object (give BUCKET/KEY)")));
    }
    let path = Path::parse(&key).map_err(|e| RepoError::Invalid(format!("{spec:?}: {e}")))?;
    Ok((store, path, location))
}

fn failed(op: &'static str, location: &str) -> impl FnOnce(object_store::Error) -> RepoError {
    let location = location.to_string();
    move |e| RepoError::Storage { op, location, reason: super::object::describe(&e) }
}

impl Upload {
    /// Starts uploading an object of `total` bytes to `spec`; the upload is journaled in
    /// `journal` (the repository being read) until it ends.
    pub fn start(spec: &str, total: u64, journal: Option<Arc<dyn Storage>>) -> Result<Self> {
        let (store, path, location) = target(spec)?;
        let bridge = Bridge::new(&location)?;
        let (s, p) = (store.clone(), path.clone());
        let id = bridge.run(async move { s.create_multipart(&p).await }).map_err(failed("start an upload to", &location))?;
        let journal = match journal {
            Some(repo) => {
                let key = format!("uploads/{}.json", &hex::encode(<sha2::Sha256 as sha2::Digest>::digest(format!("{spec}\n{id}")))[..24]);
                let note = serde_json::to_vec(&Journal { target: spec.to_string(), upload_id: id.clone() }).expect("journal serializes");
                repo.write(&key, &note, Durable::Now)?;
                Some((repo, key))
            }
            None => None,
        };
        let part_size = part_size(total);
        Ok(Upload {
            bridge,
            store,
            path,
            id,
            location,
            part_size,
            buf: Vec::with_capacity(part_size),
            in_flight: VecDeque::new(),
            parts: Vec::new(),
            journal,
            written: 0,
            done: false,
        })
    }

    fn wait_oldest(&mut self) -> io::Result<()> {
        if let Some(handle) = self.in_flight.pop_front() {
            let part = self.bridge.run(handle).map_err(io::Error::other)?.map_err(io::Error::other)?;
            self.parts.push(part);
        }
        Ok(())
    }

    fn send_part(&mut self) -> io::Result<()> {
        if self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.wait_oldest()?;
        }
        let data = PutPayload::from(std::mem::replace(&mut self.buf, Vec::with_capacity(self.part_size)));
        let index = self.parts.len() + self.in_flight.len();
        let (store, path, id) = (self.store.clone(), self.path.clone(), self.id.clone());
        self.in_flight.push_back(self.bridge.spawn(async move { store.put_part(&path, &id, index, data).await }));
        Ok(())
    }

    /// Sends what is left, completes the upload and drops its journal; returns the object's size.
    pub fn finish(mut self) -> Result<u64> {
        let io_err = |location: &str| {
            let location = location.to_string();
            move |e: io::Error| RepoError::Storage { op: "upload", location, reason: e.to_string() }
        };
        if !self.buf.is_empty() || self.parts.len() + self.in_flight.len() == 0 {
            self.send_part().map_err(io_err(&self.location))?;
        }
        while !self.in_flight.is_empty() {
            self.wait_oldest().map_err(io_err(&self.location))?;
        }
        let (store, path, id, parts) = (self.store.clone(), self.path.clone(), self.id.clone(), std::mem::take(&mut self.parts));
        self.bridge
            .run(async move { store.complete_multipart(&path, &id, parts).await })
            .map_err(failed("complete the upload to", &self.location))?;
        self.done = true;
        if let Some((repo, key)) = &self.journal {
            repo.delete(key)?;
        }
        Ok(self.written)
    }
}

impl Write for Upload {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(self.part_size - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.written += n as u64;
        if self.buf.len() == self.part_size {
            self.send_part()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        for handle in self.in_flight.drain(..) {
            handle.abort();
        }
        let (store, path, id) = (self.store.clone(), self.path.clone(), self.id.clone());
        match self.bridge.run(async move { store.abort_multipart(&path, &id).await }) {
            Ok(()) => {
                if let Some((repo, key)) = &self.journal {
                    let _ = repo.delete(key);
                }
            }
            Err(e) => tracing::warn!(target = %self.location, error = %e, "could not abort an upload; `hyperexport cleanup` retries"),
        }
    }
}

/// Aborts the uploads whose journals are in `repo` (left by processes killed mid-upload: call
/// with the repository lock held exclusively, so that none is running); returns how many.
pub fn abort_journaled(repo: &dyn Storage, dry_run: bool) -> Result<u64> {
    let mut aborted = 0;
    for (key, _) in repo.list("uploads")? {
        let Some(bytes) = repo.read(&key)? else { continue };
        let journal: Journal = serde_json::from_slice(&bytes)
            .map_err(|e| RepoError::Corrupt { what: format!("upload journal {key}"), reason: e.to_string() })?;
        if !dry_run {
            let (store, path, location) = target(&journal.target)?;
            let bridge = Bridge::new(&location)?;
            let id = journal.upload_id.clone();
            let aborted_now = bridge.run(async move { store.abort_multipart(&path, &id).await });
            match aborted_now {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => repo.delete(&key)?,
                Err(e) => return Err(failed("abort the upload to", &location)(e)),
            }
        }
        aborted += 1;
    }
    Ok(aborted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_any_size_in_ten_thousand() {
        assert_eq!(part_size(0), 5 << 20);
        assert_eq!(part_size(2 << 30), 5 << 20);
        let tb = 5u64 << 40;
        assert!(part_size(tb) as u64 * 10_000 >= tb && part_size(tb).is_multiple_of(1 << 20));
        assert!(target("s3://bucket/").is_err() && target("s3://bucket").is_err() && target("/tmp/x").is_err());
    }
}
