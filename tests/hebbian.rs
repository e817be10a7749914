//! Classic unsupervised rules of the standard library: Oja's rules find principal components,
//! BCM becomes selective.

mod common;

use circ_compiler::frontend;
use circ_compiler::pipeline::{self, EngineKind};
use circ_runtime::abi::StepCtx;
use circ_runtime::catalog;
use circ_runtime::driver::{self, Engine, EntryKind, RunConfig};
use circ_runtime::state::State;

/// Trains a stdlib program on its experiment's data; returns the final state and engine.
fn trained(file: &str) -> (State, Box<dyn Engine>, circ_compiler::lir::Program) {
    let fe = frontend::load_file(&common::root().join(file), &[]).unwrap();
    let c = fe.ok().unwrap_or_else(|| panic!("{file}: {:?}", fe.diags));
    let x = &c.experiment;
    let p = pipeline::lower(c, x.batch).unwrap();
    let info = pipeline::run_info(&p, &fe.sources);
    let data = catalog::load(&x.data.as_ref().unwrap().0, None, x.seed).unwrap();
    let mut state = State::new(&p.buffers, x.batch.max(8), p.precision, x.seed);
    let mut engine = pipeline::engine(p.clone(), EngineKind::Jit).unwrap();
    let cfg = RunConfig { epochs: x.epochs, batch: x.batch, eval_batch: 8, seed: x.seed, loss: pipeline::loss(c), ..RunConfig::default() };
    driver::train(engine.as_mut(), &mut state, &info, Some(&data), &cfg).unwrap();
    (state, engine, p)
}

fn rows(state: &State, name: &str, cols: usize) -> Vec<Vec<f64>> {
    let b = state.find(name).unwrap_or_else(|| panic!("no buffer {name}"));
    state.get(b).chunks(cols).map(|r| r.to_vec()).collect()
}

/// Angle (degrees) between a unit vector and its projection onto span(rows).
fn angle_to_span(v: &[f64], rows: &[Vec<f64>]) -> f64 {
    // Orthonormalise the rows (Gram–Schmidt, twice for stability).
    let mut q: Vec<Vec<f64>> = Vec::new();
    for r in rows {
        let mut u = r.clone();
        for _ in 0..2 {
            for b in &q {
                let d: f64 = u.iter().zip(b).map(|(x, y)| x * y).sum();
                u.iter_mut().zip(b).for_each(|(x, y)| *x -= d * y);
            }
        }
        let n = u.iter().map(|x| x * x).sum::<f64>().sqrt();
        if n > 1e-9 {
            q.push(u.into_iter().map(|x| x / n).collect());
        }
    }
    let proj2: f64 = q.iter().map(|b| b.iter().zip(v).map(|(x, y)| x * y).sum::<f64>().powi(2)).sum();
    proj2.sqrt().clamp(-1.0, 1.0).acos().to_degrees()
}

#[test]
fn oja_rules_find_the_principal_components() {
    let (state, _, _) = trained("stdlib/hebb.circ");
    let dirs: Vec<Vec<f64>> =
        catalog::gaussian_directions(0).chunks(catalog::GAUSSIAN_DIM).map(|r| r.iter().map(|&x| x as f64).collect()).collect();
    let w = rows(&state, "W.w", catalog::GAUSSIAN_DIM);
    assert_eq!(w.len(), 3);
    for (k, d) in dirs.iter().take(3).enumerate() {
        let a = angle_to_span(d, &w);
        eprintln!("principal direction {k}: {a:.3}° from the learned subspace");
        assert!(a < 5.0, "principal direction {k} is {a:.2}° from the learned subspace");
    }
    // Orthonormal rows (the subspace rule's fixed point).
    for i in 0..3 {
        for j in 0..3 {
            let d: f64 = w[i].iter().zip(&w[j]).map(|(x, y)| x * y).sum();
            let want = if i == j { 1.0 } else { 0.0 };
            assert!((d - want).abs() < 0.05, "WWᵀ[{i}][{j}] = {d}");
        }
    }
    let u = rows(&state, "U.w", catalog::GAUSSIAN_DIM);
    let a = angle_to_span(&dirs[0], &u);
    eprintln!("single-neuron Oja: {a:.3}° from the top direction");
    assert!(a < 5.0, "single-neuron Oja is {a:.2}° from the top direction");
}

#[test]
fn bcm_becomes_selective_to_one_pattern() {
    let (mut state, mut engine, p) = trained("stdlib/bcm.circ");
    let protos = catalog::pattern_prototypes();
    let input = p.input.unwrap();
    let readout = p.readout.unwrap();
    state.set_f32(input, &protos);
    engine.run(EntryKind::Eval, &mut state, catalog::PATTERNS, &StepCtx::default());
    let mut resp: Vec<f64> = (0..catalog::PATTERNS).map(|k| state.at(readout, k)).collect();
    resp.sort_by(|a, b| b.partial_cmp(a).unwrap());
    // One pattern drives the neuron; the others barely do.
    assert!(resp[0] > 1.0, "responses {resp:?}");
    assert!(resp[1] < 0.2 * resp[0], "not selective: responses {resp:?}");
}
