"""Generator directions: matrix-free variant B vs explicit references, limits, descent."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import mmdflow
from mmdflow import kernelized, kernels, sobolev

# jit the direction (the CG loop and kernel sums compile once per test)
direction = jax.jit(
    kernelized.direction,
    static_argnums=(0,),
    static_argnames=("kind", "cg_tol", "cg_maxiter", "impl"),
)


def _mlp(key, dz=2, h=6, d=2):
    k1, k2 = jax.random.split(key)
    params = {
        "w1": jax.random.normal(k1, (dz, h)) / np.sqrt(dz),
        "b1": jnp.zeros(h) + 0.1,
        "w2": jax.random.normal(k2, (h, d)) / np.sqrt(h),
        "b2": jnp.zeros(d),
    }
    gen = lambda p, z: jnp.tanh(z @ p["w1"] + p["b1"][None]) @ p["w2"] + p["b2"][None]
    return gen, params


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
    """g_theta(j) = theta_j: variant B = Sobolev descent with reg M*lambda; C = Sobolev / M."""
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


def test_large_reg_limit_is_plain_mmd_gradient_descent():
    gen, params = _mlp(jax.random.key(6))
    z = jax.random.normal(jax.random.key(7), (16, 2))
    y = jax.random.normal(jax.random.key(8), (20, 2)) + 0.5
    k = kernels.Gaussian(1.0)
    gd, _ = direction(gen, params, z, y, k, kind="mmd-gd")
    for kind in ("kernelized", "grad-penalty"):
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
    f = lambda t: float(mmdflow.mmd2(gen(jax.tree.map(lambda p, d: p + t * d, params, v), z), y, k))
    h = 1e-6
    assert (f(h) - f(-h)) / (2 * h) < 0


def test_bad_direction_input():
    gen, params = _mlp(jax.random.key(0))
    z = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="kind"):
        direction(gen, params, z, jnp.zeros((5, 2)), kernels.Gaussian(1.0), kind="adam")
    with pytest.raises(ValueError, match=r"gen_fn.*d=2.*d=3"):
        direction(gen, params, z, jnp.zeros((5, 3)), kernels.Gaussian(1.0))
