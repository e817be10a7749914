//! Random well-formed circuits (built by `circ_fuzz::gen` from the fuzzer's bytes), compiled by
//! the Cranelift JIT and run by the reference interpreter from the same seed for a few steps;
//! every buffer must agree (f64, relative 1e-9) while no value exceeds 1e6.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    circ_fuzz::differential::run_bytes(data);
});
