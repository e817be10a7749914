//! The abstract syntax tree: what the text says, before any name is resolved.
//!
//! Input: built by `syntax.rs` from the pest parse tree of `grammar/circ.pest`.
//! Output: consumed by `resolve.rs` (elaboration into HIR) and `format.rs` (canonical layout).
//! Invariants: every node carries the byte span of its text; nothing here is checked beyond
//! the grammar (names, shapes and locality come later).

use crate::diag::Span;

/// A name as written, with its span.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// One parsed file.
#[derive(Clone, Debug, Default)]
pub struct Program {
    pub circuit: Option<CircuitDecl>,
    pub items: Vec<Item>,
}

/// `circuit fa locality population + projection`
#[derive(Clone, Debug)]
pub struct CircuitDecl {
    pub name: Ident,
    pub tiers: Vec<Ident>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum Item {
    Import {
        path: String,
        span: Span,
    },
    Param {
        name: Ident,
        ty: Option<Ident>,
        value: Expr,
        span: Span,
    },
    Meta {
        name: Ident,
        value: Expr,
        span: Span,
    },
    Signal {
        name: Ident,
        state: bool,
        init: Option<Expr>,
        span: Span,
    },
    Input {
        head: EntityHead,
        span: Span,
    },
    Target {
        head: EntityHead,
        root: EntityRef,
        span: Span,
    },
    Pop {
        head: EntityHead,
        vars: Vec<VarDecl>,
        span: Span,
    },
    Path(PathDecl),
    Phase(PhaseDecl),
    Plasticity(PlasticityDecl),
    Rule(RuleDecl),
    Fn(FnDecl),
    Monitor {
        name: Ident,
        expr: Expr,
        span: Span,
    },
    Experiment {
        entries: Vec<(Ident, Expr)>,
        span: Span,
    },
    For {
        var: Ident,
        reverse: bool,
        lo: Expr,
        hi: Expr,
        items: Vec<Item>,
        span: Span,
    },
    If {
        cond: Expr,
        then: Vec<Item>,
        els: Vec<Item>,
        span: Span,
    },
    /// `precision f64`.
    Precision {
        value: Ident,
        span: Span,
    },
}

impl Item {
    pub fn span(&self) -> Span {
        match self {
            Item::Import { span, .. }
            | Item::Param { span, .. }
            | Item::Meta { span, .. }
            | Item::Signal { span, .. }
            | Item::Input { span, .. }
            | Item::Target { span, .. }
            | Item::Pop { span, .. }
            | Item::Monitor { span, .. }
            | Item::Experiment { span, .. }
            | Item::For { span, .. }
            | Item::If { span, .. }
            | Item::Precision { span, .. } => *span,
            Item::Path(p) => p.span,
            Item::Phase(p) => p.span,
            Item::Plasticity(p) => p.span,
            Item::Rule(r) => r.span,
            Item::Fn(f) => f.span,
        }
    }
}

/// `h[256]` (a population of 256) or `h[l][256]` (member `l` of family `h`).
#[derive(Clone, Debug)]
pub struct EntityHead {
    pub name: Ident,
    pub index: Option<Expr>,
    pub size: Expr,
}

/// A use of a population, pathway or other entity: `h`, `h[l-1]`.
#[derive(Clone, Debug)]
pub struct EntityRef {
    pub name: Ident,
    pub index: Option<Box<Expr>>,
    pub span: Span,
}

/// One per-neuron variable: `a`, `state v = -70`, `out r`.
#[derive(Clone, Debug)]
pub struct VarDecl {
    pub name: Ident,
    pub state: bool,
    pub out: bool,
    pub init: Option<Expr>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct PathDecl {
    pub name: Ident,
    pub index: Option<Expr>,
    pub pre: EntityRef,
    pub post: EntityRef,
    pub attrs: Vec<PathAttr>,
    pub syn: Vec<SynDecl>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum PathAttr {
    Init(Expr),
    Plastic(Span),
    Fixed(Span),
    Mask(Expr),
    Weight(Expr),
    Resample(Span),
}

/// A per-synapse state variable with its init law: `v = 0`, `m = bernoulli(0.5)`.
#[derive(Clone, Debug)]
pub struct SynDecl {
    pub name: Ident,
    pub init: Option<Expr>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct PhaseDecl {
    pub name: Ident,
    pub repeat: Option<Expr>,
    pub body: Vec<Stmt>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum Schedule {
    EveryStep,
    After(Ident),
    Every(Expr),
}

#[derive(Clone, Debug)]
pub struct PlasticityDecl {
    pub schedule: Schedule,
    /// `sum` or `mean` (the default): how per-sample updates combine over a batch.
    pub mode: Option<Ident>,
    pub body: Vec<Stmt>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct RuleDecl {
    pub name: Ident,
    pub params: Vec<Ident>,
    pub state: Vec<SynDecl>,
    pub body: Vec<Stmt>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct FnDecl {
    pub name: Ident,
    pub params: Vec<Ident>,
    pub body: Expr,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AssignOp {
    Set,
    Add,
    Sub,
    Mul,
}

impl AssignOp {
    pub fn text(self) -> &'static str {
        match self {
            AssignOp::Set => "=",
            AssignOp::Add => "+=",
            AssignOp::Sub => "-=",
            AssignOp::Mul => "*=",
        }
    }
}

/// The left side of an assignment: `h.a`, `h[l].e`, `W.w`, `M`, or a bare `w` in a rule.
#[derive(Clone, Debug)]
pub struct LValue {
    pub entity: EntityRef,
    pub field: Option<Ident>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct Stmt {
    pub kind: StmtKind,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum StmtKind {
    Assign { target: LValue, op: AssignOp, value: Expr },
    Ode { target: LValue, value: Expr },
    When { cond: Expr, then: Vec<Stmt>, els: Vec<Stmt> },
    For { var: Ident, reverse: bool, lo: Expr, hi: Expr, body: Vec<Stmt> },
    If { cond: Expr, then: Vec<Stmt>, els: Vec<Stmt> },
    Apply { rule: Ident, args: Vec<Expr>, to: EntityRef },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Pow,
}

impl BinOp {
    pub fn text(self) -> &'static str {
        match self {
            BinOp::Or => "||",
            BinOp::And => "&&",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
            BinOp::Pow => "^",
        }
    }
    /// Binding strength; higher binds tighter. Shared by the parser and the formatter.
    pub fn precedence(self) -> u8 {
        match self {
            BinOp::Or => 1,
            BinOp::And => 2,
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => 3,
            BinOp::Add | BinOp::Sub => 4,
            BinOp::Mul | BinOp::Div | BinOp::Rem => 5,
            BinOp::Pow => 7,
        }
    }
}

/// Precedence of prefix `-` and `!`: between products and powers, so `-x^2 = -(x^2)`.
pub const UNARY_PRECEDENCE: u8 = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnOp {
    Neg,
    Not,
}

#[derive(Clone, Debug)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum ExprKind {
    /// A numeric literal; `text` keeps the spelling for the formatter, `int` whether it has
    /// neither a point nor an exponent.
    Number {
        value: f64,
        text: String,
        int: bool,
    },
    Bool(bool),
    Str(String),
    /// `lr`, `h.a`, `h[l].a`, `pre.r`, `post`.
    Ref {
        entity: EntityRef,
        field: Option<Ident>,
    },
    /// `relu(x)`, `W(x)`, `W[l]^T(e)`.
    Call {
        callee: Ident,
        index: Option<Box<Expr>>,
        transpose: bool,
        args: Vec<Expr>,
    },
    Unary {
        op: UnOp,
        expr: Box<Expr>,
    },
    Binary {
        op: BinOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
}
