//! The JIT's bounds-check debug mode (`codegen::Options::bounds_check`, `--jit-bounds-check`):
//! every corpus program (and the JIT's fast paths: threaded, sparse and batch-1 passes) runs
//! with checks without a fault and bit for bit like the unchecked code; programs that address
//! past a buffer (built by hand, so `Program::validate` would reject them) are stopped at the
//! first such access, reported with the buffer's name, and write nothing outside it.

mod common;

use circ_compiler::codegen::{self, Options};
use circ_compiler::frontend;
use circ_compiler::hir::Func;
use circ_compiler::lir::{Access, Entry, KExpr, Kernel, Program, Store};
use circ_compiler::pipeline;
use circ_runtime::abi::{StepCtx, Touch};
use circ_runtime::driver::{self, Engine, EntryKind, RunError};
use circ_runtime::state::{BufInit, BufKind, BufSpec, Data, Precision, Rows, State};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const CHECKED: Options = Options { asm: false, bounds_check: true };

fn shorten_loops(ks: &mut [Kernel], max: usize) {
    for k in ks {
        match k {
            Kernel::Loop { count, body, .. } => {
                *count = (*count).min(max);
                shorten_loops(body, max);
            }
            Kernel::Every { body, .. } => shorten_loops(body, max),
            _ => {}
        }
    }
}

fn has_loops(ks: &[Kernel]) -> bool {
    ks.iter().any(|k| matches!(k, Kernel::Loop { .. }) || matches!(k, Kernel::Every { body, .. } if has_loops(body)))
}

/// Every buffer as bits (so NaN payloads and signed zeros count).
fn bits(s: &State) -> Vec<Vec<u64>> {
    match &s.data {
        Data::F32(v) => v.iter().map(|b| b.iter().map(|x| x.to_bits() as u64).collect()).collect(),
        Data::F64(v) => v.iter().map(|b| b.iter().map(|x| x.to_bits()).collect()).collect(),
    }
}

/// Runs init, `steps` training steps, the monitors and an eval pass with and without bounds
/// checks from the same seed: no fault, and identical bits after every entry.
fn checked_equals_unchecked(p: &Program, nb: usize, steps: u64, name: &str) {
    let mut plain = codegen::compile(p, false).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut checked = codegen::compile_with(p, CHECKED).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut sp = State::new(&p.buffers, nb, p.precision, 11);
    let mut sc = State::new(&p.buffers, nb, p.precision, 11);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut ctx = StepCtx { seed: 11, step: 0, iter: 0 };
    let mut run = |entry: EntryKind, sp: &mut State, sc: &mut State, ctx: &StepCtx, when: &str| {
        plain.run(entry, sp, nb, ctx);
        checked.run(entry, sc, nb, ctx);
        if let Some(f) = checked.take_fault() {
            panic!("{name} ({:?}, batch {nb}, {when}): {}", p.precision, miette_text(&f));
        }
        if let Some((b, (x, y))) = bits(sp).iter().zip(&bits(sc)).enumerate().find(|(_, (x, y))| x != y) {
            let k = x.iter().zip(y).position(|(a, b)| a != b).unwrap_or(0);
            panic!(
                "{name} ({:?}, batch {nb}, {when}): `{}`[{k}] differs with bounds checks: {} vs {}",
                p.precision,
                p.buffers[b].name,
                sp.at(b, k),
                sc.at(b, k)
            );
        }
    };
    run(EntryKind::Init, &mut sp, &mut sc, &ctx, "init");
    for step in 0..steps {
        ctx.step = step;
        common::feed([&mut sp, &mut sc], p, nb, &mut rng);
        run(EntryKind::Train, &mut sp, &mut sc, &ctx, &format!("train step {step}"));
    }
    run(EntryKind::Monitor, &mut sp, &mut sc, &ctx, "monitor");
    run(EntryKind::Eval, &mut sp, &mut sc, &ctx, "eval");
}

fn miette_text(e: &dyn miette::Diagnostic) -> String {
    let mut out = String::new();
    let _ = miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor()).render_report(&mut out, e);
    out
}

#[test]
fn the_corpus_runs_clean_and_identical_with_bounds_checks() {
    let mut ran = 0;
    for f in common::corpus() {
        let fe = frontend::load_file(&f, &[]).unwrap_or_else(|e| panic!("{e}"));
        let Some(c) = fe.ok() else { continue };
        if c.phases.is_empty() {
            continue;
        }
        let name = common::short_name(&f);
        // The program's own batch and batch 1 (rules and products lower differently), in its
        // own precision and in f64 (other vector widths, other tails).
        let own = c.experiment.batch.min(8);
        for nb in if own == 1 { vec![1] } else { vec![own, 1] } {
            let mut p = pipeline::lower(c, nb).unwrap_or_else(|d| panic!("{name}: {d:?}"));
            let steps = if has_loops(&p.train.kernels) {
                shorten_loops(&mut p.train.kernels, 30);
                3
            } else {
                10
            };
            checked_equals_unchecked(&p, nb, steps, &name);
            if p.precision == Precision::F32 {
                checked_equals_unchecked(&Program { precision: Precision::F64, ..p }, nb, steps, &name);
            }
            ran += 1;
        }
    }
    assert!(ran >= 20, "only {ran} corpus programs ran");
}

/// The JIT's fast paths the corpus may not reach at its sizes (from tests/kernels.rs): a
/// synapse pass split by rows over threads, rank-1 updates that skip zero rows and columns
/// (with infinite factors), and a batch-1 product that skips zero inputs.
#[test]
fn fast_paths_run_clean_and_identical_with_bounds_checks() {
    let sources = [common::BIG_RANK1.to_string(), common::sparse_rank1("0.02"), common::SPARSE_MATVEC.to_string()];
    for src in sources {
        let fe = frontend::load_source("paths.circ", &src, &[]);
        let c = fe.ok().unwrap_or_else(|| panic!("the test circuit does not check:\n{src}"));
        let p = pipeline::lower(c, 1).expect("lowers");
        checked_equals_unchecked(&p, 1, 3, &p.name.clone());
    }
}

// ---------------------------------------------------------------------------------------------
// Programs that address past a buffer

fn spec(name: &str, rows: Rows, cols: usize, init: BufInit) -> BufSpec {
    BufSpec { name: name.into(), rows, cols, init, kind: BufKind::Temp }
}

fn program(buffers: Vec<BufSpec>, train: Vec<Kernel>, precision: Precision) -> Program {
    Program {
        name: "bad".into(),
        precision,
        buffers,
        init: Entry::default(),
        train: Entry { kernels: train },
        eval: Entry::default(),
        monitor: Entry::default(),
        monitors: Vec::new(),
        input: None,
        target: None,
        readout: None,
        origins: Vec::new(),
        rand_streams: 0,
        episode_reset: Vec::new(),
    }
}

fn load(b: usize, a: Access) -> KExpr {
    KExpr::Load(b, a)
}

fn store(out: usize, value: KExpr) -> Store {
    Store { out, value, guard: None }
}

/// A program whose `train` entry accesses past the end of buffer `bad`.
struct Case {
    what: &'static str,
    buffers: Vec<BufSpec>,
    train: Vec<Kernel>,
    bad: &'static str,
    touch: Touch,
    /// Batch sizes to run it at (1 takes other code paths for products).
    batches: &'static [usize],
}

/// Past the end of every buffer, the state keeps this many canary values that compiled code
/// must never write (the checks use the buffer's shape, the allocation is longer).
const CANARY: usize = 4096;
const CANARY_VALUE: f64 = 7.25;

fn cases() -> Vec<Case> {
    use BufInit::{Const, Zero};
    use Rows::{Batch, Fixed};
    let two = || KExpr::Const(2.0);
    vec![
        Case {
            what: "a fused loop with more columns than its output (vector store)",
            buffers: vec![spec("dst", Fixed(1), 4, Zero)],
            train: vec![Kernel::Map { batched: false, cols: 8, stores: vec![store(0, two())] }],
            bad: "dst",
            touch: Touch::Store,
            batches: &[1],
        },
        Case {
            what: "a fused loop reading past a shorter input (scalar tail load)",
            buffers: vec![spec("src", Fixed(1), 4, Const(1.0)), spec("dst", Fixed(1), 6, Zero)],
            train: vec![Kernel::Map {
                batched: false,
                cols: 6,
                stores: vec![store(1, KExpr::bin(circ_compiler::ast::BinOp::Mul, load(0, Access::Elem), two()))],
            }],
            bad: "src",
            touch: Touch::Load,
            batches: &[1],
        },
        Case {
            what: "a batched loop over an unbatched buffer",
            buffers: vec![spec("h", Fixed(1), 5, Zero), spec("x", Batch, 5, Const(0.5))],
            train: vec![Kernel::Map {
                batched: true,
                cols: 5,
                stores: vec![store(0, KExpr::Call(Func::Tanh, vec![load(1, Access::Elem)]))],
            }],
            bad: "h",
            touch: Touch::Store,
            batches: &[3],
        },
        Case {
            what: "a synapse pass gathering a transposed matrix with too few rows",
            buffers: vec![spec("W", Fixed(4), 4, Const(0.5)), spec("T", Fixed(3), 4, Const(1.0))],
            train: vec![Kernel::SynMap {
                rows: 4,
                cols: 4,
                over_batch: false,
                stores: vec![store(0, KExpr::bin(circ_compiler::ast::BinOp::Add, load(0, Access::Elem), load(1, Access::Trans)))],
            }],
            bad: "T",
            touch: Touch::Load,
            batches: &[1],
        },
        Case {
            what: "a rank-1 update whose post vector is short (zero-skip row list)",
            buffers: vec![spec("W", Fixed(6), 8, Const(0.5)), spec("post", Fixed(1), 5, Const(1.0)), spec("pre", Fixed(1), 8, Const(1.0))],
            train: vec![Kernel::SynMap {
                rows: 6,
                cols: 8,
                over_batch: false,
                stores: vec![store(
                    0,
                    KExpr::bin(
                        circ_compiler::ast::BinOp::Sub,
                        load(0, Access::Elem),
                        KExpr::bin(circ_compiler::ast::BinOp::Mul, load(1, Access::Post), load(2, Access::Pre)),
                    ),
                )],
            }],
            bad: "post",
            touch: Touch::Load,
            batches: &[1],
        },
        Case {
            what: "a matrix product with a weight smaller than its shape (gemm, and the batch-1 matvec)",
            buffers: vec![spec("y", Batch, 2, Zero), spec("x", Batch, 3, Const(1.0)), spec("w", Fixed(1), 3, Const(0.5))],
            train: vec![Kernel::MatMul { out: 0, x: 1, w: 2, n_out: 2, n_in: 3, transpose: false, accumulate: false }],
            bad: "w",
            touch: Touch::Call,
            batches: &[2],
        },
        Case {
            what: "a batch-1 matrix-vector product with a weight smaller than its shape",
            buffers: vec![spec("y", Batch, 2, Zero), spec("x", Batch, 3, Const(1.0)), spec("w", Fixed(1), 3, Const(0.5))],
            train: vec![Kernel::MatMul { out: 0, x: 1, w: 2, n_out: 2, n_in: 3, transpose: false, accumulate: false }],
            bad: "w",
            touch: Touch::Load,
            batches: &[1],
        },
        Case {
            what: "a backward product into a short output",
            buffers: vec![spec("dx", Batch, 2, Zero), spec("e", Batch, 2, Const(1.0)), spec("w", Fixed(2), 3, Const(0.5))],
            train: vec![Kernel::MatMul { out: 0, x: 1, w: 2, n_out: 2, n_in: 3, transpose: true, accumulate: true }],
            bad: "dx",
            touch: Touch::Call,
            batches: &[1, 2],
        },
        Case {
            what: "an outer product into a smaller matrix",
            buffers: vec![spec("G", Fixed(1), 3, Zero), spec("p", Batch, 2, Const(1.0)), spec("q", Batch, 3, Const(1.0))],
            train: vec![Kernel::Outer { out: 0, p: 1, q: 2, rows: 2, cols: 3, mean: true, repeat: 1, accumulate: false }],
            bad: "G",
            touch: Touch::Call,
            batches: &[2],
        },
        Case {
            what: "a batch sum over a history longer than its source",
            buffers: vec![spec("s", Fixed(1), 3, Zero), spec("src", Batch, 3, Const(1.0))],
            train: vec![Kernel::BatchSum { out: 0, src: 1, cols: 3, mean: false, repeat: 2, accumulate: false }],
            bad: "src",
            touch: Touch::Call,
            batches: &[2],
        },
        Case {
            what: "a copy longer than its destination",
            buffers: vec![spec("dst", Fixed(1), 4, Zero), spec("src", Fixed(1), 8, Const(1.0))],
            train: vec![Kernel::Copy { dst: 0, src: 1, len: 8 }],
            bad: "dst",
            touch: Touch::Copy,
            batches: &[1],
        },
        Case {
            what: "a per-sample reduction into an unbatched scalar",
            buffers: vec![spec("sum", Fixed(1), 1, Zero), spec("x", Batch, 6, Const(1.0))],
            train: vec![Kernel::Reduce {
                out: 0,
                op: circ_compiler::lir::RedOp::Sum,
                batched: true,
                cols: 6,
                value: load(1, Access::Elem),
            }],
            bad: "sum",
            touch: Touch::Store,
            batches: &[4],
        },
        Case {
            what: "a column reduction into a short output (inside a time loop)",
            buffers: vec![spec("c", Fixed(1), 2, Zero), spec("W", Fixed(3), 7, Const(1.0))],
            train: vec![Kernel::Loop {
                count: 3,
                reverse: false,
                body: vec![Kernel::SynReduce {
                    out: 0,
                    row: false,
                    op: circ_compiler::lir::RedOp::Max,
                    rows: 3,
                    cols: 7,
                    value: load(1, Access::Elem),
                }],
            }],
            bad: "c",
            touch: Touch::Store,
            batches: &[1],
        },
        Case {
            what: "a synapse pass split over threads whose post vector is short",
            buffers: vec![
                spec("W", Fixed(2048), 2048, Const(0.5)),
                spec("post", Fixed(1), 2000, Const(1.0)),
                spec("pre", Fixed(1), 2048, Const(1.0)),
            ],
            train: vec![Kernel::SynMap {
                rows: 2048,
                cols: 2048,
                over_batch: false,
                stores: vec![store(
                    0,
                    KExpr::bin(
                        circ_compiler::ast::BinOp::Add,
                        load(0, Access::Elem),
                        KExpr::Call(
                            Func::Tanh,
                            vec![KExpr::bin(circ_compiler::ast::BinOp::Mul, load(1, Access::Post), load(2, Access::Pre))],
                        ),
                    ),
                )],
            }],
            bad: "post",
            touch: Touch::Load,
            batches: &[1],
        },
    ]
}

/// Grows every buffer of a state by `CANARY` canary values past its shape.
fn add_canaries(s: &mut State) -> Vec<usize> {
    let lens = s.lens();
    match &mut s.data {
        Data::F32(v) => v.iter_mut().for_each(|b| b.extend(std::iter::repeat_n(CANARY_VALUE as f32, CANARY))),
        Data::F64(v) => v.iter_mut().for_each(|b| b.extend(std::iter::repeat_n(CANARY_VALUE, CANARY))),
    }
    lens
}

#[test]
fn out_of_bounds_accesses_are_caught_and_skipped() {
    for case in cases() {
        for precision in [Precision::F32, Precision::F64] {
            let p = program(case.buffers.clone(), case.train.clone(), precision);
            let what = format!("{} ({precision:?})", case.what);
            // The normal path refuses such a program before compiling it.
            let refused = codegen::compile(&p, false).err().unwrap_or_else(|| panic!("{what}: validate accepted it"));
            assert!(refused.contains("invalid LIR"), "{what}: {refused}");
            assert!(codegen::compile_unvalidated(&p, Options::default()).is_err(), "{what}: compiled unchecked without validation");
            let mut jit = codegen::compile_unvalidated(&p, CHECKED).unwrap_or_else(|e| panic!("{what}: {e}"));
            for &nb in case.batches {
                let mut state = State::new(&p.buffers, nb, precision, 1);
                let shape = add_canaries(&mut state);
                let ctx = StepCtx::default();
                let err = driver::run_entry(&mut jit, EntryKind::Train, &mut state, nb, &ctx).expect_err(&what);
                let RunError::Bounds(fault) = &err else { panic!("{what}: {err}") };
                let text = miette_text(&err);
                assert_eq!(fault.buffer, format!("`{}`", case.bad), "{what}, batch {nb}: {text}");
                assert_eq!(fault.raw.touch, case.touch as i64, "{what}, batch {nb}: {text}");
                let bad = p.buffers.iter().position(|b| b.name == case.bad).expect("the bad buffer");
                assert_eq!(fault.len as usize, shape[bad], "{what}, batch {nb}: {text}");
                assert!(fault.raw.last >= fault.len || fault.raw.first < 0, "{what}, batch {nb}: not out of bounds: {text}");
                assert!(text.contains("circ::jit::bounds") && text.contains(&format!("`{}`", case.bad)), "{what}: {text}");
                assert!(text.contains("train kernel"), "{what}: the kernel is not named: {text}");
                assert!(jit.take_fault().is_none(), "{what}: the fault was not taken");
                // Nothing past any buffer's shape was written.
                for (b, &len) in shape.iter().enumerate() {
                    for k in len..len + CANARY {
                        assert_eq!(
                            state.at(b, k),
                            CANARY_VALUE,
                            "{what}, batch {nb}: `{}`[{k}] past its end was written",
                            p.buffers[b].name
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn bounds_fault_renders_as_a_diagnostic() {
    let case = &cases()[0];
    let p = program(case.buffers.clone(), case.train.clone(), Precision::F32);
    let mut jit = codegen::compile_unvalidated(&p, CHECKED).unwrap();
    let mut state = State::new(&p.buffers, 1, Precision::F32, 1);
    let err = driver::run_entry(&mut jit, EntryKind::Train, &mut state, 1, &StepCtx::default()).unwrap_err();
    let text = miette_text(&err);
    // A 4-lane store at element 4 of a 4-element buffer (f32): lanes 4..8.
    assert!(text.contains("circ::jit::bounds"), "{text}");
    assert!(text.contains("out-of-bounds store in compiled code: elements 4..8 of `dst`, which has 4 elements"), "{text}");
    assert!(text.contains("in train kernel 0: map [1 x 8] -> %0:dst"), "{text}");
    // The in-bounds lanes before the fault were written; the entry stopped there.
    assert_eq!(state.get(0), vec![2.0; 4]);
}
