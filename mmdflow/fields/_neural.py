"""Neural Sobolev descent's field: the gradient of a Flax NNX critic trained along the flow.

Each step first improves a neural critic ``f_theta`` for ``critic_steps``
optimizer updates on the augmented Lagrangian of the Sobolev GAN (Mroueh et al.
2018), maximised over ``theta``,

    L(theta, lam) = E_p f - E_q f + lam (1 - Omega) - rho / 2 (1 - Omega)^2,
    Omega(theta)  = E_q |grad_x f(x)|^2,

with the multiplier updated after every critic step by ``lam <- lam - rho (1 - Omega)``
(equivalently ``lam <- lam + rho (Omega - 1)``, the Fisher/Sobolev-GAN rule and IBM/USD's
``manual_sgd_``). Here ``p`` is the target (samples ``y``) and ``q`` the particles
(``x``, weights ``wx``); ``Omega`` uses *per-sample* input gradients
(``vmap(grad f)``), not USD's gradient of the batch mean. Then every particle
moves up the critic, ``x <- x + step_size * grad_x f(x)``.

The critic is warm-started from the previous step (its parameters, the optimizer
state and ``lam`` are the field's state, ``FlowState.extra`` in a flow), so the whole
step is a pure, jit- and ``lax.scan``-able function.

Because ``Omega ~ 1`` once the constraint is active, the particles move at a
roughly constant mean speed ``step_size`` (the *normalised* Sobolev critic): use
a decaying ``step_size`` schedule for the last digits of accuracy.

Example:
  >>> import jax
  >>> from mmdflow import fields, flows
  >>> x0 = jax.random.normal(jax.random.key(0), (200, 2))
  >>> y = 0.5 * jax.random.normal(jax.random.key(1), (200, 2)) + 2.0
  >>> critic = fields.mlp_critic(2, hidden=(32, 32), key=jax.random.key(2))
  >>> s = flows.make("neural-sobolev", critic=critic, critic_steps=5, step_size=0.05)
  >>> state, hist = flows.run(s, x0, y, num_steps=20, key=jax.random.key(3), record_every=10)
  >>> hist["mmd2"].shape
  (3,)
  >>> bool(hist["mmd2"][-1] < hist["mmd2"][0])
  True
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mmdflow._checks import check_hyper, check_int, check_points, normalized_weights
from mmdflow.fields._base import Velocity, schedule_value
from mmdflow.kernels import Gaussian, Kernel
from mmdflow.ops import check_kernel

#: ``mmdflow flow`` and :meth:`NeuralSobolevField.defaults_for`: the particle step is this
#: times the bandwidth. The field's critic is normalised (``E_q |grad f|^2 ~ 1``), so the
#: particles move at about ``step_size`` per step and the step sets the jitter left at the
#: end. 0.025 stalled (letter, 1000 points: 12x lower MMD^2, oscillating from step 20);
#: 0.005 reaches 122x there and 1.3-38x more than 0.025 on every case of
#: ``benchmarks/flow_defaults.py``; 0.0025 is better on 2-D pairs but too slow to cross a
#: far source's gap in 500 steps (far3d: 13x, 26 particles in transit).
STEP_FACTOR = 0.005
#: the hidden widths of the default critic (:func:`mlp_critic`)
DEFAULT_HIDDEN = (64, 64)


class MLPCritic(nnx.Module):
    """A scalar MLP critic ``[n, d] -> [n]`` with a smooth activation.

    Attributes:
      layers: the hidden ``nnx.Linear`` layers.
      readout: the final ``nnx.Linear(hidden[-1], 1)``.
      activation: the element-wise nonlinearity.
    """

    def __init__(
        self,
        d: int,
        hidden: Sequence[int],
        *,
        rngs: nnx.Rngs,
        activation: Callable[[jax.Array], jax.Array] = nnx.softplus,
        param_dtype: Any = jnp.float32,
    ):
        sizes = (d, *hidden)
        self.layers = nnx.List(
            [
                nnx.Linear(a, b, rngs=rngs, param_dtype=param_dtype)
                for a, b in zip(sizes[:-1], sizes[1:], strict=True)
            ]
        )
        self.readout = nnx.Linear(sizes[-1], 1, rngs=rngs, param_dtype=param_dtype)
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        """Evaluates the critic on ``x [n, d]``; returns ``[n]``."""
        for layer in self.layers:
            x = self.activation(layer(x))
        return self.readout(x)[:, 0]


def mlp_critic(
    d: int,
    hidden: Sequence[int] = (64, 64),
    *,
    key: jax.Array | None = None,
    rngs: nnx.Rngs | None = None,
    activation: Callable[[jax.Array], jax.Array] = nnx.softplus,
    param_dtype: Any = jnp.float32,
) -> MLPCritic:
    """A default critic: an MLP ``d -> hidden... -> 1`` with a smooth activation.

    A smooth activation (softplus by default; ``jnp.tanh`` or ``nnx.gelu`` also
    work) keeps ``grad_x f`` continuous and the penalty ``grad_theta Omega``
    informative (with ReLU the Hessian in ``x`` vanishes almost everywhere).

    Args:
      d: input dimension.
      hidden: hidden-layer widths (at least one).
      key: PRNG key for the initial weights (ignored when ``rngs`` is given).
      rngs: ``nnx.Rngs`` for the initial weights.
      activation: element-wise nonlinearity.
      param_dtype: parameter dtype.

    Returns:
      An :class:`MLPCritic` mapping ``[n, d] -> [n]``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> f = mlp_critic(3, hidden=(16,), key=jax.random.key(0))
      >>> f(jnp.zeros((5, 3), jnp.float32)).shape
      (5,)
    """
    check_int("mlp_critic", "d", d)
    hidden = tuple(hidden)
    if not hidden or any(not isinstance(h, numbers.Integral) or h < 1 for h in hidden):
        raise ValueError(f"mlp_critic: `hidden` must be non-empty positive ints; got {hidden!r}.")
    if rngs is None:
        rngs = nnx.Rngs(key if key is not None else 0)
    return MLPCritic(int(d), hidden, rngs=rngs, activation=activation, param_dtype=param_dtype)


class CriticState(NamedTuple):
    """The state of a :class:`NeuralSobolevField` (``FlowState.extra`` in a flow).

    Attributes:
      params: ``nnx.State`` of the critic's ``nnx.Param`` variables (trained).
      rest: ``nnx.State`` of its other variables (kept fixed).
      opt_state: optax state of ``optimizer`` for ``params``.
      lagrange: scalar Lagrange multiplier ``lam`` of the Sobolev constraint.
    """

    params: Any
    rest: Any
    opt_state: Any
    lagrange: jax.Array


def _subsample(key, pts, w, size):
    """``size`` rows of ``pts`` without replacement, with renormalised weights."""
    if size is None or size >= pts.shape[0]:
        return pts, w
    idx = jax.random.choice(key, pts.shape[0], (size,), replace=False)
    wb = w[idx]
    return pts[idx], wb / jnp.sum(wb)


@dataclasses.dataclass(frozen=True)
class NeuralSobolevField:
    """Neural Sobolev descent (Mroueh, Sercu & Raj 2019) with an augmented-Lagrangian critic.

    Per step (``x [n, d]`` particles, ``y [m, d]`` targets): ``critic_steps``
    optimizer updates of the critic on ``-L`` (see the module docstring), each
    followed by ``lam <- lam - rho (1 - Omega)``; the velocity is then ``grad_x f``.
    Its flow's default step is 0.05 (:data:`STEP_FACTOR` for ``mmdflow flow``): with the
    constraint active the mean particle speed is about ``step_size`` even at
    convergence, so it is also the jitter left at the end: keep it below the finest
    length scale to be matched.

    The critic module is split once (``nnx.split``); its graph definition is kept
    static and its parameters, the optimizer state and ``lam`` are carried in
    ``state.extra`` (a :class:`CriticState`). The module must act row-wise
    (``f(x)[i]`` depends only on ``x[i]``) and deterministically (no dropout in
    training mode, no batch statistics); any variable mutation it makes is
    discarded.

    Attributes:
      critic: an ``nnx.Module`` mapping ``[n, d] -> [n]`` or ``[n, 1]``
        (e.g. :func:`mlp_critic`). Its current values initialise the critic at
        ``init``; the module itself is never modified.
      optimizer: optax transformation for the critic parameters (it ascends
        ``L``). Default ``optax.adam(1e-3)``.
      critic_steps: critic updates per particle step (``n_c``; fewer means more
        "early stopping" and a smoother, less converged critic). Default 10.
      rho: augmented-Lagrangian penalty weight and multiplier learning rate,
        ``>= 0`` (or a schedule). Default 0.01. With per-sample gradients and
        Adam(1e-3), ``rho >= 0.1`` lets ``lam`` outrun the critic and oscillate
        once the discrepancy is small; USD's ``1e-6`` goes with its
        ``1/B^2``-scaled penalty and is far too slow here. ``rho = 0`` freezes
        ``lam`` at ``init_lagrange``.
      kernel: kernel used only to monitor MMD^2 in :func:`mmdflow.flows.run`.
      target_batch: target minibatch per critic update (``None`` = all of ``y``),
        drawn without replacement.
      particle_batch: particle minibatch per critic update (``None`` = all);
        a minibatch keeps its particles' weights, renormalised. Batches at least
        as large as the set use the whole set.
      startup_critic_steps: critic updates at the first step (``count == 0``),
        to fit the randomly initialised critic before anything moves; ``None``
        means ``10 * critic_steps`` (USD: 200 vs 20).
      init_lagrange: initial multiplier ``lam >= 0``.
      reset_optimizer: re-initialise the optimizer state at the start of every
        particle step, as IBM/USD re-creates Adam each step (default ``True``;
        the parameters and ``lam`` are always carried over). ``False`` carries
        the optimizer moments over too.
    """

    critic: nnx.Module
    optimizer: optax.GradientTransformation = dataclasses.field(
        default_factory=lambda: optax.adam(1e-3)
    )
    critic_steps: int = 10
    rho: Any = 0.01
    kernel: Kernel = dataclasses.field(default_factory=lambda: Gaussian(1.0))
    target_batch: int | None = None
    particle_batch: int | None = None
    startup_critic_steps: int | None = None
    init_lagrange: float = 0.0
    reset_optimizer: bool = True
    #: the flow's default Euler step
    step_size: ClassVar[float] = 0.05

    def __post_init__(self):
        cls = "NeuralSobolevField"
        if not isinstance(self.critic, nnx.Module):
            raise ValueError(
                f"{cls}: `critic` must be an flax.nnx.Module; got {type(self.critic)}."
            )
        if not (hasattr(self.optimizer, "init") and hasattr(self.optimizer, "update")):
            raise ValueError(f"{cls}: `optimizer` must be an optax GradientTransformation.")
        check_int(cls, "critic_steps", self.critic_steps)
        check_int(cls, "startup_critic_steps", self.startup_critic_steps, allow_none=True)
        check_int(cls, "target_batch", self.target_batch, allow_none=True)
        check_int(cls, "particle_batch", self.particle_batch, allow_none=True)
        check_hyper(cls, "rho", self.rho, allow_zero=True)
        check_hyper(cls, "init_lagrange", self.init_lagrange, allow_zero=True)
        check_kernel(self.kernel)
        graphdef, _, _ = nnx.split(self.critic, nnx.Param, ...)
        object.__setattr__(self, "_graphdef", graphdef)

    # -- critic ---------------------------------------------------------------

    def critic_fn(self, extra: CriticState) -> Callable[[jax.Array], jax.Array]:
        """The critic as a pure function ``[n, d] -> [n]`` of ``state.extra``."""

        def f(x):
            model = nnx.merge(self._graphdef, extra.params, extra.rest)
            out = model(x)
            n = x.shape[0]
            if out.shape not in ((n,), (n, 1)):
                raise ValueError(
                    f"NeuralSobolevField: `critic` must map [n, d] -> [n] or [n, 1]; "
                    f"got output shape {tuple(out.shape)} for input shape {tuple(x.shape)}."
                )
            return jnp.reshape(out, (n,))

        return f

    def _value_and_velocity(self, extra, x):
        """``f(x) [n]`` and per-sample ``grad_x f(x) [n, d]``."""
        f = self.critic_fn(extra)
        f1 = lambda z: f(z[None, :])[0]
        return jax.vmap(jax.value_and_grad(f1))(x)

    def _lagrangian(self, params, rest, lam, rho, x, a, y, b):
        extra = CriticState(params, rest, None, lam)
        fx, gx = self._value_and_velocity(extra, x)
        fy = self.critic_fn(extra)(y)
        omega = jnp.dot(a, jnp.sum(gx * gx, axis=1))
        disc = jnp.dot(b, fy) - jnp.dot(a, fx)
        c = 1.0 - omega
        lagr = disc + lam * c - 0.5 * rho * c * c
        return -lagr, omega

    def fit_critic(
        self,
        extra: CriticState,
        x: jax.Array,
        wx: jax.Array,
        y: jax.Array,
        wy: jax.Array,
        key: jax.Array,
        num_steps: int | jax.Array,
        rho: float | jax.Array,
    ) -> CriticState:
        """Critic updates on fixed particles: ascent on ``L`` plus multiplier updates.

        Args:
          extra: current :class:`CriticState` (``state.extra``).
          x: ``[n, d]`` particles.
          wx: ``[n]`` normalised particle weights.
          y: ``[m, d]`` target samples.
          wy: ``[m]`` normalised target weights.
          key: PRNG key for the minibatches.
          num_steps: number of updates (a traced count is allowed; it becomes a
            ``while_loop``).
          rho: penalty and multiplier learning rate.

        Returns:
          The updated :class:`CriticState` (with the optimizer state re-initialised
          first when ``reset_optimizer``).
        """
        grad_fn = jax.grad(self._lagrangian, has_aux=True)

        def body(i, carry):
            params, opt_state, lam = carry
            kx, ky = jax.random.split(jax.random.fold_in(key, i))
            xb, ab = _subsample(kx, x, wx, self.particle_batch)
            yb, bb = _subsample(ky, y, wy, self.target_batch)
            g, omega = grad_fn(params, extra.rest, lam, rho, xb, ab, yb, bb)
            updates, opt_state = self.optimizer.update(g, opt_state, params)
            params = optax.apply_updates(params, updates)
            lam = (lam - rho * (1.0 - omega)).astype(lam.dtype)
            return params, opt_state, lam

        opt_state = self.optimizer.init(extra.params) if self.reset_optimizer else extra.opt_state
        carry = (extra.params, opt_state, extra.lagrange)
        params, opt_state, lam = jax.lax.fori_loop(0, num_steps, body, carry)
        return CriticState(params, extra.rest, opt_state, lam)

    @property
    def num_startup_steps(self) -> int:
        """Critic updates at the first step (``startup_critic_steps`` resolved)."""
        if self.startup_critic_steps is None:
            return 10 * self.critic_steps
        return self.startup_critic_steps

    # -- field protocol -------------------------------------------------------

    @classmethod
    def defaults_for(
        cls, kernel: Kernel, bandwidth: float, n: int, d: int, key: jax.Array
    ) -> dict[str, Any]:
        """Flow and field hyperparameters for data at length scale ``bandwidth``.

        A fresh :func:`mlp_critic` (``DEFAULT_HIDDEN``) from ``key`` and a step of
        :data:`STEP_FACTOR` x ``bandwidth``; ``kernel`` only monitors MMD^2.
        """
        critic = mlp_critic(d, hidden=DEFAULT_HIDDEN, key=key)
        return {"kernel": kernel, "critic": critic, "step_size": STEP_FACTOR * bandwidth}

    def init(self, x0: jax.Array, key: jax.Array, y: jax.Array | None = None) -> CriticState:
        """The critic's state (a :class:`CriticState`) from the module ``critic``.

        Args:
          x0: ``[n, d]`` initial particles (checks the critic's output shape).
          key: unused (the critic is initialised already).
          y: unused.
        """
        x0 = check_points("x0", x0)
        _, params, rest = nnx.split(self.critic, nnx.Param, ...)
        params = jax.tree.map(jnp.array, params)  # own copies, never aliased with the module
        rest = jax.tree.map(jnp.array, rest)
        extra = CriticState(
            params=params,
            rest=rest,
            opt_state=self.optimizer.init(params),
            lagrange=jnp.asarray(self.init_lagrange, x0.dtype),
        )
        # Check the critic's output shape eagerly (abstractly) for a clear error.
        jax.eval_shape(self.critic_fn(extra), x0)
        return extra

    def fit(self, x, wx, y, wy, extra, key, count) -> tuple[Velocity, CriticState, dict]:
        """One critic fit; the velocity ``grad_x f`` of the fitted critic.

        Returns:
          ``(velocity, extra, aux)``, aux with scalars ``critic`` (``E_p f - E_q f``
          after the critic update), ``omega`` (``E_q |grad f|^2``) and ``lagrange``
          (``lam``).
        """
        y = check_points("y", y, d=x.shape[1], other="x").astype(x.dtype)
        b = normalized_weights("wy", wy, y.shape[0], "y", x.dtype)
        rho = schedule_value(self.rho, count)
        n_first = self.num_startup_steps
        if n_first == self.critic_steps:
            num = self.critic_steps  # static trip count: a scan
        else:
            num = jnp.where(count == 0, n_first, self.critic_steps)
        extra = self.fit_critic(extra, x, wx, y, b, key, num, rho)

        fx, v = self._value_and_velocity(extra, x)
        v = v.astype(x.dtype)
        fy = self.critic_fn(extra)(y)
        aux = {
            "critic": (jnp.dot(b, fy) - jnp.dot(wx, fx)).astype(x.dtype),
            "omega": jnp.dot(wx, jnp.sum(v * v, axis=1)),
            "lagrange": extra.lagrange,
        }
        fn = lambda z: self._value_and_velocity(extra, z)[1].astype(z.dtype)
        return Velocity(v, fn), extra, aux
