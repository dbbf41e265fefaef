"""The velocity-field interface, schedules and hyperparameter checks shared by every field."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax

from mmdflow.ops import check_kernel, check_sum_config


class Velocity(NamedTuple):
    """A fitted velocity field: what a field's ``fit`` returns for one step.

    Attributes:
      at_x: ``[n, d]`` velocity at the particles the field was fitted on, or ``None``
        when the field has no cheaper way to get it than ``fn(x)``.
      fn: ``[k, d] -> [k, d]``, the velocity at any points (noise-injected particles,
        or passengers such as the pixels of colour transfer).
    """

    at_x: jax.Array | None
    fn: Callable[[jax.Array], jax.Array]


class VelocityField(Protocol):
    """What :class:`mmdflow.flows.ParticleFlow` moves particles along.

    A field is a frozen dataclass of hyperparameters (hashable: it is part of the jit
    cache key) with:

    * ``kernel``: the kernel the flow's MMD^2 is monitored with;
    * ``step_size``: the class's default Euler step (used when the flow gives none);
    * ``init(x0, key, y=None) -> extra``: the field's state (a pytree, ``None`` when
      stateless); ``y`` is the target when known at the start (e.g. for a warm start);
    * ``fit(x, wx, y, wy, extra, key, count) -> (Velocity, extra, aux)``: the field fitted
      on particles ``x [n, d]`` (normalised weights ``wx [n]``) and targets ``y [m, d]``
      (weights ``wy [m]`` or ``None``), with a fresh PRNG ``key`` and the step ``count``
      (for schedules); ``aux`` is a dict of scalars (``critic`` by convention: the
      discrepancy estimate, or absent).

    A field that moves particles toward a density rather than samples (SVGD, KSD descent)
    holds its target log-density ``logp`` and has the attribute ``target = "density"``:
    its flow's steps and ``fit`` get ``y=None``, and :func:`mmdflow.flows.run` records
    KSD^2 instead of MMD^2; its ``defaults_for`` takes ``logp=``. Sample fields omit it. A
    field that takes either (SrMMD) lists both in the class attribute ``targets`` and its
    instances answer ``target`` by whether they hold a ``logp``
    (:func:`mmdflow.flows.targets`).
    """

    kernel: Any
    step_size: Any

    def init(self, x0: jax.Array, key: jax.Array, y: jax.Array | None = None) -> Any: ...

    def fit(
        self,
        x: jax.Array,
        wx: jax.Array,
        y: jax.Array,
        wy: jax.Array | None,
        extra: Any,
        key: jax.Array,
        count: jax.Array,
    ) -> tuple[Velocity, Any, dict[str, jax.Array]]: ...


def schedule_value(v, count):
    """A hyperparameter that is a constant or a schedule ``count -> value``."""
    return v(count) if callable(v) else v


def check_density_field(owner: str, logp, kernel, sums) -> None:
    """The shared checks of the density fields' hyperparameters."""
    check_logp_param(owner, logp)
    check_kernel(kernel)
    check_sum_config(owner, sums)


def check_logp_param(owner: str, logp) -> None:
    """A field's ``logp``: callable and hashable (the values are checked by its ``init``)."""
    if not callable(logp):
        raise ValueError(
            f"{owner}: `logp` must be a log-density [d] -> scalar (a function or one of "
            f"mmdflow.densities); got {logp!r}."
        )
    try:
        hash(logp)
    except TypeError as e:
        raise ValueError(
            f"{owner}: `logp` must be hashable (it is part of the jit cache key); got "
            f"{type(logp).__name__}."
        ) from e
