"""JAX peer of the MLP workloads (FA and backprop): one jitted function runs a whole epoch as a
`lax.scan` over the batches (plus one step on the smaller last batch, if any). Its trace and
compilation (`jit(...).lower(...).compile()`) are timed separately from training. FA's update is
written explicitly (its errors travel through the fixed matrix B); backprop uses `jax.grad`.
See common.py for the workload."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from common import Timer, init_weights, load_mnist, one_hot, parse, report  # noqa: E402


def forward(ws, x):
    acts, pres = [x], []
    h = x
    for w in ws[:-1]:
        a = h @ w.T
        pres.append(a)
        h = jax.nn.relu(a)
        acts.append(h)
    return acts, pres, h @ ws[-1].T


def make_step(model, lr):
    def loss_fn(ws, x, y):
        _, _, oa = forward(ws, x)
        return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(oa), axis=1)), oa

    def step(carry, batch):
        ws, b, correct = carry
        x, y = batch
        if model == "bp":
            grads, oa = jax.grad(loss_fn, has_aux=True)(ws, x, y)
        else:
            acts, pres, oa = forward(ws, x)
            delta = jax.nn.softmax(oa) - y
            grads = []
            for layer in range(len(ws) - 1, -1, -1):
                grads.append(delta.T @ acts[layer] / x.shape[0])
                if layer > 0:
                    delta = (delta @ b.T) * (pres[layer - 1] > 0)
            grads = grads[::-1]
        ws = [w - lr * g for w, g in zip(ws, grads)]
        correct = correct + jnp.sum(jnp.argmax(oa, 1) == jnp.argmax(y, 1))
        return (ws, b, correct), None

    return step


def main():
    args = parse(__doc__)
    xtr, ytr, xte, yte = load_mnist(args.limit)
    ws, b = init_weights(args.model, args.hidden, args.seed)
    if b is None:
        b = np.zeros((1, 1), np.float32)
    ytr1 = one_hot(ytr)
    n, bs = len(xtr), args.batch
    full = n // bs
    step = make_step(args.model, np.float32(args.lr))

    def epoch(ws, b, xs, ys):
        (ws, b, correct), _ = jax.lax.scan(step, (ws, b, jnp.int32(0)), (xs, ys))
        return ws, correct

    def last(ws, b, x, y):
        (ws, b, correct), _ = step((ws, b, jnp.int32(0)), (x, y))
        return ws, correct

    xs = jax.device_put(xtr[: full * bs].reshape(full, bs, -1))
    ys = jax.device_put(ytr1[: full * bs].reshape(full, bs, -1))
    xr, yr = jax.device_put(xtr[full * bs :]), jax.device_put(ytr1[full * bs :])
    ws = [jax.device_put(w) for w in ws]
    b = jax.device_put(b)
    t0 = time.perf_counter()
    epoch_c = jax.jit(epoch, donate_argnums=0).lower(ws, b, xs, ys).compile()
    last_c = jax.jit(last, donate_argnums=0).lower(ws, b, xr, yr).compile() if len(xr) else None
    compile_seconds = time.perf_counter() - t0
    correct = 0
    with Timer() as t:
        for _ in range(args.epochs):
            ws, correct = epoch_c(ws, b, xs, ys)
            if last_c is not None:
                ws, c2 = last_c(ws, b, xr, yr)
                correct = correct + c2
            jax.block_until_ready(ws)
    _, _, oa = forward([np.asarray(w) for w in ws], xte)
    report("jax", args, t, (oa.argmax(axis=1) == yte).mean(), int(correct) / n,
           compile_seconds=compile_seconds, jax=jax.__version__)


if __name__ == "__main__":
    main()
