"""Kernels: point-wise values, block forms, pytree structure, validation, median heuristic."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _cases import NAMES, case
from _refs import cross_hess as ref_cross_hess
from _refs import grad_x as ref_grad_x
from _refs import gram as ref_gram

import mmdflow
from mmdflow import kernels, ops


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("d", [1, 3, 12])
def test_gram_matches_numpy_float64(name, d, rng):
    k, p = case(name, d)
    x = rng.normal(size=(7, d))
    y = rng.normal(size=(5, d))
    want = ref_gram(name, x, y, p)
    np.testing.assert_allclose(ops.gram(k, x, y), want, rtol=1e-12, atol=1e-12)
    # the fast block form used by the blocked path
    np.testing.assert_allclose(
        k.gram_block(jnp.asarray(x), jnp.asarray(y)), want, rtol=1e-10, atol=1e-10
    )
    # point-wise call
    np.testing.assert_allclose(k(jnp.asarray(x[0]), jnp.asarray(y[1])), want[0, 1], rtol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_pointwise_gradient_matches_hand_derived(name, rng):
    d = 3
    k, p = case(name, d)
    x = rng.normal(size=(4, d))
    y = rng.normal(size=(6, d))
    want = ref_grad_x(name, x, y, p)
    got = jax.vmap(lambda xi: jax.vmap(lambda yj: jax.grad(k)(xi, yj))(jnp.asarray(y)))(
        jnp.asarray(x)
    )
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "k", [kernels.Energy(), kernels.Laplace(1.0), kernels.Gaussian(1.0) + kernels.Energy()]
)
def test_no_nan_gradient_at_coincident_points(k):
    x = jnp.array([[0.3, -0.2], [1.0, 2.0]])
    g = jax.grad(lambda x: jnp.sum(ops.gram(k, x, x)))(x)
    assert np.all(np.isfinite(g))
    gb = ops.kernel_grad_matvec(k, x, x, jnp.ones(2), sums=ops.SumConfig("blocked"))
    gd = ops.kernel_grad_matvec(k, x, x, jnp.ones(2), sums=ops.SumConfig("dense"))
    assert np.all(np.isfinite(gb)) and np.all(np.isfinite(gd))
    np.testing.assert_allclose(gb, gd, rtol=1e-10, atol=1e-12)


SMOOTH_AT_ZERO = {"gaussian", "mixture", "imq", "rq", "poly", "linear", "scaled_imq"}


def _hess_points(rng, d, n=7, m=5):
    x = rng.normal(size=(n, d))
    y = rng.normal(size=(m, d))
    y[1], y[3] = x[2], x[0]  # coincident pairs
    e = rng.normal(size=(m, d))
    return x, y, e


@pytest.mark.parametrize("name", NAMES)
# one centred GEMM form at every d; its distances: direct differences up to DIRECT_MAX_D, the
# GEMM form above
@pytest.mark.parametrize("d", [1, 2, 16])
def test_hess_block_matches_numpy_float64(name, d, rng):
    k, p = case(name, d)
    x, y, e = _hess_points(rng, d)
    want = np.einsum("ijab,jb->ia", ref_cross_hess(name, x, y, p), e)
    args = (k, jnp.asarray(x), jnp.asarray(y), jnp.asarray(e))
    fns = {
        "hess_block": lambda k, *a: k.hess_block(*a),
        "blocked": lambda k, *a: ops.kernel_hessian_matvec(k, *a, sums=ops.SumConfig("blocked", 3)),
        # the generic autodiff form (coincident points included; cusp kernels give 0 there)
        "generic": lambda k, *a: kernels.Kernel.hess_block(k, *a),
    }
    for label, f in fns.items():
        got = jax.jit(f)(*args)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10, err_msg=label)


@pytest.mark.parametrize("name", NAMES)
def test_cross_hess_reference_matches_finite_differences(name, rng):
    """Checks the NumPy reference itself: central differences (Richardson) of grad_x in y."""
    d = 3
    k, p = case(name, d)
    x = rng.normal(size=(4, d))
    y = rng.normal(size=(5, d)) + 2.0  # well away from x (cusps)
    if name in SMOOTH_AT_ZERO:
        y[0] = x[1]
    h = 1e-3
    fd = np.zeros((4, 5, d, d))
    for b in range(d):

        def cd(step, b=b):
            dy = np.zeros(d)
            dy[b] = step
            return (ref_grad_x(name, x, y + dy, p) - ref_grad_x(name, x, y - dy, p)) / (2 * step)

        fd[..., b] = (4 * cd(h / 2) - cd(h)) / 3
    np.testing.assert_allclose(ref_cross_hess(name, x, y, p), fd, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("d", [2, 6, 16])
def test_hess_block_float32_accuracy_offset_data(d, rng):
    """fp32, points far from the origin: the GEMM form is centred."""
    k = kernels.MixtureRBF(jnp.asarray((0.5, 1.0, 4.0), jnp.float32))
    p = {"bws": (0.5, 1.0, 4.0), "ws": (1.0, 1.0, 1.0)}
    x, y, e = _hess_points(rng, d, n=40, m=30)
    x, y = x + 50.0, y + 50.0
    want = np.einsum("ijab,jb->ia", ref_cross_hess("mixture", x, y, p), e)
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    got = k.hess_block(f32(x), f32(y), f32(e))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5 * np.abs(want).max())


@pytest.mark.parametrize("d", [2, 3, 16])
def test_hess_block_default_second_derivatives_for_user_subclasses(d, rng):
    """Subclasses giving only profile/profile_grad (fn/fn_grad) get phi'' by autodiff."""

    @kernels._pytree(data=("c",))
    class Cauchy(kernels.RadialKernel):
        c: float = 0.7

        def profile(self, s):
            return 1.0 / (1.0 + self.c * s)

        def profile_grad(self, s):
            return -self.c / (1.0 + self.c * s) ** 2

    @kernels._pytree()
    class ExpDot(kernels.DotProductKernel):
        def fn(self, t, d):
            return jnp.exp(t / d)

        def fn_grad(self, t, d):
            return jnp.exp(t / d) / d

    x, y, e = (jnp.asarray(a) for a in _hess_points(rng, d))
    cases = [Cauchy(), ExpDot(), kernels.Polynomial(1), kernels.Polynomial(2, offset=0.0)]
    for k in cases:
        want = kernels.Kernel.hess_block(k, x, y, e)
        np.testing.assert_allclose(
            k.hess_block(x, y, e), want, rtol=1e-10, atol=1e-12, err_msg=type(k).__name__
        )
    s = jnp.linspace(0.0, 3.0, 7)
    np.testing.assert_allclose(Cauchy().profile_hess(s), 2 * 0.7**2 / (1 + 0.7 * s) ** 3)


@pytest.mark.parametrize(
    "k", [kernels.Gaussian(0.7), kernels.MixtureRBF((0.5, 2.0)), kernels.IMQ(1.0)]
)
def test_profile_ratios_are_the_profile_derivatives_over_the_profile(k):
    """Where a kernel states ``(phi'/phi, phi''/phi)`` (hess_block then forms phi alone),
    they equal the profile's derivatives by autodiff; the others state None."""
    s = jnp.linspace(0.0, 4.0, 9)
    ratios = k.profile_ratios()
    assert (ratios is None) == (not isinstance(k, kernels.Gaussian))
    if ratios is None:
        return
    d1 = jax.vmap(jax.grad(k.profile))(s)
    d2 = jax.vmap(jax.grad(jax.grad(k.profile)))(s)
    np.testing.assert_allclose(ratios[0] * k.profile(s), d1, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(ratios[1] * k.profile(s), d2, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("k", [kernels.Laplace(1.0), kernels.Energy()])
def test_hess_block_cusp_kernels_finite_at_coincident_points(k):
    x = jnp.array([[0.3, -0.2], [1.0, 2.0]])
    e = jnp.array([[1.0, 0.5], [-0.3, 2.0]])
    h = k.hess_block(x, x, e)
    assert np.all(np.isfinite(h))
    for arg in (0, 1):  # differentiable there too (no NaN from the s = 0 branch)
        g = jax.grad(lambda *a: jnp.sum(k.hess_block(*a)), argnums=arg)(x, x, e)
        assert np.all(np.isfinite(g))


RADIAL = ["gaussian", "mixture", "imq", "laplace", "rq", "energy", "sum_gl", "scaled_imq"]


def _grad_points(rng, d, n=23, m=31, shift=0.0):
    """``x [n, d]``, ``y [m, d]`` (3 coincident pairs), signed weights ``w [m, 2]``."""
    x = rng.normal(size=(n, d))
    y = rng.normal(size=(m, d)) * 1.3 + 0.4
    y[2], y[7], y[30] = x[0], x[5], x[5]
    return x + shift, y + shift, rng.normal(size=(m, 2))


def _pairwise(k, x, y, w):
    """The per-coordinate form of ``k.grad_block`` (through ``Sum`` / ``Scaled``)."""
    if isinstance(k, kernels.Sum):
        return sum(_pairwise(c, x, y, w) for c in k.kernels)
    if isinstance(k, kernels.Scaled):
        return k.scale * _pairwise(k.kernel, x, y, w)
    return kernels.RadialKernel._grad_block_pairwise(k, x, y, w)


@pytest.mark.parametrize("name", RADIAL)
@pytest.mark.parametrize("d", [2, 12])  # direct distances up to 8, GEMM above
@pytest.mark.parametrize("shift", [0.0, 100.0])
def test_radial_grad_block_matches_numpy_float64(name, d, shift, rng):
    """The closed form ``2 (x_i [G w]_i - [G (w y)]_i)`` (per-tile centring: data offset by
    100 too) and the per-coordinate form: within 1e-12 of the largest float64 entry."""
    k, p = case(name, d)
    x, y, w = _grad_points(rng, d, shift=shift)
    want = np.einsum("ijd,jc->icd", ref_grad_x(name, x, y, p), w)
    args = (jnp.asarray(x), jnp.asarray(y), jnp.asarray(w))
    tol = 1e-12 * np.abs(want).max()
    got = jax.jit(k.grad_block)(*args)
    assert got.shape == (23, 2, d)
    np.testing.assert_allclose(got, want, rtol=0, atol=tol, err_msg="grad_block")
    if d <= kernels.DIRECT_MAX_D:  # (above, its distances are the uncentred GEMM form)
        got = jax.jit(_pairwise, static_argnums=0)(k, *args)
        np.testing.assert_allclose(got, want, rtol=0, atol=tol, err_msg="pairwise")


@pytest.mark.parametrize("d", [2, 3, 8, 16])
@pytest.mark.parametrize("shift", [0.0, 100.0])
def test_radial_grad_block_float32_accuracy(d, shift, rng):
    """fp32 within 1e-5 of the largest float64 entry: bandwidths 0.3 to 3, signed weights,
    coincident pairs, data at the origin and offset by 100 (centred per tile)."""
    k = kernels.MixtureRBF(jnp.asarray((0.3, 1.0, 3.0), jnp.float32))
    p = {"bws": (0.3, 1.0, 3.0), "ws": (1.0, 1.0, 1.0)}
    x, y, w = (a.astype(np.float32) for a in _grad_points(rng, d, 300, 400, shift))
    want = np.einsum("ijd,jc->icd", ref_grad_x("mixture", x, y, p), w.astype(np.float64))
    got = jax.jit(k.grad_block)(jnp.asarray(x), jnp.asarray(y), jnp.asarray(w))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("name", ["laplace", "energy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cusp_kernel_grad_block_near_coincident_pairs(name, dtype, rng):
    """Kernels with a cusp keep the per-coordinate form up to DIRECT_MAX_D: ``|phi'(s)| ~
    1 / |x - y|``, so the closed form's two terms of a pair at distance ``r`` cancel to
    ``eps |x| / r`` (the check below fails for it: ~1e-3 relative in float32)."""
    k, p = case(name, 2)
    x, y, w = _grad_points(rng, 2, shift=1.0)
    y[3] = x[1] + 1e-6 * np.array([0.6, -0.8])  # near-coincident pairs, distinct in float32
    y[4] = x[2] - 1e-5 * np.array([0.8, 0.6])
    x, y, w = (a.astype(dtype) for a in (x, y, w))
    want = np.einsum("ijd,jc->icd", ref_grad_x(name, x, y, p), w.astype(np.float64))
    got = k.grad_block(jnp.asarray(x), jnp.asarray(y), jnp.asarray(w))
    tol = (1e-5 if dtype == np.float32 else 1e-12) * np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)


def test_hyperparameters_are_traced_leaves_and_structure_is_static():
    assert jax.tree_util.tree_leaves(kernels.Gaussian(2.0)) == [2.0]
    leaves = jax.tree_util.tree_leaves(kernels.Polynomial(3, scale=0.5, offset=1.0))
    assert leaves == [0.5, 1.0]  # degree is static metadata
    td1 = jax.tree_util.tree_structure(kernels.Polynomial(3, scale=0.5))
    td2 = jax.tree_util.tree_structure(kernels.Polynomial(2, scale=0.5))
    assert td1 != td2
    s = kernels.Gaussian(1.0) + 3.0 * kernels.IMQ(2.0)
    assert sorted(jax.tree_util.tree_leaves(s)) == [-0.5, 1.0, 2.0, 3.0]
    # round trip through flatten/unflatten keeps every value
    leaves, td = jax.tree_util.tree_flatten(s)
    s2 = jax.tree_util.tree_unflatten(td, leaves)
    x = jnp.ones(2)
    assert float(s2(x, 2 * x)) == pytest.approx(float(s(x, 2 * x)))


def test_new_bandwidth_does_not_retrace():
    traces = []

    @jax.jit
    def f(k, x, y):
        traces.append(1)
        return mmdflow.mmd2(x, y, k)

    x = jnp.ones((5, 2), jnp.float32)
    y = jnp.zeros((6, 2), jnp.float32)
    vals = [float(f(kernels.Gaussian(bw), x, y)) for bw in (0.5, 1.0, 2.0)]
    assert len(traces) == 1
    assert len(set(vals)) == 3  # the value really changed
    traces.clear()
    for bws in ((0.5, 1.0), (0.7, 3.0)):
        f(kernels.MixtureRBF(bws), x, y)
    assert len(traces) == 1


def test_bandwidth_gradient_matches_finite_differences(rng):
    x = jnp.asarray(rng.normal(size=(20, 2)))
    y = jnp.asarray(rng.normal(size=(15, 2)) + 0.5)

    def f(bw, impl):
        return mmdflow.mmd2(x, y, kernels.Gaussian(bw), sums=ops.SumConfig(impl, 8))

    for impl in ("dense", "blocked"):
        g = jax.grad(f)(0.8, impl)
        h = 1e-5
        fd = (f(0.8 + h, impl) - f(0.8 - h, impl)) / (2 * h)
        np.testing.assert_allclose(g, fd, rtol=1e-6)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: kernels.Gaussian(0.0), "bandwidth"),
        (lambda: kernels.Gaussian(-1.0), "bandwidth"),
        (lambda: kernels.Gaussian(float("nan")), "bandwidth"),
        (lambda: kernels.Laplace(-2.0), "bandwidth"),
        (lambda: kernels.MixtureRBF((1.0, -1.0)), "bandwidths"),
        (lambda: kernels.MixtureRBF((1.0, 2.0), weights=(1.0,)), "weights"),
        (lambda: kernels.IMQ(1.0, beta=0.5), "beta"),
        (lambda: kernels.IMQ(0.0), "scale"),
        (lambda: kernels.RationalQuadratic(1.0, alpha=0.0), "alpha"),
        (lambda: kernels.Polynomial(0), "degree"),
        (lambda: kernels.Polynomial(2.5), "degree"),
        (lambda: kernels.Scaled(kernels.Gaussian(1.0), -1.0), "scale"),
        (lambda: kernels.Sum(()), "kernels"),
        (lambda: kernels.Sum((kernels.Gaussian(1.0), 3.0)), "Kernel"),
    ],
)
def test_invalid_hyperparameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_median_bandwidth_matches_numpy(rng):
    x = rng.normal(size=(40, 3))
    y = rng.normal(size=(30, 3)) * 2
    z = np.concatenate([x, y])
    dist = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))
    want = np.median(dist[np.triu_indices(len(z), 1)])
    np.testing.assert_allclose(mmdflow.median_bandwidth(x, y), want, rtol=1e-12)
    # jit-able, and subsampling keeps it in the right range
    big = rng.normal(size=(5000, 2))
    mb = float(jax.jit(mmdflow.median_bandwidth)(big))
    assert 1.3 < mb < 2.0  # median distance of two standard 2-D normals is ~1.67
    assert np.isnan(mmdflow.median_bandwidth(np.array([[0.0], [np.nan], [1.0]])))


# ---------------------------------------------------------------- traced hyperparameters
# (make(p) with p a traced scalar, an invalid value of p for the kernel)
_TRACED = [
    ("gaussian", lambda p: kernels.Gaussian(p), -1.0),
    ("gaussian0", lambda p: kernels.Gaussian(p), 0.0),
    ("gaussian_inf", lambda p: kernels.Gaussian(p), np.inf),
    ("mixture_bw", lambda p: kernels.MixtureRBF((p, 2.0)), -0.5),
    ("mixture_w", lambda p: kernels.MixtureRBF((0.5, 2.0), (1.0, p)), -0.5),
    ("imq_scale", lambda p: kernels.IMQ(p), -1.2),
    ("imq_beta", lambda p: kernels.IMQ(1.2, beta=p), 0.5),
    ("laplace", lambda p: kernels.Laplace(p), -1.1),
    ("rq_bw", lambda p: kernels.RationalQuadratic(p), -0.8),
    ("rq_alpha", lambda p: kernels.RationalQuadratic(0.8, alpha=p), -2.0),
    ("poly_scale", lambda p: kernels.Polynomial(2, scale=p), -0.5),
    ("poly_offset", lambda p: kernels.Polynomial(2, offset=p), -1.0),
    ("scaled", lambda p: kernels.Scaled(kernels.Gaussian(1.0), p), -2.0),
]


@pytest.mark.parametrize(("name", "make", "bad"), _TRACED, ids=[c[0] for c in _TRACED])
def test_invalid_traced_hyperparameters_give_nan(name, make, bad, rng):
    """Under jit a hyperparameter cannot be checked: invalid values give NaN, not a value for
    some other valid hyperparameter (``Gaussian(-1)`` used to evaluate as ``Gaussian(1)``)."""
    x = rng.normal(size=(9, 3))
    y = rng.normal(size=(7, 3))
    e = rng.normal(size=(7, 3))
    w = rng.uniform(0.5, 1.0, size=7)
    good = abs(bad) if np.isfinite(bad) and bad != 0 else 1.3
    if name == "imq_beta":
        good = -0.5
    impls = ["dense", "blocked"]
    if isinstance(make(good), kernels.RadialKernel):
        impls.append("pallas")

    def sums(p, impl):
        cfg = ops.SumConfig(impl)
        out = {
            "matvec": ops.kernel_matvec(make(p), x, y, w, sums=cfg),
            "grad": ops.kernel_grad_matvec(make(p), x, y, w, sums=cfg),
            "mmd2": mmdflow.mmd2(x, y, make(p), sums=cfg),
        }
        if impl != "pallas":
            out["hess"] = ops.kernel_hessian_matvec(make(p), x, y, e, sums=cfg)
            out["gram"] = make(p).gram_block(jnp.asarray(x), jnp.asarray(y))
        return out

    # every impl's ops in one jitted program (one compilation, CI time) with the traced
    # hyperparameter p, and the concrete kernel (make(good) with a Python float: not traced)
    # on the dense reference
    traced = jax.jit(lambda p: {impl: sums(p, impl) for impl in impls})
    concrete = jax.jit(lambda: sums(good, "dense"))()
    outs, goods = traced(bad), traced(good)
    for impl in impls:
        for fname, out in outs[impl].items():
            assert np.all(np.isnan(np.asarray(out))), (impl, fname, np.ravel(out)[:3])
            # a valid traced value gives the result of the concrete kernel
            np.testing.assert_allclose(
                goods[impl][fname], concrete[fname], rtol=1e-12, atol=1e-14, err_msg=impl
            )
    if name in ("gaussian", "laplace", "rq_bw", "scaled"):
        # gradients in a valid traced hyperparameter stay finite (the guard is where(ok, p, nan))
        gfn = jax.grad(lambda p: mmdflow.mmd2(x, y, make(p), sums=ops.SumConfig("blocked")))
        assert np.isfinite(jax.jit(gfn)(good))


@pytest.mark.parametrize("d", [2, 12])
def test_median_bandwidth_subsample_matches_numpy_concrete_and_traced(d, rng):
    x = rng.normal(size=(1700, d))
    y = rng.normal(size=(900, d)) + 0.5
    x[5:9] = x[0]  # duplicates: zero distances count
    z = np.concatenate([x, y])
    z = z[np.round(np.linspace(0, len(z) - 1, 2000)).astype(int)]  # the documented subsample
    i, j = np.triu_indices(len(z), 1)
    want = np.median(np.sqrt(((z[i] - z[j]) ** 2).sum(-1)))
    got = mmdflow.median_bandwidth(x, y)  # concrete: float64 NumPy, no compilation
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(jax.jit(mmdflow.median_bandwidth)(x, y), want, rtol=1e-12)
    got32 = mmdflow.median_bandwidth(x.astype(np.float32), y.astype(np.float32))
    assert got32.dtype == jnp.float32
    np.testing.assert_allclose(got32, want, rtol=1e-6)


def test_median_bandwidth_of_concrete_points_compiles_nothing(rng, caplog):
    """Concrete inputs take the NumPy path: no XLA compilation (2.9 s on a first call with
    2,000 points before, op by op); shapes unused elsewhere so that no cache can hide it."""
    x = rng.normal(size=(1237, 3))
    y = rng.normal(size=(871, 3))
    with jax.log_compiles(True), caplog.at_level("WARNING"):
        mmdflow.median_bandwidth(x, y)
    assert not [r for r in caplog.records if "ompil" in r.getMessage()]
