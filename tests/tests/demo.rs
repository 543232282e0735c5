//! The demo command end to end, on a smaller disk than its default.

use hyperexport_tests::*;

#[test]
fn demo_passes_all_its_checks() {
    let sb = Sandbox::new();
    let run = sb.ok(&args(&["demo", "--size", "320M", "--keep", sb.path("demo").to_str().unwrap()]));
    assert!(run.stdout.contains("5/5 checks passed"), "{}", run.stdout);
    for step in ["export (full)", "export (1% changed)", "verify (full)", "restore (raw)"] {
        assert!(run.stdout.contains(step), "summary lacks {step}:\n{}", run.stdout);
    }
    // What it kept is a real repository that the CLI reads.
    std::fs::write(sb.path("demo-password"), "demo password\n").unwrap();
    let repo = sb.path("demo/repo");
    let points = sb.ok(&args(&[
        "points",
        "--repo",
        repo.to_str().unwrap(),
        "--password-file",
        sb.path("demo-password").to_str().unwrap(),
        "--output",
        "json",
    ]));
    let list: serde_json::Value = serde_json::from_str(&points.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
}
