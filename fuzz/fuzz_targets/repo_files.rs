//! The repository config and key slot files are outside input too.
#![no_main]

use hyperexport_shared::config::{REPO_FORMAT, REPO_VERSION, RepoConfig, parse_versioned};
use hyperexport_shared::keys::{KEY_FORMAT, KEY_VERSION, KeySlot, Secret};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_versioned::<RepoConfig>("config", data, REPO_FORMAT, REPO_VERSION);
    if let Ok(slot) = parse_versioned::<KeySlot>("slot", data, KEY_FORMAT, KEY_VERSION) {
        // Only key-file slots: a fuzzed password slot would spend its time in Argon2.
        let _ = slot.open("repo", &Secret::KeyFile(vec![3; 32]));
    }
});
