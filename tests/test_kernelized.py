"""Generator directions vs explicit float64 references (parameter, sample and random-feature
forms), particle and large-reg limits, descent rates, truncated CG."""

import functools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import mmdflow
from mmdflow import features, kernelized, kernels, sobolev

# jit the direction (the CG loop and kernel sums compile once per test)
direction = jax.jit(
    kernelized.direction,
    static_argnums=(0,),
    static_argnames=("kind", "solver", "sums"),  # cg_tol / cg_maxiter traced: fewer compiles
)


def _gen(p, z):
    return jnp.tanh(z @ p["w1"] + p["b1"][None]) @ p["w2"] + p["b2"][None]


def _mlp(key, dz=2, h=6, d=2):
    """A tiny tanh MLP; one module-level ``_gen`` so jitted directions are reused across tests."""
    k1, k2 = jax.random.split(key)
    params = {
        "w1": jax.random.normal(k1, (dz, h)) / np.sqrt(dz),
        "b1": jnp.zeros(h) + 0.1,
        "w2": jax.random.normal(k2, (h, d)) / np.sqrt(h),
        "b2": jnp.zeros(d),
    }
    return _gen, params


@jax.jit
def _mmd2_along(params, v, t, z, y, k):
    """MMD^2 of the MLP generator at ``params + t v`` (for finite differences)."""
    return mmdflow.mmd2(_gen(jax.tree.map(lambda p, d: p + t * d, params, v), z), y, k)


def _slope(params, v, z, y, k, h=1e-6):
    """Central finite difference of MMD^2 along ``v``."""
    return float(_mmd2_along(params, v, h, z, y, k) - _mmd2_along(params, v, -h, z, y, k)) / (2 * h)


def _flat(tree):
    return jnp.concatenate([jnp.ravel(t) for t in jax.tree.leaves(tree)])


def _explicit_b(gen, params, z, y, bw, reg):
    """Float64 dense P x P: (J^T H J / M^2 + reg) theta_dot = J^T u, J from jacfwd."""
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    x = np.asarray(gen(params, z), np.float64)
    m, d = x.shape
    J = np.asarray(jax.jacfwd(lambda f: gen(unravel(f), z).reshape(-1))(flat))  # [M d, P]
    diff = x[:, None, :] - x[None, :, :]
    K = np.exp(-(diff**2).sum(-1) / (2 * bw**2))
    H = K[..., None, None] * (np.eye(d) / bw**2 - diff[..., :, None] * diff[..., None, :] / bw**4)
    H = H.transpose(0, 2, 1, 3).reshape(m * d, m * d)
    y = np.asarray(y, np.float64)
    dxy = x[:, None, :] - y[None, :, :]
    kxy = np.exp(-(dxy**2).sum(-1) / (2 * bw**2))
    # c_j = grad witness at x_j = mean_l grad k(x_j, y_l) - mean_l grad k(x_j, x_l)
    c = -(kxy[..., None] * dxy).mean(1) / bw**2 + (K[..., None] * diff).mean(1) / bw**2
    jtu = J.T @ c.reshape(-1) / m
    Kp = J.T @ H @ J / m**2
    return np.linalg.solve(Kp + reg * np.eye(len(flat)), jtu), J, H, c


def test_variant_b_matrix_free_matches_explicit_parameter_and_sample_forms():
    gen, params = _mlp(jax.random.key(0))
    z = jax.random.normal(jax.random.key(1), (24, 2))
    y = jax.random.normal(jax.random.key(2), (30, 2)) * 0.5 + 1.0
    bw, reg = 0.9, 0.05
    want, J, H, c = _explicit_b(gen, params, z, y, bw, reg)
    v, info = kernelized.direction(
        gen, params, z, y, kernels.Gaussian(bw), reg, cg_tol=1e-12, cg_maxiter=500
    )
    np.testing.assert_allclose(_flat(v), want, rtol=1e-7, atol=1e-10)
    # sample-space form (M d system): (reg I + H N / M) zeta = c, N = J J^T / M, theta_dot = J^T zeta / M
    m = 24
    N = J @ J.T / m
    zeta = np.linalg.solve(reg * np.eye(m * 2) + H @ N / m, c.reshape(-1))
    np.testing.assert_allclose(J.T @ zeta / m, want, rtol=1e-7, atol=1e-10)
    assert int(info["cg_iterations"]) > 0
    assert float(info["decrease_rate"]) > 0


def test_ju_is_minus_half_mmd_gradient_by_finite_differences():
    gen, params = _mlp(jax.random.key(3))
    z = jax.random.normal(jax.random.key(4), (16, 2))
    y = jax.random.normal(jax.random.key(5), (20, 2)) + 0.5
    k = kernels.Gaussian(1.0)
    v, _ = direction(gen, params, z, y, k, kind="mmd-gd")
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    f = lambda fl: float(mmdflow.mmd2(gen(unravel(fl), z), y, k))
    rng = np.random.default_rng(0)
    for _ in range(3):
        e = jnp.asarray(rng.normal(size=flat.shape))
        h = 1e-6
        fd = (f(flat + h * e) - f(flat - h * e)) / (2 * h)
        np.testing.assert_allclose(float(jnp.dot(_flat(v), e)), -0.5 * fd, rtol=1e-6)


def test_particle_limit_reduces_to_kernel_sobolev_descent():
    """g_theta(j) = theta_j: variant B = Sobolev descent with reg M*lambda; A = C = Sobolev / M
    (spec §3.6 item 5: with N_j = I the parametric penalty D_theta is the data-space D^x)."""
    rng = np.random.default_rng(1)
    x0 = jnp.asarray(rng.normal(size=(20, 2)))
    y = jnp.asarray(rng.normal(size=(25, 2)) + 1.0)
    k = kernels.Gaussian(1.0)
    gen = lambda p, z: p
    m, lam = 20, 0.01
    vb, _ = direction(gen, x0, None, y, k, lam, cg_tol=1e-13, cg_maxiter=2000)
    want_b = sobolev.exact_critic(k, x0, y, m * lam).grad_at_x
    np.testing.assert_allclose(vb, want_b, rtol=1e-7, atol=1e-10)
    vc, _ = direction(gen, x0, None, y, k, lam, kind="grad-penalty")
    want_c = sobolev.exact_critic(k, x0, y, lam).grad_at_x / m
    np.testing.assert_allclose(vc, want_c, rtol=1e-9, atol=1e-12)
    # variant A: per-sample generator p[z_j] (N_j = I), so D_theta = D^x and A = C = Sobolev / M
    va, _ = direction(
        lambda p, z: p[z], x0, jnp.arange(m), y, k, lam, kind="param-sobolev", solver="cg",
        cg_tol=1e-13, cg_maxiter=2000,
    )  # fmt: skip
    np.testing.assert_allclose(va, want_c, rtol=1e-8, atol=1e-11)


def test_large_reg_limit_is_plain_mmd_gradient_descent():
    gen, params = _mlp(jax.random.key(6))
    z = jax.random.normal(jax.random.key(7), (16, 2))
    y = jax.random.normal(jax.random.key(8), (20, 2)) + 0.5
    k = kernels.Gaussian(1.0)
    gd, _ = direction(gen, params, z, y, k, kind="mmd-gd")
    for kind in ("kernelized", "param-sobolev", "grad-penalty"):
        errs = []
        for reg in (1e2, 1e4):
            v, _ = direction(gen, params, z, y, k, reg, kind=kind, cg_tol=1e-12)
            errs.append(
                float(jnp.linalg.norm(reg * _flat(v) - _flat(gd)) / jnp.linalg.norm(_flat(gd)))
            )
        assert errs[1] < 1e-2
        assert errs[1] < errs[0] / 10  # deviation ~ 1/reg


@pytest.mark.parametrize("seed", range(2))
def test_kernelized_direction_is_a_descent_direction(seed):
    gen, params = _mlp(jax.random.key(10 + seed), h=8)
    z = jax.random.normal(jax.random.key(20 + seed), (12, 2))
    y = jax.random.normal(jax.random.key(30 + seed), (15, 2)) * 1.5 - 0.5
    k = kernels.Gaussian(0.7)
    v, info = direction(gen, params, z, y, k, 1e-3, cg_tol=1e-10, cg_maxiter=500)
    assert float(info["decrease_rate"]) > 0
    # directional derivative of MMD^2 along theta_dot is negative (finite differences)
    assert _slope(params, v, z, y, k) < 0


def test_bad_direction_input():
    gen, params = _mlp(jax.random.key(0))
    z = jnp.zeros((4, 2))
    y, k = jnp.zeros((5, 2)), kernels.Gaussian(1.0)
    with pytest.raises(ValueError, match="kind"):
        direction(gen, params, z, y, k, kind="adam")
    with pytest.raises(ValueError, match=r"gen_fn.*d=2.*d=3"):
        direction(gen, params, z, jnp.zeros((5, 3)), k)
    with pytest.raises(ValueError, match="`solver`.*'lu'"):
        direction(gen, params, z, y, k, kind="grad-penalty", solver="lu")
    with pytest.raises(ValueError, match="cholesky.*kernelized.*P x P"):
        direction(gen, params, z, y, k, solver="cholesky")
    with pytest.raises(ValueError, match=r"`z`.*M=4.*\(4, 2\)"):
        direction(lambda p, z: gen(p, jnp.zeros((4, 2))), params, None, y, k, kind="param-sobolev")
    with pytest.raises(ValueError, match=r"`mmd2`.*scalar.*\(2,\)"):
        sobolev.exact_critic(k, z, y, 0.1, mmd2=jnp.zeros(2))
    fixed = lambda p, z: gen(p, jnp.zeros((4, 2)))  # ignores z: not one sample per latent
    with pytest.raises(ValueError, match=r"z\[j:j\+1\].*\[1, 2\].*\(4, 2\)"):
        direction(fixed, params, z, y, k, kind="param-sobolev")


# ------------------------------------------------------------------------ variant A, references


@functools.partial(jax.jit, static_argnums=(0,))
def _jacobian_rows(gen, params, z):
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    return jax.jacfwd(lambda f: gen(unravel(f), z).reshape(-1))(flat)


def _jacobians(gen, params, z):
    """Per-sample Jacobians ``[M, d, P]`` (reference only: dense jacfwd of a tiny generator)."""
    m, d = gen(params, z).shape
    return np.asarray(_jacobian_rows(gen, params, z), np.float64).reshape(m, d, -1)


def test_param_sobolev_matches_explicit_nonsymmetric_sample_form():
    """Spec §2.3, variant A: (reg I + H N / M) zeta = c, N = blockdiag(J_j J_j^T) (not symmetric,
    solved densely in float64), theta_dot = J^T zeta / M."""
    gen, params = _mlp(jax.random.key(40))
    z = jax.random.normal(jax.random.key(41), (20, 2))
    y = jax.random.normal(jax.random.key(42), (26, 2)) * 0.6 + 0.8
    bw, reg = 0.8, 0.03
    _, J, H, c = _explicit_b(gen, params, z, y, bw, reg)
    m = 20
    Jj = J.reshape(m, 2, -1)  # per-sample Jacobians [M, d, P]
    N = np.zeros((2 * m, 2 * m))
    for j in range(m):
        N[2 * j : 2 * j + 2, 2 * j : 2 * j + 2] = Jj[j] @ Jj[j].T
    zeta = np.linalg.solve(reg * np.eye(2 * m) + H @ N / m, c.reshape(-1))
    want = J.T @ zeta / m
    v, info = direction(
        gen,
        params,
        z,
        y,
        kernels.Gaussian(bw),
        reg,
        kind="param-sobolev",
        solver="cg",
        cg_tol=1e-13,
        cg_maxiter=1000,
    )
    np.testing.assert_allclose(_flat(v), want, rtol=1e-7, atol=1e-10)
    assert int(info["cg_iterations"]) > 0


def _rff_setup(num_features=40, m=10, n=12, bw=0.9, seed=50):
    gen, params = _mlp(jax.random.key(seed), h=5)
    z = jax.random.normal(jax.random.key(seed + 1), (m, 2))
    y = jax.random.normal(jax.random.key(seed + 2), (n, 2)) * 0.7 + 0.5
    rff = features.RFF.create(
        kernels.Gaussian(bw), jax.random.key(seed + 3), num_features, 2, dtype=jnp.float64
    )
    return gen, params, z, y, rff


def _feature_form(kind, gen, params, z, y, rff, reg):
    """Spec §2.2 in float64 NumPy: explicit m x m features, w = (C + reg)^-1 u, theta_dot = Jbar^T w."""
    W = np.asarray(rff.z, np.float64) * np.asarray(rff.scale, np.float64)[:, None]
    b, amp = np.asarray(rff.b, np.float64), float(rff.amp)
    nf = W.shape[0]
    phi = lambda X: amp * np.sqrt(2 / nf) * np.cos(X @ W.T + b)  # [n, m]
    x = np.asarray(gen(params, z), np.float64)
    dphi = -amp * np.sqrt(2 / nf) * np.sin(x @ W.T + b)[:, :, None] * W[None]  # [M, m, d]
    Jj = _jacobians(gen, params, z)  # [M, d, P]
    A = np.einsum("jmd,jdp->jmp", dphi, Jj)  # per-sample d phi(g(z_j)) / d theta
    Jbar = A.mean(0)
    u = phi(np.asarray(y, np.float64)).mean(0) - phi(x).mean(0)
    C = {
        "kernelized": Jbar @ Jbar.T,
        "param-sobolev": np.einsum("jmp,jnp->mn", A, A) / len(x),
        "grad-penalty": np.einsum("jmd,jnd->mn", dphi, dphi) / len(x),
    }
    if kind == "mmd-gd":
        return Jbar.T @ u, u @ u, np.nan
    w = np.linalg.solve(C[kind] + reg * np.eye(nf), u)
    return Jbar.T @ w, u @ u, u @ w


_SOLVERS = {"param-sobolev": ("cholesky", "cg"), "grad-penalty": ("cholesky", "cg")}


@pytest.mark.parametrize("kind", kernelized.DIRECTIONS)
def test_random_feature_form_matches_matrix_free(kind):
    """k = phi^T phi (features.rff_kernel): the explicit m x m feature-space critic gives the same
    theta_dot, critic value and MMD^2 as the parameter-space CG / sample-space solves; and
    (spec §4.2, any variant) decrease_rate = <J^* u, theta_dot> = -1/2 d/dt MMD^2."""
    gen, params, z, y, rff = _rff_setup()
    reg = 0.02
    want, mmd2_want, critic_want = _feature_form(kind, gen, params, z, y, rff, reg)
    k = features.rff_kernel(rff)
    for solver in _SOLVERS.get(kind, ("auto",)):
        v, info = direction(
            gen, params, z, y, k, reg, kind=kind, solver=solver, cg_tol=1e-13, cg_maxiter=2000
        )
        np.testing.assert_allclose(_flat(v), want, rtol=1e-7, atol=1e-11)
        np.testing.assert_allclose(info["mmd2"], mmd2_want, rtol=1e-10)
        np.testing.assert_allclose(info["critic"], critic_want, rtol=1e-7)
        # CG reports its work (every kind that solves with CG), Cholesky reports none
        iters, res = int(info["cg_iterations"]), float(info["cg_residual"])
        if kind == "kernelized" or solver == "cg":
            assert 1 < iters < 2000 and res <= 1e-13, (kind, solver, iters, res)
        else:
            assert iters == 0 and res == 0.0, (kind, solver)
    slope = _slope(params, v, z, y, k)
    np.testing.assert_allclose(float(info["decrease_rate"]), -0.5 * slope, rtol=1e-6)


@pytest.mark.parametrize(("kind", "seed"), [("param-sobolev", 103), ("grad-penalty", 122)])
def test_variants_a_and_c_can_increase_mmd_while_kernelized_cannot(kind, seed):
    """Spec §2.1 / §3.6 item 6: variants A and C are not always descent directions (small M).

    Fixed configurations (found by a search over seeds) where A (resp. C) goes uphill, by
    finite differences, while variant B goes downhill from the same point."""
    gen, params, z, y, rff = _rff_setup(seed=seed)
    k = features.rff_kernel(rff)
    for kd, sign in ((kind, 1), ("kernelized", -1)):
        solver = _SOLVERS.get(kd, ("auto",))[0]
        v, info = direction(
            gen, params, z, y, k, 1e-3, kind=kd, solver=solver, cg_tol=1e-13, cg_maxiter=2000
        )
        assert sign * _slope(params, v, z, y, k) > 1e-3, kd
        assert -sign * float(info["decrease_rate"]) > 0, kd


@pytest.mark.parametrize(("iters", "warm"), [(1, False), (2, False), (3, False), (2, True)])
def test_truncated_cg_is_the_krylov_minimiser_and_a_descent_direction(iters, warm):
    """CG stopped after k iterations from x0 = argmin of q(x) = 1/2 x^T A x - b^T x over
    x0 + span{r0, A r0, ..., A^(k-1) r0} (explicit P x P A = K + reg I in float64). From 0,
    or from a warm start rescaled to its best multiple (here an *uphill* one, -theta_dot),
    q(x_k) <= 0, i.e. <b, x_k> >= 1/2 x_k^T A x_k > 0: a descent direction however early
    CG stops."""
    gen, params = _mlp(jax.random.key(70), h=8)  # shapes of the descent test: no new compile
    z = jax.random.normal(jax.random.key(71), (12, 2))
    y = jax.random.normal(jax.random.key(72), (15, 2)) * 0.5 + 1.0
    bw, reg = 0.8, 1e-3
    exact, J, H, c = _explicit_b(gen, params, z, y, bw, reg)
    m = 12
    A = J.T @ H @ J / m**2 + reg * np.eye(J.shape[1])
    b = J.T @ c.reshape(-1) / m
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    uphill = -exact + np.random.default_rng(0).normal(size=exact.shape) * 0.3 * np.abs(exact)
    x0 = (b @ uphill) / (uphill @ A @ uphill) * uphill if warm else np.zeros_like(b)
    r0 = b - A @ x0
    V = np.stack([np.linalg.matrix_power(A, i) @ r0 for i in range(iters)], axis=1)
    Q, _ = np.linalg.qr(V)
    want = x0 + Q @ np.linalg.solve(Q.T @ A @ Q, Q.T @ r0)
    kw = {"v0": unravel(jnp.asarray(uphill))} if warm else {}
    v, info = direction(
        gen, params, z, y, kernels.Gaussian(bw), reg, cg_tol=0.0, cg_maxiter=iters, **kw
    )
    assert int(info["cg_iterations"]) == iters
    np.testing.assert_allclose(_flat(v), want, rtol=1e-6, atol=1e-12)
    xk = np.asarray(_flat(v))
    assert b @ xk >= 0.5 * xk @ A @ xk > 0
    np.testing.assert_allclose(float(info["decrease_rate"]), b @ xk, rtol=1e-9)
