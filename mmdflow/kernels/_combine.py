"""Kernel combinators: ``Sum`` (``k1 + k2``), ``Scaled`` (``c * k``) and the internal ``_Squared``."""

from __future__ import annotations

from typing import Any

from mmdflow._checks import check_positive
from mmdflow.kernels._base import Kernel, _positive, _pytree


@_pytree(data=("kernels",))
class Sum(Kernel):
    """Sum of kernels; also written ``k1 + k2``."""

    kernels: tuple = ()

    def __post_init__(self):
        ks = self.kernels
        if isinstance(ks, list | tuple):
            if len(ks) == 0:
                raise ValueError("Sum: `kernels` is empty.")
            bad = [type(k).__name__ for k in ks if not isinstance(k, Kernel)]
            if bad:
                raise ValueError(f"Sum: every entry of `kernels` must be a Kernel; got {bad}.")
            object.__setattr__(self, "kernels", tuple(ks))

    @property
    def translation_invariant(self):  # type: ignore[override]
        return all(k.translation_invariant for k in self.kernels)

    def __call__(self, x, y):
        return sum(k(x, y) for k in self.kernels)

    def gram_block(self, x, y):
        return sum(k.gram_block(x, y) for k in self.kernels)

    def grad_block(self, x, y, w):
        return sum(k.grad_block(x, y, w) for k in self.kernels)

    def value_grad_block(self, x, y, w):
        return sum(k.value_grad_block(x, y, w) for k in self.kernels)

    def hess_block(self, x, y, e):
        return sum(k.hess_block(x, y, e) for k in self.kernels)


@_pytree(data=("kernel", "scale"))
class Scaled(Kernel):
    """``scale * kernel(x, y)`` with ``scale > 0``; also written ``c * k``."""

    kernel: Any = None
    scale: Any = 1.0

    def __post_init__(self):
        if not isinstance(self.kernel, Kernel):
            raise ValueError(
                f"Scaled: `kernel` must be a Kernel (Scaled(kernel, scale), or write "
                f"scale * kernel); got {type(self.kernel).__name__} {self.kernel!r}."
            )
        check_positive("Scaled", "scale", self.scale)

    @property
    def translation_invariant(self):  # type: ignore[override]
        return self.kernel.translation_invariant

    def __call__(self, x, y):
        return _positive(self.scale) * self.kernel(x, y)

    def gram_block(self, x, y):
        return _positive(self.scale) * self.kernel.gram_block(x, y)

    def grad_block(self, x, y, w):
        return _positive(self.scale) * self.kernel.grad_block(x, y, w)

    def value_grad_block(self, x, y, w):
        return _positive(self.scale) * self.kernel.value_grad_block(x, y, w)

    def hess_block(self, x, y, e):
        return _positive(self.scale) * self.kernel.hess_block(x, y, e)


@_pytree(data=("kernel",))
class _Squared(Kernel):
    """``k(x, y)^2`` (internal: sums of squared kernel values for variance estimates)."""

    kernel: Any = None

    @property
    def translation_invariant(self):  # type: ignore[override]
        return self.kernel.translation_invariant

    def __call__(self, x, y):
        return self.kernel(x, y) ** 2

    def gram_block(self, x, y):
        return self.kernel.gram_block(x, y) ** 2
