"""The one particle flow: Euler steps along any velocity field."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmdflow._checks import check_hyper, check_points, concrete_array, normalized_weights
from mmdflow._mesh import _axis_size, _constrain, _pad_to
from mmdflow.fields import Velocity, VelocityField, schedule_value
from mmdflow.flows._state import FlowState, _cap_rows, _init_state, _kinetic


@functools.partial(jax.tree_util.register_dataclass, data_fields=["extra"], meta_fields=["n"])
@dataclasses.dataclass(frozen=True)
class MeshExtra:
    """``FlowState.extra`` of a flow on a mesh: the field's state and the number ``n`` of
    real particles (static; the rows after them are zero-weight padding)."""

    extra: Any
    n: int


def is_density_flow(stepper) -> bool:
    """Whether ``stepper``'s field moves particles toward a density (``target = "density"``,
    e.g. SVGD, KSD descent: no target samples) rather than toward samples ``y``."""
    return getattr(getattr(stepper, "field", None), "target", "samples") == "density"


def _is_zero(v) -> bool:
    """A hyperparameter that is a concrete, all-zero value (not a schedule)."""
    if callable(v):
        return False
    a = concrete_array(v)
    return a is not None and not np.any(a)


@dataclasses.dataclass(frozen=True)
class ParticleFlow:
    """Particles moved by explicit Euler steps along a velocity field.

    Each step fits ``field`` on the current particles and the target, then

        ``x <- x + step_size * v(x + noise_level * eps)``,  ``eps ~ N(0, I)``,

    with each particle's displacement capped at ``max_move``. Every hyperparameter is
    a constant or a schedule ``count -> value``.

    Protocol (what :func:`scan` and :func:`run` drive)::

        state = flow.init(x0, key)          # FlowState; the field's state in state.extra
        state, aux = flow.step(state, y)    # aux: dict of scalars

    ``aux`` always holds ``kinetic`` (weighted ``mean |dx|^2 / step_size``) and
    ``critic`` (the field's discrepancy estimate, NaN when it has none), plus the
    field's own entries.

    A density field (``field.target == "density"``: :class:`~mmdflow.fields.SVGDField`,
    :class:`~mmdflow.fields.KSDField`) holds its target, a log-density: its steps take
    ``y=None`` (target samples, if given, are ignored).

    Attributes:
      field: the velocity field (:mod:`mmdflow.fields`).
      step_size: ``> 0`` or a schedule; ``None`` takes the field's default.
      noise_level: ``>= 0`` or a schedule: the field is evaluated at the particles
        plus ``noise_level`` times standard normal noise (Arbel et al.'s noise
        injection; they decay it, e.g. halve it every few hundred steps).
      max_move: ``None`` or a cap ``> 0`` (or a schedule) on each particle's
        displacement per step, in the units of the data: a longer step is shortened to
        this length, its direction kept. A critic's gradient is largest where the
        particles are sparse and the target is not (the leading edge of a source far
        from the target), and an Euler step there overshoots: a few particles are flung
        far beyond the target, where every kernel term vanishes and they stay. A cap of
        a fraction of the kernel's length scale is inactive once the particles are close.
      mesh: ``None``, or a ``jax.sharding.Mesh`` to run on: the particles and targets
        are padded to a multiple of the ``axis`` size with zero-weight copies of their last
        row and sharded over it, and the field's kernel sums (its ``sums``, an
        :class:`~mmdflow.ops.SumConfig`) become collectives over the mesh (strategy from
        the field's ``sums``); noise is drawn for the real particles as on one device, so
        the run equals the one-device run up to summation order. The state stays padded:
        :meth:`particles` gives the ``[n, d]`` real particles.
      axis: the mesh axis the samples are split over.

    Example:
      >>> import jax
      >>> from mmdflow import fields, flows, kernels
      >>> flow = flows.ParticleFlow(fields.MMDField(kernels.Gaussian(1.0)), step_size=0.5)
      >>> x0 = jax.random.normal(jax.random.key(0), (100, 2))
      >>> state = flow.init(x0, jax.random.key(1))
      >>> state, aux = jax.jit(flow.step)(state, x0 + 1.0)
      >>> sorted(aux)
      ['critic', 'kinetic']
    """

    field: VelocityField
    step_size: Any = None
    noise_level: Any = 0.0
    max_move: Any = None
    mesh: Any = None
    axis: str = "data"

    def __post_init__(self):
        if not (hasattr(self.field, "init") and hasattr(self.field, "fit")):
            raise ValueError(
                f"ParticleFlow: `field` must be a velocity field (init and fit, see "
                f"mmdflow.fields); got {type(self.field).__name__}."
            )
        if self.step_size is None:
            object.__setattr__(self, "step_size", self.field.step_size)
        check_hyper("ParticleFlow", "step_size", self.step_size)
        check_hyper("ParticleFlow", "noise_level", self.noise_level, allow_zero=True)
        if self.max_move is not None:
            check_hyper("ParticleFlow", "max_move", self.max_move)
        if self.mesh is not None:
            _axis_size(self.mesh, self.axis)
            sums = getattr(self.field, "sums", None)
            if sums is not None:  # the field's sums run on the same mesh
                if sums.mesh is not None and (sums.mesh, sums.axis) != (self.mesh, self.axis):
                    raise ValueError("ParticleFlow: the field's `sums` run on another mesh.")
                sums = dataclasses.replace(sums, mesh=self.mesh, axis=self.axis)
                object.__setattr__(self, "field", dataclasses.replace(self.field, sums=sums))

    @property
    def kernel(self):
        """The field's kernel (what :func:`run` monitors MMD^2, or a density flow's KSD^2,
        with)."""
        return self.field.kernel

    def init(
        self, x0: jax.Array, key: jax.Array, wx: jax.Array | None = None, y: jax.Array | None = None
    ) -> FlowState:
        """The state at particles ``x0 [n, d]`` (weights ``wx [n]``, default uniform).

        ``y``, the ``[m, d]`` target when known at the start, lets a field prepare for it
        (DrMMD keeps CG's warm start); the steps must then use that target (``m`` rows).
        """
        x0 = check_points("x0", x0)
        if y is not None:
            y = check_points("y", y, d=x0.shape[1], other="x0")
        key, kf = jax.random.split(key)
        if self.mesh is None:
            return _init_state(x0, key, wx, self.field.init(x0, kf, y))
        size = _axis_size(self.mesh, self.axis)
        a = _pad_to(normalized_weights("wx", wx, x0.shape[0], "x0", x0.dtype), size, "constant")
        xp = self._shard(_pad_to(x0, size, "edge"))
        yp = None if y is None else _pad_to(y, size, "edge")
        extra = MeshExtra(self.field.init(xp, kf, yp), x0.shape[0])
        return _init_state(xp, key, self._shard(a), extra)

    def _shard(self, a):
        return _constrain(a, self.mesh, self.axis) if self.mesh is not None else a

    def particles(self, state: FlowState) -> jax.Array:
        """The ``[n, d]`` real particles of ``state`` (without a mesh: ``state.x``)."""
        return state.x if self.mesh is None else state.x[: state.extra.n]

    def velocity(
        self, state: FlowState, y: jax.Array | None = None, wy: jax.Array | None = None
    ) -> tuple[jax.Array, Velocity, FlowState, dict]:
        """The first half of :meth:`step`: the field fitted on the current particles.

        Returns:
          ``(v, velocity, state, aux)``: ``v [n, d]`` the velocity the particles take
          (at the noise-injected particles when ``noise_level`` is set), the fitted
          :class:`~mmdflow.fields.Velocity` (to move other points along, e.g. the
          pixels of colour transfer), the state with the field's new state and the next
          key (the particles not moved), and the field's aux.
        """
        samples = not is_density_flow(self)
        if not samples:  # the field holds its target density
            y, wy = None, None
        elif y is None:
            raise ValueError(
                f"ParticleFlow: `y` (target samples [m, d]) is required by "
                f"{type(self.field).__name__}; only density fields take y=None."
            )
        else:
            y = check_points("y", y, d=state.x.shape[1], other="x0")
        key, kf = jax.random.split(state.key)
        extra, n = state.extra, state.x.shape[0]
        if self.mesh is not None:
            extra, n = extra.extra, extra.n
            size = _axis_size(self.mesh, self.axis)  # state.x has a multiple of it rows
        if self.mesh is not None and samples:  # padded, sharded targets, normalised weights
            b = normalized_weights("wy", wy, y.shape[0], "y", state.x.dtype)
            y = self._shard(_pad_to(y.astype(state.x.dtype), size, "edge"))
            wy = self._shard(_pad_to(b, size, "constant"))
        vel, extra, aux = self.field.fit(state.x, state.wx, y, wy, extra, kf, state.count)
        if _is_zero(self.noise_level):
            v = vel.at_x if vel.at_x is not None else vel.fn(state.x)
        else:  # drawn for the n real particles, as on one device
            beta = schedule_value(self.noise_level, state.count)
            d = state.x.shape[1]
            eps = jax.random.normal(jax.random.fold_in(kf, 1), (n, d), state.x.dtype)
            if self.mesh is not None:
                eps = _pad_to(eps, size, "edge")
            v = vel.fn(state.x + beta * eps)
        if self.mesh is not None:
            extra = MeshExtra(extra, n)
        return v, vel, state._replace(key=key, extra=extra), aux

    def move(self, state: FlowState, v: jax.Array, aux: dict) -> tuple[FlowState, dict]:
        """The second half of :meth:`step`: the Euler move along ``v [n, d]``."""
        eps = schedule_value(self.step_size, state.count)
        dx = (eps * v).astype(state.x.dtype)
        if self.max_move is not None:
            dx = _cap_rows(dx, schedule_value(self.max_move, state.count))
        out = {"kinetic": _kinetic(dx, state.wx, eps)}
        out["critic"] = jnp.asarray(jnp.nan, state.x.dtype)
        out.update(aux)
        return state._replace(x=self._shard(state.x + dx), count=state.count + 1), out

    def step(
        self, state: FlowState, y: jax.Array | None = None, wy: jax.Array | None = None
    ) -> tuple[FlowState, dict]:
        """One step: fit the field, move the particles.

        Args:
          state: the current state.
          y: ``[m, d]`` target samples (``None`` for a density field, which ignores them).
          wy: optional ``[m]`` target weights.

        Returns:
          ``(state, aux)``.
        """
        v, _, state, aux = self.velocity(state, y, wy)
        return self.move(state, v, aux)
