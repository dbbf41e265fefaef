"""Sample-axis sharding (mmdflow.sharding): sharded results equal the single-device ones.

Kernel sums, MMD^2, witnesses, the MMD flow, exact and random-feature Sobolev descent,
the data-parallel generator step (direction + optax update) and ``mmdflow flow --devices``.

The device count must be fixed before JAX initialises, so the multi-device checks
run once, in a subprocess with 8 host CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``) and float64; it prints one
JSON object of relative errors and shardings, which the tests below read.
"""

import fcntl
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from mmdflow import kernels, sharding

NUM_DEVICES = 8
RTOL = 1e-10  # float64; observed errors are ~1e-15 (summation order only)

CHECKS = r"""
import json
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
import mmdflow
from mmdflow import flows, kernels, ops, sharding as S
from jax.sharding import NamedSharding, PartitionSpec as P

out = {"device_count": jax.device_count()}
mesh = S.make_mesh()
rng = np.random.default_rng(0)
n, m = 1003, 517  # neither a multiple of 8
x = rng.normal(size=(n, 2))
y = 0.8 * rng.normal(size=(m, 2)) + 0.7
wx, wy = rng.uniform(0.2, 1.0, n), rng.uniform(0.2, 1.0, m)
k = kernels.Gaussian(0.9)
bs = 64  # two tiles per 126-row shard


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def spec(a):
    s = a.sharding
    return [type(s).__name__, str(tuple(s.spec)), list(getattr(s.mesh, "axis_names", ()))]


xs = S.shard_points(x, mesh, weights=wx)
ys = S.shard_points(y, mesh, weights=wy)
out["shard_points"] = {"rows": xs.num_padded, "n": xs.n, "spec": spec(xs.points),
                       "pad_weight": float(jnp.sum(jnp.abs(xs.weights[n:])))}
W = rng.normal(size=(m, 2))
xe, ye = x[:1000], y[:512]  # multiples of 8
noise = lambda c: 0.3 * 0.5 ** c


# single-device references (dense kernel sums), computed once
@jax.jit
def references(x, y, wx, wy, W, xe, ye):
    ref = {"matvec": ops.kernel_matvec(k, x, y, wy, impl="dense"),
           "grad_matvec": ops.kernel_grad_matvec(k, x, y, W, impl="dense"),
           "mmd2_points": mmdflow.mmd2(x, y, k, wx=wx, wy=wy, impl="dense"),
           "witness_grad_even": mmdflow.witness_grad(xe, xe, ye, k, impl="dense"),
           "witness_grad_points": mmdflow.witness_grad(x, x, y, k, wx=wx, wy=wy, impl="dense"),
           "witness_points": mmdflow.witness(x, x, y, k, wx=wx, wy=wy, impl="dense"),
           "mmd2_even": mmdflow.mmd2(xe, ye, k, impl="dense")}
    for est in ("biased", "unbiased"):
        ref["mmd2_" + est] = mmdflow.mmd2(x, y, k, estimator=est, wx=wx, wy=wy, impl="dense")
    f0 = lambda x, y, wx, h: mmdflow.mmd2(x, y, kernels.Gaussian(h), estimator="unbiased",
                                          wx=wx, impl="dense")
    ref["grad"] = jax.grad(f0, argnums=(0, 1, 2, 3))(x, y, wx, 0.9)
    return ref


ref = references(x, y, wx, wy, W, xe, ye)
uf = flows.MMDFlow(k, step_size=0.5, noise_level=noise)
s0, h0 = flows.run(uf, x, y, num_steps=4, key=jax.random.key(3), record_every=4)
for st in S.STRATEGIES:
    r = {}
    # kernel sums: plain uneven arrays (output [n]) ...
    r["matvec"] = rel(S.sharded_kernel_matvec(k, x, y, wy, mesh, strategy=st, block_size=bs),
                      ref["matvec"])
    # ... and ShardedPoints (padded output, sharded), with [m, 2] weights
    g = S.sharded_kernel_grad_matvec(k, xs, ys, W, mesh, strategy=st, block_size=bs)
    r["grad_matvec"] = rel(xs.unpad(g), ref["grad_matvec"])
    r["grad_matvec_spec"] = spec(g)
    for est in ("biased", "unbiased"):
        v = S.sharded_mmd2(x, y, k, mesh, estimator=est, wx=wx, wy=wy, strategy=st, block_size=bs)
        r["mmd2_" + est] = rel(v, ref["mmd2_" + est])
    r["mmd2_points"] = rel(S.sharded_mmd2(xs, ys, k, mesh, strategy=st, block_size=bs),
                           ref["mmd2_points"])
    # witness gradient: even sizes keep the [n, d] output sharded P("data")
    g = S.sharded_witness_grad(xe, xe, ye, k, mesh, strategy=st, block_size=bs)
    r["witness_grad_even"] = rel(g, ref["witness_grad_even"])
    r["witness_grad_even_spec"] = spec(g)
    g = S.sharded_witness_grad(xs, xs, ys, k, mesh, strategy=st, block_size=bs)
    r["witness_grad_points"] = rel(xs.unpad(g), ref["witness_grad_points"])
    r["witness_grad_points_spec"] = spec(g)
    v = S.sharded_witness(xs, xs, ys, k, mesh, strategy=st, block_size=bs)
    r["witness_points"] = rel(xs.unpad(v), ref["witness_points"])
    # reverse mode: x, y, weights and the bandwidth (ring: custom_vjp)
    f1 = lambda x, y, wx, h: S.sharded_mmd2(x, y, kernels.Gaussian(h), mesh, estimator="unbiased",
                                            wx=wx, strategy=st, block_size=bs)
    g1 = jax.jit(jax.grad(f1, argnums=(0, 1, 2, 3)))(x, y, wx, 0.9)
    r["grad_mmd2_x"], r["grad_mmd2_y"], r["grad_mmd2_wx"], r["grad_mmd2_bw"] = [
        rel(a, b) for a, b in zip(g1, ref["grad"])]
    # sharded MMD flow (noise injection) vs the unsharded stepper, through flows.run
    sf = S.ShardedMMDFlow(k, mesh, step_size=0.5, noise_level=noise, strategy=st, block_size=bs)
    s1, h1 = flows.run(sf, x, y, num_steps=4, key=jax.random.key(3), record_every=4)
    r["flow_particles"] = rel(sf.particles(s1), s0.x)
    r["flow_mmd2"] = rel(h1["mmd2"], h0["mmd2"])
    r["flow_kinetic"] = rel(h1["kinetic"][1:], h0["kinetic"][1:])
    r["flow_spec"] = spec(s1.x)
    out[st] = r

# a mesh with the Explicit axis type (the jax.make_mesh default), uneven sizes
emesh = jax.make_mesh((8,), ("data",))
out["explicit_mmd2"] = rel(S.sharded_mmd2(x, y, k, emesh, wx=wx, wy=wy, block_size=bs),
                           ref["mmd2_points"])
# random-feature Sobolev descent on sharded inputs (GSPMD propagation, flows unchanged)
sh = NamedSharding(mesh, P("data"))
sd = flows.KernelSobolevDescent(k, step_size=0.5, reg=0.1, num_features=64)
steps = jax.jit(lambda s, y: flows.scan(sd, s, y, 3)[0])
s1 = steps(sd.init(jax.device_put(xe, sh), jax.random.key(1)), jax.device_put(ye, sh))
s0 = steps(sd.init(xe, jax.random.key(1)), ye)
out["sobolev_rff"] = rel(s1.x, s0.x)
out["sobolev_rff_spec"] = spec(s1.x)
# negative control: the mean of per-device MMD^2s is a different number
shards = jax.jit(jax.vmap(lambda a, b: mmdflow.mmd2(a, b, k, impl="dense")))
per = shards(xe.reshape(8, 125, 2), ye.reshape(8, 64, 2))
out["per_device_mean_rel"] = float(abs(np.mean(per) - ref["mmd2_even"]) / ref["mmd2_even"])
out["mmd2_even"] = rel(S.sharded_mmd2(xe, ye, k, mesh, block_size=bs), ref["mmd2_even"])

# exact-kernel Sobolev descent (sharded CG critic) vs the single-device CG stepper
xs_, ys_, ws_ = x[:203], y[:150], wx[:203]  # uneven
u = flows.KernelSobolevDescent(k, step_size=0.5, reg=0.1, solver="cg", cg_tol=1e-10)
s0, h0 = flows.run(u, xs_, ys_, num_steps=3, key=jax.random.key(3), record_every=3, wx=ws_)
for st in S.STRATEGIES:
    sd = S.ShardedKernelSobolevDescent(k, mesh, step_size=0.5, reg=0.1, cg_tol=1e-10,
                                       strategy=st, block_size=bs)
    s1, h1 = flows.run(sd, xs_, ys_, num_steps=3, key=jax.random.key(3), record_every=3, wx=ws_)
    out[st]["sobolev_exact"] = max(rel(sd.particles(s1), s0.x), rel(h1["mmd2"], h0["mmd2"]),
                                   rel(h1["kinetic"][1:], h0["kinetic"][1:]),
                                   rel(h1["critic"][1:], h0["critic"][1:]))
    out[st]["sobolev_exact_spec"] = spec(s1.x)
# random features through ShardedStepper (uneven n, features redrawn every step)
rs = flows.KernelSobolevDescent(k, step_size=0.5, reg=0.1, num_features=32, resample_features=True)
a0, g0 = flows.run(rs, xs_, ys_, num_steps=3, key=jax.random.key(1), record_every=3)
ss = S.ShardedStepper(rs, mesh)
a1, g1 = flows.run(ss, xs_, ys_, num_steps=3, key=jax.random.key(1), record_every=3)
out["stepper_rff"] = max(rel(ss.particles(a1), a0.x), rel(g1["mmd2"], g0["mmd2"]))
out["stepper_rff_spec"] = spec(a1.x)

# data-parallel generator step (Flax generator, uneven batches): direction + optax update
import optax
from flax import nnx
from mmdflow import kernelized, train
gen = train.MLPGenerator(latent_dim=3, out_dim=2, hidden=(16,), rngs=nnx.Rngs(0))
graphdef, params = nnx.split(gen)
params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
gen_fn = lambda p, z: nnx.merge(graphdef, p)(z)
zb, yb = rng.normal(size=(100, 3)), rng.normal(size=(75, 2)) + 1.0
tx = optax.sgd(0.5)


def gen_step(direction, params, kind):
    v, info = direction(gen_fn, params, zb, yb, k, 0.05, kind=kind, cg_tol=1e-10, cg_maxiter=200)
    upd, _ = tx.update(jax.tree.map(jnp.negative, v), tx.init(params), params)
    return v, info, optax.apply_updates(params, upd)


def tree_rel(a, b):
    return max(rel(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


for kind, sts in (("kernelized", S.STRATEGIES), ("mmd-gd", ("ring",)), ("grad-penalty", ("ring",))):
    v0, i0, p0 = jax.jit(lambda p: gen_step(kernelized.direction, p, kind))(params)
    for st in sts:
        fn = S.direction_fn(mesh, strategy=st, block_size=8)
        v1, i1, p1 = jax.jit(lambda p: gen_step(fn, p, kind))(params)
        keys = ("mmd2", "grad_norm", "velocity_norm", "decrease_rate")
        keys += ("critic",) if kind != "mmd-gd" else ()
        out[f"gen_{kind}_{st}"] = {"direction": tree_rel(v1, v0), "params": tree_rel(p1, p0),
                                   "info": max(rel(i1[q], i0[q]) for q in keys),
                                   "cg_iterations": [int(i0["cg_iterations"]),
                                                     int(i1["cg_iterations"])]}

# warm-started, truncated CG, and the trainer itself with the sharded drop-in as its
# `direction_fn` (its jitted step then runs data-parallel)
vw = jax.tree.map(lambda t: 0.5 * t, v0)
dk = dict(kind="kernelized", cg_tol=1e-10, cg_maxiter=3, v0=vw)
w0, _ = jax.jit(lambda p: kernelized.direction(gen_fn, p, zb, yb, k, 0.05, **dk))(params)
w1, _ = jax.jit(lambda p: S.sharded_direction(gen_fn, p, zb, yb, k, 0.05, mesh=mesh, **dk))(params)
out["gen_warm_start"] = tree_rel(w1, w0)
nnx.update(gen, params)  # float64 parameters
tr = train.GeneratorTrainer(gen, optax.sgd(0.5), k, reg=0.05, batch_size=100)
t0, _ = tr.step(tr.step(tr.init(jax.random.key(0)), yb)[0], yb)
tr = train.GeneratorTrainer(gen, optax.sgd(0.5), k, reg=0.05, batch_size=100,
                           direction_fn=S.direction_fn(mesh, strategy="ring", block_size=8))
t1, _ = tr.step(tr.step(tr.init(jax.random.key(0)), yb)[0], yb)
out["gen_trainer"] = tree_rel(t1.params, t0.params)

# the CLI's --devices: sharded runs equal the single-device ones (float32, uneven n = 60)
import tempfile
from mmdflow import cli
tmp = tempfile.mkdtemp()
base = ["flow", "--n", "60", "--steps", "4", "--record-every", "2", "--quiet"]
cases = (("rff", ["--num-features", "64"]), ("exact", []), ("mmd", ["--method", "mmd"]))
for name, extra in cases:
    runs = {}
    for dv in (None, 8):
        d = f"{tmp}/{name}_{dv}"
        rc = cli.main(base + extra + ["--out", d] + ([] if dv is None else ["--devices", str(dv)]))
        assert rc == 0, (name, dv)
        runs[dv] = (np.load(d + "/particles.npy"), json.load(open(d + "/metrics.json")))
    (p0, m0), (p1, m1) = runs[None], runs[8]
    out["cli_" + name] = {"particles": rel(p1, p0), "shape": list(p1.shape),
                          "devices": m1["settings"]["devices"],
                          "mmd2": rel(m1["history"]["mmd2"], m0["history"]["mmd2"])}
# neural Sobolev descent needs no wrapper: jit partitions its critic updates (GSPMD)
from mmdflow import neural
def neural_run(xa, ya):
    crit = neural.mlp_critic(2, hidden=(16, 16), key=jax.random.key(5))
    s = neural.NeuralSobolevDescent(crit, optax.adam(1e-3), critic_steps=2, step_size=0.1,
                                    kernel=kernels.Gaussian(1.0))
    return flows.run(s, xa, ya, num_steps=2, key=jax.random.key(0))[0].x
xn, yn = np.asarray(xe[:64], np.float64), np.asarray(ye[:96], np.float64)
ln = neural_run(xn, yn)
sn = neural_run(jax.device_put(xn, NamedSharding(mesh, P("data"))),
                jax.device_put(yn, NamedSharding(mesh, P("data"))))
out["neural"] = rel(sn, ln)
out["neural_spec"] = spec(sn)

print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    # the subprocess runs once per pytest run: under xdist the workers share this run's base
    # temporary directory, and the first one to take the lock computes, the others read
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    out = shared / "sharding_results.json"
    with open(shared / "sharding_results.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not out.exists():
            out.write_text(json.dumps(_run_checks()))
    return json.loads(out.read_text())


def _run_checks():
    env = dict(os.environ)
    # backend optimisation level 0: ~25% less compile time, same float64 results
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={NUM_DEVICES}"
        + " --xla_backend_optimization_level=0"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", CHECKS], env=env, capture_output=True, text=True, timeout=600
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads(lines[-1][len("RESULT ") :])


DATA_SPEC = ["NamedSharding", "('data',)", ["data"]]


def test_subprocess_has_eight_devices(results):
    assert results["device_count"] == NUM_DEVICES


def test_shard_points_pads_explicitly(results):
    sp = results["shard_points"]
    assert sp == {"rows": 1008, "n": 1003, "spec": DATA_SPEC, "pad_weight": 0.0}


@pytest.mark.parametrize("strategy", sharding.STRATEGIES)
@pytest.mark.parametrize(
    "check",
    [
        "matvec",
        "grad_matvec",
        "mmd2_biased",
        "mmd2_unbiased",
        "mmd2_points",
        "witness_grad_even",
        "witness_grad_points",
        "witness_points",
    ],
)
def test_sharded_values_equal_single_device(results, strategy, check):
    assert results[strategy][check] < RTOL


@pytest.mark.parametrize("strategy", sharding.STRATEGIES)
@pytest.mark.parametrize("check", ["grad_matvec", "witness_grad_even", "witness_grad_points"])
def test_outputs_stay_sharded(results, strategy, check):
    assert results[strategy][check + "_spec"] == DATA_SPEC


@pytest.mark.parametrize("strategy", sharding.STRATEGIES)
@pytest.mark.parametrize("wrt", ["x", "y", "wx", "bw"])
def test_gradient_of_sharded_mmd2(results, strategy, wrt):
    assert results[strategy]["grad_mmd2_" + wrt] < RTOL


@pytest.mark.parametrize("strategy", sharding.STRATEGIES)
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


@pytest.mark.parametrize("strategy", sharding.STRATEGIES)
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
    ["kernelized_allgather", "kernelized_ring", "mmd-gd_ring", "grad-penalty_ring"],
)
def test_data_parallel_generator_step_matches_single_device(results, case):
    r = results["gen_" + case]
    assert r["direction"] < 1e-6 and r["params"] < 1e-6 and r["info"] < 1e-6
    if case.startswith("kernelized"):
        assert r["cg_iterations"][0] == r["cg_iterations"][1] > 1


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
    with pytest.raises(ValueError, match="strategy"):
        sharding.sharded_mmd2(x, x, k, mesh, strategy="tree")
    with pytest.raises(ValueError, match="no axis named"):
        sharding.sharded_witness(x, x, x, k, mesh, axis="batch")
    with pytest.raises(ValueError, match="estimator"):
        sharding.sharded_mmd2(x, x, k, mesh, estimator="linear")
    with pytest.raises(ValueError, match="num_devices"):
        sharding.make_mesh(jax.device_count() + 1)
    sp = sharding.shard_points(x, mesh)
    with pytest.raises(ValueError, match="ShardedPoints"):
        sharding.sharded_mmd2(sp, x, k, mesh, wx=np.ones(4))
    with pytest.raises(ValueError, match="d=3"):
        sharding.sharded_kernel_matvec(k, x, np.zeros((4, 3)), np.ones(4), mesh)
    with pytest.raises(ValueError, match="`w` must have shape"):
        sharding.sharded_kernel_matvec(k, x, x, np.ones(5), mesh)
    # sharded flows and generator directions
    from mmdflow import flows

    with pytest.raises(ValueError, match="reg"):
        sharding.ShardedKernelSobolevDescent(k, mesh, reg=-1.0)
    with pytest.raises(ValueError, match="ShardedMMDFlow"):
        sharding.ShardedStepper(flows.MMDFlow(k), mesh)
    with pytest.raises(ValueError, match="strategy"):
        sharding.direction_fn(mesh, strategy="tree")
    gen = lambda p, z: z @ p
    w = np.eye(2)
    with pytest.raises(ValueError, match="kind"):
        sharding.sharded_direction(gen, w, x, x, k, mesh=mesh, kind="param-sobolev")
    with pytest.raises(ValueError, match="solver"):
        sharding.sharded_direction(gen, w, x, x, k, mesh=mesh, solver="cholesky")
    with pytest.raises(ValueError, match=r"gen_fn\(params, z\).*\[4, 3\]"):
        sharding.sharded_direction(gen, w, x, np.zeros((4, 3)), k, mesh=mesh)


# ---------------------------------------------------------------- benchmark script
def _load_scaling():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "scaling.py"
    spec = importlib.util.spec_from_file_location("mmdflow_bench_scaling", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
