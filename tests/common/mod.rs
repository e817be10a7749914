//! Helpers shared by the integration tests.
#![allow(dead_code)]

use circ_compiler::lir::Program;
use circ_runtime::state::State;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};

/// The project root (integration tests run in the root package's folder).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every program of the corpus: `stdlib/*.circ` and `examples/**/*.circ`, sorted.
pub fn corpus() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in ["stdlib", "examples"] {
        collect(&root().join(dir), &mut out);
    }
    out.sort();
    out
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|x| x == "circ") {
            out.push(p);
        }
    }
}

/// The MNIST directory from `CIRC_MNIST_DIR`, or None after saying loudly that the test is
/// skipped (a fresh machine has no data; CI always sets it).
pub fn mnist_dir(test: &str) -> Option<PathBuf> {
    match std::env::var_os("CIRC_MNIST_DIR") {
        Some(d) if Path::new(&d).is_dir() => Some(PathBuf::from(d)),
        _ => {
            eprintln!("\n*** {test}: skipped: no MNIST (set CIRC_MNIST_DIR to the folder with the IDX files) ***\n");
            None
        }
    }
}

/// Compiles a program with `--set`-style overrides and trains it on MNIST (seed 0, the JIT,
/// evaluation in batches of 1000): the shared body of the MNIST tests.
pub fn train_mnist(
    file: &str,
    sets: &[&str],
    batch: usize,
    epochs: usize,
    limit: Option<usize>,
    shuffle: bool,
) -> circ_runtime::driver::Outcome {
    use circ_compiler::{frontend, pipeline};
    use circ_runtime::driver::{self, RunConfig};
    let dir = mnist_dir(file).expect("checked by the caller");
    let ov: Vec<_> = sets.iter().map(|s| circ_compiler::resolve::parse_override(s).unwrap()).collect();
    let fe = frontend::load_file(&root().join(file), &ov).unwrap();
    let c = fe.ok().unwrap_or_else(|| panic!("{file} does not check"));
    let p = pipeline::lower(c, batch).unwrap();
    let info = pipeline::run_info(&p, &fe.sources);
    let data = circ_runtime::catalog::load("mnist", Some(&dir), 0).unwrap();
    let mut state = circ_runtime::state::State::new(&p.buffers, batch.max(1000), p.precision, 0);
    let mut engine = pipeline::engine(p, pipeline::EngineKind::Jit).unwrap();
    let cfg = RunConfig { epochs, batch, eval_batch: 1000, seed: 0, shuffle, limit, loss: pipeline::loss(c), ..RunConfig::default() };
    driver::train(engine.as_mut(), &mut state, &info, Some(&data), &cfg).unwrap()
}

/// A short name for a corpus file, usable in snapshot names.
pub fn short_name(p: &Path) -> String {
    let rel = p.strip_prefix(root()).unwrap_or(p);
    rel.to_string_lossy().replace(['/', '\\'], "__").trim_end_matches(".circ").to_string()
}

/// Fills inputs and targets of both states with the same seeded random values (targets
/// one-hot).
pub fn feed(states: [&mut State; 2], p: &Program, nb: usize, rng: &mut ChaCha8Rng) {
    // Inputs like images: most are zero, the rest in [0, 1).
    let xs: Option<(usize, Vec<f32>)> = p
        .input
        .map(|i| (i, (0..nb * p.buffers[i].cols).map(|_| if rng.random::<f32>() < 0.3 { rng.random::<f32>() } else { 0.0 }).collect()));
    let ys: Option<(usize, Vec<f32>)> = p.target.map(|t| {
        let k = p.buffers[t].cols;
        let mut ys = vec![0.0f32; nb * k];
        for b in 0..nb {
            ys[b * k + rng.random_range(0..k)] = 1.0;
        }
        (t, ys)
    });
    for s in states {
        for (b, v) in xs.iter().chain(ys.iter()) {
            s.set_f32(*b, v);
        }
    }
}

/// Programs that reach the JIT's fast paths the corpus may not reach at its sizes
/// (tests/kernels.rs checks them against the interpreter, tests/bounds.rs with bounds checks).
/// A rank-1 update of 2048² synapses: the size at which the pass is split by rows over threads.
pub const BIG_RANK1: &str = r#"
circuit big locality synapse
pop x[2048] { out r }
pop y[2048] { e }
path W: x -> y init uniform(-1, 1) / sqrt(fan_in) plastic
phase fill {
  x.r = rand()
  y.e = rand() - 0.5
}
plasticity {
  W.w += 0.001 * post.e * pre - 0.0001 * w
}
experiment { data = none  steps = 3 }
"#;

/// A rank-1 update with mostly zero pre and post values (zero rows and columns are skipped),
/// a fraction `inf_rate` of the pre values infinite (exp(1000) in f32).
pub fn sparse_rank1(inf_rate: &str) -> String {
    format!(
        r#"
circuit sparse locality neuron
pop x[67] {{ out r }}
pop y[37] {{ e }}
path W: x -> y init uniform(-1, 1) / sqrt(fan_in) plastic
phase fill {{
  x.r = select(rand() < 0.7, 0, rand())
  x.r = select(rand() < {inf_rate}, exp(1000), x.r)
  y.e = select(rand() < 0.5, 0, rand() - 0.5)
}}
plasticity {{
  W.w -= 0.1 * post.e * pre
}}
experiment {{ data = none  steps = 4 }}
"#
    )
}

/// A batch-1 product of mostly zero inputs (the JIT's matrix–vector loop skips them).
pub const SPARSE_MATVEC: &str = r#"
circuit mv locality neuron
pop x[75] { out r }
pop h[37] { a }
path V: x -> h init uniform(-1, 1) fixed
phase fwd {
  x.r = select(rand() < 0.7, 0, rand())
  h.a = V(x)
}
experiment { data = none  steps = 3 }
"#;
