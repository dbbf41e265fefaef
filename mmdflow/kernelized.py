"""Parametric kernelized (Riemannian) gradient-flow directions for generators.

Mroueh & Nguyen (AISTATS 2021), "On the convergence of gradient descent in GANs:
MMD GAN as a gradient flow". The paper's full text was not available; the
formulas follow the reconstruction in ``shared/reference/paper-mmd-gan-flow.md``
(every formula there is tagged by certainty). What is *reconstructed* here:
the choice of penalty operator (variant B as the primary method), the constants
(the penalty weight is absorbed in ``reg``), and the discrete Euler scheme.

A generator is any function ``gen_fn(params, z) -> [M, d]`` of a parameter pytree.
With target samples ``y [N, d]`` and a kernel ``k``, the critic of
gradient-regularized MMD GAN is ``f = (C + reg I)^-1 (mu_p - mu_theta)`` and the
generator velocity is ``theta_dot = E_z grad_theta f(g_theta(z))``:

* ``"kernelized"`` (variant B): ``C = J J^*`` (penalty on the generator's
  parameter gradient), so ``theta_dot = (K + reg I)^-1 J^* u = -1/2 (K + reg I)^-1
  grad_theta MMD^2`` with the Gauss-Newton / NTK matrix ``K = J^* J``. Always a
  descent direction for MMD^2. Solved matrix-free: ``K v`` is one JVP through the
  generator, a cross-Hessian kernel sum, one VJP; CG on the parameter pytree.
  Never a P x P or (M d) x P matrix.
* ``"grad-penalty"`` (variant C): ``C = D^x`` (data-space gradient penalty, the
  kernel Sobolev critic of the generated samples), pushed through the VJP.
* ``"mmd-gd"``: plain MMD-GAN generator gradient ``J^* u = -1/2 grad_theta MMD^2``
  (the ``reg -> inf`` limit of the others, rescaled by ``reg``).

All directions are *ascent* velocities (``theta <- theta + lr * theta_dot``); to
use an optax optimizer pass ``-theta_dot`` as the gradient.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from mmdflow import kernels, kernelized
  >>> gen = lambda p, z: jnp.tanh(z @ p["w"]) + p["b"]
  >>> params = {"w": jnp.eye(2), "b": jnp.zeros(2)}
  >>> z = jax.random.normal(jax.random.key(0), (64, 2)); y = z + 2.0
  >>> v, info = kernelized.direction(gen, params, z, y, kernels.Gaussian(1.0), reg=0.1)
  >>> bool(info["decrease_rate"] > 0)
  True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from mmdflow._checks import check_points
from mmdflow.kernels import Kernel
from mmdflow.mmd import mmd2
from mmdflow.ops import check_kernel, kernel_hessian_matvec
from mmdflow.sobolev import exact_critic

__all__ = ["direction", "DIRECTIONS", "cg", "tree_vdot"]

DIRECTIONS = ("kernelized", "grad-penalty", "mmd-gd")


def tree_vdot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _axpy(alpha, x, y):
    return jax.tree.map(lambda xi, yi: alpha * xi + yi, x, y)


def cg(matvec: Callable, b, *, tol: float = 1e-5, maxiter: int = 100):
    """Conjugate gradients on pytrees for SPD ``matvec``; stops at ``|r| <= tol |b|``.

    Returns:
      ``(x, iterations, relative_residual)``.
    """
    bnorm2 = tree_vdot(b, b)
    x0 = jax.tree.map(jnp.zeros_like, b)
    thresh = (tol**2) * bnorm2

    def cond(state):
        _, r, _, rr, i = state
        return (rr > thresh) & (i < maxiter)

    def body(state):
        x, r, p, rr, i = state
        ap = matvec(p)
        alpha = rr / tree_vdot(p, ap)
        x = _axpy(alpha, p, x)
        r = _axpy(-alpha, ap, r)
        rr_new = tree_vdot(r, r)
        p = _axpy(rr_new / rr, p, r)
        return x, r, p, rr_new, i + 1

    x, _, _, rr, it = jax.lax.while_loop(cond, body, (x0, b, b, bnorm2, jnp.zeros((), jnp.int32)))
    return x, it, jnp.sqrt(rr / jnp.maximum(bnorm2, jnp.finfo(bnorm2.dtype).tiny))


def direction(
    gen_fn: Callable[[Any, jax.Array], jax.Array],
    params,
    z: jax.Array,
    y: jax.Array,
    k: Kernel,
    reg=0.1,
    *,
    kind: str = "kernelized",
    cg_tol: float = 1e-5,
    cg_maxiter: int = 100,
    impl: str = "auto",
):
    """Generator velocity ``theta_dot`` (a pytree like ``params``) and diagnostics.

    Args:
      gen_fn: ``gen_fn(params, z) -> [M, d]`` generated samples.
      params: parameter pytree.
      z: ``[M, d_z]`` latent batch.
      y: ``[N, d]`` target batch.
      k: kernel.
      reg: ridge ``lambda > 0`` (ignored by ``"mmd-gd"``).
      kind: one of ``DIRECTIONS``.
      cg_tol, cg_maxiter: CG stopping rule (``"kernelized"``; ``"grad-penalty"``
        uses :func:`mmdflow.sobolev.exact_critic`'s solver).
      impl: kernel-sum implementation.

    Returns:
      ``(theta_dot, info)`` with ``info`` scalars: ``mmd2`` (biased, on the batch),
      ``grad_norm`` ``|J^* u|``, ``velocity_norm`` ``|theta_dot|``, ``decrease_rate``
      ``<J^* u, theta_dot>`` (``= -1/2 d/dt MMD^2 > 0`` for a descent direction),
      ``critic`` (regularized discrepancy ``<u, (C + reg)^-1 u>``; NaN for mmd-gd),
      ``cg_iterations`` and ``cg_residual``.
    """
    check_kernel(k)
    if kind not in DIRECTIONS:
        raise ValueError(f"`kind` must be one of {DIRECTIONS}; got {kind!r}.")
    y = check_points("y", y)
    x, vjp_fn = jax.vjp(lambda p: gen_fn(p, z), params)
    x = check_points("gen_fn(params, z)", x, d=y.shape[1], other="y")
    m = x.shape[0]
    # J^* u = -1/2 grad_theta MMD^2 (biased, fixed target batch): the MMD^2 gradient in the
    # samples pulled back through the generator's VJP (no second generator pass)
    loss, gx = jax.value_and_grad(lambda xv: mmd2(xv, y, k, impl=impl))(x)
    jtu = vjp_fn(-0.5 * gx)[0]
    nan = jnp.asarray(jnp.nan, x.dtype)
    info = {"mmd2": loss, "grad_norm": jnp.sqrt(tree_vdot(jtu, jtu)), "critic": nan}
    info["cg_iterations"] = jnp.zeros((), jnp.int32)
    info["cg_residual"] = jnp.zeros((), x.dtype)
    if kind == "mmd-gd":
        v = jtu
    elif kind == "kernelized":
        xs = jax.lax.stop_gradient(x)

        def kmv(vec):
            _, t = jax.jvp(lambda p: gen_fn(p, z), (params,), (vec,))
            s = kernel_hessian_matvec(k, xs, xs, t, impl=impl) / (m * m)
            return _axpy(reg, vec, vjp_fn(s)[0])

        v, it, res = cg(kmv, jtu, tol=cg_tol, maxiter=cg_maxiter)
        info["cg_iterations"], info["cg_residual"] = it, res
        # <u, (J J^* + reg)^-1 u> = (|u|^2 - <J^* u, theta_dot>) / reg
        info["critic"] = (loss - tree_vdot(jtu, v)) / reg
    else:  # grad-penalty: exact kernel Sobolev critic of the generated samples
        c = exact_critic(k, jax.lax.stop_gradient(x), y, reg, impl=impl)
        v = vjp_fn(c.grad_at_x / m)[0]
        info["critic"] = c.discrepancy_sq
    info["velocity_norm"] = jnp.sqrt(tree_vdot(v, v))
    info["decrease_rate"] = tree_vdot(jtu, v)
    return v, info
