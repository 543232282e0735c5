//! Agents in two regions attach to a coordinator and report their VMs; a dead agent's VMs leave
//! the inventory; agents reattach when the coordinator comes back.

use std::time::Duration;

use hyperexport_tests::*;

fn vms(sb: &Sandbox, c: &Coordinator, filters: &[&str]) -> Vec<(String, String)> {
    let mut a = args(&["vms", "--output", "json"]);
    a.extend(args(filters));
    a.extend(c.flag());
    let list: serde_json::Value = serde_json::from_str(&sb.ok(&a).stdout).unwrap();
    list.as_array().unwrap().iter().map(|v| (v["name"].as_str().unwrap().to_string(), v["region"].as_str().unwrap().to_string())).collect()
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[test]
fn agents_report_their_vms_and_leave_when_they_die() {
    let sb = Sandbox::new();
    let (eu, us) = (sb.path("eu"), sb.path("us"));
    std::fs::create_dir_all(eu.join("db")).unwrap();
    std::fs::create_dir_all(us.join("app")).unwrap();
    write_image(&eu.join("web.img"), 4096, &[(0, vec![1; 4096])]);
    let ovf = r#"<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"><References><File ovf:id="f" ovf:href="d.img"/></References><DiskSection><Disk ovf:diskId="d" ovf:fileRef="f"/></DiskSection><VirtualSystem ovf:id="db"><Name>db</Name></VirtualSystem></Envelope>"#;
    std::fs::write(eu.join("db/db.ovf"), ovf).unwrap();
    std::fs::write(us.join("app/app.vmx"), "displayName = \"app\"\nscsi0:0.fileName = \"a.img\"\n").unwrap();
    std::fs::write(us.join("notes.txt.ova"), "not an archive").unwrap();

    let c = sb.start_coordinator_with("coord", &["--heartbeat-ms", "200"]);
    let _eu_agent = sb.start_agent(&c, "eu", &eu, "agent-eu", &["--label", "tier=gold"]);
    let us_agent = sb.start_agent(&c, "us", &us, "agent-us", &[]);
    let all = owned(&[("app", "us"), ("db", "eu"), ("web", "eu")]);
    wait_until(Duration::from_secs(30), "both agents to report their VMs", || vms(&sb, &c, &[]) == all);
    assert_eq!(vms(&sb, &c, &["--region", "eu"]), owned(&[("db", "eu"), ("web", "eu")]));
    assert_eq!(vms(&sb, &c, &["--name", "w*"]), owned(&[("web", "eu")]));
    assert_eq!(vms(&sb, &c, &["--provider", "vsphere"]), owned(&[]));
    assert!(std::fs::read_to_string(sb.path("agent-us.log")).unwrap().contains("not a VM, left out of the inventory"));

    // A dead agent's VMs leave the inventory (its stream breaks, or its heartbeats stop).
    us_agent.kill();
    wait_until(Duration::from_secs(10), "the dead agent's VMs to leave", || vms(&sb, &c, &[]) == owned(&[("db", "eu"), ("web", "eu")]));
    // The agent's id is kept in its data folder.
    let id = std::fs::read_to_string(sb.path("agent-eu/agent-id")).unwrap();
    assert!(id.starts_with("agent-"), "{id}");
}

#[test]
fn agents_reattach_when_the_coordinator_comes_back() {
    let sb = Sandbox::new();
    let eu = sb.path("eu");
    std::fs::create_dir_all(&eu).unwrap();
    write_image(&eu.join("web.img"), 4096, &[(0, vec![1; 4096])]);
    let c = sb.start_coordinator_with("coord", &["--heartbeat-ms", "200"]);
    let addr = c.addr.clone();
    let _agent = sb.start_agent(&c, "eu", &eu, "agent-eu", &[]);
    wait_until(Duration::from_secs(30), "the agent to attach", || vms(&sb, &c, &[]).len() == 1);
    c.kill();
    // Same data, same port: the agent's backoff finds it again.
    let again = sb.start_coordinator_with("coord", &["--heartbeat-ms", "200", "--listen", &addr]);
    wait_until(Duration::from_secs(30), "the agent to reattach", || vms(&sb, &again, &[]).len() == 1);
    assert!(std::fs::read_to_string(sb.path("agent-eu.log")).unwrap().contains("detached from the coordinator"));
}

#[test]
fn agent_arguments_are_checked() {
    let sb = Sandbox::new();
    let r = sb.run(&args(&["agent", "--coordinator", "127.0.0.1:1", "--region", "eu", "--data", "d", "--source", "aws://x"]));
    r.assert_clean_failure("is neither local:DIR nor vsphere://USER@HOST");
    let r = sb.run(&args(&["agent", "--coordinator", "127.0.0.1:1", "--region", "eu", "--data", "d", "--source", "vsphere://x"]));
    r.assert_clean_failure("no user: write vsphere://USER@HOST");
    let r = sb.run(&args(&["agent", "--coordinator", "127.0.0.1:1", "--region", "eu", "--data", "d", "--source", "local:/nonexistent"]));
    r.assert_clean_failure("source folder /nonexistent does not exist");
    let r = sb.run(&args(&[
        "agent",
        "--coordinator",
        "127.0.0.1:1",
        "--region",
        "eu",
        "--data",
        "d",
        "--source",
        "local:.",
        "--label",
        "novalue",
    ]));
    r.assert_clean_failure("is not KEY=VALUE");
}
