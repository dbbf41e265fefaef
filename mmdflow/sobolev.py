"""Regularized kernel Sobolev critics (Mroueh, Sercu & Raj, "Sobolev Descent", AISTATS 2019).

The critic is ``f(z) = <u, phi(z)>`` with

    u = (D + reg I)^-1 (mu_p - mu_q),   D = sum_i a_i J phi(x_i) J phi(x_i)^T,

``mu_p`` the target mean embedding (samples ``y``, weights ``b``), ``mu_q`` the
particle mean embedding (particles ``x``, weights ``a``), ``J phi`` the Jacobian
of the feature map. Two equivalent forms:

* :func:`rff_critic`: ``phi`` = random Fourier features (m x m system, Cholesky).
* :func:`exact_critic`: the exact kernel. By the push-through identity
  ``u = (delta - T c) / reg`` with ``T c = sum_i sqrt(a_i) sum_k c_ik d_k phi(x_i)`` and
  ``(G + reg I) c = T^* delta``, where ``G`` is the ``[n d, n d]`` derivative-feature Gram
  matrix ``sqrt(a_i a_j) d^2 k(x_i, x_j) / dx_i dx_j`` and ``T^* delta = sqrt(a_i)
  grad witness(x_i)``. Solved by Cholesky (small ``n d``) or matrix-free CG.

Both return a critic object with ``grad(z)`` (the particle velocity field),
``value(z)``, the squared regularized Sobolev discrepancy ``delta^T u`` and the
(biased) MMD^2 ``|delta|^2`` of the same feature space.

Example:
  >>> import jax
  >>> from mmdflow import kernels, sobolev
  >>> x = jax.random.normal(jax.random.key(0), (50, 2))
  >>> y = x + 1.0
  >>> c = sobolev.exact_critic(kernels.Gaussian(1.0), x, y, reg=0.1)
  >>> c.grad(x).shape
  (50, 2)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import cho_factor, cho_solve

from mmdflow._checks import check_points, normalized_weights
from mmdflow._linalg import cg
from mmdflow._mesh import points_and_weights
from mmdflow.features import RFF
from mmdflow.kernels import HIGHEST, FeatureKernel, Kernel, _pytree
from mmdflow.mmd import witness, witness_grad
from mmdflow.ops import SumConfig, check_kernel, check_sum_config, kernel_hessian_matvec

__all__ = [
    "RFFCritic",
    "ExactCritic",
    "rff_critic",
    "rff_embedding",
    "rff_solve",
    "exact_critic",
    "CHOLESKY_MAX_SIZE",
    "RFF_BLOCK_ROWS",
    "SOLVERS",
]

#: linear solvers of :func:`exact_critic` (``"auto"``: Cholesky up to ``CHOLESKY_MAX_SIZE``)
SOLVERS = ("auto", "cholesky", "cg")
#: exact critics with n*d above this use matrix-free CG instead of Cholesky
CHOLESKY_MAX_SIZE = 4096
#: rows per block of the random-feature sums over points: at most ``[RFF_BLOCK_ROWS, m]``
#: features are live at a time, so a step's memory does not grow with ``n`` (read at trace time)
RFF_BLOCK_ROWS = 8192


def compute_dtype(dtype) -> jnp.dtype:
    """The dtype the critics compute in: float32 for bfloat16 / float16 points (their linear
    solves have no half-precision kernels), the points' own dtype otherwise."""
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.float32) if dtype.itemsize < 4 else dtype


def _inputs(x, y, wx, wy):
    x = check_points("x", x)
    y = check_points("y", y, d=x.shape[1])
    dtype = compute_dtype(jnp.result_type(x.dtype, y.dtype))
    x, y = x.astype(dtype), y.astype(dtype)
    a = normalized_weights("wx", wx, x.shape[0], "x", dtype)
    b = normalized_weights("wy", wy, y.shape[0], "y", dtype)
    return x, y, a, b


@_pytree(data=("rff", "u", "delta"))
class RFFCritic:
    """Sobolev critic in random-feature space: ``f(z) = phi(z) . u``."""

    rff: RFF
    u: jax.Array  # [m]
    delta: jax.Array  # [m] = mu_p - mu_q

    def value(self, z: jax.Array) -> jax.Array:
        return _row_map(lambda zb: jnp.matmul(self.rff(zb), self.u, precision=HIGHEST), z)

    def grad(self, z: jax.Array) -> jax.Array:
        """``J phi(z)^T u = -(sin(W z + b) * u) W`` -> ``[nz, d]``."""

        def block(zb):
            return -jnp.matmul(self.rff.sin(zb) * self.u[None, :], self.rff.w, precision=HIGHEST)

        return _row_map(block, z)

    @property
    def discrepancy_sq(self) -> jax.Array:
        """``delta^T (D + reg I)^-1 delta``, the squared regularized Sobolev discrepancy."""
        return jnp.dot(self.delta, self.u)

    @property
    def mmd2(self) -> jax.Array:
        return jnp.dot(self.delta, self.delta)


def rff_critic(
    rff: RFF,
    x: jax.Array,
    y: jax.Array,
    reg,
    *,
    wx: jax.Array | None = None,
    wy: jax.Array | None = None,
) -> RFFCritic:
    """Regularized Sobolev critic with random Fourier features.

    ``D = (W W^T) * (S^T diag(a) S)`` with ``S = sin(X W^T + b)`` (never the
    ``[n, m, d]`` Jacobian tensor); cost ``O(n m d + n m^2 + m^3)``.

    Args:
      rff: the feature map (see :class:`mmdflow.features.RFF`).
      x: ``[n, d]`` particles.
      y: ``[m_y, d]`` target samples.
      reg: ridge ``lambda > 0``.
      wx, wy: optional particle / target weights.

    Returns:
      An :class:`RFFCritic` (float32 for bfloat16 / float16 points, see :func:`compute_dtype`).
    """
    x, y, a, b = _inputs(x, y, wx, wy)
    if rff.z.shape[1] != x.shape[1]:
        raise ValueError(f"`rff` was built for d={rff.z.shape[1]} but `x` has shape {x.shape}.")
    delta = rff_embedding(rff, y, b) - rff_embedding(rff, x, a)
    return rff_solve(rff, x, a, delta, reg)


def _strided_blocks(v, nb):
    """``v [n, ...]`` -> ``[nb, ceil(n / nb), ...]``, block ``i`` holding rows ``i, i + nb, ...``.

    Strided rather than contiguous blocks keep a leading sharding of ``v`` (GSPMD) on the
    rows of every block. Padded rows are zeros (they must carry zero weight).
    """
    rows = math.ceil(v.shape[0] / nb)
    v = jnp.pad(v, [(0, rows * nb - v.shape[0])] + [(0, 0)] * (v.ndim - 1))
    return jnp.swapaxes(v.reshape(rows, nb, *v.shape[1:]), 0, 1)


def _row_sum(f, x, a, out_shape):
    """``sum`` over row blocks of ``f(x_block, a_block)`` (``a`` weights, zero on padding)."""
    nb = math.ceil(x.shape[0] / RFF_BLOCK_ROWS)
    if nb == 1:
        return f(x, a)

    @jax.checkpoint
    def body(acc, xa):
        return acc + f(*xa), None

    init = jnp.zeros(out_shape, jnp.result_type(x.dtype, a.dtype))
    return lax.scan(body, init, (_strided_blocks(x, nb), _strided_blocks(a, nb)))[0]


def _row_map(f, z):
    """``f`` (rows -> rows) applied to row blocks of ``z``, at most ``RFF_BLOCK_ROWS`` at a time."""
    n = z.shape[0]
    nb = math.ceil(n / RFF_BLOCK_ROWS)
    if nb == 1:
        return f(z)
    out = jnp.swapaxes(lax.map(f, _strided_blocks(z, nb)), 0, 1)  # [rows, nb, ...]
    return out.reshape(-1, *out.shape[2:])[:n]


def rff_embedding(rff: RFF, x: jax.Array, a: jax.Array) -> jax.Array:
    """The weighted mean embedding ``sum_i a_i phi(x_i)`` -> ``[m]``, computed in row blocks."""
    f = lambda xb, ab: jnp.matmul(ab, rff(xb), precision=HIGHEST)
    return _row_sum(f, x, a, (rff.num_features,))


def rff_solve(rff: RFF, x: jax.Array, a: jax.Array, delta: jax.Array, reg) -> RFFCritic:
    """The critic ``u = (D + reg I)^-1 delta`` for a given embedding difference ``delta [m]``.

    The solve behind :func:`rff_critic` (``D`` the gradient covariance of the features at
    ``x`` with validated, normalised weights ``a``), for callers that already hold
    ``delta`` (e.g. a cached target embedding). ``S^T diag(a) S`` (``S = sin(X W^T + b)``)
    is accumulated over blocks of ``RFF_BLOCK_ROWS`` rows.
    """
    m = rff.num_features
    w = rff.w

    def cov(xb, ab):
        s = rff.sin(xb)  # [block, m]
        return jnp.matmul(s.T, ab[:, None] * s, precision=HIGHEST)

    d_mat = jnp.matmul(w, w.T, precision=HIGHEST) * _row_sum(cov, x, a, (m, m))
    u = cho_solve(cho_factor(d_mat + reg * jnp.eye(m, dtype=d_mat.dtype)), delta)
    return RFFCritic(rff=rff, u=u, delta=delta)


@_pytree(
    data=(
        "kernel",
        "x",
        "y",
        "a",
        "b",
        "e",
        "reg",
        "discrepancy_sq",
        "mmd2",
        "grad_at_x",
        "cg_iterations",
        "cg_residual",
    ),
    meta=("sums",),
)
class ExactCritic:
    """Exact-kernel Sobolev critic ``f(z) = (witness(z) - sum_j grad_2 k(z, x_j) . e_j) / reg``."""

    kernel: Kernel
    x: jax.Array
    y: jax.Array
    a: jax.Array
    b: jax.Array
    e: jax.Array  # [n, d] = sqrt(a) * c
    reg: jax.Array
    discrepancy_sq: jax.Array
    mmd2: jax.Array
    grad_at_x: jax.Array  # [n, d], the velocity at the particles
    cg_iterations: jax.Array | None = None  # CG iterations (0 for Cholesky)
    cg_residual: jax.Array | None = None  # CG's final relative residual (0 for Cholesky)
    sums: SumConfig | None = None  # how value / grad run their kernel sums

    def value(self, z: jax.Array) -> jax.Array:
        wit = witness(z, self.x, self.y, self.kernel, wx=self.a, wy=self.b, sums=self.sums)
        corr = jax.vmap(
            lambda zi: jnp.sum(
                jax.vmap(lambda xj, ej: jax.jvp(lambda v: self.kernel(zi, v), (xj,), (ej,))[1])(
                    self.x, self.e
                )
            )
        )(z)
        return (wit - corr) / self.reg

    def grad(self, z: jax.Array) -> jax.Array:
        k, s = self.kernel, self.sums
        g = witness_grad(z, self.x, self.y, k, wx=self.a, wy=self.b, sums=s)
        return (g - kernel_hessian_matvec(k, z, self.x, self.e, sums=s)) / self.reg


def cross_hessian_matrix(k: Kernel, x: jax.Array) -> jax.Array:
    """Dense derivative-feature Gram ``[n d, n d]``: block ``(i, j)`` is ``d^2 k(x_i, x_j) / dx dy``.

    For a :class:`mmdflow.kernels.FeatureKernel` ``K(phi(x), phi(y))``, block ``(i, j)`` is
    ``J_phi(x_i)^T H_K(phi x_i, phi x_j) J_phi(x_j)`` (features and Jacobians once per point).
    """
    n, d = x.shape
    if isinstance(k, FeatureKernel):
        f = k.features(x)
        jac = jax.vmap(jax.jacfwd(lambda xi: k.features(xi[None])[0]))(x)  # [n, D, d]
        h = cross_hessian_matrix(k.base, f).reshape(n, f.shape[1], n, f.shape[1])
        h = jnp.einsum("iak,iajb,jbl->ikjl", jac, h, jac, precision=HIGHEST)
        return h.reshape(n * d, n * d)
    hess = jax.jacfwd(jax.grad(k, argnums=0), argnums=1)
    h = jax.vmap(lambda xi: jax.vmap(lambda xj: hess(xi, xj))(x))(x)  # [n, n, d, d]
    return jnp.transpose(h, (0, 2, 1, 3)).reshape(n * d, n * d)


def exact_critic(
    k: Kernel,
    x: jax.Array,
    y: jax.Array,
    reg,
    *,
    wx: jax.Array | None = None,
    wy: jax.Array | None = None,
    solver: str = "auto",
    cg_tol: float = 1e-6,
    cg_maxiter: int = 200,
    sums: SumConfig | None = None,
    mmd2: jax.Array | None = None,
) -> ExactCritic:
    """Regularized Sobolev critic with the exact kernel (derivative features at the particles).

    Args:
      k: a twice-differentiable kernel.
      x: ``[n, d]`` particles.
      y: ``[m, d]`` target samples.
      reg: ridge ``lambda > 0``.
      wx, wy: optional particle / target weights.
      solver: ``"cholesky"`` (dense ``[n d, n d]`` system), ``"cg"`` (matrix-free,
        blocked Hessian matvecs) or ``"auto"`` (Cholesky up to ``CHOLESKY_MAX_SIZE``; always
        CG on a mesh).
      cg_tol, cg_maxiter: CG stopping rule.
      sums: how the kernel sums run (:class:`mmdflow.ops.SumConfig`). On a mesh ``x`` and
        ``y`` may be :class:`~mmdflow.sharding.ShardedPoints` (their weights are used; the
        critic's ``x``, ``a``, ``e``, ``grad_at_x`` then have the padded rows).
      mmd2: optional precomputed biased MMD^2 ``|delta|^2`` of the same points and
        weights (e.g. the loss the caller already evaluated); skips the two witness
        passes that would compute it. Not checked: a wrong value gives a wrong
        ``discrepancy_sq`` (the velocity ``grad_at_x`` does not depend on it).

    Returns:
      An :class:`ExactCritic` (computed in float32 for bfloat16 / float16 points, see
      :func:`compute_dtype`).
    """
    check_kernel(k)
    if solver not in SOLVERS:
        raise ValueError(f"`solver` must be one of {SOLVERS}; got {solver!r}.")
    sums = check_sum_config("exact_critic", sums)
    x, wx = points_and_weights("x", x, wx, "wx")
    y, wy = points_and_weights("y", y, wy, "wy")
    x, y, a, b = _inputs(x, y, wx, wy)
    n, d = x.shape
    if mmd2 is not None:
        mmd2 = jnp.asarray(mmd2, x.dtype)
        if mmd2.shape != ():
            raise ValueError(f"`mmd2` must be a scalar; got shape {tuple(mmd2.shape)}.")
    if solver == "auto":
        small = n * d <= CHOLESKY_MAX_SIZE and sums.mesh is None
        solver = "cholesky" if small else "cg"
    g = witness_grad(x, x, y, k, wx=a, wy=b, sums=sums)  # grad of <delta, phi(.)> at particles
    sa = jnp.sqrt(a)
    rhs = sa[:, None] * g
    if solver == "cholesky":
        h = cross_hessian_matrix(k, x)
        sr = jnp.repeat(sa, d)
        gmat = sr[:, None] * h * sr[None, :] + reg * jnp.eye(n * d, dtype=h.dtype)
        c = cho_solve(cho_factor(gmat), rhs.reshape(n * d)).reshape(n, d)
        it, res = jnp.zeros((), jnp.int32), jnp.zeros((), x.dtype)
        e = sa[:, None] * c
        hm = jnp.matmul(h, e.reshape(n * d), precision=HIGHEST).reshape(n, d)
    else:

        def matvec(c):
            return (
                sa[:, None] * kernel_hessian_matvec(k, x, x, sa[:, None] * c, sums=sums) + reg * c
            )

        c, it, res = cg(matvec, rhs, tol=cg_tol, maxiter=cg_maxiter)
        e = sa[:, None] * c
        hm = kernel_hessian_matvec(k, x, x, e, sums=sums)
    if mmd2 is None:
        # |delta|^2 (biased MMD^2 in the kernel's RKHS): b.K_yy.b + a.K_xx.a - 2 a.K_xy.b.
        # It is not a function of the derivative features used above (the component of
        # delta orthogonal to them is invisible to the solve), so it takes kernel values.
        wit_y = witness(y, x, y, k, wx=a, wy=b, sums=sums)
        wit_x = witness(x, x, y, k, wx=a, wy=b, sums=sums)
        mmd2 = jnp.dot(b, wit_y) - jnp.dot(a, wit_x)
    disc = (mmd2 - jnp.sum(rhs * c)) / reg
    grad_x = (g - hm) / reg
    return ExactCritic(
        kernel=k,
        x=x,
        y=y,
        a=a,
        b=b,
        e=e,
        reg=reg,
        discrepancy_sq=disc,
        mmd2=mmd2,
        grad_at_x=grad_x,
        cg_iterations=it,
        cg_residual=res,
        sums=sums,
    )
