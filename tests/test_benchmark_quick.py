"""Smoke test of the kernel-sum benchmark script (benchmarks/kernel_sums.py)."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "kernel_sums.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("mmdflow_bench_kernel_sums", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kernel_sums_quick_writes_json(tmp_path):
    bench = _load_script()
    out = tmp_path / "b.json"
    bench.main(["--quick", "--n", "256", "--d", "2", "--repeats", "1", "--out", str(out)])

    assert out.exists()
    result = json.loads(out.read_text())
    assert result["metadata"]["jax"]
    records = result["records"]
    ran = [r for r in records if r["status"] == "ok"]
    assert {"dense", "blocked"} <= {r["impl"] for r in ran}
    assert ran
    assert all(r["run_s"] > 0 for r in ran)
    assert all(r["compile_s"] > 0 for r in ran)
    skipped = [r for r in records if r["status"] != "ok"]
    assert all(r.get("reason") for r in skipped)
