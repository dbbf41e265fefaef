"""Point-wise kernels ``k(x, y)`` on ``[d]`` vectors, as registered pytrees.

Every kernel is a frozen dataclass registered with JAX: numeric
hyperparameters (bandwidths, scales, exponents) are traced *leaves*, so a new
value never triggers a recompile, while structural choices (a polynomial's
degree) are static metadata.

Besides the point-wise ``__call__``, kernels expose *block* methods used by
:mod:`mmdflow.ops` on tiles of points:

* ``gram_block(x, y)`` -> ``[n, m]`` kernel values;
* ``grad_block(x, y, w)`` -> ``[n, k, d]``, ``sum_j w[j, :] grad_x k(x_i, y_j)``
  for weights ``w [m, k]``;
* ``value_grad_block(x, y, w)`` -> ``[n, k, 1 + d]``, the ``gram_block`` sum ``K w`` and
  ``grad_block`` stacked (one pass over the tile's pairs for both);
* ``hess_block(x, y, e)`` -> ``[n, d]``, ``sum_j H(x_i, y_j) e_j`` with the
  cross-Hessian ``H[a, b] = d^2 k / dx_a dy_b`` for vectors ``e [m, d]``.

:class:`Stein` is the Langevin-Stein kernel of a base kernel and a target density, on
augmented points ``[x, grad log p(x)]`` (:func:`stein_points`): the kernel of the kernel
Stein discrepancy (:mod:`mmdflow.ksd`) and of the density flows.

The base class derives them from ``__call__`` with ``vmap``/``jacfwd``, so any
subclass that only implements ``__call__`` works everywhere; radial and
dot-product kernels override them with closed forms (one distance computation
per pair, GEMMs at ``HIGHEST`` precision for large ``d``, no ``[n, m, d]``
intermediates).

Example:
  >>> import jax.numpy as jnp
  >>> from mmdflow import kernels
  >>> k = kernels.Gaussian(bandwidth=1.0)
  >>> float(k(jnp.zeros(2), jnp.ones(2)))  # exp(-2 / 2)
  0.36787...
"""

from __future__ import annotations

from mmdflow.kernels._bandwidth import median_bandwidth
from mmdflow.kernels._base import DIRECT_MAX_D as DIRECT_MAX_D
from mmdflow.kernels._base import HIGHEST as HIGHEST
from mmdflow.kernels._base import (
    DotProductKernel,
    Kernel,
    RadialKernel,
    sqdist,
)
from mmdflow.kernels._base import _pytree as _pytree
from mmdflow.kernels._base import _safe_sqrt as _safe_sqrt
from mmdflow.kernels._base import centred as centred
from mmdflow.kernels._combine import Scaled, Sum
from mmdflow.kernels._combine import _Squared as _Squared
from mmdflow.kernels._dotproduct import Linear, Polynomial
from mmdflow.kernels._feature import FeatureKernel
from mmdflow.kernels._radial import IMQ, Energy, Gaussian, Laplace, MixtureRBF, RationalQuadratic
from mmdflow.kernels._stein import Stein, stein_kernel, stein_points

__all__ = [
    "Kernel",
    "RadialKernel",
    "DotProductKernel",
    "Gaussian",
    "MixtureRBF",
    "IMQ",
    "Laplace",
    "RationalQuadratic",
    "Energy",
    "Polynomial",
    "Linear",
    "Sum",
    "Scaled",
    "FeatureKernel",
    "Stein",
    "stein_kernel",
    "stein_points",
    "median_bandwidth",
    "sqdist",
]
