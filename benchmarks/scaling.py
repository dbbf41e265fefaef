"""Strong and weak scaling of the sharded witness gradient and generator step, plus a comm estimate.

Measured op: ``mmdflow.witness_grad(x, x, y, k, sums=ops.SumConfig(mesh=mesh))``, the
velocity field of one MMD-flow step (queries: the ``n`` particles; sources: the
``m`` targets and the ``n`` particles), Gaussian kernel, float32, ``n = m``, with
both point sets sharded ``P("data")`` over the first ``D`` devices
(``sharding.make_mesh(D)``) for ``D`` in ``--devices`` (default 1 2 4 8), for both
strategies (``allgather``, ``ring``). The unsharded ``mmdflow.witness_grad``
(``SumConfig("blocked", block_size)``) is timed once at the strong-scaling size as
``baseline``.

A second op, ``generator_step``: one data-parallel generator step
(``mmdflow.kernelized.direction`` with ``sums=SumConfig(mesh=...)``, kind ``"kernelized"``, exactly ``--gen-cg-iters``
CG iterations, then an SGD update of the replicated parameters) for an MLP generator
(latent 8, hidden 128 x 128, output ``d``), latent and target batches of ``M`` rows
sharded ``P("data")``; ``baseline`` is the single-device ``mmdflow.kernelized.direction``.
Its per-step work is ``(cg + 2)`` kernel passes over ``M x 2M`` pairs plus one JVP and
one VJP of the generator per CG iteration on ``M / D`` rows. Sizes: ``--gen-strong-m``,
``--gen-weak-m0`` (same ``sqrt(D)`` rule); ``--no-generator`` skips it.

* strong scaling: fixed ``n = m = --strong-n``; ``speedup = t(1) / t(D)``,
  ``efficiency = speedup / D``;
* weak scaling: the pairs per device are held fixed, ``n = m ~ --weak-n0 * sqrt(D)``
  (rounded up to a multiple of 8): the work is ``n (n + m)`` pairs, so per device
  ``~ 2 n0^2`` pairs; ``efficiency = t(1) / t(D)``.

On CPU the script starts JAX with ``--xla_force_host_platform_device_count``
(``--max-devices``, default 8) unless ``XLA_FLAGS`` already sets it: the "devices"
are then partitions of the same host, so with fewer cores than devices the times
show the overhead of sharding, not a speedup. ``host_cpu_count`` and the load
averages are recorded in the metadata.

Per configuration: ``jit(f).lower(*args).compile()`` time, one warm-up call, the
median of ``--repeats`` timed calls (``block_until_ready``), and
``memory_analysis().temp_size_in_bytes`` of the compiled per-device program.
A compile-only memory comparison (``memory`` in the JSON) reports that temp size
for the witness gradient and for ``jax.grad`` of the sharded MMD^2 at the largest
``D``, ``n = m = --memory-n`` (quick 65536, else 262144), ``d`` in ``--memory-d``.

Communication estimate (printed, and stored under ``comm_estimate``), per device
and per witness-gradient evaluation, ``b`` bytes per number (4 for fp32):

* source bytes ``S = (n + m) (d + 1) b`` (each source row: ``d`` coordinates and
  one weight; the sources are the targets and the particles);
* ``allgather`` (bandwidth-optimal ring all-gather): sends and receives
  ``(D - 1) / D * S``; holds all ``S`` bytes of sources at once;
* ``ring`` (``D - 1`` ``ppermute`` rounds of one ``S / D`` shard each): sends and
  receives ``(D - 1) / D * S``, the same volume, in ``D - 1`` messages that overlap
  with ``D`` blocks of compute; holds ``2 S / D`` (current and incoming shard);
* reverse mode (a gradient of MMD^2 through the sums): ``allgather`` adds a
  reduce-scatter of the source cotangents, total ``2 (D - 1) / D * S``; ``ring``
  (custom VJP) re-rotates the sources (``D - 1`` rounds) and rotates the cotangent
  accumulators home (``D`` rounds), total ``(3 D - 2) / D * S``;
* compute per device: ``(n / D) (n + m)`` kernel pairs, so
  ``pairs / byte = n (n + m) / (D * bytes)``, which grows like ``n / D``: for
  ``n = m = 10^7`` communication is negligible next to the pairwise work.

Usage:
  python benchmarks/scaling.py --quick          # < 1 min: n 2048 (strong), n0 1024 (weak)
  python benchmarks/scaling.py                  # n 8192 (strong), n0 2048 (weak)
  python benchmarks/scaling.py --strategies ring --devices 1 8 --d 16

Writes JSON (metadata, records, comm_estimate) to ``--out`` (default
``benchmarks/results/scaling_<platform>[_quick].json``) and prints tables.
"""

from __future__ import annotations

import os
import sys


def _ensure_host_devices(argv) -> None:
    """Asks XLA for host devices before JAX starts (no effect once it has)."""
    count = 8
    if "--max-devices" in argv:
        count = int(argv[argv.index("--max-devices") + 1])
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


if __name__ == "__main__":
    _ensure_host_devices(sys.argv[1:])

import argparse  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import _common as common  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import mmdflow  # noqa: E402
from mmdflow import kernelized, kernels, ops, sharding  # noqa: E402

SCHEMA = "mmdflow.bench.scaling/1"
COMM_DEVICES = (8, 64, 512)
COMM_N = 10_000_000
COMM_D = (2, 64)


# ---------------------------------------------------------------- communication estimate
def comm_estimate(n: int, m: int, d: int, devices: int, bytes_per: int = 4) -> dict:
    """Bytes moved per device per witness-gradient evaluation (formulas in the module docstring)."""
    s = (n + m) * (d + 1) * bytes_per
    frac = (devices - 1) / devices
    pairs = n / devices * (n + m)
    fwd = frac * s
    return {
        "n": n,
        "m": m,
        "d": d,
        "devices": devices,
        "bytes_per_number": bytes_per,
        "source_bytes": s,
        "pairs_per_device": pairs,
        "allgather": {
            "fwd_bytes": fwd,
            "fwd_bwd_bytes": 2 * frac * s,
            "peak_source_bytes": s,
            "messages": devices - 1,
            "pairs_per_byte": pairs / fwd if fwd else math.inf,
        },
        "ring": {
            "fwd_bytes": fwd,
            "fwd_bwd_bytes": (3 * devices - 2) / devices * s if devices > 1 else 0.0,
            "peak_source_bytes": 2 * s / devices if devices > 1 else s,
            "messages": devices - 1,
            "pairs_per_byte": pairs / fwd if fwd else math.inf,
        },
    }


def comm_table(rows: list[dict]) -> str:
    head = (
        "| d | D | sent/device fwd (both) | fwd+bwd allgather | fwd+bwd ring "
        "| peak sources allgather | peak sources ring | pairs/device | pairs/byte fwd |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        a, g = r["allgather"], r["ring"]
        lines.append(
            f"| {r['d']} | {r['devices']} | {_b(a['fwd_bytes'])} | {_b(a['fwd_bwd_bytes'])} "
            f"| {_b(g['fwd_bwd_bytes'])} | {_b(a['peak_source_bytes'])} "
            f"| {_b(g['peak_source_bytes'])} | {r['pairs_per_device']:.2e} "
            f"| {a['pairs_per_byte']:.2e} |"
        )
    return "\n".join(lines)


def _b(x: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} B"


# ---------------------------------------------------------------- measurement
def _round8(v: float) -> int:
    return 8 * math.ceil(v / 8)


def bench(fn, args, repeats: int) -> dict:
    t0 = time.perf_counter()
    lowered = jax.jit(fn).lower(*args)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    call = lambda: compiled(*args)
    warm = common.timings(call, 1)[0]
    times = common.timings(call, repeats)
    return {
        "compile_s": compile_s,
        "warmup_s": warm,
        "run_s": statistics.median(times),
        "run_s_all": times,
        "temp_bytes": common.memory_bytes(compiled),
    }


def run_one(mode, strategy, devices, n, d, args) -> dict:
    rec = {"op": "witness_grad", "mode": mode, "strategy": strategy, "devices": devices}
    rec.update(n=n, m=n, d=d)
    if devices > jax.device_count():
        rec.update(status="skipped", reason=f"only {jax.device_count()} devices")
        return rec
    k = kernels.Gaussian(np.float32(math.sqrt(2.0 * d)))
    x, y, _ = common.sample_points(n, d, args.seed)
    if strategy == "baseline":
        cfg = ops.SumConfig("blocked", args.block_size)
        fn = lambda x, y: mmdflow.witness_grad(x, x, y, k, sums=cfg)
        inputs = (jax.device_put(x), jax.device_put(y))
    else:
        mesh = sharding.make_mesh(devices)
        sh = NamedSharding(mesh, P("data"))
        cfg = ops.SumConfig(mesh=mesh, strategy=strategy, block_size=args.block_size)
        fn = lambda x, y: mmdflow.witness_grad(x, x, y, k, sums=cfg)
        inputs = (jax.device_put(x, sh), jax.device_put(y, sh))
    rec.update(bench(fn, inputs, args.repeats))
    rec["status"] = "ok"
    rec["gpairs_per_s"] = n * 2 * n / rec["run_s"] / 1e9
    return rec


def make_generator(d: int, seed: int, latent: int = 8, hidden: int = 128):
    """A float32 MLP generator ``(params, z [M, latent]) -> [M, d]`` and its parameters."""
    rng = np.random.default_rng(seed)
    dims = [latent, hidden, hidden, d]
    params = [
        (
            (rng.standard_normal((a, b)) / math.sqrt(a)).astype(np.float32),
            np.zeros((1, b), np.float32),
        )
        for a, b in zip(dims[:-1], dims[1:], strict=True)
    ]

    def gen_fn(p, z):
        h = z
        for i, (w, b) in enumerate(p):
            h = h @ w + b
            if i < len(p) - 1:
                h = jax.nn.relu(h)
        return h

    return gen_fn, jax.tree.map(jax.device_put, params), latent


def run_one_generator(mode, strategy, devices, m, d, args) -> dict:
    """One generator step (direction + SGD update) at batch ``m``, timed like ``run_one``."""
    rec = {"op": "generator_step", "mode": mode, "strategy": strategy, "devices": devices}
    rec.update(n=m, m=m, d=d)
    if devices > jax.device_count():
        rec.update(status="skipped", reason=f"only {jax.device_count()} devices")
        return rec
    k = kernels.Gaussian(np.float32(math.sqrt(2.0 * d)))
    gen_fn, params, latent = make_generator(d, args.seed)
    rng = np.random.default_rng(args.seed + m)
    z = rng.standard_normal((m, latent), dtype=np.float32)
    y = rng.standard_normal((m, d), dtype=np.float32) + np.float32(0.5)
    kw = dict(kind="kernelized", cg_tol=0.0, cg_maxiter=args.gen_cg_iters)
    if strategy == "baseline":
        direction = lambda p, z, y: kernelized.direction(gen_fn, p, z, y, k, 0.1, **kw)
        inputs = (params, jax.device_put(z), jax.device_put(y))
    else:
        mesh = sharding.make_mesh(devices)
        sh = NamedSharding(mesh, P("data"))
        cfg = ops.SumConfig(mesh=mesh, strategy=strategy, block_size=args.block_size)
        direction = lambda p, z, y: kernelized.direction(gen_fn, p, z, y, k, 0.1, **kw, sums=cfg)
        inputs = (params, jax.device_put(z, sh), jax.device_put(y, sh))

    def step(p, z, y):
        v, info = direction(p, z, y)
        return jax.tree.map(lambda a, b: a + 0.5 * b, p, v), info["cg_iterations"]

    rec.update(bench(step, inputs, args.repeats))
    rec["status"] = "ok"
    passes = args.gen_cg_iters + 2
    rec["gpairs_per_s"] = passes * m * 2 * m / rec["run_s"] / 1e9
    return rec


def _memory_fns(k, mesh, strategy, block_size) -> dict:
    cfg = ops.SumConfig(mesh=mesh, strategy=strategy, block_size=block_size)
    return {
        "witness_grad": lambda x, y: mmdflow.witness_grad(x, x, y, k, sums=cfg),
        "grad_mmd2": jax.grad(lambda x, y: mmdflow.mmd2(x, y, k, sums=cfg), argnums=(0, 1)),
    }


def memory_records(args) -> list[dict]:
    """Compile-only per-device temp memory of ``allgather`` vs ``ring`` at the largest ``D``.

    Two ops: the witness gradient and ``jax.grad`` of the biased sharded MMD^2 w.r.t.
    ``(x, y)``; ``n = m = --memory-n``, ``d`` in ``--memory-d``. Nothing is run.
    """
    dv = min(max(args.devices), jax.device_count())
    mesh = sharding.make_mesh(dv)
    sh = NamedSharding(mesh, P("data"))
    recs = []
    for d in args.memory_d:
        k = kernels.Gaussian(np.float32(math.sqrt(2.0 * d)))
        n = _round8(args.memory_n)
        spec = jax.ShapeDtypeStruct((n, d), np.float32, sharding=sh)
        for st in args.strategies:
            for op, fn in _memory_fns(k, mesh, st, args.block_size).items():
                t0 = time.perf_counter()
                ma = jax.jit(fn).lower(spec, spec).compile().memory_analysis()
                recs.append(
                    {
                        "op": op,
                        "strategy": st,
                        "devices": dv,
                        "n": n,
                        "m": n,
                        "d": d,
                        "compile_s": time.perf_counter() - t0,
                        "temp_bytes": int(ma.temp_size_in_bytes),
                        "source_bytes": 2 * n * (d + 1) * 4,
                    }
                )
                r = recs[-1]
                common.log(
                    f"memory {op:12s} {st:9s} D={dv} n={n} d={d}: temp "
                    f"{r['temp_bytes'] / 1e6:.1f} MB (all sources {r['source_bytes'] / 1e6:.1f} MB)"
                )
    return recs


def memory_table(recs: list[dict]) -> str:
    lines = ["| op | strategy | D | n | d | temp MB/device | all sources MB |", "|" + "---|" * 7]
    for r in recs:
        lines.append(
            f"| {r['op']} | {r['strategy']} | {r['devices']} | {r['n']} | {r['d']} "
            f"| {r['temp_bytes'] / 1e6:.1f} | {r['source_bytes'] / 1e6:.1f} |"
        )
    return "\n".join(lines)


def add_efficiency(records: list[dict]) -> None:
    """Speedup / efficiency against the same strategy's D = 1 run of the same mode."""
    base = {
        (r["op"], r["mode"], r["strategy"]): r["run_s"]
        for r in records
        if r["status"] == "ok" and r["devices"] == 1
    }
    for r in records:
        t1 = base.get((r["op"], r["mode"], r["strategy"]))
        if r["status"] != "ok" or t1 is None:
            continue
        if r["mode"] == "strong":
            r["speedup"] = t1 / r["run_s"]
            r["efficiency"] = r["speedup"] / r["devices"]
        else:
            r["efficiency"] = t1 / r["run_s"]


def markdown_table(records: list[dict]) -> str:
    lines = [
        "| op | mode | strategy | D | n | compile s | run ms | Gpairs/s | speedup | efficiency "
        "| temp MB |",
        "|" + "---|" * 11,
    ]
    for r in records:
        if r["status"] != "ok":
            lines.append(
                f"| {r['op']} | {r['mode']} | {r['strategy']} | {r['devices']} | {r['n']} | "
                f"skipped: {r['reason']} | | | | | |"
            )
            continue
        sp = f"{r['speedup']:.2f}" if "speedup" in r else ""
        ef = f"{r['efficiency']:.2f}" if "efficiency" in r else ""
        tmp = f"{r['temp_bytes'] / 1e6:.1f}" if r["temp_bytes"] is not None else ""
        lines.append(
            f"| {r['op']} | {r['mode']} | {r['strategy']} | {r['devices']} | {r['n']} "
            f"| {r['compile_s']:.2f} "
            f"| {r['run_s'] * 1e3:.1f} | {r['gpairs_per_s']:.3f} | {sp} | {ef} | {tmp} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- driver
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, 3 repeats (< 1 min)")
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--max-devices", type=int, default=8, help="host devices to create (CPU)")
    p.add_argument("--strategies", nargs="+", default=list(ops.STRATEGIES))
    p.add_argument("--strong-n", type=int, default=None, help="n = m for strong scaling")
    p.add_argument("--weak-n0", type=int, default=None, help="n = m at D = 1 for weak scaling")
    p.add_argument("--d", type=int, default=2)
    p.add_argument("--block-size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--no-baseline", action="store_true", help="skip the unsharded baseline")
    p.add_argument("--memory-n", type=int, default=None, help="n = m of the memory comparison")
    p.add_argument("--memory-d", type=int, nargs="*", default=[2, 64])
    p.add_argument("--no-generator", action="store_true", help="skip the generator step")
    p.add_argument("--gen-strong-m", type=int, default=None, help="batch M (strong scaling)")
    p.add_argument("--gen-weak-m0", type=int, default=None, help="batch M at D = 1 (weak)")
    p.add_argument("--gen-cg-iters", type=int, default=10, help="CG iterations per step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=str, default=None)
    args = p.parse_args(argv)
    bad = [s for s in args.strategies if s not in ops.STRATEGIES]
    if bad:
        p.error(f"unknown strategies {bad}; choose from {ops.STRATEGIES}")
    args.strong_n = args.strong_n or (2048 if args.quick else 8192)
    args.weak_n0 = args.weak_n0 or (1024 if args.quick else 2048)
    args.repeats = args.repeats or (3 if args.quick else 5)
    args.gen_strong_m = args.gen_strong_m or (512 if args.quick else 2048)
    args.gen_weak_m0 = args.gen_weak_m0 or (256 if args.quick else 1024)
    args.memory_n = args.memory_n or (65536 if args.quick else 262144)
    return args


def main(argv=None) -> dict:
    """Runs the scaling sweep; writes the JSON, prints tables, returns the result dict."""
    args = parse_args(argv)
    backend = jax.default_backend()
    out = Path(args.out or common.default_out("scaling", args.quick))
    devs = sorted(set(args.devices))
    meta = {
        "schema": SCHEMA,
        **common.environment(omit=("jaxlib", "ott_jax")),
        "dtype": "float32",
        "config": {
            "quick": args.quick,
            "devices": devs,
            "strategies": list(args.strategies),
            "strong_n": args.strong_n,
            "weak_n0": args.weak_n0,
            "generator": not args.no_generator,
            "gen_strong_m": args.gen_strong_m,
            "gen_weak_m0": args.gen_weak_m0,
            "gen_cg_iters": args.gen_cg_iters,
            "d": args.d,
            "block_size": args.block_size,
            "repeats": args.repeats,
            "baseline": not args.no_baseline,
            "memory_n": args.memory_n,
            "memory_d": list(args.memory_d),
        },
        "definitions": {
            "op": "witness_grad: witness_grad(x, x, y, Gaussian(sqrt(2 d)), sums=mesh), n = m, "
            "fp32; generator_step: direction(kind='kernelized', sums=mesh, gen_cg_iters CG "
            "iterations) + SGD update, MLP 8-128-128-d, batch M = n (latents and targets)",
            "gpairs_per_s": "witness_grad: n * (n + m) / run_s / 1e9; generator_step: "
            "(gen_cg_iters + 2) * M * 2M / run_s / 1e9 (kernel-pair evaluations)",
            "speedup": "strong: run_s(D=1) / run_s(D), same strategy",
            "efficiency": "strong: speedup / D; weak: run_s(D=1) / run_s(D)",
            "weak_n": "8 * ceil(weak_n0 * sqrt(D) / 8): constant pairs per device",
            "temp_bytes": "compiled.memory_analysis().temp_size_in_bytes (per-device program)",
        },
    }
    result = {"metadata": meta, "records": []}
    t_start = time.perf_counter()
    strategies = list(args.strategies) + ([] if args.no_baseline else ["baseline"])
    plan = []
    sizes = {"witness_grad": (args.strong_n, args.weak_n0)}
    if not args.no_generator:
        sizes["generator_step"] = (args.gen_strong_m, args.gen_weak_m0)
    for op, (strong, weak0) in sizes.items():
        for mode in ("strong", "weak"):
            for dv in devs:
                n = strong if mode == "strong" else _round8(weak0 * math.sqrt(dv))
                for st in strategies:
                    if st == "baseline" and (mode == "weak" or dv != devs[0]):
                        continue  # one unsharded run at the strong-scaling size
                    plan.append((op, mode, st, 1 if st == "baseline" else dv, n))
    for op, mode, st, dv, n in plan:
        fn = run_one if op == "witness_grad" else run_one_generator
        rec = fn(mode, st, dv, n, args.d, args)
        result["records"].append(rec)
        msg = f"{op:14s} {mode:6s} {st:9s} D={dv:<3d} n={n:<7d} " + (
            f"compile {rec['compile_s']:5.2f} s run {rec['run_s'] * 1e3:8.1f} ms"
            if rec["status"] == "ok"
            else f"skipped: {rec['reason']}"
        )
        common.log(msg)
    add_efficiency(result["records"])
    result["memory"] = memory_records(args)
    comm = [comm_estimate(COMM_N, COMM_N, d, dv) for d in COMM_D for dv in COMM_DEVICES]
    result["comm_estimate"] = comm
    meta["total_wall_s"] = time.perf_counter() - t_start
    meta["loadavg_end"] = common.loadavg()
    common.write_json(out, result)
    print(
        f"\nsharded witness_grad / generator_step scaling: {backend}, {jax.device_count()} devices on "
        f"{os.cpu_count()} host CPUs, jax {jax.__version__}, total {meta['total_wall_s']:.1f} s, "
        f"loadavg {meta['loadavg_start']} -> {meta['loadavg_end']}; JSON: {out}\n"
    )
    print(markdown_table(result["records"]))
    print("\nCompiled per-device temp memory (compile only):\n")
    print(memory_table(result["memory"]))
    print(
        f"\nCommunication per device per witness-gradient step, n = m = {COMM_N:.0e}, fp32 "
        "(formulas: module docstring):\n"
    )
    print(comm_table(comm))
    return result


if __name__ == "__main__":
    main()
