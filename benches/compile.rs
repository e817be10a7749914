//! Compile latency of every standard-library circuit: source text to a ready-to-run step
//! (parse, resolve, check, locality, lowering to LIR, Cranelift JIT of every entry), at the
//! batch size of the circuit's experiment block. Workload (e) of the benchmark suite
//! (bench/run.py reads criterion's estimates); run with `cargo bench --bench compile`.

use circ_compiler::{codegen, frontend, pipeline};
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The stdlib programs that are circuits (libraries such as rules.circ have no phases).
fn circuits() -> Vec<(String, PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("stdlib");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("stdlib/ is readable")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "circ"))
        .collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|p| {
            let text = std::fs::read_to_string(&p).ok()?;
            let fe = frontend::load_source(&p.to_string_lossy(), &text, &[]);
            let c = fe.ok()?;
            if c.phases.is_empty() {
                return None;
            }
            let name = p.file_stem()?.to_string_lossy().into_owned();
            Some((name, p, text))
        })
        .collect()
}

/// Source text to compiled entries, as `circ run` does before its first step.
fn compile(path: &Path, text: &str) -> codegen::Jit {
    let fe = frontend::load_source(&path.to_string_lossy(), text, &[]);
    let c = fe.ok().expect("the stdlib checks clean");
    let program = pipeline::lower(c, c.experiment.batch).expect("the stdlib lowers");
    codegen::compile(&program, false).expect("the stdlib compiles")
}

fn bench_compile(cr: &mut Criterion) {
    let mut g = cr.benchmark_group("compile");
    g.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for (name, path, text) in circuits() {
        g.bench_function(&name, |b| b.iter(|| black_box(compile(&path, black_box(&text)))));
    }
    g.finish();
}

criterion_group!(benches, bench_compile);
criterion_main!(benches);
