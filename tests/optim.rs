//! The optimisers of stdlib/optim.circ against a direct implementation of their textbook
//! (PyTorch) update equations, on a linear layer with squared error, batch 4, f64.

use circ_compiler::frontend;
use circ_compiler::pipeline::{self, EngineKind};
use circ_runtime::abi::StepCtx;
use circ_runtime::driver::EntryKind;
use circ_runtime::state::State;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const NI: usize = 3;
const NO: usize = 2;
const NB: usize = 4;

fn program(apply: &str) -> String {
    format!(
        "circuit opt locality nonlocal\nprecision f64\nimport \"optim.circ\"\n\
         input x[{NI}]\npop o[{NO}] {{ a, e }}\ntarget y[{NO}] at o\n\
         path W: x -> o init normal(0, 0.5) plastic\n\
         phase forward {{\n  o.a = W(x)\n  o.e = o.a - y\n}}\n\
         plasticity {{\n  {apply} to W\n}}\nexperiment {{ data = none }}\n"
    )
}

/// The reference update of one step, given the batch-mean gradient `g` and step number `t`.
type Update = dyn Fn(&mut [f64], &mut [Vec<f64>], &[f64], f64);

fn check(apply: &str, nstate: usize, update: &Update) {
    let text = program(apply);
    let fe = frontend::load_source("opt.circ", &text, &[]);
    let c = fe.ok().unwrap_or_else(|| panic!("{apply}: {:?}", fe.diags));
    let p = pipeline::lower(c, NB).unwrap();
    let mut e = pipeline::engine(p.clone(), EngineKind::Jit).unwrap();
    let mut st = State::new(&p.buffers, NB, p.precision, 3);
    let wb = st.find("W.w").unwrap();
    let mut w = st.get(wb);
    let mut bufs = vec![vec![0.0; NO * NI]; nstate];
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for step in 0..20u64 {
        let x: Vec<f32> = (0..NB * NI).map(|_| rng.random_range(-1.0..1.0)).collect();
        let y: Vec<f32> = (0..NB * NO).map(|_| rng.random_range(-1.0..1.0)).collect();
        st.set_f32(p.input.unwrap(), &x);
        st.set_f32(p.target.unwrap(), &y);
        e.run(EntryKind::Train, &mut st, NB, &StepCtx { seed: 0, step, iter: 0 });
        // Reference: e = Wx − y per sample, g = mean_b e xᵀ.
        let mut g = vec![0.0; NO * NI];
        for b in 0..NB {
            for i in 0..NO {
                let a: f64 = (0..NI).map(|j| w[i * NI + j] * x[b * NI + j] as f64).sum();
                let err = a - y[b * NO + i] as f64;
                for j in 0..NI {
                    g[i * NI + j] += err * x[b * NI + j] as f64 / NB as f64;
                }
            }
        }
        update(&mut w, &mut bufs, &g, (step + 1) as f64);
        let got = st.get(wb);
        for k in 0..w.len() {
            assert!(
                (got[k] - w[k]).abs() <= 1e-10 * w[k].abs().max(1.0),
                "{apply}, step {step}, w[{k}]: circ {} vs reference {}",
                got[k],
                w[k]
            );
        }
    }
}

#[test]
fn sgd_with_momentum() {
    check("apply sgd(post.e * pre, 0.1, 0.9)", 1, &|w, s, g, _| {
        for k in 0..w.len() {
            s[0][k] = 0.9 * s[0][k] + g[k];
            w[k] -= 0.1 * s[0][k];
        }
    });
}

#[test]
fn plain_sgd() {
    check("apply sgd(post.e * pre, 0.1, 0)", 0, &|w, _, g, _| {
        for k in 0..w.len() {
            w[k] -= 0.1 * g[k];
        }
    });
}

#[test]
fn sgd_with_weight_decay() {
    check("apply sgd_decay(post.e * pre, 0.1, 0.9, 0.01)", 1, &|w, s, g, _| {
        for k in 0..w.len() {
            s[0][k] = 0.9 * s[0][k] + g[k] + 0.01 * w[k];
            w[k] -= 0.1 * s[0][k];
        }
    });
}

#[test]
fn nesterov() {
    check("apply nesterov(post.e * pre, 0.1, 0.9)", 1, &|w, s, g, _| {
        for k in 0..w.len() {
            s[0][k] = 0.9 * s[0][k] + g[k];
            w[k] -= 0.1 * (g[k] + 0.9 * s[0][k]);
        }
    });
}

fn adam_step(w: &mut [f64], s: &mut [Vec<f64>], g: &[f64], t: f64, lr: f64, decay: f64) {
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
    for k in 0..w.len() {
        w[k] -= lr * decay * w[k];
        s[0][k] = b1 * s[0][k] + (1.0 - b1) * g[k];
        s[1][k] = b2 * s[1][k] + (1.0 - b2) * g[k] * g[k];
        let mh = s[0][k] / (1.0 - b1.powf(t));
        let vh = s[1][k] / (1.0 - b2.powf(t));
        w[k] -= lr * mh / (vh.sqrt() + eps);
    }
}

#[test]
fn adam() {
    check("apply adam(post.e * pre, 0.01, 0.9, 0.999, 1e-8)", 2, &|w, s, g, t| adam_step(w, s, g, t, 0.01, 0.0));
}

#[test]
fn adamw() {
    check("apply adamw(post.e * pre, 0.01, 0.9, 0.999, 1e-8, 0.1)", 2, &|w, s, g, t| adam_step(w, s, g, t, 0.01, 0.1));
}
