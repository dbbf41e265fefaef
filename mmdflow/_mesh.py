"""Meshes and padded, sharded point sets (internal; public names in :mod:`mmdflow.sharding`).

Shared by the collective kernel sums (:mod:`mmdflow.ops`), the estimators that accept a
:class:`ShardedPoints` and the particle flow on a mesh.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mmdflow._checks import check_points, check_weights, normalized_weights

DEFAULT_AXIS = "data"
#: collective strategies of kernel sums over point sets sharded on a mesh
STRATEGIES = ("allgather", "ring")


# ---------------------------------------------------------------- mesh and points
def make_mesh(
    num_devices: int | None = None,
    axis: str = DEFAULT_AXIS,
    *,
    devices: list | None = None,
) -> Mesh:
    """A 1-D device mesh with one axis (``Auto`` axis type) for the sample axis.

    Args:
      num_devices: how many devices to use (the first ``num_devices`` of
        ``devices``); default all of them.
      axis: the mesh axis name.
      devices: devices to draw from (default ``jax.devices()``).

    Returns:
      A :class:`jax.sharding.Mesh` of shape ``{axis: num_devices}``.
    """
    devs = list(jax.devices() if devices is None else devices)
    num = len(devs) if num_devices is None else num_devices
    if not isinstance(num, int | np.integer) or not 1 <= num <= len(devs):
        raise ValueError(
            f"`num_devices` must be an int in [1, {len(devs)}] (available devices); got {num!r}."
        )
    return Mesh(np.asarray(devs[:num]), (axis,), axis_types=(AxisType.Auto,))


def _axis_size(mesh: Mesh, axis: str) -> int:
    if not isinstance(mesh, Mesh):
        raise ValueError(f"`mesh` must be a jax.sharding.Mesh; got {type(mesh).__name__}.")
    if axis not in mesh.axis_names:
        raise ValueError(f"mesh has axes {mesh.axis_names}; no axis named {axis!r}.")
    return int(mesh.shape[axis])


def _explicit(mesh: Mesh, axis: str) -> bool:
    types = getattr(mesh, "axis_types", None)
    if not types:
        return False
    return types[mesh.axis_names.index(axis)] == AxisType.Explicit


def _constrain(a, mesh: Mesh, axis: str, sharded: bool = True):
    """Lays ``a`` out as rows over ``axis`` (or replicated), on Auto or Explicit meshes."""
    spec = P(axis) if sharded else P()
    sh = NamedSharding(mesh, spec)
    if _explicit(mesh, axis):
        return jax.sharding.reshard(a, sh)
    return lax.with_sharding_constraint(a, sh)


def _padded_rows(n: int, size: int) -> int:
    return size * math.ceil(n / size)


def _pad_rows(a, rows: int, mode: str):
    extra = rows - a.shape[0]
    if extra == 0:
        return a
    pads = ((0, extra),) + ((0, 0),) * (a.ndim - 1)
    return jnp.pad(a, pads, mode=mode)


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=["points", "weights"], meta_fields=["n"]
)
@dataclasses.dataclass(frozen=True)
class ShardedPoints:
    """A point set padded to a multiple of the device count and sharded by rows.

    Attributes:
      points: ``[N, d]`` points, ``N = D ceil(n / D)``; rows ``>= n`` repeat the last
        real point.
      weights: ``[N]`` non-negative relative masses (the user's, or ones), zero on
        the padding rows. The estimators normalise them.
      n: number of real points (static).
    """

    points: jax.Array
    weights: jax.Array
    n: int

    @property
    def num_padded(self) -> int:
        """``N``, the padded row count."""
        return self.points.shape[0]

    def unpad(self, a: jax.Array | None = None) -> jax.Array:
        """The first ``n`` rows of ``a`` (default: of ``points``)."""
        return (self.points if a is None else a)[: self.n]


def shard_points(
    x: jax.Array,
    mesh: Mesh,
    *,
    weights: jax.Array | None = None,
    axis: str = DEFAULT_AXIS,
) -> ShardedPoints:
    """Pads ``x`` to a multiple of the mesh axis size and shards its rows over it.

    Args:
      x: ``[n, d]`` points (any ``n >= 1``).
      mesh: the device mesh.
      weights: optional ``[n]`` non-negative masses (default ones).
      axis: mesh axis to shard over.

    Returns:
      A :class:`ShardedPoints` whose ``points`` / ``weights`` carry
      ``NamedSharding(mesh, P(axis))``.
    """
    size = _axis_size(mesh, axis)
    x = check_points("x", x)
    n = x.shape[0]
    if weights is None:
        w = jnp.ones((n,), x.dtype)
    else:
        w = check_weights("weights", weights, n, "x")
        if w.ndim != 1:
            raise ValueError(f"`weights` must have shape [{n}]; got {tuple(w.shape)}.")
        w = w.astype(x.dtype)
    rows = _padded_rows(n, size)
    sh = NamedSharding(mesh, P(axis))
    xp = jax.device_put(_pad_rows(x, rows, "edge"), sh)
    wp = jax.device_put(_pad_rows(w, rows, "constant"), sh)
    return ShardedPoints(points=xp, weights=wp, n=n)


# ---------------------------------------------------------------- argument handling
def _points_of(name, x, d=None, min_n=1):
    """``(points, weights or None, n, padded?)`` of an array or a :class:`ShardedPoints`."""
    if isinstance(x, ShardedPoints):
        pts = check_points(name, x.points, d=d, min_n=min_n)
        if x.n < min_n:
            raise ValueError(f"`{name}` is too small (needs at least {min_n} points): n={x.n}.")
        return pts, x.weights, x.n, True
    pts = check_points(name, x, d=d, min_n=min_n)
    return pts, None, pts.shape[0], False


def _pad_to(a, size, mode):
    return _pad_rows(a, _padded_rows(a.shape[0], size), mode)


def _mask(n, rows, dtype):
    return (jnp.arange(rows) < n).astype(dtype)


def _prob(name, user_w, container_w, n, rows, size, dtype, what):
    """Normalised weights padded with zeros to ``rows`` (``[rows]``)."""
    if container_w is not None:
        if user_w is not None:
            raise ValueError(
                f"`{name}` must be None when `{what}` is a ShardedPoints (its weights are used)."
            )
        w = container_w.astype(dtype) * _mask(n, rows, dtype)
        return w / jnp.sum(w)
    return _pad_to(normalized_weights(name, user_w, n, what, dtype), size, "constant")


def _finish(out, n, padded, size, mesh, axis):
    """Padded ``[N, ...]`` output -> user-facing (padded if ``padded`` else first ``n`` rows)."""
    if padded or out.shape[0] == n:
        return out
    if _explicit(mesh, axis):
        out = _constrain(out, mesh, axis, sharded=False)
    return out[:n]


def points_and_weights(name: str, x, w, wname: str):
    """``(points, weights)`` of an array (``w`` as given) or a :class:`ShardedPoints` (its
    padded points and weights; ``w`` must then be ``None``)."""
    if isinstance(x, ShardedPoints):
        if w is not None:
            raise ValueError(
                f"`{wname}` must be None when `{name}` is a ShardedPoints (its weights are used)."
            )
        return x.points, x.weights
    return x, w
