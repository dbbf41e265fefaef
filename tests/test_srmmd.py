"""The SrMMD field against float64 NumPy written from the formulas (a dense, independent form).

Reference: the penalized witness ``h = argmax_f <f, delta>_H - 1/2 [alpha E_Q |grad f|^2 +
lambda |f|_H^2]`` maximised over the finite span that contains it, ``psi = [k(., y_j),
k(., x_i), d_b k(., x_i)]`` (``delta = mu_P - mu_Q`` lies in the first two, ``D_Q`` maps into
the third): with the Gram ``G = <psi, psi>``, the gradients ``J`` of ``psi`` at the particles
and ``delta = psi . w``, the maximiser ``h = psi . beta`` solves ``(alpha J^T A J + lambda G)
beta = G w`` (least squares: ``G`` may be singular, ``h`` is not). The Gaussian kernel's
derivatives are written by hand; no push-through identity, no CG. The field's velocity is
``lambda grad h`` and its ``critic`` ``lambda <delta, h> = lambda w^T G beta``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmdflow import fields, flows, kernels

S = 0.8  # Gaussian bandwidth


def _k(p, q):
    d2 = ((p[:, None, :] - q[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * S**2))


def _grad1(p, q):
    """``grad_p k(p_i, q_j)``: ``[np, nq, d]``."""
    return -(p[:, None, :] - q[None, :, :]) / S**2 * _k(p, q)[:, :, None]


def _cross_hess(p, q):
    """``d^2 k(p_i, q_j) / dp_a dq_b``: ``[np, nq, d, d]``."""
    r = p[:, None, :] - q[None, :, :]
    d = p.shape[1]
    eye = np.eye(d)[None, None] / S**2
    return _k(p, q)[:, :, None, None] * (eye - r[..., :, None] * r[..., None, :] / S**4)


def _span(z, x, y):
    """``[nz, L]`` values and ``[nz, L, d]`` gradients of ``psi = [k(., y), k(., x), d_b k(., x_i)]``
    at ``z``, and the Gram ``[L, L]`` of ``psi``."""
    n, d = x.shape
    vals = np.concatenate(
        [_k(z, y), _k(z, x), (-_grad1(z, x)).reshape(len(z), n * d)], axis=1
    )  # d_{q_b} k(z, q) = -d_{z_b} k(z, q) (translation invariant)
    grads = np.concatenate(
        [
            _grad1(z, y),
            _grad1(z, x),
            _cross_hess(z, x).transpose(0, 1, 3, 2).reshape(len(z), n * d, d),
        ],
        axis=1,
    )
    pts = np.concatenate([y, x])
    kk = _k(pts, pts)
    kd = -_grad1(pts, x).reshape(len(pts), n * d)  # <k(., p), d_b k(., x_i)> = d_{q_b} k(p, q)
    dd = _cross_hess(x, x).transpose(0, 2, 1, 3).reshape(n * d, n * d)
    gram = np.block([[kk, kd], [kd.T, dd]])
    return vals, grads, gram


def _reference(z, x, y, alpha, lam, a=None, b=None):
    """(velocity at z ``[nz, d]``, ``lambda <delta, h>``) in float64, dense."""
    n, d = x.shape
    a = np.full(n, 1.0 / n) if a is None else a
    b = np.full(len(y), 1.0 / len(y)) if b is None else b
    _, jac, gram = _span(x, x, y)  # jac [n, L, d]: grad psi_l(x_i)
    w = np.concatenate([b, -a, np.zeros(n * d)])
    pen = np.einsum("i,ild,imd->lm", a, jac, jac)  # J^T A J = sum_i a_i grad psi(x_i) grad psi^T
    beta = np.linalg.lstsq(alpha * pen + lam * gram, gram @ w, rcond=1e-14)[0]
    _, gz, _ = _span(z, x, y)
    return lam * np.einsum("zld,l->zd", gz, beta), lam * w @ gram @ beta


def _data(n=12, m=15, d=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = 0.6 * rng.normal(size=(m, d)) + 1.0
    z = rng.normal(size=(5, d)) * 1.5
    a = rng.uniform(0.5, 1.5, size=n)
    b = rng.uniform(0.5, 1.5, size=m)
    return x, y, z, a / a.sum(), b / b.sum()


def _field(alpha, lam, **kw):
    return fields.SrMMDField(
        kernels.Gaussian(S), alpha=alpha, reg=lam, cg_tol=1e-14, cg_maxiter=500, **kw
    )


def _fit(field, x, y, a, b, extra=None):
    j = jnp.asarray
    return field.fit(j(x), j(a), j(y), j(b), extra, None, 0)


@pytest.mark.parametrize(("alpha", "lam"), [(1.0, 0.05), (0.3, 0.05), (1.0, 1.0), (0.6, 3.0)])
def test_velocity_and_value_match_the_dense_float64_reference(alpha, lam):
    with jax.enable_x64(True):
        x, y, z, a, b = _data()
        vel, _, aux = _fit(_field(alpha, lam), x, y, a, b)
        v_ref, val_ref = _reference(np.concatenate([z, x]), x, y, alpha, lam, a, b)
        scale = np.abs(v_ref).max()
        np.testing.assert_allclose(vel.fn(jnp.asarray(z)), v_ref[:5], rtol=0, atol=1e-8 * scale)
        np.testing.assert_allclose(vel.at_x, v_ref[5:], rtol=0, atol=1e-8 * scale)
        np.testing.assert_allclose(aux["critic"], val_ref, rtol=1e-8)
        assert 0 < float(aux["critic"]) <= float(aux["mmd2_critic"])  # lambda SrMMD <= MMD^2


def test_zero_weight_particles_and_targets_drop_out():
    with jax.enable_x64(True):
        x, y, z, a, b = _data(n=10, m=13)  # padded to the other tests' shapes (one compile)
        f = _field(0.7, 0.1)
        xp = np.concatenate([x, x[-1:], x[:1] + 2.0])  # a copy and a far point, weight 0
        yp = np.concatenate([y, y[-1:], y[:1] - 3.0])
        ap, bp = np.concatenate([a, [0.0, 0.0]]), np.concatenate([b, [0.0, 0.0]])
        vel, _, aux = _fit(f, xp, yp, ap, bp)
        v_ref, val_ref = _reference(np.concatenate([z, x]), x, y, 0.7, 0.1, a, b)
        scale = np.abs(v_ref).max()
        np.testing.assert_allclose(vel.fn(jnp.asarray(z)), v_ref[:5], rtol=0, atol=1e-8 * scale)
        np.testing.assert_allclose(vel.at_x[: len(x)], v_ref[5:], rtol=0, atol=1e-8 * scale)
        np.testing.assert_allclose(aux["critic"], val_ref, rtol=1e-8)


def test_alpha_zero_is_the_mmd_flow_and_alpha_one_is_sobolev_descent():
    """Exact identities of the parametrisation (not limits): ``alpha = 0`` gives ``h = delta /
    lambda``, the MMD witness; ``alpha = 1`` the regularized kernel Sobolev critic."""
    with jax.enable_x64(True):
        x, y, z, a, b = _data()
        k = kernels.Gaussian(S)
        zj = jnp.asarray(z)
        v0 = _fit(_field(0.0, 0.4), x, y, a, b)[0]
        v_mmd = _fit(fields.MMDField(k), x, y, a, b)[0].fn(zj)
        np.testing.assert_allclose(v0.fn(zj), v_mmd, rtol=1e-12, atol=1e-15)
        for lam in (0.05, 2.0):
            v1 = _fit(_field(1.0, lam), x, y, a, b)[0]
            sob = _fit(fields.SobolevField(k, reg=lam, solver="cholesky"), x, y, a, b)[0]
            scale = np.abs(sob.at_x).max()
            np.testing.assert_allclose(v1.fn(zj), lam * sob.fn(zj), rtol=0, atol=1e-9 * scale)
            np.testing.assert_allclose(v1.at_x, lam * sob.at_x, rtol=0, atol=1e-9 * scale)


def test_flow_step_is_the_euler_step_of_the_reference():
    with jax.enable_x64(True):
        x, y, _, _, _ = _data()
        flow = flows.make(
            "srmmd", kernels.Gaussian(S), alpha=0.5, reg=0.2, step_size=0.3, cg_tol=1e-14
        )
        state, aux = jax.jit(flow.step)(flow.init(jnp.asarray(x), jax.random.key(0)), y)
        v_ref, val_ref = _reference(x, x, y, 0.5, 0.2)
        np.testing.assert_allclose(state.x, x + 0.3 * v_ref, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(aux["critic"], val_ref, rtol=1e-8)
        assert int(aux["cg_iterations"]) > 0


def test_warm_start_keeps_the_solution_and_saves_iterations():
    """With the target at ``init`` the state carries CG's solution between steps: the same
    trajectory (to CG's tolerance) in fewer CG iterations than a cold start."""
    with jax.enable_x64(True):
        x, y, _, _, _ = _data()
        flow = flows.make(
            "srmmd", kernels.Gaussian(S), alpha=1.0, reg=0.1, step_size=0.05, cg_tol=1e-10
        )
        cold = flow.init(jnp.asarray(x), jax.random.key(0))
        warm = flow.init(jnp.asarray(x), jax.random.key(0), y=jnp.asarray(y))
        assert cold.extra is None and warm.extra.c.shape == (12, 2)
        run = jax.jit(lambda s: flows.scan(flow, s, jnp.asarray(y), 6))
        (sc, ac), (sw, aw) = run(cold), run(warm)
        np.testing.assert_allclose(sw.x, sc.x, rtol=1e-8, atol=1e-10)
        its_c, its_w = np.asarray(ac["cg_iterations"]), np.asarray(aw["cg_iterations"])
        assert its_w[0] == its_c[0] and its_w[1:].sum() < its_c[1:].sum(), (its_c, its_w)
        with pytest.raises(ValueError, match="initialised for particles of shape"):
            flow.field.fit(jnp.asarray(x[:5]), None, jnp.asarray(y), None, warm.extra, None, 0)


def test_schedules_are_read_at_each_step():
    with jax.enable_x64(True):
        x, y, _, _, _ = _data()
        f = _field(lambda c: 0.25 * c, lambda c: 0.1 + c)
        aux = _fit(f, x, y, np.full(len(x), 1 / len(x)), np.full(len(y), 1 / len(y)))[2]
        assert float(aux["alpha"]) == 0.0 and float(aux["reg"]) == pytest.approx(0.1)
        aux = f.fit(jnp.asarray(x), None, jnp.asarray(y), None, None, None, 2)[2]
        assert float(aux["alpha"]) == 0.5 and float(aux["reg"]) == pytest.approx(2.1)


@pytest.mark.parametrize(
    "bad",
    [
        {"alpha": -0.1},
        {"alpha": 1.5},
        {"alpha": float("nan")},
        {"alpha": "x"},
        {"alpha": (0.1, 0.2)},
        {"reg": 0.0},
        {"reg": -1.0},
        {"cg_tol": 0.0},
        {"cg_maxiter": 0},
        {"sums": "x"},
    ],
)
def test_bad_hyperparameters(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        fields.SrMMDField(kernels.Gaussian(1.0), **bad)


# ---------------------------------------------------------------- toward a density
# The same maximisation in the RKHS of the Stein kernel k_p (Gaussian base kernel, Gaussian
# target), where mu_P = 0: delta = -sum_i a_i k_p(., x_i) lies in the span of
# psi = [k_p(., x_i), d_b k_p(., x_i)]. k_p is written from its formula; its derivatives
# are central differences (Richardson-extrapolated), not autodiff.
MU = np.array([0.4, -0.3])
PREC = np.linalg.inv(np.array([[1.0, 0.3], [0.3, 0.6]]))


def _kp(p, q):
    """``k_p(p, q)`` of points ``[..., d]`` (broadcast): ``s.s' k + s.grad_q k + s'.grad_p k
    + tr grad_p grad_q k`` with ``s = -PREC (x - MU)``."""
    sp, sq = -(p - MU) @ PREC, -(q - MU) @ PREC
    r = p - q
    r2 = (r * r).sum(-1)
    k = np.exp(-r2 / (2 * S**2))
    d = p.shape[-1]
    return k * ((sp * sq).sum(-1) + ((sp - sq) * r).sum(-1) / S**2 + d / S**2 - r2 / S**4)


def _fd(f, p, q, h):
    """Central differences of ``f(p, q)`` (``[np, nq]``): ``(d_p f, d_q f, d_p d_q f)``."""
    d = p.shape[1]
    pp, qq = p[:, None, :], q[None, :, :]
    e = np.eye(d) * h
    g1 = np.stack([(f(pp + e[a], qq) - f(pp - e[a], qq)) / (2 * h) for a in range(d)], -1)
    g2 = np.stack([(f(pp, qq + e[b]) - f(pp, qq - e[b])) / (2 * h) for b in range(d)], -1)
    hh = np.stack(
        [
            np.stack(
                [
                    (
                        f(pp + e[a], qq + e[b])
                        - f(pp + e[a], qq - e[b])
                        - f(pp - e[a], qq + e[b])
                        + f(pp - e[a], qq - e[b])
                    )
                    / (4 * h * h)
                    for b in range(d)
                ],
                -1,
            )
            for a in range(d)
        ],
        -2,
    )
    return g1, g2, hh


def _kp_derivs(p, q, h=1e-2):
    """Richardson's extrapolation of :func:`_fd` (error ``O(h^4)``)."""
    coarse, fine = _fd(_kp, p, q, h), _fd(_kp, p, q, h / 2)
    return [(4 * b - a) / 3 for a, b in zip(coarse, fine, strict=True)]


def _density_reference(z, x, alpha, lam, a):
    """(velocity at z, ``lambda <delta, h>``) on the density, dense float64."""
    n, d = x.shape

    def span_grads(pts):  # [np, L, d]: grad psi_l; grad_z d_{q_b} k_p(z, x_i) = hh[z, i, :, b]
        g1, _, hh = _kp_derivs(pts, x)
        return np.concatenate([g1, hh.transpose(0, 1, 3, 2).reshape(len(pts), n * d, d)], axis=1)

    _, g2, hh = _kp_derivs(x, x)
    kd = g2.reshape(n, n * d)  # <k_p(., x_j), d_b k_p(., x_i)> = d_{q_b} k_p(x_j, q) at x_i
    dd = hh.transpose(0, 2, 1, 3).reshape(n * d, n * d)
    gram = np.block([[_kp(x[:, None], x[None]), kd], [kd.T, dd]])
    jac = span_grads(x)
    w = np.concatenate([-a, np.zeros(n * d)])
    pen = np.einsum("i,ild,imd->lm", a, jac, jac)
    beta = np.linalg.lstsq(alpha * pen + lam * gram, gram @ w, rcond=1e-13)[0]
    return lam * np.einsum("zld,l->zd", span_grads(z), beta), lam * w @ gram @ beta


def _density():
    from mmdflow import densities

    return densities.Gaussian(mean=tuple(MU), cov=np.linalg.inv(PREC).tolist())


@pytest.mark.parametrize(("alpha", "lam"), [(1.0, 0.3), (0.5, 3.0)])
def test_density_velocity_and_value_match_the_dense_float64_reference(alpha, lam):
    with jax.enable_x64(True):
        x, _, z, a, _ = _data(n=9)
        f = _field(alpha, lam, logp=_density())
        assert f.target == "density" and f.step_size == 3.0
        vel, _, aux = f.fit(jnp.asarray(x), jnp.asarray(a), None, None, None, None, 0)
        v_ref, val_ref = _density_reference(np.concatenate([z, x]), x, alpha, lam, a)
        scale = np.abs(v_ref).max()
        np.testing.assert_allclose(vel.fn(jnp.asarray(z)), v_ref[:5], rtol=0, atol=1e-7 * scale)
        np.testing.assert_allclose(vel.at_x, v_ref[5:], rtol=0, atol=1e-7 * scale)
        np.testing.assert_allclose(aux["critic"], val_ref, rtol=1e-7)
        # the Stein kernel's MMD^2 is KSD^2 (V-statistic)
        ksd2 = a @ _kp(x[:, None], x[None]) @ a
        np.testing.assert_allclose(aux["mmd2_critic"], ksd2, rtol=1e-12)


def test_density_alpha_zero_is_half_ksd_descent():
    with jax.enable_x64(True):
        x, _, z, a, _ = _data(n=9)
        p = _density()
        v0 = _field(0.0, 0.7, logp=p).fit(jnp.asarray(x), jnp.asarray(a), None, None, None, None, 0)
        vk = fields.KSDField(p, kernels.Gaussian(S)).fit(
            jnp.asarray(x), jnp.asarray(a), None, None, None, None, 0
        )
        zj = jnp.asarray(z)
        np.testing.assert_allclose(v0[0].fn(zj), 0.5 * vk[0].fn(zj), rtol=1e-12, atol=1e-14)
