"""Plots of benchmark results: Gpairs/s against n for a ``kernel_sums.py`` JSON.

One panel per op, x = n (log2 axis), y = Gpairs/s (log axis), one line per (impl, d):
colour = impl, marker = d. Skipped configurations and Pallas interpret-mode runs (a
correctness check, not a speed) are left out. Where the metadata has the device's exp-unit
bound (``exp_unit_bound_gpairs``, GPUs), the ``matvec`` and ``grad_matvec`` panels draw it
as a dashed line. ``mmd2`` and ``grad_of_mmd2`` are nominal rates (``n m / run``; the calls
do three kernel sums, forward, and for the gradient backward).

Usage:
  python benchmarks/plot_results.py benchmarks/results/kernel_sums_cpu.json   # -> ..._cpu.png
  python benchmarks/plot_results.py results/kernel_sums_gpu.json --out gpu.png

``kernel_sums.py`` calls :func:`plot_kernel_sums` after a run (unless ``--no-plot``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter, NullLocator

OPS = ("matvec", "grad_matvec", "hess_matvec", "mmd2", "grad_of_mmd2", "kernel_grad_of_mmd2")
IMPL_COLORS = {
    "dense": "C0",
    "blocked": "C1",
    "pallas": "C2",
    "plain_jax_chunked": "C3",
    "ott_online": "C4",
    "blocked_pairwise": "C5",
}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
ROOFLINE_OPS = ("matvec", "grad_matvec")  # one exp per pair: the exp-unit bound applies
DPI = 100


def _n_label(n: int) -> str:
    for unit, scale in (("M", 2**20), ("k", 2**10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def _series(records: list[dict]) -> dict:
    """``{op: {(kernel, impl, d): [(n, gpairs_per_s), ...]}}`` of the timed records."""
    out: dict = {}
    for r in records:
        if r.get("status") != "ok" or r.get("interpret") or r.get("gpairs_per_s") is None:
            continue
        key = (r["kernel"], r["impl"], r["d"])
        out.setdefault(r["op"], {}).setdefault(key, []).append((r["n"], r["gpairs_per_s"]))
    return out


class _PlainLog(LogFormatter):
    """Log-axis labels as plain numbers (``0.2``, not ``2e-01``), on the ticks that
    :class:`~matplotlib.ticker.LogFormatter` labels."""

    def __call__(self, x, pos=None):
        return f"{x:g}" if super().__call__(x, pos) else ""


def plot_kernel_sums(result: dict, out) -> Path:
    """Writes the Gpairs/s plot of a ``kernel_sums.py`` result dict to ``out`` (PNG, Agg;
    no pyplot, so no global matplotlib state is touched)."""
    md, records = result["metadata"], result["records"]
    series = _series(records)
    ops = [op for op in OPS if op in series] + sorted(set(series) - set(OPS))
    kernels = sorted({k for per_op in series.values() for k, _, _ in per_op})
    impls = [i for i in IMPL_COLORS if any(i == k[1] for s in series.values() for k in s)]
    ds = sorted({d for per_op in series.values() for _, _, d in per_op})
    marker = {d: MARKERS[i % len(MARKERS)] for i, d in enumerate(ds)}
    style = {k: ls for k, ls in zip(kernels, ("-", "--", ":", "-."), strict=False)}
    bound = md.get("exp_unit_bound_gpairs")

    fig = Figure(figsize=(3.6 * max(len(ops), 1) + 1.6, 3.6), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(len(ops), 1), squeeze=False)[0]
    for ax, op in zip(axes, ops, strict=False):
        for (kname, impl, d), pts in sorted(series[op].items()):
            ns, rates = zip(*sorted(pts), strict=True)
            color = IMPL_COLORS.get(impl, "k")
            ax.plot(ns, rates, marker=marker[d], ls=style[kname], color=color, ms=5, lw=1.3)
        if bound and op in ROOFLINE_OPS:
            ax.axhline(bound, ls="--", color="0.3", lw=1)
        ns = sorted({n for pts in series[op].values() for n, _ in pts})
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(ns, [_n_label(n) for n in ns])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_formatter(_PlainLog(labelOnlyBase=False))
        ax.yaxis.set_minor_formatter(_PlainLog(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
        ax.set_xlabel("n = m")
        ax.set_title(op + (" (nominal)" if "mmd2" in op else ""), fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
    if ops:
        axes[0].set_ylabel("Gpairs/s")
    else:
        axes[0].text(0.5, 0.5, "no timed records", ha="center", va="center")
        axes[0].set_axis_off()

    handles = [Line2D([], [], color=IMPL_COLORS[i], lw=2, label=i) for i in impls]
    handles += [Line2D([], [], color="0.4", marker=marker[d], ls="", label=f"d = {d}") for d in ds]
    if len(kernels) > 1:
        handles += [Line2D([], [], color="0.4", ls=style[k], label=k) for k in kernels]
    if bound and any(op in ROOFLINE_OPS for op in ops):
        handles.append(Line2D([], [], color="0.3", ls="--", label=f"exp-unit bound {bound:g}"))
    left_out = sum(r.get("status") != "ok" or bool(r.get("interpret")) for r in records)
    if left_out:  # a note under the legend entries
        note = f"({left_out} skipped or\ninterpret-mode\nrecords left out)"
        handles.append(Line2D([], [], ls="", label=note))
    if handles:
        fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)

    device = md.get("device_kind", "?")
    kern = ", ".join(kernels) or "-"
    fig.suptitle(
        f"mmdflow kernel sums ({kern}, {md.get('dtype', 'float32')}): {device} "
        f"({md.get('platform', '?')}), jax {md.get('jax', '?')}, {md.get('date_utc', '?')}",
        fontsize=10,
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=DPI)
    return out


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json", type=Path, help="a kernel_sums.py result JSON")
    p.add_argument("--out", type=Path, default=None, help="PNG (default: the JSON's, .png)")
    args = p.parse_args(argv)
    here = Path(__file__).resolve().parent
    # relative paths: from the working directory, else from benchmarks/ or the repository root
    found = [c for c in (args.json, here / args.json, here.parent / args.json) if c.is_file()]
    if not found:
        p.error(f"{args.json}: no such file")
    src = found[0]
    out = plot_kernel_sums(json.loads(src.read_text()), args.out or src.with_suffix(".png"))
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
