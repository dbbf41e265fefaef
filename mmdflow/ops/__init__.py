"""Kernel sums over point sets: ``gram``, ``kernel_matvec``, ``kernel_grad_matvec``,
``kernel_value_and_grad_matvec``, ``kernel_hessian_matvec``, and :class:`SumConfig`, the one
configuration of how they run.

Every sum, estimator, critic, flow and generator direction above this module takes a
``sums=SumConfig(...)`` (``None``: ``SumConfig()``, the tuned defaults). Its ``impl`` selects
the one-device implementation:

* ``"dense"``: the reference. Builds the ``[n, m]`` kernel matrix from the
  point-wise ``k(x, y)`` (and ``jax.grad`` of it); simple, exact, O(n m) memory.
* ``"blocked"``: tiles of ``block_size`` rows of ``x`` times ``block_size`` rows of ``y``
  (an int, or ``(rows, cols)``; ``None`` picks the tiles by backend and distance form,
  :func:`default_tiles`: on CPU for ``d <= DIRECT_MAX_D`` tiles of about ``CPU_TILE_PAIRS``
  pairs, at most ``CPU_UNROLL_COL_BLOCKS`` column blocks, for larger ``d`` ``512 x 1024``, and
  narrower tiles for the Hessian sum; on GPUs ``1024 x 1024``); a
  ``lax.map`` over row blocks, a ``lax.scan`` over column blocks (none when there is one;
  unrolled on CPU up to ``CPU_UNROLL_COL_BLOCKS`` blocks), with ``jax.checkpoint`` on both
  levels so that neither the forward pass nor reverse mode ever holds more than one
  ``[bx, by]`` tile (plus O((n + m) d) carries). Translation-invariant kernels in more than
  ``DIRECT_MAX_D`` dimensions are centred first and use the GEMM distance form at full fp32
  (``HIGHEST``) precision.
* ``"pallas"``: fused kernels (:mod:`mmdflow.fused`) for ``kernel_matvec`` and
  ``kernel_grad_matvec`` with radial kernels (``Gaussian``, ``MixtureRBF``, ``IMQ``, ``Laplace``,
  ``RationalQuadratic``, ``Energy``): flash-attention-style tiles kept in registers, a
  ``custom_vjp`` whose backward passes (points, weights and kernel hyperparameters) are fused
  kernel sums too. On a GPU it compiles with Pallas' Triton backend; elsewhere it runs in Pallas
  interpret mode (exact but slow: for tests). ``block_size`` is rounded down to a power of two in
  ``[16, 256]``; ``None`` means the fused default tiles. Other kernels raise ``ValueError``. No
  forward-mode autodiff (``jvp``/``jacfwd``) through it; ``kernel_hessian_matvec`` has no fused
  path and uses the blocked one.
* ``"auto"`` (default): blocked; ``"pallas"`` on a GPU backend for supported kernels and
  fp32/bf16/fp16 inputs when ``mmdflow.ops._local.AUTO_PALLAS_ON_GPU`` is set (off until the
  fused kernels have been validated on a real GPU), otherwise blocked (a single tile, without
  loops, when both sets fit in one block). Measured on CPU blocked is never slower than dense
  forward and 7-12x faster in reverse mode (``benchmarks/RESULTS.md``); the dense path is
  kept as the reference.

With ``SumConfig(mesh=...)`` the same sums run over point sets sharded by rows along a mesh
axis (:mod:`mmdflow.sharding`): padded to a multiple of the axis size with zero-weight
copies of their last row, each device sums its own query rows against all sources, blocked,
by ``strategy``: ``"allgather"`` (every device briefly holds all of ``y``; plain JAX AD) or
``"ring"`` (``lax.ppermute`` rotations, at most two ``y`` shards per device, and a custom VJP
that keeps reverse mode at the same memory; no forward-mode AD). ``x`` and ``y`` may then
also be :class:`~mmdflow.sharding.ShardedPoints` (padded outputs). Results equal the
one-device sums up to summation order.

Weights ``w`` may be ``[m]`` (a single sum) or ``[m, k]`` (k sums at once). They are plain
real coefficients, not probability weights: signed, zero and unnormalised ``w`` are valid
(the witness sums ``w = [wy, -wx]``), so they are not checked for sign or sum.

NaN/inf inputs are not masked: they propagate to every output they touch.

Example:
  >>> import jax.numpy as jnp
  >>> from mmdflow import kernels, ops
  >>> x = jnp.zeros((3, 2)); y = jnp.ones((4, 2)); w = jnp.ones(4)
  >>> ops.kernel_matvec(kernels.Gaussian(1.0), x, y, w).shape
  (3,)
  >>> tiles = ops.SumConfig("blocked", block_size=2)
  >>> ops.kernel_grad_matvec(kernels.Gaussian(1.0), x, y, w, sums=tiles).shape
  (3, 2)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmdflow._checks import check_block_size
from mmdflow._mesh import STRATEGIES, _axis_size
from mmdflow.kernels import HIGHEST, FeatureKernel, Kernel
from mmdflow.ops import _collective, _local
from mmdflow.ops._local import (
    IMPLS,
    check_kernel,
    default_tiles,
    gram,
)
from mmdflow.ops._local import (
    resolve_impl as resolve_impl,
)

__all__ = [
    "gram",
    "kernel_matvec",
    "kernel_grad_matvec",
    "kernel_value_and_grad_matvec",
    "kernel_hessian_matvec",
    "kernel_hessian_operator",
    "SumConfig",
    "IMPLS",
    "STRATEGIES",
    "default_tiles",
]


@dataclasses.dataclass(frozen=True)
class SumConfig:
    """How kernel sums run: one hashable configuration (part of the jit cache key).

    Attributes:
      impl: ``"auto"``, ``"dense"``, ``"blocked"`` or ``"pallas"`` (see the module docstring).
      block_size: tile size ``b`` or ``(rows, cols)``; ``None`` is the tuned default.
      mesh: ``None``, or a ``jax.sharding.Mesh``: the point sets are padded and sharded
        along ``axis`` and every sum is a ``shard_map`` collective (its local sums are
        blocked, so ``impl`` does not apply). A flow on a mesh (``ParticleFlow(mesh=...)``)
        sets it in its field.
      axis: the mesh axis the samples are split over.
      strategy: ``"allgather"`` (every device briefly holds all of ``y``) or ``"ring"``
        (``ppermute`` rotations: at most two shards of ``y`` per device, forward and
        reverse).

    Example:
      >>> from mmdflow import ops, sharding
      >>> ops.SumConfig(mesh=sharding.make_mesh(1), strategy="ring").strategy
      'ring'
    """

    impl: str = "auto"
    block_size: int | tuple[int, int] | None = None
    mesh: Any = None
    axis: str = "data"
    strategy: str = "allgather"

    def __post_init__(self):
        if self.impl not in IMPLS:
            raise ValueError(f"SumConfig: `impl` must be one of {IMPLS}; got {self.impl!r}.")
        if self.block_size is not None:
            bs = check_block_size(self.block_size)
            object.__setattr__(self, "block_size", bs[0] if bs[0] == bs[1] else bs)
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"SumConfig: `strategy` must be one of {STRATEGIES}; got {self.strategy!r}."
            )
        if self.mesh is not None:
            _axis_size(self.mesh, self.axis)


def check_sum_config(owner: str, sums) -> SumConfig:
    """``sums`` if it is a :class:`SumConfig`, ``SumConfig()`` for ``None`` (ValueError naming
    ``owner`` otherwise)."""
    if sums is None:
        return _DEFAULT
    if not isinstance(sums, SumConfig):
        raise ValueError(f"{owner}: `sums` must be an ops.SumConfig or None; got {sums!r}.")
    return sums


_DEFAULT = SumConfig()


def _sum(kind, k, x, y, w, sums):
    sums = check_sum_config("kernel sums", sums)
    check_kernel(k)
    if sums.mesh is not None:
        return _collective.kernel_sum(kind, k, x, y, w, sums)
    x, y, w = (a if hasattr(a, "shape") else np.asarray(a) for a in (x, y, w))
    fn = _local_sum if is_pytree(k) else _local_sum_eager
    return fn(kind, k, x, y, w, sums.impl, sums.block_size)


def is_pytree(k) -> bool:
    """Whether kernel ``k`` is a registered pytree (else a jitted entry point cannot take it as
    an argument, and runs eagerly)."""
    leaves = jax.tree.leaves(k)
    return not (len(leaves) == 1 and leaves[0] is k)


def _local_sum_eager(kind, k, x, y, w, impl, block_size):
    """One-device sum ``kind``; jitted as :func:`_local_sum` (one program per op, shape and
    configuration, so eager calls compile once)."""
    fn = {
        "matvec": _local.kernel_matvec,
        "grad": _local.kernel_grad_matvec,
        "valgrad": _local.kernel_value_and_grad_matvec,
        "hess": _local.kernel_hessian_matvec,
    }[kind]
    return fn(k, x, y, w, impl=impl, block_size=block_size)


_local_sum = jax.jit(_local_sum_eager, static_argnums=(0, 5, 6))


def kernel_matvec(
    k: Kernel, x: jax.Array, y: jax.Array, w: jax.Array, *, sums: SumConfig | None = None
) -> jax.Array:
    """``out[i] = sum_j w[j] k(x_i, y_j)``.

    Args:
      k: a kernel.
      x: ``[n, d]`` query points (on a mesh also a :class:`~mmdflow.sharding.ShardedPoints`).
      y: ``[m, d]`` source points (likewise; its weights are not used here, ``w`` is).
      w: ``[m]`` or ``[m, k]`` weights (on a mesh also ``[M]`` / ``[M, k]`` for a padded
        ``y`` of ``M`` rows; padding rows are zeroed).
      sums: how the sum runs (:class:`SumConfig`; ``None``: the defaults).

    Returns:
      ``[n]`` (or ``[n, k]``) in the promoted floating dtype of the inputs (``[N]`` padded
      rows for a :class:`~mmdflow.sharding.ShardedPoints` ``x``).
    """
    return _sum("matvec", k, x, y, w, sums)


def kernel_grad_matvec(
    k: Kernel, x: jax.Array, y: jax.Array, w: jax.Array, *, sums: SumConfig | None = None
) -> jax.Array:
    """``out[i] = sum_j w[j] grad_x k(x_i, y_j)`` (gradient in the first argument).

    Args:
      k: a kernel.
      x: ``[n, d]`` points where gradients are taken.
      y: ``[m, d]`` source points.
      w: ``[m]`` or ``[m, k]`` weights.
      sums: how the sum runs (:class:`SumConfig`; ``None``: the defaults).

    Returns:
      ``[n, d]`` (or ``[n, k, d]`` for ``[m, k]`` weights).
    """
    return _sum("grad", k, x, y, w, sums)


def kernel_value_and_grad_matvec(
    k: Kernel, x: jax.Array, y: jax.Array, w: jax.Array, *, sums: SumConfig | None = None
) -> tuple[jax.Array, jax.Array]:
    """:func:`kernel_matvec` and :func:`kernel_grad_matvec` of the same arguments together.

    The blocked path evaluates both from one pass over the pairs (a radial kernel's squared
    distances, and e.g. the Gaussian's ``exp``, once per pair); the others (and a mesh) run
    the two sums. The reverse pass of an MMD^2 estimate (:func:`mmdflow.mmd2`) is built from it.

    Args:
      k: a kernel.
      x: ``[n, d]`` query points.
      y: ``[m, d]`` source points.
      w: ``[m]`` or ``[m, k]`` weights.
      sums: how the sums run (:class:`SumConfig`; ``None``: the defaults).

    Returns:
      ``(values, grads)``: ``[n]`` and ``[n, d]`` (or ``[n, k]`` and ``[n, k, d]``).

    Example:
      >>> import jax.numpy as jnp
      >>> from mmdflow import kernels, ops
      >>> v, g = ops.kernel_value_and_grad_matvec(
      ...     kernels.Gaussian(1.0), jnp.zeros((3, 2)), jnp.ones((4, 2)), jnp.ones(4))
      >>> v.shape, g.shape
      ((3,), (3, 2))
    """
    if check_sum_config("kernel sums", sums).mesh is not None:
        return _sum("matvec", k, x, y, w, sums), _sum("grad", k, x, y, w, sums)
    return _sum("valgrad", k, x, y, w, sums)


def kernel_hessian_matvec(
    k: Kernel, x: jax.Array, y: jax.Array, e: jax.Array, *, sums: SumConfig | None = None
) -> jax.Array:
    """``out[i] = sum_j H(x_i, y_j) e_j`` with the cross-Hessian ``H[a, b] = d^2 k / dx_a dy_b``.

    The derivative-feature Gram matvec behind exact kernel Sobolev descent:
    ``<d_a phi(x_i), d_b phi(y_j)> = H(x_i, y_j)[a, b]``. No fused path: ``impl="pallas"``
    uses the blocked one.

    Args:
      k: a kernel (twice differentiable).
      x: ``[n, d]`` points.
      y: ``[m, d]`` points.
      e: ``[m, d]`` vectors, one per point of ``y``.
      sums: how the sum runs (:class:`SumConfig`; ``None``: the defaults).

    Returns:
      ``[n, d]``.
    """
    return _sum("hess", k, x, y, e, sums)


def kernel_hessian_operator(
    k: Kernel, x: jax.Array, y: jax.Array, *, sums: SumConfig | None = None
) -> Callable[[jax.Array], jax.Array]:
    """``e -> kernel_hessian_matvec(k, x, y, e, sums=sums)`` for fixed ``x`` and ``y``, with the
    work that does not depend on ``e`` done once: for solvers that apply it many times.

    For a :class:`~mmdflow.kernels.FeatureKernel` (its feature map is row-wise) the features and
    their per-point Jacobians ``[n, D, d]`` are computed once (``d`` forward passes); each
    application is then the base kernel's Hessian sum between two contractions. Through
    ``kernel_hessian_matvec`` every application differentiates the feature map again: for the
    Stein kernel, derivatives of ``log p`` at every point per CG iteration (measured: about
    108 ms per iteration of the SrMMD flow toward a 4,000-component mixture at n = 512,
    benchmarks/RESULTS.md). Other kernels, and sums on a mesh: the Hessian sum as it is.

    Args:
      k: a kernel (twice differentiable).
      x: ``[n, d]`` points.
      y: ``[m, d]`` points.
      sums: how the sums run (:class:`SumConfig`; ``None``: the defaults).

    Returns:
      A function of ``e [m, d]`` returning ``[n, d]``.

    Example:
      >>> import jax.numpy as jnp
      >>> from mmdflow import kernels, ops
      >>> kp = kernels.stein_kernel(kernels.Gaussian(1.0), lambda x: -0.5 * jnp.sum(x**2), 2)
      >>> x = jnp.array([[0.0, 1.0], [0.5, -0.2]]); e = jnp.ones((2, 2))
      >>> h = ops.kernel_hessian_operator(kp, x, x)
      >>> bool(jnp.allclose(h(e), ops.kernel_hessian_matvec(kp, x, x, e), rtol=1e-5))
      True
    """
    sums = check_sum_config("kernel_hessian_operator", sums)
    if not isinstance(k, FeatureKernel) or sums.mesh is not None:
        return lambda e: kernel_hessian_matvec(k, x, y, e, sums=sums)

    fx, jx = k.row_jacobians(x)
    fy, jy = (fx, jx) if y is x else k.row_jacobians(y)

    def apply(e):
        t = jnp.einsum("mfd,md->mf", jy, e, precision=HIGHEST)
        g = kernel_hessian_matvec(k.base, fx, fy, t, sums=sums)
        return jnp.einsum("nfd,nf->nd", jx, g, precision=HIGHEST)

    return apply
