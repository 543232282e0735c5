//! What an agent reports about the VMs under its source folder, read from descriptors and
//! archive listings only (nothing is converted or hashed).

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::{folder_descriptor, ova_archive, vmx};
use crate::error::{AgentError, Result};

/// Longest `.ovf` read out of an OVA for the inventory.
const MAX_DESCRIPTOR: u64 = 16 << 20;

/// A VM as the inventory lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSummary {
    /// VM name (as an export of it would record).
    pub name: String,
    /// "ovf", "ova", "vmx" or "image".
    pub kind: &'static str,
    /// Number of disks.
    pub disks: u32,
}

fn from_descriptor(path: &Path) -> Result<VmSummary> {
    let text = fs::read_to_string(path).map_err(AgentError::io("read", path))?;
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("vmx")) {
        let v = vmx::parse(&text).map_err(|e| AgentError::source(path, e))?;
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        return Ok(VmSummary { name: v.name.unwrap_or(stem), kind: "vmx", disks: v.disks.len() as u32 });
    }
    let d = hyperexport_shared::ovf::parse(&text).map_err(|e| AgentError::source(path, e))?;
    Ok(VmSummary { name: d.name, kind: "ovf", disks: d.disks.len() as u32 })
}

fn from_ova(path: &Path) -> Result<VmSummary> {
    let mut file = fs::File::open(path).map_err(AgentError::io("open", path))?;
    let len = file.metadata().map_err(AgentError::io("stat", path))?.len();
    let list =
        ova_archive::entries(&mut file, len).map_err(|e| AgentError::source(path, format!("not a valid OVA (USTAR) archive: {e}")))?;
    let (entry, offset) = list
        .iter()
        .find(|(e, _)| e.name.to_ascii_lowercase().ends_with(".ovf"))
        .ok_or_else(|| AgentError::source(path, "the archive holds no .ovf descriptor"))?;
    if entry.size > MAX_DESCRIPTOR {
        return Err(AgentError::source(path, format!("its descriptor is {} bytes, over {MAX_DESCRIPTOR}", entry.size)));
    }
    let mut text = String::new();
    file.seek(SeekFrom::Start(*offset)).map_err(AgentError::io("seek", path))?;
    (&mut file).take(entry.size).read_to_string(&mut text).map_err(AgentError::io("read", path))?;
    let d = hyperexport_shared::ovf::parse(&text).map_err(|e| AgentError::source(path, e))?;
    Ok(VmSummary { name: d.name, kind: "ova", disks: d.disks.len() as u32 })
}

/// Describes the VM at `path` (what `source::open` would export).
pub fn describe(path: &Path) -> Result<VmSummary> {
    let meta = fs::metadata(path).map_err(AgentError::io("stat", path))?;
    if meta.is_dir() {
        return from_descriptor(&folder_descriptor(path)?);
    }
    match path.extension().map(|e| e.to_ascii_lowercase()).as_deref().and_then(|e| e.to_str()) {
        Some("ovf" | "vmx") => from_descriptor(path),
        Some("ova") => from_ova(path),
        _ => {
            let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "disk".into());
            Ok(VmSummary { name, kind: "image", disks: 1 })
        }
    }
}

/// Every entry of `dir` (sorted, hidden ones skipped) with what it holds or why it is not a VM.
pub fn scan(dir: &Path) -> Result<Vec<(PathBuf, Result<VmSummary>)>> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(AgentError::io("list", dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| !n.to_string_lossy().starts_with('.')))
        .collect();
    entries.sort();
    Ok(entries
        .into_iter()
        .map(|p| {
            let summary = describe(&p);
            (p, summary)
        })
        .collect())
}

/// The path of the VM named `vm` in `dir`; an error if none or several carry that name.
pub fn find(dir: &Path, vm: &str) -> Result<PathBuf> {
    let found: Vec<PathBuf> = scan(dir)?.into_iter().filter(|(_, s)| s.as_ref().is_ok_and(|s| s.name == vm)).map(|(p, _)| p).collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(AgentError::source(dir, format!("holds no VM named {vm:?}"))),
        many => Err(AgentError::source(dir, format!("holds {} VMs named {vm:?}; rename all but one", many.len()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_images_descriptors_and_archives() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("web.img"), [1u8; 10]).unwrap();
        let vm = dir.path().join("app");
        fs::create_dir(&vm).unwrap();
        fs::write(vm.join("app.vmx"), "displayName = \"app server\"\nscsi0:0.fileName = \"a.vmdk\"\n").unwrap();
        let ovf = hyperexport_shared::ovf::generate("db", &Default::default(), &[]);
        let mut ova = crate::ova::header("db.ovf", ovf.len() as u64, 0).unwrap().to_vec();
        ova.extend_from_slice(ovf.as_bytes());
        ova.resize(ova.len().next_multiple_of(512) + 1024, 0);
        fs::write(dir.path().join("db.ova"), ova).unwrap();
        fs::write(dir.path().join("broken.ova"), b"nope").unwrap();
        let found = scan(dir.path()).unwrap();
        let names: Vec<_> =
            found.iter().map(|(_, s)| s.as_ref().map(|s| (s.name.clone(), s.kind, s.disks)).map_err(|e| e.to_string())).collect();
        assert_eq!(names[0], Ok(("app server".into(), "vmx", 1)));
        assert!(names[1].as_ref().unwrap_err().contains("not a valid OVA"));
        assert_eq!(names[2], Ok(("db".into(), "ova", 0)));
        assert_eq!(names[3], Ok(("web".into(), "image", 1)));
        assert_eq!(find(dir.path(), "db").unwrap(), dir.path().join("db.ova"));
        assert!(find(dir.path(), "nope").unwrap_err().to_string().contains("no VM named"));
    }
}
