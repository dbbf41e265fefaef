"""``mmdflow train``: generator training along a kernel-discrepancy direction (the CLI side).

Writes ``DIR/samples.npy`` (2000 generated samples), ``DIR/metrics.json``
(held-out MMD^2, ``|theta_dot|``, critic value, CG iterations, time per step,
settings), ``DIR/samples.png``, ``DIR/mmd.png`` and ``DIR/checkpoint.npz``;
``--resume`` continues a run exactly (same result as an uninterrupted run).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from mmdflow.cli import (
    CLIError,
    ProgressBar,
    _int_at_least,
    _load_points,
    _make_kernel,
    _median_bandwidth,
    _positive_float,
    _write_json,
)
from mmdflow.cli._rundir import RunDir

DEFAULT_LR = {"kernelized": 0.5, "param-sobolev": 0.5, "grad-penalty": 0.5, "mmd-gd": 5.0}
#: solver settings of runs written before they were recorded (for --resume of such runs)
LEGACY_SOLVER_SETTINGS = {"solver": "auto", "cg_maxiter": 50}
NUM_SAMPLES = 2000


def add_parser(sub) -> None:
    t = sub.add_parser(
        "train",
        help="train a generator along the kernelized (Riemannian) direction",
        description=(
            "Train a Flax generator on TARGET (a 2-D shape name, 'digits', or an [N, d] .npy "
            "file) by descending along the parametric kernelized direction of MMD GAN "
            "(variant B; Mroueh & Nguyen 2021 as reconstructed), its parametric-Sobolev "
            "variant A, the data-space gradient-penalty direction (variant C), or plain "
            "MMD-GAN gradient descent."
        ),
    )
    t.add_argument(
        "--direction",
        choices=("kernelized", "param-sobolev", "grad-penalty", "mmd-gd"),
        default="kernelized",
        help="update direction: kernelized (variant B), param-sobolev (variant A), "
        "grad-penalty (variant C), mmd-gd (default kernelized)",
    )
    t.add_argument("--target", default="8gaussians", help="target data (default 8gaussians)")
    t.add_argument(
        "--n", type=_int_at_least(4), default=4000, help="training samples (default 4000)"
    )
    t.add_argument("--steps", type=_int_at_least(1), default=500, help="total steps (default 500)")
    t.add_argument("--batch-size", type=_int_at_least(2), default=256, help="batch (default 256)")
    t.add_argument("--reg", type=_positive_float, default=1e-2, help="ridge lambda (default 0.01)")
    t.add_argument(
        "--lr",
        type=_positive_float,
        default=None,
        help="SGD learning rate (default: mmd-gd 5, the others 0.5)",
    )
    t.add_argument(
        "--cg-maxiter",
        type=_int_at_least(1),
        default=None,
        help="CG iteration cap (default 20: truncated CG for kernelized)",
    )
    t.add_argument(
        "--solver",
        choices=("auto", "cholesky", "cg"),
        default="auto",
        help="linear solver of param-sobolev / grad-penalty (default auto: Cholesky up to "
        "M*d = 4096)",
    )
    t.add_argument(
        "--bandwidth", type=_positive_float, default=None, help="base bandwidth (default: median)"
    )
    t.add_argument(
        "--devices",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help="data-parallel over the first N devices: latent and target batches sharded, CG "
        "reductions as collectives (kernelized, grad-penalty, mmd-gd; default: one device)",
    )
    t.add_argument("--eval-every", type=_int_at_least(1), default=50, help="default 50")
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t.add_argument("--out", required=True, metavar="DIR", help="output directory")
    t.add_argument("--resume", action="store_true", help="continue the run in DIR up to --steps")
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier mmdflow run in DIR (only the files mmdflow wrote there)",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)


def _split(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed + 7)
    idx = rng.permutation(len(y))
    n_eval = min(NUM_SAMPLES, max(len(y) // 5, 2))
    return y[idx[n_eval:]], y[idx[:n_eval]]


def _plot_samples(samples: np.ndarray, target: np.ndarray, path: Path, title: str) -> None:
    from mmdflow.plots import _figure, pca_projection

    if samples.shape[1] == 64 and 0 <= target.min() and target.max() <= 1.0 + 1e-6:
        fig = _figure(6, 6)
        axs = fig.subplots(8, 8)
        for ax, img in zip(axs.ravel(), samples[:64], strict=True):
            ax.imshow(img.reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
            ax.axis("off")
    else:
        fig = _figure(5, 5)
        ax = fig.subplots()
        if samples.shape[1] > 2:
            mean, comps = pca_projection(target)
            target = (target - mean) @ comps.T
            samples = (samples - mean) @ comps.T
        ax.scatter(target[:, 0], target[:, 1], s=2, c="#aaaaaa", label="target (held out)")
        ax.scatter(samples[:, 0], samples[:, 1], s=2, c="#d62728", label="generated")
        ax.legend(loc="upper right", fontsize=8)
        ax.set_aspect("equal")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def _build(args, y_train, bandwidth):
    import jax
    import optax
    from flax import nnx

    from mmdflow import train

    d = y_train.shape[1]
    rngs = nnx.Rngs(args.seed)
    if d == 64 and args.target == "digits":
        gen = train.ConvGenerator(latent_dim=16, channels=32, rngs=rngs)
    else:
        gen = train.MLPGenerator(min(max(d, 2), 16), d, (128, 128), rngs=rngs)
    kernel, kinfo = _make_kernel("mixture", bandwidth)
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.direction]
    kw = {} if args.cg_maxiter is None else {"cg_maxiter": args.cg_maxiter}
    if args.devices is not None:
        from mmdflow import sharding
        from mmdflow.cli._flow import _make_mesh

        if args.direction == "param-sobolev":
            raise CLIError("--devices applies to kernelized, grad-penalty and mmd-gd only")
        kw["direction_fn"] = sharding.direction_fn(_make_mesh(args.devices))
    trainer = train.GeneratorTrainer(
        gen,
        optax.sgd(lr),
        kernel,
        kind=args.direction,
        reg=args.reg,
        batch_size=args.batch_size,
        solver=args.solver,
        **kw,
    )
    return trainer, trainer.init(jax.random.key(args.seed)), kinfo, lr


def _solver_settings(direction: str, trainer) -> dict:
    """The linear-solver settings that change the results of ``direction``."""
    if direction == "kernelized":
        return {"cg_maxiter": trainer.cg_maxiter}
    if direction in ("param-sobolev", "grad-penalty"):
        return {"solver": trainer.solver, "cg_maxiter": trainer.cg_maxiter}
    return {}


def cmd_train(args) -> int:
    import jax

    from mmdflow import train

    rundir = RunDir(args.out, "train", overwrite=args.overwrite, resume=args.resume)
    out = rundir.path
    prev_hist = None
    if args.resume:
        if not (out / "checkpoint.npz").exists():
            raise CLIError(f"--resume: no checkpoint.npz in --out {str(out)!r}")
        prev = json.loads((out / "metrics.json").read_text())
        prev_hist = prev["history"]
    y_all = _load_points("--target", args.target, args.n + NUM_SAMPLES, args.seed)
    y_train, y_eval = _split(y_all, args.seed)
    if prev_hist is not None:
        bandwidth = prev["settings"]["bandwidth"]
    else:
        bandwidth = args.bandwidth or _median_bandwidth(y_train, y_eval, option="--target")
    try:
        trainer, state, kinfo, lr = _build(args, y_train, bandwidth)
    except ValueError as e:  # option combinations the trainer rejects (e.g. --solver)
        raise CLIError(str(e)) from None
    solver_settings = _solver_settings(args.direction, trainer)
    if prev_hist is not None:
        now = {k: getattr(args, k) for k in ("direction", "target", "n", "batch_size", "reg")}
        now.update(seed=args.seed, **solver_settings)
        for key, value in now.items():
            old = prev["settings"].get(key, LEGACY_SOLVER_SETTINGS.get(key))
            if old != value:
                raise CLIError(
                    f"--resume: --{key.replace('_', '-')} {value!r} differs from the run in DIR "
                    f"({old!r})"
                )
        state, _ = train.load_checkpoint(str(out / "checkpoint.npz"), state)
    done = int(state.step)
    todo = args.steps - done
    if todo < 0:
        raise CLIError(f"--steps {args.steps} is below the {done} steps already in --out")
    bar = ProgressBar(
        todo, label=f"train {args.direction}", enabled=None if not args.quiet else False
    )
    bar.start()
    t0 = time.perf_counter()
    state, hist = trainer.fit(
        state,
        y_train,
        todo,
        y_eval=y_eval,
        eval_every=args.eval_every,
        eval_samples=min(NUM_SAMPLES, len(y_eval)),
        callback=lambda step, rec: bar.update(step - done, {"mmd2": rec["mmd2"]}),
    )
    bar.close()
    wall = time.perf_counter() - t0
    if prev_hist is not None:
        hist = {k: list(prev_hist.get(k, [])) + list(v) for k, v in hist.items()}
        if hist["eval_step"].count(done) > 1:  # the resume point was evaluated twice
            i = len(prev_hist["eval_step"])
            del hist["eval_step"][i], hist["eval_mmd2"][i]
    samples = np.asarray(trainer.sample(state, jax.random.key(args.seed + 1), NUM_SAMPLES))
    if not np.all(np.isfinite(samples)):
        raise CLIError("training diverged (non-finite samples); lower --lr or raise --reg", code=1)
    times = hist["time"][1:] or hist["time"]
    settings = {
        "direction": args.direction,
        "target": args.target,
        "n": args.n,
        "batch_size": args.batch_size,
        "reg": args.reg,
        "seed": args.seed,
        "lr": lr,
        "optimizer": "sgd",
        "bandwidth": bandwidth,
        "kernel": kinfo,
        "steps": args.steps,
        "d": int(y_train.shape[1]),
        "devices": 1 if args.devices is None else args.devices,
        **solver_settings,
    }
    metrics = {
        "settings": settings,
        "history": hist,
        "final_eval_mmd2": hist["eval_mmd2"][-1] if hist["eval_mmd2"] else math.nan,
        "timings": {"wall_s": wall, "step_ms_median": 1e3 * float(np.median(times))},
    }
    from mmdflow.plots import plot_history

    with rundir.staged() as tmp:
        np.save(tmp / "samples.npy", samples)
        train.save_checkpoint(str(tmp / "checkpoint.npz"), state, {"steps": int(state.step)})
        _write_json(tmp / "metrics.json", metrics)
        title = f"{args.direction}: {args.target}, step {int(state.step)}"
        _plot_samples(samples, y_eval, tmp / "samples.png", title)
        plot_history(
            {"step": hist["eval_step"], "mmd2": hist["eval_mmd2"]},
            tmp / "mmd.png",
            title=f"held-out MMD² ({args.direction})",
        )
    first = hist["eval_mmd2"][0] if hist["eval_mmd2"] else math.nan
    print(
        f"mmdflow train: {args.direction} on {args.target}: held-out MMD^2 {first:.3e} -> "
        f"{metrics['final_eval_mmd2']:.3e} after {int(state.step)} steps; "
        f"pictures: {Path(args.out) / 'samples.png'}, {Path(args.out) / 'mmd.png'}"
    )
    return 0


__all__ = ["add_parser", "cmd_train"]
