//! The loop IR: kernels as loop nests over index spaces, plus library products.
//!
//! Input: built by `lower.rs` from a checked HIR circuit. Output: executed by `interp.rs`
//! (reference, ndarray) and compiled by `codegen.rs` (Cranelift); printed by `circ ir
//! --stage lir`.
//! Invariants: every buffer access is in bounds by construction: a `Map` over `rows × cols`
//! only loads buffers whose shape matches its access mode (checked by [`Program::validate`];
//! the JIT's bounds-check mode checks every access again at run time);
//! kernels allocate nothing; an entry is a straight sequence of kernels (with `Loop` and
//! `Every` as the only control flow), so both back ends walk it the same way.

use crate::ast::{BinOp, UnOp};
use crate::hir::{Func, RandKind};
use circ_runtime::state::{BufSpec, Precision, Rows};
pub use circ_runtime::stats::Stat;
use std::fmt::{self, Write};

pub type BufId = usize;

/// How a kernel reads a buffer at its loop indices.
///
/// A `Map` loops over `(b, i)`: batch row × neuron. A `SynMap` loops over `(i, j)`: post ×
/// pre neuron of a pathway, optionally inside a loop over batch rows `bb`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// Map: `buf[b, i]`. SynMap: `buf[i, j]`.
    Elem,
    /// SynMap: `buf[j, i]` (transposed synapse state).
    Trans,
    /// Map: `buf[b, 0]`. SynMap: `buf[bb, 0]`. A per-sample scalar.
    Sample,
    /// `buf[0]`.
    Scalar,
    /// Map: `buf[0, i]`, an unbatched per-neuron vector.
    Unit,
    /// SynMap: `buf[bb, i]`, per post neuron.
    Post,
    /// SynMap: `buf[bb, j]`, per pre neuron.
    Pre,
    /// Map: `buf[h, b, i]` of a history buffer (`Rows::History`), `h` the index of the
    /// innermost enclosing `Loop` iteration or `Segments` segment (see [`Kernel::Segments`]).
    Hist,
}

/// An elementwise expression evaluated at every point of a kernel's loop nest.
#[derive(Clone, Debug, PartialEq)]
pub enum KExpr {
    Const(f64),
    Load(BufId, Access),
    Unary(UnOp, Box<KExpr>),
    Binary(BinOp, Box<KExpr>, Box<KExpr>),
    Call(Func, Vec<KExpr>),
    /// A random draw per element; the stream id makes draws of different sites independent.
    Rand(RandKind, u32),
    /// `1 / nb`, the reciprocal of the current batch size (for batch means).
    InvBatch,
    /// The iteration of the innermost `Loop` times `dt` (the source's `t`).
    Time(f64),
    /// Training steps so far, this one included (`step + 1`).
    StepCount,
}

impl KExpr {
    pub fn bin(op: BinOp, a: KExpr, b: KExpr) -> KExpr {
        KExpr::Binary(op, Box::new(a), Box::new(b))
    }
    /// Visits every node, parents first.
    pub fn walk(&self, f: &mut dyn FnMut(&KExpr)) {
        f(self);
        match self {
            KExpr::Unary(_, a) => a.walk(f),
            KExpr::Binary(_, a, b) => {
                a.walk(f);
                b.walk(f);
            }
            KExpr::Call(_, args) => args.iter().for_each(|a| a.walk(f)),
            _ => {}
        }
    }
}

/// One output of a fused loop: `out[at] = value` where `guard` is nonzero (everywhere when
/// absent). Later statements of the same kernel see earlier outputs at the same point.
#[derive(Clone, Debug, PartialEq)]
pub struct Store {
    pub out: BufId,
    pub value: KExpr,
    pub guard: Option<KExpr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedOp {
    Sum,
    Max,
    Min,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Kernel {
    /// Fused elementwise loop over `(b < nb or 1) × (i < cols)`.
    Map { batched: bool, cols: usize, stores: Vec<Store> },
    /// `out[b, 0] = op_i value[b, i]`: a reduction over a population, per sample.
    Reduce { out: BufId, op: RedOp, batched: bool, cols: usize, value: KExpr },
    /// Fused pass over the synapses of a pathway: `(i < rows) × (j < cols)`; with
    /// `over_batch`, the whole nest repeats for every batch row `bb`.
    SynMap { rows: usize, cols: usize, over_batch: bool, stores: Vec<Store> },
    /// Per-row (`row == true`, output `[1, rows]`) or per-column (output `[1, cols]`)
    /// reduction of a synapse-space expression, over batch row 0.
    SynReduce { out: BufId, row: bool, op: RedOp, rows: usize, cols: usize, value: KExpr },
    /// Transmission: `out[b, :] (+)= x[b, :] · Wᵀ` (`W: [n_out, n_in]`), or backwards.
    MatMul { out: BufId, x: BufId, w: BufId, n_out: usize, n_in: usize, transpose: bool, accumulate: bool },
    /// `out[i, j] (+)= s · Σ_r p[r, i] q[r, j]` over `r < repeat · nb` rows (a batch, or a
    /// whole history of `repeat` iterations; inside `Segments`, `min(repeat, segment's
    /// iterations) · nb`), with `s = 1/nb` (`mean`) or 1.
    Outer { out: BufId, p: BufId, q: BufId, rows: usize, cols: usize, mean: bool, repeat: usize, accumulate: bool },
    /// `out[0, i] (+)= s · Σ_r src[r, i]` over the rows `Outer` takes, `s = 1/nb` (`mean`) or 1.
    BatchSum { out: BufId, src: BufId, cols: usize, mean: bool, repeat: usize, accumulate: bool },
    /// Copy a whole buffer (snapshots for two-phase commits).
    Copy { dst: BufId, src: BufId, len: usize },
    /// Repeat `body` `count` times, with the step context's `iter` set to the iteration
    /// (counting down from `count - 1` when `reverse`, for backpropagation through time).
    /// Inside `Segments` it runs the segment's iterations `j < min(count, n)`, with `iter`
    /// the loop-wide iteration `base + j`; a history is indexed by `j` either way.
    Loop { count: usize, reverse: bool, body: Vec<Kernel> },
    /// A time loop of `total` iterations cut into segments of `len` (the last one has the
    /// rest), for checkpointed backpropagation through time: for each segment `s` (last first
    /// when `reverse`) `body` runs once with `base = s · len` and `n = min(len, total − base)`
    /// iterations; a history accessed directly in `body` is indexed by `s`. Not nested.
    Segments { total: usize, len: usize, reverse: bool, body: Vec<Kernel> },
    /// Run `body` only on steps `s` with `(s + 1) % every == 0`.
    Every { every: u64, body: Vec<Kernel> },
}

#[derive(Clone, Debug)]
pub struct Monitor {
    pub name: String,
    pub stat: Stat,
}

/// A sequence of kernels run as one unit.
#[derive(Clone, Debug, Default)]
pub struct Entry {
    pub kernels: Vec<Kernel>,
}

/// Where a checked statement's NaN/Inf check points (for `--check-finite`).
#[derive(Clone, Debug)]
pub struct Origin {
    pub buf: BufId,
    pub what: String,
    pub span: crate::diag::Span,
}

/// A lowered circuit.
#[derive(Clone, Debug)]
pub struct Program {
    pub name: String,
    pub precision: Precision,
    pub buffers: Vec<BufSpec>,
    /// Recomputes derived buffers (effective weights) from state; run after init and resume.
    pub init: Entry,
    /// One training step: phases, then plasticity.
    pub train: Entry,
    /// Inference only: the phases needed for the readout, no plasticity.
    pub eval: Entry,
    /// Fills the monitor buffers (after a training step).
    pub monitor: Entry,
    pub monitors: Vec<Monitor>,
    /// The input and target buffers the driver fills, and the readout it reads.
    pub input: Option<BufId>,
    pub target: Option<BufId>,
    pub readout: Option<BufId>,
    /// Buffers written by phase statements, with the statement that wrote them.
    pub origins: Vec<Origin>,
    /// Number of random streams used (for stable stream ids).
    pub rand_streams: u32,
    /// The buffers a meta-learning episode starts afresh (re-drawn from their laws): all
    /// persistent state except meta-params and fixed pathways not marked `resample`.
    pub episode_reset: Vec<BufId>,
}

impl Program {
    pub fn cols(&self, b: BufId) -> usize {
        self.buffers[b].cols
    }
    pub fn batched(&self, b: BufId) -> bool {
        self.buffers[b].rows == Rows::Batch
    }

    /// Checks every access against buffer shapes: the bounds-safety invariant the JIT relies
    /// on. Returns a description of the first violation.
    pub fn validate(&self) -> Result<(), String> {
        for (name, e) in [("init", &self.init), ("train", &self.train), ("eval", &self.eval), ("monitor", &self.monitor)] {
            self.validate_kernels(&e.kernels, Nest::Top).map_err(|m| format!("{name}: {m}"))?;
        }
        Ok(())
    }

    fn validate_kernels(&self, ks: &[Kernel], nest: Nest) -> Result<(), String> {
        for k in ks {
            self.validate_kernel(k, nest)?;
        }
        Ok(())
    }

    fn rows_of(&self, b: BufId) -> Option<usize> {
        match self.buffers[b].rows {
            Rows::Batch | Rows::History(_) => None,
            Rows::Fixed(r) => Some(r),
        }
    }

    /// Whether a buffer holds `repeat · nb` rows (a batch when `repeat` is 1).
    fn spans(&self, b: BufId, repeat: usize) -> bool {
        match self.buffers[b].rows {
            Rows::Batch => repeat == 1,
            Rows::History(t) => t == repeat,
            Rows::Fixed(_) => false,
        }
    }

    fn check_access(
        &self,
        b: BufId,
        a: Access,
        map: Option<(bool, usize)>,
        syn: Option<(usize, usize, bool)>,
        nest: Nest,
    ) -> Result<(), String> {
        let spec = &self.buffers[b];
        let name = &spec.name;
        let bad = |why: &str| Err(format!("buffer `{name}` accessed as {a:?}: {why}"));
        if let Rows::History(t) = spec.rows {
            // Only a history index below `t` reaches the buffer: inside a loop of at most
            // `t` iterations (or directly in segments, at most `t` of them).
            if a != Access::Hist {
                return bad("a history read without its iteration");
            }
            match nest.hist_bound() {
                Some(n) if n <= t => {}
                Some(n) => return bad(&format!("{t} iterations recorded, indexed up to {n}")),
                None => return bad("outside a loop"),
            }
        }
        match (map, syn, a) {
            (_, _, Access::Scalar) => Ok(()),
            (Some((batched, cols)), _, Access::Elem) => {
                if spec.cols != cols {
                    return bad("column count differs from the loop");
                }
                if batched && spec.rows != Rows::Batch {
                    return bad("batched loop over an unbatched buffer");
                }
                if !batched && self.rows_of(b).is_some_and(|r| r < 1) {
                    return bad("no rows");
                }
                Ok(())
            }
            (Some((batched, _)), _, Access::Sample) => {
                if spec.cols != 1 || (batched && spec.rows != Rows::Batch) {
                    return bad("not a per-sample scalar");
                }
                Ok(())
            }
            (Some((batched, cols)), _, Access::Hist) => {
                if spec.cols != cols || !batched || !matches!(spec.rows, Rows::History(_)) {
                    return bad("not a history of this loop's shape");
                }
                Ok(())
            }
            (Some((_, cols)), _, Access::Unit) => {
                if spec.cols != cols {
                    return bad("vector length differs from the loop");
                }
                Ok(())
            }
            (_, Some((rows, cols, _)), Access::Elem) => {
                if spec.cols != cols || self.rows_of(b) != Some(rows) {
                    return bad("shape differs from the synapse loop");
                }
                Ok(())
            }
            (_, Some((rows, cols, _)), Access::Trans) => {
                if spec.cols != rows || self.rows_of(b) != Some(cols) {
                    return bad("transposed shape differs from the synapse loop");
                }
                Ok(())
            }
            (_, Some((rows, _, ob)), Access::Post) => {
                if spec.cols != rows || (ob && spec.rows != Rows::Batch) {
                    return bad("not a post vector");
                }
                Ok(())
            }
            (_, Some((_, cols, ob)), Access::Pre) => {
                if spec.cols != cols || (ob && spec.rows != Rows::Batch) {
                    return bad("not a pre vector");
                }
                Ok(())
            }
            (_, Some((_, _, ob)), Access::Sample) => {
                if spec.cols != 1 || (ob && spec.rows != Rows::Batch) {
                    return bad("not a per-sample scalar");
                }
                Ok(())
            }
            _ => bad("access mode not valid in this kernel"),
        }
    }

    fn check_expr(&self, e: &KExpr, map: Option<(bool, usize)>, syn: Option<(usize, usize, bool)>, nest: Nest) -> Result<(), String> {
        let mut r = Ok(());
        e.walk(&mut |x| {
            if let (Ok(()), KExpr::Load(b, a)) = (&r, x) {
                if *b >= self.buffers.len() {
                    r = Err(format!("buffer {b} does not exist"));
                } else {
                    r = self.check_access(*b, *a, map, syn, nest);
                }
            }
        });
        r
    }

    fn validate_kernel(&self, k: &Kernel, nest: Nest) -> Result<(), String> {
        match k {
            Kernel::Map { batched, cols, stores } => {
                for s in stores {
                    // A history records at the current iteration.
                    let at = if matches!(self.buffers[s.out].rows, Rows::History(_)) { Access::Hist } else { Access::Elem };
                    self.check_access(s.out, at, Some((*batched, *cols)), None, nest)?;
                    self.check_expr(&s.value, Some((*batched, *cols)), None, nest)?;
                    if let Some(g) = &s.guard {
                        self.check_expr(g, Some((*batched, *cols)), None, nest)?;
                    }
                }
                Ok(())
            }
            Kernel::Reduce { out, batched, cols, value, .. } => {
                self.check_access(*out, Access::Sample, Some((*batched, *cols)), None, nest)?;
                self.check_expr(value, Some((*batched, *cols)), None, nest)
            }
            Kernel::SynMap { rows, cols, over_batch, stores } => {
                for s in stores {
                    self.check_access(s.out, Access::Elem, None, Some((*rows, *cols, *over_batch)), nest)?;
                    self.check_expr(&s.value, None, Some((*rows, *cols, *over_batch)), nest)?;
                    if let Some(g) = &s.guard {
                        self.check_expr(g, None, Some((*rows, *cols, *over_batch)), nest)?;
                    }
                }
                Ok(())
            }
            Kernel::SynReduce { out, row, rows, cols, value, .. } => {
                let n = if *row { *rows } else { *cols };
                if self.buffers[*out].cols != n {
                    return Err(format!("SynReduce output `{}` has the wrong length", self.buffers[*out].name));
                }
                self.check_expr(value, None, Some((*rows, *cols, false)), nest)
            }
            Kernel::MatMul { out, x, w, n_out, n_in, transpose, .. } => {
                let (nx, ny) = if *transpose { (*n_out, *n_in) } else { (*n_in, *n_out) };
                if self.cols(*x) != nx || self.cols(*out) != ny || self.cols(*w) != *n_in || self.rows_of(*w) != Some(*n_out) {
                    return Err(format!(
                        "MatMul shapes do not match ({} · {} → {})",
                        self.buffers[*x].name, self.buffers[*w].name, self.buffers[*out].name
                    ));
                }
                if !self.batched(*x) || !self.batched(*out) {
                    return Err("MatMul operands must be batch-shaped".into());
                }
                if out == x || out == w {
                    // The product kernels write `out` while they read their operands.
                    return Err(format!("MatMul writes its operand `{}`", self.buffers[*out].name));
                }
                Ok(())
            }
            Kernel::Outer { out, p, q, rows, cols, repeat, .. } => {
                if self.cols(*p) != *rows
                    || self.cols(*q) != *cols
                    || self.cols(*out) != *cols
                    || self.rows_of(*out) != Some(*rows)
                    || !self.spans(*p, *repeat)
                    || !self.spans(*q, *repeat)
                {
                    return Err("Outer shapes do not match".into());
                }
                Ok(())
            }
            Kernel::BatchSum { out, src, cols, repeat, .. } => {
                if self.cols(*out) != *cols || self.cols(*src) != *cols || !self.spans(*src, *repeat) {
                    return Err("BatchSum shapes do not match".into());
                }
                Ok(())
            }
            Kernel::Copy { dst, src, len } => {
                let cap = |b: BufId| self.rows_of(b).map(|r| r * self.cols(b));
                if cap(*dst).is_none_or(|c| c < *len) || cap(*src).is_none_or(|c| c < *len) {
                    return Err("Copy out of bounds".into());
                }
                Ok(())
            }
            Kernel::Loop { count, body, .. } => self.validate_kernels(body, Nest::Loop(*count)),
            Kernel::Segments { total, len, body, .. } => {
                if !matches!(nest, Nest::Top) || *len == 0 {
                    return Err("Segments nested in a loop, or empty".into());
                }
                self.validate_kernels(body, Nest::Segments(total.div_ceil(*len)))
            }
            Kernel::Every { body, .. } => self.validate_kernels(body, nest),
        }
    }
}

/// Where a kernel sits in the loop nest, for the bounds of history indices.
#[derive(Clone, Copy)]
enum Nest {
    Top,
    /// Inside a `Loop` of this many iterations (at most; fewer inside segments).
    Loop(usize),
    /// Directly in the body of `Segments` with this many segments.
    Segments(usize),
}

impl Nest {
    /// How many history indices can occur here (`None`: no history index).
    fn hist_bound(self) -> Option<usize> {
        match self {
            Nest::Top => None,
            Nest::Loop(n) | Nest::Segments(n) => Some(n),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Stable text form (`circ ir --stage lir`)

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "program {} ({:?})", self.name, self.precision)?;
        writeln!(f, "buffers:")?;
        for (i, b) in self.buffers.iter().enumerate() {
            let rows = match b.rows {
                Rows::Batch => "nb".to_string(),
                Rows::Fixed(r) => r.to_string(),
                Rows::History(t) => format!("{t}*nb"),
            };
            writeln!(f, "  %{i} {} [{rows} x {}] {:?} init {:?}", b.name, b.cols, b.kind, b.init)?;
        }
        for (name, e) in [("init", &self.init), ("train", &self.train), ("eval", &self.eval), ("monitor", &self.monitor)] {
            writeln!(f, "entry {name}:")?;
            for k in &e.kernels {
                write_kernel(f, self, k, 1)?;
            }
        }
        for m in &self.monitors {
            writeln!(f, "monitor {} = {:?}", m.name, m.stat)?;
        }
        Ok(())
    }
}

fn buf(p: &Program, b: BufId) -> String {
    format!("%{b}:{}", p.buffers[b].name)
}

pub fn expr_text(p: &Program, e: &KExpr) -> String {
    let mut s = String::new();
    write_expr(&mut s, p, e);
    s
}

fn write_expr(s: &mut String, p: &Program, e: &KExpr) {
    match e {
        KExpr::Const(c) => {
            let _ = write!(s, "{c}");
        }
        KExpr::Load(b, a) => {
            let idx = match a {
                Access::Elem => "",
                Access::Trans => "ᵀ",
                Access::Sample => "[b]",
                Access::Scalar => "[0]",
                Access::Unit => "[i]",
                Access::Post => "[i]",
                Access::Pre => "[j]",
                Access::Hist => "[iter]",
            };
            let _ = write!(s, "{}{idx}", buf(p, *b));
        }
        KExpr::Unary(op, a) => {
            s.push_str(if *op == UnOp::Neg { "-(" } else { "!(" });
            write_expr(s, p, a);
            s.push(')');
        }
        KExpr::Binary(op, a, b) => {
            s.push('(');
            write_expr(s, p, a);
            let _ = write!(s, " {} ", op.text());
            write_expr(s, p, b);
            s.push(')');
        }
        KExpr::Call(f, args) => {
            let _ = write!(s, "{}(", f.name());
            for (i, a) in args.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                write_expr(s, p, a);
            }
            s.push(')');
        }
        KExpr::Rand(k, id) => {
            let _ = write!(s, "{}#{id}", if *k == RandKind::Uniform { "rand" } else { "randn" });
        }
        KExpr::InvBatch => s.push_str("(1/nb)"),
        KExpr::StepCount => s.push_str("step_count"),
        KExpr::Time(dt) => {
            let _ = write!(s, "(iter*{dt})");
        }
    }
}

/// One line naming a kernel (for diagnostics): its first line in the text form, plus the
/// outputs of a fused loop.
pub fn kernel_summary(p: &Program, k: &Kernel) -> String {
    struct Text<'a>(&'a Program, &'a Kernel);
    impl fmt::Display for Text<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write_kernel(f, self.0, self.1, 0)
        }
    }
    let text = Text(p, k).to_string();
    let head = text.lines().next().unwrap_or("").trim().trim_end_matches(':');
    match k {
        Kernel::Map { stores, .. } | Kernel::SynMap { stores, .. } => {
            let outs: Vec<String> = stores.iter().map(|s| buf(p, s.out)).collect();
            format!("{head} -> {}", outs.join(", "))
        }
        _ => head.to_string(),
    }
}

fn write_kernel(f: &mut fmt::Formatter<'_>, p: &Program, k: &Kernel, depth: usize) -> fmt::Result {
    let pad = "  ".repeat(depth);
    let stores = |f: &mut fmt::Formatter<'_>, stores: &[Store]| -> fmt::Result {
        for s in stores {
            match &s.guard {
                Some(g) => writeln!(f, "{pad}    {} = {}  when {}", buf(p, s.out), expr_text(p, &s.value), expr_text(p, g))?,
                None => writeln!(f, "{pad}    {} = {}", buf(p, s.out), expr_text(p, &s.value))?,
            }
        }
        Ok(())
    };
    match k {
        Kernel::Map { batched, cols, stores: st } => {
            writeln!(f, "{pad}map [{} x {cols}]", if *batched { "nb" } else { "1" })?;
            stores(f, st)
        }
        Kernel::Reduce { out, op, batched, cols, value } => {
            writeln!(f, "{pad}reduce {op:?} [{} x {cols}] -> {}: {}", if *batched { "nb" } else { "1" }, buf(p, *out), expr_text(p, value))
        }
        Kernel::SynMap { rows, cols, over_batch, stores: st } => {
            writeln!(f, "{pad}synmap [{rows} x {cols}]{}", if *over_batch { " for each bb < nb" } else { "" })?;
            stores(f, st)
        }
        Kernel::SynReduce { out, row, op, rows, cols, value } => {
            writeln!(
                f,
                "{pad}synreduce {op:?} {} [{rows} x {cols}] -> {}: {}",
                if *row { "rows" } else { "cols" },
                buf(p, *out),
                expr_text(p, value)
            )
        }
        Kernel::MatMul { out, x, w, transpose, accumulate, .. } => {
            writeln!(
                f,
                "{pad}matmul {} {}= {} · {}{}",
                buf(p, *out),
                if *accumulate { "+" } else { "" },
                buf(p, *x),
                buf(p, *w),
                if *transpose { "" } else { "ᵀ" }
            )
        }
        Kernel::Outer { out, p: a, q, mean, repeat, accumulate, .. } => {
            let over = if *repeat > 1 { "Σ(iter,b)" } else { "Σb" };
            let (acc, s) = (if *accumulate { "+" } else { "" }, if *mean { "1/nb" } else { "1" });
            writeln!(f, "{pad}outer {} {acc}= {s} {over} {} ⊗ {}", buf(p, *out), buf(p, *a), buf(p, *q))
        }
        Kernel::BatchSum { out, src, mean, repeat, accumulate, .. } => {
            let over = if *repeat > 1 { "Σ(iter,b)" } else { "Σb" };
            let (acc, s) = (if *accumulate { "+" } else { "" }, if *mean { "1/nb" } else { "1" });
            writeln!(f, "{pad}batchsum {} {acc}= {s} {over} {}", buf(p, *out), buf(p, *src))
        }
        Kernel::Copy { dst, src, .. } => writeln!(f, "{pad}copy {} <- {}", buf(p, *dst), buf(p, *src)),
        Kernel::Loop { count, reverse, body } => {
            writeln!(f, "{pad}loop {count}{}:", if *reverse { " reversed" } else { "" })?;
            for k in body {
                write_kernel(f, p, k, depth + 1)?;
            }
            Ok(())
        }
        Kernel::Segments { total, len, reverse, body } => {
            writeln!(f, "{pad}segments of {len} over {total}{}:", if *reverse { " reversed" } else { "" })?;
            for k in body {
                write_kernel(f, p, k, depth + 1)?;
            }
            Ok(())
        }
        Kernel::Every { every, body } => {
            writeln!(f, "{pad}every {every} steps:")?;
            for k in body {
                write_kernel(f, p, k, depth + 1)?;
            }
            Ok(())
        }
    }
}
