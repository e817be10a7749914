//! Locality analysis: the tier of every equation, with the term and reason that set it.
//!
//! Input: a checked [`hir::Circuit`]. Output: a [`Report`] (one row per equation, plus the
//! circuit's tier and the rows that set it) and, via [`claim_diagnostics`], an error for every
//! equation above the circuit's declared claim (`circ::locality::…`).
//! Invariants: an equation's tier comes only from what it reads directly and the operations it
//! applies (DESIGN.md §3): a value that arrives through a declared pathway is local to the
//! receiving neuron however the sender computed it. Monitors are not equations and are
//! excluded. The tier lattice is [`Tier`]; joins keep the first term that reached the maximum.
//! A label read by a population other than its root is non-local wherever it is read, also
//! inside a reduction. A term inside an inlined `fn` body is labelled with its call.

use crate::check::call_site;
use crate::diag::{Diagnostic, Label, Sources, Span};
use crate::hir::*;

/// What kind of equation a row describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EqKind {
    Neuron,
    Signal,
    Synapse,
    Weight,
}

/// The tier of one term, why, and where.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub tier: Tier,
    pub reason: String,
    pub span: Span,
    /// Declarations that explain the verdict (e.g. the pathway used backwards).
    pub related: Vec<Label>,
}

impl Verdict {
    fn new(tier: Tier, reason: impl Into<String>, span: Span) -> Verdict {
        Verdict { tier, reason: reason.into(), span, related: Vec::new() }
    }
    fn join(self, other: Verdict) -> Verdict {
        let tier = self.tier.join(other.tier);
        // Keep the term that set the maximum (the first one, on ties).
        if other.tier > self.tier && other.tier == tier {
            Verdict { tier, ..other }
        } else if tier > self.tier && tier > other.tier {
            // Population ⊔ projection: name both terms.
            let mut v = self;
            v.tier = tier;
            v.reason = format!("{}; and {}", v.reason, other.reason);
            v.related.extend(other.related);
            // The reason already names the other term; label it only where it is elsewhere.
            if other.span != v.span {
                v.related.push(Label { span: other.span, text: other.reason });
            }
            v
        } else {
            Verdict { tier, ..self }
        }
    }
}

/// One row of the locality table.
#[derive(Clone, Debug)]
pub struct Row {
    pub kind: EqKind,
    /// What the equation assigns (`h.e`, `W1.w`).
    pub target: String,
    /// The whole statement.
    pub stmt_span: Span,
    /// For inlined rule bodies: where the rule was applied.
    pub via: Option<Span>,
    pub verdict: Verdict,
}

#[derive(Clone, Debug)]
pub struct Report {
    pub rows: Vec<Row>,
    pub tier: Tier,
}

impl Report {
    /// Rows whose tier equals the circuit's tier (the ones that set it), when above synapse.
    pub fn setters(&self) -> impl Iterator<Item = &Row> {
        self.rows.iter().filter(move |r| r.verdict.tier == self.tier && self.tier > Tier::Synapse)
    }
}

/// Computes the tier of every equation of a circuit.
pub fn analyze(c: &Circuit) -> Report {
    let mut rows = Vec::new();
    for ph in &c.phases {
        for s in &ph.body {
            neuron_rows(c, s, None, &mut rows);
        }
    }
    for (pid, p) in c.paths.iter().enumerate() {
        if let Some(w) = &p.weight {
            rows.push(Row {
                kind: EqKind::Weight,
                target: format!("{} (effective weight)", p.name),
                stmt_span: w.span,
                via: None,
                verdict: syn_tier(c, w, pid),
            });
        }
    }
    for pl in &c.plasticity {
        for b in &pl.body {
            for s in &b.stmts {
                syn_rows(c, s, b.path, None, &mut rows);
            }
        }
    }
    let tier = rows.iter().fold(Tier::Synapse, |t, r| t.join(r.verdict.tier));
    Report { rows, tier }
}

fn neuron_rows(c: &Circuit, s: &Stmt, guard: Option<&Verdict>, rows: &mut Vec<Row>) {
    match &s.kind {
        StmtKind::Assign { target, value, .. } | StmtKind::Ode { target, value, .. } => {
            let (pop, kind) = match target {
                Target::Var { pop, .. } => (Some(*pop), EqKind::Neuron),
                _ => (None, EqKind::Signal),
            };
            let mut v = at_call(neuron_tier(c, value, pop), s.span, value);
            if let Some(g) = guard {
                v = v.join(g.clone());
            }
            rows.push(Row { kind, target: c.target_name(*target), stmt_span: s.span, via: s.via, verdict: v });
        }
        StmtKind::When { cond, then, els } => {
            let pop = then.iter().chain(els).find_map(|x| match &x.kind {
                StmtKind::Assign { target: Target::Var { pop, .. }, .. } | StmtKind::Ode { target: Target::Var { pop, .. }, .. } => {
                    Some(*pop)
                }
                _ => None,
            });
            let g = at_call(neuron_tier(c, cond, pop), s.span, cond);
            let g = match guard {
                Some(o) => o.clone().join(g),
                None => g,
            };
            for x in then.iter().chain(els) {
                neuron_rows(c, x, Some(&g), rows);
            }
        }
    }
}

fn syn_rows(c: &Circuit, s: &Stmt, pid: PathId, guard: Option<&Verdict>, rows: &mut Vec<Row>) {
    match &s.kind {
        StmtKind::Assign { target, value, .. } | StmtKind::Ode { target, value, .. } => {
            let mut v =
                Verdict::new(Tier::Synapse, "own synapse, pre and post", s.span).join(at_call(syn_tier(c, value, pid), s.span, value));
            if let Some(g) = guard {
                v = v.join(g.clone());
            }
            rows.push(Row { kind: EqKind::Synapse, target: c.target_name(*target), stmt_span: s.span, via: s.via, verdict: v });
        }
        StmtKind::When { cond, then, els } => {
            let g = at_call(syn_tier(c, cond, pid), s.span, cond);
            let g = match guard {
                Some(o) => o.clone().join(g),
                None => g,
            };
            for x in then.iter().chain(els) {
                syn_rows(c, x, pid, Some(&g), rows);
            }
        }
    }
}

/// Adds a label at the call of the `fn` whose inlined body holds the verdict's term.
fn at_call(mut v: Verdict, stmt: Span, root: &Expr) -> Verdict {
    if let Some(site) = call_site(stmt, root, v.span) {
        v.related.push(Label { span: site, text: "in this call".into() });
    }
    v
}

fn children(e: &Expr) -> Vec<&Expr> {
    match &e.kind {
        ExprKind::Unary { arg, .. } => vec![arg],
        ExprKind::Binary { lhs, rhs, .. } => vec![lhs, rhs],
        ExprKind::Call { args, .. } => args.iter().collect(),
        _ => Vec::new(),
    }
}

/// Tier of an expression read by a neuron equation of `pop` (None: a signal equation).
fn neuron_tier(c: &Circuit, e: &Expr, pop: Option<PopId>) -> Verdict {
    let base = Verdict::new(Tier::Synapse, "scalars", e.span);
    match &e.kind {
        ExprKind::Const(_)
        | ExprKind::Meta(_)
        | ExprKind::Signal(_)
        | ExprKind::Rand(_)
        | ExprKind::Time { .. }
        | ExprKind::StepCount
        | ExprKind::Hist { .. } => base,
        // A mean over the samples of a batch is a temporal average at the same place.
        ExprKind::BatchMean(arg) => neuron_tier(c, arg, pop),
        ExprKind::Var { pop: q, .. } => {
            let qp = &c.pops[*q];
            match (&qp.kind, pop) {
                (_, Some(p)) if p == *q => Verdict::new(Tier::Neuron, format!("own variables of `{}`", qp.name), e.span),
                (PopKind::Target { root }, Some(p)) if *root == p => {
                    Verdict::new(Tier::Neuron, format!("the label `{}` enters at its root `{}`", qp.name, c.pops[p].name), e.span)
                }
                (PopKind::Target { root }, _) => {
                    let mut v = Verdict::new(
                        Tier::NonLocal,
                        format!(
                            "label `{}` read outside its root `{}`",
                            qp.name,
                            c.pops.get(*root).map(|r| r.name.as_str()).unwrap_or("?")
                        ),
                        e.span,
                    );
                    v.related.push(Label {
                        span: qp.span,
                        text: format!("`{}` is the target of `{}`", qp.name, c.pops.get(*root).map(|r| r.name.as_str()).unwrap_or("?")),
                    });
                    v
                }
                (_, None) => Verdict::new(Tier::NonLocal, format!("reads `{}` directly outside a reduction", qp.name), e.span),
                (_, Some(p)) => {
                    let mut v = Verdict::new(
                        Tier::NonLocal,
                        format!("`{}` reads `{}` directly, not through a pathway", c.pops[p].name, qp.name),
                        e.span,
                    );
                    v.related.push(Label { span: qp.name_span, text: format!("`{}` declared here", qp.name) });
                    v
                }
            }
        }
        ExprKind::Transmit { path, transpose, arg } => {
            let p = &c.paths[*path];
            if *transpose {
                let mut v = Verdict::new(
                    Tier::NonLocal,
                    format!("weight transport: `{}` is used backwards (`{}^T`) outside its own rule", p.name, p.name),
                    e.span,
                );
                v.related.push(Label {
                    span: p.name_span,
                    text: format!("`{}: {} -> {}` declared here", p.name, c.pops[p.pre].name, c.pops[p.post].name),
                });
                return v.join(neuron_tier(c, arg, Some(p.post)));
            }
            let mut v = Verdict::new(Tier::Neuron, format!("input arriving through `{}`", p.name), e.span);
            if let PopKind::Target { root } = c.pops[p.pre].kind {
                if Some(root) != pop {
                    v = Verdict::new(
                        Tier::NonLocal,
                        format!("label `{}` sent through `{}` to a population other than its root", c.pops[p.pre].name, p.name),
                        e.span,
                    );
                }
            }
            // The sender computes its own output: judge the argument at the sender.
            v.join(neuron_tier(c, arg, Some(p.pre)))
        }
        ExprKind::Reduce { arg, .. } | ExprKind::Softmax(arg) => {
            let what = match &e.kind {
                ExprKind::Reduce { op, axis, .. } => format!(
                    "{}{}",
                    match axis {
                        Axis::All => "",
                        Axis::Row => "row_",
                        Axis::Col => "col_",
                    },
                    format!("{op:?}").to_lowercase()
                ),
                _ => "softmax".into(),
            };
            if let Some(v) = label_inside(c, arg, pop, &what) {
                return v;
            }
            let q = reduced_pop(c, arg);
            let mut v = Verdict::new(
                Tier::Population,
                format!("reduction over population `{}`", q.map(|q| c.pops[q].name.as_str()).unwrap_or("?")),
                e.span,
            );
            if let (Some(q), Some(p)) = (q, pop) {
                if q != p && !is_target_of(c, q, p) {
                    v = Verdict::new(
                        Tier::NonLocal,
                        format!("reduction over `{}` read by `{}` (across populations)", c.pops[q].name, c.pops[p].name),
                        e.span,
                    );
                }
            }
            v.join(neuron_tier(c, arg, q.or(pop)))
        }
        ExprKind::CrossEntropy { logits, target } => {
            if let Some(v) = label_inside(c, target, pop, "cross_entropy").or_else(|| label_inside(c, logits, pop, "cross_entropy")) {
                return v;
            }
            let q = reduced_pop(c, logits);
            let mut v = Verdict::new(
                Tier::Population,
                format!("cross-entropy over population `{}`", q.map(|q| c.pops[q].name.as_str()).unwrap_or("?")),
                e.span,
            );
            if let (Some(q), Some(p)) = (q, pop) {
                if q != p && !is_target_of(c, q, p) {
                    v = Verdict::new(
                        Tier::NonLocal,
                        format!("cross-entropy over `{}` read by `{}` (across populations)", c.pops[q].name, c.pops[p].name),
                        e.span,
                    );
                }
            }
            v.join(neuron_tier(c, logits, q)).join(neuron_tier(c, target, q))
        }
        ExprKind::Grad { .. } => Verdict::new(Tier::NonLocal, "gradient: grad() differentiates through the whole circuit", e.span),
        ExprKind::Syn { .. } | ExprKind::Angle(..) | ExprKind::MatStat { .. } => base,
        ExprKind::Unary { .. } | ExprKind::Binary { .. } | ExprKind::Call { .. } => {
            children(e).into_iter().fold(base, |v, ch| v.join(neuron_tier(c, ch, pop)))
        }
    }
}

/// The first label read in `arg` (a reduction's argument, evaluated for population `pop`)
/// whose root is not `pop`: the reduction would carry the label out of its root. Reads inside
/// a transmission do not count: its argument is computed at the sender, and judged there.
/// Signal equations (`pop` None) are judged by the reduction itself.
fn label_inside(c: &Circuit, arg: &Expr, pop: Option<PopId>, what: &str) -> Option<Verdict> {
    let p = pop?;
    let mut sent: Vec<*const Expr> = Vec::new();
    arg.walk(&mut |x| {
        if let ExprKind::Transmit { arg, .. } = &x.kind {
            arg.walk(&mut |y| sent.push(y as *const Expr));
        }
    });
    let mut found = None;
    arg.walk(&mut |x| {
        if let (None, ExprKind::Var { pop: q, .. }) = (&found, &x.kind) {
            if matches!(c.pops[*q].kind, PopKind::Target { root } if root != p) && !sent.contains(&(x as *const Expr)) {
                found = Some((*q, x.span));
            }
        }
    });
    let (q, span) = found?;
    let label = &c.pops[q].name;
    let root = match c.pops[q].kind {
        PopKind::Target { root } => c.pops.get(root).map(|r| r.name.as_str()).unwrap_or("?"),
        _ => "?",
    };
    let mut v = Verdict::new(Tier::NonLocal, format!("label `{label}` read outside its root `{root}` (inside `{what}`)"), span);
    v.related.push(Label { span: c.pops[q].span, text: format!("`{label}` is the target of `{root}`") });
    Some(v)
}

fn is_target_of(c: &Circuit, target: PopId, root: PopId) -> bool {
    matches!(c.pops[target].kind, PopKind::Target { root: r } if r == root)
}

/// The population a reduction runs over: the first neuron variable or transmission receiver
/// in its argument.
fn reduced_pop(c: &Circuit, e: &Expr) -> Option<PopId> {
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
            ExprKind::Transmit { path, transpose, .. } => found = Some(if *transpose { c.paths[*path].pre } else { c.paths[*path].post }),
            _ => {}
        }
    });
    found
}

/// Tier of an expression read by a rule (or effective weight) of pathway `pid`.
fn syn_tier(c: &Circuit, e: &Expr, pid: PathId) -> Verdict {
    let me = &c.paths[pid];
    let base = Verdict::new(Tier::Synapse, "own synapse, pre, post and scalars", e.span);
    match &e.kind {
        ExprKind::BatchMean(arg) => syn_tier(c, arg, pid),
        ExprKind::Const(_)
        | ExprKind::Meta(_)
        | ExprKind::Signal(_)
        | ExprKind::Rand(_)
        | ExprKind::Time { .. }
        | ExprKind::StepCount
        | ExprKind::Hist { .. }
        | ExprKind::Var { .. } => base,
        ExprKind::Syn { path, transposed, .. } => {
            if *path == pid && !transposed {
                return base;
            }
            let other = &c.paths[*path];
            let reason = if *transposed {
                format!("weight transport: reads the transposed synapse state of `{}`", other.name)
            } else {
                format!("reads the synapse state of another pathway, `{}`", other.name)
            };
            let mut v = Verdict::new(Tier::NonLocal, reason, e.span);
            v.related.push(Label { span: other.name_span, text: format!("`{}` declared here", other.name) });
            v
        }
        ExprKind::Transmit { path, transpose, arg } => {
            let p = &c.paths[*path];
            // The sender computes the argument: it is judged there, as in a neuron equation.
            let sender = if *transpose { p.post } else { p.pre };
            let v = if *transpose && *path == pid {
                Verdict::new(Tier::Projection, format!("back-projection through its own synapses (`{}^T`)", p.name), e.span)
            } else if *transpose {
                let mut v = Verdict::new(
                    Tier::NonLocal,
                    format!("weight transport: `{}` is used backwards in a rule of `{}`", p.name, me.name),
                    e.span,
                );
                v.related.push(Label { span: p.name_span, text: format!("`{}` declared here", p.name) });
                v
            } else {
                // A current arriving at the rule's pre or post through any declared pathway
                // (the heterosynaptic rule's `V(b)`) is there: neuron tier, as for the neuron
                // it arrives at (a label sent elsewhere than its root stays non-local).
                return neuron_tier(c, e, Some(p.post));
            };
            v.join(neuron_tier(c, arg, Some(sender)))
        }
        ExprKind::Reduce { axis, arg, .. } => {
            let inner = syn_tier(c, arg, pid);
            let syn_arg = crate::check::space_of(c, arg, crate::check::Ctx::Synapse(pid)).map(|s| s.idx == Idx::Syn).unwrap_or(false);
            let v = match (axis, syn_arg) {
                (Axis::Row, _) => {
                    Verdict::new(Tier::Projection, "reduction over the incoming synapses of each post neuron (a row)", e.span)
                }
                (Axis::Col, _) => {
                    Verdict::new(Tier::Projection, "reduction over the outgoing synapses of each pre neuron (a column)", e.span)
                }
                (Axis::All, true) => Verdict::new(Tier::Projection, "reduction over every synapse of the pathway (per row)", e.span)
                    .join(Verdict::new(Tier::Population, "summed over the post population", e.span)),
                (Axis::All, false) => Verdict::new(Tier::Population, "reduction over a population", e.span),
            };
            v.join(inner)
        }
        ExprKind::Softmax(arg) => Verdict::new(Tier::Population, "softmax over a population", e.span).join(syn_tier(c, arg, pid)),
        ExprKind::CrossEntropy { logits, target } => Verdict::new(Tier::Population, "cross-entropy over a population", e.span)
            .join(syn_tier(c, logits, pid))
            .join(syn_tier(c, target, pid)),
        ExprKind::Grad { .. } => Verdict::new(Tier::NonLocal, "gradient: grad() differentiates through the whole circuit", e.span),
        ExprKind::Angle(..) | ExprKind::MatStat { .. } => base,
        ExprKind::Unary { .. } | ExprKind::Binary { .. } | ExprKind::Call { .. } => {
            children(e).into_iter().fold(base, |v, ch| v.join(syn_tier(c, ch, pid)))
        }
    }
}

/// An error for each equation whose tier exceeds the circuit's claim.
pub fn claim_diagnostics(c: &Circuit, report: &Report) -> Vec<Diagnostic> {
    let Some((claim, claim_span)) = c.claim else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for r in &report.rows {
        if r.verdict.tier.within(claim) {
            continue;
        }
        let code = match r.verdict.tier {
            Tier::NonLocal if r.verdict.reason.starts_with("weight transport") => "circ::locality::weight_transport",
            Tier::NonLocal if r.verdict.reason.starts_with("label") => "circ::locality::label",
            Tier::NonLocal if r.verdict.reason.starts_with("gradient") => "circ::locality::gradient",
            Tier::NonLocal => "circ::locality::nonlocal",
            _ => "circ::locality::exceeds_claim",
        };
        let mut d = Diagnostic::error(
            code,
            r.verdict.span,
            format!("`{}` is {} but the circuit claims {}", r.target, r.verdict.tier.name(), claim.name()),
        )
        .label(r.verdict.reason.clone())
        .with(claim_span, format!("claimed {}", claim.name()));
        for l in &r.verdict.related {
            d = d.with(l.span, l.text.clone());
        }
        if let Some(v) = r.via {
            d = d.with(v, "from the rule applied here");
        }
        d = d.help(format!("make the term local, or declare the honest tier: `locality {}`", claim_text(claim.join(r.verdict.tier))));
        out.push(d);
    }
    out
}

fn claim_text(t: Tier) -> &'static str {
    match t {
        Tier::PopProj => "population + projection",
        Tier::NonLocal => "nonlocal",
        t => t.name(),
    }
}

/// Renders the per-equation table printed by `circ check --report`.
pub fn render_report(c: &Circuit, report: &Report, sources: &Sources) -> String {
    let mut out = String::new();
    let claim = c.claim.map(|(t, _)| t.name()).unwrap_or("none");
    out.push_str(&format!("circuit {}: {} (claimed: {})\n", c.name, report.tier.name(), claim));
    let mut lines: Vec<[String; 4]> = Vec::new();
    for r in &report.rows {
        let text = match r.via {
            Some(_) => format!("{}: {}", r.target.split('.').next().unwrap_or(""), one_line(sources.text(r.stmt_span))),
            None => one_line(sources.text(r.stmt_span)),
        };
        let loc = {
            let s = r.via.unwrap_or(r.stmt_span);
            let (l, col) = sources.line_col(s.file, s.lo);
            format!("{}:{}", l, col)
        };
        lines.push([r.verdict.tier.name().to_string(), loc, text, r.verdict.reason.clone()]);
    }
    let w0 = lines.iter().map(|l| l[0].len()).max().unwrap_or(4).max(4);
    let w1 = lines.iter().map(|l| l[1].len()).max().unwrap_or(4).max(4);
    let w2 = lines.iter().map(|l| l[2].chars().count()).max().unwrap_or(8).clamp(8, 48);
    out.push_str(&format!("  {:w0$}  {:w1$}  {:w2$}  {}\n", "tier", "line", "equation", "why"));
    for l in &lines {
        let eq: String = if l[2].chars().count() > w2 { l[2].chars().take(w2 - 1).collect::<String>() + "…" } else { l[2].clone() };
        out.push_str(&format!("  {:w0$}  {:w1$}  {:w2$}  {}\n", l[0], l[1], eq, l[3]));
    }
    let setters: Vec<String> = report.setters().map(|r| r.target.clone()).collect();
    if !setters.is_empty() {
        let mut uniq: Vec<String> = Vec::new();
        for s in setters {
            if !uniq.contains(&s) {
                uniq.push(s);
            }
        }
        out.push_str(&format!("  set by: {}\n", uniq.join(", ")));
    }
    out
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
