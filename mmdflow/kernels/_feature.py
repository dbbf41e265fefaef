"""``FeatureKernel``: a base kernel on learned (or fixed) features, ``k(x, y) = K(phi(x), phi(y))``.

The kernel of an MMD GAN critic (Li et al. 2017; Bińkowski et al. 2018; Arbel et al. 2018):
a base kernel ``K`` on the output of a feature map ``phi_psi`` (a neural network). The feature
map is a pure function ``feature_fn(params, x [n, d]) -> [n, D]`` acting on each row on its own;
``params`` are traced pytree leaves (so a new critic state never recompiles), ``feature_fn`` is
static (hashable: compared by value in jit caches). :func:`mmdflow.critics.learned_kernel` builds
one from a Flax NNX module.

The kernel sums of :mod:`mmdflow.ops` apply ``phi`` once per point set (not once per tile) and
work on the features with the base kernel, on any ``impl``; derivatives in the points are pulled
back through ``phi`` (a VJP), derivatives in the second argument pushed forward (a JVP):

* ``sum_j w_j grad_x k(x_i, y_j) = J_phi(x_i)^T sum_j w_j grad_1 K(phi x_i, phi y_j)``,
* ``sum_j H_k(x_i, y_j) e_j = J_phi(x_i)^T sum_j H_K(phi x_i, phi y_j) J_phi(y_j) e_j``.

The block methods below compute the same per tile (for combinators such as ``Sum`` of feature
kernels, which reach the tiles directly).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from mmdflow.kernels._base import Kernel, _pytree


@_pytree(data=("base", "params"), meta=("feature_fn",))
class FeatureKernel(Kernel):
    """``k(x, y) = base(phi(x), phi(y))`` with ``phi(x) = feature_fn(params, x)``.

    Attributes:
      base: the kernel on features (``[D]`` vectors).
      feature_fn: ``feature_fn(params, x [n, d]) -> [n, D]``, row-wise (no batch statistics),
        differentiable; static and hashable (a module-level function, or an object with
        value equality such as the adapter :func:`mmdflow.critics.learned_kernel` uses).
      params: the feature map's parameter pytree (traced leaves).

    Example:
      >>> import jax.numpy as jnp
      >>> from mmdflow import kernels, ops
      >>> def lin(p, x):
      ...     return x @ p
      >>> k = kernels.FeatureKernel(kernels.Gaussian(1.0), lin, jnp.eye(2))
      >>> x = jnp.zeros((3, 2)); y = jnp.ones((4, 2))
      >>> bool(jnp.allclose(ops.kernel_matvec(k, x, y, jnp.ones(4)), 4 * jnp.exp(-1.0)))
      True
    """

    base: Any = None
    feature_fn: Callable | None = None
    params: Any = None

    def __post_init__(self):
        if not isinstance(self.base, Kernel):
            raise ValueError(
                f"FeatureKernel: `base` must be a Kernel; got {type(self.base).__name__}."
            )
        if not callable(self.feature_fn):
            raise ValueError(
                "FeatureKernel: `feature_fn` must be callable as feature_fn(params, x [n, d]) -> "
                f"[n, D]; got {type(self.feature_fn).__name__}."
            )
        try:
            hash(self.feature_fn)
        except TypeError:
            raise ValueError(
                "FeatureKernel: `feature_fn` must be hashable (it is static under jit); got an "
                f"unhashable {type(self.feature_fn).__name__}."
            ) from None

    def features(self, x: jax.Array) -> jax.Array:
        """``phi(x)``: ``[n, d] -> [n, D]``."""
        f = self.feature_fn(self.params, x)
        if f.ndim != 2 or f.shape[0] != x.shape[0]:
            raise ValueError(
                f"FeatureKernel: feature_fn(params, x) must map [n, d] = {tuple(x.shape)} to "
                f"[n, D]; got shape {tuple(f.shape)}."
            )
        return f

    def linearize(self, x: jax.Array) -> tuple[jax.Array, Callable[[jax.Array], jax.Array]]:
        """``(phi(x), pull)``: the features ``[n, D]`` and ``pull(g) = J_phi(x_i)^T g_i``.

        ``pull`` maps feature-space vectors ``g [n, D]`` (or ``[n, k, D]``) to ``[n, (k,) d]``
        (one VJP through ``phi``, reusing its forward pass).
        """
        fx, vjp = jax.vjp(self.features, x)

        def pull(g):
            if g.ndim == 2:
                return vjp(g)[0]
            return jnp.moveaxis(jax.vmap(lambda gc: vjp(gc)[0], in_axes=1)(g), 0, 1)

        return fx, pull

    def push_forward(self, y: jax.Array, e: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(phi(y), J_phi(y_j) e_j)``: features and tangents ``[m, D]`` of vectors ``e [m, d]``."""
        return jax.jvp(self.features, (y,), (e,))

    def row_jacobians(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(phi(x), J)``: the features ``[n, D]`` and each row's Jacobian ``J [n, D, d]``
        (``d`` forward passes; the feature map is row-wise), for sums applied many times at the
        same points (:func:`mmdflow.ops.kernel_hessian_operator`)."""
        row = lambda xi: self.features(xi[None])[0]
        return self.features(x), jax.vmap(jax.jacfwd(row))(x)

    def __call__(self, x, y):
        return self.base(self.features(x[None])[0], self.features(y[None])[0])

    def gram_block(self, x, y):
        return self.base.gram_block(self.features(x), self.features(y))

    def grad_block(self, x, y, w):
        fx, pull = self.linearize(x)
        return pull(self.base.grad_block(fx, self.features(y), w))

    def hess_block(self, x, y, e):
        fx, pull = self.linearize(x)
        fy, t = self.push_forward(y, e)
        return pull(self.base.hess_block(fx, fy, t))

    def diag(self, x):
        return self.base.diag(self.features(x))
