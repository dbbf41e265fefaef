"""Point-wise kernels ``k(x, y)`` on ``[d]`` vectors, as registered pytrees.

Every kernel is a frozen dataclass registered with JAX: numeric
hyperparameters (bandwidths, scales, exponents) are traced *leaves*, so a new
value never triggers a recompile, while structural choices (a polynomial's
degree) are static metadata.

Besides the point-wise ``__call__``, kernels expose two *block* methods used by
:mod:`mmdflow.ops` on tiles of points:

* ``gram_block(x, y)`` -> ``[n, m]`` kernel values;
* ``grad_block(x, y, w)`` -> ``[n, k, d]``, ``sum_j w[j, :] grad_x k(x_i, y_j)``
  for weights ``w [m, k]``.

The base class derives both from ``__call__`` with ``vmap``/``jacfwd``, so any
subclass that only implements ``__call__`` works everywhere; radial and
dot-product kernels override them with closed forms (one distance computation
per pair, GEMMs at ``HIGHEST`` precision for large ``d``).

Example:
  >>> import jax.numpy as jnp
  >>> from mmdflow import kernels
  >>> k = kernels.Gaussian(bandwidth=1.0)
  >>> float(k(jnp.zeros(2), jnp.ones(2)))  # exp(-2 / 2)
  0.36787...
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from mmdflow._checks import check_points, check_positive, concrete_array

__all__ = [
    "Kernel",
    "RadialKernel",
    "DotProductKernel",
    "Gaussian",
    "MixtureRBF",
    "IMQ",
    "Laplace",
    "RationalQuadratic",
    "Energy",
    "Polynomial",
    "Linear",
    "Sum",
    "Scaled",
    "median_bandwidth",
    "sqdist",
]

HIGHEST = jax.lax.Precision.HIGHEST
# Up to this dimension squared distances are formed from direct differences
# (exact: zero at coincident points, no cancellation); above it from the GEMM
# form |x|^2 + |y|^2 - 2 x.y at full fp32 precision (never TF32).
DIRECT_MAX_D = 8


def _pytree(data: tuple[str, ...] = (), meta: tuple[str, ...] = ()):
    def wrap(cls):
        cls = dataclasses.dataclass(frozen=True, eq=False)(cls)
        return jax.tree_util.register_dataclass(cls, data_fields=list(data), meta_fields=list(meta))

    return wrap


def sqdist(x: jax.Array, y: jax.Array) -> jax.Array:
    """Squared Euclidean distances ``[n, m]`` between rows of ``x [n,d]`` and ``y [m,d]``.

    Direct differences for ``d <= DIRECT_MAX_D``; otherwise the GEMM form with
    ``precision=HIGHEST`` clamped at zero. Callers that can (translation-invariant
    kernels) should centre both sets first to limit cancellation.
    """
    if x.shape[-1] <= DIRECT_MAX_D:
        # one 2-D [n, m] difference per coordinate (fuses far better than [n, m, d])
        s = None
        for a in range(x.shape[-1]):
            da = x[:, a, None] - y[None, :, a]
            s = da * da if s is None else s + da * da
        return s
    xx = jnp.sum(x * x, axis=-1)
    yy = jnp.sum(y * y, axis=-1)
    xy = jnp.matmul(x, y.T, precision=HIGHEST)
    return jnp.maximum(xx[:, None] + yy[None, :] - 2.0 * xy, 0.0)


def _safe_sqrt(s):
    """sqrt with a zero (not NaN/inf) derivative at 0; NaN inputs stay NaN."""
    zero = s == 0
    r = jnp.sqrt(jnp.where(zero, jnp.ones_like(s), s))
    return jnp.where(zero, jnp.zeros_like(s), r)


class Kernel:
    """Base class: a point-wise kernel ``k(x, y)`` on ``[d]`` vectors."""

    #: True when k(x + c, y + c) == k(x, y); lets ops centre the data.
    translation_invariant: bool = False

    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        raise NotImplementedError

    # -- block methods used by mmdflow.ops ---------------------------------
    def gram_block(self, x: jax.Array, y: jax.Array) -> jax.Array:
        """Kernel values ``[n, m]`` for ``x [n, d]``, ``y [m, d]``."""
        return jax.vmap(lambda xi: jax.vmap(lambda yj: self(xi, yj))(y))(x)

    def grad_block(self, x: jax.Array, y: jax.Array, w: jax.Array) -> jax.Array:
        """``out[i, c, :] = sum_j w[j, c] grad_x k(x_i, y_j)`` -> ``[n, k, d]``."""

        def row(xi):
            f = lambda xv: jnp.matmul(jax.vmap(lambda yj: self(xv, yj))(y), w, precision=HIGHEST)
            return jax.jacfwd(f)(xi)

        return jax.vmap(row)(x)

    def hess_block(self, x: jax.Array, y: jax.Array, e: jax.Array) -> jax.Array:
        """``out[i] = sum_j H(x_i, y_j) e_j`` with ``H[a, b] = d^2 k / dx_a dy_b`` -> ``[n, d]``."""

        def row(xi):
            # d/dx of sum_j <grad_y k(x, y_j), e_j>, as a jvp in y then a grad in x
            f = lambda xv: jnp.sum(
                jax.vmap(lambda yj, ej: jax.jvp(lambda yv: self(xv, yv), (yj,), (ej,))[1])(y, e)
            )
            return jax.grad(f)(xi)

        return jax.vmap(row)(x)

    def diag(self, x: jax.Array) -> jax.Array:
        """``k(x_i, x_i)`` for ``x [n, d]`` -> ``[n]``."""
        return jax.vmap(lambda xi: self(xi, xi))(x)

    # -- combinators --------------------------------------------------------
    def __add__(self, other: Kernel) -> Sum:
        if not isinstance(other, Kernel):
            return NotImplemented
        return Sum((self, other))

    def __mul__(self, c) -> Scaled:
        if isinstance(c, Kernel):
            return NotImplemented
        return Scaled(self, c)

    __rmul__ = __mul__


class RadialKernel(Kernel):
    """``k(x, y) = phi(|x - y|^2)``; subclasses define ``profile`` and ``profile_grad``."""

    translation_invariant = True

    def profile(self, s: jax.Array) -> jax.Array:
        """``phi(s)`` of the squared distance ``s``."""
        raise NotImplementedError

    def profile_grad(self, s: jax.Array) -> jax.Array:
        """``phi'(s)``, finite at ``s = 0`` (zero for kernels with a cusp there)."""
        raise NotImplementedError

    def __call__(self, x, y):
        diff = x - y
        return self.profile(jnp.sum(diff * diff, axis=-1))

    def gram_block(self, x, y):
        return self.profile(sqdist(x, y))

    def grad_block(self, x, y, w):
        g = self.profile_grad(sqdist(x, y))  # [n, m]
        n, d = x.shape
        m, k = w.shape
        if d <= DIRECT_MAX_D:
            cols = []
            for a in range(d):
                da = x[:, a, None] - y[None, :, a]  # [n, m]
                cols.append(jnp.matmul(g * da, w, precision=HIGHEST))  # [n, k]
            return 2.0 * jnp.stack(cols, axis=-1)
        gw = jnp.matmul(g, w, precision=HIGHEST)  # [n, k]
        wy = (w[:, :, None] * y[:, None, :]).reshape(m, k * d)
        gwy = jnp.matmul(g, wy, precision=HIGHEST).reshape(n, k, d)
        return 2.0 * (gw[:, :, None] * x[:, None, :] - gwy)


class DotProductKernel(Kernel):
    """``k(x, y) = psi(x . y)``; subclasses define ``fn`` and ``fn_grad``."""

    def fn(self, t, d: int):
        raise NotImplementedError

    def fn_grad(self, t, d: int):
        raise NotImplementedError

    def __call__(self, x, y):
        return self.fn(jnp.dot(x, y, precision=HIGHEST), x.shape[-1])

    def gram_block(self, x, y):
        return self.fn(jnp.matmul(x, y.T, precision=HIGHEST), x.shape[-1])

    def grad_block(self, x, y, w):
        g = self.fn_grad(jnp.matmul(x, y.T, precision=HIGHEST), x.shape[-1])  # [n, m]
        n, d = x.shape
        m, k = w.shape
        wy = (w[:, :, None] * y[:, None, :]).reshape(m, k * d)
        return jnp.matmul(g, wy, precision=HIGHEST).reshape(n, k, d)


def _bcast(p, s):
    """Reshapes a ``[L]`` parameter to broadcast against ``s[..., None]`` (rank-strict)."""
    p = jnp.asarray(p)
    return p.reshape((1,) * s.ndim + p.shape)


@_pytree(data=("bandwidth",))
class Gaussian(RadialKernel):
    """``exp(-|x - y|^2 / (2 bandwidth^2))``.

    Args:
      bandwidth: positive scalar (a traced leaf).
    """

    bandwidth: Any = 1.0

    def __post_init__(self):
        check_positive("Gaussian", "bandwidth", self.bandwidth)

    def profile(self, s):
        return jnp.exp(-s / (2.0 * self.bandwidth**2))

    def profile_grad(self, s):
        c = 1.0 / (2.0 * self.bandwidth**2)
        return -c * jnp.exp(-s * c)


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
        w = concrete_array(self.weights)
        if w is not None:
            if bw is not None and w.shape != bw.shape:
                raise ValueError(
                    f"MixtureRBF: `weights` shape {w.shape} must match `bandwidths` shape {bw.shape}."
                )
            if not (w >= 0).all():
                raise ValueError(f"MixtureRBF: `weights` must be >= 0; got {w.tolist()}.")

    def _terms(self, s):
        c = 1.0 / (2.0 * _bcast(self.bandwidths, s) ** 2)
        w = 1.0 if self.weights is None else _bcast(self.weights, s)
        return c, w * jnp.exp(-s[..., None] * c)

    def profile(self, s):
        return jnp.sum(self._terms(s)[1], axis=-1)

    def profile_grad(self, s):
        c, t = self._terms(s)
        return -jnp.sum(c * t, axis=-1)


@_pytree(data=("scale", "beta"))
class IMQ(RadialKernel):
    """Inverse multiquadric ``(1 + |x - y|^2 / scale^2)^beta`` with ``beta < 0``."""

    scale: Any = 1.0
    beta: Any = -0.5

    def __post_init__(self):
        check_positive("IMQ", "scale", self.scale)
        b = concrete_array(self.beta)
        if b is not None and not (b < 0).all():
            raise ValueError(f"IMQ: `beta` must be < 0 for a positive-definite kernel; got {b}.")

    def profile(self, s):
        return (1.0 + s / self.scale**2) ** self.beta

    def profile_grad(self, s):
        c = 1.0 / self.scale**2
        return self.beta * c * (1.0 + s * c) ** (self.beta - 1.0)


@_pytree(data=("bandwidth",))
class Laplace(RadialKernel):
    """``exp(-|x - y| / bandwidth)``. Gradient at ``x = y`` is taken as 0 (symmetric subgradient)."""

    bandwidth: Any = 1.0

    def __post_init__(self):
        check_positive("Laplace", "bandwidth", self.bandwidth)

    def profile(self, s):
        return jnp.exp(-_safe_sqrt(s) / self.bandwidth)

    def profile_grad(self, s):
        r = _safe_sqrt(s)
        zero = s == 0
        r_safe = jnp.where(zero, jnp.ones_like(r), r)
        g = -jnp.exp(-r / self.bandwidth) / (2.0 * self.bandwidth * r_safe)
        return jnp.where(zero, jnp.zeros_like(g), g)


@_pytree(data=("bandwidth", "alpha"))
class RationalQuadratic(RadialKernel):
    """``(1 + |x - y|^2 / (2 alpha bandwidth^2))^(-alpha)``; -> Gaussian as alpha -> inf."""

    bandwidth: Any = 1.0
    alpha: Any = 1.0

    def __post_init__(self):
        check_positive("RationalQuadratic", "bandwidth", self.bandwidth)
        check_positive("RationalQuadratic", "alpha", self.alpha)

    def profile(self, s):
        return (1.0 + s / (2.0 * self.alpha * self.bandwidth**2)) ** (-self.alpha)

    def profile_grad(self, s):
        c = 1.0 / (2.0 * self.alpha * self.bandwidth**2)
        return -self.alpha * c * (1.0 + s * c) ** (-self.alpha - 1.0)


@_pytree()
class Energy(RadialKernel):
    """Distance kernel ``k(x, y) = -|x - y|``.

    Conditionally positive definite: with equal total masses, MMD^2 under this
    kernel is the energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|``. The gradient
    at ``x = y`` is 0 (no NaN).
    """

    def profile(self, s):
        return -_safe_sqrt(s)

    def profile_grad(self, s):
        zero = s == 0
        r_safe = jnp.where(zero, jnp.ones_like(s), _safe_sqrt(s))
        g = -0.5 / r_safe
        return jnp.where(zero, jnp.zeros_like(g), g)


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
        if not isinstance(self.degree, int) or self.degree < 1:
            raise ValueError(f"Polynomial: `degree` must be a positive int; got {self.degree!r}.")
        if self.scale is not None:
            check_positive("Polynomial", "scale", self.scale)
        off = concrete_array(self.offset)
        if off is not None and not (off >= 0).all():
            raise ValueError(f"Polynomial: `offset` must be >= 0; got {off}.")

    def _scale(self, d):
        return 1.0 / d if self.scale is None else self.scale

    def fn(self, t, d):
        return (self._scale(d) * t + self.offset) ** self.degree

    def fn_grad(self, t, d):
        c = self._scale(d)
        return self.degree * c * (c * t + self.offset) ** (self.degree - 1)


@_pytree()
class Linear(DotProductKernel):
    """``k(x, y) = x . y``."""

    def fn(self, t, d):
        return t

    def fn_grad(self, t, d):
        return jnp.ones_like(t)


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


@_pytree(data=("kernel", "scale"))
class Scaled(Kernel):
    """``scale * kernel(x, y)`` with ``scale > 0``; also written ``c * k``."""

    kernel: Any = None
    scale: Any = 1.0

    def __post_init__(self):
        check_positive("Scaled", "scale", self.scale)

    @property
    def translation_invariant(self):  # type: ignore[override]
        return self.kernel.translation_invariant

    def __call__(self, x, y):
        return self.scale * self.kernel(x, y)

    def gram_block(self, x, y):
        return self.scale * self.kernel.gram_block(x, y)

    def grad_block(self, x, y, w):
        return self.scale * self.kernel.grad_block(x, y, w)


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


def median_bandwidth(x: jax.Array, y: jax.Array | None = None, *, max_points: int = 2000):
    """Median heuristic: the median pairwise Euclidean distance of the pooled points.

    Pairs ``i < j`` of ``[x; y]`` are used (no zero self-distances). Above
    ``max_points`` pooled points an evenly spaced deterministic subsample is used.
    Jit-able; the result is a scalar to pass as ``Gaussian(bandwidth=...)``.

    Args:
      x: ``[n, d]`` points.
      y: optional ``[m, d]`` points pooled with ``x``.
      max_points: subsample size bound (static).

    Returns:
      Scalar median distance (NaN if any input is NaN).

    Example:
      >>> import jax.numpy as jnp
      >>> float(median_bandwidth(jnp.array([[0.0], [1.0], [3.0]])))
      2.0
    """
    x = check_points("x", x, min_n=1)
    if y is not None:
        y = check_points("y", y, d=x.shape[1])
        x = jnp.concatenate([x, y.astype(x.dtype)], axis=0)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"median_bandwidth needs at least 2 pooled points; got shape {x.shape}.")
    if n > max_points:
        idx = jnp.round(jnp.linspace(0, n - 1, max_points)).astype(jnp.int32)
        x = x[idx]
        n = max_points
    x = x - jnp.mean(x, axis=0, keepdims=True)
    s = sqdist(x, x)
    iu = jnp.triu_indices(n, k=1)
    return jnp.median(_safe_sqrt(s[iu]))
