"""Particle flows: Sobolev critics vs independent references, theory checks, steppers, driver."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _refs import grad_x as ref_grad_x

import mmdflow
from mmdflow import features, fields, flows, kernels, sobolev


def _problem(rng, n=40, m=35, d=2):
    x = rng.normal(size=(n, d))
    y = rng.normal(size=(m, d)) * 0.7 + 1.0
    return x, y


def _np_exact_sobolev_velocity(x, y, bw, reg, a=None):
    """Float64 NumPy: push-through form of (D + reg)^-1 delta for the Gaussian kernel."""
    n, d = x.shape
    a = np.full(n, 1 / n) if a is None else a / a.sum()
    b = np.full(len(y), 1 / len(y))
    diff = x[:, None, :] - x[None, :, :]
    K = np.exp(-(diff**2).sum(-1) / (2 * bw**2))
    # H[i, j, a, b] = d^2 k(x_i, x_j) / dx_i^a dx_j^b = K (I / bw^2 - diff diff^T / bw^4)
    H = K[..., None, None] * (np.eye(d) / bw**2 - diff[..., :, None] * diff[..., None, :] / bw**4)
    H = H.transpose(0, 2, 1, 3).reshape(n * d, n * d)
    g = np.einsum("ijd,j->id", ref_grad_x("gaussian", x, y, {"bw": bw}), b) - np.einsum(
        "ijd,j->id", ref_grad_x("gaussian", x, x, {"bw": bw}), a
    )
    s = np.repeat(np.sqrt(a), d)
    G = s[:, None] * H * s[None, :]
    c = np.linalg.solve(G + reg * np.eye(n * d), s * g.reshape(-1))
    v = (g.reshape(-1) - H @ (s * c)) / reg
    return v.reshape(n, d)


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
def test_exact_critic_matches_numpy(solver, rng):
    x, y = _problem(rng)
    a = rng.uniform(0.2, 1.0, size=len(x))
    want = _np_exact_sobolev_velocity(x, y, 0.9, 0.05, a)

    @jax.jit  # one compilation instead of many eager ones
    def velocities(x, y, a):
        c = sobolev.exact_critic(
            kernels.Gaussian(0.9), x, y, 0.05, wx=a, solver=solver, cg_tol=1e-12, cg_maxiter=5000
        )
        # the gradient of the critic's value, by autodiff
        g = jax.vmap(jax.grad(lambda z: c.value(z[None])[0]))(x[:5])
        return c.grad_at_x, c.grad(x), g

    at_x, field, g = velocities(x, y, a)
    np.testing.assert_allclose(at_x, want, rtol=1e-7, atol=1e-9)
    # the critic's gradient field evaluated anywhere agrees at the particles
    np.testing.assert_allclose(field, want, rtol=1e-7, atol=1e-9)
    # and is the gradient of the critic's value
    np.testing.assert_allclose(g, want[:5], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("block_rows", [None, 7])
def test_rff_critic_matches_explicit_jacobian_numpy(block_rows, rng, monkeypatch):
    # block_rows=7: the sums over points run in strided row blocks (40 = 5 x 7 + 5 rows,
    # zero-weight padding), and critic.grad / value map over blocks of 7 rows
    if block_rows is not None:
        monkeypatch.setattr(sobolev, "RFF_BLOCK_ROWS", block_rows)
    x, y = _problem(rng, d=3)
    rff = features.RFF.create(kernels.Gaussian(1.1), jax.random.key(0), 64, 3, dtype=jnp.float64)
    W, b = np.asarray(rff.w), np.asarray(rff.b)
    m = W.shape[0]
    phi = lambda X: np.sqrt(2 / m) * np.cos(X @ W.T + b)
    jac = lambda X: -np.sqrt(2 / m) * np.sin(X @ W.T + b)[:, :, None] * W[None]  # [n, m, d]
    J = jac(x)
    D = np.einsum("nka,nla->kl", J, J) / len(x)
    delta = phi(y).mean(0) - phi(x).mean(0)
    u = np.linalg.solve(D + 0.03 * np.eye(m), delta)
    c = sobolev.rff_critic(rff, x, y, 0.03)
    np.testing.assert_allclose(c.u, u, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(c.grad(x), np.einsum("nka,k->na", J, u), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(c.discrepancy_sq, delta @ u, rtol=1e-8)
    np.testing.assert_allclose(c.value(y), phi(y) @ u, rtol=1e-8, atol=1e-12)


def test_rff_step_memory_does_not_grow_with_n(monkeypatch):
    # the compiled cached-embedding RFF step holds one [RFF_BLOCK_ROWS, m] block of features,
    # not [n, m]: 16x more particles, about the same temporaries (only O(n d) more)
    monkeypatch.setattr(sobolev, "RFF_BLOCK_ROWS", 256)
    s = flows.make("sobolev", kernels.Gaussian(1.0), reg=0.1, num_features=128)

    def temp_bytes(n):
        x = jnp.zeros((n, 2), jnp.float32)
        st = s.init(x, jax.random.key(0))
        mem = jax.jit(s.step).lower(st, x).compile().memory_analysis()
        return mem.temp_size_in_bytes

    small, large = temp_bytes(1024), temp_bytes(16384)
    assert large < 1.5 * small + 64 * 16384 * 2 * 4, (small, large)
    assert large < 16384 * 128 * 4  # less than one [n, m] float32 array


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
def test_feature_space_and_sample_space_forms_agree(solver, rng):
    """With k = phi . phi exactly, the exact (sample-space) critic equals the RFF critic."""
    x, y = _problem(rng, n=25, m=20)
    rff = features.RFF.create(kernels.Gaussian(1.0), jax.random.key(3), 30, 2, dtype=jnp.float64)
    z = rng.normal(size=(6, 2))

    @jax.jit  # one compilation instead of many eager ones
    def both(x, y, z):
        c1 = sobolev.rff_critic(rff, x, y, 0.05)
        kf = features.rff_kernel(rff)
        c2 = sobolev.exact_critic(kf, x, y, 0.05, solver=solver, cg_tol=1e-13, cg_maxiter=5000)
        return [
            (c2.grad_at_x, c1.grad(x)),
            (c2.grad(z), c1.grad(z)),
            (c2.value(z), c1.value(z)),
            (c2.discrepancy_sq, c1.discrepancy_sq),
        ], (c2.mmd2, c1.mmd2)

    pairs, (mmd_exact, mmd_rff) = both(x, y, z)
    for got, want in pairs:
        np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(mmd_exact, mmd_rff, rtol=1e-10)


def test_rff_critic_converges_to_exact_as_features_grow(rng):
    x, y = _problem(rng, n=30, m=25)
    k = kernels.Gaussian(1.0)
    exact = sobolev.exact_critic(k, x, y, 0.05).grad_at_x
    errs = []
    for m in (32, 256, 2048):

        @jax.jit
        def velocity(key, m=m):
            rff = features.RFF.create(k, key, m, 2, dtype=jnp.float64)
            return sobolev.rff_critic(rff, x, y, 0.05).grad(x)

        vs = [velocity(jax.random.key(seed)) for seed in range(3)]
        errs.append(np.mean([np.linalg.norm(v - exact) / np.linalg.norm(exact) for v in vs]))
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 0.12


def test_large_reg_limit_is_the_mmd_flow(rng):
    x, y = _problem(rng)
    k = kernels.Gaussian(1.0)
    reg = 1e5
    v = sobolev.exact_critic(k, x, y, reg).grad_at_x
    np.testing.assert_allclose(reg * v, mmdflow.witness_grad(x, x, y, k), rtol=1e-3, atol=1e-8)


@pytest.mark.parametrize("num_features", [None, 256])
def test_small_steps_decrease_mmd_monotonically(num_features, rng):
    x, y = _problem(rng, n=50, m=60)
    k = kernels.Gaussian(1.0)
    s = flows.make("sobolev", k, step_size=0.05, reg=0.05, num_features=num_features)
    state = s.init(jnp.asarray(x), jax.random.key(0))
    state, aux = jax.jit(lambda st: flows.scan(s, st, jnp.asarray(y), 60))(state)
    # the MMD^2 of the critic's own feature space, measured before each step
    m = np.asarray(aux["mmd2_critic"])
    assert np.all(np.diff(m) < 0), np.diff(m).max()
    assert m[-1] < 0.5 * m[0]
    if num_features is None:
        assert float(mmdflow.mmd2(state.x, y, k)) < m[-1]


def test_rff_steps_match_sobolev_critic_with_cached_and_redrawn_features(rng):
    """Fixed features: mu_p is cached after step 1; resampling: fresh features each step.

    Reference: the critic recomputed from scratch by :func:`mmdflow.sobolev.rff_critic`
    (which never caches), with the features drawn by hand from the stepper's key.
    """
    x, y = _problem(rng, n=50, m=45)
    x, y = jnp.asarray(x), jnp.asarray(y)
    k = kernels.Gaussian(0.9)
    s = flows.make("sobolev", k, step_size=0.3, reg=0.05, num_features=32)
    st = s.init(x, jax.random.key(0))
    assert not bool(st.extra.has_mu_p)
    step = jax.jit(s.step)
    for _ in range(3):
        want = st.x + 0.3 * sobolev.rff_critic(st.extra.rff, st.x, y, 0.05).grad(st.x)
        st, _ = step(st, y)
        np.testing.assert_allclose(st.x, want, rtol=1e-12, atol=1e-12)
        assert bool(st.extra.has_mu_p)
        mu_p = jnp.mean(st.extra.rff(y), axis=0)
        np.testing.assert_allclose(st.extra.mu_p, mu_p, rtol=1e-12, atol=1e-14)
    r = flows.make("sobolev", k, step_size=0.3, reg=0.05, num_features=32, resample_features=True)
    st = r.init(x, jax.random.key(0))
    for _ in range(3):
        key, kf = jax.random.split(st.key)
        rff = features.RFF.create(k, kf, 32, 2, dtype=x.dtype)
        want = st.x + 0.3 * sobolev.rff_critic(rff, st.x, y, 0.05).grad(st.x)
        st, _ = r.step(st, y)
        np.testing.assert_allclose(st.x, want, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(jax.random.key_data(st.key), jax.random.key_data(key))
    with pytest.raises(ValueError, match="resample_features"):
        flows.make("sobolev", k, resample_features=True)


def test_larger_reg_gives_lower_kinetic_energy(rng):
    x, y = _problem(rng, n=60, m=60)
    k = kernels.Gaussian(1.0)
    energies = []
    for reg in (0.01, 0.1, 1.0):
        s = flows.make("sobolev", k, step_size=0.1, reg=reg)
        state = s.init(jnp.asarray(x), jax.random.key(0))
        _, aux = jax.jit(lambda st, s=s: flows.scan(s, st, jnp.asarray(y), 20))(state)
        energies.append(float(np.sum(aux["kinetic"])))
    assert energies[0] > energies[1] > energies[2]


def test_mmd_flow_step_and_noise_injection(rng):
    x, y = _problem(rng)
    k = kernels.Gaussian(1.0)
    s = flows.make("mmd", k, step_size=2.0)
    st = s.init(jnp.asarray(x), jax.random.key(0))
    st1, aux = s.step(st, jnp.asarray(y))
    np.testing.assert_allclose(st1.x, x + 2.0 * mmdflow.witness_grad(x, x, y, k), rtol=1e-12)
    np.testing.assert_allclose(
        aux["kinetic"], 2.0 * np.mean(np.sum(mmdflow.witness_grad(x, x, y, k) ** 2, 1))
    )
    # noise: the gradient is evaluated at perturbed particles; keys advance
    sn = flows.make("mmd", k, step_size=2.0, noise_level=0.5)
    a1, _ = sn.step(sn.init(x, jax.random.key(0)), y)
    a2, _ = sn.step(sn.init(x, jax.random.key(1)), y)
    assert not np.allclose(a1.x, a2.x)
    # ParticleFlow's keys: init splits once; each step splits and folds 1 in for the noise
    kf = jax.random.split(jax.random.split(jax.random.key(0))[0])[1]
    eps = jax.random.normal(jax.random.fold_in(kf, 1), x.shape)
    np.testing.assert_allclose(
        a1.x, x + 2.0 * mmdflow.witness_grad(x + 0.5 * eps, x, y, k), rtol=1e-10
    )


def test_schedules_weights_unequal_sizes_and_dimension(rng):
    x, y = _problem(rng, n=30, m=45, d=5)
    wx = rng.uniform(0.5, 1.0, size=30)
    wy = rng.uniform(0.5, 1.0, size=45)
    k = kernels.Gaussian(2.0)
    s = flows.make(
        "sobolev",
        k,
        step_size=lambda c: 0.5 * 0.99**c,
        reg=lambda c: 0.1 + 0.0 * c,
        num_features=128,
    )
    state, hist = flows.run(
        s, x, y, num_steps=30, key=jax.random.key(0), record_every=10, wx=wx, wy=wy
    )
    assert state.x.shape == (30, 5)
    assert hist["mmd2"].shape == (4,)
    assert hist["mmd2"][-1] < hist["mmd2"][0]
    np.testing.assert_allclose(hist["mmd2"][0], mmdflow.mmd2(x, y, k, wx=wx, wy=wy), rtol=1e-10)


def test_jitted_step_traces_once(rng):
    x, y = _problem(rng)
    traces = []
    s = flows.make("sobolev", kernels.Gaussian(1.0), step_size=0.5, reg=0.1, num_features=64)

    @jax.jit
    def step(state, y):
        traces.append(1)
        return s.step(state, y)

    state = s.init(jnp.asarray(x, jnp.float32), jax.random.key(0))
    for _ in range(5):
        state, _ = step(state, jnp.asarray(y, jnp.float32))
    assert len(traces) == 1
    assert state.x.dtype == jnp.float32


def test_run_records_history_and_trajectory(rng):
    x, y = _problem(rng, n=100, m=100)
    s = flows.make("mmd", kernels.Gaussian(1.0), step_size=5.0)
    seen = []
    _, hist = flows.run(
        s,
        x,
        y,
        num_steps=25,
        key=jax.random.key(0),
        record_every=10,
        record_trajectory=True,
        callback=lambda step, rec: seen.append(step),
    )
    assert seen == [10, 20, 25]
    np.testing.assert_array_equal(hist["step"], [0, 10, 20, 25])
    assert hist["trajectory"].shape == (4, 100, 2)
    assert np.all(np.diff(hist["wall_time"]) >= 0)
    assert np.all(np.diff(hist["mmd2"]) < 0)


def test_sobolev_descent_reduces_mmd_100x_on_2d_problem():
    """n = 1000 particles, 2-D, RFF critic: >= 100x lower MMD^2 within 200 steps."""
    from mmdflow import data

    x0 = data.sample("gaussian", 1000, seed=0)
    y = data.sample("moons", 1000, seed=1)
    k = kernels.Gaussian(float(mmdflow.median_bandwidth(x0, y)))
    s = flows.make("sobolev", k, step_size=0.5, reg=0.01, num_features=256)
    _, hist = flows.run(s, x0, y, num_steps=200, key=jax.random.key(0), record_every=100)
    assert hist["mmd2"][0] / hist["mmd2"][-1] >= 100


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: flows.make("sobolev", kernels.Gaussian(1.0), step_size=0.0), "step_size"),
        (lambda: flows.make("sobolev", kernels.Gaussian(1.0), reg=-1.0), "reg"),
        (lambda: flows.make("sobolev", kernels.Gaussian(1.0), num_features=0), "num_features"),
        (lambda: flows.make("sobolev", "rbf"), "Kernel"),
        (lambda: flows.make("mmd", kernels.Gaussian(1.0), noise_level=-0.1), "noise_level"),
        (lambda: flows.make("mmd", kernels.Gaussian(1.0), step_size=float("nan")), "step_size"),
        (
            lambda: flows.make("sobolev", kernels.IMQ(1.0), num_features=8).init(
                jnp.zeros((3, 2)), jax.random.key(0)
            ),
            "shift-invariant",
        ),
        (
            lambda: flows.run(
                flows.make("mmd", kernels.Gaussian(1.0)),
                jnp.zeros((3, 2)),
                jnp.zeros((4, 3)),
                num_steps=2,
                key=jax.random.key(0),
            ),
            r"`y`.*d=3",
        ),
    ],
)
def test_bad_flow_input(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# --------------------------------------------------------------------------- run: continue, chunks


def _steppers_for_continuation():
    k = kernels.Gaussian(1.0)
    out = {
        "sobolev-rff-resampled": flows.make(
            "sobolev", k, step_size=0.5, reg=0.1, num_features=16, resample_features=True
        ),
        "sobolev-rff-fixed": flows.make("sobolev", k, step_size=0.5, reg=0.1, num_features=16),
        "mmd-noise": flows.make("mmd", k, step_size=2.0, noise_level=0.3),
    }
    critic = fields.mlp_critic(2, hidden=(8,), key=jax.random.key(3))
    out["neural"] = flows.make("neural-sobolev", k, critic=critic, step_size=0.05)
    return out


_CONTINUATION = _steppers_for_continuation()


def _same_history(h1, h2):
    assert set(h1) == set(h2)
    for name in h1:
        if name != "wall_time":
            np.testing.assert_array_equal(h1[name], h2[name], err_msg=name)


@pytest.mark.parametrize("name", sorted(_CONTINUATION))
def test_run_continued_from_state_and_history_is_bit_identical(name, rng):
    x, y = _problem(rng, n=24, m=20)
    x, y = np.float32(x), np.float32(y)
    s = _CONTINUATION[name]
    kw = dict(key=jax.random.key(0), record_every=3, record_trajectory=True)
    straight, h = flows.run(s, x, y, num_steps=13, **kw)
    first, h1 = flows.run(s, x, y, num_steps=7, **kw)  # ends between two records
    assert h1["step"].tolist() == [0, 3, 6, 7]
    cont, h2 = flows.run(s, None, y, num_steps=6, state=first, history=h1, **kw)
    # the continuation records at the same steps, without step 0 or step 7 again
    assert h2["step"].tolist() == [0, 3, 6, 7, 9, 12, 13]
    assert h["step"].tolist() == [0, 3, 6, 9, 12, 13]
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(cont), strict=True):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(a, b)  # particles, key, features, critic, optimizer
    keep = [0, 1, 2, 4, 5, 6]  # the straight run has no record at step 7
    _same_history(h, {k: v[keep] for k, v in h2.items()})
    assert np.all(np.diff(h2["wall_time"]) >= 0)


def test_run_results_do_not_depend_on_the_chunking(rng):
    x, y = _problem(rng, n=30, m=25)
    s = flows.make(
        "sobolev",
        kernels.Gaussian(1.0),
        step_size=0.5,
        reg=0.1,
        num_features=16,
        resample_features=True,
    )
    chunks = {}
    for seconds in (1e-9, 1e9):  # one step per chunk / a record interval per chunk
        seen = []
        kw = dict(num_steps=11, key=jax.random.key(0), record_every=5, record_trajectory=True)
        st, h = flows.run(
            s, x, y, chunk_seconds=seconds, on_chunk=lambda i, st, hf: seen.append(i), **kw
        )
        chunks[seconds] = (st, h, seen)
    (s1, h1, seen1), (s2, h2, seen2) = chunks[1e-9], chunks[1e9]
    assert seen1 == list(range(1, 12))
    assert seen2 == [1, 5, 10, 11]  # the first chunk (compiling) is one step
    np.testing.assert_array_equal(s1.x, s2.x)
    _same_history(h1, h2)


def test_run_on_chunk_gives_state_and_history_so_far(rng):
    x, y = _problem(rng, n=20, m=20)
    s = flows.make("mmd", kernels.Gaussian(1.0), step_size=2.0)
    seen = []

    def on_chunk(step, state, history):
        h = history()
        seen.append((step, int(state.count), h["step"].tolist(), h["trajectory"].shape[0]))

    flows.run(
        s,
        x,
        y,
        num_steps=4,
        key=jax.random.key(0),
        record_every=2,
        chunk_seconds=1e-9,
        record_trajectory=True,
        on_chunk=on_chunk,
    )
    assert seen == [
        (1, 1, [0], 1),
        (2, 2, [0, 2], 2),
        (3, 3, [0, 2], 2),
        (4, 4, [0, 2, 4], 3),
    ]


class _NaNAfter:
    """A stepper moving every particle by +1 per step; step ``bad`` gives NaN particles."""

    kernel = kernels.Gaussian(1.0)

    def __init__(self, bad):
        self.bad = bad

    def init(self, x0, key, wx=None):
        return flows.make("mmd", self.kernel).init(x0, key, wx)

    def step(self, state, y, wy=None):
        x = jnp.where(state.count + 1 >= self.bad, jnp.nan, state.x + 0.01)
        aux = {"kinetic": jnp.float32(0.0), "critic": jnp.float32(0.0)}
        return state._replace(x=x, count=state.count + 1), aux


def test_run_stops_at_non_finite_particles_keeping_the_last_finite_state(rng):
    x, y = _problem(rng, n=10, m=10)
    kw = dict(num_steps=20, key=jax.random.key(0), record_every=4, record_trajectory=True)
    state, h = flows.run(_NaNAfter(7), x, y, **kw)
    assert h["diverged"]["step"] == 6 and "non-finite" in h["diverged"]["reason"]
    assert int(state.count) == 6
    np.testing.assert_allclose(state.x, x + 0.06, rtol=1e-12)
    assert h["step"].tolist() == [0, 4, 6]  # the last finite state is recorded
    np.testing.assert_array_equal(h["trajectory"][-1], state.x)
    # off: the flow runs on into NaN
    state, h = flows.run(_NaNAfter(7), x, y, divergence_factor=None, **kw)
    assert "diverged" not in h and np.isnan(np.asarray(state.x)).all()


def test_run_stops_when_mmd2_rises(rng):
    x, y = _problem(rng, n=30, m=30)
    k = kernels.Gaussian(1.0)
    # a blown-up step flings the particles far from the target: MMD^2 -> E k(y, y')
    state, h = flows.run(
        flows.make("mmd", k, step_size=1e4), x, y, num_steps=10, key=jax.random.key(0)
    )
    assert h["diverged"]["step"] == 10 and "MMD^2 rose" in h["diverged"]["reason"]
    assert h["mmd2"][-1] > 1.5 * h["mmd2"][0] and np.isfinite(np.asarray(state.x)).all()
    _, h = flows.run(
        flows.make("mmd", k, step_size=1e4),
        x,
        y,
        num_steps=10,
        key=jax.random.key(0),
        divergence_factor=None,
    )
    assert "diverged" not in h and h["mmd2"][-1] > 1.5 * h["mmd2"][0]
    # a noisy MMD flow started on the target distribution: MMD^2 rises to a noisy
    # equilibrium 5.8x above its first record (sampling noise) without tripping the check
    # (whose floor is E k(y, y') / 2)
    from mmdflow import data

    y2, x2 = data.sample("8gaussians", 100, seed=1), data.sample("8gaussians", 100, seed=2)
    bw = float(mmdflow.median_bandwidth(x2, y2))
    mix = kernels.MixtureRBF(np.float32([bw / 8, bw / 4, bw / 2, bw]))
    noisy = flows.make("mmd", mix, step_size=0.5 * bw**2, noise_level=0.5 * bw)
    _, h = flows.run(noisy, x2, y2, num_steps=20, key=jax.random.key(0), record_every=10)
    assert "diverged" not in h and h["mmd2"].max() > 3 * h["mmd2"][0]


def test_run_bad_continuation_arguments(rng):
    x, y = _problem(rng, n=10, m=10)
    s = flows.make("mmd", kernels.Gaussian(1.0))
    state, h = flows.run(s, x, y, num_steps=2, key=jax.random.key(0), record_every=1)
    with pytest.raises(ValueError, match="trajectory"):
        flows.run(s, None, y, num_steps=2, state=state, history=h, record_trajectory=True)
    with pytest.raises(ValueError, match="beyond"):
        flows.run(s, None, y, num_steps=2, state=state._replace(count=jnp.int32(1)), history=h)
    with pytest.raises(ValueError, match="key"):
        flows.run(s, x, y, num_steps=2)
    with pytest.raises(ValueError, match="divergence_factor"):
        flows.run(s, x, y, num_steps=2, key=jax.random.key(0), divergence_factor=1.0)
