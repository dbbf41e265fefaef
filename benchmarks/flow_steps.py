"""Benchmark of one particle-flow step: compile time, run time, memory, achieved FLOP/s.

Steppers (``mmdflow.flows``), each ``jax.jit(stepper.step)`` on ``n`` particles in ``d``
dimensions moving towards ``n`` target points, float32:

* ``sobolev_rff``: the ``"sobolev"`` flow with ``--features`` (m)
  random Fourier features, target embedding cached in the state (the steady-state step).
  Its cost is dominated by the gradient covariance ``S^T diag(a) S`` (``S = sin(x W^T + b)``,
  ``[n, m]``): a GEMM of ``2 n m^2`` flops. Reported: ``model_flops`` (the count below),
  ``xla_flops`` (``compiled.cost_analysis()``; it counts a loop body once, so it undercounts
  once ``n`` exceeds ``mmdflow.sobolev.RFF_BLOCK_ROWS`` and the sums run in row blocks), achieved TFLOP/s of both, and the fraction of
  the device's fp32 peak where known (H100/H200 SXM: 67 TFLOP/s without TF32; mmdflow runs
  this GEMM at ``HIGHEST`` precision).
* ``sobolev_exact``: the exact-kernel critic solved matrix-free by conjugate gradients
  (``solver="cg"``), exactly ``--cg-iters`` iterations (``cg_tol=1e-30``); each iteration is one
  blocked cross-Hessian kernel sum over the ``n^2`` particle pairs. Reported per iteration too.
* a name of ``mmdflow.flows.FLOWS`` (``sobolev``, ``mmd``, ``neural-sobolev``, ...): that flow
  at the defaults ``mmdflow flow`` uses (``defaults_for`` the Gaussian's bandwidth); Gpairs/s
  as for ``mmd_flow``.
* ``mmd_flow``: the ``"mmd"`` flow (witness-gradient step with noise injection):
  two gradient kernel sums, ``n^2`` pairs each; Gpairs/s is ``2 n^2 / run_s``.

Model flop count of ``sobolev_rff`` (dominant terms; ``transcendentals`` counted apart):
``2 n m^2`` (covariance) + ``3 x 2 n m d`` (three projections ``x W^T``) + ``2 n m d``
(gradient ``(S u) W``) + ``2 n m`` (embedding ``a^T phi(x)``) + ``2 m^2 d`` (``W W^T``) +
``m^3 / 3`` (Cholesky).

Per configuration: ``jit(step).lower(state, y).compile()`` time (reported apart), one warm-up
call, then the median over ``--repeats`` calls (``block_until_ready``). Configurations whose
run time, extrapolated from the previous ``n`` (x (n / n_prev)^2 for the pairwise steppers,
x n / n_prev for ``sobolev_rff``), exceeds ``--max-run-s`` are skipped with that reason.

Usage:
  python benchmarks/flow_steps.py --quick               # < 1 minute on a laptop CPU
  python benchmarks/flow_steps.py                       # CPU: n {4096, 16384, 65536};
                                                        # GPU: n {65536, 262144, 1048576}
  python benchmarks/flow_steps.py --steppers sobolev_rff --n 1048576 --features 1024

Writes JSON (metadata header + records) to ``--out`` (default
``benchmarks/results/flow_steps_<platform>[_quick].json``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from pathlib import Path

import _common as common
import jax
import jax.numpy as jnp
import numpy as np

from mmdflow import densities, flows, kernels, ops

SCHEMA = "mmdflow.bench.flow_steps/1"
STEPPERS = ("sobolev_rff", "sobolev_exact", "mmd_flow")
#: also every flow of the registry by name, at the defaults ``mmdflow flow`` uses
CHOICES = STEPPERS + tuple(flows.FLOWS)
QUICK_N, CPU_N, GPU_N = (1024, 4096), (4096, 16384, 65536), (65536, 262144, 1048576)
# fp32 peak without tensor cores (TFLOP/s): device-kind substring -> peak
PEAK_FP32_TFLOPS = {"H100": 67.0, "H200": 67.0}


def peak_tflops(device_kind: str) -> float | None:
    """The fp32 peak (TFLOP/s) of a device kind, or None when unknown."""
    return common.device_value(PEAK_FP32_TFLOPS, device_kind)


def rff_model_flops(n: int, m: int, d: int) -> float:
    """Dominant flops of one cached-embedding RFF Sobolev step (see the module docstring)."""
    return 2.0 * n * m * m + 8.0 * n * m * d + 2.0 * n * m + 2.0 * m * m * d + m**3 / 3.0


def make_stepper(name: str, args, n: int, d: int):
    k = kernels.Gaussian(jnp.float32(np.sqrt(2.0 * d)))
    if name == "sobolev_rff":
        return flows.make("sobolev", k, step_size=0.5, reg=0.1, num_features=args.features)
    if name == "sobolev_exact":
        return flows.make(
            "sobolev",
            k,
            step_size=0.5,
            reg=0.1,
            solver="cg",
            cg_tol=1e-30,
            cg_maxiter=args.cg_iters,
        )
    if name == "mmd_flow":
        sums = ops.SumConfig(impl=args.impl)
        return flows.make("mmd", k, step_size=1.0, noise_level=0.1, sums=sums)
    if name in flows.FLOWS:
        bw = float(k.bandwidth)
        kw = {}
        if "samples" not in flows.targets(name):  # toward the density of the samples y
            kw["logp"] = densities.Gaussian(mean=(0.5,) * d, cov=np.eye(d).tolist())
        return flows.make(
            name, **flows.FLOWS[name].defaults_for(k, bw, n, d, jax.random.key(0), **kw)
        )
    raise ValueError(f"unknown stepper {name!r}; choose from {CHOICES}")


def make_inputs(n: int, d: int, seed: int):
    x, y, _ = common.sample_points(n, d, seed)
    return jax.device_put(x), jax.device_put(y)


def bench_one(stepper, x, y, repeats: int, seed: int) -> dict:
    state = stepper.init(x, jax.random.key(seed))
    step = jax.jit(stepper.step)
    t0 = time.perf_counter()
    compiled = step.lower(state, y).compile()
    rec = {"compile_s": time.perf_counter() - t0}
    rec["temp_bytes"] = common.memory_bytes(compiled)
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        rec["xla_flops"] = float(cost.get("flops", 0.0)) or None
        rec["xla_transcendentals"] = float(cost.get("transcendentals", 0.0)) or None
    except Exception:  # noqa: BLE001 - cost analysis is optional per backend
        rec["xla_flops"] = rec["xla_transcendentals"] = None
    t = time.perf_counter()
    state, aux = jax.block_until_ready(compiled(state, y))  # warm-up, also the state to time
    rec["warmup_s"] = time.perf_counter() - t
    times = common.timings(lambda: compiled(state, y), repeats)
    rec["run_s"] = statistics.median(times)
    rec["run_s_all"] = times
    rec["finite"] = bool(jnp.all(jnp.isfinite(state.x)))
    rec["status"] = "ok"
    return rec


def run_config(args, name: str, n: int, d: int, prev) -> dict:
    rec = {"stepper": name, "n": n, "m": n, "d": d}
    if name == "sobolev_rff":
        rec["features"] = args.features
    if name == "sobolev_exact":
        rec["cg_iters"] = args.cg_iters
    if name == "mmd_flow":
        rec["impl"] = args.impl
    if prev is not None:
        power = 1 if name == "sobolev_rff" else 2
        pred = prev[1] * (n / prev[0]) ** power
        if pred > args.max_run_s:
            rec.update(
                status="skipped",
                reason=f"predicted run {pred:.0f} s (from n={prev[0]}) > --max-run-s "
                f"{args.max_run_s:.0f} s",
            )
            return rec
    x, y = make_inputs(n, d, args.seed)
    rec.update(bench_one(make_stepper(name, args, n, d), x, y, args.repeats, args.seed))
    run_s = rec["run_s"]
    peak = peak_tflops(jax.devices()[0].device_kind)
    if name == "sobolev_rff":
        rec["model_flops"] = rff_model_flops(n, args.features, d)
        rec["model_tflops_per_s"] = rec["model_flops"] / run_s / 1e12
        if rec.get("xla_flops"):
            rec["xla_tflops_per_s"] = rec["xla_flops"] / run_s / 1e12
        if peak is not None:
            rec["peak_fraction"] = rec["model_tflops_per_s"] / peak
    elif name == "sobolev_exact":
        rec["per_iter_ms"] = 1e3 * run_s / args.cg_iters
        rec["gpairs_per_s"] = (args.cg_iters + 1) * n * n / run_s / 1e9
    else:
        rec["gpairs_per_s"] = 2.0 * n * n / run_s / 1e9
    return rec


def metadata(args, ns, ds) -> dict:
    return {
        "schema": SCHEMA,
        **common.environment(omit=("device_count", "numpy", "ott_jax", "xla_flags")),
        "dtype": "float32",
        "peak_fp32_tflops": peak_tflops(jax.devices()[0].device_kind),
        "config": {
            "quick": args.quick,
            "steppers": list(args.steppers),
            "n": list(ns),
            "d": list(ds),
            "features": args.features,
            "cg_iters": args.cg_iters,
            "impl": args.impl,
            "repeats": args.repeats,
            "max_run_s": args.max_run_s,
        },
        "definitions": {
            "compile_s": "wall time of jax.jit(step).lower(state, y).compile()",
            "run_s": "median wall time of one compiled step + block_until_ready, after 1 warm-up",
            "model_flops": "sobolev_rff: 2nm^2 + 8nmd + 2nm + 2m^2 d + m^3/3 (m = features)",
            "xla_flops": "compiled.cost_analysis()['flops'] (XLA's own count; None if absent). "
            "It counts a loop body once, not times its trip count: for n > RFF_BLOCK_ROWS "
            "(row blocks) it undercounts; use model_flops",
            "gpairs_per_s": "mmd_flow: 2 n^2 / run_s; sobolev_exact: (cg_iters + 1) n^2 / run_s",
            "inputs": "x ~ N(0, I), y ~ N(0.5, I), n = m; Gaussian bandwidth sqrt(2 d)",
        },
    }


def markdown_table(records: list[dict]) -> str:
    cols = [
        "stepper",
        "n",
        "d",
        "compile s",
        "run ms",
        "TFLOP/s (model / XLA)",
        "Gpairs/s",
        "temp MB",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in records:
        if r["status"] != "ok":
            lines.append(
                f"| {r['stepper']} | {r['n']} | {r['d']} | | | | | skipped: {r['reason']} |"
            )
            continue
        tf = ""
        if "model_tflops_per_s" in r:
            tf = f"{r['model_tflops_per_s']:.3f} / {common.fmt(r.get('xla_tflops_per_s'), '.3f')}"
        temp = None if r.get("temp_bytes") is None else r["temp_bytes"] / 1e6
        lines.append(
            f"| {r['stepper']} | {r['n']} | {r['d']} | {r['compile_s']:.2f} "
            f"| {1e3 * r['run_s']:.2f} | {tf} | {common.fmt(r.get('gpairs_per_s'), '.3f')} "
            f"| {common.fmt(temp, '.1f')} |"
        )
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"small sweep: n {QUICK_N}")
    p.add_argument("--steppers", nargs="+", choices=CHOICES, default=list(STEPPERS))
    p.add_argument("--n", type=int, nargs="+", help="particle counts (= target points)")
    p.add_argument("--d", type=int, nargs="+", default=[2], help="dimensions (default 2)")
    p.add_argument("--features", type=int, help="RFF features m (default 1024; 128 --quick)")
    p.add_argument("--cg-iters", type=int, default=10, help="CG iterations of sobolev_exact")
    p.add_argument("--impl", default="auto", help="kernel-sum impl of mmd_flow")
    p.add_argument("--repeats", type=int, help="timed calls per configuration (5; 3 --quick)")
    p.add_argument("--max-run-s", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.features is None:
        args.features = 128 if args.quick else 1024
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    return args


def main(argv=None) -> dict:
    """Runs the sweep; writes the JSON, prints the table, and returns the result dict."""
    args = parse_args(argv)
    backend = jax.default_backend()
    ns = sorted(set(args.n or (QUICK_N if args.quick else GPU_N if backend == "gpu" else CPU_N)))
    ds = sorted(set(args.d))
    out = Path(args.out or common.default_out("flow_steps", args.quick))
    result = {"metadata": metadata(args, ns, ds), "records": []}
    t_start = time.perf_counter()
    last: dict = {}
    for name in args.steppers:
        for d in ds:
            for n in ns:
                rec = run_config(args, name, n, d, last.get((name, d)))
                if rec["status"] == "ok":
                    last[(name, d)] = (n, rec["run_s"])
                result["records"].append(rec)
                result["metadata"]["total_wall_s"] = time.perf_counter() - t_start
                common.write_json(out, result)
                common.log(markdown_table([rec]).splitlines()[-1])
                gc.collect()
    result["metadata"]["loadavg_end"] = common.loadavg()
    common.write_json(out, result)
    md = result["metadata"]
    print(
        f"\nmmdflow flow steps: {md['platform']} ({md['device_kind']}), jax {md['jax']}, "
        f"{md['date_utc']}, total {md['total_wall_s']:.1f} s; JSON: {out}\n"
    )
    print(markdown_table(result["records"]))
    return result


if __name__ == "__main__":
    main()
