//! Repositories on object stores: real S3-compatible (moto) and Azure Blob (Azurite) servers on
//! loopback, driven through the real binary.

use hyperexport_tests::*;

/// An image of `chunks` distinct 1 MiB data chunks with a 3 MiB hole after the first.
fn image(sb: &Sandbox, name: &str, chunks: u64, seed: u64) -> std::path::PathBuf {
    let path = sb.path(name);
    let mut writes = vec![(0, random_bytes(1 << 20, seed))];
    writes.extend((1..chunks).map(|i| ((i + 3) << 20, random_bytes(1 << 20, seed + i))));
    write_image(&path, (chunks + 3) << 20, &writes);
    path
}

/// Runs `hyperexport` with `env`, asserting success.
fn ok_env(sb: &Sandbox, parts: &[&str], env: &[(&str, &str)]) -> Run {
    let r = sb.run_with_env(&args(parts), env);
    assert_eq!(r.code, Some(0), "hyperexport {parts:?} failed:\n{}\n{}", r.stdout, r.stderr);
    r
}

/// Export → verify → restore through `repo` (a URL), bit-identical; then a second, changed
/// image reuses the unchanged chunks; prune keeps one point and removes the chunks only the
/// other needed. Returns the number of chunks the kept point has.
fn round_trip(sb: &Sandbox, repo: &str, env: &[(&str, &str)]) {
    let pw = sb.path("password").display().to_string();
    let img = image(sb, "vm.img", 6, 1);
    let first = ok_env(
        sb,
        &["export", img.to_str().unwrap(), "--repo", repo, "--password-file", &pw, "--chunk-size", "1M", "--output", "json"],
        env,
    );
    assert_eq!(first.result()["total"]["new_chunks"], 6, "{}", first.stdout);
    ok_env(sb, &["verify", "latest", "--repo", repo, "--password-file", &pw], env);
    let out = sb.path("vm.restored");
    ok_env(sb, &["restore", "latest", "--repo", repo, "--password-file", &pw, "--to", out.to_str().unwrap()], env);
    assert_eq!(sha256_file(&out), sha256_file(&img), "the restored disk differs from the exported one");

    patch_file(&img, 0, &random_bytes(1 << 20, 99));
    let second = ok_env(sb, &["export", img.to_str().unwrap(), "--repo", repo, "--password-file", &pw, "--output", "json"], env);
    assert_eq!(second.result()["total"]["new_chunks"], 1, "only the changed chunk is new: {}", second.stdout);
    let listed = ok_env(sb, &["points", "--repo", repo, "--password-file", &pw], env);
    assert!(listed.stdout.contains("2 points"), "{}", listed.stdout);
    let pruned = ok_env(sb, &["prune", "--repo", repo, "--keep-last", "1", "--output", "json"], env);
    assert_eq!(pruned.result()["chunks_removed"], 1, "{}", pruned.stdout);
    ok_env(sb, &["verify", "--repo", repo, "--password-file", &pw], env);
    ok_env(sb, &["restore", "latest", "--repo", repo, "--password-file", &pw, "--to", out.to_str().unwrap(), "--force"], env);
    assert_eq!(sha256_file(&out), sha256_file(&img), "the second point restores the changed disk");
}

#[test]
fn a_repository_on_s3_exports_verifies_restores_and_prunes_bit_identically() {
    let sb = Sandbox::new();
    let s3 = sb.start_s3();
    create_bucket(&s3, "exports");
    let repo = format!("s3://exports/site-a/repo?endpoint={}", s3.endpoint);
    round_trip(&sb, &repo, &s3_env());
    let keys = s3_keys(&s3, "exports", "site-a/repo/");
    assert!(keys.iter().any(|k| k == "site-a/repo/config"), "{keys:?}");
    assert_eq!(keys.iter().filter(|k| k.contains("/chunks/")).count(), 6, "the kept point's chunks and no others: {keys:?}");
    assert_eq!(keys.iter().filter(|k| k.contains("/points/")).count(), 1, "{keys:?}");
    assert!(!keys.iter().any(|k| k.contains("/locks/")), "released locks are removed: {keys:?}");
}

#[test]
fn a_repository_on_azure_blob_exports_verifies_restores_and_prunes_bit_identically() {
    let sb = Sandbox::new();
    let azurite = sb.start_azurite();
    create_container(&azurite, "exports");
    let env = azurite_env(&azurite.endpoint);
    let env = env_pairs(&env);
    round_trip(&sb, "azure://exports/repo", &env);
}

#[test]
fn wrong_credentials_and_missing_buckets_are_named_and_nothing_is_written() {
    let sb = Sandbox::new();
    let img = image(&sb, "vm.img", 1, 5);
    let pw = sb.path("password").display().to_string();
    let azurite = sb.start_azurite();
    create_container(&azurite, "exports");
    let mut env = azurite_env(&azurite.endpoint);
    env[3].1 = "d3JvbmcgYWNjb3VudCBrZXkgd3JvbmcgYWNjb3VudCBrZXkgd3Jvbmc=".into();
    let env = env_pairs(&env);
    let export = ["export", img.to_str().unwrap(), "--repo", "azure://exports/repo", "--password-file", &pw];
    sb.run_with_env(&args(&export), &env).assert_clean_failure("refused the credentials");

    // S3 with signatures checked: a wrong secret and an unknown key are refused by name.
    let (s3, id, secret) = sb.start_s3_with_keys("exports");
    let repo = format!("s3://exports/repo?endpoint={}", s3.endpoint);
    let keys = |id: &str, secret: &str| {
        vec![("AWS_ACCESS_KEY_ID", id.to_string()), ("AWS_SECRET_ACCESS_KEY", secret.to_string()), ("AWS_REGION", "us-east-1".into())]
    };
    let export = ["export", img.to_str().unwrap(), "--repo", &repo, "--password-file", &pw];
    for env in [keys(&id, "not-the-secret"), keys("AKIANOSUCHKEY", &secret)] {
        let env = env_pairs(&env);
        sb.run_with_env(&args(&export), &env).assert_clean_failure("refused the credentials");
    }
    let good = keys(&id, &secret);
    let good = env_pairs(&good);
    let points = args(&["points", "--repo", &repo, "--password-file", &pw]);
    sb.run_with_env(&points, &good).assert_clean_failure("no repository at s3://exports/repo");
    ok_env(&sb, &export, &good);
    assert!(ok_env(&sb, &["points", "--repo", &repo, "--password-file", &pw], &good).stdout.contains("1 points"), "the right key works");

    let missing = format!("s3://no-such-bucket/repo?endpoint={}", s3.endpoint);
    let r = sb.run_with_env(&args(&["export", img.to_str().unwrap(), "--repo", &missing, "--password-file", &pw]), &good);
    r.assert_clean_failure("does not exist; create it first");
    assert!(r.stderr.contains("no-such-bucket"), "the message names the bucket: {}", r.stderr);
    let unknown = format!("s3://exports/repo?endpoint={}&color=blue", s3.endpoint);
    sb.run_with_env(&args(&["points", "--repo", &unknown, "--password-file", &pw]), &s3_env())
        .assert_clean_failure("unknown option \"color\"");
    let empty = format!("s3://exports/nothing-here?endpoint={}", s3.endpoint);
    sb.run_with_env(&args(&["points", "--repo", &empty, "--password-file", &pw]), &good)
        .assert_clean_failure("no repository at s3://exports/nothing-here");
}

#[test]
fn concurrent_first_exports_to_one_s3_prefix_make_one_repository() {
    let sb = Sandbox::new();
    let s3 = sb.start_s3();
    create_bucket(&s3, "exports");
    let repo = format!("s3://exports/shared?endpoint={}", s3.endpoint);
    let pw = sb.path("password").display().to_string();
    let children: Vec<_> = (0..4)
        .map(|i| {
            let img = image(&sb, &format!("vm{i}.img"), 2, 10 * i);
            sb.spawn(&args(&["export", img.to_str().unwrap(), "--repo", &repo, "--password-file", &pw]), &s3_env())
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("export runs");
        assert!(out.status.success(), "a concurrent export failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let slots = s3_keys(&s3, "exports", "shared/keys/");
    assert_eq!(slots.len(), 1, "one repository, one key slot: {slots:?}");
    let listed = ok_env(&sb, &["points", "--repo", &repo, "--password-file", &pw], &s3_env());
    assert!(listed.stdout.contains("4 points"), "{}", listed.stdout);
}

#[test]
fn an_s3_server_dropping_connections_mid_upload_costs_retries_not_a_corrupt_point() {
    let sb = Sandbox::new();
    let s3 = sb.start_s3();
    create_bucket(&s3, "exports");
    // Every third connection is cut after 256 KiB of request: in the middle of a chunk's body.
    let proxy = DroppingProxy::start(s3.addr(), 3, 256 << 10);
    let repo = format!("s3://exports/flaky?endpoint=http://{}", proxy.addr);
    let pw = sb.path("password").display().to_string();
    let img = image(&sb, "vm.img", 12, 3);
    ok_env(&sb, &["export", img.to_str().unwrap(), "--repo", &repo, "--password-file", &pw, "--chunk-size", "1M"], &s3_env());
    assert!(proxy.drops() > 0, "the proxy cut no connection: the test proves nothing");
    // Read back straight from the server: every chunk is whole.
    let direct = format!("s3://exports/flaky?endpoint={}", s3.endpoint);
    ok_env(&sb, &["verify", "latest", "--repo", &direct, "--password-file", &pw], &s3_env());
    let out = sb.path("vm.restored");
    ok_env(&sb, &["restore", "latest", "--repo", &direct, "--password-file", &pw, "--to", out.to_str().unwrap()], &s3_env());
    assert_eq!(sha256_file(&out), sha256_file(&img));
}

#[test]
fn a_job_through_the_coordinator_exports_to_an_s3_target_the_agent_creates() {
    let sb = Sandbox::new();
    let s3 = sb.start_s3();
    create_bucket(&s3, "exports");
    let vms = sb.path("vms");
    std::fs::create_dir(&vms).unwrap();
    let img = image(&sb, "vms/s3-vm.img", 3, 7);
    let c = sb.start_coordinator("coord");
    let _agent = sb.start_agent_at(&c.addr, "eu", &vms, "agent", &[], &s3_env());
    wait_until(std::time::Duration::from_secs(30), "the agent to report its VM", || sb.ok(&c.cmd(&["vms"])).stdout.contains("s3-vm"));
    let repo = format!("s3://exports/agents?endpoint={}", s3.endpoint);
    let job = sb.ok(&c.cmd(&["export", "--vm", "s3-vm", "--to", &repo])).stdout.trim().to_string();
    let watched = sb.run(&c.cmd(&["watch", &job, "--output", "json"]));
    assert_eq!(watched.code, Some(0), "the job failed:\n{}\n{}", watched.stdout, watched.stderr);
    let pw = sb.path("password").display().to_string();
    let out = sb.path("restored.img");
    ok_env(&sb, &["restore", "latest", "--repo", &repo, "--password-file", &pw, "--to", out.to_str().unwrap()], &s3_env());
    assert_eq!(sha256_file(&out), sha256_file(&img));
    assert!(s3_keys(&s3, "exports", "agents/points/").len() == 1, "one point in the bucket");
}

#[test]
fn an_export_to_s3_killed_mid_upload_resumes_and_cleanup_leaves_only_what_points_use() {
    let sb = Sandbox::new();
    let s3 = sb.start_s3();
    create_bucket(&s3, "exports");
    let repo = format!("s3://exports/crash?endpoint={}", s3.endpoint);
    let pw = sb.path("password").display().to_string();
    let img = image(&sb, "vm.img", 24, 40);
    let export =
        args(&["export", img.to_str().unwrap(), "--repo", &repo, "--password-file", &pw, "--chunk-size", "1M", "--output", "json"]);
    let mut slow = s3_env();
    slow.push(("HYPEREXPORT_TEST_CHUNK_DELAY_MS", "100"));
    let mut child = sb.spawn(&export, &slow);
    let chunks = || s3_keys(&s3, "exports", "crash/chunks/").len();
    wait_until(std::time::Duration::from_secs(60), "a few chunks to be uploaded", || chunks() >= 4);
    child.kill().expect("kill -9 the export");
    child.wait().unwrap();
    let before = chunks();
    assert!(before < 24, "the export finished before it was killed: the test proves nothing");
    assert!(s3_keys(&s3, "exports", "crash/points/").is_empty(), "a killed export published a point");
    // The disk changes before the rerun: the old blob of its first chunk is needed by no point.
    patch_file(&img, 0, &random_bytes(1 << 20, 4242));

    let rerun = sb.run_with_env(&export, &s3_env());
    assert_eq!(rerun.code, Some(0), "the rerun failed:\n{}", rerun.stderr);
    let total = rerun.result()["total"].clone();
    assert!(total["found_chunks"].as_u64().unwrap() >= before as u64 - 1, "the rerun did not reuse the uploaded chunks: {total}");
    assert_eq!(total["found_chunks"].as_u64().unwrap() + total["new_chunks"].as_u64().unwrap(), 24, "{total}");

    let cleaned = ok_env(&sb, &["cleanup", "--repo", &repo, "--output", "json"], &s3_env());
    assert_eq!(cleaned.result()["chunks_removed"], 1, "{}", cleaned.stdout);
    let keys = s3_keys(&s3, "exports", "crash/");
    let stray: Vec<&String> = keys
        .iter()
        .filter(|k| {
            *k != "crash/config" && !k.starts_with("crash/keys/") && !k.starts_with("crash/points/") && !k.starts_with("crash/chunks/")
        })
        .collect();
    assert!(stray.is_empty(), "objects no point needs are left: {stray:?}");
    assert_eq!(keys.iter().filter(|k| k.starts_with("crash/chunks/")).count(), 24, "exactly the point's chunks");

    // An uninterrupted export of the same disk makes the same point: same chunks, nothing new.
    let again = ok_env(&sb, &["export", img.to_str().unwrap(), "--repo", &repo, "--password-file", &pw, "--output", "json"], &s3_env());
    let again = again.result()["total"].clone();
    assert_eq!((again["new_chunks"].as_u64(), again["reused_chunks"].as_u64()), (Some(0), Some(24)), "{again}");
    let listed: serde_json::Value =
        serde_json::from_str(&ok_env(&sb, &["points", "--repo", &repo, "--password-file", &pw, "--output", "json"], &s3_env()).stdout)
            .unwrap();
    let disks: Vec<&serde_json::Value> = listed.as_array().unwrap().iter().map(|p| &p["disks"]).collect();
    assert_eq!(disks.len(), 2);
    assert_eq!(disks[0], disks[1], "the resumed point and the uninterrupted one differ");
    let out = sb.path("vm.restored");
    ok_env(&sb, &["restore", "latest", "--repo", &repo, "--password-file", &pw, "--to", out.to_str().unwrap()], &s3_env());
    assert_eq!(sha256_file(&out), sha256_file(&img));
}

#[test]
fn a_repository_on_sftp_exports_verifies_restores_and_prunes_bit_identically() {
    let sb = Sandbox::new();
    let ssh = sb.start_sshd();
    let folder = sb.path("sftp-repo");
    round_trip(&sb, &ssh.url(&folder), &ssh.env());
    assert!(folder.join("config").is_file(), "the repository is in the server's folder");
    assert_eq!(chunk_files(&folder).len(), 6, "the kept point's chunks and no others");
    let leftovers: Vec<_> = std::fs::read_dir(folder.join("chunks"))
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
        .filter(|f| f.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    // A temp file of an upload cut off mid-file is cleared by cleanup, and nothing else is.
    let stray = folder.join("chunks/cut-off.0badc0de.0.tmp");
    std::fs::write(&stray, b"half a chunk").unwrap();
    let cleaned = ok_env(&sb, &["cleanup", "--repo", &ssh.url(&folder), "--output", "json"], &ssh.env());
    assert_eq!(
        (cleaned.result()["temp_files_removed"].as_u64(), cleaned.result()["chunks_removed"].as_u64()),
        (Some(1), Some(0)),
        "{}",
        cleaned.stdout
    );
    assert!(!stray.exists());

    // A server whose key is not the known one is refused, and so is a key it does not accept.
    let img = image(&sb, "other.img", 1, 77);
    let pw = sb.path("password").display().to_string();
    let export = args(&["export", img.to_str().unwrap(), "--repo", &ssh.url(&folder), "--password-file", &pw]);
    let mut env = ssh.env();
    std::fs::write(
        sb.path("wrong_known_hosts"),
        format!("[127.0.0.1]:{} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n", ssh.port),
    )
    .unwrap();
    let wrong_hosts = sb.path("wrong_known_hosts").display().to_string();
    env[1].1 = &wrong_hosts;
    sb.run_with_env(&export, &env).assert_clean_failure("does not match");
    let stranger = sb.path("stranger");
    let out = std::process::Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&stranger).output().unwrap();
    assert!(out.status.success());
    let stranger = stranger.display().to_string();
    let mut env = ssh.env();
    env[0].1 = &stranger;
    sb.run_with_env(&export, &env).assert_clean_failure("refused the SSH credentials");
}

/// Bytes process `pid` has caused to be written to storage so far (`/proc/PID/io`).
fn storage_writes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines().find_map(|l| l.strip_prefix("write_bytes: ")).and_then(|v| v.trim().parse().ok())
}

/// Multipart uploads moto holds open in `bucket`.
fn open_uploads(s3: &ObjectServer, bucket: &str) -> usize {
    let (status, body) = http(s3.addr(), "GET", &format!("/{bucket}?uploads"), &[]);
    assert_eq!(status, 200, "{body}");
    body.matches("<UploadId>").count()
}

#[test]
fn an_ova_of_a_2_gib_vm_streams_to_s3_without_temp_files_and_a_killed_one_is_aborted_by_cleanup() {
    let sb = Sandbox::new();
    let s3 = sb.start_s3();
    create_bucket(&s3, "exports");
    // A 2 GiB disk with 48 MiB of random data in three places and text in a fourth.
    let img = sb.path("big.img");
    let mut writes: Vec<(u64, Vec<u8>)> = (0..3).map(|i| ((i * 700 + 1) << 20, random_bytes(16 << 20, 90 + i))).collect();
    writes.push((1900 << 20, b"a line of a log file, again and again\n".repeat(200_000)));
    write_image(&img, 2 << 30, &writes);
    sb.export(&img, "repo", &[]);
    let url = format!("s3://exports/ova/big.ova?endpoint={}", s3.endpoint);
    let tmp = sb.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let mut env = s3_env();
    let tmp_str = tmp.display().to_string();
    env.push(("TMPDIR", &tmp_str));
    let mut restore = args(&["restore", "latest", "--format", "ova", "--to", &url]);
    restore.extend(sb.repo_args("repo"));

    // Killed while its upload is open: the parts stay on the server until cleanup aborts them.
    let mut child = sb.spawn(&restore, &env);
    wait_until(std::time::Duration::from_secs(120), "the restore to open its upload", || open_uploads(&s3, "exports") > 0);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(open_uploads(&s3, "exports"), 1, "the killed restore's upload is still open");
    let mut cleanup = args(&["cleanup", "--output", "json", "--repo"]);
    cleanup.push(sb.path("repo").display().to_string());
    let cleaned = sb.run_with_env(&cleanup, &env);
    assert_eq!(cleaned.code, Some(0), "{}", cleaned.stderr);
    assert_eq!(cleaned.result()["uploads_aborted"], 1, "{}", cleaned.stdout);
    assert_eq!(open_uploads(&s3, "exports"), 0, "cleanup left parts behind");
    assert!(s3_keys(&s3, "exports", "ova/").is_empty(), "a killed restore published an object");

    // Run to the end, its disk writes measured all along.
    let mut child = sb.spawn(&restore, &env);
    let pid = child.id();
    let (mut most, mut samples) = (0, 0);
    while child.try_wait().unwrap().is_none() {
        if let Some(written) = storage_writes(pid) {
            most = most.max(written);
            samples += 1;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(samples > 0, "/proc/{pid}/io was never read: nothing was measured");
    eprintln!("the restore wrote at most {most} bytes to local storage ({samples} samples)");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(most < 100 << 20, "the restore wrote {most} bytes to local storage");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "temp files were left");
    assert_eq!(open_uploads(&s3, "exports"), 0);

    // The object, downloaded, passes the OVA checks with outside tools.
    let ova = sb.path("big.ova");
    tool("curl", &["-sf", &format!("{}/exports/ova/big.ova", s3.endpoint), "-o", ova.to_str().unwrap()]);
    let listing = tool("tar", &["tf", ova.to_str().unwrap()]);
    assert_eq!(listing.lines().collect::<Vec<_>>(), ["big.ovf", "big.mf", "big-disk1.vmdk"], "{listing}");
    let x = sb.path("x");
    std::fs::create_dir(&x).unwrap();
    tool("tar", &["xf", ova.to_str().unwrap(), "-C", x.to_str().unwrap()]);
    let manifest = std::fs::read_to_string(x.join("big.mf")).unwrap();
    for line in manifest.lines() {
        let (name, sha) = line.strip_prefix("SHA256(").and_then(|l| l.split_once(")= ")).expect("a SHA256 line");
        assert_eq!(sha256_file(&x.join(name)), sha, "{name} does not match the manifest");
    }
    tool("xmllint", &["--noout", x.join("big.ovf").to_str().unwrap()]);
    tool("qemu-img", &["compare", "-f", "vmdk", "-F", "raw", x.join("big-disk1.vmdk").to_str().unwrap(), img.to_str().unwrap()]);
}
