//! Retention: which points of a VM to keep (keep-last, keep-daily, keep-weekly, keep-monthly,
//! as Proxmox Backup Server prunes), then removing the others and the chunks no point needs.
//!
//! Selection, per VM, newest first, option by option: keep-last keeps the N newest points; each
//! keep-<period> then keeps the newest point of each of the N most recent periods that have a
//! point not kept yet, periods already holding a kept point being skipped. Periods are UTC days,
//! ISO weeks and months of the points' consistency times.
//!
//! Removal holds the repository lock exclusively, so no export, transfer, verify or restore
//! runs meanwhile: a chunk a running transfer uses is never removed. Prune needs no key: point
//! files are read for their chunk lists only.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::Serialize;

use crate::ChunkId;
use crate::dates::{civil_from_days, days_from_civil};
use crate::error::{RepoError, Result};
use crate::lock::LockMode;
use crate::point::RecoveryPoint;
use crate::storage::local::REPO_LOCK;
use crate::storage::{Storage, key};

/// How many points to keep per VM (0: that rule keeps none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Retention {
    /// The newest N.
    pub keep_last: u32,
    /// The newest of each of the last N days with points.
    pub keep_daily: u32,
    /// The newest of each of the last N ISO weeks with points.
    pub keep_weekly: u32,
    /// The newest of each of the last N months with points.
    pub keep_monthly: u32,
}

impl Retention {
    /// Whether no rule keeps anything (pruning with it would remove every point: refused).
    pub fn is_empty(&self) -> bool {
        self.keep_last == 0 && self.keep_daily == 0 && self.keep_weekly == 0 && self.keep_monthly == 0
    }
}

/// The period keys of one time: day, ISO week, month.
type Periods = (String, String, String);
/// Picks one of the period keys.
type PeriodKey = fn(&Periods) -> &String;

/// The period keys of an RFC 3339 time; `None` if it does not start with a date.
fn periods(time: &str) -> Option<Periods> {
    let date = time.get(..10)?;
    let mut parts = date.split('-');
    let (y, m, d): (i64, i64, i64) = (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let days = days_from_civil(y, m, d);
    let weekday = (days + 3).rem_euclid(7); // Monday 0: 1970-01-01 was a Thursday.
    let thursday = days - weekday + 3;
    let iso_year = civil_from_days(thursday).0;
    let week = (thursday - days_from_civil(iso_year, 1, 1)) / 7 + 1;
    Some((date.to_string(), format!("{iso_year}-W{week:02}"), date[..7].to_string()))
}

/// Splits one VM's points into those to keep and those to remove (ids), by `retention`.
pub fn select(points: &[RecoveryPoint], retention: &Retention) -> (Vec<String>, Vec<String>) {
    let mut newest_first: Vec<&RecoveryPoint> = points.iter().collect();
    newest_first.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.id.cmp(&a.id)));
    let mut kept: HashSet<&str> = newest_first.iter().take(retention.keep_last as usize).map(|p| p.id.as_str()).collect();
    let rules: [(u32, PeriodKey); 3] =
        [(retention.keep_daily, |p| &p.0), (retention.keep_weekly, |p| &p.1), (retention.keep_monthly, |p| &p.2)];
    for (count, key) in rules {
        if count == 0 {
            continue;
        }
        let period = |p: &RecoveryPoint| periods(&p.time).map(|ps| key(&ps).clone());
        let covered: HashSet<String> = newest_first.iter().filter(|p| kept.contains(p.id.as_str())).filter_map(|p| period(p)).collect();
        let mut chosen: HashSet<String> = HashSet::new();
        for p in &newest_first {
            let Some(k) = period(p) else { continue };
            if kept.contains(p.id.as_str()) || covered.contains(&k) || chosen.contains(&k) {
                continue;
            }
            if chosen.len() >= count as usize {
                break;
            }
            chosen.insert(k);
            kept.insert(p.id.as_str());
        }
    }
    newest_first.iter().map(|p| p.id.clone()).partition(|id| kept.contains(id.as_str()))
}

/// What a prune did (or would do, for a dry run).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// Points kept, by VM.
    pub kept: BTreeMap<String, Vec<String>>,
    /// Points removed, by VM.
    pub removed: BTreeMap<String, Vec<String>>,
    /// Chunks no remaining point refers to, removed.
    pub chunks_removed: u64,
    /// Their bytes.
    pub bytes_freed: u64,
    /// Lock objects of holders that are gone, removed (object stores, SFTP).
    pub locks_removed: u64,
    /// Unfinished multipart uploads of restores that were killed, aborted (set by the CLI's
    /// `cleanup`, which knows the object stores).
    pub uploads_aborted: u64,
    /// Temp files of writers that died, removed (SFTP; a folder's `tmp/` is cleared when its
    /// lock is taken exclusively).
    pub temp_files_removed: u64,
    /// Whether nothing was changed.
    pub dry_run: bool,
}

/// Prunes the repository (or replica) in `storage`: the points of `vm` (every VM for `None`) by
/// `retention`, then every chunk no remaining point refers to. Waits up to `wait` for the
/// exclusive lock.
pub fn prune(storage: &dyn Storage, vm: Option<&str>, retention: &Retention, dry_run: bool, wait: Duration) -> Result<PruneReport> {
    if retention.is_empty() {
        return Err(RepoError::Invalid("give at least one --keep-* rule; pruning without one would remove every point".into()));
    }
    collect(storage, vm, Some(retention), dry_run, wait)
}

/// Removes what no point needs and keeps every point: chunks no point refers to (left by an
/// export that was killed, or by a source that changed before its export was run again), and
/// lock objects of holders that are gone. Waits up to `wait` for the exclusive lock.
pub fn cleanup(storage: &dyn Storage, dry_run: bool, wait: Duration) -> Result<PruneReport> {
    collect(storage, None, None, dry_run, wait)
}

/// Removes the points of `vm` (all VMs for `None`) that `retention` does not keep (none for
/// `None`), then the chunks no remaining point refers to.
fn collect(storage: &dyn Storage, vm: Option<&str>, retention: Option<&Retention>, dry_run: bool, wait: Duration) -> Result<PruneReport> {
    let _lock = storage.lock(REPO_LOCK, LockMode::Exclusive, wait, if retention.is_some() { "prune" } else { "cleanup" })?;
    let mut files: BTreeMap<String, Vec<(RecoveryPoint, String)>> = BTreeMap::new();
    for (file, _) in storage.list("points")? {
        if !file.ends_with(".json") {
            continue;
        }
        let what = format!("point file {}", key(storage.location(), &file));
        let Some(bytes) = storage.read(&file)? else { continue };
        let point = RecoveryPoint::decode_unauthenticated(&what, &bytes)?;
        files.entry(point.vm.clone()).or_default().push((point, file));
    }
    let mut report = PruneReport { dry_run, ..Default::default() };
    let mut referenced: HashSet<ChunkId> = HashSet::new();
    for (name, list) in &files {
        let points: Vec<RecoveryPoint> = list.iter().map(|(p, _)| p.clone()).collect();
        let (keep, remove) = match retention {
            Some(retention) if vm.is_none_or(|v| v == name) => select(&points, retention),
            _ => (points.iter().map(|p| p.id.clone()).collect(), Vec::new()),
        };
        for (point, file) in list {
            if keep.contains(&point.id) {
                referenced.extend(point.chunk_ids());
            } else if !dry_run {
                storage.delete(file)?;
            }
        }
        report.kept.insert(name.clone(), keep);
        if !remove.is_empty() {
            report.removed.insert(name.clone(), remove);
        }
    }
    for (chunk, size) in storage.list("chunks")? {
        let needed = chunk.rsplit('/').next().and_then(|n| n.parse::<ChunkId>().ok()).is_some_and(|id| referenced.contains(&id));
        if needed {
            continue;
        }
        report.chunks_removed += 1;
        report.bytes_freed += size;
        if !dry_run {
            storage.delete(&chunk)?;
        }
    }
    report.locks_removed = crate::storage::object_lock::remove_void(storage, dry_run)?;
    report.temp_files_removed = storage.clear_temp(dry_run)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(id: &str, time: &str) -> RecoveryPoint {
        let mut p = crate::point::tests::sample();
        p.id = id.into();
        p.time = time.into();
        p
    }

    #[test]
    fn iso_weeks_and_days_from_dates() {
        assert_eq!(periods("2026-11-26T10:00:00Z").unwrap(), ("2026-11-26".into(), "2026-W48".into(), "2026-11".into()));
        // 2027-01-01 is a Friday: it belongs to ISO week 53 of 2026.
        assert_eq!(periods("2027-01-01T00:00:00Z").unwrap().1, "2026-W53");
        assert_eq!(periods("2024-12-30T00:00:00Z").unwrap().1, "2025-W01");
        assert!(periods("garbage").is_none());
    }

    #[test]
    fn keeps_like_proxmox_backup_server() {
        let points = [
            at("a", "2026-11-26T12:00:00Z"),
            at("b", "2026-11-26T08:00:00Z"),
            at("c", "2026-11-25T20:00:00Z"),
            at("d", "2026-11-24T20:00:00Z"),
            at("e", "2026-11-17T20:00:00Z"),
            at("f", "2026-10-02T20:00:00Z"),
        ];
        let keep = |r: Retention| {
            let (mut k, _) = select(&points, &r);
            k.sort();
            k
        };
        assert_eq!(keep(Retention { keep_last: 2, ..Default::default() }), ["a", "b"]);
        // Day 26 is covered by "a" already: the two daily slots go to the 25th and the 24th.
        assert_eq!(keep(Retention { keep_last: 1, keep_daily: 2, ..Default::default() }), ["a", "c", "d"]);
        assert_eq!(keep(Retention { keep_weekly: 2, ..Default::default() }), ["a", "e"]);
        assert_eq!(keep(Retention { keep_daily: 1, keep_monthly: 2, ..Default::default() }), ["a", "f"]);
        let (kept, removed) = select(&points, &Retention { keep_last: 10, ..Default::default() });
        assert_eq!((kept.len(), removed.len()), (6, 0));
    }
}
