"""The kernel Stein discrepancy ``KSD^2`` of weighted particles to an unnormalized density."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from mmdflow._checks import check_bool, check_points, normalized_weights
from mmdflow.kernels import Kernel, Stein, stein_points
from mmdflow.ops import SumConfig, check_kernel, check_sum_config, kernel_matvec

__all__ = ["ksd2"]


def ksd2(
    x: jax.Array,
    logp: Callable[[jax.Array], jax.Array],
    k: Kernel,
    *,
    wx: jax.Array | None = None,
    u_statistic: bool = False,
    sums: SumConfig | None = None,
) -> jax.Array:
    """``KSD^2`` of the particles ``x`` (weights ``wx``) to the density ``p``, base kernel ``k``.

    The V-statistic ``sum_ij w_i w_j k_p(x_i, x_j)`` (:class:`mmdflow.kernels.Stein`), a
    kernel sum on the augmented points ``[x, grad log p(x)]`` (no ``[n, n]`` array beyond a
    tile); with ``u_statistic`` the diagonal is dropped and the rest renormalised,
    ``(V - sum_i w_i^2 k_p(x_i, x_i)) / (1 - sum_i w_i^2)`` (for uniform weights the mean
    over pairs ``i != j``, unbiased; it can be negative). Zero-weight rows drop out.

    Args:
      x: ``[n, d]`` particles.
      logp: the target log-density ``[d] -> scalar`` (up to a constant).
      k: the base kernel.
      wx: optional ``[n]`` particle weights (normalised here; default uniform).
      u_statistic: the U-statistic instead of the V-statistic.
      sums: how the kernel sum runs (:class:`mmdflow.ops.SumConfig`; default ``SumConfig()``).

    Returns:
      Scalar ``KSD^2``.

    Example:
      >>> import jax
      >>> from mmdflow import densities, kernels
      >>> from mmdflow.ksd import ksd2
      >>> p = densities.Gaussian()
      >>> x = p.sample(jax.random.key(0), 500)
      >>> float(ksd2(x, p, kernels.Gaussian(1.0))) < float(ksd2(x + 1.0, p, kernels.Gaussian(1.0)))
      True
    """
    check_kernel(k)
    check_bool("ksd2", "u_statistic", u_statistic)
    sums = check_sum_config("ksd2", sums)
    x = check_points("x", x)
    w = normalized_weights("wx", wx, x.shape[0], "x", x.dtype)
    z = stein_points(logp, x)
    ks = Stein(k, x.shape[1])
    v = jnp.dot(w, kernel_matvec(ks, z, z, w, sums=sums))
    if not u_statistic:
        return v
    diag = jnp.dot(w * w, ks.diag(z))
    return (v - diag) / (1.0 - jnp.sum(w * w))
