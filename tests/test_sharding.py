"""Sample-axis sharding (mmdflow.sharding): sharded results equal the single-device ones.

Kernel sums, MMD^2, witnesses, the MMD flow, exact and random-feature Sobolev descent,
the data-parallel generator step (direction + optax update) and ``mmdflow flow --devices``.

The device count must be fixed before JAX initialises, so the multi-device checks
run once, in a subprocess with 8 host CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``) and float64; it prints one
JSON object of relative errors and shardings, which the tests below read. The script and
its background launcher live in ``_sharding_checks.py``.
"""

import json

import _sharding_checks
import jax
import numpy as np
import pytest
from _scripts import load_benchmark

import mmdflow
from mmdflow import kernels, ops, sharding

NUM_DEVICES = _sharding_checks.NUM_DEVICES
RTOL = 1e-10  # float64; observed errors are ~1e-15 (summation order only)


@pytest.fixture(scope="module")
def results(request):
    # started in the background by conftest.py when collection finished; this waits for it
    return _sharding_checks.results(_sharding_checks.shared_dir(request.config))


DATA_SPEC = ["NamedSharding", "('data',)", ["data"]]


def test_subprocess_has_eight_devices(results):
    assert results["device_count"] == NUM_DEVICES


def test_shard_points_pads_explicitly(results):
    sp = results["shard_points"]
    assert sp == {"rows": 1008, "n": 1003, "spec": DATA_SPEC, "pad_weight": 0.0}


@pytest.mark.parametrize("strategy", ops.STRATEGIES)
@pytest.mark.parametrize(
    "check",
    [
        "matvec",
        "grad_matvec",
        "mmd2_biased",
        "mmd2_unbiased",
        "mmd2_points",
        "mmd2_linear",
        "witness_grad_even",
        "witness_grad_points",
        "witness_points",
    ],
)
def test_sharded_values_equal_single_device(results, strategy, check):
    assert results[strategy][check] < RTOL


@pytest.mark.parametrize("strategy", ops.STRATEGIES)
@pytest.mark.parametrize("check", ["grad_matvec", "witness_grad_even", "witness_grad_points"])
def test_outputs_stay_sharded(results, strategy, check):
    assert results[strategy][check + "_spec"] == DATA_SPEC


@pytest.mark.parametrize("strategy", ops.STRATEGIES)
@pytest.mark.parametrize("wrt", ["x", "y", "wx", "bw"])
def test_gradient_of_sharded_mmd2(results, strategy, wrt):
    assert results[strategy]["grad_mmd2_" + wrt] < RTOL


@pytest.mark.parametrize("strategy", ops.STRATEGIES)
def test_sharded_mmd_flow_matches_unsharded(results, strategy):
    r = results[strategy]
    assert r["flow_particles"] < RTOL
    assert r["flow_mmd2"] < RTOL
    assert r["flow_kinetic"] < RTOL
    assert r["flow_spec"] == DATA_SPEC


def test_explicit_mesh_and_sobolev_descent(results):
    assert results["explicit_mmd2"] < RTOL
    assert results["sobolev_rff"] < RTOL
    assert results["sobolev_rff_spec"] == DATA_SPEC


@pytest.mark.parametrize("strategy", ops.STRATEGIES)
def test_sharded_exact_sobolev_descent_matches_unsharded(results, strategy):
    assert results[strategy]["sobolev_exact"] < 1e-6
    assert results[strategy]["sobolev_exact_spec"] == DATA_SPEC


def test_neural_sobolev_descent_sharded_by_jit(results):
    assert results["neural"] < 1e-6
    assert results["neural_spec"] == DATA_SPEC


def test_sharded_stepper_random_features(results):
    assert results["stepper_rff"] < RTOL
    assert results["stepper_rff_spec"] == DATA_SPEC


@pytest.mark.parametrize(
    "case",
    [
        "kernelized_allgather",
        "kernelized_ring",
        "mmd-gd_ring",
        "grad-penalty_ring",
        "param-sobolev_allgather",
    ],
)
def test_data_parallel_generator_step_matches_single_device(results, case):
    r = results["gen_" + case]
    assert r["direction"] < 1e-6 and r["params"] < 1e-6 and r["info"] < 1e-6
    if case.startswith("kernelized"):
        assert r["cg_iterations"][0] == r["cg_iterations"][1] > 1
    elif case.startswith(("grad-penalty", "param-sobolev")):  # Cholesky on one device, CG sharded
        assert r["cg_iterations"][0] == 0 and r["cg_iterations"][1] > 1
    else:
        assert r["cg_iterations"] == [0, 0]


def test_data_parallel_warm_start_and_trainer(results):
    assert results["gen_warm_start"] < 1e-6
    assert results["gen_trainer"] < 1e-6


@pytest.mark.parametrize(("name", "tol"), [("rff", 1e-4), ("exact", 2e-2), ("mmd", 1e-4)])
def test_cli_devices_option(results, name, tol):
    # float32, n = 60 (exact critic by default): Cholesky on one device vs sharded CG,
    # which stalls near 1e-3 relative residual in float32 (float64 equality: tested above)
    r = results["cli_" + name]
    assert r["shape"] == [60, 2] and r["devices"] == 8
    assert r["particles"] < tol and r["mmd2"] < tol


def test_not_an_average_of_per_device_mmds(results):
    # the sharded estimator is the global one; the mean of the 8 per-shard MMD^2s is not
    assert results["mmd2_even"] < RTOL
    assert results["per_device_mean_rel"] > 1e-2


# ---------------------------------------------------------------- in-process argument checks
def test_argument_validation():
    mesh = sharding.make_mesh(1)
    k = kernels.Gaussian(1.0)
    x = np.zeros((4, 2))
    on_mesh = ops.SumConfig(mesh=mesh)
    with pytest.raises(ValueError, match="strategy"):
        ops.SumConfig(mesh=mesh, strategy="tree")
    with pytest.raises(ValueError, match="no axis named"):
        ops.SumConfig(mesh=mesh, axis="batch")
    with pytest.raises(ValueError, match="num_devices"):
        sharding.make_mesh(jax.device_count() + 1)
    with pytest.raises(ValueError, match=r"`sums` must be an ops.SumConfig"):
        mmdflow.mmd2(x, x, k, sums="ring")
    sp = sharding.shard_points(x, mesh)
    with pytest.raises(ValueError, match="ShardedPoints"):
        mmdflow.mmd2(sp, x, k, wx=np.ones(4), sums=on_mesh)
    with pytest.raises(ValueError, match="d=3"):
        ops.kernel_matvec(k, x, np.zeros((4, 3)), np.ones(4), sums=on_mesh)
    with pytest.raises(ValueError, match="`w` must have shape"):
        ops.kernel_matvec(k, x, x, np.ones(5), sums=on_mesh)
    # flows on a mesh and generator directions
    from mmdflow import flows, kernelized

    with pytest.raises(ValueError, match="axis"):
        flows.make("mmd", k, mesh=mesh, axis="model")
    with pytest.raises(ValueError, match="cholesky"):
        flows.make("sobolev", k, solver="cholesky", mesh=mesh)
    gen = lambda p, z: z @ p
    w = np.eye(2)
    with pytest.raises(ValueError, match=r"gen_fn\(params, z\)"):
        kernelized.direction(gen, w, x, np.zeros((4, 3)), k, sums=on_mesh)


# ---------------------------------------------------------------- benchmark script
def _load_scaling():
    return load_benchmark("scaling")


def test_comm_estimate_formulas():
    est = _load_scaling().comm_estimate(10**7, 10**7, 2, 8)
    s = 2e7 * 3 * 4  # (n + m)(d + 1) fp32 bytes
    assert est["source_bytes"] == s
    assert est["allgather"]["fwd_bytes"] == est["ring"]["fwd_bytes"] == 7 / 8 * s
    assert est["ring"]["peak_source_bytes"] == s / 4
    assert est["ring"]["fwd_bwd_bytes"] == 22 / 8 * s
    assert est["allgather"]["fwd_bwd_bytes"] == 14 / 8 * s


def test_scaling_script_smoke(tmp_path):
    out = tmp_path / "s.json"
    args = ["--quick", "--devices", "1", str(jax.device_count() + 1), "--strong-n", "64"]
    args += ["--weak-n0", "32", "--repeats", "1", "--block-size", "32", "--out", str(out)]
    args += ["--memory-n", "64", "--memory-d", "2"]
    args += ["--gen-strong-m", "32", "--gen-weak-m0", "16", "--gen-cg-iters", "2"]
    result = _load_scaling().main(args)
    assert json.loads(out.read_text())["metadata"]["schema"] == result["metadata"]["schema"]
    recs = result["records"]
    ok = [r for r in recs if r["status"] == "ok"]
    assert {r["strategy"] for r in ok} == {"allgather", "ring", "baseline"}
    assert {r["op"] for r in ok} == {"witness_grad", "generator_step"}
    assert all(r["run_s"] > 0 and r["devices"] == 1 for r in ok)
    assert all("only" in r["reason"] for r in recs if r["status"] != "ok")
    assert len(result["comm_estimate"]) == 6
    assert {r["strategy"] for r in result["memory"]} == {"allgather", "ring"}
    assert all(r["temp_bytes"] >= 0 for r in result["memory"])
