"""Sharded MMD^2 and witness functions (psums of local weighted sums)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from mmdflow.kernels import Kernel
from mmdflow.mmd import ESTIMATORS
from mmdflow.ops import (
    DEFAULT_BLOCK_SIZE,
)
from mmdflow.sharding._mesh import (
    DEFAULT_AXIS,
    ShardedPoints,
    _axis_size,
    _check_common,
    _finish,
    _pad_to,
    _points_of,
    _prob,
)
from mmdflow.sharding._sums import _psum_dot, _sharded_sum


# ---------------------------------------------------------------- MMD^2 and witnesses
def _pair(x, y, wx, wy, size, min_n):
    """Padded points and normalised padded weights of ``x`` and ``y``."""
    xs, cx, nx, xpad = _points_of("x", x, min_n=min_n)
    ys, cy, ny, _ = _points_of("y", y, d=xs.shape[1], min_n=min_n)
    dtype = jnp.result_type(xs.dtype, ys.dtype)
    xs, ys = xs.astype(dtype), ys.astype(dtype)
    a = _prob("wx", wx, cx, nx, xs.shape[0], size, dtype, "x")
    b = _prob("wy", wy, cy, ny, ys.shape[0], size, dtype, "y")
    return _pad_to(xs, size, "edge"), _pad_to(ys, size, "edge"), a, b, nx, xpad


def sharded_mmd2(
    x: jax.Array | ShardedPoints,
    y: jax.Array | ShardedPoints,
    k: Kernel,
    mesh: Mesh,
    *,
    estimator: str = "biased",
    wx: jax.Array | None = None,
    wy: jax.Array | None = None,
    strategy: str = "allgather",
    block_size: int | tuple[int, int] = DEFAULT_BLOCK_SIZE,
    axis: str = DEFAULT_AXIS,
) -> jax.Array:
    """Squared MMD of :func:`mmdflow.mmd2` with both samples sharded over ``axis``.

    One sharded pass with ``x`` queries against the sources ``[x; y]`` (two weight
    columns: ``K_xx a`` and ``K_xy b``) and one with ``y`` queries against ``y``;
    the weighted sums are ``psum`` s of per-device dot products.

    Args:
      x: ``[n, d]`` samples or :class:`ShardedPoints`.
      y: ``[m, d]`` samples or :class:`ShardedPoints`.
      k: kernel.
      mesh: device mesh.
      estimator: ``"biased"`` or ``"unbiased"`` (``"linear"`` is O(n) and needs no
        sharded kernel sums: use :func:`mmdflow.mmd2`).
      wx, wy: optional weights (must be None for :class:`ShardedPoints`, whose
        weights are used).
      strategy: ``"allgather"`` or ``"ring"``.
      block_size: tile size of the local blocked sums.
      axis: mesh axis name.

    Returns:
      Scalar, equal to ``mmdflow.mmd2(x, y, k, estimator=..., wx=..., wy=...)`` up to
      summation order.
    """
    size, block_size = _check_common(k, mesh, axis, strategy, block_size)
    if estimator not in ESTIMATORS or estimator == "linear":
        raise ValueError(
            f"`estimator` must be 'biased' or 'unbiased' for sharded MMD^2; got {estimator!r}."
        )
    min_n = 1 if estimator == "biased" else 2
    xp, yp, a, b, _, _ = _pair(x, y, wx, wy, size, min_n)
    return _mmd2_jit(k, xp, yp, a, b, mesh, axis, strategy, block_size, estimator)


@functools.partial(jax.jit, static_argnums=(5, 6, 7, 8, 9))
def _mmd2_jit(k, xp, yp, a, b, mesh, axis, strategy, block_size, estimator):
    za, zb = jnp.zeros_like(a), jnp.zeros_like(b)
    wx_src = jnp.stack([a, za], axis=1)  # column 0: K_xx a
    wy_src = jnp.stack([zb, b], axis=1)  # column 1: K_xy b
    sx = _sharded_sum("matvec", k, xp, (xp, yp), (wx_src, wy_src), mesh, axis, strategy, block_size)
    sy = _sharded_sum("matvec", k, yp, (yp,), (b[:, None],), mesh, axis, strategy, block_size)
    txx = _psum_dot(a, sx[:, 0], mesh, axis)
    txy = _psum_dot(a, sx[:, 1], mesh, axis)
    tyy = _psum_dot(b, sy[:, 0], mesh, axis)
    if estimator == "biased":
        return jnp.maximum(txx + tyy - 2.0 * txy, 0.0)
    a2, b2 = a * a, b * b
    uxx = (txx - _psum_dot(a2, k.diag(xp), mesh, axis)) / (1.0 - jnp.sum(a2))
    uyy = (tyy - _psum_dot(b2, k.diag(yp), mesh, axis)) / (1.0 - jnp.sum(b2))
    return uxx + uyy - 2.0 * txy


def _witness_common(kind, z, x, y, k, mesh, wx, wy, strategy, block_size, axis):
    size, block_size = _check_common(k, mesh, axis, strategy, block_size)
    xp, yp, a, b, _, _ = _pair(x, y, wx, wy, size, 1)
    zs, _, nz, zpad = _points_of("z", z, d=xp.shape[1])
    dtype = jnp.result_type(zs.dtype, xp.dtype)
    return _witness_jit(
        kind,
        k,
        zs.astype(dtype),
        xp.astype(dtype),
        yp.astype(dtype),
        a.astype(dtype),
        b.astype(dtype),
        mesh,
        axis,
        strategy,
        block_size,
        nz,
        zpad,
    )


@functools.partial(jax.jit, static_argnums=(0, 7, 8, 9, 10, 11, 12))
def _witness_jit(kind, k, zs, xp, yp, a, b, mesh, axis, strategy, block_size, nz, zpad):
    size = _axis_size(mesh, axis)
    zp = _pad_to(zs, size, "edge")
    out = _witness_padded(kind, k, zp, xp, yp, a, b, mesh, axis, strategy, block_size)
    return _finish(out, nz, zpad, size, mesh, axis)


def _witness_padded(kind, k, zp, xp, yp, a, b, mesh, axis, strategy, block_size):
    """Witness (or its gradient) at padded ``zp``: one pass over the sources ``[y; x]``."""
    out = _sharded_sum(
        kind, k, zp, (yp, xp), (b[:, None], -a[:, None]), mesh, axis, strategy, block_size
    )
    return out[:, 0]


def sharded_witness(
    z: jax.Array | ShardedPoints,
    x: jax.Array | ShardedPoints,
    y: jax.Array | ShardedPoints,
    k: Kernel,
    mesh: Mesh,
    *,
    wx: jax.Array | None = None,
    wy: jax.Array | None = None,
    strategy: str = "allgather",
    block_size: int | tuple[int, int] = DEFAULT_BLOCK_SIZE,
    axis: str = DEFAULT_AXIS,
) -> jax.Array:
    """:func:`mmdflow.witness` with ``z``, ``x`` and ``y`` sharded over ``axis``.

    Each device concatenates its own ``y`` and ``x`` shards (weights ``b`` and
    ``-a``) into one source block, so a single sharded pass evaluates the witness.

    Args:
      z: ``[nz, d]`` evaluation points or :class:`ShardedPoints`.
      x: ``[n, d]`` particles or :class:`ShardedPoints`.
      y: ``[m, d]`` target samples or :class:`ShardedPoints`.
      k: kernel.
      mesh: device mesh.
      wx, wy: optional weights (None for :class:`ShardedPoints`).
      strategy: ``"allgather"`` or ``"ring"``.
      block_size: tile size of the local blocked sums.
      axis: mesh axis name.

    Returns:
      ``[nz]`` witness values, sharded like ``z`` (padded for :class:`ShardedPoints`).
    """
    return _witness_common("matvec", z, x, y, k, mesh, wx, wy, strategy, block_size, axis)


def sharded_witness_grad(
    z: jax.Array | ShardedPoints,
    x: jax.Array | ShardedPoints,
    y: jax.Array | ShardedPoints,
    k: Kernel,
    mesh: Mesh,
    *,
    wx: jax.Array | None = None,
    wy: jax.Array | None = None,
    strategy: str = "allgather",
    block_size: int | tuple[int, int] = DEFAULT_BLOCK_SIZE,
    axis: str = DEFAULT_AXIS,
) -> jax.Array:
    """:func:`mmdflow.witness_grad` (``[nz, d]``) with all point sets sharded over ``axis``.

    Args:
      z: ``[nz, d]`` evaluation points or :class:`ShardedPoints`.
      x: ``[n, d]`` particles or :class:`ShardedPoints`.
      y: ``[m, d]`` target samples or :class:`ShardedPoints`.
      k: kernel.
      mesh: device mesh.
      wx, wy: optional weights (None for :class:`ShardedPoints`).
      strategy: ``"allgather"`` or ``"ring"``.
      block_size: tile size of the local blocked sums.
      axis: mesh axis name.

    Returns:
      ``[nz, d]`` gradients, sharded like ``z`` (padded for :class:`ShardedPoints`).
    """
    return _witness_common("grad", z, x, y, k, mesh, wx, wy, strategy, block_size, axis)
