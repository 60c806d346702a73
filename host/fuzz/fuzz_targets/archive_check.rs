//! The bundle archive check on arbitrary bytes, raw and gzip-wrapped (so
//! the tar parser sees the input, not only the gzip header check).
#![no_main]
use std::io::Write;

use automation_host::archive::{Limits, check};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_unpacked_bytes: 1 << 20, max_entries: 100 };
    let _ = check(data, limits);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    let wrapped = gz.finish().unwrap();
    if let Ok(s) = check(&wrapped, limits) {
        assert!(s.entries <= limits.max_entries && s.unpacked_bytes <= limits.max_unpacked_bytes);
    }
});
