"""Shared helper for the notebook tests: the code cells of a notebook as one script."""

import json
from pathlib import Path


def notebook_code(path: Path) -> str:
    """Joins a notebook's code cells, dropping IPython magics and shell lines (``%``, ``!``)."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    lines = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = cell["source"]
        src = "".join(src) if isinstance(src, list) else src
        lines += [ln for ln in src.splitlines() if not ln.lstrip().startswith(("%", "!"))]
        lines.append("")
    return "\n".join(lines)


#: the XLA CPU optimisation level of :func:`run_small`'s subprocess
OPT_LEVEL = "--xla_backend_optimization_level=2"

#: what :func:`run_small` runs in its subprocess (``argv``: the notebook, the expression)
_RUNNER = r"""
import json, sys
import matplotlib
matplotlib.use("Agg")
import jax
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
path, expr, code = sys.argv[1], sys.argv[2], sys.stdin.read()
ns = {"__name__": "__notebook__"}
exec(compile(code, path, "exec"), ns)
print("RESULT " + json.dumps(eval(expr, ns)))
"""


def run_small(path: Path, expr: str, timeout: float = 900) -> object:
    """Runs a notebook's code (``MMDFLOW_NOTEBOOK_SMALL=1``, Agg, in its folder) in a
    subprocess and returns ``expr`` evaluated in its namespace (JSON: NaN allowed).

    For notebooks whose run time is spent running, not compiling, programs (training
    loops, convolutions): the subprocess compiles at XLA's CPU optimisation level 2, not the
    test processes' ``--xla_backend_optimization_level=0`` (``conftest.py``), whose
    unoptimised code ran the notebook's steps up to 30x slower (the 04 notebook's digits
    ConvGenerator: 0.37 s per kernelized step instead of 0.02 s). Measured for the 04
    notebook with the suite's other flags (2 cores, quiet): 31 s at level 0, 26 s at 1,
    21 s at 2, 28 s at 3 (the default; backend compilation 11 s at 2, 18 s at 3). Float64 and
    strict rank promotion are on, as in the test processes.
    """
    import os
    import subprocess
    import sys

    env = dict(os.environ, MMDFLOW_NOTEBOOK_SMALL="1", MPLBACKEND="Agg")
    flags = env.get("XLA_FLAGS", "").split()
    env["XLA_FLAGS"] = " ".join(
        [*(f for f in flags if not f.startswith("--xla_backend_optimization_level")), OPT_LEVEL]
    )
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(path), expr],
        input=notebook_code(path),
        cwd=Path(path).parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads(lines[-1][len("RESULT ") :])
