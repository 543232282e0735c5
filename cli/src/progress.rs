//! Progress displays: bars with rate and ETA on a terminal, JSON lines for `--output json`.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyperexport_agent::progress::Progress;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

/// Bars on stderr, one per disk.
pub struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
    verb: &'static str,
}

impl Bars {
    /// Bars labelled with `verb` ("export", "verify", "restore").
    pub fn new(verb: &'static str) -> Self {
        Bars { multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8)), bars: Mutex::new(HashMap::new()), verb }
    }
}

impl Progress for Bars {
    fn disk_started(&self, disk: &str, total: u64) {
        let style =
            ProgressStyle::with_template("{prefix:>24} [{bar:32}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} eta {eta}")
                .expect("static template is valid")
                .progress_chars("=> ");
        let bar = self.multi.add(ProgressBar::new(total).with_style(style).with_prefix(format!("{} {disk}", self.verb)));
        self.bars.lock().expect("bars lock").insert(disk.to_string(), bar);
    }

    fn advanced(&self, disk: &str, bytes: u64) {
        if let Some(bar) = self.bars.lock().expect("bars lock").get(disk) {
            bar.inc(bytes);
        }
    }

    fn disk_finished(&self, disk: &str) {
        if let Some(bar) = self.bars.lock().expect("bars lock").get(disk) {
            bar.finish();
        }
    }

    fn note(&self, message: &str) {
        let _ = self.multi.println(message);
    }
}

struct DiskState {
    done: u64,
    total: u64,
    started: Instant,
    last: Instant,
}

/// JSON lines on stdout: `{"event":"progress",...}`, at most every 250 ms per disk plus the end.
pub struct JsonLines {
    disks: Mutex<HashMap<String, DiskState>>,
    operation: &'static str,
}

impl JsonLines {
    /// Events tagged with `operation`.
    pub fn new(operation: &'static str) -> Self {
        JsonLines { disks: Mutex::new(HashMap::new()), operation }
    }

    fn emit(&self, disk: &str, s: &DiskState, finished: bool) {
        let secs = s.started.elapsed().as_secs_f64().max(1e-9);
        let rate = s.done as f64 / secs;
        let eta = if rate > 0.0 { (s.total.saturating_sub(s.done)) as f64 / rate } else { 0.0 };
        print_json(&json!({
            "event": "progress", "operation": self.operation, "disk": disk, "done_bytes": s.done, "total_bytes": s.total,
            "bytes_per_second": rate.round(), "eta_seconds": (eta * 10.0).round() / 10.0, "finished": finished,
        }));
    }
}

/// Prints one JSON value as a line on stdout.
pub fn print_json(value: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

impl Progress for JsonLines {
    fn disk_started(&self, disk: &str, total: u64) {
        let now = Instant::now();
        let state = DiskState { done: 0, total, started: now, last: now };
        self.emit(disk, &state, false);
        self.disks.lock().expect("progress lock").insert(disk.to_string(), state);
    }

    fn advanced(&self, disk: &str, bytes: u64) {
        let mut disks = self.disks.lock().expect("progress lock");
        if let Some(s) = disks.get_mut(disk) {
            s.done += bytes;
            if s.last.elapsed() >= Duration::from_millis(250) {
                s.last = Instant::now();
                self.emit(disk, s, false);
            }
        }
    }

    fn disk_finished(&self, disk: &str) {
        if let Some(s) = self.disks.lock().expect("progress lock").get(disk) {
            self.emit(disk, s, true);
        }
    }

    fn note(&self, message: &str) {
        print_json(&json!({"event": "note", "operation": self.operation, "message": message}));
    }
}

/// Plain lines on stderr for notes only (not a terminal, text output).
pub struct Quiet;

impl Progress for Quiet {
    fn note(&self, message: &str) {
        eprintln!("{message}");
    }
}
