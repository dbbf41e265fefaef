"""Tile shapes of the blocked kernel sums, compared in one process (issue 17).

For every ``n`` (= ``m``), ``d`` and op (``matvec``, ``grad`` = ``kernel_grad_matvec``,
``vg`` = ``kernel_value_and_grad_matvec``, ``hess`` = ``kernel_hessian_matvec`` against
``e = w y``), the Gaussian kernel (bandwidth ``sqrt(2 d)``), float32, ``impl="blocked"``: each
candidate ``block_size`` (``default`` = ``None``, :func:`mmdflow.ops.default_tiles`; ``RxC`` =
``(R, C)``) is jitted and warmed up, then the candidates are timed in turn, ``--repeats``
rounds, and the median of each reported. Alternating within one process makes the ratios
meaningful on a shared, noisy machine where absolute times are not.

Usage:
  python benchmarks/tile_probe.py --n 4096 16384 --d 16 64 --tiles default 512x1024
  python benchmarks/tile_probe.py --quick

Writes JSON (metadata + records with the median ms per candidate) to ``--out`` (default
``benchmarks/results/tile_probe_<platform>[_quick].json``) and prints a markdown table with
each candidate's time over the first candidate's.
"""

from __future__ import annotations

import argparse
import math
import statistics

import _common as common
import jax
import jax.numpy as jnp

from mmdflow import kernels, ops

SCHEMA = "mmdflow.bench.tile_probe/1"
OPS = ("matvec", "grad", "vg", "hess")
_SUMS = {
    "matvec": ops.kernel_matvec,
    "grad": ops.kernel_grad_matvec,
    "vg": ops.kernel_value_and_grad_matvec,
    "hess": lambda k, x, y, w, sums: ops.kernel_hessian_matvec(
        k, x, y, common.hess_rhs(y, w), sums=sums
    ),
}


def parse_tile(text: str):
    """``"default"`` -> None; ``"RxC"`` -> ``(R, C)``."""
    if text == "default":
        return None
    try:
        r, c = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'default' or RxC; got {text!r}") from None
    if r < 1 or c < 1:
        raise argparse.ArgumentTypeError(f"tile sides must be >= 1; got {text!r}")
    return r, c


def probe(n: int, d: int, op: str, tiles: list, repeats: int, seed: int = 0) -> dict:
    """Median ms per candidate tile for one configuration (candidates timed in turn)."""
    x, y, rng = common.sample_points(n, d, seed)
    w = jnp.asarray(rng.uniform(0.5, 1.5, size=n).astype("float32") / n)
    x, y = jnp.asarray(x), jnp.asarray(y)
    k = kernels.Gaussian(jnp.float32(math.sqrt(2.0 * d)))
    fns = []
    for t in tiles:
        sums = ops.SumConfig("blocked", t)
        f = jax.jit(lambda k, x, y, w, sums=sums: _SUMS[op](k, x, y, w, sums=sums))
        jax.block_until_ready(f(k, x, y, w))
        fns.append(f)
    times = [[] for _ in tiles]
    for _ in range(repeats):
        for f, ts in zip(fns, times, strict=True):
            ts.extend(common.timings(lambda f=f: f(k, x, y, w), 1))
    return {
        "n": n,
        "d": d,
        "op": op,
        "default_tiles": list(ops.default_tiles(d, n, n)),
        "ms": [statistics.median(ts) * 1e3 for ts in times],
    }


def markdown_table(records: list[dict], names: list[str]) -> str:
    head = "| n | d | op | " + " | ".join(f"{t} ms" for t in names)
    head += " | " + " | ".join(f"{t} / {names[0]}" for t in names[1:]) + " |"
    lines = [head, "|" + "---|" * (3 + 2 * len(names) - 1)]
    for r in records:
        ms = r["ms"]
        cells = [f"{v:.1f}" for v in ms] + [f"{v / ms[0]:.2f}" for v in ms[1:]]
        lines.append(f"| {r['n']} | {r['d']} | {r['op']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--d", type=int, nargs="+", default=[16, 64])
    p.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    p.add_argument("--tiles", type=parse_tile, nargs="+", default=[None, (512, 1024), (1024, 1024)])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--quick", action="store_true", help="n 512 1024, d 16, 3 repeats")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.d, args.repeats = [512, 1024], [16], 3
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    names = ["default" if t is None else f"{t[0]}x{t[1]}" for t in args.tiles]
    meta = common.environment() | {"schema": SCHEMA, "date": common.utc_timestamp()}
    res = {"metadata": meta | {"tiles": names, "repeats": args.repeats}, "records": []}
    out = args.out or common.default_out("tile_probe", args.quick)
    for d in args.d:
        for n in args.n:
            for op in args.ops:
                rec = probe(n, d, op, args.tiles, args.repeats)
                res["records"].append(rec)
                common.log(f"n={n} d={d} {op}: " + " ".join(f"{v:.1f}" for v in rec["ms"]))
                common.write_json(out, res)
    res["metadata"]["loadavg_end"] = common.loadavg()
    common.write_json(out, res)
    print(markdown_table(res["records"], names))
    return res


if __name__ == "__main__":
    main()
