"""Loading inputs and resolving defaults for the ``mmdflow`` commands."""

from __future__ import annotations

import math

import numpy as np

from mmdflow.cli._common import MIXTURE_FACTORS, CLIError
from mmdflow.fields._sobolev import EXACT_MAX_SIZE, num_features_for


def resolve_num_features(spec: int | str, n: int, d: int) -> tuple[int | None, str]:
    """Resolves ``--num-features`` to ``SobolevField.num_features``.

    Args:
        spec: ``"auto"``, ``"exact"`` or a positive int.
        n: Number of particles.
        d: Dimension.

    Returns:
        ``(num_features, rule)``: ``None`` for the exact kernel critic, and a
        human-readable account of the choice (recorded in ``metrics.json``).
    """
    if spec == "exact":
        return None, "exact kernel (requested)"
    if spec == "auto":
        nf = num_features_for(n, d)
        if nf is None:
            return None, f"auto: exact kernel since n*d = {n * d} <= {EXACT_MAX_SIZE}"
        return nf, f"auto: {nf} random Fourier features since n*d = {n * d} > {EXACT_MAX_SIZE}"
    return int(spec), f"{int(spec)} random Fourier features (requested)"


def _strip_spec(msg: str, prefix: str, spec: str) -> str:
    """Drops the library's ``"func: 'spec': "`` prefix (the CLI names the option and spec)."""
    msg = msg.removeprefix(prefix)
    for head in (f"{spec!r}: ", f"{spec!r} "):
        if msg.startswith(head):
            return msg[len(head) :]
    return msg


def _load_points(option: str, spec: str, n: int, seed: int, *, indices: bool = False):
    """``data.load_points`` with one-line :class:`CLIError` s; ``indices``: also the rows kept."""
    from mmdflow import data

    try:
        pts, rows = data.load_points(spec, n, seed, return_indices=True)
    except (ValueError, ImportError, OSError) as e:
        raise CLIError(f"{option} {spec!r}: {_strip_spec(str(e), 'load_points: ', spec)}") from None
    if pts.shape[0] < 2:
        raise CLIError(f"{option} {spec!r}: needs at least 2 points; got shape {pts.shape}")
    pts = np.ascontiguousarray(pts, dtype=np.float32)
    return (pts, rows) if indices else pts


def _median_bandwidth(x: np.ndarray, y: np.ndarray, option: str = "--source/--target") -> float:
    from mmdflow.kernels import median_bandwidth

    bw = float(median_bandwidth(x, y))
    if not (math.isfinite(bw) and bw > 0):
        raise CLIError(
            f"median bandwidth of {option} is {bw} (all points equal?); pass --bandwidth"
        )
    return bw


def _make_kernel(kind: str, bandwidth: float):
    """Returns ``(kernel, info)``; bandwidth arrays are float32 so they never upcast."""
    from mmdflow import kernels

    if kind == "gaussian":
        return kernels.Gaussian(bandwidth), {"type": "Gaussian", "bandwidths": [bandwidth]}
    bws = np.asarray([bandwidth * f for f in MIXTURE_FACTORS], dtype=np.float32)
    info = {
        "type": "MixtureRBF",
        "bandwidths": [float(b) for b in bws],
        "factors_of_base_bandwidth": list(MIXTURE_FACTORS),
    }
    return kernels.MixtureRBF(bws), info


def _kernel_mmd2_f64(x: np.ndarray, y: np.ndarray, bandwidths, block: int = 1024) -> float:
    """Biased MMD^2 in float64 for a (mixture of) Gaussian kernel(s), blocked over rows."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    c = 1.0 / (2.0 * np.asarray(bandwidths, np.float64) ** 2)

    def mean_k(a, b):
        total = 0.0
        for i in range(0, len(a), block):
            ai = a[i : i + block]
            d2 = np.sum(ai * ai, 1)[:, None] + np.sum(b * b, 1)[None, :] - 2.0 * ai @ b.T
            d2 = np.maximum(d2, 0.0)
            total += sum(float(np.exp(-ci * d2).sum()) for ci in c)
        return total / (len(a) * len(b))

    return mean_k(x, x) + mean_k(y, y) - 2.0 * mean_k(x, y)


def _timings(hist: dict, num_steps: int, record_every: int) -> dict:
    wall = np.asarray(hist["wall_time"], dtype=np.float64)
    first_steps = min(record_every, num_steps)
    first = float(wall[1]) if len(wall) > 1 else float("nan")
    rest_steps = num_steps - first_steps
    per_step = (
        (float(wall[-1]) - first) / rest_steps if rest_steps > 0 else first / max(num_steps, 1)
    )
    return {
        "flow_s": float(wall[-1]),
        "first_chunk_s": first,
        "first_chunk_steps": first_steps,
        "compile_s_estimate": max(first - per_step * first_steps, 0.0),
        "per_step_s": per_step,
        "note": "first_chunk_s includes XLA compilation; per_step_s is measured after it "
        "and includes the MMD^2 recording",
    }


def _features_note(nf: int | None, resample: bool) -> str:
    if nf is None:
        return "exact kernel critic (no random features)"
    if resample:
        return f"{nf} random Fourier features redrawn at every step"
    return f"{nf} random Fourier features drawn once (--fixed-features)"


def _reduction(start: float, end: float) -> float | None:
    if end > 0 and math.isfinite(start) and math.isfinite(end):
        return start / end
    return None


def _fmt_ratio(r: float | None) -> str:
    return "n/a" if r is None else f"{r:,.0f}x" if r >= 10 else f"{r:.2f}x"


def _fmt_change(start: float, end: float) -> str:
    """How MMD^2 changed from ``start`` to ``end``: ``"120x lower"`` or ``"2.01x higher"``."""
    r = _reduction(start, end)
    if r is None:
        return "n/a"
    return f"{_fmt_ratio(r)} lower" if r >= 1 else f"{_fmt_ratio(1 / r)} higher"
