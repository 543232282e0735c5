//! The inventory of a vSphere server: every VM with its folder path, power state, guest OS,
//! CPUs, memory, disks and networks, read with two property-collector queries over container
//! views (the VMs; then the folders, datacenters and networks whose names they refer to).

use std::collections::HashMap;

use roxmltree::Node;
use serde::Serialize;

use super::VsphereError;
use super::props::{XSI, objects};
use super::soap::{Session, child, text_of};

/// Properties read of each VM.
const VM_PROPERTIES: [&str; 8] = [
    "name",
    "parent",
    "runtime.powerState",
    "config.guestFullName",
    "config.hardware.numCPU",
    "config.hardware.memoryMB",
    "config.hardware.device",
    "network",
];

/// One virtual disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VsphereDisk {
    /// Its device key within the VM.
    pub key: i32,
    /// Its label ("Hard disk 1").
    pub label: String,
    pub capacity_bytes: u64,
    /// The backing file: `[datastore] folder/name.vmdk`.
    pub file: String,
    /// The datastore, from the backing file's name.
    pub datastore: String,
}

/// One VM of the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VsphereVm {
    /// The managed object id (`vm-42`).
    pub id: String,
    pub name: String,
    /// Inventory path of its folder: `/DC0/vm/sub`.
    pub folder: String,
    /// "on", "off" or "suspended".
    pub power_state: String,
    pub guest_os: String,
    pub cpus: u32,
    pub memory_mb: u64,
    pub disks: Vec<VsphereDisk>,
    /// Inventory path of its datacenter, without the leading `/` (`DC0`): the datastore
    /// interface's `dcPath`.
    pub datacenter: String,
    /// Names of the networks it is connected to.
    pub networks: Vec<String>,
}

/// What to list: a shell-style name pattern, a folder path prefix, a power state; empty is any.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub name_glob: String,
    pub folder: String,
    pub power_state: String,
}

impl Filter {
    /// Whether `vm` passes.
    pub fn accepts(&self, vm: &VsphereVm) -> bool {
        let folder = self.folder.trim_end_matches('/');
        hyperexport_shared::glob::glob_match(&self.name_glob, &vm.name)
            && (folder.is_empty() || vm.folder == folder || vm.folder.starts_with(&format!("{folder}/")))
            && (self.power_state.is_empty() || self.power_state == vm.power_state)
    }
}

impl VsphereVm {
    /// The reference to it.
    pub fn moref(&self) -> super::soap::MoRef {
        super::soap::MoRef { kind: "VirtualMachine".into(), id: self.id.clone() }
    }
}

/// The one VM named `name` exactly (in the datacenter at inventory path `datacenter`, unless
/// it is empty); several of that name are refused rather than one picked. Only the VMs' names
/// are read from the whole inventory; the rest of the properties, of the matches alone.
pub fn find(session: &mut Session, name: &str, datacenter: &str) -> Result<VsphereVm, VsphereError> {
    let named = objects(session, &["VirtualMachine"], &["name"])?;
    let mut matches = Vec::new();
    for o in named.iter().filter(|o| o.text("name") == Some(name)) {
        matches.push(super::props::properties(session, &o.id, &VM_PROPERTIES)?);
    }
    let folder = if datacenter.is_empty() { String::new() } else { format!("/{datacenter}") };
    let filter = Filter { folder, ..Filter::default() };
    let mut found = describe(session, &matches, &filter)?;
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(VsphereError::NoVm { name: name.to_string(), host: session.addr().to_string() }),
        n => Err(VsphereError::AmbiguousVm {
            name: name.to_string(),
            count: n,
            folders: found.iter().map(|v| v.folder.clone()).collect::<Vec<_>>().join(", "),
        }),
    }
}

/// Every VM of the server that `filter` accepts, by name.
pub fn list(session: &mut Session, filter: &Filter) -> Result<Vec<VsphereVm>, VsphereError> {
    let vms = objects(session, &["VirtualMachine"], &VM_PROPERTIES)?;
    describe(session, &vms, filter)
}

/// The VMs of `vms` (their [`VM_PROPERTIES`]) that `filter` accepts, with the names of their
/// folders and networks read from the server; sorted by name.
fn describe(session: &mut Session, vms: &[super::props::Object], filter: &Filter) -> Result<Vec<VsphereVm>, VsphereError> {
    if vms.is_empty() {
        return Ok(Vec::new());
    }
    let named = objects(session, &["Folder", "Datacenter", "Network", "DistributedVirtualPortgroup"], &["name", "parent"])?;
    let names: Names =
        named.iter().map(|o| (o.id.id.as_str(), (o.text("name").unwrap_or(""), o.text("parent"), o.id.kind.as_str()))).collect();
    let root = session.content.root_folder.id.clone();
    let mut out: Vec<VsphereVm> = vms.iter().map(|o| vm_of(o, &names, &root)).filter(|vm| filter.accepts(vm)).collect();
    out.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
    Ok(out)
}

/// Object id → its name, its parent's id and its type.
type Names<'a> = HashMap<&'a str, (&'a str, Option<&'a str>, &'a str)>;

/// The inventory path of the folder `id` (the names from the top down, without the root
/// folder: `/DC0/vm/web`), and that of the datacenter it is in (`DC0`).
fn path_of(id: &str, names: &Names, root: &str) -> (String, String) {
    let mut parts = Vec::new();
    let mut datacenter_at = None;
    let mut at = Some(id);
    // Bounded: a cycle in a broken answer must not loop.
    while let Some(current) = at.filter(|c| *c != root && parts.len() < 64) {
        let Some((name, parent, kind)) = names.get(current) else { break };
        parts.push(*name);
        if *kind == "Datacenter" && datacenter_at.is_none() {
            datacenter_at = Some(parts.len());
        }
        at = *parent;
    }
    parts.reverse();
    let datacenter = datacenter_at.map(|n| parts[..parts.len() - n + 1].join("/")).unwrap_or_default();
    (format!("/{}", parts.join("/")), datacenter)
}

fn vm_of(o: &super::props::Object, names: &Names, root: &str) -> VsphereVm {
    let networks = o
        .with("network", |list| {
            Some(
                list.children()
                    .filter_map(|n| n.text())
                    .map(|id| names.get(id.trim()).map_or(id.trim(), |(name, _, _)| *name).to_string())
                    .collect(),
            )
        })
        .unwrap_or_default();
    let (folder, datacenter) = o.text("parent").map(|p| path_of(p, names, root)).unwrap_or_default();
    VsphereVm {
        id: o.id.id.clone(),
        name: o.text("name").unwrap_or("").to_string(),
        folder,
        datacenter,
        power_state: match o.text("runtime.powerState") {
            Some("poweredOn") => "on",
            Some("poweredOff") => "off",
            Some("suspended") => "suspended",
            _ => "unknown",
        }
        .to_string(),
        guest_os: o.text("config.guestFullName").unwrap_or("").to_string(),
        cpus: o.text("config.hardware.numCPU").and_then(|v| v.parse().ok()).unwrap_or(0),
        memory_mb: o.text("config.hardware.memoryMB").and_then(|v| v.parse().ok()).unwrap_or(0),
        disks: o.with("config.hardware.device", disks).unwrap_or_default(),
        networks,
    }
}

/// The virtual disks among a VM's devices.
pub(super) fn disks(devices: Node) -> Option<Vec<VsphereDisk>> {
    Some(
        devices
            .children()
            .filter(|d| d.is_element() && d.attribute((XSI, "type")) == Some("VirtualDisk"))
            .map(|d| {
                let file = child(d, "backing").and_then(|b| text_of(b, "fileName")).unwrap_or("").to_string();
                let capacity_bytes = text_of(d, "capacityInBytes")
                    .and_then(|v| v.parse().ok())
                    .or_else(|| text_of(d, "capacityInKB").and_then(|v| v.parse::<u64>().ok()).map(|kb| kb.saturating_mul(1024)))
                    .unwrap_or(0);
                VsphereDisk {
                    key: text_of(d, "key").and_then(|k| k.parse().ok()).unwrap_or(0),
                    label: child(d, "deviceInfo").and_then(|i| text_of(i, "label")).unwrap_or("").to_string(),
                    capacity_bytes,
                    datastore: datastore_of(&file),
                    file,
                }
            })
            .collect(),
    )
}

/// `LocalDS_0` of `[LocalDS_0] vm/disk.vmdk`.
fn datastore_of(file: &str) -> String {
    file.strip_prefix('[').and_then(|r| r.split_once(']')).map(|(d, _)| d.to_string()).unwrap_or_default()
}
