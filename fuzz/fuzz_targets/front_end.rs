//! Arbitrary bytes into the front end: parse, resolve, check, locality, diagnostics rendering,
//! and (for programs that check clean) lowering for batch 1 and LIR validation. Never panics,
//! hangs or exhausts memory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        circ_fuzz::compile("fuzz.circ", text);
    }
});
