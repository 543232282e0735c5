//! VMware `.vmx` files: `key = "value"` lines naming the VM, its hardware and disk files.

use std::collections::BTreeMap;

use hyperexport_shared::point::VmInfo;

/// What a `.vmx` says about a VM.
#[derive(Debug, Clone, PartialEq)]
pub struct Vmx {
    /// `displayName`.
    pub name: Option<String>,
    /// CPUs, memory, guest OS, networks.
    pub info: VmInfo,
    /// Disk file names in device order (`scsi0:0.fileName`, ...), CD-ROMs and absent devices left out.
    pub disks: Vec<String>,
}

/// Sort key of a device name such as `scsi0:10`: bus, then controller and unit as numbers (so
/// `scsi0:2` comes before `scsi0:10`).
fn device_order(dev: &str) -> (String, u32, u32) {
    let bus: String = dev.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
    let (controller, unit) = dev[bus.len()..].split_once(':').unwrap_or(("", ""));
    (bus, controller.parse().unwrap_or(u32::MAX), unit.parse().unwrap_or(u32::MAX))
}

/// Parses a `.vmx`. Lines that are not `key = value` are reported with their number.
pub fn parse(text: &str) -> Result<Vmx, String> {
    let mut kv = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or_else(|| format!("line {} is not `key = \"value\"`: {line:?}", n + 1))?;
        let v = v.trim();
        let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
        kv.insert(k.trim().to_ascii_lowercase(), v.to_string());
    }
    let get = |k: &str| kv.get(k).map(String::as_str);
    let truthy = |k: &str| get(k).is_none_or(|v| !v.eq_ignore_ascii_case("false"));
    let mut devices: Vec<(String, String)> = Vec::new();
    for (key, value) in &kv {
        let Some(dev) = key.strip_suffix(".filename") else { continue };
        let is_disk_bus = ["scsi", "sata", "ide", "nvme"].iter().any(|b| dev.starts_with(b)) && dev.contains(':');
        let is_cdrom =
            get(&format!("{dev}.devicetype")).is_some_and(|t| t.contains("cdrom")) || value.to_ascii_lowercase().ends_with(".iso");
        if is_disk_bus && !is_cdrom && truthy(&format!("{dev}.present")) && !value.is_empty() {
            devices.push((dev.to_string(), value.clone()));
        }
    }
    devices.sort_by_key(|(dev, _)| device_order(dev));
    let mut info = VmInfo {
        cpus: get("numvcpus").and_then(|v| v.parse().ok()).unwrap_or(1),
        memory_mib: get("memsize").and_then(|v| v.parse().ok()).unwrap_or(0),
        guest_os: get("guestos").map(str::to_string),
        networks: Vec::new(),
    };
    for i in 0..10 {
        if get(&format!("ethernet{i}.present")).is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            info.networks.push(get(&format!("ethernet{i}.networkname")).unwrap_or("").to_string());
        }
    }
    Ok(Vmx { name: get("displayname").map(str::to_string), info, disks: devices.into_iter().map(|(_, f)| f).collect() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_disks_and_hardware() {
        let v = parse(
            "# comment\n.encoding = \"UTF-8\"\ndisplayName = \"app 1\"\nnumvcpus = \"2\"\nmemsize = \"4096\"\nguestOS = \"ubuntu-64\"\n\
             scsi0:1.fileName = \"data.vmdk\"\nscsi0:10.fileName = \"ten.vmdk\"\nscsi0:2.fileName = \"two.vmdk\"\nscsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"app.vmdk\"\n\
             ide1:0.deviceType = \"cdrom-image\"\nide1:0.fileName = \"x.iso\"\nsata0:0.present = \"FALSE\"\nsata0:0.fileName = \"gone.vmdk\"\n\
             ethernet0.present = \"TRUE\"\nethernet0.networkName = \"VM Network\"\n",
        )
        .unwrap();
        assert_eq!(v.name.as_deref(), Some("app 1"));
        assert_eq!(v.disks, vec!["app.vmdk", "data.vmdk", "two.vmdk", "ten.vmdk"]);
        assert_eq!((v.info.cpus, v.info.memory_mib), (2, 4096));
        assert_eq!(v.info.networks, vec!["VM Network"]);
        assert!(parse("garbage line").is_err());
    }
}
