//! The API from another language: a Python grpcio client, with stubs generated from `proto/`
//! inside the test, submits, watches and cancels a job on a real coordinator.

use std::path::PathBuf;
use std::process::Command;

use hyperexport_tests::*;

#[test]
fn a_python_grpc_client_submits_watches_and_cancels() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
    let out = Command::new("bash").arg(root.join("scripts/python-env.sh")).output().expect("bash runs");
    assert!(out.status.success(), "scripts/python-env.sh failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let python = String::from_utf8(out.stdout).unwrap().lines().last().expect("interpreter path").to_string();

    let sb = Sandbox::new();
    let c = sb.start_coordinator("coord");
    let stubs = sb.path("stubs");
    std::fs::create_dir(&stubs).unwrap();
    let run = Command::new(&python)
        .arg(root.join("tests/python/client.py"))
        .arg(&c.addr)
        .arg(root.join("proto"))
        .arg(&stubs)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "python client failed:\n{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("python client ok"), "{stdout}");
}
