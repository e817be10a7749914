//! The reference interpreter: runs LIR entries with ndarray.
//!
//! Input: a [`lir::Program`] and a [`State`]. Output: the state after running an entry.
//! Invariants: it is the oracle the JIT is tested against, so it is written for obviousness,
//! not speed: every kernel evaluates whole arrays with ndarray broadcasting and `dot`, and
//! shares nothing with the JIT except the scalar semantics of `circ_runtime::math` (the
//! definitions of exp, tanh, ... and of the random streams). Element-wise semantics that the
//! JIT must match exactly are spelled out in [`apply_func`] and [`binop`].

use crate::ast::{BinOp, UnOp};
use crate::hir::{Func, RandKind};
use crate::lir::{Access, Entry, KExpr, Kernel, Program, RedOp, Store};
use circ_runtime::abi::StepCtx;
use circ_runtime::driver::{Engine, EntryKind};
use circ_runtime::math;
use circ_runtime::state::{Data, State};
use ndarray::{linalg::general_mat_mul, Array2, ArrayView2, Axis as NdAxis, LinalgScalar};

/// Element types the interpreter computes in.
pub trait Elem: LinalgScalar + num_traits::Float + std::fmt::Debug + Send + Sync + 'static {
    fn of(x: f64) -> Self;
    fn f64(self) -> f64;
    /// A unary transcendental exactly as compiled code computes it.
    fn via(f: fn(f64) -> f64, x: Self) -> Self;
}

impl Elem for f32 {
    fn of(x: f64) -> Self {
        x as f32
    }
    fn f64(self) -> f64 {
        self as f64
    }
    fn via(f: fn(f64) -> f64, x: Self) -> Self {
        math::unary_f32(f, x)
    }
}

impl Elem for f64 {
    fn of(x: f64) -> Self {
        x
    }
    fn f64(self) -> f64 {
        self
    }
    fn via(f: fn(f64) -> f64, x: Self) -> Self {
        f(x)
    }
}

/// The interpreter as an [`Engine`].
pub struct Interp {
    pub program: Program,
}

impl Interp {
    pub fn new(program: Program) -> Interp {
        Interp { program }
    }
}

impl Engine for Interp {
    fn run(&mut self, entry: EntryKind, state: &mut State, nb: usize, ctx: &StepCtx) {
        let e = match entry {
            EntryKind::Init => &self.program.init,
            EntryKind::Train => &self.program.train,
            EntryKind::Eval => &self.program.eval,
            EntryKind::Monitor => &self.program.monitor,
        };
        let mut ctx = Ctx { step: *ctx, hist: 0, segment: None };
        match &mut state.data {
            Data::F32(bufs) => run_entry(&self.program, e, bufs, nb, &mut ctx),
            Data::F64(bufs) => run_entry(&self.program, e, bufs, nb, &mut ctx),
        }
    }
}

/// The step context plus where the kernel being run sits in its loop nest.
#[derive(Clone, Copy)]
struct Ctx {
    /// `step.iter` is the loop-wide iteration (for `t` and random streams).
    step: StepCtx,
    /// The history index: the innermost loop's iteration, or the segment.
    hist: usize,
    /// Inside `Segments`: the segment's first iteration and its number of iterations.
    segment: Option<(usize, usize)>,
}

impl Ctx {
    /// The iterations a product over a history of `repeat` iterations spans here.
    fn iterations(&self, repeat: usize) -> usize {
        self.segment.map_or(repeat, |(_, n)| n.min(repeat))
    }
}

/// Writes (or adds) a product's result. A sum of products starts from +0 in the JIT's kernels,
/// so an all-zero sum is +0 there; ndarray can return −0 (a single term `0 · w` with `w < 0`),
/// and `1 / W(x)` would then be −∞ here and +∞ there. `s + 0` is `s` except that −0 becomes +0.
fn add_or_copy<T: Elem>(dst: &mut [T], src: &[T], accumulate: bool) {
    for (d, s) in dst.iter_mut().zip(src) {
        let s = *s + T::zero();
        *d = if accumulate { *d + s } else { s };
    }
}

fn run_entry<T: Elem>(p: &Program, e: &Entry, bufs: &mut [Vec<T>], nb: usize, ctx: &mut Ctx) {
    for k in &e.kernels {
        kernel(p, k, bufs, nb, ctx);
    }
}

/// Loop shape of the kernel being evaluated.
#[derive(Clone, Copy)]
enum Shape {
    /// `Map`/`Reduce`: rows × cols over (b, i).
    Map { rows: usize, cols: usize },
    /// `SynMap`: rows(post) × cols(pre) for batch row `bb`.
    Syn { rows: usize, cols: usize, bb: usize },
}

impl Shape {
    fn dims(self) -> (usize, usize) {
        match self {
            Shape::Map { rows, cols } | Shape::Syn { rows, cols, .. } => (rows, cols),
        }
    }
}

fn kernel<T: Elem>(p: &Program, k: &Kernel, bufs: &mut [Vec<T>], nb: usize, ctx: &mut Ctx) {
    match k {
        Kernel::Map { batched, cols, stores } => {
            let shape = Shape::Map { rows: if *batched { nb } else { 1 }, cols: *cols };
            run_stores(p, stores, shape, bufs, nb, ctx);
        }
        Kernel::SynMap { rows, cols, over_batch, stores } => {
            let n = if *over_batch { nb } else { 1 };
            for bb in 0..n {
                run_stores(p, stores, Shape::Syn { rows: *rows, cols: *cols, bb }, bufs, nb, ctx);
            }
        }
        Kernel::Reduce { out, op, batched, cols, value } => {
            let rows = if *batched { nb } else { 1 };
            let v = eval(p, value, Shape::Map { rows, cols: *cols }, bufs, nb, ctx);
            let r = reduce(&v, *op, NdAxis(1));
            bufs[*out][..rows].copy_from_slice(r.as_slice().expect("contiguous"));
        }
        Kernel::SynReduce { out, row, op, rows, cols, value } => {
            let v = eval(p, value, Shape::Syn { rows: *rows, cols: *cols, bb: 0 }, bufs, nb, ctx);
            let r = reduce(&v, *op, NdAxis(if *row { 1 } else { 0 }));
            let n = r.len();
            bufs[*out][..n].copy_from_slice(r.as_slice().expect("contiguous"));
        }
        Kernel::MatMul { out, x, w, n_out, n_in, transpose, accumulate } => {
            let wv = ArrayView2::from_shape((*n_out, *n_in), &bufs[*w][..n_out * n_in]).expect("shape").to_owned();
            let (nx, ny) = if *transpose { (*n_out, *n_in) } else { (*n_in, *n_out) };
            let xv = ArrayView2::from_shape((nb, nx), &bufs[*x][..nb * nx]).expect("shape").to_owned();
            let y = if *transpose { xv.dot(&wv) } else { xv.dot(&wv.t()) };
            let dst = &mut bufs[*out][..nb * ny];
            // (In logical order: the product of a transposed view need not be row-major.)
            let y: Vec<T> = y.iter().copied().collect();
            add_or_copy(dst, &y, *accumulate);
        }
        Kernel::Outer { out, p: pa, q, rows, cols, mean, repeat, accumulate } => {
            let n = nb * ctx.iterations(*repeat);
            let pv = ArrayView2::from_shape((n, *rows), &bufs[*pa][..n * rows]).expect("shape").to_owned();
            let qv = ArrayView2::from_shape((n, *cols), &bufs[*q][..n * cols]).expect("shape").to_owned();
            let scale = if *mean { T::one() / T::of(nb as f64) } else { T::one() };
            let mut g = Array2::<T>::zeros((*rows, *cols));
            general_mat_mul(scale, &pv.t(), &qv, T::zero(), &mut g);
            add_or_copy(&mut bufs[*out][..rows * cols], g.as_slice().expect("contiguous"), *accumulate);
        }
        Kernel::BatchSum { out, src, cols, mean, repeat, accumulate } => {
            let n = nb * ctx.iterations(*repeat);
            let s = ArrayView2::from_shape((n, *cols), &bufs[*src][..n * cols]).expect("shape").to_owned();
            let scale = if *mean { T::one() / T::of(nb as f64) } else { T::one() };
            let r = s.sum_axis(NdAxis(0)).mapv(|x| x * scale);
            add_or_copy(&mut bufs[*out][..*cols], r.as_slice().expect("contiguous"), *accumulate);
        }
        Kernel::Copy { dst, src, len } => {
            let v = bufs[*src][..*len].to_vec();
            bufs[*dst][..*len].copy_from_slice(&v);
        }
        Kernel::Loop { count, reverse, body } => {
            let saved = *ctx;
            let (base, n) = ctx.segment.map_or((0, *count), |(base, n)| (base, n.min(*count)));
            for k in 0..n {
                let j = if *reverse { n - 1 - k } else { k };
                ctx.step.iter = (base + j) as u64;
                ctx.hist = j;
                for k in body {
                    kernel(p, k, bufs, nb, ctx);
                }
            }
            *ctx = saved;
        }
        Kernel::Segments { total, len, reverse, body } => {
            let saved = *ctx;
            let m = total.div_ceil(*len);
            for k in 0..m {
                let s = if *reverse { m - 1 - k } else { k };
                let base = s * len;
                ctx.segment = Some((base, (*total - base).min(*len)));
                ctx.step.iter = base as u64;
                ctx.hist = s;
                for k in body {
                    kernel(p, k, bufs, nb, ctx);
                }
            }
            *ctx = saved;
        }
        Kernel::Every { every, body } => {
            if (ctx.step.step + 1).is_multiple_of(*every) {
                for k in body {
                    kernel(p, k, bufs, nb, ctx);
                }
            }
        }
    }
}

fn reduce<T: Elem>(v: &Array2<T>, op: RedOp, axis: NdAxis) -> ndarray::Array1<T> {
    match op {
        RedOp::Sum => v.sum_axis(axis),
        RedOp::Max => v.fold_axis(axis, T::neg_infinity(), |a, b| if *b > *a { *b } else { *a }),
        RedOp::Min => v.fold_axis(axis, T::infinity(), |a, b| if *b < *a { *b } else { *a }),
    }
}

/// Runs the stores of a fused loop in order: each sees the previous ones' results.
fn run_stores<T: Elem>(p: &Program, stores: &[Store], shape: Shape, bufs: &mut [Vec<T>], nb: usize, ctx: &Ctx) {
    let (rows, cols) = shape.dims();
    for s in stores {
        let v = eval(p, &s.value, shape, bufs, nb, ctx);
        let v = match &s.guard {
            Some(g) => {
                let gv = eval(p, g, shape, bufs, nb, ctx);
                let old = load(p, s.out, if is_history(p, s.out) { Access::Hist } else { Access::Elem }, shape, bufs, ctx);
                let mut r = old;
                ndarray::Zip::from(&mut r).and(&gv).and(&v).for_each(|o, g, x| {
                    if *g != T::zero() {
                        *o = *x
                    }
                });
                r
            }
            None => v,
        };
        // A history records the value at the current iteration's rows.
        let off = if is_history(p, s.out) { ctx.hist * rows * cols } else { 0 };
        let dst = &mut bufs[s.out];
        for (d, x) in dst[off..off + rows * cols].iter_mut().zip(v.iter()) {
            *d = *x;
        }
    }
}

fn is_history(p: &Program, b: usize) -> bool {
    matches!(p.buffers[b].rows, circ_runtime::state::Rows::History(_))
}

/// The values a buffer contributes at every point of the loop, as a full array.
fn load<T: Elem>(p: &Program, b: usize, a: Access, shape: Shape, bufs: &[Vec<T>], ctx: &Ctx) -> Array2<T> {
    let buf = &bufs[b];
    let (rows, cols) = shape.dims();
    let _ = p;
    match (shape, a) {
        (_, Access::Scalar) => Array2::from_elem((rows, cols), buf[0]),
        (Shape::Map { .. }, Access::Hist) => {
            let off = ctx.hist * rows * cols;
            ArrayView2::from_shape((rows, cols), &buf[off..off + rows * cols]).expect("shape").to_owned()
        }
        (_, Access::Elem) => ArrayView2::from_shape((rows, cols), &buf[..rows * cols]).expect("shape").to_owned(),
        (Shape::Syn { .. }, Access::Trans) => ArrayView2::from_shape((cols, rows), &buf[..rows * cols]).expect("shape").t().to_owned(),
        (Shape::Map { .. }, Access::Sample) => {
            let col = ArrayView2::from_shape((rows, 1), &buf[..rows]).expect("shape");
            col.broadcast((rows, cols)).expect("broadcast").to_owned()
        }
        (Shape::Syn { bb, .. }, Access::Sample) => Array2::from_elem((rows, cols), buf[bb]),
        (Shape::Map { .. }, Access::Unit) => {
            let row = ArrayView2::from_shape((1, cols), &buf[..cols]).expect("shape");
            row.broadcast((rows, cols)).expect("broadcast").to_owned()
        }
        (Shape::Syn { bb, .. }, Access::Post) => {
            let col = ArrayView2::from_shape((rows, 1), &buf[bb * rows..(bb + 1) * rows]).expect("shape");
            col.broadcast((rows, cols)).expect("broadcast").to_owned()
        }
        (Shape::Syn { bb, .. }, Access::Pre) => {
            let row = ArrayView2::from_shape((1, cols), &buf[bb * cols..(bb + 1) * cols]).expect("shape");
            row.broadcast((rows, cols)).expect("broadcast").to_owned()
        }
        // Program::validate rejects every other combination.
        _ => Array2::zeros((rows, cols)),
    }
}

fn eval<T: Elem>(p: &Program, e: &KExpr, shape: Shape, bufs: &[Vec<T>], nb: usize, ctx: &Ctx) -> Array2<T> {
    let (rows, cols) = shape.dims();
    match e {
        KExpr::Const(c) => Array2::from_elem((rows, cols), T::of(*c)),
        KExpr::InvBatch => Array2::from_elem((rows, cols), T::one() / T::of(nb as f64)),
        KExpr::StepCount => Array2::from_elem((rows, cols), T::of((ctx.step.step + 1) as f64)),
        KExpr::Time(dt) => Array2::from_elem((rows, cols), T::of(ctx.step.iter as f64) * T::of(*dt)),
        KExpr::Load(b, a) => load(p, *b, *a, shape, bufs, ctx),
        KExpr::Unary(op, a) => {
            let v = eval(p, a, shape, bufs, nb, ctx);
            match op {
                UnOp::Neg => v.mapv(|x| -x),
                UnOp::Not => v.mapv(|x| if x == T::zero() { T::one() } else { T::zero() }),
            }
        }
        KExpr::Binary(op, a, b) => {
            let x = eval(p, a, shape, bufs, nb, ctx);
            let y = eval(p, b, shape, bufs, nb, ctx);
            let mut r = x;
            ndarray::Zip::from(&mut r).and(&y).for_each(|a, b| *a = binop(*op, *a, *b));
            r
        }
        KExpr::Call(f, args) => {
            let vs: Vec<Array2<T>> = args.iter().map(|a| eval(p, a, shape, bufs, nb, ctx)).collect();
            let mut out = Array2::<T>::zeros((rows, cols));
            for ((r, c), o) in out.indexed_iter_mut() {
                let a: Vec<T> = vs.iter().map(|v| v[(r, c)]).collect();
                *o = apply_func(*f, &a);
            }
            out
        }
        KExpr::Rand(kind, stream) => {
            let stream_key = (*stream as u64) | (ctx.step.iter << 32);
            let base = match shape {
                Shape::Syn { bb, rows, cols } => (bb * rows * cols) as u64,
                Shape::Map { .. } => 0,
            };
            Array2::from_shape_fn((rows, cols), |(r, c)| {
                let idx = base + (r * cols + c) as u64;
                let x = match kind {
                    RandKind::Uniform => math::circ_rand_uniform(ctx.step.seed, stream_key, ctx.step.step, idx),
                    RandKind::Normal => math::circ_rand_normal(ctx.step.seed, stream_key, ctx.step.step, idx),
                };
                T::of(x)
            })
        }
    }
}

/// Binary operators, exactly as the JIT computes them.
pub fn binop<T: Elem>(op: BinOp, a: T, b: T) -> T {
    let t = |c: bool| if c { T::one() } else { T::zero() };
    match op {
        BinOp::Add => a + b,
        BinOp::Sub => a - b,
        BinOp::Mul => a * b,
        BinOp::Div => a / b,
        BinOp::Rem => T::of(math::fmod(a.f64(), b.f64())),
        BinOp::Pow => T::of(a.f64().powf(b.f64())),
        BinOp::Eq => t(a == b),
        BinOp::Ne => t(a != b),
        BinOp::Lt => t(a < b),
        BinOp::Le => t(a <= b),
        BinOp::Gt => t(a > b),
        BinOp::Ge => t(a >= b),
        BinOp::And => t(a != T::zero() && b != T::zero()),
        BinOp::Or => t(a != T::zero() || b != T::zero()),
    }
}

/// Built-in functions, exactly as the JIT computes them (select-based where it branches).
pub fn apply_func<T: Elem>(f: Func, a: &[T]) -> T {
    let x = a[0];
    let zero = T::zero();
    let one = T::one();
    match f {
        Func::Relu => {
            if x > zero {
                x
            } else {
                zero
            }
        }
        Func::LeakyRelu => {
            let s = a.get(1).copied().unwrap_or(T::of(math::LEAKY_SLOPE));
            if x > zero {
                x
            } else {
                s * x
            }
        }
        Func::Step => {
            if x > zero {
                one
            } else {
                zero
            }
        }
        Func::Sign => {
            if x > zero {
                one
            } else if x < zero {
                -one
            } else {
                zero
            }
        }
        Func::Abs => x.abs(),
        Func::Sqrt => x.sqrt(),
        Func::Floor => x.floor(),
        Func::Exp => T::via(f64::exp, x),
        Func::Log => T::via(f64::ln, x),
        Func::Tanh => T::via(f64::tanh, x),
        Func::Sigmoid => T::via(math::sigmoid, x),
        Func::Gelu => T::via(math::gelu, x),
        Func::Sin => T::via(f64::sin, x),
        Func::Cos => T::via(f64::cos, x),
        Func::Softplus => {
            let beta = a.get(1).copied().unwrap_or(one);
            T::of(math::softplus(x.f64(), beta.f64()))
        }
        Func::Min => {
            if x < a[1] {
                x
            } else {
                a[1]
            }
        }
        Func::Max => {
            if x > a[1] {
                x
            } else {
                a[1]
            }
        }
        Func::Clip => {
            let lo = if x > a[1] { x } else { a[1] };
            if lo < a[2] {
                lo
            } else {
                a[2]
            }
        }
        Func::Select => {
            if x != zero {
                a[1]
            } else {
                a[2]
            }
        }
        Func::Pow => T::of(x.f64().powf(a[1].f64())),
    }
}
