//! OVF descriptors come with the VMs users export.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = hyperexport_shared::ovf::parse(text);
    }
});
