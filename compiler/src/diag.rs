//! Sources, spans and diagnostics shared by every compiler phase.
//!
//! Input: byte spans produced by the parser and carried through every later phase.
//! Output: [`Diagnostic`]s, which render through miette with the right source file.
//! Invariants: a span always points into the file it names; a phase never panics on user
//! input, it pushes a diagnostic and goes on, so one run reports every error it can find.

use std::fmt;
use std::sync::Arc;

/// Index of a file in [`Sources`].
pub type FileId = u16;

/// A byte range in one source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub file: FileId,
    pub lo: u32,
    pub hi: u32,
}

impl Span {
    pub fn new(file: FileId, lo: usize, hi: usize) -> Span {
        Span { file, lo: lo as u32, hi: hi as u32 }
    }
    /// The smallest span covering both (same file; otherwise `self`).
    pub fn to(self, other: Span) -> Span {
        if self.file != other.file {
            return self;
        }
        Span { file: self.file, lo: self.lo.min(other.lo), hi: self.hi.max(other.hi) }
    }
    pub fn len(self) -> usize {
        (self.hi - self.lo) as usize
    }
    pub fn is_empty(self) -> bool {
        self.hi == self.lo
    }
}

/// One loaded source file.
#[derive(Clone, Debug)]
pub struct SourceFile {
    /// The name shown in diagnostics (a path, or `<std>/rules.circ` for embedded files).
    pub name: String,
    pub text: Arc<str>,
}

/// Every file of one compilation, indexed by [`FileId`].
#[derive(Clone, Debug, Default)]
pub struct Sources {
    pub files: Vec<SourceFile>,
}

impl Sources {
    pub fn add(&mut self, name: impl Into<String>, text: impl Into<Arc<str>>) -> FileId {
        self.files.push(SourceFile { name: name.into(), text: text.into() });
        (self.files.len() - 1) as FileId
    }
    pub fn file(&self, id: FileId) -> &SourceFile {
        &self.files[id as usize]
    }
    pub fn text(&self, span: Span) -> &str {
        let t = &self.file(span.file).text;
        t.get(span.lo as usize..span.hi as usize).unwrap_or("")
    }
    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, file: FileId, offset: u32) -> (usize, usize) {
        let text = &self.file(file).text;
        let offset = (offset as usize).min(text.len());
        let before = &text[..floor_char_boundary(text, offset)];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
        (line, col)
    }
    /// `file:line:col` of a span's start.
    pub fn location(&self, span: Span) -> String {
        let (l, c) = self.line_col(span.file, span.lo);
        format!("{}:{}:{}", self.file(span.file).name, l, c)
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// A secondary label: another place that explains the error.
#[derive(Clone, Debug)]
pub struct Label {
    pub span: Span,
    pub text: String,
}

/// A compiler diagnostic: a code (`circ::name::unknown`), a message, a primary span with its
/// label, secondary labels, a help line and free notes.
#[derive(Clone, Debug)]
pub struct Diagnostic {
    pub code: &'static str,
    pub message: String,
    pub span: Span,
    pub label: String,
    pub secondary: Vec<Label>,
    pub help: Option<String>,
    pub notes: Vec<String>,
    pub severity: Severity,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

impl Diagnostic {
    pub fn error(code: &'static str, span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            code,
            message: message.into(),
            span,
            label: String::new(),
            secondary: Vec::new(),
            help: None,
            notes: Vec::new(),
            severity: Severity::Error,
        }
    }
    pub fn warning(code: &'static str, span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic { severity: Severity::Warning, ..Diagnostic::error(code, span, message) }
    }
    pub fn label(mut self, text: impl Into<String>) -> Self {
        self.label = text.into();
        self
    }
    pub fn with(mut self, span: Span, text: impl Into<String>) -> Self {
        self.secondary.push(Label { span, text: text.into() });
        self
    }
    pub fn help(mut self, text: impl Into<String>) -> Self {
        self.help = Some(text.into());
        self
    }
    pub fn note(mut self, text: impl Into<String>) -> Self {
        self.notes.push(text.into());
        self
    }
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// How many diagnostics of one code a compilation reports; one mistake repeated by a family
/// or a loop (`depth = 65536` with a duplicate declaration) would otherwise print thousands.
pub const MAX_PER_CODE: usize = 20;

/// Keeps the first [`MAX_PER_CODE`] diagnostics of each code (in order) and notes on the last
/// one kept how many more there were.
pub fn cap_repeats(diags: Vec<Diagnostic>) -> Vec<Diagnostic> {
    let mut count: std::collections::HashMap<&'static str, usize> = std::collections::HashMap::new();
    for d in &diags {
        *count.entry(d.code).or_default() += 1;
    }
    let mut seen: std::collections::HashMap<&'static str, usize> = std::collections::HashMap::new();
    let mut out = Vec::with_capacity(diags.len().min(count.len() * MAX_PER_CODE));
    for mut d in diags {
        let n = seen.entry(d.code).or_default();
        *n += 1;
        if *n > MAX_PER_CODE {
            continue;
        }
        let total = count[d.code];
        if *n == MAX_PER_CODE && total > MAX_PER_CODE {
            d.notes.push(format!("{} more `{}` diagnostics are not shown", total - MAX_PER_CODE, d.code));
        }
        out.push(d);
    }
    out
}

/// A diagnostic bound to its sources, ready for miette to render.
pub struct Rendered<'a> {
    pub diag: &'a Diagnostic,
    pub sources: &'a Sources,
    source: CharColumns,
}

impl<'a> Rendered<'a> {
    pub fn new(diag: &'a Diagnostic, sources: &'a Sources) -> Self {
        let f = sources.file(diag.span.file);
        Rendered { diag, sources, source: CharColumns { name: f.name.clone(), text: f.text.clone() } }
    }
}

/// One file as miette reads it, with columns counted in characters. miette's own `str`
/// source counts bytes, so after a multi-byte character (`ᵀ`) its `[file:line:col]` header
/// would disagree with [`Sources::line_col`], which `circ check --json` and the tests use.
struct CharColumns {
    name: String,
    text: Arc<str>,
}

impl miette::SourceCode for CharColumns {
    fn read_span<'a>(
        &'a self,
        span: &miette::SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn miette::SpanContents<'a> + 'a>, miette::MietteError> {
        let inner = self.text.as_ref().read_span(span, context_lines_before, context_lines_after)?;
        // miette reports a column only when it reads no lines before the span (the header's
        // read); otherwise the contents start at a line and the column is 0 either way.
        let column = if context_lines_before == 0 {
            let start = floor_char_boundary(&self.text, span.offset().min(self.text.len()));
            let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
            self.text[line_start..start].chars().count()
        } else {
            inner.column()
        };
        Ok(Box::new(miette::MietteSpanContents::new_named(
            self.name.clone(),
            inner.data(),
            *inner.span(),
            inner.line(),
            column,
            inner.line_count(),
        )))
    }
}

impl fmt::Debug for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.diag.message)
    }
}
impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.diag.message)
    }
}
impl std::error::Error for Rendered<'_> {}

impl miette::Diagnostic for Rendered<'_> {
    fn code<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        Some(Box::new(self.diag.code))
    }
    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.diag.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }
    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        let mut parts: Vec<String> = self.diag.help.iter().cloned().collect();
        // Labels in another file cannot be drawn on this file's snippet: say where they are.
        for l in &self.diag.secondary {
            if l.span.file != self.diag.span.file {
                parts.push(format!("{} ({})", l.text, self.sources.location(l.span)));
            }
        }
        parts.extend(self.diag.notes.iter().cloned());
        if parts.is_empty() {
            None
        } else {
            Some(Box::new(parts.join("\n")))
        }
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&self.source)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        let d = self.diag;
        let mut labels = vec![miette::LabeledSpan::new_primary_with_span(
            (!d.label.is_empty()).then(|| d.label.clone()),
            (d.span.lo as usize, d.span.len()),
        )];
        for l in &d.secondary {
            if l.span.file == d.span.file {
                labels.push(miette::LabeledSpan::new_with_span(Some(l.text.clone()), (l.span.lo as usize, l.span.len())));
            }
        }
        Some(Box::new(labels.into_iter()))
    }
}

/// Renders diagnostics as plain text (no colour, fixed width): what tests snapshot and what the
/// CLI prints when stderr is not a terminal.
pub fn render_plain(diags: &[Diagnostic], sources: &Sources, width: usize) -> String {
    let handler = miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor()).with_width(width).with_links(false);
    let mut out = String::new();
    for d in diags {
        let r = Rendered::new(d, sources);
        let _ = handler.render_report(&mut out, &r);
        out.push('\n');
    }
    out
}

/// Renders with colour when `color` is set (terminal output).
pub fn render(diags: &[Diagnostic], sources: &Sources, color: bool) -> String {
    if !color {
        return render_plain(diags, sources, 100);
    }
    let handler = miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode()).with_width(100);
    let mut out = String::new();
    for d in diags {
        let r = Rendered::new(d, sources);
        let _ = handler.render_report(&mut out, &r);
        out.push('\n');
    }
    out
}

/// Names up to this many characters are compared by edit distance in [`suggest`].
const SHORT_NAME: usize = 6;

/// "did you mean" helper: the closest candidate, if close enough.
///
/// Short names are compared by optimal-string-alignment distance (one insertion, deletion,
/// substitution or swap of neighbours): Jaro-Winkler rewards a shared prefix, so it misses a
/// swap at the start of a short name (`sdg` for `sgd`) yet accepts unrelated short names that
/// share a letter. Longer names, where a prefix carries more meaning, use Jaro-Winkler. Among
/// close candidates the fewest edits win, then the higher similarity.
pub fn suggest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut best: Option<(usize, f64, &str)> = None;
    for c in candidates {
        if c == name {
            continue;
        }
        let longest = name.chars().count().max(c.chars().count());
        let edits = strsim::osa_distance(name, c);
        let similarity = strsim::jaro_winkler(name, c);
        // One edit to a one-letter name could reach any other one-letter name: never close.
        let close = if longest <= SHORT_NAME { edits <= 1 && longest >= 2 } else { similarity > 0.8 };
        if close && best.is_none_or(|(e, s, _)| (edits, -similarity) < (e, -s)) {
            best = Some((edits, similarity, c));
        }
    }
    best.map(|(_, _, c)| c.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mistake_repeated_by_a_family_is_reported_twenty_times() {
        // 5001 duplicate declarations (members and the family; the fuzzer's case had 131072: printing them took seconds).
        let text = "circuit c\ninput x[2]\nfor l in 0..5000 {\n  pop h[l][2] { a }\n  pop h[l][2] { a }\n}\n";
        let fe = crate::frontend::load_source("dup.circ", text, &[]);
        let dups: Vec<&Diagnostic> = fe.diags.iter().filter(|d| d.code == "circ::name::duplicate").collect();
        assert_eq!(dups.len(), MAX_PER_CODE);
        assert_eq!(dups[MAX_PER_CODE - 1].notes, ["4981 more `circ::name::duplicate` diagnostics are not shown"]);
        assert!(dups[..MAX_PER_CODE - 1].iter().all(|d| d.notes.is_empty()));
    }

    #[test]
    fn suggests_swapped_letters_in_short_names() {
        assert_eq!(suggest("sdg", ["sgd", "adam"]).as_deref(), Some("sgd"));
        assert_eq!(suggest("sgdd", ["sgd", "adam"]).as_deref(), Some("sgd"));
        assert_eq!(suggest("rr", ["a", "r"]).as_deref(), Some("r"));
        assert_eq!(suggest("hiden", ["hidden", "depth"]).as_deref(), Some("hidden"));
        assert_eq!(suggest("sigmod", ["sigmoid", "sign"]).as_deref(), Some("sigmoid"));
    }

    #[test]
    fn does_not_suggest_unrelated_names() {
        assert_eq!(suggest("x", ["y", "h"]), None);
        assert_eq!(suggest("gain", ["h", "x", "W", "lr"]), None);
        assert_eq!(suggest("abc", ["xyz"]), None);
    }

    #[test]
    fn columns_count_characters() {
        let mut s = Sources::default();
        let f = s.add("t", "a = Wᵀ(e) * q\n");
        let q = "a = Wᵀ(e) * ".len() as u32;
        assert_eq!(s.line_col(f, q), (1, 13));
        let d = Diagnostic::error("circ::test", Span::new(f, q as usize, q as usize + 1), "m").label("l").help("h");
        let out = render_plain(&[d], &s, 80);
        assert!(out.contains("[t:1:13]"), "{out}");
    }
}
