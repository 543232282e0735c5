//! Local sources: a VM folder with an `.ovf` or `.vmx` and its disk files, an `.ova` archive, or
//! one disk image.
//!
//! Raw images are read in place. Other formats (qcow2, VMDK, VHD, VHDX) are converted to a sparse
//! raw file in a temporary folder by `qemu-img` first; without `qemu-img` the error says so.

pub mod disk;
pub mod inventory;
pub mod ova_archive;
pub mod vmx;

use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use hyperexport_shared::ovf;
use hyperexport_shared::point::VmInfo;

use crate::error::{AgentError, Result};
use crate::qemu::{self, ImageFormat};

/// Where an agent's VMs are.
#[derive(Debug, Clone)]
pub enum AgentSource {
    /// A folder of local VMs (`local:DIR`).
    Local(PathBuf),
    /// A vSphere server (`vsphere://USER@HOST[:PORT][/DATACENTER]`): its VMs are exported
    /// through snapshots (`crate::vsphere::export`).
    Vsphere(crate::vsphere::Connection),
}

impl std::fmt::Display for AgentSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentSource::Local(dir) => write!(f, "local:{}", dir.display()),
            AgentSource::Vsphere(c) => write!(f, "vsphere://{}@{}:{}/{}", c.url.user, c.url.host, c.url.port, c.url.datacenter),
        }
    }
}

/// One disk of a source VM, readable as a raw image at `raw_path`.
#[derive(Debug)]
pub struct SourceDisk {
    /// Name recorded in the point (the file stem, unique within the VM).
    pub name: String,
    /// The file the VM refers to.
    pub origin: PathBuf,
    /// Its format.
    pub format: ImageFormat,
    /// A raw image of it: `origin` itself when raw, else a converted copy (unused when
    /// `remote`).
    pub raw_path: PathBuf,
    /// Read by ranges from elsewhere (a vSphere datastore) instead of `raw_path`.
    pub remote: Option<std::sync::Arc<dyn disk::RangeRead>>,
}

/// A VM found at a local path.
#[derive(Debug)]
pub struct VmSource {
    /// VM name.
    pub name: String,
    /// "ovf", "ova", "vmx", "image" or "vsphere".
    pub kind: &'static str,
    /// The path as given.
    pub location: String,
    /// Hardware.
    pub info: VmInfo,
    /// The OVF descriptor text, for OVF sources.
    pub ovf_descriptor: Option<String>,
    /// Disks in order.
    pub disks: Vec<SourceDisk>,
    /// What the user should know of how it was read (goes into the task's result).
    pub note: Option<String>,
    /// Holds converted images; removed on drop.
    _temp: Option<tempfile::TempDir>,
    /// Holds what the disks need while they are read (a vSphere session); released on drop.
    _hold: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl VmSource {
    /// A VM whose disks are read from elsewhere; `hold` lives as long as the source.
    pub fn remote(
        name: String,
        location: String,
        info: VmInfo,
        disks: Vec<SourceDisk>,
        note: Option<String>,
        hold: Box<dyn std::any::Any + Send + Sync>,
    ) -> Self {
        VmSource { name, kind: "vsphere", location, info, ovf_descriptor: None, disks, note, _temp: None, _hold: Some(hold) }
    }
}

fn find_one(dir: &Path, ext: &str) -> Result<Option<PathBuf>> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(AgentError::io("list", dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e.eq_ignore_ascii_case(ext)))
        .collect();
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(AgentError::source(
            dir,
            format!(
                "holds {} .{ext} files ({}); give the path of one",
                found.len(),
                found.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

/// The descriptor of a VM folder: its one `.ovf`, else its one `.vmx`.
fn folder_descriptor(dir: &Path) -> Result<PathBuf> {
    match find_one(dir, "ovf")? {
        Some(p) => Ok(p),
        None => find_one(dir, "vmx")?.ok_or_else(|| AgentError::source(dir, "folder holds no .ovf or .vmx file")),
    }
}

/// Resolves a file reference from a descriptor against its folder, refusing anything that
/// could leave the folder (absolute paths, `..`).
fn resolve_ref(descriptor: &Path, reference: &str) -> Result<PathBuf> {
    let rel = Path::new(reference);
    let safe = !reference.is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_)));
    if !safe {
        return Err(AgentError::source(
            descriptor,
            format!("disk reference {reference:?} is not a plain relative path inside the VM's folder"),
        ));
    }
    Ok(descriptor.parent().unwrap_or(Path::new(".")).join(rel))
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = fs::read(path).map_err(AgentError::io("read", path))?;
    String::from_utf8(bytes).map_err(|_| AgentError::source(path, "is not UTF-8 text"))
}

/// The source's temporary folder, created on first use under `temp_root` (default: the system's).
fn temp_dir<'t>(temp: &'t mut Option<tempfile::TempDir>, temp_root: Option<&Path>) -> Result<&'t Path> {
    if temp.is_none() {
        let root = temp_root.map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
        *temp = Some(
            tempfile::Builder::new().prefix("hyperexport-src-").tempdir_in(&root).map_err(AgentError::io("create temp folder in", root))?,
        );
    }
    Ok(temp.as_ref().expect("created above").path())
}

/// Opens the VM at `path`. Files extracted from an OVA and converted images go under
/// `temp_root` (default: the system temp folder).
pub fn open(path: &Path, temp_root: Option<&Path>) -> Result<VmSource> {
    let mut temp: Option<tempfile::TempDir> = None;
    let meta = fs::metadata(path).map_err(AgentError::io("open source", path))?;
    let descriptor = if meta.is_dir() {
        Some(folder_descriptor(path)?)
    } else {
        let ext = path.extension().map(|e| e.to_ascii_lowercase());
        if ext.as_deref() == Some("ova".as_ref()) {
            Some(ova_archive::extract(path, temp_dir(&mut temp, temp_root)?)?)
        } else {
            (ext.as_deref() == Some("ovf".as_ref()) || ext.as_deref() == Some("vmx".as_ref())).then(|| path.to_path_buf())
        }
    };
    let location = path.display().to_string();
    let (name, kind, info, ovf_descriptor, files) = match descriptor {
        Some(d) if d.extension().is_some_and(|e| e.eq_ignore_ascii_case("ovf")) => {
            let text = read_text(&d)?;
            let parsed = ovf::parse(&text).map_err(|e| AgentError::source(&d, e))?;
            let files = parsed.disks.iter().map(|disk| resolve_ref(&d, &disk.href)).collect::<Result<Vec<_>>>()?;
            let kind = if path.is_file() && d != path { "ova" } else { "ovf" };
            (parsed.name, kind, parsed.info, Some(text), files)
        }
        Some(d) => {
            let parsed = vmx::parse(&read_text(&d)?).map_err(|e| AgentError::source(&d, e))?;
            let files = parsed.disks.iter().map(|f| resolve_ref(&d, f)).collect::<Result<Vec<_>>>()?;
            let stem = d.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            (parsed.name.unwrap_or(stem), "vmx", parsed.info, None, files)
        }
        None => {
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "disk".into());
            (stem, "image", VmInfo { cpus: 1, memory_mib: 1024, guest_os: None, networks: Vec::new() }, None, vec![path.to_path_buf()])
        }
    };
    if files.is_empty() {
        return Err(AgentError::source(path, "the VM has no disks to export"));
    }
    let mut disks: Vec<SourceDisk> = Vec::new();
    for file in files {
        let mut head = [0u8; 512];
        let mut f = fs::File::open(&file).map_err(AgentError::io("open disk", &file))?;
        let n = f.read(&mut head).map_err(AgentError::io("read disk", &file))?;
        let format = ImageFormat::detect(&head[..n]);
        let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "disk".into());
        let stem = stem.trim_end_matches("-flat").replace(['/', '\\'], "_");
        let mut name = stem.clone();
        let mut n = 2;
        while disks.iter().any(|d| d.name == name) {
            name = format!("{stem}-{n}");
            n += 1;
        }
        let raw_path = if format == ImageFormat::Raw {
            file.clone()
        } else {
            qemu::require_qemu_img(format!("read {} disk {}", format.qemu_name(), file.display()))?;
            // A folder of their own: an OVA's extracted files share the temp folder.
            let converted = temp_dir(&mut temp, temp_root)?.join("converted");
            fs::create_dir_all(&converted).map_err(AgentError::io("create folder", &converted))?;
            let dst = converted.join(format!("{name}.raw"));
            qemu::convert(&file, format.qemu_name(), &dst, "raw", None)?;
            dst
        };
        disks.push(SourceDisk { name, origin: file, format, raw_path, remote: None });
    }
    Ok(VmSource { name, kind, location, info, ovf_descriptor, disks, note: None, _temp: temp, _hold: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_references_outside_the_folder() {
        let d = Path::new("/vm/x.ovf");
        assert!(resolve_ref(d, "../etc/passwd").is_err());
        assert!(resolve_ref(d, "/etc/passwd").is_err());
        assert!(resolve_ref(d, "").is_err());
        assert_eq!(resolve_ref(d, "disks/a.vmdk").unwrap(), Path::new("/vm/disks/a.vmdk"));
    }

    #[test]
    fn single_image_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("web.img");
        fs::write(&img, vec![1u8; 1000]).unwrap();
        let vm = open(&img, None).unwrap();
        assert_eq!((vm.name.as_str(), vm.kind, vm.disks.len()), ("web", "image", 1));
        assert_eq!(vm.disks[0].raw_path, img);
        let empty = tempfile::tempdir().unwrap();
        assert!(open(empty.path(), None).unwrap_err().to_string().contains("no .ovf or .vmx"));
        assert!(open(&dir.path().join("missing"), None).is_err());
        fs::write(dir.path().join("a.vmx"), "scsi0:0.fileName = \"../../etc/passwd\"\n").unwrap();
        assert!(open(&dir.path().join("a.vmx"), None).unwrap_err().to_string().contains("plain relative path"));
    }
}
