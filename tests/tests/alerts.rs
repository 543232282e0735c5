//! The Prometheus alert rules in `deploy/prometheus/` pass `promtool check rules` and their unit
//! tests (`promtool test rules`, Debian package prometheus, installed by scripts/test.sh).

use std::path::PathBuf;
use std::process::Command;

fn promtool(args: &[&str]) -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("promtool runs (Debian package prometheus; scripts/test.sh installs it)");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} in {}:\n{said}", dir.display());
    said
}

#[test]
fn alert_rules_are_valid_and_their_unit_tests_pass() {
    assert!(promtool(&["check", "rules", "hyperexport-alerts.yml"]).contains("SUCCESS: 4 rules found"));
    assert!(promtool(&["test", "rules", "hyperexport-alerts.test.yml"]).contains("SUCCESS"));
}
