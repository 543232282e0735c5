//! The demo's cluster: a coordinator and agents started as child processes of this binary on
//! loopback, their logs in the demo folder, stopped with SIGTERM when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use hyperexport_proto::v1::ListVmsRequest;
use hyperexport_proto::v1::inventory_service_client::InventoryServiceClient;

/// A child process of the demo.
struct Member {
    name: String,
    child: Child,
}

/// The running coordinator and agents.
pub struct Cluster {
    /// `HOST:PORT` of the coordinator.
    pub addr: String,
    members: Vec<Member>,
    logs: PathBuf,
}

impl Cluster {
    /// Starts a coordinator on a free loopback port with its state and log under `dir`.
    pub fn start(dir: &Path) -> Result<Self> {
        let data = dir.join("coordinator");
        let mut child =
            spawn(dir, "coordinator", &["coordinator", "--listen", "127.0.0.1:0", "--heartbeat-ms", "500", "--data", path(&data)?])?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).context("reading the coordinator's address")?;
        let mut cluster =
            Cluster { addr: String::new(), members: vec![Member { name: "coordinator".into(), child }], logs: dir.to_path_buf() };
        cluster.addr = line
            .trim()
            .strip_prefix("listening on ")
            .map(str::to_string)
            .ok_or_else(|| anyhow!("the coordinator did not start (see {}): {line:?}", dir.join("coordinator.log").display()))?;
        Ok(cluster)
    }

    /// Starts agent `name` in `region`, serving the VMs in `source`, with the repository password
    /// in `password`.
    pub fn add_agent(&mut self, name: &str, region: &str, source: &Path, password: &Path) -> Result<()> {
        let data = self.logs.join(name);
        let args = [
            "agent",
            "--coordinator",
            &self.addr,
            "--region",
            region,
            "--data",
            path(&data)?,
            "--source",
            &format!("local:{}", path(source)?),
            "--password-file",
            path(password)?,
        ];
        let child = spawn(&self.logs, name, &args)?;
        self.members.push(Member { name: name.into(), child });
        Ok(())
    }

    /// The id agent `name` keeps in its data folder.
    pub fn agent_id(&self, name: &str) -> Result<String> {
        let file = self.logs.join(name).join("agent-id");
        Ok(std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?.trim().to_string())
    }

    /// Waits until the inventory lists `count` VMs.
    pub async fn wait_for_vms(&self, count: usize, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            if let Ok(mut client) = InventoryServiceClient::connect(format!("http://{}", self.addr)).await
                && let Ok(list) = client.list_vms(ListVmsRequest::default()).await
                && list.into_inner().vms.len() >= count
            {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!("the agents did not report {count} VMs within {timeout:?} (logs in {})", self.logs.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Agents first, then the coordinator.
        for m in self.members.iter_mut().rev() {
            // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
            unsafe { libc::kill(m.child.id() as i32, libc::SIGTERM) };
            if m.child.wait().is_err() {
                eprintln!("could not stop {}", m.name);
            }
        }
    }
}

fn path(p: &Path) -> Result<&str> {
    p.to_str().ok_or_else(|| anyhow!("{} is not UTF-8", p.display()))
}

/// Runs this binary with `args`, stderr to `<dir>/<name>.log`.
fn spawn(dir: &Path, name: &str, args: &[&str]) -> Result<Child> {
    let exe = std::env::current_exe().context("finding this program")?;
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).context("creating a log file")?;
    Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .env_remove("HYPEREXPORT_TEST_STALL_AFTER_CHUNKS")
        .env_remove("HYPEREXPORT_TEST_CHUNK_DELAY_MS")
        .spawn()
        .with_context(|| format!("starting the {name}"))
}
