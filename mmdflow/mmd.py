"""MMD^2 estimators, their variance, and MMD witness functions with gradients.

Conventions: ``x`` are the *moving* particles / model samples (law q), ``y`` the
*target* samples (law p). The witness of MMD(q, p) is

    witness(z) = mean_j k(z, y_j) - mean_i k(z, x_i)

and particles descend MMD^2(x, y) by moving along ``+witness_grad``:
``d/dx_i MMD^2 = -2 wx_i * witness_grad(x_i)`` (biased estimator).

Weights ``wx [n]`` / ``wy [m]`` are relative masses, normalised to sum to 1. Concrete
weights that are negative, non-finite or all zero raise ``ValueError``; traced weights
(arguments of a jitted function) cannot be checked: all-zero traced weights give NaN and
negative ones a signed measure.
Everything is differentiable in points, weights and kernel hyperparameters, and
jit/vmap-able; the MMD^2 estimators' derivatives in points and weights are closed-form kernel
sums (no reverse pass through the sums' loops). NaN or inf inputs are not masked; they make
the outputs NaN.

Example:
  >>> import jax, jax.numpy as jnp
  >>> import mmdflow
  >>> x = jax.random.normal(jax.random.key(0), (100, 2))
  >>> y = x + 1.0
  >>> k = mmdflow.kernels.Gaussian(1.0)
  >>> bool(mmdflow.mmd2(x, y, k) > 0)
  True
  >>> mmdflow.witness_grad(x, x, y, k).shape
  (100, 2)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jax.flatten_util import ravel_pytree

from mmdflow._checks import check_mass, check_points, normalized_weights
from mmdflow._mesh import points_and_weights
from mmdflow.kernels import FeatureKernel, Kernel, _pytree, _Squared
from mmdflow.ops import (
    SumConfig,
    check_kernel,
    check_sum_config,
    is_pytree,
    kernel_grad_matvec,
    kernel_matvec,
    kernel_value_and_grad_matvec,
    resolve_impl,
)

__all__ = ["mmd2", "mmd2_variance", "witness", "witness_grad", "ESTIMATORS"]

ESTIMATORS = ("biased", "unbiased", "linear")


def _points(x, y, min_n=1):
    x = check_points("x", x, min_n=min_n)
    y = check_points("y", y, d=x.shape[1], min_n=min_n)
    dtype = jnp.result_type(x.dtype, y.dtype)
    return x.astype(dtype), y.astype(dtype)


def mmd2(
    x: jax.Array,
    y: jax.Array,
    k: Kernel,
    *,
    estimator: str = "biased",
    wx: jax.Array | None = None,
    wy: jax.Array | None = None,
    sums: SumConfig | None = None,
) -> jax.Array:
    """Squared maximum mean discrepancy between the samples ``x`` and ``y``.

    Estimators:

    * ``"biased"``: the V-statistic ``|mu_x - mu_y|^2_H`` (weighted). Clamped at 0
      so that round-off never makes it negative (it is >= 0 mathematically).
    * ``"unbiased"``: the U-statistic; with weights, diagonal terms are dropped and
      the within-set sums renormalised by ``1 - sum(w^2)``. Can be negative (never
      clamped). Needs at least 2 points per set.
    * ``"linear"``: Gretton et al.'s linear-time estimator over
      ``min(n, m) // 2`` disjoint pairs, in the given order (unweighted only).

    Args:
      x: ``[n, d]`` samples.
      y: ``[m, d]`` samples.
      k: kernel.
      estimator: one of ``"biased"``, ``"unbiased"``, ``"linear"``.
      wx: optional ``[n]`` non-negative weights of ``x``.
      wy: optional ``[m]`` non-negative weights of ``y``.
      sums: how the kernel sums run (:class:`mmdflow.ops.SumConfig`: implementation, tiles,
        device mesh).

    Returns:
      Scalar MMD^2 estimate.
    """
    check_kernel(k)
    if estimator not in ESTIMATORS:
        raise ValueError(f"`estimator` must be one of {ESTIMATORS}; got {estimator!r}.")
    sums = check_sum_config("mmd2", sums)
    min_n = 1 if estimator == "biased" else 2
    x, wx = points_and_weights("x", x, wx, "wx")
    y, wy = points_and_weights("y", y, wy, "wy")
    x, y = _points(x, y, min_n=min_n)
    if estimator == "linear" and (wx is not None or wy is not None):
        raise ValueError("the 'linear' estimator does not take weights `wx` / `wy`.")
    wx = check_mass("wx", wx, x.shape[0], "x")
    wy = check_mass("wy", wy, y.shape[0], "y")
    return (_mmd2 if is_pytree(k) else _mmd2_eager)(x, y, wx, wy, k, estimator, sums)


def _mmd2_eager(x, y, wx, wy, k, estimator, sums):
    """The traced core of :func:`mmd2` (inputs checked): one compilation per shape."""
    n, m = x.shape[0], y.shape[0]
    if estimator == "linear":
        p = min(n, m) // 2
        x1, x2 = x[0 : 2 * p : 2], x[1 : 2 * p : 2]
        y1, y2 = y[0 : 2 * p : 2], y[1 : 2 * p : 2]
        kv = jax.vmap(k)
        return jnp.mean(kv(x1, x2) + kv(y1, y2) - kv(x1, y2) - kv(x2, y1))
    a = normalized_weights("wx", wx, n, "x", x.dtype)
    b = normalized_weights("wy", wy, m, "y", x.dtype)
    if isinstance(k, FeatureKernel):
        # the base kernel on the features: derivatives in the feature map's parameters are
        # then the closed-form ones in the features, pulled back through the feature map
        x, y, k = k.features(x), k.features(y), k.base
    terms = _mean_embedding_products if is_pytree(k) else _mean_embedding_products_autodiff
    txx, tyy, txy = terms(x, y, a, b, k, sums)
    if estimator == "biased":
        return jnp.maximum(txx + tyy - 2.0 * txy, 0.0)
    a2, b2 = a * a, b * b
    uxx = (txx - jnp.dot(a2, k.diag(x))) / (1.0 - jnp.sum(a2))
    uyy = (tyy - jnp.dot(b2, k.diag(y))) / (1.0 - jnp.sum(b2))
    return uxx + uyy - 2.0 * txy


_mmd2 = jax.jit(_mmd2_eager, static_argnums=(5, 6))


def _mean_embedding_products_autodiff(x, y, a, b, k, sums):
    """``(a.K_xx a, b.K_yy b, a.K_xy b)``: three kernel sums, differentiated by autodiff."""
    txx = jnp.dot(a, kernel_matvec(k, x, x, a, sums=sums))
    tyy = jnp.dot(b, kernel_matvec(k, y, y, b, sums=sums))
    txy = jnp.dot(a, kernel_matvec(k, x, y, b, sums=sums))
    return txx, tyy, txy


_mean_embedding_products = jax.custom_jvp(_mean_embedding_products_autodiff, nondiff_argnums=(5,))

#: a kernel tangent in at most this many scalar parameters (the leaves whose tangents are not
#: symbolic zeros) of sums that run forward mode (not fused, not on a mesh) gets the three
#: products' derivatives as forward-mode coefficients: one tangent pass per parameter sharing
#: the value pass, which reverse mode transposes as a dot product. More parameters go through
#: autodiff of the sums (one reverse pass for all). Measured (value and gradient of ``mmd2`` in
#: the bandwidths over its forward time, n = 4096, 2 CPU cores, quiet): one Gaussian bandwidth
#: 1.24x (d = 2) and 1.97x (d = 16) with coefficients against 2.30x and 2.78x by autodiff; the
#: four of a ``MixtureRBF`` 4.0x against 3.6x (a loaded run).
KERNEL_COEFFICIENTS_MAX_PARAMS = 2


def _kernel_tangent_jvp(x, y, a, b, k, dk, zero, sums):
    """``jax.jvp`` of :func:`_mean_embedding_products_autodiff` in the kernel ``k`` along ``dk``
    (a tangent tree whose leaves may be symbolic zeros): values and tangents."""
    f = lambda kk: _mean_embedding_products_autodiff(x, y, a, b, kk, sums)
    leaves, treedef = jax.tree.flatten(k)
    tangents = jax.tree.leaves(dk, is_leaf=zero)
    active = [i for i, t in enumerate(tangents) if not zero(t)]

    def along(ts):  # the tangent tree: ``ts`` at the active leaves, zeros elsewhere
        dl = [jnp.zeros_like(p) for p in leaves]
        for i, t in zip(active, ts, strict=True):
            dl[i] = t
        return jax.jvp(f, (k,), (jax.tree.unflatten(treedef, dl),))

    given = [tangents[i] for i in active]
    params, unravel = ravel_pytree([leaves[i] for i in active])
    few = params.size <= KERNEL_COEFFICIENTS_MAX_PARAMS
    # the fused and mesh sums are custom_vjp functions: their tangents can only be transposed
    impl = resolve_impl(sums.impl, x.shape[0], y.shape[0], k, x.dtype)
    forward = sums.mesh is None and impl != "pallas"
    if not (few and forward and jnp.issubdtype(params.dtype, jnp.inexact)):
        return along(given)
    basis = jnp.eye(params.size, dtype=params.dtype)
    out, coef = jax.vmap(lambda v: along(unravel(v)), out_axes=(None, 0))(basis)
    dparams = ravel_pytree(given)[0]
    return out, tuple(jnp.dot(c, dparams) for c in coef)


def _mean_embedding_products_jvp(sums, primals, tangents):
    """Derivatives of :func:`_mean_embedding_products` in closed form (``k`` symmetric).

    ``d(a.K_xx a) = 2 da.K_xx a + 2 sum_i a_i dx_i . g_xx,i`` with the gradient sum
    ``g_xx,i = sum_j a_j grad_1 k(x_i, x_j)``, and likewise for the other two terms: every
    tangent is linear in the input tangents with coefficients that are kernel sums of the
    primal points. So reverse mode transposes a dot product instead of the kernel sums' loops,
    and the gradient of a point set costs one value-and-gradient pass
    (:func:`~mmdflow.ops.kernel_value_and_grad_matvec`) over the pairs the value visits anyway:
    for ``x`` alone, the passes ``(x, x)`` and ``(x, y)`` plus the value sum over ``(y, y)``.
    Tangents of the kernel's own leaves (bandwidths) are forward-mode coefficients for up to
    :data:`KERNEL_COEFFICIENTS_MAX_PARAMS` parameters, autodiff of the three sums beyond
    (:func:`_kernel_tangent_jvp`; a ``FeatureKernel`` arrives as its base kernel on the
    features, so its network parameters take the closed form in the points). Higher
    derivatives differentiate these kernel sums.
    """
    x, y, a, b, k = primals
    dx, dy, da, db, dk = tangents
    zero = lambda t: isinstance(t, SymbolicZero)
    kernel_tangent = not all(zero(t) for t in jax.tree.leaves(dk, is_leaf=zero))
    on_x, on_y = not (zero(dx) and zero(da)), not (zero(dy) and zero(db))
    sum_of = lambda p, q, w: kernel_value_and_grad_matvec(k, p, q, w, sums=sums)
    matvec = lambda p, q, w: kernel_matvec(k, p, q, w, sums=sums)
    if on_x:
        (kxx_a, gxx), (kxy_b, gxy) = sum_of(x, x, a), sum_of(x, y, b)
    if on_y:
        (kyy_b, gyy), (kyx_a, gyx) = sum_of(y, y, b), sum_of(y, x, a)
    if kernel_tangent:
        out, dout = _kernel_tangent_jvp(x, y, a, b, k, dk, zero, sums)
    else:
        txx = jnp.dot(a, kxx_a if on_x else matvec(x, x, a))
        tyy = jnp.dot(b, kyy_b if on_y else matvec(y, y, b))
        txy = jnp.dot(a, kxy_b) if on_x else jnp.dot(b, kyx_a if on_y else matvec(y, x, a))
        out, dout = (txx, tyy, txy), (0.0, 0.0, 0.0)
    dtxx, dtyy, dtxy = dout
    inner = lambda t, v: 0.0 if zero(t) else jnp.sum(t * v)  # <t, v>, 0 for a zero tangent
    if on_x:
        dtxx = dtxx + 2.0 * (inner(dx, a[:, None] * gxx) + inner(da, kxx_a))
        dtxy = dtxy + inner(dx, a[:, None] * gxy) + inner(da, kxy_b)
    if on_y:
        dtyy = dtyy + 2.0 * (inner(dy, b[:, None] * gyy) + inner(db, kyy_b))
        dtxy = dtxy + inner(dy, b[:, None] * gyx) + inner(db, kyx_a)
    dout = (dtxx, dtyy, dtxy)
    return out, tuple(jnp.asarray(t, o.dtype) for t, o in zip(dout, out, strict=True))


_mean_embedding_products.defjvp(_mean_embedding_products_jvp, symbolic_zeros=True)


def mmd2_variance(
    x: jax.Array,
    y: jax.Array,
    k: Kernel,
    *,
    sums: SumConfig | None = None,
) -> jax.Array:
    """Unbiased estimate of the variance of the MMD^2 U-statistic (test power, t-ratio).

    For paired samples ``z_i = (x_i, y_i)`` (so ``n = m``), the U-statistic is
    ``U = 1/(n(n-1)) sum_{i != j} h(z_i, z_j)`` with
    ``h(z, z') = k(x, x') + k(y, y') - k(x, y') - k(x', y)``, and (Hoeffding)
    ``Var U = 2/(n(n-1)) [2(n-2) zeta_1 + zeta_2]``. Each of ``zeta_1``, ``zeta_2`` is
    estimated without bias from sums over distinct index pairs, triples and
    quadruples, so the returned value is an exactly unbiased estimate of ``Var U``
    (it can be negative for tiny samples; never clamped). ``U`` differs from
    ``mmd2(x, y, k, estimator="unbiased")`` only by the ``k(x_i, y_i)`` terms of the
    cross mean, an O(1/n) relative difference in variance. Use
    ``mmd2 / sqrt(max(var, eps))`` as the t-ratio of MMD-GAN / optimized-MMD work.

    Memory and cost are those of kernel sums on ``[n, 2d]`` points (blocked:
    never an ``n x n`` array).

    Args:
      x: ``[n, d]`` samples.
      y: ``[n, d]`` samples (paired with ``x`` by index).
      k: kernel.
      sums: how the kernel sums run (:class:`mmdflow.ops.SumConfig`).

    Returns:
      Scalar variance estimate. Needs ``n >= 4``.
    """
    check_kernel(k)
    x, y = _points(x, y, min_n=4)
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"mmd2_variance needs paired samples of equal size; got `x` {tuple(x.shape)} and "
            f"`y` {tuple(y.shape)}."
        )
    n = x.shape[0]
    h = _PairH(k, x.shape[1])
    z = jnp.concatenate([x, y], axis=1)
    kw = dict(sums=sums)
    ones = jnp.ones((n,), z.dtype)
    hd = h.diag(z)
    r = kernel_matvec(h, z, z, ones, **kw) - hd  # off-diagonal row sums
    s = jnp.sum(r)  # sum_{i != j} h_ij
    s2 = jnp.sum(kernel_matvec(_Squared(h), z, z, ones, **kw)) - jnp.sum(hd * hd)
    t3 = jnp.sum(r * r) - s2  # sum over distinct triples h_ij h_il
    q4 = s * s - 2.0 * s2 - 4.0 * t3  # sum over distinct quadruples h_ij h_kl
    nf = float(n)
    n2, n3, n4 = nf * (nf - 1), nf * (nf - 1) * (nf - 2), nf * (nf - 1) * (nf - 2) * (nf - 3)
    mean_sq = q4 / n4  # unbiased for (E h)^2
    zeta1 = t3 / n3 - mean_sq
    zeta2 = s2 / n2 - mean_sq
    return 2.0 / n2 * (2.0 * (nf - 2) * zeta1 + zeta2)


@_pytree(data=("kernel",), meta=("d",))
class _PairH(Kernel):
    """The MMD U-statistic core ``h`` as a kernel on stacked pairs ``z = [x, y]``."""

    kernel: Kernel = None
    d: int = 1

    def __call__(self, z1, z2):
        d, k = self.d, self.kernel
        x1, y1, x2, y2 = z1[:d], z1[d:], z2[:d], z2[d:]
        return k(x1, x2) + k(y1, y2) - k(x1, y2) - k(x2, y1)


def _witness_args(z, x, y, wx, wy):
    """Checked ``z``, ``x``, ``y`` (one dtype) and weights (not normalised)."""
    z, _ = points_and_weights("z", z, None, "")
    x, wx = points_and_weights("x", x, wx, "wx")
    y, wy = points_and_weights("y", y, wy, "wy")
    x, y = _points(x, y)
    z = check_points("z", z, d=x.shape[1], other="x")
    dtype = jnp.result_type(z.dtype, x.dtype)
    wx = check_mass("wx", wx, x.shape[0], "x")
    wy = check_mass("wy", wy, y.shape[0], "y")
    return z.astype(dtype), x.astype(dtype), y.astype(dtype), wx, wy


def _witness_eager(z, x, y, wx, wy, k, grad, sums):
    """The traced core of :func:`witness` / :func:`witness_grad`: one pass over ``[y; x]``
    with weights ``[b, -a]``."""
    a = normalized_weights("wx", wx, x.shape[0], "x", z.dtype)
    b = normalized_weights("wy", wy, y.shape[0], "y", z.dtype)
    pts = jnp.concatenate([y, x], axis=0)
    c = jnp.concatenate([b, -a])
    return (kernel_grad_matvec if grad else kernel_matvec)(k, z, pts, c, sums=sums)


_witness = jax.jit(_witness_eager, static_argnums=(6, 7))


def _witness_call(args, k, grad, sums):
    return (_witness if is_pytree(k) else _witness_eager)(*args, k, grad, sums)


def witness(
    z: jax.Array,
    x: jax.Array,
    y: jax.Array,
    k: Kernel,
    *,
    wx: jax.Array | None = None,
    wy: jax.Array | None = None,
    sums: SumConfig | None = None,
) -> jax.Array:
    """MMD witness ``f(z) = mean_j k(z, y_j) - mean_i k(z, x_i)`` (weighted means).

    Args:
      z: ``[nz, d]`` evaluation points.
      x: ``[n, d]`` particles (model samples).
      y: ``[m, d]`` target samples.
      k: kernel.
      wx, wy: optional weights of ``x`` and ``y``.
      sums: how the kernel sums run (:class:`mmdflow.ops.SumConfig`).

    Returns:
      ``[nz]`` witness values.
    """
    check_kernel(k)
    sums = check_sum_config("witness", sums)
    return _witness_call(_witness_args(z, x, y, wx, wy), k, False, sums)


def witness_grad(
    z: jax.Array,
    x: jax.Array,
    y: jax.Array,
    k: Kernel,
    *,
    wx: jax.Array | None = None,
    wy: jax.Array | None = None,
    sums: SumConfig | None = None,
) -> jax.Array:
    """Gradient of :func:`witness` in ``z``: ``sum_j b_j grad k(z, y_j) - sum_i a_i grad k(z, x_i)``.

    Particles move along ``+witness_grad``: ``d MMD^2 / d x_i = -2 a_i witness_grad(x_i)``
    (biased estimator; ``a``, ``b`` the normalised weights).

    Args:
      z: ``[nz, d]`` evaluation points (often the particles ``x`` themselves).
      x: ``[n, d]`` particles (model samples).
      y: ``[m, d]`` target samples.
      k: kernel.
      wx: optional ``[n]`` non-negative weights of ``x`` (default uniform).
      wy: optional ``[m]`` non-negative weights of ``y`` (default uniform).
      sums: how the kernel sums run (:class:`mmdflow.ops.SumConfig`).

    Returns:
      ``[nz, d]`` witness gradients in the promoted floating dtype of the inputs.
    """
    check_kernel(k)
    sums = check_sum_config("witness_grad", sums)
    return _witness_call(_witness_args(z, x, y, wx, wy), k, True, sums)
