#!/usr/bin/env python3
"""Measures the supervised standard-library programs on MNIST and writes docs/results.md.

Every number in the table comes from a run of the release binary made by this script:
`circ run stdlib/NAME.circ --json --seed S` at the program's defaults for seeds 0, 1, 2, plus
the online feedback-alignment workload of the performance issue. The locality tier comes
from `circ check --json`; architecture, optimiser, epochs and batch are read from the program's
params and experiment block. The file is written atomically (temporary file + rename).

    cargo build --release
    CIRC_MNIST_DIR=/path/to/mnist python3 bench/results.py

Options: --circ PATH (default target/release/circ), --data-dir DIR (default $CIRC_MNIST_DIR),
--seeds 0,1,2, --only bp,fa (a subset), --out FILE (default docs/results.md), and --extra ARG
(repeatable; appended to every run, e.g. `--extra=--epochs --extra=1` to try the script quickly,
with --out elsewhere: such a table does not measure the defaults).
Python 3 standard library only.
"""

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import re
import shlex
import statistics
import subprocess
import sys
import tempfile

circ_bin = None
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The supervised programs and the targets of issue 5 (test accuracy, %, 3 seeds, mean).
PROGRAMS = [
    ("bp", 98.0),
    ("kp", 97.8),
    ("sign_symmetry", 97.5),
    ("fa", 97.0),
    ("dfa", 97.0),
    ("node_perturbation", None),
]

# The online workload of the performance issue: one hidden layer of 256, plain SGD at lr 0.01,
# batch 1, the training images in file order, one epoch.
ONLINE_ARGS = ["--set", "depth=1", "--set", "hidden=256", "--set", "lr=0.01", "--set", "momentum=0",
               "--no-shuffle", "--batch", "1", "--epochs", "1"]
ONLINE_TARGET = 94.0

# Monitors reported with the table: (program, monitor, kind, target in degrees or None).
# kind "angle" is already in degrees; "cos" is a cosine, reported as the angle acos(cos).
MONITORS = [
    ("fa", "angle_bp", "angle", 60.0, "hidden error of FA vs the error backprop would send (last layer)"),
    ("dfa", "angle_bp", "angle", None, "hidden error of DFA vs backprop's (last hidden layer)"),
    ("sign_symmetry", "angle_bp", "angle", None, "hidden error vs backprop's (last hidden layer)"),
    ("kp", "angle_bp", "angle", None, "hidden error vs backprop's (last hidden layer)"),
    ("kp", "cos_fb", "cos", 10.0, "feedback matrix Bo vs transposed forward matrix Woᵀ"),
    ("kp", "cos_fb1", "cos", 10.0, "feedback matrix B[1] vs transposed forward matrix W[2]ᵀ"),
]


def die(msg):
    print(f"results.py: {msg}", file=sys.stderr)
    sys.exit(1)


def sh(cmd):
    # `$CIRC_MNIST_DIR` stays a variable for the shell in the listed commands.
    return " ".join('"$CIRC_MNIST_DIR"' if c == "$CIRC_MNIST_DIR" else shlex.quote(c) for c in cmd)


def read_defaults(path):
    """Params and experiment entries of a program, read from its text."""
    text = open(path, encoding="utf-8").read()
    code = re.sub(r"//[^\n]*", "", text)
    params = dict(re.findall(r"^\s*param\s+(\w+)\s*(?::\s*\w+)?\s*=\s*([^\s;]+)", code, re.M))
    exp = {}
    m = re.search(r"experiment\s*\{(.*?)\}", code, re.S)
    if m:
        exp = dict(re.findall(r"(\w+)\s*=\s*([^\s;,]+)", m.group(1)))
    return params, exp


def describe(params, exp):
    hidden, depth = params.get("hidden", "?"), params.get("depth", "?")
    try:
        arch = "784-" + "-".join([hidden] * int(depth)) + "-10 ReLU"
    except ValueError:
        arch = f"784-{hidden}x{depth}-10 ReLU"
    mom = params.get("momentum", "0")
    opt = f"SGD, lr {params.get('lr', '?')}" + (f", momentum {mom}" if float(mom) > 0 else "")
    extra = [f"{k} {v}" for k, v in params.items() if k not in ("hidden", "depth", "lr", "momentum")]
    if extra:
        opt += ", " + ", ".join(extra)
    return arch, opt, exp.get("epochs", "?"), exp.get("batch", "?")


def run(cmd, keep=None):
    """Runs `circ run ... --json --out DIR`; returns (final JSON, metrics records). With `keep`,
    the run's plots (PNG) are copied into that directory."""
    with tempfile.TemporaryDirectory(prefix="circ-results-") as out:
        full = [circ_bin] + cmd[1:] + ["--out", out]
        print("  $", sh(cmd), flush=True)
        p = subprocess.run(full, cwd=ROOT, capture_output=True, text=True)
        if p.returncode != 0:
            die(f"`{sh(cmd)}` failed ({p.returncode}):\n{p.stderr[-3000:]}")
        lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
        if not lines:
            die(f"`{sh(cmd)}` printed no JSON")
        final = json.loads(lines[-1])
        records = []
        mpath = os.path.join(out, "metrics.jsonl")
        if os.path.exists(mpath):
            with open(mpath, encoding="utf-8") as f:
                records = [json.loads(l) for l in f if l.strip()]
        if keep:
            os.makedirs(keep, exist_ok=True)
            for f in sorted(os.listdir(out)):
                if f.endswith(".png"):
                    shutil.copyfile(os.path.join(out, f), os.path.join(keep, f))
        return final, records


def mean_sd(xs):
    if not xs:
        return float("nan"), float("nan")
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def fmt(xs, digits=2):
    m, s = mean_sd(xs)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def monitor_values(records, name, kind):
    """(value at the end of the first epoch, final value) of one monitor, in degrees."""
    conv = (lambda v: math.degrees(math.acos(max(-1.0, min(1.0, v))))) if kind == "cos" else (lambda v: v)
    vals = [(r["epoch"], r[name]) for r in records if name in r]
    if not vals:
        return None, None
    first = [v for e, v in vals if e == 0]
    return (conv(first[-1]) if first else None), conv(vals[-1][1])


def cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit():
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return rev + (" (with uncommitted changes)" if dirty else "")
    except OSError:
        return "unknown"


def write_atomic(path, text):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".results-", suffix=".md", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--circ", default=os.path.join(ROOT, "target", "release", "circ"))
    ap.add_argument("--data-dir", default=os.environ.get("CIRC_MNIST_DIR"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--only", default="")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "results.md"))
    ap.add_argument("--extra", action="append", default=[])
    args = ap.parse_args()

    if not os.access(args.circ, os.X_OK):
        die(f"no binary at {args.circ}: run `cargo build --release` first")
    if not args.data_dir or not os.path.isdir(args.data_dir):
        die("no MNIST: set CIRC_MNIST_DIR or pass --data-dir (get it with `circ data fetch mnist --to DIR`)")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    only = {s for s in args.only.split(",") if s}
    # Commands are shown with the default binary path; they run with --circ.
    global circ_bin
    circ_bin = args.circ
    circ = "target/release/circ"
    plots = os.path.join(os.path.dirname(os.path.abspath(args.out)), "results")
    data = ["--data-dir", args.data_dir]

    rows, mons, commands = [], [], []
    results = {}
    for name, target in PROGRAMS:
        if only and name not in only:
            continue
        prog = f"stdlib/{name}.circ"
        chk = subprocess.run([circ_bin, "check", "--json", prog], cwd=ROOT, capture_output=True, text=True)
        try:
            info = json.loads(chk.stdout.splitlines()[0])
        except (IndexError, json.JSONDecodeError):
            die(f"`circ check --json {prog}` printed no JSON:\n{chk.stderr[-2000:]}")
        if not info.get("ok"):
            die(f"{prog} does not check: {info.get('diagnostics')}")
        params, exp = read_defaults(os.path.join(ROOT, prog))
        arch, opt, epochs, batch = describe(params, exp)
        print(f"{name}: tier {info['tier']}, {arch}, {opt}, {epochs} epochs, batch {batch}", flush=True)
        accs, secs, runs = [], [], []
        for s in seeds:
            cmd = [circ, "run", prog, "--json", "--seed", str(s)] + data + args.extra
            # The first seed's plots (learning curves, monitors) go beside the document.
            final, records = run(cmd, keep=os.path.join(plots, name) if s == seeds[0] else None)
            accs.append(100.0 * final["test_acc"])
            secs.append(final["train_seconds"] / max(1, final["epochs"]))
            runs.append(records)
            print(f"    seed {s}: test accuracy {100 * final['test_acc']:.2f}%", flush=True)
        commands.append(sh([circ, "run", prog, "--json", "--seed", "S", "--data-dir", "$CIRC_MNIST_DIR"] + args.extra))
        results[name] = accs
        ok = "" if target is None else ("yes" if statistics.mean(accs) >= target else "**no**")
        rows.append((name, info["tier"], arch, opt, epochs, batch, fmt(accs), target, ok, statistics.mean(secs)))
        for prog_m, mon, kind, mtarget, what in MONITORS:
            if prog_m != name:
                continue
            firsts, finals = [], []
            for records in runs:
                a, b = monitor_values(records, mon, kind)
                if a is not None:
                    firsts.append(a)
                if b is not None:
                    finals.append(b)
            if finals:
                mons.append((name, mon, kind, what, firsts, finals, mtarget))

    online = None
    if not only or "fa_online" in only:
        prog = "stdlib/fa.circ"
        print("fa online workload", flush=True)
        accs, secs = [], []
        for s in seeds:
            cmd = [circ, "run", prog, "--json", "--seed", str(s)] + ONLINE_ARGS + data
            final, _ = run(cmd)
            accs.append(100.0 * final["test_acc"])
            secs.append(final["train_seconds"])
            print(f"    seed {s}: test accuracy {100 * final['test_acc']:.2f}%", flush=True)
        commands.append(sh([circ, "run", prog, "--json", "--seed", "S"] + ONLINE_ARGS + ["--data-dir", "$CIRC_MNIST_DIR"]))
        online = (accs, statistics.mean(secs))

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = []
    out.append("# Results: the supervised standard library on MNIST\n")
    out.append("Generated by `python3 bench/results.py`; do not edit by hand. Every number below was "
               "measured by that script from runs of the release binary.\n")
    out.append(f"- date: {now}")
    out.append(f"- commit: {git_commit()}")
    out.append(f"- machine: {os.cpu_count()} CPUs (`nproc`), {cpu_model()}, {platform.system()} {platform.release()}")
    out.append(f"- seeds: {', '.join(map(str, seeds))}; test accuracy on the 10,000 MNIST test images after the last "
               "epoch, mean ± sample sd over the seeds")
    if args.extra:
        out.append(f"- **extra arguments on every run: `{sh(args.extra)}` (not the programs' defaults)**")
    out.append("")
    out.append("Every program: softmax cross-entropy output error, forward weights uniform in ±1/sqrt(fan_in), "
               "the training set shuffled every epoch; the settings are the program's defaults (its params and "
               "experiment block; its header explains them).\n")
    out.append("s/epoch is wall-clock training time per epoch on a machine shared with other work, so it is "
               "only indicative.\n")
    out.append("| program | tier | architecture | optimiser | epochs | batch | test accuracy (%) | target (%) | met | s/epoch |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for name, tier, arch, opt, epochs, batch, acc, target, ok, sec in rows:
        t = "—" if target is None else f"≥ {target:.1f}"
        out.append(f"| [{name}](../stdlib/{name}.circ) | {tier} | {arch} | {opt} | {epochs} | {batch} | {acc} | {t} | {ok or '—'} | {sec:.1f} |")
    out.append("")
    if online:
        accs, sec = online
        ok = "yes" if statistics.mean(accs) >= ONLINE_TARGET else "**no**"
        out.append("## Online feedback alignment\n")
        out.append("The workload of the performance issue: fa.circ with one hidden layer of 256 ReLU units, forward "
                   "weights uniform in ±1/sqrt(fan_in), feedback uniform in ±1/sqrt(256), plain SGD (no momentum, "
                   "no decay) at lr 0.01, batch 1, the 60,000 training images in file order (`--no-shuffle`), one "
                   "epoch. The seed changes only the initial weights.\n")
        out.append("| test accuracy (%) | target (%) | met | training time (s) |")
        out.append("|---|---|---|---|")
        out.append(f"| {fmt(accs)} | ≥ {ONLINE_TARGET:.1f} | {ok} | {sec:.1f} |")
        out.append("")
    if mons:
        out.append("## Monitors\n")
        out.append("Recorded during the runs above (about 20 times per epoch), in degrees, mean ± sd over the seeds. "
                   "`cos` monitors are cosines between whole matrices, reported here as the angle acos(cos).\n")
        out.append("| program | monitor | measures | after epoch 1 (°) | final (°) | target |")
        out.append("|---|---|---|---|---|---|")
        for name, mon, kind, what, firsts, finals, mtarget in mons:
            if mtarget is None:
                t = "—"
            elif mon == "angle_bp":
                met = firsts and statistics.mean(firsts) < mtarget
                t = f"< {mtarget:.0f}° within epoch 1: {'yes' if met else '**no**'}"
            else:
                met = statistics.mean(finals) < mtarget
                t = f"< {mtarget:.0f}°: {'yes' if met else '**no**'}"
            out.append(f"| {name} | `{mon}` | {what} | {fmt(firsts, 1) if firsts else '—'} | {fmt(finals, 1)} | {t} |")
        out.append("")
        out.append(f"Plots of the seed-{seeds[0]} runs (monitors every ~1/20 epoch; `cos` monitors as cosines):\n")
        for name, mon, *_ in mons:
            out.append(f"- {name} `{mon}`: ![{name} {mon}](results/{name}/monitor_{mon}.png)")
        out.append("")
        out.append("Learning curves (seed " + str(seeds[0]) + "): "
                   + ", ".join(f"[{n}](results/{n}/accuracy.png)" for n, *_ in rows) + ".\n")
    out.append("## Commands\n")
    out.append("Run from the repository root after `cargo build --release`, for S in " + ", ".join(map(str, seeds))
               + " (the script adds `--out` to a temporary directory to read the monitors):\n")
    out.append("```sh")
    for name, *_ in rows:
        out.append(f"{sh([circ, 'check', '--json', f'stdlib/{name}.circ'])}")
    out.extend(commands)
    out.append("```")
    write_atomic(args.out, "\n".join(out) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
