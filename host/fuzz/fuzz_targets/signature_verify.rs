//! Signature verification: arbitrary header values never panic, and only
//! the real signature of this body verifies.
#![no_main]
use automation_host::events::signature::{sign, verify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| *b as usize % data.len().max(1));
    let (header, body) = data.split_at(split);
    let header = String::from_utf8_lossy(header);
    let ok = verify(b"fuzz-secret", body, "X-Hub-Signature-256", Some(&header)).is_ok();
    let real = sign(b"fuzz-secret", body);
    if ok {
        let given = header.trim().trim_start_matches("sha256=").to_ascii_lowercase();
        assert_eq!(given, real.trim_start_matches("sha256="), "a signature other than the real one verified");
    }
    assert!(verify(b"fuzz-secret", body, "H", Some(&real)).is_ok());
});
