//! Automatic differentiation: `grad()` against hand-written backprop and against central
//! finite differences on generated programs (f64).

mod common;

use circ_compiler::frontend;
use circ_compiler::lir::Program;
use circ_compiler::pipeline::{self, EngineKind};
use circ_compiler::resolve::parse_override;
use circ_runtime::abi::StepCtx;
use circ_runtime::driver::{self, Engine, EntryKind, RunConfig};
use circ_runtime::state::State;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn train_file(file: &str) -> State {
    let fe = frontend::load_file(&common::root().join(file), &[]).unwrap();
    let c = fe.ok().unwrap_or_else(|| panic!("{file}: {:?}", fe.diags));
    let p = pipeline::lower(c, c.experiment.batch).unwrap();
    let info = pipeline::run_info(&p, &fe.sources);
    let data = circ_runtime::catalog::load("moons", None, 0).unwrap();
    let mut state = State::new(&p.buffers, 1000, p.precision, 0);
    let mut engine = pipeline::engine(p, EngineKind::Jit).unwrap();
    let cfg = RunConfig { epochs: 3, batch: c.experiment.batch, loss: pipeline::loss(c), ..RunConfig::default() };
    driver::train(engine.as_mut(), &mut state, &info, Some(&data), &cfg).unwrap();
    state
}

#[test]
fn grad_gives_the_same_updates_as_hand_written_backprop() {
    let a = train_file("examples/grad/mlp.circ");
    let b = train_file("examples/grad/mlp_explicit.circ");
    for name in ["W1.w", "W2.w"] {
        let (x, y) = (a.get(a.find(name).unwrap()), b.get(b.find(name).unwrap()));
        for (i, (p, q)) in x.iter().zip(&y).enumerate() {
            assert!((p - q).abs() <= 1e-6 * p.abs().max(q.abs()) + 1e-9, "{name}[{i}]: grad {p} vs explicit {q}");
        }
    }
}

/// A random smooth elementwise function of `x` (depth ≤ 2) in the language's syntax.
fn random_fn(rng: &mut ChaCha8Rng, x: &str, depth: u32) -> String {
    let inner = if depth == 0 { x.to_string() } else { random_fn(rng, x, depth - 1) };
    match rng.random_range(0..16) {
        0 => format!("tanh({inner})"),
        1 => format!("sigmoid({inner})"),
        2 => format!("softplus({inner}, 2)"),
        3 => format!("exp(0.3 * {inner})"),
        4 => format!("({inner}) * ({inner})"),
        5 => format!("({inner}) / (1 + ({inner}) * ({inner}))"),
        6 => format!("sqrt(1 + ({inner}) * ({inner}))"),
        7 => format!("log(1 + ({inner}) * ({inner}))"),
        8 => format!("gelu({inner})"),
        9 => format!("sin({inner})"),
        10 => format!("cos({inner})"),
        11 => format!("leaky_relu({inner}, 0.2)"),
        12 => format!("({inner}) ^ 3"),
        13 => format!("max({inner}, 0.1 * ({inner}))"),
        14 => format!("-({inner}) + 0.5 * ({inner})"),
        _ => inner,
    }
}

/// A random loss over the output population.
fn random_loss(rng: &mut ChaCha8Rng) -> &'static str {
    match rng.random_range(0..6) {
        0 => "sum(o.q * o.q)",
        1 => "cross_entropy(o.q, y)",
        2 => "logsumexp(o.q) + 0.1 * mean(o.q)",
        3 => "sum(softmax(o.q) * y) + norm(o.q)",
        4 => "0.5 * sum((o.q - y) * (o.q - y))",
        _ => "max(o.q) + sum(o.a * o.q)",
    }
}

fn program(rng: &mut ChaCha8Rng) -> String {
    let f1 = random_fn(rng, "h.a", 1);
    let f2 = random_fn(rng, "o.a", 1);
    let loss = random_loss(rng);
    format!(
        "circuit fd locality nonlocal\nprecision f64\nparam lr = 1\n\
         input x[3]\npop h[4] {{ a, out r }}\npop o[3] {{ a, q }}\ntarget y[3] at o\nsignal L\n\
         path W1: x -> h init normal(0, 0.6) plastic\npath W2: h -> o init normal(0, 0.6) plastic\n\
         phase forward {{\n  h.a = W1(x)\n  h.r = {f1}\n  o.a = W2(h)\n  o.q = {f2}\n  L = {loss}\n}}\n\
         plasticity sum {{\n  W1.w -= lr * grad(L, W1.w)\n  W2.w -= lr * grad(L, W2.w)\n}}\n\
         experiment {{ data = none }}\n"
    )
}

fn compile(text: &str, lr: f64) -> (Program, Box<dyn Engine>) {
    let fe = frontend::load_source("fd.circ", text, &[parse_override(&format!("lr={lr}")).unwrap()]);
    let c = fe.ok().unwrap_or_else(|| panic!("generated program does not check:\n{text}\n{:?}", fe.diags));
    let p = pipeline::lower(c, 1).unwrap_or_else(|d| panic!("{text}\n{d:?}"));
    let e = pipeline::engine(p.clone(), EngineKind::Jit).unwrap();
    (p, e)
}

/// Loss of one forward pass with the weights in `state` (the lr = 0 program keeps them).
fn loss_at(p: &Program, e: &mut dyn Engine, state: &mut State) -> f64 {
    e.run(EntryKind::Train, state, 1, &StepCtx::default());
    state.at(state.find("L").expect(&p.name), 0)
}

#[test]
fn grad_matches_central_finite_differences_on_generated_programs() {
    let mut checked = 0;
    for seed in 0..60u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let text = program(&mut rng);
        let (pg, mut eg) = compile(&text, 1.0);
        let (p0, mut e0) = compile(&text, 0.0);
        let mut st = State::new(&pg.buffers, 1, pg.precision, seed);
        let x: Vec<f32> = (0..3).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut y = vec![0.0f32; 3];
        y[rng.random_range(0..3)] = 1.0;
        st.set_f32(pg.input.unwrap(), &x);
        st.set_f32(pg.target.unwrap(), &y);
        // One step with lr = 1 and batch 1 subtracts exactly dL/dW.
        let mut stepped = st.clone();
        eg.run(EntryKind::Train, &mut stepped, 1, &StepCtx::default());
        for name in ["W1.w", "W2.w"] {
            let b = st.find(name).unwrap();
            let w0 = st.get(b);
            let grad: Vec<f64> = w0.iter().zip(stepped.get(b)).map(|(a, c)| a - c).collect();
            for i in 0..w0.len() {
                let h = 1e-5 * w0[i].abs().max(1.0);
                let mut plus = st.clone();
                let mut wp = w0.clone();
                wp[i] += h;
                plus.set_f64(b, &wp);
                let mut minus = st.clone();
                let mut wm = w0.clone();
                wm[i] -= h;
                minus.set_f64(b, &wm);
                let fd = (loss_at(&p0, e0.as_mut(), &mut plus) - loss_at(&p0, e0.as_mut(), &mut minus)) / (2.0 * h);
                let err = (grad[i] - fd).abs() / grad[i].abs().max(fd.abs()).max(1e-3);
                assert!(err < 1e-6, "seed {seed}, {name}[{i}]: grad {} vs finite difference {fd} (rel. err {err:e})\n{text}", grad[i]);
                checked += 1;
            }
        }
    }
    assert!(checked > 1000);
}

/// A recurrent circuit: five iterations of a tanh RNN, a squared-error loss summed over them.
const RNN: &str = "circuit rnn locality nonlocal\nprecision f64\nparam lr = 1\nparam T: int = 5\n\
    input x[3]\npop h[4] { state s, a }\npop o[2] { q }\ntarget y[2] at o\nsignal L\n\
    path Win: x -> h init normal(0, 0.5) plastic\npath Wrec: h -> h init normal(0, 0.5) plastic\n\
    path Wout: h -> o init normal(0, 0.5) plastic\n\
    phase reset {\n  h.s = 0\n  L = 0\n}\n\
    phase run repeat T {\n  h.a = Win(x) + Wrec(h.s)\n  h.s = tanh(h.a)\n  o.q = Wout(h.s)\n  L = L + sum((o.q - y) * (o.q - y))\n}\n\
    plasticity sum {\n  Win.w -= lr * grad(L, Win.w)\n  Wrec.w -= lr * grad(L, Wrec.w)\n  Wout.w -= lr * grad(L, Wout.w)\n}\n\
    experiment { data = none }\n";

/// Checks `grad` of a program against central finite differences of its signal `L`, for
/// the listed pathways, with inputs from `seed`.
fn check_against_fd(text: &str, paths: &[&str], seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (pg, mut eg) = compile(text, 1.0);
    let (p0, mut e0) = compile(text, 0.0);
    let mut st = State::new(&pg.buffers, 1, pg.precision, seed);
    let xs: Vec<f32> = (0..pg.buffers[pg.input.unwrap()].cols).map(|_| rng.random_range(-1.0..1.0)).collect();
    let ys: Vec<f32> = (0..pg.buffers[pg.target.unwrap()].cols).map(|_| rng.random_range(-1.0..1.0)).collect();
    st.set_f32(pg.input.unwrap(), &xs);
    st.set_f32(pg.target.unwrap(), &ys);
    let mut stepped = st.clone();
    eg.run(EntryKind::Train, &mut stepped, 1, &StepCtx::default());
    for name in paths {
        let b = st.find(&format!("{name}.w")).unwrap();
        let w0 = st.get(b);
        let grad: Vec<f64> = w0.iter().zip(stepped.get(b)).map(|(a, c)| a - c).collect();
        for i in 0..w0.len() {
            let h = 1e-5 * w0[i].abs().max(1.0);
            let at = |d: f64, e0: &mut dyn Engine| {
                let mut s = st.clone();
                let mut w = w0.clone();
                w[i] += d;
                s.set_f64(b, &w);
                loss_at(&p0, e0, &mut s)
            };
            let fd = (at(h, e0.as_mut()) - at(-h, e0.as_mut())) / (2.0 * h);
            let err = (grad[i] - fd).abs() / grad[i].abs().max(fd.abs()).max(1e-3);
            assert!(err < 1e-6, "{name}[{i}]: grad {} vs finite difference {fd} (rel. err {err:e})", grad[i]);
        }
    }
}

#[test]
fn backpropagation_through_time_matches_finite_differences() {
    for seed in 0..5 {
        check_against_fd(RNN, &["Wout", "Wrec", "Win"], seed);
    }
}

/// The network of the forward-vs-reverse test: θ scales the first layer's input, so
/// dL/dθ = Σᵢⱼ (∂L/∂W1)ᵢⱼ · W1ᵢⱼ / θ.
const SCALED: &str = "circuit scaled locality nonlocal
precision f64
THETA
input x[5]
pop h[4] { a, out r }
pop o[3] { a }
target y[3] at o
path W1: x -> h init uniform(-1, 1) plastic
path W2: h -> o init uniform(-1, 1) plastic
phase forward {
  h.a = theta * W1(x)
  h.r = tanh(h.a)
  o.a = W2(h)
}
PLASTICITY
experiment { data = none  batch = 1  readout = o.a  EXTRA }
";

#[test]
fn forward_and_reverse_mode_agree_on_the_same_loss() {
    // Forward mode: θ a meta-param; the tangent pass gives d(cross-entropy)/dθ.
    let fwd = SCALED
        .replace("THETA", "meta theta = 0.7")
        .replace("PLASTICITY", "plasticity { W2.w += 0 * post.a * pre }")
        .replace("EXTRA", "episodes = 1");
    // Reverse mode: θ a constant; grad() gives dL/dW1, applied with rate 1.
    let rev = SCALED
        .replace("THETA", "param theta = 0.7")
        .replace("PLASTICITY", "plasticity { W1.w -= grad(cross_entropy(o.a, y), W1.w) }")
        .replace("EXTRA", "");
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let x: Vec<f64> = (0..5).map(|_| rng.random_range(-1.0..1.0)).collect();
    let y = vec![0.0, 1.0, 0.0];
    let ctx = StepCtx { seed: 1, step: 0, iter: 0 };
    let build = |text: &str| {
        let fe = frontend::load_source("scaled.circ", text, &[]);
        let c = fe.ok().unwrap_or_else(|| panic!("{:?}", fe.diags));
        let p = pipeline::lower(c, 1).unwrap();
        let mut state = State::new(&p.buffers, 1, p.precision, 9);
        state.set_f64(p.input.unwrap(), &x);
        state.set_f64(p.target.unwrap(), &y);
        let find = |n: &str| p.buffers.iter().position(|b| b.name == n).unwrap();
        let (w1, t) = (find("W1.w"), p.buffers.iter().position(|b| b.name == "__d0___meta_loss"));
        let engine = pipeline::engine(p, EngineKind::Jit).unwrap();
        (engine, state, w1, t)
    };
    let (mut ef, mut sf, _, tangent) = build(&fwd);
    ef.run(EntryKind::Init, &mut sf, 1, &ctx);
    ef.run(EntryKind::Eval, &mut sf, 1, &ctx);
    let forward = sf.at(tangent.expect("the tangent of the meta-loss"), 0);

    let (mut er, mut sr, w1, _) = build(&rev);
    er.run(EntryKind::Init, &mut sr, 1, &ctx);
    let before = sr.get(w1);
    er.run(EntryKind::Train, &mut sr, 1, &ctx);
    let after = sr.get(w1);
    let reverse: f64 = before.iter().zip(&after).map(|(b, a)| (b - a) * b).sum::<f64>() / 0.7;

    assert!(forward.abs() > 1e-3, "a derivative worth comparing: {forward}");
    let rel = (forward - reverse).abs() / forward.abs();
    assert!(rel < 1e-9, "forward mode {forward} vs reverse mode {reverse} (relative difference {rel:.1e})");
}

/// A longer recurrent circuit for checkpointed backpropagation through time: two recurrent
/// layers (the second reads the first), a state carried across steps, a signal updated
/// every iteration, and a loss on every iteration's output.
const LONG_RNN: &str = "circuit long_rnn locality nonlocal\nprecision f64\nparam lr = 0.1\nparam T: int = 23\n\
    input x[3]\npop h[5] { state s, a }\npop g[4] { state s, a }\npop o[2] { q }\ntarget y[2] at o\nsignal L\n\
    path Win: x -> h init normal(0, 0.5) plastic\npath Wrec: h -> h init normal(0, 0.4) plastic\n\
    path V: h -> g init normal(0, 0.5) plastic\npath Grec: g -> g init normal(0, 0.4) plastic\n\
    path Wout: g -> o init normal(0, 0.5) plastic\n\
    phase reset {\n  L = 0\n}\n\
    phase run repeat T {\n  h.a = Win(x) + Wrec(h.s)\n  h.s = tanh(h.a)\n  g.a = V(h.s) + Grec(g.s)\n  g.s = tanh(g.a)\n  o.q = Wout(g.s)\n  L = L + sum((o.q - y) * (o.q - y))\n}\n\
    plasticity sum {\n  Win.w -= lr * grad(L, Win.w)\n  Wrec.w -= lr * grad(L, Wrec.w)\n  V.w -= lr * grad(L, V.w)\n  Grec.w -= lr * grad(L, Grec.w)\n  Wout.w -= lr * grad(L, Wout.w)\n}\n\
    experiment { data = none }\n";

/// Runs `steps` training steps of LONG_RNN with `bptt_checkpoint = every` ("0": store all) on
/// engine `kind`; returns the state and the history rows the program allocates per sample
/// and neuron.
fn run_checkpointed(every: &str, kind: EngineKind, nb: usize, steps: u64) -> (State, usize) {
    let set = [parse_override(&format!("bptt_checkpoint={every}")).unwrap()];
    let fe = frontend::load_source("long_rnn.circ", LONG_RNN, &set);
    let c = fe.ok().unwrap_or_else(|| panic!("{:?}", fe.diags));
    let p = pipeline::lower(c, nb).unwrap_or_else(|d| panic!("{d:?}"));
    let history: usize = p
        .buffers
        .iter()
        .filter_map(|b| match b.rows {
            circ_runtime::state::Rows::History(t) => Some(t * b.cols),
            _ => None,
        })
        .sum();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let x: Vec<f64> = (0..3 * nb).map(|_| rng.random_range(-1.0..1.0)).collect();
    let y: Vec<f64> = (0..2 * nb).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut state = State::new(&p.buffers, nb, p.precision, 4);
    let (input, target) = (p.input.unwrap(), p.target.unwrap());
    let mut engine = pipeline::engine(p, kind).unwrap();
    let mut ctx = StepCtx { seed: 2, step: 0, iter: 0 };
    engine.run(EntryKind::Init, &mut state, nb, &ctx);
    for step in 0..steps {
        ctx.step = step;
        state.set_f64(input, &x);
        state.set_f64(target, &y);
        engine.run(EntryKind::Train, &mut state, nb, &ctx);
    }
    (state, history)
}

#[test]
fn checkpointed_backpropagation_through_time_gives_the_stored_gradient() {
    for kind in [EngineKind::Jit, EngineKind::Interp] {
        for nb in [1, 3] {
            let (full, full_rows) = run_checkpointed("0", kind, nb, 3);
            // 23 iterations: segments of 1, of 5 (the last has 3), of 22 (then 1), a setting
            // longer than the loop (no checkpoints), and `auto` (⌈√23⌉ = 5).
            for every in ["1", "5", "22", "40", "auto"] {
                let (ck, rows) = run_checkpointed(every, kind, nb, 3);
                if every != "40" {
                    assert!(rows < full_rows, "every {every}: {rows} history rows, not fewer than {full_rows}");
                }
                // Weights after three steps (each step's gradient reads the state the last
                // left), the carried state and the loss signal: the same up to rounding (the
                // gradient is summed segment by segment instead of in one product).
                for name in ["Win.w", "Wrec.w", "V.w", "Grec.w", "Wout.w", "h.s", "g.s", "o.q", "L"] {
                    let (a, b) = (full.get(full.find(name).unwrap()), ck.get(ck.find(name).unwrap()));
                    for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                        let err = (p - q).abs() / p.abs().max(1e-3);
                        assert!(err < 1e-10, "{kind:?} nb {nb} every {every}: {name}[{i}] {p} stored vs {q} checkpointed");
                    }
                }
            }
        }
    }
}

#[test]
fn checkpointed_backpropagation_through_time_matches_finite_differences() {
    let text = RNN.replace("data = none", "data = none  bptt_checkpoint = 2");
    for seed in 0..3 {
        check_against_fd(&text, &["Wout", "Wrec", "Win"], seed);
    }
}

/// RNN variants in which a per-sample scalar (a signal) computed from the population scales
/// its recurrent input: (a) inside the loop, assigned before it is read; (b) carried from the
/// previous iteration; (c) in a plain phase (a network without the loop).
fn signal_variants() -> [(String, &'static [&'static str]); 3] {
    let with_m = RNN.replace("signal L\n", "signal L\nsignal m\n");
    let a = with_m.replace("  h.a = Win(x) + Wrec(h.s)\n", "  m = mean(h.s) + 1\n  h.a = Win(x) + m * Wrec(h.s)\n");
    let b = with_m
        .replace("  h.a = Win(x) + Wrec(h.s)\n", "  h.a = Win(x) + m * Wrec(h.s)\n")
        .replace("  o.q = Wout(h.s)\n", "  o.q = Wout(h.s)\n  m = mean(h.s) + 1\n")
        .replace("  L = 0\n", "  L = 0\n  m = 1\n");
    let c = with_m
        .replace("repeat T ", "")
        .replace("{ state s, a }", "{ state s, a, b }")
        .replace("  h.s = 0\n  L = 0\n", "  h.b = 0.5\n")
        .replace("  h.a = Win(x) + Wrec(h.s)\n", "  m = mean(h.b) + 1\n  h.a = Win(x) + m * Wrec(h.b)\n")
        .replace("L = L + sum", "L = sum");
    [(a, &["Wout", "Wrec", "Win"]), (b, &["Wout", "Wrec", "Win"]), (c, &["Wout", "Win"])]
}

#[test]
fn gradients_through_signals_match_finite_differences() {
    for (i, (text, paths)) in signal_variants().into_iter().enumerate() {
        for seed in 0..2 {
            check_against_fd(&text, paths, seed);
            if i < 2 {
                check_against_fd(&text.replace("data = none", "data = none  bptt_checkpoint = 2"), paths, seed);
            }
        }
    }
}
