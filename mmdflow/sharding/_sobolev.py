"""The exact-kernel Sobolev critic on particles and targets sharded over a mesh axis."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from mmdflow._linalg import cg
from mmdflow.kernels import Kernel
from mmdflow.ops import DEFAULT_BLOCK_SIZE
from mmdflow.sharding._mesh import (
    DEFAULT_AXIS,
    ShardedPoints,
    _check_common,
    _constrain,
)
from mmdflow.sharding._mmd import _pair, _witness_padded
from mmdflow.sharding._sums import _psum_dot, _sharded_sum
from mmdflow.sobolev import ExactCritic


def _exact_critic_padded(k, xp, yp, a, b, reg, mesh, axis, strategy, block_size, tol, maxiter):
    """:func:`mmdflow.sobolev.exact_critic` (CG branch) on padded, normalised inputs.

    The same operations in the same order, with every kernel sum a sharded sum and
    every weighted reduction a psum, so the result is the single-device CG critic up to
    summation order. Padding rows have ``a = 0``, hence ``sqrt(a) = 0``: they drop out
    of the system (their ``c`` stays 0).
    """
    args = (mesh, axis, strategy, block_size)
    g = _witness_padded("grad", k, xp, xp, yp, a, b, *args)
    sa = jnp.sqrt(a)
    rhs = sa[:, None] * g

    def matvec(c):
        h = _sharded_sum("hess", k, xp, (xp,), (sa[:, None] * c,), *args)
        return sa[:, None] * h + reg * c

    c, it, res = cg(matvec, rhs, tol=tol, maxiter=maxiter)
    c = _constrain(c, mesh, axis)
    e = sa[:, None] * c
    hm = _sharded_sum("hess", k, xp, (xp,), (e,), *args)
    wit_y = _witness_padded("matvec", k, yp, xp, yp, a, b, *args)
    wit_x = _witness_padded("matvec", k, xp, xp, yp, a, b, *args)
    mmd2 = _psum_dot(b, wit_y, mesh, axis) - _psum_dot(a, wit_x, mesh, axis)
    disc = (mmd2 - jnp.sum(rhs * c)) / reg
    grad_x = _constrain((g - hm) / reg, mesh, axis)
    return ExactCritic(
        kernel=k,
        x=xp,
        y=yp,
        a=a,
        b=b,
        e=e,
        reg=reg,
        discrepancy_sq=disc,
        mmd2=mmd2,
        grad_at_x=grad_x,
        cg_iterations=it,
        cg_residual=res,
    )


def sharded_exact_critic(
    k: Kernel,
    x: jax.Array | ShardedPoints,
    y: jax.Array | ShardedPoints,
    reg,
    mesh: Mesh,
    *,
    wx: jax.Array | None = None,
    wy: jax.Array | None = None,
    cg_tol: float = 1e-6,
    cg_maxiter: int = 200,
    strategy: str = "allgather",
    block_size: int | tuple[int, int] = DEFAULT_BLOCK_SIZE,
    axis: str = DEFAULT_AXIS,
) -> ExactCritic:
    """:func:`mmdflow.sobolev.exact_critic` (``solver="cg"``) with ``x`` and ``y`` sharded.

    Matrix-free CG on the ``[n, d]`` coefficients, kept sharded like ``x``: every
    product is one sharded cross-Hessian sum (:func:`sharded_kernel_hessian_matvec`'s
    machinery, all-gather or ring), the CG inner products are reductions over the
    sharded vectors (``jit`` lowers them to local dot products and an all-reduce).

    Args:
      k: a twice-differentiable kernel.
      x: ``[n, d]`` particles or :class:`ShardedPoints`.
      y: ``[m, d]`` target samples or :class:`ShardedPoints`.
      reg: ridge ``lambda > 0``.
      mesh: device mesh.
      wx, wy: optional weights (None for :class:`ShardedPoints`, whose weights are used).
      cg_tol, cg_maxiter: CG stopping rule (as in :func:`~mmdflow.sobolev.exact_critic`).
      strategy: ``"allgather"`` or ``"ring"``.
      block_size: tile size of the local blocked sums.
      axis: mesh axis name.

    Returns:
      An :class:`~mmdflow.sobolev.ExactCritic` on the *padded* sets: ``x``, ``a``,
      ``e``, ``grad_at_x`` have ``N = D ceil(n / D)`` rows sharded ``P(axis)`` (rows
      ``>= n`` belong to zero-weight padding copies; ignore them). ``grad(z)`` and
      ``value(z)`` work as for the unsharded critic.
    """
    _, bs = _check_common(k, mesh, axis, strategy, block_size)
    xp, yp, a, b, _, _ = _pair(x, y, wx, wy, mesh.shape[axis], 1)
    return _exact_critic_padded(k, xp, yp, a, b, reg, mesh, axis, strategy, bs, cg_tol, cg_maxiter)
