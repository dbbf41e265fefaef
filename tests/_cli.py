"""Helpers of the command-line tests: ``mmdflow`` run in-process, its outputs read back."""

import json
from pathlib import Path

from mmdflow import cli

#: the first bytes of every PNG file
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(capsys, *argv) -> tuple[int, str, str]:
    """``mmdflow ARGV`` in this process (arguments as strings): ``(exit code, stdout, stderr)``."""
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def metrics(out: Path) -> dict:
    """A run directory's ``metrics.json``."""
    return json.loads((out / "metrics.json").read_text())
