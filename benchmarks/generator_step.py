"""Benchmark: one generator training step per direction vs batch size and parameter count.

For each direction (``kind`` or ``kind:solver``, e.g. ``grad-penalty:cg``), batch size M and
MLP width (generator 2 -> width -> width -> 2, so P = width^2 + 5 width + 2), reports:
compile + first step time, the median time of a jitted ``GeneratorTrainer.step`` over
``--repeats`` steps, the CG iterations that step used (its cap is ``--cg-maxiter``), and,
for the CG-based solves, the iterations CG *needs* to reach relative residuals 1e-1, 1e-2
and 1e-4 on the same batch (one extra direction solve with a 500-iteration cap; 500 means
not reached).

Default sweep: batch sizes at width 64, then widths at batch 256. ``--grid`` runs the full
cross product. JSON to ``--out`` (default ``benchmarks/results/generator_step_<backend>.json``),
markdown rows to stdout.

Usage:
  python benchmarks/generator_step.py --quick
  python benchmarks/generator_step.py                       # default sweep
  python benchmarks/generator_step.py --batch 128 512 --width 64 256 --grid
"""

from __future__ import annotations

import argparse
import statistics
import time

import _common as common
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mmdflow import data, kernelized, kernels, train

DIRECTIONS = (
    "kernelized",
    "param-sobolev",
    "param-sobolev:cg",
    "grad-penalty",
    "grad-penalty:cg",
    "mmd-gd",
)
NEED_TOLS = (1e-1, 1e-2, 1e-4)
NEED_CAP = 500


def _needed_iterations(tr, state, y, kind, solver):
    """CG iterations to reach each of ``NEED_TOLS`` on one batch (NEED_CAP = not reached)."""
    z = jax.random.normal(jax.random.key(1), (tr.batch_size, tr.dz))
    yb = y[: tr.batch_size]

    @jax.jit
    def solve(params, tol):
        _, info = kernelized.direction(
            tr.gen_fn,
            params,
            z,
            yb,
            tr.kernel,
            tr.reg,
            kind=kind,
            solver=solver,
            cg_tol=tol,
            cg_maxiter=NEED_CAP,
        )
        return info["cg_iterations"]

    return {f"{t:g}": int(solve(state.params, jnp.asarray(t, jnp.float32))) for t in NEED_TOLS}


def bench_one(spec, batch, width, repeats, cg_maxiter):
    kind, _, solver = spec.partition(":")
    solver = solver or "auto"
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
        solver=solver,
    )
    y = jnp.asarray(data.sample("8gaussians", 4096, seed=0))
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
    dense = solver == "cholesky" or (solver == "auto" and 2 * batch <= 4096)
    uses_cg = kind == "kernelized" or (kind in ("param-sobolev", "grad-penalty") and not dense)
    needed = None
    if uses_cg and kind != "grad-penalty":  # exact_critic's CG does not report iterations
        needed = _needed_iterations(tr, state, y, kind, solver)
    used = {"kernelized": "cg", "mmd-gd": "-"}.get(kind, "cholesky" if dense else "cg")
    return {
        "direction": spec,
        "kind": kind,
        "solver": used,
        "batch_size": batch,
        "width": width,
        "num_params": params,
        "compile_plus_first_s": first,
        "step_ms_median": 1e3 * statistics.median(times),
        "step_ms_min": 1e3 * min(times),
        "cg_maxiter": cg_maxiter,
        "cg_iterations_median": statistics.median(iters),
        "cg_iterations_needed": needed,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sweep (< 1 min on a 2-core CPU)")
    p.add_argument("--batch", type=int, nargs="+", default=None)
    p.add_argument("--width", type=int, nargs="+", default=None)
    p.add_argument("--grid", action="store_true", help="full batch x width cross product")
    p.add_argument("--directions", nargs="+", default=list(DIRECTIONS))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cg-maxiter", type=int, default=train.GeneratorTrainer.cg_maxiter)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if a.quick:
        pairs = [(64, 32), (256, 32)]
    elif a.grid or a.batch or a.width:
        pairs = [(b, w) for b in a.batch or [128, 512, 2048] for w in a.width or [64, 256, 1024]]
    else:
        pairs = [(b, 64) for b in (128, 512, 2048)] + [(256, w) for w in (64, 256, 1024)]
    repeats = 2 if a.quick else a.repeats
    print("| direction | batch | width | P | compile+first s | step ms | CG iters | CG needed |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    records = []
    for spec in a.directions:
        for b, w in pairs:
            r = bench_one(spec, b, w, repeats, a.cg_maxiter)
            records.append(r)
            need = r["cg_iterations_needed"]
            need = "-" if need is None else " / ".join(str(v) for v in need.values())
            print(
                f"| {spec} | {b} | {w} | {r['num_params']} | {r['compile_plus_first_s']:.2f} | "
                f"{r['step_ms_median']:.1f} | {r['cg_iterations_median']} | {need} |",
                flush=True,
            )
    meta = {
        **common.environment("device", "platform", "jax", "python", "date", "cpu_count"),
        "loadavg": common.loadavg(ndigits=None),
        "kernel": "MixtureRBF((0.1, 0.3, 1.0))",
        "reg": 1e-2,
        "cg_tol": train.GeneratorTrainer.cg_tol,
        "cg_iterations_needed": f"relative residuals {NEED_TOLS}, cap {NEED_CAP}",
    }
    out = common.write_json(
        a.out or common.default_out("generator_step"), {"meta": meta, "records": records}
    )
    print(f"wrote {out}")
    return records


if __name__ == "__main__":
    main()
