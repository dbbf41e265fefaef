"""The KALE field against float64 NumPy written from the paper's formulas (dense Newton).

References (Glaser, Arbel & Gretton, NeurIPS 2021, and their ``kale-flow`` code): for
particles ``P = sum_i a_i delta_{x_i}`` and target ``Q = sum_j b_j delta_{y_j}``,
``KALE(P || Q) = (1 + l) max_h {1 + int h dP - int e^h dQ - l/2 |h|_H^2}``, maximiser
``h = (mu_P - sum_j c_j k(., y_j)) / l`` with ``c`` the minimiser of the dual
``D(c) = sum_j c_j log(c_j / b_j) - c_j + |mu_P - K_Y c|_H^2 / (2 l)`` (dense Newton with a
positivity-keeping backtracking line search, as ``kale-flow``'s ``newton_method``); the
particles move along ``-grad`` of the first variation ``(1 + l) h``. The reference also
checks the duality gap: the primal value at its ``h`` equals ``(1 + l) (1 + D(c))``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmdflow import fields, flows, kernels

S = 0.8  # Gaussian bandwidth
TIGHT = {"newton_tol": 1e-24, "cg_tol": 1e-13, "cg_maxiter": 500}


def _k(a, b):
    d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * S**2))


def _grad_k(z, b):
    """``grad_z k(z_i, b_j)``: ``[nz, m, d]``."""
    return -(z[:, None, :] - b[None, :, :]) / S**2 * _k(z, b)[:, :, None]


def _reference(z, x, y, lam, a=None, b=None):
    """(velocity at z, KALE value) in float64, dense; zero-weight targets removed first."""
    a = np.full(len(x), 1 / len(x)) if a is None else a / a.sum()
    b = np.full(len(y), 1 / len(y)) if b is None else b / b.sum()
    y, b = y[b > 0], b[b > 0]
    kyy, kxx, mu_y = _k(y, y), _k(x, x), _k(y, x) @ a

    def dual(c):
        return np.sum(c * np.log(c / b) - c) + (a @ kxx @ a - 2 * c @ mu_y + c @ kyy @ c) / (
            2 * lam
        )

    c = b.copy()
    for _ in range(100):
        g = np.log(c / b) + (kyy @ c - mu_y) / lam
        step = -np.linalg.solve(np.diag(1 / c) + kyy / lam, g)
        dec = -g @ step
        if dec / 2 < 1e-28:
            break
        t = 1.0
        while np.any(c + t * step <= 0) or dual(c + t * step) > dual(c) - 1e-4 * t * dec:
            t *= 0.5
        c = c + t * step
    kale = (1 + lam) * (1 + dual(c))
    # the primal at h = (mu_P - K_Y c) / lam: the same value (zero duality gap)
    h_x, h_y = (kxx @ a - _k(x, y) @ c) / lam, (mu_y - kyy @ c) / lam
    norm2 = (a @ kxx @ a - 2 * c @ mu_y + c @ kyy @ c) / lam**2
    primal = (1 + lam) * (1 + a @ h_x - b @ np.exp(h_y) - lam / 2 * norm2)
    np.testing.assert_allclose(primal, kale, rtol=1e-9)
    grad_h = np.einsum("znd,n->zd", _grad_k(z, x), a) - np.einsum("zmd,m->zd", _grad_k(z, y), c)
    return -(1 + lam) * grad_h / lam, kale


def _data(n=30, m=40, d=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = 0.6 * rng.normal(size=(m, d)) + 1.0
    z = rng.normal(size=(7, d)) * 1.5
    return x, y, z


@jax.jit
def _fit(x, y, a, b, lam, z):
    """The KALE velocity at ``z`` and aux: one program for every ``lambda`` (traced)."""
    f = fields.KALEField(kernels.Gaussian(S), reg=lam, **TIGHT)
    vel, _, aux = f.fit(x, a, y, b, None, None, 0)
    return vel.fn(z), aux


def _uniform(n):
    return np.full(n, 1.0 / n)


@pytest.mark.parametrize("lam", [1e-2, 0.3, 10.0])
def test_velocity_and_value_match_the_dense_float64_reference(lam):
    with jax.enable_x64(True):
        x, y, z = _data()
        rng = np.random.default_rng(1)
        a, b = rng.uniform(0.2, 1.0, len(x)), rng.uniform(0.2, 1.0, len(y))
        v, aux = _fit(x, y, a / a.sum(), b, lam, z)
        v_ref, kale_ref = _reference(z, x, y, lam, a, b)
        np.testing.assert_allclose(v, v_ref, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(aux["critic"], kale_ref, rtol=1e-9)
        assert float(aux["critic"]) > 0 and int(aux["newton_iterations"]) > 0
        assert int(aux["cg_iterations"]) >= int(aux["newton_iterations"])


def test_zero_weight_points_drop_out():
    """Zero-weight rows (copies and far points: a mesh's padding) change nothing."""
    with jax.enable_x64(True):
        x, y, z = _data()
        xp, yp = x.copy(), y.copy()
        xp[-2:], yp[-2:] = [x[0], x[1] - 3.0], [y[0], y[1] + 3.0]
        a, b = _uniform(len(x)), _uniform(len(y))
        a[-2:], b[-2:] = 0.0, 0.0
        v, aux = _fit(xp, yp, a, b, 0.1, z)
        v_ref, kale_ref = _reference(z, x[:-2], y[:-2], 0.1)
        np.testing.assert_allclose(v, v_ref, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(aux["critic"], kale_ref, rtol=1e-9)


def test_large_reg_approaches_the_mmd_flow():
    """``c -> b`` as ``lambda -> inf``: the velocity -> the MMD flow's (witness gradient), with
    a gap ~ 1 / lambda (no rescaling), and KALE -> MMD^2 / 2 (the paper's KL-to-MMD
    interpolation)."""
    with jax.enable_x64(True):
        x, y, z = _data()
        # the MMD flow's velocity (fields.MMDField): the witness gradient
        v_mmd = _grad_k(z, y).mean(1) - _grad_k(z, x).mean(1)
        mmd2 = _k(x, x).mean() + _k(y, y).mean() - 2 * _k(x, y).mean()
        gaps, kales = [], []
        for lam in (1e1, 1e2, 1e3):
            v, aux = _fit(x, y, _uniform(len(x)), _uniform(len(y)), lam, z)
            gaps.append(float(np.abs(v - v_mmd).max() / np.abs(v_mmd).max()))
            kales.append(float(aux["critic"]))
        assert gaps[2] < 1e-2 and gaps[0] > gaps[1] > gaps[2], gaps
        np.testing.assert_allclose(np.array(gaps[:2]) / np.array(gaps[1:]), 10.0, rtol=0.1)
        rel = np.abs(np.array(kales) / (mmd2 / 2) - 1)
        assert rel[2] < 1e-2 and rel[0] > rel[1] > rel[2], (kales, mmd2 / 2)


@pytest.mark.parametrize(
    "bad",
    [
        {"reg": 0.0},
        {"reg": -1.0},
        {"reg": float("nan")},
        {"newton_tol": 0.0},
        {"newton_maxiter": 0},
        {"cg_tol": -1.0},
        {"cg_maxiter": 0},
        {"sums": "x"},
    ],
)
def test_bad_hyperparameters(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        fields.KALEField(kernels.Gaussian(1.0), **bad)


def test_flow_steps_and_warm_start():
    """Through the registry: the first step is the Euler step of the reference (toward the
    target); with the target at ``init`` the state carries ``h(Y)`` between steps: the same
    trajectory (to the solver's tolerance) in fewer Newton and CG iterations."""
    with jax.enable_x64(True):
        x, y, _ = _data()
        kw = {"reg": 0.1, "step_size": 0.2, "newton_tol": 1e-20, "cg_tol": 1e-11}
        flow = flows.make("kale", kernels.Gaussian(S), **kw)
        step = jax.jit(flow.step)
        assert flow.init(jnp.asarray(x), jax.random.key(0)).extra is None
        warm = flow.init(jnp.asarray(x), jax.random.key(0), y=jnp.asarray(y))
        assert isinstance(warm.extra, fields.KALEState) and warm.extra.u.shape == (40,)
        cold = warm  # a cold start every step (h(Y) = 0, as without the target at init)
        its = {"cold": [], "warm": []}
        for i in range(5):
            x_prev = np.asarray(cold.x)
            cold, ac = step(cold._replace(extra=warm.extra._replace(u=0 * warm.extra.u)), y)
            warm, aw = step(warm, y)
            if i == 0:
                v_ref, kale_ref = _reference(x_prev, x_prev, y, 0.1)
                np.testing.assert_allclose(cold.x, x_prev + 0.2 * v_ref, rtol=1e-9, atol=1e-11)
                np.testing.assert_allclose(ac["critic"], kale_ref, rtol=1e-9)
                gap = np.linalg.norm(y.mean(0) - np.asarray(cold.x).mean(0))
                assert gap < np.linalg.norm(y.mean(0) - x.mean(0))
            np.testing.assert_allclose(warm.x, cold.x, rtol=1e-8, atol=1e-10)
            its["cold"].append([int(ac["newton_iterations"]), int(ac["cg_iterations"])])
            its["warm"].append([int(aw["newton_iterations"]), int(aw["cg_iterations"])])
        c, w = np.array(its["cold"]), np.array(its["warm"])
        assert (w[0] == c[0]).all() and (w[1:].sum(0) < c[1:].sum(0)).all(), its
        with pytest.raises(ValueError, match="initialised for 40 targets"):
            flow.step(warm, jnp.asarray(y[:30]))
