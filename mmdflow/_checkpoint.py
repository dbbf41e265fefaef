"""Exact checkpoints of pytrees (flow and training states) in one ``.npz`` file.

Every leaf is stored as a NumPy array, typed PRNG keys as their key data, so a state
saved and restored continues bit for bit. The structure comes from a template (a
freshly initialised state), as in Orbax's ``restore(..., item=template)``.

Example:
    >>> import jax, jax.numpy as jnp, tempfile, os
    >>> from mmdflow import _checkpoint
    >>> state = {"x": jnp.arange(3.0), "key": jax.random.key(0)}
    >>> path = os.path.join(tempfile.mkdtemp(), "c.npz")
    >>> _checkpoint.save(path, state, {"step": 3})
    >>> restored, meta = _checkpoint.load(path, state)
    >>> meta["step"], bool((restored["x"] == state["x"]).all())
    (3, True)
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _is_key(a) -> bool:
    return hasattr(a, "dtype") and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)


def _to_host(a) -> np.ndarray:
    return np.asarray(jax.random.key_data(a) if _is_key(a) else a)


def save(path: str | os.PathLike, tree: Any, meta: dict | None = None, **extra: np.ndarray) -> None:
    """Writes the leaves of ``tree``, ``meta`` (JSON) and ``extra`` arrays atomically to ``path``.

    Args:
        path: Destination ``.npz`` (written to a temporary name, then renamed).
        tree: A pytree of arrays; typed PRNG keys are stored as their key data.
        meta: JSON-serialisable metadata.
        **extra: Further named arrays (e.g. a run's history), read back by :func:`load`.
    """
    path = os.fspath(path)
    leaves = jax.tree.leaves(tree)
    arrays = {f"leaf_{i}": _to_host(v) for i, v in enumerate(leaves)}
    arrays.update({f"extra_{k}": np.asarray(v) for k, v in extra.items()})
    arrays["meta"] = np.asarray(json.dumps(meta or {}))
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_meta(path: str | os.PathLike) -> dict:
    """The ``meta`` of a :func:`save` file, without restoring its arrays."""
    with np.load(os.fspath(path), allow_pickle=False) as f:
        return json.loads(str(f["meta"]))


def load(path: str | os.PathLike, like: Any) -> tuple[Any, dict]:
    """Restores a :func:`save` file into the structure, dtypes and key types of ``like``.

    Returns:
        ``(tree, meta)``; the ``extra`` arrays are in ``meta["extra"]`` (a dict).

    Raises:
        ValueError: If the file's leaves do not match ``like`` (count or shapes).
    """
    path = os.fspath(path)
    leaves, treedef = jax.tree.flatten(like)
    with np.load(path) as f:
        n = sum(1 for k in f.files if k.startswith("leaf_"))
        if n != len(leaves):
            raise ValueError(
                f"checkpoint {path!r} has {n} arrays but the state expects {len(leaves)}."
            )
        new = []
        for i, t in enumerate(leaves):
            a = f[f"leaf_{i}"]
            want = _to_host(t)
            if a.shape != want.shape:
                raise ValueError(
                    f"checkpoint {path!r}: array {i} has shape {a.shape}, the state expects "
                    f"{want.shape}."
                )
            if _is_key(t):
                new.append(jax.random.wrap_key_data(jnp.asarray(a), impl=jax.random.key_impl(t)))
            else:
                new.append(jnp.asarray(a, dtype=jnp.asarray(t).dtype))
        meta = json.loads(str(f["meta"]))
        meta["extra"] = {k[len("extra_") :]: f[k] for k in f.files if k.startswith("extra_")}
    return jax.tree.unflatten(treedef, new), meta
