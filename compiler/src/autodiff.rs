//! Automatic differentiation: `grad(L, W.v)` in reverse mode, as an HIR → HIR rewrite.
//!
//! Input: a checked circuit whose rules or monitors contain `grad(L, W.v)`.
//! Output: an equivalent circuit without `grad`: for every distinct loss `L` a backward phase
//! `__grad_k` is appended after the forward phases, computing adjoint variables of the
//! neurons `L` depends on (`P.__adj_k_x`); each `grad(L, W.v)` becomes the synapse expression
//! `Σ post.g ⊗ pre.x ⊙ ∂weight/∂v` built from them. Lowering then treats it like any rule: a
//! batch of per-sample gradients becomes one batched outer product, averaged over the batch.
//! Invariants:
//! - Runs after the locality analysis (the generated statements read weights backwards, which
//!   is exactly why `grad` is non-local) and before lowering; the generated phase runs only in
//!   training (evaluation stops at the readout).
//! - Derivatives of every built-in are in [`partial`], shared with forward mode.
//! - Supported forward programs: straight-line phases (no `repeat`), each neuron variable on
//!   the path to `L` assigned once with `=`, outside `when`. Anything else is refused with a
//!   diagnostic at the statement (`circ::grad::unsupported`), never differentiated wrongly.

use crate::ast::{AssignOp, BinOp, UnOp};
use crate::check::{space_of, Ctx};
use crate::diag::{Diagnostic, Span};
use crate::hir::*;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Names of the backward phases start with this (evaluation never runs them, although the
/// last of a checkpointed loop writes forward values back).
pub const BACKWARD_PHASE: &str = "__grad_";

/// Expands every `grad(...)` of a checked circuit. Returns the circuit unchanged when it has
/// none.
pub fn expand(c: &Circuit) -> Result<Circuit, Vec<Diagnostic>> {
    let requests = collect(c);
    if requests.is_empty() {
        return Ok(c.clone());
    }
    let mut out = c.clone();
    let mut diags = Vec::new();
    // One backward pass per distinct loss expression (identified by its text).
    let mut losses: Vec<(String, Expr)> = Vec::new();
    for r in &requests {
        let key = c.expr_text(&r.loss);
        if !losses.iter().any(|(k, _)| *k == key) {
            losses.push((key, r.loss.clone()));
        }
    }
    let mut rewrites: HashMap<(String, PathId, VarId), Expr> = HashMap::new();
    for (k, (key, loss)) in losses.iter().enumerate() {
        let wrt: HashSet<(PathId, VarId)> = requests.iter().filter(|r| c.expr_text(&r.loss) == *key).map(|r| (r.wrt, r.var)).collect();
        match Backward::run(c, &mut out, k, loss, &wrt) {
            Ok(map) => {
                for ((p, v), e) in map {
                    rewrites.insert((key.clone(), p, v), e);
                }
            }
            Err(d) => diags.extend(d),
        }
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    // Replace each grad node by its expression.
    let replace = |e: &mut Expr| replace_grads(c, e, &rewrites);
    for pl in &mut out.plasticity {
        for b in &mut pl.body {
            for s in &mut b.stmts {
                stmt_exprs_mut(s, &mut |e| replace(e));
            }
        }
    }
    for m in &mut out.monitors {
        replace(&mut m.expr);
    }
    prune_histories(&mut out);
    Ok(out)
}

struct Request {
    loss: Expr,
    wrt: PathId,
    var: VarId,
}

fn collect(c: &Circuit) -> Vec<Request> {
    let mut out = Vec::new();
    let mut visit = |e: &Expr| {
        e.walk(&mut |x| {
            if let ExprKind::Grad { loss, wrt, var } = &x.kind {
                out.push(Request { loss: (**loss).clone(), wrt: *wrt, var: *var });
            }
        })
    };
    for pl in &c.plasticity {
        for b in &pl.body {
            for s in &b.stmts {
                s.walk(&mut |st| match &st.kind {
                    StmtKind::Assign { value, .. } | StmtKind::Ode { value, .. } => visit(value),
                    StmtKind::When { cond, .. } => visit(cond),
                });
            }
        }
    }
    for m in &c.monitors {
        visit(&m.expr);
    }
    out
}

fn replace_grads(c: &Circuit, e: &mut Expr, rewrites: &HashMap<(String, PathId, VarId), Expr>) {
    if let ExprKind::Grad { loss, wrt, var } = &e.kind {
        let key = (c.expr_text(loss), *wrt, *var);
        if let Some(r) = rewrites.get(&key) {
            *e = r.clone();
            return;
        }
    }
    e.for_each_child_mut(&mut |x| replace_grads(c, x, rewrites));
}

/// Every statement of the output circuit's phases (with their segment plans) and
/// plasticity, to change.
fn all_stmts_mut(c: &mut Circuit, f: &mut dyn FnMut(&mut Vec<Stmt>)) {
    for ph in &mut c.phases {
        f(&mut ph.body);
        if let Some(plan) = &mut ph.segments {
            f(&mut plan.head);
            f(&mut plan.replay);
        }
    }
    for pl in &mut c.plasticity {
        for b in &mut pl.body {
            f(&mut b.stmts);
        }
    }
}

/// Drops the histories that no statement or monitor reads (a loss summed over the loop
/// is assigned in it, but its values are never needed backwards): their recording statements
/// and their buffers. Histories are renumbered.
fn prune_histories(c: &mut Circuit) {
    let mut read = vec![false; c.histories.len()];
    let mut mark = |e: &mut Expr| {
        e.walk(&mut |x| {
            if let ExprKind::Hist { hist, .. } = x.kind {
                read[hist] = true;
            }
        })
    };
    all_stmts_mut(c, &mut |stmts| stmts.iter_mut().for_each(|s| stmt_exprs_mut(s, &mut mark)));
    c.monitors.iter_mut().for_each(|m| mark(&mut m.expr));
    let mut renumber = vec![usize::MAX; read.len()];
    let mut kept = Vec::new();
    for (h, hist) in std::mem::take(&mut c.histories).into_iter().enumerate() {
        if read[h] {
            renumber[h] = kept.len();
            kept.push(hist);
        }
    }
    c.histories = kept;
    let mut rename = |e: &mut Expr| renumber_hists(e, &renumber);
    all_stmts_mut(c, &mut |stmts| {
        stmts.retain(|s| !matches!(s.kind, StmtKind::Assign { target: Target::Hist(h), .. } if !read[h]));
        for s in stmts.iter_mut() {
            if let StmtKind::Assign { target: Target::Hist(h), .. } = &mut s.kind {
                *h = renumber[*h];
            }
            stmt_exprs_mut(s, &mut rename);
        }
    });
    c.monitors.iter_mut().for_each(|m| rename(&mut m.expr));
}

fn renumber_hists(e: &mut Expr, renumber: &[usize]) {
    if let ExprKind::Hist { hist, .. } = &mut e.kind {
        *hist = renumber[*hist];
    }
    e.for_each_child_mut(&mut |x| renumber_hists(x, renumber));
}

fn stmt_exprs_mut(s: &mut Stmt, f: &mut dyn FnMut(&mut Expr)) {
    match &mut s.kind {
        StmtKind::Assign { value, .. } | StmtKind::Ode { value, .. } => f(value),
        StmtKind::When { cond, then, els } => {
            f(cond);
            for x in then.iter_mut().chain(els.iter_mut()) {
                stmt_exprs_mut(x, f);
            }
        }
    }
}

// -------------------------------------------------------------------------------------------
// Smart constructors: build derivative expressions without trivial terms.

fn cst(v: f64, span: Span) -> Expr {
    Expr::constant(v, span)
}

fn is_const(e: &Expr, v: f64) -> bool {
    matches!(e.kind, ExprKind::Const(c) if c == v)
}

fn bin(op: BinOp, a: Expr, b: Expr) -> Expr {
    let span = a.span;
    if let (ExprKind::Const(x), ExprKind::Const(y)) = (&a.kind, &b.kind) {
        let v = match op {
            BinOp::Add => Some(x + y),
            BinOp::Sub => Some(x - y),
            BinOp::Mul => Some(x * y),
            BinOp::Div if *y != 0.0 => Some(x / y),
            _ => None,
        };
        if let Some(v) = v {
            return cst(v, span);
        }
    }
    match op {
        BinOp::Add if is_const(&a, 0.0) => return b,
        BinOp::Add | BinOp::Sub if is_const(&b, 0.0) => return a,
        BinOp::Mul if is_const(&a, 0.0) || is_const(&b, 0.0) => return cst(0.0, span),
        BinOp::Mul if is_const(&a, 1.0) => return b,
        BinOp::Mul | BinOp::Div if is_const(&b, 1.0) => return a,
        BinOp::Sub if is_const(&a, 0.0) => return neg(b),
        _ => {}
    }
    Expr { kind: ExprKind::Binary { op, lhs: Box::new(a), rhs: Box::new(b) }, span }
}

fn add(a: Expr, b: Expr) -> Expr {
    bin(BinOp::Add, a, b)
}
fn sub(a: Expr, b: Expr) -> Expr {
    bin(BinOp::Sub, a, b)
}
fn mul(a: Expr, b: Expr) -> Expr {
    bin(BinOp::Mul, a, b)
}
fn div(a: Expr, b: Expr) -> Expr {
    bin(BinOp::Div, a, b)
}
fn neg(a: Expr) -> Expr {
    if let ExprKind::Const(c) = a.kind {
        return cst(-c, a.span);
    }
    let span = a.span;
    Expr { kind: ExprKind::Unary { op: UnOp::Neg, arg: Box::new(a) }, span }
}
fn call(func: Func, args: Vec<Expr>, span: Span) -> Expr {
    Expr { kind: ExprKind::Call { func, args }, span }
}
fn cmp(op: BinOp, a: Expr, b: Expr) -> Expr {
    let span = a.span;
    Expr { kind: ExprKind::Binary { op, lhs: Box::new(a), rhs: Box::new(b) }, span }
}
fn reduce(op: ReduceOp, arg: Expr) -> Expr {
    let span = arg.span;
    Expr { kind: ExprKind::Reduce { op, axis: Axis::All, arg: Box::new(arg) }, span }
}
fn softmax(arg: Expr) -> Expr {
    let span = arg.span;
    Expr { kind: ExprKind::Softmax(Box::new(arg)), span }
}

/// ∂f(args)/∂args[i], as an expression of the arguments (every built-in's derivative).
/// Non-differentiable points take the derivative of the left limit (relu'(0) = 0); step,
/// sign and floor have zero derivative.
pub fn partial(f: Func, args: &[Expr], i: usize, span: Span) -> Expr {
    let x = args[0].clone();
    let one = || cst(1.0, span);
    match (f, i) {
        (Func::Relu, 0) => call(Func::Step, vec![x], span),
        (Func::LeakyRelu, 0) => {
            let s = args.get(1).cloned().unwrap_or(cst(circ_runtime::math::LEAKY_SLOPE, span));
            call(Func::Select, vec![cmp(BinOp::Gt, x, cst(0.0, span)), one(), s], span)
        }
        (Func::LeakyRelu, 1) => call(Func::Select, vec![cmp(BinOp::Gt, x.clone(), cst(0.0, span)), cst(0.0, span), x], span),
        (Func::Step | Func::Sign | Func::Floor, _) => cst(0.0, span),
        (Func::Abs, 0) => call(Func::Sign, vec![x], span),
        (Func::Exp, 0) => call(Func::Exp, vec![x], span),
        (Func::Log, 0) => div(one(), x),
        (Func::Sqrt, 0) => div(cst(0.5, span), call(Func::Sqrt, vec![x], span)),
        (Func::Tanh, 0) => {
            let t = call(Func::Tanh, vec![x], span);
            sub(one(), mul(t.clone(), t))
        }
        (Func::Sigmoid, 0) => {
            let s = call(Func::Sigmoid, vec![x], span);
            mul(s.clone(), sub(one(), s))
        }
        (Func::Softplus, 0) => {
            // d/dx log(1+e^{βx})/β = σ(βx).
            let beta = args.get(1).cloned().unwrap_or(one());
            call(Func::Sigmoid, vec![mul(beta, x)], span)
        }
        (Func::Softplus, 1) => {
            // d/dβ [sp(βx)/β] = x σ(βx)/β − softplus(x, β)/β.
            let beta = args[1].clone();
            let sig = call(Func::Sigmoid, vec![mul(beta.clone(), x.clone())], span);
            sub(div(mul(x.clone(), sig), beta.clone()), div(call(Func::Softplus, vec![x, beta.clone()], span), beta))
        }
        (Func::Gelu, 0) => {
            // GELU (tanh form): 0.5 x (1 + tanh(u)), u = c (x + 0.044715 x³).
            let c = (2.0 / std::f64::consts::PI).sqrt();
            let x3 = mul(mul(x.clone(), x.clone()), x.clone());
            let u = mul(cst(c, span), add(x.clone(), mul(cst(0.044715, span), x3)));
            let t = call(Func::Tanh, vec![u], span);
            let du = mul(cst(c, span), add(one(), mul(cst(3.0 * 0.044715, span), mul(x.clone(), x.clone()))));
            add(mul(cst(0.5, span), add(one(), t.clone())), mul(mul(cst(0.5, span), x), mul(sub(one(), mul(t.clone(), t)), du)))
        }
        (Func::Sin, 0) => call(Func::Cos, vec![x], span),
        (Func::Cos, 0) => neg(call(Func::Sin, vec![x], span)),
        (Func::Min, 0) => cmp(BinOp::Lt, x, args[1].clone()),
        (Func::Min, 1) => cmp(BinOp::Ge, x, args[1].clone()),
        (Func::Max, 0) => cmp(BinOp::Gt, x, args[1].clone()),
        (Func::Max, 1) => cmp(BinOp::Le, x, args[1].clone()),
        (Func::Clip, 0) => mul(cmp(BinOp::Gt, x.clone(), args[1].clone()), cmp(BinOp::Lt, x, args[2].clone())),
        (Func::Clip, 1) => cmp(BinOp::Le, x, args[1].clone()),
        (Func::Clip, 2) => cmp(BinOp::Ge, x, args[2].clone()),
        (Func::Select, 1) => call(Func::Select, vec![x, one(), cst(0.0, span)], span),
        (Func::Select, 2) => call(Func::Select, vec![x, cst(0.0, span), one()], span),
        (Func::Select, 0) => cst(0.0, span),
        (Func::Pow, 0) => {
            let y = args[1].clone();
            mul(y.clone(), bin(BinOp::Pow, x, sub(y, one())))
        }
        (Func::Pow, 1) => mul(call(Func::Log, vec![x.clone()], span), bin(BinOp::Pow, x, args[1].clone())),
        _ => cst(0.0, span),
    }
}

// -------------------------------------------------------------------------------------------
// The reverse sweep.

/// The expression replacing `grad(L, W.v)`, keyed by (W, v).
type GradExpr = ((PathId, VarId), Expr);

/// A place that receives adjoint contributions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Node {
    Var(PopId, VarId),
    Signal(SignalId),
}

struct Backward<'a> {
    c: &'a Circuit,
    out: &'a mut Circuit,
    k: usize,
    span: Span,
    /// Adjoint contributions not yet summed, per node.
    pending: HashMap<Node, Vec<Expr>>,
    /// Statements of the backward pass being generated, in order, in segments: plain phases,
    /// and the reversed time loops of backpropagation through time.
    segments: Vec<Segment>,
    /// Per pathway: the (post factor, pre factor) pairs of ∂L/∂(effective weight).
    weight_terms: HashMap<PathId, Vec<(Expr, Expr)>>,
    wanted: HashSet<PathId>,
    /// Inside a time loop: how each neuron variable read by the statement being
    /// differentiated is reached, and what to do with the adjoints it receives.
    looping: Option<LoopCtx>,
    fresh: usize,
    diags: Vec<Diagnostic>,
}

/// A run of backward statements: a plain phase, or a loop over `repeat` iterations backwards
/// (in checkpointed segments when `plan` is set).
struct Segment {
    repeat: usize,
    stmts: Vec<Stmt>,
    plan: Option<SegmentPlan>,
}

/// The state of the reverse sweep through one iteration of a time loop.
struct LoopCtx {
    /// Iterations each history holds: the loop's length, or a checkpoint segment's.
    len: usize,
    /// Where the statement being differentiated reads each loop variable from: the history
    /// of its value after this iteration's assignment, or at the iteration's start.
    values: HashMap<Node, Expr>,
    /// Variables assigned earlier in the iteration (their adjoints are summed in-iteration).
    earlier: HashSet<Node>,
    /// Variables assigned later in the iteration (read here with last iteration's value):
    /// their adjoints flow into these carries, consumed one iteration earlier.
    carries: BTreeMap<Node, Expr>,
    /// Loop-invariant variables: adjoints accumulate here over all iterations.
    accs: BTreeMap<Node, Expr>,
    /// Recorded histories of each loop variable (after assignment / at iteration start).
    hist_out: BTreeMap<Node, usize>,
    hist_in: BTreeMap<Node, usize>,
    /// Forward statements to insert into the loop body: (before statement index, statement).
    record: Vec<(usize, Stmt)>,
    /// The statement being differentiated.
    at: usize,
    /// Adjoint contributions within the current iteration.
    local: HashMap<Node, Vec<Expr>>,
}

impl<'a> Backward<'a> {
    fn run(
        c: &'a Circuit,
        out: &'a mut Circuit,
        k: usize,
        loss: &Expr,
        wrt: &HashSet<(PathId, VarId)>,
    ) -> Result<Vec<GradExpr>, Vec<Diagnostic>> {
        let wanted: HashSet<PathId> = wrt.iter().map(|(p, _)| *p).collect();
        let mut b = Backward {
            c,
            out,
            k,
            span: loss.span,
            pending: HashMap::new(),
            segments: vec![Segment { repeat: 1, stmts: Vec::new(), plan: None }],
            weight_terms: HashMap::new(),
            wanted,
            looping: None,
            fresh: 0,
            diags: Vec::new(),
        };
        b.validate(loss);
        if !b.diags.is_empty() {
            return Err(b.diags);
        }
        // Seed: ∂L/∂L = 1, then back through L's own expression.
        b.back(loss, cst(1.0, loss.span));
        for (pi, ph) in c.phases.iter().enumerate().rev() {
            if ph.repeat > 1 {
                b.loop_backward(pi);
                continue;
            }
            for s in ph.body.iter().rev() {
                if let StmtKind::Assign { target, value, .. } = &s.kind {
                    let Some(node) = node_of(*target) else { continue };
                    let Some(contribs) = b.pending.remove(&node) else { continue };
                    let adj = b.define_adjoint(node, contribs, s.span);
                    b.back(value, adj);
                }
            }
        }
        if !b.diags.is_empty() {
            return Err(b.diags);
        }
        for (si, seg) in std::mem::take(&mut b.segments).into_iter().enumerate() {
            if seg.stmts.is_empty() {
                continue;
            }
            let name = format!("{BACKWARD_PHASE}{k}_{si}");
            b.out.phases.push(Phase {
                name,
                repeat: seg.repeat,
                reverse: seg.repeat > 1,
                body: seg.stmts,
                segments: seg.plan,
                span: loss.span,
            });
        }
        // ∂L/∂v = Σ post ⊗ pre, times ∂(effective weight)/∂v.
        let mut result = Vec::new();
        for &(p, v) in wrt {
            let terms = b.weight_terms.get(&p).cloned().unwrap_or_default();
            let mut g: Option<Expr> = None;
            for (post, pre) in terms {
                let t = mul(post, pre);
                g = Some(match g {
                    None => t,
                    Some(acc) => add(acc, t),
                });
            }
            let g = g.unwrap_or(cst(0.0, loss.span));
            let dweight = match &c.paths[p].weight {
                None => cst(if v == 0 { 1.0 } else { 0.0 }, loss.span),
                Some(w) => forward_deriv(w, &|e| matches!(e.kind, ExprKind::Syn { path, var, transposed: false } if path == p && var == v)),
            };
            result.push(((p, v), mul(g, dweight)));
        }
        Ok(result)
    }

    /// Refuses forward programs this reverse sweep cannot differentiate exactly.
    fn validate(&mut self, loss: &Expr) {
        let c = self.c;
        // Outside loops, each variable is assigned once with `=` (a variable a loop carries
        // may also be set once before the loop: its starting value).
        let mut assigned: HashMap<Target, Span> = HashMap::new();
        for ph in &c.phases {
            let in_loop = ph.repeat > 1;
            let mut here: HashMap<Target, Span> = HashMap::new();
            for s in &ph.body {
                match &s.kind {
                    StmtKind::Assign { target, op, value } => {
                        let mut rand = None;
                        value.walk(&mut |e| {
                            if matches!(e.kind, ExprKind::Rand(_)) {
                                rand = Some(e.span);
                            }
                        });
                        if let (true, Some(r)) = (in_loop, rand) {
                            let d = Diagnostic::error("circ::grad::unsupported", r, "grad() through a random draw inside a time loop")
                                .label("drawn again in the backward pass, differently")
                                .with(loss.span, "differentiated here")
                                .help("assign the noise to a per-neuron variable first (`h.noise = sigma * randn()`) and use that");
                            self.diags.push(d);
                        }
                        // Twice in one pass of a loop, or twice in the straight-line phases.
                        let twice = |prev: Span| {
                            Diagnostic::error(
                                "circ::grad::unsupported",
                                s.span,
                                format!("grad() through `{}`, which is assigned twice, is not supported yet", c.target_name(*target)),
                            )
                            .label("second assignment")
                            .with(prev, "first assignment")
                            .help("compute the value into a new variable instead of overwriting it")
                        };
                        if let Some(prev) = here.insert(*target, s.span) {
                            self.diags.push(twice(prev));
                        } else if !in_loop {
                            if let Some(prev) = assigned.insert(*target, s.span) {
                                self.diags.push(twice(prev));
                            } else if *op != AssignOp::Set {
                                let d = Diagnostic::error(
                                    "circ::grad::unsupported",
                                    s.span,
                                    format!("grad() through `{}` updated with `{}`", c.target_name(*target), op.text()),
                                )
                                .label("an update of a value from the last step")
                                .help("write it with `=` from values of this step, or update it inside a time loop");
                                self.diags.push(d);
                            }
                        }
                    }
                    StmtKind::Ode { .. } | StmtKind::When { .. } => {
                        let d = Diagnostic::error(
                            "circ::grad::unsupported",
                            s.span,
                            "grad() through differential equations and `when` is not supported yet",
                        )
                        .label("not differentiated")
                        .with(loss.span, "differentiated here")
                        .help("differentiate a circuit of plain `=` equations");
                        self.diags.push(d);
                    }
                }
            }
            if in_loop {
                for (t, sp) in here {
                    assigned.entry(t).or_insert(sp);
                }
            }
        }
    }

    fn segment(&mut self) -> &mut Vec<Stmt> {
        &mut self.segments.last_mut().expect("at least one segment").stmts
    }

    /// Backpropagation through the time loop of phase `pi`: records the values the backward
    /// pass needs into histories during the forward loop, and emits a loop that runs the
    /// iterations backwards, carrying the adjoints of loop-carried variables from one
    /// iteration to the one before.
    ///
    /// With `bptt_checkpoint = K` (K < the loop's length) the histories hold K iterations:
    /// the forward loop saves its carried state at the start of every K-iteration segment
    /// and records nothing; the backward loop takes the segments last first, restores the
    /// segment's state, replays its K forward iterations with the recording statements, then
    /// runs them backwards. Memory: (T/K + K) iterations of state instead of T; time: one
    /// more forward pass. The replay recomputes the same values exactly (grad() refuses
    /// random draws inside time loops), so the gradient is the stored one's.
    fn loop_backward(&mut self, pi: usize) {
        let c = self.c;
        let ph = &c.phases[pi];
        let len = ph.repeat;
        let every = c.experiment.bptt_checkpoint.and_then(|k| k.segment(len));
        let rows = every.unwrap_or(len);
        let body: Vec<&Stmt> = ph.body.iter().collect();
        // Which node each statement assigns, and where in the body.
        let assigns: Vec<Option<Node>> =
            body.iter().map(|s| if let StmtKind::Assign { target, .. } = &s.kind { node_of(*target) } else { None }).collect();
        // Ordered sets and maps throughout: the order of generated statements and of the terms
        // of each sum must not depend on hashing, or runs would not be reproducible.
        let in_loop: BTreeSet<Node> = assigns.iter().flatten().copied().collect();
        let mut lc = LoopCtx {
            len: rows,
            values: HashMap::new(),
            earlier: HashSet::new(),
            carries: BTreeMap::new(),
            accs: BTreeMap::new(),
            hist_out: BTreeMap::new(),
            hist_in: BTreeMap::new(),
            record: Vec::new(),
            at: 0,
            local: HashMap::new(),
        };
        // Record every neuron variable the loop assigns (after its assignment) and, for those
        // read before their assignment, at the start of each iteration.
        for (k, n) in assigns.iter().enumerate() {
            if let Some(n) = *n {
                let h = self.new_history_len(node_pop(n), "out", rows);
                lc.hist_out.insert(n, h);
                lc.record.push((k + 1, record_stmt(h, n, self.span)));
            }
        }
        for (k, s) in body.iter().enumerate() {
            let mut reads = Vec::new();
            stmt_reads(s, &mut reads);
            for n in reads {
                let later = assigns.iter().skip(k).flatten().any(|x| *x == n);
                let before = assigns.iter().take(k).flatten().any(|x| *x == n);
                if later && !before {
                    if let std::collections::btree_map::Entry::Vacant(e) = lc.hist_in.entry(n) {
                        let h = self.new_history_len(node_pop(n), "in", rows);
                        e.insert(h);
                        lc.record.push((0, record_stmt(h, n, self.span)));
                    }
                }
            }
        }
        // Before the backward loop (this plain segment runs first): carries start with the
        // adjoints the rest of the program sends to the loop's final values.
        for &n in &in_loop {
            let init = match self.pending.remove(&n) {
                Some(cs) => cs.into_iter().reduce(add).unwrap_or(cst(0.0, self.span)),
                None => cst(0.0, self.span),
            };
            let carry = self.new_state(n, "carry");
            let (t, span) = (target_of(&carry), self.span);
            self.segment().push(assign(t, init, span));
            lc.carries.insert(n, carry);
        }
        // Loop-invariant neurons read inside: their adjoints accumulate over iterations.
        for s in &body {
            let mut reads = Vec::new();
            stmt_reads(s, &mut reads);
            for n in reads {
                if in_loop.contains(&n) || lc.accs.contains_key(&n) {
                    continue;
                }
                if let Node::Var(pop, _) = n {
                    if !matches!(c.pops[pop].kind, PopKind::Neurons) {
                        continue;
                    }
                }
                let acc = self.new_state(n, "acc");
                let span = self.span;
                self.segment().push(assign(target_of(&acc), cst(0.0, span), span));
                lc.accs.insert(n, acc);
            }
        }
        // The loop body, backwards.
        self.segments.push(Segment { repeat: len, stmts: Vec::new(), plan: None });
        self.looping = Some(lc);
        for k in (0..body.len()).rev() {
            let StmtKind::Assign { target, op, value } = &body[k].kind else { continue };
            let Some(node) = node_of(*target) else { continue };
            // `v op= e` is `v = v op e`, with v read at the iteration's start.
            let span = body[k].span;
            let value = match op {
                AssignOp::Set => value.clone(),
                _ => {
                    let old = Expr { kind: node_expr(node), span };
                    let bop = match op {
                        AssignOp::Add => BinOp::Add,
                        AssignOp::Sub => BinOp::Sub,
                        _ => BinOp::Mul,
                    };
                    Expr { kind: ExprKind::Binary { op: bop, lhs: Box::new(old), rhs: Box::new(value.clone()) }, span }
                }
            };
            // The adjoint of this iteration's value: contributions from later statements of
            // the iteration plus the carry from the iteration after; the carry is consumed.
            let lc = self.looping.as_mut().expect("in a loop");
            let mut contribs = lc.local.remove(&node).unwrap_or_default();
            let carry = lc.carries[&node].clone();
            contribs.push(carry.clone());
            let adj = self.define_adjoint(node, contribs, span);
            self.segment().push(assign(target_of(&carry), cst(0.0, span), span));
            // Values seen by statement k.
            let lc = self.looping.as_mut().expect("in a loop");
            lc.at = k;
            lc.earlier = assigns.iter().take(k).flatten().copied().collect();
            lc.values.clear();
            for (n, h) in &lc.hist_out {
                if lc.earlier.contains(n) {
                    lc.values.insert(*n, Expr { kind: ExprKind::Hist { hist: *h, role: Role::Direct }, span });
                }
            }
            for (n, h) in &lc.hist_in {
                if !lc.earlier.contains(n) {
                    lc.values.insert(*n, Expr { kind: ExprKind::Hist { hist: *h, role: Role::Direct }, span });
                }
            }
            self.back(&value, adj);
        }
        let lc = self.looping.take().expect("in a loop");
        self.segments.push(Segment { repeat: 1, stmts: Vec::new(), plan: None });
        // After the loop (earlier in the forward program): what reached the loop's starting
        // values and the loop-invariant neurons.
        for (n, carry) in lc.carries {
            self.pending.entry(n).or_default().push(carry);
        }
        for (n, acc) in lc.accs {
            self.pending.entry(n).or_default().push(acc);
        }
        // Insert the recording statements into the forward loop, or into its replay.
        let mut recording = c.phases[pi].body.clone();
        let mut record = lc.record;
        record.sort_by_key(|(k, _)| std::cmp::Reverse(*k));
        for (k, st) in record {
            recording.insert(k, st);
        }
        let Some(every) = every else {
            self.out.phases[pi].body = recording;
            return;
        };
        self.checkpoint(pi, every, recording, &lc.hist_in, &in_loop);
    }

    /// Turns the time loop of phase `pi` and the backward loop just emitted (the segment
    /// before last) into segments of `every` iterations (see [`Backward::loop_backward`]).
    fn checkpoint(&mut self, pi: usize, every: usize, recording: Vec<Stmt>, carried: &BTreeMap<Node, usize>, in_loop: &BTreeSet<Node>) {
        let (span, len) = (self.span, self.c.phases[pi].repeat);
        let segments = len.div_ceil(every);
        // The state a segment starts from: every variable an iteration reads before it
        // assigns it. One checkpoint per segment, indexed by the segment in `head`.
        let (mut save, mut restore) = (Vec::new(), Vec::new());
        for &n in carried.keys() {
            let h = self.new_history_len(node_pop(n), "ckpt", segments);
            save.push(record_stmt(h, n, span));
            let at = Expr { kind: ExprKind::Hist { hist: h, role: Role::Direct }, span };
            restore.push(assign(target_of(&Expr { kind: node_expr(n), span }), at, span));
        }
        // The forward loop saves checkpoints (several losses through one loop share the plan:
        // each adds its own checkpoints).
        let fwd = &mut self.out.phases[pi];
        match &mut fwd.segments {
            Some(plan) => plan.head.extend(save),
            None => fwd.segments = Some(SegmentPlan { len: every, head: save, replay: Vec::new() }),
        }
        let n = self.segments.len();
        self.segments[n - 2].plan = Some(SegmentPlan { len: every, head: restore, replay: recording });
        // The replays overwrite the loop's variables: keep their final values around the
        // backward loop (plasticity, monitors and the next step read them).
        for &node in in_loop {
            let kept = match node {
                Node::Var(pop, _) => Expr { kind: ExprKind::Var { pop, var: self.new_var(pop, "final"), role: Role::Direct }, span },
                Node::Signal(_) => Expr { kind: ExprKind::Signal(self.new_signal("final")), span },
            };
            let now = Expr { kind: node_expr(node), span };
            self.segments[n - 3].stmts.push(assign(target_of(&kept), now.clone(), span));
            self.segments[n - 1].stmts.push(assign(target_of(&now), kept, span));
        }
    }

    fn new_history_len(&mut self, pop: Option<PopId>, what: &str, len: usize) -> usize {
        let name = self.fresh_name(&format!("hist_{what}"));
        self.out.histories.push(History { name, pop, len });
        self.out.histories.len() - 1
    }

    /// A carried (state) variable shaped like `n`: per neuron, or a signal.
    fn new_state(&mut self, n: Node, what: &str) -> Expr {
        let name = self.fresh_name(what);
        let kind = match n {
            Node::Var(pop, _) => {
                let p = &mut self.out.pops[pop];
                p.vars.push(Var { name, state: true, init: 0.0, span: self.span });
                ExprKind::Var { pop, var: p.vars.len() - 1, role: Role::Direct }
            }
            Node::Signal(_) => {
                self.out.signals.push(Signal { name, state: true, init: 0.0, span: self.span });
                ExprKind::Signal(self.out.signals.len() - 1)
            }
        };
        Expr { kind, span: self.span }
    }

    fn fresh_name(&mut self, what: &str) -> String {
        self.fresh += 1;
        format!("__{what}_{}_{}", self.k, self.fresh)
    }

    /// Adds a per-step variable to a population of the output circuit.
    fn new_var(&mut self, pop: PopId, what: &str) -> VarId {
        let name = self.fresh_name(what);
        let p = &mut self.out.pops[pop];
        p.vars.push(Var { name, state: false, init: 0.0, span: self.span });
        p.vars.len() - 1
    }

    fn new_signal(&mut self, what: &str) -> SignalId {
        let name = self.fresh_name(what);
        self.out.signals.push(Signal { name, state: false, init: 0.0, span: self.span });
        self.out.signals.len() - 1
    }

    fn emit(&mut self, target: Target, value: Expr) {
        let span = self.span;
        self.segment().push(assign(target, value, span));
    }

    /// Materialises an expression living on population `pop` as a new variable.
    fn store(&mut self, pop: PopId, what: &str, value: Expr) -> Expr {
        if let ExprKind::Var { .. } = value.kind {
            return value;
        }
        let var = self.new_var(pop, what);
        self.emit(Target::Var { pop, var }, value);
        Expr { kind: ExprKind::Var { pop, var, role: Role::Direct }, span: self.span }
    }

    fn store_scalar(&mut self, what: &str, value: Expr) -> Expr {
        if matches!(value.kind, ExprKind::Signal(_) | ExprKind::Const(_)) {
            return value;
        }
        let s = self.new_signal(what);
        self.emit(Target::Signal(s), value);
        Expr { kind: ExprKind::Signal(s), span: self.span }
    }

    /// Sums a node's contributions into one new adjoint variable (always a new one: a single
    /// contribution may be a carry that is reset right after).
    fn define_adjoint(&mut self, node: Node, contribs: Vec<Expr>, _span: Span) -> Expr {
        let mut it = contribs.into_iter();
        let first = it.next().unwrap_or(cst(0.0, self.span));
        let sum = it.fold(first, add);
        let span = self.span;
        match node {
            Node::Var(pop, _) => {
                let var = self.new_var(pop, "adj");
                self.emit(Target::Var { pop, var }, sum);
                Expr { kind: ExprKind::Var { pop, var, role: Role::Direct }, span }
            }
            Node::Signal(_) => {
                let s = self.new_signal("adj");
                self.emit(Target::Signal(s), sum);
                Expr { kind: ExprKind::Signal(s), span }
            }
        }
    }

    /// The population an expression's values live on (None for scalars).
    fn pop_of(&self, e: &Expr) -> Option<PopId> {
        let c = self.c;
        let hists = &self.out.histories;
        let mut found = None;
        e.walk(&mut |x| {
            if found.is_some() {
                return;
            }
            match &x.kind {
                ExprKind::Var { pop, .. } => {
                    found = Some(match c.pops[*pop].kind {
                        PopKind::Target { root } => root,
                        _ => *pop,
                    })
                }
                ExprKind::Transmit { path, transpose, .. } => {
                    found = Some(if *transpose { c.paths[*path].pre } else { c.paths[*path].post })
                }
                ExprKind::Hist { hist, .. } => found = hists[*hist].pop,
                _ => {}
            }
        });
        match e.kind {
            ExprKind::Reduce { .. } | ExprKind::CrossEntropy { .. } => None,
            _ => found,
        }
    }

    /// An expression's value where the statement being differentiated reads it: inside a time
    /// loop, loop variables come from their recorded histories; elsewhere, unchanged.
    fn value(&self, e: &Expr) -> Expr {
        let Some(lc) = &self.looping else { return e.clone() };
        let mut out = e.clone();
        substitute(&mut out, &lc.values);
        out
    }

    /// Sends an adjoint contribution to a variable or signal the expression reads.
    fn contribute(&mut self, n: Node, a: Expr) {
        let span = a.span;
        match &mut self.looping {
            None => self.pending.entry(n).or_default().push(a),
            Some(lc) if lc.earlier.contains(&n) => lc.local.entry(n).or_default().push(a),
            Some(lc) => {
                // Last iteration's value (a carry) or a loop-invariant value (an accumulator).
                let Some(dst) = lc.carries.get(&n).or_else(|| lc.accs.get(&n)).cloned() else { return };
                let t = target_of(&dst);
                self.segment().push(assign(t, add(dst, a), span));
            }
        }
    }

    /// `back` for an operand of an elementwise operation: a per-sample scalar combined with
    /// a population's values (broadcast over its neurons) receives the sum of their adjoints.
    fn back_operand(&mut self, e: &Expr, a: Expr) {
        let scalar = |x: &Expr| matches!(space_of(self.out, x, Ctx::Neuron), Ok(Space { idx: Idx::Scalar, .. }));
        let a = if scalar(e) && !scalar(&a) { reduce(ReduceOp::Sum, a) } else { a };
        self.back(e, a)
    }

    /// Propagates the adjoint `a` of expression `e` to the nodes it reads.
    fn back(&mut self, e: &Expr, a: Expr) {
        if is_const(&a, 0.0) {
            return;
        }
        let span = e.span;
        match &e.kind {
            ExprKind::Const(_)
            | ExprKind::Meta(_)
            | ExprKind::Rand(_)
            | ExprKind::Time { .. }
            | ExprKind::StepCount
            | ExprKind::Hist { .. } => {}
            ExprKind::BatchMean(arg) => self.back(arg, a),
            ExprKind::Var { pop, var, .. } => {
                if matches!(self.c.pops[*pop].kind, PopKind::Neurons) {
                    self.contribute(Node::Var(*pop, *var), a);
                }
            }
            ExprKind::Signal(s) => self.contribute(Node::Signal(*s), a),
            ExprKind::Unary { op: UnOp::Neg, arg } => self.back(arg, neg(a)),
            ExprKind::Unary { op: UnOp::Not, .. } => {}
            ExprKind::Binary { op, lhs, rhs } => match op {
                BinOp::Add => {
                    self.back_operand(lhs, a.clone());
                    self.back_operand(rhs, a);
                }
                BinOp::Sub => {
                    self.back_operand(lhs, a.clone());
                    self.back_operand(rhs, neg(a));
                }
                BinOp::Mul => {
                    let (l, r) = (self.value(lhs), self.value(rhs));
                    self.back_operand(lhs, mul(a.clone(), r));
                    self.back_operand(rhs, mul(a, l));
                }
                BinOp::Div => {
                    let (l, r) = (self.value(lhs), self.value(rhs));
                    self.back_operand(lhs, div(a.clone(), r.clone()));
                    let q = div(l, mul(r.clone(), r));
                    self.back_operand(rhs, neg(mul(a, q)));
                }
                BinOp::Pow => {
                    let args = [self.value(lhs), self.value(rhs)];
                    self.back_operand(lhs, mul(a.clone(), partial(Func::Pow, &args, 0, span)));
                    if !matches!(rhs.kind, ExprKind::Const(_)) {
                        self.back_operand(rhs, mul(a, partial(Func::Pow, &args, 1, span)));
                    }
                }
                // Comparisons and logic are piecewise constant.
                _ => {}
            },
            ExprKind::Call { func, args } => {
                let vals: Vec<Expr> = args.iter().map(|x| self.value(x)).collect();
                for (i, arg) in args.iter().enumerate() {
                    let d = partial(*func, &vals, i, span);
                    self.back_operand(arg, mul(a.clone(), d));
                }
            }
            ExprKind::Transmit { path, transpose, arg } => {
                let p = &self.c.paths[*path];
                let (receiver, sender) = if *transpose { (p.pre, p.post) } else { (p.post, p.pre) };
                // Keep the adjoint at the receiver as a variable: it is used twice.
                let am = self.store(receiver, "adjin", a);
                if self.wanted.contains(path) {
                    let (post_side, pre_side) = self.weight_factors(receiver, sender, &am, arg);
                    // ∂L/∂W_ij = (adjoint at post i)(value at pre j) for W(x); transposed for Wᵀ.
                    let (post, pre) = if *transpose { (pre_side, post_side) } else { (post_side, pre_side) };
                    self.weight_terms.entry(*path).or_default().push((with_role(post, Role::Post), with_role(pre, Role::Pre)));
                }
                let back = Expr { kind: ExprKind::Transmit { path: *path, transpose: !transpose, arg: Box::new(am) }, span };
                self.back(arg, back);
            }
            ExprKind::Reduce { op, axis: Axis::All, arg } => {
                let a = self.store_scalar("adjr", a);
                let x = self.value(arg);
                match op {
                    ReduceOp::Sum => self.back(arg, a),
                    ReduceOp::Mean => {
                        let n = self.pop_of(arg).map(|p| self.c.pops[p].size).unwrap_or(1) as f64;
                        self.back(arg, div(a, cst(n, span)));
                    }
                    ReduceOp::Max | ReduceOp::Min => {
                        let m = reduce(*op, x.clone());
                        self.back(arg, mul(a, cmp(BinOp::Eq, x, m)));
                    }
                    ReduceOp::Norm => {
                        let n = reduce(ReduceOp::Norm, x.clone());
                        self.back(arg, mul(a, div(x, n)));
                    }
                    ReduceOp::LogSumExp => self.back(arg, mul(a, softmax(x))),
                }
            }
            ExprKind::Softmax(arg) => {
                // ∂L/∂x = s ⊙ (a − Σ a ⊙ s).
                let pop = self.pop_of(arg).unwrap_or(0);
                let x = self.value(arg);
                let s = self.store(pop, "sm", softmax(x));
                let a = self.store(pop, "adjs", a);
                let dot = reduce(ReduceOp::Sum, mul(a.clone(), s.clone()));
                self.back(arg, mul(s, sub(a, dot)));
            }
            ExprKind::CrossEntropy { logits, target } => {
                let a = self.store_scalar("adjce", a);
                let (l, t) = (self.value(logits), self.value(target));
                self.back(logits, mul(a.clone(), sub(softmax(l.clone()), t)));
                self.back(target, mul(a, neg(l)));
            }
            ExprKind::Reduce { .. } | ExprKind::Syn { .. } | ExprKind::Grad { .. } | ExprKind::Angle(..) | ExprKind::MatStat { .. } => {
                let d = Diagnostic::error("circ::grad::unsupported", span, "grad() cannot differentiate through this expression yet")
                    .label("not differentiable here")
                    .help("grad() follows neuron equations, transmissions, reductions over populations, softmax and cross-entropy");
                self.diags.push(d);
            }
        }
    }

    /// The two factors of ∂L/∂W for a transmission: the adjoint arriving at the receiver and
    /// the value sent. Inside a time loop they are summed over iterations: as recorded
    /// histories when the value sent changes from iteration to iteration (one outer product
    /// over iterations × samples), or as an accumulated adjoint when it does not.
    fn weight_factors(&mut self, receiver: PopId, sender: PopId, am: &Expr, arg: &Expr) -> (Expr, Expr) {
        let span = am.span;
        let Some(lc) = &self.looping else {
            let x = self.store(sender, "x", arg.clone());
            return (am.clone(), x);
        };
        let x = self.value(arg);
        let mut varies = false;
        x.walk(&mut |n| varies |= matches!(n.kind, ExprKind::Hist { .. }));
        if !varies {
            // Σ_t a_t ⊗ x = (Σ_t a_t) ⊗ x: accumulate the adjoint over the iterations.
            let node = if let ExprKind::Var { pop, var, .. } = am.kind { Node::Var(pop, var) } else { Node::Var(receiver, 0) };
            let acc = self.new_state(node, "gacc");
            let pre_loop = self.segments.len() - 2;
            self.segments[pre_loop].stmts.push(assign(target_of(&acc), cst(0.0, span), span));
            self.segment().push(assign(target_of(&acc), add(acc.clone(), am.clone()), span));
            let xs = self.store(sender, "x", x);
            return (acc, xs);
        }
        let at = lc.at;
        // The value sent, per iteration: its history, or a new one recorded in the forward loop.
        let hx = match &x.kind {
            ExprKind::Hist { hist, .. } => *hist,
            _ => {
                let h = self.new_history_len(Some(sender), "sent", lc.len);
                let rec = assign(Target::Hist(h), arg.clone(), span);
                self.looping.as_mut().expect("in a loop").record.push((at, rec));
                h
            }
        };
        let len = self.looping.as_ref().expect("in a loop").len;
        let ha = self.new_history_len(Some(receiver), "adj", len);
        self.segment().push(assign(Target::Hist(ha), am.clone(), span));
        (
            Expr { kind: ExprKind::Hist { hist: ha, role: Role::Direct }, span },
            Expr { kind: ExprKind::Hist { hist: hx, role: Role::Direct }, span },
        )
    }
}

/// The node a statement's target is, if it takes adjoints.
fn node_of(t: Target) -> Option<Node> {
    match t {
        Target::Var { pop, var } => Some(Node::Var(pop, var)),
        Target::Signal(s) => Some(Node::Signal(s)),
        Target::Syn { .. } | Target::Hist(_) => None,
    }
}

fn node_expr(n: Node) -> ExprKind {
    match n {
        Node::Var(pop, var) => ExprKind::Var { pop, var, role: Role::Direct },
        Node::Signal(s) => ExprKind::Signal(s),
    }
}

fn target_of(e: &Expr) -> Target {
    match e.kind {
        ExprKind::Var { pop, var, .. } => Target::Var { pop, var },
        ExprKind::Signal(s) => Target::Signal(s),
        _ => unreachable!("carries and accumulators are variables or signals"),
    }
}

fn assign(target: Target, value: Expr, span: Span) -> Stmt {
    Stmt { kind: StmtKind::Assign { target, op: AssignOp::Set, value }, span, via: None }
}

/// `hist[iter] = pop.var`: records a variable's value at the current iteration.
fn record_stmt(h: usize, n: Node, span: Span) -> Stmt {
    assign(Target::Hist(h), Expr { kind: node_expr(n), span }, span)
}

/// The population a node's values live on (`None` for a signal).
fn node_pop(n: Node) -> Option<PopId> {
    match n {
        Node::Var(pop, _) => Some(pop),
        Node::Signal(_) => None,
    }
}

/// The neuron variables and signals a statement reads.
fn stmt_reads(s: &Stmt, out: &mut Vec<Node>) {
    let mut f = |e: &Expr| {
        e.walk(&mut |x| match x.kind {
            ExprKind::Var { pop, var, .. } => out.push(Node::Var(pop, var)),
            ExprKind::Signal(sig) => out.push(Node::Signal(sig)),
            _ => {}
        })
    };
    match &s.kind {
        StmtKind::Assign { target, op, value } => {
            f(value);
            // `v += e` reads v.
            if *op != AssignOp::Set {
                if let Some(n) = node_of(*target) {
                    out.push(n);
                }
            }
        }
        StmtKind::Ode { value, .. } => f(value),
        StmtKind::When { cond, .. } => f(cond),
    }
}

/// Replaces neuron-variable and signal leaves by their values in `values`.
fn substitute(e: &mut Expr, values: &HashMap<Node, Expr>) {
    let node = match e.kind {
        ExprKind::Var { pop, var, .. } => Some(Node::Var(pop, var)),
        ExprKind::Signal(s) => Some(Node::Signal(s)),
        _ => None,
    };
    if let Some(v) = node.and_then(|n| values.get(&n)) {
        *e = v.clone();
        return;
    }
    e.for_each_child_mut(&mut |x| substitute(x, values));
}

/// Re-labels the neuron variable (or history) of a factor with its role in the pathway's rule.
fn with_role(e: Expr, role: Role) -> Expr {
    match e.kind {
        ExprKind::Var { pop, var, .. } => Expr { kind: ExprKind::Var { pop, var, role }, span: e.span },
        ExprKind::Hist { hist, .. } => Expr { kind: ExprKind::Hist { hist, role }, span: e.span },
        _ => e,
    }
}

/// Symbolic forward-mode derivative of an elementwise expression with respect to the leaves
/// selected by `is_x` (used for effective weights: ∂(m·w_bp + (1−m)·w_hebb)/∂w_bp = m).
pub fn forward_deriv(e: &Expr, is_x: &dyn Fn(&Expr) -> bool) -> Expr {
    let span = e.span;
    if is_x(e) {
        return cst(1.0, span);
    }
    match &e.kind {
        ExprKind::Unary { op: UnOp::Neg, arg } => neg(forward_deriv(arg, is_x)),
        ExprKind::Binary { op, lhs, rhs } => {
            let (dl, dr) = (forward_deriv(lhs, is_x), forward_deriv(rhs, is_x));
            let (l, r) = ((**lhs).clone(), (**rhs).clone());
            match op {
                BinOp::Add => add(dl, dr),
                BinOp::Sub => sub(dl, dr),
                BinOp::Mul => add(mul(dl, r), mul(l, dr)),
                BinOp::Div => sub(div(dl, r.clone()), div(mul(l, dr), mul(r.clone(), r))),
                BinOp::Pow => {
                    let args = [l, r];
                    add(mul(dl, partial(Func::Pow, &args, 0, span)), mul(dr, partial(Func::Pow, &args, 1, span)))
                }
                _ => cst(0.0, span),
            }
        }
        ExprKind::Call { func, args } => {
            let mut total = cst(0.0, span);
            for (i, a) in args.iter().enumerate() {
                let d = forward_deriv(a, is_x);
                if !is_const(&d, 0.0) {
                    total = add(total, mul(partial(*func, args, i, span), d));
                }
            }
            total
        }
        _ => cst(0.0, span),
    }
}
