//! Bandwidth budgets end to end: a coordinator and agents on loopback move real data (exports
//! reading real disk images) under caps set with `hyperexport bandwidth set`. Rates are measured
//! from the agents' own count of bytes read from their sources (`hyperexport_export_bytes_total`,
//! counted after each read, apart from the limiter), over windows of several seconds.
//!
//! The tests run one at a time (they measure rates, and share two cores).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyperexport_tests::*;

const MIB: f64 = (1 << 20) as f64;
/// Every VM is this one image (hard links): it is read, never changed.
const IMAGE_SIZE: u64 = 1280 << 20;
/// Rates must be within this fraction of what is expected.
const TOLERANCE: f64 = 0.05;
static SERIAL: Mutex<()> = Mutex::new(());

const READ_BYTES: &str = "hyperexport_export_bytes_total ";
const AGENT_RATE: &str = "hyperexport_agent_bandwidth_rate_bytes_per_second ";

/// A coordinator, a repository to export into (256 KiB chunks, so that counters move in small
/// steps), and an image for the VMs.
struct Rig {
    sb: Sandbox,
    c: Coordinator,
    image: PathBuf,
    target: String,
}

/// An agent and the address of its `/metrics`.
struct Agent {
    _service: Service,
    metrics: String,
}

impl Agent {
    fn value(&self, series: &str) -> f64 {
        metric_value(&scrape(&self.metrics), series)
    }
}

impl Rig {
    fn new(env: &[(&str, &str)]) -> Rig {
        let sb = Sandbox::new();
        let image = sb.path("disk.img");
        {
            use std::io::Write;
            let mut f = std::io::BufWriter::new(std::fs::File::create(&image).unwrap());
            let block = vec![0x5au8; 1 << 20];
            for _ in 0..IMAGE_SIZE >> 20 {
                f.write_all(&block).unwrap();
            }
        }
        let tiny = sb.path("tiny.img");
        write_image(&tiny, 1 << 20, &[(0, random_bytes(1 << 20, 7))]);
        sb.export(&tiny, "repo", &["--chunk-size", "256K"]);
        let target = format!("file://{}", sb.path("repo").display());
        let c = sb.start_coordinator_with_env("coord", &["--heartbeat-ms", "500"], env);
        Rig { sb, c, image, target }
    }

    /// Starts agent `name` in `region` serving one VM, `NAME-vm`.
    fn agent(&self, name: &str, region: &str, extra: &[&str]) -> Agent {
        self.agent_serving(name, region, &[&format!("{name}-vm")], extra)
    }

    /// Starts agent `name` in `region` serving `vms`.
    fn agent_serving(&self, name: &str, region: &str, vms: &[&str], extra: &[&str]) -> Agent {
        let dir = self.sb.path(&format!("{name}-vms"));
        std::fs::create_dir_all(&dir).unwrap();
        for vm in vms {
            std::fs::hard_link(&self.image, dir.join(format!("{vm}.img"))).unwrap();
        }
        let (service, metrics) = self.sb.start_agent_with_metrics_and(&self.c, region, &dir, name, extra);
        Agent { _service: service, metrics }
    }

    fn set(&self, parts: &[&str]) {
        let mut a = args(&["bandwidth", "set"]);
        a.extend(args(parts));
        a.extend(self.c.flag());
        self.sb.ok(&a);
    }

    /// Submits an export of `vm` with extra options; returns the job id.
    fn submit(&self, vm: &str, extra: &[&str]) -> String {
        wait_until(Duration::from_secs(20), "the VM in the inventory", || self.sb.ok(&self.c.cmd(&["vms"])).stdout.contains(vm));
        let mut a = self.c.cmd(&["export", "--vm", vm, "--to", &self.target]);
        a.extend(args(extra));
        self.sb.ok(&a).stdout.trim().to_string()
    }

    fn cancel(&self, job: &str) {
        self.sb.ok(&self.c.cmd(&["cancel", job]));
    }
}

/// Waits until `agent`'s rate is `expected` MiB/s (the coordinator's allocation applied).
fn wait_for_rate(agent: &Agent, expected: f64) {
    wait_until(Duration::from_secs(30), &format!("an agent rate of {expected} MiB/s"), || {
        (agent.value(AGENT_RATE) / MIB - expected).abs() < 0.01
    });
}

/// Bytes per second each agent read from its sources over the next `seconds`.
fn measure(agents: &[&Agent], series: &str, seconds: f64) -> Vec<f64> {
    let before: Vec<(f64, Instant)> = agents.iter().map(|a| (a.value(series), Instant::now())).collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    agents.iter().zip(before).map(|(a, (bytes, at))| (a.value(series) - bytes) / at.elapsed().as_secs_f64()).collect()
}

/// Asserts that `measured` bytes per second is within 5% of `expected_mib` MiB/s.
fn assert_near(what: &str, measured: f64, expected_mib: f64) {
    let error = measured / (expected_mib * MIB) - 1.0;
    eprintln!("{what}: {:.2} MiB/s, expected {expected_mib:.2} MiB/s ({:+.2}%)", measured / MIB, error * 100.0);
    assert!(error.abs() <= TOLERANCE, "{what}: {:.2} MiB/s is not within 5% of {expected_mib:.2} MiB/s", measured / MIB);
}

#[test]
fn a_global_cap_and_a_region_cap_hold_and_an_idle_agent_s_share_goes_to_the_others() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rig = Rig::new(&[]);
    rig.set(&["--global", "60M", "--region", "b=20M", "--counts", "reads", "--interval", "1s"]);
    let a1 = rig.agent("a1", "a", &[]);
    let b1 = rig.agent("b1", "b", &[]);
    let b2 = rig.agent("b2", "b", &[]);
    let _ja = rig.submit("a1-vm", &[]);
    let _jb1 = rig.submit("b1-vm", &[]);
    let jb2 = rig.submit("b2-vm", &[]);
    wait_for_rate(&a1, 40.0);
    wait_for_rate(&b1, 10.0);
    wait_for_rate(&b2, 10.0);
    let rates = measure(&[&a1, &b1, &b2], READ_BYTES, 10.0);
    assert_near("all three agents", rates.iter().sum(), 60.0);
    let b = rates[1] + rates[2];
    eprintln!("region b: {:.2} MiB/s", b / MIB);
    assert!(b <= 20.0 * MIB * (1.0 + TOLERANCE), "region b moved {:.2} MiB/s over its 20 MiB/s cap", b / MIB);
    assert_near("region a's only agent", rates[0], 40.0);

    // b2 goes idle: within two intervals (2 s) b1 has region b's whole share.
    rig.cancel(&jb2);
    std::thread::sleep(Duration::from_secs(2));
    let rates = measure(&[&a1, &b1], READ_BYTES, 4.0);
    assert_near("b1 alone in region b", rates[1], 20.0);
    assert_near("a1", rates[0], 40.0);
}

#[test]
fn backlogged_classes_share_by_weight() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rig = Rig::new(&[]);
    rig.set(&["--global", "25M", "--class", "gold=4", "--class", "bronze=1", "--counts", "reads"]);
    let g = rig.agent("g", "a", &[]);
    let z = rig.agent("z", "a", &[]);
    rig.submit("g-vm", &["--class", "gold"]);
    rig.submit("z-vm", &["--class", "bronze"]);
    wait_for_rate(&g, 20.0);
    wait_for_rate(&z, 5.0);
    let rates = measure(&[&g, &z], READ_BYTES, 10.0);
    let ratio = rates[0] / rates[1];
    eprintln!("gold {:.2} MiB/s, bronze {:.2} MiB/s: ratio {ratio:.3}", rates[0] / MIB, rates[1] / MIB);
    assert!((ratio / 4.0 - 1.0).abs() <= 0.10, "ratio {ratio:.3} is not within 10% of 4");
    // An unknown class is refused at submission, naming it.
    rig.sb.run(&rig.c.cmd(&["export", "--vm", "g-vm", "--to", &rig.target, "--class", "platinum"])).assert_clean_failure("platinum");
}

#[test]
fn a_timetable_switch_changes_the_rate_within_one_interval() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Monday 2026-11-23 08:30 UTC, then 09:30.
    const MONDAY_0830: i64 = 1_795_422_600_000;
    let clock = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(clock.path(), MONDAY_0830.to_string()).unwrap();
    let rig = Rig::new(&[("HYPEREXPORT_TEST_CLOCK_FILE", clock.path().to_str().unwrap())]);
    rig.set(&["--global", "Mon-Fri-08:00,10M 09:00,30M 18:00,off", "--counts", "reads"]);
    let a = rig.agent("t", "a", &[]);
    rig.submit("t-vm", &[]);
    wait_for_rate(&a, 10.0);
    assert_near("at 08:30", measure(&[&a], READ_BYTES, 4.0)[0], 10.0);
    std::fs::write(clock.path(), (MONDAY_0830 + 3_600_000).to_string()).unwrap();
    let switched = Instant::now();
    wait_for_rate(&a, 30.0);
    let took = switched.elapsed();
    eprintln!("the new rate was in force on the agent {took:?} after the switch");
    // One interval (the default, 2 s), plus what a heartbeat, a gRPC message and a scrape take.
    assert!(took < Duration::from_millis(2500), "the timetable's switch took {took:?} to reach the agent");
    assert_near("at 09:30", measure(&[&a], READ_BYTES, 4.0)[0], 30.0);
}

#[test]
fn a_job_cap_holds_while_the_agent_carries_another_job() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rig = Rig::new(&[]);
    rig.set(&["--global", "40M", "--counts", "reads"]);
    let a = rig.agent_serving("j", "a", &["j-vm", "other-vm"], &["--capacity", "2"]);
    rig.submit("j-vm", &["--class", "bulk", "--bwlimit", "5M"]);
    rig.submit("other-vm", &[]);
    wait_for_rate(&a, 40.0);
    let capped = "hyperexport_agent_bandwidth_bytes_total{class=\"bulk\",direction=\"read\"} ";
    let other = "hyperexport_agent_bandwidth_bytes_total{class=\"standard\",direction=\"read\"} ";
    let before = (a.value(capped), a.value(other), a.value(READ_BYTES), Instant::now());
    std::thread::sleep(Duration::from_secs(10));
    let seconds = before.3.elapsed().as_secs_f64();
    let (job, rest, all) = (a.value(capped) - before.0, a.value(other) - before.1, a.value(READ_BYTES) - before.2);
    // The limiter's own counts per class add up to what the agent read (nothing bypassed it).
    assert!(((job + rest) / all - 1.0).abs() < 0.02, "class counts {job} + {rest} vs bytes read {all}");
    assert_near("the capped job", job / seconds, 5.0);
    assert_near("the agent", all / seconds, 40.0);
}

#[test]
fn agents_keep_their_last_rate_while_the_coordinator_is_down() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rig = Rig::new(&[]);
    rig.set(&["--global", "12M", "--counts", "reads"]);
    let a = rig.agent("k", "a", &[]);
    rig.submit("k-vm", &[]);
    wait_for_rate(&a, 12.0);
    assert_near("with the coordinator", measure(&[&a], READ_BYTES, 4.0)[0], 12.0);
    let Rig { sb: _sb, c, .. } = rig;
    c.kill();
    assert_near("without it", measure(&[&a], READ_BYTES, 6.0)[0], 12.0);
    assert_eq!(a.value(AGENT_RATE), 12.0 * MIB, "the agent's rate is its last allocation");
}
