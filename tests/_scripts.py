"""Loading the benchmark scripts (``benchmarks/*.py``, not a package) as modules in tests."""

import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a fresh module (its ``main(argv)`` runs the script).

    ``benchmarks/`` goes on ``sys.path`` first, as when the script runs as
    ``python benchmarks/<name>.py``, so that its ``import _common`` (and ``plot_results``)
    resolves.
    """
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(
        f"mmdflow_bench_{name}", BENCHMARKS / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
