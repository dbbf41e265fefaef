"""The MMD flow's field: the witness gradient (Arbel, Korba, Salim & Gretton, NeurIPS 2019)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax

from mmdflow.fields._base import Velocity
from mmdflow.kernels import Kernel
from mmdflow.mmd import witness_grad
from mmdflow.ops import SumConfig, check_kernel, check_sum_config

#: :meth:`MMDField.defaults_for` (``mmdflow flow``): the step is this times ``bandwidth**2``
#: (the witness gradient scales like ``1 / bandwidth``, its Jacobian like
#: ``1 / bandwidth**2``).
STEP_FACTOR = 0.1


@dataclasses.dataclass(frozen=True)
class MMDField:
    """``v(z) = grad f(z)``, the gradient of the witness ``f = E_p k(., y) - E_q k(., x)``.

    For particles ``q`` and target ``p`` (:func:`mmdflow.witness_grad`), ``d/dt x = v(x)``
    is the Wasserstein gradient flow of ``MMD^2 / 2``; with the flow's ``noise_level`` the
    field is evaluated at noise-injected particles (Arbel et al.'s noise injection).

    Attributes:
      kernel: the kernel.
      sums: how the kernel sums run (:class:`mmdflow.ops.SumConfig`: implementation, tiles;
        on a mesh, the collective strategy).
    """

    kernel: Kernel
    sums: SumConfig = SumConfig()
    #: the flow's default Euler step
    step_size: ClassVar[float] = 1.0

    def __post_init__(self):
        check_kernel(self.kernel)
        check_sum_config("MMDField", self.sums)

    @classmethod
    def defaults_for(
        cls, kernel: Kernel, bandwidth: float, n: int, d: int, key: jax.Array
    ) -> dict[str, Any]:
        """Flow and field hyperparameters for data at length scale ``bandwidth``:
        a step of :data:`STEP_FACTOR` x ``bandwidth**2``, no noise."""
        return {"kernel": kernel, "step_size": STEP_FACTOR * bandwidth**2}

    def init(self, x0: jax.Array, key: jax.Array, y: jax.Array | None = None) -> None:
        return None

    def fit(self, x, wx, y, wy, extra, key, count) -> tuple[Velocity, Any, dict]:
        fn = lambda z: witness_grad(z, x, y, self.kernel, wx=wx, wy=wy, sums=self.sums)
        return Velocity(None, fn), extra, {}
