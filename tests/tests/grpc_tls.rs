//! The gRPC API with mutual TLS: a coordinator started with `--tls` serves agents and clients
//! that hold a certificate from the cluster CA, and nobody else.

use std::time::Duration;

use hyperexport_tests::*;

#[test]
fn a_coordinator_with_tls_serves_members_of_the_cluster_only() {
    let sb = Sandbox::new();
    let dir = sb.path("vms");
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join("web.img");
    write_image(&image, 2 << 20, &[(0, random_bytes(2 << 20, 1))]);
    let tls = |name: &str| sb.node_tls(name).display().to_string();
    let c = sb.start_coordinator_with("coord", &["--tls", &tls("coordinator")]);
    let _agent = sb.start_agent(&c, "eu", &dir, "agent", &["--tls", &tls("agent")]);
    let mallory = sb.node_tls_of("other-ca", "mallory").display().to_string();
    let _intruder = sb.start_agent(&c, "eu", &dir, "intruder", &["--tls", &mallory]);
    let with = |parts: &[&str], tls: Option<&str>| {
        let mut a = args(parts);
        a.extend(c.flag());
        if let Some(dir) = tls {
            a.extend(args(&["--tls", dir]));
        }
        a
    };
    let cli = tls("cli");
    let agents = || {
        let out = sb.ok(&with(&["vms", "--output", "json"], Some(&cli))).stdout;
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["agent"].to_string())
            .collect::<Vec<_>>()
    };
    wait_until(Duration::from_secs(30), "the agent with a cluster certificate to attach", || !agents().is_empty());

    // A job runs end to end over TLS.
    let target = format!("file://{}", sb.path("repo").display());
    sb.ok(&with(&["export", "--vm", "web", "--to", &target, "--wait"], Some(&cli)));
    let out = sb.path("web.restored");
    let mut restore = args(&["restore", "latest", "--to", out.to_str().unwrap()]);
    restore.extend(sb.repo_args("repo"));
    sb.ok(&restore);
    assert_eq!(sha256_file(&out), sha256_file(&image));

    // Without a certificate, or with one from another CA: refused.
    sb.run(&with(&["jobs"], None)).assert_clean_failure("coordinator");
    sb.run(&with(&["jobs"], Some(&mallory))).assert_clean_failure("coordinator");
    let plain = args(&["jobs", "--coordinator", &format!("http://{}", c.addr)]);
    sb.run(&plain).assert_clean_failure("coordinator");
    // The intruding agent never attached: only one agent serves the VM.
    assert_eq!(agents(), vec![format!("{:?}", sb.agent_id("agent"))]);
}

#[test]
fn a_coordinator_without_tls_serves_loopback_only() {
    let sb = Sandbox::new();
    let data = sb.path("coord").display().to_string();
    sb.run(&args(&["coordinator", "--listen", "0.0.0.0:0", "--data", &data]))
        .assert_clean_failure("refusing to serve the API in plaintext");
}
