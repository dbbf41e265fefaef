"""The ``mmdflow`` command line.

Subcommands:

* ``mmdflow flow``: moves particles drawn from a source distribution towards a
  target (Sobolev descent, MMD flow or neural Sobolev descent) and writes the
  final particles, the trajectory, metrics and two pictures.
* ``mmdflow color-transfer``: recolors an image with the color distribution of
  another one by Sobolev descent of its pixel colors in ``[0, 1]^3``.

Defaults are chosen to work on unseen data without tuning (see the constants
below): the base bandwidth is the median heuristic on source and target pooled;
``flow`` uses a mixture of Gaussians at ``median x {1/8, 1/4, 1/2, 1}`` (the median
alone blurs fine structure such as rings or a checkerboard); Sobolev descent uses
random Fourier features *redrawn at every step* (``SobolevField(...,
resample_features=True)``; fixed
features let the particles settle on configurations that only fool those
features); the Sobolev ridge ``--reg`` is in units of ``1 / bandwidth^2`` and the
MMD-flow step in units of ``bandwidth^2``, so results do not depend on the scale
of the data.

``--out`` is a directory that mmdflow owns: it holds a marker file
(``.mmdflow-run.json``) listing the files mmdflow wrote, and mmdflow only ever replaces
or removes those (``--overwrite`` needs the marker; see :mod:`mmdflow.cli._rundir`).
Every file is renamed into place once written. Bad input gives a one-line
``mmdflow: error: ...`` on stderr and exit status 2 (1 for failures during the run,
such as a diverging flow; 130 on Ctrl-C and 143 on SIGTERM, after keeping the last
checkpoint).

Example:
    $ mmdflow flow --out runs/demo                       # gaussian -> 8gaussians
    $ mmdflow flow --source moons --target rings --out runs/rings
    $ mmdflow flow --source x.npy --target y.npy --method mmd --out runs/xy
    $ mmdflow color-transfer --source astronaut --target coffee --out runs/color
    $ python -m mmdflow --help
"""

from __future__ import annotations

import contextlib
import os
import sys

from mmdflow._compile_cache import enable_compilation_cache
from mmdflow.cli._common import (
    _ENV_DEBUG,
    _SIGNALS,
    MIXTURE_FACTORS,
    CLIError,
    ProgressBar,
    _error,
)
from mmdflow.cli._inputs import resolve_num_features
from mmdflow.cli._parser import build_parser

__all__ = [
    "CLIError",
    "ProgressBar",
    "build_parser",
    "main",
    "resolve_num_features",
    "MIXTURE_FACTORS",
]


def main(argv: list[str] | None = None) -> int:
    """Runs the ``mmdflow`` command.

    Args:
        argv: Arguments without the program name (default ``sys.argv[1:]``).

    Returns:
        Exit status: 0 on success, 2 for bad input (one-line message on stderr),
        1 for failures during the run, 130 on Ctrl-C (SIGINT), 143 on SIGTERM.
    """
    # XLA logs "constant folding is taking > 1s" at ERROR level when a jitted function
    # closes over large arrays (the flow drivers close over the target samples): pure
    # noise for a command-line user. Set TF_CPP_MIN_LOG_LEVEL yourself to see it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # the persistent compilation cache: $MMDFLOW_COMPILATION_CACHE (a directory, or "off"),
    # else ~/.cache/mmdflow/jax
    enable_compilation_cache()
    parser = build_parser()
    restore = _SIGNALS.install()
    try:
        args = parser.parse_args(argv)
        return int(args.func(args))
    except SystemExit as e:  # --help, --version
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    except CLIError as e:
        _error(str(e))
        return e.code
    except KeyboardInterrupt as e:
        import signal

        code = _SIGNALS.exit_code
        name = signal.Signals(code - 128).name
        note = e.args[0] if e.args and isinstance(e.args[0], str) else ""  # e.g. how to resume
        print(f"\nmmdflow: interrupted ({name}){note}", file=sys.stderr)
        return code
    except BrokenPipeError:  # stdout closed early (`mmdflow ... | head`): not an error of ours
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes at exit
        return 141  # 128 + SIGPIPE, as a shell reports a process killed by a broken pipe
    except Exception as e:  # one line for the user; MMDFLOW_DEBUG=1 for the traceback
        if os.environ.get(_ENV_DEBUG):
            raise
        _error(f"{type(e).__name__}: {e} (set {_ENV_DEBUG}=1 for a traceback)")
        return 1
    finally:
        restore()
        _SIGNALS.pending = None
