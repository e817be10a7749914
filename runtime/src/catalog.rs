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
    let mut v = vec!["mnist", "fashion_mnist", "gaussian"];
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
