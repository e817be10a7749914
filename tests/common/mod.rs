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

/// A short name for a corpus file, usable in snapshot names.
pub fn short_name(p: &Path) -> String {
    let rel = p.strip_prefix(root()).unwrap_or(p);
    rel.to_string_lossy().replace(['/', '\\'], "__").trim_end_matches(".circ").to_string()
}
