"""Helpers of the command-line tests: ``mmdflow`` run in-process, its outputs read back."""

import json
import os
import subprocess
import sys
from pathlib import Path

from mmdflow import cli

#: the first bytes of every PNG file
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

#: XLA's CPU optimisation level in :func:`run_bound_env` (the test processes compile at 0)
OPT_LEVEL = "--xla_backend_optimization_level=2"


def run_bound_env(**extra: str) -> dict[str, str]:
    """The environment of a subprocess whose time goes to running programs, not compiling.

    The test processes' XLA flags (``conftest.py``) with optimisation level 2 instead of 0,
    whose unoptimised code runs training loops up to 30x slower; float64 and strict rank
    promotion on, as in the test processes; ``extra`` variables on top. Measured on 2 cores
    (quiet): the 04 notebook 31 s at level 0, 26 s at 1, 21 s at 2, 28 s at 3 (the default;
    backend compilation 11 s at 2, 18 s at 3); the neural letter run of ``test_defaults.py``
    18.4 s in the test process, 12.9 s in a subprocess at level 2.
    """
    env = dict(os.environ, JAX_ENABLE_X64="1", JAX_NUMPY_RANK_PROMOTION="raise", **extra)
    flags = env.get("XLA_FLAGS", "").split()
    keep = [f for f in flags if not f.startswith("--xla_backend_optimization_level")]
    env["XLA_FLAGS"] = " ".join([*keep, OPT_LEVEL])
    return env


def run_subprocess(*argv, timeout: float = 600) -> tuple[int, str, str]:
    """``python -m mmdflow ARGV`` in a subprocess with :func:`run_bound_env`:
    ``(exit code, stdout, stderr)``."""
    proc = subprocess.run(
        [sys.executable, "-m", "mmdflow", *map(str, argv)],
        env=run_bound_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout, proc.stderr


def run(capsys, *argv) -> tuple[int, str, str]:
    """``mmdflow ARGV`` in this process (arguments as strings): ``(exit code, stdout, stderr)``."""
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def metrics(out: Path) -> dict:
    """A run directory's ``metrics.json``."""
    return json.loads((out / "metrics.json").read_text())
