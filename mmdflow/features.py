"""Random Fourier features of shift-invariant kernels, with closed-form Jacobians.

``phi(x) = sqrt(2/m) cos(W x + b)`` with ``b ~ U[0, 2 pi)`` and rows of ``W``
drawn from the kernel's spectral density, so that ``phi(x) . phi(y) ~ k(x, y)``.
The spectral draws are stored *standardised* (``Z``) and scaled by the kernel's
current hyperparameters at use, so bandwidths stay traced (and differentiable).

Supported: :class:`~mmdflow.kernels.Gaussian` (``W = Z / bandwidth``, Z normal),
:class:`~mmdflow.kernels.Laplace` (multivariate Cauchy rows ``Z / (|g| bandwidth)``,
``g`` a standard normal per row), :class:`~mmdflow.kernels.MixtureRBF`
(per-feature component drawn by weight), :class:`~mmdflow.kernels.RationalQuadratic`
(gamma scale mixture of Gaussians) and ``Scaled`` versions of these.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from mmdflow import features, kernels
  >>> k = kernels.Gaussian(1.0)
  >>> rff = features.RFF.create(k, jax.random.key(0), num_features=4096, d=2)
  >>> x = jnp.zeros((1, 2)); y = jnp.ones((1, 2))
  >>> bool(abs(float((rff(x) @ rff(y).T)[0, 0]) - float(k(x[0], y[0]))) < 0.05)
  True
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from mmdflow import kernels as K
from mmdflow.kernels import HIGHEST, _pytree
from mmdflow.kernels._base import _nonnegative, _positive

__all__ = ["RFF", "rff_kernel"]


@_pytree(data=("z", "scale", "b", "amp"))
class RFF:
    """Random Fourier features ``phi: [n, d] -> [n, m]`` of a shift-invariant kernel.

    Attributes:
      z: ``[m, d]`` standardised spectral draws.
      scale: ``[m]`` per-feature inverse length scale (``W = z * scale[:, None]``).
      b: ``[m]`` phases in ``[0, 2 pi)``.
      amp: scalar amplitude (``sqrt(kernel scale)``).
    """

    z: jax.Array
    scale: jax.Array
    b: jax.Array
    amp: Any = 1.0

    @staticmethod
    def create(
        kernel: K.Kernel, key: jax.Array, num_features: int, d: int, dtype=jnp.float32
    ) -> RFF:
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"`num_features` must be a positive int; got {num_features!r}.")
        kz, kb, ks = jax.random.split(key, 3)
        z = jax.random.normal(kz, (num_features, d), dtype)
        b = jax.random.uniform(kb, (num_features,), dtype, 0.0, 2 * math.pi)
        scale, amp = _spectral_scale(kernel, ks, num_features, dtype)
        return RFF(z=z, scale=scale, b=b, amp=amp)

    @property
    def num_features(self) -> int:
        return self.z.shape[0]

    @property
    def w(self) -> jax.Array:
        return self.z * self.scale[:, None]

    def _arg(self, x):
        return jnp.matmul(x, self.w.T, precision=HIGHEST) + self.b[None, :]

    def __call__(self, x: jax.Array) -> jax.Array:
        """Features ``[n, m]``."""
        return self.amp * math.sqrt(2.0 / self.num_features) * jnp.cos(self._arg(x))

    def sin(self, x: jax.Array) -> jax.Array:
        """``-d phi_k / d(arg)`` up to the amplitude: ``amp sqrt(2/m) sin(W x + b)``, ``[n, m]``.

        The Jacobian is ``J phi(x) = -diag(sin_features(x)) W``.
        """
        return self.amp * math.sqrt(2.0 / self.num_features) * jnp.sin(self._arg(x))


def _spectral_scale(kernel, key, m, dtype):
    """Per-feature inverse length scales and amplitude for ``kernel``'s spectral density."""
    if isinstance(kernel, K.Scaled):
        scale, amp = _spectral_scale(kernel.kernel, key, m, dtype)
        return scale, amp * jnp.sqrt(_positive(kernel.scale))
    if isinstance(kernel, K.Gaussian):
        return jnp.ones((m,), dtype) / _positive(kernel.bandwidth), 1.0
    if isinstance(kernel, K.Laplace):
        # multivariate Cauchy: normal / |normal| (shared per row), scaled by 1/bandwidth
        g = jnp.abs(jax.random.normal(key, (m,), dtype))
        return 1.0 / (g * _positive(kernel.bandwidth)), 1.0
    if isinstance(kernel, K.RationalQuadratic):
        # (1 + s/(2 a l^2))^-a = E_tau exp(-tau s / 2), tau ~ Gamma(a, rate a l^2)
        a = _positive(jnp.asarray(kernel.alpha, dtype))
        tau = jax.random.gamma(key, a * jnp.ones((m,), dtype)) / (
            a * _positive(kernel.bandwidth) ** 2
        )
        return jnp.sqrt(tau), 1.0
    if isinstance(kernel, K.MixtureRBF):
        bw = _positive(jnp.asarray(kernel.bandwidths, dtype))
        w = jnp.ones_like(bw) if kernel.weights is None else jnp.asarray(kernel.weights, dtype)
        w = _nonnegative(w)
        total = jnp.sum(w)
        comp = jax.random.categorical(key, jnp.log(w / total), shape=(m,))
        return 1.0 / bw[comp], jnp.sqrt(total)
    raise ValueError(
        f"random Fourier features need a shift-invariant kernel with a known spectral density "
        f"(Gaussian, Laplace, RationalQuadratic, MixtureRBF, or Scaled of these); got "
        f"{type(kernel).__name__}. Use num_features=None for the exact kernel."
    )


def _rff_features(rff: RFF, x: jax.Array) -> jax.Array:
    return rff(x)


def rff_kernel(rff: RFF) -> K.FeatureKernel:
    """The finite-rank kernel ``k(x, y) = phi(x) . phi(y)`` of an :class:`RFF` map.

    A :class:`mmdflow.kernels.FeatureKernel` with the linear base kernel; useful to check
    feature-space computations against sample-space ones exactly.
    """
    return K.FeatureKernel(K.Linear(), _rff_features, rff)
