"""Trace-time input validation shared by every layer.

All checks here look only at static information (shapes, dtypes) or at
*concrete* values; traced values are never inspected, so every function is
safe to call inside ``jax.jit``. Errors are ``ValueError`` naming the argument
and its shape.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np


def shape_of(a) -> tuple:
    return tuple(np.shape(a))


def check_points(
    name: str, x, *, d: int | None = None, other: str = "x", min_n: int = 1, to_jax: bool = True
):
    """Validates a point set ``[n, d]`` and returns it as a floating JAX array.

    With ``to_jax=False`` the validated input is returned as given (NumPy callers).
    """
    if not hasattr(x, "shape"):
        x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(
            f"`{name}` must be a 2-D array of points with shape [n, d]; got shape {shape_of(x)}."
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"`{name}` must have a floating dtype (float32/float64/bfloat16); got {x.dtype} "
            f"with shape {shape_of(x)}."
        )
    if x.shape[0] < min_n:
        what = "empty" if x.shape[0] == 0 else f"too small (needs at least {min_n} points)"
        raise ValueError(f"`{name}` is {what}: shape {shape_of(x)}.")
    if x.shape[1] == 0:
        raise ValueError(f"`{name}` has zero dimensions: shape {shape_of(x)}.")
    if d is not None and x.shape[1] != d:
        raise ValueError(
            f"`{name}` has dimension d={x.shape[1]} but `{other}` has d={d}: "
            f"shapes {shape_of(x)} vs [*, {d}]."
        )
    return jnp.asarray(x) if to_jax else x


def check_weights(name: str, w, n: int, points: str):
    """Validates weights ``[n]`` or ``[n, k]`` for a point set of size ``n``."""
    if not hasattr(w, "shape"):
        w = np.asarray(w)
    if w.ndim not in (1, 2) or w.shape[0] != n:
        raise ValueError(
            f"`{name}` must have shape [{n}] or [{n}, k] to match `{points}` with {n} points; "
            f"got shape {shape_of(w)}."
        )
    if not (jnp.issubdtype(w.dtype, jnp.floating) or jnp.issubdtype(w.dtype, jnp.integer)):
        raise ValueError(f"`{name}` must be numeric; got dtype {w.dtype}.")
    return jnp.asarray(w)


def check_probability_weights(name: str, w, points: str) -> None:
    """Checks *concrete* relative masses ``w``: finite, ``>= 0`` and not all zero.

    Traced values (inside ``jax.jit`` / ``grad`` / ``vmap``) cannot be inspected and are
    not checked: bad traced weights give NaN (all zero) or a signed measure (negative).
    """
    a = concrete_array(w)
    if a is None:
        return
    bad = np.flatnonzero(~np.isfinite(a).reshape(-1))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"`{name}` (weights of `{points}`) must be finite; got {a.reshape(-1)[i]} at "
            f"flat index {i} ({bad.size} non-finite entries, shape {a.shape})."
        )
    neg = np.flatnonzero(a.reshape(-1) < 0)
    if neg.size:
        i = int(neg[0])
        raise ValueError(
            f"`{name}` (weights of `{points}`) must be >= 0; got {a.reshape(-1)[i]} at flat "
            f"index {i} ({neg.size} negative entries, shape {a.shape})."
        )
    if not np.sum(a, dtype=np.float64) > 0:
        raise ValueError(
            f"`{name}` (weights of `{points}`) must not be all zero (they are normalised to "
            f"sum to 1); got shape {a.shape}."
        )


def check_sum_inputs(x, y, w):
    """Validates a kernel sum's ``x [n, d]``, ``y [m, d]`` and weights ``w [m]`` / ``[m, k]``.

    Returns ``(x, y, w, dtype)`` uncast, with ``dtype`` the promoted floating dtype of the
    points (and of ``w`` when it is floating).
    """
    x = check_points("x", x)
    y = check_points("y", y, d=x.shape[1])
    w = check_weights("w", w, y.shape[0], "y")
    dtype = jnp.result_type(x.dtype, y.dtype)
    if jnp.issubdtype(w.dtype, jnp.floating):
        dtype = jnp.result_type(dtype, w.dtype)
    return x, y, w, dtype


def check_block_size(block_size) -> tuple[int, int]:
    if isinstance(block_size, numbers.Integral):
        bs = (int(block_size), int(block_size))
    else:
        try:
            bs = tuple(int(b) for b in block_size)
        except TypeError:
            bs = ()
        if len(bs) != 2:
            raise ValueError(f"`block_size` must be an int or a pair of ints; got {block_size!r}.")
    if min(bs) < 1:
        raise ValueError(f"`block_size` must be positive; got {block_size!r}.")
    return bs


def check_int(owner: str | None, name: str, v, *, minimum: int = 1, allow_none: bool = False):
    """A Python int ``>= minimum`` (``None`` too with ``allow_none``), else a ValueError.

    ``owner`` (a class or function name, or None) prefixes the message; bools are refused.
    """
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
        what = "None or an int" if allow_none else "an int"
        prefix = f"{owner}: " if owner else ""
        raise ValueError(f"{prefix}`{name}` must be {what} >= {minimum}; got {v!r}.")


def is_concrete(v) -> bool:
    return not isinstance(v, jax.core.Tracer)


def concrete_array(v):
    """Returns ``np.asarray(v)`` for concrete numeric values, else ``None``."""
    if v is None or not is_concrete(v):
        return None
    leaves = jax.tree_util.tree_leaves(v)
    if any(not is_concrete(leaf) for leaf in leaves):
        return None
    try:
        a = np.asarray(v)
    except Exception:  # noqa: BLE001 - sentinels used by jax transformations
        return None
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        return None
    return a


def check_real(cls: str, name: str, v) -> None:
    """A real number (or nested tuple / array of them), concrete or traced, else a ValueError.

    Refuses ``None``, strings, bools, complex numbers and other non-numeric objects. For
    tracers only the dtype is checked (values cannot be inspected under ``jax.jit``).
    """
    leaves = jax.tree_util.tree_leaves(v)
    bad = v is None or not leaves
    for leaf in leaves:
        if bad:
            break
        if isinstance(leaf, str | bytes) or isinstance(leaf, bool):
            bad = True
            continue
        dtype = getattr(leaf, "dtype", None)
        if dtype is None:
            try:
                dtype = np.asarray(leaf).dtype
            except Exception:  # noqa: BLE001 - anything numpy cannot read is not a number
                bad = True
                continue
        dtype = np.dtype(dtype)
        bad = dtype == np.bool_ or not (
            jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
        )
    if bad:
        raise ValueError(
            f"{cls}: `{name}` must be a real number (int or float, or an array of them); "
            f"got {v!r} of type {type(v).__name__}."
        )


def check_positive(cls: str, name: str, v):
    """A finite real number ``> 0`` (or array of them); tracers: dtype only (see check_real)."""
    check_real(cls, name, v)
    a = concrete_array(v)
    if a is None:
        return
    if a.size == 0:
        raise ValueError(f"{cls}: `{name}` is empty (shape {a.shape}).")
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ValueError(
            f"{cls}: `{name}` must be finite and > 0; got {a.tolist()} (shape {a.shape})."
        )


def check_mass(name, w, n, points):
    """``w`` (``None`` or ``[n]`` weights) after :func:`normalized_weights`' checks, not
    normalised: the eager half of an entry point whose jitted core normalises."""
    if w is None:
        return None
    w = check_weights(name, w, n, points)
    if w.ndim != 1:
        raise ValueError(f"`{name}` must have shape [{n}]; got shape {tuple(w.shape)}.")
    check_probability_weights(name, w, points)
    return w


def normalized_weights(name, w, n, points, dtype):
    """Validated probability weights ``[n]`` normalised to sum to 1 (uniform for ``None``).

    Concrete weights must be finite, ``>= 0`` and not all zero (ValueError otherwise);
    traced weights are not inspected (all-zero traced weights give NaN).
    """
    if w is None:
        return jnp.full((n,), 1.0 / n, dtype)
    w = check_mass(name, w, n, points).astype(dtype)
    return w / jnp.sum(w)


def check_hyper(cls: str, name: str, v, allow_zero: bool = False) -> None:
    """A hyperparameter that is a schedule, or real, finite and ``> 0`` (``>= 0``)."""
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


def check_bool(cls: str, name: str, v) -> None:
    if not isinstance(v, bool | np.bool_):
        raise ValueError(f"{cls}: `{name}` must be a bool; got {v!r}.")
