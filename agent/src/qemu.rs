//! Image formats other than raw, through `qemu-img` (Debian package `qemu-utils`).

use std::path::Path;
use std::process::Command;

use crate::error::{AgentError, Result};

/// A disk image format, as `qemu-img` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// A plain byte-for-byte image.
    Raw,
    /// QEMU copy-on-write v2/v3.
    Qcow2,
    /// VMware VMDK (sparse, streamOptimized, or a descriptor).
    Vmdk,
    /// Hyper-V VHDX.
    Vhdx,
    /// Virtual PC / Hyper-V VHD (dynamic).
    Vpc,
}

impl ImageFormat {
    /// The name `qemu-img -f` takes.
    pub fn qemu_name(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Vmdk => "vmdk",
            ImageFormat::Vhdx => "vhdx",
            ImageFormat::Vpc => "vpc",
        }
    }

    /// Recognises a format from the first bytes of a file; anything unknown is raw.
    pub fn detect(head: &[u8]) -> Self {
        if head.starts_with(b"QFI\xfb") {
            ImageFormat::Qcow2
        } else if head.starts_with(b"KDMV") || head.starts_with(b"# Disk DescriptorFile") || head.starts_with(b"COWD") {
            ImageFormat::Vmdk
        } else if head.starts_with(b"vhdxfile") {
            ImageFormat::Vhdx
        } else if head.starts_with(b"conectix") {
            ImageFormat::Vpc
        } else {
            ImageFormat::Raw
        }
    }
}

/// Checks that `qemu-img` can be run; the error names the package to install.
pub fn require_qemu_img(purpose: impl Into<String>) -> Result<()> {
    match Command::new("qemu-img").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err(AgentError::MissingTool { tool: "qemu-img", package: "qemu-utils", purpose: purpose.into() }),
    }
}

/// Runs `qemu-img` with `args`; a failure carries its stderr.
pub fn run_qemu_img(args: &[&std::ffi::OsStr]) -> Result<()> {
    let out = Command::new("qemu-img").args(args).output().map_err(|_| AgentError::MissingTool {
        tool: "qemu-img",
        package: "qemu-utils",
        purpose: "convert disk images".into(),
    })?;
    if !out.status.success() {
        let command = format!("qemu-img {}", args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "));
        return Err(AgentError::ToolFailed { tool: "qemu-img", command, stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(())
}

/// Converts `src` (in `from` format) to `dst` in `to` format (`-o` options optional).
pub fn convert(src: &Path, from: &str, dst: &Path, to: &str, options: Option<&str>) -> Result<()> {
    require_qemu_img(format!("convert {} from {from} to {to}", src.display()))?;
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    let mut args: Vec<&std::ffi::OsStr> = vec![os("convert"), os("-f"), from.as_ref(), os("-O"), to.as_ref()];
    if let Some(o) = options {
        args.push(os("-o"));
        args.push(o.as_ref());
    }
    args.push(src.as_os_str());
    args.push(dst.as_os_str());
    run_qemu_img(&args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_formats() {
        assert_eq!(ImageFormat::detect(b"QFI\xfb\0\0\0\x03"), ImageFormat::Qcow2);
        assert_eq!(ImageFormat::detect(b"KDMV\x01"), ImageFormat::Vmdk);
        assert_eq!(ImageFormat::detect(b"# Disk DescriptorFile\n"), ImageFormat::Vmdk);
        assert_eq!(ImageFormat::detect(b"vhdxfile"), ImageFormat::Vhdx);
        assert_eq!(ImageFormat::detect(&[0u8; 512]), ImageFormat::Raw);
        assert_eq!(ImageFormat::detect(b""), ImageFormat::Raw);
    }
}
