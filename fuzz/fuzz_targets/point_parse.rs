//! Recovery point files are outside input (a repository can be damaged or hostile, and replica
//! receivers get them from peers).
#![no_main]

use hyperexport_shared::crypto::{MasterKey, RepoKeys};
use hyperexport_shared::point::RecoveryPoint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = RepoKeys::derive(&MasterKey([2; 32]), false);
    if let Ok(point) = RecoveryPoint::decode(&keys, "fuzz", data) {
        // Whatever parses must satisfy the invariants readers rely on.
        point.validate().expect("decode returned a point that fails validation");
    }
    // A replica receiver parses points from peers without a key.
    if let Ok(point) = RecoveryPoint::decode_unauthenticated("fuzz", data) {
        point.validate().expect("decode_unauthenticated returned a point that fails validation");
        let _ = point.chunk_ids();
    }
});
