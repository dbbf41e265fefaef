"""``mmdflow flow``: particles from a source to a target point cloud, or to a density.

Sample flows (``--method sobolev|mmd|...``) move toward ``--target`` samples; density flows
(``svgd``, ``ksd``; ``srmmd`` takes either: :func:`mmdflow.flows.targets`) toward
``--density`` (a log-density, :mod:`mmdflow.cli._density`), recording ``KSD^2`` instead of
``MMD^2``.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import numpy as np

from mmdflow.cli import _density
from mmdflow.cli import _flow_resume as resume
from mmdflow.cli._common import (
    CLIError,
    ProgressBar,
    _write_json,
)
from mmdflow.cli._inputs import (
    _features_note,
    _fmt_change,
    _kernel_mmd2_f64,
    _load_points,
    _make_kernel,
    _median_bandwidth,
    _reduction,
    _timings,
    resolve_num_features,
)
from mmdflow.cli._rundir import Checkpoints, RunDir


def _make_mesh(num: int):
    """The ``--devices`` mesh: the first ``num`` devices, one axis ``"data"``."""
    import jax

    from mmdflow import sharding

    avail = jax.devices()
    if num > len(avail):
        raise CLIError(
            f"--devices {num}: only {len(avail)} {avail[0].platform} device(s) available "
            f"(jax.devices()); use --devices {len(avail)} or fewer"
        )
    return sharding.make_mesh(num)


#: field hyperparameters that --param does not set (objects, or options of their own)
_NOT_PARAMS = (
    "kernel",
    "sums",
    "critic",
    "optimizer",
    "reg",
    "num_features",
    "resample_features",
    "logp",
)
#: ``--target`` of a sample flow when none is given
DEFAULT_TARGET = "8gaussians"


def is_density_run(args) -> bool:
    """Whether this run moves particles toward a density: ``--method`` takes only densities
    (``svgd``, ``ksd``), or takes both (``srmmd``) and ``--density`` is given."""
    from mmdflow import flows

    kinds = flows.targets(args.method)
    return "density" in kinds and ("samples" not in kinds or args.density is not None)


def _resolve_defaults(args) -> None:
    """Defaults that depend on ``--method``: ``--target`` (sample flows) and ``--kernel``
    (``mixture`` for sample flows, ``gaussian`` for density flows, whose default steps were
    measured with one Gaussian)."""
    density = is_density_run(args)
    if args.kernel is None:
        args.kernel = "gaussian" if density else "mixture"
    if args.target is None and not density:
        args.target = DEFAULT_TARGET


def _parse_params(specs: list[str], method: str, params: set[str]) -> dict:
    """``--param NAME=VALUE`` options: field hyperparameters, values as Python literals."""
    import ast

    allowed = sorted(params - set(_NOT_PARAMS))
    out = {}
    for spec in specs:
        name, sep, text = spec.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in allowed:
            raise CLIError(
                f"--param {spec!r}: expected NAME=VALUE with NAME a hyperparameter of --method "
                f"{method}: {', '.join(allowed) or '(none)'}"
            )
        try:
            out[name] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            out[name] = text.strip()  # a string (e.g. solver=cg)
    return out


def _make_flow_stepper(args, kernel, bandwidth: float, n: int, d: int, mesh=None, logp=None):
    """Builds the flow of ``--method`` from the registry; returns ``(stepper, settings)``.

    The defaults are the field's ``defaults_for`` the data's bandwidth and size
    (:data:`mmdflow.flows.FLOWS`); the options override them: ``--step-size`` (absolute),
    ``--reg`` (in units of ``bandwidth ** reg_power``, the field's), ``--noise`` (in units of
    the bandwidth),
    ``--num-features`` / ``--fixed-features``, ``--impl``. With a ``mesh`` (``--devices``)
    the flow pads and shards the particles and targets over it (``ParticleFlow.mesh``).
    A density flow gets its target log-density ``logp``.
    """
    import jax

    from mmdflow import flows, ops

    cls = flows.FLOWS[args.method]
    params = set(flows.field_params(args.method))
    density = {} if logp is None else {"logp": logp}
    kw = cls.defaults_for(kernel, bandwidth, n, d, jax.random.key(args.seed + 2), **density)
    settings = {}
    if args.step_size is not None:
        kw["step_size"] = args.step_size
    settings["step_size"] = kw.get("step_size", cls.step_size)
    default_rule = f"default for the data (mmdflow.fields.{cls.__name__}.defaults_for)"
    settings["step_size_rule"] = "user" if args.step_size is not None else default_rule
    if "max_move" in kw:
        settings["max_move"] = kw["max_move"] / bandwidth
        settings["max_move_rule"] = "a particle moves at most max_move * bandwidth per step"
    if "reg" in params:
        p = getattr(cls, "reg_power", 0)
        if logp is not None:
            p = getattr(cls, "density_reg_power", p)
        unit = bandwidth**p  # --reg is in units of this
        if args.reg is not None:
            kw["reg"] = args.reg * unit
        settings["reg"] = kw["reg"] / unit
        settings["reg_absolute"] = kw["reg"]
        settings["reg_rule"] = (
            f"reg is in units of bandwidth^{p}; the solver gets reg_absolute" if p else "as given"
        )
    if "num_features" in params:
        nf, rule = resolve_num_features(args.num_features, n, d)
        kw["num_features"] = nf
        kw["resample_features"] = nf is not None and not args.fixed_features
        settings["num_features"] = nf
        settings["critic"] = "exact" if nf is None else "rff"
        settings["num_features_rule"] = rule
        settings["features"] = _features_note(nf, kw["resample_features"])
    if args.noise:
        kw["noise_level"] = args.noise * bandwidth
    settings["noise"] = args.noise
    settings["noise_level_absolute"] = args.noise * bandwidth
    settings["noise_rule"] = (
        "noise is in units of the bandwidth; the flow gets noise_level_absolute"
    )
    if "sums" in params:
        kw["sums"] = ops.SumConfig(impl=args.impl)
    extra = _parse_params(args.param, args.method, params)
    kw.update(extra)
    if extra:
        settings["params"] = {k: repr(v) for k, v in extra.items()}
    if mesh is not None:
        kw["mesh"] = mesh
        if kw.get("num_features", 0) is None:
            settings["solver"] = "cg (sharded exact critic)"
    stepper = flows.make(args.method, **kw)
    for name in sorted(params):  # the field's other scalar hyperparameters, as used
        v = getattr(stepper.field, name, None)
        if isinstance(v, bool | int | float | str) and name not in settings:
            settings[name] = v
    return stepper, settings


def _check_options(args) -> None:
    """Option combinations that do not apply (one-line :class:`CLIError`)."""
    from mmdflow import flows

    params = set(flows.field_params(args.method))  # --method is one of them (parser choices)
    kinds = flows.targets(args.method)
    if "samples" not in kinds:
        if args.target is not None:
            raise CLIError(
                f"--target does not apply to --method {args.method} (a density flow): give "
                "--density NAME"
            )
        if args.density is None:
            raise CLIError(
                f"--method {args.method} moves particles toward a density: give --density NAME "
                "(a name of mmdflow.densities.DENSITIES or MODULE:FUNCTION)"
            )
    elif args.density is not None:
        if "density" not in kinds:
            raise CLIError(
                f"--density applies to the flows that take a density "
                f"({', '.join(_density_methods())}); --method {args.method} moves toward "
                "--target samples"
            )
        if args.target is not None:
            raise CLIError("--target and --density: give one target (samples or a density)")
    if args.dim is not None and args.density is None:
        raise CLIError("--dim applies with --density (the dimension of the log-density)")
    if args.reg is not None and "reg" not in params:
        raise CLIError(f"--reg does not apply to --method {args.method} (it has no ridge)")
    if args.fixed_features and "num_features" not in params:
        raise CLIError(f"--fixed-features does not apply to --method {args.method}")
    if args.num_features != "auto" and "num_features" not in params:
        raise CLIError(f"--num-features does not apply to --method {args.method}")
    if args.devices is not None and args.impl != "auto":
        raise CLIError(
            f"--impl {args.impl} applies without --devices (on a mesh the local kernel sums "
            "are blocked)"
        )


def _density_methods() -> list[str]:
    from mmdflow import flows

    return [m for m in flows.FLOWS if "density" in flows.targets(m)]


def _load_source(args, d: int | None):
    """``--source`` points; ``gaussian`` in ``d != 2`` dimensions is ``N(0, I_d)``."""
    if d is not None and d != 2 and args.source == "gaussian":
        rng = np.random.default_rng(args.seed)
        return rng.standard_normal((args.n, d)).astype(np.float32), None
    return _load_points("--source", args.source, args.n, args.seed, indices=True)


def _density_inputs(args):
    """The source, the density and its exact samples: ``(x0, src_rows, target, ref, logp0)``.

    ``ref`` is ``None`` for a density without a sampler; ``logp0`` is ``log p`` at the
    source points (their fingerprint stands for the target's on ``--resume``).
    """
    import jax

    target = _density.resolve(args.density)
    if args.dim is not None and target.dim is not None and args.dim != target.dim:
        raise CLIError(
            f"--density {args.density!r} is {target.dim}-dimensional; got --dim {args.dim}"
        )
    d = args.dim if args.dim is not None else target.dim
    x0, src_rows = _load_source(args, d)
    if d is not None and x0.shape[1] != d:
        raise CLIError(
            f"dimension mismatch: --source {args.source!r} has d={x0.shape[1]} (shape "
            f"{x0.shape}) but --density {args.density!r} has d={d}"
            + (" (--dim)" if args.dim is not None else "")
        )
    logp0 = _density.check_at(target, x0)
    ref = None
    if target.sample is not None:
        ref = target.sample(jax.random.key(args.seed + 1), args.n, x0.shape[1])
        ref = np.ascontiguousarray(np.asarray(ref), dtype=np.float32)
    return x0, src_rows, target, ref, logp0


def _checkpoint_last_chunk(ckpt: Checkpoints, latest: list, meta: dict) -> None:
    """On an interrupt: a checkpoint of the last completed chunk (unless it has one)."""
    if latest and latest[0] != ckpt.last_step:
        step, state, hist = latest
        with contextlib.suppress(KeyboardInterrupt):  # raised after writing: a signal is pending
            ckpt(step, lambda p: resume.save(p, state, hist(), meta), force=True)
    ckpt.mark_interrupted()


def _warn(msg: str) -> None:
    print(f"mmdflow: warning: {msg}", file=sys.stderr, flush=True)


def _cmd_flow(args) -> int:
    t_cmd = time.perf_counter()
    if args.resume and args.overwrite:
        raise CLIError("--resume continues the run in --out; --overwrite replaces it: pick one")
    rundir = RunDir(args.out, "flow", overwrite=args.overwrite, resume=args.resume)
    out = Path(args.out)  # as given, for messages
    ckpt_path = rundir.path / resume.CHECKPOINT
    _resolve_defaults(args)
    density = is_density_run(args)
    meta = None
    if args.resume:  # first: a changed option is named even if it is also misplaced
        meta = resume.read_meta(ckpt_path, args.out)
        resume.check_resume(args, meta, args.out)
    _check_options(args)
    target = ref = None
    if density:
        x0, src_rows, target, ref, logp0 = _density_inputs(args)
        y, tgt_rows = None, None
        target_print = logp0  # the density's values at the source points
    else:
        x0, src_rows = _load_points("--source", args.source, args.n, args.seed, indices=True)
        y, tgt_rows = _load_points("--target", args.target, args.n, args.seed + 1, indices=True)
        if x0.shape[1] != y.shape[1]:
            raise CLIError(
                f"dimension mismatch: --source {args.source!r} has d={x0.shape[1]} (shape "
                f"{x0.shape}) but --target {args.target!r} has d={y.shape[1]} (shape {y.shape})"
            )
        target_print = y
    if meta is not None:
        resume.check_points(meta, args.out, source=x0, target=target_print)
    n, d = x0.shape

    import jax
    import jax.numpy as jnp

    from mmdflow import __version__, flows, fused, ops, plots

    if args.bandwidth is not None:
        bw, bw_rule = args.bandwidth, "user"
    elif density:
        pts, what = (ref, "exact samples") if ref is not None else (x0, "source points")
        bw = _density.bandwidth(pts)
        bw_rule = f"{_density.BANDWIDTH_RULE} of the {len(pts)} {what}"
    else:
        bw, bw_rule = _median_bandwidth(x0, y), "median heuristic (source and target pooled)"
    kernel, kernel_info = _make_kernel(args.kernel, bw)
    mesh = _make_mesh(args.devices) if args.devices is not None else None
    logp = target.logp if density else None
    try:
        stepper, method_settings = _make_flow_stepper(args, kernel, bw, n, d, mesh, logp)
    except ValueError as e:
        raise CLIError(str(e)) from None
    if meta is not None:
        record_every = int(meta["record_every"])
    else:
        record_every = args.record_every or max(1, round(args.steps / 50))
    m = n if density else int(y.shape[0])
    impl_resolved = ops.resolve_impl(args.impl, n, m, kernel, x0.dtype)
    if impl_resolved == "pallas" and fused.default_interpret():
        _warn(
            f"--impl pallas on {jax.default_backend()}: the fused kernels run in Pallas "
            "interpret mode (exact but much slower than --impl blocked)"
        )
    settings = {
        "method": args.method,
        "source": args.source,
        "target": args.target,
        **(
            {
                "density": args.density,
                "density_dim": target.dim,
                "exact_samples": 0 if ref is None else len(ref),
            }
            if density
            else {}
        ),
        "n_requested": args.n,
        "n_particles": n,
        "n_target": 0 if density else int(y.shape[0]),
        "d": d,
        "steps": args.steps,
        "seed": args.seed,
        "target_seed": args.seed + 1,
        "record_every": record_every,
        "checkpoint_every": args.checkpoint_every,
        "bandwidth": bw,
        "bandwidth_rule": bw_rule,
        "kernel": kernel_info,
        **method_settings,
        "mmd_kernel": "the flow kernel (biased V-statistic MMD^2)"
        if not density
        else "ksd2: V-statistic KSD^2 with the flow kernel as the Stein kernel's base; "
        "mmd2_to_samples: the flow kernel (biased V-statistic MMD^2) to the exact samples",
        "impl": args.impl,
        "impl_resolved": impl_resolved,
        "mmdflow_version": __version__,
        "jax_version": jax.__version__,
        "device": str(jax.devices()[0]),
        "devices": 1 if mesh is None else args.devices,
        "sharding": "none"
        if mesh is None
        else f"particles and targets padded to a multiple of {args.devices} and sharded "
        "over mesh axis 'data'",
    }

    state = stepper.init(
        jnp.asarray(x0), jax.random.key(args.seed), y=None if density else jnp.asarray(y)
    )
    history, done, resumed_at = None, 0, []
    if meta is not None:
        state, history = resume.load(ckpt_path, state, args.out)
        done = int(state.count)
        resumed_at = [*meta.get("resumed_at", []), done]
        if args.steps < done:
            raise CLIError(
                f"--steps {args.steps} is below the {done} steps already run in --out "
                f"{args.out!r}; pass --steps {done} or more"
            )
    ckpt_meta = {
        "args": resume.run_args(args),
        "record_every": record_every,
        "n": n,
        "source_sha256": resume.fingerprint(x0),
        "target_sha256": resume.fingerprint(target_print),
        "resumed_at": resumed_at,
    }
    t_setup = time.perf_counter() - t_cmd

    to = args.density if density else Path(str(args.target)).name
    label = f"{args.method} {Path(str(args.source)).name}->{to}"
    bar = ProgressBar(args.steps, label=label, enabled=None if not args.quiet else False)
    ckpt = Checkpoints(rundir, args.checkpoint_every, resume.CHECKPOINT)
    ckpt.last_step = done if meta is not None else None
    last = {}  # the last record (for the progress bar)
    latest = []  # the last chunk's (step, state, history function)

    def on_chunk(step, st, hist):
        latest[:] = [step, st, hist]
        # a checkpoint when due or when a Ctrl-C / SIGTERM is pending (which it then raises)
        ckpt(step, lambda p: resume.save(p, st, hist(), ckpt_meta))
        bar.update(step, last)

    bar.start()
    try:
        state, hist = flows.run(
            stepper,
            None,
            y,
            num_steps=args.steps - done,
            state=state,
            history=history,
            record_every=record_every,
            record_trajectory=True,
            sums=ops.SumConfig(args.impl, mesh=mesh),
            callback=lambda step, rec: last.update(rec),
            on_chunk=on_chunk,
        )
        diverged = hist.pop("diverged", None)
        final = int(state.count)
        xf = np.asarray(state.x[:n], dtype=np.float32)  # sharded states are padded
        if not np.isfinite(xf).all():  # the divergence check keeps the last finite state
            raise CLIError(f"the flow diverged (non-finite particles at step {final})", code=1)
        status = "diverged" if diverged else "complete"
        # the final checkpoint (--resume with a larger --steps continues from it)
        write = lambda p: resume.save(p, state, {**hist, "diverged": diverged}, ckpt_meta)
        ckpt(final, write, force=True)
    except KeyboardInterrupt:
        _checkpoint_last_chunk(ckpt, latest, ckpt_meta)
        raise KeyboardInterrupt(ckpt.note()) from None
    finally:
        bar.close()

    t_io = time.perf_counter()
    metric = "ksd2" if density else "mmd2"
    curve = "ksd.png" if density else "mmd.png"
    files = ["particles.npy", "trajectory.npz", "metrics.json", "flow.png", curve]
    with rundir.staged(status, checkpoint_step=final) as tmp:
        traj = np.asarray(hist.pop("trajectory")[:, :n], dtype=np.float32)
        steps = np.asarray(hist["step"], dtype=np.int64)
        np.save(tmp / "particles.npy", xf)
        np.savez_compressed(tmp / "trajectory.npz", snapshots=traj, steps=steps)
        for name, rows in (("source_indices.npy", src_rows), ("target_indices.npy", tgt_rows)):
            if rows is not None:  # the rows of a file (or digits) that were kept
                np.save(tmp / name, rows)
                files.append(name)
        bws = kernel_info["bandwidths"]
        if density:
            summary, headline = _density_summary(hist, x0, xf, ref, bws)
            goal = f"density {args.density}"
        else:
            m_start, m_end = _kernel_mmd2_f64(x0, y, bws), _kernel_mmd2_f64(xf, y, bws)
            summary = {
                "mmd2_start": m_start,
                "mmd2_end": m_end,
                "mmd2_reduction": _reduction(m_start, m_end),
                "mmd2_change": _fmt_change(m_start, m_end),
                "mmd2_note": "float64 recomputation with the flow kernel; history.mmd2 is float32",
            }
            headline = f"MMD^2 {m_start:.3e} -> {m_end:.3e} ({_fmt_change(m_start, m_end)})"
            goal = args.target
        title = f"{args.method}: {args.source} → {goal} (n={n}, d={d})"
        if diverged:
            title += f" — diverged at step {diverged['step']}"
        label = "KSD²" if density else "MMD²"
        panels = plots.plot_flow(
            traj,
            steps,
            ref if density else y,
            tmp / "flow.png",
            mmd2=hist[metric],
            title=title,
            metric_label=label,
            target_label="exact samples" if density else "target",
            density=_density.grid_logp(target.logp) if density and d == 2 else None,
        )
        plots.plot_history(
            hist, tmp / curve, title=title, mmd_label=f"{label} ({args.kernel})", metric=metric
        )
        t_io = time.perf_counter() - t_io
        metrics = {
            "command": "flow",
            "status": status,
            "settings": settings,
            "summary": {
                "steps_done": final,
                **summary,
                "flow_png_steps": [int(steps[i]) for i in panels],
                "diverged": diverged,
                "resumed_at_steps": resumed_at,
            },
            "history": {k: np.asarray(v).tolist() for k, v in hist.items()},
            "timings": {
                **_timings(hist, args.steps, record_every),
                "setup_s": t_setup,
                "outputs_s": t_io,
                "total_s": time.perf_counter() - t_cmd,
            },
            "files": [*files, resume.CHECKPOINT],
        }
        _write_json(tmp / "metrics.json", metrics)
    if diverged:
        raise CLIError(
            f"the flow diverged at step {diverged['step']} ({diverged['reason']}); the outputs "
            f"of step {final} are in {str(out)!r}; try a smaller --step-size"
            + (" or a larger --reg" if args.method == "sobolev" else ""),
            code=1,
        )
    print(
        f"mmdflow flow: {args.method} {args.source} -> {goal} (n={n}, d={d}): "
        f"{headline} in {final} steps"
        f"{f' (resumed at step {done})' if done else ''}, "
        f"{metrics['timings']['total_s']:.1f}s; pictures: {out / 'flow.png'}, {out / curve}",
        flush=True,
    )
    return 0


def _density_summary(hist, x0, xf, ref, bws) -> tuple[dict, str]:
    """A density flow's summary (``KSD^2``; with exact samples ``ref`` also the MMD^2 to them
    and the moment errors) and its headline for the summary line."""
    k_start, k_end = float(hist["ksd2"][0]), float(hist["ksd2"][-1])
    summary = {
        "ksd2_start": k_start,
        "ksd2_end": k_end,
        "ksd2_reduction": _reduction(k_start, k_end),
        "ksd2_change": _fmt_change(k_start, k_end),
        "ksd2_note": "float32 V-statistic, as recorded in history.ksd2",
    }
    headline = f"KSD^2 {k_start:.3e} -> {k_end:.3e} ({_fmt_change(k_start, k_end)})"
    if ref is None:
        summary["mmd2_to_samples_note"] = "the density has no sampler: no MMD^2 to exact samples"
        return summary, headline
    m_start, m_end = _kernel_mmd2_f64(x0, ref, bws), _kernel_mmd2_f64(xf, ref, bws)
    iid = _density.moment_errors(xf, ref)
    summary.update(
        mmd2_to_samples_start=m_start,
        mmd2_to_samples_end=m_end,
        mmd2_to_samples_reduction=_reduction(m_start, m_end),
        **{f"{k}_end": v for k, v in iid.items()},
        mmd2_to_samples_note=f"float64, the flow kernel, to {len(ref)} exact samples of the "
        "density (seed + 1); mean_error_end / cov_error_end: largest absolute error of the "
        "particles' mean / covariance entries against the exact samples'",
    )
    headline += f", MMD^2 to exact samples {m_start:.3e} -> {m_end:.3e}"
    return summary, headline
