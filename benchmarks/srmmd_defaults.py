"""Benchmark: SrMMD flow defaults (issue 16): alpha / lambda and the step, vs the MMD flow.

The ``mmdflow flow`` setting (1000 particles and targets, the mixture kernel at
(1/8, 1/4, 1/2, 1) x the median bandwidth, 500 steps) on two 2-D pairs (gaussian ->
8gaussians, moons -> rings), for the MMD flow (steps 0.1 and 0.3 x bandwidth^2) and the SrMMD flow
(``SrMMDField``, velocity ``lambda grad h``, ``h = (alpha D_Q + lambda I)^-1 (mu_P - mu_Q)``)
at ``lambda`` in {10, 3, 1, 0.3, 0.1, 0.01} / bandwidth^2 with ``alpha = 1`` (the velocity depends
on ``alpha / lambda`` only: ``alpha = 0.5, lambda = 1`` is ``alpha = 1, lambda = 2``; one
such pair is run as a check) and steps in {0.1, 0.3, 0.5, 1, 3} x bandwidth^2 (``lambda grad h`` is
the MMD flow's velocity contracted by ``(I + (alpha / lambda) D_Q)^-1``: smaller ``lambda``
tolerates larger steps). Reported: final MMD^2 under the flow kernel (float32, as
``flows.run`` records it), its reduction, the same in float64 NumPy (the float32 record
cancels to 0 below ~1e-7), the final ``lambda SrMMD``, the mean CG iterations
per step over the first and the last 25 steps (warm-started), and wall time (compile
included; the machine is shared and noisy, compare within one run).

Usage:
  python benchmarks/srmmd_defaults.py            # every config at 1000 points: ~50 min on 2 loaded cores
  python benchmarks/srmmd_defaults.py --configs mmd srmmd-a1-l1-step1  # a subset
  python benchmarks/srmmd_defaults.py --n 300 --out benchmarks/results/srmmd_defaults_n300_cpu.json
  python benchmarks/srmmd_defaults.py --quick    # MMD flow and SrMMD at the defaults, 150 points, 30 steps
"""

from __future__ import annotations

import argparse
import time

import _common as common
import jax
import numpy as np

from mmdflow import data, flows, kernels
from mmdflow.fields import _srmmd

PAIRS = (("gaussian", "8gaussians"), ("moons", "rings"))
#: name -> (method, field hyperparameters (reg in units of 1 / bandwidth^2), step in units
#: of bandwidth^2)
CONFIGS = {
    "mmd": ("mmd", {}, 0.1),
    "mmd-step0.3": ("mmd", {}, 0.3),
    "srmmd-a1-l10-step0.1": ("srmmd", {"alpha": 1.0, "reg": 10.0}, 0.1),
    "srmmd-a1-l1-step0.1": ("srmmd", {"alpha": 1.0, "reg": 1.0}, 0.1),
    "srmmd-a0.5-l0.5-step0.1": ("srmmd", {"alpha": 0.5, "reg": 0.5}, 0.1),
    "srmmd-a1-l3-step0.3": ("srmmd", {"alpha": 1.0, "reg": 3.0}, 0.3),
    "srmmd-a1-l1-step0.3": ("srmmd", {"alpha": 1.0, "reg": 1.0}, 0.3),
    "srmmd-a1-l3-step1": ("srmmd", {"alpha": 1.0, "reg": 3.0}, 1.0),
    "srmmd-a1-l1-step0.5": ("srmmd", {"alpha": 1.0, "reg": 1.0}, 0.5),
    "srmmd-a1-l1-step1": ("srmmd", {"alpha": 1.0, "reg": 1.0}, 1.0),
    "srmmd-a1-l1-step3": ("srmmd", {"alpha": 1.0, "reg": 1.0}, 3.0),
    "srmmd-a1-l0.3-step3": ("srmmd", {"alpha": 1.0, "reg": 0.3}, 3.0),
    "srmmd-a1-l0.1-step0.1": ("srmmd", {"alpha": 1.0, "reg": 0.1}, 0.1),
    "srmmd-a1-l0.1-step0.3": ("srmmd", {"alpha": 1.0, "reg": 0.1}, 0.3),
    "srmmd-a1-l0.1-step1": ("srmmd", {"alpha": 1.0, "reg": 0.1}, 1.0),
    "srmmd-a1-l0.01-step1": ("srmmd", {"alpha": 1.0, "reg": 0.01}, 1.0),
}
QUICK = {
    "mmd": CONFIGS["mmd"],
    "srmmd-default": ("srmmd", {"alpha": _srmmd.ALPHA, "reg": _srmmd.REG}, _srmmd.STEP_FACTOR),
}
FACTORS = (0.125, 0.25, 0.5, 1.0)
ITER_STEPS = 25


def mmd2_f64(x, y, bandwidths) -> float:
    """Biased MMD^2 of the mixture kernel in float64 NumPy (the float32 record cancels to 0
    below ~1e-7)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)

    def mean_k(a, b):
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return sum(np.exp(-d2 / (2 * s**2)).mean() for s in bandwidths)

    return float(mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y))


def run_one(src, tgt, name, config, n, steps, quick, seed=0) -> dict:
    x0 = data.sample(src, n, seed=seed)
    y = data.sample(tgt, n, seed=seed + 1)
    bw = float(kernels.median_bandwidth(x0, y))
    bws = np.asarray([bw * f for f in FACTORS], np.float32)
    k = kernels.MixtureRBF(bws)
    method, hyper, factor = config
    hyper = dict(hyper)
    if "reg" in hyper:
        hyper["reg"] = hyper["reg"] / bw**2
    flow = flows.make(method, k, step_size=factor * bw**2, **hyper)
    t = time.perf_counter()
    state, hist = flows.run(
        flow, x0, y, num_steps=steps, key=jax.random.key(seed), record_every=max(steps // 5, 1)
    )
    wall = time.perf_counter() - t
    m = np.asarray(hist["mmd2"], np.float64)
    out = {
        "pair": f"{src}->{tgt}",
        "config": name,
        "bandwidth": bw,
        "step_factor": factor,
        "steps": int(state.count),
        "mmd2": m.tolist(),
        "reduction": float(m[0] / max(m[-1], 1e-300)),
        "mmd2_f64": [mmd2_f64(x0, y, bws), mmd2_f64(state.x, y, bws)],
        "critic": float(hist["critic"][-1]),
        "diverged": hist.get("diverged"),
        "wall_s": wall,
        "load": common.loadavg(),
    }
    if method == "srmmd" and not quick:  # CG work per step, first and last steps
        scan = jax.jit(lambda s: flows.scan(flow, s, y, ITER_STEPS)[1])
        for when, s0 in (("first", flow.init(x0, jax.random.key(seed), y=y)), ("last", state)):
            out[f"cg_iterations_{when}"] = float(np.mean(scan(s0)["cg_iterations"]))
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--n", type=int, default=None, help="points per set (default 1000)")
    p.add_argument("--steps", type=int, default=None, help="flow steps (default 500)")
    p.add_argument("--configs", nargs="*", default=None, help="a subset of CONFIGS")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    n, steps = (150, 30) if a.quick else (1000, 500)
    n, steps = a.n or n, a.steps or steps
    configs = QUICK if a.quick else CONFIGS
    if a.configs:
        configs = {c: CONFIGS[c] for c in a.configs}
    run = lambda s, t, name: run_one(s, t, name, configs[name], n, steps, a.quick)
    out, path = common.pair_sweep("srmmd_defaults", a.out, a.quick, n, steps, PAIRS, configs, run)
    print(
        "| pair | config | final MMD² | reduction | float64 final MMD² (reduction) | λ SrMMD "
        "| CG its (first, last) | wall s |\n|---|---|---:|---:|---:|---:|---|---:|"
    )
    for r in out["records"]:
        its, f64 = "-", r["mmd2_f64"]
        if "cg_iterations_first" in r:
            its = f"{r['cg_iterations_first']:.0f}, {r['cg_iterations_last']:.0f}"
        print(
            f"| {r['pair']} | {r['config']} | {r['mmd2'][-1]:.2e} | {r['reduction']:.3g}x "
            f"| {f64[1]:.2e} ({f64[0] / f64[1]:.3g}x) | {r['critic']:.3g} | {its} "
            f"| {r['wall_s']:.0f} |"
        )
    print(f"\nwrote {path}")
    return out


if __name__ == "__main__":
    main()
