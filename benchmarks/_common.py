"""What the benchmark scripts share: environment metadata, timing, inputs, formatting, output.

The scripts (``benchmarks/*.py``) are not a package; they ``import _common``. That works
when one runs as ``python benchmarks/<name>.py`` (its folder heads ``sys.path``) and when
``tests/_scripts.load_benchmark`` loads one by path (it puts this folder on ``sys.path``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

import mmdflow

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------- environment metadata
def utc_timestamp(zulu: bool = True) -> str:
    """Now (UTC, to the second): ``2026-11-24T01:01:33Z``, or ``...T01:01:33+00:00``."""
    now = _dt.datetime.now(_dt.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%SZ") if zulu else now.isoformat(timespec="seconds")


def loadavg(ndigits: int | None = 2) -> list[float] | None:
    """1/5/15-minute host load averages (other processes sharing the CPU skew timings).

    Rounded to ``ndigits`` (``None``: as the OS gives them); ``None`` where unavailable.
    """
    try:
        values = os.getloadavg()
    except (OSError, AttributeError):
        return None
    return [v if ndigits is None else round(v, ndigits) for v in values]


def jaxlib_version() -> str | None:
    try:
        import jaxlib

        return jaxlib.__version__
    except Exception:  # noqa: BLE001
        return None


def ott_jax_version() -> str | None:
    """ott-jax's version (the optional baseline of kernel_sums.py), or None if not installed."""
    try:
        import ott
    except ImportError:
        return None
    return getattr(ott, "__version__", "unknown")


def _device_kind() -> str:
    return jax.devices()[0].device_kind


#: metadata fields by JSON name: a function of no arguments giving the value
FIELDS: dict[str, Callable[[], object]] = {
    "date_utc": utc_timestamp,
    "date": lambda: _dt.date.today().isoformat(),
    "platform": jax.default_backend,
    "device_kind": _device_kind,
    "device": _device_kind,
    "device_count": jax.device_count,
    "host_cpu_count": os.cpu_count,
    "cpu_count": os.cpu_count,
    "os": lambda: f"{platform.system()} {platform.machine()}",
    "python": platform.python_version,
    "jax": lambda: jax.__version__,
    "jaxlib": jaxlib_version,
    "numpy": lambda: np.__version__,
    "mmdflow": lambda: mmdflow.__version__,
    "ott_jax": ott_jax_version,
    "xla_flags": lambda: os.environ.get("XLA_FLAGS", ""),
    "loadavg_start": loadavg,
}
#: the header of kernel_sums.py; flow_steps.py and scaling.py omit a few fields
STANDARD = (
    "date_utc",
    "platform",
    "device_kind",
    "device_count",
    "host_cpu_count",
    "os",
    "python",
    "jax",
    "jaxlib",
    "numpy",
    "mmdflow",
    "ott_jax",
    "xla_flags",
    "loadavg_start",
)


def environment(*fields: str, omit: tuple[str, ...] = ()) -> dict:
    """The metadata ``fields`` (names in :data:`FIELDS`; default :data:`STANDARD`), in order.

    No hostname or user name is recorded.
    """
    return {f: FIELDS[f]() for f in fields or STANDARD if f not in omit}


def device_value(table: dict[str, float], device_kind: str) -> float | None:
    """The value of the first key of ``table`` that is a substring of ``device_kind``
    (e.g. ``"H100"`` in ``"NVIDIA H100 80GB HBM3"``), or None when none is."""
    return next((v for key, v in table.items() if key in device_kind), None)


def default_memory_budget() -> int:
    """Half the accelerator memory limit, or half the host RAM on CPU (fallback 8 GB)."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"] // 2)
    except Exception:  # noqa: BLE001 - memory_stats is optional per backend
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
    except (ValueError, OSError, AttributeError):
        return 8 * 10**9


# ---------------------------------------------------------------- inputs and measurement
def sample_points(n: int, d: int, seed: int):
    """``x ~ N(0, I)`` and ``y ~ N(0.5, I)``, ``[n, d]`` float32 NumPy arrays, and the
    generator (seeded ``seed + 1000 d + n``) that drew them, for further draws."""
    rng = np.random.default_rng(seed + 1000 * d + n)
    x = rng.standard_normal((n, d), dtype=np.float32)
    y = rng.standard_normal((n, d), dtype=np.float32) + np.float32(0.5)
    return x, y, rng


def hess_rhs(y, w):
    """The ``e [m, d]`` of the benchmarked Hessian sums: ``w_j y_j``."""
    return w[:, None] * y


def timings(call: Callable[[], object], repeats: int) -> list[float]:
    """Wall times (s) of ``repeats`` calls of ``call()``, each to ``jax.block_until_ready``."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - t)
    return times


def memory_bytes(compiled, field: str = "temp_size_in_bytes") -> int | None:
    """A field of ``compiled.memory_analysis()`` as an int (``None`` where the backend has none)."""
    try:
        mem = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - memory analysis is optional per backend
        return None
    value = getattr(mem, field, None) if mem is not None else None
    return int(value) if value is not None else None


# ---------------------------------------------------------------- output
def fmt(v, spec: str) -> str:
    """``format(v, spec)``, or ``""`` for ``None`` (empty table cells)."""
    return "" if v is None else format(v, spec)


def log(msg: str) -> None:
    """Progress to stderr (stdout carries the tables)."""
    print(msg, file=sys.stderr, flush=True)


def default_out(stem: str, quick: bool = False) -> Path:
    """``benchmarks/results/<stem>_<platform>[_quick].json``."""
    return RESULTS_DIR / f"{stem}_{jax.default_backend()}{'_quick' if quick else ''}.json"


def write_json(path, obj, dumps: Callable[[object], str] | None = None) -> Path:
    """Writes ``obj`` as JSON (``indent=1`` unless ``dumps`` is given), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text((dumps(obj) if dumps else json.dumps(obj, indent=1)) + "\n")
    return path


def pair_sweep(
    stem: str, out, quick: bool, n: int, steps: int, pairs, names, run
) -> tuple[dict, Path]:
    """``run(src, tgt, name)`` for every (source, target) pair and config name, each record
    logged and the JSON (``out``, or :func:`default_out` of ``stem``) rewritten after it, so a
    stopped sweep keeps what it measured. Returns ``({"meta": ..., "records": [...]}, path)``."""
    res = {"meta": environment() | {"n": n, "steps": steps, "date": utc_timestamp()}, "records": []}
    path = out or default_out(stem, quick)
    for src, tgt in pairs:
        for name in names:
            r = run(src, tgt, name)
            res["records"].append(r)
            log(
                f"{r['pair']} {name}: {r['mmd2'][0]:.3e} -> {r['mmd2'][-1]:.3e} "
                f"({r['reduction']:.3g}x) {r['wall_s']:.1f}s load {r['load']}"
            )
            path = write_json(path, res)
    return res, path
