"""Kernel sums, MMD^2 and witnesses over point sets sharded along the sample axis.

Both point sets of a kernel sum ``out[i] = sum_j w[j] k(x_i, y_j)`` are split by rows
over one mesh axis (``"data"`` by default, ``PartitionSpec("data")``): device ``r``
holds rows ``r N/D .. (r+1) N/D`` of ``x`` *and* of ``y``. Each device computes the
output rows of its own ``x`` shard against *all* of ``y``, so per-point outputs stay
sharded like ``x`` and scalar estimators are ``psum`` s of local weighted sums: the
result is the single-device estimator (not an average of per-device MMDs), up to
floating-point summation order.

Two communication strategies (``jax.shard_map`` over the mesh axis):

* ``"allgather"``: ``lax.all_gather`` the ``y`` / weight shards, then one local
  blocked sum (:func:`mmdflow.ops.kernel_matvec` with ``impl="blocked"``). Every
  device briefly holds all of ``y``; reverse mode transposes the gather into a
  ``psum_scatter`` of the ``y`` cotangents (plain JAX AD).
* ``"ring"``: ``D - 1`` rotations of the ``y`` / weight shards around the ring with
  ``lax.ppermute``, accumulating the local partial sums, so no device ever holds
  more than two ``y`` shards. Reverse mode is a hand-written ``custom_vjp`` that runs
  the ring again and rotates the ``y`` cotangent accumulators *with* their shards
  (``D`` more rotations bring them home), so the backward pass keeps the same
  O((n + m) / D) memory (plain AD of the scan would stash every visiting shard,
  i.e. all of ``y``). Forward-mode AD (``jax.jvp``) is therefore not available
  under ``"ring"``; use ``"allgather"`` for it.

Uneven sizes. JAX arrays cannot be sharded unevenly (``n`` not a multiple of the
device count ``D`` cannot carry ``NamedSharding(mesh, P("data"))``). Internally every
point set is padded to ``N = D ceil(n / D)`` rows by repeating its last point with
*zero weight* (finite kernel values, no contribution to any sum or gradient). Then:

* plain ``[n, d]`` array inputs give ``[n, ...]`` outputs; these are sharded
  ``P("data")`` when ``D`` divides ``n`` and otherwise come back in whatever layout
  XLA picks for the sliced result (typically replicated);
* :class:`ShardedPoints` inputs (from :func:`shard_points`, which pads explicitly
  and records ``n``) give *padded* ``[N, ...]`` outputs, always sharded ``P("data")``;
  rows ``>= n`` are values at the padding copies, to be ignored
  (``ShardedPoints.unpad``). Nothing is ever padded silently into user data:
  padding lives in the container, with its zero weights and ``n``.

Scalars (``sharded_mmd2``) do not depend on the choice.

Notes:

* Meshes may have ``Auto`` axis types (:func:`make_mesh`) or ``Explicit`` ones (the
  ``jax.make_mesh`` default; inputs are resharded), and more axes than ``axis``
  (everything is replicated over the others).
* The ``shard_map`` bodies of the kernel sums run with ``check_vma=False``: the
  blocked sums of :mod:`mmdflow.ops` start their scan carries from device-invariant
  zeros, which the varying-axes type check rejects. Autodiff results are the same
  either way (checked against single-device gradients in the tests).
* Flows: :class:`ShardedMMDFlow` is :class:`~mmdflow.flows.MMDFlow` on sharded
  particles and targets. Random-feature :class:`~mmdflow.flows.KernelSobolevDescent`
  needs no wrapper: its sums over particles are GEMMs that ``jit`` partitions
  (GSPMD) when the inputs are sharded. The exact-kernel Sobolev critic is not
  sharded here (:func:`sharded_kernel_hessian_matvec` is its building block).

Example:
  >>> import jax
  >>> from mmdflow import kernels, sharding
  >>> mesh = sharding.make_mesh()              # all devices, axis "data"
  >>> x = jax.random.normal(jax.random.key(0), (64, 2))
  >>> y = x + 1.0
  >>> k = kernels.Gaussian(1.0)
  >>> v = sharding.sharded_mmd2(x, y, k, mesh, strategy="ring")
  >>> bool(v > 0)
  True
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mmdflow._checks import check_block_size, check_points, check_weights
from mmdflow.flows import FlowState, MMDFlow, _kinetic, schedule_value
from mmdflow.kernels import Kernel
from mmdflow.mmd import ESTIMATORS, _weights
from mmdflow.ops import (
    DEFAULT_BLOCK_SIZE,
    check_kernel,
    kernel_grad_matvec,
    kernel_hessian_matvec,
    kernel_matvec,
)

__all__ = [
    "STRATEGIES",
    "DEFAULT_AXIS",
    "make_mesh",
    "ShardedPoints",
    "shard_points",
    "sharded_kernel_matvec",
    "sharded_kernel_grad_matvec",
    "sharded_kernel_hessian_matvec",
    "sharded_mmd2",
    "sharded_witness",
    "sharded_witness_grad",
    "ShardedMMDFlow",
]

STRATEGIES = ("allgather", "ring")
DEFAULT_AXIS = "data"
_KINDS = ("matvec", "grad", "hess")


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
        the padding rows. :func:`sharded_mmd2` and the witnesses normalise them.
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


# ---------------------------------------------------------------- local tile sums
def _local(kind: str, k, x, y, w, block_size):
    """The single-device blocked sum of one ``x`` shard against one ``y`` block."""
    if kind == "matvec":
        return kernel_matvec(k, x, y, w, impl="blocked", block_size=block_size)
    if kind == "grad":
        return kernel_grad_matvec(k, x, y, w, impl="blocked", block_size=block_size)
    return kernel_hessian_matvec(k, x, y, w, impl="blocked", block_size=block_size)


def _local_shape(kind, x, w):
    """A zero array shaped like ``_local``'s output for query rows ``x`` and weights ``w``."""
    n, d = x.shape
    shape = {"matvec": (n, w.shape[1]), "grad": (n, w.shape[1], d), "hess": (n, d)}[kind]
    return jnp.zeros(shape, jnp.result_type(x.dtype, w.dtype))


def _cat(parts):
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=0)


def _split(a, sizes):
    if len(sizes) == 1:
        return (a,)
    return tuple(jnp.split(a, np.cumsum(sizes)[:-1].tolist(), axis=0))


def _ring_perm(size: int):
    return [(r, (r + 1) % size) for r in range(size)]


def _allgather_body(kind, treedef, axis, block_size):
    def body(kl, xl, ys, ws):
        k = jax.tree.unflatten(treedef, kl)
        y = lax.all_gather(_cat(ys), axis, tiled=True)
        w = lax.all_gather(_cat(ws), axis, tiled=True)
        return _local(kind, k, xl, y, w, block_size)

    return body


def _ring_fwd_body(kind, treedef, axis, size, block_size):
    perm = _ring_perm(size)

    def body(kl, xl, ys, ws):
        k = jax.tree.unflatten(treedef, kl)

        def step(carry, _):
            acc, yc, wc = carry
            # send the held shard on before using it, so the transfer can overlap the tile sums
            yn, wn = lax.ppermute(yc, axis, perm), lax.ppermute(wc, axis, perm)
            return (acc + _local(kind, k, xl, yc, wc, block_size), yn, wn), None

        y, w = _cat(ys), _cat(ws)
        acc = _local_shape(kind, xl, w)
        (acc, y, w), _ = lax.scan(step, (acc, y, w), None, length=size - 1)
        return acc + _local(kind, k, xl, y, w, block_size)

    return body


def _ring_bwd_body(kind, treedef, axis, size, block_size):
    perm = _ring_perm(size)

    def local(kl, x, y, w):
        return _local(kind, jax.tree.unflatten(treedef, kl), x, y, w, block_size)

    def body(kl, xl, ys, ws, ct):
        sizes = [a.shape[0] for a in ys]

        def contrib(carry):
            # cotangents of the held shard, added to the accumulators that travel with it
            dk, dx, yc, wc, dyc, dwc = carry
            gk, gx, gy, gw = jax.vjp(local, kl, xl, yc, wc)[1](ct)
            return jax.tree.map(jnp.add, dk, gk), dx + gx, dyc + gy, dwc + gw

        def step(carry, _):
            yc, wc = carry[2], carry[3]
            yn, wn = lax.ppermute(yc, axis, perm), lax.ppermute(wc, axis, perm)
            dk, dx, dyc, dwc = contrib(carry)
            dyn, dwn = lax.ppermute(dyc, axis, perm), lax.ppermute(dwc, axis, perm)
            return (dk, dx, yn, wn, dyn, dwn), None

        y, w = _cat(ys), _cat(ws)
        zeros = jax.tree.map(jnp.zeros_like, (kl, xl, y, w))
        carry = (zeros[0], zeros[1], y, w, zeros[2], zeros[3])
        carry, _ = lax.scan(step, carry, None, length=size - 1)
        dk, dx, dy, dw = contrib(carry)
        # the accumulators have moved D - 1 times with their shards: one more brings them home
        dy, dw = lax.ppermute(dy, axis, perm), lax.ppermute(dw, axis, perm)
        dk = jax.tree.map(lambda g: lax.psum(g, axis), dk)
        return dk, dx, _split(dy, sizes), _split(dw, sizes)

    return body


def _specs(axis, nsrc):
    rows = P(axis)
    return (P(), rows, (rows,) * nsrc, (rows,) * nsrc)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4))
def _ring_sum(kind, treedef, mesh, axis, block_size, kl, xp, ys, ws):
    size = _axis_size(mesh, axis)
    fn = jax.shard_map(
        _ring_fwd_body(kind, treedef, axis, size, block_size),
        mesh=mesh,
        in_specs=_specs(axis, len(ys)),
        out_specs=P(axis),
        check_vma=False,
    )
    return fn(kl, xp, ys, ws)


def _ring_sum_fwd(kind, treedef, mesh, axis, block_size, kl, xp, ys, ws):
    out = _ring_sum(kind, treedef, mesh, axis, block_size, kl, xp, ys, ws)
    return out, (kl, xp, ys, ws)


def _ring_sum_bwd(kind, treedef, mesh, axis, block_size, res, ct):
    kl, xp, ys, ws = res
    size = _axis_size(mesh, axis)
    rows = P(axis)
    fn = jax.shard_map(
        _ring_bwd_body(kind, treedef, axis, size, block_size),
        mesh=mesh,
        in_specs=(*_specs(axis, len(ys)), rows),
        out_specs=(P(), rows, (rows,) * len(ys), (rows,) * len(ys)),
        check_vma=False,
    )
    return fn(kl, xp, ys, ws, ct)


_ring_sum.defvjp(_ring_sum_fwd, _ring_sum_bwd)


def _float_kernel(k, dtype):
    """Kernel with integer leaves cast to ``dtype`` (so every leaf has a float cotangent)."""

    def cast(leaf):
        leaf = jnp.asarray(leaf)
        return leaf if jnp.issubdtype(leaf.dtype, jnp.inexact) else leaf.astype(dtype)

    return jax.tree.map(cast, k)


def _sharded_sum(kind, k, xp, ys, ws, mesh, axis, strategy, block_size):
    """``out = sum over sources s of _local(kind, k, xp, ys[s], ws[s])`` on padded global arrays.

    ``xp`` ``[Nx, d]``; ``ys[s]`` ``[Ns, d]``; ``ws[s]`` ``[Ns, c]``; every row count a
    multiple of the axis size. Returns ``[Nx, ...]`` sharded over ``axis``.
    """
    xp = _constrain(xp, mesh, axis)
    ys = tuple(_constrain(a, mesh, axis) for a in ys)
    ws = tuple(_constrain(a, mesh, axis) for a in ws)
    # the kernel travels as its leaves: cotangents are then plain arrays (rebuilding a
    # kernel from gradient values would run its hyperparameter validation on them)
    kl, treedef = jax.tree.flatten(_float_kernel(k, xp.dtype))
    if strategy == "ring" and _axis_size(mesh, axis) > 1:
        out = _ring_sum(kind, treedef, mesh, axis, block_size, kl, xp, ys, ws)
    else:
        fn = jax.shard_map(
            _allgather_body(kind, treedef, axis, block_size),
            mesh=mesh,
            in_specs=_specs(axis, len(ys)),
            out_specs=P(axis),
            check_vma=False,
        )
        out = fn(kl, xp, ys, ws)
    return _constrain(out, mesh, axis)


def _psum_dot(a, v, mesh, axis):
    """``sum_i a[i] v[i]`` (``a`` ``[N]``, ``v`` ``[N]``) as a psum of local dot products."""

    def body(al, vl):
        return lax.psum(jnp.dot(al, vl), axis)

    a, v = _constrain(a, mesh, axis), _constrain(v, mesh, axis)
    return jax.shard_map(body, mesh=mesh, in_specs=(P(axis), P(axis)), out_specs=P())(a, v)


# ---------------------------------------------------------------- argument handling
def _check_common(k, mesh, axis, strategy, block_size):
    check_kernel(k)
    size = _axis_size(mesh, axis)
    if strategy not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}; got {strategy!r}.")
    return size, check_block_size(block_size)


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
    return _pad_to(_weights(name, user_w, n, what, dtype), size, "constant")


def _finish(out, n, padded, size, mesh, axis):
    """Padded ``[N, ...]`` output -> user-facing (padded if ``padded`` else first ``n`` rows)."""
    if padded or out.shape[0] == n:
        return out
    if _explicit(mesh, axis):
        out = _constrain(out, mesh, axis, sharded=False)
    return out[:n]


# ---------------------------------------------------------------- public kernel sums
def _kernel_sum(kind, k, x, y, w, mesh, strategy, block_size, axis):
    _, block_size = _check_common(k, mesh, axis, strategy, block_size)
    xs, _, nx, xpad = _points_of("x", x)
    ys, _, ny, _ = _points_of("y", y, d=xs.shape[1])
    d = xs.shape[1]
    rows_y = ys.shape[0]
    if kind == "hess":
        w = check_points("e", w, d=d, other="x")
        if w.shape[0] not in (ny, rows_y):
            raise ValueError(f"`e` must have shape [{ny}, {d}] like `y`; got {tuple(w.shape)}.")
        vec = False
    else:
        if not hasattr(w, "shape"):
            w = np.asarray(w)
        n_w = w.shape[0] if w.ndim in (1, 2) else -1
        w = check_weights("w", w, rows_y if n_w == rows_y else ny, "y")
        vec = w.ndim == 1
    dtype = jnp.result_type(xs.dtype, ys.dtype)
    if jnp.issubdtype(w.dtype, jnp.floating):
        dtype = jnp.result_type(dtype, w.dtype)
    xs, ys, w = xs.astype(dtype), ys.astype(dtype), w.astype(dtype)
    w2 = w[:, None] if vec else w
    return _kernel_sum_jit(kind, k, xs, ys, w2, mesh, axis, strategy, block_size, nx, ny, xpad, vec)


@functools.partial(jax.jit, static_argnums=(0, 5, 6, 7, 8, 9, 10, 11, 12))
def _kernel_sum_jit(kind, k, xs, ys, w, mesh, axis, strategy, block_size, nx, ny, xpad, vec):
    size = _axis_size(mesh, axis)
    xp = _pad_to(xs, size, "edge")
    yp = _pad_to(ys, size, "edge")
    w = _pad_to(w, size, "constant") * _mask(ny, yp.shape[0], w.dtype)[:, None]
    out = _sharded_sum(kind, k, xp, (yp,), (w,), mesh, axis, strategy, block_size)
    if vec:
        out = out[:, 0]
    return _finish(out, nx, xpad, size, mesh, axis)


def sharded_kernel_matvec(
    k: Kernel,
    x: jax.Array | ShardedPoints,
    y: jax.Array | ShardedPoints,
    w: jax.Array,
    mesh: Mesh,
    *,
    strategy: str = "allgather",
    block_size: int | tuple[int, int] = DEFAULT_BLOCK_SIZE,
    axis: str = DEFAULT_AXIS,
) -> jax.Array:
    """``out[i] = sum_j w[j] k(x_i, y_j)`` with ``x`` and ``y`` rows sharded over ``axis``.

    Args:
      k: a kernel.
      x: ``[n, d]`` query points, or a :class:`ShardedPoints`.
      y: ``[m, d]`` source points, or a :class:`ShardedPoints` (its weights are not
        used here; ``w`` is).
      w: ``[m]`` or ``[m, c]`` weights of the real ``y`` rows (or ``[M]`` / ``[M, c]``
        for a padded ``y`` of ``M`` rows; padding rows are zeroed).
      mesh: device mesh with an axis ``axis``.
      strategy: ``"allgather"`` or ``"ring"`` (see the module docstring).
      block_size: tile size of the local blocked sums.
      axis: the mesh axis the sample axis is sharded over.

    Returns:
      ``[n]`` (or ``[n, c]``), sharded ``P(axis)`` when the mesh axis size divides
      ``n``; ``[N]`` padded and sharded when ``x`` is a :class:`ShardedPoints`.
    """
    return _kernel_sum("matvec", k, x, y, w, mesh, strategy, block_size, axis)


def sharded_kernel_grad_matvec(
    k: Kernel,
    x: jax.Array | ShardedPoints,
    y: jax.Array | ShardedPoints,
    w: jax.Array,
    mesh: Mesh,
    *,
    strategy: str = "allgather",
    block_size: int | tuple[int, int] = DEFAULT_BLOCK_SIZE,
    axis: str = DEFAULT_AXIS,
) -> jax.Array:
    """``out[i] = sum_j w[j] grad_x k(x_i, y_j)``, sharded like ``x``.

    Args:
      k: a kernel.
      x: ``[n, d]`` points (or :class:`ShardedPoints`) where gradients are taken.
      y: ``[m, d]`` source points (or :class:`ShardedPoints`).
      w: ``[m]`` or ``[m, c]`` weights (see :func:`sharded_kernel_matvec`).
      mesh: device mesh.
      strategy: ``"allgather"`` or ``"ring"``.
      block_size: tile size of the local blocked sums.
      axis: mesh axis name.

    Returns:
      ``[n, d]`` (``[n, c, d]`` for ``[m, c]`` weights); padded rows for
      :class:`ShardedPoints` queries.
    """
    return _kernel_sum("grad", k, x, y, w, mesh, strategy, block_size, axis)


def sharded_kernel_hessian_matvec(
    k: Kernel,
    x: jax.Array | ShardedPoints,
    y: jax.Array | ShardedPoints,
    e: jax.Array,
    mesh: Mesh,
    *,
    strategy: str = "allgather",
    block_size: int | tuple[int, int] = DEFAULT_BLOCK_SIZE,
    axis: str = DEFAULT_AXIS,
) -> jax.Array:
    """``out[i] = sum_j H(x_i, y_j) e_j`` (cross-Hessian, see :func:`mmdflow.ops.kernel_hessian_matvec`).

    Args:
      k: a twice-differentiable kernel.
      x: ``[n, d]`` points (or :class:`ShardedPoints`).
      y: ``[m, d]`` points (or :class:`ShardedPoints`).
      e: ``[m, d]`` vectors, one per point of ``y``.
      mesh: device mesh.
      strategy: ``"allgather"`` or ``"ring"``.
      block_size: tile size of the local blocked sums.
      axis: mesh axis name.

    Returns:
      ``[n, d]`` (padded rows for :class:`ShardedPoints` queries).
    """
    return _kernel_sum("hess", k, x, y, e, mesh, strategy, block_size, axis)


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


# ---------------------------------------------------------------- flows
@functools.partial(jax.tree_util.register_dataclass, data_fields=[], meta_fields=["n"])
@dataclasses.dataclass(frozen=True)
class _RealCount:
    """Static number of real particles, carried in ``FlowState.extra``."""

    n: int


@dataclasses.dataclass(frozen=True)
class ShardedMMDFlow:
    """:class:`mmdflow.flows.MMDFlow` with particles and targets sharded over a mesh axis.

    Same ``init`` / ``step`` protocol, so :func:`mmdflow.flows.scan` and
    :func:`mmdflow.flows.run` drive it unchanged. The state holds the particles
    padded to a multiple of the axis size (``FlowState.x`` ``[N, d]``, sharded
    ``P(axis)``) with zero weight on the padding rows (``FlowState.wx``), so every
    weighted quantity (MMD^2 recorded by ``run``, kinetic energy) is that of the
    ``n`` real particles. The injected noise is drawn for the ``n`` real particles
    exactly as :class:`~mmdflow.flows.MMDFlow` draws it, so the real particles
    follow the unsharded trajectory (up to summation order). Use
    :meth:`particles` for the ``[n, d]`` real particles (``run``'s
    ``record_trajectory`` and final state hold the padded ``[N, d]`` arrays; the
    padding rows shadow the last real particle). The MMD^2 that ``run`` records
    uses the unsharded :func:`mmdflow.mmd2` on the sharded state (``jit``
    partitions it); the step itself uses the sharded witness gradient.

    Example:
      >>> import jax
      >>> from mmdflow import flows, kernels, sharding
      >>> s = sharding.ShardedMMDFlow(kernels.Gaussian(1.0), sharding.make_mesh(), step_size=0.5)
      >>> x0 = jax.random.normal(jax.random.key(0), (101, 2))
      >>> state, hist = flows.run(s, x0, x0 + 2.0, num_steps=4, key=jax.random.key(1), record_every=2)
      >>> s.particles(state).shape
      (101, 2)

    Attributes:
      kernel: the kernel.
      mesh: the device mesh.
      step_size: ``> 0`` or a schedule.
      noise_level: ``>= 0`` or a schedule.
      strategy: ``"allgather"`` or ``"ring"``.
      block_size: tile size of the local blocked sums.
      axis: mesh axis name.
    """

    kernel: Kernel
    mesh: Mesh
    step_size: Any = 1.0
    noise_level: Any = 0.0
    strategy: str = "allgather"
    block_size: int | tuple[int, int] = DEFAULT_BLOCK_SIZE
    axis: str = DEFAULT_AXIS

    def __post_init__(self):
        # reuse MMDFlow's validation of the hyperparameters
        MMDFlow(self.kernel, step_size=self.step_size, noise_level=self.noise_level)
        _, bs = _check_common(self.kernel, self.mesh, self.axis, self.strategy, self.block_size)
        object.__setattr__(self, "block_size", bs)

    def init(self, x0: jax.Array, key: jax.Array, wx: jax.Array | None = None) -> FlowState:
        """Pads and shards ``x0`` (``[n, d]``); ``wx`` are the real particles' weights."""
        x0 = check_points("x0", x0)
        size = _axis_size(self.mesh, self.axis)
        n = x0.shape[0]
        a = _pad_to(_weights("wx", wx, n, "x0", x0.dtype), size, "constant")
        xp = _constrain(_pad_to(x0, size, "edge"), self.mesh, self.axis)
        a = _constrain(a, self.mesh, self.axis)
        return FlowState(x=xp, wx=a, key=key, count=jnp.zeros((), jnp.int32), extra=_RealCount(n))

    def particles(self, state: FlowState) -> jax.Array:
        """The ``[n, d]`` real particles of ``state``."""
        return state.x[: state.extra.n]

    def step(self, state: FlowState, y: jax.Array, wy: jax.Array | None = None):
        """One step ``x <- x + step_size * witness_grad(x + noise_level * eps)``."""
        size = _axis_size(self.mesh, self.axis)
        n, d = state.extra.n, state.x.shape[1]
        y = check_points("y", y, d=d)
        dtype = state.x.dtype
        b = _pad_to(_weights("wy", wy, y.shape[0], "y", dtype), size, "constant")
        yp = _pad_to(y.astype(dtype), size, "edge")
        eps = schedule_value(self.step_size, state.count)
        beta = schedule_value(self.noise_level, state.count)
        key, kn = jax.random.split(state.key)
        noise = _pad_to(jax.random.normal(kn, (n, d), dtype), size, "edge")
        z = state.x + beta * noise
        v = _witness_padded(
            "grad",
            self.kernel,
            z,
            state.x,
            yp,
            state.wx,
            b,
            self.mesh,
            self.axis,
            self.strategy,
            self.block_size,
        )
        dx = eps * v
        aux = {"kinetic": _kinetic(dx, state.wx, eps), "critic": jnp.asarray(jnp.nan, v.dtype)}
        x = _constrain(state.x + dx, self.mesh, self.axis)
        return state._replace(x=x, key=key, count=state.count + 1), aux
