//! Forward-mode differentiation with respect to the meta-params, as an HIR → HIR rewrite.
//!
//! Input: a checked circuit with `meta` params whose experiment runs episodes (meta-learning).
//! Output: the same circuit where every neuron variable, signal and synapse state that can
//! depend on a meta-param θ_r carries a tangent ∂x/∂θ_r (`__d{r}_x`), updated by a statement
//! placed just before the one that updates x; plus the meta-loss `__meta_loss` (the
//! experiment's loss on the readout) and its tangents, which the driver averages over the
//! query samples of an episode to step the meta-params.
//! Invariants:
//! - Tangents are exact derivatives of what the primal statements compute (derivatives of the
//!   built-ins come from `autodiff::partial`, so rules that use f' get f'' here): forward mode
//!   through the whole unrolled inner loop, costing (1 + R)× the primal for R meta-params and
//!   no tape.
//! - A tangent statement reads the values its primal statement reads (it runs just before it),
//!   so statement order, two-phase plasticity and batch averaging apply to tangents unchanged.
//! - Transmission through a plastic pathway W differentiates to W(ẋ) + Ẇ(x); Ẇ is a derived
//!   view pathway `__d{r}_W` whose effective weight is the tangent of W's effective weight.
//! - Differential equations are refused (`circ::grad::unsupported`), never differentiated
//!   approximately. With `es_population > 0` (evolution strategies) only the meta-loss is added.

use crate::ast::{AssignOp, BinOp, UnOp};
use crate::autodiff::partial;
use crate::diag::{Diagnostic, Span};
use crate::hir::*;
use std::collections::{HashMap, HashSet};

/// Name of the meta-loss signal the driver reads after each query batch.
pub const META_LOSS: &str = "__meta_loss";

/// The name of the tangent of `what` with respect to meta-param `r`.
pub fn tangent_name(r: usize, what: &str) -> String {
    format!("__d{r}_{what}")
}

/// Adds tangents with respect to every meta-param when the experiment meta-learns (runs
/// episodes). Returns the circuit unchanged otherwise.
pub fn expand(c: &Circuit) -> Result<Circuit, Vec<Diagnostic>> {
    if c.experiment.meta.is_none() {
        return Ok(c.clone());
    }
    if c.metas.is_empty() {
        let d = Diagnostic::error(
            "circ::meta::no_params",
            c.experiment.span,
            "this experiment meta-learns, but the circuit has no meta-params",
        )
        .label("runs episodes")
        .help("declare the coefficients to learn, e.g. `meta theta = 1e-3`, and use them in a rule");
        return Err(vec![d]);
    }
    if c.experiment.readout.is_none() || !c.pops.iter().any(|p| matches!(p.kind, PopKind::Target { .. })) {
        let d = Diagnostic::error(
            "circ::meta::no_loss",
            c.experiment.span,
            "meta-learning needs a readout and a target to take the query loss",
        )
        .label("runs episodes")
        .help("declare `target y[N] at o` and set `readout = o.a`");
        return Err(vec![d]);
    }
    let mut t = Tangents {
        c,
        out: c.clone(),
        active: HashSet::new(),
        vars: HashMap::new(),
        sigs: HashMap::new(),
        syns: HashMap::new(),
        views: HashMap::new(),
        diags: Vec::new(),
    };
    let loss = t.add_meta_loss();
    // Evolution strategies need the meta-loss only: no tangents, so ODEs are fine too.
    if c.experiment.meta.as_ref().is_some_and(|m| m.es_population > 0) {
        return Ok(t.out);
    }
    t.find_active();
    t.declare(loss);
    t.transform();
    if t.diags.is_empty() {
        Ok(t.out)
    } else {
        Err(t.diags)
    }
}

/// A value that can carry a tangent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Leaf {
    Var(PopId, VarId),
    Signal(SignalId),
    Syn(PathId, VarId),
}

impl Leaf {
    fn of(t: Target) -> Option<Leaf> {
        match t {
            Target::Var { pop, var } => Some(Leaf::Var(pop, var)),
            Target::Signal(s) => Some(Leaf::Signal(s)),
            Target::Syn { path, var } => Some(Leaf::Syn(path, var)),
            Target::Hist(_) => None,
        }
    }
}

struct Tangents<'a> {
    c: &'a Circuit,
    /// The circuit being built; its first items are `c`'s, with the same ids.
    out: Circuit,
    /// Values that depend on some meta-param (only these get tangents: forward mode pays for
    /// nothing that θ cannot reach).
    active: HashSet<Leaf>,
    /// (r, pop, var) → tangent var.
    vars: HashMap<(usize, PopId, VarId), VarId>,
    sigs: HashMap<(usize, SignalId), SignalId>,
    /// (r, path, var) → tangent synapse var (in the same pathway).
    syns: HashMap<(usize, PathId, VarId), VarId>,
    /// (r, path) → view pathway transmitting through the tangent of the effective weight.
    views: HashMap<(usize, PathId), PathId>,
    diags: Vec<Diagnostic>,
}

fn zero(span: Span) -> Expr {
    Expr::constant(0.0, span)
}

fn is_zero(e: &Expr) -> bool {
    matches!(e.kind, ExprKind::Const(c) if c == 0.0)
}

fn bin(op: BinOp, a: Expr, b: Expr) -> Expr {
    let span = a.span;
    match op {
        BinOp::Add if is_zero(&a) => return b,
        BinOp::Add | BinOp::Sub if is_zero(&b) => return a,
        BinOp::Mul if is_zero(&a) || is_zero(&b) => return zero(span),
        BinOp::Div if is_zero(&a) => return zero(span),
        BinOp::Sub if is_zero(&a) => return Expr { kind: ExprKind::Unary { op: UnOp::Neg, arg: Box::new(b) }, span },
        _ => {}
    }
    Expr { kind: ExprKind::Binary { op, lhs: Box::new(a), rhs: Box::new(b) }, span }
}

fn reduce(op: ReduceOp, axis: Axis, arg: Expr) -> Expr {
    let span = arg.span;
    Expr { kind: ExprKind::Reduce { op, axis, arg: Box::new(arg) }, span }
}

fn softmax(arg: Expr) -> Expr {
    let span = arg.span;
    Expr { kind: ExprKind::Softmax(Box::new(arg)), span }
}

impl Tangents<'_> {
    fn r_count(&self) -> usize {
        self.c.metas.len()
    }

    /// Whether `e` can depend on a meta-param, given the active values found so far.
    fn depends(&self, e: &Expr) -> bool {
        let mut hit = false;
        e.walk(&mut |x| {
            hit |= match &x.kind {
                ExprKind::Meta(_) => true,
                ExprKind::Var { pop, var, .. } => self.active.contains(&Leaf::Var(*pop, *var)),
                ExprKind::Signal(s) => self.active.contains(&Leaf::Signal(*s)),
                ExprKind::Syn { path, var, .. } => self.active.contains(&Leaf::Syn(*path, *var)),
                ExprKind::Transmit { path, .. } => self.path_active(*path),
                // A gradient depends on everything its loss reads; refused later if active.
                ExprKind::Grad { .. } => !self.active.is_empty(),
                _ => false,
            }
        });
        hit
    }

    /// Whether a pathway's effective weight depends on a meta-param.
    fn path_active(&self, path: PathId) -> bool {
        let p = &self.out.paths[path];
        match &p.weight {
            Some(w) => self.depends(w),
            None => self.active.contains(&Leaf::Syn(path, 0)),
        }
    }

    /// Finds every value a meta-param reaches, by iterating to a fixed point over all
    /// statements (a value updated from itself stays active once it is).
    fn find_active(&mut self) {
        let stmts: Vec<Stmt> = self
            .out
            .phases
            .iter()
            .flat_map(|ph| ph.body.iter().cloned())
            .chain(self.out.plasticity.iter().flat_map(|pl| pl.body.iter().flat_map(|b| b.stmts.iter().cloned())))
            .collect();
        loop {
            let before = self.active.len();
            for s in &stmts {
                s.walk(&mut |st| {
                    if let StmtKind::Assign { target, value, .. } | StmtKind::Ode { target, value, .. } = &st.kind {
                        if let Some(l) = Leaf::of(*target) {
                            if !self.active.contains(&l) && self.depends(value) {
                                self.active.insert(l);
                            }
                        }
                    }
                });
            }
            if self.active.len() == before {
                break;
            }
        }
    }

    /// Declares tangent variables, signals, synapse state and view pathways for the active
    /// values, and the tangents of the meta-loss signal `loss` (always, so the driver finds
    /// them even when the loss does not depend on θ).
    fn declare(&mut self, loss: Option<SignalId>) {
        let c = self.c;
        let signals = self.out.signals.clone();
        for r in 0..self.r_count() {
            for (pid, p) in c.pops.iter().enumerate() {
                if p.kind != PopKind::Neurons {
                    continue;
                }
                for (vid, v) in p.vars.iter().enumerate() {
                    if !self.active.contains(&Leaf::Var(pid, vid)) {
                        continue;
                    }
                    let name = tangent_name(r, &v.name);
                    let pop = &mut self.out.pops[pid];
                    pop.vars.push(Var { name, state: v.state, init: 0.0, span: v.span });
                    self.vars.insert((r, pid, vid), pop.vars.len() - 1);
                }
            }
            for (sid, s) in signals.iter().enumerate() {
                if !self.active.contains(&Leaf::Signal(sid)) && Some(sid) != loss {
                    continue;
                }
                self.out.signals.push(Signal { name: tangent_name(r, &s.name), state: s.state, init: 0.0, span: s.span });
                self.sigs.insert((r, sid), self.out.signals.len() - 1);
            }
            for (pid, p) in c.paths.iter().enumerate() {
                if !p.plastic {
                    continue;
                }
                for (vid, v) in p.syn.iter().enumerate() {
                    if !self.active.contains(&Leaf::Syn(pid, vid)) {
                        continue;
                    }
                    let path = &mut self.out.paths[pid];
                    path.syn.push(SynVar { name: tangent_name(r, &v.name), init: Init::zeros(), span: v.span });
                    self.syns.insert((r, pid, vid), path.syn.len() - 1);
                }
            }
        }
        // View pathways: their effective weight is the tangent of the pathway's effective
        // weight (for a plain pathway, the tangent of w).
        for r in 0..self.r_count() {
            for (pid, p) in c.paths.iter().enumerate() {
                if !self.path_active(pid) {
                    continue;
                }
                let span = p.name_span;
                let w = p.weight.clone().unwrap_or(Expr { kind: ExprKind::Syn { path: pid, var: 0, transposed: false }, span });
                let dw = self.dual(&w, r);
                let view = Path {
                    name: tangent_name(r, &p.name),
                    pre: p.pre,
                    post: p.post,
                    plastic: false,
                    plastic_span: span,
                    // No state of its own: transmission reads the derived weight only.
                    syn: Vec::new(),
                    weight: Some(dw),
                    resample: true,
                    span: p.span,
                    name_span: span,
                };
                self.out.paths.push(view);
                self.views.insert((r, pid), self.out.paths.len() - 1);
            }
        }
    }

    /// `__meta_loss = loss(readout, target)`, appended to the phase that computes the readout.
    /// Returns the new signal (none without a readout and a target).
    fn add_meta_loss(&mut self) -> Option<SignalId> {
        let c = self.c;
        let (rp, rv, span) = c.experiment.readout?;
        let target = c.pops.iter().position(|p| p.kind == PopKind::Target { root: rp })?;
        let phase = c.phases.iter().rposition(|ph| {
            let mut hit = false;
            for s in &ph.body {
                s.walk(&mut |st| {
                    if let StmtKind::Assign { target: Target::Var { pop, var }, .. }
                    | StmtKind::Ode { target: Target::Var { pop, var }, .. } = st.kind
                    {
                        hit |= pop == rp && var == rv;
                    }
                })
            }
            hit
        })?;
        let ro = Expr { kind: ExprKind::Var { pop: rp, var: rv, role: Role::Direct }, span };
        let y = Expr { kind: ExprKind::Var { pop: target, var: 0, role: Role::Direct }, span };
        let value = match c.experiment.loss {
            LossKind::CrossEntropy => Expr { kind: ExprKind::CrossEntropy { logits: Box::new(ro), target: Box::new(y) }, span },
            LossKind::Mse => {
                let d = bin(BinOp::Sub, ro, y);
                reduce(ReduceOp::Mean, Axis::All, bin(BinOp::Mul, d.clone(), d))
            }
        };
        self.out.signals.push(Signal { name: META_LOSS.into(), state: false, init: 0.0, span });
        let sig = self.out.signals.len() - 1;
        self.out.phases[phase].body.push(Stmt {
            kind: StmtKind::Assign { target: Target::Signal(sig), op: AssignOp::Set, value },
            span,
            via: None,
        });
        Some(sig)
    }

    /// Inserts a tangent statement before every primal statement of phases and plasticity.
    fn transform(&mut self) {
        for pi in 0..self.out.phases.len() {
            let body = std::mem::take(&mut self.out.phases[pi].body);
            self.out.phases[pi].body = self.stmts(body);
        }
        for pl in 0..self.out.plasticity.len() {
            for b in 0..self.out.plasticity[pl].body.len() {
                let stmts = std::mem::take(&mut self.out.plasticity[pl].body[b].stmts);
                self.out.plasticity[pl].body[b].stmts = self.stmts(stmts);
            }
        }
    }

    fn stmts(&mut self, body: Vec<Stmt>) -> Vec<Stmt> {
        let mut out = Vec::new();
        for s in body {
            match s.kind {
                StmtKind::Assign { target, op, value } => {
                    for r in 0..self.r_count() {
                        if let Some(t) = self.tangent_target(target, r) {
                            let x = self.target_expr(target, s.span);
                            let dx = self.target_expr(t, s.span);
                            let dv = self.dual(&value, r);
                            let v = match op {
                                AssignOp::Set => dv,
                                AssignOp::Add => bin(BinOp::Add, dx, dv),
                                AssignOp::Sub => bin(BinOp::Sub, dx, dv),
                                AssignOp::Mul => bin(BinOp::Add, bin(BinOp::Mul, dx, value.clone()), bin(BinOp::Mul, x, dv)),
                            };
                            out.push(Stmt { kind: StmtKind::Assign { target: t, op: AssignOp::Set, value: v }, span: s.span, via: s.via });
                        }
                    }
                    out.push(Stmt { kind: StmtKind::Assign { target, op, value }, span: s.span, via: s.via });
                }
                StmtKind::When { cond, then, els } => {
                    let then = self.stmts(then);
                    let els = self.stmts(els);
                    out.push(Stmt { kind: StmtKind::When { cond, then, els }, span: s.span, via: s.via });
                }
                StmtKind::Ode { .. } => {
                    let d = Diagnostic::error(
                        "circ::grad::unsupported",
                        s.span,
                        "meta-gradients through differential equations are not supported yet",
                    )
                    .label("not differentiated")
                    .help("meta-learning differentiates plain `=`, `+=`, `-=` and `*=` equations; `es_population = N` in the experiment meta-learns by evolution strategies instead, which needs no derivatives");
                    self.diags.push(d);
                    out.push(s);
                }
            }
        }
        out
    }

    fn tangent_target(&self, t: Target, r: usize) -> Option<Target> {
        match t {
            Target::Var { pop, var } => self.vars.get(&(r, pop, var)).map(|&v| Target::Var { pop, var: v }),
            Target::Signal(s) => self.sigs.get(&(r, s)).map(|&v| Target::Signal(v)),
            Target::Syn { path, var } => self.syns.get(&(r, path, var)).map(|&v| Target::Syn { path, var: v }),
            Target::Hist(_) => None,
        }
    }

    fn target_expr(&self, t: Target, span: Span) -> Expr {
        let kind = match t {
            Target::Var { pop, var } => ExprKind::Var { pop, var, role: Role::Direct },
            Target::Signal(s) => ExprKind::Signal(s),
            Target::Syn { path, var } => ExprKind::Syn { path, var, transposed: false },
            Target::Hist(h) => ExprKind::Hist { hist: h, role: Role::Direct },
        };
        Expr { kind, span }
    }

    /// The directional derivative of `e` along θ_r: tangents of the leaves it reads, plus 1
    /// for θ_r itself.
    fn dual(&mut self, e: &Expr, r: usize) -> Expr {
        let span = e.span;
        let z = || zero(span);
        match &e.kind {
            ExprKind::Const(_) | ExprKind::Rand(_) | ExprKind::Time { .. } | ExprKind::StepCount => z(),
            ExprKind::Meta(m) => Expr::constant(if *m == r { 1.0 } else { 0.0 }, span),
            ExprKind::Var { pop, var, role } => match self.vars.get(&(r, *pop, *var)) {
                Some(&v) => Expr { kind: ExprKind::Var { pop: *pop, var: v, role: *role }, span },
                None => z(),
            },
            ExprKind::Signal(s) => match self.sigs.get(&(r, *s)) {
                Some(&v) => Expr { kind: ExprKind::Signal(v), span },
                None => z(),
            },
            ExprKind::Syn { path, var, transposed } => match self.syns.get(&(r, *path, *var)) {
                Some(&v) => Expr { kind: ExprKind::Syn { path: *path, var: v, transposed: *transposed }, span },
                None => z(),
            },
            ExprKind::Unary { op: UnOp::Neg, arg } => {
                let d = self.dual(arg, r);
                if is_zero(&d) {
                    d
                } else {
                    Expr { kind: ExprKind::Unary { op: UnOp::Neg, arg: Box::new(d) }, span }
                }
            }
            ExprKind::Unary { op: UnOp::Not, .. } => z(),
            ExprKind::Binary { op, lhs, rhs } => {
                let (da, db) = (self.dual(lhs, r), self.dual(rhs, r));
                let (a, b) = ((**lhs).clone(), (**rhs).clone());
                match op {
                    BinOp::Add => bin(BinOp::Add, da, db),
                    BinOp::Sub => bin(BinOp::Sub, da, db),
                    BinOp::Mul => bin(BinOp::Add, bin(BinOp::Mul, da, b), bin(BinOp::Mul, a, db)),
                    BinOp::Div => bin(
                        BinOp::Sub,
                        bin(BinOp::Div, da, b.clone()),
                        bin(BinOp::Div, bin(BinOp::Mul, a, db), bin(BinOp::Mul, b.clone(), b)),
                    ),
                    BinOp::Pow => {
                        let args = [a, b];
                        bin(
                            BinOp::Add,
                            bin(BinOp::Mul, da, partial(Func::Pow, &args, 0, span)),
                            bin(BinOp::Mul, db, partial(Func::Pow, &args, 1, span)),
                        )
                    }
                    _ => z(),
                }
            }
            ExprKind::Call { func, args } => {
                let mut total = z();
                for (i, a) in args.iter().enumerate() {
                    let d = self.dual(a, r);
                    if !is_zero(&d) {
                        total = bin(BinOp::Add, total, bin(BinOp::Mul, partial(*func, args, i, span), d));
                    }
                }
                total
            }
            ExprKind::Transmit { path, transpose, arg } => {
                let d = self.dual(arg, r);
                let through = if is_zero(&d) {
                    z()
                } else {
                    Expr { kind: ExprKind::Transmit { path: *path, transpose: *transpose, arg: Box::new(d) }, span }
                };
                let view = match self.views.get(&(r, *path)) {
                    Some(&v) => Expr { kind: ExprKind::Transmit { path: v, transpose: *transpose, arg: arg.clone() }, span },
                    None => z(),
                };
                bin(BinOp::Add, through, view)
            }
            ExprKind::Reduce { op, axis, arg } => {
                let d = self.dual(arg, r);
                if is_zero(&d) {
                    return d;
                }
                let x = (**arg).clone();
                match op {
                    ReduceOp::Sum | ReduceOp::Mean => reduce(*op, *axis, d),
                    ReduceOp::Max | ReduceOp::Min => {
                        let m = reduce(*op, *axis, x.clone());
                        reduce(ReduceOp::Sum, *axis, bin(BinOp::Mul, d, bin(BinOp::Eq, x, m)))
                    }
                    ReduceOp::Norm => {
                        bin(BinOp::Div, reduce(ReduceOp::Sum, *axis, bin(BinOp::Mul, x.clone(), d)), reduce(ReduceOp::Norm, *axis, x))
                    }
                    ReduceOp::LogSumExp => reduce(ReduceOp::Sum, *axis, bin(BinOp::Mul, softmax(x), d)),
                }
            }
            ExprKind::Softmax(arg) => {
                let d = self.dual(arg, r);
                if is_zero(&d) {
                    return d;
                }
                let s = softmax((**arg).clone());
                let dot = reduce(ReduceOp::Sum, Axis::All, bin(BinOp::Mul, s.clone(), d.clone()));
                bin(BinOp::Mul, s, bin(BinOp::Sub, d, dot))
            }
            ExprKind::CrossEntropy { logits, target } => {
                let dl = self.dual(logits, r);
                let dt = self.dual(target, r);
                let a = if is_zero(&dl) {
                    z()
                } else {
                    reduce(ReduceOp::Sum, Axis::All, bin(BinOp::Mul, bin(BinOp::Sub, softmax((**logits).clone()), (**target).clone()), dl))
                };
                let b = if is_zero(&dt) { z() } else { reduce(ReduceOp::Sum, Axis::All, bin(BinOp::Mul, (**logits).clone(), dt)) };
                bin(BinOp::Sub, a, b)
            }
            ExprKind::BatchMean(arg) => {
                let d = self.dual(arg, r);
                if is_zero(&d) {
                    d
                } else {
                    Expr { kind: ExprKind::BatchMean(Box::new(d)), span }
                }
            }
            ExprKind::Grad { .. } | ExprKind::Hist { .. } => {
                let d = Diagnostic::error("circ::grad::unsupported", span, "meta-gradients through grad() are not supported")
                    .label("not differentiated")
                    .help("meta-learned rules use local terms; grad() belongs to backprop baselines");
                self.diags.push(d);
                z()
            }
            // Monitor-only functions never feed the circuit.
            ExprKind::Angle(..) | ExprKind::MatStat { .. } => z(),
        }
    }
}
