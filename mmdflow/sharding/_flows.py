"""Flow steppers on sharded particles."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from mmdflow._checks import check_points
from mmdflow.fields import MMDField, SobolevField, schedule_value
from mmdflow.flows import ParticleFlow
from mmdflow.flows._particle import _is_zero
from mmdflow.flows._state import FlowState, _cap_rows, _kinetic
from mmdflow.kernels import Kernel
from mmdflow.mmd import _weights
from mmdflow.ops import (
    DEFAULT_BLOCK_SIZE,
)
from mmdflow.sharding._mesh import DEFAULT_AXIS, _axis_size, _check_common, _constrain, _pad_to
from mmdflow.sharding._mmd import _witness_padded
from mmdflow.sharding._sobolev import _exact_critic_padded


# ---------------------------------------------------------------- flows
def _sobolev_move(state: FlowState, v, critic, eps, normalize: bool, max_move=None):
    """Particle displacement ``dx = eps v`` along a Sobolev critic's gradient ``v`` and its aux.

    ``critic`` provides ``discrepancy_sq`` and ``mmd2``; with ``normalize`` the critic is
    the unit-Sobolev-ball one (``v / sqrt(delta^T u)``); ``max_move`` (a value, not a
    schedule) caps each particle's displacement (:func:`_cap_rows`).
    """
    disc2 = critic.discrepancy_sq
    if normalize:
        v = v / jnp.sqrt(jnp.maximum(disc2, jnp.finfo(v.dtype).tiny))
    dx = (eps * v).astype(state.x.dtype)
    if max_move is not None:
        dx = _cap_rows(dx, max_move)
    aux = {
        "kinetic": _kinetic(dx, state.wx, eps),
        "critic": jnp.sqrt(jnp.maximum(disc2, 0.0)),
        "mmd2_critic": critic.mmd2,
    }
    return dx, aux


@functools.partial(jax.tree_util.register_dataclass, data_fields=[], meta_fields=["n"])
@dataclasses.dataclass(frozen=True)
class _RealCount:
    """Static number of real particles, carried in ``FlowState.extra``."""

    n: int


def _pad_shard_init(x0, key, wx, mesh, axis):
    """Padded, sharded initial particles and weights (zero on the padding rows)."""
    x0 = check_points("x0", x0)
    size = _axis_size(mesh, axis)
    n = x0.shape[0]
    a = _pad_to(_weights("wx", wx, n, "x0", x0.dtype), size, "constant")
    xp = _constrain(_pad_to(x0, size, "edge"), mesh, axis)
    a = _constrain(a, mesh, axis)
    return FlowState(x=xp, wx=a, key=key, count=jnp.zeros((), jnp.int32), extra=_RealCount(n))


def _pad_target(y, wy, d, dtype, mesh, axis):
    """Padded, sharded targets and normalised weights (zero on the padding rows)."""
    size = _axis_size(mesh, axis)
    y = check_points("y", y, d=d)
    b = _pad_to(_weights("wy", wy, y.shape[0], "y", dtype), size, "constant")
    yp = _pad_to(y.astype(dtype), size, "edge")
    return _constrain(yp, mesh, axis), _constrain(b, mesh, axis)


class _PaddedShardedFlow:
    """``init`` / ``particles`` of the sharded steppers: padded, sharded ``FlowState`` s.

    Subclasses are frozen dataclasses with ``kernel``, ``mesh``, ``strategy``,
    ``block_size`` and ``axis`` fields.
    """

    def _check_sharding(self):
        _, bs = _check_common(self.kernel, self.mesh, self.axis, self.strategy, self.block_size)
        object.__setattr__(self, "block_size", bs)

    def init(self, x0: jax.Array, key: jax.Array, wx: jax.Array | None = None) -> FlowState:
        """Pads and shards ``x0`` (``[n, d]``); ``wx`` are the real particles' weights.

        The key advances as :meth:`mmdflow.flows.ParticleFlow.init` advances it.
        """
        return _pad_shard_init(x0, jax.random.split(key)[0], wx, self.mesh, self.axis)

    def particles(self, state: FlowState) -> jax.Array:
        """The ``[n, d]`` real particles of ``state``."""
        return state.x[: state.extra.n]


@dataclasses.dataclass(frozen=True)
class ShardedMMDFlow(_PaddedShardedFlow):
    """the ``"mmd"`` flow (:data:`mmdflow.flows.FLOWS`) with particles and targets sharded over a mesh axis.

    Same ``init`` / ``step`` protocol, so :func:`mmdflow.flows.scan` and
    :func:`mmdflow.flows.run` drive it unchanged. The state holds the particles
    padded to a multiple of the axis size (``FlowState.x`` ``[N, d]``, sharded
    ``P(axis)``) with zero weight on the padding rows (``FlowState.wx``), so every
    weighted quantity (MMD^2 recorded by ``run``, kinetic energy) is that of the
    ``n`` real particles. The injected noise is drawn for the ``n`` real particles
    exactly as the ``"mmd"`` flow draws it, so the real particles
    follow the unsharded trajectory (up to summation order). Use
    :meth:`particles` for the ``[n, d]`` real particles (``run``'s
    ``record_trajectory`` and final state hold the padded ``[N, d]`` arrays; the
    padding rows shadow the last real particle). The MMD^2 that ``run`` records
    uses the unsharded :func:`mmdflow.mmd2` on the sharded state (``jit``
    partitions it); the step itself uses the sharded witness gradient.

    Example:
      >>> import jax
      >>> from mmdflow import flows, kernels, sharding
      >>> s = sharding.ShardedMMDFlow(kernels.Gaussian(1.0), sharding.make_mesh(), step_size=0.5)
      >>> x0 = jax.random.normal(jax.random.key(0), (101, 2))
      >>> state, hist = flows.run(s, x0, x0 + 2.0, num_steps=4, key=jax.random.key(1), record_every=2)
      >>> s.particles(state).shape
      (101, 2)

    Attributes:
      kernel: the kernel.
      mesh: the device mesh.
      step_size: ``> 0`` or a schedule.
      noise_level: ``>= 0`` or a schedule.
      strategy: ``"allgather"`` or ``"ring"``.
      block_size: tile size of the local blocked sums.
      axis: mesh axis name.
    """

    kernel: Kernel
    mesh: Mesh
    step_size: Any = 1.0
    noise_level: Any = 0.0
    strategy: str = "allgather"
    block_size: int | tuple[int, int] = DEFAULT_BLOCK_SIZE
    axis: str = DEFAULT_AXIS

    def __post_init__(self):
        # reuse the validation of the hyperparameters
        ParticleFlow(MMDField(self.kernel), step_size=self.step_size, noise_level=self.noise_level)
        self._check_sharding()

    def step(self, state: FlowState, y: jax.Array, wy: jax.Array | None = None):
        """One step ``x <- x + step_size * witness_grad(x + noise_level * eps)``."""
        size = _axis_size(self.mesh, self.axis)
        n, d = state.extra.n, state.x.shape[1]
        dtype = state.x.dtype
        yp, b = _pad_target(y, wy, d, dtype, self.mesh, self.axis)
        eps = schedule_value(self.step_size, state.count)
        beta = schedule_value(self.noise_level, state.count)
        key, kn = jax.random.split(state.key)  # drawn as ParticleFlow draws it
        noise = jax.random.normal(jax.random.fold_in(kn, 1), (n, d), dtype)
        noise = _pad_to(noise, size, "edge")
        z = state.x + beta * noise
        v = _witness_padded(
            "grad",
            self.kernel,
            z,
            state.x,
            yp,
            state.wx,
            b,
            self.mesh,
            self.axis,
            self.strategy,
            self.block_size,
        )
        dx = eps * v
        aux = {"kinetic": _kinetic(dx, state.wx, eps), "critic": jnp.asarray(jnp.nan, v.dtype)}
        x = _constrain(state.x + dx, self.mesh, self.axis)
        return state._replace(x=x, key=key, count=state.count + 1), aux


@dataclasses.dataclass(frozen=True)
class ShardedKernelSobolevDescent(_PaddedShardedFlow):
    """The exact-kernel ``"sobolev"`` flow with sharded particles and targets.

    Each step solves the exact critic by matrix-free CG
    (:func:`sharded_exact_critic`: sharded cross-Hessian sums, reductions over the
    sharded coefficients) and moves the particles along its gradient; the state is
    padded and sharded as in :class:`ShardedMMDFlow` (use :meth:`particles`). Equal to
    ``flows.make("sobolev", kernel, step_size=..., reg=..., solver="cg", ...)``
    on one device up to summation order. (The random-feature version needs no
    wrapper beyond :class:`ShardedStepper`: its sums over particles are GEMMs.)

    Attributes:
      kernel: a twice-differentiable kernel.
      mesh: the device mesh.
      step_size: ``> 0`` or a schedule.
      reg: ridge ``> 0`` or a schedule.
      normalize: use the unit-Sobolev-ball critic ``u / sqrt(delta^T u)``.
      max_move: ``None`` or a cap ``> 0`` (or a schedule) on each particle's move per
        step, as in :class:`~mmdflow.flows.ParticleFlow`.
      cg_tol, cg_maxiter: CG stopping rule.
      strategy: ``"allgather"`` or ``"ring"``.
      block_size: tile size of the local blocked sums.
      axis: mesh axis name.
    """

    kernel: Kernel
    mesh: Mesh
    step_size: Any = 1.0
    reg: Any = 0.1
    normalize: bool = False
    max_move: Any = None
    cg_tol: float = 1e-6
    cg_maxiter: int = 200
    strategy: str = "allgather"
    block_size: int | tuple[int, int] = DEFAULT_BLOCK_SIZE
    axis: str = DEFAULT_AXIS

    def __post_init__(self):
        field = SobolevField(
            self.kernel, reg=self.reg, cg_tol=self.cg_tol, cg_maxiter=self.cg_maxiter
        )
        ParticleFlow(field, step_size=self.step_size, max_move=self.max_move)
        self._check_sharding()

    def critic(self, state: FlowState, y: jax.Array, wy: jax.Array | None = None):
        """The exact critic on the padded, sharded particles (an ``ExactCritic``)."""
        yp, b = _pad_target(y, wy, state.x.shape[1], state.x.dtype, self.mesh, self.axis)
        reg = schedule_value(self.reg, state.count)
        opts = (self.mesh, self.axis, self.strategy, self.block_size)
        return _exact_critic_padded(
            self.kernel, state.x, yp, state.wx, b, reg, *opts, self.cg_tol, self.cg_maxiter
        )

    def step(self, state: FlowState, y: jax.Array, wy: jax.Array | None = None):
        """One step ``x <- x + step_size * grad f(x)`` (``f`` the exact Sobolev critic)."""
        eps = schedule_value(self.step_size, state.count)
        c = self.critic(state, y, wy)
        cap = None if self.max_move is None else schedule_value(self.max_move, state.count)
        dx, aux = _sobolev_move(state, c.grad_at_x, c, eps, self.normalize, cap)
        x = _constrain(state.x + dx, self.mesh, self.axis)
        return state._replace(x=x, count=state.count + 1), aux


@dataclasses.dataclass(frozen=True)
class ShardedStepper:
    """Runs a weighted-sum stepper on particles padded and sharded over a mesh axis.

    For steppers whose step is built from weighted sums over the particles and the
    targets, such as the random-feature ``"sobolev"`` flow
    (GEMMs, which ``jit`` partitions when the inputs are sharded): ``init`` pads
    ``x0`` to a multiple of the axis size with zero-weight copies of its last row and
    shards it; ``step`` pads and shards the targets the same way and calls
    ``base.step``. Any ``n`` works, and the real particles follow the unsharded
    trajectory up to summation order. The state's ``extra`` is
    ``(base extra, real count)``; :meth:`particles` gives the ``[n, d]`` real ones.
    (Not for the ``"mmd"`` flow, whose noise is drawn per row: use
    :class:`ShardedMMDFlow`.)

    Attributes:
      base: the stepper.
      mesh: the device mesh.
      axis: mesh axis name.
    """

    base: Any
    mesh: Mesh
    axis: str = DEFAULT_AXIS

    def __post_init__(self):
        _axis_size(self.mesh, self.axis)
        if not _is_zero(getattr(self.base, "noise_level", 0.0)):
            raise ValueError(
                "`base` injects noise (drawn per row, so padding would change it): use "
                "ShardedMMDFlow for the noisy MMD flow."
            )

    @property
    def kernel(self):
        return self.base.kernel

    @property
    def step_size(self):
        return self.base.step_size

    def init(self, x0: jax.Array, key: jax.Array, wx: jax.Array | None = None) -> FlowState:
        """Pads and shards ``x0`` (``[n, d]``), then ``base.init``."""
        st = _pad_shard_init(x0, key, wx, self.mesh, self.axis)
        inner = self.base.init(st.x, key, st.wx)
        x = _constrain(inner.x, self.mesh, self.axis)
        return inner._replace(x=x, extra=(inner.extra, st.extra))

    def particles(self, state: FlowState) -> jax.Array:
        """The ``[n, d]`` real particles of ``state``."""
        return state.x[: state.extra[1].n]

    def step(self, state: FlowState, y: jax.Array, wy: jax.Array | None = None):
        """``base.step`` on the padded, sharded particles and targets."""
        yp, b = _pad_target(y, wy, state.x.shape[1], state.x.dtype, self.mesh, self.axis)
        new, aux = self.base.step(state._replace(extra=state.extra[0]), yp, b)
        x = _constrain(new.x, self.mesh, self.axis)
        return new._replace(x=x, extra=(new.extra, state.extra[1])), aux
