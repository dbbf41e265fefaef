"""Linear algebra on pytrees shared by the critics and the generator directions.

:func:`cg` is conjugate gradients that also reports its iteration count and relative
residual, and accepts a warm start; :mod:`mmdflow.sobolev` (exact kernel critic),
:mod:`mmdflow.kernelized` (generator directions) and :mod:`mmdflow.sharding` use it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from mmdflow.kernels import HIGHEST

__all__ = ["cg", "tree_vdot", "tree_axpy"]


def tree_vdot(a, b):
    """``<a, b>`` summed over the leaves of two pytrees of the same structure."""
    leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return sum(jnp.vdot(x, y, precision=HIGHEST) for x, y in leaves)


def tree_axpy(alpha, x, y):
    """``alpha x + y`` leaf by leaf."""
    return jax.tree.map(lambda xi, yi: alpha * xi + yi, x, y)


def cg(matvec: Callable, b, *, tol: float = 1e-5, maxiter: int = 100, x0=None):
    """Conjugate gradients on pytrees for SPD ``matvec``; stops at ``|r| <= tol |b|``.

    Minimises ``q(x) = 1/2 <x, A x> - <b, x>``. From the default zero start every
    iterate has ``q(x_k) <= 0``, i.e. ``<b, x_k> >= 1/2 <x_k, A x_k> > 0``: CG stopped
    early (truncated) is still a descent direction for the problem whose gradient is
    ``-b``. A warm start ``x0`` is first rescaled to its best multiple ``alpha x0``,
    ``alpha = <b, x0> / <x0, A x0>`` (one extra matvec; ``alpha = 0`` for ``x0 = 0``), so
    ``q(alpha x0) <= 0`` and the iterates keep that property whatever ``x0`` is.

    Returns:
      ``(x, iterations, relative_residual)``.
    """
    bnorm2 = tree_vdot(b, b)
    tiny = jnp.finfo(bnorm2.dtype).tiny
    if x0 is None:
        x0, r0 = jax.tree.map(jnp.zeros_like, b), b
    else:
        ax0 = matvec(x0)
        alpha = tree_vdot(b, x0) / jnp.maximum(tree_vdot(x0, ax0), tiny)
        x0 = jax.tree.map(lambda v: alpha * v, x0)
        r0 = tree_axpy(-alpha, ax0, b)
    thresh = (tol**2) * bnorm2

    def cond(state):
        _, r, _, rr, i = state
        return (rr > thresh) & (i < maxiter)

    def body(state):
        x, r, p, rr, i = state
        ap = matvec(p)
        alpha = rr / tree_vdot(p, ap)
        x = tree_axpy(alpha, p, x)
        r = tree_axpy(-alpha, ap, r)
        rr_new = tree_vdot(r, r)
        p = tree_axpy(rr_new / rr, p, r)
        return x, r, p, rr_new, i + 1

    init = (x0, r0, r0, tree_vdot(r0, r0), jnp.zeros((), jnp.int32))
    x, _, _, rr, it = jax.lax.while_loop(cond, body, init)
    return x, it, jnp.sqrt(rr / jnp.maximum(bnorm2, tiny))
