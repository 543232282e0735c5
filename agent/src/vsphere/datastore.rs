//! Disk files read from a datastore through vSphere's HTTP `/folder` interface, by byte range,
//! with the session's cookie: each read is one `GET` with `Range`, retried with backoff when the
//! server answers 5xx or the connection breaks. Reads are sequential in the export, so the
//! next [`READ_AHEAD`] ranges are fetched in parallel, each on a connection of its own, while
//! the pipeline works on the current one. A VMDK descriptor is followed to its one flat
//! extent (what ESXi keeps for thick and thin disks: `disk-flat.vmdk`); other kinds (sparse,
//! several extents) are refused by name.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use super::http::{HttpClient, Trust};
use super::{Connection, VsphereError};
use crate::error::{AgentError, Result};
use crate::source::disk::RangeRead;

/// Tries of one read before it fails.
const TRIES: u32 = 5;
/// The first pause between tries; doubled after each.
const FIRST_PAUSE: Duration = Duration::from_millis(200);
/// Ranges fetched ahead of the one asked for (each as large as it; memory: this many chunks).
pub const READ_AHEAD: u64 = 3;

/// One file of a datastore, read by ranges.
pub struct DatastoreFile {
    remote: Arc<Remote>,
    /// Ranges being fetched ahead, by (offset, length).
    ahead: Mutex<HashMap<(u64, usize), Fetching>>,
}

/// Where a range fetched ahead arrives.
type Fetching = mpsc::Receiver<Result<Vec<u8>>>;

/// Where the file is and how to ask for it.
struct Remote {
    /// Idle connections (one per range in flight at most).
    idle: Mutex<Vec<HttpClient>>,
    host: String,
    port: u16,
    trust: Option<Trust>,
    timeout: Duration,
    /// `/folder/...?dcPath=...&dsName=...`.
    path: String,
    cookie: String,
    /// `[datastore] folder/file`, for messages.
    name: String,
    size: u64,
}

impl std::fmt::Debug for DatastoreFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatastoreFile").field("name", &self.remote.name).field("size", &self.remote.size).finish()
    }
}

/// Percent-encodes `text` for a URL path (`/` kept) or query value.
fn encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `(datastore, path)` of `[datastore] path`.
pub fn split_backing(file: &str) -> Option<(&str, &str)> {
    let (ds, path) = file.strip_prefix('[')?.split_once(']')?;
    Some((ds, path.trim_start()))
}

impl DatastoreFile {
    /// Opens `file` (`[datastore] folder/name.vmdk`) of the datacenter at inventory path
    /// `datacenter` (`DC0`), following a VMDK descriptor to its flat extent.
    pub fn open(connection: &Connection, trust: Option<Trust>, cookie: &str, datacenter: &str, file: &str) -> Result<DatastoreFile> {
        let opened = Remote::open(connection, trust.clone(), cookie, datacenter, file)?;
        let head = match opened.size {
            0 => Vec::new(),
            size => opened.get(0, size.min(4096) - 1)?.0,
        };
        let remote = if head.starts_with(b"# Disk DescriptorFile") {
            let text = String::from_utf8_lossy(&head);
            let extent = flat_extent(&text).map_err(|why| AgentError::Invalid(format!("disk {file}: {why}")))?;
            let (ds, path) = split_backing(file).expect("opened above");
            let folder = path.rsplit_once('/').map_or("", |(f, _)| f);
            let flat = if folder.is_empty() { format!("[{ds}] {extent}") } else { format!("[{ds}] {folder}/{extent}") };
            Remote::open(connection, trust, cookie, datacenter, &flat)?
        } else {
            opened
        };
        Ok(DatastoreFile { remote: Arc::new(remote), ahead: Mutex::default() })
    }

    /// Starts fetching the ranges after `[offset, offset + len)` that are not under way.
    fn read_ahead(&self, offset: u64, len: usize) {
        let mut ahead = self.ahead.lock().unwrap_or_else(|e| e.into_inner());
        // Ranges behind this one will not be asked for.
        ahead.retain(|(o, _), _| *o > offset);
        for i in 1..=READ_AHEAD {
            let next = offset + i * len as u64;
            if next >= self.remote.size {
                break;
            }
            let l = (self.remote.size - next).min(len as u64) as usize;
            if ahead.contains_key(&(next, l)) {
                continue;
            }
            let (tx, rx) = mpsc::channel();
            let remote = Arc::clone(&self.remote);
            std::thread::spawn(move || {
                let _ = tx.send(remote.get(next, next + l as u64 - 1).map(|(body, _)| body));
            });
            ahead.insert((next, l), rx);
        }
    }
}

impl Remote {
    fn open(connection: &Connection, trust: Option<Trust>, cookie: &str, datacenter: &str, file: &str) -> Result<Remote> {
        let (ds, path) =
            split_backing(file).ok_or_else(|| AgentError::Invalid(format!("disk backing {file:?} is not [DATASTORE] PATH")))?;
        let path = format!("/folder/{}?dcPath={}&dsName={}", encode(path, true), encode(datacenter, false), encode(ds, false));
        let mut remote = Remote {
            idle: Mutex::default(),
            host: connection.url.host.clone(),
            port: connection.url.port,
            trust,
            timeout: connection.timeout,
            path,
            cookie: cookie.to_string(),
            name: file.to_string(),
            size: 0,
        };
        remote.size = remote.get(0, 0)?.1;
        Ok(remote)
    }

    /// One ranged GET of `[start, end]` (inclusive) on an idle connection (or a new one),
    /// retried; the body and the file's size.
    fn get(&self, start: u64, end: u64) -> Result<(Vec<u8>, u64)> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut client = match idle {
            Some(c) => c,
            None => HttpClient::new(&self.host, self.port, self.trust.clone(), self.timeout)?,
        };
        let got = self.get_on(&mut client, start, end);
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(client);
        got
    }

    fn get_on(&self, client: &mut HttpClient, start: u64, end: u64) -> Result<(Vec<u8>, u64)> {
        let range = format!("bytes={start}-{end}");
        let headers = [("Range", range.as_str()), ("Cookie", self.cookie.as_str())];
        let mut pause = FIRST_PAUSE;
        let mut last = String::new();
        for attempt in 1..=TRIES {
            // A server that ignores the range answers the whole file: refused, not read.
            // (Small error pages pass.)
            let expected = usize::try_from(end - start + 1).unwrap_or(usize::MAX).max(4096);
            match client.request("GET", &self.path, &headers, b"", expected, false) {
                Ok(r) if r.status == 206 => {
                    let total = r
                        .header("content-range")
                        .and_then(|c| c.rsplit_once('/'))
                        .and_then(|(_, t)| t.trim().parse().ok())
                        .ok_or_else(|| AgentError::Invalid(format!("disk {}: a ranged answer without its size", self.name)))?;
                    return Ok((r.body, total));
                }
                Ok(r) if r.status == 416 && start == 0 => return Ok((Vec::new(), 0)),
                Ok(r) if r.status == 404 => {
                    return Err(AgentError::Invalid(format!("disk file {} is not on the datastore (HTTP 404)", self.name)));
                }
                Ok(r) if r.status < 500 => {
                    return Err(AgentError::Invalid(format!(
                        "disk file {}: the server answered HTTP {} to a ranged read (it must serve byte ranges)",
                        self.name, r.status
                    )));
                }
                Ok(r) => last = format!("HTTP {}", r.status),
                Err(VsphereError::Unreachable { detail, .. }) => last = detail,
                Err(e) => return Err(e.into()),
            }
            if attempt < TRIES {
                tracing::warn!(file = %self.name, attempt, error = %last, "datastore read failed; trying again");
                std::thread::sleep(pause);
                pause *= 2;
            }
        }
        Err(AgentError::Invalid(format!("disk file {}: reading bytes {start}-{end} failed {TRIES} times, last: {last}", self.name)))
    }
}

impl RangeRead for DatastoreFile {
    fn size(&self) -> u64 {
        self.remote.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let pending = self.ahead.lock().unwrap_or_else(|e| e.into_inner()).remove(&(offset, buf.len()));
        self.read_ahead(offset, buf.len());
        let body = match pending.and_then(|rx| rx.recv().ok()) {
            Some(fetched) => fetched?,
            None => self.remote.get(offset, offset + buf.len() as u64 - 1)?.0,
        };
        if body.len() != buf.len() {
            return Err(AgentError::Invalid(format!(
                "disk file {}: asked for {} bytes at {offset}, got {}",
                self.remote.name,
                buf.len(),
                body.len()
            )));
        }
        buf.copy_from_slice(&body);
        Ok(())
    }
}

/// The file name of a descriptor's one flat extent.
fn flat_extent(descriptor: &str) -> std::result::Result<String, String> {
    let extents: Vec<&str> = descriptor
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("RW ") || l.starts_with("RDONLY ") || l.starts_with("NOACCESS "))
        .collect();
    let [extent] = extents.as_slice() else {
        return Err(format!("a VMDK descriptor with {} extents is not read yet (one flat extent is)", extents.len()));
    };
    let mut words = extent.splitn(4, ' ');
    let (_, _, kind, rest) = (words.next(), words.next(), words.next().unwrap_or(""), words.next().unwrap_or(""));
    if kind != "VMFS" && kind != "FLAT" {
        return Err(format!("a {kind} extent is not read yet (flat extents are)"));
    }
    let name = rest.trim().strip_prefix('"').and_then(|r| r.split_once('"')).map(|(n, _)| n).unwrap_or("");
    if name.is_empty() || name.contains('/') {
        return Err(format!("extent line {extent:?} names no file in the disk's folder"));
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_descriptor_leads_to_its_flat_extent_and_others_are_refused() {
        let thin = "# Disk DescriptorFile\nversion=1\nCID=fffffffe\ncreateType=\"vmfs\"\n\n# Extent description\nRW 2097152 VMFS \"web-flat.vmdk\"\n";
        assert_eq!(flat_extent(thin).unwrap(), "web-flat.vmdk");
        assert!(flat_extent("RW 8 SPARSE \"x-s001.vmdk\"").unwrap_err().contains("SPARSE"));
        assert!(flat_extent("RW 8 FLAT \"a.vmdk\" 0\nRW 8 FLAT \"b.vmdk\" 0").unwrap_err().contains("2 extents"));
        assert!(flat_extent("RW 8 FLAT \"../x\" 0").is_err());
        assert!(flat_extent("nothing").is_err());
    }

    #[test]
    fn backings_and_urls_are_written_as_vsphere_reads_them() {
        assert_eq!(split_backing("[LocalDS_0] DC0_H0_VM0/disk1.vmdk"), Some(("LocalDS_0", "DC0_H0_VM0/disk1.vmdk")));
        assert_eq!(split_backing("no brackets"), None);
        assert_eq!(encode("my vm/disk 1.vmdk", true), "my%20vm/disk%201.vmdk");
        assert_eq!(encode("DC/0&x", false), "DC%2F0%26x");
    }
}
