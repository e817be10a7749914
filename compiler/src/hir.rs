//! The high-level IR: one concrete, fully named circuit.
//!
//! Input: built by `resolve.rs` from the AST and the parameter values (defaults plus `--set`).
//! Output: read by `check.rs` (spaces, semantic rules), `locality.rs` (tiers) and `lower.rs`.
//! Invariants: families are unrolled (`h[1]`, `h[2]` are separate populations), `fn` and
//! `rule` bodies are inlined, params are folded to constants, and every name is an id. Every
//! expression and statement keeps the span of the text it came from (for inlined bodies, the
//! span inside the `fn`/`rule` definition, plus the span of the call in `via`).

use crate::ast::{AssignOp, BinOp, UnOp};
use crate::diag::Span;
use circ_runtime::episodes::MetaConfig;
use std::fmt;

pub type PopId = usize;
pub type PathId = usize;
pub type VarId = usize;
pub type SignalId = usize;
pub type MetaId = usize;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Value {
    pub fn as_f64(self) -> f64 {
        match self {
            Value::Int(i) => i as f64,
            Value::Float(f) => f,
            Value::Bool(b) => b as i64 as f64,
        }
    }
    pub fn type_name(self) -> &'static str {
        match self {
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Bool(_) => "bool",
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// The locality tiers of DESIGN.md §3, ordered by what they may read. Population and
/// projection stand side by side; `PopProj` is a term that needs both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    Synapse,
    Neuron,
    Population,
    Projection,
    PopProj,
    NonLocal,
}

impl Tier {
    /// Least upper bound in the tier lattice.
    pub fn join(self, other: Tier) -> Tier {
        use Tier::*;
        match (self, other) {
            (Population, Projection) | (Projection, Population) => PopProj,
            (a, b) => a.max(b),
        }
    }
    /// Whether a term of tier `self` is allowed under a claim of `claim`.
    pub fn within(self, claim: Tier) -> bool {
        self.join(claim) == claim
    }
    pub fn name(self) -> &'static str {
        match self {
            Tier::Synapse => "synapse",
            Tier::Neuron => "neuron",
            Tier::Population => "population",
            Tier::Projection => "projection",
            Tier::PopProj => "population + projection",
            Tier::NonLocal => "non-local",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub value: Value,
    pub span: Span,
    /// Set when the value came from the command line.
    pub overridden: bool,
}

#[derive(Clone, Debug)]
pub struct Meta {
    pub name: String,
    pub init: f64,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct Signal {
    pub name: String,
    /// Carried from one step to the next (otherwise it must be written before it is read).
    pub state: bool,
    pub init: f64,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum PopKind {
    /// Clamped from the data's inputs.
    Input,
    /// Clamped from the data's targets; only the root population's equations may read it.
    Target {
        root: PopId,
    },
    Neurons,
}

#[derive(Clone, Debug)]
pub struct Var {
    pub name: String,
    pub state: bool,
    pub init: f64,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct Pop {
    pub name: String,
    pub size: usize,
    pub kind: PopKind,
    /// Inputs and targets have exactly one variable, named like the population.
    pub vars: Vec<Var>,
    /// The variable a bare use of the population means (`W(h)`, `pre`).
    pub out: Option<VarId>,
    pub span: Span,
    /// The span of the name in the declaration (for secondary labels).
    pub name_span: Span,
}

impl Pop {
    pub fn var_name(&self, v: VarId) -> String {
        match self.kind {
            PopKind::Input | PopKind::Target { .. } => self.name.clone(),
            PopKind::Neurons => format!("{}.{}", self.name, self.vars[v].name),
        }
    }
    pub fn find_var(&self, name: &str) -> Option<VarId> {
        self.vars.iter().position(|v| v.name == name)
    }
}

/// An initialisation law for synapse state, times a scale.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Law {
    Zeros,
    Constant(f64),
    Uniform(f64, f64),
    Normal(f64, f64),
    XavierUniform,
    XavierNormal,
    KaimingUniform,
    KaimingNormal,
    Identity,
    Orthogonal,
    Bernoulli(f64),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Init {
    pub law: Law,
    pub scale: f64,
}

impl Init {
    pub fn zeros() -> Init {
        Init { law: Law::Zeros, scale: 1.0 }
    }
}

#[derive(Clone, Debug)]
pub struct SynVar {
    pub name: String,
    pub init: Init,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct Path {
    pub name: String,
    pub pre: PopId,
    pub post: PopId,
    pub plastic: bool,
    /// Span of the `fixed`/`plastic` attribute, or of the declaration when neither is written.
    pub plastic_span: Span,
    /// Synapse state; index 0 is the weight `w`.
    pub syn: Vec<SynVar>,
    /// The effective weight used by transmission, when it is not just `w`
    /// (`mask m` makes it `m * w`; `weight EXPR` sets it).
    pub weight: Option<Expr>,
    /// Re-drawn at the start of every episode.
    pub resample: bool,
    pub span: Span,
    pub name_span: Span,
}

impl Path {
    pub fn find_syn(&self, name: &str) -> Option<VarId> {
        self.syn.iter().position(|v| v.name == name)
    }
}

/// Where an expression lives: its index space (DESIGN.md §3). `batched` says it also varies
/// over the samples of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idx {
    /// One value (a constant, a meta-param, a per-sample signal when batched).
    Scalar,
    /// One value per neuron of a population.
    Neuron(PopId),
    /// In a synapse context: per presynaptic / postsynaptic neuron of the context pathway.
    Pre,
    Post,
    /// Per synapse of the context pathway.
    Syn,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    pub idx: Idx,
    pub batched: bool,
}

impl Space {
    pub const SCALAR: Space = Space { idx: Idx::Scalar, batched: false };
}

/// How a neuron variable is reached from a synapse rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Named absolutely (`h.a`) in a neuron equation.
    Direct,
    Pre,
    Post,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Sum,
    Mean,
    Max,
    Min,
    /// Euclidean norm.
    Norm,
    LogSumExp,
}

/// Which axis a reduction runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Axis {
    /// All neurons of a population (neuron space → scalar per sample), or all synapses.
    All,
    /// Over the presynaptic index of each row (synapse space → post vector): `row_sum`.
    Row,
    /// Over the postsynaptic index of each column (synapse space → pre vector): `col_sum`.
    Col,
}

/// Elementwise built-in functions. Their semantics live in `circ_runtime::math` and are shared
/// by the interpreter and the JIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Func {
    Relu,
    LeakyRelu,
    Step,
    Sign,
    Abs,
    Exp,
    Log,
    Sqrt,
    Tanh,
    Sigmoid,
    Softplus,
    Gelu,
    Sin,
    Cos,
    Floor,
    Min,
    Max,
    Clip,
    Select,
    Pow,
}

impl Func {
    pub fn name(self) -> &'static str {
        match self {
            Func::Relu => "relu",
            Func::LeakyRelu => "leaky_relu",
            Func::Step => "step",
            Func::Sign => "sign",
            Func::Abs => "abs",
            Func::Exp => "exp",
            Func::Log => "log",
            Func::Sqrt => "sqrt",
            Func::Tanh => "tanh",
            Func::Sigmoid => "sigmoid",
            Func::Softplus => "softplus",
            Func::Gelu => "gelu",
            Func::Sin => "sin",
            Func::Cos => "cos",
            Func::Floor => "floor",
            Func::Min => "min",
            Func::Max => "max",
            Func::Clip => "clip",
            Func::Select => "select",
            Func::Pow => "pow",
        }
    }
    pub const ALL: &'static [Func] = &[
        Func::Relu,
        Func::LeakyRelu,
        Func::Step,
        Func::Sign,
        Func::Abs,
        Func::Exp,
        Func::Log,
        Func::Sqrt,
        Func::Tanh,
        Func::Sigmoid,
        Func::Softplus,
        Func::Gelu,
        Func::Sin,
        Func::Cos,
        Func::Floor,
        Func::Min,
        Func::Max,
        Func::Clip,
        Func::Select,
        Func::Pow,
    ];
    /// (fewest, most) arguments; optional trailing arguments take the defaults in `math.rs`.
    pub fn arity(self) -> (usize, usize) {
        match self {
            Func::LeakyRelu => (1, 2),
            Func::Softplus => (1, 2),
            Func::Min | Func::Max | Func::Pow => (2, 2),
            Func::Clip | Func::Select => (3, 3),
            _ => (1, 1),
        }
    }
}

/// Statistics of a synapse-state matrix that monitors can report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatStatKind {
    /// (‖W_sym‖ − ‖W_skew‖)/(‖W_sym‖ + ‖W_skew‖); square pathways only.
    Symmetry,
    /// Largest |eigenvalue|; square pathways only.
    SpectralRadius,
    /// exp(entropy of the normalised singular values) (Roy & Vetterli 2007).
    EffectiveRank,
    /// A histogram of the values, plotted at the end of the run.
    Histogram,
}

impl MatStatKind {
    pub fn name(self) -> &'static str {
        match self {
            MatStatKind::Symmetry => "symmetry",
            MatStatKind::SpectralRadius => "spectral_radius",
            MatStatKind::EffectiveRank => "effective_rank",
            MatStatKind::Histogram => "histogram",
        }
    }
}

/// Random draws, one per element per evaluation, from the run's counter-based generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RandKind {
    Uniform,
    Normal,
}

#[derive(Clone, Debug)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum ExprKind {
    Const(f64),
    /// A neuron variable, reached directly or as `pre.`/`post.` in a synapse rule.
    Var {
        pop: PopId,
        var: VarId,
        role: Role,
    },
    /// Synapse state of a pathway; `transposed` for `transpose(W.w)`.
    Syn {
        path: PathId,
        var: VarId,
        transposed: bool,
    },
    Signal(SignalId),
    Meta(MetaId),
    /// `W(x)`: Σ_j W_ij x_j into W's post population; `W^T(e)`: Σ_i W_ij e_i into its pre.
    Transmit {
        path: PathId,
        transpose: bool,
        arg: Box<Expr>,
    },
    Unary {
        op: UnOp,
        arg: Box<Expr>,
    },
    Binary {
        op: BinOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    Call {
        func: Func,
        args: Vec<Expr>,
    },
    Reduce {
        op: ReduceOp,
        axis: Axis,
        arg: Box<Expr>,
    },
    Softmax(Box<Expr>),
    Rand(RandKind),
    /// Cross-entropy of logits against a one-hot target (scalar per sample).
    CrossEntropy {
        logits: Box<Expr>,
        target: Box<Expr>,
    },
    /// `grad(L, W)`: reverse-mode derivative (non-local); accepted by the checker, refused
    /// by lowering until autodiff lands.
    Grad {
        loss: Box<Expr>,
        wrt: PathId,
        /// The synapse state differentiated (through the pathway's effective weight).
        var: VarId,
    },
    /// `batch_mean(x)`: the mean over the batch of a per-sample value (what an optimiser
    /// needs before squaring a gradient).
    BatchMean(Box<Expr>),
    /// `step_count`: training steps so far, this one included (1, 2, ...).
    StepCount,
    /// The value of a history (see [`History`]): inside a time loop, the value recorded at the
    /// current iteration; in a rule, every iteration's value (the history acts as a batch of
    /// `iterations × batch` samples; `role` says which side of the rule's pathway it is on).
    /// Only generated by autodiff.
    Hist {
        hist: usize,
        role: Role,
    },
    /// `t`: the iteration of the innermost repeated phase times `dt`.
    Time {
        dt: f64,
    },
    /// Monitor-only functions over whole tensors.
    Angle(Box<Expr>, Box<Expr>),
    /// A statistic of a whole synapse-state matrix (monitors only).
    MatStat {
        kind: MatStatKind,
        path: PathId,
        var: VarId,
    },
}

impl Expr {
    pub fn constant(v: f64, span: Span) -> Expr {
        Expr { kind: ExprKind::Const(v), span }
    }
    /// The pathway whose synapses a synapse-state expression lives on, if any (monitors of
    /// synapse state are evaluated in that pathway's synapse context).
    pub fn first_syn_path(&self) -> Option<PathId> {
        // The synapse space is that of a pathway read as it is (not transposed), whatever the
        // order of the operands: `V.w - transpose(B.w)` lives on V's synapses.
        let (mut plain, mut any) = (None, None);
        self.walk(&mut |x| {
            if let ExprKind::Syn { path, transposed, .. } = &x.kind {
                any = Some(*path);
                if !*transposed {
                    plain = Some(*path);
                }
            }
        });
        plain.or(any)
    }
    /// Visits every sub-expression, parents before children.
    pub fn walk(&self, f: &mut dyn FnMut(&Expr)) {
        let mut stack = vec![self];
        while let Some(e) = stack.pop() {
            f(e);
            e.for_each_child(&mut |c| stack.push(c));
        }
    }
    /// Visits the direct sub-expressions.
    pub fn for_each_child<'a>(&'a self, f: &mut dyn FnMut(&'a Expr)) {
        match &self.kind {
            ExprKind::Transmit { arg, .. } | ExprKind::Unary { arg, .. } | ExprKind::Reduce { arg, .. } => f(arg),
            ExprKind::Softmax(a) | ExprKind::BatchMean(a) => f(a),
            ExprKind::Binary { lhs, rhs, .. } => {
                f(lhs);
                f(rhs);
            }
            ExprKind::Call { args, .. } => args.iter().for_each(f),
            ExprKind::CrossEntropy { logits, target } => {
                f(logits);
                f(target);
            }
            ExprKind::Grad { loss, .. } => f(loss),
            ExprKind::Angle(a, b) => {
                f(a);
                f(b);
            }
            _ => {}
        }
    }
    /// Visits the direct sub-expressions, to change them.
    pub fn for_each_child_mut(&mut self, f: &mut dyn FnMut(&mut Expr)) {
        match &mut self.kind {
            ExprKind::Transmit { arg, .. } | ExprKind::Unary { arg, .. } | ExprKind::Reduce { arg, .. } => f(arg),
            ExprKind::Softmax(a) | ExprKind::BatchMean(a) => f(a),
            ExprKind::Binary { lhs: a, rhs: b, .. } | ExprKind::CrossEntropy { logits: a, target: b } | ExprKind::Angle(a, b) => {
                f(a);
                f(b);
            }
            ExprKind::Call { args, .. } => args.iter_mut().for_each(f),
            ExprKind::Grad { loss, .. } => f(loss),
            _ => {}
        }
    }
}

/// What a statement assigns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Var {
        pop: PopId,
        var: VarId,
    },
    Syn {
        path: PathId,
        var: VarId,
    },
    Signal(SignalId),
    /// Records a value into a history at the current iteration (autodiff only).
    Hist(usize),
}

/// A per-iteration record of a per-neuron value (or of a signal, `pop: None`) through a time
/// loop of `len` iterations, kept for backpropagation through time: `len × batch × size`
/// values.
#[derive(Clone, Debug)]
pub struct History {
    pub name: String,
    pub pop: Option<PopId>,
    pub len: usize,
}

#[derive(Clone, Debug)]
pub enum StmtKind {
    /// `target op= value`.
    Assign { target: Target, op: AssignOp, value: Expr },
    /// `d target/dt = value`: integrated over one step of `dt`.
    Ode { target: Target, value: Expr, dt: f64 },
    /// Statements that apply only where `cond` is nonzero (per neuron or per synapse).
    When { cond: Expr, then: Vec<Stmt>, els: Vec<Stmt> },
}

#[derive(Clone, Debug)]
pub struct Stmt {
    pub kind: StmtKind,
    pub span: Span,
    /// For statements that came from a `rule` body: the span of the `apply`.
    pub via: Option<Span>,
}

impl Stmt {
    /// Visits this statement and every nested one.
    pub fn walk(&self, f: &mut dyn FnMut(&Stmt)) {
        f(self);
        if let StmtKind::When { then, els, .. } = &self.kind {
            for s in then.iter().chain(els) {
                s.walk(f);
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct Phase {
    pub name: String,
    /// Number of iterations per step (a time loop); 1 for a plain phase.
    pub repeat: usize,
    /// Iterate the loop backwards (the iteration counter `t` counts down): backward phases of
    /// backpropagation through time.
    pub reverse: bool,
    pub body: Vec<Stmt>,
    /// Checkpointed backpropagation through time (autodiff with `bptt_checkpoint`): the
    /// loop runs as segments; `None` for every phase the source writes.
    pub segments: Option<SegmentPlan>,
    pub span: Span,
}

/// The `bptt_checkpoint` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checkpoints {
    /// Every K iterations.
    Every(usize),
    /// `auto`: every ⌈√T⌉ iterations of a T-iteration loop, which stores the least.
    Sqrt,
}

impl Checkpoints {
    /// Iterations per segment of a loop of `len` (None: store every iteration).
    pub fn segment(self, len: usize) -> Option<usize> {
        let k = match self {
            Checkpoints::Every(k) => k,
            Checkpoints::Sqrt => (1..=len).find(|k| k * k >= len).unwrap_or(len),
        };
        Some(k).filter(|&k| k > 0 && k < len)
    }
}

/// How a time loop runs in segments of `len` iterations (the last one may be shorter), so
/// that backpropagation through time stores `len` iterations of history instead of all of
/// them. Each segment runs `head` once (a history read or written there is indexed by the
/// segment, not the iteration), then `replay` over the segment's iterations in order, then
/// the phase's `body` over them (backwards when the phase is `reverse`, which also takes the
/// segments last first).
#[derive(Clone, Debug)]
pub struct SegmentPlan {
    pub len: usize,
    /// Forward: save the loop-carried state into checkpoints. Backward: restore it.
    pub head: Vec<Stmt>,
    /// Backward only: the forward body with its recording statements, recomputing the
    /// segment's history from the restored state.
    pub replay: Vec<Stmt>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// After all phases of every step.
    EveryStep,
    /// After every iteration of a phase.
    After(usize),
    /// After all phases, every N-th step.
    Every(u64),
}

#[derive(Clone, Debug)]
pub struct Plasticity {
    pub schedule: Schedule,
    /// Sum (rather than average) per-sample updates over a batch.
    pub sum: bool,
    /// Synapse statements, grouped per pathway in program order.
    pub body: Vec<SynBlock>,
    pub span: Span,
}

/// The statements of one plasticity block that update one pathway.
#[derive(Clone, Debug)]
pub struct SynBlock {
    pub path: PathId,
    pub stmts: Vec<Stmt>,
}

#[derive(Clone, Debug)]
pub struct Monitor {
    pub name: String,
    pub expr: Expr,
    pub span: Span,
}

/// How the loss and accuracy of a run are read from the circuit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossKind {
    CrossEntropy,
    Mse,
}

#[derive(Clone, Debug)]
pub struct Experiment {
    /// Dataset or task name (`mnist`, `fashion_mnist`, `xor`, `moons`, ...).
    pub data: Option<(String, Span)>,
    pub epochs: usize,
    pub batch: usize,
    pub seed: u64,
    pub shuffle: bool,
    pub limit: Option<usize>,
    /// The neuron variable whose argmax is the prediction and on which the loss is taken.
    pub readout: Option<(PopId, VarId, Span)>,
    pub loss: LossKind,
    pub eval_batch: usize,
    /// Steps per epoch when there is no dataset (`data = none`).
    pub steps: Option<usize>,
    /// Record monitors every N steps.
    pub monitor_every: Option<usize>,
    /// Meta-learning: when set, the run is a sequence of episodes that step the meta-params
    /// (the runtime's settings type, so the driver takes it as the resolver built it).
    pub meta: Option<MetaConfig>,
    /// Backpropagation through time stores the loop state every K iterations and recomputes
    /// the rest in the backward pass (`bptt_checkpoint`; `None`: store every iteration).
    pub bptt_checkpoint: Option<Checkpoints>,
    pub span: Span,
}

impl Default for Experiment {
    fn default() -> Self {
        Experiment {
            data: None,
            epochs: 1,
            batch: 1,
            seed: 0,
            shuffle: true,
            limit: None,
            readout: None,
            loss: LossKind::CrossEntropy,
            eval_batch: 1000,
            steps: None,
            monitor_every: None,
            meta: None,
            bptt_checkpoint: None,
            span: Span::default(),
        }
    }
}

/// A resolved circuit.
#[derive(Clone, Debug)]
pub struct Circuit {
    pub name: String,
    /// The declared locality claim and its span.
    pub claim: Option<(Tier, Span)>,
    pub params: Vec<Param>,
    pub metas: Vec<Meta>,
    pub signals: Vec<Signal>,
    pub pops: Vec<Pop>,
    pub paths: Vec<Path>,
    pub phases: Vec<Phase>,
    pub plasticity: Vec<Plasticity>,
    pub monitors: Vec<Monitor>,
    /// Histories recorded for backpropagation through time (autodiff only).
    pub histories: Vec<History>,
    pub experiment: Experiment,
    /// `precision f64` (via `param precision`): every buffer in double precision.
    pub f64: bool,
}

impl Circuit {
    pub fn target_name(&self, t: Target) -> String {
        match t {
            Target::Var { pop, var } => self.pops[pop].var_name(var),
            Target::Syn { path, var } => format!("{}.{}", self.paths[path].name, self.paths[path].syn[var].name),
            Target::Signal(s) => self.signals[s].name.clone(),
            Target::Hist(h) => self.histories[h].name.clone(),
        }
    }
    pub fn param(&self, name: &str) -> Option<Value> {
        self.params.iter().find(|p| p.name == name).map(|p| p.value)
    }
}

// ---------------------------------------------------------------------------------------------
// Stable text form (`circ ir --stage hir`)

impl Circuit {
    /// The expression as text (stable: used to identify equal expressions).
    pub fn expr_text(&self, e: &Expr) -> String {
        match &e.kind {
            ExprKind::Const(c) => format!("{c}"),
            ExprKind::Var { pop, var, role } => match role {
                Role::Direct => self.pops[*pop].var_name(*var),
                Role::Pre => format!("pre.{}", self.pops[*pop].vars[*var].name),
                Role::Post => format!("post.{}", self.pops[*pop].vars[*var].name),
            },
            ExprKind::Syn { path, var, transposed } => {
                let s = format!("{}.{}", self.paths[*path].name, self.paths[*path].syn[*var].name);
                if *transposed {
                    format!("transpose({s})")
                } else {
                    s
                }
            }
            ExprKind::Signal(s) => self.signals[*s].name.clone(),
            ExprKind::Meta(m) => self.metas[*m].name.clone(),
            ExprKind::Transmit { path, transpose, arg } => {
                format!("{}{}({})", self.paths[*path].name, if *transpose { "^T" } else { "" }, self.expr_text(arg))
            }
            ExprKind::Unary { op, arg } => format!("{}({})", if *op == UnOp::Neg { "-" } else { "!" }, self.expr_text(arg)),
            ExprKind::Binary { op, lhs, rhs } => format!("({} {} {})", self.expr_text(lhs), op.text(), self.expr_text(rhs)),
            ExprKind::Call { func, args } => {
                format!("{}({})", func.name(), args.iter().map(|a| self.expr_text(a)).collect::<Vec<_>>().join(", "))
            }
            ExprKind::Reduce { op, axis, arg } => {
                let prefix = match axis {
                    Axis::All => "",
                    Axis::Row => "row_",
                    Axis::Col => "col_",
                };
                format!("{prefix}{}({})", format!("{op:?}").to_lowercase(), self.expr_text(arg))
            }
            ExprKind::Softmax(a) => format!("softmax({})", self.expr_text(a)),
            ExprKind::Rand(k) => if *k == RandKind::Uniform { "rand()" } else { "randn()" }.to_string(),
            ExprKind::Time { .. } => "t".to_string(),
            ExprKind::Hist { hist, .. } => format!("{}[iter]", self.histories[*hist].name),
            ExprKind::StepCount => "step_count".to_string(),
            ExprKind::BatchMean(a) => format!("batch_mean({})", self.expr_text(a)),
            ExprKind::CrossEntropy { logits, target } => format!("cross_entropy({}, {})", self.expr_text(logits), self.expr_text(target)),
            ExprKind::Grad { loss, wrt, var } => {
                format!("grad({}, {}.{})", self.expr_text(loss), self.paths[*wrt].name, self.paths[*wrt].syn[*var].name)
            }
            ExprKind::Angle(a, b) => format!("angle({}, {})", self.expr_text(a), self.expr_text(b)),
            ExprKind::MatStat { kind, path, var } => {
                format!("{}({}.{})", kind.name(), self.paths[*path].name, self.paths[*path].syn[*var].name)
            }
        }
    }

    fn stmt_text(&self, s: &Stmt, depth: usize, out: &mut String) {
        let pad = "  ".repeat(depth);
        match &s.kind {
            StmtKind::Assign { target, op, value } => {
                out.push_str(&format!("{pad}{} {} {}\n", self.target_name(*target), op.text(), self.expr_text(value)))
            }
            StmtKind::Ode { target, value, dt } => {
                out.push_str(&format!("{pad}d {}/dt = {}  (dt = {dt})\n", self.target_name(*target), self.expr_text(value)))
            }
            StmtKind::When { cond, then, els } => {
                out.push_str(&format!("{pad}when {} {{\n", self.expr_text(cond)));
                for x in then {
                    self.stmt_text(x, depth + 1, out);
                }
                if !els.is_empty() {
                    out.push_str(&format!("{pad}}} else {{\n"));
                    for x in els {
                        self.stmt_text(x, depth + 1, out);
                    }
                }
                out.push_str(&format!("{pad}}}\n"));
            }
        }
    }
}

impl fmt::Display for Circuit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "circuit {}{}", self.name, self.claim.map(|(t, _)| format!(" locality {}", t.name())).unwrap_or_default())?;
        for p in &self.params {
            writeln!(f, "param {} = {}{}", p.name, p.value, if p.overridden { "  (overridden)" } else { "" })?;
        }
        for m in &self.metas {
            writeln!(f, "meta {} = {}", m.name, m.init)?;
        }
        for s in &self.signals {
            writeln!(f, "signal {}{} = {}", if s.state { "state " } else { "" }, s.name, s.init)?;
        }
        for p in &self.pops {
            let kind = match &p.kind {
                PopKind::Input => "input".to_string(),
                PopKind::Target { root } => format!("target at {}", self.pops.get(*root).map(|r| r.name.as_str()).unwrap_or("?")),
                PopKind::Neurons => "pop".to_string(),
            };
            let vars: Vec<String> = p
                .vars
                .iter()
                .enumerate()
                .map(|(i, v)| format!("{}{}{}", if v.state { "state " } else { "" }, if p.out == Some(i) { "out " } else { "" }, v.name))
                .collect();
            writeln!(f, "{kind} {}[{}] {{ {} }}", p.name, p.size, vars.join(", "))?;
        }
        for p in &self.paths {
            let syn: Vec<String> = p.syn.iter().map(|s| format!("{} ~ {:?} x {}", s.name, s.init.law, s.init.scale)).collect();
            writeln!(
                f,
                "path {}: {} -> {} {} {{ {} }}",
                p.name,
                self.pops[p.pre].name,
                self.pops[p.post].name,
                if p.plastic { "plastic" } else { "fixed" },
                syn.join(", ")
            )?;
            if let Some(w) = &p.weight {
                writeln!(f, "  weight = {}", self.expr_text(w))?;
            }
        }
        for ph in &self.phases {
            let repeat = if ph.repeat > 1 { format!(" repeat {}", ph.repeat) } else { String::new() };
            writeln!(f, "phase {}{repeat}{} {{", ph.name, if ph.reverse { " reversed" } else { "" })?;
            let mut s = String::new();
            if let Some(plan) = &ph.segments {
                // The segment structure, then the loop body at the indentation of a block.
                s.push_str(&format!("  segments of {} {{\n", plan.len));
                for (what, stmts) in [("head", &plan.head), ("replay", &plan.replay)] {
                    if !stmts.is_empty() {
                        s.push_str(&format!("    {what}:\n"));
                        for st in stmts {
                            self.stmt_text(st, 3, &mut s);
                        }
                    }
                }
                s.push_str("    body:\n");
                for st in &ph.body {
                    self.stmt_text(st, 3, &mut s);
                }
                s.push_str("  }\n");
            } else {
                for st in &ph.body {
                    self.stmt_text(st, 1, &mut s);
                }
            }
            writeln!(f, "{s}}}")?;
        }
        for pl in &self.plasticity {
            let sched = match pl.schedule {
                Schedule::EveryStep => String::new(),
                Schedule::After(i) => format!(" after {}", self.phases[i].name),
                Schedule::Every(n) => format!(" every {n} steps"),
            };
            writeln!(f, "plasticity{sched}{} {{", if pl.sum { " sum" } else { "" })?;
            let mut s = String::new();
            for b in &pl.body {
                for st in &b.stmts {
                    self.stmt_text(st, 1, &mut s);
                }
            }
            writeln!(f, "{s}}}")?;
        }
        for m in &self.monitors {
            writeln!(f, "monitor {} = {}", m.name, self.expr_text(&m.expr))?;
        }
        let x = &self.experiment;
        writeln!(
            f,
            "experiment {{ data = {}, epochs = {}, batch = {}, seed = {}, shuffle = {}, loss = {:?}, readout = {} }}",
            x.data.as_ref().map(|d| d.0.as_str()).unwrap_or("none"),
            x.epochs,
            x.batch,
            x.seed,
            x.shuffle,
            x.loss,
            x.readout.map(|(p, v, _)| self.pops[p].var_name(v)).unwrap_or_else(|| "default".into())
        )
    }
}
