//! Replication frames come from peers on the network: the decoder must take any bytes.
#![no_main]

use hyperexport_shared::wire::Frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = Frame::decode(data) {
        // Whatever decodes encodes to a frame that decodes to the same thing.
        let bytes = frame.encode();
        assert_eq!(Frame::decode(&bytes[4..]).expect("a re-encoded frame decodes"), frame);
    }
});
