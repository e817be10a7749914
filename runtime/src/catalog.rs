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
    let mut v = vec!["mnist", "fashion_mnist"];
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
        _ => tasks::builtin(name, seed).ok_or_else(|| CatalogError::Unknown { name: name.to_string(), known: names().join(", ") }),
    }
}
