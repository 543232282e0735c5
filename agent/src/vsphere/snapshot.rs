//! Snapshots of a VM: create, list as a tree, revert, remove. An export takes a snapshot named
//! [`EXPORT_PREFIX`] + its task id, reads the disks as they were then, and removes it when the
//! task has ended for good; a retry of the same task finds it and reads the same state again.

use std::time::Duration;

use roxmltree::Node;
use serde::Serialize;

use super::VsphereError;
use super::props::{properties, wait_task};
use super::soap::{MoRef, Session, escape};

/// The name of every snapshot an export takes starts with this.
pub const EXPORT_PREFIX: &str = "hyperexport-";
/// How long a snapshot task may run.
const TASK_LIMIT: Duration = Duration::from_secs(3600);

/// One snapshot and those taken after it from its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotNode {
    pub name: String,
    /// The managed object id (`snapshot-12`).
    pub id: String,
    pub description: String,
    /// As vSphere gives it (RFC 3339).
    pub created: String,
    pub children: Vec<SnapshotNode>,
}

impl SnapshotNode {
    /// The reference to it.
    pub fn moref(&self) -> MoRef {
        MoRef { kind: "VirtualMachineSnapshot".into(), id: self.id.clone() }
    }
}

/// Every snapshot of `tree`, depth first.
pub fn flatten(tree: &[SnapshotNode]) -> Vec<&SnapshotNode> {
    let mut out = Vec::new();
    for node in tree {
        out.push(node);
        out.extend(flatten(&node.children));
    }
    out
}

/// The one snapshot of `tree` named `name`.
pub fn named<'a>(tree: &'a [SnapshotNode], vm: &str, name: &str) -> Result<&'a SnapshotNode, VsphereError> {
    named_if_any(tree, vm, name)?.ok_or_else(|| VsphereError::NoSnapshot { vm: vm.to_string(), name: name.to_string() })
}

/// The snapshot of `tree` named `name`, if there is one; several of that name are refused
/// rather than one picked.
pub fn named_if_any<'a>(tree: &'a [SnapshotNode], vm: &str, name: &str) -> Result<Option<&'a SnapshotNode>, VsphereError> {
    let found: Vec<&SnapshotNode> = flatten(tree).into_iter().filter(|s| s.name == name).collect();
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        many => Err(VsphereError::AmbiguousSnapshot { vm: vm.to_string(), name: name.to_string(), count: many.len() }),
    }
}

/// The snapshot tree of `vm` (empty: none).
pub fn tree(session: &mut Session, vm: &MoRef) -> Result<Vec<SnapshotNode>, VsphereError> {
    let info = properties(session, vm, &["snapshot"])?;
    Ok(info.with("snapshot", |s| Some(nodes(s, "rootSnapshotList"))).unwrap_or_default())
}

fn nodes(parent: Node, tag: &str) -> Vec<SnapshotNode> {
    parent
        .children()
        .filter(|n| n.is_element() && n.tag_name().name() == tag)
        .map(|n| SnapshotNode {
            name: direct_text(n, "name"),
            id: direct_text(n, "snapshot"),
            description: direct_text(n, "description"),
            created: direct_text(n, "createTime"),
            children: nodes(n, "childSnapshotList"),
        })
        .collect()
}

/// The text of `node`'s own child `name` (not a descendant's).
fn direct_text(node: Node, name: &str) -> String {
    node.children().find(|c| c.is_element() && c.tag_name().name() == name).and_then(|c| c.text()).unwrap_or("").trim().to_string()
}

/// Takes a snapshot of `vm` (of its memory too with `memory`; quiescing the guest's file
/// systems with `quiesce`, which needs VMware Tools); returns its reference.
pub fn create(
    session: &mut Session,
    vm: &MoRef,
    name: &str,
    description: &str,
    memory: bool,
    quiesce: bool,
) -> Result<MoRef, VsphereError> {
    let params = format!(
        "{}<name>{}</name><description>{}</description><memory>{memory}</memory><quiesce>{quiesce}</quiesce>",
        vm.xml("_this"),
        escape(name),
        escape(description)
    );
    let task = start(session, "CreateSnapshot_Task", &params)?;
    let id = wait_task(session, &task, "CreateSnapshot_Task", TASK_LIMIT)?;
    if id.is_empty() {
        return Err(VsphereError::Protocol { method: "CreateSnapshot_Task".into(), detail: "the task gave no snapshot".into() });
    }
    Ok(MoRef { kind: "VirtualMachineSnapshot".into(), id })
}

/// Removes a snapshot (its children stay; its changes are merged into them or the VM).
pub fn remove(session: &mut Session, snapshot: &MoRef) -> Result<(), VsphereError> {
    let params = format!("{}<removeChildren>false</removeChildren><consolidate>true</consolidate>", snapshot.xml("_this"));
    let task = start(session, "RemoveSnapshot_Task", &params)?;
    wait_task(session, &task, "RemoveSnapshot_Task", TASK_LIMIT).map(drop)
}

/// Puts the VM back in the state of `snapshot`.
pub fn revert(session: &mut Session, snapshot: &MoRef) -> Result<(), VsphereError> {
    let task = start(session, "RevertToSnapshot_Task", &snapshot.xml("_this"))?;
    wait_task(session, &task, "RevertToSnapshot_Task", TASK_LIMIT).map(drop)
}

/// Calls a method that starts a task; the task's reference.
fn start(session: &mut Session, method: &str, params: &str) -> Result<MoRef, VsphereError> {
    let answer = session.call(method, params)?;
    let doc = roxmltree::Document::parse(&answer).map_err(|e| VsphereError::Protocol { method: method.into(), detail: e.to_string() })?;
    super::soap::child(doc.root(), "returnval")
        .and_then(MoRef::of)
        .ok_or_else(|| VsphereError::Protocol { method: method.into(), detail: "no task in the answer".into() })
}
