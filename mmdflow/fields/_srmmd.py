"""The SrMMD flow's field: the Sobolev-regularized MMD witness (Tian, Sriperumbudur, Gretton &
Chen, "Sobolev Regularized MMD Gradient Flow", arXiv 2605.11884, May 2026), solved matrix-free.

Source of the formulas. The paper's text reachable here (the stored arXiv HTML and its
listings) is its abstract and the first paragraph of its introduction: the flow is the MMD
flow with "a gradient penalty on the witness function", it has "regularization and
interpolation parameters (lambda and alpha)", and it applies to samples and (with Stein
kernels) to unnormalized densities. Its numbered equations (the SrMMD functional, its
finite-sample form, the discrete-time update) could not be retrieved, so no equation number
is quoted: what follows is this module's reconstruction from that description, in the
notation of :mod:`mmdflow.sobolev` (Mroueh, Sercu & Raj's regularized kernel Sobolev critic),
and it may differ from the paper's parametrisation (an open item of issue 16).

The witness. For the particles ``Q = sum_i a_i delta_{x_i}`` (moving) and the target
``P = sum_j b_j delta_{y_j}``, ``delta = mu_P - mu_Q`` (the MMD witness, in the RKHS ``H``)
and the particles' gradient covariance ``D_Q = sum_i a_i sum_k d_k phi(x_i) (x) d_k
phi(x_i)`` (``E_Q |grad f|^2 = <f, D_Q f>_H``), the gradient-penalized witness is

    ``h = argmax_{f in H} <f, delta>_H - 1/2 [alpha E_Q |grad f|^2 + lambda |f|_H^2]
        = (alpha D_Q + lambda I)^-1 delta,``

the penalty interpolating, with ``alpha in [0, 1]``, between the MMD witness's
(``lambda |f|_H^2``: ``h = delta / lambda``) and the regularized kernel Sobolev critic's
(``E_Q |grad f|^2 + lambda |f|_H^2``, :class:`~mmdflow.fields.SobolevField`); the SrMMD
value is ``<delta, h>_H`` (twice the maximum of that objective). The particles move along
``lambda grad h`` (time rescaled by ``lambda``, as :class:`~mmdflow.fields.DrMMDField`),

    ``v(z) = lambda grad h(z) = grad [(I + (alpha / lambda) D_Q)^-1 delta](z),``

so that ``alpha = 0`` is exactly the MMD flow (:class:`~mmdflow.fields.MMDField`, steps in
its units) and ``alpha = 1`` is exactly ``lambda`` times kernel Sobolev descent at ridge
``lambda``; only ``alpha / lambda`` shapes the velocity (``lambda`` alone sets the time
scale of the unrescaled flow). ``D_Q`` has units ``1 / length^2``: ``lambda`` is given in
those units (``reg_power = -2``, ``lambda = REG / bandwidth^2`` by default) and the flow is
then invariant to rescaling the data.

Finite-sample form (the push-through identity of :func:`mmdflow.sobolev.exact_critic`, with
``D_Q``'s weights ``alpha a_i``): with ``s_i = sqrt(alpha a_i)``, ``g_i = grad delta(x_i)``
(the MMD witness gradient at the particles) and the cross-Hessian sums
``(H e)_i = sum_j d^2 k(x_i, x_j) / dx dy e_j`` (:func:`mmdflow.ops.kernel_hessian_matvec`),

    ``(S H S + lambda I) c = S g``  (an ``[n d]`` SPD system on the particles, by CG),
    ``e = S c``,  ``h = (delta - sum_j grad_2 k(., x_j) . e_j) / lambda``,
    ``v(z) = grad delta(z) - sum_j H(z, x_j) e_j``,
    ``SrMMD = <delta, h> = (MMD^2 - (S g) . c) / lambda``.

Zero-weight particles (padding on a mesh) have ``s_i = 0``, hence ``c_i = 0`` and
``e_i = 0``: they drop out exactly; zero-weight targets enter only through ``b``.

On a density (the paper's sampling variant: an unnormalized target ``p``, ``logp``
given): the same formulas in the RKHS of the Stein kernel ``k_p`` of ``kernel``
(:func:`mmdflow.kernels.stein_kernel`), where ``mu_P = E_p k_p(., x) = 0`` (Stein's
identity), so ``delta = -mu_Q``, its squared norm is ``KSD^2`` and ``g_i = -sum_j a_j
grad_1 k_p(x_i, x_j)``; the cross-Hessian sums of ``k_p`` in the original coordinates are
``J(x_i)^T H_Stein J(x_j) e_j`` with ``J(x) = [I; Hess log p(x)]`` (the augmented points'
Jacobian: a JVP and a VJP of the score). ``alpha = 0`` is then half of KSD descent's
velocity (:class:`~mmdflow.fields.KSDField`); ``D_Q`` has units ``1 / length^4`` and
``lambda`` is given in those (``density_reg_power = -4``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from mmdflow._checks import (
    check_hyper,
    check_int,
    check_points,
    check_real,
    concrete_array,
    normalized_weights,
)
from mmdflow._linalg import cg
from mmdflow.densities import check_logp, score
from mmdflow.fields._base import Velocity, check_logp_param, schedule_value
from mmdflow.kernels import Kernel, stein_kernel
from mmdflow.mmd import witness, witness_grad
from mmdflow.ops import (
    SumConfig,
    check_kernel,
    check_sum_config,
    kernel_grad_matvec,
    kernel_hessian_matvec,
    kernel_hessian_operator,
    kernel_matvec,
)

#: :meth:`SrMMDField.defaults_for`: the interpolation ``alpha`` (the velocity depends on
#: ``alpha / lambda`` only, so ``alpha`` stays at 1, the Sobolev end, and :data:`REG` sets
#: the ratio; measured alongside it).
ALPHA = 1.0
#: :meth:`SrMMDField.defaults_for`: ``lambda`` in units of ``1 / bandwidth**2``. Measured
#: (``benchmarks/srmmd_defaults.py``, the ``mmdflow flow`` setting, 500 steps; final MMD^2
#: reduction gaussian -> 8gaussians / moons -> rings, float64): lambda = 1 at a step of
#: 1 x bandwidth^2 61,500x / 1,080,000x at 1000 points and 2,850,000x / 145,000x at 300
#: (the MMD flow at its step 0.1: 11,000x / 72,500x and 2,640x / 37,900x; at 0.3 it
#: oscillates on 8gaussians, 7.6x); lambda = 1 at step 0.3: 40,400x / 336,000x (1000) and
#: 7,810x / 61,700x (300); lambda = 10 at step 0.1 ~ the MMD flow (2,570x / 16,800x at 300);
#: lambda = 0.1 / 0.3 at steps 1 / 3: 7,370x / 61,700x and 7,410x / 119,000x (300), with 2-3x
#: the CG iterations (35-42 vs 12-17 per step); unstable: lambda = 1 at step 3 (2.3x / 13x)
#: and lambda = 3 at step 1 (9.1x on 8gaussians), so the default step has a margin under 3x.
REG = 1.0
#: :meth:`SrMMDField.defaults_for`: the step is this times ``bandwidth**2`` (10x the MMD
#: flow's: ``lambda grad h`` is its velocity contracted by ``(I + (alpha / lambda) D_Q)^-1``;
#: measured with :data:`REG`, above).
STEP_FACTOR = 1.0
#: :meth:`SrMMDField.defaults_for` on a density: ``lambda`` in units of ``1 / bandwidth**4``.
#: Measured (``benchmarks/density_defaults.py srmmd``: 200 particles from N(0, I), 500 steps,
#: alpha 1, Gaussian kernel of bandwidth 1; MMD^2 x 1e-4 to 2,000 exact samples on gaussian /
#: mixture / banana / funnel, 200 exact samples: 19 / 33 / 20 / 24): lambda 1 at steps 0.1 /
#: 0.3 / 1 / 3: 4.3 / 426 / 63 / 218, 4.3 / 381 / 31 / 86, 4.3 / 281 / 13 / 38, 4.2 / 111 /
#: 7.5 / 522 (step 10 diverges); lambda 10 at step 1 ~ lambda 1, at 3 worse (273 on the
#: gaussian); lambda 0.1 at steps 1 / 3 / 10 / 30: 4.3 / 276 / 14 / 41, **4.2 / 103 / 7.6 /
#: 29**, 4.2 / 88 / 6.3 / 24, diverges (gaussian 349, funnel NaN); lambda 0.01: NaN on the
#: funnel at every step (CG on a near-singular system). KSD descent at its default: 4.3 /
#: 411 / 40 / 436; SVGD at its default: 4.3 / 3.0 / 6.3 / 64.
DENSITY_REG = 0.1
#: ... and the step, in units of ``bandwidth**4`` (KSD descent's units): 3, a factor 3 under
#: the largest stable step measured with :data:`DENSITY_REG` (above).
DENSITY_STEP_FACTOR = 3.0


class SrMMDState(NamedTuple):
    """The state of a :class:`SrMMDField` initialised with its target.

    Attributes:
      c: ``[n, d]`` the last step's CG solution ``c`` (the warm start of the next solve;
        zero before the first step).
    """

    c: jax.Array


@dataclasses.dataclass(frozen=True)
class SrMMDField:
    """The SrMMD flow's velocity ``v = lambda grad h``, ``h = (alpha D_Q + lambda I)^-1 delta``.

    The gradient-penalized MMD witness (module docstring: the formulas, their source and the
    choices made where the paper's text was not available): ``alpha = 0`` is the MMD flow,
    ``alpha = 1`` kernel Sobolev descent at ridge ``lambda`` (time rescaled by ``lambda``).
    The ``[n d]`` system on the particles is solved by CG on cross-Hessian kernel sums (never
    a dense matrix), warm-started from the previous step's solution when :meth:`init` gets
    the target.

    Attributes:
      kernel: the kernel (twice differentiable).
      alpha: the interpolation ``alpha in [0, 1]`` (weight of the gradient penalty) or a
        schedule ``count -> value``.
      reg: ``lambda > 0`` or a schedule; in units of ``1 / length^2`` (``D_Q``'s).
      cg_tol, cg_maxiter: CG stopping rule (relative residual).
      sums: how the kernel sums run (:class:`mmdflow.ops.SumConfig`; on a mesh, collectives).
      logp: ``None`` (the target is samples ``y``) or a target log-density ``[d] -> scalar``
        up to a constant (hashable; three times differentiable): the flow then moves toward
        that density with the Stein kernel of ``kernel`` (module docstring), ``reg`` in
        units of ``1 / length^4``, and ``y`` is ignored.

    Example:
      >>> import jax
      >>> from mmdflow import densities, fields, kernels
      >>> x = jax.random.normal(jax.random.key(0), (30, 2))
      >>> f = fields.SrMMDField(kernels.Gaussian(1.0), alpha=1.0, reg=0.5)
      >>> vel, _, aux = f.fit(x, None, x + 1.0, None, None, None, 0)
      >>> vel.at_x.shape
      (30, 2)
      >>> fd = fields.SrMMDField(kernels.Gaussian(1.0), logp=densities.Banana())
      >>> fd.target, fd.fit(x, None, None, None, None, None, 0)[0].at_x.shape
      ('density', (30, 2))
    """

    kernel: Kernel
    alpha: Any = ALPHA
    reg: Any = REG
    cg_tol: float = 1e-6
    cg_maxiter: int = 100
    sums: SumConfig = SumConfig()
    logp: Callable[[jax.Array], jax.Array] | None = None
    #: ``reg`` scales like ``bandwidth ** reg_power`` (``mmdflow flow --reg`` is in those units)
    reg_power: ClassVar[int] = -2
    #: ... and like ``bandwidth ** density_reg_power`` on a density (the Stein kernel's units)
    density_reg_power: ClassVar[int] = -4
    #: the targets the field takes: samples, or a density when ``logp`` is given
    targets: ClassVar[tuple[str, ...]] = ("samples", "density")

    @property
    def step_size(self) -> float:
        """The flow's default Euler step: :data:`STEP_FACTOR`, or :data:`DENSITY_STEP_FACTOR`
        on a density (for bandwidth 1; :meth:`defaults_for` scales them)."""
        return STEP_FACTOR if self.logp is None else DENSITY_STEP_FACTOR

    @property
    def target(self) -> str:
        """``"density"`` when ``logp`` is given, else ``"samples"``."""
        return "samples" if self.logp is None else "density"

    def __post_init__(self):
        cls = "SrMMDField"
        check_kernel(self.kernel)
        if not callable(self.alpha):
            check_real(cls, "alpha", self.alpha)
            a = concrete_array(self.alpha)
            if a is not None and (a.ndim != 0 or not 0.0 <= float(a) <= 1.0):
                raise ValueError(
                    f"{cls}: `alpha` must be a scalar in [0, 1] or a schedule; got {a.tolist()}."
                )
        check_hyper(cls, "reg", self.reg)
        check_hyper(cls, "cg_tol", self.cg_tol)
        check_int(cls, "cg_maxiter", self.cg_maxiter)
        check_sum_config(cls, self.sums)
        if self.logp is not None:
            check_logp_param(cls, self.logp)

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
        """Flow and field hyperparameters for data at length scale ``bandwidth``: a step of
        :data:`STEP_FACTOR` x ``bandwidth**2``, ``alpha`` :data:`ALPHA` and ``reg``
        :data:`REG` ``/ bandwidth**2``; toward a density ``logp``: a step of
        :data:`DENSITY_STEP_FACTOR` x ``bandwidth**4`` and ``reg`` :data:`DENSITY_REG`
        ``/ bandwidth**4``."""
        if logp is not None:
            return {
                "kernel": kernel,
                "step_size": DENSITY_STEP_FACTOR * bandwidth**4,
                "alpha": ALPHA,
                "reg": DENSITY_REG / bandwidth**4,
                "logp": logp,
            }
        return {
            "kernel": kernel,
            "step_size": STEP_FACTOR * bandwidth**2,
            "alpha": ALPHA,
            "reg": REG / bandwidth**2,
        }

    def init(self, x0: jax.Array, key: jax.Array, y: jax.Array | None = None) -> SrMMDState | None:
        """The state: CG's warm start ``[n, d]`` on a density, or when the target ``y`` is
        given (``flows.run`` and ``mmdflow flow`` give it); else ``None`` (every solve
        starts from zero). A bad ``logp`` fails here (ValueError)."""
        if self.logp is not None:
            score(self.logp, x0)
            return SrMMDState(jnp.zeros(x0.shape, x0.dtype))
        if y is None:
            return None
        return SrMMDState(jnp.zeros(x0.shape, jnp.result_type(x0.dtype, y.dtype)))

    def fit(self, x, wx, y, wy, extra, key, count) -> tuple[Velocity, Any, dict]:
        """The SrMMD witness fitted on particles ``x [n, d]`` and targets ``y [m, d]`` (or
        the density ``logp``; ``y`` and ``wy`` are then unused).

        Returns:
          ``(velocity, extra, aux)``, aux with ``critic`` (``lambda SrMMD = lambda <delta,
          h>``, the MMD^2 at ``alpha = 0``), ``mmd2_critic`` (the biased MMD^2; on a density
          ``KSD^2``), ``alpha``, ``reg`` and ``cg_iterations``.
        """
        x = check_points("x", x)
        k, sums = self.kernel, self.sums
        if self.logp is not None:  # the Stein kernel's RKHS, where mu_P = 0
            check_logp(self.logp, x, "SrMMDField")
            dtype = x.dtype
            a = normalized_weights("wx", wx, x.shape[0], "x", dtype)
            k = stein_kernel(k, self.logp, x.shape[1])

            def grad_delta(z):
                return -kernel_grad_matvec(k, z, x, a, sums=sums)

            mmd2 = jnp.dot(a, kernel_matvec(k, x, x, a, sums=sums))
        else:
            y = check_points("y", y, d=x.shape[1], other="x")
            dtype = jnp.result_type(x.dtype, y.dtype)
            a = normalized_weights("wx", wx, x.shape[0], "x", dtype)
            b = normalized_weights("wy", wy, y.shape[0], "y", dtype)

            def grad_delta(z):
                return witness_grad(z, x, y, k, wx=a, wy=b, sums=sums)

            wit_y = witness(y, x, y, k, wx=a, wy=b, sums=sums)
            wit_x = witness(x, x, y, k, wx=a, wy=b, sums=sums)
            mmd2 = jnp.dot(b, wit_y) - jnp.dot(a, wit_x)
        alpha = jnp.asarray(schedule_value(self.alpha, count), dtype)
        lam = jnp.asarray(schedule_value(self.reg, count), dtype)
        warm = extra is not None
        if warm and extra.c.shape != x.shape:
            raise ValueError(
                f"SrMMDField: the state was initialised for particles of shape "
                f"{tuple(extra.c.shape)} but `x` has shape {tuple(x.shape)}."
            )
        g = grad_delta(x)  # grad delta at the particles
        s = jnp.sqrt(alpha * a)[:, None]

        # a Stein kernel's feature Jacobians (log p derivatives) once, not per CG iteration
        hess = kernel_hessian_operator(k, x, x, sums=sums)

        def matvec(c):
            return s * hess(s * c) + lam * c

        rhs = s * g
        c0 = extra.c.astype(dtype) if warm else None
        c, it, _ = cg(matvec, rhs, tol=self.cg_tol, maxiter=self.cg_maxiter, x0=c0)
        if warm:
            extra = extra._replace(c=c.astype(extra.c.dtype))
        e = s * c
        at_x = g - hess(e)

        def fn(z):
            return grad_delta(z) - kernel_hessian_matvec(k, z, x, e, sums=sums)

        aux = {
            "critic": mmd2 - jnp.sum(rhs * c),
            "mmd2_critic": mmd2,
            "alpha": alpha,
            "reg": lam,
            "cg_iterations": it,
        }
        return Velocity(at_x, fn), extra, aux
