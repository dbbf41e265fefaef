"""Loading the benchmark scripts (``benchmarks/*.py``, not a package) as modules in tests."""

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a fresh module (its ``main(argv)`` runs the script)."""
    spec = importlib.util.spec_from_file_location(
        f"mmdflow_bench_{name}", BENCHMARKS / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
