"""The contract every flow of the registry (``mmdflow.flows.FLOWS``) meets, at its defaults.

A new flow (a velocity field plus one registry line) is picked up here without a new test:
MMD^2 decreases on a 2-D pair, ``jit(step)`` traces once, float32 and float64 particles
keep their dtype and agree, bad hyperparameters raise ``ValueError``, and the run on 8 host
devices (padded, sharded) equals the one-device run (``_sharding_checks.py``, read by
``test_sharded_registry_flows_equal_one_device``).
"""

import _sharding_checks
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmdflow import flows, kernels

NAMES = list(flows.FLOWS)
N, D, BW = 120, 2, 1.0
KERNEL = kernels.Gaussian(BW)


def _pair(dtype=np.float32):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D))
    y = 0.5 * rng.normal(size=(N, D)) + np.array([1.5, -0.5])
    return jnp.asarray(x, dtype), jnp.asarray(y, dtype)


def _flow(name, **over):
    kw = flows.FLOWS[name].defaults_for(KERNEL, BW, N, D, jax.random.key(5))
    return flows.make(name, **{**kw, **over})


def _mmd2_np(x, y):
    """Biased MMD^2 of the Gaussian kernel in float64 NumPy (independent of the library)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)

    def mean_k(a, b):
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return np.exp(-d2 / (2 * BW**2)).mean()

    return mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y)


def test_registry_names_and_defaults():
    assert {"sobolev", "mmd", "neural-sobolev"} <= set(NAMES)
    for name in NAMES:
        f = _flow(name)
        assert isinstance(f, flows.ParticleFlow) and f.kernel is KERNEL


@pytest.mark.parametrize("name", NAMES)
def test_mmd2_decreases_on_a_2d_pair(name):
    x, y = _pair()
    f = _flow(name)
    state, hist = flows.run(f, x, y, num_steps=40, key=jax.random.key(0), record_every=20)
    # every record lower than the one before, and 10% lower in all (the slowest flow at
    # its defaults, neural Sobolev descent moving ~0.005 bandwidths per step: 16%)
    assert np.all(np.diff(hist["mmd2"]) < 0), hist["mmd2"]
    assert _mmd2_np(state.x, y) < 0.9 * _mmd2_np(x, y), hist["mmd2"]
    np.testing.assert_allclose(hist["mmd2"][-1], _mmd2_np(state.x, y), rtol=1e-3, atol=1e-6)
    assert np.all(np.isfinite(hist["kinetic"][1:])) and np.all(hist["kinetic"][1:] > 0)


@pytest.mark.parametrize("name", NAMES)
def test_jitted_step_traces_once(name):
    x, y = _pair()
    f = _flow(name)
    traces = []

    @jax.jit
    def step(state, y):
        traces.append(1)
        return f.step(state, y)

    state = f.init(x, jax.random.key(0))
    for _ in range(3):
        state, aux = step(state, y)
    assert len(traces) == 1
    assert {"kinetic", "critic"} <= set(aux)
    assert int(state.count) == 3


@pytest.mark.parametrize("name", NAMES)
def test_float32_and_float64(name):
    with jax.enable_x64(True):
        x64, y64 = _pair(np.float64)
        f = _flow(name)
        s64 = jax.jit(lambda s: flows.scan(f, s, y64, 3))(f.init(x64, jax.random.key(0)))[0]
        x32, y32 = x64.astype(jnp.float32), y64.astype(jnp.float32)
        s32 = jax.jit(lambda s: flows.scan(f, s, y32, 3))(f.init(x32, jax.random.key(0)))[0]
    assert s64.x.dtype == jnp.float64 and s32.x.dtype == jnp.float32
    moved = np.abs(np.asarray(s64.x) - np.asarray(x64)).max()
    assert moved > 0
    # the same flow in both precisions (float32 round-off over 3 steps)
    assert np.abs(np.asarray(s32.x, np.float64) - np.asarray(s64.x)).max() < 1e-3 * max(moved, 1)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"step_size": 0.0}, "step_size"),
        ({"step_size": float("nan")}, "step_size"),
        ({"noise_level": -1.0}, "noise_level"),
        ({"max_move": -1.0}, "max_move"),
        ({"no_such_hyperparameter": 1}, "no_such_hyperparameter"),
    ],
)
def test_bad_hyperparameters_raise(name, over, match):
    with pytest.raises(ValueError, match=match):
        _flow(name, **over)


def test_unknown_flow_raises():
    with pytest.raises(ValueError, match="unknown flow 'nope'"):
        flows.make("nope", KERNEL)


@pytest.fixture(scope="module")
def results(request):
    # the 8-device subprocess (started by conftest.py when collection finished)
    return _sharding_checks.results(_sharding_checks.shared_dir(request.config))


def test_sharded_registry_flows_equal_one_device(results):
    sharded = results["registry"]
    assert set(sharded) == set(NAMES)
    for name, r in sharded.items():  # summation order only: a few hundred ulps
        assert r["rel"] < 1e3 * r["eps"], (name, r)
    assert sharded["mmd"]["eps"] == np.finfo(np.float64).eps  # the check runs in float64
