"""The KALE flow's field: the KL approximate lower-bound estimator's witness (Glaser, Arbel &
Gretton, NeurIPS 2021), its dual solved by Newton's method with CG inner solves on kernel
sums."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from mmdflow._checks import check_hyper, check_int, check_points, normalized_weights
from mmdflow._linalg import cg
from mmdflow.fields._base import Velocity, schedule_value
from mmdflow.fields._mmd import STEP_FACTOR as MMD_STEP_FACTOR
from mmdflow.kernels import HIGHEST, Kernel
from mmdflow.ops import (
    SumConfig,
    check_kernel,
    check_sum_config,
    kernel_grad_matvec,
    kernel_matvec,
)

#: :meth:`KALEField.defaults_for`: ``lambda``. Measured (``benchmarks/kale_defaults.py``, the
#: ``mmdflow flow`` setting, 500 steps; final MMD^2 reduction gaussian -> 8gaussians /
#: moons -> rings): lambda = 3 at the MMD flow's step 10,800x / 140,000x at 1000 points and
#: 2,930x / 46,300x at 300 (the MMD flow: 10,900x / 76,300x and 2,640x / 37,900x);
#: lambda = 1 at that step 11,200x / 280,000x at 1000 points but oscillates at 300 (132x on
#: 8gaussians; 1,880x at half the step); lambda = 10 ~ the MMD flow (11,000x / 88,300x);
#: lambda = 0.1 and 0.01 need smaller steps and are slower (at 0.01 x bandwidth^2: 713x /
#: 18,900x and 2x / 32x).
REG = 3.0
#: :meth:`KALEField.defaults_for`: the step is this times ``bandwidth**2`` (the MMD flow's:
#: the velocity tends to the MMD flow's as ``lambda -> inf``; measured with :data:`REG`).
STEP_FACTOR = MMD_STEP_FACTOR
_dot = functools.partial(jnp.dot, precision=HIGHEST)
#: backtracking factor and number of trial steps of the Newton line search
_BACKTRACK, _NUM_TRIALS = 0.5, 30
#: Armijo's sufficient-decrease constant and the fraction-to-the-boundary of ``c > 0``
_ARMIJO, _TO_BOUNDARY = 1e-4, 0.99


class KALEState(NamedTuple):
    """The state of a :class:`KALEField` initialised with its target.

    Attributes:
      u: ``[m]`` the last step's witness at the targets, ``u_j = h(y_j) = log(c_j / b_j)``
        (Newton's warm start: ``c = b exp(u)``; zero before the first step, i.e. ``c = b``,
        the ``lambda -> inf`` solution).
    """

    u: jax.Array


@dataclasses.dataclass(frozen=True)
class KALEField:
    """The KALE flow's velocity: ``-(1 + lambda) grad h`` for the KALE witness ``h``.

    For the particles ``P = sum_i a_i delta_{x_i}`` (moving) and the target
    ``Q = sum_j b_j delta_{y_j}``,

        ``KALE(P || Q) = (1 + lambda) max_h {1 + int h dP - int e^h dQ - lambda/2 |h|_H^2}``,

    the regularized Fenchel dual of ``KL(P || Q)`` over the RKHS ``H``: it tends to the KL
    as ``lambda -> 0`` and to ``MMD^2 / 2`` as ``lambda -> inf``, and is finite for
    disjoint supports. The maximiser is

        ``h = (mu_P - sum_j c_j k(., y_j)) / lambda``,  ``c_j = b_j exp(h(y_j))``,

    and ``c >= 0`` minimises the (strongly convex) dual

        ``D(c) = sum_j (c_j log(c_j / b_j) - c_j) + |mu_P - sum_j c_j k(., y_j)|_H^2 / (2 lambda)``,

    with ``KALE = (1 + lambda) (1 + D(c))``. ``D`` is minimised by Newton's method (the
    paper's solver), each Newton system ``(diag(1/c) + K_YY / lambda) delta = -grad D``
    solved by CG on kernel sums in the symmetric scaling ``S = diag(sqrt(c))``
    (``I + S K_YY S / lambda``, never a dense matrix), with a backtracking line search that
    keeps ``c > 0`` (the quadratic term along the Newton direction costs one kernel sum per
    iteration, the trial steps none). Targets of zero weight (padding on a mesh) have
    ``c_j = 0`` throughout and drop out.

    The particles move along ``-grad`` of the first variation ``(1 + lambda) h``:

        ``v(z) = (1 + lambda) / lambda * (sum_j c_j grad k(z, y_j) - sum_i a_i grad k(z, x_i))``,

    which tends to the MMD flow's witness gradient (:class:`~mmdflow.fields.MMDField`) as
    ``lambda -> inf`` (``c -> b``), without rescaling.

    Attributes:
      kernel: the kernel.
      reg: ``lambda > 0`` or a schedule ``count -> value``.
      newton_tol: Newton stops when half the squared Newton decrement
        ``grad D^T H^-1 grad D / 2`` (an estimate of ``D(c) - min D``) is below it.
      newton_maxiter: at most this many Newton steps per flow step.
      cg_tol, cg_maxiter: CG stopping rule (relative residual) of each Newton system.
      sums: how the kernel sums run (:class:`mmdflow.ops.SumConfig`; on a mesh,
        collectives).
    """

    kernel: Kernel
    reg: Any = REG
    newton_tol: float = 1e-10
    newton_maxiter: int = 30
    cg_tol: float = 1e-6
    cg_maxiter: int = 100
    sums: SumConfig = SumConfig()
    #: the flow's default Euler step
    step_size: ClassVar[float] = 1.0
    #: ``reg`` is dimensionless (``mmdflow flow --reg`` as is)
    reg_power: ClassVar[int] = 0

    def __post_init__(self):
        cls = "KALEField"
        check_kernel(self.kernel)
        check_hyper(cls, "reg", self.reg)
        check_hyper(cls, "newton_tol", self.newton_tol)
        check_int(cls, "newton_maxiter", self.newton_maxiter)
        check_hyper(cls, "cg_tol", self.cg_tol)
        check_int(cls, "cg_maxiter", self.cg_maxiter)
        check_sum_config(cls, self.sums)

    @classmethod
    def defaults_for(
        cls, kernel: Kernel, bandwidth: float, n: int, d: int, key: jax.Array
    ) -> dict[str, Any]:
        """Flow and field hyperparameters for data at length scale ``bandwidth``: a step of
        :data:`STEP_FACTOR` x ``bandwidth**2`` and ``reg`` :data:`REG`."""
        return {"kernel": kernel, "step_size": STEP_FACTOR * bandwidth**2, "reg": REG}

    def init(self, x0: jax.Array, key: jax.Array, y: jax.Array | None = None) -> KALEState | None:
        """The state: Newton's warm start when the target ``y [m, d]`` is given (``flows.run``
        and ``mmdflow flow`` give it), else ``None`` (every step starts from ``c = b``)."""
        if y is None:
            return None
        return KALEState(jnp.zeros((y.shape[0],), jnp.result_type(x0.dtype, y.dtype)))

    def fit(self, x, wx, y, wy, extra, key, count) -> tuple[Velocity, Any, dict]:
        """The KALE witness fitted on particles ``x [n, d]`` and targets ``y [m, d]``.

        Returns:
          ``(velocity, extra, aux)``, aux with ``critic`` (the KALE value), ``reg`` (this
          step's ``lambda``), ``newton_iterations`` (Newton steps taken: 0 when the warm start
          already meets ``newton_tol``) and ``cg_iterations`` (summed over the Newton
          systems, the last one included, whose decrement stops the solve).
        """
        y = check_points("y", y, d=x.shape[1], other="x")
        n, m = x.shape[0], y.shape[0]
        dtype = jnp.result_type(x.dtype, y.dtype)
        x, y = x.astype(dtype), y.astype(dtype)
        a = normalized_weights("wx", wx, n, "x", dtype)
        b = normalized_weights("wy", wy, m, "y", dtype)
        lam = jnp.asarray(schedule_value(self.reg, count), dtype)
        warm = extra is not None
        if warm and extra.u.shape != (m,):
            raise ValueError(
                f"KALEField: the state was initialised for {extra.u.shape[0]} targets but "
                f"`y` has shape {tuple(y.shape)}."
            )
        k, sums = self.kernel, self.sums
        mu = kernel_matvec(k, jnp.concatenate([y, x]), x, a, sums=sums)  # mu_P at Y and X
        mu_y, mu_x = mu[:m], mu[m:]
        pos = b > 0
        b_safe = jnp.where(pos, b, 1.0)
        tiny = jnp.finfo(dtype).tiny

        def log_ratio(c):  # log(c / b) on the weighted targets, 0 on the padding
            return jnp.where(pos, jnp.log(jnp.maximum(c, tiny) / b_safe), 0.0)

        def entropy(c, lr):  # sum_j c_j log(c_j / b_j) - c_j
            return jnp.sum(jnp.where(pos, c * lr - c, 0.0))

        def kyy(w):
            return kernel_matvec(k, y, y, w, sums=sums)

        def newton_step(state):
            c, kc, it, cg_its, _ = state
            g = jnp.where(pos, log_ratio(c) + (kc - mu_y) / lam, 0.0)  # grad D
            s = jnp.sqrt(c)  # H = diag(1/c) + K/lam = S^-1 (I + S K S / lam) S^-1
            w, cg_it, _ = cg(
                lambda v: v + s * kyy(s * v) / lam,
                s * g,
                tol=self.cg_tol,
                maxiter=self.cg_maxiter,
            )
            delta = -s * w
            dec = _dot(s * g, w)  # squared Newton decrement g^T H^-1 g
            converged = ~(dec / 2 > self.newton_tol)

            def move(_):
                kd = kyy(delta)
                # the largest step keeping c > 0, then halvings of it
                ratio = jnp.where(delta < 0, -c / jnp.where(delta < 0, delta, -1.0), jnp.inf)
                t_max = jnp.minimum(1.0, _TO_BOUNDARY * jnp.min(ratio))
                ts = t_max * _BACKTRACK ** jnp.arange(_NUM_TRIALS, dtype=dtype)
                c_t = c[None, :] + ts[:, None] * delta[None, :]
                lr_t = jax.vmap(log_ratio)(c_t)
                ent_t = jax.vmap(entropy)(c_t, lr_t)
                lin, curv = _dot(delta, kc - mu_y), _dot(delta, kd)
                # D(c + t delta) - D(c), and its derivative in t (robust where D's
                # differences are round-off: a trial short of the line minimum decreases D)
                change = ent_t - entropy(c, log_ratio(c)) + ts * (lin + ts / 2 * curv) / lam
                deriv = _dot(lr_t, delta) + (lin + ts * curv) / lam
                ok = (change <= -_ARMIJO * ts * dec) | (deriv <= 0)
                first = jnp.argmax(ok)
                t = jnp.where(jnp.any(ok), ts[first], 0.0)
                c_new = jnp.where(pos, jnp.maximum(c + t * delta, 0.0), 0.0)
                return c_new, kc + t * kd, t > 0

            c, kc, moved = jax.lax.cond(
                converged, lambda _: (c, kc, jnp.asarray(False)), move, None
            )
            return c, kc, it + moved.astype(it.dtype), cg_its + cg_it, ~moved

        def keep_going(state):
            *_, it, _, done = state
            return (~done) & (it < self.newton_maxiter)

        u0 = extra.u.astype(dtype) if warm else jnp.zeros((m,), dtype)
        c0 = jnp.where(pos, b * jnp.exp(u0), 0.0)
        zero = jnp.zeros((), jnp.int32)
        init = (c0, kyy(c0), zero, zero, jnp.asarray(False))
        c, kc, newton_its, cg_its, _ = jax.lax.while_loop(keep_going, newton_step, init)
        if warm:
            extra = extra._replace(u=log_ratio(c).astype(extra.u.dtype))

        # KALE = (1 + lam) (1 + D(c)); 1 + sum_j (c log(c/b) - c) = sum_j (c log(c/b) - c + b)
        bregman = jnp.sum(jnp.where(pos, c * log_ratio(c) - c + b, 0.0))
        quad = jnp.maximum(_dot(a, mu_x) - 2 * _dot(c, mu_y) + _dot(c, kc), 0.0)
        kale = (1 + lam) * (bregman + quad / (2 * lam))
        pts = jnp.concatenate([y, x])
        coef = jnp.concatenate([c, -a]) * ((1 + lam) / lam)

        def fn(z):
            return kernel_grad_matvec(k, z, pts, coef.astype(jnp.result_type(z, dtype)), sums=sums)

        aux = {
            "critic": kale,
            "reg": lam,
            "newton_iterations": newton_its,
            "cg_iterations": cg_its,
        }
        return Velocity(None, fn), extra, aux
