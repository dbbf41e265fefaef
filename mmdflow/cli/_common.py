"""Shared pieces of the ``mmdflow`` command: defaults, errors, argument types, staged output, progress."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

#: ``--kernel mixture``: bandwidths are these multiples of the base (median) bandwidth.
MIXTURE_FACTORS = (0.125, 0.25, 0.5, 1.0)

#: color transfer: a larger ridge gives a smoother color map (fewer posterized patches
#: when the palettes differ a lot) and still matches the target colors closely.
COLOR_REG = 0.1
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


class _DeferredSignals:
    """SIGINT/SIGTERM handling that stops at safe points.

    An asynchronous ``KeyboardInterrupt`` can land inside JAX's dispatch machinery
    and crash the interpreter at exit. Instead, the first signal is only recorded
    and :meth:`check` (called between compiled chunks and before outputs are
    committed) raises ``KeyboardInterrupt``; the command then keeps its last
    checkpoint and exits with ``128 + signal`` (130 for Ctrl-C, 143 for SIGTERM).

    While the main thread is inside a compiled computation Python cannot run signal
    handlers, so a watcher thread reads the signals from a wakeup file descriptor:
    if no safe point is reached within :attr:`patience` seconds it says so on stderr,
    and a second signal ends the process at once (``os._exit``; every file mmdflow
    writes is renamed into place, so the last checkpoint stays intact).
    """

    #: seconds before the watcher says that a compiled step is still running
    patience: float = 2.0

    def __init__(self):
        self.pending: int | None = None
        self.raised = False

    def _handler(self, signum, frame):
        if self.pending is not None:
            self.raised = True
            raise KeyboardInterrupt
        self.pending = signum

    @property
    def exit_code(self) -> int:
        """``128 + signal`` of the pending signal (130 when none is recorded)."""
        return 128 + (self.pending or 2)

    def check(self) -> None:
        """Raises ``KeyboardInterrupt`` if a signal arrived."""
        if self.pending is not None:
            self.raised = True
            raise KeyboardInterrupt

    def _watch(self, fd: int, stop) -> None:
        import select
        import signal
        import threading

        seen = 0
        timer = None
        while not stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                continue
            try:
                data = os.read(fd, 64)
            except OSError:
                return
            for signum in data:
                if signum not in (signal.SIGINT, signal.SIGTERM):
                    continue
                seen += 1
                if seen == 1:
                    timer = threading.Timer(self.patience, self._still_running)
                    timer.daemon = True
                    timer.start()
                elif not self.raised:  # the main thread is stuck in a compiled computation
                    sys.stderr.write("\nmmdflow: aborted (second signal)\n")
                    sys.stderr.flush()
                    os._exit(128 + signum)
        if timer is not None:
            timer.cancel()

    def _still_running(self) -> None:
        if not self.raised:
            sys.stderr.write(
                "\nmmdflow: stopping when the current compiled step ends (it can take a while); "
                "signal again to abort at once, keeping the last checkpoint\n"
            )
            sys.stderr.flush()

    def install(self) -> Callable[[], None]:
        """Installs the handlers and the watcher; returns a function restoring the previous state."""
        import signal
        import threading

        self.pending = None
        self.raised = False
        previous = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self._handler)
        except (ValueError, AttributeError):  # not the main thread
            pass
        watcher = None
        if previous:
            r, w = os.pipe()
            os.set_blocking(w, False)
            try:
                old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
            except ValueError:
                os.close(r)
                os.close(w)
            else:
                stop = threading.Event()
                thread = threading.Thread(target=self._watch, args=(r, stop), daemon=True)
                thread.start()
                watcher = (r, w, old_fd, stop, thread)

        def restore():
            for sig, h in previous.items():
                signal.signal(sig, h)
            if watcher is not None:
                r, w, old_fd, stop, thread = watcher
                signal.set_wakeup_fd(old_fd)
                stop.set()
                thread.join(timeout=1.0)
                os.close(r)
                os.close(w)

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
        elif record is not None and "ksd2" in record:
            info = f"KSD^2 {record['ksd2']:.3e}"
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
