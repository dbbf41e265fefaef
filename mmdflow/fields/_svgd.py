"""Stein variational gradient descent (Liu & Wang, NeurIPS 2016): a density flow's field."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from mmdflow.densities import check_logp, score
from mmdflow.fields._base import Velocity, check_density_field
from mmdflow.kernels import Kernel
from mmdflow.ops import SumConfig, kernel_grad_matvec, kernel_matvec

#: :meth:`SVGDField.defaults_for` (and the class default, for bandwidth 1): the step is
#: this times ``bandwidth**2`` (the velocity scales like a score, ``1 / length``). Measured
#: (``benchmarks/density_defaults.py``: 200 particles from N(0, I), 500 steps, Gaussian
#: kernel of bandwidth 1; MMD^2 to 2,000 exact samples, x 1e-4, on the built-in gaussian /
#: mixture / banana / funnel; 200 exact samples score 19 / 115 / 20 / 24): step 0.3: 4.3 /
#: 7.8 / 13 / 73; 1.0: 4.3 / 3.0 / 6.3 / 64; 3.0: 4.3 / 2.6 / 5.1 / 470 (the funnel's neck);
#: 10: diverges. The median heuristic per step (bandwidth ``median / sqrt(2 log(n + 1))``,
#: Liu & Wang's) at step 1.0: 4.9 / 2.9 / 7.3 / 113, no better than the fixed bandwidth
#: (and an ``[n, n]`` distance matrix per step), so the kernel is fixed. The step assumes
#: a target at the length scale ``bandwidth``: on N((1.5, -0.5), 0.25 I) (std 0.5) with
#: bandwidth 1 step 1.0 oscillates (KSD^2 17.7 -> 369 in 20 steps); at std 0.71 it converges.
STEP_FACTOR = 1.0


def grad_second(k: Kernel, z: jax.Array, x: jax.Array, w: jax.Array, sums: SumConfig) -> jax.Array:
    """``out[i] = sum_j w[j] grad_{x_j} k(x_j, z_i)`` (``[nz, d]``): the repulsion of SVGD.

    Translation-invariant kernels: ``-kernel_grad_matvec(k, z, x, w)`` (which
    differentiates its first argument); others: one forward-mode derivative of
    ``kernel_matvec`` per coordinate, moving every ``x_j`` together.
    """
    if k.translation_invariant:
        return -kernel_grad_matvec(k, z, x, w, sums=sums)
    f = lambda xs: kernel_matvec(k, z, xs, w, sums=sums)
    d = x.shape[1]
    cols = [jax.jvp(f, (x,), (jnp.zeros_like(x).at[:, a].set(1.0),))[1] for a in range(d)]
    return jnp.stack(cols, axis=-1)


@dataclasses.dataclass(frozen=True)
class SVGDField:
    """Stein variational gradient descent toward the density ``p`` (Liu & Wang 2016):

        ``phi(z) = sum_j w_j [k(x_j, z) grad log p(x_j) + grad_{x_j} k(x_j, z)]``,

    the steepest descent direction of ``KL(q || p)`` in the kernel's RKHS: the scores
    pull the particles toward ``p``'s modes, the kernel's gradient pushes them apart.
    Two kernel sums per evaluation (the scores as ``[n, d]`` weights, and the kernel's
    gradient), never an ``[n, n]`` array; zero-weight particles drop out. The target is
    the density (``target = "density"``): ``y`` is ignored.

    Attributes:
      logp: the target log-density ``[d] -> scalar`` up to a constant (a function or a
        :mod:`mmdflow.densities` object; hashable).
      kernel: the kernel (fixed bandwidth; see :data:`STEP_FACTOR` for the measurements).
      sums: how the kernel sums run (:class:`mmdflow.ops.SumConfig`; on a mesh,
        collectives).

    Example:
      >>> import jax
      >>> from mmdflow import densities, flows, kernels
      >>> flow = flows.make("svgd", kernels.Gaussian(1.0), logp=densities.Banana())
      >>> x0 = jax.random.normal(jax.random.key(0), (100, 2))
      >>> state, hist = flows.run(flow, x0, None, num_steps=50, key=jax.random.key(1))
      >>> bool(hist["ksd2"][-1] < 0.1 * hist["ksd2"][0])
      True
    """

    logp: Callable[[jax.Array], jax.Array]
    kernel: Kernel
    sums: SumConfig = SumConfig()
    #: the flow's default Euler step
    step_size: ClassVar[float] = STEP_FACTOR
    #: the field moves particles toward a density, not toward samples
    target: ClassVar[str] = "density"

    def __post_init__(self):
        check_density_field("SVGDField", self.logp, self.kernel, self.sums)

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
        step of :data:`STEP_FACTOR` x ``bandwidth**2``, and ``logp`` when given."""
        out = {"kernel": kernel, "step_size": STEP_FACTOR * bandwidth**2}
        return out if logp is None else {**out, "logp": logp}

    def init(self, x0: jax.Array, key: jax.Array, y: jax.Array | None = None) -> None:
        score(self.logp, x0)  # a bad logp fails here, at the start (ValueError)
        return None

    def fit(self, x, wx, y, wy, extra, key, count) -> tuple[Velocity, Any, dict]:
        """The SVGD direction fitted on particles ``x`` (weights ``wx``); ``y``, ``wy`` unused."""
        check_logp(self.logp, x, "SVGDField")
        k, sums = self.kernel, self.sums
        ws = wx[:, None] * jax.vmap(jax.grad(self.logp))(x)  # [n, d] weights: w_j s(x_j)

        def fn(z):
            return kernel_matvec(k, z, x, ws, sums=sums) + grad_second(k, z, x, wx, sums)

        return Velocity(None, fn), extra, {}
