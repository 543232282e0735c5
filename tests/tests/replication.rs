//! Replication over QUIC between real processes: `hyperexport replicate` (region A) to
//! `hyperexport replica serve` receivers (regions B and C), with certificates from the cluster
//! CA made by `hyperexport ca`.

use std::time::Duration;

use hyperexport_tests::{
    Replica, Sandbox, args, chunk_files, metric_value, patch_file, random_bytes, scrape, sha256_file, wait_until, write_image,
};
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// Restores the newest point of the replica in `replica` and checks it equals `image`.
fn restores_identical(sb: &Sandbox, replica: &Replica, image: &std::path::Path, out: &str) {
    let repo = replica.root.join(sb.repo_id("repo"));
    let mut verify = args(&["verify", "latest"]);
    verify.extend(sb.repo_at(&repo));
    sb.ok(&verify);
    let out = sb.path(out);
    let mut restore = args(&["restore", "latest", "--to", out.to_str().unwrap()]);
    restore.extend(sb.repo_at(&repo));
    sb.ok(&restore);
    assert_eq!(sha256_file(&out), sha256_file(image), "the point restored from {} differs", replica.root.display());
}

#[test]
fn a_point_replicates_to_two_regions_and_a_one_percent_change_sends_little() {
    let sb = Sandbox::new();
    let b = sb.start_replica("b", "region-b", "127.0.0.1:0", &[]);
    let c = sb.start_replica("c", "region-c", "127.0.0.1:0", &[]);
    let size = 64 * MIB;
    let image = sb.path("vm.img");
    write_image(&image, size, &[(0, random_bytes(size as usize, 1))]);
    sb.export(&image, "repo", &["--chunk-size", "256K"]);

    for (replica, out) in [(&b, "from-b.img"), (&c, "from-c.img")] {
        let run = sb.replicate(&replica.addr, &[]);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        let result = run.result();
        assert_eq!(result["chunks_sent"], 256, "{result}");
        assert!(result["wire_bytes"].as_u64().unwrap() >= size, "{result}");
        restores_identical(&sb, replica, &image, out);
    }

    // 1% of the disk changes (655,360 bytes from 20 MiB on: three 256 KiB chunks).
    let change = (size / 100) as usize;
    patch_file(&image, 20 * MIB, &random_bytes(change, 2));
    sb.export(&image, "repo", &["--chunk-size", "256K"]);
    let run = sb.replicate(&b.addr, &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let result = run.result();
    assert_eq!(result["chunks_sent"], 3, "{result}");
    let wire = result["wire_bytes"].as_u64().unwrap();
    eprintln!("a 1% change of {size} bytes: {wire} bytes on the wire ({:.2}%)", wire as f64 * 100.0 / size as f64);
    assert!(wire <= size * 2 / 100, "{wire} bytes on the wire for a 1% change of {size}: {result}");
    restores_identical(&sb, &b, &image, "changed-from-b.img");
    let received = metric_value(&scrape(&b.metrics), "hyperexport_replication_points_total{direction=\"received\"}");
    assert_eq!(received, 2.0);
}

#[test]
fn strangers_and_noise_are_refused_logged_and_counted() {
    let sb = Sandbox::new();
    let b = sb.start_replica("b", "region-b", "127.0.0.1:0", &[]);
    let image = sb.path("vm.img");
    write_image(&image, 4 * MIB, &[(0, random_bytes(4 * MIB as usize, 3))]);
    sb.export(&image, "repo", &["--chunk-size", "256K"]);

    // A node certificate from another CA.
    let mallory = sb.node_tls_of("other-ca", "mallory");
    let mut a = args(&["replicate", "--vm", "vm", "--to", &b.addr, "--tls", mallory.to_str().unwrap()]);
    a.extend(sb.repo_args("repo"));
    sb.run(&a).assert_clean_failure("replicating to");
    // Logs go through a writer thread: the line may land a moment after the counter moves.
    wait_until(Duration::from_secs(10), "the refusal to be counted and logged", || {
        metric_value(&scrape(&b.metrics), "hyperexport_replication_refused_total{reason=\"handshake\"}") >= 1.0
            && std::fs::read_to_string(sb.path("b.log")).unwrap_or_default().contains("replication connection refused")
    });
    assert!(!b.root.join(sb.repo_id("repo")).exists(), "nothing was written for the stranger");

    // Random datagrams at the QUIC port.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..2000u64 {
        let len = 1 + (i as usize * 7919) % 1400;
        socket.send_to(&random_bytes(len, i), &b.addr).unwrap();
    }
    // The receiver is still there and serves a member of the cluster.
    let run = sb.replicate(&b.addr, &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    restores_identical(&sb, &b, &image, "from-b.img");
}

#[test]
fn a_receiver_killed_mid_stream_resumes_without_sending_much_again() {
    let sb = Sandbox::new();
    let slow = [("HYPEREXPORT_TEST_RECEIVE_DELAY_MS", "10")];
    let b = sb.start_replica("b", "region-b", "127.0.0.1:0", &slow);
    let size = 128 * MIB;
    let image = sb.path("vm.img");
    write_image(&image, size, &[(0, random_bytes(size as usize, 4))]);
    sb.export(&image, "repo", &["--chunk-size", "256K"]);
    let stored: u64 = chunk_files(&sb.path("repo")).iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();

    let mut a = args(&["replicate", "--vm", "vm", "--to", &b.addr, "--output", "json", "--streams", "1", "--tls"]);
    a.push(sb.node_tls("a").display().to_string());
    a.extend(sb.repo_args("repo"));
    let mut sender = sb.spawn(&a, &[]);
    // Past half, inside a batch: part of it is stored, the rest still on its way.
    wait_until(Duration::from_secs(120), "half the chunks arrive at B", || {
        metric_value(&scrape(&b.metrics), "hyperexport_replication_bytes_total{direction=\"received\"}") >= (stored / 2 + 3 * MIB) as f64
    });
    let root = b.root.clone();
    b.service.kill();
    let _ = sender.kill();
    let output = sender.wait_with_output().unwrap();
    // The sender counts a batch before it goes: its last report covers all it may have sent.
    let before: u64 = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "progress")
        .filter_map(|v| v["progress"]["chunk_bytes_sent"].as_u64())
        .max()
        .expect("progress before the kill");
    assert!(before < stored, "the sender finished before the kill ({before} of {stored})");

    let b = sb.start_replica("b", "region-b", "127.0.0.1:0", &[]);
    assert_eq!(b.root, root);
    let run = sb.replicate(&b.addr, &["--streams", "1"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let after = run.result()["chunk_bytes_sent"].as_u64().unwrap();
    let again = (before + after).saturating_sub(stored);
    eprintln!("sent again after the kill: {again} bytes of {size} ({before} before, {after} after, {stored} stored)");
    assert!(again < size / 10, "{again} bytes sent again ({before} before the kill, {after} after, {stored} in all)");
    restores_identical(&sb, &b, &image, "from-b.img");
}
