"""MMD^2 estimators, variance, witness and its gradient vs float64 NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _refs import grad_x as ref_grad_x
from _refs import gram as ref_gram
from _refs import mmd2 as ref_mmd2
from jax.test_util import check_grads

import mmdflow
from mmdflow import kernels, ops

CASES = [
    ("gaussian", kernels.Gaussian(0.8), {"bw": 0.8}),
    ("imq", kernels.IMQ(1.2, beta=-0.7), {"c": 1.2, "beta": -0.7}),
    ("energy", kernels.Energy(), {}),
    ("poly", kernels.Polynomial(3), {"deg": 3, "gamma": 1 / 3, "c": 1.0}),
]


def _data(rng, n=23, m=17, d=3):
    return rng.normal(size=(n, d)), rng.normal(size=(m, d)) * 1.2 + 0.4


@pytest.mark.parametrize(("name", "k", "p"), CASES)
@pytest.mark.parametrize("impl", ["dense", "blocked"])
@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
@pytest.mark.parametrize("weighted", [False, True])
def test_mmd2_matches_numpy(name, k, p, impl, estimator, weighted, rng):
    x, y = _data(rng)
    a = rng.uniform(0.1, 1.0, size=len(x)) if weighted else np.ones(len(x))
    b = rng.uniform(0.1, 1.0, size=len(y)) if weighted else np.ones(len(y))
    want = ref_mmd2(
        ref_gram(name, x, x, p), ref_gram(name, y, y, p), ref_gram(name, x, y, p), a, b, estimator
    )
    kw = dict(wx=a, wy=b) if weighted else {}
    got = mmdflow.mmd2(x, y, k, estimator=estimator, sums=ops.SumConfig(impl, 8), **kw)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_unbiased_uniform_matches_textbook_formula(rng):
    x, y = _data(rng)
    n, m = len(x), len(y)
    p = {"bw": 0.8}
    Kxx, Kyy, Kxy = (ref_gram("gaussian", a, b, p) for a, b in ((x, x), (y, y), (x, y)))
    want = (
        (Kxx.sum() - np.trace(Kxx)) / (n * (n - 1))
        + (Kyy.sum() - np.trace(Kyy)) / (m * (m - 1))
        - 2 * Kxy.mean()
    )
    got = mmdflow.mmd2(x, y, kernels.Gaussian(0.8), estimator="unbiased")
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_linear_estimator(rng):
    x, y = _data(rng, n=21, m=30)
    p = {"bw": 0.8}
    g = lambda a, b: ref_gram("gaussian", a[None], b[None], p)[0, 0]
    P = 10
    h = [
        g(x[2 * i], x[2 * i + 1])
        + g(y[2 * i], y[2 * i + 1])
        - g(x[2 * i], y[2 * i + 1])
        - g(x[2 * i + 1], y[2 * i])
        for i in range(P)
    ]
    got = mmdflow.mmd2(x, y, kernels.Gaussian(0.8), estimator="linear")
    np.testing.assert_allclose(got, np.mean(h), rtol=1e-12)


def test_biased_never_negative_unbiased_not_clamped(rng):
    x = rng.normal(size=(50, 2)).astype(np.float32)
    k = kernels.Gaussian(1.0)
    assert float(mmdflow.mmd2(x, x, k)) == 0.0
    assert float(mmdflow.mmd2(x, x + 1e-4, k)) >= 0.0
    # same distribution: the unbiased estimate is negative for some draws and is not clamped
    vals = [
        float(
            mmdflow.mmd2(
                rng.normal(size=(10, 2)), rng.normal(size=(10, 2)), k, estimator="unbiased"
            )
        )
        for _ in range(20)
    ]
    assert min(vals) < 0.0


def test_energy_mmd_is_energy_distance(rng):
    x, y = _data(rng)
    D = lambda a, b: np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))
    want = 2 * D(x, y).mean() - D(x, x).mean() - D(y, y).mean()
    np.testing.assert_allclose(mmdflow.mmd2(x, y, kernels.Energy()), want, rtol=1e-12)
    # gradient is finite even when particles sit on target points
    g = jax.grad(lambda x: mmdflow.mmd2(x, jnp.asarray(y), kernels.Energy()))(jnp.asarray(y[:5]))
    assert np.all(np.isfinite(g))


def _variance_ref(x, y, p):
    """Brute force over explicit index tuples: unbiased zeta_1, zeta_2 of the U-statistic."""
    m = len(x)
    g = lambda a, b: ref_gram("gaussian", a, b, p)
    H = g(x, x) + g(y, y) - g(x, y) - g(y, x)
    idx = range(m)
    pairs = [H[i, j] for i in idx for j in idx if i != j]
    triples = [H[i, j] * H[i, l] for i in idx for j in idx for l in idx if len({i, j, l}) == 3]
    quads = [
        H[i, j] * H[a, b]
        for i in idx
        for j in idx
        for a in idx
        for b in idx
        if len({i, j, a, b}) == 4
    ]
    mean_sq = np.mean(quads)
    zeta1 = np.mean(triples) - mean_sq
    zeta2 = np.mean(np.square(pairs)) - mean_sq
    return 2 / (m * (m - 1)) * (2 * (m - 2) * zeta1 + zeta2)


@pytest.mark.parametrize("impl", ["dense", "blocked"])
def test_mmd2_variance_matches_brute_force(impl, rng):
    x, y = _data(rng, n=9, m=9)
    got = mmdflow.mmd2_variance(x, y, kernels.Gaussian(0.8), sums=ops.SumConfig(impl, 4))
    np.testing.assert_allclose(got, _variance_ref(x, y, {"bw": 0.8}), rtol=1e-9)


def test_mmd2_variance_is_unbiased_monte_carlo():
    """Mean of the variance estimates ~ the empirical variance of the U-statistic."""
    n, reps = 12, 4000
    k = kernels.Gaussian(1.0)
    keys = jax.random.split(jax.random.key(3), reps)

    def one(key):
        kx, ky = jax.random.split(key)
        x = jax.random.normal(kx, (n, 2))
        y = jax.random.normal(ky, (n, 2)) * 1.3 + 0.3
        kxy = mmdflow.ops.gram(k, x, y)
        u = mmdflow.mmd2(x, y, k, estimator="unbiased")
        u_paired = u + 2 * jnp.mean(kxy) - 2 * (jnp.sum(kxy) - jnp.trace(kxy)) / (n * (n - 1))
        return u_paired, mmdflow.mmd2_variance(x, y, k)

    est, var = jax.jit(jax.vmap(one))(keys)
    emp = float(np.var(np.asarray(est), ddof=1))
    assert float(np.mean(var)) == pytest.approx(emp, rel=0.12)


@pytest.mark.parametrize(("name", "k", "p"), CASES)
@pytest.mark.parametrize("impl", ["dense", "blocked"])
def test_witness_and_gradient_match_numpy(name, k, p, impl, rng):
    x, y = _data(rng)
    z = rng.normal(size=(11, 3))
    a = rng.uniform(0.1, 1, size=len(x))
    b = rng.uniform(0.1, 1, size=len(y))
    an, bn = a / a.sum(), b / b.sum()
    kw = dict(sums=ops.SumConfig(impl, 5))
    want = ref_gram(name, z, y, p) @ bn - ref_gram(name, z, x, p) @ an
    np.testing.assert_allclose(
        mmdflow.witness(z, x, y, k, wx=a, wy=b, **kw), want, rtol=1e-10, atol=1e-12
    )
    gwant = np.einsum("ijd,j->id", ref_grad_x(name, z, y, p), bn) - np.einsum(
        "ijd,j->id", ref_grad_x(name, z, x, p), an
    )
    got = mmdflow.witness_grad(z, x, y, k, wx=a, wy=b, **kw)
    np.testing.assert_allclose(got, gwant, rtol=1e-10, atol=1e-12)
    # unweighted means
    want_u = ref_gram(name, z, y, p).mean(1) - ref_gram(name, z, x, p).mean(1)
    np.testing.assert_allclose(mmdflow.witness(z, x, y, k, **kw), want_u, rtol=1e-10, atol=1e-12)


def test_particles_descend_along_witness_gradient(rng):
    x, y = _data(rng, n=40, m=30, d=2)
    k = kernels.Gaussian(1.0)
    n = len(x)
    # d MMD^2 / d x_i = -2/n witness_grad(x_i): checked against finite differences
    g = jax.grad(lambda x: mmdflow.mmd2(x, y, k))(jnp.asarray(x))
    np.testing.assert_allclose(g, -2.0 / n * mmdflow.witness_grad(x, x, y, k), rtol=1e-10)
    check_grads(
        jax.jit(lambda x: mmdflow.mmd2(x, y, k, sums=ops.SumConfig("blocked", 16))),
        (jnp.asarray(x),),
        1,
    )
    before = float(mmdflow.mmd2(x, y, k))
    after = float(mmdflow.mmd2(x + 0.1 * mmdflow.witness_grad(x, x, y, k), y, k))
    assert after < before


def _richardson(f, v, h=1e-3):
    """Gradient of ``f`` (float64 NumPy) at ``v`` by Richardson-extrapolated central
    differences: error O(h^4)."""
    v = np.asarray(v, np.float64)
    g = np.zeros_like(v)
    for i in np.ndindex(v.shape):
        e = np.zeros_like(v)
        e[i] = h
        g[i] = (8 * (f(v + e) - f(v - e)) - (f(v + 2 * e) - f(v - 2 * e))) / (12 * h)
    return g


_GAUSS = ("gaussian", kernels.Gaussian, {"bw": 0.8}, "bw")


@pytest.mark.parametrize(
    ("name", "make", "p", "leaf", "estimator"),
    [
        (*_GAUSS, "biased"),
        (*_GAUSS, "unbiased"),
        ("imq", lambda c: kernels.IMQ(c, beta=-0.7), {"c": 1.2, "beta": -0.7}, "c", "unbiased"),
        (  # three parameters: more than mmd.KERNEL_COEFFICIENTS_MAX_PARAMS, autodiff of the sums
            "mixture",
            lambda bws: kernels.MixtureRBF(bws, jnp.array([0.5, 0.3, 0.2])),
            {"bws": np.array([0.6, 1.0, 1.7]), "ws": [0.5, 0.3, 0.2]},
            "bws",
            "biased",
        ),
        (
            "poly",
            lambda _: kernels.Polynomial(3),
            {"deg": 3, "gamma": 1 / 3, "c": 1.0},
            None,
            "biased",
        ),
    ],
)
def test_mmd2_derivatives_match_finite_differences_of_numpy(name, make, p, leaf, estimator, rng):
    # the closed-form derivatives of the three kernel sums (mmd._mean_embedding_products_jvp),
    # in points, weights and kernel parameters (one: forward-mode coefficients; three: autodiff),
    # on several tiles and with coincident points, against differences of the float64 NumPy
    # estimate; and forward mode against reverse
    x, y = _data(rng, n=8, m=6)
    x[3], y[0] = x[1], x[0]
    a, b = rng.uniform(0.2, 1, size=8), rng.uniform(0.2, 1, size=6)
    theta = p[leaf] if leaf else 0.0

    def ref(x, y, a, b, theta):
        q = {**p, leaf: theta} if leaf else p
        grams = (ref_gram(name, u, v, q) for u, v in ((x, x), (y, y), (x, y)))
        return ref_mmd2(*grams, a, b, estimator)

    args = (x, y, a, b, theta)
    want = [
        _richardson(lambda v, i=i: ref(*args[:i], v, *args[i + 1 :]), args[i]) for i in range(5)
    ]
    sums = ops.SumConfig("blocked", 3)
    f = lambda x, y, a, b, t: mmdflow.mmd2(
        x, y, make(t), estimator=estimator, wx=a, wy=b, sums=sums
    )
    got = jax.jit(jax.grad(f, argnums=(0, 1, 2, 3, 4)))(*args)
    for g, w in zip(got[: 5 if leaf else 4], want, strict=False):
        np.testing.assert_allclose(g, w, rtol=1e-7, atol=1e-9)
    t = [rng.normal(size=np.shape(v)) for v in args]
    _, jvp = jax.jvp(f, args, tuple(t))
    dot = sum(np.sum(g * ti) for g, ti in zip(got, t, strict=True))
    np.testing.assert_allclose(jvp, dot, rtol=1e-12)


@pytest.mark.parametrize(("d", "shift"), [(3, 1e4), (64, 100.0)])
@pytest.mark.parametrize("name", ["gaussian", "laplace"])
def test_float32_gradient_of_mmd2_vs_float64(name, d, shift, rng):
    # d MMD^2 / dx_i = 2/n (mean_j grad k(x_i, x_j) - mean_j grad k(x_i, y_j)), coincident
    # pairs included, far from the origin (the float32 points themselves are the reference's)
    x = (rng.normal(size=(300, d)) + shift).astype(np.float32).astype(np.float64)
    y = (rng.normal(size=(250, d)) * 1.2 + shift + 0.3).astype(np.float32).astype(np.float64)
    y[:20] = x[:20]
    k, p = kernels.Gaussian(np.sqrt(d)), {"bw": np.sqrt(d)}
    if name == "laplace":
        k = kernels.Laplace(np.sqrt(d))
    want = 2 / len(x) * (ref_grad_x(name, x, x, p).mean(1) - ref_grad_x(name, x, y, p).mean(1))
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    got = jax.grad(lambda x: mmdflow.mmd2(x, f32(y), k))(f32(x))
    assert got.dtype == jnp.float32
    err = np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want))
    assert err < 1e-5, err


def test_mmd2_second_derivatives_in_points(rng):
    # Hessians differentiate the kernel sums inside the closed-form first derivatives: forward
    # over reverse and reverse over reverse against central differences of the gradient (whose
    # values the test above checks against NumPy), with a coincident pair
    x, y = _data(rng, n=6, m=5, d=2)
    y[0] = x[0]
    v, u = rng.normal(size=x.shape), rng.normal(size=y.shape)
    f = lambda x, y: mmdflow.mmd2(x, y, kernels.Gaussian(0.9), sums=ops.SumConfig("blocked", 4))
    grad = jax.jit(jax.grad(f, argnums=(0, 1)))
    fwd = jax.jit(lambda x, y: jax.jvp(lambda x, y: grad(x, y), (x, y), (v, u))[1])
    gv = lambda x, y: jnp.vdot(grad(x, y)[0], v) + jnp.vdot(grad(x, y)[1], u)
    rev = jax.jit(jax.grad(gv, argnums=(0, 1)))  # H (v, u): the Hessian is symmetric
    g = lambda t: grad(x + t * v, y + t * u)
    h = 1e-3  # Richardson-extrapolated central differences: error O(h^4)
    want = [
        (8 * (p1 - m1) - (p2 - m2)) / (12 * h)
        for p1, m1, p2, m2 in zip(g(h), g(-h), g(2 * h), g(-2 * h), strict=True)
    ]
    for got in (fwd(x, y), rev(x, y)):
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("impl", ["dense", "blocked"])
def test_gradients_wrt_points_weights_and_bandwidth(impl, rng):
    x, y = _data(rng, n=9, m=7)
    a = rng.uniform(0.2, 1, size=9)
    kw = dict(sums=ops.SumConfig(impl, 4))
    for est in ("biased", "unbiased"):
        f = lambda x, y, a, bw: mmdflow.mmd2(x, y, kernels.Gaussian(bw), estimator=est, wx=a, **kw)
        check_grads(jax.jit(f), (x, y, a, 0.9), order=1, modes=["rev"])
    f = lambda z, bw: mmdflow.witness_grad(z, x, y, kernels.IMQ(bw), **kw)
    check_grads(jax.jit(f), (x[:4], 1.1), order=1, modes=["rev"])


def test_jit_and_vmap(rng):
    x = jnp.asarray(rng.normal(size=(3, 20, 2)))
    y = jnp.asarray(rng.normal(size=(25, 2)))
    k = kernels.Gaussian(1.0)
    f = jax.jit(jax.vmap(lambda x: mmdflow.mmd2(x, y, k, estimator="unbiased")))
    np.testing.assert_allclose(
        f(x), [mmdflow.mmd2(xi, y, k, estimator="unbiased") for xi in x], rtol=1e-12
    )
    bws = jnp.array([0.5, 1.0, 2.0])
    v = jax.vmap(lambda bw: mmdflow.mmd2(x[0], y, kernels.Gaussian(bw)))(bws)
    np.testing.assert_allclose(
        v, [mmdflow.mmd2(x[0], y, kernels.Gaussian(b)) for b in (0.5, 1.0, 2.0)]
    )


def test_nan_inputs_give_nan_not_plausible_numbers(rng):
    x, y = _data(rng)
    x[2, 1] = np.nan
    k = kernels.Gaussian(1.0)
    for est in ("biased", "unbiased", "linear"):
        assert np.isnan(mmdflow.mmd2(x, y, k, estimator=est)), est
    assert np.isnan(mmdflow.mmd2_variance(x[:17], y, k))
    assert np.all(np.isnan(mmdflow.witness_grad(y, x, y, k)))
    y2 = y.copy()
    y2[0, 0] = np.inf
    assert np.isnan(mmdflow.mmd2(x[3:], y2, kernels.Energy()))
