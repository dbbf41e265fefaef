"""Particle flows as pure ``init`` / ``step`` steppers, and the drivers that run them.

Steppers (frozen dataclasses; hyperparameters are attributes, schedules are
callables ``count -> value``):

* :class:`KernelSobolevDescent`: regularized kernel Sobolev descent (Mroueh, Sercu &
  Raj 2019): ``x <- x + step_size * grad f(x)`` with the Sobolev critic of
  :mod:`mmdflow.sobolev` (random Fourier features or the exact kernel).
* :class:`MMDFlow`: the MMD gradient flow of Arbel et al. (2019),
  ``x <- x + step_size * grad witness(x + noise_level * eps)`` (noise injection).
* ``mmdflow.neural.NeuralSobolevDescent``: the neural-critic version (Flax).

Protocol::

    state = stepper.init(x0, key)          # FlowState
    state, aux = stepper.step(state, y)    # aux: dict of scalars

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
  >>> s = flows.KernelSobolevDescent(kernels.Gaussian(1.0), step_size=0.5, reg=0.1, num_features=128)
  >>> state, hist = flows.run(s, x0, y, num_steps=20, key=jax.random.key(2), record_every=10)
  >>> hist["mmd2"].shape
  (3,)
"""

from mmdflow.flows._run import DIVERGENCE_FACTOR, run, scan
from mmdflow.flows._state import FlowState, schedule_value
from mmdflow.flows._steppers import KernelSobolevDescent, MMDFlow, RFFState

__all__ = [
    "DIVERGENCE_FACTOR",
    "FlowState",
    "RFFState",
    "KernelSobolevDescent",
    "MMDFlow",
    "scan",
    "run",
    "schedule_value",
]
