"""Bad input: clear ValueErrors naming the argument and the shapes, at trace time."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mmdflow
from mmdflow import flows, kernels, ops

K = kernels.Gaussian(1.0)
X = np.zeros((5, 2), np.float32)
Y = np.ones((6, 2), np.float32)
KEY = jax.random.key(0)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: mmdflow.mmd2(np.zeros(5, np.float32), Y, K), r"`x`.*\[n, d\].*\(5,\)"),
        (lambda: mmdflow.mmd2(X, np.zeros((6, 3), np.float32), K), r"`y`.*d=3.*d=2"),
        (lambda: mmdflow.mmd2(X.astype(np.int32), Y, K), r"`x`.*floating.*int32"),
        (lambda: mmdflow.mmd2(np.zeros((0, 2), np.float32), Y, K), r"`x` is empty.*\(0, 2\)"),
        (lambda: mmdflow.mmd2(X, np.zeros((6, 0), np.float32), K), r"`y`.*zero dimensions"),
        (lambda: mmdflow.mmd2(X[:1], Y, K, estimator="unbiased"), r"`x`.*at least 2.*\(1, 2\)"),
        (lambda: mmdflow.mmd2(X, Y[:1], K, estimator="linear"), r"`y`.*at least 2"),
        (lambda: mmdflow.mmd2(X, Y, K, estimator="vstat"), r"`estimator`"),
        (lambda: mmdflow.mmd2(X, Y, K, sums=ops.SumConfig("cuda")), r"`impl`"),
        (lambda: mmdflow.mmd2(X, Y, K, wx=np.ones(4)), r"`wx`.*\[5\].*\(4,\)"),
        (lambda: mmdflow.mmd2(X, Y, K, wy=np.ones((6, 2))), r"`wy`.*\[6\]"),
        (lambda: mmdflow.mmd2(X, Y, K, estimator="linear", wx=np.ones(5)), r"weights"),
        (lambda: mmdflow.mmd2(X, Y, "gaussian"), r"`k`.*Kernel"),
        (lambda: mmdflow.mmd2(X, Y, K, sums=ops.SumConfig("blocked", 0)), r"`block_size`"),
        (lambda: mmdflow.mmd2_variance(X, Y, K), r"equal size.*\(5, 2\).*\(6, 2\)"),
        (lambda: mmdflow.witness(np.zeros((3, 4)), X, Y, K), r"`z`.*d=4.*d=2"),
        (lambda: mmdflow.witness_grad(X, X, Y, K, wy=np.ones(3)), r"`wy`"),
        (lambda: ops.kernel_matvec(K, X, Y, np.ones(5)), r"`w`.*\[6\].*\(5,\)"),
        (lambda: ops.kernel_grad_matvec(K, X, Y, np.ones((6, 2, 2))), r"`w`"),
        (lambda: ops.gram(K, X, np.zeros((3, 1))), r"`y`.*d=1"),
        (lambda: mmdflow.median_bandwidth(X[:1]), r"at least 2"),
        (
            lambda: flows.make("sobolev", K, num_features=0),
            r"SobolevField: `num_features` must be None or an int >= 1; got 0",
        ),
        (
            lambda: flows.make("sobolev", K, cg_maxiter=True),
            r"`cg_maxiter` must be an int >= 1; got True",
        ),
        (
            lambda: flows.run(flows.make("mmd", K), X, Y, num_steps=2.0, key=KEY),
            r"`num_steps` must be an int >= 0; got 2.0",
        ),
        (
            lambda: flows.run(flows.make("mmd", K), X, Y, num_steps=2, key=KEY, record_every=0),
            r"`record_every` must be an int >= 1; got 0",
        ),
    ],
)
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_errors_are_raised_at_trace_time_under_jit():
    f = jax.jit(lambda x, y: mmdflow.mmd2(x, y, K, estimator="unbiased"))
    with pytest.raises(ValueError, match="`y`"):
        f(jnp.zeros((4, 2)), jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        f(jnp.zeros((1, 2)), jnp.zeros((4, 2)))


# ---------------------------------------------------------------- probability weights
_BAD_WEIGHTS = [
    (np.array([1.0, -0.5, 1.0, 1.0, 1.0]), r"`wx` \(weights of `x`\) must be >= 0; got -0.5 at"),
    (np.zeros(5), r"`wx` \(weights of `x`\) must not be all zero"),
    (np.array([1.0, -1.0, 0.0, 0.0, 0.0]), r"`wx`.*must be >= 0"),  # sums to zero
    (np.array([1.0, np.nan, 1.0, 1.0, 1.0]), r"`wx`.*must be finite; got nan"),
]


@pytest.mark.parametrize(("wx", "match"), _BAD_WEIGHTS)
@pytest.mark.parametrize("fn", ["mmd2", "unbiased", "witness", "witness_grad", "exact_critic"])
def test_bad_concrete_probability_weights_raise(fn, wx, match):
    from mmdflow import sobolev

    calls = {
        "mmd2": lambda: mmdflow.mmd2(X, Y, K, wx=wx),
        "unbiased": lambda: mmdflow.mmd2(X, Y, K, wx=wx, estimator="unbiased"),
        "witness": lambda: mmdflow.witness(X, X, Y, K, wx=wx),
        "witness_grad": lambda: mmdflow.witness_grad(X, X, Y, K, wx=wx),
        "exact_critic": lambda: sobolev.exact_critic(K, X, Y, 0.1, wx=wx),
    }
    with pytest.raises(ValueError, match=match):
        calls[fn]()
    wy = np.concatenate([wx, [0.0]])  # the same defect in the target weights
    with pytest.raises(ValueError, match=match.replace("wx", "wy").replace("`x`", "`y`")):
        mmdflow.mmd2(X, Y, K, wy=wy)


@pytest.mark.parametrize(
    "stepper",
    [flows.make("mmd", K, step_size=0.1), flows.make("sobolev", K, step_size=0.1, reg=1.0)],
)
def test_flows_refuse_bad_weights(stepper):
    with pytest.raises(ValueError, match=r"`wx` \(weights of `x0`\) must not be all zero"):
        stepper.init(X, KEY, wx=np.zeros(5))
    state = stepper.init(X, KEY)
    with pytest.raises(ValueError, match=r"`wy` \(weights of `y`\) must be >= 0"):
        stepper.step(state, Y, wy=-np.ones(6))
    # flows.run jits its steps (wy traced there): it checks wy first, instead of NaN particles
    with pytest.raises(ValueError, match=r"`wy` \(weights of `y`\) must not be all zero"):
        flows.run(stepper, X, Y, num_steps=1, key=KEY, wy=np.zeros(6))


def test_traced_weights_are_not_checked_and_kernel_sums_take_signed_weights():
    # documented: inside jit the weights are tracers; all-zero weights give NaN
    f = jax.jit(lambda wx: mmdflow.mmd2(X, Y, K, wx=wx))
    assert np.isnan(f(jnp.zeros(5, jnp.float32)))
    assert np.isfinite(f(jnp.ones(5, jnp.float32)))
    # ops sums take plain coefficients: signed and zero weights are valid there
    w = np.array([1.0, -2.0, 0.0, 0.5, 0.0, 0.0], np.float32)
    assert np.all(np.isfinite(ops.kernel_matvec(K, X, Y, w)))
    assert np.all(ops.kernel_matvec(K, X, Y, np.zeros(6, np.float32)) == 0)


# ---------------------------------------------------------------- constructors
@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: kernels.Gaussian("1.0"), r"Gaussian: `bandwidth` must be a real number.*'1.0'"),
        (lambda: kernels.Gaussian(1j), r"Gaussian: `bandwidth` must be a real number.*1j"),
        (lambda: kernels.Gaussian(True), r"Gaussian: `bandwidth` must be a real number.*True"),
        (lambda: kernels.Gaussian(None), r"Gaussian: `bandwidth` must be a real number.*None"),
        (lambda: kernels.Gaussian(jnp.ones((), jnp.complex64)), r"`bandwidth` must be a real"),
        (lambda: kernels.Laplace(object()), r"Laplace: `bandwidth` must be a real number"),
        (lambda: kernels.MixtureRBF(("1", 2.0)), r"MixtureRBF: `bandwidths` must be a real"),
        (lambda: kernels.MixtureRBF((1.0, 2.0), ("a", 1)), r"MixtureRBF: `weights` must be a real"),
        (lambda: kernels.IMQ(1.0, beta="-0.5"), r"IMQ: `beta` must be a real number"),
        (lambda: kernels.IMQ(1.0, beta=-0.5j), r"IMQ: `beta` must be a real number"),
        (lambda: kernels.RationalQuadratic(1.0, alpha="2"), r"`alpha` must be a real number"),
        (lambda: kernels.Polynomial(degree=True), r"Polynomial: `degree` must be a positive int"),
        (lambda: kernels.Polynomial(offset="1"), r"Polynomial: `offset` must be a real number"),
        (lambda: kernels.Polynomial(scale=1j), r"Polynomial: `scale` must be a real number"),
        (lambda: kernels.Scaled(-1.0, K), r"Scaled: `kernel` must be a Kernel.*float"),
        (lambda: kernels.Scaled(K, -1.0), r"Scaled: `scale` must be finite and > 0; got -1.0"),
        (lambda: -2.0 * K, r"Scaled: `scale` must be finite and > 0; got -2.0"),
        (lambda: kernels.Scaled(K, "2"), r"Scaled: `scale` must be a real number"),
        (lambda: ops.SumConfig(impl="foo"), r"SumConfig: `impl` must be one of .*'foo'"),
        (lambda: ops.SumConfig(block_size=0), r"`block_size` must be positive"),
        (lambda: flows.make("mmd", K, impl="auto"), r"unknown hyperparameter\(s\) \['impl'\]"),
        (
            lambda: flows.make("mmd", K, sums="blocked"),
            r"MMDField: `sums` must be an ops.SumConfig",
        ),
        (
            lambda: flows.make("mmd", K, step_size="0.1"),
            r"ParticleFlow: `step_size` must be a real",
        ),
        (
            lambda: flows.make("mmd", K, noise_level=1j),
            r"ParticleFlow: `noise_level` must be a real",
        ),
        (
            lambda: flows.make("sobolev", K, solver="foo"),
            r"SobolevField: `solver` must be one of \('auto', 'cholesky', 'cg'\); got 'foo'",
        ),
        (lambda: flows.make("sobolev", K, reg="0.1"), r"`reg` must be a real number"),
        (lambda: flows.make("sobolev", K, normalize="yes"), r"`normalize` must be a bool"),
        (
            lambda: mmdflow.sobolev.exact_critic(K, X, Y, 0.1, solver="foo"),
            r"`solver` must be one of",
        ),
    ],
)
def test_constructors_refuse_what_would_fail_later(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_kernels_stay_pytrees_with_tracer_and_sentinel_leaves():
    ks = [
        kernels.Gaussian(1.5),
        kernels.MixtureRBF((0.5, 2.0), (1.0, 0.5)),
        kernels.IMQ(1.2, -0.7),
        kernels.Polynomial(2, 0.5, 1.0),
        kernels.Scaled(kernels.Laplace(0.8), 2.0),
        kernels.Gaussian(1.0) + kernels.Energy(),
    ]
    for k in ks:
        treedef = jax.tree.structure(k)
        n = treedef.num_leaves
        # unflatten does not re-run the constructor checks on JAX's sentinels / None leaves
        assert type(jax.tree.unflatten(treedef, [object()] * n)) is type(k)
        assert type(jax.tree.map(lambda _: None, k)) is type(k)
        doubled = jax.tree.map(lambda v: 2 * jnp.asarray(v), k)
        assert jax.tree.structure(doubled) == treedef
        # through jit as an argument, and constructed inside jit from traced values
        want = mmdflow.mmd2(X, Y, k)
        np.testing.assert_allclose(jax.jit(lambda kk: mmdflow.mmd2(X, Y, kk))(k), want, rtol=1e-6)
        rebuilt = jax.jit(
            lambda leaves, td=treedef: mmdflow.mmd2(X, Y, jax.tree.unflatten(td, leaves))
        )
        np.testing.assert_allclose(rebuilt(jax.tree.leaves(k)), want, rtol=1e-6)
    g = jax.jit(jax.grad(lambda bw: mmdflow.mmd2(X, Y, kernels.Gaussian(bw))))(1.0)
    assert np.isfinite(g)
