"""Flow state, schedules and the pieces shared by all steppers (also neural and sharded)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mmdflow._checks import check_points, check_real, concrete_array
from mmdflow.mmd import _weights


class FlowState(NamedTuple):
    """State of a particle flow.

    Attributes:
      x: ``[n, d]`` particles.
      wx: ``[n]`` particle weights (normalised).
      key: PRNG key.
      count: int32 step counter.
      extra: stepper-specific pytree (random features, critic parameters, ...).
    """

    x: jax.Array
    wx: jax.Array
    key: jax.Array
    count: jax.Array
    extra: Any = None


def schedule_value(v, count):
    """A hyperparameter that is a constant or a schedule ``count -> value``."""
    return v(count) if callable(v) else v


def _check_hyper(cls, name, v, allow_zero=False):
    if callable(v):
        return
    check_real(cls, name, v)
    a = concrete_array(v)
    if a is None:
        return
    bad = (a < 0).any() if allow_zero else (a <= 0).any()
    if bad or not np.isfinite(a).all():
        rel = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{cls}: `{name}` must be finite and {rel}; got {a.tolist()}.")


def _init_state(x0, key, wx, extra=None):
    x0 = check_points("x0", x0)
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        raise ValueError(f"`x0` must be floating; got {x0.dtype}.")
    a = _weights("wx", wx, x0.shape[0], "x0", x0.dtype)
    return FlowState(x=x0, wx=a, key=key, count=jnp.zeros((), jnp.int32), extra=extra)


def _kinetic(dx, a, step_size):
    """Weighted ``mean |dx|^2 / step_size``."""
    return jnp.dot(a, jnp.sum(dx * dx, axis=1)) / step_size


def _sobolev_move(state: FlowState, v, critic, eps, normalize: bool, max_move=None):
    """Particle displacement ``dx = eps v`` along a Sobolev critic's gradient ``v`` and its aux.

    ``critic`` provides ``discrepancy_sq`` and ``mmd2``; with ``normalize`` the critic is
    the unit-Sobolev-ball one (``v / sqrt(delta^T u)``); ``max_move`` (a value, not a
    schedule) caps each particle's displacement (:func:`_cap_rows`). Shared by the
    sharded stepper.
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


def _cap_rows(dx, cap):
    """``dx`` with every row longer than ``cap`` shortened to length ``cap``."""
    norm = jnp.sqrt(jnp.sum(dx * dx, axis=1, keepdims=True))
    scale = jnp.minimum(1.0, cap / jnp.maximum(norm, jnp.finfo(dx.dtype).tiny))
    return (dx * scale).astype(dx.dtype)
