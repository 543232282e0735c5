//! Disaster recovery from replicas between real processes: `verify --repair` fetches a damaged
//! chunk from another region's receiver, and `dr failover` restores from the best replica when
//! the source region is gone.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use hyperexport_tests::*;

const MIB: u64 = 1 << 20;

/// Regions B and C receiving replicas, and a VM image exported in region A (repository `repo`).
fn regions(sb: &Sandbox, size: u64) -> (Replica, Replica, PathBuf) {
    let b = sb.start_replica("b", "region-b", "127.0.0.1:0", &[]);
    let c = sb.start_replica("c", "region-c", "127.0.0.1:0", &[]);
    let image = sb.path("vm.img");
    write_image(&image, size, &[(0, random_bytes(size as usize, 7))]);
    sb.export(&image, "repo", &["--chunk-size", "256K"]);
    (b, c, image)
}

fn replicated(sb: &Sandbox, to: &Replica) {
    let run = sb.replicate(&to.addr, &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

fn chunk_names(repo: &Path) -> BTreeSet<String> {
    chunk_files(repo).iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect()
}

#[test]
fn a_corrupt_chunk_in_b_is_named_repaired_from_c_and_then_verifies() {
    let sb = Sandbox::new();
    let (b, c, _) = regions(&sb, 8 * MIB);
    replicated(&sb, &b);
    replicated(&sb, &c);
    let in_b = b.root.join(sb.repo_id("repo"));
    let damaged = chunk_files(&in_b)[5].clone();
    let id = damaged.file_name().unwrap().to_string_lossy().into_owned();
    corrupt_file(&damaged);

    let mut verify = args(&["verify", "latest"]);
    verify.extend(sb.repo_at(&in_b));
    let run = sb.run(&verify);
    assert_eq!(run.code, Some(3), "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains(&id), "verify names the damaged chunk {id}:\n{}", run.stdout);

    let mut repair = verify.clone();
    repair.extend(args(&["--repair", "--from", &format!("quic://{}", c.addr), "--tls"]));
    repair.push(sb.node_tls("a").display().to_string());
    let run = sb.ok(&repair);
    assert!(run.stdout.contains(&format!("chunk {id}: repaired from quic://{}", c.addr)), "{}", run.stdout);
    sb.ok(&verify);
    let fetched = metric_value(&scrape(&c.metrics), "hyperexport_replication_bytes_total{direction=\"fetched\"}");
    assert!(fetched > 0.0, "C served the copy");
}

#[test]
fn with_region_a_gone_failover_restores_from_the_best_replica_and_falls_back() {
    let sb = Sandbox::new();
    let size = 8 * MIB;
    let (b, c, image) = regions(&sb, size);
    replicated(&sb, &b);
    replicated(&sb, &c);
    let first = sb.path("first.img");
    std::fs::copy(&image, &first).unwrap();
    // A second point, which only C receives.
    patch_file(&image, 3 * MIB, &random_bytes(MIB as usize, 8));
    sb.export(&image, "repo", &["--chunk-size", "256K"]);
    replicated(&sb, &c);
    let (in_b, in_c) = (b.root.join(sb.repo_id("repo")), c.root.join(sb.repo_id("repo")));
    std::fs::remove_dir_all(sb.path("repo")).unwrap();

    let failover = |to: &str| {
        let mut a = args(&["dr", "failover", "--vm", "vm", "--from", in_b.to_str().unwrap(), "--from", in_c.to_str().unwrap()]);
        a.extend(args(&[
            "--to",
            sb.path(to).to_str().unwrap(),
            "--password-file",
            sb.path("password").to_str().unwrap(),
            "--output",
            "json",
        ]));
        sb.ok(&a).result()
    };
    // The newest point is in C.
    let result = failover("newest.img");
    assert_eq!(result["replica"], in_c.to_str().unwrap(), "{result}");
    assert!(result["skipped"].as_array().unwrap().is_empty(), "{result}");
    assert!(result["rto_seconds"].as_f64().unwrap() > 0.0 && result["gb_per_second"].as_f64().unwrap() > 0.0, "{result}");
    assert_eq!(sha256_file(&sb.path("newest.img")), sha256_file(&image));

    // A chunk only the newest point has is damaged in C: the failover says so and falls back to
    // the first point, from B (named first among equally new ones).
    let only_newest: Vec<String> = chunk_names(&in_c).difference(&chunk_names(&in_b)).cloned().collect();
    assert!(!only_newest.is_empty());
    let damaged = chunk_files(&in_c).into_iter().find(|f| f.file_name().unwrap().to_string_lossy() == only_newest[0]).unwrap();
    corrupt_file(&damaged);
    let result = failover("fallback.img");
    assert_eq!(result["replica"], in_b.to_str().unwrap(), "{result}");
    let skipped = result["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{result}");
    assert_eq!(skipped[0]["replica"], in_c.to_str().unwrap());
    assert!(skipped[0]["reason"].as_str().unwrap().contains("corrupt"), "{result}");
    assert_eq!(sha256_file(&sb.path("fallback.img")), sha256_file(&first));
}

#[test]
fn failback_sends_back_only_the_chunks_that_changed() {
    let sb = Sandbox::new();
    let size = 16 * MIB;
    let a = sb.start_replica("a", "region-a", "127.0.0.1:0", &[]);
    let b = sb.start_replica("b", "region-b", "127.0.0.1:0", &[]);
    let image = sb.path("vm.img");
    write_image(&image, size, &[(0, random_bytes(size as usize, 9))]);
    sb.export(&image, "repo", &["--chunk-size", "256K"]);
    replicated(&sb, &b);
    // Region A's repository is where A's receiver keeps replicas of it (by repository id).
    let id = sb.repo_id("repo");
    let in_a = a.root.join(&id);
    std::fs::rename(sb.path("repo"), &in_a).unwrap();
    let in_b = b.root.join(&id);

    // A fails: the VM comes up in B from B's replica, and runs there (1 MiB changes).
    std::fs::create_dir_all(sb.path("site-b")).unwrap();
    let running = sb.path("site-b/vm.img");
    let mut failover = args(&["dr", "failover", "--vm", "vm", "--from", in_b.to_str().unwrap(), "--to", running.to_str().unwrap()]);
    failover.extend(args(&["--password-file", sb.path("password").to_str().unwrap()]));
    sb.ok(&failover);
    patch_file(&running, 5 * MIB, &random_bytes(MIB as usize, 10));
    let mut export = args(&["export", running.to_str().unwrap(), "--output", "json", "--chunk-size", "256K"]);
    export.extend(sb.repo_at(&in_b));
    sb.ok(&export);

    // Failback: B's newest point goes back to A; only the 4 changed chunks cross the wire.
    let mut back = args(&["replicate", "--vm", "vm", "--to", &a.addr, "--output", "json", "--tls", sb.node_tls("b").to_str().unwrap()]);
    back.extend(sb.repo_at(&in_b));
    let result = sb.ok(&back).result();
    assert_eq!((result["chunks"].as_u64(), result["chunks_sent"].as_u64()), (Some(64), Some(4)), "{result}");
    assert!(result["wire_bytes"].as_u64().unwrap() < 2 * MIB, "{result}");
    let out = sb.path("back-in-a.img");
    let mut restore = args(&["restore", "latest", "--to", out.to_str().unwrap()]);
    restore.extend(sb.repo_at(&in_a));
    sb.ok(&restore);
    assert_eq!(sha256_file(&out), sha256_file(&running));
}
