//! Chunk compression: zstd at a chosen level, lz4, or none.

use std::cell::RefCell;
use std::fmt;
use std::str::FromStr;

/// Default zstd level. Level 1, as Proxmox Backup Server uses: on our bench image it stores
/// within 1% of level 3's size for less CPU (docs/PERFORMANCE.md); `--compression zstd:N` for more.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// How chunk payloads are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Stored as is.
    None,
    /// Zstandard at the given level (1..=22, or negative for the fast levels).
    Zstd(i32),
    /// LZ4 block format with the uncompressed length prepended (u32 LE).
    Lz4,
}

impl Compression {
    /// The code stored in a chunk blob's flags (low nibble).
    pub fn code(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Zstd(_) => 1,
            Compression::Lz4 => 2,
        }
    }

    /// Room [`Compression::compress_into`] needs for an input of `len` bytes.
    pub fn max_output(self, len: usize) -> usize {
        match self {
            Compression::None => 0,
            Compression::Zstd(_) => zstd::zstd_safe::compress_bound(len),
            Compression::Lz4 => 4 + lz4_flex::block::get_maximum_output_size(len),
        }
    }

    /// Compresses `data` into `out`, which holds at least [`Compression::max_output`] bytes;
    /// returns the compressed length. Returns `None` when compression would not make it smaller,
    /// so the caller stores the chunk uncompressed (random data costs no decompression time on
    /// restore). Large inputs whose samples do not compress (encrypted or already compressed
    /// data) are not compressed at all: see [`looks_incompressible`]. zstd runs on a context kept
    /// per thread, so a chunk costs no context setup or allocation.
    pub fn compress_into(self, data: &[u8], out: &mut [u8]) -> Option<usize> {
        if self == Compression::None || looks_incompressible(data) {
            return None;
        }
        let len = match self {
            Compression::None => return None,
            Compression::Zstd(level) => zstd_into(level, data, out)?,
            Compression::Lz4 => {
                let (size, body) = out.split_first_chunk_mut::<4>()?;
                *size = u32::try_from(data.len()).ok()?.to_le_bytes();
                4 + lz4_flex::block::compress_into(data, body).ok()?
            }
        };
        (len < data.len()).then_some(len)
    }
}

thread_local! {
    /// This thread's zstd context and the level it is set to.
    static ZSTD: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
}

/// Compresses `data` at `level` into `out` on this thread's context; `None` on any zstd error
/// (the caller stores the data uncompressed).
fn zstd_into(level: i32, data: &[u8], out: &mut [u8]) -> Option<usize> {
    ZSTD.with(|cell| {
        let Ok(mut slot) = cell.try_borrow_mut() else {
            return zstd::bulk::Compressor::new(level).ok()?.compress_to_buffer(data, out).ok();
        };
        match slot.as_mut() {
            Some((set, _)) if *set == level => {}
            Some((set, compressor)) => {
                compressor.set_compression_level(level).ok()?;
                *set = level;
            }
            None => *slot = Some((level, zstd::bulk::Compressor::new(level).ok()?)),
        }
        let (_, compressor) = slot.as_mut()?;
        compressor.compress_to_buffer(data, out).ok()
    })
}

/// Inputs below this size are always given to the compressor.
const SAMPLE_FROM: usize = 256 * 1024;
/// Size of one sample window.
const SAMPLE_LEN: usize = 16 * 1024;
/// Number of evenly spaced windows.
const SAMPLES: usize = 4;

/// Whether `data` looks incompressible: four 16 KiB windows spread over it, compressed with fast
/// zstd, save less than 2%. Costs about 1.5% of compressing a 4 MiB chunk (a quarter of that
/// when the first window already settles it), and saves the whole compression of random,
/// encrypted or already-compressed chunks. A chunk misjudged this way is only stored larger than
/// it could be, never wrongly.
pub fn looks_incompressible(data: &[u8]) -> bool {
    if data.len() < SAMPLE_FROM {
        return false;
    }
    let step = (data.len() - SAMPLE_LEN) / (SAMPLES - 1);
    let mut out = [0u8; SAMPLE_LEN + 1024];
    let needed = SAMPLES * SAMPLE_LEN * 98;
    let mut packed = 0;
    for i in 0..SAMPLES {
        let window = &data[i * step..i * step + SAMPLE_LEN];
        match zstd_into(1, window, &mut out) {
            Some(len) => packed += len,
            None => return false,
        }
        // A window's output is at most `out.len()`: once even that for every window left could
        // not reach the threshold, the answer is known (text chunks stop after one window).
        if (packed + (SAMPLES - 1 - i) * out.len()) * 100 < needed {
            return false;
        }
    }
    packed * 100 >= needed
}

/// Decompresses a payload stored with compression `code` (1 zstd, 2 lz4; uncompressed payloads
/// are used as they are by `chunk::decode`), refusing output larger than `max_len`.
pub fn decompress(code: u8, data: &[u8], max_len: usize) -> Result<Vec<u8>, String> {
    match code {
        1 => zstd::bulk::decompress(data, max_len).map_err(|e| format!("zstd: {e}")),
        2 => {
            let (len, body) = data.split_first_chunk::<4>().ok_or("lz4 payload shorter than its length field")?;
            let len = u32::from_le_bytes(*len) as usize;
            if len > max_len {
                return Err(format!("lz4 payload claims {len} bytes, over the limit of {max_len}"));
            }
            lz4_flex::block::decompress(body, len).map_err(|e| format!("lz4: {e}"))
        }
        other => Err(format!("unknown compression code {other}")),
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::None => f.write_str("none"),
            Compression::Zstd(level) => write!(f, "zstd:{level}"),
            Compression::Lz4 => f.write_str("lz4"),
        }
    }
}

impl FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, level) = match s.split_once(':') {
            Some((n, l)) => (n, Some(l)),
            None => (s, None),
        };
        match (name, level) {
            ("none", None) => Ok(Compression::None),
            ("lz4", None) => Ok(Compression::Lz4),
            ("zstd", None) => Ok(Compression::Zstd(DEFAULT_ZSTD_LEVEL)),
            ("zstd", Some(l)) => {
                let level: i32 = l.parse().map_err(|_| format!("zstd level {l:?} is not a number"))?;
                if !(-7..=22).contains(&level) || level == 0 {
                    return Err(format!("zstd level {level} is out of range (-7..=22, not 0)"));
                }
                Ok(Compression::Zstd(level))
            }
            _ => Err(format!("unknown compression {s:?} (use zstd[:LEVEL], lz4 or none)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `compress_into` with a buffer of its own.
    fn compress(c: Compression, data: &[u8]) -> Option<Vec<u8>> {
        let mut out = vec![0; c.max_output(data.len())];
        let len = c.compress_into(data, &mut out)?;
        out.truncate(len);
        Some(out)
    }

    #[test]
    fn parses_and_prints() {
        for s in ["none", "lz4", "zstd:3", "zstd:19", "zstd:-3"] {
            assert_eq!(s.parse::<Compression>().unwrap().to_string(), s);
        }
        assert_eq!("zstd".parse::<Compression>().unwrap(), Compression::Zstd(DEFAULT_ZSTD_LEVEL));
        assert!("zstd:0".parse::<Compression>().is_err());
        assert!("gzip".parse::<Compression>().is_err());
        assert!("lz4:3".parse::<Compression>().is_err());
    }

    #[test]
    fn refuses_oversized_output() {
        let data = vec![7u8; 100_000];
        let z = compress(Compression::Zstd(3), &data).unwrap();
        assert!(decompress(1, &z, 50_000).is_err());
        let l = compress(Compression::Lz4, &data).unwrap();
        assert!(decompress(2, &l, 50_000).is_err());
        assert!(decompress(9, &l, 500_000).is_err());
    }

    #[test]
    fn incompressible_data_is_recognised_by_samples() {
        let mut random = vec![0u8; 1 << 20];
        let mut x = 0x1234_5678_9abc_def1u64;
        for b in random.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = (x >> 24) as u8;
        }
        assert!(looks_incompressible(&random));
        assert!(compress(Compression::Zstd(3), &random).is_none());
        let text = b"GET /index.html 200 ".repeat(60_000);
        assert!(!looks_incompressible(&text));
        let mut mixed = random.clone();
        mixed[..400_000].copy_from_slice(&text[..400_000]);
        assert!(!looks_incompressible(&mixed), "a window of text makes the chunk worth compressing");
        assert!(!looks_incompressible(&random[..1000]), "small inputs are always tried");
        // Stopping early gives the rule's answer wherever the compressible window is, and
        // however compressible it is.
        let full_rule = |data: &[u8]| {
            let step = (data.len() - SAMPLE_LEN) / (SAMPLES - 1);
            let mut out = [0u8; SAMPLE_LEN + 1024];
            let packed: Option<usize> = (0..SAMPLES).map(|i| zstd_into(1, &data[i * step..i * step + SAMPLE_LEN], &mut out)).sum();
            packed.is_some_and(|p| p * 100 >= SAMPLES * SAMPLE_LEN * 98)
        };
        let step = (random.len() - SAMPLE_LEN) / (SAMPLES - 1);
        for window in 0..SAMPLES {
            for text_len in [0, 100, 400, 1_000, 4_000, SAMPLE_LEN] {
                let mut data = random.clone();
                data[window * step..window * step + text_len].copy_from_slice(&text[..text_len]);
                assert_eq!(looks_incompressible(&data), full_rule(&data), "text of {text_len} bytes in window {window}");
            }
        }
    }

    proptest! {
        #[test]
        fn round_trips(data in proptest::collection::vec(0u8..4, 0..20_000)) {
            for c in [Compression::None, Compression::Zstd(1), Compression::Lz4] {
                // `None`: stored as is, nothing to decompress.
                if let Some(out) = compress(c, &data) {
                    prop_assert_eq!(decompress(c.code(), &out, data.len()).unwrap(), data.clone());
                }
            }
        }
    }
}
