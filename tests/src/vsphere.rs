//! The harness's part for vSphere: govmomi's API simulator (vcsim), built with Go from
//! `tests/vcsim/main.go` against Debian's golang-github-vmware-govmomi-dev (scripts/test.sh
//! installs both), served over TLS on a loopback port with a certificate of its own CA.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crate::{Coordinator, Sandbox, Service, args, wait_until};

/// One request the simulator received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Requests to the same path in flight when it came, itself included.
    pub inflight: u32,
    /// Its Range header (empty: none).
    pub range: String,
}

impl Request {
    /// `(first, last)` byte of its Range, when it has one.
    pub fn bytes(&self) -> Option<(u64, u64)> {
        let (a, b) = self.range.strip_prefix("bytes=")?.split_once('-')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    }
}

/// A running simulator (stopped with SIGTERM when dropped, so that it removes its datastores).
pub struct Vcsim {
    service: Option<Service>,
    log: PathBuf,
    /// `HOST:PORT` of its API (`/sdk`) over HTTPS.
    pub addr: String,
    /// SHA-256 of its certificate, hex.
    pub thumbprint: String,
    /// PEM file of the CA that signed its certificate.
    pub ca: PathBuf,
    /// How many VMs its model has, as the simulator itself counts them.
    pub vms: usize,
    /// The file holding the password it accepts (user `user`).
    pub password_file: PathBuf,
    /// Each datastore's folder on this host, by name.
    pub datastores: Vec<(String, PathBuf)>,
}

impl Drop for Vcsim {
    fn drop(&mut self) {
        if let Some(s) = self.service.take() {
            s.terminate();
        }
    }
}

impl Vcsim {
    /// `vsphere://user@ADDR` plus `path` (e.g. `/DC0`).
    pub fn source(&self, path: &str) -> String {
        format!("vsphere://user@{}{path}", self.addr)
    }

    /// Writes `data` as the datastore file `path` (`DC0_H0_VM0/disk1.vmdk` of `LocalDS_0`) with
    /// an HTTP PUT to `/folder`, as one uploads to a real datastore (with curl).
    pub fn upload(&self, path: &str, data: &[u8]) {
        let file = self.log.with_extension("upload");
        fs::write(&file, data).expect("upload file");
        let url = format!("https://{}/folder/{path}?dcPath=DC0&dsName=LocalDS_0", self.addr);
        let out = Command::new("curl")
            .args(["-sS", "-f", "--cacert"])
            .arg(&self.ca)
            .args(["-u", "user:pass", "-X", "PUT", "--data-binary"])
            .arg(format!("@{}", file.display()))
            .arg(&url)
            .output()
            .expect("curl runs (scripts/test.sh installs it)");
        assert!(out.status.success(), "PUT {url}: {}", String::from_utf8_lossy(&out.stderr));
        let _ = fs::remove_file(file);
    }

    /// Imports `ova` as VM `name` the way vSphere clients do (govmomi's OvfManager,
    /// ImportVApp and NFC lease, in `tests/vcsim/ovaimport`); returns what the server made of it:
    /// `imported NAME cpus N memory_mb M disks D`.
    pub fn import_ova(&self, ova: &Path, name: &str) -> String {
        let password = fs::read_to_string(&self.password_file).expect("password").trim().to_string();
        let out = Command::new(go_tool("ovaimport"))
            .arg("-url")
            .arg(format!("https://user:{password}@{}/sdk", self.addr))
            .args(["-name", name])
            .arg(ova)
            .output()
            .expect("ovaimport runs");
        assert!(out.status.success(), "importing {} failed: {}", ova.display(), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The requests the simulator received so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("request "))
            .map(|l| {
                let mut parts = l.splitn(4, ' ');
                let mut next = || parts.next().unwrap_or("").to_string();
                let (method, path, inflight, range) = (next(), next(), next(), next());
                Request { method, path, inflight: inflight.parse().unwrap_or(0), range }
            })
            .collect()
    }

    /// The options that log in with the right password and trust the simulator's CA.
    pub fn access(&self) -> Vec<String> {
        args(&["--vsphere-password-file", &self.password_file.display().to_string(), "--vsphere-ca", &self.ca.display().to_string()])
    }
}

/// A Go tool of `tests/vcsim/` (`vcsim`: the simulator, `tests/vcsim/main.go`; `ovaimport`:
/// `tests/vcsim/ovaimport/`), built once per test process (Go caches builds across processes).
fn go_tool(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, path)) = built.iter().find(|(n, _)| n == name) {
        return path.clone();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf();
    let out = root.join("target/vcsim");
    fs::create_dir_all(&out).expect("target/vcsim");
    let binary = out.join(name);
    let source = match name {
        "vcsim" => root.join("tests/vcsim/main.go"),
        other => root.join("tests/vcsim").join(other).join("main.go"),
    };
    let status = Command::new("go")
        .args(["build", "-o"])
        .arg(&binary)
        .arg(source)
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", out.join("cache"))
        .status()
        .expect("go runs (Debian golang-go and golang-github-vmware-govmomi-dev; scripts/test.sh installs them)");
    assert!(status.success(), "building {name} (tests/vcsim) failed");
    built.push((name.to_string(), binary.clone()));
    binary
}

impl Sandbox {
    /// Starts the simulator with its default VPX model over TLS, accepting user `user` with
    /// `password`; waits until it serves.
    pub fn start_vcsim(&self, name: &str, password: &str) -> Vcsim {
        self.start_vcsim_with(name, password, &[])
    }

    /// Like [`Sandbox::start_vcsim`], with more options (e.g. `-hardware NAME:CPUS:MEMORY_MB`).
    pub fn start_vcsim_with(&self, name: &str, password: &str, extra: &[&str]) -> Vcsim {
        let password_file = self.path(&format!("{name}-password"));
        fs::write(&password_file, format!("{password}\n")).expect("vcsim password file");
        let stdout = self.path(&format!("{name}.out"));
        let log = self.path(&format!("{name}.log"));
        let child = Command::new(go_tool("vcsim"))
            .args(extra)
            .args(["-tls", "-password-file"])
            .arg(&password_file)
            .arg("-ca-out")
            .arg(self.path(&format!("{name}-ca.pem")))
            // Its datastores' folders go under the sandbox.
            .env("TMPDIR", self.path(""))
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).expect("vcsim stdout"))
            .stderr(fs::File::create(&log).expect("vcsim log"))
            .spawn()
            .expect("the simulator starts");
        let service = Service { child, log: log.clone() };
        let said = |key: &str| {
            fs::read_to_string(&stdout).unwrap_or_default().lines().find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        };
        wait_until(Duration::from_secs(30), "the vSphere simulator to serve", || said("listening on ").is_some());
        let datastores = fs::read_to_string(&stdout)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("datastore "))
            .filter_map(|l| l.split_once(' ').map(|(n, d)| (n.to_string(), PathBuf::from(d))))
            .collect();
        Vcsim {
            service: Some(service),
            log,
            datastores,
            addr: said("listening on ").expect("address"),
            thumbprint: said("thumbprint ").expect("thumbprint"),
            ca: PathBuf::from(said("ca ").expect("CA file")),
            vms: said("vms ").and_then(|n| n.parse().ok()).expect("VM count"),
            password_file,
        }
    }

    /// Starts `hyperexport agent` for `region` serving the simulator's VMs (of `path`, e.g.
    /// `/DC0`), its state in `data`.
    pub fn start_vsphere_agent(
        &self,
        coordinator: &Coordinator,
        region: &str,
        vcsim: &Vcsim,
        path: &str,
        data: &str,
        env: &[(&str, &str)],
    ) -> Service {
        let mut a = args(&["agent", "--coordinator", &coordinator.addr, "--region", region]);
        a.extend(["--data".into(), self.path(data).display().to_string(), "--source".into(), vcsim.source(path)]);
        a.extend(vcsim.access());
        a.extend(["--password-file".into(), self.path("password").display().to_string()]);
        self.spawn_service(data, &a, Stdio::null(), env)
    }
}
