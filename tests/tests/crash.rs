//! kill -9 in the middle of an export, and two writers on one repository.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hyperexport_tests::*;

const MIB: u64 = 1 << 20;
const STALL: &str = "HYPEREXPORT_TEST_STALL_AFTER_CHUNKS";

fn point_disks(repo: &Path, point: &str) -> serde_json::Value {
    for vm in std::fs::read_dir(repo.join("points")).unwrap() {
        for f in std::fs::read_dir(vm.unwrap().path()).unwrap() {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(f.unwrap().path()).unwrap()).unwrap();
            if v["point"]["id"] == point {
                return v["point"]["disks"].clone();
            }
        }
    }
    panic!("point {point} not found in {}", repo.display());
}

fn count_points(repo: &Path) -> usize {
    std::fs::read_dir(repo.join("points")).unwrap().map(|vm| std::fs::read_dir(vm.unwrap().path()).unwrap().count()).sum()
}

fn export_args(sb: &Sandbox, img: &Path, repo: &str, extra: &[&str]) -> Vec<String> {
    let mut a = args(&["export", img.to_str().unwrap(), "--chunk-size", "1M", "--output", "json"]);
    a.extend(sb.repo_args(repo));
    a.extend(args(extra));
    a
}

#[test]
fn kill_9_mid_export_then_rerun_resumes_to_the_same_point() {
    let sb = Sandbox::new();
    let img = sb.path("vm.img");
    write_image(&img, 64 * MIB, &[(0, random_bytes(64 * MIB as usize, 21))]);
    // Two repositories with the same keys: `a` is interrupted, `b` gets an uninterrupted export.
    let seed = sb.path("seed.img");
    write_image(&seed, 4096, &[(0, vec![9; 4096])]);
    sb.export(&seed, "a", &[]);
    assert!(Command::new("cp").args(["-a", sb.path("a").to_str().unwrap(), sb.path("b").to_str().unwrap()]).status().unwrap().success());

    let before = chunk_files(&sb.path("a"));
    let mut child = sb.spawn(&export_args(&sb, &img, "a", &[]), &[(STALL, "60")]);
    wait_until(Duration::from_secs(120), "60 chunks stored", || chunk_files(&sb.path("a")).len() >= 61);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(count_points(&sb.path("a")), 1, "an interrupted export must not publish a point");
    // As after a power loss: one chunk file of the interrupted run has a name but lost its data.
    let torn = chunk_files(&sb.path("a")).into_iter().find(|f| !before.contains(f)).unwrap();
    std::fs::OpenOptions::new().write(true).open(&torn).unwrap().set_len(100).unwrap();

    let rerun = sb.ok(&export_args(&sb, &img, "a", &[]));
    let result = rerun.result();
    assert_eq!(result["total"]["found_chunks"], 59, "{result}");
    assert_eq!(result["total"]["repaired_chunks"], 1, "the torn chunk must be written again");
    assert_eq!(result["total"]["new_chunks"], 5);
    assert!(result["total"]["new_chunks"].as_u64().unwrap() * 10 < 64, "rerun wrote 10% or more of the chunks again");
    assert!(
        rerun.json_lines().iter().any(|e| e["event"] == "note" && e["message"].as_str().unwrap().starts_with("resumed: 59 chunks")),
        "{}",
        rerun.stdout
    );

    let clean = sb.ok(&export_args(&sb, &img, "b", &[])).result();
    assert_eq!(clean["total"]["new_chunks"], 64);
    let resumed = point_disks(&sb.path("a"), result["point"].as_str().unwrap());
    let uninterrupted = point_disks(&sb.path("b"), clean["point"].as_str().unwrap());
    assert_eq!(resumed, uninterrupted, "the resumed point differs from an uninterrupted export's");
    assert_eq!(resumed[0]["sha256"], sha256_file(&img));
    let mut verify = args(&["verify"]);
    verify.extend(sb.repo_args("a"));
    sb.ok(&verify);
}

#[test]
fn a_second_writer_fails_cleanly_or_waits_and_the_repository_stays_valid() {
    let sb = Sandbox::new();
    let img = sb.path("vm.img");
    write_image(&img, 16 * MIB, &[(0, random_bytes(16 * MIB as usize, 5))]);
    let other = sb.path("other.img");
    write_image(&other, 8 * MIB, &[(0, random_bytes(8 * MIB as usize, 6))]);
    sb.export(&other, "repo", &[]);

    let mut holder = sb.spawn(&export_args(&sb, &img, "repo", &[]), &[(STALL, "3")]);
    let pid = holder.id().to_string();
    wait_until(Duration::from_secs(60), "the first writer to hold the lock", || {
        std::fs::read_to_string(sb.path("repo/locks/vm-vm")).is_ok_and(|t| t.contains(&pid))
    });
    // A second export of the same VM waits for it, here for 1 s, then fails cleanly.
    let second = sb.run(&export_args(&sb, &img, "repo", &["--lock-wait", "1"]));
    second.assert_clean_failure(&format!("is locked by another process (export of vm by pid {pid}"));
    // Another VM's export goes on meanwhile.
    let beside = sb.run(&export_args(&sb, &other, "repo", &["--lock-wait", "1"]));
    assert_eq!(beside.code, Some(0), "{}", beside.stderr);
    holder.kill().unwrap();
    holder.wait().unwrap();

    // Now two writers of one VM at once, the second willing to wait: both finish, one after the
    // other.
    let first = sb.spawn(&export_args(&sb, &img, "repo", &[]), &[]);
    let waiting = sb.run(&export_args(&sb, &img, "repo", &["--lock-wait", "120"]));
    assert_eq!(waiting.code, Some(0), "{}", waiting.stderr);
    let out = first.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(count_points(&sb.path("repo")), 4);
    let mut verify = args(&["verify"]);
    verify.extend(sb.repo_args("repo"));
    let v = sb.ok(&verify);
    assert!(v.stdout.contains("4 points checked, 0 failed"), "{}", v.stdout);
}

#[test]
fn files_left_by_a_dead_writer_are_cleared() {
    let sb = Sandbox::new();
    let img = sb.path("vm.img");
    write_image(&img, MIB, &[(0, random_bytes(MIB as usize, 8))]);
    sb.export(&img, "repo", &[]);
    let stale = sb.path("repo/tmp/0123.999.0");
    std::fs::write(&stale, b"half a chunk").unwrap();
    sb.export(&img, "repo", &[]);
    assert!(!stale.exists(), "the next writer must remove temp files of a dead one");
}
