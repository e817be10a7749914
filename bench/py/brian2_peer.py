"""Brian2 peer of workload (d): the STDP network of stdlib/stdp.circ (Song, Miller & Abbott
2000): 1000 Poisson inputs at 15 Hz onto one conductance-based LIF neuron (tau_m 10 ms,
E_L -74 mV, V_th -54 mV, V_reset -60 mV, E_exc 0 mV, tau_exc 5 ms, no refractory period), g
in units of the leak conductance, additive STDP through traces (tau+ = tau- = 20 ms,
A+ = 0.01 g_max, A- = 1.05 A+), weights clipped to [0, g_max = 0.01], initial weights uniform
in [0, g_max], dt 0.1 ms, the membrane integrated exponentially with g held over a step (as
circ's exact integration does).

--mode runtime: Brian2's runtime device (Cython code generation). Its code generation and
compilation happen when a run starts; they are timed separately by a run of 0 ms first.
--mode cpp_standalone: the whole simulation as a C++ project: `build_seconds` is code
generation + compilation (device.build with run=False), `sim_seconds` the simulation loop as
Brian2's own timer reports it, `process_seconds` the whole binary (start-up, set-up, writing
results).
Prints one JSON line with sim_seconds, simulated seconds per wall second, and the end state
(post-synaptic rate, mean weight, fractions of weights in the outer tenths) as a sanity check.
"""

import argparse
import json
import os
import shutil
import tempfile
import time

import brian2 as b2
from brian2 import Hz, NeuronGroup, PoissonGroup, SpikeMonitor, Synapses, mV, ms, second


def build(duration_s, seed):
    b2.seed(seed)
    b2.defaultclock.dt = 0.1 * ms
    n_in, rate = 1000, 15 * Hz
    tau_m, E_L, V_th, V_reset, E_exc, tau_exc = 10 * ms, -74 * mV, -54 * mV, -60 * mV, 0 * mV, 5 * ms
    tau_plus = tau_minus = 20 * ms
    g_max = 0.01
    A_plus = 0.01 * g_max
    A_minus = 1.05 * A_plus
    ns = dict(tau_m=tau_m, E_L=E_L, V_th=V_th, V_reset=V_reset, E_exc=E_exc, tau_exc=tau_exc,
              tau_plus=tau_plus, tau_minus=tau_minus, g_max=g_max, A_plus=A_plus, A_minus=A_minus)
    inp = PoissonGroup(n_in, rates=rate)
    neuron = NeuronGroup(
        1,
        """dv/dt = (E_L - v + g * (E_exc - v)) / tau_m : volt
           dg/dt = -g / tau_exc : 1""",
        threshold="v > V_th",
        reset="v = V_reset",
        method="exponential_euler",
        namespace=ns,
    )
    neuron.v = E_L
    syn = Synapses(
        inp,
        neuron,
        """w : 1
           dxpre/dt = -xpre / tau_plus : 1 (event-driven)
           dypost/dt = -ypost / tau_minus : 1 (event-driven)""",
        on_pre="""g_post += w
                  xpre += 1
                  w = clip(w - A_minus * ypost, 0, g_max)""",
        on_post="""ypost += 1
                   w = clip(w + A_plus * xpre, 0, g_max)""",
        namespace=ns,
    )
    syn.connect()
    syn.w = "rand() * g_max"
    spikes = SpikeMonitor(neuron)
    net = b2.Network(inp, neuron, syn, spikes)
    return net, syn, spikes, g_max


def summary(syn, spikes, g_max, duration_s):
    import numpy as np

    w = np.asarray(syn.w[:]) / g_max
    return {
        "post_rate_hz": float(spikes.num_spikes) / duration_s,
        "mean_w": float(w.mean()),
        "near_zero": float((w < 0.1).mean()),
        "near_max": float((w > 0.9).mean()),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mode", choices=["runtime", "cpp_standalone"], default="runtime")
    p.add_argument("--seconds", type=float, default=100.0, help="simulated seconds")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    out = {"peer": f"brian2_{a.mode}", "simulated_seconds": a.seconds, "brian2": b2.__version__}
    if a.mode == "runtime":
        b2.prefs.codegen.target = "cython"
        net, syn, spikes, g_max = build(a.seconds, a.seed)
        t0 = time.perf_counter()
        net.run(0 * ms)  # code generation and (cached) Cython compilation
        out["build_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        net.run(a.seconds * second)
        out["sim_seconds"] = time.perf_counter() - t0
    else:
        d = tempfile.mkdtemp(prefix="brian2_standalone_")
        try:
            b2.set_device("cpp_standalone", build_on_run=False, directory=d)
            net, syn, spikes, g_max = build(a.seconds, a.seed)
            net.run(a.seconds * second)
            t0 = time.perf_counter()
            b2.device.build(directory=d, compile=True, run=False)
            out["build_seconds"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            b2.device.run(directory=d, with_output=False)
            out["process_seconds"] = time.perf_counter() - t0
            out["sim_seconds"] = float(b2.device._last_run_time)
            out.update(summary(syn, spikes, g_max, a.seconds))
        finally:
            shutil.rmtree(d, ignore_errors=True)
    if "post_rate_hz" not in out:
        out.update(summary(syn, spikes, g_max, a.seconds))
    out["sim_per_wall"] = a.seconds / out["sim_seconds"]
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
