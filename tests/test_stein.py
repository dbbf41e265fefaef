"""Density targets: densities, the Stein kernel and KSD^2, SVGD and KSD descent.

References are float64 NumPy written from the formulas, never the code under test: the
Gaussian-kernel Stein kernel ``k_p = k [s_x.s_y + (s_x - s_y).r / h^2 + d / h^2 -
|r|^2 / h^4]`` (``r = x - y``), Gaussian log-densities and scores, Liu & Wang's SVGD
update, ``KSD^2`` and its particle gradient by central differences; Stein's identity
``E_p k_p(., y) = 0`` by Monte Carlo with a tolerance of 5 standard errors.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmdflow import densities, fields, flows, kernels, ops
from mmdflow.ksd import ksd2

H = 0.9  # Gaussian bandwidth
MEAN = np.array([1.0, -0.5])
COV = np.array([[1.0, 0.3], [0.3, 0.5]])
P = densities.Gaussian(mean=tuple(MEAN), cov=COV.tolist())


def _k(a, b, h=H):
    r2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return np.exp(-r2 / (2 * h**2))


def _stein_np(x, sx, y, sy, h=H):
    """``[n, m]`` Stein kernel of the Gaussian kernel, from the formula."""
    r = x[:, None, :] - y[None, :, :]
    r2 = (r**2).sum(-1)
    ss = sx @ sy.T
    sxr = np.einsum("id,ijd->ij", sx, r)
    syr = np.einsum("jd,ijd->ij", sy, r)
    d = x.shape[1]
    return _k(x, y, h) * (ss + (sxr - syr) / h**2 + d / h**2 - r2 / h**4)


def _score_np(x):
    return -(x - MEAN) @ np.linalg.inv(COV)


def _ksd2_np(x, w, h=H):
    s = _score_np(x)
    return w @ _stein_np(x, s, x, s, h) @ w


def _rand(n, d, seed=0, scale=1.0):
    return np.random.default_rng(seed).normal(size=(n, d)) * scale


# ---------------------------------------------------------------- densities
def test_gaussian_log_density_and_score_match_numpy():
    with jax.enable_x64(True):
        x = _rand(5, 2)
        diff = x - MEAN
        inv = np.linalg.inv(COV)
        ref = -0.5 * np.einsum("id,de,ie->i", diff, inv, diff)
        ref -= 0.5 * np.log(np.linalg.det(2 * np.pi * COV))
        lp, s = densities._values(P, jnp.asarray(x))  # what score() checks and returns
        np.testing.assert_allclose(lp, ref, rtol=1e-12)
        np.testing.assert_allclose(s, _score_np(x), rtol=1e-12)
        np.testing.assert_allclose(densities.score(P, x), _score_np(x), rtol=1e-12)


def _sample_np(name, n, rng):
    """Exact samples of the built-in density ``name`` at its defaults, from the definitions."""
    u = rng.normal(size=(n, 2))
    if name == "gaussian":  # N(0, I)
        return u
    if name == "mixture":  # modes (+-2, 0), unit scales, equal weights
        return u + np.stack([np.where(rng.random(n) < 0.5, -2.0, 2.0), np.zeros(n)], 1)
    if name == "banana":  # variance 4, twist 0.25
        x1 = 2.0 * u[:, 0]
        return np.stack([x1, u[:, 1] - 0.25 * (x1**2 - 4.0)], 1)
    v = 3.0 * u[:, 0]  # funnel, scale 3
    return np.stack([v, np.exp(v / 2) * u[:, 1]], 1)


def test_stein_identity_holds_for_every_builtin_density():
    """E_{x ~ p} k_p(x, y0) = 0 (Monte Carlo): each density's log-density and score."""
    ks = kernels.Stein(kernels.Gaussian(1.0), 2)
    y0 = jnp.asarray([[0.5, -0.3], [-1.0, 1.0]])
    names = sorted(densities.DENSITIES)
    rng = np.random.default_rng(0)
    xs = [_sample_np(name, 4000, rng) for name in names]

    @jax.jit
    def values(xs):  # per density: k_p(x, y0) for exact samples, and samples shifted by 1
        out = []
        for name, x in zip(names, xs, strict=True):
            p = densities.DENSITIES[name]
            zy = kernels.stein_points(p, y0)
            out.append(ks.gram_block(kernels.stein_points(p, x), zy))
            out.append(ks.gram_block(kernels.stein_points(p, x + 1.0), zy))
        return out

    with jax.enable_x64(True):
        vals = [np.asarray(v) for v in values(xs)]
    for name, exact, shifted in zip(names, vals[::2], vals[1::2], strict=True):
        se = exact.std(axis=0) / np.sqrt(len(exact))
        assert np.all(np.abs(exact.mean(axis=0)) < 5 * se), (name, exact.mean(axis=0), se)
        # and the kernel is not trivially zero: shifted samples violate it
        assert np.any(np.abs(shifted.mean(axis=0)) > 10 * se), name


def test_density_parameters_are_checked():
    with pytest.raises(ValueError, match="cov"):
        densities.Gaussian(mean=(0.0, 0.0), cov=((1.0, 2.0), (2.0, 1.0)))
    with pytest.raises(ValueError, match="scales"):
        densities.GaussianMixture(scales=(1.0,))
    with pytest.raises(ValueError, match="twist"):
        densities.Banana(twist=-1.0)
    with pytest.raises(ValueError, match="scale"):
        densities.Funnel(scale=0.0)
    assert hash(densities.Gaussian()) == hash(densities.Gaussian())  # a jit cache key


# ---------------------------------------------------------------- the Stein kernel
@pytest.mark.parametrize("d", [2, 11])  # direct differences / the centred GEMM form
def test_stein_kernel_matches_the_numpy_closed_form(d):
    with jax.enable_x64(True):
        x, sx = _rand(7, d, 1) + 3.0, _rand(7, d, 2)
        y, sy = _rand(5, d, 3) + 3.0, _rand(5, d, 4)
        ref = _stein_np(x, sx, y, sy)
        zx, zy = np.concatenate([x, sx], 1), np.concatenate([y, sy], 1)
        ks = kernels.Stein(kernels.Gaussian(H), d)
        k2 = kernels.Stein(2.0 * kernels.Gaussian(H), d)  # not radial: autodiff tiles
        w = _rand(5, 1, 5)[:, 0]

        @jax.jit
        def values(zx, zy, w):
            if d > kernels.DIRECT_MAX_D:  # the GEMM form of the tiles only
                return (ks.gram_block(zx, zy),)
            blocked = ops.kernel_matvec(ks, zx, zy, w, sums=ops.SumConfig("blocked", (4, 2)))
            return ks.gram_block(zx, zy), ks(zx[0], zy[1]), k2.gram_block(zx, zy), blocked

        out = values(zx, zy, w)
        np.testing.assert_allclose(out[0], ref, rtol=1e-10, atol=1e-12)
        if d <= kernels.DIRECT_MAX_D:
            np.testing.assert_allclose(out[1], ref[0, 1], rtol=1e-10)  # the point-wise form
            np.testing.assert_allclose(out[2], 2 * ref, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(out[3], ref @ w, rtol=1e-10, atol=1e-12)


def test_ksd2_v_and_u_statistics_match_numpy():
    with jax.enable_x64(True):
        x = _rand(9, 2, 6)
        w = np.abs(_rand(9, 1, 7)[:, 0]) + 0.1
        w /= w.sum()
        s = _score_np(x)
        kp = _stein_np(x, s, x, s)
        v = w @ kp @ w
        u = (v - (w * w) @ np.diag(kp)) / (1 - (w * w).sum())
        kern = kernels.Gaussian(H)

        @jax.jit
        def values(x, w):
            out = ksd2(x, P, kern, wx=w), ksd2(x, P, kern, wx=w, u_statistic=True)
            return *out, ksd2(x, P, kern, u_statistic=True)

        got_v, got_u, got_uniform = values(x, w)
        np.testing.assert_allclose(got_v, v, rtol=1e-10)
        np.testing.assert_allclose(got_u, u, rtol=1e-10)
        # uniform weights: the mean over pairs i != j
        np.testing.assert_allclose(got_uniform, (kp.sum() - np.trace(kp)) / (9 * 8), rtol=1e-10)


# ---------------------------------------------------------------- the fields
def _weights(n, seed=8):
    w = np.abs(_rand(n, 1, seed)[:, 0]) + 0.2
    return w / w.sum()


def _velocity(field, x, w, z):
    """The field fitted on ``x`` (weights ``w``) at the points ``z``, and its aux."""

    @jax.jit
    def f(x, w, z):
        vel, _, aux = field.fit(x, w, None, None, None, None, 0)
        return vel.fn(z), aux

    return f(jnp.asarray(x), jnp.asarray(w), jnp.asarray(z))


def test_one_svgd_step_equals_a_numpy_svgd_step():
    with jax.enable_x64(True):
        x, w, eps = _rand(8, 2, 9), _weights(8), 0.3
        s = _score_np(x)
        kxx = _k(x, x)  # symmetric: kxx[j, i] = k(x_j, x_i)
        grad_xj = -(x[:, None, :] - x[None, :, :]) / H**2 * kxx[:, :, None]  # [j, i, d]
        phi = np.einsum("j,ji,jd->id", w, kxx, s) + np.einsum("j,jid->id", w, grad_xj)
        flow = flows.ParticleFlow(fields.SVGDField(P, kernels.Gaussian(H)), step_size=eps)
        state, aux = jax.jit(flow.step)(flow.init(x, jax.random.key(0), w))
        np.testing.assert_allclose(state.x, x + eps * phi, rtol=1e-10, atol=1e-12)
        assert np.isnan(aux["critic"]) and aux["kinetic"] > 0


def test_svgd_with_a_non_translation_invariant_kernel():
    """``k(x, y) = x.y``: ``grad_{x_j} k(x_j, z) = z`` (the forward-mode repulsion)."""
    with jax.enable_x64(True):
        x, w, z = _rand(6, 2, 10), _weights(6), _rand(3, 2, 11)
        phi = np.einsum("j,zj,jd->zd", w, z @ x.T, _score_np(x)) + z * w.sum()
        v, _ = _velocity(fields.SVGDField(P, kernels.Linear()), x, w, z)
        np.testing.assert_allclose(v, phi, rtol=1e-10, atol=1e-12)


def test_ksd_velocity_is_the_particle_gradient_of_ksd2():
    """``v(x_i) = -grad_{x_i} KSD^2 / w_i`` (central differences of the NumPy KSD^2)."""
    with jax.enable_x64(True):
        x, w, h = _rand(6, 2, 12), _weights(6), 1e-5
        grad = np.zeros_like(x)
        for i in range(6):
            for a in range(2):
                e = np.zeros_like(x)
                e[i, a] = h
                grad[i, a] = (_ksd2_np(x + e, w) - _ksd2_np(x - e, w)) / (2 * h)
        v, aux = _velocity(fields.KSDField(P, kernels.Gaussian(H)), x, w, x)
        np.testing.assert_allclose(v, -grad / w[:, None], rtol=1e-6)
        np.testing.assert_allclose(aux["critic"], _ksd2_np(x, w), rtol=1e-10)


def test_zero_weight_particles_drop_out():
    """Padding rows (zero weight, as on a device mesh) change neither field."""
    x, w = _rand(10, 2, 13), _weights(10)
    xp = np.concatenate([x, x[-1:] + 5.0, x[-1:]])
    wp = np.concatenate([w, [0.0, 0.0]])
    z = jnp.asarray(_rand(4, 2, 14))
    fs = [cls(P, kernels.Gaussian(H)) for cls in (fields.SVGDField, fields.KSDField)]

    @jax.jit
    def velocities(x, w):
        return [f.fit(x, w, None, None, None, None, 0)[0].fn(z) for f in fs]

    a = velocities(jnp.asarray(x), jnp.asarray(w))
    b = velocities(jnp.asarray(xp), jnp.asarray(wp))
    for f, va, vb in zip(fs, a, b, strict=True):
        np.testing.assert_allclose(va, vb, rtol=1e-5, atol=1e-6, err_msg=type(f).__name__)


@pytest.mark.parametrize("name", ["svgd", "ksd", "srmmd"])
def test_particles_reach_the_gaussian_mean_and_covariance(name):
    """100 particles from N(0, I), 300 steps at the defaults for bandwidth 1: mean within
    0.05, covariance entries within 0.1 (measured: SVGD 0.001 and 0.015, KSD descent 0.005
    and 0.010, SrMMD with the Stein kernel 0.0001 and 0.005), KSD^2 down 100x (``flows.run``'s
    records: test_flow_contract.py)."""
    x0 = jax.random.normal(jax.random.key(0), (100, 2))
    kw = flows.FLOWS[name].defaults_for(kernels.Gaussian(1.0), 1.0, 100, 2, None, logp=P)
    flow = flows.make(name, **kw)
    state = flow.init(x0, jax.random.key(1))
    state = jax.jit(lambda s: flows.scan(flow, s, None, 300)[0])(state)
    x = np.asarray(state.x, np.float64)
    assert np.abs(x.mean(0) - MEAN).max() < 0.05, x.mean(0)
    assert np.abs(np.cov(x.T) - COV).max() < 0.1, np.cov(x.T)
    w = np.full(100, 0.01)
    assert _ksd2_np(x, w, 1.0) < 1e-2 * _ksd2_np(np.asarray(x0, np.float64), w, 1.0)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("logp", "match"),
    [
        (lambda x: jnp.nan * jnp.sum(x), "not finite"),
        (densities.Gaussian(mean=(0.0, 0.0, 0.0), cov=np.eye(3).tolist()), r"shape \(2,\)"),
        (lambda x: x, "scalar"),
        (lambda x: jnp.sum(x).astype(jnp.int32), "floating scalar"),
        (lambda x: x @ jnp.ones(3), r"failed on a point of shape \(2,\)"),
    ],
)
def test_bad_log_densities_raise(logp, match):
    x = _rand(5, 2)
    with pytest.raises(ValueError, match=match):
        densities.score(logp, x)
    flow = flows.make("svgd", kernels.Gaussian(1.0), logp=logp)
    with pytest.raises(ValueError, match=match):
        flow.init(jnp.asarray(x, jnp.float32), jax.random.key(0))


def test_bad_density_field_arguments_raise():
    with pytest.raises(ValueError, match="logp"):
        fields.SVGDField(3.0, kernels.Gaussian(1.0))
    with pytest.raises(ValueError, match="`k`"):
        fields.KSDField(P, "gaussian")
    flow = flows.ParticleFlow(fields.MMDField(kernels.Gaussian(1.0)))
    state = flow.init(jnp.zeros((3, 2)), jax.random.key(0))
    with pytest.raises(ValueError, match="`y` .* required by MMDField"):
        flow.step(state)


def _tanh_features(p, x):  # row-wise, nonlinear (module level: hashable)
    return jnp.tanh(x @ p)


@pytest.mark.parametrize("kind", ["stein", "tanh"])
def test_hessian_operator_of_feature_kernels_matches_pairwise_autodiff(kind, rng):
    """``ops.kernel_hessian_operator`` (feature Jacobians once, then contractions) against the
    cross-Hessian of the point-wise kernel by autodiff, pair by pair, in float64."""
    d = 3
    if kind == "stein":
        k = kernels.stein_kernel(kernels.Gaussian(1.3), densities.Banana(), d)
    else:
        k = kernels.FeatureKernel(kernels.IMQ(1.1), _tanh_features, rng.normal(size=(d, 5)))
    x, y = rng.normal(size=(7, d)), rng.normal(size=(5, d))
    e = rng.normal(size=(5, d))
    hess = jax.jacfwd(jax.grad(k, argnums=0), argnums=1)
    want = np.einsum("ijab,jb->ia", jax.vmap(lambda a: jax.vmap(lambda b: hess(a, b))(y))(x), e)
    for p, q, ee, ref in [(x, y, e, want), (x, x, rng.normal(size=(7, d)), None)]:
        if ref is None:
            h = jax.vmap(lambda a: jax.vmap(lambda b: hess(a, b))(q))(p)
            ref = np.einsum("ijab,jb->ia", h, ee)
        got = ops.kernel_hessian_operator(k, p, q)(ee)
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
