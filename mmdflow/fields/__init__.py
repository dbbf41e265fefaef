"""Velocity fields: what moves the particles of a flow.

A field is fitted on the current particles and the target at every step and gives the
velocity ``v(z)`` at any points; :class:`mmdflow.flows.ParticleFlow` turns it into a flow
(Euler step, step-size and noise schedules, displacement cap, kinetic energy). The
interface is :class:`VelocityField`; a new flow is a new field plus one line in
:data:`mmdflow.flows.FLOWS`.

* :class:`MMDField`: the witness gradient (MMD flow, Arbel et al. 2019).
* :class:`SobolevField`: the regularized kernel Sobolev critic (Mroueh, Sercu & Raj
  2019), exact or random-feature.
* :class:`NeuralSobolevField`: a Flax NNX critic trained on the augmented Lagrangian of
  the Sobolev GAN along the flow.
* :class:`DrMMDField`: the de-regularized MMD witness (Chen et al., JMLR 2025), its
  target-kernel system solved by CG on kernel sums.
* :class:`SVGDField`: Stein variational gradient descent (Liu & Wang 2016) toward an
  unnormalized density (``target = "density"``: no target samples).
* :class:`KSDField`: KSD descent (Korba et al. 2021), the Wasserstein gradient of the
  kernel Stein discrepancy to a density.
* :class:`KALEField`: the KALE witness (Glaser, Arbel & Gretton, NeurIPS 2021), its dual
  solved by Newton's method with CG on kernel sums.
* :class:`SrMMDField`: the Sobolev-regularized MMD witness (Tian et al., arXiv 2605.11884):
  a gradient penalty interpolating the MMD flow and kernel Sobolev descent, CG on
  cross-Hessian kernel sums; toward samples, or toward a density with the Stein kernel.

Every field has ``defaults_for(kernel, bandwidth, n, d, key)`` (density fields also
``logp=``): its flow's and its own hyperparameters for data at length scale ``bandwidth``
(what ``mmdflow flow`` uses).

Example:
  >>> import jax
  >>> from mmdflow import fields, kernels
  >>> x = jax.random.normal(jax.random.key(0), (50, 2))
  >>> f = fields.MMDField(kernels.Gaussian(1.0))
  >>> vel, _, aux = f.fit(x, None, x + 1.0, None, f.init(x, None), None, 0)
  >>> vel.fn(x[:3]).shape
  (3, 2)
"""

import importlib

from mmdflow.fields._base import Velocity, VelocityField, schedule_value
from mmdflow.fields._drmmd import DrMMDField
from mmdflow.fields._kale import KALEField, KALEState
from mmdflow.fields._ksd import KSDField
from mmdflow.fields._mmd import MMDField
from mmdflow.fields._sobolev import RFFState, SobolevField
from mmdflow.fields._srmmd import SrMMDField, SrMMDState
from mmdflow.fields._svgd import SVGDField

_NEURAL = ("NeuralSobolevField", "CriticState", "MLPCritic", "mlp_critic")


def __getattr__(name: str):
    """The neural field's names, imported on first use (Flax takes about a second)."""
    if name in _NEURAL:
        return getattr(importlib.import_module("mmdflow.fields._neural"), name)
    raise AttributeError(f"module 'mmdflow.fields' has no attribute {name!r}")


__all__ = [
    "Velocity",
    "VelocityField",
    "schedule_value",
    "MMDField",
    "DrMMDField",
    "SVGDField",
    "KSDField",
    "KALEField",
    "KALEState",
    "SrMMDField",
    "SrMMDState",
    "SobolevField",
    "RFFState",
    "NeuralSobolevField",
    "CriticState",
    "MLPCritic",
    "mlp_critic",
]
