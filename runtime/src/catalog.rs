//! Datasets by name, as an experiment block names them (`data = mnist`).
//!
//! Input: a name, an optional data directory and the run's seed. Output: a [`Dataset`].
//! Invariants: the procedural tasks need no files; MNIST and Fashion-MNIST are read from the
//! directory given (`--data-dir`, else `CIRC_MNIST_DIR`), never downloaded implicitly.

use crate::data::{self, DataError, Dataset, NoMnist};
use crate::tasks;
use miette::Diagnostic;
use std::path::Path;
use thiserror::Error;

/// Every dataset name `data = ...` accepts.
pub fn names() -> Vec<&'static str> {
    let mut v = vec!["mnist", "fashion_mnist", "gaussian", "patterns"];
    v.extend(tasks::BUILTIN_TASKS.iter().copied());
    v
}

#[derive(Debug, Error, Diagnostic)]
pub enum CatalogError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    NoMnist(#[from] NoMnist),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Data(#[from] DataError),
    #[error("unknown dataset `{name}`")]
    #[diagnostic(code(circ::data::unknown), help("datasets: {known}"))]
    Unknown { name: String, known: String },
}

/// Loads the dataset `name`. Procedural tasks are drawn from `seed`.
pub fn load(name: &str, data_dir: Option<&Path>, seed: u64) -> Result<Dataset, CatalogError> {
    match name {
        "mnist" | "fashion_mnist" | "fashion-mnist" => {
            let dir = data::require_mnist_dir(data_dir)?;
            Ok(data::load_mnist(&dir, name != "mnist")?)
        }
        "gaussian" => Ok(gaussian(seed)),
        "patterns" => Ok(patterns(seed)),
        _ => tasks::builtin(name, seed).ok_or_else(|| CatalogError::Unknown { name: name.to_string(), known: names().join(", ") }),
    }
}

/// Dimension and spectrum of the `gaussian` task: unsupervised inputs for Hebbian, Oja and
/// PCA-like circuits. Three well-separated principal directions, then a noise floor.
pub const GAUSSIAN_DIM: usize = 10;
pub const GAUSSIAN_SPECTRUM: [f32; 10] = [9.0, 4.0, 2.0, 0.25, 0.2, 0.15, 0.1, 0.1, 0.05, 0.05];

/// Zero-mean Gaussian samples with covariance `Q diag(GAUSSIAN_SPECTRUM) Qᵀ` (`Q` a random
/// rotation from the seed): 20000 training and 2000 test samples, no targets.
pub fn gaussian(seed: u64) -> Dataset {
    let draw = |n, s| tasks::gaussian(GAUSSIAN_DIM, n, &GAUSSIAN_SPECTRUM, s).expect("constant, valid parameters");
    // Same rotation for train and test: the test split is later samples of one stream.
    let all = draw(22000, seed);
    let d = GAUSSIAN_DIM;
    let split = |lo: usize, hi: usize| data::Split { n: hi - lo, x: all.x[lo * d..hi * d].to_vec(), y: Vec::new(), labels: Vec::new() };
    Dataset {
        name: "gaussian".into(),
        kind: data::TaskKind::Regression,
        input_dim: d,
        target_dim: 0,
        train: split(0, 20000),
        test: split(20000, 22000),
    }
}

/// The principal directions of [`gaussian`]`(seed)`, row `k` is direction `k`.
pub fn gaussian_directions(seed: u64) -> Vec<f32> {
    tasks::gaussian(GAUSSIAN_DIM, 1, &GAUSSIAN_SPECTRUM, seed).expect("constant, valid parameters").directions
}

/// Number and size of the `patterns` task's prototypes.
pub const PATTERNS: usize = 4;
pub const PATTERN_DIM: usize = 20;

/// The prototypes of [`patterns`]: pattern k is 1 on inputs 5k..5k+5 and 0 elsewhere.
pub fn pattern_prototypes() -> Vec<f32> {
    let mut p = vec![0.0f32; PATTERNS * PATTERN_DIM];
    let width = PATTERN_DIM / PATTERNS;
    for k in 0..PATTERNS {
        for i in k * width..(k + 1) * width {
            p[k * PATTERN_DIM + i] = 1.0;
        }
    }
    p
}

/// Noisy presentations of four orthogonal block patterns in random order (labels: the
/// pattern), for selectivity experiments such as BCM: 8000 training and 400 test samples,
/// Gaussian noise of standard deviation 0.05 on every input.
pub fn patterns(seed: u64) -> Dataset {
    use rand::{Rng, SeedableRng};
    use rand_distr::{Distribution, Normal};
    let proto = pattern_prototypes();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_0BCA);
    let noise = Normal::new(0.0f32, 0.05).expect("valid");
    let mut split = |n: usize| {
        let mut x = Vec::with_capacity(n * PATTERN_DIM);
        let mut y = vec![0.0f32; n * PATTERNS];
        let mut labels = Vec::with_capacity(n);
        for s in 0..n {
            let k = rng.random_range(0..PATTERNS);
            x.extend(proto[k * PATTERN_DIM..(k + 1) * PATTERN_DIM].iter().map(|v| v + noise.sample(&mut rng)));
            y[s * PATTERNS + k] = 1.0;
            labels.push(k as u32);
        }
        data::Split { n, x, y, labels }
    };
    let train = split(8000);
    let test = split(400);
    Dataset { name: "patterns".into(), kind: data::TaskKind::Classification, input_dim: PATTERN_DIM, target_dim: PATTERNS, train, test }
}
