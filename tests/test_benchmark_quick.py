"""Smoke test of the kernel-sum benchmark script (benchmarks/kernel_sums.py)."""

import json
import types

import jax.numpy as jnp
import numpy as np
import pytest
from _cli import PNG_MAGIC
from _scripts import BENCHMARKS, load_benchmark


def _load_script():
    return load_benchmark("kernel_sums")


def test_kernel_sums_quick_writes_json(tmp_path, monkeypatch):
    bench = _load_script()
    # the benchmark's gc.collect() before each configuration (timing hygiene) is slow in a
    # pytest process holding many objects, and the smoke test does not time anything
    monkeypatch.setattr(bench, "gc", types.SimpleNamespace(collect=lambda: 0))
    out = tmp_path / "b.json"
    # three of the six ops (CI time: each op is a compile per implementation): a value sum,
    # the Hessian sum (which ott-jax lacks: a skipped record) and the bandwidth gradient of
    # MMD^2 (autodiff through every implementation); the baselines' sums are checked against
    # NumPy below
    ops = ["matvec", "hess_matvec", "kernel_grad_of_mmd2"]
    bench.main(
        ["--quick", "--n", "64", "--d", "2", "--repeats", "1", "--ops", *ops, "--out", str(out)]
    )

    assert out.exists()
    result = json.loads(out.read_text())
    assert result["metadata"]["jax"]
    records = result["records"]
    ran = [r for r in records if r["status"] == "ok"]
    assert {"dense", "blocked"} <= {r["impl"] for r in ran}
    assert {r["op"] for r in records} == set(ops)
    assert ran
    assert all(r["run_s"] > 0 for r in ran)
    assert all(r["compile_s"] > 0 for r in ran)
    skipped = [r for r in records if r["status"] != "ok"]
    assert all(r.get("reason") for r in skipped)
    # the plot next to the JSON
    png = out.with_suffix(".png")
    assert png.stat().st_size > 0
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_kernel_sums_no_plot_writes_no_png(tmp_path):
    bench = _load_script()
    out = tmp_path / "b.json"
    args = ["--impls", "blocked", "--ops", "matvec", "--n", "64", "--d", "2", "--repeats", "1"]
    bench.main([*args, "--no-plot", "--out", str(out)])
    assert out.exists()
    assert list(tmp_path.glob("*.png")) == []


def test_plot_results_replots_a_json(tmp_path):
    # a stored result (e.g. a GPU JSON fetched later) is re-plotted without re-running
    plot = load_benchmark("plot_results")
    rec = lambda op, impl, n, **kw: dict(kernel="gaussian", op=op, impl=impl, n=n, d=2, **kw)
    records = [
        rec(op, impl, n, status="ok", gpairs_per_s=100.0 * n / 16384)
        for op in ("matvec", "grad_of_mmd2")
        for impl in ("blocked", "pallas")
        for n in (16384, 65536)
    ]
    records.append(rec("matvec", "dense", 65536, status="skipped", reason="too big"))
    metadata = {"device_kind": "NVIDIA H100", "platform": "gpu", "exp_unit_bound_gpairs": 4200.0}
    src = tmp_path / "r.json"
    src.write_text(json.dumps({"metadata": metadata, "records": records}))
    assert plot.main([str(src)]) == tmp_path / "r.png"
    assert (tmp_path / "r.png").read_bytes()[:8] == PNG_MAGIC
    assert plot.main([str(src), "--out", str(tmp_path / "x.png")]).stat().st_size > 0


@pytest.mark.parametrize("baseline", ["plain_jax_chunked", "plain_jax_gemm", "ott_online"])
def test_baselines_compute_the_same_sums_as_numpy(baseline):
    # the plain-JAX and ott-jax baselines must be the same ops as mmdflow's, or the
    # comparison rows mean nothing (ott-jax is optional: the ".[bench]" extra)
    bench = _load_script()
    if baseline == "ott_online" and bench.ott_pointcloud() is None:
        pytest.skip('ott-jax is not installed (pip install -e ".[bench]")')
    mv, gmv, hmv = bench.BASELINES[baseline]
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)), rng.normal(size=(30, 3)) + 0.5
    w, h = rng.uniform(0.5, 1.5, 30), 1.3
    diff = x[:, None, :] - y[None, :, :]
    kxy = np.exp(-np.sum(diff**2, -1) / (2 * h**2))
    args = (jnp.asarray(x), jnp.asarray(y), jnp.asarray(w), 16)
    np.testing.assert_allclose(mv(h, *args), kxy @ w, rtol=1e-10)
    want = np.einsum("ij,j,ijd->id", kxy, w, -diff) / h**2
    np.testing.assert_allclose(gmv(h, *args), want, rtol=1e-9, atol=1e-12)
    if hmv is not None:  # cross-Hessian sum: k_ij [e_j - r_ij (r_ij . e_j) / h^2] / h^2
        e = rng.normal(size=(30, 3))
        re = np.einsum("ijd,jd->ij", diff, e)
        want = (kxy @ e - np.einsum("ij,ij,ijd->id", kxy, re, diff) / h**2) / h**2
        got = hmv(h, jnp.asarray(x), jnp.asarray(y), jnp.asarray(e), 16)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_flow_steps_quick_writes_json(tmp_path):
    bench = load_benchmark("flow_steps")
    out = tmp_path / "f.json"
    args = ["--quick", "--n", "128", "256", "--features", "64", "--cg-iters", "3"]
    steppers = [*bench.STEPPERS, "mmd", "svgd"]  # and registry flows by name (svgd: a density)
    result = bench.main([*args, "--repeats", "1", "--steppers", *steppers, "--out", str(out)])
    assert json.loads(out.read_text())["metadata"]["schema"] == bench.SCHEMA
    recs = result["records"]
    assert [(r["stepper"], r["n"]) for r in recs] == [(s, n) for s in steppers for n in (128, 256)]
    assert all(r["status"] == "ok" and r["finite"] and r["run_s"] > 0 for r in recs)
    for r in recs:
        if r["stepper"] == "sobolev_rff":
            # the model flop count is XLA's own count up to the terms it leaves out
            assert r["model_flops"] == bench.rff_model_flops(r["n"], 64, 2)
            assert 0.7 < r["xla_flops"] / r["model_flops"] < 1.5
        else:
            assert r["gpairs_per_s"] > 0


def test_gpu_session_script_parses_and_rejects_unknown_stages():
    import subprocess

    script = BENCHMARKS / "gpu_session.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    proc = subprocess.run(["bash", str(script), "nope"], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_flows_compare_quick_writes_json_and_plot(tmp_path):
    """Every-flow comparison (benchmarks/flows_compare.py): ``--quick`` sizes, two flows
    (one per kind) to keep the test short; the full ``--quick`` runs all of them in < 60 s."""
    bench = load_benchmark("flows_compare")
    out = tmp_path / "c.json"
    args = ["--quick", "--flows", "mmd", "svgd", "--n", "24", "--steps", "6"]
    result = bench.main(
        [*args, "--scaling-n", "16", "32", "--scaling-flows", "mmd", "--out", str(out)]
    )
    stored = json.loads(out.read_text())
    assert stored["metadata"]["schema"] == bench.SCHEMA and stored["metadata"]["jax"]
    runs = {(r["flow"], r["problem"]): r for r in result["runs"]}
    assert set(runs) == {("mmd", "gaussian->8gaussians"), ("svgd", "banana")}
    for r in runs.values():
        assert r["steps_done"] == 6 and r["mmd2_end"] < r["mmd2_start"]
        assert set(r["thresholds"]) == {str(t) for t in bench.THRESHOLDS}
    svgd = runs[("svgd", "banana")]
    assert svgd["ksd2"][-1] < svgd["ksd2"][0] and svgd["iid_mmd2"] > 0
    assert svgd["mean_error"] >= 0 and svgd["cov_error"] >= 0
    assert [s["flow"] for s in result["scaling"]] == ["mmd"]
    assert all(s["exponent"] is not None for s in result["scaling"])
    assert out.with_suffix(".png").read_bytes()[:8] == PNG_MAGIC


def test_flows_compare_covers_every_registry_flow():
    """Each flow of the registry has problems of its kind (a new flow is picked up)."""
    from mmdflow import flows

    bench = load_benchmark("flows_compare")
    assert bench.parse_args([]).flows == list(flows.FLOWS)
    for name in flows.FLOWS:
        assert bench.takes(name, density=True) or bench.takes(name, density=False)
    density = {n for n in flows.FLOWS if bench.takes(n, density=True)}
    samples = {n for n in flows.FLOWS if bench.takes(n, density=False)}
    assert {"svgd", "ksd", "srmmd"} <= density and {"mmd", "srmmd"} <= samples
    assert bench.DENSITY_PROBLEMS and bench.SAMPLE_PROBLEMS


def test_tile_probe_times_each_candidate_and_rejects_bad_tiles(tmp_path):
    bench = load_benchmark("tile_probe")
    out = tmp_path / "t.json"
    args = ["--n", "40", "--d", "9", "--ops", "grad", "hess", "--tiles", "default", "16x32"]
    result = bench.main([*args, "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text())["metadata"]["schema"] == bench.SCHEMA
    recs = result["records"]
    assert [(r["op"], len(r["ms"])) for r in recs] == [("grad", 2), ("hess", 2)]
    assert all(v > 0 for r in recs for v in r["ms"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--tiles", "16by32"])
