"""PyTorch peer (CPU, eager) of the MLP workloads: FA with an explicit update under
`torch.no_grad()` (its errors travel through the fixed matrix B), backprop with autograd and
`torch.optim.SGD` (plain: no momentum, no decay). See common.py for the workload."""

import torch

from common import Timer, init_weights, load_mnist, one_hot, parse, report


def main():
    args = parse(__doc__)
    xtr, ytr, xte, yte = load_mnist(args.limit)
    ws_np, b_np = init_weights(args.model, args.hidden, args.seed)
    ytr1 = one_hot(ytr)
    xs, ys, labels = torch.from_numpy(xtr), torch.from_numpy(ytr1), torch.from_numpy(ytr)
    n, bs, lr = len(xtr), args.batch, args.lr
    ws = [torch.from_numpy(w.copy()) for w in ws_np]
    correct = 0
    if args.model == "fa":
        b = torch.from_numpy(b_np)
        with torch.no_grad(), Timer() as t:
            for _ in range(args.epochs):
                correct = 0
                for lo in range(0, n, bs):
                    x, y = xs[lo : lo + bs], ys[lo : lo + bs]
                    acts, pres, h = [x], [], x
                    for w in ws[:-1]:
                        a = h @ w.T
                        pres.append(a)
                        h = torch.relu(a)
                        acts.append(h)
                    oa = h @ ws[-1].T
                    delta = torch.softmax(oa, 1) - y
                    grads = []
                    for layer in range(len(ws) - 1, -1, -1):
                        grads.append(delta.T @ acts[layer])
                        if layer > 0:
                            delta = (delta @ b.T) * (pres[layer - 1] > 0)
                    scale = lr / len(x)
                    for w, g in zip(ws, reversed(grads)):
                        w.sub_(g, alpha=scale)
                    correct += int((oa.argmax(1) == labels[lo : lo + bs]).sum())
    else:
        for w in ws:
            w.requires_grad_(True)
        opt = torch.optim.SGD(ws, lr=lr, momentum=0)
        with Timer() as t:
            for _ in range(args.epochs):
                correct = 0
                for lo in range(0, n, bs):
                    x, lab = xs[lo : lo + bs], labels[lo : lo + bs]
                    h = x
                    for w in ws[:-1]:
                        h = torch.relu(h @ w.T)
                    oa = h @ ws[-1].T
                    loss = torch.nn.functional.cross_entropy(oa, lab)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    correct += int((oa.detach().argmax(1) == lab).sum())
    with torch.no_grad():
        h = torch.from_numpy(xte)
        for w in ws[:-1]:
            h = torch.relu(h @ w.T)
        oa = h @ ws[-1].T
    report("torch", args, t, float((oa.argmax(1).numpy() == yte).mean()), correct / n,
           torch=torch.__version__, threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
