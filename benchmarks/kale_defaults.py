"""Benchmark: KALE flow defaults (issue 16): regularization lambda and step size, vs the MMD flow.

The ``mmdflow flow`` setting (1000 particles and targets, the mixture kernel at
(1/8, 1/4, 1/2, 1) x the median bandwidth, 500 steps) on two 2-D pairs (gaussian ->
8gaussians, moons -> rings), for the MMD flow (step 0.1 x bandwidth^2) and the KALE flow
(``KALEField``) at lambda in {0.01, 0.1, 1, 3, 10} and steps in {0.01, 0.03, 0.05, 0.1} x
bandwidth^2 (the smaller steps for the smaller lambda: the velocity ``-(1 + lambda) grad h``
steepens as lambda -> 0). Reported: final MMD^2 under the flow kernel (float32, as
``flows.run`` records it), its reduction, the final KALE value, the mean Newton and CG
iterations per step over the first and the last 25 steps (warm-started), and wall time
(compile included; the machine is shared and noisy, compare within one run).

Usage:
  python benchmarks/kale_defaults.py            # ~12 min on 2 loaded cores
  python benchmarks/kale_defaults.py --n 300 --out benchmarks/results/kale_defaults_n300_cpu.json
  python benchmarks/kale_defaults.py --quick    # MMD flow and KALE at the defaults, 150 points, 30 steps
"""

from __future__ import annotations

import argparse
import time

import _common as common
import jax
import numpy as np

from mmdflow import data, flows, kernels
from mmdflow.fields import _kale

PAIRS = (("gaussian", "8gaussians"), ("moons", "rings"))
#: name -> (method, field hyperparameters, step in units of bandwidth^2)
CONFIGS = {
    "mmd": ("mmd", {}, 0.1),
    "kale-0.01-step0.01": ("kale", {"reg": 0.01}, 0.01),
    "kale-0.1-step0.01": ("kale", {"reg": 0.1}, 0.01),
    "kale-0.1-step0.03": ("kale", {"reg": 0.1}, 0.03),
    "kale-1-step0.03": ("kale", {"reg": 1.0}, 0.03),
    "kale-1-step0.05": ("kale", {"reg": 1.0}, 0.05),
    "kale-1-step0.1": ("kale", {"reg": 1.0}, 0.1),
    "kale-3-step0.1": ("kale", {"reg": 3.0}, 0.1),
    "kale-10-step0.1": ("kale", {"reg": 10.0}, 0.1),
}
QUICK = {
    "mmd": CONFIGS["mmd"],
    "kale-default": ("kale", {"reg": _kale.REG}, _kale.STEP_FACTOR),
}
FACTORS = (0.125, 0.25, 0.5, 1.0)
ITER_STEPS = 25


def run_one(src, tgt, name, config, n, steps, quick, seed=0) -> dict:
    x0 = data.sample(src, n, seed=seed)
    y = data.sample(tgt, n, seed=seed + 1)
    bw = float(kernels.median_bandwidth(x0, y))
    k = kernels.MixtureRBF(np.asarray([bw * f for f in FACTORS], np.float32))
    method, hyper, factor = config
    flow = flows.make(method, k, step_size=factor * bw**2, **hyper)
    t = time.perf_counter()
    state, hist = flows.run(
        flow, x0, y, num_steps=steps, key=jax.random.key(seed), record_every=steps // 5
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
        "critic": float(hist["critic"][-1]),
        "diverged": hist.get("diverged"),
        "wall_s": wall,
        "load": common.loadavg(),
    }
    if method == "kale" and not quick:  # solver work per step, first and last steps
        scan = jax.jit(lambda s: flows.scan(flow, s, y, ITER_STEPS)[1])
        for when, s0 in (("first", flow.init(x0, jax.random.key(seed), y=y)), ("last", state)):
            aux = scan(s0)
            for q in ("newton_iterations", "cg_iterations"):
                out[f"{q}_{when}"] = float(np.mean(aux[q]))
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--n", type=int, default=None, help="points per set (default 1000)")
    p.add_argument("--steps", type=int, default=None, help="flow steps (default 500)")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    n, steps = (150, 30) if a.quick else (1000, 500)
    n, steps = a.n or n, a.steps or steps
    configs = QUICK if a.quick else CONFIGS
    run = lambda s, t, name: run_one(s, t, name, configs[name], n, steps, a.quick)
    out, path = common.pair_sweep("kale_defaults", a.out, a.quick, n, steps, PAIRS, configs, run)
    print(
        "| pair | config | final MMD² | reduction | KALE | Newton / CG its (first, last) "
        "| wall s |\n|---|---|---:|---:|---:|---|---:|"
    )
    for r in out["records"]:
        its = "-"
        if "newton_iterations_first" in r:
            its = (
                f"{r['newton_iterations_first']:.1f} / {r['cg_iterations_first']:.0f}, "
                f"{r['newton_iterations_last']:.1f} / {r['cg_iterations_last']:.0f}"
            )
        print(
            f"| {r['pair']} | {r['config']} | {r['mmd2'][-1]:.2e} | {r['reduction']:.3g}x "
            f"| {r['critic']:.3g} | {its} | {r['wall_s']:.0f} |"
        )
    print(f"\nwrote {path}")
    return out


if __name__ == "__main__":
    main()
