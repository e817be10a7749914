//! Smoke tests of the supervised standard-library programs on the real MNIST (skipped loudly
//! without `CIRC_MNIST_DIR`): each trains on the first 2000 training images for one epoch and
//! must reach 70% test accuracy on the 10,000 test images. The full-length numbers are in
//! docs/results.md (bench/results.py).
//!
//! The smoke settings (batch, learning rate, momentum) are chosen for 2000 images, not the
//! programs' defaults (batch 32 gives only 63 steps); each passed on seeds 0–4 when chosen.

mod common;

/// Trains a stdlib program with overrides on the first `limit` training images for `epochs`
/// epochs (seed 0), returns (test accuracy, test loss).
fn smoke(file: &str, sets: &[&str], batch: usize, epochs: usize, limit: usize) -> (f64, f64) {
    let r = common::train_mnist(file, sets, batch, epochs, Some(limit), true);
    eprintln!("{file} {sets:?} batch {batch}, {epochs} epoch(s) on {limit} images: test accuracy {:.4}", r.test_acc);
    (r.test_acc, r.test_loss)
}

/// One epoch on the first 2000 training images must reach 70% test accuracy.
fn smoke_70(name: &str, sets: &[&str], batch: usize) {
    if common::mnist_dir(name).is_none() {
        return;
    }
    let (acc, _) = smoke(&format!("stdlib/{name}.circ"), sets, batch, 1, 2000);
    assert!(acc >= 0.70, "{name}: test accuracy {acc} after one epoch on 2000 images");
}

#[test]
fn bp_smoke() {
    smoke_70("bp", &["lr=0.1", "momentum=0"], 8);
}

#[test]
fn fa_smoke() {
    smoke_70("fa", &["lr=0.01"], 4);
}

#[test]
fn dfa_smoke() {
    smoke_70("dfa", &["lr=0.005"], 4);
}

#[test]
fn kp_smoke() {
    smoke_70("kp", &["lr=0.1", "momentum=0"], 8);
}

#[test]
fn sign_symmetry_smoke() {
    smoke_70("sign_symmetry", &["lr=0.1", "momentum=0"], 8);
}

/// Node perturbation cannot meet the 70% bar in a smoke-sized run: its gradient estimate has
/// a variance that grows with the number of perturbed units (256 per hidden layer), so it needs
/// far more samples than the other rules (one epoch on 2000 images leaves it at chance; at its
/// defaults it needs about 5 epochs of the full training set for 70%). The smoke version
/// therefore presents the first 2000 images for 10 epochs and asserts learning well above chance
/// (41–55% on seeds 0–2 when chosen).
#[test]
fn node_perturbation_smoke() {
    if common::mnist_dir("node_perturbation").is_none() {
        return;
    }
    let (acc, loss) = smoke("stdlib/node_perturbation.circ", &["lr=0.001"], 8, 10, 2000);
    assert!(acc >= 0.30, "node_perturbation: test accuracy {acc} after 10 epochs on 2000 images");
    assert!(loss < 10f64.ln(), "node_perturbation: test loss {loss} not below chance (ln 10)");
}
