//! Export → verify → restore round trips of raw images through the real binary.

use hyperexport_tests::*;

/// Exports `image`, restores the latest point as raw, and checks the bytes are identical.
fn round_trip(sb: &Sandbox, image: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let result = sb.export(image, "repo", extra);
    let mut verify = args(&["verify", "latest"]);
    verify.extend(sb.repo_args("repo"));
    sb.ok(&verify);
    let out = sb.path(&format!("{}.restored", image.file_name().unwrap().to_string_lossy()));
    let mut restore = args(&["restore", "latest", "--to", out.to_str().unwrap()]);
    restore.extend(sb.repo_args("repo"));
    sb.ok(&restore);
    assert_eq!(std::fs::metadata(&out).unwrap().len(), std::fs::metadata(image).unwrap().len());
    assert_eq!(sha256_file(&out), sha256_file(image), "restored {} differs", image.display());
    result
}

#[test]
fn sparse_image_with_odd_size_round_trips_and_stays_sparse() {
    let sb = Sandbox::new();
    let img = sb.path("odd.img");
    let size = 9 * 65536 * 16 + 12345; // not a multiple of the chunk size
    write_image(&img, size, &[(0, random_bytes(100_000, 1)), (3 << 20, vec![b'x'; 70_000]), (size - 10, vec![7; 10])]);
    let result = round_trip(&sb, &img, &["--chunk-size", "64K"]);
    let total = &result["total"];
    assert_eq!(total["size"], size);
    assert!(total["hole_bytes"].as_u64().unwrap() > size / 2, "holes not detected: {total}");
    assert!(allocated_bytes(&sb.path("odd.img.restored")) < size / 2, "restored image is not sparse");
    // No chunk was stored for a hole: only the data-bearing chunks are in the repository.
    assert_eq!(chunk_files(&sb.path("repo")).len() as u64, total["new_chunks"].as_u64().unwrap());
}

#[test]
fn empty_and_one_byte_disks_round_trip() {
    let sb = Sandbox::new();
    let empty = sb.path("empty.img");
    write_image(&empty, 0, &[]);
    let r = round_trip(&sb, &empty, &[]);
    assert_eq!(r["total"]["size"], 0);
    let one = sb.path("one.img");
    write_image(&one, 1, &[(0, vec![0x5a])]);
    let r = round_trip(&sb, &one, &[]);
    assert_eq!(r["total"]["new_chunks"], 1);
    let zero = sb.path("zero.img");
    write_image(&zero, 1, &[(0, vec![0])]);
    let r = round_trip(&sb, &zero, &[]);
    assert_eq!(r["total"]["new_chunks"], 0, "an all-zero chunk must be a hole");
}

#[test]
fn every_compression_and_unencrypted_repositories_round_trip() {
    for (i, extra) in
        [vec!["--compression", "lz4"], vec!["--compression", "none"], vec!["--compression", "zstd:19"]].into_iter().enumerate()
    {
        let sb = Sandbox::new();
        let img = sb.path(&format!("c{i}.img"));
        write_image(&img, 5 << 20, &[(0, b"log line 42\n".repeat(100_000)), (2 << 20, random_bytes(1 << 20, i as u64))]);
        round_trip(&sb, &img, &extra);
    }
    let sb = Sandbox::new();
    let img = sb.path("plain.img");
    write_image(&img, 1 << 20, &[(0, random_bytes(4096, 9))]);
    sb.ok(&args(&[
        "export",
        img.to_str().unwrap(),
        "--repo",
        sb.path("plain-repo").to_str().unwrap(),
        "--no-encryption",
        "--compression",
        "none",
    ]));
    let blob = std::fs::read(&chunk_files(&sb.path("plain-repo"))[0]).unwrap();
    assert_eq!(&blob[..6], b"HXCK\x01\x00", "uncompressed, unencrypted blob header");
    let out = sb.path("plain.out");
    sb.ok(&args(&["restore", "latest", "--repo", sb.path("plain-repo").to_str().unwrap(), "--to", out.to_str().unwrap()]));
    assert_eq!(sha256_file(&out), sha256_file(&img));
}

#[test]
fn incremental_export_sends_only_new_chunks_and_points_list_them() {
    let sb = Sandbox::new();
    let img = sb.path("vm.img");
    let size = 16 << 20;
    write_image(&img, size, &[(0, random_bytes(size as usize, 3))]);
    let first = sb.export(&img, "repo", &["--chunk-size", "1M"]);
    assert_eq!(first["total"]["new_chunks"], 16);
    // Change one byte in chunk 5.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .map(|f| std::os::unix::fs::FileExt::write_all_at(&f, b"!", (5 << 20) + 17))
        .unwrap()
        .unwrap();
    let second = sb.export(&img, "repo", &["--chunk-size", "1M"]);
    assert_eq!(second["total"]["new_chunks"], 1, "{second}");
    assert_eq!(second["total"]["reused_chunks"], 15);
    assert_eq!(second["total"]["new_bytes"], 1 << 20);
    assert_eq!(second["total"]["reused_bytes"], 15 << 20);
    assert_eq!(second["parent"], first["point"]);

    let mut list = args(&["points", "--output", "json"]);
    list.extend(sb.repo_args("repo"));
    let points: serde_json::Value = serde_json::from_str(&sb.ok(&list).stdout).unwrap();
    let points = points.as_array().unwrap();
    assert_eq!(points.len(), 2);
    let latest = &points[1];
    assert_eq!(latest["id"], second["point"]);
    assert_eq!(latest["vm"], "vm");
    assert!(latest["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(latest["disks"][0]["name"], "vm");
    assert_eq!(latest["disks"][0]["size"], size);
    assert_eq!(latest["disks"][0]["sha256"], sha256_file(&img));

    // Both points restore, each to its own content; a prefix selects the first.
    let out = sb.path("first.img");
    let prefix = &first["point"].as_str().unwrap()[..8];
    let mut restore = args(&["restore", prefix, "--to", out.to_str().unwrap()]);
    restore.extend(sb.repo_args("repo"));
    sb.ok(&restore);
    assert_eq!(sha256_file(&out), points[0]["disks"][0]["sha256"].as_str().unwrap());
    assert_ne!(sha256_file(&out), sha256_file(&img));
}

#[test]
fn json_output_has_progress_events_and_a_result() {
    let sb = Sandbox::new();
    let img = sb.path("j.img");
    write_image(&img, 3 << 20, &[(0, random_bytes(3 << 20, 4))]);
    let mut export = args(&["export", img.to_str().unwrap(), "--output", "json", "--chunk-size", "64K"]);
    export.extend(sb.repo_args("repo"));
    let run = sb.ok(&export);
    let events = run.json_lines();
    let progress: Vec<_> = events.iter().filter(|e| e["event"] == "progress").collect();
    assert!(progress.len() >= 2, "{}", run.stdout);
    let last = progress.last().unwrap();
    assert_eq!(last["finished"], true);
    assert_eq!(last["done_bytes"], 3 << 20);
    assert_eq!(last["total_bytes"], 3 << 20);
    assert!(last["bytes_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(run.result()["total"]["new_chunks"], 48);
}
