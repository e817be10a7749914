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
    let config = Config { cases: 256, failure_persistence: None, ..Config::default() };
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
    assert!(clean >= 200, "only {clean} of 256 generated programs checked clean");
    assert!(compared >= 150, "only {compared} programs were compared in full");
}
