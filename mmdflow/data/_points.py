"""Point clouds: scikit-learn's digits and :func:`load_points` (names or ``.npy`` files)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from mmdflow.data._shapes import _canonical_shape, _check_n, _valid_names, sample

# --------------------------------------------------------------------------- digits


@functools.lru_cache(maxsize=1)
def _digits_full() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The 'digits' data set needs scikit-learn: pip install scikit-learn"
        ) from e
    bunch = load_digits()  # read from the copy bundled in the scikit-learn wheel
    x = (np.asarray(bunch.data, dtype=np.float32) / 16.0).astype(np.float32)
    y = np.asarray(bunch.target, dtype=np.int32)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _subset(total: int, n: int | None, seed: int, what: str = "n") -> np.ndarray | None:
    """Indices of a deterministic random subset of size ``n`` (None: keep everything)."""
    if n is None:
        return None
    n = _check_n(n, what)
    if n >= total:
        return None
    return np.random.default_rng(seed).choice(total, size=n, replace=False)


def digits(n: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 handwritten digits of scikit-learn (1797 images, 64 pixels each).

    Args:
        n: If given and smaller than 1797, a random subset of ``n`` images is returned
            (deterministic given ``seed``); otherwise all images in their original order.
        seed: Seed for the subset.

    Returns:
        ``(x, labels)``: ``x`` is ``float32`` of shape ``[n, 64]`` with values in
        ``[0, 1]`` (the original 0..16 intensities divided by 16), ``labels`` is
        ``int32`` of shape ``[n]`` with values 0..9.

    Raises:
        ImportError: If scikit-learn is not installed.

    Example:
        >>> x, y = digits(256, seed=0)
        >>> x.shape, y.shape
        ((256, 64), (256,))
    """
    x, y = _digits_full()
    idx = _subset(len(x), n, seed)
    if idx is None:
        return x.copy(), y.copy()
    return x[idx], y[idx]


# --------------------------------------------------------------------------- point files


def _load_npy(path: Path, n: int | None, seed: int) -> np.ndarray:
    where = f"load_points: {str(path)!r}"
    if path.suffix.lower() != ".npy":
        raise ValueError(
            f"{where} is neither a dataset name nor a .npy file; valid names: "
            f"{_valid_names()}, digits."
        )
    if not path.is_file():
        raise ValueError(f"{where}: file not found.")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:  # corrupt file, object array, ...
        raise ValueError(f"{where}: cannot read as a .npy array ({type(e).__name__}: {e}).") from e
    if arr.ndim != 2:
        raise ValueError(f"{where}: expected a 2-D array [N, d]; got shape {arr.shape}.")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{where}: array is empty (shape {arr.shape}).")
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{where}: expected a float or integer array; got dtype {arr.dtype}.")
    with np.errstate(over="ignore"):
        out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        raise ValueError(
            f"{where}: array contains non-finite values (NaN/Inf or beyond float32 range)."
        )
    idx = _subset(len(out), n, seed)
    return out if idx is None else out[idx]


def load_points(spec: str | os.PathLike, n: int | None = None, seed: int = 0) -> np.ndarray:
    """Loads a point cloud from a dataset name or a ``.npy`` file.

    Args:
        spec: One of :data:`SHAPES` (or "8-gaussians" / "mask:<text>"), "digits", or a
            path to a ``.npy`` file holding a finite float or integer array ``[N, d]``.
        n: Number of points. Required for the synthetic 2-D shapes. For "digits" and
            files it is optional: if given and smaller than ``N``, a deterministic
            random subset of ``n`` rows is returned; otherwise all rows, in order.
        seed: Seed for the shape sampler or for the subset.

    Returns:
        ``float32`` array of shape ``[n, d]`` (``d = 2`` for shapes, 64 for digits).

    Raises:
        ValueError: Unknown name, or a file that is missing, not ``.npy``, unreadable,
            not 2-D, not numeric, or not finite. The message is one line naming the
            file and the problem.

    Example:
        >>> x = load_points("moons", 256)
        >>> d = load_points("digits", 100)
        >>> d.shape
        (100, 64)
        >>> y = load_points("my_points.npy")  # doctest: +SKIP
    """
    if isinstance(spec, str):
        key = _canonical_shape(spec)
        if key is not None:
            if n is None:
                raise ValueError(f"load_points: `n` is required for the synthetic shape {spec!r}.")
            return sample(spec, n, seed)
        if spec.strip().lower() == "digits":
            return digits(n, seed)[0]
    return _load_npy(Path(spec), n, seed)
