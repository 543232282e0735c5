//! Sources and outputs in other formats: OVF and VMX folders, qcow2 and VMDK disks through
//! qemu-img, and OVA archives checked by independent tools (tar, sha256sum, xmllint, qemu-img).

use std::path::Path;

use hyperexport_tests::*;

const MIB: u64 = 1 << 20;

fn with_repo(sb: &Sandbox, parts: &[&str]) -> Vec<String> {
    let mut a = args(parts);
    a.extend(sb.repo_args("repo"));
    a
}

/// A VM folder: an OVF descriptor with a raw disk and a qcow2 disk.
fn ovf_vm(sb: &Sandbox) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let dir = sb.path("web01");
    std::fs::create_dir(&dir).unwrap();
    let raw = dir.join("system.img");
    write_image(&raw, 24 * MIB + 512, &[(0, random_bytes(3 * MIB as usize, 1)), (10 * MIB, b"etc/hosts\n".repeat(200_000))]);
    let data_raw = sb.path("data-source.raw");
    write_image(&data_raw, 16 * MIB, &[(MIB, random_bytes(2 * MIB as usize, 2))]);
    let qcow = dir.join("data.qcow2");
    tool("qemu-img", &["convert", "-f", "raw", "-O", "qcow2", data_raw.to_str().unwrap(), qcow.to_str().unwrap()]);
    let ovf = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
  <References><File ovf:href="system.img" ovf:id="f1"/><File ovf:href="data.qcow2" ovf:id="f2"/></References>
  <DiskSection><Info>disks</Info>
    <Disk ovf:capacity="{}" ovf:diskId="d1" ovf:fileRef="f1"/>
    <Disk ovf:capacity="16" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="d2" ovf:fileRef="f2"/>
  </DiskSection>
  <NetworkSection><Info>nets</Info><Network ovf:name="VM Network"/></NetworkSection>
  <VirtualSystem ovf:id="web01"><Info>vm</Info><Name>web01</Name>
    <OperatingSystemSection ovf:id="96"><Info>os</Info><Description>Debian 12</Description></OperatingSystemSection>
    <VirtualHardwareSection><Info>hw</Info>
      <Item><rasd:ElementName>cpu</rasd:ElementName><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>4</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:ElementName>mem</rasd:ElementName><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>2048</rasd:VirtualQuantity></Item>
      <Item><rasd:Connection>VM Network</rasd:Connection><rasd:ElementName>nic</rasd:ElementName><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceType>10</rasd:ResourceType></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#,
        24 * MIB + 512
    );
    std::fs::write(dir.join("web01.ovf"), ovf).unwrap();
    (dir, raw, data_raw)
}

#[test]
fn ovf_folder_with_qcow2_disk_restores_as_images_and_as_an_ova_that_independent_tools_accept() {
    let sb = Sandbox::new();
    let (dir, raw, data_raw) = ovf_vm(&sb);
    let result = sb.export(&dir, "repo", &[]);
    assert_eq!(result["vm"], "web01");
    assert_eq!(result["disks"][0]["name"], "system");
    assert_eq!(result["disks"][1]["name"], "data");
    sb.ok(&with_repo(&sb, &["verify", "latest"]));

    // Raw: one file per disk in a folder, bit-identical to the sources.
    sb.ok(&with_repo(&sb, &["restore", "latest", "--to", "raw-out"]));
    assert_eq!(sha256_file(&sb.path("raw-out/system.img")), sha256_file(&raw));
    assert_eq!(sha256_file(&sb.path("raw-out/data.img")), sha256_file(&data_raw));

    // qcow2 and vmdk: qemu-img sees the same content.
    for fmt in ["qcow2", "vmdk"] {
        let out = format!("{fmt}-out");
        sb.ok(&with_repo(&sb, &["restore", "latest", "--format", fmt, "--to", &out]));
        let disk = sb.path(&format!("{out}/data.{fmt}"));
        tool("qemu-img", &["compare", "-f", fmt, "-F", "raw", disk.to_str().unwrap(), data_raw.to_str().unwrap()]);
        let info = tool("qemu-img", &["info", "--output", "json", disk.to_str().unwrap()]);
        assert!(info.contains(&format!("\"format\": \"{fmt}\"")), "{info}");
    }

    // OVA: checked with tar, sha256sum, xmllint and qemu-img, not with our own code.
    sb.ok(&with_repo(&sb, &["restore", "latest", "--format", "ova", "--to", "web01.ova"]));
    let listing: Vec<String> = tool("tar", &["tf", sb.path("web01.ova").to_str().unwrap()]).lines().map(String::from).collect();
    assert_eq!(listing, ["web01.ovf", "web01.mf", "web01-disk1.vmdk", "web01-disk2.vmdk"]);
    let x = sb.path("x");
    std::fs::create_dir(&x).unwrap();
    tool("tar", &["xf", sb.path("web01.ova").to_str().unwrap(), "-C", x.to_str().unwrap()]);
    let manifest = std::fs::read_to_string(x.join("web01.mf")).unwrap();
    assert_eq!(manifest.lines().count(), 3, "{manifest}");
    for line in manifest.lines() {
        let (name, digest) =
            line.strip_prefix("SHA256(").and_then(|l| l.split_once(")= ")).unwrap_or_else(|| panic!("bad .mf line {line:?}"));
        let sum = tool("sha256sum", &[x.join(name).to_str().unwrap()]);
        assert_eq!(sum.split_whitespace().next().unwrap(), digest, "{name}");
    }
    tool("xmllint", &["--noout", x.join("web01.ovf").to_str().unwrap()]);
    let ovf = std::fs::read_to_string(x.join("web01.ovf")).unwrap();
    let hrefs: Vec<&str> = ovf.match_indices("ovf:href=\"").map(|(i, m)| ovf[i + m.len()..].split('"').next().unwrap()).collect();
    assert_eq!(hrefs, ["web01-disk1.vmdk", "web01-disk2.vmdk"], "References must match the archive");
    assert!(
        ovf.contains("<rasd:VirtualQuantity>4</rasd:VirtualQuantity>") && ovf.contains("<rasd:VirtualQuantity>2048</rasd:VirtualQuantity>")
    );
    assert!(ovf.contains("<rasd:Connection>VM Network</rasd:Connection>"));
    for (vmdk, source) in [("web01-disk1.vmdk", &raw), ("web01-disk2.vmdk", &data_raw)] {
        let info = tool("qemu-img", &["info", "--output", "json", x.join(vmdk).to_str().unwrap()]);
        assert!(info.contains("streamOptimized"), "{info}");
        tool("qemu-img", &["compare", "-f", "vmdk", "-F", "raw", x.join(vmdk).to_str().unwrap(), source.to_str().unwrap()]);
    }

    // OVF folder: the same files as the OVA's, byte for byte (checked above by other tools).
    sb.ok(&with_repo(&sb, &["restore", "latest", "--format", "ovf", "--to", "ovf-out"]));
    let mut written: Vec<String> =
        std::fs::read_dir(sb.path("ovf-out")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    written.sort();
    let mut expected = listing.clone();
    expected.sort();
    assert_eq!(written, expected, "the folder holds exactly the archive's files");
    for name in &listing {
        assert_eq!(sha256_file(&sb.path("ovf-out").join(name)), sha256_file(&x.join(name)), "{name}");
    }

    // The OVA exported again, as an archive and as its extracted folder, gives the same disks.
    for source in [sb.path("web01.ova"), x.clone()] {
        let again = sb.export(&source, "repo", &[]);
        assert_eq!(again["disks"][0]["sha256"], result["disks"][0]["sha256"]);
        assert_eq!(again["disks"][1]["sha256"], result["disks"][1]["sha256"]);
        assert_eq!(again["total"]["new_chunks"], 0, "same content, nothing new to store");
    }

    // An OVA whose disk no longer matches its manifest is refused, naming the file.
    let mut ova = std::fs::read(sb.path("web01.ova")).unwrap();
    let last_disk = ova.len() - 2048;
    ova[last_disk] ^= 0xff;
    std::fs::write(sb.path("tampered.ova"), ova).unwrap();
    let mut export = args(&["export", sb.path("tampered.ova").to_str().unwrap()]);
    export.extend(sb.repo_args("repo"));
    sb.run(&export).assert_clean_failure("web01-disk2.vmdk does not match its SHA-256 in the manifest");
    std::fs::write(sb.path("garbage.ova"), b"not a tar archive at all").unwrap();
    export[1] = sb.path("garbage.ova").display().to_string();
    sb.run(&export).assert_clean_failure("not a valid OVA");
}

#[test]
fn vmx_folder_exports_its_disks_in_device_order() {
    let sb = Sandbox::new();
    let dir = sb.path("app");
    std::fs::create_dir(&dir).unwrap();
    let a = sb.path("a.raw");
    write_image(&a, 8 * MIB, &[(0, random_bytes(MIB as usize, 3))]);
    tool("qemu-img", &["convert", "-f", "raw", "-O", "vmdk", a.to_str().unwrap(), dir.join("app.vmdk").to_str().unwrap()]);
    write_image(&dir.join("logs.img"), 2 * MIB, &[(0, b"x".repeat(1000))]);
    std::fs::write(dir.join("app.vmx"), "displayName = \"app server\"\nnumvcpus = \"2\"\nmemsize = \"1024\"\nscsi0:1.fileName = \"logs.img\"\nscsi0:0.fileName = \"app.vmdk\"\nide1:0.deviceType = \"cdrom-image\"\nide1:0.fileName = \"tools.iso\"\n").unwrap();
    let r = sb.export(&dir, "repo", &[]);
    assert_eq!(r["vm"], "app server");
    assert_eq!(r["disks"][0]["name"], "app");
    assert_eq!(r["disks"][0]["sha256"], sha256_file(&a));
    assert_eq!(r["disks"][1]["name"], "logs");
}

#[test]
fn a_missing_qemu_img_is_named_for_non_raw_disks() {
    let sb = Sandbox::new();
    let a = sb.path("a.raw");
    write_image(&a, MIB, &[(0, vec![1; 4096])]);
    let q = sb.path("disk.qcow2");
    tool("qemu-img", &["convert", "-f", "raw", "-O", "qcow2", a.to_str().unwrap(), q.to_str().unwrap()]);
    // PATH without qemu-img: only an empty folder.
    let empty = sb.path("empty-bin");
    std::fs::create_dir(&empty).unwrap();
    let mut export = args(&["export", "disk.qcow2", "--no-encryption", "--repo", "r"]);
    let r = sb.run_with_env(&export, &[("PATH", empty.to_str().unwrap())]);
    r.assert_clean_failure("qemu-img is needed to read qcow2 disk");
    assert!(r.stderr.contains("qemu-utils"), "{}", r.stderr);
    assert!(!sb.path("r").exists(), "a failed export must not create the repository");
    // Raw sources and raw restores need no qemu-img.
    export[1] = "a.raw".into();
    let ok = sb.run_with_env(&export, &[("PATH", empty.to_str().unwrap())]);
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
    let r = sb.run_with_env(
        &args(&["restore", "latest", "--repo", "r", "--format", "qcow2", "--to", "x.qcow2"]),
        &[("PATH", empty.to_str().unwrap())],
    );
    r.assert_clean_failure("qemu-img is needed");
    assert!(!Path::new(&sb.path("x.qcow2")).exists());
    // An OVA is written by hyperexport itself (streamOptimized VMDK), without qemu-img.
    let ova = sb.run_with_env(
        &args(&["restore", "latest", "--repo", "r", "--format", "ova", "--to", "x.ova"]),
        &[("PATH", empty.to_str().unwrap())],
    );
    assert_eq!(ova.code, Some(0), "{}", ova.stderr);
    let listing = tool("tar", &["tf", sb.path("x.ova").to_str().unwrap()]);
    assert_eq!(listing.lines().collect::<Vec<_>>(), ["a.ovf", "a.mf", "a-disk1.vmdk"], "{listing}");
}
