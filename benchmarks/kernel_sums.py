"""Benchmark of mmdflow's kernel sums: compile time, run time, memory, throughput.

Sweeps ``impl`` x ``op`` x ``n`` (= ``m``) x ``d`` (x kernel):

* impl: ``dense``, ``blocked`` and ``pallas`` (:mod:`mmdflow.ops`; ``pallas`` is the fused
  Pallas/Triton path of :mod:`mmdflow.fused`), plus ``plain_jax_chunked``,
  a baseline written here in plain JAX (Gaussian only): rows of ``x`` in chunks
  via ``lax.map(..., batch_size=chunk)`` against all of ``y``, GEMM distance form,
  no ``jax.checkpoint``; ``plain_jax_gemm``, the same with explicit blocks of
  :data:`GEMM_ROWS` rows (one GEMM each, ``lax.map`` over blocks) and the closed-form gradient
  ``(K [w y] - (K w) x) / h^2``; and ``ott_online``, ott-jax's online point cloud (Gaussian only;
  skipped with that reason when ott-jax is not installed: ``pip install -e ".[bench]"``):
  ``PointCloud(x, y, epsilon=2 h^2, batch_size=chunk).apply_kernel`` (``exp(-cost/eps)``,
  cost ``|x|^2 + |y|^2 - 2 x.y`` at the default matmul precision), the gradient sum as
  ``(K (w y) - (K w) x) / h^2`` from one ``apply_kernel`` on ``[w y, w]``, and
  ``grad_of_mmd2`` by ``jax.grad`` through three ``apply_kernel`` calls. Not run by
  default: ``blocked_pairwise``, the blocked path with the radial kernels' per-coordinate
  gradient tiles (``RadialKernel._grad_block_pairwise``, the form before the closed-form
  gradient sum; only ``grad_matvec`` and the ``grad_of_mmd2`` backward pass differ), to
  compare the two forms in one run.

``pallas`` off a GPU runs in Pallas *interpret mode* (a correctness tool, orders of magnitude
slower than compiled code): it is run only with ``--quick`` and ``n <=
--pallas-interpret-max-n``, and its records are labelled ``"interpret": true`` with a note;
otherwise it is skipped with that reason. On a GPU backend the default sizes are the GPU
config (n 16k ... 1M, d 2, 3, 16, 64, 784), and each record also reports
``exp_unit_fraction``: Gpairs/s over the device's exp-unit bound (one ``exp`` per pair on
the SFUs: ~4,200 Gpairs/s on an H100/H200 SXM: 132 SMs x 16 SFU/clk x ~1.98 GHz), a
roofline for the Gaussian kernel sums (``matvec``, ``grad_matvec``).
* op: ``matvec`` (``kernel_matvec``), ``grad_matvec`` (``kernel_grad_matvec``,
  ``[n, d]``), ``hess_matvec`` (``kernel_hessian_matvec`` against ``e = w y``, ``[m, d]``: the
  cross-Hessian sum of every exact Sobolev CG iteration; the baselines use the closed form
  ``(K e - ((q 1) x - q y) / h^2) / h^2``, ``q_ij = k_ij (x_i - y_j) . e_j``, with ``x e^T``,
  ``K e`` and ``q [1, y]`` as GEMMs; ott-jax has no Hessian sum), ``mmd2`` (the biased
  ``mmd2``: three kernel sums, xx, yy and xy) and
  ``grad_of_mmd2`` (``jax.grad`` of it w.r.t. ``x``: the value and its backward pass); the
  ratio of their run times is the value-and-gradient rate relative to the forward rate;
  ``kernel_grad_of_mmd2``: ``jax.value_and_grad`` of it w.r.t. the kernel's parameters (the
  Gaussian's bandwidth; the baselines differentiate their three sums by autodiff).

Per configuration: ``jit(f).lower(*args).compile()`` time (reported apart), one
warm-up call, then the median over ``--repeats`` calls (``block_until_ready``).
Gpairs/s is ``n * m / run_time / 1e9`` for every op (for the ``mmd2`` ops this
is a nominal rate: the call touches ~3 n m pairs forward, and again backward).

Skips, recorded with their reason: dense when ``n * m * 4`` bytes exceed
``--max-dense-bytes``; any impl whose compiled temp memory exceeds
``--max-temp-bytes``; any impl whose run time, extrapolated (x (n / n_prev)^2)
from the same configuration at the previous ``n``, exceeds ``--max-run-s``. A call
whose warm-up alone takes more than ``--slow-s`` is timed from that warm-up only.

Usage:
  python benchmarks/kernel_sums.py --quick
  python benchmarks/kernel_sums.py --n 4096 16384 --d 2 16 64
  python benchmarks/kernel_sums.py --kernels gaussian imq --ops grad_matvec
  python benchmarks/kernel_sums.py --impls blocked pallas     # on a GPU: the GPU config

Writes JSON (metadata header + records) to ``--out``, a plot of Gpairs/s against ``n``
next to it (same name, ``.png``; ``--no-plot``: none; ``plot_results.py`` re-plots a JSON)
and prints a markdown table to stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import math
import statistics
import time
from pathlib import Path

import _common as common
import jax
import jax.numpy as jnp
import numpy as np
import plot_results
from jax import lax

import mmdflow
from mmdflow import fused, kernels, ops

HIGHEST = lax.Precision.HIGHEST
SCHEMA = "mmdflow.bench.kernel_sums/1"
IMPLS = (
    "dense",
    "blocked",
    "pallas",
    "plain_jax_chunked",
    "plain_jax_gemm",
    "ott_online",
    "blocked_pairwise",
)
DEFAULT_IMPLS = IMPLS[:-1]  # blocked_pairwise: on request (--impls)
OPS = ("matvec", "grad_matvec", "hess_matvec", "mmd2", "grad_of_mmd2", "kernel_grad_of_mmd2")
KERNELS = ("gaussian", "imq", "laplace", "mixture")

QUICK_N, QUICK_D = (1024, 2048), (2, 16)
CPU_N, CPU_D = (4096, 16384, 65536), (2, 3, 16, 64)
GPU_N, GPU_D = (16384, 65536, 262144, 1048576), (2, 3, 16, 64, 784)
PALLAS_INTERPRET_MAX_N = 1024  # largest n run in Pallas interpret mode off a GPU (--quick only)
# exp-unit bound in Gpairs/s (one exp per pair on the SFUs): device-kind substring -> bound
EXP_UNIT_GPAIRS = {"H100": 4200.0, "H200": 4200.0}


def measured_exp_ceiling(rows: int = 4096, cols: int = 4096, repeats: int = 5) -> float:
    """The machine's measured fp32 ``exp`` rate, G exp/s: ``sum(exp(-(a_i b_j)))`` over
    ``rows x cols`` pairs, one multiply, ``exp`` and add per pair fused in one loop (no
    ``[rows, cols]`` array): the ceiling of a kernel sum with one ``exp`` per pair."""
    a = jnp.linspace(0.0, 1.0, rows, dtype=jnp.float32)
    b = jnp.linspace(0.0, 2.0, cols, dtype=jnp.float32)
    f = jax.jit(lambda a, b: jnp.sum(jnp.exp(-(a[:, None] * b[None, :]))))
    f(a, b).block_until_ready()
    return rows * cols / statistics.median(common.timings(lambda: f(a, b), repeats)) / 1e9


def exp_unit_bound(device_kind: str) -> float | None:
    """The exp-unit bound (Gpairs/s) of a device kind, or None when unknown."""
    return common.device_value(EXP_UNIT_GPAIRS, device_kind)


# ---------------------------------------------------------------- kernels
def make_kernel(name: str, bandwidth: float) -> kernels.Kernel:
    h = jnp.float32(bandwidth)
    if name == "gaussian":
        return kernels.Gaussian(h)
    if name == "imq":
        return kernels.IMQ(scale=h)
    if name == "laplace":
        return kernels.Laplace(h)
    if name == "mixture":
        return kernels.MixtureRBF(h * jnp.array([0.5, 1.0, 2.0], jnp.float32))
    raise ValueError(f"unknown kernel {name!r}; choose from {KERNELS}")


_PAIRWISE: dict[type, type] = {}


def pairwise_grad_kernel(k: kernels.Kernel) -> kernels.Kernel:
    """``k`` (a radial kernel) as a registered subclass whose ``grad_block`` uses the
    per-coordinate form (``closed_form_grad = False``); other kernels unchanged."""
    cls = type(k)
    if not isinstance(k, kernels.RadialKernel) or not cls.closed_form_grad:
        return k
    if cls not in _PAIRWISE:
        fields = tuple(f.name for f in dataclasses.fields(cls))
        sub = type(f"{cls.__name__}Pairwise", (cls,), {"closed_form_grad": False})
        _PAIRWISE[cls] = kernels._pytree(data=fields)(sub)
    return _PAIRWISE[cls](**{f.name: getattr(k, f.name) for f in dataclasses.fields(cls)})


# ---------------------------------------------------------------- plain-JAX baseline
def _plain_gauss_row(h, xi, y):
    """Gaussian kernel values ``[m]`` of one point ``xi [d]`` against ``y [m, d]``."""
    s = jnp.sum(xi * xi) + jnp.sum(y * y, axis=-1) - 2.0 * jnp.matmul(y, xi, precision=HIGHEST)
    return jnp.exp(-jnp.maximum(s, 0.0) / (2.0 * h**2))


def plain_matvec(h, x, y, w, chunk):
    row = lambda xi: jnp.dot(_plain_gauss_row(h, xi, y), w, precision=HIGHEST)
    return lax.map(row, x, batch_size=chunk)


def plain_grad_matvec(h, x, y, w, chunk):
    """``sum_j w_j grad_x k(x_i, y_j) = sum_j w_j k_ij (y_j - x_i) / h^2``."""
    wy = w[:, None] * y

    def row(xi):
        kv = _plain_gauss_row(h, xi, y)
        return (
            jnp.matmul(kv, wy, precision=HIGHEST) - jnp.dot(kv, w, precision=HIGHEST) * xi
        ) / h**2

    return lax.map(row, x, batch_size=chunk)


#: row block of ``plain_jax_gemm`` (of 64 / 256 / 1024 rows, 256 was the fastest at n = 4k
#: and 16k, d = 2, on the 2-core EPYC: RESULTS.md)
GEMM_ROWS = 256


def _row_blocks(f, x, rows):
    """``f`` on blocks of ``rows`` rows of ``x`` (``lax.map``; the last block padded)."""
    n, d = x.shape
    nb = -(-n // rows)
    xp = jnp.pad(x, ((0, nb * rows - n), (0, 0)), mode="edge").reshape(nb, rows, d)
    out = lax.map(f, xp)
    return out.reshape(nb * rows, *out.shape[2:])[:n]


def _gemm_gauss(h, xb, y, yy):
    """``[rows, m]`` Gaussian kernel values by the GEMM distance form."""
    s = jnp.sum(xb * xb, -1)[:, None] + yy[None] - 2.0 * jnp.matmul(xb, y.T, precision=HIGHEST)
    return jnp.exp(-jnp.maximum(s, 0.0) / (2.0 * h**2))


def gemm_matvec(h, x, y, w, chunk):
    """Row blocks of :data:`GEMM_ROWS` against all of ``y``: one GEMM per block."""
    yy = jnp.sum(y * y, -1)
    f = lambda xb: jnp.matmul(_gemm_gauss(h, xb, y, yy), w, precision=HIGHEST)
    return _row_blocks(f, x, GEMM_ROWS)


def gemm_grad_matvec(h, x, y, w, chunk):
    """The closed form ``(K [w y] - (K w) x) / h^2``: one GEMM per block against ``[w, w y]``."""
    yy = jnp.sum(y * y, -1)
    rhs = jnp.concatenate([w[:, None], w[:, None] * y], axis=1)

    def f(xb):
        o = jnp.matmul(_gemm_gauss(h, xb, y, yy), rhs, precision=HIGHEST)
        return (o[:, 1:] - o[:, :1] * xb) / h**2

    return _row_blocks(f, x, GEMM_ROWS)


def plain_hess_matvec(h, x, y, e, chunk):
    """``sum_j H(x_i, y_j) e_j = sum_j k_ij [e_j - r_ij (r_ij . e_j) / h^2] / h^2``, ``r = x_i - y_j``."""

    def row(xi):
        kv = _plain_gauss_row(h, xi, y)
        r = xi[None, :] - y  # [m, d]
        q = kv * jnp.sum(r * e, axis=-1)
        return (
            jnp.matmul(kv, e, precision=HIGHEST) - jnp.matmul(q, r, precision=HIGHEST) / h**2
        ) / h**2

    return lax.map(row, x, batch_size=chunk)


def gemm_hess_matvec(h, x, y, e, chunk):
    """The closed form with ``q_ij = k_ij (x_i . e_j - y_j . e_j)``: ``(K e - (q 1) x + q y) / h^2``
    scaled as in :func:`plain_hess_matvec`; ``x e^T``, ``K e`` and ``q [1, y]`` are GEMMs."""
    yy, ye = jnp.sum(y * y, -1), jnp.sum(y * e, -1)
    rhs = jnp.concatenate([jnp.ones_like(y[:, :1]), y], axis=1)

    def f(xb):
        kv = _gemm_gauss(h, xb, y, yy)
        q = kv * (jnp.matmul(xb, e.T, precision=HIGHEST) - ye[None])
        o = jnp.matmul(q, rhs, precision=HIGHEST)
        ke = jnp.matmul(kv, e, precision=HIGHEST)
        return (ke - (o[:, :1] * xb - o[:, 1:]) / h**2) / h**2

    return _row_blocks(f, x, GEMM_ROWS)


def baseline_mmd2(matvec, h, x, y, chunk):
    """Biased MMD^2 from three kernel sums of a baseline's ``matvec(h, x, y, w, chunk)``."""
    n, m = x.shape[0], y.shape[0]
    a = jnp.full((n,), 1.0 / n, x.dtype)
    b = jnp.full((m,), 1.0 / m, x.dtype)
    txx = jnp.dot(a, matvec(h, x, x, a, chunk))
    tyy = jnp.dot(b, matvec(h, y, y, b, chunk))
    txy = jnp.dot(a, matvec(h, x, y, b, chunk))
    return jnp.maximum(txx + tyy - 2.0 * txy, 0.0)


# ---------------------------------------------------------------- ott-jax baseline
def ott_pointcloud():
    """ott-jax's ``PointCloud`` class, or ``None`` when ott-jax is not installed.

    ott-jax 0.6.0's online (``batch_size``) path calls
    ``jax.interpreters.batching.is_vmappable``, which jax 0.10 removed; for the plain
    arrays it is given here that function returned ``False``, so a stand-in is installed.
    """
    from jax.interpreters import batching

    if not hasattr(batching, "is_vmappable"):
        batching.is_vmappable = lambda _: False
    try:
        from ott.geometry import pointcloud
    except ImportError:
        return None
    return pointcloud.PointCloud


def _ott_cloud(h, x, y, chunk):
    return ott_pointcloud()(x, y, epsilon=2.0 * h**2, batch_size=chunk)


def ott_matvec(h, x, y, w, chunk):
    return _ott_cloud(h, x, y, chunk).apply_kernel(w, axis=1)


def ott_grad_matvec(h, x, y, w, chunk):
    """``(K (w y) - (K w) x) / h^2`` from one ``apply_kernel`` on the ``[m, d + 1]`` block."""
    kv = _ott_cloud(h, x, y, chunk).apply_kernel(
        jnp.concatenate([w[:, None] * y, w[:, None]], 1), axis=1
    )
    return (kv[:, :-1] - kv[:, -1:] * x) / h**2


# baseline impl -> (matvec, grad_matvec, hess_matvec or None), each ``f(h, x, y, w, chunk)``
# for the Gaussian (``hess_matvec`` takes ``e [m, d]`` for ``w``)
BASELINES = {
    "plain_jax_chunked": (plain_matvec, plain_grad_matvec, plain_hess_matvec),
    "plain_jax_gemm": (gemm_matvec, gemm_grad_matvec, gemm_hess_matvec),
    "ott_online": (ott_matvec, ott_grad_matvec, None),
}


# ---------------------------------------------------------------- the benchmarked functions
def build_fn(impl: str, op: str, block_size, chunk: int):
    """Returns ``f(k, x, y, w)`` to jit (``k`` is a kernel pytree)."""
    if impl in BASELINES:
        mv, gmv, hmv = BASELINES[impl]
        if op == "matvec":
            return lambda k, x, y, w: mv(k.bandwidth, x, y, w, chunk)
        if op == "grad_matvec":
            return lambda k, x, y, w: gmv(k.bandwidth, x, y, w, chunk)
        if op == "hess_matvec":
            return lambda k, x, y, w: hmv(k.bandwidth, x, y, common.hess_rhs(y, w), chunk)
        mmd = lambda k, x, y: baseline_mmd2(mv, k.bandwidth, x, y, chunk)
        if op == "mmd2":
            return lambda k, x, y, w: mmd(k, x, y)
        if op == "kernel_grad_of_mmd2":
            return lambda k, x, y, w: jax.value_and_grad(
                lambda h: baseline_mmd2(mv, h, x, y, chunk)
            )(k.bandwidth)
        return lambda k, x, y, w: jax.grad(lambda x: mmd(k, x, y))(x)
    if impl == "blocked_pairwise":
        inner = build_fn("blocked", op, block_size, chunk)
        return lambda k, x, y, w: inner(pairwise_grad_kernel(k), x, y, w)
    kw = dict(sums=ops.SumConfig(impl, block_size))
    if op == "matvec":
        return lambda k, x, y, w: ops.kernel_matvec(k, x, y, w, **kw)
    if op == "grad_matvec":
        return lambda k, x, y, w: ops.kernel_grad_matvec(k, x, y, w, **kw)
    if op == "hess_matvec":
        return lambda k, x, y, w: ops.kernel_hessian_matvec(k, x, y, common.hess_rhs(y, w), **kw)
    if op == "mmd2":
        return lambda k, x, y, w: mmdflow.mmd2(x, y, k, **kw)
    if op == "kernel_grad_of_mmd2":
        return lambda k, x, y, w: jax.value_and_grad(lambda kk: mmdflow.mmd2(x, y, kk, **kw))(k)
    return lambda k, x, y, w: jax.grad(lambda x: mmdflow.mmd2(x, y, k, **kw))(x)


def make_inputs(n: int, d: int, seed: int = 0):
    x, y, rng = common.sample_points(n, d, seed)
    w = rng.uniform(0.5, 1.5, size=n).astype(np.float32) / np.float32(n)
    return tuple(jax.device_put(a) for a in (x, y, w))


# ---------------------------------------------------------------- metadata
def metadata(args, sizes) -> dict:
    return {
        "schema": SCHEMA,
        **common.environment(),
        "dtype": "float32",
        "exp_unit_bound_gpairs": exp_unit_bound(jax.devices()[0].device_kind),
        "exp_ceiling_gexp_per_s": measured_exp_ceiling(),
        "config": {
            "quick": args.quick,
            "n": list(sizes[0]),
            "d": list(sizes[1]),
            "impls": list(args.impls),
            "ops": list(args.ops),
            "kernels": list(args.kernels),
            "repeats": args.repeats,
            "block_size": args.block_size,
            "pallas_block_size": args.pallas_block_size,
            "pallas_interpret_max_n": args.pallas_interpret_max_n,
            "chunk": args.chunk,
            "max_dense_bytes": args.max_dense_bytes,
            "max_temp_bytes": args.max_temp_bytes,
            "max_run_s": args.max_run_s,
            "slow_s": args.slow_s,
            "run_known_crashes": args.run_known_crashes,
        },
        "definitions": {
            "compile_s": "wall time of jax.jit(f).lower(*args).compile()",
            "run_s": "median wall time of compiled(*args) + block_until_ready, after 1 warm-up",
            "gpairs_per_s": "n * m / run_s / 1e9 (nominal for the mmd2 ops: ~3nm pairs, fwd (+bwd))",
            "exp_unit_fraction": "gpairs_per_s / exp_unit_bound_gpairs (GPUs with a known bound)",
            "exp_ceiling_gexp_per_s": "measured_exp_ceiling(): fused sum(exp(-a_i b_j)), 4096^2",
            "exp_ceiling_fraction": "gpairs_per_s / exp_ceiling_gexp_per_s (matvec, grad_matvec)",
            "interpret": "pallas ran in Pallas interpret mode (not a GPU kernel; not a speed)",
            "temp_bytes": "compiled.memory_analysis().temp_size_in_bytes",
            "inputs": "x ~ N(0, I), y ~ N(0.5, I), w ~ U(0.5, 1.5)/m; bandwidth sqrt(2 d)",
        },
    }


# ---------------------------------------------------------------- one configuration
def bench_one(fn, k, args_, repeats: int, max_temp_bytes: int, slow_s: float) -> dict:
    rec: dict = {}
    t0 = time.perf_counter()
    lowered = jax.jit(fn).lower(k, *args_)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    rec["lower_s"] = t1 - t0
    rec["compile_s"] = t2 - t0
    rec["temp_bytes"] = temp = common.memory_bytes(compiled)
    rec["output_bytes"] = common.memory_bytes(compiled, "output_size_in_bytes")
    if temp is not None and temp > max_temp_bytes:
        rec["status"] = "skipped"
        rec["reason"] = (
            f"compiled temp {temp / 1e9:.2f} GB > --max-temp-bytes {max_temp_bytes / 1e9:.2f} GB"
        )
        return rec

    call = lambda: compiled(k, *args_)
    rec["warmup_s"] = warm = common.timings(call, 1)[0]
    if warm > slow_s:
        times = [warm]
        rec["note"] = f"warm-up took {warm:.1f} s > --slow-s; timed from the warm-up only"
    else:
        times = common.timings(call, repeats)
    rec["status"] = "ok"
    rec["run_s_all"] = times
    rec["run_s"] = statistics.median(times)
    rec["run_s_min"] = min(times)
    return rec


# ---------------------------------------------------------------- table
def markdown_table(records: list[dict]) -> str:
    dense = {
        (r["kernel"], r["op"], r["n"], r["d"]): r["run_s"]
        for r in records
        if r["impl"] == "dense" and r["status"] == "ok"
    }
    cols = ["kernel", "op", "impl", "n", "d", "compile s", "run ms", "Gpairs/s", "exp frac"]
    # exp frac: of the device's exp-unit bound where known (GPUs), else of the measured ceiling
    head = "| " + " | ".join([*cols, "temp MB", "vs dense", "note"]) + " |\n"
    head += "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
    order = lambda r: (
        r["kernel"],
        OPS.index(r["op"]),
        r["n"],
        r["d"],
        IMPLS.index(r["impl"]),
    )
    rows = []
    for r in sorted(records, key=order):
        ok = r["status"] == "ok"
        ref = dense.get((r["kernel"], r["op"], r["n"], r["d"]))
        ratio = f"{r['run_s'] / ref:.2f}x" if ok and ref and r["impl"] != "dense" else ""
        impl = r["impl"] + (" (interpret)" if r.get("interpret") else "")
        temp = r.get("temp_bytes")
        note = r.get("reason") or r.get("note") or ""
        rows.append(
            f"| {r['kernel']} | {r['op']} | {impl} | {r['n']} | {r['d']} "
            f"| {common.fmt(r.get('compile_s'), '.2f')} "
            f"| {common.fmt(r['run_s'] * 1e3 if ok else None, '.2f')} "
            f"| {common.fmt(r.get('gpairs_per_s'), '.3f')} "
            f"| {common.fmt(r.get('exp_unit_fraction', r.get('exp_ceiling_fraction')), '.3f')} "
            f"| {common.fmt(temp / 1e6 if temp is not None else None, '.1f')} "
            f"| {ratio} | {note} |"
        )
    return head + "\n".join(rows) + "\n"


# ---------------------------------------------------------------- driver
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"small sweep: n {QUICK_N}, d {QUICK_D}")
    p.add_argument("--n", type=int, nargs="+", help="sizes n (= m); overrides the defaults")
    p.add_argument("--d", type=int, nargs="+", help="dimensions; overrides the defaults")
    p.add_argument(
        "--impls",
        nargs="+",
        choices=IMPLS,
        default=list(DEFAULT_IMPLS),
        help=f"default: {' '.join(DEFAULT_IMPLS)}",
    )
    p.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    p.add_argument(
        "--kernels", nargs="+", choices=KERNELS, default=["gaussian"], help="default: gaussian"
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed runs after 1 warm-up; the median is reported (default 5, 3 with --quick)",
    )
    p.add_argument(
        "--block-size", type=int, default=None, help="blocked tiles (default: the tuned tiles)"
    )
    p.add_argument(
        "--pallas-block-size",
        type=int,
        nargs=2,
        default=None,
        metavar=("ROWS", "COLS"),
        help="tiles of the pallas impl (powers of two in [16, 256]); default: "
        f"({fused.DEFAULT_BLOCK_ROWS}, {fused.DEFAULT_BLOCK_COLS})",
    )
    p.add_argument(
        "--pallas-interpret-max-n",
        type=int,
        default=PALLAS_INTERPRET_MAX_N,
        help="off a GPU, pallas runs (in interpret mode) only with --quick and n <= this",
    )
    p.add_argument(
        "--chunk",
        type=int,
        default=1024,
        help="batch size of the baselines (plain JAX lax.map, ott-jax PointCloud)",
    )
    p.add_argument(
        "--max-dense-bytes",
        type=float,
        default=2e9,
        help="skip dense when n*m*4 bytes exceed this (default 2e9)",
    )
    p.add_argument(
        "--max-temp-bytes",
        type=float,
        default=None,
        help="skip (before running) any compiled call whose temp memory exceeds this "
        "(default: half the device memory / host RAM)",
    )
    p.add_argument(
        "--max-run-s",
        type=float,
        default=60.0,
        help="skip a config whose run time extrapolated from the previous n exceeds this",
    )
    p.add_argument(
        "--slow-s", type=float, default=10.0, help="warm-up longer than this: no further repeats"
    )
    p.add_argument(
        "--run-known-crashes",
        action="store_true",
        help="also run configurations known to segfault (see known_crash)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON output (default benchmarks/results/kernel_sums_<platform>[_quick].json)",
    )
    p.add_argument(
        "--no-plot", action="store_true", help="do not write the PNG plot next to the JSON"
    )
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


def default_sizes(quick: bool, backend: str):
    if quick:
        return QUICK_N, QUICK_D
    if backend == "gpu":
        return GPU_N, GPU_D
    return CPU_N, CPU_D


def known_crash(args, op, impl, n, m, d) -> bool:
    """Configurations known to kill the process; none at present.

    (A segfault of ``jit(grad(mmd2, impl="blocked"))`` with a single tile on XLA:CPU,
    found by this benchmark, is avoided in ``mmdflow.ops`` since the single-tile case
    skips the loops; ``tests/test_ops.py`` guards it in a subprocess.)
    """
    return False


def skip_reason(args, kname, op, impl, n, m, d, prev) -> str | None:
    """Why a configuration is not run (``None``: run it). ``prev = (n, run_s)`` or None."""
    if impl == "plain_jax_chunked" and kname != "gaussian":
        return "plain-JAX baseline is Gaussian-only"
    if impl == "ott_online":
        if kname != "gaussian":
            return "ott-jax baseline is Gaussian-only (PointCloud's kernel is exp(-cost / eps))"
        if ott_pointcloud() is None:
            return 'ott-jax is not installed (pip install -e ".[bench]")'
        if op == "hess_matvec":
            return "ott-jax has no Hessian kernel sum"
    if impl == "pallas" and jax.default_backend() != "gpu":
        if not args.quick or n > args.pallas_interpret_max_n:
            return (
                "pallas off a GPU runs in Pallas interpret mode (not a performance number): "
                f"only with --quick and n <= --pallas-interpret-max-n "
                f"({args.pallas_interpret_max_n}); GPU: pending"
            )
    if known_crash(args, op, impl, n, m, d):
        return (
            "known crash: jit(grad(mmd2, impl='blocked')) segfaults on CPU (jax 0.10.2) "
            "with a single tile (64 <= n <= block_size) and d <= 8; --run-known-crashes to try"
        )
    if impl == "dense" and n * m * 4 > args.max_dense_bytes:
        return (
            f"n*m*4 = {n * m * 4 / 1e9:.2f} GB > --max-dense-bytes "
            f"{args.max_dense_bytes / 1e9:.2f} GB"
        )
    if prev is not None:
        pred = prev[1] * (n / prev[0]) ** 2
        if pred > args.max_run_s:
            return (
                f"predicted run {pred:.0f} s (from n={prev[0]}) "
                f"> --max-run-s {args.max_run_s:.0f} s"
            )
    return None


def run_config(args, kname, op, impl, n, d, prev, exp_ceiling=None) -> dict:
    m = n
    bandwidth = math.sqrt(2.0 * d)
    rec = {
        "kernel": kname,
        "op": op,
        "impl": impl,
        "n": n,
        "m": m,
        "d": d,
        "bandwidth": bandwidth,
        "block_size": _block_record(args, impl),
        "chunk": args.chunk if impl in ("plain_jax_chunked", "ott_online") else None,
    }
    reason = skip_reason(args, kname, op, impl, n, m, d, prev)
    if reason is not None:
        rec.update(status="skipped", reason=reason)
        return rec
    k = make_kernel(kname, bandwidth)
    x, y, w = make_inputs(n, d, args.seed)
    fn = build_fn(impl, op, _block_of(args, impl), args.chunk)
    if impl == "pallas" and jax.default_backend() != "gpu":
        rec["interpret"] = True
        rec["note"] = "Pallas interpret mode on CPU: a correctness run, not a speed"
    if impl == "ott_online":
        rec["note"] = (
            f"ott-jax {common.ott_jax_version()} PointCloud(batch_size={args.chunk}).apply_kernel"
        )
    rec.update(bench_one(fn, k, (x, y, w), args.repeats, args.max_temp_bytes, args.slow_s))
    if rec["status"] == "ok":
        rec["gpairs_per_s"] = n * m / rec["run_s"] / 1e9
        bound = exp_unit_bound(jax.devices()[0].device_kind)
        if bound is not None and not rec.get("interpret"):
            rec["exp_unit_fraction"] = rec["gpairs_per_s"] / bound
        if exp_ceiling and op in ("matvec", "grad_matvec") and not rec.get("interpret"):
            rec["exp_ceiling_fraction"] = rec["gpairs_per_s"] / exp_ceiling
    return rec


def _block_of(args, impl):
    """The tile argument passed to ``ops`` for ``impl`` (None where it has none)."""
    if impl == "blocked":
        return args.block_size
    if impl == "pallas":
        bs = args.pallas_block_size
        return tuple(bs) if bs else None  # the fused default tiles
    return args.block_size


def _block_record(args, impl):
    """The tiles recorded in the JSON: ``block_size`` (blocked), ``[rows, cols]`` (pallas)."""
    if impl in ("blocked", "blocked_pairwise"):
        return args.block_size
    if impl == "pallas":
        bs = args.pallas_block_size
        return list(bs) if bs else [fused.DEFAULT_BLOCK_ROWS, fused.DEFAULT_BLOCK_COLS]
    return None


def _progress(rec: dict) -> str:
    s = f"{rec['kernel']:8s} {rec['op']:12s} {rec['impl']:17s} n={rec['n']:<7d} d={rec['d']:<4d} "
    if rec["status"] != "ok":
        return s + f"skipped: {rec['reason']}"
    return s + (
        f"compile {rec['compile_s']:6.2f} s  run {rec['run_s'] * 1e3:9.2f} ms  "
        f"{rec['gpairs_per_s']:7.3f} Gpairs/s  temp {(rec['temp_bytes'] or 0) / 1e6:8.1f} MB"
    )


def main(argv=None) -> dict:
    """Runs the sweep; writes the JSON, prints the table, and returns the result dict."""
    args = parse_args(argv)
    backend = jax.default_backend()
    dn, dd = default_sizes(args.quick, backend)
    ns = sorted(set(args.n or dn))
    ds = sorted(set(args.d or dd))
    if args.max_temp_bytes is None:
        args.max_temp_bytes = common.default_memory_budget()
    out = Path(args.out or common.default_out("kernel_sums", args.quick))

    result = {"metadata": (md := metadata(args, (ns, ds))), "records": []}
    t_start = time.perf_counter()

    def flush():
        result["metadata"]["total_wall_s"] = time.perf_counter() - t_start
        result["metadata"]["loadavg_end"] = common.loadavg()
        common.write_json(out, result)

    last: dict = {}  # (kernel, op, impl, d) -> (n, run_s) for run-time extrapolation
    # n innermost and ascending, so that the extrapolation guard sees the smaller sizes first
    configs = itertools.product(args.kernels, args.ops, ds, args.impls, ns)
    for kname, op, d, impl, n in configs:
        key = (kname, op, impl, d)
        rec = run_config(args, kname, op, impl, n, d, last.get(key), md["exp_ceiling_gexp_per_s"])
        if rec["status"] == "ok":
            last[key] = (n, rec["run_s"])
        result["records"].append(rec)
        flush()
        common.log(_progress(rec))
        gc.collect()
    flush()
    print(
        f"\nmmdflow kernel sums: {md['platform']} ({md['device_kind']}), jax {md['jax']}, "
        f"{md['date_utc']}, total {md['total_wall_s']:.1f} s, "
        f"exp ceiling {md['exp_ceiling_gexp_per_s']:.2f} G/s, "
        f"loadavg {md['loadavg_start']} -> {md['loadavg_end']}; JSON: {out}\n"
    )
    print(markdown_table(result["records"]))
    if not args.no_plot:
        print(f"plot: {plot_results.plot_kernel_sums(result, out.with_suffix('.png'))}")
    return result


if __name__ == "__main__":
    main()
