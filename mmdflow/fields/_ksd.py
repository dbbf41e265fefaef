"""KSD descent (Korba, Aubin-Frankowski, Majewski & Ablin, ICML 2021): a density flow's field."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from mmdflow.densities import check_logp, score
from mmdflow.fields._base import Velocity, check_density_field
from mmdflow.kernels import Kernel, stein_kernel
from mmdflow.ops import SumConfig, kernel_grad_matvec, kernel_matvec

#: :meth:`KSDField.defaults_for` (and the class default, for bandwidth 1): the step is this
#: times ``bandwidth**4`` (``KSD^2`` scales like a squared score, ``1 / length^2``, its
#: gradient like ``1 / length^3``). Measured as SVGD's step (``benchmarks/
#: density_defaults.py``; MMD^2 x 1e-4 to exact samples on gaussian / mixture / banana /
#: funnel after 500 steps; 200 exact samples: 19 / 115 / 20 / 24): step 0.03: 4.3 / 445 /
#: 75 / 337; 0.1: 4.3 / 411 / 40 / 436; 0.3: 4.3 / 329 / 18 / 415; 1.0: 138 / 14 / 7.8 / 654
#: (the Gaussian's particles oscillate). On N((1, -0.5), [[1, 0.3], [0.3, 0.5]]) (a
#: narrower direction: the step scales like its length^4), 100 particles from N(0, I),
#: 300 steps, worst error of the mean / covariance entries: step 0.03: 0.061 / 0.11; 0.1:
#: 0.005 / 0.010; 0.3: 0.16 / 1.7 (particles flung out, stuck where the kernel vanishes).
#: KSD descent is stiff with one fixed step (Korba et al. use L-BFGS) and its particles
#: stall between the mixture's modes and in the funnel (SVGD: 3.0 and 64).
STEP_FACTOR = 0.1


@dataclasses.dataclass(frozen=True)
class KSDField:
    """KSD descent toward the density ``p``: the Wasserstein gradient flow of ``KSD^2``.

    With the Stein kernel ``k_p`` of ``kernel`` (:class:`mmdflow.kernels.Stein`) and the
    V-statistic ``KSD^2 = sum_ij w_i w_j k_p(x_i, x_j)`` (:func:`mmdflow.ksd.ksd2`), the
    velocity is

        ``v(z) = -grad_z 2 sum_j w_j k_p(z, x_j)``,

    (``k_p(z, .)`` differentiated in ``z`` through ``z``'s score too, i.e. through the
    Hessian of ``log p``), which at a particle is ``-grad_{x_i} KSD^2 / w_i``: Korba et
    al.'s particle gradient, rescaled by the number of particles so that a step does not
    depend on it. One kernel-gradient sum of :func:`mmdflow.kernels.stein_kernel` (on the
    augmented points ``[x, grad log p(x)]``, then one vector-Jacobian product of the
    score); zero-weight particles drop out. The target is the density
    (``target = "density"``): ``y`` is ignored.

    Attributes:
      logp: the target log-density ``[d] -> scalar`` up to a constant (a function or a
        :mod:`mmdflow.densities` object; hashable; twice differentiable).
      kernel: the base kernel (twice differentiable).
      sums: how the kernel sums run (:class:`mmdflow.ops.SumConfig`; on a mesh,
        collectives).

    Example:
      >>> import jax
      >>> from mmdflow import densities, fields, flows, kernels
      >>> flow = flows.ParticleFlow(fields.KSDField(densities.Gaussian(), kernels.Gaussian(1.0)))
      >>> x0 = 2.0 * jax.random.normal(jax.random.key(0), (100, 2))
      >>> state = flow.init(x0, jax.random.key(1))
      >>> state, aux = jax.jit(flow.step)(state)  # no target samples
      >>> sorted(aux)  # critic: KSD^2 before the step
      ['critic', 'kinetic']
    """

    logp: Callable[[jax.Array], jax.Array]
    kernel: Kernel
    sums: SumConfig = SumConfig()
    #: the flow's default Euler step
    step_size: ClassVar[float] = STEP_FACTOR
    #: the field moves particles toward a density, not toward samples
    target: ClassVar[str] = "density"

    def __post_init__(self):
        check_density_field("KSDField", self.logp, self.kernel, self.sums)

    @classmethod
    def defaults_for(
        cls,
        kernel: Kernel,
        bandwidth: float,
        n: int,
        d: int,
        key: jax.Array,
        logp: Callable[[jax.Array], jax.Array] | None = None,
    ) -> dict[str, Any]:
        """Flow and field hyperparameters for a target at length scale ``bandwidth``: a
        step of :data:`STEP_FACTOR` x ``bandwidth**4``, and ``logp`` when given."""
        out = {"kernel": kernel, "step_size": STEP_FACTOR * bandwidth**4}
        return out if logp is None else {**out, "logp": logp}

    def init(self, x0: jax.Array, key: jax.Array, y: jax.Array | None = None) -> None:
        score(self.logp, x0)  # a bad logp fails here, at the start (ValueError)
        return None

    def fit(self, x, wx, y, wy, extra, key, count) -> tuple[Velocity, Any, dict]:
        """The KSD-descent velocity at particles ``x`` (weights ``wx``); ``y``, ``wy`` unused.

        Returns:
          ``(velocity, extra, aux)``, aux with ``critic``: ``KSD^2`` (V-statistic).
        """
        check_logp(self.logp, x, "KSDField")
        kp, sums = stein_kernel(self.kernel, self.logp, x.shape[1]), self.sums
        h = kernel_matvec(kp, x, x, wx, sums=sums)  # [n]: sum_j w_j k_p(x_i, x_j)

        def fn(q):
            return -2.0 * kernel_grad_matvec(kp, q, x, wx, sums=sums)

        return Velocity(None, fn), extra, {"critic": jnp.dot(wx, h)}
