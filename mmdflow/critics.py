"""Adversarial MMD GAN critics: learned kernels ``k(phi_psi(x), phi_psi(y))`` (Flax NNX).

An MMD GAN (Li et al. 2017; Bińkowski et al. 2018) learns the kernel of its MMD: a base kernel
``K`` on the features of a critic network ``phi_psi``, trained to *maximize* the MMD^2 between
generated and target samples while the generator minimizes it. Unregularized, that game is
unstable; the two standard regularizers are implemented here:

* ``"mmd-gp"`` (MMD GAN-GP, Bińkowski et al. 2018): critic loss
  ``-MMD_u^2 + penalty * mean_i (|grad f(x~_i)| - 1)^2`` with the witness
  ``f(z) = mean_j k(z, y_j) - mean_i k(z, x_i)`` at random interpolates
  ``x~_i = a_i y_i + (1 - a_i) x_i``, ``a_i ~ U[0, 1]`` (as WGAN-GP).
* ``"smmd"`` (Scaled MMD, Arbel et al. 2018): critic loss ``-sigma^2 MMD_u^2`` with
  ``sigma^-2 = E_{y~P} k(y, y) + penalty * E_{y~P} sum_a d^2 k(y, y) / dx_a dy_a``: the MMD
  divided by a bound on the witness' RKHS and gradient norms under the target (``penalty = 1``
  is the paper's definition without its ``lambda``; for ``k = K(phi, phi)`` the derivative
  term is ``tr(J_phi^T H_K J_phi)``, ``= |J_phi|_F^2 / s^2`` for a Gaussian ``K`` of
  bandwidth ``s``).

``MMD_u^2`` is the unbiased estimator on the minibatches. The generator then takes a step along
any direction of :mod:`mmdflow.kernelized` with the learned kernel (a
:class:`mmdflow.kernels.FeatureKernel`): every direction works in feature space by composition,
matrix-free, with ``phi`` applied once per point set. :class:`mmdflow.train.GeneratorTrainer`
alternates ``Critic.steps`` critic updates with one generator step.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from flax import nnx
  >>> from mmdflow import critics, kernels
  >>> feats = critics.MLPFeatures(2, out_dim=8, hidden=(16,), rngs=nnx.Rngs(0))
  >>> critic = critics.Critic(feats, kernels.Gaussian(1.0), kind="mmd-gp")
  >>> params, opt_state = critic.init()
  >>> x = jax.random.normal(jax.random.key(0), (64, 2)); y = x + 1.0
  >>> update = jax.jit(critic.update)  # one compiled critic step
  >>> params, opt_state, aux = update(params, opt_state, x, y, jax.random.key(1))
  >>> sorted(aux)
  ['loss', 'mmd2', 'penalty']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mmdflow._nets import MLP
from mmdflow.kernels import FeatureKernel, Kernel
from mmdflow.mmd import mmd2, witness_grad
from mmdflow.ops import check_kernel

__all__ = [
    "CRITICS",
    "MLPFeatures",
    "ConvFeatures",
    "Critic",
    "learned_kernel",
    "scaled_mmd_denominator",
]

#: critic kinds of :class:`Critic` (``"fixed"``, no critic, is the trainer's default)
CRITICS = ("mmd-gp", "smmd")


class MLPFeatures(MLP):
    """MLP feature map ``[n, in_dim] -> [n, out_dim]`` (the critic network for vectors)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 16,
        hidden: Sequence[int] = (64, 64),
        *,
        activation: Callable[[jax.Array], jax.Array] = nnx.leaky_relu,
        rngs: nnx.Rngs,
    ) -> None:
        super().__init__(in_dim, out_dim, hidden, activation=activation, rngs=rngs)


class ConvFeatures(nnx.Module):
    """Small conv feature map for 8x8 images: ``[n, 64] -> [n, out_dim]``.

    Two 3x3 convs (the second with stride 2, to 4x4), leaky ReLU, a dense layer; inputs are
    flattened row-major like scikit-learn's digits.
    """

    def __init__(self, out_dim: int = 16, channels: int = 16, *, rngs: nnx.Rngs) -> None:
        self.conv1 = nnx.Conv(1, channels, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(channels, 2 * channels, (3, 3), strides=(2, 2), rngs=rngs)
        self.out = nnx.Linear(4 * 4 * 2 * channels, out_dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.reshape(x.shape[0], 8, 8, 1)
        h = nnx.leaky_relu(self.conv1(h))
        h = nnx.leaky_relu(self.conv2(h))
        return self.out(h.reshape(x.shape[0], -1))


@dataclasses.dataclass(frozen=True)
class _Apply:
    """``(params, x) -> nnx.merge(graphdef, params)(x)``: hashable by the graph definition."""

    graphdef: Any

    def __call__(self, params, x):
        return nnx.merge(self.graphdef, params)(x)


def learned_kernel(base: Kernel, features: nnx.Module, params: Any = None) -> FeatureKernel:
    """``k(x, y) = base(phi(x), phi(y))`` with ``phi`` the NNX module ``features``.

    Args:
      base: kernel on the features.
      features: an ``nnx.Module`` mapping ``[n, d] -> [n, D]`` row by row.
      params: its state (``nnx.split(features)[1]``, e.g. a trained one); default its current
        state.

    Returns:
      A :class:`mmdflow.kernels.FeatureKernel`, usable everywhere a kernel is.
    """
    check_kernel(base)
    graphdef, state = nnx.split(features)
    return FeatureKernel(base, _Apply(graphdef), state if params is None else params)


def scaled_mmd_denominator(k: FeatureKernel, y: jax.Array) -> jax.Array:
    """``(E k(y, y), E sum_a d^2 k(y, y) / dx_a dy_a)`` over the rows of ``y [n, d]``.

    The two terms of Arbel et al.'s ``sigma^-2``. The derivative term is
    ``tr(J_phi(y)^T H_K(phi y, phi y) J_phi(y))`` with the base kernel's cross-Hessian ``H_K``
    (its ``hess_block`` at coincident points) and the feature Jacobian ``J_phi`` (reverse mode
    when the features have fewer dimensions than the points, forward mode otherwise).
    """
    fy = k.features(y)
    d, dim = y.shape[1], fy.shape[1]
    one = lambda yi: k.features(yi[None])[0]
    jac = jax.vmap(jax.jacrev(one) if dim < d else jax.jacfwd(one))(y)  # [n, D, d]

    def trace(fi, ji):  # sum_a (J e_a)^T H_K(f, f) (J e_a)
        h = jax.vmap(lambda t: k.base.hess_block(fi[None], fi[None], t[None])[0])(ji.T)  # [d, D]
        return jnp.sum(h * ji.T)

    return jnp.mean(k.base.diag(fy)), jnp.mean(jax.vmap(trace)(fy, jac))


@dataclasses.dataclass(frozen=True, eq=False)
class Critic:
    """An adversarially trained kernel ``base(phi_psi(x), phi_psi(y))`` and its regularizer.

    Attributes:
      features: the critic network ``phi_psi`` (an ``nnx.Module``, ``[n, d] -> [n, D]`` row by
        row); its current state is the initial one.
      base: the kernel on features.
      kind: ``"mmd-gp"`` or ``"smmd"`` (see the module docstring).
      optimizer: optax transformation of the critic (it *minimizes* the critic loss).
      steps: critic updates per generator step.
      penalty: weight of the gradient penalty (``"mmd-gp"``) or of the derivative term of
        ``sigma^-2`` (``"smmd"``).
    """

    features: nnx.Module
    base: Kernel
    kind: str = "mmd-gp"
    optimizer: optax.GradientTransformation = dataclasses.field(
        default_factory=lambda: optax.adam(1e-3, b1=0.5, b2=0.9)
    )
    steps: int = 5
    penalty: float = 1.0

    def __post_init__(self):
        check_kernel(self.base)
        if self.kind not in CRITICS:
            raise ValueError(f"`kind` must be one of {CRITICS}; got {self.kind!r}.")
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise ValueError(f"`steps` must be an int >= 1; got {self.steps!r}.")
        ok = isinstance(self.penalty, int | float) and np.isfinite(self.penalty)
        if not (ok and self.penalty >= 0):
            raise ValueError(f"`penalty` must be a finite number >= 0; got {self.penalty!r}.")
        graphdef, params = nnx.split(self.features)
        object.__setattr__(self, "_apply", _Apply(graphdef))
        object.__setattr__(self, "_params0", params)

    def kernel(self, params: Any) -> FeatureKernel:
        """The learned kernel with critic parameters ``params``."""
        return FeatureKernel(self.base, self._apply, params)

    def init(self, params: Any = None) -> tuple[Any, Any]:
        """``(params, opt_state)``: the network's initial parameters (or ``params``)."""
        params = self._params0 if params is None else params
        return params, self.optimizer.init(params)

    def loss(
        self, params: Any, x: jax.Array, y: jax.Array, key: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Critic loss (to minimize) on generated ``x [n, d]`` and target ``y [m, d]``.

        Returns:
          ``(loss, aux)``: ``aux`` holds the unbiased ``mmd2`` of the learned kernel and the
          ``penalty`` term (the gradient penalty, or ``sigma^-2`` for ``"smmd"``).
        """
        k = self.kernel(params)
        value = mmd2(x, y, k, estimator="unbiased")
        if self.kind == "mmd-gp":
            p = min(x.shape[0], y.shape[0])
            a = jax.random.uniform(key, (p, 1), x.dtype)
            xt = a * y[:p] + (1 - a) * x[:p]
            g = witness_grad(xt, x, y, k)
            norm = jnp.sqrt(jnp.sum(g * g, axis=-1) + jnp.finfo(g.dtype).tiny)
            pen = jnp.mean((norm - 1.0) ** 2)
            loss = -value + self.penalty * pen
        else:
            kyy, tr = scaled_mmd_denominator(k, y)
            pen = kyy + self.penalty * tr
            loss = -value / pen
        return loss, {"mmd2": value, "penalty": pen}

    def update(
        self, params: Any, opt_state: Any, x: jax.Array, y: jax.Array, key: jax.Array
    ) -> tuple[Any, Any, dict[str, jax.Array]]:
        """One optimizer step on :meth:`loss` (``x`` is held fixed: no generator gradient)."""
        x = jax.lax.stop_gradient(x)
        (loss, aux), grads = jax.value_and_grad(self.loss, has_aux=True)(params, x, y, key)
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": loss, **aux}
