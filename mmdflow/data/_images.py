"""Images: bundled sample files, image files, and conversions to and from color clouds."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from mmdflow.data._points import _subset

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
