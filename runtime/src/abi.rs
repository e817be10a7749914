//! The boundary between compiled code and the runtime: the step context and the
//! `extern "C"` product kernels the JIT calls.
//!
//! Input: raw buffer pointers and shapes from compiled code. Output: writes into the
//! destination buffer. Invariants: every function here is `extern "C"`, never panics, and
//! is called only with pointers to live buffers of the stated shapes (the compiler derives the
//! shapes from checked sizes; the state allocates `max_batch` rows and the driver never passes
//! a larger `nb`). This module and the JIT's calls into compiled code are the only `unsafe` in
//! circ.
//!
//! The JIT's bounds-check mode (`--jit-bounds-check`) checks every access and every product
//! call's extents before it happens; on a violation the compiled code calls
//! [`circ_bounds_fault`], which records the first one in a [`FaultSlot`], and returns. The
//! engine then reports it as a [`BoundsFault`] (`circ::jit::bounds`).

use gemm::{gemm, Parallelism};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

/// What compiled code may read about the current step (passed by pointer to every entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct StepCtx {
    /// The run's seed (for counter-based random draws).
    pub seed: u64,
    /// Global training step (batches since the start of the run).
    pub step: u64,
    /// Iteration of the innermost repeated phase.
    pub iter: u64,
}

/// What an access found out of bounds was doing (the `touch` argument of [`circ_bounds_fault`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i64)]
pub enum Touch {
    Load = 0,
    Store = 1,
    /// The extent a product kernel (`circ_matmul_*`, `circ_outer_*`, `circ_batch_sum_*`) would
    /// read or write.
    Call = 2,
    /// A whole-buffer copy.
    Copy = 3,
    /// An entry of a zero-skip index list (on the stack of the compiled function).
    List = 4,
}

impl Touch {
    fn from_code(c: i64) -> Option<Touch> {
        [Touch::Load, Touch::Store, Touch::Call, Touch::Copy, Touch::List].into_iter().find(|t| *t as i64 == c)
    }
    fn text(self) -> &'static str {
        match self {
            Touch::Load => "load",
            Touch::Store => "store",
            Touch::Call => "product kernel call",
            Touch::Copy => "copy",
            Touch::List => "index list access",
        }
    }
}

/// The "buffer" of a [`Touch::List`] fault: zero-skip lists are numbered below zero.
pub const LIST_ROWS: i64 = -1;
/// The column groups of a synapse pass that can change.
pub const LIST_COLS: i64 = -2;
/// The nonzero input groups of a batch-1 matrix–vector product.
pub const LIST_NONZERO: i64 = -3;

/// Where bounds-checked compiled code records the first out-of-bounds access of a call (its
/// address is compiled into the code). Row passes on several threads share it, so the first
/// fault wins and later ones are dropped.
#[repr(C)]
#[derive(Debug, Default)]
pub struct FaultSlot {
    hit: AtomicBool,
    kernel: AtomicI64,
    buf: AtomicI64,
    first: AtomicI64,
    last: AtomicI64,
    len: AtomicI64,
    touch: AtomicI64,
}

/// A fault as compiled code reported it: numbers only (the engine names them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawFault {
    /// The kernel's number in the program (the JIT keeps their descriptions).
    pub kernel: i64,
    /// A buffer id, or a list (`LIST_*`).
    pub buf: i64,
    /// The first and last element the access would touch.
    pub first: i64,
    pub last: i64,
    /// The buffer's length in elements.
    pub len: i64,
    pub touch: i64,
}

impl FaultSlot {
    /// Forgets a recorded fault (before the next call).
    pub fn clear(&self) {
        self.hit.store(false, Ordering::Release);
    }

    /// The recorded fault, if any. Call after the compiled code (and its threads) returned.
    pub fn get(&self) -> Option<RawFault> {
        if !self.hit.load(Ordering::Acquire) {
            return None;
        }
        let r = |a: &AtomicI64| a.load(Ordering::Relaxed);
        Some(RawFault {
            kernel: r(&self.kernel),
            buf: r(&self.buf),
            first: r(&self.first),
            last: r(&self.last),
            len: r(&self.len),
            touch: r(&self.touch),
        })
    }
}

/// Records an out-of-bounds access that bounds-checked compiled code is about to skip: the
/// first one of a call wins. Called only on the cold path; never panics.
pub extern "C" fn circ_bounds_fault(slot: &FaultSlot, kernel: i64, buf: i64, first: i64, last: i64, len: i64, touch: i64) {
    if slot.hit.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed).is_err() {
        return;
    }
    for (a, v) in
        [(&slot.kernel, kernel), (&slot.buf, buf), (&slot.first, first), (&slot.last, last), (&slot.len, len), (&slot.touch, touch)]
    {
        a.store(v, Ordering::Relaxed);
    }
}

/// An out-of-bounds access caught by the JIT's bounds-check mode, named for people.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[error("out-of-bounds {touch} in compiled code: {elements} of {buffer}, which has {len} elements, in {kernel}")]
#[diagnostic(
    code(circ::jit::bounds),
    help(
        "the access was skipped and the entry stopped, so no memory outside the buffer was touched; this is a bug in circ's \
         compiler, not in the program: please report it with the program (`--engine interp` runs it meanwhile)"
    )
)]
pub struct BoundsFault {
    /// The buffer (`` `W1` ``) or index list.
    pub buffer: String,
    /// `element 12` or `elements 12..16` (half-open).
    pub elements: String,
    pub len: i64,
    /// `load`, `store`, `product kernel call`, ...
    pub touch: String,
    /// Entry, kernel number and the kernel's text (`train kernel 3: synmap [4 x 8] -> %2:W`).
    pub kernel: String,
    /// The fault as reported by compiled code.
    pub raw: RawFault,
}

impl BoundsFault {
    /// Names a raw fault: `buffers` are the buffer names, `kernels` the kernel descriptions.
    pub fn new(raw: RawFault, buffers: &[String], kernels: &[String]) -> BoundsFault {
        let buffer = match raw.buf {
            LIST_ROWS => "the row list of a synapse pass".to_string(),
            LIST_COLS => "the column-group list of a synapse pass".to_string(),
            LIST_NONZERO => "the nonzero-input list of a matrix-vector product".to_string(),
            b => match usize::try_from(b).ok().and_then(|b| buffers.get(b)) {
                Some(n) => format!("`{n}`"),
                None => format!("buffer {b}"),
            },
        };
        let elements = if raw.first == raw.last {
            format!("element {}", raw.first)
        } else {
            format!("elements {}..{}", raw.first, raw.last.wrapping_add(1))
        };
        let kernel =
            usize::try_from(raw.kernel).ok().and_then(|k| kernels.get(k)).cloned().unwrap_or_else(|| format!("kernel {}", raw.kernel));
        let touch = Touch::from_code(raw.touch).map(|t| t.text().to_string()).unwrap_or_else(|| format!("access {}", raw.touch));
        BoundsFault { buffer, elements, len: raw.len, touch, kernel, raw }
    }
}

macro_rules! products {
    ($t:ty, $matmul:ident, $outer:ident, $batch_sum:ident) => {
        /// `y[nb, n_out] (+)= x[nb, n_in] · Wᵀ` for `W: [n_out, n_in]` (row-major), or with
        /// `transpose != 0`, `y[nb, n_in] (+)= x[nb, n_out] · W` (transmission backwards).
        ///
        /// # Safety
        /// The pointers must address live, row-major buffers of the shapes above.
        pub unsafe extern "C" fn $matmul(
            y: *mut $t,
            x: *const $t,
            w: *const $t,
            nb: i64,
            n_out: i64,
            n_in: i64,
            transpose: i64,
            accumulate: i64,
        ) {
            let (nb, n_out, n_in) = (nb as usize, n_out as usize, n_in as usize);
            if nb == 0 || n_out == 0 || n_in == 0 {
                return;
            }
            let acc = accumulate != 0;
            // SAFETY: the caller (compiled code) passes live, non-overlapping buffers with
            // y: nb × (n_out or n_in), x: nb × (n_in or n_out), w: n_out × n_in, row-major,
            // as derived from checked shapes; gemm reads/writes exactly those extents.
            unsafe {
                if transpose == 0 {
                    gemm(
                        nb,
                        n_out,
                        n_in,
                        y,
                        1,
                        n_out as isize,
                        acc,
                        x,
                        1,
                        n_in as isize,
                        w,
                        n_in as isize,
                        1,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                } else {
                    gemm(
                        nb,
                        n_in,
                        n_out,
                        y,
                        1,
                        n_in as isize,
                        acc,
                        x,
                        1,
                        n_out as isize,
                        w,
                        1,
                        n_in as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
                // A sum of products is +0 when every term is 0 (the interpreter and the JIT's
                // own matrix–vector loops start their sums at +0); gemm can leave −0 (a single
                // term `0 · w`, w < 0), and `1 / W(x)` must not depend on the engine.
                let len = nb * if transpose == 0 { n_out } else { n_in };
                // (Inside the unsafe block above: y holds nb rows of the output width.)
                let y = std::slice::from_raw_parts_mut(y, len);
                for v in y {
                    *v += 0.0;
                }
            }
        }

        /// `G[rows, cols] (+)= scale · Σ_b P[b, i] Q[b, j]` over `nb` samples (a batched outer
        /// product; the per-sample updates of a rule averaged or summed over the batch).
        ///
        /// # Safety
        /// The pointers must address live, row-major buffers of the shapes above.
        pub unsafe extern "C" fn $outer(g: *mut $t, p: *const $t, q: *const $t, nb: i64, rows: i64, cols: i64, scale: $t, accumulate: i64) {
            let (nb, rows, cols) = (nb as usize, rows as usize, cols as usize);
            if rows == 0 || cols == 0 {
                return;
            }
            // SAFETY: g: rows × cols, p: nb × rows, q: nb × cols, live and row-major (see
            // module invariants). With nb = 0 gemm writes alpha·G, i.e. zero or unchanged.
            unsafe {
                gemm(
                    rows,
                    cols,
                    nb,
                    g,
                    1,
                    cols as isize,
                    accumulate != 0,
                    p,
                    rows as isize,
                    1,
                    q,
                    1,
                    cols as isize,
                    1.0,
                    scale,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
        }

        /// `out[0, n] (+)= scale · Σ_b src[b, n]`: a per-neuron value averaged over the batch.
        ///
        /// # Safety
        /// `out` must address `n` elements and `src` `nb × n`, both live.
        pub unsafe extern "C" fn $batch_sum(out: *mut $t, src: *const $t, nb: i64, n: i64, scale: $t, accumulate: i64) {
            let (nb, n) = (nb as usize, n as usize);
            // SAFETY: out has n elements and src nb × n (module invariants).
            let (out, src) = unsafe { (std::slice::from_raw_parts_mut(out, n), std::slice::from_raw_parts(src, nb * n)) };
            if accumulate == 0 {
                out.iter_mut().for_each(|o| *o = 0.0);
            }
            let mut acc = vec![0.0 as $t; n];
            for b in 0..nb {
                for (a, s) in acc.iter_mut().zip(&src[b * n..(b + 1) * n]) {
                    *a += *s;
                }
            }
            for (o, a) in out.iter_mut().zip(acc) {
                *o += scale * a;
            }
        }
    };
}

/// A compiled pass over the rows `lo..hi` of a synapse kernel: `(bufs, nb, ctx, lo, hi)`.
pub type RowsFn = unsafe extern "C" fn(*const *mut u8, i64, *const StepCtx, i64, i64);

/// Threads for the large synapse passes compiled code splits by rows: `CIRC_THREADS` if set
/// (1 keeps everything on the calling thread), else the available cores.
pub fn threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| {
        std::env::var("CIRC_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
            .clamp(1, 64)
    })
}

/// The arguments of a row pass, sent to the threads that share it.
#[derive(Clone, Copy)]
struct RowsCall {
    f: RowsFn,
    bufs: *const *mut u8,
    nb: i64,
    ctx: *const StepCtx,
}

// SAFETY: the pointers address the step's buffers and context, which outlive the scoped
// threads; the threads run disjoint row ranges of a kernel whose rows are independent (it reads
// what it writes only at the synapse it writes), so no element is written by two threads or
// written by one and read by another.
unsafe impl Send for RowsCall {}

impl RowsCall {
    /// # Safety
    /// As for [`circ_par_rows`], with `0 ≤ lo ≤ hi ≤ rows`.
    unsafe fn run(self, lo: i64, hi: i64) {
        // SAFETY: see the caller.
        unsafe { (self.f)(self.bufs, self.nb, self.ctx, lo, hi) }
    }
}

/// Rows per chunk that the threads of [`circ_par_rows`] take in turn.
const ROWS_PER_CHUNK: i64 = 64;

/// Runs the rows `0..rows` of a compiled synapse pass on [`threads`] scoped threads (the
/// calling thread is one of them). The threads take chunks of [`ROWS_PER_CHUNK`] rows in turn
/// from a shared counter, so on a busy machine a thread that gets less CPU time does fewer rows
/// instead of holding up the step. The result does not depend on who ran which rows. If a
/// thread cannot be started, the others do its share.
///
/// # Safety
/// `f` must be a compiled row pass of the entry whose arguments `bufs`, `nb`, `ctx` are passed
/// on unchanged, over a kernel with `rows` independent rows.
pub unsafe extern "C" fn circ_par_rows(f: RowsFn, bufs: *const *mut u8, nb: i64, ctx: *const StepCtx, rows: i64) {
    let call = RowsCall { f, bufs, nb, ctx };
    let t = (threads() as i64).min(rows / ROWS_PER_CHUNK).max(1);
    if t == 1 {
        // SAFETY: the caller's contract, the whole range.
        unsafe { call.run(0, rows) };
        return;
    }
    let next = std::sync::atomic::AtomicI64::new(0);
    let work = |call: RowsCall| loop {
        let lo = next.fetch_add(ROWS_PER_CHUNK, std::sync::atomic::Ordering::Relaxed);
        if lo >= rows {
            break;
        }
        // SAFETY: each chunk is handed out once, so the threads run disjoint row ranges (see
        // `RowsCall`); chunks are whole blocks of 4 rows.
        unsafe { call.run(lo, (lo + ROWS_PER_CHUNK).min(rows)) };
    };
    let work = &work;
    std::thread::scope(|s| {
        for _ in 1..t {
            // A thread that cannot be started leaves its chunks to the others.
            let _ = std::thread::Builder::new().spawn_scoped(s, move || work(call));
        }
        work(call);
    });
}

products!(f32, circ_matmul_f32, circ_outer_f32, circ_batch_sum_f32);
products!(f64, circ_matmul_f64, circ_outer_f64, circ_batch_sum_f64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_forward_and_backward() {
        // W: 2 × 3
        let w = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let x = [1.0f32, 0.0, -1.0, 2.0, 1.0, 0.0]; // nb=2, n_in=3
        let mut y = [0.0f32; 4];
        // SAFETY: the arrays above have exactly the shapes passed.
        unsafe {
            circ_matmul_f32(y.as_mut_ptr(), x.as_ptr(), w.as_ptr(), 2, 2, 3, 0, 0);
        }
        assert_eq!(y, [-2.0, -2.0, 4.0, 13.0]);
        let e = [1.0f32, 1.0]; // nb=1, n_out=2
        let mut z = [0.0f32; 3];
        // SAFETY: the arrays above have exactly the shapes passed.
        unsafe {
            circ_matmul_f32(z.as_mut_ptr(), e.as_ptr(), w.as_ptr(), 1, 2, 3, 1, 0);
        }
        assert_eq!(z, [5.0, 7.0, 9.0]);
        // SAFETY: the arrays above have exactly the shapes passed.
        unsafe {
            circ_matmul_f32(z.as_mut_ptr(), e.as_ptr(), w.as_ptr(), 1, 2, 3, 1, 1);
        }
        assert_eq!(z, [10.0, 14.0, 18.0]);
    }

    #[test]
    fn outer_averages_over_the_batch() {
        let p = [1.0f64, 2.0, 3.0, 4.0]; // nb=2, rows=2
        let q = [1.0f64, 0.0, 0.0, 1.0, 1.0, 1.0]; // nb=2, cols=3
        let mut g = [9.0f64; 6];
        // SAFETY: the arrays above have exactly the shapes passed.
        unsafe {
            circ_outer_f64(g.as_mut_ptr(), p.as_ptr(), q.as_ptr(), 2, 2, 3, 0.5, 0);
        }
        // G = 0.5 * (p0 q0ᵀ + p1 q1ᵀ)
        // G[i][j] = 0.5 * (p[0][i] q[0][j] + p[1][i] q[1][j])
        assert_eq!(g, [0.5 * (1.0 + 3.0), 0.5 * (0.0 + 3.0), 0.5 * (0.0 + 3.0), 0.5 * (2.0 + 4.0), 0.5 * (0.0 + 4.0), 0.5 * (0.0 + 4.0)]);
        let mut s = [1.0f64; 2];
        // SAFETY: the arrays above have exactly the shapes passed.
        unsafe {
            circ_batch_sum_f64(s.as_mut_ptr(), p.as_ptr(), 2, 2, 0.5, 0);
        }
        assert_eq!(s, [2.0, 3.0]);
    }
}
