//! A replication policy run by the coordinator: agents in region A export a VM on its interval and
//! replicate each point to receivers in regions B and C (agents with `--replica-listen`); the
//! coordinator tracks the RPO per VM and region, reports a breach when B is cut off, and B
//! catches up once it is back. At no moment does a replica show a point with missing chunks. A
//! test failover in C measures the RTO; the policy's retention keeps two points everywhere; with
//! region A gone, the coordinator fails the VM over where the newest point is.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use hyperexport_tests::*;
use serde_json::Value;

/// RPO target of the test's policy: above the longest a healthy region can lag while another
/// region's replication waits for a receiver that went away (10 s: the QUIC idle and connect
/// timeouts).
const RPO: &str = "20s";
const RPO_SECONDS: f64 = 20.0;

#[test]
fn a_policy_keeps_b_and_c_current_b_cut_off_breaches_and_catches_up() {
    let sb = Sandbox::new();
    let tls = |name: &str| sb.node_tls(name).display().to_string();
    let extra = ["--tls", &tls("coordinator"), "--dr-interval-ms", "300", "--heartbeat-ms", "200", "--metrics-listen", "127.0.0.1:0"];
    let c = sb.start_coordinator_with("coord", &extra);
    let (vms, empty) = (sb.path("vms"), sb.path("empty"));
    std::fs::create_dir_all(&vms).unwrap();
    std::fs::create_dir_all(&empty).unwrap();
    let image = vms.join("vm.img");
    write_image(&image, 4 << 20, &[(0, random_bytes(4 << 20, 11))]);
    let a = sb.start_agent(&c, "a", &vms, "agent-a", &["--tls", &tls("agent-a")]);
    let receiver = |region: &str| {
        let root = sb.path(&format!("replicas-{region}")).display().to_string();
        let name = format!("agent-{region}");
        sb.start_agent(&c, region, &empty, &name, &["--tls", &tls(&name), "--replica-listen", "127.0.0.1:0", "--replica-root", &root])
    };
    let b = receiver("b");
    let _c = receiver("c");
    let cli = |parts: &[&str]| {
        let mut a = args(parts);
        a.extend(c.flag());
        a.extend(args(&["--tls", &tls("cli")]));
        a
    };
    let target = format!("file://{}", sb.path("repo").display());
    let set = ["dr", "policy", "set", "gold", "--vms", "vm", "--target", &target, "--region", "b", "--region", "c"];
    let mut set = args(&set);
    set.extend(args(&["--rpo", RPO, "--interval", "1s", "--keep-last", "2"]));
    set.extend(c.flag());
    set.extend(args(&["--tls", &tls("cli")]));
    sb.ok(&set);
    let bad_cron =
        ["dr", "policy", "set", "nightly", "--vms", "vm", "--target", &target, "--region", "b", "--rpo", "1d", "--cron", "61 2 * * *"];
    sb.run(&cli(&bad_cron)).assert_clean_failure("cron minute field");
    let listed = sb.ok(&cli(&["dr", "policy", "list", "--output", "json"])).stdout;
    assert!(listed.contains("\"gold\"") && !listed.contains("nightly"), "{listed}");

    let status = || -> HashMap<String, Value> {
        let run = sb.run(&cli(&["dr", "status", "--output", "json"]));
        let rows: Value = serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("dr status: {e}\n{}", run.stderr));
        rows.as_array().unwrap().iter().map(|r| (r["target"].as_str().unwrap().to_string(), r.clone())).collect()
    };
    // Every point visible in a replica has all its chunks (quick verify of every point).
    let complete = || {
        for region in ["b", "c"] {
            let root = sb.path(&format!("replicas-{region}"));
            let Some(replica) = std::fs::read_dir(&root).ok().and_then(|mut d| d.next()).map(|e| e.unwrap().path()) else { continue };
            if !replica.join("config").exists() {
                continue;
            }
            let mut verify = args(&["verify", "--quick"]);
            verify.extend(sb.repo_at(&replica));
            let run = sb.run(&verify);
            assert!(
                run.code == Some(0) || run.stderr.contains("holds no points"),
                "a replica in {region} shows an incomplete point:\n{}\n{}",
                run.stdout,
                run.stderr
            );
        }
    };
    let ok = |s: &HashMap<String, Value>, region: &str| s.get(region).is_some_and(|r| r["state"] == "ok" && r["point"] != "");
    wait_until(Duration::from_secs(60), "B and C to hold a point", || {
        complete();
        let s = status();
        ok(&s, "b") && ok(&s, "c")
    });

    // B is cut off: its agent (and receiver) dies.
    b.kill();
    let cut = Instant::now();
    wait_until(Duration::from_secs(60), "B's RPO to breach", || {
        complete();
        let s = status();
        assert!(ok(&s, "c"), "C is affected: {:?}", s.get("c"));
        s.get("b").is_some_and(|r| r["state"] == "breach")
    });
    let s = status();
    assert!(s["b"]["rpo_seconds"].as_f64().unwrap() > RPO_SECONDS, "{}", s["b"]);
    assert!(!s["b"]["last_error"].as_str().unwrap().is_empty(), "the failure is named: {}", s["b"]);
    eprintln!("B in breach {:.1} s after the cut", cut.elapsed().as_secs_f64());
    // The breach event comes within one evaluation interval (300 ms) of the RPO passing 20 s.
    let log = std::fs::read_to_string(sb.path("coord.log")).unwrap();
    let event = log.lines().find(|l| l.contains("rpo breach") && l.contains("region=b")).expect("a breach event in the log");
    let rpo_at_event: f64 =
        event.split("rpo_s=").nth(1).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok()).expect("rpo_s in the event");
    assert!(rpo_at_event > RPO_SECONDS && rpo_at_event <= RPO_SECONDS + 0.3 + 0.1, "breach reported at RPO {rpo_at_event} s: {event}");
    let metrics = scrape(c.metrics.as_ref().unwrap());
    assert!(metric_value(&metrics, "hyperexport_rpo_breaches_total{target=\"b\"}") >= 1.0, "{metrics}");
    assert!(metrics.lines().any(|l| l.starts_with("hyperexport_rpo_seconds{") && l.contains("target=\"b\"")), "{metrics}");
    sb.run(&cli(&["dr", "status"])).assert_clean_failure("");

    // B is back (same data, same replica folder): it catches up.
    let _b = receiver("b");
    wait_until(Duration::from_secs(60), "B to catch up", || {
        complete();
        let s = status();
        assert!(ok(&s, "c"), "C is affected: {:?}", s.get("c"));
        ok(&s, "b") && s["b"]["rpo_seconds"].as_f64().unwrap() < RPO_SECONDS
    });
    sb.ok(&cli(&["dr", "status"]));

    // The RTO, measured by a test failover in C, shows in the status and the metrics.
    let drill = sb.ok(&cli(&["dr", "test-failover", "--vm", "vm", "--target", "c", "--output", "json"])).result();
    assert_eq!(drill["bytes"], 4 << 20, "{drill}");
    assert!(drill["rto_seconds"].as_f64().unwrap() > 0.0, "{drill}");
    wait_until(Duration::from_secs(10), "the next evaluation to show the RTO", || {
        status()["c"]["last_rto_seconds"].as_f64().unwrap() > 0.0
    });
    let metrics = scrape(c.metrics.as_ref().unwrap());
    assert!(metrics.lines().any(|l| l.starts_with("hyperexport_rto_seconds{") && l.contains("target=\"c\"")), "{metrics}");
    // A region whose agents keep no replicas cannot run one.
    sb.run(&cli(&["dr", "test-failover", "--vm", "vm", "--target", "a"])).assert_clean_failure("keeps replicas");
    let replica = std::fs::read_dir(sb.path("replicas-b")).unwrap().next().unwrap().unwrap().path();
    restores(&sb, &replica, &image);

    // The policy keeps the last 2 points, at the source and in each replica.
    let replica_c = std::fs::read_dir(sb.path("replicas-c")).unwrap().next().unwrap().unwrap().path();
    for repo in [sb.path("repo"), replica, replica_c] {
        wait_until(Duration::from_secs(30), "retention to apply", || point_count(&repo) <= 2);
    }

    // Region A is gone: the coordinator fails the VM over in the region with the newest point.
    a.kill();
    wait_until(Duration::from_secs(10), "A's agent to be taken for gone", || {
        sb.ok(&cli(&["vms", "--output", "json"])).stdout.trim() == "[]"
    });
    // The VM's RPO is still tracked without its agent, and keeps growing.
    let at_drop = status()["c"]["rpo_seconds"].as_f64().unwrap();
    wait_until(Duration::from_secs(10), "the RPO to keep growing with A gone", || {
        let s = status();
        s.contains_key("b") && s.get("c").is_some_and(|r| r["rpo_seconds"].as_f64().unwrap() > at_drop + 0.6)
    });
    let to = sb.path("failed-over.img");
    let result = sb.ok(&cli(&["dr", "failover", "--vm", "vm", "--to", to.to_str().unwrap(), "--output", "json"])).result();
    assert!(["b", "c"].contains(&result["region"].as_str().unwrap()), "{result}");
    assert!(result["rto_seconds"].as_f64().unwrap() > 0.0, "{result}");
    assert_eq!(sha256_file(&to), sha256_file(&image));
    sb.run(&cli(&["dr", "failover", "--vm", "ghost", "--to", to.to_str().unwrap()])).assert_clean_failure("no region holds");
}

fn restores(sb: &Sandbox, replica: &Path, image: &Path) {
    let out = sb.path("from-b.img");
    let mut restore = args(&["restore", "latest", "--to", out.to_str().unwrap()]);
    restore.extend(sb.repo_at(replica));
    sb.ok(&restore);
    assert_eq!(sha256_file(&out), sha256_file(image));
}
