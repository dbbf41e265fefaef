"""Particle flows: :class:`ParticleFlow` along a velocity field, the registry, the drivers.

A flow is a velocity field (:mod:`mmdflow.fields`: the MMD witness gradient, the kernel
Sobolev critic, a neural Sobolev critic) moved by :class:`ParticleFlow` (Euler steps,
step-size and noise schedules, a displacement cap, the kinetic energy). :data:`FLOWS`
names every flow; :func:`make` builds one by name:

* ``"sobolev"``: regularized kernel Sobolev descent (Mroueh, Sercu & Raj 2019),
  ``x <- x + step_size * grad f(x)`` with the Sobolev critic of :mod:`mmdflow.sobolev`
  (random Fourier features or the exact kernel).
* ``"mmd"``: the MMD gradient flow of Arbel et al. (2019),
  ``x <- x + step_size * grad witness(x + noise_level * eps)`` (noise injection).
* ``"neural-sobolev"``: the neural-critic version (Flax NNX).
* ``"drmmd"``, ``"kale"``, ``"srmmd"``: the de-regularized MMD, KALE and Sobolev-regularized
  MMD flows.
* ``"svgd"``, ``"ksd"``: density flows toward a log-density ``logp`` (no target samples:
  ``y=None``; :mod:`mmdflow.densities`): Stein variational gradient descent (Liu & Wang
  2016) and KSD descent (Korba et al. 2021); :func:`run` records their KSD^2. ``"srmmd"``
  given ``logp`` is one too (:func:`targets`: what each flow takes).

Protocol::

    state = flow.init(x0, key)          # FlowState
    state, aux = flow.step(state, y)    # aux: dict of scalars

:func:`scan` runs ``num_steps`` steps in one ``lax.scan`` (pure, jit-able);
:func:`run` drives a flow from the host in short compiled chunks (about a second
each, compiled once; results do not depend on the chunking), recording MMD^2,
kinetic energy, critic value and wall time every ``record_every`` steps. It
continues a run exactly from a saved ``state`` and ``history``, hands both to an
``on_chunk`` hook after every chunk (checkpoints), and stops a diverging flow
(non-finite particles, or MMD^2 above :data:`DIVERGENCE_FACTOR` times its first
record), flagging it in ``history["diverged"]``.

Example:
  >>> import jax
  >>> from mmdflow import flows, kernels
  >>> x0 = jax.random.normal(jax.random.key(0), (200, 2))
  >>> y = jax.random.normal(jax.random.key(1), (300, 2)) + 2.0
  >>> s = flows.make("sobolev", kernels.Gaussian(1.0), step_size=0.5, reg=0.1, num_features=128)
  >>> state, hist = flows.run(s, x0, y, num_steps=20, key=jax.random.key(2), record_every=10)
  >>> hist["mmd2"].shape
  (3,)
"""

from mmdflow.flows._particle import ParticleFlow
from mmdflow.flows._registry import FLOWS, field_params, make, targets
from mmdflow.flows._run import DIVERGENCE_FACTOR, run, scan
from mmdflow.flows._state import FlowState

__all__ = [
    "FLOWS",
    "make",
    "field_params",
    "targets",
    "ParticleFlow",
    "FlowState",
    "DIVERGENCE_FACTOR",
    "scan",
    "run",
]
