//! Bandwidth caps come from users through the CLI and the gRPC API: parsing must never panic,
//! and whatever parses must print back to text that parses to the same timetable.
#![no_main]

use hyperexport_shared::timetable::Timetable;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(t) = Timetable::parse(text) {
        let again = Timetable::parse(&t.to_string()).expect("a printed timetable parses");
        assert_eq!(again, t);
        let _ = t.limit_at(i64::from_le_bytes(data.iter().copied().chain([0; 8]).take(8).collect::<Vec<_>>().try_into().unwrap()));
    }
});
