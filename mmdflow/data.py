"""Toy data sets, point clouds from files, and images for experiments.

Everything here is plain NumPy and runs offline: the 2-D shapes are generated
procedurally, glyph masks are rasterized with matplotlib's text-to-path machinery
(using the DejaVu font shipped inside matplotlib), the digits come from the copy
bundled in the scikit-learn wheel, and the images are the files bundled in the
scikit-image wheel (with matplotlib's own sample image as a fallback). Heavy
imports (matplotlib, scikit-learn) happen lazily inside the functions that need
them, so ``import mmdflow.data`` costs only NumPy.

Example:
    >>> from mmdflow import data
    >>> x = data.sample("moons", 512, seed=1)
    >>> x.shape, x.dtype
    ((512, 2), dtype('float32'))
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = [
    "IMAGES",
    "SHAPES",
    "digits",
    "image",
    "image_to_points",
    "load_points",
    "points_to_image",
    "sample",
]

SHAPES: tuple[str, ...] = (
    "gaussian",
    "moons",
    "rings",
    "spiral",
    "checkerboard",
    "8gaussians",
    "swissroll",
    "heart",
    "letter",
)
"""Names accepted by :func:`sample`, in addition to the alias ``"8-gaussians"``
and the pattern ``"mask:<text>"`` (points uniform on the glyphs of ``<text>``)."""

_ALIASES = {"8-gaussians": "8gaussians", "letter": "mask:A"}

_MASK_PREFIX = "mask:"

_EXTENT = 2.5  # half-width of the box that mask shapes are fitted into

_SKIMAGE_FILES = {
    "astronaut": "astronaut.png",
    "coffee": "coffee.png",
    "chelsea": "chelsea.png",
    "rocket": "rocket.jpg",
}
_MPL_FILES = {"grace_hopper": "grace_hopper.jpg"}

IMAGES: tuple[str, ...] = (*_SKIMAGE_FILES, *_MPL_FILES)
"""Names accepted by :func:`image`; each is a file bundled in an installed wheel."""

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _valid_names() -> str:
    names = [*SHAPES, *(a for a in _ALIASES if a not in SHAPES), "mask:<text>"]
    return ", ".join(names)


def _check_n(n, what: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"`{what}` must be a positive integer; got {n!r}.")
    return int(n)


# --------------------------------------------------------------------------- shapes


def _gaussian(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_normal((n, 2))


def _moons(rng: np.random.Generator, n: int) -> np.ndarray:
    upper = rng.random(n) < 0.5
    t = np.pi * rng.random(n)
    x = np.where(upper, np.cos(t), 1.0 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    pts = np.stack([x - 0.5, y - 0.25], axis=1) * 1.8
    return pts + 0.1 * rng.standard_normal((n, 2))


def _rings(rng: np.random.Generator, n: int) -> np.ndarray:
    radii = np.array([0.9, 1.8, 2.7])
    # Pick rings proportionally to their circumference: uniform density along the curves.
    r = rng.choice(radii, size=n, p=radii / radii.sum())
    t = 2.0 * np.pi * rng.random(n)
    pts = r[:, None] * np.stack([np.cos(t), np.sin(t)], axis=1)
    return pts + 0.06 * rng.standard_normal((n, 2))


def _spiral(rng: np.random.Generator, n: int) -> np.ndarray:
    turns = 3.0 * np.pi
    t = np.sqrt(rng.random(n)) * turns
    arm = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    r = 2.6 * t / turns
    pts = (arm * r)[:, None] * np.stack([np.cos(t), np.sin(t)], axis=1)
    return pts + 0.08 * rng.standard_normal((n, 2))


def _checkerboard(rng: np.random.Generator, n: int) -> np.ndarray:
    # 4 x 4 cells of side 1.5 tiling [-3, 3]^2; the 8 cells with (i + j) even are filled.
    cells = np.array([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0])
    k = rng.integers(len(cells), size=n)
    return -3.0 + 1.5 * (cells[k] + rng.random((n, 2)))


def _eight_gaussians(rng: np.random.Generator, n: int) -> np.ndarray:
    angles = 2.0 * np.pi * np.arange(8) / 8
    centers = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    k = rng.integers(8, size=n)
    return centers[k] + 0.1 * rng.standard_normal((n, 2))


def _swissroll(rng: np.random.Generator, n: int) -> np.ndarray:
    t = 1.5 * np.pi * (1.0 + 2.0 * rng.random(n))
    pts = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) * (2.7 / (4.5 * np.pi))
    return pts + 0.05 * rng.standard_normal((n, 2))


def _heart_polygons() -> list[np.ndarray]:
    t = np.linspace(0.0, 2.0 * np.pi, 400)
    x = 16.0 * np.sin(t) ** 3
    y = 13.0 * np.cos(t) - 5.0 * np.cos(2 * t) - 2.0 * np.cos(3 * t) - np.cos(4 * t)
    return [np.stack([x, y], axis=1)]


def _text_polygons(text: str) -> list[np.ndarray]:
    import matplotlib
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath

    # The font file ships inside matplotlib, so the glyphs are the same on every machine.
    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"
    path = TextPath((0.0, 0.0), text, size=1.0, prop=FontProperties(fname=str(font)))
    # ``to_polygons`` flattens the Bezier curves; holes are separate closed contours.
    return path.to_polygons(closed_only=True)


@functools.lru_cache(maxsize=32)
def _mask_pixels(key: str) -> tuple[np.ndarray, float]:
    """Rasterizes a shape to a binary mask; returns (filled pixel centers [m, 2], pixel size).

    Coordinates are already centered and scaled to fit in ``[-_EXTENT, _EXTENT]^2``.
    """
    from matplotlib.path import Path as MplPath

    polys = _heart_polygons() if key == "heart" else _text_polygons(key[len(_MASK_PREFIX) :])
    polys = [p for p in polys if len(p) >= 3]
    if not polys:
        raise ValueError(f"Shape {key!r} has no fillable outline (empty or whitespace text?).")
    allv = np.concatenate(polys)
    lo, hi = allv.min(axis=0), allv.max(axis=0)
    size = hi - lo
    # ~96 pixels across the short side, at most 512 across the long side.
    px = max(float(size.min()) / 96.0, float(size.max()) / 512.0)
    xs = np.arange(lo[0] + px / 2, hi[0], px)
    ys = np.arange(lo[1] + px / 2, hi[1], px)
    gx, gy = np.meshgrid(xs, ys)
    centers = np.stack([gx.ravel(), gy.ravel()], axis=1)
    # Even-odd rule over the contours: a point inside a hole is inside two contours.
    inside = np.zeros(len(centers), dtype=bool)
    for poly in polys:
        inside ^= MplPath(poly).contains_points(centers)
    if not inside.any():
        raise ValueError(f"Shape {key!r} rasterized to an empty mask.")
    scale = 2.0 * _EXTENT / float(size.max())
    filled = (centers[inside] - (lo + hi) / 2) * scale
    filled.setflags(write=False)
    return filled, px * scale


def _mask(rng: np.random.Generator, n: int, key: str) -> np.ndarray:
    centers, px = _mask_pixels(key)
    k = rng.integers(len(centers), size=n)
    # Uniform jitter inside each pixel: exactly uniform on the rasterized mask.
    return centers[k] + px * (rng.random((n, 2)) - 0.5)


_GENERATORS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "gaussian": _gaussian,
    "moons": _moons,
    "rings": _rings,
    "spiral": _spiral,
    "checkerboard": _checkerboard,
    "8gaussians": _eight_gaussians,
    "swissroll": _swissroll,
    "heart": lambda rng, n: _mask(rng, n, "heart"),
}


def _canonical_shape(name: str) -> str | None:
    """Returns the canonical shape key for ``name``, or None if it is not a shape."""
    if not isinstance(name, str):
        return None
    if name.startswith(_MASK_PREFIX):
        return name if len(name) > len(_MASK_PREFIX) else None
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key in _GENERATORS or key.startswith(_MASK_PREFIX):
        return key
    return None


def sample(name: str, n: int, seed: int = 0) -> np.ndarray:
    """Draws ``n`` points from a named 2-D toy distribution.

    Available names are :data:`SHAPES` ("gaussian", "moons", "rings", "spiral",
    "checkerboard", "8gaussians", "swissroll", "heart", "letter"), the alias
    "8-gaussians", and "mask:<text>", which samples uniformly from a binary mask of
    the glyphs of ``<text>`` (rasterized from matplotlib's bundled DejaVu Sans Bold;
    "letter" is "mask:A"). All shapes roughly fit in ``[-3, 3]^2``; mask shapes are
    centered and fitted into ``[-2.5, 2.5]^2`` keeping their aspect ratio.

    Args:
        name: Dataset name (case-insensitive except for the ``<text>`` of a mask).
        n: Number of points, a positive integer.
        seed: Seed for ``numpy.random.default_rng``; equal seeds give equal samples.

    Returns:
        ``float32`` array of shape ``[n, 2]``.

    Raises:
        ValueError: If ``name`` is unknown (the message lists the valid names) or
            ``n`` is not a positive integer.

    Example:
        >>> x = sample("8gaussians", 1000, seed=0)
        >>> x.shape
        (1000, 2)
        >>> y = sample("mask:MMD", 500)
    """
    key = _canonical_shape(name)
    if key is None:
        raise ValueError(f"Unknown dataset {name!r}; valid names: {_valid_names()}.")
    n = _check_n(n)
    rng = np.random.default_rng(seed)
    if key.startswith(_MASK_PREFIX):
        pts = _mask(rng, n, key)
    else:
        pts = _GENERATORS[key](rng, n)
    return np.ascontiguousarray(pts, dtype=np.float32)


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


# --------------------------------------------------------------------------- images


def _to_uint8_rgb(img: np.ndarray, where: str) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.ndim != 3 or img.shape[-1] not in (3, 4):
        raise ValueError(f"{where}: expected an RGB(A) or gray image; got shape {img.shape}.")
    img = img[..., :3]
    if img.dtype == np.uint8:
        return np.ascontiguousarray(img)
    if np.issubdtype(img.dtype, np.floating):
        return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise ValueError(f"{where}: unsupported image dtype {img.dtype}.")


def _read_image(path: Path) -> np.ndarray:
    import matplotlib.image as mpimg

    return _to_uint8_rgb(mpimg.imread(path), f"image: {str(path)!r}")


def _skimage_file(filename: str) -> Path | None:
    """Path of a file bundled in the installed scikit-image wheel, without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / "data" / filename
        if candidate.is_file():
            return candidate
    return None


def _mpl_sample(filename: str) -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data" / filename


def image(name: str | os.PathLike) -> np.ndarray:
    """Loads a bundled sample image or an image file as ``uint8`` RGB.

    Named images are read from files shipped inside installed wheels, so nothing is
    downloaded: "astronaut", "coffee", "chelsea", "rocket" from scikit-image's
    ``skimage/data`` folder (if scikit-image is missing, or the file is not bundled,
    a warning is emitted and matplotlib's "grace_hopper" is returned instead), and
    "grace_hopper" from matplotlib's sample data. A path ending in ``.png``, ``.jpg``
    or ``.jpeg`` is read with ``matplotlib.image.imread``.

    Args:
        name: One of :data:`IMAGES`, or a path to a PNG/JPEG file.

    Returns:
        ``uint8`` array of shape ``[H, W, 3]`` (alpha dropped, gray replicated).

    Raises:
        ValueError: Unknown name, or a missing/unreadable file.

    Example:
        >>> img = image("chelsea")
        >>> img.shape, img.dtype
        ((300, 451, 3), dtype('uint8'))
    """
    if isinstance(name, str) and name.strip().lower() in IMAGES:
        key = name.strip().lower()
        if key in _SKIMAGE_FILES:
            path = _skimage_file(_SKIMAGE_FILES[key])
            if path is not None:
                return _read_image(path)
            warnings.warn(
                f"image: {key!r} needs scikit-image (pip install scikit-image); "
                "falling back to matplotlib's 'grace_hopper'.",
                stacklevel=2,
            )
            key = "grace_hopper"
        return _read_image(_mpl_sample(_MPL_FILES[key]))
    path = Path(name)
    if path.suffix.lower() not in _IMAGE_SUFFIXES:
        raise ValueError(
            f"image: unknown image {str(name)!r}; valid names: {', '.join(IMAGES)}, "
            "or a path to a .png/.jpg file."
        )
    if not path.is_file():
        raise ValueError(f"image: {str(path)!r}: file not found.")
    try:
        return _read_image(path)
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(f"image: {str(path)!r}: cannot read ({type(e).__name__}: {e}).") from e


def image_to_points(
    img: np.ndarray, max_points: int | None = None, seed: int = 0
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Turns an RGB image into a cloud of colors in the unit cube (for color transfer).

    Args:
        img: ``[H, W, 3]`` (or ``[H, W, 4]``, alpha ignored) ``uint8`` image, or a
            floating image with values in ``[0, 1]``.
        max_points: If given and smaller than ``H * W``, return a deterministic random
            subset of that many pixels (e.g. to fit a flow); keep it ``None`` to get
            every pixel in row-major order, which :func:`points_to_image` can restore.
        seed: Seed for the pixel subset.

    Returns:
        ``(points, shape)``: ``points`` is ``float32`` ``[N, 3]`` in ``[0, 1]`` (``N = H * W``
        unless subsampled) and ``shape`` is ``(H, W, 3)``.

    Example:
        >>> img = image("coffee")
        >>> pts, shape = image_to_points(img)
        >>> bool((points_to_image(pts, shape) == img).all())
        True
    """
    rgb = _to_uint8_rgb(img, "image_to_points")
    h, w, _ = rgb.shape
    pts = rgb.reshape(-1, 3).astype(np.float32) / np.float32(255.0)
    idx = _subset(len(pts), max_points, seed, "max_points")
    if idx is not None:
        pts = pts[idx]
    return pts, (h, w, 3)


def points_to_image(points: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`image_to_points`: colors in ``[0, 1]`` back to a ``uint8`` image.

    Values are clipped to ``[0, 1]`` and rounded to the nearest of the 256 levels, so
    points that came unchanged from ``image_to_points`` reproduce the image exactly.

    Args:
        points: ``[H * W, 3]`` colors in row-major pixel order (NumPy or JAX array).
        shape: ``(H, W)`` or ``(H, W, 3)``, as returned by :func:`image_to_points`.

    Returns:
        ``uint8`` array of shape ``[H, W, 3]``.

    Raises:
        ValueError: If ``points`` does not hold exactly ``H * W`` finite colors.

    Example:
        >>> pts, shape = image_to_points(image("astronaut"))
        >>> out = points_to_image(pts[:, ::-1], shape)  # swap red and blue
    """
    h, w = int(shape[0]), int(shape[1])
    pts = np.asarray(points, dtype=np.float32)
    if pts.shape != (h * w, 3):
        raise ValueError(
            f"points_to_image: expected points of shape [{h * w}, 3] for an image of shape "
            f"({h}, {w}, 3); got {pts.shape} (use image_to_points(..., max_points=None))."
        )
    if not np.isfinite(pts).all():
        raise ValueError("points_to_image: points contain NaN or Inf.")
    out = np.round(np.clip(pts, 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)
    return out.reshape(h, w, 3)
