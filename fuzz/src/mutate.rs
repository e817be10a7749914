//! Token-level mutation of circ programs (the custom mutator of `mutate_stdlib`).
//!
//! The text is cut into tokens (each keeps the whitespace before it); one to four edits are
//! drawn from the seed: delete, duplicate, swap or move tokens and ranges, replace a number by
//! an extreme value, an identifier by another identifier of the same program (or a keyword or
//! builtin), an operator by another operator, insert a token or a construct. One mutation in
//! ten is libFuzzer's own byte-level mutation instead, so malformed text stays in reach.

/// A token with the whitespace (and nothing else) that precedes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tok {
    pub pre: String,
    pub text: String,
    pub kind: Kind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Ident,
    Number,
    Str,
    Comment,
    Op,
    Punct,
}

const MULTI_OPS: &[&str] = &["->", "+=", "-=", "*=", "==", "!=", "<=", ">=", "&&", "||", "..", "^T"];
const OPS: &[&str] = &[
    "+", "-", "*", "/", "%", "^", "==", "!=", "<", ">", "<=", ">=", "&&", "||", "=", "+=", "-=", "*=", "->", "..", "^T", "!", ".", ",",
    ":", ";",
];

/// Numbers at the edges: zero, signs, sizes around 2^31 and the loop limit, i64 and f64 limits,
/// subnormals, and forms the lexer might mishandle.
const EXTREME: &[&str] = &[
    "0",
    "1",
    "-1",
    "2",
    "0.0",
    "-0.0",
    "0.5",
    "3.5",
    ".5",
    "1e308",
    "1e309",
    "-1e308",
    "1e-320",
    "5e-324",
    "1e6",
    "1e9",
    "1e15",
    "65536",
    "99999",
    "100000",
    "100001",
    "1000000",
    "2147483647",
    "2147483648",
    "2147483649",
    "4294967296",
    "9007199254740993",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551616",
    "99999999999999999999",
    "1e",
    "1.",
    "00",
];

/// Reserved words, contextual keywords and builtin names to splice in.
const WORDS: &[&str] = &[
    "circuit",
    "locality",
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
    "reverse",
    "if",
    "else",
    "when",
    "apply",
    "to",
    "at",
    "state",
    "out",
    "true",
    "false",
    "and",
    "or",
    "not",
    "init",
    "plastic",
    "fixed",
    "mask",
    "weight",
    "resample",
    "repeat",
    "after",
    "every",
    "steps",
    "mean",
    "sum",
    "d",
    "dt",
    "pre",
    "post",
    "self",
    "w",
    "precision",
    "f32",
    "f64",
    "int",
    "float",
    "bool",
    "synapse",
    "neuron",
    "population",
    "projection",
    "nonlocal",
    "relu",
    "leaky_relu",
    "step",
    "sign",
    "abs",
    "exp",
    "log",
    "sqrt",
    "tanh",
    "sigmoid",
    "softplus",
    "gelu",
    "sin",
    "cos",
    "floor",
    "min",
    "max",
    "clip",
    "select",
    "pow",
    "norm",
    "logsumexp",
    "softmax",
    "row_sum",
    "row_mean",
    "row_max",
    "row_norm",
    "col_sum",
    "col_mean",
    "col_max",
    "col_norm",
    "transpose",
    "rand",
    "randn",
    "bernoulli",
    "cross_entropy",
    "mse",
    "angle",
    "symmetry",
    "spectral_radius",
    "effective_rank",
    "histogram",
    "grad",
    "uniform",
    "normal",
    "zeros",
    "constant",
    "identity",
    "orthogonal",
    "xavier_uniform",
    "kaiming_normal",
    "fan_in",
    "fan_out",
    "data",
    "epochs",
    "batch",
    "seed",
    "shuffle",
    "limit",
    "readout",
    "loss",
    "eval_batch",
    "steps",
    "monitor_every",
    "mnist",
    "moons",
    "none",
    "patterns",
    "gaussian",
    "t",
];

/// Fragments that open or close structure.
const FRAGMENTS: &[&str] = &[
    "for i in 0..3 {",
    "for i in reverse 1..2 {",
    "}",
    "{",
    "(",
    ")",
    "[",
    "]",
    "[0]",
    "[1]",
    "when x > 0 {",
    "if true {",
    "} else {",
    "^T",
    "ᵀ",
    ".w",
    "pre.",
    "post.",
    "grad(loss, W.w)",
    "sum(",
    "softmax(",
    "W(",
    "d h.v / dt =",
    "state",
    "out",
    "\"",
    "/*",
    "*/",
    "//",
    "import \"rules.circ\"",
    "import \"fuzz.circ\"",
    "plasticity every 2 steps {",
    "phase p repeat 3 {",
    "apply hebb(0.1, post, pre) to",
    "rule r(a) { w += a }",
    "fn f(a) = a * a",
    "monitor m = ",
    "experiment { data = none }",
];

pub fn tokenize(s: &str) -> Vec<Tok> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let ws = i;
        while i < b.len() && (b[i] as char).is_ascii_whitespace() {
            i += 1;
        }
        let pre = s[ws..i].to_string();
        if i >= b.len() {
            if !pre.is_empty() {
                out.push(Tok { pre, text: String::new(), kind: Kind::Punct });
            }
            break;
        }
        let start = i;
        let c = b[i];
        let kind = if s[i..].starts_with("//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            Kind::Comment
        } else if s[i..].starts_with("/*") {
            i = s[i + 2..].find("*/").map(|k| i + 2 + k + 2).unwrap_or(b.len());
            Kind::Comment
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' && b[i] != b'\n' {
                i += 1;
            }
            if i < b.len() && b[i] == b'"' {
                i += 1;
            }
            Kind::Str
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(|d| d.is_ascii_digit())) {
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i < b.len() && b[i] == b'.' && b.get(i + 1) != Some(&b'.') {
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
                let mut j = i + 1;
                if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
                    j += 1;
                }
                if j < b.len() && b[j].is_ascii_digit() {
                    i = j;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                }
            }
            Kind::Number
        } else if c.is_ascii_alphabetic() || c == b'_' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            Kind::Ident
        } else if let Some(op) = MULTI_OPS.iter().find(|op| s[i..].starts_with(**op)) {
            i += op.len();
            Kind::Op
        } else {
            let ch = s[i..].chars().next().unwrap();
            i += ch.len_utf8();
            if "+-*/%^=<>!&|".contains(ch) {
                Kind::Op
            } else {
                Kind::Punct
            }
        };
        out.push(Tok { pre, text: s[start..i].to_string(), kind });
    }
    out
}

pub fn untokenize(toks: &[Tok]) -> String {
    let mut s = String::new();
    for t in toks {
        s.push_str(&t.pre);
        s.push_str(&t.text);
    }
    s
}

/// A small deterministic generator (xorshift64*), seeded by libFuzzer.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u32) -> Rng {
        Rng((seed as u64) << 17 ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

fn tok(pre: &str, text: &str, kind: Kind) -> Tok {
    Tok { pre: pre.to_string(), text: text.to_string(), kind }
}

/// Operators that can replace each other without breaking the syntax.
const OP_CLASSES: &[&[&str]] =
    &[&["+", "-", "*", "/", "%", "^", "==", "!=", "<", ">", "<=", ">=", "&&", "||"], &["=", "+=", "-=", "*="], &["!", "-"]];

/// The tokens of the line holding token `i`: from the first token after a newline to the next.
fn line_of(toks: &[Tok], i: usize) -> (usize, usize) {
    let mut a = i;
    while a > 0 && !toks[a].pre.contains('\n') {
        a -= 1;
    }
    let mut b = i + 1;
    while b < toks.len() && !toks[b].pre.contains('\n') {
        b += 1;
    }
    (a, b)
}

/// One token edit, in place. Returns false when the edit did not apply (nothing to edit).
fn edit(toks: &mut Vec<Tok>, rng: &mut Rng) -> bool {
    let n = toks.len();
    if n == 0 {
        toks.push(tok("", *rng.pick(FRAGMENTS), Kind::Punct));
        return true;
    }
    let of_kind = |toks: &[Tok], k: Kind| toks.iter().enumerate().filter(|(_, t)| t.kind == k).map(|(i, _)| i).collect::<Vec<_>>();
    // Three edits in four keep the syntax (numbers, identifiers, operators of the same class,
    // whole lines); the rest may break it.
    let choice = if rng.below(4) != 0 { *rng.pick(&[4, 5, 6, 11, 12, 13, 14]) } else { rng.below(13) };
    match choice {
        0 => {
            toks.remove(rng.below(n));
        }
        1 => {
            let a = rng.below(n);
            let b = (a + 1 + rng.below(12)).min(n);
            toks.drain(a..b);
        }
        2 => {
            let a = rng.below(n);
            let b = (a + 1 + rng.below(12)).min(n);
            let copy: Vec<Tok> = toks[a..b].to_vec();
            let at = if rng.below(2) == 0 { b } else { rng.below(n + 1) };
            toks.splice(at..at, copy);
        }
        3 => {
            let (a, b) = (rng.below(n), rng.below(n));
            let (ta, tb) = (toks[a].text.clone(), toks[b].text.clone());
            let (ka, kb) = (toks[a].kind, toks[b].kind);
            toks[a].text = tb;
            toks[a].kind = kb;
            toks[b].text = ta;
            toks[b].kind = ka;
        }
        4 | 11 => {
            let nums = of_kind(toks, Kind::Number);
            if nums.is_empty() {
                return false;
            }
            let i = *rng.pick(&nums);
            toks[i].text = if rng.below(3) == 0 {
                // Near the original: off by one, doubled, zero, negated.
                let v: f64 = toks[i].text.parse().unwrap_or(1.0);
                let w = match rng.below(4) {
                    0 => v + 1.0,
                    1 => v - 1.0,
                    2 => v * 2.0,
                    _ => v * 1000.0,
                };
                if w.fract() == 0.0 && w.abs() < 1e18 {
                    format!("{}", w as i64)
                } else {
                    format!("{w}")
                }
            } else {
                rng.pick(EXTREME).to_string()
            };
        }
        5 => {
            let ids = of_kind(toks, Kind::Ident);
            if ids.is_empty() {
                return false;
            }
            let (i, j) = (*rng.pick(&ids), *rng.pick(&ids));
            toks[i].text = toks[j].text.clone();
        }
        6 => {
            let ops = of_kind(toks, Kind::Op);
            if ops.is_empty() {
                return false;
            }
            let i = *rng.pick(&ops);
            let class = OP_CLASSES.iter().find(|c| c.contains(&toks[i].text.as_str()));
            toks[i].text = match class {
                Some(c) if rng.below(4) != 0 => rng.pick(c).to_string(),
                _ => rng.pick(OPS).to_string(),
            };
        }
        7 => {
            let j = rng.below(n);
            let mut t = toks[j].clone();
            if t.pre.is_empty() {
                t.pre = " ".into();
            }
            toks.insert(rng.below(n + 1), t);
        }
        8 => {
            let at = rng.below(n + 1);
            toks.insert(at, tok(" ", *rng.pick(FRAGMENTS), Kind::Punct));
        }
        9 => {
            let a = rng.below(n);
            let b = (a + 1 + rng.below(20)).min(n);
            let cut: Vec<Tok> = toks.drain(a..b).collect();
            let at = rng.below(toks.len() + 1);
            toks.splice(at..at, cut);
        }
        10 => {
            let ids = of_kind(toks, Kind::Ident);
            if ids.is_empty() {
                return false;
            }
            let i = *rng.pick(&ids);
            toks[i].text = rng.pick(WORDS).to_string();
        }
        13 => {
            // Duplicate a whole line (a statement or declaration, usually).
            let i = rng.below(n);
            let (a, b) = line_of(toks, i);
            let copy: Vec<Tok> = toks[a..b].to_vec();
            toks.splice(b..b, copy);
        }
        14 => {
            // Two identifiers of the program swapped.
            let ids = of_kind(toks, Kind::Ident);
            if ids.len() < 2 {
                return false;
            }
            let (i, j) = (*rng.pick(&ids), *rng.pick(&ids));
            let t = toks[i].text.clone();
            toks[i].text = toks[j].text.clone();
            toks[j].text = t;
        }
        _ => {
            // Comments out of the way (they only slow the mutator down), or a whole line gone.
            let cs = of_kind(toks, Kind::Comment);
            if !cs.is_empty() && rng.below(2) == 0 {
                toks.remove(*rng.pick(&cs));
            } else {
                let (a, b) = line_of(toks, rng.below(n));
                toks.drain(a..b);
            }
        }
    }
    true
}

/// One to four token edits (one most of the time).
pub fn mutate_text(text: &str, rng: &mut Rng) -> String {
    let mut toks = tokenize(text);
    let edits = *rng.pick(&[1, 1, 1, 1, 1, 2, 2, 3, 4]);
    let mut done = 0;
    for _ in 0..edits * 4 {
        if edit(&mut toks, rng) {
            done += 1;
            if done == edits {
                break;
            }
        }
    }
    untokenize(&toks)
}

/// How far single mutants of the given programs get: (mutants, parsed, skipped, check clean,
/// lowered). Printed by `mutate_stdlib` when `CIRC_FUZZ_MUTATION_STATS` is set. Every mutant is
/// parsed; mutants that introduce a number above 100000 are not taken further (`skipped`): they
/// include the known out-of-memory cases (tests/ui-pending), which would end the measurement.
pub fn mutation_stats(programs: &[String], per_program: usize) -> [usize; 5] {
    let [mut n, mut parsed, mut skipped, mut clean, mut lowered] = [0; 5];
    let name = crate::source_name();
    let big = |t: &str| -> Vec<String> {
        tokenize(t)
            .into_iter()
            .filter(|t| t.kind == Kind::Number && t.text.parse::<f64>().map_or(true, |v| v > 1e5))
            .map(|t| t.text)
            .collect()
    };
    for (k, p) in programs.iter().enumerate() {
        let before = big(p);
        for i in 0..per_program {
            let mut rng = Rng::new((k * per_program + i) as u32);
            let text = mutate_text(p, &mut rng);
            n += 1;
            let mut sources = circ_compiler::diag::Sources::default();
            let root = sources.add(name.as_str(), text.as_str());
            if circ_compiler::syntax::parse(root, &text).is_err() {
                continue;
            }
            parsed += 1;
            if big(&text).iter().any(|x| !before.contains(x)) {
                skipped += 1;
                continue;
            }
            let fe = circ_compiler::frontend::load_source(&name, &text, &[]);
            if let Some(c) = fe.ok() {
                clean += 1;
                if circ_compiler::pipeline::lower(c, 1).is_ok() {
                    lowered += 1;
                }
            }
        }
    }
    [n, parsed, skipped, clean, lowered]
}

/// The custom mutator: token edits on UTF-8 programs, libFuzzer's byte mutations otherwise
/// (and one time in ten). Returns the new size.
pub fn mutate(data: &mut [u8], size: usize, max_size: usize, seed: u32) -> usize {
    let mut rng = Rng::new(seed);
    let text = std::str::from_utf8(&data[..size]).ok();
    let Some(text) = text.filter(|_| rng.below(10) != 0) else {
        return libfuzzer_sys::fuzzer_mutate(data, size, max_size);
    };
    let out = mutate_text(text, &mut rng);
    if out.len() > max_size || out.as_bytes() == &data[..size] {
        return libfuzzer_sys::fuzzer_mutate(data, size, max_size);
    }
    data[..out.len()].copy_from_slice(out.as_bytes());
    out.len()
}

/// Crossover at token boundaries: a prefix of one program and a suffix of the other, or a run
/// of the second program's tokens spliced into the first.
pub fn crossover(a: &[u8], b: &[u8], out: &mut [u8], seed: u32) -> usize {
    let mut rng = Rng::new(seed);
    let (Ok(sa), Ok(sb)) = (std::str::from_utf8(a), std::str::from_utf8(b)) else {
        let n = a.len().min(out.len());
        out[..n].copy_from_slice(&a[..n]);
        return n;
    };
    let (ta, tb) = (tokenize(sa), tokenize(sb));
    let mut r: Vec<Tok> = if rng.below(2) == 0 {
        let (i, j) = (rng.below(ta.len() + 1), rng.below(tb.len() + 1));
        ta[..i].iter().chain(tb[j..].iter()).cloned().collect()
    } else {
        let at = rng.below(ta.len() + 1);
        let s = rng.below(tb.len() + 1);
        let e = (s + 1 + rng.below(40)).min(tb.len());
        let mut r = ta.clone();
        r.splice(at..at, tb[s..e].iter().cloned());
        r
    };
    let mut text = untokenize(&r);
    while text.len() > out.len() && !r.is_empty() {
        r.truncate(r.len() / 2);
        text = untokenize(&r);
    }
    let n = text.len().min(out.len());
    out[..n].copy_from_slice(&text.as_bytes()[..n]);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenize_round_trips() {
        for f in ["../stdlib/fa.circ", "../stdlib/stdp.circ", "../examples/quickstart.circ"] {
            let s = std::fs::read_to_string(f).unwrap();
            assert_eq!(untokenize(&tokenize(&s)), s);
        }
        let s = "W2^T(o.e) 1..depth-1 .5e-3 x ᵀ \"str\" /* c */ a+=b";
        assert_eq!(untokenize(&tokenize(s)), s);
    }
}
