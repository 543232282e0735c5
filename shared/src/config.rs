//! The repository's `config` file and the version check shared by every JSON file we write.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{RepoError, Result};

/// `format` value of a repository config.
pub const REPO_FORMAT: &str = "hyperexport-repository";
/// The repository format version this build writes and reads.
pub const REPO_VERSION: u32 = 1;

/// Encryption of chunk payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encryption {
    /// AES-256-GCM with random 96-bit nonces.
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
    /// Chunks stored in the clear (`--no-encryption`).
    #[serde(rename = "none")]
    None,
}

/// The `config` file at the root of a repository.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// Always [`REPO_FORMAT`].
    pub format: String,
    /// Always [`REPO_VERSION`] for this build.
    pub version: u32,
    /// Random repository id (32 hex digits), bound into key slots.
    pub id: String,
    /// When the repository was created (RFC 3339).
    pub created: String,
    /// Default chunk size for exports into this repository.
    pub chunk_size: u32,
    /// Default compression, in the `--compression` syntax.
    pub compression: String,
    /// Whether chunks are encrypted.
    pub encryption: Encryption,
    /// The master key in hex, only for repositories without encryption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_key: Option<String>,
}

#[derive(Deserialize)]
struct VersionProbe {
    format: Option<String>,
    version: Option<u32>,
}

/// Parses a JSON file of ours: checks `format` and `version` first, so that a newer file gets a
/// clear "unsupported version" error rather than a confusing field error.
pub fn parse_versioned<T: DeserializeOwned>(what: &str, bytes: &[u8], format: &str, supported: u32) -> Result<T> {
    let corrupt = |reason: String| RepoError::Corrupt { what: what.to_string(), reason };
    let probe: VersionProbe = serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not valid JSON: {e}")))?;
    match probe.format.as_deref() {
        Some(f) if f == format => {}
        Some(f) => return Err(corrupt(format!("format is {f:?}, expected {format:?}"))),
        None => return Err(corrupt("no \"format\" field".into())),
    }
    match probe.version {
        Some(v) if v == supported => {}
        Some(v) => return Err(RepoError::UnsupportedVersion { what: what.to_string(), found: v, supported }),
        None => return Err(corrupt("no \"version\" field".into())),
    }
    serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_errors_are_specific() {
        let ok = br#"{"format":"hyperexport-repository","version":1,"id":"x","created":"t","chunk_size":4194304,"compression":"zstd:3","encryption":"none"}"#;
        assert!(parse_versioned::<RepoConfig>("config", ok, REPO_FORMAT, 1).is_ok());
        let newer = br#"{"format":"hyperexport-repository","version":7,"new_field":1}"#;
        let e = parse_versioned::<RepoConfig>("config", newer, REPO_FORMAT, 1).unwrap_err();
        assert!(matches!(e, RepoError::UnsupportedVersion { found: 7, .. }), "{e}");
        assert!(parse_versioned::<RepoConfig>("config", b"{", REPO_FORMAT, 1).is_err());
        assert!(parse_versioned::<RepoConfig>("config", br#"{"format":"x","version":1}"#, REPO_FORMAT, 1).is_err());
    }
}
