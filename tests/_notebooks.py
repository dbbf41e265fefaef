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
    loops, convolutions): the subprocess compiles at XLA's CPU optimisation level 2
    (:func:`_cli.run_bound_env`), not the test processes' 0, which ran the 04 notebook's
    digits ConvGenerator at 0.37 s per kernelized step instead of 0.02 s.
    """
    import subprocess
    import sys

    from _cli import run_bound_env

    env = run_bound_env(MMDFLOW_NOTEBOOK_SMALL="1", MPLBACKEND="Agg")
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
