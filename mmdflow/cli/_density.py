"""``mmdflow flow --density``: the target log-density of a density flow (``svgd``, ``ksd``,
``srmmd``).

``--density NAME`` is a key of :data:`mmdflow.densities.DENSITIES` or ``module:function``
(a JAX-traceable function mapping a ``[d]`` point to ``log p``, up to a constant; the
current directory is searched first, as ``python -m`` does). The dimension is ``--dim``,
else the density's own (``gaussian``, ``mixture``: 2), else the source's. Built-in densities
draw exact samples: the reference of the final MMD^2, of the mean / covariance errors and of
the bandwidth; for a density without a sampler the source points set the bandwidth.

The bandwidth is Liu & Wang's (2016) median rule, ``median distance / sqrt(2 log(n + 1))``
of the exact samples (else of the source), :data:`BANDWIDTH_RULE`: the density flows' default
steps (``SVGDField``: ``1.0 x bandwidth^2``, ``KSDField``: ``0.1 x bandwidth^4``) assume a
kernel at the density's length scale, and the plain median distance is far above it.
Measured (300 particles from N(0, I), 300 steps at ``defaults_for``, Gaussian kernel; MMD^2
x 1e-4 to 2,000 exact samples, bandwidth 1; 300 exact samples score 15 / 30 / 20 / 22 on
gaussian / mixture / banana / funnel): SVGD with the median (1.70 / 2.81 / 2.70 / 3.91):
4.8 / 2,929 / NaN (diverged) / 1,310; with this rule (0.50 / 0.83 / 0.80 / 1.16): 4.6 / 3.2 /
13 / 147; bandwidth 1 (where the defaults were measured): 4.3 / 3.1 / 7.9 / 198. KSD
descent: median 4.4 / 1,423 / NaN / NaN; this rule 6.0 / 278 / 82 / 439; bandwidth 1: 4.2 /
380 / 51 / 627.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from mmdflow.cli._common import CLIError

#: how ``mmdflow flow`` picks a density flow's bandwidth (see the module docstring)
BANDWIDTH_RULE = "Liu & Wang's median rule: median distance / sqrt(2 log(n + 1))"


@dataclasses.dataclass(frozen=True)
class DensityTarget:
    """A resolved ``--density``.

    Attributes:
      spec: the option's value.
      logp: the log-density ``[d] -> scalar`` (hashable).
      dim: the dimension it fixes (``None``: any, e.g. ``banana``, ``funnel``).
      sample: ``sample(key, n, d) -> [n, d]`` exact samples, or ``None``.
    """

    spec: str
    logp: Callable[[Any], Any]
    dim: int | None
    sample: Callable[[Any, int, int], Any] | None


def _import(spec: str) -> Callable:
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise CLIError(f"--density {spec!r}: expected NAME or MODULE:FUNCTION")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:  # like `python -m`: modules in the current directory
        sys.path.insert(0, cwd)
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - any failure to import is the user's module
        raise CLIError(
            f"--density {spec!r}: cannot import module {module!r} ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    finally:
        if added:
            sys.path.remove(cwd)
    fn = mod
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise CLIError(f"--density {spec!r}: module {module!r} has no attribute {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise CLIError(f"--density {spec!r}: {attr!r} is not callable (got {type(fn).__name__})")
    try:
        hash(fn)
    except TypeError:
        raise CLIError(f"--density {spec!r}: {attr!r} must be hashable (a function)") from None
    return fn


def _sampler(logp) -> Callable | None:
    """``sample(key, n, d)`` from a density's own ``sample(key, n[, d])``, or ``None``."""
    own = getattr(logp, "sample", None)
    if not callable(own):
        return None
    try:
        takes_d = "d" in inspect.signature(own).parameters
    except (TypeError, ValueError):
        takes_d = False
    return (lambda key, n, d: own(key, n, d=d)) if takes_d else (lambda key, n, d: own(key, n))


def resolve(spec: str) -> DensityTarget:
    """``--density``'s log-density: a name of ``DENSITIES`` or ``module:function``.

    Args:
      spec: the option's value.

    Returns:
      The :class:`DensityTarget`.

    Raises:
      CLIError: an unknown name, a module that cannot be imported, a missing or
        non-callable function (one line, exit status 2).
    """
    from mmdflow import densities

    if ":" in spec:
        logp = _import(spec)
    elif spec in densities.DENSITIES:
        logp = densities.DENSITIES[spec]
    else:
        raise CLIError(
            f"--density {spec!r}: unknown density; valid: "
            f"{', '.join(sorted(densities.DENSITIES))}, or MODULE:FUNCTION"
        )
    dim = getattr(logp, "dim", None)
    dim = dim if isinstance(dim, int) and not isinstance(dim, bool) else None
    return DensityTarget(spec, logp, dim, _sampler(logp))


def check_at(target: DensityTarget, x0: np.ndarray) -> np.ndarray:
    """Checks ``logp`` at the source points (``densities.score``); returns ``log p(x0)``.

    Raises:
      CLIError: ``logp`` fails on a ``[d]`` point (wrong dimension), returns a non-scalar,
        or is not finite (or its score is not) at a source point.
    """
    import jax
    import jax.numpy as jnp

    from mmdflow import densities

    x = jnp.asarray(x0)
    try:
        densities.score(target.logp, x)
        values = jax.jit(jax.vmap(target.logp))(x)
    except ValueError as e:
        msg = str(e).removeprefix("score: ")
        raise CLIError(f"--density {target.spec!r} (d={x0.shape[1]}): {msg}") from None
    return np.asarray(values, np.float32)


def bandwidth(points: np.ndarray) -> float:
    """:data:`BANDWIDTH_RULE` on ``points`` (exact samples, else the source)."""
    from mmdflow.kernels import median_bandwidth

    med = float(median_bandwidth(points))
    bw = med / math.sqrt(2.0 * math.log(points.shape[0] + 1.0))
    if not (math.isfinite(bw) and bw > 0):
        raise CLIError(f"median distance of the points is {med} (all equal?); pass --bandwidth")
    return bw


def moment_errors(x: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Largest absolute errors of the mean and covariance entries of ``x`` against ``ref``."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    cov = lambda a: np.atleast_2d(np.cov(a, rowvar=False))
    return {
        "mean_error": float(np.abs(x.mean(0) - ref.mean(0)).max()),
        "cov_error": float(np.abs(cov(x) - cov(ref)).max()),
    }


def grid_logp(logp) -> Callable[[np.ndarray], np.ndarray]:
    """``[k, 2]`` points -> ``[k]`` log-density values (NumPy), for contour plots."""
    import jax

    f = jax.jit(jax.vmap(logp))
    return lambda pts: np.asarray(f(np.asarray(pts, np.float32)), np.float64)
