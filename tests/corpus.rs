//! The corpus: every program in `stdlib/` and `examples/` checks clean, its loop IR is
//! snapshotted, and the JIT agrees with the reference interpreter on it.

mod common;

use circ_compiler::frontend::{self, Frontend};
use circ_compiler::interp::Interp;
use circ_compiler::lir::{Kernel, Program};
use circ_compiler::{codegen, pipeline};
use circ_runtime::abi::StepCtx;
use circ_runtime::driver::{Engine, EntryKind};
use circ_runtime::state::{Precision, Rows, State};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn load(p: &std::path::Path) -> Frontend {
    frontend::load_file(p, &[]).unwrap_or_else(|e| panic!("{e}"))
}

fn has_phases(fe: &Frontend) -> bool {
    fe.circuit.as_ref().is_some_and(|c| !c.phases.is_empty())
}

#[test]
fn every_program_checks_clean() {
    let files = common::corpus();
    assert!(files.len() >= 3, "the corpus is unexpectedly small: {files:?}");
    for f in files {
        let fe = load(&f);
        let text = circ_compiler::diag::render_plain(&fe.diags, &fe.sources, 100);
        assert!(fe.diags.is_empty(), "{} does not check clean:\n{text}", f.display());
        assert!(fe.report.is_some(), "{}: no locality report", f.display());
    }
}

#[test]
fn loop_ir_snapshots() {
    for f in common::corpus() {
        let fe = load(&f);
        let Some(c) = fe.ok() else { continue };
        if !has_phases(&fe) {
            continue;
        }
        let p = pipeline::lower(c, c.experiment.batch).unwrap_or_else(|d| panic!("{}: {d:?}", f.display()));
        // Compilation is deterministic: the same source gives the same loop IR every time.
        let again = pipeline::lower(c, c.experiment.batch).unwrap_or_else(|d| panic!("{}: {d:?}", f.display()));
        assert_eq!(p.to_string(), again.to_string(), "{}: lowering is not deterministic", f.display());
        insta::assert_snapshot!(format!("lir__{}", common::short_name(&f)), p.to_string());
    }
}

fn has_loops(ks: &[Kernel]) -> bool {
    ks.iter()
        .any(|k| matches!(k, Kernel::Loop { .. } | Kernel::Segments { .. }) || matches!(k, Kernel::Every { body, .. } if has_loops(body)))
}

fn shorten_loops(ks: &mut [Kernel], max: usize) {
    for k in ks {
        match k {
            Kernel::Loop { count, body, .. } => {
                *count = (*count).min(max);
                shorten_loops(body, max);
            }
            Kernel::Segments { total, body, .. } => {
                *total = (*total).min(max);
                shorten_loops(body, max);
            }
            Kernel::Every { body, .. } => shorten_loops(body, max),
            _ => {}
        }
    }
}

/// Agreement within `rel` relative with a `rel / 10` absolute floor (NaN agrees with NaN).
fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()) + rel / 10.0 || (a.is_nan() && b.is_nan())
}

/// Runs `steps` training steps (then a monitor and an eval pass) in both engines from the same
/// seed and compares every buffer. With `lockstep`, the interpreter restarts from the JIT's
/// state after every step: each step's kernels must agree, and f32 rounding differences (gemm
/// and ndarray sum in different orders) cannot compound through chaotic learning dynamics.
fn differential(p: &Program, nb: usize, steps: u64, name: &str, lockstep: bool, rel: f64) {
    let mut jit = codegen::compile(p, false).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut interp = Interp::new(p.clone());
    let mut sj = State::new(&p.buffers, nb, p.precision, 11);
    let mut si = State::new(&p.buffers, nb, p.precision, 11);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut ctx = StepCtx { seed: 11, step: 0, iter: 0 };
    jit.run(EntryKind::Init, &mut sj, nb, &ctx);
    interp.run(EntryKind::Init, &mut si, nb, &ctx);
    for step in 0..steps {
        ctx.step = step;
        common::feed([&mut sj, &mut si], p, nb, &mut rng);
        jit.run(EntryKind::Train, &mut sj, nb, &ctx);
        interp.run(EntryKind::Train, &mut si, nb, &ctx);
        if diverged(p, &si) {
            // Random inputs drive some circuits (e.g. node perturbation at its MNIST learning
            // rate) to overflow; past that, rounding noise dominates every value and there is
            // nothing left to compare.
            eprintln!("{name}: the dynamics diverged at step {step} on synthetic inputs; compared up to there");
            return;
        }
        if lockstep {
            compare(p, &sj, &si, nb, name, &format!("{:?}, batch {nb}, step {step}", p.precision), rel);
            si.data = sj.data.clone();
        }
    }
    jit.run(EntryKind::Monitor, &mut sj, nb, &ctx);
    interp.run(EntryKind::Monitor, &mut si, nb, &ctx);
    compare(p, &sj, &si, nb, name, &format!("after {steps} steps + monitor"), rel);
    jit.run(EntryKind::Eval, &mut sj, nb, &ctx);
    interp.run(EntryKind::Eval, &mut si, nb, &ctx);
    compare(p, &sj, &si, nb, name, "eval", rel);
}

/// Whether some circuit state has grown beyond 1e12 (or is not finite).
fn diverged(p: &Program, s: &State) -> bool {
    p.buffers.iter().enumerate().any(|(i, spec)| spec.kind.persistent() && s.get(i).iter().any(|x| !x.is_finite() || x.abs() > 1e12))
}

fn compare(p: &Program, a: &State, b: &State, nb: usize, name: &str, when: &str, rel: f64) {
    for (i, spec) in p.buffers.iter().enumerate() {
        let len = match spec.rows {
            Rows::Batch => nb * spec.cols,
            Rows::Fixed(r) => r * spec.cols,
            Rows::History(t) => t * nb * spec.cols,
        };
        let (x, y) = (a.get(i), b.get(i));
        // Spike trains of f64 circuits must be identical, not merely close.
        let exact = p.precision == Precision::F64 && spec.name.ends_with(".spike");
        for k in 0..len {
            let ok = if exact { x[k] == y[k] } else { close(x[k], y[k], rel) };
            assert!(ok, "{name} ({when}): buffer `{}`[{k}]: JIT {} vs interpreter {}", spec.name, x[k], y[k]);
        }
    }
}

#[test]
fn jit_agrees_with_interpreter_on_the_corpus() {
    for f in common::corpus() {
        let fe = load(&f);
        let Some(c) = fe.ok() else { continue };
        if !has_phases(&fe) {
            continue;
        }
        let name = common::short_name(&f);
        // Both the program's own batch and batch 1 (different lowering of the rules).
        for nb in [c.experiment.batch.min(8), 1] {
            let mut p = pipeline::lower(c, nb).unwrap_or_else(|d| panic!("{name}: {d:?}"));
            // Rate circuits: 100 steps. Time-stepped circuits: 1000 iterations of their time
            // loops in total (their loops are shortened; both engines run the same program).
            let steps = if has_loops(&p.train.kernels) {
                shorten_loops(&mut p.train.kernels, 100);
                10
            } else {
                100
            };
            // In f64, where rounding differences between the engines (gemm vs ndarray
            // summation orders) stay far below the tolerance: every step in lockstep, and
            // freely over all steps (spike trains identical).
            let p64 = Program { precision: Precision::F64, ..p.clone() };
            differential(&p64, nb, steps, &name, true, 1e-5);
            differential(&p64, nb, steps, &name, false, 1e-5);
            // In the program's own precision, step by step over the first 10 steps. f32
            // rounding alone differs by ~1e-7 per operation, which cancelling differences
            // (node perturbation's L_noisy − L) amplify, more so as a run grows its losses:
            // the looser bound still catches any wrong kernel.
            if p.precision == Precision::F32 {
                differential(&p, nb, steps.min(10), &name, true, 1e-3);
            }
        }
    }
}
