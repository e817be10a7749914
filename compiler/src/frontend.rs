//! The front end as one call: load a file (and its imports), parse, resolve, check and
//! classify locality.
//!
//! Input: a path or a source text, and `--set` overrides. Output: a [`Frontend`] holding the
//! sources (for rendering), the circuit when it resolved, every diagnostic, and the locality
//! report. Invariants: never panics on any input text; diagnostics are sorted by position.

use crate::check;
use crate::diag::{Diagnostic, Sources};
use crate::hir::Circuit;
use crate::locality::{self, Report};
use crate::resolve::{self, Override};
use crate::stdlib;
use crate::syntax;
use std::path::{Path, PathBuf};

/// Everything the front end learned about one program.
pub struct Frontend {
    pub sources: Sources,
    pub circuit: Option<Circuit>,
    pub diags: Vec<Diagnostic>,
    pub report: Option<Report>,
}

impl Frontend {
    pub fn has_errors(&self) -> bool {
        self.diags.iter().any(|d| d.is_error())
    }
    /// The circuit, when there were no errors.
    pub fn ok(&self) -> Option<&Circuit> {
        if self.has_errors() {
            None
        } else {
            self.circuit.as_ref()
        }
    }
}

/// Reads and compiles a file. A file that cannot be read becomes a diagnostic-free error
/// string (there is no source to point into).
pub fn load_file(path: &Path, overrides: &[Override]) -> Result<Frontend, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = String::from_utf8(text)
        .map_err(|e| format!("{} is not UTF-8 text (invalid byte at offset {})", path.display(), e.utf8_error().valid_up_to()))?;
    Ok(load_source(&path.to_string_lossy(), &text, overrides))
}

/// Compiles a source text named `name` (imports resolve relative to `name`'s directory).
pub fn load_source(name: &str, text: &str, overrides: &[Override]) -> Frontend {
    let mut sources = Sources::default();
    let root = sources.add(name, text);
    let program = match syntax::parse(root, text) {
        Ok(p) => p,
        Err(d) => return Frontend { sources, circuit: None, diags: vec![d], report: None },
    };
    let mut importer = |importer: &str, import: &str| import_file(importer, import);
    let (circuit, mut diags) = resolve::resolve(&mut sources, root, program, &mut importer, overrides);
    let mut report = None;
    if let Some(c) = &circuit {
        if !diags.iter().any(|d| d.is_error()) {
            diags.extend(check::check(c));
            if !diags.iter().any(|d| d.is_error()) {
                let r = locality::analyze(c);
                diags.extend(locality::claim_diagnostics(c, &r));
                report = Some(r);
            }
        }
    }
    diags.sort_by_key(|d| (d.span.file, d.span.lo));
    Frontend { sources, circuit, diags, report }
}

/// Finds an imported file: relative to the importing file, then in the embedded standard
/// library (`import "rules.circ"` or `import "std/rules.circ"`).
fn import_file(importer: &str, import: &str) -> Result<(String, String), String> {
    if let Some(name) = import.strip_prefix("std/").or(Some(import)) {
        if !import.starts_with('.') && !import.contains("..") {
            if let Some(text) = stdlib::get(name) {
                // A file beside the importer wins over the standard library of the same name.
                let local = sibling(importer, import);
                if !local.exists() {
                    return Ok((format!("<std>/{name}"), text.to_string()));
                }
            }
        }
    }
    if importer.starts_with("<std>/") {
        return Err(format!("no standard library file \"{import}\""));
    }
    let p = sibling(importer, import);
    match std::fs::read_to_string(&p) {
        Ok(t) => Ok((p.to_string_lossy().into_owned(), t)),
        Err(e) => Err(format!("{}: {e}", p.display())),
    }
}

fn sibling(importer: &str, import: &str) -> PathBuf {
    Path::new(importer).parent().unwrap_or(Path::new(".")).join(import)
}
