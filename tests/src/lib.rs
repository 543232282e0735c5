//! The harness for multi-process tests: runs the real `hyperexport` binary in a temporary
//! folder, with helpers to make sparse images and read results.
//!
//! The binary is the one `cargo build -p hyperexport` puts next to the test executables
//! (override with `HYPEREXPORT_BIN`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod files;
pub use files::*;
mod ha;
pub use ha::*;
mod objstore;
pub use objstore::*;
mod sftp;
pub use sftp::*;
mod vsphere;
pub use vsphere::*;

/// The password every sandbox repository uses.
pub const PASSWORD: &str = "correct horse battery staple";

/// Path of the `hyperexport` binary under test.
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("HYPEREXPORT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test executable has a path");
    let dir = exe.parent().and_then(Path::parent).expect("test executables live in target/<profile>/deps");
    let bin = dir.join("hyperexport");
    assert!(bin.is_file(), "{} is missing: run `cargo build -p hyperexport` first (the test command does)", bin.display());
    bin
}

/// Environment variables with owned values as the `(&str, &str)` pairs commands take.
pub fn env_pairs<'a>(env: &'a [(&'a str, String)]) -> Vec<(&'a str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Runs an outside tool (tar, qemu-img, xmllint...), asserting success; returns its stdout.
pub fn tool(cmd: &str, a: &[&str]) -> String {
    let out =
        Command::new(cmd).args(a).output().unwrap_or_else(|e| panic!("{cmd} is needed by this test (the test command installs it): {e}"));
    assert!(out.status.success(), "{cmd} {a:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The outcome of one command.
#[derive(Debug)]
pub struct Run {
    /// Exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// Every stdout line parsed as JSON.
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
    }

    /// The `result` of the last `{"event":"result"}` line.
    pub fn result(&self) -> Value {
        self.json_lines()
            .into_iter()
            .rev()
            .find(|v| v["event"] == "result")
            .map(|v| v["result"].clone())
            .unwrap_or_else(|| panic!("no result event in {}", self.stdout))
    }

    /// Asserts the process failed cleanly: non-zero exit, no panic, stderr mentions `needle`.
    pub fn assert_clean_failure(&self, needle: &str) {
        assert!(self.code.is_some_and(|c| c != 0), "expected failure, got {:?}\n{}", self.code, self.stderr);
        assert!(!self.stderr.contains("panicked"), "panicked:\n{}", self.stderr);
        assert!(self.stderr.contains(needle), "stderr does not mention {needle:?}:\n{}", self.stderr);
    }
}

/// A temporary folder with a password file, where commands run.
pub struct Sandbox {
    dir: tempfile::TempDir,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    /// A new sandbox.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("hx-test-").tempdir().expect("temp folder");
        fs::write(dir.path().join("password"), format!("{PASSWORD}\n")).expect("password file");
        Sandbox { dir }
    }

    /// A path inside the sandbox.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `--repo <sandbox>/<name> --password-file <sandbox>/password`.
    pub fn repo_args(&self, name: &str) -> Vec<String> {
        vec!["--repo".into(), self.path(name).display().to_string(), "--password-file".into(), self.path("password").display().to_string()]
    }

    fn command(&self, args: &[String]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .current_dir(self.dir.path())
            .env_remove("HYPEREXPORT_PASSWORD")
            .env_remove("HYPEREXPORT_PASSWORD_FILE")
            .stdin(Stdio::null());
        c
    }

    /// Runs `hyperexport args...` to completion.
    pub fn run(&self, args: &[String]) -> Run {
        self.run_with_env(args, &[])
    }

    /// Runs with extra environment variables.
    pub fn run_with_env(&self, args: &[String], env: &[(&str, &str)]) -> Run {
        let out = self.command(args).envs(env.iter().copied()).output().expect("hyperexport runs");
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        }
    }

    /// Runs and asserts success.
    pub fn ok(&self, args: &[String]) -> Run {
        let r = self.run(args);
        assert_eq!(r.code, Some(0), "hyperexport {args:?} failed:\n{}\n{}", r.stdout, r.stderr);
        r
    }

    /// Starts `hyperexport args...` in the background.
    pub fn spawn(&self, args: &[String], env: &[(&str, &str)]) -> Child {
        self.command(args).envs(env.iter().copied()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("hyperexport starts")
    }

    /// `export SOURCE <repo args> --output json [extra...]`, asserted successful; returns the result.
    pub fn export(&self, source: &Path, repo: &str, extra: &[&str]) -> Value {
        let mut args = vec!["export".to_string(), source.display().to_string()];
        args.extend(self.repo_args(repo));
        args.extend(["--output".into(), "json".into()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        self.ok(&args).result()
    }
}

/// A background process (coordinator or agent): killed on drop, its log printed when the test
/// is failing.
pub struct Service {
    child: Child,
    log: PathBuf,
}

impl Service {
    /// Kills it with SIGKILL, as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks it to stop with SIGTERM and waits; returns its exit code.
    pub fn terminate(mut self) -> Option<i32> {
        self.signal(libc::SIGTERM);
        self.child.wait().expect("process exits").code()
    }

    /// Sends it a signal (e.g. SIGSTOP and SIGCONT to make it go silent and wake up).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- log ({}) ---\n{}", self.log.display(), fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

/// A coordinator started by [`Sandbox::start_coordinator`].
pub struct Coordinator {
    service: Service,
    /// `HOST:PORT` it serves on.
    pub addr: String,
    /// `HOST:PORT` of its `/metrics`, when started with `--metrics-listen`.
    pub metrics: Option<String>,
}

impl Coordinator {
    /// `--coordinator ADDR` for client commands.
    pub fn flag(&self) -> Vec<String> {
        vec!["--coordinator".into(), self.addr.clone()]
    }

    /// The client command `parts` pointed at this coordinator.
    pub fn cmd(&self, parts: &[&str]) -> Vec<String> {
        let mut a = args(parts);
        a.extend(self.flag());
        a
    }

    /// Kills it with SIGKILL, as a crash would.
    pub fn kill(self) {
        self.service.kill();
    }

    /// Asks it to stop with SIGTERM and waits; returns its exit code.
    pub fn terminate(self) -> Option<i32> {
        self.service.terminate()
    }
}

impl Sandbox {
    /// Spawns `hyperexport args...` in the background, its stderr in `<name>.log`.
    pub(crate) fn spawn_service(&self, name: &str, args: &[String], stdout: Stdio, env: &[(&str, &str)]) -> Service {
        let log = self.path(&format!("{name}.log"));
        let log_file = fs::OpenOptions::new().create(true).append(true).open(&log).expect("service log");
        let child = Command::new(bin())
            .args(args)
            .envs(env.iter().copied())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        Service { child, log }
    }

    /// Starts `hyperexport agent` for `region`, serving the VMs in `source`, with its state in
    /// `data` and the sandbox's password for its targets; extra arguments follow.
    pub fn start_agent(&self, coordinator: &Coordinator, region: &str, source: &Path, data: &str, extra: &[&str]) -> Service {
        self.start_agent_at(&coordinator.addr, region, source, data, extra, &[])
    }

    /// Like [`Sandbox::start_agent`], for coordinators at `addresses` (comma-separated: an HA
    /// group), with extra environment variables (e.g. test faults).
    pub fn start_agent_at(
        &self,
        addresses: &str,
        region: &str,
        source: &Path,
        data: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Service {
        let mut a = args(&["agent", "--coordinator", addresses, "--region", region]);
        a.extend(["--data".into(), self.path(data).display().to_string(), "--source".into(), format!("local:{}", source.display())]);
        a.extend(["--password-file".into(), self.path("password").display().to_string()]);
        a.extend(args(extra));
        self.spawn_service(data, &a, Stdio::null(), env)
    }

    /// Starts an agent like [`Sandbox::start_agent`] with `--metrics-listen 127.0.0.1:0`; returns
    /// it with the address of its `/metrics`.
    pub fn start_agent_with_metrics(&self, coordinator: &Coordinator, region: &str, source: &Path, data: &str) -> (Service, String) {
        self.start_agent_with_metrics_and(coordinator, region, source, data, &[])
    }

    /// Like [`Sandbox::start_agent_with_metrics`], with extra arguments (e.g. `--capacity 2`).
    pub fn start_agent_with_metrics_and(
        &self,
        coordinator: &Coordinator,
        region: &str,
        source: &Path,
        data: &str,
        extra: &[&str],
    ) -> (Service, String) {
        let mut a = args(&["agent", "--coordinator", &coordinator.addr, "--region", region, "--metrics-listen", "127.0.0.1:0"]);
        a.extend(["--data".into(), self.path(data).display().to_string(), "--source".into(), format!("local:{}", source.display())]);
        a.extend(["--password-file".into(), self.path("password").display().to_string()]);
        a.extend(args(extra));
        let mut service = self.spawn_service(data, &a, Stdio::piped(), &[]);
        let stdout = service.child.stdout.take().expect("piped stdout");
        let metrics = read_metrics_line(&mut std::io::BufReader::new(stdout));
        (service, metrics)
    }

    /// The terms of the assignments the agent with data folder `data` accepted, from its log.
    pub fn accepted_terms(&self, data: &str) -> Vec<u64> {
        let log = fs::read_to_string(self.path(&format!("{data}.log"))).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("assignment accepted"))
            .filter_map(|l| l.split("term=").nth(1).and_then(|t| t.split_whitespace().next()).and_then(|t| t.parse().ok()))
            .collect()
    }

    /// The id an agent started with data folder `data` keeps there.
    pub fn agent_id(&self, data: &str) -> String {
        fs::read_to_string(self.path(data).join("agent-id")).map(|s| s.trim().to_string()).unwrap_or_default()
    }

    /// The coordinator's view of a job (`jobs --output json`, this job's entry).
    pub fn job(&self, coordinator: &Coordinator, id: &str) -> Value {
        let mut a = args(&["jobs", "--output", "json"]);
        a.extend(coordinator.flag());
        let jobs: Value = serde_json::from_str(&self.ok(&a).stdout).expect("jobs JSON");
        jobs.as_array().and_then(|j| j.iter().find(|j| j["id"] == id).cloned()).unwrap_or(Value::Null)
    }

    /// Starts `hyperexport coordinator` on a free loopback port with its state in `data`, and
    /// waits until it has said where it listens.
    pub fn start_coordinator(&self, data: &str) -> Coordinator {
        self.start_coordinator_with(data, &[])
    }

    /// Like [`Sandbox::start_coordinator`], with extra arguments (e.g. `--heartbeat-ms`; a
    /// `--listen` among them replaces the free port).
    pub fn start_coordinator_with(&self, data: &str, extra: &[&str]) -> Coordinator {
        self.start_coordinator_with_env(data, extra, &[])
    }

    /// Like [`Sandbox::start_coordinator_with`], with extra environment variables (e.g. an
    /// injected clock).
    pub fn start_coordinator_with_env(&self, data: &str, extra: &[&str], env: &[(&str, &str)]) -> Coordinator {
        use std::io::BufRead;
        let mut a = args(&["coordinator"]);
        if !extra.contains(&"--listen") {
            a.extend(args(&["--listen", "127.0.0.1:0"]));
        }
        a.extend(["--data".into(), self.path(data).display().to_string()]);
        a.extend(args(extra));
        let mut service = self.spawn_service(data, &a, Stdio::piped(), env);
        let mut line = String::new();
        let stdout = service.child.stdout.take().expect("piped stdout");
        let mut stdout = std::io::BufReader::new(stdout);
        // A coordinator of an HA group stands by (forwarding) until it leads.
        while line.is_empty() || line.starts_with("standing by on ") {
            line.clear();
            if stdout.read_line(&mut line).expect("coordinator stdout") == 0 {
                break;
            }
        }
        let addr = match line.trim().strip_prefix("listening on ") {
            Some(addr) => addr.to_string(),
            None => panic!("coordinator did not start: {line:?}"),
        };
        let metrics = extra.contains(&"--metrics-listen").then(|| read_metrics_line(&mut stdout));
        Coordinator { addr, metrics, service }
    }
}

/// A replica receiver started by [`Sandbox::start_replica`].
pub struct Replica {
    /// The process.
    pub service: Service,
    /// `HOST:PORT` (UDP) it receives on.
    pub addr: String,
    /// `HOST:PORT` of its `/metrics`.
    pub metrics: String,
    /// Its folder of replicas.
    pub root: PathBuf,
}

impl Sandbox {
    /// Creates the cluster CA in `ca/` (once) and issues node `name` into `tls-<name>/` with
    /// 127.0.0.1 as an alternative name; returns that folder.
    pub fn node_tls(&self, name: &str) -> PathBuf {
        self.node_tls_of("ca", name)
    }

    /// Like [`Sandbox::node_tls`] with the CA in folder `ca` (another CA for a stranger).
    pub fn node_tls_of(&self, ca: &str, name: &str) -> PathBuf {
        let ca = self.path(ca).display().to_string();
        if !self.path(&format!("{ca}/ca.pem")).exists() {
            self.ok(&args(&["ca", "init", "--dir", &ca]));
        }
        let out = self.path(&format!("tls-{name}"));
        if !out.exists() {
            self.ok(&args(&["ca", "issue", name, "--ca", &ca, "--out", &out.display().to_string(), "--san", "127.0.0.1"]));
        }
        out
    }

    /// Starts `hyperexport replica serve` on a free loopback port with its replicas in `root`
    /// and node `name`'s certificate; `listen` picks the address (`127.0.0.1:0` for any port).
    pub fn start_replica(&self, name: &str, root: &str, listen: &str, env: &[(&str, &str)]) -> Replica {
        use std::io::BufRead;
        let tls = self.node_tls(name).display().to_string();
        let root = self.path(root);
        let a = args(&[
            "replica",
            "serve",
            "--listen",
            listen,
            "--root",
            &root.display().to_string(),
            "--tls",
            &tls,
            "--metrics-listen",
            "127.0.0.1:0",
        ]);
        let mut service = self.spawn_service(name, &a, Stdio::piped(), env);
        let mut stdout = std::io::BufReader::new(service.child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("replica stdout");
        let addr = match line.trim().strip_prefix("listening on ") {
            Some(addr) => addr.to_string(),
            None => panic!("replica receiver {name} did not start: {line:?}"),
        };
        let metrics = read_metrics_line(&mut stdout);
        Replica { service, addr, metrics, root }
    }
}

impl Sandbox {
    /// `replicate --vm vm --to ADDR --output json` from repository `repo` with node `a`'s
    /// certificate, and extra arguments; the run.
    pub fn replicate(&self, to: &str, extra: &[&str]) -> Run {
        let mut a = args(&["replicate", "--vm", "vm", "--to", to, "--output", "json", "--tls"]);
        a.push(self.node_tls("a").display().to_string());
        a.extend(self.repo_args("repo"));
        a.extend(args(extra));
        self.run(&a)
    }

    /// The id of repository `name` in the sandbox, which names its replicas.
    pub fn repo_id(&self, name: &str) -> String {
        let config: Value =
            serde_json::from_slice(&fs::read(self.path(&format!("{name}/config"))).expect("repository config")).expect("config JSON");
        config["id"].as_str().expect("config id").to_string()
    }

    /// `--repo DIR --password-file <sandbox>/password` for a repository outside the sandbox's names.
    pub fn repo_at(&self, dir: &Path) -> Vec<String> {
        vec!["--repo".into(), dir.display().to_string(), "--password-file".into(), self.path("password").display().to_string()]
    }
}

/// A counter's or gauge's value in a `/metrics` body (0 when the series is absent).
pub fn metric_value(body: &str, series: &str) -> f64 {
    body.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse::<f64>().ok())).unwrap_or(0.0)
}

/// Reads `metrics on ADDR` from a service's stdout.
fn read_metrics_line(stdout: &mut impl std::io::BufRead) -> String {
    let mut line = String::new();
    stdout.read_line(&mut line).expect("service stdout");
    match line.trim().strip_prefix("metrics on ") {
        Some(addr) => addr.to_string(),
        None => panic!("no metrics address: {line:?}"),
    }
}

/// `GET /metrics` from `addr`: the body.
pub fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("metrics endpoint reachable");
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// Builds an argument vector from string slices.
pub fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// Polls `cond` every 20 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `tool` runs (`tool --version`).
pub fn have_tool(tool: &str) -> bool {
    Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}
