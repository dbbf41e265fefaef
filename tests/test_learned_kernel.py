"""Learned kernels ``K(phi(x), phi(y))``: kernel sums, MMD^2, witness and generator directions
against float64 NumPy on explicitly precomputed features (closed-form Jacobians)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmdflow import critics, kernelized, kernels, mmd, ops, sobolev

S = 1.3  # base Gaussian bandwidth


def _feat(p, x):
    return jnp.tanh(x @ p["w"] + p["b"][None]) @ p["v"]


def _np_feat(p, x):
    """Features ``[n, D]`` and Jacobians ``[n, D, d]`` of ``_feat`` in float64 NumPy."""
    t = np.tanh(x @ p["w"] + p["b"])
    jac = np.einsum("ke,ne,de->nkd", p["v"].T, 1 - t * t, p["w"])
    return t @ p["v"], jac


def _np_gauss(a, b):
    r = a[:, None, :] - b[None, :, :]
    return np.exp(-(r * r).sum(-1) / (2 * S * S)), r


@pytest.fixture
def case(rng):
    p = {
        "w": rng.normal(size=(3, 5)),
        "b": rng.normal(size=5),
        "v": rng.normal(size=(5, 4)),
    }
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(9, 3)) + 0.5
    w, e = rng.normal(size=9), rng.normal(size=(9, 3))
    k = kernels.FeatureKernel(kernels.Gaussian(S), _feat, jax.tree.map(jnp.asarray, p))
    return k, p, x, y, w, e


@pytest.mark.parametrize("impl", ["dense", "blocked", "pallas"])
def test_kernel_sums_equal_the_base_kernel_on_precomputed_features(case, impl):
    k, p, x, y, w, e = case
    fx, jx = _np_feat(p, x)
    fy, jy = _np_feat(p, y)
    kxy, r = _np_gauss(fx, fy)
    kw = {"sums": ops.SumConfig(impl, (4, 4) if impl != "dense" else None)}
    w2 = np.stack([w, -2 * w], 1)  # k = 2 sums at once

    @jax.jit
    def sums(k):
        hess = None if impl == "pallas" else ops.kernel_hessian_matvec(k, x, y, e, **kw)
        mv, gm = ops.kernel_matvec(k, x, y, w, **kw), ops.kernel_grad_matvec(k, x, y, w, **kw)
        return mv, gm, ops.kernel_value_and_grad_matvec(k, x, y, w2, **kw), hess

    mv, gm, (v2, g2), hess = sums(k)
    np.testing.assert_allclose(mv, kxy @ w, rtol=1e-12)
    np.testing.assert_allclose(v2, kxy @ w2, rtol=1e-12)
    # sum_j w_j J(x_i)^T grad_1 K(phi x_i, phi y_j), grad_1 K = -r K / s^2
    g = np.einsum("nkd,nk->nd", jx, np.einsum("nm,nmk->nk", -kxy * w / S**2, r))
    np.testing.assert_allclose(gm, g, atol=1e-12)
    np.testing.assert_allclose(g2[:, 1], -2 * g, atol=1e-12)
    if impl != "pallas":
        # J(x_i)^T sum_j H_K(phi x_i, phi y_j) J(y_j) e_j, H_K = (I / s^2 - r r^T / s^4) K
        t = np.einsum("mkd,md->mk", jy, e)
        h = kxy[..., None] * (t[None] / S**2 - r * np.einsum("nmk,mk->nm", r, t)[..., None] / S**4)
        want = np.einsum("nkd,nk->nd", jx, h.sum(1))
        np.testing.assert_allclose(hess, want, atol=1e-12)


def test_mmd2_and_witness_gradient_equal_precomputed_features(case):
    k, p, x, y, _, _ = case
    fx, jx = _np_feat(p, x)
    fy, _ = _np_feat(p, y)
    kxx, _ = _np_gauss(fx, fx)
    kyy, _ = _np_gauss(fy, fy)
    kxy, r = _np_gauss(fx, fy)
    n, m = len(x), len(y)
    biased = kxx.mean() + kyy.mean() - 2 * kxy.mean()
    unbiased = (kxx.sum() - n) / (n * (n - 1)) + (kyy.sum() - m) / (m * (m - 1)) - 2 * kxy.mean()

    @jax.jit
    def values(k, x):
        est = [mmd.mmd2(x, y, k, estimator=e) for e in ("biased", "unbiased", "linear")]
        # d MMD^2 / dx (autodiff through the pulled-back sums)
        return est, mmd.witness_grad(x, x, y, k), jax.grad(lambda xv: mmd.mmd2(xv, y, k))(x)

    (b, u, lin), wg, dx = values(k, jnp.asarray(x))
    np.testing.assert_allclose(b, biased, rtol=1e-12)
    np.testing.assert_allclose(u, unbiased, rtol=1e-12)
    # linear estimator: pairs (x0, x1), (x2, x3), (x4, x5) and the same of y
    kxx2, kyy2 = kxx[[0, 2, 4], [1, 3, 5]], kyy[[0, 2, 4], [1, 3, 5]]
    kx1y2, kx2y1 = kxy[[0, 2, 4], [1, 3, 5]], kxy[[1, 3, 5], [0, 2, 4]]
    np.testing.assert_allclose(lin, np.mean(kxx2 + kyy2 - kx1y2 - kx2y1), rtol=1e-12)
    # witness gradient at x: mean_j grad k(x, y_j) - mean_i grad k(x, x_i)
    _, rxx = _np_gauss(fx, fx)
    gf = np.einsum("nm,nmk->nk", -kxy / S**2, r) / m - np.einsum("nm,nmk->nk", -kxx / S**2, rxx) / n
    np.testing.assert_allclose(wg, np.einsum("nkd,nk->nd", jx, gf), atol=1e-12)
    # d MMD^2 / dx_i = -2/n witness_grad(x_i)
    np.testing.assert_allclose(dx, -2 / n * np.einsum("nkd,nk->nd", jx, gf), atol=1e-12)


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_mmd2_gradient_in_the_feature_parameters(case, estimator):
    # the critic's gradient: closed-form derivatives in the features, pulled back through the
    # feature map, against central differences of the float64 NumPy estimate
    k, p, x, y, _, _ = case
    n, m = len(x), len(y)

    def ref(q):
        kxx, kyy, kxy = (
            _np_gauss(_np_feat(q, u)[0], _np_feat(q, v)[0])[0] for u, v in ((x, x), (y, y), (x, y))
        )
        if estimator == "biased":
            return kxx.mean() + kyy.mean() - 2 * kxy.mean()
        return (kxx.sum() - n) / (n * (n - 1)) + (kyy.sum() - m) / (m * (m - 1)) - 2 * kxy.mean()

    f = lambda q: mmd.mmd2(x, y, kernels.FeatureKernel(k.base, _feat, q), estimator=estimator)
    got = jax.jit(jax.grad(f))(k.params)
    h = 1e-6
    for name, leaf in p.items():
        want = np.zeros_like(leaf)
        for i in np.ndindex(leaf.shape):
            e = np.zeros_like(leaf)
            e[i] = h
            want[i] = (ref({**p, name: leaf + e}) - ref({**p, name: leaf - e})) / (2 * h)
        np.testing.assert_allclose(got[name], want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("kind", ["kernelized", "param-sobolev", "mmd-gd"])
def test_directions_in_feature_space_equal_the_generator_seen_through_phi(case, rng, kind):
    """Directions with the learned kernel equal those of ``phi o g`` with the base kernel on
    ``phi(y)``: the penalties of these kinds live in parameter space."""
    k, p, _, y, _, _ = case
    th = {"a": jnp.asarray(rng.normal(size=(2, 6))), "c": jnp.asarray(rng.normal(size=(6, 3)))}
    gen = lambda t, z: jnp.tanh(z @ t["a"]) @ t["c"]
    z = jnp.asarray(rng.normal(size=(8, 2)))
    kw = dict(kind=kind, cg_tol=1e-13, cg_maxiter=500)
    v, info = jax.jit(lambda k: kernelized.direction(gen, th, z, y, k, 0.1, **kw))(k)
    fy, _ = _np_feat(p, y)
    through = lambda t, z: _feat(k.params, gen(t, z))
    v_ref, info_ref = jax.jit(
        lambda fy: kernelized.direction(through, th, z, fy, kernels.Gaussian(S), 0.1, **kw)
    )(jnp.asarray(fy))
    for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(v_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(info["mmd2"], info_ref["mmd2"], rtol=1e-12)


def test_features_are_computed_once_per_point_set_not_per_tile(case):
    k, p, x, y, w, _ = case
    calls = []

    def feat(q, xs):
        jax.debug.callback(lambda: calls.append(1))
        return _feat(q, xs)

    kc = kernels.FeatureKernel(k.base, feat, k.params)
    # 7 x 9 points in 2 x 3 tiles: 12 tiles; phi runs once on x and once on y
    out = ops.kernel_matvec(kc, x, y, w, sums=ops.SumConfig("blocked", (4, 3)))
    jax.block_until_ready(out)
    assert len(calls) == 2
    calls.clear()
    jax.block_until_ready(
        ops.kernel_grad_matvec(kc, x, y, w, sums=ops.SumConfig("blocked", (4, 3)))
    )
    assert len(calls) <= 3  # phi(x) with its VJP, phi(y)


def test_nnx_module_as_feature_map_and_one_compile_per_shape(rng):
    feats = critics.MLPFeatures(2, out_dim=4, hidden=(8,), rngs=nnx.Rngs(0))
    k = critics.learned_kernel(kernels.Gaussian(1.0), feats)
    x, y = jnp.asarray(rng.normal(size=(10, 2))), jnp.asarray(rng.normal(size=(12, 2)))
    fx, fy = feats(x), feats(y)
    f = jax.jit(lambda kk: mmd.mmd2(x, y, kk))
    np.testing.assert_allclose(f(k), jax.jit(mmd.mmd2)(fx, fy, kernels.Gaussian(1.0)), rtol=1e-6)
    other = critics.learned_kernel(
        kernels.Gaussian(2.0), feats, jax.tree.map(lambda a: a * 2, k.params)
    )
    f(other)
    # a fresh module with the same architecture: same graph definition, no recompile
    f(
        critics.learned_kernel(
            kernels.Gaussian(1.0), critics.MLPFeatures(2, 4, (8,), rngs=nnx.Rngs(3))
        )
    )
    assert f._cache_size() == 1


def test_bad_feature_kernels():
    with pytest.raises(ValueError, match="base"):
        kernels.FeatureKernel(lambda a, b: 0.0, _feat, {})
    with pytest.raises(ValueError, match="callable"):
        kernels.FeatureKernel(kernels.Gaussian(1.0), None, {})
    k = kernels.FeatureKernel(kernels.Gaussian(1.0), lambda p, x: x[:, 0], {})
    with pytest.raises(ValueError, match=r"\[n, D\]"):
        ops.kernel_matvec(k, jnp.ones((3, 2)), jnp.ones((3, 2)), jnp.ones(3))


def test_dense_cross_hessian_and_grad_penalty_direction(case, rng):
    """The dense derivative Gram of a feature kernel (Cholesky solves of ``"grad-penalty"``)
    equals ``J(x_i)^T H_K J(x_j)`` in NumPy, and both solvers give the same direction."""
    k, p, x, y, _, _ = case
    fx, jx = _np_feat(p, x)
    kxx, r = _np_gauss(fx, fx)
    d_feat = fx.shape[1]
    hk = kxx[:, :, None, None] * (
        np.eye(d_feat) / S**2 - r[..., :, None] * r[..., None, :] / S**4
    )  # [n, n, D, D]
    want = np.einsum("iak,ijab,jbl->ikjl", jx, hk, jx).reshape(x.size, x.size)
    got = jax.jit(sobolev.cross_hessian_matrix)(k, jnp.asarray(x))
    np.testing.assert_allclose(got, want, atol=1e-12)
    th = {"a": jnp.asarray(rng.normal(size=(2, 3)))}
    z = jnp.asarray(rng.normal(size=(7, 2)))
    gen = lambda t, z: jnp.tanh(z @ t["a"])
    run = jax.jit(
        lambda k, solver: kernelized.direction(
            gen, th, z, y, k, 0.1, kind="grad-penalty", solver=solver, cg_tol=1e-13, cg_maxiter=500
        ),
        static_argnums=1,
    )
    (v1, _), (v2, _) = run(k, "cholesky"), run(k, "cg")
    np.testing.assert_allclose(v1["a"], v2["a"], rtol=1e-8, atol=1e-12)
