//! `restore`: a point back to disk images (raw, qcow2, VMDK) or to an OVF folder or OVA.
//!
//! Every chunk is authenticated and re-hashed on the way, holes stay sparse, and each disk's
//! SHA-256 is recomputed and compared with the point before the output is renamed into place:
//! each output file either holds exactly the exported bytes or is not there. Disks are renamed
//! into place one by one, so a restore of several disks that fails part way leaves the disks
//! finished before the failure; in an OVF folder the `.ovf` and `.mf` come last, so a folder with
//! a manifest is complete.

use std::fs::{self, File, OpenOptions};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use hyperexport_shared::chunk::ChunkId;
use hyperexport_shared::direct_io::DirectFile;
use hyperexport_shared::lock::LockMode;
use hyperexport_shared::point::{DiskRecord, RecoveryPoint};
use hyperexport_shared::{RepoError, Repository};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{AgentError, Result};
use crate::progress::Progress;
use crate::qemu;
use crate::read_back::{Depth, read_back};

/// Output format of a restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RestoreFormat {
    /// Raw images, sparse.
    Raw,
    /// qcow2 through qemu-img.
    Qcow2,
    /// VMDK (monolithicSparse) through qemu-img.
    Vmdk,
    /// An OVF folder: descriptor, manifest, streamOptimized VMDKs.
    Ovf,
    /// An OVA archive of the same.
    Ova,
}

impl FromStr for RestoreFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "raw" => RestoreFormat::Raw,
            "qcow2" => RestoreFormat::Qcow2,
            "vmdk" => RestoreFormat::Vmdk,
            "ovf" => RestoreFormat::Ovf,
            "ova" => RestoreFormat::Ova,
            _ => return Err(format!("unknown format {s:?} (use raw, qcow2, vmdk, ovf or ova)")),
        })
    }
}

/// How to restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Output format.
    pub format: RestoreFormat,
    /// Overwrite existing outputs.
    pub force: bool,
    /// Worker threads.
    pub threads: usize,
}

/// What a restore wrote.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// Point id.
    pub point: String,
    /// VM name.
    pub vm: String,
    /// Output format.
    pub format: RestoreFormat,
    /// Files written.
    pub outputs: Vec<PathBuf>,
    /// Disk bytes restored.
    pub bytes: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// A VM name made safe as a file name stem.
pub fn file_stem(vm: &str) -> String {
    let s: String = vm.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect();
    let s = s.trim_start_matches('.').to_string();
    if s.is_empty() { "vm".into() } else { s }
}

fn partial_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.hxpartial"))
}

fn check_free(path: &Path, force: bool) -> Result<()> {
    if path.exists() && !force {
        return Err(AgentError::Invalid(format!("{} already exists; pass --force to overwrite it", path.display())));
    }
    Ok(())
}

/// Restores `point` as an OVA to the object store object `target` (`s3://BUCKET/KEY.ova`,
/// `azure://...`, `gs://...`): streamed from the repository into a multipart upload, with no
/// temp files; the upload is journaled in the repository until it ends (see
/// [`crate::storage::upload`]).
pub fn restore_ova_to_store(
    repo: &Repository,
    point: &RecoveryPoint,
    target: &str,
    threads: usize,
    progress: &dyn Progress,
) -> Result<RestoreReport> {
    let started = Instant::now();
    let _lock = repo.lock(LockMode::Shared, Duration::from_secs(60), "restore")?;
    let journal = Some(repo.storage().clone());
    let upload = crate::ova_stream::write_ova(repo, point, threads, progress, |total| {
        Ok(crate::storage::upload::Upload::start(target, total, journal)?)
    })?;
    upload.finish()?;
    Ok(RestoreReport {
        point: point.id.clone(),
        vm: point.vm.clone(),
        format: RestoreFormat::Ova,
        outputs: vec![PathBuf::from(target)],
        bytes: point.disks.iter().map(|d| d.size).sum(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Restores `point` to `to`.
pub fn restore(
    repo: &Repository,
    point: &RecoveryPoint,
    to: &Path,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreReport> {
    let started = Instant::now();
    let _lock = repo.lock(LockMode::Shared, Duration::from_secs(60), "restore")?;
    let outputs = match opts.format {
        RestoreFormat::Raw | RestoreFormat::Qcow2 | RestoreFormat::Vmdk => restore_images(repo, point, to, opts, progress)?,
        RestoreFormat::Ovf => {
            if to.is_file() || (to.is_dir() && fs::read_dir(to).map_err(AgentError::io("list", to))?.next().is_some() && !opts.force) {
                return Err(AgentError::Invalid(format!(
                    "{} exists and is not an empty folder; pass --force to write into it",
                    to.display()
                )));
            }
            fs::create_dir_all(to).map_err(AgentError::io("create folder", to))?;
            write_ovf_folder(repo, point, to, opts, progress)?
        }
        RestoreFormat::Ova => {
            check_free(to, opts.force)?;
            // Streamed into the archive from the repository: no staging folder, no qemu-img.
            stream_into_place(to, |out| Ok((crate::ova_stream::write_ova(repo, point, opts.threads, progress, |_| Ok(out))?, ())))?;
            vec![to.to_path_buf()]
        }
    };
    Ok(RestoreReport {
        point: point.id.clone(),
        vm: point.vm.clone(),
        format: opts.format,
        outputs,
        bytes: point.disks.iter().map(|d| d.size).sum(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn restore_images(
    repo: &Repository,
    point: &RecoveryPoint,
    to: &Path,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<Vec<PathBuf>> {
    let (ext, qemu_fmt) = match opts.format {
        RestoreFormat::Qcow2 => ("qcow2", Some(("qcow2", None))),
        RestoreFormat::Vmdk => ("vmdk", Some(("vmdk", Some("subformat=monolithicSparse")))),
        _ => ("img", None),
    };
    if qemu_fmt.is_some() {
        qemu::require_qemu_img(format!("restore to {ext}"))?;
    }
    let targets: Vec<PathBuf> = if point.disks.len() == 1 && !to.is_dir() {
        vec![to.to_path_buf()]
    } else {
        fs::create_dir_all(to).map_err(AgentError::io("create folder", to))?;
        point.disks.iter().map(|d| to.join(format!("{}.{ext}", d.name))).collect()
    };
    for target in &targets {
        check_free(target, opts.force)?;
    }
    for (disk, target) in point.disks.iter().zip(&targets) {
        match qemu_fmt {
            None => restore_raw(repo, disk, target, opts.threads, progress)?,
            Some((fmt, options)) => {
                let raw = partial_path(target).with_extension("raw");
                write_raw(repo, disk, &raw, opts.threads, progress)?;
                convert_into_place(&raw, target, fmt, options)?;
            }
        }
    }
    Ok(targets)
}

/// Restores one disk as a sparse raw image at `target`, verified against the point's SHA-256.
pub fn restore_raw(repo: &Repository, disk: &DiskRecord, target: &Path, threads: usize, progress: &dyn Progress) -> Result<()> {
    let partial = partial_path(target);
    write_raw(repo, disk, &partial, threads, progress)?;
    let synced = File::open(&partial).and_then(|f| f.sync_all()).map_err(AgentError::io("fsync", &partial));
    if let Err(e) = synced {
        let _ = fs::remove_file(&partial);
        return Err(e);
    }
    rename_durably(&partial, target)
}

/// Writes a disk as a sparse raw image at `path` (removed again on failure), its SHA-256
/// checked, without fsync: for final outputs [`restore_raw`] adds that; a scratch image that
/// qemu-img converts and deletes does not need it.
fn write_raw(repo: &Repository, disk: &DiskRecord, path: &Path, threads: usize, progress: &dyn Progress) -> Result<()> {
    OpenOptions::new().write(true).create(true).truncate(true).open(path).map_err(AgentError::io("create", path))?;
    let result = DirectFile::open(path)
        .map_err(AgentError::io("open", path))
        .and_then(|file| write_disk(repo, disk, &file, path, threads, progress));
    if result.is_err() {
        let _ = fs::remove_file(path);
    }
    result
}

/// Renames a finished file into place and makes the rename durable.
fn rename_durably(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(AgentError::io("rename into place", to))?;
    let dir = to.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(AgentError::io("fsync folder", dir))
}

/// Converts the scratch raw image `raw` to `target` in format `fmt` with qemu-img, through a
/// partial file that is fsynced (qemu-img does not) and renamed into place; the raw image is
/// removed, and so is the partial file when anything fails.
fn convert_into_place(raw: &Path, target: &Path, fmt: &str, options: Option<&str>) -> Result<()> {
    let partial = partial_path(target);
    let converted = qemu::convert(raw, "raw", &partial, fmt, options)
        .and_then(|()| File::open(&partial).and_then(|f| f.sync_all()).map_err(AgentError::io("fsync", &partial)));
    let _ = fs::remove_file(raw);
    if converted.is_err() {
        let _ = fs::remove_file(&partial);
    }
    converted?;
    rename_durably(&partial, target)
}

/// Streams a file into place: `write` fills a buffered partial file next to `target` and hands
/// the writer back with its result; the file is then fsynced and renamed into place. The partial
/// file is removed when anything fails.
fn stream_into_place<T>(target: &Path, write: impl FnOnce(BufWriter<File>) -> Result<(BufWriter<File>, T)>) -> Result<T> {
    let partial = partial_path(target);
    let file = File::create(&partial).map_err(AgentError::io("create", &partial))?;
    let written = write(BufWriter::with_capacity(1 << 20, file)).and_then(|(out, done)| {
        let file = out.into_inner().map_err(|e| AgentError::io("write", &partial)(e.into_error()))?;
        file.sync_all().map_err(AgentError::io("fsync", &partial))?;
        Ok(done)
    });
    match written {
        Ok(done) => rename_durably(&partial, target).map(|()| done),
        Err(e) => {
            let _ = fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// Writes a small file next to its final name, then renames it into place.
fn write_file_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let partial = partial_path(path);
    let mut f = File::create(&partial).map_err(AgentError::io("create", &partial))?;
    std::io::Write::write_all(&mut f, bytes).and_then(|_| f.sync_all()).map_err(AgentError::io("write", &partial))?;
    rename_durably(&partial, path)
}

/// Writes a disk's chunks into `file` (direct I/O for whole blocks: a restored disk is not read
/// back soon, and the page cache would only cost a copy per byte) and checks its SHA-256.
fn write_disk(repo: &Repository, disk: &DiskRecord, file: &DirectFile, path: &Path, threads: usize, progress: &dyn Progress) -> Result<()> {
    file.file().set_len(disk.size).map_err(AgentError::io("size", path))?;
    let offset = |index: usize| index as u64 * disk.chunk_size as u64;
    let write = |index: usize, data: &[u8]| file.write_at(offset(index), data).map_err(AgentError::io("write", path));
    let stop_on_bad_chunk = |index: usize, _: ChunkId, outcome: std::result::Result<(), RepoError>| {
        outcome.map_err(|source| AgentError::DiskChunk { disk: disk.name.clone(), offset: offset(index), source })
    };
    let actual = read_back(repo, disk, Depth::Full, threads, progress, write, stop_on_bad_chunk)?
        .expect("a full read that did not stop read every chunk");
    if actual != disk.sha256 {
        return Err(AgentError::DigestMismatch { disk: disk.name.clone(), expected: disk.sha256.clone(), actual });
    }
    Ok(())
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(AgentError::io("open", path))?;
    let mut sha = Sha256::new();
    std::io::copy(&mut f, &mut sha).map_err(AgentError::io("read", path))?;
    Ok(hex::encode(sha.finalize()))
}

/// Writes `<vm>.ovf`, `<vm>.mf` and one streamOptimized VMDK per disk into `dir` (the VMDKs by
/// [`crate::ova_stream::write_vmdk`], each through a partial file); returns the files in OVA
/// order (descriptor, manifest, disks in References order).
fn write_ovf_folder(
    repo: &Repository,
    point: &RecoveryPoint,
    dir: &Path,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<Vec<PathBuf>> {
    let names = crate::ova_stream::disk_names(point);
    let (ovf_name, mf_name) = crate::ova_stream::descriptor_names(point);
    let (ovf_path, mf_path) = (dir.join(ovf_name), dir.join(mf_name));
    check_free(&ovf_path, opts.force)?;
    let mut measured = Vec::new();
    let mut files = Vec::new();
    for (disk, name) in point.disks.iter().zip(&names) {
        let vmdk = dir.join(name);
        check_free(&vmdk, opts.force)?;
        let done = stream_into_place(&vmdk, |out| {
            let (out, len, sha) = crate::ova_stream::write_vmdk(repo, disk, name, opts.threads, progress, out)?;
            Ok((out, (len, sha)))
        })?;
        measured.push(done);
        files.push(vmdk);
    }
    let described = crate::ova_stream::describe(point, &names, &measured);
    write_file_durably(&ovf_path, described.descriptor.as_bytes())?;
    write_file_durably(&mf_path, described.manifest.as_bytes())?;
    let mut ordered = vec![ovf_path, mf_path];
    ordered.extend(files);
    Ok(ordered)
}
