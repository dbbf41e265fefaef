"""Shared pieces of the ``mmdflow`` command: defaults, errors, argument types, staged output, progress."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

#: ``--num-features auto`` uses the exact kernel critic when ``n * d`` is at most this.
EXACT_MAX_SIZE = 256
#: ``--num-features auto`` uses this many random Fourier features above ``EXACT_MAX_SIZE``
#: (redrawn at every step unless ``--fixed-features``).
DEFAULT_NUM_FEATURES = 128
#: ``--kernel mixture``: bandwidths are these multiples of the base (median) bandwidth.
MIXTURE_FACTORS = (0.125, 0.25, 0.5, 1.0)

SOBOLEV_STEP_SIZE = 0.5
#: ``--reg`` is in units of ``1 / bandwidth**2`` (the scale of the kernel's gradient
#: features): the absolute ridge is ``reg / bandwidth**2``, which makes Sobolev descent
#: invariant to rescaling the data (``step_size`` is then dimensionless).
SOBOLEV_REG = 0.01
#: color transfer: a larger ridge gives a smoother color map (fewer posterized patches
#: when the palettes differ a lot) and still matches the target colors closely.
COLOR_REG = 0.1
#: MMD flow: default step size is this times ``bandwidth**2`` (the witness gradient
#: scales like ``1 / bandwidth``, its Jacobian like ``1 / bandwidth**2``).
MMD_STEP_FACTOR = 0.1
#: neural Sobolev descent moves at about ``step_size`` per step: a fraction of the bandwidth.
NEURAL_STEP_FACTOR = 0.025

_ENV_DEBUG = "MMDFLOW_DEBUG"


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status ``code``."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one-line :class:`CLIError`\\ s (no usage dump)."""

    def error(self, message: str):
        raise CLIError(f"{message} (see `{self.prog} --help`)")


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0; got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be finite and > 0; got {text}")
    return v


def _nonneg_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0; got {text!r}") from None
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"must be finite and >= 0; got {text}")
    return v


def _int_at_least(lo: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}; got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}; got {v}")
        return v

    parse.__name__ = f"int>={lo}"
    return parse


def _num_features(text: str) -> int | str:
    t = text.strip().lower()
    if t in ("auto", "exact"):
        return t
    try:
        v = int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'auto', 'exact' or a positive integer; got {text!r}"
        ) from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be 'auto', 'exact' or >= 1; got {v}")
    return v


def _one_line(msg: str) -> str:
    return " ".join(part.strip() for part in str(msg).splitlines() if part.strip())


def _error(msg: str) -> None:
    print(f"mmdflow: error: {_one_line(msg)}", file=sys.stderr, flush=True)


def _jsonable(obj: Any) -> Any:
    """Converts NumPy/JAX values to plain JSON types; non-finite floats become ``None``."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, bool | str) or obj is None:
        return obj
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "shape") and getattr(obj, "ndim", 0) > 0:
        return [_jsonable(v) for v in np.asarray(obj).tolist()]
    try:
        v = float(obj)
    except (TypeError, ValueError):
        return str(obj)
    return v if math.isfinite(v) else None


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n")


def _check_out(out: str, overwrite: bool) -> Path:
    """Checks ``--out`` before any work is done."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise CLIError(f"--out {str(p)!r} exists and is not a directory")
    if p.is_dir() and any(p.iterdir()) and not overwrite:
        raise CLIError(f"--out {str(p)!r} exists and is not empty; pass --overwrite to replace it")
    return p


@contextlib.contextmanager
def _staged_output(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yields a temporary directory next to ``out``; renames it to ``out`` on success.

    On any exception the temporary directory (and any parent directories created
    for it) is removed and ``out`` is left as it was. With ``overwrite`` an existing
    ``out`` is moved aside, replaced, and deleted only once the rename succeeded.
    """
    _check_out(str(out), overwrite)
    out = Path(out).absolute()
    if not out.name:
        raise CLIError(f"--out {str(out)!r} is not a usable directory name")
    parent = out.parent
    created = []
    p = parent
    while not p.exists():
        created.append(p)
        p = p.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))

    def discard():
        shutil.rmtree(tmp, ignore_errors=True)
        for q in created:  # deepest first
            with contextlib.suppress(OSError):
                q.rmdir()

    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private (0700)
        yield tmp
        _SIGNALS.check()  # a deferred Ctrl-C discards the staged outputs
        _check_out(str(out), overwrite)  # it may have appeared meanwhile
    except BaseException:
        discard()
        raise
    if not out.exists():
        try:
            tmp.rename(out)
        except BaseException:
            discard()
            raise
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=parent))
    old.rmdir()
    out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        old.rename(out)
        discard()
        raise
    shutil.rmtree(old, ignore_errors=True)


class _DeferredSignals:
    """SIGINT/SIGTERM handling that stops at safe points.

    An asynchronous ``KeyboardInterrupt`` can land inside JAX's dispatch machinery
    and crash the interpreter at exit. Instead, the first signal is only recorded
    and :meth:`check` (called between compiled chunks and before the output
    directory is committed) raises ``KeyboardInterrupt``; a second signal raises at
    once. Either way the staged output directory is removed.
    """

    def __init__(self):
        self.pending: int | None = None

    def _handler(self, signum, frame):
        if self.pending is not None:
            raise KeyboardInterrupt
        self.pending = signum

    def check(self) -> None:
        """Raises ``KeyboardInterrupt`` if a signal arrived."""
        if self.pending is not None:
            raise KeyboardInterrupt

    def install(self) -> Callable[[], None]:
        """Installs the handlers; returns a function restoring the previous ones."""
        import signal

        self.pending = None
        previous = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self._handler)
        except (ValueError, AttributeError):  # not the main thread
            pass

        def restore():
            for sig, h in previous.items():
                signal.signal(sig, h)

        return restore


_SIGNALS = _DeferredSignals()


class ProgressBar:
    """A minimal text progress bar on a stream (stderr), redrawn in place with ``\\r``.

    Args:
        total: Number of steps.
        label: Text before the bar.
        enabled: Draw at all (``None``: only when ``stream`` is a TTY).
        stream: Output stream (default ``sys.stderr``).
        width: Bar width in characters.
        min_interval: Minimum seconds between redraws (the last one is always drawn).
    """

    def __init__(
        self,
        total: int,
        *,
        label: str = "",
        enabled: bool | None = None,
        stream=None,
        width: int = 28,
        min_interval: float = 0.1,
    ):
        self.total = max(int(total), 1)
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self.width = width
        self.min_interval = min_interval
        self._t0 = time.perf_counter()
        self._first: tuple[int, float] | None = None
        self._last_draw = -math.inf
        self._len = 0

    def start(self) -> None:
        """Draws the empty bar (the first chunk includes compilation)."""
        self._t0 = time.perf_counter()
        self._draw(0, "compiling...")

    def update(self, step: int, record: dict | None = None) -> None:
        """Callback for :func:`mmdflow.flows.run`: ``update(step, record)``.

        Also the safe point where a pending Ctrl-C / SIGTERM raises ``KeyboardInterrupt``
        (see :class:`_DeferredSignals`), so every command driven through a progress
        bar can be interrupted cleanly.
        """
        _SIGNALS.check()
        now = time.perf_counter()
        if self._first is None:
            self._first = (step, now)
        if step < self.total and now - self._last_draw < self.min_interval:
            return
        info = ""
        if record is not None and "mmd2" in record:
            info = f"MMD^2 {record['mmd2']:.3e}"
        elapsed = now - self._t0
        info += f"  {elapsed:6.1f}s"
        s0, t0 = self._first
        if step < self.total and step > s0:
            eta = (now - t0) / (step - s0) * (self.total - step)
            info += f"  eta {eta:5.1f}s"
        self._draw(step, info)

    def _draw(self, step: int, info: str) -> None:
        if not self.enabled:
            return
        frac = min(max(step / self.total, 0.0), 1.0)
        filled = int(round(frac * self.width))
        bar = "#" * filled + "." * (self.width - filled)
        digits = len(str(self.total))
        line = f"{self.label} [{bar}] {step:>{digits}}/{self.total} {100 * frac:3.0f}%  {info}"
        pad = " " * max(self._len - len(line), 0)
        self.stream.write("\r" + line + pad)
        self.stream.flush()
        self._len = len(line)
        self._last_draw = time.perf_counter()

    def close(self) -> None:
        """Ends the line (if anything was drawn)."""
        if self.enabled and self._len:
            self.stream.write("\n")
            self.stream.flush()
        self._len = 0
