//! Where the repository secret comes from: flags first, then restic-style environment variables.

use std::path::Path;

use anyhow::{Context, Result, bail};
use hyperexport_shared::keys::{MIN_KEY_FILE_LEN, Secret};

use crate::KeyArgs;

/// Environment variable holding the password.
pub const ENV_PASSWORD: &str = "HYPEREXPORT_PASSWORD";
/// Environment variable naming a password file.
pub const ENV_PASSWORD_FILE: &str = "HYPEREXPORT_PASSWORD_FILE";

/// Reads a password file: its first line, without the line ending.
pub fn read_password_file(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading password file {}", path.display()))?;
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        bail!("password file {} is empty", path.display());
    }
    Ok(line.to_vec())
}

/// Reads a key file, which must hold at least 32 bytes.
pub fn read_key_file(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading key file {}", path.display()))?;
    if bytes.len() < MIN_KEY_FILE_LEN {
        bail!(
            "key file {} holds {} bytes; at least {MIN_KEY_FILE_LEN} are needed (e.g. head -c 32 /dev/urandom > FILE)",
            path.display(),
            bytes.len()
        );
    }
    Ok(bytes)
}

/// The secret the user gave, if any: --key-file, --password-file, $HYPEREXPORT_PASSWORD_FILE,
/// $HYPEREXPORT_PASSWORD, in that order.
pub fn from_args(args: &KeyArgs) -> Result<Option<Secret>> {
    if let Some(k) = &args.key_file {
        return Ok(Some(Secret::KeyFile(read_key_file(k)?)));
    }
    if let Some(p) = &args.password_file {
        return Ok(Some(Secret::Password(read_password_file(p)?)));
    }
    if let Some(p) = std::env::var_os(ENV_PASSWORD_FILE).filter(|p| !p.is_empty()) {
        return Ok(Some(Secret::Password(read_password_file(Path::new(&p))?)));
    }
    match std::env::var(ENV_PASSWORD) {
        Ok(p) if !p.is_empty() => Ok(Some(Secret::Password(p.into_bytes()))),
        _ => Ok(None),
    }
}
