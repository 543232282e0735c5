//! Recovery points (`points/<vm>/<time>_<id>.json`): what a VM looked like at one moment.
//!
//! The file is `{"format","version","mac","point"}` where `mac` is the keyed BLAKE3 MAC of the exact
//! bytes of the `point` value, so a point cannot be altered without the repository key.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::chunk::{ChunkId, MAX_CHUNK_SIZE, validate_chunk_size};
use crate::crypto::RepoKeys;
use crate::error::{RepoError, Result};

/// `format` value of a point file.
pub const POINT_FORMAT: &str = "hyperexport-point";
/// Point format version.
pub const POINT_VERSION: u32 = 1;

/// Hardware of the VM as captured from its descriptor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmInfo {
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Guest OS as the source names it, if known.
    #[serde(default)]
    pub guest_os: Option<String>,
    /// Names of the networks the NICs connect to, one per NIC.
    #[serde(default)]
    pub networks: Vec<String>,
}

/// Where the point was taken from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceInfo {
    /// "ovf", "ova", "vmx" or "image".
    pub kind: String,
    /// The path or URL the user gave.
    pub location: String,
}

/// One disk of a point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskRecord {
    /// File name used when restoring (a plain name: no separators, not "." or "..").
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Chunk size used for this disk.
    pub chunk_size: u32,
    /// SHA-256 of the whole disk image (hex), as an OVF `.mf` lists it.
    pub sha256: String,
    /// One entry per chunk in order; `null` is a hole (all zeros, not stored).
    pub chunks: Vec<Option<ChunkId>>,
}

impl DiskRecord {
    /// Length of chunk `index` (the last one may be short).
    pub fn chunk_len(&self, index: usize) -> usize {
        let start = index as u64 * self.chunk_size as u64;
        (self.size - start).min(self.chunk_size as u64) as usize
    }
}

/// A recovery point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryPoint {
    /// Random id (32 hex digits).
    pub id: String,
    /// VM name.
    pub vm: String,
    /// Consistency time: when the source was captured (RFC 3339).
    pub time: String,
    /// Where it came from.
    pub source: SourceInfo,
    /// Hardware.
    pub vm_info: VmInfo,
    /// The source's OVF descriptor, verbatim, when it had one.
    #[serde(default)]
    pub ovf_descriptor: Option<String>,
    /// The previous point of the same VM this one was made incrementally from.
    #[serde(default)]
    pub parent: Option<String>,
    /// Disks in order.
    pub disks: Vec<DiskRecord>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    #[allow(dead_code)]
    format: String,
    #[allow(dead_code)]
    version: u32,
    mac: String,
    #[serde(borrow)]
    point: &'a RawValue,
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Returns whether `name` is safe to use as a file name inside a restore folder.
pub fn is_safe_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && name.len() <= 255 && !name.contains(['/', '\\', '\0'])
}

impl RecoveryPoint {
    /// Serializes the point into its file form, authenticated with `keys`.
    pub fn encode(&self, keys: &RepoKeys) -> Vec<u8> {
        let body = serde_json::to_string(self).expect("a point always serializes");
        let mac = keys.mac(body.as_bytes()).to_hex();
        format!("{{\"format\":\"{POINT_FORMAT}\",\"version\":{POINT_VERSION},\"mac\":\"{mac}\",\"point\":{body}}}\n").into_bytes()
    }

    /// Parses and authenticates a point file; `what` names it in errors.
    pub fn decode(keys: &RepoKeys, what: &str, bytes: &[u8]) -> Result<Self> {
        Self::parse(Some(keys), what, bytes)
    }

    /// Parses a point file without checking its MAC, for a holder of the file that has no key
    /// (a replica receiver, which needs the chunk list). Whoever restores from it authenticates
    /// it with [`RecoveryPoint::decode`].
    pub fn decode_unauthenticated(what: &str, bytes: &[u8]) -> Result<Self> {
        Self::parse(None, what, bytes)
    }

    fn parse(keys: Option<&RepoKeys>, what: &str, bytes: &[u8]) -> Result<Self> {
        let corrupt = |reason: String| RepoError::Corrupt { what: what.to_string(), reason };
        // Checks format and version before anything else.
        crate::config::parse_versioned::<serde_json::Value>(what, bytes, POINT_FORMAT, POINT_VERSION)?;
        let env: Envelope = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        let given = blake3::Hash::from_hex(&env.mac).map_err(|_| corrupt("mac is not 64 hex digits".into()))?;
        if let Some(keys) = keys
            && given != keys.mac(env.point.get().as_bytes())
        {
            return Err(corrupt("MAC does not match: the file was altered or belongs to another repository".into()));
        }
        let point: RecoveryPoint = serde_json::from_str(env.point.get()).map_err(|e| corrupt(e.to_string()))?;
        point.validate().map_err(corrupt)?;
        Ok(point)
    }

    /// The chunks the point refers to, each once.
    pub fn chunk_ids(&self) -> Vec<ChunkId> {
        let mut ids: Vec<ChunkId> = self.disks.iter().flat_map(|d| d.chunks.iter().flatten().copied()).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Checks the invariants a reader relies on.
    pub fn validate(&self) -> Result<(), String> {
        if !is_lower_hex(&self.id, 32) {
            return Err(format!("point id {:?} is not 32 lower-case hex digits", self.id));
        }
        for (i, d) in self.disks.iter().enumerate() {
            if !is_safe_file_name(&d.name) {
                return Err(format!("disk {i} has an unsafe name {:?}", d.name));
            }
            if self.disks[..i].iter().any(|o| o.name == d.name) {
                return Err(format!("disk name {:?} appears twice", d.name));
            }
            validate_chunk_size(d.chunk_size as u64).map_err(|e| format!("disk {:?}: {e}", d.name))?;
            debug_assert!(d.chunk_size <= MAX_CHUNK_SIZE);
            let expected = d.size.div_ceil(d.chunk_size as u64);
            if d.chunks.len() as u64 != expected {
                return Err(format!("disk {:?} lists {} chunks, its size needs {expected}", d.name, d.chunks.len()));
            }
            if !is_lower_hex(&d.sha256, 64) {
                return Err(format!("disk {:?} has a malformed sha256", d.name));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crypto::MasterKey;
    use proptest::prelude::*;

    pub(crate) fn sample() -> RecoveryPoint {
        RecoveryPoint {
            id: "0123456789abcdef0123456789abcdef".into(),
            vm: "web 01".into(),
            time: "2026-11-26T10:00:00.000Z".into(),
            source: SourceInfo { kind: "image".into(), location: "/vm/web.img".into() },
            vm_info: VmInfo { cpus: 2, memory_mib: 2048, guest_os: None, networks: vec!["lan".into()] },
            ovf_descriptor: None,
            parent: None,
            disks: vec![DiskRecord {
                name: "web.img".into(),
                size: (4 << 20) + 1,
                chunk_size: 4 << 20,
                sha256: "ab".repeat(32),
                chunks: vec![Some(ChunkId([1; 32])), None],
            }],
        }
    }

    #[test]
    fn round_trip_and_tamper() {
        let keys = RepoKeys::derive(&MasterKey([5; 32]), true);
        let p = sample();
        let bytes = p.encode(&keys);
        assert_eq!(RecoveryPoint::decode(&keys, "p", &bytes).unwrap(), p);
        let text = String::from_utf8(bytes.clone()).unwrap().replace("\"cpus\":2", "\"cpus\":3");
        assert!(RecoveryPoint::decode(&keys, "p", text.as_bytes()).unwrap_err().to_string().contains("MAC"));
        let other = RepoKeys::derive(&MasterKey([6; 32]), true);
        assert!(RecoveryPoint::decode(&other, "p", &bytes).is_err());
        let newer = String::from_utf8(bytes).unwrap().replace("\"version\":1", "\"version\":2");
        assert!(matches!(RecoveryPoint::decode(&keys, "p", newer.as_bytes()), Err(RepoError::UnsupportedVersion { .. })));
    }

    #[test]
    fn invariants() {
        let mut p = sample();
        p.disks[0].name = "../etc".into();
        assert!(p.validate().is_err());
        let mut p = sample();
        p.disks[0].chunks.pop();
        assert!(p.validate().is_err());
        let mut p = sample();
        p.disks[0].chunk_size = 1000;
        assert!(p.validate().is_err());
        assert_eq!(sample().disks[0].chunk_len(1), 1);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let keys = RepoKeys::derive(&MasterKey([5; 32]), false);
            let _ = RecoveryPoint::decode(&keys, "p", &bytes);
        }
    }
}
