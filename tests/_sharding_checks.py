"""The 8-device sharding checks, run once per pytest run in a background subprocess.

The device count must be fixed before JAX initialises, so the multi-device checks run in
a subprocess with 8 host CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``)
and float64; it prints one JSON object of relative errors and shardings.

The subprocess takes about a minute of compilation, so ``conftest.py`` starts it as soon as
collection finishes (``start``) and it runs beside the other tests; ``results`` waits for it.
Under pytest-xdist the workers share one run directory: the first worker to create the
``started`` marker launches the subprocess, and every worker reads the same ``results.json``.
The launching worker joins its reaper thread at session end (``join``), so the results are
always written even if that worker runs out of tests first.
"""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

NUM_DEVICES = 8
TIMEOUT_S = 900

CHECKS = r"""
import json
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
import mmdflow
from mmdflow import densities, fields, flows, kernels, ops, sharding as S
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
    ref = {"matvec": ops.kernel_matvec(k, x, y, wy, sums=ops.SumConfig("dense")),
           "grad_matvec": ops.kernel_grad_matvec(k, x, y, W, sums=ops.SumConfig("dense")),
           "mmd2_points": mmdflow.mmd2(x, y, k, wx=wx, wy=wy, sums=ops.SumConfig("dense")),
           "witness_grad_even": mmdflow.witness_grad(xe, xe, ye, k, sums=ops.SumConfig("dense")),
           "witness_grad_points": mmdflow.witness_grad(x, x, y, k, wx=wx, wy=wy, sums=ops.SumConfig("dense")),
           "witness_points": mmdflow.witness(x, x, y, k, wx=wx, wy=wy, sums=ops.SumConfig("dense")),
           "mmd2_even": mmdflow.mmd2(xe, ye, k, sums=ops.SumConfig("dense")),
           "mmd2_linear": mmdflow.mmd2(x, y, k, estimator="linear")}
    for est in ("biased", "unbiased"):
        ref["mmd2_" + est] = mmdflow.mmd2(x, y, k, estimator=est, wx=wx, wy=wy, sums=ops.SumConfig("dense"))
    f0 = lambda x, y, wx, h: mmdflow.mmd2(x, y, kernels.Gaussian(h), estimator="unbiased",
                                          wx=wx, sums=ops.SumConfig("dense"))
    ref["grad"] = jax.grad(f0, argnums=(0, 1, 2, 3))(x, y, wx, 0.9)
    return ref


ref = references(x, y, wx, wy, W, xe, ye)
uf = flows.make("mmd", k, step_size=0.5, noise_level=noise)
s0, h0 = flows.run(uf, x, y, num_steps=4, key=jax.random.key(3), record_every=4)
for st in ops.STRATEGIES:
    r = {}
    cfg = ops.SumConfig(mesh=mesh, strategy=st, block_size=bs)
    # kernel sums: plain uneven arrays (output [n]) ...
    r["matvec"] = rel(ops.kernel_matvec(k, x, y, wy, sums=cfg), ref["matvec"])
    # ... and ShardedPoints (padded output, sharded), with [m, 2] weights
    g = ops.kernel_grad_matvec(k, xs, ys, W, sums=cfg)
    r["grad_matvec"] = rel(xs.unpad(g), ref["grad_matvec"])
    r["grad_matvec_spec"] = spec(g)
    for est in ("biased", "unbiased"):
        v = mmdflow.mmd2(x, y, k, estimator=est, wx=wx, wy=wy, sums=cfg)
        r["mmd2_" + est] = rel(v, ref["mmd2_" + est])
    r["mmd2_points"] = rel(mmdflow.mmd2(xs, ys, k, sums=cfg), ref["mmd2_points"])
    r["mmd2_linear"] = rel(mmdflow.mmd2(x, y, k, estimator="linear", sums=cfg),
                           ref["mmd2_linear"])
    # witness gradient: even sizes keep the [n, d] output sharded P("data")
    g = mmdflow.witness_grad(xe, xe, ye, k, sums=cfg)
    r["witness_grad_even"] = rel(g, ref["witness_grad_even"])
    r["witness_grad_even_spec"] = spec(g)
    g = mmdflow.witness_grad(xs, xs, ys, k, sums=cfg)
    r["witness_grad_points"] = rel(xs.unpad(g), ref["witness_grad_points"])
    r["witness_grad_points_spec"] = spec(g)
    v = mmdflow.witness(xs, xs, ys, k, sums=cfg)
    r["witness_points"] = rel(xs.unpad(v), ref["witness_points"])
    # reverse mode: x, y, weights and the bandwidth (ring: custom_vjp)
    f1 = lambda x, y, wx, h: mmdflow.mmd2(x, y, kernels.Gaussian(h), estimator="unbiased",
                                          wx=wx, sums=cfg)
    g1 = jax.jit(jax.grad(f1, argnums=(0, 1, 2, 3)))(x, y, wx, 0.9)
    r["grad_mmd2_x"], r["grad_mmd2_y"], r["grad_mmd2_wx"], r["grad_mmd2_bw"] = [
        rel(a, b) for a, b in zip(g1, ref["grad"])]
    # sharded MMD flow (noise injection) vs the unsharded stepper, through flows.run
    sf = flows.make("mmd", k, step_size=0.5, noise_level=noise, mesh=mesh,
                    sums=ops.SumConfig(strategy=st, block_size=bs))
    s1, h1 = flows.run(sf, x, y, num_steps=4, key=jax.random.key(3), record_every=4)
    r["flow_particles"] = rel(sf.particles(s1), s0.x)
    r["flow_mmd2"] = rel(h1["mmd2"], h0["mmd2"])
    r["flow_kinetic"] = rel(h1["kinetic"][1:], h0["kinetic"][1:])
    r["flow_spec"] = spec(s1.x)
    out[st] = r

# a mesh with the Explicit axis type (the jax.make_mesh default), uneven sizes
emesh = jax.make_mesh((8,), ("data",))
ecfg = ops.SumConfig(mesh=emesh, block_size=bs)
out["explicit_mmd2"] = rel(mmdflow.mmd2(x, y, k, wx=wx, wy=wy, sums=ecfg), ref["mmd2_points"])
# random-feature Sobolev descent on sharded inputs (GSPMD propagation, flows unchanged)
sh = NamedSharding(mesh, P("data"))
sd = flows.make("sobolev", k, step_size=0.5, reg=0.1, num_features=64)
steps = jax.jit(lambda s, y: flows.scan(sd, s, y, 3)[0])
s1 = steps(sd.init(jax.device_put(xe, sh), jax.random.key(1)), jax.device_put(ye, sh))
s0 = steps(sd.init(xe, jax.random.key(1)), ye)
out["sobolev_rff"] = rel(s1.x, s0.x)
out["sobolev_rff_spec"] = spec(s1.x)
# negative control: the mean of per-device MMD^2s is a different number
shards = jax.jit(jax.vmap(lambda a, b: mmdflow.mmd2(a, b, k, sums=ops.SumConfig("dense"))))
per = shards(xe.reshape(8, 125, 2), ye.reshape(8, 64, 2))
out["per_device_mean_rel"] = float(abs(np.mean(per) - ref["mmd2_even"]) / ref["mmd2_even"])
out["mmd2_even"] = rel(mmdflow.mmd2(xe, ye, k, sums=ops.SumConfig(mesh=mesh, block_size=bs)),
                      ref["mmd2_even"])

# exact-kernel Sobolev descent (sharded CG critic) vs the single-device CG stepper
xs_, ys_, ws_ = x[:203], y[:150], wx[:203]  # uneven
u = flows.make("sobolev", k, step_size=0.5, reg=0.1, solver="cg", cg_tol=1e-10)
s0, h0 = flows.run(u, xs_, ys_, num_steps=3, key=jax.random.key(3), record_every=3, wx=ws_)
for st in ops.STRATEGIES:
    sd = flows.make("sobolev", k, step_size=0.5, reg=0.1, cg_tol=1e-10, mesh=mesh,
                    sums=ops.SumConfig(strategy=st, block_size=bs))
    s1, h1 = flows.run(sd, xs_, ys_, num_steps=3, key=jax.random.key(3), record_every=3, wx=ws_)
    out[st]["sobolev_exact"] = max(rel(sd.particles(s1), s0.x), rel(h1["mmd2"], h0["mmd2"]),
                                   rel(h1["kinetic"][1:], h0["kinetic"][1:]),
                                   rel(h1["critic"][1:], h0["critic"][1:]))
    out[st]["sobolev_exact_spec"] = spec(s1.x)
# every registry flow at its defaults: the padded, sharded run equals the one-device run
# ("sobolev" at its defaults is random-feature Sobolev descent with features redrawn every
# step, uneven n: jit partitions the GEMMs; it is also the stepper_rff check)
out["registry"] = {}
for name, target in [(n, t) for n in flows.FLOWS for t in flows.targets(n)]:
    density = target == "density"
    # a density flow's field holds its target (y's law, N(0.7, 0.64 I)) and ignores y
    p = {"logp": densities.Gaussian(mean=(0.7, 0.7), cov=((0.64, 0.0), (0.0, 0.64)))}
    kw = flows.FLOWS[name].defaults_for(k, 0.9, xs_.shape[0], 2, jax.random.key(7),
                                        **(p if density else {}))
    if "cg_tol" in flows.field_params(name):
        # CG to convergence: at the default tolerance (1e-6) the sharded sums' rounding can
        # stop CG an iteration earlier or later (differences of the order of the tolerance)
        kw["cg_tol"] = 1e-13
    metric = "ksd2" if density else "mmd2"  # what flows.run records
    fl = flows.make(name, **kw)
    b0, c0 = flows.run(fl, xs_, ys_, num_steps=3, key=jax.random.key(2), record_every=3, wx=ws_)
    sf = flows.make(name, **kw, mesh=mesh)
    b1, c1 = flows.run(sf, xs_, ys_, num_steps=3, key=jax.random.key(2), record_every=3, wx=ws_)
    err = max(rel(sf.particles(b1), b0.x), rel(c1[metric], c0[metric]),
              rel(c1["kinetic"][1:], c0["kinetic"][1:]))
    # the coarsest float in the state (a neural critic's parameters are float32)
    eps = max(float(jnp.finfo(a.dtype).eps) for a in jax.tree.leaves(b0)
              if jnp.issubdtype(a.dtype, jnp.floating))
    case = f"{name}-density" if density and len(flows.targets(name)) > 1 else name
    if name == "sobolev":
        assert kw["num_features"] and kw["resample_features"], kw
        out["stepper_rff"] = max(rel(sf.particles(b1), b0.x), rel(c1["mmd2"], c0["mmd2"]))
        out["stepper_rff_spec"] = spec(b1.x)
    out["registry"][case] = {"rel": err, "eps": eps}

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


import functools
for kind, sts in (("kernelized", ops.STRATEGIES), ("mmd-gd", ("ring",)),
                  ("grad-penalty", ("ring",)), ("param-sobolev", ("allgather",))):
    v0, i0, p0 = jax.jit(lambda p: gen_step(kernelized.direction, p, kind))(params)
    for st in sts:
        gcfg = ops.SumConfig(mesh=mesh, strategy=st, block_size=8)
        fn = functools.partial(kernelized.direction, sums=gcfg)
        v1, i1, p1 = jax.jit(lambda p: gen_step(fn, p, kind))(params)
        keys = ("mmd2", "grad_norm", "velocity_norm", "decrease_rate")
        keys += ("critic",) if kind != "mmd-gd" else ()
        out[f"gen_{kind}_{st}"] = {"direction": tree_rel(v1, v0), "params": tree_rel(p1, p0),
                                   "info": max(rel(i1[q], i0[q]) for q in keys),
                                   "cg_iterations": [int(i0["cg_iterations"]),
                                                     int(i1["cg_iterations"])]}

# warm-started, truncated CG, and the trainer itself on the mesh (`sums`: its jitted step
# then runs data-parallel)
vw = jax.tree.map(lambda t: 0.5 * t, v0)
dk = dict(kind="kernelized", cg_tol=1e-10, cg_maxiter=3, v0=vw)
w0, _ = jax.jit(lambda p: kernelized.direction(gen_fn, p, zb, yb, k, 0.05, **dk))(params)
mcfg = ops.SumConfig(mesh=mesh, strategy="ring", block_size=8)
w1, _ = jax.jit(lambda p: kernelized.direction(gen_fn, p, zb, yb, k, 0.05, sums=mcfg, **dk))(params)
out["gen_warm_start"] = tree_rel(w1, w0)
nnx.update(gen, params)  # float64 parameters
tr = train.GeneratorTrainer(gen, optax.sgd(0.5), k, reg=0.05, batch_size=100)
t0, _ = tr.step(tr.step(tr.init(jax.random.key(0)), yb)[0], yb)
tr = train.GeneratorTrainer(gen, optax.sgd(0.5), k, reg=0.05, batch_size=100,
                           sums=mcfg)
t1, _ = tr.step(tr.step(tr.init(jax.random.key(0)), yb)[0], yb)
out["gen_trainer"] = tree_rel(t1.params, t0.params)

# the CLI's --devices: sharded runs equal the single-device ones (float32, uneven n = 60)
import tempfile
from mmdflow import cli, plots
# compared: particles.npy and metrics.json; the pictures (drawn and checked by test_cli.py)
# are not drawn here (about 2 s of matplotlib per run)
plots.plot_flow = lambda *a, **kw: [0]
plots.plot_history = lambda *a, **kw: None
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
def neural_run(xa, ya):
    crit = fields.mlp_critic(2, hidden=(16, 16), key=jax.random.key(5))
    s = flows.make("neural-sobolev", kernels.Gaussian(1.0), critic=crit,
                   optimizer=optax.adam(1e-3), critic_steps=2, step_size=0.1)
    return flows.run(s, xa, ya, num_steps=2, key=jax.random.key(0))[0].x
xn, yn = np.asarray(xe[:64], np.float64), np.asarray(ye[:96], np.float64)
ln = neural_run(xn, yn)
sn = neural_run(jax.device_put(xn, NamedSharding(mesh, P("data"))),
                jax.device_put(yn, NamedSharding(mesh, P("data"))))
out["neural"] = rel(sn, ln)
out["neural_spec"] = spec(sn)

print("RESULT " + json.dumps(out))
"""


_reaper: threading.Thread | None = None
_proc: subprocess.Popen | None = None


def shared_dir(config, name: str = "sharding_checks") -> Path:
    """A directory of this pytest run, shared by all xdist workers."""
    base = config._tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = shared / name
    path.mkdir(exist_ok=True)
    return path


def start(path: Path) -> None:
    """Launch the subprocess in the background unless another worker already did."""
    global _reaper, _proc
    try:
        os.close(os.open(path / "started", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    env = dict(os.environ)
    # the test processes' fast-compile flags (conftest.py) and 8 host devices
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={NUM_DEVICES}"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("PYTEST_XDIST_WORKER", None)
    _proc = proc = subprocess.Popen(
        [sys.executable, "-c", CHECKS],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def reap():
        try:
            out, err = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode == 0 and lines:
            payload = {"ok": True, "results": json.loads(lines[-1][len("RESULT ") :])}
        else:
            payload = {"ok": False, "error": out[-3000:] + err[-6000:]}
        tmp = path / "results.json.tmp"
        tmp.write_text(json.dumps(payload))
        os.replace(tmp, path / "results.json")

    _reaper = threading.Thread(target=reap, daemon=True)
    _reaper.start()


def results(path: Path) -> dict:
    """Wait for the subprocess (starting it if nobody has) and return its JSON."""
    start(path)
    done = path / "results.json"
    deadline = time.monotonic() + TIMEOUT_S + 60
    while not done.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no sharding results in {path} after {TIMEOUT_S + 60} s")
        time.sleep(0.2)
    payload = json.loads(done.read_text())
    assert payload["ok"], payload["error"]
    return payload["results"]


def join(kill: bool = False) -> None:
    """Wait for (or ``kill``) the subprocess this process launched, if any (at session end)."""
    if _reaper is not None:
        if kill and _proc.poll() is None:
            _proc.kill()
        _reaper.join()
