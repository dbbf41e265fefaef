"""Benchmark: MMD GAN with learned kernels, kernelized direction vs MMD GAN-GP / SMMD (issue 14).

Every method trains a generator against an adversarial critic (``mmdflow.critics.Critic``:
``MixtureRBF((0.5, 1, 2))`` on the features of an MLP 64-64 -> 16, or ``ConvFeatures(16)`` for
digits; critic Adam 1e-3, b1 0.5, b2 0.9, penalty 1, the library defaults), with the critic
either ``mmd-gp`` (MMD GAN-GP, Bińkowski et al. 2018) or ``smmd`` (Scaled MMD, Arbel et al.
2018). The generator step differs:

* ``kz-sgd``: the parametric kernelized direction (variant B, CG-solved, ``reg`` 1e-2, cap 20) in
  the learned kernel, ``optax.sgd`` (the paper's Euler scheme);
* ``kz-adam``: the same direction fed to ``optax.adam``;
* ``gd-adam``: ``kind="mmd-gd"`` (the MMD^2 gradient of the learned kernel) with ``optax.adam``:
  the standard gradient-regularized MMD GAN (GP or SMMD).

Evaluation: held-out unbiased MMD^2 under a *fixed* kernel, ``MixtureRBF`` with bandwidths
(0.125, 0.25, 0.5, 1) x the median bandwidth of train + held-out data (as ``mmdflow train``
builds it), 1000 generated samples (fixed latents) vs held-out target samples.

Data: ``8gaussians`` and ``grid25`` (from ``generator_convergence.py``), ``emb10`` (8gaussians
mapped into 10-D by a fixed random orthonormal 2 -> 10 map, plus N(0, 0.05^2 I_10) noise; mode
coverage on the projection back to 2-D), ``digits`` (scikit-learn's 8x8 digits, 1297 train /
500 held out; ``train.ConvGenerator`` vs ``critics.ConvFeatures``; class coverage = classes
given >= 20 of the 1000 samples by a 1-NN classifier on the training digits, "hq" = fraction of
samples whose nearest training digit is no farther than the 95th percentile of the held-out
digits' nearest-training-digit distances).

CONVERGENCE THRESHOLD (fixed before any result was seen): a run *converged* when it did not
diverge and its final held-out MMD^2 is below that of a "one mode dropped" reference sampler:
1000 fresh target samples with mode 0 removed (weights renormalized; for digits: 500 training
digits that are not a 0) vs the same held-out set under the same kernel. I.e. converged = closer
to the target than a perfect sampler of all modes but one. Divergence: the library's rules
(``train.GeneratorTrainer.fit``): a non-finite parameter or held-out MMD^2, a held-out MMD^2
above ``train.DIVERGENCE_FACTOR`` x its initial value, or the samples escaping the target
(overlap below ``train.ESCAPE_FRACTION`` x its initial value); a diverged run stops there and
counts as not converged.

Parts (``--part``):

* ``stability`` (8gaussians; ``--stability-data`` adds grid25): generator learning rates (3
  values spanning 10x per method) x critic steps {1, 5} x seeds {0, 1, 2} x both critics x all
  methods; fraction converged, mode coverage, median / IQR / std of the final held-out MMD^2,
  divergences. Loop order seed > lr > critic steps > critic > method, so load changes hit all
  methods alike.
* ``compare``: equal steps (critic steps 5, each method's learning rate chosen on the
  stability grid: most converged seeds, then lowest median final MMD^2, at critic steps 5; the 8gaussians runs
  are those grid runs) on all data sets, 3 seeds; then equal wall time: per data set and critic,
  the time budget is the slowest method's training time at equal steps (median ms/step of its
  runs x steps) and each method runs ``budget / its ms/step`` steps (runs whose step count is
  within 10% of the equal-steps one are reused, not rerun).

Usage:
  python benchmarks/mmd_gan_stability.py --quick                 # smoke run, ~45-60 s (loaded)
  python benchmarks/mmd_gan_stability.py --part stability        # 18 min on 2 loaded cores
  python benchmarks/mmd_gan_stability.py --part compare --datasets 8gaussians grid25 emb10
                                                                 # 10 min (reads the above)

  python benchmarks/mmd_gan_stability.py --part compare --datasets digits --steps 100
      --seeds 2 --batch-size 64 --critic-steps 1 --eval-every 20
      --out benchmarks/results/mmd_gan_compare_digits_cpu.json   # one command; 36 min

Digits are slow on CPU (2 loaded cores, batch 128, critic steps 5: kernelized step ~3 s with the
GP critic, ~8 s with SMMD, whose critic update differentiates the features' Jacobian; gd-adam
~1.9 s with GP), so RESULTS.md's digits run is the smaller configuration above (batch 64, 100
steps, 1 critic update per generator step, 2 seeds), run on its own.
No pytest smoke test: ``--quick`` takes longer than the 10 s CI allowance (compilation).

JSON + PNG per part: ``benchmarks/results/mmd_gan_{stability,compare}_<platform>[_quick]``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import _common as common
import generator_convergence as gc
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mmdflow import critics, data, kernels, train
from mmdflow.kernels import median_bandwidth
from mmdflow.mmd import mmd2
from mmdflow.ops import kernel_matvec

#: method -> (direction kind, generator optimizer)
METHODS = {
    "kz-sgd": ("kernelized", optax.sgd),
    "kz-adam": ("kernelized", optax.adam),
    "gd-adam": ("mmd-gd", optax.adam),
}
CRITIC_KINDS = ("mmd-gp", "smmd")
#: generator learning rates of the stability grid (3 values spanning 10x)
LR_GRID = {
    "kz-sgd": (0.1, 0.3, 1.0),
    "kz-adam": (3e-4, 1e-3, 3e-3),
    "gd-adam": (3e-4, 1e-3, 3e-3),
}
#: learning rates when no stability result is available (--quick, or --part compare alone)
DEFAULT_LR = {"kz-sgd": 0.3, "kz-adam": 1e-3, "gd-adam": 1e-3}
DATASETS = ("8gaussians", "grid25", "emb10", "digits")
#: the eval kernel's bandwidths in units of the median bandwidth (mmdflow train's "mixture")
EVAL_FACTORS = (0.125, 0.25, 0.5, 1.0)
CRITIC_BASE = (0.5, 1.0, 2.0)
REG = 1e-2
EMB_NOISE = 0.05


# --------------------------------------------------------------------------- data sets


_CACHE: dict = {}


def make_dataset(name: str, n_eval: int) -> dict:
    """Train / held-out points, the eval kernel, the reference MMD^2s and a coverage function."""
    key = ("data", name, n_eval)
    if key not in _CACHE:
        _CACHE[key] = _make_dataset(name, n_eval)
    return _CACHE[key]


def _make_dataset(name: str, n_eval: int) -> dict:
    if name in ("8gaussians", "grid25", "emb10"):
        mix = gc.make_mixture("8gaussians" if name == "emb10" else name)
        y_train = gc.sample_mixture(mix, 4096, seed=100)
        y_eval = gc.sample_mixture(mix, n_eval, seed=200)
        y_ref = gc.sample_mixture(mix, n_eval, seed=300)
        # "one mode dropped": fresh samples, mode 0 removed, weights renormalized
        drop = dict(mix, weights=np.where(np.arange(len(mix["weights"])) == 0, 0.0, 1.0))
        drop["weights"] = (
            drop["weights"] * mix["weights"] / (drop["weights"] * mix["weights"]).sum()
        )
        drop["name"] = "dropped"  # sample_mixture's generic path
        y_drop = gc.sample_mixture(drop, n_eval, seed=400)
        cov_mix = mix
        if name == "emb10":
            q = np.linalg.qr(np.random.default_rng(10).standard_normal((10, 2)))[0]  # [10, 2]
            rng = np.random.default_rng(500)

            def embed(p):
                p = p @ q.T
                return (p + EMB_NOISE * rng.standard_normal(p.shape)).astype(np.float32)

            y_train, y_eval, y_ref, y_drop = map(embed, (y_train, y_eval, y_ref, y_drop))
            cov_mix = dict(mix, covs=mix["covs"] + EMB_NOISE**2 * np.eye(2))

            def coverage(s):
                return gc.coverage(np.asarray(s) @ q, cov_mix)
        else:

            def coverage(s):
                return gc.coverage(s, cov_mix)

        num_modes = len(mix["weights"])
    elif name == "digits":
        x, lab = data.digits()
        idx = np.random.default_rng(7).permutation(len(x))
        ev, tr_ = idx[:500], idx[500:]
        y_train, y_eval, lab_train = x[tr_], x[ev], lab[tr_]
        y_ref = y_train[:500]
        y_drop = y_train[lab_train != 0][:500]
        d_eval = _nn_dist(y_eval, y_train)[0]
        hq_radius = float(np.quantile(d_eval, 0.95))

        def coverage(s):
            d, j = _nn_dist(np.asarray(s), y_train)
            counts = np.bincount(lab_train[j], minlength=10)
            return int((counts >= 20).sum()), float((d <= hq_radius).mean())

        num_modes = 10
    else:
        raise ValueError(f"unknown data set {name!r}; valid: {DATASETS}")
    bw = float(median_bandwidth(y_train[:1000], y_eval))
    kernel = kernels.MixtureRBF(np.asarray([bw * f for f in EVAL_FACTORS], np.float32))
    y_eval_j = jnp.asarray(y_eval)
    floor = float(mmd2(jnp.asarray(y_ref), y_eval_j, kernel, estimator="unbiased"))
    thresh = float(mmd2(jnp.asarray(y_drop), y_eval_j, kernel, estimator="unbiased"))
    ones = jnp.full((len(y_eval),), 1.0 / len(y_eval), jnp.float32)
    kyy = float(jnp.mean(kernel_matvec(kernel, y_eval_j, y_eval_j, ones)))
    return {
        "name": name,
        "y_train": jnp.asarray(y_train),
        "y_eval": y_eval_j,
        "d": int(y_train.shape[1]),
        "bandwidth": bw,
        "kernel": kernel,
        "ones": ones,
        "kyy": kyy,
        "noise_floor": floor,
        "threshold": thresh,
        "target_coverage": list(coverage(y_ref)),
        "coverage": coverage,
        "num_modes": num_modes,
    }


def _nn_dist(a: np.ndarray, b: np.ndarray):
    """Distance to and index of the nearest row of ``b`` for each row of ``a``."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2.0 * a @ b.T
    j = d2.argmin(1)
    return np.sqrt(np.maximum(d2[np.arange(len(a)), j], 0.0)), j


# --------------------------------------------------------------------------- models


def _nets(ds: dict, seed: int):
    """Generator and critic feature network for data set ``ds``, initialized from ``seed``."""
    if ds["name"] == "digits":
        return (
            train.ConvGenerator(latent_dim=16, channels=32, rngs=nnx.Rngs(seed)),
            critics.ConvFeatures(16, rngs=nnx.Rngs(seed + 1000)),
        )
    return (
        train.MLPGenerator(2, ds["d"], (64, 64), rngs=nnx.Rngs(seed)),
        critics.MLPFeatures(ds["d"], 16, (64, 64), rngs=nnx.Rngs(seed + 1000)),
    )


def make_trainer(ds: dict, method: str, critic_kind: str, critic_steps: int, batch: int):
    """One GeneratorTrainer (one compiled step, cached per process); the learning rate lives
    in the optimizer state."""
    # shared by data sets of the same shape (8gaussians, grid25): with a critic, the trainer's
    # kernel is only fit()'s evaluation kernel, unused here (make_evaluate has the data set's)
    key = ("trainer", ds["d"], ds["name"] == "digits", method, critic_kind, critic_steps, batch)
    if key in _CACHE:
        return _CACHE[key]
    kind, opt = METHODS[method]
    gen, feats = _nets(ds, 0)
    critic = critics.Critic(
        feats, kernels.MixtureRBF(CRITIC_BASE), kind=critic_kind, steps=critic_steps
    )
    tx = optax.inject_hyperparams(opt)(learning_rate=1.0)
    _CACHE[key] = train.GeneratorTrainer(
        gen, tx, ds["kernel"], kind=kind, reg=REG, batch_size=batch, critic=critic
    )
    return _CACHE[key]


def make_evaluate(tr, ds: dict, n_eval: int):
    """Jitted ``params -> (held-out MMD^2, overlap)`` with fixed latents (one per data set)."""
    z = jax.random.normal(jax.random.key(12345), (n_eval, tr.dz))
    k, y, ones, kyy = ds["kernel"], ds["y_eval"], ds["ones"], ds["kyy"]

    @jax.jit
    def _evaluate(params, z, y, ones):  # arrays as arguments: no constant folding of y y^T
        x = tr.gen_fn(params, z)
        overlap = jnp.mean(kernel_matvec(k, x, y, ones)) / kyy
        return mmd2(x, y, k, estimator="unbiased"), overlap

    return (lambda params: _evaluate(params, z, y, ones)), z


def run_one(tr, ds, evaluate, z_eval, method, lr, seed, steps, eval_every) -> dict:
    """Trains from seed ``seed`` (generator and critic init, minibatches); the library's
    divergence rules of ``GeneratorTrainer.fit`` stop a run (see the module docstring)."""
    _, opt = METHODS[method]
    gen, feats = _nets(ds, seed)
    params = nnx.split(gen)[1]
    opt_state = optax.inject_hyperparams(opt)(learning_rate=lr).init(params)
    cstate = tr.critic.init(nnx.split(feats)[1])
    state = train.TrainState(
        params, opt_state, jax.random.key(seed), jnp.zeros((), jnp.int32), cstate
    )
    v0, o0 = (float(v) for v in evaluate(state.params))
    ev_step, ev, diverged = [0], [v0], None
    times, cmmd, cpen = [], [], []
    for i in range(1, steps + 1):
        t0 = time.perf_counter()
        new, info = tr.step(state, ds["y_train"])
        info = jax.device_get(info)
        times.append(time.perf_counter() - t0)
        cmmd.append(float(info["critic_mmd2"]))
        cpen.append(float(info["critic_penalty"]))
        if not bool(info["finite"]):
            diverged = {"step": i, "kind": "non-finite"}
            break
        state = new
        if i % eval_every == 0 or i == steps:
            v, o = (float(t) for t in evaluate(state.params))
            ev_step.append(i)
            ev.append(v)
            if not math.isfinite(v):
                diverged = {"step": i, "kind": "non-finite"}
            elif v0 > 0 and v > train.DIVERGENCE_FACTOR * v0:
                diverged = {"step": i, "kind": "rise"}
            elif o0 > 0 and o < train.ESCAPE_FRACTION * o0:
                diverged = {"step": i, "kind": "escaped"}
            if diverged:
                break
    samples = np.asarray(tr.gen_fn(state.params, z_eval))
    modes, hq = ds["coverage"](samples) if np.isfinite(samples).all() else (0, 0.0)
    final = ev[-1] if math.isfinite(ev[-1]) else math.inf
    return {
        "method": method,
        "lr": lr,
        "seed": seed,
        "steps_run": len(times),
        "eval_step": ev_step,
        "eval_mmd2": ev,
        "final_mmd2": final,
        "diverged": diverged,
        "converged": diverged is None and final < ds["threshold"],
        "modes": modes,
        "hq_fraction": hq,
        "critic_mmd2_last": cmmd[-1] if cmmd else None,
        "critic_penalty_last": cpen[-1] if cpen else None,
        "step_ms_median": 1e3 * statistics.median(times[1:] if len(times) > 1 else times),
        "train_s": float(sum(times)),
        "samples": samples,
    }


def summarize(rs: list[dict]) -> dict:
    f = np.asarray([r["final_mmd2"] for r in rs], np.float64)
    ok = f[np.isfinite(f)]
    q1, med, q3 = (float(np.percentile(f, p)) for p in (25, 50, 75)) if len(f) else (math.nan,) * 3
    return {
        "n": len(rs),
        "converged": int(sum(r["converged"] for r in rs)),
        "diverged": int(sum(r["diverged"] is not None for r in rs)),
        "median": med,
        "iqr": q3 - q1,
        "mean": float(ok.mean()) if len(ok) else math.nan,
        "std": float(ok.std()) if len(ok) else math.nan,
        "modes_mean": float(np.mean([r["modes"] for r in rs])),
        "modes_min": int(min(r["modes"] for r in rs)),
        "hq_mean": float(np.mean([r["hq_fraction"] for r in rs])),
        "step_ms_median": float(np.median([r["step_ms_median"] for r in rs])),
    }


def _strip(r: dict, keep: int) -> dict:
    r = dict(r)
    r["samples"] = np.round(r["samples"][:keep], 3).tolist() if keep else []
    return r


def _clean(obj):
    """JSON-safe: inf/nan -> strings."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def _ds_meta(ds: dict) -> dict:
    keys = ("d", "bandwidth", "noise_floor", "threshold", "target_coverage", "num_modes")
    return {k: ds[k] for k in keys}


def _meta(a, extra: dict, load0, t_start) -> dict:
    return {
        "date_utc": common.utc_timestamp(zulu=False),
        **common.environment("platform", "device", "jax"),
        "optax": optax.__version__,
        "flax": __import__("flax").__version__,
        **common.environment("mmdflow", "python", "cpu_count"),
        "loadavg_start": load0,
        "loadavg_end": common.loadavg(),
        "total_wall_s": time.perf_counter() - t_start,
        "quick": a.quick,
        "config": {
            "batch_size": a.batch_size,
            "steps": a.steps,
            "eval_every": a.eval_every,
            "eval_samples": a.eval_samples,
            "reg": REG,
            "cg_maxiter": train.GeneratorTrainer.cg_maxiter,
            "critic": f"MixtureRBF({CRITIC_BASE}) on MLPFeatures(d, 16, (64, 64)) "
            "(digits: ConvFeatures(16)), Adam(1e-3, b1=0.5, b2=0.9), penalty 1",
            "generator": "MLPGenerator(2, d, (64, 64)) (digits: ConvGenerator(16, 32))",
            "eval_kernel": f"MixtureRBF({EVAL_FACTORS} x median bandwidth)",
            "threshold": "final held-out MMD^2 < that of a one-mode-dropped target sampler "
            "(and no divergence)",
            **extra,
        },
    }


# --------------------------------------------------------------------------- parts


def part_stability(a, log) -> dict:
    load0, t_start = common.loadavg(), time.perf_counter()
    results = {}
    for dname in a.stability_data:
        ds = make_dataset(dname, a.eval_samples)
        log(
            f"{dname}: bandwidth {ds['bandwidth']:.3f}, noise floor {ds['noise_floor']:.2e}, "
            f"threshold {ds['threshold']:.2e}"
        )
        trainers = {}
        for cs in a.critic_steps:
            for ck in a.critics:
                for m in a.methods:
                    trainers[m, ck, cs] = make_trainer(ds, m, ck, cs, a.batch_size)
        evaluate, z = make_evaluate(next(iter(trainers.values())), ds, a.eval_samples)
        runs = []
        n_lr = min(len(a.lr_grid[m]) for m in a.methods)
        for seed in range(a.seeds):
            for li in range(n_lr):
                for cs in a.critic_steps:
                    for ck in a.critics:
                        for m in a.methods:
                            lr = a.lr_grid[m][li]
                            tr = trainers[m, ck, cs]
                            r = run_one(tr, ds, evaluate, z, m, lr, seed, a.steps, a.eval_every)
                            r.update(critic=ck, critic_steps=cs, data=dname)
                            log(
                                f"{dname} s{seed} {m} {ck} cs{cs} lr {lr:g}: "
                                f"{r['eval_mmd2'][0]:.2e} -> {r['final_mmd2']:.2e} "
                                f"modes {r['modes']} {'conv' if r['converged'] else '----'}"
                                f"{' DIV ' + r['diverged']['kind'] if r['diverged'] else ''} "
                                f"{r['step_ms_median']:.1f} ms/step load {common.loadavg()[0]}"
                            )
                            runs.append(_strip(r, 300 if seed == 0 else 0))
        cells = []
        for m in a.methods:
            for ck in a.critics:
                for cs in a.critic_steps:
                    for lr in a.lr_grid[m][:n_lr]:
                        rs = [
                            r
                            for r in runs
                            if (r["method"], r["critic"], r["critic_steps"], r["lr"])
                            == (m, ck, cs, lr)
                        ]
                        cells.append(
                            {"method": m, "critic": ck, "critic_steps": cs, "lr": lr}
                            | summarize(rs)
                        )
        per_method = []
        for m in a.methods:
            for ck in a.critics:
                rs = [r for r in runs if r["method"] == m and r["critic"] == ck]
                per_method.append({"method": m, "critic": ck} | summarize(rs))
        results[dname] = {
            "dataset": _ds_meta(ds),
            "cells": cells,
            "per_method": per_method,
            "runs": runs,
        }
    extra = {
        "part": "stability",
        "seeds": list(range(a.seeds)),
        "critic_steps": a.critic_steps,
        "lr_grid": {m: list(a.lr_grid[m]) for m in a.methods},
    }
    out = {"meta": _meta(a, extra, load0, t_start), "results": results}
    path = common.write_json(a.out or common.default_out("mmd_gan_stability", a.quick), _clean(out))
    _plot_stability(out, path.with_suffix(".png"))
    _print_stability(out)
    print(f"\nwrote {path}")
    return out


def choose_lr(stab: dict | None, methods, critics_, cs: int) -> dict:
    """Per (method, critic): the grid lr with the most converged runs, then the lowest median
    final MMD^2, at ``cs`` critic steps on 8gaussians (``DEFAULT_LR`` without a stability
    result)."""
    chosen = {}
    for m in methods:
        for ck in critics_:
            cells = []
            if stab is not None and "8gaussians" in stab["results"]:
                cells = [
                    c
                    for c in stab["results"]["8gaussians"]["cells"]
                    if c["method"] == m and c["critic"] == ck and c["critic_steps"] == cs
                ]
            if cells:
                best = min(cells, key=lambda c: (c["converged"] * -1, float(c["median"])))
                chosen[f"{m}/{ck}"] = best["lr"]
            else:
                chosen[f"{m}/{ck}"] = DEFAULT_LR[m]
    return chosen


def part_compare(a, log) -> dict:
    load0, t_start = common.loadavg(), time.perf_counter()
    stab = None
    if a.stability_json and Path(a.stability_json).exists():
        stab = json.loads(Path(a.stability_json).read_text())
    cs = max(a.critic_steps)
    chosen = choose_lr(stab, a.methods, a.critics, cs)
    log(f"chosen learning rates (critic steps {cs}): {chosen}")
    extra = {
        "part": "compare",
        "seeds": list(range(a.seeds)),
        "critic_steps": cs,
        "chosen_lr": chosen,
        "lr_selection": "stability grid, 8gaussians, critic steps as here: most converged "
        "runs, then lowest median final MMD^2",
        "stability_json": a.stability_json if stab is not None else None,
        "equal_time": "budget = slowest method's median ms/step x steps (per data set and "
        f"critic); steps capped at {a.max_time_factor} x steps",
    }
    path = a.out or common.default_out("mmd_gan_compare", a.quick)
    results = {}
    for dname in a.datasets:
        ds = make_dataset(dname, a.eval_samples)
        log(
            f"{dname}: bandwidth {ds['bandwidth']:.3f}, noise floor {ds['noise_floor']:.2e}, "
            f"threshold {ds['threshold']:.2e}"
        )
        trainers = {
            (m, ck): make_trainer(ds, m, ck, cs, a.batch_size)
            for ck in a.critics
            for m in a.methods
        }
        evaluate, z = make_evaluate(next(iter(trainers.values())), ds, a.eval_samples)
        # ---- equal steps (8gaussians: the stability grid's runs, when present)
        eq = []
        reuse = []
        if stab is not None and dname in stab["results"]:
            reuse = [
                r
                for r in stab["results"][dname]["runs"]
                if r["critic_steps"] == cs
                and r["seed"] < a.seeds
                and r["lr"] == chosen[f"{r['method']}/{r['critic']}"]
                and r["method"] in a.methods
                and r["critic"] in a.critics
            ]
        if (
            len(reuse) == a.seeds * len(a.methods) * len(a.critics)
            and stab["meta"]["config"]["steps"] == a.steps
        ):
            eq = [dict(r, reused="stability grid") for r in reuse]
            log(f"{dname}: equal-steps runs taken from the stability grid")
        else:
            for seed in range(a.seeds):
                for ck in a.critics:
                    for m in a.methods:
                        lr = chosen[f"{m}/{ck}"]
                        r = run_one(
                            trainers[m, ck], ds, evaluate, z, m, lr, seed, a.steps, a.eval_every
                        )
                        r.update(critic=ck, critic_steps=cs, data=dname)
                        log(
                            f"{dname} eq-steps s{seed} {m} {ck} lr {lr:g}: "
                            f"{r['eval_mmd2'][0]:.2e} -> {r['final_mmd2']:.2e} modes {r['modes']}"
                            f"{' DIV ' + r['diverged']['kind'] if r['diverged'] else ''} "
                            f"{r['step_ms_median']:.1f} ms/step load {common.loadavg()[0]}"
                        )
                        eq.append(_strip(r, 200 if seed == 0 else 0))
        # ---- equal time: budget = slowest method's ms/step x steps, per critic
        et = []
        budgets = {}
        for ck in a.critics:
            ms = {
                m: float(
                    np.median(
                        [r["step_ms_median"] for r in eq if r["method"] == m and r["critic"] == ck]
                    )
                )
                for m in a.methods
            }
            budget = max(ms.values()) * a.steps / 1e3
            budgets[ck] = {"budget_s": budget, "ms_per_step": ms}
            for m in a.methods:
                n = min(int(budget * 1e3 / ms[m]), a.max_time_factor * a.steps)
                budgets[ck][f"steps_{m}"] = n
            for seed in range(a.seeds):
                for m in a.methods:
                    n = budgets[ck][f"steps_{m}"]
                    if n <= 1.1 * a.steps:
                        r = next(
                            r for r in eq if (r["method"], r["critic"], r["seed"]) == (m, ck, seed)
                        )
                        et.append(dict(r, equal_time_reused=True))
                        continue
                    lr = chosen[f"{m}/{ck}"]
                    r = run_one(trainers[m, ck], ds, evaluate, z, m, lr, seed, n, max(n // 4, 1))
                    r.update(critic=ck, critic_steps=cs, data=dname, equal_time_reused=False)
                    log(
                        f"{dname} eq-time s{seed} {m} {ck} {n} steps: -> {r['final_mmd2']:.2e} "
                        f"modes {r['modes']}{' DIV' if r['diverged'] else ''} "
                        f"load {common.loadavg()[0]}"
                    )
                    et.append(_strip(r, 0))
        summ = {}
        for label, rs_all in (("equal_steps", eq), ("equal_time", et)):
            summ[label] = [
                {"method": m, "critic": ck, "lr": chosen[f"{m}/{ck}"]}
                | summarize([r for r in rs_all if r["method"] == m and r["critic"] == ck])
                | {
                    "steps": int(
                        np.median(
                            [
                                r["steps_run"]
                                for r in rs_all
                                if r["method"] == m and r["critic"] == ck
                            ]
                        )
                    )
                }
                for ck in a.critics
                for m in a.methods
            ]
        results[dname] = {
            "dataset": _ds_meta(ds),
            "budgets": budgets,
            "summary": summ,
            "equal_steps_runs": eq,
            "equal_time_runs": et,
        }
        # written after every data set, so that a stopped run keeps what it finished
        out = {"meta": _meta(a, extra, load0, t_start), "results": results}
        path = common.write_json(path, _clean(out))
        _plot_compare(out, path.with_suffix(".png"))
    _print_compare(out)
    print(f"\nwrote {path}")
    return out


# --------------------------------------------------------------------------- output


def _e(v) -> str:
    v = float(v)
    return f"{v:.2e}" if math.isfinite(v) else str(v)


def _print_stability(out: dict) -> None:
    for dname, res in out["results"].items():
        dm = res["dataset"]
        print(
            f"\n## Stability grid, {dname} (threshold {_e(dm['threshold'])}, noise floor "
            f"{_e(dm['noise_floor'])})\n"
        )
        print(
            "| method | critic | critic steps | lr | converged | diverged | modes (min) | "
            "median final MMD^2 | IQR | std | ms/step |"
        )
        print("|---|---|---:|---:|---:|---:|---|---|---|---|---:|")
        for c in res["cells"]:
            print(
                f"| {c['method']} | {c['critic']} | {c['critic_steps']} | {c['lr']:g} | "
                f"{c['converged']}/{c['n']} | {c['diverged']} | {c['modes_mean']:.1f} "
                f"({c['modes_min']}) | {_e(c['median'])} | {_e(c['iqr'])} | {_e(c['std'])} | "
                f"{c['step_ms_median']:.1f} |"
            )
        print(
            "\n| method | critic | converged (all lr x critic steps x seeds) | diverged | "
            "modes mean | median final MMD^2 | IQR |"
        )
        print("|---|---|---:|---:|---:|---|---|")
        for c in res["per_method"]:
            print(
                f"| {c['method']} | {c['critic']} | {c['converged']}/{c['n']} | "
                f"{c['diverged']} | {c['modes_mean']:.1f} | {_e(c['median'])} | "
                f"{_e(c['iqr'])} |"
            )


def _print_compare(out: dict) -> None:
    for label in ("equal_steps", "equal_time"):
        print(f"\n## {label.replace('_', ' ')}\n")
        print(
            "| data | method | critic | lr | steps | converged | diverged | median final "
            "MMD^2 | mean ± std | modes (min) | hq | ms/step |"
        )
        print("|---|---|---|---:|---:|---:|---:|---|---|---|---:|---:|")
        for dname, res in out["results"].items():
            for c in res["summary"][label]:
                print(
                    f"| {dname} | {c['method']} | {c['critic']} | {c['lr']:g} | {c['steps']} | "
                    f"{c['converged']}/{c['n']} | {c['diverged']} | {_e(c['median'])} | "
                    f"{_e(c['mean'])} ± {_e(c['std'])} | {c['modes_mean']:.1f} "
                    f"({c['modes_min']}) | {c['hq_mean']:.2f} | {c['step_ms_median']:.1f} |"
                )
    for dname, res in out["results"].items():
        d = res["dataset"]
        print(
            f"\n{dname}: threshold {_e(d['threshold'])}, noise floor {_e(d['noise_floor'])}, "
            f"budgets {json.dumps(res['budgets'])}"
        )


def _figure(nrows, ncols, w=4.2, h=3.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w * ncols, h * nrows))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


COLORS = {"kz-sgd": "C0", "kz-adam": "C2", "gd-adam": "C3"}


def _plot_stability(out: dict, path: Path) -> None:
    res = out["results"]
    critics_ = sorted({c["critic"] for r in res.values() for c in r["cells"]})
    fig, axes = _figure(len(res), len(critics_))
    for i, (dname, r) in enumerate(res.items()):
        thr = r["dataset"]["threshold"]
        for j, ck in enumerate(critics_):
            ax = axes[i, j]
            cells = [c for c in r["cells"] if c["critic"] == ck]
            labels = []
            for x, c in enumerate(cells):
                vals = [
                    float(v["final_mmd2"])
                    for v in r["runs"]
                    if (v["method"], v["critic"], v["critic_steps"], v["lr"])
                    == (c["method"], ck, c["critic_steps"], c["lr"])
                ]
                vals = [v if math.isfinite(v) else 10.0 for v in vals]
                ax.scatter([x] * len(vals), vals, color=COLORS[c["method"]], s=14)
                labels.append(f"{c['method']}\ncs{c['critic_steps']} {c['lr']:g}")
            ax.axhline(thr, color="k", ls="--", lw=0.8)
            ax.set_yscale("log")
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, rotation=90, fontsize=5)
            ax.set_title(
                f"{dname}, critic {ck}: final held-out MMD² (dashed: threshold)", fontsize=8
            )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plot_compare(out: dict, path: Path) -> None:
    res = out["results"]
    critics_ = sorted({c["critic"] for r in res.values() for c in r["summary"]["equal_steps"]})
    fig, axes = _figure(len(res), len(critics_))
    for i, (dname, r) in enumerate(res.items()):
        for j, ck in enumerate(critics_):
            ax = axes[i, j]
            for v in r["equal_steps_runs"] + [
                x for x in r["equal_time_runs"] if not x.get("equal_time_reused")
            ]:
                if v["critic"] != ck:
                    continue
                vals = [float(t) for t in v["eval_mmd2"]]
                ls = "-" if v in r["equal_steps_runs"] else ":"
                ax.plot(
                    v["eval_step"],
                    vals,
                    ls,
                    color=COLORS[v["method"]],
                    lw=1,
                    label=v["method"] if v["seed"] == 0 and ls == "-" else None,
                )
            ax.axhline(r["dataset"]["threshold"], color="k", ls="--", lw=0.8)
            ax.set_yscale("log")
            ax.set_xlabel("generator step")
            ax.set_title(f"{dname}, critic {ck} (dotted: equal-time runs)", fontsize=8)
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# --------------------------------------------------------------------------- main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run (< 1 min on a 2-core CPU)")
    p.add_argument("--part", choices=("stability", "compare", "all"), default="all")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--eval-samples", type=int, default=None)
    p.add_argument("--methods", nargs="+", default=None, choices=list(METHODS))
    p.add_argument("--critics", nargs="+", default=None, choices=list(CRITIC_KINDS))
    p.add_argument("--critic-steps", type=int, nargs="+", default=None)
    p.add_argument("--datasets", nargs="+", default=None, choices=list(DATASETS))
    p.add_argument("--stability-data", nargs="+", default=None, choices=["8gaussians", "grid25"])
    p.add_argument("--max-time-factor", type=int, default=4, help="equal-time steps cap")
    p.add_argument("--stability-json", default=None, help="(compare) learning rates from here")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    q = a.quick
    a.steps = a.steps or (20 if q else 400)
    a.seeds = a.seeds or (1 if q else 3)
    a.batch_size = a.batch_size or (64 if q else 128)
    a.eval_every = a.eval_every or (10 if q else 100)
    a.eval_samples = a.eval_samples or (300 if q else 1000)
    a.methods = a.methods or (["kz-sgd", "gd-adam"] if q else list(METHODS))
    a.critics = a.critics or (["smmd"] if q else list(CRITIC_KINDS))
    a.critic_steps = a.critic_steps or ([1] if q else [1, 5])
    a.datasets = a.datasets or (["8gaussians"] if q else list(DATASETS))
    a.stability_data = a.stability_data or ["8gaussians"]
    a.lr_grid = {m: (DEFAULT_LR[m],) for m in METHODS} if q else LR_GRID
    if a.stability_json is None:
        a.stability_json = str(common.default_out("mmd_gan_stability", q))
    t0 = time.perf_counter()

    def log(msg):
        common.log(f"[{time.perf_counter() - t0:7.1f}s] {msg}")

    log(f"load {common.loadavg()}")
    out = {}
    if a.part in ("stability", "all"):
        out["stability"] = part_stability(a, log)
    if a.part in ("compare", "all"):
        out["compare"] = part_compare(a, log)
    return out


if __name__ == "__main__":
    main()
