//! Trained numbers on the real MNIST (skipped loudly without `CIRC_MNIST_DIR`).

mod common;

/// The online workload of the performance issue: one hidden layer of 256 ReLU units, plain
/// SGD at lr 0.01, batch 1, file order, one epoch. A plain-C version gets 94.4%.
#[test]
fn fa_online_one_epoch_reaches_94_percent() {
    if common::mnist_dir("fa_online").is_none() {
        return;
    }
    let acc = common::train_mnist("stdlib/fa.circ", &["depth=1", "hidden=256", "lr=0.01", "momentum=0"], 1, 1, None, false).test_acc;
    assert!(acc >= 0.94, "FA online accuracy {acc}");
}
