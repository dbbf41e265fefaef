"""``mmdflow train``: generator training along a kernel-discrepancy direction (the CLI side).

Writes ``DIR/samples.npy`` (2000 generated samples), ``DIR/metrics.json``
(held-out MMD^2, ``|theta_dot|``, critic value, CG iterations, time per step,
settings), ``DIR/samples.png``, ``DIR/mmd.png``, with an adversarial ``--critic``
``DIR/critic.png`` (the learned kernel's MMD^2 and penalty per step), and
``DIR/checkpoint.npz`` (generator and critic state, run options and history; also written every ``--checkpoint-every`` steps and on Ctrl-C /
SIGTERM). ``--resume`` continues a run exactly (same result as an uninterrupted run) and
refuses options that would change it. A run that diverges (see
:meth:`mmdflow.train.GeneratorTrainer.fit`) stops with exit status 1, keeping its last
checkpoint; ``metrics.json`` then says ``"status": "diverged"``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from mmdflow.cli._common import (
    CLIError,
    ProgressBar,
    _int_at_least,
    _nonneg_float,
    _positive_float,
    _write_json,
)
from mmdflow.cli._inputs import _fmt_change, _load_points, _make_kernel, _median_bandwidth
from mmdflow.cli._rundir import RESUMABLE, Checkpoints, RunDir, add_resume_options, fingerprint

#: default generator learning rates per optimizer and direction (SGD: the Euler step; Adam 3e-3:
#: the best of {1e-3, 3e-3, 1e-2, 3e-2} for mmd-gd on 8gaussians, benchmarks/RESULTS.md)
DEFAULT_LR = {
    "sgd": {"kernelized": 0.5, "param-sobolev": 0.5, "grad-penalty": 0.5, "mmd-gd": 5.0},
    "adam": {"kernelized": 3e-3, "param-sobolev": 3e-3, "grad-penalty": 3e-3, "mmd-gd": 3e-3},
}
CRITICS = ("fixed", "mmd-gp", "smmd")
#: ``--lr-schedule cosine`` decays the learning rate to this fraction of ``--lr`` at ``--steps``
COSINE_FINAL_FRACTION = 0.01
#: the adversarial critic's defaults: feature dimension, updates per generator step, Adam
#: learning rate (b1 = 0.5, b2 = 0.9 as in MMD GAN work) and penalty weight
FEATURES = 16
CRITIC_STEPS = 5
CRITIC_LR = 1e-3
PENALTY = 1.0
#: held-out samples (at most) and generated samples written
NUM_SAMPLES = 2000
CHECKPOINT = "checkpoint.npz"
#: the fewest target rows: a fifth (at least 20 rows) is held out for the held-out MMD^2
MIN_TARGET_ROWS = 100


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
        "--optimizer",
        choices=("sgd", "adam"),
        default="sgd",
        help="generator optimizer, fed with minus the direction (default sgd: the Euler scheme)",
    )
    t.add_argument(
        "--lr",
        type=_positive_float,
        default=None,
        help="generator learning rate (default: sgd mmd-gd 5, sgd others 0.5, adam 3e-3)",
    )
    t.add_argument(
        "--lr-schedule",
        choices=("constant", "cosine"),
        default="constant",
        help="generator learning-rate schedule: constant (default), or cosine decay over --steps "
        "to 1%% (equal-time benchmark: kernelized held-out MMD^2 on 8gaussians 8.7e-3 -> 3.8e-3; "
        "--steps then cannot change on --resume)",
    )
    t.add_argument(
        "--critic",
        choices=CRITICS,
        default="fixed",
        help="the MMD kernel: fixed (median-bandwidth Gaussian mixture; default), or learned "
        "adversarially on critic-network features: mmd-gp (MMD GAN with gradient penalty) or "
        "smmd (Scaled MMD)",
    )
    t.add_argument(
        "--critic-steps",
        type=_int_at_least(1),
        default=CRITIC_STEPS,
        help=f"critic updates per generator step (default {CRITIC_STEPS})",
    )
    t.add_argument(
        "--critic-lr",
        type=_positive_float,
        default=CRITIC_LR,
        help=f"critic Adam learning rate (default {CRITIC_LR:g})",
    )
    t.add_argument(
        "--penalty",
        type=_nonneg_float,
        default=PENALTY,
        help=f"weight of the critic's gradient penalty / SMMD gradient term (default {PENALTY:g})",
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
        help="data-parallel over the first N devices: latent batches sharded, kernel sums "
        "as collectives (every --direction, --critic fixed; default: one device)",
    )
    t.add_argument("--eval-every", type=_int_at_least(1), default=50, help="default 50")
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t.add_argument("--out", required=True, metavar="DIR", help="output directory")
    add_resume_options(t)
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier mmdflow run in DIR (only the files mmdflow wrote there)",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)


def _split(y: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, held out)``: ``n`` rows to train on when there are ``n + NUM_SAMPLES``;
    with fewer rows, at least a fifth is held out (``NUM_SAMPLES`` at most)."""
    rng = np.random.default_rng(seed + 7)
    idx = rng.permutation(len(y))
    n_eval = min(NUM_SAMPLES, max(len(y) - n, len(y) // 5))
    return y[idx[n_eval:]], y[idx[:n_eval]]


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
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer][args.direction]
    kw = {} if args.cg_maxiter is None else {"cg_maxiter": args.cg_maxiter}
    if args.devices is not None:
        from mmdflow import ops
        from mmdflow.cli._flow import _make_mesh

        if args.critic != "fixed":
            raise CLIError("--devices applies to --critic fixed only")
        kw["sums"] = ops.SumConfig(mesh=_make_mesh(args.devices))
    if args.critic != "fixed":
        kw["critic"] = _critic(args, d, nnx.Rngs(args.seed + 1))
    schedule = lr
    if args.lr_schedule == "cosine":
        schedule = optax.cosine_decay_schedule(lr, args.steps, alpha=COSINE_FINAL_FRACTION)
    trainer = train.GeneratorTrainer(
        gen,
        getattr(optax, args.optimizer)(schedule),
        kernel,
        kind=args.direction,
        reg=args.reg,
        batch_size=args.batch_size,
        solver=args.solver,
        **kw,
    )
    return trainer, trainer.init(jax.random.key(args.seed)), kinfo, lr


def _critic(args, d: int, rngs):
    """The adversarial critic of ``--critic``: a conv net on digits, else an MLP, with the
    Gaussian mixture kernel of base bandwidth 1 on its ``FEATURES`` features."""
    import optax

    from mmdflow import critics

    if d == 64 and args.target == "digits":
        features = critics.ConvFeatures(FEATURES, rngs=rngs)
    else:
        features = critics.MLPFeatures(d, FEATURES, (64, 64), rngs=rngs)
    base, _ = _make_kernel("mixture", 1.0)
    return critics.Critic(
        features,
        base,
        kind=args.critic,
        optimizer=optax.adam(args.critic_lr, b1=0.5, b2=0.9),
        steps=args.critic_steps,
        penalty=args.penalty,
    )


def _solver_settings(direction: str, trainer) -> dict:
    """The linear-solver settings that change the results of ``direction``."""
    if direction == "kernelized":
        return {"cg_maxiter": trainer.cg_maxiter}
    if direction in ("param-sobolev", "grad-penalty"):
        return {"solver": trainer.solver, "cg_maxiter": trainer.cg_maxiter}
    return {}


def _run_options(args, lr: float, bandwidth: float, trainer) -> dict:
    """The resolved options that define a run: a ``--resume`` must not change them."""
    extra = {}
    if args.critic != "fixed":
        extra = {
            "critic_steps": args.critic_steps,
            "critic_lr": args.critic_lr,
            "penalty": args.penalty,
        }
    if args.lr_schedule == "cosine":  # the schedule's horizon: a resume must keep it
        extra["lr_schedule_steps"] = args.steps
    return {
        "direction": args.direction,
        "optimizer": args.optimizer,
        "lr_schedule": args.lr_schedule,
        "critic": args.critic,
        **extra,
        "target": args.target,
        "n": args.n,
        "batch_size": args.batch_size,
        "reg": args.reg,
        "lr": lr,
        "bandwidth": bandwidth,
        "seed": args.seed,
        "eval_every": args.eval_every,
        "devices": args.devices,
        **_solver_settings(args.direction, trainer),
    }


def _option(key: str, value, args=None) -> str:
    """``--key value`` for messages (``no --key`` for ``None``); with ``args``, a value
    resolved from a default says so."""
    flag = "--" + key.replace("_", "-")
    if value is None:
        return f"no {flag}"
    default = key in ("lr", "bandwidth", "cg_maxiter") and getattr(args, key, 0) is None
    how = " (the median)" if key == "bandwidth" else " (the default)"
    return f"{flag} {value!r}{how if default else ''}"


#: the values of options added with the adversarial critics, for runs written before them
_BEFORE_CRITICS = {"optimizer": "sgd", "critic": "fixed", "lr_schedule": "constant"}


def _check_resume(meta: dict, run: dict, data_sha: str, args, where: str) -> None:
    """Refuses a ``--resume`` whose options or data differ from the run in ``--out``."""
    old = meta.get("run")
    if isinstance(old, dict):  # runs written before these options existed
        old = {**_BEFORE_CRITICS, **old}
    if not isinstance(old, dict):
        raise CLIError(
            f"--resume: the checkpoint in --out {where!r} records no run options (written by an "
            "older mmdflow?); start a new run"
        )
    may = ", ".join("--" + k.replace("_", "-") for k in RESUMABLE)
    old_args = argparse.Namespace(**meta.get("args", {}))
    for key, value in run.items():
        if key == "target" and all(str(v).endswith(".npy") for v in (old.get(key), value)):
            continue  # a file may move: its data are compared below
        if key == "lr_schedule_steps" and old.get(key) not in (None, value):
            raise CLIError(
                f"--resume: --steps {value} differs from the run in {where!r} (--steps "
                f"{old[key]}), whose --lr-schedule cosine decays over its --steps: it cannot be "
                "extended; start a new run"
            )
        if key not in old or old[key] != value:
            raise CLIError(
                f"--resume: {_option(key, value, args)} differs from the run in {where!r} "
                f"({_option(key, old.get(key), old_args)}); only {may} may change"
            )
    if meta.get("target_sha256") != data_sha:
        raise CLIError(
            f"--resume: the data of --target {args.target!r} differ from those of the run in "
            f"{where!r}"
        )


def _label(args) -> str:
    """``direction`` plus the optimizer and critic when they are not the defaults."""
    parts = [args.direction] + [args.optimizer] * (args.optimizer != "sgd")
    return " ".join(parts + [f"critic {args.critic}"] * (args.critic != "fixed"))


def cmd_train(args) -> int:
    import jax

    from mmdflow import _checkpoint, train
    from mmdflow.plots import plot_critic, plot_history, plot_samples

    rundir = RunDir(args.out, "train", overwrite=args.overwrite, resume=args.resume)
    ckpt_file = rundir.path / CHECKPOINT
    if args.resume and not ckpt_file.exists():
        raise CLIError(f"--resume: no {CHECKPOINT} in --out {args.out!r}")
    y_all = _load_points("--target", args.target, args.n + NUM_SAMPLES, args.seed)
    if len(y_all) < MIN_TARGET_ROWS:
        raise CLIError(
            f"--target {args.target!r} has {len(y_all)} rows; training needs at least "
            f"{MIN_TARGET_ROWS} (a fifth is held out to measure the held-out MMD^2)"
        )
    data_sha = fingerprint(y_all)
    y_train, y_eval = _split(y_all, args.n, args.seed)
    bandwidth = args.bandwidth or _median_bandwidth(y_train, y_eval, option="--target")
    try:
        trainer, state, kinfo, lr = _build(args, y_train, bandwidth)
    except ValueError as e:  # option combinations the trainer rejects (e.g. --solver)
        raise CLIError(str(e)) from None
    run = _run_options(args, lr, bandwidth, trainer)
    raw_args = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    history = None
    if args.resume:
        try:
            meta = _checkpoint.read_meta(ckpt_file)
        except (OSError, ValueError, KeyError) as e:
            raise CLIError(
                f"--resume: cannot read {CHECKPOINT} in --out {args.out!r}: {e}"
            ) from None
        _check_resume(meta, run, data_sha, args, args.out)
        state, meta = train.load_checkpoint(ckpt_file, state)
        history = meta.get("history")
    done = int(state.step)
    todo = args.steps - done
    if todo < 0:
        raise CLIError(f"--steps {args.steps} is below the {done} steps already in --out")
    meta = {"run": run, "target_sha256": data_sha, "args": raw_args}

    def save(path: Path, st, hist) -> None:
        train.save_checkpoint(path, st, {**meta, "steps": int(st.step)}, history=hist)

    ckpts = Checkpoints(rundir, args.checkpoint_every, name=CHECKPOINT)
    if args.resume:
        ckpts.last_step = done
    bar = ProgressBar(
        todo, label=f"train {_label(args)}", enabled=None if not args.quiet else False
    )

    def on_step(st, hist) -> None:  # a checkpoint when due or on a pending Ctrl-C / SIGTERM
        step = int(st.step)
        ckpts(step, lambda path: save(path, st, hist))
        shown = {"mmd2": hist["mmd2"][-1]}
        if "critic_mmd2" in hist:
            shown["critic"] = hist["critic_mmd2"][-1]
        bar.update(step - done, shown)

    bar.start()
    t0 = time.perf_counter()
    try:
        state, hist = trainer.fit(
            state,
            y_train,
            todo,
            y_eval=y_eval,
            eval_every=args.eval_every,
            eval_samples=min(NUM_SAMPLES, len(y_eval)),
            history=history,
            on_step=on_step,
        )
    except KeyboardInterrupt:  # the signal may have come after the last checkpoint's write
        bar.close()
        ckpts.mark_interrupted()
        raise KeyboardInterrupt(ckpts.note()) from None
    bar.close()
    wall = time.perf_counter() - t0
    diverged = hist["diverged"]
    samples = None
    if diverged is None:
        samples = np.asarray(trainer.sample(state, jax.random.key(args.seed + 1), NUM_SAMPLES))
        if not np.all(np.isfinite(samples)):
            diverged = {
                "step": int(state.step),
                "kind": "non-finite",
                "reason": f"non-finite generated samples at step {int(state.step)}",
            }
    times = hist["time"][1:] or hist["time"]
    settings = {
        **run,
        "kernel": kinfo,
        "steps": args.steps,
        "d": int(y_train.shape[1]),
        "n_train": len(y_train),
        "n_eval": len(y_eval),
        "devices": 1 if args.devices is None else args.devices,
        "checkpoint_every": args.checkpoint_every,
        "divergence_factor": train.DIVERGENCE_FACTOR,
        "args": raw_args,
    }
    evals = hist["eval_mmd2"]
    metrics = {
        "status": "complete" if diverged is None else "diverged",
        "settings": settings,
        "history": hist,
        "final_eval_mmd2": evals[-1] if evals else math.nan,
        "timings": {
            "wall_s": wall,
            "step_ms_median": 1e3 * float(np.median(times)) if times else math.nan,
        },
    }

    def write_plots(tmp: Path) -> None:
        plot_history(
            {"step": hist["eval_step"], "mmd2": evals},
            tmp / "mmd.png",
            title=f"held-out MMD² ({_label(args)}; fixed evaluation kernel)",
            mmd_label="held-out MMD² (unbiased)",
        )
        if args.critic != "fixed":
            plot_critic(hist, tmp / "critic.png", title=f"{_label(args)}: {args.target}")

    if diverged is not None:
        metrics["diverged"] = diverged
        metrics["checkpoint_step"] = ckpts.last_step
        metrics["note"] = (
            "training stopped at a divergence: samples.npy, samples.png and checkpoint.npz "
            "are those of checkpoint_step (or absent when null)"
        )
        with rundir.staged("diverged", diverged_step=diverged["step"]) as tmp:
            _write_json(tmp / "metrics.json", metrics)
            write_plots(tmp)
        kept = (
            f"the checkpoint of step {ckpts.last_step} is kept in {args.out!r}"
            if ckpts.last_step is not None
            else f"no checkpoint was written (--checkpoint-every {args.checkpoint_every})"
        )
        raise CLIError(
            f"training diverged: {diverged['reason']}; lower --lr (now {lr:g}) or raise --reg "
            f"(now {args.reg:g}); metrics.json records it, {kept}",
            code=1,
        )
    with rundir.staged() as tmp:
        np.save(tmp / "samples.npy", samples)
        save(tmp / CHECKPOINT, state, hist)
        _write_json(tmp / "metrics.json", metrics)
        title = f"{_label(args)}: {args.target}, step {int(state.step)}"
        images = args.target == "digits" and samples.shape[1] == 64
        plot_samples(samples, y_eval, tmp / "samples.png", title=title, images=images)
        write_plots(tmp)
    first = evals[0] if evals else math.nan
    pictures = ", ".join(
        str(Path(args.out) / f)
        for f in ("samples.png", "mmd.png", "critic.png")[: 2 + (args.critic != "fixed")]
    )
    print(
        f"mmdflow train: {_label(args)} on {args.target}: held-out MMD^2 {first:.3e} -> "
        f"{metrics['final_eval_mmd2']:.3e} ({_fmt_change(first, metrics['final_eval_mmd2'])}) "
        "after "
        f"{int(state.step)} steps; pictures: {pictures}"
    )
    return 0


__all__ = ["add_parser", "cmd_train"]
