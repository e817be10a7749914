//! Resolution and elaboration: AST to HIR.
//!
//! Input: the parsed root file, an [`Importer`] for `import` (relative files, then the
//! embedded standard library) and the `--set` overrides.
//! Output: a [`hir::Circuit`] (if no error prevented building one) and every diagnostic found.
//! Invariants: params are evaluated in declaration order with overrides applied; `for`/`if`
//! items and statements are unrolled with compile-time values, within limits checked before
//! anything is unrolled (a loop nest unrolls at most `MAX_UNROLL` copies, the product of its
//! loops' counts; all loops together `MAX_ITERATIONS`); `fn` and `rule` bodies are inlined at
//! each use with their own spans (the use site is kept in `Stmt::via` for rules; the root of an
//! inlined `fn` body takes the span of the call, so a diagnostic inside the body can name the
//! call that inlined it); recursion among `fn`s and `rule`s is reported, never followed; an
//! expression is bounded in size and depth once inlined, and a program in the work of building
//! it (`Resolver::expr`). A diagnostic found while expanding a `fn` or `rule` carries a label
//! at each call or `apply` that led there, and identical diagnostics (a family loop body
//! checked once per member) are reported once. Declarations are collected in passes
//! (rules/fns, params, populations, pathways, then bodies), so order in the file does not
//! matter except among params.

use crate::ast::{self, BinOp, ExprKind as A, Item, StmtKind as S, UnOp};
use crate::diag::{suggest, Diagnostic, FileId, Label, Sources, Span};
use crate::hir::*;
use crate::syntax;
use circ_runtime::episodes::MetaConfig;
use std::collections::{BTreeMap, HashMap, HashSet};

/// Loads the text of an imported file: `(importer's name, import string)` to
/// `(display name, text)`.
pub type Importer<'a> = dyn FnMut(&str, &str) -> Result<(String, String), ImportError> + 'a;

/// Why an import (or a root file) cannot be loaded, in words naming the file.
#[derive(Clone, Debug)]
pub enum ImportError {
    /// No such file, here or in the standard library.
    NotFound(String),
    /// It exists but is not a source file: not a regular file, too large, unreadable, not UTF-8.
    Unreadable(String),
}

impl std::fmt::Display for ImportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImportError::NotFound(m) | ImportError::Unreadable(m) => write!(f, "cannot read {m}"),
        }
    }
}

/// A `--set NAME=VALUE` from the command line.
#[derive(Clone, Debug)]
pub struct Override {
    pub name: String,
    pub value: OverrideValue,
}

/// The VALUE of `--set NAME=VALUE`: a number or bool (params, counts), or a name (the
/// experiment's `data`, `loss`, `readout`).
#[derive(Clone, Debug, PartialEq)]
pub enum OverrideValue {
    Value(Value),
    Name(String),
}

impl From<Value> for OverrideValue {
    fn from(v: Value) -> Self {
        OverrideValue::Value(v)
    }
}

impl std::fmt::Display for OverrideValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OverrideValue::Value(v) => write!(f, "{v}"),
            OverrideValue::Name(n) => write!(f, "`{n}`"),
        }
    }
}

/// Parses `--set NAME=VALUE`: VALUE is an integer, a float, a bool, or a name (letters,
/// digits, `_`, `.`, `-`, `/`, starting with a letter or `_`: `xor`, `o.a`, `mnist`).
pub fn parse_override(text: &str) -> Result<Override, String> {
    let (name, value) = text.split_once('=').ok_or_else(|| format!("`{text}` is not NAME=VALUE"))?;
    let name = name.trim().to_string();
    let v = value.trim();
    let value = if let Ok(i) = v.parse::<i64>() {
        Value::Int(i).into()
    } else if let Ok(f) = v.parse::<f64>() {
        if !f.is_finite() {
            return Err(format!("`{v}` is not a finite number"));
        }
        Value::Float(f).into()
    } else if v == "true" || v == "false" {
        Value::Bool(v == "true").into()
    } else if v.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && v.chars().all(|c| c.is_ascii_alphanumeric() || "_.-/".contains(c))
    {
        OverrideValue::Name(v.to_string())
    } else {
        return Err(format!("`{v}` is not a number, a bool or a name"));
    };
    Ok(Override { name, value })
}

/// Keys of the `experiment` block that `--set` may also override.
pub const EXPERIMENT_KEYS: &[&str] = &[
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
    "bptt_checkpoint",
    "episodes",
    "ways",
    "shots",
    "queries",
    "meta_lr",
    "meta_l1",
    "eval_episodes",
    "es_population",
    "es_sigma",
];

/// Columns of the metrics files that the run itself writes (runtime/src/driver.rs,
/// episodes.rs; `seed` names the run): no monitor may take one of these names.
const RESERVED_COLUMNS: &[&str] =
    &["step", "epoch", "seed", "train_loss", "train_acc", "test_loss", "test_acc", "train_seconds", "meta_loss", "meta_acc"];

/// The experiment settings of meta-learning runs.
const META_KEYS: &[&str] = &["episodes", "ways", "shots", "queries", "meta_lr", "meta_l1", "eval_episodes", "es_population", "es_sigma"];

/// Builtin names that `fn` calls resolve to (for "did you mean").
const BUILTIN_CALLS: &[&str] = &[
    "sum",
    "mean",
    "max",
    "min",
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
    "batch_mean",
    "cross_entropy",
    "mse",
    "angle",
    "symmetry",
    "spectral_radius",
    "effective_rank",
    "histogram",
    "grad",
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum EntityKind {
    Pop,
    Path,
}

#[derive(Clone, Debug)]
struct Entity {
    kind: EntityKind,
    single: Option<usize>,
    members: BTreeMap<i64, usize>,
    span: Span,
}

#[derive(Clone, Debug)]
enum Binding {
    Int(i64),
    Expr(Expr),
}

type Env = HashMap<String, Binding>;

/// An environment entry that marks declarations nested in an `if` (not an identifier).
const IN_BLOCK: &str = "<if>";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Ctx {
    /// Neuron equations in phases (and signal equations).
    Neuron,
    /// Synapse rules and effective weights of one pathway.
    Synapse(PathId),
    /// Monitors: may read anything.
    Monitor,
}

struct Resolver<'a> {
    sources: &'a mut Sources,
    importer: &'a mut Importer<'a>,
    diags: Vec<Diagnostic>,
    overrides: Vec<Override>,
    used_overrides: HashSet<String>,
    params: Vec<Param>,
    /// Shared, not cloned, at each inlined call.
    fns: HashMap<String, std::rc::Rc<ast::FnDecl>>,
    rules: HashMap<String, ast::RuleDecl>,
    entities: HashMap<String, Entity>,
    signals: Vec<Signal>,
    metas: Vec<Meta>,
    pops: Vec<Pop>,
    paths: Vec<Path>,
    phases: Vec<Phase>,
    plasticity: Vec<Plasticity>,
    monitors: Vec<Monitor>,
    experiment: Experiment,
    /// fn/rule names being expanded (recursion check).
    call_stack: Vec<String>,
    /// The calls and `apply`s being expanded, outermost first, as labels for diagnostics
    /// found inside the bodies.
    expansions: Vec<Label>,
    /// Diagnostics already reported, so a loop body does not report one per iteration.
    reported: HashSet<String>,
    /// Per-path pending `weight`/`mask` expressions, resolved once every pathway exists.
    pending_weights: Vec<(PathId, Option<ast::Expr>, Option<ast::Expr>, Env)>,
    /// The loops (families and `for` statements) being unrolled, outermost first: the span of
    /// each range and its number of iterations. Nested loops multiply.
    loops: Vec<(Span, u64)>,
    /// Iterations of `for` items unrolled in the current declaration pass (each pass walks the
    /// same items, so each makes the same decisions), and of `for` statements in all.
    item_iterations: u64,
    stmt_iterations: u64,
    /// Size accounting of the expression being resolved (see [`Resolver::expr`]): the nesting
    /// depth of `expr` calls, the nodes of the current top-level expression, the nodes built
    /// or copied in all, the outermost `fn` call being inlined, and the diagnostic once a limit
    /// is passed.
    expr_depth: usize,
    expr_nodes: usize,
    work: usize,
    inline_site: Option<(Span, String)>,
    stopped: bool,
    oversized: Option<Diagnostic>,
    total_reported: bool,
}

/// Most nodes one expression may have after inlining `fn`s (a parsed expression has at most
/// 4096 operands; a fn that calls another twice doubles at every level).
const MAX_EXPR_NODES: usize = 100_000;
/// Deepest nesting of one expression after inlining: a parsed expression can be a chain of
/// 4096 operands, and the passes after resolution (and resolution itself, about 1 KB of stack
/// per level) recurse, on an 8 MB stack in the fuzzers and 256 MB in `circ`.
const MAX_EXPR_DEPTH: usize = syntax::MAX_OPERANDS + 512;
/// Most expression nodes built or copied for a whole program, after unrolling and inlining:
/// arguments that a fn discards or copies are work too.
const MAX_WORK: usize = 4_000_000;

/// Most copies one loop nest may unroll (the product of its loops' iteration counts).
const MAX_UNROLL: u64 = 100_000;
/// Most iterations all loops together may unroll (of families per pass, of statements in all).
const MAX_ITERATIONS: u64 = 1_000_000;

/// Resolves a parsed root file into a circuit.
pub fn resolve(
    sources: &mut Sources,
    root: FileId,
    program: ast::Program,
    importer: &mut Importer<'_>,
    overrides: &[Override],
) -> (Option<Circuit>, Vec<Diagnostic>) {
    let mut r = Resolver {
        sources,
        importer,
        diags: Vec::new(),
        overrides: overrides.to_vec(),
        used_overrides: HashSet::new(),
        params: Vec::new(),
        fns: HashMap::new(),
        rules: HashMap::new(),
        entities: HashMap::new(),
        signals: Vec::new(),
        metas: Vec::new(),
        pops: Vec::new(),
        paths: Vec::new(),
        phases: Vec::new(),
        plasticity: Vec::new(),
        monitors: Vec::new(),
        experiment: Experiment::default(),
        call_stack: Vec::new(),
        expansions: Vec::new(),
        reported: HashSet::new(),
        pending_weights: Vec::new(),
        loops: Vec::new(),
        item_iterations: 0,
        stmt_iterations: 0,
        expr_depth: 0,
        expr_nodes: 0,
        work: 0,
        inline_site: None,
        stopped: false,
        oversized: None,
        total_reported: false,
    };
    let circuit = r.run(root, program);
    (circuit, r.diags)
}

impl Resolver<'_> {
    fn err(&mut self, mut d: Diagnostic) {
        for l in &self.expansions {
            d.secondary.push(l.clone());
        }
        let key = format!("{}|{:?}|{}|{:?}", d.code, d.span, d.message, d.secondary.iter().map(|l| l.span).collect::<Vec<_>>());
        if self.reported.insert(key) {
            self.diags.push(d);
        }
    }

    fn run(&mut self, root: FileId, program: ast::Program) -> Option<Circuit> {
        let file_start = Span::new(root, 0, 0);
        let (name, claim) = match &program.circuit {
            Some(c) => (c.name.name.clone(), self.claim(c)),
            None => {
                let fname = self.sources.file(root).name.clone();
                let stem = std::path::Path::new(&fname).file_stem().and_then(|s| s.to_str()).unwrap_or("circuit").to_string();
                (stem, None)
            }
        };
        let head_span = program.circuit.as_ref().map(|c| c.span).unwrap_or(file_start);

        // Imports first: their items come before the file's own.
        let mut items = Vec::new();
        let mut loaded = HashSet::new();
        loaded.insert(self.sources.file(root).name.clone());
        self.collect_items(root, program.items, &mut items, &mut loaded, 0);

        // Pass 0: fns and rules (top level only).
        for it in &items {
            match it {
                Item::Fn(f) => {
                    if let Some(prev) = self.fns.get(&f.name.name) {
                        let d = Diagnostic::error("circ::name::duplicate", f.name.span, format!("`{}` is defined twice", f.name.name))
                            .label("second definition")
                            .with(prev.name.span, "first definition")
                            .help("rename one of them");
                        self.err(d);
                    } else {
                        self.fns.insert(f.name.name.clone(), std::rc::Rc::new(f.clone()));
                    }
                }
                Item::Rule(rd) => {
                    if let Some(prev) = self.rules.get(&rd.name.name) {
                        let d =
                            Diagnostic::error("circ::name::duplicate", rd.name.span, format!("rule `{}` is defined twice", rd.name.name))
                                .label("second definition")
                                .with(prev.name.span, "first definition")
                                .help("rename one of them");
                        self.err(d);
                    } else {
                        self.rules.insert(rd.name.name.clone(), rd.clone());
                    }
                }
                _ => {}
            }
        }
        // Pass 1: params in order (top level only).
        for it in &items {
            if let Item::Param { name, ty, value, span } = it {
                self.param(name, ty.as_ref(), value, *span);
            }
        }
        // `--set` names that are neither params nor experiment keys.
        let known: Vec<String> = self.params.iter().map(|p| p.name.clone()).collect();
        for o in self.overrides.clone() {
            if !known.contains(&o.name) && !EXPERIMENT_KEYS.contains(&o.name.as_str()) {
                let mut cands: Vec<&str> = known.iter().map(|s| s.as_str()).collect();
                cands.extend(EXPERIMENT_KEYS);
                let mut d = Diagnostic::error(
                    "circ::cli::unknown_param",
                    head_span,
                    format!("`--set {}`: this circuit has no param `{}`", o.name, o.name),
                )
                .label("in this circuit");
                d = match suggest(&o.name, cands.iter().copied()) {
                    Some(s) => d.help(format!("did you mean `{s}`?")),
                    None => d.help(format!("params: {}", if known.is_empty() { "(none)".into() } else { known.join(", ") })),
                };
                self.err(d);
            }
        }
        let env = Env::new();
        // Pass 2: populations, signals, metas.
        self.declare_pass(&items, &env, 2);
        // Pass 3: pathways.
        self.item_iterations = 0;
        self.declare_pass(&items, &env, 3);
        // Effective weights and masks may name any pathway.
        for (pid, mask, weight, wenv) in std::mem::take(&mut self.pending_weights) {
            self.path_weight(pid, mask.as_ref(), weight.as_ref(), &wenv);
        }
        // Pass 4: phases, plasticity, monitors, experiment.
        self.item_iterations = 0;
        self.declare_pass(&items, &env, 4);

        let mut f64 = false;
        for it in &items {
            if let Item::Precision { value, .. } = it {
                f64 = value.name == "f64";
            }
        }
        let mut experiment = std::mem::take(&mut self.experiment);
        self.apply_experiment_overrides(&mut experiment, head_span);
        Some(Circuit {
            name,
            claim,
            params: std::mem::take(&mut self.params),
            metas: std::mem::take(&mut self.metas),
            signals: std::mem::take(&mut self.signals),
            pops: std::mem::take(&mut self.pops),
            paths: std::mem::take(&mut self.paths),
            phases: std::mem::take(&mut self.phases),
            plasticity: std::mem::take(&mut self.plasticity),
            monitors: std::mem::take(&mut self.monitors),
            histories: Vec::new(),
            experiment,
            f64,
        })
    }

    fn claim(&mut self, c: &ast::CircuitDecl) -> Option<(Tier, Span)> {
        let mut tier: Option<Tier> = None;
        for t in &c.tiers {
            let one = match t.name.as_str() {
                "synapse" => Tier::Synapse,
                "neuron" => Tier::Neuron,
                "population" => Tier::Population,
                "projection" => Tier::Projection,
                _ => Tier::NonLocal,
            };
            tier = Some(match tier {
                Some(x) => x.join(one),
                None => one,
            });
        }
        let span = match (c.tiers.first(), c.tiers.last()) {
            (Some(a), Some(b)) => a.span.to(b.span),
            _ => c.span,
        };
        tier.map(|t| (t, span))
    }

    /// Flattens imports (depth-first, each file once) into `out`.
    fn collect_items(&mut self, file: FileId, items: Vec<Item>, out: &mut Vec<Item>, loaded: &mut HashSet<String>, depth: usize) {
        for it in items {
            if let Item::Import { path, span } = &it {
                if depth > 32 {
                    self.err(
                        Diagnostic::error("circ::import::too_deep", *span, "imports nested more than 32 deep")
                            .label("the 33rd import of a chain")
                            .help("imports form a chain that is too long; check for generated import loops"),
                    );
                    continue;
                }
                let importer_name = self.sources.file(file).name.clone();
                match (self.importer)(&importer_name, path) {
                    Ok((name, text)) => {
                        if !loaded.insert(name.clone()) {
                            continue; // Already imported (or the root itself): import once.
                        }
                        let fid = self.sources.add(name, text.clone());
                        match syntax::parse(fid, &text) {
                            Ok(p) => {
                                if let Some(c) = &p.circuit {
                                    let _ = c; // An imported file's own circuit header is ignored.
                                }
                                self.collect_items(fid, p.items, out, loaded, depth + 1);
                            }
                            Err(d) => self.err(d),
                        }
                    }
                    Err(ImportError::NotFound(msg)) => {
                        let d = Diagnostic::error("circ::import::not_found", *span, format!("cannot import \"{path}\""))
                            .label(msg)
                            .help("imports are found relative to the importing file, then in the standard library (`circ std` lists it)");
                        self.err(d);
                    }
                    Err(ImportError::Unreadable(msg)) => {
                        let d = Diagnostic::error("circ::import::unreadable", *span, format!("cannot import \"{path}\""))
                            .label(msg)
                            .help("an import names a circ source file: a regular file of UTF-8 text, at most 8 MiB");
                        self.err(d);
                    }
                }
                continue;
            }
            out.push(it);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Params and constants

    fn param(&mut self, name: &ast::Ident, ty: Option<&ast::Ident>, value: &ast::Expr, span: Span) {
        if let Some(prev) = self.params.iter().find(|p| p.name == name.name) {
            let d = Diagnostic::error("circ::name::duplicate", name.span, format!("param `{}` is declared twice", name.name))
                .label("second declaration")
                .with(prev.span, "first declaration")
                .help("remove one of them, or override the value with `--set`");
            self.err(d);
            return;
        }
        let env = Env::new();
        let default = self.const_eval(value, &env);
        let mut overridden = false;
        let mut v = default.unwrap_or(Value::Float(0.0));
        if let Some(o) = self.overrides.iter().find(|o| o.name == name.name).cloned() {
            self.used_overrides.insert(name.name.clone());
            match o.value {
                OverrideValue::Value(x) => {
                    v = x;
                    overridden = true;
                }
                OverrideValue::Name(n) => {
                    let d = Diagnostic::error(
                        "circ::cli::bad_value",
                        name.span,
                        format!("`--set {}={n}`: param `{}` takes a number or a bool, not a name", name.name, name.name),
                    )
                    .label("the param the override sets")
                    .help(format!("give a value like its default: `--set {}={}`", name.name, v));
                    self.err(d);
                }
            }
        }
        if let Some(ty) = ty {
            v = match (ty.name.as_str(), v) {
                ("int", Value::Int(i)) => Value::Int(i),
                ("int", Value::Float(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Value::Int(f as i64),
                ("float", x @ (Value::Int(_) | Value::Float(_))) => Value::Float(x.as_f64()),
                ("bool", Value::Bool(b)) => Value::Bool(b),
                ("bool", Value::Int(i)) if i == 0 || i == 1 => Value::Bool(i == 1),
                (t, x) => {
                    let d = Diagnostic::error(
                        "circ::type::param",
                        if overridden { name.span } else { value.span },
                        format!(
                            "param `{}` is declared {t} but {} {x} is a {}",
                            name.name,
                            if overridden { "the override" } else { "its value" },
                            x.type_name()
                        ),
                    )
                    .label(format!("expected {t}"))
                    .with(ty.span, "declared type")
                    .help(format!("give {} value", with_article(t)));
                    self.err(d);
                    x
                }
            };
        }
        self.params.push(Param { name: name.name.clone(), value: v, span, overridden });
    }

    fn find_param(&self, name: &str) -> Option<Value> {
        self.params.iter().find(|p| p.name == name).map(|p| p.value)
    }

    /// Evaluates a compile-time constant. Reports and returns None when it is not one.
    fn const_eval(&mut self, e: &ast::Expr, env: &Env) -> Option<Value> {
        match self.try_const(e, env) {
            Ok(v) => Some(v),
            Err(ConstError::NotConst(span, why)) => {
                let d = Diagnostic::error("circ::type::not_const", span, format!("expected a compile-time constant: {why}"))
                    .label("not a constant")
                    .help("sizes, loop bounds, conditions of `if` and params must be computed from numbers, params and loop indices");
                self.err(d);
                None
            }
            Err(ConstError::DivZero(divisor)) => {
                let d = Diagnostic::error("circ::type::div_zero", divisor, "division by zero in a compile-time constant")
                    .label("this divisor is 0")
                    .help("give the divisor a value other than 0 (a param's value can be changed with `--set NAME=VALUE`)");
                self.err(d);
                None
            }
            Err(ConstError::Overflow(span)) => {
                let d = Diagnostic::error("circ::type::overflow", span, "a compile-time constant overflows")
                    .label("too large for a 64-bit number")
                    .help("constants are 64-bit integers (up to about 9.2e18) or floats (up to about 1.8e308)");
                self.err(d);
                None
            }
        }
    }

    fn try_const(&self, e: &ast::Expr, env: &Env) -> Result<Value, ConstError> {
        let not_const = |why: String| ConstError::NotConst(e.span, why);
        // Explicit stack evaluation would be overkill: nesting is bounded by the parser's
        // MAX_NESTING and operand count, so recursion depth is bounded too.
        match &e.kind {
            A::Number { value, int, .. } => {
                if *int && *value <= i64::MAX as f64 {
                    Ok(Value::Int(*value as i64))
                } else {
                    Ok(Value::Float(*value))
                }
            }
            A::Bool(b) => Ok(Value::Bool(*b)),
            A::Str(_) => Err(not_const("a string".into())),
            A::Ref { entity, field: None } if entity.index.is_none() => {
                let n = &entity.name.name;
                match env.get(n) {
                    Some(Binding::Int(i)) => return Ok(Value::Int(*i)),
                    Some(Binding::Expr(x)) => {
                        if let ExprKind::Const(c) = x.kind {
                            return Ok(Value::Float(c));
                        }
                        return Err(not_const(format!("`{n}` is not a constant here")));
                    }
                    None => {}
                }
                if let Some(v) = self.find_param(n) {
                    return Ok(v);
                }
                Err(not_const(format!("`{n}` is not a param or loop index")))
            }
            A::Ref { .. } => Err(not_const("a variable reference".into())),
            A::Unary { op, expr } => {
                let v = self.try_const(expr, env)?;
                Ok(match (op, v) {
                    (UnOp::Neg, Value::Int(i)) => Value::Int(i.checked_neg().ok_or(ConstError::Overflow(e.span))?),
                    (UnOp::Neg, x) => Value::Float(-x.as_f64()),
                    (UnOp::Not, x) => Value::Bool(x.as_f64() == 0.0),
                })
            }
            A::Binary { op, lhs, rhs } => {
                let a = self.try_const(lhs, env)?;
                let b = self.try_const(rhs, env)?;
                if matches!(op, BinOp::Div | BinOp::Rem) && b.as_f64() == 0.0 {
                    return Err(ConstError::DivZero(rhs.span));
                }
                // With a non-zero divisor, folding fails only on overflow (a checked integer
                // operation, or a float result that is not finite).
                const_binop(*op, a, b).ok_or(ConstError::Overflow(e.span))
            }
            A::Call { callee, index: None, transpose: false, args } => {
                let f = callee.name.as_str();
                if f == "size" && args.len() == 1 {
                    if let A::Ref { entity, field: None } = &args[0].kind {
                        if let Ok(Some(p)) = self.lookup_pop_quiet(entity, env) {
                            return Ok(Value::Int(self.pops[p].size as i64));
                        }
                    }
                    return Err(not_const("size() takes a population".into()));
                }
                let vals: Result<Vec<f64>, _> = args.iter().map(|a| self.try_const(a, env).map(|v| v.as_f64())).collect();
                let v = vals?;
                let r = match (f, v.as_slice()) {
                    ("sqrt", [x]) => x.sqrt(),
                    ("exp", [x]) => x.exp(),
                    ("log", [x]) => x.ln(),
                    ("abs", [x]) => x.abs(),
                    ("floor", [x]) => x.floor(),
                    ("ceil", [x]) => x.ceil(),
                    ("round", [x]) => x.round(),
                    ("min", [x, y]) => x.min(*y),
                    ("max", [x, y]) => x.max(*y),
                    ("pow", [x, y]) => x.powf(*y),
                    _ => return Err(not_const(format!("`{f}` cannot be computed at compile time"))),
                };
                if !r.is_finite() {
                    return Err(not_const(format!("`{f}` of these arguments is not a finite number")));
                }
                if ["floor", "ceil", "round"].contains(&f) && r.abs() < 9.0e15 {
                    return Ok(Value::Int(r as i64));
                }
                Ok(Value::Float(r))
            }
            A::Call { .. } => Err(not_const("a call".into())),
        }
    }

    fn const_int(&mut self, e: &ast::Expr, env: &Env, what: &str) -> Option<i64> {
        let v = self.const_eval(e, env)?;
        match v {
            Value::Int(i) => Some(i),
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Some(f as i64),
            // A whole number too large for an integer (a literal past i64, or float arithmetic).
            Value::Float(f) if f.fract() == 0.0 => {
                let d = Diagnostic::error("circ::type::int_range", e.span, format!("{what} is out of range: {v}"))
                    .label("too large for an integer")
                    .help("integers here must lie within ±9e15");
                self.err(d);
                None
            }
            _ => {
                let d = Diagnostic::error("circ::type::not_int", e.span, format!("{what} must be an integer, found {v}"))
                    .label("not an integer")
                    .help("use an int param or an integer literal");
                self.err(d);
                None
            }
        }
    }

    fn size(&mut self, e: &ast::Expr, env: &Env) -> Option<usize> {
        // A whole number too large for an integer is a size out of range, not a non-integer.
        let n = match self.try_const(e, env) {
            Ok(Value::Float(f)) if f.fract() == 0.0 && f.abs() >= 9.0e15 => Value::Float(f),
            _ => Value::Int(self.const_int(e, env, "a size")?),
        };
        match n {
            Value::Int(i) if i > 0 && i <= 1 << 31 => Some(i as usize),
            _ => {
                let from_cli: Vec<String> = self
                    .overridden_params_in(e)
                    .iter()
                    .map(|p| format!("`{}` is {} from `--set {}={}`", p.name, p.value, p.name, p.value))
                    .collect();
                let help = if from_cli.is_empty() {
                    "a size is a whole number from 1 to 2^31 (2147483648); check the number or the params it is computed from".to_string()
                } else {
                    format!("{}; a size is a whole number from 1 to 2^31 (2147483648)", from_cli.join(", "))
                };
                let d = Diagnostic::error("circ::shape::bad_size", e.span, format!("size {n} is out of range"))
                    .label("sizes must be between 1 and 2^31")
                    .help(help);
                self.err(d);
                None
            }
        }
    }

    /// The params read by a constant expression whose value came from `--set`.
    fn overridden_params_in(&self, e: &ast::Expr) -> Vec<Param> {
        let mut out: Vec<Param> = Vec::new();
        let mut stack = vec![e];
        while let Some(x) = stack.pop() {
            match &x.kind {
                A::Ref { entity, field: None } if entity.index.is_none() => {
                    if let Some(p) = self.params.iter().find(|p| p.overridden && p.name == entity.name.name) {
                        if !out.iter().any(|q| q.name == p.name) {
                            out.push(p.clone());
                        }
                    }
                }
                A::Unary { expr, .. } => stack.push(expr),
                A::Binary { lhs, rhs, .. } => stack.extend([&**lhs, &**rhs]),
                A::Call { args, .. } => stack.extend(args.iter()),
                _ => {}
            }
        }
        out
    }

    // -----------------------------------------------------------------------------------------
    // Loops

    /// The values a loop `lo..hi` (a family when `family`, else a `for` statement) unrolls, or
    /// None when it would pass a limit: more than [`MAX_UNROLL`] copies counting the loops it
    /// is nested in, or more than [`MAX_ITERATIONS`] iterations in all. The count is computed
    /// before any value is collected (a bound of 2^31 must not allocate 16 GiB first).
    fn unroll(&mut self, lo: i64, hi: i64, reverse: bool, range: Span, family: bool, report: bool) -> Option<Vec<i64>> {
        let count = if hi < lo { 0 } else { u64::try_from(i128::from(hi) - i128::from(lo) + 1).unwrap_or(u64::MAX) };
        let outer = self.loops.iter().fold(1u64, |p, (_, n)| p.saturating_mul(*n));
        let (what, one) = if family { ("families", "member") } else { ("loops", "iteration") };
        let err = if count > MAX_UNROLL {
            let msg = if family { format!("a family of {count} members") } else { format!("a loop of {count} iterations") };
            Some(
                Diagnostic::error("circ::shape::loop_too_long", range, msg)
                    .label(format!("one {one} per value"))
                    .help(format!("{what} are unrolled at compile time; keep each within {MAX_UNROLL} {one}s")),
            )
        } else if outer.saturating_mul(count) > MAX_UNROLL {
            let mut d = Diagnostic::error(
                "circ::shape::loop_too_long",
                range,
                format!(
                    "nested loops unroll {} = {} copies of their body",
                    self.loops.iter().map(|(_, n)| n.to_string()).chain([count.to_string()]).collect::<Vec<_>>().join(" × "),
                    outer.saturating_mul(count)
                ),
            )
            .label(format!("{count} {one}s"));
            for (span, n) in self.loops.clone() {
                d = d.with(span, format!("inside a loop of {n}"));
            }
            Some(d.help(format!(
                "loops and families are unrolled at compile time, and nested ones multiply: together they must stay within {MAX_UNROLL} copies"
            )))
        } else {
            let done = if family { &mut self.item_iterations } else { &mut self.stmt_iterations };
            *done += count;
            (*done > MAX_ITERATIONS).then(|| {
                Diagnostic::error(
                    "circ::shape::loop_too_long",
                    range,
                    format!("the {what} of this program unroll more than {MAX_ITERATIONS} {one}s in all"),
                )
                .label("this loop passes the limit")
                .help(format!("loops and families are unrolled at compile time: at most {MAX_ITERATIONS} iterations in all"))
            })
        };
        if let Some(d) = err {
            if report {
                self.err(d);
            }
            return None;
        }
        Some(if reverse { (lo..=hi).rev().collect() } else { (lo..=hi).collect() })
    }

    // -----------------------------------------------------------------------------------------
    // Declaration passes

    fn declare_pass(&mut self, items: &[Item], env: &Env, pass: u8) {
        for it in items {
            match it {
                Item::For { var, reverse, lo, hi, items, .. } => {
                    let range = lo.span.to(hi.span);
                    // Bounds are evaluated (and reported) once, in pass 2.
                    let (lo, hi) = if pass == 2 {
                        (self.const_int(lo, env, "a loop bound"), self.const_int(hi, env, "a loop bound"))
                    } else {
                        (self.try_const(lo, env).ok().map(|v| v.as_f64() as i64), self.try_const(hi, env).ok().map(|v| v.as_f64() as i64))
                    };
                    let (Some(lo), Some(hi)) = (lo, hi) else {
                        continue;
                    };
                    // Limits are reported once, in pass 2; later passes skip the same loops.
                    let Some(values) = self.unroll(lo, hi, *reverse, range, true, pass == 2) else {
                        continue;
                    };
                    self.loops.push((range, values.len() as u64));
                    for i in values {
                        let mut e2 = env.clone();
                        e2.insert(var.name.clone(), Binding::Int(i));
                        self.declare_pass(items, &e2, pass);
                    }
                    self.loops.pop();
                }
                Item::If { cond, then, els, .. } => {
                    let c = if pass == 2 { self.const_eval(cond, env) } else { self.try_const(cond, env).ok() };
                    let Some(c) = c else { continue };
                    // Params, fns and rules are collected from the top level only, so one
                    // inside an `if` must be refused like one inside a `for` (below); the
                    // marker makes the environment non-empty, and no name can match it.
                    let mut inner = env.clone();
                    inner.insert(IN_BLOCK.into(), Binding::Int(0));
                    if c.as_f64() != 0.0 {
                        self.declare_pass(then, &inner, pass);
                    } else {
                        self.declare_pass(els, &inner, pass);
                    }
                }
                Item::Param { span, .. } if pass == 2 && !env.is_empty() => {
                    let d = Diagnostic::error("circ::name::param_in_loop", *span, "params must be declared at the top level")
                        .label("inside a `for` or `if`")
                        .help("move the param out of the `for`/`if`; params are global constants");
                    self.err(d);
                }
                Item::Fn(f) if pass == 2 && !env.is_empty() => {
                    let d = Diagnostic::error("circ::name::def_in_loop", f.span, "fns must be defined at the top level")
                        .label("inside a `for` or `if`")
                        .help("move the definition out of the `for`/`if`");
                    self.err(d);
                }
                Item::Rule(r) if pass == 2 && !env.is_empty() => {
                    let d = Diagnostic::error("circ::name::def_in_loop", r.span, "rules must be defined at the top level")
                        .label("inside a `for` or `if`")
                        .help("move the definition out of the `for`/`if`");
                    self.err(d);
                }
                Item::Signal { name, state, init, span } if pass == 2 => {
                    let init = match init {
                        Some(e) => self.const_eval(e, env).map(|v| v.as_f64()).unwrap_or(0.0),
                        None => 0.0,
                    };
                    if self.name_taken(&name.name, name.span) {
                        continue;
                    }
                    self.signals.push(Signal { name: name.name.clone(), state: *state, init, span: *span });
                }
                Item::Meta { name, value, span } if pass == 2 => {
                    let init = self.const_eval(value, env).map(|v| v.as_f64()).unwrap_or(0.0);
                    if self.name_taken(&name.name, name.span) {
                        continue;
                    }
                    self.metas.push(Meta { name: name.name.clone(), init, span: *span });
                }
                Item::Input { head, span } if pass == 2 => self.declare_pop(head, &[], PopKind::Input, *span, env),
                Item::Target { head, root, span } if pass == 2 => {
                    // The root is linked in pass 3, when every population exists.
                    let _ = root;
                    self.declare_pop(head, &[], PopKind::Target { root: usize::MAX }, *span, env)
                }
                Item::Pop { head, vars, span } if pass == 2 => self.declare_pop(head, vars, PopKind::Neurons, *span, env),
                Item::Target { head, root, .. } if pass == 3 => {
                    let Some(me) = self.member_id(&head.name, head.index.as_ref(), env) else {
                        continue;
                    };
                    if let Some(r) = self.lookup_pop(root, env) {
                        if matches!(self.pops[r].kind, PopKind::Input | PopKind::Target { .. }) {
                            let d = Diagnostic::error(
                                "circ::name::bad_root",
                                root.span,
                                format!(
                                    "the root of a target must be a population of neurons; `{}` is clamped from data",
                                    self.pops[r].name
                                ),
                            )
                            .label("clamped population")
                            .help("attach the target to the output population: `target y[10] at o`");
                            self.err(d);
                        } else if self.pops[r].size != self.pops[me].size {
                            let d = Diagnostic::error(
                                "circ::shape::mismatch",
                                root.span,
                                format!(
                                    "target `{}` has {} values but its root `{}` has {} neurons",
                                    self.pops[me].name, self.pops[me].size, self.pops[r].name, self.pops[r].size
                                ),
                            )
                            .label(format!("{} neurons", self.pops[r].size))
                            .with(head.size.span, format!("{} values", self.pops[me].size))
                            .help("a target and its root population must have the same size");
                            self.err(d);
                        }
                        self.pops[me].kind = PopKind::Target { root: r };
                    }
                }
                Item::Path(p) if pass == 3 => self.declare_path(p, env),
                Item::Phase(ph) if pass == 4 => self.phase(ph, env),
                Item::Plasticity(pl) if pass == 4 => self.plasticity_block(pl, env),
                Item::Monitor { name, expr, span } if pass == 4 => {
                    if !self.monitor_name_ok(name) {
                        continue;
                    }
                    if let Some(e) = self.expr(expr, env, Ctx::Monitor) {
                        self.monitors.push(Monitor { name: name.name.clone(), expr: e, span: *span });
                    }
                }
                Item::Experiment { entries, span } if pass == 4 => self.experiment_block(entries, *span, env),
                _ => {}
            }
        }
    }

    /// A monitor's name becomes a column of the metrics files: it must not be one the run
    /// writes itself, a meta-param (meta-learning runs record those by name) or another monitor.
    fn monitor_name_ok(&mut self, name: &ast::Ident) -> bool {
        let n = name.name.as_str();
        if RESERVED_COLUMNS.contains(&n) || self.metas.iter().any(|m| m.name == n) {
            let what =
                if RESERVED_COLUMNS.contains(&n) { "reserved for the run's own records" } else { "a meta-param, recorded by that name" };
            let d = Diagnostic::error("circ::name::reserved_monitor", name.span, format!("a monitor cannot be named `{n}`"))
                .label(format!("`{n}` is {what}"))
                .help(format!(
                    "rename the monitor (e.g. `{n}_value`): monitors become columns of the metrics files, beside the run's own ({})",
                    RESERVED_COLUMNS.join(", ")
                ));
            self.err(d);
            return false;
        }
        if let Some(prev) = self.monitors.iter().find(|m| m.name == n) {
            let d = Diagnostic::error("circ::name::duplicate", name.span, format!("monitor `{n}` is declared twice"))
                .label("second declaration")
                .with(prev.span, "first declaration")
                .help("each monitor is a column of the metrics files: give each its own name");
            self.err(d);
            return false;
        }
        true
    }

    /// Reports a clash between a new global name and an existing one.
    fn name_taken(&mut self, name: &str, span: Span) -> bool {
        let prev = self
            .signals
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.span)
            .or_else(|| self.metas.iter().find(|m| m.name == name).map(|m| m.span))
            .or_else(|| self.params.iter().find(|p| p.name == name).map(|p| p.span))
            .or_else(|| self.entities.get(name).map(|e| e.span));
        if let Some(prev) = prev {
            let d = Diagnostic::error("circ::name::duplicate", span, format!("`{name}` is declared twice"))
                .label("second declaration")
                .with(prev, "first declaration")
                .help("every param, signal, population and pathway needs its own name");
            self.err(d);
            return true;
        }
        false
    }

    /// Registers an entity (single or family member) and returns false on a clash.
    fn register(&mut self, kind: EntityKind, name: &ast::Ident, index: Option<i64>, id: usize) -> bool {
        let clash_global = self.params.iter().any(|p| p.name == name.name)
            || self.signals.iter().any(|s| s.name == name.name)
            || self.metas.iter().any(|m| m.name == name.name);
        if clash_global {
            self.name_taken(&name.name, name.span);
            return false;
        }
        // `W(x)` would transmit through the pathway and the fn could never be called. The
        // pathway is still declared, so its uses resolve and report nothing more.
        if let (EntityKind::Path, Some(f)) = (kind, self.fns.get(&name.name)) {
            let d = Diagnostic::error("circ::name::duplicate", name.span, format!("`{}` names both a fn and a pathway", name.name))
                .label("pathway declared here")
                .with(f.name.span, "fn defined here")
                .help(format!("rename one of them: `{}(x)` transmits through the pathway, so the fn is never called", name.name));
            self.err(d);
        }
        match self.entities.get_mut(&name.name) {
            None => {
                let mut e = Entity { kind, single: None, members: BTreeMap::new(), span: name.span };
                match index {
                    Some(i) => {
                        e.members.insert(i, id);
                    }
                    None => e.single = Some(id),
                }
                self.entities.insert(name.name.clone(), e);
                true
            }
            Some(e) => {
                let prev = e.span;
                let ok = e.kind == kind && e.single.is_none() && index.is_some() && !e.members.contains_key(&index.unwrap_or(0));
                if ok {
                    e.members.insert(index.unwrap_or(0), id);
                    return true;
                }
                let what = match index {
                    Some(i) => format!("`{}[{i}]` is declared twice", name.name),
                    None => format!("`{}` is declared twice", name.name),
                };
                let d = Diagnostic::error("circ::name::duplicate", name.span, what)
                    .label("second declaration")
                    .with(prev, "first declaration")
                    .help("every population and pathway needs its own name (or its own index in a family)");
                self.err(d);
                false
            }
        }
    }

    fn display_name(name: &str, index: Option<i64>) -> String {
        match index {
            Some(i) => format!("{name}[{i}]"),
            None => name.to_string(),
        }
    }

    fn declare_pop(&mut self, head: &ast::EntityHead, vars: &[ast::VarDecl], kind: PopKind, span: Span, env: &Env) {
        let index = match &head.index {
            Some(i) => match self.const_int(i, env, "a family index") {
                Some(v) => Some(v),
                None => return,
            },
            None => None,
        };
        // A size that is out of range is reported, and the population declared anyway (with
        // one neuron) so that its every use does not report an unknown name as well.
        let size = self.size(&head.size, env).unwrap_or(1);
        let id = self.pops.len();
        if !self.register(EntityKind::Pop, &head.name, index, id) {
            return;
        }
        let name = Self::display_name(&head.name.name, index);
        let mut hv: Vec<Var> = Vec::new();
        let mut out = None;
        match kind {
            PopKind::Input | PopKind::Target { .. } => {
                hv.push(Var { name: head.name.name.clone(), state: false, init: 0.0, span: head.name.span });
                out = Some(0);
            }
            PopKind::Neurons => {
                for v in vars {
                    if let Some(prev) = hv.iter().find(|x| x.name == v.name.name) {
                        let d = Diagnostic::error(
                            "circ::name::duplicate",
                            v.name.span,
                            format!("variable `{}` is declared twice in `{name}`", v.name.name),
                        )
                        .label("second declaration")
                        .with(prev.span, "first declaration")
                        .help("give each per-neuron variable its own name");
                        self.err(d);
                        continue;
                    }
                    let init = match &v.init {
                        Some(e) => self.const_eval(e, env).map(|x| x.as_f64()).unwrap_or(0.0),
                        None => 0.0,
                    };
                    if v.init.is_some() && !v.state {
                        let d = Diagnostic::warning(
                            "circ::check::init_unused",
                            v.span,
                            format!("`{}` has an initial value but is not `state`", v.name.name),
                        )
                        .label("reset every step")
                        .help(format!("write `state {}` to carry it from step to step", v.name.name));
                        self.err(d);
                    }
                    if v.out {
                        if let Some(o) = out {
                            let prev: &Var = &hv[o];
                            let d = Diagnostic::error("circ::name::two_outputs", v.span, format!("`{name}` marks two variables `out`"))
                                .label("second `out`")
                                .with(prev.span, "first `out`")
                                .help("a population has one output variable: the one `W(h)` and `pre` mean");
                            self.err(d);
                        } else {
                            out = Some(hv.len());
                        }
                    }
                    hv.push(Var { name: v.name.name.clone(), state: v.state, init, span: v.name.span });
                }
                if out.is_none() && hv.len() == 1 {
                    out = Some(0);
                }
            }
        }
        self.pops.push(Pop { name, size, kind, vars: hv, out, span, name_span: head.name.span });
    }

    fn declare_path(&mut self, p: &ast::PathDecl, env: &Env) {
        let index = match &p.index {
            Some(i) => match self.const_int(i, env, "a family index") {
                Some(v) => Some(v),
                None => return,
            },
            None => None,
        };
        let pre = self.lookup_pop(&p.pre, env);
        let post = self.lookup_pop(&p.post, env);
        let (Some(pre), Some(post)) = (pre, post) else {
            return;
        };
        if matches!(self.pops[post].kind, PopKind::Input | PopKind::Target { .. }) {
            let d = Diagnostic::error(
                "circ::check::write_clamped",
                p.post.span,
                format!("pathway `{}` targets `{}`, which is clamped from data", p.name.name, self.pops[post].name),
            )
            .label("clamped population")
            .help("pathways must end on a population of neurons");
            self.err(d);
        }
        let id = self.paths.len();
        if !self.register(EntityKind::Path, &p.name, index, id) {
            return;
        }
        let name = Self::display_name(&p.name.name, index);
        let fan_in = self.pops[pre].size as f64;
        let fan_out = self.pops[post].size as f64;
        let mut ienv = env.clone();
        ienv.insert("fan_in".into(), Binding::Expr(Expr::constant(fan_in, p.name.span)));
        ienv.insert("fan_out".into(), Binding::Expr(Expr::constant(fan_out, p.name.span)));
        let mut plastic: Option<(bool, Span)> = None;
        let mut w_init = Init::zeros();
        let mut has_init = false;
        let mut mask = None;
        let mut weight = None;
        let mut resample = false;
        for a in &p.attrs {
            match a {
                ast::PathAttr::Init(e) => {
                    has_init = true;
                    if let Some(i) = self.init_law(e, &ienv) {
                        w_init = i;
                    }
                }
                ast::PathAttr::Plastic(s) | ast::PathAttr::Fixed(s) => {
                    let is_plastic = matches!(a, ast::PathAttr::Plastic(_));
                    if let Some((prev, pspan)) = plastic {
                        if prev != is_plastic {
                            let d = Diagnostic::error(
                                "circ::check::plastic_and_fixed",
                                *s,
                                format!("pathway `{name}` is declared both plastic and fixed"),
                            )
                            .label("second attribute")
                            .with(pspan, "first attribute")
                            .help("keep one of `plastic` and `fixed`");
                            self.err(d);
                        }
                    }
                    plastic = Some((is_plastic, *s));
                }
                ast::PathAttr::Mask(e) => mask = Some(e.clone()),
                ast::PathAttr::Weight(e) => weight = Some(e.clone()),
                ast::PathAttr::Resample(_) => resample = true,
            }
        }
        let _ = has_init;
        let mut syn = vec![SynVar { name: "w".into(), init: w_init, span: p.name.span }];
        for s in &p.syn {
            if syn.iter().any(|x| x.name == s.name.name) {
                let d = Diagnostic::error(
                    "circ::name::duplicate",
                    s.name.span,
                    format!("synapse state `{}` is declared twice in `{name}`", s.name.name),
                )
                .label("second declaration")
                .help("`w` is always declared; name other synapse state differently");
                self.err(d);
                continue;
            }
            let init = match &s.init {
                Some(e) => self.init_law(e, &ienv).unwrap_or(Init::zeros()),
                None => Init::zeros(),
            };
            syn.push(SynVar { name: s.name.name.clone(), init, span: s.name.span });
        }
        let (plastic, plastic_span) = plastic.unwrap_or((true, p.name.span));
        self.paths.push(Path { name, pre, post, plastic, plastic_span, syn, weight: None, resample, span: p.span, name_span: p.name.span });
        if mask.is_some() || weight.is_some() {
            self.pending_weights.push((id, mask, weight, ienv));
        }
    }

    /// Resolves `mask` and `weight` attributes into the pathway's effective weight.
    fn path_weight(&mut self, pid: PathId, mask: Option<&ast::Expr>, weight: Option<&ast::Expr>, env: &Env) {
        let w_span = self.paths[pid].name_span;
        let base = match weight {
            Some(e) => self.expr(e, env, Ctx::Synapse(pid)),
            None => Some(Expr { kind: ExprKind::Syn { path: pid, var: 0, transposed: false }, span: w_span }),
        };
        let Some(base) = base else { return };
        let eff = match mask {
            None => base,
            Some(m) => {
                // `mask bernoulli(p)` (or any init law) becomes fixed synapse state `mask`.
                let is_law = matches!(&m.kind, A::Call { callee, .. } if is_law_name(&callee.name));
                let mexpr = if is_law {
                    let Some(init) = self.init_law(m, env) else {
                        return;
                    };
                    let var = self.paths[pid].syn.len();
                    self.paths[pid].syn.push(SynVar { name: "mask".into(), init, span: m.span });
                    Expr { kind: ExprKind::Syn { path: pid, var, transposed: false }, span: m.span }
                } else {
                    match self.expr(m, env, Ctx::Synapse(pid)) {
                        Some(e) => e,
                        None => return,
                    }
                };
                let span = mexpr.span;
                Expr { kind: ExprKind::Binary { op: BinOp::Mul, lhs: Box::new(mexpr), rhs: Box::new(base) }, span }
            }
        };
        self.paths[pid].weight = Some(eff);
    }

    /// Reads an init law: `law`, `law * c`, `c * law`, `law / c`, `-law`, or a constant.
    fn init_law(&mut self, e: &ast::Expr, env: &Env) -> Option<Init> {
        match &e.kind {
            A::Call { callee, args, index: None, transpose: false } if is_law_name(&callee.name) => {
                let mut vals = Vec::new();
                for a in args {
                    vals.push(self.const_eval(a, env)?.as_f64());
                }
                let law = match (callee.name.as_str(), vals.as_slice()) {
                    ("zeros", []) => Law::Zeros,
                    ("constant", [c]) => Law::Constant(*c),
                    ("uniform", [a, b]) => Law::Uniform(*a, *b),
                    ("normal", [m, s]) => Law::Normal(*m, *s),
                    ("normal", [s]) => Law::Normal(0.0, *s),
                    ("xavier_uniform", []) => Law::XavierUniform,
                    ("xavier_normal", []) => Law::XavierNormal,
                    ("kaiming_uniform", []) => Law::KaimingUniform,
                    ("kaiming_normal", []) => Law::KaimingNormal,
                    ("identity", []) => Law::Identity,
                    ("orthogonal", []) => Law::Orthogonal,
                    ("bernoulli", [p]) if (0.0..=1.0).contains(p) => Law::Bernoulli(*p),
                    (n, _) => {
                        let d = Diagnostic::error(
                            "circ::init::arity",
                            e.span,
                            format!("`{n}` does not take {} argument(s) like this", vals.len()),
                        )
                        .label("bad init law")
                        .help(law_help());
                        self.err(d);
                        return None;
                    }
                };
                Some(Init { law, scale: 1.0 })
            }
            A::Binary { op: BinOp::Mul, lhs, rhs } => {
                if let Ok(c) = self.try_const(lhs, env) {
                    let i = self.init_law(rhs, env)?;
                    return Some(Init { scale: i.scale * c.as_f64(), ..i });
                }
                let i = self.init_law(lhs, env)?;
                let c = self.const_eval(rhs, env)?.as_f64();
                Some(Init { scale: i.scale * c, ..i })
            }
            A::Binary { op: BinOp::Div, lhs, rhs } => {
                let i = self.init_law(lhs, env)?;
                let c = self.const_eval(rhs, env)?.as_f64();
                if c == 0.0 {
                    let d = Diagnostic::error("circ::init::div_zero", rhs.span, "division by zero in an init law")
                        .label("this divisor is 0")
                        .help("give the divisor a value other than 0 (a param's value can be changed with `--set NAME=VALUE`)");
                    self.err(d);
                    return None;
                }
                Some(Init { scale: i.scale / c, ..i })
            }
            A::Unary { op: UnOp::Neg, expr } => {
                let i = self.init_law(expr, env)?;
                Some(Init { scale: -i.scale, ..i })
            }
            A::Ref { entity, field: None } if entity.index.is_none() && is_law_name(&entity.name.name) => {
                // A law without parentheses: `init zeros`.
                let call =
                    ast::Expr { kind: A::Call { callee: entity.name.clone(), index: None, transpose: false, args: vec![] }, span: e.span };
                self.init_law(&call, env)
            }
            _ => match self.try_const(e, env) {
                Ok(v) => Some(Init { law: Law::Constant(v.as_f64()), scale: 1.0 }),
                Err(_) => {
                    let d =
                        Diagnostic::error("circ::init::bad_law", e.span, "expected an init law").label("not an init law").help(law_help());
                    self.err(d);
                    None
                }
            },
        }
    }

    // -----------------------------------------------------------------------------------------
    // Entities

    fn entity_candidates(&self, kind: Option<EntityKind>) -> Vec<String> {
        self.entities.iter().filter(|(_, e)| kind.is_none_or(|k| e.kind == k)).map(|(n, _)| n.clone()).collect()
    }

    /// The id of a declared family member or single entity, by its head.
    fn member_id(&mut self, name: &ast::Ident, index: Option<&ast::Expr>, env: &Env) -> Option<usize> {
        let idx = match index {
            Some(i) => Some(self.const_int(i, env, "a family index")?),
            None => None,
        };
        let e = self.entities.get(&name.name)?;
        match idx {
            Some(i) => e.members.get(&i).copied(),
            None => e.single,
        }
    }

    fn lookup_pop_quiet(&self, r: &ast::EntityRef, env: &Env) -> Result<Option<PopId>, ()> {
        let Some(e) = self.entities.get(&r.name.name) else {
            return Ok(None);
        };
        if e.kind != EntityKind::Pop {
            return Ok(None);
        }
        match &r.index {
            Some(i) => {
                let i = self.try_const(i, env).map_err(|_| ())?.as_f64() as i64;
                Ok(e.members.get(&i).copied())
            }
            None => Ok(e.single),
        }
    }

    /// Looks up an entity by reference, reporting unknown names, missing or extra indices.
    fn lookup_entity(&mut self, r: &ast::EntityRef, env: &Env, want: Option<EntityKind>) -> Option<(EntityKind, usize)> {
        // The entity is read in place, never cloned: a family's member map can hold 100000
        // entries, and every reference to a member comes through here.
        let Some(e) = self.entities.get(&r.name.name) else {
            let what = match want {
                Some(EntityKind::Pop) => "population",
                Some(EntityKind::Path) => "pathway",
                None => "name",
            };
            let mut d = Diagnostic::error("circ::name::unknown", r.name.span, format!("unknown {what} `{}`", r.name.name))
                .label(format!("no {what} of this name"));
            d = match suggest(&r.name.name, self.entity_candidates(want).iter().map(|s| s.as_str())) {
                Some(s) => d.help(format!("did you mean `{s}`?")),
                None => d.help(format!(
                    "declare it first, e.g. `{}`",
                    if want == Some(EntityKind::Path) { "path W: x -> h" } else { "pop h[100] { a }" }
                )),
            };
            self.err(d);
            return None;
        };
        let (e_kind, e_single, e_span) = (e.kind, e.single, e.span);
        if let Some(k) = want {
            if e_kind != k {
                let (is, wanted) = match k {
                    EntityKind::Pop => ("a pathway", "a population"),
                    EntityKind::Path => ("a population", "a pathway"),
                };
                let d = Diagnostic::error(
                    "circ::name::wrong_kind",
                    r.span,
                    format!("`{}` is {is}, but {wanted} is expected here", r.name.name),
                )
                .label(format!("expected {wanted}"))
                .with(e_span, "declared here")
                .help("check the name");
                self.err(d);
                return None;
            }
        }
        let name = r.name.name.as_str();
        match (&r.index, e_single) {
            (None, Some(id)) => Some((e_kind, id)),
            (None, None) => {
                let first = self.members(name).keys().next().copied().unwrap_or(0);
                let d =
                    Diagnostic::error("circ::name::family_needs_index", r.span, format!("`{}` is a family; say which member", r.name.name))
                        .label("missing index")
                        .with(e_span, "declared as a family here")
                        .help(format!("write `{}[{first}]` (members: {})", r.name.name, members_text(self.members(name))));
                self.err(d);
                None
            }
            (Some(i), _) => {
                let iv = self.const_int(i, env, "a family index")?;
                if e_single.is_some() {
                    let d = Diagnostic::error(
                        "circ::name::not_a_family",
                        r.span,
                        format!("`{}` is not a family; it takes no index", r.name.name),
                    )
                    .label("unexpected index")
                    .with(e_span, "declared here without an index")
                    .help(format!("write `{}`", r.name.name));
                    self.err(d);
                    return None;
                }
                match self.members(name).get(&iv) {
                    Some(id) => Some((e_kind, *id)),
                    None => {
                        let d = Diagnostic::error("circ::name::no_member", r.span, format!("`{}` has no member {iv}", r.name.name))
                            .label(format!("index {iv} is not declared"))
                            .with(e_span, "family declared here")
                            .help(format!("members are {}", members_text(self.members(name))));
                        self.err(d);
                        None
                    }
                }
            }
        }
    }

    /// The members of a declared family (by reference: see `lookup_entity`).
    fn members(&self, family: &str) -> &BTreeMap<i64, usize> {
        &self.entities[family].members
    }

    fn lookup_pop(&mut self, r: &ast::EntityRef, env: &Env) -> Option<PopId> {
        self.lookup_entity(r, env, Some(EntityKind::Pop)).map(|(_, id)| id)
    }

    fn lookup_path(&mut self, r: &ast::EntityRef, env: &Env) -> Option<PathId> {
        self.lookup_entity(r, env, Some(EntityKind::Path)).map(|(_, id)| id)
    }

    // -----------------------------------------------------------------------------------------
    // Expressions

    /// Resolves an expression, inlining `fn` calls and the arguments bound to their params.
    /// Inlining can grow an expression exponentially (a fn that calls another twice, nested),
    /// so every node built, cloned argument included, is counted against the limits of one
    /// expression ([`MAX_EXPR_NODES`], [`MAX_EXPR_DEPTH`]) and of the program
    /// ([`MAX_WORK`]); past one, resolution of the top-level expression stops at once
    /// and reports it at the outermost `fn` call.
    fn expr(&mut self, e: &ast::Expr, env: &Env, ctx: Ctx) -> Option<Expr> {
        let root = self.expr_depth == 0;
        if root {
            self.expr_nodes = 0;
            self.inline_site = None;
            self.stopped = false;
        }
        self.expr_depth += 1;
        let r = if self.grow(1, 1, e.span) { self.expr_node(e, env, ctx) } else { None };
        self.expr_depth -= 1;
        if root && self.stopped {
            if let Some(d) = self.oversized.take() {
                self.err(d);
            }
            return None;
        }
        r
    }

    /// Counts `nodes` more nodes, `depth` levels below the current one, for the expression
    /// at `span`; false (with the diagnostic kept for the top level) once a limit is passed.
    fn grow(&mut self, nodes: usize, depth: usize, span: Span) -> bool {
        if self.stopped {
            return false;
        }
        self.expr_nodes += nodes;
        self.work += nodes;
        let (site, what) = match &self.inline_site {
            Some((call, name)) => (*call, format!("inlining `{name}` here")),
            None => (span, "this expression".to_string()),
        };
        let d = if self.work > MAX_WORK {
            if self.total_reported {
                // Reported once; every later expression stops silently.
                self.stopped = true;
                return false;
            }
            self.total_reported = true;
            Diagnostic::error(
                "circ::shape::too_large",
                site,
                format!("building this program takes more than {MAX_WORK} terms, after unrolling loops and inlining fns"),
            )
            .label("the limit is passed here")
            .help("loops and families are unrolled, and fns inlined with a copy of an argument at each use of its param, at compile time: unroll fewer copies, or compute shared values once into neuron variables")
        } else if self.expr_nodes > MAX_EXPR_NODES {
            Diagnostic::error("circ::shape::too_large", site, format!("{what} makes an expression of more than {MAX_EXPR_NODES} terms"))
                .label("too large once inlined")
                .help("fns are inlined at every call, so a fn that calls another twice doubles in size with each level; compute a shared value once into a neuron variable and read that")
        } else if self.expr_depth + depth > MAX_EXPR_DEPTH {
            Diagnostic::error("circ::shape::too_large", site, format!("{what} makes an expression nested more than {MAX_EXPR_DEPTH} deep"))
                .label("too deep once inlined")
                .help("fns are inlined at every call, and calls nested in their arguments nest their bodies; compute a part into a neuron variable and read that")
        } else {
            return true;
        };
        self.stopped = true;
        self.oversized = Some(d);
        false
    }

    fn expr_node(&mut self, e: &ast::Expr, env: &Env, ctx: Ctx) -> Option<Expr> {
        let span = e.span;
        let kind = match &e.kind {
            A::Number { value, .. } => ExprKind::Const(*value),
            A::Bool(b) => ExprKind::Const(*b as i64 as f64),
            A::Str(_) => {
                let d = Diagnostic::error("circ::type::string", span, "a string cannot be used as a value")
                    .label("a string")
                    .help("strings are only used by `import`");
                self.err(d);
                return None;
            }
            A::Ref { entity, field } => return self.reference(entity, field.as_ref(), env, ctx, span),
            A::Unary { op, expr } => {
                let a = self.expr(expr, env, ctx)?;
                if let ExprKind::Const(c) = a.kind {
                    ExprKind::Const(match op {
                        UnOp::Neg => -c,
                        UnOp::Not => (c == 0.0) as i64 as f64,
                    })
                } else {
                    ExprKind::Unary { op: *op, arg: Box::new(a) }
                }
            }
            A::Binary { op, lhs, rhs } => {
                let a = self.expr(lhs, env, ctx);
                let b = self.expr(rhs, env, ctx);
                let (a, b) = (a?, b?);
                if let (ExprKind::Const(x), ExprKind::Const(y)) = (&a.kind, &b.kind) {
                    if let Some(v) = const_binop(*op, Value::Float(*x), Value::Float(*y)) {
                        return Some(Expr { kind: ExprKind::Const(v.as_f64()), span });
                    }
                }
                ExprKind::Binary { op: *op, lhs: Box::new(a), rhs: Box::new(b) }
            }
            A::Call { callee, index, transpose, args } => return self.call(callee, index.as_deref(), *transpose, args, env, ctx, span),
        };
        Some(Expr { kind, span })
    }

    // Not inlined into `expr_node`: expressions nest 4096 deep, and each level's stack frame
    // would carry these large functions' locals.
    #[inline(never)]
    fn reference(&mut self, entity: &ast::EntityRef, field: Option<&ast::Ident>, env: &Env, ctx: Ctx, span: Span) -> Option<Expr> {
        let name = entity.name.name.as_str();
        let mk = |kind| Some(Expr { kind, span });
        // pre./post. in synapse context.
        if let (Ctx::Synapse(pid), true, None) = (ctx, name == "pre" || name == "post", &entity.index) {
            if !env.contains_key(name) {
                let role = if name == "pre" { Role::Pre } else { Role::Post };
                let pop = if role == Role::Pre { self.paths[pid].pre } else { self.paths[pid].post };
                let var = match field {
                    Some(f) => match self.pops[pop].find_var(&f.name) {
                        Some(v) => v,
                        None => {
                            self.unknown_var(pop, f, Some(role));
                            return None;
                        }
                    },
                    None => match self.pops[pop].out {
                        Some(v) => v,
                        None => {
                            self.no_output(pop, span);
                            return None;
                        }
                    },
                };
                return mk(ExprKind::Var { pop, var, role });
            }
        }
        if (name == "pre" || name == "post") && entity.index.is_none() && !env.contains_key(name) && !matches!(ctx, Ctx::Synapse(_)) {
            let d = Diagnostic::error("circ::name::pre_post_outside_rule", span, format!("`{name}` only has a meaning in a synapse rule"))
                .label("not in a plasticity block or rule")
                .help("neuron equations name populations directly, e.g. `h.r`");
            self.err(d);
            return None;
        }
        if entity.index.is_none() && field.is_none() {
            if let Some(b) = env.get(name) {
                return match b {
                    Binding::Int(i) => mk(ExprKind::Const(*i as f64)),
                    Binding::Expr(x) => {
                        // A param of an inlined fn or rule: its argument is copied at every use.
                        let (nodes, depth) = size_and_depth(x);
                        if !self.grow(nodes, depth, span) {
                            return None;
                        }
                        Some(x.clone())
                    }
                };
            }
            // Own synapse state in a rule: `w`, `v`.
            if let Ctx::Synapse(pid) = ctx {
                if let Some(v) = self.paths[pid].find_syn(name) {
                    return mk(ExprKind::Syn { path: pid, var: v, transposed: false });
                }
            }
            if let Some(v) = self.find_param(name) {
                return mk(ExprKind::Const(v.as_f64()));
            }
            if let Some(i) = self.signals.iter().position(|s| s.name == name) {
                return mk(ExprKind::Signal(i));
            }
            if let Some(i) = self.metas.iter().position(|s| s.name == name) {
                return mk(ExprKind::Meta(i));
            }
        }
        // `t`: time within the innermost repeated phase (iteration × dt), unless a
        // declaration of the same name shadows it.
        if name == "step_count" && entity.index.is_none() && field.is_none() && !self.entities.contains_key(name) {
            return mk(ExprKind::StepCount);
        }
        if name == "t" && entity.index.is_none() && field.is_none() && !self.entities.contains_key(name) {
            let dt = self.find_param("dt").map(|v| v.as_f64()).unwrap_or(1.0);
            return mk(ExprKind::Time { dt });
        }
        if !self.entities.contains_key(name) {
            let mut cands: Vec<String> = self.entity_candidates(None);
            cands.extend(self.params.iter().map(|p| p.name.clone()));
            cands.extend(self.signals.iter().map(|p| p.name.clone()));
            cands.extend(self.metas.iter().map(|p| p.name.clone()));
            cands.extend(env.keys().cloned());
            if let Ctx::Synapse(pid) = ctx {
                cands.extend(self.paths[pid].syn.iter().map(|s| s.name.clone()));
                cands.push("pre".into());
                cands.push("post".into());
            }
            let mut d = Diagnostic::error("circ::name::unknown", entity.name.span, format!("unknown name `{name}`")).label("not declared");
            d = match suggest(name, cands.iter().map(|s| s.as_str())) {
                Some(s) => d.help(format!("did you mean `{s}`?")),
                None => d.help("declare it as a param, signal, population or pathway"),
            };
            if let Ctx::Synapse(pid) = ctx {
                d = d.note(format!(
                    "in a rule of `{}`, bare names are its synapse state ({}), params and signals",
                    self.paths[pid].name,
                    self.paths[pid].syn.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
                ));
            }
            self.err(d);
            return None;
        }
        let (kind, id) = self.lookup_entity(entity, env, None)?;
        match kind {
            EntityKind::Pop => {
                let var = match field {
                    Some(f) => match self.pops[id].find_var(&f.name) {
                        Some(v) if self.pops[id].kind == PopKind::Neurons => v,
                        _ => {
                            self.unknown_var(id, f, None);
                            return None;
                        }
                    },
                    None => match self.pops[id].out {
                        Some(v) => v,
                        None => {
                            self.no_output(id, span);
                            return None;
                        }
                    },
                };
                let role = match ctx {
                    Ctx::Synapse(pid) if self.paths[pid].post == id => Role::Post,
                    Ctx::Synapse(pid) if self.paths[pid].pre == id => Role::Pre,
                    _ => Role::Direct,
                };
                mk(ExprKind::Var { pop: id, var, role })
            }
            EntityKind::Path => {
                let Some(f) = field else {
                    let d = Diagnostic::error(
                        "circ::type::path_as_value",
                        span,
                        format!("`{}` is a pathway, not a value", self.paths[id].name),
                    )
                    .label("a pathway")
                    .help(format!(
                        "transmit through it with `{}(x)`, or read its synapse state with `{}.w`",
                        entity.name.name, entity.name.name
                    ));
                    self.err(d);
                    return None;
                };
                match self.paths[id].find_syn(&f.name) {
                    Some(v) => mk(ExprKind::Syn { path: id, var: v, transposed: false }),
                    None => {
                        let names: Vec<&str> = self.paths[id].syn.iter().map(|s| s.name.as_str()).collect();
                        let mut d = Diagnostic::error(
                            "circ::name::unknown_field",
                            f.span,
                            format!("pathway `{}` has no synapse state `{}`", self.paths[id].name, f.name),
                        )
                        .label("not declared")
                        .with(self.paths[id].name_span, "pathway declared here");
                        d = match suggest(&f.name, names.iter().copied()) {
                            Some(s) => d.help(format!("did you mean `{s}`?")),
                            None => d.help(format!("its synapse state: {}", names.join(", "))),
                        };
                        self.err(d);
                        None
                    }
                }
            }
        }
    }

    fn unknown_var(&mut self, pop: PopId, f: &ast::Ident, role: Option<Role>) {
        let p = &self.pops[pop];
        let names: Vec<&str> = p.vars.iter().map(|v| v.name.as_str()).collect();
        let who = match role {
            Some(Role::Pre) => format!("`pre` (population `{}`)", p.name),
            Some(Role::Post) => format!("`post` (population `{}`)", p.name),
            _ => format!("population `{}`", p.name),
        };
        let mut d = Diagnostic::error("circ::name::unknown_field", f.span, format!("{who} has no variable `{}`", f.name))
            .label("not declared")
            .with(p.name_span, "population declared here");
        d = if matches!(p.kind, PopKind::Input | PopKind::Target { .. }) {
            d.help(format!(
                "`{}` is clamped from data and has a single value: write `{}`",
                p.name,
                if role == Some(Role::Pre) { "pre".to_string() } else { p.name.clone() }
            ))
        } else {
            match suggest(&f.name, names.iter().copied()) {
                Some(s) => d.help(format!("did you mean `{s}`?")),
                None => d.help(format!("its variables: {}", names.join(", "))),
            }
        };
        self.err(d);
    }

    fn no_output(&mut self, pop: PopId, span: Span) {
        let p = &self.pops[pop];
        let d = Diagnostic::error("circ::name::no_output", span, format!("population `{}` has no output variable", p.name))
            .label("which variable?")
            .with(p.name_span, "declared here")
            .help(format!(
                "name the variable (`{}.{}`) or mark one `out` in the declaration",
                p.name,
                p.vars.first().map(|v| v.name.as_str()).unwrap_or("r")
            ));
        self.err(d);
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn call(
        &mut self,
        callee: &ast::Ident,
        index: Option<&ast::Expr>,
        transpose: bool,
        args: &[ast::Expr],
        env: &Env,
        ctx: Ctx,
        span: Span,
    ) -> Option<Expr> {
        let name = callee.name.as_str();
        // `self(x)` / `self^T(y)` in a rule: transmission through the pathway being updated
        // (so a generic rule such as Oja's subspace rule can name its own back-projection).
        if let (Ctx::Synapse(pid), "self", None, false) = (ctx, name, index, self.entities.contains_key("self")) {
            if args.len() != 1 {
                let d = Diagnostic::error(
                    "circ::type::arity",
                    span,
                    format!("transmission through `self` takes one argument, found {}", args.len()),
                )
                .label("one argument expected")
                .help("write `self^T(post.y)`");
                self.err(d);
                return None;
            }
            let arg = self.expr(&args[0], env, ctx)?;
            return Some(Expr { kind: ExprKind::Transmit { path: pid, transpose, arg: Box::new(arg) }, span });
        }
        // Transmission through a pathway.
        if self.entities.get(name).is_some_and(|e| e.kind == EntityKind::Path) {
            let r = ast::EntityRef {
                name: callee.clone(),
                index: index.map(|i| Box::new(i.clone())),
                span: callee.span.to(index.map(|i| i.span).unwrap_or(callee.span)),
            };
            let pid = self.lookup_path(&r, env)?;
            if args.len() != 1 {
                let d = Diagnostic::error(
                    "circ::type::arity",
                    span,
                    format!("transmission through `{}` takes one argument, found {}", self.paths[pid].name, args.len()),
                )
                .label("one argument expected")
                .help(format!("write `{}(x)`", name));
                self.err(d);
                return None;
            }
            // The argument lives on the sending population (pre for `W(x)`, post for `W^T(e)`);
            // `check` verifies that.
            let arg = self.expr(&args[0], env, ctx)?;
            return Some(Expr { kind: ExprKind::Transmit { path: pid, transpose, arg: Box::new(arg) }, span });
        }
        if index.is_some() || transpose {
            let d = Diagnostic::error("circ::name::unknown", callee.span, format!("`{name}` is not a pathway"))
                .label("indexed or transposed call of a non-pathway")
                .help("only pathways can be indexed and transposed: `W[l]^T(e)`");
            self.err(d);
            return None;
        }
        // User functions.
        if let Some(f) = self.fns.get(name).cloned() {
            if self.call_stack.iter().any(|n| n == name) {
                let d = Diagnostic::error("circ::name::recursion", span, format!("`{name}` calls itself"))
                    .label("recursive call")
                    .with(f.name.span, "defined here")
                    .help(format!("fns and rules are inlined and cannot recurse (call chain: {} -> {name})", self.call_stack.join(" -> ")));
                self.err(d);
                return None;
            }
            if args.len() != f.params.len() {
                let d = Diagnostic::error(
                    "circ::type::arity",
                    span,
                    format!("`{name}` takes {} argument(s), found {}", f.params.len(), args.len()),
                )
                .label("wrong number of arguments")
                .with(f.name.span, "defined here")
                .help(format!("`{name}({})`", f.params.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")));
                self.err(d);
                return None;
            }
            let mut fenv = Env::new();
            let before = self.expr_nodes;
            for (p, a) in f.params.iter().zip(args) {
                let v = self.expr(a, env, ctx)?;
                fenv.insert(p.name.clone(), Binding::Expr(v));
            }
            // The arguments are copied into the body at each use and dropped after it, so they
            // no longer count towards the size of the expression (only towards the work).
            let args_nodes = self.expr_nodes.saturating_sub(before);
            // An inlined call costs about as much as a few nodes (its environment, the labels
            // kept for diagnostics): counted as work, checked with the body's first node.
            self.work += 8;
            let outermost = self.inline_site.is_none();
            if outermost {
                self.inline_site = Some((span, name.to_string()));
            }
            self.call_stack.push(name.to_string());
            self.expansions.push(Label { span, text: format!("in this call of `{name}`") });
            let r = self.expr(&f.body, &fenv, ctx);
            self.expansions.pop();
            self.call_stack.pop();
            self.expr_nodes = self.expr_nodes.saturating_sub(args_nodes);
            if outermost {
                self.inline_site = None;
            }
            // The inlined body stands where the call was written.
            return r.map(|e| Expr { span, ..e });
        }
        let nargs = args.len();
        let mut resolved = Vec::with_capacity(nargs);
        for a in args {
            resolved.push(self.expr(a, env, if name == "grad" { Ctx::Monitor } else { ctx }));
        }
        if resolved.iter().any(|a| a.is_none()) {
            return None;
        }
        let mut a: Vec<Expr> = resolved.into_iter().map(|x| x.expect("checked")).collect();
        let bad_arity = |s: &mut Self, want: &str| {
            let d = Diagnostic::error("circ::type::arity", span, format!("`{name}` takes {want}, found {nargs}"))
                .label("wrong number of arguments")
                .help(format!("see `{name}` in docs/language.md"));
            s.err(d);
        };
        let kind = match name {
            "sum" | "mean" | "max" | "min" | "norm" | "logsumexp" | "row_sum" | "row_mean" | "row_max" | "row_norm" | "col_sum"
            | "col_mean" | "col_max" | "col_norm" => {
                // `max(a, b)` and `min(a, b)` are elementwise; one argument reduces.
                if (name == "max" || name == "min") && nargs == 2 {
                    ExprKind::Call { func: if name == "max" { Func::Max } else { Func::Min }, args: a }
                } else {
                    if nargs != 1 {
                        bad_arity(self, "one argument");
                        return None;
                    }
                    let (axis, base) = if let Some(b) = name.strip_prefix("row_") {
                        (Axis::Row, b)
                    } else if let Some(b) = name.strip_prefix("col_") {
                        (Axis::Col, b)
                    } else {
                        (Axis::All, name)
                    };
                    let op = match base {
                        "sum" => ReduceOp::Sum,
                        "mean" => ReduceOp::Mean,
                        "max" => ReduceOp::Max,
                        "min" => ReduceOp::Min,
                        "norm" => ReduceOp::Norm,
                        _ => ReduceOp::LogSumExp,
                    };
                    ExprKind::Reduce { op, axis, arg: Box::new(a.remove(0)) }
                }
            }
            "batch_mean" => {
                if nargs != 1 {
                    bad_arity(self, "one argument");
                    return None;
                }
                ExprKind::BatchMean(Box::new(a.remove(0)))
            }
            "softmax" => {
                if nargs != 1 {
                    bad_arity(self, "one argument");
                    return None;
                }
                ExprKind::Softmax(Box::new(a.remove(0)))
            }
            "transpose" => {
                if nargs != 1 {
                    bad_arity(self, "one argument");
                    return None;
                }
                match a.remove(0).kind {
                    ExprKind::Syn { path, var, transposed } => ExprKind::Syn { path, var, transposed: !transposed },
                    _ => {
                        let d = Diagnostic::error(
                            "circ::type::transpose",
                            span,
                            "`transpose` takes the synapse state of a pathway, like `transpose(W.w)`",
                        )
                        .label("not synapse state")
                        .help("to send a signal backwards through a pathway write `W^T(x)`");
                        self.err(d);
                        return None;
                    }
                }
            }
            "rand" | "randn" => {
                if nargs != 0 {
                    bad_arity(self, "no arguments");
                    return None;
                }
                ExprKind::Rand(if name == "rand" { RandKind::Uniform } else { RandKind::Normal })
            }
            "bernoulli" => {
                if nargs != 1 {
                    bad_arity(self, "one argument (the probability)");
                    return None;
                }
                let p = a.remove(0);
                ExprKind::Binary { op: BinOp::Lt, lhs: Box::new(Expr { kind: ExprKind::Rand(RandKind::Uniform), span }), rhs: Box::new(p) }
            }
            "cross_entropy" => {
                if nargs != 2 {
                    bad_arity(self, "two arguments (logits, one-hot target)");
                    return None;
                }
                let t = a.pop().expect("two");
                let l = a.pop().expect("two");
                ExprKind::CrossEntropy { logits: Box::new(l), target: Box::new(t) }
            }
            "mse" => {
                if nargs != 2 {
                    bad_arity(self, "two arguments");
                    return None;
                }
                let t = a.pop().expect("two");
                let l = a.pop().expect("two");
                let diff = Expr { kind: ExprKind::Binary { op: BinOp::Sub, lhs: Box::new(l), rhs: Box::new(t) }, span };
                let sq = Expr { kind: ExprKind::Binary { op: BinOp::Mul, lhs: Box::new(diff.clone()), rhs: Box::new(diff) }, span };
                ExprKind::Reduce { op: ReduceOp::Mean, axis: Axis::All, arg: Box::new(sq) }
            }
            "angle" => {
                if nargs != 2 {
                    bad_arity(self, "two arguments");
                    return None;
                }
                let b = a.pop().expect("two");
                let x = a.pop().expect("two");
                ExprKind::Angle(Box::new(x), Box::new(b))
            }
            "symmetry" | "spectral_radius" | "effective_rank" | "histogram" | "grad" => {
                let want = if name == "grad" { 2 } else { 1 };
                if nargs != want {
                    bad_arity(
                        self,
                        if want == 2 { "two arguments (loss, pathway state)" } else { "one argument (synapse state, e.g. W.w)" },
                    );
                    return None;
                }
                let last = a.pop().expect("nonempty");
                let (path, var) = match last.kind {
                    ExprKind::Syn { path, var, .. } => (path, var),
                    _ => {
                        let d = Diagnostic::error(
                            "circ::type::needs_synapse_state",
                            last.span,
                            format!("`{name}` needs the synapse state of a pathway, like `W.w`"),
                        )
                        .label("not synapse state")
                        .help("write `W.w`");
                        self.err(d);
                        return None;
                    }
                };
                let kind = match name {
                    "symmetry" => MatStatKind::Symmetry,
                    "spectral_radius" => MatStatKind::SpectralRadius,
                    "effective_rank" => MatStatKind::EffectiveRank,
                    "histogram" => MatStatKind::Histogram,
                    _ => return Some(Expr { kind: ExprKind::Grad { loss: Box::new(a.pop().expect("two")), wrt: path, var }, span }),
                };
                ExprKind::MatStat { kind, path, var }
            }
            _ => {
                let Some(func) = Func::ALL.iter().copied().find(|f| f.name() == name) else {
                    let mut cands: Vec<String> = self.fns.keys().cloned().collect();
                    cands.extend(Func::ALL.iter().map(|f| f.name().to_string()));
                    cands.extend(BUILTIN_CALLS.iter().map(|s| s.to_string()));
                    cands.extend(self.entity_candidates(Some(EntityKind::Path)));
                    let mut d = Diagnostic::error("circ::name::unknown_fn", callee.span, format!("unknown function or pathway `{name}`"))
                        .label("not defined");
                    d = match suggest(name, cands.iter().map(|s| s.as_str())) {
                        Some(s) => d.help(format!("did you mean `{s}`?")),
                        None => d.help("define it with `fn NAME(args) = ...`, or declare a pathway of this name"),
                    };
                    self.err(d);
                    return None;
                };
                let (lo, hi) = func.arity();
                if nargs < lo || nargs > hi {
                    bad_arity(self, &if lo == hi { format!("{lo} argument(s)") } else { format!("{lo} to {hi} arguments") });
                    return None;
                }
                if let Func::Pow = func {
                    let y = a.pop().expect("two");
                    let x = a.pop().expect("two");
                    ExprKind::Binary { op: BinOp::Pow, lhs: Box::new(x), rhs: Box::new(y) }
                } else {
                    ExprKind::Call { func, args: a }
                }
            }
        };
        Some(Expr { kind, span })
    }

    // -----------------------------------------------------------------------------------------
    // Statements

    /// Resolves the left side of an assignment in a phase (neuron variables and signals).
    fn neuron_target(&mut self, lv: &ast::LValue, env: &Env) -> Option<Target> {
        let name = lv.entity.name.name.as_str();
        if lv.field.is_none() && lv.entity.index.is_none() {
            if let Some(i) = self.signals.iter().position(|s| s.name == name) {
                return Some(Target::Signal(i));
            }
            if self.find_param(name).is_some() || env.contains_key(name) {
                let d = Diagnostic::error("circ::check::assign_const", lv.span, format!("`{name}` is a constant and cannot be assigned"))
                    .label("a param or loop index")
                    .help("declare a `signal` for a scalar that changes, or a per-neuron variable");
                self.err(d);
                return None;
            }
            if self.metas.iter().any(|m| m.name == name) {
                let d = Diagnostic::error(
                    "circ::check::assign_meta",
                    lv.span,
                    format!("`{name}` is a meta-param; only the outer loop changes it"),
                )
                .label("meta-param")
                .help("declare a `signal` for a scalar the circuit computes");
                self.err(d);
                return None;
            }
        }
        let (kind, id) = self.lookup_entity(&lv.entity, env, None)?;
        match kind {
            EntityKind::Path => {
                let d = Diagnostic::error(
                    "circ::check::syn_in_phase",
                    lv.span,
                    format!("synapse state of `{}` can only change in a `plasticity` block", self.paths[id].name),
                )
                .label("assigned in a phase")
                .help("move this update into `plasticity { ... }`");
                self.err(d);
                None
            }
            EntityKind::Pop => {
                let var = match &lv.field {
                    Some(f) => match self.pops[id].find_var(&f.name) {
                        Some(v) => v,
                        None => {
                            if self.pops[id].kind == PopKind::Neurons {
                                self.unknown_var(id, f, None);
                                return None;
                            }
                            0
                        }
                    },
                    None => match self.pops[id].out {
                        Some(v) => v,
                        None => {
                            self.no_output(id, lv.span);
                            return None;
                        }
                    },
                };
                if matches!(self.pops[id].kind, PopKind::Input | PopKind::Target { .. }) {
                    let what = if matches!(self.pops[id].kind, PopKind::Input) { "an input" } else { "a target" };
                    let d = Diagnostic::error(
                        "circ::check::write_clamped",
                        lv.span,
                        format!("`{}` is {what}, clamped from data; it cannot be assigned", self.pops[id].name),
                    )
                    .label("clamped")
                    .with(self.pops[id].name_span, "declared here")
                    .help("compute into a population of neurons instead: `pop h[n] { v }`");
                    self.err(d);
                    return None;
                }
                Some(Target::Var { pop: id, var })
            }
        }
    }

    fn phase(&mut self, ph: &ast::PhaseDecl, env: &Env) {
        if let Some(prev) = self.phases.iter().find(|p| p.name == ph.name.name) {
            let d = Diagnostic::error("circ::name::duplicate", ph.name.span, format!("phase `{}` is declared twice", ph.name.name))
                .label("second declaration")
                .with(prev.span, "first declaration")
                .help("phases need distinct names");
            self.err(d);
            return;
        }
        let repeat = match &ph.repeat {
            Some(e) => match self.const_int(e, env, "a repeat count") {
                Some(n) if (1..=10_000_000).contains(&n) => n as usize,
                Some(n) => {
                    let d = Diagnostic::error("circ::shape::bad_repeat", e.span, format!("repeat count {n} is out of range"))
                        .label("out of range")
                        .help("a phase repeats between 1 and 10^7 times per step");
                    self.err(d);
                    1
                }
                None => 1,
            },
            None => 1,
        };
        let mut body = Vec::new();
        self.neuron_stmts(&ph.body, env, &mut body);
        self.phases.push(Phase { name: ph.name.name.clone(), repeat, reverse: false, body, segments: None, span: ph.span });
    }

    fn neuron_stmts(&mut self, stmts: &[ast::Stmt], env: &Env, out: &mut Vec<Stmt>) {
        for s in stmts {
            match &s.kind {
                S::Assign { target, op, value } => {
                    let t = self.neuron_target(target, env);
                    let v = self.expr(value, env, Ctx::Neuron);
                    if let (Some(t), Some(v)) = (t, v) {
                        out.push(Stmt { kind: StmtKind::Assign { target: t, op: *op, value: v }, span: s.span, via: None });
                    }
                }
                S::Ode { target, value } => {
                    let t = self.neuron_target(target, env);
                    let v = self.expr(value, env, Ctx::Neuron);
                    let dt = self.find_param("dt");
                    if dt.is_none() {
                        let d = Diagnostic::error("circ::check::no_dt", s.span, "a differential equation needs a param `dt`")
                            .label("integrated over one step of dt")
                            .help("declare the step, e.g. `param dt = 0.1` (in the time unit of your equations)");
                        self.err(d);
                    }
                    if let (Some(t), Some(v), Some(dt)) = (t, v, dt) {
                        out.push(Stmt { kind: StmtKind::Ode { target: t, value: v, dt: dt.as_f64() }, span: s.span, via: None });
                    }
                }
                S::When { cond, then, els } => {
                    let c = self.expr(cond, env, Ctx::Neuron);
                    let mut t = Vec::new();
                    let mut e = Vec::new();
                    self.neuron_stmts(then, env, &mut t);
                    self.neuron_stmts(els, env, &mut e);
                    if let Some(c) = c {
                        out.push(Stmt { kind: StmtKind::When { cond: c, then: t, els: e }, span: s.span, via: None });
                    }
                }
                S::For { var, reverse, lo, hi, body } => {
                    let range = lo.span.to(hi.span);
                    let (Some(lo), Some(hi)) = (self.const_int(lo, env, "a loop bound"), self.const_int(hi, env, "a loop bound")) else {
                        continue;
                    };
                    let Some(values) = self.unroll(lo, hi, *reverse, range, false, true) else {
                        continue;
                    };
                    self.loops.push((range, values.len() as u64));
                    for i in values {
                        let mut e2 = env.clone();
                        e2.insert(var.name.clone(), Binding::Int(i));
                        self.neuron_stmts(body, &e2, out);
                    }
                    self.loops.pop();
                }
                S::If { cond, then, els } => {
                    if let Some(c) = self.const_eval(cond, env) {
                        if c.as_f64() != 0.0 {
                            self.neuron_stmts(then, env, out);
                        } else {
                            self.neuron_stmts(els, env, out);
                        }
                    }
                }
                S::Apply { .. } => {
                    let d = Diagnostic::error("circ::check::apply_in_phase", s.span, "rules can only be applied in a `plasticity` block")
                        .label("in a phase")
                        .help("move `apply ... to ...` into `plasticity { ... }`");
                    self.err(d);
                }
            }
        }
    }

    fn plasticity_block(&mut self, pl: &ast::PlasticityDecl, env: &Env) {
        let schedule = match &pl.schedule {
            ast::Schedule::EveryStep => Schedule::EveryStep,
            ast::Schedule::After(name) => match self.phases.iter().position(|p| p.name == name.name) {
                Some(i) => Schedule::After(i),
                None => {
                    let names: Vec<&str> = self.phases.iter().map(|p| p.name.as_str()).collect();
                    let mut d = Diagnostic::error("circ::name::unknown_phase", name.span, format!("unknown phase `{}`", name.name))
                        .label("no phase of this name");
                    d = match suggest(&name.name, names.iter().copied()) {
                        Some(s) => d.help(format!("did you mean `{s}`?")),
                        None => d.help("declare the phase before the plasticity block that runs after it"),
                    };
                    self.err(d);
                    return;
                }
            },
            ast::Schedule::Every(e) => match self.const_int(e, env, "a step interval") {
                Some(n) if n >= 1 => Schedule::Every(n as u64),
                Some(n) => {
                    let d = Diagnostic::error("circ::shape::bad_interval", e.span, format!("interval {n} must be at least 1"))
                        .label("less than 1")
                        .help("write `every 1 steps` or leave the schedule out");
                    self.err(d);
                    return;
                }
                None => return,
            },
        };
        let sum = pl.mode.as_ref().is_some_and(|m| m.name == "sum");
        let mut stmts: Vec<(PathId, Stmt)> = Vec::new();
        self.syn_stmts(&pl.body, env, None, &mut stmts);
        // One block per pathway, in order of first appearance (indexed: a family of 100000
        // pathways must not make this quadratic).
        let mut body: Vec<SynBlock> = Vec::new();
        let mut block_of: HashMap<PathId, usize> = HashMap::new();
        for (p, s) in stmts {
            let at = *block_of.entry(p).or_insert_with(|| {
                body.push(SynBlock { path: p, stmts: Vec::new() });
                body.len() - 1
            });
            body[at].stmts.push(s);
        }
        self.plasticity.push(Plasticity { schedule, sum, body, span: pl.span });
    }

    /// Resolves synapse statements. `rule_ctx` is the pathway of an enclosing rule body (where
    /// bare names such as `w` are the target's state).
    fn syn_stmts(&mut self, stmts: &[ast::Stmt], env: &Env, rule_ctx: Option<(PathId, Span)>, out: &mut Vec<(PathId, Stmt)>) {
        for s in stmts {
            match &s.kind {
                S::Assign { target, op, value } => {
                    let Some((pid, var)) = self.syn_target(target, env, rule_ctx) else {
                        continue;
                    };
                    if let Some(v) = self.expr(value, env, Ctx::Synapse(pid)) {
                        out.push((
                            pid,
                            Stmt {
                                kind: StmtKind::Assign { target: Target::Syn { path: pid, var }, op: *op, value: v },
                                span: s.span,
                                via: rule_ctx.map(|r| r.1),
                            },
                        ));
                    }
                }
                S::Ode { target, value } => {
                    let Some((pid, var)) = self.syn_target(target, env, rule_ctx) else {
                        continue;
                    };
                    let dt = self.find_param("dt");
                    if dt.is_none() {
                        let d = Diagnostic::error("circ::check::no_dt", s.span, "a differential equation needs a param `dt`")
                            .label("integrated over one step of dt")
                            .help("declare the step, e.g. `param dt = 0.1`");
                        self.err(d);
                    }
                    if let (Some(v), Some(dt)) = (self.expr(value, env, Ctx::Synapse(pid)), dt) {
                        out.push((
                            pid,
                            Stmt {
                                kind: StmtKind::Ode { target: Target::Syn { path: pid, var }, value: v, dt: dt.as_f64() },
                                span: s.span,
                                via: rule_ctx.map(|r| r.1),
                            },
                        ));
                    }
                }
                S::When { cond, then, els } => {
                    // The condition is read in the context of the pathway the body updates.
                    let pid = match rule_ctx {
                        Some((p, _)) => Some(p),
                        None => self.first_syn_target(then.iter().chain(els), env),
                    };
                    let Some(pid) = pid else {
                        let d = Diagnostic::error("circ::check::when_target", s.span, "cannot tell which pathway this `when` updates")
                            .label("no synapse assignment inside")
                            .help("a `when` in a plasticity block must update one pathway, e.g. `when post.spike > 0 { W.w += ... }`");
                        self.err(d);
                        continue;
                    };
                    let c = self.expr(cond, env, Ctx::Synapse(pid));
                    let mut inner = Vec::new();
                    self.syn_stmts(then, env, rule_ctx, &mut inner);
                    let mut inner_e = Vec::new();
                    self.syn_stmts(els, env, rule_ctx, &mut inner_e);
                    if let Some((bad, st)) = inner.iter().chain(&inner_e).find(|(p, _)| *p != pid) {
                        let d = Diagnostic::error(
                            "circ::check::when_target",
                            st.span,
                            format!("this `when` updates `{}` and `{}`", self.paths[pid].name, self.paths[*bad].name),
                        )
                        .label("a second pathway")
                        .with(s.span, "in this `when`")
                        .help("split it into one `when` per pathway");
                        self.err(d);
                        continue;
                    }
                    if let Some(c) = c {
                        let then = inner.into_iter().map(|x| x.1).collect();
                        let els = inner_e.into_iter().map(|x| x.1).collect();
                        out.push((pid, Stmt { kind: StmtKind::When { cond: c, then, els }, span: s.span, via: rule_ctx.map(|r| r.1) }));
                    }
                }
                S::For { var, reverse, lo, hi, body } => {
                    let range = lo.span.to(hi.span);
                    let (Some(lo), Some(hi)) = (self.const_int(lo, env, "a loop bound"), self.const_int(hi, env, "a loop bound")) else {
                        continue;
                    };
                    let Some(values) = self.unroll(lo, hi, *reverse, range, false, true) else {
                        continue;
                    };
                    self.loops.push((range, values.len() as u64));
                    for i in values {
                        let mut e2 = env.clone();
                        e2.insert(var.name.clone(), Binding::Int(i));
                        self.syn_stmts(body, &e2, rule_ctx, out);
                    }
                    self.loops.pop();
                }
                S::If { cond, then, els } => {
                    if let Some(c) = self.const_eval(cond, env) {
                        if c.as_f64() != 0.0 {
                            self.syn_stmts(then, env, rule_ctx, out);
                        } else {
                            self.syn_stmts(els, env, rule_ctx, out);
                        }
                    }
                }
                S::Apply { rule, args, to } => self.apply(rule, args, to, env, s.span, out),
            }
        }
    }

    fn first_syn_target<'a>(&mut self, stmts: impl Iterator<Item = &'a ast::Stmt>, env: &Env) -> Option<PathId> {
        for s in stmts {
            match &s.kind {
                S::Assign { target, .. } | S::Ode { target, .. }
                    if self.entities.get(&target.entity.name.name).is_some_and(|e| e.kind == EntityKind::Path) =>
                {
                    let mut quiet = Vec::new();
                    std::mem::swap(&mut quiet, &mut self.diags);
                    let r = self.lookup_path(&target.entity, env);
                    std::mem::swap(&mut quiet, &mut self.diags);
                    if r.is_some() {
                        return r;
                    }
                }
                S::When { then, .. } => {
                    if let Some(p) = self.first_syn_target(then.iter(), env) {
                        return Some(p);
                    }
                }
                _ => {}
            }
        }
        None
    }

    fn syn_target(&mut self, lv: &ast::LValue, env: &Env, rule_ctx: Option<(PathId, Span)>) -> Option<(PathId, VarId)> {
        // In a rule body, a bare name is the target pathway's state.
        if let (Some((pid, _)), None, None) = (rule_ctx, &lv.field, &lv.entity.index) {
            let n = &lv.entity.name.name;
            return match self.paths[pid].find_syn(n) {
                Some(v) => Some((pid, v)),
                None => {
                    let names: Vec<&str> = self.paths[pid].syn.iter().map(|s| s.name.as_str()).collect();
                    let mut d = Diagnostic::error(
                        "circ::name::unknown_field",
                        lv.span,
                        format!("pathway `{}` has no synapse state `{n}`", self.paths[pid].name),
                    )
                    .label("not declared")
                    .with(self.paths[pid].name_span, "pathway declared here");
                    d = match suggest(n, names.iter().copied()) {
                        Some(s) => d.help(format!("did you mean `{s}`? (or declare it in the rule: `state {n} = 0`)")),
                        None => d.help(format!("declare it in the rule with `state {n} = 0`, or on the pathway")),
                    };
                    self.err(d);
                    None
                }
            };
        }
        let name = &lv.entity.name.name;
        let is_path = self.entities.get(name).map(|e| e.kind == EntityKind::Path);
        match is_path {
            Some(true) => {
                let pid = self.lookup_path(&lv.entity, env)?;
                let field = match &lv.field {
                    Some(f) => f,
                    None => {
                        let d = Diagnostic::error(
                            "circ::check::syn_field",
                            lv.span,
                            format!("say which synapse state of `{}` changes", self.paths[pid].name),
                        )
                        .label("missing `.w`")
                        .help(format!("write `{}.w += ...`", name));
                        self.err(d);
                        return None;
                    }
                };
                match self.paths[pid].find_syn(&field.name) {
                    Some(v) => Some((pid, v)),
                    None => {
                        let names: Vec<&str> = self.paths[pid].syn.iter().map(|s| s.name.as_str()).collect();
                        let mut d = Diagnostic::error(
                            "circ::name::unknown_field",
                            field.span,
                            format!("pathway `{}` has no synapse state `{}`", self.paths[pid].name, field.name),
                        )
                        .label("not declared")
                        .with(self.paths[pid].name_span, "pathway declared here");
                        d = match suggest(&field.name, names.iter().copied()) {
                            Some(s) => d.help(format!("did you mean `{s}`?")),
                            None => d.help(format!("declare it: `path {} ... {{ {} = 0 }}`", name, field.name)),
                        };
                        self.err(d);
                        None
                    }
                }
            }
            Some(false) => {
                let d = Diagnostic::error(
                    "circ::check::neuron_in_plasticity",
                    lv.span,
                    format!("`{}` is a population: plasticity blocks change synapse state only", name),
                )
                .label("neuron variable assigned in plasticity")
                .help("compute neuron variables in a `phase`");
                self.err(d);
                None
            }
            None if lv.field.is_none() && lv.entity.index.is_none() && self.signals.iter().any(|s| s.name == *name) => {
                let decl = self.signals.iter().find(|s| s.name == *name).map(|s| s.span).unwrap_or(lv.span);
                let d = Diagnostic::error(
                    "circ::check::signal_in_plasticity",
                    lv.span,
                    format!("signal `{name}` is assigned in a plasticity block"),
                )
                .label("plasticity changes synapse state only")
                .with(decl, "declared as a signal here")
                .help(format!("compute `{name}` in a `phase`; rules can then read it"));
                self.err(d);
                None
            }
            None if lv.field.is_none() && lv.entity.index.is_none() && (self.find_param(name).is_some() || env.contains_key(name)) => {
                let d = Diagnostic::error("circ::check::assign_const", lv.span, format!("`{name}` is a constant and cannot be assigned"))
                    .label("a param or loop index")
                    .help("plasticity blocks change synapse state, e.g. `W.w += ...`");
                self.err(d);
                None
            }
            None if lv.field.is_none() && lv.entity.index.is_none() && self.metas.iter().any(|m| m.name == *name) => {
                let d = Diagnostic::error(
                    "circ::check::assign_meta",
                    lv.span,
                    format!("`{name}` is a meta-param; only the outer loop changes it"),
                )
                .label("meta-param")
                .help("plasticity blocks change synapse state, e.g. `W.w += ...`");
                self.err(d);
                None
            }
            None => {
                let mut cands = self.entity_candidates(Some(EntityKind::Path));
                cands.extend(self.signals.iter().map(|s| s.name.clone()));
                let mut d = Diagnostic::error("circ::name::unknown", lv.entity.name.span, format!("unknown pathway `{name}`"))
                    .label("not declared");
                d = match suggest(name, cands.iter().map(|s| s.as_str())) {
                    Some(s) => d.help(format!("did you mean `{s}`?")),
                    None => d.help("plasticity statements update pathways: `W.w += ...`"),
                };
                self.err(d);
                None
            }
        }
    }

    fn apply(&mut self, rule: &ast::Ident, args: &[ast::Expr], to: &ast::EntityRef, env: &Env, span: Span, out: &mut Vec<(PathId, Stmt)>) {
        let Some(rd) = self.rules.get(&rule.name).cloned() else {
            let names: Vec<String> = self.rules.keys().cloned().collect();
            let mut d =
                Diagnostic::error("circ::name::unknown_rule", rule.span, format!("unknown rule `{}`", rule.name)).label("not defined");
            d = match suggest(&rule.name, names.iter().map(|s| s.as_str())) {
                Some(s) => d.help(format!("did you mean `{s}`?")),
                None => d.help("define it with `rule NAME(args) { w += ... }`, or `import \"rules.circ\"` for the standard rules"),
            };
            self.err(d);
            return;
        };
        let Some(pid) = self.lookup_path(to, env) else {
            return;
        };
        if self.call_stack.contains(&rule.name) {
            let d = Diagnostic::error("circ::name::recursion", span, format!("rule `{}` applies itself", rule.name))
                .label("recursive application")
                .with(rd.name.span, "defined here")
                .help("rules are inlined and cannot recurse");
            self.err(d);
            return;
        }
        if args.len() != rd.params.len() {
            let d = Diagnostic::error(
                "circ::type::arity",
                span,
                format!("rule `{}` takes {} argument(s), found {}", rule.name, rd.params.len(), args.len()),
            )
            .label("wrong number of arguments")
            .with(rd.name.span, "defined here")
            .help(format!("`{}({})`", rule.name, rd.params.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")));
            self.err(d);
            return;
        }
        let n_before = self.paths[pid].syn.len();
        // State the rule needs becomes synapse state of the pathway (once).
        let fan_in = self.pops[self.paths[pid].pre].size as f64;
        let fan_out = self.pops[self.paths[pid].post].size as f64;
        let mut ienv = Env::new();
        ienv.insert("fan_in".into(), Binding::Expr(Expr::constant(fan_in, rd.name.span)));
        ienv.insert("fan_out".into(), Binding::Expr(Expr::constant(fan_out, rd.name.span)));
        for st in &rd.state {
            if self.paths[pid].find_syn(&st.name.name).is_none() {
                let init = match &st.init {
                    Some(e) => self.init_law(e, &ienv).unwrap_or(Init::zeros()),
                    None => Init::zeros(),
                };
                self.paths[pid].syn.push(SynVar { name: st.name.name.clone(), init, span: st.name.span });
            }
        }
        let mut renv = Env::new();
        for (p, a) in rd.params.iter().zip(args) {
            if let Some(v) = self.expr(a, env, Ctx::Synapse(pid)) {
                renv.insert(p.name.clone(), Binding::Expr(v));
            } else {
                return;
            }
        }
        let first_new = out.len();
        self.call_stack.push(rule.name.clone());
        self.expansions.push(Label { span, text: "from the rule applied here".into() });
        self.syn_stmts(&rd.body, &renv, Some((pid, span)), out);
        self.expansions.pop();
        self.call_stack.pop();
        // State the rule declared but this application never touches (e.g. a momentum buffer
        // with momentum = 0) is dropped: it was appended last, so no id shifts.
        let used = |var: VarId, out: &[(PathId, Stmt)]| {
            out[first_new..].iter().any(|(p, s)| {
                let mut hit = false;
                s.walk(&mut |st| match &st.kind {
                    StmtKind::Assign { target, value, .. } | StmtKind::Ode { target, value, .. } => {
                        hit |= *target == Target::Syn { path: pid, var };
                        value.walk(&mut |e| hit |= matches!(e.kind, ExprKind::Syn { path, var: v, .. } if path == pid && v == var));
                    }
                    StmtKind::When { cond, .. } => {
                        cond.walk(&mut |e| hit |= matches!(e.kind, ExprKind::Syn { path, var: v, .. } if path == pid && v == var))
                    }
                });
                *p == pid && hit
            })
        };
        while self.paths[pid].syn.len() > n_before && !used(self.paths[pid].syn.len() - 1, out) {
            self.paths[pid].syn.pop();
        }
    }

    // -----------------------------------------------------------------------------------------
    // Experiment

    fn experiment_block(&mut self, entries: &[(ast::Ident, ast::Expr)], span: Span, env: &Env) {
        let mut x = Experiment { span, ..Experiment::default() };
        for (k, v) in entries {
            match k.name.as_str() {
                "data" => match &v.kind {
                    A::Ref { entity, field: None } if entity.index.is_none() => x.data = Some((entity.name.name.clone(), v.span)),
                    A::Str(s) => x.data = Some((s.clone(), v.span)),
                    _ => {
                        let d = Diagnostic::error("circ::experiment::data", v.span, "expected a dataset or task name")
                            .label("not a name")
                            .help("e.g. `data = mnist` or `data = xor`");
                        self.err(d);
                    }
                },
                "bptt_checkpoint" if matches!(&v.kind, A::Ref { entity, field: None } if entity.index.is_none() && entity.name.name == "auto") => {
                    x.bptt_checkpoint = Some(Checkpoints::Sqrt)
                }
                "epochs" | "batch" | "seed" | "limit" | "eval_batch" | "steps" | "monitor_every" | "bptt_checkpoint" => {
                    let Some(n) = self.const_int(v, env, &format!("`{}`", k.name)) else {
                        continue;
                    };
                    let zero_ok = matches!(k.name.as_str(), "seed" | "limit" | "bptt_checkpoint");
                    if n < 0 || (n == 0 && !zero_ok) {
                        let (what, help) =
                            if zero_ok { ("0 or more", "give a non-negative integer") } else { ("positive", "give a positive integer") };
                        let d = Diagnostic::error("circ::experiment::range", v.span, format!("`{}` must be {what}, found {n}", k.name))
                            .label("out of range")
                            .help(help);
                        self.err(d);
                        continue;
                    }
                    match k.name.as_str() {
                        "epochs" => x.epochs = n as usize,
                        "batch" => x.batch = n as usize,
                        "seed" => x.seed = n as u64,
                        "eval_batch" => x.eval_batch = n as usize,
                        "steps" => x.steps = Some(n as usize),
                        "monitor_every" => x.monitor_every = Some(n as usize),
                        "bptt_checkpoint" => x.bptt_checkpoint = Some(Checkpoints::Every(n as usize)).filter(|_| n > 0),
                        _ => x.limit = Some(n as usize),
                    }
                }
                "shuffle" => {
                    if let Some(b) = self.const_eval(v, env) {
                        x.shuffle = b.as_f64() != 0.0;
                    }
                }
                key if META_KEYS.contains(&key) => {
                    let Some(value) = self.const_eval(v, env).map(|c| c.as_f64()) else { continue };
                    let meta = x.meta.get_or_insert_with(MetaConfig::default);
                    if let Err(why) = set_meta_key(meta, key, value) {
                        let d = Diagnostic::error("circ::experiment::range", v.span, format!("`{key}` {why}, found {value}"))
                            .label("out of range")
                            .help("see the meta-learning settings in docs/language.md");
                        self.err(d);
                    }
                }
                "readout" => {
                    if let Some(e) = self.expr(v, env, Ctx::Monitor) {
                        match e.kind {
                            ExprKind::Var { pop, var, .. } => x.readout = Some((pop, var, v.span)),
                            _ => {
                                let d = Diagnostic::error(
                                    "circ::experiment::readout",
                                    v.span,
                                    "the readout must be a neuron variable, like `o.a`",
                                )
                                .label("not a variable")
                                .help("name the output population's variable that holds logits or predictions");
                                self.err(d);
                            }
                        }
                    }
                }
                "loss" => match &v.kind {
                    A::Ref { entity, field: None } if entity.name.name == "cross_entropy" => x.loss = LossKind::CrossEntropy,
                    A::Ref { entity, field: None } if entity.name.name == "mse" => x.loss = LossKind::Mse,
                    _ => {
                        let d = Diagnostic::error("circ::experiment::loss", v.span, "unknown loss")
                            .label("expected `cross_entropy` or `mse`")
                            .help("`loss = cross_entropy` (softmax of the readout) or `loss = mse`");
                        self.err(d);
                    }
                },
                other => {
                    let mut d = Diagnostic::error("circ::experiment::unknown_key", k.span, format!("unknown experiment setting `{other}`"))
                        .label("not a setting");
                    d = match suggest(other, EXPERIMENT_KEYS.iter().copied()) {
                        Some(s) => d.help(format!("did you mean `{s}`?")),
                        None => d.help(format!("settings: {}", EXPERIMENT_KEYS.join(", "))),
                    };
                    self.err(d);
                }
            }
        }
        if x.meta.as_ref().is_some_and(|m| m.episodes == 0) {
            let d = Diagnostic::error("circ::experiment::episodes", span, "meta-learning settings without `episodes`")
                .label("this experiment sets ways, shots, queries or meta_lr")
                .help("add `episodes = N` to run N meta-learning episodes");
            self.err(d);
        }
        self.experiment = x;
    }

    fn apply_experiment_overrides(&mut self, x: &mut Experiment, span: Span) {
        for o in self.overrides.clone() {
            if self.used_overrides.contains(&o.name) {
                continue; // A param of that name took it.
            }
            // Settings that take a name; every other one takes a number or a bool.
            let v = match (o.name.as_str(), &o.value) {
                ("data" | "loss" | "readout", OverrideValue::Name(n)) => {
                    self.experiment_name_override(x, &o.name, n, span);
                    continue;
                }
                ("data" | "loss" | "readout", OverrideValue::Value(v)) => {
                    let d = Diagnostic::error("circ::cli::bad_value", span, format!("`--set {}` needs a name, found {v}", o.name))
                        .label("the override applies to this circuit")
                        .help(match o.name.as_str() {
                            "data" => format!("name a dataset or task: none, {}", circ_runtime::catalog::names().join(", ")),
                            "loss" => "`--set loss=cross_entropy` or `--set loss=mse`".into(),
                            _ => "name the output variable, e.g. `--set readout=o.a`".into(),
                        });
                    self.err(d);
                    continue;
                }
                ("bptt_checkpoint", OverrideValue::Name(n)) if n == "auto" => {
                    x.bptt_checkpoint = Some(Checkpoints::Sqrt);
                    continue;
                }
                (key, OverrideValue::Name(n)) if EXPERIMENT_KEYS.contains(&key) => {
                    let d = Diagnostic::error("circ::cli::bad_value", span, format!("`--set {key}` needs a number, found the name `{n}`"))
                        .label("the override applies to this circuit")
                        .help(format!("give a number, e.g. `--set {key}=1`"));
                    self.err(d);
                    continue;
                }
                (_, OverrideValue::Name(_)) => continue, // Reported as an unknown param.
                (_, OverrideValue::Value(v)) => v.as_f64(),
            };
            let as_count = |v: f64| {
                if v >= 0.0 && v.fract() == 0.0 && v < 1e15 {
                    Some(v as usize)
                } else {
                    None
                }
            };
            match o.name.as_str() {
                "epochs" | "batch" | "eval_batch" | "limit" | "seed" | "steps" | "monitor_every" | "bptt_checkpoint" => {
                    let Some(n) = as_count(v) else {
                        let d = Diagnostic::error(
                            "circ::cli::bad_value",
                            span,
                            format!("`--set {}` needs a non-negative integer, found {v}", o.name),
                        )
                        .label("the override applies to this circuit")
                        .help("give an integer");
                        self.err(d);
                        continue;
                    };
                    match o.name.as_str() {
                        "epochs" if n > 0 => x.epochs = n,
                        "batch" if n > 0 => x.batch = n,
                        "eval_batch" if n > 0 => x.eval_batch = n,
                        "limit" => x.limit = Some(n),
                        "steps" if n > 0 => x.steps = Some(n),
                        "monitor_every" if n > 0 => x.monitor_every = Some(n),
                        "seed" => x.seed = n as u64,
                        "bptt_checkpoint" => x.bptt_checkpoint = Some(Checkpoints::Every(n)).filter(|_| n > 0),
                        _ => {
                            let d = Diagnostic::error("circ::cli::bad_value", span, format!("`--set {}` must be at least 1", o.name))
                                .label("the override applies to this circuit")
                                .help("give a positive integer");
                            self.err(d);
                        }
                    }
                }
                "shuffle" => x.shuffle = v != 0.0,
                key if META_KEYS.contains(&key) => {
                    let Some(meta) = x.meta.as_mut() else {
                        let d = Diagnostic::error("circ::cli::not_meta", span, format!("`--set {key}` applies to meta-learning runs only"))
                            .label("this circuit's experiment has no `episodes`")
                            .help("meta-learning circuits set `episodes = N` in their experiment block");
                        self.err(d);
                        continue;
                    };
                    if let Err(why) = set_meta_key(meta, key, v) {
                        let d = Diagnostic::error("circ::cli::bad_value", span, format!("`--set {key}` {why}, found {v}"))
                            .label("the override applies to this circuit")
                            .help("see the meta-learning settings in docs/language.md");
                        self.err(d);
                    }
                }
                _ => {}
            }
        }
    }
}

impl Resolver<'_> {
    /// `--set data=NAME`, `--set loss=NAME`, `--set readout=POP.VAR`.
    fn experiment_name_override(&mut self, x: &mut Experiment, key: &str, n: &str, span: Span) {
        let bad = |s: &mut Self, why: String, help: String| {
            let d = Diagnostic::error("circ::cli::bad_value", span, format!("`--set {key}={n}`: {why}"))
                .label("the override applies to this circuit")
                .help(help);
            s.err(d);
        };
        match key {
            // Which names exist is the runtime's catalog: `circ run` reports an unknown one.
            "data" => x.data = Some((n.to_string(), x.data.as_ref().map(|d| d.1).unwrap_or(x.span))),
            "loss" => match n {
                "cross_entropy" => x.loss = LossKind::CrossEntropy,
                "mse" => x.loss = LossKind::Mse,
                _ => bad(self, "unknown loss".into(), "`--set loss=cross_entropy` or `--set loss=mse`".into()),
            },
            _ => {
                let (pop, var) = n.split_once('.').map_or((n, None), |(p, v)| (p, Some(v)));
                let found = self.pops.iter().position(|p| p.name == pop).and_then(|p| {
                    let v = match var {
                        Some(v) => self.pops[p].find_var(v),
                        None => self.pops[p].out,
                    };
                    v.map(|v| (p, v))
                });
                match found {
                    Some((p, v)) => x.readout = Some((p, v, x.readout.map(|r| r.2).unwrap_or(x.span))),
                    None => bad(
                        self,
                        "no such neuron variable".into(),
                        "name a population's variable, e.g. `--set readout=o.a` (or a population with an `out` variable)".into(),
                    ),
                }
            }
        }
    }
}

/// The number of nodes of an expression and its depth (a leaf has depth 1).
fn size_and_depth(e: &Expr) -> (usize, usize) {
    let mut stack = vec![(e, 1usize)];
    let (mut nodes, mut depth) = (0, 0);
    while let Some((x, d)) = stack.pop() {
        nodes += 1;
        depth = depth.max(d);
        x.for_each_child(&mut |c| stack.push((c, d + 1)));
    }
    (nodes, depth)
}

/// Sets one meta-learning setting, or says what range it needs.
fn set_meta_key(m: &mut MetaConfig, key: &str, v: f64) -> Result<(), &'static str> {
    let count = |min: f64| if v.fract() == 0.0 && v >= min && v < 1e9 { Ok(v as usize) } else { Err("must be a whole number") };
    match key {
        "episodes" => m.episodes = count(1.0).map_err(|_| "must be a positive whole number")?,
        "ways" => m.ways = count(1.0).map_err(|_| "must be a positive whole number")?,
        "shots" => m.shots = count(1.0).map_err(|_| "must be a positive whole number")?,
        "queries" => m.queries = count(1.0).map_err(|_| "must be a positive whole number")?,
        "eval_episodes" => m.eval_episodes = count(0.0).map_err(|_| "must be a non-negative whole number")?,
        "es_population" => m.es_population = count(0.0).map_err(|_| "must be a non-negative whole number")?,
        "es_sigma" if v.is_finite() && v > 0.0 => m.es_sigma = v,
        "es_sigma" => return Err("must be a positive number"),
        "meta_lr" if v.is_finite() && v > 0.0 => m.meta_lr = v,
        "meta_l1" if v.is_finite() && v >= 0.0 => m.meta_l1 = v,
        "meta_lr" => return Err("must be a positive number"),
        _ => return Err("must be a non-negative number"),
    }
    Ok(())
}

/// Why an expression has no compile-time value.
enum ConstError {
    /// It reads something that is not a constant (the reason in words).
    NotConst(Span, String),
    /// A constant divided by a constant 0 (the divisor's span).
    DivZero(Span),
    /// Integer overflow, or a float result that is not finite.
    Overflow(Span),
}

/// A type name with its indefinite article: "an int", "a float".
fn with_article(t: &str) -> String {
    if t.starts_with(['a', 'e', 'i', 'o', 'u']) {
        format!("an {t}")
    } else {
        format!("a {t}")
    }
}

fn members_text(m: &BTreeMap<i64, usize>) -> String {
    let keys: Vec<i64> = m.keys().copied().collect();
    match (keys.first(), keys.last()) {
        // (In i128: members at both ends of i64 must not overflow the span.)
        (Some(a), Some(b)) if (*b as i128 - *a as i128 + 1) == keys.len() as i128 && keys.len() > 2 => {
            format!("{a}..{b}")
        }
        _ => keys.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", "),
    }
}

fn is_law_name(n: &str) -> bool {
    matches!(
        n,
        "zeros"
            | "constant"
            | "uniform"
            | "normal"
            | "xavier_uniform"
            | "xavier_normal"
            | "kaiming_uniform"
            | "kaiming_normal"
            | "identity"
            | "orthogonal"
            | "bernoulli"
    )
}

fn law_help() -> &'static str {
    "init laws: zeros, constant(c), uniform(a, b), normal(mean, std), xavier_uniform, xavier_normal, kaiming_uniform, kaiming_normal, identity, orthogonal, bernoulli(p); each may be scaled, e.g. `uniform(-1, 1) / sqrt(fan_in)`"
}

/// Constant folding shared by `const_eval` and expression resolution.
fn const_binop(op: BinOp, a: Value, b: Value) -> Option<Value> {
    use Value::*;
    let bool_of = |x: bool| Bool(x);
    Some(match (op, a, b) {
        (BinOp::Add, Int(x), Int(y)) => Int(x.checked_add(y)?),
        (BinOp::Sub, Int(x), Int(y)) => Int(x.checked_sub(y)?),
        (BinOp::Mul, Int(x), Int(y)) => Int(x.checked_mul(y)?),
        (BinOp::Rem, Int(x), Int(y)) => Int(x.checked_rem(y)?),
        (BinOp::Pow, Int(x), Int(y)) if (0..64).contains(&y) => Int(x.checked_pow(y as u32)?),
        (BinOp::Div, _, y) if y.as_f64() == 0.0 => return None,
        (BinOp::Eq, x, y) => bool_of(x.as_f64() == y.as_f64()),
        (BinOp::Ne, x, y) => bool_of(x.as_f64() != y.as_f64()),
        (BinOp::Lt, x, y) => bool_of(x.as_f64() < y.as_f64()),
        (BinOp::Le, x, y) => bool_of(x.as_f64() <= y.as_f64()),
        (BinOp::Gt, x, y) => bool_of(x.as_f64() > y.as_f64()),
        (BinOp::Ge, x, y) => bool_of(x.as_f64() >= y.as_f64()),
        (BinOp::And, x, y) => bool_of(x.as_f64() != 0.0 && y.as_f64() != 0.0),
        (BinOp::Or, x, y) => bool_of(x.as_f64() != 0.0 || y.as_f64() != 0.0),
        (op, x, y) => {
            let (x, y) = (x.as_f64(), y.as_f64());
            let r = match op {
                BinOp::Add => x + y,
                BinOp::Sub => x - y,
                BinOp::Mul => x * y,
                BinOp::Div => x / y,
                BinOp::Rem => x % y,
                BinOp::Pow => x.powf(y),
                _ => return None,
            };
            if !r.is_finite() {
                return None;
            }
            Float(r)
        }
    })
}

#[cfg(test)]
mod tests {
    use crate::frontend::load_source;

    fn errors(src: &str) -> Vec<String> {
        load_source("t.circ", src, &[]).diags.iter().filter(|d| d.is_error()).map(|d| format!("{}: {}", d.code, d.message)).collect()
    }

    /// Runs `f` on a stack as large as the one `circ` gives the compiler (test threads have
    /// 2 MB; resolving a 3000-deep expression takes about 3 MB).
    fn on_a_large_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new().stack_size(256 << 20).spawn(f).expect("a thread").join().expect("no panic")
    }

    /// A family at the member limit resolves, and the lookups of its members stay cheap (this
    /// used to be quadratic: 20000 members took 22 s). Untimed: it finishes in well under a
    /// second when resolution is linear, and would take minutes if it were quadratic again.
    #[test]
    fn a_family_of_100000_pathways_resolves() {
        // With two rules per pathway: grouping them into per-pathway blocks was quadratic
        // (4.5 s for the fuzzer's 100000-layer program, 0.9 s once indexed).
        let src = "input x[2]\nfor i in 1..100000 {\n  pop h[i][2] { a }\n  path W[i]: x -> h[i] init zeros plastic\n}\nphase p {\n  for i in 1..100000 { h[i].a = W[i](x) }\n}\nplasticity {\n  for i in 1..100000 { W[i].w += 0.1 * post.a * pre }\n  for i in 1..100000 { W[i].w *= 0.9 }\n}\n";
        let fe = load_source("t.circ", src, &[]);
        assert!(fe.diags.is_empty(), "{:?}", fe.diags.iter().map(|d| &d.message).collect::<Vec<_>>());
        let c = fe.circuit.expect("resolved");
        assert_eq!((c.pops.len(), c.paths.len(), c.phases[0].body.len()), (100_001, 100_000, 100_000));
        let blocks = &c.plasticity[0].body;
        assert_eq!(blocks.len(), 100_000);
        assert!(blocks.iter().enumerate().all(|(i, b)| b.path == i && b.stmts.len() == 2));
    }

    #[test]
    fn loops_within_the_limits_unroll() {
        // 100000 iterations in one loop, and 300 x 300 nested (90000 in all), are allowed.
        let head = "input x[2]\npop h[2] { state a }\npath W: x -> h init zeros plastic\n";
        assert_eq!(errors(&format!("{head}phase p {{ for i in 1..100000 {{ h.a += W(x) }} }}\n")), Vec::<String>::new());
        let nested = format!("{head}phase p {{ for i in 1..300 {{ for j in 1..300 {{ h.a += W(x) }} }} }}\n");
        assert_eq!(errors(&nested), Vec::<String>::new());
        // An empty range unrolls nothing.
        assert_eq!(errors(&format!("{head}phase p {{ for i in 5..1 {{ h.a += W(x) }} }}\n")), Vec::<String>::new());
    }

    #[test]
    fn loops_past_the_limits_are_errors() {
        let head = "input x[2]\npop h[2] { state a }\npath W: x -> h init zeros plastic\n";
        let one = errors(&format!("{head}phase p {{ for i in 1..9007199254740993 {{ h.a += W(x) }} }}\n"));
        assert!(one.len() == 1 && one[0].starts_with("circ::shape::loop_too_long"), "{one:?}");
        let nested = errors(&format!("{head}phase p {{ for i in 1..1000 {{ for j in 1..1000 {{ h.a += W(x) }} }} }}\n"));
        assert_eq!(nested, vec!["circ::shape::loop_too_long: nested loops unroll 1000 × 1000 = 1000000 copies of their body".to_string()]);
        // Sequential loops, each within the limit, are bounded in all.
        let many: String = (0..11).map(|_| "for i in 1..100000 { h.a += W(x) }\n").collect();
        let e = errors(&format!("{head}phase p {{\n{many}}}\n"));
        assert!(e.len() == 1 && e[0].contains("more than 1000000 iterations in all"), "{e:?}");
        // A family nested in a family multiplies too.
        let fam = errors("input x[2]\nfor i in 1..1000 {\n  for j in 1..1000 {\n    pop h[i * 1000 + j][2] { a }\n  }\n}\n");
        assert!(fam.len() == 1 && fam[0].contains("1000 × 1000"), "{fam:?}");
    }

    fn with_set(src: &str, set: &[&str]) -> (Vec<String>, Option<crate::hir::Circuit>) {
        let ov: Vec<_> = set.iter().map(|s| super::parse_override(s).expect("parses")).collect();
        let fe = load_source("t.circ", src, &ov);
        let errs = fe.diags.iter().filter(|d| d.is_error()).map(|d| format!("{}: {}", d.code, d.message)).collect();
        (errs, fe.circuit)
    }

    #[test]
    fn overrides_of_named_experiment_settings() {
        let src = "param hidden: int = 4\ninput x[2]\npop o[hidden] { a }\npath W: x -> o init zeros plastic\nphase p { o.a = W(x) }\nexperiment { data = mnist  readout = o.a }\n";
        let (e, c) = with_set(src, &["data=xor", "loss=mse", "readout=o"]);
        assert_eq!(e, Vec::<String>::new());
        let x = c.expect("resolved").experiment;
        assert_eq!(x.data.map(|d| d.0).as_deref(), Some("xor"));
        assert_eq!(x.loss, crate::hir::LossKind::Mse);
        // A number where a name belongs, a name where a number belongs: errors, not ignored.
        let (e, _) = with_set(src, &["data=1"]);
        assert_eq!(e, vec!["circ::cli::bad_value: `--set data` needs a name, found 1".to_string()]);
        let (e, _) = with_set(src, &["epochs=xor"]);
        assert_eq!(e, vec!["circ::cli::bad_value: `--set epochs` needs a number, found the name `xor`".to_string()]);
        let (e, _) = with_set(src, &["hidden=wide"]);
        assert!(e.len() == 1 && e[0].contains("param `hidden` takes a number or a bool"), "{e:?}");
        let (e, _) = with_set(src, &["readout=o.zz"]);
        assert!(e.len() == 1 && e[0].contains("no such neuron variable"), "{e:?}");
        assert!(super::parse_override("data=x y").is_err());
        assert!(super::parse_override("data=").is_err());
    }

    #[test]
    fn a_zero_size_from_the_command_line_is_one_error() {
        let src = "param hidden: int = 4\ninput h[0][2]\nfor l in 1..3 {\n  pop h[l][hidden] { a }\n  path W[l]: h[l-1] -> h[l] init zeros plastic\n}\nphase p {\n  for l in 1..3 { h[l].a = W[l](h[l-1]) }\n}\n";
        let (e, _) = with_set(src, &["hidden=0"]);
        assert_eq!(e, vec!["circ::shape::bad_size: size 0 is out of range".to_string()]);
    }

    #[test]
    fn inlining_is_bounded_in_size_and_depth() {
        let head = "input x[2]\npop h[2] { a }\npath W: x -> h init zeros plastic\n";
        // Doubling at every level: 2^30 terms, refused at once at the call.
        let mut fns = String::from("fn f0(a) = a\n");
        for i in 1..=30 {
            fns += &format!("fn f{i}(a) = f{}(a) + f{}(a)\n", i - 1, i - 1);
        }
        let e = errors(&format!("{head}{fns}phase p {{ h.a = f30(W(x)) }}\n"));
        assert_eq!(e, vec!["circ::shape::too_large: inlining `f30` here makes an expression of more than 100000 terms".to_string()]);
        // Calls nested in arguments nest the bodies: two of a 3000-deep body pass the limit.
        let ones = " + 1".repeat(3000);
        let fns = format!("fn g0(a) = a{ones}\nfn g1(a) = g0(g0(a))\n");
        let e = on_a_large_stack(move || errors(&format!("{head}{fns}phase p {{ h.a = g1(W(x)) }}\n")));
        assert_eq!(e, vec!["circ::shape::too_large: inlining `g1` here makes an expression nested more than 4608 deep".to_string()]);
        // A param used many times copies its argument each time: counted the same way.
        let mut fns = String::from("fn k0(a) = a\n");
        for i in 1..=20 {
            fns += &format!("fn k{i}(a) = k{}(a * a * a)\n", i - 1);
        }
        let e = errors(&format!("{head}{fns}phase p {{ h.a = k20(W(x)) }}\n"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("circ::shape::too_large"), "{e:?}");
        // Arguments a fn never uses are built and dropped: small results, exponential work.
        let mut fns = String::from("fn z(a, b) = b\nfn d0(a) = a\n");
        for i in 1..=40 {
            fns += &format!("fn d{i}(a) = z(d{}(a) + d{}(a), a)\n", i - 1, i - 1);
        }
        let e = errors(&format!("{head}{fns}phase p {{ h.a = d40(W(x)) }}\n"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("circ::shape::too_large: building this program takes more than"), "{e:?}");
        // A deep chain whose result stays small is fine.
        let mut fns = String::from("fn s0(a) = a + 1\n");
        for i in 1..=3 {
            fns += &format!("fn s{i}(a) = s{}(s{}(s{}(s{}(s{}(a)))))\n", i - 1, i - 1, i - 1, i - 1, i - 1);
        }
        assert_eq!(errors(&format!("{head}{fns}phase p {{ h.a = s3(W(x)) }}\n")), Vec::<String>::new());
    }
}
