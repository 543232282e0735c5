//! The API from another language: a Python grpcio client, with stubs generated from `proto/`
//! inside the test, submits a job and watches it to success on a real coordinator and agent.

use std::path::PathBuf;
use std::process::Command;

use hyperexport_tests::*;

#[test]
fn a_python_grpc_client_submits_and_watches_a_job_to_success() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
    let out = Command::new("bash").arg(root.join("scripts/python-env.sh")).output().expect("bash runs");
    assert!(out.status.success(), "scripts/python-env.sh failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let python = String::from_utf8(out.stdout).unwrap().lines().last().expect("interpreter path").to_string();

    let sb = Sandbox::new();
    let c = sb.start_coordinator("coord");
    let vms = sb.path("vms");
    std::fs::create_dir(&vms).unwrap();
    for (i, name) in ["py-vm-1", "py-vm-2"].iter().enumerate() {
        write_image(&vms.join(format!("{name}.img")), 1 << 20, &[(0, random_bytes(1 << 20, i as u64))]);
    }
    let _agent = sb.start_agent(&c, "eu", &vms, "agent", &[]);
    let mut list = args(&["vms"]);
    list.extend(c.flag());
    wait_until(std::time::Duration::from_secs(30), "the agent to attach", || sb.ok(&list).stdout.contains("py-vm-2"));
    let stubs = sb.path("stubs");
    std::fs::create_dir(&stubs).unwrap();
    let run = Command::new(&python)
        .arg(root.join("tests/python/client.py"))
        .arg(&c.addr)
        .arg(root.join("proto"))
        .arg(&stubs)
        .arg(format!("file://{}", sb.path("repo").display()))
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "python client failed:\n{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("python client ok"), "{stdout}");
}
