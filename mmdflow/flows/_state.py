"""The flow state and the pieces shared by the particle flow and the sharded steppers."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mmdflow._checks import check_points, normalized_weights


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


def _init_state(x0, key, wx, extra=None):
    x0 = check_points("x0", x0)
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        raise ValueError(f"`x0` must be floating; got {x0.dtype}.")
    a = normalized_weights("wx", wx, x0.shape[0], "x0", x0.dtype)
    return FlowState(x=x0, wx=a, key=key, count=jnp.zeros((), jnp.int32), extra=extra)


def _kinetic(dx, a, step_size):
    """Weighted ``mean |dx|^2 / step_size``."""
    return jnp.dot(a, jnp.sum(dx * dx, axis=1)) / step_size


def _cap_rows(dx, cap):
    """``dx`` with every row longer than ``cap`` shortened to length ``cap``."""
    norm = jnp.sqrt(jnp.sum(dx * dx, axis=1, keepdims=True))
    scale = jnp.minimum(1.0, cap / jnp.maximum(norm, jnp.finfo(dx.dtype).tiny))
    return (dx * scale).astype(dx.dtype)
