//! The JIT's fast paths for synapse passes and products, against the reference interpreter:
//! row-blocked passes split over threads (large pathways), rank-1 updates that skip rows and
//! columns with a zero factor (exact, including when a factor is not finite), and batch-1
//! matrix–vector products that skip zero inputs.

mod common;

use circ_compiler::codegen;
use circ_compiler::frontend;
use circ_compiler::interp::Interp;
use circ_compiler::lir::Program;
use circ_compiler::pipeline;
use circ_runtime::abi::StepCtx;
use circ_runtime::driver::{Engine, EntryKind};
use circ_runtime::state::State;

fn program(src: &str) -> Program {
    let fe = frontend::load_source("kernels.circ", src, &[]);
    let c = fe.ok().unwrap_or_else(|| panic!("the test circuit does not check:\n{src}"));
    pipeline::lower(c, 1).expect("lowers")
}

/// Runs `steps` training steps in both engines from the same seed; returns both states.
fn run_both(p: &Program, steps: u64) -> (State, State) {
    let mut jit = codegen::compile(p, false).expect("compiles");
    let mut interp = Interp::new(p.clone());
    let mut sj = State::new(&p.buffers, 1, p.precision, 3);
    let mut si = State::new(&p.buffers, 1, p.precision, 3);
    let mut ctx = StepCtx { seed: 3, step: 0, iter: 0 };
    jit.run(EntryKind::Init, &mut sj, 1, &ctx);
    interp.run(EntryKind::Init, &mut si, 1, &ctx);
    for s in 0..steps {
        ctx.step = s;
        jit.run(EntryKind::Train, &mut sj, 1, &ctx);
        interp.run(EntryKind::Train, &mut si, 1, &ctx);
    }
    (sj, si)
}

fn buf(p: &Program, name: &str) -> usize {
    p.buffers.iter().position(|b| b.name == name).unwrap_or_else(|| panic!("no buffer {name}"))
}

/// Equal as numbers (so -0 == +0), NaN where the other is NaN.
fn same(a: f64, b: f64) -> bool {
    a == b || (a.is_nan() && b.is_nan())
}

#[test]
fn large_rank1_update_split_over_threads_is_exact() {
    let src = common::BIG_RANK1;
    let p = program(src);
    let (sj, si) = run_both(&p, 3);
    let w = buf(&p, "W.w");
    let (a, b) = (sj.get(w), si.get(w));
    let bad = a.iter().zip(&b).position(|(x, y)| !same(*x, *y));
    assert!(bad.is_none(), "W.w[{}]: JIT {} vs interpreter {}", bad.unwrap(), a[bad.unwrap()], b[bad.unwrap()]);
}

#[test]
fn sparse_rank1_update_is_exact_with_non_finite_factors() {
    // Most pre and post values are 0; a few pre values are infinite (exp(1000) in f32), which
    // must turn whole rows with a zero post value into NaN, exactly as IEEE arithmetic does.
    for inf_rate in ["0", "0.02"] {
        let src = common::sparse_rank1(inf_rate);
        let p = program(&src);
        let (sj, si) = run_both(&p, 4);
        let w = buf(&p, "W.w");
        let (a, b) = (sj.get(w), si.get(w));
        let bad = a.iter().zip(&b).position(|(x, y)| !same(*x, *y));
        assert!(bad.is_none(), "inf rate {inf_rate}: W.w[{}]: JIT {} vs interpreter {}", bad.unwrap(), a[bad.unwrap()], b[bad.unwrap()]);
        if inf_rate != "0" {
            assert!(b.iter().any(|x| x.is_nan()), "the test should produce NaN weights");
        }
    }
}

#[test]
fn batch1_matvec_skipping_zero_inputs_agrees() {
    let src = common::SPARSE_MATVEC;
    let p = program(src);
    let (sj, si) = run_both(&p, 3);
    let h = buf(&p, "h.a");
    let (a, b) = (sj.get(h), si.get(h));
    for (k, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "h.a[{k}]: JIT {x} vs interpreter {y}");
    }
}
