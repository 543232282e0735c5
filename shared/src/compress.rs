//! Chunk compression: zstd at a chosen level, lz4, or none.

use std::fmt;
use std::str::FromStr;

/// Default zstd level: the best ratio per CPU second for VM disks in our benches.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

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

    /// Compresses `data`. Returns `None` when compression would not make it smaller, so the caller
    /// stores the chunk uncompressed (random data costs no decompression time on restore).
    pub fn compress(self, data: &[u8]) -> Option<Vec<u8>> {
        let out = match self {
            Compression::None => return None,
            Compression::Zstd(level) => zstd::bulk::compress(data, level).ok()?,
            Compression::Lz4 => lz4_flex::block::compress_prepend_size(data),
        };
        (out.len() < data.len()).then_some(out)
    }
}

/// Decompresses a payload stored with compression `code`, refusing output larger than `max_len`.
pub fn decompress(code: u8, data: &[u8], max_len: usize) -> Result<Vec<u8>, String> {
    match code {
        0 => {
            if data.len() > max_len {
                return Err(format!("payload of {} bytes exceeds the limit of {max_len}", data.len()));
            }
            Ok(data.to_vec())
        }
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

    #[test]
    fn parses_and_prints() {
        for s in ["none", "lz4", "zstd:3", "zstd:19", "zstd:-3"] {
            assert_eq!(s.parse::<Compression>().unwrap().to_string(), s);
        }
        assert_eq!("zstd".parse::<Compression>().unwrap(), Compression::Zstd(3));
        assert!("zstd:0".parse::<Compression>().is_err());
        assert!("gzip".parse::<Compression>().is_err());
        assert!("lz4:3".parse::<Compression>().is_err());
    }

    #[test]
    fn refuses_oversized_output() {
        let data = vec![7u8; 100_000];
        let z = Compression::Zstd(3).compress(&data).unwrap();
        assert!(decompress(1, &z, 50_000).is_err());
        let l = Compression::Lz4.compress(&data).unwrap();
        assert!(decompress(2, &l, 50_000).is_err());
        assert!(decompress(9, &l, 500_000).is_err());
    }

    proptest! {
        #[test]
        fn round_trips(data in proptest::collection::vec(0u8..4, 0..20_000)) {
            for c in [Compression::None, Compression::Zstd(1), Compression::Lz4] {
                let (code, stored) = match c.compress(&data) {
                    Some(out) => (c.code(), out),
                    None => (0, data.clone()),
                };
                prop_assert_eq!(decompress(code, &stored, data.len()).unwrap(), data.clone());
            }
        }
    }
}
