"""The kernel Sobolev descent field (Mroueh, Sercu & Raj 2019): the regularized Sobolev critic."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from mmdflow._checks import (
    check_bool,
    check_hyper,
    check_int,
    check_points,
    normalized_weights,
)
from mmdflow.features import RFF
from mmdflow.fields._base import Velocity, schedule_value
from mmdflow.kernels import Kernel, _pytree
from mmdflow.ops import SumConfig, check_kernel, check_sum_config
from mmdflow.sobolev import SOLVERS, compute_dtype, exact_critic, rff_embedding, rff_solve

#: :meth:`SobolevField.defaults_for` (``mmdflow flow``): the exact kernel critic when
#: ``n * d`` is at most this, else :data:`DEFAULT_NUM_FEATURES` random features redrawn
#: at every step.
EXACT_MAX_SIZE = 256
DEFAULT_NUM_FEATURES = 128
#: the default Euler step (dimensionless with ``reg`` in units of ``1 / bandwidth**2``)
STEP_SIZE = 0.5
#: the default ridge in units of ``1 / bandwidth**2`` (the scale of the kernel's gradient
#: features): the absolute ridge is ``REG / bandwidth**2``, which makes Sobolev descent
#: invariant to rescaling the data (``step_size`` is then dimensionless).
REG = 0.01
#: the default cap on each particle's move per step, times the bandwidth
#: (``ParticleFlow.max_move``). Without it a source far from the target loses its leading
#: particles: the critic gradient is largest where particles are sparse, one Euler step
#: flings them beyond the target where every kernel vanishes (issue 13: N(0, I) ->
#: N(2, I) in 3-D, 300 points, 12 particles left at radius 15-37, MMD^2 169x lower;
#: capped: none, 8,900x). Measured in ``benchmarks/flow_defaults.py``.
MAX_MOVE = 0.25


def num_features_for(n: int, d: int) -> int | None:
    """The default ``num_features`` for ``n`` particles in ``d`` dimensions (``None``:
    the exact critic, when ``n * d <= EXACT_MAX_SIZE``)."""
    return None if n * d <= EXACT_MAX_SIZE else DEFAULT_NUM_FEATURES


@_pytree(data=("rff", "mu_p", "has_mu_p"))
class RFFState:
    """The state of a random-feature :class:`SobolevField`.

    Attributes:
      rff: the random Fourier features.
      mu_p: ``[m]`` cached target mean embedding ``b^T phi(y)`` (valid when ``has_mu_p``).
      has_mu_p: bool scalar; set by the first step (fixed features only).
    """

    rff: RFF
    mu_p: jax.Array
    has_mu_p: jax.Array


def _rff_state(rff, dtype):
    return RFFState(rff, jnp.zeros((rff.num_features,), dtype), jnp.zeros((), bool))


@dataclasses.dataclass(frozen=True)
class SobolevField:
    """``v = grad f``, the regularized kernel Sobolev critic fitted on the particles.

    Each step fits ``u = (D + reg I)^-1 (mu_p - mu_q)`` on the current particles (``D``
    the kernel's gradient covariance, :mod:`mmdflow.sobolev`) and moves them along the
    critic gradient ``grad f = J phi^T u``.

    With fixed random features the target embedding ``mu_p = b^T phi(y)`` is computed
    by the first step and cached in the field's state (:class:`RFFState`): one fixed
    target per run (start a fresh state for a new target).

    Attributes:
      kernel: the kernel (shift-invariant with a spectral density when
        ``num_features`` is set).
      reg: ridge ``lambda > 0`` or a schedule. Larger values give smoother,
        lower-kinetic-energy paths; ``reg -> inf`` approaches the MMD flow (time
        rescaled by ``1/reg``).
      num_features: ``m`` random Fourier features (drawn at ``init``), or ``None`` for
        the exact kernel critic.
      solver: exact-critic linear solver (``"auto"``, ``"cholesky"``, ``"cg"``).
      normalize: use the unit-Sobolev-ball critic ``u / sqrt(delta^T u)``.
      resample_features: redraw the ``num_features`` random features from the kernel's
        spectral density at every step. Fixed features (Mroueh et al.) only match ``m``
        random moments: the particles can settle on configurations (often 1-D curves)
        that fool them. Fresh features give each step a new random approximation of the
        exact critic, which no fixed set of moments can fool; on the 2-D toy pairs this
        reaches 10^4 to 4 x 10^5 times lower MMD^2 in 500 steps with ``m = 128``, versus
        10^2 to 10^4 with fixed ``m = 512``.
      cg_tol, cg_maxiter: CG stopping rule of the exact critic (``solver="cg"``).
      sums: how the exact critic's kernel sums run (:class:`mmdflow.ops.SumConfig`); on a
        mesh the critic is solved by CG on sharded coefficients with sharded cross-Hessian
        sums (random features need nothing: their sums are GEMMs that ``jit`` partitions).
    """

    kernel: Kernel
    reg: Any = 0.1
    num_features: int | None = None
    solver: str = "auto"
    normalize: bool = False
    resample_features: bool = False
    cg_tol: float = 1e-6
    cg_maxiter: int = 200
    sums: SumConfig = SumConfig()
    #: the flow's default Euler step
    step_size: ClassVar[float] = 1.0
    #: ``reg`` scales like ``bandwidth ** reg_power`` (``mmdflow flow --reg`` is in those units)
    reg_power: ClassVar[int] = -2

    def __post_init__(self):
        cls = "SobolevField"
        check_kernel(self.kernel)
        check_hyper(cls, "reg", self.reg)
        check_int(cls, "num_features", self.num_features, allow_none=True)
        if self.resample_features and self.num_features is None:
            raise ValueError(
                f"{cls}: `resample_features=True` needs `num_features` (random features to "
                "redraw); got num_features=None."
            )
        check_hyper(cls, "cg_tol", self.cg_tol)
        check_int(cls, "cg_maxiter", self.cg_maxiter)
        if self.solver not in SOLVERS:
            raise ValueError(f"{cls}: `solver` must be one of {SOLVERS}; got {self.solver!r}.")
        check_bool(cls, "normalize", self.normalize)
        check_bool(cls, "resample_features", self.resample_features)
        check_sum_config(cls, self.sums)
        if self.sums.mesh is not None and self.num_features is None and self.solver == "cholesky":
            raise ValueError(
                f"{cls}: on a mesh the exact critic is solved by CG; got solver='cholesky'."
            )

    @classmethod
    def defaults_for(
        cls, kernel: Kernel, bandwidth: float, n: int, d: int, key: jax.Array
    ) -> dict[str, Any]:
        """Flow and field hyperparameters for data at length scale ``bandwidth``.

        Step :data:`STEP_SIZE`, ridge :data:`REG` ``/ bandwidth**2``, moves capped at
        :data:`MAX_MOVE` x ``bandwidth``, and :func:`num_features_for` random features
        redrawn at every step (or the exact critic for small problems).
        """
        nf = num_features_for(n, d)
        return {
            "kernel": kernel,
            "step_size": STEP_SIZE,
            "max_move": MAX_MOVE * bandwidth,
            "reg": REG / bandwidth**2,
            "num_features": nf,
            "resample_features": nf is not None,
        }

    def _features(self, key, d, dtype) -> RFFState:
        cd = compute_dtype(dtype)
        return _rff_state(RFF.create(self.kernel, key, self.num_features, d, dtype=cd), cd)

    def init(self, x0: jax.Array, key: jax.Array, y: jax.Array | None = None) -> RFFState | None:
        """The random features (``num_features``), or ``None`` for the exact critic."""
        if self.num_features is None:
            return None
        return self._features(key, x0.shape[1], x0.dtype)

    def critic(self, x, wx, y, wy, extra, count):
        """The Sobolev critic fitted on particles ``x`` and the field's next state.

        An ``ExactCritic`` (:func:`mmdflow.sobolev.exact_critic`) or an ``RFFCritic``
        with the features in ``extra`` (the target embedding cached there).
        """
        reg = schedule_value(self.reg, count)
        if self.num_features is None:
            c = exact_critic(
                self.kernel,
                x,
                y,
                reg,
                wx=wx,
                wy=wy,
                solver=self.solver,
                cg_tol=self.cg_tol,
                cg_maxiter=self.cg_maxiter,
                sums=self.sums,
            )
            return c, extra
        x = check_points("x", x)
        y = check_points("y", y, d=x.shape[1])
        dtype = compute_dtype(jnp.result_type(x.dtype, y.dtype))  # float32 for bf16 / fp16
        x, y = x.astype(dtype), y.astype(dtype)
        a = normalized_weights("wx", wx, x.shape[0], "x", dtype)
        b = normalized_weights("wy", wy, y.shape[0], "y", dtype)
        if extra.rff.z.shape[1] != x.shape[1]:
            raise ValueError(
                f"`rff` was built for d={extra.rff.z.shape[1]} but `x` has shape {x.shape}."
            )

        def fresh():
            return rff_embedding(extra.rff, y, b).astype(extra.mu_p.dtype)

        if self.resample_features:
            mu_p = fresh()
        else:
            mu_p = jax.lax.cond(extra.has_mu_p, lambda: extra.mu_p, fresh)
            extra = RFFState(extra.rff, mu_p, jnp.ones((), bool))
        c = rff_solve(extra.rff, x, a, mu_p.astype(dtype) - rff_embedding(extra.rff, x, a), reg)
        return c, extra

    def fit(self, x, wx, y, wy, extra, key, count) -> tuple[Velocity, Any, dict]:
        if self.resample_features:
            extra = self._features(key, x.shape[1], x.dtype)
        c, extra = self.critic(x, wx, y, wy, extra, count)
        disc2 = c.discrepancy_sq
        at_x = c.grad_at_x if self.num_features is None else c.grad(x)
        if self.normalize:
            scale = jnp.sqrt(jnp.maximum(disc2, jnp.finfo(at_x.dtype).tiny))
            at_x = at_x / scale
            fn = lambda z: c.grad(z) / scale
        else:
            fn = c.grad
        aux = {"critic": jnp.sqrt(jnp.maximum(disc2, 0.0)), "mmd2_critic": c.mmd2}
        return Velocity(at_x, fn), extra, aux
