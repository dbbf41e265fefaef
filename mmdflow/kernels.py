"""Point-wise kernels ``k(x, y)`` on ``[d]`` vectors, as registered pytrees.

Every kernel is a frozen dataclass registered with JAX: numeric
hyperparameters (bandwidths, scales, exponents) are traced *leaves*, so a new
value never triggers a recompile, while structural choices (a polynomial's
degree) are static metadata.

Besides the point-wise ``__call__``, kernels expose two *block* methods used by
:mod:`mmdflow.ops` on tiles of points:

* ``gram_block(x, y)`` -> ``[n, m]`` kernel values;
* ``grad_block(x, y, w)`` -> ``[n, k, d]``, ``sum_j w[j, :] grad_x k(x_i, y_j)``
  for weights ``w [m, k]``;
* ``hess_block(x, y, e)`` -> ``[n, d]``, ``sum_j H(x_i, y_j) e_j`` with the
  cross-Hessian ``H[a, b] = d^2 k / dx_a dy_b`` for vectors ``e [m, d]``.

The base class derives them from ``__call__`` with ``vmap``/``jacfwd``, so any
subclass that only implements ``__call__`` works everywhere; radial and
dot-product kernels override them with closed forms (one distance computation
per pair, GEMMs at ``HIGHEST`` precision for large ``d``, no ``[n, m, d]``
intermediates).

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
# Radial ``hess_block`` uses direct per-coordinate differences for the ``r (r . e)`` term up
# to this dimension, the centred GEMM form above it (the direct form's d reductions over
# ``[n, m]`` tiles get 2-5x slower than the GEMMs from d = 4 on XLA:CPU).
HESS_DIRECT_MAX_D = 3


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
    """``k(x, y) = phi(|x - y|^2)``; subclasses define ``profile`` and ``profile_grad``.

    ``profile_hess`` (``phi''``, used by :meth:`hess_block`) defaults to forward-mode
    autodiff of ``profile_grad``; the built-in kernels give it in closed form.
    """

    translation_invariant = True

    def profile(self, s: jax.Array) -> jax.Array:
        """``phi(s)`` of the squared distance ``s``."""
        raise NotImplementedError

    def profile_grad(self, s: jax.Array) -> jax.Array:
        """``phi'(s)``, finite at ``s = 0`` (zero for kernels with a cusp there)."""
        raise NotImplementedError

    def profile_hess(self, s: jax.Array) -> jax.Array:
        """``phi''(s)``, finite at ``s = 0`` (zero for kernels with a cusp there).

        Default: the element-wise derivative of ``profile_grad`` (one ``jvp``), so a
        subclass defining only ``profile`` and ``profile_grad`` still gets :meth:`hess_block`.
        """
        return jax.jvp(self.profile_grad, (s,), (jnp.ones_like(s),))[1]

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

    def hess_block(self, x, y, e):
        """``sum_j [-2 phi'(s_ij) e_j - 4 phi''(s_ij) r_ij (r_ij . e_j)]`` with ``r_ij = x_i - y_j``.

        At coincident points ``r = 0`` the result is ``-2 phi'(0) e_j``: zero for kernels
        with a cusp there (``Laplace``, ``Energy``), as the autodiff form gives (their true
        cross-Hessian grows like ``1 / |r|`` as ``r -> 0``). Up to ``HESS_DIRECT_MAX_D``
        dimensions the ``r (r . e)`` term uses direct differences; above, GEMMs at ``HIGHEST``
        precision on points centred at the tile's ``y`` mean.
        """
        d = x.shape[-1]
        if d <= HESS_DIRECT_MAX_D:
            # [n, m] per-coordinate differences, no [n, m, d] intermediate
            diffs = [x[:, a, None] - y[None, :, a] for a in range(d)]
            s = diffs[0] * diffs[0]
            re = diffs[0] * e[None, :, 0]
            for a in range(1, d):
                s = s + diffs[a] * diffs[a]
                re = re + diffs[a] * e[None, :, a]
            q = self.profile_hess(s) * re  # phi''(s_ij) (r_ij . e_j)
            g1e = jnp.matmul(self.profile_grad(s), e, precision=HIGHEST)
            qr = jnp.stack([jnp.sum(q * da, axis=1) for da in diffs], axis=-1)
            return -2.0 * g1e - 4.0 * qr
        # GEMM form on centred points (k is translation invariant; the centre carries no
        # gradient): sum_j q_ij (x_i - y_j) = x_i sum_j q_ij - sum_j q_ij y_j
        c = jax.lax.stop_gradient(jnp.mean(y, axis=0, keepdims=True))
        x, y = x - c, y - c
        s = sqdist(x, y)
        xe = jnp.matmul(x, e.T, precision=HIGHEST)  # [n, m] x_i . e_j
        q = self.profile_hess(s) * (xe - jnp.sum(y * e, axis=-1)[None, :])
        g1e = jnp.matmul(self.profile_grad(s), e, precision=HIGHEST)
        qy = jnp.matmul(q, y, precision=HIGHEST)
        return -2.0 * g1e - 4.0 * (jnp.sum(q, axis=1, keepdims=True) * x - qy)


class DotProductKernel(Kernel):
    """``k(x, y) = psi(x . y)``; subclasses define ``fn`` and ``fn_grad`` (``fn_hess`` optional)."""

    def fn(self, t, d: int):
        raise NotImplementedError

    def fn_grad(self, t, d: int):
        raise NotImplementedError

    def fn_hess(self, t, d: int):
        """``psi''(t)``; default: the element-wise derivative of ``fn_grad`` (one ``jvp``)."""
        return jax.jvp(lambda u: self.fn_grad(u, d), (t,), (jnp.ones_like(t),))[1]

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

    def hess_block(self, x, y, e):
        """``sum_j [psi'(t_ij) e_j + psi''(t_ij) (x_i . e_j) y_j]`` with ``t_ij = x_i . y_j``."""
        d = x.shape[-1]
        t = jnp.matmul(x, y.T, precision=HIGHEST)
        xe = jnp.matmul(x, e.T, precision=HIGHEST)
        g1e = jnp.matmul(self.fn_grad(t, d), e, precision=HIGHEST)
        return g1e + jnp.matmul(self.fn_hess(t, d) * xe, y, precision=HIGHEST)


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

    def profile_hess(self, s):
        c = 1.0 / (2.0 * self.bandwidth**2)
        return c * c * jnp.exp(-s * c)


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

    def _sum_terms(self, s, power):
        """``sum_l weights_l c_l^power exp(-c_l s)`` with ``c_l = 1 / (2 bandwidths_l^2)``.

        Unrolled over the (static) number of bandwidths: an ``[..., L]`` intermediate with a
        reduction over ``L`` is several times slower on XLA:CPU.
        """
        bws = jnp.asarray(self.bandwidths)
        ws = None if self.weights is None else jnp.asarray(self.weights)
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
        b = concrete_array(self.beta)
        if b is not None and not (b < 0).all():
            raise ValueError(f"IMQ: `beta` must be < 0 for a positive-definite kernel; got {b}.")

    def profile(self, s):
        return (1.0 + s / self.scale**2) ** self.beta

    def profile_grad(self, s):
        c = 1.0 / self.scale**2
        return self.beta * c * (1.0 + s * c) ** (self.beta - 1.0)

    def profile_hess(self, s):
        c = 1.0 / self.scale**2
        return self.beta * (self.beta - 1.0) * c * c * (1.0 + s * c) ** (self.beta - 2.0)


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

    def profile_hess(self, s):
        # exp(-r / b) (r + b) / (4 b^2 r^3) with r = sqrt(s); 0 at s = 0 (like profile_grad)
        b = self.bandwidth
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

    def profile(self, s):
        return (1.0 + s / (2.0 * self.alpha * self.bandwidth**2)) ** (-self.alpha)

    def profile_grad(self, s):
        c = 1.0 / (2.0 * self.alpha * self.bandwidth**2)
        return -self.alpha * c * (1.0 + s * c) ** (-self.alpha - 1.0)

    def profile_hess(self, s):
        c = 1.0 / (2.0 * self.alpha * self.bandwidth**2)
        return self.alpha * (self.alpha + 1.0) * c * c * (1.0 + s * c) ** (-self.alpha - 2.0)


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

    def profile_hess(self, s):
        zero = s == 0
        r_safe = jnp.sqrt(jnp.where(zero, jnp.ones_like(s), s))
        h = 0.25 / (r_safe * r_safe * r_safe)
        return jnp.where(zero, jnp.zeros_like(h), h)


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

    def fn_hess(self, t, d):
        if self.degree < 2:
            return jnp.zeros_like(t)
        c = self._scale(d)
        return self.degree * (self.degree - 1) * c * c * (c * t + self.offset) ** (self.degree - 2)


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

    def hess_block(self, x, y, e):
        return sum(k.hess_block(x, y, e) for k in self.kernels)


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

    def hess_block(self, x, y, e):
        return self.scale * self.kernel.hess_block(x, y, e)


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
