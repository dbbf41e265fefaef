"""Kernel sums over point sets sharded on a mesh: all-gather and ``ppermute`` ring bodies,
the ring's custom VJP (see :mod:`mmdflow.ops` and :mod:`mmdflow.sharding`)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from mmdflow._checks import check_points, check_weights
from mmdflow._mesh import _axis_size, _constrain, _finish, _mask, _pad_to, _points_of
from mmdflow.ops._local import kernel_grad_matvec, kernel_hessian_matvec, kernel_matvec


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


# ---------------------------------------------------------------- kernel sums on a mesh
def kernel_sum(kind, k, x, y, w, sums):
    """The ``kind`` sum (``"matvec"``, ``"grad"``, ``"hess"``) with ``sums.mesh`` set.

    ``x`` / ``y``: arrays or :class:`~mmdflow.sharding.ShardedPoints`; ``w``: weights (or the
    ``e`` vectors of ``"hess"``) of the real ``y`` rows, or of all padded rows.
    """
    mesh, axis, strategy, block_size = sums.mesh, sums.axis, sums.strategy, sums.block_size
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
