//! OVA archives come from users and vendors: listing their entries must never panic, and what
//! it lists must fit in the archive.
#![no_main]

use std::io::Cursor;

use hyperexport_agent::source::ova_archive::entries;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(list) = entries(&mut Cursor::new(data), data.len() as u64) {
        for (entry, offset) in list {
            assert!(offset + entry.size <= data.len() as u64, "an entry runs past the archive");
            assert!(!entry.name.contains('/'), "a listed name is not a plain file name");
        }
    }
});
