//! Checking: index spaces, shapes and the semantic rules of a resolved circuit.
//!
//! Input: a [`hir::Circuit`]. Output: diagnostics (`circ::shape::…`, `circ::check::…`).
//! Invariants: [`space_of`] is the single definition of an expression's index space; lowering
//! calls it again on checked circuits, where it cannot fail. Checks never stop at the first
//! error: each statement is checked on its own.
//!
//! Rules enforced here: operands of one expression live in compatible spaces (same population
//! or broadcast scalars; in a rule, `pre`/`post`/synapse combine into the synapse space);
//! a transmission's argument lives on the pathway's sending population; a per-step variable
//! is written before it is read within a step (`state` variables carry over); rules change
//! only plastic pathways; monitor-only functions appear only in monitors.

use crate::diag::{Diagnostic, Span};
use crate::hir::*;
use std::collections::HashSet;

/// Where an expression is evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ctx {
    /// A neuron or signal equation in a phase.
    Neuron,
    /// A rule (or effective weight) of one pathway.
    Synapse(PathId),
    /// A monitor: reads anything.
    Monitor,
}

/// Checks a circuit; returns every diagnostic.
pub fn check(c: &Circuit) -> Vec<Diagnostic> {
    let mut ck = Checker { c, diags: Vec::new() };
    ck.run();
    ck.diags
}

struct Checker<'a> {
    c: &'a Circuit,
    diags: Vec<Diagnostic>,
}

fn describe(c: &Circuit, idx: Idx, ctx: Ctx) -> String {
    match (idx, ctx) {
        (Idx::Scalar, _) => "a scalar".into(),
        (Idx::Neuron(p), _) => format!("population `{}` ({} neurons)", c.pops[p].name, c.pops[p].size),
        (Idx::Pre, Ctx::Synapse(q)) => format!("the presynaptic population `{}`", c.pops[c.paths[q].pre].name),
        (Idx::Post, Ctx::Synapse(q)) => format!("the postsynaptic population `{}`", c.pops[c.paths[q].post].name),
        (Idx::Syn, Ctx::Synapse(q)) => format!("the synapses of `{}`", c.paths[q].name),
        _ => "an unknown space".into(),
    }
}

/// Joins two operand spaces. Neuron spaces of different populations of equal size combine
/// (the locality pass flags the direct read); different sizes are a shape error.
fn join(c: &Circuit, a: Space, b: Space, ctx: Ctx) -> Result<Space, (Idx, Idx)> {
    let batched = a.batched || b.batched;
    let idx = match (a.idx, b.idx) {
        (Idx::Scalar, x) | (x, Idx::Scalar) => x,
        (x, y) if x == y => x,
        (Idx::Neuron(p), Idx::Neuron(q)) if c.pops[p].size == c.pops[q].size => Idx::Neuron(p),
        (Idx::Pre, Idx::Post)
        | (Idx::Post, Idx::Pre)
        | (Idx::Syn, Idx::Pre)
        | (Idx::Pre, Idx::Syn)
        | (Idx::Syn, Idx::Post)
        | (Idx::Post, Idx::Syn) => Idx::Syn,
        _ => return Err((a.idx, b.idx)),
    };
    let _ = ctx;
    Ok(Space { idx, batched })
}

/// The index space of an expression evaluated in `ctx`, or the diagnostic explaining why it
/// has none. Iterative over the binary spine would not help readability; nesting is bounded
/// by the parser.
pub fn space_of(c: &Circuit, e: &Expr, ctx: Ctx) -> Result<Space, Diagnostic> {
    let scalar = |batched| Space { idx: Idx::Scalar, batched };
    Ok(match &e.kind {
        ExprKind::Const(_) | ExprKind::Meta(_) | ExprKind::Time { .. } | ExprKind::StepCount => Space::SCALAR,
        ExprKind::BatchMean(arg) => Space { batched: false, ..space_of(c, arg, ctx)? },
        ExprKind::Signal(_) => scalar(true),
        ExprKind::Rand(_) => scalar(true),
        ExprKind::Var { pop, role, .. } => match (ctx, role) {
            (Ctx::Synapse(_), Role::Pre) => Space { idx: Idx::Pre, batched: true },
            (Ctx::Synapse(_), Role::Post) => Space { idx: Idx::Post, batched: true },
            (Ctx::Synapse(q), Role::Direct) => {
                let p = &c.paths[q];
                return Err(Diagnostic::error(
                    "circ::shape::not_pre_or_post",
                    e.span,
                    format!(
                        "`{}` lives on population `{}`, which is neither the pre (`{}`) nor the post (`{}`) of `{}`",
                        c.pops[*pop].name, c.pops[*pop].name, c.pops[p.pre].name, c.pops[p.post].name, p.name
                    ),
                )
                .label("not reachable from this synapse")
                .with(p.name_span, "the pathway this rule updates")
                .help("a synapse rule reads its own state, `pre.*`, `post.*`, scalars, and signals arriving at its post neuron"));
            }
            _ => Space { idx: Idx::Neuron(*pop), batched: true },
        },
        ExprKind::Syn { path, transposed, .. } => match ctx {
            Ctx::Synapse(q) => {
                let (me, other) = (&c.paths[q], &c.paths[*path]);
                let ok =
                    if *transposed { other.pre == me.post && other.post == me.pre } else { other.pre == me.pre && other.post == me.post };
                if !ok {
                    let shape = |p: &Path| format!("{} -> {}", c.pops[p.pre].name, c.pops[p.post].name);
                    return Err(Diagnostic::error(
                        "circ::shape::syn_mismatch",
                        e.span,
                        format!("synapse state of `{}` ({}{}) does not match the synapses of `{}` ({})", other.name, shape(other), if *transposed { ", transposed" } else { "" }, me.name, shape(me)),
                    )
                    .label("different synapses")
                    .with(other.name_span, "declared here")
                    .help("synapse values combine only between pathways joining the same populations (or transposed ones, with transpose(W.w))"));
                }
                Space { idx: Idx::Syn, batched: false }
            }
            Ctx::Monitor => Space::SCALAR,
            Ctx::Neuron => {
                return Err(Diagnostic::error(
                    "circ::shape::syn_in_neuron",
                    e.span,
                    format!("synapse state of `{}` cannot be read in a neuron equation", c.paths[*path].name),
                )
                .label("per-synapse value")
                .help(format!("neurons receive synapses through transmission: `{}(x)`", c.paths[*path].name)));
            }
        },
        ExprKind::Transmit { path, transpose, arg } => {
            let p = &c.paths[*path];
            let (sender, receiver) = if *transpose { (p.post, p.pre) } else { (p.pre, p.post) };
            let a = space_of(c, arg, ctx)?;
            let arg_pop = match (a.idx, ctx) {
                (Idx::Scalar, _) => Some(sender),
                (Idx::Neuron(q), _) => Some(q),
                (Idx::Pre, Ctx::Synapse(q)) => Some(c.paths[q].pre),
                (Idx::Post, Ctx::Synapse(q)) => Some(c.paths[q].post),
                _ => None,
            };
            if arg_pop != Some(sender) {
                let dir = if *transpose { "backwards from" } else { "from" };
                return Err(Diagnostic::error(
                    "circ::shape::transmit_source",
                    arg.span,
                    format!(
                        "`{}{}` transmits {dir} `{}`, but its argument lives on {}",
                        p.name,
                        if *transpose { "^T" } else { "" },
                        c.pops[sender].name,
                        describe(c, a.idx, ctx)
                    ),
                )
                .label(format!("expected a value of `{}`", c.pops[sender].name))
                .with(p.name_span, format!("`{}: {} -> {}` declared here", p.name, c.pops[p.pre].name, c.pops[p.post].name))
                .help(if *transpose {
                    format!("`{}^T(e)` sends a value of `{}` back to `{}`", p.name, c.pops[p.post].name, c.pops[p.pre].name)
                } else {
                    format!("`{}(x)` sends a value of `{}` to `{}`", p.name, c.pops[p.pre].name, c.pops[p.post].name)
                }));
            }
            let idx = match ctx {
                Ctx::Synapse(q) if c.paths[q].post == receiver => Idx::Post,
                Ctx::Synapse(q) if c.paths[q].pre == receiver => Idx::Pre,
                Ctx::Synapse(q) => {
                    return Err(Diagnostic::error(
                        "circ::shape::not_pre_or_post",
                        e.span,
                        format!(
                            "this transmission arrives at `{}`, which is neither the pre nor the post of `{}`",
                            c.pops[receiver].name, c.paths[q].name
                        ),
                    )
                    .label("arrives elsewhere")
                    .help("a rule can use currents arriving at its own pre or post neurons"));
                }
                _ => Idx::Neuron(receiver),
            };
            Space { idx, batched: true }
        }
        ExprKind::Unary { arg, .. } => space_of(c, arg, ctx)?,
        ExprKind::Binary { lhs, rhs, .. } => {
            let a = space_of(c, lhs, ctx)?;
            let b = space_of(c, rhs, ctx)?;
            join_or_err(c, a, b, ctx, lhs, rhs, e.span)?
        }
        ExprKind::Call { args, .. } => {
            let mut s = Space::SCALAR;
            let mut first: Option<&Expr> = None;
            for a in args {
                let sa = space_of(c, a, ctx)?;
                s = match first {
                    None => sa,
                    Some(f) => join_or_err(c, s, sa, ctx, f, a, e.span)?,
                };
                if sa.idx != Idx::Scalar || first.is_none() {
                    first = Some(a);
                }
            }
            s
        }
        ExprKind::Reduce { axis, arg, op } => {
            let a = space_of(c, arg, ctx)?;
            let name = |prefix: &str| format!("{prefix}{}", reduce_name(*op));
            match (axis, a.idx) {
                (Axis::All, Idx::Scalar) => {
                    return Err(Diagnostic::error(
                        "circ::shape::reduce_scalar",
                        e.span,
                        format!("`{}` of a scalar reduces nothing", name("")),
                    )
                    .label("already a scalar")
                    .help("reductions take a per-neuron or per-synapse value"));
                }
                (Axis::All, _) => Space { idx: Idx::Scalar, batched: a.batched },
                (Axis::Row, Idx::Syn) => Space { idx: Idx::Post, batched: a.batched },
                (Axis::Col, Idx::Syn) => Space { idx: Idx::Pre, batched: a.batched },
                (ax, _) => {
                    let n = name(if *ax == Axis::Row { "row_" } else { "col_" });
                    return Err(Diagnostic::error(
                        "circ::shape::reduce_axis",
                        e.span,
                        format!("`{n}` reduces per-synapse values, but its argument is {}", describe(c, a.idx, ctx)),
                    )
                    .label("not a synapse value")
                    .help(format!("use `{}` to reduce a population", reduce_name(*op))));
                }
            }
        }
        ExprKind::Softmax(arg) => {
            let a = space_of(c, arg, ctx)?;
            if a.idx == Idx::Scalar || a.idx == Idx::Syn {
                return Err(Diagnostic::error(
                    "circ::shape::softmax",
                    e.span,
                    format!("softmax normalises over a population, but its argument is {}", describe(c, a.idx, ctx)),
                )
                .label("not a population value")
                .help("write `softmax(o.a)`"));
            }
            a
        }
        ExprKind::CrossEntropy { logits, target } => {
            let a = space_of(c, logits, ctx)?;
            let b = space_of(c, target, ctx)?;
            join_or_err(c, a, b, ctx, logits, target, e.span)?;
            if a.idx == Idx::Scalar {
                return Err(Diagnostic::error("circ::shape::cross_entropy", e.span, "cross_entropy takes per-neuron logits")
                    .label("scalar logits")
                    .help("write `cross_entropy(o.a, y)`"));
            }
            Space { idx: Idx::Scalar, batched: true }
        }
        ExprKind::Grad { wrt, .. } => match ctx {
            Ctx::Synapse(q) if c.paths[q].pre == c.paths[*wrt].pre && c.paths[q].post == c.paths[*wrt].post => {
                Space { idx: Idx::Syn, batched: true }
            }
            Ctx::Monitor => Space::SCALAR,
            _ => {
                return Err(Diagnostic::error(
                    "circ::shape::grad",
                    e.span,
                    format!("grad(_, {}) is per synapse of `{}`", c.paths[*wrt].name, c.paths[*wrt].name),
                )
                .label("used elsewhere")
                .help("use it in a rule of that pathway"));
            }
        },
        ExprKind::Angle(..) | ExprKind::MatStat { .. } => {
            if ctx != Ctx::Monitor {
                return Err(Diagnostic::error("circ::check::monitor_only", e.span, "this function is for monitors only")
                    .label("monitor-only")
                    .help("angle, symmetry, spectral_radius, effective_rank and histogram measure the circuit; use them in a `monitor`"));
            }
            Space::SCALAR
        }
    })
}

fn reduce_name(op: ReduceOp) -> &'static str {
    match op {
        ReduceOp::Sum => "sum",
        ReduceOp::Mean => "mean",
        ReduceOp::Max => "max",
        ReduceOp::Min => "min",
        ReduceOp::Norm => "norm",
        ReduceOp::LogSumExp => "logsumexp",
    }
}

fn join_or_err(c: &Circuit, a: Space, b: Space, ctx: Ctx, l: &Expr, r: &Expr, span: Span) -> Result<Space, Diagnostic> {
    join(c, a, b, ctx).map_err(|(x, y)| {
        let mut d = Diagnostic::error(
            "circ::shape::mismatch",
            span,
            format!("cannot combine {} with {}", describe(c, x, ctx), describe(c, y, ctx)),
        )
        .label("incompatible operands")
        .with(l.span, describe(c, x, ctx))
        .with(r.span, describe(c, y, ctx));
        d = match (x, y) {
            (Idx::Neuron(_), Idx::Neuron(_)) => {
                d.help("values of different populations meet only through a pathway: declare `path P: a -> b` and write `P(a)`")
            }
            _ => d.help("reduce one side (sum, mean, row_sum) or transmit it through a pathway"),
        };
        d
    })
}

impl Checker<'_> {
    fn run(&mut self) {
        let c = self.c;
        // Effective weights.
        for (pid, p) in c.paths.iter().enumerate() {
            if let Some(w) = &p.weight {
                match space_of(c, w, Ctx::Synapse(pid)) {
                    Ok(s) if s.batched => {
                        let d = Diagnostic::error(
                            "circ::shape::weight_batched",
                            w.span,
                            format!("the effective weight of `{}` depends on neuron activity", p.name),
                        )
                        .label("varies per sample")
                        .help("an effective weight may use synapse state and scalars only");
                        self.diags.push(d);
                    }
                    Ok(_) => {}
                    Err(d) => self.diags.push(d),
                }
            }
        }
        // Phases in order, tracking what each step has written.
        let mut written: HashSet<Target> = HashSet::new();
        let mut after_phase: Vec<HashSet<Target>> = Vec::new();
        for ph in &c.phases {
            for s in &ph.body {
                self.neuron_stmt(s, &mut written, false);
            }
            after_phase.push(written.clone());
        }
        // Plasticity.
        for pl in &c.plasticity {
            let avail = match pl.schedule {
                Schedule::After(i) => after_phase.get(i).cloned().unwrap_or_default(),
                _ => written.clone(),
            };
            for b in &pl.body {
                let path = &c.paths[b.path];
                for s in &b.stmts {
                    if !path.plastic {
                        let at = s.via.unwrap_or(s.span);
                        let d =
                            Diagnostic::error("circ::check::fixed_path", at, format!("`{}` is fixed, but this rule changes it", path.name))
                                .label("updates a fixed pathway")
                                .with(path.plastic_span, "declared fixed here")
                                .help(format!("declare `{}` plastic, or remove the rule", path.name));
                        self.diags.push(d);
                        break;
                    }
                }
                for s in &b.stmts {
                    self.syn_stmt(s, b.path, &avail);
                }
            }
        }
        // Monitors.
        for m in &c.monitors {
            let ctx = match m.expr.first_syn_path() {
                Some(pid) => Ctx::Synapse(pid),
                None => Ctx::Monitor,
            };
            if let Err(d) = space_of(c, &m.expr, ctx) {
                self.diags.push(d);
            }
        }
        // Experiment readout must be a population of neurons.
        if let Some((pop, _, span)) = c.experiment.readout {
            if c.pops[pop].kind != PopKind::Neurons {
                let d = Diagnostic::error(
                    "circ::experiment::readout",
                    span,
                    format!("the readout `{}` is clamped from data", c.pops[pop].name),
                )
                .label("not computed by the circuit")
                .help("read out the output population, e.g. `readout = o.a`");
                self.diags.push(d);
            }
        }
    }

    /// Reports reads of per-step variables not yet written in this step.
    fn reads_before_write(&mut self, e: &Expr, written: &HashSet<Target>, in_plasticity: bool) {
        let c = self.c;
        let mut found: Vec<(Target, Span)> = Vec::new();
        e.walk(&mut |x| match &x.kind {
            ExprKind::Var { pop, var, .. } => {
                let p = &c.pops[*pop];
                if p.kind == PopKind::Neurons && !p.vars[*var].state {
                    let t = Target::Var { pop: *pop, var: *var };
                    if !written.contains(&t) {
                        found.push((t, x.span));
                    }
                }
            }
            ExprKind::Signal(s) if !c.signals[*s].state => {
                let t = Target::Signal(*s);
                if !written.contains(&t) {
                    found.push((t, x.span));
                }
            }
            _ => {}
        });
        for (t, span) in found {
            let name = c.target_name(t);
            let decl = match t {
                Target::Var { pop, var } => c.pops[pop].vars[var].span,
                Target::Signal(s) => c.signals[s].span,
                Target::Syn { .. } => span,
            };
            let msg = if in_plasticity {
                format!("`{name}` is read by a rule but no phase before it writes it")
            } else {
                format!("`{name}` is read before this step writes it")
            };
            let d = Diagnostic::error("circ::check::read_before_write", span, msg)
                .label("read here")
                .with(decl, "declared here")
                .help(format!("compute `{name}` in an earlier statement, or declare it `state` to carry it over from the last step"));
            self.diags.push(d);
        }
    }

    fn neuron_stmt(&mut self, s: &Stmt, written: &mut HashSet<Target>, conditional: bool) {
        let c = self.c;
        match &s.kind {
            StmtKind::Assign { target, value, .. } | StmtKind::Ode { target, value, .. } => {
                self.reads_before_write(value, written, false);
                // `+=` reads the old value too.
                if !matches!(s.kind, StmtKind::Assign { op: crate::ast::AssignOp::Set, .. })
                    && !written.contains(target)
                    && !is_state(c, *target)
                {
                    let d = Diagnostic::error(
                        "circ::check::read_before_write",
                        s.span,
                        format!("`{}` is updated before this step writes it", c.target_name(*target)),
                    )
                    .label("reads the old value")
                    .help("assign it with `=` first, or declare it `state`");
                    self.diags.push(d);
                }
                match space_of(c, value, Ctx::Neuron) {
                    Ok(sp) => self.assign_shape(*target, sp, value, s.span),
                    Err(d) => self.diags.push(d),
                }
                if !conditional || is_state(c, *target) {
                    written.insert(*target);
                }
            }
            StmtKind::When { cond, then, els } => {
                self.reads_before_write(cond, written, false);
                let cs = match space_of(c, cond, Ctx::Neuron) {
                    Ok(sp) => Some(sp),
                    Err(d) => {
                        self.diags.push(d);
                        None
                    }
                };
                for inner in then.iter().chain(els) {
                    if let (
                        Some(cs),
                        StmtKind::Assign { target: Target::Var { pop, .. }, .. } | StmtKind::Ode { target: Target::Var { pop, .. }, .. },
                    ) = (cs, &inner.kind)
                    {
                        if let Idx::Neuron(q) = cs.idx {
                            if c.pops[q].size != c.pops[*pop].size {
                                let d = Diagnostic::error(
                                    "circ::shape::when_target",
                                    inner.span,
                                    format!("this `when` tests `{}` but assigns `{}`", c.pops[q].name, c.pops[*pop].name),
                                )
                                .label("another population")
                                .with(cond.span, "condition per neuron of this population")
                                .help("a per-neuron condition can only guard assignments to the same population");
                                self.diags.push(d);
                            }
                        }
                    }
                    self.neuron_stmt(inner, written, true);
                }
            }
        }
    }

    fn assign_shape(&mut self, target: Target, sp: Space, value: &Expr, span: Span) {
        let c = self.c;
        match target {
            Target::Var { pop, .. } => {
                if let Idx::Neuron(q) = sp.idx {
                    if c.pops[q].size != c.pops[pop].size {
                        let d = Diagnostic::error(
                            "circ::shape::mismatch",
                            value.span,
                            format!(
                                "`{}` has {} neurons but the right side has {} (population `{}`)",
                                c.target_name(target),
                                c.pops[pop].size,
                                c.pops[q].size,
                                c.pops[q].name
                            ),
                        )
                        .label(format!("{} values", c.pops[q].size))
                        .with(c.pops[pop].name_span, format!("{} neurons", c.pops[pop].size))
                        .help("values move between populations through pathways: `W(x)`");
                        self.diags.push(d);
                    }
                }
            }
            Target::Signal(sid) => {
                if sp.idx != Idx::Scalar {
                    let d = Diagnostic::error(
                        "circ::shape::signal_not_scalar",
                        value.span,
                        format!("signal `{}` is a scalar but the right side is per neuron", c.signals[sid].name),
                    )
                    .label("per-neuron value")
                    .with(span, "assigned here")
                    .help("reduce it: `sum(...)`, `mean(...)`");
                    self.diags.push(d);
                }
            }
            Target::Syn { .. } => {}
        }
    }

    fn syn_stmt(&mut self, s: &Stmt, pid: PathId, avail: &HashSet<Target>) {
        let c = self.c;
        match &s.kind {
            StmtKind::Assign { value, .. } | StmtKind::Ode { value, .. } => {
                self.reads_before_write(value, avail, true);
                if let Err(d) = space_of(c, value, Ctx::Synapse(pid)) {
                    self.diags.push(d);
                }
            }
            StmtKind::When { cond, then, els } => {
                self.reads_before_write(cond, avail, true);
                if let Err(d) = space_of(c, cond, Ctx::Synapse(pid)) {
                    self.diags.push(d);
                }
                for inner in then.iter().chain(els) {
                    self.syn_stmt(inner, pid, avail);
                }
            }
        }
    }
}

fn is_state(c: &Circuit, t: Target) -> bool {
    match t {
        Target::Var { pop, var } => c.pops[pop].vars[var].state,
        Target::Signal(s) => c.signals[s].state,
        Target::Syn { .. } => true,
    }
}
