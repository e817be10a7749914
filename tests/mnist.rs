//! Trained numbers on the real MNIST (skipped loudly without `CIRC_MNIST_DIR`).

mod common;

use circ_compiler::frontend;
use circ_compiler::pipeline::{self, EngineKind};
use circ_compiler::resolve::parse_override;
use circ_runtime::driver::{self, RunConfig};
use circ_runtime::state::State;

/// Compiles a stdlib program with overrides, trains it, returns the test accuracy.
fn train(file: &str, sets: &[&str], batch: usize, epochs: usize, limit: Option<usize>, shuffle: bool) -> f64 {
    let dir = common::mnist_dir(file).expect("checked by the caller");
    let ov: Vec<_> = sets.iter().map(|s| parse_override(s).unwrap()).collect();
    let fe = frontend::load_file(&common::root().join(file), &ov).unwrap();
    let c = fe.ok().unwrap_or_else(|| panic!("{file} does not check"));
    let p = pipeline::lower(c, batch).unwrap();
    let info = pipeline::run_info(&p, &fe.sources);
    let data = circ_runtime::catalog::load("mnist", Some(&dir), 0).unwrap();
    let mut state = State::new(&p.buffers, batch.max(1000), p.precision, 0);
    let mut engine = pipeline::engine(p, EngineKind::Jit).unwrap();
    let cfg = RunConfig { epochs, batch, eval_batch: 1000, seed: 0, shuffle, limit, loss: pipeline::loss(c), ..RunConfig::default() };
    driver::train(engine.as_mut(), &mut state, &info, Some(&data), &cfg).unwrap().test_acc
}

/// The online workload of the performance issue: one hidden layer of 256 ReLU units, plain
/// SGD at lr 0.01, batch 1, file order, one epoch. A plain-C version gets 94.4%.
#[test]
fn fa_online_one_epoch_reaches_94_percent() {
    if common::mnist_dir("fa_online").is_none() {
        return;
    }
    let acc = train("stdlib/fa.circ", &["depth=1", "hidden=256", "lr=0.01", "momentum=0"], 1, 1, None, false);
    assert!(acc >= 0.94, "FA online accuracy {acc}");
}
