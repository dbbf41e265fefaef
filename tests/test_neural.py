"""Neural Sobolev descent: jit purity, the augmented-Lagrangian critic, velocity, a short flow."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mmdflow import fields, flows, kernels, mmd2

F32 = jnp.float32


def _flow(critic, **kw):
    return flows.make("neural-sobolev", critic=critic, **kw)


def _problem(n=300, m=300, seed=0):
    """Source N(0, I) particles, target N((2, 2), 0.5^2 I) samples, float32."""
    kx, ky = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (n, 2), F32)
    y = 0.5 * jax.random.normal(ky, (m, 2), F32) + 2.0
    return x, y


def _critic(seed=1, hidden=(64, 64)):
    return fields.mlp_critic(2, hidden=hidden, key=jax.random.key(seed))


def test_mlp_critic_shape_and_dtype():
    f = fields.mlp_critic(2, hidden=(16, 16), key=jax.random.key(0))
    out = f(jnp.ones((5, 2), F32))
    assert out.shape == (5,)
    assert out.dtype == F32
    with pytest.raises(ValueError, match="hidden"):
        fields.mlp_critic(2, hidden=())


def _grad_and_disc(critic, params, x, y):
    """Independently of the stepper: per-point ``grad_x f`` and ``mean f(y) - mean f(x)``
    for a clone of ``critic`` with ``params``."""
    model = nnx.clone(critic)
    nnx.update(model, params)
    graphdef, state = nnx.split(model)

    @jax.jit
    def fn(state, x, y):
        m = nnx.merge(graphdef, state)
        g = jax.vmap(jax.grad(lambda z: m(z[None, :])[0]))(x)
        return g, jnp.mean(m(y)) - jnp.mean(m(x))

    return fn(state, x, y)


class _Traced:
    """A stepper and its jitted ``step``, counting traces with a python side effect."""

    def __init__(self):
        self.x, self.y = _problem(n=64, m=48)
        self.critic = _critic(hidden=(16, 16))
        self.eps = 0.07
        self.stepper = _flow(
            self.critic, critic_steps=2, step_size=self.eps
        )  # startup_critic_steps=None: 20 critic updates at count == 0
        self.traces = 0
        self.step = jax.jit(self._step)

    def _step(self, state, y):
        self.traces += 1  # runs only while tracing
        return self.stepper.step(state, y)


@pytest.fixture(scope="module")
def traced():
    return _Traced()


def test_step_traced_once(traced):
    state = traced.stepper.init(traced.x, jax.random.key(0))
    for _ in range(5):
        state, aux = traced.step(state, traced.y)
    assert traced.traces == 1
    assert int(state.count) == 5
    assert state.x.shape == traced.x.shape and state.x.dtype == F32
    assert set(aux) == {"kinetic", "critic", "omega", "lagrange"}
    assert all(np.isfinite(float(v)) for v in aux.values())


def test_velocity_is_grad_of_merged_critic(traced):
    s, x, y, eps = traced.stepper, traced.x, traced.y, traced.eps
    state = s.init(x, jax.random.key(0))
    new, aux = traced.step(state, y)

    # Independent critic: a clone of the module with the updated parameters.
    g, disc = _grad_and_disc(traced.critic, new.extra.params, x, y)
    assert float(jnp.abs(g).max()) > 0.1
    np.testing.assert_allclose(new.x - x, eps * g, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(aux["omega"], jnp.mean(jnp.sum(g * g, axis=1)), rtol=1e-5)
    np.testing.assert_allclose(aux["kinetic"], eps * aux["omega"], rtol=1e-5)
    np.testing.assert_allclose(aux["critic"], disc, rtol=1e-5, atol=1e-6)
    # The stepper's module is never modified.
    before = nnx.state(traced.critic, nnx.Param)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.extra.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_constraint_active_and_critic_separates_on_fixed_particles():
    # Overlapping supports: with disjoint ones the q-only constraint leaves f free to
    # grow on the target, and the multiplier keeps chasing it.
    x, y = _problem(n=200, m=200)
    y = y - 1.0  # target N((1, 1), 0.5^2 I)
    critic = _critic()
    s = _flow(critic)  # default rho, optimizer
    state = s.init(x, jax.random.key(0))
    w = state.wx

    extra = jax.jit(
        lambda e: s.field.fit_critic(e, x, w, y, w, jax.random.key(1), 600, s.field.rho)
    )(state.extra)
    g, disc = _grad_and_disc(critic, extra.params, x, y)
    omega = float(jnp.mean(jnp.sum(g * g, axis=1)))
    assert abs(omega - 1.0) < 0.15, omega
    assert float(disc) > 0.5, disc
    assert float(extra.lagrange) > 0.0  # the constraint is binding: lam ~ disc / 2
    vel = s.field.fit(x, w, y, w, extra, jax.random.key(1), 1)[0]  # one more update
    np.testing.assert_allclose(vel.at_x, vel.fn(x), rtol=1e-6, atol=1e-7)


def test_flow_reduces_mmd():
    x, y = _problem()
    s = _flow(_critic())  # defaults
    state, hist = flows.run(s, x, y, num_steps=100, key=jax.random.key(2), record_every=25)
    m = hist["mmd2"]
    assert m.shape == (5,)
    assert m[-1] < m[0] / 5.0, m
    np.testing.assert_allclose(m[-1], mmd2(state.x, y, kernels.Gaussian(1.0)), atol=1e-6)
    assert np.all(np.isfinite(hist["critic"][1:]))


def test_minibatches_weights_reset_and_column_output():
    x, y = _problem(n=80, m=60)
    x = x.astype(jnp.float64)  # float64 particles, float32 parameters
    critic = nnx.Sequential(
        nnx.Linear(2, 16, rngs=nnx.Rngs(0)), jnp.tanh, nnx.Linear(16, 1, rngs=nnx.Rngs(1))
    )  # [n, d] -> [n, 1]
    s = _flow(
        critic,
        optimizer=optax.sgd(1e-2),
        critic_steps=3,
        startup_critic_steps=3,
        particle_batch=32,
        target_batch=16,
        reset_optimizer=False,
    )
    wx = jnp.linspace(0.5, 1.5, 80)
    state = s.init(x, jax.random.key(0), wx)
    state, aux = jax.jit(lambda st: flows.scan(s, st, y, 4))(state)
    assert aux["critic"].shape == (4,)
    assert state.x.dtype == jnp.float64
    assert np.all(np.isfinite(np.asarray(state.x)))
    assert not np.array_equal(state.key, jax.random.key(0))


def test_bad_critic_output_shape():
    bad = nnx.Linear(2, 2, rngs=nnx.Rngs(0))  # [n, 2]
    s = _flow(bad)
    with pytest.raises(ValueError, match="critic"):
        s.init(jnp.zeros((4, 2), F32), jax.random.key(0))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("critic_steps", 0),
        ("critic_steps", 2.5),
        ("step_size", 0.0),
        ("step_size", -0.1),
        ("rho", -1e-3),
        ("startup_critic_steps", 0),
        ("particle_batch", 0),
        ("target_batch", -4),
    ],
)
def test_bad_hyperparameters_raise(field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        _flow(_critic(hidden=(16, 16)), **{field: value})


def test_bad_critic_type_raises():
    with pytest.raises(ValueError, match="`critic`"):
        _flow(lambda x: x[:, 0])
