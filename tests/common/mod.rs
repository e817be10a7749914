//! Helpers shared by the integration tests.
#![allow(dead_code)]

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
