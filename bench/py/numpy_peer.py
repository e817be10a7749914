"""NumPy peer of the MLP workloads (FA and backprop): explicit forward pass, errors, and plain
SGD on the batch mean, one batch at a time in a Python loop. See common.py for the workload."""

import numpy as np

from common import Timer, init_weights, load_mnist, one_hot, parse, report


def forward(ws, x):
    acts, pres = [x], []
    h = x
    for w in ws[:-1]:
        a = h @ w.T
        pres.append(a)
        h = np.maximum(a, 0)
        acts.append(h)
    return acts, pres, h @ ws[-1].T


def train_step(ws, b, x, y, lr):
    acts, pres, oa = forward(ws, x)
    z = np.exp(oa - oa.max(axis=1, keepdims=True))
    delta = z / z.sum(axis=1, keepdims=True) - y
    scale = np.float32(lr / len(x))
    grads = []
    for layer in range(len(ws) - 1, -1, -1):
        grads.append(delta.T @ acts[layer])
        if layer > 0:
            back = delta @ b.T if b is not None else delta @ ws[layer]
            delta = back * (pres[layer - 1] > 0)
    for w, g in zip(ws, reversed(grads)):
        w -= scale * g
    return int((oa.argmax(axis=1) == y.argmax(axis=1)).sum())


def main():
    args = parse(__doc__)
    xtr, ytr, xte, yte = load_mnist(args.limit)
    ws, b = init_weights(args.model, args.hidden, args.seed)
    if args.model == "bp":
        b = None
    ytr1 = one_hot(ytr)
    n, bs = len(xtr), args.batch
    correct = 0
    with Timer() as t:
        for _ in range(args.epochs):
            correct = 0
            for lo in range(0, n, bs):
                correct += train_step(ws, b, xtr[lo : lo + bs], ytr1[lo : lo + bs], args.lr)
    _, _, oa = forward(ws, xte)
    report("numpy", args, t, (oa.argmax(axis=1) == yte).mean(), correct / n, numpy=np.__version__)


if __name__ == "__main__":
    main()
