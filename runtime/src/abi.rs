//! The boundary between compiled code and the runtime: the step context and the
//! `extern "C"` product kernels the JIT calls.
//!
//! Input: raw buffer pointers and shapes from compiled code. Output: writes into the
//! destination buffer. Invariants: every function here is `extern "C"`, never panics, and
//! is called only with pointers to live buffers of the stated shapes (the compiler derives the
//! shapes from checked sizes; the state allocates `max_batch` rows and the driver never passes
//! a larger `nb`). This module and the JIT's calls into compiled code are the only `unsafe` in
//! circ.

use gemm::{gemm, Parallelism};

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
