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
use crate::resolve::{self, ImportError, Override};
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
    // The file named on the command line may be a pipe (`circ check <(gen)`); it is read up to
    // the size bound all the same.
    let text = read_bounded(path, true).map_err(|e| e.to_string())?;
    Ok(load_source(&path.to_string_lossy(), &text, overrides))
}

/// The largest source file the compiler reads (the root or an import).
pub const MAX_SOURCE_BYTES: u64 = 8 << 20;

/// Reads a source file: a regular file of at most [`MAX_SOURCE_BYTES`] of UTF-8. Anything else
/// is refused before reading, so an import of `/dev/zero` cannot exhaust memory and one of
/// `/dev/stdin` cannot block.
pub fn read_source(path: &Path) -> Result<String, ImportError> {
    read_bounded(path, false)
}

fn read_bounded(path: &Path, any_kind: bool) -> Result<String, ImportError> {
    use std::io::Read;
    let unreadable = |why: String| ImportError::Unreadable(format!("{}: {why}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ImportError::NotFound(format!("{}: {e}", path.display())),
        _ => unreadable(e.to_string()),
    })?;
    if meta.is_dir() || (!any_kind && !meta.is_file()) {
        return Err(unreadable(format!("not a regular file ({})", file_kind(&meta.file_type()))));
    }
    if meta.len() > MAX_SOURCE_BYTES {
        return Err(unreadable(format!("{} bytes, more than the {} MiB a source file may have", meta.len(), MAX_SOURCE_BYTES >> 20)));
    }
    // A regular file can still grow while it is read (or report size 0, like files in /proc).
    let mut bytes = Vec::new();
    std::fs::File::open(path).and_then(|f| f.take(MAX_SOURCE_BYTES + 1).read_to_end(&mut bytes)).map_err(|e| unreadable(e.to_string()))?;
    if bytes.len() as u64 > MAX_SOURCE_BYTES {
        return Err(unreadable(format!("more than the {} MiB a source file may have", MAX_SOURCE_BYTES >> 20)));
    }
    String::from_utf8(bytes).map_err(|e| unreadable(format!("not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to())))
}

fn file_kind(t: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_fifo() {
            return "a pipe";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else {
        "a special file"
    }
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
    let diags = crate::diag::cap_repeats(diags);
    Frontend { sources, circuit, diags, report }
}

/// Finds an imported file: relative to the importing file, then in the embedded standard
/// library (`import "rules.circ"` or `import "std/rules.circ"`).
fn import_file(importer: &str, import: &str) -> Result<(String, String), ImportError> {
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
        return Err(ImportError::NotFound(format!("no standard library file \"{import}\"")));
    }
    let p = sibling(importer, import);
    let text = read_source(&p)?;
    Ok((p.to_string_lossy().into_owned(), text))
}

fn sibling(importer: &str, import: &str) -> PathBuf {
    Path::new(importer).parent().unwrap_or(Path::new(".")).join(import)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn sources_are_read_within_bounds() {
        // An import must be a regular file: refused before reading.
        assert!(matches!(read_source(Path::new("/dev/zero")), Err(ImportError::Unreadable(m)) if m.contains("character device")));
        assert!(matches!(read_source(Path::new("/nonexistent/x.circ")), Err(ImportError::NotFound(_))));
        // The root file may be a device or a pipe, read up to the bound.
        let e = load_file(Path::new("/dev/zero"), &[]).err().expect("refused");
        assert!(e.contains("more than the 8 MiB"), "{e}");
        let e = load_file(Path::new("/"), &[]).err().expect("refused");
        assert!(e.contains("a directory"), "{e}");
    }
}
