//! Where repositories live: a local folder, or a prefix of an object store named by URL.
//!
//! | location | backend | credentials |
//! |---|---|---|
//! | `/path`, `file:///path` | folder | file permissions |
//! | `s3://bucket/prefix[?endpoint=URL&region=R&path_style=true]` | S3 and S3-compatible | `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`(/`AWS_SESSION_TOKEN`), else the profile `AWS_PROFILE` (or `default`) of `~/.aws/credentials` |
//! | `azure://container/prefix` | Azure Blob | `AZURE_STORAGE_ACCOUNT_NAME` + `AZURE_STORAGE_ACCOUNT_KEY` (or SAS/bearer variables `object_store` reads); `AZURE_STORAGE_USE_EMULATOR=true` for Azurite |
//! | `gs://bucket/prefix` (experimental) | Google Cloud Storage | `GOOGLE_SERVICE_ACCOUNT` / `GOOGLE_APPLICATION_CREDENTIALS` (a service-account file) |
//! | `sftp://user@host[:port]/path` (`/~/path`: under the login folder) | SFTP (OpenSSH) | `HYPEREXPORT_SFTP_KEY_FILE` or `~/.ssh/id_*`, or `HYPEREXPORT_SFTP_PASSWORD`; the host key from `HYPEREXPORT_SFTP_KNOWN_HOSTS` or `~/.ssh/known_hosts` |
//!
//! Credentials never appear in locations, messages or logs.

pub mod aws_profile;
mod bridge;
mod object;
mod sftp;
pub mod upload;

use std::path::Path;
use std::sync::Arc;

use hyperexport_shared::RepoError;
use hyperexport_shared::error::Result;
use hyperexport_shared::storage::{LocalStorage, Storage};
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::multipart::MultipartStore;

pub use object::ObjectStorage;
pub use sftp::SftpStorage;

fn invalid(reason: String) -> RepoError {
    RepoError::Invalid(reason)
}

/// Whether `spec` names an object store rather than a folder.
pub fn is_url(spec: &str) -> bool {
    spec.contains("://") && !spec.starts_with("file://")
}

/// The local folder `spec` names (a path or `file:///path`), if it names one.
pub fn local_path(spec: &str) -> Option<&Path> {
    match spec.strip_prefix("file://") {
        Some(path) => Some(Path::new(path)),
        None if !spec.contains("://") => Some(Path::new(spec)),
        None => None,
    }
}

/// Opens the storage `spec` names: a folder path, `file:///path`, `s3://`, `azure://` or `gs://`.
/// Nothing is read yet.
pub fn open(spec: &str) -> Result<Arc<dyn Storage>> {
    if let Some(path) = local_path(spec) {
        if path.as_os_str().is_empty() {
            return Err(invalid("the repository location is empty".into()));
        }
        return Ok(Arc::new(LocalStorage::new(path)));
    }
    let (scheme, rest) = spec.split_once("://").expect("not a local path, so it has a scheme");
    if scheme == "sftp" {
        return open_sftp(spec, rest);
    }
    let (store, _, prefix, location) = object_store_at(spec, scheme, rest)?;
    Ok(Arc::new(ObjectStorage::new(store, &prefix, location)?))
}

/// An object store client, its multipart side, the prefix (or key) in it, and its location.
pub(crate) type ObjectTarget = (Arc<dyn ObjectStore>, Arc<dyn MultipartStore>, String, String);

/// The client, its multipart side, the prefix (or key) and the location of an `s3://`,
/// `azure://` or `gs://` URL (`rest` is what follows `scheme://`). Nothing is contacted.
pub(crate) fn object_store_at(spec: &str, scheme: &str, rest: &str) -> Result<ObjectTarget> {
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(invalid(format!("{spec:?} names no bucket or container: use {scheme}://NAME/PREFIX")));
    }
    if prefix.split('/').any(|part| part == "." || part == "..") {
        return Err(invalid(format!("{spec:?}: the prefix may not contain . or .. parts")));
    }
    let mut options = Options::parse(spec, query)?;
    let location = format!("{scheme}://{rest}");
    let (store, multipart): (Arc<dyn ObjectStore>, Arc<dyn MultipartStore>) = match scheme {
        "s3" => {
            let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
            if std::env::var_os("AWS_ACCESS_KEY_ID").is_none()
                && let Some(profile) = aws_profile::load()?
            {
                b = b.with_access_key_id(profile.access_key_id).with_secret_access_key(profile.secret_access_key);
                if let Some(token) = profile.session_token {
                    b = b.with_token(token);
                }
                if let Some(region) = profile.region.filter(|_| std::env::var_os("AWS_REGION").is_none()) {
                    b = b.with_region(region);
                }
            }
            if let Some(endpoint) = options.take("endpoint") {
                b = b.with_allow_http(endpoint.starts_with("http://")).with_endpoint(endpoint);
            }
            if let Some(region) = options.take("region") {
                b = b.with_region(region);
            }
            if let Some(path_style) = options.take("path_style") {
                b = b.with_virtual_hosted_style_request(!parse_bool(spec, "path_style", &path_style)?);
            }
            let s3 = Arc::new(b.build().map_err(|e| invalid(format!("{location}: {e}")))?);
            (s3.clone(), s3)
        }
        "azure" | "az" => {
            let b = MicrosoftAzureBuilder::from_env().with_container_name(bucket);
            let az = Arc::new(b.build().map_err(|e| invalid(format!("{location}: {e}")))?);
            (az.clone(), az)
        }
        "gs" => {
            let b = GoogleCloudStorageBuilder::from_env().with_bucket_name(bucket);
            let gs = Arc::new(b.build().map_err(|e| invalid(format!("{location}: {e}")))?);
            (gs.clone(), gs)
        }
        other => {
            return Err(invalid(format!("{spec:?}: unknown scheme {other:?}; use a path, file://, s3://, azure://, gs:// or sftp://")));
        }
    };
    options.finish(spec)?;
    Ok((store, multipart, prefix.to_string(), location))
}

/// `sftp://USER@HOST[:PORT]/PATH`: connects at once (the host key and credentials are checked).
fn open_sftp(spec: &str, rest: &str) -> Result<Arc<dyn Storage>> {
    let (authority, path) = rest.split_once('/').map(|(a, p)| (a, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let Some((user, host_port)) = authority.rsplit_once('@').filter(|(u, _)| !u.is_empty()) else {
        return Err(invalid(format!("{spec:?} names no user: use sftp://USER@HOST[:PORT]/PATH")));
    };
    if user.contains(':') {
        return Err(invalid(format!("{spec:?}: no password in the URL; use HYPEREXPORT_SFTP_PASSWORD or a key")));
    }
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| invalid(format!("{spec:?}: port {p:?} is not a number")))?),
        None => (host_port, 22),
    };
    if host.is_empty() || path.contains('?') || path.split('/').any(|part| part == "." || part == "..") {
        return Err(invalid(format!("{spec:?}: use sftp://USER@HOST[:PORT]/PATH, a path without . or .. parts and no options")));
    }
    Ok(Arc::new(SftpStorage::connect(user, host, port, &path, spec.to_string())?))
}

fn parse_bool(spec: &str, name: &str, value: &str) -> Result<bool> {
    match value {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(invalid(format!("{spec:?}: {name}={value:?} is not true or false"))),
    }
}

/// The `?name=value&...` options of a location; each must be used once.
struct Options(Vec<(String, String)>);

impl Options {
    fn parse(spec: &str, query: &str) -> Result<Self> {
        let mut out = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let Some((name, value)) = pair.split_once('=') else {
                return Err(invalid(format!("{spec:?}: option {pair:?} is not NAME=VALUE")));
            };
            if out.iter().any(|(n, _)| n == name) {
                return Err(invalid(format!("{spec:?}: option {name:?} is given twice")));
            }
            out.push((name.to_string(), value.to_string()));
        }
        Ok(Options(out))
    }

    fn take(&mut self, name: &str) -> Option<String> {
        let i = self.0.iter().position(|(n, _)| n == name)?;
        Some(self.0.remove(i).1)
    }

    fn finish(self, spec: &str) -> Result<()> {
        match self.0.first() {
            None => Ok(()),
            Some((name, _)) => Err(invalid(format!("{spec:?}: unknown option {name:?} (s3:// takes endpoint, region, path_style)"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_checked_before_anything_is_contacted() {
        assert!(open("/tmp/x").unwrap().local_root().is_some());
        assert_eq!(open("file:///tmp/x").unwrap().local_root(), Some(Path::new("/tmp/x")));
        let err = |spec: &str| open(spec).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err("s3:///p").contains("names no bucket"));
        assert!(err("s3://b/p?bogus=1").contains("unknown option \"bogus\""), "{}", err("s3://b/p?bogus=1"));
        assert!(err("s3://b/p?path_style=maybe").contains("not true or false"));
        assert!(err("s3://b/p?region").contains("not NAME=VALUE"));
        assert!(err("s3://b/../p").contains(". or .."));
        assert!(err("ftp://b/p").contains("unknown scheme"));
        assert!(err("sftp://h/p").contains("names no user"));
        assert!(err("sftp://u:pw@h/p").contains("no password in the URL"));
        assert!(err("sftp://u@h:x/p").contains("not a number"));
        let s3 = open("s3://bucket/some/prefix?endpoint=http://127.0.0.1:1&region=us-east-1&path_style=true").unwrap();
        assert_eq!(s3.location(), "s3://bucket/some/prefix");
    }
}
