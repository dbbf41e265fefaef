"""Data-parallel generator directions: :func:`mmdflow.kernelized.direction` on a device mesh.

The latent batch ``z`` and the target batch ``y`` are split by rows over the mesh axis,
the parameters are replicated. Inside one ``shard_map``:

* each device generates its own samples ``x_r = g_theta(z_r)`` and keeps the VJP;
* MMD^2 and the witness gradient at ``x_r`` are sharded kernel sums over *all*
  generated and target samples (all-gather or ``ppermute`` ring);
* ``J^* u`` is the local VJP of ``a_r * grad witness(x_r)`` followed by a ``psum``;
* ``"kernelized"``: CG on the replicated parameter pytree; each product
  ``(K + reg I) v`` is a local JVP (``jax.linearize``), a sharded cross-Hessian sum
  over all generated samples, a local VJP and a ``psum``. Every device runs the same
  CG iterations on the same replicated vectors (its inner products need no
  communication).

``"grad-penalty"`` uses :func:`sharded_exact_critic` (matrix-free CG) on the sharded
generated samples, then the local VJP and a ``psum``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from mmdflow._checks import check_block_size, check_points
from mmdflow._linalg import cg, tree_vdot
from mmdflow.kernels import Kernel
from mmdflow.ops import DEFAULT_BLOCK_SIZE
from mmdflow.sharding._mesh import (
    DEFAULT_AXIS,
    STRATEGIES,
    _axis_size,
    _check_common,
    _constrain,
    _mask,
    _pad_to,
)
from mmdflow.sharding._sobolev import _exact_critic_padded
from mmdflow.sharding._sums import _body_sum, _float_kernel

__all__ = ["SHARDED_DIRECTIONS", "sharded_direction", "direction_fn"]

#: the directions of :func:`mmdflow.kernelized.direction` available data-parallel
SHARDED_DIRECTIONS = ("kernelized", "grad-penalty", "mmd-gd")


def _check_generated(gen_fn, params, z, d):
    out = jax.eval_shape(gen_fn, params, z)
    shape = tuple(getattr(out, "shape", ()))
    if len(shape) != 2 or shape[0] != z.shape[0] or shape[1] != d:
        raise ValueError(
            f"`gen_fn(params, z)` must return [M, d] = [{z.shape[0]}, {d}] samples like `y` "
            f"for `z` of shape {tuple(z.shape)}; got shape {shape}."
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(f"`gen_fn(params, z)` must be floating; got {out.dtype}.")
    return jnp.result_type(out.dtype)


def sharded_direction(
    gen_fn: Callable[[Any, jax.Array], jax.Array],
    params,
    z: jax.Array,
    y: jax.Array,
    k: Kernel,
    reg=0.1,
    *,
    mesh: Mesh,
    kind: str = "kernelized",
    cg_tol: float = 1e-5,
    cg_maxiter: int = 100,
    solver: str = "auto",
    impl: str = "auto",
    v0=None,
    strategy: str = "allgather",
    block_size: int | tuple[int, int] = DEFAULT_BLOCK_SIZE,
    axis: str = DEFAULT_AXIS,
):
    """:func:`mmdflow.kernelized.direction` with ``z`` and ``y`` sharded over ``axis``.

    Same arguments, returns and estimator as the single-device function (the biased
    MMD^2 of the whole batch, not an average of per-device ones), plus the mesh
    options. Batches of any size: ``z`` and ``y`` are padded to a multiple of the
    axis size with zero-weight copies of their last row.

    Args:
      gen_fn: ``gen_fn(params, z) -> [M, d]``, applied row-wise (each device calls it
        on its own rows of ``z``).
      params: parameter pytree (replicated).
      z: ``[M, d_z]`` latent batch.
      y: ``[N, d]`` target batch.
      k: kernel.
      reg: ridge ``lambda > 0`` (ignored by ``"mmd-gd"``).
      mesh: device mesh with an axis ``axis``.
      kind: one of :data:`SHARDED_DIRECTIONS` (``"param-sobolev"`` needs per-sample
        Jacobians and dense solves: not available here).
      cg_tol, cg_maxiter: CG stopping rule (``"kernelized"``; also the matrix-free
        critic solve of ``"grad-penalty"``, which is Cholesky on one device for small
        batches unless ``solver="cg"``, so agreement there is to the CG tolerance).
      solver: ``"auto"`` or ``"cg"`` (the sample-space solve is always matrix-free CG
        here; ``"cholesky"`` raises ValueError).
      impl: accepted for signature compatibility; the local sums are blocked.
      v0: optional warm start of the ``"kernelized"`` CG (replicated pytree like
        ``params``), passed to :func:`mmdflow.kernelized.cg` as ``x0``.
      strategy: ``"allgather"`` or ``"ring"``.
      block_size: tile size of the local blocked sums.
      axis: mesh axis name.

    Returns:
      ``(theta_dot, info)``, replicated; see :func:`mmdflow.kernelized.direction`.
    """
    del impl
    if kind not in SHARDED_DIRECTIONS:
        raise ValueError(f"`kind` must be one of {SHARDED_DIRECTIONS} when sharded; got {kind!r}.")
    if solver not in ("auto", "cg"):
        raise ValueError(
            f"`solver` must be 'auto' or 'cg' when sharded (no dense solves); got {solver!r}."
        )
    size, bs = _check_common(k, mesh, axis, strategy, block_size)
    y = check_points("y", y)
    z = check_points("z", z)
    dtype = jnp.result_type(_check_generated(gen_fn, params, z, y.shape[1]), y.dtype)
    m, n = z.shape[0], y.shape[0]
    zp = _constrain(_pad_to(z, size, "edge"), mesh, axis)
    yp = _constrain(_pad_to(y.astype(dtype), size, "edge"), mesh, axis)
    a = _constrain(_mask(m, zp.shape[0], dtype) / m, mesh, axis)
    b = _constrain(_mask(n, yp.shape[0], dtype) / n, mesh, axis)
    kl, treedef = jax.tree.flatten(_float_kernel(k, dtype))
    opts = (axis, size, strategy, bs)
    body_kind = "mmd-gd" if kind == "grad-penalty" else kind
    body = functools.partial(_direction_body, gen_fn, treedef, opts, body_kind, cg_tol, cg_maxiter)
    fn = jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(P(), P(), P(), P(), P(axis), P(axis), P(axis), P(axis)),
        out_specs=P(),
        check_vma=False,
    )
    reg = jnp.asarray(reg, dtype)
    v0 = v0 if kind == "kernelized" else None
    v, info = fn(params, v0, kl, reg, zp, yp, a, b)
    if kind == "grad-penalty":
        args = (gen_fn, params, zp, yp, a, b, k, reg, mesh, opts)
        v, info = _grad_penalty(*args, v, info, cg_tol, cg_maxiter)  # v: J^* u
    return v, info


def _sum(kind, kl, treedef, opts, q, srcs, ws):
    axis, size, strategy, bs = opts
    return _body_sum(kind, kl, treedef, q, srcs, ws, axis, size, strategy, bs)


def _direction_body(gen_fn, treedef, opts, kind, tol, maxiter, params, v0, kl, reg, zl, yl, al, bl):
    axis = opts[0]
    gen = lambda p: gen_fn(p, zl)
    xl, vjp_fn = jax.vjp(gen, params)
    xd = xl.astype(al.dtype)
    # column 0: sum_j a_j k(., x_j); column 1: sum_j b_j k(., y_j)
    wsrc = (jnp.stack([al, jnp.zeros_like(al)], 1), jnp.stack([jnp.zeros_like(bl), bl], 1))
    sx = _sum("matvec", kl, treedef, opts, xd, (xd, yl), wsrc)
    sy = _sum("matvec", kl, treedef, opts, yl, (yl,), (bl[:, None],))
    txx = lax.psum(jnp.dot(al, sx[:, 0]), axis)
    txy = lax.psum(jnp.dot(al, sx[:, 1]), axis)
    tyy = lax.psum(jnp.dot(bl, sy[:, 0]), axis)
    raw = txx + tyy - 2.0 * txy
    loss = jnp.maximum(raw, 0.0)
    clamp = jax.grad(lambda r: jnp.maximum(r, 0.0))(raw)  # d loss / d raw, as AD sees it
    # -1/2 d MMD^2 / d x_i = a_i grad witness(x_i), witness = sum_j b_j k(., y_j) - a_j k(., x_j)
    wg = _sum("grad", kl, treedef, opts, xd, (yl, xd), (bl[:, None], -al[:, None]))[:, 0]
    pull = lambda s: lax.psum(vjp_fn(s.astype(xl.dtype))[0], axis)
    jtu = pull(clamp * al[:, None] * wg)
    nan = jnp.asarray(jnp.nan, al.dtype)
    info = {"mmd2": loss, "grad_norm": jnp.sqrt(tree_vdot(jtu, jtu)), "critic": nan}
    info["cg_iterations"] = jnp.zeros((), jnp.int32)
    info["cg_residual"] = jnp.zeros((), al.dtype)
    if kind == "mmd-gd":
        v = jtu
    else:
        _, jvp_fn = jax.linearize(gen, params)

        def kmv(vec):
            e = al[:, None] * jvp_fn(vec).astype(al.dtype)
            h = _sum("hess", kl, treedef, opts, xd, (xd,), (e,))
            # reg is a float64 array here (a Python float on one device): keep param dtypes
            return jax.tree.map(
                lambda v, g: (reg * v + g).astype(v.dtype), vec, pull(al[:, None] * h)
            )

        warm = {} if v0 is None else {"x0": v0}
        v, it, res = cg(kmv, jtu, tol=tol, maxiter=maxiter, **warm)
        info["cg_iterations"], info["cg_residual"] = it, res
        info["critic"] = (loss - tree_vdot(jtu, v)) / reg
    info["velocity_norm"] = jnp.sqrt(tree_vdot(v, v))
    info["decrease_rate"] = tree_vdot(jtu, v)
    return v, info


def _grad_penalty(gen_fn, params, zp, yp, a, b, k, reg, mesh, opts, jtu, info, tol, maxiter):
    """``"grad-penalty"``: the sharded exact critic of the generated samples, pulled back."""
    axis, _, strategy, bs = opts
    gen = jax.shard_map(
        gen_fn, mesh=mesh, in_specs=(P(), P(axis)), out_specs=P(axis), check_vma=False
    )
    x = _constrain(lax.stop_gradient(gen(params, zp)).astype(a.dtype), mesh, axis)
    c = _exact_critic_padded(k, x, yp, a, b, reg, mesh, axis, strategy, bs, tol, maxiter)

    def pull(p, zl, sl):
        xl, vjp_fn = jax.vjp(lambda q: gen_fn(q, zl), p)
        return lax.psum(vjp_fn(sl.astype(xl.dtype))[0], axis)

    pull = jax.shard_map(
        pull, mesh=mesh, in_specs=(P(), P(axis), P(axis)), out_specs=P(), check_vma=False
    )
    v = pull(params, zp, a[:, None] * c.grad_at_x)  # single device: vjp(grad_at_x / M)
    info["critic"] = c.discrepancy_sq
    info["cg_iterations"], info["cg_residual"] = c.cg_iterations, c.cg_residual
    info["velocity_norm"] = jnp.sqrt(tree_vdot(v, v))
    info["decrease_rate"] = tree_vdot(jtu, v)
    return v, info


def direction_fn(
    mesh: Mesh,
    *,
    strategy: str = "allgather",
    block_size: int | tuple[int, int] = DEFAULT_BLOCK_SIZE,
    axis: str = DEFAULT_AXIS,
) -> Callable:
    """A drop-in for :func:`mmdflow.kernelized.direction` that runs data-parallel on ``mesh``.

    ``direction_fn(mesh)(gen_fn, params, z, y, k, reg, kind=..., cg_tol=..., ...)`` is
    :func:`sharded_direction` with the mesh options bound.
    """
    _axis_size(mesh, axis)
    if strategy not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}; got {strategy!r}.")
    check_block_size(block_size)
    return functools.partial(
        sharded_direction, mesh=mesh, strategy=strategy, block_size=block_size, axis=axis
    )
