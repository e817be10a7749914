//! A generator of random well-formed circuits for the `differential` target.
//!
//! The fuzzer's bytes drive every choice (exhausted input reads as zeros, so every byte string
//! is a program). The circuit is f64, claims `nonlocal` (so locality never rejects it) and has
//! no data (`data = none`; the harness fills the input and the target). It has an input, one to
//! four populations of one to six neurons with plain, `state` and `out` variables, pathways
//! between them (plastic or fixed, some with synapse state), one to three phases of elementwise
//! expressions over the builtins, transmissions (`W(x)`, `W^T(e)`), reductions, softmax,
//! signals, random draws, `when` and ODEs, sometimes a repeated phase, then plasticity rules
//! with pre, post and synapse factors (and rules of the standard library), monitors, and a
//! batch size. Variables are read only after they are written in the step (or are state), so
//! most programs check clean; the rest are skipped by the harness.

use std::fmt::Write;

/// Reads choices from the fuzzer's bytes.
pub struct Src<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Src<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Src { data, pos: 0 }
    }
    pub fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    /// In 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        if n <= 1 {
            return 0;
        }
        if n <= 256 {
            self.byte() as usize % n
        } else {
            (self.byte() as usize | (self.byte() as usize) << 8) % n
        }
    }
    pub fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }
    pub fn pick<'b, T>(&mut self, xs: &'b [T]) -> &'b T {
        &xs[self.below(xs.len())]
    }
}

struct Pop {
    name: String,
    size: usize,
    /// (name, is state)
    vars: Vec<(String, bool)>,
    out: Option<usize>,
    input: bool,
}

struct Path {
    name: String,
    pre: usize,
    post: usize,
    plastic: bool,
    /// Synapse state besides `w`.
    syn: Vec<String>,
}

/// What an expression may read: the populations and variables already written this step.
struct Ctx {
    pops: Vec<Pop>,
    paths: Vec<Path>,
    /// written[p][v]: written earlier in the step (or state, or the input).
    written: Vec<Vec<bool>>,
    target: Option<(usize, usize)>, // (root pop, size)
    signals: Vec<(String, bool)>,   // (name, written or state)
    has_dt: bool,
}

const UNARY: &[&str] =
    &["relu", "leaky_relu", "step", "sign", "abs", "exp", "log", "sqrt", "tanh", "sigmoid", "softplus", "gelu", "sin", "cos", "floor"];
const CONSTS: &[&str] = &["0", "1", "2", "0.5", "-1", "0.1", "3", "1e-3", "0.25", "-0.75", "10"];
const BINOPS: &[&str] = &["+", "-", "*", "/", "+", "*", "-", "*"];
const CMP: &[&str] = &[">", "<", ">=", "<=", "==", "!="];
const REDUCE: &[&str] = &["sum", "mean", "max", "min", "norm", "logsumexp"];

impl Ctx {
    /// A readable variable of population `p`, if any.
    fn readable(&self, s: &mut Src, p: usize) -> Option<String> {
        let pop = &self.pops[p];
        if pop.input {
            return Some(pop.name.clone());
        }
        let ok: Vec<usize> = (0..pop.vars.len()).filter(|&v| self.written[p][v]).collect();
        if ok.is_empty() {
            return None;
        }
        let v = *s.pick(&ok);
        Some(format!("{}.{}", pop.name, pop.vars[v].0))
    }

    fn scalar(&self, s: &mut Src, depth: usize) -> String {
        match s.below(4) {
            0 => {
                let ps: Vec<usize> = (0..self.pops.len()).filter(|&p| self.readable_any(p)).collect();
                if ps.is_empty() {
                    return s.pick(CONSTS).to_string();
                }
                let p = *s.pick(&ps);
                // Anchored on a variable of p: a reduction of a scalar is a shape error.
                let e = self.anchored(s, p, depth.saturating_sub(1));
                format!("{}({e})", s.pick(REDUCE))
            }
            1 => {
                let ss: Vec<&String> = self.signals.iter().filter(|x| x.1).map(|x| &x.0).collect();
                if ss.is_empty() {
                    return s.pick(CONSTS).to_string();
                }
                s.pick(&ss).to_string()
            }
            2 if self.has_dt => "dt".into(),
            _ => "lr".into(),
        }
    }

    fn readable_any(&self, p: usize) -> bool {
        self.pops[p].input || self.written[p].iter().any(|&w| w)
    }

    /// An expression in the space of population `p` (per neuron, per sample). `in_rule`: no
    /// reductions, transmissions or softmax (rules read pre/post through other code).
    fn neuron_expr(&self, s: &mut Src, p: usize, depth: usize, in_rule: bool) -> String {
        if depth == 0 {
            return self.neuron_leaf(s, p);
        }
        match s.below(16) {
            0..=2 => self.neuron_leaf(s, p),
            3..=5 => {
                let (a, b) = (self.neuron_expr(s, p, depth - 1, in_rule), self.neuron_expr(s, p, depth - 1, in_rule));
                format!("({a} {} {b})", s.pick(BINOPS))
            }
            6 | 7 => {
                let f = s.pick(UNARY);
                let a = self.neuron_expr(s, p, depth - 1, in_rule);
                if *f == "leaky_relu" && s.chance(1, 2) {
                    format!("leaky_relu({a}, 0.2)")
                } else if *f == "softplus" && s.chance(1, 2) {
                    format!("softplus({a}, 2)")
                } else {
                    format!("{f}({a})")
                }
            }
            8 => {
                let (a, b) = (self.neuron_expr(s, p, depth - 1, in_rule), self.neuron_expr(s, p, depth - 1, in_rule));
                match s.below(5) {
                    0 => format!("min({a}, {b})"),
                    1 => format!("max({a}, {b})"),
                    2 => format!("pow({a}, {})", s.pick(&["2", "3", "0.5", "-1", "0"])),
                    3 => format!("clip({a}, -1, {b})"),
                    _ => {
                        let c = self.neuron_expr(s, p, depth - 1, in_rule);
                        format!("select({a} {} {b}, {c}, {a})", s.pick(CMP))
                    }
                }
            }
            9 if !in_rule => {
                // Input through a pathway into p, or backwards through a pathway out of p.
                let ins: Vec<usize> =
                    (0..self.paths.len()).filter(|&i| self.paths[i].post == p && self.readable_any(self.paths[i].pre)).collect();
                let outs: Vec<usize> =
                    (0..self.paths.len()).filter(|&i| self.paths[i].pre == p && self.readable_any(self.paths[i].post)).collect();
                if !ins.is_empty() && (outs.is_empty() || s.chance(2, 3)) {
                    let w = &self.paths[*s.pick(&ins)];
                    let q = w.pre;
                    // The argument always reads the sending population: a constant or scalar
                    // argument (`W(0.25)`) is a shape error (tests/ui/lower_transmit_scalar; it
                    // was a lowering bug this target found), so it would not reach the engines.
                    let arg = if self.pops[q].out.is_some_and(|o| self.written[q][o]) && s.chance(1, 2) {
                        self.pops[q].name.clone()
                    } else {
                        self.anchored(s, q, depth - 1)
                    };
                    format!("{}({arg})", w.name)
                } else if !outs.is_empty() {
                    let w = &self.paths[*s.pick(&outs)];
                    let arg = self.anchored(s, w.post, depth - 1);
                    format!("{}^T({arg})", w.name)
                } else {
                    self.neuron_leaf(s, p)
                }
            }
            // Anchored: softmax of a scalar is a shape error.
            10 if !in_rule && self.readable_any(p) => format!("softmax({})", self.anchored(s, p, depth - 1)),
            11 if !in_rule => self.scalar(s, depth - 1),
            12 if !in_rule => {
                if s.chance(1, 2) {
                    "rand()".into()
                } else {
                    "randn()".into()
                }
            }
            13 if !in_rule && self.target.is_some_and(|t| t.0 == p) => "y".into(),
            14 => format!("-{}", self.neuron_expr(s, p, depth - 1, in_rule)),
            _ => {
                let (a, b) = (self.neuron_expr(s, p, depth - 1, in_rule), self.neuron_expr(s, p, depth - 1, in_rule));
                format!("({a} {} {b})", s.pick(CMP))
            }
        }
    }

    /// An expression of population `p` that reads one of its variables (so it is per neuron).
    fn anchored(&self, s: &mut Src, p: usize, depth: usize) -> String {
        let v = self.readable(s, p).expect("transmissions are drawn only from readable populations");
        match s.below(3) {
            0 => v,
            1 => format!("({v} {} {})", s.pick(BINOPS), self.neuron_expr(s, p, depth, false)),
            _ => format!("{}({v})", s.pick(UNARY)),
        }
    }

    fn neuron_leaf(&self, s: &mut Src, p: usize) -> String {
        match s.below(3) {
            0 => s.pick(CONSTS).to_string(),
            _ => self.readable(s, p).unwrap_or_else(|| s.pick(CONSTS).to_string()),
        }
    }

    /// A synapse-space expression for a rule of pathway `w`: products and functions of
    /// `pre.*`, `post.*`, the synapse state and constants.
    fn syn_expr(&self, s: &mut Src, w: usize, depth: usize) -> String {
        let path = &self.paths[w];
        let leaf = |s: &mut Src| -> String {
            match s.below(5) {
                0 => s.pick(CONSTS).to_string(),
                1 => {
                    let v = if path.syn.is_empty() || s.chance(1, 2) { "w".to_string() } else { s.pick(&path.syn).clone() };
                    format!("{}.{v}", path.name)
                }
                2 => self.role(s, path.pre, "pre"),
                _ => self.role(s, path.post, "post"),
            }
        };
        if depth == 0 {
            return leaf(s);
        }
        match s.below(10) {
            0..=2 => leaf(s),
            3..=5 => {
                let (a, b) = (self.syn_expr(s, w, depth - 1), self.syn_expr(s, w, depth - 1));
                format!("({a} {} {b})", s.pick(BINOPS))
            }
            6 => format!("{}({})", s.pick(UNARY), self.syn_expr(s, w, depth - 1)),
            7 => {
                let (a, b) = (self.syn_expr(s, w, depth - 1), self.syn_expr(s, w, depth - 1));
                format!("{}({a}, {b})", s.pick(&["min", "max"]))
            }
            8 => format!("({} {} 0)", self.syn_expr(s, w, depth - 1), s.pick(CMP)),
            _ => {
                // The common separable shape: post factor * pre factor.
                format!("{} * {}", self.role(s, path.post, "post"), self.role(s, path.pre, "pre"))
            }
        }
    }

    fn role(&self, s: &mut Src, p: usize, role: &str) -> String {
        let pop = &self.pops[p];
        if pop.input {
            return role.into();
        }
        let ok: Vec<usize> = (0..pop.vars.len()).filter(|&v| self.written[p][v]).collect();
        if ok.is_empty() {
            return "1".into();
        }
        let v = *s.pick(&ok);
        if Some(v) == pop.out && s.chance(1, 3) {
            role.into()
        } else {
            format!("{role}.{}", pop.vars[v].0)
        }
    }
}

/// A generated program and the batch size to lower it for.
pub struct Generated {
    pub text: String,
    pub batch: usize,
}

pub fn generate(data: &[u8]) -> Generated {
    let mut s = Src::new(data);
    let mut out = String::new();
    let mut c = Ctx { pops: Vec::new(), paths: Vec::new(), written: Vec::new(), target: None, signals: Vec::new(), has_dt: s.chance(1, 2) };
    let uses_rules = s.chance(1, 3);
    writeln!(out, "circuit gen locality nonlocal\nprecision f64").unwrap();
    if uses_rules {
        writeln!(out, "import \"rules.circ\"").unwrap();
    }
    writeln!(out, "param lr = {}", s.pick(&["0.01", "0.1", "0.5", "1e-3"])).unwrap();
    if c.has_dt {
        writeln!(out, "param dt = {}", s.pick(&["0.1", "0.5", "1"])).unwrap();
    }
    // Populations: the input, then 1..=4 of neurons.
    let nin = 1 + s.below(6);
    writeln!(out, "input x[{nin}]").unwrap();
    c.pops.push(Pop { name: "x".into(), size: nin, vars: vec![], out: None, input: true });
    c.written.push(vec![]);
    let npops = 1 + s.below(4);
    for i in 0..npops {
        let size = 1 + s.below(6);
        let nv = 1 + s.below(4);
        let mut vars = Vec::new();
        let mut decl = Vec::new();
        let out_v = if s.chance(2, 3) { Some(s.below(nv)) } else { None };
        for v in 0..nv {
            let name = ["a", "b", "e", "r"][v].to_string();
            let state = s.chance(1, 3);
            let mut d = String::new();
            if state {
                d.push_str("state ");
            }
            if Some(v) == out_v {
                d.push_str("out ");
            }
            d.push_str(&name);
            if state && s.chance(1, 2) {
                write!(d, " = {}", s.pick(&["0.5", "-1", "0.1", "2"])).unwrap();
            }
            decl.push(d);
            vars.push((name, state));
        }
        writeln!(out, "pop p{i}[{size}] {{ {} }}", decl.join(", ")).unwrap();
        c.written.push(vars.iter().map(|v| v.1).collect());
        c.pops.push(Pop { name: format!("p{i}"), size, vars, out: out_v, input: false });
    }
    if s.chance(1, 2) {
        let root = 1 + s.below(npops);
        let size = c.pops[root].size;
        writeln!(out, "target y[{size}] at {}", c.pops[root].name).unwrap();
        c.target = Some((root, size));
    }
    for i in 0..s.below(3) {
        let state = s.chance(1, 2);
        writeln!(out, "signal {}S{i}", if state { "state " } else { "" }).unwrap();
        c.signals.push((format!("S{i}"), state));
    }
    // Pathways: every population receives one (so each phase has something to transmit), plus
    // a few more in any direction (no pathway into the input).
    let mut edges: Vec<(usize, usize)> = (1..=npops).map(|p| (s.below(p), p)).collect();
    for _ in 0..s.below(4) {
        let pre = s.below(npops + 1);
        let post = 1 + s.below(npops);
        edges.push((pre, post));
    }
    for (i, (pre, post)) in edges.into_iter().enumerate() {
        let plastic = s.chance(3, 4);
        let init = s
            .pick(&[
                "uniform(-1, 1) / sqrt(fan_in)",
                "normal(0.5)",
                "uniform(0, 1)",
                "constant(0.1)",
                "zeros",
                "normal(0, 1) / fan_out",
                "identity",
                "xavier_uniform",
            ])
            .to_string();
        let syn: Vec<String> = if plastic && s.chance(1, 3) { vec!["v".into()] } else { vec![] };
        let block = if syn.is_empty() { String::new() } else { format!(" {{ v = {} }}", s.pick(&["0", "0.5"])) };
        let name = format!("W{i}");
        writeln!(
            out,
            "path {name}: {} -> {} init {init} {}{block}",
            c.pops[pre].name,
            c.pops[post].name,
            if plastic { "plastic" } else { "fixed" }
        )
        .unwrap();
        c.paths.push(Path { name, pre, post, plastic, syn });
    }
    // Phases.
    let nphases = 1 + s.below(3);
    let mut repeated = None;
    for ph in 0..nphases {
        let rep = if repeated.is_none() && s.chance(1, 5) {
            repeated = Some(ph);
            format!(" repeat {}", 1 + s.below(3))
        } else {
            String::new()
        };
        writeln!(out, "phase f{ph}{rep} {{").unwrap();
        let nst = 1 + s.below(6);
        for _ in 0..nst {
            statement(&mut s, &mut c, &mut out, "  ", 2);
        }
        writeln!(out, "}}").unwrap();
    }
    // Plasticity.
    let plastic: Vec<usize> = (0..c.paths.len()).filter(|&i| c.paths[i].plastic).collect();
    if !plastic.is_empty() {
        let sched = match s.below(6) {
            0 if repeated.is_some() => format!(" after f{}", repeated.unwrap()),
            1 => " every 2 steps".into(),
            _ => String::new(),
        };
        let mode = match s.below(4) {
            0 => " mean",
            1 => " sum",
            _ => "",
        };
        writeln!(out, "plasticity{sched}{mode} {{").unwrap();
        for _ in 0..1 + s.below(4) {
            let w = *s.pick(&plastic);
            let name = c.paths[w].name.clone();
            if uses_rules && s.chance(1, 4) {
                let post = c.role(&mut s, c.paths[w].post, "post");
                let pre = c.role(&mut s, c.paths[w].pre, "pre");
                match s.below(4) {
                    0 => writeln!(out, "  apply hebb(lr, {post}, {pre}) to {name}"),
                    1 => writeln!(out, "  apply oja(lr, {post}, {pre}) to {name}"),
                    2 => writeln!(out, "  apply delta(lr, {post}, {pre}) to {name}"),
                    _ => writeln!(out, "  apply clip_w(-1, 1) to {name}"),
                }
                .unwrap();
                continue;
            }
            let var = if !c.paths[w].syn.is_empty() && s.chance(1, 3) { "v" } else { "w" };
            let e = c.syn_expr(&mut s, w, 3);
            match s.below(5) {
                0 => writeln!(out, "  {name}.{var} = clip({name}.{var} + lr * {e}, -2, 2)"),
                1 => writeln!(out, "  {name}.{var} -= lr * {e}"),
                2 => writeln!(out, "  {name}.{var} *= {}", s.pick(&["0.99", "0.5", "1"])),
                _ => writeln!(out, "  {name}.{var} += lr * {e}"),
            }
            .unwrap();
        }
        writeln!(out, "}}").unwrap();
    }
    // Monitors.
    for i in 0..s.below(3) {
        let p = 1 + s.below(npops);
        if let Some(v) = c.readable(&mut s, p) {
            writeln!(out, "monitor m{i} = {}({v})", s.pick(&["mean", "sum", "max", "norm"])).unwrap();
        } else if !c.paths.is_empty() {
            let w = s.below(c.paths.len());
            writeln!(out, "monitor m{i} = mean({}.w)", c.paths[w].name).unwrap();
        }
    }
    let batch = *s.pick(&[1, 1, 2, 3, 4, 7]);
    writeln!(out, "experiment {{ data = none  steps = 1  epochs = 1  batch = {batch} }}").unwrap();
    Generated { text: out, batch }
}

/// One phase statement (an assignment, an update, an ODE, a `when`, or a signal).
fn statement(s: &mut Src, c: &mut Ctx, out: &mut String, indent: &str, depth: usize) {
    let npops = c.pops.len() - 1;
    let p = 1 + s.below(npops);
    let nv = c.pops[p].vars.len();
    let v = s.below(nv);
    let lhs = format!("{}.{}", c.pops[p].name, c.pops[p].vars[v].0);
    match s.below(10) {
        0 if depth > 0 => {
            let cond = c.neuron_expr(s, p, 2, false);
            writeln!(out, "{indent}when {cond} > 0 {{").unwrap();
            // Writes under `when` are conditional: do not count them as written.
            let saved = c.written.clone();
            let ssaved = c.signals.clone();
            statement_same(s, c, out, &format!("{indent}  "), p);
            c.written = saved.clone();
            c.signals = ssaved.clone();
            if s.chance(1, 2) {
                writeln!(out, "{indent}}} else {{").unwrap();
                statement_same(s, c, out, &format!("{indent}  "), p);
                c.written = saved;
                c.signals = ssaved;
            }
            writeln!(out, "{indent}}}").unwrap();
        }
        1 if c.has_dt && c.pops[p].vars[v].1 => {
            let e = c.neuron_expr(s, p, 3, false);
            writeln!(out, "{indent}d {lhs} / dt = -{lhs} + {e}").unwrap();
        }
        2 if !c.signals.is_empty() => {
            let i = s.below(c.signals.len());
            let e = c.scalar(s, 2);
            writeln!(out, "{indent}{} = {e}", c.signals[i].0).unwrap();
            c.signals[i].1 = true;
        }
        3 if c.written[p][v] => {
            let e = c.neuron_expr(s, p, 3, false);
            writeln!(out, "{indent}{lhs} {} {e}", s.pick(&["+=", "-=", "*="])).unwrap();
        }
        _ => {
            let e = c.neuron_expr(s, p, 3, false);
            writeln!(out, "{indent}{lhs} = {e}").unwrap();
            c.written[p][v] = true;
        }
    }
}

/// A plain assignment to a variable of population `p` (inside `when`, whose condition lives in
/// `p`'s space).
fn statement_same(s: &mut Src, c: &mut Ctx, out: &mut String, indent: &str, p: usize) {
    let v = s.below(c.pops[p].vars.len());
    let lhs = format!("{}.{}", c.pops[p].name, c.pops[p].vars[v].0);
    let e = c.neuron_expr(s, p, 2, false);
    writeln!(out, "{indent}{lhs} = {e}").unwrap();
    c.written[p][v] = true;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Most generated programs check clean (the rest are wasted executions of the fuzzer).
    #[test]
    fn most_programs_check_clean() {
        let mut clean = 0;
        let n = 2000;
        let mut x: u64 = 1;
        let mut errors = std::collections::BTreeMap::new();
        for _ in 0..n {
            let bytes: Vec<u8> = (0..300)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let g = generate(&bytes);
            let fe = circ_compiler::frontend::load_source("gen.circ", &g.text, &[]);
            if let Some(c) = fe.ok() {
                match circ_compiler::pipeline::lower(c, g.batch) {
                    Ok(_) => clean += 1,
                    Err(d) => {
                        *errors.entry(d[0].code.to_string()).or_insert(0) += 1;
                    }
                }
            } else {
                let d = fe.diags.iter().find(|d| d.is_error()).unwrap();
                let e = errors.entry(d.code.to_string()).or_insert(0);
                if *e == 0 {
                    eprintln!("{}\n{}", g.text, circ_compiler::diag::render_plain(&fe.diags, &fe.sources, 100));
                }
                *e += 1;
            }
        }
        eprintln!("{clean}/{n} clean; errors: {errors:?}");
        assert!(clean * 10 >= n * 6, "only {clean}/{n} generated programs compile");
    }
}
