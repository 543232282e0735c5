//! `/metrics` of the coordinator and of an agent after real jobs: the names of DESIGN §8 are
//! there with the values the jobs imply, and `promtool check metrics` (Debian prometheus) finds
//! nothing to complain about.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use hyperexport_tests::*;

const SIZE: usize = 3 << 20;

fn promtool_check(sb: &Sandbox, name: &str, text: &str) {
    std::fs::write(sb.path(name), text).unwrap();
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian package prometheus; scripts/test.sh installs it)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics on {name}:\n{said}\n---\n{text}");
}

/// The value of the sample `series` (name with its labels, as rendered).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

#[test]
fn coordinator_and_agent_metrics_are_complete_and_promtool_clean() {
    let sb = Sandbox::new();
    let vms = sb.path("vms");
    std::fs::create_dir(&vms).unwrap();
    write_image(&vms.join("web.img"), SIZE as u64, &[(0, random_bytes(SIZE, 1))]);
    let c = sb.start_coordinator_with("coord", &["--metrics-listen", "127.0.0.1:0"]);
    let (_agent, agent_metrics) = sb.start_agent_with_metrics(&c, "eu", &vms, "agent");
    let mut list = args(&["vms"]);
    list.extend(c.flag());
    wait_until(Duration::from_secs(30), "the agent to attach", || sb.ok(&list).stdout.contains("web"));
    let mut export = args(&["export", "--vm", "web", "--to", &format!("file://{}", sb.path("repo").display()), "--wait"]);
    export.extend(c.flag());
    sb.ok(&export);

    let coordinator = scrape(c.metrics.as_ref().unwrap());
    promtool_check(&sb, "coordinator.metrics", &coordinator);
    assert_eq!(value(&coordinator, r#"hyperexport_exports_total{provider="local",status="succeeded"}"#), 1.0);
    assert_eq!(value(&coordinator, "hyperexport_queue_length"), 0.0);
    assert_eq!(value(&coordinator, "hyperexport_active_exports"), 0.0);
    assert_eq!(value(&coordinator, "hyperexport_coordinator_agents"), 1.0);
    assert_eq!(value(&coordinator, "hyperexport_coordinator_queue_wait_seconds_count"), 1.0);
    assert_eq!(value(&coordinator, "hyperexport_coordinator_placement_latency_seconds_count"), 1.0);
    assert!(value(&coordinator, "process_resident_memory_bytes") > 0.0);
    assert!(value(&coordinator, "process_cpu_seconds_total") >= 0.0, "CPU time is reported");
    // No caps configured: nothing is allocated to the class of the finished job, and the agent
    // runs unlimited (+Inf).
    assert_eq!(value(&coordinator, r#"hyperexport_coordinator_bandwidth_allocated_bytes_per_second{class="standard"}"#), 0.0);

    let agent = scrape(&agent_metrics);
    promtool_check(&sb, "agent.metrics", &agent);
    assert_eq!(value(&agent, r#"hyperexport_exports_total{provider="local",status="succeeded"}"#), 1.0);
    assert_eq!(value(&agent, "hyperexport_export_duration_seconds_count"), 1.0);
    assert_eq!(value(&agent, "hyperexport_export_bytes_total"), SIZE as f64);
    assert_eq!(value(&agent, "hyperexport_active_exports"), 0.0);
    assert!(value(&agent, "hyperexport_download_speed_bytes_per_second") >= 0.0);
    assert_eq!(value(&agent, "hyperexport_agent_bandwidth_rate_bytes_per_second"), f64::INFINITY);
    assert_eq!(value(&agent, r#"hyperexport_agent_bandwidth_bytes_total{class="standard",direction="read"}"#), SIZE as f64);
    assert!(value(&agent, "process_resident_memory_bytes") > 0.0);
}
