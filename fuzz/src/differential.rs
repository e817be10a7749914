//! JIT against the reference interpreter on generated circuits (the `differential` target).
//!
//! The same loop as tests/corpus.rs: both engines start from the same seeded state, get the
//! same inputs and one-hot targets every step, run `init`, then a few `train` steps in
//! lockstep (the interpreter restarts from the JIT's state after each compared step, so
//! rounding differences cannot compound), then `monitor` and `eval`. Every buffer must agree
//! within 1e-9 relative (1e-10 absolute floor) while every value is finite and at most 1e6 in
//! magnitude; a program whose values leave that range is compared up to there and counted as
//! overflowed. A disagreement is judged against the program's own sensitivity first: the
//! engines run the entry again from its starting state perturbed by 1e-12 relative (all
//! values up, all down, alternately up and down, and the reverse); if one of these moves either
//! engine's value by more than the tolerance, the engines' different summation orders (gemm
//! against ndarray) explain it (`cos` of a huge value, a comparison of a rounding residue with
//! 0, a recomputed value compared for equality with a stored one), and the program is counted
//! as ill-conditioned and compared up to there.

use crate::gen;
use circ_compiler::interp::Interp;
use circ_compiler::lir::Program;
use circ_compiler::{codegen, frontend, pipeline};
use circ_runtime::abi::StepCtx;
use circ_runtime::driver::{Engine, EntryKind};
use circ_runtime::state::State;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub const REL: f64 = 1e-9;
pub const BIG: f64 = 1e6;
const STEPS: u64 = 3;

/// Counters, printed every 10000 inputs and by [`stats`].
pub static INPUTS: AtomicU64 = AtomicU64::new(0);
pub static CLEAN: AtomicU64 = AtomicU64::new(0);
pub static LOWERED: AtomicU64 = AtomicU64::new(0);
pub static COMPARED: AtomicU64 = AtomicU64::new(0);
pub static OVERFLOWED: AtomicU64 = AtomicU64::new(0);
pub static ILL_CONDITIONED: AtomicU64 = AtomicU64::new(0);

pub fn stats() -> String {
    format!(
        "differential: {} inputs, {} checked clean, {} lowered, {} compared in full, {} compared until overflow, {} until an ill-conditioned value",
        INPUTS.load(Relaxed),
        CLEAN.load(Relaxed),
        LOWERED.load(Relaxed),
        COMPARED.load(Relaxed),
        OVERFLOWED.load(Relaxed),
        ILL_CONDITIONED.load(Relaxed)
    )
}

pub fn run_bytes(data: &[u8]) {
    let n = INPUTS.fetch_add(1, Relaxed) + 1;
    if n.is_multiple_of(10_000) {
        eprintln!("{}", stats());
    }
    let g = gen::generate(data);
    if std::env::var_os("CIRC_FUZZ_PRINT").is_some() {
        eprintln!("{}", g.text);
    }
    run_text(&g.text, g.batch);
}

/// Checks, lowers and compares one program; panics on a disagreement.
pub fn run_text(text: &str, batch: usize) {
    let fe = frontend::load_source("gen.circ", text, &[]);
    let Some(c) = fe.ok() else { return };
    CLEAN.fetch_add(1, Relaxed);
    let Ok(p) = pipeline::lower(c, batch) else { return };
    LOWERED.fetch_add(1, Relaxed);
    match compare_engines(&p, batch) {
        Judged::Agree => COMPARED.fetch_add(1, Relaxed),
        Judged::OutOfRange => OVERFLOWED.fetch_add(1, Relaxed),
        Judged::IllConditioned => ILL_CONDITIONED.fetch_add(1, Relaxed),
    };
}

/// How a comparison ended (a real disagreement panics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judged {
    Agree,
    OutOfRange,
    IllConditioned,
}

/// Runs both engines and compares them after every entry.
pub fn compare_engines(p: &Program, nb: usize) -> Judged {
    let mut jit = codegen::compile(p, false).unwrap_or_else(|e| panic!("the JIT rejects a lowered program: {e}"));
    let mut interp = Interp::new(p.clone());
    let mut sj = State::new(&p.buffers, nb, p.precision, 11);
    let mut si = State::new(&p.buffers, nb, p.precision, 11);
    let mut ctx = StepCtx { seed: 11, step: 0, iter: 0 };
    let mut run = |entry: EntryKind, sj: &mut State, si: &mut State, ctx: &StepCtx, when: &str| {
        let before = si.clone();
        jit.run(entry, sj, nb, ctx);
        interp.run(entry, si, nb, ctx);
        compare(p, sj, si, nb, when, &mut |pattern: usize| {
            // The same entry from a slightly different start, in each engine: the program's
            // sensitivity (each engine's own, since a value one recomputes may equal a
            // stored value to the last bit in one engine and not in the other).
            let mut pj = before.clone();
            perturb(&mut pj, pattern);
            let mut pi = pj.clone();
            jit.run(entry, &mut pj, nb, ctx);
            interp.run(entry, &mut pi, nb, ctx);
            (pj, pi)
        })
    };
    let judged = run(EntryKind::Init, &mut sj, &mut si, &ctx, "init");
    if judged != Judged::Agree {
        return judged;
    }
    let mut rng: u64 = 0x243F_6A88_85A3_08D3;
    for step in 0..STEPS {
        ctx.step = step;
        feed([&mut sj, &mut si], p, nb, &mut rng);
        let judged = run(EntryKind::Train, &mut sj, &mut si, &ctx, &format!("train step {step}"));
        if judged != Judged::Agree {
            return judged;
        }
        si.data = sj.data.clone();
    }
    let judged = run(EntryKind::Monitor, &mut sj, &mut si, &ctx, "monitor");
    if judged != Judged::Agree {
        return judged;
    }
    run(EntryKind::Eval, &mut sj, &mut si, &ctx, "eval")
}

/// Perturbations tried on a disagreement: all values scaled up or down, or alternately (a
/// rounding residue that a comparison turns into 0 or 1 flips under one of them).
const PATTERNS: usize = 4;

/// Scales every value by 1 ± 1e-12, the signs chosen by `pattern`.
fn perturb(s: &mut State, pattern: usize) {
    for i in 0..s.specs.len() {
        let v: Vec<f64> = s
            .get(i)
            .iter()
            .enumerate()
            .map(|(k, x)| {
                let up = match pattern {
                    0 => true,
                    1 => false,
                    2 => (k + i) % 2 == 0,
                    _ => (k + i) % 2 == 1,
                };
                x * (1.0 + if up { 1e-12 } else { -1e-12 })
            })
            .collect();
        s.set_f64(i, &v);
    }
}

fn next(rng: &mut u64) -> f64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    (*rng >> 11) as f64 / (1u64 << 53) as f64
}

/// The same input (70% zeros, like images) and one-hot target in both states.
fn feed(states: [&mut State; 2], p: &Program, nb: usize, rng: &mut u64) {
    let xs: Option<(usize, Vec<f32>)> =
        p.input.map(|i| (i, (0..nb * p.buffers[i].cols).map(|_| if next(rng) < 0.3 { next(rng) as f32 } else { 0.0 }).collect()));
    let ys: Option<(usize, Vec<f32>)> = p.target.map(|t| {
        let k = p.buffers[t].cols;
        let mut ys = vec![0.0f32; nb * k];
        for b in 0..nb {
            ys[b * k + (next(rng) * k as f64) as usize % k] = 1.0;
        }
        (t, ys)
    });
    for s in states {
        for (b, v) in xs.iter().chain(ys.iter()) {
            s.set_f32(*b, v);
        }
    }
}

fn in_range(x: f64) -> bool {
    x.is_finite() && x.abs() <= BIG
}

/// Agreement within `rel` relative with a `rel / 10` absolute floor.
pub fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()) + rel / 10.0
}

/// Compares every buffer of the JIT's state `a` with the interpreter's `b`: out of range
/// (some value of either is), ill-conditioned (a disagreement of the size that `rerun`, each
/// engine from a perturbed start, shows in that engine), or agreeing; panics on a disagreement.
fn compare(p: &Program, a: &State, b: &State, nb: usize, when: &str, rerun: &mut dyn FnMut(usize) -> (State, State)) -> Judged {
    let mut all = Vec::with_capacity(p.buffers.len());
    for (i, spec) in p.buffers.iter().enumerate() {
        // The states are allocated for exactly `nb` samples: every element is live.
        let (x, y) = (a.get(i), b.get(i));
        let len = x.len().min(y.len());
        if x[..len].iter().chain(&y[..len]).any(|&v| !in_range(v)) {
            return Judged::OutOfRange;
        }
        all.push((i, spec, x, y, len));
    }
    let mut perturbed: Option<Vec<(State, State)>> = None;
    for (i, spec, x, y, len) in all {
        for k in 0..len {
            if close(x[k], y[k], REL) {
                continue;
            }
            let runs = perturbed.get_or_insert_with(|| (0..PATTERNS).map(&mut *rerun).collect());
            let moved = |q: &State, own: f64| !in_range(q.get(i)[k]) || !close(q.get(i)[k], own, REL);
            if runs.iter().any(|(qj, qi)| moved(qj, x[k]) || moved(qi, y[k])) {
                return Judged::IllConditioned;
            }
            // Every buffer that differs, in the order of the program's buffers (the first
            // one computed wrongly is usually the last kernel's input among them).
            let differing: Vec<String> = p
                .buffers
                .iter()
                .enumerate()
                .filter_map(|(j, s)| {
                    let (u, v) = (a.get(j), b.get(j));
                    let bad = u.iter().zip(&v).position(|(u, v)| !close(*u, *v, REL))?;
                    Some(format!("`{}`[{bad}] {} vs {}", s.name, u[bad], v[bad]))
                })
                .collect();
            if std::env::var_os("CIRC_DIFF_DUMP").is_some() {
                for (j, s) in p.buffers.iter().enumerate() {
                    eprintln!("DUMP {} jit {:?} interp {:?}", s.name, a.get(j), b.get(j));
                }
            }
            panic!(
                "JIT and interpreter disagree ({when}, batch {nb}): buffer `{}`[{k}]: JIT {} vs interpreter {} (all differing: {})",
                spec.name,
                x[k],
                y[k],
                differing.join(", ")
            );
        }
    }
    Judged::Agree
}
