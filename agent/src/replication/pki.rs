//! The cluster's certificate authority: `hyperexport ca init` and `hyperexport ca issue`.
//!
//! A CA folder holds `ca.pem` (the CA certificate), `ca-key.pem` (its key, mode 0600) and
//! `ca.json` (its name, to sign with it again). A node folder holds `ca.pem`, `node.pem` and
//! `node-key.pem`: what a process needs to prove itself and to check its peers. Keys are ECDSA
//! P-256; node certificates serve as both TLS server and client.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

/// The CA certificate's file name, in CA and node folders.
pub const CA_CERT: &str = "ca.pem";
/// The CA key's file name.
pub const CA_KEY: &str = "ca-key.pem";
/// The node certificate's file name.
pub const NODE_CERT: &str = "node.pem";
/// The node key's file name.
pub const NODE_KEY: &str = "node-key.pem";
const CA_META: &str = "ca.json";
/// How long a CA certificate is valid.
pub const CA_DAYS: i64 = 10 * 365;

/// A failure to create or use the CA.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Which file.
        path: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The folder already holds what would be written.
    #[error("{0} already exists; not overwriting it")]
    Exists(String),
    /// A name or option is not usable.
    #[error("{0}")]
    Invalid(String),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaMeta {
    common_name: String,
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PkiError {
    let path = path.display().to_string();
    move |source| PkiError::Io { op, path, source }
}

/// Writes a new file (never replacing one); keys get mode 0600.
fn write_new(path: &Path, bytes: &[u8], secret: bool) -> Result<(), PkiError> {
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(if secret { 0o600 } else { 0o644 }).open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists { PkiError::Exists(path.display().to_string()) } else { io("create", path)(e) }
    })?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io("write", path))
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    // An hour back, for clocks a little behind.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

/// Creates a CA in `dir` (created if missing; the CA files must not exist yet).
pub fn init_ca(dir: &Path, common_name: &str) -> Result<(), PkiError> {
    if common_name.trim().is_empty() {
        return Err(PkiError::Invalid("the CA name is empty".into()));
    }
    fs::create_dir_all(dir).map_err(io("create folder", dir))?;
    for name in [CA_CERT, CA_KEY, CA_META] {
        if dir.join(name).exists() {
            return Err(PkiError::Exists(dir.join(name).display().to_string()));
        }
    }
    let key = KeyPair::generate()?;
    let mut params = ca_params(common_name);
    validity(&mut params, CA_DAYS);
    let cert = params.self_signed(&key)?;
    write_new(&dir.join(CA_KEY), key.serialize_pem().as_bytes(), true)?;
    let meta = serde_json::to_vec_pretty(&CaMeta { common_name: common_name.into() }).expect("CA metadata serializes");
    write_new(&dir.join(CA_META), &meta, false)?;
    write_new(&dir.join(CA_CERT), cert.pem().as_bytes(), false)
}

/// Issues a certificate for node `name` signed by the CA in `ca_dir`, valid for `days`, with
/// `name` and `sans` (DNS names or IP addresses) as subject alternative names, into `out`.
pub fn issue(ca_dir: &Path, name: &str, sans: &[String], days: i64, out: &Path) -> Result<(), PkiError> {
    if days <= 0 || days > CA_DAYS {
        return Err(PkiError::Invalid(format!("--days {days} must be 1..={CA_DAYS}")));
    }
    let read = |file: &str| {
        let path = ca_dir.join(file);
        fs::read_to_string(&path).map_err(|e| PkiError::Io { op: "read", path: path.display().to_string(), source: e })
    };
    let meta: CaMeta = serde_json::from_str(&read(CA_META)?)
        .map_err(|e| PkiError::Invalid(format!("{} is not a CA description: {e}", ca_dir.join(CA_META).display())))?;
    let ca_key = KeyPair::from_pem(&read(CA_KEY)?)?;
    let ca_cert = read(CA_CERT)?;
    let issuer = Issuer::new(ca_params(&meta.common_name), ca_key);
    let mut names = vec![name.to_string()];
    names.extend(sans.iter().filter(|s| s.as_str() != name).cloned());
    if let Some(bad) = names.iter().find(|n| !is_host_name(n)) {
        return Err(PkiError::Invalid(format!("{bad:?} is neither a DNS name nor an IP address (node names and --san values)")));
    }
    let mut params =
        CertificateParams::new(names).map_err(|e| PkiError::Invalid(format!("node name or --san is not a DNS name or IP address: {e}")))?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    fs::create_dir_all(out).map_err(io("create folder", out))?;
    write_new(&out.join(NODE_KEY), key.serialize_pem().as_bytes(), true)?;
    write_new(&out.join(NODE_CERT), cert.pem().as_bytes(), false)?;
    write_new(&out.join(CA_CERT), ca_cert.as_bytes(), false)
}

/// Whether `name` is an IP address or a DNS name (labels of letters, digits and hyphens).
fn is_host_name(name: &str) -> bool {
    name.parse::<std::net::IpAddr>().is_ok()
        || (name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }))
}
