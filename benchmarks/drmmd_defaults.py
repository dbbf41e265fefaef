"""Benchmark: DrMMD flow defaults (issue 16): ridge lambda, fixed vs adaptive, vs the MMD flow.

The ``mmdflow flow`` setting (1000 particles and targets, the mixture kernel at
(1/8, 1/4, 1/2, 1) x the median bandwidth, 500 steps, step 0.1 x bandwidth^2 as the MMD flow)
on two 2-D pairs (gaussian -> 8gaussians, moons -> rings), for the MMD flow and DrMMD at
lambda in {0.01, 0.1, 1} fixed and at lambda_0 in {0.1, 1} adaptive (the paper's schedule,
``DrMMDField(adaptive=True)``). Reported: final MMD^2 under the flow kernel (float32, as
``flows.run`` records it), its reduction, and wall time (compile included; the machine is
shared and noisy, compare within one run).

Usage:
  python benchmarks/drmmd_defaults.py            # ~6 min on 2 loaded cores
  python benchmarks/drmmd_defaults.py --quick    # 60 steps, 300 points
"""

from __future__ import annotations

import argparse
import time

import _common as common
import jax
import numpy as np

from mmdflow import data, flows, kernels
from mmdflow.fields import _mmd

PAIRS = (("gaussian", "8gaussians"), ("moons", "rings"))
CONFIGS = {
    "mmd": ("mmd", {}),
    "drmmd-0.01": ("drmmd", {"reg": 0.01}),
    "drmmd-0.1": ("drmmd", {"reg": 0.1}),
    "drmmd-1": ("drmmd", {"reg": 1.0}),
    "drmmd-adaptive-0.1": ("drmmd", {"reg": 0.1, "adaptive": True}),
    "drmmd-adaptive-1": ("drmmd", {"reg": 1.0, "adaptive": True}),
}
FACTORS = (0.125, 0.25, 0.5, 1.0)


def run_one(src, tgt, name, n, steps, seed=0) -> dict:
    x0 = data.sample(src, n, seed=seed)
    y = data.sample(tgt, n, seed=seed + 1)
    bw = float(kernels.median_bandwidth(x0, y))
    k = kernels.MixtureRBF(np.asarray([bw * f for f in FACTORS], np.float32))
    method, hyper = CONFIGS[name]
    flow = flows.make(method, k, step_size=_mmd.STEP_FACTOR * bw**2, **hyper)
    t = time.perf_counter()
    state, hist = flows.run(
        flow, x0, y, num_steps=steps, key=jax.random.key(seed), record_every=steps // 5
    )
    wall = time.perf_counter() - t
    m = np.asarray(hist["mmd2"], np.float64)
    return {
        "pair": f"{src}->{tgt}",
        "config": name,
        "bandwidth": bw,
        "steps": int(state.count),
        "mmd2": m.tolist(),
        "reduction": float(m[0] / max(m[-1], 1e-300)),
        "diverged": hist.get("diverged"),
        "wall_s": wall,
        "load": common.loadavg(),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    n, steps = (300, 60) if a.quick else (1000, 500)
    run = lambda s, t, name: run_one(s, t, name, n, steps)
    out, path = common.pair_sweep("drmmd_defaults", a.out, a.quick, n, steps, PAIRS, CONFIGS, run)
    print("| pair | config | final MMD² | reduction | wall s |\n|---|---|---:|---:|---:|")
    for r in out["records"]:
        print(
            f"| {r['pair']} | {r['config']} | {r['mmd2'][-1]:.2e} | {r['reduction']:.3g}x "
            f"| {r['wall_s']:.0f} |"
        )
    print(f"\nwrote {path}")
    return out


if __name__ == "__main__":
    main()
