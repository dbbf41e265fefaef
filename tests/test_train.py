"""Flax generator training: jitted step, optax wiring, checkpoint/resume, convergence."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mmdflow import kernels, train


def _trainer(kind="kernelized", opt=None, **kw):
    gen = train.MLPGenerator(2, 2, (16, 16), rngs=nnx.Rngs(0))
    return train.GeneratorTrainer(
        gen, opt or optax.sgd(0.5), kernels.Gaussian(1.0), kind=kind, reg=0.05, batch_size=32, **kw
    )


def _target(n=400, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, 2)) * 0.5 + 1.5, jnp.float32)


def test_step_is_one_trace_and_feeds_negative_direction_to_optax():
    tr = _trainer(opt=optax.sgd(0.3))
    state = tr.init(jax.random.key(0))
    y = _target()
    for _ in range(4):
        state, info = tr.step(state, y)
    assert tr._step._cache_size() == 1
    # sgd(lr) on -theta_dot is theta + lr * theta_dot: recompute the direction by hand
    from mmdflow import kernelized

    key, kz, ky = jax.random.split(state.key, 3)
    z = jax.random.normal(kz, (32, 2))
    yb = y[jax.random.randint(ky, (32,), 0, y.shape[0])]
    v, _ = kernelized.direction(
        tr.gen_fn, state.params, z, yb, tr.kernel, 0.05, cg_tol=1e-4, cg_maxiter=tr.cg_maxiter
    )
    new, _ = tr.step(state, y)
    want = jax.tree.map(lambda p, d: p + 0.3 * d, state.params, v)
    # float32 CG in and out of jit: rounding differs (a wrong sign or rate would be off by 1e-2)
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("kind", ["kernelized", "param-sobolev", "grad-penalty", "mmd-gd"])
def test_short_training_reduces_held_out_mmd(kind):
    lr = {"kernelized": 0.5, "param-sobolev": 0.5, "grad-penalty": 0.5, "mmd-gd": 5.0}[kind]
    tr = _trainer(kind, optax.sgd(lr))
    state = tr.init(jax.random.key(1))
    state, hist = tr.fit(
        state, _target(), 40, y_eval=_target(seed=1), eval_every=20, eval_samples=300
    )
    assert hist["eval_step"] == [0, 20, 40]
    assert hist["eval_mmd2"][-1] < 0.5 * hist["eval_mmd2"][0]
    assert len(hist["time"]) == 40


def test_checkpoint_resume_is_exact(tmp_path):
    tr = _trainer(opt=optax.adam(1e-2))
    y = _target()
    s = tr.init(jax.random.key(2))
    for _ in range(3):
        s, _ = tr.step(s, y)
    path = str(tmp_path / "ckpt.npz")
    train.save_checkpoint(path, s, {"steps": 3})
    cont = s
    for _ in range(2):
        cont, _ = tr.step(cont, y)
    restored, meta = train.load_checkpoint(path, tr.init(jax.random.key(99)))
    assert meta == {"steps": 3}
    assert int(restored.step) == 3
    for _ in range(2):
        restored, _ = tr.step(restored, y)
    for a, b in zip(jax.tree.leaves(cont.params), jax.tree.leaves(restored.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_conv_generator_for_digits():
    gen = train.ConvGenerator(latent_dim=8, channels=8, rngs=nnx.Rngs(0))
    out = gen(jnp.ones((5, 8)))
    assert out.shape == (5, 64)
    assert float(out.min()) > 0.0
    assert float(out.max()) < 1.0
    tr = train.GeneratorTrainer(gen, optax.adam(1e-3), kernels.Gaussian(4.0), batch_size=16)
    y = jnp.asarray(np.random.default_rng(0).uniform(size=(50, 64)), jnp.float32)
    s, info = tr.step(tr.init(jax.random.key(0)), y)
    assert np.isfinite(float(info["velocity_norm"]))


def test_mode_coverage():
    centers = np.array([[0.0, 0.0], [5.0, 0.0]])
    s = np.concatenate([np.zeros((30, 2)), np.tile([5.0, 0.0], (5, 1)), np.full((10, 2), 50.0)])
    assert train.mode_coverage(s, centers, 0.1, min_count=20) == (1, 35 / 45)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"kind": "adam"}, "kind"),
        ({"batch_size": 1}, "batch_size"),
        ({"reg": 0.0}, "reg"),
        ({"solver": "lu"}, "`solver`.*'lu'"),
        ({"solver": "cholesky"}, "cholesky.*kind='kernelized'"),
        ({"cg_maxiter": 0}, "cg_maxiter"),
        ({"cg_tol": -1.0}, "cg_tol"),
    ],
)
def test_bad_trainer_input(kw, match):
    gen = train.MLPGenerator(2, 2, (4,), rngs=nnx.Rngs(0))
    args = {"kind": "kernelized", "reg": 0.1, "batch_size": 8, **kw}
    with pytest.raises(ValueError, match=match):
        train.GeneratorTrainer(gen, optax.sgd(0.1), kernels.Gaussian(1.0), **args)


def _fit_args(tr):
    return {"y_eval": _target(seed=1), "eval_every": 2, "eval_samples": 100}


def test_fit_continues_a_saved_history_exactly(tmp_path):
    tr = _trainer()
    y = _target()
    straight, h_full = tr.fit(tr.init(jax.random.key(3)), y, 5, **_fit_args(tr))
    part, h3 = tr.fit(tr.init(jax.random.key(3)), y, 3, **_fit_args(tr))
    path = tmp_path / "c.npz"
    train.save_checkpoint(path, part, {"steps": 3}, history=h3)
    restored, meta = train.load_checkpoint(path, tr.init(jax.random.key(0)))
    assert meta["steps"] == 3 and int(restored.step) == 3
    # the stored history is exact (ints stay ints), only its lists are stored
    assert meta["history"] == {k: v for k, v in h3.items() if k != "diverged"}
    assert isinstance(meta["history"]["eval_step"][0], int)
    cont, h_cont = tr.fit(restored, y, 2, history=meta["history"], **_fit_args(tr))
    for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(cont.params), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(jax.random.key_data(straight.key), jax.random.key_data(cont.key))
    assert h_cont["eval_step"] == h_full["eval_step"] == [0, 2, 4]
    for k in h_full:
        if k != "time":
            assert h_cont[k] == h_full[k], k


def test_on_step_gets_every_state_and_the_history_so_far():
    tr = _trainer()
    seen = []
    tr.fit(
        tr.init(jax.random.key(0)),
        _target(),
        3,
        on_step=lambda st, h: seen.append((int(st.step), len(h["step"]), list(h["eval_step"]))),
        **_fit_args(tr),
    )
    assert seen == [(1, 1, [0]), (2, 2, [0, 2]), (3, 3, [0, 2])]


def test_fit_stops_at_non_finite_parameters_with_the_last_finite_state():
    tr = _trainer(opt=optax.sgd(0.5))
    y = _target()
    state = tr.init(jax.random.key(0))
    for _ in range(2):
        state, _ = tr.step(state, y)
    # a poisoned learning rate from step 3 on: sgd's update becomes NaN
    bad = train.GeneratorTrainer(
        tr.generator,
        optax.sgd(lambda count: jnp.where(count >= 2, jnp.nan, 0.5)),
        tr.kernel,
        reg=0.05,
        batch_size=32,
    )
    state = bad.init(jax.random.key(0))
    s, h = bad.fit(state, y, 6, **_fit_args(bad))
    assert h["diverged"]["kind"] == "non-finite" and h["diverged"]["step"] == 3
    assert "non-finite parameters after step 3" in h["diverged"]["reason"]
    assert int(s.step) == 2 and h["step"] == [1, 2] and h["eval_step"] == [0, 2]
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(s.params))
    # only recorded, not stopped
    s, h = bad.fit(state, y, 4, stop_on_divergence=False, **_fit_args(bad))
    assert int(s.step) == 4 and h["diverged"]["step"] == 3
    assert not np.isfinite(h["eval_mmd2"][-1])


def test_fit_stops_when_held_out_mmd_rises():
    # the target is the generator's own output, so the first MMD^2 is near its floor, and
    # gradient *ascent* (sgd with a negative rate) drives it up
    gen = train.MLPGenerator(2, 2, (16, 16), rngs=nnx.Rngs(0))
    y = gen(jax.random.normal(jax.random.key(5), (400, 2))) + 0.3
    tr = train.GeneratorTrainer(
        gen, optax.sgd(-0.5), kernels.Gaussian(1.0), reg=0.05, batch_size=32
    )
    s, h = tr.fit(tr.init(jax.random.key(0)), y, 30, eval_every=2, eval_samples=200)
    first, factor = h["eval_mmd2"][0], train.DIVERGENCE_FACTOR
    assert first > 0 and h["diverged"]["kind"] == "rise", h["eval_mmd2"]
    assert h["eval_mmd2"][-1] > factor * first >= max(h["eval_mmd2"][:-1])
    assert h["diverged"]["step"] == h["eval_step"][-1] == int(s.step)
    # switched off: all 30 steps
    s, h = tr.fit(
        tr.init(jax.random.key(0)), y, 30, eval_every=2, eval_samples=200, divergence_factor=None
    )
    assert int(s.step) == 30 and h["diverged"] is None


def test_fit_stops_when_samples_leave_the_target():
    # lr 1e6 throws the samples ~1e15 away: finite, but every kernel value underflows, the
    # MMD^2 saturates *below* its first value and the direction is exactly zero
    tr = _trainer(opt=optax.sgd(1e6))
    s, h = tr.fit(tr.init(jax.random.key(0)), _target(), 10, **_fit_args(tr))
    assert h["diverged"]["kind"] == "escaped" and h["diverged"]["step"] == 2
    assert h["eval_mmd2"][-1] < h["eval_mmd2"][0]  # the rise test alone misses it
    assert h["eval_overlap"][-1] < train.ESCAPE_FRACTION * h["eval_overlap"][0]


def test_bad_divergence_factor():
    tr = _trainer()
    with pytest.raises(ValueError, match="divergence_factor"):
        tr.fit(tr.init(jax.random.key(0)), _target(), 1, divergence_factor=0.5)
