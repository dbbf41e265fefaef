"""Radial kernels ``k(x, y) = phi(|x - y|^2)`` with closed-form ``phi'`` and ``phi''``."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from mmdflow._checks import check_positive, check_real, concrete_array
from mmdflow.kernels._base import (
    RadialKernel,
    _negative,
    _nonnegative,
    _positive,
    _pytree,
    _safe_sqrt,
)


@_pytree(data=("bandwidth",))
class Gaussian(RadialKernel):
    """``exp(-|x - y|^2 / (2 bandwidth^2))``.

    Args:
      bandwidth: positive scalar (a traced leaf).
    """

    bandwidth: Any = 1.0

    def __post_init__(self):
        check_positive("Gaussian", "bandwidth", self.bandwidth)

    def _c(self):
        return 1.0 / (2.0 * _positive(self.bandwidth) ** 2)

    def profile(self, s):
        """``phi(s) = exp(-s / (2 bandwidth^2))``.

        Args:
          s: squared distances, any shape.

        Returns:
          Kernel values, the shape of ``s``.
        """
        return jnp.exp(-s * self._c())

    def profile_grad(self, s):
        """``phi'(s)`` (elementwise, the shape of ``s``)."""
        c = self._c()
        return -c * jnp.exp(-s * c)

    def profile_hess(self, s):
        """``phi''(s)`` (elementwise, the shape of ``s``)."""
        c = self._c()
        return c * c * jnp.exp(-s * c)

    def profile_ratios(self):
        """``(phi' / phi, phi'' / phi) = (-c, c^2)``, ``c = 1 / (2 bandwidth^2)``."""
        c = self._c()
        return -c, c * c


@_pytree(data=("bandwidths", "weights"))
class MixtureRBF(RadialKernel):
    """``sum_l weights_l exp(-|x - y|^2 / (2 bandwidths_l^2))`` (MMD-GAN's mixture).

    Args:
      bandwidths: ``[L]`` positive bandwidths.
      weights: ``[L]`` non-negative weights, default all ones.
    """

    bandwidths: Any = (1.0,)
    weights: Any = None

    def __post_init__(self):
        check_positive("MixtureRBF", "bandwidths", self.bandwidths)
        bw = concrete_array(self.bandwidths)
        if bw is not None and bw.ndim != 1:
            raise ValueError(f"MixtureRBF: `bandwidths` must be 1-D; got shape {bw.shape}.")
        if self.weights is not None:
            check_real("MixtureRBF", "weights", self.weights)
        w = concrete_array(self.weights)
        if w is not None:
            if bw is not None and w.shape != bw.shape:
                raise ValueError(
                    f"MixtureRBF: `weights` shape {w.shape} must match `bandwidths` shape {bw.shape}."
                )
            if not (w >= 0).all():
                raise ValueError(f"MixtureRBF: `weights` must be >= 0; got {w.tolist()}.")

    def _sum_terms(self, s, power):
        """``sum_l weights_l c_l^power exp(-c_l s)`` with ``c_l = 1 / (2 bandwidths_l^2)``.

        Unrolled over the (static) number of bandwidths: an ``[..., L]`` intermediate with a
        reduction over ``L`` is several times slower on XLA:CPU.
        """
        bws = _positive(jnp.asarray(self.bandwidths))
        ws = None if self.weights is None else _nonnegative(jnp.asarray(self.weights))
        out = None
        for i in range(bws.shape[0]):
            c = 1.0 / (2.0 * bws[i] ** 2)
            t = jnp.exp(-s * c)
            if power:
                t = c**power * t
            if ws is not None:
                t = ws[i] * t
            out = t if out is None else out + t
        return jnp.zeros_like(s) if out is None else out

    def profile(self, s):
        return self._sum_terms(s, 0)

    def profile_grad(self, s):
        return -self._sum_terms(s, 1)

    def profile_hess(self, s):
        return self._sum_terms(s, 2)


@_pytree(data=("scale", "beta"))
class IMQ(RadialKernel):
    """Inverse multiquadric ``(1 + |x - y|^2 / scale^2)^beta`` with ``beta < 0``."""

    scale: Any = 1.0
    beta: Any = -0.5

    def __post_init__(self):
        check_positive("IMQ", "scale", self.scale)
        check_real("IMQ", "beta", self.beta)
        b = concrete_array(self.beta)
        if b is not None and not (b < 0).all():
            raise ValueError(f"IMQ: `beta` must be < 0 for a positive-definite kernel; got {b}.")

    def _cb(self):
        return 1.0 / _positive(self.scale) ** 2, _negative(self.beta)

    def profile(self, s):
        """``phi(s) = (1 + s / scale^2)^beta``, elementwise in the squared distances ``s``."""
        c, beta = self._cb()
        return (1.0 + s * c) ** beta

    def profile_grad(self, s):
        """``phi'(s)`` (elementwise, the shape of ``s``)."""
        c, beta = self._cb()
        return beta * c * (1.0 + s * c) ** (beta - 1.0)

    def profile_hess(self, s):
        """``phi''(s)`` (elementwise, the shape of ``s``)."""
        c, beta = self._cb()
        return beta * (beta - 1.0) * c * c * (1.0 + s * c) ** (beta - 2.0)


@_pytree(data=("bandwidth",))
class Laplace(RadialKernel):
    """``exp(-|x - y| / bandwidth)``. Gradient at ``x = y`` is taken as 0 (symmetric subgradient)."""

    bandwidth: Any = 1.0
    closed_form_grad = False  # cusp at s = 0 (see RadialKernel.closed_form_grad)

    def __post_init__(self):
        check_positive("Laplace", "bandwidth", self.bandwidth)

    def profile(self, s):
        """``phi(s) = exp(-sqrt(s) / bandwidth)``, elementwise in the squared distances ``s``."""
        return jnp.exp(-_safe_sqrt(s) / _positive(self.bandwidth))

    def profile_grad(self, s):
        """``phi'(s)`` (elementwise, the shape of ``s``); 0 at ``s = 0``."""
        b = _positive(self.bandwidth)
        r = _safe_sqrt(s)
        zero = s == 0
        r_safe = jnp.where(zero, jnp.ones_like(r), r)
        g = -jnp.exp(-r / b) / (2.0 * b * r_safe)
        return jnp.where(zero, jnp.zeros_like(g), g)

    def profile_hess(self, s):
        """``phi''(s)`` (elementwise, the shape of ``s``); 0 at ``s = 0``."""
        # exp(-r / b) (r + b) / (4 b^2 r^3) with r = sqrt(s); 0 at s = 0 (like profile_grad)
        b = _positive(self.bandwidth)
        zero = s == 0
        r = jnp.sqrt(jnp.where(zero, jnp.ones_like(s), s))
        h = jnp.exp(-r / b) * (r + b) / (4.0 * b * b * r * r * r)
        return jnp.where(zero, jnp.zeros_like(h), h)


@_pytree(data=("bandwidth", "alpha"))
class RationalQuadratic(RadialKernel):
    """``(1 + |x - y|^2 / (2 alpha bandwidth^2))^(-alpha)``; -> Gaussian as alpha -> inf."""

    bandwidth: Any = 1.0
    alpha: Any = 1.0

    def __post_init__(self):
        check_positive("RationalQuadratic", "bandwidth", self.bandwidth)
        check_positive("RationalQuadratic", "alpha", self.alpha)

    def _ca(self):
        a = _positive(self.alpha)
        return 1.0 / (2.0 * a * _positive(self.bandwidth) ** 2), a

    def profile(self, s):
        """``phi(s) = (1 + s / (2 alpha bandwidth^2))^-alpha``, elementwise in ``s``."""
        c, a = self._ca()
        return (1.0 + s * c) ** (-a)

    def profile_grad(self, s):
        """``phi'(s)`` (elementwise, the shape of ``s``)."""
        c, a = self._ca()
        return -a * c * (1.0 + s * c) ** (-a - 1.0)

    def profile_hess(self, s):
        """``phi''(s)`` (elementwise, the shape of ``s``)."""
        c, a = self._ca()
        return a * (a + 1.0) * c * c * (1.0 + s * c) ** (-a - 2.0)


@_pytree()
class Energy(RadialKernel):
    """Distance kernel ``k(x, y) = -|x - y|``.

    Conditionally positive definite: with equal total masses, MMD^2 under this
    kernel is the energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|``. The gradient
    at ``x = y`` is 0 (no NaN).
    """

    closed_form_grad = False  # cusp at s = 0 (see RadialKernel.closed_form_grad)

    def profile(self, s):
        return -_safe_sqrt(s)

    def profile_grad(self, s):
        zero = s == 0
        r_safe = jnp.where(zero, jnp.ones_like(s), _safe_sqrt(s))
        g = -0.5 / r_safe
        return jnp.where(zero, jnp.zeros_like(g), g)

    def profile_hess(self, s):
        zero = s == 0
        r_safe = jnp.sqrt(jnp.where(zero, jnp.ones_like(s), s))
        h = 0.25 / (r_safe * r_safe * r_safe)
        return jnp.where(zero, jnp.zeros_like(h), h)
