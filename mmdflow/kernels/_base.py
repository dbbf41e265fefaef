"""Kernel base classes and shared helpers: precision/dimension constants, ``sqdist``.

:class:`Kernel` derives the block methods from ``__call__`` by autodiff;
:class:`RadialKernel` and :class:`DotProductKernel` give them in closed form.
See :mod:`mmdflow.kernels` for the overview.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

if TYPE_CHECKING:
    from mmdflow.kernels._combine import Scaled, Sum

HIGHEST = jax.lax.Precision.HIGHEST
# Up to this dimension squared distances are formed from direct differences
# (exact: zero at coincident points, no cancellation); above it from the GEMM
# form |x|^2 + |y|^2 - 2 x.y at full fp32 precision (never TF32).
DIRECT_MAX_D = 8


def _pytree(data: tuple[str, ...] = (), meta: tuple[str, ...] = ()):
    """A frozen dataclass registered as a pytree: ``data`` fields are leaves, ``meta`` static.

    Construction (``__init__``) runs ``__post_init__`` validation; ``tree_unflatten`` does
    *not*: it rebuilds the object field by field, so JAX may put tracers, ``None`` or
    ``object()`` sentinels in the leaves (``jax.tree.map``, ``vmap`` axis specs, Pallas
    parameter scalars) without tripping checks meant for user input.
    """
    data, meta = tuple(data), tuple(meta)

    def wrap(cls):
        cls = dataclasses.dataclass(frozen=True, eq=False)(cls)
        fields = {f.name for f in dataclasses.fields(cls)}
        if fields != set(data) | set(meta):
            raise TypeError(f"_pytree({cls.__name__}): fields {fields} != data + meta.")
        keys = tuple(jax.tree_util.GetAttrKey(f) for f in data)

        def flatten_with_keys(obj):
            kids = tuple((key, getattr(obj, f)) for key, f in zip(keys, data, strict=True))
            return kids, tuple(getattr(obj, f) for f in meta)

        def flatten(obj):
            return tuple(getattr(obj, f) for f in data), tuple(getattr(obj, f) for f in meta)

        def unflatten(aux, children):
            obj = object.__new__(cls)
            for f, v in zip(data, children, strict=True):
                object.__setattr__(obj, f, v)
            for f, v in zip(meta, aux, strict=True):
                object.__setattr__(obj, f, v)
            return obj

        jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
        return cls

    return wrap


def gemm_zero_tol(d: int, dtype) -> float:
    """Relative rounding bound of the GEMM distance form in ``d`` dimensions: ``(d + 2) eps``.

    ``s = (|x|^2 + |y|^2) - 2 x.y``, each dot product a sum of ``d`` terms, has an absolute
    error of at most ``~(2 gamma_d + 2 u) (|x|^2 + |y|^2)`` at coincident points
    (``gamma_d = d u``, ``u = eps / 2``), whatever the summation order. A computed ``s`` at
    or below ``gemm_zero_tol * (|x|^2 + |y|^2)`` is therefore indistinguishable from 0 and
    is set to exactly 0: coincident points get distance 0 (no ``sqrt`` of round-off for
    kernels with a cusp). Pairs that close but distinct (``|x - y|^2 <= (d + 2) eps
    (|x|^2 + |y|^2)``, norms after centring) count as coincident too.
    """
    return float((d + 2) * jnp.finfo(dtype).eps)


def _clamp_gemm(t, s, d: int):
    """``s = t - 2 x.y`` (``t = |x|^2 + |y|^2``) with values inside the rounding bound set to 0."""
    return jnp.where(s > gemm_zero_tol(d, s.dtype) * t, s, jnp.zeros_like(s))


def centred(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``x - c`` and ``y - c`` for the first point ``c`` of ``y`` (carrying no gradient).

    For translation-invariant kernels on points far from the origin: the GEMM forms' cancellation
    then costs ``eps`` times the points' distances from ``c`` (at most the tile's diameter), not
    their offset. ``c`` is a point of the data, not a computed value such as the mean (whose
    distances would be at most the radius, and less sensitive to one outlier): XLA recomputes a
    cheap centre inside each consumer's fusion, and two roundings of it one ulp of the offset
    apart shift every distance (its legacy CPU emitters did: 1.2e-5 relative error of a float32
    gradient sum at offset 100, 1.9e-6 centred on a point).

    Args:
      x: ``[n, d]`` points.
      y: ``[m, d]`` points (``m >= 1``).

    Returns:
      ``(x - c, y - c)``.
    """
    c = jax.lax.stop_gradient(y[:1])
    return x - c, y - c


def _by_coordinate(y: jax.Array) -> jax.Array:
    """``y [m, d]`` as a materialized ``[d, m]`` array, for the per-pair reads of ``y[:, a]``.

    In a ``[rows, m]`` pair loop, ``y[:, a]`` read from the row-major ``[m, d]`` array is a
    stride-``d`` access per pair; from ``[d, m]`` a contiguous one. A plain transpose is fused
    into the pair loop (strided again), and XLA:CPU drops an ``optimization_barrier`` in a
    single tile; a reduction is not fused into its consumers, so the transpose is computed as
    ``sum_b [a == b] y[:, b]`` (exact: no products, ``inf`` stays ``inf``; ``m d^2`` adds,
    once per tile or hoisted out of the loop). On 2 cores of a Xeon (Emerald Rapids), d = 2
    and 3: matvec and gradient sums 1.6-2x faster at n = m = 4k and 16k, 1.3-1.7x in one
    1,000 x 1,000 tile (benchmarks/RESULTS.md, session 10).
    """
    pick = jnp.eye(y.shape[1], dtype=bool)[:, :, None]  # [d, d, 1]
    return jnp.sum(jnp.where(pick, y.T[None], jnp.zeros((), y.dtype)), axis=1)


def sqdist(x: jax.Array, y: jax.Array) -> jax.Array:
    """Squared Euclidean distances ``[n, m]`` between rows of ``x [n,d]`` and ``y [m,d]``.

    Direct differences for ``d <= DIRECT_MAX_D`` (exact at coincident points); otherwise the
    GEMM form ``|x|^2 + |y|^2 - 2 x.y`` with ``precision=HIGHEST``, where values within its
    rounding bound (:func:`gemm_zero_tol`) are set to exactly 0, so coincident points have
    distance 0 at every ``d``. Callers that can (translation-invariant kernels) should centre
    both sets first to limit cancellation.

    Args:
      x: ``[n, d]`` points.
      y: ``[m, d]`` points.

    Returns:
      ``[n, m]`` squared distances, ``>= 0``.
    """
    if x.shape[-1] <= DIRECT_MAX_D:
        # one 2-D [n, m] difference per coordinate (fuses far better than [n, m, d])
        yt = _by_coordinate(y)
        s = None
        for a in range(x.shape[-1]):
            da = x[:, a, None] - yt[None, a, :]
            s = da * da if s is None else s + da * da
        return s
    xx = jnp.sum(x * x, axis=-1)
    yy = jnp.sum(y * y, axis=-1)
    xy = jnp.matmul(x, y.T, precision=HIGHEST)
    t = xx[:, None] + yy[None, :]
    return _clamp_gemm(t, t - 2.0 * xy, x.shape[-1])


def _traced_guard(p, ok):
    """``p`` where ``ok(p)`` and finite, NaN elsewhere; concrete ``p`` is returned unchanged.

    Concrete hyperparameters are validated when a kernel is constructed; traced ones (kernel
    leaves under ``jit`` / ``grad`` / ``vmap``, Pallas parameter scalars) cannot be, so an
    invalid traced value makes the kernel's values NaN instead of silently meaning something
    else (e.g. ``Gaussian(-1.0)`` evaluating as ``Gaussian(1.0)``). One scalar select per
    parameter and kernel evaluation (a tile), never per pair.
    """
    if not isinstance(p, jax.core.Tracer):
        return p
    # |p| < inf rather than isfinite: also lowers inside Pallas/Triton kernel bodies
    return jnp.where(ok(p) & (jnp.abs(p) < jnp.inf), p, jnp.nan)


def _positive(p):
    """``p`` if traced and finite ``> 0``, else NaN (see :func:`_traced_guard`)."""
    return _traced_guard(p, lambda v: v > 0)


def _nonnegative(p):
    """``p`` if traced and finite ``>= 0``, else NaN (see :func:`_traced_guard`)."""
    return _traced_guard(p, lambda v: v >= 0)


def _negative(p):
    """``p`` if traced and finite ``< 0``, else NaN (see :func:`_traced_guard`)."""
    return _traced_guard(p, lambda v: v < 0)


def _safe_sqrt(s):
    """sqrt with a zero (not NaN/inf) derivative at 0; NaN inputs stay NaN."""
    zero = s == 0
    r = jnp.sqrt(jnp.where(zero, jnp.ones_like(s), s))
    return jnp.where(zero, jnp.zeros_like(s), r)


def _radial_grad_terms(k, x, y, w, mask: bool, value: bool):
    """``2 (x_i [G w]_i - [G (w y)]_i)``, ``G = phi'(s)``, from one GEMM against ``[w, w y]``.

    ``mask``: ``G = 0`` at coincident pairs (``s == 0``), whose two terms cancel exactly.
    ``value``: also ``phi(s) w`` from the same distances, stacked first (``[n, k, 1 + d]``);
    with :meth:`RadialKernel.profile_ratios`, ``G = (phi' / phi) phi(s)``: one kernel array.
    """
    n, d = x.shape
    m, kk = w.shape
    s = sqdist(x, y)
    ratios = k.profile_ratios() if value else None
    phi = k.profile(s) if value else None
    g = k.profile_grad(s) if ratios is None else ratios[0] * phi  # [n, m]
    if mask:
        g = jnp.where(s == 0, jnp.zeros_like(g), g)
    rhs = jnp.concatenate([w, (w[:, :, None] * y[:, None, :]).reshape(m, kk * d)], axis=1)
    out = jnp.matmul(g, rhs, precision=HIGHEST)  # [n, kk (d + 1)]
    gw, gwy = out[:, :kk], out[:, kk:].reshape(n, kk, d)
    grad = 2.0 * (gw[:, :, None] * x[:, None, :] - gwy)
    if not value:
        return grad
    v = jnp.matmul(phi, w, precision=HIGHEST)
    return jnp.concatenate([v[:, :, None], grad], axis=-1)


@functools.partial(jax.custom_jvp, nondiff_argnums=(4,))
def _radial_grad_sum(k, x, y, w, value=False):
    """The closed-form gradient sum of a radial kernel ``k`` (:meth:`RadialKernel.grad_block`;
    ``value``: stacked after the value sum, :meth:`RadialKernel.value_grad_block`).

    Value: coincident pairs masked (no rounding residue); derivatives (any order, forward
    and reverse): those of the unmasked form, since the mask would drop the coincident
    pairs' ``phi'(0) (dx_i - dy_j)`` (the mask itself is constant almost everywhere).
    """
    return _radial_grad_terms(k, x, y, w, mask=True, value=value)


@_radial_grad_sum.defjvp
def _radial_grad_sum_jvp(value, primals, tangents):
    # the value through _radial_grad_sum itself, so that higher orders use this rule too
    unmasked = lambda *a: _radial_grad_terms(*a, mask=False, value=value)
    _, dout = jax.jvp(unmasked, primals, tangents)
    return _radial_grad_sum(*primals, value), dout


class Kernel:
    """Base class: a point-wise kernel ``k(x, y)`` on ``[d]`` vectors."""

    #: True when k(x + c, y + c) == k(x, y); lets ops centre the data.
    translation_invariant: bool = False
    #: pairs per tile of this kernel's gradient sums on CPU (default ``block_size``), for
    #: kernels whose gradient tile keeps many ``[rows, cols]`` arrays (reverse mode through a
    #: closed form: :class:`Stein`); ``None``: the other sums' tiles
    #: (:func:`mmdflow.ops.default_tiles`)
    grad_tile_pairs: int | None = None

    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        """The kernel value ``k(x, y)`` of two points.

        Args:
          x: ``[d]`` point.
          y: ``[d]`` point.

        Returns:
          Scalar.
        """
        raise NotImplementedError

    # -- block methods used by mmdflow.ops ---------------------------------
    def gram_block(self, x: jax.Array, y: jax.Array) -> jax.Array:
        """Kernel values ``K[i, j] = k(x_i, y_j)`` of a tile.

        Args:
          x: ``[n, d]`` points.
          y: ``[m, d]`` points.

        Returns:
          ``[n, m]`` kernel values.
        """
        return jax.vmap(lambda xi: jax.vmap(lambda yj: self(xi, yj))(y))(x)

    def grad_block(self, x: jax.Array, y: jax.Array, w: jax.Array) -> jax.Array:
        """``out[i, c, :] = sum_j w[j, c] grad_x k(x_i, y_j)`` (gradient in the first argument).

        Args:
          x: ``[n, d]`` points where gradients are taken.
          y: ``[m, d]`` points.
          w: ``[m, k]`` weights (``k`` sums at once).

        Returns:
          ``[n, k, d]``.
        """

        def row(xi):
            f = lambda xv: jnp.matmul(jax.vmap(lambda yj: self(xv, yj))(y), w, precision=HIGHEST)
            return jax.jacfwd(f)(xi)

        return jax.vmap(row)(x)

    def value_grad_block(self, x: jax.Array, y: jax.Array, w: jax.Array) -> jax.Array:
        """:meth:`gram_block` times ``w`` and :meth:`grad_block` of one tile, stacked.

        Args:
          x: ``[n, d]`` points.
          y: ``[m, d]`` points.
          w: ``[m, k]`` weights.

        Returns:
          ``[n, k, 1 + d]``: ``[..., 0]`` is ``sum_j w[j, c] k(x_i, y_j)``, ``[..., 1:]`` the
          gradient sum of :meth:`grad_block`.
        """
        v = jnp.matmul(self.gram_block(x, y), w, precision=HIGHEST)
        return jnp.concatenate([v[:, :, None], self.grad_block(x, y, w)], axis=-1)

    def hess_block(self, x: jax.Array, y: jax.Array, e: jax.Array) -> jax.Array:
        """``out[i] = sum_j H(x_i, y_j) e_j`` with the cross-Hessian ``H[a, b] = d^2 k / dx_a dy_b``.

        Args:
          x: ``[n, d]`` points.
          y: ``[m, d]`` points.
          e: ``[m, d]`` vectors, one per point of ``y``.

        Returns:
          ``[n, d]``.
        """

        def row(xi):
            # d/dx of sum_j <grad_y k(x, y_j), e_j>, as a jvp in y then a grad in x
            f = lambda xv: jnp.sum(
                jax.vmap(lambda yj, ej: jax.jvp(lambda yv: self(xv, yv), (yj,), (ej,))[1])(y, e)
            )
            return jax.grad(f)(xi)

        return jax.vmap(row)(x)

    def diag(self, x: jax.Array) -> jax.Array:
        """The diagonal ``k(x_i, x_i)``.

        Args:
          x: ``[n, d]`` points.

        Returns:
          ``[n]``.
        """
        return jax.vmap(lambda xi: self(xi, xi))(x)

    # -- combinators --------------------------------------------------------
    def __add__(self, other: Kernel) -> Sum:
        if not isinstance(other, Kernel):
            return NotImplemented
        from mmdflow.kernels._combine import Sum

        return Sum((self, other))

    def __mul__(self, c) -> Scaled:
        if isinstance(c, Kernel):
            return NotImplemented
        from mmdflow.kernels._combine import Scaled

        return Scaled(self, c)

    __rmul__ = __mul__


class RadialKernel(Kernel):
    """``k(x, y) = phi(|x - y|^2)``; subclasses define ``profile`` and ``profile_grad``.

    ``profile_hess`` (``phi''``, used by :meth:`hess_block`) defaults to forward-mode
    autodiff of ``profile_grad``; the built-in kernels give it in closed form.
    """

    translation_invariant = True
    #: :meth:`grad_block` sums ``2 (x_i [G w]_i - [G (w y)]_i)`` (one GEMM per tile) rather
    #: than one difference array and GEMM per coordinate (up to ``DIRECT_MAX_D``; above it
    #: the closed form always). False for kernels with a cusp at ``s = 0`` (``Laplace``,
    #: ``Energy``): there ``|phi'(s)| ~ 1 / |x - y|``, so the closed form's two terms of a
    #: near-coincident pair cancel to ``eps |x| / |x - y|``, an unbounded error.
    closed_form_grad: bool = True

    def profile(self, s: jax.Array) -> jax.Array:
        """``phi(s)`` of the squared distance ``s``, elementwise.

        Args:
          s: squared distances ``|x - y|^2 >= 0``, any shape.

        Returns:
          Kernel values, the shape of ``s``.
        """
        raise NotImplementedError

    def profile_grad(self, s: jax.Array) -> jax.Array:
        """``phi'(s)``, finite at ``s = 0`` (zero for kernels with a cusp there).

        Args:
          s: squared distances, any shape.

        Returns:
          ``d phi / d s``, the shape of ``s``.
        """
        raise NotImplementedError

    def profile_hess(self, s: jax.Array) -> jax.Array:
        """``phi''(s)``, finite at ``s = 0`` (zero for kernels with a cusp there).

        Default: the element-wise derivative of ``profile_grad`` (one ``jvp``), so a
        subclass defining only ``profile`` and ``profile_grad`` still gets :meth:`hess_block`.

        Args:
          s: squared distances, any shape.

        Returns:
          ``d^2 phi / d s^2``, the shape of ``s``.
        """
        return jax.jvp(self.profile_grad, (s,), (jnp.ones_like(s),))[1]

    def profile_ratios(self) -> tuple[jax.Array, jax.Array] | None:
        """``(phi'(s) / phi(s), phi''(s) / phi(s))`` where both are constants, else ``None``.

        With them :meth:`hess_block` forms one array per tile, ``phi(s)``, and scales its two
        GEMMs' results, instead of forming ``phi'(s)`` and ``phi''(s)`` (which XLA materializes
        as separate arrays): the Gaussian's cross-Hessian sum 1.2-1.35x faster at d = 2 and 3,
        n = m = 4k / 16k, on 2 Xeon cores (benchmarks/RESULTS.md, session 10). The closed-form
        :meth:`value_grad_block` takes its ``phi'(s)`` from ``phi(s)`` the same way.

        Returns:
          Two scalars, or ``None``.
        """
        return None

    def __call__(self, x, y):
        diff = x - y
        return self.profile(jnp.sum(diff * diff, axis=-1))

    def gram_block(self, x, y):
        return self.profile(sqdist(x, y))

    def grad_block(self, x, y, w):
        """``2 sum_j w_j phi'(s_ij) (x_i - y_j) = 2 (x_i [G w]_i - [G (w y)]_i)``, ``G = phi'(s)``.

        With ``closed_form_grad`` (smooth kernels), or above ``DIRECT_MAX_D`` dimensions: one
        GEMM of ``G`` against the stacked right-hand sides ``[w, w y]`` (``k (d + 1)``
        columns) on points centred at the tile's first ``y`` point (:func:`centred`, no
        gradient), so the two terms' cancellation costs ``eps`` times the data's spread, not
        its offset.
        A coincident pair (``s == 0``) contributes ``phi'(0) (x_i - y_j) = 0``, but its two
        terms would leave a rounding residue of ``eps |phi'(0)| |x_i|``; its ``G`` is set to 0
        in the value only (:func:`_radial_grad_sum`: derivatives are those of the unmasked
        form, which keep the pair's ``phi'(0) (dx_i - dy_j)``). Otherwise (kernels with a
        cusp, up to ``DIRECT_MAX_D``): :meth:`_grad_block_pairwise`.
        """
        if x.shape[-1] <= DIRECT_MAX_D and not self.closed_form_grad:
            return self._grad_block_pairwise(x, y, w)
        return _radial_grad_sum(self, *centred(x, y), w)

    def value_grad_block(self, x, y, w):
        """:meth:`Kernel.value_grad_block` with one squared-distance tile for both sums (on the
        points :meth:`grad_block` centres) and, with :meth:`profile_ratios`, one kernel array
        (the Gaussian's ``exp`` once per pair)."""
        if x.shape[-1] <= DIRECT_MAX_D and not self.closed_form_grad:
            return super().value_grad_block(x, y, w)
        return _radial_grad_sum(self, *centred(x, y), w, True)

    def _grad_block_pairwise(self, x, y, w):
        """:meth:`grad_block` from ``[n, m]`` differences, one GEMM per coordinate.

        ``2 sum_j w_j phi'(s_ij) (x_{i,a} - y_{j,a})`` for each coordinate ``a``: no
        cancellation (relative error ``~eps`` for every pair, near-coincident ones included),
        ``d`` GEMMs of ``k`` columns. The form of kernels with a cusp and the reference of
        the closed form in the tests.
        """
        g = self.profile_grad(sqdist(x, y))  # [n, m]
        yt = _by_coordinate(y)
        cols = []
        for a in range(x.shape[-1]):
            da = x[:, a, None] - yt[None, a, :]  # [n, m]
            cols.append(jnp.matmul(g * da, w, precision=HIGHEST))  # [n, k]
        return 2.0 * jnp.stack(cols, axis=-1)

    def hess_block(self, x, y, e):
        """``sum_j [-2 phi'(s_ij) e_j - 4 phi''(s_ij) r_ij (r_ij . e_j)]`` with ``r_ij = x_i - y_j``.

        At coincident points ``r = 0`` the result is ``-2 phi'(0) e_j``: zero for kernels with a
        cusp there (``Laplace``, ``Energy``), as the autodiff form gives (their true cross-Hessian
        grows like ``1 / |r|`` as ``r -> 0``). The ``r (r . e)`` term is three GEMMs at ``HIGHEST``
        precision on points centred at the tile's first ``y`` point (:func:`centred`; at d = 2 and
        3, 1.6-1.8x faster on 2 CPU cores than the per-coordinate differences used there before),
        where a coincident pair's ``phi''(s) (r . e)`` is set to 0 (it is 0; the GEMMs would leave a
        rounding residue). First derivatives keep every pair's terms (at ``r = 0`` the masked term's
        vanishes); second derivatives there drop the pair's ``-8 phi''(0) (dr . e) dr`` (and, above
        ``DIRECT_MAX_D``, through the clamp of :func:`sqdist`, ``-4 phi''(0) |dr|^2 e``).
        """
        # GEMM form on centred points (k is translation invariant; the centre carries no
        # gradient): sum_j q_ij (x_i - y_j) = x_i sum_j q_ij - sum_j q_ij y_j, the row sum and
        # q y in one GEMM against [1, y]
        x, y = centred(x, y)
        s = sqdist(x, y)
        xe = jnp.matmul(x, e.T, precision=HIGHEST)  # [n, m] x_i . e_j
        ratios = self.profile_ratios()  # phi' = a phi, phi'' = b phi: one array, phi(s)
        g1, g2 = (self.profile(s),) * 2 if ratios else (self.profile_grad(s), self.profile_hess(s))
        q = g2 * (xe - jnp.sum(y * e, axis=-1)[None, :])
        q = jnp.where(s == 0, jnp.zeros_like(q), q)  # r_ij = 0 exactly (as in grad_block)
        g1e = jnp.matmul(g1, e, precision=HIGHEST)
        qy = jnp.matmul(q, jnp.concatenate([jnp.ones_like(y[:, :1]), y], axis=1), precision=HIGHEST)
        a, b = ratios or (1.0, 1.0)
        return -2.0 * a * g1e - 4.0 * b * (qy[:, :1] * x - qy[:, 1:])


class DotProductKernel(Kernel):
    """``k(x, y) = psi(x . y)``; subclasses define ``fn`` and ``fn_grad`` (``fn_hess`` optional)."""

    def fn(self, t: jax.Array, d: int) -> jax.Array:
        """``psi(t)`` of the dot products ``t = x . y``, elementwise.

        Args:
          t: dot products, any shape.
          d: the points' dimension (static; e.g. ``Polynomial``'s default scale ``1/d``).

        Returns:
          Kernel values, the shape of ``t``.
        """
        raise NotImplementedError

    def fn_grad(self, t: jax.Array, d: int) -> jax.Array:
        """``psi'(t)``, elementwise (arguments as in :meth:`fn`)."""
        raise NotImplementedError

    def fn_hess(self, t: jax.Array, d: int) -> jax.Array:
        """``psi''(t)``; default: the element-wise derivative of ``fn_grad`` (one ``jvp``).

        Args:
          t: dot products, any shape.
          d: the points' dimension (static).

        Returns:
          ``psi''(t)``, the shape of ``t``.
        """
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
