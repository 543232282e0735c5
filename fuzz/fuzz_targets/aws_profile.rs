//! AWS credentials and config files are read from the user's home: any text must parse to a
//! profile or an error naming what is missing, never a panic.
#![no_main]

use hyperexport_agent::storage::aws_profile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut parts = text.splitn(3, '\u{0}');
    let (credentials, config, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or("default"));
    if let Ok(profile) = aws_profile::parse(credentials, config, name) {
        assert!(aws_profile::section(credentials, name).is_some(), "a profile came from a section that is not there");
        assert!(!profile.access_key_id.contains('\n'));
    }
});
