"""Shared by the Python peers: MNIST loading, the models' initial weights, argument parsing and
the JSON line every peer prints.

The workloads are those of circ's stdlib programs (stdlib/fa.circ, stdlib/bp.circ) as the
benchmark runs them: 784 -> hidden (x depth, ReLU) -> 10 without biases, forward weights uniform
in ±1/sqrt(fan_in), FA's fixed feedback matrix uniform in ±1/sqrt(hidden), softmax
cross-entropy, plain SGD on the batch mean, samples in file order, the last batch of an epoch
possibly smaller (its mean is over its own size, as circ's driver does).
"""

import argparse
import gzip
import json
import os
import struct
import time

import numpy as np


def load_idx(path):
    for p in (path + ".gz", path):
        if os.path.exists(p):
            opener = gzip.open if p.endswith(".gz") else open
            with opener(p, "rb") as f:
                data = f.read()
            break
    else:
        raise FileNotFoundError(path)
    magic, n = struct.unpack(">II", data[:8])
    if magic == 0x803:
        rows, cols = struct.unpack(">II", data[8:16])
        return np.frombuffer(data, np.uint8, offset=16).reshape(n, rows * cols)
    if magic == 0x801:
        return np.frombuffer(data, np.uint8, offset=8)
    raise ValueError(f"bad IDX magic in {path}")


def load_mnist(limit=None):
    d = os.environ.get("CIRC_MNIST_DIR")
    if not d:
        raise SystemExit("set CIRC_MNIST_DIR to the directory with the MNIST IDX files")
    xtr = load_idx(os.path.join(d, "train-images-idx3-ubyte")).astype(np.float32) / np.float32(255)
    ytr = load_idx(os.path.join(d, "train-labels-idx1-ubyte")).astype(np.int64)
    xte = load_idx(os.path.join(d, "t10k-images-idx3-ubyte")).astype(np.float32) / np.float32(255)
    yte = load_idx(os.path.join(d, "t10k-labels-idx1-ubyte")).astype(np.int64)
    if limit:
        xtr, ytr = xtr[:limit], ytr[:limit]
    return xtr, ytr, xte, yte


def one_hot(y, k=10):
    out = np.zeros((len(y), k), np.float32)
    out[np.arange(len(y)), y] = 1
    return out


def init_weights(model, hidden, seed, depth=None):
    """The weight matrices, [fan_out, fan_in] as in circ: forward Ws (input first, output
    last) and, for FA, the feedback matrix B [hidden, 10]."""
    rng = np.random.default_rng(seed)
    depth = depth or (1 if model == "fa" else 2)
    sizes = [784] + [hidden] * depth + [10]
    ws = [(rng.uniform(-1, 1, (o, i)) / np.sqrt(i)).astype(np.float32) for i, o in zip(sizes[:-1], sizes[1:])]
    b = (rng.uniform(-1, 1, (hidden, 10)) / np.sqrt(hidden)).astype(np.float32) if model == "fa" else None
    return ws, b


def parse(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", choices=["fa", "bp"], default="fa")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


class Timer:
    """Wall and process CPU time of a block."""

    def __enter__(self):
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0


def report(peer, args, train, test_acc, train_acc, **extra):
    out = {
        "peer": peer,
        "model": args.model,
        "hidden": args.hidden,
        "batch": args.batch,
        "train_seconds": train.wall,
        "train_cpu_seconds": train.cpu,
        "train_acc": float(train_acc),
        "test_acc": float(test_acc),
    }
    out.update(extra)
    print(json.dumps(out), flush=True)
