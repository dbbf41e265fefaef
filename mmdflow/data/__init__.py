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

from mmdflow.data._images import IMAGES, image, image_to_points, points_to_image
from mmdflow.data._points import digits, load_points
from mmdflow.data._shapes import SHAPES, sample

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
