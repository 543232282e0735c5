//! Wrong keys and damaged repositories: clear errors, non-zero exits, no panics, nothing written.

use std::collections::BTreeMap;
use std::path::Path;

use hyperexport_tests::*;

const CHUNK: u64 = 1 << 20;

/// Exports an 8 MiB random image with 1 MiB chunks into `repo`; returns the image path.
fn exported(sb: &Sandbox) -> std::path::PathBuf {
    let img = sb.path("disk.img");
    write_image(&img, 8 * CHUNK, &[(0, random_bytes(8 * CHUNK as usize, 11))]);
    sb.export(&img, "repo", &["--chunk-size", "1M"]);
    img
}

/// Path and parsed content of the only point file.
fn point_file(repo: &Path) -> (std::path::PathBuf, serde_json::Value) {
    let vm_dir = std::fs::read_dir(repo.join("points")).unwrap().next().unwrap().unwrap().path();
    let file = std::fs::read_dir(vm_dir).unwrap().next().unwrap().unwrap().path();
    let v = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    (file, v)
}

fn chunk_path(repo: &Path, index: usize) -> std::path::PathBuf {
    let (_, point) = point_file(repo);
    let id = point["point"]["disks"][0]["chunks"][index].as_str().unwrap().to_string();
    repo.join("chunks").join(&id[..2]).join(id)
}

/// Every file under `dir` with its content, for "nothing changed" checks.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.display().to_string(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn with_repo(sb: &Sandbox, parts: &[&str]) -> Vec<String> {
    let mut a = args(parts);
    a.extend(sb.repo_args("repo"));
    a
}

#[test]
fn wrong_password_is_refused_and_writes_nothing() {
    let sb = Sandbox::new();
    let img = exported(&sb);
    std::fs::write(sb.path("wrong"), "not the password\n").unwrap();
    let before = snapshot(&sb.path("repo"));
    let repo = sb.path("repo").display().to_string();
    let wrong = sb.path("wrong").display().to_string();
    for cmd in [
        args(&["export", img.to_str().unwrap(), "--repo", &repo, "--password-file", &wrong]),
        args(&["verify", "--repo", &repo, "--password-file", &wrong]),
        args(&["points", "--repo", &repo, "--password-file", &wrong]),
        args(&["restore", "latest", "--to", "out.img", "--repo", &repo, "--password-file", &wrong]),
    ] {
        sb.run(&cmd).assert_clean_failure("wrong password or key file");
    }
    sb.run(&args(&["points", "--repo", &repo])).assert_clean_failure("is encrypted");
    assert_eq!(snapshot(&sb.path("repo")), before, "a refused command changed the repository");
    assert!(!sb.path("out.img").exists());
    // The environment variable works like restic's.
    let r = sb.run_with_env(&args(&["points", "--repo", &repo]), &[("HYPEREXPORT_PASSWORD", PASSWORD)]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
}

#[test]
fn a_flipped_byte_is_named_with_its_disk_and_offset() {
    let sb = Sandbox::new();
    exported(&sb);
    let victim = chunk_path(&sb.path("repo"), 5);
    let mut blob = std::fs::read(&victim).unwrap();
    let mid = blob.len() / 2;
    blob[mid] ^= 0x01;
    std::fs::write(&victim, blob).unwrap();
    let id = victim.file_name().unwrap().to_str().unwrap().to_string();

    let r = sb.run(&with_repo(&sb, &["verify", "latest"]));
    assert_eq!(r.code, Some(3), "{}{}", r.stdout, r.stderr);
    let line = r.stdout.lines().find(|l| l.contains(&id)).unwrap_or_else(|| panic!("chunk not named:\n{}", r.stdout));
    assert!(line.contains("disk disk ") && line.contains(&format!("offset {}", 5 * CHUNK)) && line.contains("corrupt"), "{line}");
    assert_eq!(r.stdout.lines().filter(|l| l.contains("corrupt")).count(), 1, "only one chunk is bad:\n{}", r.stdout);

    let j = sb.run(&with_repo(&sb, &["verify", "latest", "--output", "json"]));
    let report = j.result();
    assert_eq!(report["ok"], false);
    assert_eq!(report["problems"][0]["offset"], 5 * CHUNK);
    assert_eq!(report["problems"][0]["chunk"], id);

    // Quick mode checks presence only, so it passes; restore refuses and leaves no output.
    assert_eq!(sb.run(&with_repo(&sb, &["verify", "--quick"])).code, Some(0));
    sb.run(&with_repo(&sb, &["restore", "latest", "--to", "out.img"])).assert_clean_failure(&format!("offset {}", 5 * CHUNK));
    assert!(!sb.path("out.img").exists());
    assert!(std::fs::read_dir(sb.path("")).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains("hxpartial")));
}

#[test]
fn truncated_and_missing_chunks_are_reported() {
    let sb = Sandbox::new();
    exported(&sb);
    let truncated = chunk_path(&sb.path("repo"), 2);
    let len = std::fs::metadata(&truncated).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&truncated).unwrap().set_len(len / 3).unwrap();
    let missing = chunk_path(&sb.path("repo"), 7);
    std::fs::remove_file(&missing).unwrap();

    let r = sb.run(&with_repo(&sb, &["verify", "latest"]));
    assert_eq!(r.code, Some(3));
    assert!(r.stdout.contains(&format!("offset {} (chunk #2", 2 * CHUNK)) && r.stdout.contains("corrupt"), "{}", r.stdout);
    assert!(r.stdout.contains(&format!("offset {} (chunk #7", 7 * CHUNK)) && r.stdout.contains("missing"), "{}", r.stdout);
    let q = sb.run(&with_repo(&sb, &["verify", "latest", "--quick"]));
    assert_eq!(q.code, Some(3));
    assert!(q.stdout.contains("missing") && !q.stdout.contains("corrupt"), "{}", q.stdout);
    assert!(!r.stderr.contains("panicked") && !q.stderr.contains("panicked"));
}

#[test]
fn corrupt_point_files_give_clear_errors() {
    let sb = Sandbox::new();
    exported(&sb);
    let (file, _) = point_file(&sb.path("repo"));
    let text = std::fs::read_to_string(&file).unwrap();
    // An altered value: the MAC no longer matches.
    std::fs::write(&file, text.replacen("\"size\":", "\"size\":1", 1)).unwrap();
    sb.run(&with_repo(&sb, &["points"])).assert_clean_failure("MAC does not match");
    // Cut in half: not JSON any more. `verify` of all points reports it and checks the others.
    std::fs::write(&file, &text[..text.len() / 2]).unwrap();
    let other = sb.path("other.img");
    write_image(&other, CHUNK, &[(0, random_bytes(CHUNK as usize, 12))]);
    sb.export(&other, "repo", &[]);
    let r = sb.run(&with_repo(&sb, &["verify"]));
    r.assert_clean_failure("is corrupt");
    assert_eq!(r.code, Some(3));
    assert!(r.stderr.contains(file.file_name().unwrap().to_str().unwrap()), "file not named: {}", r.stderr);
    assert!(r.stdout.contains("of \"other\": ok") && r.stdout.contains("2 points checked, 1 failed"), "{}", r.stdout);
    // Binary garbage.
    std::fs::write(&file, [0xffu8, 0, 1, 2]).unwrap();
    sb.run(&with_repo(&sb, &["restore", "latest", "--to", "x.img"])).assert_clean_failure("is corrupt");
}

#[test]
fn unknown_format_versions_are_refused_by_name() {
    let sb = Sandbox::new();
    exported(&sb);
    let config = sb.path("repo/config");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("\"version\": 1", "\"version\": 9")).unwrap();
    sb.run(&with_repo(&sb, &["points"])).assert_clean_failure("format version 9, this build reads version 1");
    std::fs::write(&config, &text).unwrap();

    let (file, _) = point_file(&sb.path("repo"));
    let p = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, p.replacen("\"version\":1", "\"version\":2", 1)).unwrap();
    sb.run(&with_repo(&sb, &["points"])).assert_clean_failure("format version 2");
    std::fs::write(&file, &p).unwrap();

    let victim = chunk_path(&sb.path("repo"), 0);
    let mut blob = std::fs::read(&victim).unwrap();
    blob[4] = 7;
    std::fs::write(&victim, blob).unwrap();
    let r = sb.run(&with_repo(&sb, &["verify", "latest"]));
    assert_eq!(r.code, Some(3));
    assert!(r.stdout.contains("blob format version 7 is not supported"), "{}", r.stdout);
}

#[test]
fn bad_arguments_name_what_is_wrong() {
    let sb = Sandbox::new();
    let img = sb.path("a.img");
    write_image(&img, 4096, &[(0, vec![1; 4096])]);
    let repo = sb.path("r").display().to_string();
    let cases: [(&[&str], &str); 6] = [
        (&["export", "a.img", "--repo", &repo, "--no-encryption", "--chunk-size", "3M"], "power of two"),
        (&["export", "a.img", "--repo", &repo, "--no-encryption", "--compression", "gzip"], "unknown compression"),
        (&["export", "a.img", "--repo", &repo], "no password"),
        (&["export", "missing.img", "--repo", &repo, "--no-encryption"], "missing.img"),
        (&["points", "--repo", "nowhere"], "no repository at nowhere"),
        (&["restore", "nothex", "--repo", &repo, "--to", "x"], "no repository"),
    ];
    for (a, needle) in cases {
        sb.run(&args(a)).assert_clean_failure(needle);
    }
    sb.ok(&args(&["export", "a.img", "--repo", &repo, "--no-encryption"]));
    sb.run(&args(&["restore", "zz", "--repo", &repo, "--to", "x"])).assert_clean_failure("neither `latest` nor a hex id");
    sb.run(&args(&["restore", "latest", "--repo", &repo, "--to", "a.img"])).assert_clean_failure("already exists");
    assert_eq!(std::fs::read(&img).unwrap(), vec![1; 4096], "restore must not overwrite without --force");
}
