//! The documentation stays true: every circ code block of `docs/language.md` and
//! `docs/tutorial.md` goes through the compiler.
//!
//! - A block fenced ```` ```circ ```` must check clean (no error, no warning) and, when it has
//!   phases, lower to the loop IR.
//! - A block fenced ```` ```circ,error ```` (or ```` ```circ,warning ````) names the codes it
//!   demonstrates in its first line, `// error: circ::locality::weight_transport` (several codes
//!   may be listed, separated by spaces or commas). It must produce at least one error (warning)
//!   with one of those codes, and no error or warning with any other code. Errors that only
//!   lowering finds count too, as in the UI tests.
//! - A block fenced ```` ```circ file=examples/tutorial/NAME.circ ```` must be that file, byte for
//!   byte; it is compiled under the file's own path, so its relative imports resolve.
//!
//! Other fences (`sh`, `text`, `diff`, ...) are not read.

mod common;

use circ_compiler::diag::{render_plain, Diagnostic, Severity};
use circ_compiler::frontend;
use circ_compiler::pipeline;

const DOCS: &[&str] = &["docs/language.md", "docs/tutorial.md"];

#[derive(Debug, PartialEq)]
enum Kind {
    Clean,
    Error,
    Warning,
}

struct Block {
    doc: &'static str,
    /// 1-based line of the opening fence.
    line: usize,
    kind: Kind,
    /// `file=PATH` in the fence: the block is this file of the repository.
    file: Option<String>,
    text: String,
}

/// The kind and `file=` of a fence's info string, or None for a fence that is not circ.
fn fence(doc: &str, line: usize, info: &str) -> Option<(Kind, Option<String>)> {
    let mut words = info.split_whitespace();
    let kind = match words.next().unwrap_or("") {
        "circ" => Kind::Clean,
        "circ,error" => Kind::Error,
        "circ,warning" => Kind::Warning,
        other => {
            assert!(!other.starts_with("circ"), "{doc}:{line}: unknown fence `{other}`");
            return None;
        }
    };
    Some((kind, words.find_map(|w| w.strip_prefix("file=")).map(str::to_string)))
}

/// The circ blocks of a Markdown text (top-level fences only; the info string decides).
fn blocks(doc: &'static str, md: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut lines = md.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        let Some(info) = line.trim_start().strip_prefix("```") else { continue };
        let kind = fence(doc, i + 1, info);
        let mut text = String::new();
        let mut closed = false;
        for (_, l) in lines.by_ref() {
            if l.trim_start().starts_with("```") {
                closed = true;
                break;
            }
            text.push_str(l);
            text.push('\n');
        }
        assert!(closed, "{doc}:{}: this code block is never closed", i + 1);
        if let Some((kind, file)) = kind {
            out.push(Block { doc, line: i + 1, kind, file, text });
        }
    }
    out
}

/// The codes a failing block promises, from its first line.
fn promised(b: &Block) -> Vec<String> {
    let want = if b.kind == Kind::Error { "// error:" } else { "// warning:" };
    let first = b.text.lines().next().unwrap_or("");
    let codes = first
        .trim()
        .strip_prefix(want)
        .unwrap_or_else(|| panic!("{}:{}: the first line of this block must be `{want} CODE`, found `{first}`", b.doc, b.line));
    let codes: Vec<String> = codes.split([' ', ',']).filter(|c| !c.is_empty()).map(str::to_string).collect();
    assert!(!codes.is_empty(), "{}:{}: name at least one code", b.doc, b.line);
    codes
}

/// Compiles a block: front end, then lowering when the front end is clean.
fn compile(b: &Block) -> (Vec<Diagnostic>, circ_compiler::diag::Sources) {
    let name = match &b.file {
        Some(path) => {
            let file = common::root().join(path);
            let on_disk = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}:{}: {path}: {e}", b.doc, b.line));
            assert!(on_disk == b.text, "{}:{}: this block differs from {path}; copy the file into the block", b.doc, b.line);
            file.to_string_lossy().into_owned()
        }
        None => common::root().join(format!("{}#L{}", b.doc, b.line)).to_string_lossy().into_owned(),
    };
    let fe = frontend::load_source(&name, &b.text, &[]);
    let mut diags = fe.diags.clone();
    if let Some(c) = fe.ok() {
        if !c.phases.is_empty() {
            if let Err(d) = pipeline::lower(c, c.experiment.batch) {
                diags.extend(d);
            }
        }
    }
    (diags, fe.sources)
}

fn check_doc(doc: &'static str) -> usize {
    let md = std::fs::read_to_string(common::root().join(doc)).unwrap_or_else(|e| panic!("{doc}: {e}"));
    let bs = blocks(doc, &md);
    let mut failures = Vec::new();
    for b in &bs {
        let (diags, sources) = compile(b);
        let rendered = || render_plain(&diags, &sources, 100);
        match b.kind {
            Kind::Clean => {
                if !diags.is_empty() {
                    failures.push(format!("{doc}:{}: a ```circ block must check clean:\n{}", b.line, rendered()));
                }
            }
            Kind::Error | Kind::Warning => {
                let codes = promised(b);
                let sev = if b.kind == Kind::Error { Severity::Error } else { Severity::Warning };
                let hit = diags.iter().any(|d| d.severity == sev && codes.iter().any(|c| c == d.code));
                let stray: Vec<&str> = diags.iter().filter(|d| !codes.iter().any(|c| c == d.code)).map(|d| d.code).collect();
                if !hit || !stray.is_empty() {
                    failures.push(format!(
                        "{doc}:{}: expected {} {codes:?}{}; got:\n{}",
                        b.line,
                        if b.kind == Kind::Error { "an error" } else { "a warning" },
                        if stray.is_empty() { String::new() } else { format!(" and nothing else (unexpected: {stray:?})") },
                        rendered()
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} of {} circ blocks in {doc} are wrong:\n\n{}", failures.len(), bs.len(), failures.join("\n"));
    bs.len()
}

#[test]
fn language_reference_blocks_are_true() {
    let n = check_doc(DOCS[0]);
    assert!(n >= 40, "docs/language.md has only {n} circ blocks");
}

#[test]
fn tutorial_blocks_are_true() {
    let n = check_doc(DOCS[1]);
    assert!(n >= 3, "docs/tutorial.md has only {n} circ blocks");
}

/// The tutorial's programs are the files of examples/tutorial/ (so the corpus test trains them).
#[test]
fn tutorial_shows_every_tutorial_example() {
    let md = std::fs::read_to_string(common::root().join(DOCS[1])).unwrap();
    let dir = common::root().join("examples/tutorial");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    assert!(!files.is_empty());
    for f in files {
        let marker = format!("```circ file=examples/tutorial/{f}");
        assert!(md.contains(&marker), "docs/tutorial.md does not show examples/tutorial/{f} (a block fenced `{marker}`)");
    }
}

/// The edits of the tutorial's step 4 fail (and the fix passes) with the codes it shows.
#[test]
fn tutorial_variants_fail_as_shown() {
    let md = std::fs::read_to_string(common::root().join(DOCS[1])).unwrap();
    let text = std::fs::read_to_string(common::root().join("examples/tutorial/moons.circ")).unwrap();
    let edit = |text: &str, from: &str, to: &str| {
        assert!(text.contains(from), "examples/tutorial/moons.circ no longer contains `{from}`");
        text.replace(from, to)
    };
    let errors = |text: &str| -> Vec<&'static str> {
        let fe = frontend::load_source("moons.circ", text, &[]);
        fe.diags.iter().map(|d| d.code).collect()
    };
    // Backprop's error: weight transport.
    assert!(md.contains("+  h.m = W2^T(o.e)"), "the tutorial no longer shows the backprop edit");
    let bp = edit(&text, "  h.m = B(o.e) ", "  h.m = W2^T(o.e) ");
    assert_eq!(errors(&bp), ["circ::locality::weight_transport"]);
    // A neuron claim: the softmax exceeds it; the squared-error gradient fits it.
    let neuron = edit(&text, "locality population", "locality neuron");
    assert_eq!(errors(&neuron), ["circ::locality::exceeds_claim"]);
    let fixed = edit(&neuron, "o.e = softmax(o.a) - y", "o.e = o.a - y");
    assert_eq!(errors(&fixed), Vec::<&str>::new());
}
