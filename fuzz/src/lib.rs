//! Shared code of the fuzz targets: the compile path every target drives, the token-level
//! mutator of `mutate_stdlib`, and the circuit generator and engine comparison of
//! `differential`.

pub mod differential;
pub mod gen;
pub mod mutate;

use circ_compiler::diag::render_plain;
use circ_compiler::frontend;

/// Where the source is said to live: the tutorial examples' folder, so that their relative
/// `import "my_rules.circ"` resolves (every other import is the embedded standard library).
pub fn source_name() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/tutorial/fuzz.circ").to_string()
}

/// The seed corpus of `mutate_stdlib`: every `.circ` file under stdlib/ and examples/, copied
/// to `corpus/mutate_stdlib/seed_<path with / as _>` (e.g. `seed_examples_tutorial_mnist.circ`)
/// when that directory holds no `seed_*` file yet. `corpus/` is not in git (fuzz/.gitignore):
/// the target calls this at start, before libFuzzer reads the corpus, so a fresh checkout needs
/// no setup. Returns how many seeds it wrote.
pub fn ensure_seed_corpus() -> usize {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/mutate_stdlib");
    let has_seeds =
        std::fs::read_dir(&dir).map(|rd| rd.flatten().any(|e| e.file_name().to_string_lossy().starts_with("seed_"))).unwrap_or(false);
    if has_seeds || std::fs::create_dir_all(&dir).is_err() {
        return 0;
    }
    let mut written = 0;
    let mut todo = vec![root.join("stdlib"), root.join("examples")];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "circ") {
                let Ok(rel) = p.strip_prefix(&root) else { continue };
                let name = format!("seed_{}", rel.to_string_lossy().replace(['/', '\\'], "_"));
                if std::fs::copy(&p, dir.join(name)).is_ok() {
                    written += 1;
                }
            }
        }
    }
    written
}

/// Parse, resolve, check and classify `text`; render its diagnostics (and the locality report);
/// when it checks clean, lower it for batch 1 and validate the loop IR. Panics only on a bug:
/// lowering that produces LIR which fails its own validation.
pub fn compile(name: &str, text: &str) {
    let fe = frontend::load_source(name, text, &[]);
    // Rendering is what the CLI does with every diagnostic; it must survive any span.
    let _ = render_plain(&fe.diags, &fe.sources, 80);
    if let (Some(c), Some(r)) = (fe.ok(), fe.report.as_ref()) {
        let _ = circ_compiler::locality::render_report(c, r, &fe.sources);
        if let Ok(p) = circ_compiler::pipeline::lower(c, 1) {
            if let Err(e) = p.validate() {
                panic!("lowering produced invalid LIR: {e}");
            }
        }
    }
}
