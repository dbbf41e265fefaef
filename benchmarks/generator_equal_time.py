"""Benchmark: can the kernelized direction match Adam MMD-GD at equal training time? (issue 14)

``generator_convergence.py --equal-time`` found that at equal wall time Adam on the plain
MMD^2 gradient (``mmd-gd``) beats the kernelized direction (variant B, truncated CG, constant
SGD step) on 8gaussians. This script tries what could change that, without touching the
library: one jitted step per *family* built here on :func:`mmdflow.kernelized.direction` and
optax, with options the trainer does not have (yet):

* the optimizer fed with ``-theta_dot``: SGD (the Euler scheme), SGD with momentum, Adam;
* the step-size schedule: constant, or cosine decay to 1% over the run;
* ``warm``: CG warm-started from the previous step's ``theta_dot`` (``v0``);
* ``lm``: Levenberg-Marquardt-like adaptive ridge, ``reg = c * EMA(batch MMD^2)``
  (clipped to [1e-3, 1]; the EMA of the previous steps' values, so no extra cost);
* the CG cap and the batch size.

Mixtures, seeds, generator, kernel and the held-out metric are those of
``generator_convergence.py`` (imported from it). Protocol:

1. ``--sweep``: every family's learning-rate grid on the first mixture, seed 0, for
   ``--sweep-time`` seconds of training each (the lowest held-out MMD^2, mean of the
   last 3 of 10 evaluations, wins). Writes the sweep JSON; with ``--sweep-from`` an
   earlier sweep JSON is extended (only the missing family / rate pairs run).
2. main run (``--sweep-from`` that JSON): the chosen learning rate of each of
   ``--families`` on every mixture and seed for ``--time`` seconds each.

Equal time: per family, ms/step is calibrated first (interleaved rounds of 40 steps,
minimum over rounds of the median, as ``generator_convergence.equal_time``), then each run
takes ``time / (ms/step)`` steps; the schedule decays over exactly those steps. Every
family, ``mmd-gd`` included, runs through the same step code here (one step per Python
call, as :class:`mmdflow.train.GeneratorTrainer`; the minibatch draws are the trainer's).

Usage:
  python benchmarks/generator_equal_time.py --sweep --sweep-time 10 --out sweep.json
  python benchmarks/generator_equal_time.py --sweep-from sweep.json --time 15
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import NamedTuple

import _common as common
import generator_convergence as gc
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mmdflow import kernelized, kernels, train
from mmdflow.mmd import mmd2
from mmdflow.ops import kernel_hessian_matvec

#: family -> options: kind, opt ("sgd" / "momentum" / "adam"), sched ("const" / "cos"),
#: cg (cap), warm (CG warm start), lm (adaptive-ridge factor c, or None: fixed --reg),
#: batch, lrs (the sweep grid)
FAMILIES = {
    "kern-sgd": dict(kind="kernelized", opt="sgd", sched="const", lrs=(0.5, 1.0)),
    "kern-sgd-cos": dict(kind="kernelized", opt="sgd", sched="cos", lrs=(0.5, 1.0, 2.0)),
    "kern-mom-cos": dict(kind="kernelized", opt="momentum", sched="cos", lrs=(0.05, 0.1, 0.2)),
    "kern-adam": dict(kind="kernelized", opt="adam", sched="const", lrs=(1e-3, 3e-3, 1e-2)),
    "kern-adam-cos": dict(
        kind="kernelized", opt="adam", sched="cos", lrs=(3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
    ),
    "kern-sgd-cos-cg8": dict(kind="kernelized", opt="sgd", sched="cos", cg=8, lrs=(0.5, 1.0)),
    "kern-sgd-cos-cg8-warm": dict(
        kind="kernelized", opt="sgd", sched="cos", cg=8, warm=True, lrs=(0.5, 1.0)
    ),
    "kern-sgd-cos-lm": dict(
        kind="kernelized", opt="sgd", sched="cos", lm=1.0, lrs=(0.5, 1.0, 2.0, 4.0, 8.0)
    ),
    "kern-mom-cos-lm": dict(
        kind="kernelized", opt="momentum", sched="cos", lm=1.0, lrs=(0.1, 0.2, 0.4)
    ),
    "kern-sgd-cos-b256-cg10": dict(
        kind="kernelized", opt="sgd", sched="cos", cg=10, batch=256, lrs=(0.5, 1.0)
    ),
    # Jacobi-preconditioned CG (own solver below): the diagonal of K + reg by Hutchinson,
    # one Rademacher probe per step (one extra K-matvec), EMA over steps; "leaf": one
    # scalar per parameter array, "diag": elementwise. Same system, so same rates.
    "kern-sgd-cos-pcg-leaf": dict(
        kind="kernelized", opt="sgd", sched="cos", precond="leaf", lrs=(1.0,)
    ),
    "kern-sgd-cos-pcg-diag": dict(
        kind="kernelized", opt="sgd", sched="cos", precond="diag", lrs=(1.0,)
    ),
    "gd-adam": dict(kind="mmd-gd", opt="adam", sched="const", lrs=(1e-3, 3e-3, 1e-2)),
    "gd-adam-cos": dict(kind="mmd-gd", opt="adam", sched="cos", lrs=(1e-3, 3e-3, 1e-2, 3e-2)),
}
DEFAULTS = dict(cg=20, warm=False, lm=None, batch=128, precond=None)
LM_CLIP = (1e-3, 1.0)
EMA = 0.9
FINAL_FRACTION = 0.01  # cosine decay to this fraction of the learning rate


class State(NamedTuple):
    params: object
    opt_state: object
    key: jax.Array
    step: jax.Array
    total: jax.Array  # steps of the run (the schedule's horizon)
    lr: jax.Array
    v_prev: object  # last theta_dot (the warm start)
    mmd_ema: jax.Array  # EMA of the batch MMD^2 (the adaptive ridge)
    diag: object  # EMA of the Hutchinson diagonal estimate of K (the preconditioner)


def _vdot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def pcg_direction(gen_fn, params, z, y, k, reg, maxiter, diag, key, mode):
    """The kernelized direction by Jacobi-preconditioned CG (zero start, tol 1e-4).

    ``K v`` as in :func:`mmdflow.kernelized.direction` (one JVP, the cross-Hessian kernel
    sum, one VJP). Returns ``(theta_dot, info, new diagonal estimate)``. From a zero
    start every PCG iterate is still a descent direction (it minimises the same
    quadratic over a Krylov space containing 0).
    """
    x, vjp_fn = jax.vjp(lambda p: gen_fn(p, z), params)
    m = x.shape[0]
    loss, gx = jax.value_and_grad(lambda xv: mmd2(xv, y, k))(x)
    b = vjp_fn(-0.5 * gx)[0]
    xs = jax.lax.stop_gradient(x)

    def kv(vec):  # K v without the ridge
        _, t = jax.jvp(lambda p: gen_fn(p, z), (params,), (vec,))
        return vjp_fn(kernel_hessian_matvec(k, xs, xs, t) / (m * m))[0]

    leaves, tdef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    probe = tdef.unflatten(
        [jax.random.rademacher(kk, p.shape, p.dtype) for kk, p in zip(keys, leaves, strict=True)]
    )
    est = jax.tree.map(lambda v, w: v * w, probe, kv(probe))
    if mode == "leaf":
        est = jax.tree.map(lambda e: jnp.full_like(e, jnp.mean(e)), est)
    diag = jax.tree.map(lambda d, e: EMA * d + (1 - EMA) * e, diag, est)
    pinv = jax.tree.map(lambda d: 1.0 / (jnp.maximum(d, 0.0) + reg), diag)
    mv = lambda vec: jax.tree.map(lambda a, v: a + reg * v, kv(vec), vec)
    prec = lambda r: jax.tree.map(jnp.multiply, pinv, r)
    bb = _vdot(b, b)
    r0 = b
    z0 = prec(r0)

    def cond(st):
        return (st[3] > 1e-8 * bb) & (st[5] < maxiter)

    def body(st):
        xk, r, p, rr, rz, i = st
        ap = mv(p)
        alpha = rz / _vdot(p, ap)
        xk = jax.tree.map(lambda a, q: a + alpha * q, xk, p)
        r = jax.tree.map(lambda a, q: a - alpha * q, r, ap)
        zk = prec(r)
        rz_new = _vdot(r, zk)
        p = jax.tree.map(lambda a, q: a + (rz_new / rz) * q, zk, p)
        return xk, r, p, _vdot(r, r), rz_new, i + 1

    zero = jax.tree.map(jnp.zeros_like, b)
    init = (zero, r0, z0, bb, _vdot(r0, z0), jnp.zeros((), jnp.int32))
    v, _, _, rr, _, it = jax.lax.while_loop(cond, body, init)
    info = {"mmd2": loss, "cg_iterations": it, "cg_residual": jnp.sqrt(rr / bb)}
    return v, info, diag


def _opt(name):
    if name == "sgd":
        return optax.inject_hyperparams(optax.sgd)(learning_rate=1.0)
    if name == "momentum":
        return optax.inject_hyperparams(optax.sgd)(learning_rate=1.0, momentum=0.9)
    return optax.inject_hyperparams(optax.adam)(learning_rate=1.0)


class Family:
    """One jitted step for a family (the learning rate and horizon live in the state)."""

    def __init__(self, name, kernel, hidden, latent_dim, reg):
        self.name, self.o = name, {**DEFAULTS, **FAMILIES[name]}
        self.kernel, self.hidden, self.dz, self.reg = kernel, hidden, latent_dim, reg
        gen = train.MLPGenerator(latent_dim, 2, hidden, rngs=nnx.Rngs(0))
        self.graphdef = nnx.split(gen)[0]
        self.tx = _opt(self.o["opt"])
        self.step = jax.jit(self._step)

    def gen_fn(self, params, z):
        return nnx.merge(self.graphdef, params)(z)

    def init(self, seed, lr, total):
        params = nnx.split(train.MLPGenerator(self.dz, 2, self.hidden, rngs=nnx.Rngs(seed)))[1]
        return State(
            params,
            self.tx.init(params),
            jax.random.key(seed),
            jnp.zeros((), jnp.int32),
            jnp.asarray(total, jnp.float32),
            jnp.asarray(lr, jnp.float32),
            jax.tree.map(jnp.zeros_like, params),
            jnp.ones((), jnp.float32),
            jax.tree.map(jnp.zeros_like, params),
        )

    def _step(self, s: State, y_data):
        o = self.o
        key, kz, ky = jax.random.split(s.key, 3)  # the trainer's draws
        z = jax.random.normal(kz, (o["batch"], self.dz))
        y = y_data[jax.random.randint(ky, (o["batch"],), 0, y_data.shape[0])]
        if o["lm"] is None:
            reg = jnp.asarray(self.reg, jnp.float32)
        else:
            reg = jnp.clip(o["lm"] * s.mmd_ema, *LM_CLIP)
        diag = s.diag
        if o["precond"]:
            key, kp = jax.random.split(key)
            v, info, diag = pcg_direction(
                self.gen_fn, s.params, z, y, self.kernel, reg, o["cg"], s.diag, kp, o["precond"]
            )
        else:
            v, info = kernelized.direction(
                self.gen_fn, s.params, z, y, self.kernel, reg, kind=o["kind"], cg_tol=1e-4,
                cg_maxiter=o["cg"], v0=s.v_prev if o["warm"] else None,
            )  # fmt: skip
        frac = jnp.minimum(s.step / s.total, 1.0)
        if o["sched"] == "cos":
            lr = s.lr * (FINAL_FRACTION + (1 - FINAL_FRACTION) * 0.5 * (1 + jnp.cos(jnp.pi * frac)))
        else:
            lr = s.lr
        hyper = {**s.opt_state.hyperparams, "learning_rate": lr}
        opt_state = s.opt_state._replace(hyperparams=hyper)
        grads = jax.tree.map(jnp.negative, v)
        updates, opt_state = self.tx.update(grads, opt_state, s.params)
        params = optax.apply_updates(s.params, updates)
        ema = EMA * s.mmd_ema + (1 - EMA) * info["mmd2"]
        new = State(params, opt_state, key, s.step + 1, s.total, s.lr, v, ema, diag)
        return new, {**info, "reg": reg, "lr": lr}


def calibrate(fams, y_train, log, rounds=2, n=40):
    """ms/step per family: interleaved rounds, min over rounds of the median of ``n`` steps."""
    ms = {f: [] for f in fams}
    for _ in range(rounds):
        for name, fam in fams.items():
            state, times = fam.init(0, FAMILIES[name]["lrs"][0], 1000), []
            for _ in range(n):
                t0 = time.perf_counter()
                state, info = fam.step(state, y_train)
                jax.device_get(info)
                times.append(time.perf_counter() - t0)
            ms[name].append(1e3 * statistics.median(times[5:]))
    ms = {f: min(v) for f, v in ms.items()}
    log("calibrated ms/step: " + ", ".join(f"{f} {v:.2f}" for f, v in ms.items()))
    return ms


def run(fam, lr, seed, steps, y_train, y_eval, z_eval, evaluate):
    """One run of ``steps`` steps; held-out MMD^2 at 10 evenly spaced steps."""
    state = fam.init(seed, lr, steps)
    every = max(steps // 10, 1)
    ev_step, ev = [0], [float(evaluate(state.params, z_eval, y_eval))]
    times, its, res, regs = [], [], [], []
    for i in range(1, steps + 1):
        t0 = time.perf_counter()
        state, info = fam.step(state, y_train)
        info = jax.device_get(info)
        times.append(time.perf_counter() - t0)
        its.append(int(info["cg_iterations"]))
        res.append(float(info["cg_residual"]))
        regs.append(float(info["reg"]))
        if i % every == 0 or i == steps:
            if ev_step[-1] != i:
                ev_step.append(i)
                ev.append(float(evaluate(state.params, z_eval, y_eval)))
            if not math.isfinite(ev[-1]):
                break
    tail = [gc._finite_or_inf(v) for v in ev[-3:]]
    samples = np.asarray(fam.gen_fn(state.params, z_eval))
    return {
        "family": fam.name,
        "lr": lr,
        "seed": seed,
        "steps": steps,
        "eval_step": ev_step,
        "eval_mmd2": ev,
        "tail_mmd2": sum(tail) / len(tail),
        "step_time_s": sum(times),
        "step_ms_median": 1e3 * statistics.median(times),
        "cg_iterations_mean": float(np.mean(its)),
        "cg_residual_median": float(np.median(res)),
        "reg_first_last": [regs[0], regs[-1]],
        "samples": samples,
    }


def setup(mixture, n_eval, latent_dim, kernel, j):
    mix = gc.make_mixture(mixture)
    y_train = jnp.asarray(gc.sample_mixture(mix, 4096, seed=100 + j))
    y_eval = jnp.asarray(gc.sample_mixture(mix, n_eval, seed=200 + j))
    y_ref = gc.sample_mixture(mix, n_eval, seed=300 + j)
    floor = float(mmd2(jnp.asarray(y_ref), y_eval, kernel, estimator="unbiased"))
    return mix, y_train, y_eval, floor


def plot(rows, mixtures, out):
    """Seed-mean held-out MMD^2 against the fraction of the training time, per mixture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(mixtures), figsize=(5 * len(mixtures), 3.8), squeeze=False)
    for ax, mix in zip(axes[0], mixtures, strict=True):
        for r in (r for r in rows if r["mixture"] == mix):
            curves = [run["eval_mmd2"] for run in r["runs"]]
            n = min(map(len, curves))
            x = np.asarray(r["runs"][0]["eval_step"][:n]) / r["steps"]
            ax.plot(x, np.mean([c[:n] for c in curves], 0), marker=".", label=r["family"])
        ax.set_yscale("log")
        ax.set_title(mix)
        ax.set_xlabel("fraction of the equal training time")
    axes[0][0].set_ylabel("held-out MMD² (seed mean)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sweep", action="store_true", help="only the learning-rate sweep")
    p.add_argument("--sweep-time", type=float, default=10.0, help="seconds per sweep run")
    p.add_argument("--sweep-from", default=None, help="a --sweep JSON: its chosen rates")
    p.add_argument("--time", type=float, default=15.0, help="seconds per main run")
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--mixtures", nargs="+", default=list(gc.MIXTURES), choices=gc.MIXTURES)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--reg", type=float, default=1e-2, help="fixed ridge (families without lm)")
    p.add_argument("--eval-samples", type=int, default=2000)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    kernel = kernels.MixtureRBF((0.1, 0.3, 1.0))
    hidden, latent_dim = (64, 64), 2
    load0 = common.loadavg(ndigits=None)
    t_start = time.perf_counter()

    def log(msg):
        common.log(f"[{time.perf_counter() - t_start:7.1f}s] {msg}")

    fams = {f: Family(f, kernel, hidden, latent_dim, a.reg) for f in a.families}
    z_eval = jax.random.normal(jax.random.key(12345), (a.eval_samples, latent_dim))
    gen_fn = next(iter(fams.values())).gen_fn
    evaluate = jax.jit(
        lambda params, z, y: mmd2(gen_fn(params, z), y, kernel, estimator="unbiased")
    )
    sets = {m: setup(m, a.eval_samples, latent_dim, kernel, j) for j, m in enumerate(a.mixtures)}
    ms = calibrate(fams, sets[a.mixtures[0]][1], log)
    meta = {
        "date_utc": common.utc_timestamp(zulu=False),
        **common.environment("platform", "device", "jax"),
        "optax": optax.__version__,
        **common.environment("python", "cpu_count"),
        "loadavg_start": load0,
        "calibrated_ms_per_step": ms,
        "config": {
            "families": {f: {**DEFAULTS, **FAMILIES[f]} for f in a.families},
            "reg": a.reg,
            "lm_clip": LM_CLIP,
            "ema": EMA,
            "cosine_final_fraction": FINAL_FRACTION,
            "cg_tol": 1e-4,
            "eval_samples": a.eval_samples,
            "generator": f"MLPGenerator(latent_dim={latent_dim}, out_dim=2, hidden={hidden})",
            "kernel": "MixtureRBF((0.1, 0.3, 1.0))",
            "metric": "mean held-out unbiased MMD^2 of the last 3 of 10 evaluations",
        },
    }

    if a.sweep:
        mix = a.mixtures[0]
        _, y_train, y_eval, _ = sets[mix]
        sweep, chosen, passes = [], {}, []
        if a.sweep_from:  # extend an earlier sweep: only the (family, lr) pairs it lacks
            prior = json.loads(Path(a.sweep_from).read_text())
            sweep, passes = prior["sweep"], prior["meta"].get("passes", [prior["meta"]])
        done = {(r["family"], r["lr"]) for r in sweep}
        for f, fam in fams.items():
            steps = max(int(a.sweep_time * 1e3 / ms[f]), 10)
            for lr in FAMILIES[f]["lrs"]:
                if (f, lr) in done:
                    continue
                r = run(fam, lr, 0, steps, y_train, y_eval, z_eval, evaluate)
                r.pop("samples")
                r["calibrated_ms_per_step"] = ms[f]
                sweep.append(r)
                log(f"sweep {f} lr={lr:g}: {steps} steps, tail {gc._fmt(r['tail_mmd2'])}")
        for f in {r["family"] for r in sweep}:
            rs = [r for r in sweep if r["family"] == f]
            chosen[f] = min(rs, key=lambda r: r["tail_mmd2"])["lr"]
        meta.update(mixture=mix, sweep_time_s=a.sweep_time, loadavg_end=common.loadavg(None))
        meta["passes"] = [
            *passes,
            {k: meta[k] for k in ("date_utc", "loadavg_start", "loadavg_end")},
        ]
        result = {"meta": meta, "chosen_lr": chosen, "sweep": sweep}
        out = common.write_json(a.out or "generator_equal_time_sweep.json", result, gc.dumps)
        print(f"## Sweep ({mix}, seed 0, {a.sweep_time:g} s per run)\n")
        print("| family | lr | ms/step | steps | held-out MMD^2 | CG iters | chosen |")
        print("|---|---|---:|---:|---|---:|---|")
        for r in sweep:
            mark = "yes" if chosen[r["family"]] == r["lr"] else ""
            print(
                f"| {r['family']} | {r['lr']:g} | {r['calibrated_ms_per_step']:.2f} | "
                f"{r['steps']} | "
                f"{gc._fmt(r['tail_mmd2'])} | {r['cg_iterations_mean']:.1f} | {mark} |"
            )
        print(f"\nwrote {out}")
        return result

    sweep = json.loads(Path(a.sweep_from).read_text()) if a.sweep_from else None
    chosen = {f: (sweep["chosen_lr"][f] if sweep else FAMILIES[f]["lrs"][0]) for f in fams}
    runs = []
    for seed in range(a.seeds):  # families interleaved within each mixture and seed
        for mix in a.mixtures:
            _, y_train, y_eval, _ = sets[mix]
            for f, fam in fams.items():
                steps = max(int(a.time * 1e3 / ms[f]), 10)
                r = run(fam, chosen[f], seed, steps, y_train, y_eval, z_eval, evaluate)
                r["mixture"] = r_mix = mix
                r["modes"], r["hq_fraction"] = gc.coverage(r.pop("samples"), sets[r_mix][0])
                runs.append(r)
                log(
                    f"{mix} seed {seed} {f}: {steps} steps ({r['step_time_s']:.1f}s), "
                    f"tail {gc._fmt(r['tail_mmd2'])}, modes {r['modes']}"
                )
    rows = []
    for mix in a.mixtures:
        for f in fams:
            rs = [r for r in runs if r["mixture"] == mix and r["family"] == f]
            rows.append(
                {
                    "mixture": mix,
                    "family": f,
                    "lr": chosen[f],
                    "calibrated_ms_per_step": ms[f],
                    "steps": rs[0]["steps"],
                    "tail_mmd2": gc._stats([r["tail_mmd2"] for r in rs]),
                    "modes": gc._stats([r["modes"] for r in rs]),
                    "step_time_s": gc._stats([r["step_time_s"] for r in rs]),
                    "cg_iterations_mean": float(np.mean([r["cg_iterations_mean"] for r in rs])),
                    "cg_residual_median": float(np.median([r["cg_residual_median"] for r in rs])),
                    "runs": rs,
                }
            )
    meta.update(
        time_s=a.time,
        seeds=list(range(a.seeds)),
        noise_floor_mmd2={m: sets[m][3] for m in a.mixtures},
        loadavg_end=common.loadavg(ndigits=None),
        total_wall_s=time.perf_counter() - t_start,
    )
    result = {"meta": meta, "chosen_lr": chosen, "sweep": sweep, "rows": rows}
    out = common.write_json(
        a.out or common.default_out("generator_equal_time_v2"), result, dumps=gc.dumps
    )
    plot(rows, a.mixtures, Path(out).with_suffix(".png"))
    print(f"## Equal training time {a.time:g} s ({a.seeds} seeds)\n")
    print("| mixture | family | lr | ms/step | steps | held-out MMD^2 | modes | CG iters |")
    print("|---|---|---|---:|---:|---|---|---:|")
    for r in rows:
        t, mo = r["tail_mmd2"], r["modes"]
        print(
            f"| {r['mixture']} | {r['family']} | {r['lr']:g} | "
            f"{r['calibrated_ms_per_step']:.2f} | {r['steps']} | {gc._fmt(t['mean'])} ± "
            f"{gc._fmt(t['std'])} | {mo['mean']:.1f} | {r['cg_iterations_mean']:.1f} |"
        )
    print("\nnoise floor: " + ", ".join(f"{m} {gc._fmt(sets[m][3])}" for m in a.mixtures))
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s; wrote {out}")
    return result


if __name__ == "__main__":
    main()
