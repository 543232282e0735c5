//! Sample disk images for the demo and the bench: sparse holes, written zeros, random and
//! text-like data in 64 MiB stripes, deterministic for a seed.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use hyperexport_shared::units::parse_size;

/// Size of one stripe of the layout.
const STRIPE: u64 = 64 << 20;

/// What a stripe holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    /// Never written: a hole in the sparse file.
    Hole,
    /// Written zeros (allocated).
    Zeros,
    /// Incompressible bytes.
    Random,
    /// Words and lines, compressible like logs or text files.
    Text,
}

/// Stripe patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Layout {
    /// Half zeros (half of them holes), a quarter random, a quarter text.
    Bench,
    /// Mostly holes, with text, random and zero stripes: a lightly used VM disk.
    Demo,
}

impl Layout {
    fn pattern(self) -> &'static [Region] {
        use Region::*;
        match self {
            Layout::Bench => &[Text, Hole, Random, Zeros, Text, Hole, Random, Zeros],
            Layout::Demo => &[Text, Random, Hole, Zeros, Text, Hole, Hole, Hole],
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Write a sample image.
    MakeImage {
        path: PathBuf,
        #[arg(long, default_value = "2G")]
        size: String,
        #[arg(long, value_enum, default_value_t = Layout::Bench)]
        layout: Layout,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Overwrite about PERCENT % of an image with new random data, in 1 MiB runs.
    Mutate {
        path: PathBuf,
        #[arg(long, default_value_t = 1.0)]
        percent: f64,
        #[arg(long, default_value_t = 2)]
        seed: u64,
    },
    /// Attach many lightweight agents to a coordinator and drain a queue of tasks (scale bench).
    LoadAgents(crate::load::LoadArgs),
    /// Submit jobs from concurrent clients and measure each Submit (store bench).
    SubmitLoad(crate::submit_load::SubmitLoadArgs),
}

pub fn run(c: DevCommand) -> Result<ExitCode> {
    match c {
        DevCommand::MakeImage { path, size, layout, seed } => {
            make_image(&path, parse_size(&size).map_err(anyhow::Error::msg)?, layout, seed)?;
        }
        DevCommand::Mutate { path, percent, seed } => {
            let changed = mutate(&path, percent / 100.0, seed)?;
            println!("changed {changed} bytes of {}", path.display());
        }
        DevCommand::LoadAgents(a) => return crate::load::run(a),
        DevCommand::SubmitLoad(a) => return crate::submit_load::run(a),
    }
    Ok(ExitCode::SUCCESS)
}

/// xorshift64*: a fast deterministic generator for text.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

const WORDS: &[&str] = &[
    "the",
    "disk",
    "export",
    "kernel",
    "request",
    "user",
    "error",
    "warning",
    "info",
    "debug",
    "service",
    "started",
    "stopped",
    "connection",
    "from",
    "to",
    "with",
    "timeout",
    "retry",
    "backup",
    "volume",
    "snapshot",
    "network",
    "packet",
    "latency",
    "ms",
    "GET",
    "POST",
    "/api/v1/items",
    "200",
    "404",
    "500",
    "session",
    "token",
    "cache",
    "miss",
    "hit",
    "database",
    "query",
    "commit",
    "rollback",
    "replica",
    "primary",
    "region",
    "eu-west",
    "us-east",
    "node",
];

fn fill_text(buf: &mut [u8], rng: &mut Rng) {
    let mut i = 0;
    while i < buf.len() {
        let r = rng.next();
        let word = WORDS[(r % WORDS.len() as u64) as usize].as_bytes();
        let sep: &[u8] = if (r >> 32).is_multiple_of(11) {
            b"\n"
        } else if (r >> 40).is_multiple_of(7) {
            b" 2026-11-26T10:00:00Z "
        } else {
            b" "
        };
        for &b in word.iter().chain(sep) {
            if i == buf.len() {
                break;
            }
            buf[i] = b;
            i += 1;
        }
    }
}

fn fill_random(buf: &mut [u8], seed: u64, offset: u64) {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(&offset.to_le_bytes());
    h.finalize_xof().fill(buf);
}

/// Writes a sparse sample image of `size` bytes.
pub fn make_image(path: &Path, size: u64, layout: Layout, seed: u64) -> Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.set_len(size)?;
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut buf = vec![0u8; 4 << 20];
    let pattern = layout.pattern();
    let mut offset = 0;
    while offset < size {
        let region = pattern[((offset / STRIPE) % pattern.len() as u64) as usize];
        let len = (size - offset).min(buf.len() as u64).min(STRIPE - offset % STRIPE) as usize;
        let chunk = &mut buf[..len];
        match region {
            Region::Hole => {}
            Region::Zeros => chunk.fill(0),
            Region::Random => fill_random(chunk, seed, offset),
            Region::Text => fill_text(chunk, &mut rng),
        }
        if region != Region::Hole {
            file.write_all_at(chunk, offset).with_context(|| format!("writing {}", path.display()))?;
        }
        offset += len as u64;
    }
    file.sync_all()?;
    Ok(())
}

/// Overwrites about `fraction` of the image with random data in 1 MiB runs at pseudo-random,
/// 1 MiB-aligned offsets. Returns the bytes changed.
pub fn mutate(path: &Path, fraction: f64, seed: u64) -> Result<u64> {
    let file = OpenOptions::new().write(true).open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata()?.len();
    const RUN: u64 = 1 << 20;
    let runs = ((size as f64 * fraction) / RUN as f64).ceil() as u64;
    let slots = size / RUN;
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut buf = vec![0u8; RUN as usize];
    let mut changed = 0;
    for i in 0..runs.min(slots) {
        let offset = (rng.next() % slots) * RUN;
        fill_random(&mut buf, seed ^ 0x5eed, i);
        file.write_all_at(&buf, offset)?;
        changed += RUN;
    }
    file.sync_all()?;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_deterministic_and_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        make_image(&a, 3 * STRIPE + 12345, Layout::Bench, 7).unwrap();
        make_image(&b, 3 * STRIPE + 12345, Layout::Bench, 7).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let data = std::fs::read(&a).unwrap();
        assert!(data[STRIPE as usize..2 * STRIPE as usize].iter().all(|&x| x == 0));
        assert!(data[..100].iter().all(|b| b.is_ascii()));
        assert_eq!(mutate(&a, 0.01, 3).unwrap(), 2 << 20, "1% of 192 MiB in whole 1 MiB runs");
        assert_ne!(std::fs::read(&a).unwrap(), data);
    }
}
