"""The DrMMD flow's field: the de-regularized MMD witness (Chen, Mustafi, Glaser, Korba,
Gretton & Sriperumbudur, JMLR 2025), solved matrix-free."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from mmdflow._checks import check_bool, check_hyper, check_int, check_points, normalized_weights
from mmdflow._linalg import cg
from mmdflow.fields._base import Velocity, schedule_value
from mmdflow.fields._mmd import STEP_FACTOR as MMD_STEP_FACTOR
from mmdflow.kernels import Kernel
from mmdflow.mmd import witness, witness_grad
from mmdflow.ops import (
    SumConfig,
    check_kernel,
    check_sum_config,
    kernel_grad_matvec,
    kernel_matvec,
)

#: :meth:`DrMMDField.defaults_for`: the ridge ``lambda``. Measured (``benchmarks/
#: drmmd_defaults.py``, the ``mmdflow flow`` setting, 500 steps at the MMD flow's step):
#: final MMD^2 reduction 6,090x (gaussian -> 8gaussians) and 79,900x (moons -> rings) at
#: lambda = 1, vs 650x / 16,800x at 0.1 and 203x / 14x at 0.01 (kwgflows' examples use 1e-3
#: to 1e-2); the adaptive schedule from 1: 1,030x / 17,100x; the MMD flow 10,900x / 76,300x.
REG = 1.0


class DrMMDState(NamedTuple):
    """The state of a :class:`DrMMDField`.

    Attributes:
      alpha: ``[m]`` the last step's coefficients (CG's warm start), or ``None`` when the
        target was not known at ``init``.
      drmmd0: the first DrMMD value (NaN before the first step; ``adaptive`` only).
      reg: the ``lambda`` of the next step (``adaptive`` only).
    """

    alpha: jax.Array | None
    drmmd0: jax.Array | None
    reg: jax.Array | None


@dataclasses.dataclass(frozen=True)
class DrMMDField:
    """The DrMMD flow's velocity, time-rescaled so that ``reg -> inf`` is the MMD flow.

    DrMMD (the chi^2-divergence regularized by ``lambda``, from the particles ``Q`` to the
    target ``P``) has the first variation

        ``h = 2 (1 + lambda) / lambda * (Sigma_P + lambda I)^-1 (mu_Q - mu_P)``

    (``Sigma_P`` the target's covariance operator). In the kernel span,
    ``(Sigma_P + lambda)^-1 g = (g - k(., Y) alpha) / lambda`` with
    ``alpha = S (S K_YY S + lambda I)^-1 S g(Y)``, ``S = diag(sqrt(b))`` for the target
    weights ``b`` (for ``m`` uniform targets ``alpha = (K_YY + m lambda I)^-1 g(Y)``, as in
    kwgflows). The system is solved by CG on kernel sums (never a dense inverse); zero-weight
    (padding) targets drop out. The velocity is ``-grad h`` times ``lambda / (2 (1 + lambda))``:

        ``v(z) = grad (mu_P - mu_Q)(z) + sum_j alpha_j grad_z k(z, y_j)``,

    i.e. the MMD flow's witness gradient (:class:`~mmdflow.fields.MMDField`) plus the
    de-regularization, which vanishes as ``lambda -> inf`` (``alpha -> 0``). A flow step
    ``step_size`` here is kwgflows' ``lmbda * step_size`` times ``2 (1 + lambda)`` there.

    Attributes:
      kernel: the kernel.
      reg: ``lambda > 0`` or a schedule ``count -> value`` (with ``adaptive``: the first
        step's ``lambda``, a constant).
      adaptive: the paper's adaptive schedule (as kwgflows' ``adaptive_lmbda``): after a
        step at ``lambda_t`` with DrMMD value ``D_t`` (at the particles the step starts
        from; kwgflows evaluates it after the move, one step later),
        ``lambda_{t+1} = reg * sqrt(D_t / D_0)``, so the regularization shrinks as the flow
        converges.
      cg_tol, cg_maxiter: CG stopping rule for ``alpha`` (relative residual).
      sums: how the kernel sums run (:class:`mmdflow.ops.SumConfig`; on a mesh, collectives).
    """

    kernel: Kernel
    reg: Any = REG
    adaptive: bool = False
    cg_tol: float = 1e-6
    cg_maxiter: int = 100
    sums: SumConfig = SumConfig()
    #: the flow's default Euler step
    step_size: ClassVar[float] = 1.0
    #: ``reg`` is dimensionless (a ridge on the kernel matrix; ``mmdflow flow --reg`` as is)
    reg_power: ClassVar[int] = 0

    def __post_init__(self):
        cls = "DrMMDField"
        check_kernel(self.kernel)
        check_hyper(cls, "reg", self.reg)
        check_bool(cls, "adaptive", self.adaptive)
        if self.adaptive and callable(self.reg):
            raise ValueError(
                f"{cls}: `adaptive=True` starts from a constant `reg`; got a schedule."
            )
        check_hyper(cls, "cg_tol", self.cg_tol)
        check_int(cls, "cg_maxiter", self.cg_maxiter)
        check_sum_config(cls, self.sums)

    @classmethod
    def defaults_for(
        cls, kernel: Kernel, bandwidth: float, n: int, d: int, key: jax.Array
    ) -> dict[str, Any]:
        """Flow and field hyperparameters for data at length scale ``bandwidth``: the MMD
        flow's step (its velocity has the MMD flow's scale) and ``reg`` :data:`REG`."""
        return {"kernel": kernel, "step_size": MMD_STEP_FACTOR * bandwidth**2, "reg": REG}

    def init(self, x0: jax.Array, key: jax.Array, y: jax.Array | None = None) -> DrMMDState | None:
        """The state: CG's warm start when the target ``y`` is given (``flows.run`` and
        ``mmdflow flow`` give it), the adaptive ``lambda``; ``None`` when neither."""
        dtype = x0.dtype
        alpha = None if y is None else jnp.zeros((y.shape[0],), jnp.result_type(dtype, y.dtype))
        if alpha is None and not self.adaptive:
            return None
        d0, reg = None, None
        if self.adaptive:
            d0, reg = jnp.asarray(jnp.nan, dtype), jnp.asarray(self.reg, dtype)
        return DrMMDState(alpha, d0, reg)

    def fit(self, x, wx, y, wy, extra, key, count) -> tuple[Velocity, Any, dict]:
        """The de-regularized witness fitted on particles ``x`` and targets ``y``.

        Returns:
          ``(velocity, extra, aux)``, aux with ``critic`` (the DrMMD value
          ``(1 + lambda) / lambda * (MMD^2 - g(Y)^T alpha)``), ``reg`` (this step's
          ``lambda``) and ``cg_iterations``.
        """
        y = check_points("y", y, d=x.shape[1], other="x")
        dtype = jnp.result_type(x.dtype, y.dtype)
        b = normalized_weights("wy", wy, y.shape[0], "y", dtype)
        lam = extra.reg if self.adaptive else schedule_value(self.reg, count)
        warm = extra is not None and extra.alpha is not None
        if warm and extra.alpha.shape != (y.shape[0],):
            raise ValueError(
                f"DrMMDField: the state was initialised for {extra.alpha.shape[0]} targets but "
                f"`y` has shape {tuple(y.shape)}."
            )
        k, sums = self.kernel, self.sums
        wit_y = witness(y, x, y, k, wx=wx, wy=b, sums=sums)  # (mu_P - mu_Q)(Y) = -g(Y)
        wit_x = witness(x, x, y, k, wx=wx, wy=b, sums=sums)
        mmd2 = jnp.dot(b, wit_y) - jnp.dot(wx, wit_x)
        s = jnp.sqrt(b)

        def matvec(u):
            return s * kernel_matvec(k, y, y, s * u, sums=sums) + lam * u

        # warm start: beta = alpha / s on the targets with weight (zero where s = 0)
        beta0 = jnp.where(s > 0, extra.alpha / jnp.where(s > 0, s, 1.0), 0.0) if warm else None
        beta, it, _ = cg(matvec, -s * wit_y, tol=self.cg_tol, maxiter=self.cg_maxiter, x0=beta0)
        alpha = s * beta
        if warm:
            extra = extra._replace(alpha=alpha.astype(extra.alpha.dtype))

        def fn(z):
            v = witness_grad(z, x, y, k, wx=wx, wy=b, sums=sums)
            return v + kernel_grad_matvec(k, z, y, alpha, sums=sums)

        drmmd = (1.0 + lam) / lam * (mmd2 + jnp.dot(wit_y, alpha))
        if self.adaptive:
            d0 = jnp.where(jnp.isnan(extra.drmmd0), drmmd, extra.drmmd0).astype(extra.drmmd0.dtype)
            ratio = jnp.maximum(drmmd, 0.0) / d0
            reg = (self.reg * jnp.sqrt(ratio)).astype(extra.reg.dtype)
            extra = extra._replace(drmmd0=d0, reg=reg)
        aux = {"critic": drmmd, "reg": jnp.asarray(lam, drmmd.dtype), "cg_iterations": it}
        return Velocity(None, fn), extra, aux
