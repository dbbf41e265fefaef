"""Benchmark: one generator training step along each direction vs batch size and parameter count.

Reports, per (direction, batch size, hidden width): parameter count P, compile time,
median step time over repeats, and the CG iterations the kernelized direction used.
Writes JSON (``--out``) and prints a markdown table.

Usage:
  python benchmarks/generator_step.py --quick
  python benchmarks/generator_step.py --batch 128 512 2048 --width 64 256
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time

import jax
import numpy as np
import optax
from flax import nnx

from mmdflow import data, kernels, train


def bench_one(kind, batch, width, repeats, cg_maxiter):
    gen = train.MLPGenerator(2, 2, (width, width), rngs=nnx.Rngs(0))
    params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(gen, nnx.Param)))
    tr = train.GeneratorTrainer(
        gen,
        optax.sgd(0.5),
        kernels.MixtureRBF((0.1, 0.3, 1.0)),
        kind=kind,
        reg=1e-2,
        batch_size=batch,
        cg_maxiter=cg_maxiter,
    )
    y = jax.numpy.asarray(data.sample("8gaussians", 4096, seed=0))
    state = tr.init(jax.random.key(0))
    t0 = time.perf_counter()
    state, info = tr.step(state, y)
    jax.block_until_ready(state)
    first = time.perf_counter() - t0
    times, iters = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, info = tr.step(state, y)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t0)
        iters.append(int(info["cg_iterations"]))
    return {
        "direction": kind,
        "batch_size": batch,
        "width": width,
        "num_params": params,
        "compile_plus_first_s": first,
        "step_ms_median": 1e3 * statistics.median(times),
        "cg_iterations_median": statistics.median(iters),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sweep (< 1 min on a 2-core CPU)")
    p.add_argument("--batch", type=int, nargs="+", default=None)
    p.add_argument("--width", type=int, nargs="+", default=None)
    p.add_argument("--directions", nargs="+", default=["kernelized", "grad-penalty", "mmd-gd"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cg-maxiter", type=int, default=50)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    batches = a.batch or ([64, 256] if a.quick else [128, 512, 2048])
    widths = a.width or ([32] if a.quick else [64, 256])
    repeats = 2 if a.quick else a.repeats
    records = []
    for kind in a.directions:
        for b in batches:
            for w in widths:
                r = bench_one(kind, b, w, repeats, a.cg_maxiter)
                records.append(r)
                print(
                    f"| {kind} | {b} | {w} | {r['num_params']} | {r['compile_plus_first_s']:.2f} | "
                    f"{r['step_ms_median']:.1f} | {r['cg_iterations_median']} |",
                    flush=True,
                )
    meta = {
        "device": jax.devices()[0].device_kind,
        "platform": jax.default_backend(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
        "cpu_count": os.cpu_count(),
    }
    out = a.out or f"benchmarks/results/generator_step_{jax.default_backend()}.json"
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump({"meta": meta, "records": records}, f, indent=1)
    print(f"wrote {out}")
    return records


if __name__ == "__main__":
    main()
