//! `circ fmt`: the canonical layout of a `.circ` file.
//!
//! Input: the text of one file. Output: the same program in canonical layout, or the parse
//! diagnostic of the text (then nothing is formatted).
//!
//! Invariants:
//! - Meaning is kept exactly: `parse(format(x))` equals `parse(x)` up to spans. Every call
//!   verifies this (and that the comments are kept) by re-parsing its output; a formatter bug
//!   therefore ends in a `circ::fmt::internal` diagnostic, never in a changed program.
//! - Every comment (`// ...` and `/* ... */`) is kept, in order, with its text (trailing
//!   whitespace removed).
//! - Idempotent: `format(format(x)) == format(x)` (tested on the whole corpus).
//! - Never panics. Expressions are printed with an explicit stack (operator chains may be
//!   thousands deep); the AST comparison uses `Debug`, which recurses as deep as the AST.
//!
//! Approach: print the AST, and put the comments back by byte position. The AST keeps every
//! bit of meaning and a span on every node, so printing it is a total, obvious function whose
//! result can be checked by a structural comparison. pest's tree would keep the tokens, but
//! neither the punctuation (`=`, `->`, `{`) nor the comments (implicit rules), so a tree
//! printer would have to re-lex the gaps anyway. Comments are found by a small scan that skips
//! strings, and are emitted in source order, interleaved with the nodes (items, statements,
//! declarations, experiment entries, closing braces):
//! - a comment alone on its line stays on its own line, before the next node;
//! - a comment after code on its line trails the output line printed last: at its original
//!   column (relative to the indentation) if it was written after that line's code and the
//!   column is right of the code, so hand-aligned comments stay aligned; else two spaces after
//!   the code;
//! - a comment inside a node printed on one line (inside an expression, say) moves to its
//!   own line before that node; one inside a block's header trails the header.
//!
//! The layout choices the AST cannot express come from the source text, and are kept: a blank
//! line between two nodes (runs collapse to one); redundant parentheses; a line break inside an
//! expression, before a binary operator or after a call's comma (continuation lines get 4 more
//! spaces); the padding of hand-aligned declarations (`input  x[2]`, `pop    h[n]`,
//! `path B:  o -> h`, `W.w  += ...`), and only there; a block written on one line, where it is
//! short by construction (a population's variables, a pathway's synapse state, an experiment,
//! a `when`/`if`/`for` with one simple statement per branch, no comment); an `else` block
//! holding only comments. Everything else is canonical: 2-space indentation, one statement per
//! line, spaces around binary operators (none around arithmetic inside `[...]` and range
//! bounds: `h[l-1]`, `1..depth-1`), a space after commas, `{` on the line of its header, no
//! `;`, `&&`/`||`/`!`/`^T` for `and`/`or`/`not`/`ᵀ`, no trailing whitespace, one final
//! newline. Long lines are not wrapped.

use crate::ast::*;
use crate::diag::{Diagnostic, FileId, Span};
use crate::syntax;

/// Formats one file: the canonical text, or the parse diagnostic of `text`.
pub fn format(file: FileId, text: &str) -> Result<String, Diagnostic> {
    let prog = syntax::parse(file, text)?;
    let out = Printer::new(text).program(&prog);
    let internal = |what: &str| {
        Diagnostic::error("circ::fmt::internal", Span::new(file, 0, 0), format!("circ fmt would {what}; nothing was formatted"))
            .label("in this file")
            .help("this is a bug in circ fmt: please report it with the file")
    };
    match syntax::parse(file, &out) {
        Ok(again) if ast_shape(&again) == ast_shape(&prog) => {}
        _ => return Err(internal("change the meaning of this program")),
    }
    if comment_texts(&out) != comment_texts(text) {
        return Err(internal("lose or reorder a comment of this program"));
    }
    Ok(out)
}

/// The AST without its spans: `Debug` with every `Span { .. }` cut out. Two programs with the
/// same shape mean the same (the spans are only positions).
pub fn ast_shape(p: &Program) -> String {
    let dump = format!("{p:?}");
    let mut out = String::with_capacity(dump.len());
    let mut rest = dump.as_str();
    // Debug writes strings quoted with `\"` escaped, so a `"` toggles "inside a string" and
    // `Span {` outside strings is always a span (its fields hold no braces).
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('"') {
            let end = string_end(r);
            out.push('"');
            out.push_str(&r[..end]);
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix("Span {") {
            rest = r.find('}').map_or("", |i| &r[i + 1..]);
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// The byte length of a Debug string body up to and including its closing quote.
fn string_end(s: &str) -> usize {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// The texts of every comment of `text`, in order, trailing whitespace of each line removed.
pub fn comment_texts(text: &str) -> Vec<String> {
    scan_comments(text).into_iter().map(|c| c.text).collect()
}

/// One comment of the source.
#[derive(Clone, Debug)]
struct Comment {
    lo: usize,
    hi: usize,
    /// The text, each line's trailing whitespace removed.
    text: String,
    /// Only whitespace precedes it on its line.
    own_line: bool,
    /// A `//` comment (nothing may follow it on its line).
    line: bool,
    /// Its column (in characters) relative to the first non-blank character of its line.
    rel_col: usize,
}

/// Finds the comments of `text` as the grammar does (`//` to the end of the line, `/* */`
/// not nested), skipping strings (which cannot span lines). Total on any input.
fn scan_comments(text: &str) -> Vec<Comment> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' && b[i] != b'\n' {
                    i += 1;
                }
                i += 1;
            }
            b'/' if matches!(b.get(i + 1), Some(b'/' | b'*')) => {
                let lo = i;
                let line = b[i + 1] == b'/';
                if line {
                    while i < b.len() && b[i] != b'\n' {
                        i += 1;
                    }
                } else {
                    i += 2;
                    while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                        i += 1;
                    }
                    i = (i + 2).min(b.len());
                }
                let raw = text.get(lo..i).unwrap_or("");
                let body: Vec<&str> = raw.split('\n').map(str::trim_end).collect();
                let start = text[..lo].rfind('\n').map_or(0, |n| n + 1);
                let before = &text[start..lo];
                let indent = before.chars().take_while(|c| c.is_whitespace()).count();
                out.push(Comment {
                    lo,
                    hi: i,
                    text: body.join("\n"),
                    own_line: before.trim().is_empty(),
                    line,
                    rel_col: before.chars().count() - indent,
                });
            }
            _ => i += 1,
        }
    }
    out
}

/// One output line.
#[derive(Default)]
struct Line {
    depth: usize,
    /// The code (or, for a comment on its own line, the comment). Empty: a blank line.
    code: String,
    /// Comments after the code: text and wanted column relative to the indentation.
    trail: Vec<(String, usize)>,
    /// Ends with `{`: no blank line may follow.
    opens: bool,
    /// The last trailing comment is a `//` comment: nothing may follow on this line.
    closed: bool,
    /// A comment on its own line (printed as written, even over several lines).
    comment: bool,
    /// The source position of the line's first token.
    src: usize,
    /// Comments inside the line's code moved before it: its layout is not the source's.
    hoisted: bool,
}

struct Printer<'a> {
    src: &'a str,
    comments: Vec<Comment>,
    /// The next comment not yet printed.
    next: usize,
    lines: Vec<Line>,
    depth: usize,
    /// Source position just after the last node or comment printed.
    last: usize,
}

/// The simple statements a one-line block may hold.
fn is_simple(s: &Stmt) -> bool {
    matches!(s.kind, StmtKind::Assign { .. } | StmtKind::Ode { .. } | StmtKind::Apply { .. })
}

impl<'a> Printer<'a> {
    fn new(src: &'a str) -> Self {
        Printer { src, comments: scan_comments(src), next: 0, lines: Vec::new(), depth: 0, last: 0 }
    }

    // -----------------------------------------------------------------------------------------
    // Lines and comments

    /// Whether a blank line separates source positions `a` and `b` (comments there ignored).
    fn blank_between(&self, a: usize, b: usize) -> bool {
        let Some(gap) = self.src.get(a..b) else { return false };
        let parts: Vec<&str> = gap.split('\n').collect();
        parts.len() > 2 && parts[1..parts.len() - 1].iter().any(|p| p.trim().is_empty())
    }

    /// Starts a new output line for something at source position `pos`.
    fn push(&mut self, pos: usize, code: String, opens: bool) {
        let blank = self.blank_between(self.last, pos);
        if let Some(prev) = self.lines.last() {
            if blank && !prev.opens && !prev.code.is_empty() {
                self.lines.push(Line { depth: self.depth, ..Line::default() });
            }
        }
        self.lines.push(Line {
            depth: self.depth,
            code,
            trail: Vec::new(),
            opens,
            closed: false,
            comment: false,
            src: pos,
            hoisted: false,
        });
    }

    fn comment_line(&mut self, c: Comment) {
        let line = c.line;
        self.push(c.lo, c.text, false);
        if let Some(l) = self.lines.last_mut() {
            l.closed = line;
            l.comment = true;
        }
        self.last = c.hi;
    }

    /// Prints the comments before source position `pos`: after code on their line, they trail
    /// the last output line; otherwise (or when that line cannot take them) each gets a line.
    fn comments_before(&mut self, pos: usize) {
        while let Some(c) = self.comments.get(self.next).filter(|c| c.lo < pos).cloned() {
            self.next += 1;
            let src = self.src;
            match self.lines.last_mut() {
                Some(l) if !c.own_line && !l.closed && !l.code.is_empty() => {
                    // The comment's column is kept only where it was written after this very
                    // line's code (and so may be aligned with its neighbours').
                    let line_start = src[..l.src.min(c.lo)].rfind('\n').map_or(0, |n| n + 1);
                    let same = !src[l.src.min(c.lo)..c.lo].contains('\n')
                        && src[line_start..l.src.min(c.lo)].trim().is_empty()
                        && !l.code.contains('\n')
                        && !l.hoisted;
                    l.trail.push((c.text, if same { c.rel_col } else { 0 }));
                    l.closed = c.line;
                    self.last = c.hi;
                }
                _ => self.comment_line(c),
            }
        }
    }

    /// Whether a comment starts inside `[lo, hi)`.
    fn has_comment(&self, lo: usize, hi: usize) -> bool {
        self.comments.iter().any(|c| c.lo >= lo && c.lo < hi)
    }

    /// Whether `[lo, hi)` lies on one source line.
    fn one_line(&self, lo: usize, hi: usize) -> bool {
        self.src.get(lo..hi).is_some_and(|s| !s.contains('\n'))
    }

    /// A node printed as one line: comments inside it go on their own lines before it.
    fn leaf(&mut self, span: Span, code: String) {
        let (lo, hi) = (span.lo as usize, span.hi as usize);
        self.comments_before(lo);
        let mut hoisted = false;
        while let Some(c) = self.comments.get(self.next).filter(|c| c.lo < hi).cloned() {
            self.next += 1;
            self.comment_line(c);
            hoisted = true;
        }
        self.push(lo, code, false);
        if let Some(l) = self.lines.last_mut() {
            l.hoisted = hoisted;
        }
        self.last = self.last.max(hi);
    }

    /// The header line of a block (`phase f {`); comments inside the header trail it.
    fn open(&mut self, lo: usize, code: String) {
        self.comments_before(lo);
        self.push(lo, code + " {", true);
        self.last = lo;
        self.depth += 1;
    }

    /// The closing `}` of a block whose text ends before `end`; `suffix` follows it (` else {`).
    fn close(&mut self, end: usize, suffix: &str) {
        self.comments_before(end);
        self.depth = self.depth.saturating_sub(1);
        let code = format!("}}{suffix}");
        let opens = !suffix.is_empty();
        match self.lines.last_mut() {
            // An empty block: `{}` on its header line.
            Some(l) if l.opens && l.trail.is_empty() && suffix.is_empty() => {
                l.code.push('}');
                l.opens = false;
            }
            _ => {
                let src = self.brace_after(self.last.min(end));
                self.lines.push(Line {
                    depth: self.depth,
                    code,
                    trail: Vec::new(),
                    opens,
                    closed: false,
                    comment: false,
                    src,
                    hoisted: false,
                })
            }
        }
        self.last = self.last.max(end);
    }

    /// Closes a block without an else branch, ending before `end`. An `else` written empty (or
    /// holding only comments) is kept, so that its comments stay in it.
    fn close_empty_else(&mut self, then_end: usize, end: usize) {
        let brace = self.brace_after(then_end);
        let mut i = brace + 1;
        while let Some(r) = self.src.get(i..end) {
            let t = r.trim_start();
            if let Some(c) = self.comments.iter().find(|c| c.lo == i + (r.len() - t.len())) {
                i = c.hi;
            } else {
                i += r.len() - t.len();
                break;
            }
        }
        let is_else = self
            .src
            .get(i..end)
            .is_some_and(|r| r.starts_with("else") && !r[4..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_'));
        if is_else {
            self.close(brace, " else {");
            self.depth += 1;
        }
        self.close(end, "");
    }

    /// The position of the first `}` at or after `from` outside comments and strings.
    fn brace_after(&self, from: usize) -> usize {
        let b = self.src.as_bytes();
        let mut i = from;
        while i < b.len() {
            match b[i] {
                b'}' => return i,
                b'"' => {
                    i += 1;
                    while i < b.len() && b[i] != b'"' && b[i] != b'\n' {
                        i += 1;
                    }
                }
                b'/' if b.get(i + 1) == Some(&b'/') => {
                    while i < b.len() && b[i] != b'\n' {
                        i += 1;
                    }
                }
                b'/' if b.get(i + 1) == Some(&b'*') => {
                    i += 2;
                    while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                        i += 1;
                    }
                    i += 1;
                }
                _ => {}
            }
            i += 1;
        }
        b.len()
    }

    fn render(self) -> String {
        let mut out = String::new();
        let mut lines = self.lines;
        while lines.last().is_some_and(|l| l.code.is_empty()) {
            lines.pop();
        }
        for l in &lines {
            if l.code.is_empty() {
                out.push('\n');
                continue;
            }
            let indent = 2 * l.depth;
            // A comment's own lines stay as written; the continuation lines of a broken
            // expression are indented 4 more spaces.
            let parts: Vec<&str> = if l.comment { vec![l.code.as_str()] } else { l.code.split('\n').collect() };
            let mut s = String::new();
            for (k, part) in parts.iter().enumerate() {
                if k > 0 {
                    out.push_str(s.trim_end());
                    out.push('\n');
                }
                let ind = if k == 0 { indent } else { indent + 4 };
                s = format!("{:ind$}{part}", "");
            }
            let ind = if parts.len() > 1 { indent + 4 } else { indent };
            for (i, (text, rel)) in l.trail.iter().enumerate() {
                let width = s.rsplit('\n').next().unwrap_or("").chars().count();
                let col = if i == 0 { (ind + rel).max(width + 2) } else { width + 1 };
                s.push_str(&" ".repeat(col - width));
                s.push_str(text);
            }
            out.push_str(s.trim_end());
            out.push('\n');
        }
        out
    }

    // -----------------------------------------------------------------------------------------
    // Items

    fn program(mut self, p: &Program) -> String {
        if let Some(c) = &p.circuit {
            let mut s = format!("circuit {}", c.name.name);
            for (i, t) in c.tiers.iter().enumerate() {
                s.push_str(if i == 0 { " locality " } else { " + " });
                s.push_str(&t.name);
            }
            self.leaf(c.span, s);
        }
        self.items(&p.items);
        self.comments_before(usize::MAX);
        self.render()
    }

    fn items(&mut self, items: &[Item]) {
        for it in items {
            self.item(it);
        }
    }

    fn item(&mut self, it: &Item) {
        let span = it.span();
        match it {
            Item::Precision { value, .. } => self.leaf(span, format!("precision {}", value.name)),
            Item::Import { path, .. } => self.leaf(span, format!("import \"{path}\"")),
            Item::Param { name, ty, value, .. } => {
                let ty = ty.as_ref().map(|t| format!(": {}", t.name)).unwrap_or_default();
                self.leaf(span, format!("param {}{ty} = {}", name.name, self.expr(value)));
            }
            Item::Meta { name, value, .. } => self.leaf(span, format!("meta {} = {}", name.name, self.expr(value))),
            Item::Signal { name, state, init, .. } => {
                let state = if *state { "state " } else { "" };
                let init = init.as_ref().map(|e| format!(" = {}", self.expr(e))).unwrap_or_default();
                self.leaf(span, format!("signal {state}{}{init}", name.name));
            }
            Item::Input { head, .. } => {
                let pad = self.pad(span.lo as usize + "input".len(), head.name.span.lo as usize);
                self.leaf(span, format!("input{pad}{}", self.head(head)))
            }
            Item::Target { head, root, .. } => {
                let pad = self.pad(span.lo as usize + "target".len(), head.name.span.lo as usize);
                self.leaf(span, format!("target{pad}{} at {}", self.head(head), self.entity(root)))
            }
            Item::Pop { head, vars, .. } => {
                let pad = self.pad(span.lo as usize + "pop".len(), head.name.span.lo as usize);
                let header = format!("pop{pad}{}", self.head(head));
                let decls: Vec<(Span, String)> = vars.iter().map(|v| (v.span, self.var(v))).collect();
                self.decl_list(span, header, &decls);
            }
            Item::Path(p) => {
                let mut header = format!("path {}", p.name.name);
                if let Some(i) = &p.index {
                    header += &format!("[{}]", self.compact(i));
                }
                // Hand-aligned tables of pathways keep their padding (see `pad`).
                let (pre, post) = (p.pre.span.lo as usize, p.post.span.lo as usize);
                let (pre_end, post_end) = (p.pre.span.hi as usize, p.post.span.hi as usize);
                let colon =
                    self.src.get(p.name.span.hi as usize..pre).and_then(|g| g.rfind(':')).map_or(pre, |i| p.name.span.hi as usize + i + 1);
                let arrow = self.src.get(pre_end..post).and_then(|g| g.find("->")).map_or(pre_end, |i| pre_end + i);
                let attr = post_end + self.src.get(post_end..).map_or(0, |r| r.len() - r.trim_start_matches(' ').len());
                let pads = [self.pad(colon, pre), self.pad(pre_end, arrow), self.pad(arrow + 2, post), self.pad(post_end, attr)];
                header += &format!(":{}{}{}->{}{}", pads[0], self.entity(&p.pre), pads[1], pads[2], self.entity(&p.post));
                let mut prev_end = p.post.span.hi;
                for (k, a) in p.attrs.iter().enumerate() {
                    let at = match a {
                        PathAttr::Init(e) | PathAttr::Mask(e) | PathAttr::Weight(e) => e.span,
                        PathAttr::Plastic(s) | PathAttr::Fixed(s) | PathAttr::Resample(s) => *s,
                    };
                    let sp = if self.broken(prev_end, at.lo) {
                        "\n"
                    } else if k == 0 {
                        pads[3].as_str()
                    } else {
                        " "
                    };
                    prev_end = at.hi;
                    header += &match a {
                        PathAttr::Init(e) => format!("{sp}init {}", self.expr(e)),
                        PathAttr::Plastic(_) => format!("{sp}plastic"),
                        PathAttr::Fixed(_) => format!("{sp}fixed"),
                        PathAttr::Mask(e) => format!("{sp}mask {}", self.expr(e)),
                        PathAttr::Weight(e) => format!("{sp}weight {}", self.expr(e)),
                        PathAttr::Resample(_) => format!("{sp}resample"),
                    };
                }
                let decls: Vec<(Span, String)> = p.syn.iter().map(|d| (d.span, self.syn(d))).collect();
                self.decl_list(span, header, &decls);
            }
            Item::Phase(p) => {
                let repeat = p.repeat.as_ref().map(|e| format!(" repeat {}", self.expr(e))).unwrap_or_default();
                self.open(span.lo as usize, format!("phase {}{repeat}", p.name.name));
                self.stmts(&p.body);
                self.close(span.hi as usize, "");
            }
            Item::Plasticity(p) => {
                let mut h = "plasticity".to_string();
                match &p.schedule {
                    Schedule::EveryStep => {}
                    Schedule::After(i) => h += &format!(" after {}", i.name),
                    Schedule::Every(e) => h += &format!(" every {} steps", self.expr(e)),
                }
                if let Some(m) = &p.mode {
                    h += &format!(" {}", m.name);
                }
                self.open(span.lo as usize, h);
                self.stmts(&p.body);
                self.close(span.hi as usize, "");
            }
            Item::Rule(r) => {
                self.open(span.lo as usize, format!("rule {}({})", r.name.name, names(&r.params)));
                // State declarations and statements may interleave: print them in source order.
                let (mut si, mut bi) = (0, 0);
                while si < r.state.len() || bi < r.body.len() {
                    let state_first = match (r.state.get(si), r.body.get(bi)) {
                        (Some(d), Some(s)) => d.span.lo < s.span.lo,
                        (d, _) => d.is_some(),
                    };
                    if state_first {
                        let d = &r.state[si];
                        self.leaf(d.span, format!("state {}", self.syn(d)));
                        si += 1;
                    } else {
                        self.stmt(&r.body[bi]);
                        bi += 1;
                    }
                }
                self.close(span.hi as usize, "");
            }
            Item::Fn(f) => self.leaf(span, format!("fn {}({}) = {}", f.name.name, names(&f.params), self.expr(&f.body))),
            Item::Monitor { name, expr, .. } => self.leaf(span, format!("monitor {} = {}", name.name, self.expr(expr))),
            Item::Experiment { entries, .. } => {
                let (lo, hi) = (span.lo as usize, span.hi as usize);
                let entry = |p: &Self, k: &Ident, v: &Expr| format!("{} = {}", k.name, p.expr(v));
                if !entries.is_empty() && self.one_line(lo, hi) && !self.has_comment(lo, hi) {
                    let body: Vec<String> = entries.iter().map(|(k, v)| entry(self, k, v)).collect();
                    self.leaf(span, format!("experiment {{ {} }}", body.join("  ")));
                } else {
                    self.open(lo, "experiment".to_string());
                    for (k, v) in entries {
                        self.leaf(k.span.to(v.span), entry(self, k, v));
                    }
                    self.close(hi, "");
                }
            }
            Item::For { var, reverse, lo, hi, items, .. } => {
                self.open(span.lo as usize, format!("for {} in {}", var.name, self.range(*reverse, lo, hi)));
                self.items(items);
                self.close(span.hi as usize, "");
            }
            Item::If { .. } => {
                // `if .. {} else if .. {} else {}`: a chain, printed without recursion.
                let mut cur = it;
                let mut first = true;
                while let Item::If { cond, then, els, span: s } = cur {
                    let kw = format!("if {}", self.expr(cond));
                    if first {
                        self.open(s.lo as usize, kw);
                        first = false;
                    } else {
                        if let Some(l) = self.lines.last_mut() {
                            l.code.push_str(&format!(" {kw} {{"));
                        }
                        self.depth += 1;
                    }
                    self.items(then);
                    let then_end = then.last().map_or(cond.span.hi, |i| i.span().hi) as usize;
                    match els.as_slice() {
                        [] => {
                            self.close_empty_else(then_end, s.hi as usize);
                            break;
                        }
                        [next @ Item::If { .. }] => {
                            self.close(self.brace_after(then_end), " else");
                            cur = next;
                        }
                        _ => {
                            self.close(self.brace_after(then_end), " else {");
                            self.depth += 1;
                            self.items(els);
                            self.close(s.hi as usize, "");
                            break;
                        }
                    }
                }
            }
        }
    }

    /// A declaration with an optional `{ a, b }` list: on one line when written on one line
    /// without comments, else one line per source line of declarations.
    fn decl_list(&mut self, span: Span, header: String, decls: &[(Span, String)]) {
        let (lo, hi) = (span.lo as usize, span.hi as usize);
        if decls.is_empty() {
            return self.leaf(span, header);
        }
        if self.one_line(lo, hi) && !self.has_comment(lo, hi) {
            let list: Vec<&str> = decls.iter().map(|(_, s)| s.as_str()).collect();
            return self.leaf(span, format!("{header} {{ {} }}", list.join(", ")));
        }
        self.open(lo, header);
        let mut i = 0;
        while i < decls.len() {
            let mut j = i + 1;
            while j < decls.len() && self.one_line(decls[i].0.lo as usize, decls[j].0.lo as usize) {
                j += 1;
            }
            let group: Vec<&str> = decls[i..j].iter().map(|(_, s)| s.as_str()).collect();
            let comma = if j < decls.len() { "," } else { "" };
            self.leaf(decls[i].0.to(decls[j - 1].0), format!("{}{comma}", group.join(", ")));
            i = j;
        }
        self.close(hi, "");
    }

    /// The space between two tokens at source positions `a` and `b`: the source's run of
    /// spaces when it is nothing but spaces (hand-aligned declarations keep their columns),
    /// else one space.
    fn pad(&self, a: usize, b: usize) -> String {
        match self.src.get(a..b) {
            Some(g) if !g.is_empty() && g.bytes().all(|c| c == b' ') => g.to_string(),
            _ => " ".to_string(),
        }
    }

    fn head(&self, h: &EntityHead) -> String {
        let index = h.index.as_ref().map(|i| format!("[{}]", self.compact(i))).unwrap_or_default();
        format!("{}{index}[{}]", h.name.name, self.compact(&h.size))
    }

    fn entity(&self, e: &EntityRef) -> String {
        match &e.index {
            Some(i) => format!("{}[{}]", e.name.name, self.compact(i)),
            None => e.name.name.clone(),
        }
    }

    fn var(&self, v: &VarDecl) -> String {
        let mut s = String::new();
        if v.state {
            s += "state ";
        }
        if v.out {
            s += "out ";
        }
        s += &v.name.name;
        if let Some(e) = &v.init {
            s += &format!(" = {}", self.expr(e));
        }
        s
    }

    fn syn(&self, d: &SynDecl) -> String {
        match &d.init {
            Some(e) => format!("{} = {}", d.name.name, self.expr(e)),
            None => d.name.name.clone(),
        }
    }

    fn range(&self, reverse: bool, lo: &Expr, hi: &Expr) -> String {
        let (lo, hi) = (self.compact(lo), self.compact(hi));
        let rev = if reverse { "reverse " } else { "" };
        // `1. .. 3` must not become `1...3`.
        if lo.ends_with('.') || hi.starts_with('.') {
            format!("{rev}{lo} .. {hi}")
        } else {
            format!("{rev}{lo}..{hi}")
        }
    }

    // -----------------------------------------------------------------------------------------
    // Statements

    fn stmts(&mut self, body: &[Stmt]) {
        for s in body {
            self.stmt(s);
        }
    }

    fn lvalue(&self, l: &LValue) -> String {
        match &l.field {
            Some(f) => format!("{}.{}", self.entity(&l.entity), f.name),
            None => self.entity(&l.entity),
        }
    }

    fn stmt(&mut self, s: &Stmt) {
        let (lo, hi) = (s.span.lo as usize, s.span.hi as usize);
        match &s.kind {
            StmtKind::Assign { target, op, value } => {
                let end = target.span.hi as usize;
                let op_at = end + self.src.get(end..).map_or(0, |r| r.len() - r.trim_start_matches(' ').len());
                let pad = self.pad(end, op_at);
                self.leaf(s.span, format!("{}{pad}{} {}", self.lvalue(target), op.text(), self.expr(value)))
            }
            StmtKind::Ode { target, value } => self.leaf(s.span, format!("d {}/dt = {}", self.lvalue(target), self.expr(value))),
            StmtKind::Apply { rule, args, to } => {
                let args: Vec<String> = args.iter().map(|a| self.expr(a)).collect();
                self.leaf(s.span, format!("apply {}({}) to {}", rule.name, args.join(", "), self.entity(to)));
            }
            StmtKind::When { cond, then, els } => {
                let head = format!("when {}", self.expr(cond));
                self.block_stmt(s, head, then, els, cond.span.hi as usize);
            }
            StmtKind::For { var, reverse, lo: a, hi: b, body } => {
                let head = format!("for {} in {}", var.name, self.range(*reverse, a, b));
                self.block_stmt(s, head, body, &[], b.span.hi as usize);
            }
            StmtKind::If { .. } => {
                let mut cur = s;
                let mut first = true;
                while let StmtKind::If { cond, then, els } = &cur.kind {
                    let kw = format!("if {}", self.expr(cond));
                    if first {
                        if self.inline_block(s, then, els) {
                            return self.leaf(s.span, format!("{kw} {}", self.inline_body(then, els)));
                        }
                        self.open(lo, kw);
                        first = false;
                    } else {
                        if let Some(l) = self.lines.last_mut() {
                            l.code.push_str(&format!(" {kw} {{"));
                        }
                        self.depth += 1;
                    }
                    self.stmts(then);
                    let then_end = then.last().map_or(cond.span.hi, |t| t.span.hi) as usize;
                    match els.as_slice() {
                        [] => {
                            self.close_empty_else(then_end, hi);
                            break;
                        }
                        [next @ Stmt { kind: StmtKind::If { .. }, .. }] => {
                            self.close(self.brace_after(then_end), " else");
                            cur = next;
                        }
                        _ => {
                            self.close(self.brace_after(then_end), " else {");
                            self.depth += 1;
                            self.stmts(els);
                            self.close(hi, "");
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Whether `s` (a `when`/`if`/`for` with body `then` and else block `els`) stays on one
    /// line: it is written on one line, without comments, and each block is one simple
    /// statement (or an absent else).
    fn inline_block(&self, s: &Stmt, then: &[Stmt], els: &[Stmt]) -> bool {
        let (lo, hi) = (s.span.lo as usize, s.span.hi as usize);
        let single = |b: &[Stmt]| b.len() == 1 && is_simple(&b[0]);
        single(then) && (els.is_empty() || single(els)) && self.one_line(lo, hi) && !self.has_comment(lo, hi)
    }

    /// `{ s }` or `{ s } else { t }` for a block that stays on one line.
    fn inline_body(&self, then: &[Stmt], els: &[Stmt]) -> String {
        let mut s = format!("{{ {} }}", self.simple(&then[0]));
        if let Some(e) = els.first() {
            s += &format!(" else {{ {} }}", self.simple(e));
        }
        s
    }

    /// The text of a simple statement (assignment, ODE, apply) on its own.
    fn simple(&self, s: &Stmt) -> String {
        match &s.kind {
            StmtKind::Assign { target, op, value } => format!("{} {} {}", self.lvalue(target), op.text(), self.expr(value)),
            StmtKind::Ode { target, value } => format!("d {}/dt = {}", self.lvalue(target), self.expr(value)),
            StmtKind::Apply { rule, args, to } => {
                let args: Vec<String> = args.iter().map(|a| self.expr(a)).collect();
                format!("apply {}({}) to {}", rule.name, args.join(", "), self.entity(to))
            }
            _ => String::new(),
        }
    }

    /// `when`/`for` with a block and (for `when`) an optional `else` block.
    fn block_stmt(&mut self, s: &Stmt, head: String, then: &[Stmt], els: &[Stmt], head_end: usize) {
        if self.inline_block(s, then, els) {
            return self.leaf(s.span, format!("{head} {}", self.inline_body(then, els)));
        }
        self.open(s.span.lo as usize, head);
        self.stmts(then);
        let then_end = then.last().map_or(head_end, |t| t.span.hi as usize);
        if els.is_empty() {
            return self.close_empty_else(then_end, s.span.hi as usize);
        }
        self.close(self.brace_after(then_end), " else {");
        self.depth += 1;
        self.stmts(els);
        self.close(s.span.hi as usize, "");
    }

    // -----------------------------------------------------------------------------------------
    // Expressions

    fn expr(&self, e: &Expr) -> String {
        self.print_expr(e, false)
    }

    /// Inside brackets and range bounds: arithmetic without spaces (`h[l-1]`).
    fn compact(&self, e: &Expr) -> String {
        self.print_expr(e, true)
    }

    /// Whether the source wrote `e` in parentheses (the parser widens a parenthesised
    /// expression's span over the parentheses; a binary expression's span otherwise starts
    /// with its left operand).
    fn user_paren(&self, e: &Expr) -> bool {
        let lo = e.span.lo as usize;
        if self.src.as_bytes().get(lo) != Some(&b'(') {
            return false;
        }
        match &e.kind {
            ExprKind::Binary { lhs, .. } => lhs.span.lo != e.span.lo,
            _ => true,
        }
    }

    /// Whether the source breaks the line between positions `a` and `b` (kept inside
    /// expressions: a break before a binary operator or after a comma of a call).
    fn broken(&self, a: u32, b: u32) -> bool {
        self.src.get(a as usize..b as usize).is_some_and(|g| g.contains('\n'))
    }

    /// Prints an expression with an explicit stack (operator chains can be thousands deep).
    fn print_expr(&self, e: &Expr, compact: bool) -> String {
        enum Task<'e> {
            Expr(&'e Expr, bool, bool),
            Text(String),
        }
        let mut out = String::new();
        let mut stack = vec![Task::Expr(e, false, compact)];
        while let Some(t) = stack.pop() {
            let (e, need, compact) = match t {
                Task::Text(s) => {
                    out.push_str(&s);
                    continue;
                }
                Task::Expr(e, need, compact) => (e, need, compact),
            };
            let mut seq: Vec<Task> = Vec::new();
            let paren = need || self.user_paren(e);
            if paren {
                out.push('(');
            }
            match &e.kind {
                ExprKind::Number { text, .. } => out.push_str(text),
                ExprKind::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                ExprKind::Str(s) => {
                    out.push('"');
                    out.push_str(s);
                    out.push('"');
                }
                ExprKind::Ref { entity, field } => {
                    out.push_str(&entity.name.name);
                    if let Some(i) = &entity.index {
                        out.push('[');
                        seq.push(Task::Expr(i, false, true));
                        seq.push(Task::Text("]".into()));
                    }
                    if let Some(f) = field {
                        seq.push(Task::Text(format!(".{}", f.name)));
                    }
                }
                ExprKind::Call { callee, index, transpose, args } => {
                    out.push_str(&callee.name);
                    if let Some(i) = index {
                        out.push('[');
                        seq.push(Task::Expr(i, false, true));
                        seq.push(Task::Text("]".into()));
                    }
                    seq.push(Task::Text(if *transpose { "^T(" } else { "(" }.into()));
                    for (k, a) in args.iter().enumerate() {
                        if k > 0 {
                            let broken = self.broken(args[k - 1].span.hi, a.span.lo);
                            seq.push(Task::Text(if broken { ",\n" } else { ", " }.into()));
                        }
                        seq.push(Task::Expr(a, false, false));
                    }
                    seq.push(Task::Text(")".into()));
                }
                ExprKind::Unary { op, expr } => {
                    out.push(if *op == UnOp::Neg { '-' } else { '!' });
                    seq.push(Task::Expr(expr, prec(expr) < UNARY_PRECEDENCE, compact));
                }
                ExprKind::Binary { op, lhs, rhs } => {
                    let p = op.precedence();
                    let right_assoc = *op == BinOp::Pow;
                    let need_l = prec(lhs) < p || (prec(lhs) == p && right_assoc);
                    let need_r = prec(rhs) < p || (prec(rhs) == p && !right_assoc);
                    let tight = compact && p >= BinOp::Add.precedence();
                    let sym = if self.broken(lhs.span.hi, rhs.span.lo) {
                        format!("\n{} ", op.text())
                    } else if tight {
                        op.text().to_string()
                    } else {
                        format!(" {} ", op.text())
                    };
                    seq.push(Task::Expr(lhs, need_l, compact));
                    seq.push(Task::Text(sym));
                    seq.push(Task::Expr(rhs, need_r, compact));
                }
            }
            if paren {
                seq.push(Task::Text(")".into()));
            }
            stack.extend(seq.into_iter().rev());
        }
        out
    }
}

/// The binding strength of an expression as an operand (atoms bind tightest).
fn prec(e: &Expr) -> u8 {
    match &e.kind {
        ExprKind::Binary { op, .. } => op.precedence(),
        ExprKind::Unary { .. } => UNARY_PRECEDENCE,
        _ => u8::MAX,
    }
}

fn names(ids: &[Ident]) -> String {
    ids.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(s: &str) -> String {
        format(0, s).unwrap_or_else(|d| panic!("{d:?}"))
    }

    #[test]
    fn spacing_and_parentheses() {
        let src = "param a=1\nparam b = (a+1)*2-(3)\nmonitor m = -x^2 + (-x)^2 + x^-1 + h[l - 1].a + W[l+1]^T(e)\n";
        let out = fmt(src);
        assert_eq!(out, "param a = 1\nparam b = (a + 1) * 2 - (3)\nmonitor m = -x ^ 2 + (-x) ^ 2 + x ^ (-1) + h[l-1].a + W[l+1]^T(e)\n");
        assert_eq!(fmt(&out), out);
    }

    #[test]
    fn comments_stay() {
        let src = "// head\n\n\n\nparam a = 1 // one\n/* block */ param b = 2\nphase f { // the phase\n  h.a = 1 + /* inner */ 2\n\n\n  // last\n}\n";
        let out = fmt(src);
        assert_eq!(
            out,
            "// head\n\nparam a = 1  // one\n/* block */\nparam b = 2\nphase f {  // the phase\n  /* inner */\n  h.a = 1 + 2\n\n  // last\n}\n"
        );
        assert_eq!(fmt(&out), out);
    }

    #[test]
    fn empty_and_comment_only() {
        assert_eq!(fmt(""), "");
        assert_eq!(fmt("  \n\n"), "");
        assert_eq!(fmt("// only\n\n\n"), "// only\n");
    }
}
