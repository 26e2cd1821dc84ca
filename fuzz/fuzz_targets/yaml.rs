//! Arbitrary bytes into the YAML reader: it must return `Ok` or `Err`, never panic, overflow the stack
//! or blow up memory (aliases are bounded).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(src) = std::str::from_utf8(data) {
        let _ = gantry_pipeline::yaml::parse(src, 0);
    }
});
