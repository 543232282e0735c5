//! The inventory of a vSphere server: every VM with its folder path, power state, guest OS,
//! CPUs, memory, disks and networks, read with two property-collector queries over container
//! views (the VMs; then the folders, datacenters and networks whose names they refer to).

use std::collections::HashMap;

use roxmltree::{Document, Node};
use serde::Serialize;

use super::VsphereError;
use super::soap::{MoRef, Session, child, escape, text_of};

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

const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// One virtual disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VsphereDisk {
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

/// Every VM of the server that `filter` accepts, by name.
pub fn list(session: &mut Session, filter: &Filter) -> Result<Vec<VsphereVm>, VsphereError> {
    let vms = objects(session, &["VirtualMachine"], &VM_PROPERTIES)?;
    let named = objects(session, &["Folder", "Datacenter", "Network", "DistributedVirtualPortgroup"], &["name", "parent"])?;
    let names: Names = named.iter().map(|o| (o.id.id.as_str(), (o.text("name").unwrap_or(""), o.text("parent")))).collect();
    let root = session.content.root_folder.id.clone();
    let mut out: Vec<VsphereVm> = vms.iter().map(|o| vm_of(o, &names, &root)).filter(|vm| filter.accepts(vm)).collect();
    out.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
    Ok(out)
}

/// An object's properties as the property collector returned them.
struct Object {
    id: MoRef,
    /// Property path → the `val` element's XML text (re-parsed on use).
    props: HashMap<String, String>,
}

impl Object {
    /// Runs `f` on a complex value (its `val` element).
    fn with<T>(&self, prop: &str, f: impl FnOnce(Node) -> Option<T>) -> Option<T> {
        let xml = self.props.get(prop).filter(|v| v.starts_with('<'))?;
        // The prefixes it uses were declared on the envelope.
        let wrapped = format!(r#"<w xmlns="urn:vim25" xmlns:xsi="{XSI}" xmlns:xsd="http://www.w3.org/2001/XMLSchema">{xml}</w>"#);
        let doc = Document::parse(&wrapped).ok()?;
        f(doc.root_element().first_element_child()?)
    }

    /// A simple value (a reference gives its id).
    fn text(&self, prop: &str) -> Option<&str> {
        self.props.get(prop).map(String::as_str).filter(|v| !v.starts_with('<'))
    }
}

/// Object id → its name and its parent's id.
type Names<'a> = HashMap<&'a str, (&'a str, Option<&'a str>)>;

/// The inventory path of the folder `id`: the names from the datacenter down, without the
/// root folder (`/DC0/vm/web`).
fn path_of(id: &str, names: &Names, root: &str) -> String {
    let mut parts = Vec::new();
    let mut at = Some(id);
    // Bounded: a cycle in a broken answer must not loop.
    while let Some(current) = at.filter(|c| *c != root && parts.len() < 64) {
        let Some((name, parent)) = names.get(current) else { break };
        parts.push(*name);
        at = *parent;
    }
    parts.reverse();
    format!("/{}", parts.join("/"))
}

/// Lists the objects of `kinds` under the root folder with `props`, through a container view
/// (destroyed afterwards) and as many pages as the collector gives.
fn objects(session: &mut Session, kinds: &[&str], props: &[&str]) -> Result<Vec<Object>, VsphereError> {
    let types: String = kinds.iter().map(|k| format!("<type>{}</type>", escape(k))).collect();
    let create = format!(
        "{}{}{types}<recursive>true</recursive>",
        session.content.view_manager.xml("_this"),
        session.content.root_folder.xml("container")
    );
    let answer = session.call("CreateContainerView", &create)?;
    let view = Document::parse(&answer)
        .ok()
        .and_then(|d| child(d.root(), "returnval").and_then(MoRef::of))
        .ok_or_else(|| VsphereError::Protocol { method: "CreateContainerView".into(), detail: "no view in the answer".into() })?;
    let listed = collect(session, &view, kinds, props);
    if let Err(e) = session.call("DestroyView", &view.xml("_this")) {
        tracing::debug!(error = %e, "destroying a vsphere container view failed");
    }
    listed
}

fn collect(session: &mut Session, view: &MoRef, kinds: &[&str], props: &[&str]) -> Result<Vec<Object>, VsphereError> {
    let paths: String = props.iter().map(|p| format!("<pathSet>{p}</pathSet>")).collect();
    let prop_sets: String = kinds.iter().map(|k| format!("<propSet><type>{k}</type>{paths}</propSet>")).collect();
    let spec = format!(
        r#"<specSet>{prop_sets}<objectSet>{}<skip>true</skip><selectSet xsi:type="TraversalSpec"><name>view</name><type>ContainerView</type><path>view</path><skip>false</skip></selectSet></objectSet></specSet>"#,
        view.xml("obj")
    );
    let collector = session.content.property_collector.xml("_this");
    let mut answer = session.call("RetrievePropertiesEx", &format!("{collector}{spec}<options/>"))?;
    let mut out = Vec::new();
    loop {
        let doc = Document::parse(&answer)
            .map_err(|e| VsphereError::Protocol { method: "RetrievePropertiesEx".into(), detail: format!("the answer is not XML: {e}") })?;
        let Some(returnval) = child(doc.root(), "returnval") else { break };
        for obj in returnval.children().filter(|n| n.is_element() && n.tag_name().name() == "objects") {
            let Some(id) = child(obj, "obj").and_then(MoRef::of) else { continue };
            let mut values = HashMap::new();
            for set in obj.children().filter(|n| n.is_element() && n.tag_name().name() == "propSet") {
                let (Some(name), Some(val)) = (text_of(set, "name"), child(set, "val")) else { continue };
                values.insert(name.to_string(), value_text(&answer, val));
            }
            out.push(Object { id, props: values });
        }
        let Some(token) = text_of(returnval, "token").map(str::to_string) else { break };
        answer = session.call("ContinueRetrievePropertiesEx", &format!("{collector}<token>{}</token>", escape(&token)))?;
    }
    Ok(out)
}

/// A `val` element as text: its text when it is a simple value, else its XML.
fn value_text(source: &str, val: Node) -> String {
    if val.children().any(|n| n.is_element()) { source[val.range()].to_string() } else { val.text().unwrap_or("").trim().to_string() }
}

fn vm_of(o: &Object, names: &Names, root: &str) -> VsphereVm {
    let networks = o
        .with("network", |list| {
            Some(
                list.children()
                    .filter_map(|n| n.text())
                    .map(|id| names.get(id.trim()).map_or(id.trim(), |(name, _)| *name).to_string())
                    .collect(),
            )
        })
        .unwrap_or_default();
    VsphereVm {
        id: o.id.id.clone(),
        name: o.text("name").unwrap_or("").to_string(),
        folder: o.text("parent").map(|p| path_of(p, names, root)).unwrap_or_default(),
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
fn disks(devices: Node) -> Option<Vec<VsphereDisk>> {
    Some(
        devices
            .children()
            .filter(|d| d.is_element() && d.attribute((XSI, "type")) == Some("VirtualDisk"))
            .map(|d| {
                let file = child(d, "backing").and_then(|b| text_of(b, "fileName")).unwrap_or("").to_string();
                let capacity_bytes = text_of(d, "capacityInBytes")
                    .and_then(|v| v.parse().ok())
                    .or_else(|| text_of(d, "capacityInKB").and_then(|v| v.parse::<u64>().ok()).map(|kb| kb * 1024))
                    .unwrap_or(0);
                VsphereDisk {
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
