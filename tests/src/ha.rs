//! The harness's part for HA groups: etcd members and clusters (Debian `etcd-server`),
//! coordinators started without waiting (standbys), and a TCP proxy that can be cut.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{Sandbox, Service, args, wait_until};

/// A free TCP port on 127.0.0.1 (for servers that cannot be told to pick one and say which,
/// like etcd; another process could take it in between, which the caller then sees as a
/// failure to start).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// An etcd member started by [`Sandbox::start_etcd`] or [`Sandbox::start_etcd_cluster`].
pub struct Etcd {
    service: Option<Service>,
    args: Vec<String>,
    log: PathBuf,
    /// `HOST:PORT` of its client API.
    pub addr: String,
}

impl Etcd {
    /// `etcd://HOST:PORT` for `--store`.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.addr)
    }

    /// Kills it with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(s) = self.service.take() {
            s.kill();
        }
    }

    /// Starts it again on the same data and ports (after [`Etcd::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        self.service = Some(spawn_etcd(&self.args, &self.log));
    }

    /// Whether it answers `/health` with a healthy cluster.
    pub fn healthy(&self) -> bool {
        http_get(&self.addr, "/health").is_some_and(|b| b.contains("true"))
    }

    /// Reads `key` through etcd's JSON gateway: `None` when it is absent, else the lease that
    /// holds it (0 for none).
    pub fn key_lease(&self, key: &str) -> Option<i64> {
        let body = format!(r#"{{"key":"{}"}}"#, base64(key.as_bytes()));
        let answer: serde_json::Value = serde_json::from_str(&http_post(&self.addr, "/v3/kv/range", &body)?).ok()?;
        let kv = answer["kvs"].as_array()?.first()?.clone();
        Some(kv["lease"].as_str().and_then(|l| l.parse().ok()).unwrap_or(0))
    }

    /// Writes `key` again with the value it has (a new revision, as another writer's change
    /// would make), through etcd's JSON gateway; whether it existed and was written.
    pub fn touch(&self, key: &str) -> bool {
        let range = format!(r#"{{"key":"{}"}}"#, base64(key.as_bytes()));
        let Some(answer) = http_post(&self.addr, "/v3/kv/range", &range).and_then(|a| serde_json::from_str::<serde_json::Value>(&a).ok())
        else {
            return false;
        };
        let Some(value) = answer["kvs"].as_array().and_then(|k| k.first()).and_then(|kv| kv["value"].as_str().map(str::to_string)) else {
            return false;
        };
        let put = format!(r#"{{"key":"{}","value":"{value}"}}"#, base64(key.as_bytes()));
        http_post(&self.addr, "/v3/kv/put", &put).is_some()
    }

    /// The TTL `lease` was granted with, in seconds (`None` when etcd does not know it).
    pub fn granted_ttl(&self, lease: i64) -> Option<i64> {
        let answer: serde_json::Value =
            serde_json::from_str(&http_post(&self.addr, "/v3/lease/timetolive", &format!(r#"{{"ID":{lease}}}"#))?).ok()?;
        answer["grantedTTL"].as_str()?.parse().ok()
    }
}

/// Standard base64 with padding (etcd's JSON gateway takes keys so).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            out.push(if i <= chunk.len() { ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

fn spawn_etcd(args: &[String], log: &Path) -> Service {
    let log_file = fs::OpenOptions::new().create(true).append(true).open(log).expect("etcd log");
    let child = Command::new("etcd")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("etcd runs (Debian package etcd-server; scripts/test.sh installs it)");
    Service { child, log: log.to_path_buf() }
}

/// `etcd://` URL naming every member of a cluster.
pub fn etcd_url(members: &[Etcd]) -> String {
    format!("etcd://{}", members.iter().map(|m| m.addr.as_str()).collect::<Vec<_>>().join(","))
}

impl Sandbox {
    /// Starts a one-member etcd (Debian `etcd-server`, installed by scripts/test.sh) on free
    /// loopback ports, its data in `name`, and waits until it answers `/health`.
    pub fn start_etcd(&self, name: &str) -> Etcd {
        self.start_etcd_cluster(name, 1).pop().expect("one member")
    }

    /// Starts a one-member etcd that serves clients over TLS only (`cert`, `key`) and asks each
    /// for a certificate from `ca`; waits until it says it serves.
    pub fn start_etcd_tls(&self, name: &str, cert: &Path, key: &Path, ca: &Path) -> Etcd {
        let tls = [("--cert-file", cert), ("--key-file", key), ("--trusted-ca-file", ca)];
        let mut extra: Vec<String> = tls.iter().flat_map(|(f, p)| [f.to_string(), p.display().to_string()]).collect();
        extra.push("--client-cert-auth".into());
        let member = self.etcd_members(name, 1, "https", &extra).pop().expect("one member");
        wait_until(Duration::from_secs(60), "etcd to serve over TLS", || {
            fs::read_to_string(&member.log).is_ok_and(|l| l.contains("serving client requests") || l.contains("serving client traffic"))
        });
        member
    }

    /// Starts a one-member etcd with authentication on: user `root` and user `user` (password
    /// `password`), whose role may read and write under `/hyperexport/v1/` only. Set up through
    /// etcd's JSON gateway before authentication is turned on.
    pub fn start_etcd_with_auth(&self, name: &str, user: &str, password: &str) -> Etcd {
        let etcd = self.start_etcd(name);
        let b64 = |s: &str| base64(s.as_bytes());
        let calls = [
            ("/v3/auth/role/add", format!(r#"{{"name":"{user}"}}"#)),
            (
                "/v3/auth/role/grant",
                format!(
                    r#"{{"name":"{user}","perm":{{"permType":"READWRITE","key":"{}","range_end":"{}"}}}}"#,
                    b64("/hyperexport/v1/"),
                    b64("/hyperexport/v10")
                ),
            ),
            ("/v3/auth/user/add", format!(r#"{{"name":"{user}","password":"{password}"}}"#)),
            ("/v3/auth/user/grant", format!(r#"{{"user":"{user}","role":"{user}"}}"#)),
            ("/v3/auth/user/add", r#"{"name":"root","password":"root-secret"}"#.to_string()),
            ("/v3/auth/role/add", r#"{"name":"root"}"#.to_string()),
            ("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#.to_string()),
            ("/v3/auth/enable", "{}".to_string()),
        ];
        for (path, body) in calls {
            // The root role may exist already (etcd makes it); every other call must succeed.
            let done = http_post(&etcd.addr, path, &body);
            assert!(done.is_some() || body.contains(r#""name":"root"}"#), "etcd {path} {body} failed");
        }
        etcd
    }

    /// Starts an etcd cluster of `size` members (`NAME0`, `NAME1`...) on free loopback ports and
    /// waits until every member answers `/health`.
    pub fn start_etcd_cluster(&self, name: &str, size: usize) -> Vec<Etcd> {
        let members = self.etcd_members(name, size, "http", &[]);
        wait_until(Duration::from_secs(60), "etcd to answer /health", || members.iter().all(Etcd::healthy));
        members
    }

    /// Spawns the members of an etcd cluster, clients served with `scheme`.
    fn etcd_members(&self, name: &str, size: usize, scheme: &str, extra: &[String]) -> Vec<Etcd> {
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let cluster =
            ports.iter().enumerate().map(|(i, (_, peer))| format!("{name}{i}=http://127.0.0.1:{peer}")).collect::<Vec<_>>().join(",");
        ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| {
                let member = format!("{name}{i}");
                let args: Vec<String> = [
                    "--name",
                    &member,
                    "--data-dir",
                    &self.path(&member).display().to_string(),
                    "--listen-client-urls",
                    &format!("{scheme}://127.0.0.1:{client}"),
                    "--advertise-client-urls",
                    &format!("{scheme}://127.0.0.1:{client}"),
                    "--listen-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-cluster",
                    &cluster,
                    "--initial-cluster-token",
                    name,
                ]
                .iter()
                .map(|s| s.to_string())
                .chain(extra.iter().cloned())
                .collect();
                let log = self.path(&format!("{member}.log"));
                Etcd { service: Some(spawn_etcd(&args, &log)), args, log, addr: format!("127.0.0.1:{client}") }
            })
            .collect()
    }
}

/// `GET path` from `addr`: the body of a 200 answer, `None` otherwise (or when unreachable).
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    http(addr, &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"))
}

/// `POST path` of a JSON `body` to `addr`: the body of a 200 answer, `None` otherwise.
pub fn http_post(addr: &str, path: &str, body: &str) -> Option<String> {
    let len = body.len();
    http(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{body}"
        ),
    )
}

/// Sends `request` to `addr`: the body of a 200 answer (not chunked), `None` otherwise.
fn http(addr: &str, request: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// A coordinator started without waiting for it to serve (a standby of an HA group listens only
/// once it leads).
pub struct PendingCoordinator {
    service: Option<Service>,
    stdout: PathBuf,
    /// `HOST:PORT` it will serve on.
    pub addr: String,
}

impl PendingCoordinator {
    /// Whether it leads and serves now: the last thing it said is that it listens (not that it
    /// stands by), and its address accepts connections (a killed one's does not).
    pub fn serving(&self) -> bool {
        let out = fs::read_to_string(&self.stdout).unwrap_or_default();
        let said = out
            .lines()
            .rfind(|l| l.starts_with("listening on ") || l.starts_with("standing by on "))
            .is_some_and(|l| l.starts_with("listening on "));
        said && self.addr.parse().is_ok_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok())
    }

    /// Kills it with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(s) = self.service.take() {
            s.kill();
        }
    }

    /// Sends it a signal (SIGSTOP freezes it: it holds its connections and answers nothing).
    pub fn signal(&self, signal: i32) {
        if let Some(s) = &self.service {
            s.signal(signal);
        }
    }
}

impl Sandbox {
    /// Starts `hyperexport coordinator --listen ADDR --data... extra` with its stdout in a file,
    /// without waiting for it.
    pub fn spawn_coordinator(&self, data: &str, addr: &str, extra: &[&str]) -> PendingCoordinator {
        let mut a = args(&["coordinator", "--listen", addr]);
        a.extend(args(extra));
        let stdout = self.path(&format!("{data}.out"));
        let out = fs::File::create(&stdout).expect("coordinator stdout file");
        let service = self.spawn_service(data, &a, Stdio::from(out), &[]);
        PendingCoordinator { service: Some(service), stdout, addr: addr.to_string() }
    }
}

/// A TCP proxy on loopback that can be cut, to take one process off a server (e.g. one
/// coordinator off etcd) while the others still reach it. Its copying threads end with their
/// connections; the accepting one lives as long as the test process.
pub struct Proxy {
    /// `HOST:PORT` to connect to instead of the target.
    pub addr: String,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    /// Forwards connections to `target` from a free loopback port.
    pub fn start(target: &str) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy port");
        let addr = listener.local_addr().unwrap().to_string();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (target, flag, conns) = (target.to_string(), cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if flag.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(&target) else { continue };
                let mut streams = conns.lock().unwrap();
                for s in [&client, &server] {
                    if let Ok(c) = s.try_clone() {
                        streams.push(c);
                    }
                }
                for (mut from, mut to) in [(client.try_clone(), server.try_clone()), (server.try_clone(), client.try_clone())]
                    .into_iter()
                    .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { addr, cut, open }
    }

    /// Cuts every connection through it and refuses new ones from now on.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}
