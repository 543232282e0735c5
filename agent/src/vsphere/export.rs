//! A vSphere VM opened for export: the VM found by name, a snapshot taken (or, for a retry of
//! the same task, the one it took found again, so that a resumed export reads the same state),
//! and the snapshot's disk files read by ranges from the datastore. The session stays logged in
//! while the disks are read; the snapshot is removed by [`release`] once the task has ended
//! for good.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hyperexport_shared::point::VmInfo;

use super::Connection;
use super::datastore::DatastoreFile;
use super::inventory;
use super::props::properties;
use super::snapshot::{self, EXPORT_PREFIX};
use super::soap::{MoRef, Session};
use crate::error::{AgentError, Result};
use crate::qemu::ImageFormat;
use crate::source::{SourceDisk, VmSource};

/// The name of the snapshot the export of task `task_id` takes.
pub fn snapshot_name(task_id: &str) -> String {
    format!("{EXPORT_PREFIX}{task_id}")
}

/// Logs the session out when the source is dropped, on a thread of its own (the source may be
/// dropped on an async worker, which must not wait for vSphere).
struct SessionHold(Mutex<Option<Session>>);

impl Drop for SessionHold {
    fn drop(&mut self) {
        if let Some(session) = self.0.lock().unwrap_or_else(|e| e.into_inner()).take() {
            std::thread::spawn(move || session.logout());
        }
    }
}

/// Opens `vm` for the export of task `task_id`.
pub fn open(connection: &Connection, vm: &str, task_id: &str) -> Result<VmSource> {
    let mut session = connection.session()?;
    let found = inventory::find(&mut session, vm, &connection.url.datacenter)?;
    let name = snapshot_name(task_id);
    let tree = snapshot::tree(&mut session, &found.moref())?;
    let existing = snapshot::named_if_any(&tree, vm, &name)?.map(|s| s.moref());
    let snap = match existing {
        Some(s) => {
            tracing::info!(vm, snapshot = %name, "reading the snapshot an earlier attempt took");
            s
        }
        None => {
            let description = format!("taken by HyperExport to export task {task_id}; removed when the export ends");
            let s = snapshot::create(&mut session, &found.moref(), &name, &description, false, false)?;
            tracing::info!(vm, snapshot = %name, id = %s.id, "snapshot taken");
            s
        }
    };
    // The disks as they were when the snapshot was taken.
    let config = properties(&mut session, &snap, &["config.hardware.device"])?;
    let disks = config.with("config.hardware.device", inventory::disks).unwrap_or_default();
    if disks.is_empty() {
        return Err(AgentError::Invalid(format!("VM {vm:?}: its snapshot {name} shows no virtual disk")));
    }
    let note = change_tracking_note(&mut session, &found, &snap, disks[0].key);
    let cookie = session.cookie().unwrap_or("").to_string();
    let mut sources: Vec<SourceDisk> = Vec::new();
    for d in &disks {
        let file = DatastoreFile::open(connection, connection.trust.clone(), &cookie, &found.datacenter, &d.file)?;
        let stem = d.file.rsplit('/').next().unwrap_or("disk").trim_end_matches(".vmdk").trim_end_matches("-flat").to_string();
        let mut disk_name = stem.clone();
        let mut n = 2;
        while sources.iter().any(|s| s.name == disk_name) {
            disk_name = format!("{stem}-{n}");
            n += 1;
        }
        sources.push(SourceDisk {
            name: disk_name,
            origin: PathBuf::from(&d.file),
            format: ImageFormat::Raw,
            raw_path: PathBuf::new(),
            remote: Some(Arc::new(file)),
        });
    }
    let info = VmInfo {
        cpus: found.cpus.max(1),
        memory_mib: found.memory_mb,
        guest_os: Some(found.guest_os.clone()).filter(|g| !g.is_empty()),
        networks: found.networks.clone(),
    };
    let location =
        format!("vsphere://{}@{}:{}{}/{}", connection.url.user, connection.url.host, connection.url.port, found.folder, found.name);
    Ok(VmSource::remote(found.name, location, info, sources, Some(note), Box::new(SessionHold(Mutex::new(Some(session))))))
}

/// Asks the server for the disk's changed areas (`QueryChangedDiskAreas`) and says how the
/// export finds changes: always by content for now; the note says whether the server could
/// have told (reading only changed areas is not built yet).
fn change_tracking_note(session: &mut Session, vm: &inventory::VsphereVm, snapshot: &MoRef, key: i32) -> String {
    let params = format!(
        "{}{}<deviceKey>{key}</deviceKey><startOffset>0</startOffset><changeId>*</changeId>",
        vm.moref().xml("_this"),
        snapshot.xml("snapshot")
    );
    match session.call("QueryChangedDiskAreas", &params) {
        Ok(_) => "changes found by content: the server keeps changed block tracking, which HyperExport does not use yet".into(),
        Err(e) => format!("changes found by content: no changed block tracking for this VM, on it or on the server ({e})"),
    }
}

/// Removes the snapshot the export of task `task_id` took of `vm`; whether there was one.
pub fn release(connection: &Connection, vm: &str, task_id: &str) -> Result<bool> {
    let mut session = connection.session()?;
    let found = inventory::find(&mut session, vm, &connection.url.datacenter)?;
    let name = snapshot_name(task_id);
    let tree = snapshot::tree(&mut session, &found.moref())?;
    let removed = match snapshot::named_if_any(&tree, vm, &name)? {
        Some(s) => {
            snapshot::remove(&mut session, &s.moref())?;
            true
        }
        None => false,
    };
    session.logout();
    Ok(removed)
}
