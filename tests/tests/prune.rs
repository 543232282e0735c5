//! Retention through the real binary: `prune` keeps the points its rules select and removes the
//! chunks only the others needed; it never runs while a transfer uses the replica.

use std::time::Duration;

use hyperexport_tests::*;

const MIB: usize = 1 << 20;

#[test]
fn prune_keeps_the_newest_points_and_frees_what_only_the_others_needed() {
    let sb = Sandbox::new();
    let image = sb.path("vm.img");
    write_image(&image, 4 * MIB as u64, &[(0, random_bytes(4 * MIB, 1))]);
    for round in 0..4u64 {
        patch_file(&image, round * MIB as u64, &random_bytes(MIB, 10 + round));
        sb.export(&image, "repo", &["--chunk-size", "256K"]);
    }
    assert_eq!(point_count(&sb.path("repo")), 4);
    let chunks_before = chunk_files(&sb.path("repo")).len();

    let prune = |extra: &[&str]| {
        let mut a = args(&["prune", "--repo", sb.path("repo").to_str().unwrap(), "--output", "json"]);
        a.extend(args(extra));
        sb.ok(&a).result()
    };
    let dry = prune(&["--keep-last", "2", "--dry-run"]);
    assert_eq!(dry["removed"]["vm"].as_array().unwrap().len(), 2, "{dry}");
    assert_eq!((point_count(&sb.path("repo")), chunk_files(&sb.path("repo")).len()), (4, chunks_before), "a dry run changes nothing");

    let done = prune(&["--keep-last", "2"]);
    assert_eq!(point_count(&sb.path("repo")), 2);
    // The first two exports' own 1 MiB changes (4 chunks each) are not in the newest two points.
    assert_eq!(done["chunks_removed"], 8, "{done}");
    assert_eq!(chunk_files(&sb.path("repo")).len(), chunks_before - 8);
    let mut verify = args(&["verify"]);
    verify.extend(sb.repo_args("repo"));
    sb.ok(&verify);
    let out = sb.path("latest.img");
    let mut restore = args(&["restore", "latest", "--to", out.to_str().unwrap()]);
    restore.extend(sb.repo_args("repo"));
    sb.ok(&restore);
    assert_eq!(sha256_file(&out), sha256_file(&image));

    sb.run(&args(&["prune", "--repo", sb.path("repo").to_str().unwrap()])).assert_clean_failure("--keep-");
}

#[test]
fn a_replica_is_not_pruned_while_a_transfer_uses_it_and_receivers_apply_retention() {
    let sb = Sandbox::new();
    let b = sb.start_replica("b", "region-b", "127.0.0.1:0", &[("HYPEREXPORT_TEST_RECEIVE_DELAY_MS", "20")]);
    let image = sb.path("vm.img");
    write_image(&image, 16 * MIB as u64, &[(0, random_bytes(16 * MIB, 2))]);
    sb.export(&image, "repo", &["--chunk-size", "256K"]);
    let replica = b.root.join(sb.repo_id("repo"));

    let mut a = args(&["replicate", "--vm", "vm", "--to", &b.addr, "--tls"]);
    a.push(sb.node_tls("a").display().to_string());
    a.extend(sb.repo_args("repo"));
    let mut sender = sb.spawn(&a, &[]);
    wait_until(Duration::from_secs(60), "the transfer to start", || chunk_files_if_any(&replica) > 4);
    // While chunks arrive, the replica's lock is held: a prune cannot start.
    let run = sb.run(&args(&["prune", "--repo", replica.to_str().unwrap(), "--keep-last", "1", "--lock-wait", "0"]));
    run.assert_clean_failure("locked");
    assert!(sender.wait().unwrap().success());

    // Two more points, the last one sent with a retention rule: the receiver prunes after it.
    for round in 0..2u64 {
        patch_file(&image, round * MIB as u64, &random_bytes(MIB, 20 + round));
        sb.export(&image, "repo", &["--chunk-size", "256K"]);
        let keep: &[&str] = if round == 1 { &["--keep-last", "1"] } else { &[] };
        let run = sb.replicate(&b.addr, keep);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
    }
    wait_until(Duration::from_secs(30), "the receiver to prune", || point_count(&replica) == 1);
    let mut verify = args(&["verify"]);
    verify.extend(sb.repo_at(&replica));
    sb.ok(&verify);
}

fn chunk_files_if_any(repo: &std::path::Path) -> usize {
    if repo.join("chunks").exists() { chunk_files(repo).len() } else { 0 }
}
