"""The contract every flow of the registry (``mmdflow.flows.FLOWS``) meets, at its defaults.

A new flow (a velocity field plus one registry line) is picked up here without a new test:
MMD^2 decreases on a 2-D pair (a density flow's KSD^2 to a 2-D Gaussian density),
``jit(step)`` traces once, float32 and float64 particles keep their dtype and agree, bad
hyperparameters raise ``ValueError``, and the run on 8 host devices (padded, sharded) equals
the one-device run (``_sharding_checks.py``, read by
``test_sharded_registry_flows_equal_one_device``).
"""

import _sharding_checks
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmdflow import densities, flows, kernels

NAMES = list(flows.FLOWS)
# every flow on every target it takes: "srmmd" toward samples and toward a density (the
# field holds a log-density; no target samples), as "srmmd" and "srmmd-density"
CASES = {
    f"{n}-density" if t == "density" and len(flows.targets(n)) > 1 else n: (n, t)
    for n in NAMES
    for t in flows.targets(n)
}
DENSITY_NAMES = [c for c, (_, t) in CASES.items() if t == "density"]
SAMPLE_NAMES = [c for c, (_, t) in CASES.items() if t == "samples"]
N, D, BW = 120, 2, 1.0
KERNEL = kernels.Gaussian(BW)
# the density flows' target: y's mean, at the length scale BW their default steps assume
# (at y's scale 0.5 SVGD's step oscillates: KSD^2 17.7 -> 369 in 20 steps)
TARGET = densities.Gaussian(mean=(1.5, -0.5), cov=((1.0, 0.0), (0.0, 1.0)))


def _pair(dtype=np.float32):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D))
    y = 0.5 * rng.normal(size=(N, D)) + np.array([1.5, -0.5])
    return jnp.asarray(x, dtype), jnp.asarray(y, dtype)


def _flow(case, **over):
    name, target = CASES[case]
    density = {"logp": TARGET} if target == "density" else {}
    kw = flows.FLOWS[name].defaults_for(KERNEL, BW, N, D, jax.random.key(5), **density)
    return flows.make(name, **{**kw, **over})


def _target(name, y):
    """What a step takes: the samples ``y``, or ``None`` for a density flow."""
    return None if name in DENSITY_NAMES else y


def _mmd2_np(x, y):
    """Biased MMD^2 of the Gaussian kernel in float64 NumPy (independent of the library)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)

    def mean_k(a, b):
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return np.exp(-d2 / (2 * BW**2)).mean()

    return mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y)


def test_registry_names_and_defaults():
    assert {"sobolev", "mmd", "neural-sobolev", "srmmd"} <= set(SAMPLE_NAMES)
    assert {"svgd", "ksd", "srmmd-density"} <= set(DENSITY_NAMES)
    for case, (_, target) in CASES.items():
        f = _flow(case)
        assert isinstance(f, flows.ParticleFlow) and f.kernel is KERNEL
        assert getattr(f.field, "target", "samples") == target


@pytest.mark.parametrize("name", SAMPLE_NAMES)
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


def _ksd2_np(x):
    """V-statistic KSD^2 to TARGET, Gaussian kernel, in float64 NumPy (from the formula)."""
    x = np.asarray(x, np.float64)
    s = -(x - np.array(TARGET.mean))  # unit covariance
    r = x[:, None, :] - x[None, :, :]
    r2 = (r**2).sum(-1)
    sr = np.einsum("id,ijd->ij", s, r) - np.einsum("jd,ijd->ij", s, r)
    kp = np.exp(-r2 / (2 * BW**2)) * (s @ s.T + sr / BW**2 + D / BW**2 - r2 / BW**4)
    return kp.mean()


@pytest.mark.parametrize("name", DENSITY_NAMES)
def test_ksd2_decreases_toward_a_2d_density(name):
    x, _ = _pair()
    f = _flow(name)
    state, hist = flows.run(f, x, None, num_steps=40, key=jax.random.key(0), record_every=20)
    assert "mmd2" not in hist and np.all(np.diff(hist["ksd2"]) < 0), hist["ksd2"]
    assert _ksd2_np(state.x) < 0.9 * _ksd2_np(x), hist["ksd2"]
    np.testing.assert_allclose(hist["ksd2"][-1], _ksd2_np(state.x), rtol=1e-3, atol=1e-6)
    assert np.all(np.isfinite(hist["kinetic"][1:])) and np.all(hist["kinetic"][1:] > 0)


@pytest.mark.parametrize("name", CASES)
def test_jitted_step_traces_once(name):
    x, y = _pair()
    y = _target(name, y)
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


@pytest.mark.parametrize("name", CASES)
def test_float32_and_float64(name):
    with jax.enable_x64(True):
        x64, y64 = _pair(np.float64)
        y64 = _target(name, y64)
        f = _flow(name)
        s64 = jax.jit(lambda s: flows.scan(f, s, y64, 3))(f.init(x64, jax.random.key(0)))[0]
        x32 = x64.astype(jnp.float32)
        y32 = None if y64 is None else y64.astype(jnp.float32)
        s32 = jax.jit(lambda s: flows.scan(f, s, y32, 3))(f.init(x32, jax.random.key(0)))[0]
    assert s64.x.dtype == jnp.float64 and s32.x.dtype == jnp.float32
    moved = np.abs(np.asarray(s64.x) - np.asarray(x64)).max()
    assert moved > 0
    # the same flow in both precisions (float32 round-off over 3 steps)
    assert np.abs(np.asarray(s32.x, np.float64) - np.asarray(s64.x)).max() < 1e-3 * max(moved, 1)


@pytest.mark.parametrize("name", CASES)
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


def test_missing_hyperparameter_raises():
    with pytest.raises(ValueError, match=r"flow 'svgd': missing hyperparameter\(s\) \['logp'\]"):
        flows.make("svgd", KERNEL)
    with pytest.raises(ValueError, match=r"flow 'mmd': missing hyperparameter\(s\) \['kernel'\]"):
        flows.make("mmd")


@pytest.fixture(scope="module")
def results(request):
    # the 8-device subprocess (started by conftest.py when collection finished)
    return _sharding_checks.results(_sharding_checks.shared_dir(request.config))


def test_sharded_registry_flows_equal_one_device(results):
    sharded = results["registry"]
    assert set(sharded) == set(CASES)
    for name, r in sharded.items():  # summation order only: a few hundred ulps
        assert r["rel"] < 1e3 * r["eps"], (name, r)
    assert sharded["mmd"]["eps"] == np.finfo(np.float64).eps  # the check runs in float64
