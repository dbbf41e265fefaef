"""Adversarial critics (MMD GAN-GP, Scaled MMD): penalty terms against float64 NumPy and
finite differences; the trainer with a learned critic: one trace per step, exact resume."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.test_util import check_grads

from mmdflow import critics, kernels, train

S = 0.9


def _feat(p, x):
    return jnp.tanh(x @ p["w"] + p["b"][None]) @ p["v"]


def _np_feat(p, x):
    t = np.tanh(x @ p["w"] + p["b"])
    return t @ p["v"], np.einsum("ke,ne,de->nkd", p["v"].T, 1 - t * t, p["w"])


class _Fixed(critics.Critic):
    """A critic whose network is the pure function ``_feat`` (float64 parameters)."""

    def __init__(self, params, **kw):
        super().__init__(critics.MLPFeatures(3, 4, (5,), rngs=nnx.Rngs(0)), **kw)
        object.__setattr__(self, "_apply", _feat)
        object.__setattr__(self, "_params0", params)


@pytest.fixture
def case(rng):
    p = {"w": rng.normal(size=(3, 5)), "b": rng.normal(size=5), "v": rng.normal(size=(5, 4))}
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(8, 3)) + 0.7
    return p, jax.tree.map(jnp.asarray, p), x, y


def test_gradient_penalty_equals_numpy_at_the_same_interpolates(case):
    p, pj, x, y = case
    c = _Fixed(pj, base=kernels.Gaussian(S), kind="mmd-gp", penalty=2.5)
    key = jax.random.key(3)
    loss, aux = jax.jit(c.loss)(pj, jnp.asarray(x), jnp.asarray(y), key)
    a = np.asarray(jax.random.uniform(key, (6, 1), jnp.float64))
    xt = a * y[:6] + (1 - a) * x
    ft, jt = _np_feat(p, xt)
    fx, _ = _np_feat(p, x)
    fy, _ = _np_feat(p, y)

    def grad_mean(f):  # mean_j grad_1 K(ft_i, f_j) in feature space
        r = ft[:, None, :] - f[None]
        return np.einsum("nm,nmk->nk", -np.exp(-(r * r).sum(-1) / (2 * S * S)) / S**2, r) / len(f)

    g = np.einsum("nkd,nk->nd", jt, grad_mean(fy) - grad_mean(fx))
    pen = np.mean((np.linalg.norm(g, axis=1) - 1) ** 2)
    np.testing.assert_allclose(aux["penalty"], pen, rtol=1e-10)
    np.testing.assert_allclose(loss, -aux["mmd2"] + 2.5 * pen, rtol=1e-10)


@pytest.mark.parametrize(
    ("base", "scale"),
    [(kernels.Gaussian(S), 1 / S**2), (kernels.Linear(), 1.0)],
    ids=["gaussian", "linear"],
)
def test_scaled_mmd_denominator_equals_the_feature_jacobian_norm(case, base, scale):
    """``sum_a d^2 k(y, y) / dx_a dy_a = tr(J^T H_K J)``: ``|J|_F^2 / s^2`` for a Gaussian base
    (``H_K(f, f) = I / s^2``), ``|J|_F^2`` for the linear kernel (``H_K = I``)."""
    p, pj, _, y = case
    k = kernels.FeatureKernel(base, _feat, pj)
    kyy, tr = jax.jit(critics.scaled_mmd_denominator)(k, jnp.asarray(y))
    fy, jy = _np_feat(p, y)
    np.testing.assert_allclose(tr, scale * np.mean(np.sum(jy * jy, axis=(1, 2))), rtol=1e-10)
    diag = 1.0 if scale != 1.0 else np.mean(np.sum(fy * fy, 1))
    np.testing.assert_allclose(kyy, diag, rtol=1e-10)


@pytest.mark.parametrize("kind", critics.CRITICS)
def test_critic_loss_gradients_match_finite_differences(case, kind):
    _, pj, x, y = case
    c = _Fixed(pj, base=kernels.Gaussian(S), kind=kind, penalty=1.5)
    key = jax.random.key(0)
    f = jax.jit(lambda q: c.loss(q, jnp.asarray(x), jnp.asarray(y), key)[0])
    check_grads(f, (pj,), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


def test_critic_updates_raise_the_learned_mmd(rng):
    x = jnp.asarray(rng.normal(size=(64, 2)), jnp.float32)
    feats = critics.MLPFeatures(2, 8, (16,), rngs=nnx.Rngs(0))
    c = critics.Critic(feats, kernels.Gaussian(1.0), kind="mmd-gp", optimizer=optax.adam(1e-2))
    params, opt = c.init()
    upd = jax.jit(c.update)
    first = None
    for i in range(30):
        params, opt, aux = upd(params, opt, x, x * 0.5 + 1.0, jax.random.key(i))
        first = aux["mmd2"] if first is None else first
    assert aux["mmd2"] > 1.5 * first


def _trainer(kind="mmd-gp", direction="kernelized"):
    gen = train.MLPGenerator(2, 2, (16,), rngs=nnx.Rngs(0))
    feats = critics.MLPFeatures(2, 4, (16,), rngs=nnx.Rngs(1))
    critic = critics.Critic(feats, kernels.Gaussian(1.0), kind=kind, steps=2)
    return train.GeneratorTrainer(
        gen, optax.adam(1e-3), kernels.Gaussian(0.5), kind=direction, batch_size=32, critic=critic
    )


def _target(n=300):
    return jnp.asarray(np.random.default_rng(0).normal(size=(n, 2)) * 0.5 + 1.5, jnp.float32)


@pytest.mark.parametrize("kind", critics.CRITICS)
def test_step_with_a_critic_is_one_trace_and_resumes_exactly(tmp_path, kind):
    tr = _trainer(kind)
    y = _target()
    s0 = tr.init(jax.random.key(0))
    straight, hist = tr.fit(s0, y, 4, eval_every=2, eval_samples=100)
    assert tr._step._cache_size() == 1
    assert len(hist["critic_mmd2"]) == len(hist["critic_penalty"]) == 4
    half, h2 = tr.fit(s0, y, 2, eval_every=2, eval_samples=100)
    path = tmp_path / "ckpt.npz"
    train.save_checkpoint(path, half, {"steps": 2}, history=h2)
    fresh = _trainer(kind)  # a new process would rebuild the trainer
    restored, meta = train.load_checkpoint(path, fresh.init(jax.random.key(7)))
    resumed, h3 = fresh.fit(restored, y, 2, eval_every=2, eval_samples=100, history=meta["history"])
    # the critic's parameters and optimizer state are in the state and restored exactly
    assert jax.tree.structure(resumed.critic) == jax.tree.structure(straight.critic)
    leaves = zip(
        jax.tree.leaves((straight.params, straight.critic)),
        jax.tree.leaves((resumed.params, resumed.critic)),
        strict=True,
    )
    for a, b in leaves:
        np.testing.assert_array_equal(a, b)
    assert h3["critic_mmd2"] == hist["critic_mmd2"]
    assert h3["eval_mmd2"] == hist["eval_mmd2"]


def test_the_critic_changes_the_generator_step():
    """The generator's direction uses the learned kernel, not the evaluation kernel."""
    tr = _trainer(direction="mmd-gd")
    y = _target()
    s = tr.init(jax.random.key(0))
    new, _ = tr.step(s, y)
    import dataclasses

    fixed = dataclasses.replace(tr, critic=None)
    other, _ = fixed.step(fixed.init(jax.random.key(0)), y)
    diff = [
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(other.params), strict=True)
    ]
    assert max(diff) > 1e-6
    assert int(new.step) == 1 and new.critic is not None


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"kind": "wgan"}, "kind"),
        ({"steps": 0}, "steps"),
        ({"penalty": -1.0}, "penalty"),
        ({"penalty": float("nan")}, "penalty"),
    ],
)
def test_bad_critic_input(kw, match):
    feats = critics.MLPFeatures(2, 4, (8,), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=match):
        critics.Critic(feats, kernels.Gaussian(1.0), **kw)


def test_bad_trainer_critic():
    gen = train.MLPGenerator(2, 2, (8,), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="critic"):
        train.GeneratorTrainer(gen, optax.sgd(0.1), kernels.Gaussian(1.0), critic="mmd-gp")
