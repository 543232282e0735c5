//! Reading OVA archives (USTAR): the entries an OVF package needs are extracted into a
//! temporary folder, checked against the package's `.mf` when it has one, and the folder is
//! then read like any OVF folder.
//!
//! An OVA is outside input: names are plain file names only (no folders, no `..`), sizes must
//! fit in the archive, header checksums must match, and only regular files are taken.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{AgentError, Result};

const BLOCK: u64 = 512;

/// One regular file in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// File name (a plain name: no `/`).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// What a 512-byte header block holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Header {
    /// A regular file.
    File(Entry),
    /// Another kind of entry (folder, link, pax or GNU extension) with this many data bytes.
    Other(u64),
    /// An all-zero block: the end of the archive.
    End,
}

fn octal(field: &[u8]) -> std::result::Result<u64, String> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // GNU base-256: big-endian after the marker bit.
        return field[1..]
            .iter()
            .try_fold(0u64, |acc, &b| acc.checked_mul(256).map(|v| v + b as u64))
            .ok_or_else(|| "size field overflows".to_string());
    }
    let text: String = field.iter().take_while(|&&b| b != 0).map(|&b| b as char).collect();
    let text = text.trim();
    if text.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(text, 8).map_err(|_| format!("numeric field {text:?} is not octal"))
}

/// Parses one header block.
pub fn parse_header(block: &[u8; 512]) -> std::result::Result<Header, String> {
    if block.iter().all(|&b| b == 0) {
        return Ok(Header::End);
    }
    let stored = octal(&block[148..156])?;
    let sum: u64 = block.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { b' ' as u64 } else { b as u64 }).sum();
    if stored != sum {
        return Err(format!("header checksum {stored} does not match {sum}"));
    }
    let size = octal(&block[124..136])?;
    let field = |range: std::ops::Range<usize>| -> std::result::Result<String, String> {
        let raw: Vec<u8> = block[range].iter().copied().take_while(|&b| b != 0).collect();
        String::from_utf8(raw).map_err(|_| "a name is not UTF-8".to_string())
    };
    let mut name = field(0..100)?;
    if &block[257..262] == b"ustar" {
        let prefix = field(345..500)?;
        if !prefix.is_empty() {
            name = format!("{prefix}/{name}");
        }
    }
    match block[156] {
        b'0' | 0 => {
            let name = name.strip_prefix("./").unwrap_or(&name).to_string();
            if name.is_empty() || name.contains('/') || name == ".." || name == "." || name.contains('\\') {
                return Err(format!("entry {name:?} is not a plain file name"));
            }
            Ok(Header::File(Entry { name, size }))
        }
        _ => Ok(Header::Other(size)),
    }
}

/// Lists the regular files of an archive with the offset of their data.
pub fn entries(archive: &mut (impl Read + Seek), archive_len: u64) -> std::result::Result<Vec<(Entry, u64)>, String> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    loop {
        if pos + BLOCK > archive_len {
            return Err("archive ends without its end-of-archive blocks".into());
        }
        let mut block = [0u8; 512];
        archive.seek(SeekFrom::Start(pos)).and_then(|_| archive.read_exact(&mut block)).map_err(|e| e.to_string())?;
        let header = parse_header(&block).map_err(|e| format!("at byte {pos}: {e}"))?;
        let data = pos + BLOCK;
        let size = match &header {
            Header::End => return Ok(out),
            Header::File(e) => e.size,
            Header::Other(size) => *size,
        };
        if size > archive_len - data {
            return Err(format!("at byte {pos}: entry of {size} bytes does not fit in the archive"));
        }
        if let Header::File(entry) = header {
            if out.iter().any(|(e, _): &(Entry, u64)| e.name == entry.name) {
                return Err(format!("entry {:?} appears twice", entry.name));
            }
            out.push((entry, data));
        }
        pos = data + size.div_ceil(BLOCK) * BLOCK;
    }
}

/// Extracts the OVF package in `ova` into `into`: the first `.ovf`, its `.mf` if any, and every
/// other regular file. When a `.mf` lists SHA-256 digests, each listed file must match.
/// Returns the path of the extracted `.ovf`.
pub fn extract(ova: &Path, into: &Path) -> Result<PathBuf> {
    let bad = |reason: String| AgentError::source(ova, reason);
    let mut file = File::open(ova).map_err(AgentError::io("open", ova))?;
    let len = file.metadata().map_err(AgentError::io("stat", ova))?.len();
    let list = entries(&mut file, len).map_err(|e| bad(format!("not a valid OVA (USTAR) archive: {e}")))?;
    let ovf = list
        .iter()
        .find(|(e, _)| e.name.to_ascii_lowercase().ends_with(".ovf"))
        .map(|(e, _)| e.name.clone())
        .ok_or_else(|| bad("the archive holds no .ovf descriptor".into()))?;
    let mut digests = Vec::new();
    for (entry, offset) in &list {
        let target = into.join(&entry.name);
        let mut out = File::create(&target).map_err(AgentError::io("create", &target))?;
        file.seek(SeekFrom::Start(*offset)).map_err(AgentError::io("seek", ova))?;
        let mut sha = Sha256::new();
        let mut reader = (&mut file).take(entry.size);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf).map_err(AgentError::io("read", ova))?;
            if n == 0 {
                break;
            }
            sha.update(&buf[..n]);
            io::Write::write_all(&mut out, &buf[..n]).map_err(AgentError::io("write", &target))?;
        }
        digests.push((entry.name.clone(), hex::encode(sha.finalize())));
    }
    if let Some((mf, _)) = list.iter().find(|(e, _)| e.name.to_ascii_lowercase().ends_with(".mf")) {
        let text = std::fs::read_to_string(into.join(&mf.name)).map_err(AgentError::io("read", into.join(&mf.name)))?;
        for line in text.lines().filter(|l| l.starts_with("SHA256(")) {
            let (name, digest) =
                line["SHA256(".len()..].split_once(")=").ok_or_else(|| bad(format!("malformed manifest line {line:?}")))?;
            let actual = digests
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, d)| d)
                .ok_or_else(|| bad(format!("the manifest lists {name:?}, which the archive does not hold")))?;
            if !actual.eq_ignore_ascii_case(digest.trim()) {
                return Err(bad(format!("{name} does not match its SHA-256 in the manifest")));
            }
        }
    }
    Ok(into.join(ovf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in files {
            out.extend_from_slice(&crate::ova::header(name, data.len() as u64, 0).unwrap());
            out.extend_from_slice(data);
            out.resize(out.len().next_multiple_of(512), 0);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    #[test]
    fn lists_what_our_writer_writes() {
        let a = archive(&[("vm.ovf", b"<Envelope/>"), ("disk.vmdk", &[7u8; 1000])]);
        let list = entries(&mut Cursor::new(&a), a.len() as u64).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].0, Entry { name: "disk.vmdk".into(), size: 1000 });
        assert_eq!(list[1].1, 1024 + 512);
    }

    #[test]
    fn refuses_hostile_archives() {
        let mut bad_name = crate::ova::header("x", 1, 0).unwrap();
        bad_name[..6].copy_from_slice(b"../etc");
        let sum: u32 = bad_name.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { b as u32 }).sum();
        bad_name[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        assert!(parse_header(&bad_name).unwrap_err().contains("plain file name"));
        let mut bad_sum = crate::ova::header("a", 1, 0).unwrap();
        bad_sum[0] = b'b';
        assert!(parse_header(&bad_sum).unwrap_err().contains("checksum"));
        let a = archive(&[("vm.ovf", b"<Envelope/>")]);
        assert!(entries(&mut Cursor::new(&a[..600]), 600).is_err(), "truncated archive");
        let mut huge = a.clone();
        let h = crate::ova::header("vm.ovf", 1 << 40, 0).unwrap();
        huge[..512].copy_from_slice(&h);
        assert!(entries(&mut Cursor::new(&huge), huge.len() as u64).unwrap_err().contains("does not fit"));
        let twice = archive(&[("a", b"1"), ("a", b"2")]);
        assert!(entries(&mut Cursor::new(&twice), twice.len() as u64).unwrap_err().contains("twice"));
    }
}
