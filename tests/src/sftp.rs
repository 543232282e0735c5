//! An OpenSSH server (Debian `openssh-server`) on loopback for SFTP repositories: its own host
//! key, a client key allowed to log in as the current user, and a `known_hosts` that lists it.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{Sandbox, Service, wait_until};

/// A running `sshd`; stopped on drop.
pub struct SshServer {
    _service: Service,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The user the client key logs in as.
    pub user: String,
    /// Environment for `hyperexport` (key file, known hosts).
    pub env: Vec<(&'static str, String)>,
}

impl SshServer {
    /// `sftp://USER@127.0.0.1:PORT/path` for an absolute `path`.
    pub fn url(&self, path: &Path) -> String {
        format!("sftp://{}@127.0.0.1:{}{}", self.user, self.port, path.display())
    }

    /// The environment as `(&str, &str)` pairs.
    pub fn env(&self) -> Vec<(&str, &str)> {
        crate::env_pairs(&self.env)
    }
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(path).output().expect("ssh-keygen runs");
    assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

impl Sandbox {
    /// Starts `sshd` on a free loopback port with SFTP (OpenSSH's internal-sftp).
    pub fn start_sshd(&self) -> SshServer {
        let dir = self.path("ssh");
        fs::create_dir_all(&dir).expect("ssh folder");
        // sshd refuses to start without its privilege separation folder.
        let _ = fs::create_dir_all("/run/sshd");
        let (host_key, client_key) = (dir.join("host_ed25519"), dir.join("client_ed25519"));
        keygen(&host_key);
        keygen(&client_key);
        fs::copy(dir.join("client_ed25519.pub"), dir.join("authorized_keys")).expect("authorized_keys");
        let user = String::from_utf8(Command::new("id").arg("-un").output().expect("id runs").stdout).unwrap().trim().to_string();
        // sshd cannot take port 0: a port free a moment ago is taken, and taken again if lost.
        for _ in 0..3 {
            let port = free_port();
            let config = dir.join("sshd_config");
            fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                     PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\nSubsystem sftp internal-sftp\nLogLevel VERBOSE\n",
                    host_key.display(),
                    dir.join("sshd.pid").display(),
                    dir.join("authorized_keys").display()
                ),
            )
            .expect("sshd_config");
            let log = self.path(&format!("sshd-{port}.log"));
            let child = Command::new("/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(&log).expect("sshd log"))
                .spawn()
                .expect("sshd starts");
            let mut service = Service { child, log: log.clone() };
            let said = |needle: &str| fs::read_to_string(&log).unwrap_or_default().contains(needle);
            wait_until(Duration::from_secs(20), "sshd to listen or fail", || {
                said("Server listening on") || said("Bind to port") || matches!(service.child.try_wait(), Ok(Some(_)))
            });
            if !said("Server listening on") {
                continue;
            }
            let host_pub = fs::read_to_string(dir.join("host_ed25519.pub")).expect("host key");
            let known_hosts: PathBuf = dir.join("known_hosts");
            fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_pub}")).expect("known_hosts");
            let env = vec![
                ("HYPEREXPORT_SFTP_KEY_FILE", client_key.display().to_string()),
                ("HYPEREXPORT_SFTP_KNOWN_HOSTS", known_hosts.display().to_string()),
            ];
            return SshServer { _service: service, port, user, env };
        }
        panic!("sshd did not start on any of three ports; see the sshd-*.log files");
    }
}
