"""Dot-product kernels ``k(x, y) = psi(x . y)``: ``Polynomial``, ``Linear``."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from mmdflow._checks import check_positive, check_real, concrete_array
from mmdflow.kernels._base import DotProductKernel, _nonnegative, _positive, _pytree


@_pytree(data=("scale", "offset"), meta=("degree",))
class Polynomial(DotProductKernel):
    """``(scale * x.y + offset)^degree``; ``scale=None`` means ``1/d`` (KID's cubic kernel).

    Args:
      degree: positive int (static: changing it recompiles).
      scale: positive scalar or None for ``1/d``.
      offset: non-negative scalar.
    """

    degree: int = 3
    scale: Any = None
    offset: Any = 1.0

    def __post_init__(self):
        if isinstance(self.degree, bool) or not isinstance(self.degree, int) or self.degree < 1:
            raise ValueError(f"Polynomial: `degree` must be a positive int; got {self.degree!r}.")
        if self.scale is not None:
            check_positive("Polynomial", "scale", self.scale)
        check_real("Polynomial", "offset", self.offset)
        off = concrete_array(self.offset)
        if off is not None and not (off >= 0).all():
            raise ValueError(f"Polynomial: `offset` must be >= 0; got {off}.")

    def _scale(self, d):
        return 1.0 / d if self.scale is None else _positive(self.scale)

    def fn(self, t, d):
        """``psi(t) = (scale t + offset)^degree`` of the dot products ``t`` in dimension ``d``."""
        return (self._scale(d) * t + _nonnegative(self.offset)) ** self.degree

    def fn_grad(self, t, d):
        """``psi'(t)`` (elementwise, the shape of ``t``)."""
        c = self._scale(d)
        return self.degree * c * (c * t + _nonnegative(self.offset)) ** (self.degree - 1)

    def fn_hess(self, t, d):
        """``psi''(t)`` (elementwise, the shape of ``t``)."""
        if self.degree < 2:
            return jnp.zeros_like(t)
        c = self._scale(d)
        off = _nonnegative(self.offset)
        return self.degree * (self.degree - 1) * c * c * (c * t + off) ** (self.degree - 2)


@_pytree()
class Linear(DotProductKernel):
    """``k(x, y) = x . y``."""

    def fn(self, t, d):
        return t

    def fn_grad(self, t, d):
        return jnp.ones_like(t)

    def fn_hess(self, t, d):
        return jnp.zeros_like(t)

    def hess_block(self, x, y, e):
        return jnp.broadcast_to(jnp.sum(e, axis=0), x.shape).astype(jnp.result_type(x, e))
