"""The Langevin-Stein kernel of a base kernel, on augmented points ``z = [x, grad log p(x)]``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from mmdflow.densities import score
from mmdflow.kernels._base import (
    DIRECT_MAX_D,
    HIGHEST,
    Kernel,
    RadialKernel,
    _by_coordinate,
    _pytree,
    centred,
)
from mmdflow.kernels._feature import FeatureKernel


@_pytree(data=("kernel",), meta=("d",))
class Stein(Kernel):
    """The Langevin-Stein kernel ``k_p`` of a base kernel ``k`` and a target ``p``:

        ``k_p(x, y) = s(x).s(y) k(x, y) + s(x).grad_y k(x, y) + s(y).grad_x k(x, y)
        + tr(grad_x grad_y k(x, y))``,  ``s = grad log p``,

    as a kernel on augmented points ``z = [x, s(x)]`` of dimension ``2 d``
    (:func:`stein_points`): the scores are computed once per point, not per pair, and
    every kernel sum of :mod:`mmdflow.ops` applies unchanged (``kernel_matvec(Stein(k, d),
    z, z, w)``, never an ``[n, m]`` array beyond a tile). ``E_{x ~ p} k_p(x, y) = 0`` for
    every ``y`` (Stein's identity), so the kernel discrepancy

        ``KSD^2(q) = E_{x, x' ~ q} k_p(x, x') = w . kernel_matvec(Stein(k, d), z, z, w)``

    (:func:`mmdflow.ksd.ksd2`) measures ``q`` against ``p`` from ``p``'s score alone (Liu, Lee & Jordan
    2016; Chwialkowski, Strathmann & Gretton 2016; Gorham & Mackey 2017).

    Radial base kernels (``phi(|x - y|^2)``, ``r = x - y``) have the closed form

        ``k_p = s_x.s_y phi + 2 phi' (s_y - s_x).r - 2 d phi' - 4 phi'' |r|^2``,

    used for tiles (``gram_block``); other base kernels go through autodiff of ``k``.

    Attributes:
      kernel: the base kernel ``k`` (twice differentiable).
      d: the dimension of ``x`` (static).

    Example:
      >>> import jax.numpy as jnp
      >>> from mmdflow import kernels
      >>> ks = kernels.Stein(kernels.Gaussian(1.0), 2)
      >>> z = kernels.stein_points(lambda x: -0.5 * jnp.sum(x**2), jnp.zeros((1, 2)))
      >>> float(ks(z[0], z[0]))  # tr(grad_x grad_y k) = d / bandwidth^2 at x = y
      2.0
    """

    #: its gradient tile is reverse mode through the closed form (about ten ``[rows, cols]``
    #: arrays): KSD descent's step at n = 4096 / 16,384, d = 2, on 2 Xeon cores, 468 / 7,240 ms
    #: with the other sums' tiles (512 x 4096 / 128 x 16,384), 216 / 2,872 ms with 2^17 pairs
    #: (128 x 1024 / 32 x 4096; benchmarks/RESULTS.md, session 10)
    grad_tile_pairs = 2**17

    kernel: Kernel = None
    d: int = 1

    def __post_init__(self):
        if not isinstance(self.kernel, Kernel):
            raise ValueError(
                f"Stein: `kernel` must be an mmdflow.kernels.Kernel; got {self.kernel!r}."
            )
        if isinstance(self.kernel, Stein):
            raise ValueError("Stein: `kernel` must be a base kernel, not a Stein kernel.")
        if not (isinstance(self.d, int) and self.d >= 1):
            raise ValueError(f"Stein: `d` must be an int >= 1; got {self.d!r}.")

    def _split(self, z):
        return z[..., : self.d], z[..., self.d :]

    def __call__(self, z1, z2):
        (x, sx), (y, sy) = self._split(z1), self._split(z2)
        k = self.kernel
        gx = jax.grad(k, argnums=0)(x, y)
        gy = jax.grad(k, argnums=1)(x, y)
        hxy = jax.jacfwd(jax.grad(k, argnums=0), argnums=1)(x, y)
        return jnp.dot(sx, sy) * k(x, y) + jnp.dot(sx, gy) + jnp.dot(sy, gx) + jnp.trace(hxy)

    def gram_block(self, z1, z2):
        if not isinstance(self.kernel, RadialKernel):
            return super().gram_block(z1, z2)
        return self._radial_block(z1, z2, direct=self.d <= DIRECT_MAX_D)

    def _radial_block(self, z1, z2, direct: bool):
        """The radial closed form on a tile: direct per-coordinate differences (``[n, m]``
        each, no ``[n, m, d]``) or GEMM forms on points centred at the tile's first ``y``
        point (:func:`centred`)."""
        (x, sx), (y, sy) = self._split(z1), self._split(z2)
        d, k = self.d, self.kernel
        if direct:
            yt, syt = _by_coordinate(y), _by_coordinate(sy)
            s = ryx = None
            for a in range(d):
                da = x[:, a, None] - yt[None, a, :]
                t = da * (syt[None, a, :] - sx[:, a, None])
                s = da * da if s is None else s + da * da
                ryx = t if ryx is None else ryx + t
        else:
            x, y = centred(x, y)
            xx, yy = jnp.sum(x * x, axis=1), jnp.sum(y * y, axis=1)
            s = xx[:, None] + yy[None, :] - 2.0 * jnp.matmul(x, y.T, precision=HIGHEST)
            s = jnp.maximum(s, 0.0)
            # (s_y - s_x).(x - y) = x.s_y - y.s_y - x.s_x + y.s_x
            ryx = (
                jnp.matmul(x, sy.T, precision=HIGHEST)
                - jnp.sum(y * sy, axis=1)[None, :]
                - jnp.sum(x * sx, axis=1)[:, None]
                + jnp.matmul(sx, y.T, precision=HIGHEST)
            )
        ss = jnp.matmul(sx, sy.T, precision=HIGHEST)
        g1 = k.profile_grad(s)
        return ss * k.profile(s) + 2.0 * g1 * ryx - 2.0 * d * g1 - 4.0 * k.profile_hess(s) * s

    def grad_block(self, z1, z2, w):
        """``out[i, c, :] = sum_j w[j, c] grad_z k_p(z1_i, z2_j)`` by reverse mode of
        :meth:`gram_block` (row ``i`` depends on ``z1_i`` alone)."""

        def col(wc):
            return jax.grad(lambda z: jnp.sum(jnp.matmul(self.gram_block(z, z2), wc)))(z1)

        return jax.vmap(col, in_axes=1, out_axes=1)(w)

    def hess_block(self, z1, z2, e):
        """``out[i] = sum_j H(z1_i, z2_j) e_j`` (``e [m, 2 d]``), the cross-Hessian of
        ``k_p`` in the augmented points: forward mode in ``z2`` then reverse mode in ``z1``
        of the tile's closed form (radial base kernels), always with direct differences (the
        GEMM form's clamp of ``|r|^2`` at 0 would drop second derivatives of coincident
        pairs); other base kernels: autodiff of :meth:`__call__` per pair."""
        if not isinstance(self.kernel, RadialKernel):
            return super().hess_block(z1, z2, e)

        def total(a):
            return jnp.sum(jax.jvp(lambda b: self._radial_block(a, b, True), (z2,), (e,))[1])

        return jax.grad(total)(z1)


@dataclasses.dataclass(frozen=True)
class _SteinFeatures:
    """The feature map ``x -> [x, grad log p(x)]`` of :func:`stein_kernel` (hashable: static
    under jit, equal when ``logp`` is)."""

    logp: Callable[[jax.Array], jax.Array]

    def __call__(self, params, x):
        return jnp.concatenate([x, jax.vmap(jax.grad(self.logp))(x).astype(x.dtype)], axis=1)


def stein_kernel(kernel: Kernel, logp: Callable[[jax.Array], jax.Array], d: int) -> FeatureKernel:
    """The Stein kernel ``k_p`` of ``kernel`` and ``p`` as a kernel on points ``x [n, d]``.

    :class:`Stein` on the augmented points ``[x, grad log p(x)]`` as a
    :class:`~mmdflow.kernels.FeatureKernel`: every kernel sum of :mod:`mmdflow.ops` takes
    the original points, computes the scores once per point set, and differentiates in
    ``x`` through them (the Hessian of ``log p``) — the gradient sums of KSD descent and
    the cross-Hessian sums of the SrMMD flow on a density, never an ``[n, m]`` array beyond
    a tile. ``logp`` is not checked here (see :func:`mmdflow.densities.check_logp`).

    Args:
      kernel: the base kernel (twice differentiable; three times for cross-Hessian sums).
      logp: the log-density ``[d] -> scalar`` up to a constant (hashable).
      d: the dimension of the points.

    Returns:
      A kernel on ``[d]`` points.

    Example:
      >>> import jax.numpy as jnp
      >>> from mmdflow import kernels, ops
      >>> kp = kernels.stein_kernel(kernels.Gaussian(1.0), lambda x: -0.5 * jnp.sum(x**2), 2)
      >>> ops.kernel_matvec(kp, jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.ones(1)).tolist()
      [2.0]
    """
    return FeatureKernel(Stein(kernel, d), _SteinFeatures(logp), None)


def stein_points(logp: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """Augmented points ``z = [x, grad log p(x)]`` (``[n, 2 d]``) for :class:`Stein`.

    Args:
      logp: a log-density ``[d] -> scalar`` (up to a constant;
        :mod:`mmdflow.densities`).
      x: ``[n, d]`` points.

    Returns:
      ``[n, 2 d]``: the points, then their scores (:func:`mmdflow.densities.score`,
      which checks ``logp``).

    Example:
      >>> import jax.numpy as jnp
      >>> from mmdflow import kernels
      >>> kernels.stein_points(lambda x: -0.5 * jnp.sum(x**2), jnp.ones((1, 2))).tolist()
      [[1.0, 1.0, -1.0, -1.0]]
    """
    x = jnp.asarray(x)
    return jnp.concatenate([x, score(logp, x).astype(x.dtype)], axis=1)
