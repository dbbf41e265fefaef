"""Unnormalized target densities: log-densities of a ``[d]`` point, and their scores.

The targets of the density flows (``"svgd"``, ``"ksd"`` in :data:`mmdflow.flows.FLOWS`)
are log-densities ``logp: [d] -> scalar`` known up to a constant: a plain function, or one
of the frozen dataclasses below (hashable by value, so a flow holding one as a
hyperparameter is a stable ``jit`` cache key). Each built-in density also draws exact
samples (``sample(key, n)``), for tests and for reference MMDs.

* :class:`Gaussian`: ``N(mean, cov)``.
* :class:`GaussianMixture`: isotropic Gaussian components (default: two modes in 2-D).
* :class:`Banana`: Haario, Saksman & Tamminen's (1999) twisted Gaussian.
* :class:`Funnel`: Neal's (2003) funnel.

:data:`DENSITIES` names a default instance of each (for the command line);
:func:`score` is ``grad log p`` at ``[n, d]`` points, with checks.

Example:
  >>> import jax.numpy as jnp
  >>> from mmdflow import densities
  >>> p = densities.Gaussian(mean=(1.0, 2.0), cov=((1.0, 0.0), (0.0, 1.0)))
  >>> densities.score(p, jnp.zeros((3, 2))).tolist()
  [[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]]
  >>> sorted(densities.DENSITIES)
  ['banana', 'funnel', 'gaussian', 'mixture']
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmdflow._checks import check_points, is_concrete

__all__ = [
    "Gaussian",
    "GaussianMixture",
    "Banana",
    "Funnel",
    "DENSITIES",
    "score",
    "check_logp",
]


def _tuple(owner: str, name: str, v, ndim: int) -> tuple:
    """``v`` as a nested tuple of floats with ``ndim`` dimensions (hashable), checked finite."""
    a = np.asarray(v, np.float64)
    if a.ndim != ndim or a.size == 0 or not np.all(np.isfinite(a)):
        raise ValueError(
            f"{owner}: `{name}` must be a finite, non-empty {ndim}-D array; got shape "
            f"{a.shape} ({v!r})."
        )
    return tuple(map(float, a)) if ndim == 1 else tuple(tuple(map(float, r)) for r in a)


def _check_dim(owner: str, x, d: int | None, min_d: int = 1) -> None:
    if x.ndim != 1 or (d is not None and x.shape[0] != d) or x.shape[0] < min_d:
        want = f"[{d}]" if d is not None else f"[d] with d >= {min_d}"
        raise ValueError(f"{owner}: the log-density takes a {want} point; got shape {x.shape}.")


@dataclasses.dataclass(frozen=True)
class Gaussian:
    """``N(mean, cov)``, normalised.

    Attributes:
      mean: ``[d]`` mean.
      cov: ``[d, d]`` symmetric positive-definite covariance.
    """

    mean: Any = (0.0, 0.0)
    cov: Any = ((1.0, 0.0), (0.0, 1.0))

    def __post_init__(self):
        m = _tuple("Gaussian", "mean", self.mean, 1)
        c = _tuple("Gaussian", "cov", self.cov, 2)
        a = np.asarray(c)
        if a.shape != (len(m), len(m)) or not np.allclose(a, a.T):
            raise ValueError(
                f"Gaussian: `cov` must be a symmetric [{len(m)}, {len(m)}] matrix like `mean`; "
                f"got shape {a.shape}."
            )
        if np.linalg.eigvalsh(a).min() <= 0:
            raise ValueError("Gaussian: `cov` must be positive definite.")
        object.__setattr__(self, "mean", m)
        object.__setattr__(self, "cov", c)

    @property
    def dim(self) -> int:
        return len(self.mean)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``log N(x; mean, cov)`` of a ``[d]`` point (a scalar)."""
        _check_dim("Gaussian", x, self.dim)
        m = jnp.asarray(self.mean, x.dtype)
        chol = jnp.asarray(np.linalg.cholesky(np.asarray(self.cov)), x.dtype)
        u = jax.scipy.linalg.solve_triangular(chol, x - m, lower=True)
        logdet = jnp.sum(jnp.log(jnp.diag(chol)))
        return -0.5 * jnp.dot(u, u) - logdet - 0.5 * self.dim * np.log(2 * np.pi)

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """``[n, d]`` exact samples."""
        chol = jnp.asarray(np.linalg.cholesky(np.asarray(self.cov)), jnp.float32)
        z = jax.random.normal(key, (n, self.dim))
        return jnp.asarray(self.mean, z.dtype)[None, :] + z @ chol.T


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    """``sum_k weights_k N(means_k, scales_k^2 I)``, normalised.

    Attributes:
      means: ``[K, d]`` component means (default: two modes at ``(+-2, 0)``).
      scales: ``[K]`` component standard deviations ``> 0``.
      weights: ``[K]`` mixture weights ``> 0`` (normalised here; default uniform).
    """

    means: Any = ((-2.0, 0.0), (2.0, 0.0))
    scales: Any = (1.0, 1.0)
    weights: Any = None

    def __post_init__(self):
        own = "GaussianMixture"
        m = _tuple(own, "means", self.means, 2)
        s = _tuple(own, "scales", self.scales, 1)
        w = (1.0,) * len(m) if self.weights is None else _tuple(own, "weights", self.weights, 1)
        if len(s) != len(m) or len(w) != len(m):
            raise ValueError(
                f"{own}: `scales` ({len(s)}) and `weights` ({len(w)}) need one entry per "
                f"component of `means` ({len(m)})."
            )
        if min(s) <= 0 or min(w) <= 0:
            raise ValueError(f"{own}: `scales` and `weights` must be > 0; got {s}, {w}.")
        object.__setattr__(self, "means", m)
        object.__setattr__(self, "scales", s)
        object.__setattr__(self, "weights", tuple(v / sum(w) for v in w))

    @property
    def dim(self) -> int:
        return len(self.means[0])

    def __call__(self, x: jax.Array) -> jax.Array:
        """``log p(x)`` of a ``[d]`` point (a scalar)."""
        _check_dim("GaussianMixture", x, self.dim)
        m = jnp.asarray(self.means, x.dtype)
        s = jnp.asarray(self.scales, x.dtype)
        r2 = jnp.sum((x[None, :] - m) ** 2, axis=-1)
        logc = jnp.log(jnp.asarray(self.weights, x.dtype)) - self.dim * jnp.log(s)
        logc = logc - 0.5 * self.dim * np.log(2 * np.pi)
        return jax.scipy.special.logsumexp(logc - 0.5 * r2 / s**2)

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """``[n, d]`` exact samples."""
        kc, kz = jax.random.split(key)
        c = jax.random.categorical(kc, jnp.log(jnp.asarray(self.weights)), shape=(n,))
        z = jax.random.normal(kz, (n, self.dim))
        return jnp.asarray(self.means)[c] + jnp.asarray(self.scales)[c, None] * z


@dataclasses.dataclass(frozen=True)
class Banana:
    """Haario, Saksman & Tamminen's (1999) twisted Gaussian ("banana"), normalised.

    ``u ~ N(0, diag(variance, 1, ..., 1))`` in ``d >= 2`` dimensions, bent by
    ``x_2 = u_2 - twist (u_1^2 - variance)`` (the other coordinates unchanged; a
    volume-preserving map), so ``log p(x) = log N(x_1, x_2 + twist (x_1^2 - variance),
    x_3, ...; 0, diag(variance, 1, ...))``. Haario et al. use ``variance = 100`` and
    ``twist`` 0.03 (moderately) or 0.1 (strongly twisted); the default is a smaller
    banana at the scale of the other built-in densities.

    Attributes:
      variance: the variance of ``x_1`` (``> 0``).
      twist: the bend ``b`` (``>= 0``; 0 is a Gaussian).
    """

    variance: float = 4.0
    twist: float = 0.25

    def __post_init__(self):
        v, t = float(self.variance), float(self.twist)
        if not (np.isfinite(v) and v > 0 and np.isfinite(t) and t >= 0):
            raise ValueError(
                f"Banana: `variance` must be finite and > 0 and `twist` finite and >= 0; got "
                f"{self.variance!r}, {self.twist!r}."
            )
        object.__setattr__(self, "variance", v)
        object.__setattr__(self, "twist", t)

    dim = None  # any d >= 2

    def __call__(self, x: jax.Array) -> jax.Array:
        """``log p(x)`` of a ``[d]`` point, ``d >= 2`` (a scalar)."""
        _check_dim("Banana", x, None, min_d=2)
        v, b = self.variance, self.twist
        u2 = x[1] + b * (x[0] ** 2 - v)
        q = x[0] ** 2 / v + u2**2 + jnp.sum(x[2:] ** 2)
        return -0.5 * q - 0.5 * np.log(v) - 0.5 * x.shape[0] * np.log(2 * np.pi)

    def sample(self, key: jax.Array, n: int, d: int = 2) -> jax.Array:
        """``[n, d]`` exact samples."""
        u = jax.random.normal(key, (n, d))
        u = u.at[:, 0].multiply(np.sqrt(self.variance))
        return u.at[:, 1].add(-self.twist * (u[:, 0] ** 2 - self.variance))


@dataclasses.dataclass(frozen=True)
class Funnel:
    """Neal's (2003) funnel, normalised: ``x_1 ~ N(0, scale^2)``, ``x_k | x_1 ~ N(0, e^{x_1})``.

    In ``d >= 2`` dimensions (Neal: ``scale = 3``, ``d = 10``; default ``d = 2``): the
    neck narrows exponentially, a hard target for samplers with one step size.

    Attributes:
      scale: the standard deviation of ``x_1`` (``> 0``).
    """

    scale: float = 3.0

    def __post_init__(self):
        s = float(self.scale)
        if not (np.isfinite(s) and s > 0):
            raise ValueError(f"Funnel: `scale` must be finite and > 0; got {self.scale!r}.")
        object.__setattr__(self, "scale", s)

    dim = None  # any d >= 2

    def __call__(self, x: jax.Array) -> jax.Array:
        """``log p(x)`` of a ``[d]`` point, ``d >= 2`` (a scalar)."""
        _check_dim("Funnel", x, None, min_d=2)
        v, rest, k = x[0], x[1:], x.shape[0] - 1
        lp_v = -0.5 * v**2 / self.scale**2 - np.log(self.scale)
        lp_x = -0.5 * jnp.sum(rest**2) * jnp.exp(-v) - 0.5 * k * v
        return lp_v + lp_x - 0.5 * x.shape[0] * np.log(2 * np.pi)

    def sample(self, key: jax.Array, n: int, d: int = 2) -> jax.Array:
        """``[n, d]`` exact samples."""
        z = jax.random.normal(key, (n, d))
        v = self.scale * z[:, :1]
        return jnp.concatenate([v, jnp.exp(v / 2) * z[:, 1:]], axis=1)


#: Every built-in density by name, default-constructed (the command line's ``--density``).
DENSITIES: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gaussian": Gaussian(),
    "mixture": GaussianMixture(),
    "banana": Banana(),
    "funnel": Funnel(),
}


def _name(logp) -> str:
    return getattr(logp, "__name__", None) or type(logp).__name__


def check_logp(logp, x: jax.Array, owner: str = "score") -> None:
    """Checks that ``logp`` maps a ``[d]`` point of ``x [n, d]`` to a differentiable scalar.

    Traced at the shapes only (no evaluation), so it works under ``jit``.

    Args:
      logp: the log-density to check.
      x: ``[n, d]`` points (only their shape and dtype are used).
      owner: the name the error message starts with.

    Raises:
      ValueError: ``logp`` is not callable, fails to trace on a ``[d]`` point (wrong
        dimension, a shape error), returns a non-scalar or non-floating value, or is not
        differentiable.

    Example:
      >>> import jax.numpy as jnp
      >>> from mmdflow import densities
      >>> densities.check_logp(lambda x: x, jnp.zeros((4, 2)))
      Traceback (most recent call last):
      ...
      ValueError: score: `logp` (<lambda>) must return a floating scalar for a point of shape (2,); got shape (2,), dtype float32.
    """
    if not callable(logp):
        raise ValueError(f"{owner}: `logp` must be a callable [d] -> scalar; got {logp!r}.")
    pt = jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
    try:
        out = jax.eval_shape(logp, pt)
    except Exception as e:  # noqa: BLE001 - any trace-time failure is a bad logp for x
        raise ValueError(
            f"{owner}: `logp` ({_name(logp)}) failed on a point of shape {tuple(x.shape[1:])} "
            f"(from points of shape {tuple(x.shape)}): {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    if not hasattr(out, "shape") or out.shape != () or not jnp.issubdtype(out.dtype, jnp.floating):
        got = f"shape {getattr(out, 'shape', None)}, dtype {getattr(out, 'dtype', type(out))}"
        raise ValueError(
            f"{owner}: `logp` ({_name(logp)}) must return a floating scalar for a point of "
            f"shape {tuple(x.shape[1:])}; got {got}."
        )
    try:
        jax.eval_shape(jax.grad(logp), pt)
    except Exception as e:  # noqa: BLE001
        raise ValueError(
            f"{owner}: `logp` ({_name(logp)}) is not differentiable at points of shape "
            f"{tuple(x.shape[1:])}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e


@functools.partial(jax.jit, static_argnums=0)
def _values(logp, x):
    """``(log p, score)`` at the points ``x``."""
    return jax.vmap(logp)(x), jax.vmap(jax.grad(logp))(x)


def score(logp: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """The score ``grad log p`` at each of the points ``x [n, d]``: ``vmap(grad(logp))(x)``.

    ``logp`` is checked at trace time (:func:`check_logp`); at concrete (not traced)
    points, ``logp`` and its score must also be finite there.

    Args:
      logp: a log-density ``[d] -> scalar`` (up to a constant).
      x: ``[n, d]`` points.

    Returns:
      ``[n, d]`` scores, in the dtype of ``x``.

    Raises:
      ValueError: a bad ``logp`` (see :func:`check_logp`), or non-finite log-density or
        score values at concrete points.

    Example:
      >>> import jax.numpy as jnp
      >>> from mmdflow import densities
      >>> densities.score(lambda x: -0.5 * jnp.sum(x**2), jnp.ones((2, 3))).tolist()
      [[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]]
    """
    x = check_points("x", x)
    check_logp(logp, x)
    if not is_concrete(x):
        return jax.vmap(jax.grad(logp))(x)
    try:  # one compiled program (op-by-op dispatch compiles every op)
        lp, s = _values(logp, x)
    except TypeError:  # an unhashable logp: not a static argument
        lp, s = _values.__wrapped__(logp, x)
    if is_concrete(lp):  # not under a trace (concrete points inside a jitted function)
        bad = ~(jnp.isfinite(lp) & jnp.all(jnp.isfinite(s), axis=1))
        if bool(jnp.any(bad)):
            i = int(jnp.argmax(bad))
            raise ValueError(
                f"score: `logp` ({_name(logp)}) or its gradient is not finite at "
                f"{int(jnp.sum(bad))} of the {x.shape[0]} points of `x` (first: row {i}, "
                f"log p = {float(lp[i])})."
            )
    return s
