//! UI tests: every program in `tests/ui/` is wrong on purpose. Each states the diagnostics it
//! must produce in `// expect: CODE at LINE:COL` lines (one per diagnostic, errors and
//! warnings alike); the test checks exactly that set, then snapshots the rendered report
//! (no colour, width 80) with insta.

use circ_compiler::diag::render_plain;
use circ_compiler::frontend;
use std::collections::BTreeSet;
use std::path::Path;

/// The diagnostics a file declares it must produce: (code, line, column).
fn expectations(text: &str) -> BTreeSet<(String, usize, usize)> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("// expect:"))
        .map(|e| {
            let (code, pos) =
                e.trim().split_once(" at ").unwrap_or_else(|| panic!("bad expectation `{e}`: write `// expect: CODE at LINE:COL`"));
            let (line, col) = pos.trim().split_once(':').expect("LINE:COL");
            (code.trim().to_string(), line.parse().expect("line"), col.parse().expect("column"))
        })
        .collect()
}

/// Front end, then lowering for programs that pass it (some errors only lowering finds).
fn diagnose(path: &Path, text: &str) -> (Vec<circ_compiler::diag::Diagnostic>, circ_compiler::diag::Sources) {
    let name = format!("ui/{}", path.file_name().unwrap().to_string_lossy());
    let fe = frontend::load_source(&name, text, &[]);
    let mut diags = fe.diags.clone();
    if let Some(c) = fe.ok() {
        if let Err(d) = circ_compiler::pipeline::lower(c, c.experiment.batch) {
            diags.extend(d);
        }
    }
    (diags, fe.sources)
}

#[test]
fn ui() {
    insta::glob!("ui/*.circ", |path| {
        let text = std::fs::read_to_string(path).unwrap();
        let want = expectations(&text);
        assert!(!want.is_empty(), "{}: a UI test must expect at least one diagnostic", path.display());
        let (diags, sources) = diagnose(path, &text);
        let got: BTreeSet<(String, usize, usize)> = diags
            .iter()
            .map(|d| {
                let (l, c) = sources.line_col(d.span.file, d.span.lo);
                (d.code.to_string(), l, c)
            })
            .collect();
        let rendered = render_plain(&diags, &sources, 80);
        assert_eq!(got, want, "{}: diagnostics differ from the expectations\n{rendered}", path.display());
        insta::assert_snapshot!(rendered);
    });
}
