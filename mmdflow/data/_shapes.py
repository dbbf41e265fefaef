"""2-D toy samplers: procedural shapes, glyph and heart masks, and :func:`sample`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np

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
