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
