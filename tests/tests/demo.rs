//! The demo command end to end (a coordinator and two agents as child processes), on a smaller
//! disk than its default.

use hyperexport_tests::*;

#[test]
fn demo_passes_all_its_checks() {
    let sb = Sandbox::new();
    let run = sb.ok(&args(&["demo", "--size", "320M", "--keep", sb.path("demo").to_str().unwrap()]));
    assert!(run.stdout.contains("6/6 checks passed"), "{}", run.stdout);
    for step in ["export 2 VMs (full)", "export demo-vm (1% changed)", "verify (full)", "restore (raw)"] {
        assert!(run.stdout.contains(step), "summary lacks {step}:\n{}", run.stdout);
    }
    // What it kept is a real repository that the CLI reads.
    let repo = sb.path("demo/repo");
    let points = sb.ok(&args(&[
        "points",
        "--repo",
        repo.to_str().unwrap(),
        "--password-file",
        sb.path("demo/password").to_str().unwrap(),
        "--output",
        "json",
    ]));
    let list: serde_json::Value = serde_json::from_str(&points.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 3, "demo-vm twice, db-vm once");
    // The cluster was stopped: no process of it is left.
    for log in ["coordinator.log", "agent-eu.log", "agent-us.log"] {
        let text = std::fs::read_to_string(sb.path("demo").join(log)).unwrap();
        assert!(text.contains("stopp"), "{log} does not show a clean stop:\n{text}");
    }
}
