//! The back end's property test: random well-formed circuits (the generator of the fuzz
//! target `differential`, fuzz/src/gen.rs) run in the JIT and in the reference interpreter from
//! the same seed and must agree (fuzz/src/differential.rs: every buffer within 1e-9 relative in
//! f64 after init, each of 3 training steps, monitor and eval). proptest draws the generator's
//! bytes and shrinks a failing case to a small program; the fuzz target runs the same check at
//! scale (docs/fuzzing.md).

#[allow(dead_code)]
#[path = "../fuzz/src/gen.rs"]
mod gen;

#[allow(dead_code)]
#[path = "../fuzz/src/differential.rs"]
mod differential;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::sync::atomic::Ordering::Relaxed;

#[test]
fn jit_and_interpreter_agree_on_random_circuits() {
    // A fixed seed: the same 256 circuits in every run (CI is reproducible); the fuzzer explores.
    // CIRC_DIFFERENTIAL_CASES=N runs the first N circuits of the same sequence instead (the
    // run at scale of docs/fuzzing.md).
    let cases = std::env::var("CIRC_DIFFERENTIAL_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(256);
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let result = runner.run(&vec(any::<u8>(), 16..400), |bytes| {
        let g = gen::generate(&bytes);
        let outcome = std::panic::catch_unwind(|| differential::run_text(&g.text, g.batch));
        prop_assert!(outcome.is_ok(), "the engines disagree (or one panics) on this program (batch {}):\n{}", g.batch, g.text);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // The test proves something only if most generated programs are compared.
    let (clean, compared) = (differential::CLEAN.load(Relaxed), differential::COMPARED.load(Relaxed));
    eprintln!("{}", differential::stats());
    assert!(clean as f64 >= 0.78 * cases as f64, "only {clean} of {cases} generated programs checked clean");
    assert!(compared as f64 >= 0.58 * cases as f64, "only {compared} programs were compared in full");
}

/// Programs on which the engines once disagreed (tests/differential/*.circ, each with a
/// `// batch: N` header): JIT and interpreter must agree on every buffer, every step.
#[test]
fn jit_and_interpreter_agree_on_past_disagreements() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/differential");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(!files.is_empty());
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let batch = text
            .lines()
            .find_map(|l| l.strip_prefix("// batch: "))
            .and_then(|b| b.trim().parse().ok())
            .unwrap_or_else(|| panic!("{}: no `// batch: N` header", f.display()));
        let before = differential::COMPARED.load(Relaxed) + differential::OVERFLOWED.load(Relaxed);
        if std::panic::catch_unwind(|| differential::run_text(&text, batch)).is_err() {
            panic!("{}: the engines disagree", f.display());
        }
        let after = differential::COMPARED.load(Relaxed) + differential::OVERFLOWED.load(Relaxed);
        assert!(after > before, "{}: not compared (does it still check clean?)", f.display());
    }
}
