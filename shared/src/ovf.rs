//! OVF descriptors: parsing what a source brings, generating what a restore writes.
//!
//! Parsing is namespace-agnostic (elements and attributes are matched by local name), refuses
//! DTDs (no entity expansion), and never trusts file references: `href`s are checked by callers
//! with [`crate::point::is_safe_file_name`]-like rules before any file is opened.

use std::fmt::Write;

use crate::point::VmInfo;

/// A disk as an OVF descriptor describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct OvfDisk {
    /// The `href` of the referenced file.
    pub href: String,
    /// Capacity in bytes, when given.
    pub capacity: Option<u64>,
}

/// The parts of an OVF descriptor HyperExport uses.
#[derive(Debug, Clone, PartialEq)]
pub struct OvfDescriptor {
    /// The virtual system's name (`Name`, else its `id`).
    pub name: String,
    /// CPUs, memory, guest OS, networks.
    pub info: VmInfo,
    /// Disks in `DiskSection` order.
    pub disks: Vec<OvfDisk>,
}

fn attr<'a>(node: roxmltree::Node<'a, '_>, local: &str) -> Option<&'a str> {
    node.attributes().find(|a| a.name() == local).map(|a| a.value())
}

fn child_text<'a>(node: roxmltree::Node<'a, '_>, local: &str) -> Option<&'a str> {
    node.children().find(|c| c.tag_name().name() == local).and_then(|c| c.text()).map(str::trim)
}

/// Parses "byte", "byte * 2^20", "byte * 1024" into a multiplier.
fn allocation_units(units: Option<&str>) -> Result<u64, String> {
    let Some(u) = units else { return Ok(1) };
    let compact: String = u.chars().filter(|c| !c.is_whitespace()).collect();
    let rest = compact.strip_prefix("byte").ok_or_else(|| format!("unsupported allocation units {u:?}"))?;
    if rest.is_empty() {
        return Ok(1);
    }
    let factor = rest.strip_prefix('*').ok_or_else(|| format!("unsupported allocation units {u:?}"))?;
    let value = match factor.split_once('^') {
        Some((base, exp)) => {
            let base: u64 = base.parse().map_err(|_| format!("bad allocation units {u:?}"))?;
            let exp: u32 = exp.parse().map_err(|_| format!("bad allocation units {u:?}"))?;
            base.checked_pow(exp)
        }
        None => factor.parse().ok(),
    };
    value.ok_or_else(|| format!("bad allocation units {u:?}"))
}

fn number(text: Option<&str>, what: &str) -> Result<Option<u64>, String> {
    text.map(|t| t.trim().parse::<u64>().map_err(|_| format!("{what} {t:?} is not a whole number"))).transpose()
}

/// Parses an OVF descriptor.
pub fn parse(xml: &str) -> Result<OvfDescriptor, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("not well-formed XML: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().name() != "Envelope" {
        return Err(format!("root element is <{}>, expected <Envelope>", root.tag_name().name()));
    }
    let find_all = |local: &'static str| root.descendants().filter(move |n| n.tag_name().name() == local);
    let files: Vec<(&str, &str)> = find_all("File")
        .map(|f| Ok((attr(f, "id").ok_or("a <File> has no id")?, attr(f, "href").ok_or("a <File> has no href")?)))
        .collect::<Result<_, String>>()?;
    let mut disks = Vec::new();
    for d in find_all("Disk") {
        let Some(file_ref) = attr(d, "fileRef") else { continue }; // a blank disk: nothing to read
        let href = files
            .iter()
            .find(|(id, _)| *id == file_ref)
            .map(|(_, h)| h.to_string())
            .ok_or_else(|| format!("disk fileRef {file_ref:?} names no <File> in References"))?;
        let capacity = match number(attr(d, "capacity"), "disk capacity")? {
            Some(c) => Some(c.checked_mul(allocation_units(attr(d, "capacityAllocationUnits"))?).ok_or("disk capacity overflows")?),
            None => None,
        };
        disks.push(OvfDisk { href, capacity });
    }
    let system = find_all("VirtualSystem").next().ok_or("no <VirtualSystem> in the descriptor")?;
    let name = child_text(system, "Name")
        .filter(|n| !n.is_empty())
        .or_else(|| attr(system, "id"))
        .ok_or("the virtual system has neither Name nor id")?;
    let mut info = VmInfo { cpus: 1, memory_mib: 0, guest_os: None, networks: Vec::new() };
    if let Some(os) = system.descendants().find(|n| n.tag_name().name() == "OperatingSystemSection") {
        info.guest_os = attr(os, "osType").map(str::to_string).or_else(|| child_text(os, "Description").map(str::to_string));
    }
    for item in system.descendants().filter(|n| matches!(n.tag_name().name(), "Item" | "EthernetPortItem" | "StorageItem")) {
        match number(child_text(item, "ResourceType"), "ResourceType")? {
            Some(3) => info.cpus = number(child_text(item, "VirtualQuantity"), "CPU count")?.unwrap_or(1).clamp(1, u32::MAX as u64) as u32,
            Some(4) => {
                let qty = number(child_text(item, "VirtualQuantity"), "memory size")?.unwrap_or(0);
                let unit = allocation_units(
                    child_text(item, "AllocationUnits").map(|u| if u.eq_ignore_ascii_case("megabytes") { "byte * 2^20" } else { u }),
                )?;
                info.memory_mib = qty.saturating_mul(unit) >> 20;
            }
            Some(10) => info.networks.push(child_text(item, "Connection").unwrap_or("").to_string()),
            _ => {}
        }
    }
    Ok(OvfDescriptor { name: name.to_string(), info, disks })
}

/// A disk file to list in a generated descriptor.
#[derive(Debug, Clone)]
pub struct OutputDisk {
    /// File name in the OVF folder or OVA.
    pub file_name: String,
    /// Size of that file in bytes.
    pub file_size: u64,
    /// Capacity of the virtual disk in bytes.
    pub capacity: u64,
    /// The `ovf:format` URI of the file, e.g. [`VMDK_STREAM_OPTIMIZED`].
    pub format: &'static str,
}

/// The disk format URI of streamOptimized VMDK, the format vSphere imports from OVF/OVA.
pub const VMDK_STREAM_OPTIMIZED: &str = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized";

/// Our disk format URI for raw images in descriptors we write for local use (the demo's sample VM).
/// The OVF standard names none for raw; HyperExport detects disk formats from content anyway.
pub const RAW_IMAGE: &str = "urn:hyperexport:disk-format:raw";

/// Escapes text for XML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

fn item(out: &mut String, fields: &[(&str, String)]) {
    out.push_str("      <Item>\n");
    for (k, v) in fields {
        let _ = writeln!(out, "        <rasd:{k}>{}</rasd:{k}>", escape(v));
    }
    out.push_str("      </Item>\n");
}

/// Generates an OVF 1.0 descriptor with the disks on one SCSI controller.
/// `rasd` fields are written in the schema's (alphabetical) order.
pub fn generate(name: &str, info: &VmInfo, disks: &[OutputDisk]) -> String {
    let n = escape(name);
    let mut out = String::new();
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str("<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\" xmlns:ovf=\"http://schemas.dmtf.org/ovf/envelope/1\" xmlns:rasd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData\" xmlns:vssd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\n");
    out.push_str("  <References>\n");
    for (i, d) in disks.iter().enumerate() {
        let _ = writeln!(out, "    <File ovf:href=\"{}\" ovf:id=\"file{}\" ovf:size=\"{}\"/>", escape(&d.file_name), i + 1, d.file_size);
    }
    out.push_str("  </References>\n  <DiskSection>\n    <Info>Virtual disk information</Info>\n");
    for (i, d) in disks.iter().enumerate() {
        let (cap, n, format) = (d.capacity, i + 1, d.format);
        let _ = writeln!(
            out,
            "    <Disk ovf:capacity=\"{cap}\" ovf:capacityAllocationUnits=\"byte\" ovf:diskId=\"vmdisk{n}\" ovf:fileRef=\"file{n}\" ovf:format=\"{format}\"/>"
        );
    }
    out.push_str("  </DiskSection>\n");
    let mut networks: Vec<&str> = info.networks.iter().map(String::as_str).filter(|n| !n.is_empty()).collect();
    networks.dedup();
    if !networks.is_empty() {
        out.push_str("  <NetworkSection>\n    <Info>The logical networks used</Info>\n");
        for net in &networks {
            let _ = writeln!(out, "    <Network ovf:name=\"{}\">\n      <Description>{0}</Description>\n    </Network>", escape(net));
        }
        out.push_str("  </NetworkSection>\n");
    }
    let _ =
        writeln!(out, "  <VirtualSystem ovf:id=\"{n}\">\n    <Info>A virtual machine exported by HyperExport</Info>\n    <Name>{n}</Name>");
    let os = escape(info.guest_os.as_deref().unwrap_or("other"));
    let _ = writeln!(
        out,
        "    <OperatingSystemSection ovf:id=\"1\">\n      <Info>The guest operating system</Info>\n      <Description>{os}</Description>\n    </OperatingSystemSection>"
    );
    out.push_str("    <VirtualHardwareSection>\n      <Info>Virtual hardware requirements</Info>\n      <System>\n");
    let _ = writeln!(
        out,
        "        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>\n        <vssd:InstanceID>0</vssd:InstanceID>\n        <vssd:VirtualSystemIdentifier>{n}</vssd:VirtualSystemIdentifier>\n        <vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType>\n      </System>"
    );
    let s = |v: &str| v.to_string();
    item(
        &mut out,
        &[
            ("AllocationUnits", s("hertz * 10^6")),
            ("Description", s("Number of virtual CPUs")),
            ("ElementName", format!("{} virtual CPU(s)", info.cpus)),
            ("InstanceID", s("1")),
            ("ResourceType", s("3")),
            ("VirtualQuantity", info.cpus.to_string()),
        ],
    );
    item(
        &mut out,
        &[
            ("AllocationUnits", s("byte * 2^20")),
            ("Description", s("Memory size")),
            ("ElementName", format!("{} MB of memory", info.memory_mib)),
            ("InstanceID", s("2")),
            ("ResourceType", s("4")),
            ("VirtualQuantity", info.memory_mib.to_string()),
        ],
    );
    item(
        &mut out,
        &[
            ("Address", s("0")),
            ("Description", s("SCSI Controller")),
            ("ElementName", s("SCSI controller 0")),
            ("InstanceID", s("3")),
            ("ResourceSubType", s("lsilogic")),
            ("ResourceType", s("6")),
        ],
    );
    let mut instance = 4;
    for (i, _) in disks.iter().enumerate() {
        item(
            &mut out,
            &[
                ("AddressOnParent", i.to_string()),
                ("ElementName", format!("Hard disk {}", i + 1)),
                ("HostResource", format!("ovf:/disk/vmdisk{}", i + 1)),
                ("InstanceID", instance.to_string()),
                ("Parent", s("3")),
                ("ResourceType", s("17")),
            ],
        );
        instance += 1;
    }
    for (i, net) in info.networks.iter().enumerate() {
        item(
            &mut out,
            &[
                ("AddressOnParent", (7 + i).to_string()),
                ("AutomaticAllocation", s("true")),
                ("Connection", net.clone()),
                ("ElementName", format!("Network adapter {}", i + 1)),
                ("InstanceID", instance.to_string()),
                ("ResourceSubType", s("VmxNet3")),
                ("ResourceType", s("10")),
            ],
        );
        instance += 1;
    }
    out.push_str("    </VirtualHardwareSection>\n  </VirtualSystem>\n</Envelope>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"<?xml version="1.0"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
  <References><File ovf:id="f1" ovf:href="disk1.vmdk"/><File ovf:id="f2" ovf:href="data.img"/></References>
  <DiskSection><Disk ovf:diskId="d1" ovf:fileRef="f1" ovf:capacity="2" ovf:capacityAllocationUnits="byte * 2^30"/>
    <Disk ovf:diskId="d2" ovf:fileRef="f2" ovf:capacity="4096"/></DiskSection>
  <VirtualSystem ovf:id="vm1"><Name>db &amp; web</Name>
    <OperatingSystemSection ovf:id="94"><Description>Ubuntu Linux (64-bit)</Description></OperatingSystemSection>
    <VirtualHardwareSection>
      <Item><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>4</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>8192</rasd:VirtualQuantity></Item>
      <Item><rasd:Connection>VM Network</rasd:Connection><rasd:ResourceType>10</rasd:ResourceType></Item>
    </VirtualHardwareSection></VirtualSystem></Envelope>"#;

    #[test]
    fn parses_a_descriptor() {
        let d = parse(SAMPLE).unwrap();
        assert_eq!(d.name, "db & web");
        assert_eq!(d.info.cpus, 4);
        assert_eq!(d.info.memory_mib, 8192);
        assert_eq!(d.info.networks, vec!["VM Network"]);
        assert_eq!(d.info.guest_os.as_deref(), Some("Ubuntu Linux (64-bit)"));
        assert_eq!(
            d.disks,
            vec![OvfDisk { href: "disk1.vmdk".into(), capacity: Some(2 << 30) }, OvfDisk { href: "data.img".into(), capacity: Some(4096) }]
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert!(parse("<Envelope>").is_err());
        assert!(parse("<Other/>").is_err());
        assert!(parse("<!DOCTYPE x [<!ENTITY a 'b'>]><Envelope/>").is_err());
        assert!(parse(&SAMPLE.replace("ovf:fileRef=\"f2\"", "ovf:fileRef=\"nope\"")).is_err());
        assert!(parse(&SAMPLE.replace("byte * 2^30", "furlongs")).is_err());
        assert!(parse(&SAMPLE.replace("2^30", "2^99")).is_err());
    }

    #[test]
    fn generated_descriptor_parses_back() {
        let info = VmInfo { cpus: 2, memory_mib: 1024, guest_os: Some("linux".into()), networks: vec!["lan <1>".into()] };
        let xml = generate(
            "a<b",
            &info,
            &[OutputDisk { file_name: "a-disk1.vmdk".into(), file_size: 10, capacity: 1 << 20, format: VMDK_STREAM_OPTIMIZED }],
        );
        let back = parse(&xml).unwrap();
        assert_eq!(back.name, "a<b");
        assert_eq!(back.info.cpus, 2);
        assert_eq!(back.info.memory_mib, 1024);
        assert_eq!(back.info.networks, vec!["lan <1>"]);
        assert_eq!(back.disks[0].capacity, Some(1 << 20));
    }
}
