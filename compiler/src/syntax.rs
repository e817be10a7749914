//! Parsing: source text to AST.
//!
//! Input: the text of one `.circ` file. Output: an [`ast::Program`] with byte spans on every
//! node, or one diagnostic (`circ::parse::…`) naming in words what was expected.
//! Invariants: never panics and never recurses without bound on any input. A pre-scan rejects
//! nesting deeper than [`MAX_NESTING`] before pest sees the text, and expressions are built
//! from their flat operator list by an explicit-stack precedence parser, so neither deep
//! brackets nor long operator chains can exhaust the stack.

use crate::ast::*;
use crate::diag::{Diagnostic, FileId, Span};
use pest::iterators::Pair;
use pest::Parser as _;

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/circ.pest"]
struct CircParser;

/// Deepest bracket nesting accepted: far beyond any real program, far below stack limits.
pub const MAX_NESTING: usize = 64;
/// Most operands in one expression: again far beyond real programs.
pub const MAX_OPERANDS: usize = 4096;

/// Parses one file. On a syntax error returns the single diagnostic (pest has no recovery).
pub fn parse(file: FileId, text: &str) -> Result<Program, Diagnostic> {
    prescan(file, text)?;
    // Track the literal tokens tried at the furthest position too (`=`, `->`, `:`): pest's
    // rule-level error alone cannot name them and stops at the start of the enclosing item.
    pest::set_error_detail(true);
    let mut pairs = CircParser::parse(Rule::program, text).map_err(|e| parse_error(file, text, e))?;
    let program = pairs.next().expect("pest returns the program rule on success");
    let mut b = Builder { file, errors: Vec::new() };
    let prog = b.program(program);
    match b.errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(prog),
    }
}

/// Parses a standalone expression (used by `--set NAME=EXPR` and tests).
pub fn parse_expr(file: FileId, text: &str) -> Result<Expr, Diagnostic> {
    prescan(file, text)?;
    // Wrap in a param item so the same grammar entry point applies.
    let wrapped = format!("param __x = {text}");
    let prog = parse(file, &wrapped).map_err(|mut d| {
        let shift = "param __x = ".len() as u32;
        d.span.lo = d.span.lo.saturating_sub(shift);
        d.span.hi = d.span.hi.saturating_sub(shift);
        d
    })?;
    match prog.items.into_iter().next() {
        Some(Item::Param { mut value, .. }) => {
            shift_expr(&mut value, "param __x = ".len() as u32);
            Ok(value)
        }
        _ => Err(Diagnostic::error("circ::parse::syntax", Span::new(file, 0, text.len()), "expected an expression")
            .label("not an expression")
            .help("give a number, a name or an expression such as `0.5 * lr`")),
    }
}

fn shift_expr(e: &mut Expr, by: u32) {
    e.span.lo = e.span.lo.saturating_sub(by);
    e.span.hi = e.span.hi.saturating_sub(by);
    match &mut e.kind {
        ExprKind::Ref { entity, field } => {
            entity.span.lo -= by.min(entity.span.lo);
            entity.span.hi -= by.min(entity.span.hi);
            entity.name.span.lo -= by.min(entity.name.span.lo);
            entity.name.span.hi -= by.min(entity.name.span.hi);
            if let Some(i) = &mut entity.index {
                shift_expr(i, by);
            }
            if let Some(f) = field {
                f.span.lo -= by.min(f.span.lo);
                f.span.hi -= by.min(f.span.hi);
            }
        }
        ExprKind::Call { callee, index, args, .. } => {
            callee.span.lo -= by.min(callee.span.lo);
            callee.span.hi -= by.min(callee.span.hi);
            if let Some(i) = index {
                shift_expr(i, by);
            }
            for a in args {
                shift_expr(a, by);
            }
        }
        ExprKind::Unary { expr, .. } => shift_expr(expr, by),
        ExprKind::Binary { lhs, rhs, .. } => {
            shift_expr(lhs, by);
            shift_expr(rhs, by);
        }
        _ => {}
    }
}

/// Rejects what no grammar rule could report well: nesting deeper than MAX_NESTING, a block
/// comment that is never closed and a string that runs to the end of its line. A `/*` or `"`
/// outside comments and strings can only open a comment or a string, so an unclosed one is
/// an error wherever it is; pest would only say that the rest of the file does not parse.
fn prescan(file: FileId, text: &str) -> Result<(), Diagnostic> {
    let b = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let start = i;
                i += 2;
                while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                if i >= b.len() {
                    return Err(Diagnostic::error("circ::parse::syntax", Span::new(file, start, start + 2), "unterminated block comment")
                        .label("this comment is never closed")
                        .help("close it with `*/`; until then the rest of the file is part of the comment"));
                }
                i += 1;
            }
            b'"' => {
                let start = i;
                i += 1;
                while i < b.len() && b[i] != b'"' && b[i] != b'\n' {
                    i += 1;
                }
                if i >= b.len() || b[i] != b'"' {
                    return Err(Diagnostic::error("circ::parse::syntax", Span::new(file, start, i), "unterminated string")
                        .label("this string has no closing `\"`")
                        .help("close the quotes on the same line, e.g. `import \"optim.circ\"`; strings cannot span lines"));
                }
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(Diagnostic::error(
                        "circ::parse::too_deep",
                        Span::new(file, i, i + 1),
                        format!("brackets nested more than {MAX_NESTING} deep"),
                    )
                    .label("this bracket is too deep")
                    .help("split the expression with intermediate variables or `fn` definitions"));
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Converts a pest error into a diagnostic that names what was expected in words, at the
/// furthest position the parser reached.
fn parse_error(file: FileId, text: &str, e: pest::error::Error<Rule>) -> Diagnostic {
    use pest::error::{ErrorVariant, InputLocation};
    let rule_pos = match e.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((a, _)) => a,
    };
    let (positives, negatives) = match &e.variant {
        ErrorVariant::ParsingError { positives, negatives } => (positives.clone(), negatives.clone()),
        ErrorVariant::CustomError { .. } => (Vec::new(), Vec::new()),
    };
    // pest's rules-only error stops where the enclosing rule began when what failed was a
    // literal (`param lr 0.01` fails at `param`); the literals tried further on say more.
    // (pest does not export its token type; a literal token displays as its text.)
    let (pos, rules, literals) = match e.parse_attempts() {
        Some(a) => {
            let tried: Vec<String> = a.expected_tokens().iter().map(|t| t.to_string()).collect();
            if a.max_position > rule_pos && !literal_words(&tried, &[]).is_empty() {
                (a.max_position, Vec::new(), tried)
            } else if a.max_position == rule_pos {
                (rule_pos, positives, tried)
            } else {
                (rule_pos, positives, Vec::new())
            }
        }
        None => (rule_pos, positives, Vec::new()),
    };
    let pos = pos.min(text.len());
    let toks = lex(text);
    if let Some(d) = missing_operator(file, text, &toks, pos, &rules) {
        return d;
    }
    let found = token_at(text, pos);
    let found_text = if found.is_empty() { "the end of the file".to_string() } else { format!("`{found}`") };
    // Optional continuations of a name (`[index]`, `.field`, `(args)`) are the least likely
    // intent: name them after what the construct requires (`path W: x h` lacks `->`).
    let (cont, mut req): (Vec<&str>, Vec<&str>) = rule_word_list(&rules).into_iter().partition(|w| CONTINUATIONS.contains(w));
    for w in literal_words(&literals, &rules).into_iter().chain(cont) {
        if !req.contains(&w) {
            req.push(w);
        }
    }
    let expected = join_words(&req);
    let message = if expected.is_empty() { format!("unexpected {found_text}") } else { format!("expected {expected}, found {found_text}") };
    let label = if expected.is_empty() { "unexpected here".to_string() } else { format!("expected {expected}") };
    let mut d = Diagnostic::error("circ::parse::syntax", Span::new(file, pos, pos + found.len()), message).label(label);
    let unexpected = join_words(&rule_word_list(&negatives));
    if !unexpected.is_empty() {
        d = d.note(format!("{unexpected} cannot appear here"));
    }
    // The reserved-word hint only where a name was expected.
    let help = if is_reserved(found) && req.contains(&"a name") {
        format!("`{found}` is a reserved word; pick another name")
    } else if found == "." && text[..pos].ends_with("..") {
        "a range has two dots: `lo..hi`".to_string()
    } else {
        "see docs/language.md for the syntax of each construct".to_string()
    };
    d.help(help)
}

/// Words for optional continuations of a name; listed last in "expected ...".
const CONTINUATIONS: &[&str] = &["`[`", "`.`", "`(`"];

/// Literal tokens worth naming, in the order they are listed: the connectors items and
/// statements require (tokens that begin a rule, such as `(` or an operator, are named by
/// the rule's words instead; `;` is an optional separator and never the fix).
const LITERALS: &[&str] = &["->", "=", ":", "..", ")", "]", "}", ","];

fn literal_words(tried: &[String], rules: &[Rule]) -> Vec<&'static str> {
    LITERALS
        .iter()
        .filter(|l| tried.iter().any(|t| t == *l))
        // `=` is already one of the assignment operators when those are expected.
        .filter(|l| !(**l == "=" && rules.contains(&Rule::assign_op)))
        .map(|l| match *l {
            "->" => "`->`",
            "=" => "`=`",
            ":" => "`:`",
            ".." => "`..`",
            ")" => "`)`",
            "]" => "`]`",
            "}" => "`}`",
            _ => "`,`",
        })
        .collect()
}

/// "expected an operator" where two terms stand side by side (`0.5 h.a`): at the second term.
/// Two shapes reach here: inside an expression only operators were expected at `pos`; at
/// statement level the second term was read as the start of a new statement (`h.r = 0.5 h.a`
/// then `}`), so the parser wanted `=` after it, and the term follows the previous one on
/// the same line.
fn missing_operator(file: FileId, text: &str, toks: &[Tok], pos: usize, rules: &[Rule]) -> Option<Diagnostic> {
    let before = toks.iter().take_while(|t| t.lo < pos).count();
    let (first, last) = if !rules.is_empty() && rules.iter().all(is_infix) {
        toks.get(before).filter(|t| t.lo == pos && t.starts_operand(text))?;
        (before, before + term_len(text, &toks[before..]) - 1)
    } else if rules.contains(&Rule::assign_op) && before > 0 {
        (lvalue_start(text, &toks[..before])?, before - 1)
    } else {
        return None;
    };
    let prev = toks.get(first.checked_sub(1)?)?;
    if !prev.ends_operand(text) || text[prev.hi..toks[first].lo].contains('\n') {
        return None;
    }
    let (lo, hi) = (toks[first].lo, toks[last].hi);
    let term = &text[lo..hi];
    let left = &text[prev.lo..prev.hi];
    let help = if prev.kind == TokKind::Punct {
        format!("write the operator before `{term}`: `* {term}` for a product")
    } else {
        format!("write the operator between the two terms: `{left} * {term}` for a product")
    };
    Some(
        Diagnostic::error("circ::parse::syntax", Span::new(file, lo, hi), format!("expected an operator, found `{term}`"))
            .label("expected an operator before this")
            .help(help),
    )
}

fn is_infix(r: &Rule) -> bool {
    matches!(
        r,
        Rule::or_op
            | Rule::and_op
            | Rule::eq_op
            | Rule::ne_op
            | Rule::le_op
            | Rule::ge_op
            | Rule::lt_op
            | Rule::gt_op
            | Rule::add_op
            | Rule::sub_op
            | Rule::mul_op
            | Rule::div_op
            | Rule::rem_op
            | Rule::pow_op
            | Rule::kw_and
            | Rule::kw_or
    )
}

/// The index of the first token of the assignment target that ends `toks`: `h`, `h.a`,
/// `h[l].a`, `W.w`.
fn lvalue_start(text: &str, toks: &[Tok]) -> Option<usize> {
    let mut i = toks.len().checked_sub(1)?;
    loop {
        // A family member `h[l]`: back over the index to the family's name.
        if toks[i].is(text, "]") {
            let mut depth = 0usize;
            loop {
                if toks[i].is(text, "]") {
                    depth += 1;
                } else if toks[i].is(text, "[") {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                i = i.checked_sub(1)?;
            }
            i = i.checked_sub(1)?;
        }
        if toks[i].kind != TokKind::Name {
            return None;
        }
        // `.field` after the entity: the entity is further left.
        if i >= 2 && toks[i - 1].is(text, ".") {
            i -= 2;
        } else {
            return Some(i);
        }
    }
}

/// How many tokens the term starting `toks` spans: a name with its `.field`s and `[index]`
/// or `(args)` brackets, a number, or a bracketed group.
fn term_len(text: &str, toks: &[Tok]) -> usize {
    let mut n = 1;
    let mut depth = usize::from(toks[0].is(text, "("));
    while let Some(t) = toks.get(n) {
        let s = &text[t.lo..t.hi];
        if depth > 0 {
            match s {
                "(" | "[" => depth += 1,
                ")" | "]" => depth -= 1,
                _ => {}
            }
        } else if s == "(" || s == "[" {
            depth = 1;
        } else if s == "." && toks.get(n + 1).is_some_and(|x| x.kind == TokKind::Name) {
            n += 1;
        } else {
            break;
        }
        n += 1;
    }
    n
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TokKind {
    Name,
    Number,
    Str,
    Punct,
}

/// A token of the small lexer error reporting uses to find terms and the text it found.
#[derive(Clone, Copy, Debug)]
struct Tok {
    kind: TokKind,
    lo: usize,
    hi: usize,
}

impl Tok {
    fn is(&self, text: &str, s: &str) -> bool {
        &text[self.lo..self.hi] == s
    }
    /// Whether a term can end with this token.
    fn ends_operand(&self, text: &str) -> bool {
        match self.kind {
            TokKind::Name => {
                let w = &text[self.lo..self.hi];
                w == "true" || w == "false" || !is_reserved(w)
            }
            TokKind::Number => true,
            TokKind::Str => false,
            TokKind::Punct => self.is(text, ")") || self.is(text, "]"),
        }
    }
    /// Whether a term can begin with this token.
    fn starts_operand(&self, text: &str) -> bool {
        match self.kind {
            TokKind::Name => {
                let w = &text[self.lo..self.hi];
                w == "true" || w == "false" || !is_reserved(w)
            }
            TokKind::Number => true,
            TokKind::Str => false,
            TokKind::Punct => self.is(text, "("),
        }
    }
}

/// Operators and connectors of more than one character, longest first.
const MULTI_PUNCT: &[&str] = &["->", "+=", "-=", "*=", ":=", "==", "!=", "<=", ">=", "&&", "||", "..", "^T"];

/// Splits text into tokens, skipping whitespace and comments. Total on any input: an
/// unterminated comment or string ends at the end of the text.
fn lex(text: &str) -> Vec<Tok> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let rest = &text[i..];
        let c = rest.chars().next().unwrap_or(' ');
        if c.is_whitespace() || c == '\u{feff}' {
            i += c.len_utf8();
        } else if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            i += rest.find("*/").map_or(rest.len(), |j| j + 2);
        } else {
            let len = token_len(rest);
            let kind = match c {
                c if c.is_ascii_alphabetic() || c == '_' => TokKind::Name,
                c if c.is_ascii_digit() => TokKind::Number,
                '.' if rest[1..].starts_with(|d: char| d.is_ascii_digit()) => TokKind::Number,
                '"' => TokKind::Str,
                _ => TokKind::Punct,
            };
            out.push(Tok { kind, lo: i, hi: i + len });
            i += len;
        }
    }
    out
}

/// Byte length of the token at the start of `rest` (non-empty, not whitespace).
fn token_len(rest: &str) -> usize {
    let b = rest.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    match b[0] {
        c if c.is_ascii_alphabetic() || c == b'_' => b.iter().take_while(|&&c| ident(c)).count(),
        c if c.is_ascii_digit() || (c == b'.' && b.get(1).is_some_and(u8::is_ascii_digit)) => {
            let mut n = b.iter().take_while(|c| c.is_ascii_digit()).count();
            if b.get(n) == Some(&b'.') && b.get(n + 1) != Some(&b'.') {
                n += 1;
                n += b[n..].iter().take_while(|c| c.is_ascii_digit()).count();
            }
            if matches!(b.get(n), Some(b'e' | b'E')) {
                let sign = usize::from(matches!(b.get(n + 1), Some(b'+' | b'-')));
                let digits = b[(n + 1 + sign).min(b.len())..].iter().take_while(|c| c.is_ascii_digit()).count();
                if digits > 0 {
                    n += 1 + sign + digits;
                }
            }
            n
        }
        b'"' => rest[1..].find(['"', '\n']).map_or(rest.len(), |j| if b[j + 1] == b'"' { j + 2 } else { j + 1 }),
        _ => MULTI_PUNCT.iter().find(|p| rest.starts_with(**p)).map_or_else(|| rest.chars().next().map_or(1, char::len_utf8), |p| p.len()),
    }
}

/// The text of the token at `pos` as a user would name it: a name with its `.field`s
/// (`h.a`), a number, a string, or one operator or punctuation mark; empty at the end.
fn token_at(text: &str, pos: usize) -> &str {
    let rest = &text[pos..];
    if rest.is_empty() {
        return rest;
    }
    let mut n = token_len(rest);
    if rest.as_bytes()[0].is_ascii_alphabetic() || rest.as_bytes()[0] == b'_' {
        while rest[n..].starts_with('.') && rest[n + 1..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            n += 1 + token_len(&rest[n + 1..]);
        }
    }
    &rest[..n]
}

fn is_reserved(tok: &str) -> bool {
    const RESERVED: &[&str] = &[
        "circuit",
        "import",
        "param",
        "meta",
        "signal",
        "input",
        "target",
        "pop",
        "path",
        "phase",
        "plasticity",
        "rule",
        "fn",
        "monitor",
        "experiment",
        "for",
        "in",
        "if",
        "else",
        "when",
        "apply",
        "state",
        "out",
        "true",
        "false",
        "and",
        "or",
        "not",
    ];
    RESERVED.contains(&tok)
}

/// A rule's name in words, as a user would say it.
fn rule_words(r: &Rule) -> Option<&'static str> {
    Some(match r {
        Rule::EOI => "the end of the file",
        Rule::item
        | Rule::import_item
        | Rule::param_item
        | Rule::meta_item
        | Rule::signal_item
        | Rule::input_item
        | Rule::target_item
        | Rule::pop_item
        | Rule::path_item
        | Rule::phase_item
        | Rule::plasticity_item
        | Rule::rule_item
        | Rule::fn_item
        | Rule::monitor_item
        | Rule::experiment_item
        | Rule::for_item
        | Rule::if_item => "a declaration (`param`, `pop`, `path`, `phase`, `plasticity`, ...)",
        Rule::kw_import
        | Rule::kw_param
        | Rule::kw_meta
        | Rule::kw_signal
        | Rule::kw_input
        | Rule::kw_target
        | Rule::kw_pop
        | Rule::kw_path
        | Rule::kw_phase
        | Rule::kw_plasticity
        | Rule::kw_rule
        | Rule::kw_fn
        | Rule::kw_monitor
        | Rule::kw_experiment
        | Rule::kw_precision => "a declaration (`param`, `pop`, `path`, `phase`, `plasticity`, ...)",
        Rule::circuit_decl => "`circuit NAME`",
        Rule::kw_to => "`to`",
        Rule::kw_at => "`at`",
        Rule::kw_in => "`in`",
        Rule::kw_locality => "`locality`",
        Rule::kw_steps => "`steps`",
        Rule::kw_dt => "`dt`",
        Rule::tier => "a locality tier (synapse, neuron, population, projection, nonlocal)",
        Rule::ty => "a type (int, float, bool)",
        Rule::ident => "a name",
        Rule::entity_ref => "a population or pathway name",
        Rule::entity_head => "a name with a size, like `h[256]`",
        Rule::bracket => "`[`",
        Rule::var_block => "`{`",
        Rule::var_decl => "a variable name",
        Rule::path_attr
        | Rule::attr_init
        | Rule::attr_plastic
        | Rule::attr_fixed
        | Rule::attr_mask
        | Rule::attr_weight
        | Rule::attr_resample => "a pathway attribute (init, plastic, fixed, mask, weight, resample)",
        Rule::syn_block => "a block of synapse state `{ ... }`",
        Rule::syn_decl => "a synapse state name",
        Rule::phase_repeat => "`repeat N`",
        Rule::schedule | Rule::sched_after | Rule::sched_every => "a schedule (`after PHASE`, `every N steps`)",
        Rule::mode => "`mean` or `sum`",
        Rule::rule_state => "`state NAME`",
        Rule::params => "parameter names",
        Rule::exp_entry => "an entry `key = value`",
        Rule::block => "`{`",
        Rule::stmt | Rule::assign_stmt | Rule::ode_stmt | Rule::when_stmt | Rule::for_stmt | Rule::if_stmt | Rule::apply_stmt => {
            "a statement"
        }
        Rule::lvalue => "a variable to assign",
        Rule::assign_op => "`=`, `+=`, `-=` or `*=`",
        Rule::expr | Rule::paren | Rule::access | Rule::number | Rule::boolean | Rule::string => "an expression",
        Rule::or_op
        | Rule::and_op
        | Rule::eq_op
        | Rule::ne_op
        | Rule::le_op
        | Rule::ge_op
        | Rule::lt_op
        | Rule::gt_op
        | Rule::add_op
        | Rule::sub_op
        | Rule::mul_op
        | Rule::div_op
        | Rule::rem_op
        | Rule::pow_op => "an operator",
        Rule::neg_op | Rule::not_op => "an expression",
        Rule::call_tail => "`(`",
        Rule::transpose => "`^T`",
        Rule::field => "`.`",
        Rule::args => "arguments",
        Rule::kw_reverse => "`reverse`",
        Rule::precision_item | Rule::prec => "`precision f32` or `precision f64`",
        Rule::item_block => "`{`",
        Rule::kw_state | Rule::kw_out => "`state` or `out`",
        _ => return None,
    })
}

/// The words for a set of rules, each once, in order. Statement keywords stand for "a
/// statement", and then a bare name is the start of one (an assignment), not just a name.
fn rule_word_list(rules: &[Rule]) -> Vec<&'static str> {
    let statement = rules.iter().any(|r| matches!(r, Rule::kw_when | Rule::kw_apply | Rule::kw_d));
    let mut ws: Vec<&str> = Vec::new();
    for r in rules {
        let w = match r {
            Rule::kw_when | Rule::kw_apply | Rule::kw_d | Rule::kw_for | Rule::kw_if if statement => Some("a statement"),
            Rule::ident if statement => Some("a statement"),
            // At item level `for`/`if` begin declarations, named by the other item keywords.
            Rule::kw_for | Rule::kw_if => None,
            r => rule_words(r),
        };
        if let Some(w) = w {
            if !ws.contains(&w) {
                ws.push(w);
            }
        }
    }
    ws
}

fn join_words(ws: &[&str]) -> String {
    match ws {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {}", init.join(", "), last),
    }
}

/// Keyword tokens carry no information the builder needs (their presence is implied by the
/// rule that contains them), except `reverse`, `state` and `out`, which are flags.
fn not_kw(p: &Pair<Rule>) -> bool {
    !matches!(
        p.as_rule(),
        Rule::kw_circuit
            | Rule::kw_precision
            | Rule::kw_locality
            | Rule::kw_import
            | Rule::kw_param
            | Rule::kw_meta
            | Rule::kw_signal
            | Rule::kw_input
            | Rule::kw_target
            | Rule::kw_pop
            | Rule::kw_path
            | Rule::kw_phase
            | Rule::kw_plasticity
            | Rule::kw_rule
            | Rule::kw_fn
            | Rule::kw_monitor
            | Rule::kw_experiment
            | Rule::kw_for
            | Rule::kw_in
            | Rule::kw_if
            | Rule::kw_else
            | Rule::kw_when
            | Rule::kw_apply
            | Rule::kw_to
            | Rule::kw_at
            | Rule::kw_init
            | Rule::kw_plastic
            | Rule::kw_fixed
            | Rule::kw_mask
            | Rule::kw_weight
            | Rule::kw_resample
            | Rule::kw_repeat
            | Rule::kw_after
            | Rule::kw_every
            | Rule::kw_steps
            | Rule::kw_and
            | Rule::kw_or
            | Rule::kw_not
            | Rule::kw_d
            | Rule::kw_dt
    )
}

/// Length of `text` up to the end of its last token (trailing whitespace and comments cut).
fn trimmed_len(text: &str) -> usize {
    let b = text.as_bytes();
    let (mut i, mut end) = (0, 0);
    while i < b.len() {
        match b[i] {
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
                i += 2;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' && b[i] != b'\n' {
                    i += 1;
                }
                i += 1;
                end = i.min(b.len());
            }
            c if c.is_ascii_whitespace() => i += 1,
            _ => {
                i += 1;
                end = i;
            }
        }
    }
    // Never split a UTF-8 character.
    while end < b.len() && !text.is_char_boundary(end) {
        end += 1;
    }
    end.min(b.len())
}

struct Builder {
    file: FileId,
    errors: Vec<Diagnostic>,
}

impl Builder {
    /// The span of a pair without the whitespace and comments pest may leave at its end.
    fn span(&self, p: &Pair<Rule>) -> Span {
        let s = p.as_span();
        Span::new(self.file, s.start(), s.start() + trimmed_len(s.as_str()))
    }

    fn ident(&self, p: Pair<Rule>) -> Ident {
        Ident { name: p.as_str().to_string(), span: self.span(&p) }
    }

    fn program(&mut self, p: Pair<Rule>) -> Program {
        let mut prog = Program::default();
        for c in p.into_inner().filter(not_kw) {
            match c.as_rule() {
                Rule::circuit_decl => {
                    let span = self.span(&c);
                    let mut it = c.into_inner().filter(not_kw);
                    let name = self.ident(it.next().expect("circuit name"));
                    let tiers = it.map(|t| self.ident(t)).collect();
                    prog.circuit = Some(CircuitDecl { name, tiers, span });
                }
                Rule::EOI => {}
                _ => {
                    if let Some(item) = self.item(c) {
                        prog.items.push(item);
                    }
                }
            }
        }
        prog
    }

    fn items<'i>(&mut self, pairs: impl Iterator<Item = Pair<'i, Rule>>) -> Vec<Item> {
        pairs.filter_map(|p| self.item(p)).collect()
    }

    fn item(&mut self, p: Pair<Rule>) -> Option<Item> {
        let span = self.span(&p);
        let rule = p.as_rule();
        let mut it = p.into_inner().filter(not_kw);
        Some(match rule {
            Rule::precision_item => Item::Precision { value: self.ident(it.next()?), span },
            Rule::import_item => {
                let s = it.next()?.as_str();
                Item::Import { path: s[1..s.len() - 1].to_string(), span }
            }
            Rule::param_item => {
                let name = self.ident(it.next()?);
                let mut ty = None;
                let mut value = None;
                for c in it {
                    match c.as_rule() {
                        Rule::ty => ty = Some(self.ident(c)),
                        _ => value = Some(self.expr(c)),
                    }
                }
                Item::Param { name, ty, value: value?, span }
            }
            Rule::meta_item => {
                let name = self.ident(it.next()?);
                let value = self.expr(it.next()?);
                Item::Meta { name, value, span }
            }
            Rule::signal_item => {
                let mut state = false;
                let mut name = None;
                let mut init = None;
                for c in it {
                    match c.as_rule() {
                        Rule::kw_state => state = true,
                        Rule::ident => name = Some(self.ident(c)),
                        _ => init = Some(self.expr(c)),
                    }
                }
                Item::Signal { name: name?, state, init, span }
            }
            Rule::input_item => Item::Input { head: self.head(it.next()?), span },
            Rule::target_item => {
                let head = self.head(it.next()?);
                let root = self.entity_ref(it.next()?);
                Item::Target { head, root, span }
            }
            Rule::pop_item => {
                let head = self.head(it.next()?);
                let vars = match it.next() {
                    Some(b) => b.into_inner().filter(not_kw).map(|v| self.var_decl(v)).collect(),
                    None => Vec::new(),
                };
                Item::Pop { head, vars, span }
            }
            Rule::path_item => {
                let name = self.ident(it.next()?);
                let mut index = None;
                let mut refs = Vec::new();
                let mut attrs = Vec::new();
                let mut syn = Vec::new();
                for c in it {
                    match c.as_rule() {
                        Rule::bracket => index = Some(self.bracket(c)),
                        Rule::entity_ref => refs.push(self.entity_ref(c)),
                        Rule::path_attr => {
                            let a = c.into_inner().find(not_kw)?;
                            let aspan = self.span(&a);
                            attrs.push(match a.as_rule() {
                                Rule::attr_init => PathAttr::Init(self.expr(a.into_inner().find(not_kw)?)),
                                Rule::attr_plastic => PathAttr::Plastic(aspan),
                                Rule::attr_fixed => PathAttr::Fixed(aspan),
                                Rule::attr_mask => PathAttr::Mask(self.expr(a.into_inner().find(not_kw)?)),
                                Rule::attr_weight => PathAttr::Weight(self.expr(a.into_inner().find(not_kw)?)),
                                _ => PathAttr::Resample(aspan),
                            });
                        }
                        Rule::syn_block => syn = c.into_inner().filter(not_kw).map(|d| self.syn_decl(d)).collect(),
                        _ => {}
                    }
                }
                let post = refs.pop()?;
                let pre = refs.pop()?;
                Item::Path(PathDecl { name, index, pre, post, attrs, syn, span })
            }
            Rule::phase_item => {
                let name = self.ident(it.next()?);
                let mut repeat = None;
                let mut body = Vec::new();
                for c in it {
                    match c.as_rule() {
                        Rule::phase_repeat => repeat = Some(self.expr(c.into_inner().find(not_kw)?)),
                        _ => body = self.block(c),
                    }
                }
                Item::Phase(PhaseDecl { name, repeat, body, span })
            }
            Rule::plasticity_item => {
                let mut schedule = Schedule::EveryStep;
                let mut mode = None;
                let mut body = Vec::new();
                for c in it {
                    match c.as_rule() {
                        Rule::schedule => {
                            let s = c.into_inner().find(not_kw)?;
                            schedule = match s.as_rule() {
                                Rule::sched_after => Schedule::After(self.ident(s.into_inner().find(not_kw)?)),
                                _ => Schedule::Every(self.expr(s.into_inner().find(not_kw)?)),
                            };
                        }
                        Rule::mode => mode = Some(self.ident(c)),
                        _ => body = self.block(c),
                    }
                }
                Item::Plasticity(PlasticityDecl { schedule, mode, body, span })
            }
            Rule::rule_item => {
                let name = self.ident(it.next()?);
                let mut params = Vec::new();
                let mut state = Vec::new();
                let mut body = Vec::new();
                for c in it {
                    match c.as_rule() {
                        Rule::params => params = c.into_inner().filter(not_kw).map(|i| self.ident(i)).collect(),
                        Rule::rule_state => state.push(self.syn_decl(c)),
                        _ => {
                            if let Some(s) = self.stmt(c) {
                                body.push(s)
                            }
                        }
                    }
                }
                Item::Rule(RuleDecl { name, params, state, body, span })
            }
            Rule::fn_item => {
                let name = self.ident(it.next()?);
                let mut params = Vec::new();
                let mut body = None;
                for c in it {
                    match c.as_rule() {
                        Rule::params => params = c.into_inner().filter(not_kw).map(|i| self.ident(i)).collect(),
                        _ => body = Some(self.expr(c)),
                    }
                }
                Item::Fn(FnDecl { name, params, body: body?, span })
            }
            Rule::monitor_item => {
                let name = self.ident(it.next()?);
                let expr = self.expr(it.next()?);
                Item::Monitor { name, expr, span }
            }
            Rule::experiment_item => {
                let entries = it
                    .filter_map(|e| {
                        let mut ei = e.into_inner().filter(not_kw);
                        let k = self.ident(ei.next()?);
                        let v = self.expr(ei.next()?);
                        Some((k, v))
                    })
                    .collect();
                Item::Experiment { entries, span }
            }
            Rule::for_item => {
                let var = self.ident(it.next()?);
                let mut reverse = false;
                let mut bounds = Vec::new();
                let mut items = Vec::new();
                for c in it {
                    match c.as_rule() {
                        Rule::kw_reverse => reverse = true,
                        Rule::expr => bounds.push(self.expr(c)),
                        _ => items = self.items(c.into_inner().filter(not_kw)),
                    }
                }
                let hi = bounds.pop()?;
                let lo = bounds.pop()?;
                Item::For { var, reverse, lo, hi, items, span }
            }
            Rule::if_item => {
                let cond = self.expr(it.next()?);
                let then = self.items(it.next()?.into_inner().filter(not_kw));
                let els = match it.next() {
                    None => Vec::new(),
                    Some(c) if c.as_rule() == Rule::if_item => self.item(c).into_iter().collect(),
                    Some(c) => self.items(c.into_inner().filter(not_kw)),
                };
                Item::If { cond, then, els, span }
            }
            _ => return None,
        })
    }

    fn head(&mut self, p: Pair<Rule>) -> EntityHead {
        let mut it = p.into_inner().filter(not_kw);
        let name = self.ident(it.next().expect("entity head has a name"));
        let first = it.next().map(|b| self.bracket(b));
        let second = it.next().map(|b| self.bracket(b));
        match (first, second) {
            (Some(index), Some(size)) => EntityHead { name, index: Some(index), size },
            (Some(size), None) => EntityHead { name, index: None, size },
            _ => unreachable!("grammar requires a size bracket"),
        }
    }

    fn bracket(&mut self, p: Pair<Rule>) -> Expr {
        self.expr(p.into_inner().find(not_kw).expect("bracket holds an expression"))
    }

    fn entity_ref(&mut self, p: Pair<Rule>) -> EntityRef {
        let span = self.span(&p);
        let mut it = p.into_inner().filter(not_kw);
        let name = self.ident(it.next().expect("entity ref has a name"));
        let index = it.next().map(|b| Box::new(self.bracket(b)));
        EntityRef { name, index, span }
    }

    fn var_decl(&mut self, p: Pair<Rule>) -> VarDecl {
        let span = self.span(&p);
        let mut state = false;
        let mut out = false;
        let mut name = None;
        let mut init = None;
        for c in p.into_inner().filter(not_kw) {
            match c.as_rule() {
                Rule::var_flag => match c.into_inner().find(not_kw).map(|f| f.as_rule()) {
                    Some(Rule::kw_state) => state = true,
                    _ => out = true,
                },
                Rule::ident => name = Some(self.ident(c)),
                _ => init = Some(self.expr(c)),
            }
        }
        VarDecl { name: name.expect("var decl has a name"), state, out, init, span }
    }

    fn syn_decl(&mut self, p: Pair<Rule>) -> SynDecl {
        let span = self.span(&p);
        let mut name = None;
        let mut init = None;
        for c in p.into_inner().filter(not_kw) {
            match c.as_rule() {
                Rule::ident => name = Some(self.ident(c)),
                Rule::kw_state => {}
                _ => init = Some(self.expr(c)),
            }
        }
        SynDecl { name: name.expect("synapse decl has a name"), init, span }
    }

    fn block(&mut self, p: Pair<Rule>) -> Vec<Stmt> {
        p.into_inner().filter(not_kw).filter_map(|s| self.stmt(s)).collect()
    }

    fn lvalue(&mut self, p: Pair<Rule>) -> LValue {
        let span = self.span(&p);
        let mut it = p.into_inner().filter(not_kw);
        let entity = self.entity_ref(it.next().expect("lvalue has an entity"));
        let field = it.next().map(|f| self.ident(f));
        LValue { entity, field, span }
    }

    fn stmt(&mut self, p: Pair<Rule>) -> Option<Stmt> {
        let span = self.span(&p);
        let rule = p.as_rule();
        let mut it = p.into_inner().filter(not_kw);
        let kind = match rule {
            Rule::assign_stmt => {
                let target = self.lvalue(it.next()?);
                let op = match it.next()?.as_str() {
                    "+=" => AssignOp::Add,
                    "-=" => AssignOp::Sub,
                    "*=" => AssignOp::Mul,
                    _ => AssignOp::Set,
                };
                let value = self.expr(it.next()?);
                StmtKind::Assign { target, op, value }
            }
            Rule::ode_stmt => {
                let target = self.lvalue(it.next()?);
                let value = self.expr(it.next()?);
                StmtKind::Ode { target, value }
            }
            Rule::when_stmt => {
                let cond = self.expr(it.next()?);
                let then = self.block(it.next()?);
                let els = it.next().map(|b| self.block(b)).unwrap_or_default();
                StmtKind::When { cond, then, els }
            }
            Rule::for_stmt => {
                let var = self.ident(it.next()?);
                let mut reverse = false;
                let mut bounds = Vec::new();
                let mut body = Vec::new();
                for c in it {
                    match c.as_rule() {
                        Rule::kw_reverse => reverse = true,
                        Rule::expr => bounds.push(self.expr(c)),
                        _ => body = self.block(c),
                    }
                }
                let hi = bounds.pop()?;
                let lo = bounds.pop()?;
                StmtKind::For { var, reverse, lo, hi, body }
            }
            Rule::if_stmt => {
                let cond = self.expr(it.next()?);
                let then = self.block(it.next()?);
                let els = match it.next() {
                    None => Vec::new(),
                    Some(c) if c.as_rule() == Rule::if_stmt => self.stmt(c).into_iter().collect(),
                    Some(c) => self.block(c),
                };
                StmtKind::If { cond, then, els }
            }
            Rule::apply_stmt => {
                let rule = self.ident(it.next()?);
                let mut args = Vec::new();
                let mut to = None;
                for c in it {
                    match c.as_rule() {
                        Rule::args => args = c.into_inner().filter(not_kw).map(|a| self.expr(a)).collect(),
                        _ => to = Some(self.entity_ref(c)),
                    }
                }
                StmtKind::Apply { rule, args, to: to? }
            }
            _ => return None,
        };
        Some(Stmt { kind, span })
    }

    /// Builds an expression from the flat `prefix* operand (op prefix* operand)*` list with an
    /// explicit operator stack (shunting-yard), so long chains cannot overflow the call stack.
    /// Prefix `-`/`!` sit on the same stack with precedence [`UNARY_PRECEDENCE`], so `-x^2`
    /// is `-(x^2)` and `-a*b` is `(-a)*b`.
    fn expr(&mut self, p: Pair<Rule>) -> Expr {
        let span = self.span(&p);
        let mut operands: Vec<Expr> = Vec::new();
        let mut ops: Vec<(Op, Span)> = Vec::new();
        let mut count = 0usize;
        for c in p.into_inner().filter(not_kw) {
            let cspan = self.span(&c);
            let op = match c.as_rule() {
                Rule::neg_op => {
                    ops.push((Op::Un(UnOp::Neg), cspan));
                    continue;
                }
                Rule::not_op => {
                    ops.push((Op::Un(UnOp::Not), cspan));
                    continue;
                }
                Rule::or_op => BinOp::Or,
                Rule::and_op => BinOp::And,
                Rule::eq_op => BinOp::Eq,
                Rule::ne_op => BinOp::Ne,
                Rule::le_op => BinOp::Le,
                Rule::ge_op => BinOp::Ge,
                Rule::lt_op => BinOp::Lt,
                Rule::gt_op => BinOp::Gt,
                Rule::add_op => BinOp::Add,
                Rule::sub_op => BinOp::Sub,
                Rule::mul_op => BinOp::Mul,
                Rule::div_op => BinOp::Div,
                Rule::rem_op => BinOp::Rem,
                Rule::pow_op => BinOp::Pow,
                _ => {
                    count += 1;
                    if count == MAX_OPERANDS + 1 {
                        self.errors.push(
                            Diagnostic::error("circ::parse::too_long", span, format!("expression with more than {MAX_OPERANDS} operands"))
                                .label("this expression")
                                .help("split it with intermediate variables"),
                        );
                    }
                    let e = self.primary(c);
                    operands.push(e);
                    continue;
                }
            };
            // Pop operators that bind at least as tightly (left associative); `^` is right
            // associative, so an equal `^` on the stack stays.
            while let Some(&(top, tspan)) = ops.last() {
                let p_top = top.precedence();
                let p_new = op.precedence();
                if p_top > p_new || (p_top == p_new && op != BinOp::Pow) {
                    ops.pop();
                    reduce(&mut operands, top, tspan);
                } else {
                    break;
                }
            }
            ops.push((Op::Bin(op), cspan));
        }
        while let Some((o, ospan)) = ops.pop() {
            reduce(&mut operands, o, ospan);
        }
        operands.pop().unwrap_or(Expr { kind: ExprKind::Bool(false), span })
    }

    fn primary(&mut self, p: Pair<Rule>) -> Expr {
        let span = self.span(&p);
        match p.as_rule() {
            Rule::number => {
                let text = p.as_str().to_string();
                let int = !text.contains(['.', 'e', 'E']);
                let value = match text.parse::<f64>() {
                    Ok(v) if v.is_finite() => v,
                    _ => {
                        self.errors.push(
                            Diagnostic::error("circ::parse::number", span, "number out of range")
                                .label("not representable as a 64-bit float")
                                .help("numbers must lie within about ±1.8e308"),
                        );
                        0.0
                    }
                };
                Expr { kind: ExprKind::Number { value, text, int }, span }
            }
            Rule::boolean => Expr { kind: ExprKind::Bool(p.as_str() == "true"), span },
            Rule::string => {
                let s = p.as_str();
                Expr { kind: ExprKind::Str(s[1..s.len() - 1].to_string()), span }
            }
            Rule::paren => {
                let inner = p.into_inner().find(not_kw).expect("paren holds an expression");
                let mut e = self.expr(inner);
                // Keep the parentheses in the span so diagnostics underline what was written.
                e.span = span;
                e
            }
            Rule::access => {
                let mut it = p.into_inner().filter(not_kw);
                let name = self.ident(it.next().expect("access has a name"));
                let mut index = None;
                let mut tail = None;
                for c in it {
                    match c.as_rule() {
                        Rule::bracket => index = Some(Box::new(self.bracket(c))),
                        _ => tail = Some(c),
                    }
                }
                match tail {
                    Some(t) if t.as_rule() == Rule::call_tail => {
                        let mut transpose = false;
                        let mut args = Vec::new();
                        for c in t.into_inner().filter(not_kw) {
                            match c.as_rule() {
                                Rule::transpose => transpose = true,
                                _ => args = c.into_inner().filter(not_kw).map(|a| self.expr(a)).collect(),
                            }
                        }
                        Expr { kind: ExprKind::Call { callee: name, index, transpose, args }, span }
                    }
                    other => {
                        let field = other.and_then(|f| f.into_inner().find(not_kw)).map(|i| self.ident(i));
                        let espan = match &index {
                            Some(i) => name.span.to(i.span).to(Span { hi: i.span.hi + 1, ..i.span }),
                            None => name.span,
                        };
                        Expr { kind: ExprKind::Ref { entity: EntityRef { name, index, span: espan }, field }, span }
                    }
                }
            }
            _ => Expr { kind: ExprKind::Bool(false), span },
        }
    }
}

#[derive(Clone, Copy)]
enum Op {
    Bin(BinOp),
    Un(UnOp),
}

impl Op {
    fn precedence(self) -> u8 {
        match self {
            Op::Bin(b) => b.precedence(),
            Op::Un(_) => UNARY_PRECEDENCE,
        }
    }
}

fn reduce(operands: &mut Vec<Expr>, op: Op, op_span: Span) {
    match op {
        Op::Bin(op) => {
            let rhs = operands.pop();
            let lhs = operands.pop();
            if let (Some(lhs), Some(rhs)) = (lhs, rhs) {
                let span = lhs.span.to(rhs.span);
                operands.push(Expr { kind: ExprKind::Binary { op, lhs: Box::new(lhs), rhs: Box::new(rhs) }, span });
            }
        }
        Op::Un(op) => {
            if let Some(e) = operands.pop() {
                operands.push(Expr { span: op_span.to(e.span), kind: ExprKind::Unary { op, expr: Box::new(e) } });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every prefix of a real program, and the program with each character removed, ends in
    /// a program or one diagnostic with a label: the error path never panics.
    #[test]
    fn parse_errors_are_total() {
        let text = include_str!("../../stdlib/fa.circ");
        let cuts = text.char_indices().map(|(i, _)| i).chain([text.len()]);
        for i in cuts.step_by(3) {
            if let Err(d) = parse(0, &text[..i]) {
                assert!(!d.label.is_empty() && d.help.is_some(), "{d:?}");
            }
            let mut removed = text.to_string();
            if i < text.len() {
                removed.remove(i);
            }
            if let Err(d) = parse(0, &removed) {
                assert!(!d.label.is_empty() && d.help.is_some(), "{d:?}");
            }
        }
    }

    #[test]
    fn found_token_is_one_token() {
        assert_eq!(token_at("out[2] { a }", 0), "out");
        assert_eq!(token_at("h.a) + 1", 0), "h.a");
        assert_eq!(token_at("-> h", 0), "->");
        assert_eq!(token_at("1e-3 x", 0), "1e-3");
        assert_eq!(token_at("ᵀ(e)", 0), "ᵀ");
        assert_eq!(token_at("", 0), "");
    }

    #[test]
    fn missing_operator_is_reported_at_the_second_term() {
        let text = "input x[4]\npop h[4] { a, r }\nphase f {\n  h.r = 0.5 h[1].a\n}\n";
        let d = parse(0, text).unwrap_err();
        assert_eq!(&text[d.span.lo as usize..d.span.hi as usize], "h[1].a");
        // On its own line, a target without `=` is a statement missing its operator.
        let text = "input x[4]\npop h[4] { a, r }\nphase f {\n  h.r = 0.5\n  h.a\n}\n";
        let d = parse(0, text).unwrap_err();
        assert!(d.message.starts_with("expected `=`"), "{}", d.message);
    }
}
