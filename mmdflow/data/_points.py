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


#: the first bytes of a .npy file, of a .npz (zip) archive and of a pickle (protocol 2+)
_NPY_MAGIC, _ZIP_MAGIC, _PICKLE_MAGIC = b"\x93NUMPY", b"PK\x03\x04", b"\x80"


def _read_npy(path: Path, where: str) -> np.ndarray:
    """The array in the ``.npy`` file ``path``; a one-line ValueError naming what it holds else."""
    if path.is_dir():
        raise ValueError(f"{where} is a directory, not a .npy file.")
    if not path.is_file():
        raise ValueError(f"{where}: file not found.")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise ValueError(f"{where}: cannot read it ({e.strerror}).") from None
    if head.startswith(_ZIP_MAGIC):
        raise ValueError(
            f"{where} is a .npz archive (several arrays), not a .npy file: save the one "
            "[N, d] array with np.save."
        )
    if head.startswith(_PICKLE_MAGIC):
        raise ValueError(
            f"{where} holds a pickled Python object, not a .npy array (pickles are not loaded: "
            "they can run code); save an [N, d] float array with np.save."
        )
    if not head.startswith(_NPY_MAGIC):
        kind = "text" if head and all(32 <= c < 127 or c in b"\t\r\n" for c in head) else "data"
        raise ValueError(
            f"{where} is not a .npy file (it holds {kind}, not the NumPy header); save an "
            "[N, d] float array with np.save."
        )
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as e:
        if "object" in str(e).lower() or "pickle" in str(e).lower():
            raise ValueError(
                f"{where} holds an object array (dtype=object; loading it would unpickle "
                "Python objects); save an [N, d] float array with np.save."
            ) from None
        raise ValueError(f"{where}: cannot read as a .npy array ({e}).") from None
    except Exception as e:  # truncated or corrupt file
        raise ValueError(
            f"{where}: cannot read as a .npy array ({type(e).__name__}: {e})."
        ) from None
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{where}: not a single array (got {type(arr).__name__}).")
    return arr


def _load_npy(path: Path, n: int | None, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``(points, rows)``: the (subsampled) float32 array and the rows chosen (or None)."""
    where = f"load_points: {str(path)!r}"
    if path.suffix.lower() != ".npy":
        raise ValueError(
            f"{where} is neither a dataset name nor a .npy file; valid names: "
            f"{_valid_names()}, digits."
        )
    arr = _read_npy(path, where)
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
    return (out, None) if idx is None else (out[idx], idx)


def load_points(
    spec: str | os.PathLike,
    n: int | None = None,
    seed: int = 0,
    *,
    return_indices: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray | None]:
    """Loads a point cloud from a dataset name or a ``.npy`` file.

    Args:
        spec: One of :data:`SHAPES` (or "8-gaussians" / "mask:<text>"), "digits", or a
            path to a ``.npy`` file holding a finite float or integer array ``[N, d]``.
        n: Number of points. Required for the synthetic 2-D shapes. For "digits" and
            files it is optional: if given and smaller than ``N``, a deterministic
            random subset of ``n`` rows is returned; otherwise all rows, in order.
        seed: Seed for the shape sampler or for the subset.
        return_indices: Also return the rows of the file (or of "digits") that were
            kept.

    Returns:
        ``float32`` array of shape ``[n, d]`` (``d = 2`` for shapes, 64 for digits);
        with ``return_indices``, ``(points, rows)`` where ``rows`` is the ``int64``
        ``[n]`` array of the rows kept when a subset was drawn, else ``None`` (all rows
        in order, or a synthetic shape, which is sampled rather than subsampled).

    Raises:
        ValueError: Unknown name, or a file that is missing, a directory, not ``.npy``
            (a ``.npz`` archive, a text file, a pickle, an object array), unreadable,
            not 2-D, not numeric, or not finite. The message is one line naming the
            file and the problem.

    Example:
        >>> x = load_points("moons", 256)
        >>> d, rows = load_points("digits", 100, return_indices=True)
        >>> d.shape, rows.shape
        ((100, 64), (100,))
        >>> y = load_points("my_points.npy")  # doctest: +SKIP
    """
    pts, idx = None, None
    if isinstance(spec, str):
        key = _canonical_shape(spec)
        if key is not None:
            if n is None:
                raise ValueError(f"load_points: `n` is required for the synthetic shape {spec!r}.")
            pts = sample(spec, n, seed)
        elif spec.strip().lower() == "digits":
            full = _digits_full()[0]
            idx = _subset(len(full), n, seed)
            pts = full.copy() if idx is None else full[idx]
    if pts is None:
        pts, idx = _load_npy(Path(spec), n, seed)
    if not return_indices:
        return pts
    return pts, None if idx is None else np.asarray(idx, np.int64)
