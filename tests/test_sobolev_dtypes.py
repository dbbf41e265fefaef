"""Kernel Sobolev descent on bfloat16 / float16 particles: computed in float32, stored as given."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmdflow import flows, kernels, sobolev


@pytest.mark.parametrize("num_features", [None, 64])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_sobolev_descent_low_precision_particles(num_features, dtype):
    x32 = jax.random.normal(jax.random.key(0), (40, 2), jnp.float32)
    x = x32.astype(dtype)
    y = (x32 + 1.0).astype(dtype)
    # the float32 computation on the same (rounded) points, the same random features
    xr, yr = x.astype(jnp.float32), y.astype(jnp.float32)
    s = flows.make(
        "sobolev", kernels.Gaussian(1.0), step_size=0.1, reg=0.1, num_features=num_features
    )
    key = jax.random.key(1)
    state = s.init(x, key)
    new, aux = s.step(state, y)  # NotImplementedError (half-precision linear solve) before
    ref, ref_aux = s.step(s.init(xr, key), yr)
    assert new.x.dtype == dtype
    # the critic is computed in float32: its diagnostics agree to float32 round-off
    for name in ("critic", "mmd2_critic"):
        assert aux[name].dtype == jnp.float32
        np.testing.assert_allclose(aux[name], ref_aux[name], rtol=1e-5)
    # the particles move by the float32 displacement, rounded to the particles' dtype
    eps = float(jnp.finfo(dtype).eps)
    dx, dx_ref = np.float32(new.x) - np.float32(x), np.float32(ref.x) - np.float32(xr)
    np.testing.assert_allclose(dx, dx_ref, atol=4 * eps * float(jnp.max(jnp.abs(xr))) + 1e-6)
    assert np.abs(dx_ref).max() > 1e-2  # a real step


def test_critics_take_half_precision_points():
    x = jax.random.normal(jax.random.key(0), (30, 2)).astype(jnp.bfloat16)
    y = (x + 1.0).astype(jnp.bfloat16)
    c = sobolev.exact_critic(kernels.Gaussian(1.0), x, y, 0.1)
    assert c.grad_at_x.dtype == jnp.float32 and np.all(np.isfinite(c.grad_at_x))
    rff = sobolev.RFF.create(kernels.Gaussian(1.0), jax.random.key(2), 32, 2)
    assert np.all(np.isfinite(sobolev.rff_critic(rff, x, y, 0.1).grad(x)))
