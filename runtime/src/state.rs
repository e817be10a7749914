//! Buffers of a running circuit and their initialisation.
//!
//! Input: a list of [`BufSpec`] (from the compiler's lowering), the largest batch the run
//! uses, the precision and a seed. Output: a [`State`]: one flat, row-major buffer per spec.
//! Invariants: a buffer's length is `rows × cols` where batch-shaped buffers have
//! `max_batch` rows; buffers never move or resize after creation (compiled code keeps raw
//! pointers to them for the duration of a call); initialisation draws from one ChaCha8
//! stream per buffer, seeded from (seed, buffer name), so adding a buffer never changes the
//! values of the others, and programs that share a pathway name start it identically.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// Element type of every buffer of a circuit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Precision {
    F32,
    F64,
}

/// How many rows a buffer has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rows {
    /// One row per sample of the batch (allocated for the largest batch).
    Batch,
    Fixed(usize),
    /// One batch of rows per iteration of a time loop of this many iterations (the history
    /// that backpropagation through time reads back): `iterations × batch` rows, iteration
    /// major.
    History(usize),
}

/// Initialisation laws for synapse state (DESIGN.md §3), before scaling.
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

/// What a buffer holds at the start of a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BufInit {
    Zero,
    Const(f64),
    /// A law times a scale, for a `[fan_out, fan_in]` matrix.
    Law {
        law: Law,
        scale: f64,
    },
}

/// What a buffer is, for checkpoints, monitors and error messages.
#[derive(Clone, Debug, PartialEq)]
pub enum BufKind {
    Input,
    Target,
    /// A per-neuron variable; `state` ones persist from step to step (and go in checkpoints).
    Neuron {
        state: bool,
    },
    /// Per-synapse state of a pathway (persistent).
    Synapse,
    /// A per-sample scalar signal.
    Signal {
        state: bool,
    },
    Meta,
    /// A pathway's effective weight (derived from its state; recomputed, not checkpointed).
    Derived,
    /// Scratch space of compiled kernels.
    Temp,
}

impl BufKind {
    /// Whether the buffer is part of the circuit's persistent state (checkpointed).
    pub fn persistent(&self) -> bool {
        matches!(self, BufKind::Neuron { state: true } | BufKind::Synapse | BufKind::Signal { state: true } | BufKind::Meta)
    }
}

/// One buffer's declaration.
#[derive(Clone, Debug)]
pub struct BufSpec {
    pub name: String,
    pub rows: Rows,
    pub cols: usize,
    pub init: BufInit,
    pub kind: BufKind,
}

impl BufSpec {
    pub fn len(&self, max_batch: usize) -> usize {
        self.rows(max_batch) * self.cols
    }
    pub fn rows(&self, max_batch: usize) -> usize {
        match self.rows {
            Rows::Batch => max_batch,
            Rows::Fixed(r) => r,
            Rows::History(t) => t * max_batch,
        }
    }
}

/// Buffer storage of one element type.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<Vec<f32>>),
    F64(Vec<Vec<f64>>),
}

/// All buffers of a circuit.
#[derive(Clone, Debug)]
pub struct State {
    pub specs: Vec<BufSpec>,
    pub max_batch: usize,
    pub data: Data,
}

/// Number of bytes a state would take, computed before allocating anything.
pub fn bytes_needed(specs: &[BufSpec], max_batch: usize, precision: Precision) -> u128 {
    let elem = match precision {
        Precision::F32 => 4u128,
        Precision::F64 => 8,
    };
    specs.iter().map(|s| s.rows(max_batch) as u128 * s.cols as u128 * elem).sum()
}

/// The part of [`bytes_needed`] that histories for backpropagation through time take.
pub fn history_bytes(specs: &[BufSpec], max_batch: usize, precision: Precision) -> u128 {
    let histories: Vec<BufSpec> = specs.iter().filter(|s| matches!(s.rows, Rows::History(_))).cloned().collect();
    bytes_needed(&histories, max_batch, precision)
}

impl State {
    /// Allocates and initialises every buffer.
    pub fn new(specs: &[BufSpec], max_batch: usize, precision: Precision, seed: u64) -> State {
        let values: Vec<Vec<f64>> = specs.iter().map(|s| init_values(s, max_batch, seed, name_key(&s.name))).collect();
        let data = match precision {
            Precision::F32 => Data::F32(values.into_iter().map(|v| v.into_iter().map(|x| x as f32).collect()).collect()),
            Precision::F64 => Data::F64(values),
        };
        State { specs: specs.to_vec(), max_batch, data }
    }

    pub fn precision(&self) -> Precision {
        match self.data {
            Data::F32(_) => Precision::F32,
            Data::F64(_) => Precision::F64,
        }
    }

    pub fn find(&self, name: &str) -> Option<usize> {
        self.specs.iter().position(|s| s.name == name)
    }

    /// A copy of a buffer as f64.
    pub fn get(&self, buf: usize) -> Vec<f64> {
        match &self.data {
            Data::F32(v) => v[buf].iter().map(|&x| x as f64).collect(),
            Data::F64(v) => v[buf].clone(),
        }
    }

    /// Copies a buffer into `out` as f64, reusing its allocation.
    pub fn copy_into(&self, buf: usize, out: &mut Vec<f64>) {
        out.clear();
        match &self.data {
            Data::F32(v) => out.extend(v[buf].iter().map(|&x| x as f64)),
            Data::F64(v) => out.extend_from_slice(&v[buf]),
        }
    }

    /// Element `i` of a buffer, as f64.
    pub fn at(&self, buf: usize, i: usize) -> f64 {
        match &self.data {
            Data::F32(v) => v[buf][i] as f64,
            Data::F64(v) => v[buf][i],
        }
    }

    /// Overwrites the start of a buffer with `values` (converted to the buffer's type).
    pub fn set_f32(&mut self, buf: usize, values: &[f32]) {
        match &mut self.data {
            Data::F32(v) => v[buf][..values.len()].copy_from_slice(values),
            Data::F64(v) => {
                for (d, s) in v[buf].iter_mut().zip(values) {
                    *d = *s as f64;
                }
            }
        }
    }

    /// Re-draws one buffer from its initialisation law with another seed (a fresh network
    /// at the start of a meta-learning episode). Same (seed, name), same values.
    pub fn reinit(&mut self, buf: usize, seed: u64) {
        let values = init_values(&self.specs[buf], self.max_batch, seed, name_key(&self.specs[buf].name));
        self.set_f64(buf, &values);
    }

    /// Overwrites a whole buffer from f64 values (checkpoint restore).
    pub fn set_f64(&mut self, buf: usize, values: &[f64]) {
        match &mut self.data {
            Data::F32(v) => {
                for (d, s) in v[buf].iter_mut().zip(values) {
                    *d = *s as f32;
                }
            }
            Data::F64(v) => v[buf][..values.len()].copy_from_slice(values),
        }
    }

    /// The allocated length (elements) of every buffer, for bounds-checked compiled code.
    pub fn lens(&self) -> Vec<usize> {
        match &self.data {
            Data::F32(v) => v.iter().map(Vec::len).collect(),
            Data::F64(v) => v.iter().map(Vec::len).collect(),
        }
    }

    /// Base pointers of every buffer, for compiled code. The pointers stay valid while the
    /// state is neither dropped nor reallocated (buffers never resize).
    pub fn pointers(&mut self) -> Vec<*mut u8> {
        match &mut self.data {
            Data::F32(v) => v.iter_mut().map(|b| b.as_mut_ptr() as *mut u8).collect(),
            Data::F64(v) => v.iter_mut().map(|b| b.as_mut_ptr() as *mut u8).collect(),
        }
    }

    /// Index of the first non-finite value in a buffer, if any.
    pub fn first_non_finite(&self, buf: usize, len: usize) -> Option<usize> {
        match &self.data {
            Data::F32(v) => v[buf][..len.min(v[buf].len())].iter().position(|x| !x.is_finite()),
            Data::F64(v) => v[buf][..len.min(v[buf].len())].iter().position(|x| !x.is_finite()),
        }
    }
}

/// A stable 64-bit key of a buffer name (FNV-1a): the random stream of a buffer depends on its
/// name, so two programs that declare `W1` draw the same initial `W1` from the same seed.
fn name_key(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// The initial values of one buffer, in f64.
fn init_values(s: &BufSpec, max_batch: usize, seed: u64, key: u64) -> Vec<f64> {
    let rows = s.rows(max_batch);
    let n = rows * s.cols;
    match s.init {
        BufInit::Zero => vec![0.0; n],
        BufInit::Const(c) => vec![c; n],
        BufInit::Law { law, scale } => {
            // One independent stream per buffer: the seed mixed with the buffer's name.
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ key.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut v = sample_law(law, rows, s.cols, &mut rng);
            for x in &mut v {
                *x *= scale;
            }
            v
        }
    }
}

/// Samples a `[rows, cols]` matrix (rows = fan_out, cols = fan_in) from a law.
pub fn sample_law(law: Law, rows: usize, cols: usize, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let n = rows * cols;
    let (fan_in, fan_out) = (cols as f64, rows as f64);
    let uniform = |rng: &mut ChaCha8Rng, a: f64, b: f64| -> Vec<f64> { (0..n).map(|_| a + (b - a) * rng.random::<f64>()).collect() };
    let normal = |rng: &mut ChaCha8Rng, m: f64, sd: f64| -> Vec<f64> {
        match Normal::new(m, sd.abs()) {
            Ok(d) => (0..n).map(|_| d.sample(rng)).collect(),
            Err(_) => vec![m; n],
        }
    };
    match law {
        Law::Zeros => vec![0.0; n],
        Law::Constant(c) => vec![c; n],
        Law::Uniform(a, b) => uniform(rng, a, b),
        Law::Normal(m, sd) => normal(rng, m, sd),
        Law::XavierUniform => {
            let a = (6.0 / (fan_in + fan_out)).sqrt();
            uniform(rng, -a, a)
        }
        Law::XavierNormal => normal(rng, 0.0, (2.0 / (fan_in + fan_out)).sqrt()),
        Law::KaimingUniform => {
            let a = (6.0 / fan_in).sqrt();
            uniform(rng, -a, a)
        }
        Law::KaimingNormal => normal(rng, 0.0, (2.0 / fan_in).sqrt()),
        Law::Identity => {
            let mut v = vec![0.0; n];
            for i in 0..rows.min(cols) {
                v[i * cols + i] = 1.0;
            }
            v
        }
        Law::Orthogonal => orthogonal(rows, cols, rng),
        Law::Bernoulli(p) => (0..n).map(|_| if rng.random::<f64>() < p { 1.0 } else { 0.0 }).collect(),
    }
}

/// A matrix with orthonormal rows or columns (whichever is fewer): Gram–Schmidt with
/// re-orthogonalisation on Gaussian vectors.
fn orthogonal(rows: usize, cols: usize, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let (k, d) = if rows <= cols { (rows, cols) } else { (cols, rows) };
    let normal = Normal::new(0.0, 1.0).expect("valid normal");
    let mut basis: Vec<Vec<f64>> = Vec::with_capacity(k);
    while basis.len() < k {
        let mut v: Vec<f64> = (0..d).map(|_| normal.sample(rng)).collect();
        for _ in 0..2 {
            for b in &basis {
                let dot: f64 = v.iter().zip(b).map(|(x, y)| x * y).sum();
                for (x, y) in v.iter_mut().zip(b) {
                    *x -= dot * y;
                }
            }
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm > 1e-8 {
            basis.push(v.into_iter().map(|x| x / norm).collect());
        }
    }
    let mut m = vec![0.0; rows * cols];
    for (r, b) in basis.iter().enumerate() {
        for (c, &x) in b.iter().enumerate() {
            if rows <= cols {
                m[r * cols + c] = x;
            } else {
                m[c * cols + r] = x;
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(law: Law, rows: usize, cols: usize) -> BufSpec {
        BufSpec { name: "w".into(), rows: Rows::Fixed(rows), cols, init: BufInit::Law { law, scale: 1.0 }, kind: BufKind::Synapse }
    }

    #[test]
    fn same_seed_same_values_and_independent_streams() {
        let mut specs = vec![spec(Law::Uniform(-1.0, 1.0), 4, 5), spec(Law::Normal(0.0, 1.0), 3, 3)];
        specs[1].name = "v".into();
        let a = State::new(&specs, 1, Precision::F32, 7);
        let b = State::new(&specs, 1, Precision::F32, 7);
        assert_eq!(a.data, b.data);
        let c = State::new(&specs, 1, Precision::F32, 8);
        assert_ne!(a.data, c.data);
        // Streams follow names: dropping the first buffer leaves the second one's values.
        let only_second = State::new(&specs[1..], 1, Precision::F32, 7);
        assert_eq!(only_second.get(0), a.get(1));
    }

    #[test]
    fn uniform_stays_in_range_and_scales() {
        let s = BufSpec { init: BufInit::Law { law: Law::Uniform(-1.0, 1.0), scale: 0.5 }, ..spec(Law::Zeros, 50, 40) };
        let st = State::new(&[s], 1, Precision::F64, 1);
        let v = st.get(0);
        assert!(v.iter().all(|x| x.abs() <= 0.5));
        assert!(v.iter().any(|x| x.abs() > 0.4));
    }

    #[test]
    fn orthogonal_rows_are_orthonormal() {
        let st = State::new(&[spec(Law::Orthogonal, 8, 20)], 1, Precision::F64, 3);
        let m = st.get(0);
        for i in 0..8 {
            for j in 0..8 {
                let dot: f64 = (0..20).map(|k| m[i * 20 + k] * m[j * 20 + k]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-9, "rows {i},{j}: {dot}");
            }
        }
        let st = State::new(&[spec(Law::Orthogonal, 20, 8)], 1, Precision::F64, 3);
        let m = st.get(0);
        for i in 0..8 {
            let dot: f64 = (0..20).map(|k| m[k * 8 + i] * m[k * 8 + i]).sum();
            assert!((dot - 1.0).abs() < 1e-9);
        }
    }

    #[test]
    fn identity_and_bernoulli() {
        let st = State::new(&[spec(Law::Identity, 3, 3), spec(Law::Bernoulli(0.3), 100, 100)], 1, Precision::F32, 0);
        assert_eq!(st.get(0), vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
        let ones = st.get(1).iter().filter(|&&x| x == 1.0).count();
        assert!((2500..3500).contains(&ones), "{ones}");
    }

    #[test]
    fn bytes_needed_counts_batch_rows() {
        let specs = vec![
            BufSpec { name: "h".into(), rows: Rows::Batch, cols: 10, init: BufInit::Zero, kind: BufKind::Temp },
            spec(Law::Zeros, 4, 5),
        ];
        assert_eq!(bytes_needed(&specs, 32, Precision::F32), (320 + 20) * 4);
        assert_eq!(bytes_needed(&specs, 32, Precision::F64), (320 + 20) * 8);
    }
}
