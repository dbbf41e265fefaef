"""The DrMMD field against float64 NumPy written from the formulas (kwgflows' dense form).

References: the de-regularized witness ``h = 2 (1 + l) / l [g - k(., Y) (K_YY + m l I)^-1
g(Y)]``, ``g = mu_Q - mu_P``, as kwgflows' ``drmmd_fixed_target.witness_function`` writes it
(dense inverse), differentiated by hand for the Gaussian kernel; the DrMMD value as its
``__call__``. The field's velocity is ``-grad h`` times ``l / (2 (1 + l))``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmdflow import fields, flows, kernels

S = 0.8  # Gaussian bandwidth


def _k(a, b):
    d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * S**2))


def _grad_k(z, b):
    """``grad_z k(z_i, b_j)``: ``[nz, m, d]``."""
    return -(z[:, None, :] - b[None, :, :]) / S**2 * _k(z, b)[:, :, None]


def _reference(z, x, y, lam):
    """(velocity at z, DrMMD value) in float64, dense, uniform weights."""
    m = len(y)
    inv = np.linalg.inv(_k(y, y) + m * lam * np.eye(m))
    g_y = _k(y, x).mean(1) - _k(y, y).mean(1)  # (mu_Q - mu_P)(Y)
    alpha = inv @ g_y
    grad_g = _grad_k(z, x).mean(1) - _grad_k(z, y).mean(1)
    grad_h = 2 * (1 + lam) / lam * (grad_g - np.einsum("zmd,m->zd", _grad_k(z, y), alpha))
    mmd2 = _k(x, x).mean() + _k(y, y).mean() - 2 * _k(x, y).mean()
    drmmd = (1 + lam) / lam * (mmd2 - g_y @ inv @ g_y)
    return -grad_h * lam / (2 * (1 + lam)), drmmd


def _data(n=40, m=55, d=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = 0.6 * rng.normal(size=(m, d)) + 1.0
    z = rng.normal(size=(7, d)) * 1.5
    return x, y, z


def _fit(field, x, y, wy=None):
    wx = jnp.full((len(x),), 1.0 / len(x))
    return field.fit(jnp.asarray(x), wx, jnp.asarray(y), wy, None, None, 0)


@pytest.mark.parametrize("lam", [1e-3, 1e-1, 10.0])
def test_velocity_and_value_match_the_dense_float64_reference(lam):
    with jax.enable_x64(True):
        x, y, z = _data()
        f = fields.DrMMDField(kernels.Gaussian(S), reg=lam, cg_tol=1e-13, cg_maxiter=500)
        vel, _, aux = _fit(f, x, y)
        v_ref, drmmd_ref = _reference(z, x, y, lam)
        np.testing.assert_allclose(vel.fn(jnp.asarray(z)), v_ref, rtol=1e-8, atol=1e-11)
        np.testing.assert_allclose(aux["critic"], drmmd_ref, rtol=1e-8)
        assert float(aux["critic"]) > 0


def test_zero_weight_targets_drop_out():
    with jax.enable_x64(True):
        x, y, z = _data()
        f = fields.DrMMDField(kernels.Gaussian(S), reg=1e-2, cg_tol=1e-13, cg_maxiter=500)
        y_pad = np.concatenate([y, y[-1:], y[:1] + 3.0])  # a copy and a far point, weight 0
        w_pad = np.concatenate([np.full(len(y), 1.0 / len(y)), [0.0, 0.0]])
        v_pad = _fit(f, x, y_pad, jnp.asarray(w_pad))[0].fn(jnp.asarray(z))
        np.testing.assert_allclose(v_pad, _reference(z, x, y, 1e-2)[0], rtol=1e-8, atol=1e-11)


def test_large_reg_approaches_the_mmd_flow():
    """``alpha ~ g(Y) / (m lambda) -> 0``: the rescaled DrMMD velocity -> the witness gradient."""
    with jax.enable_x64(True):
        x, y, z = _data()
        k = kernels.Gaussian(S)
        v_mmd = _fit(fields.MMDField(k), x, y)[0].fn(jnp.asarray(z))
        gaps = []
        for lam in (1e1, 1e2, 1e3):
            v = _fit(fields.DrMMDField(k, reg=lam, cg_tol=1e-13), x, y)[0].fn(jnp.asarray(z))
            gaps.append(float(jnp.abs(v - v_mmd).max() / jnp.abs(v_mmd).max()))
        assert gaps[2] < 1e-3 and gaps[0] > gaps[1] > gaps[2], gaps  # ~ 1 / lambda
        np.testing.assert_allclose(np.array(gaps[:2]) / np.array(gaps[1:]), 10.0, rtol=0.1)


def test_flow_step_is_the_euler_step_of_the_reference():
    with jax.enable_x64(True):
        x, y, _ = _data()
        flow = flows.make("drmmd", kernels.Gaussian(S), reg=0.05, step_size=0.3, cg_tol=1e-13)
        state, aux = jax.jit(flow.step)(flow.init(jnp.asarray(x), jax.random.key(0)), y)
        v_ref, _ = _reference(x, x, y, 0.05)
        np.testing.assert_allclose(state.x, x + 0.3 * v_ref, rtol=1e-8, atol=1e-11)
        assert int(aux["cg_iterations"]) > 0


@pytest.mark.parametrize("bad", [{"reg": 0.0}, {"reg": -1.0}, {"cg_maxiter": 0}, {"sums": "x"}])
def test_bad_hyperparameters(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        fields.DrMMDField(kernels.Gaussian(1.0), **bad)


def test_adaptive_reg_follows_the_papers_schedule():
    """``lambda_{t+1} = lambda_0 sqrt(D_t / D_0)`` (kwgflows' ``adaptive_lmbda``), ``D_t`` the
    DrMMD value at step t; each step's value is the dense reference's at that ``lambda``."""
    with jax.enable_x64(True):
        x, y, _ = _data()
        flow = flows.make(
            "drmmd",
            kernels.Gaussian(S),
            reg=0.1,
            adaptive=True,
            step_size=0.5,
            cg_tol=1e-13,
            cg_maxiter=500,
        )
        state = flow.init(jnp.asarray(x), jax.random.key(0))
        lams, ds = [], []
        for _ in range(4):
            xs = np.asarray(state.x)
            state, aux = jax.jit(flow.step)(state, y)
            lams.append(float(aux["reg"]))
            ds.append(float(aux["critic"]))
            np.testing.assert_allclose(ds[-1], _reference(xs[:1], xs, y, lams[-1])[1], rtol=1e-8)
        assert lams[0] == 0.1
        np.testing.assert_allclose(lams[1:], 0.1 * np.sqrt(np.array(ds[:-1]) / ds[0]), rtol=1e-12)
        assert lams[-1] < lams[0]  # the flow converges, the regularization shrinks
    with pytest.raises(ValueError, match="adaptive"):
        fields.DrMMDField(kernels.Gaussian(1.0), reg=lambda c: 0.1, adaptive=True)


def test_warm_start_keeps_the_solution_and_saves_iterations():
    """With the target at ``init`` the state carries ``alpha`` between steps: the same
    trajectory (to CG's tolerance) in fewer CG iterations than a cold start."""
    with jax.enable_x64(True):
        x, y, _ = _data(n=60, m=70)
        flow = flows.make("drmmd", kernels.Gaussian(S), reg=0.5, step_size=0.3, cg_tol=1e-10)
        cold = flow.init(jnp.asarray(x), jax.random.key(0))
        warm = flow.init(jnp.asarray(x), jax.random.key(0), y=jnp.asarray(y))
        assert cold.extra is None and warm.extra.alpha.shape == (70,)
        run = jax.jit(lambda s: flows.scan(flow, s, jnp.asarray(y), 8))
        (sc, ac), (sw, aw) = run(cold), run(warm)
        np.testing.assert_allclose(sw.x, sc.x, rtol=1e-8, atol=1e-10)
        its_c, its_w = np.asarray(ac["cg_iterations"]), np.asarray(aw["cg_iterations"])
        assert its_w[0] == its_c[0] and its_w[1:].sum() < its_c[1:].sum(), (its_c, its_w)
        with pytest.raises(ValueError, match="initialised for 70 targets"):
            flow.step(warm, jnp.asarray(y[:50]))
