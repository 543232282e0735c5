//! Disk files read from a datastore through vSphere's HTTP `/folder` interface, by byte range,
//! with the session's cookie: each read is one `GET` with `Range`, retried with backoff when the
//! server answers 5xx or the connection breaks. A VMDK descriptor is followed to its one flat
//! extent (what ESXi keeps for thick and thin disks: `disk-flat.vmdk`); other kinds (sparse,
//! several extents) are refused by name.

use std::sync::Mutex;
use std::time::Duration;

use super::http::{HttpClient, Trust};
use super::{Connection, VsphereError};
use crate::error::{AgentError, Result};
use crate::source::disk::RangeRead;

/// Tries of one read before it fails.
const TRIES: u32 = 5;
/// The first pause between tries; doubled after each.
const FIRST_PAUSE: Duration = Duration::from_millis(200);

/// One file of a datastore, read by ranges.
pub struct DatastoreFile {
    client: Mutex<HttpClient>,
    /// `/folder/...?dcPath=...&dsName=...`.
    path: String,
    cookie: String,
    /// `[datastore] folder/file`, for messages.
    name: String,
    size: u64,
}

impl std::fmt::Debug for DatastoreFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatastoreFile").field("name", &self.name).field("size", &self.size).finish()
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
        let opened = Self::open_file(connection, trust.clone(), cookie, datacenter, file)?;
        let mut head = vec![0u8; opened.size.min(4096) as usize];
        opened.read_at(0, &mut head)?;
        if !head.starts_with(b"# Disk DescriptorFile") {
            return Ok(opened);
        }
        let text = String::from_utf8_lossy(&head);
        let extent = flat_extent(&text).map_err(|why| AgentError::Invalid(format!("disk {file}: {why}")))?;
        let (ds, path) = split_backing(file).expect("opened above");
        let folder = path.rsplit_once('/').map_or("", |(f, _)| f);
        let flat = if folder.is_empty() { format!("[{ds}] {extent}") } else { format!("[{ds}] {folder}/{extent}") };
        Self::open_file(connection, trust, cookie, datacenter, &flat)
    }

    fn open_file(connection: &Connection, trust: Option<Trust>, cookie: &str, datacenter: &str, file: &str) -> Result<DatastoreFile> {
        let (ds, path) =
            split_backing(file).ok_or_else(|| AgentError::Invalid(format!("disk backing {file:?} is not [DATASTORE] PATH")))?;
        let client = HttpClient::new(&connection.url.host, connection.url.port, trust, connection.timeout)?;
        let path = format!("/folder/{}?dcPath={}&dsName={}", encode(path, true), encode(datacenter, false), encode(ds, false));
        let mut opened = DatastoreFile { client: Mutex::new(client), path, cookie: cookie.to_string(), name: file.to_string(), size: 0 };
        let (_, total) = opened.get(0, 0)?;
        opened.size = total;
        Ok(opened)
    }

    /// One ranged GET of `[start, end]` (inclusive), retried; the body and the file's size.
    fn get(&self, start: u64, end: u64) -> Result<(Vec<u8>, u64)> {
        let range = format!("bytes={start}-{end}");
        let headers = [("Range", range.as_str()), ("Cookie", self.cookie.as_str())];
        let mut pause = FIRST_PAUSE;
        let mut last = String::new();
        for attempt in 1..=TRIES {
            let answer = self.client.lock().unwrap_or_else(|e| e.into_inner()).request("GET", &self.path, &headers, b"");
            match answer {
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
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let (body, _) = self.get(offset, offset + buf.len() as u64 - 1)?;
        if body.len() != buf.len() {
            return Err(AgentError::Invalid(format!(
                "disk file {}: asked for {} bytes at {offset}, got {}",
                self.name,
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
