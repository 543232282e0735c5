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
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
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
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let export = ["export", img.to_str().unwrap(), "--repo", "azure://exports/repo", "--password-file", &pw];
    sb.run_with_env(&args(&export), &env).assert_clean_failure("refused the credentials");

    let s3 = sb.start_s3();
    create_bucket(&s3, "exports");
    let missing = format!("s3://no-such-bucket/repo?endpoint={}", s3.endpoint);
    let r = sb.run_with_env(&args(&["export", img.to_str().unwrap(), "--repo", &missing, "--password-file", &pw]), &s3_env());
    r.assert_clean_failure("does not exist; create it first");
    assert!(r.stderr.contains("no-such-bucket"), "the message names the bucket: {}", r.stderr);
    let unknown = format!("s3://exports/repo?endpoint={}&color=blue", s3.endpoint);
    sb.run_with_env(&args(&["points", "--repo", &unknown, "--password-file", &pw]), &s3_env())
        .assert_clean_failure("unknown option \"color\"");
    let empty = format!("s3://exports/nothing-here?endpoint={}", s3.endpoint);
    sb.run_with_env(&args(&["points", "--repo", &empty, "--password-file", &pw]), &s3_env())
        .assert_clean_failure("no repository at s3://exports/nothing-here");
    assert!(s3_keys(&s3, "exports", "").is_empty(), "failed commands wrote nothing");
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
