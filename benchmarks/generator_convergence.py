"""Benchmark: generator convergence along the kernelized, grad-penalty and MMD-GD directions.

Trains the same MLP generator on 2-D Gaussian mixtures with each direction of
:mod:`mmdflow.kernelized` for the same number of steps over several seeds:

* ``kernelized`` (variant B, reconstructed; ``optax.sgd``, the Euler scheme),
* ``grad-penalty`` (variant C, reconstructed; ``optax.sgd``),
* ``mmd-gd`` (plain MMD-GAN generator gradient; ``optax.sgd``),
* ``mmd-gd-adam`` (the same gradient fed to ``optax.adam``).

Mixtures: ``8gaussians`` (the library's ring, ``mmdflow.data.sample``) and two
mixtures generated here and used for nothing else: ``grid25`` (5 x 5 grid,
spacing 1, std 0.1) and ``random6`` (6 Gaussians, random centres, covariances and
weights drawn from a fixed seed).

Protocol: a small learning-rate sweep per direction on ``8gaussians`` seed 0 (the
learning rate with the lowest mean held-out MMD^2 over the last three evaluations
wins; the sweep is reported), then every direction with its chosen learning rate
on every mixture and seed. The seed-0 ``8gaussians`` runs of the chosen learning
rates are the sweep runs themselves (identical configuration), so that mixture's
seed 0 took part in the selection; the other mixtures did not.

Recorded per run: held-out unbiased MMD^2 every ``--eval-every`` steps
(``--eval-samples`` generated samples with fixed latents vs as many fresh target
samples), final modes covered and high-quality fraction (a sample is high quality
if its Mahalanobis distance to the nearest component is <= 3; a mode is covered
with >= 20 high-quality samples; for isotropic mixtures this is
``mmdflow.train.mode_coverage``), median step time, CG iterations. The noise floor
(unbiased MMD^2 of fresh target samples vs the held-out set) is reported per mixture.

One jitted step per direction is shared by all runs (the learning rate lives in
the optimizer state through ``optax.inject_hyperparams``), so each direction
compiles once.

``--equal-time SECONDS`` runs a different comparison instead (see :func:`equal_time`):
the kernelized direction at several CG iteration caps (``--cg-budgets``) against Adam
MMD-GD, each for the same training time.

Usage:
  python benchmarks/generator_convergence.py --quick     # smoke run, < 1 min
  python benchmarks/generator_convergence.py             # full run (~15 min, 2-core CPU)
  python benchmarks/generator_convergence.py --equal-time 20 --mixtures 8gaussians
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import re
import statistics
import time

import _common as common
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mmdflow import data, kernels, train
from mmdflow.mmd import mmd2

#: direction name -> (kind passed to GeneratorTrainer, optax optimizer factory)
METHODS = {
    "kernelized": ("kernelized", optax.sgd),
    "grad-penalty": ("grad-penalty", optax.sgd),
    "mmd-gd": ("mmd-gd", optax.sgd),
    "mmd-gd-adam": ("mmd-gd", optax.adam),
    "param-sobolev": ("param-sobolev", optax.sgd),
}
#: methods run by default (variant A, "param-sobolev", on request: ``--methods``)
DEFAULT_METHODS = ("kernelized", "grad-penalty", "mmd-gd", "mmd-gd-adam")
#: learning-rate grids of the sweep (full run / --quick)
LR_GRID = {
    "kernelized": (0.2, 0.5, 1.0),
    "grad-penalty": (0.1, 0.3, 1.0, 3.0),
    "mmd-gd": (0.1, 0.25, 0.5, 1.0, 2.0, 5.0),
    "mmd-gd-adam": (1e-3, 3e-3, 1e-2, 3e-2),
    "param-sobolev": (0.1, 0.3, 1.0, 3.0),
}
LR_GRID_QUICK = {
    "kernelized": (0.5,),
    "grad-penalty": (3.0,),
    "mmd-gd": (5.0,),
    "mmd-gd-adam": (3e-3,),
    "param-sobolev": (0.5,),
}
MIXTURES = ("8gaussians", "grid25", "random6")


# --------------------------------------------------------------------------- mixtures


def make_mixture(name: str) -> dict:
    """Centres ``[K, 2]``, covariances ``[K, 2, 2]`` and weights ``[K]`` of a named mixture."""
    if name == "8gaussians":  # matches mmdflow.data._eight_gaussians
        ang = 2.0 * np.pi * np.arange(8) / 8
        centers = 2.0 * np.stack([np.cos(ang), np.sin(ang)], axis=1)
        covs = np.tile(0.1**2 * np.eye(2), (8, 1, 1))
        weights = np.full(8, 1 / 8)
    elif name == "grid25":
        g = np.arange(-2.0, 2.5, 1.0)
        centers = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
        covs = np.tile(0.1**2 * np.eye(2), (25, 1, 1))
        weights = np.full(25, 1 / 25)
    elif name == "random6":
        rng = np.random.default_rng(2021)
        centers = np.zeros((0, 2))
        while len(centers) < 6:  # rejection: centres at least 1.2 apart
            c = rng.uniform(-2.5, 2.5, size=2)
            if len(centers) == 0 or np.linalg.norm(centers - c, axis=1).min() >= 1.2:
                centers = np.vstack([centers, c])
        covs = []
        for _ in range(6):
            a = rng.uniform(0, np.pi)
            rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
            s = rng.uniform(0.05, 0.25, size=2)
            covs.append(rot @ np.diag(s**2) @ rot.T)
        covs = np.stack(covs)
        weights = rng.dirichlet(np.full(6, 5.0))
    else:
        raise ValueError(f"unknown mixture {name!r}; valid: {MIXTURES}")
    return {"name": name, "centers": centers, "covs": covs, "weights": weights}


def sample_mixture(mix: dict, n: int, seed: int) -> np.ndarray:
    """``n`` float32 samples of ``mix`` (``8gaussians`` uses ``mmdflow.data.sample``)."""
    if mix["name"] == "8gaussians":
        return data.sample("8gaussians", n, seed)
    rng = np.random.default_rng(seed)
    k = rng.choice(len(mix["weights"]), size=n, p=mix["weights"])
    chol = np.linalg.cholesky(mix["covs"])
    eps = rng.standard_normal((n, 2))
    return (mix["centers"][k] + np.einsum("nij,nj->ni", chol[k], eps)).astype(np.float32)


def coverage(samples, mix: dict, *, radius: float = 3.0, min_count: int = 20):
    """``(modes covered, high-quality fraction)`` with Mahalanobis distances to the components."""
    s = np.asarray(samples, np.float64)
    diff = s[:, None, :] - mix["centers"][None]  # [n, K, 2]
    prec = np.linalg.inv(mix["covs"])
    dist = np.sqrt(np.maximum(np.einsum("nki,kij,nkj->nk", diff, prec, diff), 0.0))
    nearest = dist.argmin(1)
    good = dist.min(1) <= radius
    counts = np.bincount(nearest[good], minlength=len(mix["centers"]))
    return int((counts >= min_count).sum()), float(good.mean())


# --------------------------------------------------------------------------- training


def _finite_or_inf(x: float) -> float:
    return x if math.isfinite(x) else math.inf


def make_trainers(methods, kernel, batch_size, reg, hidden, latent_dim, cg_maxiter):
    """One GeneratorTrainer (one compiled step) per method."""
    out = {}
    for m in methods:
        kind, opt = METHODS[m]
        gen = train.MLPGenerator(latent_dim, 2, hidden, rngs=nnx.Rngs(0))
        tx = optax.inject_hyperparams(opt)(learning_rate=1.0)
        out[m] = train.GeneratorTrainer(
            gen, tx, kernel, kind=kind, reg=reg, batch_size=batch_size, cg_maxiter=cg_maxiter
        )
    return out


def run_one(tr, method, lr, seed, y_train, y_eval, z_eval, evaluate, steps, eval_every, hidden):
    """Trains from the seed's initialization; returns a record with curves and timings."""
    _, opt = METHODS[method]
    gen = train.MLPGenerator(tr.dz, 2, hidden, rngs=nnx.Rngs(seed))
    params = nnx.split(gen)[1]
    opt_state = optax.inject_hyperparams(opt)(learning_rate=lr).init(params)
    state = train.TrainState(params, opt_state, jax.random.key(seed), jnp.zeros((), jnp.int32))
    ev_step, ev = [0], [float(evaluate(state.params, z_eval, y_eval))]
    times, cg_its, cg_res, batch_mmd = [], [], [], []
    t_run = time.perf_counter()
    for i in range(1, steps + 1):
        t0 = time.perf_counter()
        state, info = tr.step(state, y_train)
        info = jax.device_get(info)
        times.append(time.perf_counter() - t0)
        cg_its.append(int(info["cg_iterations"]))
        cg_res.append(float(info["cg_residual"]))
        batch_mmd.append(float(info["mmd2"]))
        if i % eval_every == 0 or i == steps:
            ev_step.append(i)
            ev.append(float(evaluate(state.params, z_eval, y_eval)))
            if not math.isfinite(ev[-1]):
                break
    wall = time.perf_counter() - t_run
    samples = np.asarray(tr.gen_fn(state.params, z_eval))
    tail = [_finite_or_inf(v) for v in ev[-3:]]
    return {
        "method": method,
        "lr": lr,
        "seed": seed,
        "eval_step": ev_step,
        "eval_mmd2": ev,
        "initial_mmd2": ev[0],
        "final_mmd2": ev[-1],
        "tail_mmd2": sum(tail) / len(tail),
        "batch_mmd2_last": batch_mmd[-1],
        "step_ms_median": 1e3 * statistics.median(times[1:] if len(times) > 1 else times),
        "first_step_s": times[0],
        "cg_iterations_mean": float(np.mean(cg_its)),
        "cg_iterations_max": int(np.max(cg_its)),
        "cg_residual_median": float(np.median(cg_res)),
        "wall_s": wall,
        "samples": samples,
    }


def _stats(v):
    v = [float(x) for x in v]
    return {"mean": float(np.mean(v)), "std": float(np.std(v)), "values": v}


def dumps(obj) -> str:
    """JSON with ``indent=1``, but ``[x, y]`` number pairs (samples, centres) on one line."""
    num = r"(-?(?:\d+\.?\d*(?:e[+-]?\d+)?|Infinity|NaN))"
    return re.sub(rf"\[\s+{num},\s+{num}\s+\]", r"[\1, \2]", json.dumps(obj, indent=1))


_fmt = functools.partial(common.fmt, spec=".2e")


# --------------------------------------------------------------------------- equal time


def equal_time(a, kernel, hidden, latent_dim, log):
    """``--equal-time SECONDS``: kernelized at several CG caps vs Adam MMD-GD at equal time.

    Per configuration, ms/step is calibrated first (interleaved rounds of 40 steps, the
    minimum over rounds of the median, so that load changes hit all configurations alike);
    each run then takes ``SECONDS / (ms/step)`` steps on the first mixture. Reported: the
    mean held-out MMD^2 of the last 3 of 10 evaluations, per seed and mean ± std.
    """
    batch = a.batch_size or 128
    n_eval = a.eval_samples or 2000
    seeds = list(range(a.seeds or 3))
    configs = [(f"kernelized-cg{c}", "kernelized", a.kernelized_lr, c) for c in a.cg_budgets]
    configs.append(("mmd-gd-adam", "mmd-gd-adam", a.adam_lr, 1))
    trainers = {}
    for label, method, lr, cap in configs:
        kind, opt = METHODS[method]
        gen = train.MLPGenerator(latent_dim, 2, hidden, rngs=nnx.Rngs(0))
        tx = optax.inject_hyperparams(opt)(learning_rate=lr)
        trainers[label] = train.GeneratorTrainer(
            gen, tx, kernel, kind=kind, reg=a.reg, batch_size=batch, cg_maxiter=cap
        )
    mix = make_mixture(a.mixtures[0])
    y_train = jnp.asarray(sample_mixture(mix, 4096, seed=100))
    y_eval = jnp.asarray(sample_mixture(mix, n_eval, seed=200))
    z_eval = jax.random.normal(jax.random.key(12345), (n_eval, latent_dim))
    gen_fn = next(iter(trainers.values())).gen_fn
    evaluate = jax.jit(
        lambda params, z, y: mmd2(gen_fn(params, z), y, kernel, estimator="unbiased")
    )
    ms = {label: [] for label in trainers}
    for _ in range(2):
        for label, tr in trainers.items():
            state, times = tr.init(jax.random.key(0)), []
            for _ in range(40):
                t0 = time.perf_counter()
                state, _ = tr.step(state, y_train)
                jax.block_until_ready(state)
                times.append(time.perf_counter() - t0)
            ms[label].append(1e3 * statistics.median(times[5:]))
    ms = {label: min(v) for label, v in ms.items()}
    log(f"calibrated ms/step: {ms}")
    rows = []
    for label, method, lr, cap in configs:
        steps = max(int(a.equal_time * 1e3 / ms[label]), 10)
        runs = []
        for seed in seeds:
            r = run_one(
                trainers[label], method, lr, seed, y_train, y_eval, z_eval, evaluate, steps,
                max(steps // 10, 1), hidden,
            )  # fmt: skip
            r.pop("samples")
            runs.append(r)
            log(f"{label} seed {seed}: {steps} steps, tail MMD2 {_fmt(r['tail_mmd2'])}")
        tails = [r["tail_mmd2"] for r in runs]
        rows.append(
            {
                "config": label,
                "method": method,
                "lr": lr,
                "cg_maxiter": cap if method == "kernelized" else None,
                "calibrated_ms_per_step": ms[label],
                "steps": steps,
                "tail_mmd2": _stats(tails),
                "cg_iterations_mean": float(np.mean([r["cg_iterations_mean"] for r in runs])),
                "cg_residual_median": float(np.median([r["cg_residual_median"] for r in runs])),
                "runs": runs,
            }
        )
    meta = {
        "date_utc": common.utc_timestamp(zulu=False),
        **common.environment("platform", "device", "jax", "cpu_count"),
        "loadavg": common.loadavg(ndigits=None),
        "config": {
            "equal_time_s": a.equal_time,
            "mixture": a.mixtures[0],
            "seeds": seeds,
            "batch_size": batch,
            "reg": a.reg,
            "cg_tol": next(iter(trainers.values())).cg_tol,
            "eval_samples": n_eval,
            "generator": f"MLPGenerator(latent_dim={latent_dim}, out_dim=2, hidden={hidden})",
            "kernel": "MixtureRBF((0.1, 0.3, 1.0))",
            "metric": "mean held-out unbiased MMD^2 of the last 3 of 10 evaluations",
        },
    }
    out = a.out or common.default_out("generator_equal_time")
    out = common.write_json(out, {"meta": meta, "rows": rows}, dumps=dumps)
    print(f"## Equal training time {a.equal_time:g} s ({a.mixtures[0]}, {len(seeds)} seeds)\n")
    print("| config | lr | ms/step | steps | held-out MMD^2 | CG iters | CG rel. residual |")
    print("|---|---|---:|---:|---|---:|---:|")
    for r in rows:
        t = r["tail_mmd2"]
        print(
            f"| {r['config']} | {r['lr']:g} | {r['calibrated_ms_per_step']:.1f} | {r['steps']} | "
            f"{_fmt(t['mean'])} ± {_fmt(t['std'])} | {r['cg_iterations_mean']:.1f} | "
            f"{r['cg_residual_median']:.2f} |"
        )
    print(f"\nwrote {out}")
    return rows


# --------------------------------------------------------------------------- main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run (< 1 min on a 2-core CPU)")
    p.add_argument("--steps", type=int, default=None, help="training steps per run")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (0..seeds-1)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument(
        "--reg", type=float, default=1e-2, help="ridge lambda (kernelized, grad-penalty)"
    )
    p.add_argument(
        "--cg-maxiter",
        type=int,
        default=train.GeneratorTrainer.cg_maxiter,
        help="CG iteration cap (default: the trainer's)",
    )
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--eval-samples", type=int, default=None)
    p.add_argument("--mixtures", nargs="+", default=list(MIXTURES), choices=MIXTURES)
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=list(METHODS))
    p.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    p.add_argument(
        "--save-samples", type=int, default=500, help="generated samples kept (seed-0 runs only)"
    )
    p.add_argument(
        "--equal-time",
        type=float,
        default=None,
        metavar="SECONDS",
        help="instead: kernelized at each --cg-budgets cap vs Adam MMD-GD at equal time",
    )
    p.add_argument("--cg-budgets", type=int, nargs="+", default=[50, 20, 10])
    p.add_argument("--kernelized-lr", type=float, default=0.5, help="(--equal-time)")
    p.add_argument("--adam-lr", type=float, default=3e-3, help="(--equal-time)")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    steps = a.steps or (20 if a.quick else 300)
    n_seeds = a.seeds or (1 if a.quick else 3)
    batch = a.batch_size or (64 if a.quick else 128)
    eval_every = a.eval_every or (10 if a.quick else 20)
    n_eval = a.eval_samples or (400 if a.quick else 2000)
    grid = LR_GRID_QUICK if a.quick else LR_GRID
    hidden = tuple(a.hidden)
    kernel = kernels.MixtureRBF((0.1, 0.3, 1.0))
    latent_dim = 2
    load0 = common.loadavg(ndigits=None)
    t_start = time.perf_counter()

    def log(msg):
        common.log(f"[{time.perf_counter() - t_start:7.1f}s] {msg}")

    if a.equal_time is not None:
        return equal_time(a, kernel, hidden, latent_dim, log)
    trainers = make_trainers(a.methods, kernel, batch, a.reg, hidden, latent_dim, a.cg_maxiter)
    gen_fn = next(iter(trainers.values())).gen_fn
    evaluate = jax.jit(
        lambda params, z, y: mmd2(gen_fn(params, z), y, kernel, estimator="unbiased")
    )
    z_eval = jax.random.normal(jax.random.key(12345), (n_eval, latent_dim))

    mixtures = {m: make_mixture(m) for m in a.mixtures}
    sets = {}
    for j, m in enumerate(a.mixtures):
        y_train = jnp.asarray(sample_mixture(mixtures[m], 4096, seed=100 + j))
        y_eval = jnp.asarray(sample_mixture(mixtures[m], n_eval, seed=200 + j))
        y_ref = sample_mixture(mixtures[m], n_eval, seed=300 + j)
        floor = float(mmd2(jnp.asarray(y_ref), y_eval, kernel, estimator="unbiased"))
        sets[m] = (y_train, y_eval, floor, coverage(y_ref, mixtures[m]))

    def strip(r, keep):
        r = dict(r)
        r["samples"] = np.round(r["samples"][:keep], 3).tolist()
        return r

    # ---- learning-rate sweep on the first mixture, seed 0
    sweep_mix = a.mixtures[0]
    y_train, y_eval, _, _ = sets[sweep_mix]
    sweep, chosen, reuse = [], {}, {}
    for m in a.methods:
        best = None
        for lr in grid[m]:
            r = run_one(
                trainers[m], m, lr, 0, y_train, y_eval, z_eval, evaluate, steps, eval_every, hidden
            )
            r["modes"], r["hq_fraction"] = coverage(r["samples"], mixtures[sweep_mix])
            log(
                f"sweep {sweep_mix} {m} lr={lr:g}: final MMD2 {_fmt(r['final_mmd2'])} "
                f"modes {r['modes']} ({r['wall_s']:.1f}s, {r['step_ms_median']:.1f} ms/step)"
            )
            sweep.append(strip(r, 0))
            if best is None or r["tail_mmd2"] < best["tail_mmd2"]:
                best = r
        chosen[m] = best["lr"]
        reuse[m] = best

    # ---- main runs
    runs = []
    for mix in a.mixtures:
        y_train, y_eval, _, _ = sets[mix]
        for seed in range(n_seeds):
            for m in a.methods:
                if mix == sweep_mix and seed == 0:
                    r = reuse[m]
                else:
                    r = run_one(
                        trainers[m],
                        m,
                        chosen[m],
                        seed,
                        y_train,
                        y_eval,
                        z_eval,
                        evaluate,
                        steps,
                        eval_every,
                        hidden,
                    )
                r["mixture"] = mix
                r["modes"], r["hq_fraction"] = coverage(r["samples"], mixtures[mix])
                log(
                    f"{mix} seed {seed} {m}: MMD2 {_fmt(r['initial_mmd2'])} -> "
                    f"{_fmt(r['final_mmd2'])}, modes {r['modes']}/{len(mixtures[mix]['weights'])}"
                    f", hq {r['hq_fraction']:.2f}, {r['step_ms_median']:.1f} ms/step"
                )
                runs.append(strip(r, a.save_samples if seed == 0 else 0))

    # ---- summary
    summary = []
    for mix in a.mixtures:
        for m in a.methods:
            rs = [r for r in runs if r["mixture"] == mix and r["method"] == m]
            summary.append(
                {
                    "mixture": mix,
                    "method": m,
                    "lr": chosen[m],
                    "num_modes": len(mixtures[mix]["weights"]),
                    "final_mmd2": _stats([r["final_mmd2"] for r in rs]),
                    "modes": _stats([r["modes"] for r in rs]),
                    "hq_fraction": _stats([r["hq_fraction"] for r in rs]),
                    "step_ms_median": _stats([r["step_ms_median"] for r in rs]),
                    "cg_iterations_mean": _stats([r["cg_iterations_mean"] for r in rs]),
                    "cg_residual_median": _stats([r["cg_residual_median"] for r in rs]),
                }
            )
    total = time.perf_counter() - t_start
    meta = {
        "date_utc": common.utc_timestamp(zulu=False),
        **common.environment("platform", "device", "jax"),
        "optax": optax.__version__,
        **common.environment("python", "cpu_count"),
        "loadavg_start": load0,
        "loadavg_end": common.loadavg(ndigits=None),
        "total_wall_s": total,
        "quick": a.quick,
        "config": {
            "steps": steps,
            "seeds": list(range(n_seeds)),
            "batch_size": batch,
            "reg": a.reg,
            "cg_tol": trainers[a.methods[0]].cg_tol,
            "cg_maxiter": a.cg_maxiter,
            "eval_every": eval_every,
            "eval_samples": n_eval,
            "generator": f"MLPGenerator(latent_dim={latent_dim}, out_dim=2, hidden={hidden})",
            "kernel": "MixtureRBF((0.1, 0.3, 1.0))",
            "lr_grid": {m: list(grid[m]) for m in a.methods},
            "sweep_mixture": sweep_mix,
            "selection": "lowest mean held-out MMD^2 over the last 3 evaluations, seed 0",
            "coverage": "Mahalanobis distance <= 3 to nearest component; >= 20 samples per mode",
        },
        "mixtures": {
            m: {
                "centers": mixtures[m]["centers"].tolist(),
                "covs": mixtures[m]["covs"].tolist(),
                "weights": mixtures[m]["weights"].tolist(),
                "noise_floor_mmd2": sets[m][2],
                "target_coverage": list(sets[m][3]),
            }
            for m in a.mixtures
        },
    }
    result = {"meta": meta, "chosen_lr": chosen, "sweep": sweep, "runs": runs, "summary": summary}
    out = common.write_json(
        a.out or common.default_out("generator_convergence", a.quick), result, dumps=dumps
    )

    # ---- markdown
    print(f"## Learning-rate sweep ({sweep_mix}, seed 0, {steps} steps)\n")
    print("| method | lr | final MMD^2 | mean last 3 evals | modes | chosen |")
    print("|---|---|---|---|---|---|")
    for r in sweep:
        mark = "yes" if chosen[r["method"]] == r["lr"] else ""
        print(
            f"| {r['method']} | {r['lr']:g} | {_fmt(r['final_mmd2'])} | {_fmt(r['tail_mmd2'])} | "
            f"{r['modes']} | {mark} |"
        )
    print(
        f"\n## Final held-out MMD^2 after {steps} steps (mean ± std over {n_seeds} seeds), "
        f"batch {batch}\n"
    )
    print(
        "| mixture | method | lr | final MMD^2 | modes covered | high-quality frac | "
        "ms/step | CG iters | CG rel. residual |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for s in summary:
        f, mo, hq = s["final_mmd2"], s["modes"], s["hq_fraction"]
        print(
            f"| {s['mixture']} | {s['method']} | {s['lr']:g} | {_fmt(f['mean'])} ± "
            f"{_fmt(f['std'])} | {mo['mean']:.1f}/{s['num_modes']} (min {min(mo['values']):.0f})"
            f" | {hq['mean']:.2f} ± {hq['std']:.2f} | {s['step_ms_median']['mean']:.1f} | "
            f"{s['cg_iterations_mean']['mean']:.1f} | {s['cg_residual_median']['mean']:.1e} |"
        )
    print("\nnoise floor (fresh target vs held-out, unbiased MMD^2): ", end="")
    print(", ".join(f"{m} {_fmt(sets[m][2])}" for m in a.mixtures))
    print(f"\ntotal {total:.0f} s; wrote {out}")
    return result


if __name__ == "__main__":
    main()
