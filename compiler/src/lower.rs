//! Lowering: a checked HIR circuit to the loop IR.
//!
//! Input: a [`hir::Circuit`] that passed `check`, and the training batch size.
//! Output: a [`lir::Program`]: buffers, and the `init`, `train`, `eval` and `monitor` entries.
//! Invariants:
//! - Fusion: consecutive elementwise statements over one population become one `Map`; a
//!   statement that needs a product or a reduction first flushes the pending `Map`, so every
//!   kernel sees the values its statements read (sequential semantics are preserved).
//! - Each plasticity block is a two-phase commit: a rule that reads another pathway's state
//!   written in the same block reads a snapshot taken before the block. Statements of one
//!   pathway run in order (a rule body reads its own earlier results, e.g. a momentum buffer).
//! - A pathway's rule becomes one `SynMap` pass over its synapses. With batch 1 the rule is
//!   evaluated directly (a fused rank-1 update). With a larger batch its per-sample update is
//!   expanded into products of pre, post, per-sample and synapse factors; each pre×post
//!   product becomes one batched outer product (`Outer`, a GEMM), each one-sided product a
//!   batch sum, and only terms that mix pre and post inside a nonlinearity fall back to a
//!   loop over samples. All of them are averaged (or summed) over the batch.
//! - Nothing allocates during a step: every temporary is a buffer of the program.

use crate::ast::{AssignOp, BinOp, UnOp};
use crate::check::{space_of, Ctx};
use crate::diag::{Diagnostic, Span};
use crate::hir::*;
use crate::lir::{self, Access, BufId, KExpr, Kernel, Program, RedOp, Stat, Store};
use circ_runtime::state::{self as rt, BufInit, BufKind, BufSpec, Precision, Rows};
use std::collections::{HashMap, HashSet};

/// Lowers a checked circuit for training with `batch` samples per step.
pub fn lower(c: &Circuit, batch: usize) -> Result<Program, Vec<Diagnostic>> {
    let mut l = Lowerer {
        c,
        batch: batch.max(1),
        bufs: Vec::new(),
        var_buf: HashMap::new(),
        syn_buf: HashMap::new(),
        eff_buf: HashMap::new(),
        sig_buf: Vec::new(),
        meta_buf: Vec::new(),
        hist_buf: Vec::new(),
        rand: 0,
        diags: Vec::new(),
        origins: Vec::new(),
        snapshot: HashMap::new(),
        reduced: HashMap::new(),
        temps: 0,
        hist_phase: HashMap::new(),
        deferred: Vec::new(),
    };
    let mut p = l.run();
    for e in [&mut p.init, &mut p.train, &mut p.eval, &mut p.monitor] {
        fold_kernels(&mut e.kernels);
    }
    if l.diags.is_empty() {
        Ok(p)
    } else {
        Err(l.diags)
    }
}

/// Folds constant subexpressions of every kernel (e.g. `exp(-dt / tau)` of a decay), in f64,
/// before either back end sees the program: both then use the same constant.
fn fold_kernels(ks: &mut [Kernel]) {
    for k in ks {
        match k {
            Kernel::Map { stores, .. } | Kernel::SynMap { stores, .. } => {
                for s in stores {
                    s.value = fold_k(std::mem::replace(&mut s.value, KExpr::Const(0.0)));
                    if let Some(g) = &mut s.guard {
                        *g = fold_k(std::mem::replace(g, KExpr::Const(0.0)));
                    }
                }
            }
            Kernel::Reduce { value, .. } | Kernel::SynReduce { value, .. } => *value = fold_k(std::mem::replace(value, KExpr::Const(0.0))),
            Kernel::Loop { body, .. } | Kernel::Segments { body, .. } | Kernel::Every { body, .. } => fold_kernels(body),
            _ => {}
        }
    }
}

fn fold_k(e: KExpr) -> KExpr {
    use crate::interp::{apply_func, binop};
    match e {
        KExpr::Unary(op, a) => match fold_k(*a) {
            KExpr::Const(c) => KExpr::Const(match op {
                UnOp::Neg => -c,
                UnOp::Not => (c == 0.0) as i64 as f64,
            }),
            a => KExpr::Unary(op, Box::new(a)),
        },
        KExpr::Binary(op, a, b) => {
            let (a, b) = (fold_k(*a), fold_k(*b));
            match (&a, &b) {
                (KExpr::Const(x), KExpr::Const(y)) => KExpr::Const(binop::<f64>(op, *x, *y)),
                // Identities that hold for every value, NaN and infinities included.
                (_, KExpr::Const(c)) if *c == 1.0 && matches!(op, BinOp::Mul | BinOp::Div) => a,
                (KExpr::Const(c), _) if *c == 1.0 && op == BinOp::Mul => b,
                _ => KExpr::Binary(op, Box::new(a), Box::new(b)),
            }
        }
        KExpr::Call(f, args) => {
            let args: Vec<KExpr> = args.into_iter().map(fold_k).collect();
            let consts: Option<Vec<f64>> = args.iter().map(|a| if let KExpr::Const(c) = a { Some(*c) } else { None }).collect();
            match consts {
                Some(cs) => KExpr::Const(apply_func::<f64>(f, &cs)),
                None => KExpr::Call(f, args),
            }
        }
        e => e,
    }
}

/// Builds kernels, fusing consecutive elementwise stores into one `Map`.
#[derive(Default)]
struct Emit {
    out: Vec<Kernel>,
    pending: Option<(bool, usize, Vec<Store>)>,
}

impl Emit {
    fn flush(&mut self) {
        if let Some((batched, cols, stores)) = self.pending.take() {
            if !stores.is_empty() {
                self.out.push(Kernel::Map { batched, cols, stores });
            }
        }
    }
    fn kernel(&mut self, k: Kernel) {
        self.flush();
        self.out.push(k);
    }
    fn store(&mut self, batched: bool, cols: usize, s: Store) {
        match &mut self.pending {
            Some((b, c, stores)) if *b == batched && *c == cols => stores.push(s),
            _ => {
                self.flush();
                self.pending = Some((batched, cols, vec![s]));
            }
        }
    }
    fn finish(mut self) -> Vec<Kernel> {
        self.flush();
        self.out
    }
}

struct Lowerer<'a> {
    c: &'a Circuit,
    batch: usize,
    bufs: Vec<BufSpec>,
    var_buf: HashMap<(PopId, VarId), BufId>,
    syn_buf: HashMap<(PathId, VarId), BufId>,
    /// Effective weights (for pathways with `mask` or `weight`).
    eff_buf: HashMap<PathId, BufId>,
    sig_buf: Vec<BufId>,
    meta_buf: Vec<BufId>,
    /// Buffers of the histories recorded for backpropagation through time.
    hist_buf: Vec<BufId>,
    rand: u32,
    diags: Vec<Diagnostic>,
    origins: Vec<lir::Origin>,
    /// Synapse state read through a pre-block snapshot in the block being lowered.
    snapshot: HashMap<(PathId, VarId), BufId>,
    /// Batch reductions already computed in the block being lowered (by pathway, expression
    /// text and mode): `batch_mean(g)` written twice, as optimisers do, costs one GEMM.
    reduced: HashMap<(PathId, String, bool), KExpr>,
    temps: usize,
    /// Histories of checkpointed loops, by the backward phase that records them segment by
    /// segment (`SegmentPlan` with a replay).
    hist_phase: HashMap<usize, usize>,
    /// Products over such histories: they run at the end of each segment of that phase,
    /// accumulating over the segments (the history holds one segment at a time). With the
    /// kernel that zeroes the sum before the first segment.
    deferred: Vec<(usize, Kernel, Kernel)>,
}

fn law(i: Init) -> BufInit {
    let l = match i.law {
        Law::Zeros => return BufInit::Zero,
        Law::Constant(c) => return BufInit::Const(c * i.scale),
        Law::Uniform(a, b) => rt::Law::Uniform(a, b),
        Law::Normal(m, s) => rt::Law::Normal(m, s),
        Law::XavierUniform => rt::Law::XavierUniform,
        Law::XavierNormal => rt::Law::XavierNormal,
        Law::KaimingUniform => rt::Law::KaimingUniform,
        Law::KaimingNormal => rt::Law::KaimingNormal,
        Law::Identity => rt::Law::Identity,
        Law::Orthogonal => rt::Law::Orthogonal,
        Law::Bernoulli(p) => rt::Law::Bernoulli(p),
    };
    BufInit::Law { law: l, scale: i.scale }
}

impl Lowerer<'_> {
    fn unsupported(&mut self, span: Span, what: &str) {
        let d = Diagnostic::error("circ::lower::unsupported", span, format!("{what} is not supported by the back end yet"))
            .label("cannot be compiled")
            .help("the checker accepts it (and classifies its locality), but it cannot run yet");
        self.diags.push(d);
    }

    fn buffer(&mut self, name: String, rows: Rows, cols: usize, init: BufInit, kind: BufKind) -> BufId {
        self.bufs.push(BufSpec { name, rows, cols, init, kind });
        self.bufs.len() - 1
    }

    /// The kernels of a run of neuron statements (a phase body, a segment's head or replay).
    fn neuron_stmts(&mut self, stmts: &[Stmt]) -> Vec<Kernel> {
        let mut em = Emit::default();
        for s in stmts {
            self.neuron_stmt(s, None, &mut em);
        }
        em.finish()
    }

    /// The kernels of a phase given its lowered body: the body itself, a time loop, or (with
    /// `segmented`) a checkpointed loop in segments (see `hir::SegmentPlan`).
    fn time_loop(&mut self, ph: &Phase, body: Vec<Kernel>, segmented: bool) -> Vec<Kernel> {
        let Some(plan) = ph.segments.as_ref().filter(|_| segmented) else {
            return if ph.repeat > 1 { vec![Kernel::Loop { count: ph.repeat, reverse: ph.reverse, body }] } else { body };
        };
        let mut seg = self.neuron_stmts(&plan.head);
        if !plan.replay.is_empty() {
            let replay = self.neuron_stmts(&plan.replay);
            seg.push(Kernel::Loop { count: plan.len, reverse: false, body: replay });
        }
        seg.push(Kernel::Loop { count: plan.len, reverse: ph.reverse, body });
        vec![Kernel::Segments { total: ph.repeat, len: plan.len, reverse: ph.reverse, body: seg }]
    }

    /// Emits a product over histories: in place, or (for the histories of a checkpointed
    /// loop) at the end of each of its segments, summed into `out` (zeroed before them).
    fn history_product(&mut self, k: Kernel, repeat: usize, factors: &[Expr], em: &mut Emit) {
        let mut phase = None;
        for f in factors {
            f.walk(&mut |x| {
                if let ExprKind::Hist { hist, .. } = x.kind {
                    phase = phase.or(self.hist_phase.get(&hist).copied());
                }
            });
        }
        let Some(phase) = phase.filter(|_| repeat > 0) else {
            em.kernel(k);
            return;
        };
        let (k, zero) = match k {
            Kernel::Outer { out, p, q, rows, cols, mean, repeat, .. } => (
                Kernel::Outer { out, p, q, rows, cols, mean, repeat, accumulate: true },
                Kernel::SynMap { rows, cols, over_batch: false, stores: vec![Store { out, value: KExpr::Const(0.0), guard: None }] },
            ),
            Kernel::BatchSum { out, src, cols, mean, repeat, .. } => (
                Kernel::BatchSum { out, src, cols, mean, repeat, accumulate: true },
                Kernel::Map { batched: false, cols, stores: vec![Store { out, value: KExpr::Const(0.0), guard: None }] },
            ),
            // (Only the two products above read histories.)
            other => {
                em.kernel(other);
                return;
            }
        };
        self.deferred.push((phase, zero, k));
    }

    fn temp(&mut self, rows: Rows, cols: usize) -> BufId {
        self.temps += 1;
        let name = format!("t{}", self.temps);
        self.buffer(name, rows, cols, BufInit::Zero, BufKind::Temp)
    }

    fn run(&mut self) -> Program {
        let c = self.c;
        // Buffers of the circuit's state.
        let mut input = None;
        let mut target = None;
        for (pid, p) in c.pops.iter().enumerate() {
            for (vid, v) in p.vars.iter().enumerate() {
                let (kind, init) = match p.kind {
                    PopKind::Input => (BufKind::Input, BufInit::Zero),
                    PopKind::Target { .. } => (BufKind::Target, BufInit::Zero),
                    PopKind::Neurons => {
                        (BufKind::Neuron { state: v.state }, if v.init != 0.0 { BufInit::Const(v.init) } else { BufInit::Zero })
                    }
                };
                let b = self.buffer(p.var_name(vid), Rows::Batch, p.size, init, kind);
                self.var_buf.insert((pid, vid), b);
                match p.kind {
                    PopKind::Input if input.is_none() => input = Some(b),
                    PopKind::Target { .. } if target.is_none() => target = Some(b),
                    _ => {}
                }
            }
        }
        for (pid, p) in c.paths.iter().enumerate() {
            let (rows, cols) = (c.pops[p.post].size, c.pops[p.pre].size);
            for (vid, s) in p.syn.iter().enumerate() {
                let b = self.buffer(format!("{}.{}", p.name, s.name), Rows::Fixed(rows), cols, law(s.init), BufKind::Synapse);
                self.syn_buf.insert((pid, vid), b);
            }
            if p.weight.is_some() {
                let b = self.buffer(format!("{}.weight", p.name), Rows::Fixed(rows), cols, BufInit::Zero, BufKind::Derived);
                self.eff_buf.insert(pid, b);
            }
        }
        for s in &c.signals {
            let b = self.buffer(
                s.name.clone(),
                Rows::Batch,
                1,
                if s.init != 0.0 { BufInit::Const(s.init) } else { BufInit::Zero },
                BufKind::Signal { state: s.state },
            );
            self.sig_buf.push(b);
        }
        for m in &c.metas {
            let b = self.buffer(m.name.clone(), Rows::Fixed(1), 1, BufInit::Const(m.init), BufKind::Meta);
            self.meta_buf.push(b);
        }
        for h in &c.histories {
            let cols = h.pop.map_or(1, |p| c.pops[p].size);
            let b = self.buffer(h.name.clone(), Rows::History(h.len), cols, BufInit::Zero, BufKind::Temp);
            self.hist_buf.push(b);
        }

        // init: effective weights.
        let init = lir::Entry { kernels: self.effective_weights() };

        for (i, ph) in c.phases.iter().enumerate() {
            if let Some(plan) = ph.segments.as_ref().filter(|p| !p.replay.is_empty()) {
                for st in plan.head.iter().chain(&plan.replay).chain(&ph.body) {
                    st.walk(&mut |st| {
                        if let StmtKind::Assign { target: Target::Hist(h), .. } = st.kind {
                            self.hist_phase.insert(h, i);
                        }
                    });
                }
            }
        }

        // train: phases with their `after` plasticity, then step plasticity.
        let mut train = Vec::new();
        let mut segments_at = HashMap::new();
        for (i, ph) in c.phases.iter().enumerate() {
            let mut body = self.neuron_stmts(&ph.body);
            for pl in c.plasticity.iter().filter(|pl| pl.schedule == Schedule::After(i)) {
                body.extend(self.plasticity(pl));
            }
            if ph.segments.is_some() {
                segments_at.insert(i, train.len());
            }
            train.extend(self.time_loop(ph, body, true));
        }
        for pl in &c.plasticity {
            match pl.schedule {
                Schedule::EveryStep => train.extend(self.plasticity(pl)),
                Schedule::Every(n) => {
                    let body = self.plasticity(pl);
                    train.push(Kernel::Every { every: n, body });
                }
                Schedule::After(_) => {}
            }
        }

        // eval: the phases up to the last one that writes the readout.
        let readout = c.experiment.readout.map(|(p, v, _)| (p, v)).or_else(|| default_readout(c));
        let last = match readout {
            Some((p, v)) => c.phases.iter().rposition(|ph| {
                !ph.name.starts_with(crate::autodiff::BACKWARD_PHASE) && ph.body.iter().any(|s| writes(s, Target::Var { pop: p, var: v }))
            }),
            None => None,
        };
        let n_eval = last.map(|i| i + 1).unwrap_or(c.phases.len());
        let mut eval = Vec::new();
        for ph in &c.phases[..n_eval] {
            let body = self.neuron_stmts(&ph.body);
            // (Evaluation saves no checkpoints: no backward pass follows.)
            eval.extend(self.time_loop(ph, body, false));
        }

        // monitors
        let mut mon = Emit::default();
        let mut monitors = Vec::new();
        for m in &c.monitors {
            if let Some(stat) = self.monitor(&m.expr, &mut mon) {
                monitors.push(lir::Monitor { name: m.name.clone(), stat });
            }
        }

        // Products over checkpointed histories: summed segment by segment.
        let mut zeroes: Vec<(usize, Kernel)> = Vec::new();
        for (phase, zero, k) in std::mem::take(&mut self.deferred) {
            let at = segments_at[&phase];
            if let Kernel::Segments { body, .. } = &mut train[at] {
                body.push(k);
            }
            zeroes.push((at, zero));
        }
        zeroes.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
        for (at, zero) in zeroes {
            train.insert(at, zero);
        }

        // Fixed pathways keep their draw across episodes unless marked `resample`.
        let kept: HashSet<BufId> = c
            .paths
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.plastic && !p.resample)
            .flat_map(|(pid, p)| (0..p.syn.len()).map(move |v| (pid, v)))
            .map(|k| self.syn_buf[&k])
            .collect();
        let episode_reset = (0..self.bufs.len())
            .filter(|b| self.bufs[*b].kind.persistent() && self.bufs[*b].kind != BufKind::Meta && !kept.contains(b))
            .collect();
        Program {
            name: c.name.clone(),
            precision: if c.f64 { Precision::F64 } else { Precision::F32 },
            buffers: std::mem::take(&mut self.bufs),
            init,
            train: lir::Entry { kernels: train },
            eval: lir::Entry { kernels: eval },
            monitor: lir::Entry { kernels: mon.finish() },
            monitors,
            input,
            target,
            readout: readout.map(|(p, v)| self.var_buf[&(p, v)]),
            origins: std::mem::take(&mut self.origins),
            rand_streams: self.rand,
            episode_reset,
        }
    }

    /// Kernels recomputing every effective weight from synapse state.
    fn effective_weights(&mut self) -> Vec<Kernel> {
        let mut out = Vec::new();
        for (pid, p) in self.c.paths.iter().enumerate() {
            let Some(w) = &p.weight else { continue };
            let (rows, cols) = (self.c.pops[p.post].size, self.c.pops[p.pre].size);
            let mut em = Emit::default();
            let value = self.sexpr(w, pid, &mut em);
            let out_buf = self.eff_buf[&pid];
            em.kernel(Kernel::SynMap { rows, cols, over_batch: false, stores: vec![Store { out: out_buf, value, guard: None }] });
            out.extend(em.finish());
        }
        out
    }

    /// The buffer transmission through a pathway reads (lazily: a derived view pathway of the
    /// tangent pass has an effective weight and no state at all).
    fn weight_buf(&self, pid: PathId) -> BufId {
        // In a plasticity block, weights another pathway's rule writes are read from the
        // snapshot taken before the block (two-phase commit).
        self.eff_buf.get(&pid).or_else(|| self.snapshot.get(&(pid, 0))).copied().unwrap_or_else(|| self.syn_buf[&(pid, 0)])
    }

    fn target_buf(&self, t: Target) -> BufId {
        match t {
            Target::Var { pop, var } => self.var_buf[&(pop, var)],
            Target::Signal(s) => self.sig_buf[s],
            Target::Syn { path, var } => self.syn_buf[&(path, var)],
            Target::Hist(h) => self.hist_buf[h],
        }
    }

    // -----------------------------------------------------------------------------------------
    // Neuron statements

    fn neuron_stmt(&mut self, s: &Stmt, guard: Option<KExpr>, em: &mut Emit) {
        let c = self.c;
        match &s.kind {
            StmtKind::Assign { target, op, value } => {
                let out = self.target_buf(*target);
                let cols = self.bufs[out].cols;
                // A plain transmission writes straight into its target, unless it sends the
                // target itself (`h.a = W(h.a)`: a product must not overwrite its operand
                // while reading it; the general path below goes through a temporary).
                if let (ExprKind::Transmit { path, transpose, arg }, AssignOp::Set | AssignOp::Add, None) = (&value.kind, op, &guard) {
                    let x = self.materialize(arg, em);
                    if x != out {
                        let p = &c.paths[*path];
                        let w = self.weight_buf(*path);
                        let (n_out, n_in) = (c.pops[p.post].size, c.pops[p.pre].size);
                        em.kernel(Kernel::MatMul { out, x, w, n_out, n_in, transpose: *transpose, accumulate: *op == AssignOp::Add });
                        self.origins.push(lir::Origin { buf: out, what: c.target_name(*target), span: s.span });
                        return;
                    }
                }
                let v = self.nexpr(value, em);
                let old = KExpr::Load(out, Access::Elem);
                let v = match op {
                    AssignOp::Set => v,
                    AssignOp::Add => KExpr::bin(BinOp::Add, old, v),
                    AssignOp::Sub => KExpr::bin(BinOp::Sub, old, v),
                    AssignOp::Mul => KExpr::bin(BinOp::Mul, old, v),
                };
                em.store(true, cols, Store { out, value: v, guard });
                self.origins.push(lir::Origin { buf: out, what: c.target_name(*target), span: s.span });
            }
            StmtKind::Ode { target, value, dt } => {
                let out = self.target_buf(*target);
                let cols = self.bufs[out].cols;
                let v = self.ode(*target, value, *dt, em, None);
                em.store(true, cols, Store { out, value: v, guard });
                self.origins.push(lir::Origin { buf: out, what: c.target_name(*target), span: s.span });
            }
            StmtKind::When { cond, then, els } => {
                let g = self.nexpr(cond, em);
                let not_g = KExpr::Unary(UnOp::Not, Box::new(g.clone()));
                let both = |outer: &Option<KExpr>, inner: KExpr| match outer {
                    Some(o) => KExpr::bin(BinOp::And, o.clone(), inner),
                    None => inner,
                };
                let gt = both(&guard, KExpr::bin(BinOp::Ne, g, KExpr::Const(0.0)));
                let ge = both(&guard, not_g);
                for x in then {
                    self.neuron_stmt(x, Some(gt.clone()), em);
                }
                for x in els {
                    self.neuron_stmt(x, Some(ge.clone()), em);
                }
            }
        }
    }

    /// `d x/dt = f` over one step: exact exponential integration when `f = a·x + b` with `a`
    /// and `b` free of `x`, forward Euler otherwise. `syn` gives the synapse context.
    fn ode(&mut self, target: Target, f: &Expr, dt: f64, em: &mut Emit, syn: Option<PathId>) -> KExpr {
        let out = self.target_buf(target);
        let x = KExpr::Load(out, Access::Elem);
        let lower = |me: &mut Self, e: &Expr, em: &mut Emit| match syn {
            Some(pid) => me.sexpr(e, pid, em),
            None => me.nexpr(e, em),
        };
        if let Some((a, b)) = affine(f, target) {
            let a = lower(self, &a, em);
            let b = lower(self, &b, em);
            if let KExpr::Const(0.0) = a {
                return KExpr::bin(BinOp::Add, x, KExpr::bin(BinOp::Mul, KExpr::Const(dt), b));
            }
            if let KExpr::Const(0.0) = b {
                // Pure decay: x·e^{a dt}.
                let e = KExpr::Call(Func::Exp, vec![KExpr::bin(BinOp::Mul, a, KExpr::Const(dt))]);
                return KExpr::bin(BinOp::Mul, x, e);
            }
            // x' = x·e^{a dt} + b·(e^{a dt} − 1)/a, with (e^{a dt} − 1)/a → dt as a → 0.
            let e = KExpr::Call(Func::Exp, vec![KExpr::bin(BinOp::Mul, a.clone(), KExpr::Const(dt))]);
            let phi = KExpr::Call(
                Func::Select,
                vec![
                    KExpr::bin(BinOp::Lt, KExpr::Call(Func::Abs, vec![a.clone()]), KExpr::Const(1e-12)),
                    KExpr::Const(dt),
                    KExpr::bin(BinOp::Div, KExpr::bin(BinOp::Sub, e.clone(), KExpr::Const(1.0)), a),
                ],
            );
            return KExpr::bin(BinOp::Add, KExpr::bin(BinOp::Mul, x, e), KExpr::bin(BinOp::Mul, b, phi));
        }
        let fv = lower(self, f, em);
        KExpr::bin(BinOp::Add, x, KExpr::bin(BinOp::Mul, KExpr::Const(dt), fv))
    }

    /// Writes an expression over a population into a buffer (or returns the variable's own
    /// buffer when the expression is just a variable).
    fn materialize(&mut self, e: &Expr, em: &mut Emit) -> BufId {
        if let ExprKind::Var { pop, var, .. } = e.kind {
            return self.var_buf[&(pop, var)];
        }
        let cols = self.pop_size_of(e).unwrap_or(1);
        let t = self.temp(Rows::Batch, cols);
        let v = self.nexpr(e, em);
        em.store(true, cols, Store { out: t, value: v, guard: None });
        t
    }

    /// Size of the population an expression lives on (None for scalars). A reduction's or a
    /// cross-entropy's result is one number per sample, so their insides do not count:
    /// `h.a + sum(x)` lives on `h` whatever the size of `x`.
    fn pop_size_of(&self, e: &Expr) -> Option<usize> {
        let c = self.c;
        match &e.kind {
            ExprKind::Var { pop, .. } => Some(c.pops[*pop].size),
            ExprKind::Hist { hist, .. } => c.histories[*hist].pop.map(|p| c.pops[p].size),
            ExprKind::Transmit { path, transpose, .. } => {
                let p = &c.paths[*path];
                Some(c.pops[if *transpose { p.pre } else { p.post }].size)
            }
            ExprKind::Reduce { .. } | ExprKind::CrossEntropy { .. } => None,
            ExprKind::Unary { arg, .. } | ExprKind::Softmax(arg) | ExprKind::BatchMean(arg) => self.pop_size_of(arg),
            ExprKind::Binary { lhs, rhs, .. } => self.pop_size_of(lhs).or_else(|| self.pop_size_of(rhs)),
            ExprKind::Call { args, .. } => args.iter().find_map(|a| self.pop_size_of(a)),
            _ => None,
        }
    }

    /// Lowers an expression evaluated per neuron (in a `Map` over `nb × n`).
    fn nexpr(&mut self, e: &Expr, em: &mut Emit) -> KExpr {
        let c = self.c;
        match &e.kind {
            ExprKind::Const(v) => KExpr::Const(*v),
            ExprKind::Time { dt } => KExpr::Time(*dt),
            ExprKind::StepCount => KExpr::StepCount,
            ExprKind::Hist { hist, .. } if c.histories[*hist].pop.is_none() => {
                // A signal's history: its value at this iteration, copied out by a one-column
                // pass, is a per-sample scalar any pass can read.
                let t = self.temp(Rows::Batch, 1);
                em.store(true, 1, Store { out: t, value: KExpr::Load(self.hist_buf[*hist], Access::Hist), guard: None });
                KExpr::Load(t, Access::Sample)
            }
            ExprKind::Hist { hist, .. } => KExpr::Load(self.hist_buf[*hist], Access::Hist),
            ExprKind::BatchMean(arg) => {
                // Per neuron: the mean over the batch, the same for every sample.
                let cols = self.pop_size_of(arg).unwrap_or(1);
                let x = self.materialize(arg, em);
                let out = self.temp(Rows::Fixed(1), cols);
                em.kernel(Kernel::BatchSum { out, src: x, cols, mean: true, repeat: 1, accumulate: false });
                KExpr::Load(out, Access::Unit)
            }
            ExprKind::Var { pop, var, .. } => KExpr::Load(self.var_buf[&(*pop, *var)], Access::Elem),
            ExprKind::Signal(s) => KExpr::Load(self.sig_buf[*s], Access::Sample),
            ExprKind::Meta(m) => KExpr::Load(self.meta_buf[*m], Access::Scalar),
            ExprKind::Rand(k) => {
                self.rand += 1;
                KExpr::Rand(*k, self.rand)
            }
            ExprKind::Unary { op, arg } => KExpr::Unary(*op, Box::new(self.nexpr(arg, em))),
            ExprKind::Binary { op, lhs, rhs } => {
                let a = self.nexpr(lhs, em);
                let b = self.nexpr(rhs, em);
                KExpr::bin(*op, a, b)
            }
            ExprKind::Call { func, args } => KExpr::Call(*func, args.iter().map(|a| self.nexpr(a, em)).collect()),
            ExprKind::Transmit { path, transpose, arg } => {
                let x = self.materialize(arg, em);
                let p = &c.paths[*path];
                let (n_out, n_in) = (c.pops[p.post].size, c.pops[p.pre].size);
                let out = self.temp(Rows::Batch, if *transpose { n_in } else { n_out });
                let w = self.weight_buf(*path);
                em.kernel(Kernel::MatMul { out, x, w, n_out, n_in, transpose: *transpose, accumulate: false });
                KExpr::Load(out, Access::Elem)
            }
            ExprKind::Reduce { op, axis: Axis::All, arg } => {
                let r = self.reduce_pop(*op, arg, em);
                KExpr::Load(r, Access::Sample)
            }
            ExprKind::Softmax(arg) => {
                let (t, s) = self.softmax_parts(arg, em);
                KExpr::bin(BinOp::Div, KExpr::Load(t, Access::Elem), KExpr::Load(s, Access::Sample))
            }
            ExprKind::CrossEntropy { logits, target } => {
                let r = self.cross_entropy(logits, target, em);
                KExpr::Load(r, Access::Sample)
            }
            ExprKind::Reduce { .. } | ExprKind::Syn { .. } => {
                self.unsupported(e.span, "a synapse value in a neuron equation");
                KExpr::Const(0.0)
            }
            ExprKind::Grad { .. } => {
                self.unsupported(e.span, "grad()");
                KExpr::Const(0.0)
            }
            ExprKind::Angle(..) | ExprKind::MatStat { .. } => {
                self.unsupported(e.span, "a monitor function outside a monitor");
                KExpr::Const(0.0)
            }
        }
    }

    /// A per-sample reduction of a population expression into a `[nb, 1]` buffer.
    fn reduce_pop(&mut self, op: ReduceOp, arg: &Expr, em: &mut Emit) -> BufId {
        let cols = self.pop_size_of(arg).unwrap_or(1);
        let out = self.temp(Rows::Batch, 1);
        match op {
            ReduceOp::Sum | ReduceOp::Max | ReduceOp::Min => {
                let v = self.nexpr(arg, em);
                let rop = match op {
                    ReduceOp::Sum => RedOp::Sum,
                    ReduceOp::Max => RedOp::Max,
                    _ => RedOp::Min,
                };
                em.kernel(Kernel::Reduce { out, op: rop, batched: true, cols, value: v });
            }
            ReduceOp::Mean => {
                let v = self.nexpr(arg, em);
                em.kernel(Kernel::Reduce { out, op: RedOp::Sum, batched: true, cols, value: v });
                em.store(
                    true,
                    1,
                    Store { out, value: KExpr::bin(BinOp::Div, KExpr::Load(out, Access::Elem), KExpr::Const(cols as f64)), guard: None },
                );
            }
            ReduceOp::Norm => {
                let v = self.nexpr(arg, em);
                let sq = KExpr::bin(BinOp::Mul, v.clone(), v);
                em.kernel(Kernel::Reduce { out, op: RedOp::Sum, batched: true, cols, value: sq });
                em.store(true, 1, Store { out, value: KExpr::Call(Func::Sqrt, vec![KExpr::Load(out, Access::Elem)]), guard: None });
            }
            ReduceOp::LogSumExp => {
                let x = self.materialize(arg, em);
                let m = self.temp(Rows::Batch, 1);
                em.kernel(Kernel::Reduce { out: m, op: RedOp::Max, batched: true, cols, value: KExpr::Load(x, Access::Elem) });
                let shifted =
                    KExpr::Call(Func::Exp, vec![KExpr::bin(BinOp::Sub, KExpr::Load(x, Access::Elem), KExpr::Load(m, Access::Sample))]);
                em.kernel(Kernel::Reduce { out, op: RedOp::Sum, batched: true, cols, value: shifted });
                let lse =
                    KExpr::bin(BinOp::Add, KExpr::Load(m, Access::Elem), KExpr::Call(Func::Log, vec![KExpr::Load(out, Access::Elem)]));
                em.store(true, 1, Store { out, value: lse, guard: None });
            }
        }
        out
    }

    /// `exp(x − max x)` into a buffer and its sum per sample: softmax is their ratio.
    fn softmax_parts(&mut self, arg: &Expr, em: &mut Emit) -> (BufId, BufId) {
        let cols = self.pop_size_of(arg).unwrap_or(1);
        let x = self.materialize(arg, em);
        let m = self.temp(Rows::Batch, 1);
        em.kernel(Kernel::Reduce { out: m, op: RedOp::Max, batched: true, cols, value: KExpr::Load(x, Access::Elem) });
        let t = self.temp(Rows::Batch, cols);
        let ex = KExpr::Call(Func::Exp, vec![KExpr::bin(BinOp::Sub, KExpr::Load(x, Access::Elem), KExpr::Load(m, Access::Sample))]);
        em.store(true, cols, Store { out: t, value: ex, guard: None });
        let s = self.temp(Rows::Batch, 1);
        em.kernel(Kernel::Reduce { out: s, op: RedOp::Sum, batched: true, cols, value: KExpr::Load(t, Access::Elem) });
        (t, s)
    }

    /// `logsumexp(l) − Σ t·l` per sample.
    fn cross_entropy(&mut self, logits: &Expr, target: &Expr, em: &mut Emit) -> BufId {
        let cols = self.pop_size_of(logits).unwrap_or(1);
        let l = self.materialize(logits, em);
        let m = self.temp(Rows::Batch, 1);
        em.kernel(Kernel::Reduce { out: m, op: RedOp::Max, batched: true, cols, value: KExpr::Load(l, Access::Elem) });
        let s = self.temp(Rows::Batch, 1);
        let ex = KExpr::Call(Func::Exp, vec![KExpr::bin(BinOp::Sub, KExpr::Load(l, Access::Elem), KExpr::Load(m, Access::Sample))]);
        em.kernel(Kernel::Reduce { out: s, op: RedOp::Sum, batched: true, cols, value: ex });
        let tv = self.nexpr(target, em);
        let dot = self.temp(Rows::Batch, 1);
        em.kernel(Kernel::Reduce {
            out: dot,
            op: RedOp::Sum,
            batched: true,
            cols,
            value: KExpr::bin(BinOp::Mul, tv, KExpr::Load(l, Access::Elem)),
        });
        let out = self.temp(Rows::Batch, 1);
        let v = KExpr::bin(
            BinOp::Sub,
            KExpr::bin(BinOp::Add, KExpr::Load(m, Access::Elem), KExpr::Call(Func::Log, vec![KExpr::Load(s, Access::Elem)])),
            KExpr::Load(dot, Access::Elem),
        );
        em.store(true, 1, Store { out, value: v, guard: None });
        out
    }

    // -----------------------------------------------------------------------------------------
    // Plasticity

    fn plasticity(&mut self, pl: &Plasticity) -> Vec<Kernel> {
        let c = self.c;
        let mut em = Emit::default();
        // Two-phase commit: snapshot state that one pathway's rule reads and another's writes.
        let written: HashSet<(PathId, VarId)> = pl
            .body
            .iter()
            .flat_map(|b| {
                let mut w = Vec::new();
                for s in &b.stmts {
                    s.walk(&mut |st| {
                        if let StmtKind::Assign { target: Target::Syn { path, var }, .. }
                        | StmtKind::Ode { target: Target::Syn { path, var }, .. } = st.kind
                        {
                            w.push((path, var));
                        }
                    });
                }
                w
            })
            .collect();
        self.snapshot.clear();
        self.reduced.clear();
        for b in &pl.body {
            for s in &b.stmts {
                let mut reads = Vec::new();
                stmt_exprs(s, &mut |e| {
                    e.walk(&mut |x| {
                        if let ExprKind::Syn { path, var, .. } = x.kind {
                            if path != b.path && written.contains(&(path, var)) {
                                reads.push((path, var));
                            }
                        }
                        // A transmission through another pathway's raw weights (`V(z)`) reads
                        // them too (effective weights are only recomputed after the block).
                        if let ExprKind::Transmit { path, .. } = x.kind {
                            if path != b.path && !self.eff_buf.contains_key(&path) && written.contains(&(path, 0)) {
                                reads.push((path, 0));
                            }
                        }
                    })
                });
                for key in reads {
                    if let std::collections::hash_map::Entry::Vacant(slot) = self.snapshot.entry(key) {
                        let src = self.syn_buf[&key];
                        let (rows, cols) = (self.bufs[src].rows, self.bufs[src].cols);
                        self.temps += 1;
                        let dst = {
                            self.bufs.push(BufSpec {
                                name: format!("{}.snapshot", self.bufs[src].name),
                                rows,
                                cols,
                                init: BufInit::Zero,
                                kind: BufKind::Temp,
                            });
                            self.bufs.len() - 1
                        };
                        slot.insert(dst);
                        let len = match rows {
                            Rows::Fixed(r) => r * cols,
                            Rows::Batch | Rows::History(_) => cols,
                        };
                        em.kernel(Kernel::Copy { dst, src, len });
                    }
                }
            }
        }
        for b in &pl.body {
            let p = &c.paths[b.path];
            let (rows, cols) = (c.pops[p.post].size, c.pops[p.pre].size);
            let mut stores = Vec::new();
            for s in &b.stmts {
                self.syn_stmt(s, b.path, pl.sum, None, &mut stores, &mut em);
            }
            if !stores.is_empty() {
                em.kernel(Kernel::SynMap { rows, cols, over_batch: false, stores });
            }
        }
        self.snapshot.clear();
        let mut out = em.finish();
        out.extend(self.effective_weights());
        out
    }

    fn syn_stmt(&mut self, s: &Stmt, pid: PathId, sum: bool, guard: Option<KExpr>, stores: &mut Vec<Store>, em: &mut Emit) {
        match &s.kind {
            StmtKind::Assign { target, op, value } => {
                let out = self.target_buf(*target);
                let old = KExpr::Load(out, Access::Elem);
                let v = self.batch_reduced(value, pid, sum, s.span, em);
                let v = match op {
                    AssignOp::Set => v,
                    AssignOp::Add => KExpr::bin(BinOp::Add, old, v),
                    AssignOp::Sub => KExpr::bin(BinOp::Sub, old, v),
                    AssignOp::Mul => KExpr::bin(BinOp::Mul, old, v),
                };
                stores.push(Store { out, value: v, guard });
            }
            StmtKind::Ode { target, value, dt } => {
                if self.batch > 1 && self.is_batched(value, pid) {
                    // Average the right side over the batch, then integrate it.
                    let out = self.target_buf(*target);
                    let v = self.batch_reduced(value, pid, sum, s.span, em);
                    let x = KExpr::Load(out, Access::Elem);
                    stores.push(Store { out, value: KExpr::bin(BinOp::Add, x, KExpr::bin(BinOp::Mul, KExpr::Const(*dt), v)), guard });
                } else {
                    let out = self.target_buf(*target);
                    let v = self.ode(*target, value, *dt, em, Some(pid));
                    stores.push(Store { out, value: v, guard });
                }
            }
            StmtKind::When { cond, then, els } => {
                if self.batch > 1 && self.is_batched(cond, pid) {
                    self.unsupported(cond.span, "a per-sample condition on a synapse update with batch > 1");
                    return;
                }
                let g = self.sexpr(cond, pid, em);
                let both = |outer: &Option<KExpr>, inner: KExpr| match outer {
                    Some(o) => KExpr::bin(BinOp::And, o.clone(), inner),
                    None => inner,
                };
                let gt = both(&guard, KExpr::bin(BinOp::Ne, g.clone(), KExpr::Const(0.0)));
                let ge = both(&guard, KExpr::Unary(UnOp::Not, Box::new(g)));
                for x in then {
                    self.syn_stmt(x, pid, sum, Some(gt.clone()), stores, em);
                }
                for x in els {
                    self.syn_stmt(x, pid, sum, Some(ge.clone()), stores, em);
                }
            }
        }
    }

    fn is_batched(&self, e: &Expr, pid: PathId) -> bool {
        space_of(self.c, e, Ctx::Synapse(pid)).map(|s| s.batched).unwrap_or(false)
    }

    /// The batch mean (or sum) of a per-sample synapse expression, as a `SynMap` expression.
    fn batch_reduced(&mut self, e: &Expr, pid: PathId, sum: bool, span: Span, em: &mut Emit) -> KExpr {
        if (self.batch == 1 && self.history_len(e).is_none()) || !self.is_batched(e, pid) {
            return self.sexpr(e, pid, em);
        }
        let key = (pid, self.c.expr_text(e), sum);
        if let Some(k) = self.reduced.get(&key) {
            return k.clone();
        }
        let r = self.batch_reduced_uncached(e, pid, sum, span, em);
        self.reduced.insert(key, r.clone());
        r
    }

    fn batch_reduced_uncached(&mut self, e: &Expr, pid: PathId, sum: bool, span: Span, em: &mut Emit) -> KExpr {
        let c = self.c;
        let p = &c.paths[pid];
        let (rows, cols) = (c.pops[p.post].size, c.pops[p.pre].size);
        // A subexpression is "mixed" when it varies per sample over the synapses (pre and post
        // together): only those are split into products.
        let mixed = |x: &Expr| matches!(space_of(c, x, Ctx::Synapse(pid)), Ok(Space { idx: Idx::Syn, batched: true }));
        let Some(terms) = expand(e, 64, &mixed) else {
            return self.over_batch(e, pid, sum, em);
        };
        let mean = !sum;
        let mut total: Option<KExpr> = None;
        for t in terms {
            // Factors recorded through a time loop span `iterations × batch` rows.
            let repeat = t.factors.iter().filter_map(|f| self.history_len(f)).max().unwrap_or(1);
            let mut unb: Vec<&Expr> = Vec::new();
            let (mut post, mut pre, mut sample, mut mixed): (Vec<&Expr>, Vec<&Expr>, Vec<&Expr>, Vec<&Expr>) = Default::default();
            for f in &t.factors {
                match space_of(c, f, Ctx::Synapse(pid)) {
                    Ok(Space { batched: false, .. }) => unb.push(f),
                    Ok(Space { idx: Idx::Post, .. }) => post.push(f),
                    Ok(Space { idx: Idx::Pre, .. }) => pre.push(f),
                    Ok(Space { idx: Idx::Scalar, .. }) => sample.push(f),
                    _ => mixed.push(f),
                }
            }
            let value = if !mixed.is_empty() {
                let whole = product(&t.factors, span);
                self.over_batch(&whole, pid, sum, em)
            } else {
                let mut kf: Vec<KExpr> = unb.iter().map(|f| self.sexpr(f, pid, em)).collect();
                if !post.is_empty() && !pre.is_empty() {
                    // A batched outer product: one GEMM over the batch.
                    let pb = self.side_buffer(&post, &sample, rows, em);
                    let qb = self.side_buffer(&pre, &[], cols, em);
                    let g = self.temp(Rows::Fixed(rows), cols);
                    let k = Kernel::Outer { out: g, p: pb, q: qb, rows, cols, mean, repeat, accumulate: false };
                    self.history_product(k, repeat, &t.factors, em);
                    kf.push(KExpr::Load(g, Access::Elem));
                } else if !pre.is_empty() {
                    let qb = self.side_buffer(&pre, &sample, cols, em);
                    let v = self.temp(Rows::Fixed(1), cols);
                    let k = Kernel::BatchSum { out: v, src: qb, cols, mean, repeat, accumulate: false };
                    self.history_product(k, repeat, &t.factors, em);
                    kf.push(KExpr::Load(v, Access::Pre));
                } else if !post.is_empty() {
                    let pb = self.side_buffer(&post, &sample, rows, em);
                    let v = self.temp(Rows::Fixed(1), rows);
                    let k = Kernel::BatchSum { out: v, src: pb, cols: rows, mean, repeat, accumulate: false };
                    self.history_product(k, repeat, &t.factors, em);
                    kf.push(KExpr::Load(v, Access::Post));
                } else if !sample.is_empty() {
                    let sb = self.side_buffer(&[], &sample, 1, em);
                    let v = self.temp(Rows::Fixed(1), 1);
                    let k = Kernel::BatchSum { out: v, src: sb, cols: 1, mean, repeat, accumulate: false };
                    self.history_product(k, repeat, &t.factors, em);
                    kf.push(KExpr::Load(v, Access::Scalar));
                }
                // (A term with no per-sample factor is the same for every sample: its mean
                // is itself, and `sum` mode does not scale it either.)
                let mut it = kf.into_iter();
                let first = it.next().unwrap_or(KExpr::Const(1.0));
                it.fold(first, |a, b| KExpr::bin(BinOp::Mul, a, b))
            };
            let value = if t.negative { KExpr::Unary(UnOp::Neg, Box::new(value)) } else { value };
            total = Some(match total {
                None => value,
                Some(acc) => KExpr::bin(BinOp::Add, acc, value),
            });
        }
        total.unwrap_or(KExpr::Const(0.0))
    }

    /// Iterations of the history an expression reads, if it reads one.
    fn history_len(&self, e: &Expr) -> Option<usize> {
        let mut n = None;
        e.walk(&mut |x| {
            if let ExprKind::Hist { hist, .. } = x.kind {
                n = Some(self.c.histories[hist].len);
            }
        });
        n
    }

    /// A `[nb, n]` buffer holding the product of one side's factors (and the per-sample ones).
    fn side_buffer(&mut self, side: &[&Expr], sample: &[&Expr], n: usize, em: &mut Emit) -> BufId {
        if sample.is_empty() && side.len() == 1 {
            match side[0].kind {
                ExprKind::Var { pop, var, .. } => return self.var_buf[&(pop, var)],
                ExprKind::Hist { hist, .. } => return self.hist_buf[hist],
                _ => {}
            }
        }
        if let Some(f) = side.iter().chain(sample).find(|f| self.history_len(f).is_some()) {
            // Autodiff emits each side of a gradient through time as one recorded history.
            self.unsupported(f.span, "a product of recorded histories");
        }
        let t = self.temp(Rows::Batch, n);
        let mut parts: Vec<KExpr> = side.iter().map(|f| self.nexpr(f, em)).collect();
        parts.extend(sample.iter().map(|f| self.nexpr(f, em)));
        let mut it = parts.into_iter();
        let first = it.next().unwrap_or(KExpr::Const(1.0));
        let v = it.fold(first, |a, b| KExpr::bin(BinOp::Mul, a, b));
        em.store(true, n, Store { out: t, value: v, guard: None });
        t
    }

    /// Fallback: accumulate a non-separable per-sample term over the batch sample by sample.
    fn over_batch(&mut self, e: &Expr, pid: PathId, sum: bool, em: &mut Emit) -> KExpr {
        let c = self.c;
        let p = &c.paths[pid];
        let (rows, cols) = (c.pops[p.post].size, c.pops[p.pre].size);
        let g = self.temp(Rows::Fixed(rows), cols);
        let zero = Kernel::SynMap { rows, cols, over_batch: false, stores: vec![Store { out: g, value: KExpr::Const(0.0), guard: None }] };
        em.kernel(zero);
        let v = self.sexpr(e, pid, em);
        let v = if sum { v } else { KExpr::bin(BinOp::Mul, v, KExpr::InvBatch) };
        let acc = KExpr::bin(BinOp::Add, KExpr::Load(g, Access::Elem), v);
        em.kernel(Kernel::SynMap { rows, cols, over_batch: true, stores: vec![Store { out: g, value: acc, guard: None }] });
        KExpr::Load(g, Access::Elem)
    }

    /// Lowers an expression evaluated per synapse of pathway `pid` (in a `SynMap`).
    fn sexpr(&mut self, e: &Expr, pid: PathId, em: &mut Emit) -> KExpr {
        let c = self.c;
        let p = &c.paths[pid];
        match &e.kind {
            ExprKind::Const(v) => KExpr::Const(*v),
            ExprKind::Time { dt } => KExpr::Time(*dt),
            ExprKind::StepCount => KExpr::StepCount,
            ExprKind::BatchMean(arg) => self.batch_reduced(arg, pid, false, e.span, em),
            ExprKind::Hist { .. } => {
                self.unsupported(e.span, "a recorded history outside a gradient");
                KExpr::Const(0.0)
            }
            ExprKind::Var { pop, var, role } => {
                let acc = match role {
                    Role::Pre => Access::Pre,
                    Role::Post => Access::Post,
                    Role::Direct if *pop == p.post => Access::Post,
                    Role::Direct => Access::Pre,
                };
                KExpr::Load(self.var_buf[&(*pop, *var)], acc)
            }
            ExprKind::Syn { path, var, transposed } => {
                // Another pathway's state as it was before the block; the pathway's own state
                // as its earlier statements left it.
                let snap = if *path == pid { None } else { self.snapshot.get(&(*path, *var)) };
                let b = snap.copied().unwrap_or(self.syn_buf[&(*path, *var)]);
                KExpr::Load(b, if *transposed { Access::Trans } else { Access::Elem })
            }
            ExprKind::Signal(s) => KExpr::Load(self.sig_buf[*s], Access::Sample),
            ExprKind::Meta(m) => KExpr::Load(self.meta_buf[*m], Access::Scalar),
            ExprKind::Rand(k) => {
                self.rand += 1;
                KExpr::Rand(*k, self.rand)
            }
            ExprKind::Unary { op, arg } => KExpr::Unary(*op, Box::new(self.sexpr(arg, pid, em))),
            ExprKind::Binary { op, lhs, rhs } => {
                let a = self.sexpr(lhs, pid, em);
                let b = self.sexpr(rhs, pid, em);
                KExpr::bin(*op, a, b)
            }
            ExprKind::Call { func, args } => KExpr::Call(*func, args.iter().map(|a| self.sexpr(a, pid, em)).collect()),
            ExprKind::Transmit { path, transpose, .. } => {
                // A current arriving at the pre or post neurons: computed per neuron first.
                let receiver = if *transpose { c.paths[*path].pre } else { c.paths[*path].post };
                let acc = if receiver == p.post { Access::Post } else { Access::Pre };
                let t = self.materialize(e, em);
                KExpr::Load(t, acc)
            }
            ExprKind::Softmax(arg) => {
                let acc = self.side_of(arg, pid);
                let t = self.materialize(e, em);
                let _ = arg;
                KExpr::Load(t, acc)
            }
            ExprKind::Reduce { op, axis: Axis::All, arg } if !self.is_syn_space(arg, pid) => {
                let r = self.reduce_pop(*op, arg, em);
                KExpr::Load(r, Access::Sample)
            }
            ExprKind::Reduce { op, axis, arg } => self.syn_reduce(*op, *axis, arg, pid, em, e.span),
            ExprKind::CrossEntropy { logits, target } => {
                let r = self.cross_entropy(logits, target, em);
                KExpr::Load(r, Access::Sample)
            }
            ExprKind::Grad { .. } => {
                self.unsupported(e.span, "grad()");
                KExpr::Const(0.0)
            }
            ExprKind::Angle(..) | ExprKind::MatStat { .. } => {
                self.unsupported(e.span, "a monitor function outside a monitor");
                KExpr::Const(0.0)
            }
        }
    }

    fn is_syn_space(&self, e: &Expr, pid: PathId) -> bool {
        space_of(self.c, e, Ctx::Synapse(pid)).map(|s| s.idx == Idx::Syn).unwrap_or(false)
    }

    fn side_of(&self, e: &Expr, pid: PathId) -> Access {
        match space_of(self.c, e, Ctx::Synapse(pid)).map(|s| s.idx) {
            Ok(Idx::Pre) => Access::Pre,
            _ => Access::Post,
        }
    }

    /// Row/column (or whole-pathway) reductions of synapse values.
    fn syn_reduce(&mut self, op: ReduceOp, axis: Axis, arg: &Expr, pid: PathId, em: &mut Emit, span: Span) -> KExpr {
        let c = self.c;
        let p = &c.paths[pid];
        let (rows, cols) = (c.pops[p.post].size, c.pops[p.pre].size);
        if self.batch > 1 && self.is_batched(arg, pid) {
            self.unsupported(span, "a row or column reduction of per-sample synapse values with batch > 1");
            return KExpr::Const(0.0);
        }
        let v = self.sexpr(arg, pid, em);
        let (rop, post_op): (RedOp, Option<(BinOp, f64, bool)>) = match op {
            ReduceOp::Sum => (RedOp::Sum, None),
            ReduceOp::Max => (RedOp::Max, None),
            ReduceOp::Min => (RedOp::Min, None),
            ReduceOp::Mean => (RedOp::Sum, Some((BinOp::Div, 0.0, false))),
            ReduceOp::Norm => (RedOp::Sum, Some((BinOp::Pow, 0.5, true))),
            ReduceOp::LogSumExp => {
                self.unsupported(span, "logsumexp over synapses");
                return KExpr::Const(0.0);
            }
        };
        let v = if op == ReduceOp::Norm { KExpr::bin(BinOp::Mul, v.clone(), v) } else { v };
        let (row, n_out, n_red) = match axis {
            Axis::Row | Axis::All => (true, rows, cols),
            Axis::Col => (false, cols, rows),
        };
        let out = self.temp(Rows::Fixed(1), n_out);
        em.kernel(Kernel::SynReduce { out, row, op: rop, rows, cols, value: v });
        let finish = |x: KExpr, n: usize| match post_op {
            Some((BinOp::Div, _, _)) => KExpr::bin(BinOp::Div, x, KExpr::Const(n as f64)),
            Some((_, _, true)) => KExpr::Call(Func::Sqrt, vec![x]),
            _ => x,
        };
        if axis == Axis::All {
            // Reduce the per-row results over the post population too.
            let tot = self.temp(Rows::Fixed(1), 1);
            em.kernel(Kernel::Reduce { out: tot, op: rop, batched: false, cols: rows, value: KExpr::Load(out, Access::Elem) });
            return finish(KExpr::Load(tot, Access::Scalar), rows * cols);
        }
        let _ = n_red;
        finish(KExpr::Load(out, if row { Access::Post } else { Access::Pre }), n_red)
    }

    // -----------------------------------------------------------------------------------------
    // Monitors

    fn monitor(&mut self, e: &Expr, em: &mut Emit) -> Option<Stat> {
        let c = self.c;
        match &e.kind {
            ExprKind::Angle(a, b) => {
                let cols = self.pop_size_of(a).or_else(|| self.pop_size_of(b)).unwrap_or(1);
                let ta = self.materialize_fresh(a, cols, em);
                let tb = self.materialize_fresh(b, cols, em);
                Some(Stat::Angle { a: ta, b: tb, cols })
            }
            ExprKind::MatStat { kind, path: p, var } => {
                let path = &c.paths[*p];
                let square = matches!(kind, MatStatKind::Symmetry | MatStatKind::SpectralRadius);
                if square && path.pre != path.post {
                    let d = Diagnostic::error(
                        "circ::shape::not_square",
                        e.span,
                        format!("`{}` is not square ({} -> {})", path.name, c.pops[path.pre].name, c.pops[path.post].name),
                    )
                    .label("needs a recurrent pathway")
                    .help("symmetry and spectral radius are defined for pathways from a population to itself");
                    self.diags.push(d);
                    return None;
                }
                let buf = self.syn_buf[&(*p, *var)];
                let (rows, cols) = (c.pops[path.post].size, c.pops[path.pre].size);
                Some(match kind {
                    MatStatKind::Symmetry => Stat::Symmetry { buf, n: rows },
                    MatStatKind::SpectralRadius => Stat::SpectralRadius { buf, n: rows },
                    MatStatKind::EffectiveRank => Stat::EffectiveRank { buf, rows, cols },
                    MatStatKind::Histogram => Stat::Histogram { buf, len: rows * cols },
                })
            }
            _ if e.first_syn_path().is_some() => {
                // A statistic of synapse state (e.g. `mean(W.w)`): evaluated in the
                // pathway's synapse context, where reductions over synapses are defined.
                let pid = e.first_syn_path().expect("checked");
                match space_of(c, e, Ctx::Synapse(pid)) {
                    Ok(Space { idx: Idx::Scalar, batched: false }) => {}
                    _ => {
                        let d = Diagnostic::error(
                            "circ::shape::monitor_not_scalar",
                            e.span,
                            "a monitor of synapse state must reduce it to one number",
                        )
                        .label("not a single number")
                        .help("reduce it: `mean(W.w)`, `max(abs(W.w))`");
                        self.diags.push(d);
                        return None;
                    }
                }
                let v = self.sexpr(e, pid, em);
                let out = self.temp(Rows::Batch, 1);
                em.store(true, 1, Store { out, value: v, guard: None });
                Some(Stat::Mean { buf: out })
            }
            _ => {
                if self.pop_size_of(e).is_some() {
                    let d = Diagnostic::error("circ::shape::monitor_not_scalar", e.span, "a monitor must be a scalar (per sample)")
                        .label("per-neuron value")
                        .help("reduce it: `mean(h.r)`, or compare tensors with `angle(a, b)`");
                    self.diags.push(d);
                    return None;
                }
                let out = self.temp(Rows::Batch, 1);
                let v = self.nexpr(e, em);
                em.store(true, 1, Store { out, value: v, guard: None });
                Some(Stat::Mean { buf: out })
            }
        }
    }

    /// Like `materialize`, but always into a fresh buffer (monitors must not alias state).
    fn materialize_fresh(&mut self, e: &Expr, cols: usize, em: &mut Emit) -> BufId {
        let t = self.temp(Rows::Batch, cols);
        let v = self.nexpr(e, em);
        em.store(true, cols, Store { out: t, value: v, guard: None });
        t
    }
}

fn default_readout(c: &Circuit) -> Option<(PopId, VarId)> {
    c.pops.iter().find_map(|p| match p.kind {
        PopKind::Target { root } if root < c.pops.len() => c.pops[root].out.or(Some(0)).map(|v| (root, v)),
        _ => None,
    })
}

fn writes(s: &Stmt, t: Target) -> bool {
    let mut hit = false;
    s.walk(&mut |st| {
        if let StmtKind::Assign { target, .. } | StmtKind::Ode { target, .. } = &st.kind {
            hit |= *target == t;
        }
    });
    hit
}

fn stmt_exprs(s: &Stmt, f: &mut dyn FnMut(&Expr)) {
    match &s.kind {
        StmtKind::Assign { value, .. } | StmtKind::Ode { value, .. } => f(value),
        StmtKind::When { cond, then, els } => {
            f(cond);
            for x in then.iter().chain(els) {
                stmt_exprs(x, f);
            }
        }
    }
}

/// One product term of an expanded expression.
struct Term {
    negative: bool,
    factors: Vec<Expr>,
}

/// Expands `e` into a sum of products (distributing `*` over `+`/`-`, pulling `/ c` into a
/// factor), but only where it mixes sides: a subexpression that `mixed` says lives on one
/// side (pre, post, per sample, or unbatched) stays one factor. That keeps differences such
/// as `L_noisy − L` intact (splitting them into two outer products would cancel
/// catastrophically) and makes as few outer products as possible. Gives up (None) beyond
/// `limit` terms.
fn expand(e: &Expr, limit: usize, mixed: &dyn Fn(&Expr) -> bool) -> Option<Vec<Term>> {
    let single = |f: Expr| vec![Term { negative: false, factors: vec![f] }];
    if !mixed(e) {
        return Some(single(e.clone()));
    }
    Some(match &e.kind {
        ExprKind::Binary { op: BinOp::Add, lhs, rhs } => {
            let mut a = expand(lhs, limit, mixed)?;
            a.extend(expand(rhs, limit, mixed)?);
            if a.len() > limit {
                return None;
            }
            a
        }
        ExprKind::Binary { op: BinOp::Sub, lhs, rhs } => {
            let mut a = expand(lhs, limit, mixed)?;
            a.extend(expand(rhs, limit, mixed)?.into_iter().map(|mut t| {
                t.negative = !t.negative;
                t
            }));
            if a.len() > limit {
                return None;
            }
            a
        }
        ExprKind::Unary { op: UnOp::Neg, arg } => expand(arg, limit, mixed)?
            .into_iter()
            .map(|mut t| {
                t.negative = !t.negative;
                t
            })
            .collect(),
        ExprKind::Binary { op: BinOp::Mul, lhs, rhs } => {
            let a = expand(lhs, limit, mixed)?;
            let b = expand(rhs, limit, mixed)?;
            if a.len() * b.len() > limit {
                return None;
            }
            let mut out = Vec::new();
            for x in &a {
                for y in &b {
                    let mut factors = x.factors.clone();
                    factors.extend(y.factors.iter().cloned());
                    out.push(Term { negative: x.negative != y.negative, factors });
                }
            }
            out
        }
        ExprKind::Binary { op: BinOp::Div, lhs, rhs } => {
            let inv = Expr {
                kind: ExprKind::Binary { op: BinOp::Div, lhs: Box::new(Expr::constant(1.0, rhs.span)), rhs: rhs.clone() },
                span: rhs.span,
            };
            expand(lhs, limit, mixed)?
                .into_iter()
                .map(|mut t| {
                    t.factors.push(inv.clone());
                    t
                })
                .collect()
        }
        _ => single(e.clone()),
    })
}

fn product(fs: &[Expr], span: Span) -> Expr {
    let mut it = fs.iter().cloned();
    let first = it.next().unwrap_or(Expr::constant(1.0, span));
    it.fold(first, |a, b| Expr { kind: ExprKind::Binary { op: BinOp::Mul, lhs: Box::new(a), rhs: Box::new(b) }, span })
}

/// Splits `f` as `a·x + b` with `a`, `b` free of the target `x`, when it is affine in `x`.
fn affine(f: &Expr, x: Target) -> Option<(Expr, Expr)> {
    let is_x = |e: &Expr| match (&e.kind, x) {
        (ExprKind::Var { pop, var, .. }, Target::Var { pop: p, var: v }) => *pop == p && *var == v,
        (ExprKind::Syn { path, var, transposed: false }, Target::Syn { path: p, var: v }) => *path == p && *var == v,
        (ExprKind::Signal(s), Target::Signal(t)) => *s == t,
        _ => false,
    };
    let has_x = |e: &Expr| {
        let mut h = false;
        e.walk(&mut |n| h |= is_x(n));
        h
    };
    let span = f.span;
    let k = |v: f64| Expr::constant(v, span);
    let bin = |op, a: Expr, b: Expr| Expr { kind: ExprKind::Binary { op, lhs: Box::new(a), rhs: Box::new(b) }, span };
    if !has_x(f) {
        return Some((k(0.0), f.clone()));
    }
    if is_x(f) {
        return Some((k(1.0), k(0.0)));
    }
    match &f.kind {
        ExprKind::Binary { op: op @ (BinOp::Add | BinOp::Sub), lhs, rhs } => {
            let (a1, b1) = affine(lhs, x)?;
            let (a2, b2) = affine(rhs, x)?;
            Some((bin(*op, a1, a2), bin(*op, b1, b2)))
        }
        ExprKind::Unary { op: UnOp::Neg, arg } => {
            let (a, b) = affine(arg, x)?;
            Some((bin(BinOp::Sub, k(0.0), a), bin(BinOp::Sub, k(0.0), b)))
        }
        ExprKind::Binary { op: BinOp::Mul, lhs, rhs } => {
            if !has_x(lhs) {
                let (a, b) = affine(rhs, x)?;
                Some((bin(BinOp::Mul, (**lhs).clone(), a), bin(BinOp::Mul, (**lhs).clone(), b)))
            } else if !has_x(rhs) {
                let (a, b) = affine(lhs, x)?;
                Some((bin(BinOp::Mul, a, (**rhs).clone()), bin(BinOp::Mul, b, (**rhs).clone())))
            } else {
                None
            }
        }
        ExprKind::Binary { op: BinOp::Div, lhs, rhs } if !has_x(rhs) => {
            let (a, b) = affine(lhs, x)?;
            Some((bin(BinOp::Div, a, (**rhs).clone()), bin(BinOp::Div, b, (**rhs).clone())))
        }
        _ => None,
    }
    .map(|(a, b)| (fold(a), fold(b)))
}

/// Folds constant subtrees (so `0 * x + ...` from `affine` does not survive into kernels).
fn fold(e: Expr) -> Expr {
    let span = e.span;
    match e.kind {
        ExprKind::Binary { op, lhs, rhs } => {
            let (l, r) = (fold(*lhs), fold(*rhs));
            let cst = |x: &Expr| if let ExprKind::Const(v) = x.kind { Some(v) } else { None };
            match (op, cst(&l), cst(&r)) {
                (_, Some(a), Some(b)) => {
                    let v = match op {
                        BinOp::Add => a + b,
                        BinOp::Sub => a - b,
                        BinOp::Mul => a * b,
                        BinOp::Div => a / b,
                        _ => return Expr { kind: ExprKind::Binary { op, lhs: Box::new(l), rhs: Box::new(r) }, span },
                    };
                    Expr::constant(v, span)
                }
                (BinOp::Mul, Some(z), _) | (BinOp::Mul, _, Some(z)) if z == 0.0 => Expr::constant(0.0, span),
                (BinOp::Add, Some(0.0), _) => r,
                (BinOp::Add | BinOp::Sub, _, Some(0.0)) => l,
                (BinOp::Mul, Some(1.0), _) => r,
                (BinOp::Mul | BinOp::Div, _, Some(1.0)) => l,
                _ => Expr { kind: ExprKind::Binary { op, lhs: Box::new(l), rhs: Box::new(r) }, span },
            }
        }
        k => Expr { kind: k, span },
    }
}
