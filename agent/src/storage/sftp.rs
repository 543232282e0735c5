//! A repository on an SFTP server (`sftp://USER@HOST[:PORT]/PATH`), over one SSH connection
//! (russh, rustls-free: ring for its crypto) and the SFTP protocol version 3 with OpenSSH's
//! extensions.
//!
//! - The server's key must be in `HYPEREXPORT_SFTP_KNOWN_HOSTS` or `~/.ssh/known_hosts`; an
//!   unknown or changed key is refused, as `ssh` would.
//! - Authentication: the private key `HYPEREXPORT_SFTP_KEY_FILE` (else `~/.ssh/id_ed25519`,
//!   `id_ecdsa`, `id_rsa`, the first that exists, unencrypted), or the password
//!   `HYPEREXPORT_SFTP_PASSWORD`.
//! - A file is written under a temp name and moved into place with `posix-rename@openssh.com`
//!   (atomic, replaces); a create-if-absent with `hardlink@openssh.com` (fails if the name
//!   exists); each file is flushed with `fsync@openssh.com` before it is moved, so a file in
//!   place is durable. These extensions are OpenSSH's; a server without them is refused.
//! - Requests of all threads share the session and are pipelined on it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyperexport_shared::RepoError;
use hyperexport_shared::error::Result;
use hyperexport_shared::lock::LockMode;
use hyperexport_shared::storage::{Durable, Storage, StorageLock, object_lock};
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh_sftp::client::RawSftpSession;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, OpenFlags, Packet, StatusCode};

use super::bridge::Bridge;

/// Bytes per SFTP read or write request (OpenSSH takes up to 255 KiB).
const PIECE: usize = 64 << 10;

/// A folder on an SFTP server. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct SftpStorage {
    inner: Arc<Inner>,
}

struct Inner {
    sftp: Arc<RawSftpSession>,
    /// Keeps the SSH connection open.
    _ssh: russh::client::Handle<HostCheck>,
    /// Absolute folder on the server, without a trailing `/`.
    root: String,
    location: String,
    tmp_counter: AtomicU64,
    tmp_tag: String,
    // Last: the runtime goes after the session and connection that run on it.
    bridge: Bridge,
}

/// Checks the server's key against the known hosts file.
pub struct HostCheck {
    host: String,
    port: u16,
    known_hosts: PathBuf,
}

/// Why connecting failed (the SSH client's error type must convert from russh's).
#[derive(Debug)]
pub struct Refused(String);

impl From<russh::Error> for Refused {
    fn from(e: russh::Error) -> Self {
        Refused(format!("SSH: {e}"))
    }
}

impl russh::client::Handler for HostCheck {
    type Error = Refused;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> std::result::Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            return Err(Refused(format!("{}: host certificates are not supported; list the host key in known_hosts", self.host)));
        };
        match russh::keys::check_known_hosts_path(&self.host, self.port, key, &self.known_hosts) {
            Ok(true) => Ok(true),
            Ok(false) => Err(Refused(format!(
                "the SSH host key of {}:{} is not in {}; add it (ssh-keyscan) after checking it",
                self.host,
                self.port,
                self.known_hosts.display()
            ))),
            Err(e) => Err(Refused(format!(
                "the SSH host key of {}:{} does not match {} ({e}): refusing to connect",
                self.host,
                self.port,
                self.known_hosts.display()
            ))),
        }
    }
}

fn home(rel: &str) -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(rel))
}

/// The private key to log in with: the configured file, else the first default that exists.
fn key_file() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("HYPEREXPORT_SFTP_KEY_FILE") {
        return Some(PathBuf::from(path));
    }
    ["id_ed25519", "id_ecdsa", "id_rsa"].iter().filter_map(|n| home(&format!(".ssh/{n}"))).find(|p| p.is_file())
}

fn sftp_err(op: &'static str, location: &str) -> impl FnOnce(SftpError) -> RepoError {
    let location = location.to_string();
    move |e| RepoError::Storage { op, location, reason: e.to_string() }
}

fn is_missing(e: &SftpError) -> bool {
    matches!(e, SftpError::Status(s) if s.status_code == StatusCode::NoSuchFile)
}

/// SSH string encoding (length, bytes), for extension requests.
fn ssh_strings(parts: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(&(p.len() as u32).to_be_bytes());
        out.extend_from_slice(p.as_bytes());
    }
    out
}

impl SftpStorage {
    /// Connects to `user@host:port` and uses the folder `path` (absolute; `~/...` is relative
    /// to the login folder). `location` names it in messages.
    pub fn connect(user: &str, host: &str, port: u16, path: &str, location: String) -> Result<Self> {
        let bridge = Bridge::new(&location)?;
        let known_hosts = std::env::var_os("HYPEREXPORT_SFTP_KNOWN_HOSTS")
            .map(PathBuf::from)
            .or_else(|| home(".ssh/known_hosts"))
            .ok_or_else(|| RepoError::Invalid("no known_hosts file: set HYPEREXPORT_SFTP_KNOWN_HOSTS or HOME".into()))?;
        let check = HostCheck { host: host.to_string(), port, known_hosts };
        let (user, host, path, loc_err) = (user.to_string(), host.to_string(), path.to_string(), location.clone());
        let (ssh, sftp, root) = bridge
            .run(async move {
                let config = Arc::new(russh::client::Config { inactivity_timeout: Some(Duration::from_secs(300)), ..Default::default() });
                let mut ssh = russh::client::connect(config, (host.as_str(), port), check).await?;
                let authed = match std::env::var("HYPEREXPORT_SFTP_PASSWORD") {
                    Ok(password) => ssh.authenticate_password(&user, password).await?,
                    Err(_) => {
                        let file = key_file().ok_or_else(|| {
                            Refused(
                                "no SSH key: set HYPEREXPORT_SFTP_KEY_FILE or HYPEREXPORT_SFTP_PASSWORD, or create ~/.ssh/id_ed25519"
                                    .into(),
                            )
                        })?;
                        let key = russh::keys::load_secret_key(&file, None)
                            .map_err(|e| Refused(format!("SSH key {}: {e} (an unencrypted private key is needed)", file.display())))?;
                        let hash = ssh.best_supported_rsa_hash().await?.flatten();
                        ssh.authenticate_publickey(&user, PrivateKeyWithHashAlg::new(Arc::new(key), hash)).await?
                    }
                };
                if !authed.success() {
                    return Err(Refused(format!("the server refused the SSH credentials of {user}")));
                }
                let channel = ssh.channel_open_session().await?;
                channel.request_subsystem(true, "sftp").await?;
                let sftp = RawSftpSession::new(channel.into_stream());
                let version = sftp.init().await.map_err(|e| Refused(format!("starting SFTP: {e}")))?;
                for ext in ["posix-rename@openssh.com", "hardlink@openssh.com", "fsync@openssh.com"] {
                    if !version.extensions.contains_key(ext) {
                        return Err(Refused(format!("the SFTP server lacks the {ext} extension (OpenSSH's sftp-server has it)")));
                    }
                }
                let root = match path.strip_prefix("/~/").or(path.strip_prefix("/~").filter(|r| r.is_empty())) {
                    Some(rel) => {
                        let home = sftp.realpath(".").await.map_err(|e| Refused(format!("finding the login folder: {e}")))?;
                        let home = home.files.first().map(|f| f.filename.clone()).unwrap_or_default();
                        format!("{}/{rel}", home.trim_end_matches('/'))
                    }
                    None => path,
                };
                Ok::<_, Refused>((ssh, sftp, root.trim_end_matches('/').to_string()))
            })
            .map_err(|Refused(reason)| RepoError::Storage { op: "connect to", location: loc_err, reason })?;
        let mut tag = [0u8; 4];
        hyperexport_shared::crypto::random_bytes(&mut tag);
        sftp.set_timeout(120);
        Ok(SftpStorage {
            inner: Arc::new(Inner {
                sftp: Arc::new(sftp),
                _ssh: ssh,
                root,
                location,
                tmp_counter: AtomicU64::new(0),
                tmp_tag: hex::encode(tag),
                bridge,
            }),
        })
    }

    fn path(&self, key: &str) -> String {
        if key.is_empty() { self.inner.root.clone() } else { format!("{}/{key}", self.inner.root) }
    }

    fn url(&self, key: &str) -> String {
        if key.is_empty() { self.inner.location.clone() } else { format!("{}/{key}", self.inner.location) }
    }

    fn run<T: Send + 'static>(&self, f: impl std::future::Future<Output = T> + Send + 'static) -> T {
        self.inner.bridge.run(f)
    }

    /// Writes `bytes` to a new temp file next to `key` (durably); returns its path.
    fn write_tmp(&self, key: &str, bytes: &[u8]) -> Result<String> {
        let n = self.inner.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let final_path = self.path(key);
        let tmp = format!("{final_path}.{}.{}.tmp", self.inner.tmp_tag, n);
        let (sftp, data, at) = (self.inner.sftp.clone(), bytes.to_vec(), tmp.clone());
        let dirs = parents(&self.inner.root, key);
        self.run(async move {
            let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
            let handle = match sftp.open(&at, flags, FileAttributes::empty()).await {
                Err(e) if is_missing(&e) => {
                    for dir in &dirs {
                        // Exists already, mostly: only a real failure shows in the open below.
                        let _ = sftp.mkdir(dir, FileAttributes::empty()).await;
                    }
                    sftp.open(&at, flags, FileAttributes::empty()).await?
                }
                other => other?,
            }
            .handle;
            let writes = data.chunks(PIECE).enumerate().map(|(i, piece)| sftp.write(&handle, (i * PIECE) as u64, piece.to_vec()));
            let written = futures_util::future::try_join_all(writes).await;
            let synced = match written {
                Ok(_) => sftp.fsync(&handle).await.map(|_| ()),
                Err(e) => Err(e),
            };
            let closed = sftp.close(&handle).await;
            synced.and(closed.map(|_| ()))
        })
        .map_err(sftp_err("write", &self.url(key)))?;
        Ok(tmp)
    }

    /// Every file under the folder `dir` (temp files included), with its size.
    fn walk(&self, dir: &str) -> Result<Vec<(String, u64)>> {
        let (sftp, top, root) = (self.inner.sftp.clone(), self.path(dir), self.inner.root.clone());
        let listed = self.run(async move {
            let mut out = Vec::new();
            let mut pending = vec![top];
            while let Some(folder) = pending.pop() {
                let handle = match sftp.opendir(&folder).await {
                    Ok(h) => h.handle,
                    Err(e) if is_missing(&e) => continue,
                    Err(e) => return Err(e),
                };
                let read = async {
                    loop {
                        match sftp.readdir(&handle).await {
                            Ok(name) => {
                                for f in name.files.into_iter().filter(|f| f.filename != "." && f.filename != "..") {
                                    let full = format!("{folder}/{}", f.filename);
                                    if f.attrs.is_dir() {
                                        pending.push(full);
                                    } else if let Some(key) = full.strip_prefix(&format!("{root}/")) {
                                        out.push((key.to_string(), f.attrs.size.unwrap_or(0)));
                                    }
                                }
                            }
                            Err(SftpError::Status(s)) if s.status_code == StatusCode::Eof => return Ok(()),
                            Err(e) => return Err(e),
                        }
                    }
                }
                .await;
                let _ = sftp.close(&handle).await;
                read?;
            }
            Ok(out)
        });
        listed.map_err(sftp_err("list", &self.url(dir)))
    }

    fn remove_quietly(&self, path: String) {
        let sftp = self.inner.sftp.clone();
        let _ = self.run(async move { sftp.remove(path).await });
    }
}

/// The folders from the top down to the one holding `key` under `root`, for creating them.
fn parents(root: &str, key: &str) -> Vec<String> {
    let full = format!("{root}/{key}");
    let parts: Vec<&str> = full.split('/').collect();
    let mut out = Vec::new();
    let mut at = String::new();
    for part in &parts[..parts.len() - 1] {
        if part.is_empty() {
            continue;
        }
        at = if at.is_empty() && !full.starts_with('/') { part.to_string() } else { format!("{at}/{part}") };
        out.push(at.clone());
    }
    out
}

impl Storage for SftpStorage {
    fn location(&self) -> &str {
        &self.inner.location
    }

    fn check(&self) -> Result<()> {
        let (sftp, root) = (self.inner.sftp.clone(), self.path(""));
        match self.run(async move { sftp.stat(root).await }) {
            Ok(a) if a.attrs.is_dir() => Ok(()),
            Ok(_) => Err(RepoError::Invalid(format!("{} is not a folder", self.inner.location))),
            Err(e) if is_missing(&e) => Ok(()),
            Err(e) => Err(sftp_err("open", &self.inner.location)(e)),
        }
    }

    fn read(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let (sftp, path) = (self.inner.sftp.clone(), self.path(key));
        let got = self.run(async move {
            let handle = match sftp.open(&path, OpenFlags::READ, FileAttributes::empty()).await {
                Ok(h) => h.handle,
                Err(e) if is_missing(&e) => return Ok(None),
                Err(e) => return Err(e),
            };
            let size = sftp.fstat(&handle).await.map(|a| a.attrs.size.unwrap_or(0));
            let read = async {
                let size = size?;
                let pieces = (0..size.div_ceil(PIECE as u64)).map(|i| sftp.read(&handle, i * PIECE as u64, PIECE as u32));
                let mut out = Vec::with_capacity(size as usize);
                for piece in futures_util::future::try_join_all(pieces).await? {
                    out.extend_from_slice(&piece.data);
                }
                Ok(out)
            }
            .await;
            let _ = sftp.close(&handle).await;
            read.map(Some)
        });
        got.map_err(sftp_err("read", &self.url(key)))
    }

    fn size(&self, key: &str) -> Result<Option<u64>> {
        let (sftp, path) = (self.inner.sftp.clone(), self.path(key));
        match self.run(async move { sftp.stat(path).await }) {
            Ok(a) => Ok(Some(a.attrs.size.unwrap_or(0))),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(sftp_err("stat", &self.url(key))(e)),
        }
    }

    fn write(&self, key: &str, bytes: &[u8], _durable: Durable) -> Result<()> {
        let tmp = self.write_tmp(key, bytes)?;
        let (sftp, data) = (self.inner.sftp.clone(), ssh_strings(&[&tmp, &self.path(key)]));
        let moved = self.run(async move {
            match sftp.extended("posix-rename@openssh.com", data).await? {
                Packet::Status(s) if s.status_code == StatusCode::Ok => Ok(()),
                Packet::Status(s) => Err(SftpError::Status(s)),
                _ => Err(SftpError::UnexpectedPacket),
            }
        });
        moved.map_err(|e| {
            self.remove_quietly(tmp);
            sftp_err("move into place", &self.url(key))(e)
        })
    }

    fn create(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        let tmp = self.write_tmp(key, bytes)?;
        let (sftp, from, to) = (self.inner.sftp.clone(), tmp.clone(), self.path(key));
        let linked = self.run(async move { sftp.hardlink(from, to).await });
        self.remove_quietly(tmp);
        match linked {
            Ok(_) => Ok(true),
            // OpenSSH answers a link onto an existing name with a generic failure: look.
            Err(e) => match self.size(key)? {
                Some(_) => Ok(false),
                None => Err(sftp_err("create", &self.url(key))(e)),
            },
        }
    }

    fn list(&self, dir: &str) -> Result<Vec<(String, u64)>> {
        let mut out: Vec<(String, u64)> = self.walk(dir)?.into_iter().filter(|(key, _)| !key.ends_with(".tmp")).collect();
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let (sftp, path) = (self.inner.sftp.clone(), self.path(key));
        match self.run(async move { sftp.remove(path).await }) {
            Ok(_) => Ok(()),
            Err(e) if is_missing(&e) => Ok(()),
            Err(e) => Err(sftp_err("remove", &self.url(key))(e)),
        }
    }

    fn sync(&self) -> Result<()> {
        // Every file was flushed before it was moved into place.
        Ok(())
    }

    fn clear_temp(&self, dry_run: bool) -> Result<u64> {
        let stale: Vec<String> = self.walk("")?.into_iter().map(|(key, _)| key).filter(|key| key.ends_with(".tmp")).collect();
        if !dry_run {
            for key in &stale {
                self.delete(key)?;
            }
        }
        Ok(stale.len() as u64)
    }

    fn lock(&self, name: &str, mode: LockMode, wait: Duration, purpose: &str) -> Result<StorageLock> {
        object_lock::acquire(Arc::new(self.clone()), name, mode, wait, purpose)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_and_extension_strings() {
        assert_eq!(parents("/r", "chunks/ab/x"), vec!["/r", "/r/chunks", "/r/chunks/ab"]);
        assert_eq!(parents("/a/b", "config"), vec!["/a", "/a/b"]);
        assert_eq!(ssh_strings(&["ab", ""]), vec![0, 0, 0, 2, b'a', b'b', 0, 0, 0, 0]);
    }
}
