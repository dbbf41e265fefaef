"""The median-distance bandwidth heuristic."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mmdflow._checks import check_points
from mmdflow.kernels._base import _safe_sqrt, sqdist


def median_bandwidth(x: jax.Array, y: jax.Array | None = None, *, max_points: int = 2000):
    """Median heuristic: the median pairwise Euclidean distance of the pooled points.

    Pairs ``i < j`` of ``[x; y]`` are used (no zero self-distances). Above
    ``max_points`` pooled points an evenly spaced deterministic subsample is used.
    Jit-able; the result is a scalar to pass as ``Gaussian(bandwidth=...)``.

    Args:
      x: ``[n, d]`` points.
      y: optional ``[m, d]`` points pooled with ``x``.
      max_points: subsample size bound (static).

    Returns:
      Scalar median distance (NaN if any input is NaN).

    Example:
      >>> import jax.numpy as jnp
      >>> float(median_bandwidth(jnp.array([[0.0], [1.0], [3.0]])))
      2.0
    """
    x = check_points("x", x, min_n=1)
    if y is not None:
        y = check_points("y", y, d=x.shape[1])
        x = jnp.concatenate([x, y.astype(x.dtype)], axis=0)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"median_bandwidth needs at least 2 pooled points; got shape {x.shape}.")
    if n > max_points:
        idx = jnp.round(jnp.linspace(0, n - 1, max_points)).astype(jnp.int32)
        x = x[idx]
        n = max_points
    x = x - jnp.mean(x, axis=0, keepdims=True)
    s = sqdist(x, x)
    iu = jnp.triu_indices(n, k=1)
    return jnp.median(_safe_sqrt(s[iu]))
