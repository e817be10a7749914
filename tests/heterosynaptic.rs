//! The heterosynaptic two-signal rule: a rule reading the current that *another* pathway brings
//! to its post neurons (DESIGN.md §3: a value arriving through a declared pathway is local to
//! the neuron it arrives at). It checks clean at neuron tier, and with both pathways plastic in
//! one block each rule reads the other's weights as they were before the block (two-phase
//! commit), in both engines.

use circ_compiler::frontend;
use circ_compiler::hir::Tier;
use circ_compiler::pipeline::{self, EngineKind};
use circ_runtime::abi::StepCtx;
use circ_runtime::driver::EntryKind;
use circ_runtime::state::State;

/// `W: x -> h` learns from what `V: z -> h` brings to `h`, and `V` from what `W` brings: the
/// paper's ΔW_ij = η p_i(t') h_j(t) with p(t') = V(z), written directly in the rules.
const SRC: &str = "circuit het locality neuron
precision f64
input x[3]
pop h[4] { a }
pop z[2] { b }
path W: x -> h init uniform(-1, 1) plastic
path V: z -> h init uniform(-1, 1) plastic
path U: x -> z init uniform(-1, 1) fixed
phase p {
  z.b = U(x)
  h.a = W(x)
}
plasticity sum {
  W.w += 0.5 * V(z) * pre - 0.1 * w
  V.w += 0.5 * W(x) * pre - 0.1 * w
}
experiment { data = none  batch = 1 }
";

#[test]
fn a_rule_reads_a_current_arriving_through_another_pathway() {
    let fe = frontend::load_source("het.circ", SRC, &[]);
    assert!(fe.diags.is_empty(), "{}", circ_compiler::diag::render_plain(&fe.diags, &fe.sources, 100));
    let report = fe.report.expect("a locality report");
    assert_eq!(report.tier, Tier::Neuron);
    let rules: Vec<_> = report.rows.iter().filter(|r| r.target.ends_with(".w")).collect();
    assert_eq!(rules.len(), 2);
    for r in rules {
        assert_eq!(r.verdict.tier, Tier::Neuron, "{}: {}", r.target, r.verdict.reason);
        assert!(r.verdict.reason.starts_with("input arriving through"), "{}: {}", r.target, r.verdict.reason);
    }
}

fn matvec(w: &[f64], x: &[f64]) -> Vec<f64> {
    w.chunks(x.len()).map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum()).collect()
}

#[test]
fn each_rule_reads_the_other_pathways_weights_from_before_the_block() {
    let fe = frontend::load_source("het.circ", SRC, &[]);
    let c = fe.ok().expect("checks clean");
    let p = pipeline::lower(c, 1).expect("lowers");
    for kind in [EngineKind::Jit, EngineKind::Interp] {
        let mut state = State::new(&p.buffers, 1, p.precision, 3);
        let mut engine = pipeline::engine(p.clone(), kind).expect("an engine");
        let ctx = StepCtx::default();
        engine.run(EntryKind::Init, &mut state, 1, &ctx);
        let find = |s: &State, n: &str| s.find(n).unwrap_or_else(|| panic!("no buffer {n}"));
        let (bw, bv, bu) = (find(&state, "W.w"), find(&state, "V.w"), find(&state, "U.w"));
        let (w0, v0, u) = (state.get(bw), state.get(bv), state.get(bu));
        let x = [0.3, -0.7, 0.9];
        state.set_f32(p.input.expect("an input"), &x.map(|v| v as f32));
        let x: Vec<f64> = x.iter().map(|&v| v as f32 as f64).collect();
        engine.run(EntryKind::Train, &mut state, 1, &ctx);
        let z = matvec(&u, &x);
        let (vz, wx) = (matvec(&v0, &z), matvec(&w0, &x));
        let (w1, v1) = (state.get(bw), state.get(bv));
        for i in 0..4 {
            for j in 0..3 {
                let want = w0[i * 3 + j] + 0.5 * vz[i] * x[j] - 0.1 * w0[i * 3 + j];
                assert!((w1[i * 3 + j] - want).abs() < 1e-12, "{kind:?} W.w[{i}][{j}] = {}, want {want}", w1[i * 3 + j]);
            }
            for j in 0..2 {
                // With the old weights of W (two-phase), not the ones W's rule just wrote.
                let want = v0[i * 2 + j] + 0.5 * wx[i] * z[j] - 0.1 * v0[i * 2 + j];
                assert!((v1[i * 2 + j] - want).abs() < 1e-12, "{kind:?} V.w[{i}][{j}] = {}, want {want}", v1[i * 2 + j]);
            }
        }
    }
}
